import KVM

/// Errors building or running a machine, each one line naming the problem.
public enum VMError: Error, CustomStringConvertible {
    case kvm(KVMError)
    case memory(MemoryError)
    case layout(MemoryMap.LayoutError)
    case config(String)
    case boot(String)
    case state(StateError)

    public var description: String {
        switch self {
        case .kvm(let e): return e.description
        case .memory(let e): return e.description
        case .layout(let e): return e.description
        case .config(let s), .boot(let s): return s
        case .state(let e): return e.description
        }
    }
}

/// A whole machine: the KVM VM, guest memory, the platform (vCPUs, irqchip, PIT, clock), the
/// devices, and the threads that run the vCPUs. Built paused; `start()` runs it.
public final class VM: @unchecked Sendable {
    public let config: VMConfig
    public let hypervisor: Hypervisor
    let kvm: VirtualMachine
    public let memory: GuestMemory
    public let devices: DeviceManager
    public let serial: Serial
    /// The vCPUs, in id order.
    public let cpus: [VirtualCPU]
    let runner: VCPURunner
    let irqchip: InterruptControllers
    let pit: ProgrammableIntervalTimer
    let clock: GuestClock
    /// The guest TSC rate in kHz, read once at creation (a vCPU ioctl waits while it runs).
    public let tscKHz: UInt32

    public static let tssAddress: UInt64 = 0xfffb_d000
    public static let identityMapAddress: UInt64 = 0xfffb_c000

    /// Builds the machine — memory, irqchip, PIT, vCPUs, platform devices and the configured
    /// disks and NICs — with every vCPU stopped.
    public init(config: VMConfig, hypervisor: Hypervisor? = nil) throws(VMError) {
        try config.validate()
        self.config = config
        let map: MemoryMap
        do { map = try MemoryMap(memorySize: config.memorySize) } catch { throw .layout(error) }
        let hv: Hypervisor
        if let hypervisor { hv = hypervisor } else {
            do { hv = try Hypervisor(path: config.kvmDevice) } catch { throw .kvm(error) }
        }
        self.hypervisor = hv
        let recommended = hv.check(.maxVCPUs)
        if recommended > 0 && config.cpus > recommended {
            throw .config("--cpus \(config.cpus) exceeds KVM's limit of \(recommended) vCPUs")
        }
        do {
            try hv.require([.irqchip, .userMemory, .pit2, .ioeventfd, .irqfd])
            kvm = try hv.createVM()
        } catch { throw .kvm(error) }
        // Migration clears the dirty log in chunks without stalling the guest.
        kvm.enableManualDirtyLogProtect()
        do { memory = try GuestMemory(map: map, file: config.memoryFile, backend: config.memoryBackend) } catch { throw .memory(error) }
        // Guest RAM goes to KVM before the irqchip exists: a memory slot made after it waits
        // for a grace period its creation began (4–10 ms measured on a nested host, against
        // ~0.15 ms plus ~0.45 ms per GiB before it).
        if !config.deferMemorySlots { try Self.registerSlots(kvm, memory) }
        do {
            try kvm.setTSSAddress(Self.tssAddress)
            try kvm.setIdentityMapAddress(Self.identityMapAddress)
            try kvm.createIRQChip()
            try kvm.createPIT2()
        } catch { throw .kvm(error) }
        cpus = try Self.createCPUs(kvm, hv, config)
        irqchip = InterruptControllers(kvm: kvm)
        pit = ProgrammableIntervalTimer(kvm: kvm)
        clock = GuestClock(kvm: kvm)
        tscKHz = cpus[0].vcpu.tscKHz()
        devices = DeviceManager(kvm: kvm, memory: memory)
        runner = VCPURunner(vcpus: cpus.map(\.vcpu), pio: devices.pio, mmio: devices.mmio, memory: memory)
        serial = Serial(sink: config.serial, irq: KVMInterruptLine(vm: kvm, gsi: 4))
        try devices.addPlatformDevices(serial: serial, stopper: runner)
        do {
            for d in config.disks { try devices.addDisk(d) }
            for n in config.nics { try devices.addNIC(n, vmName: config.name) }
        } catch {
            devices.shutdown()
            throw error
        }
    }

    /// One vCPU per `config.cpus`, each with its CPUID table and firmware-like LAPIC.
    private static func createCPUs(_ kvm: VirtualMachine, _ hv: Hypervisor, _ config: VMConfig) throws(VMError) -> [VirtualCPU] {
        do {
            let base = try HostCPU.offer(hv, model: config.cpuModel, deny: config.cpuidDeny, replacing: config.cpuidTable)
            var vcpus: [VCPU] = []
            var tables: [[CPUIDEntry]] = []
            for id in 0..<config.cpus {
                let v = try kvm.createVCPU(id: UInt32(id))
                if let khz = config.tscKHz { try v.setTSCKHz(khz) }
                let table = CPUIDPolicy.table(supported: base, vcpuID: UInt32(id), vcpuCount: config.cpus)
                try v.setCPUID(table)
                try X86BootCPU.configureLAPIC(v)
                vcpus.append(v)
                tables.append(table)
            }
            var msrs = vcpus[0].readableMSRs(try hv.msrIndexList())
            if !config.cpuModel.isHost { msrs = msrs.filter(PortableMSRs.contains) }
            return zip(vcpus, tables).map { VirtualCPU(vcpu: $0, msrIndices: msrs, cpuid: $1) }
        } catch let e as VMError { throw e } catch let e as KVMError { throw .kvm(e) } catch { throw .config("\(error)") }
    }

    private static func registerSlots(_ kvm: VirtualMachine, _ memory: GuestMemory) throws(VMError) {
        do {
            for r in memory.regions {
                try kvm.setMemoryRegion(slot: r.slot, guestAddress: r.start.raw, size: r.size, host: r.host, logDirty: false)
            }
        } catch { throw .kvm(error) }
    }

    /// Gives guest RAM to KVM (after building with `deferMemorySlots`).
    public func registerMemorySlots() throws(VMError) { try Self.registerSlots(kvm, memory) }

    /// The CPUID table each vCPU was given (index = vCPU id).
    public var cpuid: [[CPUIDEntry]] { cpus.map(\.cpuid) }

    // MARK: boot

    /// Writes a boot plan into guest memory and points the boot vCPU at its entry.
    public func load(_ plan: BootPlan) throws(VMError) {
        for w in plan.writes {
            do { try memory.write(w.bytes, at: w.address) } catch {
                throw .boot("boot data at \(w.address) (\(w.bytes.count) bytes) does not fit in guest memory")
            }
        }
        do { try X86BootCPU.enter(cpus[0].vcpu, at: plan.entry) } catch { throw .kvm(error) }
    }

    // MARK: running (see `VCPURunner`)

    /// Starts the vCPU threads. With `paused`, they wait for `resume()` before the guest runs
    /// (a migration target).
    public func start(paused: Bool = false) {
        runner.start(paused: paused)
        if !paused { beginMirrorSyncs() }
    }
    /// `waitForStop()` for at most `timeout` s; nil when the machine still runs.
    public func waitForStop(timeout: Double) -> StopReason? { runner.waitForStop(timeout: timeout) }
    /// Blocks until the machine stops, then returns why. vCPU threads have all left by then.
    public func waitForStop() -> StopReason { runner.waitForStop() }
    public var stopReason: StopReason? { runner.stopReason }
    /// Stops the machine for `reason` (the first reason wins).
    public func stop(_ reason: StopReason) { runner.stop(reason) }
    /// Pauses every vCPU at a safe point; false if the machine stopped instead.
    @discardableResult
    public func pause() -> Bool { runner.pause() }
    public func resume() {
        runner.resume()
        beginMirrorSyncs()
    }

    /// When a vCPU first ran again after the last `resume()` (CLOCK_REALTIME, ns), waiting
    /// at most `timeout` s; nil when none did.
    public func firstRunAfterResume(timeout: Double) -> UInt64? { runner.firstRunAfterResume(timeout: timeout) }

    /// Once the guest runs here, each mirror's first sync compares it with its disk.
    private func beginMirrorSyncs() { for d in devices.disks { d.mirror?.beginInitialSync() } }
    public var isPaused: Bool { runner.isPaused }

    /// Holds the machine still for a capture of its state (a migration's stop-and-copy, a save,
    /// a state dump): vCPUs paused at a safe point, then every device quiesced with no request
    /// in flight. False when the machine stopped instead.
    public func freeze() -> Bool {
        guard pause() else { return false }
        devices.quiesce()
        return true
    }

    /// Undoes `freeze()`: devices first, then — unless `resume` is false (a guest its user had
    /// paused stays paused) — the vCPUs.
    public func thaw(resume: Bool = true) {
        devices.unquiesce()
        if resume { self.resume() }
    }
    /// Calls `observer` whenever the guest pauses, resumes or stops (see `VCPURunner.observe`).
    public func observeRunState(_ observer: @escaping @Sendable (VCPURunner.RunStateChange) -> Void) { runner.observe(observer) }
    /// The kernel thread id of each vCPU's thread (0 when it is not running).
    public var vcpuThreadIDs: [Int32] { runner.threadIDs }
    /// Makes each vCPU sleep `percent` % of the time (migration's auto-converge).
    public func setThrottle(percent: Int) { runner.setThrottle(percent: percent) }
    public var throttlePercent: Int { runner.throttlePercent }

    /// Stops the machine if it still runs and the device threads with it (a process that keeps
    /// going after discarding a machine).
    public func tearDown(_ reason: StopReason) {
        stop(reason)
        devices.shutdown()
    }
}
