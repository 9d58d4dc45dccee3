import Testing
@testable import Migration

@Suite("convergence policy: predicted downtime and auto-converge")
struct ConvergenceTests {
    /// A round that moved `pages` pages in `ms` milliseconds.
    func round(_ n: Int, pages: Int, ms: Double, wire: UInt64 = 1 << 20) -> RoundStats {
        RoundStats(round: n, dirtyPages: pages, dataPages: pages, zeroPages: 0, wireBytes: wire, rawBytes: UInt64(pages) * 4096,
                   durationMs: ms, dirtyPagesPerSecond: 0, bandwidthBytesPerSecond: Double(wire) / (ms / 1000), throttlePercent: 0)
    }

    @Test("the prediction is the dirty set times the last measured round's cost per page, plus the state allowance")
    func prediction() {
        var p = ConvergencePolicy(downtimeTargetMs: 50, autoConverge: true, maxBandwidth: nil)
        p.record(round(0, pages: 10_000, ms: 100))          // 10 µs a page
        #expect(abs(p.predictedDowntimeMs(dirtyPages: 1000) - (10 + ConvergencePolicy.stateEstimateMs)) < 1e-9)
        p.record(round(1, pages: 10, ms: 50))                 // too small to time: all rounds count
        let perPage = 0.150 / 10_010
        #expect(abs(p.predictedDowntimeMs(dirtyPages: 1000) - (1000 * perPage * 1000 + ConvergencePolicy.stateEstimateMs)) < 1e-9)
    }

    @Test("a dirty set within the target, or none at all, goes to stop-and-copy at once")
    func stopsWhenItFits() {
        var p = ConvergencePolicy(downtimeTargetMs: 50, autoConverge: true, maxBandwidth: nil)
        p.record(round(0, pages: 10_000, ms: 100))
        #expect(p.decide(dirtyPages: 4000, round: 1, throttle: 0).decision == .stopAndCopy)   // 41 ms
        #expect(p.decide(dirtyPages: 0, round: 1, throttle: 0).decision == .stopAndCopy)
        #expect(p.decide(dirtyPages: 6000, round: 1, throttle: 0).decision == .nextRound(throttle: nil))
    }

    @Test("auto-converge waits for a stalled prediction after round 2, starts at 20 %, adds 10 % or jumps to what is needed, never past 99 %")
    func throttleSchedule() {
        var p = ConvergencePolicy(downtimeTargetMs: 50, autoConverge: true, maxBandwidth: nil)
        p.record(round(0, pages: 10_000, ms: 100))
        // Round 1: the first prediction (600 ms) is not a stall yet.
        #expect(p.decide(dirtyPages: 60_000, round: 1, throttle: 0).decision == .nextRound(throttle: nil))
        // Round 2, no better: stalled → at least 20 %, at most 40 % more than now (needed is 92 %).
        #expect(p.decide(dirtyPages: 60_000, round: 2, throttle: 0).decision == .nextRound(throttle: 40))
        #expect(p.decide(dirtyPages: 60_000, round: 3, throttle: 40).decision == .nextRound(throttle: 80))
        #expect(p.decide(dirtyPages: 60_000, round: 4, throttle: 80).decision == .nextRound(throttle: 92))
        #expect(p.decide(dirtyPages: 60_000, round: 5, throttle: 92).decision == .nextRound(throttle: 99))
        #expect(p.decide(dirtyPages: 60_000, round: 6, throttle: 99).decision == .nextRound(throttle: nil))
    }

    @Test("a shrinking dirty set is not throttled; without auto-converge nothing ever is")
    func noThrottleWhenImprovingOrOff() {
        var p = ConvergencePolicy(downtimeTargetMs: 50, autoConverge: true, maxBandwidth: nil)
        p.record(round(0, pages: 10_000, ms: 100))
        for (i, dirty) in [60_000, 40_000, 20_000, 10_000].enumerated() {
            #expect(p.decide(dirtyPages: dirty, round: i + 1, throttle: 0).decision == .nextRound(throttle: nil))
        }
        var off = ConvergencePolicy(downtimeTargetMs: 50, autoConverge: false, maxBandwidth: nil)
        off.record(round(0, pages: 10_000, ms: 100))
        for r in 1...6 { #expect(off.decide(dirtyPages: 60_000, round: r, throttle: 0).decision == .nextRound(throttle: nil)) }
    }

    @Test("bandwidth is what the rounds achieved, capped by --max-bandwidth")
    func bandwidth() {
        var p = ConvergencePolicy(downtimeTargetMs: 50, autoConverge: true, maxBandwidth: 1e6)
        #expect(p.bandwidth == 1e6)
        p.record(round(0, pages: 100, ms: 1000, wire: 500_000))
        #expect(p.bandwidth == 500_000)
        p.record(round(1, pages: 100, ms: 1000, wire: 5_500_000))
        #expect(p.bandwidth == 1e6)
    }
}
