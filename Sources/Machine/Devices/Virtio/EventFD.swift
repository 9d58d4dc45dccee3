import CLinux
import Glibc

/// An owned, non-blocking Linux eventfd: a counter one thread signals and another waits on.
public final class EventFD: Sendable {
    public let fd: Int32

    public init() throws(VirtioError) {
        let fd = clinux_eventfd()
        guard fd >= 0 else { throw .system("eventfd", errno: -fd) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Adds one to the counter, waking a poller.
    public func signal() {
        var one: UInt64 = 1
        while Glibc.write(fd, &one, 8) < 0 && errno == EINTR {}
    }

    /// Reads and clears the counter; returns whether it was non-zero.
    @discardableResult
    public func drain() -> Bool {
        var value: UInt64 = 0
        while true {
            let n = Glibc.read(fd, &value, 8)
            if n == 8 { return value > 0 }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }
}
