import CKVM
import Glibc

/// A KVM virtual machine: memory slots, in-kernel irqchip and PIT, clock, eventfds, dirty log.
public final class VirtualMachine: @unchecked Sendable {
    public let fd: Int32
    public let hypervisor: Hypervisor

    init(fd: Int32, hypervisor: Hypervisor) {
        self.fd = fd
        self.hypervisor = hypervisor
    }

    deinit { close(fd) }

    @discardableResult
    func call(_ name: String, _ request: UInt, _ ptr: UnsafeMutableRawPointer?) throws(KVMError) -> Int {
        let r = ckvm_ioctl_ptr(fd, request, ptr)
        guard r >= 0 else { throw .ioctl(name, errno: Int32(-r)) }
        return r
    }

    @discardableResult
    func call(_ name: String, _ request: UInt, arg: UInt) throws(KVMError) -> Int {
        let r = ckvm_ioctl_arg(fd, request, arg)
        guard r >= 0 else { throw .ioctl(name, errno: Int32(-r)) }
        return r
    }

    /// The value of `KVM_CHECK_EXTENSION` on this VM (0 when absent).
    public func check(_ capability: Capability) -> Int { check(rawCapability: capability.number) }

    func check(rawCapability: Int32) -> Int {
        let r = ckvm_ioctl_arg(fd, ckvm_req_CHECK_EXTENSION(), UInt(bitPattern: Int(rawCapability)))
        return r < 0 ? 0 : Int(r)
    }

    /// True once `enableManualDirtyLogProtect()` succeeded: dirty pages stay write-enabled
    /// until `clearDirtyLog` re-protects them.
    public private(set) var manualDirtyLogProtect = false

    /// Turns on manual dirty-log protect (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`) when KVM offers
    /// it, so that reading the log does not re-protect every page at once. Returns whether it is on.
    @discardableResult
    public func enableManualDirtyLogProtect() -> Bool {
        guard check(.manualDirtyLogProtect) & 1 != 0 else { return false }
        do {
            try enableCapability(UInt32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), args: [UInt64(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)])
            manualDirtyLogProtect = true
        } catch { manualDirtyLogProtect = false }
        return manualDirtyLogProtect
    }

    /// Maps `size` bytes of host memory at `host` to guest-physical `guestAddress` in `slot`.
    public func setMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64,
                                host: UnsafeMutableRawPointer, logDirty: Bool) throws(KVMError) {
        var region = kvm_userspace_memory_region()
        region.slot = slot
        region.flags = logDirty ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0
        region.guest_phys_addr = guestAddress
        region.memory_size = size
        region.userspace_addr = UInt64(UInt(bitPattern: host))
        try withUnsafeMutableBytes(of: &region) { p throws(KVMError) in
            _ = try call("KVM_SET_USER_MEMORY_REGION", ckvm_req_SET_USER_MEMORY_REGION(), p.baseAddress)
        }
    }

    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        try call("KVM_SET_TSS_ADDR", ckvm_req_SET_TSS_ADDR(), arg: UInt(address))
    }

    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var a = address
        try withUnsafeMutableBytes(of: &a) { p throws(KVMError) in
            _ = try call("KVM_SET_IDENTITY_MAP_ADDR", ckvm_req_SET_IDENTITY_MAP_ADDR(), p.baseAddress)
        }
    }

    /// Creates the in-kernel PIC + IOAPIC + LAPICs.
    public func createIRQChip() throws(KVMError) {
        try call("KVM_CREATE_IRQCHIP", ckvm_req_CREATE_IRQCHIP(), arg: 0)
    }

    /// Creates the in-kernel i8254 PIT.
    public func createPIT2() throws(KVMError) {
        var config = kvm_pit_config()
        try withUnsafeMutableBytes(of: &config) { p throws(KVMError) in
            _ = try call("KVM_CREATE_PIT2", ckvm_req_CREATE_PIT2(), p.baseAddress)
        }
    }

    /// Drives GSI `irq` to `level`.
    public func setIRQLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        try withUnsafeMutableBytes(of: &line) { p throws(KVMError) in
            _ = try call("KVM_IRQ_LINE", ckvm_req_IRQ_LINE(), p.baseAddress)
        }
    }

    /// Makes a write to `eventFD` raise GSI `gsi` (edge).
    public func registerIRQFD(eventFD: Int32, gsi: UInt32) throws(KVMError) {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(eventFD)
        irqfd.gsi = gsi
        try withUnsafeMutableBytes(of: &irqfd) { p throws(KVMError) in
            _ = try call("KVM_IRQFD", ckvm_req_IRQFD(), p.baseAddress)
        }
    }

    /// Makes a guest write of `length` bytes at `address` (MMIO, or port when `pio`) signal
    /// `eventFD` instead of exiting to user space; `datamatch` restricts it to one value.
    public func registerIOEventFD(eventFD: Int32, address: UInt64, length: UInt32,
                                  pio: Bool = false, datamatch: UInt64? = nil,
                                  deassign: Bool = false) throws(KVMError) {
        var ev = kvm_ioeventfd()
        ev.addr = address
        ev.len = length
        ev.fd = eventFD
        var flags: UInt32 = 0
        if pio { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_pio) }
        if let d = datamatch {
            flags |= UInt32(1 << kvm_ioeventfd_flag_nr_datamatch)
            ev.datamatch = d
        }
        if deassign { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_deassign) }
        ev.flags = flags
        try withUnsafeMutableBytes(of: &ev) { p throws(KVMError) in
            _ = try call("KVM_IOEVENTFD", ckvm_req_IOEVENTFD(), p.baseAddress)
        }
    }

    /// Enables a VM capability with up to four arguments.
    func enableCapability(_ cap: UInt32, args: [UInt64] = []) throws(KVMError) {
        var c = kvm_enable_cap()
        c.cap = cap
        withUnsafeMutableBytes(of: &c.args) { p in
            for (i, a) in args.prefix(4).enumerated() { p.storeBytes(of: a, toByteOffset: i * 8, as: UInt64.self) }
        }
        try withUnsafeMutableBytes(of: &c) { p throws(KVMError) in
            _ = try call("KVM_ENABLE_CAP", ckvm_req_ENABLE_CAP(), p.baseAddress)
        }
    }

    /// Copies KVM's dirty bitmap for `slot` into `bitmap` (one bit per page, 64-bit words).
    /// Without manual protect this also clears KVM's copy.
    public func getDirtyLog(slot: UInt32, into bitmap: UnsafeMutablePointer<UInt64>) throws(KVMError) {
        var log = kvm_dirty_log()
        log.slot = slot
        log.dirty_bitmap = UnsafeMutableRawPointer(bitmap)
        try withUnsafeMutableBytes(of: &log) { p throws(KVMError) in
            _ = try call("KVM_GET_DIRTY_LOG", ckvm_req_GET_DIRTY_LOG(), p.baseAddress)
        }
    }

    /// Re-protects the pages set in `bitmap` (pages `firstPage ..< firstPage+numPages` of `slot`)
    /// so that the next guest write marks them dirty again. `firstPage` must be a multiple of 64.
    public func clearDirtyLog(slot: UInt32, firstPage: UInt64, numPages: UInt32,
                              bitmap: UnsafeMutablePointer<UInt64>) throws(KVMError) {
        var log = kvm_clear_dirty_log()
        log.slot = slot
        log.first_page = firstPage
        log.num_pages = numPages
        log.dirty_bitmap = UnsafeMutableRawPointer(bitmap)
        try withUnsafeMutableBytes(of: &log) { p throws(KVMError) in
            _ = try call("KVM_CLEAR_DIRTY_LOG", ckvm_req_CLEAR_DIRTY_LOG(), p.baseAddress)
        }
    }

    // MARK: VM-wide state

    /// Size of one `KVM_GET_IRQCHIP` blob (`struct kvm_irqchip`).
    public static let irqChipStateSize = MemoryLayout<kvm_irqchip>.size
    /// Size of the PIT state blob (`struct kvm_pit_state2`).
    public static let pitStateSize = MemoryLayout<kvm_pit_state2>.size

    /// `KVM_GET_IRQCHIP` for one chip, as raw bytes (the chip id is inside).
    public func irqChip(_ chip: IRQChipID) throws(KVMError) -> [UInt8] {
        var c = kvm_irqchip()
        c.chip_id = chip.rawValue
        try withUnsafeMutableBytes(of: &c) { p throws(KVMError) in
            _ = try call("KVM_GET_IRQCHIP", ckvm_req_GET_IRQCHIP(), p.baseAddress)
        }
        return withUnsafeBytes(of: &c) { Array($0) }
    }

    /// Loads a blob read by `irqChip` into the chip it names; returns that chip.
    @discardableResult
    public func setIRQChip(_ bytes: [UInt8]) throws(KVMError) -> IRQChipID {
        var c = kvm_irqchip()
        try RawState.load(bytes, into: &c, name: "irqchip")
        guard let id = IRQChipID(rawValue: c.chip_id) else { throw .badState("irqchip", "unknown chip id \(c.chip_id)") }
        try withUnsafeMutableBytes(of: &c) { p throws(KVMError) in
            _ = try call("KVM_SET_IRQCHIP", ckvm_req_SET_IRQCHIP(), p.baseAddress)
        }
        return id
    }

    /// The chip a blob read by `irqChip` belongs to, or nil when the blob is malformed.
    public static func irqChipID(of bytes: [UInt8]) -> IRQChipID? {
        guard bytes.count == irqChipStateSize else { return nil }
        return IRQChipID(rawValue: bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
    }

    public func pit() throws(KVMError) -> [UInt8] {
        var s = kvm_pit_state2()
        try withUnsafeMutableBytes(of: &s) { p throws(KVMError) in
            _ = try call("KVM_GET_PIT2", ckvm_req_GET_PIT2(), p.baseAddress)
        }
        return withUnsafeBytes(of: &s) { Array($0) }
    }

    public func setPIT(_ bytes: [UInt8]) throws(KVMError) {
        var s = kvm_pit_state2()
        try RawState.load(bytes, into: &s, name: "pit")
        try withUnsafeMutableBytes(of: &s) { p throws(KVMError) in
            _ = try call("KVM_SET_PIT2", ckvm_req_SET_PIT2(), p.baseAddress)
        }
    }

    /// The kvmclock value (ns) the guest sees now.
    public func clock() throws(KVMError) -> UInt64 {
        var c = kvm_clock_data()
        try withUnsafeMutableBytes(of: &c) { p throws(KVMError) in
            _ = try call("KVM_GET_CLOCK", ckvm_req_GET_CLOCK(), p.baseAddress)
        }
        return c.clock
    }

    public func setClock(_ ns: UInt64) throws(KVMError) {
        var c = kvm_clock_data()
        c.clock = ns
        try withUnsafeMutableBytes(of: &c) { p throws(KVMError) in
            _ = try call("KVM_SET_CLOCK", ckvm_req_SET_CLOCK(), p.baseAddress)
        }
    }

    /// Creates vCPU `id` and maps its `kvm_run` area.
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let r = ckvm_ioctl_arg(fd, ckvm_req_CREATE_VCPU(), UInt(id))
        guard r >= 0 else { throw .ioctl("KVM_CREATE_VCPU", errno: Int32(-r)) }
        return try VCPU(fd: Int32(r), id: id, mmapSize: hypervisor.vcpuMmapSize)
    }
}

/// Copies between raw state bytes and the C structure KVM uses, checking the size.
public enum RawState {
    public static func load<T>(_ bytes: [UInt8], into value: inout T, name: String) throws(KVMError) {
        let size = MemoryLayout<T>.size
        guard bytes.count == size else { throw .badStateSize(name, expected: size, got: bytes.count) }
        withUnsafeMutableBytes(of: &value) { dst in
            bytes.withUnsafeBytes { src in dst.copyMemory(from: src) }
        }
    }

    public static func bytes<T>(of value: T) -> [UInt8] {
        withUnsafeBytes(of: value) { Array($0) }
    }
}
