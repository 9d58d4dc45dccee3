import Foundation

/// What `ping` (iputils) printed: the echo replies by sequence number, duplicates, and its
/// closing statistics once it was interrupted.
public struct PingLog: LineFed, Sendable {
    /// Sequence numbers answered (each once).
    public private(set) var received = Set<Int>()
    /// Replies that came twice: two copies of the guest answered.
    public private(set) var duplicates = 0
    /// The highest sequence number answered.
    public private(set) var highest = 0
    /// From the closing line `N packets transmitted, M received, …`.
    public private(set) var transmitted: Int?
    private var partial = ""

    public init() {}

    public init(_ text: String) { feed(text) }

    /// Reads more of ping's output; complete lines are taken, an unterminated one waits.
    public mutating func feed<S: StringProtocol>(_ text: S) {
        var rest = Substring(partial + text)
        while let nl = rest.firstIndex(of: "\n") {
            take(rest[..<nl])
            rest = rest[rest.index(after: nl)...]
        }
        partial = String(rest)
    }

    mutating func take(_ line: Substring) {
        if let r = line.range(of: "icmp_seq=") {
            let digits = line[r.upperBound...].prefix { $0.isNumber }
            guard let seq = Int(digits), line.contains("bytes from") else { return }
            if line.contains("(DUP!)") || received.contains(seq) {
                duplicates += 1
            } else {
                received.insert(seq)
                highest = max(highest, seq)
            }
        } else if line.contains("packets transmitted"),
                  let n = Int(line.split(separator: " ").first ?? "") {
            transmitted = n
        }
    }

    /// Echoes lost among those sent before the last one answered.
    public var lostSoFar: Int { highest - received.count }

    /// Echoes sent and lost over the whole run. The one echo that may still have been on its
    /// way when ping was stopped is not counted as lost (nor as sent).
    public var totals: (sent: Int, lost: Int) {
        let sent = transmitted ?? highest
        let unanswered = sent - highest
        let counted = unanswered == 1 ? sent - 1 : sent
        return (counted, counted - received.count)
    }
}
