import Foundation
import Harness
import Testing

/// `send --dry-run`: the target checks everything and builds the machine, then tears it down
/// and keeps waiting; the verdict lists every reason; the guest never leaves the source.
@Suite("migration dry run", .serialized)
struct DryRunTests {
    static let guest = "size=16M heartbeat-ms=200 passes=20000"

    @Test("an eligible guest: `eligible`, exit 0, recv's status counts the dry run, then the real migration to the same recv succeeds")
    func eligibleThenRealMigration() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.guest)
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, dstAPI) = try rig.target(listen: listen)
        let d = try rig.send(api, to: listen, extra: ["--dry-run"])
        #expect(d.status == 0 && d.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "eligible", "\(d.stdout)\n\(d.stderr)\n\(dst.transcript)")
        #expect(src.printsAgain(), "the guest stopped on the source")
        #expect(dst.isRunning && !dst.stdout.contains("HEARTBEAT"))
        let st = control(dstAPI, "query-migrate")
        #expect(st.contains("\"dry_runs\":1") && st.contains("eligible"), "\(st)")
        let s = try rig.send(api, to: listen)
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
    }

    @Test("an ineligible guest: every reason (memory, vCPUs, CPU features, volume) listed, exit 2; recv still waits")
    func everyReasonListed() throws {
        let rig = try MigrationRig()
        let image = rig.path("disk.img")
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: image))
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.guest, extra: ["--disk", "vol=data,path=\(image)"])
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        // A feature the guest surely uses: SSE2 (leaf 1 EDX bit 26), part of every x86-64 CPU.
        let (dst, _) = try rig.target(listen: listen, extra: ["--memory", "64M", "--cpus", "2", "--cpu-feature-deny", "0x1.0.edx:26"])
        let d = try rig.send(api, to: listen, extra: ["--dry-run"])
        #expect(d.status == 2, "\(d.stdout)\n\(d.stderr)")
        #expect(d.stdout.hasPrefix("not eligible:"), "\(d.stdout)")
        for reason in ["memory size differs", "vCPU count differs", "lacks features the guest uses", "volume 'data' is missing"] {
            #expect(d.stdout.contains(reason), "\(reason) not in \(d.stdout)")
        }
        #expect(d.stdout.split(separator: "\n").filter { $0.hasPrefix("  - ") }.count == 4, "\(d.stdout)")
        #expect(src.printsAgain(), "the guest stopped on the source")
        #expect(dst.waitForStderr("dry run from", timeout: 10) && dst.isRunning, "\(dst.stderr)")
    }

    @Test("a wrong key: not eligible, naming authentication; recv keeps waiting and the real migration with the right key succeeds")
    func wrongKeyThenRightKey() throws {
        let rig = try MigrationRig()
        let good = rig.path("good.key"), bad = rig.path("bad.key")
        try "0123456789abcdef0123456789abcdef".write(toFile: good, atomically: true, encoding: .utf8)
        try "fedcba9876543210fedcba9876543210".write(toFile: bad, atomically: true, encoding: .utf8)
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.guest)
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--key-file", good])
        let d = try rig.send(api, to: listen, extra: ["--dry-run", "--key-file", bad])
        #expect(d.status == 2 && d.stdout.contains("authentication failed"), "\(d.stdout)\n\(d.stderr)")
        #expect(dst.waitForStderr("still waiting", timeout: 30) && dst.isRunning, "\(dst.stderr)")
        let s = try rig.send(api, to: listen, extra: ["--key-file", good])
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
    }

    @Test("a --copy-storage dry run to a target whose copy file does not exist yet: eligible, no file created at or beside it; without --copy-storage not eligible; then the real copy succeeds")
    func copyStorageDryRun() throws {
        let rig = try MigrationRig()
        let image = rig.path("disk.img"), copy = rig.path("copy.img")
        try sparseImage(image, bytes: 4 << 20)
        #expect(sh("head -c 1048576 /dev/urandom | dd of='\(image)' bs=1M seek=1 conv=notrunc status=none").status == 0)
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.guest, extra: ["--disk", "vol=data,path=\(image)"])
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(copy),copy"])
        let besideCopy = { ((try? FileManager.default.contentsOfDirectory(atPath: rig.path(""))) ?? []).filter { $0.hasPrefix("copy.img") } }
        let d = try rig.send(api, to: listen, extra: ["--dry-run", "--copy-storage"])
        #expect(d.status == 0 && d.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "eligible", "\(d.stdout)\n\(d.stderr)\n\(dst.transcript)")
        #expect(besideCopy().isEmpty, "the dry run left \(besideCopy())")
        let n = try rig.send(api, to: listen, extra: ["--dry-run"])
        #expect(n.status == 2 && n.stdout.contains("volume 'data' is marked copy here but the source does not copy it"), "\(n.stdout)\n\(n.stderr)")
        #expect(besideCopy().isEmpty, "the dry run left \(besideCopy())")
        #expect(src.printsAgain(), "the guest stopped on the source")
        #expect(dst.isRunning && !dst.stdout.contains("HEARTBEAT"))
        let s = try rig.send(api, to: listen, extra: ["--copy-storage"])
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
        #expect(sh("cmp '\(image)' '\(copy)'").status == 0, "the copy differs from the source image")
    }
}
