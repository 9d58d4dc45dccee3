import Machine

/// `send --dry-run`, the LDOM tool's first two phases for real: connect, authenticate, and
/// have the target run every pre-check and build the machine paused, then tear it down. The
/// guest never pauses here; the target goes on waiting for the real migration.
extension MigrationSource {
    /// The report of a dry run: `dryRun` holds the verdict, with every reason the guest could
    /// not move (a connection or handshake failure is one).
    func dryRun(_ session: SourceSession) -> MigrationReport {
        var reasons: [String]
        do {
            try SourceConnect().run(session)
            let conn = try session.conn()
            let description = try session.describe()
            try conn.send(.config, bytes: try FDTCodec.encode(description.stateNode))
            let verdict = try conn.expect(DryRunVerdict.self)
            reasons = Array(verdict.reasons.prefix(64).map { String($0.prefix(1000)) })
            if !verdict.eligible && reasons.isEmpty { reasons = ["the target says the guest cannot move, without a reason"] }
            if verdict.eligible && !reasons.isEmpty { reasons.insert("the target's verdict contradicts itself", at: 0) }
        } catch {
            reasons = ["\(error)"]
        }
        session.connection?.close()
        var report = session.report
        report.totalMs = (Clock.monotonic() - session.started) * 1000
        report.dryRun = DryRunVerdict(eligible: reasons.isEmpty, reasons: reasons)
        let line = reasons.isEmpty ? "eligible" : "not eligible: " + reasons.joined(separator: "; ")
        progress.update { $0.phase = .idle; $0.dryRuns += 1; $0.lastDryRun = line }
        return report
    }
}
