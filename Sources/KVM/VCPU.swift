import CKVM
import Glibc

/// A virtual CPU: the run primitive and every get/set of its state.
public final class VCPU: @unchecked Sendable {
    public let fd: Int32
    public let id: UInt32
    let runArea: UnsafeMutablePointer<kvm_run>
    let mmapSize: Int

    init(fd: Int32, id: UInt32, mmapSize: Int) throws(KVMError) {
        guard let p = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw .mmap("kvm_run of vCPU \(id)", errno: e)
        }
        self.fd = fd
        self.id = id
        self.mmapSize = mmapSize
        self.runArea = p.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(runArea), mmapSize)
        close(fd)
    }

    /// Asks the next (or current, together with a signal) `KVM_RUN` to return at once.
    public func setImmediateExit(_ on: Bool) {
        ckvm_set_immediate_exit(runArea, on ? 1 : 0)
    }

    @discardableResult
    private func call(_ name: String, _ request: UInt, _ ptr: UnsafeMutableRawPointer?) throws(KVMError) -> Int {
        let r = ckvm_ioctl_ptr(fd, request, ptr)
        guard r >= 0 else { throw .ioctl(name, errno: Int32(-r)) }
        return r
    }

    private func get<T>(_ value: inout T, _ name: String, _ request: UInt) throws(KVMError) {
        try withUnsafeMutableBytes(of: &value) { p throws(KVMError) in _ = try call(name, request, p.baseAddress) }
    }

    // MARK: typed state

    public func registers() throws(KVMError) -> Registers {
        var r = kvm_regs(); try get(&r, "KVM_GET_REGS", ckvm_req_GET_REGS()); return Registers(r)
    }
    public func setRegisters(_ value: Registers) throws(KVMError) {
        var r = value.raw; try get(&r, "KVM_SET_REGS", ckvm_req_SET_REGS())
    }
    public func specialRegisters() throws(KVMError) -> SpecialRegisters {
        var r = kvm_sregs(); try get(&r, "KVM_GET_SREGS", ckvm_req_GET_SREGS()); return SpecialRegisters(r)
    }
    public func setSpecialRegisters(_ value: SpecialRegisters) throws(KVMError) {
        var r = value.raw; try get(&r, "KVM_SET_SREGS", ckvm_req_SET_SREGS())
    }
    /// Resets the FPU/SSE state to all zero but the two control words.
    public func resetFPU(_ control: FPUControl) throws(KVMError) {
        var f = kvm_fpu()
        f.fcw = control.fcw
        f.mxcsr = control.mxcsr
        try get(&f, "KVM_SET_FPU", ckvm_req_SET_FPU())
    }
    public func lapic() throws(KVMError) -> LAPICState {
        var r = kvm_lapic_state(); try get(&r, "KVM_GET_LAPIC", ckvm_req_GET_LAPIC())
        return LAPICState(bytes: RawState.bytes(of: r))
    }
    public func setLAPIC(_ value: LAPICState) throws(KVMError) {
        var r = kvm_lapic_state()
        try RawState.load(value.bytes, into: &r, name: "lapic")
        try get(&r, "KVM_SET_LAPIC", ckvm_req_SET_LAPIC())
    }

    /// Gives the vCPU its CPUID table.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        let r = CPUIDBuffer.with(entries) { ckvm_ioctl_ptr(fd, ckvm_req_SET_CPUID2(), $0) }
        guard r >= 0 else { throw .ioctl("KVM_SET_CPUID2", errno: Int32(-r)) }
    }

    /// Translates a guest-virtual address with the vCPU's current page tables.
    public func translate(_ linear: UInt64) -> UInt64? {
        var t = kvm_translation()
        t.linear_address = linear
        let r = withUnsafeMutableBytes(of: &t) { ckvm_ioctl_ptr(fd, ckvm_req_TRANSLATE(), $0.baseAddress) }
        guard r >= 0, t.valid != 0 else { return nil }
        return t.physical_address
    }

    /// The guest TSC frequency in kHz.
    public func tscKHz() -> UInt32 {
        let r = ckvm_ioctl_none(fd, ckvm_req_GET_TSC_KHZ())
        return r > 0 ? UInt32(r) : 0
    }

    /// Sets the guest TSC frequency (scaled by the CPU where it differs from the host's).
    public func setTSCKHz(_ khz: UInt32) throws(KVMError) {
        let r = ckvm_ioctl_arg(fd, ckvm_req_SET_TSC_KHZ(), UInt(khz))
        guard r >= 0 else { throw .ioctl("KVM_SET_TSC_KHZ", errno: Int32(-r)) }
    }


    // MARK: MSRs

    /// Reads the given MSRs; returns only those KVM could read, in order.
    public func msrs(_ indices: [UInt32]) throws(KVMError) -> [MSREntry] {
        guard !indices.isEmpty else { return [] }
        let size = 8 + indices.count * 16
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        raw.storeBytes(of: UInt32(indices.count), as: UInt32.self)
        for (i, idx) in indices.enumerated() { raw.storeBytes(of: idx, toByteOffset: 8 + i * 16, as: UInt32.self) }
        let n = try call("KVM_GET_MSRS", ckvm_req_GET_MSRS(), raw)
        return (0..<min(n, indices.count)).map { i in
            MSREntry(index: raw.load(fromByteOffset: 8 + i * 16, as: UInt32.self),
                     value: raw.load(fromByteOffset: 8 + i * 16 + 8, as: UInt64.self))
        }
    }

    /// Writes MSRs; returns how many KVM accepted (stops at the first it refuses).
    @discardableResult
    public func setMSRs(_ entries: [MSREntry]) throws(KVMError) -> Int {
        guard !entries.isEmpty else { return 0 }
        let size = 8 + entries.count * 16
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        raw.storeBytes(of: UInt32(entries.count), as: UInt32.self)
        for (i, e) in entries.enumerated() {
            raw.storeBytes(of: e.index, toByteOffset: 8 + i * 16, as: UInt32.self)
            raw.storeBytes(of: e.value, toByteOffset: 8 + i * 16 + 8, as: UInt64.self)
        }
        return try call("KVM_SET_MSRS", ckvm_req_SET_MSRS(), raw)
    }

    /// Of `indices`, those this vCPU can actually read (KVM's list can name MSRs a CPU lacks).
    public func readableMSRs(_ indices: [UInt32]) -> [UInt32] {
        var out: [UInt32] = []
        var rest = indices[...]
        while !rest.isEmpty {
            let batch = Array(rest)
            guard let got = try? msrs(batch) else { return out }
            out.append(contentsOf: got.map(\.index))
            rest = rest.dropFirst(got.count + 1)   // skip the one KVM refused
        }
        return out
    }

    // MARK: whole-state snapshot

    /// Saves every piece of vCPU state KVM exposes. The vCPU must not be running.
    public func saveState(msrIndices: [UInt32]) throws(KVMError) -> VCPUState {
        var regs = kvm_regs(); try get(&regs, "KVM_GET_REGS", ckvm_req_GET_REGS())
        var sregs = kvm_sregs(); try get(&sregs, "KVM_GET_SREGS", ckvm_req_GET_SREGS())
        var fpu = kvm_fpu(); try get(&fpu, "KVM_GET_FPU", ckvm_req_GET_FPU())
        var xsave = kvm_xsave(); try get(&xsave, "KVM_GET_XSAVE", ckvm_req_GET_XSAVE())
        var xcrs = kvm_xcrs(); try get(&xcrs, "KVM_GET_XCRS", ckvm_req_GET_XCRS())
        var lapic = kvm_lapic_state(); try get(&lapic, "KVM_GET_LAPIC", ckvm_req_GET_LAPIC())
        var events = kvm_vcpu_events(); try get(&events, "KVM_GET_VCPU_EVENTS", ckvm_req_GET_VCPU_EVENTS())
        var dregs = kvm_debugregs(); try get(&dregs, "KVM_GET_DEBUGREGS", ckvm_req_GET_DEBUGREGS())
        var mp = kvm_mp_state(); try get(&mp, "KVM_GET_MP_STATE", ckvm_req_GET_MP_STATE())
        let msrs = try msrs(msrIndices)
        return VCPUState(regs: RawState.bytes(of: regs), sregs: RawState.bytes(of: sregs),
                         fpu: RawState.bytes(of: fpu), xsave: RawState.bytes(of: xsave),
                         xcrs: RawState.bytes(of: xcrs), lapic: RawState.bytes(of: lapic),
                         events: RawState.bytes(of: events), debugregs: RawState.bytes(of: dregs),
                         mpState: mp.mp_state, msrs: msrs)
    }

    /// Loads a state saved by `saveState`. Sizes are checked before anything is written.
    public func restoreState(_ s: VCPUState) throws(KVMError) {
        var regs = kvm_regs(); try RawState.load(s.regs, into: &regs, name: "regs")
        var sregs = kvm_sregs(); try RawState.load(s.sregs, into: &sregs, name: "sregs")
        var fpu = kvm_fpu(); try RawState.load(s.fpu, into: &fpu, name: "fpu")
        var xsave = kvm_xsave(); try RawState.load(s.xsave, into: &xsave, name: "xsave")
        var xcrs = kvm_xcrs(); try RawState.load(s.xcrs, into: &xcrs, name: "xcrs")
        var lapic = kvm_lapic_state(); try RawState.load(s.lapic, into: &lapic, name: "lapic")
        var events = kvm_vcpu_events(); try RawState.load(s.events, into: &events, name: "events")
        var dregs = kvm_debugregs(); try RawState.load(s.debugregs, into: &dregs, name: "debugregs")
        var mp = kvm_mp_state(); mp.mp_state = s.mpState
        try get(&sregs, "KVM_SET_SREGS", ckvm_req_SET_SREGS())
        try get(&regs, "KVM_SET_REGS", ckvm_req_SET_REGS())
        try get(&fpu, "KVM_SET_FPU", ckvm_req_SET_FPU())
        try get(&xsave, "KVM_SET_XSAVE", ckvm_req_SET_XSAVE())
        try get(&xcrs, "KVM_SET_XCRS", ckvm_req_SET_XCRS())
        let accepted = try setMSRs(s.msrs)
        if accepted < s.msrs.count {
            let bad = s.msrs[accepted].index
            throw .ioctl("KVM_SET_MSRS (MSR 0x\(String(bad, radix: 16)))", errno: EINVAL)
        }
        try get(&lapic, "KVM_SET_LAPIC", ckvm_req_SET_LAPIC())
        try get(&mp, "KVM_SET_MP_STATE", ckvm_req_SET_MP_STATE())
        try get(&events, "KVM_SET_VCPU_EVENTS", ckvm_req_SET_VCPU_EVENTS())
        try get(&dregs, "KVM_SET_DEBUGREGS", ckvm_req_SET_DEBUGREGS())
    }
}
