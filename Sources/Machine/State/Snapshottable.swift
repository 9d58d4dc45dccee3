/// The plain value that *is* a component's state: what migrates, what a snapshot holds, what
/// tests compare. It is written as named properties of one `StateNode` and read back from an
/// untrusted one, so `init(decoding:)` checks every size and range it can without the live
/// component (rust-vmm's `QueueState`, vm-superio's `SerialState`).
public protocol ComponentState: Sendable, Equatable {
    /// The format version written with the state. A reader refuses a newer version than its
    /// own and keeps decoders for the older ones it still accepts.
    static var version: UInt32 { get }
    /// Writes the state's properties (and child nodes) into `node`.
    func encode(into node: inout StateNode)
    /// Reads a state back from `node`, validating what can be validated without the component.
    /// `version` is the node's format version, at most `Self.version`.
    init(decoding node: StateNode, version: UInt32) throws(StateError)
}

/// A component whose state can be captured and rebuilt: every device, every vCPU, the
/// irqchip, the PIT and the clock implement it, and machine state is nothing but their states.
public protocol Snapshottable: AnyObject, Sendable {
    associatedtype State: ComponentState
    /// Stable name matched between source and target (`vcpu@0`, `virtio-blk@0xd0000000`).
    var stateName: String { get }
    /// The component's state. Devices are quiesced and vCPUs paused while this is called.
    func saveState() throws(StateError) -> State
    /// Checks that `state` fits this component (its identity, its resources, guest RAM) without
    /// changing anything.
    func validate(_ state: State) throws(StateError)
    /// Rebuilds the component from a state that passed `validate`.
    func restoreState(_ state: State) throws(StateError)
}

/// A restore that has been decoded and validated and only waits to be applied: the machine
/// prepares every component before it changes any.
public struct PreparedRestore: Sendable {
    let name: String
    let applyBody: @Sendable () throws(StateError) -> Void

    public func apply() throws(StateError) { try applyBody() }
}

extension Snapshottable {
    /// The state written as a node named `stateName`, with its format version.
    public func saveNode() throws(StateError) -> StateNode {
        var node = StateNode(name: stateName)
        node.set(StateNode.versionKey, State.version)
        try saveState().encode(into: &node)
        return node
    }

    /// Decodes and validates `node` for this component; nothing changes until `apply()`.
    public func prepareRestore(_ node: StateNode) throws(StateError) -> PreparedRestore {
        guard node.name == stateName else { throw .invalid(node: stateName, reason: "state is for \(node.name)") }
        let version: UInt32 = try node.integer(StateNode.versionKey)
        guard version >= 1 && version <= State.version else {
            throw .unsupportedVersion(node: stateName, version: version, known: State.version)
        }
        let state = try State(decoding: node, version: version)
        try validate(state)
        return PreparedRestore(name: stateName) { [self] () throws(StateError) in try self.restoreState(state) }
    }

    /// Decodes, validates and applies `node`.
    public func restoreNode(_ node: StateNode) throws(StateError) {
        try prepareRestore(node).apply()
    }
}

/// A device that can stop taking work for a while (migration, snapshots): in-flight requests
/// complete and their results reach guest memory before `quiesce` returns.
public protocol Pausable: AnyObject, Sendable {
    func quiesce()
    /// Resumes processing after `quiesce` (a cancelled migration, or the target after restore).
    func unquiesce()
}

/// What kind of device a component is — how a migration target decides what to build for it.
public enum DeviceKind: String, Sendable, Equatable, CaseIterable {
    case serial
    case virtioBlock = "virtio-blk"
    case virtioNet = "virtio-net"
}

/// A device whose state moves with the guest. Migration talks only to this.
public protocol MigratableDevice: Snapshottable, Pausable {
    var kind: DeviceKind { get }
    /// The volume a disk is matched by on a migration target (nil for other devices).
    var volumeName: String? { get }
}

extension MigratableDevice {
    public var volumeName: String? { nil }
}

/// A device that can tell the network the guest moved (a NIC sending a RARP announcement).
public protocol AnnouncingDevice: MigratableDevice {
    func announce()
    /// The guest has moved away (the source committed): stop taking the network's traffic for
    /// it, so that frames go to the target as soon as it runs the guest. Undone when the devices
    /// are unquiesced (the guest resumes here after all).
    func leave()
}
