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
