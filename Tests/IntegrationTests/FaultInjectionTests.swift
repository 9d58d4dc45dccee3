import Foundation
import Glibc
import Harness
import Testing

/// Either side crashes, stalls or drops its connection at every named point of a migration
/// (`SWIFTVMM_FAULT`). Afterwards exactly one copy of the guest runs — on the side that must
/// have it, or on the side the operator picks when the outcome is in doubt — and its own check
/// PASSes there; or, when the source process itself died before the target held the whole
/// guest, none does and the target never ran a half-received one. Nothing is left behind.
@Suite("fault injection at every phase", .serialized)
struct FaultInjectionTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var side: String, point: String, action: String
        var testDescription: String { "\(side) \(["crash": "crashes", "stall": "stalls", "close": "closes its connection"][action] ?? action) \(point)" }
    }

    static let sourcePoints = ["after-hello", "after-precheck", "mid-round-0", "mid-round-n", "after-state", "after-ready", "after-go"]
    static let targetPoints = sourcePoints + ["before-running"]
    static let crashes = sourcePoints.map { Case(side: "source", point: $0, action: "crash") }
        + targetPoints.map { Case(side: "target", point: $0, action: "crash") }
    static let stallsAndCloses = [
        Case(side: "source", point: "mid-round-0", action: "stall"), Case(side: "source", point: "after-ready", action: "stall"),
        Case(side: "target", point: "mid-round-n", action: "stall"), Case(side: "target", point: "after-ready", action: "stall"),
        Case(side: "target", point: "after-go", action: "stall"),
        Case(side: "source", point: "after-precheck", action: "close"), Case(side: "source", point: "after-ready", action: "close"),
        Case(side: "source", point: "after-go", action: "close"), Case(side: "target", point: "mid-round-0", action: "close"),
        Case(side: "target", point: "after-ready", action: "close"), Case(side: "target", point: "before-running", action: "close"),
    ]

    /// A guest that finishes a few seconds after it resumes anywhere, and dirties memory
    /// fast enough that pre-copy needs more than one round.
    static let guest = "size=4M heartbeat-ms=100 passes=300000"

    @Test("a crash at each point, on each side", arguments: crashes)
    func crash(_ c: Case) throws { try exercise(c) }

    @Test("a stall or a dropped connection", arguments: stallsAndCloses)
    func stallOrClose(_ c: Case) throws { try exercise(c) }

    /// Pages over four TCP connections (`send --connections 4`): a fault on an extra data
    /// connection, or on the first while the others carry pages.
    static let overConnections = [
        Case(side: "target", point: "channel-mid-round", action: "crash"), Case(side: "source", point: "channel-mid-round", action: "crash"),
        Case(side: "target", point: "channel-mid-round", action: "stall"), Case(side: "source", point: "channel-mid-round", action: "stall"),
        Case(side: "target", point: "channel-mid-round", action: "close"), Case(side: "target", point: "mid-round-0", action: "close"),
        Case(side: "target", point: "after-state", action: "crash"),
    ]

    @Test("a crash, stall or close over four TCP connections", arguments: overConnections)
    func overFourConnections(_ c: Case) throws { try exercise(c, connections: 4) }

    /// With `local`, the guest's RAM is in memfds and `send --local` hands it over; with
    /// `connections` above 1 the pages travel over that many TCP connections on loopback.
    func exercise(_ c: Case, local: Bool = false, connections: Int = 1) throws {
        let rig = try MigrationRig()
        let fault = ["SWIFTVMM_FAULT": "\(c.side):\(c.point):\(c.action)"]
        let (src, api) = try rig.source("memtouch.elf", cmdline: Self.guest, memory: "32M",
                                        extra: local ? ["--memory-backend", "memfd"] : [],
                                        environment: c.side == "source" ? fault : [:])
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let listen = connections > 1 ? "tcp:127.0.0.1:\(MigrationRig.freePort())" : "unix:" + rig.path("m.sock")
        let (dst, tapi) = try rig.target(listen: listen, extra: ["--timeout", "2"], environment: c.side == "target" ? fault : [:])
        let sender = try rig.startSend(api, to: listen, extra: ["--timeout", "2", "--downtime-ms", "0.2", "--max-time", "20",
                                                                "--connections", "\(connections)"] + (local ? ["--local"] : []))
        defer { for p in [src, dst, sender] where p.isRunning { p.signal(SIGCONT); p.kill() } }

        // Settle: the faulting process is dead, stopped, or on its error path; the other has
        // either the guest running, a paused copy in doubt, or nothing. The healthy side goes
        // first: it is the one that notices a stalled peer.
        let sides = [Side(name: "source", child: src, api: api), Side(name: "target", child: dst, api: tapi)]
        let faulty = c.side == "source" ? 0 : 1
        var states = ["", ""]
        states[1 - faulty] = sides[1 - faulty].settle(faulty: nil)
        states[faulty] = sides[faulty].settle(faulty: c.action)
        if c.action == "stall" {
            // The stall ends (the operator's SIGCONT): that side finds its peer gone and takes
            // its own error path.
            sides[faulty].child.signal(SIGCONT)
            states[faulty] = sides[faulty].settle(faulty: nil)
        }
        let sendStatus = sender.wait(timeout: 60)
        let send = (status: sendStatus, stderr: sender.stderr)
        let running = zip(sides, states).filter { $0.1 == "running" || $0.1 == "passed" }.map(\.0)
        let held = zip(sides, states).filter { $0.1 == "in-doubt" }.map(\.0)
        #expect(running.count <= 1, "two copies run: \(states) \(send.stderr)")
        let keeper: Side
        if let r = running.first {
            keeper = r
        } else if let h = held.first(where: { $0.name == "source" }) ?? held.first {
            keeper = h                                   // the operator's choice: resume one copy
            let reply = control(h.api, "cont")
            if local && c.side == "target" && c.action == "crash" && c.point == "before-running" {
                // The target took the guest and ran it on the shared memory, then died with it:
                // the source's paused copy is stale and refuses to resume.
                #expect(reply.contains("stale") && !reply.contains("\"return\""), "\(reply)")
                #expect(!src.printsAgain(timeout: 3), "the stale copy resumed\n\(src.transcript)")
                return
            }
            #expect(reply.contains("return"), "cont on the \(h.name)")
        } else {
            // Only the source process's own death before the target held the guest loses it.
            #expect(c.side == "source" && c.action == "crash" && (Self.sourcePoints.prefix(5) + ["channel-mid-round"]).contains(c.point),
                    "no copy of the guest is left: \(states)\n\(send.stderr)\n\(src.transcript)\n\(dst.transcript)")
            #expect(!dst.stdout.contains("HEARTBEAT"), "the target ran a half-received guest")
            return
        }
        for other in sides where other.name != keeper.name && other.child.isRunning {
            _ = control(other.api, "quit")               // drop any other paused copy
        }
        #expect(keeper.child.waitFor("PASS passes=300000", timeout: 120), "\(keeper.child.transcript)")
        #expect(!src.stdout.contains("FAIL") && !dst.stdout.contains("FAIL"))
        #expect(keeper.child.wait(timeout: 30) == 1, "\(keeper.child.transcript)")
    }

    /// One of the two VMMs as the test sees it.
    struct Side {
        var name: String
        var child: Child
        var api: String

        /// `dead`, `stalled`, `running`, `passed` (the guest ran to its end here), `in-doubt`,
        /// `stopped` (exited without the guest) or `waiting`.
        func settle(faulty action: String?) -> String {
            if action == "crash" {
                _ = child.wait(timeout: 30)
                return "dead"
            }
            if action == "stall" { return "stalled" }
            // Wait until the migration on this side has ended one way or the other.
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                guard child.isRunning, let status = try? JSONLinesClient.qmp(path: api, timeout: 2).execute("x-swiftvmm-query-status", timeout: 2) else {
                    _ = child.wait(timeout: 10)
                    return child.stdout.contains("PASS passes=") ? "passed" : "stopped"
                }
                // Only a migration that has ended counts (before `send` connects there is none).
                let phase = status["migration"]?["phase"]?.string ?? ""
                if phase == "in-doubt" { return "in-doubt" }
                if ["completed", "failed", "cancelled"].contains(phase) {
                    return status["status"]?.string == "running" ? "running" : "stopped"
                }
                _ = child.waitForCompletion(deadline: Date().addingTimeInterval(0.1))
            }
            return "waiting"
        }
    }
}
