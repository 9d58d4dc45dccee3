import Foundation
import Glibc
import Migration

/// The pieces of the QEMU Machine Protocol (QMP) that are not about any one command: the
/// greeting, the version, error classes, event framing, and the checks QEMU makes on a request
/// before it looks at the command.
public enum QMP {
    /// swiftvmm's version, as QMP's `{"major", "minor", "micro"}`.
    public static var version: [String: Any] {
        let parts = SwiftVMMVersion.string.split(separator: ".").map { Int($0) ?? 0 } + [0, 0, 0]
        return ["qemu": ["major": parts[0], "minor": parts[1], "micro": parts[2]], "package": "swiftvmm \(SwiftVMMVersion.string)"]
    }

    /// The first line a client reads. swiftvmm offers no optional capabilities (no `oob`).
    public static var greeting: [String: Any] { ["QMP": ["version": version, "capabilities": [Any]()]] }

    /// An asynchronous event as QMP frames it: name, optional data, wall-clock timestamp.
    public static func event(_ name: String, data: [String: Any]?, at time: timeval) -> [String: Any] {
        var e: [String: Any] = ["event": name, "timestamp": ["seconds": Int(time.tv_sec), "microseconds": Int(time.tv_usec)]]
        if let data { e["data"] = data }
        return e
    }

    static func now() -> timeval {
        var tv = timeval()
        gettimeofday(&tv, nil)
        return tv
    }

    /// A request, checked as QEMU checks it before dispatch: a JSON object with a string
    /// `execute`, an object `arguments` if any, an `id` of any type, nothing else.
    struct Request {
        let command: String
        let arguments: [String: Any]

        /// One framed message as a request, with its `id` (echoed in any reply, an error too).
        static func parse(_ text: [UInt8]) -> (id: Any?, request: Result<Request, QMPError>) {
            let object: [String: Any]
            do throws(QMPError) { object = try Request.object(text) } catch { return (nil, .failure(error)) }
            do throws(QMPError) { return (object["id"], .success(try Request(object))) } catch { return (object["id"], .failure(error)) }
        }

        /// Parses one line; what is not a JSON object is an error without an `id`.
        static func object(_ line: [UInt8]) throws(QMPError) -> [String: Any] {
            let parsed: Any
            do { parsed = try JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed]) } catch {
                let ns = error as NSError
                throw .generic("JSON parse error, \((ns.userInfo[NSDebugDescriptionErrorKey] as? String) ?? "invalid JSON")")
            }
            guard let obj = parsed as? [String: Any] else { throw .generic("QMP input must be a JSON object") }
            return obj
        }

        init(_ obj: [String: Any]) throws(QMPError) {
            for key in obj.keys.sorted() where !["execute", "arguments", "id"].contains(key) {
                throw .generic("QMP input member '\(key)' is unexpected")
            }
            guard let e = obj["execute"] else { throw .generic("QMP input lacks member 'execute'") }
            guard let name = e as? String else { throw .generic("QMP input member 'execute' must be a string") }
            guard obj["arguments"] == nil || obj["arguments"] is [String: Any] else {
                throw .generic("QMP input member 'arguments' must be an object")
            }
            command = name
            arguments = obj["arguments"] as? [String: Any] ?? [:]
        }
    }
}

/// A QMP error reply: its class (QEMU's `ErrorClass`) and description, and the request's `id`.
public struct QMPError: Error, CustomStringConvertible {
    public enum Class: String, Sendable {
        case generic = "GenericError"
        case commandNotFound = "CommandNotFound"
        case deviceNotActive = "DeviceNotActive"
    }
    public let errorClass: Class
    public let desc: String

    public init(_ errorClass: Class, _ desc: String) {
        self.errorClass = errorClass
        self.desc = desc
    }

    public static func generic(_ desc: String) -> QMPError { QMPError(.generic, desc) }

    public var description: String { desc }

    /// The error reply, echoing the request's `id` if it had one.
    func json(id: Any? = nil) -> [String: Any] {
        var r: [String: Any] = ["error": ["class": errorClass.rawValue, "desc": desc]]
        if let id { r["id"] = id }
        return r
    }
}
