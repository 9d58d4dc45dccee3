import Foundation
import Glibc

/// The registers of a virtio-mmio transport and its queues: everything the driver programmed
/// and the device's progress, as plain data (what migrates and what tests compare).
public struct VirtioMMIOState: Sendable, Equatable {
    /// DeviceID: 1 net, 2 block.
    public var deviceID: UInt32
    /// Features the device offers.
    public var deviceFeatures: UInt64
    /// Features the driver accepted (only meaningful once FEATURES_OK is set).
    public var driverFeatures: UInt64 = 0
    /// Which 32-bit page of the features the driver reads / writes next.
    public var deviceFeaturesSel: UInt32 = 0
    public var driverFeaturesSel: UInt32 = 0
    /// The queue the Queue* registers refer to.
    public var queueSel: UInt32 = 0
    /// Device status (`VirtioSpec.Status` bits).
    public var status: UInt32 = 0
    /// Pending interrupt reasons (`VirtioSpec.Interrupt` bits) until the driver ACKs them.
    public var interruptStatus: UInt32 = 0
    public var configGeneration: UInt32 = 0
    public var queues: [SplitQueue]

    public init(deviceID: UInt32, deviceFeatures: UInt64, queueSizes: [UInt16]) {
        self.deviceID = deviceID
        self.deviceFeatures = deviceFeatures
        self.queues = queueSizes.map { SplitQueue(maxSize: $0) }
    }

    /// The driver accepted `feature` and the device confirmed it (FEATURES_OK).
    public func negotiated(_ feature: UInt64) -> Bool {
        status & VirtioSpec.Status.featuresOK != 0 && driverFeatures & feature == feature
    }
}

/// Counters a device keeps about its guest, for tests and diagnostics.
public struct VirtioStatistics: Sendable, Equatable {
    /// Requests (chains) returned to the used ring.
    public var completed = 0
    /// Malformed chains (each failed alone).
    public var badChains = 0
    /// Times the device set DEVICE_NEEDS_RESET.
    public var needsReset = 0
    /// Interrupts raised.
    public var interrupts = 0
    /// Times the worker thread woke up (a busy loop shows here).
    public var wakeups = 0
    /// Queue notifications that came through the MMIO write path (no ioeventfd matched them).
    public var notifyExits = 0
    public init() {}
}

/// The virtio-mmio transport (VIRTIO 1.x, register layout version 2) and the engine every
/// virtio device shares: feature negotiation, queue setup and validation, the device status
/// state machine, interrupts, and a worker thread that waits on the queues' notify eventfds
/// (ioeventfd, or the MMIO write path as fallback) and does the device's work, never on a
/// vCPU thread.
///
/// Subclasses (`VirtioBlock`, `VirtioNet`) override the `device…` hooks. One lock (`lock`)
/// guards registers, queues and device state; it is held while the worker touches the rings.
public class VirtioMMIODevice: BusDevice, MigratableDevice, @unchecked Sendable {
    /// Guest-physical base of the 4 KiB window.
    public let base: GuestAddress
    public let memory: GuestMemory
    let interrupt: any VirtioInterrupt
    /// One notify eventfd per queue; KVM signals them directly when ioeventfds are registered.
    public let notifiers: [EventFD]
    /// Wakes the worker for anything other than a queue notification.
    let control: EventFD
    let lock = NSCondition()

    // Under `lock`:
    var regs: VirtioMMIOState
    var stats = VirtioStatistics()
    /// migration has stopped the device.
    var quiesced = false
    /// Requests taken from a ring whose used entries are not written yet.
    var inFlight = 0
    /// A reset (status 0) waits for in-flight requests.
    var resetPending = false
    var stopping = false
    var workerRunning = false
    private var warnings = 0

    /// Bytes one request may span at most (sum of its buffers).
    let maxChainBytes: UInt64

    init(base: GuestAddress, memory: GuestMemory, interrupt: any VirtioInterrupt, deviceID: UInt32,
         features: UInt64, queueSizes: [UInt16], maxChainBytes: UInt64) throws(VirtioError) {
        self.base = base
        self.memory = memory
        self.interrupt = interrupt
        self.maxChainBytes = maxChainBytes
        var n: [EventFD] = []
        for _ in queueSizes { n.append(try EventFD()) }
        self.notifiers = n
        self.control = try EventFD()
        self.regs = VirtioMMIOState(deviceID: deviceID, deviceFeatures: features, queueSizes: queueSizes)
    }

    // MARK: hooks for device types

    /// `virtio-blk`, `virtio-net`.
    var typeName: String { "virtio" }
    /// Device-specific configuration space (read at offset 0x100). Called under `lock`.
    func deviceConfig() -> [UInt8] { [] }
    /// Device-specific part of a reset. Called under `lock`.
    func deviceReset() {}
    /// Extra descriptors the worker should poll right now (the TAP) and a timeout in ms
    /// (-1 = none). Called under `lock`, only while the device is live.
    func devicePollSet() -> (fds: [pollfd], timeout: Int32) { ([], -1) }
    /// Does the device's work. Called on the worker under `lock`, only while live; may drop
    /// and retake the lock around slow I/O (keeping `inFlight` up meanwhile).
    func deviceWork(_ wake: WakeReason) {}
    /// Called under `lock` when the device is quiesced and again when it is unquiesced.
    func deviceQuiesceChanged() {}
    /// Device-specific state (child node of the device's state).
    func deviceSaveState() -> StateNode { StateNode(name: "device") }
    /// Validates device-specific state and returns what applies it (run under `lock`).
    func deviceValidateState(_ node: StateNode) throws(StateError) -> () -> Void { {} }

    /// Why the worker woke.
    struct WakeReason {
        /// Queues whose notify eventfd fired.
        var kicked: [Bool]
        /// The control eventfd fired (DRIVER_OK, unquiesce, restore, injected work): look at every queue.
        var all: Bool
        /// revents of the device's extra descriptors, in `devicePollSet` order.
        var extra: [Int16]
        var timedOut: Bool

        func queue(_ i: Int) -> Bool { all || (i < kicked.count && kicked[i]) }
    }

    // MARK: identity

    /// `virtio-blk@0xd0000000`: how migration matches this device on the target.
    public var stateName: String { "\(typeName)@\(base)" }

    /// A snapshot of the transport registers and queues.
    public var transportState: VirtioMMIOState { lock.locked { regs } }

    /// A snapshot of the device's counters.
    public var statistics: VirtioStatistics { lock.locked { stats } }

    /// Device status register, for tests and diagnostics.
    public var status: UInt32 { lock.locked { regs.status } }

    /// Interrupts go through a KVM irqfd (not the KVM_IRQ_LINE fallback).
    public var usesIRQFD: Bool { interrupt is IRQFDInterrupt }

    /// The device is processing requests (driver ready, not failed, not stopped).
    var isLive: Bool {
        regs.status & VirtioSpec.Status.driverOK != 0
            && regs.status & (VirtioSpec.Status.deviceNeedsReset | VirtioSpec.Status.failed) == 0
            && !quiesced && !resetPending && !stopping
    }

    // MARK: worker

    /// Starts the worker thread (the last step of a subclass's init).
    func startWorker() {
        lock.locked { workerRunning = true }
        let t = Thread { [self] in self.workerLoop() }
        t.name = stateName
        t.stackSize = 1 << 20
        t.start()
    }

    /// Stops the worker thread and waits for it to leave. The device is unusable afterwards.
    public func shutdown() {
        lock.lock()
        stopping = true
        lock.unlock()
        control.signal()
        lock.lock()
        while workerRunning { lock.wait() }
        lock.unlock()
    }

    private func workerLoop() {
        let queueCount = notifiers.count
        defer {
            lock.lock()
            workerRunning = false
            lock.broadcast()
            lock.unlock()
        }
        while true {
            lock.lock()
            if stopping { lock.unlock(); return }
            let extra = isLive ? devicePollSet() : (fds: [], timeout: -1)
            lock.unlock()

            var fds = [pollfd(fd: control.fd, events: Int16(POLLIN), revents: 0)]
            for n in notifiers { fds.append(pollfd(fd: n.fd, events: Int16(POLLIN), revents: 0)) }
            fds.append(contentsOf: extra.fds)
            let r = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), extra.timeout) }
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                lock.locked { warn("poll failed: \(String(cString: strerror(e))); device stopped") }
                return
            }
            var wake = WakeReason(kicked: Array(repeating: false, count: queueCount), all: false,
                                  extra: fds[(1 + queueCount)...].map { $0.revents }, timedOut: r == 0)
            if fds[0].revents != 0 { control.drain(); wake.all = true }
            for q in 0..<queueCount where fds[1 + q].revents != 0 {
                notifiers[q].drain()
                wake.kicked[q] = true
            }
            lock.lock()
            if stopping { lock.unlock(); return }
            stats.wakeups += 1
            if isLive { deviceWork(wake) }
            lock.unlock()
        }
    }

    /// Wakes the worker to look at every queue.
    func kick() { control.signal() }

    // MARK: helpers for device work (under `lock`)

    /// A request taken from queue `q`.
    enum Request {
        case chain(DescriptorChain)
        /// Malformed: return `head` with an error in `status` (its last buffer, when usable)
        /// or with used length 0.
        case bad(head: UInt16, VirtqueueError, status: VirtioSegment?)
    }

    /// The next request of queue `q`, or nil when there is none or the ring is corrupt (then
    /// the device has set DEVICE_NEEDS_RESET).
    func nextRequest(_ q: Int) -> Request? {
        guard isLive, q < regs.queues.count else { return nil }
        switch regs.queues[q].pop(memory, maxChainBytes: maxChainBytes) {
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

    /// Writes the used element for `head` (the device wrote `length` bytes into it).
    func complete(_ q: Int, head: UInt16, length: UInt32) {
        guard q < regs.queues.count else { return }
        do {
            try regs.queues[q].pushUsed(memory, head: head, length: length)
            stats.completed += 1
        } catch {
            needsReset("queue \(q): \(error)")
        }
    }

    /// Raises a used-buffer interrupt if the driver wants one for what was completed.
    func notifyUsed(_ q: Int) {
        guard q < regs.queues.count, regs.queues[q].needsNotification(memory) else { return }
        raise(VirtioSpec.Interrupt.usedBuffer)
    }

    /// Re-arms driver notifications for `q`; true when more requests arrived meanwhile.
    func moreAvailable(_ q: Int) -> Bool {
        guard isLive, q < regs.queues.count else { return false }
        return regs.queues[q].enableNotification(memory)
    }

    func raise(_ bits: UInt32) {
        regs.interruptStatus |= bits
        stats.interrupts += 1
        interrupt.trigger()
    }

    /// The driver broke the device's rules beyond one request: stop and ask for a reset
    /// (DEVICE_NEEDS_RESET plus a configuration-change interrupt).
    func needsReset(_ reason: String) {
        guard regs.status & VirtioSpec.Status.deviceNeedsReset == 0 else { return }
        warn("\(reason); device needs reset")
        stats.needsReset += 1
        regs.status |= VirtioSpec.Status.deviceNeedsReset
        raise(VirtioSpec.Interrupt.configChange)
    }

    /// One line on stderr per problem, at most a few per device, so a hostile guest cannot
    /// flood the host's log. Called under `lock`.
    func warn(_ message: String) {
        warnings += 1
        guard warnings <= 8 else { return }
        let suffix = warnings == 8 ? " (further warnings suppressed)" : ""
        FileHandle.standardError.write(Data("swiftvmm: \(stateName): \(message)\(suffix)\n".utf8))
    }

    // MARK: MMIO (vCPU threads)

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        if offset >= VirtioSpec.Register.config {
            let config = lock.locked { deviceConfig() }
            let start = offset - VirtioSpec.Register.config
            for i in 0..<data.count {
                let at = start + UInt64(i)
                data[i] = at < UInt64(config.count) ? config[Int(at)] : 0
            }
            return
        }
        for i in data.indices { data[i] = 0 }
        guard data.count == 4, offset % 4 == 0 else { return }
        let value = lock.locked { registerRead(offset) }
        data.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        // Configuration space is read-only for both device types.
        guard offset < VirtioSpec.Register.config, data.count == 4, offset % 4 == 0 else { return }
        let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        if offset == VirtioSpec.Register.queueNotify {
            // Reached only without an ioeventfd (or with an index it does not match).
            lock.locked { stats.notifyExits += 1 }
            if Int(value) < notifiers.count { notifiers[Int(value)].signal() }
            return
        }
        let wake = lock.locked { registerWrite(offset, value) }
        if wake { kick() }
    }

    func registerRead(_ offset: UInt64) -> UInt32 {
        typealias R = VirtioSpec.Register
        let q = Int(regs.queueSel) < regs.queues.count ? Int(regs.queueSel) : nil
        switch offset {
        case R.magicValue: return VirtioSpec.magic
        case R.version: return VirtioSpec.mmioVersion
        case R.deviceID: return regs.deviceID
        case R.vendorID: return VirtioSpec.vendorID
        case R.deviceFeatures:
            switch regs.deviceFeaturesSel {
            case 0: return UInt32(truncatingIfNeeded: regs.deviceFeatures)
            case 1: return UInt32(truncatingIfNeeded: regs.deviceFeatures >> 32)
            default: return 0
            }
        case R.queueNumMax: return q.map { UInt32(regs.queues[$0].maxSize) } ?? 0
        case R.queueNum: return q.map { UInt32(regs.queues[$0].size) } ?? 0
        case R.queueReady: return q.map { regs.queues[$0].ready ? 1 : 0 } ?? 0
        case R.interruptStatus: return regs.interruptStatus
        case R.status: return regs.status
        case R.queueDescLow: return q.map { UInt32(truncatingIfNeeded: regs.queues[$0].descTable.raw) } ?? 0
        case R.queueDescHigh: return q.map { UInt32(truncatingIfNeeded: regs.queues[$0].descTable.raw >> 32) } ?? 0
        case R.queueDriverLow: return q.map { UInt32(truncatingIfNeeded: regs.queues[$0].availRing.raw) } ?? 0
        case R.queueDriverHigh: return q.map { UInt32(truncatingIfNeeded: regs.queues[$0].availRing.raw >> 32) } ?? 0
        case R.queueDeviceLow: return q.map { UInt32(truncatingIfNeeded: regs.queues[$0].usedRing.raw) } ?? 0
        case R.queueDeviceHigh: return q.map { UInt32(truncatingIfNeeded: regs.queues[$0].usedRing.raw >> 32) } ?? 0
        case R.shmLenLow, R.shmLenHigh: return 0xffff_ffff   // no shared memory regions
        case R.configGeneration: return regs.configGeneration
        default: return 0
        }
    }

    /// Applies a register write; returns true when the worker must look at the queues.
    func registerWrite(_ offset: UInt64, _ value: UInt32) -> Bool {
        typealias R = VirtioSpec.Register
        typealias S = VirtioSpec.Status
        switch offset {
        case R.deviceFeaturesSel: regs.deviceFeaturesSel = value
        case R.driverFeaturesSel: regs.driverFeaturesSel = value
        case R.driverFeatures:
            // Features are the driver's to choose only between DRIVER and FEATURES_OK.
            guard regs.status & S.driver != 0, regs.status & S.featuresOK == 0 else { return false }
            switch regs.driverFeaturesSel {
            case 0: regs.driverFeatures = (regs.driverFeatures & 0xffff_ffff_0000_0000) | UInt64(value)
            case 1: regs.driverFeatures = (regs.driverFeatures & 0xffff_ffff) | (UInt64(value) << 32)
            default: break
            }
        case R.queueSel: regs.queueSel = value
        case R.queueNum, R.queueDescLow, R.queueDescHigh, R.queueDriverLow, R.queueDriverHigh,
             R.queueDeviceLow, R.queueDeviceHigh:
            guard Int(regs.queueSel) < regs.queues.count else { return false }
            let i = Int(regs.queueSel)
            // A live queue's configuration is frozen.
            guard !regs.queues[i].ready else { return false }
            func low(_ a: GuestAddress) -> GuestAddress { GuestAddress((a.raw & 0xffff_ffff_0000_0000) | UInt64(value)) }
            func high(_ a: GuestAddress) -> GuestAddress { GuestAddress((a.raw & 0xffff_ffff) | (UInt64(value) << 32)) }
            switch offset {
            case R.queueNum:
                // Sizes above the maximum never stick; the rest is checked at QueueReady.
                if value <= UInt32(regs.queues[i].maxSize) { regs.queues[i].size = UInt16(value) }
            case R.queueDescLow: regs.queues[i].descTable = low(regs.queues[i].descTable)
            case R.queueDescHigh: regs.queues[i].descTable = high(regs.queues[i].descTable)
            case R.queueDriverLow: regs.queues[i].availRing = low(regs.queues[i].availRing)
            case R.queueDriverHigh: regs.queues[i].availRing = high(regs.queues[i].availRing)
            case R.queueDeviceLow: regs.queues[i].usedRing = low(regs.queues[i].usedRing)
            default: regs.queues[i].usedRing = high(regs.queues[i].usedRing)
            }
        case R.queueReady:
            guard Int(regs.queueSel) < regs.queues.count else { return false }
            let i = Int(regs.queueSel)
            if value & 1 == 0 {
                regs.queues[i].ready = false
                return false
            }
            guard !regs.queues[i].ready, regs.status & S.featuresOK != 0,
                  regs.status & (S.deviceNeedsReset | S.failed) == 0 else { return false }
            if let problem = regs.queues[i].configurationProblem(in: memory) {
                needsReset("queue \(i): \(problem)")
                return false
            }
            regs.queues[i].ready = true
            regs.queues[i].nextAvail = 0
            regs.queues[i].nextUsed = 0
            regs.queues[i].signalledUsed = nil
            regs.queues[i].eventIdx = regs.negotiated(VirtioSpec.Feature.ringEventIdx)
            return regs.status & S.driverOK != 0
        case R.interruptACK:
            regs.interruptStatus &= ~value
        case R.status:
            return writeStatus(value)
        default:
            break
        }
        return false
    }

    private func writeStatus(_ value: UInt32) -> Bool {
        typealias S = VirtioSpec.Status
        if value == 0 {
            reset()
            return false
        }
        let old = regs.status
        var new = (value & S.all & ~S.deviceNeedsReset) | (old & S.deviceNeedsReset)
        if new & S.featuresOK != 0 && old & S.featuresOK == 0 {
            let f = regs.driverFeatures
            if f & ~regs.deviceFeatures != 0 || f & VirtioSpec.Feature.version1 == 0 {
                // The driver asked for something not offered, or for a legacy device.
                new &= ~S.featuresOK
            }
        }
        // DRIVER_OK without FEATURES_OK is not a working device.
        if new & S.driverOK != 0 && new & S.featuresOK == 0 { new &= ~S.driverOK }
        regs.status = new
        return new & S.driverOK != 0 && old & S.driverOK == 0
    }

    /// Device reset (status 0): waits for in-flight requests, then forgets features, queues and
    /// pending interrupts.
    func reset() {
        resetPending = true
        while inFlight > 0 { lock.wait() }
        resetPending = false
        let fresh = VirtioMMIOState(deviceID: regs.deviceID, deviceFeatures: regs.deviceFeatures,
                                    queueSizes: regs.queues.map { $0.maxSize })
        let generation = regs.configGeneration
        regs = fresh
        regs.configGeneration = generation
        deviceReset()
    }

    // MARK: MigratableDevice

    public func quiesce() {
        lock.lock()
        quiesced = true
        while inFlight > 0 { lock.wait() }
        deviceQuiesceChanged()
        lock.unlock()
    }

    public func unquiesce() {
        lock.locked {
            quiesced = false
            deviceQuiesceChanged()
        }
        kick()
    }

    public func saveState() -> StateNode {
        lock.locked {
            var node = regs.stateNode(name: stateName)
            node.children.append(deviceSaveState())
            return node
        }
    }

    public func restoreState(_ node: StateNode) throws(StateError) {
        guard node.name == stateName else {
            throw .invalid(node: stateName, reason: "state is for \(node.name)")
        }
        let expected = lock.locked { regs }
        let incoming = try VirtioMMIOState(node: node, expecting: expected, memory: memory)
        guard let deviceNode = node.child("device") else { throw .missing(node: stateName, property: "device") }
        let applyDevice = try lock.locked { () throws(StateError) -> () -> Void in try deviceValidateState(deviceNode) }
        lock.lock()
        while inFlight > 0 { lock.wait() }
        regs = incoming
        applyDevice()
        let pending = regs.interruptStatus != 0
        lock.unlock()
        // An edge may have been lost in transit; a spurious one is harmless to a virtio driver.
        if pending { interrupt.trigger() }
        kick()
    }
}

extension NSCondition {
    /// Runs `body` holding the lock.
    func locked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}
