/// The MSRs a guest with a CPU model (anything but `host`) saves and restores: the
/// architectural ones every x86-64 host has and those KVM emulates itself. Vendor- and
/// model-specific MSRs (IA32_FEATURE_CONTROL on Intel, the AMD HWCR, …) stay behind, so that
/// the state restores on a host of the other vendor.
enum PortableMSRs {
    static let indices: Set<UInt32> = {
        var s: Set<UInt32> = [
            0x10,                                   // TSC
            0x1b,                                   // APIC base
            0x3b,                                   // TSC adjust (KVM emulates it)
            0x174, 0x175, 0x176,                    // SYSENTER CS/ESP/EIP
            0x17a,                                  // MCG status
            0x1a0,                                  // misc enable (KVM emulates it)
            0x277,                                  // PAT
            0x2ff,                                  // MTRR default type
            0x250, 0x258, 0x259,                    // fixed MTRRs
            0x6e0,                                  // TSC deadline
            0xc000_0080, 0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084,   // EFER, STAR, LSTAR, CSTAR, SFMASK
            0xc000_0100, 0xc000_0101, 0xc000_0102,  // FS, GS, kernel GS base
            0x11, 0x12,                             // kvmclock (old)
        ]
        for i in 0x200...0x20f { s.insert(UInt32(i)) }              // variable MTRRs
        for i in 0x268...0x26f { s.insert(UInt32(i)) }              // fixed MTRRs
        for i in 0x4b56_4d00...0x4b56_4d08 { s.insert(UInt32(i)) }  // kvmclock, async PF, steal time, PV EOI, …
        return s
    }()

    static func contains(_ index: UInt32) -> Bool { indices.contains(index) }
}
