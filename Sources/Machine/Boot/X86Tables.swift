/// The GDT and identity page tables the loader places in low memory.
enum X86Tables {
    /// A segment descriptor from the packed `flags` form Firecracker and crosvm use:
    /// bits 15…12 of `flags` are G/DB/L/AVL, bits 7…0 the access byte.
    static func descriptor(flags: UInt16, base: UInt32, limit: UInt32) -> UInt64 {
        let base = UInt64(base), limit = UInt64(limit), flags = UInt64(flags)
        return ((base & 0xff00_0000) << 32) | ((base & 0x00ff_ffff) << 16)
            | (limit & 0xffff) | ((limit & 0xf_0000) << 32) | ((flags & 0xf0ff) << 40)
    }

    /// Flat 32-bit code, base 0, 4 GiB (selector 0x08): `0x00cf9b000000ffff`.
    static let code32 = descriptor(flags: 0xc09b, base: 0, limit: 0xfffff)
    /// 64-bit code (L=1), selector 0x10: `0x00af9b000000ffff`.
    static let code64 = descriptor(flags: 0xa09b, base: 0, limit: 0xfffff)
    /// Flat read/write data, base 0, 4 GiB (selector 0x18): `0x00cf93000000ffff`.
    static let data = descriptor(flags: 0xc093, base: 0, limit: 0xfffff)
    /// Busy TSS, base 0, limit 0x67 (selector 0x20; 16 bytes in long mode, upper half zero).
    static let tss = descriptor(flags: 0x008b, base: 0, limit: 0x67)

    /// The GDT bytes (`BootLayout.gdtSize` of them).
    static func gdt() -> [UInt8] {
        var b = ByteBuilder()
        for entry in [0, code32, code64, data, tss, 0] { b.u64(entry) }
        return b.bytes
    }

    static let present: UInt64 = 1 << 0
    static let writable: UInt64 = 1 << 1
    static let pageSize2M: UInt64 = 1 << 7

    /// PML4, PDPT and page directories identity-mapping 0 ..< 4 GiB with 2 MiB pages, as
    /// (address, page) writes. Every page is written whole so no stale entry survives.
    static func identityPageTables() -> [MemoryWrite] {
        var pml4 = [UInt8](repeating: 0, count: 4096)
        pml4.storeLE(BootLayout.pdptAddress.raw | present | writable, at: 0)

        var pdpt = [UInt8](repeating: 0, count: 4096)
        var directories = [UInt8](repeating: 0, count: 4096 * BootLayout.pageDirectoryCount)
        for d in 0 ..< BootLayout.pageDirectoryCount {
            let pd = BootLayout.pageDirectoryAddress.raw + UInt64(d) * 4096
            pdpt.storeLE(pd | present | writable, at: d * 8)
            for e in 0 ..< 512 {
                let frame = (UInt64(d) << 30) | (UInt64(e) << 21)
                directories.storeLE(frame | present | writable | pageSize2M, at: (d * 512 + e) * 8)
            }
        }
        return [
            MemoryWrite(address: BootLayout.pml4Address, bytes: pml4),
            MemoryWrite(address: BootLayout.pdptAddress, bytes: pdpt),
            MemoryWrite(address: BootLayout.pageDirectoryAddress, bytes: directories),
        ]
    }
}
