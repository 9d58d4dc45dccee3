import Foundation
import Glibc
import Harness

// MARK: - 6. blk

/// The VMM options that give the guest a virtio-blk disk, and the prefix its command line needs.
func diskArguments(_ side: Side, _ disk: String) -> (args: [String], prefix: String) {
    switch side {
    case .swiftvmm: return (["--disk", "vol=bench,path=\(disk)"], "")
    case .qemu: return (["-global", "virtio-mmio.force-legacy=false", "-drive", "id=d0,file=\(disk),format=raw,if=none",
                         "-device", "virtio-blk-device,drive=d0"], "probe ")
    }
}

/// A sparse file of `bytes`.
func sparseFile(_ path: String, bytes: Int) throws {
    guard FileManager.default.createFile(atPath: path, contents: nil), truncate(path, off_t(bytes)) == 0 else {
        throw BenchError("cannot create \(path): \(String(cString: strerror(errno)))")
    }
}

struct Blk: Scenario {
    let name = "blk"
    let title = "virtio-blk: sequential 1 MiB writes (MB/s) and 4 KiB random reads (IOPS)"
    let metrics = [Metric("seq_write_MBps", "sequential 1 MiB writes", "MB/s", "higher"),
                   Metric("rand_read_iops", "4 KiB random reads", "IOPS", "higher", "{:.0f}")]
    let notes = ["Needs a benchmark mode in blktest.elf: `bench=seqwrite bs=1M size=N` and "
                 + "`bench=randread bs=4K count=N`, each printing `BENCH <name> bytes=<n> ops=<n> ns=<n>` "
                 + "(guest TSC time). Disk: a sparse raw file on the host's /tmp; QEMU -drive cache=writeback "
                 + "(its default)."]

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("blktest.elf"), "memory": .string("256M"), "disk": .string("256M sparse raw file")]
    }

    func precheck(_ env: BenchEnvironment) throws {
        let image = (try? Data(contentsOf: URL(fileURLWithPath: Paths.guest("blktest.elf")))) ?? Data()
        if image.range(of: Data("BENCH".utf8)) == nil {
            throw Skip("blktest.elf has no benchmark mode (`bench=seqwrite|randread` printing "
                       + "`BENCH <name> bytes= ops= ns=`) — see blk-pattern for a proxy figure")
        }
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let d = try env.runDirectory("\(side.rawValue)-blk")
        let disk = d.appendingPathComponent("disk.img").path
        try sparseFile(disk, bytes: 256 * MiB)
        var out: JSONObject = [:]
        for (mode, cmd) in [("seqwrite", "bench=seqwrite bs=1M size=192M"), ("randread", "bench=randread bs=4K count=20000")] {
            let (dev, prefix) = diskArguments(side, disk)
            let k = try env.image("blktest")
            let c = try bench { try env.start("\(side.rawValue)-blktest-\(mode)",
                                              env.vmm(side, kernel: k, memory: "256M", cmdline: prefix + cmd, swiftExtra: dev, qemuExtra: dev)) }
            defer { c.kill() }
            let m = try bench { try c.waitForLine("^BENCH (\\w+) .*bytes=(\\d+) ops=(\\d+) ns=(\\d+)", timeout: 180) }
            let bytes = Double(m.groups[2] ?? "") ?? 0, ops = Double(m.groups[3] ?? "") ?? 0, ns = Double(m.groups[4] ?? "") ?? 0
            guard ns > 0 else { throw BenchError("blktest reported no time: \(m.text)") }
            if mode == "seqwrite" { out["seq_write_MBps"] = .double(bytes / (ns / 1e9) / 1e6) }
            else { out["rand_read_iops"] = .double(ops / (ns / 1e9)) }
        }
        return out
    }
}

struct BlkPattern: Scenario {
    let name = "blk-pattern"
    let extra = true
    let title = "virtio-blk proxy: blktest.elf pattern write + flush + read-verify of 64 MiB"
    let metrics = [Metric("MBps", "(64 MiB written + 64 MiB read) / time", "MB/s", "higher"),
                   Metric("time_ms", "BLK line → PASS line", "ms", "lower")]
    let notes = ["Not one of the issue's figures: the whole pattern path. "
                 + "blktest.elf blocks=16384 (4 KiB blocks, 32 per request = 128 KiB requests) writes, "
                 + "FLUSHes and reads back 64 MiB, verifying each block in ring 3. Time = host timestamps of "
                 + "the serial `BLK capacity=` and `PASS blocks=` lines; fresh sparse raw file per run."]

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("blktest.elf"), "memory": .string("256M"), "cmdline": .string("blocks=16384"),
         "disk": .string("128M sparse raw file")]
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let d = try env.runDirectory("\(side.rawValue)-blkpat")
        let disk = d.appendingPathComponent("disk.img").path
        try sparseFile(disk, bytes: 128 * MiB)
        let (dev, prefix) = diskArguments(side, disk)
        let k = try env.image("blktest")
        let c = try bench { try env.start("\(side.rawValue)-blktest",
                                          env.vmm(side, kernel: k, memory: "256M", cmdline: prefix + "blocks=16384",
                                                  swiftExtra: dev, qemuExtra: dev)) }
        defer { c.kill() }
        let a: OutputLog.LineMatch
        do { a = try bench { try c.waitForLine("^BLK capacity=", timeout: 60) } } catch let e as BenchError {
            if side == .swiftvmm && e.description.contains("no virtio device") {
                throw Skip("swiftvmm's virtio-blk is not usable yet: \(e)")
            }
            throw e
        }
        let b = try bench { try c.waitForLine("^PASS blocks=16384", timeout: 300, from: a.index + 1) }
        let (term, _) = try bench { try c.waitForExit(timeout: 30) }
        guard term == .exited(1) else { throw BenchError("blktest exit status \(rc(term)) (expected 1) \(c.tail())") }
        let dt = b.time - a.time
        return ["MBps": .double(Double(2 * 64 * MiB) / dt / 1e6), "time_ms": .double(dt * 1000)]
    }
}

// MARK: - 7. net

struct Net: Scenario {
    let name = "net"
    let title = "virtio-net: UDP echo round trips per second (one request in flight)"
    let metrics = [Metric("round_trips_per_s", "UDP echo round trips", "1/s", "higher", "{:.0f}"),
                   Metric("rtt_us_median", "median round-trip time", "µs", "lower")]
    let notes = ["netecho.elf (polled virtio-net driver in ring 3) in a private network namespace: TAP "
                 + "192.0.2.1/24 on the host side, guest 192.0.2.2; a Python client in the namespace sends "
                 + "64-byte UDP datagrams to port 7 one at a time (Tools/bench/udpecho.py). QEMU: "
                 + "-netdev tap (no vhost), virtio-net-device on microvm's virtio-mmio."]

    func seconds(_ env: BenchEnvironment) -> Int { env.quick ? 3 : 5 }

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("netecho.elf"), "memory": .string("256M"), "payload_bytes": .int(64), "seconds": .int(seconds(env))]
    }

    func precheck(_ env: BenchEnvironment) throws {
        if geteuid() != 0 { throw Skip("needs root for network namespaces and TAP devices") }
        if !FileManager.default.fileExists(atPath: "/dev/net/tun") { throw Skip("/dev/net/tun is missing") }
    }

    func run(_ env: BenchEnvironment, side: Side, index: Int) throws -> JSONObject {
        let k = try env.image("netecho")
        let ns = try bench { try TestNetwork(prefix: "swvmm-bench-\(getpid())") }
        defer { ns.delete() }
        let cmd = "ip=\(netPrefix).2 quiet"
        let argv = side == .swiftvmm
            ? env.swiftRun(kernel: k, memory: "256M", cmdline: cmd, extra: ["--net", "tap=\(ns.tap)"])
            : env.qemuRun(kernel: k, memory: "256M", cmdline: "probe " + cmd, extra: [
                "-global", "virtio-mmio.force-legacy=false",
                "-netdev", "tap,id=n0,ifname=\(ns.tap),script=no,downscript=no",
                "-device", "virtio-net-device,netdev=n0"])
        let c = try bench { try env.start("\(side.rawValue)-netecho", ns.command(argv)) }
        defer { c.kill() }
        do { _ = try bench { try c.waitForLine("^NET UP", timeout: 60) } } catch let e as BenchError {
            if side == .swiftvmm { throw Skip("swiftvmm's virtio-net did not come up: \(e)") }
            throw e
        }
        let secs = seconds(env)
        // The python3 `#!/usr/bin/env python3` found for the Python runner.
        let python = which("python3") ?? "/usr/bin/python3"
        let script = Paths.root.appendingPathComponent("Tools/bench/udpecho.py").path
        let client = try bench { try env.start("udpecho", ns.command([python, script, "--host", "\(netPrefix).2",
                                                                      "--seconds", "\(secs)", "--size", "64"])) }
        defer { client.kill() }
        guard client.wait(timeout: Double(secs + 60)) != nil else {
            throw BenchError("udpecho client did not finish within \(secs + 60) s \(client.tail())")
        }
        let last = client.out.lines.last(where: { !$0.text.trimmingCharacters(in: .whitespaces).isEmpty })?.text ?? ""
        guard let r = try? JSON.parse(last), r.object != nil else {
            throw BenchError("udpecho client failed (rc=\(client.termination.map(rc) ?? "?")): \(client.stderr.suffix(400)) \(c.tail())")
        }
        if let e = r["error"] {
            let why = e.string ?? e.compact
            if side == .swiftvmm { throw Skip("swiftvmm's virtio-net does not echo: \(why) \(c.tail())") }
            throw BenchError("\(why) \(c.tail())")
        }
        return ["round_trips_per_s": r["round_trips_per_s"] ?? .null, "rtt_us_median": r["rtt_us_median"] ?? .null, "detail": r]
    }
}
