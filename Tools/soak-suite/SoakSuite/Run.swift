import Foundation
import Glibc
import Harness
import Synchronization

/// One swiftvmm process that holds the guest (`run` at first, then each hop's `recv`).
final class Side {
    let label: String
    let child: Child
    let api: String
    var cursor = OutputCursor()

    init(label: String, child: Child, api: String) {
        self.label = label
        self.child = child
        self.api = api
    }
}

/// The soak run: soak.elf boots on side A, then moves A → B → A … over TCP with a pre-shared
/// key, each hop to a fresh `swiftvmm recv`. Both sides sit in one network namespace and share
/// its multi-queue TAP, where a pinger runs throughout; side B reaches the disk image under
/// another path (a hard link), as with shared storage.
public final class SoakRun {
    let o: SoakOptions
    let swiftvmm: String
    let rig: MigrationRig
    let net: TestNetwork
    let key: String
    let disk: BlktestImage
    var console = GuestConsole()
    var ping = PingLog()
    var pingCursor = OutputCursor()
    var pinger: Child?
    var current: Side?
    var summary = SoakSummary()
    /// Console problems already charged to a hop.
    var problemsSeen = 0

    init(_ o: SoakOptions) throws {
        self.o = o
        swiftvmm = o.swiftvmm ?? Paths.swiftvmm
        rig = try MigrationRig(swiftvmm: swiftvmm)
        key = rig.path("key")
        let hex = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        guard FileManager.default.createFile(atPath: key, contents: Data(hex.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw SoakError("cannot write \(key)")
        }
        let a = rig.path("disk-a.img")
        try Data(count: max(1 << 20, o.blocks * BlktestImage.blockSize)).write(to: URL(fileURLWithPath: a))
        try FileManager.default.linkItem(atPath: a, toPath: rig.path("disk-b.img"))
        disk = BlktestImage(path: a, blocks: o.blocks)
        net = try TestNetwork(tap: false, prefix: "svmsoak")
        try TestNetwork.run(TestNetwork.ip, ["-n", net.namespace, "tuntap", "add", "dev", net.tap, "mode", "tap", "multi_queue"])
        try net.configure(net.tap)
    }

    deinit { net.delete() }

    /// Set by the first Ctrl-C (SIGINT, SIGTERM, SIGHUP): the children are killed and the run
    /// winds down through its own clean-up; a second one cleans up and exits at once.
    static let interrupted = Atomic<Bool>(false)

    /// Runs the soak as `o` says, printing a line per hop and a summary; returns the exit status.
    public static func main(_ o: SoakOptions) -> Int32 {
        Registry.shared.onInterrupt { sig in
            if interrupted.exchange(true, ordering: .relaxed) {
                Registry.shared.cleanUp()
                Glibc.exit(130)
            }
            print("\nsoak: interrupted (signal \(sig)): stopping")
            Registry.shared.close()
            Registry.shared.killChildren(grace: 1)
        }
        let started = Monotonic.now()
        var summary: SoakSummary
        do {
            let run = try SoakRun(o)
            summary = run.go()
        } catch {
            summary = SoakSummary()
            summary.problems.append("\(error)")
        }
        summary.seconds = Monotonic.now() - started
        for l in summary.lines { print(l) }
        if interrupted.load(ordering: .relaxed) { return 130 }
        return summary.failures == 0 ? 0 : 1
    }

    func go() -> SoakSummary {
        print("soak: \(o.hops) hops of soak.elf (\(o.memory), memtouch \(o.size), \(o.blocks) disk blocks) between two "
              + "swiftvmm processes over TCP with a key; \(swiftvmm)")
        do {
            try start()
            for n in 1...max(1, o.hops) {
                guard !Self.interrupted.load(ordering: .relaxed), hop(n) else { break }
            }
        } catch {
            summary.problems.append("\(error)")
        }
        finish()
        return summary
    }

    var guestCommandLine: String {
        "size=\(o.size) blocks=\(o.blocks) ip=\(TestNetwork.guestIP) quiet heartbeat-ms=200 \(o.guestArgs)"
    }

    func diskPath(_ label: String) -> String { rig.path(label == "A" ? "disk-a.img" : "disk-b.img") }

    /// `argv` run inside the namespace.
    func inNamespace(_ argv: [String]) -> [String] { ["netns", "exec", net.namespace] + argv }

    /// Boots the guest on side A and starts the pinger once it answers.
    func start() throws {
        let api = rig.nextSocket("api")
        let child = try Child(TestNetwork.ip, inNamespace([
            swiftvmm, "run", "--kernel", Paths.guest("soak.elf"), "--memory", o.memory, "--name", "soak",
            "--net", "tap=\(net.tap)", "--disk", "vol=data,path=\(diskPath("A"))", "--cmdline", guestCommandLine,
            "--api-socket", api]), name: "A-run")
        try rig.waitForSocket(api, child: child)
        _ = try child.waitForLine("^HEARTBEAT ", timeout: 60)
        let side = Side(label: "A", child: child, api: api)
        side.cursor.advance(&console, to: child.stdout)
        current = side
        let p = try Child(TestNetwork.ip, inNamespace(["ping", "-i", "0.05", TestNetwork.guestIP]), name: "ping")
        pinger = p
        _ = try p.waitForLine("icmp_seq=", timeout: 30, failPattern: nil)
    }
}
