import Synchronization
import Glibc

/// When to stop pre-copy, and how hard to throttle the guest to get there.
///
/// The predicted downtime is the dirty set times what one page cost end to end — scanning,
/// compressing, the wire, the target's acknowledgement — in the last round big enough to
/// measure (else over all rounds so far), plus the fixed costs of a switch-over measured during
/// pre-copy (pause, drain, state save, the target's state load, the exchanges). The wire
/// alone is a poor predictor: compressed pages are tiny, but scanning and compressing them is
/// not. When the prediction stops improving, auto-converge slows the vCPUs down: from 20 %, by
/// at least 10 % a round, or at once to the share of time the vCPUs must lose for the dirty set
/// to shrink to the target, at most 99 %.
struct ConvergencePolicy {
    let downtimeTargetMs: Double
    let autoConverge: Bool
    /// The pre-copy bandwidth cap, bytes/s.
    let maxBandwidth: Double?
    /// What saving, sending and loading the machine state adds to the downtime.
    static let stateEstimateMs = 1.0
    /// A round with fewer pages than this is too small to time.
    static let minimumMeasuredPages = 64

    private(set) var rounds: [RoundStats] = []
    private var previousPredicted = Double.infinity
    private var stallRounds = 0
    /// The stop-and-copy's fixed costs, measured during pre-copy (`SwitchOver.swift`).
    var costs = SwitchOverCosts()
    /// Rounds sent although the rest already fitted, because rounds still shrank it.
    private var extraRounds = 0
    static let maxExtraRounds = 4

    init(downtimeTargetMs: Double, autoConverge: Bool, maxBandwidth: Double?) {
        self.downtimeTargetMs = downtimeTargetMs
        self.autoConverge = autoConverge
        self.maxBandwidth = maxBandwidth
    }

    enum Decision: Equatable {
        /// The rest fits in the downtime target: pause the guest and send it.
        case stopAndCopy
        /// Send another round, first setting the throttle to this share when it is not nil.
        case nextRound(throttle: Int?)
    }

    mutating func record(_ round: RoundStats) { rounds.append(round) }

    private var totalSeconds: Double { rounds.reduce(0) { $0 + $1.durationMs } / 1000 }
    private var totalWire: UInt64 { rounds.reduce(0) { $0 + $1.wireBytes } }

    /// Bytes per second the rounds so far achieved (capped by `maxBandwidth`).
    var bandwidth: Double {
        var b = totalSeconds > 0 ? Double(totalWire) / totalSeconds : 1e9
        if let cap = maxBandwidth { b = min(b, cap) }
        return b
    }

    /// The downtime a stop-and-copy of `dirtyPages` would take now, in ms.
    func predictedDowntimeMs(dirtyPages: Int) -> Double {
        let secondsPerPage: Double
        if let l = rounds.last, l.dataPages + l.zeroPages >= Self.minimumMeasuredPages {
            secondsPerPage = l.durationMs / 1000 / Double(l.dataPages + l.zeroPages)
        } else {
            let pages = rounds.reduce(0) { $0 + $1.dataPages + $1.zeroPages }
            secondsPerPage = pages > 0 ? totalSeconds / Double(pages) : Double(PageBatch.pageSize) / max(bandwidth, 1)
        }
        let fixed = costs.probed ? costs.fixedMs(bandwidth: bandwidth) : Self.stateEstimateMs
        return Double(dirtyPages) * secondsPerPage * 1000 + fixed
    }

    /// Decides after round `round` collected `dirtyPages`, with the vCPUs throttled `throttle` %.
    mutating func decide(dirtyPages: Int, round: Int, throttle: Int) -> (predictedMs: Double, decision: Decision) {
        let predicted = predictedDowntimeMs(dirtyPages: dirtyPages)
        if predicted <= downtimeTargetMs || dirtyPages == 0 {
            // The target is a ceiling: while a round still cuts the downtime by a third or
            // more (and the pages are still worth a quarter of a millisecond), send another.
            let pagesMs = predicted - predictedDowntimeMs(dirtyPages: 0)
            let shrinking = predicted < previousPredicted * 0.67 && pagesMs >= 0.25 && previousPredicted.isFinite
            previousPredicted = predicted
            guard shrinking && extraRounds < Self.maxExtraRounds else { return (predicted, .stopAndCopy) }
            extraRounds += 1
            return (predicted, .nextRound(throttle: nil))
        }
        if predicted >= previousPredicted * 0.9 { stallRounds += 1 } else { stallRounds = 0 }
        previousPredicted = predicted
        guard autoConverge && stallRounds >= 1 && round >= 2 else { return (predicted, .nextRound(throttle: nil)) }
        let needed = Int((100 * (1 - downtimeTargetMs / predicted)).rounded(.up))
        let next = min(99, max(throttle == 0 ? 20 : throttle + 10, min(needed, throttle + 40)))
        return (predicted, .nextRound(throttle: next == throttle ? nil : next))
    }
}

/// Keeps the pre-copy stream at or under a byte rate.
final class RateLimiter: Sendable {
    private struct State {
        var rate: Double?
        var start = Clock.monotonic()
        var bytes = 0.0
    }
    private let state: Mutex<State>

    init(bytesPerSecond: Double?) { state = Mutex(State(rate: bytesPerSecond)) }

    func reset() { state.withLock { $0.start = Clock.monotonic(); $0.bytes = 0 } }
    func disable() { state.withLock { $0.rate = nil } }

    /// Accounts `n` bytes sent and sleeps until the rate allows them (from any thread: the
    /// data connections of `send --connections N` share one budget).
    func consume(_ n: Int) {
        let wait = state.withLock { s -> Double in
            guard let r = s.rate, r > 0 else { return 0 }
            s.bytes += Double(n)
            return s.start + s.bytes / r - Clock.monotonic()
        }
        if wait > 0 { usleep(UInt32(min(wait, 5) * 1e6)) }
    }
}

/// The two clocks a migration reads.
enum Clock {
    /// CLOCK_MONOTONIC in seconds: durations on one host.
    static func monotonic() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// CLOCK_REALTIME in ns: instants compared across the two hosts (downtime).
    static func wallNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
