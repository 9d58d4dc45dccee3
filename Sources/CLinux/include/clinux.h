// C shim over the Linux interfaces swiftvmm's devices and threads use besides KVM: TAP
// interfaces, signals that interrupt blocking calls, and atomics on plain memory shared by
// device threads and the migration thread. Values or -errno; no logic.
#ifndef CLINUX_H
#define CLINUX_H

#include <errno.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

// MARK: TAP

/// Opens /dev/net/tun and attaches to (or creates) the TAP interface `name` with `flags`
/// (IFF_TAP | IFF_NO_PI | …). Returns the fd or -errno; the kernel's name for it in `actual_name`.
int clinux_tap_open(const char *name, short flags, char *actual_name, size_t actual_len);

/// TUNSETVNETHDRSZ: the size of the virtio-net header before each frame. 0 or -errno.
int clinux_tap_set_vnet_header_size(int fd, int size);

/// TUNSETOFFLOAD with `offloads` (TUN_F_* bits). 0 or -errno.
int clinux_tap_set_offload(int fd, unsigned int offloads);

/// TUNSETQUEUE: attaches (1) or detaches (0) this queue of a multi-queue TAP. 0 or -errno.
int clinux_tap_set_queue_attached(int fd, int attached);

static inline short clinux_iff_tap(void) { return IFF_TAP; }
static inline short clinux_iff_no_pi(void) { return IFF_NO_PI; }
static inline short clinux_iff_vnet_hdr(void) { return IFF_VNET_HDR; }
static inline short clinux_iff_multi_queue(void) { return IFF_MULTI_QUEUE; }
static inline int clinux_ifnamsiz(void) { return IFNAMSIZ; }

// MARK: eventfd

/// A non-blocking, close-on-exec eventfd, or -errno.
static inline int clinux_eventfd(void) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

// MARK: signals

/// Installs a handler that does nothing for `signo`, without SA_RESTART: its only job is to
/// make a blocking call (KVM_RUN) return EINTR. 0 or -errno.
int clinux_install_interrupting_signal(int signo);

static inline int clinux_pthread_kill(pthread_t thread, int signo) { return -pthread_kill(thread, signo); }

/* The calling thread's kernel id (what QMP's query-cpus-fast reports as thread-id). */
static inline int clinux_gettid(void) { return (int)syscall(SYS_gettid); }

/// Unblocks `signo` for the calling thread. 0 or -errno.
int clinux_unblock_signal(int signo);

// MARK: seccomp

/// Installs a SIGSYS handler that reports a system call a seccomp filter refused — one line on
/// stderr naming the call number and the thread — and then lets SIGSYS kill the process.
/// 0 or -errno.
int clinux_install_sigsys_reporter(void);

/// CLONE_THREAD, which <sched.h> only defines with _GNU_SOURCE.
static inline unsigned long clinux_clone_thread_flag(void) { return 0x00010000UL; }

/// prctl(PR_SET_NO_NEW_PRIVS, 1): required before an unprivileged seccomp filter. 0 or -errno.
int clinux_set_no_new_privs(void);

/// Names the calling thread (at most 15 bytes are kept).
void clinux_set_thread_name(const char *name);

/// execve("/bin/true"): what a confined thread must never be able to do (test trigger).
int clinux_try_execve(void);

// MARK: atomics on plain memory

static inline void clinux_atomic_or64(uint64_t *p, uint64_t bits) { __atomic_fetch_or(p, bits, __ATOMIC_RELAXED); }
static inline uint64_t clinux_atomic_xchg64(uint64_t *p, uint64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t clinux_atomic_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void clinux_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline uint16_t clinux_load_acquire16(const uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void clinux_store_release16(uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/// Extended attributes (a disk mirror's generation): 0 / the value's length, or -1 with errno.
int clinux_fsetxattr(int fd, const char *name, const void *value, size_t size);
long clinux_getxattr(const char *path, const char *name, void *value, size_t size);
#include "clinux_fdpass.h"

#endif
