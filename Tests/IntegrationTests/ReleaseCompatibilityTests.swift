import Foundation
import Glibc
import Harness
import Testing

/// Streams and state blobs captured from a release stay readable by every later one:
/// `Tests/Fixtures/stream-vN/` holds what version N wrote. A format change adds a directory,
/// it never replaces one. `SWIFTVMM_CAPTURE_FIXTURES=1 swift test --filter captureFixtures`
/// writes the current version's.
@Suite("release compatibility: fixtures of earlier versions", .serialized)
struct ReleaseCompatibilityTests {
    static let fixtures = Paths.root.appendingPathComponent("Tests/Fixtures")
    static let current = fixtures.appendingPathComponent("stream-v2")

    /// Every fixture directory.
    static var versions: [URL] {
        ((try? FileManager.default.contentsOfDirectory(at: fixtures, includingPropertiesForKeys: nil)) ?? [])
            .filter { $0.lastPathComponent.hasPrefix("stream-v") }.sorted { $0.path < $1.path }
    }

    @Test("every fixture stream and state blob is read by inspect, every section's checksum intact")
    func everyFixtureInspects() throws {
        let files = Self.versions.flatMap { v in
            ((try? FileManager.default.contentsOfDirectory(at: v, includingPropertiesForKeys: nil)) ?? [])
                .filter { ["stream", "state"].contains($0.pathExtension) }
        }
        #expect(files.count >= 4, "fixtures missing in \(Self.fixtures.path)")
        for f in files {
            let r = try runSwiftVMM(["inspect", f.path], timeout: 60)
            #expect(r.status == 0, "\(f.lastPathComponent): \(r.stderr)")
            #expect(!r.stdout.contains("BAD") && !r.stdout.contains("truncated"), "\(f.lastPathComponent)")
            if f.pathExtension == "stream" {
                #expect(r.stdout.contains("section state:") && r.stdout.contains("section go:"), "\(f.lastPathComponent)")
            } else {
                #expect(r.stdout.contains("vcpu@0") && r.stdout.contains("devices"), "\(f.lastPathComponent)")
            }
        }
    }

    @Test("memtouch captured mid-run resumes from every fixture version and PASSes its page check")
    func memtouchResumes() throws {
        for v in Self.versions {
            let c = try Child.swiftvmm(["recv", "--replay", v.appendingPathComponent("memtouch.stream").path], name: "target")
            #expect(c.waitFor("PASS passes=", timeout: 120), "\(v.lastPathComponent)\n\(c.transcript)")
            #expect(!c.stdout.contains("FAIL"))
            #expect(c.wait(timeout: 30) == 1)
        }
    }

    @Test("blktest captured mid-run resumes on its disk image and goes on writing, in sequence")
    func blktestResumes() throws {
        for v in Self.versions {
            let rig = try MigrationRig()
            let image = rig.path("disk.img")
            try FileManager.default.copyItem(atPath: v.appendingPathComponent("blktest.img").path, toPath: image)
            let last = try String(contentsOf: v.appendingPathComponent("blktest.lastseq"), encoding: .utf8)
            let captured = Int(last.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            let c = try Child.swiftvmm(["recv", "--replay", v.appendingPathComponent("blktest.stream").path,
                                        "--disk", "vol=data,path=\(image)"], name: "target")
            #expect(c.waitFor("PASS seq=", timeout: 120), "\(v.lastPathComponent)\n\(c.transcript)")
            let seqs = c.stdout.split(separator: "\n").compactMap { $0.hasPrefix("SEQ ") ? Int($0.dropFirst(4)) : nil }
            #expect(seqs.first.map { $0 > captured && $0 <= captured + 64 } == true, "resumed at \(seqs.first ?? -1) after \(captured)")
            #expect(zip(seqs, seqs.dropFirst()).allSatisfy { $1 == $0 + 1 }, "the sequence broke")
            #expect(c.wait(timeout: 30) == 1)
        }
    }

    @Test("netecho captured mid-run resumes on a TAP and answers pings")
    func netechoResumes() throws {
        for v in Self.versions {
            let net = try TestNetwork(tap: false)
            defer { net.delete() }
            try TestNetwork.run(TestNetwork.ip, ["-n", net.namespace, "tuntap", "add", "dev", net.tap, "mode", "tap", "multi_queue"])
            try net.configure(net.tap)
            let c = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "recv", "--replay",
                                               v.appendingPathComponent("netecho.stream").path, "--net", "tap=\(net.tap)"], name: "target")
            #expect(c.waitForStderr("received and running", timeout: 60), "\(c.transcript)")
            let ping = try net.exec(["ping", "-c", "3", "-W", "2", TestNetwork.guestIP])
            #expect(ping.contains("3 received") || ping.contains("2 received"), "\(ping)")
            c.signal(SIGTERM)
            #expect(c.wait(timeout: 30) == 0)
        }
    }

    // MARK: capture (run by hand when the format changes)

    /// Fixtures are captured with the generic CPU model, so that they restore on any host.
    static let portable = ["--cpu-model", "generic"]

    @Test("capture this version's fixtures", .enabled(if: ProcessInfo.processInfo.environment["SWIFTVMM_CAPTURE_FIXTURES"] != nil))
    func captureFixtures() throws {
        try FileManager.default.createDirectory(at: Self.current, withIntermediateDirectories: true)
        try capture("memtouch", image: "memtouch.elf", cmdline: "size=4M heartbeat-ms=100 passes=300000", ready: "HEARTBEAT",
                    sourceExtra: Self.portable)
        try captureBlktest()
        try captureNetecho()
    }

    /// Migrates a running guest through a recorder; keeps the source's half of the stream and a state blob.
    func capture(_ name: String, image: String, cmdline: String, ready: String, sourceExtra: [String] = [],
                 targetExtra: [String] = [], after: (Child) throws -> Void = { _ in }) throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source(image, cmdline: cmdline, memory: "32M", extra: sourceExtra)
        #expect(src.waitFor(ready, timeout: 60), "\(src.transcript)")
        let state = rig.path("state.fdt")
        let client = try JSONLinesClient.qmp(path: api)
        _ = try client.execute("x-swiftvmm-dump-state", ["path": .string(state)])
        try FileManager.default.copyItem(atPath: state, toPath: Self.current.appendingPathComponent("\(name).state").path)
        let listen = rig.path("m.sock")
        let (dst, _) = try rig.target(listen: "unix:\(listen)", extra: targetExtra)
        let recorder = try StreamRecorder(front: rig.path("rec.sock"), back: listen)
        let s = try rig.send(api, to: "unix:" + rig.path("rec.sock"))
        #expect(s.status == 0, "\(s.stderr)")
        let out = Self.current.appendingPathComponent("\(name).stream")
        try Data(recorder.captured).write(to: out)
        _ = src.wait(timeout: 30)
        try after(src)
        dst.kill()
    }

    func captureBlktest() throws {
        let rig = try MigrationRig()
        let a = rig.path("a.img"), b = rig.path("b.img")
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: a))
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: b))
        try capture("blktest", image: "blktest.elf", cmdline: "loop blocks=64 count=3000 flush-every=100", ready: "SEQ 50\n",
                    sourceExtra: Self.portable + ["--disk", "vol=data,path=\(a)"], targetExtra: ["--disk", "vol=data,path=\(b)"]) { src in
            // The source's image is the guest's disk at the pause: every acknowledged write, nothing after.
            try FileManager.default.copyItem(atPath: a, toPath: Self.current.appendingPathComponent("blktest.img").path)
            let last = src.stdout.split(separator: "\n").compactMap { $0.hasPrefix("SEQ ") ? Int($0.dropFirst(4)) : nil }.max() ?? 0
            try "\(last)\n".write(to: Self.current.appendingPathComponent("blktest.lastseq"), atomically: true, encoding: .utf8)
        }
    }

    func captureNetecho() throws {
        let net = try TestNetwork(tap: false)
        defer { net.delete() }
        try TestNetwork.run(TestNetwork.ip, ["-n", net.namespace, "tuntap", "add", "dev", net.tap, "mode", "tap", "multi_queue"])
        try net.configure(net.tap)
        let rig = try MigrationRig()
        let api = rig.path("src.sock")
        let src = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "run", "--kernel", Paths.guest("netecho.elf"),
                                             "--memory", "32M", "--net", "tap=\(net.tap)", "--cmdline", "ip=\(TestNetwork.guestIP) quiet",
                                             "--api-socket", api] + Self.portable, name: "source")
        #expect(src.waitFor("NET UP", timeout: 60))
        let client = try JSONLinesClient.qmp(path: api)
        let state = rig.path("state.fdt")
        _ = try client.execute("x-swiftvmm-dump-state", ["path": .string(state)])
        try FileManager.default.copyItem(atPath: state, toPath: Self.current.appendingPathComponent("netecho.state").path)
        let listen = rig.path("m.sock")
        let dst = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, Paths.swiftvmm, "recv", "--listen", "unix:\(listen)",
                                             "--net", "tap=\(net.tap)"], name: "target")
        #expect(dst.waitForStderr("waiting for a migration", timeout: 30))
        let recorder = try StreamRecorder(front: rig.path("rec.sock"), back: listen)
        let s = try rig.send(api, to: "unix:" + rig.path("rec.sock"))
        #expect(s.status == 0, "\(s.stderr)")
        try Data(recorder.captured).write(to: Self.current.appendingPathComponent("netecho.stream"))
        dst.kill()
    }
}

/// A UNIX-socket relay that keeps what the connecting side (a migration source) sends.
final class StreamRecorder: @unchecked Sendable {
    private let listener: Int32
    private let lock = NSLock()
    private var bytes: [UInt8] = []

    var captured: [UInt8] { lock.lock(); defer { lock.unlock() }; return bytes }

    init(front: String, back: String) throws {
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard unixCall(listener, front, bind) == 0, listen(listener, 1) == 0 else { throw HarnessError("cannot listen on \(front)") }
        let t = Thread { [self] in
            let a = accept(listener, nil, nil)
            let b = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard a >= 0, unixCall(b, back, connect) == 0 else { return }
            let reverse = Thread { self.pump(b, a, keep: false) }
            reverse.start()
            self.pump(a, b, keep: true)
        }
        t.start()
    }

    deinit { close(listener) }

    private func pump(_ from: Int32, _ to: Int32, keep: Bool) {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            if keep { lock.lock(); bytes += buf[0..<n]; lock.unlock() }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { p in p.baseAddress.map { send(to, $0 + off, n - off, Int32(MSG_NOSIGNAL)) } ?? -1 }
                if w <= 0 { return }
                off += w
            }
        }
        shutdown(to, Int32(SHUT_WR))
    }
}

/// `bind` or `connect` of `fd` to the UNIX socket at `path`.
private func unixCall(_ fd: Int32, _ path: String, _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { p in p.copyBytes(from: Array(path.utf8.prefix(100)) + [0]) }
    return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
}
