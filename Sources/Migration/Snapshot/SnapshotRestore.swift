import Foundation
import Machine

/// How `restore` builds the guest's machine here.
public struct RestoreOptions: Sendable {
    /// Disks by volume name, NICs, serial, name, withheld CPU features — as for `recv`.
    public var machine: TargetMachineBuilder
    /// Read all of guest memory up front (and check it) instead of mapping the file.
    public var prefault = false
    /// Accept a guest whose TSC rate differs when KVM cannot scale it.
    public var allowTSCMismatch = false
    /// Leave the machine paused (its vCPU threads started): the caller resumes it.
    public var paused = false

    public init(machine: TargetMachineBuilder) {
        self.machine = machine
        self.machine.command = "restore"
    }
}

/// What a restore did and how long it took.
public struct RestoreReport: Sendable {
    /// From the open file to the vCPUs released, and the parts of it.
    public var totalMs = 0.0
    public var checkMs = 0.0
    public var buildMs = 0.0
    public var stateMs = 0.0
}

extension Snapshot {
    /// Builds the snapshot's guest here and runs it where it was saved: the same pre-checks as
    /// a migration target (every reason at once, before anything is built), a machine whose
    /// RAM is the file's memory mapped privately (pages fault in on demand) or read up front,
    /// the machine state loaded, then the vCPUs resumed. On failure nothing ran.
    public static func restore(_ file: SnapshotFile, options: RestoreOptions) throws -> (VM, RestoreReport) {
        let t0 = Clock.monotonic()
        var report = RestoreReport()
        let desc = file.description
        // The same checks as `recv`, with the same words.
        var recv = ReceiveOptions(endpoint: .unix(path: file.path), machine: options.machine)
        recv.allowTSCMismatch = options.allowTSCMismatch
        try TargetPreCheck.check(desc, recv)
        let t1 = Clock.monotonic()
        report.checkMs = (t1 - t0) * 1000
        let memory = MemoryFile(fd: file.fd, offsets: file.header.regions.map(\.fileOffset),
                                mode: options.prefault ? .prefault : .mapped)
        // The memory slots are made with the machine, before its irqchip (that is when they
        // are fastest to make); the state loads after (an MSR such as kvmclock's names a guest page).
        let vm = try options.machine.build(desc, memoryFile: memory, deferSlots: false)
        do {
            if options.prefault { try file.verify(vm.memory) }
            vm.start(paused: true)
            vm.devices.quiesce()
            let t2 = Clock.monotonic()
            report.buildMs = (t2 - t1) * 1000
            do { try vm.restoreMachineState(file.state) } catch {
                throw MigrationError.machine("cannot load the machine state: \(error)")
            }
            report.stateMs = (Clock.monotonic() - t2) * 1000
        } catch {
            vm.tearDown(.internalError("restore failed"))
            throw error
        }
        if !options.paused { resume(vm) }
        report.totalMs = (Clock.monotonic() - t0) * 1000
        return (vm, report)
    }

    /// Runs a restored machine: vCPUs and devices resume, NICs announce the guest's place.
    public static func resume(_ vm: VM) {
        vm.resume()
        vm.devices.unquiesce()
        for nic in vm.devices.all.compactMap({ $0 as? any AnnouncingDevice }) { nic.announce() }
    }
}
