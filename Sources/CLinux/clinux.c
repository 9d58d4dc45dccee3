#include "clinux.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/xattr.h>
#include <sys/syscall.h>

int clinux_tap_open(const char *name, short flags, char *actual_name, size_t actual_len) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = flags;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (actual_name && actual_len > 0) {
        strncpy(actual_name, ifr.ifr_name, actual_len - 1);
        actual_name[actual_len - 1] = 0;
    }
    return fd;
}

int clinux_tap_set_vnet_header_size(int fd, int size) {
    return ioctl(fd, TUNSETVNETHDRSZ, &size) < 0 ? -errno : 0;
}

int clinux_tap_set_offload(int fd, unsigned int offloads) {
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)offloads) < 0 ? -errno : 0;
}

int clinux_tap_set_queue_attached(int fd, int attached) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = attached ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
    return ioctl(fd, TUNSETQUEUE, &ifr) < 0 ? -errno : 0;
}

static void clinux_nothing(int sig) { (void)sig; }

int clinux_install_interrupting_signal(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = clinux_nothing;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    return sigaction(signo, &sa, NULL) < 0 ? -errno : 0;
}

int clinux_unblock_signal(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return -pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

static void clinux_sigsys(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    char name[16] = {0};
    prctl(PR_GET_NAME, name, 0, 0, 0);
    char line[160];
    int nr = info ? info->si_syscall : -1;
    int n = 0;
    const char *a = "swiftvmm: seccomp: thread '";
    while (*a && n < 100) line[n++] = *a++;
    for (int i = 0; name[i] && n < 120; i++) line[n++] = name[i];
    const char *b = "' made forbidden system call ";
    while (*b && n < 150) line[n++] = *b++;
    char digits[12];
    int d = 0;
    unsigned v = nr < 0 ? 0 : (unsigned)nr;
    do { digits[d++] = (char)('0' + v % 10); v /= 10; } while (v && d < 11);
    while (d > 0 && n < 158) line[n++] = digits[--d];
    line[n++] = '\n';
    (void)!write(2, line, (size_t)n);
    signal(sig, SIG_DFL);
    raise(sig);
    _exit(128 + sig);
}

int clinux_install_sigsys_reporter(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = clinux_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL) < 0 ? -errno : 0;
}

int clinux_set_no_new_privs(void) {
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ? -errno : 0;
}

void clinux_set_thread_name(const char *name) {
    prctl(PR_SET_NAME, name, 0, 0, 0);
}

int clinux_try_execve(void) {
    char *argv[] = { "/bin/true", NULL };
    char *envp[] = { NULL };
    return execve("/bin/true", argv, envp) < 0 ? -errno : 0;
}

int clinux_fsetxattr(int fd, const char *name, const void *value, size_t size) {
    return fsetxattr(fd, name, value, size, 0);
}

long clinux_getxattr(const char *path, const char *name, void *value, size_t size) {
    return (long)getxattr(path, name, value, size);
}
