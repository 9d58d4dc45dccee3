import Foundation
import KVM

/// A CPU model: the CPUID feature bits, leaves and XSAVE components a guest may see, fixed
/// whatever the host offers beyond them, so that the guest can move to any host that offers
/// the model (QEMU's named models, the LDOM `cpu-arch=generic`). `host` shows everything this
/// host's KVM supports, as before models existed.
///
/// The named models are the x86-64 psABI levels (v1: the AMD64 baseline; v2: + CMPXCHG16B,
/// LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1, SSE4.2; v3: + AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT,
/// MOVBE, XSAVE; v4: + AVX-512 F/BW/CD/DQ/VL), each with what KVM emulates on every host (the
/// hypervisor bit, x2APIC, kvmclock). `generic` is x86-64-v1, the AMD64 baseline: it is what
/// every host swiftvmm has met offers — on the machines it is built and tested on, KVM itself
/// offers no more than v1 on some (no SSE3: KVM_GET_SUPPORTED_CPUID leaf 1 ECX is 0x81202000
/// there) and v3 on others, so a higher level would pin a guest to one kind of machine; and
/// without XSAVE its FPU state is the legacy FXSAVE area, the same on every host. Where all
/// hosts are known to offer more, `cpu-baseline` gives the best model they share.
public struct CPUModel: Sendable, Equatable {
    public var name: String
    /// The bits shown in each feature register (`CPUIDPolicy.featureRegisters` keys); nil for
    /// `host`, which shows all the host offers.
    public var features: [String: UInt32]?
    /// XSAVE components (XCR0 bits) the guest may enable; 0 hides XSAVE.
    public var xcr0: UInt64
    public var maxBasicLeaf: UInt32
    public var maxExtendedLeaf: UInt32

    public var isHost: Bool { features == nil }

    public init(name: String, features: [String: UInt32]?, xcr0: UInt64, maxBasicLeaf: UInt32, maxExtendedLeaf: UInt32) {
        self.name = name; self.features = features; self.xcr0 = xcr0
        self.maxBasicLeaf = maxBasicLeaf; self.maxExtendedLeaf = maxExtendedLeaf
    }

    public static let host = CPUModel(name: "host", features: nil, xcr0: 0, maxBasicLeaf: 0, maxExtendedLeaf: 0)

    /// The model called `name` (`generic` is returned under its own name).
    public static func named(_ name: String) -> CPUModel? {
        switch name {
        case "host": return .host
        case "x86-64-v1": return level(1, name)
        case "x86-64-v2": return level(2, name)
        case "x86-64-v3": return level(3, name)
        case "x86-64-v4": return level(4, name)
        case "generic": return level(1, name)
        default: return nil
        }
    }

    public static let names = ["host", "generic", "x86-64-v1", "x86-64-v2", "x86-64-v3", "x86-64-v4"]

    /// The model a migrated guest was started with, by the name its description carries: the
    /// guest's CPUID table travels with it, so only the name and whether it is `host` (which
    /// MSRs it keeps) matter here; a model file's name stands for a model without features.
    public static func recorded(_ name: String) -> CPUModel {
        named(name) ?? CPUModel(name: name, features: [:], xcr0: 0, maxBasicLeaf: 0, maxExtendedLeaf: 0)
    }

    /// Applies the model to what this host offers (KVM's supported table): the guest's table,
    /// or the features the host lacks, named.
    public func apply(to supported: [CPUIDEntry]) throws(CPUModelError) -> [CPUIDEntry] {
        guard let features else { return supported }
        let offered = CPUIDPolicy.featureWords(supported)
        var lacking = CPUIDPolicy.missing(guest: features.filter { $0.key != "0x1.0.ecx" },
                                          host: offered)
        // OSXSAVE (0x1 ECX bit 27) mirrors the guest's CR4 at run time; it is never "offered".
        let ecx1 = (features["0x1.0.ecx"] ?? 0) & ~(UInt32(1) << 27)
        lacking += CPUIDPolicy.missing(guest: ["0x1.0.ecx": ecx1], host: offered)
        let xsaveOffered = Self.xcr0(of: supported)
        if xcr0 & ~xsaveOffered != 0 { lacking.append("XSAVE components 0x\(String(xcr0 & ~xsaveOffered, radix: 16))") }
        guard lacking.isEmpty else { throw CPUModelError(model: name, missing: lacking.map(CPUFeatureNames.describe)) }
        return shape(supported, features: features)
    }

    /// The host's table cut to the model: feature registers replaced, leaves past the model's
    /// maxima dropped, leaf 0xD rebuilt for the model's XSAVE components.
    private func shape(_ supported: [CPUIDEntry], features: [String: UInt32]) -> [CPUIDEntry] {
        let extMax = min(maxExtendedLeaf, supported.first { $0.function == 0x8000_0000 }?.eax ?? 0x8000_0000)
        var out: [CPUIDEntry] = []
        for var e in supported {
            let f = e.function
            if f < 0x4000_0000 && f > maxBasicLeaf { continue }
            if f >= 0x8000_0000 && f > extMax { continue }
            for (leaf, index, reg) in CPUIDPolicy.featureRegisters where leaf == f && (!e.indexSignificant || e.index == index) {
                e.set(reg, features[CPUIDPolicy.featureKey(leaf, index, reg)] ?? 0)
            }
            switch f {
            case 0: e.eax = min(e.eax, maxBasicLeaf)
            case 7 where e.index == 0: e.eax = 0                          // no sub-leaf 1 and beyond
            case 7: e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0
            case 0xd: e = xsaveLeaf(e, supported)
            case 0x8000_0000: e.eax = extMax
            case 0x8000_0008: e.ebx = 0                                    // speculation-control features
            default: break
            }
            out.append(e)
        }
        return out
    }

    /// Leaf 0xD for the model's XCR0 components: sizes recomputed, other components hidden,
    /// no compacted or supervisor states (XSAVEOPT/XSAVEC/XSAVES hidden).
    private func xsaveLeaf(_ entry: CPUIDEntry, _ supported: [CPUIDEntry]) -> CPUIDEntry {
        var e = entry
        guard xcr0 != 0 else { e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0; return e }
        switch e.index {
        case 0:
            var end: UInt32 = 576
            for bit in 2..<63 where xcr0 & (1 << UInt64(bit)) != 0 {
                if let c = supported.first(where: { $0.function == 0xd && $0.index == UInt32(bit) }) { end = max(end, c.ebx + c.eax) }
            }
            e.eax = UInt32(truncatingIfNeeded: xcr0); e.edx = UInt32(truncatingIfNeeded: xcr0 >> 32)
            e.ebx = end; e.ecx = end
        case 1:
            e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0
        default:
            if e.index >= 63 || xcr0 & (1 << UInt64(e.index)) == 0 { e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0 }
        }
        return e
    }

    /// The XSAVE components a table offers (leaf 0xD sub-leaf 0, EDX:EAX).
    static func xcr0(of table: [CPUIDEntry]) -> UInt64 {
        guard let e = table.first(where: { $0.function == 0xd && $0.index == 0 }) else { return 0 }
        return UInt64(e.edx) << 32 | UInt64(e.eax)
    }
}

/// A host that cannot offer a model, with the features it lacks.
public struct CPUModelError: Error, CustomStringConvertible {
    public let model: String
    public let missing: [String]
    public var description: String {
        "this host cannot offer CPU model \(model): it lacks \(missing.joined(separator: ", "))"
    }
}

extension CPUIDEntry {
    mutating func set(_ reg: String, _ value: UInt32) {
        switch reg {
        case "eax": eax = value
        case "ebx": ebx = value
        case "ecx": ecx = value
        default: edx = value
        }
    }
}
