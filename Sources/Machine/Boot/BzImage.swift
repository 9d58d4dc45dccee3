/// The fields of a bzImage's setup header (Documentation/arch/x86/boot.rst) the loader uses.
struct SetupHeader: Equatable {
    /// File offsets of header fields; the same offsets hold them inside `boot_params`.
    enum Offset {
        static let setupSects: UInt64 = 0x1f1
        static let bootFlag: UInt64 = 0x1fe
        static let jump: UInt64 = 0x200
        static let header: UInt64 = 0x202
        static let version: UInt64 = 0x206
        static let typeOfLoader: UInt64 = 0x210
        static let loadflags: UInt64 = 0x211
        static let ramdiskImage: UInt64 = 0x218
        static let ramdiskSize: UInt64 = 0x21c
        static let heapEndPtr: UInt64 = 0x224
        static let cmdLinePtr: UInt64 = 0x228
        static let initrdAddrMax: UInt64 = 0x22c
        static let kernelAlignment: UInt64 = 0x230
        static let relocatableKernel: UInt64 = 0x234
        static let xloadflags: UInt64 = 0x236
        static let cmdlineSize: UInt64 = 0x238
        static let prefAddress: UInt64 = 0x258
        static let initSize: UInt64 = 0x260
    }

    static let magic: UInt32 = 0x5372_6448            // "HdrS"
    static let bootFlagValue: UInt16 = 0xaa55
    static let minimumVersion: UInt16 = 0x020c          // 2.12: xloadflags, 64-bit entry
    static let loadedHigh: UInt8 = 0x01
    static let canUseHeap: UInt8 = 0x80
    static let xlfKernel64: UInt16 = 0x01
    /// The 2.12 header runs through `init_size`; `boot_params` has room up to 0x290.
    static let minimumEnd: UInt64 = 0x264
    static let maximumEnd: UInt64 = 0x290

    /// Bytes of real-mode setup code before the protected-mode kernel: (setup_sects + 1) × 512.
    var setupSize: UInt64
    /// File offset one past the header: 0x202 + the jump's displacement byte at 0x201.
    var headerEnd: UInt64
    var version: UInt16
    var loadflags: UInt8
    var xloadflags: UInt16
    var cmdlineSize: UInt32
    var initrdAddrMax: UInt32
    var kernelAlignment: UInt32
    var relocatable: Bool
    var prefAddress: UInt64
    var initSize: UInt32

    static func parse(_ file: ByteReader) throws(BootError) -> SetupHeader {
        guard let bootFlag = file.u16(Offset.bootFlag), let version = file.u16(Offset.version) else {
            throw .truncated(what: "bzImage setup header", needed: Offset.version + 2, fileSize: file.count)
        }
        guard bootFlag == bootFlagValue else {
            throw .malformedBzImage("boot_flag is 0x\(String(bootFlag, radix: 16)), expected 0xaa55")
        }
        guard version >= minimumVersion else { throw .bootProtocolTooOld(version) }
        guard let jump = file.u8(Offset.jump + 1), file.count >= minimumEnd else {
            throw .truncated(what: "boot protocol 2.12 setup header", needed: minimumEnd, fileSize: file.count)
        }
        let headerEnd = min(Offset.header + UInt64(jump), maximumEnd)
        guard headerEnd >= minimumEnd else {
            throw .malformedBzImage("setup header ends at 0x\(String(headerEnd, radix: 16)) (jump at 0x200), before init_size at 0x260")
        }
        let rawSects = UInt64(file.u8(Offset.setupSects) ?? 0)
        let setupSize = ((rawSects == 0 ? 4 : rawSects) + 1) * 512
        guard headerEnd <= setupSize else {
            throw .malformedBzImage("setup header (to 0x\(String(headerEnd, radix: 16))) is longer than the \(setupSize)-byte setup area")
        }
        guard setupSize < file.count else {
            throw .truncated(what: "bzImage protected-mode kernel after \(setupSize) bytes of setup", needed: setupSize + 1, fileSize: file.count)
        }
        // All reads below are before minimumEnd, which the file holds.
        return SetupHeader(
            setupSize: setupSize, headerEnd: headerEnd, version: version,
            loadflags: file.u8(Offset.loadflags) ?? 0,
            xloadflags: file.u16(Offset.xloadflags) ?? 0,
            cmdlineSize: file.u32(Offset.cmdlineSize) ?? 0,
            initrdAddrMax: file.u32(Offset.initrdAddrMax) ?? 0,
            kernelAlignment: file.u32(Offset.kernelAlignment) ?? 0,
            relocatable: (file.u8(Offset.relocatableKernel) ?? 0) != 0,
            prefAddress: file.u64(Offset.prefAddress) ?? 0,
            initSize: file.u32(Offset.initSize) ?? 0)
    }
}

/// Linux bzImage through the 64-bit boot protocol: the protected-mode kernel is loaded at
/// 1 MiB (or its `pref_address` when that fits), `boot_params` carries a copy of the setup
/// header plus the command line, initrd and e820 map, and the vCPU starts in long mode at
/// load address + 0x200 with RSI → `boot_params` and identity page tables for 0 ..< 4 GiB.
enum BzImageLoader {
    /// `boot_params` offsets outside the setup header.
    enum ZeroPage {
        static let size = 4096
        static let acpiRSDPAddress = 0x070
        static let extRamdiskImage = 0x0c0
        static let extRamdiskSize = 0x0c4
        static let extCmdLinePtr = 0x0c8
        static let e820Entries = 0x1e8
        static let e820Table = 0x2d0
        static let e820EntrySize = 20
        static let e820MaxEntries = 128
    }

    /// Offset of the 64-bit entry point in the protected-mode kernel.
    static let entryOffset: UInt64 = 0x200
    /// heap_end_ptr value: heap ends at 0xe000 in the (unused) real-mode segment, minus 0x200.
    static let heapEndPtr: UInt16 = 0xde00
    /// type_of_loader 0xff: "undefined" boot loader.
    static let loaderType: UInt8 = 0xff

    static func hasSetupHeader(_ file: ByteReader) -> Bool {
        file.u32(SetupHeader.Offset.header) == SetupHeader.magic
    }

    static func plan(_ config: BootConfig, file: ByteReader) throws(BootError) -> BootPlan {
        let memory = config.memoryMap
        let header = try SetupHeader.parse(file)
        guard header.loadflags & SetupHeader.loadedHigh != 0 else {
            throw .malformedBzImage("loadflags LOADED_HIGH is clear (a zImage, which loads at 0x10000)")
        }
        guard header.xloadflags & SetupHeader.xlfKernel64 != 0 else {
            throw .malformedBzImage("xloadflags XLF_KERNEL_64 is clear: no 64-bit entry point")
        }
        let maxCmdline = min(Int(header.cmdlineSize), KernelLoader.maxCommandLine)
        let cmdline = try KernelLoader.commandLine(config.cmdline, maximum: maxCmdline)

        let payloadSize = file.count - header.setupSize
        let placement = try place(header: header, payloadSize: payloadSize, memory: memory)
        try KernelLoader.checkClearOfBootStructures("kernel", start: placement.load, end: placement.end)

        var initrdRange: Range<GuestAddress>?
        if let initrd = config.initrd, !initrd.isEmpty {
            let size = UInt64(initrd.count)
            let limit = min(UInt64(header.initrdAddrMax) + 1, memory.lowRAMEnd)
            let floor = alignUp(placement.end, MemoryMap.pageSize) ?? placement.end
            guard let start = KernelLoader.placeHigh(size: size, floor: floor, limit: limit) else {
                throw .initrdDoesNotFit(size: size, above: GuestAddress(floor), below: GuestAddress(limit),
                                        memorySize: memory.memorySize)
            }
            try KernelLoader.checkClearOfBootStructures("initrd", start: start, end: start + size)
            initrdRange = GuestAddress(start) ..< GuestAddress(start + size)
        }

        let e820 = E820Entry.map(for: memory)
        let zeroPage = bootParams(file: file, header: header, initrd: initrdRange, e820: e820, rsdp: config.rsdpAddress)

        var writes = [MemoryWrite(address: BootLayout.bootParamsAddress, bytes: zeroPage)]
        writes.append(contentsOf: X86Tables.identityPageTables())
        writes.append(contentsOf: KernelLoader.commonWrites(cmdline: cmdline, config: config))
        writes.append(MemoryWrite(address: GuestAddress(placement.load),
                                  bytes: file.slice(header.setupSize, length: payloadSize) ?? []))
        if let initrd = config.initrd, let range = initrdRange {
            writes.append(MemoryWrite(address: range.lowerBound, bytes: initrd))
        }

        return BootPlan(
            writes: writes,
            entry: .linux64(entry: placement.load + entryOffset,
                            bootParams: BootLayout.bootParamsAddress.raw,
                            pml4: BootLayout.pml4Address.raw,
                            gdtBase: BootLayout.gdtAddress.raw,
                            gdtLimit: BootLayout.gdtLimit),
            format: .bzImage,
            kernelRange: GuestAddress(placement.load) ..< GuestAddress(placement.end),
            initrdRange: initrdRange,
            e820: e820)
    }

    /// Where the protected-mode kernel is copied (`load`) and the end of the memory it uses
    /// while decompressing (`end`).
    ///
    /// The decompressor runs at `base` = max(load aligned up to kernel_alignment, pref_address)
    /// for a relocatable kernel (it never goes below LOAD_PHYSICAL_ADDR = pref_address), at
    /// pref_address otherwise, and uses `init_size` bytes from there.
    static func place(header: SetupHeader, payloadSize: UInt64,
                      memory: MemoryMap) throws(BootError) -> (load: UInt64, end: UInt64) {
        let lowEnd = memory.lowRAMEnd
        let footprint = max(payloadSize, UInt64(header.initSize))
        let pref = header.prefAddress
        var load = BootLayout.bzImageLoadAddress.raw
        if pref >= load, pref % MemoryMap.pageSize == 0, pref <= lowEnd, footprint <= lowEnd - pref {
            load = pref
        }
        let alignment = UInt64(header.kernelAlignment)
        let align = alignment.nonzeroBitCount == 1 && alignment >= MemoryMap.pageSize && alignment <= 1 << 30
            ? alignment : 0x20_0000
        let aligned = header.relocatable ? (alignUp(load, align) ?? load) : load
        let base = max(aligned, pref)
        let (runEnd, o1) = base.addingReportingOverflow(UInt64(header.initSize))
        let (copyEnd, o2) = load.addingReportingOverflow(payloadSize)
        guard !o1, !o2 else {
            throw .kernelDoesNotFit(size: footprint, at: GuestAddress(base), memorySize: memory.memorySize)
        }
        let end = max(runEnd, copyEnd)
        guard end <= lowEnd else {
            throw .kernelDoesNotFit(size: end - load, at: GuestAddress(load), memorySize: memory.memorySize)
        }
        return (load, end)
    }

    /// The 4 KiB `boot_params`: the file's setup header, then the loader's fields.
    static func bootParams(file: ByteReader, header: SetupHeader, initrd: Range<GuestAddress>?,
                           e820: [E820Entry], rsdp: GuestAddress? = nil) -> [UInt8] {
        typealias O = SetupHeader.Offset
        var page = [UInt8](repeating: 0, count: ZeroPage.size)
        let start = O.setupSects
        let copied = file.slice(start, length: header.headerEnd - start) ?? []
        for (i, byte) in copied.enumerated() where Int(start) + i < page.count {
            page[Int(start) + i] = byte
        }
        page.storeLE(loaderType, at: Int(O.typeOfLoader))
        page.storeLE(header.loadflags | SetupHeader.canUseHeap, at: Int(O.loadflags))
        page.storeLE(heapEndPtr, at: Int(O.heapEndPtr))

        let cmdline = BootLayout.cmdlineAddress.raw
        page.storeLE(UInt32(truncatingIfNeeded: cmdline), at: Int(O.cmdLinePtr))
        page.storeLE(UInt32(truncatingIfNeeded: cmdline >> 32), at: ZeroPage.extCmdLinePtr)

        let image = initrd?.lowerBound.raw ?? 0
        let size = initrd.map { $0.upperBound.raw - $0.lowerBound.raw } ?? 0
        page.storeLE(UInt32(truncatingIfNeeded: image), at: Int(O.ramdiskImage))
        page.storeLE(UInt32(truncatingIfNeeded: size), at: Int(O.ramdiskSize))
        page.storeLE(UInt32(truncatingIfNeeded: image >> 32), at: ZeroPage.extRamdiskImage)
        page.storeLE(UInt32(truncatingIfNeeded: size >> 32), at: ZeroPage.extRamdiskSize)

        // acpi_rsdp_addr (boot protocol 2.14; older kernels ignore it and scan 0xE0000 … 1 MiB).
        page.storeLE(rsdp?.raw ?? 0, at: ZeroPage.acpiRSDPAddress)

        let entries = e820.prefix(ZeroPage.e820MaxEntries)
        page.storeLE(UInt8(entries.count), at: ZeroPage.e820Entries)
        for (i, e) in entries.enumerated() {
            let at = ZeroPage.e820Table + i * ZeroPage.e820EntrySize
            page.storeLE(e.address.raw, at: at)
            page.storeLE(e.size, at: at + 8)
            page.storeLE(e.type, at: at + 16)
        }
        return page
    }
}
