import Foundation
import Glibc

/// A QMP client — of swiftvmm's API socket or QEMU's QMP socket (both greet first and want
/// `qmp_capabilities`, see `qmp(path:)`): `{"execute": …}` out,
/// `{"return": …}` or `{"error": {"class", "desc"}}` back, `{"event": …}` lines in between.
public final class JSONLinesClient: @unchecked Sendable {
    private let fd: Int32
    private var buffer: [UInt8] = []
    /// Asynchronous events received so far (QMP `{"event": …}` lines).
    public private(set) var events: [JSON] = []
    /// The greeting, when the server sent one.
    public private(set) var greeting: JSON?

    /// Connects to the UNIX socket at `path`, waiting (up to `timeout`) for it to appear and
    /// accept; with `greeting`, reads the server's first line. Gives up early if `child` ends.
    public init(path: String, timeout: Double = 10, greeting expectGreeting: Bool = false, child: Child? = nil) throws {
        let deadline = Monotonic.now() + timeout
        try Paths.waitFor(path, timeout: timeout, child: child)
        var s: Int32 = -1
        while true {
            s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard s >= 0 else { throw HarnessError("socket: \(String(cString: strerror(errno)))") }
            if Self.connect(s, path) == 0 { break }
            let e = errno
            close(s)
            if let child, !child.isRunning {
                throw HarnessError("\(child.name) exited before its control socket came up \(child.tail())")
            }
            // The file exists a moment before the server listens: a short, bounded retry.
            guard e == ECONNREFUSED || e == ENOENT, Monotonic.now() < deadline else {
                throw HarnessError("cannot connect to \(path): \(String(cString: strerror(e)))")
            }
            usleep(5_000)
        }
        fd = s
        if expectGreeting { greeting = try readLine(deadline: Monotonic.now() + timeout).value }
    }

    deinit { close(fd) }

    /// Connects to a QMP socket (QEMU's or swiftvmm's) and leaves capabilities negotiation.
    public static func qmp(path: String, child: Child? = nil, timeout: Double = 10) throws -> JSONLinesClient {
        let c = try JSONLinesClient(path: path, timeout: timeout, greeting: true, child: child)
        _ = try c.execute("qmp_capabilities")
        return c
    }

    /// Sends `command` (with `arguments`) and returns the reply's `return` value; an `error`
    /// reply throws its `desc`.
    @discardableResult
    public func execute(_ command: String, _ arguments: JSONObject? = nil, timeout: Double = 30) throws -> JSON {
        var req: JSONObject = ["execute": .string(command)]
        if let arguments, !arguments.isEmpty { req["arguments"] = .object(arguments) }
        let reply = try request(.object(req), timeout: timeout).reply
        if let e = reply["error"] {
            throw HarnessError("\(command): \(e["desc"]?.string ?? e.compact)")
        }
        return reply["return"] ?? .null
    }

    /// Sends one request line and returns the next reply that is not an event, parsed and as
    /// it came.
    public func request(_ message: JSON, timeout: Double = 30) throws -> (reply: JSON, line: String) {
        let deadline = Monotonic.now() + timeout
        let bytes = Array((message.compact + "\n").utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw HarnessError("control socket: send failed: \(String(cString: strerror(errno)))") }
            off += n
        }
        while true {
            let r = try readLine(deadline: deadline)
            if r.value["event"] != nil { events.append(r.value); continue }
            return (r.value, r.line)
        }
    }

    /// Waits (at most `timeout` s) for an event named `name` that `match` accepts — one already
    /// received counts — and returns it, dropping it and the events before it from `events`.
    @discardableResult
    public func waitForEvent(_ name: String, timeout: Double = 30, where match: (JSON) -> Bool = { _ in true }) throws -> JSON {
        let deadline = Monotonic.now() + timeout
        while true {
            if let i = events.firstIndex(where: { $0["event"]?.string == name && match($0) }) {
                let e = events[i]
                events.removeSubrange(...i)
                return e
            }
            let r = try readLine(deadline: deadline)
            if r.value["event"] != nil { events.append(r.value) }
        }
    }

    private func readLine(deadline: Double) throws -> (value: JSON, line: String) {
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                let text = String(decoding: line, as: UTF8.self)
                do { return (try JSON.parse(line), text) } catch {
                    throw HarnessError("control socket: malformed reply '\(text.prefix(200))': \(error)")
                }
            }
            let left = deadline - Monotonic.now()
            guard left > 0 else { throw HarnessError("control socket: no reply in time") }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32((left * 1000).rounded(.up)))
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw HarnessError("control socket closed") }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }

    private static func connect(_ s: Int32, _ path: String) -> Int32 {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        let bytes = Array(path.utf8)
        guard bytes.count < capacity else { errno = ENAMETOOLONG; return -1 }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in p.copyBytes(from: bytes + [0]) }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
