import Foundation
import Harness

/// The two VMMs a benchmark compares.
public enum Side: String, CaseIterable, Sendable {
    case swiftvmm
    case qemu
}

/// A run failed; the message says why (with the tail of the process output).
public struct BenchError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A side (or a whole scenario) cannot run here; the message says why.
public struct Skip: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One figure of a scenario: its key in the results, how it is labelled and formatted, and
/// which direction is better.
public struct Metric: Sendable {
    public let key: String
    public let label: String
    public let unit: String
    public let better: String
    /// A Python format spec (`{:.1f}`), as results.json has always recorded it.
    public let fmt: String

    public init(_ key: String, _ label: String, _ unit: String, _ better: String, _ fmt: String = "{:.1f}") {
        (self.key, self.label, self.unit, self.better, self.fmt) = (key, label, unit, better, fmt)
    }

    /// `value` formatted with this metric's spec; "–" for none.
    public func format(_ value: Double?) -> String {
        guard let value else { return "–" }
        return PyFormat.apply(fmt, value)
    }

    var json: JSON {
        .object(["key": .string(key), "label": .string(label), "unit": .string(unit),
                 "better": .string(better), "fmt": .string(fmt)])
    }

    /// A metric as `metrics_spec` in results.json describes it.
    init?(json: JSON) {
        guard let key = json["key"]?.string else { return nil }
        self.init(key, json["label"]?.string ?? key, json["unit"]?.string ?? "", json["better"]?.string ?? "lower",
                  json["fmt"]?.string ?? "{:.1f}")
    }
}

/// The few Python formats the results use: `{:.Nf}` for figures, `.3g` for ratios, and
/// Python's `str()` of a parameter value.
public enum PyFormat {
    /// Applies a `{:.Nf}` / `{:.Ng}` spec; anything else prints the number plainly.
    public static func apply(_ spec: String, _ v: Double) -> String {
        let inner = spec.hasPrefix("{:") && spec.hasSuffix("}") ? String(spec.dropFirst(2).dropLast()) : spec
        if inner.hasPrefix("."), let kind = inner.last, "fg".contains(kind), let digits = Int(inner.dropFirst().dropLast()) {
            return String(format: "%.\(digits)\(kind)", v)
        }
        return str(.double(v))
    }

    /// Python's `str()` of a JSON value, for the parameter lists in results.md.
    public static func str(_ v: JSON) -> String {
        switch v {
        case .null: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d):
            if d == d.rounded() && abs(d) < 1e16 { return String(format: "%.1f", d) }
            return "\(d)"
        case .string(let s): return s
        case .array(let a): return "[" + a.map { if case .string(let s) = $0 { return "'\(s)'" }; return str($0) }.joined(separator: ", ") + "]"
        case .object: return v.compact
        }
    }
}

extension Double {
    /// Rounded to `places` decimals (Python's `round(x, places)` for the figures it recorded).
    func rounded(places: Int) -> Double {
        let m = pow(10, Double(places))
        return (self * m).rounded() / m
    }
}
