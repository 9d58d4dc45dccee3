import ArgumentParser
import Foundation
import Machine

/// Devices, for `run` and `recv`.
struct DeviceOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A virtio-blk disk over a raw image file. vol= names it; a migration target matches disks by that name, so the path may differ there (default name: the file name). mirror=Q writes every guest write to Q as well (see mirror-resync); on recv, copy takes the image from a send --copy-storage.",
                               valueName: "[vol=NAME,]path=P[,readonly][,mirror=Q][,copy]"))
    var disk: [String] = []

    @Option(help: ArgumentHelp("A virtio-net NIC on a TAP interface (created if absent and allowed; multi-queue, so a migration peer on this host can share it).",
                               valueName: "tap=IF[,mac=MAC]"))
    var net: [String] = []

    func disks() throws -> [DiskConfig] {
        do {
            let disks = try disk.map(DiskConfig.parse)
            for d in disks { try d.refuseNonRawImage() }
            return disks
        } catch { throw fail("\(error)") }
    }

    func nics() throws -> [NICConfig] {
        do { return try net.map(NICConfig.parse) } catch { throw fail("\(error)") }
    }
}

/// How the guest's console and control socket are reached, for `run` and `recv`.
struct ConsoleOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Serial console: stdio, or file:PATH (created or truncated).", valueName: "stdio|file:PATH"))
    var serial: String = "stdio"

    @Option(help: ArgumentHelp("QMP monitor socket (what send, status, cancel, stop, cont and quit use); default /run/swiftvmm/NAME.sock when --name is given.",
                               valueName: "PATH"))
    var apiSocket: String?

    func sink() throws -> any SerialSink {
        do { return try FileDescriptorSink.open(serial) } catch { throw fail("\(error)") }
    }
}

/// What of this host's CPU a guest may see, for `run` and `recv`.
struct HostCPUOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Hide a CPUID feature bit, as if this CPU lacked it (like QEMU's -cpu host,-FEATURE); e.g. 0x1.0.ecx:13 hides CMPXCHG16B, 0x7.0.ebx:5 AVX2.",
                               valueName: "LEAF.SUB.REG:BIT"))
    var cpuFeatureDeny: [String] = []

    @Option(help: .hidden)
    var kvmDevice: String = "/dev/kvm"

    func validate() throws {
        if let bad = cpuFeatureDeny.first(where: { (try? CPUIDPolicy.deny([$0], in: [])) == nil }) {
            throw fail("--cpu-feature-deny '\(bad)' is not LEAF.SUBLEAF.REG:BIT (e.g. 0x7.0.ebx:5)")
        }
    }
}

/// `--memory SIZE`, parsed and checked.
func parseMemory(_ text: String) throws -> UInt64 {
    guard let size = ByteSize.parse(text) else { throw fail("--memory '\(text)' is not a size (examples: 256M, 2G)") }
    guard size > 0 else { throw fail("--memory must be more than 0") }
    guard size >= MemoryMap.minimumMemory else {
        throw fail("--memory \(text) is too small: swiftvmm needs at least \(MemoryMap.minimumMemory >> 20)M")
    }
    guard size % MemoryMap.pageSize == 0 else { throw fail("--memory \(text) is not a multiple of 4K") }
    do { _ = try MemoryMap(memorySize: size) } catch { throw fail("--memory \(text): \(error)") }
    return size
}

/// System-call confinement, for `run` and `recv`.
struct ConfinementOptions: ParsableArguments {
    @Flag(name: .customLong("no-seccomp"), help: "Do not confine swiftvmm's threads with seccomp filters (for debugging with strace or gdb).")
    var noSeccomp = false

    /// Locks the process down (unless --no-seccomp) once set-up is over; then a test trigger,
    /// when SWIFTVMM_SECCOMP_SELFTEST names a thread kind, attempts a forbidden call on one.
    func lockDown() throws {
        guard !noSeccomp else { return }
        do { try Confinement.lockDown() } catch { throw fail("\(error) (run with --no-seccomp to go without)") }
        if let kind = ProcessInfo.processInfo.environment["SWIFTVMM_SECCOMP_SELFTEST"].flatMap(Confinement.ThreadKind.init) {
            Confinement.selfTest(kind)
        }
    }
}
