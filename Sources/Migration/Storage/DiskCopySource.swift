import COpenSSL
import Foundation
import Glibc
import Machine

/// The source's half of `send --copy-storage`: every disk's allocated extents in round 0
/// (interleaved with memory: one run after each page batch), then the blocks the guest wrote
/// since (virtio-blk's dirty log), and after the pause the last of them.
final class DiskCopySource {
    struct Disk {
        let name: String
        let path: String
        let fd: Int32
        let bytes: UInt64
        let log: DiskDirtyLog
    }

    /// Figures since the last `takeRoundCounters()`.
    struct Counters {
        var wireBytes: UInt64 = 0
        var rawBytes: UInt64 = 0
        var runs = 0
        var zeroRuns = 0
        var dirtyBlocks = 0
    }

    let disks: [Disk]
    let lz4: Bool
    private(set) var counters = Counters()
    private(set) var totalWire: UInt64 = 0
    /// Round 0's remaining extents: (disk, offset, length).
    private var bulk: [(Int, UInt64, UInt64)] = []
    /// Blocks collected and not yet sent, per disk.
    private var pending: [[Int]]
    private var buffer = [UInt8](repeating: 0, count: DiskRun.maxLength)

    /// Opens every disk of `vm` for reading and describes what will travel.
    static func plan(_ vm: VM, verify: Bool) throws -> StorageCopyPlan {
        var plan = StorageCopyPlan()
        plan.verify = verify
        for d in vm.devices.all.compactMap({ $0 as? VirtioBlockDevice }) {
            let fd = try openImage(d.path)
            defer { close(fd) }
            let bytes = d.capacity * VirtioBlock.sectorSize
            plan.volumes.append(.init(name: d.volume, bytes: bytes, allocated: FileExtents.dataBytes(fd: fd, start: 0, length: bytes)))
        }
        guard !plan.volumes.isEmpty else { throw MigrationError.usage("--copy-storage: the guest has no disk to copy") }
        return plan
    }

    static func openImage(_ path: String) throws -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MigrationError.machine("--copy-storage: cannot read \(path): \(String(cString: strerror(errno)))") }
        return fd
    }

    /// Turns every disk's dirty log on, then lists the extents round 0 sends; the `skipping`
    /// volumes (the target has them as in-sync mirrors) are left out.
    init(vm: VM, lz4: Bool, skipping: Set<String> = []) throws {
        var disks: [Disk] = []
        for d in vm.devices.all.compactMap({ $0 as? VirtioBlockDevice }) where !skipping.contains(d.volume) {
            let fd = try Self.openImage(d.path)
            disks.append(Disk(name: d.volume, path: d.path, fd: fd, bytes: d.capacity * VirtioBlock.sectorSize, log: d.dirtyLog))
        }
        self.disks = disks
        self.lz4 = lz4
        pending = disks.map { _ in [] }
        // Logging starts before the first extent is read: a write racing the read is sent again.
        for d in disks { d.log.start() }
        for (i, d) in disks.enumerated() {
            for e in FileExtents.data(fd: d.fd, start: 0, length: d.bytes) { bulk.append((i, e.offset, e.length)) }
        }
    }

    deinit { for d in disks { close(d.fd) } }

    /// Stops the dirty logs (the migration ended either way).
    func stop() { for d in disks { d.log.stop() } }

    var bulkRemaining: Bool { !bulk.isEmpty }
    /// Bytes round 0 has left to send (all allocated extents, at first).
    var bulkBytes: UInt64 { bulk.reduce(0) { $0 + $1.2 } }

    /// Sends the next run of round 0, if any is left.
    func sendBulkRun(_ conn: Connection) throws {
        guard !bulk.isEmpty else { return }
        let (i, offset, length) = bulk[0]
        let n = UInt64(min(length, UInt64(DiskRun.maxLength)))
        if n == length { bulk.removeFirst() } else { bulk[0] = (i, offset + n, length - n) }
        try send(disk: i, offset: offset, length: Int(n), conn)
    }

    /// Collects every disk's dirty blocks into the pending set; returns how many are pending.
    func collect() -> Int {
        var count = 0
        for (i, d) in disks.enumerated() {
            pending[i] = Array(Set(pending[i] + d.log.collect())).sorted()
            count += pending[i].count
        }
        counters.dirtyBlocks = count
        return count
    }

    /// Sends the pending blocks, consecutive ones as one run.
    func sendPending(_ conn: Connection, afterRun: (Int) throws -> Void = { _ in }) throws {
        let perRun = DiskRun.maxLength / Int(DiskDirtyLog.blockSize)
        for (i, d) in disks.enumerated() {
            let blocks = pending[i]
            pending[i] = []
            var k = 0
            while k < blocks.count {
                var end = k + 1
                while end < blocks.count && blocks[end] == blocks[end - 1] + 1 && end - k < perRun { end += 1 }
                let offset = UInt64(blocks[k]) * DiskDirtyLog.blockSize
                let length = min(UInt64(end - k) * DiskDirtyLog.blockSize, d.bytes - offset)
                let wire = try send(disk: i, offset: offset, length: Int(length), conn)
                try afterRun(wire)
                k = end
            }
        }
    }

    @discardableResult
    private func send(disk i: Int, offset: UInt64, length: Int, _ conn: Connection) throws -> Int {
        let d = disks[i]
        var done = 0
        try buffer.withUnsafeMutableBytes { b in
            guard let base = b.baseAddress else { return }
            while done < length {
                let n = pread(d.fd, base + done, length - done, off_t(offset) + off_t(done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw MigrationError.machine("reading \(d.path) at \(offset): \(n == 0 ? "short file" : String(cString: strerror(errno)))") }
                done += n
            }
        }
        let run = buffer.withUnsafeBytes { DiskRun.encode(volume: UInt32(i), offset: offset, data: UnsafeRawBufferPointer(rebasing: $0[0..<length]), lz4: lz4) }
        try conn.send(.diskBlocks, bytes: run)
        let wire = run.count + SectionFraming.overhead
        counters.wireBytes += UInt64(wire)
        counters.rawBytes += UInt64(length)
        counters.runs += 1
        if run[4] == DiskRun.Encoding.zeros.rawValue { counters.zeroRuns += 1 }
        totalWire += UInt64(wire)
        return wire
    }

    /// The round's figures, and the counters reset.
    func takeRoundCounters() -> Counters {
        defer { counters = Counters() }
        return counters
    }

    /// SHA-256 of every image, hex, by volume name (`--verify-storage`, at the pause).
    func hashes() throws -> [String: String] {
        var out: [String: String] = [:]
        for d in disks { out[d.name] = try DiskHash.sha256(fd: d.fd, bytes: d.bytes, path: d.path) }
        return out
    }

    /// Refuses to commit when the target's images differ from these.
    func verify(_ theirs: [String: String]?, ours: [String: String]) throws {
        guard let theirs else { throw MigrationError.machine("--verify-storage: the target sent no image hashes") }
        for (name, h) in ours.sorted(by: { $0.key < $1.key }) where theirs[name] != h {
            throw MigrationError.machine("--verify-storage: volume '\(name)' differs on the target (source \(h.prefix(16)), target \(theirs[name]?.prefix(16) ?? "none"))")
        }
    }
}

/// Hashing a disk image.
enum DiskHash {
    static func sha256(fd: Int32, bytes: UInt64, path: String) throws -> String {
        guard let ctx = EVP_MD_CTX_new() else { throw MigrationError.machine("hashing \(path): libcrypto has no digest context") }
        defer { EVP_MD_CTX_free(ctx) }
        guard EVP_DigestInit_ex(ctx, EVP_sha256(), nil) == 1 else { throw MigrationError.machine("hashing \(path): SHA-256 unavailable") }
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var off: UInt64 = 0
        while off < bytes {
            let want = Int(min(UInt64(buf.count), bytes - off))
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(off)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw MigrationError.machine("hashing \(path) at \(off): \(n == 0 ? "short file" : String(cString: strerror(errno)))") }
            _ = buf.withUnsafeBytes { EVP_DigestUpdate(ctx, $0.baseAddress, n) }
            off += UInt64(n)
        }
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard EVP_DigestFinal_ex(ctx, &digest, &length) == 1, length == 32 else { throw MigrationError.machine("hashing \(path): digest failed") }
        return digest.map { String(format: "%02x", $0) }.joined()
    }
}
