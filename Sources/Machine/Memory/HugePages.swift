import Glibc

/// Transparent huge pages for anonymous guest RAM: the kernel zeroes and maps 2 MiB at a time,
/// so first-touching fresh memory (a migration target receiving every page) costs about half.
/// KVM still tracks dirty pages 4 KiB at a time: with dirty logging on it maps huge pages
/// with 4 KiB entries. Guest RAM is always mapped 2 MiB-aligned; a migration target asks for
/// huge pages where round 0's stream is dense (its populator), `run` does not: a guest that
/// touches little would be charged whole 2 MiB pages (~2 MiB more resident for memtouch
/// size=64M, and a 2 MiB page zeroed for each scattered 4 KiB one).
public enum HugePages {
    public static let size = 2 << 20

    /// Whether the host lets a mapping ask for huge pages (`always` or `madvise` in
    /// /sys/kernel/mm/transparent_hugepage/enabled).
    public static let available: Bool = {
        let fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 128)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return false }
        let text = String(decoding: buf[0..<n], as: UTF8.self)
        return text.contains("[always]") || text.contains("[madvise]")
    }()

    /// `size` bytes of anonymous memory, 2 MiB-aligned (so that guest-physical and host huge
    /// pages can line up); nil (errno set) on failure.
    static func mapAnonymous(size: Int) -> UnsafeMutableRawPointer? {
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        guard size >= Self.size else {
            let a = mmap(nil, size, PROT_READ | PROT_WRITE, flags, -1, 0)
            return a == MAP_FAILED ? nil : a
        }
        guard let raw = mmap(nil, size + Self.size, PROT_READ | PROT_WRITE, flags, -1, 0), raw != MAP_FAILED else { return nil }
        let address = UInt(bitPattern: raw)
        let aligned = (address + UInt(Self.size) - 1) & ~(UInt(Self.size) - 1)
        let head = Int(aligned - address)
        if head > 0 { munmap(raw, head) }
        let tail = Self.size - head
        let p = raw + head
        if tail > 0 { munmap(p + size, tail) }
        return p
    }
}

extension GuestMemory {
    /// Asks for transparent huge pages on the anonymous RAM regions, where the host allows it;
    /// true when it did. Pages already touched stay as they are.
    @discardableResult
    public func adviseHugePages() -> Bool {
        guard HugePages.available else { return false }
        var advised = false
        for r in regions where r.backing == nil {
            if madvise(r.host, Int(r.size), MADV_HUGEPAGE) == 0 { advised = true }
        }
        return advised
    }
}
