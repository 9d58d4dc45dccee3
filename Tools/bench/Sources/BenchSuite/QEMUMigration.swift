import Foundation
import Glibc
import Harness

// MARK: - QEMU side of the migration scenarios

let qemuMigrateFields = ["transferred", "remaining", "total", "duplicate", "normal", "normal-bytes",
                         "dirty-pages-rate", "mbps", "dirty-sync-count", "pages-per-second"]

/// Samples `query-migrate` every 50 ms until the migration ends (its last reply) or
/// `timeLimit` passes (then it cancels it, and the reply's status is "timeout").
func pollMigration(_ sc: JSONLinesClient, since t0: Double, timeLimit: Double) throws -> (info: JSON, samples: [JSON]) {
    var samples: [JSON] = []
    while true {
        let info = try sc.execute("query-migrate")
        let now = Monotonic.now()
        let ram = info["ram"]
        var sample: JSONObject = ["t_ms": .double(((now - t0) * 1000).rounded(places: 1)), "status": info["status"] ?? .null]
        for k in qemuMigrateFields { if let v = ram?[k] { sample[k] = v } }
        sample["expected-downtime"] = info["expected-downtime"] ?? .null
        sample["cpu-throttle-percentage"] = info["cpu-throttle-percentage"] ?? .null
        samples.append(.object(sample))
        if ["completed", "failed", "cancelled"].contains(info["status"]?.string ?? "") { return (info, samples) }
        if now - t0 > timeLimit {
            try sc.execute("migrate_cancel")
            for _ in 0..<200 {
                if ["cancelled", "failed", "completed"].contains(try sc.execute("query-migrate")["status"]?.string ?? "") { break }
                usleep(50_000)
            }
            return (.object(["status": .string("timeout")]), samples)
        }
        usleep(50_000)    // the sampling period of the per-round picture, not a synchronisation
    }
}

/// TLS with a pre-shared key (QEMU's tls-creds-psk: a keys.psk of `username:hexkey` lines in `d`):
/// the `-object` arguments of the source and of the target.
func qemuTLS(_ d: URL) throws -> (source: [String], target: [String]) {
    try "qemu:\(benchKeyHex)\n".write(toFile: d.appendingPathComponent("keys.psk").path, atomically: true, encoding: .utf8)
    return (["-object", "tls-creds-psk,id=tls0,endpoint=client,dir=\(d.path),username=qemu"],
            ["-object", "tls-creds-psk,id=tls0,endpoint=server,dir=\(d.path)"])
}

/// The multifd capability and channel count, for either side (nothing without multifd).
func qemuMultifd(_ qmp: JSONLinesClient, _ link: MigrationLink) throws {
    guard link.multifd else { return }
    try qmp.execute("migrate-set-capabilities", ["capabilities": .array([.object([
        "capability": .string("multifd"), "state": .bool(true)])])])
    try qmp.execute("migrate-set-parameters", ["multifd-channels": .int(link.connections)])
}

/// Starts QEMU's destination and returns once it listens on `address`. With TLS or multifd it
/// starts with `-incoming defer`, takes its credentials and channels over QMP, then
/// `migrate-incoming`; otherwise `-incoming address`, ready once its QMP monitor greets (QEMU
/// starts listening before its main loop, which serves the monitor).
func startQEMUTarget(_ env: BenchEnvironment, guest g: MigrationGuest, qmp dq: String, address: String,
                     tls: [String]?, link: MigrationLink) throws -> Child {
    let deferred = tls != nil || link.multifd
    let dst = try bench { try env.start("qemu-target", env.qemuRun(kernel: g.image, memory: g.memory, cmdline: g.cmdline,
                                                                   extra: ["-qmp", "unix:\(dq),server=on,wait=off",
                                                                           "-incoming", deferred ? "defer" : address] + (tls ?? []))) }
    do {
        try bench { try Paths.waitFor(dq, timeout: 60, child: dst) }
        let dc = try bench { try JSONLinesClient.qmp(path: dq, child: dst) }
        if deferred {
            try bench {
                if tls != nil { try dc.execute("migrate-set-parameters", ["tls-creds": .string("tls0")]) }
                try qemuMultifd(dc, link)
                try dc.execute("migrate-incoming", ["uri": .string(address)])
            }
        }
        if let path = link.socketPath(address) { try bench { try Paths.waitFor(path, timeout: 60, child: dst) } }
    } catch {
        dst.kill()
        throw error
    }
    return dst
}

func migrateQEMU(_ env: BenchEnvironment, tag: String, guest g: MigrationGuest, timeLimit: Int, sealed: Bool = false,
                 link: MigrationLink = .unix) throws -> JSONObject {
    let d = try env.runDirectory("qemu-\(tag)")
    let sq = d.appendingPathComponent("src-qmp.sock").path, dq = d.appendingPathComponent("dst-qmp.sock").path
    let mig = link.address(in: d)
    let tls = sealed ? try qemuTLS(d) : nil
    var children: [Child] = []
    defer { for c in children.reversed() { c.kill() } }
    let src = try bench { try env.start("qemu-source", env.qemuRun(kernel: g.image, memory: g.memory, cmdline: g.cmdline,
                                                                   extra: ["-qmp", "unix:\(sq),server=on,wait=off"] + (tls?.source ?? []))) }
    children.append(src)
    _ = try bench { try src.waitForLine("^HEARTBEAT", timeout: 180) }
    let dst = try startQEMUTarget(env, guest: g, qmp: dq, address: mig, tls: tls?.target, link: link)
    children.append(dst)
    let sc = try bench { try JSONLinesClient.qmp(path: sq, child: src) }
    try bench {
        try sc.execute("migrate-set-capabilities", ["capabilities": .array([.object([
            "capability": .string("auto-converge"), "state": .bool(!env.options.qemuNoAutoConverge)])])])
        try sc.execute("migrate-set-parameters", ["downtime-limit": .int(50), "max-bandwidth": .int(10 << 30)])
        if sealed { try sc.execute("migrate-set-parameters", ["tls-creds": .string("tls0")]) }
        try qemuMultifd(sc, link)
    }
    let t0 = Monotonic.now()
    try bench { try sc.execute("migrate", ["uri": .string(mig)]) }
    let (info, samples) = try bench { try pollMigration(sc, since: t0, timeLimit: Double(timeLimit)) }
    let status = info["status"]?.string ?? ""
    if status == "timeout" {
        return ["converged": .int(0), "wall_ms": .double((Monotonic.now() - t0) * 1000),
                "detail": .object(["qemu_samples": .array(samples), "guest_ok": .bool(true)])]
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
