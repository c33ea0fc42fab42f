/*
 * ziti-cni front end: a static executable (no loader, no libc, no shell needed on the node)
 * that runs the TypeScript plugin, a Node SEA, through the loader and libraries installed
 * beside it in <dir>/ziti-cni.d/. The loader path is derived at run time, so the CNI bin dir
 * may be anywhere (/opt/cni/bin, /home/kubernetes/bin, k3s' data dir) with nothing rewritten
 * at install time. It only calls execve(): no NSS, no locale, no /proc (argv[0] first; libcni
 * execs plugins by absolute path, invoke.FindInPath). Environment, stdin and stdout pass
 * through untouched; on failure it prints the CNI error JSON (spec: errors go to stdout).
 */
#include <string.h>
#include <unistd.h>

#define RUNTIME_DIR "ziti-cni.d"
#define MAX_PATH 4096

static void fail(const char *msg, const char *path) {
  static const char head[] = "{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"ziti-cni front end: ";
  (void)!write(1, head, sizeof head - 1);
  (void)!write(1, msg, strlen(msg));
  /* A path from argv[0] or /proc; JSON-escape the two characters that could break the object. */
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

int main(int argc, char **argv, char **envp) {
  char self[MAX_PATH], ld[MAX_PATH], libs[MAX_PATH], sea[MAX_PATH];
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
  join(ld, self, dirlen, "/" RUNTIME_DIR "/ld.so");
  join(libs, self, dirlen, "/" RUNTIME_DIR);
  join(sea, self, dirlen, "/" RUNTIME_DIR "/ziti-cni-node");
  /* --inhibit-cache: never the host's ld.so.cache, so no host library is ever mixed in. */
  char *args[] = { ld, "--inhibit-cache", "--library-path", libs, sea, NULL };
  execve(ld, args, envp);
  fail("cannot exec its loader ", ld);
  return 1;
}
