import Foundation
import Glibc
import Migration

/// A client of the control socket (used by `send`, `status`, `cancel`).
public final class ControlClient: @unchecked Sendable {
    let fd: Int32
    private var buffer = [UInt8]()

    public init(path: String) throws {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        let r = Transport.withUnixAddress(path) { connect(s, $0, $1) }
        guard r == 0 else {
            let e = errno
            close(s)
            if e == ENOENT || e == ECONNREFUSED {
                throw ControlError("no running swiftvmm at '\(path)' (\(String(cString: strerror(e))))")
            }
            throw ControlError("cannot connect to '\(path)': \(String(cString: strerror(e)))")
        }
        fd = s
    }

    deinit { close(fd) }

    /// Sends a command and waits for its reply. Throws the server's error text.
    public func execute(_ command: String, _ arguments: [String: Any] = [:]) throws -> [String: Any] {
        var req: [String: Any] = ["execute": command]
        if !arguments.isEmpty { req["arguments"] = arguments }
        var data = try JSONSerialization.data(withJSONObject: req)
        data.append(10)
        let ok = data.withUnsafeBytes { p -> Bool in
            guard let b = p.baseAddress else { return false }
            return send(fd, b, p.count, Int32(MSG_NOSIGNAL)) == p.count
        }
        guard ok else { throw ControlError("lost the connection to the VM's API socket") }
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                    throw ControlError("malformed reply from the VM")
                }
                if let e = obj["error"] as? [String: Any] { throw ControlError(e["desc"] as? String ?? "error") }
                return obj["return"] as? [String: Any] ?? [:]
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ControlError("the VM closed its API socket (it may have exited)") }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}
