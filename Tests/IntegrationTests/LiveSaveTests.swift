import Foundation
import Glibc
import Harness
import Testing

/// `save --live`: the guest's memory goes to the file while it runs, then a short pause for
/// the last dirty pages and the state; judged by the restored guest's own page check.
@Suite("live save", .serialized)
struct LiveSaveTests {
    @Test("live save while memtouch dirties 256 MiB at full speed: the restored guest PASSes its page check")
    func liveSaveOfDirtyingGuestRestoresAndPasses() throws {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("memtouch.elf", cmdline: "size=256M heartbeat-ms=200 passes=6000", memory: "512M")
        defer { if src.isRunning { src.kill() } }
        #expect(src.waitFor("HEARTBEAT", timeout: 60), "\(src.transcript)")
        let file = rig.path("live.snap")
        let s = try runSwiftVMM(["save", api, file, "--live"], timeout: 120)
        #expect(s.status == 0 && s.stdout.contains("saved"), "\(s.stderr)\n\(src.transcript)")
        #expect(src.wait(timeout: 30) == 0, "the saved guest's swiftvmm should exit 0\n\(src.transcript)")
        #expect(!src.stdout.contains("PASS"), "the guest finished before it was saved: the test proves nothing")
        let r = try Child(Paths.swiftvmm, ["restore", file], name: "restore")
        defer { if r.isRunning { r.kill() } }
        #expect(r.waitFor("PASS passes=6000", timeout: 180), "\(r.transcript)")
        #expect(r.wait(timeout: 30) == 1)
        #expect(!src.stdout.contains("FAIL") && !r.stdout.contains("FAIL"))
    }
}
