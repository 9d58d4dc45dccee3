import ArgumentParser
import Control
import Glibc
import Machine

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a guest kernel (PVH ELF or Linux bzImage) and run it until it stops.",
        discussion: """
        Exit status: the guest's debug-exit value v (port 0xf4) gives (v<<1)|1; 0 after a reset, \
        SIGINT/SIGTERM or a migration away; 2 when swiftvmm cannot start (one line names why); \
        3 when the guest crashed.
        """)

    @Option(help: ArgumentHelp("Kernel image: a PVH ELF or a Linux bzImage.", valueName: "PATH"))
    var kernel: String

    @Option(help: ArgumentHelp("Initial ramdisk loaded with the kernel.", valueName: "PATH"))
    var initrd: String?

    @Option(help: "Kernel command line.")
    var cmdline: String = ""

    @Option(help: ArgumentHelp("Guest RAM, e.g. 256M or 2G; RAM above 3 GiB is placed above 4 GiB.", valueName: "SIZE"))
    var memory: String = "256M"

    @Option(help: "Number of vCPUs (1–254).")
    var cpus: Int = 1

    @Option(help: "Name of the VM (used for the generated MAC address and in status output).")
    var name: String = "swiftvmm"

    @Option(help: ArgumentHelp("The CPU the guest sees: host (all this host offers), generic (= x86-64-v1, the AMD64 baseline every host offers), an x86-64 psABI level v1–v4, or a JSON FILE from `swiftvmm cpu-baseline`. A guest can move to any host that offers its model.",
                               valueName: "host|generic|x86-64-v1…v4|FILE"))
    var cpuModel: String = "host"

    @Option(help: ArgumentHelp("What guest RAM is made of: anonymous (private to this process), or memfd (shared files; `send --local` can then hand the running guest to another swiftvmm on this host without copying it). shared is another name for memfd.",
                               valueName: "anonymous|memfd"))
    var memoryBackend: String = "anonymous"

    @Flag(help: "Write no ACPI tables (the guest then finds its CPUs and IOAPIC through the MP table only, and virtio devices only on its command line).")
    var noACPI = false

    @OptionGroup var devices: DeviceOptions
    @OptionGroup var console: ConsoleOptions
    @OptionGroup var hostCPU: HostCPUOptions
    @OptionGroup var confinement: ConfinementOptions

    func run() throws {
        try hostCPU.validate()
        var config = VMConfig(name: name, memorySize: try parseMemory(memory), cpus: cpus, serial: try console.sink(),
                              cpuidDeny: hostCPU.cpuFeatureDeny, kvmDevice: hostCPU.kvmDevice,
                              disks: try devices.disks(), nics: try devices.nics())
        do { config.cpuModel = try CPUModel.parse(cpuModel) } catch { throw fail("\(error)") }
        guard let backend = MemoryBackend.parse(memoryBackend) else { throw fail("--memory-backend '\(memoryBackend)' is not anonymous or memfd") }
        config.memoryBackend = backend
        do { try config.validate() } catch { throw fail("\(error)") }
        let kernelBytes = try readInput(kernel, what: "kernel")
        let initrdBytes = try initrd.map { try readInput($0, what: "initrd") }
        let map: MemoryMap
        do { map = try MemoryMap(memorySize: config.memorySize) } catch { throw fail("--memory \(memory): \(error)") }
        // Check the kernel fits before any device or VM exists.
        do {
            _ = try KernelLoader.plan(BootConfig(kernel: kernelBytes, initrd: initrdBytes, cmdline: cmdline, memoryMap: map, cpus: cpus,
                                                 acpi: !noACPI, virtioDevices: config.disks.count + config.nics.count))
        } catch { throw fail("\(kernel): \(error)") }
        let vm: VM
        do { vm = try VM(config: config) } catch { throw fail("\(error)") }
        StartupTrace.mark("machine")
        let fullCmdline = ([cmdline] + vm.devices.commandLineTokens).filter { !$0.isEmpty }.joined(separator: " ")
        do {
            try vm.load(try KernelLoader.plan(BootConfig(kernel: kernelBytes, initrd: initrdBytes, cmdline: fullCmdline,
                                                         memoryMap: map, cpus: cpus, acpi: !noACPI,
                                                         virtioDevices: vm.devices.virtio.count)))
        } catch {
            vm.tearDown(.internalError("boot failed"))
            throw fail("\(kernel): \(error)")
        }
        StartupTrace.mark("loaded")
        let controller = MachineController(name: name, vm: vm)
        let socketPath = console.apiSocket ?? (name != "swiftvmm" ? apiSocketPath(for: name) : nil)
        let server: ControlServer?
        do { server = try socketPath.map { try startControlServer(path: $0, controller: controller) } } catch {
            vm.tearDown(.internalError("no control socket"))
            throw error
        }
        defer { server?.stop() }
        do { try confinement.lockDown() } catch {
            vm.tearDown(.internalError("not confined"))
            throw error
        }
        StartupTrace.mark("confined")
        throw ExitCode(runUntilStopped(vm, controller: controller))
    }
}

/// Reads a whole input file, failing with a one-line error naming it.
func readInput(_ path: String, what: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw fail("cannot read \(what) '\(path)': \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw fail("cannot stat \(what) '\(path)': \(String(cString: strerror(errno)))") }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw fail("\(what) '\(path)' is not a regular file") }
    let size = Int(st.st_size)
    guard size > 0 else { throw fail("\(what) '\(path)' is empty") }
    guard size <= 1 << 31 else { throw fail("\(what) '\(path)' is larger than 2 GiB") }
    var bytes = [UInt8](repeating: 0, count: size)
    var done = 0
    while done < size {
        let n = bytes.withUnsafeMutableBytes { buf -> Int in
            guard let base = buf.baseAddress else { return -1 }
            return pread(fd, base + done, size - done, off_t(done))
        }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw fail("cannot read \(what) '\(path)': \(String(cString: strerror(errno)))") }
        done += n
    }
    return bytes
}
