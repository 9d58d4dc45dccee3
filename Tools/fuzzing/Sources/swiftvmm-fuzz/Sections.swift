import Foundation
import Machine
@_spi(Fuzzing) import Migration

/// The migration stream reader: preamble, framed and checksummed sections, the compatibility
/// rules, sealed sections (AES-GCM under a fixed key), and every section's payload decoder.
///
/// The first byte chooses the mode: bit 0 set — the rest is a list of records
/// `u8 op | u24 length | bytes`, each sealed by the harness as the next section (op & 3: 0 sealed,
/// 1 sealed with one bit flipped, 2 written as is, 3 sealed after a skipped sequence number) and
/// read back by an opener; bit 0 clear — the rest is a stream as captured (preamble, sections),
/// with every section's CRC recomputed first when bit 1 is set, so that the fuzzer gets past
/// the checksum.
enum SectionsTarget {
    nonisolated(unsafe) static let sourceKeys = keys(.source)
    nonisolated(unsafe) static let targetKeys = keys(.target)

    static func keys(_ role: Auth.Role) -> StreamKeys {
        StreamKeys.derive(key: [UInt8](repeating: 0x5a, count: 32), sourceNonce: [UInt8](repeating: 1, count: 32),
                          targetNonce: [UInt8](repeating: 2, count: 32), role: role)
    }

    static func run(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        let body = Array(data.dropFirst())
        if mode & 1 != 0 {
            let reader = SectionReader(ByteBufferSource(sealedStream(body)))
            guard let opener = try? SectionOpener(key: targetKeys.open) else { return }
            drain(reader, opener: opener)
            return
        }
        let stream = mode & 2 != 0 ? fixingChecksums(body) : body
        _ = StreamInspector.stream(stream)
        let reader = SectionReader(ByteBufferSource(stream))
        guard (try? reader.readPreamble()) != nil else { return }
        drain(reader, opener: nil)
    }

    /// Reads sections until the reader refuses one or the input ends.
    static func drain(_ reader: SectionReader, opener: SectionOpener?) {
        for _ in 0 ..< 1024 {
            guard let section = try? reader.read(opener: opener) else { return }
            interpret(section)
        }
    }

    /// Decodes a section's payload the way the side receiving it does.
    static func interpret(_ s: Section) {
        switch s.type {
        case .hello: _ = try? s.message(Hello.self)
        case .helloReply: _ = try? s.message(HelloReply.self)
        case .auth: _ = try? s.message(AuthProof.self)
        case .accept: _ = try? s.message(Accept.self)
        case .error: _ = try? s.message(ErrorReport.self)
        case .cancel: _ = try? s.message(CancelNotice.self)
        case .roundEnd: _ = try? s.message(RoundEnd.self)
        case .roundAck: _ = try? s.message(RoundAck.self)
        case .ready: _ = try? s.message(Ready.self)
        case .go: _ = try? s.message(Go.self)
        case .running: _ = try? s.message(Running.self)
        case .progress: _ = try? s.message(RoundProgress.self)
        case .verdict: _ = try? s.message(DryRunVerdict.self)
        case .config:
            if let node = try? FDTCodec.decode(s.payload) { _ = try? MachineDescription(node: node) }
        case .state: StateTarget.run(s.payload)
        case .pages: PagesTarget.run(s.payload)
        case .diskBlocks:
            if let run = try? DiskRun(decoding: s.payload) { _ = try? run.bytes() }
        case .handover: _ = try? s.message(HandoverOffer.self)
        case .channel: _ = try? s.message(ChannelHello.self)
        case .channelReady: _ = try? s.message(ChannelReady.self)
        case .channelSync: _ = try? s.message(ChannelSync.self)
        case .sealed: require(false, "the reader returned a sealed section unopened")
        }
    }

    /// `stream` with each framed, unsealed section's CRC trailer recomputed.
    static func fixingChecksums(_ stream: [UInt8]) -> [UInt8] {
        var out = stream
        var at = 16
        while at + 8 <= out.count {
            let type = UInt16(out[at]) << 8 | UInt16(out[at + 1])
            let length = Int(out[at + 4]) << 24 | Int(out[at + 5]) << 16 | Int(out[at + 6]) << 8 | Int(out[at + 7])
            let end = at + 8 + length
            if type == SectionType.sealed.rawValue { at = end; continue }
            guard end + 4 <= out.count else { break }
            let crc = out[at ..< end].withUnsafeBytes { CRC32C.update(0, $0) }
            out.replaceSubrange(end ..< end + 4, with: bigEndian32(crc))
            at = end + 4
        }
        return out
    }

    /// The records of `body` sealed (or not) as the source would send them.
    static func sealedStream(_ body: [UInt8]) -> [UInt8] {
        guard let sealer = try? SectionSealer(key: sourceKeys.seal) else { return [] }
        var stream: [UInt8] = []
        var i = 0
        while i + 4 <= body.count {
            let op = body[i]
            let length = Int(body[i + 1]) << 16 | Int(body[i + 2]) << 8 | Int(body[i + 3])
            i += 4
            let record = Array(body[i ..< min(body.count, i + length)])
            i += record.count
            switch op & 3 {
            case 2:
                stream += record
            case 3:
                _ = sealed([], sealer)
                stream += sealed(record, sealer)
            default:
                var section = sealed(record, sealer)
                if op & 3 == 1, !section.isEmpty {
                    section[Int(op >> 2) % section.count] ^= 1 << (op >> 5)
                }
                stream += section
            }
        }
        return stream
    }

    /// `plaintext` (`payload | u16 type | u16 flags`) as one sealed section.
    static func sealed(_ plaintext: [UInt8], _ sealer: SectionSealer) -> [UInt8] {
        let header: [UInt8] = [0, UInt8(SectionType.sealed.rawValue), 0, 0] + bigEndian32(UInt32(plaintext.count + 16))
        var body = plaintext + [UInt8](repeating: 0, count: 16)
        let ok = body.withUnsafeMutableBytes { (try? sealer.seal($0, count: plaintext.count, header: header)) != nil }
        return ok ? header + body : []
    }
}
