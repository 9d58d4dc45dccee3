import Glibc

/// Lets go of the code only start-up ran. Parsing options, the runtime's first type lookups and
/// the libraries' initialisers touch code spread over the whole binary, and the kernel maps it
/// 64 KiB around each first touch: ~6 MiB of swiftvmm's text stays mapped for the guest's whole
/// life, while running it needs ~1 MiB. Once the guest runs, this drops the page-table entries
/// of every private executable file mapping (MADV_DONTNEED): the pages are clean and stay in the
/// page cache, so whatever runs next faults its code back in (a minor fault), and the rest is no
/// longer part of the process. A mapping with a private copy of any page — a debugger's
/// breakpoint, a uprobe — is left alone: dropping it would drop the probe.
public enum StartupText {
    /// Drops the mappings' pages; returns how many bytes of mappings it covered (0 when
    /// /proc/self/smaps cannot be read — nothing else changes then).
    @discardableResult
    public static func release() -> Int {
        guard let maps = readWholeFile("/proc/self/smaps") else { return 0 }
        var covered = 0
        for r in executableFileRanges(maps) {
            guard let p = UnsafeMutableRawPointer(bitPattern: r.start) else { continue }
            if madvise(p, Int(r.end - r.start), MADV_DONTNEED) == 0 { covered += Int(r.end - r.start) }
        }
        return covered
    }

    /// The ranges of `smaps` (the text of /proc/PID/smaps) that are private, executable, not
    /// writable, backed by a file and hold no anonymous (privately copied) page.
    static func executableFileRanges(_ smaps: String) -> [(start: UInt, end: UInt)] {
        var out: [(start: UInt, end: UInt)] = []
        var candidate: (start: UInt, end: UInt)?
        var copied = false
        func finish() {
            if let c = candidate, !copied { out.append(c) }
            candidate = nil
            copied = false
        }
        for line in smaps.split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            if f.count >= 5, f[0].contains("-"), !f[0].hasSuffix(":") {
                finish()
                guard f.count == 6, f[1] == "r-xp", f[5].drop(while: { $0 == " " }).hasPrefix("/") else { continue }
                let bounds = f[0].split(separator: "-")
                guard bounds.count == 2, let a = UInt(bounds[0], radix: 16), let b = UInt(bounds[1], radix: 16), b > a else { continue }
                candidate = (a, b)
            } else if candidate != nil, f.first == "Anonymous:", f.count >= 2, f[1] != "0" {
                copied = true
            }
        }
        finish()
        return out
    }
}
