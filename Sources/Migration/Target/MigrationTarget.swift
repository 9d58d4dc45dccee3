import Foundation
import Glibc
import Machine

/// How `recv` accepts a migration.
public struct ReceiveOptions: Sendable {
    public var endpoint: Endpoint
    public var key: [UInt8]?
    /// When set, the incoming guest must have exactly this much memory / this many vCPUs.
    public var expectMemory: UInt64?
    public var expectCPUs: Int?
    /// How the guest's machine is built here (its disks, NICs, serial, withheld CPU features).
    public var machine: TargetMachineBuilder
    /// Accept a guest whose TSC rate differs from this host's when KVM cannot scale it (its
    /// clock then runs at this host's rate).
    public var allowTSCMismatch = false
    /// Give up when the source makes no progress for this many seconds (nil: never).
    public var timeout: Double? = 30
    /// Instead of listening, read the source's side of a captured stream from this file (the
    /// target's answers go nowhere): release-compatibility checks and forensics.
    public var replay: String?

    public init(endpoint: Endpoint, machine: TargetMachineBuilder = TargetMachineBuilder()) {
        self.endpoint = endpoint
        self.machine = machine
    }
}

/// The receiving side: accepts one migration, builds the machine paused, loads memory and
/// state, and resumes the guest only after the source's `go`.
///
/// Phases (`TargetPhases.swift`): accept and authenticate → pre-check and build → receive
/// memory and state → hand-off. Any failure before `go` tears the half-built machine down:
/// nothing ever ran here.
public final class MigrationTarget: @unchecked Sendable {
    let options: ReceiveOptions
    public let progress = ProgressBox()
    private let cancellation = Cancellation(interruptReadsOnly: true)
    private let listenerLock = NSLock()
    private var listener: Int32 = -1
    /// The UNIX socket path this target bound (and so removes), if any.
    private var boundPath: String?
    private var session: TargetSession?

    public init(options: ReceiveOptions) {
        self.options = options
    }

    /// Called with the machine as soon as it is built (paused, before a page arrives): a
    /// monitor's chance to watch it from the start.
    public var onMachine: (@Sendable (VM) -> Void)? {
        get { listenerLock.withLock { machineObserver } }
        set { listenerLock.withLock { machineObserver = newValue } }
    }
    private var machineObserver: (@Sendable (VM) -> Void)?

    deinit { closeListener() }

    /// Wall-clock nanoseconds when the guest resumed here.
    public var resumedAtNanos: UInt64 { session?.resumedAtNanos ?? 0 }
    /// The incoming machine's description, once pre-checks passed.
    public var description: MachineDescription? { session?.description }

    /// Binds the listening socket (fails at once on a busy port or bad path).
    public func listen() throws {
        if options.replay != nil { return }
        let fd = try Transport.listen(options.endpoint)
        listenerLock.lock()
        listener = fd
        if case .unix(let path) = options.endpoint { boundPath = path }
        listenerLock.unlock()
        MessageCodec.warmUp()
        progress.update { $0.phase = .waiting; $0.peer = options.endpoint.description }
    }

    func takeListener() -> Int32 {
        listenerLock.lock(); defer { listenerLock.unlock() }
        return listener
    }

    /// Stops listening and removes the socket file this target bound.
    func closeListener() {
        listenerLock.lock(); defer { listenerLock.unlock() }
        if listener >= 0 { close(listener); listener = -1 }
        if let p = boundPath { unlink(p); boundPath = nil }
    }

    /// After an in-doubt local hand-over: the source took the guest back, so this paused copy
    /// must never resume.
    public var guestTakenBySource: Bool { session.map { $0.inDoubt && $0.claim?.takenBySource == true } ?? false }

    /// After an in-doubt hand-off whose paused copy never ran here (the operator quit it): one
    /// line per disk copy, which stays. It is the volume's image as of the source's pause,
    /// complete, and this side cannot know whether the source runs the guest — if it does
    /// not, that file is the disk to keep; so the operator removes it, never this target.
    public var keptDiskCopies: [String] {
        guard let s = session, s.inDoubt, !s.resumed, s.holdsCompleteCopy, let copy = s.diskCopy else { return [] }
        return copy.completeCopies.map {
            "kept the copy of volume '\($0.volume)' at \($0.file): the disk as of the source's pause, complete; the hand-off was in doubt and the guest never ran here — remove it once the guest runs on the source"
        }
    }

    /// After an in-doubt hand-off: the paused machine that holds the guest.
    public var heldMachine: VM? { session.flatMap { $0.inDoubt ? $0.vm : nil } }

    /// After an in-doubt hand-off, the operator's choice to run the guest here. Returns false
    /// when nothing was in doubt.
    @discardableResult
    public func resumeHere() -> Bool {
        guard let s = session, s.inDoubt, !s.resumed else { return false }
        if let claim = s.claim, !claim.takeForTargetInDoubt() { return false }
        do { try s.resumeGuest() } catch { return false }
        progress.update { $0.phase = .completed; $0.error = "resumed on the target after an in-doubt hand-off" }
        return true
    }

    /// Aborts the receive before the commit; the source resumes its guest.
    public func cancel(_ reason: String = "migration cancelled on the target") {
        cancellation.cancel(reason, interrupt: true)
    }

    /// Receives the guest and returns its machine, running. On failure nothing ran here.
    /// Dry runs are answered on the way, each on its own connection.
    public func run() throws -> VM {
        if takeListener() < 0 && options.replay == nil { try listen() }
        while true {
            if let vm = try receiveOne() { return vm }
            progress.update { $0.phase = .waiting; $0.peer = options.endpoint.description; $0.error = nil }
        }
    }

    /// One source's session: the running machine, or nil after a dry run.
    private func receiveOne() throws -> VM? {
        let session = TargetSession(target: self, options: options, progress: progress, cancellation: cancellation)
        self.session = session
        var runner = PhaseRunner(session: session, progress: progress, committed: { session.resumed || session.inDoubt })
        do {
            try runner.run(TargetAccept())
            do { try runner.run(TargetPreCheck()) } catch is DryRunAnswered {
                session.connection?.close()
                return nil
            }
            try runner.run(TargetReceive())
            try runner.run(TargetHandOff())
            guard let vm = session.vm else { throw MigrationError.machine("no machine after the hand-off") }
            return vm
        } catch {
            let error = cancellation.explain(error).naming(phase: progress.snapshot.phase, guest: "nothing ran here")
            if let conn = session.connection {
                // Tell the source why, unless the reason came from it.
                let fromSource: Bool
                switch error as? MigrationError {
                case .peer?: fromSource = true
                case .cancelled?: fromSource = !cancellation.isCancelled
                default: fromSource = false
                }
                if !fromSource { conn.sendError("\(error)") }
                conn.close()
            }
            runner.rollBack()
            closeListener()
            let phase: MigrationPhase = session.inDoubt ? .inDoubt : (cancellation.isCancelled ? .cancelled : .failed)
            progress.update { $0.phase = phase; $0.error = "\(error)" }
            throw error
        }
    }
}

/// What the target's phases share.
final class TargetSession {
    unowned let target: MigrationTarget
    let options: ReceiveOptions
    let progress: ProgressBox
    let cancellation: Cancellation
    var connection: Connection?
    var hello: Hello?
    var preambleVersion: UInt32 = 0
    /// What the handshake established (the nonces extra connections derive their keys from).
    var handshake: Handshake.Result?
    /// `send --connections N`: the N − 1 extra data connections, and their reading threads.
    var channelConnections: [Connection] = []
    var channels: ChannelReceivers?
    var description: MachineDescription?
    var vm: VM?
    var slots: SlotRegistration?
    /// The disks arriving in the stream (`send --copy-storage`).
    var diskCopy: DiskCopyTarget?
    /// The NICs that announce the guest's new place after the hand-off.
    var announcers: [any AnnouncingDevice] = []
    /// The guest runs here: nothing is rolled back any more.
    var resumed = false
    /// `ready` was sent: the paused machine holds the whole guest.
    var holdsCompleteCopy = false
    /// The hand-off broke in the window where the outcome is unknown: keep the paused copy.
    var inDoubt = false
    var resumedAtNanos: UInt64 = 0
    /// A local hand-over's claim on the guest (`HandoverClaim`).
    var claim: HandoverClaim?

    init(target: MigrationTarget, options: ReceiveOptions, progress: ProgressBox, cancellation: Cancellation) {
        self.target = target
        self.options = options
        self.progress = progress
        self.cancellation = cancellation
    }

    func conn() throws -> Connection {
        guard let c = connection else { throw MigrationError.connection("not connected") }
        return c
    }

    func machine() throws -> VM {
        guard let vm else { throw MigrationError.machine("the target machine is not built") }
        return vm
    }

    /// Runs the guest here: vCPUs and devices resume, NICs announce the guest's new place.
    func resumeGuest() throws {
        let vm = try machine()
        resumed = true
        diskCopy?.publish()
        // Devices first, as `thaw` does. The downtime ends when a vCPU runs again (its own
        // thread notes when), not when this thread next gets a CPU to note it: a guest vCPU
        // woken on this core can run for a whole time slice before this thread does.
        vm.devices.unquiesce()
        let released = Clock.wallNanos()
        vm.resume()
        resumedAtNanos = vm.firstRunAfterResume(timeout: 0.1) ?? released
        for nic in announcers { nic.announce() }
        diskCopy?.syncDirectories()
    }
}

extension SlotRegistration {
    /// Waits for the slots; a failure is the migration's.
    func wait() throws {
        do throws(VMError) { try waitForSlots() } catch {
            throw MigrationError.machine("cannot give guest memory to KVM: \(error)")
        }
    }
}
