/* Process-wide token buckets, shared by every client (and every Lua state and
 * thread) that talks to the same base URL with the same token. */
#ifndef FLY_RATELIMIT_H
#define FLY_RATELIMIT_H

#include <stddef.h>

typedef struct fly_limit {
  double rate;   /* tokens per second */
  double burst;  /* bucket capacity */
} fly_limit;

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
