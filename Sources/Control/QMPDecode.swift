import Foundation

extension QMP {
    /// What the server makes of a client's bytes before any handler runs, without a socket:
    /// framing, JSON and request checks, then the command's own argument decoding. Each element
    /// is the reply the server would write for a request refused on the way (as one JSON line),
    /// or nil for a request that decoded into a command (an empty reply: one JSON cannot hold). The fuzzers drive this.
    public static func decodeRequests(_ bytes: [UInt8]) -> [[UInt8]?] {
        var framer = QMPFramer(maxBytes: 1 << 20)
        var out: [[UInt8]?] = []
        for frame in framer.feed(bytes[...]) {
            switch frame {
            case .tooLong, .tooDeep:
                out.append(line(QMPError.generic("request refused").json()) ?? [])
            case .message(let text):
                do throws(QMPError) {
                    let object = try Request.object(text)
                    let request = try Request(object)
                    _ = try ControlCommand(name: request.command, arguments: request.arguments)
                    out.append(nil)
                } catch {
                    out.append(line(error.json()) ?? [])
                }
            }
        }
        return out
    }

    /// `object` as one JSON line, or nil when JSON cannot hold it.
    static func line(_ object: [String: Any]) -> [UInt8]? {
        guard JSONSerialization.isValidJSONObject(object),
              let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return nil }
        return Array(data) + [10]
    }
}
