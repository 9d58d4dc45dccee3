import Foundation
import Harness
import Testing

/// The seccomp filters of a running swiftvmm stop a forbidden call on every kind of thread: the
/// process dies with SIGSYS after one line naming the thread and the call.
@Suite("seccomp confinement", .serialized)
struct ConfinementIntegrationTests {
    @Test("a thread of each kind that calls execve is stopped, with a line naming it", arguments: ["process", "vcpu", "device", "control", "migration"])
    func forbiddenCallIsStopped(kind: String) throws {
        let c = try Child.swiftvmm(["run", "--kernel", Paths.guest("memtouch.elf"), "--memory", "64M",
                                    "--cmdline", "size=16M heartbeat-ms=100 passes=100000"],
                                   environment: ["SWIFTVMM_SECCOMP_SELFTEST": kind])
        let status = c.wait(timeout: 60)
        #expect(status == 128 + SIGSYS, "status \(String(describing: status))\n\(c.stderr)")
        #expect(c.stderr.contains("seccomp: thread 'deny-\(kind)' made forbidden system call 59"), "\(c.stderr)")
    }

    @Test("with --no-seccomp there is no filter: the trigger is ignored and the guest PASSes")
    func noSeccompRunsUnconfined() throws {
        let c = try Child.swiftvmm(["run", "--no-seccomp", "--kernel", Paths.guest("memtouch.elf"), "--memory", "64M",
                                    "--cmdline", "size=16M passes=5"],
                                   environment: ["SWIFTVMM_SECCOMP_SELFTEST": "vcpu"])
        #expect(c.wait(timeout: 120) == 1, "\(c.stderr)")
        #expect(c.stdout.contains("PASS"), "\(c.stdout)")
    }
}
