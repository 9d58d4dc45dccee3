import Foundation
import Glibc

/// What every virtio-mmio device offers the machine, whatever its device type: its window,
/// its notify eventfds (for KVM ioeventfds), its transport registers and counters.
public protocol VirtioTransportDevice: BusDevice, MigratableDevice {
    /// Guest-physical base of the 4 KiB window.
    var base: GuestAddress { get }
    /// One notify eventfd per queue.
    var notifiers: [EventFD] { get }
    /// A snapshot of the transport registers and queues.
    var transportState: VirtioMMIOState { get }
    /// A snapshot of the device's counters.
    var statistics: VirtioStatistics { get }
    /// Device status register.
    var status: UInt32 { get }
    /// Interrupts go through a KVM irqfd (not the KVM_IRQ_LINE fallback).
    var usesIRQFD: Bool { get }
    /// Stops the worker thread and waits for it to leave. The device is unusable afterwards.
    func shutdown()
}

/// The state of a whole virtio-mmio device: transport registers and queues, and what the
/// device type adds.
public struct VirtioDeviceState<DeviceState: ComponentState>: ComponentState {
    public static var version: UInt32 { 1 }
    public var transport: VirtioMMIOState
    public var device: DeviceState

    public init(transport: VirtioMMIOState, device: DeviceState) {
        self.transport = transport
        self.device = device
    }

    public func encode(into node: inout StateNode) {
        transport.encode(into: &node)
        var d = StateNode(name: "device")
        d.set(StateNode.versionKey, DeviceState.version)
        device.encode(into: &d)
        node.children.append(d)
    }

    public init(decoding node: StateNode, version: UInt32) throws(StateError) {
        transport = try VirtioMMIOState(decoding: node)
        guard let d = node.child("device") else { throw .missing(node: node.name, property: "device") }
        let v: UInt32 = try d.integer(StateNode.versionKey)
        guard v >= 1 && v <= DeviceState.version else {
            throw .unsupportedVersion(node: "\(node.name)/device", version: v, known: DeviceState.version)
        }
        device = try DeviceState(decoding: d, version: v)
    }
}

/// A virtio-mmio device (VIRTIO 1.x, register layout version 2): the transport registers, a
/// worker thread that waits on the queues' notify eventfds and does the device's work — never
/// on a vCPU thread — and migration. `Device` (`VirtioBlock`, `VirtioNet`) supplies what is
/// specific to the device type; every call into it happens under this object's one lock.
public final class VirtioMMIODevice<Device: VirtioDevice>: VirtioTransportDevice, @unchecked Sendable {
    public typealias State = VirtioDeviceState<Device.State>

    public let base: GuestAddress
    public let memory: GuestMemory
    /// The device-type half. Reach it through `withDevice` from other threads.
    let device: Device
    let interrupt: any VirtioInterrupt
    private let worker: VirtqueueWorker
    private let lock = NSCondition()

    // Under `lock`:
    private var regs: VirtioMMIOState
    private var stats = VirtioStatistics()
    /// Migration has stopped the device.
    private var quiesced = false
    /// Requests taken from a ring whose used entries are not written yet.
    private var inFlight = 0
    /// A reset (status 0) waits for in-flight requests.
    private var resetPending = false
    private var stopping = false
    private var warnings = 0

    /// Builds the device at `base` and starts its worker.
    public init(device: Device, base: GuestAddress, memory: GuestMemory, interrupt: any VirtioInterrupt) throws(VirtioError) {
        self.device = device
        self.base = base
        self.memory = memory
        self.interrupt = interrupt
        self.worker = try VirtqueueWorker(queues: device.queueSizes.count)
        self.regs = VirtioMMIOState(deviceID: device.deviceID, deviceFeatures: device.features, queueSizes: device.queueSizes)
        worker.start(name: stateName, plan: { [self] in self.nextPollSet() }, handle: { [self] in self.handle($0) })
    }

    // MARK: identity and observation

    /// `virtio-blk@0xd0000000`: how migration matches this device on the target.
    public var stateName: String { "\(Device.typeName)@\(base)" }
    public var kind: DeviceKind { Device.kind }
    public var volumeName: String? { device.volumeName }
    public var notifiers: [EventFD] { worker.notifiers }
    public var transportState: VirtioMMIOState { lock.locked { regs } }
    public var statistics: VirtioStatistics { lock.locked { stats } }
    public var status: UInt32 { lock.locked { regs.status } }
    public var usesIRQFD: Bool { interrupt is IRQFDInterrupt }
    /// `shutdown()` was called: the device does no more work.
    public var isShutDown: Bool { lock.locked { stopping } }

    /// Runs `body` on the device half under the device's lock, then wakes the worker when asked
    /// (the device queued work for it).
    public func withDevice<R>(wake: Bool = false, _ body: (Device) -> R) -> R {
        let r = lock.locked { body(device) }
        if wake { worker.wake() }
        return r
    }

    /// Wakes the worker to look at every queue (the device queued work for it).
    func wakeWorker() { worker.wake() }

    /// A device that no driver has brought up or that migration stopped does no work.
    private var isLiveLocked: Bool {
        regs.status & VirtioSpec.Status.driverOK != 0
            && regs.status & (VirtioSpec.Status.deviceNeedsReset | VirtioSpec.Status.failed) == 0
            && !quiesced && !resetPending && !stopping
    }

    // MARK: worker

    public func shutdown() {
        lock.locked { stopping = true }
        worker.wake()
        worker.join()
    }

    private func nextPollSet() -> VirtioPollSet? {
        lock.locked { stopping ? nil : (isLiveLocked ? device.pollSet() : VirtioPollSet()) }
    }

    private func handle(_ wake: VirtioWakeReason) {
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { return }
        stats.wakeups += 1
        if isLiveLocked { device.work(wake, self) }
    }

    // MARK: MMIO (vCPU threads)

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        if offset >= VirtioSpec.Register.config {
            let config = lock.locked { device.configSpace() }
            let start = offset - VirtioSpec.Register.config
            for i in 0..<data.count {
                let at = start + UInt64(i)
                data[i] = at < UInt64(config.count) ? config[Int(at)] : 0
            }
            return
        }
        for i in data.indices { data[i] = 0 }
        guard data.count == 4, offset % 4 == 0 else { return }
        let value = lock.locked { regs.register(offset) }
        data.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        // Configuration space is read-only for both device types.
        guard offset < VirtioSpec.Register.config, data.count == 4, offset % 4 == 0 else { return }
        let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        if offset == VirtioSpec.Register.queueNotify {
            // Reached only without an ioeventfd (or with an index it does not match).
            lock.locked { stats.notifyExits += 1 }
            if Int(value) < worker.notifiers.count { worker.notifiers[Int(value)].signal() }
            return
        }
        let wake = lock.locked { () -> Bool in
            switch regs.write(offset, value, memory: memory) {
            case .none: return false
            case .startWork: return true
            case .reset: resetLocked(); return false
            case .needsReset(let why): needsReset(why); return false
            }
        }
        if wake { worker.wake() }
    }

    /// Device reset (status 0): waits for in-flight requests, then forgets features, queues and
    /// pending interrupts.
    private func resetLocked() {
        resetPending = true
        while inFlight > 0 { lock.wait() }
        resetPending = false
        regs = regs.afterReset()
        device.reset()
    }

    private func raise(_ bits: UInt32) {
        regs.interruptStatus |= bits
        stats.interrupts += 1
        interrupt.trigger()
    }

    // MARK: Pausable

    public func quiesce() {
        lock.locked {
            quiesced = true
            while inFlight > 0 { lock.wait() }
            device.quiesceChanged(true, driverReady: regs.status & VirtioSpec.Status.driverOK != 0)
        }
    }

    public func unquiesce() {
        lock.locked {
            quiesced = false
            device.quiesceChanged(false, driverReady: regs.status & VirtioSpec.Status.driverOK != 0)
        }
        worker.wake()
    }

    // MARK: Snapshottable

    public func saveState() -> State {
        lock.locked { State(transport: regs, device: device.saveState()) }
    }

    public func validate(_ state: State) throws(StateError) {
        let expected = lock.locked { regs }
        try state.transport.validate(name: stateName, against: expected, memory: memory)
        try lock.locked { () throws(StateError) in try device.validate(state.device) }
    }

    public func restoreState(_ state: State) throws(StateError) {
        try validate(state)
        let pending = lock.locked { () -> Bool in
            while inFlight > 0 { lock.wait() }
            regs = state.transport.adopted(by: regs)
            device.restore(state.device)
            return regs.interruptStatus != 0
        }
        // An edge may have been lost in transit; a spurious one is harmless to a virtio driver.
        if pending { interrupt.trigger() }
        worker.wake()
    }
}

// MARK: what the device half may do while it works (called under `lock`, on the worker)

extension VirtioMMIODevice: VirtioQueues {
    public var isLive: Bool { isLiveLocked }

    public func negotiated(_ feature: UInt64) -> Bool { regs.negotiated(feature) }

    public func next(_ q: Int) -> VirtioRequest? {
        guard isLiveLocked, q < regs.queues.count else { return nil }
        switch regs.queues[q].pop(memory, maxChainBytes: device.maxChainBytes) {
        case .empty: return nil
        case .chain(let c): return .chain(c)
        case .badChain(let head, let e, let last):
            stats.badChains += 1
            warn("queue \(q): request \(head) rejected: \(e)")
            return .bad(head: head, e, status: last)
        case .corrupt(let e):
            needsReset("queue \(q): \(e)")
            return nil
        }
    }

    public func complete(_ q: Int, head: UInt16, length: UInt32) {
        guard q < regs.queues.count else { return }
        do {
            try regs.queues[q].pushUsed(memory, head: head, length: length)
            stats.completed += 1
        } catch {
            needsReset("queue \(q): \(error)")
        }
    }

    public func notifyUsed(_ q: Int) {
        guard q < regs.queues.count, regs.queues[q].needsNotification(memory) else { return }
        raise(VirtioSpec.Interrupt.usedBuffer)
    }

    public func moreAvailable(_ q: Int) -> Bool {
        guard isLiveLocked, q < regs.queues.count else { return false }
        return regs.queues[q].enableNotification(memory)
    }

    public func queueReady(_ q: Int) -> Bool { q < regs.queues.count && regs.queues[q].ready }

    public func pop(_ q: Int) -> PopResult {
        guard isLiveLocked, q < regs.queues.count else { return .empty }
        return regs.queues[q].pop(memory, maxChainBytes: device.maxChainBytes)
    }

    public func unpop(_ q: Int, count: Int) {
        guard q < regs.queues.count, count > 0 else { return }
        regs.queues[q].unpop(UInt16(truncatingIfNeeded: count))
    }

    public func unlocked<R>(requests: Int, _ body: () -> R) -> R {
        inFlight += requests
        lock.unlock()
        let r = body()
        lock.lock()
        inFlight -= requests
        lock.broadcast()
        return r
    }

    public func needsReset(_ reason: String) {
        guard regs.status & VirtioSpec.Status.deviceNeedsReset == 0 else { return }
        warn("\(reason); device needs reset")
        stats.needsReset += 1
        regs.status |= VirtioSpec.Status.deviceNeedsReset
        raise(VirtioSpec.Interrupt.configChange)
    }

    /// One line on stderr per problem, at most a few per device, so a hostile guest cannot
    /// flood the host's log.
    public func warn(_ message: String) {
        warnings += 1
        guard warnings <= 8 else { return }
        let suffix = warnings == 8 ? " (further warnings suppressed)" : ""
        FileHandle.standardError.write(Data("swiftvmm: \(stateName): \(message)\(suffix)\n".utf8))
    }

    public func countBadChain() { stats.badChains += 1 }
}
