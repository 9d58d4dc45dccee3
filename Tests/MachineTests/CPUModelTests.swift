import Foundation
import KVM
import Testing
@testable import Machine

@Suite("CPU models: psABI levels, leaves and XSAVE cut to the model, files, baselines")
struct CPUModelTests {
    static let significant: UInt32 = 1

    /// A made-up host offering everything up to AVX-512, with leaves past the models' maxima.
    static let rich: [CPUIDEntry] = [
        CPUIDEntry(function: 0, eax: 0x1f, ebx: 0x6874_7541),
        CPUIDEntry(function: 1, eax: 0x000a_0f11, ebx: 0x0010_0800, ecx: 0xffff_ffff & ~(1 << 27 | 1 << 31), edx: 0x178b_fbff),
        CPUIDEntry(function: 7, index: 0, flags: significant, eax: 1, ebx: 0xffff_ffff, ecx: 0xffff_ffff, edx: 0xffff_ffff),
        CPUIDEntry(function: 7, index: 1, flags: significant, eax: 0x30),
        CPUIDEntry(function: 0xd, index: 0, flags: significant, eax: 0x2e7, ebx: 0xa88, ecx: 0xa88),
        CPUIDEntry(function: 0xd, index: 1, flags: significant, eax: 0xf),
        CPUIDEntry(function: 0xd, index: 2, flags: significant, eax: 256, ebx: 576),
        CPUIDEntry(function: 0xd, index: 5, flags: significant, eax: 64, ebx: 1088),
        CPUIDEntry(function: 0xd, index: 6, flags: significant, eax: 512, ebx: 1152),
        CPUIDEntry(function: 0xd, index: 7, flags: significant, eax: 1024, ebx: 1664),
        CPUIDEntry(function: 0xd, index: 9, flags: significant, eax: 8, ebx: 2688),
        CPUIDEntry(function: 0x14, eax: 1),
        CPUIDEntry(function: 0x4000_0001, eax: 0x0100_7afb),
        CPUIDEntry(function: 0x8000_0000, eax: 0x8000_0021),
        CPUIDEntry(function: 0x8000_0001, ecx: 0xffff_ffff, edx: 0xffff_ffff),
        CPUIDEntry(function: 0x8000_0008, eax: 0x3030, ebx: 0xffff_ffff),
        CPUIDEntry(function: 0x8000_001f, eax: 0xf),
    ]

    func leaf(_ t: [CPUIDEntry], _ f: UInt32, _ i: UInt32 = 0) -> CPUIDEntry? { t.first { $0.function == f && $0.index == i } }

    @Test("each level shows exactly its bits, whatever more the host offers", arguments: [1, 2, 3, 4])
    func levelShowsItsBits(level: Int) throws {
        let model = try #require(CPUModel.named("x86-64-v\(level)"))
        let t = try model.apply(to: Self.rich)
        let words = CPUIDPolicy.featureWords(t)
        for (key, bits) in model.features ?? [:] { #expect(words[key] == bits, "\(key)") }
        let ecx = try #require(leaf(t, 1)).ecx
        #expect((ecx & 1 != 0) == (level >= 2), "sse3")
        #expect((ecx & (1 << 28) != 0) == (level >= 3), "avx")
        #expect((try #require(leaf(t, 7)).ebx & (1 << 16) != 0) == (level >= 4), "avx512f")
    }

    @Test("leaves past the model's maxima are dropped, leaf 7 has no sub-leaf 1, speculation bits hidden")
    func leavesCut() throws {
        let t = try CPUModel.named("generic").map { try $0.apply(to: Self.rich) } ?? []
        #expect(leaf(t, 0)?.eax == 0xd)
        #expect(leaf(t, 0x14) == nil)
        #expect(leaf(t, 0x8000_001f) == nil)
        #expect(leaf(t, 0x8000_0000)?.eax == 0x8000_0008)
        #expect(leaf(t, 7)?.eax == 0)
        #expect(leaf(t, 7, 1).map { $0.eax | $0.ebx | $0.ecx | $0.edx } == 0)
        #expect(leaf(t, 0x8000_0008)?.ebx == 0)
        #expect(leaf(t, 0x8000_0008)?.eax == 0x3030)
    }

    @Test("XSAVE: hidden without it; v3 offers x87/SSE/AVX in 832 bytes, v4 adds the AVX-512 state")
    func xsaveLeaf() throws {
        let v1 = try #require(CPUModel.named("x86-64-v1")).apply(to: Self.rich)
        #expect(v1.filter { $0.function == 0xd }.allSatisfy { $0.eax | $0.ebx | $0.ecx | $0.edx == 0 })
        let v3 = try #require(CPUModel.named("x86-64-v3")).apply(to: Self.rich)
        #expect(leaf(v3, 0xd)?.eax == 7 && leaf(v3, 0xd)?.ecx == 832)
        #expect(leaf(v3, 0xd, 1)?.eax == 0)
        #expect(leaf(v3, 0xd, 5)?.eax == 0 && leaf(v3, 0xd, 9)?.eax == 0)
        #expect(leaf(v3, 0xd, 2)?.eax == 256)
        let v4 = try #require(CPUModel.named("x86-64-v4")).apply(to: Self.rich)
        #expect(leaf(v4, 0xd)?.eax == 0xe7 && leaf(v4, 0xd)?.ecx == 2688)
    }

    @Test("a host without a model's features refuses it, naming each one")
    func missingFeaturesNamed() throws {
        var poor = Self.rich
        poor[1].ecx &= ~(1 << 20 | 1 << 23)   // no SSE4.2, no POPCNT
        #expect(throws: CPUModelError.self) { _ = try CPUModel.named("x86-64-v2")?.apply(to: poor) }
        do { _ = try CPUModel.named("x86-64-v2")?.apply(to: poor) } catch {
            #expect(error.missing == ["sse4_2 (0x1.0.ecx bit 20)", "popcnt (0x1.0.ecx bit 23)"])
        }
        #expect((try? CPUModel.named("x86-64-v1")?.apply(to: poor)) != nil)
        poor[4].eax = 3                        // XSAVE offers x87 and SSE only
        #expect(throws: CPUModelError.self) { _ = try CPUModel.named("x86-64-v3")?.apply(to: poor) }
    }

    @Test("a model survives its JSON; malformed files are refused naming the file")
    func jsonRoundTrip() throws {
        let m = try #require(CPUModel.named("x86-64-v3"))
        #expect(try CPUModel(json: Data(m.json.utf8), source: "m.json") == m)
        for bad in ["[]", "{\"model\":\"x\"}", "{\"model\":\"x\",\"features\":{\"0x99.0.eax\":1},\"xcr0\":0,\"max-basic-leaf\":1,\"max-extended-leaf\":2147483656}",
                    "{\"model\":\"x\",\"features\":{\"0x1.0.ecx\":-1},\"xcr0\":0,\"max-basic-leaf\":1,\"max-extended-leaf\":2147483656}",
                    "{\"model\":\"x\",\"features\":{},\"xcr0\":0,\"max-basic-leaf\":1,\"max-extended-leaf\":5}"] {
            #expect(throws: VMError.self, "\(bad)") { _ = try CPUModel(json: Data(bad.utf8), source: "bad.json") }
        }
    }

    @Test("the baseline of two hosts has only what both offer")
    func baselineIntersects() throws {
        let a = try #require(CPUModel.named("x86-64-v4")), b = try #require(CPUModel.named("x86-64-v2"))
        let base = try #require(CPUModel.baseline([a, b]))
        #expect(base.features == b.features && base.xcr0 == 0)
        #expect(CPUModel.baseline([a, try #require(CPUModel.named("x86-64-v3"))])?.xcr0 == 7)
    }

    @Test("a machine with the generic model shows no more than the AMD64 baseline and keeps only portable MSRs")
    func genericMachine() throws {
        var config = VMConfig(name: "model", memorySize: 32 << 20)
        config.cpuModel = try #require(CPUModel.named("generic"))
        let vm = try VM(config: config)
        defer { vm.tearDown(StopReason.signal(15)) }
        let t = try #require(vm.cpuid.first)
        #expect(leaf(t, 1).map { $0.ecx & 1 } == 0)
        #expect(leaf(t, 0xd).map { $0.eax } ?? 0 == 0)
        let state = try vm.cpus[0].saveState()
        #expect(!state.msrs.isEmpty)
        #expect(state.msrs.allSatisfy { PortableMSRs.contains($0.index) })
    }
}

@Suite("TSC rates")
struct TSCRateUnitTests {
    @Test("rates agree within 250 ppm, either way round")
    func tolerance() {
        #expect(TSCRate.agree(2_445_406, 2_445_406))
        #expect(TSCRate.agree(2_445_406, 2_445_406 + 611))
        #expect(TSCRate.agree(2_445_406 + 611, 2_445_406))
        #expect(!TSCRate.agree(2_445_406, 2_445_406 + 700))
        #expect(!TSCRate.agree(1_000_000, 2_000_000))
        #expect(TSCRate.format(2_445_406) == "2445.406 MHz")
    }
}
