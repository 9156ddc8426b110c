/* Shared rate-limit buckets in Redis, through hiredis's asynchronous API
 * driven by the owner's loop (see redis.h).
 *
 * Ownership: a fly_redis owns its hiredis context (ac), its list of admissions
 * in flight (each `pending` is also the privdata of exactly one hiredis
 * command at a time and is freed by that command's callback, which hiredis
 * always calls: with the reply, or with NULL when the context goes away) and
 * its queue of results. No state is shared between fly_redis objects; a
 * host name being resolved for a reconnection is shared with the thread
 * resolving it, and freed by whichever of the two lets go of it last. */
#define _GNU_SOURCE /* dladdr */
#include "redis.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The reservation, atomic on the server. KEYS[1]: the bucket, holding its
 * theoretical arrival time (TAT) in microseconds of the server's clock.
 * ARGV[1]: microseconds per token (1e6 / rate); ARGV[2]: burst; ARGV[3]: "1"
 * to empty the bucket first, "2" to give back a token (of a request that never
 * went out: the bucket moves one interval back, never past full; answers 0);
 * ARGV[4] (optional): the latest delay, in microseconds, at which the
 * request can still go in time: a later one takes no token (the bucket stays
 * as it was, but for a penalty, which stays). A bucket holds
 * `burst - (TAT - now) / interval` tokens, so taking one moves TAT by one
 * interval, and the request may go once `burst` intervals remain before TAT.
 * The key expires once a missing
 * key would give every later request the same time (as ratelimit.c drops
 * its buckets): when the bucket is full again (TAT), plus what remains of a
 * second (the longest margin, which counts from when a token came) past the
 * `burst - 1` intervals its oldest token is then old; at TAT for every
 * published limit. A missing key is such a bucket. Answers the
 * delay in microseconds from now to when the bucket came to hold the token
 * taken: TAT before the reservation, plus one interval, less `burst` of them
 * (negative when that is past; a million seconds ago for a missing key), as
 * ratelimit.c's fly_rate_reserve; the caller adds its margin. TIME is the
 * server's: the hosts' clocks may differ. */
static const char SCRIPT[] =
    "if redis.replicate_commands then pcall(redis.replicate_commands) end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local interval = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "if not interval or not burst or interval <= 0 or burst < 1 then\n"
    "  return redis.error_reply('fly: bad limit')\n"
    "end\n"
    "local prev = tonumber(redis.call('GET', KEYS[1]))\n"
    "local keep = 1000000 - (burst - 1) * interval\n"
    "if keep < 0 then keep = 0 end\n"
    "if ARGV[3] == '2' then\n"
    "  if prev and prev > now then\n"
    "    local tat = prev - interval\n"
    "    if tat < now then tat = now end\n"
    "    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now + keep) / 1000) + 1)\n"
    "  end\n"
    "  return 0\n"
    "end\n"
    "local penalized = false\n"
    "if ARGV[3] == '1' and (prev or 0) < now + burst * interval then\n"
    "  prev, penalized = now + burst * interval, true\n"
    "end\n"
    "local delay = -1e12\n"
    "if prev then delay = prev + interval - burst * interval - now end\n"
    "local latest = tonumber(ARGV[4])\n"
    "local tat\n"
    "if latest and delay >= latest then\n"
    "  if not penalized then return math.floor(delay) end\n"
    "  tat = prev\n"
    "else\n"
    "  tat = prev or now\n"
    "  if tat < now then tat = now end\n"
    "  tat = tat + interval\n"
    "end\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now + keep) / 1000))\n"
    "return math.floor(delay)\n";

typedef struct pending {
  struct pending *prev, *next;
  void *cookie;
  int cancelled;
  int answered;     /* its result is queued (or it was cancelled) */
  int retried;      /* NOSCRIPT was answered once already */
  int refund;       /* a refund (fly_redis_refund): nobody waits for its answer */
  double sent;
  char interval[32], burst[32];
  char penalize[2];
  char latest[32];  /* ARGV[4]: the latest delay (microseconds) that is in time; "" for none */
  char key[];       /* owned, NUL-terminated */
} pending;

/* A host name resolved on a thread of its own, so that a reconnection from
 * the loop never waits for the resolver. The limiter and the thread hold it
 * (refs); whichever lets go last frees it. The thread writes addr or error,
 * then sets done; the limiter reads them only once it sees done. */
/* Room for a numeric address: IPv6, '%' and an interface name. */
#define RESOLVED_MAX (INET6_ADDRSTRLEN + 1 + 64)
/* News (warnings) kept until the loop hands them out: more than it can meet between two drains. */
#define WARNINGS_MAX 4 /* even: the oldest pair goes when it is full */

typedef struct resolution {
  atomic_int refs;
  atomic_int done;
  char addr[RESOLVED_MAX];     /* the address to connect to, or "" */
  char error[160];             /* why there is none */
  char host[];                 /* the name, NUL-terminated */
} resolution;

struct fly_redis {
  redisAsyncContext *ac; /* owned; NULL while disconnected */
  /* owned: reads what the connection's reader reads, to count whole answers before hiredis
     matches them with their commands (see handle_read); one per connection */
  redisReader *counter;
  size_t unanswered; /* bytes read since the counter last completed an answer */
  int want_read, want_write;
  /* where */
  char *host;        /* owned; NULL for a Unix socket */
  int numeric;       /* host is an IP address: connecting never resolves */
  resolution *resolving; /* shared with its thread; NULL when none runs */
  double resolve_started;
  int slow_resolve;  /* the limiter went down because the resolution was slow */
  int port;
  char *path;        /* owned; NULL for TCP */
  char *user, *password; /* owned or NULL */
  int db;
  char *shown;       /* owned: the URL without the password, for messages */
  double timeout, retry;
  char sha[41];      /* SHA-1 of SCRIPT, as EVALSHA wants it */
  /* state */
  int down;
  double retry_at;   /* while down: when the next admission may reconnect */
  int drop;          /* a callback found the connection unusable */
  char reason[160];  /* why it was dropped */
  pending *head, *tail; /* in flight, oldest first */
  fly_redis_answer *results; /* owned: a ring of cap slots */
  size_t cap, first, count;
  size_t inflight;
  /* news not yet handed out by fly_redis_warning, oldest first (a ring; they
     alternate, unavailable and available again: when it is full the oldest
     pair goes, so what is told still alternates and ends in the current state) */
  struct {
    char text[320];
    int up; /* it says the limiter is available (again) */
  } warnings[WARNINGS_MAX];
  int warnings_first, warnings_count;
  char warned[320];  /* the copy handed out by fly_redis_warning */
  fly_redis_stats stats;
  double io_now;     /* the `now` of the fly_redis_io (or _free) call running the
                        callbacks: hiredis calls back only from inside them */
};

/* ------------------------------------------------------------- helpers */

static char *dupn(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes s[0..n) into a new string; NULL when malformed or out of memory. */
static char *decode(const char *s, size_t n) {
  char *out = malloc(n + 1), *o = out;
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%') {
      int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
      int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        free(out);
        return NULL;
      }
      *o++ = (char)(hi * 16 + lo);
      i += 2;
    } else {
      *o++ = s[i];
    }
  }
  *o = '\0';
  return out;
}

/* A decimal in s[0..n) within [lo, hi]; -1 when it is not one. */
static long number(const char *s, size_t n, long lo, long hi) {
  if (n == 0 || n > 9) return -1;
  long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v < lo || v > hi ? -1 : v;
}

static void set_warning(fly_redis *r, int up, const char *fmt, ...) {
  if (r->warnings_count == WARNINGS_MAX) { /* full: the oldest outage and its recovery go */
    r->warnings_first = (r->warnings_first + 2) % WARNINGS_MAX;
    r->warnings_count -= 2;
  }
  r->warnings_count++;
  int i = (r->warnings_first + r->warnings_count - 1) % WARNINGS_MAX;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->warnings[i].text, sizeof r->warnings[i].text, fmt, ap);
  va_end(ap);
  r->warnings[i].up = up;
}

/* ---------------------------------------------------------- URL parsing */

static int fail(char *err, size_t errlen, const char *msg) {
  snprintf(err, errlen, "%s", msg);
  return 0;
}

/* redis://[[user]:password@]host[:port][/db] */
static int parse_tcp(fly_redis *r, const char *s, char *err, size_t errlen) {
  const char *end = s + strlen(s);
  const char *slash = strchr(s, '/');
  const char *auth_end = NULL;
  const char *hostpart_end = slash ? slash : end;
  for (const char *p = s; p < hostpart_end; p++)
    if (*p == '@') auth_end = p; /* the last '@' before the path: passwords are encoded */
  const char *h = s;
  if (auth_end) {
    const char *colon = memchr(s, ':', (size_t)(auth_end - s));
    if (!colon) return fail(err, errlen, "redis URL: the credentials need the form [user]:password@");
    if (colon > s && !(r->user = decode(s, (size_t)(colon - s))))
      return fail(err, errlen, "redis URL: the user name is badly percent-encoded");
    if (!(r->password = decode(colon + 1, (size_t)(auth_end - colon - 1))))
      return fail(err, errlen, "redis URL: the password is badly percent-encoded");
    h = auth_end + 1;
  }
  const char *port = NULL, *host_end;
  if (*h == '[') { /* [IPv6] */
    const char *close = memchr(h, ']', (size_t)(hostpart_end - h));
    if (!close || close == h + 1) return fail(err, errlen, "redis URL: bad [IPv6] host");
    r->host = dupn(h + 1, (size_t)(close - h - 1));
    host_end = close + 1;
    if (host_end < hostpart_end && *host_end != ':')
      return fail(err, errlen, "redis URL: bad [IPv6] host");
    if (host_end < hostpart_end) port = host_end + 1;
  } else {
    const char *colon = memchr(h, ':', (size_t)(hostpart_end - h));
    host_end = colon ? colon : hostpart_end;
    if (host_end == h) return fail(err, errlen, "redis URL: the host is missing");
    r->host = dupn(h, (size_t)(host_end - h));
    if (colon) port = colon + 1;
  }
  if (!r->host) return fail(err, errlen, "out of memory");
  r->port = 6379;
  if (port) {
    long v = number(port, (size_t)(hostpart_end - port), 1, 65535);
    if (v < 0) return fail(err, errlen, "redis URL: the port must be a number from 1 to 65535");
    r->port = (int)v;
  }
  if (slash && slash + 1 < end) {
    long v = number(slash + 1, (size_t)(end - slash - 1), 0, 100000);
    if (v < 0) return fail(err, errlen, "redis URL: the database after '/' must be a number");
    r->db = (int)v;
  }
  return 1;
}

/* unix:///path.sock[?db=N][&password=P] */
static int parse_unix(fly_redis *r, const char *s, char *err, size_t errlen) {
  if (*s != '/') return fail(err, errlen, "redis URL: unix:// needs an absolute path (unix:///path.sock)");
  const char *q = strchr(s, '?');
  size_t plen = q ? (size_t)(q - s) : strlen(s);
  if (plen < 2) return fail(err, errlen, "redis URL: the socket path is missing");
  if (!(r->path = dupn(s, plen))) return fail(err, errlen, "out of memory");
  while (q && *q) {
    const char *name = q + 1, *amp = strchr(name, '&');
    const char *vend = amp ? amp : name + strlen(name);
    const char *eq = memchr(name, '=', (size_t)(vend - name));
    if (!eq) return fail(err, errlen, "redis URL: query parameters need the form name=value");
    size_t nlen = (size_t)(eq - name), vlen = (size_t)(vend - eq - 1);
    if (nlen == 2 && memcmp(name, "db", 2) == 0) {
      long v = number(eq + 1, vlen, 0, 100000);
      if (v < 0) return fail(err, errlen, "redis URL: db must be a number");
      r->db = (int)v;
    } else if (nlen == 8 && memcmp(name, "password", 8) == 0) {
      free(r->password);
      if (!(r->password = decode(eq + 1, vlen)))
        return fail(err, errlen, "redis URL: the password is badly percent-encoded");
    } else {
      return fail(err, errlen, "redis URL: unknown query parameter (db and password are known)");
    }
    q = amp;
  }
  return 1;
}

static int parse_url(fly_redis *r, const char *url, char *err, size_t errlen) {
  char shown[300];
  if (strncmp(url, "redis://", 8) == 0) {
    if (!parse_tcp(r, url + 8, err, errlen)) return 0;
    if (strchr(r->host, ':'))
      snprintf(shown, sizeof shown, "redis://[%s]:%d/%d", r->host, r->port, r->db);
    else
      snprintf(shown, sizeof shown, "redis://%s:%d/%d", r->host, r->port, r->db);
  } else if (strncmp(url, "unix://", 7) == 0) {
    if (!parse_unix(r, url + 7, err, errlen)) return 0;
    snprintf(shown, sizeof shown, "unix://%s?db=%d", r->path, r->db);
  } else {
    return fail(err, errlen, "redis URL: expected redis://[[user]:password@]host[:port][/db] or unix:///path.sock[?db=N]");
  }
  if (!(r->shown = dupn(shown, strlen(shown)))) return fail(err, errlen, "out of memory");
  return 1;
}

/* ------------------------------------------------------------- results */

/* Room for one more result per admission in flight, plus this one: a result
 * can then always be queued from a callback. */
static int reserve_result(fly_redis *r) {
  size_t need = r->count + r->inflight + 1;
  if (need <= r->cap) return 1;
  size_t cap = r->cap ? r->cap * 2 : 16;
  while (cap < need) cap *= 2;
  fly_redis_answer *n = malloc(cap * sizeof *n);
  if (!n) return 0;
  for (size_t i = 0; i < r->count; i++) n[i] = r->results[(r->first + i) % r->cap];
  free(r->results);
  r->results = n;
  r->cap = cap;
  r->first = 0;
  return 1;
}

static void unlink_pending(fly_redis *r, pending *p) {
  if (p->prev) p->prev->next = p->next;
  else r->head = p->next;
  if (p->next) p->next->prev = p->prev;
  else r->tail = p->prev;
  p->prev = p->next = NULL;
  r->inflight--;
}

static void send_refund(fly_redis *r, const char *key, const char *interval, const char *burst);

/* Queues p's answer once (never for a cancelled one) and takes it off the
 * in-flight list; p itself stays until its hiredis callback frees it. */
static void answer(fly_redis *r, pending *p, int status, double delay, int took, double now) {
  if (p->answered) return;
  p->answered = 1;
  unlink_pending(r, p);
  if (status == FLY_REDIS_GRANTED) {
    r->stats.granted++;
    if (r->down) {
      r->down = 0;
      set_warning(r, 1, "fly: the shared rate limiter at %s is available again", r->shown);
    }
  } else {
    r->stats.local++;
  }
  if (p->cancelled) { /* its request went away: a token taken for it goes back */
    if (status == FLY_REDIS_GRANTED && took) send_refund(r, p->key, p->interval, p->burst);
    return;
  }
  fly_redis_answer *out = &r->results[(r->first + r->count) % r->cap];
  r->count++;
  out->cookie = p->cookie;
  out->status = status;
  out->delay = status == FLY_REDIS_GRANTED ? delay : 0;
  out->ready_at = now + out->delay;
  out->took = status == FLY_REDIS_GRANTED && took;
}

/* ---------------------------------------------------- the hiredis side */

static void ev_add_read(void *d) { ((fly_redis *)d)->want_read = 1; }
static void ev_del_read(void *d) { ((fly_redis *)d)->want_read = 0; }
static void ev_add_write(void *d) { ((fly_redis *)d)->want_write = 1; }
static void ev_del_write(void *d) { ((fly_redis *)d)->want_write = 0; }

/* hiredis frees the context (on an error, or from redisAsyncFree) after the
 * pending callbacks ran: forget it. */
static void ev_cleanup(void *d) {
  fly_redis *r = d;
  r->ac = NULL;
  r->want_read = r->want_write = 0;
}

static void mark_down(fly_redis *r, const char *why, double now) {
  if (!r->down)
    set_warning(r, 0, "fly: the shared rate limiter at %s is unavailable (%s): using local rate limits, "
                   "retrying every %g s", r->shown, why, r->retry);
  r->down = 1;
  r->retry_at = now + r->retry;
}

static void request_drop(fly_redis *r, const char *why) {
  if (!r->drop) snprintf(r->reason, sizeof r->reason, "%s", why);
  r->drop = 1;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  fly_redis *r = ac->ev.data;
  if (status != REDIS_OK) request_drop(r, ac->errstr ? ac->errstr : "cannot connect");
}

/* Answers to AUTH, SELECT and SCRIPT LOAD: anything but success is a
 * limiter we cannot use. */
static void on_setup(redisAsyncContext *ac, void *reply, void *privdata) {
  fly_redis *r = ac->ev.data;
  redisReply *rep = reply;
  const char *what = privdata;
  if (!rep) return;
  if (rep->type == REDIS_REPLY_ERROR) {
    char why[160];
    if (strcmp(what, "AUTH") == 0) { /* only its code: a server may quote the command's arguments */
      size_t code = strcspn(rep->str, " \t\r\n");
      snprintf(why, sizeof why, "AUTH: refused (%.*s)", (int)(code < 32 ? code : 32), rep->str);
    } else
      snprintf(why, sizeof why, "%s: %.100s", what, rep->str);
    request_drop(r, why);
  } else if (strcmp(what, "SCRIPT LOAD") == 0 &&
             (rep->type != REDIS_REPLY_STRING || strcmp(rep->str, r->sha) != 0)) {
    request_drop(r, "SCRIPT LOAD: unexpected answer");
  }
}

static int send_admission(fly_redis *r, pending *p, int full);

/* Whether the script took a token for admission p, whose answer is `delay`
 * microseconds: unless that is at or past p's latest (the script's test). */
static int took_token(const pending *p, long long delay) {
  return !p->latest[0] || (double)delay < strtod(p->latest, NULL);
}

/* The longest delay (microseconds) taken from the script: a day. A longer one is no answer of
 * the script's, whose queue of reservations never gets that long. */
#define DELAY_MOST_US 86400000000LL

/* The latest (ARGV[4]) no delay is before: the script takes no token. */
#define NO_TOKEN "-1000000000000000000"

/* Sends the script for a bucket without anyone waiting for its answer (only
 * read, never queued): mode '2' gives a token back (fly_redis_refund), '1'
 * with latest NO_TOKEN empties the bucket (fly_redis_penalize). */
static void send_unwaited(fly_redis *r, const char *key, const char *interval, const char *burst, char mode,
                          const char *latest) {
  size_t klen = strlen(key);
  pending *p = r->ac ? calloc(1, sizeof *p + klen + 1) : NULL; /* freed by on_admit */
  if (!p) return; /* no connection, or no memory: the bucket stays as it is, as when Redis is down */
  memcpy(p->key, key, klen + 1);
  snprintf(p->interval, sizeof p->interval, "%s", interval);
  snprintf(p->burst, sizeof p->burst, "%s", burst);
  p->penalize[0] = mode;
  if (latest) snprintf(p->latest, sizeof p->latest, "%s", latest);
  p->answered = p->refund = 1; /* nothing waits for it: answer() passes it by */
  if (!send_admission(r, p, 0)) free(p);
}

static void send_refund(fly_redis *r, const char *key, const char *interval, const char *burst) {
  send_unwaited(r, key, interval, burst, '2', NULL);
}

static void on_admit(redisAsyncContext *ac, void *reply, void *privdata) {
  fly_redis *r = ac->ev.data;
  pending *p = privdata;
  redisReply *rep = reply;
  if (!rep) { /* the connection went away */
    if (!p->answered) {
      request_drop(r, ac->errstr && ac->err ? ac->errstr : "connection lost");
      answer(r, p, FLY_REDIS_LOCAL, 0, 0, r->io_now);
    }
    free(p);
    return;
  }
  if (!p->answered || p->refund) { /* (answer() passes a refund by) */
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer <= DELAY_MOST_US) {
      answer(r, p, FLY_REDIS_GRANTED, (double)rep->integer / 1e6, took_token(p, rep->integer), r->io_now);
    } else if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 && !p->retried &&
               !r->drop) {
      /* the script cache was flushed (a restart, SCRIPT FLUSH): send it whole,
         which also loads it; the reservation (or refund) did not happen, so this is safe */
      p->retried = 1;
      r->stats.reloads++;
      if (send_admission(r, p, 1)) return; /* p now belongs to the new command */
      request_drop(r, "cannot send the script");
      answer(r, p, FLY_REDIS_LOCAL, 0, 0, r->io_now);
    } else {
      char why[160];
      if (rep->type == REDIS_REPLY_ERROR) snprintf(why, sizeof why, "EVALSHA: %.100s", rep->str);
      else if (rep->type == REDIS_REPLY_INTEGER) snprintf(why, sizeof why, "EVALSHA: a delay of %lld us", rep->integer);
      else snprintf(why, sizeof why, "EVALSHA: unexpected answer of type %d", rep->type);
      request_drop(r, why);
      answer(r, p, FLY_REDIS_LOCAL, 0, 0, r->io_now);
    }
  }
  free(p);
}

static int send_admission(fly_redis *r, pending *p, int full) {
  const char *argv[8];
  size_t lens[8];
  int argc = p->latest[0] ? 8 : 7;
  argv[0] = full ? "EVAL" : "EVALSHA";
  argv[1] = full ? SCRIPT : r->sha;
  lens[1] = full ? sizeof SCRIPT - 1 : strlen(r->sha);
  argv[2] = "1";
  argv[3] = p->key;
  argv[4] = p->interval;
  argv[5] = p->burst;
  argv[6] = p->penalize;
  argv[7] = p->latest;
  for (int i = 0; i < argc; i++)
    if (i != 1) lens[i] = strlen(argv[i]);
  return redisAsyncCommandArgv(r->ac, on_admit, p, argc, argv, lens) == REDIS_OK;
}

/* Runs f on the context with SIGPIPE blocked on this thread, and swallows a
 * SIGPIPE the write raised: a peer that went away must not kill the
 * process, and the process-wide disposition is not ours to change. */
static void with_sigpipe_blocked(fly_redis *r, void (*f)(redisAsyncContext *)) {
  sigset_t pipe_set, old, pending_before, pending_after;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigpending(&pending_before);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  f(r->ac);
  sigpending(&pending_after);
  if (sigismember(&pending_after, SIGPIPE) && !sigismember(&pending_before, SIGPIPE)) {
    struct timespec zero = {0, 0};
    sigtimedwait(&pipe_set, NULL, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Closes the connection: every admission in flight goes back to the local
 * bucket (hiredis calls them back with NULL). */
static void disconnect(fly_redis *r, const char *why, double now) {
  r->io_now = now;
  request_drop(r, why);
  if (r->ac) redisAsyncFree(r->ac); /* runs the callbacks, then ev_cleanup */
  r->ac = NULL;
  r->drop = 0;
  mark_down(r, r->reason, now);
}

static void send_setup(fly_redis *r) {
  char db[16];
  if (r->password) {
    if (r->user) {
      const char *argv[] = {"AUTH", r->user, r->password};
      redisAsyncCommandArgv(r->ac, on_setup, "AUTH", 3, argv, NULL);
    } else {
      const char *argv[] = {"AUTH", r->password};
      redisAsyncCommandArgv(r->ac, on_setup, "AUTH", 2, argv, NULL);
    }
  }
  if (r->db) {
    snprintf(db, sizeof db, "%d", r->db);
    const char *argv[] = {"SELECT", db};
    redisAsyncCommandArgv(r->ac, on_setup, "SELECT", 2, argv, NULL);
  }
  const char *argv[] = {"SCRIPT", "LOAD", SCRIPT};
  size_t lens[] = {6, 4, sizeof SCRIPT - 1};
  redisAsyncCommandArgv(r->ac, on_setup, "SCRIPT LOAD", 3, argv, lens);
}

/* Starts a connection to `addr` (an IP address; ignored for a Unix socket);
 * 1 when one is on its way. */
static int connect_now(fly_redis *r, double now, const char *addr) {
  r->stats.connects++;
  r->drop = 0;
  redisAsyncContext *ac = r->path ? redisAsyncConnectUnix(r->path) : redisAsyncConnect(addr, r->port);
  if (!ac) {
    mark_down(r, "out of memory", now);
    return 0;
  }
  if (ac->err) {
    char why[160];
    snprintf(why, sizeof why, "%s", ac->errstr);
    redisAsyncFree(ac);
    mark_down(r, why, now);
    return 0;
  }
  if (r->counter) redisReaderFree(r->counter);
  r->counter = redisReaderCreate();
  r->unanswered = 0;
  if (!r->counter) {
    redisAsyncFree(ac);
    mark_down(r, "out of memory", now);
    return 0;
  }
  r->ac = ac;
  ac->ev.data = r;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  redisAsyncSetConnectCallback(ac, on_connect);
  send_setup(r);
  return 1;
}

/* Resolves `host` to one address, IPv4 first as hiredis does (a Redis
 * client cannot afford to find out whether IPv6 works); 1 with the address
 * in addr (numeric, an IPv6 scope kept), else 0 with the reason in error.
 * Blocks for as long as the system's resolver takes. */
static int resolve(const char *host, char addr[RESOLVED_MAX], char *error, size_t errlen) {
  static const int families[] = {AF_INET, AF_INET6};
  int rc = EAI_NONAME;
  for (int i = 0; i < 2; i++) {
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = families[i];
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, NULL, &hints, &ai);
    if (rc != 0 || !ai) continue;
    rc = getnameinfo(ai->ai_addr, ai->ai_addrlen, addr, RESOLVED_MAX, NULL, 0, NI_NUMERICHOST);
    freeaddrinfo(ai);
    if (rc == 0) return 1;
  }
  snprintf(error, errlen, "cannot resolve %s: %s", host, rc ? gai_strerror(rc) : "no address");
  return 0;
}

/* Keeps this library loaded for the rest of the process, once a thread may
 * run its code: a host that closes its Lua state unloads C modules, and a
 * resolver thread still inside getaddrinfo would return into unmapped code.
 * (Built into a program rather than a library, there is nothing to keep.)
 * The handle is never closed: that is the point. */
static void keep_loaded(void) {
  Dl_info info;
  if (dladdr((void *)&keep_loaded, &info) && info.dli_fname)
    (void)dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
}

static void let_go(resolution *res) {
  if (atomic_fetch_sub(&res->refs, 1) == 1) free(res);
}

static void *resolver_thread(void *arg) {
  resolution *res = arg;
  if (!resolve(res->host, res->addr, res->error, sizeof res->error)) res->addr[0] = '\0';
  atomic_store(&res->done, 1);
  let_go(res);
  return NULL;
}

/* Connects from the loop: to an IP address or a Unix socket at once; to a
 * host name once a thread of its own has resolved it (this starts it, and
 * a later call, admission or I/O, picks up its answer). 1 when a connection
 * is on its way. */
static int reconnect(fly_redis *r, double now) {
  if (r->path || r->numeric) return connect_now(r, now, r->host);
  if (r->resolving) return 0;
  size_t n = strlen(r->host);
  resolution *res = calloc(1, sizeof *res + n + 1);
  if (!res) {
    mark_down(r, "out of memory", now);
    return 0;
  }
  memcpy(res->host, r->host, n + 1);
  atomic_init(&res->refs, 2);
  atomic_init(&res->done, 0);
  keep_loaded();
  /* the thread takes no signal meant for the process: it starts with all blocked */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_t thread;
  int started = pthread_attr_init(&attr) == 0;
  if (started) {
    started = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
              pthread_create(&thread, &attr, resolver_thread, res) == 0;
    pthread_attr_destroy(&attr);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (!started) {
    free(res);
    mark_down(r, "cannot start a thread to resolve the host name", now);
    return 0;
  }
  r->resolving = res;
  r->resolve_started = now;
  return 0;
}

/* When the host name's resolution has finished: connects to its address
 * (admissions use it at once), or marks the limiter down with the resolver's
 * reason. A resolution that takes longer than an admission may wait marks
 * the limiter down meanwhile, as an unanswered admission does; the reason
 * is told again if it then fails. */
static void check_resolution(fly_redis *r, double now) {
  resolution *res = r->resolving;
  if (!res) return;
  if (!atomic_load(&res->done)) {
    if (!r->down && now - r->resolve_started >= r->timeout) {
      char why[160];
      snprintf(why, sizeof why, "resolving %.80s takes longer than %g ms", r->host, r->timeout * 1000);
      mark_down(r, why, now);
      r->slow_resolve = 1;
    }
    return;
  }
  r->resolving = NULL;
  if (res->addr[0]) {
    if (connect_now(r, now, res->addr)) r->retry_at = now;
  } else {
    if (r->slow_resolve) r->down = 0; /* so that mark_down tells the resolver's reason */
    mark_down(r, res->error, now);
  }
  r->slow_resolve = 0;
  let_go(res);
}

/* ------------------------------------------------------------- the API */

fly_redis *fly_redis_new(const char *url, double timeout, double retry, char *err, size_t errlen) {
  fly_redis *r = calloc(1, sizeof *r);
  if (!r) {
    fail(err, errlen, "out of memory");
    return NULL;
  }
  if (!url || !parse_url(r, url, err, errlen)) {
    if (!url) fail(err, errlen, "redis URL: missing");
    fly_redis_free(r);
    return NULL;
  }
  if (r->host) {
    unsigned char ip[sizeof(struct in6_addr)];
    r->numeric = inet_pton(AF_INET, r->host, ip) == 1 || inet_pton(AF_INET6, r->host, ip) == 1;
  }
  r->timeout = timeout > 0 ? timeout : 0.1;
  r->retry = retry > 0 ? retry : 5;
  unsigned char md[SHA_DIGEST_LENGTH];
  SHA1((const unsigned char *)SCRIPT, sizeof SCRIPT - 1, md);
  for (int i = 0; i < SHA_DIGEST_LENGTH; i++) snprintf(r->sha + 2 * i, 3, "%02x", md[i]);
  return r;
}

void fly_redis_connect(fly_redis *r, double now) {
  if (r->ac || r->resolving || now < r->retry_at) return;
  char addr[RESOLVED_MAX], why[160];
  if (r->path || r->numeric) connect_now(r, now, r->host);
  else if (resolve(r->host, addr, why, sizeof why)) connect_now(r, now, addr);
  else mark_down(r, why, now);
}

/* hiredis's own, which 0.14's header does not declare: matches the answers its reader holds with
   their commands' callbacks (what redisAsyncHandleRead does after reading). */
void redisProcessCallbacks(redisAsyncContext *ac);

/* The most bytes one answer may take before it is whole: the script's answers are integers, the
 * setup's a few words (an error a line); more is no answer of a Redis running the script, and is
 * not buffered. */
#define ANSWER_MOST 4096
/* Reads at most this many times 16 KB in one turn (answers that came while the loop was busy). */
#define READS_MOST 64

static int commands_waiting(const redisAsyncContext *ac) {
  int n = 0;
  for (const redisCallback *cb = ac->replies.head; cb; cb = cb->next) n++;
  return n;
}

/* Reads what the server sent, as redisAsyncHandleRead would, but counts the whole answers first
 * (r->counter reads the same bytes): hiredis 0.14 aborts the process (an assert) on an answer
 * that no command waits for, which a server that is not a sound Redis may send, and buffers an
 * answer of any announced length. Either drops the connection instead (the admissions in flight
 * fall back to the local buckets). Reads until the socket has nothing more (at most READS_MOST
 * times), so that answers that came while the loop was busy are all read before the oldest
 * admission is judged overdue. */
static void handle_read(redisAsyncContext *ac) {
  fly_redis *r = ac->ev.data;
  if (!(ac->c.flags & REDIS_CONNECTED)) { /* hiredis completes (or fails) the connection, and reads nothing */
    redisAsyncHandleWrite(ac);
    if (r->ac != ac || !(ac->c.flags & REDIS_CONNECTED)) return;
  }
  for (int k = 0; k < READS_MOST && r->ac == ac && !r->drop; k++) {
    char buf[16 * 1024];
    ssize_t n = read(ac->c.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) { /* closed, or failed: hiredis ends the connection its way (its read fails again) */
      redisAsyncHandleRead(ac);
      return;
    }
    if (redisReaderFeed(r->counter, buf, (size_t)n) != REDIS_OK ||
        redisReaderFeed(ac->c.reader, buf, (size_t)n) != REDIS_OK) {
      request_drop(r, "out of memory");
      return;
    }
    int whole = 0;
    void *reply;
    while (redisReaderGetReply(r->counter, &reply) == REDIS_OK && reply) {
      freeReplyObject(reply);
      whole++;
    }
    if (r->counter->err) {
      request_drop(r, "an answer that is not in Redis's protocol");
      return;
    }
    if (whole > commands_waiting(ac)) {
      request_drop(r, "an answer to no command");
      return;
    }
    r->unanswered = whole ? r->counter->len - r->counter->pos : r->unanswered + (size_t)n;
    if (r->unanswered > ANSWER_MOST) {
      request_drop(r, "an answer longer than any the limiter asks for");
      return;
    }
    r->want_read = 1;
    redisProcessCallbacks(ac); /* may free the context (a protocol error): r->ac then is not ac */
    if ((size_t)n < sizeof buf) return;
  }
}
static void handle_write(redisAsyncContext *ac) { redisAsyncHandleWrite(ac); }

void fly_redis_free(fly_redis *r) {
  if (!r) return;
  /* An admission on its way runs on the server all the same. One that takes its token whatever
     the delay (no latest) gets it back: a refund sent after it on the same connection, which
     Redis runs after it. (One with a latest may take none: its token, if taken, stays.) */
  for (pending *p = r->head; p; p = p->next) {
    p->cancelled = 1;
    if (!p->latest[0] && !r->drop) send_refund(r, p->key, p->interval, p->burst);
  }
  if (r->ac && r->want_write && !r->drop) with_sigpipe_blocked(r, handle_write);
  if (r->ac) redisAsyncFree(r->ac); /* the callbacks free the pendings */
  if (r->resolving) let_go(r->resolving); /* its thread frees it if still running */
  free(r->host);
  free(r->path);
  free(r->user);
  if (r->password) {
    memset(r->password, 0, strlen(r->password));
    free(r->password);
  }
  if (r->counter) redisReaderFree(r->counter);
  free(r->shown);
  free(r->results);
  free(r);
}

int fly_redis_fd(fly_redis *r, short *events) {
  *events = 0;
  if (!r->ac || r->ac->c.fd < 0) return -1;
  if (r->want_read) *events |= POLLIN;
  if (r->want_write) *events |= POLLOUT;
  return r->ac->c.fd;
}

void fly_redis_io(fly_redis *r, short revents, double now) {
  r->io_now = now;
  check_resolution(r, now);
  if (r->ac && (revents & POLLOUT)) with_sigpipe_blocked(r, handle_write);
  if (r->ac && !(revents & (POLLIN | POLLERR | POLLHUP)) && r->head && now - r->head->sent >= r->timeout) {
    /* overdue, unless its answer came while the loop did not look: read before judging */
    struct pollfd pfd = {r->ac->c.fd, POLLIN, 0};
    if (pfd.fd >= 0 && poll(&pfd, 1, 0) > 0) revents |= pfd.revents;
  }
  if (r->ac && (revents & (POLLIN | POLLERR | POLLHUP))) with_sigpipe_blocked(r, handle_read);
  /* what the answers' callbacks sent (a refund) goes now: the loop may have nothing else to wait for */
  if (r->ac && r->want_write && !r->drop) with_sigpipe_blocked(r, handle_write);
  if (r->drop) disconnect(r, r->reason, now);
  else if (r->head && now - r->head->sent >= r->timeout) {
    char why[64];
    snprintf(why, sizeof why, "no answer within %g ms", r->timeout * 1000);
    disconnect(r, why, now);
  } else if (!r->ac && r->head) {
    disconnect(r, "connection lost", now);
  }
}

double fly_redis_next_timeout(fly_redis *r, double now) {
  if (!r->head) return -1;
  double t = r->head->sent + r->timeout - now;
  return t > 0 ? t : 0;
}

/* The script's ARGV[1] (microseconds per token) and ARGV[2] (burst) for a
 * limit; 0 when it is no limit (no rate, or a burst below 1). */
static int limit_argv(fly_limit limit, char interval[32], char burst[32]) {
  if (!(limit.rate > 0) || !(limit.burst >= 1)) return 0;
  snprintf(interval, 32, "%.6f", 1e6 / limit.rate);
  snprintf(burst, 32, "%.6f", limit.burst);
  return 1;
}

int fly_redis_admit(fly_redis *r, const char *key, fly_limit limit, int penalize, double latest,
                    void *cookie, double now) {
  check_resolution(r, now);
  if ((r->down || !r->ac) && (now < r->retry_at || (!r->ac && !reconnect(r, now)))) {
    r->stats.local++;
    return FLY_REDIS_LOCAL;
  }
  size_t klen = strlen(key);
  pending *p = NULL;
  if (!(p = calloc(1, sizeof *p + klen + 1)) || !limit_argv(limit, p->interval, p->burst) ||
      !reserve_result(r)) {
    free(p);
    r->stats.local++;
    return FLY_REDIS_LOCAL;
  }
  memcpy(p->key, key, klen + 1);
  p->cookie = cookie;
  p->sent = now;
  p->penalize[0] = penalize ? '1' : '0';
  /* rounded up: a delay the script refuses is then never one the caller would let go */
  if (latest < 1e12) {
    if (latest > -1e12) snprintf(p->latest, sizeof p->latest, "%.0f", ceil(latest * 1e6));
    else snprintf(p->latest, sizeof p->latest, "%s", NO_TOKEN);
  }
  if (!send_admission(r, p, 0)) {
    free(p);
    r->stats.local++;
    return FLY_REDIS_LOCAL;
  }
  p->prev = r->tail;
  if (r->tail) r->tail->next = p;
  else r->head = p;
  r->tail = p;
  r->inflight++;
  return 0;
}

void fly_redis_refund(fly_redis *r, const char *key, fly_limit limit, double now) {
  check_resolution(r, now);
  char interval[32], burst[32];
  if (!r->down && limit_argv(limit, interval, burst)) send_refund(r, key, interval, burst);
}

void fly_redis_penalize(fly_redis *r, const char *key, fly_limit limit, double now) {
  check_resolution(r, now);
  char interval[32], burst[32];
  if (!r->down && limit_argv(limit, interval, burst)) send_unwaited(r, key, interval, burst, '1', NO_TOKEN);
}

int fly_redis_cancel(fly_redis *r, void *cookie) {
  int took = 0;
  for (pending *p = r->head; p; p = p->next)
    if (p->cookie == cookie) p->cancelled = 1; /* a token taken for it goes back: answer() */
  for (size_t i = 0; i < r->count; i++) {
    fly_redis_answer *res = &r->results[(r->first + i) % r->cap];
    if (res->cookie != cookie) continue;
    if (res->status == FLY_REDIS_GRANTED && res->took) took = 1;
    res->status = 0; /* skipped by fly_redis_next */
  }
  return took;
}

int fly_redis_next(fly_redis *r, fly_redis_answer *out) {
  while (r->count) {
    *out = r->results[r->first];
    r->first = (r->first + 1) % r->cap;
    r->count--;
    if (out->status) return 1;
  }
  return 0;
}

const char *fly_redis_warning(fly_redis *r, int *available) {
  if (r->warnings_count == 0) return NULL;
  int i = r->warnings_first;
  r->warnings_first = (i + 1) % WARNINGS_MAX;
  r->warnings_count--;
  if (available) *available = r->warnings[i].up;
  memcpy(r->warned, r->warnings[i].text, sizeof r->warned);
  return r->warned;
}

void fly_redis_get_stats(const fly_redis *r, fly_redis_stats *out) {
  *out = r->stats;
  out->down = r->down;
}

int fly_redis_identity(const char *base, size_t base_len, const char *token, size_t token_len,
                       char out[FLY_REDIS_ID_LEN + 1]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new(); /* owned here */
  int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && EVP_DigestUpdate(ctx, base, base_len) &&
           EVP_DigestUpdate(ctx, "\n", 1) && EVP_DigestUpdate(ctx, token, token_len) &&
           EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen >= FLY_REDIS_ID_LEN / 2;
  EVP_MD_CTX_free(ctx);
  if (!ok) return 0;
  for (int i = 0; i < FLY_REDIS_ID_LEN / 2; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
  return 1;
}

size_t fly_redis_key(char *out, size_t outlen, const char *identity, const char *action,
                     const char *scope) {
  int n = snprintf(out, outlen, "fly:rl:%s:%s:%s", identity, action, scope);
  return n < 0 ? 0 : (size_t)n;
}
