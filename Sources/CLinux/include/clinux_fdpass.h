// C shim for handing descriptors to another process over a UNIX socket (SCM_RIGHTS), for
// guest RAM in a memfd, and for asking a TAP descriptor what it is. Values or -errno.
#ifndef CLINUX_FDPASS_H
#define CLINUX_FDPASS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

/// Most descriptors one message carries (the kernel's SCM_MAX_FD).
#define CLINUX_MAX_PASSED_FDS 253

/// sendmsg(2) of `iov` with `fds` attached as SCM_RIGHTS (none when nfds is 0).
/// Returns bytes sent or -errno.
ssize_t clinux_send_with_fds(int sock, struct iovec *iov, int iovcnt, const int *fds, int nfds, int flags);

/// recvmsg(2) into `buf`; descriptors that came along (MSG_CMSG_CLOEXEC) are stored in `fds`
/// (at most `maxfds`, any beyond are closed) and counted in `nfds`; `truncated` is set when
/// the kernel or this limit dropped some. Returns bytes read or -errno.
ssize_t clinux_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated);

/// memfd_create(2) of `size` bytes (MFD_CLOEXEC), sealed against shrinking and growing: a
/// process it is handed to can rely on its size. The fd or -errno.
int clinux_memfd_create(const char *name, unsigned long long size);

/// F_GET_SEALS: succeeds only on memfds and other shmem files. The seals or -errno.
int clinux_file_seals(int fd);

/// The seals `clinux_memfd_create` sets (F_SEAL_SHRINK | F_SEAL_GROW).
int clinux_memfd_size_seals(void);

/// TUNGETIFF: the interface name and flags (IFF_TAP, IFF_MULTI_QUEUE, …) of a TUN/TAP fd.
/// 0 or -errno.
int clinux_tap_info(int fd, char *name, size_t name_len, int *flags);

/// Compare-and-swap of a 32-bit word in memory shared between processes: 1 when `*p` was
/// `expected` and is now `desired`, 0 when it held something else (left unchanged).
static inline int clinux_atomic_cas32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static inline uint32_t clinux_atomic_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

#endif
