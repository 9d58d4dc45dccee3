import Control
import Foundation

/// The API socket's request parser: each line of the input is a request answered as the
/// server answers it (JSON, `execute`, `arguments`, then `ControlCommand`'s decoding and
/// checking of the arguments). Every reply must be one JSON object on one line.
enum ControlTarget {
    static func run(_ data: [UInt8]) {
        for line in data.split(separator: 10, omittingEmptySubsequences: false) {
            let (_, reply) = ControlServer.respond(to: Array(line), handler: handle)
            require(reply.last == 10 && !reply.dropLast().contains(10), "a reply is not one line")
            let object = try? JSONSerialization.jsonObject(with: Data(reply.dropLast()))
            require(object is [String: Any], "a reply is not a JSON object: \(String(decoding: reply, as: UTF8.self))")
        }
    }

    @Sendable static func handle(_ name: String, _ arguments: [String: Any]) -> ControlReply {
        do throws(ControlCommandError) {
            let command = try ControlCommand(name: name, arguments: arguments)
            return .ok(["command": command.name, "decoded": String(describing: command)])
        } catch {
            return .error(error.errorClass, error.description)
        }
    }
}
