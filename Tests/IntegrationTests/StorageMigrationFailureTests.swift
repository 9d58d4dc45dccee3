import Foundation
import Glibc
import Harness
import Testing

/// A `--copy-storage` migration that fails or is cancelled before the commit: the guest keeps
/// writing on the source to its own image and finishes there with PASS; the target removes the
/// file it created for the copy, and never one it found.
@Suite("a failed disk-copying migration leaves the source whole", .serialized)
struct StorageMigrationFailureTests {
    static let blocks = 128
    static let writes = 1500

    enum Failure: CustomStringConvertible {
        case cancelOnSource
        case targetCloses(String)
        case targetCrashes(String)
        case sourceKilled(String)
        var description: String {
            switch self {
            case .cancelOnSource: return "cancel on the source in pre-copy"
            case .targetCloses(let p): return "target closes at \(p)"
            case .targetCrashes(let p): return "target dies at \(p)"
            case .sourceKilled(let p): return "source killed at \(p)"
            }
        }
    }

    @Test("cancel, a target failing at each phase before the commit, and a killed source: the source image keeps every acknowledged write, the guest PASSes on the source, the target's new file is removed", arguments: [
        Failure.cancelOnSource, .targetCloses("after-precheck"), .targetCloses("mid-round-0"), .targetCloses("mid-round-n"),
        .targetCloses("after-state"), .targetCrashes("mid-round-n"), .sourceKilled("mid-round-0"),
    ])
    func failureBeforeCommit(_ failure: Failure) throws {
        let rig = try MigrationRig()
        let image = rig.path("source.img"), copy = rig.path("target.img")
        try sparseImage(image, bytes: 8 << 20)
        // Allocated data that takes a while to send under --max-bandwidth, for the cancel.
        #expect(sh("head -c 4194304 /dev/urandom | dd of='\(image)' bs=1M seek=4 conv=notrunc status=none").status == 0)
        var sourceEnv: [String: String] = [:], targetEnv: [String: String] = [:]
        switch failure {
        case .cancelOnSource: break
        case .targetCloses(let p): targetEnv["SWIFTVMM_FAULT"] = "target:\(p):close"
        case .targetCrashes(let p): targetEnv["SWIFTVMM_FAULT"] = "target:\(p):crash"
        case .sourceKilled(let p): sourceEnv["SWIFTVMM_FAULT"] = "source:\(p):crash"
        }
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(Self.blocks) count=\(Self.writes) flush-every=8",
                                        memory: "64M", extra: ["--disk", "vol=data,path=\(image)"], environment: sourceEnv)
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitFor("SEQ 20\n", timeout: 60), "\(src.transcript)")
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(copy),copy"], environment: targetEnv)
        defer { dst.signal(SIGKILL); _ = dst.wait(timeout: 10) }
        var extra = ["--copy-storage"]
        if case .cancelOnSource = failure { extra += ["--max-bandwidth", "1M"] }
        let send = try rig.startSend(api, to: listen, extra: extra)
        defer { send.signal(SIGKILL); _ = send.wait(timeout: 10) }
        if case .cancelOnSource = failure {
            #expect(Self.waitForPhase(rig, api, "pre-copy"), "the migration never reached pre-copy")
            #expect(runSwiftVMMStatus(["cancel", api]) == 0)
        }
        #expect(send.wait(timeout: 120).map { $0 != 0 } == true, "send succeeded: \(send.stdout)")
        #expect(dst.wait(timeout: 60).map { $0 != 0 } == true, "recv did not fail: \(dst.transcript)")
        #expect(!FileManager.default.fileExists(atPath: copy), "\(failure): the target left its half-copied \(copy)")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: (copy as NSString).deletingLastPathComponent)) ?? []
        #expect(!left.contains { $0.hasPrefix("target.img") }, "\(failure): the target left \(left)")

        if case .sourceKilled = failure { return }
        // The guest carries on at the source and finishes there.
        #expect(src.waitFor("PASS seq=\(Self.writes)", timeout: 120), "\(failure): \(src.transcript)")
        #expect(src.wait(timeout: 30) != nil)
        let seqs = BlktestImage.acknowledged([src.stdout])
        #expect(seqs == Array(1...Self.writes), "\(failure): the acknowledged writes on the source are not 1…\(Self.writes)")
        let problems = try BlktestImage(path: image, blocks: Self.blocks).check(lastSeq: Self.writes, final: true)
        #expect(problems.isEmpty, "\(failure): \(problems.joined(separator: "\n"))")
    }

    @Test("a failed migration leaves a target file it did not create in place and unchanged")
    func existingTargetFileStays() throws {
        let rig = try MigrationRig()
        let image = rig.path("source.img"), copy = rig.path("target.img")
        try sparseImage(image, bytes: 8 << 20)
        try sparseImage(copy, bytes: 8 << 20)
        let pristine = rig.path("pristine.img")
        #expect(sh("head -c 65536 /dev/urandom | dd of='\(copy)' conv=notrunc status=none && cp '\(copy)' '\(pristine)'").status == 0)
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(Self.blocks) count=\(Self.writes)",
                                        memory: "64M", extra: ["--disk", "vol=data,path=\(image)"])
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitFor("SEQ 20\n", timeout: 60), "\(src.transcript)")
        let listen = "unix:" + rig.path("m.sock")
        let (dst, _) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(copy),copy"],
                                      environment: ["SWIFTVMM_FAULT": "target:mid-round-0:close"])
        defer { dst.signal(SIGKILL); _ = dst.wait(timeout: 10) }
        let s = try rig.send(api, to: listen, extra: ["--copy-storage"])
        #expect(s.status != 0)
        #expect(dst.wait(timeout: 60).map { $0 != 0 } == true)
        #expect(FileManager.default.fileExists(atPath: copy), "the target removed a file it did not create")
        #expect(sh("cmp -s '\(copy)' '\(pristine)'").status == 0, "the target changed a file before the commit")
        #expect(src.waitFor("PASS seq=\(Self.writes)", timeout: 120), "\(src.transcript)")
    }

    @Test("a target in doubt after a disk-copying hand-off (the source died before `go`) that is told to quit keeps its complete copy beside the volume's path and names it in one line; the path itself is untouched")
    func inDoubtTargetQuitKeepsItsCopy() throws {
        let rig = try MigrationRig()
        let image = rig.path("source.img"), copy = rig.path("target.img")
        try sparseImage(image, bytes: 8 << 20)
        let (src, api) = try rig.source("blktest.elf", cmdline: "loop blocks=\(Self.blocks) count=\(Self.writes) flush-every=8",
                                        memory: "64M", extra: ["--disk", "vol=data,path=\(image)"],
                                        environment: ["SWIFTVMM_FAULT": "source:after-ready:crash"])
        defer { src.signal(SIGKILL); _ = src.wait(timeout: 10) }
        #expect(src.waitFor("SEQ 20\n", timeout: 60), "\(src.transcript)")
        let listen = "unix:" + rig.path("m.sock")
        let (dst, dstAPI) = try rig.target(listen: listen, extra: ["--disk", "vol=data,path=\(copy),copy"])
        defer { dst.signal(SIGKILL); _ = dst.wait(timeout: 10) }
        let s = try rig.send(api, to: listen, extra: ["--copy-storage"])
        #expect(s.status != 0, "send succeeded: \(s.stdout)")
        #expect(src.wait(timeout: 30) != nil, "the source did not die at after-ready")
        try #require(dst.waitForStderr("migration outcome unknown", timeout: 60), "\(dst.transcript)")
        #expect(runSwiftVMMStatus(["quit", dstAPI]) == 0)
        #expect(dst.wait(timeout: 30) != nil, "recv did not exit after quit: \(dst.transcript)")
        let dir = (copy as NSString).deletingLastPathComponent
        let staged = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("target.img.swiftvmm-incoming-") }
        try #require(staged.count == 1, "staged copies: \(staged)")
        let file = dir + "/" + staged[0]
        #expect(!FileManager.default.fileExists(atPath: copy), "the in-doubt target published its copy at \(copy)")
        #expect(sh("cmp '\(image)' '\(file)'").status == 0, "the kept copy is not the source's image at its pause")
        let lines = dst.stderr.split(separator: "\n").filter { $0.contains("kept the copy of volume 'data' at \(file)") }
        #expect(lines.count == 1, "no one-line note naming \(file): \(dst.stderr)")
    }

    static func waitForPhase(_ rig: MigrationRig, _ api: String, _ phase: String) -> Bool {
        for _ in 0..<300 {
            let s = (try? rig.status(api)) ?? [:]
            if "\(s)".contains("\"\(phase)\"") || "\(s)".contains(phase) { return true }
            usleep(50_000)
        }
        return false
    }
}

/// Runs the CLI and returns its exit status.
func runSwiftVMMStatus(_ args: [String]) -> Int32? {
    (try? runSwiftVMM(args, timeout: 60))?.status
}
