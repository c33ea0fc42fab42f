/* resolve NAME [unspec|4|6 [COUNT]]: COUNT (default 1) getaddrinfo() calls, one after the
 * other, as an application makes them (no AI_ADDRCONFIG, SOCK_STREAM so each address appears
 * once), each timed with the monotonic clock.
 * Built twice by the node suite: static with musl (an Alpine app's resolver) and dynamic with
 * glibc (a Debian app's). Prints one JSON line per call:
 *   {"libc":"musl","name":"pg.ziti","family":"unspec","rc":0,"error":"","ms":1.234,"addresses":["100.64.0.7"]}
 * Exit 0 when every call returned addresses, 2 when one failed, 64 on bad usage. */
#define _GNU_SOURCE /* glibc declares EAI_NODATA only then */
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#ifdef __GLIBC__
#define LIBC "glibc"
#else
#define LIBC "musl"
#endif

static const char *eai_name(int rc) {
  switch (rc) {
  case 0: return "";
  case EAI_NONAME: return "EAI_NONAME";
  case EAI_AGAIN: return "EAI_AGAIN";
  case EAI_FAIL: return "EAI_FAIL";
  case EAI_FAMILY: return "EAI_FAMILY";
  case EAI_MEMORY: return "EAI_MEMORY";
  case EAI_SERVICE: return "EAI_SERVICE";
  case EAI_SYSTEM: return "EAI_SYSTEM";
#ifdef EAI_NODATA
  case EAI_NODATA: return "EAI_NODATA";
#endif
  default: return "EAI_OTHER";
  }
}

static int lookup(const char *name, const char *fam, const struct addrinfo *hints) {
  struct timespec t0, t1;
  struct addrinfo *res = NULL;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = getaddrinfo(name, NULL, hints, &res);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;

  printf("{\"libc\":\"%s\",\"name\":\"%s\",\"family\":\"%s\",\"rc\":%d,\"error\":\"%s\",\"ms\":%.3f,\"addresses\":[", LIBC, name, fam, rc, eai_name(rc), ms);
  int n = 0;
  for (struct addrinfo *a = rc == 0 ? res : NULL; a; a = a->ai_next) {
    char buf[INET6_ADDRSTRLEN] = "";
    const void *src = a->ai_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr : (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr;
    inet_ntop(a->ai_family, src, buf, sizeof buf);
    printf("%s\"%s\"", n++ ? "," : "", buf);
  }
  printf("]}\n");
  fflush(stdout);
  if (res) freeaddrinfo(res);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 4) { fprintf(stderr, "usage: resolve NAME [unspec|4|6 [COUNT]]\n"); return 64; }
  const char *fam = argc >= 3 ? argv[2] : "unspec";
  struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
  if (strcmp(fam, "4") == 0) hints.ai_family = AF_INET;
  else if (strcmp(fam, "6") == 0) hints.ai_family = AF_INET6;
  else if (strcmp(fam, "unspec") == 0) hints.ai_family = AF_UNSPEC;
  else { fprintf(stderr, "resolve: family must be unspec, 4 or 6, not %s\n", fam); return 64; }
  char *end;
  long count = argc == 4 ? strtol(argv[3], &end, 10) : 1;
  if (argc == 4 && (*end || count < 1 || count > 1000)) { fprintf(stderr, "resolve: COUNT must be 1..1000, not %s\n", argv[3]); return 64; }
  /* The name goes into JSON unescaped: refuse anything a hostname cannot hold. */
  for (const char *c = argv[1]; *c; c++)
    if (!(*c == '.' || *c == '-' || *c == '_' || (*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == ':')) { fprintf(stderr, "resolve: NAME holds '%c'\n", *c); return 64; }
  int failed = 0;
  for (long i = 0; i < count; i++) failed |= lookup(argv[1], fam, &hints) != 0;
  return failed ? 2 : 0;
}
