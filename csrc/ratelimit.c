/* Token buckets keyed by "<client identity>|<action>|<scope>".
 *
 * The table is process-wide on purpose: Fly's limits belong to the machine or
 * app, not to a Lua object, so every client in the process must draw from the
 * same bucket. One mutex guards it; callers hold it only for a lookup and a
 * few arithmetic operations. A bucket that has been full for long enough
 * (is_idle) carries no information (a new one would give the same times), so
 * such buckets are dropped once the table grows, which keeps memory bounded by
 * the number of recently used keys. A sweep walks the whole table, so the
 * next one waits until the table has doubled from what the last one left:
 * with a new key per request (a new machine each call) sweeping costs O(1)
 * per new bucket, not O(buckets), and the table holds at most twice the
 * buckets still refilling or kept (or SWEEP_ABOVE).
 *
 * The slots double when the buckets outnumber them (a new machine per call at
 * thousands of calls a second keeps tens of thousands of buckets refilling)
 * and halve, after a sweep, while the buckets fill less than a quarter of
 * them (down to SLOTS_MIN), so both a sweep's walk and the slots' memory
 * follow the buckets there are, not the most there ever were. Each bucket
 * keeps its key's hash, so a lookup compares a key's bytes about once. */
#define _POSIX_C_SOURCE 200809L
#include "ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS_MIN 1024 /* a power of two, as every slot count */
#define SWEEP_ABOVE 512

typedef struct bucket {
  struct bucket *next;
  uint32_t hash;  /* of key */
  double tokens;
  double last;    /* when tokens was last brought up to date */
  double full_at; /* when the bucket last became full; -inf: full since it was made */
  double rate;    /* the limit in force when last touched */
  double burst;
  double shift;   /* seconds it was pushed back in all (fly_rate_sent) */
  double keep;    /* seconds it is kept once full (is_idle): the longest of the limits that used it */
  char key[];     /* owned, NUL-terminated */
} bucket;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* Shifts of any bucket so far: a queued request whose mark holds the same
 * count has nothing to catch up (read without the lock). */
static atomic_ulong shifts;
static bucket **slots; /* nslots chains (owned), made on first use; NULL before */
static size_t nslots;
static size_t count;
static size_t sweep_at = SWEEP_ABOVE; /* the count that triggers the next sweep */

double fly_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t hash(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

/* Seconds a full bucket of this limit is kept: while a request taking its
 * oldest token would still keep a margin from it. That token came (burst - 1)
 * intervals before the bucket filled (reserve), and the request goes
 * `margin` after it: FLY_RATE_MARGIN_MAX less those intervals, nothing for
 * every published limit (their bursts hold more than a second of tokens), up
 * to FLY_RATE_MARGIN_MAX for a burst of 1. */
static double keep_for(fly_limit limit) {
  double keep = FLY_RATE_MARGIN_MAX - (limit.burst - 1) / limit.rate;
  return keep > 0 ? keep : 0;
}

static void refill(bucket *b, fly_limit limit, double now) {
  b->rate = limit.rate;
  b->burst = limit.burst;
  double keep = keep_for(limit); /* clients of one owner may give one key different limits */
  if (keep > b->keep) b->keep = keep;
  if (now > b->last) {
    double tokens = b->tokens + (now - b->last) * limit.rate;
    if (tokens >= limit.burst) {
      if (b->tokens < limit.burst) b->full_at = b->last + (limit.burst - b->tokens) / limit.rate;
      tokens = limit.burst;
    }
    b->tokens = tokens;
    b->last = now;
  }
}

/* Whether the bucket holds nothing a new one would not (a new one would give
 * every later request the same times), by `now`: it is full, and has been
 * full long enough (b->keep, keep_for) that a request taking its oldest token
 * goes at once whatever its margin. */
static int is_idle(const bucket *b, double now) {
  if (b->tokens >= b->burst) return b->full_at + b->keep <= now;
  double full_at = b->last + (b->burst - b->tokens) / b->rate;
  return full_at + b->keep <= now;
}

/* Moves every bucket into n new slots (a power of two); 0 when out of
 * memory, the table as it was. */
static int rehash_locked(size_t n) {
  bucket **fresh = calloc(n, sizeof *fresh);
  if (!fresh) return 0;
  for (size_t i = 0; i < nslots; i++) {
    while (slots[i]) {
      bucket *b = slots[i];
      slots[i] = b->next;
      b->next = fresh[b->hash & (n - 1)];
      fresh[b->hash & (n - 1)] = b;
    }
  }
  free(slots);
  slots = fresh;
  nslots = n;
  return 1;
}

static void sweep_locked(double now) {
  for (size_t i = 0; i < nslots; i++) {
    bucket **p = &slots[i];
    while (*p) {
      bucket *b = *p;
      if (is_idle(b, now)) {
        *p = b->next;
        free(b);
        count--;
      } else {
        p = &b->next;
      }
    }
  }
  sweep_at = count * 2 > SWEEP_ABOVE ? count * 2 : SWEEP_ABOVE;
  size_t n = nslots;
  while (n > SLOTS_MIN && count * 4 < n) n /= 2;
  if (n < nslots) rehash_locked(n); /* out of memory: the table stays as large */
}

/* The bucket for key, whose hash is h, or NULL (the lock held). */
static bucket *find(const char *key, uint32_t h) {
  if (!slots) return NULL;
  for (bucket *b = slots[h & (nslots - 1)]; b; b = b->next)
    if (b->hash == h && strcmp(b->key, key) == 0) return b;
  return NULL;
}

/* Returns the bucket for key, creating it full; NULL only when out of memory. */
static bucket *lookup(const char *key, fly_limit limit, double now) {
  uint32_t h = hash(key);
  bucket *found = find(key, h);
  if (found) return found;
  if (count >= sweep_at) sweep_locked(now);
  if (count >= nslots && !rehash_locked(nslots ? nslots * 2 : SLOTS_MIN) && !slots)
    return NULL; /* a full table still takes more */
  size_t len = strlen(key);
  bucket *b = malloc(sizeof *b + len + 1);
  if (!b) return NULL;
  b->hash = h;
  memcpy(b->key, key, len + 1);
  b->tokens = limit.burst;
  b->last = now;
  b->full_at = -INFINITY;
  b->rate = limit.rate;
  b->burst = limit.burst;
  b->shift = 0;
  b->keep = keep_for(limit);
  b->next = slots[h & (nslots - 1)];
  slots[h & (nslots - 1)] = b;
  count++;
  return b;
}

double fly_rate_reserve_marked(const char *key, fly_limit limit, double now, double before, fly_rate_mark *m) {
  double ready = now;
  if (m) *m = (fly_rate_mark){-INFINITY, 0, 0, atomic_load(&shifts), 0};
  pthread_mutex_lock(&lock);
  bucket *b = lookup(key, limit, now);
  if (b) {
    refill(b, limit, now);
    /* when the bucket came to hold the token taken: for a full bucket, its
       oldest token's time (long ago for one full since it was made); else the
       refill's (later than now when the request has to wait) */
    if (b->tokens >= limit.burst) ready = b->full_at - (limit.burst - 1) / limit.rate;
    else ready = b->last - (b->tokens - 1) / limit.rate;
    if (!(ready < before)) { /* too late for the request: it fails, the token stays */
      pthread_mutex_unlock(&lock);
      return ready;
    }
    b->tokens -= 1;
    if (m) { /* without this token the bucket is full (burst - 1) intervals after it came */
      m->full = ready + (limit.burst - 1) / limit.rate;
      m->shift = b->shift;
      m->taken = 1;
    }
  }
  pthread_mutex_unlock(&lock);
  return ready;
}

void fly_rate_refund(const char *key, fly_limit limit, fly_rate_mark *m, double now) {
  if (!m->taken) return;
  m->taken = 0;
  pthread_mutex_lock(&lock);
  bucket *b = find(key, hash(key)); /* gone: it was full, with nothing to give back */
  if (b) {
    refill(b, limit, now);
    if (b->tokens < limit.burst && b->tokens + 1 >= limit.burst) b->full_at = now;
    b->tokens = b->tokens + 1 < limit.burst ? b->tokens + 1 : limit.burst;
  }
  pthread_mutex_unlock(&lock);
}

double fly_rate_reserve(const char *key, fly_limit limit, double now) {
  return fly_rate_reserve_marked(key, limit, now, INFINITY, NULL);
}

/* How late a request goes at `now`: past its ready time and past the moment
 * its bucket would have been full without it, less what it pushed already. */
static double lateness(double ready_at, const fly_rate_mark *m, double now) {
  return now - (ready_at > m->full ? ready_at : m->full) - m->pushed;
}

/* Brings a mark up to date with its bucket's shift (the lock held):
 * returns the pushes since, which also move the request's times. */
static double absorb(const bucket *b, fly_rate_mark *m) {
  double extra = b->shift > m->shift ? b->shift - m->shift : 0;
  m->shift = b->shift;
  m->full += extra;
  return extra;
}

int fly_rate_sent(const char *key, fly_limit limit, double *ready_at, fly_rate_mark *m, double now) {
  unsigned long gen = atomic_load(&shifts);
  if (gen == m->gen && !(lateness(*ready_at, m, now) > FLY_RATE_SLACK)) return 0;
  int pushed = 0;
  pthread_mutex_lock(&lock);
  bucket *b = lookup(key, limit, now);
  if (b) {
    *ready_at += absorb(b, m);
    double late = lateness(*ready_at, m, now);
    if (late > FLY_RATE_SLACK) {
      refill(b, limit, now);
      b->tokens -= late * limit.rate; /* its refill starts that much later */
      b->shift += late;
      m->shift = b->shift; /* its own push is not one to catch up with */
      m->pushed += late;
      gen = atomic_fetch_add(&shifts, 1) + 1;
      pushed = 1;
    }
  }
  pthread_mutex_unlock(&lock);
  m->gen = gen;
  return pushed;
}

double fly_rate_catch_up(const char *key, fly_rate_mark *m, double *ready_at) {
  unsigned long gen = atomic_load(&shifts);
  if (gen == m->gen) return 0;
  double extra = 0;
  pthread_mutex_lock(&lock);
  bucket *b = find(key, hash(key));
  if (b) extra = absorb(b, m);
  pthread_mutex_unlock(&lock);
  m->gen = gen;
  *ready_at += extra;
  return extra;
}

void fly_rate_penalize(const char *key, fly_limit limit, double now) {
  pthread_mutex_lock(&lock);
  bucket *b = lookup(key, limit, now);
  if (b) {
    refill(b, limit, now);
    if (b->tokens > 0) b->tokens = 0;
  }
  pthread_mutex_unlock(&lock);
}

/* The table lives as long as the library: when the last Lua state that
 * loaded the core unloads it, the buckets go with it. */
__attribute__((destructor)) static void drop_all(void) {
  pthread_mutex_lock(&lock);
  for (size_t i = 0; i < nslots; i++) {
    while (slots[i]) {
      bucket *b = slots[i];
      slots[i] = b->next;
      free(b);
    }
  }
  free(slots);
  slots = NULL;
  nslots = 0;
  count = 0;
  sweep_at = SWEEP_ABOVE;
  pthread_mutex_unlock(&lock);
}

size_t fly_rate_bucket_count(void) {
  pthread_mutex_lock(&lock);
  size_t n = count;
  pthread_mutex_unlock(&lock);
  return n;
}

void fly_rate_sweep(double now) {
  pthread_mutex_lock(&lock);
  sweep_locked(now);
  pthread_mutex_unlock(&lock);
}

fly_limit fly_rate_limit_for(fly_limit dflt, const char *action, const fly_override *ov, int nov, double scale) {
  fly_limit l = dflt;
  for (int i = 0; i < nov; i++)
    if (strcmp(ov[i].action, action) == 0) l = ov[i].limit;
  l.rate *= scale;
  return l;
}

double fly_rate_admit_marked(const char *key, fly_limit limit, double now, double margin, double before,
                             fly_rate_mark *m) {
  double at = fly_rate_reserve_marked(key, limit, now, before - margin, m) + margin;
  return at > now ? at : now;
}

double fly_rate_admit(const char *key, fly_limit limit, double now, double margin) {
  return fly_rate_admit_marked(key, limit, now, margin, INFINITY, NULL);
}
