import Machine

/// The snapshot file `swiftvmm save` writes and `restore` maps. Everything is little-endian.
///
/// ```
/// 0       header (one 4 KiB page):
///           u8[8] magic "SVMMSNAP" | u32 version (1) | u32 header size (4096)
///           u64 file size | u64 saved at (Unix ns)
///           u64 description offset | u64 description length | u32 description CRC-32C
///           u32 state CRC-32C | u64 state offset | u64 state length
///           u32 region count (1…8) | u32 flags (0)
///           region × count: u64 guest address | u64 size | u64 file offset | u64 data bytes |
///                           u32 data CRC-32C | u32 reserved
///           … zeros … | u32 header CRC-32C (of bytes 0..<4092, at 4092)
/// 4096    the machine description (FDT, what `recv` pre-checks)
/// …       the machine state (FDT, what `dump-state` writes)
/// …       each RAM region as raw bytes at a 2 MiB-aligned offset, `size` bytes long; pages
///         that are zero are holes (the file is sparse), so restore can map the file directly
/// ```
///
/// The data CRC of a region covers its non-zero pages in order, each as its page index
/// (u64) followed by its 4 KiB: a reader that reads the memory (`restore --prefault`) checks
/// it; one that maps the file cannot without reading it all. The header is written last: a
/// save that did not finish leaves no valid snapshot. A reader refuses any other version.
public struct SnapshotHeader: Sendable, Equatable {
    public struct Region: Sendable, Equatable {
        public var guestAddress: UInt64
        public var size: UInt64
        public var fileOffset: UInt64
        /// Bytes of non-zero pages written (informational).
        public var dataBytes: UInt64
        public var dataCRC: UInt32
        public init(guestAddress: UInt64, size: UInt64, fileOffset: UInt64, dataBytes: UInt64 = 0, dataCRC: UInt32 = 0) {
            self.guestAddress = guestAddress; self.size = size; self.fileOffset = fileOffset
            self.dataBytes = dataBytes; self.dataCRC = dataCRC
        }
    }

    public static let magic: [UInt8] = Array("SVMMSNAP".utf8)
    public static let version: UInt32 = 1
    public static let size = 4096
    static let maxRegions = 8
    /// Largest description or state blob a reader accepts.
    static let maxBlob: UInt64 = 64 << 20
    /// Memory regions start at multiples of this.
    public static let regionAlignment: UInt64 = 2 << 20

    public var fileSize: UInt64 = 0
    public var savedAtNanos: UInt64 = 0
    public var descriptionOffset: UInt64 = 0
    public var descriptionLength: UInt64 = 0
    public var descriptionCRC: UInt32 = 0
    public var stateOffset: UInt64 = 0
    public var stateLength: UInt64 = 0
    public var stateCRC: UInt32 = 0
    public var flags: UInt32 = 0
    public var regions: [Region] = []

    public init() {}

    /// The layout for blobs of these lengths and RAM ranges: description at 4096, the state
    /// after it, each region at the next 2 MiB boundary.
    public static func layout(descriptionLength: Int, stateLength: Int, ram: [MemoryMap.RAMRange]) -> SnapshotHeader {
        var h = SnapshotHeader()
        h.descriptionOffset = UInt64(size)
        h.descriptionLength = UInt64(descriptionLength)
        h.stateOffset = h.descriptionOffset + h.descriptionLength
        h.stateLength = UInt64(stateLength)
        var next = align(h.stateOffset + h.stateLength, regionAlignment)
        for r in ram {
            h.regions.append(Region(guestAddress: r.start.raw, size: r.size, fileOffset: next))
            next = align(next + r.size, regionAlignment)
        }
        h.fileSize = h.regions.last.map { $0.fileOffset + $0.size } ?? h.stateOffset + h.stateLength
        return h
    }

    static func align(_ v: UInt64, _ a: UInt64) -> UInt64 { (v + a - 1) / a * a }

    /// The header page, with its CRC.
    public func encode() -> [UInt8] {
        var b = ByteWriter()
        b.bytes(Self.magic)
        b.u32(Self.version); b.u32(UInt32(Self.size))
        b.u64(fileSize); b.u64(savedAtNanos)
        b.u64(descriptionOffset); b.u64(descriptionLength); b.u32(descriptionCRC)
        b.u32(stateCRC); b.u64(stateOffset); b.u64(stateLength)
        b.u32(UInt32(regions.count)); b.u32(flags)
        for r in regions {
            b.u64(r.guestAddress); b.u64(r.size); b.u64(r.fileOffset); b.u64(r.dataBytes); b.u32(r.dataCRC); b.u32(0)
        }
        var page = b.out + [UInt8](repeating: 0, count: Self.size - 4 - b.out.count)
        let crc = CRC32C.checksum(page)
        withUnsafeBytes(of: crc.littleEndian) { page.append(contentsOf: $0) }
        return page
    }

    /// Decodes and checks a header page read from a file of `actualSize` bytes: magic,
    /// version, checksum, and every offset and length against the file and each other.
    public init(page: [UInt8], actualSize: UInt64) throws(SnapshotError) {
        guard page.count >= 8, Array(page.prefix(8)) == Self.magic else { throw .notASnapshot }
        guard page.count == Self.size else { throw .truncated(actualSize, expected: UInt64(Self.size)) }
        var r = ByteReader(page)
        r.skip(8)
        let version = r.u32()
        guard version == Self.version else { throw .version(version) }
        guard r.u32() == UInt32(Self.size) else { throw .corrupted("the header size is wrong") }
        let stored = page.suffix(4).withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        guard CRC32C.checksum(Array(page.prefix(Self.size - 4))) == stored else { throw .corrupted("the header checksum does not match") }
        fileSize = r.u64(); savedAtNanos = r.u64()
        descriptionOffset = r.u64(); descriptionLength = r.u64(); descriptionCRC = r.u32()
        stateCRC = r.u32(); stateOffset = r.u64(); stateLength = r.u64()
        let count = Int(r.u32())
        flags = r.u32()
        guard count >= 1 && count <= Self.maxRegions else { throw .corrupted("the header has \(count) memory regions") }
        for _ in 0..<count {
            regions.append(Region(guestAddress: r.u64(), size: r.u64(), fileOffset: r.u64(), dataBytes: r.u64(), dataCRC: r.u32()))
            r.skip(4)
        }
        guard actualSize >= fileSize else { throw .truncated(actualSize, expected: fileSize) }
        try validateLayout()
    }

    /// Every blob and region inside the file, page-aligned where it must be, none overlapping.
    func validateLayout() throws(SnapshotError) {
        func within(_ off: UInt64, _ len: UInt64) -> Bool { off <= fileSize && len <= fileSize - off }
        guard flags == 0 else { throw .corrupted("unknown flags \(flags)") }
        guard descriptionOffset >= UInt64(Self.size), descriptionLength > 0, descriptionLength <= Self.maxBlob,
              within(descriptionOffset, descriptionLength) else { throw .corrupted("the machine description lies outside the file") }
        guard stateOffset >= descriptionOffset + descriptionLength, stateLength > 0, stateLength <= Self.maxBlob,
              within(stateOffset, stateLength) else { throw .corrupted("the machine state lies outside the file") }
        var floor = stateOffset + stateLength
        var guestFloor: UInt64 = 0
        for (i, r) in regions.enumerated() {
            guard r.fileOffset % MemoryMap.pageSize == 0, r.size % MemoryMap.pageSize == 0, r.size > 0,
                  r.guestAddress % MemoryMap.pageSize == 0, r.guestAddress >= guestFloor,
                  r.fileOffset >= floor, within(r.fileOffset, r.size), r.dataBytes <= r.size else {
                throw .corrupted("memory region \(i) lies outside the file or overlaps another part")
            }
            floor = r.fileOffset + r.size
            guestFloor = r.guestAddress &+ r.size
            guard guestFloor > r.guestAddress else { throw .corrupted("memory region \(i) wraps around") }
        }
    }
}

/// Why a file is not a snapshot this swiftvmm can use; one line each.
public enum SnapshotError: Error, Equatable, CustomStringConvertible {
    case notASnapshot
    case version(UInt32)
    case truncated(UInt64, expected: UInt64)
    case corrupted(String)

    public var description: String {
        switch self {
        case .notASnapshot: return "not a swiftvmm snapshot (no SVMMSNAP header)"
        case .version(let v): return "snapshot format version \(v) is not supported (this swiftvmm reads version \(SnapshotHeader.version))"
        case .truncated(let have, let want): return "truncated: the file has \(have) bytes, its header says \(want)"
        case .corrupted(let why): return "corrupted: \(why)"
        }
    }
}

/// Little-endian fields into bytes.
struct ByteWriter {
    var out: [UInt8] = []
    mutating func bytes(_ b: [UInt8]) { out += b }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
}

/// Little-endian fields out of bytes; reading past the end yields zeros (callers check sizes).
struct ByteReader {
    let bytes: [UInt8]
    var pos = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    mutating func skip(_ n: Int) { pos += n }
    mutating func u32() -> UInt32 { UInt32(truncatingIfNeeded: take(4)) }
    mutating func u64() -> UInt64 { take(8) }
    private mutating func take(_ n: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<n where pos + i < bytes.count { v |= UInt64(bytes[pos + i]) << (8 * UInt64(i)) }
        pos += n
        return v
    }
}
