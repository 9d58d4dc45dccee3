import Testing
@testable import Machine

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

@Suite("bzImage 64-bit boot protocol")
struct BootBzImageTests {
    typealias Options = BootImage.BzImageOptions

    func plan(_ o: Options = Options(), initrd: [UInt8]? = nil, cmdline: String = "", memory size: UInt64 = 256 * MiB) throws -> BootPlan {
        try KernelLoader.plan(BootConfig(kernel: BootImage.bzImage(o), initrd: initrd, cmdline: cmdline,
                                         memoryMap: try bootMap(size)))
    }

    func error(_ o: Options, initrd: [UInt8]? = nil, cmdline: String = "", memory size: UInt64 = 256 * MiB) throws -> BootError? {
        bootError(BootConfig(kernel: BootImage.bzImage(o), initrd: initrd, cmdline: cmdline, memoryMap: try bootMap(size)))
    }

    @Test("loads at pref_address and enters 64-bit code at load + 0x200 with RSI → boot_params")
    func entry() throws {
        let p = try plan()
        #expect(p.format == .bzImage)
        #expect(p.entry == .linux64(entry: 0x100_0200, bootParams: 0x7000, pml4: 0x9000, gdtBase: 0x500, gdtLimit: 47))
        #expect(p.write(at: 0x100_0000)?.bytes == BootImage.payload(0x3000, seed: 3))
        #expect(p.kernelRange == GuestAddress(0x100_0000) ..< GuestAddress(0x180_0000))   // + init_size
        expectSanePlan(p, try bootMap(256 * MiB))
    }

    @Test("without a usable pref_address it loads at 1 MiB and reserves from the aligned run address")
    func loadAtOneMiB() throws {
        var o = Options()
        o.prefAddress = 0
        o.setupSects = 0                                       // means 4
        let p = try plan(o)
        #expect(p.entry == .linux64(entry: 0x100200, bootParams: 0x7000, pml4: 0x9000, gdtBase: 0x500, gdtLimit: 47))
        #expect(p.write(at: 0x100000)?.bytes == BootImage.payload(0x3000, seed: 3))
        #expect(p.kernelRange == GuestAddress(0x100000) ..< GuestAddress(0x20_0000 + 0x80_0000))
    }

    @Test("header checks: old protocol, missing HdrS, bad boot_flag, no 64-bit entry, zImage, truncation")
    func headerChecks() throws {
        var old = Options()
        old.version = 0x020b
        #expect(try error(old) == .bootProtocolTooOld(0x020b))
        #expect(BootError.bootProtocolTooOld(0x020b).description == "bzImage boot protocol 2.11 is too old (need 2.12 / 64-bit entry)")

        var noMagic = Options()
        noMagic.magic = Array("HdrX".utf8)
        guard case .malformedBzImage = try error(noMagic) else { Issue.record("missing HdrS accepted"); return }
        var nothing = BootImage.bzImage(noMagic)
        nothing.putLE(UInt16(0), at: 0x1fe)
        #expect(bootError(BootConfig(kernel: nothing, memoryMap: try bootMap(64 * MiB))) == .unrecognizedKernel)

        var badFlag = Options()
        badFlag.bootFlag = 0x55aa
        #expect(try error(badFlag) == .malformedBzImage("boot_flag is 0x55aa, expected 0xaa55"))

        var no64 = Options()
        no64.xloadflags = 0x02
        guard case .malformedBzImage(let why) = try error(no64) else { Issue.record("no XLF_KERNEL_64 accepted"); return }
        #expect(why.contains("XLF_KERNEL_64"))

        var zImage = Options()
        zImage.loadflags = 0
        guard case .malformedBzImage = try error(zImage) else { Issue.record("zImage accepted"); return }

        var shortJump = Options()
        shortJump.jump = 0x10
        guard case .malformedBzImage = try error(shortJump) else { Issue.record("short header accepted"); return }

        let map = try bootMap(64 * MiB)
        let full = BootImage.bzImage()
        for length in [0x203, 0x206, 0x208, 0x230, 0x263, 5 * 512] {
            let e = bootError(BootConfig(kernel: Array(full.prefix(length)), memoryMap: map))
            guard case .truncated = e else { Issue.record("prefix \(length): \(String(describing: e))"); continue }
        }
    }

    @Test("boot_params: copied header, loader fields, command line and ramdisk pointers, e820")
    func bootParams() throws {
        let initrd = BootImage.payload(5000, seed: 7)
        let p = try plan(initrd: initrd, cmdline: "console=ttyS0 reboot=k")
        let z = try #require(p.write(at: 0x7000)?.bytes)
        #expect(z.count == 4096)
        #expect(z[0x1f1] == 4)                                   // setup_sects, copied
        #expect(z.getLE(UInt16.self, at: 0x1fe) == 0xaa55)
        #expect(Array(z[0x202 ..< 0x206]) == Array("HdrS".utf8))
        #expect(z.getLE(UInt16.self, at: 0x206) == 0x020f)
        #expect(z.getLE(UInt16.self, at: 0x20e) == 0x1234)
        #expect(z.getLE(UInt32.self, at: 0x268) == 0xabcd)         // last header field (jump 0x6a)
        #expect(z[0x1ef] == 0)                                   // sentinel
        #expect(z[0x210] == 0xff)                                // type_of_loader
        #expect(z[0x211] == 0x81)                                // LOADED_HIGH | CAN_USE_HEAP
        #expect(z.getLE(UInt16.self, at: 0x224) == 0xde00)         // heap_end_ptr
        #expect(z.getLE(UInt32.self, at: 0x228) == 0x20000)        // cmd_line_ptr
        #expect(z.getLE(UInt32.self, at: 0x0c8) == 0)              // ext_cmd_line_ptr
        let start = (256 * MiB - 5000) & ~0xfff
        #expect(z.getLE(UInt32.self, at: 0x218) == UInt32(start))  // ramdisk_image
        #expect(z.getLE(UInt32.self, at: 0x21c) == 5000)           // ramdisk_size
        #expect(z.getLE(UInt32.self, at: 0x0c0) == 0)
        #expect(z.getLE(UInt32.self, at: 0x0c4) == 0)
        #expect(p.write(at: start)?.bytes == initrd)
        #expect(p.read(0x20000, 23) == Array("console=ttyS0 reboot=k\0".utf8))
        #expect(z[0x1e8] == 3)
        let table = e820(z)
        #expect(table == [E820Entry(address: GuestAddress(0), size: 0x9fc00, type: 1),
                          E820Entry(address: GuestAddress(0x9fc00), size: 0x60400, type: 2),
                          E820Entry(address: GuestAddress(0x100000), size: 255 * MiB, type: 1)])
        #expect(table == p.e820)
        #expect(z[0x2d0 + 3 * 20 ..< 4096].allSatisfy { $0 == 0 })
    }

    func e820(_ z: [UInt8]) -> [E820Entry] {
        (0 ..< Int(z[0x1e8])).map {
            let at = 0x2d0 + $0 * 20
            return E820Entry(address: GuestAddress(z.getLE(UInt64.self, at: at)), size: z.getLE(UInt64.self, at: at + 8),
                             type: z.getLE(UInt32.self, at: at + 16))
        }
    }

    @Test("the header copy stops where the jump at 0x200 says it ends")
    func headerLength() throws {
        var o = Options()
        o.jump = 0x66                                           // 2.12-style header, ends at 0x268
        let z = try #require(try plan(o).write(at: 0x7000)?.bytes)
        #expect(z.getLE(UInt32.self, at: 0x264) == 0x190)
        #expect(z.getLE(UInt32.self, at: 0x268) == 0)
    }

    @Test("e820 of a 5 GiB machine: low RAM to 3 GiB, the hole left out, 2 GiB above 4 GiB")
    func e820FiveGiB() throws {
        let p = try plan(memory: 5 * GiB)
        let z = try #require(p.write(at: 0x7000)?.bytes)
        #expect(e820(z) == [E820Entry(address: GuestAddress(0), size: 0x9fc00, type: 1),
                            E820Entry(address: GuestAddress(0x9fc00), size: 0x60400, type: 2),
                            E820Entry(address: GuestAddress(0x100000), size: 3 * GiB - MiB, type: 1),
                            E820Entry(address: GuestAddress(4 * GiB), size: 2 * GiB, type: 1)])
        expectSanePlan(p, try bootMap(5 * GiB))
    }

    @Test("the initrd goes page-aligned below initrd_addr_max and above the kernel's init_size")
    func initrdPlacement() throws {
        var o = Options()
        o.initrdAddrMax = 0x3fff_ffff
        let initrd = [UInt8](repeating: 0x5a, count: 3 * Int(MiB) + 123)
        let p = try plan(o, initrd: initrd, memory: 5 * GiB)
        let range = try #require(p.initrdRange)
        #expect(range.lowerBound.raw % 4096 == 0)
        #expect(range.upperBound.raw <= 0x4000_0000)
        #expect(range.lowerBound.raw == (0x4000_0000 - UInt64(initrd.count)) & ~0xfff)
        #expect(range.lowerBound >= p.kernelRange.upperBound)

        // 256 MiB: limited by RAM, not by initrd_addr_max.
        let q = try plan(initrd: initrd)
        #expect(q.initrdRange?.upperBound.raw ?? 0 <= 256 * MiB)
        #expect(q.initrdRange?.lowerBound.raw == (256 * MiB - UInt64(initrd.count)) & ~0xfff)

        // Tight: a 32 MiB machine, kernel to 24 MiB, an 8 MiB initrd fits exactly.
        let exact = try plan(initrd: [UInt8](repeating: 1, count: Int(8 * MiB)), memory: 32 * MiB)
        #expect(exact.initrdRange == GuestAddress(24 * MiB) ..< GuestAddress(32 * MiB))
        expectSanePlan(exact, try bootMap(32 * MiB))
    }

    @Test("a kernel or initrd too big for --memory is refused with sizes")
    func tooBig() throws {
        var o = Options()
        o.initSize = UInt32(64 * MiB)
        let e = try error(o, memory: 32 * MiB)
        #expect(e == .kernelDoesNotFit(size: 79 * MiB, at: GuestAddress(0x100000), memorySize: 32 * MiB))
        #expect(e?.description == "kernel (79 MiB at 0x100000) does not fit in --memory 32M")

        let tooBig = [UInt8](repeating: 1, count: Int(8 * MiB) + 1)
        guard case .initrdDoesNotFit(let size, let above, let below, _) = try error(Options(), initrd: tooBig, memory: 32 * MiB) else {
            Issue.record("initrd accepted"); return
        }
        #expect(size == 8 * MiB + 1 && above == GuestAddress(24 * MiB) && below == GuestAddress(32 * MiB))

        var lowMax = Options()
        lowMax.initrdAddrMax = 0x00ff_ffff                     // below the kernel itself
        guard case .initrdDoesNotFit = try error(lowMax, initrd: [1, 2, 3]) else { Issue.record("initrd below kernel accepted"); return }
    }

    @Test("the command line may be as long as the header's cmdline_size and no longer")
    func cmdlineSize() throws {
        var o = Options()
        o.cmdlineSize = 100
        _ = try plan(o, cmdline: String(repeating: "a", count: 100))
        #expect(try error(o, cmdline: String(repeating: "a", count: 101)) == .commandLineTooLong(length: 101, maximum: 100))
        o.cmdlineSize = 1_000_000                              // capped by the loader's own area
        #expect(try error(o, cmdline: String(repeating: "a", count: 4096)) == .commandLineTooLong(length: 4096, maximum: 4095))
    }

    @Test("identity page tables map 0…4 GiB with 2 MiB pages; the GDT has the boot selectors")
    func pageTablesAndGDT() throws {
        let p = try plan()
        let pml4 = try #require(p.write(at: 0x9000)?.bytes)
        #expect(pml4.count == 4096)
        #expect(pml4.getLE(UInt64.self, at: 0) == 0xa003)
        #expect(pml4[8...].allSatisfy { $0 == 0 })
        let pdpt = try #require(p.write(at: 0xa000)?.bytes)
        for i in 0 ..< 4 { #expect(pdpt.getLE(UInt64.self, at: i * 8) == 0xb003 + UInt64(i) * 0x1000) }
        #expect(pdpt[32...].allSatisfy { $0 == 0 })
        let pds = try #require(p.write(at: 0xb000)?.bytes)
        #expect(pds.count == 4 * 4096)
        for i in [0, 1, 511, 512, 1024, 2047] {
            #expect(pds.getLE(UInt64.self, at: i * 8) == UInt64(i) << 21 | 0x83)
        }
        let gdt = try #require(p.write(at: 0x500)?.bytes)
        #expect(gdt.count == 48)
        #expect(gdt.getLE(UInt64.self, at: 0x00) == 0)
        #expect(gdt.getLE(UInt64.self, at: 0x08) == 0x00cf_9b00_0000_ffff)
        #expect(gdt.getLE(UInt64.self, at: 0x10) == 0x00af_9b00_0000_ffff)
        #expect(gdt.getLE(UInt64.self, at: 0x18) == 0x00cf_9300_0000_ffff)
        #expect(gdt.getLE(UInt64.self, at: 0x20) == 0x0000_8b00_0000_0067)
        #expect(gdt.getLE(UInt64.self, at: 0x28) == 0)
    }
}
