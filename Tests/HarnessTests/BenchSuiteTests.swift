import BenchSuite
import Foundation
import Harness
import Testing

/// The benchmark suite's bookkeeping, without running a VMM: statistics, results.md, and the
/// smoke check that must be able to fail.
@Suite("benchmark results and the smoke check")
struct BenchSuiteTests {
    static let startupSpec: JSON = .array([
        .object(["key": .string("first_byte_ms"), "label": .string("process start → first serial byte"), "unit": .string("ms"),
                 "better": .string("lower"), "fmt": .string("{:.1f}")]),
        .object(["key": .string("wall_ms"), "label": .string("whole hello.elf run (start → exit)"), "unit": .string("ms"),
                 "better": .string("lower"), "fmt": .string("{:.1f}")]),
    ])

    static func figures(_ a: Double, _ b: Double) -> JSON {
        let metrics = [Metric("first_byte_ms", "", "ms", "lower"), Metric("wall_ms", "", "ms", "lower")]
        let runs: [JSONObject] = [["first_byte_ms": .double(a), "wall_ms": .double(b)],
                                  ["first_byte_ms": .double(a + 2), "wall_ms": .double(b + 1)],
                                  ["first_byte_ms": .double(a + 1), "wall_ms": .double(b + 3)]]
        return .object(Summary.side(metrics, runs: runs))
    }

    static func results(swiftvmm: JSON, qemu: JSON) -> JSON {
        .object(["schema": .int(1), "date": .string("2026-12-02T12:00:00+00:00"), "mode": .string("quick"), "runs": .int(3),
                 "machine": .object(["description": .string("test machine")]),
                 "scenarios": .object(["startup": .object([
                     "title": .string("Start-up"), "extra": .bool(false), "params": .object(["memory": .string("256M")]),
                     "notes": .array([]), "metrics_spec": startupSpec, "swiftvmm": swiftvmm, "qemu": qemu])])])
    }

    @Test("a swiftvmm column that reports an error fails the smoke check, naming the reason")
    func errorColumnFails() {
        let failed = JSON.object(Summary.side([Metric("first_byte_ms", "", "ms", "lower")],
                                              runs: [["error": .string("swiftvmm exited with status 2: bad kernel")]]))
        #expect(failed["error"]?.string == "swiftvmm exited with status 2: bad kernel")
        let verdict = SmokeCheck.validate(Self.results(swiftvmm: failed, qemu: Self.figures(30, 60)), expected: ["startup"])
        #expect(!verdict.passed)
        #expect(verdict.problems.contains { $0.contains("startup") && $0.contains("bad kernel") }, "\(verdict.problems)")
    }

    @Test("skips, missing figures, failed runs and missing scenarios fail it too; complete results pass")
    func otherFailures() {
        let good = Self.figures(25, 65)
        #expect(SmokeCheck.validate(Self.results(swiftvmm: good, qemu: Self.figures(30, 60)), expected: ["startup"]).passed)
        let skipped = JSON.object(["skipped": .string("swiftvmm's virtio-net did not come up")])
        #expect(!SmokeCheck.validate(Self.results(swiftvmm: skipped, qemu: good), expected: ["startup"]).passed)
        #expect(!SmokeCheck.validate(Self.results(swiftvmm: good, qemu: skipped), expected: ["startup"]).passed)
        // A figure no run produced.
        let partial = JSON.object(Summary.side([Metric("first_byte_ms", "", "ms", "lower"), Metric("wall_ms", "", "ms", "lower")],
                                               runs: [["first_byte_ms": .double(1)]]))
        let v = SmokeCheck.validate(Self.results(swiftvmm: partial, qemu: good), expected: ["startup"])
        #expect(v.problems.contains { $0.contains("wall_ms") }, "\(v.problems)")
        // One failed swiftvmm run among good ones.
        let oneFailed = JSON.object(Summary.side([Metric("first_byte_ms", "", "ms", "lower"), Metric("wall_ms", "", "ms", "lower")],
                                                 runs: [["first_byte_ms": .double(1), "wall_ms": .double(2)], ["error": .string("timeout")]]))
        #expect(!SmokeCheck.validate(Self.results(swiftvmm: oneFailed, qemu: good), expected: ["startup"]).passed)
        // The same in the QEMU column is a warning.
        let q = SmokeCheck.validate(Self.results(swiftvmm: good, qemu: oneFailed), expected: ["startup"])
        #expect(q.passed && q.warnings.count == 1)
        #expect(!SmokeCheck.validate(Self.results(swiftvmm: good, qemu: good), expected: ["startup", "net"]).passed)
    }

    @Test("a QEMU column skipped because QEMU could not be installed passes, loudly")
    func qemuUnavailable() {
        let why = "qemu-system-x86_64 is not installed and could not be installed"
        let v = SmokeCheck.validate(Self.results(swiftvmm: Self.figures(25, 65), qemu: .object(["skipped": .string(why)])),
                                    expected: ["startup"], qemuUnavailable: why)
        #expect(v.passed)
        #expect(v.warnings.contains { $0.contains(why) })
    }

    @Test("a scenario marked swiftvmm_only may skip its QEMU column; an unmarked one may not")
    func swiftvmmOnlyScenario() throws {
        let skipped = JSON.object(["skipped": .string("not measured")])
        var marked = Self.results(swiftvmm: Self.figures(25, 65), qemu: skipped)
        guard case .object(var root) = marked, case .object(var scs)? = root["scenarios"], case .object(var sc)? = scs["startup"] else {
            Issue.record("unexpected results shape"); return
        }
        sc["params"] = .object(["swiftvmm_only": .bool(true)])
        scs["startup"] = .object(sc); root["scenarios"] = .object(scs); marked = .object(root)
        let v = SmokeCheck.validate(marked, expected: ["startup"])
        #expect(v.passed && v.warnings.contains { $0.contains("swiftvmm only") })
        #expect(!SmokeCheck.validate(Self.results(swiftvmm: Self.figures(25, 65), qemu: skipped), expected: ["startup"]).passed)
    }

    @Test("medians, min–max and ratios as the Python runner computed them; results.md cells")
    func summaryAndMarkdown() throws {
        let s = Summary.summarize([.int(3), .int(1), .null, .int(2)])
        #expect(s?["median"] == .int(2) && s?["min"] == .int(1) && s?["max"] == .int(3) && s?["n"] == .int(3))
        #expect(Summary.summarize([.double(1), .double(2)])?["median"] == .double(1.5))
        #expect(Summary.summarize([.null]) == nil)
        // Non-converged runs count only for "converged".
        let dirty = Summary.side([Metric("total_ms", "", "ms", "lower"), Metric("converged", "", "", "higher", "{:.2f}")],
                                 runs: [["total_ms": .double(100), "converged": .int(1)], ["converged": .int(0)]])
        #expect(dirty["metrics"]?["total_ms"]?["n"] == .int(1))
        #expect(dirty["metrics"]?["converged"]?["median"] == .double(0.5))
        var r = Self.results(swiftvmm: Self.figures(25, 65), qemu: Self.figures(50, 65)).object ?? JSONObject()
        var sc = r["scenarios"]?["startup"]?.object ?? JSONObject()
        sc["ratio"] = .object(Summary.ratios(allScenarios[0].metrics, swift: sc["swiftvmm"] ?? .null, qemu: sc["qemu"] ?? .null))
        r["scenarios"] = .object(["startup": .object(sc)])
        let md = Report.markdown(.object(r))
        #expect(md.contains("| startup | process start → first serial byte | ms | lower | 26.0 (25.0–27.0) | 51.0 (50.0–52.0) | 0.51 |"), "\(md)")
        #expect(md.contains("- **startup** — Start-up. Parameters: memory=256M."))
        #expect(try JSON.parse(JSON.object(r).pretty()) == .object(r))
    }
}
