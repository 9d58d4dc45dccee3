import Synchronization

/// Which blocks of a disk the guest wrote since the log was last collected, for a migration
/// that copies the disk. Off (and free) unless a migration turned it on.
///
/// Granularity 64 KiB: a guest write is usually 4 KiB to 128 KiB, and file systems allocate in
/// runs, so a 64 KiB block re-sends at most 60 KiB it need not for a lone 4 KiB write while the
/// bitmap stays small (2 KiB per GiB of disk, 16 pages' worth of wire per bit, a convergence
/// unit comparable with memory's). Finer blocks cost more bitmap and more per-block headers on
/// the wire; coarser ones re-send more of a disk a guest writes sparsely.
public final class DiskDirtyLog: Sendable {
    public static let blockSize: UInt64 = 64 << 10
    /// Bytes of the disk the log covers.
    public let bytes: UInt64
    public var blocks: Int { Int((bytes + Self.blockSize - 1) / Self.blockSize) }
    private let bitmap = Mutex<[UInt64]?>(nil)

    public init(bytes: UInt64) { self.bytes = bytes }

    /// Starts logging with every block clean.
    public func start() {
        let words = (blocks + 63) / 64
        bitmap.withLock { $0 = [UInt64](repeating: 0, count: words) }
    }

    public func stop() { bitmap.withLock { $0 = nil } }

    public var isLogging: Bool { bitmap.withLock { $0 != nil } }

    /// Marks the blocks `[offset, offset+length)` touches. Called after the write reached the
    /// file, so a block collected before it completed is collected again.
    public func mark(offset: UInt64, length: UInt64) {
        guard length > 0, offset < bytes else { return }
        let first = Int(offset / Self.blockSize)
        let last = Int((min(offset + length, bytes) - 1) / Self.blockSize)
        bitmap.withLock { b in
            guard b != nil else { return }
            for i in first...last { b?[i / 64] |= 1 << UInt64(i % 64) }
        }
    }

    /// The blocks written since the last call (indices, ascending), and the log cleared.
    public func collect() -> [Int] {
        let words = bitmap.withLock { b -> [UInt64] in
            guard let w = b else { return [] }
            b = [UInt64](repeating: 0, count: w.count)
            return w
        }
        var out: [Int] = []
        for (i, w) in words.enumerated() where w != 0 {
            var x = w
            while x != 0 {
                let bit = x.trailingZeroBitCount
                out.append(i * 64 + bit)
                x &= x - 1
            }
        }
        return out
    }
}
