import Foundation
import Synchronization

/// Phases of a migration, as `status` prints them.
public enum MigrationPhase: String, Sendable {
    case idle, setup, precopy = "pre-copy", stopAndCopy = "stop-and-copy", handoff = "hand-off"
    case completed, failed, cancelled
    case waiting = "waiting"      // target: listening for a source
    case receiving                // target: pages arriving
    /// The one window where neither side can know the outcome (`go` sent but `running` not
    /// received, or `ready` sent but `go` never came): this side holds a complete copy of the
    /// guest, paused, until the operator resumes it (`cont`) or drops it (`quit`).
    case inDoubt = "in-doubt"
}

/// Figures of one pre-copy round.
public struct RoundStats: Sendable {
    public var round: Int
    public var dirtyPages: Int
    public var dataPages: Int
    public var zeroPages: Int
    public var wireBytes: UInt64
    public var rawBytes: UInt64
    public var durationMs: Double
    public var dirtyPagesPerSecond: Double
    public var bandwidthBytesPerSecond: Double
    public var throttlePercent: Int
    /// `--copy-storage`: disk blocks (64 KiB) found written, runs and bytes sent this round.
    public var diskDirtyBlocks = 0
    public var diskRuns = 0
    public var diskZeroRuns = 0
    public var diskWireBytes: UInt64 = 0
    public var diskRawBytes: UInt64 = 0

    public var json: [String: Any] {
        memoryJSON.merging(diskRuns + diskDirtyBlocks > 0 || diskWireBytes > 0 ? [
            "disk_dirty_blocks": diskDirtyBlocks, "disk_runs": diskRuns, "disk_zero_runs": diskZeroRuns,
            "disk_bytes_on_wire": diskWireBytes, "disk_raw_bytes": diskRawBytes,
        ] : [:]) { a, _ in a }
    }

    var memoryJSON: [String: Any] {
        ["round": round, "dirty_pages": dirtyPages, "pages_sent": dataPages, "zero_pages": zeroPages,
         "bytes_on_wire": wireBytes, "raw_bytes": rawBytes, "duration_ms": durationMs.rounded3,
         "dirty_pages_per_s": dirtyPagesPerSecond.rounded(), "bandwidth_MBps": (bandwidthBytesPerSecond / 1e6).rounded3,
         "throttle_percent": throttlePercent]
    }
}

extension Double {
    var rounded3: Double { (self * 1000).rounded() / 1000 }
}

/// Live progress of a migration, shared between the migration thread and `status`.
public struct MigrationProgress: Sendable {
    public var phase: MigrationPhase = .idle
    public var round = 0
    public var memoryBytes: UInt64 = 0
    /// Bytes of guest memory accounted for in round 0 (sent, zero, or never touched).
    public var memoryCovered: UInt64 = 0
    public var wireBytes: UInt64 = 0
    public var rateBytesPerSecond: Double = 0
    public var dirtyPagesPerSecond: Double = 0
    public var predictedDowntimeMs: Double = 0
    public var throttlePercent = 0
    public var remainingDirtyPages = 0
    public var startedAt = Date()
    public var error: String?
    public var peer = ""
    /// Dry runs answered (target) and the last verdict ("eligible" or the reasons).
    public var dryRuns = 0
    public var lastDryRun: String?
    /// `--copy-storage`: apparent and allocated bytes of the copied disks, round 0's share
    /// covered, disk bytes on the wire, and dirty disk blocks waiting.
    public var diskBytes: UInt64 = 0
    public var diskAllocated: UInt64 = 0
    public var diskCovered: UInt64 = 0
    public var diskWireBytes: UInt64 = 0
    public var diskDirtyBlocks = 0
    /// A completed migration's downtime above its target, in words.
    public var warning: String?

    public var percent: Double {
        memoryBytes == 0 ? 0 : min(100, Double(memoryCovered) * 100 / Double(memoryBytes))
    }

    public var json: [String: Any] {
        var d: [String: Any] = [
            "phase": phase.rawValue, "round": round, "memory_bytes": memoryBytes, "percent": percent.rounded3,
            "bytes_on_wire": wireBytes, "rate_MBps": (rateBytesPerSecond / 1e6).rounded3,
            "dirty_pages_per_s": dirtyPagesPerSecond.rounded(), "predicted_downtime_ms": predictedDowntimeMs.rounded3,
            "throttle_percent": throttlePercent, "remaining_dirty_pages": remainingDirtyPages,
            "elapsed_s": Date().timeIntervalSince(startedAt).rounded3, "peer": peer,
        ]
        if let e = error { d["error"] = e }
        if dryRuns > 0 { d["dry_runs"] = dryRuns }
        if let v = lastDryRun { d["last_dry_run"] = v }
        if diskBytes > 0 {
            d["disk_bytes"] = diskBytes; d["disk_allocated_bytes"] = diskAllocated; d["disk_covered_bytes"] = diskCovered
            d["disk_bytes_on_wire"] = diskWireBytes; d["disk_dirty_blocks"] = diskDirtyBlocks
        }
        if let w = warning { d["warning"] = w }
        return d
    }
}

/// A `MigrationProgress` behind a lock.
public final class ProgressBox: Sendable {
    private let value = Mutex(MigrationProgress())
    private let observer = Mutex<(@Sendable (MigrationPhase) -> Void)?>(nil)
    public init() {}

    public func update(_ body: (inout MigrationProgress) -> Void) {
        let (before, after) = value.withLock { p -> (MigrationPhase, MigrationPhase) in
            let before = p.phase
            body(&p)
            return (before, p.phase)
        }
        if before != after, let f = observer.withLock({ $0 }) { f(after) }
    }

    public var snapshot: MigrationProgress { value.withLock { $0 } }

    /// Calls `f` with the new phase after every update that changed it (on the updating thread).
    public func observePhase(_ f: @escaping @Sendable (MigrationPhase) -> Void) { observer.withLock { $0 = f } }
}

/// The `--report` of a finished migration.
public struct MigrationReport: Sendable {
    public var setupMs: Double = 0
    public var totalMs: Double = 0
    /// Source pause → target resume, from both sides' wall clocks.
    public var downtimeMs: Double = 0
    /// Source pause → the target's "running" acknowledgement arriving (source clock only).
    public var downtimeAckMs: Double = 0
    /// How long the target took to resume the guest once `go` was read (its own clock; part
    /// of `resume`).
    public var targetResumeMs: Double?
    public var stateBytes = 0
    public var stateMs: Double = 0
    public var rounds: [RoundStats] = []
    public var finalPages = 0
    public var memoryBytes: UInt64 = 0
    public var compression = "lz4"
    public var endpoint = ""
    /// Connections the pages travelled on (`send --connections`).
    public var connections = 1
    public var maxThrottle = 0
    /// A dry run's verdict (nil for a real migration).
    public var dryRun: DryRunVerdict?
    /// `--copy-storage`: the disks' apparent and allocated bytes, the blocks sent in the
    /// pause, and (`--verify-storage`) each image's SHA-256 at the pause on both sides.
    public var diskBytes: UInt64 = 0
    public var diskAllocated: UInt64 = 0
    public var finalDiskBlocks = 0
    public var diskHashes: [String: String] = [:]
    public var targetDiskHashes: [String: String] = [:]
    /// Volumes the target took through their in-sync mirror: none of their data moved.
    public var mirrorVolumes: [String] = []
    /// Where the downtime went, and the target it had.
    public var downtimeParts = DowntimeBreakdown()
    public var downtimeTargetMs: Double = 0
    /// "downtime X ms exceeded the Y ms target: <part> took Z ms", when it did.
    public var downtimeWarning: String?
    /// When the source paused the guest: wall clock (compared with the target's) and monotonic.
    var pausedAtWallNs: UInt64 = 0
    var pausedAtMonotonic: Double = 0

    public var wireBytes: UInt64 { rounds.reduce(0) { $0 + $1.wireBytes } }
    public var rawBytes: UInt64 { rounds.reduce(0) { $0 + $1.rawBytes } }
    public var zeroPages: Int { rounds.reduce(0) { $0 + $1.zeroPages } }
    public var dataPages: Int { rounds.reduce(0) { $0 + $1.dataPages } }

    public var json: [String: Any] {
        ["setup_ms": setupMs.rounded3, "total_ms": totalMs.rounded3, "downtime_ms": downtimeMs.rounded3,
         "downtime_ack_ms": downtimeAckMs.rounded3, "target_resume_ms": targetResumeMs.map(\.rounded3) ?? NSNull(), "state_bytes": stateBytes, "state_ms": stateMs.rounded3,
         "memory_bytes": memoryBytes, "bytes_on_wire": wireBytes, "raw_page_bytes": rawBytes,
         "pages_sent": dataPages, "zero_pages": zeroPages,
         "compression": compression,
         "compression_ratio": wireBytes == 0 ? 1 : (Double(rawBytes) / Double(wireBytes)).rounded3,
         "max_throttle_percent": maxThrottle, "endpoint": endpoint, "connections": connections,
         "rounds": rounds.map(\.json), "downtime_parts_ms": downtimeParts.json, "downtime_target_ms": downtimeTargetMs]
            .merging(diskJSON) { a, _ in a }.merging(mirrorJSON) { a, _ in a }
            .merging(dryRun.map { ["eligible": $0.eligible, "reasons": $0.reasons] } ?? [:]) { a, _ in a }
            .merging(downtimeWarning.map { ["downtime_warning": $0] } ?? [:]) { a, _ in a }
    }
}
