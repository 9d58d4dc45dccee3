import Testing
@testable import Machine

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

@Suite("MP table")
struct BootMPTableTests {
    struct Parsed {
        var processors: [(apicID: UInt8, flags: UInt8, signature: UInt32, features: UInt32)] = []
        var buses: [(id: UInt8, type: String)] = []
        var ioAPICs: [(id: UInt8, version: UInt8, flags: UInt8, address: UInt32)] = []
        var ioInterrupts: [(type: UInt8, bus: UInt8, irq: UInt8, apic: UInt8, pin: UInt8)] = []
        var localInterrupts: [(type: UInt8, apic: UInt8, lint: UInt8)] = []
        var entryCount = 0
        var localAPIC: UInt32 = 0
        var oem = ""
    }

    /// Checks the floating pointer and table checksums and walks every entry.
    func parse(_ plan: BootPlan) throws -> Parsed {
        let fp = try #require(plan.read(0xf0000, 16))
        #expect(Array(fp[0 ..< 4]) == Array("_MP_".utf8))
        #expect(fp[8] == 1 && fp[9] == 4)
        #expect(fp.reduce(UInt8(0), &+) == 0, "floating pointer checksum")
        #expect(fp[11] == 0, "feature byte 1: a configuration table is present")
        let tableAddress = UInt64(fp.getLE(UInt32.self, at: 4))
        #expect(tableAddress == 0xf0010)
        let header = try #require(plan.read(tableAddress, 44))
        #expect(Array(header[0 ..< 4]) == Array("PCMP".utf8))
        #expect(header[6] == 4)
        let length = Int(header.getLE(UInt16.self, at: 4))
        let table = try #require(plan.read(tableAddress, length))
        #expect(table.reduce(UInt8(0), &+) == 0, "configuration table checksum")
        #expect(tableAddress + UInt64(length) <= 0x100000)

        var p = Parsed()
        p.entryCount = Int(header.getLE(UInt16.self, at: 34))
        p.localAPIC = header.getLE(UInt32.self, at: 36)
        p.oem = String(decoding: header[8 ..< 16], as: UTF8.self)
        var at = 44, walked = 0
        while at < length {
            walked += 1
            switch table[at] {
            case 0:
                p.processors.append((table[at + 1], table[at + 3], table.getLE(UInt32.self, at: at + 4), table.getLE(UInt32.self, at: at + 8)))
                #expect(table[at + 2] == 0x14)
                at += 20
            case 1:
                p.buses.append((table[at + 1], String(decoding: table[at + 2 ..< at + 8], as: UTF8.self)))
                at += 8
            case 2:
                p.ioAPICs.append((table[at + 1], table[at + 2], table[at + 3], table.getLE(UInt32.self, at: at + 4)))
                at += 8
            case 3:
                #expect(table.getLE(UInt16.self, at: at + 2) == 0)
                p.ioInterrupts.append((table[at + 1], table[at + 4], table[at + 5], table[at + 6], table[at + 7]))
                at += 8
            case 4:
                p.localInterrupts.append((table[at + 1], table[at + 6], table[at + 7]))
                at += 8
            default:
                Issue.record("unknown MP entry type \(table[at]) at \(at)")
                return p
            }
        }
        #expect(at == length)
        #expect(walked == p.entryCount)
        return p
    }

    @Test("checksums are valid and the structure parses back for 1, 2, 8 and 254 vCPUs", arguments: [1, 2, 8, 254])
    func structure(cpus: Int) throws {
        let map = try bootMap(256 * MiB)
        let plan = try KernelLoader.plan(BootConfig(kernel: BootImage.elf(), memoryMap: map, cpus: cpus))
        let p = try parse(plan)
        #expect(p.oem == "SWIFTVMM")
        #expect(p.localAPIC == 0xfee0_0000)
        #expect(p.processors.count == cpus)
        #expect(p.processors.map(\.apicID) == (0 ..< cpus).map { UInt8($0) })
        #expect(p.processors.first?.flags == 0x03)             // enabled + BSP
        #expect(p.processors.dropFirst().allSatisfy { $0.flags == 0x01 })
        #expect(p.processors.allSatisfy { $0.signature == 0x600 && $0.features == 0x201 })
        #expect(p.buses.count == 1 && p.buses.first?.id == 0 && p.buses.first?.type == "ISA   ")
        #expect(p.ioAPICs.count == 1)
        #expect(p.ioAPICs.first?.id == UInt8(cpus))
        #expect(p.ioAPICs.first?.version == 0x11 && p.ioAPICs.first?.flags == 1)
        #expect(p.ioAPICs.first?.address == 0xfec0_0000)
        #expect(p.ioInterrupts.count == 24)
        for (irq, e) in p.ioInterrupts.enumerated() {
            #expect(e.type == 0 && e.bus == 0 && e.irq == UInt8(irq) && e.pin == UInt8(irq) && e.apic == UInt8(cpus))
        }
        #expect(p.localInterrupts.count == 2)
        #expect(p.localInterrupts.first.map { $0.type == 3 && $0.apic == 0 && $0.lint == 0 } == true)   // ExtINT → LINT0
        #expect(p.localInterrupts.last.map { $0.type == 1 && $0.apic == 0xff && $0.lint == 1 } == true) // NMI → LINT1
        #expect(MPTable.size(cpus: cpus) == plan.write(at: 0xf0000)?.bytes.count)
        expectSanePlan(plan, map)
    }

    @Test("the bzImage path writes the same MP table")
    func bzImage() throws {
        let plan = try KernelLoader.plan(BootConfig(kernel: BootImage.bzImage(), memoryMap: try bootMap(256 * MiB), cpus: 4))
        #expect(try parse(plan).processors.count == 4)
    }

    @Test("254 vCPUs still fit below 1 MiB")
    func largestFits() {
        #expect(0xf0000 + MPTable.size(cpus: MPTable.maxCPUs) <= 0x100000)
    }

    /// What Linux's arch/x86/kernel/mpparse.c checks before it uses a table: smp_scan_config
    /// looks at 16-byte steps of [0, 1 KiB), [639 KiB, 640 KiB) and [0xF0000, 1 MiB) (then the
    /// EBDA the BIOS data area names) for "_MP_" with length 1, spec revision 1 or 4 and a zero
    /// checksum; smp_check_mpc wants "PCMP", a zero checksum, revision 1 or 4 and a local APIC
    /// address. It also reserves the table, so it must not be in e820 RAM the kernel hands out.
    @Test("the table passes Linux's mpparse checks, in a region it scans and e820 reserves", arguments: [1, 2, 64, 254])
    func linuxAccepts(cpus: Int) throws {
        let plan = try KernelLoader.plan(BootConfig(kernel: BootImage.bzImage(), memoryMap: try bootMap(256 * MiB), cpus: cpus))
        let scanned: [Range<UInt64>] = [0 ..< 0x400, 0x9fc00 ..< 0xa0000, 0xf0000 ..< 0x100000]
        let found = scanned.flatMap { stride(from: $0.lowerBound, to: $0.upperBound, by: 16) }.filter { a in
            guard let fp = plan.read(a, 16) else { return false }
            return Array(fp[0 ..< 4]) == Array("_MP_".utf8) && fp[8] == 1 && (fp[9] == 1 || fp[9] == 4)
                && fp.reduce(UInt8(0), &+) == 0
        }
        let fp = try #require(found.first.flatMap { plan.read($0, 16) }, "no floating pointer where Linux scans")
        let physptr = UInt64(fp.getLE(UInt32.self, at: 4))
        let header = try #require(plan.read(physptr, 44))
        let table = try #require(plan.read(physptr, Int(header.getLE(UInt16.self, at: 4))))
        #expect(Array(table[0 ..< 4]) == Array("PCMP".utf8) && table.reduce(UInt8(0), &+) == 0)
        #expect(table[6] == 1 || table[6] == 4)
        #expect(table.getLE(UInt32.self, at: 36) != 0)
        let reserved = plan.e820.filter { $0.type == E820Entry.reserved }
        for (start, length) in [(try #require(found.first), 16), (physptr, table.count)] {
            #expect(reserved.contains { $0.address.raw <= start && start + UInt64(length) <= $0.address.raw + $0.size },
                    "[0x\(String(start, radix: 16)), +\(length)) is not e820-reserved")
        }
    }
}

@Suite("e820 map")
struct BootE820Tests {
    @Test("256 MiB: RAM, the EBDA/BIOS hole, RAM from 1 MiB")
    func small() throws {
        #expect(E820Entry.map(for: try bootMap(256 * MiB)) == [
            E820Entry(address: GuestAddress(0), size: 0x9fc00, type: E820Entry.ram),
            E820Entry(address: GuestAddress(0x9fc00), size: 0x100000 - 0x9fc00, type: E820Entry.reserved),
            E820Entry(address: GuestAddress(0x100000), size: 255 * MiB, type: E820Entry.ram),
        ])
    }

    @Test("5 GiB: low RAM stops at 3 GiB, the rest starts at 4 GiB")
    func large() throws {
        let map = E820Entry.map(for: try bootMap(5 * GiB))
        #expect(map.count == 4)
        #expect(map[2] == E820Entry(address: GuestAddress(0x100000), size: 3 * GiB - MiB, type: E820Entry.ram))
        #expect(map[3] == E820Entry(address: GuestAddress(4 * GiB), size: 2 * GiB, type: E820Entry.ram))
        #expect(map.map(\.size).reduce(0, +) == 5 * GiB)
    }
}
