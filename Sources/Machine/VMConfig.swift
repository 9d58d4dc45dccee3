import Glibc
import KVM

/// A virtio-blk disk to attach: `--disk [vol=NAME,]path=P[,readonly]`.
public struct DiskConfig: Sendable, Equatable {
    public var path: String
    /// The name a migration target matches the disk by (default: the file name).
    public var volume: String
    public var readonly: Bool
    /// On a migration target: the image arrives in the stream (`send --copy-storage`); the
    /// file is created or truncated to the volume's size.
    public var copy = false
    /// A second image every guest write also goes to (`mirror=Q`).
    public var mirror: String?
    /// An open descriptor of the image to take (duplicated) instead of opening `path`: a local
    /// hand-over's target. Not owned.
    public var descriptor: Int32?

    public init(path: String, volume: String? = nil, readonly: Bool = false) {
        self.path = path
        self.volume = volume ?? String(path.split(separator: "/").last ?? Substring(path))
        self.readonly = readonly
    }

    /// Parses `[vol=NAME,]path=P[,readonly]`.
    public static func parse(_ spec: String) throws(VMError) -> DiskConfig {
        var path: String?
        var volume: String?
        var readonly = false
        var copy = false
        var mirror: String?
        for (k, v) in OptionList.pairs(spec) {
            switch k {
            case "path": path = v
            case "vol": volume = v
            case "readonly", "ro": readonly = v.isEmpty || v == "on" || v == "true"
            case "copy": copy = v.isEmpty || v == "on" || v == "true"
            case "mirror":
                guard !v.isEmpty else { throw .config("--disk '\(spec)': empty mirror=") }
                mirror = v
            default: throw .config("--disk '\(spec)': unknown key '\(k)' (expected path=, vol=, readonly, copy, mirror)")
            }
        }
        guard let p = path, !p.isEmpty else { throw .config("--disk '\(spec)' has no path=") }
        var disk = DiskConfig(path: p, volume: volume, readonly: readonly)
        disk.copy = copy
        disk.mirror = mirror
        if mirror != nil && readonly { throw .config("--disk '\(spec)': a read-only disk needs no mirror") }
        if mirror == p { throw .config("--disk '\(spec)': the mirror is the disk itself") }
        guard !disk.volume.isEmpty else { throw .config("--disk '\(spec)': empty vol=") }
        return disk
    }
}

/// A virtio-net NIC to attach: `--net tap=IF[,mac=MAC]`.
public struct NICConfig: Sendable, Equatable {
    public var tap: String
    /// nil: generated stably from the VM name and the NIC's index.
    public var mac: [UInt8]?
    /// An open TAP queue descriptor to take (duplicated) instead of attaching to `tap`: a local
    /// hand-over's target. Not owned.
    public var descriptor: Int32?

    public init(tap: String, mac: [UInt8]? = nil) { self.tap = tap; self.mac = mac }

    /// Parses `tap=IF[,mac=52:54:00:12:34:56]`.
    public static func parse(_ spec: String) throws(VMError) -> NICConfig {
        var tap: String?
        var mac: [UInt8]?
        for (k, v) in OptionList.pairs(spec) {
            switch k {
            case "tap": tap = v
            case "mac":
                guard let parts = VirtioNet.parseMAC(v) else {
                    throw .config("--net '\(spec)': mac '\(v)' is not six hex bytes like 52:54:00:12:34:56")
                }
                guard parts[0] & 1 == 0 else { throw .config("--net '\(spec)': mac '\(v)' is a multicast address") }
                mac = parts
            default: throw .config("--net '\(spec)': unknown key '\(k)' (expected tap=, mac=)")
            }
        }
        guard let t = tap, !t.isEmpty else { throw .config("--net '\(spec)' has no tap=") }
        guard t.utf8.count < 16 else { throw .config("--net '\(spec)': interface name '\(t)' is longer than 15 bytes") }
        return NICConfig(tap: t, mac: mac)
    }
}

/// `key=value,key=value,flag` device options.
enum OptionList {
    /// Splits into pairs; a bare word becomes (word, "").
    static func pairs(_ spec: String) -> [(String, String)] {
        spec.split(separator: ",").map { part in
            if let eq = part.firstIndex(of: "=") {
                return (String(part[..<eq]), String(part[part.index(after: eq)...]))
            }
            return (String(part), "")
        }
    }
}

/// What `VM` needs to build a machine.
public struct VMConfig: Sendable {
    public var name: String
    public var memorySize: UInt64
    public var cpus: Int
    public var serial: any SerialSink
    /// The CPU model the guest sees (`host`: all this host offers).
    public var cpuModel: CPUModel = .host
    /// The guest TSC's rate when it must differ from this host's (a migrated guest, scaled).
    public var tscKHz: UInt32?
    /// Feature bits removed from what this host offers (`LEAF.SUB.REG:BIT`).
    public var cpuidDeny: [String]
    /// The KVM device node.
    public var kvmDevice: String
    /// Disks, then NICs, are attached in this order (their virtio-mmio windows follow it).
    public var disks: [DiskConfig]
    public var nics: [NICConfig]
    /// The CPUID table to give the vCPUs instead of this host's (a migration target uses the
    /// guest's own).
    public var cpuidTable: [CPUIDEntry]?
    /// Guest RAM exists in this process but is not yet given to KVM: call
    /// `registerMemorySlots()` before the vCPUs run (a migration target does that while pages
    /// arrive, since a slot made after the irqchip takes milliseconds).
    public var deferMemorySlots: Bool
    /// Guest RAM's initial contents come from this file (a snapshot being restored).
    public var memoryFile: MemoryFile?
    /// What guest RAM is made of (`--memory-backend`).
    public var memoryBackend: MemoryBackend = .anonymous

    public init(name: String = "swiftvmm", memorySize: UInt64 = 256 << 20, cpus: Int = 1,
                serial: any SerialSink = FileDescriptorSink(fd: 1), cpuidDeny: [String] = [],
                kvmDevice: String = "/dev/kvm", disks: [DiskConfig] = [], nics: [NICConfig] = [],
                cpuidTable: [CPUIDEntry]? = nil, deferMemorySlots: Bool = false) {
        self.name = name; self.memorySize = memorySize; self.cpus = cpus
        self.serial = serial; self.cpuidDeny = cpuidDeny; self.kvmDevice = kvmDevice
        self.disks = disks; self.nics = nics; self.cpuidTable = cpuidTable; self.deferMemorySlots = deferMemorySlots
    }

    /// Checks the numbers a user chose, naming the option.
    public func validate() throws(VMError) {
        guard cpus >= 1 else { throw .config("--cpus must be at least 1 (got \(cpus))") }
        guard cpus <= 254 else { throw .config("--cpus \(cpus) is more than the 254 swiftvmm supports") }
        do { _ = try MemoryMap(memorySize: memorySize) } catch { throw .config("--memory: \(error)") }
        do { _ = try CPUIDPolicy.deny(cpuidDeny, in: []) } catch { throw .config("--cpu-feature-deny \(error)") }
        var volumes = Set<String>()
        for d in disks where !volumes.insert(d.volume).inserted {
            throw .config("--disk: volume name '\(d.volume)' is used twice")
        }
    }
}

/// Where serial output goes, from `stdio` or `file:PATH`.
extension FileDescriptorSink {
    /// Opens the sink `spec` names (a file is created or truncated).
    public static func open(_ spec: String) throws(VMError) -> FileDescriptorSink {
        if spec == "stdio" { return FileDescriptorSink(fd: 1) }
        guard spec.hasPrefix("file:"), spec.count > 5 else { throw .config("--serial '\(spec)' is not stdio or file:PATH") }
        let path = String(spec.dropFirst(5))
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .config("--serial \(spec): cannot open \(path): \(String(cString: strerror(errno)))") }
        return FileDescriptorSink(fd: fd)
    }
}
