/// The x86-64 psABI levels as CPU models (`CPUModel.named`), and the names of the bits they use.
extension CPUModel {
    /// One feature bit: register key ("0x1.0.ecx"), bit, name.
    typealias Bit = (reg: String, bit: UInt32, name: String)

    /// The AMD64 baseline, with what KVM provides on every host.
    static let v1Bits: [Bit] = [
        ("0x1.0.edx", 0, "fpu"), ("0x1.0.edx", 1, "vme"), ("0x1.0.edx", 2, "de"), ("0x1.0.edx", 3, "pse"),
        ("0x1.0.edx", 4, "tsc"), ("0x1.0.edx", 5, "msr"), ("0x1.0.edx", 6, "pae"), ("0x1.0.edx", 7, "mce"),
        ("0x1.0.edx", 8, "cx8"), ("0x1.0.edx", 9, "apic"), ("0x1.0.edx", 11, "sep"), ("0x1.0.edx", 12, "mtrr"),
        ("0x1.0.edx", 13, "pge"), ("0x1.0.edx", 14, "mca"), ("0x1.0.edx", 15, "cmov"), ("0x1.0.edx", 16, "pat"),
        ("0x1.0.edx", 17, "pse36"), ("0x1.0.edx", 19, "clflush"), ("0x1.0.edx", 23, "mmx"), ("0x1.0.edx", 24, "fxsr"),
        ("0x1.0.edx", 25, "sse"), ("0x1.0.edx", 26, "sse2"),
        ("0x1.0.ecx", 21, "x2apic"),
        ("0x80000001.0.edx", 11, "syscall"), ("0x80000001.0.edx", 20, "nx"), ("0x80000001.0.edx", 29, "lm"),
        ("0x40000001.0.eax", 0, "kvmclock"), ("0x40000001.0.eax", 1, "kvm-nopiodelay"),
        ("0x40000001.0.eax", 3, "kvmclock2"), ("0x40000001.0.eax", 24, "kvmclock-stable-bit"),
    ]

    static let v2Bits: [Bit] = [
        ("0x1.0.ecx", 0, "sse3"), ("0x1.0.ecx", 9, "ssse3"), ("0x1.0.ecx", 13, "cx16"),
        ("0x1.0.ecx", 19, "sse4_1"), ("0x1.0.ecx", 20, "sse4_2"), ("0x1.0.ecx", 23, "popcnt"),
        ("0x80000001.0.ecx", 0, "lahf_lm"),
    ]

    static let v3Bits: [Bit] = [
        ("0x1.0.ecx", 12, "fma"), ("0x1.0.ecx", 22, "movbe"), ("0x1.0.ecx", 26, "xsave"), ("0x1.0.ecx", 27, "osxsave"),
        ("0x1.0.ecx", 28, "avx"), ("0x1.0.ecx", 29, "f16c"),
        ("0x7.0.ebx", 3, "bmi1"), ("0x7.0.ebx", 5, "avx2"), ("0x7.0.ebx", 8, "bmi2"),
        ("0x80000001.0.ecx", 5, "abm"),
    ]

    static let v4Bits: [Bit] = [
        ("0x7.0.ebx", 16, "avx512f"), ("0x7.0.ebx", 17, "avx512dq"), ("0x7.0.ebx", 28, "avx512cd"),
        ("0x7.0.ebx", 30, "avx512bw"), ("0x7.0.ebx", 31, "avx512vl"),
    ]

    /// psABI level `n` (1…4).
    static func level(_ n: Int, _ name: String) -> CPUModel {
        var bits = v1Bits
        if n >= 2 { bits += v2Bits }
        if n >= 3 { bits += v3Bits }
        if n >= 4 { bits += v4Bits }
        var features = Dictionary(uniqueKeysWithValues: CPUIDPolicy.featureKeys.map { ($0, UInt32(0)) })
        for b in bits { features[b.reg, default: 0] |= 1 << b.bit }
        let xcr0: UInt64 = n >= 4 ? 0xe7 : n == 3 ? 0x7 : 0
        return CPUModel(name: name, features: features, xcr0: xcr0, maxBasicLeaf: 0xd, maxExtendedLeaf: 0x8000_0008)
    }
}

/// Readable names for feature bits in messages ("sse4_2 (0x1.0.ecx bit 20)").
enum CPUFeatureNames {
    static let byKey: [String: String] = {
        var out: [String: String] = [:]
        for b in CPUModel.v1Bits + CPUModel.v2Bits + CPUModel.v3Bits + CPUModel.v4Bits { out["\(b.reg) bit \(b.bit)"] = b.name }
        return out
    }()

    /// `spec` as `CPUIDPolicy.missing` writes it, with the feature's name when known.
    static func describe(_ spec: String) -> String {
        byKey[spec].map { "\($0) (\(spec))" } ?? spec
    }
}
