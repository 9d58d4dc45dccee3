import Foundation
import Glibc

/// Paths of the things the tests and the benchmarks run: the source tree, the built
/// `swiftvmm`, the guest images, and fresh temporary directories.
public enum Paths {
    /// The package's root directory (this file is Tests/Harness/Paths.swift).
    public static let root: URL = {
        var u = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { u.deleteLastPathComponent() }
        return u
    }()

    /// `$SWIFTVMM_BIN`, else `.build/debug/swiftvmm`, else `.build/release/swiftvmm`.
    public static var swiftvmm: String {
        if let p = ProcessInfo.processInfo.environment["SWIFTVMM_BIN"] { return p }
        for config in ["debug", "release"] {
            let p = root.appendingPathComponent(".build/\(config)/swiftvmm").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return root.appendingPathComponent(".build/debug/swiftvmm").path
    }

    /// GuestImages/out/`name`.
    public static func guest(_ name: String) -> String {
        root.appendingPathComponent("GuestImages/out/\(name)").path
    }

    /// A fresh temporary directory. The caller removes it (usually in a `defer`); the registry
    /// removes it at exit if the caller could not.
    public static func tempDirectory(prefix: String = "swiftvmm-test") throws -> URL {
        let u = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        Registry.shared.track(path: u.path)
        return u
    }

    /// Waits until `path` exists: woken by inotify when an entry appears in its directory, and
    /// by the end of `child` (then it throws, with the child's output), or throws after `timeout`.
    public static func waitFor(_ path: String, timeout: Double = 30, child: Child? = nil) throws {
        let dir = (path as NSString).deletingLastPathComponent
        let fd = inotify_init1(Int32(IN_CLOEXEC) | Int32(IN_NONBLOCK))
        defer { if fd >= 0 { close(fd) } }
        let watching = fd >= 0 && inotify_add_watch(fd, dir.isEmpty ? "." : dir,
                                                     UInt32(IN_CREATE | IN_MOVED_TO | IN_ATTRIB)) >= 0
        let deadline = Monotonic.now() + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            if FileManager.default.fileExists(atPath: path) { return }
            if let child, !child.isRunning {
                throw HarnessError("\(child.name) exited before creating \(path) \(child.tail())")
            }
            let left = deadline - Monotonic.now()
            if left <= 0 {
                throw HarnessError("timeout waiting for \(path)" + (child.map { " \($0.tail())" } ?? ""))
            }
            var fds = [pollfd(fd: watching ? fd : -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: child?.exitEventFD ?? -1, events: Int16(POLLIN), revents: 0)]
            // Without inotify (a directory that does not exist yet) the wait is a bounded poll.
            let slice = watching ? left : min(left, 0.02)
            _ = poll(&fds, 2, Int32((slice * 1000).rounded(.up)))
            if watching { while read(fd, &buffer, buffer.count) > 0 {} }
        }
    }
}
