import Foundation
import Glibc
import Machine
import Migration

/// The QMP monitor: a UNIX socket speaking QEMU's Machine Protocol, one JSON object per line in
/// each direction.
///
/// On connect the server greets (`{"QMP": {"version": …, "capabilities": []}}`); the client
/// negotiates with `qmp_capabilities` (any other command before that is `CommandNotFound`), then
/// sends `{"execute": NAME, "arguments": {…}, "id": ANY}` and gets `{"return": …, "id": ANY}` or
/// `{"error": {"class", "desc"}, "id": ANY}`; asynchronous `{"event": …}` lines come in between.
/// Access control is the socket file's mode (0600). Clients are untrusted all the same: a
/// request is at most `maxLine` bytes (a longer one gets an error and the connection is
/// closed), at most `maxClients` are served at once (more are closed at once), and a client that
/// does not read what it is sent is dropped after a few seconds rather than holding a thread.
public final class ControlServer: @unchecked Sendable {
    public static let maxLine = 1 << 20
    public static let maxClients = 64
    /// How long a reply or an event may wait for a client that does not read it.
    static let sendTimeoutSeconds = 5
    /// Runs one negotiated command for client `client`: its `return` value, or the error.
    public typealias Handler = @Sendable (_ client: Int, _ command: String, _ arguments: [String: Any]) -> Result<Any, QMPError>

    public let path: String
    private let fd: Int32
    private let handler: Handler
    private let events: EventBroadcaster
    private let closed: @Sendable (Int) -> Void
    private let lock = NSLock()
    private var stopped = false
    private var clients = 0
    private var nextClient = 0
    /// Requests being answered: a command that ends the process (`quit`) returns before its
    /// reply is written, and the process waits for it (`waitForReplies`).
    private let replies = NSCondition()
    private var inFlight = 0

    /// Binds `path` (replacing a stale socket; refusing a live one) and serves on background threads.
    /// `closed` learns when a client hung up; `events` go to every negotiated client.
    public init(path: String, events: EventBroadcaster, handler: @escaping Handler, closed: @escaping @Sendable (Int) -> Void = { _ in }) throws {
        guard path.utf8.count < 108 else { throw ControlError("API socket path '\(path)' is longer than 107 bytes") }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw ControlError("API socket '\(path)' exists and is not a socket") }
            if ControlClient.isListening(path) { throw ControlError("API socket '\(path)' is in use by another swiftvmm") }
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
        self.events = events
        self.closed = closed
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
            let id = lock.withLock { () -> Int? in
                guard clients < Self.maxClients else { return nil }
                clients += 1
                nextClient += 1
                return nextClient
            }
            let connection = QMPConnection(fd: c, id: id ?? 0)
            guard let id else {
                _ = connection.write(["error": ["class": "GenericError", "desc": "too many clients (at most \(Self.maxClients))"]])
                connection.close()
                continue
            }
            var tv = timeval(tv_sec: Self.sendTimeoutSeconds, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let t = Thread { [self] in
                Confinement.confineThread(.control, name: "control-client")
                self.serve(connection)
                self.events.unsubscribe(id)
                connection.close()
                self.lock.withLock { self.clients -= 1 }
                self.closed(id)
            }
            t.name = "control-client"
            t.start()
        }
    }

    private func serve(_ c: QMPConnection) {
        guard c.write(QMP.greeting) else { return }
        var framer = QMPFramer(maxBytes: Self.maxLine)
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(c.fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            for frame in framer.feed(chunk[0..<n]) {
                if let refusal = QMPFramer.refusal(frame, maxBytes: Self.maxLine) {
                    _ = c.write(refusal.json())
                    return
                }
                if case .message(let text) = frame { guard answer(text, on: c) else { return } }
            }
        }
    }

    /// Answers one request; false when the client is gone.
    private func answer(_ text: [UInt8], on c: QMPConnection) -> Bool {
        replies.withLock { inFlight += 1 }
        defer { replies.withLock { inFlight -= 1; replies.broadcast() } }
        return c.write(reply(to: text, from: c))
    }

    /// Waits (at most `timeout` s) until every request being answered has had its reply written.
    public func waitForReplies(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        replies.lock()
        while inFlight > 0 && Date() < deadline { _ = replies.wait(until: deadline) }
        replies.unlock()
    }

    /// The reply to one request: capabilities negotiation first, then the handler.
    private func reply(to line: [UInt8], from c: QMPConnection) -> [String: Any] {
        let (id, parsed) = QMP.Request.parse(line)
        let request: QMP.Request
        switch parsed {
        case .success(let r): request = r
        case .failure(let error): return error.json(id: id)
        }
        let result: Result<Any, QMPError>
        switch (request.command, c.negotiated) {
        case ("qmp_capabilities", false):
            result = Self.negotiate(request.arguments)
            if case .success = result {
                c.negotiated = true
                events.subscribe(c.id) { [weak c] line in c?.write(line) ?? false }
            }
        case ("qmp_capabilities", true):
            result = .failure(QMPError(.commandNotFound, "Capabilities negotiation is already complete, command ignored"))
        case (_, false):
            result = .failure(QMPError(.commandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'"))
        case (let name, true):
            result = handler(c.id, name, request.arguments)
        }
        switch result {
        case .success(let value):
            var r: [String: Any] = ["return": value]
            if let id { r["id"] = id }
            return r
        case .failure(let error): return error.json(id: id)
        }
    }

    /// `qmp_capabilities`: `enable` may list only capabilities the greeting offered (none).
    static func negotiate(_ arguments: [String: Any]) -> Result<Any, QMPError> {
        for key in arguments.keys where key != "enable" { return .failure(.generic("Parameter '\(key)' is unexpected")) }
        guard let enable = arguments["enable"] else { return .success([String: Any]()) }
        guard let list = enable as? [Any] else { return .failure(.generic("Invalid parameter type for 'enable', expected: array")) }
        for cap in list {
            guard let name = cap as? String else { return .failure(.generic("Invalid parameter type for 'enable', expected: string")) }
            return .failure(.generic("Capability '\(name)' not available"))
        }
        return .success([String: Any]())
    }
}

/// One client's socket: replies (its own thread) and events (the broadcaster's) are written
/// whole under one lock, and never after it is closed.
final class QMPConnection: @unchecked Sendable {
    let fd: Int32
    let id: Int
    /// Only the client's own thread reads and sets this.
    var negotiated = false
    private let lock = NSLock()
    private var closed = false

    init(fd: Int32, id: Int) {
        self.fd = fd
        self.id = id
    }

    func write(_ obj: [String: Any]) -> Bool {
        guard var data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) else { return false }
        data.append(10)
        return write([UInt8](data))
    }

    /// Writes one whole line; on failure (a client that does not read) hangs up on the client.
    func write(_ line: [UInt8]) -> Bool {
        lock.withLock {
            guard !closed else { return false }
            var off = 0
            while off < line.count {
                let n = line[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    shutdown(fd, Int32(SHUT_RDWR))
                    return false
                }
                off += n
            }
            return true
        }
    }

    func close() {
        lock.withLock {
            guard !closed else { return }
            closed = true
            Glibc.close(fd)
        }
    }
}

public struct ControlError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
