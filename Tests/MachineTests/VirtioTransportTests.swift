import Foundation
import Glibc
import Testing
@testable import Machine

/// A temporary disk image of `sectors` 512-byte sectors, removed when the value goes away.
final class TempImage {
    let path: String
    init(sectors: Int, fill: (Int) -> UInt8 = { _ in 0 }, bytes: Int? = nil) throws {
        path = NSTemporaryDirectory() + "virtio-test-\(UUID().uuidString.prefix(8)).img"
        let count = bytes ?? sectors * 512
        var data = [UInt8](repeating: 0, count: count)
        for i in 0..<count { data[i] = fill(i) }
        try Data(data).write(to: URL(fileURLWithPath: path))
    }
    deinit { unlink(path) }
    var contents: [UInt8] { (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? [] }
}

/// A virtio-blk device on a fresh image, with a driver and an interrupt counter.
struct BlockRig {
    let memory: GuestMemory
    let image: TempImage
    let interrupt = CountingInterrupt()
    let device: VirtioBlockDevice
    let driver: VirtioTestDriver

    init(sectors: Int = 64, readonly: Bool = false, volume: String = "vol0", memory: GuestMemory? = nil,
         fill: @escaping (Int) -> UInt8 = { UInt8(truncatingIfNeeded: $0 / 512) }) throws {
        self.memory = try memory ?? virtioTestMemory()
        image = try TempImage(sectors: sectors, fill: fill)
        device = try makeBlock(path: image.path, volume: volume, readonly: readonly, memory: self.memory,
                                 base: GuestAddress(0xd000_0000), interrupt: interrupt)
        driver = VirtioTestDriver(memory: self.memory, device: device)
    }
}

@Suite("virtio-mmio transport registers")
struct VirtioTransportTests {
    typealias R = VirtioSpec.Register
    typealias S = VirtioSpec.Status

    @Test("identity registers: magic, version 2, device id, vendor")
    func identity() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        #expect(d.read32(R.magicValue) == 0x7472_6976)
        #expect(d.read32(R.version) == 2)
        #expect(d.read32(R.deviceID) == 2)
        #expect(d.read32(R.vendorID) == VirtioSpec.vendorID)
        #expect(d.read32(R.shmLenLow) == 0xffff_ffff)
        #expect(d.read32(R.configGeneration) == 0)
        // Registers below 0x100 answer only aligned 32-bit reads.
        var b: UInt16 = 0xffff
        withUnsafeMutableBytes(of: &b) { rig.device.read(offset: R.magicValue, data: $0) }
        #expect(b == 0)
        #expect(rig.device.stateName == "virtio-blk@0xd0000000")
    }

    @Test("features are offered in 32-bit pages and VERSION_1 is among them")
    func featurePages() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        let f = d.deviceFeatures
        #expect(f & VirtioSpec.Feature.version1 != 0)
        #expect(f & VirtioSpec.Feature.ringEventIdx != 0 && f & VirtioSpec.Feature.ringIndirectDesc != 0)
        #expect(f & VirtioBlock.Feature.flush != 0 && f & VirtioBlock.Feature.readOnly == 0)
        d.write32(R.deviceFeaturesSel, 2)
        #expect(d.read32(R.deviceFeatures) == 0)
    }

    @Test("FEATURES_OK is refused without VERSION_1 or with features not offered")
    func featureNegotiation() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        let offered = d.deviceFeatures
        for bad in [offered & ~VirtioSpec.Feature.version1, offered | (1 << 40), UInt64(0)] {
            d.write32(R.status, 0)
            d.write32(R.status, S.acknowledge | S.driver)
            d.setDriverFeatures(bad)
            d.write32(R.status, S.acknowledge | S.driver | S.featuresOK)
            #expect(d.read32(R.status) & S.featuresOK == 0, "accepted 0x\(String(bad, radix: 16))")
            // DRIVER_OK does not stick without FEATURES_OK.
            d.write32(R.status, S.acknowledge | S.driver | S.driverOK)
            #expect(d.read32(R.status) & S.driverOK == 0)
        }
        d.write32(R.status, 0)
        d.write32(R.status, S.acknowledge | S.driver)
        d.setDriverFeatures(VirtioSpec.Feature.version1)
        d.write32(R.status, S.acknowledge | S.driver | S.featuresOK)
        #expect(d.read32(R.status) == S.acknowledge | S.driver | S.featuresOK)
        #expect(rig.device.transportState.driverFeatures == VirtioSpec.Feature.version1)
    }

    @Test("driver features are only written between DRIVER and FEATURES_OK")
    func driverFeatureWindow() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        d.setDriverFeatures(VirtioSpec.Feature.version1)          // before DRIVER: ignored
        #expect(rig.device.transportState.driverFeatures == 0)
        d.initialize(features: VirtioSpec.Feature.version1, queueSizes: [8])
        d.setDriverFeatures(VirtioSpec.Feature.version1 | VirtioBlock.Feature.flush)   // after FEATURES_OK: ignored
        #expect(rig.device.transportState.driverFeatures == VirtioSpec.Feature.version1)
    }

    @Test("queue registers: maximum, size, addresses, and ready only after FEATURES_OK")
    func queueRegisters() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        d.write32(R.queueSel, 0)
        #expect(d.read32(R.queueNumMax) == 256)
        d.write32(R.queueSel, 1)
        #expect(d.read32(R.queueNumMax) == 0)
        d.write32(R.queueReady, 1)                                 // no such queue: ignored
        #expect(d.read32(R.queueReady) == 0)
        d.write32(R.queueSel, 0)
        d.write32(R.queueNum, 512)                                 // above the maximum: ignored
        #expect(d.read32(R.queueNum) == 256)
        let l = VirtioTestDriver.layout(0, size: 16)
        d.setupQueue(0, l)                                         // before FEATURES_OK: not ready
        #expect(d.read32(R.queueReady) == 0)
        #expect(d.read32(R.queueDescLow) == UInt32(l.desc.raw))
        #expect(d.read32(R.queueDriverLow) == UInt32(l.avail.raw) && d.read32(R.queueDeviceLow) == UInt32(l.used.raw))
        d.initialize(queueSizes: [16])
        #expect(d.read32(R.queueReady) == 1)
        // A live queue's configuration is frozen.
        d.write32(R.queueNum, 8)
        #expect(d.read32(R.queueNum) == 16)
    }

    @Test("QueueReady with a bad ring sets DEVICE_NEEDS_RESET and raises a config interrupt",
          arguments: [(UInt16(12), UInt64(1 << 20)), (UInt16(16), UInt64(16 << 20)), (UInt16(16), UInt64((1 << 20) + 8))])
    func badQueueReady(size: UInt16, desc: UInt64) throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        d.initialize(queueSizes: [], driverOK: false)
        var l = VirtioTestDriver.layout(0, size: size)
        l.desc = GuestAddress(desc)
        d.setupQueue(0, l)
        #expect(d.read32(R.queueReady) == 0)
        #expect(d.read32(R.status) & S.deviceNeedsReset != 0)
        #expect(d.read32(R.interruptStatus) & VirtioSpec.Interrupt.configChange != 0)
        #expect(rig.interrupt.value == 1)
        d.write32(R.interruptACK, VirtioSpec.Interrupt.configChange)
        #expect(d.read32(R.interruptStatus) == 0)
        // A reset clears it and a good setup works.
        #expect(d.initialize(queueSizes: [16]) == S.acknowledge | S.driver | S.featuresOK | S.driverOK)
    }

    @Test("writing 0 to status resets features, queues and interrupt status")
    func reset() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        d.initialize(queueSizes: [16])
        d.write32(R.queueSel, 0)
        #expect(d.read32(R.queueReady) == 1)
        d.write32(R.status, 0)
        #expect(d.read32(R.status) == 0)
        #expect(d.read32(R.queueReady) == 0)
        #expect(d.read32(R.queueNum) == 256)
        #expect(d.read32(R.queueDescLow) == 0)
        let s = rig.device.transportState
        #expect(s.driverFeatures == 0 && s.interruptStatus == 0)
    }

    @Test("configuration space reads at any width; writes are ignored")
    func configSpace() throws {
        let rig = try BlockRig(sectors: 0x1234)
        defer { rig.device.shutdown() }
        let d = rig.driver
        #expect(d.config(0, count: 8) == [0x34, 0x12, 0, 0, 0, 0, 0, 0])
        #expect(d.config(0, count: 1) == [0x34])
        #expect(d.config(1, count: 2) == [0x12, 0])
        #expect(d.config(20, count: 4) == [0, 2, 0, 0])               // blk_size 512
        #expect(d.config(12, count: 4) == [254, 0, 0, 0])             // seg_max
        #expect(d.config(8, count: 4) == [0, 0, 2, 0])                // size_max 128 KiB
        withUnsafeBytes(of: UInt32(0xffff_ffff)) { rig.device.write(offset: 0x100, data: $0) }
        #expect(d.config(0, count: 4) == [0x34, 0x12, 0, 0])
        #expect(d.config(0x200, count: 4) == [0, 0, 0, 0])
    }
}
