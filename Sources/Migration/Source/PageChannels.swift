import Foundation
import Synchronization
import Machine

/// The pages of `send --connections N` (N > 1): N sending threads, each with its own encoder
/// (zero check, LZ4, CRC or seal) on its own connection — the first on the migration's own
/// connection, the others on extra data connections opened after the target accepted — share
/// each round's 4 MiB windows, so scanning, compression and the sockets of several batches
/// overlap (QEMU's multifd channels, Cloud Hypervisor's connections). A window goes to one
/// connection only and every connection says `channelSync` at the end of a round, after which
/// the target acknowledges the round; so a page sent again in a later round can never be
/// overtaken by its older copy, and the machine state, on the first connection after the last
/// round, comes after every page.
final class PageChannels: @unchecked Sendable {
    /// One sending thread and its connection.
    final class Lane: @unchecked Sendable {
        let index: Int
        let connection: Connection
        let encoder: PageEncoder
        init(index: Int, connection: Connection, encoder: PageEncoder) {
            self.index = index; self.connection = connection; self.encoder = encoder
        }
    }

    /// One round's work: the windows to send and what selects their pages.
    private final class Job: @unchecked Sendable {
        let round: Int
        let regions: [MemoryRegion]
        let bitmaps: [[UInt64]]?
        let resident: [[UInt8]?]?
        let units: [(region: Int, window: Int)]
        init(round: Int, regions: [MemoryRegion], bitmaps: [[UInt64]]?, resident: [[UInt8]?]?) {
            self.round = round; self.regions = regions; self.bitmaps = bitmaps; self.resident = resident
            var units: [(Int, Int)] = []
            for (r, region) in regions.enumerated() {
                for w in stride(from: 0, to: region.pageCount, by: PageBatch.windowPages) {
                    if let bm = bitmaps?[r], !PageEncoder.selects(bm, window: w, count: PageBatch.windowPages) { continue }
                    units.append((r, w))
                }
            }
            self.units = units
        }
    }

    let lanes: [Lane]
    private let cond = NSCondition()
    private var job: Job?
    private var generation = 0
    private var nextUnit = 0
    private var working = 0
    private var failure: Error?
    private var stopping = false
    private var exited = 0
    /// Bytes all lanes put on the wire (progress).
    private let wire = Atomic<UInt64>(0)

    init(lanes: [Lane]) {
        self.lanes = lanes
        for lane in lanes {
            let t = Thread { [self] in work(lane) }
            t.name = "send-\(lane.index)"
            t.start()
        }
    }

    var wireBytes: UInt64 { wire.load(ordering: .relaxed) }
    /// Windows taken by a lane in the current round (progress).
    var windowsDone: Int { cond.withLock { nextUnit } }

    /// Called by a lane's encoder after each batch.
    func sent(_ bytes: Int) { wire.add(UInt64(bytes), ordering: .relaxed) }

    /// Sends one round's pages over every lane and returns once each lane has sent them and
    /// its `channelSync`; `meanwhile` runs on the calling thread every few milliseconds
    /// (cancellation, the target's errors, disk runs, progress). Any failure stops every lane.
    func sendRound(_ round: Int, regions: [MemoryRegion], bitmaps: [[UInt64]]?, resident: [[UInt8]?]?,
                   meanwhile: () throws -> Void) throws {
        let job = Job(round: round, regions: regions, bitmaps: bitmaps, resident: resident)
        cond.lock()
        if let failure { cond.unlock(); throw failure }
        self.job = job
        nextUnit = 0
        working = lanes.count
        generation += 1
        cond.broadcast()
        while working > 0 && failure == nil {
            _ = cond.wait(until: Date(timeIntervalSinceNow: 0.005))
            cond.unlock()
            do { try meanwhile() } catch { fail(error); throw error }
            cond.lock()
        }
        let f = failure
        cond.unlock()
        if let f { throw f }
    }

    /// Records the first failure and wakes every lane blocked on its socket.
    func fail(_ error: Error) {
        cond.lock()
        if failure == nil { failure = error }
        cond.broadcast()
        cond.unlock()
        abortExtraConnections()
    }

    /// Makes every extra connection's blocked read or write fail (the first stays usable, to
    /// tell the target why).
    private func abortExtraConnections() { for lane in lanes where lane.index > 0 { lane.connection.abort() } }

    /// Ends the lanes' threads (after the last round, or on failure) and closes the extra
    /// connections; waits for the threads to exit.
    func stop() {
        cond.lock()
        stopping = true
        cond.broadcast()
        while exited < lanes.count { cond.wait() }
        cond.unlock()
        for lane in lanes where lane.index > 0 { lane.connection.close() }
    }

    var counters: PageCounters {
        var sum = PageCounters()
        for lane in lanes { sum += lane.encoder.counters }
        return sum
    }

    func resetCounters() { for lane in lanes { lane.encoder.resetCounters() } }

    func setMemoryStable(_ stable: Bool) { for lane in lanes { lane.encoder.memoryIsStable = stable } }

    private func work(_ lane: Lane) {
        var seen = 0
        while let job = nextJob(after: &seen) {
            do {
                while let (r, w) = take(job) {
                    try lane.encoder.send(region: job.regions[r], window: w, bitmap: job.bitmaps?[r],
                                          resident: job.resident?[r] ?? nil)
                    if lane.index > 0 { Faults.hitOnce(.channelMidRound, .source, lane.connection) }
                }
                if lane.index > 0 { try lane.connection.send(ChannelSync(round: job.round)) }
                finished(nil)
            } catch {
                finished(lane.index == 0 ? error : Self.naming(error, lane: lane.index, of: lanes.count))
            }
        }
        cond.lock(); exited += 1; cond.broadcast(); cond.unlock()
    }

    /// An extra connection's failure, saying which connection it was.
    static func naming(_ error: Error, lane: Int, of count: Int) -> Error {
        let on = "data connection \(lane) of \(count - 1)"
        switch error as? MigrationError {
        case .connection(let s)?: return MigrationError.connection("\(on): \(s)")
        case .stalled(let s)?: return MigrationError.stalled("\(on): \(s)")
        case .stream(let s)?: return MigrationError.stream("\(on): \(s)")
        default: return error
        }
    }

    private func nextJob(after seen: inout Int) -> Job? {
        cond.lock(); defer { cond.unlock() }
        while generation == seen && !stopping { cond.wait() }
        if stopping { return nil }
        seen = generation
        return job
    }

    private func take(_ job: Job) -> (Int, Int)? {
        cond.lock(); defer { cond.unlock() }
        guard failure == nil, !stopping, nextUnit < job.units.count else { return nil }
        defer { nextUnit += 1 }
        return job.units[nextUnit]
    }

    private func finished(_ error: Error?) {
        cond.lock()
        working -= 1
        if let error, failure == nil { failure = error }
        cond.broadcast()
        cond.unlock()
        if error != nil { abortExtraConnections() }
    }
}
