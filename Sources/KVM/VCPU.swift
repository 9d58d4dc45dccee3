import CKVM
import Glibc

/// Why `KVM_RUN` returned. Buffers point into the vCPU's `kvm_run` area and are valid only until
/// the next `run()`; an `ioIn`/`mmioRead` handler fills its buffer before that.
public enum VCPUExit {
    /// `out` of `count` items of `size` bytes each (`data.count == size * count`).
    case ioOut(port: UInt16, size: Int, data: UnsafeRawBufferPointer)
    /// `in` of `count` items of `size` bytes each; fill `data`.
    case ioIn(port: UInt16, size: Int, data: UnsafeMutableRawBufferPointer)
    case mmioRead(address: UInt64, data: UnsafeMutableRawBufferPointer)
    case mmioWrite(address: UInt64, data: UnsafeRawBufferPointer)
    case hlt
    /// Triple fault or similar: the CPU shut down.
    case shutdown
    /// `KVM_EXIT_SYSTEM_EVENT` (1 shutdown, 2 reset, 3 crash).
    case systemEvent(type: UInt32)
    /// KVM could not emulate or run something; `data` are the kernel's diagnostic words.
    case internalError(suberror: UInt32, data: [UInt64])
    case failEntry(reason: UInt64, cpu: UInt32)
    /// `KVM_RUN` returned EINTR/EAGAIN: a signal or `immediate_exit` asked the vCPU to come out.
    case interrupted
    case debug
    case unknown(UInt32)
}

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

    /// Enters the guest until the next exit to user space.
    public func run() throws(KVMError) -> VCPUExit {
        let r = ckvm_ioctl_arg(fd, ckvm_req_RUN(), 0)
        if r < 0 {
            let e = Int32(-r)
            if e == EINTR || e == EAGAIN { return .interrupted }
            throw .ioctl("KVM_RUN", errno: e)
        }
        let base = UnsafeMutableRawPointer(runArea)
        switch Int32(runArea.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = runArea.pointee.io
            let size = Int(io.size)
            let length = size * Int(io.count)
            let data = UnsafeMutableRawBufferPointer(start: base + Int(io.data_offset), count: length)
            if io.direction == UInt8(KVM_EXIT_IO_OUT) {
                return .ioOut(port: io.port, size: size, data: UnsafeRawBufferPointer(data))
            }
            return .ioIn(port: io.port, size: size, data: data)
        case KVM_EXIT_MMIO:
            let length = min(Int(runArea.pointee.mmio.len), 8)
            let offset = Int(ckvm_run_mmio_data_offset())
            let data = UnsafeMutableRawBufferPointer(start: base + offset, count: length)
            if runArea.pointee.mmio.is_write != 0 {
                return .mmioWrite(address: runArea.pointee.mmio.phys_addr, data: UnsafeRawBufferPointer(data))
            }
            return .mmioRead(address: runArea.pointee.mmio.phys_addr, data: data)
        case KVM_EXIT_HLT: return .hlt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: runArea.pointee.system_event.type)
        case KVM_EXIT_INTERNAL_ERROR:
            let ie = runArea.pointee.internal
            let n = min(Int(ie.ndata), 16)
            let words = withUnsafeBytes(of: ie.data) { Array($0.bindMemory(to: UInt64.self).prefix(n)) }
            return .internalError(suberror: ie.suberror, data: words)
        case KVM_EXIT_FAIL_ENTRY:
            return .failEntry(reason: runArea.pointee.fail_entry.hardware_entry_failure_reason,
                              cpu: runArea.pointee.fail_entry.cpu)
        case KVM_EXIT_INTR: return .interrupted
        case KVM_EXIT_DEBUG: return .debug
        default: return .unknown(runArea.pointee.exit_reason)
        }
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

    public func registers() throws(KVMError) -> kvm_regs {
        var r = kvm_regs(); try get(&r, "KVM_GET_REGS", ckvm_req_GET_REGS()); return r
    }
    public func setRegisters(_ value: kvm_regs) throws(KVMError) {
        var r = value; try get(&r, "KVM_SET_REGS", ckvm_req_SET_REGS())
    }
    public func specialRegisters() throws(KVMError) -> kvm_sregs {
        var r = kvm_sregs(); try get(&r, "KVM_GET_SREGS", ckvm_req_GET_SREGS()); return r
    }
    public func setSpecialRegisters(_ value: kvm_sregs) throws(KVMError) {
        var r = value; try get(&r, "KVM_SET_SREGS", ckvm_req_SET_SREGS())
    }
    public func fpu() throws(KVMError) -> kvm_fpu {
        var r = kvm_fpu(); try get(&r, "KVM_GET_FPU", ckvm_req_GET_FPU()); return r
    }
    public func setFPU(_ value: kvm_fpu) throws(KVMError) {
        var r = value; try get(&r, "KVM_SET_FPU", ckvm_req_SET_FPU())
    }
    public func lapic() throws(KVMError) -> kvm_lapic_state {
        var r = kvm_lapic_state(); try get(&r, "KVM_GET_LAPIC", ckvm_req_GET_LAPIC()); return r
    }
    public func setLAPIC(_ value: kvm_lapic_state) throws(KVMError) {
        var r = value; try get(&r, "KVM_SET_LAPIC", ckvm_req_SET_LAPIC())
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
