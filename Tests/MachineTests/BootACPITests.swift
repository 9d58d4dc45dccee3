import Foundation
import Testing
@testable import Machine

private let MiB: UInt64 = 1 << 20

/// The ACPI tables as a guest finds them: RSDP at 0xE0000 → XSDT → FACP (→ DSDT), APIC.
struct ParsedACPI {
    var rsdp: [UInt8]
    /// Each table's bytes by signature, and its address.
    var tables: [String: [UInt8]] = [:]
    var addresses: [String: UInt64] = [:]

    init(_ plan: BootPlan, sourceLocation: SourceLocation = #_sourceLocation) throws {
        rsdp = try #require(plan.read(0xe0000, 36), sourceLocation: sourceLocation)
        #expect(Array(rsdp[0 ..< 8]) == Array("RSD PTR ".utf8), sourceLocation: sourceLocation)
        #expect(rsdp[0 ..< 20].reduce(UInt8(0), &+) == 0, "RSDP checksum", sourceLocation: sourceLocation)
        #expect(rsdp.reduce(UInt8(0), &+) == 0, "RSDP extended checksum", sourceLocation: sourceLocation)
        #expect(rsdp[15] == 2 && rsdp.getLE(UInt32.self, at: 20) == 36, sourceLocation: sourceLocation)
        let xsdtAddress = rsdp.getLE(UInt64.self, at: 24)
        let xsdt = try Self.table(plan, at: xsdtAddress, signature: "XSDT", sourceLocation: sourceLocation)
        tables["XSDT"] = xsdt
        addresses["XSDT"] = xsdtAddress
        for offset in stride(from: 36, to: xsdt.count, by: 8) {
            let address = xsdt.getLE(UInt64.self, at: offset)
            let header = try #require(plan.read(address, 4), sourceLocation: sourceLocation)
            let signature = String(decoding: header, as: UTF8.self)
            tables[signature] = try Self.table(plan, at: address, signature: signature, sourceLocation: sourceLocation)
            addresses[signature] = address
        }
        let fadt = try #require(tables["FACP"], sourceLocation: sourceLocation)
        let dsdtAddress = fadt.getLE(UInt64.self, at: 140)
        #expect(UInt64(fadt.getLE(UInt32.self, at: 40)) == dsdtAddress, "DSDT and X_DSDT agree", sourceLocation: sourceLocation)
        tables["DSDT"] = try Self.table(plan, at: dsdtAddress, signature: "DSDT", sourceLocation: sourceLocation)
        addresses["DSDT"] = dsdtAddress
    }

    /// A whole table, its length from its header and its checksum checked.
    static func table(_ plan: BootPlan, at address: UInt64, signature: String,
                      sourceLocation: SourceLocation) throws -> [UInt8] {
        let header = try #require(plan.read(address, 36), sourceLocation: sourceLocation)
        #expect(String(decoding: header[0 ..< 4], as: UTF8.self) == signature, sourceLocation: sourceLocation)
        #expect(String(decoding: header[10 ..< 16], as: UTF8.self) == "SWIFTV", sourceLocation: sourceLocation)
        let bytes = try #require(plan.read(address, Int(header.getLE(UInt32.self, at: 4))), sourceLocation: sourceLocation)
        #expect(bytes.reduce(UInt8(0), &+) == 0, "\(signature) checksum", sourceLocation: sourceLocation)
        #expect(address % 8 == 0 && address >= 0xe0000 && address + UInt64(bytes.count) <= 0xf0000,
                "\(signature) inside the ACPI area", sourceLocation: sourceLocation)
        return bytes
    }

    /// MADT entries as (type, bytes).
    var madtEntries: [(type: UInt8, bytes: [UInt8])] {
        guard let madt = tables["APIC"] else { return [] }
        var out: [(UInt8, [UInt8])] = []
        var at = 44
        while at + 2 <= madt.count, madt[at + 1] >= 2, at + Int(madt[at + 1]) <= madt.count {
            out.append((madt[at], Array(madt[at ..< at + Int(madt[at + 1])])))
            at += Int(madt[at + 1])
        }
        return out
    }
}

@Suite("ACPI tables")
struct BootACPITests {
    func plan(cpus: Int = 1, virtio: Int = 0, acpi: Bool = true, bzImage: Bool = false) throws -> BootPlan {
        try KernelLoader.plan(BootConfig(kernel: bzImage ? BootImage.bzImage() : BootImage.elf(),
                                         memoryMap: try bootMap(256 * MiB), cpus: cpus, acpi: acpi, virtioDevices: virtio))
    }

    @Test("RSDP, XSDT, FACP, APIC and DSDT have their signatures, lengths and checksums", arguments: [1, 2, 4, 254])
    func structure(cpus: Int) throws {
        let p = try plan(cpus: cpus, virtio: 19)
        let acpi = try ParsedACPI(p)
        #expect(Set(acpi.tables.keys) == ["XSDT", "FACP", "APIC", "DSDT"])
        #expect(acpi.tables["FACP"]?.count == 276)
        #expect(acpi.tables["XSDT"]?.count == 36 + 16)
        expectSanePlan(p, try bootMap(256 * MiB))
    }

    @Test("the FADT is hardware-reduced and resets through the i8042 (0xFE to port 0x64)")
    func fadt() throws {
        let fadt = try #require(try ParsedACPI(try plan()).tables["FACP"])
        #expect(fadt[8] == 6 && fadt[131] == 5)
        let flags = fadt.getLE(UInt32.self, at: 112)
        #expect(flags & (1 << 20) != 0, "HW_REDUCED_ACPI")
        #expect(flags & (1 << 10) != 0, "RESET_REG_SUP")
        #expect(Array(fadt[116 ..< 120]) == [1, 8, 0, 1], "reset register: system I/O, 8 bits, byte access")
        #expect(fadt.getLE(UInt64.self, at: 120) == 0x64 && fadt[128] == 0xfe)
        #expect(fadt.getLE(UInt32.self, at: 36) == 0 && fadt.getLE(UInt64.self, at: 132) == 0, "no FACS")
        #expect(fadt.getLE(UInt16.self, at: 46) == 0, "no SCI")
    }

    @Test("the MADT lists one enabled local APIC per vCPU, the IOAPIC, the PIT's override and LINT1 NMI",
          arguments: [1, 2, 3, 8, 254])
    func madt(cpus: Int) throws {
        let acpi = try ParsedACPI(try plan(cpus: cpus))
        let madt = try #require(acpi.tables["APIC"])
        #expect(madt.getLE(UInt32.self, at: 36) == 0xfee0_0000)
        let entries = acpi.madtEntries
        #expect(44 + entries.map(\.bytes.count).reduce(0, +) == madt.count, "entries fill the table exactly")
        let lapics = entries.filter { $0.type == 0 }
        #expect(lapics.count == cpus)
        for (i, e) in lapics.enumerated() {
            #expect(e.bytes.count == 8 && e.bytes[2] == UInt8(i) && e.bytes[3] == UInt8(i) && e.bytes.getLE(UInt32.self, at: 4) == 1)
        }
        let ioapics = entries.filter { $0.type == 1 }
        #expect(ioapics.count == 1)
        #expect(ioapics.first.map { $0.bytes[2] == UInt8(cpus) && $0.bytes.getLE(UInt32.self, at: 4) == 0xfec0_0000
            && $0.bytes.getLE(UInt32.self, at: 8) == 0 } == true)
        let overrides = entries.filter { $0.type == 2 }
        #expect(overrides.map { [$0.bytes[2], $0.bytes[3]] } == [[0, 0]], "ISA IRQ 0")
        #expect(overrides.first.map { $0.bytes.getLE(UInt32.self, at: 4) == 0 && $0.bytes.getLE(UInt16.self, at: 8) == 5 } == true,
                "PIT → GSI 0 (KVM's default routing), edge, active high")
        #expect(entries.filter { $0.type == 4 }.map(\.bytes) == [[4, 6, 0xff, 0, 0, 1]])
    }

    @Test("the DSDT's AML decodes to COM1 and one LNRO0005 device per virtio window", arguments: [0, 1, 3, 19])
    func dsdt(virtio: Int) throws {
        let dsdt = try #require(try ParsedACPI(try plan(virtio: virtio)).tables["DSDT"])
        let decoded = try AMLDecoder.decode(Array(dsdt[36...]))
        var expected = ["\\_SB_.COM1 _HID=EISA:PNP0501 _UID=0 _CRS=[IO 0x3f8/8, IRQ 4 edge high]"]
        for i in 0 ..< virtio {
            let w = MemoryMap.virtioWindow(index: i)
            let name = String(format: "VR%02X", i)
            expected.append("\\_SB_.\(name) _HID=\"LNRO0005\" _UID=\(i) _CRS=[MEM 0x\(String(w.base.raw, radix: 16))/0x1000 rw, IRQ \(w.irq) edge high]")
        }
        #expect(decoded == expected)
    }

    @Test("iasl disassembles every table without errors or warnings (when acpica-tools is installed)")
    func iasl() throws {
        guard let iasl = ["/usr/bin/iasl", "/usr/local/bin/iasl"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return   // Tools/setup installs acpica-tools; without it the AML decoder above is the check.
        }
        let acpi = try ParsedACPI(try plan(cpus: 2, virtio: 2))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-acpi-\(getpid())-\(UInt32.random(in: 0 ... .max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // iasl 20200925 (Debian 12) refuses a lone RSDP ("does not contain a valid ACPI table"):
        // ParsedACPI checks it instead.
        var files: [String: [UInt8]] = [:]
        for (signature, bytes) in acpi.tables { files[signature.lowercased()] = bytes }
        var listings: [String: String] = [:]
        for (name, bytes) in files {
            let file = dir.appendingPathComponent("\(name).dat")
            try Data(bytes).write(to: file)
            let (status, output) = try run(iasl, ["-d", file.path], in: dir)
            #expect(status == 0, "iasl -d \(name): \(output)")
            for bad in ["Error", "Warning", "Invalid", "Unknown"] {
                #expect(!output.contains(bad), "iasl -d \(name) says \(bad): \(output)")
            }
            listings[name] = try String(contentsOf: dir.appendingPathComponent("\(name).dsl"), encoding: .utf8)
        }
        let dsl = listings["dsdt"] ?? ""
        for needle in ["Device (COM1)", "EisaId (\"PNP0501\")", "IO (Decode16,", "0x03F8,", "Device (VR00)", "Device (VR01)",
                       "Name (_HID, \"LNRO0005\")", "Memory32Fixed (ReadWrite,", "0xD0001000,", "0x00000006,"] {
            #expect(dsl.contains(needle), "DSDT listing lacks \(needle): \(dsl)")
        }
        let madt = listings["apic"] ?? ""
        #expect(madt.components(separatedBy: "Subtable Type : 00 [Processor Local APIC]").count == 3, "\(madt)")
        #expect(madt.contains("Subtable Type : 02 [Interrupt Source Override]"))
        let fadt = listings["facp"] ?? ""
        #expect(fadt.contains("Hardware Reduced (V5) : 1") && fadt.contains("Reset Register Supported (V2) : 1"), "\(fadt)")
    }

    @Test("both boot protocols pass the RSDP's address; --no-acpi writes no tables and passes none")
    func rsdpAddress() throws {
        let pvh = try plan()
        #expect(pvh.read(0x6000 + 32, 8).map { $0.getLE(UInt64.self, at: 0) } == 0xe0000, "hvm_start_info.rsdp_paddr")
        let bz = try plan(bzImage: true)
        #expect(bz.read(0x7000 + 0x70, 8).map { $0.getLE(UInt64.self, at: 0) } == 0xe0000, "boot_params.acpi_rsdp_addr")
        _ = try ParsedACPI(bz)
        for p in [try plan(acpi: false), try plan(acpi: false, bzImage: true)] {
            #expect(p.read(0xe0000, 8) == nil)
            #expect(p.writes.allSatisfy { !($0.address.raw ..< $0.address.raw + UInt64($0.bytes.count)).contains(0xe0000) })
        }
        #expect(try plan(acpi: false).read(0x6000 + 32, 8) == [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(try plan(acpi: false, bzImage: true).read(0x7000 + 0x70, 8) == [0, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test("more virtio devices than windows is refused")
    func tooManyDevices() throws {
        expectBootError(.invalidDeviceCount(20), BootConfig(kernel: BootImage.elf(), memoryMap: try bootMap(256 * MiB), virtioDevices: 20))
    }

    func run(_ tool: String, _ arguments: [String], in dir: URL) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = arguments
        p.currentDirectoryURL = dir
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
