import Foundation
import Synchronization
import Machine

/// How `send` migrates.
public struct SendOptions: Sendable {
    public var endpoint: Endpoint
    /// Switch to stop-and-copy when the predicted downtime is within this.
    public var downtimeMs: Double = 50
    /// Bytes per second on the wire during pre-copy (nil = unlimited).
    public var maxBandwidth: Double?
    public var compression: Compression = .lz4
    /// Give up (the guest stays on the source) after this many seconds.
    public var maxTime: Double?
    public var autoConverge = true
    public var key: [UInt8]?
    /// The stream version announced (tests use it to simulate an incompatible peer).
    public var streamVersion: UInt32 = Wire.streamVersion
    /// Test hook: stay paused this long in stop-and-copy before committing (cancel still works).
    public var holdBeforeCommitMs: Double = 0
    /// Give up when the target makes no progress for this many seconds (nil: never).
    public var timeout: Double? = 30
    /// Only connect, authenticate and have the target check and build the machine, then tear
    /// it down: the report says whether the guest could move, and every reason it could not.
    public var dryRun = false
    /// Copy every disk in the stream (the target has no shared storage): `send --copy-storage`.
    public var copyStorage = false
    /// With `copyStorage`: hash both sides' images at the pause; commit only when they match.
    public var verifyStorage = false
    /// Local hand-over: pass guest RAM (memfds), disks and TAP queues as descriptors over the
    /// UNIX socket instead of copying pages; only vCPU and device state cross.
    public var local = false
    /// Connections the pages travel on (nil: 1 on a UNIX socket, 4 over TCP).
    public var connections: Int?

    public init(endpoint: Endpoint) { self.endpoint = endpoint }

    /// Connections the pages of this migration travel on: `connections`, else 1 on a UNIX
    /// socket (one sender already outruns the receiver on one host) and 4 over TCP (a
    /// cross-host link rarely fills from one stream); always 1 for a hand-over or a dry run.
    public var connectionCount: Int {
        if local || dryRun { return 1 }
        if let connections { return connections }
        if case .tcp = endpoint { return 4 }
        return 1
    }
}

/// The sending side of a live migration. `run()` blocks until the guest runs on the target
/// (the local machine is then stopped with `.migrated`) or the migration failed (the guest
/// runs here as before).
///
/// Phases (`SourcePhases.swift`): connect and authenticate → pre-check → pre-copy →
/// stop-and-copy → hand-off. After the final pages and the machine state, the target loads
/// everything and answers `ready`; the source then sends `go` — its commit point, after which
/// it never resumes the guest — and the target resumes and answers `running`. Before `go` any
/// failure rolls every phase back (the guest runs here, unharmed) and the target discards
/// everything; so exactly one copy runs.
public final class MigrationSource: @unchecked Sendable {
    let vm: VM
    let options: SendOptions
    public let progress = ProgressBox()
    public let uuid: String
    private let cancellation = Cancellation()
    private let inDoubtSession = Mutex<SourceSession?>(nil)

    public init(vm: VM, options: SendOptions, uuid: String = UUID().uuidString.lowercased()) {
        self.vm = vm
        self.options = options
        self.uuid = uuid
    }

    /// Asks the migration to stop before commit; the guest keeps running here. A handshake or
    /// hand-off blocked on the peer is interrupted at once; pre-copy notices between batches
    /// and tells the target politely.
    public func cancel(_ reason: String = "migration cancelled") {
        let phase = progress.snapshot.phase
        cancellation.cancel(reason, interrupt: phase == .setup || phase == .handoff || phase == .idle)
    }

    /// After an in-doubt hand-off, the operator's choice to run the guest here: the devices and
    /// vCPUs resume, dirty logging and throttling stop. Returns false when nothing was in doubt.
    @discardableResult
    public func resumeHere() -> Bool {
        guard let s = inDoubtSession.withLock({ s -> SourceSession? in defer { s = nil }; return s }) else { return false }
        if let claim = s.claim, !claim.takeBackForSource() {
            inDoubtSession.withLock { $0 = s }
            return false
        }
        s.vm.stopDirtyLog()
        s.vm.setThrottle(percent: 0)
        s.vm.thaw()
        progress.update { $0.phase = .failed; $0.error = "resumed on the source after an in-doubt hand-off" }
        return true
    }

    /// After an in-doubt local hand-over: the target took the guest and ran it on the shared
    /// memory, so this paused copy is stale and must never resume.
    public var guestTakenByTarget: Bool { inDoubtSession.withLock { $0?.claim?.takenByTarget } ?? false }

    public func run() throws -> MigrationReport {
        progress.update {
            $0 = MigrationProgress()
            $0.phase = .setup
            $0.memoryBytes = vm.memory.totalSize
            $0.peer = options.endpoint.description
        }
        let session = SourceSession(vm: vm, options: options, uuid: uuid, progress: progress, cancellation: cancellation)
        if options.dryRun { return dryRun(session) }
        var runner = PhaseRunner(session: session, progress: progress, committed: { session.committed })
        do {
            try runner.run(SourceConnect())
            if options.local {
                try runner.run(SourceLocalOffer())
                try runner.run(SourceLocalStop())
            } else {
                try runner.run(SourcePreCheck())
                try runner.run(SourcePreCopy())
                try runner.run(SourceStopAndCopy())
            }
            try runner.run(SourceHandOff())
            progress.update {
                $0.phase = .completed
                $0.predictedDowntimeMs = session.report.downtimeMs
                $0.warning = session.report.downtimeWarning
            }
            return session.report
        } catch {
            let error = cancellation.explain(error).naming(phase: progress.snapshot.phase, guest: "the guest keeps running on the source")
            let cancelled = (error as? MigrationError)?.isCancellation == true
            if !session.committed, let conn = session.connection {
                try? conn.send(CancelNotice(desc: cancelled ? "migration cancelled on the source" : "source aborted: \(error)"))
            }
            runner.rollBack()
            session.stopChannels(error)
            session.connection?.close()
            let phase: MigrationPhase = session.inDoubt ? .inDoubt : (cancelled ? .cancelled : .failed)
            progress.update { $0.phase = phase; $0.error = "\(error)"; $0.throttlePercent = 0 }
            if session.inDoubt { inDoubtSession.withLock { $0 = session } }
            throw error
        }
    }
}

/// What the source's phases share.
final class SourceSession: @unchecked Sendable {
    let vm: VM
    let options: SendOptions
    let uuid: String
    let progress: ProgressBox
    let cancellation: Cancellation
    let started = Clock.monotonic()
    var connection: Connection?
    var report = MigrationReport()
    /// `go` was sent: from here on nothing is rolled back.
    var committed = false
    /// `go` was sent and `running` never came: the paused guest waits for the operator.
    var inDoubt = false
    /// A local hand-over's claim on the guest (`HandoverClaim`).
    var claim: HandoverClaim?
    var policy: ConvergencePolicy
    let limiter: RateLimiter
    var encoder: PageEncoder?
    /// The sending lanes of `--connections N` (N > 1).
    var channels: PageChannels?
    /// The last round's pages went over every connection (else only over the first).
    var roundSpread = false
    /// What the handshake established (the nonces extra connections derive their keys from).
    var handshake: Handshake.Result?
    /// The disks travelling in the stream (`--copy-storage`).
    var diskCopy: DiskCopySource?
    /// Volumes the target takes through their in-sync mirror, in the generation it confirmed.
    var mirrorSkips: [MirrorClaim] = []
    /// Pages collected in the last pre-copy round and not yet sent, per RAM region.
    var pending: [[UInt64]] = []
    var round = 0
    var roundStart = Clock.monotonic()
    /// When the target's `ready` arrived (the commit's part of the downtime starts).
    var readyAt = 0.0

    init(vm: VM, options: SendOptions, uuid: String, progress: ProgressBox, cancellation: Cancellation) {
        self.vm = vm
        self.options = options
        self.uuid = uuid
        self.progress = progress
        self.cancellation = cancellation
        self.policy = ConvergencePolicy(downtimeTargetMs: options.downtimeMs, autoConverge: options.autoConverge,
                                        maxBandwidth: options.maxBandwidth)
        self.limiter = RateLimiter(bytesPerSecond: options.maxBandwidth)
        report.compression = options.compression.rawValue
        report.memoryBytes = vm.memory.totalSize
        report.endpoint = options.endpoint.description
    }

    func conn() throws -> Connection {
        guard let c = connection else { throw MigrationError.connection("not connected") }
        return c
    }

    /// Ends a round: the target acknowledges once every page is in place (compressed pages
    /// are so small that socket buffers could otherwise hide seconds of its work), and the
    /// round's figures go into the report, the policy and the target's status.
    func finishRound(dirty: Int, dirtyRate: Double) throws {
        let c = try conn()
        let endSent = Clock.monotonic()
        try c.send(RoundEnd(round: round, firstOnly: channels != nil && !roundSpread ? true : nil))
        _ = try c.expect(RoundAck.self)
        learnRoundTrip((Clock.monotonic() - endSent) * 1000)
        guard let encoder else { return }
        let counters = pageCounters(encoder)
        let secs = max(Clock.monotonic() - roundStart, 1e-6)
        var stats = RoundStats(round: round, dirtyPages: dirty, dataPages: counters.dataPages, zeroPages: counters.zeroPages,
                               wireBytes: counters.wireBytes, rawBytes: counters.rawBytes, durationMs: secs * 1000,
                               dirtyPagesPerSecond: dirtyRate, bandwidthBytesPerSecond: Double(counters.wireBytes) / secs,
                               throttlePercent: vm.throttlePercent)
        recordDiskRound(&stats, seconds: secs)
        report.rounds.append(stats)
        policy.record(stats)
        try c.send(RoundProgress(round: round, dirtyPagesPerS: dirtyRate.rounded(), bandwidthMBps: (stats.bandwidthBytesPerSecond / 1e6).rounded3,
                                 throttlePercent: stats.throttlePercent), optional: true)
        encoder.resetCounters()
        channels?.resetCounters()
    }
}

extension MigrationError {
    var isCancellation: Bool { if case .cancelled = self { return true }; return false }
}
