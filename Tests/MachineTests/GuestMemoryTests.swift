import Testing
@testable import Machine

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30
private let page: UInt64 = 4096

@Suite("guest memory: bounds-checked access and the VMM dirty bitmap")
struct GuestMemoryTests {
    func small() throws -> GuestMemory { try GuestMemory(map: MemoryMap(memorySize: 16 * MiB)) }
    /// 4 GiB + 64 MiB: 3 GiB below the hole and 1 GiB + 64 MiB from 4 GiB (MAP_NORESERVE, so cheap).
    func big() throws -> GuestMemory { try GuestMemory(map: MemoryMap(memorySize: 4 * GiB + 64 * MiB)) }

    /// Every dirty page of `region` (region page numbers), draining the bitmap.
    func drainDirty(_ region: MemoryRegion) -> [Int] {
        var pages: [Int] = []
        for w in 0..<region.bitmapWords {
            let bits = region.takeDirtyWord(w)
            for b in 0..<64 where bits & (1 << UInt64(b)) != 0 { pages.append(w * 64 + b) }
        }
        return pages
    }

    @Test("write then read gives the bytes back; fresh memory reads as zero")
    func roundTrip() throws {
        let m = try small()
        #expect(try m.read(GuestAddress(0x1234), count: 4) == [0, 0, 0, 0])
        let bytes: [UInt8] = Array(0..<200)
        try m.write(bytes, at: GuestAddress(0x1ff0))
        #expect(try m.read(GuestAddress(0x1ff0), count: 200) == bytes)
        #expect(try m.read(GuestAddress(0x1ff0 + 10), count: 3) == [10, 11, 12])

        try [UInt8](repeating: 0xab, count: 16).withUnsafeBytes { try m.write($0, at: GuestAddress(0x5000)) }
        var out = [UInt8](repeating: 0, count: 16)
        try out.withUnsafeMutableBytes { try m.read(GuestAddress(0x5000), into: $0) }
        #expect(out == [UInt8](repeating: 0xab, count: 16))
        #expect(try m.read(GuestAddress(0x5000), count: 0) == [])
    }

    @Test("store and load are little-endian and work unaligned")
    func loadStore() throws {
        let m = try small()
        try m.store(UInt32(0x1122_3344), at: GuestAddress(0x100))
        #expect(try m.read(GuestAddress(0x100), count: 4) == [0x44, 0x33, 0x22, 0x11])
        #expect(try m.load(UInt32.self, at: GuestAddress(0x100)) == 0x1122_3344)
        #expect(try m.load(UInt16.self, at: GuestAddress(0x101)) == 0x2233)

        try m.store(UInt64(0x0102_0304_0506_0708), at: GuestAddress(0xfff))   // crosses a page, unaligned
        #expect(try m.load(UInt64.self, at: GuestAddress(0xfff)) == 0x0102_0304_0506_0708)
        #expect(try m.read(GuestAddress(0xfff), count: 8) == [8, 7, 6, 5, 4, 3, 2, 1])
        try m.write([0xff, 0xff], at: GuestAddress(0x2000))
        #expect(try m.load(Int16.self, at: GuestAddress(0x2000)) == -1)
        try m.store(UInt8(0x5a), at: GuestAddress(16 * MiB - 1))
        #expect(try m.load(UInt8.self, at: GuestAddress(16 * MiB - 1)) == 0x5a)
    }

    @Test("accesses past the end are refused, naming the range, and change nothing")
    func outOfRange() throws {
        let m = try small()
        let end = 16 * MiB
        #expect(throws: MemoryError.outOfBounds(GuestAddress(end - 2), length: 4)) { try m.read(GuestAddress(end - 2), count: 4) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(end), length: 1)) { try m.read(GuestAddress(end), count: 1) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(end - 3), length: 4)) { try m.write([1, 2, 3, 4], at: GuestAddress(end - 3)) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(end - 4), length: 8)) { try m.store(UInt64(1), at: GuestAddress(end - 4)) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(end - 1), length: 2)) { try m.load(UInt16.self, at: GuestAddress(end - 1)) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(0), length: 0)) { try m.read(GuestAddress(0), count: -1) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(0), length: end + 1)) { try m.read(GuestAddress(0), count: Int(end) + 1) }
        var buffer = [UInt8](repeating: 0, count: 8)
        #expect(throws: MemoryError.outOfBounds(GuestAddress(end - 4), length: 8)) {
            try buffer.withUnsafeMutableBytes { try m.read(GuestAddress(end - 4), into: $0) }
        }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(end - 4), length: 8)) {
            try buffer.withUnsafeBytes { try m.write($0, at: GuestAddress(end - 4)) }
        }
        // The refused writes touched neither memory nor the dirty bitmap.
        #expect(try m.read(GuestAddress(end - 8), count: 8) == [UInt8](repeating: 0, count: 8))
        #expect(drainDirty(m.regions[0]).isEmpty)
        #expect(MemoryError.outOfBounds(GuestAddress(end - 2), length: 4).description == "guest range 0xfffffe+4 is outside guest RAM")
    }

    @Test("address + length overflowing 64 bits is refused, not wrapped")
    func overflow() throws {
        let m = try small()
        #expect(throws: MemoryError.outOfBounds(GuestAddress(UInt64.max - 1), length: 4)) {
            try m.read(GuestAddress(UInt64.max - 1), count: 4)
        }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(UInt64.max), length: 8)) {
            try m.store(UInt64(7), at: GuestAddress(UInt64.max))
        }
        #expect(m.locate(GuestAddress(UInt64.max - 4095), length: 8192) == nil)
        #expect(m.locate(GuestAddress(4096), length: UInt64.max) == nil)
        #expect(m.pointer(GuestAddress(1), length: UInt64.max) == nil)
        #expect(drainDirty(m.regions[0]).isEmpty)
    }

    @Test("every write marks its page dirty; takeDirtyWord reads and clears; reads mark nothing")
    func dirtyBitmap() throws {
        let m = try small()
        let r = m.regions[0]
        #expect(r.pageCount == 4096)
        #expect(r.bitmapWords == 64)
        #expect(drainDirty(r).isEmpty)

        try m.write([1], at: GuestAddress(5 * page + 17))
        #expect(r.takeDirtyWord(0) == 1 << 5)
        #expect(r.takeDirtyWord(0) == 0)                  // taken means cleared

        try m.store(UInt32(9), at: GuestAddress(130 * page))
        try [UInt8](repeating: 1, count: 3).withUnsafeBytes { try m.write($0, at: GuestAddress(4095 * page)) }
        m.markDirty(GuestAddress(200 * page), length: 1)  // for writers through `pointer`
        #expect(drainDirty(r) == [130, 200, 4095])

        _ = try m.read(GuestAddress(7 * page), count: 100)
        _ = try m.load(UInt64.self, at: GuestAddress(8 * page))
        try m.write([UInt8](), at: GuestAddress(9 * page))
        #expect(drainDirty(r).isEmpty)

        #expect(r.takeDirtyWord(-1) == 0)
        #expect(r.takeDirtyWord(r.bitmapWords) == 0)
    }

    @Test("a write spanning pages (and bitmap words) marks every page it touches")
    func dirtySpan() throws {
        let m = try small()
        let r = m.regions[0]
        try m.write([1, 2], at: GuestAddress(64 * page - 1))              // pages 63 and 64: two words
        #expect(r.takeDirtyWord(0) == 1 << 63)
        #expect(r.takeDirtyWord(1) == 1)

        try m.write([UInt8](repeating: 7, count: Int(3 * page)), at: GuestAddress(10 * page + 100))
        #expect(drainDirty(r) == [10, 11, 12, 13])

        try m.write([UInt8](repeating: 7, count: Int(page)), at: GuestAddress(20 * page))   // exactly one page
        #expect(drainDirty(r) == [20])

        try m.store(UInt64.max, at: GuestAddress(30 * page - 4))
        #expect(drainDirty(r) == [29, 30])
    }

    @Test("residentPages sees a page once it is written, not pages never touched")
    func resident() throws {
        let m = try small()
        let r = m.regions[0]
        let before = try #require(r.residentPages())
        #expect(before.count == r.pageCount)
        #expect(before[7] & 1 == 0)
        #expect(before[3000] & 1 == 0)

        try m.write([0x42], at: GuestAddress(7 * page + 9))
        let after = try #require(r.residentPages())
        #expect(after[7] & 1 == 1)
        #expect(after[3000] & 1 == 0)                     // another 2 MiB block: untouched
    }

    @Test("more than 4 GiB: RAM above 4 GiB, the hole refused, slots numbered from firstSlot")
    func aboveFourGiB() throws {
        let m = try big()
        #expect(m.totalSize == 4 * GiB + 64 * MiB)
        #expect(m.regions.count == 2)
        #expect(m.regions.map(\.slot) == [0, 1])
        #expect(m.regions[0].start == GuestAddress(0) && m.regions[0].size == 3 * GiB)
        #expect(m.regions[1].start == GuestAddress(4 * GiB) && m.regions[1].size == GiB + 64 * MiB)
        #expect(m.regions[1].end == 5 * GiB + 64 * MiB)

        let high = GuestAddress(4 * GiB + 5 * page + 3)
        try m.write([9, 8, 7], at: high)
        #expect(try m.read(high, count: 3) == [9, 8, 7])
        let located = try #require(m.locate(high, length: 3))
        #expect(located.0 === m.regions[1])
        #expect(located.1 == 5 * page + 3)
        #expect(drainDirty(m.regions[1]) == [5])
        #expect(drainDirty(m.regions[0]).isEmpty)
        #expect(try #require(m.regions[1].residentPages())[5] & 1 == 1)

        // Straddling or inside the hole.
        #expect(throws: MemoryError.outOfBounds(GuestAddress(3 * GiB - 2), length: 4)) { try m.write([1, 2, 3, 4], at: GuestAddress(3 * GiB - 2)) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(3 * GiB), length: 1)) { try m.read(GuestAddress(3 * GiB), count: 1) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(4 * GiB - 2), length: 4)) { try m.store(UInt32(1), at: GuestAddress(4 * GiB - 2)) }
        #expect(throws: MemoryError.outOfBounds(GuestAddress(3 * GiB - 4), length: GiB + 8)) {
            try m.read(GuestAddress(3 * GiB - 4), count: Int(GiB) + 8)
        }
        let top = 5 * GiB + 64 * MiB
        try m.store(UInt32(0xfeed_face), at: GuestAddress(top - 4))
        #expect(try m.load(UInt32.self, at: GuestAddress(top - 4)) == 0xfeed_face)
        #expect(throws: MemoryError.outOfBounds(GuestAddress(top - 2), length: 4)) { try m.load(UInt32.self, at: GuestAddress(top - 2)) }
        try m.store(UInt8(1), at: GuestAddress(3 * GiB - 1))
        #expect(drainDirty(m.regions[0]) == [Int(3 * GiB / page) - 1])

        let slotted = try GuestMemory(map: MemoryMap(memorySize: 4 * GiB), firstSlot: 3)
        #expect(slotted.regions.map(\.slot) == [3, 4])
    }
}
