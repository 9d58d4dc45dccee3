import Foundation
import Glibc
import Harness
import Testing

/// The API socket is a QMP monitor: QEMU's greeting, negotiation, `id`s, error classes, events
/// and command shapes — checked byte by byte here, and by QEMU's own client library.
@Suite("QMP monitor", .serialized)
struct QMPTests {
    typealias Raw = ControlSocketTests.Raw

    @Test("greeting, negotiation, id echo, QEMU's error classes, requests without newlines")
    func protocolShapes() throws {
        let rig = try MigrationRig()
        let (guest, api) = try rig.source("memtouch.elf", cmdline: "size=4M heartbeat-ms=100 passes=0", memory: "32M")
        #expect(guest.waitFor("HEARTBEAT", timeout: 30))
        let c = try #require(Raw(api))
        let greeting = try JSON.parse(Array((c.line() ?? "").utf8))
        let qemu = greeting["QMP"]?["version"]?["qemu"]
        #expect(qemu?["major"]?.int != nil && qemu?["minor"]?.int != nil && qemu?["micro"]?.int != nil, "\(greeting.compact)")
        #expect(greeting["QMP"]?["version"]?["package"]?.string?.hasPrefix("swiftvmm") == true)
        #expect(greeting["QMP"]?["capabilities"] == .array([]))

        let early = try reply(c, #"{"execute":"query-status","id":"before"}"#)
        #expect(early["error"]?["class"]?.string == "CommandNotFound" && early["id"]?.string == "before", "\(early.compact)")
        #expect(early["error"]?["desc"]?.string == "Expecting capabilities negotiation with 'qmp_capabilities'")
        let oob = try reply(c, #"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#)
        #expect(oob["error"]?["desc"]?.string?.contains("'oob' not available") == true, "\(oob.compact)")
        let ok = try reply(c, #"{"execute":"qmp_capabilities","id":{"n":[1,2]}}"#)
        #expect(ok["return"] == .object([:]) && ok["id"]?["n"] == .array([.int(1), .int(2)]), "\(ok.compact)")
        let again = try reply(c, #"{"execute":"qmp_capabilities","id":7}"#)
        #expect(again["error"]?["class"]?.string == "CommandNotFound" && again["id"]?.int == 7, "\(again.compact)")

        let missing = try reply(c, #"{"execute":"no-such-command","id":"x"}"#)
        #expect(missing["error"]?["class"]?.string == "CommandNotFound", "\(missing.compact)")
        #expect(missing["error"]?["desc"]?.string == "The command no-such-command has not been found")
        let generic = try reply(c, #"{"execute":"migrate","arguments":{"uri":"tcp:nowhere"},"id":3}"#)
        #expect(generic["error"]?["class"]?.string == "GenericError" && generic["id"]?.int == 3, "\(generic.compact)")

        // Two requests in one write, no newline between or after (as qemu.qmp sends them).
        #expect(c.send(Array(#"{"execute":"query-status","id":1}{"execute":"query-version","id":2}"#.utf8)))
        let first = try JSON.parse(Array((c.line() ?? "").utf8)), second = try JSON.parse(Array((c.line() ?? "").utf8))
        #expect(first["id"]?.int == 1 && first["return"]?["status"]?.string == "running", "\(first.compact)")
        #expect(first["return"]?["running"] == .bool(true) && first["return"]?["singlestep"] == .bool(false))
        #expect(second["id"]?.int == 2 && second["return"]?["package"] != nil, "\(second.compact)")
        guest.kill()
    }

    /// The next reply to `request` (events skipped).
    private func reply(_ c: Raw, _ request: String) throws -> JSON {
        guard c.send(Array(request.utf8)) else { throw HarnessError("the monitor hung up") }
        while let line = c.line() {
            let v = try JSON.parse(Array(line.utf8))
            if v["event"] == nil { return v }
        }
        throw HarnessError("no reply to \(request)")
    }

    @Test("STOP, RESUME and SHUTDOWN events; query-commands, query-cpus-fast, migration parameters; quit")
    func eventsAndCommands() throws {
        let rig = try MigrationRig()
        let (guest, api) = try rig.source("memtouch.elf", cmdline: "size=4M heartbeat-ms=100 passes=0", memory: "32M", extra: ["--cpus", "2"])
        #expect(guest.waitFor("HEARTBEAT", timeout: 30))
        let c = try JSONLinesClient.qmp(path: api, child: guest)
        let watcher = try JSONLinesClient.qmp(path: api, child: guest)
        try c.execute("stop")
        #expect(try c.execute("query-status")["status"]?.string == "paused")
        try c.execute("cont")
        let stop = try watcher.waitForEvent("STOP")
        #expect(stop["timestamp"]?["seconds"]?.int ?? 0 > 0 && stop["timestamp"]?["microseconds"]?.int != nil, "\(stop.compact)")
        try watcher.waitForEvent("RESUME")

        let names = try c.execute("query-commands").array?.compactMap { $0["name"]?.string } ?? []
        for n in ["qmp_capabilities", "query-status", "query-version", "stop", "cont", "quit", "query-cpus-fast", "migrate",
                  "migrate_cancel", "query-migrate", "migrate-set-parameters", "query-migrate-parameters",
                  "x-swiftvmm-query-status", "x-swiftvmm-dump-state"] {
            #expect(names.contains(n), "query-commands lacks \(n)")
        }
        let cpus = try c.execute("query-cpus-fast").array ?? []
        #expect(cpus.count == 2 && cpus.allSatisfy { ($0["thread-id"]?.int ?? 0) > 0 }, "\(cpus)")
        #expect(cpus.map { $0["cpu-index"]?.int } == [0, 1])
        #expect(try c.execute("query-migrate") == .object([:]), "no migration yet")
        try c.execute("migrate-set-parameters", ["downtime-limit": .int(20), "max-bandwidth": .int(5_000_000),
                                                 "x-swiftvmm-auto-converge": .bool(false)])
        let p = try c.execute("query-migrate-parameters")
        #expect(p["downtime-limit"]?.int == 20 && p["max-bandwidth"]?.int == 5_000_000 && p["x-swiftvmm-auto-converge"] == .bool(false), "\(p.compact)")
        #expect(throws: HarnessError.self) { try c.execute("migrate-set-parameters", ["max-bandwidth": .int(-1)]) }
        #expect(throws: HarnessError.self) { try c.execute("migrate-set-parameters", ["x-swiftvmm-key": .string("abc")]) }

        try c.execute("quit")
        let shutdown = try watcher.waitForEvent("SHUTDOWN")
        #expect(shutdown["data"] == .object(["guest": .bool(false), "reason": .string("host-qmp-quit")]), "\(shutdown.compact)")
        #expect(guest.wait(timeout: 30) == 0, "\(guest.transcript)")
    }

    @Test("qemu.qmp's QMPClient migrates a guest between two swiftvmm processes (query-status, migrate-set-parameters, migrate, query-migrate, MIGRATION/STOP/RESUME events) and qmp-shell queries the target")
    func qemuQMPLibraryDrivesAMigration() throws {
        let probe = sh("python3 -c 'import qemu.qmp'")
        try #require(probe.status == 0, "the qemu.qmp package is missing (Tools/setup installs it): \(probe.output)")
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=16M heartbeat-ms=100 passes=0", memory: "64M")
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, dstAPI) = try rig.target(listen: listen)
        defer { for p in [src, dst] where p.isRunning { p.kill() } }
        let script = Paths.root.appendingPathComponent("Tests/IntegrationTests/qmp/migrate_with_qemu_qmp.py").path
        let py = try Child("python3", ["-B", script, api, dstAPI, listen], name: "qemu.qmp", mergeStderr: true)
        #expect(py.wait(timeout: 240) == 0, "\(py.stdout)\n\(src.transcript)\n\(dst.transcript)")
        #expect(py.stdout.contains("QMP-MIGRATION PASS"), "\(py.stdout)")
        #expect(src.wait(timeout: 30) == 0, "the source exits once its guest has moved: \(src.transcript)")
        #expect(dst.wait(timeout: 30) == 0, "the target exits after quit: \(dst.transcript)")
        #expect(dst.stdout.contains("HEARTBEAT"), "the guest ran on the target")
    }

    @Test("QMP migrate with QEMU's blk copies the disk to a target without shared storage (the copy is the source's image); inc is refused in one line and nothing moves")
    func migrateWithBlockFlagCopiesTheDisk() throws {
        let rig = try MigrationRig()
        let image = rig.path("disk.img"), copy = rig.path("copy.img")
        try sparseImage(image, bytes: 4 << 20)
        #expect(sh("head -c 1048576 /dev/urandom | dd of='\(image)' bs=1M seek=2 conv=notrunc status=none").status == 0)
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=8M heartbeat-ms=100 passes=0", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(image)"])
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(copy),copy"])
        defer { for p in [src, dst] where p.isRunning { p.kill() } }
        let c = try JSONLinesClient.qmp(path: api, child: src)
        do {
            try c.execute("migrate", ["uri": .string(listen), "blk": .bool(true), "inc": .bool(true)])
            Issue.record("migrate with inc was accepted")
        } catch {
            #expect("\(error)".hasPrefix("migrate: incremental block migration (inc) is not supported"), "\(error)")
        }
        #expect(try c.execute("query-migrate") == .object([:]), "a refused migrate started nothing")
        try c.execute("migrate", ["uri": .string(listen), "blk": .bool(true)])
        let end = try c.waitForEvent("MIGRATION", timeout: 120) { ["completed", "failed", "cancelled"].contains($0["data"]?["status"]?.string ?? "") }
        let info = (try? c.execute("query-migrate"))?.compact ?? ""
        #expect(end["data"]?["status"]?.string == "completed", "\(info)\n\(dst.transcript)")
        #expect(dst.waitFor("HEARTBEAT", timeout: 30), "\(dst.transcript)")
        #expect(sh("cmp '\(image)' '\(copy)'").status == 0, "the target's copy differs from the source image")
        #expect(!src.stdout.contains("FAIL") && !dst.stdout.contains("FAIL"))
    }
}
