#define _GNU_SOURCE
#include "clinux_fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

ssize_t clinux_send_with_fds(int sock, struct iovec *iov, int iovcnt, const int *fds, int nfds, int flags) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * CLINUX_MAX_PASSED_FDS)];
        struct cmsghdr align;
    } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)iovcnt;
    if (nfds < 0 || nfds > CLINUX_MAX_PASSED_FDS) return -EINVAL;
    if (nfds > 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n = sendmsg(sock, &msg, flags);
    return n < 0 ? -errno : n;
}

ssize_t clinux_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * CLINUX_MAX_PASSED_FDS)];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    *nfds = 0;
    *truncated = 0;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return -errno;
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *data = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i, sizeof(int));
            if (*nfds < maxfds) {
                fds[(*nfds)++] = fd;
            } else {
                close(fd);
                *truncated = 1;
            }
        }
    }
    return n;
}

int clinux_memfd_create(const char *name, unsigned long long size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int clinux_memfd_size_seals(void) { return F_SEAL_SHRINK | F_SEAL_GROW; }

int clinux_file_seals(int fd) {
    int r = fcntl(fd, F_GET_SEALS);
    return r < 0 ? -errno : r;
}

int clinux_tap_info(int fd, char *name, size_t name_len, int *flags) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    if (ioctl(fd, TUNGETIFF, &ifr) < 0) return -errno;
    *flags = ifr.ifr_flags;
    if (name_len > 0) {
        strncpy(name, ifr.ifr_name, name_len - 1);
        name[name_len - 1] = 0;
    }
    return 0;
}
