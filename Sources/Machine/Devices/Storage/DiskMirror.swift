import Foundation
import Glibc

/// A second image of a disk that every guest write also goes to (`--disk path=P,mirror=Q`).
/// A write is acknowledged to the guest once the primary has it and the mirror has it or has
/// fallen out of sync; FLUSH syncs both. When a write or flush to the mirror fails the guest
/// keeps running on the primary: the mirror is out of sync, and a bitmap of 64 KiB blocks
/// records what the guest wrote since, so a resync (`mirror-resync`) copies only those.
///
/// In sync, the mirror carries a generation id (`MirrorIdentity`) that a migration target
/// compares to the source's before it takes the mirror as the volume, moving no disk data.
public final class DiskMirror: @unchecked Sendable {
    public enum Phase: String, Sendable {
        case inSync = "in-sync", outOfSync = "out-of-sync", resyncing
    }

    /// What `status` shows and a migration's description carries.
    public struct Status: Sendable, Equatable {
        public var volume: String
        public var path: String
        public var phase: Phase
        /// Bytes of the disk the mirror does not have yet.
        public var dirtyBytes: UInt64
        /// Why the mirror fell out of sync (the last failure).
        public var error: String?
        /// The current in-sync period's id (32 hex digits); a new one whenever sync is lost or regained.
        public var generation: String
        /// Checksum of the dirty-region map, bound to the generation (`MirrorIdentity.mapChecksum`).
        public var mapChecksum: String
        /// Whether the generation is recorded in the mirror file (an attribute or a sidecar file).
        public var identityRecorded: Bool
    }

    /// The dirty log's block: one granularity for a disk, whether a migration or its mirror tracks it.
    public static let blockSize = DiskDirtyLog.blockSize
    public let volume: String
    public let path: String
    /// Size of the disk (and of the mirror).
    public let bytes: UInt64
    let fd: Int32
    /// The primary image, read by a resync.
    let primary: Int32
    /// Guards everything below; held across each mirror write and each block a resync copies,
    /// so the two never interleave on a block.
    let cond = NSCondition()
    var phase = Phase.resyncing
    var dirty: BlockBitmap
    /// Blocks written to the mirror since its last successful fdatasync: dirty again if it fails.
    var unflushed: BlockBitmap
    var generation = MirrorIdentity.newGeneration()
    var lastError: String?
    var identityRecorded = false
    /// The loss of sync was announced on stderr (once until the mirror is in sync again).
    var lossAnnounced = false
    /// A resync pass asked for (true: compare blocks first, the initial sync of a mirror whose contents are unknown).
    var request: Bool?
    var initialSyncBegun = false
    var resyncRunning = false
    var closing = false
    /// Bytes a resync wrote to the mirror since this process started.
    var copiedBytes: UInt64 = 0

    /// Opens (or creates, sparse) the mirror of a `bytes`-byte disk whose primary is open as
    /// `primaryFD`. Until `beginInitialSync()` the mirror is resyncing with every block dirty.
    public init(path: String, volume: String, bytes: UInt64, primaryFD: Int32) throws(VirtioError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .disk(path: path, reason: "cannot open the mirror for writing: \(String(cString: strerror(errno)))") }
        var st = stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw .disk(path: path, reason: "cannot stat the mirror: \(String(cString: strerror(errno)))") }
        if st.st_mode & S_IFMT == S_IFREG && st.st_size == 0 && ftruncate(fd, off_t(bytes)) != 0 {
            let e = errno
            close(fd)
            throw .disk(path: path, reason: "cannot size the mirror to \(bytes) bytes: \(String(cString: strerror(e)))")
        }
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0, UInt64(end) == bytes else {
            close(fd)
            throw .disk(path: path, reason: "the mirror is \(end) bytes, the disk \(bytes): a mirror must be the disk's size (or empty)")
        }
        let primary = dup(primaryFD)
        guard primary >= 0 else { close(fd); throw .disk(path: path, reason: "cannot duplicate the primary's descriptor: \(String(cString: strerror(errno)))") }
        self.fd = fd
        self.primary = primary
        self.path = path
        self.volume = volume
        self.bytes = bytes
        let blocks = Int((bytes + Self.blockSize - 1) / Self.blockSize)
        dirty = BlockBitmap(blocks: blocks)
        dirty.setAll()
        unflushed = BlockBitmap(blocks: blocks)
        let t = Thread { [self] in resyncLoop() }
        t.name = "mirror"
        t.start()
    }

    deinit { close(fd); close(primary) }

    /// Ends the resync thread (the disk goes away).
    public func shutDown() {
        cond.withLock { closing = true; cond.broadcast() }
    }

    public var status: Status { cond.withLock { statusLocked() } }

    func statusLocked() -> Status {
        let dirtyBytes = min(bytes, UInt64(dirty.count) * Self.blockSize)
        return Status(volume: volume, path: path, phase: phase, dirtyBytes: dirtyBytes,
                      error: lastError, generation: generation,
                      mapChecksum: MirrorIdentity.mapChecksum(generation: generation, map: dirty),
                      identityRecorded: identityRecorded)
    }

    // MARK: the guest's requests (the device's worker thread)

    /// After the primary took a guest write of `count` bytes at `offset`: the same to the mirror,
    /// or — out of sync, or when the mirror refuses it — the blocks marked dirty.
    public func write(_ p: UnsafeRawPointer, count: Int, offset: UInt64) {
        cond.withLock {
            guard phase != .outOfSync else { dirty.mark(offset: offset, length: UInt64(count), blockSize: Self.blockSize); return }
            if let e = Self.pwriteAll(fd, p, count: count, offset: offset) {
                dirty.mark(offset: offset, length: UInt64(count), blockSize: Self.blockSize)
                lose("write at \(offset): \(e)")
                return
            }
            unflushed.mark(offset: offset, length: UInt64(count), blockSize: Self.blockSize)
        }
    }

    /// After the primary's FLUSH: fdatasync the mirror; a failure takes it out of sync.
    public func flush() {
        cond.withLock { _ = syncLocked() }
    }

    /// fdatasync under the lock; false (and out of sync) when it fails.
    @discardableResult
    func syncLocked() -> Bool {
        guard phase != .outOfSync else { return false }
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            lose("fdatasync: \(String(cString: strerror(errno)))")
            return false
        }
        unflushed.clearAll()
        return true
    }

    /// Out of sync (under the lock): what may not have reached the mirror is dirty, the
    /// generation is retired, and one line says so.
    func lose(_ reason: String) {
        dirty.formUnion(unflushed)
        unflushed.clearAll()
        lastError = reason
        generation = MirrorIdentity.newGeneration()
        identityRecorded = false
        phase = .outOfSync
        if !lossAnnounced {
            lossAnnounced = true
            FileHandle.standardError.write(Data("swiftvmm: volume '\(volume)': mirror \(path) is out of sync (\(reason)); the guest runs on, on the primary\n".utf8))
        }
        cond.broadcast()
    }

    /// Paused for a migration's stop-and-copy (no request in flight): the mirror's data durable.
    /// Returns its status after that sync.
    public func syncAtPause() -> Status {
        cond.withLock {
            syncLocked()
            return statusLocked()
        }
    }

    static func pwriteAll(_ fd: Int32, _ p: UnsafeRawPointer, count: Int, offset: UInt64) -> String? {
        var done = 0
        while done < count {
            let n = pwrite(fd, p + done, count - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return n == 0 ? "short write" : String(cString: strerror(errno)) }
            done += n
        }
        return nil
    }
}
