import Foundation
import Glibc
import Machine
import Migration

/// Answers the QMP monitor of a running machine — or of a `recv` waiting for one: status, pause
/// and resume, state dumps, the source side of a migration, and the events that announce what
/// changed (STOP, RESUME, SHUTDOWN, MIGRATION).
public final class MachineController: @unchecked Sendable {
    public let name: String
    /// Every negotiated client hears these.
    public let events = EventBroadcaster()
    let lock = NSCondition()
    private var vmRef: VM?
    var sourceRef: MigrationSource?
    var targetRef: MigrationTarget?
    /// Migrations run on this thread, confined to what a migration needs.
    let migrations = MigrationWorker()
    /// What `migrate` uses, set by `migrate-set-parameters`.
    var parameters = MigrationParameters()
    /// The source migration's bookkeeping (see `MachineController+Migration`).
    var outgoing = Outgoing()
    var quitRequested = false
    /// The monitor serving this controller (weak: the server's handler holds the controller).
    private weak var server: ControlServer?
    /// QMP's status of the incoming migration, as last announced.
    private var incomingStatus: String?

    public init(name: String, vm: VM?) {
        self.name = name
        self.vm = vm
    }

    /// The machine, once it runs here.
    public var vm: VM? {
        get { lock.withLock { vmRef } }
        set {
            lock.withLock { vmRef = newValue }
            if let newValue { watch(newValue) }
        }
    }

    /// On a target: the receive in progress. Its machine is watched from the moment it is built,
    /// its progress announced as MIGRATION events.
    public var target: MigrationTarget? {
        get { lock.withLock { targetRef } }
        set {
            lock.withLock { targetRef = newValue }
            guard let t = newValue else { return }
            t.onMachine = { [weak self] vm in self?.watch(vm) }
            t.progress.observePhase { [weak self] phase in self?.incomingPhaseChanged(phase) }
        }
    }

    private func incomingPhaseChanged(_ phase: MigrationPhase) {
        guard let status = MigrationInfo.status(of: phase) else { return }
        let changed = lock.withLock { () -> Bool in
            defer { incomingStatus = status }
            return incomingStatus != status
        }
        if changed { events.emit("MIGRATION", ["status": status]) }
    }

    /// Serves the QMP monitor at `path` for this controller.
    public func serve(at path: String) throws -> ControlServer {
        let server = try ControlServer(path: path, events: events, handler: { [self] client, name, args in
            do throws(QMPError) { return self.handle(try ControlCommand(name: name, arguments: args), client: client) } catch {
                return .failure(error)
            }
        }, closed: { [self] client in self.clientClosed(client) })
        lock.withLock { self.server = server }
        return server
    }

    /// Lets the replies being written (`quit`'s) and the last events (SHUTDOWN) reach the
    /// clients before the process exits.
    public func finish() {
        lock.withLock({ server })?.waitForReplies(timeout: 2)
        events.flush(timeout: 2)
    }

    /// Runs one command for `client`; `migrate` starts the migration and returns.
    public func handle(_ command: ControlCommand, client: Int = 0) -> Result<Any, QMPError> {
        switch command {
        case .queryStatus:
            let (running, status) = runState()
            return .success(["running": running, "singlestep": false, "status": status])
        case .queryVersion: return .success(QMP.version)
        case .queryCommands: return .success(ControlCommand.names.map { ["name": $0] })
        case .stop:
            guard let vm else { return .failure(.generic("no guest is running yet")) }
            vm.pause()
            return .success([String: Any]())
        case .cont: return cont()
        case .quit: return quit()
        case .queryCPUsFast: return .success(cpus())
        case .migrate(let endpoint, let copyStorage): return migrate(to: endpoint, copyStorage: copyStorage, client: client)
        case .migrateCancel: return cancelMigration()
        case .queryMigrate: return .success(migrationInfo())
        case .migrateSetParameters(let change):
            lock.withLock { parameters.apply(change) }
            return .success([String: Any]())
        case .queryMigrateParameters: return .success(lock.withLock { parameters.json })
        case .machineStatus: return .success(status())
        case .dumpState(let path): return dumpState(path)
        case .migrateDryRun(let endpoint): return dryRun(to: endpoint)
        case .save(let path, let options): return save(path, options, client: client)
        case .mirrorResync(let volume): return mirrorResync(volume: volume)
        }
    }

    /// Saves the guest on the migration thread (files, the dirty-page scan); not while a
    /// migration runs. When the guest stops, the process waits for this client to hang up.
    private func save(_ path: String, _ options: SaveOptions, client: Int) -> Result<Any, QMPError> {
        guard let vm else { return .failure(.generic("no guest is running")) }
        let busy = lock.withLock { outgoing.running || sourceRef?.progress.snapshot.phase == .inDoubt }
        if busy { return .failure(.generic("a migration is in progress")) }
        if !options.leaveRunning { lock.withLock { outgoing.client = client; outgoing.clientGone = false } }
        do {
            let report = try migrations.run { try Snapshot.save(vm, to: path, options: options) }
            return .success(report.json)
        } catch {
            return .failure(.generic("\(error)"))
        }
    }

    private func cont() -> Result<Any, QMPError> {
        // After an in-doubt hand-off `cont` is the operator's verdict: run the guest here —
        // unless a local hand-over's other side already took the guest over the shared memory.
        if source?.guestTakenByTarget == true {
            return .failure(.generic("the target took the guest at the hand-over and ran it on the shared memory: this paused copy is stale and cannot resume; quit it"))
        }
        if target?.guestTakenBySource == true {
            return .failure(.generic("the source took the guest back: this paused copy cannot resume; quit it"))
        }
        // After an in-doubt hand-off `cont` is the operator's verdict: run the guest here.
        if source?.resumeHere() == true || target?.resumeHere() == true { return .success([String: Any]()) }
        guard let vm else { return .failure(.generic("no guest is running yet")) }
        vm.resume()
        return .success([String: Any]())
    }

    private func quit() -> Result<Any, QMPError> {
        lock.withLock {
            quitRequested = true
            lock.broadcast()
        }
        if let vm {
            vm.stop(.signal(SIGTERM))
        } else {
            events.emit("SHUTDOWN", ["guest": false, "reason": "host-qmp-quit"])
        }
        target?.cancel("recv was asked to quit")
        return .success([String: Any]())
    }

    var source: MigrationSource? { lock.withLock { sourceRef } }

    /// QMP's run state (`query-status`): whether the guest runs, and QEMU's name for the state.
    func runState() -> (Bool, String) {
        let (vm, s, t) = lock.withLock { (vmRef, sourceRef, targetRef) }
        guard let vm else { return (false, "inmigrate") }
        switch vm.stopReason {
        case .migrated?: return (false, "postmigrate")
        case .internalError?, .tripleFault?: return (false, "internal-error")
        case .some: return (false, "shutdown")
        case nil: break
        }
        guard vm.isPaused else { return (true, "running") }
        if let p = s?.progress.snapshot.phase, p == .stopAndCopy || p == .handoff { return (false, "finish-migrate") }
        if let p = t?.progress.snapshot.phase, p == .receiving || p == .handoff { return (false, "inmigrate") }
        return (false, "paused")
    }

    /// `query-cpus-fast`: one entry per vCPU with the host thread that runs it.
    private func cpus() -> [[String: Any]] {
        guard let vm else { return [] }
        let tids = vm.vcpuThreadIDs
        return vm.cpus.indices.map { i in
            ["cpu-index": i, "qom-path": "/machine/unattached/device[\(i)]", "thread-id": i < tids.count ? Int(tids[i]) : 0,
             "target": "x86_64", "props": ["socket-id": 0, "core-id": i, "thread-id": 0]]
        }
    }

    private func dumpState(_ path: String) -> Result<Any, QMPError> {
        guard let vm else { return .failure(.generic("x-swiftvmm-dump-state needs a running guest")) }
        let wasPaused = vm.isPaused
        guard vm.freeze() else { return .failure(.generic("the guest stopped")) }
        defer { vm.thaw(resume: !wasPaused) }
        do {
            let blob = try FDTCodec.encode(try vm.saveMachineState())
            guard FileManager.default.createFile(atPath: path, contents: Data(blob)) else {
                return .failure(.generic("cannot write \(path)"))
            }
            return .success(["bytes": blob.count])
        } catch { return .failure(.generic("\(error)")) }
    }

    /// `x-swiftvmm-query-status`: the machine's state and, during a migration, its progress.
    public func status() -> [String: Any] {
        var d: [String: Any] = ["name": name]
        let (vm, s, t) = lock.withLock { (vmRef, sourceRef, targetRef) }
        if let vm {
            d["status"] = vm.stopReason != nil ? "stopped" : (vm.isPaused ? "paused" : "running")
            d["memory_bytes"] = vm.memory.totalSize
            d["cpus"] = vm.cpus.count
            d["cpu_model"] = vm.config.cpuModel.name
            d["unclaimed_io"] = vm.devices.pio.unclaimed.load(ordering: .relaxed) + vm.devices.mmio.unclaimed.load(ordering: .relaxed)
            let mirrors = Self.mirrorsJSON(vm)
            if !mirrors.isEmpty { d["mirrors"] = mirrors }
        } else {
            d["status"] = "inmigrate"
        }
        if let p = (s?.progress ?? t?.progress)?.snapshot {
            d["migration"] = p.json
            d["role"] = s != nil ? "source" : "target"
        }
        return d
    }

    /// Announces the machine's pauses, resumes and stop as STOP, RESUME and SHUTDOWN.
    private func watch(_ vm: VM) {
        vm.observeRunState { [weak self] change in
            guard let self else { return }
            switch change {
            case .paused: self.events.emit("STOP")
            case .resumed: self.events.emit("RESUME")
            case .stopped(let reason):
                let quit = self.lock.withLock { self.quitRequested }
                if let data = Self.shutdownData(reason, quit: quit) { self.events.emit("SHUTDOWN", data) }
            }
        }
    }

    /// SHUTDOWN's data (QEMU's `ShutdownCause`); none for a guest that migrated away.
    static func shutdownData(_ reason: StopReason, quit: Bool) -> [String: Any]? {
        switch reason {
        case .guest(.reset), .tripleFault: return ["guest": true, "reason": "guest-reset"]
        case .guest: return ["guest": true, "reason": "guest-shutdown"]
        case .signal: return ["guest": false, "reason": quit ? "host-qmp-quit" : "host-signal"]
        case .internalError: return ["guest": false, "reason": "host-error"]
        case .migrated: return nil
        case .saved: return ["guest": false, "reason": "host-qmp-quit"]
        }
    }
}

/// Where a VM's control socket lives: a path, or `/run/swiftvmm/NAME.sock` for a bare name.
public func apiSocketPath(for vm: String) -> String {
    vm.contains("/") || vm.hasSuffix(".sock") ? vm : "/run/swiftvmm/\(vm).sock"
}
