import Foundation
import Migration

/// What every later `migrate` uses, set with `migrate-set-parameters` and shown by
/// `query-migrate-parameters`: QEMU's `downtime-limit` (ms; swiftvmm also takes a fraction) and `max-bandwidth` (bytes/s,
/// 0 = unlimited) and `multifd-channels` (connections the pages travel on; 0 = automatic: 1 on
/// a UNIX socket, 4 over TCP), and swiftvmm's own under `x-swiftvmm-`.
public struct MigrationParameters: Sendable {
    public var downtimeLimitMs: Double = 50
    public var maxBandwidth: UInt64 = 0
    /// Give up after this many seconds (0: never); the guest stays on the source.
    public var maxTime: Double = 0
    /// Give up when the target makes no progress for this many seconds (0: never).
    public var timeout: Double = 30
    /// Throttle the vCPUs when the guest dirties memory faster than the link carries it.
    public var autoConverge = true
    public var compression: Compression = .lz4
    /// The pre-shared key that authenticates both ends and seals the stream; never shown.
    public var key: [UInt8]?
    public var streamVersion: UInt32 = Wire.streamVersion
    /// Test hook: wait this long before the commit.
    public var holdBeforeCommitMs: UInt64 = 0
    /// Copy the disks in the stream (QEMU's block migration), and verify them at the pause.
    public var copyStorage = false
    public var verifyStorage = false
    /// Local hand-over: descriptors instead of pages (`send --local`).
    public var local = false
    /// Connections the pages travel on (0: automatic).
    public var channels = 0

    public init() {}

    /// Every parameter `migrate-set-parameters` takes.
    public static let names: Set<String> = [
        "downtime-limit", "max-bandwidth", "x-swiftvmm-max-time", "x-swiftvmm-timeout", "x-swiftvmm-auto-converge",
        "x-swiftvmm-compress", "x-swiftvmm-key", "x-swiftvmm-stream-version", "x-swiftvmm-hold-before-commit-ms",
        "x-swiftvmm-copy-storage", "x-swiftvmm-verify-storage",
        "x-swiftvmm-local", "multifd-channels",
    ]

    /// `query-migrate-parameters`: every parameter but the key, which shows as `x-swiftvmm-sealed`.
    public var json: [String: Any] {
        ["downtime-limit": downtimeLimitMs, "max-bandwidth": maxBandwidth, "x-swiftvmm-max-time": maxTime,
         "x-swiftvmm-timeout": timeout, "x-swiftvmm-auto-converge": autoConverge, "x-swiftvmm-compress": compression.rawValue,
         "x-swiftvmm-sealed": key != nil, "x-swiftvmm-stream-version": Int(streamVersion),
         "x-swiftvmm-hold-before-commit-ms": holdBeforeCommitMs,
         "x-swiftvmm-copy-storage": copyStorage, "x-swiftvmm-verify-storage": verifyStorage, "x-swiftvmm-local": local,
         "multifd-channels": channels]
    }

    /// The options of a migration to `endpoint` under these parameters.
    public func sendOptions(to endpoint: Endpoint) -> SendOptions {
        var o = SendOptions(endpoint: endpoint)
        o.downtimeMs = downtimeLimitMs
        o.maxBandwidth = maxBandwidth > 0 ? Double(maxBandwidth) : nil
        o.maxTime = maxTime > 0 ? maxTime : nil
        o.timeout = timeout > 0 ? timeout : nil
        o.autoConverge = autoConverge
        o.compression = compression
        o.key = key
        o.streamVersion = streamVersion
        o.holdBeforeCommitMs = Double(holdBeforeCommitMs)
        o.copyStorage = copyStorage
        o.verifyStorage = verifyStorage
        o.local = local
        o.connections = channels > 0 ? channels : nil
        return o
    }

    /// Applies the parameters `change` sets, leaving the others.
    public mutating func apply(_ change: Change) {
        if let v = change.downtimeLimitMs { downtimeLimitMs = v }
        if let v = change.maxBandwidth { maxBandwidth = v }
        if let v = change.maxTime { maxTime = v }
        if let v = change.timeout { timeout = v }
        if let v = change.autoConverge { autoConverge = v }
        if let v = change.compression { compression = v }
        if let v = change.key { key = v.isEmpty ? nil : v }
        if let v = change.streamVersion { streamVersion = v }
        if let v = change.holdBeforeCommitMs { holdBeforeCommitMs = v }
        if let v = change.copyStorage { copyStorage = v }
        if let v = change.verifyStorage { verifyStorage = v }
        if let v = change.local { local = v }
        if let v = change.channels { channels = v }
    }

    /// The arguments of one `migrate-set-parameters`, checked; nil for what it leaves alone.
    public struct Change: Sendable {
        public var downtimeLimitMs: Double?
        public var maxBandwidth: UInt64?
        public var maxTime: Double?
        public var timeout: Double?
        public var autoConverge: Bool?
        public var compression: Compression?
        /// Empty: no key (an unsealed stream).
        public var key: [UInt8]?
        public var streamVersion: UInt32?
        public var holdBeforeCommitMs: UInt64?
        public var copyStorage: Bool?
        public var verifyStorage: Bool?
        public var local: Bool?
        public var channels: Int?

        public init(_ a: [String: Any]) throws(QMPError) {
            downtimeLimitMs = try Self.number(a, "downtime-limit", "milliseconds")
            if let v = downtimeLimitMs, v <= 0 || v > 2_000_000 {
                throw .generic("Parameter 'downtime-limit' must be more than 0 and at most 2000000 milliseconds")
            }
            maxBandwidth = try Arguments.unsigned(a, "max-bandwidth")
            maxTime = try Self.number(a, "x-swiftvmm-max-time", "seconds")
            timeout = try Self.number(a, "x-swiftvmm-timeout", "seconds")
            autoConverge = try Arguments.bool(a, "x-swiftvmm-auto-converge")
            if let s = try Arguments.optionalString(a, "x-swiftvmm-compress") {
                guard let c = Compression(rawValue: s) else { throw .generic("Parameter 'x-swiftvmm-compress' must be lz4 or none") }
                compression = c
            }
            if let s = try Arguments.optionalString(a, "x-swiftvmm-key") {
                guard let k = [UInt8](hexString: s), k.isEmpty || k.count >= 16 else {
                    throw .generic("Parameter 'x-swiftvmm-key' must be empty or at least 16 bytes in hex")
                }
                key = k
            }
            streamVersion = try Arguments.unsigned(a, "x-swiftvmm-stream-version").map { UInt32(clamping: $0) }
            holdBeforeCommitMs = try Arguments.unsigned(a, "x-swiftvmm-hold-before-commit-ms")
            copyStorage = try Arguments.bool(a, "x-swiftvmm-copy-storage")
            verifyStorage = try Arguments.bool(a, "x-swiftvmm-verify-storage")
            local = try Arguments.bool(a, "x-swiftvmm-local")
            if let n = try Arguments.unsigned(a, "multifd-channels") {
                guard n <= UInt64(MachineDescription.maxChannels) else {
                    throw .generic("Parameter 'multifd-channels' must be 0 (automatic) to \(MachineDescription.maxChannels)")
                }
                channels = Int(n)
            }
        }

        private static func number(_ a: [String: Any], _ key: String, _ unit: String) throws(QMPError) -> Double? {
            guard let v = a[key] else { return nil }
            guard !Arguments.isBool(v), let d = (v as? NSNumber)?.doubleValue, d.isFinite, d >= 0 else {
                throw .generic("Parameter '\(key)' expects a number of \(unit), 0 or more")
            }
            return d
        }
    }
}
