import CLinux
import Foundation
import Glibc
import KVM

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
    /// The guest was saved to a snapshot file and is not to run on here.
    case saved
}

/// The vCPU threads of a machine: one thread per vCPU running `KVM_RUN` and dispatching its
/// exits to the buses, a pause at a safe point (pending I/O completed), stop with a reason, and
/// the throttle migration's auto-converge uses.
public final class VCPURunner: @unchecked Sendable, StopRequester {
    /// The signal used to kick vCPU threads out of KVM_RUN.
    static let kickSignal = SIGUSR2
    /// A change of whether the guest runs: what a monitor announces as STOP, RESUME, SHUTDOWN.
    public enum RunStateChange: Sendable {
        case paused, resumed, stopped(StopReason)
    }

    let vcpus: [VCPU]
    private let pio: Bus
    private let mmio: Bus
    private let memory: GuestMemory

    /// State shared by vCPU threads and the controller, under `lock`.
    private struct Control {
        var pauseRequested = false
        /// When the first vCPU ran again after the last `resume()` (CLOCK_REALTIME ns; 0: not yet).
        var firstRunNs: UInt64 = 0
        var parked = 0
        var running = 0
        var stop: StopReason?
        var threads: [pthread_t?] = []
        /// Fraction (0…99 %) of each slice a vCPU sleeps.
        var throttlePercent = 0
        /// Each vCPU thread's kernel id (0 until it started).
        var threadIDs: [Int32] = []
        var observer: (@Sendable (RunStateChange) -> Void)?
    }
    private let lock = NSCondition()
    private var control = Control()

    init(vcpus: [VCPU], pio: Bus, mmio: Bus, memory: GuestMemory) {
        self.vcpus = vcpus
        self.pio = pio
        self.mmio = mmio
        self.memory = memory
        control.threads = Array(repeating: nil, count: vcpus.count)
        control.threadIDs = Array(repeating: 0, count: vcpus.count)
    }

    /// Calls `observer` (on the thread that made the change, outside any lock) whenever the
    /// guest pauses, resumes or stops. One observer; a new one replaces the last.
    public func observe(_ observer: @escaping @Sendable (RunStateChange) -> Void) {
        lock.locked { control.observer = observer }
    }

    /// The kernel thread id of each vCPU thread (0 before it started or after it left).
    public var threadIDs: [Int32] { lock.locked { control.threadIDs } }

    // MARK: start and stop

    /// Starts one thread per vCPU. With `paused`, the threads wait for `resume()` before the
    /// guest runs.
    func start(paused: Bool) {
        _ = clinux_install_interrupting_signal(Self.kickSignal)
        lock.locked {
            control.pauseRequested = paused
            control.running = vcpus.count
        }
        for v in vcpus {
            let t = Thread { [self] in self.threadMain(v) }
            t.name = "vcpu\(v.id)"
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// Blocks until the machine stops and every vCPU thread has left, then returns why.
    public func waitForStop() -> StopReason {
        waitForStop(timeout: nil) ?? .internalError("stopped without a reason")
    }

    /// `waitForStop()` for at most `timeout` s (nil: no limit); nil when the machine still runs.
    public func waitForStop(timeout: Double?) -> StopReason? {
        lock.locked {
            waitLocked(timeout: timeout) { control.stop != nil && control.running == 0 } ? control.stop : nil
        }
    }

    /// Waits, holding the lock, until `done()` or for `timeout` s (nil: no limit); whether it holds.
    private func waitLocked(timeout: Double?, until done: () -> Bool) -> Bool {
        guard let timeout else {
            while !done() { lock.wait() }
            return true
        }
        let deadline = Date().addingTimeInterval(timeout)
        while !done() && lock.wait(until: deadline) {}
        return done()
    }

    /// The reason the machine stopped, if it has.
    public var stopReason: StopReason? { lock.locked { control.stop } }

    /// Stops the machine for `reason` (the first reason wins).
    public func stop(_ reason: StopReason) {
        let observer = lock.locked { () -> (@Sendable (RunStateChange) -> Void)? in
            defer { lock.broadcast() }
            guard control.stop == nil else { return nil }
            control.stop = reason
            return control.observer
        }
        kickAll()
        observer?(.stopped(reason))
    }

    public func requestStop(_ request: GuestStopRequest) { stop(.guest(request)) }

    // MARK: pause

    /// Pauses every vCPU at a safe point (any pending I/O completed) and returns when all are
    /// parked. Returns false if the machine stopped instead.
    @discardableResult
    public func pause() -> Bool {
        let changed = lock.locked { () -> Bool in
            defer { control.pauseRequested = true; lock.broadcast() }
            return !control.pauseRequested && control.stop == nil
        }
        kickAll()
        let (paused, observer) = lock.locked {
            while control.parked < control.running && control.stop == nil { lock.wait() }
            return (control.stop == nil, control.observer)
        }
        if changed && paused { observer?(.paused) }
        return paused
    }

    /// Lets paused vCPUs run again.
    public func resume() {
        let observer = lock.locked { () -> (@Sendable (RunStateChange) -> Void)? in
            defer { control.pauseRequested = false; control.firstRunNs = 0; lock.broadcast() }
            return control.pauseRequested && control.stop == nil ? control.observer : nil
        }
        observer?(.resumed)
    }

    /// When the first vCPU thread left its pause after the last `resume()` (CLOCK_REALTIME,
    /// ns) — the end of a downtime as the guest sees it — waiting for it at most `timeout` s.
    public func firstRunAfterResume(timeout: Double) -> UInt64? {
        lock.locked {
            _ = waitLocked(timeout: timeout) { control.firstRunNs != 0 || control.stop != nil }
            return control.firstRunNs == 0 ? nil : control.firstRunNs
        }
    }

    static func wallNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    public var isPaused: Bool {
        lock.locked { control.pauseRequested && control.parked == control.running }
    }

    // MARK: throttle

    /// Makes each vCPU sleep `percent` % of the time (0 turns throttling off). A ticker thread
    /// kicks the vCPUs out of the guest every 10 ms while throttling is on, so even a guest that
    /// never exits is slowed down.
    public func setThrottle(percent: Int) {
        let startTicker = lock.locked { () -> Bool in
            let start = control.throttlePercent == 0 && percent > 0
            control.throttlePercent = max(0, min(99, percent))
            lock.broadcast()
            return start
        }
        guard startTicker else { return }
        let t = Thread { [self] in
            while self.throttlePercent > 0 && self.stopReason == nil {
                usleep(10_000)
                self.kickAll()
            }
        }
        t.name = "throttle"
        t.start()
    }

    public var throttlePercent: Int { lock.locked { control.throttlePercent } }

    /// Interrupts every vCPU's KVM_RUN.
    private func kickAll() {
        let threads = lock.locked { control.threads }
        for v in vcpus { v.setImmediateExit(true) }
        for case let t? in threads { _ = clinux_pthread_kill(t, Self.kickSignal) }
    }

    // MARK: vCPU threads

    /// Sleeps for a throttle slice unless a pause or stop comes first; true means leave.
    private func checkpointSleep(_ v: VCPU, microseconds: Double) -> Bool {
        lock.locked {
            let deadline = Date().addingTimeInterval(microseconds / 1e6)
            while control.stop == nil && !control.pauseRequested && control.throttlePercent > 0 && Date() < deadline {
                _ = lock.wait(until: deadline)
            }
        }
        return checkpoint(v)
    }

    /// Returns true when the thread should leave; parks while paused.
    private func checkpoint(_ v: VCPU) -> Bool {
        lock.locked {
            if control.stop != nil { return true }
            if control.pauseRequested {
                control.parked += 1
                lock.broadcast()
                while control.pauseRequested && control.stop == nil { lock.wait() }
                control.parked -= 1
                if control.stop != nil { return true }
                if control.firstRunNs == 0 { control.firstRunNs = Self.wallNanos(); lock.broadcast() }
            }
            v.setImmediateExit(false)
            return false
        }
    }

    private func threadMain(_ v: VCPU) {
        Confinement.confineThread(.vcpu, name: "vcpu\(v.id)")
        lock.locked {
            control.threads[Int(v.id)] = pthread_self()
            control.threadIDs[Int(v.id)] = clinux_gettid()
        }
        _ = clinux_unblock_signal(Self.kickSignal)
        defer {
            lock.locked {
                control.threads[Int(v.id)] = nil
                control.threadIDs[Int(v.id)] = 0
                control.running -= 1
                lock.broadcast()
            }
        }
        // A machine started paused must not run an instruction before resume.
        if checkpoint(v) { return }
        if v.id == 0 { StartupTrace.firstGuestEntry() }
        runLoop(v)
    }

    private func runLoop(_ v: VCPU) {
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
                    if sleepUs >= 1, checkpointSleep(v, microseconds: sleepUs) { return }
                    throttleTimer = ContinuousClock.now
                }
            case .debug:
                break
            default:
                if let reason = stopReason(for: exit, v) {
                    stop(reason)
                    return
                }
            }
        }
    }

    /// The reason an exit that ends the guest stops the machine.
    private func stopReason(for exit: VCPUExit, _ v: VCPU) -> StopReason? {
        switch exit {
        case .shutdown:
            return .tripleFault("vCPU \(v.id): triple fault (CPU shutdown) at rip \(ripDescription(v))")
        case .systemEvent(.shutdown):
            return .guest(.powerOff)
        case .systemEvent(.reset):
            // A reset ends the VMM cleanly, like a reset through the i8042.
            return .guest(.reset)
        case .systemEvent(let type):
            return .internalError("vCPU \(v.id): guest crash event (\(type)) at rip \(ripDescription(v))")
        case .internalError(let sub, let data):
            let kind = sub == 1 ? "emulation failure" : "internal error \(sub)"
            let words = data.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
            return .internalError("vCPU \(v.id): KVM \(kind) at rip \(ripDescription(v)), instruction bytes \(instructionBytes(v)), data \(words)")
        case .failEntry(let reason, _):
            return .internalError("vCPU \(v.id): VM entry failed (hardware reason 0x\(String(reason, radix: 16)))")
        case .unknown(let r):
            return .internalError("vCPU \(v.id): unexpected KVM exit reason \(r) at rip \(ripDescription(v))")
        default:
            return nil
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
        let phys = s.pagingEnabled ? v.translate(linear) : linear
        guard let p = phys, let bytes = try? memory.read(GuestAddress(p), count: 15) else { return "?" }
        return bytes.map { String(format: "%02x", $0) }.joined(separator: " ")
    }
}
