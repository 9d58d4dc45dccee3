import Foundation
import Glibc
import Machine

/// The target's half of `send --copy-storage`: checks the `copy` disks against the source's
/// plan, writes the runs that arrive, and fsyncs (and, asked to, hashes) the images before
/// `ready`. A copy into a regular file goes into a nameless file in the same directory
/// (`O_TMPFILE`), given a temporary name before `ready` and renamed over the volume's path at
/// the commit: until then the path is untouched, and a target that dies — even killed —
/// leaves nothing behind. Where the file system has no `O_TMPFILE`, the file is created (or
/// truncated) at its path and a file this target created is removed when the migration
/// fails — never one it did not create. A block device is written in place.
final class DiskCopyTarget {
    /// How a copy reaches the volume's path.
    enum Placement { case inPlace, created, unnamed }

    struct Disk {
        let name: String
        let path: String
        let fd: Int32
        let bytes: UInt64
        let placement: Placement
        /// An unnamed copy's temporary name once it has one (before `ready`).
        var staged: String? = nil
    }

    private(set) var disks: [Disk]
    let verify: Bool
    private var discarded = false

    /// Every reason the `copy` disks of `disks` cannot take `plan` (empty: they can); the
    /// `present` volumes (in-sync mirrors here) need no copy.
    static func problems(_ plan: StorageCopyPlan, disks: [DiskConfig], command: String, present: Set<String> = []) -> [String] {
        var out: [String] = []
        let copies = disks.filter(\.copy)
        for v in plan.volumes where !present.contains(v.name) {
            guard let d = copies.first(where: { $0.volume == v.name }) else {
                out.append("the source copies volume '\(v.name)' but \(command) has no --disk vol=\(v.name),path=FILE,copy for it")
                continue
            }
            if let p = spaceProblem(v, path: d.path) { out.append(p) }
        }
        for d in copies where !plan.volumes.contains(where: { $0.name == d.volume }) {
            out.append("volume '\(d.volume)' is marked copy here but the source does not copy it (send --copy-storage)")
        }
        return out
    }

    /// Whether the file system of `path` has room for the volume's allocated extents.
    static func spaceProblem(_ v: StorageCopyPlan.Volume, path: String) -> String? {
        var st = stat()
        if stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK { return nil }
        let dir = (path as NSString).deletingLastPathComponent
        var fs = statvfs()
        guard statvfs(dir.isEmpty ? "." : dir, &fs) == 0 else {
            return "volume '\(v.name)': cannot reach the directory of \(path): \(String(cString: strerror(errno)))"
        }
        let free = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
        guard free >= v.allocated else {
            return "volume '\(v.name)': \(path)'s file system has \(ByteSize.format(free)) free, the volume has \(ByteSize.format(v.allocated)) allocated"
        }
        return nil
    }

    /// Creates or truncates every copied volume's file to its size; the `present` volumes (in-sync
    /// mirrors here) are left alone and out of the copy (the source leaves them out too, so both
    /// number the rest alike).
    init(plan: StorageCopyPlan, disks configs: [DiskConfig], present: Set<String> = []) throws {
        verify = plan.verify
        var disks: [Disk] = []
        do {
            for v in plan.volumes where !present.contains(v.name) {
                guard let c = configs.first(where: { $0.copy && $0.volume == v.name }) else {
                    throw MigrationError.refused("volume '\(v.name)' has no copy disk here")
                }
                disks.append(try Self.prepare(v, path: c.path))
            }
        } catch {
            for d in disks { close(d.fd); if d.placement == .created { unlink(d.path) } }
            throw error
        }
        self.disks = disks
    }

    private static func prepare(_ v: StorageCopyPlan.Volume, path: String) throws -> Disk {
        var st = stat()
        let exists = stat(path, &st) == 0
        if exists && (st.st_mode & S_IFMT) == S_IFBLK { return try blockDevice(v, path: path) }
        let dir = (path as NSString).deletingLastPathComponent
        let unnamed = open(dir.isEmpty ? "." : dir, Self.oTmpfile | O_RDWR | O_CLOEXEC, 0o600)
        if unnamed >= 0 {
            if exists { fchmod(unnamed, st.st_mode & 0o7777) }
            guard ftruncate(unnamed, off_t(v.bytes)) == 0 else {
                let e = errno
                close(unnamed)
                throw MigrationError.refused("volume '\(v.name)': cannot size a copy of \(v.bytes) bytes beside \(path): \(String(cString: strerror(e)))")
            }
            return Disk(name: v.name, path: path, fd: unnamed, bytes: v.bytes, placement: .unnamed)
        }
        return try inPlace(v, path: path)
    }

    /// `open(dir, O_TMPFILE)`: a nameless file on the directory's file system (glibc declares
    /// the flag only under _GNU_SOURCE).
    static let oTmpfile: Int32 = 0o20_000_000 | O_DIRECTORY

    private static func blockDevice(_ v: StorageCopyPlan.Volume, path: String) throws -> Disk {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw MigrationError.refused("volume '\(v.name)': cannot open \(path) for writing: \(String(cString: strerror(errno)))") }
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0, UInt64(end) == v.bytes else {
            close(fd)
            throw MigrationError.refused("volume '\(v.name)': block device \(path) has \(end) bytes, the volume \(v.bytes)")
        }
        return Disk(name: v.name, path: path, fd: fd, bytes: v.bytes, placement: .inPlace)
    }

    /// A file system without `O_TMPFILE`: the copy goes to the path itself.
    private static func inPlace(_ v: StorageCopyPlan.Volume, path: String) throws -> Disk {
        var created = false
        var fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 && errno == ENOENT {
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            created = fd >= 0
        }
        guard fd >= 0 else { throw MigrationError.refused("volume '\(v.name)': cannot open \(path) for writing: \(String(cString: strerror(errno)))") }
        if ftruncate(fd, 0) != 0 || ftruncate(fd, off_t(v.bytes)) != 0 {
            let e = errno
            close(fd)
            if created { unlink(path) }
            throw MigrationError.refused("volume '\(v.name)': cannot size \(path) to \(v.bytes) bytes: \(String(cString: strerror(e)))")
        }
        return Disk(name: v.name, path: path, fd: fd, bytes: v.bytes, placement: created ? .created : .inPlace)
    }

    /// The descriptor the machine's disk for `volume` takes instead of opening its path.
    func descriptor(volume: String) -> Int32? { disks.first { $0.name == volume }?.fd }

    deinit { for d in disks { close(d.fd) } }

    /// Writes one `diskBlocks` section, after checking it lies inside its volume.
    func apply(_ payload: [UInt8]) throws {
        let run = try DiskRun(decoding: payload)
        guard Int(run.volume) < disks.count else { throw MigrationError.stream("disk run for volume index \(run.volume) of \(disks.count)") }
        let d = disks[Int(run.volume)]
        guard run.offset % VirtioBlock.sectorSize == 0, run.offset <= d.bytes, UInt64(run.length) <= d.bytes - run.offset else {
            throw MigrationError.stream("disk run at \(run.offset)+\(run.length) is outside volume '\(d.name)' (\(d.bytes) bytes)")
        }
        let data = try run.bytes()
        var done = 0
        try data.withUnsafeBytes { b in
            guard let base = b.baseAddress else { return }
            while done < data.count {
                let n = pwrite(d.fd, base + done, data.count - done, off_t(run.offset) + off_t(done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw MigrationError.machine("writing \(d.path): \(String(cString: strerror(errno)))") }
                done += n
            }
        }
    }

    /// Makes every image durable. Done at the end of every round too, so that the one before
    /// `ready` (in the guest's downtime) only has the last blocks to write back.
    func sync() throws {
        for d in disks {
            while fsync(d.fd) != 0 {
                if errno != EINTR { throw MigrationError.machine("fsync \(d.path): \(String(cString: strerror(errno)))") }
            }
        }
    }

    /// Makes every image durable (and hashes it when the source asked), and gives each unnamed
    /// copy its temporary name beside the volume's path: before `ready`.
    func finish() throws -> [String: String]? {
        try sync()
        for i in disks.indices where disks[i].placement == .unnamed && disks[i].staged == nil {
            let staged = disks[i].path + ".swiftvmm-incoming-\(getpid())"
            unlink(staged)
            guard linkat(AT_FDCWD, "/proc/self/fd/\(disks[i].fd)", AT_FDCWD, staged, AT_SYMLINK_FOLLOW) == 0 else {
                throw MigrationError.machine("cannot name the copy of volume '\(disks[i].name)' \(staged): \(String(cString: strerror(errno)))")
            }
            disks[i].staged = staged
        }
        guard verify else { return nil }
        var out: [String: String] = [:]
        for d in disks { out[d.name] = try DiskHash.sha256(fd: d.fd, bytes: d.bytes, path: d.path) }
        return out
    }

    /// The commit: every staged copy takes the volume's path (replacing what was there). A
    /// failure leaves that copy, complete, under its staged name, and says so.
    func publish() {
        for d in disks {
            guard let staged = d.staged else { continue }
            if rename(staged, d.path) != 0 {
                FileHandle.standardError.write(Data("swiftvmm: the copy of volume '\(d.name)' could not replace \(d.path) (\(String(cString: strerror(errno)))); it is complete at \(staged)\n".utf8))
            }
        }
    }

    /// After `publish()`: the renames made durable (each directory fsynced).
    func syncDirectories() {
        for d in disks where d.staged != nil {
            let dir = (d.path as NSString).deletingLastPathComponent
            let fd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd >= 0 { fsync(fd); close(fd) }
        }
    }

    /// Where each volume's complete copy lies when the guest never ran here after `ready`
    /// (its staged name, or the volume's path where it was written in place).
    var completeCopies: [(volume: String, file: String)] { disks.map { ($0.name, $0.staged ?? $0.path) } }

    /// The migration failed before the guest ran here: the files this target created or
    /// staged go; an unnamed copy vanishes with its last descriptor.
    func discard() {
        guard !discarded else { return }
        discarded = true
        for d in disks {
            if d.placement == .created { unlink(d.path) }
            if let staged = d.staged { unlink(staged) }
        }
    }
}

extension DiskCopyTarget {
    /// The target for `plan`, or nil when nothing is copied.
    static func prepare(_ plan: StorageCopyPlan, disks: [DiskConfig], present: Set<String> = []) throws -> DiskCopyTarget? {
        plan.volumes.isEmpty ? nil : try DiskCopyTarget(plan: plan, disks: disks, present: present)
    }
}

extension TargetSession {
    /// One `diskBlocks` section: refused unless the source announced a copy.
    func applyDiskRun(_ payload: [UInt8]) throws {
        guard let copy = diskCopy else { throw MigrationError.stream("disk data arrived, but the source announced no --copy-storage") }
        try copy.apply(payload)
        let n = UInt64(payload.count + SectionFraming.overhead)
        progress.update { $0.diskWireBytes += n }
    }
}
