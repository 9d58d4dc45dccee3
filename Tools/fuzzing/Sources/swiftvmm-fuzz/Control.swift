import Control
import Foundation

/// The API socket's request parser: the input is a client's byte stream, framed into QMP
/// messages, checked as requests and decoded into commands as the server does. Every refusal
/// must be a reply the server can write: one JSON object on one line.
enum ControlTarget {
    static func run(_ data: [UInt8]) {
        for reply in QMP.decodeRequests(data) {
            guard let reply else { continue }
            require(reply.last == 10 && !reply.dropLast().contains(10), "a reply is not one line")
            let object = try? JSONSerialization.jsonObject(with: Data(reply.dropLast()))
            require(object is [String: Any], "a reply is not a JSON object: \(String(decoding: reply, as: UTF8.self))")
        }
    }
}
