/// The whole machine's state: nothing but the states of its components, each under its name.
///
/// ```
/// / { clock { … }  vcpu@0 { … } …  irqchip { … }  pit { … }  devices { serial@3f8 { … } virtio-blk@0xd0000000 { … } … } }
/// ```
extension VM {
    /// The platform components, in the order they are restored (the clock before the vCPUs'
    /// TSCs, the vCPUs before the interrupt controllers that deliver to them).
    var platform: [any Snapshottable] { [clock] + cpus + [irqchip, pit] }

    /// The whole paused machine as a tree. vCPUs must be paused and devices quiesced.
    public func saveMachineState() throws(VMError) -> StateNode {
        var root = StateNode(name: "")
        var devs = StateNode(name: "devices")
        do throws(StateError) {
            for c in platform { root.children.append(try c.saveNode()) }
            for d in devices.all { devs.children.append(try d.saveNode()) }
        } catch { throw .state(error) }
        root.children.append(devs)
        return root
    }

    /// Loads a state tree saved by a machine with the same configuration. Every component's
    /// state is decoded and validated before the first one changes.
    public func restoreMachineState(_ root: StateNode) throws(VMError) {
        for p in try prepareMachineState(root) {
            do { try p.apply() } catch { throw .state(error) }
        }
    }

    /// Decodes and validates a state tree for this machine without changing anything: what
    /// `restoreMachineState` does before it applies. A migration target runs it once on its own
    /// fresh state while it waits, so that the first real restore — inside the guest's
    /// downtime — finds every decoding path warm.
    public func prepareMachineState(_ root: StateNode) throws(VMError) -> [PreparedRestore] {
        let vcpuNodes = root.children.filter { $0.name.hasPrefix("vcpu@") }.map(\.name)
        guard vcpuNodes.count == cpus.count else {
            throw .config("the state has \(vcpuNodes.count) vCPUs, this machine \(cpus.count)")
        }
        guard let devs = root.child("devices") else { throw .config("the machine state lacks its devices") }
        let mine = devices.all
        let names = devs.children.map(\.name)
        guard names == mine.map(\.stateName) else {
            throw .config("device mismatch: the state has [\(names.joined(separator: ", "))], this machine has [\(mine.map(\.stateName).joined(separator: ", "))]")
        }
        var prepared: [PreparedRestore] = []
        do throws(StateError) {
            for c in platform {
                guard let node = root.child(c.stateName) else { throw StateError.missing(node: "/", property: c.stateName) }
                prepared.append(try c.prepareRestore(node))
            }
            for (d, node) in zip(mine, devs.children) { prepared.append(try d.prepareRestore(node)) }
        } catch { throw .state(error) }
        return prepared
    }
}
