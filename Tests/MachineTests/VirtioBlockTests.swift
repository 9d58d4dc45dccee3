import Foundation
import Glibc
import Testing
@testable import Machine

extension BlockRig {
    /// Submits one request (header, optional data buffers, status byte) and waits for it.
    /// Returns (status byte, used length), or nil when it was not completed in time.
    @discardableResult
    func request(type: UInt32, sector: UInt64, data: [(GuestAddress, UInt32, Bool)] = [], indirect: Bool = false,
                 timeout: Double = 5) -> (UInt8, UInt32)? {
        let header = driver.allocate(16)
        try? memory.store(type, at: header)
        try? memory.store(sector, at: GuestAddress(header.raw + 8))
        let status = driver.allocate(1, fill: 0xee)
        let buffers = [(header, UInt32(16), false)] + data + [(status, UInt32(1), true)]
        let head = indirect ? driver.buildIndirect(0, buffers) : driver.buildChain(0, buffers)
        driver.makeAvailable(0, head)
        driver.notify(0)
        let used = driver.waitUsed(0, timeout: timeout)
        guard let u = used.first, u.0 == UInt32(head) else { return nil }
        return ((try? memory.load(UInt8.self, at: status)) ?? 0xee, u.1)
    }
}

@Suite("virtio-blk device")
struct VirtioBlockTests {
    static let IN: UInt32 = 0, OUT: UInt32 = 1, FLUSH: UInt32 = 4, GET_ID: UInt32 = 8

    @Test("images that are missing, empty or not a multiple of 512 bytes are refused with a clear error")
    func badImages() throws {
        let memory = try virtioTestMemory()
        let empty = try TempImage(sectors: 0)
        let odd = try TempImage(sectors: 0, bytes: 1000)
        for (path, words) in [(empty.path, "0 bytes"), (odd.path, "1000 bytes"), ("/nonexistent/disk.img", "cannot open")] {
            do {
                let d = try makeBlock(path: path, volume: "v", readonly: false, memory: memory,
                                        base: GuestAddress(0xd000_0000), interrupt: CountingInterrupt())
                d.shutdown()
                Issue.record("accepted \(path)")
            } catch {
                #expect("\(error)".contains(path) && "\(error)".contains(words), "\(error)")
            }
        }
    }

    @Test("OUT writes the sectors to the image and IN reads them back, directly and indirectly")
    func writeThenRead() throws {
        let rig = try BlockRig(sectors: 64)
        defer { rig.device.shutdown() }
        rig.driver.initialize(queueSizes: [16])
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let src = rig.driver.allocate(1024)
        try rig.memory.write(pattern, at: src)
        let w = rig.request(type: Self.OUT, sector: 3, data: [(src, 512, false), (GuestAddress(src.raw + 512), 512, false)])
        #expect(w?.0 == 0 && w?.1 == 1)
        let file = rig.image.contents
        #expect(Array(file[(3 * 512)..<(5 * 512)]) == pattern)
        #expect(file[2 * 512] == 2 && file[5 * 512] == 5)      // neighbours untouched
        let dst = rig.driver.allocate(1024)
        let r = rig.request(type: Self.IN, sector: 3, data: [(dst, 1024, true)], indirect: true)
        #expect(r?.0 == 0 && r?.1 == 1025)
        #expect(try rig.memory.read(dst, count: 1024) == pattern)
    }

    @Test("IN marks the guest pages it fills, the status byte and the used ring dirty")
    func readMarksDirty() throws {
        let rig = try BlockRig(sectors: 64)
        defer { rig.device.shutdown() }
        rig.driver.initialize(queueSizes: [16])
        let dst = rig.driver.allocate(8192)
        clearDirty(rig.memory)
        let r = rig.request(type: Self.IN, sector: 0, data: [(dst, 8192, true)])
        #expect(r?.0 == 0)
        let dirty = takeDirtyPages(rig.memory)
        #expect(dirty.contains(dst.raw / 4096) && dirty.contains(dst.raw / 4096 + 1))
        #expect(dirty.contains(rig.driver.queues[0].used.raw / 4096))
        #expect(dirty.contains((dst.raw + 8192) / 4096))   // the status byte's page
    }

    @Test("errors: beyond capacity, partial sectors, wrong direction, unknown type")
    func requestErrors() throws {
        let rig = try BlockRig(sectors: 8)
        defer { rig.device.shutdown() }
        rig.driver.initialize(queueSizes: [16])
        let buf = rig.driver.allocate(4096)
        #expect(rig.request(type: Self.IN, sector: 8, data: [(buf, 512, true)])?.0 == 1)
        #expect(rig.request(type: Self.IN, sector: 7, data: [(buf, 1024, true)])?.0 == 1)
        #expect(rig.request(type: Self.IN, sector: UInt64.max, data: [(buf, 512, true)])?.0 == 1)
        #expect(rig.request(type: Self.IN, sector: 0, data: [(buf, 100, true)])?.0 == 1)
        // IN into a device-readable buffer, OUT from a device-writable one.
        #expect(rig.request(type: Self.IN, sector: 0, data: [(buf, 512, false)])?.0 == 1)
        #expect(rig.request(type: Self.OUT, sector: 0, data: [(buf, 512, true)])?.0 == 1)
        #expect(rig.request(type: 99, sector: 0)?.0 == 2)
        let expected: [UInt8] = (0..<(8 * 512)).map { (i: Int) -> UInt8 in UInt8(i / 512) }
        #expect(rig.image.contents == expected)
        // The device still serves a good request.
        #expect(rig.request(type: Self.IN, sector: 7, data: [(buf, 512, true)])?.0 == 0)
        #expect(try rig.memory.read(buf, count: 4) == [7, 7, 7, 7])
    }

    @Test("FLUSH succeeds and GET_ID returns the volume name")
    func flushAndID() throws {
        let rig = try BlockRig(volume: "data-volume-01")
        defer { rig.device.shutdown() }
        rig.driver.initialize(queueSizes: [16])
        #expect(rig.request(type: Self.FLUSH, sector: 0)?.0 == 0)
        let id = rig.driver.allocate(20, fill: 0xaa)
        let r = rig.request(type: Self.GET_ID, sector: 0, data: [(id, 20, true)])
        #expect(r?.0 == 0 && r?.1 == 21)
        #expect(try rig.memory.read(id, count: 20) == Array("data-volume-01".utf8) + [0, 0, 0, 0, 0, 0])
    }

    @Test("a read-only disk offers RO, refuses OUT with IOERR and leaves the file unchanged")
    func readonly() throws {
        let rig = try BlockRig(sectors: 8, readonly: true)
        defer { rig.device.shutdown() }
        #expect(rig.driver.deviceFeatures & VirtioBlock.Feature.readOnly != 0)
        rig.driver.initialize(queueSizes: [16])
        let before = rig.image.contents
        let src = rig.driver.allocate(512, fill: 0x55)
        #expect(rig.request(type: Self.OUT, sector: 1, data: [(src, 512, false)])?.0 == 1)
        #expect(rig.image.contents == before)
        let dst = rig.driver.allocate(512)
        #expect(rig.request(type: Self.IN, sector: 1, data: [(dst, 512, true)])?.0 == 0)
        #expect(try rig.memory.read(dst, count: 2) == [1, 1])
    }

    @Test("a malformed chain is returned with length 0 and the next request works")
    func malformedChain() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        d.initialize(queueSizes: [8])
        let t = d.queues[0].desc
        d.writeDescriptor(table: t, index: 0, address: GuestAddress(0x40_0000), length: 16, flags: VirtioSpec.DescriptorFlag.next, next: 1)
        d.writeDescriptor(table: t, index: 1, address: GuestAddress(0x40_0000), length: 16, flags: VirtioSpec.DescriptorFlag.next, next: 0)
        d.queues[0].nextDesc = 2
        d.makeAvailable(0, 0)
        d.notify(0)
        let used = d.waitUsed(0)
        #expect(used.count == 1 && used.first?.0 == 0 && used.first?.1 == 0)
        #expect(rig.device.statistics.badChains == 1)
        let buf = d.allocate(512)
        #expect(rig.request(type: Self.IN, sector: 5, data: [(buf, 512, true)])?.0 == 0)
        #expect(rig.device.status & VirtioSpec.Status.deviceNeedsReset == 0)
    }

    @Test("a sound chain with a data buffer outside RAM fails with IOERR in its status byte")
    func badBufferGetsIOERR() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        rig.driver.initialize(queueSizes: [8])
        let r = rig.request(type: Self.IN, sector: 0, data: [(GuestAddress(1 << 40), 512, true)])
        #expect(r?.0 == 1 && r?.1 == 1)
        let huge = rig.request(type: Self.IN, sector: 0, data: [(rig.driver.allocate(512), 0xffff_f000, true)])
        #expect(huge?.0 == 1 && huge?.1 == 1)
        #expect(rig.device.statistics.badChains == 2)
    }

    @Test("an avail idx jump sets DEVICE_NEEDS_RESET with a config interrupt; a reset recovers")
    func availJumpNeedsReset() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        d.initialize(queueSizes: [8])
        try rig.memory.store(UInt16(100), at: GuestAddress(d.queues[0].avail.raw + 2))
        d.notify(0)
        #expect(VirtioTestDriver.eventually { rig.device.status & VirtioSpec.Status.deviceNeedsReset != 0 })
        #expect(d.read32(VirtioSpec.Register.interruptStatus) & VirtioSpec.Interrupt.configChange != 0)
        #expect(rig.interrupt.value >= 1)
        d.initialize(queueSizes: [8])
        let buf = d.allocate(512)
        #expect(rig.request(type: Self.IN, sector: 1, data: [(buf, 512, true)])?.0 == 0)
    }

    @Test("interrupts follow NO_INTERRUPT without EVENT_IDX and used_event with it")
    func interruptSuppression() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        let noEventIdx = d.deviceFeatures & ~VirtioSpec.Feature.ringEventIdx
        d.initialize(features: noEventIdx, queueSizes: [16])
        try rig.memory.store(VirtioSpec.availNoInterrupt, at: d.queues[0].avail)
        let before = rig.interrupt.value
        #expect(rig.request(type: Self.FLUSH, sector: 0)?.0 == 0)
        #expect(rig.interrupt.value == before)
        try rig.memory.store(UInt16(0), at: d.queues[0].avail)
        #expect(rig.request(type: Self.FLUSH, sector: 0)?.0 == 0)
        #expect(VirtioTestDriver.eventually { rig.interrupt.value == before + 1 })
        #expect(d.read32(VirtioSpec.Register.interruptStatus) == VirtioSpec.Interrupt.usedBuffer)

        // EVENT_IDX: used_event far ahead means no interrupt until used idx passes it.
        d.initialize(queueSizes: [16])
        let base = rig.interrupt.value
        #expect(rig.request(type: Self.FLUSH, sector: 0)?.0 == 0)       // first: always
        #expect(VirtioTestDriver.eventually { rig.interrupt.value == base + 1 })
        try rig.memory.store(UInt16(3), at: GuestAddress(d.queues[0].avail.raw + 4 + 2 * 16))
        #expect(rig.request(type: Self.FLUSH, sector: 0)?.0 == 0)       // used idx 2
        #expect(rig.request(type: Self.FLUSH, sector: 0)?.0 == 0)       // used idx 3
        #expect(rig.interrupt.value == base + 1)
        #expect(rig.request(type: Self.FLUSH, sector: 0)?.0 == 0)       // used idx 4 passes 3
        #expect(VirtioTestDriver.eventually { rig.interrupt.value == base + 2 })
        // And the device publishes avail_event for the driver.
        #expect(try rig.memory.load(UInt16.self, at: GuestAddress(d.queues[0].used.raw + 4 + 8 * 16)) == 4)
    }

    @Test("quiesce holds new requests until unquiesce")
    func quiesce() throws {
        let rig = try BlockRig()
        defer { rig.device.shutdown() }
        let d = rig.driver
        d.initialize(queueSizes: [16])
        rig.device.quiesce()
        let h = d.allocate(16)
        try rig.memory.store(UInt32(4), at: h)
        let st = d.allocate(1)
        d.submit(0, [(h, 16, false), (st, 1, true)])
        usleep(100_000)                      // a window in which a quiesced device must do nothing
        #expect(d.usedIdx(0) == 0)
        rig.device.unquiesce()
        #expect(d.waitUsed(0).count == 1)
    }

    @Test("many requests in flight all complete; quiesce returns only when every used entry is written")
    func quiesceDrains() throws {
        let rig = try BlockRig(sectors: 2048)
        defer { rig.device.shutdown() }
        let d = rig.driver
        d.initialize(queueSizes: [256])
        for round in 0..<5 {
            var heads: [UInt16] = []
            for i in 0..<64 {
                let h = d.allocate(16)
                try rig.memory.store(VirtioBlockTests.OUT, at: h)
                try rig.memory.store(UInt64(round * 64 + i), at: GuestAddress(h.raw + 8))
                let data = d.allocate(512, fill: UInt8(truncatingIfNeeded: round * 64 + i))
                let st = d.allocate(1, fill: 0xee)
                heads.append(d.submit(0, [(h, 16, false), (data, 512, false), (st, 1, true)], notify: i % 8 == 7))
            }
            rig.device.quiesce()
            let s = rig.device.transportState.queues[0]
            #expect(s.nextAvail == s.nextUsed, "in flight after quiesce: \(s.nextAvail &- s.nextUsed)")
            #expect(d.usedIdx(0) == s.nextUsed)
            rig.device.unquiesce()
            #expect(d.waitUsed(0, count: 64).count == 64)
            d.dataCursor = 4 << 20
        }
        let file = rig.image.contents
        for s in 0..<320 { #expect(file[s * 512] == UInt8(truncatingIfNeeded: s)) }
    }
}
