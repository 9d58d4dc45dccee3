import Foundation
import Glibc
import Harness

extension SoakRun {
    /// Moves the guest to the other side and checks it there; false when no side holds a
    /// running guest any more (the run cannot go on).
    func hop(_ n: Int) -> Bool {
        guard let src = current else { return false }
        var r = HopResult(number: n, from: src.label, to: src.label == "A" ? "B" : "A")
        let lostBefore = ping.lostSoFar, dupsBefore = ping.duplicates
        do {
            let (dst, pingMark) = try migrate(src, hop: n, result: &r)
            current = dst
            try check(dst, pingMark: pingMark, result: &r)
        } catch {
            r.problems.append("\(error)")
        }
        // The side that holds the guest now (the source again, after a failed hop) has its say.
        if let c = current { c.cursor.advance(&console, to: c.child.stdout) }
        pingCursor.advance(&ping, to: pinger?.stdout ?? "")
        r.pingsLost = ping.lostSoFar - lostBefore
        if ping.duplicates > dupsBefore {
            r.problems.append("\(ping.duplicates - dupsBefore) duplicate echo replies: two copies of the guest answered")
        }
        r.problems += console.problems.dropFirst(problemsSeen)
        problemsSeen = console.problems.count
        r.seq = console.lastSeq
        r.beat = console.lastBeat
        summary.hops.append(r)
        print(r.line)
        for p in r.problems { print("    \(p)") }
        fflush(nil)
        return current?.child.isRunning == true
    }

    /// Starts a `recv` for the other side, sends the guest there, and waits for the source to
    /// exit; returns the new side and the pinger's line count when the hand-off was done.
    func migrate(_ src: Side, hop n: Int, result r: inout HopResult) throws -> (Side, Int) {
        let port = 40000 + n % 20000
        let api = rig.nextSocket("api")
        let target = try Child(TestNetwork.ip, inNamespace([
            swiftvmm, "recv", "--listen", "tcp:127.0.0.1:\(port)", "--api-socket", api, "--net", "tap=\(net.tap)",
            "--disk", "vol=data,path=\(diskPath(r.to))", "--key-file", key]), name: "\(r.to)-recv\(n)")
        guard target.waitForStderr("waiting for a migration", timeout: 30) else {
            target.kill()
            throw SoakError("recv never said it was waiting for a migration \(target.tail())")
        }
        let report = reportPath(n)
        var extra = ["--key-file", key, "--report", report]
        if let d = o.downtimeMs { extra += ["--downtime-ms", "\(d)"] }
        let send = try rig.startSend(src.api, to: "tcp:127.0.0.1:\(port)", extra: extra)
        let status = send.wait(timeout: 300)
        guard status == 0 else {
            target.kill()
            throw SoakError("send ended with \(send.termination.map { "\($0)" } ?? "a timeout"): \(send.tail()) \(target.tail())")
        }
        let pingMark = pinger?.out.lineCount ?? 0
        let end = try src.child.waitForExit(timeout: 30)
        if end.termination != .exited(0) { r.problems.append("the source ended with \(end.termination) \(src.child.tail())") }
        src.cursor.advance(&console, to: src.child.stdout)
        if let j = try? JSON.parse(Data(contentsOf: URL(fileURLWithPath: report))) {
            r.downtimeMs = j["downtime_ms"]?.double
            r.totalMs = j["total_ms"]?.double
        } else {
            r.problems.append("send wrote no readable --report \(report)")
        }
        return (Side(label: r.to, child: target, api: api), pingMark)
    }

    /// After a hop: the guest prints heartbeats and acknowledges writes on the new side, answers
    /// pings again, and the disk holds every acknowledged write.
    func check(_ dst: Side, pingMark: Int, result r: inout HopResult) throws {
        // Line 0 may be the end of a line the source began; a later one was printed here.
        _ = try dst.child.waitForLine("^HEARTBEAT ", timeout: 30, from: 1)
        _ = try dst.child.waitForLine("^SEQ ", timeout: 30, from: 1)
        dst.cursor.advance(&console, to: dst.child.stdout)
        if let p = pinger {
            let highest = ping.highest
            var from = pingMark
            while true {
                let m = try p.waitForLine("icmp_seq=([0-9]+)", timeout: 30, from: from, failPattern: nil)
                if let s = m.groups[1].flatMap({ Int($0) }), s > highest { break }
                from = m.index + 1
            }
        }
        r.problems += try disk.check(lastSeq: console.lastSeq, final: false)
    }

    func reportPath(_ n: Int) -> String {
        if let dir = o.reports { return (dir as NSString).appendingPathComponent("hop-\(n).json") }
        return rig.path("hop-\(n).json")
    }

    /// Stops the pinger and the guest, then checks the whole console and the disk once more,
    /// now exactly: nothing newer than the last acknowledged write (and one more) is on it.
    func finish() {
        if let p = pinger {
            p.signal(SIGINT)
            _ = p.wait(timeout: 10)
            pingCursor.advance(&ping, to: p.stdout)
            (summary.pingsSent, summary.pingsLost) = ping.totals
            summary.duplicates = ping.duplicates
        }
        guard let side = current else { return }
        side.child.signal(SIGTERM)
        do {
            let end = try side.child.waitForExit(timeout: 30)
            if end.termination != .exited(0) { summary.problems.append("the last side ended with \(end.termination)") }
            side.cursor.advance(&console, to: side.child.stdout)
            summary.problems += console.problems.dropFirst(problemsSeen)
            summary.problems += try disk.check(lastSeq: console.lastSeq, final: true).map { "final check: \($0)" }
        } catch {
            summary.problems.append("\(error)")
        }
        summary.writes = console.lastSeq
        summary.passes = console.lastPass
    }
}
