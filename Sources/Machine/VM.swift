import CKVM
import Foundation
import Glibc
import KVM
import Synchronization

/// Why a machine stopped running.
public enum StopReason: Sendable, Equatable {
    case guest(GuestStopRequest)
    /// A vCPU shut down (triple fault); the message names the vCPU and RIP.
    case tripleFault(String)
    /// KVM could not run the guest (emulation failure, entry failure, unexpected exit).
    case internalError(String)
    /// A signal (SIGINT, SIGTERM) stopped the VMM.
    case signal(Int32)
    /// The guest now runs elsewhere: a migration committed.
    case migrated
}

/// What `VM` needs to build a machine.
public struct VMConfig: Sendable {
    public var name: String
    public var memorySize: UInt64
    public var cpus: Int
    public var serial: any SerialSink
    /// Feature bits removed from what this host offers (`LEAF.SUB.REG:BIT`).
    public var cpuidDeny: [String]
    /// The KVM device node.
    public var kvmDevice: String

    public init(name: String = "swiftvmm", memorySize: UInt64 = 256 << 20, cpus: Int = 1,
                serial: any SerialSink = FileDescriptorSink(fd: 1), cpuidDeny: [String] = [],
                kvmDevice: String = "/dev/kvm") {
        self.name = name; self.memorySize = memorySize; self.cpus = cpus
        self.serial = serial; self.cpuidDeny = cpuidDeny; self.kvmDevice = kvmDevice
    }
}

/// Errors building or running a machine, each one line naming the problem.
public enum VMError: Error, CustomStringConvertible {
    case kvm(KVMError)
    case memory(MemoryError)
    case layout(MemoryMap.LayoutError)
    case config(String)
    case boot(String)

    public var description: String {
        switch self {
        case .kvm(let e): return e.description
        case .memory(let e): return e.description
        case .layout(let e): return e.description
        case .config(let s), .boot(let s): return s
        }
    }
}

/// The signal used to kick vCPU threads out of KVM_RUN.
let kickSignal = SIGUSR2

/// A whole machine: KVM VM, guest memory, buses, devices, and one thread per vCPU that can be
/// paused and resumed at a safe point.
public final class VM: @unchecked Sendable, StopRequester {
    public let config: VMConfig
    public let hypervisor: Hypervisor
    public let kvm: VirtualMachine
    public let memory: GuestMemory
    public let pio = Bus(name: "pio")
    public let mmio = Bus(name: "mmio")
    public let vcpus: [VCPU]
    /// The CPUID table each vCPU was given (index = vCPU id).
    public let cpuid: [[CPUIDEntry]]
    /// MSRs saved and restored with each vCPU.
    public let msrIndices: [UInt32]
    public let serial: Serial
    /// The guest TSC rate in kHz, read once at creation (a vCPU ioctl waits while it runs).
    public let tscKHz: UInt32

    /// Control state shared by vCPU threads and the controller, under `lock`.
    struct Control {
        var pauseRequested = false
        var parked = 0
        var running = 0
        var stop: StopReason?
        var threads: [pthread_t?] = []
        /// Fraction (0…99 %) of each slice a vCPU sleeps (migration's auto-converge).
        var throttlePercent = 0
    }
    private let lock = NSCondition()
    private var control = Control()
    private let deviceList = Mutex<[any MigratableDevice]>([])

    public static let tssAddress: UInt64 = 0xfffb_d000
    public static let identityMapAddress: UInt64 = 0xfffb_c000

    /// Builds the machine (memory, irqchip, PIT, vCPUs, base devices), not yet running.
    /// `cpuidTable` replaces the host-derived table (a migration target uses the source's).
    /// With `deferMemorySlots`, guest RAM exists in this process but is not yet given to KVM:
    /// call `registerMemorySlots()` before the vCPUs run (a migration target does that while
    /// pages arrive, since creating a large slot takes milliseconds).
    public init(config: VMConfig, hypervisor: Hypervisor? = nil, cpuidTable: [CPUIDEntry]? = nil,
                deferMemorySlots: Bool = false) throws(VMError) {
        guard config.cpus >= 1 else { throw .config("--cpus must be at least 1") }
        guard config.cpus <= 254 else { throw .config("--cpus \(config.cpus) is more than the 254 swiftvmm supports") }
        let map: MemoryMap
        do { map = try MemoryMap(memorySize: config.memorySize) } catch { throw .layout(error) }
        do {
            let hv = try hypervisor ?? Hypervisor(path: config.kvmDevice)
            self.hypervisor = hv
            self.config = config
            let recommended = hv.check(Int32(KVM_CAP_MAX_VCPUS))
            if recommended > 0 && config.cpus > recommended {
                throw VMError.config("--cpus \(config.cpus) exceeds KVM's limit of \(recommended) vCPUs")
            }
            for (cap, name) in [(KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"), (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
                                (KVM_CAP_PIT2, "KVM_CAP_PIT2"), (KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"),
                                (KVM_CAP_IRQFD, "KVM_CAP_IRQFD")] where hv.check(Int32(cap)) == 0 {
                throw VMError.kvm(.missingCapability(name))
            }
            kvm = try hv.createVM()
            try kvm.setTSSAddress(Self.tssAddress)
            try kvm.setIdentityMapAddress(Self.identityMapAddress)
            try kvm.createIRQChip()
            try kvm.createPIT2()
            // Manual dirty-log protect: migration clears the log in chunks without stalling the guest.
            if hv.check(Int32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) & 1 != 0 {
                try? kvm.enableCapability(UInt32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2),
                                          args: [UInt64(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)])
            }
            do { memory = try GuestMemory(map: map) } catch { throw VMError.memory(error) }
            if !deferMemorySlots {
                for r in memory.regions {
                    try kvm.setMemoryRegion(slot: r.slot, guestAddress: r.start.raw, size: r.size, host: r.host, logDirty: false)
                }
            }
            var base = try cpuidTable ?? hv.supportedCPUID()
            if !config.cpuidDeny.isEmpty {
                do { base = try CPUIDPolicy.deny(config.cpuidDeny, in: base) } catch { throw VMError.config(error.description) }
            }
            var vcpus: [VCPU] = []
            var tables: [[CPUIDEntry]] = []
            for id in 0..<config.cpus {
                let v = try kvm.createVCPU(id: UInt32(id))
                let table = CPUIDPolicy.table(supported: base, vcpuID: UInt32(id), vcpuCount: config.cpus)
                try v.setCPUID(table)
                try Self.setupLAPIC(v)
                vcpus.append(v)
                tables.append(table)
            }
            self.vcpus = vcpus
            self.cpuid = tables
            self.msrIndices = vcpus[0].readableMSRs(try hv.msrIndexList())
            self.tscKHz = vcpus[0].tscKHz()
        } catch let e as VMError {
            throw e
        } catch let e as KVMError {
            throw .kvm(e)
        } catch {
            throw .config("\(error)")
        }
        serial = Serial(sink: config.serial, irq: KVMInterruptLine(vm: kvm, gsi: 4))
        control.threads = Array(repeating: nil, count: config.cpus)
        do {
            try pio.register(serial, base: 0x3f8, length: 8)
            try pio.register(DebugExit(stopper: self), base: DebugExit.port, length: 4)
            try pio.register(I8042(stopper: self), base: I8042.base, length: 5)
            try pio.register(CMOS(), base: CMOS.base, length: 2)
        } catch { throw .config(error.description) }
        addDevice(serial)
    }

    /// LINT0 as ExtINT and LINT1 as NMI: the virtual-wire setup firmware leaves behind.
    static func setupLAPIC(_ v: VCPU) throws(KVMError) {
        var l = try v.lapic()
        withUnsafeMutableBytes(of: &l.regs) { p in
            let lint0 = p.load(fromByteOffset: 0x350, as: UInt32.self)
            p.storeBytes(of: (lint0 & ~0x700) | (7 << 8), toByteOffset: 0x350, as: UInt32.self)
            let lint1 = p.load(fromByteOffset: 0x360, as: UInt32.self)
            p.storeBytes(of: (lint1 & ~0x700) | (4 << 8), toByteOffset: 0x360, as: UInt32.self)
        }
        try v.setLAPIC(l)
    }

    /// Gives guest RAM to KVM (after `init(deferMemorySlots: true)`).
    public func registerMemorySlots() throws(VMError) {
        do {
            for r in memory.regions {
                try kvm.setMemoryRegion(slot: r.slot, guestAddress: r.start.raw, size: r.size, host: r.host, logDirty: false)
            }
        } catch { throw .kvm(error) }
    }

    // MARK: devices

    /// Devices whose state migrates, in the order they were added (the order both sides use).
    public var devices: [any MigratableDevice] { deviceList.withLock { $0 } }

    /// Adds a device to the migratable set.
    public func addDevice(_ device: any MigratableDevice) {
        deviceList.withLock { $0.append(device) }
    }

    /// Index the next virtio-mmio device takes (its window and IRQ follow from it).
    public var nextVirtioIndex: Int {
        deviceList.withLock { list in list.filter { $0.stateName.hasPrefix("virtio") }.count }
    }

    /// Stops every device and waits for in-flight requests (vCPUs must already be paused).
    public func quiesceDevices() { for d in devices { d.quiesce() } }

    public func unquiesceDevices() { for d in devices { d.unquiesce() } }

    // MARK: boot

    /// Writes a boot plan into guest memory and points the boot vCPU at its entry.
    public func load(_ plan: BootPlan) throws(VMError) {
        for w in plan.writes {
            do { try memory.write(w.bytes, at: w.address) } catch { throw .boot("boot data at \(w.address) (\(w.bytes.count) bytes) does not fit in guest memory") }
        }
        do { try setBootRegisters(plan.entry) } catch { throw .kvm(error) }
    }

    func setBootRegisters(_ entry: BootEntry) throws(KVMError) {
        let v = vcpus[0]
        var s = try v.specialRegisters()
        var r = kvm_regs()
        r.rflags = 0x2
        func segment(selector: UInt16, code: Bool, long: Bool) -> kvm_segment {
            var seg = kvm_segment()
            seg.base = 0
            seg.limit = 0xffff_ffff
            seg.selector = selector
            seg.type = code ? 0xb : 0x3
            seg.present = 1
            seg.dpl = 0
            seg.db = long ? 0 : 1
            seg.s = 1
            seg.l = long ? 1 : 0
            seg.g = 1
            return seg
        }
        switch entry {
        case .pvh(let entry, let startInfo):
            s.cs = segment(selector: BootLayout.code32Selector, code: true, long: false)
            let data = segment(selector: BootLayout.dataSelector, code: false, long: false)
            s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
            s.cr0 = 0x11          // PE | ET
            s.cr4 = 0
            s.efer = 0
            s.gdt.base = BootLayout.gdtAddress.raw
            s.gdt.limit = BootLayout.gdtLimit
            r.rip = UInt64(entry)
            r.rbx = UInt64(startInfo)
            r.rsp = BootLayout.bootStackPointer.raw
        case .linux64(let entry, let bootParams, let pml4, let gdtBase, let gdtLimit):
            s.cs = segment(selector: BootLayout.code64Selector, code: true, long: true)
            let data = segment(selector: BootLayout.dataSelector, code: false, long: false)
            s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
            s.gdt.base = gdtBase
            s.gdt.limit = gdtLimit
            s.cr3 = pml4
            s.cr4 = 0x20          // PAE
            s.cr0 = 0x8000_0011   // PG | ET | PE
            s.efer = 0x500        // LME | LMA
            r.rip = entry
            r.rsi = bootParams
            r.rsp = BootLayout.bootStackPointer.raw
            r.rbp = BootLayout.bootStackPointer.raw
        }
        try v.setSpecialRegisters(s)
        try v.setRegisters(r)
        var fpu = kvm_fpu()
        fpu.fcw = 0x37f
        fpu.mxcsr = 0x1f80
        try v.setFPU(fpu)
    }

    // MARK: running

    /// Starts one thread per vCPU. With `paused`, the threads wait for `resume()` before the
    /// guest runs (a migration target).
    public func start(paused: Bool = false) {
        _ = ckvm_install_kick_signal(kickSignal)
        lock.lock()
        control.pauseRequested = paused
        control.running = vcpus.count
        lock.unlock()
        for v in vcpus {
            let t = Thread { [self] in self.vcpuLoop(v) }
            t.name = "vcpu\(v.id)"
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// Blocks until the machine stops, then returns why. vCPU threads have all left by then.
    public func waitForStop() -> StopReason {
        lock.lock()
        defer { lock.unlock() }
        while control.stop == nil || control.running > 0 { lock.wait() }
        return control.stop ?? .internalError("stopped without a reason")
    }

    /// The reason the machine stopped, if it has.
    public var stopReason: StopReason? {
        lock.lock(); defer { lock.unlock() }
        return control.stop
    }

    /// Stops the machine for `reason` (the first reason wins).
    public func stop(_ reason: StopReason) {
        lock.lock()
        if control.stop == nil { control.stop = reason }
        lock.broadcast()
        lock.unlock()
        kickAll()
    }

    public func requestStop(_ request: GuestStopRequest) { stop(.guest(request)) }

    /// Pauses every vCPU at a safe point (any pending I/O completed) and returns when all are
    /// parked. Returns false if the machine stopped instead.
    @discardableResult
    public func pause() -> Bool {
        lock.lock()
        control.pauseRequested = true
        lock.broadcast()
        lock.unlock()
        kickAll()
        lock.lock()
        defer { lock.unlock() }
        while control.parked < control.running && control.stop == nil { lock.wait() }
        return control.stop == nil
    }

    /// Lets paused vCPUs run again.
    public func resume() {
        lock.lock()
        control.pauseRequested = false
        lock.broadcast()
        lock.unlock()
    }

    public var isPaused: Bool {
        lock.lock(); defer { lock.unlock() }
        return control.pauseRequested && control.parked == control.running
    }

    /// Makes each vCPU sleep `percent` % of the time (0 turns throttling off). A ticker thread
    /// kicks the vCPUs out of the guest every 10 ms while throttling is on, so even a guest that
    /// never exits is slowed down.
    public func setThrottle(percent: Int) {
        lock.lock()
        let startTicker = control.throttlePercent == 0 && percent > 0
        control.throttlePercent = max(0, min(99, percent))
        lock.broadcast()
        lock.unlock()
        if startTicker {
            let t = Thread { [self] in
                while self.throttlePercent > 0 && self.stopReason == nil {
                    usleep(10_000)
                    self.kickAll()
                }
            }
            t.name = "throttle"
            t.start()
        }
    }

    public var throttlePercent: Int {
        lock.lock(); defer { lock.unlock() }
        return control.throttlePercent
    }

    /// Interrupts every vCPU's KVM_RUN.
    func kickAll() {
        lock.lock()
        let threads = control.threads
        lock.unlock()
        for v in vcpus { v.setImmediateExit(true) }
        for case let t? in threads { _ = ckvm_pthread_kill(t, kickSignal) }
    }

    /// Sleeps for a throttle slice unless a pause or stop comes first; true means leave.
    private func checkpointSleep(_ v: VCPU, microseconds: Double) -> Bool {
        lock.lock()
        let deadline = Date().addingTimeInterval(microseconds / 1e6)
        while control.stop == nil && !control.pauseRequested && control.throttlePercent > 0 && Date() < deadline {
            _ = lock.wait(until: deadline)
        }
        lock.unlock()
        return checkpoint(v)
    }

    /// Returns true when the thread should leave; parks while paused.
    private func checkpoint(_ v: VCPU) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if control.stop != nil { return true }
        if control.pauseRequested {
            control.parked += 1
            lock.broadcast()
            while control.pauseRequested && control.stop == nil { lock.wait() }
            control.parked -= 1
            if control.stop != nil { return true }
        }
        v.setImmediateExit(false)
        return false
    }

    private func vcpuLoop(_ v: VCPU) {
        lock.lock()
        control.threads[Int(v.id)] = pthread_self()
        lock.unlock()
        var mask = sigset_t()
        sigemptyset(&mask)
        sigaddset(&mask, kickSignal)
        pthread_sigmask(SIG_UNBLOCK, &mask, nil)
        defer {
            lock.lock()
            control.threads[Int(v.id)] = nil
            control.running -= 1
            lock.broadcast()
            lock.unlock()
        }
        // A machine started paused must not run an instruction before resume.
        if checkpoint(v) { return }
        if v.id == 0, ProcessInfo.processInfo.environment["SWIFTVMM_TRACE_STARTUP"] != nil {
            // For start-up benchmarks: CLOCK_MONOTONIC when the guest is first entered.
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            FileHandle.standardError.write(Data("swiftvmm: first KVM_RUN at monotonic \(Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)) ns\n".utf8))
        }
        var throttleTimer = ContinuousClock.now
        while true {
            let exit: VCPUExit
            do { exit = try v.run() } catch {
                stop(.internalError("vCPU \(v.id): \(error.description)"))
                return
            }
            switch exit {
            case .ioOut(let port, let size, let data):
                var off = 0
                while off + size <= data.count {
                    pio.write(UInt64(port), data: UnsafeRawBufferPointer(rebasing: data[off..<(off + size)]))
                    off += size
                }
            case .ioIn(let port, let size, let data):
                var off = 0
                while off + size <= data.count {
                    pio.read(UInt64(port), data: UnsafeMutableRawBufferPointer(rebasing: data[off..<(off + size)]))
                    off += size
                }
            case .mmioRead(let address, let data):
                mmio.read(address, data: data)
            case .mmioWrite(let address, let data):
                mmio.write(address, data: data)
            case .hlt:
                // Without an in-kernel LAPIC wake-up this would spin; with it, HLT never exits.
                sched_yield()
            case .interrupted:
                // KVM has completed any pending I/O: a safe point to park or leave.
                if checkpoint(v) { return }
                let pct = throttlePercent
                if pct > 0 {
                    // Ran ~10 ms since the last kick: sleep so that sleeping is `pct` % of the time.
                    let ranFor = ContinuousClock.now - throttleTimer
                    let ranUs = Double(ranFor.components.attoseconds) / 1e12 + Double(ranFor.components.seconds) * 1e6
                    let sleepUs = min(ranUs, 20_000) * Double(pct) / Double(100 - pct)
                    if sleepUs >= 1 {
                        if checkpointSleep(v, microseconds: sleepUs) { return }
                    }
                    throttleTimer = ContinuousClock.now
                }
            case .shutdown:
                stop(.tripleFault("vCPU \(v.id): triple fault (CPU shutdown) at rip \(ripDescription(v))"))
                return
            case .systemEvent(let type):
                if type == 2 { stop(.guest(.reset)) } else if type == 1 { stop(.guest(.reset)) } else {
                    stop(.internalError("vCPU \(v.id): guest crash event (type \(type)) at rip \(ripDescription(v))"))
                }
                return
            case .internalError(let sub, let data):
                let kind = sub == 1 ? "emulation failure" : "internal error \(sub)"
                stop(.internalError("vCPU \(v.id): KVM \(kind) at rip \(ripDescription(v)), instruction bytes \(instructionBytes(v)), data \(data.map { "0x" + String($0, radix: 16) }.joined(separator: " "))"))
                return
            case .failEntry(let reason, _):
                stop(.internalError("vCPU \(v.id): VM entry failed (hardware reason 0x\(String(reason, radix: 16)))"))
                return
            case .debug:
                break
            case .unknown(let r):
                stop(.internalError("vCPU \(v.id): unexpected KVM exit reason \(r) at rip \(ripDescription(v))"))
                return
            }
        }
    }

    private func ripDescription(_ v: VCPU) -> String {
        guard let r = try? v.registers() else { return "?" }
        return "0x" + String(r.rip, radix: 16)
    }

    /// Up to 15 bytes at the guest's RIP, for an emulation-failure report.
    private func instructionBytes(_ v: VCPU) -> String {
        guard let r = try? v.registers(), let s = try? v.specialRegisters() else { return "?" }
        let linear = s.cs.base &+ r.rip
        let phys = (s.cr0 & 0x8000_0000 != 0) ? v.translate(linear) : linear
        guard let p = phys, let bytes = try? memory.read(GuestAddress(p), count: 15) else { return "?" }
        return bytes.map { String(format: "%02x", $0) }.joined(separator: " ")
    }
}
