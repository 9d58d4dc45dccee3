import Foundation

/// A control message: one JSON object in a section of its own type. Every message the two
/// sides exchange is one of these structs; this file is the only place they are encoded and
/// decoded.
public protocol WireMessage: Codable, Sendable {
    static var section: SectionType { get }
}

/// S→R, first: who is sending, in which stream version, with what key material.
public struct Hello: WireMessage {
    public static var section: SectionType { .hello }
    public var streamVersion: UInt32
    public var vmmVersion: String
    public var name: String
    public var uuid: String
    /// 32 random bytes, hex.
    public var nonce: String
    public var hasKey: Bool
}

/// R→S: the receiver's versions and nonce, and its proof of the key when it has one.
public struct HelloReply: WireMessage {
    public static var section: SectionType { .helloReply }
    public var streamVersion: UInt32
    public var vmmVersion: String
    public var nonce: String
    public var hasKey: Bool
    public var proof: String?
}

/// S→R: the sender's proof of the key.
public struct AuthProof: WireMessage {
    public static var section: SectionType { .auth }
    public var proof: String
}

/// R→S: pre-checks passed and the target machine is built.
public struct Accept: WireMessage {
    public static var section: SectionType { .accept }
    public var name: String
    /// Volumes the target takes as already there: its file is the source's in-sync mirror.
    public var mirrorVolumes: [String]? = nil
    /// How long a dry load of machine state took the target (ms): a fixed cost of the downtime.
    public var stateLoadMs: Double?
    /// With `--connections N` > 1: 16 random bytes (hex) each extra data connection presents
    /// in its `channel` section; sealed when the stream is.
    public var channelToken: String? = nil
}

/// R→S, after a dry run's `config`: whether the target could host the guest, and every reason
/// it could not. The target then waits for the next source.
public struct DryRunVerdict: WireMessage {
    public static var section: SectionType { .verdict }
    public var eligible: Bool
    public var reasons: [String]
}

/// Either way: a one-line reason; the connection ends.
public struct ErrorReport: WireMessage {
    public static var section: SectionType { .error }
    public var desc: String
}

/// S→R: the source gives up; the target discards everything.
public struct CancelNotice: WireMessage {
    public static var section: SectionType { .cancel }
    public var desc: String
}

/// S→R: the end of a pre-copy round; the target acknowledges once every page is in place.
public struct RoundEnd: WireMessage {
    public static var section: SectionType { .roundEnd }
    public var round: Int
    /// With several connections: every page of this round came on the first one (a small
    /// round), so the target waits for no `channelSync`.
    public var firstOnly: Bool? = nil
}

/// R→S: every page of the round is in guest memory.
public struct RoundAck: WireMessage {
    public static var section: SectionType { .roundAck }
}

/// R→S: the machine state is loaded; the target waits for `go`.
public struct Ready: WireMessage {
    public static var section: SectionType { .ready }
    /// SHA-256 of each copied image after its fsync, by volume (`send --verify-storage`).
    public var diskHashes: [String: String]? = nil
    /// How long decoding and loading the machine state took the target (ms).
    public var stateLoadMs: Double?
}

/// S→R: the commit. The target may run the guest; the source never will again.
public struct Go: WireMessage {
    public static var section: SectionType { .go }
    /// When the source paused the guest (CLOCK_REALTIME, ns): the target's downtime figure.
    public var pausedAtNs: UInt64
    /// The downtime target and the source's parts of the downtime so far, for the target's `status`.
    public var downtimeTargetMs: Double?
    public var downtime: DowntimeBreakdown?
}

/// R→S: the guest runs on the target.
public struct Running: WireMessage {
    public static var section: SectionType { .running }
    public var resumedAtNs: UInt64
    /// How long resuming the vCPUs and devices took the target (ms).
    public var resumeMs: Double?
}

/// S→R, optional: how the last round went, for the target's `status`.
public struct RoundProgress: WireMessage {
    public static var section: SectionType { .progress }
    public var round: Int
    public var dirtyPagesPerS: Double
    public var bandwidthMBps: Double
    public var throttlePercent: Int
}

/// S→R, first on an extra data connection (`--connections N`): which migration it belongs to
/// (the token from `accept`) and its index, 1…N−1 (0 is the first connection).
public struct ChannelHello: WireMessage {
    public static var section: SectionType { .channel }
    public var token: String
    public var index: Int
}

/// R→S: the data connection is taken (with a key, sealed with the channel's own keys).
public struct ChannelReady: WireMessage {
    public static var section: SectionType { .channelReady }
    public var index: Int
}

/// S→R on a data connection: every page batch of `round` this connection carries was sent
/// before this; the target acknowledges the round only when every connection said so.
public struct ChannelSync: WireMessage {
    public static var section: SectionType { .channelSync }
    public var round: Int
}

/// Encoding and decoding of `WireMessage`s.
enum MessageCodec {
    /// Foundation's JSON machinery costs ~1 ms on first use, and each message type tens of µs
    /// more the first time it is encoded or decoded. Both sides pay that before the migration
    /// starts — never inside the downtime, where `ready`, `go` and `running` are first used.
    static func warmUp() {
        func roundTrip<M: WireMessage>(_ m: M) { _ = try? decode(M.self, from: encode(m)) }
        roundTrip(Hello(streamVersion: 1, vmmVersion: "", name: "", uuid: "", nonce: "", hasKey: false))
        roundTrip(HelloReply(streamVersion: 1, vmmVersion: "", nonce: "", hasKey: false, proof: nil))
        roundTrip(AuthProof(proof: ""))
        roundTrip(Accept(name: ""))
        roundTrip(ErrorReport(desc: ""))
        roundTrip(CancelNotice(desc: ""))
        roundTrip(RoundEnd(round: 0))
        roundTrip(RoundAck())
        roundTrip(Ready())
        roundTrip(Go(pausedAtNs: 0, downtimeTargetMs: 0, downtime: DowntimeBreakdown()))
        roundTrip(Running(resumedAtNs: 0))
        roundTrip(RoundProgress(round: 0, dirtyPagesPerS: 0, bandwidthMBps: 0, throttlePercent: 0))
        roundTrip(ChannelHello(token: "", index: 0))
        roundTrip(ChannelReady(index: 0))
        roundTrip(ChannelSync(round: 0))
    }

    static func encode<M: WireMessage>(_ message: M) -> [UInt8] {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = .sortedKeys
        return (try? e.encode(message)).map(Array.init) ?? Array("{}".utf8)
    }

    static func decode<M: WireMessage>(_ type: M.Type, from payload: [UInt8]) throws -> M {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        do { return try d.decode(M.self, from: Data(payload)) } catch {
            throw MigrationError.stream("malformed \(M.section.name) section: \(Self.describe(error))")
        }
    }

    private static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "'\(snakeCase(key.stringValue))' is missing"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            guard !c.codingPath.isEmpty else { return "not a JSON object" }
            return "'\(c.codingPath.map { snakeCase($0.stringValue) }.joined(separator: "."))' has the wrong type"
        case DecodingError.dataCorrupted: return "not a JSON object"
        default: return "\(error)"
        }
    }

    /// `pausedAtNs` → `paused_at_ns`: a key as it appears on the wire.
    static func snakeCase(_ key: String) -> String {
        var out = ""
        for c in key {
            if c.isUppercase { out += "_" + c.lowercased() } else { out.append(c) }
        }
        return out
    }
}

extension Section {
    /// The payload as message `M` (the section must be of `M`'s type).
    public func message<M: WireMessage>(_ type: M.Type) throws -> M {
        guard self.type == M.section else { throw MigrationError.stream("expected a \(M.section.name) section, got \(self.type.name)") }
        return try MessageCodec.decode(M.self, from: payload)
    }
}
