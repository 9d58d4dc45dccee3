import Foundation
import Glibc
import Testing
@testable import Migration

@Suite("endpoints and transport")
struct TransportTests {
    @Test("good endpoints parse, and their description parses back to the same endpoint")
    func goodEndpoints() throws {
        let cases: [(String, Endpoint)] = [
            ("unix:/tmp/mig.sock", .unix(path: "/tmp/mig.sock")),
            ("unix:relative.sock", .unix(path: "relative.sock")),
            ("unix:" + String(repeating: "a", count: 107), .unix(path: String(repeating: "a", count: 107))),
            ("tcp:127.0.0.1:4444", .tcp(host: "127.0.0.1", port: 4444)),
            ("tcp:example.com:65535", .tcp(host: "example.com", port: 65535)),
            ("tcp::4444", .tcp(host: "0.0.0.0", port: 4444)),
            ("tcp:[::1]:80", .tcp(host: "::1", port: 80)),
            ("tcp:::1:80", .tcp(host: "::1", port: 80)),
            ("tcp:host:1", .tcp(host: "host", port: 1)),
        ]
        for (text, expected) in cases {
            let e = try Endpoint.parse(text)
            #expect(e == expected, "\(text)")
            #expect(try Endpoint.parse(e.description) == e)
        }
        #expect(Endpoint.tcp(host: "h", port: 9).description == "tcp:h:9")
        #expect(Endpoint.unix(path: "/p").description == "unix:/p")
    }

    @Test("bad endpoints are usage errors quoting the input")
    func badEndpoints() {
        for text in ["", "unix:", "unix:" + String(repeating: "a", count: 108), "tcp:", "tcp:host", "tcp:host:",
                     "tcp:host:0", "tcp:host:65536", "tcp:host:abc", "tcp:host:-1", "tcp:host: 80",
                     "http://host:80", "host:80", "UNIX:/tmp/x", "udp:host:80"] {
            do {
                _ = try Endpoint.parse(text)
                Issue.record("'\(text)' accepted")
            } catch MigrationError.usage(let message) {
                #expect(message.contains("'\(text)'"), "\(text): \(message)")
            } catch {
                Issue.record("'\(text)': \(error)")
            }
        }
    }

    @Test("listen, connect and accept over a UNIX socket carry a stream; a second listener is refused")
    func unixSocket() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-transport-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let endpoint = Endpoint.unix(path: dir.appendingPathComponent("m.sock").path)

        let listener = try Transport.listen(endpoint)
        defer { close(listener) }
        let client = Connection(fd: try Transport.connect(endpoint))
        let accepted = try #require(try Transport.acceptOne(listener, tcp: false, cancelled: { false }))
        let server = Connection(fd: accepted)
        try client.writePreamble()
        try client.send(RoundEnd(round: 1))
        #expect(try server.readPreamble() == Wire.streamVersion)
        #expect(try server.expect(RoundEnd.self).round == 1)

        #expect(throws: MigrationError.self) { try Transport.listen(endpoint) }   // busy
        #expect(try Transport.acceptOne(listener, tcp: false, cancelled: { true }) == nil)
    }

    @Test("connecting to nothing and listening on a non-socket fail with errors naming the endpoint")
    func failures() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-transport-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let missing = Endpoint.unix(path: dir.appendingPathComponent("absent.sock").path)
        do {
            _ = try Transport.connect(missing)
            Issue.record("connected to a missing socket")
        } catch MigrationError.connection(let message) {
            #expect(message.contains(missing.description))
        }

        let file = dir.appendingPathComponent("plain")
        try Data("x".utf8).write(to: file)
        do {
            _ = try Transport.listen(.unix(path: file.path))
            Issue.record("listened on a regular file")
        } catch MigrationError.usage(let message) {
            #expect(message.contains("is not a socket"))
        }
        #expect(FileManager.default.fileExists(atPath: file.path))     // and did not delete it
    }
}
