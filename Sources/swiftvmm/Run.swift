import ArgumentParser
import Dispatch
import Foundation
import Glibc
import Control
import KVM
import Machine

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a guest kernel (PVH ELF or Linux bzImage) and run it until it stops.")

    @Option(help: ArgumentHelp("Kernel image: a PVH ELF or a Linux bzImage.", valueName: "PATH"))
    var kernel: String

    @Option(help: ArgumentHelp("Initial ramdisk loaded with the kernel.", valueName: "PATH"))
    var initrd: String?

    @Option(help: "Kernel command line.")
    var cmdline: String = ""

    @Option(help: ArgumentHelp("Guest RAM, e.g. 256M or 2G; RAM above 3 GiB is placed above 4 GiB.", valueName: "SIZE"))
    var memory: String = "256M"

    @Option(help: "Number of vCPUs.")
    var cpus: Int = 1

    @Option(help: ArgumentHelp("Serial console: stdio or file:PATH.", valueName: "stdio|file:PATH"))
    var serial: String = "stdio"

    @Option(help: "Name of the VM (used for the generated MAC address and in status output).")
    var name: String = "swiftvmm"

    @Option(help: ArgumentHelp("A virtio-blk disk over a file; vol= names it for migration (default: the file name).", valueName: "[vol=NAME,]path=P[,readonly]"))
    var disk: [String] = []

    @Option(help: ArgumentHelp("A virtio-net NIC on a TAP interface (created if absent and allowed).", valueName: "tap=IF[,mac=MAC]"))
    var net: [String] = []

    @Option(help: ArgumentHelp("Control socket (JSON lines, QMP-like) used by send, status and cancel; default /run/swiftvmm/NAME.sock when --name is given.", valueName: "PATH"))
    var apiSocket: String?

    @Option(help: ArgumentHelp("Hide a CPUID feature bit from the guest, like QEMU's -cpu host,-FEATURE (e.g. 0x1.0.ecx:13 hides CMPXCHG16B).", valueName: "LEAF.SUB.REG:BIT"))
    var cpuFeatureDeny: [String] = []

    @Option(help: .hidden)
    var kvmDevice: String = "/dev/kvm"

    func run() throws {
        var options = try MachineOptions.parse(memory: memory, cpus: cpus, serial: serial, name: name)
        options.kvmDevice = kvmDevice
        if let bad = cpuFeatureDeny.first(where: { (try? CPUIDPolicy.deny([$0], in: [])) == nil }) {
            throw fail("--cpu-feature-deny '\(bad)' is not LEAF.SUBLEAF.REG:BIT (e.g. 0x1.0.ecx:13)")
        }
        options.cpuidDeny = cpuFeatureDeny
        let kernelBytes = try readInput(kernel, what: "kernel")
        let initrdBytes = try initrd.map { try readInput($0, what: "initrd") }
        let disks = try disk.map(DeviceOptions.parseDisk)
        let nets = try net.map(DeviceOptions.parseNet)
        let map: MemoryMap
        do { map = try MemoryMap(memorySize: options.memorySize) } catch { throw fail("--memory \(memory): \(error)") }
        // Check the kernel fits before any device or VM exists.
        do {
            _ = try KernelLoader.plan(BootConfig(kernel: kernelBytes, initrd: initrdBytes, cmdline: cmdline,
                                                 memoryMap: map, cpus: options.cpus))
        } catch { throw fail("\(kernel): \(error)") }
        let vm: VM
        do { vm = try VM(config: options.vmConfig) } catch { throw fail("\(error)") }
        let tokens = try DeviceOptions.attach(disks: disks, nets: nets, to: vm)
        let fullCmdline = ([cmdline] + tokens).filter { !$0.isEmpty }.joined(separator: " ")
        do {
            let plan = try KernelLoader.plan(BootConfig(kernel: kernelBytes, initrd: initrdBytes, cmdline: fullCmdline,
                                                        memoryMap: map, cpus: options.cpus))
            try vm.load(plan)
        } catch { throw fail("\(kernel): \(error)") }
        let controller = VMController(name: name, vm: vm)
        let socketPath = apiSocket ?? (name != "swiftvmm" ? apiSocketPath(for: name) : nil)
        let server = try socketPath.map { try startControlServer(path: $0, controller: controller) }
        defer { server?.stop() }
        let code = runUntilStopped(vm, controller: controller)
        throw ExitCode(code)
    }
}

/// Options shared by `run` and `recv`, validated.
struct MachineOptions {
    var memorySize: UInt64
    var cpus: Int
    var serial: any SerialSink
    var name: String
    var kvmDevice = "/dev/kvm"
    var cpuidDeny: [String] = []

    var vmConfig: VMConfig {
        VMConfig(name: name, memorySize: memorySize, cpus: cpus, serial: serial, cpuidDeny: cpuidDeny, kvmDevice: kvmDevice)
    }

    static func parse(memory: String, cpus: Int, serial: String, name: String) throws -> MachineOptions {
        guard let size = ByteSize.parse(memory) else {
            throw fail("--memory '\(memory)' is not a size (examples: 256M, 2G)")
        }
        guard size > 0 else { throw fail("--memory must be more than 0") }
        guard size >= MemoryMap.minimumMemory else {
            throw fail("--memory \(memory) is too small: swiftvmm needs at least \(MemoryMap.minimumMemory >> 20)M")
        }
        guard size % MemoryMap.pageSize == 0 else { throw fail("--memory \(memory) is not a multiple of 4K") }
        guard cpus >= 1 else { throw fail("--cpus must be at least 1 (got \(cpus))") }
        guard cpus <= 254 else { throw fail("--cpus \(cpus) is more than the 254 swiftvmm supports") }
        let sink: any SerialSink
        if serial == "stdio" {
            sink = FileDescriptorSink(fd: 1)
        } else if serial.hasPrefix("file:") {
            let path = String(serial.dropFirst(5))
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw fail("--serial \(serial): cannot open \(path): \(String(cString: strerror(errno)))") }
            sink = FileDescriptorSink(fd: fd)
        } else {
            throw fail("--serial '\(serial)' is not stdio or file:PATH")
        }
        return MachineOptions(memorySize: size, cpus: cpus, serial: sink, name: name)
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

/// Runs `vm` until it stops, turning SIGINT/SIGTERM into a clean stop, and returns the
/// process exit code for the reason it stopped.
func runUntilStopped(_ vm: VM, controller: VMController? = nil, alreadyStarted: Bool = false) -> Int32 {
    Signals.shared.onTerminate { sig in vm.stop(.signal(sig)) }
    if !alreadyStarted { vm.start() }
    let reason = vm.waitForStop()
    if reason == .migrated, let controller {
        // Let the `migrate` reply reach `send` before this process goes away.
        controller.waitForMigrateReply(timeout: 5)
    }
    return exitCode(for: reason)
}

/// SIGINT and SIGTERM, routed to whatever should stop now (a receive, then the guest).
final class Signals: @unchecked Sendable {
    static let shared = Signals()
    private let lock = NSLock()
    private var handler: (@Sendable (Int32) -> Void)?
    private var sources: [DispatchSourceSignal] = []

    private init() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { [self] in
                lock.lock()
                let h = handler
                lock.unlock()
                h?(sig)
            }
            s.resume()
            sources.append(s)
        }
    }

    func onTerminate(_ h: @escaping @Sendable (Int32) -> Void) {
        lock.lock(); handler = h; lock.unlock()
    }
}

/// Serves the control socket at `path` for `controller`.
func startControlServer(path: String, controller: VMController) throws -> ControlServer {
    do {
        let server = try ControlServer(path: path) { command, args in controller.handle(command, args) }
        server.replyWritten = { command in if command == "migrate" { controller.migrateReplyWritten() } }
        return server
    } catch { throw fail("\(error)") }
}

func exitCode(for reason: StopReason) -> Int32 {
    switch reason {
    case .guest(.debugExit(let v)): return Int32(truncatingIfNeeded: (v << 1) | 1) & 0xff
    case .guest(.reset): return 0
    case .signal(let s):
        note("stopped by \(s == SIGINT ? "SIGINT" : "SIGTERM")")
        return 0
    case .migrated:
        note("the guest now runs on the migration target; exiting")
        return 0
    case .tripleFault(let m):
        FileHandle.standardError.write(Data("swiftvmm: guest crashed: \(m)\n".utf8))
        return Status.guestCrashed
    case .internalError(let m):
        FileHandle.standardError.write(Data("swiftvmm: guest stopped: \(m)\n".utf8))
        return Status.guestCrashed
    }
}
