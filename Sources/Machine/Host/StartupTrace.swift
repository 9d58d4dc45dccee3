import Glibc
import Synchronization

/// The start-up trace benchmarks read: with `SWIFTVMM_TRACE_STARTUP` set, the commands that
/// start a guest mark their phases (`mark`), and at the first guest entry two lines go to
/// stderr — the phases as milliseconds since `main`, and CLOCK_MONOTONIC at the first KVM_RUN:
///
///     swiftvmm: startup main 0.00 · parsed 2.80 · machine 4.05 · loaded 4.26 · confined 4.93 ms (main at monotonic N ns)
///     swiftvmm: first KVM_RUN at monotonic N ns
public enum StartupTrace {
    public static let enabled = getenv("SWIFTVMM_TRACE_STARTUP") != nil
    private static let marks = Mutex<[(String, Int64)]>([])

    /// Records that phase `name` ended now (only while tracing).
    public static func mark(_ name: String) {
        guard enabled else { return }
        let t = now()
        marks.withLock { $0.append((name, t)) }
    }

    static func firstGuestEntry() {
        guard enabled else { return }
        let t = now()
        let phases = marks.withLock { $0 }
        if let start = phases.first?.1 {
            let list = phases.map { "\($0.0) \(millis($0.1 - start))" }.joined(separator: " · ")
            write("swiftvmm: startup \(list) ms (main at monotonic \(start) ns)\n")
        }
        write("swiftvmm: first KVM_RUN at monotonic \(t) ns\n")
    }

    private static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    private static func millis(_ ns: Int64) -> String {
        let hundredths = (ns + 5_000) / 10_000
        let frac = hundredths % 100
        return "\(hundredths / 100).\(frac < 10 ? "0" : "")\(frac)"
    }

    private static func write(_ line: String) {
        var bytes = Array(line.utf8)
        _ = Glibc.write(2, &bytes, bytes.count)
    }
}
