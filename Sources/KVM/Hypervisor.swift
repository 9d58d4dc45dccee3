import CKVM
import Glibc

/// One CPUID leaf as KVM reports or accepts it.
public struct CPUIDEntry: Sendable, Equatable, Hashable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }

    /// True when the sub-leaf index is significant for this leaf (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
    public var indexSignificant: Bool { flags & 1 != 0 }
}

/// The system-level /dev/kvm handle: capabilities, supported CPUID, MSR list, VM creation.
public final class Hypervisor: @unchecked Sendable {
    public let fd: Int32
    public let vcpuMmapSize: Int

    /// Opens `/dev/kvm` (or `path`) and checks the API version.
    public init(path: String = "/dev/kvm") throws(KVMError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .open(path: path, errno: errno) }
        let version = ckvm_ioctl_none(fd, ckvm_req_GET_API_VERSION())
        guard version == 12 else {
            close(fd)
            if version < 0 { throw .ioctl("KVM_GET_API_VERSION", errno: Int32(-version)) }
            throw .apiVersion(Int(version))
        }
        let size = ckvm_ioctl_none(fd, ckvm_req_GET_VCPU_MMAP_SIZE())
        guard size > 0 else {
            close(fd)
            throw .ioctl("KVM_GET_VCPU_MMAP_SIZE", errno: Int32(-size))
        }
        self.fd = fd
        self.vcpuMmapSize = Int(size)
    }

    deinit { close(fd) }

    /// The value of `KVM_CHECK_EXTENSION` for `capability` (0 when absent).
    public func check(_ capability: Capability) -> Int { check(rawCapability: capability.number) }

    func check(rawCapability: Int32) -> Int {
        let r = ckvm_ioctl_arg(fd, ckvm_req_CHECK_EXTENSION(), UInt(bitPattern: Int(rawCapability)))
        return r < 0 ? 0 : Int(r)
    }

    /// Throws naming the first of `capabilities` this host's KVM lacks.
    public func require(_ capabilities: [Capability]) throws(KVMError) {
        for c in capabilities where check(c) == 0 { throw .missingCapability(c.description) }
    }

    /// Every CPUID leaf KVM can expose to a guest on this host.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        try CPUIDBuffer.fetch(fd: fd, request: ckvm_req_GET_SUPPORTED_CPUID(), name: "KVM_GET_SUPPORTED_CPUID")
    }

    /// The MSR indices KVM saves and restores for a vCPU.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var capacity = 256
        while true {
            let words = 1 + capacity
            var buffer = [UInt32](repeating: 0, count: words)
            buffer[0] = UInt32(capacity)
            let r = buffer.withUnsafeMutableBytes { ckvm_ioctl_ptr(fd, ckvm_req_GET_MSR_INDEX_LIST(), $0.baseAddress) }
            if r == -Int(E2BIG) { capacity *= 2; continue }
            guard r >= 0 else { throw .ioctl("KVM_GET_MSR_INDEX_LIST", errno: Int32(-r)) }
            let n = min(Int(buffer[0]), capacity)
            return Array(buffer[1..<(1 + n)])
        }
    }

    /// Creates a new, empty virtual machine.
    public func createVM() throws(KVMError) -> VirtualMachine {
        var r: Int
        repeat {
            r = ckvm_ioctl_arg(fd, ckvm_req_CREATE_VM(), 0)
        } while r == -Int(EINTR)
        guard r >= 0 else { throw .ioctl("KVM_CREATE_VM", errno: Int32(-r)) }
        return VirtualMachine(fd: Int32(r), hypervisor: self)
    }
}

/// Marshals the variable-length `struct kvm_cpuid2`.
enum CPUIDBuffer {
    static let headerSize = 8
    static let entrySize = MemoryLayout<kvm_cpuid_entry2>.stride

    static func fetch(fd: Int32, request: UInt, name: String) throws(KVMError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: headerSize + capacity * entrySize, alignment: 8)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: headerSize + capacity * entrySize)
            raw.storeBytes(of: UInt32(capacity), as: UInt32.self)
            let r = ckvm_ioctl_ptr(fd, request, raw)
            if r == -Int(E2BIG) && capacity < 4096 { capacity *= 2; continue }
            guard r >= 0 else { throw .ioctl(name, errno: Int32(-r)) }
            let n = min(Int(raw.load(as: UInt32.self)), capacity)
            var out: [CPUIDEntry] = []
            out.reserveCapacity(n)
            for i in 0..<n {
                let e = raw.load(fromByteOffset: headerSize + i * entrySize, as: kvm_cpuid_entry2.self)
                out.append(CPUIDEntry(function: e.function, index: e.index, flags: e.flags,
                                      eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx))
            }
            return out
        }
    }

    /// Calls `body` with a `struct kvm_cpuid2 *` holding `entries`.
    static func with<R>(_ entries: [CPUIDEntry], _ body: (UnsafeMutableRawPointer) -> R) -> R {
        let size = headerSize + max(entries.count, 1) * entrySize
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        raw.storeBytes(of: UInt32(entries.count), as: UInt32.self)
        for (i, e) in entries.enumerated() {
            var c = kvm_cpuid_entry2()
            c.function = e.function; c.index = e.index; c.flags = e.flags
            c.eax = e.eax; c.ebx = e.ebx; c.ecx = e.ecx; c.edx = e.edx
            raw.storeBytes(of: c, toByteOffset: headerSize + i * entrySize, as: kvm_cpuid_entry2.self)
        }
        return body(raw)
    }
}
