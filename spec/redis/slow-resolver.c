/* A resolver for the specs, loaded with LD_PRELOAD (into the Redis driver, or
 * a host that loads the core): getaddrinfo of the name in FLY_SPEC_SLOW_HOST
 * takes FLY_SPEC_SLOW_MS milliseconds (default 1000) and answers for
 * 127.0.0.1, or, from its FLY_SPEC_SLOW_FAIL_FROM-th call on, fails
 * (EAI_NONAME); each such call prints "resolve <name> <main|thread>" on
 * stdout (which thread asked). Every other name goes to the system's
 * resolver. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
  static _Atomic int calls; /* resolutions of the slow name so far */
  getaddrinfo_fn next = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
  if (!next) return EAI_SYSTEM;
  const char *slow = getenv("FLY_SPEC_SLOW_HOST");
  if (slow && node && strcmp(node, slow) == 0) {
    const char *ms = getenv("FLY_SPEC_SLOW_MS"), *fail = getenv("FLY_SPEC_SLOW_FAIL_FROM");
    long wait = ms ? atol(ms) : 1000;
    int nth = ++calls;
    printf("resolve %s %s\n", node, syscall(SYS_gettid) == getpid() ? "main" : "thread");
    fflush(stdout);
    struct timespec ts = {wait / 1000, (wait % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    if (fail && nth >= atoi(fail)) return EAI_NONAME;
    node = "127.0.0.1";
  }
  return next(node, service, hints, res);
}
