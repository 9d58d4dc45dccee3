import Foundation
import Harness

/// Figures over runs: median, min–max, and the ratio of the two VMMs' medians.
public enum Summary {
    /// `{median, min, max, n, values}` of the numbers among `values`; nil when there are none.
    public static func summarize(_ values: [JSON]) -> JSON? {
        let present = values.filter { $0.double != nil }
        let v = present.compactMap(\.double)
        guard !v.isEmpty else { return nil }
        let s = v.sorted()
        let median = s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
        // Keep integers integral, as Python's statistics.median does for an odd count.
        let medianJSON: JSON = s.count % 2 == 1 ? present.first { $0.double == median } ?? .double(median) : .double(median)
        let minJSON = present.first { $0.double == s.first } ?? .null, maxJSON = present.first { $0.double == s.last } ?? .null
        return .object(["median": medianJSON, "min": minJSON, "max": maxJSON, "n": .int(v.count), "values": .array(present)])
    }

    /// A side's column: every run, the figures over the successful ones, and the failures.
    /// Runs that did not converge count only for `converged`.
    public static func side(_ metrics: [Metric], runs: [JSONObject]) -> JSONObject {
        let ok = runs.filter { $0["error"] == nil }
        var out: JSONObject = ["runs": .array(runs.map { .object($0) })]
        var figures = JSONObject()
        for m in metrics {
            let values: [JSON]
            if m.key == "converged" {
                values = ok.compactMap { $0["converged"] }.filter { !$0.isNull }
            } else {
                values = ok.filter { ($0["converged"]?.double ?? 1) == 1 }.map { $0[m.key] ?? .null }
            }
            if let s = summarize(values) { figures[m.key] = s }
        }
        out["metrics"] = .object(figures)
        let errors = runs.compactMap { $0["error"] }
        if !errors.isEmpty { out["failures"] = .array(errors) }
        if figures.isEmpty { out["error"] = errors.first ?? .string("no successful run") }
        return out
    }

    /// swiftvmm median / QEMU median for every figure both columns have (and QEMU's is not 0).
    public static func ratios(_ metrics: [Metric], swift s: JSON, qemu q: JSON) -> JSONObject {
        var r = JSONObject()
        for m in metrics {
            guard let a = s["metrics"]?[m.key]?["median"]?.double, let b = q["metrics"]?[m.key]?["median"]?.double, b != 0 else { continue }
            r[m.key] = .double(a / b)
        }
        return r
    }
}

/// results.md: the table BENCHMARKS.md shows, the skips and failures, the scenario notes.
public enum Report {
    static func cell(_ m: Metric, _ side: JSON) -> String {
        if side["skipped"] != nil { return "skipped" }
        guard let s = side["metrics"]?[m.key], let median = s["median"]?.double else {
            return side["error"] != nil ? "failed" : "–"
        }
        if s["n"]?.int == 1 { return m.format(median) }
        return "\(m.format(median)) (\(m.format(s["min"]?.double))–\(m.format(s["max"]?.double)))"
    }

    /// The metrics of the scenario `name`: from the code, else from the file's `metrics_spec`.
    static func metrics(_ name: String, _ scenario: JSON) -> [Metric] {
        if let s = allScenarios.first(where: { $0.name == name }) { return s.metrics }
        return scenario["metrics_spec"]?.array?.compactMap(Metric.init(json:)) ?? []
    }

    public static func markdown(_ results: JSON) -> String {
        var L: [String] = []
        let machine = results["machine"] ?? .null
        L.append("Run \(results["date"]?.string ?? "?") on \(machine["description"]?.string ?? "?"); mode `\(results["mode"]?.string ?? "?")`, "
                 + "\(results["runs"].map(PyFormat.str) ?? "?") runs per side, swiftvmm and QEMU alternated. Cells: median (min–max). "
                 + "Ratio = swiftvmm median / QEMU median (below 1 is better for swiftvmm where lower is better).")
        if let b = machine["swiftvmm_binary"], let path = b["path"]?.string {
            let root = Paths.root.path
            let shown = path.hasPrefix(root) ? relativePath(path, to: root) : path
            let load = (machine["loadavg_at_start"]?.array ?? []).compactMap(\.double).map { String(format: "%.1f", $0) }
            L.append("")
            L.append("swiftvmm: `\(shown)` built \(b["mtime"]?.string ?? "?"); source tree at git \(machine["git_rev"]?.string ?? "?")"
                     + "\(machine["sources_modified"]?.bool == true ? " with uncommitted changes under Sources/" : ""). "
                     + "\(machine["qemu_version"]?.string ?? ""). Load average at start: \(load.joined(separator: ", ")).")
        }
        L.append("")
        L.append("| scenario | figure | unit | better | swiftvmm | QEMU 7.2 | ratio |")
        L.append("|---|---|---|---|---|---|---|")
        var notes: [String] = []
        let scenarios = results["scenarios"]?.object ?? JSONObject()
        for (name, sc) in scenarios {
            if let why = sc["skipped"] {
                L.append("| \(name) | *whole scenario skipped (below)* | | | skipped | skipped | |")
                notes.append("**\(name)** skipped: \(PyFormat.str(why))")
                continue
            }
            let s = sc["swiftvmm"] ?? .null, q = sc["qemu"] ?? .null
            for m in metrics(name, sc) {
                let r = sc["ratio"]?[m.key]?.double.map { String(format: "%.3g", $0) } ?? ""
                L.append("| \(name) | \(m.label) | \(m.unit) | \(m.better) | \(cell(m, s)) | \(cell(m, q)) | \(r) |")
            }
            for (label, side) in [("swiftvmm", s), ("QEMU", q)] {
                if let why = side["skipped"] {
                    notes.append("**\(name)** (\(label)) skipped: \(PyFormat.str(why))")
                } else if let e = side["error"] {
                    notes.append("**\(name)** (\(label)) failed: \(PyFormat.str(e).prefix(500))")
                } else if let f = side["failures"]?.array, let first = f.first {
                    notes.append("**\(name)** (\(label)): \(f.count) of \(side["runs"]?.array?.count ?? 0) runs failed, "
                                 + "first: \(PyFormat.str(first).prefix(400))")
                }
            }
        }
        L.append("")
        if !notes.isEmpty {
            L.append("Skips and failures in this run:")
            L.append("")
            for n in notes { L.append("- \(n)") }
            L.append("")
        }
        return (L + scenarioNotes(scenarios)).joined(separator: "\n") + "\n"
    }

    /// Each scenario's title, parameters and notes (the migration notes once, under migrate-idle).
    static func scenarioNotes(_ scenarios: JSONObject) -> [String] {
        var L = ["Scenario notes:", ""]
        for (name, sc) in scenarios {
            let p = (sc["params"]?.object ?? JSONObject()).map { "\($0.0)=\(PyFormat.str($0.1))" }
            L.append("- **\(name)** — \(sc["title"]?.string ?? ""). Parameters: " + p.joined(separator: ", ") + ".")
            for n in sc["notes"]?.array?.compactMap(\.string) ?? [] {
                if migrationNotes.contains(n) && name != "migrate-idle" { continue }
                L.append("  \(n)")
            }
        }
        return L
    }

    static func relativePath(_ path: String, to root: String) -> String {
        let r = root.hasSuffix("/") ? root : root + "/"
        return path.hasPrefix(r) ? String(path.dropFirst(r.count)) : path
    }
}
