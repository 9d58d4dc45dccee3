import Foundation
import Harness
import SoakSuite
import Testing

/// The soak run's checks, without a VMM: they must accept a healthy guest and name each way
/// one can go wrong.
@Suite("soak checks: console, disk, pings")
struct SoakSuiteTests {
    @Test("the console continues across sides, a line may straddle the move; SEQ gaps, FAIL lines and stale heartbeats are problems")
    func console() {
        var c = GuestConsole()
        c.feed("NET UP 192.0.2.2 52:54:00:00:00:01\nSEQ 1\nSEQ 2\nHEARTBEAT 1 pass=7 seq=2 pings=3 echoed=0\nSE")
        c.feed("Q 3\nHEARTBEAT 2 pass=9 seq=3 pings=4 echoed=0\n")
        #expect(c.problems.isEmpty, "\(c.problems)")
        #expect(c.lastSeq == 3 && c.lastBeat == 2 && c.lastPass == 9 && c.pings == 4)
        c.feed("SEQ 5\nHEARTBEAT 2 pass=9 seq=4\nFAIL page=3 expected=8 got=7 addr=0x1000\n")
        #expect(c.problems.count == 4, "\(c.problems)")
        #expect(c.problems[0].contains("SEQ 5 after SEQ 3"))
        #expect(c.problems[1].contains("HEARTBEAT 2 after HEARTBEAT 2"))
        #expect(c.problems[2].contains("seq=4"))
        #expect(c.problems[3].contains("FAIL page=3"))
    }

    /// A disk image holding writes 1…`last` of the soak guest (each block its newest write).
    static func image(blocks: Int, last: Int, extra: [Int] = []) throws -> (BlktestImage, URL) {
        let url = try Paths.tempDirectory(prefix: "soak-test").appendingPathComponent("disk.img")
        var data = Data(count: blocks * BlktestImage.blockSize)
        let newest = last >= 1 ? Array(max(1, last - blocks + 1)...last) : []
        for s in newest + extra {
            let b = s % blocks
            data.replaceSubrange(b * BlktestImage.blockSize..<(b + 1) * BlktestImage.blockSize, with: block(b, seq: s))
        }
        try data.write(to: url)
        return (BlktestImage(path: url.path, blocks: blocks), url)
    }

    /// Block `b` with sequence `s` in blktest's format.
    static func block(_ b: Int, seq s: Int) -> Data {
        var w = [UInt64](repeating: 0, count: 512)
        w[0] = BlktestImage.magic
        w[1] = UInt64(b)
        w[2] = UInt64(s)
        w[3] = 4096
        let base = (UInt64(b) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(s) &* 0xC2B2_AE3D_27D4_EB4F)
        for k in 4..<511 { w[k] = base ^ UInt64(k) }
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for x in w.dropLast() { h = (h ^ x) &* 0x100_0000_01B3 }
        w[511] = h
        return w.withUnsafeBytes { Data($0) }
    }

    static func overwrite(_ url: URL, block b: Int, with data: Data) throws {
        let h = try FileHandle(forWritingTo: url)
        defer { try? h.close() }
        try h.seek(toOffset: UInt64(b * BlktestImage.blockSize))
        h.write(data)
    }

    @Test("a disk with every acknowledged write passes, during the run and at the end (one unacknowledged write more is allowed)")
    func diskHealthy() throws {
        let (disk, url) = try Self.image(blocks: 8, last: 21)
        defer { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }
        #expect(try disk.check(lastSeq: 21, final: false).isEmpty)
        #expect(try disk.check(lastSeq: 21, final: true).isEmpty)
        #expect(try disk.check(lastSeq: 15, final: false).isEmpty, "later writes than the console shows are fine while the guest runs")
        try Self.overwrite(url, block: 22 % 8, with: Self.block(22 % 8, seq: 22))
        #expect(try disk.check(lastSeq: 21, final: true).isEmpty)
        let (young, url2) = try Self.image(blocks: 8, last: 3)
        defer { try? FileManager.default.removeItem(at: url2.deletingLastPathComponent()) }
        #expect(try young.check(lastSeq: 3, final: true).isEmpty, "blocks never written are empty")
    }

    @Test("a lost, stale, misplaced, corrupt or never-acknowledged write is named")
    func diskProblems() throws {
        let (disk, url) = try Self.image(blocks: 8, last: 21)
        defer { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }
        try Self.overwrite(url, block: 5, with: Data(count: BlktestImage.blockSize))
        #expect(try disk.check(lastSeq: 21, final: false).contains { $0.contains("block 5: empty, expected seq 21") })
        try Self.overwrite(url, block: 5, with: Self.block(5, seq: 13))
        #expect(try disk.check(lastSeq: 21, final: false).contains { $0.contains("block 5: holds seq 13, expected seq 21") })
        try Self.overwrite(url, block: 5, with: Self.block(5, seq: 22))
        #expect(try disk.check(lastSeq: 21, final: false).contains { $0.contains("belongs to block 6") })
        var bad = Self.block(5, seq: 21)
        bad[100] ^= 1
        try Self.overwrite(url, block: 5, with: bad)
        #expect(try disk.check(lastSeq: 21, final: false).contains { $0.contains("block 5: bad checksum") })
        try Self.overwrite(url, block: 5, with: Self.block(5, seq: 21))
        try Self.overwrite(url, block: 7, with: Self.block(7, seq: 31))
        #expect(try disk.check(lastSeq: 21, final: false).isEmpty)
        #expect(try disk.check(lastSeq: 21, final: true).contains { $0.contains("block 7: holds seq 31") })
    }

    @Test("ping's output gives echoes lost, duplicates and totals; the echo in flight at the end is not lost")
    func ping() {
        let reply = { (s: Int) in "64 bytes from 192.0.2.2: icmp_seq=\(s) ttl=64 time=0.3 ms\n" }
        var p = PingLog("PING 192.0.2.2 (192.0.2.2) 56(84) bytes of data.\n" + reply(1) + reply(2))
        #expect(p.lostSoFar == 0 && p.highest == 2)
        p.feed(reply(5) + "64 bytes from 192.0.2.2: icmp_seq=5 ttl=64 time=0.3 ms (DUP!)\n" + String(reply(6).prefix(20)))
        #expect(p.lostSoFar == 2 && p.duplicates == 1)
        p.feed(String(reply(6).dropFirst(20)) + "\n--- 192.0.2.2 ping statistics ---\n7 packets transmitted, 4 received, +1 duplicates, 42% packet loss, time 300ms\n")
        #expect(p.totals.sent == 6 && p.totals.lost == 2, "\(p.totals)")
        #expect(PingLog(reply(1) + "9 packets transmitted, 1 received\n").totals == (9, 8))
    }

    @Test("the summary's median")
    func median() {
        #expect(SoakSummary.median([]) == nil)
        #expect(SoakSummary.median([3, 1, 2]) == 2)
        #expect(SoakSummary.median([4, 1, 3, 2]) == 2.5)
    }
}
