import KVM

/// Puts x86 vCPUs in the state firmware would leave them in, and the boot vCPU at the entry
/// point a `BootPlan` chose.
enum X86BootCPU {
    /// LINT0 as ExtINT and LINT1 as NMI: the virtual-wire setup firmware leaves behind.
    static func configureLAPIC(_ v: VCPU) throws(KVMError) {
        var l = try v.lapic()
        l[register: LAPICState.lint0] = (l[register: LAPICState.lint0] & ~0x700) | (7 << 8)
        l[register: LAPICState.lint1] = (l[register: LAPICState.lint1] & ~0x700) | (4 << 8)
        try v.setLAPIC(l)
    }

    /// Registers, segments and FPU of the boot vCPU for `entry`.
    static func enter(_ v: VCPU, at entry: BootEntry) throws(KVMError) {
        var s = try v.specialRegisters()
        var r = Registers()
        switch entry {
        case .pvh(let entry, let startInfo):
            // 32-bit protected mode, paging off, flat segments; EBX = hvm_start_info.
            s.cs = .flat(selector: BootLayout.code32Selector, code: true, long: false)
            let data = Segment.flat(selector: BootLayout.dataSelector, code: false, long: false)
            s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
            s.cr0 = 0x11          // PE | ET
            s.cr4 = 0
            s.efer = 0
            s.gdt = DescriptorTable(base: BootLayout.gdtAddress.raw, limit: BootLayout.gdtLimit)
            r.rip = UInt64(entry)
            r.rbx = UInt64(startInfo)
            r.rsp = BootLayout.bootStackPointer.raw
        case .linux64(let entry, let bootParams, let pml4, let gdtBase, let gdtLimit):
            // Long mode with identity page tables; RSI = boot_params.
            s.cs = .flat(selector: BootLayout.code64Selector, code: true, long: true)
            let data = Segment.flat(selector: BootLayout.dataSelector, code: false, long: false)
            s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
            s.gdt = DescriptorTable(base: gdtBase, limit: gdtLimit)
            s.cr3 = pml4
            s.cr4 = 0x20          // PAE
            s.cr0 = 0x8000_0011   // PG | ET | PE
            s.efer = 0x500        // LME | LMA
            r.rip = entry
            r.rsi = bootParams
            r.rsp = BootLayout.bootStackPointer.raw
            r.rbp = BootLayout.bootStackPointer.raw
        }
        try v.setSpecialRegisters(s)
        try v.setRegisters(r)
        try v.resetFPU(FPUControl())
    }
}
