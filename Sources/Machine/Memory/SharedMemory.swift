import CLinux
import Glibc

/// What guest RAM is made of.
public enum MemoryBackend: Sendable, Equatable {
    /// Private anonymous memory: only this process can reach it (the default).
    case anonymous
    /// One memfd per RAM range, mapped shared: another process given the descriptors (a
    /// local hand-over's target) maps the very same pages.
    case memfd
    /// Memfds received from the process that ran the guest before, one
    /// per RAM range, of exactly its size. Not owned: each region duplicates what it keeps.
    case adopted([Int32])

    /// Parses `--memory-backend anonymous|memfd` (`shared` is another name for memfd).
    public static func parse(_ text: String) -> MemoryBackend? {
        switch text {
        case "anonymous", "anon", "private": return .anonymous
        case "memfd", "shared": return .memfd
        default: return nil
        }
    }

    public var name: String {
        switch self {
        case .anonymous: return "anonymous"
        case .memfd: return "memfd"
        case .adopted: return "memfd (handed over)"
        }
    }
}

/// A shared file a RAM region is mapped from: made fresh, or one handed over.
enum SharedRAM {
    case create(name: String)
    case adopt(Int32)
}

extension MemoryRegion {
    /// Maps `size` bytes of a shared file (created as a memfd of that size, or a duplicate of
    /// one handed over) with MAP_SHARED; returns the mapping and the descriptor the region keeps.
    static func mapShared(_ source: SharedRAM, size: UInt64) throws(MemoryError) -> (UnsafeMutableRawPointer, Int32) {
        let fd: Int32
        switch source {
        case .create(let name):
            fd = clinux_memfd_create(name, size)
            guard fd >= 0 else { throw .allocation(size: size, errno: -fd) }
        case .adopt(let received):
            fd = fcntl(received, F_DUPFD_CLOEXEC, 0)
            guard fd >= 0 else { throw .file(offset: 0, errno: errno) }
        }
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw .allocation(size: size, errno: e)
        }
        return (p, fd)
    }
}

extension GuestMemory {
    /// Every region is mapped shared from a file whose descriptor another process can map too.
    public var isShareable: Bool { !regions.isEmpty && regions.allSatisfy { $0.sharedFD != nil } }

    /// The descriptors of the shared files behind guest RAM, one per region (empty unless
    /// `isShareable`). Owned by the regions: pass them on, never close them.
    public var sharedDescriptors: [Int32] { isShareable ? regions.compactMap(\.sharedFD) : [] }
}
