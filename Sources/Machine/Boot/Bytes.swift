/// Bounds-checked little-endian reads from an untrusted byte array. Every read returns nil
/// rather than trapping when it would run past the end or overflow.
struct ByteReader {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var count: UInt64 { UInt64(bytes.count) }

    /// True when `[offset, offset+length)` lies inside the array.
    func contains(_ offset: UInt64, length: UInt64) -> Bool {
        let (end, overflow) = offset.addingReportingOverflow(length)
        return !overflow && end <= count
    }

    func u8(_ offset: UInt64) -> UInt8? {
        guard contains(offset, length: 1) else { return nil }
        return bytes[Int(offset)]
    }

    func u16(_ offset: UInt64) -> UInt16? { le(offset, 2).map { UInt16(truncatingIfNeeded: $0) } }

    func u32(_ offset: UInt64) -> UInt32? { le(offset, 4).map { UInt32(truncatingIfNeeded: $0) } }

    func u64(_ offset: UInt64) -> UInt64? { le(offset, 8) }

    /// A copy of `[offset, offset+length)`, or nil when out of range.
    func slice(_ offset: UInt64, length: UInt64) -> [UInt8]? {
        guard contains(offset, length: length) else { return nil }
        return Array(bytes[Int(offset) ..< Int(offset + length)])
    }

    private func le(_ offset: UInt64, _ width: Int) -> UInt64? {
        guard contains(offset, length: UInt64(width)) else { return nil }
        let base = Int(offset)
        var value: UInt64 = 0
        for i in 0 ..< width {
            value |= UInt64(bytes[base + i]) << (8 * UInt64(i))
        }
        return value
    }
}

/// Builds a little-endian structure by appending fields in order.
struct ByteBuilder {
    private(set) var bytes: [UInt8] = []

    init() {}

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { append(UInt64(v), 2) }
    mutating func u32(_ v: UInt32) { append(UInt64(v), 4) }
    mutating func u64(_ v: UInt64) { append(v, 8) }
    mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    /// ASCII text padded with `pad` (or cut) to exactly `width` bytes.
    mutating func ascii(_ s: String, width: Int, pad: UInt8 = 0x20) {
        var b = Array(s.utf8.prefix(width))
        b.append(contentsOf: repeatElement(pad, count: width - b.count))
        bytes.append(contentsOf: b)
    }

    private mutating func append(_ v: UInt64, _ width: Int) {
        for i in 0 ..< width { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }
}

extension Array where Element == UInt8 {
    /// Stores `value` little-endian at `offset`; offsets are the loader's own constants, and an
    /// out-of-range store is dropped rather than trapping.
    mutating func storeLE<T: FixedWidthInteger & UnsignedInteger>(_ value: T, at offset: Int) {
        let width = T.bitWidth / 8
        guard offset >= 0, offset <= count - width else { return }
        for i in 0 ..< width {
            self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i))
        }
    }
}

/// Sum of all bytes modulo 256 (MP table checksums).
func byteSum(_ bytes: [UInt8]) -> UInt8 {
    bytes.reduce(UInt8(0)) { $0 &+ $1 }
}

/// `value` rounded up to a multiple of `alignment` (a power of two), or nil on overflow.
func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64? {
    let mask = alignment - 1
    let (sum, overflow) = value.addingReportingOverflow(mask)
    return overflow ? nil : sum & ~mask
}

/// `value` rounded down to a multiple of `alignment` (a power of two).
func alignDown(_ value: UInt64, _ alignment: UInt64) -> UInt64 {
    value & ~(alignment - 1)
}
