import Foundation

extension QMP {
    /// What the server makes of a client's bytes before any handler runs, without a socket:
    /// the same framing and request checks, then the command's own argument decoding. Each
    /// element is the reply the server would write for a request refused on the way (one JSON
    /// line; empty when JSON cannot hold it), or nil for a request that decoded into a command.
    /// The fuzzers drive this.
    public static func decodeRequests(_ bytes: [UInt8]) -> [[UInt8]?] {
        var framer = QMPFramer(maxBytes: ControlServer.maxLine)
        var out: [[UInt8]?] = []
        for frame in framer.feed(bytes[...]) {
            if let refusal = QMPFramer.refusal(frame, maxBytes: ControlServer.maxLine) {
                out.append(line(refusal.json()))
                continue
            }
            guard case .message(let text) = frame else { continue }
            let (id, parsed) = Request.parse(text)
            do throws(QMPError) {
                let request = try parsed.get()
                _ = try ControlCommand(name: request.command, arguments: request.arguments)
                out.append(nil)
            } catch {
                out.append(line(error.json(id: id)))
            }
        }
        return out
    }

    /// `object` as one JSON line; empty when JSON cannot hold it.
    static func line(_ object: [String: Any]) -> [UInt8] {
        guard JSONSerialization.isValidJSONObject(object),
              let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return [] }
        return Array(data) + [10]
    }
}
