import Foundation

/// Where a migration's downtime went, part by part, from the source's pause to the target's
/// resume. The target measures its own parts (loading the state, resuming) and sends them back
/// with `ready` and `running`.
public struct DowntimeBreakdown: Codable, Sendable, Equatable {
    /// Pausing every vCPU at a safe point.
    public var pauseMs: Double = 0
    /// Quiescing the devices: requests in flight completed.
    public var drainMs: Double = 0
    /// Collecting, sending and placing the last dirty pages (up to the target's round ack).
    public var finalPagesMs: Double = 0
    /// Saving the machine state and encoding it.
    public var stateSaveMs: Double = 0
    /// The state on the wire: `ready` arriving, less the target's load time.
    public var stateTransferMs: Double = 0
    /// The target decoding, checking and loading the state.
    public var stateLoadMs: Double = 0
    /// The source's commit: from `ready` arriving to `go` written (optional on the wire: an
    /// older source does not send it).
    public var commitMs: Double?
    /// `go` on the wire and the target resuming: what remains of the measured downtime.
    public var resumeMs: Double = 0

    public init() {}

    /// The parts in the order they happen, with the words a warning uses for each.
    public var parts: [(key: String, words: String, ms: Double)] {
        [("pause", "pausing the vCPUs", pauseMs), ("device_drain", "draining the devices", drainMs),
         ("final_pages", "the final pages", finalPagesMs), ("state_save", "state save", stateSaveMs),
         ("state_transfer", "state transfer", stateTransferMs), ("state_load", "state load", stateLoadMs),
         ("commit", "the commit (ready to go)", commitMs ?? 0), ("resume", "resume", resumeMs)]
    }

    public var json: [String: Any] {
        var d: [String: Any] = [:]
        for p in parts { d[p.key] = p.ms.rounded3 }
        return d
    }

    /// The one-line verdict when `downtimeMs` exceeded `targetMs`, naming the largest part:
    /// "downtime 7.9 ms exceeded the 5 ms target: state load took 4.1 ms". Nil within target.
    public func warning(downtimeMs: Double, targetMs: Double) -> String? {
        guard targetMs > 0, downtimeMs > targetMs, let big = parts.max(by: { $0.ms < $1.ms }) else { return nil }
        return "downtime \(Self.format(downtimeMs)) ms exceeded the \(Self.format(targetMs)) ms target: \(big.words) took \(Self.format(big.ms)) ms"
    }

    /// 7.94 → "7.9", 5.0 → "5".
    static func format(_ ms: Double) -> String {
        let s = String(format: "%.1f", ms)
        return s.hasSuffix(".0") ? String(s.dropLast(2)) : s
    }
}

/// The fixed costs of a stop-and-copy, measured during pre-copy: the switch-over decision adds
/// them to the dirty pages' cost.
struct SwitchOverCosts: Sendable {
    var pauseMs: Double = 0
    var drainMs: Double = 0
    var stateSaveMs: Double = 0
    var stateBytes = 0
    /// The target's own timing of a dry load of machine state (from `accept`).
    var stateLoadMs: Double = 0
    /// The shortest request/answer exchange seen (round end → round ack).
    var roundTripMs = Double.infinity
    /// Whether a pause probe has been made.
    var probed = false

    /// Everything but the pages: pause, drain, save, state on the wire at `bandwidth` bytes/s,
    /// load, and three exchanges (the final round's ack, `ready`, `go` → `running`).
    func fixedMs(bandwidth: Double) -> Double {
        let rtt = roundTripMs.isFinite ? roundTripMs : 0.1
        return pauseMs + drainMs + stateSaveMs + stateLoadMs + Double(stateBytes) / max(bandwidth, 1) * 1000 + 3 * rtt
    }
}
