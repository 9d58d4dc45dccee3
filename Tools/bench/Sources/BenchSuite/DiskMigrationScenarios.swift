import Foundation
import Glibc
import Harness

// MARK: - migrate-disk

/// A migration that carries the guest's disk: swiftvmm `send --copy-storage` against QEMU 7.2's
/// block migration (`migrate` with `blk: true`), a 1 GiB raw image with 256 MiB written, once
/// with the guest idle on disk and once with it writing all the time.
struct MigrateDisk: Scenario {
    let name = "migrate-disk"
    let title = "Migrate a guest with its 1 GiB disk (256 MiB written) to a host without shared storage"
    let metrics = [Metric("idle_total_ms", "disk idle: total time", "ms", "lower"),
                   Metric("idle_downtime_ms", "disk idle: downtime", "ms", "lower", "{:.2f}"),
                   Metric("idle_disk_MB", "disk idle: disk bytes on the wire", "MB", "lower", "{:.1f}"),
                   Metric("write_total_ms", "disk written: total time", "ms", "lower"),
                   Metric("write_downtime_ms", "disk written: downtime", "ms", "lower", "{:.2f}"),
                   Metric("write_disk_MB", "disk written: disk bytes on the wire", "MB", "lower", "{:.1f}")]
    let notes = ["Disk: a sparse 1 GiB raw file with 256 MiB of random (incompressible) data at 512 MiB; the target "
                 + "gets an empty file (swiftvmm: `recv --disk vol=bench,path=P,copy` creates it; QEMU: a sparse "
                 + "1 GiB file behind `-drive`). Guest memory 256 MiB.",
                 "Idle: memtouch.elf `idle` (the disk is attached and never touched). Written: blktest.elf `loop` "
                 + "over the first 64 MiB, one 4 KiB write and a serial line per write, all the time (its rate is "
                 + "bounded by the serial port, a few hundred writes per second here, not by the disk).",
                 "swiftvmm: `send --copy-storage` figures from `--report` (`disk_bytes_on_wire`). QEMU 7.2: `migrate` "
                 + "with `blk: true` (block migration, deprecated upstream but present in 7.2); figures from "
                 + "`query-migrate` (`disk.transferred`). Both: UNIX socket, 50 ms downtime target, auto-converge, "
                 + "QEMU max-bandwidth 10 GiB/s."]

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["disk": .string("1 GiB sparse raw, 256 MiB random written"), "memory": .string("256M"),
         "idle": .string("memtouch.elf idle"), "writing": .string("blktest.elf loop blocks=16384"),
         "downtime_target_ms": .int(50), "transport": .string("unix")]
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        var out: JSONObject = [:]
        var detail: JSONObject = [:]
        for (tag, image, cmdline, alive) in [("idle", "memtouch", "idle heartbeat-ms=500", "^HEARTBEAT"),
                                             ("write", "blktest", "loop blocks=16384", "^SEQ")] {
            let d = try env.runDirectory("\(side.rawValue)-migrate-disk-\(tag)")
            let src = d.appendingPathComponent("source.img").path, dst = d.appendingPathComponent("target.img").path
            try sparseFile(src, bytes: 1024 * MiB)
            let fill = sh("head -c \(256 * MiB) /dev/urandom | dd of='\(src)' bs=1M seek=512 conv=notrunc status=none")
            guard fill.status == 0 else { throw BenchError("cannot write the disk image: \(fill.output)") }
            let k = try env.image(image)
            let r = side == .swiftvmm
                ? try diskMigrationSwiftVMM(env, dir: d, kernel: k, cmdline: cmdline, alive: alive, source: src, target: dst)
                : try diskMigrationQEMU(env, dir: d, kernel: k, cmdline: (image == "blktest" ? "probe " : "") + cmdline,
                                        alive: alive, source: src, target: dst)
            for key in ["total_ms", "downtime_ms", "disk_MB"] { out["\(tag)_\(key)"] = r[key] ?? .null }
            detail[tag] = r["detail"] ?? .null
        }
        out["detail"] = .object(detail)
        return out
    }
}

func diskMigrationSwiftVMM(_ env: BenchEnvironment, dir d: URL, kernel: String, cmdline: String, alive: String,
                           source: String, target: String) throws -> JSONObject {
    let rig = try MigrationRig(swiftvmm: env.swiftvmm, directory: d)
    rig.namePrefix = "swiftvmm-"
    let mig = d.appendingPathComponent("mig.sock").path, rep = d.appendingPathComponent("report.json").path
    var children: [Child] = []
    defer { for c in children.reversed() { c.kill() } }
    let (src, api) = try bench { try rig.source(kernel, cmdline: cmdline, memory: "256M", extra: ["--disk", "vol=bench,path=\(source)"],
                                                name: "bench-disk-src") }
    children.append(src)
    _ = try bench { try src.waitForLine(alive, timeout: 120) }
    let (dst, _) = try bench { try rig.target(listen: "unix:\(mig)", extra: ["--disk", "vol=bench,path=\(target),copy"]) }
    children.append(dst)
    let send = try bench { try rig.startSend(api, to: "unix:\(mig)", extra: ["--copy-storage", "--report", rep, "--downtime-ms", "50",
                                                                             "--max-time", "120"]) }
    children.append(send)
    let (term, _) = try bench { try send.waitForExit(timeout: 180) }
    guard term == .exited(0) else { throw BenchError("swiftvmm send --copy-storage failed (rc=\(rc(term))): \(send.stderr.suffix(600))") }
    let r = try JSON.parse(Data(contentsOf: URL(fileURLWithPath: rep)))
    _ = try bench { try dst.waitForLine(alive, timeout: 30) }
    guard let total = r["total_ms"]?.double, let downtime = r["downtime_ms"]?.double, let disk = r["disk_bytes_on_wire"]?.double else {
        throw BenchError("the send report lacks total_ms, downtime_ms or disk_bytes_on_wire: \(r.compact.prefix(300))")
    }
    return ["total_ms": .double(total), "downtime_ms": .double(downtime), "disk_MB": .double(disk / 1e6),
            "detail": .object(["report": r, "summary": .string(send.stdout.trimmingCharacters(in: .whitespacesAndNewlines))])]
}

func diskMigrationQEMU(_ env: BenchEnvironment, dir d: URL, kernel: String, cmdline: String, alive: String,
                       source: String, target: String) throws -> JSONObject {
    let sq = d.appendingPathComponent("src-qmp.sock").path, dq = d.appendingPathComponent("dst-qmp.sock").path
    let mig = d.appendingPathComponent("mig.sock").path
    try sparseFile(target, bytes: 1024 * MiB)
    var children: [Child] = []
    defer { for c in children.reversed() { c.kill() } }
    let src = try bench { try env.start("qemu-disk-source", env.qemuRun(kernel: kernel, memory: "256M", cmdline: cmdline,
                                                                        extra: diskArguments(.qemu, source).args + ["-qmp", "unix:\(sq),server=on,wait=off"])) }
    children.append(src)
    _ = try bench { try src.waitForLine(alive, timeout: 180) }
    let dst = try bench { try env.start("qemu-disk-target", env.qemuRun(kernel: kernel, memory: "256M", cmdline: cmdline,
                                                                        extra: diskArguments(.qemu, target).args
                                                                            + ["-qmp", "unix:\(dq),server=on,wait=off", "-incoming", "unix:\(mig)"])) }
    children.append(dst)
    try bench { try Paths.waitFor(mig, timeout: 60, child: dst) }
    let sc = try bench { try JSONLinesClient.qmp(path: sq, child: src) }
    try bench {
        try sc.execute("migrate-set-capabilities", ["capabilities": .array([.object([
            "capability": .string("auto-converge"), "state": .bool(true)])])])
        try sc.execute("migrate-set-parameters", ["downtime-limit": .int(50), "max-bandwidth": .int(10 << 30)])
    }
    let t0 = Monotonic.now()
    try bench { try sc.execute("migrate", ["uri": .string("unix:\(mig)"), "blk": .bool(true)]) }
    // `query-migrate` shows `disk` only while block migration runs: keep the last seen.
    var disk: JSON = .null
    var info: JSON = .null
    while true {
        info = try bench { try sc.execute("query-migrate") }
        if let dd = info["disk"] { disk = dd }
        if ["completed", "failed", "cancelled"].contains(info["status"]?.string ?? "") { break }
        if Monotonic.now() - t0 > 180 { _ = try? sc.execute("migrate_cancel"); break }
        usleep(20_000)
    }
    guard info["status"]?.string == "completed" else {
        throw BenchError("QEMU block migration \(info["status"]?.string ?? "?"): \(info["error-desc"]?.string ?? "") \(src.tail()) \(dst.tail())")
    }
    _ = try bench { try dst.waitForLine(alive, timeout: 30) }
    return ["total_ms": info["total-time"] ?? .null, "downtime_ms": info["downtime"] ?? .null,
            "disk_MB": .double((disk["transferred"]?.double ?? 0) / 1e6),
            "detail": .object(["query_migrate": info, "last_disk": disk])]
}
