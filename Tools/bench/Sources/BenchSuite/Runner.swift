import Foundation
import Glibc
import Harness

/// The benchmark suite: every selected scenario, swiftvmm and QEMU alternated, figures to
/// results.json and results.md, and (with `--smoke`) the check that they are all there.
public enum BenchRunner {
    /// Set by SIGINT/SIGTERM/SIGHUP: the suite stops after the current run and writes what it has.
    static let interrupted = Flag()

    /// Runs the suite as `options` say; returns the process's exit status.
    public static func main(_ options: BenchOptions) -> Int32 {
        if let render = options.render { return rerender(render, plots: !options.noPlots) }
        var o = options
        if o.smoke { o.quick = true }
        let only = o.onlyNames
        let unknown = only.subtracting(allScenarios.map(\.name))
        if !unknown.isEmpty {
            FileHandle.standardError.write(Data("unknown scenario(s): \(unknown.sorted().joined(separator: ", "))\n".utf8))
            return 1
        }
        let selected = allScenarios.filter { only.isEmpty || only.contains($0.name) }
        handleInterrupts()
        defer { Registry.shared.cleanUp() }
        let started = Monotonic.now()
        guard let env = prepare(o) else { return interrupted.isSet ? 130 : 1 }
        let suite = SuiteRun(env: env, runs: o.runs ?? (o.quick ? 3 : 5), only: only)
        let results = suite.run(selected, started: started)
        return finish(results, env: env, selected: selected, started: started)
    }

    /// SIGINT, SIGTERM, SIGHUP: kill what runs and wind down (partial results are written);
    /// a second one exits at once.
    static func handleInterrupts() {
        Registry.shared.onInterrupt { sig in
            if interrupted.set() {
                Registry.shared.cleanUp()
                Glibc.exit(130)
            }
            log("\ninterrupted (signal \(sig)): cleaning up")
            Registry.shared.close()
            Registry.shared.killChildren(grace: 1)
        }
    }

    /// The output directory, the temporary directory, the guest images, the private copy of
    /// swiftvmm and QEMU; nil (having said why) when the suite cannot run.
    static func prepare(_ o: BenchOptions) -> BenchEnvironment? {
        let tmp: URL
        do {
            try FileManager.default.createDirectory(at: URL(fileURLWithPath: o.out), withIntermediateDirectories: true)
            tmp = try Paths.tempDirectory(prefix: "swiftvmm-bench")
        } catch {
            log("cannot create \(o.out) or a temporary directory: \(error)")
            return nil
        }
        let env = BenchEnvironment(options: o, tmp: tmp)
        ensureImages()
        if o.side != .qemu {
            do {
                let origin = try findSwiftVMM(o)
                // Work on a private copy: others may rebuild .build/release while the suite runs.
                let attrs = try FileManager.default.attributesOfItem(atPath: origin)
                let mtime = (attrs[.modificationDate] as? Date) ?? Date()
                env.swiftvmmOrigin = .object(["path": .string(origin), "size": .int((attrs[.size] as? Int) ?? 0),
                                              "mtime": .string(isoDate(time_t(mtime.timeIntervalSince1970)))])
                let snap = tmp.appendingPathComponent("swiftvmm").path
                try privateCopy(origin, to: snap)
                env.swiftvmm = snap
            } catch {
                log("\(error)")
                return nil
            }
        }
        if interrupted.isSet { return nil }
        env.qemu = findQEMU(o)
        if env.qemu == nil { env.qemuSkip = "qemu-system-x86_64 is not installed and could not be installed" }
        return env
    }

    /// Writes results.json, results.md and the plots, prints the table; with `--smoke`, judges.
    static func finish(_ results: JSON, env: BenchEnvironment, selected: [any Scenario], started: Double) -> Int32 {
        let o = env.options
        let out = URL(fileURLWithPath: o.out)
        let rj = out.appendingPathComponent("results.json"), md = out.appendingPathComponent("results.md")
        let markdown = Report.markdown(results)
        do {
            try Data((results.pretty() + "\n").utf8).write(to: rj)
            try Data(markdown.utf8).write(to: md)
        } catch {
            log("cannot write the results to \(out.path): \(error)")
            return 1
        }
        log("\nwrote \(rj.path) and \(md.path) (\(String(format: "%.0f", Monotonic.now() - started)) s)")
        let wasInterrupted = interrupted.isSet
        if !o.noPlots && !wasInterrupted {
            for p in makePlots(rj, out.appendingPathComponent("figures"), install: !o.smoke) { log("wrote \(p)") }
        }
        log("")
        log(markdown)
        if wasInterrupted { return 130 }
        return o.smoke ? smoke(results, env: env, selected: selected) : 0
    }

    /// The `--smoke` verdict, printed: each problem on its own line.
    static func smoke(_ results: JSON, env: BenchEnvironment, selected: [any Scenario]) -> Int32 {
        let o = env.options, only = o.onlyNames
        // The scenarios this mode was to run: everything selected, except the long extras
        // --quick leaves out unless named with --only.
        let expected = selected.filter { $0.inQuick || only.contains($0.name) }.map(\.name)
        let verdict = SmokeCheck.validate(results, expected: expected, qemuUnavailable: env.qemuSkip, sides: o.side)
        for w in verdict.warnings { log("smoke check WARNING: \(w)") }
        guard verdict.passed else {
            log("smoke check FAILED (\(verdict.problems.count) problem\(verdict.problems.count == 1 ? "" : "s")):")
            for p in verdict.problems { log("  - \(p)") }
            return 1
        }
        log("smoke check ok: \(expected.count) scenarios, every figure present"
            + (env.qemuSkip.map { " (QEMU column SKIPPED: \($0))" } ?? ""))
        return 0
    }

    /// `--render`: rewrites results.md (beside the file) and the plots from a results.json.
    static func rerender(_ path: String, plots: Bool) -> Int32 {
        let rj = URL(fileURLWithPath: path)
        do {
            let results = try JSON.parse(Data(contentsOf: rj))
            let md = rj.deletingLastPathComponent().appendingPathComponent("results.md")
            try Data(Report.markdown(results).utf8).write(to: md)
            log("wrote \(md.path)")
        } catch {
            log("cannot render \(path): \(error)")
            return 1
        }
        if plots {
            for p in makePlots(rj, rj.deletingLastPathComponent().appendingPathComponent("figures"), install: true) { log("wrote \(p)") }
        }
        return 0
    }
}

/// One run of the suite: the scenarios in order, each side `runs` times, alternated.
final class SuiteRun {
    let env: BenchEnvironment
    let runs: Int
    let only: Set<String>
    private var scenarios = JSONObject()

    init(env: BenchEnvironment, runs: Int, only: Set<String>) {
        (self.env, self.runs, self.only) = (env, runs, only)
    }

    var interrupted: Bool { BenchRunner.interrupted.isSet }

    /// Runs `selected` and returns the whole results.json.
    func run(_ selected: [any Scenario], started: Double) -> JSON {
        log("swiftvmm: \(env.swiftvmmOrigin["path"]?.string.map { "\($0) (built \(env.swiftvmmOrigin["mtime"]?.string ?? "?"))" } ?? "None")\n"
            + "qemu:     \(env.qemu ?? "None")\nruns per side: \(runs); temp dir \(env.tmp.path)")
        var results: JSONObject = ["schema": .int(1), "date": .string(isoDate(time(nil))), "mode": .string(env.quick ? "quick" : "full"),
                                   "runs": .int(runs), "machine": machineInfo(env), "scenarios": .object([:])]
        for sc in selected where !interrupted { scenario(sc) }
        Registry.shared.killChildren()
        results["elapsed_s"] = .double((Monotonic.now() - started).rounded(places: 1))
        if interrupted {
            results["interrupted"] = .bool(true)
            for (name, sc) in scenarios {
                guard var s = sc.object else { continue }
                for side in Side.allCases where s[side.rawValue] == nil {
                    s[side.rawValue] = .object(["skipped": .string("interrupted (Ctrl-C) before this scenario finished")])
                }
                scenarios[name] = .object(s)
            }
        }
        results["scenarios"] = .object(scenarios)
        return .object(results)
    }

    /// One scenario: skipped as a whole, or every run of both sides and their summary.
    private func scenario(_ sc: any Scenario) {
        var res: JSONObject = ["title": .string(sc.title), "extra": .bool(sc.extra), "params": .object(sc.params(env)),
                               "notes": .array(sc.notes.map { .string($0) }), "metrics_spec": .array(sc.metrics.map(\.json))]
        let started = Monotonic.now()
        do {
            if env.quick && !sc.inQuick && !only.contains(sc.name) {
                throw Skip("not run with --quick (takes long; run it with --only \(sc.name))")
            }
            try sc.precheck(env)
        } catch {
            let why = "\(error)"
            res["skipped"] = .string(why)
            res["swiftvmm"] = .object(["skipped": .string(why)])
            res["qemu"] = .object(["skipped": .string(why)])
            scenarios[sc.name] = .object(res)
            log("[\(sc.name)] skipped: \(why)")
            return
        }
        scenarios[sc.name] = .object(res)
        var per: [Side: [JSONObject]] = [:]
        var skipped: [Side: String] = [:]
        if let why = env.qemuSkip { skipped[.qemu] = why }
        for side in Side.allCases where env.options.side != .both && env.options.side.rawValue != side.rawValue {
            skipped[side] = "not selected (--side \(env.options.side.rawValue))"
        }
        for i in 0..<runs {
            for side in Side.allCases where skipped[side] == nil {
                if interrupted { return }
                switch once(sc, side: side, index: i) {
                case .figures(let r): per[side, default: []].append(r)
                case .skipped(let why): skipped[side] = why
                case .interrupted: return
                }
            }
        }
        for side in Side.allCases {
            let runsOfSide = per[side] ?? []
            if let why = skipped[side], runsOfSide.isEmpty {
                res[side.rawValue] = .object(["skipped": .string(why)])
            } else {
                var column = Summary.side(sc.metrics, runs: runsOfSide)
                if let why = skipped[side] { column["skipped_later"] = .string(why) }
                res[side.rawValue] = .object(column)
            }
        }
        res["ratio"] = .object(Summary.ratios(sc.metrics, swift: res["swiftvmm"] ?? .null, qemu: res["qemu"] ?? .null))
        res["elapsed_s"] = .double((Monotonic.now() - started).rounded(places: 1))
        scenarios[sc.name] = .object(res)
    }

    enum Outcome {
        /// The run's figures, or its error (`{"error": …}`).
        case figures(JSONObject)
        case skipped(String)
        case interrupted
    }

    /// One run of one side; whatever it started is killed afterwards.
    private func once(_ sc: any Scenario, side: Side, index i: Int) -> Outcome {
        let t = Monotonic.now()
        defer { Registry.shared.killChildren() }
        do {
            var r = try sc.run(env, side: side, index: i)
            if interrupted { return .interrupted }
            r["elapsed_s"] = .double((Monotonic.now() - t).rounded(places: 2))
            let shown = sc.metrics.filter { r[$0.key] != nil }.map { "\($0.key)=\($0.format(r[$0.key]?.double))" }
            log("[\(sc.name)] \(side.rawValue) run \(i + 1)/\(runs): \(shown.joined(separator: ", "))  "
                + "(\(String(format: "%.1f", Monotonic.now() - t)) s)")
            return .figures(r)
        } catch let e as Skip {
            if interrupted { return .interrupted }
            log("[\(sc.name)] \(side.rawValue) skipped: \(e)")
            return .skipped(e.description)
        } catch {
            if interrupted { return .interrupted }
            let msg = error is BenchError ? "\(error)" : "\(type(of: error)): \(error)"
            log("[\(sc.name)] \(side.rawValue) run \(i + 1)/\(runs) FAILED: \(msg)")
            return .figures(["error": .string(msg), "elapsed_s": .double((Monotonic.now() - t).rounded(places: 2))])
        }
    }
}

/// A flag set once from another thread.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    /// Sets it; returns whether it was already set.
    func set() -> Bool {
        lock.lock(); defer { lock.unlock() }
        let was = value
        value = true
        return was
    }

    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
