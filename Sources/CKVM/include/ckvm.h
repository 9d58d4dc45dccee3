// C shim over linux/kvm.h for swiftvmm.
//
// Swift cannot evaluate the _IO/_IOR/_IOW macros, so every ioctl request number is exposed as a
// static inline function. The wrappers have fixed arity and return the ioctl's value or -errno;
// they hold no logic.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <asm/kvm.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <errno.h>
#include <net/if.h>
#include <signal.h>
#include <pthread.h>

// MARK: request numbers
#define CKVM_REQ(name, expr) static inline unsigned long ckvm_req_##name(void) { return (unsigned long)(expr); }

CKVM_REQ(GET_API_VERSION, KVM_GET_API_VERSION)
CKVM_REQ(CREATE_VM, KVM_CREATE_VM)
CKVM_REQ(CHECK_EXTENSION, KVM_CHECK_EXTENSION)
CKVM_REQ(GET_VCPU_MMAP_SIZE, KVM_GET_VCPU_MMAP_SIZE)
CKVM_REQ(GET_SUPPORTED_CPUID, KVM_GET_SUPPORTED_CPUID)
CKVM_REQ(GET_MSR_INDEX_LIST, KVM_GET_MSR_INDEX_LIST)
CKVM_REQ(GET_MSR_FEATURE_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST)

CKVM_REQ(CREATE_VCPU, KVM_CREATE_VCPU)
CKVM_REQ(SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION)
CKVM_REQ(SET_TSS_ADDR, KVM_SET_TSS_ADDR)
CKVM_REQ(SET_IDENTITY_MAP_ADDR, KVM_SET_IDENTITY_MAP_ADDR)
CKVM_REQ(CREATE_IRQCHIP, KVM_CREATE_IRQCHIP)
CKVM_REQ(CREATE_PIT2, KVM_CREATE_PIT2)
CKVM_REQ(GET_IRQCHIP, KVM_GET_IRQCHIP)
CKVM_REQ(SET_IRQCHIP, KVM_SET_IRQCHIP)
CKVM_REQ(GET_PIT2, KVM_GET_PIT2)
CKVM_REQ(SET_PIT2, KVM_SET_PIT2)
CKVM_REQ(GET_CLOCK, KVM_GET_CLOCK)
CKVM_REQ(SET_CLOCK, KVM_SET_CLOCK)
CKVM_REQ(IRQ_LINE, KVM_IRQ_LINE)
CKVM_REQ(IRQ_LINE_STATUS, KVM_IRQ_LINE_STATUS)
CKVM_REQ(IRQFD, KVM_IRQFD)
CKVM_REQ(IOEVENTFD, KVM_IOEVENTFD)
CKVM_REQ(GET_DIRTY_LOG, KVM_GET_DIRTY_LOG)
CKVM_REQ(CLEAR_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG)
CKVM_REQ(ENABLE_CAP, KVM_ENABLE_CAP)
CKVM_REQ(SET_GSI_ROUTING, KVM_SET_GSI_ROUTING)

CKVM_REQ(RUN, KVM_RUN)
CKVM_REQ(GET_REGS, KVM_GET_REGS)
CKVM_REQ(SET_REGS, KVM_SET_REGS)
CKVM_REQ(GET_SREGS, KVM_GET_SREGS)
CKVM_REQ(SET_SREGS, KVM_SET_SREGS)
CKVM_REQ(GET_FPU, KVM_GET_FPU)
CKVM_REQ(SET_FPU, KVM_SET_FPU)
CKVM_REQ(GET_XSAVE, KVM_GET_XSAVE)
CKVM_REQ(SET_XSAVE, KVM_SET_XSAVE)
CKVM_REQ(GET_XCRS, KVM_GET_XCRS)
CKVM_REQ(SET_XCRS, KVM_SET_XCRS)
CKVM_REQ(GET_MSRS, KVM_GET_MSRS)
CKVM_REQ(SET_MSRS, KVM_SET_MSRS)
CKVM_REQ(GET_LAPIC, KVM_GET_LAPIC)
CKVM_REQ(SET_LAPIC, KVM_SET_LAPIC)
CKVM_REQ(GET_VCPU_EVENTS, KVM_GET_VCPU_EVENTS)
CKVM_REQ(SET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS)
CKVM_REQ(GET_DEBUGREGS, KVM_GET_DEBUGREGS)
CKVM_REQ(SET_DEBUGREGS, KVM_SET_DEBUGREGS)
CKVM_REQ(GET_MP_STATE, KVM_GET_MP_STATE)
CKVM_REQ(SET_MP_STATE, KVM_SET_MP_STATE)
CKVM_REQ(SET_CPUID2, KVM_SET_CPUID2)
CKVM_REQ(GET_CPUID2, KVM_GET_CPUID2)
CKVM_REQ(GET_TSC_KHZ, KVM_GET_TSC_KHZ)
CKVM_REQ(SET_TSC_KHZ, KVM_SET_TSC_KHZ)
CKVM_REQ(KVMCLOCK_CTRL, KVM_KVMCLOCK_CTRL)
CKVM_REQ(TRANSLATE, KVM_TRANSLATE)
CKVM_REQ(SET_SIGNAL_MASK, KVM_SET_SIGNAL_MASK)

CKVM_REQ(TUNSETIFF, TUNSETIFF)
CKVM_REQ(TUNSETOFFLOAD, TUNSETOFFLOAD)
CKVM_REQ(TUNSETVNETHDRSZ, TUNSETVNETHDRSZ)
CKVM_REQ(TUNGETIFF, TUNGETIFF)

// MARK: fixed-arity wrappers (value or -errno)

static inline long ckvm_ioctl_none(int fd, unsigned long req) {
    long r = ioctl(fd, req, 0);
    return r < 0 ? -errno : r;
}
static inline long ckvm_ioctl_arg(int fd, unsigned long req, unsigned long arg) {
    long r = ioctl(fd, req, arg);
    return r < 0 ? -errno : r;
}
static inline long ckvm_ioctl_ptr(int fd, unsigned long req, void *ptr) {
    long r = ioctl(fd, req, ptr);
    return r < 0 ? -errno : r;
}

/// Offset of the MMIO data bytes in `struct kvm_run` (inside an anonymous union Swift cannot
/// take key paths through).
static inline size_t ckvm_run_mmio_data_offset(void) { return offsetof(struct kvm_run, mmio.data); }

/// Sets `run->immediate_exit` with a volatile store (the vCPU thread reads it on KVM_RUN entry).
static inline void ckvm_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    *(volatile uint8_t *)&run->immediate_exit = value;
}

/// A signal handler that does nothing: its only job is to interrupt KVM_RUN with EINTR.
static void ckvm_kick_handler(int sig) { (void)sig; }

/// Installs the no-op handler for `signo` without SA_RESTART. Returns 0 or -errno.
static inline int ckvm_install_kick_signal(int signo) {
    struct sigaction sa;
    sa.sa_handler = ckvm_kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    return sigaction(signo, &sa, NULL) < 0 ? -errno : 0;
}

static inline int ckvm_pthread_kill(pthread_t thread, int signo) {
    return -pthread_kill(thread, signo);
}

/// Opens /dev/net/tun and attaches to (or creates) the TAP interface `name` with the given flags.
/// Returns the fd or -errno.
int ckvm_tap_open(const char *name, short flags, char *actual_name, size_t actual_len);

// MARK: atomics on plain memory (dirty bitmaps shared by device threads and the migration thread)

static inline void ckvm_atomic_or64(uint64_t *p, uint64_t bits) { __atomic_fetch_or(p, bits, __ATOMIC_RELAXED); }
static inline uint64_t ckvm_atomic_xchg64(uint64_t *p, uint64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t ckvm_atomic_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ckvm_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline uint16_t ckvm_load_acquire16(const uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ckvm_store_release16(uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

#endif
