import Foundation
import Glibc
import Testing
@testable import Machine
@testable import Migration

/// The target's side of `send --connections N` against a hand-driven source: an extra
/// connection must present this migration's token and a free index; anything else is refused
/// and the target keeps waiting for the real one.
@Suite("extra data connections", .serialized)
struct ChannelAcceptTests {
    /// Opens a connection to `endpoint` and presents `token` as data connection `index`;
    /// returns the target's `channelReady`, or the error that ended the attempt.
    static func present(_ endpoint: Endpoint, token: String, index: Int) -> Result<ChannelReady, Error> {
        Result {
            let c = Connection(fd: try Transport.connect(endpoint))
            defer { c.close() }
            c.idleTimeout = 15
            try c.writePreamble()
            _ = try c.readPreamble()
            try c.send(ChannelHello(token: token, index: index))
            return try c.expect(ChannelReady.self)
        }
    }

    @Test("a wrong token, an index out of range and a taken index are refused; the right token is taken once")
    func strangersAreRefused() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: "size=4M heartbeat-ms=100 passes=0")
        let migration = try LocalMigration()
        let conn = Connection(fd: try Transport.connect(migration.endpoint))
        defer { conn.close() }
        conn.idleTimeout = 30
        let hello = Hello(streamVersion: Wire.streamVersion, vmmVersion: "test", name: "local", uuid: UUID().uuidString.lowercased(),
                          nonce: "", hasKey: false)
        _ = try Handshake.initiate(conn, hello: hello, key: nil)
        var description = MachineDescription.of(guest.vm, uuid: hello.uuid)
        description.channels = 3
        try conn.send(.config, bytes: try FDTCodec.encode(description.stateNode))
        let accept = try conn.expect(Accept.self)
        let token = try #require(accept.channelToken)
        #expect(token.count == 64, "\(token)")

        let wrong = String(repeating: "0", count: 64)
        #expect(throws: (any Error).self) { try Self.present(migration.endpoint, token: wrong, index: 1).get() }
        #expect(throws: (any Error).self) { try Self.present(migration.endpoint, token: token, index: 3).get() }
        #expect(throws: (any Error).self) { try Self.present(migration.endpoint, token: token, index: 0).get() }
        // The real ones are still taken after the strangers were turned away.
        #expect(try Self.present(migration.endpoint, token: token, index: 2).get().index == 2)
        #expect(throws: (any Error).self) { try Self.present(migration.endpoint, token: token, index: 2).get() }
        #expect(try Self.present(migration.endpoint, token: token, index: 1).get().index == 1)
        // The migration fails cleanly: the target never runs a guest it did not receive.
        try conn.send(CancelNotice(desc: "test over"))
        let result = migration.targetResult(timeout: 30)
        #expect(result?.failure != nil, "\(String(describing: result))")
        guest.vm.tearDown(.signal(SIGTERM))
    }

    @Test("a connection that says nothing holds up none of the real ones")
    func silentStrangerHoldsNothingUp() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: "size=4M heartbeat-ms=100 passes=0")
        let migration = try LocalMigration()
        let conn = Connection(fd: try Transport.connect(migration.endpoint))
        defer { conn.close() }
        conn.idleTimeout = 30
        let hello = Hello(streamVersion: Wire.streamVersion, vmmVersion: "test", name: "local", uuid: UUID().uuidString.lowercased(),
                          nonce: "", hasKey: false)
        _ = try Handshake.initiate(conn, hello: hello, key: nil)
        var description = MachineDescription.of(guest.vm, uuid: hello.uuid)
        description.channels = 3
        try conn.send(.config, bytes: try FDTCodec.encode(description.stateNode))
        let token = try #require(try conn.expect(Accept.self).channelToken)

        // The stranger connects first and, once the target has greeted it, says nothing.
        let stranger = Connection(fd: try Transport.connect(migration.endpoint))
        defer { stranger.close() }
        stranger.idleTimeout = 15
        _ = try stranger.readPreamble()
        #expect(try Self.present(migration.endpoint, token: token, index: 1).get().index == 1)
        #expect(try Self.present(migration.endpoint, token: token, index: 2).get().index == 2)
        // Both were taken while the stranger's greeting was still waiting (it is dropped only
        // after 3 s of silence): its connection is still open, nothing more written to it.
        var byte: UInt8 = 0
        let n = recv(stranger.fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
        #expect(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "the stranger's connection ended or got data: \(n)")
        try conn.send(CancelNotice(desc: "test over"))
        let result = migration.targetResult(timeout: 30)
        #expect(result?.failure != nil, "\(String(describing: result))")
        guest.vm.tearDown(.signal(SIGTERM))
    }
}
