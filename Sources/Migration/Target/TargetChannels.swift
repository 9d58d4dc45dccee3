import Foundation
import Glibc
import Synchronization
import Machine

/// The target's side of `send --connections N`: the N − 1 extra data connections, each read
/// by a thread of its own that checks and places its page batches with a decoder of its own
/// (so decoding, CRC or AEAD and the copies into guest memory of several batches overlap). The
/// migration thread acknowledges a round only once every connection said `channelSync` for
/// it; a connection that fails ends the migration at once.
final class ChannelReceivers: @unchecked Sendable {
    private let connections: [Connection]
    private let cond = NSCondition()
    /// Per extra connection (index − 1): the last round it finished, and why it ended.
    private var synced: [Int]
    private var ended: [Error?]
    private(set) var failure: Error?
    private var stopping = false
    private var exited = 0
    private let wire = Atomic<UInt64>(0)
    private let pages = Atomic<Int>(0)

    /// Starts a reading thread per connection; `main` is aborted for reading when one fails,
    /// so that a migration thread blocked on it notices.
    init(connections: [Connection], memory: GuestMemory, populator: Populator, main: Connection) {
        self.connections = connections
        synced = connections.map { _ in -1 }
        ended = connections.map { _ in nil }
        for (i, c) in connections.enumerated() {
            let t = Thread { [self] in read(c, slot: i, memory: memory, populator: populator, main: main) }
            t.name = "recv-\(i + 1)"
            t.start()
        }
    }

    /// Wire bytes and pages (with data or zero) placed by the extra connections.
    var wireBytes: UInt64 { wire.load(ordering: .relaxed) }
    var pagesPlaced: Int { pages.load(ordering: .relaxed) }

    /// Waits until every connection finished `round` (its batches are in guest memory).
    func waitForRound(_ round: Int, cancellation: Cancellation) throws {
        cond.lock(); defer { cond.unlock() }
        while true {
            if let failure { throw failure }
            try cancellation.check()
            var waiting = false
            for i in synced.indices where synced[i] < round {
                if let e = ended[i] { throw MigrationError.connection("data connection \(i + 1) ended before round \(round) was complete: \(e)") }
                waiting = true
            }
            if !waiting { return }
            _ = cond.wait(until: Date(timeIntervalSinceNow: 0.05))
        }
    }

    /// Ends the threads and closes the connections (the last round is in, or the migration failed).
    func stop() {
        cond.lock()
        stopping = true
        cond.unlock()
        for c in connections { c.abort() }
        cond.lock()
        while exited < connections.count { cond.wait() }
        cond.unlock()
        for c in connections { c.close() }
    }

    private func read(_ conn: Connection, slot: Int, memory: GuestMemory, populator: Populator, main: Connection) {
        let decoder = PageDecoder(memory: memory)
        defer { cond.lock(); exited += 1; cond.broadcast(); cond.unlock() }
        do {
            while true {
                let before = decoder.counters
                let section = try conn.receive(applying: decoder)
                switch section.type {
                case .pages:
                    populator.follow(section.payload)
                    Faults.hitOnce(.channelMidRound, .target, conn)
                    let after = decoder.counters
                    wire.add(after.wireBytes - before.wireBytes, ordering: .relaxed)
                    pages.add(after.dataPages + after.zeroPages - before.dataPages - before.zeroPages, ordering: .relaxed)
                case .channelSync:
                    let round = try section.message(ChannelSync.self).round
                    cond.lock(); synced[slot] = max(synced[slot], round); cond.broadcast(); cond.unlock()
                default:
                    try Connection.raiseIfAbort(section)
                    throw MigrationError.stream("unexpected \(section.type.name) section on data connection \(slot + 1)")
                }
            }
        } catch {
            cond.lock()
            let quiet = stopping
            ended[slot] = error
            // A connection the source closed after its last round is not a failure; anything
            // else on it ends the migration.
            let closedByPeer = (error as? MigrationError).map { if case .connection = $0 { return true }; return false } ?? false
            if !quiet && !closedByPeer && failure == nil { failure = error }
            cond.broadcast()
            cond.unlock()
            if !quiet && !closedByPeer { main.abortReads() }
        }
    }
}
