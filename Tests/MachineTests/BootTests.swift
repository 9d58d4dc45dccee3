import Foundation
import Testing
@testable import Machine

// MARK: - Synthetic images and decoding helpers shared by the Boot*Tests files

/// Little-endian stores and loads on test byte arrays.
extension Array where Element == UInt8 {
    mutating func putLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0 ..< T.bitWidth / 8 { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    func getLE<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var v: T = 0
        for i in 0 ..< T.bitWidth / 8 { v |= T(self[offset + i]) << (8 * i) }
        return v
    }
}

/// Builders for minimal kernels the loader accepts.
enum BootImage {
    struct Note {
        var name: [UInt8] = Array("Xen\0".utf8)
        var type: UInt32 = 18
        var desc: [UInt8]

        static func entry32(_ v: UInt32) -> Note { var d = [UInt8](repeating: 0, count: 4); d.putLE(v, at: 0); return Note(desc: d) }
        static func entry64(_ v: UInt64) -> Note { var d = [UInt8](repeating: 0, count: 8); d.putLE(v, at: 0); return Note(desc: d) }

        var bytes: [UInt8] {
            var b = [UInt8](repeating: 0, count: 12)
            b.putLE(UInt32(name.count), at: 0)
            b.putLE(UInt32(desc.count), at: 4)
            b.putLE(type, at: 8)
            b += name + [UInt8](repeating: 0, count: (4 - name.count % 4) % 4)
            b += desc + [UInt8](repeating: 0, count: (4 - desc.count % 4) % 4)
            return b
        }
    }

    struct Segment {
        var paddr: UInt64
        var data: [UInt8]
        var memsz: UInt64? = nil
    }

    /// An ELF (64- or 32-bit) with the given PT_LOAD segments and notes. Notes go in a PT_NOTE
    /// segment, or only in a SHT_NOTE section when `notesInSectionOnly`.
    static func elf(is64: Bool = true, segments: [Segment] = [Segment(paddr: 0x100000, data: payload(256))],
                    notes: [Note] = [.entry32(0x100000)], notesInSectionOnly: Bool = false) -> [UInt8] {
        let ehsize = is64 ? 64 : 52
        let phentsize = is64 ? 56 : 32
        let shentsize = is64 ? 64 : 40
        let noteBytes = notes.flatMap(\.bytes)
        let hasNotePhdr = !notes.isEmpty && !notesInSectionOnly
        let phnum = segments.count + (hasNotePhdr ? 1 : 0)
        let noteOffset = ehsize + phnum * phentsize
        var dataOffset = (noteOffset + noteBytes.count + 15) & ~15
        var file = [UInt8](repeating: 0, count: dataOffset)
        file.replaceSubrange(0 ..< 4, with: [0x7f, 0x45, 0x4c, 0x46])
        file[4] = is64 ? 2 : 1
        file[5] = 1
        file[6] = 1
        file.putLE(UInt16(2), at: 16)                    // ET_EXEC
        file.putLE(UInt16(is64 ? 62 : 3), at: 18)
        file.putLE(UInt32(1), at: 20)
        var phdrs: [(type: UInt32, offset: Int, paddr: UInt64, filesz: Int, memsz: UInt64, align: UInt64)] = []
        for s in segments {
            phdrs.append((1, dataOffset, s.paddr, s.data.count, s.memsz ?? UInt64(s.data.count), 0x1000))
            dataOffset += s.data.count
        }
        if hasNotePhdr { phdrs.append((4, noteOffset, 0, noteBytes.count, UInt64(noteBytes.count), 4)) }
        file.replaceSubrange(noteOffset ..< noteOffset + noteBytes.count, with: noteBytes)
        for s in segments { file += s.data }
        let shoff = file.count
        if notesInSectionOnly {
            file += [UInt8](repeating: 0, count: shentsize * 2)   // null section + SHT_NOTE
            let at = shoff + shentsize
            file.putLE(UInt32(7), at: at + 4)
            if is64 {
                file.putLE(UInt64(noteOffset), at: at + 24)
                file.putLE(UInt64(noteBytes.count), at: at + 32)
                file.putLE(UInt64(4), at: at + 48)
            } else {
                file.putLE(UInt32(noteOffset), at: at + 16)
                file.putLE(UInt32(noteBytes.count), at: at + 20)
                file.putLE(UInt32(4), at: at + 32)
            }
        }
        if is64 {
            file.putLE(UInt64(segments.first?.paddr ?? 0), at: 24)
            file.putLE(UInt64(ehsize), at: 32)
            file.putLE(UInt64(notesInSectionOnly ? shoff : 0), at: 40)
            file.putLE(UInt16(ehsize), at: 52)
            file.putLE(UInt16(phentsize), at: 54)
            file.putLE(UInt16(phnum), at: 56)
            file.putLE(UInt16(shentsize), at: 58)
            file.putLE(UInt16(notesInSectionOnly ? 2 : 0), at: 60)
        } else {
            file.putLE(UInt32(truncatingIfNeeded: segments.first?.paddr ?? 0), at: 24)
            file.putLE(UInt32(ehsize), at: 28)
            file.putLE(UInt32(notesInSectionOnly ? shoff : 0), at: 32)
            file.putLE(UInt16(ehsize), at: 40)
            file.putLE(UInt16(phentsize), at: 42)
            file.putLE(UInt16(phnum), at: 44)
            file.putLE(UInt16(shentsize), at: 46)
            file.putLE(UInt16(notesInSectionOnly ? 2 : 0), at: 48)
        }
        for (i, p) in phdrs.enumerated() {
            let at = ehsize + i * phentsize
            if is64 {
                file.putLE(p.type, at: at)
                file.putLE(UInt32(5), at: at + 4)
                file.putLE(UInt64(p.offset), at: at + 8)
                file.putLE(p.paddr, at: at + 16)
                file.putLE(p.paddr, at: at + 24)
                file.putLE(UInt64(p.filesz), at: at + 32)
                file.putLE(p.memsz, at: at + 40)
                file.putLE(p.align, at: at + 48)
            } else {
                file.putLE(p.type, at: at)
                file.putLE(UInt32(p.offset), at: at + 4)
                file.putLE(UInt32(truncatingIfNeeded: p.paddr), at: at + 8)
                file.putLE(UInt32(truncatingIfNeeded: p.paddr), at: at + 12)
                file.putLE(UInt32(p.filesz), at: at + 16)
                file.putLE(UInt32(truncatingIfNeeded: p.memsz), at: at + 20)
                file.putLE(UInt32(5), at: at + 24)
                file.putLE(UInt32(truncatingIfNeeded: p.align), at: at + 28)
            }
        }
        return file
    }

    /// Recognisable non-zero bytes.
    static func payload(_ count: Int, seed: UInt8 = 1) -> [UInt8] {
        (0 ..< count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) | 1 }
    }

    struct BzImageOptions {
        var setupSects: UInt8 = 4
        var bootFlag: UInt16 = 0xaa55
        var magic: [UInt8] = Array("HdrS".utf8)
        var version: UInt16 = 0x020f
        var jump: UInt8 = 0x6a                         // header through 0x26c
        var loadflags: UInt8 = 0x01
        var xloadflags: UInt16 = 0x0b                  // KERNEL_64 | CAN_BE_LOADED_ABOVE_4G | EFI_HANDOVER_64
        var cmdlineSize: UInt32 = 2047
        var initrdAddrMax: UInt32 = 0x7fff_ffff
        var kernelAlignment: UInt32 = 0x20_0000
        var relocatable: UInt8 = 1
        var prefAddress: UInt64 = 0x100_0000
        var initSize: UInt32 = 0x80_0000
        var payloadSize = 0x3000
    }

    /// A bzImage: (setup_sects + 1) sectors of setup with a 2.15-style header, then the payload.
    static func bzImage(_ o: BzImageOptions = BzImageOptions()) -> [UInt8] {
        let sects = o.setupSects == 0 ? 4 : Int(o.setupSects)
        var file = [UInt8](repeating: 0, count: (sects + 1) * 512)
        file[0x1f1] = o.setupSects
        file.putLE(o.bootFlag, at: 0x1fe)
        file[0x200] = 0xeb
        file[0x201] = o.jump
        file.replaceSubrange(0x202 ..< 0x206, with: o.magic)
        file.putLE(o.version, at: 0x206)
        file.putLE(UInt16(0x1234), at: 0x20e)           // kernel_version pointer, just copied
        file[0x211] = o.loadflags
        file.putLE(UInt32(0x100000), at: 0x214)         // code32_start
        file.putLE(o.initrdAddrMax, at: 0x22c)
        file.putLE(o.kernelAlignment, at: 0x230)
        file[0x234] = o.relocatable
        file[0x235] = 21
        file.putLE(o.xloadflags, at: 0x236)
        file.putLE(o.cmdlineSize, at: 0x238)
        file.putLE(o.prefAddress, at: 0x258)
        file.putLE(o.initSize, at: 0x260)
        file.putLE(UInt32(0x190), at: 0x264)            // handover_offset
        file.putLE(UInt32(0xabcd), at: 0x268)           // kernel_info_offset
        file += payload(o.payloadSize, seed: 3)
        return file
    }
}

func bootMap(_ size: UInt64) throws -> MemoryMap { try MemoryMap(memorySize: size) }
private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

extension BootPlan {
    /// `count` bytes at `address` if a single write covers them.
    func read(_ address: UInt64, _ count: Int) -> [UInt8]? {
        for w in writes where w.address.raw <= address
            && address + UInt64(count) <= w.address.raw + UInt64(w.bytes.count) {
            let start = Int(address - w.address.raw)
            return Array(w.bytes[start ..< start + count])
        }
        return nil
    }

    func write(at address: UInt64) -> MemoryWrite? { writes.first { $0.address.raw == address } }
}

/// Every write is in RAM and no two writes overlap.
func expectSanePlan(_ plan: BootPlan, _ map: MemoryMap, sourceLocation: SourceLocation = #_sourceLocation) {
    for w in plan.writes {
        #expect(map.isRAM(w.address, length: UInt64(w.bytes.count)), "write at \(w.address) (\(w.bytes.count) bytes) is not in RAM",
                sourceLocation: sourceLocation)
    }
    let sorted = plan.writes.sorted { $0.address < $1.address }
    for (a, b) in zip(sorted, sorted.dropFirst()) {
        #expect(a.address.raw + UInt64(a.bytes.count) <= b.address.raw, "writes at \(a.address) and \(b.address) overlap",
                sourceLocation: sourceLocation)
    }
}

func expectBootError(_ expected: BootError, _ config: BootConfig, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(throws: expected, sourceLocation: sourceLocation) { try KernelLoader.plan(config) }
}

func bootError(_ config: BootConfig) -> BootError? {
    do { _ = try KernelLoader.plan(config); return nil } catch { return error }
}

// MARK: - PVH

@Suite("PVH ELF loading")
struct BootPVHTests {
    @Test("a 32-bit XEN_ELFNOTE_PHYS32_ENTRY note gives the entry point; EBX points at hvm_start_info")
    func note32() throws {
        let kernel = BootImage.elf(notes: [.entry32(0x100040)])
        let map = try bootMap(256 * MiB)
        let plan = try KernelLoader.plan(BootConfig(kernel: kernel, memoryMap: map))
        #expect(plan.format == .pvh)
        #expect(plan.entry == .pvh(entry: 0x100040, startInfo: 0x6000))
        #expect(plan.kernelRange == GuestAddress(0x100000) ..< GuestAddress(0x100100))
        expectSanePlan(plan, map)
    }

    @Test("a 64-bit note value (what Linux's vmlinux carries) gives the entry point")
    func note64() throws {
        let kernel = BootImage.elf(notes: [.entry64(0x1000f0)])
        let plan = try KernelLoader.plan(BootConfig(kernel: kernel, memoryMap: try bootMap(256 * MiB)))
        #expect(plan.entry == .pvh(entry: 0x1000f0, startInfo: 0x6000))
    }

    @Test("the Xen note is found after other notes, and in a SHT_NOTE section when there is no PT_NOTE")
    func noteSearch() throws {
        let gnu = BootImage.Note(name: Array("GNU\0".utf8), type: 3, desc: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        let other = BootImage.Note(name: Array("Xen\0".utf8), type: 6, desc: Array("xen-3.0\0".utf8))
        let map = try bootMap(256 * MiB)
        let a = try KernelLoader.plan(BootConfig(kernel: BootImage.elf(notes: [gnu, other, .entry32(0x100010)]), memoryMap: map))
        #expect(a.entry == .pvh(entry: 0x100010, startInfo: 0x6000))
        let b = try KernelLoader.plan(BootConfig(
            kernel: BootImage.elf(notes: [gnu, .entry32(0x100020)], notesInSectionOnly: true), memoryMap: map))
        #expect(b.entry == .pvh(entry: 0x100020, startInfo: 0x6000))
    }

    @Test("an ELF32 PVH image loads the same way")
    func elf32() throws {
        let data = BootImage.payload(300)
        let kernel = BootImage.elf(is64: false, segments: [.init(paddr: 0x200000, data: data)], notes: [.entry32(0x200000)])
        let map = try bootMap(64 * MiB)
        let plan = try KernelLoader.plan(BootConfig(kernel: kernel, memoryMap: map))
        #expect(plan.entry == .pvh(entry: 0x200000, startInfo: 0x6000))
        #expect(plan.write(at: 0x200000)?.bytes == data)
        expectSanePlan(plan, map)
    }

    @Test("an ELF without the Xen PVH note is refused with a message naming the note")
    func noNote() throws {
        let config = BootConfig(kernel: BootImage.elf(notes: []), memoryMap: try bootMap(256 * MiB))
        expectBootError(.noPVHEntryNote, config)
        #expect(BootError.noPVHEntryNote.description == "ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
        // A Xen note of another type is not an entry point.
        let wrongType = BootImage.Note(name: Array("Xen\0".utf8), type: 1, desc: [0, 0, 0x10, 0])
        expectBootError(.noPVHEntryNote, BootConfig(kernel: BootImage.elf(notes: [wrongType]), memoryMap: try bootMap(256 * MiB)))
    }

    @Test("a 64-bit note value above 4 GiB and an odd-sized value are refused")
    func badNoteValues() throws {
        let map = try bootMap(256 * MiB)
        let high = bootError(BootConfig(kernel: BootImage.elf(notes: [.entry64(0x1_0000_0000)]), memoryMap: map))
        guard case .malformedELF = high else { Issue.record("got \(String(describing: high))"); return }
        let odd = BootImage.Note(desc: [1, 2])
        let oddError = bootError(BootConfig(kernel: BootImage.elf(notes: [odd]), memoryMap: map))
        guard case .malformedELF = oddError else { Issue.record("got \(String(describing: oddError))"); return }
    }

    @Test("an ELF with no PT_LOAD segment is refused")
    func noLoad() throws {
        expectBootError(.noLoadSegment, BootConfig(kernel: BootImage.elf(segments: []), memoryMap: try bootMap(256 * MiB)))
        #expect(BootError.noLoadSegment.description == "ELF has no PT_LOAD segment")
    }

    @Test("truncated ELF files and headers pointing outside the file are errors, not crashes")
    func truncated() throws {
        let map = try bootMap(256 * MiB)
        let good = BootImage.elf()
        for length in [0, 1, 4, 5, 15, 16, 17, 40, 63, 64, 100, 119, 120, 150, good.count - 1] {
            let e = bootError(BootConfig(kernel: Array(good.prefix(length)), memoryMap: map))
            #expect(e != nil, "prefix of \(length) bytes was accepted")
        }
        var farPhdrs = good
        farPhdrs.putLE(UInt64(1) << 62, at: 32)
        guard case .malformedELF = bootError(BootConfig(kernel: farPhdrs, memoryMap: map)) else {
            Issue.record("phoff outside the file not reported"); return
        }
        var farSegment = good
        farSegment.putLE(UInt64(good.count - 8), at: 64 + 8)          // PT_LOAD p_offset near the end
        guard case .malformedELF = bootError(BootConfig(kernel: farSegment, memoryMap: map)) else {
            Issue.record("PT_LOAD outside the file not reported"); return
        }
        var wrapping = good
        wrapping.putLE(UInt64.max - 16, at: 64 + 24)                   // p_paddr + p_memsz wraps
        wrapping.putLE(UInt64.max - 16, at: 64 + 16)
        guard case .malformedELF = bootError(BootConfig(kernel: wrapping, memoryMap: map)) else {
            Issue.record("wrapping PT_LOAD not reported"); return
        }
        var bigEndian = good
        bigEndian[5] = 2
        guard case .unsupportedELF = bootError(BootConfig(kernel: bigEndian, memoryMap: map)) else {
            Issue.record("big-endian ELF accepted"); return
        }
        var arm = good
        arm.putLE(UInt16(183), at: 18)
        guard case .unsupportedELF = bootError(BootConfig(kernel: arm, memoryMap: map)) else {
            Issue.record("aarch64 ELF accepted"); return
        }
    }

    @Test("hvm_start_info and the memory map decode field by field")
    func startInfo() throws {
        let map = try bootMap(256 * MiB)
        let plan = try KernelLoader.plan(BootConfig(kernel: BootImage.elf(), cmdline: "console=ttyS0", memoryMap: map, cpus: 2))
        let info = try #require(plan.read(0x6000, 56))
        #expect(info.getLE(UInt32.self, at: 0) == 0x336e_c578)
        #expect(info.getLE(UInt32.self, at: 4) == 1)
        #expect(info.getLE(UInt32.self, at: 8) == 0)                 // flags
        #expect(info.getLE(UInt32.self, at: 12) == 0)                // nr_modules
        #expect(info.getLE(UInt64.self, at: 16) == 0)                // modlist_paddr
        #expect(info.getLE(UInt64.self, at: 24) == 0x20000)          // cmdline_paddr
        #expect(info.getLE(UInt64.self, at: 32) == 0xe0000)          // rsdp_paddr: the ACPI tables
        #expect(info.getLE(UInt64.self, at: 40) == 0x6080)           // memmap_paddr
        #expect(info.getLE(UInt32.self, at: 48) == 3)                // memmap_entries
        #expect(info.getLE(UInt32.self, at: 52) == 0)
        #expect(plan.write(at: 0x6000)?.bytes.count == 56)

        let table = try #require(plan.read(0x6080, 3 * 24))
        let expected: [(UInt64, UInt64, UInt32)] = [(0, 0x9fc00, 1), (0x9fc00, 0x60400, 2), (0x100000, 255 * MiB, 1)]
        for (i, e) in expected.enumerated() {
            #expect(table.getLE(UInt64.self, at: i * 24) == e.0)
            #expect(table.getLE(UInt64.self, at: i * 24 + 8) == e.1)
            #expect(table.getLE(UInt32.self, at: i * 24 + 16) == e.2)
            #expect(table.getLE(UInt32.self, at: i * 24 + 20) == 0)
        }
        #expect(plan.read(0x20000, 14) == Array("console=ttyS0\0".utf8))
    }

    @Test("the PVH memmap of a 5 GiB machine has RAM above 4 GiB and nothing in the hole")
    func memmap5G() throws {
        let plan = try KernelLoader.plan(BootConfig(kernel: BootImage.elf(), memoryMap: try bootMap(5 * GiB)))
        let info = try #require(plan.read(0x6000, 56))
        #expect(info.getLE(UInt32.self, at: 48) == 4)
        let table = try #require(plan.read(0x6080, 4 * 24))
        #expect(table.getLE(UInt64.self, at: 2 * 24 + 8) == 3 * GiB - MiB)
        #expect(table.getLE(UInt64.self, at: 3 * 24) == 4 * GiB)
        #expect(table.getLE(UInt64.self, at: 3 * 24 + 8) == 2 * GiB)
        #expect(table.getLE(UInt32.self, at: 3 * 24 + 16) == 1)
    }

    @Test("the initrd becomes one hvm_modlist_entry, page aligned at the top of low RAM")
    func initrdModule() throws {
        let map = try bootMap(256 * MiB)
        let initrd = BootImage.payload(10_000, seed: 9)
        let plan = try KernelLoader.plan(BootConfig(kernel: BootImage.elf(), initrd: initrd, memoryMap: map))
        let start = (256 * MiB - 10_000) & ~0xfff
        #expect(plan.initrdRange == GuestAddress(start) ..< GuestAddress(start + 10_000))
        #expect(plan.write(at: start)?.bytes == initrd)
        let info = try #require(plan.read(0x6000, 56))
        #expect(info.getLE(UInt32.self, at: 12) == 1)
        #expect(info.getLE(UInt64.self, at: 16) == 0x6040)
        let module = try #require(plan.read(0x6040, 32))
        #expect(module.getLE(UInt64.self, at: 0) == start)
        #expect(module.getLE(UInt64.self, at: 8) == 10_000)
        #expect(module.getLE(UInt64.self, at: 16) == 0)
        #expect(module.getLE(UInt64.self, at: 24) == 0)
        expectSanePlan(plan, map)
    }

    @Test("segments copy p_filesz bytes; small zero tails are written, big ones left to fresh RAM")
    func zeroTails() throws {
        let a = BootImage.payload(100), b = BootImage.payload(50, seed: 5)
        let kernel = BootImage.elf(segments: [
            .init(paddr: 0x100000, data: a, memsz: 4096),
            .init(paddr: 0x200000, data: b, memsz: 8 * MiB),
        ], notes: [.entry32(0x100000)])
        let map = try bootMap(64 * MiB)
        let plan = try KernelLoader.plan(BootConfig(kernel: kernel, memoryMap: map))
        #expect(plan.write(at: 0x100000)?.bytes == a + [UInt8](repeating: 0, count: 4096 - 100))
        #expect(plan.write(at: 0x200000)?.bytes == b)
        #expect(plan.kernelRange == GuestAddress(0x100000) ..< GuestAddress(0x200000 + 8 * MiB))
        expectSanePlan(plan, map)
    }

    @Test("the command line is NUL-terminated at 0x20000; 4095 bytes fit, 4096 or a NUL do not")
    func commandLine() throws {
        let map = try bootMap(256 * MiB)
        let longest = String(repeating: "x", count: 4095)
        let plan = try KernelLoader.plan(BootConfig(kernel: BootImage.elf(), cmdline: longest, memoryMap: map))
        #expect(plan.write(at: 0x20000)?.bytes == Array(longest.utf8) + [0])
        let empty = try KernelLoader.plan(BootConfig(kernel: BootImage.elf(), memoryMap: map))
        #expect(empty.write(at: 0x20000)?.bytes == [0])
        expectBootError(.commandLineTooLong(length: 4096, maximum: 4095),
                    BootConfig(kernel: BootImage.elf(), cmdline: longest + "y", memoryMap: map))
        #expect(BootError.commandLineTooLong(length: 4096, maximum: 4095).description
                == "command line is 4096 bytes, the kernel accepts at most 4095")
        expectBootError(.commandLineContainsNUL, BootConfig(kernel: BootImage.elf(), cmdline: "a\0b", memoryMap: map))
    }

    @Test("a kernel segment on top of a boot structure is refused")
    func overlapsStructures() throws {
        let map = try bootMap(64 * MiB)
        for (paddr, name) in [(UInt64(0x6000), "hvm_start_info/memmap"), (0x9800, "page tables"), (0x1ff00, "command line"),
                              (0x9fb00, "ACPI / MP tables / BIOS area"), (0x400, "GDT")] {
            let kernel = BootImage.elf(segments: [.init(paddr: paddr, data: BootImage.payload(512))], notes: [.entry32(UInt32(paddr))])
            let e = bootError(BootConfig(kernel: kernel, memoryMap: map))
            guard case .overlapsBootStructure(_, _, _, let structure) = e else {
                Issue.record("segment at \(paddr): got \(String(describing: e))"); continue
            }
            #expect(structure == name)
        }
        // Just below and just after the structures is fine.
        let ok = BootImage.elf(segments: [.init(paddr: 0x21000, data: BootImage.payload(512))], notes: [.entry32(0x21000)])
        _ = try KernelLoader.plan(BootConfig(kernel: ok, memoryMap: map))
    }

    @Test("a kernel bigger than --memory is refused with sizes; so are overlapping segments and a stray entry")
    func doesNotFit() throws {
        let map = try bootMap(32 * MiB)
        let big = BootImage.elf(segments: [.init(paddr: 0x100000, data: BootImage.payload(64), memsz: 40 * MiB)])
        let e = bootError(BootConfig(kernel: big, memoryMap: map))
        #expect(e == .kernelDoesNotFit(size: 40 * MiB, at: GuestAddress(0x100000), memorySize: 32 * MiB))
        #expect(e?.description == "kernel (40 MiB at 0x100000) does not fit in --memory 32M")

        let overlapping = BootImage.elf(segments: [.init(paddr: 0x100000, data: BootImage.payload(64), memsz: 0x2000),
                                                   .init(paddr: 0x101000, data: BootImage.payload(64))])
        guard case .malformedELF = bootError(BootConfig(kernel: overlapping, memoryMap: map)) else {
            Issue.record("overlapping PT_LOADs accepted"); return
        }
        let stray = BootImage.elf(notes: [.entry32(0x300000)])
        expectBootError(.entryOutsideKernel(GuestAddress(0x300000)), BootConfig(kernel: stray, memoryMap: map))
        // A segment in the MMIO hole of a 5 GiB machine is not RAM either.
        let inHole = BootImage.elf(segments: [.init(paddr: 0xC000_0000, data: BootImage.payload(64))], notes: [.entry32(0xC000_0000)])
        guard case .kernelDoesNotFit = bootError(BootConfig(kernel: inHole, memoryMap: try bootMap(5 * GiB))) else {
            Issue.record("segment in the MMIO hole accepted"); return
        }
    }

    @Test("an initrd that does not fit in low RAM above the kernel is refused")
    func initrdTooBig() throws {
        let map = try bootMap(16 * MiB)
        let initrd = [UInt8](repeating: 1, count: Int(15 * MiB))
        let e = bootError(BootConfig(kernel: BootImage.elf(), initrd: initrd, memoryMap: map))
        guard case .initrdDoesNotFit(let size, _, let below, let mem) = e else { Issue.record("got \(String(describing: e))"); return }
        #expect(size == 15 * MiB && below == GuestAddress(16 * MiB) && mem == 16 * MiB)
        #expect(e?.description.hasPrefix("initrd (15 MiB) does not fit below 0x1000000") == true)
    }

    @Test("vCPU counts outside 1…254 are refused")
    func cpuCount() throws {
        let map = try bootMap(64 * MiB)
        expectBootError(.invalidCPUCount(0), BootConfig(kernel: BootImage.elf(), memoryMap: map, cpus: 0))
        expectBootError(.invalidCPUCount(255), BootConfig(kernel: BootImage.elf(), memoryMap: map, cpus: 255))
        _ = try KernelLoader.plan(BootConfig(kernel: BootImage.elf(), memoryMap: map, cpus: 254))
    }

    @Test("something that is neither ELF nor bzImage is named as such")
    func unrecognized() throws {
        let map = try bootMap(64 * MiB)
        expectBootError(.unrecognizedKernel, BootConfig(kernel: [], memoryMap: map))
        expectBootError(.unrecognizedKernel, BootConfig(kernel: Array("#!/bin/sh\n".utf8), memoryMap: map))
        #expect(BootError.unrecognizedKernel.description == "kernel is neither an ELF with a PVH entry note nor a Linux bzImage")
    }
}
