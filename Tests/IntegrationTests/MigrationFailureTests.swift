import Foundation
import Glibc
import Harness
import Testing

/// Everything that can go wrong before commit leaves the guest running, unharmed, on the source.
@Suite("migration failures keep the guest on the source", .serialized)
struct MigrationFailureTests {
    static let memtouch = "size=32M heartbeat-ms=200 passes=60000"
    /// A guest that outlives a migration attempt of several seconds by as many again.
    static let memtouchLong = "size=32M heartbeat-ms=200 passes=200000"
    /// A link too slow for memtouch's dirty rate: pre-copy never converges by itself.
    static let slow = ["--max-bandwidth", "256K", "--auto-converge", "off"]

    func phase(_ rig: MigrationRig, _ api: String) throws -> String {
        ((try rig.status(api)["migration"] as? [String: Any])?["phase"] as? String) ?? ""
    }

    func waitForPhase(_ rig: MigrationRig, _ api: String, _ wanted: String, timeout: Double = 30) throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try phase(rig, api) == wanted { return true }
            usleep(50_000)
        }
        return false
    }

    /// A running memtouch source, a waiting target, and a `send` over a link too slow to
    /// converge, returned once the migration is in pre-copy.
    func slowMigrationInPrecopy(_ rig: MigrationRig, extra: [String] = [])
        throws -> (src: Child, api: String, dst: Child, sender: Child) {
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouch)
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("m\(rig.counter).sock")
        let (dst, _) = try rig.target(listen: listen)
        let sender = try Child.swiftvmm(["send", api, "--to", listen] + Self.slow + extra, name: "send")
        #expect(try waitForPhase(rig, api, "pre-copy"), "\(sender.transcript)")
        return (src, api, dst, sender)
    }

    @Test("cancel during pre-copy: guest keeps running on the source, target exits non-zero, a new recv then succeeds")
    func cancelDuringPrecopyKeepsGuestRunningOnSource() throws {
        let rig = try MigrationRig()
        let (src, api, dst, sender) = try slowMigrationInPrecopy(rig)
        let c = try runSwiftVMM(["cancel", api])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(sender.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(sender.stderr.contains("cancel"), "\(sender.stderr)")
        #expect(dst.wait(timeout: 30).map { $0 != 0 } == true, "\(dst.transcript)")
        #expect(!dst.stdout.contains("HEARTBEAT"), "the target ran the guest")
        #expect(src.printsAgain(), "guest stopped on the source\n\(src.transcript)")
        // The same guest can still migrate.
        let listen2 = "unix:" + rig.path("m2.sock")
        let (dst2, _) = try rig.target(listen: listen2)
        let s = try rig.send(api, to: listen2)
        #expect(s.status == 0, "\(s.stderr)\n\(src.transcript)\n\(dst2.transcript)")
        #expect(dst2.waitFor("PASS", timeout: 120), "\(dst2.transcript)")
        #expect(!src.stdout.contains("FAIL") && !dst2.stdout.contains("FAIL"))
    }

    @Test("cancel at setup (target never answers): guest keeps running on the source")
    func cancelAtSetupKeepsGuestRunning() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouch)
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        // A listener that accepts and then says nothing: the source hangs in its handshake.
        let sock = rig.path("mute.sock")
        let mute = try Child("/usr/bin/python3", ["-c", """
            import socket, time
            s = socket.socket(socket.AF_UNIX); s.bind('\(sock)'); s.listen(1)
            c, _ = s.accept(); time.sleep(60)
            """], name: "mute")
        _ = mute
        try rig.waitForSocket(sock, child: mute)
        let sender = try Child.swiftvmm(["send", api, "--to", "unix:" + sock], name: "send")
        #expect(try waitForPhase(rig, api, "setup"))
        let c = try runSwiftVMM(["cancel", api])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(sender.wait(timeout: 30).map { $0 != 0 } == true, "\(sender.transcript)")
        #expect(src.printsAgain(), "\(src.transcript)")
        #expect(src.waitFor("PASS", timeout: 120))
    }

    @Test("cancel at stop-and-copy: the paused guest resumes on the source and PASSes")
    func cancelAtStopAndCopyResumesGuest() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouch)
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen)
        let sender = try Child.swiftvmm(["send", api, "--to", listen, "--hold-before-commit-ms", "20000"], name: "send")
        #expect(try waitForPhase(rig, api, "stop-and-copy"), "\(sender.transcript)")
        let c = try runSwiftVMM(["cancel", api])
        #expect(c.status == 0)
        #expect(sender.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(dst.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(!dst.stdout.contains("HEARTBEAT"))
        #expect(src.printsAgain(), "\(src.transcript)")
        #expect(src.waitFor("PASS", timeout: 120))
        #expect(!src.stdout.contains("FAIL"))
    }

    @Test("target killed mid-stream: the source resumes and the guest PASSes")
    func targetKilledMidStream() throws {
        let rig = try MigrationRig()
        let (src, _, dst, sender) = try slowMigrationInPrecopy(rig)
        dst.signal(SIGKILL)
        #expect(sender.wait(timeout: 30).map { $0 != 0 } == true, "\(sender.transcript)")
        #expect(src.printsAgain(), "\(src.transcript)")
        #expect(src.waitFor("PASS", timeout: 120))
        #expect(!src.stdout.contains("FAIL"))
    }

    @Test("source killed mid-stream: the target exits non-zero and never ran the guest")
    func sourceKilledMidStream() throws {
        let rig = try MigrationRig()
        let (src, _, dst, sender) = try slowMigrationInPrecopy(rig)
        src.signal(SIGKILL)
        let status = dst.wait(timeout: 30)
        #expect(status != nil && status != 0, "\(dst.transcript)")
        #expect(!dst.stdout.contains("HEARTBEAT") && !dst.stdout.contains("PASS"), "the target ran the guest")
        #expect(dst.stderr.contains("error"), "\(dst.stderr)")
        _ = sender.wait(timeout: 30)
    }

    @Test("non-convergence: a tiny --max-bandwidth without auto-converge hits --max-time; the guest stays on the source")
    func nonConvergenceHitsMaxTime() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.memtouchLong)
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen)
        let s = try rig.send(api, to: listen, extra: Self.slow + ["--max-time", "3"])
        #expect(s.status != nil && s.status != 0)
        #expect(s.stderr.contains("did not converge"), "\(s.stderr)")
        #expect(s.stderr.split(separator: "\n").count == 1, "\(s.stderr)")
        #expect(dst.wait(timeout: 30).map { $0 != 0 } == true, "\(dst.transcript)")
        #expect(src.printsAgain(), "\(src.transcript)")
        #expect(src.waitFor("PASS", timeout: 120))
    }

    @Test("auto-converge with the same slow link throttles the vCPUs and converges")
    func autoConvergeThrottlesAndConverges() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=32M heartbeat-ms=200 passes=60000")
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen)
        let report = rig.path("r.json")
        let s = try rig.send(api, to: listen, extra: ["--max-bandwidth", "256K", "--report", report], timeout: 180)
        #expect(s.status == 0, "\(s.stderr)")
        #expect(s.stdout.contains("throttled"), "\(s.stdout)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        #expect((json["max_throttle_percent"] as? Int ?? 0) > 0)
        #expect(dst.waitFor("PASS", timeout: 180), "\(dst.transcript)")
        #expect(!dst.stdout.contains("FAIL"))
        #expect(!src.stdout.contains("PASS"), "the guest finished before it migrated")
    }
}

/// Pre-checks refuse, before any memory moves, with one line on both sides naming what differs.
/// Every refusal is covered in-process (MigrationTests); these check the one-line output of
/// the binaries.
@Suite("migration refusals", .serialized)
struct MigrationRefusalTests {
    func refused(send sendExtra: [String] = [], recv recvExtra: [String] = [], mentions: String,
                 cmdline: String = "size=16M heartbeat-ms=200", sourceExtra: [String] = [],
                 sourceLocation: SourceLocation = #_sourceLocation) throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: cmdline, extra: sourceExtra)
        #expect(src.waitFor("HEARTBEAT", timeout: 30), sourceLocation: sourceLocation)
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen, extra: recvExtra)
        let s = try rig.send(api, to: listen, extra: sendExtra)
        #expect(s.status != nil && s.status != 0, sourceLocation: sourceLocation)
        #expect(s.stderr.split(separator: "\n").count == 1, "send: \(s.stderr)", sourceLocation: sourceLocation)
        #expect(s.stderr.contains(mentions), "send: \(s.stderr)", sourceLocation: sourceLocation)
        let status = dst.wait(timeout: 30)
        #expect(status != nil && status != 0, sourceLocation: sourceLocation)
        let dstErrors = dst.stderr.split(separator: "\n").filter { $0.contains("error") }
        #expect(dstErrors.count == 1 && dstErrors[0].contains(mentions), "recv: \(dst.stderr)", sourceLocation: sourceLocation)
        #expect(!dst.stdout.contains("HEARTBEAT"), sourceLocation: sourceLocation)
        // Nothing moved: the guest runs on.
        #expect(src.printsAgain(),
                "the guest stopped on the source", sourceLocation: sourceLocation)
    }

    /// A source that fails the handshake is refused, the target says so in one line and keeps
    /// waiting (no one who cannot authenticate ends a waiting target), and the guest runs on.
    func refusedAtHandshake(send sendExtra: [String], recv recvExtra: [String] = [], mentions: String,
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=16M heartbeat-ms=200")
        #expect(src.waitFor("HEARTBEAT", timeout: 30), sourceLocation: sourceLocation)
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen, extra: recvExtra)
        let s = try rig.send(api, to: listen, extra: sendExtra)
        #expect(s.status != nil && s.status != 0, sourceLocation: sourceLocation)
        #expect(s.stderr.split(separator: "\n").count == 1 && s.stderr.contains(mentions), "send: \(s.stderr)", sourceLocation: sourceLocation)
        #expect(dst.waitForStderr("still waiting", timeout: 30), "recv: \(dst.stderr)", sourceLocation: sourceLocation)
        #expect(dst.stderr.contains("refused a source") && dst.isRunning, "recv: \(dst.stderr)", sourceLocation: sourceLocation)
        #expect(src.printsAgain(),
                "the guest stopped on the source", sourceLocation: sourceLocation)
    }

    @Test("memory size differs (a pre-check): recv ends, naming it") func memoryDiffers() throws {
        try refused(recv: ["--memory", "64M"], mentions: "memory size differs")
    }

    @Test("stream version mismatch") func versionMismatch() throws {
        try refusedAtHandshake(send: ["--stream-version", "99"], mentions: "stream version 99")
    }
    @Test("wrong key") func wrongKey() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = dir.appendingPathComponent("a.key").path, b = dir.appendingPathComponent("b.key").path
        try "0123456789abcdef0123456789abcdef".write(toFile: a, atomically: true, encoding: .utf8)
        try "fedcba9876543210fedcba9876543210".write(toFile: b, atomically: true, encoding: .utf8)
        try refusedAtHandshake(send: ["--key-file", a], recv: ["--key-file", b], mentions: "key")
    }
}

/// A second `recv` on an address already in use fails at once and leaves the first alone.
@Suite("recv on a busy address", .serialized)
struct BusyListenTests {
    @Test("a busy UNIX socket or TCP port is a one-line error, and the first recv still works")
    func busyAddressRefused() throws {
        let rig = try MigrationRig()
        for listen in ["unix:" + rig.path("m.sock"), "tcp:127.0.0.1:\(MigrationRig.freePort())"] {
            let (first, _) = try rig.target(listen: listen)
            let second = try runSwiftVMM(["recv", "--listen", listen], timeout: 30)
            #expect(second.status == 2, "\(second.stderr)")
            #expect(second.stderr.contains("in use") || second.stderr.contains("listening"), "\(second.stderr)")
            #expect(second.stderr.split(separator: "\n").count == 1, "\(second.stderr)")
            #expect(first.isRunning, "the first recv died")
            if listen.hasPrefix("unix:") {
                #expect(FileManager.default.fileExists(atPath: String(listen.dropFirst(5))), "the second recv removed the first one's socket")
            }
            first.signal(SIGTERM)
            #expect(first.wait(timeout: 30).map { $0 != 0 } == true)
        }
    }
}
