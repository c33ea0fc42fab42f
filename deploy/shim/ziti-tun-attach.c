// ziti-tun-attach: an LD_PRELOAD shim that lets the stock ziti-edge-tunnel run on a tun device
// the CNI created for it, with no capability at all.
//
// Upstream tun_open (openziti/ziti-tunnel-sdk-c @b687256c,
// programs/ziti-edge-tunnel/netif_driver/linux/tun.c:410-503) does, in this order:
//   :423  open("/dev/net/tun", O_RDWR|O_CLOEXEC)
//   :433  ioctl(fd, TUNSETIFF, {"ziti%d", IFF_TUN|IFF_NO_PI})  -> a template creates a new
//         device, which needs CAP_NET_ADMIN: EPERM, fatal ("failed to open tun device")
//   :463  socket(AF_INET, SOCK_DGRAM, IPPROTO_IP)
//   :475  ioctl(sock, SIOCSIFADDR, tun_ip)                      -> EPERM, fatal
//   :482  ioctl(sock, SIOCGIFMTU)
//   :489  ioctl(sock, SIOCSIFFLAGS, UP|RUNNING|NOARP|MULTICAST)  -> EPERM, fatal
//   :500  system("ip route add <dns block> dev <tun>")          -> fails, logged
// and later routes (tun.c:129-190) and DNS (tun.c:246-283) through system() and resolv.conf.
// Releases after that snapshot also capset() CAP_NET_ADMIN and set SO_MARK on their sockets.
//
// What this does, and nothing more:
//   - TUNSETIFF with a name template ("%d") attaches to $ZITI_TUN_DEV instead: the CNI made
//     that device owned by this uid, so the kernel lets it attach without a capability.
//   - SIOCSIF{ADDR,NETMASK,FLAGS,MTU} on $ZITI_TUN_DEV that fail with EPERM succeed when the
//     device already is as asked (the CNI configured it); otherwise the EPERM stands, with a
//     line on stderr saying what differs.
//   - capset() that fails with EPERM for CAP_NET_ADMIN succeeds (the work it was for is done).
//   - setsockopt(SO_MARK) that fails with EPERM succeeds (the mark only steers policy routing
//     the tunneler cannot install here; the pod's routes send control traffic out of eth0).
//   - system("ip ...") is not run (every such call needs CAP_NET_ADMIN; the CNI owns the
//     pod's routes) and reports success, with a line on stderr.
// Everything else passes through. Build: gcc -shared -fPIC -O2 -o ziti-tun-attach.so ziti-tun-attach.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/capability.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *dev(void) {
    const char *d = getenv("ZITI_TUN_DEV");
    return d && *d ? d : "ziti0";
}

static void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ziti-tun-attach: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

typedef int (*ioctl_fn)(int, unsigned long, ...);

static int real_ioctl(int fd, unsigned long req, void *arg) {
    static ioctl_fn f;
    if (!f) f = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    return f(fd, req, arg);
}

static int ours(const struct ifreq *ifr) {
    return strncmp(ifr->ifr_name, dev(), IFNAMSIZ) == 0;
}

/** The device's current value of what SIOCSIF<x> wanted to set: tolerate when equal. */
static int already(int fd, unsigned long set, const struct ifreq *want) {
    struct ifreq cur;
    memset(&cur, 0, sizeof cur);
    memcpy(cur.ifr_name, want->ifr_name, IFNAMSIZ - 1);
    switch (set) {
    case SIOCSIFADDR:
        if (real_ioctl(fd, SIOCGIFADDR, &cur) < 0) return 0;
        return ((struct sockaddr_in *)&cur.ifr_addr)->sin_addr.s_addr == ((const struct sockaddr_in *)&want->ifr_addr)->sin_addr.s_addr;
    case SIOCSIFNETMASK:
        if (real_ioctl(fd, SIOCGIFNETMASK, &cur) < 0) return 0;
        return ((struct sockaddr_in *)&cur.ifr_netmask)->sin_addr.s_addr == ((const struct sockaddr_in *)&want->ifr_netmask)->sin_addr.s_addr;
    case SIOCSIFMTU:
        if (real_ioctl(fd, SIOCGIFMTU, &cur) < 0) return 0;
        return cur.ifr_mtu == want->ifr_mtu;
    case SIOCSIFFLAGS:
        if (real_ioctl(fd, SIOCGIFFLAGS, &cur) < 0) return 0;
        // Up is what matters; RUNNING follows carrier (attached), NOARP and MULTICAST are the
        // tun defaults `ip tuntap` gave it.
        return (cur.ifr_flags & IFF_UP) == (want->ifr_flags & IFF_UP);
    }
    return 0;
}

int ioctl(int fd, unsigned long req, ...) {
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (req == TUNSETIFF && arg) {
        struct ifreq *ifr = arg;
        if (strchr(ifr->ifr_name, '%')) {
            note("TUNSETIFF \"%.*s\": attaching to the pre-provisioned %s", IFNAMSIZ, ifr->ifr_name, dev());
            memset(ifr->ifr_name, 0, IFNAMSIZ);
            strncpy(ifr->ifr_name, dev(), IFNAMSIZ - 1);
        }
        return real_ioctl(fd, req, arg);
    }
    int rc = real_ioctl(fd, req, arg);
    if (rc < 0 && (errno == EPERM || errno == EACCES) && arg &&
        (req == SIOCSIFADDR || req == SIOCSIFNETMASK || req == SIOCSIFFLAGS || req == SIOCSIFMTU) && ours(arg)) {
        int saved = errno;
        if (already(fd, req, arg)) return 0;
        note("ioctl 0x%lx on %s: not permitted, and the device is not already as asked (the CNI configured it; check the webhook's tun.addr)", req, dev());
        errno = saved;
    }
    return rc;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len) {
    static int (*f)(int, int, int, const void *, socklen_t);
    if (!f) f = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
    int rc = f(fd, level, name, val, len);
    if (rc < 0 && errno == EPERM && level == SOL_SOCKET && name == SO_MARK) {
        static int once;
        if (!once++) note("SO_MARK needs CAP_NET_ADMIN: sockets stay unmarked (no policy routing in this pod)");
        return 0;
    }
    return rc;
}

int capset(cap_user_header_t hdr, const cap_user_data_t data) {
    long rc = syscall(SYS_capset, hdr, data);
    if (rc < 0 && errno == EPERM && data && (data[0].effective & (1u << CAP_NET_ADMIN))) {
        note("capset(CAP_NET_ADMIN): not held and not needed (the CNI set the device up)");
        return 0;
    }
    return (int)rc;
}

int system(const char *cmd) {
    static int (*f)(const char *);
    if (!f) f = (int (*)(const char *))dlsym(RTLD_NEXT, "system");
    if (cmd && strncmp(cmd, "ip ", 3) == 0) {
        note("not running \"%s\": the CNI owns this pod's routes (intercept CIDRs become routes at pod creation)", cmd);
        return 0;
    }
    return f(cmd);
}
