// Stand-in for ziti-edge-tunnel on a tun device, dynamically linked against glibc like the
// release binary (built on ziti-builder for glibc 2.27: openziti/ziti-tunnel-sdk-c
// .github/actions/openziti-tunnel-build-action/gh-release/Dockerfile:1), so the same LD_PRELOAD
// shim applies to it.
//
// It opens its device exactly as upstream tun_open does (ziti-tunnel-sdk-c @b687256c,
// programs/ziti-edge-tunnel/netif_driver/linux/tun.c:410-503), call for call, and fails the
// same way when a call fails; with --newer it also makes the calls later releases add
// (capset CAP_NET_ADMIN, SO_MARK on its sockets). Then it is a minimal userspace responder
// where the real tunneler runs lwIP and the Ziti SDK:
//   - DNS on the address after the device's own (tun_ip + 1): an A record for an intercepted
//     host name, REFUSED for any other name (dns_miss_status = DNS_REFUSE,
//     programs/ziti-edge-tunnel/ziti-edge-tunnel.c:85);
//   - TCP and UDP to a service's address and port: the exchange completes, and the reply names
//     the service ("ziti-service=<name> via=tun ..."), as there is no Ziti network here;
//   - anything else: TCP gets a reset, UDP nothing.
// Services come from the identity file's test field "standinTunServices"
// ("name=host:proto:port,..."), the stand-in's answer to "what may this identity dial"; hosts
// get addresses from the DNS range in order (tun_ip + 2, + 3, ...), an IP literal is used as is.
//
//   ziti-edge-tunnel run --identity FILE [--dns-ip-range A.B.C.D/N] [--newer]
//   ziti-edge-tunnel tun-open [--dns-ip-range A.B.C.D/N] [--newer]   (the open sequence only)
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// glibc exports capset() but declares it nowhere (libcap's <sys/capability.h> does).
extern int capset(cap_user_header_t hdr, const cap_user_data_t data);

#define MAX_SERVICES 64
#define MAX_CONNS 256

struct service { char name[128]; char host[256]; uint32_t ip; int udp; uint16_t port; };
static struct service services[MAX_SERVICES];
static int nservices;
static uint32_t tun_ip, dns_ip;
/** ziti-edge-tunnel's --dns-ip-range as given: run_tunnel passes it to tun_open as dns_block. */
static const char *dns_block = "100.64.0.1/10";

// ---- upstream tun_open, call for call ----

static int tun_open(char *name, int *mtu, int newer) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);                               // tun.c:423
    if (fd < 0) { fprintf(stderr, "ERROR open /dev/net/tun failed: %s\n", strerror(errno)); return -1; }
    struct ifreq ifr = { .ifr_name = "ziti%d", .ifr_flags = IFF_TUN | IFF_NO_PI };    // tun.c:431
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {                                            // tun.c:433
        fprintf(stderr, "ERROR failed to open tun device:%s\n", strerror(errno));
        return -1;
    }
    strncpy(name, ifr.ifr_name, IFNAMSIZ);                                           // tun.c:441
    int netdev = socket(AF_INET, SOCK_DGRAM, IPPROTO_IP);                            // tun.c:463
    if (netdev == -1) { fprintf(stderr, "ERROR failed to create netdevice socket: %s\n", strerror(errno)); return -1; }
    struct sockaddr_in *a = (struct sockaddr_in *)&ifr.ifr_addr;
    memset(a, 0, sizeof(struct sockaddr));
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = tun_ip;
    if (ioctl(netdev, SIOCSIFADDR, &ifr) == -1) {                                    // tun.c:475
        fprintf(stderr, "ERROR failed to set interface address: %s\n", strerror(errno));
        return -1;
    }
    if (ioctl(netdev, SIOCGIFMTU, &ifr) == -1) {                                     // tun.c:482
        fprintf(stderr, "ERROR failed to get interface MTU: %s\n", strerror(errno));
        return -1;
    }
    *mtu = ifr.ifr_mtu;
    ifr.ifr_flags = IFF_UP | IFF_RUNNING | IFF_NOARP | IFF_MULTICAST;               // tun.c:488
    if (ioctl(netdev, SIOCSIFFLAGS, &ifr) == -1) {                                   // tun.c:489
        fprintf(stderr, "ERROR failed to set tun up/running: %s\n", strerror(errno));
        return -1;
    }
    close(netdev);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "ip route add %s dev %s", dns_block, name);            // tun.c:500
    if (system(cmd) != 0) fprintf(stderr, "ERROR cmd{%s} failed\n", cmd);           // utils.c:29-32: logged, not fatal
    if (newer) {
        // Later releases: raise CAP_NET_ADMIN, then mark control sockets; EPERM ends the process.
        struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
        struct __user_cap_data_struct data[2] = { { .effective = 1u << CAP_NET_ADMIN, .permitted = 1u << CAP_NET_ADMIN } };
        if (capset(&hdr, data) != 0) { fprintf(stderr, "ERROR capset(CAP_NET_ADMIN): %s\n", strerror(errno)); exit(77); } // EX_NOPERM
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int mark = 0x2a2;
        if (setsockopt(s, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) { fprintf(stderr, "ERROR SO_MARK: %s\n", strerror(errno)); exit(77); }
        close(s);
    }
    return fd;
}

// ---- packets ----

static uint16_t csum(const void *data, size_t len, uint32_t sum) {
    const uint8_t *p = data;
    for (; len > 1; len -= 2, p += 2) sum += (uint32_t)(p[0] << 8 | p[1]);
    if (len) sum += (uint32_t)(p[0] << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static uint32_t pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len) {
    uint32_t s = 0;
    uint32_t a = ntohl(src), b = ntohl(dst);
    s += a >> 16; s += a & 0xffff; s += b >> 16; s += b & 0xffff;
    s += proto; s += len;
    return s;
}

/** Writes an IPv4 packet with `l4` (header + payload, checksum field zeroed) into the tun. */
static void emit(int fd, uint32_t src, uint32_t dst, uint8_t proto, uint8_t *l4, size_t l4len) {
    uint8_t pkt[2048];
    if (l4len + 20 > sizeof pkt) return;
    memset(pkt, 0, 20);
    pkt[0] = 0x45; pkt[8] = 64; pkt[9] = proto;
    uint16_t total = htons((uint16_t)(20 + l4len));
    memcpy(pkt + 2, &total, 2);
    memcpy(pkt + 12, &src, 4); memcpy(pkt + 16, &dst, 4);
    uint16_t c = htons(csum(pkt, 20, 0));
    memcpy(pkt + 10, &c, 2);
    int off = proto == IPPROTO_TCP ? 16 : 6;
    uint16_t t = htons(csum(l4, l4len, pseudo(src, dst, proto, (uint16_t)l4len)));
    if (proto == IPPROTO_UDP && t == 0) t = 0xffff;
    memcpy(l4 + off, &t, 2);
    memcpy(pkt + 20, l4, l4len);
    if (write(fd, pkt, 20 + l4len) < 0) fprintf(stderr, "ERROR tun write: %s\n", strerror(errno));
}

static void udp_reply(int fd, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, const void *data, size_t len) {
    uint8_t l4[1500];
    if (len + 8 > sizeof l4) return;
    uint16_t v;
    v = htons(sport); memcpy(l4, &v, 2);
    v = htons(dport); memcpy(l4 + 2, &v, 2);
    v = htons((uint16_t)(8 + len)); memcpy(l4 + 4, &v, 2);
    memset(l4 + 6, 0, 2);
    memcpy(l4 + 8, data, len);
    emit(fd, src, dst, IPPROTO_UDP, l4, 8 + len);
}

static const struct service *find(uint32_t ip, uint16_t port, int udp) {
    for (int i = 0; i < nservices; i++) if (services[i].ip == ip && services[i].port == port && services[i].udp == udp) return &services[i];
    return NULL;
}

// ---- DNS ----

static void dns(int fd, uint32_t client, uint16_t cport, const uint8_t *q, size_t len) {
    if (len < 17) return;
    char name[256];
    size_t i = 12, n = 0;
    while (i < len && q[i] != 0) {
        size_t l = q[i];
        if (i + 1 + l > len || n + l + 1 >= sizeof name) return;
        if (n) name[n++] = '.';
        memcpy(name + n, q + i + 1, l);
        n += l;
        i += l + 1;
    }
    name[n] = 0;
    size_t qend = i + 5;
    if (qend > len) return;
    uint16_t qtype = (uint16_t)(q[i + 1] << 8 | q[i + 2]);
    uint8_t r[512];
    memcpy(r, q, qend);
    r[6] = r[7] = r[8] = r[9] = r[10] = r[11] = 0;
    r[5] = 1;
    const struct service *s = NULL;
    for (int k = 0; k < nservices; k++) if (strcasecmp(services[k].host, name) == 0) s = &services[k];
    size_t rlen = qend;
    if (!s) {
        r[2] = 0x81; r[3] = 0x85; // response, RD, RA, REFUSED
    } else {
        r[2] = 0x81; r[3] = 0x80; // NOERROR
        if (qtype == 1) {
            r[7] = 1;
            uint8_t ans[16] = { 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4 };
            memcpy(ans + 12, &s->ip, 4);
            memcpy(r + rlen, ans, 16);
            rlen += 16;
        }
    }
    udp_reply(fd, dns_ip, 53, client, cport, r, rlen);
}

// ---- TCP: just enough for one request/reply exchange ----

struct conn { int used; uint32_t cip, sip; uint16_t cport, sport; uint32_t snd_nxt, rcv_nxt; int replied; const struct service *svc; };
static struct conn conns[MAX_CONNS];

static void tcp_send(int fd, struct conn *c, uint8_t flags, const char *data, size_t len) {
    uint8_t l4[1500];
    memset(l4, 0, 20);
    uint16_t v; uint32_t w;
    v = htons(c->sport); memcpy(l4, &v, 2);
    v = htons(c->cport); memcpy(l4 + 2, &v, 2);
    w = htonl(c->snd_nxt); memcpy(l4 + 4, &w, 4);
    w = htonl(c->rcv_nxt); memcpy(l4 + 8, &w, 4);
    l4[12] = 5 << 4; l4[13] = flags;
    v = htons(65535); memcpy(l4 + 14, &v, 2);
    if (len) memcpy(l4 + 20, data, len);
    emit(fd, c->sip, c->cip, IPPROTO_TCP, l4, 20 + len);
}

static void tcp_reset(int fd, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, uint32_t ack) {
    struct conn c = { .sip = src, .sport = sport, .cip = dst, .cport = dport, .snd_nxt = 0, .rcv_nxt = ack };
    tcp_send(fd, &c, 0x14, NULL, 0); // RST|ACK
}

static void tcp(int fd, uint32_t src, uint32_t dst, const uint8_t *t, size_t len) {
    if (len < 20) return;
    uint16_t sport = (uint16_t)(t[0] << 8 | t[1]), dport = (uint16_t)(t[2] << 8 | t[3]);
    uint32_t seq = (uint32_t)t[4] << 24 | (uint32_t)t[5] << 16 | (uint32_t)t[6] << 8 | t[7];
    uint8_t flags = t[13];
    size_t doff = (size_t)(t[12] >> 4) * 4;
    size_t plen = len > doff ? len - doff : 0;
    struct conn *c = NULL, *free_slot = NULL;
    for (int i = 0; i < MAX_CONNS; i++) {
        if (conns[i].used && conns[i].cip == src && conns[i].cport == sport && conns[i].sip == dst && conns[i].sport == dport) c = &conns[i];
        else if (!conns[i].used && !free_slot) free_slot = &conns[i];
    }
    if (flags & 0x04) { if (c) c->used = 0; return; } // RST
    if ((flags & 0x02) && !(flags & 0x10)) {          // SYN
        const struct service *s = find(dst, dport, 0);
        if (!s || !free_slot) { tcp_reset(fd, dst, dport, src, sport, seq + 1); return; }
        c = free_slot;
        *c = (struct conn){ .used = 1, .cip = src, .cport = sport, .sip = dst, .sport = dport, .rcv_nxt = seq + 1, .svc = s };
        c->snd_nxt = (uint32_t)rand();
        tcp_send(fd, c, 0x12, NULL, 0); // SYN|ACK
        c->snd_nxt++;
        return;
    }
    if (!c) { if (!(flags & 0x01)) tcp_reset(fd, dst, dport, src, sport, seq + (uint32_t)plen); return; }
    if (plen) c->rcv_nxt = seq + (uint32_t)plen;
    if (flags & 0x01) c->rcv_nxt = seq + (uint32_t)plen + 1; // FIN
    if (!c->replied) {
        char msg[512];
        struct in_addr peer = { .s_addr = src };
        int n = snprintf(msg, sizeof msg, "ziti-service=%s via=tun peer=%s\n", c->svc->name, inet_ntoa(peer));
        tcp_send(fd, c, 0x19, msg, (size_t)n); // PSH|ACK|FIN
        c->snd_nxt += (uint32_t)n + 1;
        c->replied = 1;
    } else if (plen || (flags & 0x01)) {
        tcp_send(fd, c, 0x10, NULL, 0);
    }
    if (flags & 0x01) c->used = 0; // both sides closed
}

// ---- identity, arguments, loop ----

static void load_services(const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) { fprintf(stderr, "ERROR cannot read identity %s: %s\n", file, strerror(errno)); exit(1); }
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *k = strstr(buf, "\"standinTunServices\"");
    if (!k) return;
    const char *v = strchr(k + 20, '"');
    if (!v) return;
    v++;
    const char *end = strchr(v, '"');
    if (!end) return;
    char list[8192];
    size_t l = (size_t)(end - v) < sizeof list - 1 ? (size_t)(end - v) : sizeof list - 1;
    memcpy(list, v, l);
    list[l] = 0;
    uint32_t next = ntohl(tun_ip) + 2;
    for (char *save = NULL, *e = strtok_r(list, ",", &save); e && nservices < MAX_SERVICES; e = strtok_r(NULL, ",", &save)) {
        struct service *s = &services[nservices];
        char proto[8];
        unsigned port;
        if (sscanf(e, "%127[^=]=%255[^:]:%7[^:]:%u", s->name, s->host, proto, &port) != 4) { fprintf(stderr, "ERROR bad service entry %s\n", e); continue; }
        s->udp = strcmp(proto, "udp") == 0;
        s->port = (uint16_t)port;
        struct in_addr lit;
        if (inet_pton(AF_INET, s->host, &lit) == 1) s->ip = lit.s_addr;
        else {
            // the same name twice (tcp and udp) keeps one address
            s->ip = 0;
            for (int i = 0; i < nservices; i++) if (strcasecmp(services[i].host, s->host) == 0) s->ip = services[i].ip;
            if (!s->ip) s->ip = htonl(next++);
        }
        struct in_addr a = { .s_addr = s->ip };
        printf("INFO service %s intercepted at %s (%s:%u/%s)\n", s->name, inet_ntoa(a), s->host, port, proto);
        nservices++;
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "run";
    const char *identity = NULL, *range = "100.64.0.1/10";
    int newer = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--identity") && i + 1 < argc) identity = argv[++i];
        else if ((!strcmp(argv[i], "--dns-ip-range") || !strcmp(argv[i], "-d")) && i + 1 < argc) range = argv[++i];
        else if (!strcmp(argv[i], "--newer")) newer = 1;
        else { fprintf(stderr, "ERROR unknown argument %s\n", argv[i]); return 1; }
    }
    char ip[32];
    unsigned bits;
    if (sscanf(range, "%31[^/]/%u", ip, &bits) != 2 || inet_pton(AF_INET, ip, &tun_ip) != 1) { fprintf(stderr, "ERROR bad --dns-ip-range %s\n", range); return 1; }
    dns_ip = htonl(ntohl(tun_ip) + 1);
    dns_block = range;
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    char name[IFNAMSIZ];
    int mtu;
    int fd = tun_open(name, &mtu, newer);
    if (fd < 0) return 1;
    printf("INFO tun device %s attached, mtu %d, address %s\n", name, mtu, ip);
    if (!strcmp(mode, "tun-open")) return 0;
    if (strcmp(mode, "run")) { fprintf(stderr, "ERROR unknown mode %s\n", mode); return 1; }
    if (identity) load_services(identity);
    uint8_t pkt[65536];
    for (;;) {
        ssize_t n = read(fd, pkt, sizeof pkt);
        if (n < 0) { if (errno == EINTR) continue; fprintf(stderr, "ERROR tun read: %s\n", strerror(errno)); return 1; }
        if (n < 20 || (pkt[0] >> 4) != 4) continue;
        size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
        size_t total = (size_t)(pkt[2] << 8 | pkt[3]);
        if (total > (size_t)n || ihl < 20 || total < ihl) continue;
        uint32_t src, dst;
        memcpy(&src, pkt + 12, 4);
        memcpy(&dst, pkt + 16, 4);
        const uint8_t *l4 = pkt + ihl;
        size_t l4len = total - ihl;
        if (pkt[9] == IPPROTO_UDP && l4len >= 8) {
            uint16_t sport = (uint16_t)(l4[0] << 8 | l4[1]), dport = (uint16_t)(l4[2] << 8 | l4[3]);
            if (dst == dns_ip && dport == 53) { dns(fd, src, sport, l4 + 8, l4len - 8); continue; }
            const struct service *s = find(dst, dport, 1);
            if (!s) continue;
            char msg[600];
            int len = snprintf(msg, sizeof msg, "ziti-service=%s via=tun-udp got=%.*s\n", s->name, (int)(l4len - 8 > 64 ? 64 : l4len - 8), (const char *)l4 + 8);
            udp_reply(fd, dst, dport, src, sport, msg, (size_t)len);
        } else if (pkt[9] == IPPROTO_TCP) {
            tcp(fd, src, dst, l4, l4len);
        }
    }
}
