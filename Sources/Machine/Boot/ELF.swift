/// The parts of an ELF32/ELF64 little-endian x86 image a PVH loader needs: its program
/// headers and where its notes are. Every offset and size comes from the file and is checked.
struct ELFImage {
    struct Segment {
        var index: Int
        var type: UInt32
        var offset: UInt64
        var physicalAddress: UInt64
        var fileSize: UInt64
        var memorySize: UInt64
        var alignment: UInt64
    }

    /// A byte range of the file holding ELF notes, with the alignment its notes use.
    struct NoteRegion {
        var offset: UInt64
        var size: UInt64
        var alignment: UInt64
    }

    static let magic: [UInt8] = [0x7f, 0x45, 0x4c, 0x46]
    static let ptLoad: UInt32 = 1
    static let ptNote: UInt32 = 4
    static let shtNote: UInt32 = 7
    static let emX86: UInt16 = 3
    static let emX86_64: UInt16 = 62
    /// Xen ELF note type carrying the 32-bit physical PVH entry point.
    static let xenElfnotePhys32Entry: UInt32 = 18

    var is64: Bool
    var segments: [Segment]
    /// PT_NOTE segments first, then SHT_NOTE sections (sections only when their table is sane).
    var noteRegions: [NoteRegion]

    static func isELF(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 4 && Array(bytes.prefix(4)) == magic
    }

    /// Where the program and section header tables are (from the ELF header).
    struct Tables {
        var phoff: UInt64, phentsize: UInt64, phnum: UInt64
        var shoff: UInt64, shentsize: UInt64, shnum: UInt64
    }

    static func parse(_ file: ByteReader) throws(BootError) -> ELFImage {
        let (is64, t) = try header(file)
        let (segments, segmentNotes) = try programHeaders(file, is64: is64, t)
        return ELFImage(is64: is64, segments: segments, noteRegions: segmentNotes + sectionNotes(file, is64: is64, t))
    }

    /// The identification and the header's table locations, checked.
    static func header(_ file: ByteReader) throws(BootError) -> (is64: Bool, Tables) {
        guard file.count >= 16, let cls = file.u8(4), let data = file.u8(5) else {
            throw .truncated(what: "ELF identification", needed: 16, fileSize: file.count)
        }
        guard cls == 1 || cls == 2 else { throw .unsupportedELF("ELF class \(cls) (expected 1 or 2)") }
        guard data == 1 else { throw .unsupportedELF("byte order \(data) is not little-endian") }
        let is64 = cls == 2
        let headerSize: UInt64 = is64 ? 64 : 52
        guard file.count >= headerSize else {
            throw .truncated(what: "ELF\(is64 ? 64 : 32) header", needed: headerSize, fileSize: file.count)
        }
        // Every read below is inside the header, which the file holds.
        let machine = file.u16(18) ?? 0
        guard machine == emX86 || machine == emX86_64 else {
            throw .unsupportedELF("machine \(machine) is not x86 (3) or x86-64 (62)")
        }
        let t: Tables
        if is64 {
            t = Tables(phoff: file.u64(32) ?? 0, phentsize: UInt64(file.u16(54) ?? 0), phnum: UInt64(file.u16(56) ?? 0),
                       shoff: file.u64(40) ?? 0, shentsize: UInt64(file.u16(58) ?? 0), shnum: UInt64(file.u16(60) ?? 0))
        } else {
            t = Tables(phoff: UInt64(file.u32(28) ?? 0), phentsize: UInt64(file.u16(42) ?? 0), phnum: UInt64(file.u16(44) ?? 0),
                       shoff: UInt64(file.u32(32) ?? 0), shentsize: UInt64(file.u16(46) ?? 0), shnum: UInt64(file.u16(48) ?? 0))
        }
        return (is64, t)
    }

    /// The program headers, and the PT_NOTE regions among them.
    static func programHeaders(_ file: ByteReader, is64: Bool, _ t: Tables) throws(BootError) -> ([Segment], [NoteRegion]) {
        guard t.phnum > 0 else { throw .noLoadSegment }
        let minPhentsize: UInt64 = is64 ? 56 : 32
        guard t.phentsize >= minPhentsize else {
            throw .malformedELF("e_phentsize \(t.phentsize) is smaller than \(minPhentsize)")
        }
        // phnum and phentsize are 16-bit: the product cannot overflow.
        guard file.contains(t.phoff, length: t.phnum * t.phentsize) else {
            throw .malformedELF("program header table (\(t.phnum) × \(t.phentsize) bytes at offset \(t.phoff)) is outside the \(file.count)-byte file")
        }
        var segments: [Segment] = []
        var notes: [NoteRegion] = []
        for i in 0 ..< t.phnum {
            let at = t.phoff + i * t.phentsize
            let s: Segment
            if is64 {
                s = Segment(index: Int(i), type: file.u32(at) ?? 0, offset: file.u64(at + 8) ?? 0,
                            physicalAddress: file.u64(at + 24) ?? 0, fileSize: file.u64(at + 32) ?? 0,
                            memorySize: file.u64(at + 40) ?? 0, alignment: file.u64(at + 48) ?? 0)
            } else {
                s = Segment(index: Int(i), type: file.u32(at) ?? 0, offset: UInt64(file.u32(at + 4) ?? 0),
                            physicalAddress: UInt64(file.u32(at + 12) ?? 0), fileSize: UInt64(file.u32(at + 16) ?? 0),
                            memorySize: UInt64(file.u32(at + 20) ?? 0), alignment: UInt64(file.u32(at + 28) ?? 0))
            }
            segments.append(s)
            if s.type == ptNote {
                guard file.contains(s.offset, length: s.fileSize) else {
                    throw .malformedELF("PT_NOTE segment \(i) (\(s.fileSize) bytes at offset \(s.offset)) is outside the \(file.count)-byte file")
                }
                notes.append(NoteRegion(offset: s.offset, size: s.fileSize, alignment: s.alignment))
            }
        }
        return (segments, notes)
    }

    /// SHT_NOTE sections. Section headers are optional for loading: a broken table is ignored.
    static func sectionNotes(_ file: ByteReader, is64: Bool, _ t: Tables) -> [NoteRegion] {
        let minShentsize: UInt64 = is64 ? 64 : 40
        guard t.shoff != 0, t.shnum > 0, t.shentsize >= minShentsize, file.contains(t.shoff, length: t.shnum * t.shentsize) else {
            return []
        }
        var notes: [NoteRegion] = []
        for i in 0 ..< t.shnum {
            let at = t.shoff + i * t.shentsize
            guard file.u32(at + 4) == shtNote else { continue }
            let offset, size, alignment: UInt64
            if is64 {
                offset = file.u64(at + 24) ?? 0
                size = file.u64(at + 32) ?? 0
                alignment = file.u64(at + 48) ?? 0
            } else {
                offset = UInt64(file.u32(at + 16) ?? 0)
                size = UInt64(file.u32(at + 20) ?? 0)
                alignment = UInt64(file.u32(at + 32) ?? 0)
            }
            if file.contains(offset, length: size) {
                notes.append(NoteRegion(offset: offset, size: size, alignment: alignment))
            }
        }
        return notes
    }

    /// The value of the first `Xen` / `XEN_ELFNOTE_PHYS32_ENTRY` note, or nil if there is none.
    /// The value may be 4 or 8 bytes (Linux emits a pointer-sized one); it must fit in 32 bits.
    func pvhEntry(in file: ByteReader) throws(BootError) -> UInt32? {
        for region in noteRegions {
            // Notes are 4-byte aligned unless the region says 8 (gABI ELF64 style).
            let align: UInt64 = region.alignment == 8 ? 8 : 4
            var pos: UInt64 = 0
            while pos + 12 <= region.size {
                let base = region.offset + pos
                guard let namesz = file.u32(base).map(UInt64.init),
                      let descsz = file.u32(base + 4).map(UInt64.init),
                      let type = file.u32(base + 8) else { break }
                let nameStart = pos + 12
                // pos ≤ region.size < 2^64 − 2^33 in any real array, and namesz/descsz < 2^32.
                guard let descStart = alignUp(nameStart + namesz, align) else { break }
                let descEnd = descStart + descsz
                guard descEnd <= region.size, let next = alignUp(descEnd, align) else { break }
                let name = file.slice(region.offset + nameStart, length: namesz) ?? []
                let trimmed = Array(name.prefix { $0 != 0 })
                if trimmed == Array("Xen".utf8), type == Self.xenElfnotePhys32Entry {
                    let at = region.offset + descStart
                    switch descsz {
                    case 4:
                        return file.u32(at)
                    case 8:
                        let value = file.u64(at) ?? 0
                        guard value <= UInt64(UInt32.max) else {
                            throw .malformedELF("PVH entry note value 0x\(String(value, radix: 16)) is above 4 GiB")
                        }
                        return UInt32(value)
                    default:
                        throw .malformedELF("PVH entry note has a \(descsz)-byte value (expected 4 or 8)")
                    }
                }
                pos = next
            }
        }
        return nil
    }
}
