/* Stand-in for a tunneler honouring ziti-cni's tproxy contract (README, "tproxy contract"):
 * one catch-all on 127.0.0.1:$ZITI_CNI_TPROXY_PORT for TCP and UDP, the original destination
 * from getsockname() (TCP) or IP_RECVORIGDSTADDR (UDP), UDP replies sent from that original
 * address, and DNS answers for queries to $ZITI_CNI_DNS_SERVER:53 (names under .ziti).
 * Plain sockets, no capability: it needs nothing the pod does not hold.
 * Each exchange is answered with a line naming what it saw, so tests check replies. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IP_RECVORIGDSTADDR
#define IP_RECVORIGDSTADDR 20
#endif

static int port;
static const char *dns_server;

static size_t dns_answer(const unsigned char *q, size_t n, unsigned char *out);

static void die(const char *what) { fprintf(stderr, "tproxy-standin: %s: %s\n", what, strerror(errno)); exit(1); }

static int listener(int type, int p) {
  int s = socket(AF_INET, type, 0), one = 1;
  if (s < 0) die("socket");
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (type == SOCK_DGRAM && setsockopt(s, SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof one) < 0) die("IP_RECVORIGDSTADDR");
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(p), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (type == SOCK_STREAM && listen(s, 128) < 0) die("listen");
  return s;
}

static void *tcp_loop(void *arg) {
  int s = *(int *)arg;
  for (;;) {
    struct sockaddr_in peer, dst;
    socklen_t pl = sizeof peer, dl = sizeof dst;
    int c = accept(s, (struct sockaddr *)&peer, &pl);
    if (c < 0) continue;
    getsockname(c, (struct sockaddr *)&dst, &dl);
    char d[INET_ADDRSTRLEN], p[INET_ADDRSTRLEN], line[160];
    inet_ntop(AF_INET, &dst.sin_addr, d, sizeof d);
    inet_ntop(AF_INET, &peer.sin_addr, p, sizeof p);
    int n = snprintf(line, sizeof line, "tproxy proto=tcp orig_dst=%s:%d peer=%s\n", d, ntohs(dst.sin_port), p);
    if (write(c, line, n) < 0) { /* the client went away */ }
    close(c);
  }
  return NULL;
}

static void *udp_loop(void *arg) {
  int s = *(int *)arg;
  for (;;) {
    char buf[2048], ctl[256];
    struct sockaddr_in peer, dst = { 0 };
    struct iovec iov = { buf, sizeof buf };
    struct msghdr m = { .msg_name = &peer, .msg_namelen = sizeof peer, .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    ssize_t got = recvmsg(s, &m, 0);
    if (got < 0) continue;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
      if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVORIGDSTADDR) memcpy(&dst, CMSG_DATA(c), sizeof dst);
    char d[INET_ADDRSTRLEN], p[INET_ADDRSTRLEN], line[600];
    inet_ntop(AF_INET, &dst.sin_addr, d, sizeof d);
    inet_ntop(AF_INET, &peer.sin_addr, p, sizeof p);
    int n;
    if (dns_server && strcmp(d, dns_server) == 0 && ntohs(dst.sin_port) == 53) n = (int)dns_answer((unsigned char *)buf, (size_t)got, (unsigned char *)line);
    else n = snprintf(line, sizeof line, "tproxy proto=udp orig_dst=%s:%d peer=%s\n", d, ntohs(dst.sin_port), p);
    if (n <= 0) continue;
    /* Reply from the original destination, as a transparent proxy must: a connected client
     * accepts nothing else. */
    int r = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
    setsockopt(r, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(r, (struct sockaddr *)&dst, sizeof dst) < 0) fprintf(stderr, "tproxy-standin: bind %s:%d: %s\n", d, ntohs(dst.sin_port), strerror(errno));
    else if (sendto(r, line, n, 0, (struct sockaddr *)&peer, sizeof peer) < 0) fprintf(stderr, "tproxy-standin: sendto: %s\n", strerror(errno));
    close(r);
  }
  return NULL;
}

/* DNS (contract item 5): a query to $ZITI_CNI_DNS_SERVER:53 arrives at the catch-all like any
 * intercepted flow. A queries for *.ziti get 100.64.0.7; anything else gets REFUSED, which
 * sends glibc to the next nameserver and which musl ignores while it waits for the others.
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
  int ziti = nl > 5 && strcmp(name + nl - 5, ".ziti") == 0;
  memcpy(out, q, qend);
  out[2] = 0x81; out[3] = ziti ? 0x80 : 0x85; /* response, RD, RA; NOERROR or REFUSED */
  out[6] = 0; out[7] = ziti ? 1 : 0; out[8] = out[9] = out[10] = out[11] = 0;
  size_t len = qend;
  if (ziti) {
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
  static int t, u;
  t = listener(SOCK_STREAM, port);
  u = listener(SOCK_DGRAM, port);
  pthread_t th;
  pthread_create(&th, NULL, tcp_loop, &t);
  pthread_create(&th, NULL, udp_loop, &u);
  printf("READY listening on 127.0.0.1:%d tcp+udp%s%s\n", port, dns_server ? ", DNS at " : "", dns_server ? dns_server : "");
  fflush(stdout);
  for (;;) pause();
}
