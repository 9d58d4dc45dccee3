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
    private let bitmap = Mutex<BlockBitmap?>(nil)
    /// Read without the lock on every guest write: a disk no migration copies pays one load.
    private let logging = Atomic<Bool>(false)

    public init(bytes: UInt64) { self.bytes = bytes }

    /// Starts logging with every block clean.
    public func start() {
        let blocks = blocks
        bitmap.withLock { $0 = BlockBitmap(blocks: blocks) }
        logging.store(true, ordering: .releasing)
    }

    public func stop() {
        logging.store(false, ordering: .releasing)
        bitmap.withLock { $0 = nil }
    }

    public var isLogging: Bool { logging.load(ordering: .acquiring) }

    /// Marks the blocks `[offset, offset+length)` touches. Called after the write reached the
    /// file, so a block collected before it completed is collected again.
    public func mark(offset: UInt64, length: UInt64) {
        guard logging.load(ordering: .acquiring), offset < bytes else { return }
        let length = min(length, bytes - offset)
        bitmap.withLock { $0?.mark(offset: offset, length: length, blockSize: Self.blockSize) }
    }

    /// The blocks written since the last call (indices, ascending), and the log cleared.
    public func collect() -> [Int] {
        guard let taken = bitmap.withLock({ b -> BlockBitmap? in
            defer { b?.clearAll() }
            return b
        }) else { return [] }
        var out: [Int] = []
        out.reserveCapacity(taken.count)
        var next = taken.first(from: 0)
        while let b = next {
            out.append(b)
            next = taken.first(from: b + 1)
        }
        return out
    }
}
