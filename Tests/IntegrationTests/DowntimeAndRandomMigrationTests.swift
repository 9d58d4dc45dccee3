import Foundation
import Glibc
import Harness
import Testing

/// Incompressible memory migrating, and the downtime accounted for part by part.
@Suite("migration of incompressible memory and its downtime", .serialized)
struct DowntimeAndRandomMigrationTests {
    @Test("memtouch write=random, rewriting 16 MiB with fresh random words every pass, migrates and verifies every word of every pass on the target")
    func randomRewritesMigrateWithoutStaleOrTornPages() throws {
        let rig = try MigrationRig()
        let passes = 1500
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=16M write=random heartbeat-ms=200 passes=\(passes)")
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen)
        let report = rig.path("report.json")
        let s = try rig.send(api, to: listen, extra: ["--report", report])
        #expect(s.status == 0, "\(s.stderr)\n\(src.transcript)\n\(dst.transcript)")
        #expect(src.wait(timeout: 30) == 0, "\(src.transcript)")
        #expect(dst.waitFor("PASS passes=\(passes)", timeout: 180), "\(dst.transcript)")
        #expect(dst.wait(timeout: 30) == 1)
        #expect(!dst.stdout.contains("FAIL") && !src.stdout.contains("FAIL"), "\(src.transcript)\n\(dst.transcript)")
        #expect(!src.stdout.contains("PASS"), "the guest finished before it migrated: test proves nothing")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        // Random words do not compress: the pages crossed the wire at full size.
        let raw = (json["raw_page_bytes"] as? NSNumber)?.doubleValue ?? 0
        let wire = (json["bytes_on_wire"] as? NSNumber)?.doubleValue ?? 0
        #expect(raw >= 16 * 1_048_576 && wire >= raw * 0.95, "raw \(raw) wire \(wire)")
    }

    @Test("a downtime above the target is said in words — in send's summary, the report and the target's status — naming its largest part")
    func downtimeAboveTargetIsReported() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=4M heartbeat-ms=200")
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, dstAPI) = try rig.target(listen: listen)
        let report = rig.path("report.json")
        // Held 60 ms between the target's `ready` and the commit: the downtime must exceed 20 ms.
        let s = try rig.send(api, to: listen, extra: ["--report", report, "--downtime-ms", "20", "--hold-before-commit-ms", "60"])
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        // The hold sits between `ready` and `go`: the commit's part.
        #expect(s.stdout.contains("exceeded the 20 ms target: the commit (ready to go) took"), "\(s.stdout)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        #expect((json["downtime_warning"] as? String)?.contains("exceeded the 20 ms target") == true, "\(json)")
        let parts = try #require(json["downtime_parts_ms"] as? [String: Any])
        #expect(Set(parts.keys) == ["pause", "device_drain", "final_pages", "state_save", "state_transfer", "state_load", "commit", "resume"])
        let status = try Child(rig.swiftvmm, ["status", dstAPI], name: "status")
        #expect(status.wait(timeout: 30) == 0)
        #expect(status.stdout.contains("warning: downtime") && status.stdout.contains("exceeded the 20 ms target"), "\(status.stdout)")
        #expect(dst.waitFor("HEARTBEAT", timeout: 30))
        dst.signal(SIGTERM)
        #expect(dst.wait(timeout: 30) == 0)
        #expect(!dst.stdout.contains("FAIL"))
    }

    @Test("a migration within its downtime target carries the breakdown and no warning")
    func downtimeWithinTargetHasPartsAndNoWarning() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "idle heartbeat-ms=200", memory: "128M")
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen)
        let report = rig.path("report.json")
        let s = try rig.send(api, to: listen, extra: ["--report", report, "--downtime-ms", "10000"])
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(!s.stdout.contains("exceeded"), "\(s.stdout)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        #expect(json["downtime_warning"] == nil)
        let parts = try #require(json["downtime_parts_ms"] as? [String: Any])
        #expect(parts.count == 8 && parts.values.allSatisfy { (($0 as? NSNumber)?.doubleValue ?? -1) >= 0 }, "\(parts)")
        #expect(dst.waitFor("HEARTBEAT", timeout: 30))
        dst.signal(SIGTERM)
        #expect(dst.wait(timeout: 30) == 0)
    }
}
