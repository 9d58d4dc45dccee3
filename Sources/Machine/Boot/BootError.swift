import Foundation

/// Why a kernel, initrd or boot configuration cannot be turned into a `BootPlan`.
/// Each case prints as one line naming the problem.
public enum BootError: Error, Equatable, CustomStringConvertible {
    /// Neither the ELF magic nor a bzImage setup header.
    case unrecognizedKernel
    /// The file ends before a structure the loader must read.
    case truncated(what: String, needed: UInt64, fileSize: UInt64)
    /// The ELF file is internally inconsistent (offsets, sizes, overflow).
    case malformedELF(String)
    /// A valid ELF the loader does not handle (class, byte order, machine).
    case unsupportedELF(String)
    /// No PT_LOAD segment with any bytes to load.
    case noLoadSegment
    /// The ELF has no `XEN_ELFNOTE_PHYS32_ENTRY` note, so it has no PVH entry point.
    case noPVHEntryNote
    /// The PVH entry lies outside every loaded segment.
    case entryOutsideKernel(GuestAddress)
    /// The bzImage setup header is inconsistent or lacks something required.
    case malformedBzImage(String)
    /// The bzImage speaks a boot protocol older than 2.12 (the raw version field).
    case bootProtocolTooOld(UInt16)
    /// The kernel, at its load address, runs past the guest RAM it needs.
    case kernelDoesNotFit(size: UInt64, at: GuestAddress, memorySize: UInt64)
    /// No page-aligned place for the initrd between `above` and `below`.
    case initrdDoesNotFit(size: UInt64, above: GuestAddress, below: GuestAddress, memorySize: UInt64)
    /// The command line (without its NUL) is longer than the kernel or the loader accepts.
    case commandLineTooLong(length: Int, maximum: Int)
    /// The command line contains a NUL byte, which would silently cut it short.
    case commandLineContainsNUL
    /// A kernel segment or the initrd would overwrite a boot structure.
    case overlapsBootStructure(what: String, start: GuestAddress, end: GuestAddress, structure: String)
    /// The vCPU count is outside 1 … 254 (the MP table and APIC ID space limit).
    case invalidCPUCount(Int)
    /// More virtio-mmio devices than there are windows and IOAPIC pins for them.
    case invalidDeviceCount(Int)

    /// One line naming the problem, for the command line's error output.
    public var description: String {
        switch self {
        case .unrecognizedKernel:
            return "kernel is neither an ELF with a PVH entry note nor a Linux bzImage"
        case .truncated(let what, let needed, let fileSize):
            return "kernel file is truncated: \(what) needs \(needed) bytes, the file has \(fileSize)"
        case .malformedELF(let why):
            return "malformed ELF kernel: \(why)"
        case .unsupportedELF(let why):
            return "unsupported ELF kernel: \(why)"
        case .noLoadSegment:
            return "ELF has no PT_LOAD segment"
        case .noPVHEntryNote:
            return "ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
        case .entryOutsideKernel(let entry):
            return "PVH entry \(entry) is outside the kernel's PT_LOAD segments"
        case .malformedBzImage(let why):
            return "malformed bzImage: \(why)"
        case .bootProtocolTooOld(let version):
            return "bzImage boot protocol \(Self.protocolString(version)) is too old (need 2.12 / 64-bit entry)"
        case .kernelDoesNotFit(let size, let at, let memorySize):
            return "kernel (\(Self.mib(size)) at \(at)) does not fit in --memory \(Self.memoryArgument(memorySize))"
        case .initrdDoesNotFit(let size, let above, let below, let memorySize):
            return "initrd (\(Self.mib(size))) does not fit below \(below) above the kernel's end \(above) with --memory \(Self.memoryArgument(memorySize))"
        case .commandLineTooLong(let length, let maximum):
            return "command line is \(length) bytes, the kernel accepts at most \(maximum)"
        case .commandLineContainsNUL:
            return "command line contains a NUL byte"
        case .overlapsBootStructure(let what, let start, let end, let structure):
            return "\(what) [\(start), \(end)) overlaps the \(structure) the loader writes"
        case .invalidCPUCount(let n):
            return "vCPU count \(n) is not supported (1 to 254)"
        case .invalidDeviceCount(let n):
            return "\(n) virtio devices cannot be described (0 to \(MemoryMap.lastIRQ + 1 - MemoryMap.virtioFirstIRQ))"
        }
    }

    /// "2.11" for 0x020b: the minor number is the low byte in decimal.
    static func protocolString(_ version: UInt16) -> String {
        "\(version >> 8).\(String(format: "%02d", Int(version & 0xff)))"
    }

    /// A size in MiB with one decimal ("12.5 MiB"), or bytes when below 1 KiB.
    static func mib(_ bytes: UInt64) -> String {
        if bytes < 1024 { return "\(bytes) bytes" }
        if bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
        return String(format: "%.1f MiB", Double(bytes) / 1_048_576)
    }

    /// The `--memory` spelling of a size: "32M", "5G", or "…K".
    static func memoryArgument(_ bytes: UInt64) -> String {
        if bytes % (1 << 30) == 0 { return "\(bytes >> 30)G" }
        if bytes % (1 << 20) == 0 { return "\(bytes >> 20)M" }
        return "\(bytes >> 10)K"
    }
}
