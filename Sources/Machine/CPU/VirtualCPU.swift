import KVM

/// One vCPU as a machine component: its KVM handle, the MSRs saved with it, and its state.
public final class VirtualCPU: Snapshottable, @unchecked Sendable {
    public typealias State = VCPUState
    let vcpu: VCPU
    /// MSRs saved and restored with this vCPU (KVM's list, minus those this CPU cannot read).
    let msrIndices: [UInt32]
    /// The CPUID table this vCPU was given.
    public let cpuid: [CPUIDEntry]

    init(vcpu: VCPU, msrIndices: [UInt32], cpuid: [CPUIDEntry]) {
        self.vcpu = vcpu
        self.msrIndices = msrIndices
        self.cpuid = cpuid
    }

    public var id: UInt32 { vcpu.id }
    public var stateName: String { "vcpu@\(vcpu.id)" }

    public func saveState() throws(StateError) -> VCPUState {
        do { return try vcpu.saveState(msrIndices: msrIndices) } catch {
            throw .unavailable(node: stateName, reason: error.description)
        }
    }

    public func validate(_ state: VCPUState) throws(StateError) {
        let known = Set(msrIndices)
        if let unknown = state.msrs.first(where: { !known.contains($0.index) }) {
            throw .invalid(node: stateName, reason: "MSR 0x\(String(unknown.index, radix: 16)) cannot be set on this host")
        }
    }

    public func restoreState(_ state: VCPUState) throws(StateError) {
        do { try vcpu.restoreState(state) } catch { throw .unavailable(node: stateName, reason: error.description) }
    }
}

extension VCPUState: ComponentState {
    public static var version: UInt32 { 1 }

    public func encode(into n: inout StateNode) {
        n.set("regs", bytes: regs)
        n.set("sregs", bytes: sregs)
        n.set("fpu", bytes: fpu)
        n.set("xsave", bytes: xsave)
        n.set("xcrs", bytes: xcrs)
        n.set("lapic", bytes: lapic)
        n.set("events", bytes: events)
        n.set("debugregs", bytes: debugregs)
        n.set("mp-state", mpState)
        n.set("msr-indices", array: msrs.map(\.index))
        n.set("msr-values", array: msrs.map(\.value))
    }

    public init(decoding n: StateNode, version: UInt32) throws(StateError) {
        let idx = try n.array("msr-indices", of: UInt32.self)
        let vals = try n.array("msr-values", of: UInt64.self)
        guard idx.count == vals.count else { throw .invalid(node: n.name, reason: "MSR index and value counts differ") }
        guard idx.count <= 4096 else { throw .invalid(node: n.name, reason: "\(idx.count) MSRs") }
        self.init(regs: try n.bytes("regs"), sregs: try n.bytes("sregs"), fpu: try n.bytes("fpu"),
                  xsave: try n.bytes("xsave"), xcrs: try n.bytes("xcrs"), lapic: try n.bytes("lapic"),
                  events: try n.bytes("events"), debugregs: try n.bytes("debugregs"),
                  mpState: try n.integer("mp-state"), msrs: zip(idx, vals).map { MSREntry(index: $0, value: $1) })
        for (key, size) in VCPUState.sizes {
            let got = try n.bytes(key).count
            guard got == size else { throw .badSize(node: n.name, property: key, expected: size, got: got) }
        }
    }
}
