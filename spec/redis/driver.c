/* Drives the shared rate limiter (csrc/redis.c) without a client: admits
 * requests against one bucket in a poll loop, as the client's loop will, and
 * prints when each one was let go.
 *
 *   redis-driver [options] URL KEY RATE BURST COUNT
 *     --batch          admit all COUNT at once (as concurrent tasks would),
 *                      instead of one after the other
 *     --pause N FILE   after N grants print "paused" and wait until FILE exists
 *                      (--batch: N = 0, before the batch, once connected)
 *                      (at most 60 s, then exit with status 3)
 *     --timeout S      seconds an admission may wait for Redis (0.1)
 *     --retry S        seconds between reconnections while down (5)
 *     --penalize K     send every K-th admission as after a 429
 *     --jitter S       before each admission (one after the other), pause a
 *                      random time below S seconds
 *     --abandon        with --batch: cancel the first admission and free the
 *                      limiter with the others in flight, then exit
 *     --compare        also reserve each admission in a local bucket of the
 *                      same limit (ratelimit.c) when Redis's answer arrives and
 *                      print "compare <n> <Redis's ready time - the local one>"
 *     --http URL TOKEN after each grant, POST to URL (the emulator's
 *                      Machines_start) and print "http <n> <status>"; waits get
 *                      the core's 20 ms margin, as the client's do
 *     --owner BASE TOKEN  the bucket is the client's for (BASE, TOKEN), action
 *                      "machine_start", scope KEY (fly_redis_identity/_key);
 *                      the key is printed as "key <name>"
 *     --hold-warnings  take the limiter's warnings only at the end (they pile
 *                      up in it meanwhile), instead of after every answer
 *
 * Output, one line each:
 *   grant <n> <wall-clock seconds> <redis|local> <answer latency in microseconds>
 *   warning <text>
 *   stats granted=<n> local=<n> reloads=<n> connects=<n> down=<0|1>
 *   maxrss <the process's peak resident memory, KB>
 * Exit status 0 when all COUNT were granted. A bad URL: status 2 and the
 * message on stderr. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "../../csrc/ratelimit.h"
#include "../../csrc/redis.h"

typedef struct {
  int n;
  int asked;      /* admission sent, answer not yet in */
  double sent;
  double ready;   /* monotonic */
  int redis;      /* granted by Redis (else by the local bucket) */
  int done;       /* ready is known (2: granted) */
  int penalize;
  double compare; /* Redis's ready time minus the comparison bucket's */
  double latency; /* seconds from admission to answer */
} slot;

static int hold_warnings; /* the driver is one thread: plain statics */

static double wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void warnings(fly_redis *r) {
  const char *w;
  if (hold_warnings) return;
  while ((w = fly_redis_warning(r, NULL))) printf("warning %s\n", w);
  fflush(stdout);
}

/* One turn of the loop: wait at most max_wait seconds on the socket and the
 * limiter's timeout, then let it work and collect its answers. */
static const char *compare_key; /* the driver is one thread: plain statics */
static const char *http_url, *http_token;
static double margin;

static size_t discard(char *p, size_t size, size_t n, void *ud) {
  (void)p, (void)ud;
  return size * n;
}

/* One blocking POST: the driver stands in for the client, whose requests
 * run on its loop. */
static long post(void) {
  CURL *e = curl_easy_init();
  if (!e) return -1;
  char auth[512];
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", http_token);
  struct curl_slist *h = curl_slist_append(NULL, auth);
  curl_easy_setopt(e, CURLOPT_URL, http_url);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, 10L);
  long status = -1;
  if (curl_easy_perform(e) == CURLE_OK) curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  curl_easy_cleanup(e);
  return status;
}

static void pump(fly_redis *r, double max_wait, slot *slots, const char *local_key, fly_limit limit) {
  short events;
  int fd = fly_redis_fd(r, &events);
  double now = fly_now();
  double t = fly_redis_next_timeout(r, now);
  if (t < 0 || t > max_wait) t = max_wait;
  if (t < 0) t = 0;
  struct pollfd pfd = {fd, events, 0};
  int n = poll(&pfd, fd >= 0 ? 1 : 0, (int)ceil(t * 1000));
  now = fly_now();
  fly_redis_io(r, n > 0 ? pfd.revents : 0, now);
  fly_redis_answer a;
  while (fly_redis_next(r, &a)) {
    slot *s = &slots[(intptr_t)a.cookie - 1];
    s->asked = 0;
    s->done = 1;
    s->latency = now - s->sent;
    if (a.status == FLY_REDIS_GRANTED) {
      /* the local bucket counts this process's requests too, so that a
         fallback goes on from where this process stood, not from a full
         bucket; it never holds a request longer than Redis does unless
         Redis lost its state (a restart) */
      double local = fly_rate_reserve(local_key, limit, now);
      s->ready = (a.ready_at > local ? a.ready_at : local) + margin;
      if (s->ready < now) s->ready = now;
      s->redis = 1;
      if (compare_key) {
        if (s->penalize) fly_rate_penalize(compare_key, limit, now);
        /* when each lets the request go (a reservation's time may be long past) */
        double local_at = fly_rate_reserve(compare_key, limit, now);
        s->compare = (a.ready_at > now ? a.ready_at : now) - (local_at > now ? local_at : now);
      }
    } else {
      s->ready = fly_rate_admit(local_key, limit, now, margin);
    }
  }
  warnings(r);
}

static void admit(fly_redis *r, slot *s, const char *key, const char *local_key, fly_limit limit,
                  int every) {
  s->sent = fly_now();
  s->penalize = every > 0 && s->n % every == 0;
  if (fly_redis_admit(r, key, limit, s->penalize, INFINITY, (void *)(intptr_t)s->n, s->sent) == 0) {
    s->asked = 1;
  } else {
    s->done = 1;
    s->ready = fly_rate_admit(local_key, limit, fly_now(), margin);
  }
}

static void grant(fly_redis *r, slot *s, slot *slots, const char *local_key, fly_limit limit) {
  double now;
  while ((now = fly_now()) < s->ready) pump(r, s->ready - now, slots, local_key, limit);
  printf("grant %d %.6f %s %.0f\n", s->n, wall(), s->redis ? "redis" : "local", s->latency * 1e6);
  if (compare_key && s->redis) printf("compare %d %.6f\n", s->n, s->compare);
  if (http_url) printf("http %d %ld\n", s->n, post());
  fflush(stdout);
}

/* Prints "paused" and runs the loop until go_file exists; 0 after 60 s (a
 * spec that failed never says go). */
static int wait_for_go(fly_redis *r, const char *go_file, slot *slots, const char *local_key,
                       fly_limit limit) {
  printf("paused\n");
  fflush(stdout);
  double give_up = fly_now() + 60;
  while (access(go_file, F_OK) != 0) {
    if (fly_now() > give_up) return 0;
    pump(r, 0.02, slots, local_key, limit);
  }
  return 1;
}

int main(int argc, char **argv) {
  int batch = 0, penalize = 0, pause_after = -1;
  const char *go_file = NULL, *base = NULL, *token = NULL;
  double timeout = 0.1, retry = 5, jitter = 0;
  int compare = 0, abandon = 0;
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    if (strcmp(argv[i], "--batch") == 0) batch = 1;
    else if (strcmp(argv[i], "--penalize") == 0 && i + 1 < argc) penalize = atoi(argv[++i]);
    else if (strcmp(argv[i], "--jitter") == 0 && i + 1 < argc) jitter = atof(argv[++i]);
    else if (strcmp(argv[i], "--compare") == 0) compare = 1;
    else if (strcmp(argv[i], "--abandon") == 0) abandon = 1;
    else if (strcmp(argv[i], "--http") == 0 && i + 2 < argc) http_url = argv[++i], http_token = argv[++i];
    else if (strcmp(argv[i], "--pause") == 0 && i + 2 < argc) pause_after = atoi(argv[++i]), go_file = argv[++i];
    else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) timeout = atof(argv[++i]);
    else if (strcmp(argv[i], "--retry") == 0 && i + 1 < argc) retry = atof(argv[++i]);
    else if (strcmp(argv[i], "--owner") == 0 && i + 2 < argc) base = argv[++i], token = argv[++i];
    else if (strcmp(argv[i], "--hold-warnings") == 0) hold_warnings = 1;
    else break;
  }
  if (argc - i != 5) {
    fprintf(stderr, "usage: redis-driver [--batch] [--pause N FILE] [--timeout S] [--retry S] "
                    "[--penalize K] [--jitter S] [--compare] [--abandon] [--http URL TOKEN] [--owner BASE TOKEN] URL KEY RATE BURST COUNT\n");
    return 2;
  }
  const char *url = argv[i], *key = argv[i + 1];
  char owned_key[512];
  if (base) {
    char id[FLY_REDIS_ID_LEN + 1];
    if (!fly_redis_identity(base, strlen(base), token, strlen(token), id)) return 1;
    if (fly_redis_key(owned_key, sizeof owned_key, id, "machine_start", key) >= sizeof owned_key) return 1;
    key = owned_key;
    printf("key %s\n", key);
  }
  fly_limit limit = {atof(argv[i + 2]), atof(argv[i + 3])};
  int count = atoi(argv[i + 4]);
  char err[256], local_key[600];
  snprintf(local_key, sizeof local_key, "local|%s", key);
  char cmp_key[600];
  snprintf(cmp_key, sizeof cmp_key, "compare|%s", key);
  if (compare) compare_key = cmp_key;
  if (http_url) {
    margin = 0.02;
    curl_global_init(CURL_GLOBAL_DEFAULT);
  }
  unsigned seed = (unsigned)getpid() ^ (unsigned)(fly_now() * 1e6);
  fly_redis *r = fly_redis_new(url, timeout, retry, err, sizeof err);
  if (!r) {
    fprintf(stderr, "redis-driver: %s\n", err);
    return 2;
  }
  fly_redis_connect(r, fly_now()); /* connected (and the script loaded) before any pause */
  slot *slots = calloc((size_t)count + 1, sizeof *slots);
  if (!slots) return 1;
  for (int k = 0; k < count; k++) slots[k].n = k + 1;
  int granted = 0;
  if (batch) {
    if (pause_after == 0 && !wait_for_go(r, go_file, slots, local_key, limit)) return 3;
    for (int k = 0; k < count; k++) admit(r, &slots[k], key, local_key, limit, penalize);
    if (abandon) { /* the owner goes away with admissions in flight */
      fly_redis_cancel(r, (void *)(intptr_t)1);
      fly_redis_free(r);
      free(slots);
      printf("abandoned\n");
      return 0;
    }
    for (int k = 0; k < count; k++) {
      while (!slots[k].done) pump(r, 1, slots, local_key, limit);
    }
    /* in the order they may go */
    for (int left = count; left > 0; left--) {
      slot *next = NULL;
      for (int k = 0; k < count; k++)
        if (slots[k].done == 1 && (!next || slots[k].ready < next->ready)) next = &slots[k];
      grant(r, next, slots, local_key, limit);
      next->done = 2;
      granted++;
    }
  } else {
    for (int k = 0; k < count; k++) {
      if (jitter > 0) {
        double until = fly_now() + jitter * rand_r(&seed) / ((double)RAND_MAX + 1), now;
        while ((now = fly_now()) < until) pump(r, until - now, slots, local_key, limit);
      }
      admit(r, &slots[k], key, local_key, limit, penalize);
      while (!slots[k].done) pump(r, 1, slots, local_key, limit);
      grant(r, &slots[k], slots, local_key, limit);
      granted++;
      if (granted == pause_after && !wait_for_go(r, go_file, slots, local_key, limit)) return 3;
    }
  }
  hold_warnings = 0; /* the end: whatever is left is told now */
  warnings(r);
  fly_redis_stats st;
  fly_redis_get_stats(r, &st);
  printf("stats granted=%lu local=%lu reloads=%lu connects=%lu down=%d\n", st.granted, st.local,
         st.reloads, st.connects, st.down);
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) printf("maxrss %ld\n", ru.ru_maxrss);
  fflush(stdout);
  fly_redis_free(r);
  free(slots);
  if (http_url) curl_global_cleanup();
  return granted == count ? 0 : 1;
}
