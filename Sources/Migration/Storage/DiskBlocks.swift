import CLZ4
import Glibc
import Machine

/// One run of a disk image in a `diskBlocks` section (`send --copy-storage`): a 24-byte header
/// — volume index (u32), encoding (u8: 0 zeros, 1 raw, 2 LZ4), 3 bytes zero, offset (u64),
/// length (u32), stored length (u32), little-endian — then the stored bytes. A run of zeros
/// travels as its header alone, as a zero page travels as a bit.
public struct DiskRun: Sendable, Equatable {
    public enum Encoding: UInt8, Sendable { case zeros = 0, raw = 1, lz4 = 2 }
    public static let headerSize = 24
    /// Largest run in one section.
    public static let maxLength = 1 << 20

    public var volume: UInt32
    public var encoding: Encoding
    public var offset: UInt64
    public var length: UInt32
    public var stored: [UInt8]

    /// Encodes `data` (the bytes of the image at `offset`), compressing with `lz4` when it helps.
    public static func encode(volume: UInt32, offset: UInt64, data: UnsafeRawBufferPointer, lz4: Bool) -> [UInt8] {
        let length = data.count
        var encoding = Encoding.raw
        var body: [UInt8] = []
        if isZero(data) {
            encoding = .zeros
        } else if lz4, let base = data.baseAddress {
            let bound = Int(LZ4_compressBound(Int32(length)))
            var out = [UInt8](repeating: 0, count: bound)
            let n = out.withUnsafeMutableBytes {
                LZ4_compress_default(base.assumingMemoryBound(to: CChar.self), $0.baseAddress?.assumingMemoryBound(to: CChar.self),
                                     Int32(length), Int32(bound))
            }
            if n > 0 && Int(n) < length { encoding = .lz4; body = Array(out.prefix(Int(n))) }
        }
        if encoding == .raw { body = Array(data) }
        var h = [UInt8](repeating: 0, count: headerSize)
        put(&h, volume, at: 0)
        h[4] = encoding.rawValue
        put(&h, offset, at: 8)
        put(&h, UInt32(length), at: 16)
        put(&h, UInt32(body.count), at: 20)
        return h + body
    }

    /// Decodes a section's payload without trusting it: the header must be complete and the
    /// stored length must match; range checks against the volume are the receiver's.
    public init(decoding p: [UInt8]) throws(MigrationError) {
        guard p.count >= Self.headerSize else { throw .stream("disk run shorter than its header (\(p.count) bytes)") }
        volume = Self.get(p, at: 0)
        guard let e = Encoding(rawValue: p[4]), p[5] == 0, p[6] == 0, p[7] == 0 else {
            throw .stream("disk run has an unknown encoding \(p[4])")
        }
        encoding = e
        offset = Self.get(p, at: 8)
        length = Self.get(p, at: 16)
        let storedLength: UInt32 = Self.get(p, at: 20)
        guard Int(storedLength) == p.count - Self.headerSize else {
            throw .stream("disk run says \(storedLength) stored bytes, carries \(p.count - Self.headerSize)")
        }
        guard length > 0, Int(length) <= Self.maxLength else { throw .stream("disk run of \(length) bytes (1…\(Self.maxLength))") }
        switch e {
        case .zeros: guard storedLength == 0 else { throw .stream("a zero disk run carries data") }
        case .raw: guard storedLength == length else { throw .stream("a raw disk run of \(length) bytes carries \(storedLength)") }
        case .lz4: guard storedLength > 0 && storedLength < length else { throw .stream("an LZ4 disk run of \(length) bytes stores \(storedLength)") }
        }
        stored = Array(p[Self.headerSize...])
    }

    /// The run's bytes.
    public func bytes() throws(MigrationError) -> [UInt8] {
        switch encoding {
        case .zeros: return [UInt8](repeating: 0, count: Int(length))
        case .raw: return stored
        case .lz4:
            var out = [UInt8](repeating: 0, count: Int(length))
            let n = stored.withUnsafeBytes { s in
                out.withUnsafeMutableBytes { o in
                    LZ4_decompress_safe(s.baseAddress?.assumingMemoryBound(to: CChar.self), o.baseAddress?.assumingMemoryBound(to: CChar.self),
                                        Int32(s.count), Int32(o.count))
                }
            }
            guard n == Int32(length) else { throw .stream("an LZ4 disk run at \(offset) does not decompress to \(length) bytes") }
            return out
        }
    }

    static func isZero(_ d: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        let words = d.count / 8
        while i < words {
            if d.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != 0 { return false }
            i += 1
        }
        for j in (words * 8)..<d.count where d[j] != 0 { return false }
        return true
    }

    static func put<T: FixedWidthInteger>(_ h: inout [UInt8], _ v: T, at o: Int) {
        withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { h[o + i] = b } }
    }

    static func get<T: FixedWidthInteger>(_ p: [UInt8], at o: Int) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(p[o + i]) << (8 * i) }
        return v
    }
}
