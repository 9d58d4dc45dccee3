/// The ACPI tables swiftvmm gives a guest (ACPI 6.5): RSDP → XSDT → FADT (→ DSDT) and MADT.
///
/// The machine is "hardware-reduced" (no PM1/GPE blocks, no SCI, no FACS): it has no ACPI
/// fixed hardware, only the reset register, wired to the i8042 reset swiftvmm emulates (write
/// 0xFE to I/O port 0x64). Devices are described in the DSDT (`ACPIDevices`), CPUs and
/// interrupt controllers in the MADT.
///
/// Everything is written into the e820-reserved BIOS area, at `BootLayout.acpiAddress`
/// (0xE0000), where a kernel that is not told the RSDP's address scans for it; the boot
/// protocols also pass that address (`acpi_rsdp_addr` in the zero page, `rsdp_paddr` in PVH's
/// `hvm_start_info`).
public enum ACPITables {
    /// What the tables describe.
    public struct Machine: Sendable, Equatable {
        /// vCPUs: local APIC IDs and ACPI processor UIDs 0 … cpus−1.
        public var cpus: Int
        /// Number of virtio-mmio devices, in window order (`MemoryMap.virtioWindow(index:)`).
        public var virtioDevices: Int

        public init(cpus: Int, virtioDevices: Int) {
            self.cpus = cpus
            self.virtioDevices = virtioDevices
        }
    }

    static let oemID = "SWIFTV"
    static let oemTableID = "SWIFTVMM"
    static let creatorID = "SVMM"
    static let oemRevision: UInt32 = 1
    static let creatorRevision: UInt32 = 1
    static let headerSize = 36
    static let rsdpSize = 36

    /// The RSDP and the tables it leads to, laid out from `base` (16-byte aligned) as one
    /// block: RSDP, XSDT, FADT, MADT, DSDT, each on a 16-byte boundary.
    public static func build(_ machine: Machine, at base: GuestAddress) -> [UInt8] {
        let dsdt = self.dsdt(machine)
        let madt = self.madt(machine)
        let xsdtAt = alignUp(base.raw + UInt64(rsdpSize), 16) ?? 0
        let xsdtSize = headerSize + 2 * 8
        let fadtAt = alignUp(xsdtAt + UInt64(xsdtSize), 16) ?? 0
        let madtAt = alignUp(fadtAt + UInt64(FADT.size), 16) ?? 0
        let dsdtAt = alignUp(madtAt + UInt64(madt.count), 16) ?? 0

        var block = [UInt8](repeating: 0, count: Int(dsdtAt - base.raw) + dsdt.count)
        func place(_ bytes: [UInt8], at address: UInt64) {
            let offset = Int(address - base.raw)
            block.replaceSubrange(offset ..< offset + bytes.count, with: bytes)
        }
        place(rsdp(xsdt: xsdtAt), at: base.raw)
        place(table("XSDT", revision: 1, body: {
            var b = ByteBuilder(); b.u64(fadtAt); b.u64(madtAt); return b.bytes
        }()), at: xsdtAt)
        place(FADT.build(dsdt: dsdtAt), at: fadtAt)
        place(madt, at: madtAt)
        place(dsdt, at: dsdtAt)
        return block
    }

    /// Size of the block `build` writes.
    public static func size(_ machine: Machine) -> Int {
        build(machine, at: GuestAddress(0)).count
    }

    /// Root System Description Pointer, ACPI 2.0+ form (36 bytes, revision 2): the XSDT only.
    static func rsdp(xsdt: UInt64) -> [UInt8] {
        var b = ByteBuilder()
        b.append(Array("RSD PTR ".utf8))
        b.u8(0)                                   // checksum of the first 20 bytes, below
        b.ascii(oemID, width: 6)
        b.u8(2)                                   // revision
        b.u32(0)                                  // RSDT: none, the XSDT is the root
        b.u32(UInt32(rsdpSize))
        b.u64(xsdt)
        b.u8(0)                                   // extended checksum, below
        b.append([0, 0, 0])
        var bytes = b.bytes
        bytes.storeLE(0 &- byteSum(Array(bytes[0 ..< 20])), at: 8)
        bytes.storeLE(0 &- byteSum(bytes), at: 32)
        return bytes
    }

    /// A system description table: the 36-byte header and `body`, checksummed.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var h = ByteBuilder()
        h.ascii(signature, width: 4)
        h.u32(UInt32(truncatingIfNeeded: headerSize + body.count))
        h.u8(revision)
        h.u8(0)                                   // checksum, below
        h.ascii(oemID, width: 6)
        h.ascii(oemTableID, width: 8)
        h.u32(oemRevision)
        h.ascii(creatorID, width: 4)
        h.u32(creatorRevision)
        var bytes = h.bytes + body
        bytes.storeLE(0 &- byteSum(bytes), at: 9)
        return bytes
    }

    /// Differentiated System Description Table: the AML of `ACPIDevices.namespace`.
    static func dsdt(_ machine: Machine) -> [UInt8] {
        table("DSDT", revision: 2, body: ACPIDevices.namespace(machine).flatMap(\.encoded))
    }

    /// Multiple APIC Description Table: a local APIC per vCPU, the IOAPIC, the ISA interrupt
    /// source override for the PIT, and LINT1 as NMI on every processor.
    static func madt(_ machine: Machine) -> [UInt8] {
        var b = ByteBuilder()
        b.u32(MPTable.localAPICAddress)
        b.u32(MADT.pcatCompatible)                // the in-kernel irqchip has dual 8259s
        for cpu in 0 ..< machine.cpus {
            b.u8(MADT.localAPICType); b.u8(8)
            b.u8(UInt8(truncatingIfNeeded: cpu))  // ACPI processor UID
            b.u8(UInt8(truncatingIfNeeded: cpu))  // local APIC ID
            b.u32(MADT.enabled)
        }
        b.u8(MADT.ioAPICType); b.u8(12)
        b.u8(UInt8(truncatingIfNeeded: machine.cpus))   // IOAPIC ID, as in the MP table
        b.u8(0)
        b.u32(MPTable.ioAPICAddress)
        b.u32(0)                                  // GSI base: pins 0 … 23 are GSIs 0 … 23
        for o in MADT.overrides {
            b.u8(MADT.overrideType); b.u8(10)
            b.u8(0)                               // bus: ISA
            b.u8(o.irq)
            b.u32(o.gsi)
            b.u16(o.flags)
        }
        b.u8(MADT.localNMIType); b.u8(6)
        b.u8(0xff)                                // every processor
        b.u16(0)                                  // polarity/trigger: conform to the bus
        b.u8(1)                                   // LINT1
        return table("APIC", revision: 5, body: b.bytes)
    }
}

/// MADT constants (ACPI 6.5 §5.2.12).
enum MADT {
    static let pcatCompatible: UInt32 = 1
    static let enabled: UInt32 = 1
    static let localAPICType: UInt8 = 0, ioAPICType: UInt8 = 1, overrideType: UInt8 = 2, localNMIType: UInt8 = 4

    /// ISA interrupt source overrides. KVM's default GSI routing — which swiftvmm keeps —
    /// wires the in-kernel PIT to GSI 0 = IOAPIC pin 0 and every ISA IRQ to the same-numbered
    /// pin, so the PIT's override is the identity (edge, active high); a PC-style IRQ0 → GSI2
    /// would send the kernel's timer set-up to a pin nothing drives. It is listed anyway so the
    /// table says what the PIT is wired to rather than leaving it to the kernel's defaults.
    /// COM1 (IRQ 4) and virtio (GSI 5…23) need no override: identity is the default, and the
    /// DSDT gives each device's trigger mode.
    static let overrides: [(irq: UInt8, gsi: UInt32, flags: UInt16)] = [
        (0, 0, 0x0005),                          // polarity 01 active high, trigger 01 edge
    ]
}

/// Fixed ACPI Description Table, ACPI 6.5 layout (276 bytes, revision 6).
enum FADT {
    static let size = 276
    static let revision: UInt8 = 6
    static let minorRevision: UInt8 = 5
    /// Flags: RESET_REG_SUP (bit 10), HW_REDUCED_ACPI (bit 20).
    static let flags: UInt32 = 1 << 10 | 1 << 20
    /// IAPC_BOOT_ARCH: VGA not present (bit 2), MSI not supported (bit 3). There is a CMOS
    /// clock, and no 8042 keyboard controller (only its reset line), so bits 1 and 5 are clear.
    static let bootArchitecture: UInt16 = 1 << 2 | 1 << 3
    /// The reset register: one byte in system I/O space at the i8042 command port.
    static let resetPort: UInt64 = 0x64
    static let resetValue: UInt8 = 0xfe

    static func build(dsdt: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: size - ACPITables.headerSize)
        func at(_ offset: Int) -> Int { offset - ACPITables.headerSize }
        body.storeLE(UInt32(truncatingIfNeeded: dsdt), at: at(40))       // DSDT (32-bit)
        body.storeLE(bootArchitecture, at: at(109))
        body.storeLE(flags, at: at(112))
        // RESET_REG: Generic Address Structure {space 1 = system I/O, 8 bits, offset 0, byte access}.
        body.storeLE(UInt8(1), at: at(116))
        body.storeLE(UInt8(8), at: at(117))
        body.storeLE(UInt8(1), at: at(119))
        body.storeLE(resetPort, at: at(120))
        body.storeLE(resetValue, at: at(128))
        body.storeLE(minorRevision, at: at(131))
        body.storeLE(dsdt, at: at(140))                                  // X_DSDT
        var vendor = ByteBuilder()
        vendor.ascii("SWIFTVMM", width: 8)
        body.replaceSubrange(at(268) ..< at(276), with: vendor.bytes)     // hypervisor vendor identity
        return ACPITables.table("FACP", revision: revision, body: body)
    }
}
