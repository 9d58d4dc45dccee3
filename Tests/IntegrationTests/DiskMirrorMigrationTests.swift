import Foundation
import Glibc
import Harness
import Testing

/// Migrations that must not take a mirror as the volume: one out of sync at the pre-check, and
/// one that falls out of sync while memory moves. Either way the guest stays on the source.
@Suite("mirrored disks and migration failures", .serialized)
struct DiskMirrorMigrationTests {
    typealias T = DiskMirrorGuestTests

    @Test("a target whose disk is the out-of-sync mirror is refused in one line and the guest writes on at the source; after mirror-resync the same migration moves no disk data")
    func outOfSyncMirrorRefusedThenResyncedMirrorMigrates() throws {
        let rig = try MigrationRig()
        let mount = rig.path("mirrorfs")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        try #require(sh("mount -t tmpfs -o size=256k swiftvmm-mirror-test '\(mount)'").status == 0)
        defer { _ = sh("umount -l '\(mount)'") }
        let image = rig.path("primary.img"), mirror = mount + "/mirror.img", report = rig.path("report.json")
        try sparseImage(image, bytes: 4 << 20)
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(T.blocks) flush-every=8", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(image),mirror=\(mirror)"])
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitFor("SEQ 300\n", timeout: 60), "\(src.transcript)")
        #expect(try T.waitForMirror(rig, api, "out-of-sync")["state"] as? String == "out-of-sync")

        let listen = "unix:" + rig.path("m.sock")
        let (refusing, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(mirror)"])
        defer { refusing.signal(SIGKILL); _ = refusing.wait(timeout: 10) }
        let refused = try rig.send(api, to: listen)
        #expect(refused.status != 0)
        let lines = refused.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("volume 'data'") && lines[0].contains("out of sync"), "\(refused.stderr)")
        let before = BlktestImage.acknowledged([src.stdout]).last ?? 0
        #expect(src.waitFor("SEQ \(before + 300)\n", timeout: 60), "the guest stopped on the source: \(src.transcript)")
        refusing.signal(SIGKILL)
        _ = refusing.wait(timeout: 10)

        try #require(sh("mount -o remount,size=16m '\(mount)'").status == 0)
        #expect(try T.run(rig, ["mirror-resync", api]).status == 0)
        let listen2 = "unix:" + rig.path("m2.sock")
        let (dst, _) = try rig.target(listen: listen2, extra: ["--disk", "vol=data,path=\(mirror)"])
        defer { dst.signal(SIGKILL); _ = dst.wait(timeout: 10) }
        let s = try rig.send(api, to: listen2, extra: ["--report", report])
        try #require(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        let r = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        #expect(r["mirror_volumes"] as? [String] == ["data"] && T.number(r["disk_bytes_on_wire"]) == 0, "\(r)")
        let moved = BlktestImage.acknowledged([src.stdout]).last ?? 0
        #expect(dst.waitFor("SEQ \(moved + 300)\n", timeout: 60), "\(dst.transcript)")
        dst.signal(SIGTERM)
        _ = dst.wait(timeout: 30)
        let last = try #require(BlktestImage.acknowledged([src.stdout, dst.stdout]).last)
        let problems = try BlktestImage(path: mirror, blocks: T.blocks).check(lastSeq: last, final: true)
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    /// Whether process `pid` is stopped (SIGSTOP).
    static func isStopped(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(close, offsetBy: 2)] == "T"
    }

    @Test("a mirror that falls out of sync while memory moves fails the migration at the pause in one line, and the guest writes on at the source")
    func mirrorLostDuringMigrationFailsIt() throws {
        let rig = try MigrationRig()
        let mount = rig.path("mirrorfs")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        try #require(sh("mount -t tmpfs -o size=32m swiftvmm-mirror-test '\(mount)'").status == 0)
        defer { _ = sh("umount -l '\(mount)'") }
        let image = rig.path("primary.img"), mirror = mount + "/mirror.img"
        try sparseImage(image, bytes: 16 << 20)
        // 4096 blocks written in turn: the guest keeps reaching mirror blocks not yet allocated.
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=4096 flush-every=8", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(image),mirror=\(mirror)"])
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitFor("SEQ 100\n", timeout: 60), "\(src.transcript)")
        #expect(try T.waitForMirror(rig, api, "in-sync")["state"] as? String == "in-sync")
        // The target accepts (the mirror is in sync), then stops itself until the mirror is lost.
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(mirror)"],
                                      environment: ["SWIFTVMM_FAULT": "target:after-precheck:stall"])
        defer { dst.signal(SIGKILL); _ = dst.wait(timeout: 10) }
        let send = try rig.startSend(api, to: listen)
        defer { send.signal(SIGKILL); _ = send.wait(timeout: 10) }
        let deadline = Date().addingTimeInterval(30)
        while !Self.isStopped(dst.pid) && Date() < deadline { usleep(20_000) }
        try #require(Self.isStopped(dst.pid), "the target never stopped after its pre-check: \(dst.transcript)")
        _ = sh("dd if=/dev/zero of='\(mount)/filler' bs=1M status=none")
        #expect(try T.waitForMirror(rig, api, "out-of-sync")["state"] as? String == "out-of-sync")
        dst.signal(SIGCONT)

        #expect(send.wait(timeout: 60) != 0)
        let lines = send.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("fell out of sync during the migration"), "\(send.stderr)")
        let before = BlktestImage.acknowledged([src.stdout]).last ?? 0
        #expect(src.waitFor("SEQ \(before + 300)\n", timeout: 60), "the guest stopped on the source: \(src.transcript)")
        #expect(try rig.status(api)["status"] as? String == "running")
    }
}
