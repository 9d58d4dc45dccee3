import Foundation
import Harness

/// What the command line asked for (see `Tools/bench/run --help`).
public struct BenchOptions: Sendable {
    public enum Sides: String, Sendable { case both, swiftvmm, qemu }

    public var quick = false
    public var smoke = false
    public var only: [String] = []
    public var runs: Int?
    public var out: String = Paths.root.appendingPathComponent("bench-results").path
    public var swiftvmm: String?
    public var noBuild = false
    public var qemu: String?
    public var side: Sides = .both
    public var noPlots = false
    public var qemuNoAutoConverge = false
    public var render: String?

    public init() {}

    /// The scenario names given with `--only` (repeated or comma-separated).
    public var onlyNames: Set<String> {
        Set(only.flatMap { $0.split(separator: ",").map(String.init) }.filter { !$0.isEmpty })
    }
}

/// Paths, binaries and settings shared by every scenario of one benchmark run.
public final class BenchEnvironment: @unchecked Sendable {
    public let options: BenchOptions
    public var quick: Bool { options.quick }
    /// The run's temporary directory (removed at the end).
    public let tmp: URL
    /// The private copy of the swiftvmm binary the run measures.
    public var swiftvmm: String = ""
    /// Where that copy came from: path, size, mtime.
    public var swiftvmmOrigin: JSON = .null
    public var qemu: String?
    /// Why QEMU cannot run here (not installed and could not be installed).
    public var qemuSkip: String?
    private var counter = 0

    public init(options: BenchOptions, tmp: URL) {
        self.options = options
        self.tmp = tmp
    }

    /// A fresh directory for one run, inside the temporary directory.
    public func runDirectory(_ tag: String) throws -> URL {
        counter += 1
        let d = tmp.appendingPathComponent(String(format: "%03d-", counter) + tag)
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: false)
        return d
    }

    /// GuestImages/out/`name`.elf; a missing image skips the scenario.
    public func image(_ name: String) throws -> String {
        let p = Paths.guest("\(name).elf")
        guard FileManager.default.fileExists(atPath: p) else { throw Skip("\(p) is missing (make -C GuestImages)") }
        return p
    }

    /// `swiftvmm run` with 1 vCPU.
    public func swiftRun(kernel: String, memory: String, cmdline: String, api: String? = nil, name: String? = nil,
                         initrd: String? = nil, extra: [String] = []) -> [String] {
        var a = [swiftvmm, "run", "--kernel", kernel, "--memory", memory, "--cpus", "1", "--cmdline", cmdline]
        if let api { a += ["--api-socket", api] }
        if let name { a += ["--name", name] }
        if let initrd { a += ["--initrd", initrd] }
        return a + extra
    }

    /// QEMU's microvm with the same guest: 1 vCPU, serial on stdout, debug-exit at 0xf4.
    public func qemuRun(kernel: String, memory: String, cmdline: String, initrd: String? = nil, extra: [String] = []) -> [String] {
        var a = [qemu ?? "qemu-system-x86_64", "-enable-kvm", "-M", "microvm,acpi=off,auto-kernel-cmdline=off", "-m", memory,
                 "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", kernel, "-append", cmdline]
        if let initrd { a += ["-initrd", initrd] }
        return a + extra
    }

    /// The guest command line and argument vector for `side`.
    public func vmm(_ side: Side, kernel: String, memory: String, cmdline: String, swiftExtra: [String] = [],
                    qemuExtra: [String] = []) -> [String] {
        side == .swiftvmm ? swiftRun(kernel: kernel, memory: memory, cmdline: cmdline, extra: swiftExtra)
                          : qemuRun(kernel: kernel, memory: memory, cmdline: cmdline, extra: qemuExtra)
    }

    /// Starts a child from an argument vector.
    public func start(_ name: String, _ argv: [String], environment: [String: String] = [:]) throws -> Child {
        try Child(argv[0], Array(argv.dropFirst()), name: name, environment: environment)
    }
}

/// Turns a harness error into the benchmark's own.
@discardableResult
func bench<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as HarnessError { throw BenchError(e.description) }
}

/// `/proc/PID/status` figures given in kB, in bytes.
func procStatus(_ pid: Int32) throws -> [String: Int] {
    let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    var d: [String: Int] = [:]
    for line in text.split(separator: "\n") {
        let parts = line.split(separator: ":", maxSplits: 1)
        guard parts.count == 2 else { continue }
        let v = parts[1].trimmingCharacters(in: .whitespaces)
        if v.hasSuffix(" kB"), let n = Int(v.dropLast(3)) { d[String(parts[0])] = n * 1024 }
    }
    return d
}
