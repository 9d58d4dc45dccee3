import Glibc
import Machine

/// Connect to the target and run the handshake.
final class SourceConnect: MigrationStep {
    var phase: MigrationPhase { .setup }

    func run(_ s: SourceSession) throws {
        MessageCodec.warmUp()
        let conn = Connection(fd: try Transport.connect(s.options.endpoint))
        conn.idleTimeout = s.options.timeout
        Transport.setTCPTimeouts(conn.fd, seconds: s.options.timeout)
        s.connection = conn
        s.cancellation.attach(conn)
        try s.cancellation.check()
        let hello = Hello(streamVersion: s.options.streamVersion, vmmVersion: SwiftVMMVersion.string,
                          name: s.vm.config.name, uuid: s.uuid, nonce: "", hasKey: false)
        s.handshake = try Handshake.initiate(conn, hello: hello, key: s.options.key)
        Faults.hit(.afterHello, .source, conn)
    }
}

/// Send the machine's description; the target checks it can host the guest and builds it.
final class SourcePreCheck: MigrationStep {
    var phase: MigrationPhase { .setup }

    func run(_ s: SourceSession) throws {
        let conn = try s.conn()
        let description = try s.describe()
        try conn.send(.config, bytes: try FDTCodec.encode(description.stateNode))
        let accept = try conn.expect(Accept.self)
        let present = Set(accept.mirrorVolumes ?? [])
        s.mirrorSkips = description.mirrors.filter { $0.inSync && present.contains($0.volume) }
        if let odd = present.first(where: { v in !s.mirrorSkips.contains { $0.volume == v } }) {
            throw MigrationError.stream("the target takes volume '\(odd.prefix(64))' through a mirror this source does not have in sync")
        }
        s.report.mirrorVolumes = s.mirrorSkips.map(\.volume)
        s.learnStateLoad(accept)
        try s.openChannels(accept, count: description.channels)
        try s.finishPreCheck(conn)
    }
}

/// Dirty logging on; round 0 sends every page the host ever backed; later rounds send what
/// the guest (and the devices) wrote since the previous one, until the policy says the rest
/// fits in the downtime target — or `--max-time` gives up.
final class SourcePreCopy: MigrationStep {
    var phase: MigrationPhase { .precopy }
    private var logging = false
    private var lastCollect = Clock.monotonic()

    func run(_ s: SourceSession) throws {
        do { try s.vm.startDirtyLog() } catch { throw MigrationError.machine("cannot start dirty logging: \(error)") }
        logging = true
        lastCollect = Clock.monotonic()
        let conn = try s.conn()
        try s.startDiskCopy()
        s.encoder = PageEncoder(memory: s.vm.memory, connection: conn, compression: s.options.compression)
        // Round 0: every page the host ever backed; untouched pages are zero on both sides.
        s.roundStart = Clock.monotonic()
        s.limiter.reset()
        try s.sendPages(bitmaps: nil, resident: s.vm.memory.regions.map { $0.residentPages() }, dirty: 0,
                        betweenBatches: betweenBatches(s, conn))
        try s.sendDiskBulkRest()
        try s.finishRound(dirty: 0, dirtyRate: 0)
        s.progress.update { $0.memoryCovered = $0.memoryBytes; $0.round = 1 }
        s.pending = s.vm.memory.regions.map { [UInt64](repeating: 0, count: $0.bitmapWords) }
        s.round = 1
        while try nextRound(s) {}
    }

    /// What runs after each batch (or, while several connections send, every few ms): the
    /// fault points, round 0's disk runs, a look for the target's error or a cancel, progress.
    private func betweenBatches(_ s: SourceSession, _ conn: Connection) -> (Int) throws -> Void {
        var totalWire: UInt64 = 0
        var faultedRounds = Set<Bool>()
        return { [s] wire in
            totalWire += UInt64(wire)
            if wire > 0 && faultedRounds.insert(s.round > 0).inserted {
                Faults.hit(s.round > 0 ? .midRoundN : .midRound0, .source, conn)
            }
            if s.round == 0 { try s.sendDiskBulkRun() }
            if conn.hasIncoming() {
                // Mid-round the target only speaks to report an error or a cancel.
                let section = try conn.receive()
                try Connection.raiseIfAbort(section)
                throw MigrationError.stream("unexpected \(section.type.name) from the target during a round")
            }
            try s.cancellation.check()
            s.progress.update {
                $0.wireBytes = totalWire
                // Several connections: `sendPages` counts the windows done instead.
                if $0.round == 0 && wire > 0 && s.channels == nil {
                    $0.memoryCovered = min($0.memoryBytes, $0.memoryCovered + UInt64(PageBatch.windowPages * PageBatch.pageSize))
                }
            }
        }
    }

    /// Collects the dirty set and sends it as a round; false once it is time to stop and copy.
    private func nextRound(_ s: SourceSession) throws -> Bool {
        try s.cancellation.check()
        try checkMaxTime(s)
        var dirty = 0
        for (i, region) in s.vm.memory.regions.enumerated() {
            for w in s.pending[i].indices { s.pending[i][w] = 0 }
            do { dirty += try s.vm.collectDirty(region, into: &s.pending[i]) } catch {
                throw MigrationError.machine("cannot read the dirty log: \(error)")
            }
        }
        let now = Clock.monotonic()
        let dirtyRate = Double(dirty) / max(now - lastCollect, 1e-6)
        lastCollect = now
        let dirtyUnits = dirty + s.collectDiskBlocks() * DiskCopySource.pagesPerBlock
        s.probeIfItMatters(dirtyPages: dirtyUnits)
        let (predicted, decision) = s.policy.decide(dirtyPages: dirtyUnits, round: s.round, throttle: s.vm.throttlePercent)
        s.progress.update {
            $0.round = s.round
            $0.dirtyPagesPerSecond = dirtyRate
            $0.rateBytesPerSecond = s.policy.bandwidth
            $0.predictedDowntimeMs = predicted
            $0.remainingDirtyPages = dirty
        }
        guard case .nextRound(let throttle) = decision else { return false }
        if let t = throttle {
            s.vm.setThrottle(percent: t)
            s.report.maxThrottle = max(s.report.maxThrottle, t)
            s.progress.update { $0.throttlePercent = t }
        }
        s.roundStart = Clock.monotonic()
        try s.sendPages(bitmaps: s.pending, resident: nil, dirty: dirty, betweenBatches: betweenBatches(s, try s.conn()))
        try s.sendDiskPending()
        try s.finishRound(dirty: dirty, dirtyRate: dirtyRate)
        s.round += 1
        return true
    }

    private func checkMaxTime(_ s: SourceSession) throws {
        guard let maxTime = s.options.maxTime, Clock.monotonic() - s.started > maxTime else { return }
        let p = s.progress.snapshot
        throw MigrationError.timeout(String(format: "did not converge within --max-time %gs: guest dirties %.0f pages/s (%.1f MB/s), link carries %.1f MB/s; the guest keeps running on the source",
                                            maxTime, p.dirtyPagesPerSecond, p.dirtyPagesPerSecond * 4096 / 1e6, p.rateBytesPerSecond / 1e6))
    }

    func rollback(_ s: SourceSession) {
        if logging { s.vm.stopDirtyLog() }
        s.diskCopy?.stop()
        s.vm.setThrottle(percent: 0)
    }
}

/// Pause the guest at a safe point, drain the devices, send the last dirty pages and the
/// machine state, and wait until the target has loaded it.
final class SourceStopAndCopy: MigrationStep {
    var phase: MigrationPhase { .stopAndCopy }
    private var paused = false

    func run(_ s: SourceSession) throws {
        try s.cancellation.check()
        s.report.pausedAtWallNs = Clock.wallNanos()
        s.report.pausedAtMonotonic = Clock.monotonic()
        guard s.timedFreeze() else { throw MigrationError.machine("the guest stopped during migration") }
        paused = true
        try s.checkMirrorsAtPause()
        s.limiter.disable()
        guard let encoder = s.encoder else { throw MigrationError.machine("stop-and-copy without pre-copy") }
        encoder.memoryIsStable = true
        s.channels?.setMemoryStable(true)
        s.roundStart = Clock.monotonic()
        var finalDirty = 0
        for (i, region) in s.vm.memory.regions.enumerated() {
            var extra = [UInt64](repeating: 0, count: region.bitmapWords)
            do { _ = try s.vm.collectDirty(region, into: &extra) } catch {
                throw MigrationError.machine("cannot read the dirty log: \(error)")
            }
            for w in extra.indices { s.pending[i][w] |= extra[w]; finalDirty += s.pending[i][w].nonzeroBitCount }
        }
        let conn = try s.conn()
        try s.sendPages(bitmaps: s.pending, resident: nil, dirty: finalDirty) { [s] _ in
            if conn.hasIncoming() {
                let section = try conn.receive()
                try Connection.raiseIfAbort(section)
                throw MigrationError.stream("unexpected \(section.type.name) from the target during the stop-and-copy")
            }
            try s.cancellation.check()
        }
        s.report.finalPages = finalDirty
        s.report.finalDiskBlocks = s.collectDiskBlocks()
        try s.sendDiskPending()
        try s.finishRound(dirty: finalDirty, dirtyRate: 0)
        s.stopChannels()
        let stateStart = Clock.monotonic()
        s.report.downtimeParts.finalPagesMs = (stateStart - s.roundStart) * 1000
        let sentAt = try s.sendState(stateStart: stateStart)
        let ourHashes = try s.diskHashesAtPause()
        let ready = try s.awaitReady(sentAt: sentAt)
        try s.verifyDisks(ours: ourHashes, theirs: ready.diskHashes)
        s.report.stateMs = (Clock.monotonic() - stateStart) * 1000
        try s.holdBeforeCommit()
        try s.cancellation.check()
    }

    func rollback(_ s: SourceSession) {
        guard paused else { return }
        s.vm.thaw()
    }
}

/// The commit: `go`, then the target's `running`.
final class SourceHandOff: MigrationStep {
    var phase: MigrationPhase { .handoff }

    func run(_ s: SourceSession) throws {
        let conn = try s.conn()
        // A `go` the socket refused was never delivered: the failure rolls back, the guest
        // resumes here. Once it is written, the target may run the guest.
        if let claim = s.claim, !claim.commit() { throw MigrationError.machine("the hand-over claim was no longer open") }
        try conn.send(s.goMessage())
        s.committed = true
        if s.readyAt > 0 { s.report.downtimeParts.commitMs = (Clock.monotonic() - s.readyAt) * 1000 }
        // A handed-over TAP queue is the target's now: it stays attached.
        if !s.options.local { for nic in s.vm.devices.all.compactMap({ $0 as? any AnnouncingDevice }) { nic.leave() } }
        Faults.hit(.afterGo, .source, conn)
        let running: Running
        do { running = try conn.expect(Running.self) } catch {
            // In doubt: keep the paused copy; the operator decides which side runs the guest.
            s.inDoubt = true
            throw MigrationError.inDoubt("the target never confirmed it runs the guest after `go` (\(error)); the guest is paused here — resume it here (swiftvmm cont) only if the target does not run it, else stop it (swiftvmm quit)")
        }
        let ack = Clock.monotonic()
        let pausedMono = s.report.pausedAtMonotonic
        if running.resumedAtNs > s.report.pausedAtWallNs {
            s.report.downtimeMs = Double(running.resumedAtNs - s.report.pausedAtWallNs) / 1e6
        } else {
            s.report.downtimeMs = (ack - pausedMono) * 1000
        }
        s.report.downtimeAckMs = (ack - pausedMono) * 1000
        s.report.targetResumeMs = running.resumeMs
        s.report.totalMs = (ack - s.started) * 1000
        s.finishDowntime()
        conn.close()
        s.vm.stop(.migrated)
    }
}

extension SourceSession {
    /// The guest as the target's pre-check sees it: the machine, the connections its pages
    /// take, the disks that would travel and the mirrors (a dry run describes it the same way).
    func describe() throws -> MachineDescription {
        var description = MachineDescription.of(vm, uuid: uuid)
        description.channels = options.connectionCount
        if options.copyStorage { description.storage = try DiskCopySource.plan(vm, verify: options.verifyStorage) }
        description.mirrors = vm.devices.disks.compactMap { $0.mirror.map { MirrorClaim($0.status) } }
        description.handover = options.local
        description.dryRun = options.dryRun
        return description
    }

    /// The end of a pre-check the target accepted: its fault point, a last look for a cancel,
    /// and the set-up time.
    func finishPreCheck(_ conn: Connection) throws {
        Faults.hit(.afterPrecheck, .source, conn)
        try cancellation.check()
        report.setupMs = (Clock.monotonic() - started) * 1000
    }
}
