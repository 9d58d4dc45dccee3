/// Parses human sizes: `256M`, `2G`, `512K`, `4096`, `1.5G` (binary units, case-insensitive,
/// an optional trailing `B` or `iB`).
public enum ByteSize {
    public static func parse(_ text: String) -> UInt64? {
        var s = text.trimmingCharacters(in: .whitespaces).uppercased()
        if s.hasSuffix("IB") { s.removeLast(2) } else if s.hasSuffix("B") && s.count > 1 { s.removeLast() }
        guard let last = s.last else { return nil }
        var shift: UInt64 = 0
        switch last {
        case "K": shift = 10
        case "M": shift = 20
        case "G": shift = 30
        case "T": shift = 40
        default: break
        }
        if shift > 0 { s.removeLast() }
        guard !s.isEmpty, s.allSatisfy({ $0.isNumber || $0 == "." }) else { return nil }
        if let whole = UInt64(s) {
            let (v, o) = whole.multipliedReportingOverflow(by: 1 << shift)
            return o ? nil : v
        }
        guard let d = Double(s), d >= 0, d * Double(UInt64(1) << shift) < 1.8e19 else { return nil }
        return UInt64(d * Double(UInt64(1) << shift))
    }

    /// `268435456` → `256 MiB`.
    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(bytes)
        var i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        if i == 0 { return "\(bytes) B" }
        return v == v.rounded() ? "\(Int(v)) \(units[i])" : String(format: "%.1f %@", v, units[i])
    }
}

import Foundation
