import Foundation
import Glibc
import Synchronization

/// A second copy of a disk kept in step with every guest write (`--disk path=P,mirror=Q`): a
/// write is acknowledged to the guest only once both files have it, and FLUSH flushes both.
/// When the mirror fails, the guest carries on with the primary alone: the mirror is out of
/// sync (one log line; `status` shows it) and the blocks written since are logged, so that
/// `mirror-resync` copies only those.
public final class DiskMirror: Sendable {
    public let path: String
    private let fd: Int32
    /// Blocks the mirror missed while out of sync.
    private let missed: DiskDirtyLog
    /// nil while in sync; otherwise why the mirror fell behind.
    private let failure = Mutex<String?>(nil)

    /// Opens the mirror `path`, which must be a raw image as large as the primary (`bytes`).
    public init(path: String, bytes: UInt64) throws(VirtioError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .disk(path: path, reason: "cannot open the mirror: \(String(cString: strerror(errno)))") }
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0, UInt64(end) == bytes else {
            close(fd)
            throw .disk(path: path, reason: "the mirror has \(end) bytes, the disk \(bytes); create it as a copy of the disk")
        }
        if let format = ImageFormat.recognise(fd: fd) {
            close(fd)
            throw .disk(path: path, reason: "is a \(format) image; swiftvmm serves raw images only")
        }
        self.fd = fd
        self.path = path
        missed = DiskDirtyLog(bytes: bytes)
    }

    deinit { close(fd) }

    public var inSync: Bool { failure.withLock { $0 == nil } }
    /// Why the mirror is out of sync, or nil.
    public var problem: String? { failure.withLock { $0 } }
    /// Blocks `mirror-resync` would copy.
    public var missedBlocks: Int { missed.count }

    /// Writes `length` bytes at `offset` to the mirror (the primary has them already).
    func write(_ p: UnsafeRawPointer, length: Int, offset: UInt64) {
        guard inSync else { missed.mark(offset: offset, length: UInt64(length)); return }
        var done = 0
        while done < length {
            let n = pwrite(fd, p + done, length - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                fail("write at \(offset): \(n == 0 ? "no space" : String(cString: strerror(errno)))", offset: offset, length: length)
                return
            }
            done += n
        }
    }

    /// FLUSH: makes the mirror durable too. A mirror that cannot is out of sync as a whole.
    func flush() {
        guard inSync else { return }
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            fail("flush: \(String(cString: strerror(errno)))", offset: 0, length: Int(clamping: missed.bytes))
            return
        }
    }

    private func fail(_ reason: String, offset: UInt64, length: Int) {
        missed.startIfStopped()
        missed.mark(offset: offset, length: UInt64(length))
        let first = failure.withLock { f -> Bool in
            defer { if f == nil { f = reason } }
            return f == nil
        }
        if first {
            FileHandle.standardError.write(Data("swiftvmm: mirror \(path) is out of sync (\(reason)); the guest runs on the primary; swiftvmm mirror-resync copies what it missed\n".utf8))
        }
    }

    /// Copies the blocks the mirror missed from the primary at `primary`, then flushes it: in
    /// sync again. The caller holds the disk's requests (quiesced) meanwhile. Returns the
    /// number of blocks copied.
    public func resync(primary: String) throws(VirtioError) -> Int {
        guard !inSync else { return 0 }
        let src = open(primary, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw .disk(path: primary, reason: "cannot read it for the resync: \(String(cString: strerror(errno)))") }
        defer { close(src) }
        let blocks = missed.collect()
        var buffer = [UInt8](repeating: 0, count: Int(DiskDirtyLog.blockSize))
        for (i, b) in blocks.enumerated() {
            let offset = UInt64(b) * DiskDirtyLog.blockSize
            let length = Int(min(DiskDirtyLog.blockSize, missed.bytes - offset))
            let ok = buffer.withUnsafeMutableBytes { p -> Bool in
                guard let base = p.baseAddress, pread(src, base, length, off_t(offset)) == length else { return false }
                return pwrite(fd, base, length, off_t(offset)) == length
            }
            if !ok {
                let e = errno
                for r in blocks[i...] { missed.mark(offset: UInt64(r) * DiskDirtyLog.blockSize, length: 1) }
                throw .disk(path: path, reason: "resync stopped at block \(b): \(String(cString: strerror(e)))")
            }
        }
        guard fdatasync(fd) == 0 else {
            for r in blocks { missed.mark(offset: UInt64(r) * DiskDirtyLog.blockSize, length: 1) }
            throw .disk(path: path, reason: "resync flush: \(String(cString: strerror(errno)))")
        }
        missed.stop()
        failure.withLock { $0 = nil }
        FileHandle.standardError.write(Data("swiftvmm: mirror \(path) is in sync again (\(blocks.count) blocks copied)\n".utf8))
        return blocks.count
    }
}

extension DiskDirtyLog {
    /// Starts logging unless it already is.
    func startIfStopped() { if !isLogging { start() } }

    /// Blocks marked and not yet collected.
    var count: Int { peekCount() }
}
