import Foundation
import Glibc

/// The resync: copies the dirty blocks primary → mirror on the mirror's own thread, one block
/// at a time under the mirror's lock (so a guest write to the same block lands before or after
/// it, never inside), then fdatasyncs the mirror and records a new generation: in sync.
extension DiskMirror {
    /// The first sync after the machine starts running here: every block is compared and the
    /// differing ones copied. Does nothing the second time.
    public func beginInitialSync() {
        cond.withLock {
            guard !initialSyncBegun else { return }
            initialSyncBegun = true
            request = true
            cond.broadcast()
        }
    }

    /// Copies the blocks written since the mirror fell out of sync and waits until it is in
    /// sync again; throws the one-line reason when it is not (the mirror still fails).
    /// Returns the bytes copied.
    @discardableResult
    public func resync() throws(VirtioError) -> UInt64 {
        cond.lock()
        defer { cond.unlock() }
        let before = copiedBytes
        if phase == .outOfSync {
            phase = .resyncing
            lastError = nil
            if request == nil { request = !initialSyncBegun }
            initialSyncBegun = true
            cond.broadcast()
        } else if !initialSyncBegun {
            initialSyncBegun = true
            request = true
            cond.broadcast()
        }
        while phase == .resyncing && !closing { cond.wait() }
        guard phase == .inSync else {
            throw .disk(path: path, reason: "volume '\(volume)': the mirror is still out of sync (\(lastError ?? "closed")), \(ByteSize.format(min(bytes, UInt64(dirty.count) * Self.blockSize))) to copy")
        }
        return copiedBytes - before
    }

    func resyncLoop() {
        var data = [UInt8](repeating: 0, count: Int(Self.blockSize))
        var theirs = [UInt8](repeating: 0, count: Int(Self.blockSize))
        while true {
            cond.lock()
            while request == nil && !closing { cond.wait() }
            let compare = request ?? false
            request = nil
            let stop = closing
            cond.unlock()
            if stop { return }
            var next = 0
            while let b = copyNext(from: next, compare: compare, &data, &theirs) { next = b + 1 }
            cond.withLock { finishPass() }
        }
    }

    /// Copies the first dirty block at or after `from`; its index, or nil when none is left
    /// (or the pass must stop).
    private func copyNext(from: Int, compare: Bool, _ data: inout [UInt8], _ theirs: inout [UInt8]) -> Int? {
        cond.lock()
        defer { cond.unlock() }
        guard phase == .resyncing, !closing, let b = dirty.first(from: from) else { return nil }
        let offset = UInt64(b) * Self.blockSize
        let count = Int(min(Self.blockSize, bytes - offset))
        if let e = Self.preadAll(primary, &data, count: count, offset: offset) {
            lose("reading the primary at \(offset): \(e)")
            return nil
        }
        if compare, Self.preadAll(fd, &theirs, count: count, offset: offset) == nil,
           data[0..<count] == theirs[0..<count] {
            dirty.clear(b)
            return b
        }
        let failure = data.withUnsafeBytes { b in b.baseAddress.map { Self.pwriteAll(fd, $0, count: count, offset: offset) } ?? "no buffer" }
        if let e = failure {
            lose("write at \(offset): \(e)")
            return nil
        }
        dirty.clear(b)
        unflushed.set(b)
        copiedBytes += UInt64(count)
        return b
    }

    /// After a pass (under the lock): with nothing left dirty, fdatasync and a new generation
    /// recorded in the file: in sync.
    private func finishPass() {
        defer { cond.broadcast() }
        guard phase == .resyncing, !closing else { return }
        guard dirty.count == 0 else {
            // Blocks left behind: another pass (never expected, as writes go to both meanwhile).
            request = request ?? false
            return
        }
        guard syncLocked() else { return }
        generation = MirrorIdentity.newGeneration()
        identityRecorded = MirrorIdentity.record(generation, fd: fd, path: path)
        phase = .inSync
        lossAnnounced = false
    }

    static func preadAll(_ fd: Int32, _ buffer: inout [UInt8], count: Int, offset: UInt64) -> String? {
        var done = 0
        while done < count {
            let n = buffer.withUnsafeMutableBytes { b in b.baseAddress.map { pread(fd, $0 + done, count - done, off_t(offset) + off_t(done)) } ?? -1 }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return n == 0 ? "unexpected end of file" : String(cString: strerror(errno)) }
            done += n
        }
        return nil
    }
}
