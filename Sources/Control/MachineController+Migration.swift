import Foundation
import Glibc
import Machine
import Migration

/// The source side of a migration as QMP sees it: `migrate` starts it in the background,
/// `query-migrate` and MIGRATION events follow it, `migrate_cancel` stops it.
extension MachineController {
    /// The outgoing migration's state, under `lock`.
    struct Outgoing {
        /// A migration job is on the worker.
        var running = false
        /// QMP's status of the last migration (nil: none ever started).
        var status: String?
        var report: MigrationReport?
        /// The client that started it, and whether it has hung up since.
        var client: Int?
        var clientGone = false
    }

    func migrate(to endpoint: Endpoint, copyStorage: Bool = false, client: Int) -> Result<Any, QMPError> {
        guard let vm else {
            return .failure(.generic(target != nil ? "the guest is still arriving here (inmigrate)" : "no guest is running"))
        }
        lock.lock()
        if outgoing.running || sourceRef?.progress.snapshot.phase == .inDoubt {
            let inDoubt = sourceRef?.progress.snapshot.phase == .inDoubt
            lock.unlock()
            return .failure(.generic(inDoubt ? "the last migration's outcome is in doubt: resume the guest here (cont) or stop it (quit) first"
                                             : "There's a migration process in progress"))
        }
        var options = parameters.sendOptions(to: endpoint)
        if copyStorage { options.copyStorage = true }
        let s = MigrationSource(vm: vm, options: options)
        sourceRef = s
        outgoing = Outgoing(running: true, status: nil, report: nil, client: client, clientGone: false)
        lock.unlock()
        s.progress.observePhase { [weak self] phase in self?.sourcePhaseChanged(phase) }
        migrations.submit { [weak self] in
            let result = Result { try s.run() }
            self?.migrationEnded(s, result)
        }
        return .success([String: Any]())
    }

    /// Announces a status change before the end; the end is announced once its figures are kept.
    private func sourcePhaseChanged(_ phase: MigrationPhase) {
        guard let status = MigrationInfo.status(of: phase), !MigrationInfo.isFinal(status) else { return }
        let changed = lock.withLock { () -> Bool in
            guard outgoing.running, outgoing.status != status else { return false }
            outgoing.status = status
            return true
        }
        if changed { events.emit("MIGRATION", ["status": status]) }
    }

    private func migrationEnded(_ s: MigrationSource, _ result: Result<MigrationReport, Error>) {
        if case .failure(let error) = result, case .inDoubt(let why)? = error as? MigrationError {
            FileHandle.standardError.write(Data("swiftvmm: migration outcome unknown: \(why)\n".utf8))
        }
        let status = MigrationInfo.status(of: s.progress.snapshot.phase) ?? "failed"
        lock.withLock {
            outgoing.report = try? result.get()
            outgoing.status = MigrationInfo.isFinal(status) ? status : "failed"
            outgoing.running = false
            lock.broadcast()
        }
        events.emit("MIGRATION", ["status": MigrationInfo.isFinal(status) ? status : "failed"])
    }

    /// `x-swiftvmm-migrate-dry-run`: runs on the migration thread and waits for the verdict.
    func dryRun(to endpoint: Endpoint) -> Result<Any, QMPError> {
        guard let vm else { return .failure(.generic("no guest is running")) }
        var options = lock.withLock { parameters.sendOptions(to: endpoint) }
        options.dryRun = true
        guard !lock.withLock({ outgoing.running }) else { return .failure(.generic("There's a migration process in progress")) }
        let s = MigrationSource(vm: vm, options: options)
        do {
            let report = try migrations.run { try s.run() }
            guard let verdict = report.dryRun else { return .failure(.generic("the dry run gave no verdict")) }
            return .success(["eligible": verdict.eligible, "reasons": verdict.reasons])
        } catch { return .failure(QMPError(.generic, "\(error)")) }
    }

    func cancelMigration() -> Result<Any, QMPError> {
        let (s, t) = lock.withLock { (sourceRef, targetRef) }
        if let s, lock.withLock({ outgoing.running }) {
            s.cancel("migration cancelled by the user")
            return .success([String: Any]())
        }
        if let t, ![.completed, .failed, .cancelled, .inDoubt].contains(t.progress.snapshot.phase) {
            t.cancel("migration cancelled on the target by the user")
            return .success([String: Any]())
        }
        // QEMU answers success when nothing is migrating; swiftvmm says so, for `cancel` to report.
        return .failure(.generic("no migration is in progress"))
    }

    /// `query-migrate`: on the source, the outgoing migration; on a target, the incoming one.
    func migrationInfo() -> [String: Any] {
        let (s, t, o) = lock.withLock { (sourceRef, targetRef, outgoing) }
        if let s {
            return MigrationInfo.json(status: o.status, progress: s.progress.snapshot, report: o.report)
        }
        guard let p = t?.progress.snapshot else { return [:] }
        return MigrationInfo.json(status: MigrationInfo.status(of: p.phase), progress: p, report: nil)
    }

    func clientClosed(_ client: Int) {
        lock.withLock {
            guard outgoing.client == client else { return }
            outgoing.clientGone = true
            lock.broadcast()
        }
    }

    /// After the guest moved away: waits (at most `timeout` s) until the migration's end has
    /// been announced and the client that started it has hung up (or a `quit` came), so that
    /// it can read the outcome before this process goes away.
    public func waitForMigrationClient(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        while (outgoing.running || !outgoing.clientGone) && !quitRequested && Date() < deadline { _ = lock.wait(until: deadline) }
        lock.unlock()
        events.flush(timeout: 2)
    }
}

/// `query-migrate`'s reply in QEMU's shape (`MigrationInfo`), with swiftvmm's own figures under
/// `x-swiftvmm-progress` and, once completed, `x-swiftvmm-report`.
enum MigrationInfo {
    static let pageSize: UInt64 = 4096

    /// QMP's `MigrationStatus` for a phase; nil before anything started.
    static func status(of phase: MigrationPhase) -> String? {
        switch phase {
        case .idle: return nil
        case .setup, .waiting: return "setup"
        case .precopy, .stopAndCopy, .handoff, .receiving: return "active"
        case .completed: return "completed"
        case .failed, .inDoubt: return "failed"
        case .cancelled: return "cancelled"
        }
    }

    static func isFinal(_ status: String) -> Bool { ["completed", "failed", "cancelled"].contains(status) }

    static func json(status: String?, progress p: MigrationProgress, report: MigrationReport?) -> [String: Any] {
        guard let status else { return [:] }
        var d: [String: Any] = ["status": status, "x-swiftvmm-progress": p.json]
        let elapsedMs = Int((Date().timeIntervalSince(p.startedAt) * 1000).rounded())
        var ram: [String: Any] = [
            "transferred": p.wireBytes, "total": p.memoryBytes, "page-size": pageSize, "dirty-sync-count": p.round,
            "dirty-pages-rate": Int(p.dirtyPagesPerSecond.rounded()), "mbps": (p.rateBytesPerSecond * 8 / 1e3).rounded() / 1e3,
            "remaining": status == "completed" ? 0 : remaining(p),
        ]
        switch status {
        case "completed":
            if let r = report {
                d["total-time"] = Int(r.totalMs.rounded())
                d["downtime"] = Int(r.downtimeMs.rounded())
                d["setup-time"] = Int(r.setupMs.rounded())
                d["x-swiftvmm-report"] = r.json
                ram["transferred"] = r.wireBytes
                ram["normal"] = r.dataPages
                ram["normal-bytes"] = UInt64(r.dataPages) * pageSize
                ram["duplicate"] = r.zeroPages
            }
        case "active", "setup":
            d["total-time"] = elapsedMs
            d["expected-downtime"] = Int(p.predictedDowntimeMs.rounded())
            if p.throttlePercent > 0 { d["cpu-throttle-percentage"] = p.throttlePercent }
        default:
            if let e = p.error { d["error-desc"] = e }
        }
        if status != "setup" { d["ram"] = ram }
        return d
    }

    /// Bytes still to send: what round 0 has not covered yet, then the dirty set.
    private static func remaining(_ p: MigrationProgress) -> UInt64 {
        if p.round == 0 { return p.memoryBytes > p.memoryCovered ? p.memoryBytes - p.memoryCovered : 0 }
        return UInt64(max(0, p.remainingDirtyPages)) * pageSize
    }
}
