import Foundation
import Glibc
import Harness

/// Prints a line at once (the runner's output is usually a pipe).
public func log(_ message: String) {
    FileHandle.standardOutput.write(Data((message + "\n").utf8))
}

/// Runs a short command and returns (status, stdout, stderr); status -1 if it cannot start.
func capture(_ argv: [String], timeout: Double = 10) -> (status: Int32, out: String, err: String) {
    guard let c = try? Child(argv[0], Array(argv.dropFirst()), name: (argv[0] as NSString).lastPathComponent) else {
        return (-1, "", "")
    }
    let s = c.wait(timeout: timeout) ?? -1
    return (s, c.stdout, c.stderr)
}

/// `which`: the first executable `name` on PATH.
func which(_ name: String) -> String? {
    let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":")
    return dirs.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// ISO 8601 local time with a numeric offset, to the second (`2026-11-22T01:18:29+00:00`).
func isoDate(_ t: time_t) -> String {
    var t = t
    var tmv = tm()
    localtime_r(&t, &tmv)
    var buf = [CChar](repeating: 0, count: 64)
    let n = strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%S%z", &tmv)
    var s = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    if s.count >= 5 { s.insert(":", at: s.index(s.endIndex, offsetBy: -2)) }
    return s
}

/// The machine, kernel, KVM, binaries and load the results were measured with.
func machineInfo(_ env: BenchEnvironment) -> JSON {
    let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
    let cpu = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
        .map { $0.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "" } ?? ""
    let meminfo = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) ?? ""
    let mem = (meminfo.split(separator: "\n").first { $0.hasPrefix("MemTotal") }
        .flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Int($0) } ?? 0) * 1024
    let mods = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/module")) ?? [])
        .filter { $0.hasPrefix("kvm") }.sorted().joined(separator: " ")
    let hw = cpuinfo.contains(" vmx") ? "vmx" : cpuinfo.contains(" svm") ? "svm" : "none"
    let root = Paths.root.path
    let rev = capture(["git", "-C", root, "rev-parse", "--short", "HEAD"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
    let dirty = capture(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "Sources"]).out
        .trimmingCharacters(in: .whitespacesAndNewlines)
    let qv = env.qemu.map { capture([$0, "--version"]).out.split(separator: "\n").first.map(String.init) ?? "" } ?? "not installed"
    var u = utsname()
    uname(&u)
    let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    var load = [Double](repeating: 0, count: 3)
    _ = getloadavg(&load, 3)
    let ncpu = ProcessInfo.processInfo.processorCount
    let desc = "\(ncpu) cores (\(cpu)), \(String(format: "%.0f", Double(mem) / Double(1 << 30))) GiB, kernel \(release), /dev/kvm via "
        + "\(mods.isEmpty ? "?" : mods) (hardware virtualization flag: \(hw)"
        + (mods.contains("kvm_pvm") ? "; nested paravirtual KVM — guest ring-0 code is emulated" : "") + ")"
    return .object(["description": .string(desc), "cpus": .int(ncpu), "cpu_model": .string(cpu), "memory_bytes": .int(mem),
                    "kernel": .string(release), "kvm_modules": .string(mods), "hw_virt_flag": .string(hw),
                    "qemu_version": .string(qv), "swiftvmm_binary": env.swiftvmmOrigin, "git_rev": .string(rev),
                    "sources_modified": .bool(!dirty.isEmpty), "loadavg_at_start": .array(load.map { .double($0) }),
                    "runner": .string("swiftvmm-bench (Tools/bench/Sources)")])
}

/// The swiftvmm binary to measure: `--swiftvmm`, else `.build/release/swiftvmm`, else
/// `.build-bench/release/swiftvmm`, built first unless `--no-build`.
func findSwiftVMM(_ o: BenchOptions) throws -> String {
    let fm = FileManager.default
    if let p = o.swiftvmm {
        let abs = URL(fileURLWithPath: p).resolvingSymlinksInPath().path
        guard fm.fileExists(atPath: abs) else { throw BenchError("--swiftvmm \(abs) does not exist") }
        return abs
    }
    let main = Paths.root.appendingPathComponent(".build/release/swiftvmm").path
    if fm.fileExists(atPath: main) { return main }
    let benchBuild = Paths.root.appendingPathComponent(".build-bench/release/swiftvmm").path
    if o.noBuild {
        if fm.fileExists(atPath: benchBuild) { return benchBuild }
        throw BenchError("no release swiftvmm (.build/release or .build-bench/release) and --no-build given")
    }
    log("building swiftvmm (release) with `swift build -c release --static-swift-stdlib --scratch-path .build-bench` ...")
    let status = Registry.shared.runForeground(["swift", "build", "--package-path", Paths.root.path, "-c", "release",
                                                "--static-swift-stdlib", "--scratch-path",
                                                Paths.root.appendingPathComponent(".build-bench").path, "--product", "swiftvmm"])
    if status != 0 {
        if fm.fileExists(atPath: benchBuild) {
            log("swift build failed: using the previous build \(benchBuild)")
            return benchBuild
        }
        throw BenchError("swift build -c release failed")
    }
    return benchBuild
}

/// `make -C GuestImages` when a guest image the scenarios use is missing.
func ensureImages() {
    let need = ["hello", "memtouch", "blktest", "netecho"]
    if need.allSatisfy({ FileManager.default.fileExists(atPath: Paths.guest("\($0).elf")) }) { return }
    log("guest images missing: make -C GuestImages ...")
    Registry.shared.runForeground(["make", "-C", Paths.root.appendingPathComponent("GuestImages").path])
}

func aptInstall(_ packages: [String]) -> Bool {
    log("installing \(packages.joined(separator: " ")) with apt-get ...")
    let env = ["DEBIAN_FRONTEND": "noninteractive"]
    Registry.shared.runForeground(["apt-get", "update", "-q"], environment: env, quietStdout: true)
    return Registry.shared.runForeground(["apt-get", "install", "-y", "-q"] + packages, environment: env, quietStdout: true) == 0
}

/// `--qemu`, else qemu-system-x86_64 on PATH, else Debian's qemu-system-x86 installed with
/// apt-get (as root); nil when there is none.
func findQEMU(_ o: BenchOptions) -> String? {
    if let q = o.qemu { return q }
    if let q = which("qemu-system-x86_64") { return q }
    log("qemu-system-x86_64 not found: installing Debian's qemu-system-x86 (apt-get) for the side-by-side figures")
    if geteuid() == 0 && aptInstall(["qemu-system-x86"]) { return which("qemu-system-x86_64") }
    return nil
}

/// A python3 that imports matplotlib; with `install`, pip or apt-get it first if there is none.
func pythonWithMatplotlib(install: Bool) -> String? {
    let candidates = [which("python3"), "/usr/bin/python3"].compactMap { $0 }
    for py in candidates where FileManager.default.fileExists(atPath: py) {
        if capture([py, "-c", "import matplotlib"], timeout: 60).status == 0 { return py }
    }
    guard install, let py = candidates.first else { return nil }
    log("matplotlib missing: installing it with pip (for the plots only) ...")
    if Registry.shared.runForeground([py, "-m", "pip", "install", "-q", "matplotlib"]) == 0 { return py }
    log("pip failed: installing python3-matplotlib with apt-get ...")
    if geteuid() == 0 && aptInstall(["python3-matplotlib"]) { return "/usr/bin/python3" }
    return nil
}

/// Draws the figures of `results` (Tools/plot-report, matplotlib) into `outDir`; returns the PNGs.
func makePlots(_ results: URL, _ outDir: URL, install: Bool) -> [String] {
    guard let py = pythonWithMatplotlib(install: install) else {
        log("plots skipped: matplotlib is not available")
        return []
    }
    let r = capture([py, Paths.root.appendingPathComponent("Tools/plot-report").path, "--results", results.path,
                     "--out-dir", outDir.path], timeout: 300)
    guard r.status == 0 else {
        log("plotting failed: \(r.err.trimmingCharacters(in: .whitespacesAndNewlines).suffix(600))")
        return []
    }
    return r.out.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasSuffix(".png") }
}

/// Copies the swiftvmm binary to the run's private path the way the Python runner's
/// `shutil.copy2` did — one `sendfile` for the whole file, then its mode — because how the copy
/// is written decides the page-cache folio sizes and so how many of its pages each fault maps:
/// FileManager's 4 KiB `sendfile` chunks made the `rss` scenario's RssFile ~1 MiB smaller.
func privateCopy(_ source: String, to destination: String) throws {
    typealias SendFile = @convention(c) (Int32, Int32, UnsafeMutablePointer<off_t>?, Int) -> Int
    guard let sym = dlsym(nil, "sendfile") else { throw BenchError("sendfile is not available") }
    let sendfile = unsafeBitCast(sym, to: SendFile.self)
    let input = open(source, O_RDONLY | O_CLOEXEC)
    guard input >= 0 else { throw BenchError("cannot open \(source): \(String(cString: strerror(errno)))") }
    defer { close(input) }
    var st = stat()
    guard fstat(input, &st) == 0 else { throw BenchError("cannot stat \(source): \(String(cString: strerror(errno)))") }
    let output = open(destination, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o700)
    guard output >= 0 else { throw BenchError("cannot create \(destination): \(String(cString: strerror(errno)))") }
    defer { close(output) }
    let size = Int(st.st_size)
    let block = min(max(size, 1 << 23), 1 << 30)
    var offset: off_t = 0
    while true {
        let n = sendfile(output, input, &offset, block)
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { throw BenchError("copying \(source): \(String(cString: strerror(errno)))") }
        if n == 0 { break }
    }
    fchmod(output, st.st_mode & 0o7777)
}
