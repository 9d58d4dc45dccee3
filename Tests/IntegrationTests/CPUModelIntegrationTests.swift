import Foundation
import Harness
import Testing

/// CPU models from the command line: this host's offer as a file, baselines, refusals, and a
/// guest with the generic model moving with its model.
@Suite("CPU models", .serialized)
struct CPUModelIntegrationTests {
    @Test("cpu-features --json and cpu-baseline of it make a model file this host runs a guest with")
    func baselineOfThisHostRuns() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let offer = try runSwiftVMM(["cpu-features", "--json", "--name", "here"])
        #expect(offer.status == 0, "\(offer.stderr)")
        let a = dir.appendingPathComponent("a.json").path
        try offer.stdout.write(toFile: a, atomically: true, encoding: .utf8)
        let base = try runSwiftVMM(["cpu-baseline", a, a, "--name", "fleet"])
        #expect(base.status == 0 && base.stdout.contains("\"fleet\""), "\(base.stderr)")
        let b = dir.appendingPathComponent("fleet.json").path
        try base.stdout.write(toFile: b, atomically: true, encoding: .utf8)
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("memtouch.elf"), "--memory", "64M", "--cpu-model", b,
                                 "--cmdline", "size=8M passes=5"])
        #expect(r.status == 1 && r.stdout.contains("PASS"), "\(r.stdout)\n\(r.stderr)")
        let listed = try runSwiftVMM(["cpu-features"])
        #expect(listed.stdout.contains("generic: offered") && listed.stdout.contains("host: offered"), "\(listed.stdout)")
    }

    @Test("a model this host cannot offer is refused in one line naming the missing features; no guest starts")
    func unofferedModelRefused() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let offer = try runSwiftVMM(["cpu-features", "--json"])
        var obj = try #require(try JSONSerialization.jsonObject(with: Data(offer.stdout.utf8)) as? [String: Any])
        var features = try #require(obj["features"] as? [String: Any])
        features["0x7.0.edx"] = 0xffff_ffff as UInt32    // reserved bits no CPU has
        obj["features"] = features
        let file = dir.appendingPathComponent("greedy.json").path
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: file))
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("hello.elf"), "--cpu-model", file])
        #expect(r.status == 2, "\(r.stderr)")
        #expect(r.stderr.contains("cannot offer CPU model") && r.stderr.contains("0x7.0.edx bit"), "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1 && !r.stdout.contains("HELLO"))
        let bad = try runSwiftVMM(["run", "--kernel", Paths.guest("hello.elf"), "--cpu-model", "pentium"])
        #expect(bad.status == 2 && bad.stderr.contains("--cpu-model pentium"), "\(bad.stderr)")
    }

    @Test("a guest started with --cpu-model generic migrates with its model and PASSes on the target")
    func genericGuestMigrates() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=16M heartbeat-ms=200 passes=20000", extra: ["--cpu-model", "generic"])
        #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, dstAPI) = try rig.target(listen: listen)
        let s = try rig.send(api, to: listen)
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(dst.waitFor("HEARTBEAT", timeout: 60), "\(dst.transcript)")
        let st = control(dstAPI, "x-swiftvmm-query-status")
        #expect(st.contains("generic"), "\(st)")
        #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
    }
}

extension CPUModelIntegrationTests {
    /// A feature this host offers that the generic model leaves out ("0x1.0.ecx:13"), as an
    /// older CPU would lack it.
    static func offeredBeyondGeneric() throws -> (spec: String, named: String) {
        let offer = try CPUIDGuestTests.offer()
        let generic = try CPUIDGuestTests.features(["cpu-features", "--model", "generic"])
        for key in offer.keys.sorted() where key != "0x40000001.0.eax" {
            let extra = (offer[key] ?? 0) & ~(generic[key] ?? 0)
            if let bit = (0..<32).first(where: { extra & (1 << UInt32($0)) != 0 }) { return ("\(key.dropLast(4)).\(key.suffix(3)):\(bit)", "\(key) bit \(bit)") }
        }
        throw HarnessError("this host offers nothing beyond the generic model")
    }

    @Test("a generic guest moves to a target that lacks a feature beyond the model; a host-model guest is refused naming it")
    func modelGuestMovesWhereHostGuestCannot() throws {
        let lacking = try Self.offeredBeyondGeneric()
        for model in ["generic", "host"] {
            let rig = try MigrationRig()
            let (src, api) = try rig.source("memtouch.elf", cmdline: "size=16M heartbeat-ms=200 passes=20000", extra: ["--cpu-model", model])
            #expect(src.waitFor("HEARTBEAT", timeout: 30), "\(src.transcript)")
            let listen = "unix:" + rig.path("mig.sock")
            let (dst, _) = try rig.target(listen: listen, extra: ["--cpu-feature-deny", lacking.spec])
            let s = try rig.send(api, to: listen)
            if model == "generic" {
                #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
                #expect(dst.waitFor("PASS passes=20000", timeout: 120), "\(dst.transcript)")
            } else {
                #expect(s.status != 0)
                #expect(s.stderr.contains(lacking.named), "\(s.stderr)")
                #expect(src.waitFor("PASS passes=20000", timeout: 120), "the refused guest goes on at the source\n\(src.transcript)")
            }
        }
    }
}

/// CPUID as the guest's own ring-0 code reads it (GuestImages cpuid.elf).
@Suite("CPUID seen from inside the guest", .serialized)
struct CPUIDGuestTests {
    /// This host's offer as feature words ("0x1.0.ecx" → bits).
    static func offer() throws -> [String: UInt32] { try features(["cpu-features", "--json"]) }

    /// The feature words of the model `swiftvmm ARGUMENTS` prints (`cpu-features --json`, `--model NAME`).
    static func features(_ arguments: [String]) throws -> [String: UInt32] {
        let r = try runSwiftVMM(arguments)
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stderr)")
        let f = try #require(obj["features"] as? [String: Any])
        return f.compactMapValues { ($0 as? NSNumber).map { UInt32(truncatingIfNeeded: $0.uint64Value) } }
    }

    /// PVM (ENVIRONMENT.md) answers a guest's leaf 7 and 0xD from the processor itself, whatever
    /// the VMM set; on hardware-assisted KVM every leaf is the VMM's.
    static let pvm = FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm")
    static func pvmPassesThrough(_ key: String) -> Bool { key.hasPrefix("0x7.") || key.hasPrefix("0xd.") }

    /// The leaves cpuid.elf printed, keyed "0x1.0" → (eax, ebx, ecx, edx).
    static func guestLeaves(_ extra: [String]) throws -> [String: [UInt32]] {
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("cpuid.elf")] + extra)
        #expect(r.status == 1 && r.stdout.contains("CPUID done"), "\(r.stdout)\n\(r.stderr)")
        var out: [String: [UInt32]] = [:]
        for line in r.stdout.split(separator: "\n") where line.hasPrefix("CPUID 0x") {
            let parts = line.split(separator: " ")
            let regs = parts.dropFirst(2).compactMap { p in p.split(separator: "=").last.flatMap { UInt32($0.dropFirst(2), radix: 16) } }
            if regs.count == 4 { out[String(parts[1])] = regs }
        }
        return out
    }

    /// Register `key` ("0x1.0.ecx") of the guest's leaves.
    static func reg(_ leaves: [String: [UInt32]], _ key: String) -> UInt32? {
        let p = key.split(separator: ".")
        guard p.count == 3, let regs = leaves["\(p[0]).\(p[1])"] else { return nil }
        return regs[["eax", "ebx", "ecx", "edx"].firstIndex(of: String(p[2])) ?? 0]
    }

    @Test("a generic guest sees the model's bits for every feature this host's KVM offers, and the model's leaf maxima")
    func genericModelSeenInside() throws {
        let offer = try Self.offer()
        let leaves = try Self.guestLeaves(["--cpu-model", "generic"])
        let model = try Self.features(["cpu-features", "--model", "generic"])
        #expect(model.count == 9)
        for (key, bits) in model where !(Self.pvm && Self.pvmPassesThrough(key)) {
            let seen = try #require(Self.reg(leaves, key), "\(key) missing")
            // Bits KVM does not offer are the platform's to show (PVM passes the processor's own).
            let controlled = (offer[key] ?? 0) & ~(1 << 31 | 1 << 28 | 1 << 27)
            #expect(seen & controlled == bits & controlled, "\(key): saw 0x\(String(seen, radix: 16)), model 0x\(String(bits, radix: 16)), KVM controls 0x\(String(controlled, radix: 16))")
        }
        #expect(leaves["0x0.0"].map { $0[0] <= 0xd } == true)
        #expect(leaves["0x80000000.0"].map { $0[0] <= 0x8000_0008 } == true)
    }

    @Test("--cpu-feature-deny of a bit this host offers hides it from the guest")
    func deniedBitHiddenInside() throws {
        let offer = try Self.offer()
        let ecx = offer["0x1.0.ecx"] ?? 0
        let bit = try #require([13, 0, 9, 19, 20, 23, 21].first { ecx & (1 << UInt32($0)) != 0 }, "this host offers none of the candidate bits")
        let plain = try Self.guestLeaves([])
        let denied = try Self.guestLeaves(["--cpu-feature-deny", "0x1.0.ecx:\(bit)"])
        #expect(Self.reg(plain, "0x1.0.ecx").map { $0 & (1 << UInt32(bit)) != 0 } == true)
        #expect(Self.reg(denied, "0x1.0.ecx").map { $0 & (1 << UInt32(bit)) == 0 } == true)
    }
}
