import KVM

/// The one place that decides what CPUID a guest sees: KVM's supported table, filtered to what
/// swiftvmm emulates, with per-vCPU topology filled in. Migration compares `featureWords`.
public enum CPUIDPolicy {
    /// Feature registers compared between hosts: (leaf, subleaf, register name).
    public static let featureRegisters: [(leaf: UInt32, index: UInt32, reg: String)] = [
        (1, 0, "ecx"), (1, 0, "edx"), (7, 0, "ebx"), (7, 0, "ecx"), (7, 0, "edx"),
        (0xd, 1, "eax"), (0x8000_0001, 0, "ecx"), (0x8000_0001, 0, "edx"), (0x4000_0001, 0, "eax"),
    ]

    /// The key of a feature register in feature words and model files ("0x7.0.ebx").
    public static func featureKey(_ leaf: UInt32, _ index: UInt32, _ reg: String) -> String {
        "0x" + String(leaf, radix: 16) + "." + String(index) + "." + reg
    }

    /// Every feature register's key, in `featureRegisters` order.
    public static var featureKeys: [String] { featureRegisters.map { featureKey($0.leaf, $0.index, $0.reg) } }

    /// Bits in leaf 1 ECX the VMM does not emulate or must not advertise.
    static let leaf1ECXClear: UInt32 = (1 << 3)   // MONITOR/MWAIT
        | (1 << 5)                                  // VMX (no nested virtualisation)
        | (1 << 15)                                 // PDCM (no perf capabilities MSR)
    static let leaf1ECXSet: UInt32 = 1 << 31        // running under a hypervisor

    /// The table vCPU `vcpuID` of `vcpuCount` gets, from KVM's supported table.
    public static func table(supported: [CPUIDEntry], vcpuID: UInt32, vcpuCount: Int) -> [CPUIDEntry] {
        var out: [CPUIDEntry] = []
        for var e in supported {
            switch e.function {
            case 1:
                e.ecx = (e.ecx & ~leaf1ECXClear) | leaf1ECXSet
                // EBX: APIC ID [31:24], logical processors [23:16], CLFLUSH size [15:8].
                e.ebx = (vcpuID << 24) | (UInt32(min(vcpuCount, 255)) << 16) | (e.ebx & 0xffff)
                if vcpuCount > 1 { e.edx |= 1 << 28 } else { e.edx &= ~(1 << 28) }
            case 4:
                // Cache topology: cores per package - 1 in [31:26]; threads sharing in [25:14].
                e.eax = (e.eax & 0x3fff) | (UInt32(max(vcpuCount - 1, 0) & 0x3f) << 26)
            case 5, 6, 0xa:
                // MONITOR/MWAIT, thermal/power and PMU leaves: nothing emulated.
                e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0
            case 0xb, 0x1f:
                // Extended topology: x2APIC ID in EDX for every sub-leaf.
                e.edx = vcpuID
                if e.index == 0 { e.ebx = 1 } else if e.index == 1 { e.ebx = UInt32(vcpuCount) }
            default: break
            }
            out.append(e)
        }
        return out
    }

    /// The feature bits of `table` that migration compares, keyed "leaf.sub.reg".
    public static func featureWords(_ table: [CPUIDEntry]) -> [String: UInt32] {
        var out: [String: UInt32] = [:]
        for (leaf, index, reg) in featureRegisters {
            guard let e = table.first(where: { $0.function == leaf && (!$0.indexSignificant || $0.index == index) })
            else { continue }
            let key = featureKey(leaf, index, reg)
            switch reg {
            case "eax": out[key] = e.eax
            case "ebx": out[key] = e.ebx
            case "ecx": out[key] = e.ecx
            default: out[key] = e.edx
            }
        }
        return out
    }

    /// Features the guest saw (`guest`) that `host` cannot provide, as readable names.
    public static func missing(guest: [String: UInt32], host: [String: UInt32]) -> [String] {
        var out: [String] = []
        for (key, bits) in guest.sorted(by: { $0.key < $1.key }) {
            let have = host[key] ?? 0
            let lacking = bits & ~have
            guard lacking != 0 else { continue }
            for bit in 0..<32 where lacking & (1 << UInt32(bit)) != 0 {
                out.append("\(key) bit \(bit)")
            }
        }
        return out
    }

    /// Removes feature bits named "leaf.sub.reg:bit" (e.g. "0x7.0.ebx:5" for AVX2) from a table —
    /// how a user restricts what a host offers, as QEMU's `-cpu host,-avx2`.
    public static func deny(_ specs: [String], in table: [CPUIDEntry]) throws(CPUIDSpecError) -> [CPUIDEntry] {
        var t = table
        for spec in specs {
            let parts = spec.split(separator: ":")
            let head = parts.first.map { $0.split(separator: ".") } ?? []
            guard parts.count == 2, head.count == 3, let bit = UInt32(parts[1]), bit < 32,
                  let leaf = UInt32(head[0].replacingOccurrences(of: "0x", with: ""), radix: 16),
                  let sub = UInt32(head[1]), ["eax", "ebx", "ecx", "edx"].contains(String(head[2]))
            else { throw CPUIDSpecError(spec: spec) }
            let mask = ~(UInt32(1) << bit)
            for i in t.indices where t[i].function == leaf && (!t[i].indexSignificant || t[i].index == sub) {
                switch head[2] {
                case "eax": t[i].eax &= mask
                case "ebx": t[i].ebx &= mask
                case "ecx": t[i].ecx &= mask
                default: t[i].edx &= mask
                }
            }
        }
        return t
    }
}

public struct CPUIDSpecError: Error, CustomStringConvertible {
    public let spec: String
    public var description: String { "bad CPUID feature '\(spec)': expected LEAF.SUBLEAF.REG:BIT, e.g. 0x7.0.ebx:5" }
}
