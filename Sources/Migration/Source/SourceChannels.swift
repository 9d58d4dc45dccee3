import Dispatch
import Machine
import Synchronization

/// `send --connections N`: opening the extra data connections and sending a round over them
/// (`PageChannels`).
extension SourceSession {
    /// After `accept`: with N > 1, opens the N − 1 extra connections — each presents the
    /// target's token and its index, then (with a key) is sealed with keys of its own derived
    /// from the handshake's nonces — and starts the N sending lanes.
    func openChannels(_ accept: Accept, count: Int) throws {
        guard count > 1 else { return }
        guard let token = accept.channelToken else {
            throw MigrationError.stream("the target did not take \(count) connections (no channel token in its accept)")
        }
        let main = try conn()
        // All at once: each opening is a round trip or two.
        let results = Mutex([Result<Connection, any Error>?](repeating: nil, count: count - 1))
        DispatchQueue.concurrentPerform(iterations: count - 1) { k in
            let r = Result { try connectChannel(k + 1, token: token) }
            results.withLock { $0[k] = r }
        }
        let all = results.withLock { $0 }
        let opened = all.compactMap { try? $0?.get() }
        if opened.count < all.count {
            for c in opened { c.close() }
            let k = all.firstIndex { (try? $0?.get()) == nil } ?? 0
            var why = "not opened"
            if case .failure(let e)? = all[k] { why = "\(e)" }
            throw MigrationError.connection("cannot open data connection \(k + 1) of \(count) to \(options.endpoint): \(why)")
        }
        let lanes = ([main] + opened).enumerated().map { i, c in
            PageChannels.Lane(index: i, connection: c, encoder: PageEncoder(memory: vm.memory, connection: c, compression: options.compression))
        }
        let channels = PageChannels(lanes: lanes)
        for lane in lanes {
            lane.encoder.afterBatch = { [unowned channels, limiter, cancellation] wire in
                limiter.consume(wire)
                channels.sent(wire)
                try cancellation.check()
            }
        }
        self.channels = channels
        report.connections = count
    }

    private func connectChannel(_ index: Int, token: String) throws -> Connection {
        let c = Connection(fd: try Transport.connect(options.endpoint))
        do {
            c.idleTimeout = options.timeout
            Transport.setTCPTimeouts(c.fd, seconds: options.timeout)
            try c.writePreamble(version: options.streamVersion)
            _ = try c.readPreamble()
            try c.send(ChannelHello(token: token, index: index))
            if let key = options.key {
                guard let h = handshake else { throw MigrationError.auth("no handshake to derive the data connection's keys from") }
                try c.startSealing(StreamKeys.derive(key: key, sourceNonce: h.localNonce, targetNonce: h.peerNonce,
                                                     role: .source, channel: index))
            }
            let ready = try c.expect(ChannelReady.self)
            guard ready.index == index else { throw MigrationError.stream("the target took data connection \(index) as \(ready.index)") }
            return c
        } catch {
            c.close()
            throw error
        }
    }

    /// Sends the pages `bitmaps` (or, in round 0, `resident`) select: over the lanes when
    /// there are several and the round is worth spreading, else from this thread.
    /// `betweenBatches` gets the wire bytes sent since its last call: after every batch here,
    /// every few milliseconds while the lanes send.
    func sendPages(bitmaps: [[UInt64]]?, resident: [[UInt8]?]?, dirty: Int, betweenBatches: @escaping (Int) throws -> Void) throws {
        let regions = vm.memory.regions
        roundSpread = channels != nil && (bitmaps == nil || dirty > PageBatch.windowPages)
        if let channels, roundSpread {
            var seen = channels.wireBytes
            try channels.sendRound(round, regions: regions, bitmaps: bitmaps, resident: resident) {
                let now = channels.wireBytes
                try betweenBatches(Int(now - seen))
                seen = now
                if round == 0 {
                    let covered = UInt64(channels.windowsDone) * UInt64(PageBatch.windowPages * PageBatch.pageSize)
                    progress.update { $0.memoryCovered = min($0.memoryBytes, covered) }
                }
            }
            return
        }
        guard let encoder else { throw MigrationError.machine("pages to send without an encoder") }
        encoder.afterBatch = { [limiter] wire in
            limiter.consume(wire)
            try betweenBatches(wire)
        }
        for (i, region) in regions.enumerated() {
            try encoder.send(region: region, bitmap: bitmaps?[i], resident: resident?[i] ?? nil)
        }
    }

    /// The round's page figures, summed over this thread's encoder and the lanes'.
    func pageCounters(_ encoder: PageEncoder) -> PageCounters {
        var sum = encoder.counters
        if let c = channels?.counters { sum += c }
        return sum
    }

    /// Ends the lanes (after the last round, or on failure) and closes the extra connections.
    func stopChannels(_ error: Error? = nil) {
        guard let channels else { return }
        if let error { channels.fail(error) }
        channels.stop()
    }
}
