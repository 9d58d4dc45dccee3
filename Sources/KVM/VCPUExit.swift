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
    /// `KVM_EXIT_SYSTEM_EVENT`.
    case systemEvent(SystemEvent)
    /// KVM could not emulate or run something; `data` are the kernel's diagnostic words.
    case internalError(suberror: UInt32, data: [UInt64])
    case failEntry(reason: UInt64, cpu: UInt32)
    /// `KVM_RUN` returned EINTR/EAGAIN: a signal or `immediate_exit` asked the vCPU to come out.
    case interrupted
    case debug
    case unknown(UInt32)

    /// The kinds of `KVM_EXIT_SYSTEM_EVENT`.
    public enum SystemEvent: UInt32, Sendable {
        /// The guest asked to power off (ACPI, PSCI).
        case shutdown = 1
        case reset = 2
        /// The guest reported a crash (pvpanic and similar).
        case crash = 3
        case other = 0
    }
}

extension VCPU {
    /// Enters the guest until the next exit to user space.
    public func run() throws(KVMError) -> VCPUExit {
        let r = ckvm_ioctl_arg(fd, ckvm_req_RUN(), 0)
        if r < 0 {
            let e = Int32(-r)
            if e == EINTR || e == EAGAIN { return .interrupted }
            throw .ioctl("KVM_RUN", errno: e)
        }
        return decodeExit()
    }

    private func decodeExit() -> VCPUExit {
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
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(VCPUExit.SystemEvent(rawValue: runArea.pointee.system_event.type) ?? .other)
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
}
