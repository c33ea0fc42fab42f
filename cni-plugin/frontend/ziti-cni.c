/*
 * ziti-cni front end: a static executable (no loader, no libc, no shell needed on the node).
 * Two paths, one plugin (the TypeScript in src/plugin):
 *  1. Forward: read the agent's socket path from <dir>/ziti-cni.d/agent-socket (the installer
 *     writes it), send the whole invocation (the CNI_* variables the plugin reads and stdin) as
 *     one EXEC line, print the agent's answer and exit with its code. The agent runs the same
 *     runPlugin() in-process, so no Node starts on a pod start (src/agent/exec.ts).
 *  2. Fallback, on ANY failure before a complete answer (no file, no agent, timeout, a short
 *     or foreign reply, an agent that answers `fallback:`): exec the Node SEA in ziti-cni.d/
 *     through the loader and libraries installed beside it, with stdin replayed from a memfd,
 *     exactly as if this path had not been tried: the agent-down logic (intent snapshot, fail
 *     closed) lives there. Nothing is printed before a complete answer, so the fallback's
 *     output is the only output.
 * Paths derive from argv[0] (libcni execs plugins by absolute path, invoke.FindInPath), so the
 * CNI bin dir may be anywhere. No NSS, no locale; stdout carries only the CNI answer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define RUNTIME_DIR "ziti-cni.d"
#define MAX_PATH 4096
/* MAX_MESSAGE_BYTES in src/cni/agent-protocol.ts: the request line and the answer, each. */
#define MAX_MESSAGE (4 << 20)
#define DEFAULT_TIMEOUT_S 10

/* The variables src/cni/request.ts reads (EXEC_ENV_KEYS in agent-protocol.ts). */
static const char *const ENV_KEYS[] = { "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH" };

static char input[MAX_MESSAGE + 1]; /* stdin as read so far (one byte more tells too large) */
static size_t input_len;
static int input_read;            /* stdin consumed (so the fallback must replay it) */
static int input_whole;           /* ... and all of it is in input[] */
static char request[MAX_MESSAGE];
static size_t request_len;
static int request_overflow;
static char reply[MAX_MESSAGE + 64];

static void fail(const char *msg, const char *path) {
  static const char head[] = "{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"ziti-cni front end: ";
  (void)!write(1, head, sizeof head - 1);
  (void)!write(1, msg, strlen(msg));
  /* A path from argv[0]; JSON-escape the two characters that could break the object. */
  for (const char *p = path; p && *p; p++) {
    if (*p == '"' || *p == '\\') (void)!write(1, "\\", 1);
    if ((unsigned char)*p >= 0x20) (void)!write(1, p, 1);
  }
  (void)!write(1, "\"}\n", 3);
  _exit(1);
}

static size_t join(char *out, const char *dir, size_t dirlen, const char *tail) {
  size_t t = strlen(tail);
  if (dirlen + t + 1 > MAX_PATH) fail("path too long: ", dir);
  memcpy(out, dir, dirlen);
  memcpy(out + dirlen, tail, t + 1);
  return dirlen + t;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads fd into buf until EOF or cap bytes; returns the count, -1 on error (EINTR retried). */
static ssize_t read_upto(int fd, char *buf, size_t cap) {
  size_t n = 0;
  while (n < cap) {
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    n += (size_t)r;
  }
  return (ssize_t)n;
}

static void put(const char *p, size_t n) {
  if (request_overflow || n > sizeof request - request_len) { request_overflow = 1; return; }
  memcpy(request + request_len, p, n);
  request_len += n;
}

#define PUT_LITERAL(s) put(s, sizeof s - 1)

/* A JSON string: `"` and `\` escaped, control bytes as \u00XX, every other byte as is. */
static void put_json_string(const char *p, size_t n) {
  static const char hex[] = "0123456789abcdef";
  put("\"", 1);
  for (size_t i = 0; i < n && !request_overflow; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '"' || c == '\\') { char e[2] = { '\\', (char)c }; put(e, 2); }
    else if (c < 0x20 || c == 0x7f) { char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] }; put(e, 6); }
    else put((const char *)&c, 1);
  }
  put("\"", 1);
}

/* The agent's socket path and timeout from ziti-cni.d/agent-socket; 0 when unusable. */
static int read_agent_address(const char *file, struct sockaddr_un *addr, int *timeout_s) {
  char buf[256];
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read_upto(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *nl = strchr(buf, '\n');
  if (!nl || buf[0] != '/') return 0;
  size_t len = (size_t)(nl - buf);
  if (len >= sizeof addr->sun_path) return 0;
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  memcpy(addr->sun_path, buf, len);
  *timeout_s = DEFAULT_TIMEOUT_S;
  char *end;
  long t = strtol(nl + 1, &end, 10);
  if (end != nl + 1 && t > 0 && t <= 120) *timeout_s = (int)t;
  return 1;
}

/* "<exitCode> <bytes>\n" then exactly that many bytes; returns the header length, 0 if not. */
static size_t parse_reply_header(const char *p, size_t n, int *code, size_t *body) {
  size_t i = 0;
  long c = 0, b = 0;
  if (i >= n || p[i] < '0' || p[i] > '9') return 0;
  while (i < n && p[i] >= '0' && p[i] <= '9' && i < 3) c = c * 10 + (p[i++] - '0');
  if (c > 255 || i >= n || p[i++] != ' ') return 0;
  size_t digits = i;
  while (i < n && p[i] >= '0' && p[i] <= '9' && i - digits < 8) b = b * 10 + (p[i++] - '0');
  if (i == digits || i >= n || p[i++] != '\n') return 0;
  *code = (int)c;
  *body = (size_t)b;
  return i;
}

/* Path 1. Returns only if the agent did not give a complete answer; otherwise exits with it. */
static void forward(const char *address_file, char **envp, int is_version) {
  struct sockaddr_un addr;
  int timeout_s;
  if (!read_agent_address(address_file, &addr, &timeout_s)) return;
  if (!is_version) {
    /* input_len counts every byte taken from fd 0, so the replay loses none even on an error. */
    input_read = 1;
    for (;;) {
      ssize_t r = read(0, input + input_len, sizeof input - input_len);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return;
      if (r == 0) break;
      input_len += (size_t)r;
      if (input_len == sizeof input) return; /* over MAX_MESSAGE: too large to forward; the replay sends it all */
    }
    input_whole = 1;
  }
  PUT_LITERAL("{\"command\":\"EXEC\",\"env\":{");
  int first = 1;
  for (size_t k = 0; k < sizeof ENV_KEYS / sizeof *ENV_KEYS; k++) {
    size_t kl = strlen(ENV_KEYS[k]);
    for (char **e = envp; *e; e++) {
      if (strncmp(*e, ENV_KEYS[k], kl) != 0 || (*e)[kl] != '=') continue;
      if (!first) put(",", 1);
      first = 0;
      put_json_string(ENV_KEYS[k], kl);
      put(":", 1);
      put_json_string(*e + kl + 1, strlen(*e + kl + 1));
      break;
    }
  }
  PUT_LITERAL("},\"stdin\":");
  put_json_string(input, input_len);
  put("}\n", 2);
  if (request_overflow) return;

  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  struct timeval tv = { .tv_sec = timeout_s, .tv_usec = 0 };
  /* SO_SNDTIMEO also bounds connect() on a unix socket whose backlog is full. */
  if (setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 || setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
      connect(s, (struct sockaddr *)&addr, sizeof addr) != 0 || write_all(s, request, request_len) != 0) { close(s); return; }
  ssize_t got = read_upto(s, reply, sizeof reply);
  close(s);
  if (got <= 0) return;
  int code;
  size_t body;
  size_t head = parse_reply_header(reply, (size_t)got, &code, &body);
  if (head == 0 || head + body != (size_t)got) return;
  if (write_all(1, reply + head, body) != 0) _exit(1);
  _exit(code);
}

int main(int argc, char **argv, char **envp) {
  char self[MAX_PATH], ld[MAX_PATH], libs[MAX_PATH], sea[MAX_PATH], address[MAX_PATH];
  const char *a0 = argc > 0 ? argv[0] : "";
  if (strchr(a0, '/')) {
    size_t n = strlen(a0);
    if (n >= MAX_PATH) fail("argv[0] too long: ", "");
    memcpy(self, a0, n + 1);
  } else {
    ssize_t n = readlink("/proc/self/exe", self, MAX_PATH - 1);
    if (n <= 0) fail("cannot find its own directory (argv[0] has no '/', /proc/self/exe unreadable)", "");
    self[n] = 0;
  }
  size_t dirlen = (size_t)(strrchr(self, '/') - self);
  join(address, self, dirlen, "/" RUNTIME_DIR "/agent-socket");
  const char *command = getenv("CNI_COMMAND");
  /* VERSION: stdin is not read (as the Node plugin, src/plugin/main.ts). */
  forward(address, envp, command && strcmp(command, "VERSION") == 0);

  if (input_read) {
    /* Replay what was read, then whatever of stdin is left, as fd 0 for the Node plugin. */
    int m = memfd_create("ziti-cni-stdin", MFD_CLOEXEC);
    if (m < 0) fail("cannot create a memfd to replay stdin to the Node plugin", "");
    if (write_all(m, input, input_len) != 0) fail("cannot replay stdin", "");
    if (!input_whole) {
      for (;;) {
        ssize_t r = read(0, request, sizeof request);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (write_all(m, request, (size_t)r) != 0) fail("cannot replay stdin", "");
      }
    }
    if (lseek(m, 0, SEEK_SET) != 0 || dup2(m, 0) != 0) fail("cannot replay stdin", "");
    close(m);
  }
  join(ld, self, dirlen, "/" RUNTIME_DIR "/ld.so");
  join(libs, self, dirlen, "/" RUNTIME_DIR);
  join(sea, self, dirlen, "/" RUNTIME_DIR "/ziti-cni-node");
  /* --inhibit-cache: never the host's ld.so.cache, so no host library is ever mixed in. */
  char *args[] = { ld, "--inhibit-cache", "--library-path", libs, sea, NULL };
  execve(ld, args, envp);
  fail("cannot exec its loader ", ld);
  return 1;
}
