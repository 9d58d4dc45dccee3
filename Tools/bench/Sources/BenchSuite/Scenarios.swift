import Foundation
import Glibc
import Harness

/// One benchmark: what it measures, and one run of it on one VMM.
public protocol Scenario: Sendable {
    var name: String { get }
    var title: String { get }
    var metrics: [Metric] { get }
    var notes: [String] { get }
    /// Not one of the seven scenarios.
    var extra: Bool { get }
    /// Run by `--quick` (extras that take long are not).
    var inQuick: Bool { get }
    func params(_ env: BenchEnvironment) -> JSONObject
    /// Throws `Skip` when the whole scenario cannot run here.
    func precheck(_ env: BenchEnvironment) throws
    /// One run on `side`: the figures (metric keys), plus raw detail under "detail".
    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject
}

extension Scenario {
    public var extra: Bool { false }
    public var inQuick: Bool { true }
    public func precheck(_ env: BenchEnvironment) throws {}
}

/// Every scenario, in the order they run and are reported.
public let allScenarios: [any Scenario] = [
    Startup(), Rss(), MigrateIdle(), MigrateRandom(), MigrateDirty(), MigrateDirtyRandom(), Blk(), Net(), BlkPattern(), MigrateDirtyRaw(),
    MigrateRandomSealed(), MigrateDirtySealed(), MigrateRandomTCP(connections: 1), MigrateRandomTCP(connections: 4),
    SaveSnapshot(), RestoreSnapshot(),
    MigrateDisk(),
    Handover(memory: "256M"), Handover(memory: "4G"), Handover(memory: "16G"),
]

let MiB = 1 << 20
let page = 4096
let netPrefix = "192.0.2"   // TEST-NET-1, only ever inside our own namespace

/// A process's end as the Python runner printed it: the status, or minus the signal.
func rc(_ t: Termination) -> String {
    switch t {
    case .exited(let s): return "\(s)"
    case .signaled(let s): return "-\(s)"
    }
}

// MARK: - 1. startup

struct Startup: Scenario {
    let name = "startup"
    let title = "Start-up: process start to first serial byte, and a whole hello.elf run"
    let metrics = [Metric("first_byte_ms", "process start → first serial byte", "ms", "lower"),
                   Metric("wall_ms", "whole hello.elf run (start → exit)", "ms", "lower")]
    let notes = ["Both start from the spawn (posix_spawn) of the VMM with a 256 MiB guest. QEMU's microvm runs its qboot "
                 + "firmware before the PVH entry; on this host firmware (ring-0/real-mode code) is emulated, "
                 + "so that cost is part of QEMU's figure.",
                 "swiftvmm runs with SWIFTVMM_TRACE_STARTUP set: the end of each start-up phase (main entered, "
                 + "options parsed, machine built with its guest RAM given to KVM, kernel loaded, confined) and its first KVM_RUN "
                 + "are in each run's detail (`main_ms`, `parsed_ms`, …, `first_kvm_run_ms`, ms since the spawn), not figures."]

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("hello.elf"), "memory": .string("256M"), "cmdline": .string("bench")]
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let k = try env.image("hello")
        let argv = env.vmm(side, kernel: k, memory: "256M", cmdline: "bench")
        let c = try bench { try env.start("\(side.rawValue)-hello", argv,
                                          environment: side == .swiftvmm ? ["SWIFTVMM_TRACE_STARTUP": "1"] : [:]) }
        defer { c.kill() }
        let t0 = c.startTime
        let (term, tExit) = try bench { try c.waitForExit(timeout: 60) }
        guard term == .exited(1), c.out.lines.contains(where: { $0.text.hasPrefix("HELLO bench") }) else {
            throw BenchError("hello.elf did not pass (status \(rc(term)), expected 1) \(c.tail())")
        }
        guard let first = c.out.firstByteTime else { throw BenchError("no serial output") }
        var r: JSONObject = ["first_byte_ms": .double((first - t0) * 1000), "wall_ms": .double((tExit - t0) * 1000)]
        // "swiftvmm: first KVM_RUN at monotonic N ns" (the same clock as t0).
        var detail: JSONObject = [:]
        if let line = c.err.lines.first(where: { $0.text.contains("first KVM_RUN at monotonic") }),
           let ns = line.text.split(separator: " ").dropLast().last.flatMap({ Double($0) }) {
            detail["first_kvm_run_ms"] = .double((ns / 1e9 - t0) * 1000)
        }
        // "swiftvmm: startup main 0.00 · parsed 2.61 · … ms (main at monotonic N ns)": each
        // phase's end as ms since the spawn.
        if let line = c.err.lines.first(where: { $0.text.hasPrefix("swiftvmm: startup ") })?.text,
           let at = line.range(of: "(main at monotonic "),
           let mainNs = line[at.upperBound...].split(separator: " ").first.flatMap({ Double($0) }) {
            let main = (mainNs / 1e9 - t0) * 1000
            let list = line.dropFirst("swiftvmm: startup ".count).prefix { $0 != "(" }
            for phase in list.split(separator: "·") {
                let words = phase.split(separator: " ")
                if words.count >= 2, let ms = Double(words[1]) { detail["\(words[0])_ms"] = .double(main + ms) }
            }
        }
        if !detail.isEmpty { r["detail"] = .object(detail) }
        return r
    }
}

// MARK: - 2. rss

struct Rss: Scenario {
    let name = "rss"
    let title = "Resident memory of the VMM beyond the guest pages it touched"
    let metrics = [Metric("overhead_MiB", "VmRSS − guest-touched bytes", "MiB", "lower"),
                   Metric("vmrss_MiB", "VmRSS while memtouch runs", "MiB", "lower")]
    let notes = ["Guest: memtouch.elf size=64M in a 256 MiB VM, read after two heartbeats (every page of the "
                 + "region written at least once). Overhead = VmRSS − 64 MiB; it still includes the guest's "
                 + "own image, page tables and stacks (< 1 MiB) and, for QEMU, its firmware copy in guest RAM."]

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("memtouch.elf"), "memory": .string("256M"), "touched": .string("64M")]
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let k = try env.image("memtouch")
        let c = try bench { try env.start("\(side.rawValue)-memtouch",
                                          env.vmm(side, kernel: k, memory: "256M", cmdline: "size=64M passes=0 heartbeat-ms=200")) }
        defer { c.kill() }
        let m = try bench { try c.waitForLine("^MEMTOUCH start=0x[0-9a-f]+ pages=(\\d+)", timeout: 60) }
        let pages = Int(m.groups[1] ?? "") ?? 0
        let h = try bench { try c.waitForLine("^HEARTBEAT", timeout: 60, from: m.index + 1) }
        _ = try bench { try c.waitForLine("^HEARTBEAT", timeout: 60, from: h.index + 1) }
        let st = try procStatus(c.pid)
        let touched = pages * page
        let rss = st["VmRSS"] ?? 0
        func field(_ k: String) -> JSON { st[k].map { .int($0) } ?? .null }
        return ["overhead_MiB": .double(Double(rss - touched) / Double(MiB)), "vmrss_MiB": .double(Double(rss) / Double(MiB)),
                "detail": .object(["touched_bytes": .int(touched), "VmRSS": .int(rss), "RssAnon": field("RssAnon"),
                                   "RssFile": field("RssFile"), "RssShmem": field("RssShmem"), "VmHWM": field("VmHWM")])]
    }
}
