/// Bytes to copy into guest RAM at `address` before the first vCPU runs.
public struct MemoryWrite: Sendable, Equatable {
    /// Guest-physical address of the first byte.
    public var address: GuestAddress
    /// The bytes, copied verbatim.
    public var bytes: [UInt8]

    /// A write of `bytes` at `address`.
    public init(address: GuestAddress, bytes: [UInt8]) {
        self.address = address
        self.bytes = bytes
    }
}

/// The CPU state the boot vCPU must be put in, and where it starts.
public enum BootEntry: Sendable, Equatable {
    /// PVH: 32-bit protected mode, paging off, flat 4 GiB code/data segments
    /// (`BootLayout.code32Selector` / `dataSelector`), EBX = hvm_start_info address.
    case pvh(entry: UInt32, startInfo: UInt32)
    /// Linux 64-bit boot protocol: long mode, paging on with identity tables at `pml4` (CR3),
    /// GDT at `gdtBase`/`gdtLimit` with 64-bit code selector 0x10 and data selector 0x18,
    /// RSI = bootParams.
    case linux64(entry: UInt64, bootParams: UInt64, pml4: UInt64, gdtBase: UInt64, gdtLimit: UInt16)
}

/// Which boot protocol the kernel image speaks.
public enum KernelFormat: String, Sendable, Equatable {
    /// An ELF with a Xen `XEN_ELFNOTE_PHYS32_ENTRY` note (vmlinux, the GuestImages guests).
    case pvh
    /// A Linux bzImage entered through its 64-bit entry point.
    case bzImage
}

/// Everything the loader needs to know about the guest it boots.
public struct BootConfig: Sendable {
    /// The kernel image file: a PVH ELF or a bzImage. Untrusted.
    public var kernel: [UInt8]
    /// The initial ramdisk, if any (an empty one counts as none). Untrusted.
    public var initrd: [UInt8]?
    /// The kernel command line, without a terminating NUL.
    public var cmdline: String
    /// The machine's guest-physical layout.
    public var memoryMap: MemoryMap
    /// Number of vCPUs, 1 … 254 (listed in the MP table and the MADT).
    public var cpus: Int
    /// Write ACPI tables and pass the RSDP to the kernel (`run --no-acpi` turns this off; the
    /// MP table is written either way).
    public var acpi: Bool
    /// How many virtio-mmio devices the DSDT describes, in window order.
    public var virtioDevices: Int

    /// A configuration; `cpus` defaults to 1, the command line to empty, ACPI to on.
    public init(kernel: [UInt8], initrd: [UInt8]? = nil, cmdline: String = "", memoryMap: MemoryMap, cpus: Int = 1,
                acpi: Bool = true, virtioDevices: Int = 0) {
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.memoryMap = memoryMap
        self.cpus = cpus
        self.acpi = acpi
        self.virtioDevices = virtioDevices
    }

    /// Where the RSDP is, or nil without ACPI.
    var rsdpAddress: GuestAddress? { acpi ? BootLayout.acpiAddress : nil }
}

/// The result of loading: what to write into guest RAM and how to start the boot vCPU.
///
/// The writes assume guest RAM is fresh, i.e. all zero: zero-filled ELF tails (bss) larger than
/// `BootLayout.maxExplicitZeroFill` are not written. Writes do not overlap one another and all
/// lie in `memoryMap`'s RAM.
public struct BootPlan: Sendable {
    /// Copies into guest RAM, in no particular order.
    public var writes: [MemoryWrite]
    /// Initial CPU mode and registers.
    public var entry: BootEntry
    /// The boot protocol used.
    public var format: KernelFormat
    /// Guest memory the kernel occupies at start: ELF segments (file + zero tail), or a bzImage
    /// from its load address to the end of its decompression area (`init_size`).
    public var kernelRange: Range<GuestAddress>
    /// Where the initrd was placed, if there is one.
    public var initrdRange: Range<GuestAddress>?
    /// The memory map given to the guest (e820 / PVH memmap).
    public var e820: [E820Entry]
}

/// Turns a kernel, initrd and command line into a `BootPlan`, without touching KVM.
public enum KernelLoader {
    /// The longest command line the loader places (its area holds this many bytes plus a NUL).
    public static let maxCommandLine = Int(BootLayout.cmdlineCapacity) - 1

    /// Parses the kernel (PVH ELF or bzImage), places it, the initrd and the boot structures,
    /// and returns the writes and entry state. Every malformed or unfitting input is a `BootError`.
    public static func plan(_ config: BootConfig) throws(BootError) -> BootPlan {
        guard config.cpus >= 1, config.cpus <= MPTable.maxCPUs else {
            throw .invalidCPUCount(config.cpus)
        }
        guard config.virtioDevices >= 0,
              config.virtioDevices <= Int(MemoryMap.lastIRQ + 1 - MemoryMap.virtioFirstIRQ) else {
            throw .invalidDeviceCount(config.virtioDevices)
        }
        let file = ByteReader(config.kernel)
        if ELFImage.isELF(config.kernel) {
            return try PVHLoader.plan(config, file: file)
        }
        if BzImageLoader.hasSetupHeader(file) {
            return try BzImageLoader.plan(config, file: file)
        }
        if file.u16(SetupHeader.Offset.bootFlag) == SetupHeader.bootFlagValue {
            guard file.count >= SetupHeader.Offset.version else {
                throw .truncated(what: "bzImage setup header", needed: SetupHeader.Offset.version, fileSize: file.count)
            }
            throw .malformedBzImage("boot sector has no HdrS setup header (boot protocol before 2.00)")
        }
        throw .unrecognizedKernel
    }

    /// The command line's bytes after checking them against `maximum` (excluding the NUL).
    static func commandLine(_ cmdline: String, maximum: Int) throws(BootError) -> [UInt8] {
        let bytes = Array(cmdline.utf8)
        guard !bytes.contains(0) else { throw .commandLineContainsNUL }
        guard bytes.count <= maximum else {
            throw .commandLineTooLong(length: bytes.count, maximum: maximum)
        }
        return bytes
    }

    /// Writes both formats share: GDT, MP table, ACPI tables (unless off) and the
    /// NUL-terminated command line.
    static func commonWrites(cmdline: [UInt8], config: BootConfig) -> [MemoryWrite] {
        var writes = [
            MemoryWrite(address: BootLayout.gdtAddress, bytes: X86Tables.gdt()),
            MemoryWrite(address: BootLayout.mpTableAddress, bytes: MPTable.build(cpus: config.cpus, at: BootLayout.mpTableAddress)),
            MemoryWrite(address: BootLayout.cmdlineAddress, bytes: cmdline + [0]),
        ]
        if let rsdp = config.rsdpAddress {
            let machine = ACPITables.Machine(cpus: config.cpus, virtioDevices: config.virtioDevices)
            writes.append(MemoryWrite(address: rsdp, bytes: ACPITables.build(machine, at: rsdp)))
        }
        return writes
    }

    /// Throws if `[start, end)` of `what` overlaps a structure in `BootLayout.reservedRegions`.
    static func checkClearOfBootStructures(_ what: String, start: UInt64, end: UInt64) throws(BootError) {
        for region in BootLayout.reservedRegions
        where start < region.range.upperBound && region.range.lowerBound < end {
            throw .overlapsBootStructure(what: what, start: GuestAddress(start), end: GuestAddress(end),
                                         structure: region.name)
        }
    }

    /// The highest page-aligned start for `size` bytes ending at or below `limit` and starting at
    /// or above `floor`, or nil if there is none.
    static func placeHigh(size: UInt64, floor: UInt64, limit: UInt64) -> UInt64? {
        guard size <= limit else { return nil }
        let start = alignDown(limit - size, MemoryMap.pageSize)
        return start >= floor ? start : nil
    }
}
