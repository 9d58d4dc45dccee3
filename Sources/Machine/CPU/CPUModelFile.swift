import Foundation
import KVM

/// CPU models as JSON: what `swiftvmm cpu-features --json` prints, `cpu-baseline` combines and
/// `--cpu-model FILE` reads.
///
///     {"model": "NAME", "xcr0": 7, "max-basic-leaf": 13, "max-extended-leaf": 2147483656,
///      "features": {"0x1.0.ecx": 2155880963, "0x1.0.edx": …, …}}
extension CPUModel {
    /// What this host offers (KVM's supported table through swiftvmm's policy), as a model.
    public static func hostOffer(kvmDevice: String = "/dev/kvm", name: String = "host") throws(VMError) -> CPUModel {
        let table = try HostCPU.offer(kvmDevice: kvmDevice, deny: [], vcpuCount: 1)
        var features = CPUIDPolicy.featureWords(table)
        for key in CPUIDPolicy.featureKeys where features[key] == nil { features[key] = 0 }
        // Set by swiftvmm's policy on every host, never "offered" by KVM.
        features["0x1.0.ecx"]? &= ~(CPUIDPolicy.leaf1ECXSet | 1 << 27)
        features["0x1.0.edx"]? &= ~(1 << 28)
        let basic = table.first { $0.function == 0 }?.eax ?? 0
        let ext = table.first { $0.function == 0x8000_0000 }?.eax ?? 0x8000_0000
        return CPUModel(name: name, features: features, xcr0: xcr0(of: table), maxBasicLeaf: basic, maxExtendedLeaf: ext)
    }

    /// The largest model every one of `models` offers (libvirt's cpu-baseline).
    public static func baseline(_ models: [CPUModel], name: String = "baseline") -> CPUModel? {
        guard var out = models.first(where: { !$0.isHost }) else { return nil }
        out.name = name
        for m in models where !m.isHost {
            for (key, bits) in out.features ?? [:] { out.features?[key] = bits & (m.features?[key] ?? 0) }
            out.xcr0 &= m.xcr0
            out.maxBasicLeaf = min(out.maxBasicLeaf, m.maxBasicLeaf)
            out.maxExtendedLeaf = min(out.maxExtendedLeaf, m.maxExtendedLeaf)
        }
        // XSAVE without x87 and SSE state is not a valid combination; AVX-512 needs all three parts.
        if out.xcr0 & 3 != 3 { out.xcr0 = 0 }
        if out.xcr0 & 0xe0 != 0xe0 { out.xcr0 &= ~0xe0 }
        if out.xcr0 == 0 { out.features?["0x1.0.ecx"]? &= ~(1 << 26 | 1 << 28 | 1 << 29 | 1 << 12) }
        return out
    }

    public var json: String {
        var obj: [String: Any] = ["model": name, "xcr0": xcr0, "max-basic-leaf": maxBasicLeaf, "max-extended-leaf": maxExtendedLeaf]
        if let features { obj["features"] = features }
        guard let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .prettyPrinted]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    /// A model from its JSON (`json`), every field checked.
    public init(json data: Data, source: String) throws(VMError) {
        func bad(_ why: String) -> VMError { .config("CPU model \(source): \(why)") }
        guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { throw bad("not a JSON object") }
        guard let name = obj["model"] as? String, !name.isEmpty, name.count <= 64 else { throw bad("no \"model\" name") }
        guard let f = obj["features"] as? [String: Any] else { throw bad("no \"features\" object") }
        let known = Set(CPUIDPolicy.featureKeys)
        var features: [String: UInt32] = [:]
        for (key, value) in f {
            guard known.contains(key) else { throw bad("unknown feature register \"\(key)\"") }
            guard let n = value as? NSNumber, let v = UInt32(exactly: n.uint64Value), n.int64Value >= 0 else { throw bad("\(key) is not a 32-bit value") }
            features[key] = v
        }
        func number(_ key: String) throws(VMError) -> UInt64 {
            guard let n = obj[key] as? NSNumber, n.int64Value >= 0 else { throw bad("no \"\(key)\" number") }
            return n.uint64Value
        }
        let basic = try number("max-basic-leaf"), ext = try number("max-extended-leaf")
        guard basic <= 0x3fff_ffff, (0x8000_0000...0x8fff_ffff).contains(ext) else { throw bad("leaf maxima out of range") }
        self.init(name: name, features: features, xcr0: try number("xcr0"), maxBasicLeaf: UInt32(basic), maxExtendedLeaf: UInt32(ext))
    }

    /// `--cpu-model VALUE`: a model's name, or a file holding one.
    public static func parse(_ value: String) throws(VMError) -> CPUModel {
        if let m = named(value) { return m }
        guard FileManager.default.fileExists(atPath: value) else {
            throw .config("--cpu-model \(value): not a model (\(names.joined(separator: ", "))) nor a file")
        }
        guard let data = FileManager.default.contents(atPath: value) else { throw .config("--cpu-model \(value): cannot read the file") }
        return try CPUModel(json: data, source: value)
    }
}
