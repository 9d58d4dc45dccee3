import Foundation
import Glibc
import Harness
import Testing

/// `send --local`: a guest whose RAM is in memfds moves to another swiftvmm on this host by
/// handing over its descriptors — RAM, disks, TAP queues — and only its vCPU and device state.
/// Judged by the guest's own checks (memtouch verifies every page it wrote, blktest-style
/// writes are on the disk in sequence, the network answers).
@Suite("local hand-over", .serialized)
struct LocalHandoverTests {
    static let memfd = ["--memory-backend", "memfd"]

    /// The downtime of one finished hand-over, from `send --report`.
    static func downtime(_ report: String) -> Double? {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: report)),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return json["downtime_ms"] as? Double
    }

    @Test("memtouch dirtying at full speed is handed over 10 times, back and forth, and PASSes: no page was copied, none lost")
    func memtouchHandedOverTenTimesPasses() throws {
        let rig = try MigrationRig()
        var (current, api) = try rig.source("memtouch.elf", cmdline: "size=32M heartbeat-ms=200 passes=150000", extra: Self.memfd)
        #expect(current.waitFor("HEARTBEAT", timeout: 30))
        var all = [current]
        defer { for c in all where c.isRunning { c.kill() } }
        var downtimes: [Double] = []
        for hop in 1...10 {
            let listen = "unix:" + rig.path("hop\(hop).sock")
            let (next, nextAPI) = try rig.target(listen: listen)
            all.append(next)
            let report = rig.path("hop\(hop).json")
            let s = try rig.send(api, to: listen, extra: ["--local", "--report", report])
            try #require(s.status == 0, "hop \(hop): \(s.stderr)\n\(current.transcript)\n\(next.transcript)")
            #expect(s.stdout.contains("0.0 MB on the wire"), "hop \(hop) copied pages: \(s.stdout)")
            #expect(current.wait(timeout: 30) == 0, "hop \(hop): the source did not exit")
            #expect(next.printsAgain(), "hop \(hop): the guest does not run on the target\n\(next.transcript)")
            downtimes.append(Self.downtime(report) ?? -1)
            current = next
            api = nextAPI
        }
        print("local hand-over downtimes (ms): \(downtimes.map { String(format: "%.2f", $0) }.joined(separator: " "))")
        #expect(current.waitFor("PASS passes=150000", timeout: 180), "\(current.transcript)")
        #expect(all.allSatisfy { !$0.stdout.contains("FAIL") })
        #expect(all.dropLast().allSatisfy { !$0.stdout.contains("PASS") }, "the guest finished before the last hop")
    }

    @Test("a disk with a mirror is not handed over: the dry run and the hand-over each say why in one line naming the volume, and the guest runs on at the source with its mirror")
    func mirroredDiskIsRefused() throws {
        let rig = try MigrationRig()
        let image = rig.path("disk.img"), mirror = rig.path("mirror.img")
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: image))
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=8M heartbeat-ms=100 passes=0", memory: "64M",
                                        extra: Self.memfd + ["--disk", "vol=data,path=\(image),mirror=\(mirror)"])
        defer { if src.isRunning { src.kill() } }
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("h.sock")
        let (dst, _) = try rig.target(listen: listen)
        defer { if dst.isRunning { dst.kill() } }
        let why = "volume 'data' has a mirror, which a local hand-over does not carry"
        let d = try rig.send(api, to: listen, extra: ["--local", "--dry-run"])
        #expect(d.status == 2 && d.stdout.contains(why), "\(d.stdout)\n\(d.stderr)")
        let s = try rig.send(api, to: listen, extra: ["--local"])
        #expect(s.status == 2, "\(s.stdout)\n\(s.stderr)")
        #expect(s.stderr.split(separator: "\n").contains { $0.contains(why) }, "\(s.stderr)")
        #expect(src.printsAgain(), "the guest stopped on the source")
        let mirrors = try rig.status(api)
        #expect("\(mirrors)".contains("in-sync") || "\(mirrors)".contains("resyncing"), "the source lost its mirror: \(mirrors)")
    }

    @Test("a guest with a disk and a single-queue TAP is handed over: writes continue in sequence, pings are answered, recv needs no --disk or --net")
    func diskAndSingleQueueTAPMove() throws {
        let rig = try MigrationRig()
        let net = try TestNetwork()   // a TAP made without multi_queue
        defer { net.delete() }
        let image = rig.path("disk.img")
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: image))
        let api = rig.nextSocket("api")
        let src = try Child(TestNetwork.ip, ["netns", "exec", net.namespace, rig.swiftvmm, "run", "--kernel", Paths.guest("soak.elf"),
                                             "--memory", "64M", "--api-socket", api, "--name", "soak", "--disk", "vol=data,path=\(image)",
                                             "--net", "tap=\(net.tap)", "--cmdline", "size=4M blocks=16 ip=\(TestNetwork.guestIP) beats=150"] + Self.memfd,
                            name: "source")
        // The target runs outside the namespace: the TAP reaches it only as a descriptor.
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen)
        defer { for c in [src, dst] where c.isRunning { c.kill() } }
        try rig.waitForSocket(api, child: src)
        #expect(src.waitFor("SEQ 20\n", timeout: 60), "\(src.transcript)")
        #expect(try net.exec(["ping", "-c", "2", "-W", "2", TestNetwork.guestIP]).contains("2 received"))
        let s = try rig.send(api, to: listen, extra: ["--local"])
        #expect(s.status == 0, "\(s.stderr)\n\(src.transcript)\n\(dst.transcript)")
        #expect(src.wait(timeout: 30) == 0)
        let lastOnSource = BlktestImage.acknowledged([src.stdout]).last ?? 0
        #expect(dst.waitFor("SEQ \(lastOnSource + 50)\n", timeout: 60), "\(dst.transcript)")
        let ping = try net.exec(["ping", "-c", "3", "-W", "2", TestNetwork.guestIP])
        #expect(ping.contains("3 received"), "\(ping)")
        #expect(dst.waitFor("PASS beats=150", timeout: 120), "\(dst.transcript)")
        #expect(dst.wait(timeout: 30) == 1)
        let seqs = BlktestImage.acknowledged([src.stdout, dst.stdout])
        let last = try #require(seqs.last)
        #expect(seqs == Array(1...last), "the acknowledged writes are not one unbroken sequence across the hand-over")
        #expect(try BlktestImage(path: image, blocks: 16).check(lastSeq: last, final: true).isEmpty)
        #expect(!src.stdout.contains("FAIL") && !dst.stdout.contains("FAIL"))
    }

    @Test("--local of a guest in private memory is refused in one line naming --memory-backend memfd; the guest keeps running")
    func anonymousMemoryRefused() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=8M heartbeat-ms=200 passes=30000")
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen)
        defer { for c in [src, dst] where c.isRunning { c.kill() } }
        let s = try rig.send(api, to: listen, extra: ["--local"])
        #expect(s.status == 2, "\(s.stderr)")
        #expect(s.stderr.split(separator: "\n").count == 1 && s.stderr.contains("--memory-backend memfd"), "\(s.stderr)")
        #expect(dst.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(!dst.stdout.contains("HEARTBEAT"))
        #expect(src.printsAgain(), "\(src.transcript)")
        #expect(src.waitFor("PASS", timeout: 120))
    }

    @Test("cancel while paused before the commit: the guest resumes on the source over memory the target had mapped, and PASSes")
    func cancelBeforeCommitResumesOnSource() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=32M heartbeat-ms=200 passes=60000", extra: Self.memfd)
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen)
        let sender = try rig.startSend(api, to: listen, extra: ["--local", "--hold-before-commit-ms", "20000"])
        defer { for c in [src, dst, sender] where c.isRunning { c.kill() } }
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, (try rig.status(api)["migration"] as? [String: Any])?["phase"] as? String != "stop-and-copy" { usleep(50_000) }
        #expect(try runSwiftVMM(["cancel", api]).status == 0)
        #expect(sender.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(dst.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(!dst.stdout.contains("HEARTBEAT"))
        #expect(src.printsAgain(), "\(src.transcript)")
        #expect(src.waitFor("PASS passes=60000", timeout: 120), "\(src.transcript)")
        #expect(!src.stdout.contains("FAIL"))
    }
}

/// A crash, stall or dropped connection at every point of a local hand-over leaves exactly one
/// copy of the guest running (as `FaultInjectionTests` proves for the copying migration).
@Suite("local hand-over faults", .serialized)
struct LocalHandoverFaultTests {
    typealias Case = FaultInjectionTests.Case
    static let points = ["after-hello", "after-precheck", "after-state", "after-ready", "after-go"]
    static let cases = points.map { Case(side: "source", point: $0, action: "crash") }
        + (points + ["before-running"]).map { Case(side: "target", point: $0, action: "crash") }
        + [Case(side: "source", point: "after-ready", action: "close"), Case(side: "target", point: "after-ready", action: "close"),
           Case(side: "target", point: "after-go", action: "stall"), Case(side: "source", point: "after-ready", action: "stall")]

    @Test("local hand-over: a crash, stall or close at each point", arguments: cases)
    func fault(_ c: Case) throws { try FaultInjectionTests().exercise(c, local: true) }
}
