import Foundation
import Glibc
import Testing

/// Paths of the things integration tests run: the built `swiftvmm` and the guest images.
enum Paths {
    static let root: URL = {
        var u = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { u.deleteLastPathComponent() }
        return u
    }()

    static var swiftvmm: String {
        if let p = ProcessInfo.processInfo.environment["SWIFTVMM_BIN"] { return p }
        for config in ["debug", "release"] {
            let p = root.appendingPathComponent(".build/\(config)/swiftvmm").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return root.appendingPathComponent(".build/debug/swiftvmm").path
    }

    static func guest(_ name: String) -> String {
        root.appendingPathComponent("GuestImages/out/\(name)").path
    }

    /// A fresh temporary directory removed by the caller's `defer`.
    static func tempDirectory() throws -> URL {
        let u = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("swiftvmm-test-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u
    }
}

/// A child process (usually swiftvmm) whose stdout and stderr are collected line by line.
/// It is killed when the object goes away, so a failing test leaves nothing behind.
final class Child: @unchecked Sendable {
    let process = Process()
    private let lock = NSCondition()
    private var stdoutText = ""
    private var stderrText = ""
    private var finished = false
    let name: String

    init(_ executable: String, _ arguments: [String], name: String = "swiftvmm") throws {
        self.name = name
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        out.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            guard let self else { return }
            if d.isEmpty { h.readabilityHandler = nil; return }
            self.lock.lock(); self.stdoutText += String(decoding: d, as: UTF8.self); self.lock.broadcast(); self.lock.unlock()
        }
        err.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            guard let self else { return }
            if d.isEmpty { h.readabilityHandler = nil; return }
            self.lock.lock(); self.stderrText += String(decoding: d, as: UTF8.self); self.lock.broadcast(); self.lock.unlock()
        }
        process.terminationHandler = { [weak self] _ in
            guard let self else { return }
            // Give the pipe handlers a moment to drain what the child wrote last.
            usleep(50_000)
            self.lock.lock(); self.finished = true; self.lock.broadcast(); self.lock.unlock()
        }
        try process.run()
    }

    /// Starts `swiftvmm` with `arguments`.
    static func swiftvmm(_ arguments: [String], name: String = "swiftvmm") throws -> Child {
        try Child(Paths.swiftvmm, arguments, name: name)
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }

    var stdout: String { lock.lock(); defer { lock.unlock() }; return stdoutText }
    var stderr: String { lock.lock(); defer { lock.unlock() }; return stderrText }
    var pid: Int32 { process.processIdentifier }

    /// Waits until stdout contains `text` (returns true) or the process ends / time runs out.
    @discardableResult
    func waitFor(_ text: String, timeout: Double = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock(); defer { lock.unlock() }
        while !stdoutText.contains(text) {
            if finished || Date() >= deadline { return stdoutText.contains(text) }
            _ = lock.wait(until: min(deadline, Date().addingTimeInterval(0.5)))
        }
        return true
    }

    /// Waits until stderr contains `text`.
    @discardableResult
    func waitForStderr(_ text: String, timeout: Double = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock(); defer { lock.unlock() }
        while !stderrText.contains(text) {
            if finished || Date() >= deadline { return stderrText.contains(text) }
            _ = lock.wait(until: min(deadline, Date().addingTimeInterval(0.5)))
        }
        return true
    }

    /// Waits for the process to exit and returns its status, or kills it after `timeout` and
    /// returns nil.
    func wait(timeout: Double = 120) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        while !finished && Date() < deadline { _ = lock.wait(until: min(deadline, Date().addingTimeInterval(0.5))) }
        let done = finished
        lock.unlock()
        if !done {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Output of both streams, for failure messages.
    var transcript: String { "--- \(name) stdout ---\n\(stdout)\n--- \(name) stderr ---\n\(stderr)" }
}

/// Runs swiftvmm to completion and returns (status, stdout, stderr).
func runSwiftVMM(_ arguments: [String], timeout: Double = 120) throws -> (status: Int32?, stdout: String, stderr: String) {
    let c = try Child.swiftvmm(arguments)
    let s = c.wait(timeout: timeout)
    return (s, c.stdout, c.stderr)
}
