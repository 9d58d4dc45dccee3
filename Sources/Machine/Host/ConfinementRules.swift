/// The allowlists of each kind of thread: system calls by name (resolved by libseccomp for the
/// architecture it runs on). Written from what the test suite and the benchmarks make swiftvmm
/// do (strace of every process), thread kind by thread kind.
enum ConfinementRules {
    /// Every thread, from its first instruction to its exit: memory, locks, time, signals.
    static let common = [
        "brk", "mmap", "munmap", "mprotect", "madvise", "mremap", "futex", "rseq", "set_robust_list",
        "rt_sigprocmask", "rt_sigreturn", "rt_sigaction", "sigaltstack", "restart_syscall",
        "clock_gettime", "gettimeofday", "clock_nanosleep", "nanosleep", "sched_yield", "sched_getaffinity",
        "gettid", "getpid", "getrandom", "exit", "exit_group", "prctl", "write", "writev", "read", "close",
    ]

    /// Only after `Confinement.lockDown()` are threads confined; these are what the process as a
    /// whole may do then (the dispatch threads, the main thread, the control socket's acceptor).
    static let process = common + [
        "ioctl", "readv", "pread64", "pwrite64", "lseek", "fdatasync", "fsync", "ftruncate", "openat", "newfstatat", "fstat", "statx",
        "fcntl", "dup", "unlink", "rename", "renameat", "renameat2", "linkat", "fchmod", "umask", "chmod", "mincore", "getrusage", "setpriority", "prlimit64",
        "poll", "ppoll", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2", "signalfd4",
        "timerfd_create", "timerfd_settime", "pipe2", "memfd_create",
        "socket", "bind", "listen", "accept", "accept4", "connect", "shutdown", "sendto", "sendmsg", "recvfrom",
        "recvmsg", "setsockopt", "getsockopt", "getsockname", "getpeername", "set_tid_address", "readlink",
        // A target of `send --copy-storage` checks its file system's free space.
        "statfs", "fstatfs",
        // A disk mirror records its generation (and a migration target reads it).
        "fsetxattr", "getxattr",
        // A thread confines itself further when it starts; filters only ever narrow.
        "seccomp",
    ]

    /// A vCPU: KVM_RUN and the devices it calls on exits (a serial write, an eventfd signal, a
    /// kick of its siblings on a stop).
    static let vcpu = common + ["ioctl"]

    /// A virtio worker: its eventfds and extra descriptors, its image file or TAP.
    static let device = common + ["ioctl", "poll", "ppoll", "readv", "pread64", "pwrite64", "fdatasync", "fsync", "lseek"]

    /// A QMP client thread and the event thread: its socket, the files `x-swiftvmm-dump-state` writes, and a thread per migration.
    static let control = common + ["poll", "sendto", "sendmsg", "recvfrom", "setsockopt", "shutdown", "openat", "newfstatat",
                                   "fstat", "statx", "fcntl", "ioctl", "unlink", "rename", "renameat", "renameat2", "getsockopt",
                                   "fsync", "fdatasync", "seccomp"]

    /// A migration and its helpers (the memory-slot thread, the throttle ticker): sockets, the
    /// dirty log, residency of guest pages, the target's machine (KVM, disk images, TAPs); and
    /// a save, which writes a snapshot file (sized with ftruncate, then pwrite, rename); and a
    /// local hand-over's claim word (a memfd).
    static let migration = process.filter { !["bind", "listen", "chmod", "umask"].contains($0) }

    static func allowed(_ kind: Confinement.ThreadKind) -> [String] {
        switch kind {
        case .process: return process
        case .vcpu: return vcpu
        case .device: return device
        case .control: return control
        case .migration: return migration
        }
    }

    /// Whether a thread of `kind` may start threads (`clone` with CLONE_THREAD).
    static func createsThreads(_ kind: Confinement.ThreadKind) -> Bool {
        kind == .process || kind == .control || kind == .migration
    }
}
