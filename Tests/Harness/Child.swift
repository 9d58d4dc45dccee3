import Foundation
import Glibc

/// An error of the harness itself, or a wait that ended without what it waited for; the message
/// names the process and ends with the tail of its output.
public struct HarnessError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How a child ended.
public enum Termination: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    /// The exit status, or the signal number for a process killed by a signal (Foundation's
    /// `Process.terminationStatus` convention).
    public var status: Int32 {
        switch self { case .exited(let s), .signaled(let s): return s }
    }

    public var description: String {
        switch self {
        case .exited(let s): return "status \(s)"
        case .signaled(let s): return "signal \(s)"
        }
    }
}

/// A child process (usually swiftvmm or QEMU) in its own session, whose stdout and stderr are
/// collected line by line with arrival times. It is complete when it has exited and both
/// pipes reached end of file: `wait` waits for exactly that. The child's process group is
/// killed when the object goes away or the registry cleans up, so nothing outlives a test.
public final class Child: @unchecked Sendable {
    public let name: String
    public let pid: Int32
    /// CLOCK_MONOTONIC just before the process was spawned.
    public let startTime: Double
    /// What the process writes to stdout and stderr.
    public let out = OutputLog()
    public let err = OutputLog()
    private let exit: ExitWatch
    private let registry: Registry

    /// Starts `executable` (a path, or a name looked up in PATH) with `arguments`; `environment`
    /// adds to (or overrides) this process's environment. With `mergeStderr`, stderr goes into
    /// the stdout pipe (interleaved as written) and `err` stays empty.
    public init(_ executable: String, _ arguments: [String], name: String = "swiftvmm",
                environment: [String: String] = [:], mergeStderr: Bool = false, registry: Registry = .shared) throws {
        self.name = name
        self.registry = registry
        exit = try ExitWatch()
        let outPipe = try Linux.pipe()
        let errPipe: (read: Int32, write: Int32)
        do { errPipe = try Linux.pipe() } catch {
            close(outPipe.read); close(outPipe.write)
            throw error
        }
        // Readers first, so the first byte is timestamped when it arrives.
        Self.startReader(fd: outPipe.read, into: out, name: "\(name)-stdout")
        Self.startReader(fd: errPipe.read, into: err, name: "\(name)-stderr")
        defer { close(outPipe.write); close(errPipe.write) }
        let spawned: (pid: pid_t, time: Double)
        do {
            spawned = try Spawn.start([executable] + arguments, environment: environment,
                                      stdout: .fd(outPipe.write), stderr: .fd(mergeStderr ? outPipe.write : errPipe.write))
        } catch let e as Spawn.Failure {
            throw HarnessError("cannot start \(name) (\(executable)): \(String(cString: strerror(e.errno)))")
        }
        pid = spawned.pid
        startTime = spawned.time
        registry.childStarted(pid)
        Self.startWaiter(pid: pid, exit: exit, registry: registry, name: "\(name)-wait")
    }

    /// Reaps the child when it ends, records how and when, and releases the waiters.
    private static func startWaiter(pid: pid_t, exit: ExitWatch, registry: Registry, name: String) {
        let thread = Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            let t = Monotonic.now()
            // Whatever the leader left in its group (nothing, normally) goes with it, so the
            // pipes reach end of file.
            Glibc.kill(-pid, SIGKILL)
            let low = status & 0x7f
            exit.finish(low == 0 ? .exited((status >> 8) & 0xff) : .signaled(low), at: t)
            registry.childEnded(pid)
        }
        thread.name = name
        thread.start()
    }

    /// Starts swiftvmm (`Paths.swiftvmm`) with `arguments`.
    public static func swiftvmm(_ arguments: [String], name: String = "swiftvmm",
                                environment: [String: String] = [:]) throws -> Child {
        try Child(Paths.swiftvmm, arguments, name: name, environment: environment)
    }

    deinit {
        if !exit.isFinished { Glibc.kill(-pid, SIGKILL) }
        exit.wait(until: .distantFuture)
    }

    private static func startReader(fd: Int32, into log: OutputLog, name: String) {
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    let t = Monotonic.now()
                    buffer.withUnsafeBytes { log.append(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: t) }
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            close(fd)
            log.close()
        }
        thread.name = name
        thread.start()
    }

    // MARK: - State

    /// stdout so far.
    public var stdout: String { out.text }
    /// stderr so far.
    public var stderr: String { err.text }
    /// Whether the process has not been reaped yet.
    public var isRunning: Bool { !exit.isFinished }
    /// How it ended, once it has.
    public var termination: Termination? { exit.termination }
    /// CLOCK_MONOTONIC when it was reaped.
    public var exitTime: Double? { exit.time }
    /// A descriptor that becomes readable when the process has ended (for `poll`).
    public var exitEventFD: Int32 { exit.eventFD }

    // MARK: - Waiting

    /// Waits until stdout contains `text` (true) or stdout ends / time runs out (false).
    @discardableResult
    public func waitFor(_ text: String, timeout: Double = 60) -> Bool { out.waitFor(text, timeout: timeout) }

    /// Waits until stderr contains `text`.
    @discardableResult
    public func waitForStderr(_ text: String, timeout: Double = 60) -> Bool { err.waitFor(text, timeout: timeout) }

    /// Waits until stdout holds at least two more `marker`s than now (one more could be a line
    /// already on its way): the guest is alive and making progress.
    public func printsAgain(_ marker: String = "HEARTBEAT", timeout: Double = 30) -> Bool {
        let before = stdout.components(separatedBy: marker).count
        return waitUntilStdout(timeout: timeout) { $0.components(separatedBy: marker).count > before + 1 }
    }

    /// Waits until `predicate` holds for stdout.
    public func waitUntilStdout(timeout: Double = 60, _ predicate: (String) -> Bool) -> Bool {
        out.waitUntil(timeout: timeout, predicate)
    }

    /// Waits for a stdout line at index `start` or later matching `pattern`; throws, with the
    /// tail of the output, when a `failPattern` line comes first, stdout ends or time runs out.
    public func waitForLine(_ pattern: String, timeout: Double, from start: Int = 0,
                            failPattern: String? = "^FAIL") throws -> OutputLog.LineMatch {
        do {
            return try out.waitForLine(matching: pattern, from: start, timeout: timeout, failPattern: failPattern)
        } catch let e as OutputWaitFailure {
            switch e {
            case .failureLine(let line):
                throw HarnessError("guest reported failure: \(line) \(tail())")
            case .ended:
                _ = waitForCompletion(deadline: Date(timeIntervalSinceNow: 5))
                throw HarnessError("\(name) ended before printing /\(pattern)/ \(tail())")
            case .timedOut:
                throw HarnessError("timeout (\(Self.seconds(timeout)) s) waiting for /\(pattern)/ from \(name) \(tail())")
            }
        }
    }

    /// Waits until the process has exited and both pipes have ended; true if that happened.
    @discardableResult
    public func waitForCompletion(deadline: Date) -> Bool {
        exit.wait(until: deadline) && out.waitUntilClosed(deadline: deadline) && err.waitUntilClosed(deadline: deadline)
    }

    /// Waits for the process to end and returns its status (`Termination.status`), or kills it
    /// after `timeout` seconds and returns nil.
    public func wait(timeout: Double = 120) -> Int32? {
        if waitForCompletion(deadline: Date(timeIntervalSinceNow: timeout)) { return exit.termination?.status }
        Glibc.kill(-pid, SIGKILL)
        _ = waitForCompletion(deadline: .distantFuture)
        return nil
    }

    /// Waits for the process to end; throws (leaving it running) after `timeout` seconds.
    public func waitForExit(timeout: Double) throws -> (termination: Termination, time: Double) {
        guard waitForCompletion(deadline: Date(timeIntervalSinceNow: timeout)),
              let t = exit.termination, let time = exit.time else {
            throw HarnessError("\(name) did not exit within \(Self.seconds(timeout)) s \(tail())")
        }
        return (t, time)
    }

    /// Sends `sig` to the process.
    public func signal(_ sig: Int32) { if !exit.isFinished { Glibc.kill(pid, sig) } }

    /// SIGTERM to the whole process group, SIGKILL after `grace` seconds, and waits for the end.
    public func kill(grace: Double = 3) {
        if !exit.isFinished {
            Glibc.kill(-pid, SIGTERM)
            if !exit.wait(until: Date(timeIntervalSinceNow: grace)) { Glibc.kill(-pid, SIGKILL) }
        }
        _ = waitForCompletion(deadline: .distantFuture)
    }

    // MARK: - Reporting

    /// Output of both streams, for failure messages.
    public var transcript: String { "--- \(name) stdout ---\n\(stdout)\n--- \(name) stderr ---\n\(stderr)" }

    /// One line: the name, how it ended and the last lines of each stream.
    public func tail(_ n: Int = 6) -> String {
        var s = "[\(name) \(exit.termination.map { "\($0)" } ?? "running")]"
        let o = out.tail(n), e = err.tail(n).filter { !$0.isEmpty }
        if !o.isEmpty { s += " stdout: " + o.joined(separator: " | ") }
        if !e.isEmpty { s += " stderr: " + e.joined(separator: " | ") }
        return s
    }

    static func seconds(_ t: Double) -> String { t == t.rounded() ? String(Int(t)) : String(t) }
}

/// The end of a process: when it was reaped and how it ended, signalled to waiters by a
/// condition variable and to `poll` by a pipe whose write end is closed then.
final class ExitWatch: @unchecked Sendable {
    private let condition = NSCondition()
    private var result: (Termination, Double)?
    private var writeEnd: Int32
    let eventFD: Int32

    init() throws { (eventFD, writeEnd) = try Linux.pipe() }

    deinit {
        close(eventFD)
        if writeEnd >= 0 { close(writeEnd) }
    }

    func finish(_ t: Termination, at time: Double) {
        condition.lock()
        result = (t, time)
        close(writeEnd)
        writeEnd = -1
        condition.broadcast()
        condition.unlock()
    }

    var isFinished: Bool { condition.lock(); defer { condition.unlock() }; return result != nil }
    var termination: Termination? { condition.lock(); defer { condition.unlock() }; return result?.0 }
    var time: Double? { condition.lock(); defer { condition.unlock() }; return result?.1 }

    @discardableResult
    func wait(until deadline: Date) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while result == nil {
            if !condition.waitSignal(before: deadline) { return result != nil }
        }
        return true
    }
}

/// Runs swiftvmm to completion and returns (status, stdout, stderr).
public func runSwiftVMM(_ arguments: [String], timeout: Double = 120) throws -> (status: Int32?, stdout: String, stderr: String) {
    let c = try Child.swiftvmm(arguments)
    let s = c.wait(timeout: timeout)
    return (s, c.stdout, c.stderr)
}

/// Runs a shell command, returning its status and output (stdout, then stderr).
@discardableResult
public func sh(_ command: String, timeout: Double = 600) -> (status: Int32, output: String) {
    guard let c = try? Child("/bin/sh", ["-c", command], name: "sh", mergeStderr: true) else { return (127, "cannot start /bin/sh") }
    let s = c.wait(timeout: timeout) ?? 124
    return (s, c.stdout)
}

/// Runs a command to completion; throws with its output when it cannot start, fails or times out.
@discardableResult
public func run(_ executable: String, _ arguments: [String], timeout: Double = 30) throws -> String {
    let c = try Child(executable, arguments, name: (executable as NSString).lastPathComponent)
    let status = c.wait(timeout: timeout)
    guard status == 0 else {
        throw HarnessError("\(executable) \(arguments.joined(separator: " ")) failed (\(c.termination.map { "\($0)" } ?? "timed out")): \(c.stdout) \(c.stderr)")
    }
    return c.stdout
}
