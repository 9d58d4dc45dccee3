import KVM

/// One CPUID leaf (re-exported so that layers above `Machine` need not import `KVM`).
public typealias CPUIDEntry = KVM.CPUIDEntry

/// What this host's CPU can offer a guest, through KVM and swiftvmm's policy.
public enum HostCPU {
    /// The CPUID leaves a guest may see on this host: KVM's supported table cut to `model` —
    /// or `replacing`, a table from elsewhere (a migrating guest's own) — minus the `deny`ed
    /// feature bits. A model the host cannot offer is an error naming what it lacks.
    static func offer(_ hv: Hypervisor, model: CPUModel = .host, deny: [String],
                      replacing table: [CPUIDEntry]? = nil) throws(VMError) -> [CPUIDEntry] {
        var base: [CPUIDEntry]
        if let table { base = table } else {
            do { base = try hv.supportedCPUID() } catch { throw .kvm(error) }
            do { base = try model.apply(to: base) } catch { throw .config(error.description) }
        }
        guard !deny.isEmpty else { return base }
        do { base = try CPUIDPolicy.deny(deny, in: base) } catch { throw .config(error.description) }
        return base
    }

    /// The CPUID table vCPU 0 of a `vcpuCount`-vCPU guest would get on this host (opens the
    /// KVM device `kvmDevice`): what a migration target compares an incoming guest with.
    public static func offer(kvmDevice: String, model: CPUModel = .host, deny: [String], vcpuCount: Int) throws(VMError) -> [CPUIDEntry] {
        let hv: Hypervisor
        do { hv = try Hypervisor(path: kvmDevice) } catch { throw .kvm(error) }
        let base = try offer(hv, model: model, deny: deny)
        return CPUIDPolicy.table(supported: base, vcpuID: 0, vcpuCount: vcpuCount)
    }

    /// KVM's supported CPUID table on this host, before any policy or model.
    public static func supported(kvmDevice: String) throws(VMError) -> [CPUIDEntry] {
        do { return try Hypervisor(path: kvmDevice).supportedCPUID() } catch { throw .kvm(error) }
    }
}
