import Foundation
import Glibc
import Machine

/// Where a migration stream goes: `tcp:HOST:PORT` or `unix:PATH`.
public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    public static func parse(_ text: String) throws -> Endpoint {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty, path.utf8.count < 108 else { throw MigrationError.usage("'\(text)': UNIX socket path must be 1–107 bytes") }
            return .unix(path: path)
        }
        if text.hasPrefix("tcp:") {
            let rest = text.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]), port > 0 else {
                throw MigrationError.usage("'\(text)' is not tcp:HOST:PORT")
            }
            var host = String(rest[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            return .tcp(host: host.isEmpty ? "0.0.0.0" : host, port: port)
        }
        throw MigrationError.usage("'\(text)' is not tcp:HOST:PORT or unix:PATH")
    }

    /// The stream stays on this host: a UNIX socket, or TCP to a loopback address.
    public var isLocal: Bool {
        switch self {
        case .unix: return true
        case .tcp(let host, _):
            return host == "localhost" || host == "::1" || host.hasPrefix("127.")
        }
    }

    public var description: String {
        switch self {
        case .tcp(let h, let p): return "tcp:\(h):\(p)"
        case .unix(let p): return "unix:\(p)"
        }
    }
}

/// Socket plumbing for the migration stream.
public enum Transport {
    static func errorText(_ e: Int32) -> String { String(cString: strerror(e)) }

    static func tune(_ fd: Int32, tcp: Bool) {
        var one: Int32 = 1
        if tcp { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var buf: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, socklen_t(MemoryLayout<Int32>.size))
    }

    /// For a TCP socket: keepalive probes while idle, and TCP_USER_TIMEOUT, so that a peer that
    /// vanished (a black-holed route) is noticed by the kernel within `seconds` too.
    public static func setTCPTimeouts(_ fd: Int32, seconds: Double?) {
        guard let seconds, seconds > 0 else { return }
        var type: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &type, &len) == 0, type == AF_INET || type == AF_INET6 else { return }
        func set(_ level: Int32, _ name: Int32, _ value: Int32) {
            var v = value
            setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
        }
        let idle = max(1, Int32(seconds / 3))
        set(SOL_SOCKET, SO_KEEPALIVE, 1)
        set(Int32(IPPROTO_TCP), TCP_KEEPIDLE, idle)
        set(Int32(IPPROTO_TCP), TCP_KEEPINTVL, max(1, idle / 3))
        set(Int32(IPPROTO_TCP), TCP_KEEPCNT, 3)
        set(Int32(IPPROTO_TCP), Int32(TCP_USER_TIMEOUT), Int32(min(seconds * 1000, Double(Int32.max))))
    }

    /// Makes reads on `fd` fail after `seconds` without data (0: wait forever).
    public static func setReceiveTimeout(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Calls `body` with a `sockaddr_un` for `path`.
    public static func withUnixAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            let bytes = Array(path.utf8.prefix(p.count - 1))
            p.copyBytes(from: bytes + [0])
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    static func resolve(_ host: String, _ port: UInt16, passive: Bool) throws -> [(Int32, [UInt8])] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        if passive { hints.ai_flags = AI_PASSIVE }
        var res: UnsafeMutablePointer<addrinfo>?
        let r = getaddrinfo(host, String(port), &hints, &res)
        guard r == 0, let first = res else {
            throw MigrationError.connection("cannot resolve '\(host)': \(String(cString: gai_strerror(r)))")
        }
        defer { freeaddrinfo(first) }
        var out: [(Int32, [UInt8])] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let a = p {
            if let sa = a.pointee.ai_addr {
                out.append((a.pointee.ai_family, Array(UnsafeRawBufferPointer(start: sa, count: Int(a.pointee.ai_addrlen)))))
            }
            p = a.pointee.ai_next
        }
        return out
    }

    /// Connects to `endpoint`, failing with a one-line error that names it.
    public static func connect(_ endpoint: Endpoint) throws -> Int32 {
        switch endpoint {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw MigrationError.connection("socket: \(errorText(errno))") }
            let r = withUnixAddress(path) { Glibc.connect(fd, $0, $1) }
            guard r == 0 else {
                let e = errno
                close(fd)
                throw MigrationError.connection("cannot connect to \(endpoint): \(errorText(e))")
            }
            tune(fd, tcp: false)
            return fd
        case .tcp(let host, let port):
            var lastError: Int32 = ECONNREFUSED
            for (family, addr) in try resolve(host, port, passive: false) {
                let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { lastError = errno; continue }
                let r = addr.withUnsafeBytes { p in
                    Glibc.connect(fd, p.baseAddress?.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count))
                }
                if r == 0 { tune(fd, tcp: true); return fd }
                lastError = errno
                close(fd)
            }
            throw MigrationError.connection("cannot connect to \(endpoint): \(errorText(lastError))")
        }
    }

    /// Binds and listens on `endpoint` (a UNIX socket path must not exist yet, or be a stale socket).
    public static func listen(_ endpoint: Endpoint) throws -> Int32 {
        switch endpoint {
        case .unix(let path):
            var st = stat()
            if lstat(path, &st) == 0 {
                guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw MigrationError.usage("--listen \(endpoint): \(path) exists and is not a socket") }
                // A socket some process listens on is busy; any other is stale. Asked of the
                // kernel rather than by connecting, which a waiting recv would take for a source.
                if isListening(unixPath: path) {
                    throw MigrationError.connection("--listen \(endpoint): another process is listening on \(path)")
                }
                unlink(path)
            }
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw MigrationError.connection("socket: \(errorText(errno))") }
            let r = withUnixAddress(path) { bind(fd, $0, $1) }
            guard r == 0, Glibc.listen(fd, 1) == 0 else {
                let e = errno
                close(fd)
                throw MigrationError.connection("cannot listen on \(endpoint): \(errorText(e))")
            }
            chmod(path, 0o600)
            return fd
        case .tcp(let host, let port):
            var lastError: Int32 = EADDRNOTAVAIL
            for (family, addr) in try resolve(host, port, passive: true) {
                let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { lastError = errno; continue }
                var one: Int32 = 1
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
                let r = addr.withUnsafeBytes { p in
                    bind(fd, p.baseAddress?.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count))
                }
                if r == 0 && Glibc.listen(fd, 1) == 0 { return fd }
                lastError = errno
                close(fd)
            }
            if lastError == EADDRINUSE { throw MigrationError.connection("cannot listen on \(endpoint): port \(port) is already in use") }
            throw MigrationError.connection("cannot listen on \(endpoint): \(errorText(lastError))")
        }
    }

    /// True when a process listens on the UNIX socket at `path` (from /proc/net/unix).
    static func isListening(unixPath path: String) -> Bool {
        // Read to the end: a procfs file has no size, and one read returns only its first page.
        guard let table = readWholeFile("/proc/net/unix") else { return false }
        let resolved = URL(fileURLWithPath: path).standardizedFileURL.path
        for line in table.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            // Num RefCount Protocol Flags Type St Inode Path; Flags has __SO_ACCEPTCON (0x10000).
            guard f.count >= 8, let flags = UInt32(f[3], radix: 16), flags & 0x10000 != 0 else { continue }
            let p = f[7...].joined(separator: " ")
            if p == path || p == resolved { return true }
        }
        return false
    }

    /// Accepts one connection; returns nil when `cancelled()` turns true first.
    /// A readable `wake` descriptor (an eventfd) ends the wait at once, returning nil.
    public static func acceptOne(_ listener: Int32, tcp: Bool, wake: Int32? = nil, cancelled: () -> Bool) throws -> Int32? {
        while true {
            if cancelled() { return nil }
            var p = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0), pollfd(fd: wake ?? -1, events: Int16(POLLIN), revents: 0)]
            let r = poll(&p, nfds_t(wake == nil ? 1 : 2), 200)
            if r < 0 && errno != EINTR { throw MigrationError.connection("poll: \(errorText(errno))") }
            if wake != nil && p[1].revents != 0 { return nil }
            if r > 0 && p[0].revents != 0 {
                let fd = accept(listener, nil, nil)
                if fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC); tune(fd, tcp: tcp); return fd }
                if errno != EINTR && errno != EAGAIN { throw MigrationError.connection("accept: \(errorText(errno))") }
            }
        }
    }
}
