import Foundation
import Glibc
import Harness
import Testing

/// `send --connections N`: the pages of one migration spread over several connections.
@Suite("migration over several connections", .serialized)
struct MultiConnectionMigrationTests {
    static func key(_ rig: MigrationRig) throws -> String {
        let file = rig.path("mig.key")
        try "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    @Test("memtouch write=random migrates over four sealed TCP connections and verifies every word of every pass on the target")
    func randomRewritesMigrateOverFourSealedConnections() throws {
        let rig = try MigrationRig()
        let passes = 1500
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=16M write=random heartbeat-ms=200 passes=\(passes)")
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let key = try Self.key(rig)
        let listen = "tcp:127.0.0.1:\(MigrationRig.freePort())"
        let (dst, _) = try rig.target(listen: listen, extra: ["--key-file", key])
        let report = rig.path("report.json")
        let s = try rig.send(api, to: listen, extra: ["--key-file", key, "--connections", "4", "--report", report])
        #expect(s.status == 0, "\(s.stderr)\n\(src.transcript)\n\(dst.transcript)")
        #expect(s.stdout.contains("over 4 connections"), "\(s.stdout)")
        #expect(src.wait(timeout: 30) == 0, "\(src.transcript)")
        #expect(dst.waitFor("PASS passes=\(passes)", timeout: 180), "\(dst.transcript)")
        #expect(!dst.stdout.contains("FAIL") && !src.stdout.contains("FAIL"), "\(src.transcript)\n\(dst.transcript)")
        #expect(!src.stdout.contains("PASS"), "the guest finished before it migrated: test proves nothing")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        #expect(json["connections"] as? Int == 4)
        let raw = (json["raw_page_bytes"] as? NSNumber)?.doubleValue ?? 0
        #expect(raw >= 16 * 1_048_576, "raw \(raw)")
    }

    @Test("TCP defaults to four connections, a UNIX socket to one")
    func defaultConnectionCounts() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=16M heartbeat-ms=200 passes=20000")
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let tcp = "tcp:127.0.0.1:\(MigrationRig.freePort())"
        let (mid, midAPI) = try rig.target(listen: tcp)
        let first = try rig.send(api, to: tcp, extra: ["--report", rig.path("tcp.json")])
        #expect(first.status == 0 && first.stdout.contains("over 4 connections"), "\(first.stdout)\n\(first.stderr)\n\(mid.transcript)")
        let unix = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: unix)
        let second = try rig.send(midAPI, to: unix, extra: ["--report", rig.path("unix.json")])
        #expect(second.status == 0 && !second.stdout.contains("connections"), "\(second.stdout)\n\(second.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: rig.path("unix.json")))) as? [String: Any])
        #expect(json["connections"] as? Int == 1)
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
    }

    @Test("a data connection cut mid-round fails the migration; the target never ran the guest, which PASSes on the source", arguments: ["target", "source"])
    func cutDataConnectionKeepsGuestOnSource(side: String) throws {
        let rig = try MigrationRig()
        let fault = ["SWIFTVMM_FAULT": "\(side):channel-mid-round:close"]
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=32M heartbeat-ms=200 passes=20000",
                                        environment: side == "source" ? fault : [:])
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "tcp:127.0.0.1:\(MigrationRig.freePort())"
        let (dst, _) = try rig.target(listen: listen, environment: side == "target" ? fault : [:])
        let s = try rig.send(api, to: listen, extra: ["--connections", "3"])
        #expect(s.status != 0, "\(s.stdout)\n\(dst.transcript)")
        #expect(s.stderr.contains("data connection"), "\(s.stderr)")
        #expect(s.stderr.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").count == 1, "\(s.stderr)")
        let status = dst.wait(timeout: 30)
        #expect(status != nil && status != 0, "\(dst.transcript)")
        #expect(!dst.stdout.contains("HEARTBEAT") && !dst.stdout.contains("PASS"), "the target ran the guest")
        #expect(src.printsAgain(), "\(src.transcript)")
        #expect(src.waitFor("PASS passes=20000", timeout: 120), "\(src.transcript)")
        #expect(!src.stdout.contains("FAIL"))
    }
}
