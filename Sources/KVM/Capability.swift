import CKVM

/// The KVM capabilities swiftvmm asks about (`KVM_CHECK_EXTENSION`).
public enum Capability: Sendable, CaseIterable, CustomStringConvertible {
    case irqchip, userMemory, pit2, ioeventfd, irqfd
    /// Recommended maximum number of vCPUs.
    case maxVCPUs
    /// Manual re-protection of dirty pages (`KVM_CLEAR_DIRTY_LOG`); bit 0 of the value.
    case manualDirtyLogProtect
    /// The guest TSC rate can be set (`KVM_SET_TSC_KHZ`).
    case tscControl
    /// The guest TSC rate can be read (`KVM_GET_TSC_KHZ`).
    case getTSCKHz

    var number: Int32 {
        switch self {
        case .irqchip: return KVM_CAP_IRQCHIP
        case .userMemory: return KVM_CAP_USER_MEMORY
        case .pit2: return KVM_CAP_PIT2
        case .ioeventfd: return KVM_CAP_IOEVENTFD
        case .irqfd: return KVM_CAP_IRQFD
        case .maxVCPUs: return KVM_CAP_MAX_VCPUS
        case .manualDirtyLogProtect: return KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
        case .tscControl: return KVM_CAP_TSC_CONTROL
        case .getTSCKHz: return KVM_CAP_GET_TSC_KHZ
        }
    }

    /// The name in linux/kvm.h, for error messages.
    public var description: String {
        switch self {
        case .irqchip: return "KVM_CAP_IRQCHIP"
        case .userMemory: return "KVM_CAP_USER_MEMORY"
        case .pit2: return "KVM_CAP_PIT2"
        case .ioeventfd: return "KVM_CAP_IOEVENTFD"
        case .irqfd: return "KVM_CAP_IRQFD"
        case .maxVCPUs: return "KVM_CAP_MAX_VCPUS"
        case .manualDirtyLogProtect: return "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"
        case .tscControl: return "KVM_CAP_TSC_CONTROL"
        case .getTSCKHz: return "KVM_CAP_GET_TSC_KHZ"
        }
    }
}

/// The in-kernel interrupt controllers `KVM_GET_IRQCHIP` can read.
public enum IRQChipID: UInt32, Sendable, CaseIterable {
    case picMaster = 0, picSlave = 1, ioapic = 2
}
