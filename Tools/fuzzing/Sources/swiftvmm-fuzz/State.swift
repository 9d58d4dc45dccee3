import Glibc
import KVM
import Machine
import Migration

/// Machine state: an FDT blob decoded into a `StateNode` tree (libfdt's `fdt_check_full`
/// first), then every component node decoded as its typed `State` and, for the devices that can
/// live without KVM here (the UART, a virtio-blk disk, a virtio-net NIC), validated against the
/// device and guest RAM as a migration target does. Checks: the codec's round trip (a tree that
/// decodes re-encodes to a blob that decodes to the same tree), and each `State`'s (a decoded
/// state, encoded, decodes to itself).
enum StateTarget {
    static func run(_ data: [UInt8]) {
        guard let root = try? FDTCodec.decode(data) else { return }
        let again: StateNode
        do { again = try FDTCodec.decode(FDTCodec.encode(root)) } catch {
            require(false, "a decoded state tree does not survive encoding: \(error)")
            return
        }
        require(again == root, "a state tree changes through encoding and decoding")
        _ = StreamInspector.render(root)
        for node in root.children { component(node) }
        if let devices = root.child("devices") {
            for node in devices.children { device(node) }
        }
    }

    static func component(_ node: StateNode) {
        switch node.name {
        case "clock": roundTrip(GuestClock.State.self, node)
        case "irqchip": roundTrip(InterruptControllers.State.self, node)
        case "pit": roundTrip(ProgrammableIntervalTimer.State.self, node)
        case let n where n.hasPrefix("vcpu@"): roundTrip(VCPUState.self, node)
        default: break
        }
    }

    static func device(_ node: StateNode) {
        func renamed(_ name: String) -> StateNode {
            var n = node
            n.name = name
            return n
        }
        if node.name.hasPrefix("serial@") {
            roundTrip(Serial.State.self, node)
            _ = try? Devices.serial.restoreNode(renamed(Devices.serial.stateName))
        } else if node.name.hasPrefix("virtio-blk@") {
            roundTrip(VirtioDeviceState<VirtioBlock.State>.self, node)
            _ = try? Devices.disk.prepareRestore(renamed(Devices.disk.stateName))
        } else if node.name.hasPrefix("virtio-net@") {
            roundTrip(VirtioDeviceState<VirtioNet.State>.self, node)
            _ = try? Devices.nic.prepareRestore(renamed(Devices.nic.stateName))
        }
    }

    /// Decodes `node` as `S` (as `prepareRestore` does) and checks that what decodes survives
    /// its own encoding unchanged.
    static func roundTrip<S: ComponentState>(_ type: S.Type, _ node: StateNode) {
        guard let version = try? node.integer(StateNode.versionKey, as: UInt32.self),
              version >= 1 && version <= S.version,
              let state = try? S(decoding: node, version: version) else { return }
        var encoded = StateNode(name: node.name)
        encoded.set(StateNode.versionKey, S.version)
        state.encode(into: &encoded)
        do {
            let back = try S(decoding: encoded, version: S.version)
            require(back == state, "\(node.name): a decoded state changes when encoded and decoded again")
        } catch {
            require(false, "\(node.name): a decoded state does not decode once encoded: \(error)")
        }
    }
}

/// The devices state is validated against, built once: a UART, a 1 MiB disk named `data` (as
/// in the captured fixtures) and a NIC, the virtio ones over 64 MiB of guest RAM.
enum Devices {
    struct NoSink: SerialSink { func write(_ bytes: UnsafeRawBufferPointer) {} }
    struct NoLine: InterruptLine { func set(level: Bool) {} }
    struct NoInterrupt: VirtioInterrupt { func trigger() {} }

    static let memory: GuestMemory = {
        do { return try GuestMemory(map: MemoryMap(memorySize: 64 << 20)) } catch {
            fatalError("swiftvmm-fuzz: cannot map guest memory: \(error)")
        }
    }()
    static let serial = Serial(sink: NoSink(), irq: NoLine())

    static let disk: VirtioBlockDevice = {
        let path = "/tmp/swiftvmm-fuzz-disk-\(getpid()).img"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0, ftruncate(fd, 1 << 20) == 0 else { fatalError("swiftvmm-fuzz: cannot create \(path)") }
        close(fd)
        defer { unlink(path) }
        do {
            let block = try VirtioBlock(path: path, volume: "data", readonly: false, memory: memory)
            return try VirtioBlockDevice(device: block, base: GuestAddress(MemoryMap.virtioMMIOBase), memory: memory,
                                         interrupt: NoInterrupt())
        } catch { fatalError("swiftvmm-fuzz: cannot build the disk: \(error)") }
    }()

    static let nic: VirtioMMIODevice<FuzzNIC> = {
        do {
            return try VirtioMMIODevice(device: FuzzNIC(), base: GuestAddress(MemoryMap.virtioMMIOBase + 0x1000),
                                        memory: memory, interrupt: NoInterrupt())
        } catch { fatalError("swiftvmm-fuzz: cannot build the NIC: \(error)") }
    }()
}

/// A virtio-net device without a TAP: `VirtioNet`'s identity, features, queues and state.
final class FuzzNIC: VirtioDevice, @unchecked Sendable {
    typealias State = VirtioNet.State
    static var typeName: String { VirtioNet.typeName }
    static var kind: DeviceKind { .virtioNet }
    var deviceID: UInt32 { VirtioSpec.DeviceID.net }
    var features: UInt64 {
        VirtioSpec.Feature.version1 | VirtioSpec.Feature.ringEventIdx | VirtioSpec.Feature.ringIndirectDesc
            | VirtioNet.Feature.mac | VirtioNet.Feature.status | VirtioNet.Feature.mergeableRxBuffers
    }
    var queueSizes: [UInt16] { [VirtioNet.queueSize, VirtioNet.queueSize] }
    var maxChainBytes: UInt64 { UInt64(VirtioNet.maxFrame + VirtioNet.headerSize) }
    func configSpace() -> [UInt8] { [] }
    func reset() {}
    func work(_ wake: VirtioWakeReason, _ queues: any VirtioQueues) {}
    func saveState() -> State { State(mac: [2, 0, 0, 0, 0, 1], linkUp: true) }
    func validate(_ state: State) throws(StateError) {}
    func restore(_ state: State) {}
}
