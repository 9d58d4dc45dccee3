import Foundation
import Glibc
import Machine

/// Wait for the one source and run the handshake. A peer that hangs up or is not a swiftvmm
/// before its hello (a port probe, a health check), or that fails the handshake (another
/// stream version, a wrong or missing key), is noted in one line and the target keeps waiting:
/// no one who cannot authenticate can end a waiting target.
final class TargetAccept: MigrationStep {
    var phase: MigrationPhase { .waiting }
    /// How long a new connection may take to say hello.
    static let helloTimeoutSeconds = 10

    func run(_ s: TargetSession) throws {
        if let file = s.options.replay { return try replay(file, s) }
        let listener = s.target.takeListener()
        let tcp: Bool = { if case .tcp = s.options.endpoint { return true }; return false }()
        while true {
            guard let fd = try Transport.acceptOne(listener, tcp: tcp, cancelled: { s.cancellation.isCancelled }) else {
                throw MigrationError.cancelled(s.cancellation.reason ?? "cancelled")
            }
            Transport.setReceiveTimeout(fd, seconds: Self.helloTimeoutSeconds)
            let c = Connection(fd: fd)
            do {
                (s.preambleVersion, s.hello) = try Handshake.readHello(c)
            } catch {
                FileHandle.standardError.write(Data("swiftvmm: ignored a connection that is not a migration source (\(error))\n".utf8))
                c.close()
                continue
            }
            Transport.setReceiveTimeout(fd, seconds: 0)
            c.idleTimeout = s.options.timeout
            Transport.setTCPTimeouts(fd, seconds: s.options.timeout)
            guard let hello = s.hello else { c.close(); continue }
            do {
                s.handshake = try Handshake.respond(c, preambleVersion: s.preambleVersion, hello: hello, key: s.options.key)
            } catch {
                FileHandle.standardError.write(Data("swiftvmm: refused a source (\(hello.name)): \(error); still waiting\n".utf8))
                c.close()
                continue
            }
            s.connection = c
            break
        }
        s.cancellation.attach(s.connection)
        s.progress.update { $0.phase = .setup }
        Faults.hit(.afterHello, .target, s.connection)
        try s.cancellation.check()
    }
}

extension TargetAccept {
    /// Opens a captured stream as the connection.
    func replay(_ file: String, _ s: TargetSession) throws {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MigrationError.usage("cannot read the captured stream '\(file)': \(String(cString: strerror(errno)))") }
        let c = Connection(fd: fd, discardingWrites: true)
        s.connection = c
        (s.preambleVersion, s.hello) = try Handshake.readHello(c)
        s.progress.update { $0.phase = .setup; $0.peer = "replay:\(file)" }
        guard let hello = s.hello else { throw MigrationError.stream("no hello") }
        guard !hello.hasKey else { throw MigrationError.usage("'\(file)' was captured from a sealed stream, which only its two peers can read") }
        _ = try Handshake.respond(c, preambleVersion: s.preambleVersion, hello: hello, key: nil)
    }
}

/// A dry run was answered: the session ends, the target waits for the next source.
struct DryRunAnswered: Error {}

/// Check the guest's description against this host, before any memory moves, then build its
/// machine paused.
final class TargetPreCheck: MigrationStep {
    var phase: MigrationPhase { .setup }

    func run(_ s: TargetSession) throws {
        let conn = try s.conn()
        let blob = try conn.expect(.config).payload
        let desc: MachineDescription
        do { desc = try MachineDescription(node: try FDTCodec.decode(blob)) } catch let e as MigrationError { throw e } catch {
            throw MigrationError.stream("configuration section: \(error)")
        }
        if desc.dryRun { try Self.dryRun(desc, s) }
        // More connections follow the `accept` (`send --connections N`): keep listening.
        let channels = desc.handover ? 1 : desc.channels
        if channels == 1 { s.target.closeListener() }
        var options = desc.handover ? try TargetHandover.receive(desc, s) : s.options
        try Self.check(desc, options)
        let present = MirrorCheck.present(desc.mirrors, disks: options.machine.disks)
        s.diskCopy = try DiskCopyTarget.prepare(desc.storage, disks: options.machine.disks, present: Set(present))
        // A copied volume's disk is the copy being written (a nameless file until the commit).
        for i in options.machine.disks.indices where options.machine.disks[i].copy {
            options.machine.disks[i].descriptor = s.diskCopy?.descriptor(volume: options.machine.disks[i].volume)
        }
        // A hand-over's state follows at once, so its slots are made with the machine (fastest
        // before the irqchip exists); a copy's are made while the first pages arrive.
        let vm = try options.machine.build(desc, deferSlots: !desc.handover)
        s.vm = vm
        s.description = desc
        s.target.onMachine?(vm)
        // Guest RAM goes to KVM on another thread while the first pages arrive; joined before
        // the first round is acknowledged.
        if !desc.handover { s.slots = SlotRegistration(vm: vm) }
        // Every NIC to announce after the hand-off, and a dry run of loading state, found now
        // rather than in the downtime (type lookups and first uses cost tens of µs each).
        s.announcers = vm.devices.all.compactMap { $0 as? any AnnouncingDevice }
        var loadMs: Double?
        if let own = try? vm.saveMachineState(), let blob = try? FDTCodec.encode(own) {
            let t0 = Clock.monotonic()
            _ = try? vm.prepareMachineState(FDTCodec.decode(blob))
            loadMs = (Clock.monotonic() - t0) * 1000
        }
        vm.start(paused: true)
        vm.devices.quiesce()
        let token = channels > 1 ? Auth.nonce() : nil
        try conn.send(Accept(name: vm.config.name, mirrorVolumes: present, stateLoadMs: loadMs, channelToken: token?.hexString))
        if let token { try s.acceptChannels(count: channels, token: token) }
        Faults.hit(.afterPrecheck, .target, conn)
        s.progress.update { $0.memoryBytes = desc.memorySize }
    }

    /// Refuses, naming everything that differs, a guest this host cannot run.
    static func check(_ desc: MachineDescription, _ options: ReceiveOptions) throws {
        let reasons = reasons(desc, options)
        if !reasons.isEmpty { throw MigrationError.refused(reasons.joined(separator: "; ")) }
    }

    /// Every reason this host cannot run the guest `desc` describes (empty: it can).
    static func reasons(_ desc: MachineDescription, _ options: ReceiveOptions) -> [String] {
        var out: [String] = []
        if let m = options.expectMemory, m != desc.memorySize {
            out.append("memory size differs: the guest has \(ByteSize.format(desc.memorySize)), \(options.machine.command) --memory is \(ByteSize.format(m))")
        }
        if let c = options.expectCPUs, c != desc.cpus {
            out.append("vCPU count differs: the guest has \(desc.cpus), \(options.machine.command) --cpus is \(c)")
        }
        do { _ = try MemoryMap(memorySize: desc.memorySize) } catch {
            out.append("guest memory layout cannot be hosted: \(error)")
        }
        if !desc.handover, let avail = HostMemory.available(), avail < desc.memorySize {
            out.append("not enough free memory on the target: the guest needs \(ByteSize.format(desc.memorySize)), \(ByteSize.format(avail)) available")
        }
        do {
            let host = try HostCPU.offer(kvmDevice: options.machine.kvmDevice, deny: options.machine.cpuidDeny, vcpuCount: desc.cpus)
            let missing = CPUIDPolicy.missing(guest: CPUIDPolicy.featureWords(desc.cpuid), host: CPUIDPolicy.featureWords(host))
            if !missing.isEmpty {
                out.append("the target CPU lacks features the guest uses: CPUID \(missing.prefix(8).joined(separator: ", "))\(missing.count > 8 ? " …" : "")")
            }
        } catch { out.append("\(error)") }
        if let tsc = tscProblem(desc, options) { out.append(tsc) }
        if options.replay != nil && desc.channels > 1 && !desc.handover {
            out.append("the stream was sent over \(desc.channels) connections and only its first was captured: capture one sent with --connections 1")
        }
        if desc.handover { return out + TargetHandover.reasons(desc, options) }
        return out + options.machine.deviceProblems(desc)
            + DiskCopyTarget.problems(desc.storage, disks: options.machine.disks, command: options.machine.command,
                                      present: Set(MirrorCheck.present(desc.mirrors, disks: options.machine.disks)))
            + MirrorCheck.problems(desc.mirrors, disks: options.machine.disks)
    }

    /// Why this host cannot take a guest with this TSC rate, if it cannot (unless allowed).
    static func tscProblem(_ desc: MachineDescription, _ options: ReceiveOptions) -> String? {
        let decision: TSCRate.Decision
        do { decision = try TSCRate.decide(guestKHz: desc.tscKHz, kvmDevice: options.machine.kvmDevice) } catch { return "\(error)" }
        guard case .mismatch(let guest, let host) = decision else { return nil }
        if options.allowTSCMismatch {
            FileHandle.standardError.write(Data("swiftvmm: warning: the guest's TSC runs at \(TSCRate.format(guest)), this host's at \(TSCRate.format(host)) and KVM here cannot scale it; accepted (--allow-tsc-mismatch): the guest's clock will drift\n".utf8))
            return nil
        }
        return "TSC rate differs: the guest's runs at \(TSCRate.format(guest)), this host's at \(TSCRate.format(host)), and KVM here cannot scale it (no KVM_CAP_TSC_CONTROL); \(options.machine.command) --allow-tsc-mismatch accepts it anyway"
    }

    /// A dry run: every check, then the machine built paused and torn down; the verdict goes
    /// to the source and into `status`, and the target waits for the next source.
    static func dryRun(_ desc: MachineDescription, _ s: TargetSession) throws {
        var reasons = reasons(desc, s.options)
        if reasons.isEmpty && !desc.handover {
            // A copied volume's file does not exist yet: what writing it needs is checked, and
            // the machine is built on an in-memory stand-in.
            var machine = s.options.machine
            let present = Set(MirrorCheck.present(desc.mirrors, disks: machine.disks))
            let (copies, problems) = DiskCopyRehearsal.run(desc.storage, disks: machine.disks, present: present)
            reasons += problems
            machine.disks = copies.apply(to: machine.disks)
            if reasons.isEmpty {
                do { try machine.build(desc).tearDown(.internalError("dry run")) } catch { reasons.append("\(error)") }
            }
            withExtendedLifetime(copies) {}
        }
        let verdict = DryRunVerdict(eligible: reasons.isEmpty, reasons: reasons)
        try s.conn().send(verdict)
        let line = reasons.isEmpty ? "eligible" : "not eligible: " + reasons.joined(separator: "; ")
        FileHandle.standardError.write(Data("swiftvmm: dry run from \(desc.name): \(line)\n".utf8))
        s.progress.update { $0.dryRuns += 1; $0.lastDryRun = line }
        throw DryRunAnswered()
    }

    func rollback(_ s: TargetSession) {
        // Nothing ran here: tear the half-built machine down.
        for c in s.channelConnections { c.close() }
        s.vm?.tearDown(.internalError("migration failed"))
        s.vm = nil
        s.diskCopy?.discard()
    }
}

/// Memory rounds, then the machine state; `ready` once it is loaded.
final class TargetReceive: MigrationStep {
    var phase: MigrationPhase { .receiving }

    func run(_ s: TargetSession) throws {
        let conn = try s.conn()
        let vm = try s.machine()
        let decoder = PageDecoder(memory: vm.memory)
        let populator = Populator(memory: vm.memory)
        defer { populator.stop() }
        let channels = s.channelConnections.isEmpty ? nil
            : ChannelReceivers(connections: s.channelConnections, memory: vm.memory, populator: populator, main: conn)
        s.channels = channels
        defer { channels?.stop() }
        var round = 0
        var faulted = Set<Bool>()
        while true {
            let section: Section
            do { section = try conn.receive(applying: decoder) } catch {
                // A data connection that failed stopped this one's reads: its reason is the one.
                if let failure = channels?.failure { throw failure }
                throw error
            }
            switch section.type {
            case .pages:
                if round == 0 { populator.follow(section.payload) }
                if faulted.insert(round > 0).inserted { Faults.hit(round > 0 ? .midRoundN : .midRound0, .target, conn) }
                let c = decoder.counters
                let (wire, placed) = (channels?.wireBytes ?? 0, channels?.pagesPlaced ?? 0)
                s.progress.update {
                    $0.wireBytes = c.wireBytes + wire
                    if $0.round == 0 { $0.memoryCovered = UInt64(c.dataPages + c.zeroPages + placed) * UInt64(PageBatch.pageSize) }
                }
            case .roundEnd:
                round = try endRound(try section.message(RoundEnd.self), s, conn, populator)
            case .diskBlocks:
                try s.applyDiskRun(section.payload)
            case .progress:
                if let p = try? section.message(RoundProgress.self) {
                    s.progress.update {
                        $0.dirtyPagesPerSecond = p.dirtyPagesPerS
                        $0.throttlePercent = p.throttlePercent
                        $0.rateBytesPerSecond = p.bandwidthMBps * 1e6
                    }
                }
            case .state:
                try loadState(section, s, vm, conn)
                return
            default:
                try Connection.raiseIfAbort(section)
                throw MigrationError.stream("unexpected \(section.type.name) section during transfer")
            }
        }
    }
}

extension TargetReceive {
    /// A round's end: once every page of it is in place, acknowledged. Returns the next round.
    func endRound(_ end: RoundEnd, _ s: TargetSession, _ conn: Connection, _ populator: Populator) throws -> Int {
        // Every data connection's share of the round is in place before it is acknowledged.
        if end.firstOnly != true { try s.channels?.waitForRound(end.round, cancellation: s.cancellation) }
        // Memory slots must exist before the stop-and-copy: wait for them here, in
        // pre-copy, so the guest's downtime never does.
        try s.slots?.wait()
        try s.diskCopy?.sync()
        populator.stop()
        try conn.send(RoundAck())
        s.progress.update {
            $0.round = end.round + 1
            if end.round == 0 { $0.memoryCovered = $0.memoryBytes }
        }
        return end.round + 1
    }

    /// The machine state: decoded, loaded, the copied disks flushed, then `ready`.
    func loadState(_ section: Section, _ s: TargetSession, _ vm: VM, _ conn: Connection) throws {
        s.progress.update { $0.phase = .stopAndCopy }
        let loadStart = Clock.monotonic()
        try s.slots?.wait()
        let node: StateNode
        do { node = try FDTCodec.decode(section.payload) } catch { throw MigrationError.stream("machine state: \(error)") }
        do { try vm.restoreMachineState(node) } catch { throw MigrationError.machine("cannot load the machine state: \(error)") }
        try s.cancellation.check()
        Faults.hit(.afterState, .target, conn)
        let loadMs = (Clock.monotonic() - loadStart) * 1000
        try conn.send(Ready(diskHashes: try s.diskCopy?.finish(), stateLoadMs: loadMs))
        s.holdsCompleteCopy = true
        Faults.hit(.afterReady, .target, conn)
    }
}

/// Wait for the commit; then the guest runs here.
final class TargetHandOff: MigrationStep {
    var phase: MigrationPhase { .handoff }

    func run(_ s: TargetSession) throws {
        let conn = try s.conn()
        let go: Go
        do { go = try conn.expect(Go.self) } catch {
            try holdIfInDoubt(s, error)
            throw error
        }
        Faults.hit(.afterGo, .target, conn)
        if let claim = s.claim, !claim.takeForTarget() { throw MigrationError.cancelled("the source took the guest back") }
        // Committed by the source: from here on the guest runs here.
        let resumeStart = Clock.monotonic()
        try s.resumeGuest()
        let resumeMs = (Clock.monotonic() - resumeStart) * 1000
        Faults.hit(.beforeRunning, .target, conn)
        try? conn.send(Running(resumedAtNs: s.resumedAtNanos, resumeMs: resumeMs))
        // The source's pause time came with `go`: the downtime as this side saw it.
        let resumed = s.resumedAtNanos
        s.progress.update {
            $0.phase = .completed
            if go.pausedAtNs > 0 && resumed > go.pausedAtNs {
                $0.predictedDowntimeMs = Double(resumed - go.pausedAtNs) / 1e6
                $0.warning = Self.downtimeWarning(go, downtimeMs: $0.predictedDowntimeMs)
            }
        }
        conn.close()
        s.connection = nil
    }

    /// The source's parts came with `go`; the rest of the downtime is `go` on the wire and the
    /// resume here.
    static func downtimeWarning(_ go: Go, downtimeMs: Double) -> String? {
        guard let target = go.downtimeTargetMs, var parts = go.downtime else { return nil }
        parts.resumeMs = max(0, downtimeMs - parts.parts.filter { $0.key != "resume" }.reduce(0) { $0 + $1.ms })
        return parts.warning(downtimeMs: downtimeMs, targetMs: target)
    }

    /// `ready` was sent and `go` did not come. A source that said why (cancel, error) has not
    /// committed: everything is discarded. Silence or a broken connection could hide a `go`
    /// already sent: the paused copy stays, for the operator.
    private func holdIfInDoubt(_ s: TargetSession, _ error: Error) throws {
        switch error as? MigrationError {
        case .cancelled?, .peer?: return
        default: break
        }
        guard !s.cancellation.isCancelled else { return }
        s.inDoubt = true
        throw MigrationError.inDoubt("the source's `go` never came after `ready` (\(error)); the guest's complete state is paused here — resume it here (swiftvmm cont) only if the source does not run it, else stop it (swiftvmm quit)")
    }
}

/// What the host has to offer in memory.
enum HostMemory {
    /// MemAvailable from /proc/meminfo.
    static func available() -> UInt64? {
        guard let text = readWholeFile("/proc/meminfo") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let parts = line.split(separator: " ")
            if parts.count >= 2, let kb = UInt64(parts[1]) { return kb * 1024 }
        }
        return nil
    }
}
