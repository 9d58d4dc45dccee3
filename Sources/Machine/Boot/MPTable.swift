/// Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI learns its CPUs,
/// its IOAPIC and how ISA interrupts reach it.
///
/// Written at `BootLayout.mpTableAddress` (0xF0000, the BIOS ROM area every reader scans): a
/// 16-byte floating pointer "_MP_", then the "PCMP" configuration table with
///
/// - one processor entry per vCPU, local APIC IDs 0 … n−1, the BSP flag on APIC 0;
/// - one bus, ID 0, "ISA   ";
/// - one IOAPIC, ID n (the first ID after the vCPUs), version 0x11, at 0xfec00000;
/// - 24 I/O interrupt entries: ISA IRQ k → IOAPIC pin k for k in 0 ..< 24. This is identity,
///   like Firecracker's mptable.rs, because it is what KVM's default GSI routing does with the
///   in-kernel IOAPIC (GSI k → pin k, the PIT on GSI 0 → pin 0); the PC convention "IRQ0 → pin 2"
///   would only be right if the VMM installed QEMU-style routing. Virtio devices use pins 5 … 23;
/// - local interrupts: ExtINT on LINT0 of APIC 0, NMI on LINT1 of every APIC.
enum MPTable {
    static let localAPICAddress: UInt32 = 0xfee0_0000
    static let ioAPICAddress: UInt32 = 0xfec0_0000
    static let localAPICVersion: UInt8 = 0x14
    static let ioAPICVersion: UInt8 = 0x11
    /// Pins of the in-kernel IOAPIC, all listed as ISA interrupts.
    static let ioAPICPins = 24
    /// Family 6 (`0x600`), and FPU + APIC feature flags (`0x201`).
    static let cpuSignature: UInt32 = 0x600
    static let cpuFeatures: UInt32 = 0x201
    /// APIC IDs 0 … 254 are usable and the IOAPIC takes the one after the last vCPU.
    static let maxCPUs = 254

    static let floatingPointerSize = 16
    static let headerSize = 44
    static let processorEntrySize = 20
    static let smallEntrySize = 8

    /// Entry type codes.
    static let processorType: UInt8 = 0, busType: UInt8 = 1, ioAPICType: UInt8 = 2
    static let ioInterruptType: UInt8 = 3, localInterruptType: UInt8 = 4
    /// Interrupt type codes.
    static let intINT: UInt8 = 0, intNMI: UInt8 = 1, intExtINT: UInt8 = 3

    /// Total bytes (floating pointer + configuration table) for `cpus` vCPUs.
    static func size(cpus: Int) -> Int {
        floatingPointerSize + headerSize + cpus * processorEntrySize
            + smallEntrySize * (2 + ioAPICPins + 2)
    }

    /// The floating pointer and configuration table, to be written at `address`.
    /// `cpus` must be in 1 … `maxCPUs` (the caller validates it).
    static func build(cpus: Int, at address: GuestAddress) -> [UInt8] {
        let tableAddress = UInt32(truncatingIfNeeded: address.raw) &+ UInt32(floatingPointerSize)
        return floatingPointer(tableAddress: tableAddress) + configurationTable(cpus: cpus)
    }

    /// Processors, the ISA bus, the IOAPIC, its interrupt assignments and the local interrupts.
    static func entries(cpus: Int) -> [UInt8] {
        let ioAPICID = UInt8(truncatingIfNeeded: cpus)
        var entries = ByteBuilder()
        for cpu in 0 ..< cpus {
            entries.u8(processorType)
            entries.u8(UInt8(truncatingIfNeeded: cpu))   // local APIC ID
            entries.u8(localAPICVersion)
            entries.u8(cpu == 0 ? 0x03 : 0x01)            // enabled, bootstrap processor
            entries.u32(cpuSignature)
            entries.u32(cpuFeatures)
            entries.u64(0)                                // reserved
        }
        entries.u8(busType)
        entries.u8(0)                                     // bus ID
        entries.ascii("ISA", width: 6)
        entries.u8(ioAPICType)
        entries.u8(ioAPICID)
        entries.u8(ioAPICVersion)
        entries.u8(0x01)                                  // usable
        entries.u32(ioAPICAddress)
        for pin in 0 ..< ioAPICPins {
            entries.u8(ioInterruptType)
            entries.u8(intINT)
            entries.u16(0)                                // polarity/trigger: conform to bus
            entries.u8(0)                                 // source bus: ISA
            entries.u8(UInt8(pin))                        // source bus IRQ
            entries.u8(ioAPICID)
            entries.u8(UInt8(pin))                        // IOAPIC pin
        }
        for (type, apic, lint) in [(intExtINT, UInt8(0), UInt8(0)), (intNMI, UInt8(0xff), UInt8(1))] {
            entries.u8(localInterruptType)
            entries.u8(type)
            entries.u16(0)
            entries.u8(0)                                 // source bus
            entries.u8(0)                                 // source bus IRQ
            entries.u8(apic)                              // 0xff: every local APIC
            entries.u8(lint)
        }
        return entries.bytes
    }

    /// The configuration table: header and entries, checksummed.
    static func configurationTable(cpus: Int) -> [UInt8] {
        let entries = entries(cpus: cpus)
        let entryCount = cpus + 2 + ioAPICPins + 2
        var header = ByteBuilder()
        header.append(Array("PCMP".utf8))
        header.u16(UInt16(truncatingIfNeeded: headerSize + entries.count))
        header.u8(4)                                      // spec revision 1.4
        header.u8(0)                                      // checksum, below
        header.ascii("SWIFTVMM", width: 8)
        header.ascii("KVM", width: 12)
        header.u32(0)                                     // OEM table pointer
        header.u16(0)                                     // OEM table size
        header.u16(UInt16(truncatingIfNeeded: entryCount))
        header.u32(localAPICAddress)
        header.u16(0)                                     // extended table length
        header.u8(0)                                      // extended table checksum
        header.u8(0)                                      // reserved
        var table = header.bytes + entries
        table.storeLE(0 &- byteSum(table), at: 7)
        return table
    }

    /// The MP floating pointer structure pointing at the configuration table.
    static func floatingPointer(tableAddress: UInt32) -> [UInt8] {
        var pointer = ByteBuilder()
        pointer.append(Array("_MP_".utf8))
        pointer.u32(tableAddress)
        pointer.u8(1)                                     // length in 16-byte units
        pointer.u8(4)                                     // spec revision 1.4
        pointer.u8(0)                                     // checksum, below
        pointer.u8(0)                                     // feature 1: configuration table present
        pointer.u8(0)                                     // feature 2: no IMCR, virtual wire
        pointer.append([0, 0, 0])
        var floating = pointer.bytes
        floating.storeLE(0 &- byteSum(floating), at: 10)
        return floating
    }
}
