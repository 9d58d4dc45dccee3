import Glibc
import Machine

/// The non-zero pages of a region, as runs of consecutive pages, and the data CRC over them
/// (`SnapshotHeader`: each page's index, then its bytes).
struct RegionScan {
    var dataBytes: UInt64 = 0
    var crc: UInt32 = 0

    /// Calls `run(firstPage, pageCount)` for every run of non-zero pages among those
    /// `residentPages()` says may hold data (every page when mincore fails).
    static func scan(_ region: MemoryRegion, run: (Int, Int) throws -> Void) rethrows -> RegionScan {
        let resident = region.residentPages()
        var result = RegionScan()
        let pageSize = Int(MemoryMap.pageSize)
        var runStart = -1
        for page in 0...region.pageCount {
            var data = false
            if page < region.pageCount, resident.map({ $0[page] & 1 != 0 }) ?? true {
                let p = UnsafeRawPointer(region.host + page * pageSize)
                if !PageEncoder.isZero(p) {
                    data = true
                    var index = UInt64(page).littleEndian
                    result.crc = withUnsafeBytes(of: &index) { CRC32C.update(result.crc, $0) }
                    result.crc = CRC32C.update(result.crc, UnsafeRawBufferPointer(start: p, count: pageSize))
                    result.dataBytes += UInt64(pageSize)
                }
            }
            if data && runStart < 0 { runStart = page }
            if !data && runStart >= 0 {
                try run(runStart, page - runStart)
                runStart = -1
            }
        }
        return result
    }
}

/// Writes one snapshot: into a temporary file next to `path`, renamed over it only once the
/// header — written last — is on disk. A save that fails leaves nothing behind, and a file
/// being replaced (the snapshot a running guest was restored from) is never changed in place.
final class SnapshotWriter {
    let path: String
    let temp: String
    let fd: Int32
    private var finished = false

    init(path: String) throws {
        self.path = path
        temp = "\(path).partial-\(getpid())"
        fd = open(temp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw MigrationError.usage("cannot create the snapshot '\(path)': \(String(cString: strerror(errno)))") }
    }

    deinit {
        close(fd)
        if !finished { unlink(temp) }
    }

    /// Lays the file out, sizes it (all holes), and writes the two blobs.
    func begin(description: [UInt8], state: [UInt8], memory: GuestMemory) throws -> SnapshotHeader {
        var h = SnapshotHeader.layout(descriptionLength: description.count, stateLength: state.count, ram: memory.map.ram)
        h.descriptionCRC = CRC32C.checksum(description)
        h.stateCRC = CRC32C.checksum(state)
        guard ftruncate(fd, off_t(h.fileSize)) == 0 else { throw failure("cannot size") }
        try description.withUnsafeBytes { try write($0, at: h.descriptionOffset) }
        try state.withUnsafeBytes { try write($0, at: h.stateOffset) }
        return h
    }

    /// Writes every non-zero page of `region` at its place in the file; returns the figures
    /// for its header entry.
    func writeRegion(_ region: MemoryRegion, at offset: UInt64) throws -> RegionScan {
        let pageSize = Int(MemoryMap.pageSize)
        return try RegionScan.scan(region) { first, count in
            try write(UnsafeRawBufferPointer(start: region.host + first * pageSize, count: count * pageSize),
                      at: offset + UInt64(first * pageSize))
        }
    }

    /// Writes the header, flushes the file and puts it in place.
    func finish(_ header: SnapshotHeader) throws {
        try header.encode().withUnsafeBytes { try write($0, at: 0) }
        guard fdatasync(fd) == 0 else { throw failure("cannot flush") }
        guard rename(temp, path) == 0 else { throw failure("cannot rename into place") }
        finished = true
    }

    /// The file's apparent size and the bytes it takes on disk.
    func sizes() -> (apparent: UInt64, allocated: UInt64) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return (0, 0) }
        return (UInt64(st.st_size), UInt64(st.st_blocks) * 512)
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, base + done, min(bytes.count - done, 1 << 30), off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw failure("cannot write") }
            done += n
        }
    }

    private func failure(_ what: String) -> MigrationError {
        .machine("\(what) the snapshot '\(path)': \(String(cString: strerror(errno)))")
    }
}
