import Foundation
import Glibc

/// Everything the harness started or made — child process groups, network namespaces,
/// temporary files and directories — so that all of it can be torn down on any way out: at
/// process exit, after a failed benchmark run, on Ctrl-C.
public final class Registry: @unchecked Sendable {
    /// The registry every `Child`, `TestNetwork` and `Paths.tempDirectory` uses by default; it
    /// cleans up at process exit.
    public static let shared: Registry = {
        let r = Registry()
        atexit { Registry.shared.cleanUp() }
        return r
    }()

    private let condition = NSCondition()
    private var children = Set<pid_t>()
    private var namespaces: [String] = []
    private var paths: [String] = []
    private var closed = false

    public init() {}

    // MARK: - Registration

    /// Registers a child; one started after `close()` is killed at once.
    func childStarted(_ pid: pid_t) {
        condition.lock()
        children.insert(pid)
        let late = closed
        condition.unlock()
        if late { kill(-pid, SIGKILL) }
    }

    /// From now on every child is killed as soon as it starts (an interrupted run winds down).
    public func close() {
        condition.lock(); closed = true; condition.unlock()
    }

    func childEnded(_ pid: pid_t) {
        condition.lock(); children.remove(pid); condition.broadcast(); condition.unlock()
    }

    /// A file or directory to remove at clean-up (if it still exists).
    public func track(path: String) {
        condition.lock(); paths.append(path); condition.unlock()
    }

    public func untrack(path: String) {
        condition.lock(); paths.removeAll { $0 == path }; condition.unlock()
    }

    /// A network namespace to delete at clean-up.
    public func track(namespace: String) {
        condition.lock(); namespaces.append(namespace); condition.unlock()
    }

    public func untrack(namespace: String) {
        condition.lock(); namespaces.removeAll { $0 == namespace }; condition.unlock()
    }

    /// Process ids of the children that have not ended yet.
    public var liveChildren: Set<pid_t> { condition.lock(); defer { condition.unlock() }; return children }

    // MARK: - Clean-up

    /// SIGTERM to every live child's process group, SIGKILL to those still there after `grace`
    /// seconds; returns once every one of them has been reaped (or 10 s more have passed).
    public func killChildren(grace: Double = 3) {
        condition.lock()
        defer { condition.unlock() }
        guard !children.isEmpty else { return }
        for pid in children { kill(-pid, SIGTERM) }
        let soft = Date(timeIntervalSinceNow: grace)
        while !children.isEmpty && condition.waitSignal(before: soft) {}
        for pid in children { kill(-pid, SIGKILL) }
        let hard = Date(timeIntervalSinceNow: 10)
        while !children.isEmpty && condition.waitSignal(before: hard) {}
    }

    /// Kills every child, deletes every namespace and removes every tracked path.
    public func cleanUp() {
        killChildren()
        condition.lock()
        let ns = namespaces, ps = paths
        namespaces = []
        paths = []
        condition.unlock()
        for n in ns { Self.deleteNamespace(n) }
        for p in ps.reversed() { try? FileManager.default.removeItem(atPath: p) }
    }

    /// Deletes a network namespace (and what is in it) with `ip netns del`, without threads and
    /// whatever state the registry is in (safe at exit and after `close()`).
    static func deleteNamespace(_ name: String) {
        _ = spawnAndWait([TestNetwork.ip, "netns", "del", name], quietStdout: true, quietStderr: true, register: false)
    }

    /// Runs a command in the foreground — its output goes to this process's terminal, unless
    /// made quiet — and returns its exit status (127 if it cannot start, 128 + n for a signal).
    /// Registered children are killed by `killChildren`, so an interrupted build or install
    /// does not outlive the benchmark runner.
    @discardableResult
    public func runForeground(_ argv: [String], environment: [String: String] = [:], quietStdout: Bool = false) -> Int32 {
        Self.spawnAndWait(argv, environment: environment, quietStdout: quietStdout, quietStderr: false, register: true, registry: self)
    }

    private static func spawnAndWait(_ argv: [String], environment: [String: String] = [:], quietStdout: Bool,
                                     quietStderr: Bool, register: Bool, registry: Registry? = nil) -> Int32 {
        guard let (pid, _) = try? Spawn.start(argv, environment: environment, stdout: quietStdout ? .null : .inherit,
                                             stderr: quietStderr ? .null : .inherit) else { return 127 }
        if register { registry?.childStarted(pid) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        if register { registry?.childEnded(pid) }
        let low = status & 0x7f
        return low == 0 ? (status >> 8) & 0xff : 128 + low
    }

    // MARK: - Interrupts

    /// Calls `handler` (on a thread of its own) for each SIGINT, SIGTERM or SIGHUP this process
    /// receives, instead of dying at once. Install it once, early.
    public func onInterrupt(_ handler: @escaping @Sendable (Int32) -> Void) {
        guard let (readFD, writeFD) = try? Linux.pipe() else { return }
        interruptPipe = writeFD
        let thread = Thread {
            var b: UInt8 = 0
            while true {
                let n = read(readFD, &b, 1)
                if n == 1 { handler(Int32(b)) } else if n < 0 && errno == EINTR { continue } else { return }
            }
        }
        thread.name = "interrupts"
        thread.start()
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            var sa = sigaction()
            sa.__sigaction_handler.sa_handler = { sig in
                var b = UInt8(truncatingIfNeeded: sig)
                _ = write(interruptPipe, &b, 1)
            }
            sigemptyset(&sa.sa_mask)
            sa.sa_flags = SA_RESTART
            sigaction(sig, &sa, nil)
        }
    }
}

/// The write end of the self-pipe the signal handler reports through (set once, before the
/// handler is installed; a signal handler may only call async-signal-safe functions).
nonisolated(unsafe) private var interruptPipe: Int32 = -1
