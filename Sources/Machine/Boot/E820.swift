/// One entry of the guest's physical memory map, as both the e820 table (bzImage) and the
/// PVH `hvm_memmap_table_entry` array describe it.
public struct E820Entry: Sendable, Equatable, CustomStringConvertible {
    /// Usable RAM (e820 type 1, `XEN_HVM_MEMMAP_TYPE_RAM`).
    public static let ram: UInt32 = 1
    /// Reserved (e820 type 2, `XEN_HVM_MEMMAP_TYPE_RESERVED`).
    public static let reserved: UInt32 = 2

    /// First byte of the range.
    public var address: GuestAddress
    /// Length of the range in bytes.
    public var size: UInt64
    /// `ram` or `reserved` (the e820 and Xen memmap type codes agree).
    public var type: UInt32

    /// An entry covering `[address, address + size)`.
    public init(address: GuestAddress, size: UInt64, type: UInt32) {
        self.address = address
        self.size = size
        self.type = type
    }

    /// "[0x100000, 0x10000000) RAM".
    public var description: String {
        "[\(address), 0x\(String(address.raw &+ size, radix: 16))) \(type == Self.ram ? "RAM" : "reserved(\(type))")"
    }

    /// The memory map handed to every guest: RAM below 0x9fc00, the EBDA/BIOS hole reserved up
    /// to 1 MiB, RAM from 1 MiB to the end of low RAM, and RAM above 4 GiB if the machine has
    /// any. Nothing else (MMIO windows, IOAPIC, LAPIC) is listed: absent means "not RAM".
    public static func map(for memory: MemoryMap) -> [E820Entry] {
        var entries: [E820Entry] = []
        let holeStart = BootLayout.reservedLowStart.raw
        let holeEnd = BootLayout.reservedLowEnd.raw
        for range in memory.ram {
            if range.start.raw == 0 {
                entries.append(E820Entry(address: GuestAddress(0), size: min(holeStart, range.end), type: ram))
                if range.end > holeStart {
                    entries.append(E820Entry(address: GuestAddress(holeStart), size: holeEnd - holeStart, type: reserved))
                }
                if range.end > holeEnd {
                    entries.append(E820Entry(address: GuestAddress(holeEnd), size: range.end - holeEnd, type: ram))
                }
            } else {
                entries.append(E820Entry(address: range.start, size: range.size, type: ram))
            }
        }
        return entries
    }
}
