import Foundation
import Glibc
import Harness

// MARK: - save and restore (snapshots)

/// The guest both snapshot scenarios save: 1 GiB, idle but for a 1 MiB memtouch heartbeat.
let snapshotGuest = MigrationGuest(image: "memtouch.elf", memory: "1G", cmdline: "size=1M heartbeat-ms=200 passes=0")

let snapshotNotes = [
    "swiftvmm only: QEMU 7.2's nearest equivalent (migrate to `exec:cat > FILE`, `-incoming exec:cat FILE`) "
        + "streams memory rather than mapping it, and is not measured here.",
    "Guest: memtouch.elf with 1 GiB of RAM touching 1 MiB (an idle guest with a heartbeat). The snapshot goes to the "
        + "run's temporary directory on this host's disk.",
]

/// Boots the snapshot guest, saves it (stopping it) and returns the file and `save`'s figures.
func saveSnapshotGuest(_ env: BenchEnvironment, _ d: URL) throws -> (file: String, figures: JSONObject) {
    let rig = try MigrationRig(swiftvmm: env.swiftvmm, directory: d)
    rig.namePrefix = "swiftvmm-"
    let g = snapshotGuest
    let (src, api) = try bench { try rig.source(try env.image("memtouch"), cmdline: g.cmdline, memory: g.memory, name: "bench-snap") }
    defer { src.kill() }
    _ = try bench { try src.waitForLine("^HEARTBEAT", timeout: 120) }
    let file = d.appendingPathComponent("guest.snap").path
    let save = try bench { try env.start("swiftvmm-save", [env.swiftvmm, "save", api, file]) }
    let (term, t1) = try bench { try save.waitForExit(timeout: 120) }
    guard term == .exited(0) else { throw BenchError("swiftvmm save failed (rc=\(rc(term))): \(save.stderr.suffix(600))") }
    // "saved 1 GiB to FILE in 52.0 ms: 2.1 MiB on disk (1 GiB apparent), guest paused 52.0 ms; …"
    let saved = save.stdout.range(of: " in [0-9.]+ ms", options: .regularExpression)
        .flatMap { Double(save.stdout[$0].dropFirst(4).dropLast(3)) }
    guard let saved else { throw BenchError("save printed no time: \(save.stdout)") }
    var st = stat()
    guard stat(file, &st) == 0 else { throw BenchError("no snapshot at \(file)") }
    _ = try bench { try src.waitForExit(timeout: 30) }
    return (file, ["save_ms": .double(saved), "save_wall_ms": .double((t1 - save.startTime) * 1000),
                   "disk_MiB": .double(Double(st.st_blocks) * 512 / Double(MiB)),
                   "detail": .object(["apparent_bytes": .int(Int(st.st_size)), "save_stdout": .string(save.stdout)])])
}

struct SaveSnapshot: Scenario {
    let name = "save"
    let title = "Save: a 1 GiB idle guest to a snapshot file"
    let metrics = [Metric("save_ms", "save inside swiftvmm (pause → file flushed and in place)", "ms", "lower"),
                   Metric("save_wall_ms", "`swiftvmm save` start → exit", "ms", "lower"),
                   Metric("disk_MiB", "snapshot size on disk (allocated blocks)", "MiB", "lower", "{:.2f}")]
    let notes = snapshotNotes
    let extra = true

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string(snapshotGuest.image), "memory": .string(snapshotGuest.memory), "cmdline": .string(snapshotGuest.cmdline),
         "swiftvmm_only": .bool(true)]
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        guard side == .swiftvmm else { throw Skip("QEMU's save is not measured (see the notes)") }
        return try saveSnapshotGuest(env, try env.runDirectory("swift-save")).figures
    }
}

struct RestoreSnapshot: Scenario {
    let name = "restore"
    let title = "Restore: a 1 GiB idle guest from its snapshot, to its first instruction"
    let metrics = [Metric("restore_first_run_ms", "`swiftvmm restore` spawn → first KVM_RUN", "ms", "lower"),
                   Metric("restore_ms", "restore inside swiftvmm (open file → vCPUs released)", "ms", "lower"),
                   Metric("prefault_first_run_ms", "the same with --prefault (spawn → first KVM_RUN)", "ms", "lower")]
    let notes = snapshotNotes + ["The guest must carry on after the restore (a new HEARTBEAT); memory is mapped "
                                 + "from the file, so pages fault in as the guest touches them."]
    let extra = true

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string(snapshotGuest.image), "memory": .string(snapshotGuest.memory), "cmdline": .string(snapshotGuest.cmdline),
         "swiftvmm_only": .bool(true)]
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        guard side == .swiftvmm else { throw Skip("QEMU's restore is not measured (see the notes)") }
        let (file, _) = try saveSnapshotGuest(env, try env.runDirectory("swift-restore"))
        let mapped = try restoreOnce(env, file, extra: [])
        let prefault = try restoreOnce(env, file, extra: ["--prefault"])
        return ["restore_first_run_ms": .double(mapped.firstRun), "restore_ms": .double(mapped.inside),
                "prefault_first_run_ms": .double(prefault.firstRun),
                "detail": .object(["prefault_restore_ms": .double(prefault.inside)])]
    }

    /// One restore: spawn → first KVM_RUN (the start-up trace), and swiftvmm's own figure.
    private func restoreOnce(_ env: BenchEnvironment, _ file: String, extra: [String]) throws -> (firstRun: Double, inside: Double) {
        let c = try bench { try env.start("swiftvmm-restore", [env.swiftvmm, "restore", file] + extra,
                                          environment: ["SWIFTVMM_TRACE_STARTUP": "1"]) }
        defer { c.kill() }
        _ = try bench { try c.waitForLine("^HEARTBEAT", timeout: 60) }
        // stderr has its own reader: wait for both lines rather than race it.
        guard c.waitForStderr("first KVM_RUN at monotonic", timeout: 10), c.waitForStderr(" restored from ", timeout: 10) else {
            throw BenchError("restore printed no start-up trace or time: \(c.stderr.suffix(400))")
        }
        let lines = c.err.lines.map(\.text)
        guard let trace = lines.first(where: { $0.contains("first KVM_RUN at monotonic") }),
              let ns = trace.split(separator: " ").dropLast().last.flatMap({ Double($0) }) else {
            throw BenchError("restore printed no start-up trace: \(c.stderr.suffix(400))")
        }
        let inside = lines.first(where: { $0.contains(" restored from ") }).flatMap { line -> Double? in
            guard let r = line.range(of: "in [0-9.]+ ms", options: .regularExpression) else { return nil }
            return Double(line[r].dropFirst(3).dropLast(3))
        }
        guard let inside else { throw BenchError("restore printed no time: \(c.stderr.suffix(400))") }
        return ((ns / 1e9 - c.startTime) * 1000, inside)
    }
}
