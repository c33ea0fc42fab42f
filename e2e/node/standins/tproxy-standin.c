/* Stand-in for a tunneler honouring ziti-cni's tproxy contract (README, "tproxy contract"):
 * one catch-all on 127.0.0.1:$ZITI_CNI_TPROXY_PORT for TCP and UDP, the original destination
 * from getsockname() (TCP) or IP_RECVORIGDSTADDR (UDP), UDP replies sent from that original
 * address, and DNS answers for queries to $ZITI_CNI_DNS_SERVER:53 (names under .ziti; other
 * names forwarded to $ZITI_CNI_DNS_UPSTREAM, over UDP and over TCP).
 * Plain sockets, no capability: it needs nothing the pod does not hold.
 * Each exchange is answered with a line naming what it saw, so tests check replies. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#ifndef IPV6_RECVORIGDSTADDR
#define IPV6_RECVORIGDSTADDR 74
#endif
#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IP_RECVORIGDSTADDR
#define IP_RECVORIGDSTADDR 20
#endif

static int port;
static const char *dns_server;
#define MAX_UPSTREAMS 5 /* ziti_dns.c:23 */
static struct sockaddr_storage upstream[MAX_UPSTREAMS];
static int n_upstreams;
/* ziti-edge-tunnel drops a DNS client after 5 idle seconds (ziti_dns.c:285, on_dns_client);
 * `ziti tunnel`'s upstream client times out after 5 s (tunnel/dns/dns_linux.go:69-72 at v2.0.3). */
#define UPSTREAM_TIMEOUT_MS 5000

static size_t dns_answer(const unsigned char *q, size_t n, unsigned char *out);

static void die(const char *what) { fprintf(stderr, "tproxy-standin: %s: %s\n", what, strerror(errno)); exit(1); }

static int listener(int family, int type, int p) {
  int s = socket(family, type, 0), one = 1;
  if (s < 0) die("socket");
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == AF_INET6) setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (type == SOCK_DGRAM && family == AF_INET && setsockopt(s, SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof one) < 0) die("IP_RECVORIGDSTADDR");
  if (type == SOCK_DGRAM && family == AF_INET6 && setsockopt(s, SOL_IPV6, IPV6_RECVORIGDSTADDR, &one, sizeof one) < 0) die("IPV6_RECVORIGDSTADDR");
  struct sockaddr_storage ss = { 0 };
  socklen_t len;
  if (family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    *a = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(p), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    len = sizeof *a;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    *a = (struct sockaddr_in6){ .sin6_family = AF_INET6, .sin6_port = htons(p), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    len = sizeof *a;
  }
  if (bind(s, (struct sockaddr *)&ss, len) < 0) {
    if (family == AF_INET6) { fprintf(stderr, "tproxy-standin: no IPv6 listener: %s\n", strerror(errno)); close(s); return -1; }
    die("bind");
  }
  if (type == SOCK_STREAM && listen(s, 128) < 0) die("listen");
  return s;
}

/* "a.b.c.d:p" or "[v6]:p" and the bare address, for either family. */
static void format(const struct sockaddr_storage *ss, char *addr, size_t alen, char *full, size_t flen) {
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, addr, alen);
    snprintf(full, flen, "[%s]:%d", addr, ntohs(a->sin6_port));
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, addr, alen);
    snprintf(full, flen, "%s:%d", addr, ntohs(a->sin_port));
  }
}

/* Reply from the original destination, as a transparent proxy must: a connected client
 * accepts nothing else. */
static void reply_from(const struct sockaddr_storage *dst, const struct sockaddr_storage *peer, socklen_t peerlen, const void *msg, size_t n) {
  char d[INET6_ADDRSTRLEN], df[INET6_ADDRSTRLEN + 10];
  format(dst, d, sizeof d, df, sizeof df);
  int r = socket(dst->ss_family, SOCK_DGRAM, 0), one = 1;
  setsockopt(r, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  /* IPv6 binds only addresses configured on an interface, and the CIDRs are local routes:
   * IP_FREEBIND (no capability needed) lets the socket take the original destination. */
  setsockopt(r, SOL_IP, IP_FREEBIND, &one, sizeof one);
  socklen_t dlen = dst->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (bind(r, (const struct sockaddr *)dst, dlen) < 0) fprintf(stderr, "tproxy-standin: bind %s: %s\n", df, strerror(errno));
  else if (sendto(r, msg, n, 0, (const struct sockaddr *)peer, peerlen) < 0) fprintf(stderr, "tproxy-standin: sendto: %s\n", strerror(errno));
  close(r);
}

static socklen_t salen(const struct sockaddr_storage *a) { return a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in); }

struct forward { struct sockaddr_storage dst, peer; socklen_t peerlen; size_t len; unsigned char q[2048]; };

/* DNS forwarding (contract item 5), as ziti-edge-tunnel does it (ziti_dns.c query_upstream,
 * on_upstream_packet): the query as received to every upstream at once, the first reply with
 * its id relayed as is; no reply in time: none to the client either (its own retry follows).
 * The sidecar's uid is never captured, so these datagrams leave the pod normally. */
static void *forward_udp(void *arg) {
  struct forward *f = arg;
  int fds[MAX_UPSTREAMS];
  struct pollfd pfd[MAX_UPSTREAMS];
  for (int i = 0; i < n_upstreams; i++) {
    fds[i] = socket(upstream[i].ss_family, SOCK_DGRAM, 0);
    pfd[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
    if (fds[i] >= 0 && sendto(fds[i], f->q, f->len, 0, (struct sockaddr *)&upstream[i], salen(&upstream[i])) < 0) fprintf(stderr, "tproxy-standin: DNS upstream %d: %s\n", i, strerror(errno));
  }
  unsigned char a[4096];
  ssize_t got = -1;
  while (got < 0 && poll(pfd, (nfds_t)n_upstreams, UPSTREAM_TIMEOUT_MS) > 0) {
    for (int i = 0; i < n_upstreams && got < 0; i++) {
      if (!(pfd[i].revents & POLLIN)) continue;
      ssize_t r = recv(fds[i], a, sizeof a, 0);
      if (r >= 2 && a[0] == f->q[0] && a[1] == f->q[1]) got = r;
    }
  }
  for (int i = 0; i < n_upstreams; i++) if (fds[i] >= 0) close(fds[i]);
  if (got > 0) reply_from(&f->dst, &f->peer, f->peerlen, a, (size_t)got);
  free(f);
  return NULL;
}

static int read_full(int fd, void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t r = read(fd, (char *)buf + done, n - done);
    if (r <= 0) return -1;
    done += (size_t)r;
  }
  return 0;
}

/* DNS over TCP (a client retrying a truncated answer, RFC 7766): each length-prefixed query is
 * answered like a UDP one, and a name that is not ours is relayed over TCP to the first
 * upstream. Neither upstream tunneler listens on TCP 53 (ziti_dns.c:190 intercepts udp only;
 * `ziti tunnel`'s resolver is a dns.Server with Net "udp", tunnel/dns/dns_linux.go:40-43): the
 * contract asks for more than they do. */
static void *dns_tcp(void *arg) {
  int c = (int)(intptr_t)arg;
  struct timeval tv = { UPSTREAM_TIMEOUT_MS / 1000, 0 };
  setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  unsigned char lb[2], q[4096], a[65536 + 2];
  while (read_full(c, lb, 2) == 0) {
    size_t ql = (size_t)(lb[0] << 8 | lb[1]);
    if (ql > sizeof q || read_full(c, q, ql) < 0) break;
    size_t n = dns_answer(q, ql, a + 2);
    if (n == 0) break;
    if ((a[2 + 3] & 15) == 5 && n_upstreams) {
      int u = socket(upstream[0].ss_family, SOCK_STREAM, 0);
      setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      if (u < 0 || connect(u, (struct sockaddr *)&upstream[0], salen(&upstream[0])) < 0 || write(u, lb, 2) != 2 || write(u, q, ql) != (ssize_t)ql || read_full(u, a, 2) < 0) { if (u >= 0) close(u); break; }
      n = (size_t)(a[0] << 8 | a[1]);
      int bad = read_full(u, a + 2, n);
      close(u);
      if (bad) break;
    }
    a[0] = (unsigned char)(n >> 8); a[1] = (unsigned char)n;
    if (write(c, a, n + 2) != (ssize_t)(n + 2)) break;
  }
  close(c);
  return NULL;
}

static void *tcp_loop(void *arg) {
  int s = *(int *)arg;
  for (;;) {
    struct sockaddr_storage peer, dst;
    socklen_t pl = sizeof peer, dl = sizeof dst;
    int c = accept(s, (struct sockaddr *)&peer, &pl);
    if (c < 0) continue;
    getsockname(c, (struct sockaddr *)&dst, &dl);
    char d[INET6_ADDRSTRLEN], df[INET6_ADDRSTRLEN + 10], p[INET6_ADDRSTRLEN], pf[INET6_ADDRSTRLEN + 10], line[200];
    format(&dst, d, sizeof d, df, sizeof df);
    format(&peer, p, sizeof p, pf, sizeof pf);
    int dport = ntohs(dst.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&dst)->sin6_port : ((struct sockaddr_in *)&dst)->sin_port);
    if (dns_server && strcmp(d, dns_server) == 0 && dport == 53) {
      pthread_t th;
      if (pthread_create(&th, NULL, dns_tcp, (void *)(intptr_t)c) == 0) pthread_detach(th); else close(c);
      continue;
    }
    int n = snprintf(line, sizeof line, "tproxy proto=tcp orig_dst=%s peer=%s\n", df, p);
    if (write(c, line, n) < 0) { /* the client went away */ }
    close(c);
  }
  return NULL;
}

static void *udp_loop(void *arg) {
  int s = *(int *)arg;
  for (;;) {
    char buf[2048], ctl[256];
    struct sockaddr_storage peer, dst = { 0 };
    struct iovec iov = { buf, sizeof buf };
    struct msghdr m = { .msg_name = &peer, .msg_namelen = sizeof peer, .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    ssize_t got = recvmsg(s, &m, 0);
    if (got < 0) continue;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVORIGDSTADDR) memcpy(&dst, CMSG_DATA(c), sizeof(struct sockaddr_in));
      if (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVORIGDSTADDR) memcpy(&dst, CMSG_DATA(c), sizeof(struct sockaddr_in6));
    }
    char d[INET6_ADDRSTRLEN], df[INET6_ADDRSTRLEN + 10], p[INET6_ADDRSTRLEN], pf[INET6_ADDRSTRLEN + 10], line[600];
    format(&dst, d, sizeof d, df, sizeof df);
    format(&peer, p, sizeof p, pf, sizeof pf);
    int port = ntohs(dst.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&dst)->sin6_port : ((struct sockaddr_in *)&dst)->sin_port);
    int n;
    if (dns_server && strcmp(d, dns_server) == 0 && port == 53) n = (int)dns_answer((unsigned char *)buf, (size_t)got, (unsigned char *)line);
    else n = snprintf(line, sizeof line, "tproxy proto=udp orig_dst=%s peer=%s\n", df, p);
    if (n <= 0) continue;
    if (n_upstreams && dns_server && strcmp(d, dns_server) == 0 && port == 53 && (line[3] & 15) == 5) {
      /* Not one of ours: forwarded (ziti_dns.c process_host_req -> query_upstream); the
       * upstream's answer goes back from the forwarding thread. */
      struct forward *f = malloc(sizeof *f);
      *f = (struct forward){ .dst = dst, .peer = peer, .peerlen = m.msg_namelen, .len = (size_t)got };
      memcpy(f->q, buf, (size_t)got);
      pthread_t th;
      if (pthread_create(&th, NULL, forward_udp, f) == 0) pthread_detach(th); else free(f);
      continue;
    }
    reply_from(&dst, &peer, m.msg_namelen, line, (size_t)n);
  }
  return NULL;
}

/* DNS (contract item 5): a query to $ZITI_CNI_DNS_SERVER:53 arrives at the catch-all like any
 * intercepted flow. Answered the way ziti-edge-tunnel v1.18.2 answers (ziti-tunnel-sdk-c
 * lib/ziti-tunnel-cbs/ziti_dns.c:648-664, process_host_req): for a name it serves (*.ziti here),
 * an A query gets 100.64.0.7 and an AAAA query NOERROR with no answer (an A record there was
 * ziti-tunnel-sdk-c #237, fixed by PR #240: musl 1.2.3 takes it as an address; an error rcode
 * there makes musl drop the A answer, openziti/ziti #3075); anything else gets REFUSED (its
 * dns_miss_status, programs/ziti-edge-tunnel/ziti-edge-tunnel.c:85), which the callers forward
 * when $ZITI_CNI_DNS_UPSTREAM is set and send as is otherwise (then glibc asks the next
 * nameserver and musl ignores it while it waits for the others).
 * Returns the answer's length, 0 if the query is unusable. */
static size_t dns_answer(const unsigned char *q, size_t n, unsigned char *out) {
  if (n < 17 || n > 512) return 0;
  size_t i = 12;
  char name[256] = "";
  while (i < n && q[i] && q[i] < 64) {
    size_t len = q[i];
    if (i + 1 + len > n || strlen(name) + len + 2 > sizeof name) return 0;
    if (*name) strcat(name, ".");
    strncat(name, (const char *)q + i + 1, len);
    i += len + 1;
  }
  size_t qend = i + 5;
  if (qend > n) return 0;
  size_t nl = strlen(name);
  int qtype = q[i + 1] << 8 | q[i + 2];
  int ziti = nl > 5 && strcmp(name + nl - 5, ".ziti") == 0 && (qtype == 1 || qtype == 28);
  int a = ziti && qtype == 1;
  memcpy(out, q, qend);
  out[2] = 0x81; out[3] = ziti ? 0x80 : 0x85; /* response, RD, RA; NOERROR or REFUSED */
  out[6] = 0; out[7] = a ? 1 : 0; out[8] = out[9] = out[10] = out[11] = 0;
  size_t len = qend;
  if (a) {
    unsigned char ans[16] = { 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 100, 64, 0, 7 };
    memcpy(out + len, ans, sizeof ans);
    len += sizeof ans;
  }
  return len;
}

/* `tproxy-standin probe-transparent`: can this process set IP_TRANSPARENT (what an nftables
 * TPROXY listener needs)? Prints the answer and the capability sets; exit 0 only if it can. */
static int probe_transparent(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  int ok = setsockopt(s, SOL_IP, IP_TRANSPARENT, &one, sizeof one) == 0;
  printf("IP_TRANSPARENT: %s\n", ok ? "ok" : strerror(errno));
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "probe-transparent") == 0) return probe_transparent();
  const char *p = getenv("ZITI_CNI_TPROXY_PORT");
  if (!p) { fprintf(stderr, "tproxy-standin: ZITI_CNI_TPROXY_PORT is not set\n"); return 2; }
  port = atoi(p);
  dns_server = getenv("ZITI_CNI_DNS_SERVER");
  /* ZITI_CNI_DNS_UPSTREAM: comma list of IPv4/IPv6 addresses, port 53. */
  const char *up = getenv("ZITI_CNI_DNS_UPSTREAM");
  char ups[512];
  snprintf(ups, sizeof ups, "%s", up ? up : "");
  for (char *save = NULL, *tok = strtok_r(ups, ",", &save); tok && n_upstreams < MAX_UPSTREAMS; tok = strtok_r(NULL, ",", &save)) {
    struct sockaddr_in *a4 = (struct sockaddr_in *)&upstream[n_upstreams];
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&upstream[n_upstreams];
    if (inet_pton(AF_INET, tok, &a4->sin_addr) == 1) { a4->sin_family = AF_INET; a4->sin_port = htons(53); n_upstreams++; }
    else if (inet_pton(AF_INET6, tok, &a6->sin6_addr) == 1) { a6->sin6_family = AF_INET6; a6->sin6_port = htons(53); n_upstreams++; }
    else { fprintf(stderr, "tproxy-standin: ZITI_CNI_DNS_UPSTREAM: not an address: %s\n", tok); return 2; }
  }
  /* 127.0.0.1 and [::1]: the tc program assigns each family to its own loopback listener. */
  static int t4, u4, t6, u6;
  t4 = listener(AF_INET, SOCK_STREAM, port);
  u4 = listener(AF_INET, SOCK_DGRAM, port);
  t6 = listener(AF_INET6, SOCK_STREAM, port);
  u6 = listener(AF_INET6, SOCK_DGRAM, port);
  pthread_t th;
  pthread_create(&th, NULL, tcp_loop, &t4);
  pthread_create(&th, NULL, udp_loop, &u4);
  if (t6 >= 0) pthread_create(&th, NULL, tcp_loop, &t6);
  if (u6 >= 0) pthread_create(&th, NULL, udp_loop, &u6);
  printf("READY listening on 127.0.0.1:%d and [::1] tcp+udp%s%s%s%s\n", port, dns_server ? ", DNS at " : "", dns_server ? dns_server : "", n_upstreams ? ", forwarding to " : "", up && n_upstreams ? up : "");
  fflush(stdout);
  for (;;) pause();
}
