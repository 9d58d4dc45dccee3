import KVM
import Testing
@testable import Machine

@Suite("CPUID policy: topology, filtered features, migration feature words, deny specs")
struct CPUIDPolicyTests {
    static let significant: UInt32 = 1

    /// A made-up "supported" table with everything the policy touches switched on.
    static let supported: [CPUIDEntry] = [
        CPUIDEntry(function: 0, eax: 0x1f, ebx: 0x6874_7541),
        CPUIDEntry(function: 1, eax: 0x000a_0f11, ebx: 0xff10_0800, ecx: 0x7ffa_b22b | (1 << 3) | (1 << 5) | (1 << 15),
                   edx: 0x178b_fbff | (1 << 28)),
        CPUIDEntry(function: 4, index: 0, flags: significant, eax: 0xfc00_4121, ebx: 0x01c0_003f, ecx: 0x3f, edx: 1),
        CPUIDEntry(function: 5, eax: 0x40, ebx: 0x40, ecx: 3, edx: 0x11),
        CPUIDEntry(function: 6, eax: 4, ecx: 1),
        CPUIDEntry(function: 7, index: 0, flags: significant, eax: 1, ebx: 0x219c_95a9, ecx: 0x0040_068c, edx: 0x10),
        CPUIDEntry(function: 7, index: 1, flags: significant, eax: 0x30),
        CPUIDEntry(function: 0xa, eax: 0x0730_0805, ebx: 0, ecx: 0, edx: 0x603),
        CPUIDEntry(function: 0xb, index: 0, flags: significant, eax: 1, ebx: 2, ecx: 0x100, edx: 0xee),
        CPUIDEntry(function: 0xb, index: 1, flags: significant, eax: 4, ebx: 16, ecx: 0x201, edx: 0xee),
        CPUIDEntry(function: 0xd, index: 0, flags: significant, eax: 0x2e7, ebx: 0x980, ecx: 0x988),
        CPUIDEntry(function: 0xd, index: 1, flags: significant, eax: 0xf),
        CPUIDEntry(function: 0x1f, index: 0, flags: significant, eax: 1, ebx: 2, edx: 0xee),
        CPUIDEntry(function: 0x4000_0001, eax: 0x0100_7afb),
        CPUIDEntry(function: 0x8000_0001, ecx: 0x75c2_37ff, edx: 0x2fd3_fbff),
    ]

    func leaf(_ t: [CPUIDEntry], _ function: UInt32, _ index: UInt32 = 0) throws -> CPUIDEntry {
        try #require(t.first { $0.function == function && $0.index == index })
    }

    @Test("leaf 1: APIC ID and logical count in EBX per vCPU, CLFLUSH kept, HTT with more than one vCPU")
    func leaf1Topology() throws {
        for (id, count) in [(0, 1), (3, 4), (7, 8), (253, 254)] as [(UInt32, Int)] {
            let e = try leaf(CPUIDPolicy.table(supported: Self.supported, vcpuID: id, vcpuCount: count), 1)
            #expect(e.ebx >> 24 == id)
            #expect((e.ebx >> 16) & 0xff == UInt32(count))
            #expect(e.ebx & 0xffff == 0x0800)
            #expect((e.edx & (1 << 28) != 0) == (count > 1))
            #expect(e.eax == 0x000a_0f11)
        }
        let many = try leaf(CPUIDPolicy.table(supported: Self.supported, vcpuID: 1, vcpuCount: 300), 1)
        #expect((many.ebx >> 16) & 0xff == 255)
    }

    @Test("leaf 1 ECX: hypervisor bit set; MONITOR, VMX and PDCM cleared; other bits kept")
    func leaf1Features() throws {
        let e = try leaf(CPUIDPolicy.table(supported: Self.supported, vcpuID: 0, vcpuCount: 2), 1)
        #expect(e.ecx & (1 << 31) != 0)
        #expect(e.ecx & (1 << 3) == 0)
        #expect(e.ecx & (1 << 5) == 0)
        #expect(e.ecx & (1 << 15) == 0)
        #expect(e.ecx & ~UInt32((1 << 31) | (1 << 3) | (1 << 5) | (1 << 15)) == 0x7ffa_b22b & ~UInt32(1 << 3 | 1 << 5 | 1 << 15))
        #expect(e.edx & ~UInt32(1 << 28) == 0x178b_fbff & ~UInt32(1 << 28))
    }

    @Test("leaves 0xB and 0x1F: x2APIC ID in EDX of every sub-leaf; sub-leaf 1 counts the vCPUs")
    func extendedTopology() throws {
        let t = CPUIDPolicy.table(supported: Self.supported, vcpuID: 5, vcpuCount: 6)
        let b0 = try leaf(t, 0xb, 0), b1 = try leaf(t, 0xb, 1), f0 = try leaf(t, 0x1f, 0)
        #expect(b0.edx == 5 && b1.edx == 5 && f0.edx == 5)
        #expect(b0.ebx == 1)
        #expect(b1.ebx == 6)
        #expect(b0.ecx == 0x100 && b1.ecx == 0x201)     // level type/number untouched
        let other = CPUIDPolicy.table(supported: Self.supported, vcpuID: 2, vcpuCount: 6)
        #expect(try leaf(other, 0xb, 1).edx == 2)
    }

    @Test("MONITOR (5), power (6) and PMU (0xA) leaves are zeroed; leaf 4 reports cores per package")
    func zeroedLeaves() throws {
        let t = CPUIDPolicy.table(supported: Self.supported, vcpuID: 0, vcpuCount: 4)
        for f in [5, 6, 0xa] as [UInt32] {
            let e = try leaf(t, f)
            #expect(e.eax == 0 && e.ebx == 0 && e.ecx == 0 && e.edx == 0, "leaf 0x\(String(f, radix: 16))")
        }
        let l4 = try leaf(t, 4)
        #expect(l4.eax >> 26 == 3)
        #expect(l4.eax & 0x3fff == 0x0121)
        #expect((l4.eax >> 14) & 0xfff == 0)
        #expect(try leaf(CPUIDPolicy.table(supported: Self.supported, vcpuID: 0, vcpuCount: 1), 4).eax >> 26 == 0)
    }

    @Test("leaves the policy does not touch are passed through unchanged, in order")
    func passThrough() throws {
        let t = CPUIDPolicy.table(supported: Self.supported, vcpuID: 1, vcpuCount: 2)
        #expect(t.count == Self.supported.count)
        #expect(zip(t, Self.supported).allSatisfy { $0.function == $1.function && $0.index == $1.index && $0.flags == $1.flags })
        for f in [0, 7, 0xd, 0x4000_0001, 0x8000_0001] as [UInt32] {
            #expect(t.filter { $0.function == f } == Self.supported.filter { $0.function == f })
        }
    }

    @Test("featureWords: the compared registers, keyed leaf.sub.reg, sub-leaf honoured when significant")
    func featureWords() throws {
        let w = CPUIDPolicy.featureWords(Self.supported)
        #expect(w.count == CPUIDPolicy.featureRegisters.count)
        #expect(w["0x1.0.ecx"] == Self.supported[1].ecx)
        #expect(w["0x1.0.edx"] == Self.supported[1].edx)
        #expect(w["0x7.0.ebx"] == 0x219c_95a9)          // sub-leaf 0, not 1
        #expect(w["0x7.0.ecx"] == 0x0040_068c)
        #expect(w["0x7.0.edx"] == 0x10)
        #expect(w["0xd.1.eax"] == 0xf)                  // sub-leaf 1, not 0
        #expect(w["0x80000001.0.ecx"] == 0x75c2_37ff)
        #expect(w["0x80000001.0.edx"] == 0x2fd3_fbff)
        #expect(w["0x40000001.0.eax"] == 0x0100_7afb)

        let partial = CPUIDPolicy.featureWords(Self.supported.filter { $0.function != 7 })
        #expect(partial["0x7.0.ebx"] == nil)
        #expect(partial.count == CPUIDPolicy.featureRegisters.count - 3)
        #expect(CPUIDPolicy.featureWords([]).isEmpty)
    }

    @Test("missing(guest:host:) names each bit the host lacks, sorted by register")
    func missing() {
        let guest: [String: UInt32] = ["0x7.0.ebx": 0b10_0100, "0x1.0.ecx": 1 << 31 | 1, "0xd.1.eax": 0x3]
        let host: [String: UInt32] = ["0x7.0.ebx": 0b10_0000, "0x1.0.ecx": 0xffff_ffff]
        #expect(CPUIDPolicy.missing(guest: guest, host: host) == ["0x7.0.ebx bit 2", "0xd.1.eax bit 0", "0xd.1.eax bit 1"])
        #expect(CPUIDPolicy.missing(guest: guest, host: guest).isEmpty)
        #expect(CPUIDPolicy.missing(guest: [:], host: host).isEmpty)
        #expect(CPUIDPolicy.missing(guest: ["0x1.0.edx": 1 << 31], host: ["0x1.0.edx": 0]) == ["0x1.0.edx bit 31"])
    }

    @Test("deny clears exactly the named bit, in the named sub-leaf")
    func denyGood() throws {
        let t = try CPUIDPolicy.deny(["0x7.0.ebx:5", "1.0.ecx:0", "0x80000001.0.edx:29", "0xd.1.eax:1"], in: Self.supported)
        #expect(try leaf(t, 7, 0).ebx == 0x219c_95a9 & ~UInt32(1 << 5))
        #expect(try leaf(t, 7, 1) == Self.supported[6])          // other sub-leaf untouched
        #expect(try leaf(t, 1).ecx == Self.supported[1].ecx & ~1)
        #expect(try leaf(t, 0x8000_0001).edx == 0x2fd3_fbff & ~UInt32(1 << 29))
        #expect(try leaf(t, 0xd, 1).eax == 0xd)
        #expect(try leaf(t, 0xd, 0) == Self.supported[10])
        #expect(t.count == Self.supported.count)
        #expect(try CPUIDPolicy.deny([], in: Self.supported) == Self.supported)
        #expect(try CPUIDPolicy.deny(["0x99.0.eax:0"], in: Self.supported) == Self.supported)   // absent leaf: no-op

        let words = CPUIDPolicy.featureWords(t)
        #expect(CPUIDPolicy.missing(guest: CPUIDPolicy.featureWords(Self.supported), host: words)
                == ["0x1.0.ecx bit 0", "0x7.0.ebx bit 5", "0x80000001.0.edx bit 29", "0xd.1.eax bit 1"])
    }

    @Test("deny refuses malformed specs, naming the spec")
    func denyMalformed() {
        for spec in ["", "avx2", "0x7.0.ebx", "0x7.0.ebx:", "0x7.0.ebx:32", "0x7.0.ebx:-1", "0x7.0.esx:5",
                     "0x7.ebx:5", "0x7.0.1.ebx:5", "0xzz.0.ebx:5", "0x7.a.ebx:5", "0x7.0.ebx:5:1", "0x7.0.EBX:5"] {
            do {
                _ = try CPUIDPolicy.deny(["0x1.0.ecx:3", spec], in: Self.supported)
                Issue.record("'\(spec)' accepted")
            } catch {
                #expect(error.spec == spec)
                #expect(error.description.contains("'\(spec)'"))
            }
        }
    }

    @Test("against the host's KVM table: topology per vCPU, hypervisor bit, no VMX/MONITOR, zero PMU")
    func hostTable() throws {
        let supported = try Hypervisor().supportedCPUID()
        #expect(supported.contains { $0.function == 0 })
        #expect(supported.contains { $0.function == 1 })
        let count = 4
        for id in 0..<UInt32(count) {
            let t = CPUIDPolicy.table(supported: supported, vcpuID: id, vcpuCount: count)
            let l1 = try leaf(t, 1)
            #expect(l1.ebx >> 24 == id)
            #expect((l1.ebx >> 16) & 0xff == UInt32(count))
            #expect(l1.ecx & (1 << 31) != 0)
            #expect(l1.ecx & (1 << 3 | 1 << 5) == 0)
            for e in t where e.function == 0xb { #expect(e.edx == id) }
            for e in t where e.function == 0xa { #expect(e.eax == 0 && e.ebx == 0 && e.ecx == 0 && e.edx == 0) }
        }
        let policy = CPUIDPolicy.table(supported: supported, vcpuID: 0, vcpuCount: 1)
        let words = CPUIDPolicy.featureWords(policy)
        #expect(words["0x1.0.ecx"] != nil && words["0x1.0.edx"] != nil)
        // The policy only takes features away, apart from the hypervisor bit it adds.
        #expect(CPUIDPolicy.missing(guest: words, host: CPUIDPolicy.featureWords(supported)).allSatisfy { $0 == "0x1.0.ecx bit 31" })
        #expect(CPUIDPolicy.missing(guest: words, host: words).isEmpty)
        let denied = try CPUIDPolicy.deny(["0x1.0.ecx:31"], in: policy)
        #expect(CPUIDPolicy.missing(guest: words, host: CPUIDPolicy.featureWords(denied)) == ["0x1.0.ecx bit 31"])
    }
}
