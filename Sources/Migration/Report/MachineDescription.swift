import Machine

/// What the receiver must know before a byte of memory moves: the machine's configuration.
/// Sent as an FDT in the `config` section and checked by the target's pre-check
/// (`TargetPreCheck`).
public struct MachineDescription: Sendable, Equatable {
    public struct Device: Sendable, Equatable {
        public var stateName: String
        public var kind: DeviceKind
        /// The volume a disk is matched by.
        public var volume: String?
        public init(stateName: String, kind: DeviceKind, volume: String?) {
            self.stateName = stateName; self.kind = kind; self.volume = volume
        }
    }

    public var name: String
    public var uuid: String
    public var vmmVersion: String
    public var memorySize: UInt64
    public var cpus: Int
    /// The CPUID table vCPU 0 was given (what the guest saw).
    public var cpuid: [CPUIDEntry]
    public var devices: [Device]
    public var tscKHz: UInt32
    /// The CPU model the guest was started with ("host" when none was named).
    public var cpuModel = "host"
    /// Only check and build, then tear down (`send --dry-run`); required of the target, so that
    /// one that does not know dry runs refuses rather than starts a real migration.
    public var dryRun = false
    /// The disks that travel in the stream (`send --copy-storage`).
    public var storage = StorageCopyPlan()
    /// The guest's mirrored volumes: a target whose file is an in-sync mirror moves no disk data.
    public var mirrors: [MirrorClaim] = []
    /// A local hand-over (`send --local`): guest RAM, disks and TAPs arrive as descriptors
    /// instead of pages; required of the target, which must map rather than copy.
    public var handover = false
    /// Guest RAM is in shared files another process can map (`run --memory-backend memfd`).
    public var sharedMemory = false
    /// Connections the pages travel on (`send --connections N`); above 1 it is required of the
    /// target, so that one that cannot take extra data connections refuses at once.
    public var channels = 1
    public static let maxChannels = 16

    public init(name: String, uuid: String, vmmVersion: String, memorySize: UInt64, cpus: Int,
                cpuid: [CPUIDEntry], devices: [Device], tscKHz: UInt32, cpuModel: String = "host") {
        self.name = name; self.uuid = uuid; self.vmmVersion = vmmVersion; self.memorySize = memorySize
        self.cpus = cpus; self.cpuid = cpuid; self.devices = devices; self.tscKHz = tscKHz; self.cpuModel = cpuModel
    }

    /// Describes a running machine.
    public static func of(_ vm: VM, uuid: String) -> MachineDescription {
        MachineDescription(
            name: vm.config.name, uuid: uuid, vmmVersion: SwiftVMMVersion.string,
            memorySize: vm.memory.totalSize, cpus: vm.cpus.count, cpuid: vm.cpuid.first ?? [],
            devices: vm.devices.all.map { Device(stateName: $0.stateName, kind: $0.kind, volume: $0.volumeName) },
            tscKHz: vm.tscKHz, cpuModel: vm.config.cpuModel.name)
            .with(sharedMemory: vm.memory.isShareable)
    }

    private func with(sharedMemory: Bool) -> MachineDescription {
        var d = self
        d.sharedMemory = sharedMemory
        return d
    }

    public var stateNode: StateNode {
        var root = StateNode(name: "")
        let required = Wire.requiredFeatures + (dryRun ? ["dry-run"] : [])
            + (storage.volumes.isEmpty ? [] : [StorageCopyPlan.feature]) + (handover ? ["local-handover"] : [])
            + (channels > 1 ? ["channels-v1"] : [])
        root.set("required-features", bytes: Array(required.map { $0 + "\0" }.joined().utf8))
        root.set("name", string: name)
        root.set("uuid", string: uuid)
        root.set("vmm-version", string: vmmVersion)
        root.set("memory-size", memorySize)
        root.set("cpus", UInt32(cpus))
        root.set("tsc-khz", tscKHz)
        root.set("cpu-model", string: cpuModel)
        if sharedMemory { root.set("shared-memory", true) }
        if channels > 1 { root.set("channels", UInt32(channels)) }
        var flat: [UInt32] = []
        for e in cpuid { flat += [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] }
        root.set("cpuid", array: flat)
        var devs = StateNode(name: "devices")
        for (i, d) in devices.enumerated() {
            var n = StateNode(name: "device@\(i)")
            n.set("state-name", string: d.stateName)
            n.set("kind", string: d.kind.rawValue)
            if let v = d.volume { n.set("volume", string: v) }
            devs.children.append(n)
        }
        root.children.append(devs)
        if !storage.volumes.isEmpty { root.children.append(storage.node) }
        if !mirrors.isEmpty { root.children.append(MirrorClaim.node(mirrors)) }
        return root
    }

    /// Decodes and validates a description from an untrusted tree.
    public init(node root: StateNode) throws(MigrationError) {
        do {
            let required = (root.optionalBytes("required-features") ?? []).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            let unknown = required.filter { !Wire.knownFeatures.contains($0) }
            guard unknown.isEmpty else {
                throw MigrationError.refused("the source requires stream features this swiftvmm lacks: \(unknown.joined(separator: ", "))")
            }
            dryRun = required.contains("dry-run")
            handover = required.contains("local-handover")
            sharedMemory = (try? root.bool("shared-memory")) ?? false
            if required.contains("channels-v1") {
                let n: UInt32 = try root.integer("channels")
                guard n >= 1 && n <= UInt32(Self.maxChannels) else {
                    throw MigrationError.stream("the source asks for \(n) connections, outside 1…\(Self.maxChannels)")
                }
                channels = Int(n)
            }
            name = try root.string("name")
            uuid = try root.string("uuid")
            vmmVersion = try root.string("vmm-version")
            memorySize = try root.integer("memory-size")
            let c: UInt32 = try root.integer("cpus")
            guard c >= 1 && c <= 254 else { throw MigrationError.refused("source has \(c) vCPUs, outside 1…254") }
            cpus = Int(c)
            tscKHz = (try? root.integer("tsc-khz", as: UInt32.self)) ?? 0
            cpuModel = root.optionalBytes("cpu-model").map { b in String(decoding: b.prefix { $0 != 0 }.prefix(64), as: UTF8.self) } ?? "host"
            let flat = try root.array("cpuid", of: UInt32.self)
            guard flat.count % 7 == 0, flat.count / 7 <= 4096 else { throw MigrationError.stream("CPUID table in the stream is malformed") }
            cpuid = stride(from: 0, to: flat.count, by: 7).map {
                CPUIDEntry(function: flat[$0], index: flat[$0 + 1], flags: flat[$0 + 2], eax: flat[$0 + 3],
                           ebx: flat[$0 + 4], ecx: flat[$0 + 5], edx: flat[$0 + 6])
            }
            guard let devs = root.child("devices"), devs.children.count <= 64 else {
                throw MigrationError.stream("device list in the stream is missing or too long")
            }
            devices = try devs.children.map { n in
                let kindName = try n.string("kind")
                guard let kind = DeviceKind(rawValue: kindName) else {
                    throw MigrationError.refused("the guest has a device this swiftvmm cannot host: \(kindName)")
                }
                return Device(stateName: try n.string("state-name"), kind: kind, volume: n.optionalBytes("volume").map { b in
                    String(decoding: b.last == 0 ? Array(b.dropLast()) : b, as: UTF8.self)
                })
            }
            storage = try StorageCopyPlan(node: root.child("copy-storage"))
            mirrors = try MirrorClaim.decode(root.child("mirrors"))
        } catch let e as MigrationError {
            throw e
        } catch {
            throw .stream("configuration in the stream is malformed: \(error)")
        }
    }
}

public enum SwiftVMMVersion {
    public static let string = "0.1.0"
}
