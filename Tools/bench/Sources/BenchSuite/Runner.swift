import Foundation
import Glibc
import Harness

/// The benchmark suite: every selected scenario, swiftvmm and QEMU alternated, figures to
/// results.json and results.md, and (with `--smoke`) the check that they are all there.
public enum BenchRunner {
    /// Set by SIGINT/SIGTERM/SIGHUP: the suite stops after the current run and writes what it has.
    private static let interrupted = Flag()

    /// Runs the suite as `options` say; returns the process's exit status.
    public static func main(_ options: BenchOptions) -> Int32 {
        if let render = options.render { return rerender(render, plots: !options.noPlots) }
        var o = options
        if o.smoke { o.quick = true }
        let runs = o.runs ?? (o.quick ? 3 : 5)
        let only = o.onlyNames
        let unknown = only.subtracting(allScenarios.map(\.name))
        if !unknown.isEmpty {
            FileHandle.standardError.write(Data("unknown scenario(s): \(unknown.sorted().joined(separator: ", "))\n".utf8))
            return 1
        }
        let selected = allScenarios.filter { only.isEmpty || only.contains($0.name) }

        Registry.shared.onInterrupt { sig in
            if interrupted.set() {
                // A second signal: no more patience.
                Registry.shared.cleanUp()
                Glibc.exit(130)
            }
            log("\ninterrupted (signal \(sig)): cleaning up")
            Registry.shared.close()
            Registry.shared.killChildren(grace: 1)
        }

        let out = URL(fileURLWithPath: o.out)
        let tmp: URL
        do {
            try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
            tmp = try Paths.tempDirectory(prefix: "swiftvmm-bench")
        } catch {
            log("cannot create \(o.out) or a temporary directory: \(error)")
            return 1
        }
        let env = BenchEnvironment(options: o, tmp: tmp)
        let started = Monotonic.now()
        defer { Registry.shared.cleanUp() }

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
                return 1
            }
        }
        if interrupted.isSet { return 130 }
        env.qemu = findQEMU(o)
        if env.qemu == nil { env.qemuSkip = "qemu-system-x86_64 is not installed and could not be installed" }
        log("swiftvmm: \(env.swiftvmmOrigin["path"]?.string.map { "\($0) (built \(env.swiftvmmOrigin["mtime"]?.string ?? "?"))" } ?? "None")\n"
            + "qemu:     \(env.qemu ?? "None")\nruns per side: \(runs); temp dir \(tmp.path)")

        var results: JSONObject = ["schema": .int(1), "date": .string(isoDate(time(nil))), "mode": .string(o.quick ? "quick" : "full"),
                                   "runs": .int(runs), "machine": machineInfo(env), "scenarios": .object([:])]
        var scenarioResults = JSONObject()
        scenarios: for sc in selected {
            if interrupted.isSet { break }
            var res: JSONObject = ["title": .string(sc.title), "extra": .bool(sc.extra), "params": .object(sc.params(env)),
                                   "notes": .array(sc.notes.map { .string($0) }),
                                   "metrics_spec": .array(sc.metrics.map(\.json))]
            let tScenario = Monotonic.now()
            do {
                if o.quick && !sc.inQuick && !only.contains(sc.name) {
                    throw Skip("not run with --quick (takes long; run it with --only \(sc.name))")
                }
                try sc.precheck(env)
            } catch {
                let why = "\(error)"
                res["skipped"] = .string(why)
                res["swiftvmm"] = .object(["skipped": .string(why)])
                res["qemu"] = .object(["skipped": .string(why)])
                scenarioResults[sc.name] = .object(res)
                log("[\(sc.name)] skipped: \(why)")
                continue
            }
            scenarioResults[sc.name] = .object(res)
            var per: [Side: [JSONObject]] = [.swiftvmm: [], .qemu: []]
            var skipped: [Side: String] = [:]
            if let why = env.qemuSkip { skipped[.qemu] = why }
            for side in Side.allCases where o.side != .both && o.side.rawValue != side.rawValue {
                skipped[side] = "not selected (--side \(o.side.rawValue))"
            }
            for i in 0..<runs {
                for side in Side.allCases where skipped[side] == nil {
                    if interrupted.isSet { break scenarios }
                    let t = Monotonic.now()
                    defer { Registry.shared.killChildren() }
                    do {
                        var r = try sc.run(env, side: side, index: i)
                        if interrupted.isSet { break scenarios }
                        r["elapsed_s"] = .double((Monotonic.now() - t).rounded(places: 2))
                        per[side, default: []].append(r)
                        let shown = sc.metrics.filter { r[$0.key] != nil }.map { "\($0.key)=\($0.format(r[$0.key]?.double))" }
                        log("[\(sc.name)] \(side.rawValue) run \(i + 1)/\(runs): \(shown.joined(separator: ", "))  "
                            + "(\(String(format: "%.1f", Monotonic.now() - t)) s)")
                    } catch let e as Skip {
                        if interrupted.isSet { break scenarios }
                        skipped[side] = e.description
                        log("[\(sc.name)] \(side.rawValue) skipped: \(e)")
                    } catch {
                        if interrupted.isSet { break scenarios }
                        let msg = error is BenchError ? "\(error)" : "\(type(of: error)): \(error)"
                        per[side, default: []].append(["error": .string(msg), "elapsed_s": .double((Monotonic.now() - t).rounded(places: 2))])
                        log("[\(sc.name)] \(side.rawValue) run \(i + 1)/\(runs) FAILED: \(msg)")
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
            res["elapsed_s"] = .double((Monotonic.now() - tScenario).rounded(places: 1))
            scenarioResults[sc.name] = .object(res)
        }
        Registry.shared.killChildren()

        let wasInterrupted = interrupted.isSet
        results["elapsed_s"] = .double((Monotonic.now() - started).rounded(places: 1))
        if wasInterrupted {
            results["interrupted"] = .bool(true)
            for (name, sc) in scenarioResults {
                guard var s = sc.object else { continue }
                for side in Side.allCases where s[side.rawValue] == nil {
                    s[side.rawValue] = .object(["skipped": .string("interrupted (Ctrl-C) before this scenario finished")])
                }
                scenarioResults[name] = .object(s)
            }
        }
        results["scenarios"] = .object(scenarioResults)
        let json = JSON.object(results)
        let rj = out.appendingPathComponent("results.json"), md = out.appendingPathComponent("results.md")
        let markdown = Report.markdown(json)
        do {
            try Data((json.pretty() + "\n").utf8).write(to: rj)
            try Data(markdown.utf8).write(to: md)
        } catch {
            log("cannot write the results to \(out.path): \(error)")
            return 1
        }
        log("\nwrote \(rj.path) and \(md.path) (\(String(format: "%.0f", Monotonic.now() - started)) s)")
        if !o.noPlots && !wasInterrupted {
            for p in makePlots(rj, out.appendingPathComponent("figures"), install: !o.smoke) { log("wrote \(p)") }
        }
        log("")
        log(markdown)
        if wasInterrupted { return 130 }
        if o.smoke {
            // The scenarios this mode was to run: everything selected, except the long extras
            // --quick leaves out unless named with --only.
            let expected = selected.filter { !(o.quick && !$0.inQuick && !only.contains($0.name)) }.map(\.name)
            let verdict = SmokeCheck.validate(json, expected: expected, qemuUnavailable: env.qemuSkip, sides: o.side)
            for w in verdict.warnings { log("smoke check WARNING: \(w)") }
            if !verdict.passed {
                log("smoke check FAILED (\(verdict.problems.count) problem\(verdict.problems.count == 1 ? "" : "s")):")
                for p in verdict.problems { log("  - \(p)") }
                return 1
            }
            log("smoke check ok: \(expected.count) scenarios, every figure present"
                + (env.qemuSkip != nil ? " (QEMU column SKIPPED: \(env.qemuSkip ?? ""))" : ""))
        }
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
