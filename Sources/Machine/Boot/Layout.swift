/// The fixed guest-physical addresses of everything the loader writes besides the kernel and
/// initrd. All of it sits in the first MiB, which every machine has (`MemoryMap.minimumMemory`
/// is 16 MiB); kernel segments and the initrd are refused if they overlap any of it.
///
/// ```
/// 0x0000_0500 ..< 0x0000_0530  GDT: null, code32 0x08, code64 0x10, data 0x18, TSS 0x20 (16 B)
/// 0x0000_6000 ..< 0x0000_6038  hvm_start_info                      (PVH)
/// 0x0000_6040 ..< 0x0000_6060  hvm_modlist_entry for the initrd    (PVH)
/// 0x0000_6080 ..< 0x0000_7000  hvm_memmap_table_entry[]            (PVH)
/// 0x0000_7000 ..< 0x0000_8000  boot_params "zero page"             (bzImage)
/// 0x0000_8000 ..< 0x0000_9000  boot stack, top at 0x8ff0 (the VMM may point RSP/ESP there)
/// 0x0000_9000 ..< 0x0000_a000  PML4                                (bzImage)
/// 0x0000_a000 ..< 0x0000_b000  PDPT                                (bzImage)
/// 0x0000_b000 ..< 0x0000_f000  4 page directories, 2 MiB pages: identity map of 0 ..< 4 GiB
/// 0x0002_0000 ..< 0x0002_1000  kernel command line, NUL-terminated (at most 4095 bytes)
/// 0x0009_fc00 ..< 0x0010_0000  e820-reserved: EBDA and BIOS area, holding
/// 0x000e_0000 ..< 0x000f_0000    ACPI: RSDP, XSDT, FADT, MADT, DSDT   (unless --no-acpi)
/// 0x000f_0000 ..< 0x0010_0000    MP floating pointer + configuration table
/// 0x0010_0000                  bzImage load address (or the kernel's pref_address)
/// ```
/// The areas below 0x9fc00 are e820 RAM: the guest may reuse them once it has read them.
public enum BootLayout {
    /// Global descriptor table, shared by both boot formats.
    public static let gdtAddress = GuestAddress(0x500)
    /// Null, null-ish code32, code64, data, and a 16-byte TSS descriptor.
    public static let gdtSize: UInt64 = 48
    /// `limit` value for GDTR (size − 1).
    public static let gdtLimit = UInt16(gdtSize - 1)
    /// 32-bit flat code segment (base 0, limit 4 GiB) for PVH entry.
    public static let code32Selector: UInt16 = 0x08
    /// 64-bit code segment required by the Linux 64-bit boot protocol (`__BOOT_CS`).
    public static let code64Selector: UInt16 = 0x10
    /// Flat read/write data segment (`__BOOT_DS`), also used for SS/DS/ES under PVH.
    public static let dataSelector: UInt16 = 0x18
    /// Busy TSS (base 0, limit 0x67): what the VMM loads into TR.
    public static let tssSelector: UInt16 = 0x20

    /// `struct hvm_start_info` (56 bytes); its address goes into EBX.
    public static let startInfoAddress = GuestAddress(0x6000)
    /// One `struct hvm_modlist_entry` (32 bytes), present when there is an initrd.
    public static let moduleListAddress = GuestAddress(0x6040)
    /// `struct hvm_memmap_table_entry` array (24 bytes each).
    public static let memoryMapTableAddress = GuestAddress(0x6080)
    /// How many PVH memory-map entries fit before `bootParamsAddress`.
    public static let maxMemoryMapEntries = Int((0x7000 - 0x6080) / 24)

    /// Linux `struct boot_params` (the "zero page", 4 KiB); its address goes into RSI.
    public static let bootParamsAddress = GuestAddress(0x7000)
    /// A suggested initial stack pointer for either entry (16-byte aligned, in e820 RAM).
    public static let bootStackPointer = GuestAddress(0x8ff0)

    /// Top-level page table (CR3) for the 64-bit entry.
    public static let pml4Address = GuestAddress(0x9000)
    /// The single page-directory-pointer table (first 4 entries used).
    public static let pdptAddress = GuestAddress(0xa000)
    /// First of four consecutive page directories mapping 0 ..< 4 GiB with 2 MiB pages.
    public static let pageDirectoryAddress = GuestAddress(0xb000)
    /// Number of page directories (each maps 1 GiB).
    public static let pageDirectoryCount = 4

    /// The kernel command line, NUL-terminated.
    public static let cmdlineAddress = GuestAddress(0x20000)
    /// Bytes reserved for the command line including its NUL.
    public static let cmdlineCapacity: UInt64 = 0x1000

    /// Start of the e820-reserved hole below 1 MiB (EBDA + legacy BIOS/VGA area).
    public static let reservedLowStart = GuestAddress(0x9fc00)
    /// End of the reserved hole: where RAM resumes and the bzImage loads by default.
    public static let reservedLowEnd = GuestAddress(0x100000)
    /// MP floating pointer structure, followed immediately by the MP configuration table: at
    /// the start of the BIOS ROM area, which every MP table reader scans whatever the BIOS data
    /// area says (there is no BIOS to fill it) and which holds the table for 254 vCPUs.
    public static let mpTableAddress = GuestAddress(0xf0000)
    /// The ACPI RSDP, followed by the tables (`ACPITables.build`): 16-byte aligned in
    /// 0xE0000 ..< 0x100000, where a kernel not told the RSDP's address scans for it.
    public static let acpiAddress = GuestAddress(0xe0000)
    /// Room for the ACPI tables, up to the MP table.
    public static let acpiCapacity = mpTableAddress.raw - acpiAddress.raw

    /// Default load address of a bzImage's protected-mode kernel (1 MiB).
    public static let bzImageLoadAddress = GuestAddress(0x100000)

    /// Zero tails (p_memsz − p_filesz) up to this size are written explicitly; larger ones
    /// rely on guest RAM being fresh (all zero) when the plan is applied.
    public static let maxExplicitZeroFill: UInt64 = 64 << 10

    /// The regions no kernel segment or initrd may overlap, with the names errors use.
    public static let reservedRegions: [(name: String, range: Range<UInt64>)] = [
        ("GDT", gdtAddress.raw ..< gdtAddress.raw + gdtSize),
        ("hvm_start_info/memmap", startInfoAddress.raw ..< bootParamsAddress.raw),
        ("boot_params", bootParamsAddress.raw ..< bootParamsAddress.raw + 0x1000),
        ("boot stack", 0x8000 ..< pml4Address.raw),
        ("page tables", pml4Address.raw ..< pageDirectoryAddress.raw + UInt64(pageDirectoryCount) * 0x1000),
        ("command line", cmdlineAddress.raw ..< cmdlineAddress.raw + cmdlineCapacity),
        ("ACPI / MP tables / BIOS area", reservedLowStart.raw ..< reservedLowEnd.raw),
    ]
}
