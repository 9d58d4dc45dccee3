import Foundation
import Glibc
import Harness
import Testing

/// `--disk path=P,mirror=Q`: every write goes to both files; a mirror that fails falls out of
/// sync without the guest noticing, and `mirror-resync` brings it back by copying only the
/// blocks it missed.
@Suite("mirrored disks", .serialized)
struct DiskMirrorTests {
    @Test("a mirror whose file system fills up falls out of sync while blktest keeps writing and PASSes; status says so; mirror-resync copies only the missed blocks and both files end identical")
    func mirrorSurvivesAFullFileSystem() throws {
        let rig = try MigrationRig()
        let small = rig.path("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        // A 4 MiB tmpfs for a 16 MiB mirror: it fills up while the guest writes.
        try #require(sh("mount -t tmpfs -o size=4m swiftvmm-test '\(small)'").status == 0)
        defer { _ = sh("umount '\(small)'") }
        let primary = rig.path("primary.img"), mirror = small + "/mirror.img"
        try sparseImage(primary, bytes: 16 << 20)
        try sparseImage(mirror, bytes: 16 << 20)
        let writes = 3000
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=2048 count=\(writes) flush-every=8", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(primary),mirror=\(mirror)"])
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitForStderr("is out of sync", timeout: 120), "\(src.transcript)")
        let status = try runSwiftVMM(["status", api])
        #expect(status.stdout.contains("out-of-sync") && status.stdout.contains("No space left"), "\(status.stdout)")

        try #require(sh("mount -o remount,size=32m '\(small)'").status == 0)
        let resync = try runSwiftVMM(["mirror-resync", api])
        #expect(resync.status == 0, "\(resync.stderr)")
        #expect(try runSwiftVMM(["status", api]).stdout.contains("in-sync"))
        #expect(src.waitFor("PASS seq=\(writes)", timeout: 120), "\(src.transcript)")
        #expect(src.wait(timeout: 30) != nil)
        #expect(!src.stdout.contains("FAIL"))
        // Only the blocks written while out of sync were copied: fewer than the disk has.
        let copied = src.stderr.split(separator: "\n").first { $0.contains("in sync again") }
            .flatMap { line in line.split(separator: "(").last?.split(separator: " ").first.flatMap { Int($0) } }
        let n = try #require(copied, "\(src.stderr)")
        #expect(n > 0 && n < 256, "resync copied \(n) of 256 blocks")
        #expect(sh("cmp '\(primary)' '\(mirror)'").status == 0, "the mirror differs from the disk after the resync")
        let problems = try BlktestImage(path: mirror, blocks: 2048).check(lastSeq: writes, final: true)
        #expect(problems.isEmpty, "\(problems.prefix(5).joined(separator: "\n"))")
    }

    @Test("a mirror of another size, or on a read-only disk, is refused in one line")
    func badMirrorsRefused() throws {
        let rig = try MigrationRig()
        let primary = rig.path("p.img"), mirror = rig.path("m.img")
        try sparseImage(primary, bytes: 1 << 20)
        try sparseImage(mirror, bytes: 2 << 20)
        for (disk, words) in [("path=\(primary),mirror=\(mirror)", "mirror has"), ("path=\(primary),mirror=\(mirror),readonly", "writable")] {
            let r = try runSwiftVMM(["run", "--kernel", Paths.guest("hello.elf"), "--disk", disk], timeout: 60)
            #expect(r.status == 2 && r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(words), "\(r.stderr)")
        }
    }
}
