/* A resolver for the specs, loaded with LD_PRELOAD into a host that loads
 * the core: getaddrinfo of the name in FLY_SPEC_SLOW_HOST takes
 * FLY_SPEC_SLOW_MS milliseconds (default 1000) and answers for 127.0.0.1;
 * every other name goes to the system's resolver. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
  getaddrinfo_fn next = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
  if (!next) return EAI_SYSTEM;
  const char *slow = getenv("FLY_SPEC_SLOW_HOST");
  if (slow && node && strcmp(node, slow) == 0) {
    const char *ms = getenv("FLY_SPEC_SLOW_MS");
    long wait = ms ? atol(ms) : 1000;
    struct timespec ts = {wait / 1000, (wait % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    node = "127.0.0.1";
  }
  return next(node, service, hints, res);
}
