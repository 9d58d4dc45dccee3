import Foundation
import Glibc
import Harness
import Testing

/// `--disk path=P,mirror=Q`: a mirror that fails leaves the guest running on its primary and is
/// brought back by `mirror-resync`; a migration to a target whose disk is the in-sync mirror
/// moves no disk data.
@Suite("mirrored disks", .serialized)
struct DiskMirrorGuestTests {
    static let blocks = 256

    /// The mirror's entry in `status --json` (empty when there is none).
    static func mirror(_ rig: MigrationRig, _ api: String) throws -> [String: Any] {
        (try rig.status(api)["mirrors"] as? [[String: Any]])?.first ?? [:]
    }

    /// Waits (polling `status`, at most `timeout` s) until the mirror is in `state`.
    static func waitForMirror(_ rig: MigrationRig, _ api: String, _ state: String, timeout: Double = 30) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        var last: [String: Any] = [:]
        while Date() < deadline {
            last = try mirror(rig, api)
            if last["state"] as? String == state { return last }
            usleep(100_000)
        }
        return last
    }

    static func run(_ rig: MigrationRig, _ arguments: [String]) throws -> (status: Int32?, stdout: String, stderr: String) {
        let c = try Child(Paths.swiftvmm, arguments, name: arguments[0])
        let s = c.wait(timeout: 120)
        return (s, c.stdout, c.stderr)
    }

    @Test("the mirror's tmpfs fills: the guest writes on, status says out of sync with one line on stderr; mirror-resync fails in one line until there is room, then catches up, and after the guest stops primary and mirror are byte-identical")
    func mirrorFailureKeepsGuestRunningAndResyncCatchesUp() throws {
        let rig = try MigrationRig()
        let mount = rig.path("mirrorfs")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        // 256 KiB holds a quarter of the 1 MiB the guest's loop writes.
        try #require(sh("mount -t tmpfs -o size=256k swiftvmm-mirror-test '\(mount)'").status == 0)
        defer { _ = sh("umount -l '\(mount)'") }
        let image = rig.path("primary.img"), mirror = mount + "/mirror.img"
        try sparseImage(image, bytes: 4 << 20)
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(Self.blocks) flush-every=8", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(image),mirror=\(mirror)"])
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitFor("SEQ 300\n", timeout: 60), "\(src.transcript)")
        let lost = try Self.waitForMirror(rig, api, "out-of-sync")
        #expect(lost["state"] as? String == "out-of-sync", "\(lost)")
        #expect((lost["error"] as? String)?.contains("No space left on device") == true, "\(lost)")
        #expect(Self.number(lost["dirty_bytes"]) > 0)
        let before = BlktestImage.acknowledged([src.stdout]).last ?? 0
        #expect(src.waitFor("SEQ \(before + 500)\n", timeout: 60), "the guest stopped writing: \(src.transcript)")

        let refused = try Self.run(rig, ["mirror-resync", api])
        #expect(refused.status == 2, "\(refused)")
        #expect(refused.stderr.split(separator: "\n").count == 1 && refused.stderr.contains("out of sync"), "\(refused.stderr)")

        try #require(sh("mount -o remount,size=16m '\(mount)'").status == 0)
        let resync = try Self.run(rig, ["mirror-resync", api])
        #expect(resync.status == 0 && resync.stdout.contains("in-sync"), "\(resync)")
        #expect(try Self.mirror(rig, api)["state"] as? String == "in-sync")
        let after = BlktestImage.acknowledged([src.stdout]).last ?? 0
        #expect(src.waitFor("SEQ \(after + 300)\n", timeout: 60), "\(src.transcript)")

        #expect(try Self.run(rig, ["quit", api]).status == 0)
        #expect(src.wait(timeout: 30) == 0)
        let lines = src.stderr.split(separator: "\n").filter { $0.contains("out of sync") }
        #expect(lines.count == 1 && lines[0].contains("volume 'data'") && lines[0].contains(mirror), "\(src.stderr)")
        #expect(!src.stdout.contains("FAIL"))
        #expect(sh("cmp '\(image)' '\(mirror)'").status == 0, "primary and mirror differ")
        let last = try #require(BlktestImage.acknowledged([src.stdout]).last)
        let problems = try BlktestImage(path: mirror, blocks: Self.blocks).check(lastSeq: last, final: true)
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("a migration to a recv whose disk is the source's in-sync mirror moves no disk data, even with --copy-storage; the guest PASSes on the target, which wrote its disk to the mirror file",
          arguments: [false, true])
    func migrationToInSyncMirrorMovesNoDiskData(copyStorage: Bool) throws {
        let rig = try MigrationRig()
        let image = rig.path("primary.img"), mirror = rig.path("mirror.img"), report = rig.path("report.json")
        try sparseImage(image, bytes: 4 << 20)
        let count = 4000
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(Self.blocks) flush-every=8 count=\(count)", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(image),mirror=\(mirror)"])
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitFor("SEQ 300\n", timeout: 60), "\(src.transcript)")
        #expect(try Self.waitForMirror(rig, api, "in-sync")["state"] as? String == "in-sync")
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(mirror)" + (copyStorage ? ",copy" : "")])
        defer { dst.signal(SIGKILL); _ = dst.wait(timeout: 10) }
        let s = try rig.send(api, to: listen, extra: ["--report", report] + (copyStorage ? ["--copy-storage", "--verify-storage"] : []))
        try #require(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(src.wait(timeout: 30) == 0)
        let r = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        #expect(r["mirror_volumes"] as? [String] == ["data"], "\(r)")
        #expect(r["disk_bytes_on_wire"] != nil && Self.number(r["disk_bytes_on_wire"]) == 0, "\(r)")

        #expect(dst.waitFor("PASS seq=\(count)", timeout: 120), "\(dst.transcript)")
        #expect(dst.wait(timeout: 30) == 1)
        let onSource = BlktestImage.acknowledged([src.stdout]).last ?? 0
        #expect(onSource >= 300 && onSource < count, "the guest moved at seq \(onSource)")
        let seqs = BlktestImage.acknowledged([src.stdout, dst.stdout])
        #expect(seqs == Array(1...count), "the acknowledged writes are not one unbroken sequence across the move")
        let problems = try BlktestImage(path: mirror, blocks: Self.blocks).check(lastSeq: count, final: true)
        #expect(problems.isEmpty, "\(problems.prefix(5))")
        #expect(sh("cmp -s '\(image)' '\(mirror)'").status != 0, "the target wrote to the mirror file, not the primary")
    }

    @Test("a mirror of another size, one on a read-only disk, or the disk itself as its mirror is refused in one line")
    func badMirrorsRefusedInOneLine() throws {
        let rig = try MigrationRig()
        let primary = rig.path("p.img"), mirror = rig.path("m.img")
        try sparseImage(primary, bytes: 1 << 20)
        try sparseImage(mirror, bytes: 2 << 20)
        for (disk, words) in [("path=\(primary),mirror=\(mirror)", "must be the disk's size"),
                              ("path=\(primary),mirror=\(mirror),readonly", "read-only disk needs no mirror"),
                              ("path=\(primary),mirror=\(primary)", "the mirror is the disk itself")] {
            let r = try runSwiftVMM(["run", "--kernel", Paths.guest("hello.elf"), "--disk", disk], timeout: 60)
            #expect(r.status == 2 && r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(words), "\(r.stderr)")
        }
    }

    static func number(_ v: Any?) -> Double { (v as? NSNumber)?.doubleValue ?? 0 }
}
