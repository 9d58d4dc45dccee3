import Glibc
import Machine

/// The source's side of the downtime: each part timed, the fixed costs probed during pre-copy,
/// and the verdict against the target once the guest runs on the other side.
extension SourceSession {
    /// Pauses the vCPUs, then quiesces the devices, timing both (the stop-and-copy's `freeze`).
    func timedFreeze() -> Bool {
        let t0 = Clock.monotonic()
        guard vm.pause() else { return false }
        let t1 = Clock.monotonic()
        vm.devices.quiesce()
        let t2 = Clock.monotonic()
        report.downtimeParts.pauseMs = (t1 - t0) * 1000
        report.downtimeParts.drainMs = (t2 - t1) * 1000
        return true
    }

    /// A switch-over's fixed costs have never been seen above this here; below it they cannot
    /// change the decision, and the guest is spared the probe.
    static let plausibleFixedMs = 5.0

    /// Probes the fixed costs when they could decide whether `dirtyPages` fit the target.
    func probeIfItMatters(dirtyPages: Int) {
        guard !policy.costs.probed else { return }
        if policy.predictedDowntimeMs(dirtyPages: dirtyPages) + Self.plausibleFixedMs > options.downtimeMs { probeSwitchOverCosts() }
    }

    /// Times, once during pre-copy, what a stop-and-copy costs besides pages: pausing the
    /// vCPUs, quiescing the devices and saving the state. The guest pauses for that long
    /// (about a millisecond here) and runs on; a guest its user paused is left alone.
    func probeSwitchOverCosts() {
        guard !policy.costs.probed, !vm.isPaused else { return }
        policy.costs.probed = true
        let t0 = Clock.monotonic()
        guard vm.pause() else { return }
        let t1 = Clock.monotonic()
        vm.devices.quiesce()
        let t2 = Clock.monotonic()
        let blob = (try? vm.saveMachineState()).flatMap { try? FDTCodec.encode($0) }
        let t3 = Clock.monotonic()
        vm.thaw()
        policy.costs.pauseMs = (t1 - t0) * 1000
        policy.costs.drainMs = (t2 - t1) * 1000
        policy.costs.stateSaveMs = (t3 - t2) * 1000
        policy.costs.stateBytes = blob?.count ?? 0
    }

    /// The target's dry-load time from `accept`, if it is a plausible figure.
    func learnStateLoad(_ accept: Accept) {
        if let ms = accept.stateLoadMs, ms.isFinite, ms >= 0, ms < 60_000 { policy.costs.stateLoadMs = ms }
    }

    /// Records one request/answer exchange (a round end and its ack) taking `ms`.
    func learnRoundTrip(_ ms: Double) {
        policy.costs.roundTripMs = min(policy.costs.roundTripMs, ms)
    }

    /// After `ready`: the state's time on the wire is what the exchange took beyond the
    /// target's own load time.
    func recordStateTransfer(sentAt: Double, ready: Ready) {
        let exchange = (Clock.monotonic() - sentAt) * 1000
        var load = 0.0
        if let ms = ready.stateLoadMs, ms.isFinite, ms >= 0 { load = min(ms, exchange) }
        report.downtimeParts.stateLoadMs = load
        report.downtimeParts.stateTransferMs = exchange - load
    }

    /// Saves the paused guest's machine state and sends it (the state save timed into the
    /// downtime's parts); returns when it was sent, for `awaitReady`.
    func sendState(stateStart: Double) throws -> Double {
        let state: StateNode
        do { state = try vm.saveMachineState() } catch { throw MigrationError.machine("saving machine state: \(error)") }
        let blob = try FDTCodec.encode(state)
        let conn = try conn()
        let sentAt = Clock.monotonic()
        report.downtimeParts.stateSaveMs = (sentAt - stateStart) * 1000
        try conn.send(.state, bytes: blob)
        Faults.hit(.afterState, .source, conn)
        report.stateBytes = blob.count
        return sentAt
    }

    /// The target's `ready` for the state sent at `sentAt` (its load and the exchange timed).
    func awaitReady(sentAt: Double) throws -> Ready {
        let conn = try conn()
        let ready = try conn.expect(Ready.self)
        readyAt = Clock.monotonic()
        recordStateTransfer(sentAt: sentAt, ready: ready)
        Faults.hit(.afterReady, .source, conn)
        return ready
    }

    /// Test hook: stay paused before committing, cancellable.
    func holdBeforeCommit() throws {
        guard options.holdBeforeCommitMs > 0 else { return }
        let until = Clock.monotonic() + options.holdBeforeCommitMs / 1000
        while Clock.monotonic() < until {
            try cancellation.check()
            usleep(10_000)
        }
    }

    /// The `go` message: the commit, with what the target needs to judge the downtime.
    func goMessage() -> Go {
        Go(pausedAtNs: report.pausedAtWallNs, downtimeTargetMs: options.downtimeMs, downtime: report.downtimeParts)
    }

    /// Once the downtime is known: `resume` is the rest of it (`go` on the wire and the
    /// target resuming), and the warning when it exceeded the target.
    func finishDowntime() {
        var parts = report.downtimeParts
        let known = parts.parts.filter { $0.key != "resume" }.reduce(0) { $0 + $1.ms }
        parts.resumeMs = max(0, report.downtimeMs - known)
        report.downtimeParts = parts
        report.downtimeTargetMs = options.downtimeMs
        report.downtimeWarning = parts.warning(downtimeMs: report.downtimeMs, targetMs: options.downtimeMs)
    }
}
