import Foundation
import Migration

/// A request on the control socket, decoded and checked: the handler never sees raw JSON.
public enum ControlCommand: Sendable {
    case queryStatus
    case queryMigrate
    /// Pause the vCPUs.
    case stop
    /// Resume the vCPUs.
    case cont
    /// Stop the guest (or a waiting receive) and exit.
    case quit
    case migrate(SendOptions)
    case migrateCancel
    /// Write the paused machine's state (an FDT) to a file.
    case dumpState(path: String)
    /// Save the guest to a snapshot file (an absolute path), then stop it or leave it running.
    case save(path: String, options: SaveOptions)

    /// Every command name, for `CommandNotFound` replies.
    public static let names = ["query-status", "query-migrate", "stop", "cont", "quit", "migrate", "migrate-cancel", "dump-state",
                               "x-swiftvmm-save"]

    /// The name on the wire.
    public var name: String {
        switch self {
        case .queryStatus: return "query-status"
        case .queryMigrate: return "query-migrate"
        case .stop: return "stop"
        case .cont: return "cont"
        case .quit: return "quit"
        case .migrate: return "migrate"
        case .migrateCancel: return "migrate-cancel"
        case .dumpState: return "dump-state"
        case .save: return "x-swiftvmm-save"
        }
    }

    /// Decodes `name` with its `arguments` (a JSON object).
    public init(name: String, arguments a: [String: Any]) throws(ControlCommandError) {
        switch name {
        case "query-status": self = .queryStatus
        case "query-migrate": self = .queryMigrate
        case "stop": self = .stop
        case "cont": self = .cont
        case "quit": self = .quit
        case "migrate-cancel": self = .migrateCancel
        case "dump-state":
            guard let path = a["path"] as? String, !path.isEmpty else { throw .invalid("dump-state needs \"path\"") }
            self = .dumpState(path: path)
        case "migrate": self = .migrate(try Self.sendOptions(a))
        case "x-swiftvmm-save":
            guard let path = a["path"] as? String, path.hasPrefix("/") else { throw .invalid("x-swiftvmm-save needs an absolute \"path\"") }
            var o = SaveOptions()
            if let v = a["leave-running"] {
                guard let b = v as? Bool else { throw .invalid("leave-running must be true or false") }
                o.leaveRunning = b
            }
            self = .save(path: path, options: o)
        default: throw .unknown(name)
        }
    }

    /// The arguments of `migrate` as `SendOptions`: `uri`, and optionally `downtime-ms`,
    /// `max-bandwidth` (bytes/s), `max-time` (s), `timeout` (s, 0 never), `auto-converge`,
    /// `compress` (lz4|none), `key` (hex).
    static func sendOptions(_ a: [String: Any]) throws(ControlCommandError) -> SendOptions {
        guard let uri = a["uri"] as? String else { throw .invalid("migrate needs \"uri\"") }
        var o: SendOptions
        do { o = SendOptions(endpoint: try Endpoint.parse(uri)) } catch { throw .invalid("\(error)") }
        if let v = try number(a, "downtime-ms") {
            guard v > 0 else { throw .invalid("downtime-ms must be positive") }
            o.downtimeMs = v
        }
        if let v = try number(a, "max-bandwidth") {
            guard v > 0 else { throw .invalid("max-bandwidth must be positive") }
            o.maxBandwidth = v
        }
        if let v = try number(a, "max-time") { o.maxTime = v }
        if let v = try number(a, "timeout") {
            guard v >= 0 else { throw .invalid("timeout must be 0 (never) or more") }
            o.timeout = v > 0 ? v : nil
        }
        if let v = a["auto-converge"] {
            guard let b = v as? Bool else { throw .invalid("auto-converge must be true or false") }
            o.autoConverge = b
        }
        if let v = a["compress"] {
            guard let s = v as? String, let c = Compression(rawValue: s) else { throw .invalid("compress must be lz4 or none") }
            o.compression = c
        }
        if let v = a["key"] {
            guard let s = v as? String, let k = [UInt8](hexString: s), k.count >= 16 else { throw .invalid("key must be at least 16 bytes, hex") }
            o.key = k
        }
        if let v = a["dry-run"] {
            guard let b = v as? Bool else { throw .invalid("dry-run must be true or false") }
            o.dryRun = b
        }
        if let v = try number(a, "stream-version") { o.streamVersion = UInt32(clamping: Int(v)) }
        if let v = try number(a, "hold-before-commit-ms") { o.holdBeforeCommitMs = v }
        return o
    }

    private static func number(_ a: [String: Any], _ key: String) throws(ControlCommandError) -> Double? {
        guard let v = a[key] else { return nil }
        if let d = v as? Double, d.isFinite { return d }
        if let i = v as? Int { return Double(i) }
        throw .invalid("\(key) must be a number")
    }
}

/// Why a request could not be decoded.
public enum ControlCommandError: Error, Equatable, CustomStringConvertible {
    case unknown(String)
    case invalid(String)

    public var description: String {
        switch self {
        case .unknown(let n): return "unknown command '\(n)'"
        case .invalid(let s): return s
        }
    }

    /// The QMP error class.
    public var errorClass: String {
        switch self {
        case .unknown: return "CommandNotFound"
        case .invalid: return "GenericError"
        }
    }
}
