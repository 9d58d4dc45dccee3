import Foundation
import Glibc
import Harness
import Testing

/// The shared harness's child processes: output collected line by line, completion as an
/// event (exit + end of both pipes), nothing left behind.
@Suite("harness: child processes", .serialized)
struct ChildTests {
    @Test("a child's last output is complete as soon as wait returns, without any drain delay")
    func lastOutputCompleteAtExit() throws {
        let c = try Child("/bin/sh", ["-c", "printf 'one\\ntwo\\npartial'; printf 'err\\n' >&2; exit 3"], name: "sh")
        let start = Monotonic.now()
        #expect(c.wait(timeout: 10) == 3)
        #expect(Monotonic.now() - start < 2)
        #expect(c.stdout == "one\ntwo\npartial")
        #expect(c.out.lines.map(\.text) == ["one", "two", "partial"])
        #expect(c.stderr == "err\n")
        #expect(c.termination == .exited(3))
        #expect(!c.isRunning)
    }

    @Test("waitForLine finds a regex match with its groups and its arrival time")
    func waitForLineMatches() throws {
        let c = try Child("/bin/sh", ["-c", "echo 'MEMTOUCH start=0x1000 pages=42'; echo HEARTBEAT 1; sleep 30"], name: "sh")
        defer { c.kill() }
        let m = try c.waitForLine("^MEMTOUCH start=0x[0-9a-f]+ pages=(\\d+)", timeout: 10)
        #expect(m.groups[1] == "42" && m.index == 0)
        #expect(m.time >= c.startTime)
        let h = try c.waitForLine("^HEARTBEAT", timeout: 10, from: m.index + 1)
        #expect(h.index == 1)
        #expect(c.out.firstByteTime.map { $0 >= c.startTime } == true)
    }

    @Test("waitForLine fails at once on a FAIL line, and when the output ends")
    func waitForLineFails() throws {
        let c = try Child("/bin/sh", ["-c", "echo FAIL word 3; sleep 30"], name: "sh")
        defer { c.kill() }
        #expect(throws: HarnessError.self) { try c.waitForLine("^PASS", timeout: 10) }
        let d = try Child("/bin/sh", ["-c", "echo hello"], name: "sh")
        let start = Monotonic.now()
        let e = #expect(throws: HarnessError.self) { try d.waitForLine("^PASS", timeout: 30) }
        #expect(e?.description.contains("ended before printing") == true)
        #expect(Monotonic.now() - start < 5)
    }

    @Test("a wait that times out kills the child's whole process group and returns nil")
    func timeoutKillsGroup() throws {
        let c = try Child("/bin/sh", ["-c", "sleep 60 & echo $!; wait"], name: "sh")
        #expect(c.waitFor("\n", timeout: 10))
        let grandchild = try #require(Int32(c.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(c.wait(timeout: 0.3) == nil)
        // Killed: gone, or a zombie waiting for init to reap it.
        let stat = (try? String(contentsOfFile: "/proc/\(grandchild)/stat", encoding: .utf8)) ?? ""
        let state = stat.split(separator: ")").last?.split(separator: " ").first
        #expect(stat.isEmpty || state == "Z", "the background sleep outlived its group: \(stat)")
    }

    @Test("the registry knows live children and kills them on clean-up")
    func registryKillsChildren() throws {
        let registry = Registry()
        let c = try Child("/bin/sleep", ["60"], name: "sleep", registry: registry)
        #expect(registry.liveChildren == [c.pid])
        registry.killChildren(grace: 1)
        #expect(!c.isRunning)
        #expect(c.termination == .signaled(SIGTERM))
        #expect(registry.liveChildren.isEmpty)
    }

    @Test("waiting for a file is woken when it appears, and fails when the child that should make it ends")
    func waitForPath() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("made").path
        let c = try Child("/bin/sh", ["-c", "sleep 0.2; touch '\(file)'; sleep 30"], name: "sh")
        defer { c.kill() }
        try Paths.waitFor(file, timeout: 10, child: c)
        #expect(FileManager.default.fileExists(atPath: file))
        let quitter = try Child("/bin/sh", ["-c", "exit 0"], name: "quitter")
        let start = Monotonic.now()
        #expect(throws: HarnessError.self) { try Paths.waitFor(dir.appendingPathComponent("never").path, timeout: 30, child: quitter) }
        #expect(Monotonic.now() - start < 5)
    }

    @Test("environment additions reach the child; stderr can be merged into stdout")
    func environmentAndMerge() throws {
        let c = try Child("/bin/sh", ["-c", "echo $HARNESS_PROBE; echo to-stderr >&2"], name: "sh",
                          environment: ["HARNESS_PROBE": "probe-42"], mergeStderr: true)
        #expect(c.wait(timeout: 10) == 0)
        #expect(c.stdout == "probe-42\nto-stderr\n")
        #expect(c.stderr.isEmpty)
        #expect(sh("echo a; echo b >&2; exit 4") == (4, "a\nb\n"))
    }

    @Test("a child starts as after fork and exec: no signal blocked or ignored, in a session of its own")
    func cleanSignalState() throws {
        let c = try Child("/bin/sh", ["-c", "grep -E '^(SigBlk|SigIgn)' /proc/self/status; ps -o sid= -p $$; echo $$"], name: "sh")
        #expect(c.wait(timeout: 10) == 0)
        let lines = c.out.lines.map { $0.text.trimmingCharacters(in: .whitespaces) }
        #expect(lines.prefix(2) == ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"], "\(lines)")
        #expect(lines.count == 4 && lines[2] == lines[3] && lines[3] == "\(c.pid)", "\(lines)")
    }

    @Test("a missing executable is an error naming it")
    func missingExecutable() {
        let e = #expect(throws: HarnessError.self) { try Child("/nonexistent/vmm", [], name: "vmm") }
        #expect(e?.description.contains("/nonexistent/vmm") == true)
    }
}

/// An in-memory output log: waits are woken by appends.
@Suite("harness: output log")
struct OutputLogTests {
    @Test("a writer on another thread wakes a waiter; partial lines and CRs are handled")
    func wakesWaiter() {
        let log = OutputLog()
        let writer = Thread {
            log.append("SEQ 1\r\nSEQ")
            log.append(" 2\nSE")
            log.close()
        }
        writer.start()
        #expect(log.waitFor("SEQ 2\n", timeout: 10))
        #expect(log.waitUntilClosed(deadline: Date(timeIntervalSinceNow: 10)))
        #expect(log.lines.map(\.text) == ["SEQ 1", "SEQ 2", "SE"])
        #expect(!log.waitFor("never", timeout: 10), "a closed log does not wait")
    }
}
