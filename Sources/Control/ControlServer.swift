import Foundation
import Glibc
import Machine
import Migration

/// A QMP-like control socket: one JSON object per line in each direction.
///
/// Request: `{"execute": "query-status", "arguments": {…}}`.
/// Reply: `{"return": {…}}` or `{"error": {"class": "GenericError", "desc": "…"}}`.
/// Access control is the socket file's mode (0600). Clients are untrusted all the same: a
/// request line is at most `maxLine` bytes (a longer one gets an error and the connection is
/// closed), at most `maxClients` are served at once (more are closed at once), and a client that
/// does not read its replies is dropped after a few seconds rather than holding a thread.
public final class ControlServer: @unchecked Sendable {
    public static let maxLine = 1 << 20
    public static let maxClients = 64
    /// How long a reply may wait for a client that does not read it.
    static let sendTimeoutSeconds = 5
    public typealias Handler = @Sendable (_ command: String, _ arguments: [String: Any]) -> ControlReply

    public let path: String
    private let fd: Int32
    private let handler: Handler
    private let lock = NSLock()
    private var stopped = false
    private var clients = 0
    /// Called after the reply to `command` was written to its client.
    public var replyWritten: (@Sendable (String) -> Void)?

    /// Binds `path` (replacing a stale socket; refusing a live one) and serves on background threads.
    public init(path: String, handler: @escaping Handler) throws {
        guard path.utf8.count < 108 else { throw ControlError("API socket path '\(path)' is longer than 107 bytes") }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw ControlError("API socket '\(path)' exists and is not a socket") }
            if let c = try? ControlClient(path: path) {
                _ = c
                throw ControlError("API socket '\(path)' is in use by another swiftvmm")
            }
            unlink(path)
        }
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        let old = umask(0o177)
        let r = Transport.withUnixAddress(path) { bind(s, $0, $1) }
        umask(old)
        guard r == 0, listen(s, 8) == 0 else {
            let e = errno
            close(s)
            throw ControlError("cannot create API socket '\(path)': \(String(cString: strerror(e)))")
        }
        chmod(path, 0o600)
        self.path = path
        self.fd = s
        self.handler = handler
        let t = Thread { [self] in self.acceptLoop() }
        t.name = "control"
        t.start()
    }

    deinit { stop() }

    /// Stops serving and removes the socket file.
    public func stop() {
        lock.lock()
        defer { lock.unlock() }
        guard !stopped else { return }
        stopped = true
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        unlink(path)
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    private func acceptLoop() {
        while !isStopped {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, 200)
            if r <= 0 { continue }
            let c = accept(fd, nil, nil)
            if c < 0 { if errno == EINTR || errno == EAGAIN { continue }; return }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            let admitted = lock.withLock { () -> Bool in
                guard clients < Self.maxClients else { return false }
                clients += 1
                return true
            }
            guard admitted else {
                _ = writeLine(c, ["error": ["class": "GenericError", "desc": "too many clients (at most \(Self.maxClients))"]])
                close(c)
                continue
            }
            var tv = timeval(tv_sec: Self.sendTimeoutSeconds, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let t = Thread { [self] in
                Confinement.confineThread(.control, name: "control-client")
                self.serve(c)
                self.lock.withLock { self.clients -= 1 }
            }
            t.name = "control-client"
            t.start()
        }
    }

    private func serve(_ c: Int32) {
        defer { close(c) }
        var buffer = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(c, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            let searchFrom = buffer.count
            buffer.append(contentsOf: chunk[0..<n])
            if buffer[searchFrom...].firstIndex(of: 10) == nil {
                guard buffer.count <= Self.maxLine else {
                    _ = writeLine(c, ["error": ["class": "GenericError", "desc": "request line longer than \(Self.maxLine) bytes"]])
                    return
                }
                continue
            }
            while let nl = buffer.firstIndex(of: 10) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                let (command, reply) = Self.respond(to: line, handler: handler)
                let ok = send(c, reply)
                if let command { replyWritten?(command) }
                guard ok else { return }
            }
        }
    }

    /// The reply line (with its newline) to one request line (without it), and the command it
    /// named when it named one: all the server does with a client's bytes, without a socket.
    public static func respond(to line: [UInt8], handler: Handler) -> (command: String?, reply: [UInt8]) {
        let (command, reply) = reply(to: line, handler: handler)
        return (command, encode(reply))
    }

    private static func reply(to line: [UInt8], handler: Handler) -> (String?, [String: Any]) {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
              let command = obj["execute"] as? String else {
            return (nil, ["error": ["class": "GenericError", "desc": "request is not a JSON object with \"execute\""]])
        }
        guard obj["arguments"] == nil || obj["arguments"] is [String: Any] else {
            return (command, ["error": ["class": "GenericError", "desc": "\"arguments\" must be a JSON object"]])
        }
        let args = obj["arguments"] as? [String: Any] ?? [:]
        switch handler(command, args) {
        case .ok(let value): return (command, ["return": value])
        case .error(let cls, let desc): return (command, ["error": ["class": cls, "desc": desc]])
        }
    }

    /// `obj` as one JSON line (an error line if the handler put something JSON cannot hold in it).
    static func encode(_ obj: [String: Any]) -> [UInt8] {
        guard JSONSerialization.isValidJSONObject(obj),
              let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) else {
            return Array(#"{"error":{"class":"GenericError","desc":"the reply cannot be written as JSON"}}"#.utf8) + [10]
        }
        return Array(data) + [10]
    }

    private func writeLine(_ c: Int32, _ obj: [String: Any]) -> Bool { send(c, Self.encode(obj)) }

    private func send(_ c: Int32, _ line: [UInt8]) -> Bool {
        line.withUnsafeBytes { p -> Bool in
            var off = 0
            while off < p.count {
                guard let b = p.baseAddress else { return false }
                let n = Glibc.send(c, b + off, p.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                off += n
            }
            return true
        }
    }
}

/// What a command handler answers.
public enum ControlReply {
    case ok([String: Any])
    /// `class` as in QMP: `GenericError`, `CommandNotFound`, …
    case error(String, String)
}

public struct ControlError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
