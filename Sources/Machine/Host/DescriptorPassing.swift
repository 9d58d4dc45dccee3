import CLinux
import Glibc
import Synchronization

/// Descriptors that travel with the bytes of a UNIX socket (SCM_RIGHTS): how a local
/// hand-over gives guest RAM, disks and TAP queues to the next process.
public enum DescriptorPassing {
    /// Most descriptors one message carries.
    public static let maxPerMessage = Int(CLINUX_MAX_PASSED_FDS)

    /// sendmsg(2) of `iov` with `descriptors` attached. Bytes sent, or -1 with errno set.
    public static func send(_ socket: Int32, _ iov: UnsafeMutablePointer<iovec>, count: Int, descriptors: [Int32], flags: Int32) -> Int {
        let n = descriptors.withUnsafeBufferPointer { fds in
            clinux_send_with_fds(socket, iov, Int32(count), fds.baseAddress, Int32(fds.count), flags)
        }
        if n < 0 { errno = Int32(-n); return -1 }
        return n
    }

    /// recvmsg(2) into `buffer`; descriptors that came along go to `received`. Bytes read, or
    /// -1 with errno set.
    public static func receive(_ socket: Int32, into buffer: UnsafeMutableRawPointer?, count: Int, received: ReceivedDescriptors) -> Int {
        var fds = [Int32](repeating: -1, count: maxPerMessage)
        var got: Int32 = 0
        var truncated: Int32 = 0
        let n = fds.withUnsafeMutableBufferPointer { p in
            clinux_recv_with_fds(socket, buffer, count, p.baseAddress, Int32(p.count), &got, &truncated)
        }
        if got > 0 || truncated != 0 { received.add(Array(fds.prefix(Int(got))), truncated: truncated != 0) }
        if n < 0 { errno = Int32(-n); return -1 }
        return n
    }

    /// True when `fd` is a UNIX-domain socket (the only kind that carries descriptors).
    public static func isUnixSocket(_ fd: Int32) -> Bool {
        var domain: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_UNIX
    }
}

/// Descriptors received from a peer, owned until taken: whatever is never taken is closed
/// (a hostile or confused peer cannot make this process keep files open).
public final class ReceivedDescriptors: Sendable {
    /// More than this many waiting descriptors are closed on arrival.
    public static let limit = 512
    private struct Held { var fds: [Int32] = []; var lost = false }
    private let held = Mutex(Held())

    public init() {}
    deinit { closeAll() }

    func add(_ fds: [Int32], truncated: Bool) {
        let extra: [Int32] = held.withLock { h in
            if truncated { h.lost = true }
            let room = max(0, Self.limit - h.fds.count)
            h.fds += fds.prefix(room)
            if fds.count > room { h.lost = true }
            return Array(fds.dropFirst(room))
        }
        for fd in extra { close(fd) }
    }

    /// Every descriptor received so far, in arrival order (the caller owns them now), and
    /// whether any were dropped on the way.
    public func take() -> (fds: [Int32], lost: Bool) {
        held.withLock { h in
            defer { h = Held() }
            return (h.fds, h.lost)
        }
    }

    /// Every descriptor received so far, still owned here, and whether any were lost.
    public func peek() -> (fds: [Int32], lost: Bool) {
        held.withLock { ($0.fds, $0.lost) }
    }

    /// Closes every descriptor not taken.
    public func closeAll() {
        for fd in take().fds { close(fd) }
    }
}
