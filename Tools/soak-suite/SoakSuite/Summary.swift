import Foundation

/// How the soak run is set up (`Tools/soak --help`).
public struct SoakOptions: Sendable {
    public var hops = 100
    public var swiftvmm: String?
    public var memory = "128M"
    /// The memtouch region inside the guest.
    public var size = "16M"
    public var blocks = 64
    /// swiftvmm send's --downtime-ms (nil: its default).
    public var downtimeMs: Double?
    /// Where each hop's `send --report` goes (nil: a temporary directory, removed).
    public var reports: String?
    /// More of soak.elf's command line (GuestImages/README.md), e.g. `write-ms=0`.
    public var guestArgs = ""
    public init() {}
}

/// One hop: what send reported and what the checks found after it.
public struct HopResult: Sendable {
    public var number: Int
    public var from: String, to: String
    public var downtimeMs: Double?
    public var totalMs: Double?
    public var pingsLost = 0
    public var seq = 0
    public var beat = 0
    public var problems: [String] = []
    public var ok: Bool { problems.isEmpty }

    public init(number: Int, from: String, to: String) {
        self.number = number
        self.from = from
        self.to = to
    }

    /// `hop   3 B→A  downtime  21.4 ms  total  402 ms  pings lost 0  seq 512  beat 40  ok`
    public var line: String {
        let d = downtimeMs.map { String(format: "%6.1f ms", $0) } ?? "     - ms"
        let t = totalMs.map { String(format: "%5.0f ms", $0) } ?? "    - ms"
        var s = String(format: "hop %3d %@→%@  downtime %@  total %@  pings lost %d  seq %d  beat %d  ",
                       number, from as NSString, to as NSString, d as NSString, t as NSString, pingsLost, seq, beat)
        s += ok ? "ok" : "FAILED"
        return s
    }
}

/// The figures of a whole run.
public struct SoakSummary: Sendable {
    public var hops: [HopResult] = []
    /// Problems outside any hop (start-up, the final check).
    public var problems: [String] = []
    public var pingsSent = 0
    public var pingsLost = 0
    public var duplicates = 0
    public var writes = 0
    public var passes = 0
    public var seconds = 0.0

    public init() {}

    public var failures: Int { hops.filter { !$0.ok }.count + (problems.isEmpty ? 0 : 1) }

    /// The median of `values` (the mean of the middle two for an even count); nil when empty.
    public static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let s = values.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    public var lines: [String] {
        let down = hops.compactMap(\.downtimeMs), total = hops.compactMap(\.totalMs)
        let ms = { (v: Double?) in v.map { String(format: "%.1f ms", $0) } ?? "-" }
        var out = [
            "soak: \(hops.count) hops, \(failures) failures in \(String(format: "%.0f", seconds)) s",
            "downtime: median \(ms(Self.median(down))), max \(ms(down.max())); "
                + "migration total: median \(ms(Self.median(total))), max \(ms(total.max()))",
            "pings: \(pingsSent) sent, \(pingsLost) lost" + (duplicates > 0 ? ", \(duplicates) duplicated" : ""),
            "guest: \(writes) disk writes acknowledged and found on the disk, \(passes) memtouch passes",
        ]
        for h in hops where !h.ok { out += h.problems.map { "hop \(h.number): \($0)" } }
        out += problems
        return out
    }
}
