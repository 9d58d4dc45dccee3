import Glibc
import Machine
@_spi(Fuzzing) import Migration

/// The page-batch decoder: one `pages` section payload (header, sent and zero bitmaps, raw or
/// LZ4 data) applied to guest RAM of two regions, 0 … 3 GiB and 4 GiB … 4 GiB + 32 MiB. After a
/// batch is accepted, every page it marks zero must read as zero and every raw data page must
/// hold its bytes. The same batch framed as a section then goes the way a target reads it (raw
/// data straight into guest memory), which must accept exactly what `apply` accepts.
enum PagesTarget {
    static let memory: GuestMemory = {
        do { return try GuestMemory(map: MemoryMap(memorySize: MemoryMap.mmioHoleStart + (32 << 20))) } catch {
            fatalError("swiftvmm-fuzz: cannot map guest memory: \(error)")
        }
    }()
    nonisolated(unsafe) static let decoder = PageDecoder(memory: memory)
    nonisolated(unsafe) static var runs = 0

    static func run(_ data: [UInt8]) {
        runs += 1
        if runs % 4096 == 0 {
            // Give back the pages batches touched, so a long run does not grow without bound.
            for r in memory.regions { madvise(r.host, Int(r.size), MADV_DONTNEED) }
        }
        let applied = (try? decoder.apply(data)) != nil
        if applied { check(data) }
        let placed = (try? SectionReader(ByteBufferSource(framed(data))).read(applying: decoder)) != nil
        require(placed == applied, placed ? "a batch apply refuses was placed" : "a batch apply accepts was refused when placed")
        if placed { check(data) }
    }

    /// `payload` as a checksummed `pages` section.
    static func framed(_ payload: [UInt8]) -> [UInt8] {
        let n = UInt32(payload.count)
        let header: [UInt8] = [0, UInt8(SectionType.pages.rawValue), 0, 0, UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)]
        let crc = CRC32C.checksum(header + payload)
        return header + payload + [UInt8(crc >> 24), UInt8((crc >> 16) & 0xff), UInt8((crc >> 8) & 0xff), UInt8(crc & 0xff)]
    }

    static func check(_ data: [UInt8]) {
        let fixed = 24 + 2 * 128
        require(data.count >= fixed, "a \(data.count)-byte batch was accepted")
        let firstPFN = data[4 ..< 12].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let window = Int(data[12 ..< 16].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        let raw = data[0] == 0
        var next = 0
        for i in 0 ..< window where data[24 + i / 8] & (1 << UInt8(i % 8)) != 0 {
            let address = GuestAddress((firstPFN + UInt64(i)) * 4096)
            guard let page = try? memory.read(address, count: 4096) else {
                require(false, "page 0x\(String(firstPFN + UInt64(i), radix: 16)) of an accepted batch is outside guest RAM")
                return
            }
            if data[24 + 128 + i / 8] & (1 << UInt8(i % 8)) != 0 {
                require(page.allSatisfy { $0 == 0 }, "a page the batch marks zero is not zero")
            } else {
                if raw { require(page[...] == data[fixed + next * 4096 ..< fixed + (next + 1) * 4096], "a raw page differs from its data") }
                next += 1
            }
        }
    }
}
