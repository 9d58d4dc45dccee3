import Foundation
import Glibc
import Harness
import Testing

/// Live migration between two local swiftvmm processes, judged by the guest's own verdict.
@Suite("live migration", .serialized)
struct MigrationTests {
    /// memtouch: ~3000 passes/s over 32 MiB at native speed, far fewer while dirty logging.
    static let memtouch = "size=32M heartbeat-ms=200 passes=20000"

    @Test("memtouch migrates over a UNIX socket while dirtying memory and PASSes on the target")
    func migratesWhileGuestDirtiesMemoryOverUnixSocket() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouch)
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen)
        let report = rig.path("report.json")
        let s = try rig.send(api, to: listen, extra: ["--report", report])
        #expect(s.status == 0, "\(s.stderr)\n\(src.transcript)\n\(dst.transcript)")
        #expect(s.stdout.contains("migrated:"))
        #expect(src.wait(timeout: 30) == 0, "source should exit 0 after hand-off\n\(src.transcript)")
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
        #expect(dst.wait(timeout: 30) == 1)
        #expect(!dst.stdout.contains("FAIL") && !src.stdout.contains("FAIL"))
        #expect(!src.stdout.contains("PASS"), "the guest finished before it migrated: test proves nothing")
        let data = try Data(contentsOf: URL(fileURLWithPath: report))
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect((json["rounds"] as? [Any])?.isEmpty == false)
        #expect(json["downtime_ms"] != nil && json["total_ms"] != nil && json["bytes_on_wire"] != nil)
    }

    @Test("memtouch migrates over TCP on loopback and PASSes on the target")
    func migratesOverTCPLoopback() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouch)
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "tcp:127.0.0.1:\(MigrationRig.freePort())"
        let (dst, _) = try rig.target(listen: listen)
        let s = try rig.send(api, to: listen)
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(src.wait(timeout: 30) == 0)
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
        #expect(!dst.stdout.contains("FAIL"))
    }

    @Test("ping-pong: the same guest migrates A→B→A… 10 times and PASSes at the end")
    func pingPongTenTimes() throws {
        let rig = try MigrationRig()
        var (current, api) = try rig.source("memtouch.elf", cmdline: "size=16M heartbeat-ms=200 passes=40000")
        #expect(current.waitFor("HEARTBEAT", timeout: 30))
        var all = [current]
        for hop in 1...10 {
            let listen = "unix:" + rig.path("hop\(hop).sock")
            let (next, nextAPI) = try rig.target(listen: listen)
            all.append(next)
            let s = try rig.send(api, to: listen)
            try #require(s.status == 0, "hop \(hop): \(s.stderr)\n\(current.transcript)\n\(next.transcript)")
            #expect(current.wait(timeout: 30) == 0, "hop \(hop) source did not exit")
            #expect(!current.stdout.contains("FAIL"))
            current = next
            api = nextAPI
        }
        #expect(current.waitFor("PASS passes=40000", timeout: 180), "\(current.transcript)")
        #expect(all.allSatisfy { !$0.stdout.contains("FAIL") })
        #expect(all.dropLast().allSatisfy { !$0.stdout.contains("PASS") }, "the guest finished before the last hop")
    }

    @Test("smp.elf with 2 vCPUs migrates and PASSes on the target")
    func migratesTwoVCPUs() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("smp.elf", cmdline: "size=16M passes=20000 heartbeat-ms=200", cpus: 2)
        #expect(src.waitFor("CPU 1 up", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen)
        let s = try rig.send(api, to: listen)
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(dst.waitFor("PASS cpus=2", timeout: 180), "\(src.transcript)\n\(dst.transcript)")
        #expect(!dst.stdout.contains("FAIL"))
        #expect(!src.stdout.contains("PASS"))
    }

    @Test("the TSC and kvmclock never go backwards across a migration")
    func timeNeverGoesBackwards() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("timecheck.elf", cmdline: "seconds=6 tick-ms=200")
        #expect(src.waitFor("TICK", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen)
        let s = try rig.send(api, to: listen)
        #expect(s.status == 0, "\(s.stderr)")
        #expect(dst.waitFor("PASS time", timeout: 60), "\(src.transcript)\n\(dst.transcript)")
        #expect(!dst.stdout.contains("FAIL"))
        #expect(!src.stdout.contains("PASS"))
    }
}

/// `swiftvmm inspect` reads what the machine-state path writes.
@Suite("inspect", .serialized)
struct InspectTests {
    @Test("x-swiftvmm-dump-state writes an FDT of the paused machine that inspect decodes (vCPUs, irqchip, devices)")
    func inspectDecodesDumpedState() throws {
        let rig = try MigrationRig()
        let (c, api) = try rig.source("memtouch.elf", cmdline: "size=8M heartbeat-ms=200", memory: "64M")
        #expect(c.waitFor("HEARTBEAT", timeout: 30))
        let file = rig.path("state.fdt")
        let written = try JSONLinesClient.qmp(path: api).execute("x-swiftvmm-dump-state", ["path": .string(file)])
        #expect((written["bytes"]?.int ?? 0) > 0, "\(written)")
        let r = try runSwiftVMM(["inspect", file], timeout: 30)
        #expect(r.status == 0, "\(r.stderr)")
        for node in ["vcpu@0", "irqchip", "pit", "clock", "serial@3f8", "regs", "msr-indices"] {
            #expect(r.stdout.contains(node), "inspect output lacks \(node):\n\(r.stdout.prefix(2000))")
        }
        let junk = rig.path("junk")
        try Data("not a state".utf8).write(to: URL(fileURLWithPath: junk))
        let bad = try runSwiftVMM(["inspect", junk], timeout: 30)
        #expect(bad.status == 2 && bad.stderr.contains("neither"), "\(bad.stderr)")
        c.signal(SIGTERM)
        #expect(c.wait(timeout: 30) == 0)
    }
}
