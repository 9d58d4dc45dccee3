import Foundation
import Glibc
import Migration

/// A QMP client (used by `send`, `status`, `cancel`, `stop`, `cont`, `quit`): reads the
/// greeting, negotiates capabilities, sends commands with an `id` and matches the replies;
/// events that arrive in between are kept for `nextEvent`.
public final class ControlClient: @unchecked Sendable {
    let fd: Int32
    private var buffer = [UInt8]()
    private var events: [[String: Any]] = []
    private var nextID = 0
    /// The server's greeting (`{"QMP": …}`).
    public private(set) var greeting: [String: Any] = [:]

    /// Connects to the QMP socket at `path` and negotiates capabilities.
    public init(path: String) throws {
        fd = try Self.connect(path)
        do {
            guard let g = try readMessage(timeout: 10), g["QMP"] != nil else {
                throw ControlError("'\(path)' did not greet as a QMP monitor")
            }
            greeting = g
            _ = try execute("qmp_capabilities")
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(fd) }

    /// Whether something accepts connections at `path` (without speaking to it).
    public static func isListening(_ path: String) -> Bool {
        guard let s = try? connect(path) else { return false }
        close(s)
        return true
    }

    private static func connect(_ path: String) throws -> Int32 {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        let r = Transport.withUnixAddress(path) { Glibc.connect(s, $0, $1) }
        guard r == 0 else {
            let e = errno
            close(s)
            if e == ENOENT || e == ECONNREFUSED {
                throw ControlError("no running swiftvmm at '\(path)' (\(String(cString: strerror(e))))")
            }
            throw ControlError("cannot connect to '\(path)': \(String(cString: strerror(e)))")
        }
        return s
    }

    /// Sends a command and waits for its reply's `return` value (an object, or empty for
    /// anything else). Throws the server's error text.
    public func execute(_ command: String, _ arguments: [String: Any] = [:]) throws -> [String: Any] {
        try executeValue(command, arguments) as? [String: Any] ?? [:]
    }

    /// Sends a command and waits for its reply's `return` value, whatever its type.
    public func executeValue(_ command: String, _ arguments: [String: Any] = [:]) throws -> Any {
        nextID += 1
        let id = "swiftvmm-\(nextID)"
        var req: [String: Any] = ["execute": command, "id": id]
        if !arguments.isEmpty { req["arguments"] = arguments }
        var data = try JSONSerialization.data(withJSONObject: req)
        data.append(10)
        let ok = data.withUnsafeBytes { p -> Bool in
            guard let b = p.baseAddress else { return false }
            return send(fd, b, p.count, Int32(MSG_NOSIGNAL)) == p.count
        }
        guard ok else { throw ControlError("lost the connection to the VM's API socket") }
        while true {
            guard let obj = try readMessage(timeout: nil) else { continue }
            if obj["event"] != nil { events.append(obj); continue }
            if let other = obj["id"] as? String, other != id { continue }
            if let e = obj["error"] as? [String: Any] { throw ControlError(e["desc"] as? String ?? "error") }
            return obj["return"] ?? [String: Any]()
        }
    }

    /// The next event (`{"event", "data", "timestamp"}`), waiting at most `timeout` s; nil if
    /// none came.
    public func nextEvent(timeout: Double) throws -> [String: Any]? {
        let deadline = Date().addingTimeInterval(timeout)
        while events.isEmpty {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return nil }
            guard let obj = try readMessage(timeout: left) else { return nil }
            if obj["event"] != nil { events.append(obj) }
        }
        return events.removeFirst()
    }

    /// Reads one message; nil when `timeout` (seconds; nil: forever) passed first.
    private func readMessage(timeout: Double?) throws -> [String: Any]? {
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                    throw ControlError("malformed reply from the VM")
                }
                return obj
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = deadline.map { Int32(max(0, min(60_000, $0.timeIntervalSinceNow * 1000)).rounded(.up)) } ?? -1
            let r = poll(&p, 1, ms)
            if r < 0 && errno == EINTR { continue }
            if r == 0 {
                if let deadline, Date() >= deadline { return nil }
                continue
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ControlError("the VM closed its API socket (it may have exited)") }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}
