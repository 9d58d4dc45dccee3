import ArgumentParser
import Control
import Foundation
import Glibc
import Machine
import Migration

struct Save: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Save a running guest to a snapshot file, then stop it (or leave it running).",
        discussion: """
        Pauses the guest at a safe point (virtio requests in flight complete first) and writes \
        its machine description, machine state and memory to FILE — memory as raw pages at \
        page-aligned offsets with zero pages left as holes, so the file is sparse and `restore` \
        can map it. The file appears only once complete. Disks are not copied: snapshot their \
        image files yourself while the guest is stopped (see the README). Without \
        --leave-running the guest's swiftvmm exits 0 after the save.
        """)

    @Argument(help: "The VM: its API socket path, or its --name.")
    var vm: String

    @Argument(help: "The snapshot file to write (replaced if it exists).")
    var file: String

    @Flag(help: "Resume the guest after saving instead of stopping it.")
    var leaveRunning = false

    @Flag(help: "Save while the guest runs: its memory goes to the file in rounds (pages it dirties are rewritten in place), then it pauses only for the last dirty pages and its state.")
    var live = false

    func run() throws {
        let path = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
        let reply: [String: Any]
        do {
            reply = try ControlClient(path: apiSocketPath(for: vm)).execute("x-swiftvmm-save", ["path": path, "leave-running": leaveRunning, "live": live])
        } catch { throw fail("save failed: \(error)") }
        let n = { (k: String) in UInt64(Progress.num(reply[k])) }
        print(String(format: "saved %@ to %@ in %.1f ms: %@ on disk (%@ apparent), guest paused %.1f ms; %@",
                     ByteSize.format(n("memory_bytes")) as NSString, path as NSString, Progress.num(reply["total_ms"]),
                     ByteSize.format(n("allocated_bytes")) as NSString, ByteSize.format(n("apparent_bytes")) as NSString,
                     Progress.num(reply["paused_ms"]),
                     (leaveRunning ? "the guest keeps running" : "the guest is stopped") as NSString))
    }
}

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a guest from a snapshot file where it was saved, then like `run`.",
        discussion: """
        Checks the file (header, every offset and length, checksums) and that this host can run \
        the guest (memory, vCPUs, CPU features, TSC rate, volumes by name) — the same checks and \
        one-line refusals as `recv` — before anything is built. Guest memory is mapped from the \
        file privately: a page is read when the guest first touches it and the file never \
        changes (do not modify it while the guest runs); --prefault reads it all up front and \
        checks its checksums instead. Disks are matched by volume name. Exit status as for `run`.
        """)

    @Argument(help: "The snapshot file (from `swiftvmm save`).")
    var file: String

    @Option(help: "Name of the restored VM (default: the saved guest's name).")
    var name: String?

    @Flag(help: "Read all of guest memory from the file before the guest runs (and check it), instead of faulting pages in on demand.")
    var prefault = false

    @Flag(help: "Accept a guest whose TSC rate differs from this host's when KVM here cannot scale it.")
    var allowTSCMismatch = false

    @OptionGroup var devices: DeviceOptions
    @OptionGroup var console: ConsoleOptions
    @OptionGroup var hostCPU: HostCPUOptions
    @OptionGroup var confinement: ConfinementOptions

    func run() throws {
        try hostCPU.validate()
        let disks = try devices.disks()
        let snapshot: SnapshotFile
        do { snapshot = try SnapshotFile(path: file) } catch { throw fail("\(error)") }
        var options = RestoreOptions(machine: TargetMachineBuilder(
            name: name, serial: try console.sink(), disks: disks, nics: try devices.nics(),
            cpuidDeny: hostCPU.cpuFeatureDeny, kvmDevice: hostCPU.kvmDevice))
        options.prefault = prefault
        options.allowTSCMismatch = allowTSCMismatch
        let vmName = name ?? snapshot.description.name
        let controller = MachineController(name: vmName, vm: nil)
        let socketPath = console.apiSocket ?? name.map(apiSocketPath(for:))
        let server = try socketPath.map { try startControlServer(path: $0, controller: controller) }
        defer { server?.stop() }
        // Locked down before the machine is built, as `recv` is: its threads confine themselves.
        try confinement.lockDown()
        let vm: VM
        let report: RestoreReport
        do { (vm, report) = try Snapshot.restore(snapshot, options: options) } catch { throw fail("cannot restore: \(error)") }
        controller.vm = vm
        note(String(format: "guest '%@' restored from %@ in %.1f ms (checks %.1f, machine %.1f, state %.1f; memory %@)",
                    vmName as NSString, file as NSString, report.totalMs, report.checkMs, report.buildMs, report.stateMs,
                    (prefault ? "read up front" : "mapped on demand") as NSString))
        throw ExitCode(runUntilStopped(vm, controller: controller, alreadyStarted: true))
    }
}
