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
 * ("ready at"); a wait gets `margin` seconds more, which absorbs latency
 * jitter so a paced request does not reach the server a hair early. */
double fly_rate_admit(const char *key, fly_limit limit, double now, double margin);

/* Seconds on a monotonic clock. */
double fly_now(void);

/* Takes one token from the bucket `key` (created full on first use) and
 * returns the time at which the request may be sent: `now` when a token was
 * there, later when the request has to wait for the refill. The reservation
 * is made at once, so requests queued behind it get later times. */
double fly_rate_reserve(const char *key, fly_limit limit, double now);

/* The server answered 429 for `key`: empty the bucket so that the next
 * reservation waits for a refill. */
void fly_rate_penalize(const char *key, fly_limit limit, double now);

/* Number of buckets held (idle ones are dropped as new ones are made). */
size_t fly_rate_bucket_count(void);

/* Drops every bucket that has refilled completely by `now`. */
void fly_rate_sweep(double now);

#endif
