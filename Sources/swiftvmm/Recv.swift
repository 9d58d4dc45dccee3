import ArgumentParser
import Control
import Glibc
import Machine
import Migration

struct Recv: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive one live migration, then run the guest like `run`.",
        discussion: """
        One-shot: listens until one source connects, checks it can host the guest (memory, vCPUs, \
        CPU features, volumes by name), builds the machine paused, loads memory and state, and \
        resumes the guest only once the source commits. Disks are matched by volume name: the \
        path on this host may differ from the source's.
        """)

    @Option(help: ArgumentHelp("Where to listen.", valueName: "tcp:HOST:PORT|unix:PATH"))
    var listen: String?

    @Option(help: ArgumentHelp("Instead of listening, load the guest from a captured migration stream (the source's half of an unsealed stream, as `inspect` reads it).", valueName: "FILE"))
    var replay: String?

    @Option(help: "Name of the received VM (default: the source's name).")
    var name: String?

    @Option(help: ArgumentHelp("Pre-shared key; the source must present the same one, and the whole stream is sealed with it.", valueName: "FILE"))
    var keyFile: String?

    @Option(help: ArgumentHelp("Give up when the source, once connected, makes no progress for this many seconds (0: never).", valueName: "S"))
    var timeout: Double = 30

    @Flag(help: "Accept a guest whose TSC rate differs from this host's when KVM here cannot scale it (the guest's clock will run at this host's rate).")
    var allowTSCMismatch = false

    @Option(help: ArgumentHelp("Refuse a guest whose memory size differs.", valueName: "SIZE"))
    var memory: String?

    @Option(help: "Refuse a guest whose vCPU count differs.")
    var cpus: Int?

    @OptionGroup var devices: DeviceOptions
    @OptionGroup var console: ConsoleOptions
    @OptionGroup var hostCPU: HostCPUOptions
    @OptionGroup var confinement: ConfinementOptions

    func run() throws {
        try hostCPU.validate()
        guard (listen == nil) != (replay == nil) else { throw fail("recv needs exactly one of --listen and --replay") }
        let endpoint: Endpoint
        do { endpoint = try Endpoint.parse(listen ?? "unix:/nonexistent") } catch { throw fail("--listen \(error)") }
        if keyFile == nil && !endpoint.isLocal { warnUnauthenticated(endpoint) }
        let machine = TargetMachineBuilder(name: name, serial: try console.sink(), disks: try devices.disks(), nics: try devices.nics(),
                                           cpuidDeny: hostCPU.cpuFeatureDeny, kvmDevice: hostCPU.kvmDevice)
        var options = ReceiveOptions(endpoint: endpoint, machine: machine)
        options.replay = replay
        options.allowTSCMismatch = allowTSCMismatch
        do { options.key = try keyFile.map(Auth.loadKey) } catch { throw fail("\(error)") }
        if let m = memory {
            guard let size = ByteSize.parse(m), size > 0 else { throw fail("--memory '\(m)' is not a size") }
            options.expectMemory = size
        }
        if let c = cpus, c < 1 { throw fail("--cpus must be at least 1") }
        guard timeout >= 0 else { throw fail("--timeout must be 0 (never) or more") }
        options.timeout = timeout > 0 ? timeout : nil
        options.expectCPUs = cpus
        let target = MigrationTarget(options: options)
        do { try target.listen() } catch { throw fail("\(error)") }
        let controller = MachineController(name: name ?? "recv", vm: nil)
        controller.target = target
        defer { controller.finish() }
        let server = try console.apiSocket.map { try startControlServer(path: $0, controller: controller) }
        defer { server?.stop() }
        // Ctrl-C while waiting or receiving cancels; the source resumes its guest.
        Signals.shared.onTerminate { _ in target.cancel("recv was interrupted") }
        try confinement.lockDown()
        Confinement.confineThread(.migration)
        note(replay.map { "loading the guest from \($0)" } ?? "waiting for a migration on \(endpoint)")
        let vm: VM
        do { vm = try target.run() } catch MigrationError.inDoubt(let why) {
            guard let held = target.heldMachine else { throw fail("incoming migration failed: \(why)") }
            note("migration outcome unknown: \(why)")
            controller.vm = held
            let status = runUntilStopped(held, controller: controller, alreadyStarted: true)
            target.keptDiskCopies.forEach(note)
            throw ExitCode(status)
        } catch {
            throw fail("incoming migration failed: \(error)")
        }
        controller.vm = vm
        note("guest '\(vm.config.name)' received and running (from swiftvmm \(target.description?.vmmVersion ?? "?"); this is swiftvmm \(SwiftVMMVersion.string))")
        throw ExitCode(runUntilStopped(vm, controller: controller, alreadyStarted: true))
    }
}
