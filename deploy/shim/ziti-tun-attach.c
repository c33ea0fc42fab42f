// ziti-tun-attach: an LD_PRELOAD shim that lets the stock ziti-edge-tunnel run on a tun device
// the CNI created for it, with no capability at all.
//
// Upstream ziti-edge-tunnel v1.18.2 (openziti/ziti-tunnel-sdk-c @df0c785b, the version the
// node suite builds and runs; programs/ziti-edge-tunnel/netif_driver/linux/tun.c) does:
//   tun_open :423  open("/dev/net/tun", O_RDWR|O_CLOEXEC)
//            :433  ioctl(fd, TUNSETIFF, {"ziti%d", IFF_TUN|IFF_NO_PI})  -> a template creates a
//                  new device, which needs CAP_NET_ADMIN: EPERM, fatal ("failed to open tun device")
//            :475  ioctl(sock, SIOCSIFADDR, tun_ip)                      -> EPERM, fatal
//            :482  ioctl(sock, SIOCGIFMTU)                               (a read: works)
//            :489  ioctl(sock, SIOCSIFFLAGS, UP|RUNNING|NOARP|MULTICAST)  -> EPERM, fatal
//            :500  system("ip route add <dns block> dev <tun>")
//   routes   :156,179  a file of "route add|delete <prefix> dev <tun>" lines, then
//                  system("ip -force -batch <file>") from a worker thread
//   excludes :357-397  popen("ip -o route show match <addr> table all | awk ...") (a read:
//                  works), then system("ip route replace <addr> <route>") for the controller's
//                  and routers' addresses, so that they do not enter the tun
// It never calls capset() or sets SO_MARK (checked for v1.18.2 and v1.18.7).
//
// What this does, and nothing more:
//   - TUNSETIFF with a name template ("%d") attaches to $ZITI_TUN_DEV instead: the CNI made
//     that device owned by this uid, so the kernel lets it attach without a capability.
//   - SIOCSIFADDR / SIOCSIFFLAGS on $ZITI_TUN_DEV that fail with EPERM succeed when the device
//     already is as asked (the CNI configured it); otherwise the EPERM stands, with a line on
//     stderr saying what differs.
//   - system("ip ...") is never run (each needs CAP_NET_ADMIN; the CNI owns the pod's routes).
//     Instead the shim checks that the kernel already does what the command asked, and reports
//     success only then: a route "add <prefix> dev <tun>" succeeds only if both ends of the
//     prefix are routed into <tun> now (`ip -o route get`, run without a shell); an exclusion
//     "replace <addr> ..." only if <addr> is not routed into the tun; "delete" succeeds (the
//     CNI's route stays, so traffic still enters the device: nothing leaks). Anything else, or
//     a check that fails, returns exit status 1 with a line on stderr: a route the CNI did not
//     make is never reported as made.
// Everything else passes through (busctl, resolvectl: the tunneler's resolver set-up, which
// fails without systemd-resolved and falls back to /etc/resolv.conf, which this uid cannot
// write: logged by the tunneler, harmless, the webhook wrote the pod's DNS).
// Build: gcc -shared -fPIC -O2 -o ziti-tun-attach.so ziti-tun-attach.c -ldl
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *dev(void) {
    const char *d = getenv("ZITI_TUN_DEV");
    return d && *d ? d : "ziti0";
}

static void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "ziti-tun-attach: %s\n", line);
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
    if (rc < 0 && (errno == EPERM || errno == EACCES) && arg && (req == SIOCSIFADDR || req == SIOCSIFFLAGS) && ours(arg)) {
        int saved = errno;
        if (already(fd, req, arg)) return 0;
        note("ioctl 0x%lx on %s: not permitted, and the device is not already as asked (the CNI configured it; check the webhook's tun.addr)", req, dev());
        errno = saved;
    }
    return rc;
}

// ---- system("ip ..."): check, never run ----

/** An address or prefix as the tunneler writes it: hex digits, '.', ':' and one '/'. */
static int plain_prefix(const char *s) {
    if (!*s || strlen(s) > 64) return 0;
    for (; *s; s++) if (!isxdigit((unsigned char)*s) && *s != '.' && *s != ':' && *s != '/') return 0;
    return 1;
}

/** The device `ip -o route get ADDR` names, run with an argv (no shell); "" if none. */
static void route_dev(const char *addr, char *out, size_t outlen) {
    out[0] = 0;
    int fds[2];
    if (pipe(fds) < 0) return;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    char *argv[] = {"ip", "-o", "route", "get", (char *)addr, NULL};
    // The child must not load this shim again: it only reads routes.
    char *env[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "ip", &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    char buf[512] = {0};
    size_t n = 0;
    ssize_t r;
    while (rc == 0 && n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)r;
    close(fds[0]);
    if (rc != 0) return;
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return;
    char *d = strstr(buf, " dev ");
    if (!d) return;
    d += 5;
    size_t i = 0;
    while (d[i] && !isspace((unsigned char)d[i]) && i < outlen - 1) { out[i] = d[i]; i++; }
    out[i] = 0;
}

/** Both ends of an IPv4 prefix (or the address itself otherwise) are routed into the tun. */
static int routed_into_tun(const char *prefix) {
    char addr[65], dv[IFNAMSIZ + 1];
    snprintf(addr, sizeof addr, "%s", prefix);
    char *slash = strchr(addr, '/');
    int bits = 32;
    if (slash) { *slash = 0; bits = atoi(slash + 1); }
    struct in_addr a;
    if (inet_pton(AF_INET, addr, &a) == 1 && bits >= 0 && bits <= 32) {
        uint32_t h = ntohl(a.s_addr);
        uint32_t mask = bits == 0 ? 0 : 0xffffffffu << (32 - bits);
        uint32_t ends[2] = {h & mask, (h & mask) | ~mask};
        for (int i = 0; i < 2; i++) {
            struct in_addr e = {htonl(ends[i])};
            char s[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &e, s, sizeof s);
            route_dev(s, dv, sizeof dv);
            if (strcmp(dv, dev()) != 0) return 0;
        }
        return 1;
    }
    route_dev(addr, dv, sizeof dv);
    return strcmp(dv, dev()) == 0;
}

/** One "route <verb> <prefix> [dev <d> | <anything>]" request: 0 if the kernel already complies. */
static int check_route(const char *verb, const char *prefix, const char *rest) {
    if (!plain_prefix(prefix)) { note("route %s \"%s\": not an address or prefix; refused", verb, prefix); return 1; }
    if (strcmp(verb, "add") == 0 || (strcmp(verb, "replace") == 0 && strstr(rest, dev()))) {
        if (routed_into_tun(prefix)) { note("route %s %s dev %s: already routed into %s by the CNI; not run", verb, prefix, dev(), dev()); return 0; }
        note("route %s %s dev %s: NOT routed into %s, and this uid cannot add it: traffic for %s would not be intercepted (add it to the pod's cni.openziti.io/intercept-cidrs)", verb, prefix, dev(), dev(), prefix);
        return 1;
    }
    if (strcmp(verb, "delete") == 0 || strcmp(verb, "del") == 0) {
        note("route delete %s: not run; the CNI's route stays (traffic still enters %s, where the tunneler drops it)", prefix, dev());
        return 0;
    }
    if (strcmp(verb, "replace") == 0) {
        // an exclusion (tun.c:397): the address must not enter the tun
        if (!routed_into_tun(prefix)) { note("route replace %s %s: already outside %s; not run", prefix, rest, dev()); return 0; }
        note("route replace %s %s: %s is routed into %s and this uid cannot exclude it: the tunneler's own traffic to it would loop", prefix, rest, prefix, dev());
        return 1;
    }
    note("route %s %s: not supported without CAP_NET_ADMIN; refused", verb, prefix);
    return 1;
}

/** `ip route <verb> <prefix> <rest...>` or one line of an `ip -batch` file ("route ..."). */
static int check_ip_words(char *line) {
    char *save = NULL;
    char *w = strtok_r(line, " \t\n", &save);
    if (w && strcmp(w, "ip") == 0) w = strtok_r(NULL, " \t\n", &save);
    if (!w) return 0; // empty line
    if (strcmp(w, "route") != 0) { note("ip %s ...: not run and not supported without CAP_NET_ADMIN", w); return 1; }
    char *verb = strtok_r(NULL, " \t\n", &save);
    char *prefix = verb ? strtok_r(NULL, " \t\n", &save) : NULL;
    if (!verb || !prefix) { note("ip route: incomplete command; refused"); return 1; }
    char *rest = strtok_r(NULL, "\n", &save);
    return check_route(verb, prefix, rest ? rest : "");
}

static int ip_command(const char *cmd) {
    static const char batch[] = "ip -force -batch ";
    if (strncmp(cmd, batch, sizeof batch - 1) == 0) {
        const char *path = cmd + sizeof batch - 1;
        FILE *f = fopen(path, "r");
        if (!f) { note("%s: cannot read the batch file: %s", cmd, strerror(errno)); return 1 << 8; }
        char line[1024];
        int failed = 0;
        while (fgets(line, sizeof line, f)) failed |= check_ip_words(line);
        fclose(f);
        return failed ? 1 << 8 : 0; // a wait status, as system() returns
    }
    char copy[1024];
    if (strlen(cmd) >= sizeof copy) { note("ip command too long; refused"); return 1 << 8; }
    strcpy(copy, cmd);
    return check_ip_words(copy) ? 1 << 8 : 0;
}

int system(const char *cmd) {
    static int (*f)(const char *);
    if (!f) f = (int (*)(const char *))dlsym(RTLD_NEXT, "system");
    if (cmd && strncmp(cmd, "ip ", 3) == 0) return ip_command(cmd);
    return f(cmd);
}
