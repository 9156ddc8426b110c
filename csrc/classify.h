/* classify: what one attempt got -> success | final failure | retry at.
 *
 * Pure C on plain structs: no Lua, no libcurl. A transport fills a
 * fly_reply (the status line and the headers that matter, fed line by line
 * through fly_reply_header or by name through fly_reply_field; or a
 * transport failure: its code and whether the request may have reached the
 * server) and calls fly_classify, which counts the attempt and applies the
 * retry policy: which failures are retried (the operation's safety class),
 * the backoff with full jitter, 429 through the shared rate-limit bucket and
 * Retry-After, each retry taking its own place in the bucket, and the
 * deadline. */
#ifndef FLY_CLASSIFY_H
#define FLY_CLASSIFY_H

#include <stddef.h>
#include <stdint.h>

#include "ratelimit.h"

/* What the last attempt got. */
typedef struct fly_reply {
  long status;                 /* HTTP status; 0 when there was none */
  const char *code;            /* static: transport or local failure code, or NULL */
  int sent;                    /* the request may have reached the server */
  int retryable;               /* set by fly_classify */
  double retry_after;          /* seconds; < 0 when absent */
  char request_id[64], content_type[64];
} fly_reply;

/* The retry policy of one request and its state. */
typedef struct fly_retry {
  int safe;                    /* may be repeated after an ambiguous failure */
  int is_wait;                 /* a long poll: 408 means "not yet", not a timeout */
  int attempts, max_attempts;
  double deadline;             /* monotonic seconds; 0: none */
  double base, cap;            /* backoff: full jitter in [0, min(cap, base * 2^(n-1))) */
  double margin;               /* added to every rate-limit wait */
  const char *rate_key;        /* the bucket (owned by the request), NULL: not limited */
  fly_limit limit;
  uint64_t rng;                /* xorshift64* state; never 0 */
} fly_retry;

enum fly_verdict { FLY_SUCCESS, FLY_FAILURE, FLY_RETRY };

/* Clears the reply before an attempt. */
void fly_reply_reset(fly_reply *a);

/* Feeds one raw header line (as received, CRLF included or not). A status
 * line ("HTTP/...") starts a new response: returns 1 and clears the fields,
 * so the caller drops the body it has; else 0. */
int fly_reply_header(fly_reply *a, const char *line, size_t n);

/* Feeds one header by name and value (any case). */
void fly_reply_field(fly_reply *a, const char *name, size_t nn, const char *v, size_t vn);

/* The transport failure codes a transport may report (static strings;
 * too_large, a response larger than the transport accepts, is never retried), or
 * NULL for anything else. */
const char *fly_transport_code(const char *name);

/* Counts the attempt that ended in `a` (status, or code) and decides. For
 * FLY_RETRY, *retry_at is when to send it again (monotonic seconds); the
 * bucket token for that attempt is already taken. Sets a->retryable. */
int fly_classify(fly_retry *p, fly_reply *a, double now, double *retry_at);

#endif
