import Foundation
import Glibc
import Testing
@testable import Migration

@Suite("migration stream: preamble, checksummed sections, compatibility rules")
struct StreamTests {
    @Test("preamble: magic, big-endian version, reserved word; the reader returns the version")
    func preamble() throws {
        let (a, b) = try connectionPair()
        try a.writePreamble()
        #expect(try b.readPreamble() == Wire.streamVersion)
        try a.writePreamble(version: 0x0102_0304)
        #expect(readRaw(b.fd, 16) == Array("SWIFTVMM".utf8) + [1, 2, 3, 4, 0, 0, 0, 0])
        try b.writePreamble(version: 7)
        #expect(try a.readPreamble() == 7)
    }

    @Test("a preamble without the magic is refused")
    func badMagic() throws {
        let (a, b) = try connectionPair()
        writeRaw(a.fd, Array("SWIFTVMN".utf8) + [0, 0, 0, 1, 0, 0, 0, 0])
        let message = expectStreamError { _ = try b.readPreamble() }
        #expect(message.contains("bad magic"))
        writeRaw(a.fd, Array("GET / HTTP/1.1\r\n".utf8))
        expectStreamError { _ = try b.readPreamble() }
    }

    @Test("a section on the wire is type, flags, length, payload and CRC-32C, all big-endian")
    func wireFormat() throws {
        let (a, b) = try connectionPair()
        try a.send(.config, bytes: [1, 2, 3])
        #expect(readRaw(b.fd, 15) == frame(4, [1, 2, 3]))
        try a.send(.progress, bytes: [9], optional: true)
        #expect(readRaw(b.fd, 13) == frame(14, flags: 1, [9]))
        try a.send(.go, bytes: [])
        #expect(readRaw(b.fd, 12) == frame(11, []))
        #expect(a.bytesWritten == 15 + 13 + 12)
    }

    @Test("sections round-trip: messages, bytes, empty, and a payload sent in parts")
    func roundTrip() throws {
        let (a, b) = try connectionPair()
        try a.send(Hello(streamVersion: 1, vmmVersion: "0.1.0", name: "guest", uuid: "u", nonce: "00", hasKey: true))
        try a.send(.pages, bytes: [0, 1, 2, 255])
        try a.send(.ready, bytes: [])
        let p1: [UInt8] = [1, 2], p2: [UInt8] = [], p3: [UInt8] = Array(repeating: 7, count: 100)
        try p1.withUnsafeBytes { x in try p2.withUnsafeBytes { y in try p3.withUnsafeBytes { z in
            try a.send(.state, parts: [x, y, z])
        } } }

        let hello = try b.expect(Hello.self)
        #expect(hello.name == "guest" && hello.hasKey && hello.streamVersion == 1)
        #expect(try b.expect(.pages).payload == [0, 1, 2, 255])
        #expect(try b.receive().payload.isEmpty)
        let state = try b.receive()
        #expect(state.type == .state)
        #expect(state.payload == p1 + p2 + p3)
        #expect(b.bytesRead == a.bytesWritten)
        #expect(!b.hasIncoming())
    }

    @Test("big sections (larger than the socket buffer and the read buffer) arrive intact")
    func bigSections() throws {
        let (a, b) = try connectionPair()
        var g = TestRandom(seed: 99)
        let big = g.bytes(3 << 20)
        let medium = g.bytes(100_000)
        let writer = Background {
            try a.send(.state, bytes: big)
            try medium.withUnsafeBytes { m in try big.withUnsafeBytes { bg in try a.send(.pages, parts: [m, bg, m]) } }
            try a.send(.go, bytes: [])
        }
        #expect(try b.expect(.state).payload == big)
        #expect(try b.expect(.pages).payload == medium + big + medium)
        #expect(try b.expect(.go).payload.isEmpty)
        try writer.join()
    }

    @Test("a flipped payload byte fails the checksum, naming the section")
    func checksum() throws {
        let (a, b) = try connectionPair()
        var bytes = frame(SectionType.state.rawValue, [10, 20, 30, 40])
        bytes[9] ^= 0x04
        writeRaw(a.fd, bytes)
        let message = expectStreamError { _ = try b.receive() }
        #expect(message.contains("checksum"))
        #expect(message.contains("state"))

        var trailer = frame(SectionType.go.rawValue, [])
        trailer[trailer.count - 1] ^= 0x80
        writeRaw(a.fd, trailer)
        #expect(expectStreamError { _ = try b.receive() }.contains("checksum"))

        var flags = frame(SectionType.go.rawValue, [])
        flags[2] ^= 0x40                                   // the header is covered too
        writeRaw(a.fd, flags)
        #expect(expectStreamError { _ = try b.receive() }.contains("checksum"))
    }

    @Test("an unknown optional section is skipped; an unknown required one is refused, naming its type")
    func unknownTypes() throws {
        let (a, b) = try connectionPair()
        writeRaw(a.fd, frame(999, flags: 1, [1, 2, 3]) + frame(1000, flags: 0x8001, []))
        try a.send(.ready, bytes: [42])
        let s = try b.receive()
        #expect(s.type == .ready && s.payload == [42])

        writeRaw(a.fd, frame(999, [1, 2, 3]))
        let message = expectStreamError { _ = try b.receive() }
        #expect(message.contains("999"))
        #expect(message.contains("unknown required section"))
    }

    @Test("a length over Wire.maxSectionLength is refused from the header alone")
    func oversized() throws {
        for length in [UInt32(Wire.maxSectionLength + 1), UInt32.max] {
            let (a, b) = try connectionPair()
            // Only the header: a reader that tried to read (or allocate) the payload would see EOF.
            writeRaw(a.fd, [0, 7, 0, 0] + be32(length))
            a.close()
            let message = expectStreamError { _ = try b.receive() }
            #expect(message.contains("\(length) bytes"))
            #expect(message.contains("64 MiB limit"))
        }
        // Exactly the limit is still a legal length (it then waits for the bytes: EOF here).
        let (a, b) = try connectionPair()
        writeRaw(a.fd, [0, 7, 0, 0] + be32(UInt32(Wire.maxSectionLength)))
        a.close()
        #expect(throws: MigrationError.connection("connection closed by peer")) { try b.receive() }
    }

    @Test("expect: an error section becomes .peer, cancel becomes .cancelled, anything else is a stream error")
    func expectSemantics() throws {
        let (a, b) = try connectionPair()
        a.sendError("disk on fire")
        #expect(throws: MigrationError.peer("disk on fire")) { try b.expect(.accept) }
        try a.send(.error, bytes: Array("not json".utf8))
        #expect(throws: MigrationError.peer("unknown error")) { try b.expect(.accept) }
        try a.send(CancelNotice(desc: "cancelled by user"))
        #expect(throws: MigrationError.cancelled("cancelled by user")) { try b.expect(.ready) }
        try a.send(.hello, bytes: Array("{}".utf8))
        #expect(throws: MigrationError.stream("expected a accept section, got hello")) { try b.expect(.accept) }
        try a.send(ErrorReport(desc: "x"))
        #expect(try b.expect(.error).message(ErrorReport.self).desc == "x")
        #expect(MigrationError.peer("disk on fire").description == "peer: disk on fire")
    }

    @Test("a message section that is not the JSON object its type needs is a stream error naming the section")
    func badJSON() throws {
        for payload in [Array("[1,2]".utf8), Array("{".utf8), [], [0xff, 0xfe]] {
            let s = Section(type: .hello, payload: payload)
            #expect(throws: MigrationError.stream("malformed hello section: not a JSON object")) { try s.message(Hello.self) }
        }
        let missing = Section(type: .go, payload: Array("{}".utf8))
        #expect(throws: MigrationError.stream("malformed go section: 'paused_at_ns' is missing")) { try missing.message(Go.self) }
        let wrongType = Section(type: .roundEnd, payload: Array("{\"round\":\"x\"}".utf8))
        #expect(throws: MigrationError.stream("malformed roundEnd section: 'round' has the wrong type")) { try wrongType.message(RoundEnd.self) }
        let wrongSection = Section(type: .ready, payload: Array("{}".utf8))
        #expect(throws: MigrationError.stream("expected a go section, got ready")) { try wrongSection.message(Go.self) }
    }

    @Test("a connection closed mid-section is a connection error; abort() unblocks a reader")
    func closedAndAborted() throws {
        let (a, b) = try connectionPair()
        writeRaw(a.fd, Array(frame(SectionType.state.rawValue, [1, 2, 3, 4, 5]).prefix(10)))
        a.close()
        #expect(throws: MigrationError.connection("connection closed by peer")) { try b.receive() }

        let (c, d) = try connectionPair()
        // Aborted while the reader blocks or before it starts: the read ends either way.
        let aborter = Background { d.abort() }
        #expect(throws: MigrationError.connection("connection closed by peer")) { try d.receive() }
        try aborter.join()
        #expect(c.waitIncoming(timeoutMs: 1000))          // the peer sees the abort as end of stream
    }
}
