import CKVM

/// One register/state snapshot of a vCPU, as raw KVM structures (`kvm_regs`, `kvm_sregs`, …).
public struct VCPUState: Sendable, Equatable {
    public var regs: [UInt8]
    public var sregs: [UInt8]
    public var fpu: [UInt8]
    public var xsave: [UInt8]
    public var xcrs: [UInt8]
    public var lapic: [UInt8]
    public var events: [UInt8]
    public var debugregs: [UInt8]
    public var mpState: UInt32
    public var msrs: [MSREntry]

    public init(regs: [UInt8], sregs: [UInt8], fpu: [UInt8], xsave: [UInt8], xcrs: [UInt8],
                lapic: [UInt8], events: [UInt8], debugregs: [UInt8], mpState: UInt32, msrs: [MSREntry]) {
        self.regs = regs; self.sregs = sregs; self.fpu = fpu; self.xsave = xsave; self.xcrs = xcrs
        self.lapic = lapic; self.events = events; self.debugregs = debugregs
        self.mpState = mpState; self.msrs = msrs
    }

    /// Expected size of each raw field, for validating state that came from elsewhere.
    public static let sizes: [String: Int] = [
        "regs": MemoryLayout<kvm_regs>.size, "sregs": MemoryLayout<kvm_sregs>.size,
        "fpu": MemoryLayout<kvm_fpu>.size, "xsave": MemoryLayout<kvm_xsave>.size,
        "xcrs": MemoryLayout<kvm_xcrs>.size, "lapic": MemoryLayout<kvm_lapic_state>.size,
        "events": MemoryLayout<kvm_vcpu_events>.size, "debugregs": MemoryLayout<kvm_debugregs>.size,
    ]
}

/// One model-specific register value.
public struct MSREntry: Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) { self.index = index; self.value = value }
}
