import Glibc
import Testing
@testable import Machine
@_spi(Fuzzing) @testable import Migration

/// A `pages` section read straight into guest memory (`Connection.receive(applying:)`), which
/// must accept and refuse exactly what `PageDecoder.apply` does.
@Suite("page batches placed as they are read")
struct PagePlacementTests {
    static let fixed = 24 + 256
    static let pages = SectionType.pages.rawValue

    func memory() throws -> GuestMemory { try GuestMemory(map: MemoryMap(memorySize: 16 << 20)) }

    /// 16 MiB whose first 32 and last 8 pages hold a pattern, to prove refused batches write nothing.
    func patterned() throws -> GuestMemory {
        let m = try memory()
        for p in Array(0..<32) + Array(4088..<4096) { try m.write(filled(UInt8(truncatingIfNeeded: p) | 0x80), at: addr(p)) }
        return m
    }

    func snapshot(_ m: GuestMemory) throws -> [UInt8] {
        try m.read(addr(0), count: 32 * 4096) + m.read(addr(4088), count: 8 * 4096)
    }

    /// Reads every section of `stream` with `decoder`, returning them.
    func read(_ stream: [UInt8], _ decoder: PageDecoder) throws -> [Section] {
        let source = ByteBufferSource(stream)
        let reader = SectionReader(source)
        var out: [Section] = []
        while !source.atEnd { out.append(try reader.read(applying: decoder)) }
        return out
    }

    @Test("the encoder's stream, raw and LZ4, arrives whole; raw batches come back as header and bitmaps only",
          arguments: [Compression.none, .lz4])
    func encoderStream(_ compression: Compression) throws {
        let src = try memory(), dst = try memory()
        var g = TestRandom(seed: 11)
        for p in 0..<1024 { try src.write(g.bytes(4096), at: addr(p)) }                  // one dense window
        for p in stride(from: 1024, to: 2048, by: 3) { try src.write(g.bytes(4096), at: addr(p)) }
        for p in 2048..<2100 { try src.write(compressible(p), at: addr(p)) }
        for p in [0, 1025, 3000] { try dst.write(filled(0xaa), at: addr(p + 1)) }        // stale target pages
        let t = try PagesTests().transfer(src, to: dst, compression: compression, placing: true)
        #expect(memcmp(src.regions[0].host, dst.regions[0].host, 16 << 20) == 0)
        #expect(t.got.dataPages == t.sent.dataPages && t.got.zeroPages == t.sent.zeroPages)
        #expect(t.got.wireBytes == t.sent.wireBytes)
        for payload in t.payloads where payload[0] == 0 { #expect(payload.count == Self.fixed) }
        if compression == .lz4 { #expect(t.payloads[2][0] == 1 && t.payloads[2].count > Self.fixed) }
    }

    @Test("a hand-made raw batch with gaps, zero pages and a following section")
    func handMade() throws {
        let m = try patterned()
        let d = PageDecoder(memory: m)
        let one = batch(pfn: 10, window: 8, sent: [0, 1, 3, 4, 5, 7], zero: [4],
                        data: filled(0x11) + filled(0x12) + filled(0x13) + filled(0x14) + filled(0x15))
        let stream = frame(Self.pages, one) + frame(99, flags: 1, [1, 2, 3]) + frame(SectionType.roundEnd.rawValue, [])
        let sections = try read(stream, d)
        #expect(sections.map(\.type) == [.pages, .roundEnd])                              // the optional one skipped
        #expect(sections[0].payload == Array(one.prefix(Self.fixed)))
        let expected: [Int: UInt8] = [10: 0x11, 11: 0x12, 12: 0x8c, 13: 0x13, 14: 0, 15: 0x14, 16: 0x90, 17: 0x15]
        for (p, byte) in expected { #expect(try m.read(addr(p), count: 4096) == filled(byte), "page \(p)") }
        #expect(d.counters.dataPages == 5 && d.counters.zeroPages == 1)
        #expect(d.counters.wireBytes == UInt64(one.count + 12))
    }

    @Test("a raw batch corrupted on the wire is refused as a checksum mismatch, nothing outside its window written")
    func corrupted() throws {
        let good = batch(pfn: 100, window: 4, sent: [0, 1, 2, 3], zero: [2],
                         data: filled(0x21) + filled(0x22) + filled(0x23))
        for at in [Self.fixed + 5000, Self.fixed + 3 * 4096 - 1, 13, Self.fixed - 1] {      // data, data, header, bitmap
            let m = try patterned()
            let before = try snapshot(m)
            var stream = frame(Self.pages, good)
            stream[8 + at] ^= 0x40
            let d = PageDecoder(memory: m)
            let message = expectStreamError { _ = try read(stream, d) }
            #expect(message.contains("checksum mismatch in pages section"), "byte \(at): \(message)")
            #expect(try snapshot(m) == before, "byte \(at) written outside its window")
            #expect(d.counters.dataPages == 0 && d.counters.zeroPages == 0, "byte \(at) was counted")
        }
        let cut = Array(frame(Self.pages, good).dropLast(100))
        #expect(throws: MigrationError.self) { _ = try read(cut, PageDecoder(memory: try memory())) }
    }

    @Test("on a sealed stream a batch is opened, then applied the ordinary way")
    func sealed() throws {
        let (a, b) = try SealedStreamTests().sealedPair()
        let m = try patterned()
        let d = PageDecoder(memory: m)
        let one = batch(pfn: 100, window: 2, sent: [0, 1], data: filled(0x31) + filled(0x32))
        try a.send(.pages, bytes: one)
        try a.send(.pages, bytes: Array(one.prefix(100)))
        let s = try b.receive(applying: d)
        #expect(s.type == .pages && s.payload == one)
        #expect(try m.read(addr(100), count: 2 * 4096) == filled(0x31) + filled(0x32))
        #expect(d.counters.dataPages == 2)
        #expect(expectStreamError { _ = try b.receive(applying: d) }.contains("truncated"))
    }

    @Test("malformed batches with a good checksum are refused with apply's messages and write nothing")
    func hostile() throws {
        for (what, bytes, fragment) in PagesTests.hostileCases() {
            let m = try patterned()
            let before = try snapshot(m)
            let d = PageDecoder(memory: m)
            let message = expectStreamError { _ = try read(frame(Self.pages, bytes), d) }
            #expect(message.contains(fragment), "\(what): \(message)")
            #expect(try snapshot(m) == before, "\(what) wrote to guest memory")
            #expect(d.counters.dataPages == 0 && d.counters.zeroPages == 0, "\(what) was counted")
        }
    }
}
