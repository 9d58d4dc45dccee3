import Foundation
import Glibc
import Machine
import Migration

/// Answers the control socket of a running machine — or of a `recv` waiting for one: status,
/// pause and resume, state dumps, and the source side of a migration.
public final class MachineController: @unchecked Sendable {
    public let name: String
    private let lock = NSLock()
    private var vmRef: VM?
    private var sourceRef: MigrationSource?

    private var source: MigrationSource? {
        get { lock.lock(); defer { lock.unlock() }; return sourceRef }
        set { lock.lock(); sourceRef = newValue; lock.unlock() }
    }
    private var targetRef: MigrationTarget?
    private var lastReport: [String: Any]?
    private let replyDone = NSCondition()
    /// Migrations run on this thread, confined to what a migration needs.
    private let migrations = MigrationWorker()
    private var replyWasWritten = false

    public init(name: String, vm: VM?) {
        self.name = name
        self.vmRef = vm
    }

    /// The machine, once it runs here.
    public var vm: VM? {
        get { lock.lock(); defer { lock.unlock() }; return vmRef }
        set { lock.lock(); vmRef = newValue; lock.unlock() }
    }

    /// On a target: the receive in progress.
    public var target: MigrationTarget? {
        get { lock.lock(); defer { lock.unlock() }; return targetRef }
        set { lock.lock(); targetRef = newValue; lock.unlock() }
    }

    /// Serves the control socket at `path` for this controller.
    public func serve(at path: String) throws -> ControlServer {
        let server = try ControlServer(path: path) { [self] name, args in
            do throws(ControlCommandError) { return self.handle(try ControlCommand(name: name, arguments: args)) } catch {
                return .error(error.errorClass, error.description)
            }
        }
        server.replyWritten = { [self] (command: String) in
            if command == "migrate" || command == "x-swiftvmm-save" { self.migrateReplyWritten() }
        }
        return server
    }

    /// Runs one command; `migrate` blocks until the migration ends.
    public func handle(_ command: ControlCommand) -> ControlReply {
        switch command {
        case .queryStatus: return .ok(status())
        case .queryMigrate: return .ok(migrationStatus())
        case .stop:
            guard let vm else { return .error("GenericError", "no guest is running yet") }
            vm.pause()
            return .ok([:])
        case .cont:
            // After an in-doubt hand-off `cont` is the operator's verdict: run the guest here.
            if source?.resumeHere() == true || target?.resumeHere() == true { return .ok([:]) }
            guard let vm else { return .error("GenericError", "no guest is running yet") }
            vm.resume()
            return .ok([:])
        case .quit:
            vm?.stop(.signal(SIGTERM))
            target?.cancel("recv was asked to quit")
            return .ok([:])
        case .migrate(let options): return migrate(options)
        case .migrateCancel:
            lock.lock()
            let s = sourceRef, t = targetRef
            lock.unlock()
            if let s { s.cancel("migration cancelled by the user"); return .ok([:]) }
            if let t { t.cancel("migration cancelled on the target by the user"); return .ok([:]) }
            return .error("GenericError", "no migration is in progress")
        case .dumpState(let path): return dumpState(path)
        case .save(let path, let options): return save(path, options)
        }
    }

    /// Saves the guest on the migration thread (files, the dirty-page scan); not while a
    /// migration runs.
    private func save(_ path: String, _ options: SaveOptions) -> ControlReply {
        guard let vm else { return .error("GenericError", "no guest is running") }
        if let s = source, [.setup, .precopy, .stopAndCopy, .handoff, .inDoubt].contains(s.progress.snapshot.phase) {
            return .error("GenericError", "a migration is in progress")
        }
        replyDone.lock(); replyWasWritten = false; replyDone.unlock()
        do {
            let report = try migrations.run { try Snapshot.save(vm, to: path, options: options) }
            return .ok(report.json)
        } catch {
            return .error("GenericError", "\(error)")
        }
    }

    private func dumpState(_ path: String) -> ControlReply {
        guard let vm else { return .error("GenericError", "dump-state needs a running guest") }
        guard vm.pause() else { return .error("GenericError", "the guest stopped") }
        vm.devices.quiesce()
        defer { vm.devices.unquiesce(); vm.resume() }
        do {
            let blob = try FDTCodec.encode(try vm.saveMachineState())
            guard FileManager.default.createFile(atPath: path, contents: Data(blob)) else {
                return .error("GenericError", "cannot write \(path)")
            }
            return .ok(["bytes": blob.count])
        } catch { return .error("GenericError", "\(error)") }
    }

    /// `query-status`: the machine's state and, during a migration, its progress.
    public func status() -> [String: Any] {
        var d: [String: Any] = ["name": name]
        lock.lock()
        let vm = vmRef, s = sourceRef, t = targetRef
        lock.unlock()
        if let vm {
            d["status"] = vm.stopReason != nil ? "stopped" : (vm.isPaused ? "paused" : "running")
            d["memory_bytes"] = vm.memory.totalSize
            d["cpus"] = vm.cpus.count
            d["cpu_model"] = vm.config.cpuModel.name
            d["unclaimed_io"] = vm.devices.pio.unclaimed.load(ordering: .relaxed) + vm.devices.mmio.unclaimed.load(ordering: .relaxed)
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
        let s = sourceRef, t = targetRef, report = lastReport
        lock.unlock()
        var d = (s?.progress ?? t?.progress)?.snapshot.json ?? ["phase": "idle"]
        if let report { d["report"] = report }
        return d
    }

    /// Runs a migration to completion on the calling (control client) thread.
    private func migrate(_ options: SendOptions) -> ControlReply {
        guard let vm else { return .error("GenericError", "no guest is running") }
        let s = MigrationSource(vm: vm, options: options)
        lock.lock()
        if let existing = sourceRef, [.setup, .precopy, .stopAndCopy, .handoff, .inDoubt].contains(existing.progress.snapshot.phase) {
            lock.unlock()
            return .error("GenericError", existing.progress.snapshot.phase == .inDoubt
                          ? "the last migration's outcome is in doubt: resume the guest here (cont) or stop it (quit) first"
                          : "a migration is already in progress")
        }
        sourceRef = s
        lastReport = nil
        lock.unlock()
        // Only this migration's reply may let the process exit once the guest has moved.
        replyDone.lock(); replyWasWritten = false; replyDone.unlock()
        do {
            let report = try migrations.run { try s.run() }
            lock.lock(); lastReport = report.json; lock.unlock()
            return .ok(report.json)
        } catch {
            if case .inDoubt(let why)? = error as? MigrationError {
                FileHandle.standardError.write(Data("swiftvmm: migration outcome unknown: \(why)\n".utf8))
            }
            return .error("MigrationFailed", "\(error)")
        }
    }

    private func migrateReplyWritten() {
        replyDone.lock(); replyWasWritten = true; replyDone.broadcast(); replyDone.unlock()
    }

    /// Waits (at most `timeout` s) until the reply to the migration that moved the guest away
    /// (or the save that stopped it) reached its client, so that the process does not exit
    /// before `send` (or `save`) learns the result.
    public func waitForMigrateReply(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        replyDone.lock()
        while !replyWasWritten && Date() < deadline { _ = replyDone.wait(until: deadline) }
        replyDone.unlock()
    }
}

/// Where a VM's control socket lives: a path, or `/run/swiftvmm/NAME.sock` for a bare name.
public func apiSocketPath(for vm: String) -> String {
    vm.contains("/") || vm.hasSuffix(".sock") ? vm : "/run/swiftvmm/\(vm).sock"
}
