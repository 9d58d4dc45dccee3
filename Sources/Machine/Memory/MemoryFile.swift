import Glibc

/// Guest RAM that starts out as the contents of a file (a snapshot): each RAM range of the
/// memory map at a page-aligned offset of it. Holes in the file are zero pages.
public struct MemoryFile: Sendable {
    /// How the file's pages become guest RAM.
    public enum Mode: Sendable {
        /// Mapped privately: a page is read from the file when the guest first touches it, and
        /// copied when it first writes it (the file never changes).
        case mapped
        /// Read into anonymous memory up front: only the file's data extents, holes stay
        /// untouched; the file is not needed afterwards.
        case prefault
    }

    /// The open file (not owned: each region duplicates what it keeps).
    public let fd: Int32
    /// Where each RAM range of the memory map starts in the file (page-aligned).
    public let offsets: [UInt64]
    public let mode: Mode

    public init(fd: Int32, offsets: [UInt64], mode: Mode) {
        self.fd = fd; self.offsets = offsets; self.mode = mode
    }
}

/// The parts of a file that hold data (`SEEK_DATA`/`SEEK_HOLE`): a sparse file's holes read as
/// zeros and need not be read at all.
public enum FileExtents {
    /// Linux's `SEEK_DATA` and `SEEK_HOLE` (glibc declares them only under _GNU_SOURCE).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// Data extents within `[start, start+length)` as (offset, length), clipped to the range.
    /// A file system without hole support reports the whole range as data.
    public static func data(fd: Int32, start: UInt64, length: UInt64) -> [(offset: UInt64, length: UInt64)] {
        var out: [(offset: UInt64, length: UInt64)] = []
        let end = start + length
        var pos = start
        while pos < end {
            let d = lseek(fd, off_t(pos), Self.seekData)
            if d < 0 {
                if errno == ENXIO { break }          // no data after pos
                return [(offset: start, length: length)]    // no hole support: all data
            }
            let dataStart = UInt64(d)
            guard dataStart < end else { break }
            let h = lseek(fd, d, Self.seekHole)
            let dataEnd: UInt64 = h < 0 ? end : Swift.min(UInt64(h), end)
            if dataEnd > dataStart { out.append((offset: dataStart, length: dataEnd - dataStart)) }
            pos = Swift.max(dataEnd, dataStart + 1)
        }
        return out
    }

    /// Bytes of `[start, start+length)` that hold data.
    public static func dataBytes(fd: Int32, start: UInt64, length: UInt64) -> UInt64 {
        data(fd: fd, start: start, length: length).reduce(0) { $0 + $1.length }
    }
}

extension MemoryRegion {
    /// Maps `size` bytes of `fd` at `offset` privately (copy-on-write, faulted on demand).
    static func mapFile(fd: Int32, offset: UInt64, size: UInt64) throws(MemoryError) -> UnsafeMutableRawPointer {
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, off_t(offset))
        guard let p, p != MAP_FAILED else { throw .allocation(size: size, errno: errno) }
        return p
    }

    /// Reads the data extents of `fd` in `[offset, offset+size)` into `host` (anonymous memory,
    /// zero elsewhere).
    static func readFile(fd: Int32, offset: UInt64, size: UInt64, into host: UnsafeMutableRawPointer) throws(MemoryError) {
        for e in FileExtents.data(fd: fd, start: offset, length: size) {
            var done: UInt64 = 0
            while done < e.length {
                let chunk = Int(min(e.length - done, 1 << 30))
                let n = pread(fd, host + Int(e.offset - offset + done), chunk, off_t(e.offset + done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw .file(offset: e.offset + done, errno: n == 0 ? EIO : errno) }
                done += UInt64(n)
            }
        }
    }
}
