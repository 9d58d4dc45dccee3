import Machine

/// The disks a `send --copy-storage` carries in its stream, as the target's pre-check sees
/// them (part of `MachineDescription`; empty when the target's volumes are already there).
public struct StorageCopyPlan: Sendable, Equatable {
    public struct Volume: Sendable, Equatable {
        public var name: String
        /// Apparent size of the image.
        public var bytes: UInt64
        /// Bytes of it that hold data (SEEK_DATA/SEEK_HOLE): what the target must have free.
        public var allocated: UInt64
        public init(name: String, bytes: UInt64, allocated: UInt64) { self.name = name; self.bytes = bytes; self.allocated = allocated }
    }

    /// In the order of their index in `diskBlocks` sections.
    public var volumes: [Volume] = []
    /// Both sides hash their images at the pause and the source commits only when they match.
    public var verify = false
    public init() {}

    /// Most volumes a plan may name.
    static let maxVolumes = 64
    /// The stream feature a copying source requires of its target.
    static let feature = "copy-storage-v1"

    var node: StateNode {
        var n = StateNode(name: "copy-storage")
        n.set("verify", verify)
        for (i, v) in volumes.enumerated() {
            var c = StateNode(name: "volume@\(i)")
            c.set("name", string: v.name)
            c.set("bytes", v.bytes)
            c.set("allocated", v.allocated)
            n.children.append(c)
        }
        return n
    }

    /// Decodes the plan from an untrusted tree (absent: nothing is copied).
    init(node: StateNode?) throws(MigrationError) {
        guard let node else { return }
        guard node.children.count <= Self.maxVolumes else { throw .stream("copy-storage names \(node.children.count) volumes (at most \(Self.maxVolumes))") }
        do {
            verify = (try? node.bool("verify")) ?? false
            for c in node.children {
                let name = try c.string("name")
                let bytes: UInt64 = try c.integer("bytes")
                let allocated: UInt64 = try c.integer("allocated")
                guard !name.isEmpty, bytes > 0, bytes % VirtioBlock.sectorSize == 0, allocated <= bytes else {
                    throw MigrationError.stream("copy-storage volume '\(name)' has an impossible size \(bytes) (\(allocated) allocated)")
                }
                guard !volumes.contains(where: { $0.name == name }) else { throw MigrationError.stream("copy-storage names volume '\(name)' twice") }
                volumes.append(Volume(name: name, bytes: bytes, allocated: allocated))
            }
        } catch let e as MigrationError { throw e } catch {
            throw .stream("copy-storage section is malformed: \(error)")
        }
    }
}
