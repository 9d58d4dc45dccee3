import Foundation
import Glibc
import Machine

/// A dry run of the target's half of `send --copy-storage`: what `DiskCopyTarget` would meet —
/// every copied volume's copy disk (and the reverse), room on its file system, a directory
/// where a copy can be written or a block device of the volume's size — checked without
/// writing a byte at or beside any path, and an in-memory stand-in image per copied volume
/// for the machine the dry run builds (the copy itself does not exist yet).
final class DiskCopyRehearsal {
    /// The stand-in images by volume name; closed when the rehearsal ends.
    private var standIns: [String: Int32] = [:]

    /// Past `DiskCopyTarget.problems`: every reason the real copy would still fail (empty: it
    /// would not), and stand-ins for the copied volumes of `disks`.
    static func run(_ plan: StorageCopyPlan, disks: [DiskConfig], present: Set<String>) -> (DiskCopyRehearsal, [String]) {
        let r = DiskCopyRehearsal()
        var out: [String] = []
        for v in plan.volumes where !present.contains(v.name) {
            guard let d = disks.first(where: { $0.copy && $0.volume == v.name }) else { continue }
            if let p = writeProblem(v, path: d.path) { out.append(p); continue }
            do { r.standIns[v.name] = try StandInImage.open(bytes: v.bytes, volume: v.name) } catch { out.append("\(error)") }
        }
        return (r, out)
    }

    /// `disks` with every copied volume on its stand-in.
    func apply(to disks: [DiskConfig]) -> [DiskConfig] {
        disks.map { d in
            var d = d
            if d.copy, let fd = standIns[d.volume] { d.descriptor = fd }
            return d
        }
    }

    deinit { for fd in standIns.values { close(fd) } }

    /// Why the copy of `v` could not be written where `path` says, if it could not: a block
    /// device must open for writing and have the volume's size; elsewhere the directory must
    /// take a nameless file (what the copy is written to; it vanishes when closed, so nothing
    /// appears in the directory) or, on a file system without them, an existing file at
    /// `path` must open for writing.
    static func writeProblem(_ v: StorageCopyPlan.Volume, path: String) -> String? {
        var st = stat()
        let exists = stat(path, &st) == 0
        if exists && (st.st_mode & S_IFMT) == S_IFBLK {
            let fd = open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { return "volume '\(v.name)': cannot open \(path) for writing: \(String(cString: strerror(errno)))" }
            defer { close(fd) }
            let end = lseek(fd, 0, SEEK_END)
            return end >= 0 && UInt64(end) == v.bytes ? nil : "volume '\(v.name)': block device \(path) has \(end) bytes, the volume \(v.bytes)"
        }
        let dir = (path as NSString).deletingLastPathComponent
        let probe = open(dir.isEmpty ? "." : dir, DiskCopyTarget.oTmpfile | O_RDWR | O_CLOEXEC, 0o600)
        if probe >= 0 { close(probe); return nil }
        let e = errno
        guard e == EOPNOTSUPP || e == EISDIR || e == EINVAL else {
            return "volume '\(v.name)': cannot write a copy beside \(path): \(String(cString: strerror(e)))"
        }
        guard exists else { return nil }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return "volume '\(v.name)': cannot open \(path) for writing: \(String(cString: strerror(errno)))" }
        close(fd)
        return nil
    }
}
