import Foundation
import Glibc
import Synchronization
import Testing
@testable import Machine

// MARK: - A test-side virtio driver shared by the Virtio*Tests files

/// Counts interrupts instead of raising them.
/// A virtio-blk disk on the transport, as the machine builds one.
func makeBlock(path: String, volume: String, readonly: Bool, memory: GuestMemory, base: GuestAddress,
               interrupt: any VirtioInterrupt) throws -> VirtioBlockDevice {
    try VirtioMMIODevice(device: VirtioBlock(path: path, volume: volume, readonly: readonly, memory: memory),
                         base: base, memory: memory, interrupt: interrupt)
}

/// A virtio-net NIC over `fd` (a socket standing in for a TAP) on the transport.
func makeNet(fd: Int32, interfaceName: String, mac: [UInt8], memory: GuestMemory, base: GuestAddress,
             interrupt: any VirtioInterrupt) throws -> VirtioNetDevice {
    try VirtioMMIODevice(device: VirtioNet(fd: fd, interfaceName: interfaceName, mac: mac, memory: memory),
                         base: base, memory: memory, interrupt: interrupt)
}

/// A virtio-net NIC on the TAP interface `tap`.
func makeNet(tap: String, mac: [UInt8], memory: GuestMemory, base: GuestAddress, interrupt: any VirtioInterrupt) throws -> VirtioNetDevice {
    try VirtioMMIODevice(device: VirtioNet(tap: tap, mac: mac, memory: memory), base: base, memory: memory, interrupt: interrupt)
}

final class CountingInterrupt: VirtioInterrupt {
    let count = Atomic<Int>(0)
    func trigger() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// Guest memory for virtio tests: 16 MiB, rings at 1 MiB + 64 KiB per queue, data from 4 MiB.
func virtioTestMemory() throws -> GuestMemory {
    try GuestMemory(map: MemoryMap(memorySize: 16 << 20))
}

/// Drains the VMM dirty bitmap (so a test can see what a later write marks).
func clearDirty(_ memory: GuestMemory) {
    for r in memory.regions { for w in 0..<r.bitmapWords { _ = r.takeDirtyWord(w) } }
}

/// Pages marked in the VMM dirty bitmap (guest page numbers), draining it.
func takeDirtyPages(_ memory: GuestMemory) -> Set<UInt64> {
    var pages = Set<UInt64>()
    for r in memory.regions {
        for w in 0..<r.bitmapWords {
            let bits = r.takeDirtyWord(w)
            for b in 0..<64 where bits & (1 << UInt64(b)) != 0 {
                pages.insert(r.start.raw / 4096 + UInt64(w * 64 + b))
            }
        }
    }
    return pages
}

/// Builds split rings in guest memory and drives a virtio-mmio device through its registers,
/// the way a polled guest driver does.
final class VirtioTestDriver {
    struct Queue {
        var size: UInt16
        var desc: GuestAddress
        var avail: GuestAddress
        var used: GuestAddress
        var nextDesc: UInt16 = 0
        var availIdx: UInt16 = 0
        var lastUsed: UInt16 = 0
    }

    let memory: GuestMemory
    var device: any VirtioTransportDevice
    var queues: [Queue] = []
    /// Next free byte of the data area.
    var dataCursor: UInt64 = 4 << 20

    init(memory: GuestMemory, device: any VirtioTransportDevice) {
        self.memory = memory
        self.device = device
    }

    func read32(_ offset: UInt64) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { device.read(offset: offset, data: $0) }
        return UInt32(littleEndian: v)
    }

    func write32(_ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { device.write(offset: offset, data: $0) }
    }

    func config(_ offset: Int, count: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: count)
        b.withUnsafeMutableBytes { device.read(offset: 0x100 + UInt64(offset), data: $0) }
        return b
    }

    var deviceFeatures: UInt64 {
        write32(VirtioSpec.Register.deviceFeaturesSel, 0)
        let lo = UInt64(read32(VirtioSpec.Register.deviceFeatures))
        write32(VirtioSpec.Register.deviceFeaturesSel, 1)
        return lo | UInt64(read32(VirtioSpec.Register.deviceFeatures)) << 32
    }

    func setDriverFeatures(_ f: UInt64) {
        write32(VirtioSpec.Register.driverFeaturesSel, 0)
        write32(VirtioSpec.Register.driverFeatures, UInt32(truncatingIfNeeded: f))
        write32(VirtioSpec.Register.driverFeaturesSel, 1)
        write32(VirtioSpec.Register.driverFeatures, UInt32(truncatingIfNeeded: f >> 32))
    }

    /// Ring addresses for queue `q` of `size` entries.
    static func layout(_ q: Int, size: UInt16) -> Queue {
        let base = UInt64(1 << 20) + UInt64(q) * 0x10000
        return Queue(size: size, desc: GuestAddress(base), avail: GuestAddress(base + 0x4000), used: GuestAddress(base + 0x8000))
    }

    /// The full virtio initialisation: reset, ACK, DRIVER, features, FEATURES_OK, queues, DRIVER_OK.
    /// Returns the status read back.
    @discardableResult
    func initialize(features: UInt64? = nil, queueSizes: [UInt16], driverOK: Bool = true) -> UInt32 {
        typealias S = VirtioSpec.Status
        write32(VirtioSpec.Register.status, 0)
        write32(VirtioSpec.Register.status, S.acknowledge)
        write32(VirtioSpec.Register.status, S.acknowledge | S.driver)
        setDriverFeatures(features ?? deviceFeatures)
        write32(VirtioSpec.Register.status, S.acknowledge | S.driver | S.featuresOK)
        queues = []
        for (i, size) in queueSizes.enumerated() {
            let l = Self.layout(i, size: size)
            for a in [l.desc, l.avail, l.used] { try? memory.write([UInt8](repeating: 0, count: 0x4000), at: a) }
            setupQueue(i, l)
            queues.append(l)
        }
        if driverOK { write32(VirtioSpec.Register.status, S.acknowledge | S.driver | S.featuresOK | S.driverOK) }
        return read32(VirtioSpec.Register.status)
    }

    func setupQueue(_ i: Int, _ l: Queue, ready: Bool = true) {
        typealias R = VirtioSpec.Register
        write32(R.queueSel, UInt32(i))
        write32(R.queueNum, UInt32(l.size))
        write32(R.queueDescLow, UInt32(truncatingIfNeeded: l.desc.raw)); write32(R.queueDescHigh, UInt32(l.desc.raw >> 32))
        write32(R.queueDriverLow, UInt32(truncatingIfNeeded: l.avail.raw)); write32(R.queueDriverHigh, UInt32(l.avail.raw >> 32))
        write32(R.queueDeviceLow, UInt32(truncatingIfNeeded: l.used.raw)); write32(R.queueDeviceHigh, UInt32(l.used.raw >> 32))
        if ready { write32(R.queueReady, 1) }
    }

    /// Reserves `count` bytes of data area, filled with `fill`.
    func allocate(_ count: Int, fill: UInt8 = 0) -> GuestAddress {
        let a = GuestAddress(dataCursor)
        dataCursor += UInt64((count + 4095) / 4096 * 4096)
        try? memory.write([UInt8](repeating: fill, count: count), at: a)
        return a
    }

    func writeDescriptor(table: GuestAddress, index: UInt16, address: GuestAddress, length: UInt32, flags: UInt16, next: UInt16) {
        let at = GuestAddress(table.raw + 16 * UInt64(index))
        try? memory.store(address.raw, at: at)
        try? memory.store(length, at: GuestAddress(at.raw + 8))
        try? memory.store(flags, at: GuestAddress(at.raw + 12))
        try? memory.store(next, at: GuestAddress(at.raw + 14))
    }

    /// Writes a direct chain of `buffers` into queue `q`'s table; returns its head (not yet made available).
    func buildChain(_ q: Int, _ buffers: [(GuestAddress, UInt32, Bool)]) -> UInt16 {
        let size = queues[q].size
        let head = queues[q].nextDesc
        for (i, b) in buffers.enumerated() {
            let index = (head &+ UInt16(i)) % size
            let last = i == buffers.count - 1
            var flags: UInt16 = b.2 ? VirtioSpec.DescriptorFlag.write : 0
            if !last { flags |= VirtioSpec.DescriptorFlag.next }
            writeDescriptor(table: queues[q].desc, index: index, address: b.0, length: b.1, flags: flags,
                            next: last ? 0 : (index &+ 1) % size)
        }
        queues[q].nextDesc = (head &+ UInt16(buffers.count)) % size
        return head
    }

    /// Writes an indirect table holding `buffers` and one descriptor pointing at it.
    func buildIndirect(_ q: Int, _ buffers: [(GuestAddress, UInt32, Bool)]) -> UInt16 {
        let table = allocate(16 * buffers.count)
        for (i, b) in buffers.enumerated() {
            let last = i == buffers.count - 1
            var flags: UInt16 = b.2 ? VirtioSpec.DescriptorFlag.write : 0
            if !last { flags |= VirtioSpec.DescriptorFlag.next }
            writeDescriptor(table: table, index: UInt16(i), address: b.0, length: b.1, flags: flags, next: last ? 0 : UInt16(i + 1))
        }
        let head = queues[q].nextDesc
        writeDescriptor(table: queues[q].desc, index: head, address: table, length: UInt32(16 * buffers.count),
                        flags: VirtioSpec.DescriptorFlag.indirect, next: 0)
        queues[q].nextDesc = (head &+ 1) % queues[q].size
        return head
    }

    /// Puts `head` in the avail ring and publishes the new avail idx (no notification).
    func makeAvailable(_ q: Int, _ head: UInt16) {
        let l = queues[q]
        try? memory.store(head, at: GuestAddress(l.avail.raw + 4 + 2 * UInt64(l.availIdx % l.size)))
        queues[q].availIdx &+= 1
        try? memory.store(queues[q].availIdx, at: GuestAddress(l.avail.raw + 2))
    }

    func notify(_ q: Int) { write32(VirtioSpec.Register.queueNotify, UInt32(q)) }

    /// Builds, publishes and notifies a direct chain.
    @discardableResult
    func submit(_ q: Int, _ buffers: [(GuestAddress, UInt32, Bool)], notify: Bool = true) -> UInt16 {
        let head = buildChain(q, buffers)
        makeAvailable(q, head)
        if notify { self.notify(q) }
        return head
    }

    var usedIdx: (Int) -> UInt16 {
        { q in (try? self.memory.load(UInt16.self, at: GuestAddress(self.queues[q].used.raw + 2))) ?? 0 }
    }

    /// Waits until `count` new used elements appear on `q` and returns them (id, len).
    func waitUsed(_ q: Int, count: Int = 1, timeout: Double = 5) -> [(UInt32, UInt32)] {
        let deadline = Date().addingTimeInterval(timeout)
        while UInt16(usedIdx(q) &- queues[q].lastUsed) < UInt16(count) && Date() < deadline { usleep(200) }
        var out: [(UInt32, UInt32)] = []
        let l = queues[q]
        while queues[q].lastUsed != usedIdx(q) {
            let slot = UInt64(queues[q].lastUsed % l.size)
            let id = (try? memory.load(UInt32.self, at: GuestAddress(l.used.raw + 4 + 8 * slot))) ?? 0xffff_ffff
            let len = (try? memory.load(UInt32.self, at: GuestAddress(l.used.raw + 8 + 8 * slot))) ?? 0xffff_ffff
            out.append((id, len))
            queues[q].lastUsed &+= 1
        }
        return out
    }

    /// Waits for `condition` (polling), up to `timeout` seconds.
    static func eventually(timeout: Double = 5, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() >= deadline { return false }
            usleep(500)
        }
        return true
    }
}

@Suite("virtio test driver")
struct VirtioDriverTests {
    @Test("the test driver's ring layout fits the 16 MiB test memory")
    func layoutFits() throws {
        let memory = try virtioTestMemory()
        for q in 0..<2 {
            let l = VirtioTestDriver.layout(q, size: 256)
            var sq = SplitQueue(maxSize: 256)
            sq.descTable = l.desc; sq.availRing = l.avail; sq.usedRing = l.used
            #expect(sq.configurationProblem(in: memory) == nil)
        }
    }
}
