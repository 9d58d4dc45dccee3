import Foundation
import Harness
import Testing

/// A guest's TSC rate on a target whose own differs. The target's view of its rate and of KVM's
/// scaling is overridden through SWIFTVMM_TEST_TSC_KHZ / SWIFTVMM_TEST_TSC_SCALING: on one
/// machine both sides really run at the same rate, so the guest's clock stays right whichever
/// path the target takes, and timecheck proves it never goes backwards.
@Suite("TSC rate across hosts", .serialized)
struct TSCRateTests {
    /// Half the guest's rate: far outside any tolerance.
    static let otherRate = "1000000"

    func migrate(targetEnv: [String: String], targetExtra: [String] = []) throws -> (send: (status: Int32?, stdout: String, stderr: String), src: Child, dst: Child) {
        let rig = try MigrationRig()
        let (src, api) = try rig.source("timecheck.elf", cmdline: "seconds=6 tick-ms=200")
        #expect(src.waitFor("TICK", timeout: 30), "\(src.transcript)")
        let listen = "unix:" + rig.path("mig.sock")
        let (dst, _) = try rig.target(listen: listen, extra: targetExtra, environment: targetEnv)
        return (try rig.send(api, to: listen), src, dst)
    }

    @Test("a different rate without scaling is refused naming both rates; the guest goes on at the source")
    func mismatchRefused() throws {
        let (s, src, dst) = try migrate(targetEnv: ["SWIFTVMM_TEST_TSC_KHZ": Self.otherRate, "SWIFTVMM_TEST_TSC_SCALING": "0"])
        #expect(s.status != 0)
        #expect(s.stderr.contains("TSC rate differs") && s.stderr.contains("1000.000 MHz") && s.stderr.contains("--allow-tsc-mismatch"), "\(s.stderr)")
        #expect(src.waitFor("PASS time", timeout: 60), "\(src.transcript)")
        #expect(dst.wait(timeout: 30) != 0)
    }

    @Test("--allow-tsc-mismatch accepts it with a warning, and the guest's clock never goes backwards")
    func mismatchAllowed() throws {
        let (s, src, dst) = try migrate(targetEnv: ["SWIFTVMM_TEST_TSC_KHZ": Self.otherRate, "SWIFTVMM_TEST_TSC_SCALING": "0"],
                                        targetExtra: ["--allow-tsc-mismatch"])
        #expect(s.status == 0, "\(s.stderr)")
        #expect(dst.waitFor("PASS time", timeout: 60), "\(dst.transcript)")
        #expect(dst.stderr.contains("accepted (--allow-tsc-mismatch)"), "\(dst.stderr)")
        #expect(!dst.stdout.contains("FAIL") && !src.stdout.contains("PASS"))
    }

    @Test("where KVM can scale, the target keeps the guest's rate (KVM_SET_TSC_KHZ) and the clock stays right")
    func scaledToGuestRate() throws {
        let (s, _, dst) = try migrate(targetEnv: ["SWIFTVMM_TEST_TSC_KHZ": Self.otherRate, "SWIFTVMM_TEST_TSC_SCALING": "1"])
        #expect(s.status == 0, "\(s.stderr)")
        #expect(dst.stderr.contains("KVM scales it to the guest's rate"), "\(dst.stderr)")
        #expect(dst.waitFor("PASS time", timeout: 60), "\(dst.transcript)")
        #expect(!dst.stdout.contains("FAIL"))
    }
}
