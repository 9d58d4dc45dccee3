import Foundation
import Glibc
import Machine
import Harness
import Testing

/// Live migration of guests that use virtio devices: no acknowledged disk write lost, the
/// network keeps answering.
@Suite("migration with virtio devices", .serialized)
struct DeviceMigrationTests {
    static let blocks = 64

    @Test("blktest keeps writing through a migration; the image holds every acknowledged write, in sequence")
    func diskWritesSurviveMigration() throws {
        let rig = try MigrationRig()
        let image = rig.path("disk.img")
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: image))
        // The target reaches the same storage under another path, as with shared storage.
        let targetDir = rig.path("target")
        try FileManager.default.createDirectory(atPath: targetDir, withIntermediateDirectories: true)
        let targetImage = targetDir + "/mounted-elsewhere.img"
        try FileManager.default.linkItem(atPath: image, toPath: targetImage)

        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(Self.blocks) flush-every=8",
                                        memory: "64M", extra: ["--disk", "vol=data,path=\(image)"])
        #expect(src.waitFor("SEQ 200\n", timeout: 60), "\(src.transcript)")
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(targetImage)"])
        let s = try rig.send(api, to: listen)
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(src.wait(timeout: 30) == 0)
        // Let the guest write on the target for a while, then stop it.
        let lastOnSource = src.stdout.split(separator: "\n").compactMap { $0.hasPrefix("SEQ ") ? Int($0.dropFirst(4)) : nil }.last ?? 0
        #expect(dst.waitFor("SEQ \(lastOnSource + 300)\n", timeout: 60), "\(dst.transcript)")
        dst.signal(SIGTERM)
        #expect(dst.wait(timeout: 30) == 0)

        // The console continues on the target exactly where the source left it (a line may
        // straddle the move); a last line cut short by SIGTERM is not an acknowledgement.
        let seqs = BlktestImage.acknowledged([src.stdout, dst.stdout])
        let last = try #require(seqs.last)
        #expect(seqs == Array(1...last), "the guest's acknowledged writes are not one unbroken sequence across the move")
        #expect(!src.stdout.contains("FAIL") && !dst.stdout.contains("FAIL"))
        // Every block holds the newest acknowledged write for it (or the one write that may
        // have completed after the last SEQ line was printed).
        let problems = try BlktestImage(path: image, blocks: Self.blocks).check(lastSeq: last, final: true)
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test("a guest with a disk is refused by a target that lacks its volume, before memory moves")
    func missingVolumeRefused() throws {
        let rig = try MigrationRig()
        let image = rig.path("disk.img")
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: image))
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(Self.blocks)", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(image)"])
        #expect(src.waitFor("SEQ 10\n", timeout: 60))
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen)
        let s = try rig.send(api, to: listen)
        #expect(s.status != 0 && s.stderr.contains("volume 'data' is missing"), "\(s.stderr)")
        #expect(dst.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(dst.stderr.contains("volume 'data' is missing"), "\(dst.stderr)")
        let before = src.stdout.components(separatedBy: "SEQ ").count
        #expect(src.waitUntilStdout(timeout: 30) { $0.components(separatedBy: "SEQ ").count > before + 5 },
                "the guest stopped writing on the source")
    }

    @Test("netecho answers pings before and after migration (at most one lost) and the target announces the MAC")
    func networkSurvivesMigration() throws {
        let net = try TestNetwork(tap: false)
        defer { net.delete() }
        try TestNetwork.run(TestNetwork.ip, ["-n", net.namespace, "tuntap", "add", "dev", net.tap, "mode", "tap", "multi_queue"])
        try net.configure(net.tap)
        let rig = try MigrationRig()
        let api = rig.path("src.sock")
        let src = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "run",
                                             "--kernel", Paths.guest("netecho.elf"), "--memory", "64M", "--name", "mig-echo",
                                             "--net", "tap=\(net.tap)", "--cmdline", "ip=\(TestNetwork.guestIP) quiet",
                                             "--api-socket", api], name: "source")
        let mac = VirtioNet.format(VirtioNet.generatedMAC(vmName: "mig-echo", index: 0))
        #expect(src.waitFor("NET UP", timeout: 30), "\(src.transcript)")
        let before = try net.exec(["ping", "-c", "3", "-W", "2", TestNetwork.guestIP])
        #expect(before.contains("3 received"), "\(before)")

        // Watch the TAP for the announce (RARP, ethertype 0x8035) from the guest's MAC.
        let capture = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, "python3", "-c", """
            import socket, sys
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))
            s.bind(('\(net.tap)', 0)); s.settimeout(60)
            print('READY', flush=True)
            f = s.recv(2048)
            print('ANNOUNCE src=' + ':'.join('%02x' % b for b in f[6:12]) + ' type=%02x%02x' % (f[12], f[13]), flush=True)
            """], name: "capture")
        #expect(capture.waitFor("READY", timeout: 30), "\(capture.transcript)")
        let listen = "unix:" + rig.path("m.sock")
        let dst = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "recv", "--listen", listen,
                                             "--net", "tap=\(net.tap)"], name: "target")
        #expect(dst.waitForStderr("waiting for a migration", timeout: 30))
        // Pings every 100 ms across the hand-off.
        let pinger = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, "ping", "-i", "0.1", "-c", "40", "-W", "1",
                                                TestNetwork.guestIP], name: "ping")
        #expect(pinger.waitUntilStdout(timeout: 30) { $0.components(separatedBy: "bytes from").count > 5 }, "\(pinger.transcript)")
        let s = try rig.send(api, to: listen)
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(pinger.wait(timeout: 60) != nil)
        let summary = pinger.stdout.split(separator: "\n").first { $0.contains("received") }.map(String.init) ?? pinger.stdout
        let received = summary.split(separator: ",").compactMap { part -> Int? in
            let t = part.trimmingCharacters(in: .whitespaces)
            return t.hasSuffix("received") ? Int(t.split(separator: " ")[0]) : nil
        }.first ?? 0
        #expect(received >= 39, "pings lost across the migration: \(summary)")
        let after = try net.exec(["ping", "-c", "3", "-W", "2", TestNetwork.guestIP])
        #expect(after.contains("3 received"), "\(after)")
        #expect(capture.waitFor("ANNOUNCE", timeout: 30), "\(capture.transcript)")
        #expect(capture.stdout.contains("src=\(mac) type=8035"), "\(capture.stdout)")
        dst.signal(SIGTERM)
        _ = dst.wait(timeout: 30)
        _ = src.wait(timeout: 10)
    }
}
