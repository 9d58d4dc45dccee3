import CKVM

/// The general-purpose registers of a vCPU (`struct kvm_regs`).
public struct Registers: Sendable, Equatable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is always set on x86.
    public var rflags: UInt64 = 0x2

    public init() {}

    init(_ r: kvm_regs) {
        rax = r.rax; rbx = r.rbx; rcx = r.rcx; rdx = r.rdx; rsi = r.rsi; rdi = r.rdi; rsp = r.rsp; rbp = r.rbp
        r8 = r.r8; r9 = r.r9; r10 = r.r10; r11 = r.r11; r12 = r.r12; r13 = r.r13; r14 = r.r14; r15 = r.r15
        rip = r.rip; rflags = r.rflags
    }

    var raw: kvm_regs {
        var r = kvm_regs()
        r.rax = rax; r.rbx = rbx; r.rcx = rcx; r.rdx = rdx; r.rsi = rsi; r.rdi = rdi; r.rsp = rsp; r.rbp = rbp
        r.r8 = r8; r.r9 = r9; r.r10 = r10; r.r11 = r11; r.r12 = r12; r.r13 = r13; r.r14 = r14; r.r15 = r15
        r.rip = rip; r.rflags = rflags
        return r
    }
}

/// A segment register as the CPU caches it (`struct kvm_segment`).
public struct Segment: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt32 = 0
    public var selector: UInt16 = 0
    /// Descriptor type (e.g. 0xb execute/read accessed code, 0x3 read/write accessed data).
    public var type: UInt8 = 0
    public var present = false
    public var dpl: UInt8 = 0
    /// Default operation size (32-bit) — must be clear for a 64-bit code segment.
    public var defaultSize32 = false
    /// Code or data (not a system segment).
    public var codeOrData = false
    public var longMode = false
    /// Limit in 4 KiB units.
    public var granularity = false
    public var available = false
    public var unusable = false

    public init() {}

    /// A flat 4 GiB ring-0 segment: code (execute/read) or data (read/write), 64-bit code with `long`.
    public static func flat(selector: UInt16, code: Bool, long: Bool) -> Segment {
        var s = Segment()
        s.limit = 0xffff_ffff
        s.selector = selector
        s.type = code ? 0xb : 0x3
        s.present = true
        s.defaultSize32 = !long
        s.codeOrData = true
        s.longMode = long
        s.granularity = true
        return s
    }

    init(_ s: kvm_segment) {
        base = s.base; limit = s.limit; selector = s.selector; type = s.type; present = s.present != 0
        dpl = s.dpl; defaultSize32 = s.db != 0; codeOrData = s.s != 0; longMode = s.l != 0
        granularity = s.g != 0; available = s.avl != 0; unusable = s.unusable != 0
    }

    var raw: kvm_segment {
        var s = kvm_segment()
        s.base = base; s.limit = limit; s.selector = selector; s.type = type; s.present = present ? 1 : 0
        s.dpl = dpl; s.db = defaultSize32 ? 1 : 0; s.s = codeOrData ? 1 : 0; s.l = longMode ? 1 : 0
        s.g = granularity ? 1 : 0; s.avl = available ? 1 : 0; s.unusable = unusable ? 1 : 0
        return s
    }
}

/// A descriptor-table register (GDTR, IDTR).
public struct DescriptorTable: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt16 = 0
    public init(base: UInt64 = 0, limit: UInt16 = 0) { self.base = base; self.limit = limit }
}

/// Segment, control and descriptor-table registers (`struct kvm_sregs`).
public struct SpecialRegisters: Sendable, Equatable {
    public var cs = Segment(), ds = Segment(), es = Segment(), fs = Segment(), gs = Segment(), ss = Segment()
    public var tr = Segment(), ldt = Segment()
    public var gdt = DescriptorTable(), idt = DescriptorTable()
    public var cr0: UInt64 = 0, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, cr8: UInt64 = 0
    public var efer: UInt64 = 0
    public var apicBase: UInt64 = 0
    /// Pending external interrupts as KVM reports them (four 64-bit words), kept as they were read.
    var interruptBitmap: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    /// CR0.PG: paging is on, so addresses the CPU uses are virtual.
    public var pagingEnabled: Bool { cr0 & 0x8000_0000 != 0 }

    public init() {}

    public static func == (a: SpecialRegisters, b: SpecialRegisters) -> Bool {
        a.cs == b.cs && a.ds == b.ds && a.es == b.es && a.fs == b.fs && a.gs == b.gs && a.ss == b.ss
            && a.tr == b.tr && a.ldt == b.ldt && a.gdt == b.gdt && a.idt == b.idt && a.cr0 == b.cr0
            && a.cr2 == b.cr2 && a.cr3 == b.cr3 && a.cr4 == b.cr4 && a.cr8 == b.cr8 && a.efer == b.efer
            && a.apicBase == b.apicBase && a.interruptBitmap == b.interruptBitmap
    }

    init(_ s: kvm_sregs) {
        cs = Segment(s.cs); ds = Segment(s.ds); es = Segment(s.es); fs = Segment(s.fs); gs = Segment(s.gs)
        ss = Segment(s.ss); tr = Segment(s.tr); ldt = Segment(s.ldt)
        gdt = DescriptorTable(base: s.gdt.base, limit: s.gdt.limit)
        idt = DescriptorTable(base: s.idt.base, limit: s.idt.limit)
        cr0 = s.cr0; cr2 = s.cr2; cr3 = s.cr3; cr4 = s.cr4; cr8 = s.cr8; efer = s.efer; apicBase = s.apic_base
        interruptBitmap = s.interrupt_bitmap
    }

    var raw: kvm_sregs {
        var s = kvm_sregs()
        s.cs = cs.raw; s.ds = ds.raw; s.es = es.raw; s.fs = fs.raw; s.gs = gs.raw; s.ss = ss.raw
        s.tr = tr.raw; s.ldt = ldt.raw
        s.gdt.base = gdt.base; s.gdt.limit = gdt.limit
        s.idt.base = idt.base; s.idt.limit = idt.limit
        s.cr0 = cr0; s.cr2 = cr2; s.cr3 = cr3; s.cr4 = cr4; s.cr8 = cr8; s.efer = efer; s.apic_base = apicBase
        s.interrupt_bitmap = interruptBitmap
        return s
    }
}

/// The x87/SSE control words a vCPU starts with; everything else of `struct kvm_fpu` is zero.
public struct FPUControl: Sendable, Equatable {
    /// x87 control word (0x37f after FNINIT).
    public var fcw: UInt16
    /// SSE control/status (0x1f80 after reset).
    public var mxcsr: UInt32
    public init(fcw: UInt16 = 0x37f, mxcsr: UInt32 = 0x1f80) { self.fcw = fcw; self.mxcsr = mxcsr }
}

/// A vCPU's local APIC register page (`struct kvm_lapic_state`), read and written by offset.
public struct LAPICState: Sendable, Equatable {
    public static let size = MemoryLayout<kvm_lapic_state>.size
    /// Local vector table entries for LINT0 and LINT1.
    public static let lint0: Int = 0x350, lint1: Int = 0x360

    public var bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// The 32-bit register at `offset` (a multiple of 16 below 0x400).
    public subscript(register offset: Int) -> UInt32 {
        get {
            guard offset >= 0, offset + 4 <= bytes.count else { return 0 }
            return bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
        }
        set {
            guard offset >= 0, offset + 4 <= bytes.count else { return }
            bytes.withUnsafeMutableBytes { $0.storeBytes(of: newValue, toByteOffset: offset, as: UInt32.self) }
        }
    }
}
