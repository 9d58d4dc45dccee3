import CLZ4
import Glibc
import Machine

/// Guest pages on the wire. A `pages` section carries one batch: a window of up to
/// `windowPages` consecutive guest pages, two bitmaps saying which pages of the window are in
/// the batch and which of those are all zero (a bit, never 4 KiB on the wire), and the data
/// of the other pages, LZ4-compressed unless compression would not shrink it.
///
/// ```
/// u8 encoding (0 raw, 1 lz4) | u8[3] reserved | u64 first guest page number | u32 window pages |
/// u32 data pages | u32 data length | sent bitmap | zero bitmap | data
/// ```
public enum PageBatch {
    public static let pageSize = 4096
    public static let windowPages = 1024
    static let headerSize = 24
    static let bitmapBytes = windowPages / 8
    /// The header and both bitmaps: what precedes a batch's data.
    static let fixedSize = headerSize + 2 * bitmapBytes
}

/// How pages are compressed on the wire.
public enum Compression: String, Sendable {
    case lz4, none
}

/// Statistics of what a `PageEncoder` sent.
public struct PageCounters: Sendable {
    public var dataPages = 0
    public var zeroPages = 0
    public var wireBytes: UInt64 = 0
    public var rawBytes: UInt64 = 0
    public init() {}

    public static func += (a: inout PageCounters, b: PageCounters) {
        a.dataPages += b.dataPages; a.zeroPages += b.zeroPages
        a.wireBytes += b.wireBytes; a.rawBytes += b.rawBytes
    }
}

/// Scans guest memory in place and sends pages in batches.
public final class PageEncoder {
    let memory: GuestMemory
    let connection: Connection
    let compression: Compression
    /// Pages of the batch being built.
    private var staging: UnsafeMutableRawPointer
    private var output: UnsafeMutableRawPointer
    private let outputCapacity: Int
    private var sentBits = [UInt8](repeating: 0, count: PageBatch.bitmapBytes)
    private var zeroBits = [UInt8](repeating: 0, count: PageBatch.bitmapBytes)
    /// Called after every batch with its wire size (rate limiting, progress, cancellation).
    public var afterBatch: ((Int) throws -> Void)?
    public private(set) var counters = PageCounters()
    /// Consecutive batches that did not compress: after a few, compression is tried on only
    /// one batch in eight, so incompressible memory costs no compression time.
    private var incompressibleStreak = 0
    private var batchCount = 0
    /// True while the guest cannot write (stop-and-copy): a window whose every page is sent
    /// with data is then compressed straight from guest memory instead of a staging copy.
    public var memoryIsStable = false

    public init(memory: GuestMemory, connection: Connection, compression: Compression) {
        self.memory = memory
        self.connection = connection
        self.compression = compression
        staging = UnsafeMutableRawPointer.allocate(byteCount: PageBatch.windowPages * PageBatch.pageSize, alignment: 4096)
        outputCapacity = PageBatch.headerSize + 2 * PageBatch.bitmapBytes
            + Int(LZ4_compressBound(Int32(PageBatch.windowPages * PageBatch.pageSize)))
        output = UnsafeMutableRawPointer.allocate(byteCount: outputCapacity, alignment: 16)
    }

    deinit {
        staging.deallocate()
        output.deallocate()
    }

    public func resetCounters() { counters = PageCounters() }

    /// Whether `bitmap` selects any of the `count` pages from page `window`.
    static func selects(_ bitmap: [UInt64], window: Int, count: Int) -> Bool {
        var w = window / 64
        while w < (window + count + 63) / 64 && w < bitmap.count { if bitmap[w] != 0 { return true }; w += 1 }
        return false
    }

    @inline(__always)
    static func isZero(_ p: UnsafeRawPointer) -> Bool {
        let w = p.assumingMemoryBound(to: UInt64.self)
        var i = 0
        while i < PageBatch.pageSize / 8 {
            if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]) != 0 { return false }
            i += 8
        }
        return true
    }

    /// Sends the pages of `region` selected by `bitmap` (one bit per page). With `resident`
    /// (round 0), only pages the host has ever backed are looked at; the rest are zero on both
    /// sides.
    public func send(region: MemoryRegion, bitmap: [UInt64]?, resident: [UInt8]? = nil) throws {
        var window = 0
        while window < region.pageCount {
            try send(region: region, window: window, bitmap: bitmap, resident: resident)
            window += PageBatch.windowPages
        }
    }

    /// Sends the selected pages of one window: up to `windowPages` pages from page `window`
    /// (a multiple of `windowPages`) of `region`. Windows are independent, so several encoders
    /// on their own connections can share a round's windows (`send --connections N`).
    public func send(region: MemoryRegion, window: Int, bitmap: [UInt64]?, resident: [UInt8]? = nil) throws {
        let pages = region.pageCount
        let firstPFN = region.start.raw / UInt64(PageBatch.pageSize)
        guard window >= 0 && window < pages else { return }
        let count = min(PageBatch.windowPages, pages - window)
        // Quick skip of an empty window.
        if let bm = bitmap, !Self.selects(bm, window: window, count: count) { return }
        for i in 0..<PageBatch.bitmapBytes { sentBits[i] = 0; zeroBits[i] = 0 }
        var dataPages = 0
        var inBatch = 0
        if memoryIsStable && resident == nil && count == PageBatch.windowPages,
           let bm = bitmap, (window / 64..<(window + count) / 64).allSatisfy({ bm[$0] == ~0 }),
           !(0..<count).contains(where: { Self.isZero(region.host + (window + $0) * PageBatch.pageSize) }) {
            // A full window of non-zero pages: no staging copy.
            for i in 0..<PageBatch.bitmapBytes { sentBits[i] = 0xff }
            try emit(firstPFN: firstPFN + UInt64(window), windowPages: count, dataPages: count,
                     source: UnsafeRawPointer(region.host + window * PageBatch.pageSize))
            return
        }
        for i in 0..<count {
            let page = window + i
            if let bm = bitmap, bm[page / 64] & (1 << UInt64(page % 64)) == 0 { continue }
            if let res = resident, res[page] & 1 == 0 { continue }
            let src = region.host + page * PageBatch.pageSize
            sentBits[i / 8] |= 1 << UInt8(i % 8)
            inBatch += 1
            if Self.isZero(src) {
                zeroBits[i / 8] |= 1 << UInt8(i % 8)
                counters.zeroPages += 1
            } else {
                (staging + dataPages * PageBatch.pageSize).copyMemory(from: src, byteCount: PageBatch.pageSize)
                dataPages += 1
            }
        }
        if inBatch > 0 {
            try emit(firstPFN: firstPFN + UInt64(window), windowPages: count, dataPages: dataPages,
                     source: UnsafeRawPointer(staging))
        }
    }

    private func emit(firstPFN: UInt64, windowPages: Int, dataPages: Int, source: UnsafeRawPointer) throws {
        let raw = dataPages * PageBatch.pageSize
        let dataStart = PageBatch.headerSize + 2 * PageBatch.bitmapBytes
        var encoding: UInt8 = 0
        var dataLength = raw
        batchCount += 1
        let tryCompress = compression == .lz4 && raw > 0 && (incompressibleStreak < 4 || batchCount % 8 == 0)
        if tryCompress {
            let n = LZ4_compress_default(source.assumingMemoryBound(to: CChar.self),
                                         (output + dataStart).assumingMemoryBound(to: CChar.self),
                                         Int32(raw), Int32(outputCapacity - dataStart))
            if n > 0 && Int(n) < raw {
                encoding = 1
                dataLength = Int(n)
                incompressibleStreak = 0
            } else {
                incompressibleStreak += 1
            }
        }
        let h = output
        h.storeBytes(of: encoding, as: UInt8.self)
        (h + 1).initializeMemory(as: UInt8.self, repeating: 0, count: 3)
        (h + 4).storeBytes(of: firstPFN.bigEndian, as: UInt64.self)
        (h + 12).storeBytes(of: UInt32(windowPages).bigEndian, as: UInt32.self)
        (h + 16).storeBytes(of: UInt32(dataPages).bigEndian, as: UInt32.self)
        (h + 20).storeBytes(of: UInt32(dataLength).bigEndian, as: UInt32.self)
        sentBits.withUnsafeBytes { UnsafeMutableRawBufferPointer(start: h + PageBatch.headerSize, count: PageBatch.bitmapBytes).copyMemory(from: $0) }
        zeroBits.withUnsafeBytes { UnsafeMutableRawBufferPointer(start: h + PageBatch.headerSize + PageBatch.bitmapBytes, count: PageBatch.bitmapBytes).copyMemory(from: $0) }
        if encoding == 0 {
            // Raw: header from `output`, data straight from the staging pages.
            let header = UnsafeRawBufferPointer(start: output, count: dataStart)
            let data = UnsafeRawBufferPointer(start: source, count: raw)
            try connection.send(.pages, parts: [header, data])
        } else {
            try connection.send(.pages, parts: [UnsafeRawBufferPointer(start: output, count: dataStart + dataLength)])
        }
        counters.dataPages += dataPages
        counters.rawBytes += UInt64(raw)
        let wire = dataStart + dataLength + 12
        counters.wireBytes += UInt64(wire)
        try afterBatch?(wire)
    }
}

/// Applies received page batches to guest memory, validating everything first.
public final class PageDecoder {
    /// A page the batch says is zero: written only if it is not (a read costs less than
    /// dirtying, and first-touching, a page).
    static func clearPage(_ dst: UnsafeMutableRawPointer) {
        if !PageEncoder.isZero(dst) { memset(dst, 0, PageBatch.pageSize) }
    }

    let memory: GuestMemory
    private var scratch: UnsafeMutableRawPointer
    public private(set) var counters = PageCounters()

    public init(memory: GuestMemory) {
        self.memory = memory
        scratch = UnsafeMutableRawPointer.allocate(byteCount: PageBatch.windowPages * PageBatch.pageSize, alignment: 4096)
    }

    deinit { scratch.deallocate() }

    public func apply(_ payload: [UInt8]) throws {
        try payload.withUnsafeBytes { p in try apply(p) }
    }

    /// A batch's header and bitmaps, checked against each other and against guest RAM.
    struct Batch {
        var encoding: UInt8
        var windowPages: Int
        var dataPages: Int
        var dataLength: Int
        var sent: UnsafeRawBufferPointer
        var zero: UnsafeRawBufferPointer
        var data: UnsafeRawPointer
        var region: MemoryRegion
        var offset: UInt64
    }

    /// `p` holds the batch's header and bitmaps at least; `payloadCount` is its whole length
    /// (when the data is elsewhere), else `p.count`.
    func parse(_ p: UnsafeRawBufferPointer, payloadCount: Int? = nil) throws -> Batch {
        let fixed = PageBatch.fixedSize
        let count = payloadCount ?? p.count
        guard count >= fixed, p.count >= fixed, let base = p.baseAddress else { throw MigrationError.stream("page batch is truncated (\(count) bytes)") }
        let encoding = base.load(as: UInt8.self)
        let firstPFN = UInt64(bigEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt64.self))
        let windowPages = Int(UInt32(bigEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        let dataPages = Int(UInt32(bigEndian: base.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        let dataLength = Int(UInt32(bigEndian: base.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
        guard encoding <= 1 else { throw MigrationError.stream("page batch has unknown encoding \(encoding)") }
        guard windowPages >= 1 && windowPages <= PageBatch.windowPages, dataPages <= windowPages else {
            throw MigrationError.stream("page batch window of \(windowPages) pages (\(dataPages) with data) is out of range")
        }
        guard dataLength == count - fixed else {
            throw MigrationError.stream("page batch says \(dataLength) data bytes but carries \(count - fixed)")
        }
        let sent = UnsafeRawBufferPointer(start: base + PageBatch.headerSize, count: PageBatch.bitmapBytes)
        let zero = UnsafeRawBufferPointer(start: base + PageBatch.headerSize + PageBatch.bitmapBytes, count: PageBatch.bitmapBytes)
        // The window must be guest RAM, bitmaps consistent with the counts.
        let (startGPA, o1) = firstPFN.multipliedReportingOverflow(by: UInt64(PageBatch.pageSize))
        guard !o1, let (region, offset) = memory.locate(GuestAddress(startGPA), length: UInt64(windowPages * PageBatch.pageSize)) else {
            throw MigrationError.stream("page batch at guest page 0x\(String(firstPFN, radix: 16)) (+\(windowPages)) is outside guest RAM")
        }
        var withData = 0
        for i in 0..<PageBatch.bitmapBytes {
            if zero[i] & ~sent[i] != 0 { throw MigrationError.stream("page batch marks unsent pages as zero") }
            let valid = windowPages >= (i + 1) * 8 ? 0xff : (i * 8 >= windowPages ? 0 : UInt8((1 << (windowPages - i * 8)) - 1))
            if sent[i] & ~valid != 0 { throw MigrationError.stream("page batch bitmap runs past its window") }
            withData += (sent[i] & ~zero[i]).nonzeroBitCount
        }
        guard withData == dataPages else {
            throw MigrationError.stream("page batch bitmap names \(withData) data pages, header says \(dataPages)")
        }
        return Batch(encoding: encoding, windowPages: windowPages, dataPages: dataPages, dataLength: dataLength,
                     sent: sent, zero: zero, data: UnsafeRawPointer(base + fixed), region: region, offset: offset)
    }

    public func apply(_ p: UnsafeRawBufferPointer) throws {
        let b = try parse(p)
        let (encoding, windowPages, dataPages, dataLength, sent, zero, region, offset) =
            (b.encoding, b.windowPages, b.dataPages, b.dataLength, b.sent, b.zero, b.region, b.offset)
        let rawLength = dataPages * PageBatch.pageSize
        if encoding == 1 && dataPages == windowPages {
            // Every page of the window carries data: decompress straight into guest memory.
            let dst = region.host + Int(offset)
            let n = LZ4_decompress_safe(b.data.assumingMemoryBound(to: CChar.self),
                                        dst.assumingMemoryBound(to: CChar.self), Int32(dataLength), Int32(rawLength))
            guard n == rawLength else { throw MigrationError.stream("page batch does not decompress to \(dataPages) pages") }
            counters.dataPages += dataPages
            counters.wireBytes += UInt64(p.count + 12)
            return
        }
        let data: UnsafeRawPointer
        if encoding == 1 {
            let n = LZ4_decompress_safe(b.data.assumingMemoryBound(to: CChar.self),
                                        scratch.assumingMemoryBound(to: CChar.self), Int32(dataLength), Int32(rawLength))
            guard n == rawLength else { throw MigrationError.stream("page batch does not decompress to \(dataPages) pages") }
            data = UnsafeRawPointer(scratch)
        } else {
            guard dataLength == rawLength else { throw MigrationError.stream("raw page batch has \(dataLength) bytes for \(dataPages) pages") }
            data = b.data
        }
        var next = 0
        for i in 0..<windowPages where sent[i / 8] & (1 << UInt8(i % 8)) != 0 {
            let dst = region.host + Int(offset) + i * PageBatch.pageSize
            if zero[i / 8] & (1 << UInt8(i % 8)) != 0 {
                Self.clearPage(dst)
                counters.zeroPages += 1
            } else {
                dst.copyMemory(from: data + next * PageBatch.pageSize, byteCount: PageBatch.pageSize)
                next += 1
                counters.dataPages += 1
            }
        }
        counters.wireBytes += UInt64(p.count + 12)
    }

    /// Applies the `pages` section whose 8 header bytes are `section` and whose payload begins
    /// with `fixed` (the batch's header and bitmaps), reading its data from `reader` straight into
    /// the guest pages it names, then its CRC. False, with nothing more read, for a batch to be
    /// read and applied the ordinary way: compressed, or one whose header does not parse (the
    /// ordinary way reports a bad checksum before a bad header).
    func place(_ fixed: [UInt8], section: [UInt8], from reader: SectionReader) throws -> Bool {
        let length = Int(SectionFraming.bigEndian32(section[4..<8]))
        guard let b = try? fixed.withUnsafeBytes({ try parse($0, payloadCount: length) }),
              b.encoding == 0, b.dataLength == b.dataPages * PageBatch.pageSize else { return false }
        var crc = section.withUnsafeBytes { CRC32C.update(0, $0) }
        crc = fixed.withUnsafeBytes { CRC32C.update(crc, $0) }
        let base = b.region.host + Int(b.offset)
        // Data pages arrive in window order: each run of consecutive ones is one read.
        let sent = { (i: Int) in fixed[PageBatch.headerSize + i / 8] & (1 << UInt8(i % 8)) != 0 }
        let zero = { (i: Int) in fixed[PageBatch.headerSize + PageBatch.bitmapBytes + i / 8] & (1 << UInt8(i % 8)) != 0 }
        let isData = { (i: Int) in sent(i) && !zero(i) }
        var i = 0
        while i < b.windowPages {
            guard isData(i) else { i += 1; continue }
            var end = i + 1
            while end < b.windowPages && isData(end) { end += 1 }
            let run = UnsafeMutableRawBufferPointer(start: base + i * PageBatch.pageSize, count: (end - i) * PageBatch.pageSize)
            try reader.source.readExactly(run)
            crc = CRC32C.update(crc, UnsafeRawBufferPointer(run))
            i = end
        }
        guard try reader.readTrailer() == crc else {
            throw MigrationError.stream("checksum mismatch in pages section (\(length) bytes): the stream was corrupted")
        }
        for i in 0..<b.windowPages where zero(i) {
            let dst = base + i * PageBatch.pageSize
            Self.clearPage(dst)
            counters.zeroPages += 1
        }
        counters.dataPages += b.dataPages
        counters.wireBytes += UInt64(length + 12)
        return true
    }
}
