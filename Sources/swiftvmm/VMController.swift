import Control
import Foundation
import Glibc
import Machine
import Migration
import Synchronization

/// Answers the control socket of a running (or receiving) machine: status, pause/resume, and
/// the source side of a migration.
final class VMController: @unchecked Sendable {
    let name: String
    private let lock = NSLock()
    private var vmRef: VM?
    private var source: MigrationSource?
    private var lastReport: [String: Any]?
    /// On a target: the receive in progress.
    var target: MigrationTarget?
    private let replyDone = NSCondition()
    private var replyWasWritten = false

    func migrateReplyWritten() {
        replyDone.lock(); replyWasWritten = true; replyDone.broadcast(); replyDone.unlock()
    }

    func waitForMigrateReply(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        replyDone.lock()
        while !replyWasWritten && Date() < deadline { _ = replyDone.wait(until: deadline) }
        replyDone.unlock()
    }

    init(name: String, vm: VM?) {
        self.name = name
        self.vmRef = vm
    }

    var vm: VM? {
        get { lock.lock(); defer { lock.unlock() }; return vmRef }
        set { lock.lock(); vmRef = newValue; lock.unlock() }
    }

    func handle(_ command: String, _ args: [String: Any]) -> ControlReply {
        switch command {
        case "query-status":
            return .ok(status())
        case "query-migrate":
            return .ok(migrationStatus())
        case "stop":
            guard let vm else { return .error("GenericError", "no guest is running yet") }
            vm.pause()
            return .ok([:])
        case "cont":
            guard let vm else { return .error("GenericError", "no guest is running yet") }
            vm.resume()
            return .ok([:])
        case "quit":
            vm?.stop(.signal(SIGTERM))
            target?.cancel("recv was asked to quit")
            return .ok([:])
        case "migrate":
            return migrate(args)
        case "migrate-cancel":
            lock.lock()
            let s = source, t = target
            lock.unlock()
            if let s { s.cancel("migration cancelled by the user"); return .ok([:]) }
            if let t { t.cancel("migration cancelled on the target by the user"); return .ok([:]) }
            return .error("GenericError", "no migration is in progress")
        case "dump-state":
            guard let vm, let path = args["path"] as? String else { return .error("GenericError", "dump-state needs a path and a running guest") }
            guard vm.pause() else { return .error("GenericError", "the guest stopped") }
            vm.quiesceDevices()
            defer { vm.unquiesceDevices(); vm.resume() }
            do {
                let blob = try FDTCodec.encode(try vm.saveMachineState())
                guard FileManager.default.createFile(atPath: path, contents: Data(blob)) else {
                    return .error("GenericError", "cannot write \(path)")
                }
                return .ok(["bytes": blob.count])
            } catch { return .error("GenericError", "\(error)") }
        default:
            return .error("CommandNotFound", "unknown command '\(command)'")
        }
    }

    func status() -> [String: Any] {
        var d: [String: Any] = ["name": name]
        lock.lock()
        let vm = vmRef, s = source, t = target
        lock.unlock()
        if let vm {
            d["status"] = vm.stopReason != nil ? "stopped" : (vm.isPaused ? "paused" : "running")
            d["memory_bytes"] = vm.memory.totalSize
            d["cpus"] = vm.vcpus.count
            d["unclaimed_io"] = vm.pio.unclaimed.load(ordering: .relaxed) + vm.mmio.unclaimed.load(ordering: .relaxed)
        } else {
            d["status"] = "inmigrate"
        }
        if let p = (s?.progress ?? t?.progress)?.snapshot {
            d["migration"] = p.json
            d["role"] = s != nil ? "source" : "target"
        }
        return d
    }

    func migrationStatus() -> [String: Any] {
        lock.lock()
        let s = source, t = target, report = lastReport
        lock.unlock()
        var d = (s?.progress ?? t?.progress)?.snapshot.json ?? ["phase": "idle"]
        if let report { d["report"] = report }
        return d
    }

    /// Runs a migration to completion on the calling (control client) thread.
    func migrate(_ args: [String: Any]) -> ControlReply {
        guard let vm else { return .error("GenericError", "no guest is running") }
        guard let uri = args["uri"] as? String else { return .error("GenericError", "migrate needs \"uri\"") }
        var options: SendOptions
        do { options = SendOptions(endpoint: try Endpoint.parse(uri)) } catch { return .error("GenericError", "\(error)") }
        if let v = args["downtime-ms"] as? Double { options.downtimeMs = v } else if let v = args["downtime-ms"] as? Int { options.downtimeMs = Double(v) }
        if let v = args["max-bandwidth"] as? Double { options.maxBandwidth = v } else if let v = args["max-bandwidth"] as? Int { options.maxBandwidth = Double(v) }
        if let v = args["max-time"] as? Double { options.maxTime = v } else if let v = args["max-time"] as? Int { options.maxTime = Double(v) }
        if let v = args["auto-converge"] as? Bool { options.autoConverge = v }
        if let v = args["compress"] as? String {
            guard let c = Compression(rawValue: v) else { return .error("GenericError", "compress must be lz4 or none") }
            options.compression = c
        }
        if let v = args["key"] as? String {
            guard let k = [UInt8](hexString: v) else { return .error("GenericError", "key is not hex") }
            options.key = k
        }
        if let v = args["stream-version"] as? Int { options.streamVersion = UInt32(v) }
        if let v = args["hold-before-commit-ms"] as? Int { options.holdBeforeCommitMs = Double(v) }
        let s = MigrationSource(vm: vm, options: options)
        lock.lock()
        if let existing = source, [.setup, .precopy, .stopAndCopy, .handoff].contains(existing.progress.snapshot.phase) {
            lock.unlock()
            return .error("GenericError", "a migration is already in progress")
        }
        source = s
        lastReport = nil
        lock.unlock()
        // Only this migration's reply may let the process exit once the guest has moved.
        replyDone.lock(); replyWasWritten = false; replyDone.unlock()
        do {
            let report = try s.run()
            lock.lock(); lastReport = report.json; lock.unlock()
            return .ok(report.json)
        } catch {
            return .error("MigrationFailed", "\(error)")
        }
    }
}

/// Where a VM's control socket lives: a path, or `/run/swiftvmm/NAME.sock` for a bare name.
func apiSocketPath(for vm: String) -> String {
    vm.contains("/") || vm.hasSuffix(".sock") ? vm : "/run/swiftvmm/\(vm).sock"
}
