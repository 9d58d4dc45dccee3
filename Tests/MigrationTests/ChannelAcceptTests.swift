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
        let source = try HandDrivenSource(channels: 3)
        defer { source.close() }
        let (migration, token) = (source.migration, source.token)
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
        try source.cancel()
    }

    @Test("a connection that says nothing holds up none of the real ones")
    func silentStrangerHoldsNothingUp() throws {
        let source = try HandDrivenSource(channels: 3)
        defer { source.close() }
        let (migration, token) = (source.migration, source.token)

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
        try source.cancel()
    }
}

/// The source's side of a migration driven by hand up to the target's `accept`: a local guest's
/// description asking for `channels` connections, and the token the target answered with.
struct HandDrivenSource {
    let guest: LocalGuest
    let migration: LocalMigration
    let conn: Connection
    let token: String

    init(channels: Int) throws {
        guest = try LocalGuest("memtouch.elf", cmdline: "size=4M heartbeat-ms=100 passes=0")
        migration = try LocalMigration()
        conn = Connection(fd: try Transport.connect(migration.endpoint))
        conn.idleTimeout = 30
        let hello = Hello(streamVersion: Wire.streamVersion, vmmVersion: "test", name: "local", uuid: UUID().uuidString.lowercased(),
                          nonce: "", hasKey: false)
        _ = try Handshake.initiate(conn, hello: hello, key: nil)
        var description = MachineDescription.of(guest.vm, uuid: hello.uuid)
        description.channels = channels
        try conn.send(.config, bytes: try FDTCodec.encode(description.stateNode))
        token = try #require(try conn.expect(Accept.self).channelToken)
    }

    /// Ends the migration: the target fails it cleanly, never running a guest it did not receive.
    func cancel() throws {
        try conn.send(CancelNotice(desc: "test over"))
        let result = migration.targetResult(timeout: 30)
        #expect(result?.failure != nil, "\(String(describing: result))")
    }

    func close() {
        conn.close()
        guest.vm.tearDown(.signal(SIGTERM))
    }
}
