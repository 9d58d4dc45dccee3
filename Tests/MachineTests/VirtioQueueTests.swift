import Testing
@testable import Machine

/// A split queue over test memory, with helpers to write descriptors and publish them.
private struct Rings {
    let memory: GuestMemory
    var queue: SplitQueue
    var availIdx: UInt16 = 0

    init(size: UInt16 = 8, eventIdx: Bool = false) throws {
        memory = try virtioTestMemory()
        queue = SplitQueue(maxSize: 256)
        queue.size = size
        let l = VirtioTestDriver.layout(0, size: size)
        queue.descTable = l.desc
        queue.availRing = l.avail
        queue.usedRing = l.used
        queue.ready = true
        queue.eventIdx = eventIdx
    }

    func desc(_ i: UInt16, _ addr: UInt64, _ len: UInt32, _ flags: UInt16 = 0, next: UInt16 = 0, table: GuestAddress? = nil) {
        let t = table ?? queue.descTable
        let at = GuestAddress(t.raw + 16 * UInt64(i))
        try? memory.store(addr, at: at)
        try? memory.store(len, at: GuestAddress(at.raw + 8))
        try? memory.store(flags, at: GuestAddress(at.raw + 12))
        try? memory.store(next, at: GuestAddress(at.raw + 14))
    }

    mutating func publish(_ head: UInt16) {
        try? memory.store(head, at: GuestAddress(queue.availRing.raw + 4 + 2 * UInt64(availIdx % queue.size)))
        availIdx &+= 1
        try? memory.store(availIdx, at: GuestAddress(queue.availRing.raw + 2))
    }

    func setAvailIdx(_ v: UInt16) { try? memory.store(v, at: GuestAddress(queue.availRing.raw + 2)) }

    mutating func pop(max: UInt64 = 1 << 20) -> PopResult { queue.pop(memory, maxChainBytes: max) }

    func used(_ slot: UInt64) -> (UInt32, UInt32) {
        let a = queue.usedRing.raw + 4 + 8 * slot
        return ((try? memory.load(UInt32.self, at: GuestAddress(a))) ?? 0, (try? memory.load(UInt32.self, at: GuestAddress(a + 4))) ?? 0)
    }
    var usedIdx: UInt16 { (try? memory.load(UInt16.self, at: GuestAddress(queue.usedRing.raw + 2))) ?? 0 }
    func setUsedEvent(_ v: UInt16) { try? memory.store(v, at: GuestAddress(queue.availRing.raw + 4 + 2 * UInt64(queue.size))) }
    var availEvent: UInt16 { (try? memory.load(UInt16.self, at: GuestAddress(queue.usedRing.raw + 4 + 8 * UInt64(queue.size)))) ?? 0 }
}

private let W = VirtioSpec.DescriptorFlag.write
private let N = VirtioSpec.DescriptorFlag.next
private let I = VirtioSpec.DescriptorFlag.indirect

@Suite("virtio split queue")
struct VirtioQueueTests {
    @Test("a direct chain yields its buffers in order, readable before writable")
    func directChain() throws {
        var r = try Rings()
        r.desc(3, 0x40_0000, 16, N, next: 5)
        r.desc(5, 0x40_1000, 512, W | N, next: 1)
        r.desc(1, 0x40_2000, 1, W)
        r.publish(3)
        guard case .chain(let c) = r.pop() else { Issue.record("no chain"); return }
        #expect(c.head == 3)
        #expect(c.segments == [VirtioSegment(address: GuestAddress(0x40_0000), length: 16, writable: false),
                               VirtioSegment(address: GuestAddress(0x40_1000), length: 512, writable: true),
                               VirtioSegment(address: GuestAddress(0x40_2000), length: 1, writable: true)])
        #expect(c.readableLength == 16 && c.writableLength == 513)
        #expect(r.queue.nextAvail == 1)
        #expect(r.pop() == .empty)
    }

    @Test("an indirect descriptor is followed into its table")
    func indirectChain() throws {
        var r = try Rings()
        let table = GuestAddress(0x50_0000)
        r.desc(0, 0x40_0000, 16, N, next: 1, table: table)
        r.desc(1, 0x40_1000, 4096, W | N, next: 2, table: table)
        r.desc(2, 0x40_3000, 1, W, table: table)
        r.desc(2, table.raw, 48, I)
        r.publish(2)
        guard case .chain(let c) = r.pop() else { Issue.record("no chain"); return }
        #expect(c.head == 2)
        #expect(c.segments.map(\.length) == [16, 4096, 1])
        #expect(c.segments.map(\.writable) == [false, true, true])
    }

    @Test("a descriptor loop fails that request only, and the queue goes on")
    func loopDetected() throws {
        var r = try Rings()
        r.desc(0, 0x40_0000, 16, N, next: 1)
        r.desc(1, 0x40_1000, 16, N, next: 0)
        r.publish(0)
        #expect(r.pop() == .badChain(head: 0, .chainTooLong(head: 0)))
        r.desc(2, 0x40_0000, 16)
        r.publish(2)
        guard case .chain(let c) = r.pop() else { Issue.record("queue stuck after a loop"); return }
        #expect(c.head == 2)
    }

    @Test("a loop inside an indirect table is caught")
    func indirectLoop() throws {
        var r = try Rings()
        let table = GuestAddress(0x50_0000)
        r.desc(0, 0x40_0000, 16, N, next: 1, table: table)
        r.desc(1, 0x40_0000, 16, N, next: 0, table: table)
        r.desc(0, table.raw, 32, I)
        r.publish(0)
        #expect(r.pop() == .badChain(head: 0, .chainTooLong(head: 0)))
    }

    @Test("a next index beyond the table is rejected")
    func nextOutOfRange() throws {
        var r = try Rings()
        r.desc(0, 0x40_0000, 16, N, next: 9)
        r.publish(0)
        #expect(r.pop() == .badChain(head: 0, .descriptorIndexOutOfRange(9)))
    }

    @Test("buffers outside guest RAM, across its end, or wrapping the address space are rejected",
          arguments: [(UInt64(16 << 20), UInt32(16)), (UInt64((16 << 20) - 8), UInt32(16)),
                      (UInt64.max - 7, UInt32(16)), (UInt64(0xd000_0000), UInt32(4))])
    func bufferOutsideRAM(address: UInt64, length: UInt32) throws {
        var r = try Rings()
        r.desc(0, address, length)
        r.publish(0)
        #expect(r.pop() == .badChain(head: 0, .bufferOutsideRAM(GuestAddress(address), length: length)))
    }

    @Test("a chain with a bad buffer still reports its last writable buffer for an error status")
    func badBufferKeepsStatusBuffer() throws {
        var r = try Rings()
        r.desc(0, 0x40_0000, 16, N, next: 1)
        r.desc(1, 1 << 40, 512, W | N, next: 2)
        r.desc(2, 0x40_2000, 1, W)
        r.publish(0)
        #expect(r.pop() == .badChain(head: 0, .bufferOutsideRAM(GuestAddress(1 << 40), length: 512),
                                     last: VirtioSegment(address: GuestAddress(0x40_2000), length: 1, writable: true)))
    }

    @Test("a device-readable buffer after a device-writable one is rejected")
    func readableAfterWritable() throws {
        var r = try Rings()
        r.desc(0, 0x40_0000, 16, W | N, next: 1)
        r.desc(1, 0x40_1000, 16)
        r.publish(0)
        #expect(r.pop() == .badChain(head: 0, .readableAfterWritable))
    }

    @Test("malformed indirect descriptors are rejected")
    func badIndirect() throws {
        var r = try Rings()
        let table = GuestAddress(0x50_0000)
        // Nested indirect.
        r.desc(0, table.raw, 16, I, table: table)
        r.desc(0, table.raw, 16, I)
        r.publish(0)
        #expect(r.pop() == .badChain(head: 0, .nestedIndirect))
        // INDIRECT with NEXT.
        r.desc(1, table.raw, 16, I | N, next: 2)
        r.publish(1)
        #expect(r.pop() == .badChain(head: 1, .indirectWithNext))
        // Lengths that are not a whole table, empty, too many entries, or outside RAM.
        for (i, (addr, len)) in [(table.raw, UInt32(24)), (table.raw, 0), (table.raw, 16 * 1025),
                                 (UInt64(16 << 20) - 16, 32)].enumerated() {
            let d = UInt16(2 + i)
            r.desc(d, addr, len, I)
            r.publish(d)
            #expect(r.pop() == .badChain(head: d, .badIndirectTable(GuestAddress(addr), length: len)))
        }
    }

    @Test("a chain longer in bytes than the device accepts is rejected")
    func oversized() throws {
        var r = try Rings()
        r.desc(0, 0x40_0000, 0x8000, N, next: 1)
        r.desc(1, 0x40_8000, 0x8000)
        r.publish(0)
        #expect(r.pop(max: 0xffff) == .badChain(head: 0, .chainTooLarge(0x10000)))
    }

    @Test("an avail idx more than the queue size ahead is ring corruption")
    func availJump() throws {
        var r = try Rings(size: 8)
        r.setAvailIdx(9)
        #expect(r.pop() == .corrupt(.availIndexJump(avail: 9, nextAvail: 0, size: 8)))
        #expect(VirtqueueError.availIndexJump(avail: 9, nextAvail: 0, size: 8).isRingCorruption)
        // Exactly the queue size ahead is legal.
        var s = try Rings(size: 8)
        for i in 0..<8 { s.desc(UInt16(i), 0x40_0000, 1); s.publish(UInt16(i)) }
        for _ in 0..<8 { if case .chain = s.pop() {} else { Issue.record("full ring not taken") } }
    }

    @Test("a head index beyond the table is ring corruption")
    func headOutOfRange() throws {
        var r = try Rings(size: 8)
        r.publish(8)
        #expect(r.pop() == .corrupt(.headOutOfRange(head: 8, size: 8)))
    }

    @Test("free-running indices wrap at 65536")
    func indexWrap() throws {
        var r = try Rings(size: 4)
        r.queue.nextAvail = 65534
        r.queue.nextUsed = 65534
        r.availIdx = 65534
        try r.memory.store(UInt16(65534), at: GuestAddress(r.queue.usedRing.raw + 2))
        for i in 0..<3 {
            r.desc(UInt16(i), 0x40_0000, 1)
            r.publish(UInt16(i))
            guard case .chain(let c) = r.pop() else { Issue.record("no chain at wrap \(i)"); return }
            try r.queue.pushUsed(r.memory, head: c.head, length: 7)
        }
        #expect(r.queue.nextAvail == 1 && r.queue.nextUsed == 1 && r.usedIdx == 1)
    }

    @Test("pushUsed writes id and length, then used idx, and marks the used ring dirty")
    func pushUsed() throws {
        var r = try Rings()
        clearDirty(r.memory)
        try r.queue.pushUsed(r.memory, head: 5, length: 513)
        try r.queue.pushUsed(r.memory, head: 2, length: 1)
        #expect(r.used(0) == (5, 513) && r.used(1) == (2, 1))
        #expect(r.usedIdx == 2)
        let dirty = takeDirtyPages(r.memory)
        #expect(dirty == [r.queue.usedRing.raw / 4096])
    }

    @Test("without EVENT_IDX, avail.flags NO_INTERRUPT suppresses notifications")
    func noInterruptFlag() throws {
        var r = try Rings()
        try r.queue.pushUsed(r.memory, head: 0, length: 0)
        do { let v = r.queue.needsNotification(r.memory); #expect(v) }
        try r.memory.store(VirtioSpec.availNoInterrupt, at: r.queue.availRing)
        do { let v = r.queue.needsNotification(r.memory); #expect(!v) }
    }

    @Test("with EVENT_IDX, the driver is notified exactly when used idx passes used_event")
    func eventIdxNotification() throws {
        var r = try Rings(eventIdx: true)
        try r.queue.pushUsed(r.memory, head: 0, length: 0)
        do { let v = r.queue.needsNotification(r.memory); #expect(v) }          // first time: always
        r.setUsedEvent(1)
        try r.queue.pushUsed(r.memory, head: 0, length: 0)    // used idx 2 passes 1
        do { let v = r.queue.needsNotification(r.memory); #expect(v) }
        do { let v = r.queue.needsNotification(r.memory); #expect(!v) }         // nothing new
        r.setUsedEvent(5)
        for _ in 0..<3 {
            try r.queue.pushUsed(r.memory, head: 0, length: 0) // 3, 4, 5: not past 5
            do { let v = r.queue.needsNotification(r.memory); #expect(!v) }
        }
        try r.queue.pushUsed(r.memory, head: 0, length: 0)    // 6 passes 5
        do { let v = r.queue.needsNotification(r.memory); #expect(v) }
        #expect(r.queue.signalledUsed == 6)
    }

    @Test("enableNotification publishes avail_event and reports requests that raced in")
    func enableNotification() throws {
        var r = try Rings(eventIdx: true)
        r.desc(0, 0x40_0000, 1)
        r.publish(0)
        do { let v = r.queue.enableNotification(r.memory); #expect(v) }        // one is waiting
        _ = r.pop()
        clearDirty(r.memory)
        do { let v = r.queue.enableNotification(r.memory); #expect(!v) }
        #expect(r.availEvent == 1)
        #expect(takeDirtyPages(r.memory) == [r.queue.usedRing.raw / 4096])
    }

    @Test("queue configuration is checked: power-of-two size, alignment, rings in RAM")
    func configurationChecks() throws {
        let memory = try virtioTestMemory()
        var q = SplitQueue(maxSize: 256)
        let l = VirtioTestDriver.layout(0, size: 256)
        q.descTable = l.desc; q.availRing = l.avail; q.usedRing = l.used
        #expect(q.configurationProblem(in: memory) == nil)
        for size: UInt16 in [0, 3, 100] {
            var b = q; b.size = size
            #expect(b.configurationProblem(in: memory) != nil)
        }
        var big = q; big.maxSize = 128
        #expect(big.configurationProblem(in: memory) != nil)
        var d = q; d.descTable = GuestAddress(l.desc.raw + 8)
        #expect(d.configurationProblem(in: memory) != nil)
        var a = q; a.availRing = GuestAddress(l.avail.raw + 1)
        #expect(a.configurationProblem(in: memory) != nil)
        var u = q; u.usedRing = GuestAddress(l.used.raw + 2)
        #expect(u.configurationProblem(in: memory) != nil)
        var o = q; o.usedRing = GuestAddress((16 << 20) - 1024)   // 6 + 8*256 bytes do not fit
        #expect(o.configurationProblem(in: memory) != nil)
        var h = q; h.descTable = GuestAddress(0xd000_0000)
        #expect(h.configurationProblem(in: memory) != nil)
    }

    @Test("unpop gives requests back to be taken again")
    func unpop() throws {
        var r = try Rings()
        r.desc(0, 0x40_0000, 1)
        r.publish(0)
        _ = r.pop()
        r.queue.unpop(1)
        guard case .chain(let c) = r.pop() else { Issue.record("not taken again"); return }
        #expect(c.head == 0)
    }
}
