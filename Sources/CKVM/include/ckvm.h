// C shim over linux/kvm.h for swiftvmm.
//
// Swift cannot evaluate the _IO/_IOR/_IOW macros, so every ioctl request number is exposed as a
// static inline function. The wrappers have fixed arity and return the ioctl's value or -errno;
// they hold no logic.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <asm/kvm.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <errno.h>

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

#endif
