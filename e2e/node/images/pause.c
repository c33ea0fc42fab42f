/* The sandbox's infra process, like the kubelet's pause image: holds the pod's namespaces,
 * reaps orphans (it is PID 1 of the sandbox), exits 0 on SIGTERM/SIGINT so StopPodSandbox
 * needs no kill timeout. Built static: the image has no libc. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
  struct sigaction term = { .sa_handler = leave }, child = { .sa_handler = reap, .sa_flags = SA_NOCLDSTOP };
  sigaction(SIGTERM, &term, NULL);
  sigaction(SIGINT, &term, NULL);
  sigaction(SIGCHLD, &child, NULL);
  for (;;) pause();
}
