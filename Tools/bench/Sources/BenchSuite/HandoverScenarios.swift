import Foundation
import Glibc
import Harness

// MARK: - local hand-over

let handoverNotes = [
    "Guest: memtouch.elf size=32M rewriting its region at full speed in a guest of the given size; the rest of "
        + "its RAM is never touched. Each run hands the guest over once and, separately, migrates the same guest "
        + "by copying (a fresh guest each time).",
    "swiftvmm hand-over: `run --memory-backend memfd`, `send --local` to a `recv` over a UNIX socket: the guest-RAM "
        + "memfds (and any disk and TAP descriptors) pass with SCM_RIGHTS, only vCPU and device state cross. "
        + "Figures from `send --report` (downtime = source pause → target resume, both sides' wall clocks).",
    "QEMU 7.2 has no cpr-exec/cpr-transfer (they came in 8.2 and 9.2). Its equivalent here is the "
        + "`x-ignore-shared` capability on both sides with guest RAM in a shared `memory-backend-file` on /dev/shm "
        + "(`share=on`, `-machine memory-backend=`) that both processes map: RAM is skipped, devices and vCPUs are "
        + "migrated. Figures from its `query-migrate` (downtime on the source only).",
    "Copying migration: as migrate-dirty (50 ms downtime target, auto-converge; QEMU with max-bandwidth 10 GiB/s).",
]

/// A local hand-over at one guest size, beside the copying migration of the same guest.
struct Handover: Scenario {
    let memory: String
    var name: String { "handover-\(memory)" }
    var title: String { "Local hand-over of a \(memory) guest dirtying 32 MiB, beside its copying migration" }
    let metrics = [Metric("handover_downtime_ms", "hand-over downtime", "ms", "lower", "{:.2f}"),
                   Metric("handover_total_ms", "hand-over total time", "ms", "lower"),
                   Metric("copy_downtime_ms", "copying migration downtime", "ms", "lower", "{:.2f}"),
                   Metric("copy_total_ms", "copying migration total time", "ms", "lower"),
                   Metric("copy_MB_on_wire", "copying migration bytes on the wire", "MB", "lower", "{:.2f}")]
    let notes = handoverNotes
    let extra = true
    var inQuick: Bool { memory == "256M" }
    let cmdline = "size=32M passes=0 heartbeat-ms=500"

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("memtouch.elf"), "memory": .string(memory), "cmdline": .string(cmdline), "transport": .string("unix")]
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let g = MigrationGuest(image: try env.image("memtouch"), memory: memory, cmdline: cmdline)
        let limit = env.quick ? 30 : 60
        let h: JSONObject, c: JSONObject
        switch side {
        case .swiftvmm:
            h = try handOverSwiftVMM(env, guest: g)
            c = try migrateSwiftVMM(env, tag: "copy-\(memory)", guest: g, timeLimit: limit, compress: "lz4")
        case .qemu:
            h = try handOverQEMU(env, guest: g)
            c = try migrateQEMU(env, tag: "copy-\(memory)", guest: g, timeLimit: limit)
        }
        return ["handover_downtime_ms": h["downtime_ms"] ?? .null, "handover_total_ms": h["total_ms"] ?? .null,
                "copy_downtime_ms": c["downtime_ms"] ?? .null, "copy_total_ms": c["total_ms"] ?? .null,
                "copy_MB_on_wire": c["MB_on_wire"] ?? .null,
                "detail": .object(["handover": h["detail"] ?? .null, "copy": c["detail"] ?? .null])]
    }
}

/// `send --local` of a memfd-backed guest; the figures of its report.
func handOverSwiftVMM(_ env: BenchEnvironment, guest g: MigrationGuest) throws -> JSONObject {
    let d = try env.runDirectory("swift-handover-\(g.memory)")
    let rig = try MigrationRig(swiftvmm: env.swiftvmm, directory: d)
    rig.namePrefix = "swiftvmm-"
    let mig = d.appendingPathComponent("mig.sock").path, rep = d.appendingPathComponent("report.json").path
    var children: [Child] = []
    defer { for c in children.reversed() { c.kill() } }
    let (src, api) = try bench { try rig.source(g.image, cmdline: g.cmdline, memory: g.memory, extra: ["--memory-backend", "memfd"],
                                                name: "bench-src") }
    children.append(src)
    _ = try bench { try src.waitForLine("^HEARTBEAT", timeout: 120) }
    let (dst, _) = try bench { try rig.target(listen: "unix:\(mig)") }
    children.append(dst)
    let send = try bench { try rig.startSend(api, to: "unix:\(mig)", extra: ["--local", "--report", rep]) }
    children.append(send)
    let (term, _) = try bench { try send.waitForExit(timeout: 60) }
    guard term == .exited(0) else { throw BenchError("swiftvmm send --local failed (rc=\(rc(term))): \(send.stderr.suffix(600)) \(dst.tail())") }
    let r: JSON
    do { r = try JSON.parse(Data(contentsOf: URL(fileURLWithPath: rep))) } catch { throw BenchError("cannot read \(rep): \(error)") }
    let (ok, why) = carriesOn(dst)
    guard ok else { throw BenchError("guest did not carry on after the hand-over: \(why ?? "")") }
    return ["downtime_ms": r["downtime_ms"] ?? .null, "total_ms": r["total_ms"] ?? .null, "detail": .object(["report": r])]
}

/// QEMU's nearest equivalent: x-ignore-shared over guest RAM in a shared file both processes map.
func handOverQEMU(_ env: BenchEnvironment, guest g: MigrationGuest) throws -> JSONObject {
    let d = try env.runDirectory("qemu-handover-\(g.memory)")
    let sq = d.appendingPathComponent("src-qmp.sock").path, dq = d.appendingPathComponent("dst-qmp.sock").path
    let mig = d.appendingPathComponent("mig.sock").path
    let ramFile = "/dev/shm/swiftvmm-bench-\(getpid())-\(d.lastPathComponent)"
    defer { unlink(ramFile) }
    let shared = ["-object", "memory-backend-file,id=ram,size=\(g.memory),mem-path=\(ramFile),share=on", "-machine", "memory-backend=ram"]
    let ignoreShared: JSON = .array([.object(["capability": .string("x-ignore-shared"), "state": .bool(true)])])
    var children: [Child] = []
    defer { for c in children.reversed() { c.kill() } }
    let src = try bench { try env.start("qemu-source", env.qemuRun(kernel: g.image, memory: g.memory, cmdline: g.cmdline,
                                                                   extra: shared + ["-qmp", "unix:\(sq),server=on,wait=off"])) }
    children.append(src)
    _ = try bench { try src.waitForLine("^HEARTBEAT", timeout: 180) }
    let dst = try bench { try env.start("qemu-target", env.qemuRun(kernel: g.image, memory: g.memory, cmdline: g.cmdline,
                                                                   extra: shared + ["-qmp", "unix:\(dq),server=on,wait=off", "-incoming", "defer"])) }
    children.append(dst)
    try bench { try Paths.waitFor(dq, timeout: 60, child: dst) }
    let dc = try bench { try JSONLinesClient.qmp(path: dq, child: dst) }
    try bench {
        try dc.execute("migrate-set-capabilities", ["capabilities": ignoreShared])
        try dc.execute("migrate-incoming", ["uri": .string("unix:\(mig)")])
    }
    try bench { try Paths.waitFor(mig, timeout: 60, child: dst) }
    let sc = try bench { try JSONLinesClient.qmp(path: sq, child: src) }
    try bench { try sc.execute("migrate-set-capabilities", ["capabilities": ignoreShared]) }
    let t0 = Monotonic.now()
    try bench { try sc.execute("migrate", ["uri": .string("unix:\(mig)")]) }
    let (info, _) = try bench { try pollMigration(sc, since: t0, timeLimit: 60) }
    guard info["status"]?.string == "completed" else {
        throw BenchError("QEMU x-ignore-shared migration \(info["status"]?.string ?? ""): \(info["error-desc"]?.string ?? "") \(dst.tail())")
    }
    let (ok, why) = carriesOn(dst)
    guard ok else { throw BenchError("guest did not carry on after QEMU's x-ignore-shared migration: \(why ?? "")") }
    return ["downtime_ms": info["downtime"] ?? .null, "total_ms": info["total-time"] ?? .null, "detail": .object(["query_migrate": info])]
}
