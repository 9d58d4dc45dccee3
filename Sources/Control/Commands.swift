import Foundation
import Migration

/// A QMP command, decoded and checked: the handler never sees raw JSON. QEMU's names and
/// arguments where QEMU has the command; swiftvmm's own under `x-swiftvmm-`, as QEMU names
/// extensions.
public enum ControlCommand: Sendable {
    case queryStatus
    case queryVersion
    case queryCommands
    /// Pause the vCPUs.
    case stop
    /// Resume the vCPUs.
    case cont
    /// Stop the guest (or a waiting receive) and exit.
    case quit
    case queryCPUsFast
    /// Start migrating to `uri`; returns at once (progress: `query-migrate`, MIGRATION events).
    /// `copyStorage`: QEMU's `blk`, this migration copies the disks whatever the parameters say.
    case migrate(Endpoint, copyStorage: Bool)
    case migrateCancel
    case queryMigrate
    case migrateSetParameters(MigrationParameters.Change)
    case queryMigrateParameters
    /// swiftvmm's own status: name, memory, vCPUs, CPU model, unclaimed I/O, migration progress.
    case machineStatus
    /// Write the paused machine's state (an FDT) to a file.
    case dumpState(path: String)
    /// Check, without moving anything, that the guest could move to `uri`: the target runs
    /// every pre-check and builds the machine, then tears it down. Returns the verdict.
    case migrateDryRun(Endpoint)
    /// Save the guest to a snapshot file (an absolute path), then stop it or leave it running.
    case save(path: String, options: SaveOptions)
    /// Copy to each mirror (or `volume`'s) the blocks written since it fell out of sync; waits
    /// until it is in sync again.
    case mirrorResync(volume: String?)

    /// Every command and the arguments it takes (anything else is refused, as QEMU does).
    public static let table: [(name: String, arguments: Set<String>)] = [
        ("qmp_capabilities", ["enable"]),
        ("query-status", []), ("query-version", []), ("query-commands", []),
        ("stop", []), ("cont", []), ("quit", []), ("query-cpus-fast", []),
        ("migrate", ["uri", "detach", "resume", "blk", "inc"]), ("migrate_cancel", []), ("query-migrate", []),
        ("migrate-set-parameters", MigrationParameters.names), ("query-migrate-parameters", []),
        ("x-swiftvmm-query-status", []), ("x-swiftvmm-dump-state", ["path"]), ("x-swiftvmm-migrate-dry-run", ["uri"]),
        ("x-swiftvmm-save", ["path", "leave-running", "live"]), ("x-swiftvmm-mirror-resync", ["volume"]),
    ]

    /// Every command name, for `query-commands`.
    public static var names: [String] { table.map(\.name) }

    /// Decodes `name` with its `arguments` (a JSON object).
    public init(name: String, arguments a: [String: Any]) throws(QMPError) {
        guard let allowed = Self.table.first(where: { $0.name == name })?.arguments else {
            throw QMPError(.commandNotFound, "The command \(name) has not been found")
        }
        for key in a.keys.sorted() where !allowed.contains(key) { throw .generic("Parameter '\(key)' is unexpected") }
        switch name {
        case "query-status": self = .queryStatus
        case "query-version": self = .queryVersion
        case "query-commands": self = .queryCommands
        case "stop": self = .stop
        case "cont": self = .cont
        case "quit": self = .quit
        case "query-cpus-fast": self = .queryCPUsFast
        case "migrate": self = .migrate(try Self.migrateURI(a), copyStorage: try Self.blockMigration(a))
        case "migrate_cancel": self = .migrateCancel
        case "query-migrate": self = .queryMigrate
        case "migrate-set-parameters": self = .migrateSetParameters(try MigrationParameters.Change(a))
        case "query-migrate-parameters": self = .queryMigrateParameters
        case "x-swiftvmm-query-status": self = .machineStatus
        case "x-swiftvmm-dump-state":
            let path = try Arguments.string(a, "path")
            guard !path.isEmpty else { throw .generic("Parameter 'path' must not be empty") }
            self = .dumpState(path: path)
        case "x-swiftvmm-migrate-dry-run": self = .migrateDryRun(try Self.migrateURI(a))
        case "x-swiftvmm-save":
            guard let path = a["path"] as? String, path.hasPrefix("/") else { throw .generic("Parameter 'path' must be an absolute path") }
            var o = SaveOptions()
            if let v = a["leave-running"] {
                guard let b = v as? Bool else { throw .generic("Parameter 'leave-running' expects a boolean") }
                o.leaveRunning = b
            }
            if let v = a["live"] {
                guard let b = v as? Bool else { throw .generic("Parameter 'live' expects a boolean") }
                o.live = b
            }
            self = .save(path: path, options: o)
        case "x-swiftvmm-mirror-resync": self = .mirrorResync(volume: try Arguments.optionalString(a, "volume"))
        default: throw QMPError(.commandNotFound, "The command \(name) has not been found")
        }
    }

    /// `migrate`'s `uri` (`tcp:HOST:PORT` or `unix:PATH`); `detach` is accepted and ignored
    /// (a migration always runs in the background), `resume` (postcopy recovery) must be false.
    static func migrateURI(_ a: [String: Any]) throws(QMPError) -> Endpoint {
        let uri = try Arguments.string(a, "uri")
        _ = try Arguments.bool(a, "detach")
        if try Arguments.bool(a, "resume") == true { throw .generic("swiftvmm has no postcopy to resume") }
        do { return try Endpoint.parse(uri) } catch { throw .generic("Invalid uri '\(uri)': \(error)") }
    }

    /// `migrate`'s `blk` (QEMU's block migration): true copies the disks in the stream, as the
    /// `x-swiftvmm-copy-storage` parameter does. `inc` (copy only what differs from a shared
    /// base image) must be false.
    static func blockMigration(_ a: [String: Any]) throws(QMPError) -> Bool {
        let blk = try Arguments.bool(a, "blk") ?? false
        if try Arguments.bool(a, "inc") == true {
            throw .generic("incremental block migration (inc) is not supported: swiftvmm's disks are raw images with no shared base image, so blk copies each image whole")
        }
        return blk
    }
}

/// Typed access to a command's arguments, with QEMU's wording for what is missing or wrong.
enum Arguments {
    static func string(_ a: [String: Any], _ key: String) throws(QMPError) -> String {
        guard let v = a[key] else { throw .generic("Parameter '\(key)' is missing") }
        guard let s = v as? String else { throw .generic("Invalid parameter type for '\(key)', expected: string") }
        return s
    }

    static func optionalString(_ a: [String: Any], _ key: String) throws(QMPError) -> String? {
        guard a[key] != nil else { return nil }
        return try string(a, key)
    }

    static func bool(_ a: [String: Any], _ key: String) throws(QMPError) -> Bool? {
        guard let v = a[key] else { return nil }
        guard isBool(v), let b = v as? Bool else { throw .generic("Invalid parameter type for '\(key)', expected: boolean") }
        return b
    }

    /// Whether a parsed JSON value was `true`/`false` (Foundation hands both numbers and
    /// booleans over as `NSNumber`, and `1 as? Bool` succeeds).
    static func isBool(_ v: Any) -> Bool {
        if type(of: v) == Bool.self { return true }
        guard let n = v as? NSNumber else { return false }
        return String(cString: n.objCType) == "c"
    }

    /// A non-negative integer (QMP's `uint64`/`size`).
    static func unsigned(_ a: [String: Any], _ key: String) throws(QMPError) -> UInt64? {
        guard let v = a[key] else { return nil }
        if isBool(v) { throw .generic("Invalid parameter type for '\(key)', expected: integer") }
        if let i = v as? Int, i >= 0 { return UInt64(i) }
        if let d = v as? Double, d >= 0, d.rounded() == d, d < 1.8e19 { return UInt64(d) }
        throw .generic("Parameter '\(key)' expects a non-negative integer")
    }
}
