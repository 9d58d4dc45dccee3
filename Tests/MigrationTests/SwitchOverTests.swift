import Testing
@testable import Migration

@Suite("switch-over: fixed costs in the prediction, iterating while rounds shrink, the downtime verdict")
struct SwitchOverTests {
    func round(_ n: Int, pages: Int, ms: Double) -> RoundStats {
        RoundStats(round: n, dirtyPages: pages, dataPages: pages, zeroPages: 0, wireBytes: 1 << 20, rawBytes: UInt64(pages) * 4096,
                   durationMs: ms, dirtyPagesPerSecond: 0, bandwidthBytesPerSecond: 0, throttlePercent: 0)
    }

    @Test("once probed, the prediction adds pause, drain, state save, the target's load and three exchanges to the pages")
    func fixedCostsInPrediction() {
        var p = ConvergencePolicy(downtimeTargetMs: 5, autoConverge: true, maxBandwidth: nil)
        p.record(round(0, pages: 10_000, ms: 100))          // 10 µs a page
        p.costs = SwitchOverCosts(pauseMs: 0.5, drainMs: 0.25, stateSaveMs: 1, stateBytes: 0, stateLoadMs: 2, roundTripMs: 0.1, probed: true)
        #expect(abs(p.predictedDowntimeMs(dirtyPages: 100) - (1 + 0.5 + 0.25 + 1 + 2 + 0.3)) < 1e-9)
        // 100 pages alone would fit a 5 ms target; with the fixed costs they do not.
        #expect(p.decide(dirtyPages: 100, round: 1, throttle: 0).decision == .nextRound(throttle: nil))
    }

    @Test("within the target, another round is sent while rounds still cut the prediction by a third, and never more than a few")
    func iteratesWhileShrinking() {
        var p = ConvergencePolicy(downtimeTargetMs: 50, autoConverge: true, maxBandwidth: nil)
        p.record(round(0, pages: 10_000, ms: 100))
        #expect(p.decide(dirtyPages: 8000, round: 1, throttle: 0).decision == .nextRound(throttle: nil))   // 81 ms
        #expect(p.decide(dirtyPages: 4000, round: 2, throttle: 0).decision == .nextRound(throttle: nil))   // fits, halved
        #expect(p.decide(dirtyPages: 1000, round: 3, throttle: 0).decision == .nextRound(throttle: nil))   // fits, quartered
        #expect(p.decide(dirtyPages: 900, round: 4, throttle: 0).decision == .stopAndCopy)                 // barely shrinks
        var q = ConvergencePolicy(downtimeTargetMs: 50, autoConverge: true, maxBandwidth: nil)
        q.record(round(0, pages: 10_000, ms: 100))
        _ = q.decide(dirtyPages: 100_000, round: 1, throttle: 0)
        var pages = 4000, extra = 0
        while q.decide(dirtyPages: pages, round: 2 + extra, throttle: 0).decision != .stopAndCopy && extra < 20 {
            extra += 1
            pages /= 2
        }
        #expect(extra == ConvergencePolicy.maxExtraRounds)
    }

    @Test("the warning names the largest part, in words, only above the target")
    func warningWords() {
        var d = DowntimeBreakdown()
        d.pauseMs = 0.4; d.finalPagesMs = 2.2; d.stateLoadMs = 4.1; d.resumeMs = 1.2
        #expect(d.warning(downtimeMs: 7.94, targetMs: 5) == "downtime 7.9 ms exceeded the 5 ms target: state load took 4.1 ms")
        #expect(d.warning(downtimeMs: 4.9, targetMs: 5) == nil)
        #expect(d.warning(downtimeMs: .nan, targetMs: 5) == nil)
    }
}
