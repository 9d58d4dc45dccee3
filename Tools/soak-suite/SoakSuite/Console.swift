import Foundation

/// The soak guest's console read across every side it ran on, in order: each side's serial
/// output continues the previous one exactly (a line may straddle a move). It keeps the last
/// acknowledged disk write (`SEQ s`), the last heartbeat and everything that is wrong: a `FAIL`
/// line, a `SEQ` out of sequence, a heartbeat that does not count up.
public struct GuestConsole: LineFed, Sendable {
    /// The last `SEQ` line: every write up to it was acknowledged to the guest.
    public private(set) var lastSeq = 0
    /// The last `HEARTBEAT <n>`.
    public private(set) var lastBeat = 0
    /// The memtouch pass, pings answered and datagrams echoed, from the last heartbeat.
    public private(set) var lastPass = 0
    public private(set) var pings = 0
    /// What was wrong, one line each.
    public private(set) var problems: [String] = []
    private var partial = ""

    public init() {}

    /// Reads more of the console; complete lines are judged, an unterminated one waits.
    public mutating func feed<S: StringProtocol>(_ text: S) {
        var rest = Substring(partial + text)
        while let nl = rest.firstIndex(of: "\n") {
            judge(rest[..<nl])
            rest = rest[rest.index(after: nl)...]
        }
        partial = String(rest)
    }

    private mutating func judge(_ raw: Substring) {
        let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
        if line.hasPrefix("FAIL") {
            problems.append("guest: \(line)")
        } else if line.hasPrefix("SEQ "), let s = Int(line.dropFirst(4)) {
            if s != lastSeq + 1 { problems.append("SEQ \(s) after SEQ \(lastSeq): acknowledged writes out of sequence") }
            lastSeq = s
        } else if line.hasPrefix("HEARTBEAT ") {
            let f = Self.fields(line)
            guard let n = f["HEARTBEAT"] else { return }
            if n <= lastBeat { problems.append("HEARTBEAT \(n) after HEARTBEAT \(lastBeat)") }
            if let s = f["seq"], s != lastSeq { problems.append("HEARTBEAT \(n) says seq=\(s), the console's last SEQ is \(lastSeq)") }
            lastBeat = n
            lastPass = f["pass"] ?? lastPass
            pings = f["pings"] ?? pings
        }
    }

    /// `HEARTBEAT 3 pass=9 seq=4` → ["HEARTBEAT": 3, "pass": 9, "seq": 4].
    static func fields(_ line: Substring) -> [String: Int] {
        var out: [String: Int] = [:]
        let words = line.split(separator: " ")
        if words.count > 1, let n = Int(words[1]) { out[String(words[0])] = n }
        for w in words.dropFirst(2) {
            let kv = w.split(separator: "=", maxSplits: 1)
            if kv.count == 2, let v = Int(kv[1]) { out[String(kv[0])] = v }
        }
        return out
    }
}

/// Output read a piece at a time (a guest console, ping's output).
public protocol LineFed {
    mutating func feed<S: StringProtocol>(_ text: S)
}

/// How much of a child's stdout has been read already.
struct OutputCursor {
    private var consumed = 0

    /// Feeds what `text` (the whole output so far) adds since the last call.
    mutating func advance<L: LineFed>(_ reader: inout L, to text: String) {
        let bytes = text.utf8
        guard bytes.count > consumed else { return }
        reader.feed(String(decoding: bytes.dropFirst(consumed), as: UTF8.self))
        consumed = bytes.count
    }
}
