import Foundation
import Glibc
import Harness
import Testing

/// `send --copy-storage`: the guest's disk moves in the migration stream to a target without
/// shared storage, with memory's guarantees — no acknowledged write lost, and before the commit
/// any failure leaves the guest running on the source with its image whole.
@Suite("migration that copies the disk", .serialized)
struct StorageMigrationTests {
    static let blocks = 256

    static func sha256(_ path: String) -> String {
        String(sh("sha256sum '\(path)'").output.prefix(64))
    }

    static func report(_ path: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    static func number(_ v: Any?) -> Double { (v as? NSNumber)?.doubleValue ?? 0 }

    @Test("blktest writes through a --copy-storage migration over TCP between two namespaces: the target image holds every acknowledged write, and hashes as the source's did at the pause")
    func diskCopiedBetweenNamespaces() throws {
        let hosts = try TwoHosts()
        let rig = try MigrationRig()
        var children: [Child] = []
        defer {
            for c in children { c.signal(SIGKILL); _ = c.wait(timeout: 10) }
            hosts.delete()
        }
        let image = rig.path("source.img"), copy = rig.path("target.img"), report = rig.path("report.json")
        try sparseImage(image, bytes: 16 << 20)
        let api = rig.path("src.sock")
        let src = try Child("/usr/bin/env", ["ip", "netns", "exec", hosts.a, Paths.swiftvmm, "run",
                                             "--kernel", Paths.guest("blktest.elf"), "--memory", "64M",
                                             "--cmdline", "loop blocks=\(Self.blocks) flush-every=8",
                                             "--disk", "vol=data,path=\(image)", "--api-socket", api], name: "source")
        children.append(src)
        try rig.waitForSocket(api, child: src)
        #expect(src.waitFor("SEQ 300\n", timeout: 60), "\(src.transcript)")
        let dst = try Child("/usr/bin/env", ["ip", "netns", "exec", hosts.b, Paths.swiftvmm, "recv",
                                             "--listen", "tcp:192.0.2.2:4444", "--disk", "vol=data,path=\(copy),copy"], name: "target")
        children.append(dst)
        #expect(dst.waitForStderr("waiting for a migration", timeout: 30))
        let s = try rig.send(api, to: "tcp:192.0.2.2:4444", extra: ["--copy-storage", "--verify-storage", "--report", report])
        try #require(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(src.wait(timeout: 30) == 0)

        // The source never ran the guest after its pause: its image now is its image then.
        let r = try Self.report(report)
        let sourceAtPause = (r["disk_hashes"] as? [String: String])?["data"]
        let targetAtReady = (r["target_disk_hashes"] as? [String: String])?["data"]
        #expect(sourceAtPause != nil && sourceAtPause == targetAtReady, "\(r)")
        #expect(Self.sha256(image) == sourceAtPause, "the source image changed after the pause")
        #expect(Self.number(r["disk_bytes_on_wire"]) > 0)

        let lastOnSource = BlktestImage.acknowledged([src.stdout]).last ?? 0
        #expect(dst.waitFor("SEQ \(lastOnSource + 300)\n", timeout: 60), "\(dst.transcript)")
        dst.signal(SIGTERM)
        _ = dst.wait(timeout: 30)
        let seqs = BlktestImage.acknowledged([src.stdout, dst.stdout])
        let last = try #require(seqs.last)
        #expect(seqs == Array(1...last), "the acknowledged writes are not one unbroken sequence across the move")
        #expect(!src.stdout.contains("FAIL") && !dst.stdout.contains("FAIL"))
        let problems = try BlktestImage(path: copy, blocks: Self.blocks).check(lastSeq: last, final: true)
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test("a sparse 256 MiB image with 3 MiB written sends about 3 MiB of disk, and the copy is sparse and identical")
    func sparseImageSendsItsExtents() throws {
        let rig = try MigrationRig()
        let image = rig.path("sparse.img"), copy = rig.path("copy.img"), report = rig.path("report.json")
        try sparseImage(image, bytes: 256 << 20)
        // Three 1 MiB extents of random (incompressible) data.
        for mib in [0, 100, 200] {
            #expect(sh("head -c 1048576 /dev/urandom | dd of='\(image)' bs=1M seek=\(mib) conv=notrunc status=none").status == 0)
        }
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=8M heartbeat-ms=200 passes=1000000", memory: "64M",
                                        extra: ["--disk", "vol=data,path=\(image)"])
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(copy),copy"])
        defer { dst.signal(SIGKILL); _ = dst.wait(timeout: 10) }
        let s = try rig.send(api, to: listen, extra: ["--copy-storage", "--report", report])
        try #require(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(s.stdout.contains("disk:"), "\(s.stdout)")
        let r = try Self.report(report)
        let wire = Self.number(r["disk_bytes_on_wire"]), raw = Self.number(r["disk_raw_bytes"])
        #expect(Self.number(r["disk_allocated_bytes"]) == Double(3 << 20), "\(r)")
        #expect(raw >= Double(3 << 20) && raw <= Double(3 << 20) + Double(1 << 20), "disk bytes read: \(raw)")
        #expect(wire >= Double(3 << 20) && wire <= Double(3 << 20) * 1.05 + 65536, "disk bytes on the wire: \(wire)")
        #expect(sh("cmp '\(image)' '\(copy)'").status == 0, "the copy differs from the source image")
        var st = stat()
        #expect(stat(copy, &st) == 0 && UInt64(st.st_blocks) * 512 <= 8 << 20, "the copy is not sparse: \(st.st_blocks * 512) bytes allocated")
    }
}

/// Creates (or empties) `path` as a sparse file of `bytes` bytes.
func sparseImage(_ path: String, bytes: Int) throws {
    guard FileManager.default.createFile(atPath: path, contents: nil), truncate(path, off_t(bytes)) == 0 else {
        throw HarnessError("cannot create the sparse image \(path)")
    }
}
