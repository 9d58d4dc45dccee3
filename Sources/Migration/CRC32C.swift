/// CRC-32C (Castagnoli), the checksum on every section of the migration stream.
public enum CRC32C {
    static let table: [[UInt32]] = {
        var t = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            t[0][i] = c
        }
        for i in 0..<256 {
            for k in 1..<8 { t[k][i] = (t[k - 1][i] >> 8) ^ t[0][Int(t[k - 1][i] & 0xff)] }
        }
        return t
    }()

    /// Continues a CRC over `bytes` (start with `crc = 0`).
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = ~crc
        var i = 0
        let n = bytes.count
        table[0].withUnsafeBufferPointer { t0 in
        table[1].withUnsafeBufferPointer { t1 in
        table[2].withUnsafeBufferPointer { t2 in
        table[3].withUnsafeBufferPointer { t3 in
        table[4].withUnsafeBufferPointer { t4 in
        table[5].withUnsafeBufferPointer { t5 in
        table[6].withUnsafeBufferPointer { t6 in
        table[7].withUnsafeBufferPointer { t7 in
            guard let base = bytes.baseAddress else { return }
            while i + 8 <= n {
                let w = base.loadUnaligned(fromByteOffset: i, as: UInt64.self).littleEndian ^ UInt64(c)
                c = t7[Int(w & 0xff)] ^ t6[Int((w >> 8) & 0xff)] ^ t5[Int((w >> 16) & 0xff)] ^ t4[Int((w >> 24) & 0xff)]
                    ^ t3[Int((w >> 32) & 0xff)] ^ t2[Int((w >> 40) & 0xff)] ^ t1[Int((w >> 48) & 0xff)] ^ t0[Int(w >> 56)]
                i += 8
            }
            while i < n {
                c = t0[Int((c ^ UInt32(base.load(fromByteOffset: i, as: UInt8.self))) & 0xff)] ^ (c >> 8)
                i += 1
            }
        }}}}}}}}
        return ~c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { update(0, $0) }
    }
}
