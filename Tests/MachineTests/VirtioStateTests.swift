import Foundation
import Glibc
import Testing
@testable import Machine

extension StateNode {
    /// A copy with property `key` (in this node, or in child `child`) replaced by `bytes`.
    func replacing(_ key: String, in child: String? = nil, with bytes: [UInt8]) -> StateNode {
        var n = self
        if let child, let i = n.children.firstIndex(where: { $0.name == child }) {
            n.children[i].set(key, bytes: bytes)
        } else {
            n.set(key, bytes: bytes)
        }
        return n
    }

    func replacing<T: FixedWidthInteger>(_ key: String, in child: String? = nil, _ value: T) -> StateNode {
        replacing(key, in: child, with: withUnsafeBytes(of: value.bigEndian) { Array($0) })
    }

    func removingChild(_ name: String) -> StateNode {
        var n = self
        n.children.removeAll { $0.name == name }
        return n
    }
}

@Suite("virtio device state")
struct VirtioStateTests {
    static let OUT: UInt32 = 1, IN: UInt32 = 0

    /// A second disk on the same image and memory: what a migration target builds.
    func twin(of rig: BlockRig, volume: String = "vol0", readonly: Bool = false, path: String? = nil) throws -> VirtioBlockDevice {
        try makeBlock(path: path ?? rig.image.path, volume: volume, readonly: readonly, memory: rig.memory,
                        base: GuestAddress(0xd000_0000), interrupt: CountingInterrupt())
    }

    @Test("virtio-blk: save, restore into a fresh device, identical state, and the guest carries on")
    func blockRoundTrip() throws {
        let rig = try BlockRig(sectors: 64)
        rig.driver.initialize(queueSizes: [16])
        let buf = rig.driver.allocate(512, fill: 0x5a)
        for s in 0..<20 { #expect(rig.request(type: Self.OUT, sector: UInt64(s), data: [(buf, 512, false)])?.0 == 0) }
        rig.device.quiesce()
        let saved = try rig.device.saveNode()
        rig.device.shutdown()
        let target = try twin(of: rig)
        defer { target.shutdown() }
        try target.restoreNode(saved)
        #expect(try target.saveNode() == saved)
        #expect(target.transportState == rig.device.transportState)
        #expect(target.transportState.queues[0].nextUsed == 20)
        rig.driver.device = target
        target.unquiesce()
        let dst = rig.driver.allocate(512)
        let r = rig.request(type: Self.IN, sector: 19, data: [(dst, 512, true)])
        #expect(r?.0 == 0)
        #expect(try rig.memory.read(dst, count: 4) == [0x5a, 0x5a, 0x5a, 0x5a])
    }

    @Test("virtio-blk: requests in flight at quiesce are finished; the restored device serves the rest")
    func blockInFlight() throws {
        let rig = try BlockRig(sectors: 1024)
        let d = rig.driver
        d.initialize(queueSizes: [256])
        var expected: [Int: UInt8] = [:]
        for i in 0..<80 {
            let h = d.allocate(16)
            try rig.memory.store(Self.OUT, at: h)
            try rig.memory.store(UInt64(i), at: GuestAddress(h.raw + 8))
            let data = d.allocate(512, fill: UInt8(i + 100))
            expected[i] = UInt8(i + 100)
            let st = d.allocate(1, fill: 0xee)
            d.submit(0, [(h, 16, false), (data, 512, false), (st, 1, true)], notify: i % 4 == 3)
            if i == 40 {
                // Mid-stream: stop the source, move the state, continue on the target.
                rig.device.quiesce()
                let s = rig.device.transportState.queues[0]
                #expect(s.nextAvail == s.nextUsed && d.usedIdx(0) == s.nextUsed)
                let saved = try rig.device.saveNode()
                rig.device.shutdown()
                let target = try twin(of: rig)
                try target.restoreNode(saved)
                d.device = target
                target.unquiesce()
            }
        }
        #expect(d.waitUsed(0, count: 80).count == 80)
        d.device.shutdown()
        let file = rig.image.contents
        for (s, v) in expected { #expect(file[s * 512] == v && file[s * 512 + 511] == v) }
    }

    @Test("virtio-net: MAC and rings move; the target's MAC becomes the source's")
    func netRoundTrip() throws {
        let memory = try virtioTestMemory()
        let source = try NetRig(mac: [0x52, 0x54, 0, 1, 1, 1], memory: memory)
        source.driver.initialize(queueSizes: [16, 16])
        for _ in 0..<4 { source.postRx(2048) }
        source.send(testFrame(to: [0x52, 0x54, 0, 1, 1, 1], size: 100))
        #expect(source.driver.waitUsed(0).count == 1)
        source.transmit(testFrame(size: 70))
        #expect(source.receive() != nil)
        source.device.quiesce()
        let saved = try source.device.saveNode()
        let target = try NetRig(mac: [0x52, 0x54, 0, 2, 2, 2], memory: memory)
        try target.device.restoreNode(saved)
        #expect(try target.device.saveNode() == saved)
        #expect(target.device.macAddress == [0x52, 0x54, 0, 1, 1, 1])
        #expect(target.driver.config(0, count: 6) == [0x52, 0x54, 0, 1, 1, 1])
        // The guest's driver carries on against the target: the remaining posted buffers are used.
        target.driver.queues = source.driver.queues
        target.driver.dataCursor = source.driver.dataCursor
        target.device.unquiesce()
        target.send(testFrame(to: [0x52, 0x54, 0, 1, 1, 1], size: 90, seed: 7))
        let used = target.driver.waitUsed(0)
        #expect(used.first?.1 == 102)
        #expect(target.device.transportState.queues[0].nextUsed == 2)
        #expect(target.device.sendAnnouncement())
        #expect(target.receive().map { Array($0[18..<24]) } == [0x52, 0x54, 0, 1, 1, 1])
    }

    @Test("virtio-net: frames arriving while the state moves are delivered by the target, none twice")
    func netInFlight() throws {
        let memory = try virtioTestMemory()
        let mac: [UInt8] = [0x52, 0x54, 0, 3, 3, 3]
        let source = try NetRig(mac: mac, memory: memory)
        source.driver.initialize(queueSizes: [256, 256])
        for _ in 0..<200 { source.postRx(256) }
        for i in 0..<60 { source.send(testFrame(to: mac, size: 64, seed: UInt8(i))) }
        source.device.quiesce()
        let saved = try source.device.saveNode()
        let delivered = Int(source.device.transportState.queues[0].nextUsed)
        let target = try NetRig(mac: mac, memory: memory)
        try target.device.restoreNode(saved)
        target.driver.queues = source.driver.queues
        target.device.unquiesce()
        for i in 60..<100 { target.send(testFrame(to: mac, size: 64, seed: UInt8(i))) }
        #expect(VirtioTestDriver.eventually { target.device.transportState.queues[0].nextUsed == UInt16(delivered + 40) })
        let used = target.driver.waitUsed(0, count: delivered + 40)
        #expect(used.count == delivered + 40)
        #expect(Set(used.map(\.0)).count == used.count, "a buffer was used twice")
    }

    @Test("hostile virtio-blk states are rejected and leave the device unchanged")
    func hostileBlockStates() throws {
        let rig = try BlockRig(sectors: 64)
        defer { rig.device.shutdown() }
        rig.driver.initialize(queueSizes: [16])
        let buf = rig.driver.allocate(512)
        #expect(rig.request(type: Self.IN, sector: 0, data: [(buf, 512, true)])?.0 == 0)
        rig.device.quiesce()
        let good = try rig.device.saveNode()
        let target = try twin(of: rig)
        defer { target.shutdown() }
        let pristine = try target.saveNode()
        let q = "queue@0"
        let cases: [(String, StateNode)] = [
            ("size not a power of two", good.replacing("size", in: q, UInt16(12))),
            ("size above the maximum", good.replacing("size", in: q, UInt16(512))),
            ("descriptor table outside RAM", good.replacing("desc", in: q, UInt64(16 << 20))),
            ("descriptor table misaligned", good.replacing("desc", in: q, UInt64((1 << 20) + 8))),
            ("used ring across the end of RAM", good.replacing("used", in: q, UInt64((16 << 20) - 64))),
            ("more in flight than the queue holds", good.replacing("next-avail", in: q, UInt16(40))),
            ("unoffered driver feature", good.replacing("driver-features", rig.device.transportState.driverFeatures | (1 << 40))),
            ("unknown status bit", good.replacing("status", UInt32(0x1f))),
            ("DRIVER_OK without FEATURES_OK", good.replacing("status", UInt32(0x07))),
            ("wrong device id", good.replacing("device-id", UInt32(1))),
            ("EVENT_IDX flag inconsistent", good.replacing("event-idx", in: q, UInt32(0))),
            ("unknown interrupt bits", good.replacing("interrupt-status", UInt32(0x80))),
            ("truncated property", good.replacing("status", with: [0, 0])),
            ("missing queue", good.removingChild(q)),
            ("missing device node", good.removingChild("device")),
            ("another volume", good.replacing("volume", in: "device", with: Array("other\0".utf8))),
            ("another capacity", good.replacing("capacity", in: "device", UInt64(65))),
            ("read-only mismatch", good.replacing("readonly", in: "device", UInt32(1))),
        ]
        for (what, node) in cases {
            #expect(throws: StateError.self, "\(what) was accepted") { try target.restoreNode(node) }
            #expect(try target.saveNode() == pristine, "\(what) changed the device")
        }
        var renamed = good
        renamed.name = "virtio-blk@0xd0001000"
        #expect(throws: StateError.self) { try target.restoreNode(renamed) }
        try target.restoreNode(good)
        #expect(try target.saveNode() == good)
    }

    @Test("hostile virtio-net states are rejected")
    func hostileNetStates() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        rig.device.quiesce()
        let good = try rig.device.saveNode()
        let target = try NetRig(mac: [0x52, 0x54, 0, 9, 9, 9])
        let pristine = try target.device.saveNode()
        for node in [good.replacing("mac", in: "device", with: [1, 2, 3, 4, 5]),
                     good.replacing("mac", in: "device", with: [0x01, 0, 0x5e, 0, 0, 1]),
                     good.removingChild("queue@1"),
                     good.replacing("device-id", UInt32(2))] {
            #expect(throws: StateError.self) { try target.device.restoreNode(node) }
            #expect(try target.device.saveNode() == pristine)
        }
    }

    @Test("the state node carries what the migration layer needs by name")
    func stateLayout() throws {
        let rig = try BlockRig(volume: "rootfs")
        defer { rig.device.shutdown() }
        rig.driver.initialize(queueSizes: [32])
        let n = try rig.device.saveNode()
        #expect(n.name == "virtio-blk@0xd0000000")
        #expect(try n.child("device")?.string("volume") == "rootfs")
        #expect(try n.child("queue@0")?.integer("size", as: UInt16.self) == 32)
        #expect(try n.integer("status", as: UInt32.self) == 0x0f)
    }
}
