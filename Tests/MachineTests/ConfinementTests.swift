import Testing
@testable import Machine

/// The seccomp allowlists: every name is a real system call here, the narrow kinds are narrower
/// than the process, and the calls no thread needs are on no list.
@Suite("seccomp allowlists")
struct ConfinementTests {
    @Test("every allowed name resolves to a system call on this architecture", arguments: Confinement.ThreadKind.allCases)
    func namesResolve(kind: Confinement.ThreadKind) {
        let list = Confinement.allowlist(kind)
        #expect(list.unknown.isEmpty, "\(kind): \(list.unknown)")
        #expect(Set(list.names).count == list.names.count, "\(kind) lists a call twice")
    }

    @Test("each thread kind is a subset of the process's list, and never execs, forks, traces or mounts")
    func kindsNarrowTheProcess() {
        let process = Set(Confinement.allowlist(.process).names)
        for kind in Confinement.ThreadKind.allCases {
            let names = Set(Confinement.allowlist(kind).names)
            #expect(names.isSubset(of: process), "\(kind): \(names.subtracting(process))")
            for forbidden in ["execve", "execveat", "fork", "vfork", "ptrace", "mount", "init_module", "finit_module", "kexec_load", "bpf"] {
                #expect(!names.contains(forbidden), "\(kind) allows \(forbidden)")
            }
        }
        #expect(!Confinement.allowlist(.vcpu).names.contains("openat"))
        #expect(!Confinement.allowlist(.device).names.contains("socket"))
    }
}
