import Foundation
import Glibc
import Harness
import Testing

/// `save` and `restore`: a guest saved to a file runs on from where it was, judged by its own
/// verdict; a file that is not whole, or a host that lacks what the guest needs, is refused in
/// one line before anything starts.
@Suite("snapshots", .serialized)
struct SnapshotTests {
    static let memtouch = "size=32M heartbeat-ms=200 passes=20000"

    /// `swiftvmm save API FILE`, to completion.
    static func save(_ api: String, _ file: String, leaveRunning: Bool = false) throws -> (status: Int32?, stdout: String, stderr: String) {
        try runSwiftVMM(["save", api, file] + (leaveRunning ? ["--leave-running"] : []), timeout: 60)
    }

    /// `swiftvmm restore FILE …`, running.
    static func restore(_ file: String, _ extra: [String] = []) throws -> Child {
        try Child(Paths.swiftvmm, ["restore", file] + extra, name: "restore")
    }

    /// The one line a refused restore prints, checked: exit 2, one stderr line, no guest output.
    static func expectRefused(_ file: String, _ extra: [String] = [], saying needle: String) throws {
        let c = try restore(file, extra)
        let status = c.wait(timeout: 60)
        let lines = c.stderr.split(separator: "\n")
        #expect(status == 2, "\(c.transcript)")
        #expect(lines.count == 1 && c.stderr.contains(needle), "\(c.transcript)")
        #expect(c.stdout.isEmpty, "the guest ran: \(c.stdout)")
    }

    @Test("memtouch saved mid-run and restored PASSes its page check; the saved guest's swiftvmm exits 0")
    func memtouchSurvivesSaveAndRestore() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouch)
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let file = rig.path("memtouch.snap")
        let s = try Self.save(api, file)
        #expect(s.status == 0 && s.stdout.contains("saved"), "\(s.stderr)\n\(src.transcript)")
        #expect(src.wait(timeout: 30) == 0, "\(src.transcript)")
        #expect(!src.stdout.contains("PASS"), "the guest finished before it was saved: the test proves nothing")
        let dst = try Self.restore(file)
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
        #expect(dst.wait(timeout: 30) == 1)
        #expect(!dst.stdout.contains("FAIL") && !src.stdout.contains("FAIL"))
        #expect(dst.stderr.contains("mapped on demand"), "\(dst.stderr)")
    }

    @Test("a guest restored from a snapshot (memory still mapped from the file) live-migrates and PASSes on the target")
    func restoredGuestMigrates() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouch)
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let file = rig.path("memtouch.snap")
        #expect(try Self.save(api, file).status == 0)
        #expect(src.wait(timeout: 30) == 0)
        let restoredAPI = rig.nextSocket("restored")
        let restored = try Self.restore(file, ["--api-socket", restoredAPI])
        #expect(restored.waitFor("HEARTBEAT", timeout: 30), "\(restored.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen)
        let s = try rig.send(restoredAPI, to: listen)
        #expect(s.status == 0, "\(s.stderr)\n\(restored.transcript)\n\(dst.transcript)")
        #expect(restored.wait(timeout: 30) == 0)
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
        #expect(!restored.stdout.contains("PASS") && !dst.stdout.contains("FAIL"))
    }

    @Test("save --leave-running: the guest carries on and PASSes, and its snapshot restored with --prefault PASSes too")
    func leaveRunningAndPrefault() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouch)
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let file = rig.path("running.snap")
        let s = try Self.save(api, file, leaveRunning: true)
        #expect(s.status == 0 && s.stdout.contains("keeps running"), "\(s.stderr)")
        #expect(src.waitFor("PASS passes=20000", timeout: 120), "\(src.transcript)")
        #expect(src.wait(timeout: 30) == 1)
        let dst = try Self.restore(file, ["--prefault"])
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
        #expect(dst.wait(timeout: 30) == 1)
        #expect(!dst.stdout.contains("FAIL") && !src.stdout.contains("FAIL"))
        #expect(dst.stderr.contains("read up front"), "\(dst.stderr)")
    }

    @Test("blktest saved with its disk image copied beside the snapshot continues the write sequence on restore")
    func diskContinuesInSequence() throws {
        let rig = try MigrationRig()
        let image = rig.path("disk.img")
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: image))
        let blocks = DeviceMigrationTests.blocks
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(blocks) flush-every=8", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(image)"])
        #expect(src.waitFor("SEQ 200\n", timeout: 60), "\(src.transcript)")
        let file = rig.path("blk.snap")
        let s = try Self.save(api, file)
        #expect(s.status == 0, "\(s.stderr)")
        #expect(src.wait(timeout: 30) == 0)
        // The user's half of the bargain: a copy of the image taken while the guest is stopped.
        let copy = rig.path("disk-at-save.img")
        try FileManager.default.copyItem(atPath: image, toPath: copy)
        let lastOnSource = src.stdout.split(separator: "\n").compactMap { $0.hasPrefix("SEQ ") ? Int($0.dropFirst(4)) : nil }.last ?? 0
        let dst = try Self.restore(file, ["--disk", "vol=data,path=\(copy)"])
        #expect(dst.waitFor("SEQ \(lastOnSource + 300)\n", timeout: 60), "\(dst.transcript)")
        dst.signal(SIGTERM)
        #expect(dst.wait(timeout: 30) == 0)
        let seqs = BlktestImage.acknowledged([src.stdout, dst.stdout])
        let last = try #require(seqs.last)
        #expect(seqs == Array(1...last), "the acknowledged writes are not one unbroken sequence across save and restore")
        #expect(!src.stdout.contains("FAIL") && !dst.stdout.contains("FAIL"), "\(dst.transcript)")
        let problems = try BlktestImage(path: copy, blocks: blocks).check(lastSeq: last, final: true)
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test("smp.elf with 2 vCPUs saved and restored PASSes on both vCPUs")
    func twoVCPUs() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("smp.elf", cmdline: "size=16M passes=20000 heartbeat-ms=200", cpus: 2)
        #expect(src.waitFor("CPU 1 up", timeout: 30), "\(src.transcript)")
        let file = rig.path("smp.snap")
        let s = try Self.save(api, file)
        #expect(s.status == 0, "\(s.stderr)")
        #expect(src.wait(timeout: 30) == 0)
        #expect(!src.stdout.contains("PASS"))
        let dst = try Self.restore(file)
        #expect(dst.waitFor("PASS cpus=2", timeout: 180), "\(src.transcript)\n\(dst.transcript)")
        #expect(!dst.stdout.contains("FAIL"))
    }

    @Test("netecho saved mid-conversation and restored on the same TAP answers pings again and finishes its UDP count")
    func netechoAnswersAfterSaveAndRestore() throws {
        let net = try TestNetwork()
        let rig = try MigrationRig()
        let api = rig.path("echo.sock")
        var children: [Child] = []
        defer {
            for c in children { c.signal(SIGKILL); _ = c.wait(timeout: 10) }
            net.delete()
        }
        let src = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "run",
                                             "--kernel", Paths.guest("netecho.elf"), "--memory", "64M", "--name", "echo-snap",
                                             "--net", "tap=\(net.tap)", "--cmdline", "ip=\(TestNetwork.guestIP) count=3",
                                             "--api-socket", api], name: "source")
        children.append(src)
        #expect(src.waitFor("NET UP", timeout: 30), "\(src.transcript)")
        let fd = try net.udpSocket()
        defer { close(fd) }
        let first: [UInt8] = Array("before the save".utf8)
        #expect(TestNetwork.udpEcho(fd, first) == first)

        let file = rig.path("echo.snap")
        let s = try Self.save(api, file)
        #expect(s.status == 0, "\(s.stderr)\n\(src.transcript)")
        #expect(src.wait(timeout: 30) == 0, "\(src.transcript)")

        let dst = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "restore", file,
                                             "--net", "tap=\(net.tap)"], name: "restore")
        children.append(dst)
        #expect(dst.waitForStderr("restored from", timeout: 30), "\(dst.transcript)")
        let ping = try net.exec(["ping", "-c", "3", "-W", "2", TestNetwork.guestIP])
        #expect(ping.contains("3 received"), "\(ping)\n\(dst.transcript)")
        // The guest's count of echoed datagrams survived: two more finish it.
        for text in ["after the restore", "and once more"] {
            let payload: [UInt8] = Array(text.utf8)
            #expect(TestNetwork.udpEcho(fd, payload) == payload, "\(dst.transcript)")
        }
        #expect(dst.wait(timeout: 30) == 1, "\(dst.transcript)")
        #expect(dst.stdout.contains("PASS echoed=3"), "\(src.transcript)\n\(dst.transcript)")
    }
}

/// Snapshots that must be refused, and what a snapshot costs on disk.
@Suite("snapshot files", .serialized)
struct SnapshotFileTests {
    /// A saved memtouch guest (stopped), in `rig`.
    static func savedGuest(_ rig: MigrationRig, memory: String = "64M", cmdline: String = "size=8M heartbeat-ms=200") throws -> String {
        let (src, api) = try rig.source("memtouch.elf", cmdline: cmdline, memory: memory)
        guard src.waitFor("HEARTBEAT", timeout: 30) else { throw HarnessError("memtouch never beat\n\(src.transcript)") }
        let file = rig.path("guest.snap")
        let s = try SnapshotTests.save(api, file)
        guard s.status == 0, src.wait(timeout: 30) == 0 else { throw HarnessError("save failed: \(s.stderr)\n\(src.transcript)") }
        return file
    }

    @Test("restore is refused, in recv's words, on a host that lacks a CPU feature the guest uses; nothing starts")
    func refusedWithoutCPUFeature() throws {
        let rig = try MigrationRig()
        let file = try Self.savedGuest(rig)
        try SnapshotTests.expectRefused(file, ["--cpu-feature-deny", "0x1.0.edx:26"], saying: "lacks features the guest uses")
    }

    @Test("a truncated snapshot and one with a corrupted byte are refused with one line, exit 2, nothing started")
    func truncatedAndCorruptedRefused() throws {
        let rig = try MigrationRig()
        let file = try Self.savedGuest(rig)
        let size = try #require(try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int)
        let cut = rig.path("cut.snap")
        try FileManager.default.copyItem(atPath: file, toPath: cut)
        #expect(truncate(cut, off_t(size - 4096)) == 0)
        try SnapshotTests.expectRefused(cut, saying: "truncated")
        // A byte of the machine state (just after the header and description) flipped.
        let bad = rig.path("bad.snap")
        try FileManager.default.copyItem(atPath: file, toPath: bad)
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: bad))
        try h.seek(toOffset: 4096 + 3000)
        let byte = try #require(try h.read(upToCount: 1)).first ?? 0
        try h.seek(toOffset: 4096 + 3000)
        try h.write(contentsOf: Data([byte ^ 0x5a]))
        try h.close()
        try SnapshotTests.expectRefused(bad, saying: "corrupted")
        let junk = rig.path("junk.snap")
        try Data("SVMMSNAP but nothing else".utf8).write(to: URL(fileURLWithPath: junk))
        try SnapshotTests.expectRefused(junk, saying: "truncated")
    }

    @Test("a 1 GiB idle guest's snapshot takes only a few MiB on disk, and inspect summarises it")
    func idleGuestSnapshotIsSparse() throws {
        let rig = try MigrationRig()
        let file = try Self.savedGuest(rig, memory: "1G", cmdline: "size=1M heartbeat-ms=200")
        var st = stat()
        #expect(stat(file, &st) == 0)
        #expect(st.st_size >= 1 << 30, "apparent size \(st.st_size)")
        #expect(Int(st.st_blocks) * 512 <= 8 << 20, "the snapshot takes \(Int(st.st_blocks) * 512) bytes on disk")
        let r = try runSwiftVMM(["inspect", file], timeout: 30)
        #expect(r.status == 0, "\(r.stderr)")
        for needle in ["format version 1", "guest       guest", "1 GiB, 1 vCPU", "serial@3f8", "allocated on disk"] {
            #expect(r.stdout.contains(needle), "inspect output lacks '\(needle)':\n\(r.stdout)")
        }
    }
}
