/// PVH boot (Xen's `hvm_start_info` protocol, as QEMU microvm, Firecracker and Cloud Hypervisor
/// use it): load the ELF's PT_LOAD segments at their physical addresses and enter the address in
/// its `XEN_ELFNOTE_PHYS32_ENTRY` note in 32-bit protected mode with EBX → `hvm_start_info`.
///
/// Structure layouts, from xen/include/public/arch-x86/hvm/start_info.h (all little-endian):
/// ```
/// hvm_start_info (56 bytes)        hvm_modlist_entry (32 bytes)   hvm_memmap_table_entry (24)
///  0 magic 0x336ec578  u32          0 paddr          u64          0 addr     u64
///  4 version (1)       u32          8 size           u64          8 size     u64
///  8 flags             u32         16 cmdline_paddr  u64         16 type     u32
/// 12 nr_modules        u32         24 reserved       u64         20 reserved u32
/// 16 modlist_paddr     u64
/// 24 cmdline_paddr     u64
/// 32 rsdp_paddr        u64
/// 40 memmap_paddr      u64
/// 48 memmap_entries    u32
/// 52 reserved          u32
/// ```
enum PVHLoader {
    static let startInfoMagic: UInt32 = 0x336e_c578
    static let startInfoVersion: UInt32 = 1
    static let startInfoSize = 56
    static let moduleEntrySize = 32
    static let memmapEntrySize = 24

    static func plan(_ config: BootConfig, file: ByteReader) throws(BootError) -> BootPlan {
        let memory = config.memoryMap
        let elf = try ELFImage.parse(file)
        guard let entry = try elf.pvhEntry(in: file) else { throw .noPVHEntryNote }
        let cmdline = try KernelLoader.commandLine(config.cmdline, maximum: KernelLoader.maxCommandLine)
        let (loads, kernel) = try loadSegments(elf, file: file, memory: memory)
        guard loads.contains(where: { UInt64(entry) >= $0.physicalAddress && UInt64(entry) - $0.physicalAddress < $0.memorySize }) else {
            throw .entryOutsideKernel(GuestAddress(UInt64(entry)))
        }
        var writes: [MemoryWrite] = []
        var initrdRange: Range<GuestAddress>?
        if let initrd = config.initrd, !initrd.isEmpty {
            let start = try placeInitrd(size: UInt64(initrd.count), above: loads, memory: memory)
            initrdRange = GuestAddress(start) ..< GuestAddress(start + UInt64(initrd.count))
            writes.append(MemoryWrite(address: GuestAddress(start), bytes: initrd))
        }
        for s in loads {
            var bytes = file.slice(s.offset, length: s.fileSize) ?? []
            let tail = s.memorySize - s.fileSize
            if tail > 0, tail <= BootLayout.maxExplicitZeroFill {
                bytes.append(contentsOf: repeatElement(0, count: Int(tail)))
            }
            if !bytes.isEmpty {
                writes.append(MemoryWrite(address: GuestAddress(s.physicalAddress), bytes: bytes))
            }
        }
        let e820 = E820Entry.map(for: memory)
        writes.append(contentsOf: structures(e820: e820, initrd: initrdRange, rsdp: config.rsdpAddress))
        writes.append(contentsOf: KernelLoader.commonWrites(cmdline: cmdline, config: config))
        return BootPlan(writes: writes, entry: .pvh(entry: entry, startInfo: UInt32(BootLayout.startInfoAddress.raw)),
                        format: .pvh, kernelRange: kernel, initrdRange: initrdRange, e820: e820)
    }

    /// Every non-empty PT_LOAD, each checked — in the file, not wrapping, not overlapping
    /// another, in RAM, clear of the boot structures — and the range they span.
    static func loadSegments(_ elf: ELFImage, file: ByteReader, memory: MemoryMap) throws(BootError)
        -> ([ELFImage.Segment], Range<GuestAddress>) {
        var loads: [ELFImage.Segment] = []
        var kernelStart = UInt64.max, kernelEnd: UInt64 = 0
        for s in elf.segments where s.type == ELFImage.ptLoad {
            guard s.fileSize <= s.memorySize else {
                throw .malformedELF("PT_LOAD segment \(s.index): p_filesz \(s.fileSize) exceeds p_memsz \(s.memorySize)")
            }
            guard s.memorySize > 0 else { continue }
            guard file.contains(s.offset, length: s.fileSize) else {
                throw .malformedELF("PT_LOAD segment \(s.index) (\(s.fileSize) bytes at offset \(s.offset)) is outside the \(file.count)-byte file")
            }
            let (end, overflow) = s.physicalAddress.addingReportingOverflow(s.memorySize)
            guard !overflow else {
                throw .malformedELF("PT_LOAD segment \(s.index) at 0x\(String(s.physicalAddress, radix: 16)) wraps past 2^64")
            }
            kernelStart = min(kernelStart, s.physicalAddress)
            kernelEnd = max(kernelEnd, end)
            loads.append(s)
        }
        guard !loads.isEmpty else { throw .noLoadSegment }
        let sorted = loads.sorted { $0.physicalAddress < $1.physicalAddress }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.physicalAddress + a.memorySize > b.physicalAddress {
            throw .malformedELF("PT_LOAD segments \(a.index) and \(b.index) overlap at 0x\(String(b.physicalAddress, radix: 16))")
        }
        for s in loads {
            guard memory.isRAM(GuestAddress(s.physicalAddress), length: s.memorySize) else {
                throw .kernelDoesNotFit(size: kernelEnd - kernelStart, at: GuestAddress(kernelStart), memorySize: memory.memorySize)
            }
            try KernelLoader.checkClearOfBootStructures("kernel segment \(s.index)", start: s.physicalAddress,
                                                        end: s.physicalAddress + s.memorySize)
        }
        return (loads, GuestAddress(kernelStart) ..< GuestAddress(kernelEnd))
    }

    /// Where an initrd of `size` bytes goes: as high in low RAM as it fits, above every low
    /// kernel segment.
    static func placeInitrd(size: UInt64, above loads: [ELFImage.Segment], memory: MemoryMap) throws(BootError) -> UInt64 {
        let lowKernelEnd = loads.map { $0.physicalAddress + $0.memorySize }.filter { $0 <= memory.lowRAMEnd }.max() ?? 0
        let floor = max(alignUp(lowKernelEnd, MemoryMap.pageSize) ?? lowKernelEnd, BootLayout.reservedLowEnd.raw)
        guard let start = KernelLoader.placeHigh(size: size, floor: floor, limit: memory.lowRAMEnd) else {
            throw .initrdDoesNotFit(size: size, above: GuestAddress(floor), below: GuestAddress(memory.lowRAMEnd),
                                    memorySize: memory.memorySize)
        }
        for s in loads where start < s.physicalAddress + s.memorySize && s.physicalAddress < start + size {
            throw .overlapsBootStructure(what: "initrd", start: GuestAddress(start), end: GuestAddress(start + size),
                                         structure: "kernel segment \(s.index)")
        }
        try KernelLoader.checkClearOfBootStructures("initrd", start: start, end: start + size)
        return start
    }

    /// `hvm_start_info` (with the RSDP's address when there are ACPI tables), the module list (when there is an initrd) and the memory map.
    static func structures(e820: [E820Entry], initrd: Range<GuestAddress>?, rsdp: GuestAddress?) -> [MemoryWrite] {
        let entries = e820.prefix(BootLayout.maxMemoryMapEntries)
        var info = ByteBuilder()
        info.u32(startInfoMagic)
        info.u32(startInfoVersion)
        info.u32(0)                                           // flags
        info.u32(initrd == nil ? 0 : 1)                       // nr_modules
        info.u64(initrd == nil ? 0 : BootLayout.moduleListAddress.raw)
        info.u64(BootLayout.cmdlineAddress.raw)
        info.u64(rsdp?.raw ?? 0)                              // rsdp_paddr (0: no ACPI)
        info.u64(BootLayout.memoryMapTableAddress.raw)
        info.u32(UInt32(entries.count))
        info.u32(0)                                           // reserved
        var writes = [MemoryWrite(address: BootLayout.startInfoAddress, bytes: info.bytes)]

        if let initrd {
            var module = ByteBuilder()
            module.u64(initrd.lowerBound.raw)
            module.u64(initrd.upperBound.raw - initrd.lowerBound.raw)
            module.u64(0)                                     // cmdline_paddr: none
            module.u64(0)                                     // reserved
            writes.append(MemoryWrite(address: BootLayout.moduleListAddress, bytes: module.bytes))
        }

        var table = ByteBuilder()
        for e in entries {
            table.u64(e.address.raw)
            table.u64(e.size)
            table.u32(e.type)
            table.u32(0)
        }
        writes.append(MemoryWrite(address: BootLayout.memoryMapTableAddress, bytes: table.bytes))
        return writes
    }
}
