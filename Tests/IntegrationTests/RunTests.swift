import Foundation
import Harness
import Testing

/// `swiftvmm run` booting the project's own guest images and checking their verdicts.
@Suite("swiftvmm run boots guests", .serialized)
struct RunTests {
    @Test("hello.elf prints its command line and exits with debug-exit status 1")
    func helloPrintsCmdlineAndExits() throws {
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("hello.elf"), "--cmdline", "swift vmm 42"])
        #expect(r.stdout.contains("HELLO swift vmm 42"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.status == 1)
    }

    @Test("memtouch.elf PASSes its page invariant with 1 vCPU's worth of memory")
    func memtouchPassesOneCPU() throws {
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("memtouch.elf"), "--memory", "128M",
                                 "--cmdline", "size=64M passes=20"], timeout: 180)
        #expect(r.stdout.contains("PASS"), "\(r.stdout)\n\(r.stderr)")
        #expect(!r.stdout.contains("FAIL"))
        #expect(r.status == 1)
    }

    @Test("memtouch.elf PASSes over more than 4 GiB of guest memory split by the MMIO hole")
    func memtouchPassesAboveFourGiB() throws {
        // 4.5 GiB of RAM: the region crosses from low RAM to RAM above 4 GiB only if the guest
        // uses the memmap; at minimum it must boot and PASS with memory above the hole.
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("memtouch.elf"), "--memory", "4608M",
                                 "--cmdline", "size=32M passes=5"], timeout: 180)
        #expect(r.stdout.contains("PASS"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.status == 1)
    }

    @Test("smp.elf brings up 2 vCPUs, each PASSes its own memtouch region")
    func smpPassesWithTwoCPUs() throws {
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("smp.elf"), "--cpus", "2", "--memory", "128M",
                                 "--cmdline", "passes=20"], timeout: 180)
        #expect(r.stdout.contains("PASS cpus=2"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.status == 1)
    }

    @Test("--serial file:PATH writes the console to a file")
    func serialToFile() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let log = dir.appendingPathComponent("console.log").path
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("hello.elf"), "--cmdline", "to-file",
                                 "--serial", "file:\(log)"])
        #expect(r.status == 1)
        let text = try String(contentsOfFile: log, encoding: .utf8)
        #expect(text.contains("HELLO to-file"))
        #expect(!r.stdout.contains("HELLO"))
    }

    @Test("pausing and resuming all vCPUs in the middle of memtouch: it stops making progress, then PASSes")
    func pauseResumeMidMemtouch() throws {
        let rig = try MigrationRig()
        let (c, api) = try rig.source("memtouch.elf", cmdline: "size=16M heartbeat-ms=100 passes=30000", memory: "64M")
        #expect(c.waitFor("HEARTBEAT", timeout: 30))
        let paused = control(api, "stop")
        #expect(paused.contains("return"), "\(paused)")
        #expect((try rig.status(api)["status"] as? String) == "paused")
        let before = c.stdout
        usleep(700_000)                      // a window in which a paused guest must print nothing
        #expect(c.stdout == before, "the guest kept running while paused")
        #expect(control(api, "cont").contains("return"))
        #expect((try rig.status(api)["status"] as? String) == "running")
        #expect(c.waitFor("PASS passes=30000", timeout: 120), "\(c.transcript)")
        #expect(c.wait(timeout: 30) == 1)
        #expect(!c.stdout.contains("FAIL"))
    }

    @Test("SIGTERM stops a running guest and swiftvmm exits 0")
    func sigtermStopsCleanly() throws {
        let c = try Child.swiftvmm(["run", "--kernel", Paths.guest("memtouch.elf"), "--memory", "64M",
                                    "--cmdline", "size=16M heartbeat=10"])
        #expect(c.waitFor("HEARTBEAT", timeout: 60), "\(c.transcript)")
        c.signal(SIGTERM)
        #expect(c.wait(timeout: 30) == 0, "\(c.transcript)")
    }
}

/// Bad input ends in one line naming the problem and a non-zero exit, never a backtrace.
@Suite("swiftvmm run refuses bad input", .serialized)
struct BadInputTests {
    func expectOneLineError(_ args: [String], mentions: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try runSwiftVMM(args, timeout: 60)
        #expect(r.status != nil && r.status != 0 && r.status != 1, "status \(String(describing: r.status))", sourceLocation: sourceLocation)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stderr.contains(mentions), "stderr: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(!r.stderr.contains("Fatal error") && !r.stderr.contains("backtrace"), sourceLocation: sourceLocation)
    }

    @Test("a missing kernel file is named")
    func missingKernel() throws {
        try expectOneLineError(["run", "--kernel", "/nonexistent/kernel.elf"], mentions: "/nonexistent/kernel.elf")
    }

    @Test("a file that is neither ELF nor bzImage is refused")
    func notAKernel() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let f = dir.appendingPathComponent("junk.bin")
        try Data(repeating: 0x5a, count: 8192).write(to: f)
        try expectOneLineError(["run", "--kernel", f.path], mentions: "neither")
    }

    @Test("a kernel that does not fit in --memory is refused")
    func kernelTooBig() throws {
        // A valid PVH image whose segment lies above 16 MiB of RAM is simulated with --memory 16M
        // and a large initrd instead: the initrd cannot fit.
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let f = dir.appendingPathComponent("big.initrd")
        try Data(repeating: 1, count: 40 << 20).write(to: f)
        try expectOneLineError(["run", "--kernel", Paths.guest("hello.elf"), "--memory", "16M", "--initrd", f.path],
                               mentions: "initrd")
    }

    @Test("--memory 0 is refused")
    func zeroMemory() throws {
        try expectOneLineError(["run", "--kernel", Paths.guest("hello.elf"), "--memory", "0"], mentions: "--memory")
    }

    @Test("--memory that is not a size is refused")
    func badMemory() throws {
        try expectOneLineError(["run", "--kernel", Paths.guest("hello.elf"), "--memory", "lots"], mentions: "--memory")
    }

    @Test("--cpus 0 is refused")
    func zeroCPUs() throws {
        try expectOneLineError(["run", "--kernel", Paths.guest("hello.elf"), "--cpus", "0"], mentions: "--cpus")
    }

    @Test("an unreadable /dev/kvm is reported")
    func unreadableKVM() throws {
        try expectOneLineError(["run", "--kernel", Paths.guest("hello.elf"), "--kvm-device", "/nonexistent/kvm"],
                               mentions: "/nonexistent/kvm")
    }
}
