import KVM

/// The in-kernel interrupt controllers — both PICs and the IOAPIC — as a machine component.
public final class InterruptControllers: Snapshottable, @unchecked Sendable {
    /// Each chip's `KVM_GET_IRQCHIP` blob.
    public struct State: ComponentState {
        public var picMaster: [UInt8]
        public var picSlave: [UInt8]
        public var ioapic: [UInt8]

        public static var version: UInt32 { 1 }

        public func encode(into n: inout StateNode) {
            n.set("pic-master", bytes: picMaster)
            n.set("pic-slave", bytes: picSlave)
            n.set("ioapic", bytes: ioapic)
        }

        public init(picMaster: [UInt8], picSlave: [UInt8], ioapic: [UInt8]) {
            self.picMaster = picMaster; self.picSlave = picSlave; self.ioapic = ioapic
        }

        public init(decoding n: StateNode, version: UInt32) throws(StateError) {
            picMaster = try n.bytes("pic-master")
            picSlave = try n.bytes("pic-slave")
            ioapic = try n.bytes("ioapic")
            for (key, blob, chip) in [("pic-master", picMaster, IRQChipID.picMaster), ("pic-slave", picSlave, .picSlave),
                                      ("ioapic", ioapic, .ioapic)] {
                guard blob.count == VirtualMachine.irqChipStateSize else {
                    throw .badSize(node: n.name, property: key, expected: VirtualMachine.irqChipStateSize, got: blob.count)
                }
                guard VirtualMachine.irqChipID(of: blob) == chip else {
                    throw .invalid(node: n.name, reason: "'\(key)' holds the state of another chip")
                }
            }
        }
    }

    let kvm: VirtualMachine
    init(kvm: VirtualMachine) { self.kvm = kvm }

    public var stateName: String { "irqchip" }

    public func saveState() throws(StateError) -> State {
        do {
            return State(picMaster: try kvm.irqChip(.picMaster), picSlave: try kvm.irqChip(.picSlave), ioapic: try kvm.irqChip(.ioapic))
        } catch { throw .unavailable(node: stateName, reason: error.description) }
    }

    public func validate(_ state: State) throws(StateError) {}

    public func restoreState(_ state: State) throws(StateError) {
        do {
            try kvm.setIRQChip(state.picMaster)
            try kvm.setIRQChip(state.picSlave)
            try kvm.setIRQChip(state.ioapic)
        } catch { throw .unavailable(node: stateName, reason: error.description) }
    }
}

/// The in-kernel i8254 PIT as a machine component.
public final class ProgrammableIntervalTimer: Snapshottable, @unchecked Sendable {
    /// The `KVM_GET_PIT2` blob.
    public struct State: ComponentState {
        public var bytes: [UInt8]
        public static var version: UInt32 { 1 }
        public init(bytes: [UInt8]) { self.bytes = bytes }
        public func encode(into n: inout StateNode) { n.set("state", bytes: bytes) }
        public init(decoding n: StateNode, version: UInt32) throws(StateError) {
            bytes = try n.bytes("state")
            guard bytes.count == VirtualMachine.pitStateSize else {
                throw .badSize(node: n.name, property: "state", expected: VirtualMachine.pitStateSize, got: bytes.count)
            }
        }
    }

    let kvm: VirtualMachine
    init(kvm: VirtualMachine) { self.kvm = kvm }

    public var stateName: String { "pit" }

    public func saveState() throws(StateError) -> State {
        do { return State(bytes: try kvm.pit()) } catch { throw .unavailable(node: stateName, reason: error.description) }
    }

    public func validate(_ state: State) throws(StateError) {}

    public func restoreState(_ state: State) throws(StateError) {
        do { try kvm.setPIT(state.bytes) } catch { throw .unavailable(node: stateName, reason: error.description) }
    }
}

/// The guest's kvmclock as a machine component (the TSC itself travels in each vCPU's MSRs).
public final class GuestClock: Snapshottable, @unchecked Sendable {
    public struct State: ComponentState {
        /// Nanoseconds the guest's kvmclock reads.
        public var kvmclockNs: UInt64
        public static var version: UInt32 { 1 }
        public init(kvmclockNs: UInt64) { self.kvmclockNs = kvmclockNs }
        public func encode(into n: inout StateNode) { n.set("kvmclock-ns", kvmclockNs) }
        public init(decoding n: StateNode, version: UInt32) throws(StateError) {
            kvmclockNs = try n.integer("kvmclock-ns")
        }
    }

    let kvm: VirtualMachine
    init(kvm: VirtualMachine) { self.kvm = kvm }

    public var stateName: String { "clock" }

    public func saveState() throws(StateError) -> State {
        do { return State(kvmclockNs: try kvm.clock()) } catch { throw .unavailable(node: stateName, reason: error.description) }
    }

    public func validate(_ state: State) throws(StateError) {}

    public func restoreState(_ state: State) throws(StateError) {
        do { try kvm.setClock(state.kvmclockNs) } catch { throw .unavailable(node: stateName, reason: error.description) }
    }
}
