import Foundation
import Glibc
import Harness

/// One benchmark: what it measures, and one run of it on one VMM.
public protocol Scenario: Sendable {
    var name: String { get }
    var title: String { get }
    var metrics: [Metric] { get }
    var notes: [String] { get }
    /// Not one of the issue's seven scenarios.
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
    Startup(), Rss(), MigrateIdle(), MigrateRandom(), MigrateDirty(), Blk(), Net(), BlkPattern(), MigrateDirtyRaw(),
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
                 "swiftvmm runs with SWIFTVMM_TRACE_STARTUP set: the time of its first KVM_RUN is in each run's "
                 + "detail (`first_kvm_run_ms`), not a figure."]

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
        if let line = c.err.lines.first(where: { $0.text.contains("first KVM_RUN at monotonic") }),
           let ns = line.text.split(separator: " ").dropLast().last.flatMap({ Double($0) }) {
            r["detail"] = .object(["first_kvm_run_ms": .double((ns / 1e9 - t0) * 1000)])
        }
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

// MARK: - 3–5. migration

let migrationMetrics = [Metric("total_ms", "total time", "ms", "lower"),
                        Metric("downtime_ms", "downtime", "ms", "lower", "{:.2f}"),
                        Metric("setup_ms", "setup time", "ms", "lower"),
                        Metric("MB_on_wire", "bytes on the wire", "MB", "lower", "{:.2f}"),
                        Metric("rounds", "rounds / dirty-bitmap syncs", "", "lower", "{:.0f}")]

/// Said once in results.md, under migrate-idle.
let migrationNotes = [
    "swiftvmm: figures from `send --report` (`total_ms`, `downtime_ms`, `setup_ms`, `bytes_on_wire`, "
        + "`len(rounds)`). Downtime = source pause → target resume, by both sides' wall clocks (same host). "
        + "Bytes = guest-page bytes after zero-page elision and LZ4 (`--compress lz4`, the default); the "
        + "device-state blob is not included. Rounds count round 0, every pre-copy round and the final "
        + "stop-and-copy round.",
    "QEMU: figures from its own `query-migrate` (`total-time`, `downtime`, `setup-time`, "
        + "`ram.transferred`, `ram.dirty-sync-count`). QEMU's downtime is measured on the source only, "
        + "from vm_stop to the end of the completion phase (it does not include the destination loading "
        + "device state and resuming). Its rounds figure is the number of dirty-bitmap syncs (the setup "
        + "sync + one per iteration + the final one). `max-bandwidth` is raised to 10 GiB/s (QEMU's "
        + "default caps pre-copy at 128 MiB/s); no compression, no multifd (QEMU defaults).",
    "Both use a UNIX socket on this host, a 50 ms downtime target and auto-converge "
        + "(swiftvmm: on by default; QEMU: the `auto-converge` capability is switched on).",
]

/// The guest a migration scenario moves.
struct MigrationGuest {
    let image: String
    let memory: String
    let cmdline: String
}

protocol MigrationScenario: Scenario {
    func guest(_ env: BenchEnvironment) throws -> MigrationGuest
    /// Seconds before a migration counts as not converged.
    func timeLimit(_ env: BenchEnvironment) -> Int
    /// swiftvmm's `send --compress`.
    var compress: String { get }
}

extension MigrationScenario {
    var compress: String { "lz4" }
    func timeLimit(_ env: BenchEnvironment) -> Int { env.quick ? 30 : 60 }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let g = try guest(env)
        switch side {
        case .swiftvmm: return try migrateSwiftVMM(env, tag: name, guest: g, timeLimit: timeLimit(env), compress: compress)
        case .qemu: return try migrateQEMU(env, tag: name, guest: g, timeLimit: timeLimit(env))
        }
    }
}

/// The guest must go on running on the target: a new HEARTBEAT, no FAIL.
func carriesOn(_ dst: Child) -> (ok: Bool, why: String?) {
    do {
        _ = try dst.waitForLine("^HEARTBEAT", timeout: 10)
        return (true, nil)
    } catch {
        return (false, "\(error)")
    }
}

func migrateSwiftVMM(_ env: BenchEnvironment, tag: String, guest g: MigrationGuest, timeLimit: Int, compress: String) throws -> JSONObject {
    let d = try env.runDirectory("swift-\(tag)")
    let rig = try MigrationRig(swiftvmm: env.swiftvmm, directory: d)
    rig.namePrefix = "swiftvmm-"
    let mig = d.appendingPathComponent("mig.sock").path, rep = d.appendingPathComponent("report.json").path
    var children: [Child] = []
    defer { for c in children.reversed() { c.kill() } }
    let (src, api) = try bench { try rig.source(g.image, cmdline: g.cmdline, memory: g.memory, cpus: 1, name: "bench-src") }
    children.append(src)
    _ = try bench { try src.waitForLine("^HEARTBEAT", timeout: 120) }
    let (dst, _) = try bench { try rig.target(listen: "unix:\(mig)") }
    children.append(dst)
    let send = try bench { try rig.startSend(api, to: "unix:\(mig)", extra: ["--report", rep, "--downtime-ms", "50",
                                                                             "--max-time", "\(timeLimit)", "--compress", compress]) }
    children.append(send)
    let (term, t1) = try bench { try send.waitForExit(timeout: Double(timeLimit + 60)) }
    let wall = (t1 - send.startTime) * 1000
    if term != .exited(0) {
        let err = send.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        if err.contains("did not converge") {
            return ["converged": .int(0), "wall_ms": .double(wall),
                    "detail": .object(["send_stderr": .string(String(err.suffix(600))), "guest_ok": .bool(true)])]
        }
        throw BenchError("swiftvmm send failed (rc=\(rc(term))): \(err.suffix(600)) \(src.tail()) \(dst.tail())")
    }
    let r: JSON
    do { r = try JSON.parse(Data(contentsOf: URL(fileURLWithPath: rep))) } catch {
        throw BenchError("cannot read the send report \(rep): \(error)")
    }
    let (ok, why) = carriesOn(dst)
    let (srcTerm, _) = try bench { try src.waitForExit(timeout: 15) }
    guard ok else { throw BenchError("guest did not carry on after the migration: \(why ?? "")") }
    guard let total = r["total_ms"]?.double, let downtime = r["downtime_ms"]?.double, let bytes = r["bytes_on_wire"]?.double else {
        throw BenchError("the send report lacks total_ms, downtime_ms or bytes_on_wire: \(r.compact.prefix(300))")
    }
    let summary = send.out.lines.map(\.text).joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
    return ["total_ms": .double(total), "downtime_ms": .double(downtime), "setup_ms": r["setup_ms"] ?? .null,
            "MB_on_wire": .double(bytes / 1e6), "rounds": .int(r["rounds"]?.array?.count ?? 0),
            "converged": .int(1), "wall_ms": .double(wall),
            "detail": .object(["report": r, "summary": .string(summary), "source_status": .int(Int(srcTerm.status)),
                               "guest_ok": .bool(ok)])]
}

let qemuMigrateFields = ["transferred", "remaining", "total", "duplicate", "normal", "normal-bytes",
                         "dirty-pages-rate", "mbps", "dirty-sync-count", "pages-per-second"]

func migrateQEMU(_ env: BenchEnvironment, tag: String, guest g: MigrationGuest, timeLimit: Int) throws -> JSONObject {
    let d = try env.runDirectory("qemu-\(tag)")
    let sq = d.appendingPathComponent("src-qmp.sock").path, dq = d.appendingPathComponent("dst-qmp.sock").path
    let mig = d.appendingPathComponent("mig.sock").path
    var children: [Child] = []
    defer { for c in children.reversed() { c.kill() } }
    let src = try bench { try env.start("qemu-source", env.qemuRun(kernel: g.image, memory: g.memory, cmdline: g.cmdline,
                                                                   extra: ["-qmp", "unix:\(sq),server=on,wait=off"])) }
    children.append(src)
    _ = try bench { try src.waitForLine("^HEARTBEAT", timeout: 180) }
    let dst = try bench { try env.start("qemu-target", env.qemuRun(kernel: g.image, memory: g.memory, cmdline: g.cmdline,
                                                                   extra: ["-qmp", "unix:\(dq),server=on,wait=off",
                                                                           "-incoming", "unix:\(mig)"])) }
    children.append(dst)
    try bench { try Paths.waitFor(mig, timeout: 60, child: dst) }
    let sc = try bench { try JSONLinesClient.qmp(path: sq, child: src) }
    try bench {
        try sc.execute("migrate-set-capabilities", ["capabilities": .array([.object([
            "capability": .string("auto-converge"), "state": .bool(!env.options.qemuNoAutoConverge)])])])
        try sc.execute("migrate-set-parameters", ["downtime-limit": .int(50), "max-bandwidth": .int(10 << 30)])
    }
    var samples: [JSON] = []
    let t0 = Monotonic.now()
    try bench { try sc.execute("migrate", ["uri": .string("unix:\(mig)")]) }
    var info: JSON = .null
    var status = ""
    while true {
        info = try bench { try sc.execute("query-migrate") }
        let now = Monotonic.now()
        status = info["status"]?.string ?? ""
        let ram = info["ram"]
        var sample: JSONObject = ["t_ms": .double(((now - t0) * 1000).rounded(places: 1)), "status": info["status"] ?? .null]
        for k in qemuMigrateFields { if let v = ram?[k] { sample[k] = v } }
        sample["expected-downtime"] = info["expected-downtime"] ?? .null
        sample["cpu-throttle-percentage"] = info["cpu-throttle-percentage"] ?? .null
        samples.append(.object(sample))
        if ["completed", "failed", "cancelled"].contains(status) { break }
        if now - t0 > Double(timeLimit) {
            try bench {
                try sc.execute("migrate_cancel")
                for _ in 0..<200 {
                    if ["cancelled", "failed", "completed"].contains(try sc.execute("query-migrate")["status"]?.string ?? "") { break }
                    usleep(50_000)
                }
            }
            return ["converged": .int(0), "wall_ms": .double((now - t0) * 1000),
                    "detail": .object(["qemu_samples": .array(samples), "guest_ok": .bool(true)])]
        }
        usleep(50_000)    // the sampling period of the per-round picture, not a synchronisation
    }
    let t1 = Monotonic.now()
    guard status == "completed" else {
        throw BenchError("QEMU migration \(status): \(info["error-desc"]?.string ?? "") \(src.tail()) \(dst.tail())")
    }
    let (ok, why) = carriesOn(dst)
    guard ok else { throw BenchError("guest did not carry on after the QEMU migration: \(why ?? "")") }
    guard let ram = info["ram"], let transferred = ram["transferred"]?.double else {
        throw BenchError("query-migrate has no ram.transferred: \(info.compact.prefix(300))")
    }
    return ["total_ms": info["total-time"] ?? .null, "downtime_ms": info["downtime"] ?? .null,
            "setup_ms": info["setup-time"] ?? .null, "MB_on_wire": .double(transferred / 1e6),
            "rounds": ram["dirty-sync-count"] ?? .null, "converged": .int(1), "wall_ms": .double((t1 - t0) * 1000),
            "detail": .object(["query_migrate": info, "qemu_samples": .array(samples), "guest_ok": .bool(ok)])]
}

struct MigrateIdle: MigrationScenario {
    let name = "migrate-idle"
    let title = "Migrate an idle 1 GiB guest over a UNIX socket"
    let metrics = migrationMetrics
    let notes = ["Guest: memtouch.elf `idle` (touches no memory; spins in ring 3 and prints a heartbeat "
                 + "every 500 ms). The vCPU is idle for memory, not for the CPU: it leaves the guest only to print."]
        + migrationNotes
    let cmdline = "idle heartbeat-ms=500"

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("memtouch.elf"), "memory": .string("1G"), "cmdline": .string(cmdline),
         "downtime_target_ms": .int(50), "transport": .string("unix")]
    }

    func guest(_ env: BenchEnvironment) throws -> MigrationGuest {
        MigrationGuest(image: try env.image("memtouch"), memory: "1G", cmdline: cmdline)
    }
}

struct MigrateRandom: MigrationScenario {
    let name = "migrate-random"
    let title = "Migrate a 1 GiB guest whose memory holds incompressible data"
    let metrics = migrationMetrics
    let notes = ["Guest: memtouch.elf `fill=random` over its largest free RAM range (all RAM but ~1.2 MiB): "
                 + "an xorshift64 pattern written once, then idle, re-verified word by word at every "
                 + "heartbeat — the post-migration check. --quick uses a 256 MiB guest."] + migrationNotes
    let cmdline = "fill=random heartbeat-ms=1000"

    func memory(_ env: BenchEnvironment) -> String { env.quick ? "256M" : "1G" }

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["memory": .string(memory(env)), "downtime_target_ms": .int(50), "transport": .string("unix"),
         "image": .string("memtouch.elf"), "cmdline": .string(cmdline), "method": .string("memtouch fill=random")]
    }

    func guest(_ env: BenchEnvironment) throws -> MigrationGuest {
        MigrationGuest(image: try env.image("memtouch"), memory: memory(env), cmdline: cmdline)
    }
}

let dirtyNote = "Guest: memtouch.elf size=256M in a 1 GiB VM, rewriting every page of the region in a "
    + "ring-3 loop. A run that has not completed after the time limit (swiftvmm `--max-time`, "
    + "QEMU `migrate_cancel`) counts as not converged and is left out of the time figures."

struct MigrateDirty: MigrationScenario {
    let name = "migrate-dirty"
    let title = "Migrate while memtouch dirties 256 MiB at full speed (50 ms downtime target)"
    let metrics = migrationMetrics + [Metric("converged", "converged (share of runs)", "", "higher", "{:.2f}")]
    let notes = [dirtyNote] + migrationNotes
    let cmdline = "size=256M passes=0 heartbeat-ms=500"

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("memtouch.elf"), "memory": .string("1G"), "cmdline": .string(cmdline),
         "downtime_target_ms": .int(50), "transport": .string("unix"), "time_limit_s": .int(timeLimit(env))]
    }

    func guest(_ env: BenchEnvironment) throws -> MigrationGuest {
        MigrationGuest(image: try env.image("memtouch"), memory: "1G", cmdline: cmdline)
    }
}

struct MigrateDirtyRaw: MigrationScenario {
    let name = "migrate-dirty-raw"
    let extra = true
    let inQuick = false
    let compress = "none"
    let title = "migrate-dirty with swiftvmm's compression off (`send --compress none`), like QEMU's default"
    let metrics = MigrateDirty().metrics
    let notes = ["Not one of the issue's scenarios. memtouch pages hold one counter and zeros, so LZ4 shrinks "
                 + "them ~250×: with compression the link is never the limit and swiftvmm's rounds are short. "
                 + "Here both sides move raw 4 KiB pages, so the pre-copy rate and auto-converge decide.", dirtyNote]

    func timeLimit(_ env: BenchEnvironment) -> Int { env.quick ? 60 : 90 }

    func params(_ env: BenchEnvironment) -> JSONObject {
        var p = MigrateDirty().params(env)
        p["time_limit_s"] = .int(timeLimit(env))
        p["swiftvmm_compress"] = .string("none")
        return p
    }

    func guest(_ env: BenchEnvironment) throws -> MigrationGuest { try MigrateDirty().guest(env) }
}

// MARK: - 6. blk

/// The VMM options that give the guest a virtio-blk disk, and the prefix its command line needs.
func diskArguments(_ side: Side, _ disk: String) -> (args: [String], prefix: String) {
    switch side {
    case .swiftvmm: return (["--disk", "vol=bench,path=\(disk)"], "")
    case .qemu: return (["-global", "virtio-mmio.force-legacy=false", "-drive", "id=d0,file=\(disk),format=raw,if=none",
                         "-device", "virtio-blk-device,drive=d0"], "probe ")
    }
}

/// A sparse file of `bytes`.
func sparseFile(_ path: String, bytes: Int) throws {
    guard FileManager.default.createFile(atPath: path, contents: nil), truncate(path, off_t(bytes)) == 0 else {
        throw BenchError("cannot create \(path): \(String(cString: strerror(errno)))")
    }
}

struct Blk: Scenario {
    let name = "blk"
    let title = "virtio-blk: sequential 1 MiB writes (MB/s) and 4 KiB random reads (IOPS)"
    let metrics = [Metric("seq_write_MBps", "sequential 1 MiB writes", "MB/s", "higher"),
                   Metric("rand_read_iops", "4 KiB random reads", "IOPS", "higher", "{:.0f}")]
    let notes = ["Needs a benchmark mode in blktest.elf: `bench=seqwrite bs=1M size=N` and "
                 + "`bench=randread bs=4K count=N`, each printing `BENCH <name> bytes=<n> ops=<n> ns=<n>` "
                 + "(guest TSC time). Disk: a sparse raw file on the host's /tmp; QEMU -drive cache=writeback "
                 + "(its default)."]

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("blktest.elf"), "memory": .string("256M"), "disk": .string("256M sparse raw file")]
    }

    func precheck(_ env: BenchEnvironment) throws {
        let image = (try? Data(contentsOf: URL(fileURLWithPath: Paths.guest("blktest.elf")))) ?? Data()
        if image.range(of: Data("BENCH".utf8)) == nil {
            throw Skip("blktest.elf has no benchmark mode (`bench=seqwrite|randread` printing "
                       + "`BENCH <name> bytes= ops= ns=`) — see blk-pattern for a proxy figure")
        }
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let d = try env.runDirectory("\(side.rawValue)-blk")
        let disk = d.appendingPathComponent("disk.img").path
        try sparseFile(disk, bytes: 256 * MiB)
        var out: JSONObject = [:]
        for (mode, cmd) in [("seqwrite", "bench=seqwrite bs=1M size=192M"), ("randread", "bench=randread bs=4K count=20000")] {
            let (dev, prefix) = diskArguments(side, disk)
            let k = try env.image("blktest")
            let c = try bench { try env.start("\(side.rawValue)-blktest-\(mode)",
                                              env.vmm(side, kernel: k, memory: "256M", cmdline: prefix + cmd, swiftExtra: dev, qemuExtra: dev)) }
            defer { c.kill() }
            let m = try bench { try c.waitForLine("^BENCH (\\w+) .*bytes=(\\d+) ops=(\\d+) ns=(\\d+)", timeout: 180) }
            let bytes = Double(m.groups[2] ?? "") ?? 0, ops = Double(m.groups[3] ?? "") ?? 0, ns = Double(m.groups[4] ?? "") ?? 0
            guard ns > 0 else { throw BenchError("blktest reported no time: \(m.text)") }
            if mode == "seqwrite" { out["seq_write_MBps"] = .double(bytes / (ns / 1e9) / 1e6) }
            else { out["rand_read_iops"] = .double(ops / (ns / 1e9)) }
        }
        return out
    }
}

struct BlkPattern: Scenario {
    let name = "blk-pattern"
    let extra = true
    let title = "virtio-blk proxy: blktest.elf pattern write + flush + read-verify of 64 MiB"
    let metrics = [Metric("MBps", "(64 MiB written + 64 MiB read) / time", "MB/s", "higher"),
                   Metric("time_ms", "BLK line → PASS line", "ms", "lower")]
    let notes = ["Not one of the issue's figures: the whole pattern path. "
                 + "blktest.elf blocks=16384 (4 KiB blocks, 32 per request = 128 KiB requests) writes, "
                 + "FLUSHes and reads back 64 MiB, verifying each block in ring 3. Time = host timestamps of "
                 + "the serial `BLK capacity=` and `PASS blocks=` lines; fresh sparse raw file per run."]

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("blktest.elf"), "memory": .string("256M"), "cmdline": .string("blocks=16384"),
         "disk": .string("128M sparse raw file")]
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let d = try env.runDirectory("\(side.rawValue)-blkpat")
        let disk = d.appendingPathComponent("disk.img").path
        try sparseFile(disk, bytes: 128 * MiB)
        let (dev, prefix) = diskArguments(side, disk)
        let k = try env.image("blktest")
        let c = try bench { try env.start("\(side.rawValue)-blktest",
                                          env.vmm(side, kernel: k, memory: "256M", cmdline: prefix + "blocks=16384",
                                                  swiftExtra: dev, qemuExtra: dev)) }
        defer { c.kill() }
        let a: OutputLog.LineMatch
        do { a = try bench { try c.waitForLine("^BLK capacity=", timeout: 60) } } catch let e as BenchError {
            if side == .swiftvmm && e.description.contains("no virtio device") {
                throw Skip("swiftvmm's virtio-blk is not usable yet: \(e)")
            }
            throw e
        }
        let b = try bench { try c.waitForLine("^PASS blocks=16384", timeout: 300, from: a.index + 1) }
        let (term, _) = try bench { try c.waitForExit(timeout: 30) }
        guard term == .exited(1) else { throw BenchError("blktest exit status \(rc(term)) (expected 1) \(c.tail())") }
        let dt = b.time - a.time
        return ["MBps": .double(Double(2 * 64 * MiB) / dt / 1e6), "time_ms": .double(dt * 1000)]
    }
}

// MARK: - 7. net

struct Net: Scenario {
    let name = "net"
    let title = "virtio-net: UDP echo round trips per second (one request in flight)"
    let metrics = [Metric("round_trips_per_s", "UDP echo round trips", "1/s", "higher", "{:.0f}"),
                   Metric("rtt_us_median", "median round-trip time", "µs", "lower")]
    let notes = ["netecho.elf (polled virtio-net driver in ring 3) in a private network namespace: TAP "
                 + "192.0.2.1/24 on the host side, guest 192.0.2.2; a Python client in the namespace sends "
                 + "64-byte UDP datagrams to port 7 one at a time (Tools/bench/udpecho.py). QEMU: "
                 + "-netdev tap (no vhost), virtio-net-device on microvm's virtio-mmio."]

    func seconds(_ env: BenchEnvironment) -> Int { env.quick ? 3 : 5 }

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("netecho.elf"), "memory": .string("256M"), "payload_bytes": .int(64), "seconds": .int(seconds(env))]
    }

    func precheck(_ env: BenchEnvironment) throws {
        if geteuid() != 0 { throw Skip("needs root for network namespaces and TAP devices") }
        if !FileManager.default.fileExists(atPath: "/dev/net/tun") { throw Skip("/dev/net/tun is missing") }
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let k = try env.image("netecho")
        let ns = try bench { try TestNetwork(prefix: "swvmm-bench-\(getpid())") }
        defer { ns.delete() }
        let cmd = "ip=\(netPrefix).2 quiet"
        let argv = side == .swiftvmm
            ? env.swiftRun(kernel: k, memory: "256M", cmdline: cmd, extra: ["--net", "tap=\(ns.tap)"])
            : env.qemuRun(kernel: k, memory: "256M", cmdline: "probe " + cmd, extra: [
                "-global", "virtio-mmio.force-legacy=false",
                "-netdev", "tap,id=n0,ifname=\(ns.tap),script=no,downscript=no",
                "-device", "virtio-net-device,netdev=n0"])
        let c = try bench { try env.start("\(side.rawValue)-netecho", ns.command(argv)) }
        defer { c.kill() }
        do { _ = try bench { try c.waitForLine("^NET UP", timeout: 60) } } catch let e as BenchError {
            if side == .swiftvmm { throw Skip("swiftvmm's virtio-net did not come up: \(e)") }
            throw e
        }
        let secs = seconds(env)
        // The python3 `#!/usr/bin/env python3` found for the Python runner.
        let python = which("python3") ?? "/usr/bin/python3"
        let script = Paths.root.appendingPathComponent("Tools/bench/udpecho.py").path
        let client = try bench { try env.start("udpecho", ns.command([python, script, "--host", "\(netPrefix).2",
                                                                      "--seconds", "\(secs)", "--size", "64"])) }
        defer { client.kill() }
        guard client.wait(timeout: Double(secs + 60)) != nil else {
            throw BenchError("udpecho client did not finish within \(secs + 60) s \(client.tail())")
        }
        let last = client.out.lines.last(where: { !$0.text.trimmingCharacters(in: .whitespaces).isEmpty })?.text ?? ""
        guard let r = try? JSON.parse(last), r.object != nil else {
            throw BenchError("udpecho client failed (rc=\(client.termination.map(rc) ?? "?")): \(client.stderr.suffix(400)) \(c.tail())")
        }
        if let e = r["error"] {
            let why = e.string ?? e.compact
            if side == .swiftvmm { throw Skip("swiftvmm's virtio-net does not echo: \(why) \(c.tail())") }
            throw BenchError("\(why) \(c.tail())")
        }
        return ["round_trips_per_s": r["round_trips_per_s"] ?? .null, "rtt_us_median": r["rtt_us_median"] ?? .null, "detail": r]
    }
}
