import CLinux
import CSeccomp
import Foundation
import Glibc
import Synchronization

/// System-call confinement with seccomp filters, in the manner of Firecracker's per-thread
/// filters. Once the machine is set up, `lockDown()` confines the whole process to what
/// swiftvmm ever needs (and never `execve`, `fork`, `ptrace`, module loading, mounts, …); from
/// then on every thread swiftvmm starts confines itself further to what its kind needs —
/// a vCPU thread cannot open a file, a device worker cannot make a socket. A refused call kills
/// the process after one line on stderr naming the thread and the call (`SIGSYS`).
public enum Confinement {
    /// The kinds of thread, each with its own allowlist (`ConfinementRules`).
    public enum ThreadKind: String, Sendable, CaseIterable {
        /// What every thread may do once the process is locked down.
        case process
        case vcpu
        /// A virtio device's worker: its queues, its file or TAP.
        case device
        /// A control-socket client.
        case control
        /// A migration (source or target) and the helper threads it starts.
        case migration
    }

    private static let lockedDown = Atomic<Bool>(false)

    /// True once `lockDown()` has run: threads started from now on confine themselves.
    public static var isActive: Bool { lockedDown.load(ordering: .acquiring) }

    /// Confines every thread of the process to `ThreadKind.process` (SECCOMP_FILTER_FLAG_TSYNC)
    /// and turns per-thread confinement on. Throws naming the libseccomp call that failed.
    public static func lockDown() throws(VMError) {
        guard clinux_install_sigsys_reporter() == 0 else { throw .config("seccomp: cannot install the SIGSYS reporter") }
        guard clinux_set_no_new_privs() == 0 else { throw .config("seccomp: prctl(PR_SET_NO_NEW_PRIVS) failed") }
        try load(.process, allThreads: true)
        lockedDown.store(true, ordering: .releasing)
    }

    /// Confines the calling thread to what `kind` needs (after `lockDown()`; a no-op before).
    /// A thread that cannot confine itself stops the process: running unconfined is not an option.
    public static func confineThread(_ kind: ThreadKind, name: String? = nil) {
        if let name { clinux_set_thread_name(String(name.prefix(15))) }
        guard isActive else { return }
        do { try load(kind, allThreads: false) } catch {
            FileHandle.standardError.write(Data("swiftvmm: \(error)\n".utf8))
            _exit(70)
        }
    }

    /// Builds and loads one filter: `kind`'s calls allowed (some only with safe arguments),
    /// everything else trapped.
    static func load(_ kind: ThreadKind, allThreads: Bool) throws(VMError) {
        guard let ctx = seccomp_init(UInt32(SCMP_ACT_TRAP)) else { throw .config("seccomp: seccomp_init failed") }
        defer { seccomp_release(ctx) }
        if allThreads, seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) != 0 {
            throw .config("seccomp: cannot synchronise the filter across threads")
        }
        for name in ConfinementRules.allowed(kind) {
            let nr = seccomp_syscall_resolve_name(name)
            guard nr != __NR_SCMP_ERROR else { continue }      // not on this architecture
            guard seccomp_rule_add_array(ctx, UInt32(SCMP_ACT_ALLOW), nr, 0, nil) == 0 else {
                throw .config("seccomp: cannot allow \(name)")
            }
        }
        try addConditionalRules(ctx, kind)
        let r = seccomp_load(ctx)
        guard r == 0 else { throw .config("seccomp: cannot load the \(kind.rawValue) filter: \(String(cString: strerror(-r)))") }
    }

    /// Threads only (`clone` with CLONE_THREAD; `clone3` answers ENOSYS so glibc falls back to
    /// `clone`), and signals only to this process.
    private static func addConditionalRules(_ ctx: scmp_filter_ctx, _ kind: ThreadKind) throws(VMError) {
        if ConfinementRules.createsThreads(kind) {
            var thread = scmp_arg_cmp(arg: 0, op: SCMP_CMP_MASKED_EQ, datum_a: UInt64(clinux_clone_thread_flag()), datum_b: UInt64(clinux_clone_thread_flag()))
            guard seccomp_rule_add_array(ctx, UInt32(SCMP_ACT_ALLOW), seccomp_syscall_resolve_name("clone"), 1, &thread) == 0,
                  seccomp_rule_add_array(ctx, UInt32(SCMP_ACT_ERRNO(UInt32(ENOSYS))), seccomp_syscall_resolve_name("clone3"), 0, nil) == 0
            else { throw .config("seccomp: cannot add the thread-creation rules") }
        }
        var own = scmp_arg_cmp(arg: 0, op: SCMP_CMP_EQ, datum_a: UInt64(getpid()), datum_b: 0)
        for call in ["kill", "tgkill"] where seccomp_rule_add_array(ctx, UInt32(SCMP_ACT_ALLOW), seccomp_syscall_resolve_name(call), 1, &own) != 0 {
            throw .config("seccomp: cannot allow \(call) to this process")
        }
    }

    /// The system calls a thread of `kind` may make without conditions, and those of them
    /// libseccomp does not know on this architecture (a typo in the rules shows up here).
    public static func allowlist(_ kind: ThreadKind) -> (names: [String], unknown: [String]) {
        let names = ConfinementRules.allowed(kind)
        return (names, names.filter { seccomp_syscall_resolve_name($0) == __NR_SCMP_ERROR })
    }

    /// Test trigger: a thread of `kind` attempts `execve`, which no allowlist holds.
    public static func selfTest(_ kind: ThreadKind) {
        let t = Thread {
            confineThread(kind, name: "deny-\(kind.rawValue)")
            _ = clinux_try_execve()
        }
        t.start()
    }
}

/// `SCMP_ACT_ERRNO(e)` (a macro Swift cannot import).
private func SCMP_ACT_ERRNO(_ e: UInt32) -> UInt32 { 0x0005_0000 | (e & 0x0000_ffff) }
