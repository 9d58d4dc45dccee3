import ArgumentParser
import BenchSuite
import Foundation

/// `Tools/bench/run`: swiftvmm and QEMU side by side on the same guest images (BENCHMARKS.md).
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "Tools/bench/run",
        abstract: "swiftvmm benchmark suite: swiftvmm and QEMU side by side on the same guest images.",
        discussion: """
        Every scenario runs swiftvmm and QEMU alternately (A B A B ...), 5 runs each (3 with --quick), \
        and reports median and min-max per figure plus the swiftvmm/QEMU ratio of medians, in \
        DIR/results.json and DIR/results.md (DIR defaults to bench-results/). Plots (PNG) go to \
        DIR/figures/ when matplotlib can be had. See BENCHMARKS.md for what each figure means. \
        QEMU (apt-get) and matplotlib (pip, else apt-get) are installed when missing, and the runner \
        says so. Every child process is killed and every socket, temporary directory and network \
        namespace removed on the way out, also on failure and Ctrl-C.
        """)

    @Flag(help: "3 runs each, smaller migrate-random guest; < 5 min")
    var quick = false
    @Flag(help: "CI: --quick, then fail unless every selected scenario has real figures (no speed checks)")
    var smoke = false
    @Option(name: .customLong("only"), help: ArgumentHelp("run only these scenarios (repeat or comma-separate): "
        + "startup, rss, migrate-idle, migrate-random, migrate-dirty, migrate-dirty-random, blk, net, blk-pattern, migrate-dirty-raw", valueName: "NAME"))
    var only: [String] = []
    @Option(help: "runs per side (default 5, --quick 3)")
    var runs: Int?
    @Option(help: "output directory (default bench-results/)")
    var out: String?
    @Option(help: "swiftvmm binary (default .build/release, else .build-bench/release, built if absent)")
    var swiftvmm: String?
    @Flag(name: .customLong("no-build"), help: "never run swift build")
    var noBuild = false
    @Option(help: "qemu-system-x86_64 binary")
    var qemu: String?
    @Option(help: "run one VMM only (the other column says skipped): both, swiftvmm or qemu")
    var side: String = "both"
    @Flag(name: .customLong("no-plots"), help: "write no plots")
    var noPlots = false
    @Flag(name: .customLong("qemu-no-auto-converge"), help: "leave QEMU's auto-converge off")
    var qemuNoAutoConverge = false
    @Option(help: ArgumentHelp("only rewrite results.md (next to it) and the plots from an existing results.json",
                               valueName: "RESULTS_JSON"))
    var render: String?

    func validate() throws {
        guard BenchOptions.Sides(rawValue: side) != nil else {
            throw ValidationError("--side must be both, swiftvmm or qemu")
        }
        if let runs, runs < 1 { throw ValidationError("--runs must be at least 1") }
    }

    func run() throws {
        var o = BenchOptions()
        o.quick = quick
        o.smoke = smoke
        o.only = only
        o.runs = runs
        if let out { o.out = out }
        o.swiftvmm = swiftvmm
        o.noBuild = noBuild
        o.qemu = qemu
        o.side = BenchOptions.Sides(rawValue: side) ?? .both
        o.noPlots = noPlots
        o.qemuNoAutoConverge = qemuNoAutoConverge
        o.render = render
        let status = BenchRunner.main(o)
        if status != 0 { throw ExitCode(status) }
    }
}

Bench.main()
