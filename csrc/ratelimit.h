/* Process-wide token buckets, shared by every client (and every Lua state and
 * thread) that talks to the same base URL with the same token. */
#ifndef FLY_RATELIMIT_H
#define FLY_RATELIMIT_H

#include <stddef.h>

typedef struct fly_limit {
  double rate;   /* tokens per second */
  double burst;  /* bucket capacity */
} fly_limit;

/* A client's own limit for one action (core.new's rate_limit option). */
typedef struct fly_override {
  char action[64];
  fly_limit limit;
} fly_override;

/* The limit a client applies to `action`: its override if it has one, else
 * `dflt` (the published limit), the rate multiplied by `scale`. */
fly_limit fly_rate_limit_for(fly_limit dflt, const char *action, const fly_override *ov, int nov, double scale);

/* admit: reserves a token for one request and returns when it may be sent
 * ("ready at"): `margin` seconds after its token came (its reservation's
 * time), or now when that is past. The margin absorbs latency jitter, so that
 * a request reaches the server after the server's bucket refilled too: a
 * wait gets it in full, and a request whose token came less than `margin`
 * ago waits out the rest (the server's bucket may be a hair behind). */
double fly_rate_admit(const char *key, fly_limit limit, double now, double margin);

/* The longest margin a client may give (rate_limit.margin, seconds): how long
 * a full bucket may still matter to a request (ratelimit.c's keep). */
#define FLY_RATE_MARGIN_MAX 1.0

/* Seconds on a monotonic clock. */
double fly_now(void);

/* Takes one token from the bucket `key` (created full on first use) and
 * returns the reservation's time: when the bucket came to hold that token.
 * Later than `now` when the request has to wait for the refill; earlier when
 * a token was there: the oldest token of a full bucket came when the bucket
 * filled (-inf for a bucket full since it was made), the others one refill
 * interval apart. The same time as the Redis script's (GCRA: the theoretical
 * arrival time before the reservation, plus one interval, less the burst's
 * worth). The reservation is made at once, so requests queued behind it get
 * later times. */
double fly_rate_reserve(const char *key, fly_limit limit, double now);

/* What a reservation leaves for fly_rate_sent and fly_rate_catch_up.
 *
 * The server counts a request when it arrives, the bucket here when the
 * request is ready to go. A request that goes out later than that (it waited
 * for a new connection's handshakes, or for the loop) reaches the server
 * later too, and if the server's bucket was full then, every request after
 * it in the bucket is counted that much later there: the server is behind
 * the bucket here by that much, and the next request that goes at its time
 * gets a 429. fly_rate_sent tells the bucket when a request actually went,
 * and pushes it back by the difference ("shift"); requests already queued on
 * it ask fly_rate_catch_up how much later they must go. */
typedef struct fly_rate_mark {
  double full;        /* when the bucket would be full again without this request (-inf: full),
                         as pushed back since */
  double pushed;      /* seconds this request pushed its bucket back (a resend pushes the rest) */
  double shift;       /* the bucket's shift (seconds) as of the last look */
  unsigned long gen;  /* the count of shifts of every bucket as of the last look */
  int taken;          /* the reservation took a token that no send has used yet (fly_rate_refund) */
} fly_rate_mark;

/* Gives back the token of a reservation whose request never went out (it
 * was cancelled, ran past its deadline, or its connection could not be made)
 * and clears m->taken; nothing when m holds no token. The requests queued
 * behind it keep their times (they go no earlier than they would have);
 * the next reservation may use the token. */
void fly_rate_refund(const char *key, fly_limit limit, fly_rate_mark *m, double now);

/* fly_rate_reserve and fly_rate_admit that also fill *m, and take the token
 * only for a request that can still go in time: when the reservation's time
 * (reserve) or the time the request may go (admit) comes before `before`
 * (INFINITY: always). Otherwise the bucket keeps its token, *m tells nothing,
 * and the time returned says how late the request would have been. */
double fly_rate_reserve_marked(const char *key, fly_limit limit, double now, double before, fly_rate_mark *m);
double fly_rate_admit_marked(const char *key, fly_limit limit, double now, double margin, double before,
                             fly_rate_mark *m);

/* The request reserved with *m, ready at *ready_at, goes out at `now`: when
 * that is later than both its ready time and the moment its bucket would have
 * been full without it (both as pushed back since), by more than
 * FLY_RATE_SLACK, the bucket is pushed back by the difference, less what this
 * request pushed already (a resend). Brings *ready_at and *m up to date.
 * Returns 1 when it pushed. Without the lock when no bucket was pushed since. */
int fly_rate_sent(const char *key, fly_limit limit, double *ready_at, fly_rate_mark *m, double now);
#define FLY_RATE_SLACK 0.001

/* Seconds the request reserved with *m must add to its ready time for the
 * pushes of its bucket since (added to *ready_at; *m brought up to date). 0
 * in the common case, without taking the lock. */
double fly_rate_catch_up(const char *key, fly_rate_mark *m, double *ready_at);

/* The server answered 429 for `key`: empty the bucket so that the next
 * reservation waits for a refill. */
void fly_rate_penalize(const char *key, fly_limit limit, double now);

/* Number of buckets held (idle ones are dropped as new ones are made). */
size_t fly_rate_bucket_count(void);

/* Drops every bucket that has refilled completely by `now`. */
void fly_rate_sweep(double now);

#endif
