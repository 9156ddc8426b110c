/* bench/timeline.c — where a sequential client's time goes, call by call.
 *
 * Built by bench/run as build/bench-timeline.so and preloaded
 * (LD_PRELOAD) into build/bench-plain and into the Lua running
 * bench/get.lua: it wraps poll, send, sendto, recv and recvfrom, notes when
 * each request goes out, when the client starts and stops sleeping in a poll
 * that may block, and when it reads its answer, and at exit writes to the
 * file named by BENCH_TIMELINE one line of medians over the calls (the first
 * fifth left out as warm-up), in microseconds, each over the calls where
 * both its ends were seen (nan when none was):
 *
 *   calls <n> answer_to_request <a> request_to_sleep <b> asleep <c> wake_to_read <d>
 *   answer_to_request_mean <a'> request_to_sleep_mean <b'> asleep_mean <c'> wake_to_read_mean <d'>
 *   [truncated]
 *
 *   answer_to_request  from the last read of an answer to the next request's
 *                      send: the client's own work between two calls (the
 *                      answer's handling, the caller, building and sending
 *                      the next request), which no server time hides
 *   request_to_sleep   from a send to the poll that sleeps: the send itself
 *                      and whatever the client does before it waits
 *   asleep             time in polls that may block, between a send and the
 *                      first read of its answer (the server's time and the
 *                      wake-up)
 *   wake_to_read       from the end of that sleep to the read
 *
 * and each span's mean (..._mean): the median is the usual call, the mean
 * also counts the calls that pay for something now and then (the collector's
 * step, the allocator sorting what was freed, an interrupt), and it is the
 * means that the rate feels: together they are the time of a call.
 *
 * Plain HTTP only (over TLS the library reads and writes through its own
 * calls); one connection at a time, one thread (the recording takes no
 * lock; a name lookup's thread makes no such calls on 127.0.0.1). `calls`
 * is the number of requests sent after the warm-up; `truncated` says the
 * run outgrew the event buffer and its end was not recorded. Without
 * BENCH_TIMELINE it records nothing. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define EVENTS_MOST (1 << 22)

enum { SEND, READ, SLEEP, WAKE };

static struct event {
  double t;
  int kind;
} *events;
static size_t nevents;
static int truncated;
static int off; /* BENCH_TIMELINE unset, or no memory: record nothing */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void note(int kind) {
  if (off) return;
  if (!events) {
    if (!getenv("BENCH_TIMELINE") || !(events = malloc(EVENTS_MOST * sizeof *events))) {
      off = 1;
      return;
    }
  }
  if (nevents < EVENTS_MOST) events[nevents++] = (struct event){now(), kind};
  else truncated = 1;
}

static void *next_fn(const char *name) {
  void *f = dlsym(RTLD_NEXT, name);
  if (!f) {
    fprintf(stderr, "bench-timeline: no %s to wrap\n", name);
    abort();
  }
  return f;
}

int poll(struct pollfd *fds, nfds_t n, int timeout_ms) {
  static int (*real)(struct pollfd *, nfds_t, int);
  if (!real) real = (int (*)(struct pollfd *, nfds_t, int))next_fn("poll");
  if (timeout_ms == 0) return real(fds, n, 0);
  note(SLEEP);
  int r = real(fds, n, timeout_ms);
  note(WAKE);
  return r;
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
  static ssize_t (*real)(int, const void *, size_t, int);
  if (!real) real = (ssize_t(*)(int, const void *, size_t, int))next_fn("send");
  note(SEND);
  return real(fd, buf, len, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen) {
  static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
  if (!real) real = (ssize_t(*)(int, const void *, size_t, int, const struct sockaddr *, socklen_t))next_fn("sendto");
  note(SEND);
  return real(fd, buf, len, flags, to, tolen);
}

ssize_t recv(int fd, void *buf, size_t len, int flags) {
  static ssize_t (*real)(int, void *, size_t, int);
  if (!real) real = (ssize_t(*)(int, void *, size_t, int))next_fn("recv");
  ssize_t r = real(fd, buf, len, flags);
  if (r > 0) note(READ);
  return r;
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen) {
  static ssize_t (*real)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
  if (!real) real = (ssize_t(*)(int, void *, size_t, int, struct sockaddr *, socklen_t *))next_fn("recvfrom");
  ssize_t r = real(fd, buf, len, flags, from, fromlen);
  if (r > 0) note(READ);
  return r;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The mean of v[0..n), or NAN when n is 0. */
static double mean(const double *v, size_t n) {
  if (n == 0) return NAN;
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += v[i];
  return sum / (double)n;
}

/* The median of v[0..n) (which it sorts), or NAN when n is 0. */
static double median(double *v, size_t n) {
  if (n == 0) return NAN;
  qsort(v, n, sizeof *v, by_value);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Spans of the calls, one array each. */
enum { TURN, TO_SLEEP, ASLEEP, TO_READ, SPANS };

__attribute__((destructor)) static void report(void) {
  const char *path = getenv("BENCH_TIMELINE");
  if (off || !events || !path) return;
  size_t nsends = 0;
  for (size_t i = 0; i < nevents; i++) nsends += events[i].kind == SEND;
  double *span[SPANS] = {NULL};
  size_t n[SPANS] = {0};
  int ok = 1;
  for (int s = 0; s < SPANS; s++) ok = ok && (span[s] = malloc((nsends + 1) * sizeof **span)) != NULL;
  FILE *f = ok ? fopen(path, "w") : NULL;
  if (f) {
    size_t k = 0, skip = nsends / 5, calls = 0;
    double last_read = -1;
    for (size_t i = 0; i < nevents; i++) {
      if (events[i].kind == READ) last_read = events[i].t;
      if (events[i].kind != SEND || k++ < skip) continue;
      calls++;
      if (last_read >= 0) span[TURN][n[TURN]++] = events[i].t - last_read;
      /* up to the next send: the first sleep, the sleeps before the first read, the read */
      double sleep_at = -1, slept = 0, wake_at = -1, read_at = -1;
      for (size_t j = i + 1; j < nevents && events[j].kind != SEND && read_at < 0; j++) {
        if (events[j].kind == SLEEP && sleep_at < 0) sleep_at = events[j].t;
        if (events[j].kind == WAKE) {
          if (events[j - 1].kind == SLEEP) slept += events[j].t - events[j - 1].t;
          wake_at = events[j].t;
        }
        if (events[j].kind == READ) read_at = events[j].t;
      }
      if (sleep_at >= 0) span[TO_SLEEP][n[TO_SLEEP]++] = sleep_at - events[i].t;
      if (sleep_at >= 0 && read_at >= 0) span[ASLEEP][n[ASLEEP]++] = slept;
      if (wake_at >= 0 && read_at >= 0) span[TO_READ][n[TO_READ]++] = read_at - wake_at;
    }
    double means[SPANS];
    for (int s = 0; s < SPANS; s++) means[s] = mean(span[s], n[s]);
    fprintf(f,
            "calls %zu answer_to_request %.2f request_to_sleep %.2f asleep %.2f wake_to_read %.2f "
            "answer_to_request_mean %.2f request_to_sleep_mean %.2f asleep_mean %.2f wake_to_read_mean %.2f%s\n",
            calls, median(span[TURN], n[TURN]) * 1e6, median(span[TO_SLEEP], n[TO_SLEEP]) * 1e6,
            median(span[ASLEEP], n[ASLEEP]) * 1e6, median(span[TO_READ], n[TO_READ]) * 1e6, means[TURN] * 1e6,
            means[TO_SLEEP] * 1e6, means[ASLEEP] * 1e6, means[TO_READ] * 1e6, truncated ? " truncated" : "");
    fclose(f);
  }
  for (int s = 0; s < SPANS; s++) free(span[s]);
}
