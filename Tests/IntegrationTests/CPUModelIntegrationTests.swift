import Foundation
import Harness
import Testing

/// CPU models from the command line: this host's offer as a file, baselines, refusals, and a
/// guest with the generic model moving with its model.
@Suite("CPU models", .serialized)
struct CPUModelIntegrationTests {
    @Test("cpu-features --json and cpu-baseline of it make a model file this host runs a guest with")
    func baselineOfThisHostRuns() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let offer = try runSwiftVMM(["cpu-features", "--json", "--name", "here"])
        #expect(offer.status == 0, "\(offer.stderr)")
        let a = dir.appendingPathComponent("a.json").path
        try offer.stdout.write(toFile: a, atomically: true, encoding: .utf8)
        let base = try runSwiftVMM(["cpu-baseline", a, a, "--name", "fleet"])
        #expect(base.status == 0 && base.stdout.contains("\"fleet\""), "\(base.stderr)")
        let b = dir.appendingPathComponent("fleet.json").path
        try base.stdout.write(toFile: b, atomically: true, encoding: .utf8)
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("memtouch.elf"), "--memory", "64M", "--cpu-model", b,
                                 "--cmdline", "size=8M passes=5"])
        #expect(r.status == 1 && r.stdout.contains("PASS"), "\(r.stdout)\n\(r.stderr)")
        let listed = try runSwiftVMM(["cpu-features"])
        #expect(listed.stdout.contains("generic: offered") && listed.stdout.contains("host: offered"), "\(listed.stdout)")
    }

    @Test("a model this host cannot offer is refused in one line naming the missing features; no guest starts")
    func unofferedModelRefused() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let offer = try runSwiftVMM(["cpu-features", "--json"])
        var obj = try #require(try JSONSerialization.jsonObject(with: Data(offer.stdout.utf8)) as? [String: Any])
        var features = try #require(obj["features"] as? [String: Any])
        features["0x7.0.edx"] = 0xffff_ffff as UInt32    // reserved bits no CPU has
        obj["features"] = features
        let file = dir.appendingPathComponent("greedy.json").path
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: file))
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("hello.elf"), "--cpu-model", file])
        #expect(r.status == 2, "\(r.stderr)")
        #expect(r.stderr.contains("cannot offer CPU model") && r.stderr.contains("0x7.0.edx bit"), "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1 && !r.stdout.contains("HELLO"))
        let bad = try runSwiftVMM(["run", "--kernel", Paths.guest("hello.elf"), "--cpu-model", "pentium"])
        #expect(bad.status == 2 && bad.stderr.contains("--cpu-model pentium"), "\(bad.stderr)")
    }

    @Test("a guest started with --cpu-model generic migrates with its model and PASSes on the target")
    func genericGuestMigrates() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=16M heartbeat-ms=200 passes=20000", extra: ["--cpu-model", "generic"])
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, dstAPI) = try rig.target(listen: listen)
        let s = try rig.send(api, to: listen)
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(dst.waitFor("HEARTBEAT", timeout: 60), "\(dst.transcript)")
        let st = control(dstAPI, "x-swiftvmm-query-status")
        #expect(st.contains("generic"), "\(st)")
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
    }
}
