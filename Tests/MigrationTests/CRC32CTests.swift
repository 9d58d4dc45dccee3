import Testing
@testable import Migration

@Suite("CRC-32C")
struct CRC32CTests {
    /// Bit-at-a-time CRC-32C, the definition the table-driven version must match.
    static func reference(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xffff_ffff
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        }
        return ~c
    }

    @Test("known vectors: \"123456789\", 32 zeros, 32 × 0xff, 0…31 (RFC 3720 B.4), empty")
    func vectors() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xff, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum(Array(0..<32)) == 0x46DD_794E)
        #expect(CRC32C.checksum(Array((0..<32).reversed())) == 0x113F_DB5C)
        #expect(CRC32C.checksum([]) == 0)
    }

    @Test("matches the bit-at-a-time definition for every length 0…300, at every alignment")
    func matchesReference() {
        var g = TestRandom(seed: 32)
        let data = g.bytes(310)
        for start in 0..<8 {
            for length in stride(from: 0, through: 300, by: start == 0 ? 1 : 7) {
                let slice = Array(data[start..<(start + length)])
                let fast = data.withUnsafeBytes { CRC32C.update(0, UnsafeRawBufferPointer(rebasing: $0[start..<(start + length)])) }
                #expect(fast == Self.reference(slice), "start \(start) length \(length)")
            }
        }
    }

    @Test("long inputs (three-lane hardware loop): matches the definition around every lane boundary")
    func longInputs() {
        var g = TestRandom(seed: 33)
        let data = g.bytes(3 * 3 * 8192 + 100)
        for length in [3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1, 3 * 8192 + 8, 6 * 8192 - 3, 6 * 8192, 9 * 8192 + 99] {
            for start in [0, 1] {
                let slice = Array(data[start..<(start + length)])
                #expect(CRC32C.checksum(slice) == Self.reference(slice), "start \(start) length \(length)")
                let half = length / 2
                let c = slice.withUnsafeBytes { p in
                    CRC32C.update(CRC32C.update(0, UnsafeRawBufferPointer(rebasing: p[..<half])),
                                  UnsafeRawBufferPointer(rebasing: p[half...]))
                }
                #expect(c == Self.reference(slice), "in two pieces: start \(start) length \(length)")
            }
        }
    }

    @Test("updating piece by piece equals the one-shot checksum, wherever the pieces split")
    func incremental() {
        var g = TestRandom(seed: 7)
        let data = g.bytes(1000)
        let whole = CRC32C.checksum(data)
        data.withUnsafeBytes { p in
            for split in 0...1000 {
                let a = CRC32C.update(0, UnsafeRawBufferPointer(rebasing: p[..<split]))
                #expect(CRC32C.update(a, UnsafeRawBufferPointer(rebasing: p[split...])) == whole, "split at \(split)")
            }
            var c: UInt32 = 0
            var at = 0
            for size in [1, 3, 8, 13, 64, 100, 811] {
                c = CRC32C.update(c, UnsafeRawBufferPointer(rebasing: p[at..<(at + size)]))
                at += size
            }
            #expect(at == 1000 && c == whole)
            #expect(CRC32C.update(whole, UnsafeRawBufferPointer(start: nil, count: 0)) == whole)
        }
        var flipped = data
        flipped[500] ^= 0x01
        #expect(CRC32C.checksum(flipped) != whole)
    }
}
