import Foundation
import Testing
@testable import Machine

/// Letting go of start-up code once the guest runs: which mappings, and that the process goes on.
@Suite("start-up code released")
struct StartupTextTests {
    @Test("only private, executable, file-backed mappings without a private copy of a page are chosen")
    func choosesExecutableFileMappings() {
        func mapping(_ header: String, anonymous: Int = 0) -> String {
            header + "\nSize:              1024 kB\nRss:                512 kB\nAnonymous:      \(anonymous) kB\nVmFlags: rd ex mr mw me\n"
        }
        let smaps = [
            mapping("00400000-01817000 r-xp 00000000 fe:00 1234                               /usr/bin/swiftvmm"),
            mapping("01818000-03cbf000 rw-p 01417000 fe:00 1234                               /usr/bin/swiftvmm", anonymous: 108),
            mapping("7f00a0000000-7f00a0100000 r--p 00000000 fe:00 77                         /usr/lib/libc.so.6"),
            mapping("7f00a0100000-7f00a0280000 r-xp 00100000 fe:00 77                         /usr/lib/libc.so.6"),
            mapping("7f00a0300000-7f00a0380000 r-xp 00000000 fe:00 78                         /usr/lib/libprobed.so", anonymous: 4),
            mapping("7f00a1000000-7f00a1001000 r-xp 00000000 00:00 0"),
            mapping("7f00a2000000-7f00a2002000 r-xp 00000000 00:00 0                          [vdso]"),
            mapping("7f00a3000000-7f00a3010000 r-xs 00000000 00:05 9                          /memfd:x (deleted)"),
            mapping("7f00a4000000-7f00a4010000 rwxp 00000000 fe:00 88                         /tmp/jit"),
            "garbage line\n",
        ].joined()
        let ranges = StartupText.executableFileRanges(smaps)
        #expect(ranges.map(\.start) == [0x40_0000, 0x7f00_a010_0000])
        #expect(ranges.map(\.end) == [0x181_7000, 0x7f00_a028_0000])
    }

    @Test("released code is unmapped and faults back in as it runs")
    func releaseDropsResidentTextAndCodeStillRuns() throws {
        let before = residentExecutableKiB()
        #expect(before > 0)
        let covered = StartupText.release()
        #expect(covered > 0)
        // Code from every corner of the process runs on: the runtime, Foundation, this test.
        let text = String(decoding: Array("still running".utf8), as: UTF8.self)
        #expect(text.uppercased() == "STILL RUNNING")
        #expect(residentExecutableKiB() < before)
    }

    /// The resident kibibytes of this process's executable file mappings (from smaps).
    private func residentExecutableKiB() -> Int {
        guard let smaps = try? String(contentsOfFile: "/proc/self/smaps", encoding: .utf8) else { return 0 }
        var total = 0
        var counting = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = fields.first, first.contains("-"), fields.count >= 2 {
                counting = fields[1] == "r-xp" && fields.count >= 6 && fields[5].hasPrefix("/")
            } else if counting, fields.first == "Rss:", fields.count >= 2, let kib = Int(fields[1]) {
                total += kib
            }
        }
        return total
    }
}
