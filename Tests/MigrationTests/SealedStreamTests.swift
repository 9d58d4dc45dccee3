import Foundation
import Testing
@testable import Machine
@_spi(Fuzzing) @testable import Migration

/// With a key, every section after the handshake is sealed (AES-256-GCM, per-direction keys,
/// the sequence number in the nonce).
@Suite("sealed stream")
struct SealedStreamTests {
    static let key = Array("0123456789abcdef0123456789abcdef".utf8)

    /// A connected pair that has switched to sealing, as after a keyed handshake.
    func sealedPair() throws -> (source: Connection, target: Connection) {
        let (a, b) = try connectionPair()
        let s = [UInt8](repeating: 1, count: 32), t = [UInt8](repeating: 2, count: 32)
        try a.startSealing(StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .source))
        try b.startSealing(StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .target))
        return (a, b)
    }

    @Test("sealed sections round-trip both ways; nothing of type or payload is on the wire in clear")
    func roundTrip() throws {
        let (a, b) = try sealedPair()
        let marker = Array("MARKER-be2f9c1e-plaintext".utf8)
        try a.send(.state, bytes: marker + [UInt8](repeating: 7, count: 5000))
        try a.send(Go(pausedAtNs: 42))
        try b.send(Running(resumedAtNs: 43))
        #expect(try b.expect(.state).payload.starts(with: marker))
        #expect(try b.expect(Go.self).pausedAtNs == 42)
        #expect(try a.expect(Running.self).resumedAtNs == 43)

        // On the wire: only sealed sections, and no trace of the marker.
        let (c, d) = try connectionPair()
        let s = [UInt8](repeating: 1, count: 32), t = [UInt8](repeating: 2, count: 32)
        try c.startSealing(StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .source))
        try c.send(.state, bytes: marker)
        let wire = readRaw(d.fd, 8 + 4 + marker.count + 16)
        #expect(wire[0] == 0 && wire[1] == UInt8(SectionType.sealed.rawValue))
        #expect(!contains(wire, marker))
    }

    @Test("an altered, dropped, replayed or reordered section is refused, naming its number")
    func tamperingRefused() throws {
        // Altered: one bit of the ciphertext.
        let frames = try sealedFrames(count: 3)
        for (i, change) in [(1, { (f: inout [UInt8]) in f[20] ^= 1 }), (2, { (f: inout [UInt8]) in f[f.count - 1] ^= 0x80 })] {
            let (_, b) = try replay(frames, changing: i, change)
            #expect(throws: SectionOpener.failed(UInt64(i))) { for _ in 0...i { _ = try b.receive() } }
        }
        // Dropped (0, 2), replayed (0, 0) and reordered (1, 0).
        for order in [[0, 2], [0, 0], [1, 0]] {
            let (x, y) = try connectionPair()
            let s = [UInt8](repeating: 1, count: 32), t = [UInt8](repeating: 2, count: 32)
            try y.startSealing(StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .target))
            for i in order { writeRaw(x.fd, frames[i]) }
            var failedAt: UInt64?
            for n in 0..<order.count {
                do { _ = try y.receive() } catch let e as MigrationError {
                    #expect(e == SectionOpener.failed(UInt64(n)), "\(order): \(e)")
                    failedAt = UInt64(n)
                    break
                }
            }
            #expect(failedAt != nil, "\(order) was accepted")
        }
    }

    @Test("a sealing side refuses an unsealed section, shows an unsealed error as unauthenticated, and a keyless side refuses a sealed one")
    func unsealedRefused() throws {
        let (a, b) = try connectionPair()
        let s = [UInt8](repeating: 1, count: 32), t = [UInt8](repeating: 2, count: 32)
        try b.startSealing(StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .target))
        try a.send(Go(pausedAtNs: 1))
        #expect(throws: MigrationError.stream("stream authentication failed at section 0: an unsealed go section")) { try b.receive() }
        let (c, d) = try connectionPair()
        try d.startSealing(StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .target))
        c.sendError("wrong key")
        #expect(throws: MigrationError.peer("wrong key (unauthenticated)")) { try d.receive() }
        let (e, f) = try sealedPair()
        _ = f
        let (g, h) = try connectionPair()
        _ = g
        try e.send(Go(pausedAtNs: 1))
        writeRaw(g.fd, readRaw(f.fd, 8 + 4 + 18 + 16))
        #expect(throws: MigrationError.self) { try h.receive() }
    }

    @Test("the keys differ by direction and by connection")
    func keysPerDirection() throws {
        let s = [UInt8](repeating: 1, count: 32), t = [UInt8](repeating: 2, count: 32)
        let src = StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .source)
        let dst = StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .target)
        let other = StreamKeys.derive(key: Self.key, sourceNonce: t, targetNonce: s, role: .source)
        #expect(src.seal == dst.open && src.open == dst.seal)
        #expect(src.seal != src.open && src.seal != other.seal)
    }

    @Test("HKDF-SHA256 gives RFC 5869's test case 1")
    func hkdfKnownAnswer() throws {
        let ikm = [UInt8](repeating: 0x0b, count: 22)
        let salt = try #require([UInt8](hexString: "000102030405060708090a0b0c"))
        let info = try #require([UInt8](hexString: "f0f1f2f3f4f5f6f7f8f9"))
        let okm = KeyDerivation.hkdfSHA256(key: ikm, salt: salt, info: info, count: 42)
        #expect(okm?.hexString == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    }

    @Test("HMAC-SHA256 gives RFC 4231's test case 2, whether the message comes in one part or several")
    func hmacKnownAnswer() {
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        let key = Array("Jefe".utf8)
        #expect(KeyDerivation.hmacSHA256(key: key, [Array("what do ya want for nothing?".utf8)]).hexString == expected)
        #expect(KeyDerivation.hmacSHA256(key: key, [Array("what do ya ".utf8), Array("want for nothing?".utf8)]).hexString == expected)
    }

    // MARK: helpers

    /// Three sealed sections as the source would put them on the wire.
    func sealedFrames(count: Int) throws -> [[UInt8]] {
        let (a, b) = try sealedPair()
        _ = b
        var out: [[UInt8]] = []
        for i in 0..<count {
            try a.send(RoundEnd(round: i))
            let payload = MessageCodec.encode(RoundEnd(round: i))
            out.append(readRaw(b.fd, 8 + 4 + payload.count + 16))
        }
        return out
    }

    /// A target-side connection fed `frames` with frame `index` changed.
    func replay(_ frames: [[UInt8]], changing index: Int, _ change: (inout [UInt8]) -> Void) throws -> (Connection, Connection) {
        let (x, y) = try connectionPair()
        let s = [UInt8](repeating: 1, count: 32), t = [UInt8](repeating: 2, count: 32)
        try y.startSealing(StreamKeys.derive(key: Self.key, sourceNonce: s, targetNonce: t, role: .target))
        for (i, f) in frames.enumerated() {
            var f = f
            if i == index { change(&f) }
            writeRaw(x.fd, f)
        }
        return (x, y)
    }
}

/// Whether `needle` occurs in `haystack`.
func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
        if Array(haystack[i..<(i + needle.count)]) == needle { return true }
    }
    return false
}

/// Whole keyed migrations in one process.
@Suite("sealed migration", .serialized)
struct SealedMigrationTests {
    static let marker = "MARKER-4d2a91f0c37e5b86"

    /// Migrates memtouch (with `marker` in guest memory, from its command line) through a link
    /// that records the source's bytes; returns the capture and the outcome.
    func migrate(key: [UInt8]?, fault: FaultyLink.Fault = .none) throws -> (capture: [UInt8], source: Error?, target: Error?, guest: LocalGuest) {
        let guest = try LocalGuest("memtouch.elf", cmdline: "size=8M heartbeat-ms=100 passes=400000 tag=\(Self.marker)")
        let migration = try LocalMigration { $0.key = key }
        let link = try FaultyLink(in: migration.dir, to: migration.endpoint, fault: fault)
        var options = SendOptions(endpoint: link.endpoint)
        options.key = key
        let result = Result { try MigrationSource(vm: guest.vm, options: options).run() }
        let target = migration.targetResult()
        if case .success(let vm)? = target { vm.tearDown(.signal(SIGTERM)) }
        return (link.captured, result.failure, target?.failure, guest)
    }

    @Test("a keyed migration succeeds and its captured stream holds no plaintext written into guest memory")
    func sealedStreamHidesGuestMemory() throws {
        let clear = try migrate(key: nil)
        #expect(clear.source == nil && clear.target == nil)
        #expect(contains(clear.capture, Array(Self.marker.utf8)), "the marker must be visible without a key, or this test proves nothing")
        let sealed = try migrate(key: SealedStreamTests.key)
        #expect(sealed.source == nil && sealed.target == nil, "\(String(describing: sealed.source)) / \(String(describing: sealed.target))")
        #expect(!contains(sealed.capture, Array(Self.marker.utf8)))
        #expect(sealed.guest.vm.stopReason == .migrated)
    }

    @Test("one byte flipped in a sealed page section: refused as an authentication failure, the guest keeps running on the source")
    func flippedSealedByteRefused() throws {
        let r = try migrate(key: SealedStreamTests.key, fault: .flipSourceByte(at: 30_000))
        let target = "\(r.target.map { "\($0)" } ?? "accepted")"
        #expect(target.contains("stream authentication failed at section"), "\(target)")
        #expect(r.source != nil)
        #expect(r.guest.beatsAgain())
    }
}
