import Foundation
import Harness

/// The `--smoke` verdict on a results.json: it asserts nothing about speed, but every scenario
/// that was meant to run must have produced real figures.
public enum SmokeCheck {
    public struct Verdict: Sendable {
        /// What makes the smoke check fail; empty when it passes.
        public var problems: [String] = []
        /// What a reader must see even when it passes (a QEMU column that could not run).
        public var warnings: [String] = []
        public var passed: Bool { problems.isEmpty }
    }

    /// Checks `results` for the scenarios in `expected` (those the mode was to run).
    /// - swiftvmm column (unless `--side qemu`): every figure of the scenario present; an error,
    ///   a skip, a missing figure or any failed run is a problem.
    /// - QEMU column (unless `--side swiftvmm`): every figure present, unless `qemuUnavailable`
    ///   says why QEMU could not be had (then a warning); a failed run among good ones is a warning.
    /// - A scenario marked `swiftvmm_only` in its parameters may skip its QEMU column (a warning).
    /// - A scenario skipped as a whole, or missing, is a problem.
    public static func validate(_ results: JSON, expected: [String], qemuUnavailable: String? = nil,
                                sides: BenchOptions.Sides = .both) -> Verdict {
        var v = Verdict()
        guard let scenarios = results["scenarios"]?.object else {
            v.problems.append("results have no scenarios")
            return v
        }
        for name in expected {
            guard let sc = scenarios[name] else { v.problems.append("\(name): missing"); continue }
            if let why = sc["skipped"] {
                v.problems.append("\(name): skipped: \(PyFormat.str(why))")
                continue
            }
            let metrics = sc["metrics_spec"]?.array?.compactMap(Metric.init(json:)) ?? Report.metrics(name, sc)
            if metrics.isEmpty { v.problems.append("\(name): no metrics_spec") }
            if sides != .qemu {
                v.problems += check(name, "swiftvmm", sc["swiftvmm"], metrics, failedRunsAreProblems: true).problems
            }
            if sides != .swiftvmm {
                if sc["params"]?["swiftvmm_only"] != nil, sc["qemu"]?["skipped"] != nil {
                    v.warnings.append("\(name): swiftvmm only, no QEMU column")
                } else if let why = qemuUnavailable {
                    if sc["qemu"]?["skipped"] != nil {
                        v.warnings.append("\(name): QEMU column skipped: \(why)")
                    } else {
                        v.problems.append("\(name): QEMU was unavailable (\(why)) yet its column is not a skip")
                    }
                } else {
                    let c = check(name, "QEMU", sc["qemu"], metrics, failedRunsAreProblems: false)
                    v.problems += c.problems
                    v.warnings += c.warnings
                }
            }
        }
        return v
    }

    private static func check(_ name: String, _ label: String, _ column: JSON?, _ metrics: [Metric],
                              failedRunsAreProblems: Bool) -> Verdict {
        var v = Verdict()
        guard let column, column.object != nil else {
            v.problems.append("\(name): no \(label) column")
            return v
        }
        if let why = column["skipped"] {
            v.problems.append("\(name): \(label) skipped: \(PyFormat.str(why))")
            return v
        }
        if let e = column["error"] {
            v.problems.append("\(name): \(label) failed: \(PyFormat.str(e).prefix(600))")
            return v
        }
        let missing = metrics.filter { column["metrics"]?[$0.key]?["median"]?.double == nil }.map(\.key)
        if !missing.isEmpty {
            v.problems.append("\(name): \(label) has no figure for \(missing.joined(separator: ", "))")
        }
        if let f = column["failures"]?.array, let first = f.first {
            let line = "\(name): \(f.count) of \(column["runs"]?.array?.count ?? 0) \(label) runs failed, first: \(PyFormat.str(first).prefix(400))"
            if failedRunsAreProblems { v.problems.append(line) } else { v.warnings.append(line) }
        }
        return v
    }
}
