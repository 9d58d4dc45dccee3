import ArgumentParser
import Control
import Foundation
import Glibc
import Machine
import Migration

struct Recv: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive one live migration, then run the guest like `run`.",
        discussion: """
        One-shot: listens until one source connects, checks it can host the guest (memory, vCPUs, \
        CPU features, volumes by name), builds the machine paused, loads memory and state, and \
        resumes the guest only once the source commits. Disks are matched by volume name: the \
        path on this host may differ from the source's.
        """)

    @Option(help: ArgumentHelp("Where to listen.", valueName: "tcp:HOST:PORT|unix:PATH"))
    var listen: String

    @Option(help: "Name of the received VM (default: the source's name).")
    var name: String?

    @Option(help: ArgumentHelp("Map a volume of the incoming guest to a file on this host.", valueName: "vol=NAME,path=P[,readonly]"))
    var disk: [String] = []

    @Option(help: ArgumentHelp("TAP interface for the incoming guest's NIC, in order.", valueName: "tap=IF[,mac=MAC]"))
    var net: [String] = []

    @Option(help: ArgumentHelp("Pre-shared key; the source must present the same one.", valueName: "FILE"))
    var keyFile: String?

    @Option(help: ArgumentHelp("Control socket for status and cancel.", valueName: "PATH"))
    var apiSocket: String?

    @Option(help: ArgumentHelp("Serial console: stdio or file:PATH.", valueName: "stdio|file:PATH"))
    var serial: String = "stdio"

    @Option(help: ArgumentHelp("Refuse a guest whose memory size differs.", valueName: "SIZE"))
    var memory: String?

    @Option(help: "Refuse a guest whose vCPU count differs.")
    var cpus: Int?

    @Option(help: ArgumentHelp("Withhold CPUID feature bits, as if this CPU lacked them (e.g. 0x7.0.ebx:5).", valueName: "LEAF.SUB.REG:BIT"))
    var cpuFeatureDeny: [String] = []

    @Option(help: .hidden)
    var kvmDevice: String = "/dev/kvm"

    func run() throws {
        let endpoint: Endpoint
        do { endpoint = try Endpoint.parse(listen) } catch { throw fail("--listen \(error)") }
        var options = ReceiveOptions(endpoint: endpoint)
        do { options.key = try keyFile.map(Auth.loadKey) } catch { throw fail("\(error)") }
        if let m = memory {
            guard let size = ByteSize.parse(m), size > 0 else { throw fail("--memory '\(m)' is not a size") }
            options.expectMemory = size
        }
        if let c = cpus, c < 1 { throw fail("--cpus must be at least 1") }
        options.expectCPUs = cpus
        options.cpuidDeny = cpuFeatureDeny
        options.kvmDevice = kvmDevice
        if let bad = cpuFeatureDeny.first(where: { (try? CPUIDPolicy.deny([$0], in: [])) == nil }) {
            throw fail("--cpu-feature-deny '\(bad)' is not LEAF.SUBLEAF.REG:BIT (e.g. 0x7.0.ebx:5)")
        }
        let disks = try disk.map(DeviceOptions.parseDisk)
        let nets = try net.map(DeviceOptions.parseNet)
        let sink = try MachineOptions.parse(memory: "16M", cpus: 1, serial: serial, name: "recv").serial
        let newName = name
        let deny = cpuFeatureDeny
        let kvm = kvmDevice
        let target = MigrationTarget(options: options) { desc in
            try Recv.build(desc, name: newName, serial: sink, disks: disks, nets: nets, deny: deny, kvmDevice: kvm)
        }
        do { try target.listen() } catch { throw fail("\(error)") }
        let controller = VMController(name: name ?? "recv", vm: nil)
        controller.target = target
        let server = try apiSocket.map { try startControlServer(path: $0, controller: controller) }
        defer { server?.stop() }
        // Ctrl-C while waiting or receiving cancels; the source resumes its guest.
        Signals.shared.onTerminate { _ in target.cancel("recv was interrupted") }
        note("waiting for a migration on \(endpoint)")
        let vm: VM
        do { vm = try target.run() } catch {
            throw fail("incoming migration failed: \(error)")
        }
        controller.vm = vm
        note("guest '\(vm.config.name)' received and running")
        throw ExitCode(runUntilStopped(vm, controller: controller, alreadyStarted: true))
    }

    /// Builds the machine an incoming guest needs, from its description and this host's options.
    static func build(_ desc: MachineDescription, name: String?, serial: any SerialSink, disks: [DiskSpec],
                      nets: [NetSpec], deny: [String], kvmDevice: String) throws -> VM {
        // Every volume and NIC the guest has must exist here, before anything is built.
        var nicIndex = 0
        for d in desc.devices {
            switch d.kind {
            case "virtio-blk":
                guard let vol = d.volume else { throw MigrationError.refused("the guest's disk \(d.stateName) has no volume name") }
                guard disks.contains(where: { $0.volume == vol }) else {
                    throw MigrationError.refused("volume '\(vol)' is missing on the target: pass --disk vol=\(vol),path=FILE to recv")
                }
            case "virtio-net":
                guard nicIndex < nets.count else {
                    throw MigrationError.refused("the guest has a NIC (\(d.stateName)) but recv has no --net for it")
                }
                nicIndex += 1
            case "serial": break
            default: throw MigrationError.refused("the guest has a device this swiftvmm cannot host: \(d.stateName)")
            }
        }
        let config = VMConfig(name: name ?? desc.name, memorySize: desc.memorySize, cpus: desc.cpus, serial: serial,
                              cpuidDeny: deny, kvmDevice: kvmDevice)
        let vm: VM
        do { vm = try VM(config: config, cpuidTable: desc.cpuid, deferMemorySlots: true) } catch {
            throw MigrationError.refused("cannot build the machine: \(error)")
        }
        var netIter = nets.makeIterator()
        for d in desc.devices {
            do {
                switch d.kind {
                case "virtio-blk":
                    if let spec = disks.first(where: { $0.volume == d.volume }) {
                        _ = try vm.addVirtioBlock(path: spec.path, volume: spec.volume, readonly: spec.readonly)
                    }
                case "virtio-net":
                    if let spec = netIter.next() { _ = try vm.addVirtioNet(tap: spec.tap, mac: spec.mac) }
                default: break
                }
            } catch { throw MigrationError.refused("cannot attach \(d.stateName): \(error)") }
        }
        let mine = vm.devices.map(\.stateName)
        guard mine == desc.devices.map(\.stateName) else {
            throw MigrationError.refused("device layout differs: the guest has [\(desc.devices.map(\.stateName).joined(separator: ", "))], the target built [\(mine.joined(separator: ", "))]")
        }
        return vm
    }
}
