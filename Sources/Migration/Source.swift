import Foundation
import Glibc
import Machine
import Synchronization

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

    public init(endpoint: Endpoint) { self.endpoint = endpoint }
}

/// The sending side of a live migration. `run()` blocks until the guest runs on the target
/// (the local machine is then stopped with `.migrated`) or the migration failed (the guest
/// runs here as before).
///
/// Hand-off: after the final pages and the machine state, the target loads everything and
/// answers `ready`; the source then sends `go` — its commit point, after which it never
/// resumes the guest — and the target resumes and answers `running`. Before `go` any failure
/// resumes the guest here and the target discards everything; so exactly one copy runs.
public final class MigrationSource: @unchecked Sendable {
    let vm: VM
    let options: SendOptions
    public let progress = ProgressBox()
    private let cancelReason = Mutex<String?>(nil)
    private let connectionBox = Mutex<Connection?>(nil)
    public let uuid: String

    public init(vm: VM, options: SendOptions, uuid: String = UUID().uuidString.lowercased()) {
        self.vm = vm
        self.options = options
        self.uuid = uuid
    }

    /// Asks the migration to stop before commit; the guest keeps running here.
    public func cancel(_ reason: String = "migration cancelled") {
        cancelReason.withLock { if $0 == nil { $0 = reason } }
        // A blocked handshake is woken by closing the connection; pre-copy notices the flag
        // between batches and tells the target politely.
        let phase = progress.snapshot.phase
        if phase == .setup || phase == .handoff || phase == .idle {
            connectionBox.withLock { $0?.abort() }
        }
    }

    func checkCancelled() throws {
        if let r = cancelReason.withLock({ $0 }) { throw MigrationError.cancelled(r) }
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func wallNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    public func run() throws -> MigrationReport {
        var committed = false
        var paused = false
        var logging = false
        progress.update { $0 = MigrationProgress(); $0.phase = .setup; $0.memoryBytes = vm.memory.totalSize; $0.peer = options.endpoint.description }
        do {
            return try migrate(committed: &committed, paused: &paused, logging: &logging)
        } catch {
            let wasCancelled: Bool
            if case MigrationError.cancelled = error { wasCancelled = true } else { wasCancelled = cancelReason.withLock { $0 != nil } }
            let conn = connectionBox.withLock { $0 }
            if !committed {
                // Roll back: the guest goes on here, unharmed.
                if let conn {
                    try? conn.send(.cancel, json: ["desc": wasCancelled ? "migration cancelled on the source" : "source aborted: \(error)"])
                    conn.close()
                }
                if logging { vm.stopDirtyLog() }
                vm.setThrottle(percent: 0)
                if paused {
                    vm.unquiesceDevices()
                    vm.resume()
                }
            } else {
                conn?.close()
            }
            let message = "\(error)"
            progress.update { $0.phase = wasCancelled ? .cancelled : .failed; $0.error = message; $0.throttlePercent = 0 }
            throw error
        }
    }

    private func migrate(committed: inout Bool, paused: inout Bool, logging: inout Bool) throws -> MigrationReport {
        var report = MigrationReport()
        report.compression = options.compression.rawValue
        report.memoryBytes = vm.memory.totalSize
        report.endpoint = options.endpoint.description
        let t0 = Self.now()

        // 1. Connect and authenticate.
        let conn = Connection(fd: try Transport.connect(options.endpoint))
        connectionBox.withLock { $0 = conn }
        try checkCancelled()
        try conn.writePreamble(version: options.streamVersion)
        _ = try conn.readPreamble()
        let nonce = Auth.nonce()
        try conn.send(.hello, json: ["stream_version": Int(options.streamVersion), "vmm_version": SwiftVMMVersion.string,
                                     "name": vm.config.name, "uuid": uuid, "nonce": nonce.hexString, "has_key": options.key != nil])
        let reply = try conn.expect(.helloReply).json()
        let peerHasKey = reply["has_key"] as? Bool ?? false
        if let key = options.key {
            guard peerHasKey else {
                conn.sendError("authentication required: the source has a key, the target has none (--key-file)")
                throw MigrationError.auth("the target has no key: start recv with the same --key-file")
            }
            guard let peerNonce = (reply["nonce"] as? String).flatMap([UInt8].init(hexString:)), peerNonce.count == 32,
                  let proof = (reply["proof"] as? String).flatMap([UInt8].init(hexString:)) else {
                throw MigrationError.stream("malformed hello reply from the target")
            }
            guard Auth.equal(proof, Auth.proof(key: key, role: "recv", first: nonce, second: peerNonce)) else {
                conn.sendError("authentication failed: wrong key")
                throw MigrationError.auth("authentication failed: the target's key differs from --key-file")
            }
            try conn.send(.auth, json: ["proof": Auth.proof(key: key, role: "send", first: peerNonce, second: nonce).hexString])
        }

        // 2. Pre-checks on the target.
        let description = MachineDescription.of(vm, uuid: uuid)
        try conn.send(.config, bytes: try FDTCodec.encode(description.stateNode))
        _ = try conn.expect(.accept)
        try checkCancelled()
        report.setupMs = (Self.now() - t0) * 1000

        // 3. Pre-copy.
        progress.update { $0.phase = .precopy }
        try vm.startDirtyLogWrapped()
        logging = true
        var lastCollect = Self.now()
        let encoder = PageEncoder(memory: vm.memory, connection: conn, compression: options.compression)
        let limiter = RateLimiter(bytesPerSecond: options.maxBandwidth)
        var totalWire: UInt64 = 0
        var totalSeconds = 0.0
        encoder.afterBatch = { [self] wire in
            totalWire += UInt64(wire)
            limiter.consume(wire)
            if conn.hasIncoming() {
                // Mid-round the target only speaks to report an error or a cancel.
                let s = try conn.receive()
                if s.type == .error { throw MigrationError.peer(((try? s.json())?["desc"] as? String) ?? "unknown error") }
                throw MigrationError.stream("unexpected \(s.type.name) from the target during a round")
            }
            try checkCancelled()
            progress.update {
                $0.wireBytes = totalWire
                $0.memoryCovered = min($0.memoryBytes, $0.memoryCovered + (($0.round == 0) ? UInt64(PageBatch.windowPages * PageBatch.pageSize) : 0))
            }
        }

        // Round 0: every page the host ever backed; untouched pages are zero on both sides.
        var roundStart = Self.now()
        limiter.reset()
        for region in vm.memory.regions {
            try encoder.send(region: region, bitmap: nil, resident: region.residentPages())
        }
        func finishRound(_ round: Int, dirty: Int, dirtyRate: Double) throws {
            // The round ends when the target has every page in place: compressed pages are so
            // small that socket buffers could otherwise hide seconds of work on the target.
            try conn.send(.roundEnd, json: ["round": round])
            _ = try conn.expect(.roundAck)
            let c = encoder.counters
            let secs = max(Self.now() - roundStart, 1e-6)
            totalSeconds += secs
            let stats = RoundStats(round: round, dirtyPages: dirty, dataPages: c.dataPages, zeroPages: c.zeroPages,
                                   wireBytes: c.wireBytes, rawBytes: c.rawBytes, durationMs: secs * 1000,
                                   dirtyPagesPerSecond: dirtyRate, bandwidthBytesPerSecond: Double(c.wireBytes) / secs,
                                   throttlePercent: vm.throttlePercent)
            report.rounds.append(stats)
            try conn.send(.progress, json: stats.json, optional: true)
            encoder.resetCounters()
        }
        try finishRound(0, dirty: 0, dirtyRate: 0)
        progress.update { $0.memoryCovered = $0.memoryBytes; $0.round = 1 }

        // Later rounds: what was written since the previous collect.
        var bitmaps = vm.memory.regions.map { [UInt64](repeating: 0, count: $0.bitmapWords) }
        var round = 1
        var previousPredicted = Double.infinity
        var stallRounds = 0
        let stateEstimateMs = 1.0
        while true {
            try checkCancelled()
            if let maxTime = options.maxTime, Self.now() - t0 > maxTime {
                let p = progress.snapshot
                throw MigrationError.timeout(String(format: "did not converge within --max-time %gs: guest dirties %.0f pages/s (%.1f MB/s), link carries %.1f MB/s; the guest keeps running on the source",
                                                    maxTime, p.dirtyPagesPerSecond, p.dirtyPagesPerSecond * 4096 / 1e6, p.rateBytesPerSecond / 1e6))
            }
            var dirty = 0
            for (i, region) in vm.memory.regions.enumerated() {
                for w in bitmaps[i].indices { bitmaps[i][w] = 0 }
                dirty += try vm.collectDirtyWrapped(region, into: &bitmaps[i])
            }
            let now = Self.now()
            let dirtyRate = Double(dirty) / max(now - lastCollect, 1e-6)
            lastCollect = now
            // Cost model: what a page cost end to end (scan, compress, wire, rate limit) in the
            // last round big enough to measure, else over all rounds so far. The wire alone is a
            // poor predictor: compressed pages are tiny, but scanning and compressing them is not.
            var bandwidth = totalSeconds > 0 ? Double(totalWire) / totalSeconds : 1e9
            if let cap = options.maxBandwidth { bandwidth = min(bandwidth, cap) }
            let secondsPerPage: Double
            if let l = report.rounds.last, l.dataPages + l.zeroPages >= 64 {
                secondsPerPage = l.durationMs / 1000 / Double(l.dataPages + l.zeroPages)
            } else {
                let pages = report.rounds.reduce(0) { $0 + $1.dataPages + $1.zeroPages }
                secondsPerPage = pages > 0 ? totalSeconds / Double(pages) : Double(PageBatch.pageSize) / max(bandwidth, 1)
            }
            let predicted = Double(dirty) * secondsPerPage * 1000 + stateEstimateMs
            progress.update {
                $0.round = round
                $0.dirtyPagesPerSecond = dirtyRate
                $0.rateBytesPerSecond = bandwidth
                $0.predictedDowntimeMs = predicted
                $0.remainingDirtyPages = dirty
            }
            if predicted <= options.downtimeMs || dirty == 0 { break }
            // Auto-converge: when the prediction stops improving, slow the vCPUs down.
            if predicted >= previousPredicted * 0.9 { stallRounds += 1 } else { stallRounds = 0 }
            previousPredicted = predicted
            if options.autoConverge && stallRounds >= 1 && round >= 2 {
                // Start at 20 % and add at least 10 % per round, or jump to the share of time
                // the vCPUs must lose for the dirty set to shrink to the downtime target.
                let t = vm.throttlePercent
                let needed = Int((100 * (1 - options.downtimeMs / predicted)).rounded(.up))
                let next = min(99, max(t == 0 ? 20 : t + 10, min(needed, t + 40)))
                if next != t {
                    vm.setThrottle(percent: next)
                    report.maxThrottle = max(report.maxThrottle, next)
                    progress.update { $0.throttlePercent = next }
                }
            }
            roundStart = Self.now()
            for (i, region) in vm.memory.regions.enumerated() {
                try encoder.send(region: region, bitmap: bitmaps[i])
            }
            try finishRound(round, dirty: dirty, dirtyRate: dirtyRate)
            round += 1
        }

        // 4. Stop-and-copy: the pages collected last plus whatever was written since.
        progress.update { $0.phase = .stopAndCopy }
        try checkCancelled()
        let pauseWall = Self.wallNanos()
        let pauseMono = Self.now()
        guard vm.pause() else { throw MigrationError.machine("the guest stopped during migration") }
        paused = true
        vm.quiesceDevices()
        limiter.disable()
        encoder.memoryIsStable = true
        roundStart = Self.now()
        var finalDirty = 0
        for (i, region) in vm.memory.regions.enumerated() {
            var extra = [UInt64](repeating: 0, count: region.bitmapWords)
            _ = try vm.collectDirtyWrapped(region, into: &extra)
            for w in extra.indices { bitmaps[i][w] |= extra[w]; finalDirty += bitmaps[i][w].nonzeroBitCount }
            try encoder.send(region: region, bitmap: bitmaps[i])
        }
        report.finalPages = finalDirty
        try finishRound(round, dirty: finalDirty, dirtyRate: 0)
        let stateStart = Self.now()
        let state: StateNode
        do { state = try vm.saveMachineState() } catch { throw MigrationError.machine("saving machine state: \(error)") }
        let blob = try FDTCodec.encode(state)
        try conn.send(.state, bytes: blob)
        report.stateBytes = blob.count
        _ = try conn.expect(.ready)
        report.stateMs = (Self.now() - stateStart) * 1000
        if options.holdBeforeCommitMs > 0 {
            let until = Self.now() + options.holdBeforeCommitMs / 1000
            while Self.now() < until { try checkCancelled(); usleep(10_000) }
        }
        try checkCancelled()

        // 5. Commit and hand off.
        progress.update { $0.phase = .handoff }
        try conn.send(.go, json: ["paused_at_ns": pauseWall])
        committed = true
        let running: [String: Any]
        do { running = try conn.expect(.running).json() } catch {
            vm.stop(.internalError("migration committed but the target never confirmed it runs the guest (\(error)); the guest may be running on the target"))
            throw MigrationError.connection("committed, but the target did not confirm it runs the guest: \(error). The source copy is stopped; check the target.")
        }
        let ackMono = Self.now()
        if let resumed = running["resumed_at_ns"] as? UInt64 ?? (running["resumed_at_ns"] as? NSNumber)?.uint64Value, resumed > pauseWall {
            report.downtimeMs = Double(resumed - pauseWall) / 1e6
        } else {
            report.downtimeMs = (ackMono - pauseMono) * 1000
        }
        report.downtimeAckMs = (ackMono - pauseMono) * 1000
        report.totalMs = (ackMono - t0) * 1000
        conn.close()
        progress.update { $0.phase = .completed; $0.predictedDowntimeMs = report.downtimeMs }
        vm.stop(.migrated)
        return report
    }
}

/// Keeps the pre-copy stream at or under a byte rate.
final class RateLimiter {
    var rate: Double?
    var start = MigrationSource.now()
    var bytes = 0.0
    init(bytesPerSecond: Double?) { rate = bytesPerSecond }
    func reset() { start = MigrationSource.now(); bytes = 0 }
    func disable() { rate = nil }
    func consume(_ n: Int) {
        guard let r = rate, r > 0 else { return }
        bytes += Double(n)
        let due = start + bytes / r
        let wait = due - MigrationSource.now()
        if wait > 0 { usleep(UInt32(min(wait, 5) * 1e6)) }
    }
}

extension VM {
    func startDirtyLogWrapped() throws {
        do { try startDirtyLog() } catch { throw MigrationError.machine("cannot start dirty logging: \(error)") }
    }
    func collectDirtyWrapped(_ r: MemoryRegion, into b: inout [UInt64]) throws -> Int {
        do { return try collectDirty(r, into: &b) } catch { throw MigrationError.machine("cannot read the dirty log: \(error)") }
    }
}
