import Glibc

/// The device half of a virtio device (block, net): what it offers, its configuration space,
/// and the work it does on its queues. `VirtioMMIODevice` supplies the transport (registers,
/// feature negotiation, status machine), the worker thread and migration; it calls every
/// method here on its worker thread or a vCPU thread while it holds its own lock, so a device
/// keeps its mutable state in plain properties and never takes a lock of its own.
public protocol VirtioDevice: AnyObject, Sendable {
    /// What migrates besides the transport (a volume name, a MAC).
    associatedtype State: ComponentState
    /// `virtio-blk`, `virtio-net`: the first part of the device's state name.
    static var typeName: String { get }
    static var kind: DeviceKind { get }
    /// The virtio device id (1 net, 2 block).
    var deviceID: UInt32 { get }
    /// Feature bits offered to the driver.
    var features: UInt64 { get }
    /// Maximum size of each queue; their number is the device's queue count.
    var queueSizes: [UInt16] { get }
    /// Bytes one request may span at most (the sum of its buffers).
    var maxChainBytes: UInt64 { get }
    /// The volume a disk is matched by on a migration target; nil for other devices.
    var volumeName: String? { get }

    /// Device-specific configuration space (read at offset 0x100).
    func configSpace() -> [UInt8]
    /// Forgets everything the driver set up (device status 0).
    func reset()
    /// Descriptors the worker should also poll right now (a TAP) and a timeout in ms (-1 none).
    func pollSet() -> VirtioPollSet
    /// Does the device's work; called only while the device is live.
    func work(_ wake: VirtioWakeReason, _ queues: any VirtioQueues)
    /// The device was quiesced (`true`) or resumed; `driverReady` tells whether a driver has
    /// brought it up.
    func quiesceChanged(_ quiesced: Bool, driverReady: Bool)

    /// The device-specific state.
    func saveState() -> State
    /// Checks that `state` fits this device (the same volume, the same size, …).
    func validate(_ state: State) throws(StateError)
    /// Takes `state` (already validated).
    func restore(_ state: State)
}

extension VirtioDevice {
    public var volumeName: String? { nil }
    public func pollSet() -> VirtioPollSet { VirtioPollSet() }
    public func quiesceChanged(_ quiesced: Bool, driverReady: Bool) {}
}

/// Extra descriptors a device's worker polls, and how long it may sleep.
public struct VirtioPollSet: Sendable {
    public var fds: [Int32] = []
    /// Milliseconds, -1 for no timeout.
    public var timeoutMs: Int32 = -1
    public init(fds: [Int32] = [], timeoutMs: Int32 = -1) { self.fds = fds; self.timeoutMs = timeoutMs }
}

/// Why the worker woke.
public struct VirtioWakeReason: Sendable {
    /// Queues whose notify eventfd fired.
    public var kicked: [Bool]
    /// Something other than a notification (DRIVER_OK, unquiesce, restore, injected work):
    /// look at every queue.
    public var all: Bool
    /// revents of the device's extra descriptors, in `pollSet` order.
    public var extra: [Int16]
    public var timedOut: Bool

    public func queue(_ i: Int) -> Bool { all || (i < kicked.count && kicked[i]) }
}

/// A request taken from a queue.
public enum VirtioRequest: Sendable {
    case chain(DescriptorChain)
    /// Malformed: return `head` with an error in `status` (its last buffer, when usable) or with
    /// used length 0.
    case bad(head: UInt16, VirtqueueError, status: VirtioSegment?)
}

/// What a device may do with its queues while it works. Valid only during `VirtioDevice.work`.
public protocol VirtioQueues: AnyObject {
    var memory: GuestMemory { get }
    /// The device is live (driver ready, not failed, quiesced or resetting).
    var isLive: Bool { get }
    /// The driver accepted `feature` and the device confirmed it.
    func negotiated(_ feature: UInt64) -> Bool
    /// The next request of queue `q`, or nil when there is none or the ring is corrupt (then the
    /// device has asked for a reset).
    func next(_ q: Int) -> VirtioRequest?
    /// Writes the used element for `head` (the device wrote `length` bytes into it).
    func complete(_ q: Int, head: UInt16, length: UInt32)
    /// Raises a used-buffer interrupt if the driver wants one for what was completed.
    func notifyUsed(_ q: Int)
    /// Re-arms driver notifications for `q`; true when more requests arrived meanwhile.
    func moreAvailable(_ q: Int) -> Bool
    /// Whether the driver made queue `q` ready.
    func queueReady(_ q: Int) -> Bool
    /// Takes the next chain of `q` as it is, for a device that must look at several chains
    /// before it uses any (`unpop` gives them back).
    func pop(_ q: Int) -> PopResult
    /// Puts the last `count` popped chains of `q` back.
    func unpop(_ q: Int, count: Int)
    /// Runs slow I/O with the transport unlocked, counting `requests` in flight meanwhile so a
    /// reset or quiesce waits for them.
    func unlocked<R>(requests: Int, _ body: () -> R) -> R
    /// The driver broke the rules beyond one request: stop and ask for a reset.
    func needsReset(_ reason: String)
    /// One rate-limited line on stderr about this device.
    func warn(_ message: String)
    /// Counts a malformed chain (statistics).
    func countBadChain()
}
