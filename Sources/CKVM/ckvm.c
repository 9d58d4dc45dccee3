#include "ckvm.h"
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int ckvm_tap_open(const char *name, short flags, char *actual_name, size_t actual_len) {
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
