import Foundation
import Machine

/// Builds, on the target, the machine an incoming guest needs: its memory, vCPUs and CPUID
/// from the guest's description; each disk from the local file of the same volume name; each
/// NIC on the next local TAP; serial and name from the local options.
public struct TargetMachineBuilder: Sendable {
    /// The received VM's name (nil: the source's).
    public var name: String?
    public var serial: any SerialSink
    /// Local files for the guest's volumes, matched by volume name.
    public var disks: [DiskConfig]
    /// Local TAPs for the guest's NICs, in order.
    public var nics: [NICConfig]
    public var cpuidDeny: [String]
    public var kvmDevice: String
    /// The command whose options a refusal names (`recv`, `restore`).
    public var command = "recv"
    /// What guest RAM is made of (a local hand-over adopts the source's memfds).
    public var memoryBackend: MemoryBackend = .anonymous

    public init(name: String? = nil, serial: any SerialSink = FileDescriptorSink(fd: 1), disks: [DiskConfig] = [],
                nics: [NICConfig] = [], cpuidDeny: [String] = [], kvmDevice: String = "/dev/kvm") {
        self.name = name; self.serial = serial; self.disks = disks; self.nics = nics
        self.cpuidDeny = cpuidDeny; self.kvmDevice = kvmDevice
    }

    /// The configuration for `desc`, or a refusal naming the first device this host lacks.
    public func config(for desc: MachineDescription) throws -> VMConfig {
        let problems = deviceProblems(desc)
        if !problems.isEmpty { throw MigrationError.refused(problems.joined(separator: "; ")) }
        var disks: [DiskConfig] = []
        var nics: [NICConfig] = []
        for d in desc.devices {
            switch d.kind {
            case .virtioBlock: disks += self.disks.filter { $0.volume == d.volume }.prefix(1)
            case .virtioNet: nics.append(self.nics[nics.count])
            case .serial: break
            }
        }
        var config = VMConfig(name: name ?? desc.name, memorySize: desc.memorySize, cpus: desc.cpus, serial: serial,
                              cpuidDeny: cpuidDeny, kvmDevice: kvmDevice, disks: disks, nics: nics,
                              cpuidTable: desc.cpuid, deferMemorySlots: true)
        config.memoryBackend = memoryBackend
        if case .scale(let guest, let host) = try? TSCRate.decide(guestKHz: desc.tscKHz, kvmDevice: kvmDevice) {
            FileHandle.standardError.write(Data("swiftvmm: the guest's TSC runs at \(TSCRate.format(guest)), this host's at \(TSCRate.format(host)): KVM scales it to the guest's rate\n".utf8))
            config.tscKHz = guest
        }
        // The guest's table comes with it; the model decides which MSRs travel on from here.
        config.cpuModel = .recorded(desc.cpuModel)
        return config
    }

    /// Every device of `desc` this host cannot give the guest, one reason each.
    public func deviceProblems(_ desc: MachineDescription) -> [String] {
        var out: [String] = []
        var nicCount = 0
        for d in desc.devices {
            switch d.kind {
            case .virtioBlock:
                if let vol = d.volume {
                    if !disks.contains(where: { $0.volume == vol }) {
                        out.append("volume '\(vol)' is missing on the target: pass --disk vol=\(vol),path=FILE to \(command)")
                    }
                } else { out.append("the guest's disk \(d.stateName) has no volume name") }
            case .virtioNet:
                nicCount += 1
                if nicCount > nics.count { out.append("the guest has a NIC (\(d.stateName)) but \(command) has no --net for it") }
            case .serial:
                break
            }
        }
        return out
    }

    /// Builds the machine, paused, the device layout exactly as the guest's; with `deferSlots`
    /// guest RAM is not yet given to KVM (`registerMemorySlots()`). With `memoryFile`, guest RAM
    /// starts as that file's bytes.
    public func build(_ desc: MachineDescription, memoryFile: MemoryFile? = nil, deferSlots: Bool = true) throws -> VM {
        var config = try config(for: desc)
        config.memoryFile = memoryFile
        config.deferMemorySlots = deferSlots
        let vm: VM
        do { vm = try VM(config: config) } catch { throw MigrationError.refused("cannot build the machine: \(error)") }
        let mine = vm.devices.all.map(\.stateName)
        guard mine == desc.devices.map(\.stateName) else {
            vm.tearDown(.internalError("device layout differs"))
            throw MigrationError.refused("device layout differs: the guest has [\(desc.devices.map(\.stateName).joined(separator: ", "))], the target built [\(mine.joined(separator: ", "))]")
        }
        return vm
    }
}
