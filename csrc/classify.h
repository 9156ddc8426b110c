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

/* The media type of a response, read from its whole Content-Type. */
enum fly_media {
  FLY_MEDIA_NONE,              /* no Content-Type */
  FLY_MEDIA_JSON,              /* application/json, or any type whose subtype ends in +json */
  FLY_MEDIA_TEXT,              /* text/plain */
  FLY_MEDIA_BYTES,             /* application/octet-stream */
  FLY_MEDIA_OTHER
};

/* What the last attempt got. */
typedef struct fly_reply {
  long status;                 /* HTTP status; 0 when there was none */
  const char *code;            /* static: transport or local failure code, or NULL */
  int sent;                    /* the request may have reached the server */
  int resends;                 /* times the transport sent it again by itself (see fly_event) */
  int unclear_resend;          /* one of them followed a send the server may have processed */
  int retryable;               /* set by fly_classify */
  int keep_status;             /* code is about a response that had a status: keep it */
  int body_seen;               /* body bytes arrived: header lines now are trailers */
  int media;                   /* enum fly_media */
  double retry_after;          /* seconds; < 0 when absent */
  char request_id[64], content_type[64]; /* cut to 63 bytes: media holds the type's meaning */
  const char *auth;            /* the request's "Authorization: ..." line (not owned; kept by
                                  fly_reply_reset), or NULL: masked in request_id and content_type */
} fly_reply;

/* The retry policy of one request and its state. */
typedef struct fly_retry {
  int safe;                    /* may be repeated after an ambiguous failure */
  int is_wait;                 /* a long poll: 408 means "not yet", not a timeout */
  int attempts, max_attempts;
  double deadline;             /* monotonic seconds; 0: none */
  double started;              /* when the last attempt started (set by the transport); 0: none yet */
  double took;                 /* seconds the last attempt took, start to outcome (fly_classify) */
  double base, cap;            /* backoff: full jitter in [0, min(cap, base * 2^(n-1))) */
  double margin;               /* a request goes at least this long after its token came */
  double max_wait;             /* the longest Retry-After honoured; longer: the 429 is final */
  const char *rate_key;        /* the bucket (owned by the request), NULL: not limited */
  fly_limit limit;
  fly_rate_mark mark;          /* the last reservation's, for fly_rate_sent and fly_rate_catch_up */
  uint64_t rng;                /* xorshift64* state; never 0 */
  int may_have_run;            /* an attempt went out and ended without a definitive answer */
} fly_retry;

enum fly_verdict { FLY_SUCCESS, FLY_FAILURE, FLY_RETRY };

/* Clears the reply before an attempt. */
void fly_reply_reset(fly_reply *a);

/* Feeds one raw header line (as received, CRLF included or not). A status
 * line ("HTTP/1.1 200 …", "HTTP/2 200") before any body byte starts a new
 * response (an interim 1xx, a proxy's CONNECT answer): returns 1 and clears
 * the fields, so the caller drops the body it has; else 0. Once the
 * transport has set body_seen, lines are trailers: ignored, whatever they
 * start with. */
int fly_reply_header(fly_reply *a, const char *line, size_t n);

/* Feeds one header by name and value (any case). */
void fly_reply_field(fly_reply *a, const char *name, size_t nn, const char *v, size_t vn);

/* The transport failure codes a transport may report (static strings), or
 * NULL for anything else: timeout, connect, resolve, tls, reset, protocol,
 * too_large (a response over the size cap). */
const char *fly_transport_code(const char *name);

/* Checks a success (a 2xx reply with no failure code) against what the
 * operation returns (enum fly_returns): NULL when it is one, else why not.
 *   FLY_RETURNS_JSON: a body whose first non-blank byte opens an object or
 *     an array, labelled JSON (or not labelled); the decoder checks the rest.
 *   FLY_RETURNS_TEXT: a non-empty body labelled text/plain (or not labelled).
 *   FLY_RETURNS_NONE: anything. */
const char *fly_reply_accept(const fly_reply *a, int returns, const char *body, size_t n);

/* The step between an attempt's bytes and fly_classify: a body that went
 * over the cap (too_large nonzero) becomes code "too_large", a 2xx that
 * fly_reply_accept refuses code "protocol", both keeping the status. Returns
 * why (a static message) when it set a code, else NULL. */
const char *fly_reply_settle(fly_reply *a, int returns, const char *body, size_t n, int too_large);

/* Masks with '*', in buf[0..n), every occurrence of the credentials of the
 * header line `auth` ("Authorization: <scheme> <token>"): the token, and
 * each of its comma-separated parts of 8 bytes or more, written plainly or
 * with JSON escapes. */
void fly_scrub(char *buf, size_t n, const char *auth);
/* The same for buf[0..n) that is the head of something longer, cut at n:
 * also masks its end when it spells the start of the token or a part. */
void fly_scrub_head(char *buf, size_t n, const char *auth);

/* Counts the attempt that ended in `a` (status, or code) and decides. For
 * FLY_RETRY, *retry_at is when to send it again (monotonic seconds); the
 * bucket token for that attempt is already taken. Sets a->retryable.
 * too_large is never retried; a 429 whose Retry-After is over max_wait (or
 * past the deadline) is final at once, retry_after kept. A retry that would
 * not fit before the deadline (fly_retry_fits) is not made: the attempt's
 * outcome is final. */
int fly_classify(fly_retry *p, fly_reply *a, double now, double *retry_at);

/* Whether a retry starting at `at` fits before the deadline: more time than
 * the attempt before it took must be left. A shorter one would likely be cut off
 * by the deadline, and one cut off after it went out leaves a call that is
 * not safe to repeat with an unknown outcome (and takes a token for nothing). */
int fly_retry_fits(const fly_retry *p, double at);

#endif
