import Glibc
import Testing
@testable import Machine
@testable import Migration

private let page = 4096
private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30
/// Header, two bitmaps, and the section's own header and CRC: what a batch costs besides data.
private let batchOverhead = 24 + 2 * 128 + 12

func addr(_ pageNumber: Int, base: UInt64 = 0) -> GuestAddress {
    GuestAddress(base + UInt64(pageNumber * page))
}

func filled(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: page) }

/// A page LZ4 shrinks a lot, different for every `n`.
func compressible(_ n: Int) -> [UInt8] {
    var out: [UInt8] = []
    while out.count < page { out += Array("page \(n) of guest memory; ".utf8) }
    return Array(out.prefix(page))
}

func be64(_ v: UInt64) -> [UInt8] { be32(UInt32(v >> 32)) + be32(UInt32(truncatingIfNeeded: v)) }

/// A hand-made page batch; counts and lengths default to what the bitmaps and data say.
func batch(encoding: UInt8 = 0, pfn: UInt64, window: Int, dataPages: Int? = nil, dataLength: Int? = nil,
           sent: [Int], zero: [Int] = [], data: [UInt8]) -> [UInt8] {
    var sentBits = [UInt8](repeating: 0, count: 128), zeroBits = [UInt8](repeating: 0, count: 128)
    for i in sent { sentBits[i / 8] |= 1 << UInt8(i % 8) }
    for i in zero { zeroBits[i / 8] |= 1 << UInt8(i % 8) }
    let header = [encoding, 0, 0, 0] + be64(pfn) + be32(UInt32(window))
        + be32(UInt32(dataPages ?? (sent.count - zero.count))) + be32(UInt32(dataLength ?? data.count))
    return header + sentBits + zeroBits + data
}

@Suite("page batches: PageEncoder → socket → PageDecoder")
struct PagesTests {
    struct Transfer {
        var sent: PageCounters
        var got: PageCounters
        var payloads: [[UInt8]]
    }

    func memory(_ size: UInt64 = 16 * MiB) throws -> GuestMemory { try GuestMemory(map: MemoryMap(memorySize: size)) }

    /// Encodes `region` of `src` on a writer thread and applies every batch to `dst`.
    func transfer(_ src: GuestMemory, to dst: GuestMemory, region: Int = 0, bitmap: [UInt64]? = nil,
                  resident: [UInt8]? = nil, compression: Compression = .lz4, stable: Bool = false,
                  placing: Bool = false) throws -> Transfer {
        let (a, b) = try connectionPair()
        let counters = Shared(PageCounters())
        let writer = Background {
            let encoder = PageEncoder(memory: src, connection: a, compression: compression)
            encoder.memoryIsStable = stable
            try encoder.send(region: src.regions[region], bitmap: bitmap, resident: resident)
            counters.value = encoder.counters
            try a.send(.roundEnd, bytes: [])
        }
        let decoder = PageDecoder(memory: dst)
        var payloads: [[UInt8]] = []
        do {
            while true {
                let s = try placing ? b.receive(applying: decoder) : b.receive()
                if s.type == .roundEnd { break }
                #expect(s.type == .pages)
                if !placing { try decoder.apply(s.payload) }
                payloads.append(s.payload)
            }
        } catch {
            b.abort()                       // unblock the writer before giving up
            _ = try? writer.join()
            throw error
        }
        try writer.join()
        return Transfer(sent: counters.value, got: decoder.counters, payloads: payloads)
    }

    func samePage(_ a: GuestMemory, _ b: GuestMemory, _ address: GuestAddress) throws -> Bool {
        try a.read(address, count: page) == b.read(address, count: page)
    }

    @Test("all pages arrive: random, compressible and zero; zero pages travel as bits only",
          arguments: [Compression.lz4, .none])
    func fullCopy(_ compression: Compression) throws {
        let src = try memory(), dst = try memory()
        var g = TestRandom(seed: 1)
        var nonzero = Set<Int>()
        for p in stride(from: 0, to: 600, by: 7) { try src.write(g.bytes(page), at: addr(p)); nonzero.insert(p) }
        for p in 1000..<1100 { try src.write(compressible(p), at: addr(p)); nonzero.insert(p) }
        for p in 2000..<2010 { try src.write(filled(0), at: addr(p)) }        // touched, but zero
        try src.write(g.bytes(page), at: addr(4095)); nonzero.insert(4095)
        for p in [1, 2000, 2005, 3000] { try dst.write(filled(0xaa), at: addr(p)) }   // stale target data

        let t = try transfer(src, to: dst, compression: compression)
        #expect(memcmp(src.regions[0].host, dst.regions[0].host, Int(16 * MiB)) == 0)
        #expect(t.payloads.count == 4)
        #expect(t.sent.dataPages == nonzero.count)
        #expect(t.sent.zeroPages == 4096 - nonzero.count)
        #expect(t.sent.rawBytes == UInt64(nonzero.count * page))
        #expect(t.got.dataPages == t.sent.dataPages)
        #expect(t.got.zeroPages == t.sent.zeroPages)
        #expect(t.got.wireBytes == t.sent.wireBytes)
        switch compression {
        case .none:
            #expect(t.sent.wireBytes == t.sent.rawBytes + UInt64(4 * batchOverhead))
            #expect(t.payloads.allSatisfy { $0[0] == 0 })
        case .lz4:
            #expect(t.sent.wireBytes < t.sent.rawBytes)
            #expect(t.payloads[1][0] == 1)              // the compressible window went as LZ4
            #expect(t.payloads[3][0] == 0)              // one random page: sent raw
        }
    }

    @Test("all-zero memory costs only headers and bitmaps, and zeroes stale target pages")
    func zeroMemory() throws {
        let src = try memory(), dst = try memory()
        try dst.write(filled(0x5a), at: addr(10))
        try dst.write(filled(0x5a), at: addr(4000))
        let t = try transfer(src, to: dst)
        #expect(t.sent.dataPages == 0 && t.sent.zeroPages == 4096)
        #expect(t.sent.rawBytes == 0)
        #expect(t.sent.wireBytes == UInt64(4 * batchOverhead))
        #expect(t.payloads.allSatisfy { $0.count == batchOverhead - 12 })
        #expect(try dst.read(addr(10), count: page) == filled(0))
        #expect(try dst.read(addr(4000), count: page) == filled(0))
    }

    @Test("a dirty bitmap sends exactly the selected pages; windows with none are skipped")
    func bitmapSelection() throws {
        let src = try memory(), dst = try memory()
        var g = TestRandom(seed: 2)
        let selectedData = [0, 1, 63, 64, 1023, 1024, 2047, 4095]
        let selectedZero = [5]                          // selected, zero at the source, stale at the target
        let unselected = [2, 62, 65, 1022, 2048, 4094]
        for p in selectedData + unselected { try src.write(g.bytes(page), at: addr(p)) }
        for p in selectedData + selectedZero + unselected { try dst.write(filled(0xee), at: addr(p)) }
        var bitmap = [UInt64](repeating: 0, count: 64)
        for p in selectedData + selectedZero { bitmap[p / 64] |= 1 << UInt64(p % 64) }

        let t = try transfer(src, to: dst, bitmap: bitmap)
        for p in selectedData + selectedZero { #expect(try samePage(src, dst, addr(p)), "page \(p)") }
        for p in unselected { #expect(try dst.read(addr(p), count: page) == filled(0xee), "page \(p) was not selected") }
        #expect(t.payloads.count == 3)                  // windows 0, 1 and 3
        #expect(t.sent.dataPages == selectedData.count)
        #expect(t.sent.zeroPages == 1)
        #expect(t.got.dataPages == selectedData.count && t.got.zeroPages == 1)

        let none = try transfer(src, to: dst, bitmap: [UInt64](repeating: 0, count: 64))
        #expect(none.payloads.isEmpty)
        #expect(none.sent.dataPages == 0 && none.sent.zeroPages == 0 && none.sent.wireBytes == 0)
    }

    @Test("with the resident filter only pages the host ever backed are looked at")
    func residentFilter() throws {
        let src = try memory(), dst = try memory()
        var g = TestRandom(seed: 3)
        try src.write(g.bytes(page), at: addr(5))
        try src.write(g.bytes(page), at: addr(3000))
        let resident = try #require(src.regions[0].residentPages())
        #expect(resident[5] & 1 == 1 && resident[3000] & 1 == 1)
        try #require(resident[100] & 1 == 0)
        let residentCount = resident.filter { $0 & 1 != 0 }.count
        try dst.write(filled(0xaa), at: addr(100))     // a target page the filter must leave alone

        let t = try transfer(src, to: dst, resident: resident)
        #expect(t.sent.dataPages == 2)
        #expect(t.sent.dataPages + t.sent.zeroPages == residentCount)
        #expect(try samePage(src, dst, addr(5)))
        #expect(try samePage(src, dst, addr(3000)))
        #expect(try dst.read(addr(100), count: page) == filled(0xaa))
    }

    @Test("a region whose last window is short (4099 pages) arrives whole")
    func shortLastWindow() throws {
        let size = 16 * MiB + 3 * UInt64(page)
        let src = try memory(size), dst = try memory(size)
        var g = TestRandom(seed: 4)
        for p in [0, 4095, 4096, 4098] { try src.write(g.bytes(page), at: addr(p)) }
        let t = try transfer(src, to: dst)
        #expect(memcmp(src.regions[0].host, dst.regions[0].host, Int(size)) == 0)
        #expect(t.payloads.count == 5)
        let last = try #require(t.payloads.last)
        #expect(Array(last[12..<16]) == be32(3))        // window of 3 pages
        #expect(t.sent.dataPages == 4 && t.sent.zeroPages == 4099 - 4)
    }

    @Test("RAM above 4 GiB: batches carry the right guest page numbers")
    func highMemory() throws {
        let size = 4 * GiB + 64 * MiB
        let src = try memory(size), dst = try memory(size)
        let high = src.regions[1]
        #expect(high.pageCount == 278_528)
        var g = TestRandom(seed: 5)
        let base = 4 * GiB
        let selected = [0, 5, high.pageCount - 1]
        for p in selected + [6] { try src.write(g.bytes(page), at: addr(p, base: base)) }
        try src.write(g.bytes(page), at: addr(9))      // low RAM: another region, not sent
        var bitmap = [UInt64](repeating: 0, count: high.bitmapWords)
        for p in selected { bitmap[p / 64] |= 1 << UInt64(p % 64) }

        let t = try transfer(src, to: dst, region: 1, bitmap: bitmap)
        for p in selected { #expect(try samePage(src, dst, addr(p, base: base)), "high page \(p)") }
        #expect(try dst.read(addr(6, base: base), count: page) == filled(0))
        #expect(try dst.read(addr(9), count: page) == filled(0))
        #expect(t.payloads.count == 2)
        #expect(Array(t.payloads[0][4..<12]) == be64(base / 4096))
        #expect(Array(t.payloads[1][4..<12]) == be64(base / 4096 + 271 * 1024))
    }

    /// 16 MiB: window 0 compressible, window 1 random, window 2 compressible but for one zero
    /// page, window 3 never touched.
    func stableSource() throws -> GuestMemory {
        let src = try memory()
        var g = TestRandom(seed: 6)
        for p in 0..<1024 { try src.write(compressible(p), at: addr(p)) }
        for p in 1024..<2048 { try src.write(g.bytes(page), at: addr(p)) }
        for p in 2048..<3072 where p != 2500 { try src.write(compressible(p), at: addr(p)) }
        return src
    }

    @Test("stop-and-copy (memory stable): full windows go straight from guest memory and decode straight into it")
    func stableFullWindows() throws {
        let src = try stableSource(), dst = try memory()
        for p in [0, 1023, 1500, 2500, 3000] { try dst.write(filled(0xcd), at: addr(p)) }
        let all = [UInt64](repeating: ~0, count: 64)
        let t = try transfer(src, to: dst, bitmap: all, stable: true)
        #expect(memcmp(src.regions[0].host, dst.regions[0].host, Int(16 * MiB)) == 0)
        #expect(t.payloads.count == 4)
        #expect(t.payloads.map { $0[0] } == [1, 0, 1, 0])                  // LZ4, raw, LZ4, no data
        #expect(t.payloads.map { Array($0[16..<20]) } == [be32(1024), be32(1024), be32(1023), be32(0)])
        #expect(t.sent.dataPages == 3071 && t.sent.zeroPages == 1025)
        #expect(t.got.dataPages == 3071 && t.got.zeroPages == 1025)
        #expect(t.got.wireBytes == t.sent.wireBytes)

        // Not stable, or not every page selected: the same bytes arrive through the staging copy.
        let dst2 = try memory()
        var some = all
        some[3] = 0
        _ = try transfer(src, to: dst2, bitmap: some, stable: true)
        for p in [0, 191, 256, 1024, 2047, 2500, 3071] { #expect(try samePage(src, dst2, addr(p)), "page \(p)") }
        #expect(try dst2.read(addr(192), count: page) == filled(0))         // not selected
    }

    @Test("a corrupted full-window LZ4 batch (decoded in place) is refused and writes nothing outside its window")
    func corruptedFullWindow() throws {
        let t = try transfer(try stableSource(), to: try memory(), bitmap: [UInt64](repeating: ~0, count: 64), stable: true)
        let full = t.payloads[0], partial = t.payloads[2]
        try #require(full[0] == 1 && partial[0] == 1)
        let fixed = 24 + 256

        /// `payload` moved to the window at guest page 1024.
        func atWindow1(_ payload: [UInt8]) -> [UInt8] { Array(payload[..<4]) + be64(1024) + Array(payload[12...]) }
        var cut = atWindow1(full)
        cut.removeLast(16)
        cut.replaceSubrange(20..<24, with: be32(UInt32(cut.count - fixed)))
        var garbage = atWindow1(full)
        for i in fixed..<garbage.count { garbage[i] = 0xff }
        var claimsAll = atWindow1(partial)                 // 1023 pages of data, claimed as 1024
        claimsAll.replaceSubrange(16..<20, with: be32(1024))
        for i in (24 + 128)..<fixed { claimsAll[i] = 0 }   // no zero pages

        for (what, bytes) in [("cut short", cut), ("garbage", garbage), ("one page short", claimsAll)] {
            let m = try memory()
            for p in Array(1016..<1024) + Array(2048..<2056) { try m.write(filled(0x3c), at: addr(p)) }
            let d = PageDecoder(memory: m)
            let message = expectStreamError { try d.apply(bytes) }
            #expect(message.contains("decompress"), "\(what): \(message)")
            for p in Array(1016..<1024) + Array(2048..<2056) {
                #expect(try m.read(addr(p), count: page) == filled(0x3c), "\(what) wrote page \(p), outside its window")
            }
            #expect(d.counters.dataPages == 0, "\(what) was counted")
        }
    }

    // MARK: hostile batches

    /// 16 MiB whose first 32 and last 8 pages hold a pattern, to prove rejected batches write nothing.
    func patterned() throws -> GuestMemory {
        let m = try memory()
        for p in Array(0..<32) + Array(4088..<4096) { try m.write(filled(UInt8(truncatingIfNeeded: p) | 0x80), at: addr(p)) }
        return m
    }

    func snapshot(_ m: GuestMemory) throws -> [UInt8] {
        try m.read(addr(0), count: 32 * page) + m.read(addr(4088), count: 8 * page)
    }

    @Test("a well-formed hand-made batch applies (so the hostile ones below fail for their own reason)")
    func handMadeBatch() throws {
        let m = try patterned()
        let d = PageDecoder(memory: m)
        try d.apply(batch(pfn: 10, window: 4, sent: [0, 2, 3], zero: [2], data: filled(0x11) + filled(0x22)))
        #expect(try m.read(addr(10), count: page) == filled(0x11))
        #expect(try m.read(addr(11), count: page) == filled(0x8b))     // not sent: untouched
        #expect(try m.read(addr(12), count: page) == filled(0))
        #expect(try m.read(addr(13), count: page) == filled(0x22))
        #expect(d.counters.dataPages == 2 && d.counters.zeroPages == 1)
        try d.apply(batch(pfn: 4095, window: 1, sent: [0], data: filled(0x33)))
        #expect(try m.read(addr(4095), count: page) == filled(0x33))
    }

    /// Malformed batches, each with a fragment of the message that refuses it.
    static func hostileCases() -> [(String, [UInt8], String)] {
        let one = filled(0x44), two = filled(0x44) + filled(0x45)
        return [
            ("truncated header", Array(batch(pfn: 0, window: 1, sent: [0], data: one).prefix(100)), "truncated"),
            ("unknown encoding", batch(encoding: 2, pfn: 0, window: 1, sent: [0], data: one), "encoding"),
            ("empty window", batch(pfn: 0, window: 0, sent: [], data: []), "out of range"),
            ("window over 1024", batch(pfn: 0, window: 1025, sent: [0], data: one), "out of range"),
            ("more data pages than the window", batch(pfn: 0, window: 1, dataPages: 2, sent: [0], data: two), "out of range"),
            ("length field larger than the data", batch(pfn: 0, window: 1, dataLength: page, sent: [0], data: Array(one.dropLast())), "data bytes"),
            ("length field smaller than the data", batch(pfn: 0, window: 1, dataLength: 10, sent: [0], data: one), "data bytes"),
            ("zero bit outside the sent bitmap", batch(pfn: 0, window: 4, dataPages: 0, sent: [0], zero: [0, 1], data: []), "zero"),
            ("sent bit a whole byte past the window", batch(pfn: 0, window: 4, sent: [0, 8], data: two), "past its window"),
            ("sent bit past the window, inside its last byte", batch(pfn: 0, window: 4, sent: [0, 5], data: two), "past its window"),
            ("zero page past the window, inside its last byte", batch(pfn: 0, window: 4, sent: [0, 5], zero: [5], data: one), "past its window"),
            ("bitmap names more data pages than the header", batch(pfn: 0, window: 4, dataPages: 1, sent: [0, 1], data: one), "header says"),
            ("raw data shorter than the pages", batch(pfn: 0, window: 4, dataPages: 2, sent: [0, 1], data: one), "raw page batch"),
            ("window past the end of RAM", batch(pfn: 4095, window: 2, sent: [0], data: one), "outside guest RAM"),
            ("window after RAM", batch(pfn: 4096, window: 1, sent: [0], data: one), "outside guest RAM"),
            ("page number overflowing the address", batch(pfn: UInt64.max / 4096 + 1, window: 1, sent: [0], data: one), "outside guest RAM"),
            ("last page number", batch(pfn: UInt64.max, window: 1, sent: [0], data: one), "outside guest RAM"),
            ("LZ4 data that is not LZ4", batch(encoding: 1, pfn: 0, window: 2, sent: [0, 1], data: [UInt8](repeating: 0xff, count: 100)), "decompress"),
            ("LZ4 with no data at all", batch(encoding: 1, pfn: 0, window: 1, sent: [0], data: []), "decompress"),
        ]
    }

    @Test("malformed batches are refused as stream errors and write nothing")
    func hostileBatches() throws {
        for (what, bytes, fragment) in Self.hostileCases() {
            let m = try patterned()
            let before = try snapshot(m)
            let d = PageDecoder(memory: m)
            let message = expectStreamError { try d.apply(bytes) }
            #expect(message.contains(fragment), "\(what): \(message)")
            #expect(try snapshot(m) == before, "\(what) wrote to guest memory")
            #expect(d.counters.dataPages == 0 && d.counters.zeroPages == 0, "\(what) was counted")
        }
    }

    @Test("windows in or across the 32-bit hole of a >4 GiB machine are refused")
    func hostileHole() throws {
        let m = try memory(4 * GiB + 64 * MiB)
        let d = PageDecoder(memory: m)
        let holeStart = Int(3 * GiB) / page
        for (pfn, window) in [(holeStart - 1, 2), (holeStart, 1), (Int(4 * GiB) / page - 1, 2)] {
            let message = expectStreamError { try d.apply(batch(pfn: UInt64(pfn), window: window, sent: [0], data: filled(1))) }
            #expect(message.contains("outside guest RAM"), "pfn 0x\(String(pfn, radix: 16))")
        }
        #expect(try m.read(GuestAddress(3 * GiB - 4096), count: page) == filled(0))
        #expect(try m.read(GuestAddress(4 * GiB), count: page) == filled(0))
        try d.apply(batch(pfn: 4 * GiB / 4096, window: 1, sent: [0], data: filled(7)))
        #expect(try m.read(GuestAddress(4 * GiB), count: page) == filled(7))
    }

    @Test("corrupted LZ4 batches from the real encoder are refused and write nothing")
    func corruptedLZ4() throws {
        let src = try memory()
        for p in 0..<8 { try src.write(compressible(p), at: addr(p)) }
        var bitmap = [UInt64](repeating: 0, count: 64)
        bitmap[0] = 0xff
        let t = try transfer(src, to: try memory(), bitmap: bitmap)
        let good = try #require(t.payloads.first)
        try #require(good[0] == 1)                      // went as LZ4
        let fixed = 24 + 256
        let lz4 = Array(good[fixed...])

        func with(data: [UInt8], dataPages: Int = 8, sent: [Int] = Array(0..<8)) -> [UInt8] {
            batch(encoding: 1, pfn: 0, window: 1024, dataPages: dataPages, sent: sent, data: data)
        }
        #expect(with(data: lz4) == good)                // the builder reproduces the encoder's batch

        let m = try patterned()
        let before = try snapshot(m)
        let d = PageDecoder(memory: m)
        let cases: [(String, [UInt8])] = [
            ("bytes replaced", with(data: [UInt8](repeating: 0xff, count: lz4.count))),
            ("data cut short", with(data: Array(lz4.dropLast(10)))),
            ("one page more claimed than compressed", with(data: lz4, dataPages: 9, sent: Array(0..<9))),
            ("one page fewer claimed than compressed", with(data: lz4, dataPages: 7, sent: Array(0..<7))),
        ]
        for (what, bytes) in cases {
            let message = expectStreamError { try d.apply(bytes) }
            #expect(message.contains("decompress"), "\(what): \(message)")
            #expect(try snapshot(m) == before, "\(what) wrote to guest memory")
        }
        try d.apply(good)
        for p in 0..<8 { #expect(try m.read(addr(p), count: page) == compressible(p)) }
        #expect(try m.read(addr(8), count: page) == filled(0x88))
    }
}
