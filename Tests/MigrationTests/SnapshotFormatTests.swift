import Glibc
import Machine
import Testing
@testable import Migration

/// The snapshot header: what is written is read back, and nothing malformed gets past it.
@Suite("snapshot header")
struct SnapshotFormatTests {
    static func sample() throws -> SnapshotHeader {
        var h = SnapshotHeader.layout(descriptionLength: 1800, stateLength: 40_000, ram: try MemoryMap(memorySize: 4 << 30).ram)
        h.savedAtNanos = 1_700_000_000_000_000_000
        h.descriptionCRC = 0x1234_5678
        h.stateCRC = 0x9abc_def0
        h.regions[0].dataBytes = 8192
        h.regions[0].dataCRC = 42
        return h
    }

    @Test("layout puts the blobs after the header page and each RAM range at a 2 MiB boundary")
    func layout() throws {
        let h = try Self.sample()
        #expect(h.descriptionOffset == 4096 && h.stateOffset == 4096 + 1800)
        #expect(h.regions.count == 2)
        #expect(h.regions.allSatisfy { $0.fileOffset % SnapshotHeader.regionAlignment == 0 })
        #expect(h.regions[0].fileOffset >= h.stateOffset + h.stateLength)
        #expect(h.regions[1].guestAddress == MemoryMap.highRAMStart && h.regions[1].size == 1 << 30)
        #expect(h.fileSize == h.regions[1].fileOffset + h.regions[1].size)
    }

    @Test("a header round-trips through its page")
    func roundTrip() throws {
        let h = try Self.sample()
        let page = h.encode()
        #expect(page.count == SnapshotHeader.size)
        #expect(try SnapshotHeader(page: page, actualSize: h.fileSize) == h)
    }

    @Test("a file shorter than its header says is truncated")
    func truncated() throws {
        let h = try Self.sample()
        #expect(throws: SnapshotError.truncated(h.fileSize - 1, expected: h.fileSize)) {
            try SnapshotHeader(page: h.encode(), actualSize: h.fileSize - 1)
        }
        #expect(throws: SnapshotError.truncated(100, expected: 4096)) {
            try SnapshotHeader(page: Array(h.encode().prefix(100)), actualSize: 100)
        }
    }

    @Test("another magic, another version and a flipped bit are refused")
    func refused() throws {
        let h = try Self.sample()
        var page = h.encode()
        page[0] = UInt8(ascii: "X")
        #expect(throws: SnapshotError.notASnapshot) { try SnapshotHeader(page: page, actualSize: h.fileSize) }
        page = h.encode()
        page[8] = 2
        #expect(throws: SnapshotError.version(2)) { try SnapshotHeader(page: page, actualSize: h.fileSize) }
        for offset in [20, 100, 2000] {
            page = h.encode()
            page[offset] ^= 0x10
            #expect(throws: SnapshotError.corrupted("the header checksum does not match")) {
                try SnapshotHeader(page: page, actualSize: h.fileSize)
            }
        }
    }

    @Test("offsets outside the file, overlaps and unaligned regions are refused even with a valid checksum")
    func layoutChecked() throws {
        var bad: [SnapshotHeader] = []
        var h = try Self.sample()
        h.stateLength = h.fileSize                         // past the end
        bad.append(h)
        h = try Self.sample()
        h.regions[0].fileOffset = h.stateOffset             // overlaps the state
        bad.append(h)
        h = try Self.sample()
        h.regions[1].fileOffset = h.regions[0].fileOffset + 4096   // overlaps region 0
        bad.append(h)
        h = try Self.sample()
        h.regions[0].fileOffset += 512                      // not page-aligned
        bad.append(h)
        h = try Self.sample()
        h.regions[1].size = UInt64.max - 4095               // wraps
        bad.append(h)
        h = try Self.sample()
        h.descriptionOffset = 0                             // inside the header
        bad.append(h)
        for (i, b) in bad.enumerated() {
            #expect(throws: SnapshotError.self, "case \(i)") { try SnapshotHeader(page: b.encode(), actualSize: b.fileSize) }
        }
    }
}
