import Foundation
import Glibc

/// Linux calls that Glibc's Swift module does not export (GNU extensions), looked up once.
enum Linux {
    private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32
    private static let pipe2Function: Pipe2? = dlsym(nil, "pipe2").map { unsafeBitCast($0, to: Pipe2.self) }

    /// A pipe whose ends are close-on-exec from the start (so a child spawned by another thread
    /// meanwhile cannot inherit them and hold them open): (read end, write end).
    static func pipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard let pipe2Function else { throw HarnessError("pipe2 is not available") }
        guard pipe2Function(&fds, O_CLOEXEC) == 0 else { throw HarnessError("pipe2: \(String(cString: strerror(errno)))") }
        return (fds[0], fds[1])
    }

    /// Adds glibc's internal signals 32 and 33 (SIGCANCEL, SIGSETXID) to `set`, which
    /// `sigaddset` refuses. In a `posix_spawn` default set they make the child start with them
    /// at SIG_DFL, as after fork and exec, instead of the SIG_IGN glibc's spawn leaves there.
    static func addInternalSignals(_ set: inout sigset_t) {
        set.__val.0 |= (1 << 31) | (1 << 32)
    }
}

extension NSCondition {
    /// `wait(until:)` that also takes `.distantFuture` (Foundation's conversion of such a date
    /// to a timespec overflows): then it waits for a signal without a deadline.
    func waitSignal(before deadline: Date) -> Bool {
        if deadline >= Date.distantFuture { wait(); return true }
        return wait(until: deadline)
    }
}

/// `posix_spawn` as the harness uses it: stdin from /dev/null, a session of its own (so signals
/// reach its whole group and a terminal's Ctrl-C does not), nothing blocked and every signal at
/// its default, whatever this process does with them.
enum Spawn {
    enum Output {
        case inherit
        case null
        case fd(Int32)
    }

    struct Failure: Error { let errno: Int32 }

    // POSIX_SPAWN_SETSID (glibc ≥ 2.26); Glibc's module map does not export the GNU constant.
    private static let setSID: Int32 = 0x80

    /// Starts `argv[0]` (a path, or a name looked up in PATH); returns its pid and CLOCK_MONOTONIC
    /// just before the spawn. `environment` adds to (or overrides) this process's environment.
    static func start(_ argv: [String], environment: [String: String], stdout: Output, stderr: Output) throws -> (pid: pid_t, time: Double) {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        for (fd, output) in [(Int32(1), stdout), (2, stderr)] {
            switch output {
            case .inherit: break
            case .null: posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_WRONLY, 0)
            case .fd(let source): posix_spawn_file_actions_adddup2(&actions, source, fd)
            }
        }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        Linux.addInternalSignals(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(setSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        let args = argv.map { strdup($0) }, envp = env.map { strdup("\($0.key)=\($0.value)") }
        defer { (args + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let time = Monotonic.now()
        let path = argv.first ?? ""
        let rc = path.contains("/") ? posix_spawn(&pid, path, &actions, &attr, args + [nil], envp + [nil])
                                    : posix_spawnp(&pid, path, &actions, &attr, args + [nil], envp + [nil])
        guard rc == 0 else { throw Failure(errno: rc) }
        return (pid, time)
    }
}
