/* Rate-limit buckets shared through Redis: every process on every host that
 * uses the same Redis draws from the same buckets.
 *
 * One bucket is one key holding its theoretical arrival time (GCRA); one
 * admission is one EVALSHA of a script that reads the server's clock, moves
 * the key forward by one token and answers how long the request must wait.
 * The semantics are those of ratelimit.c's buckets: a reservation is made at
 * once (requests queued behind it get later times), `rate` tokens a second,
 * at most `burst` in a row.
 *
 * Non-blocking: a fly_redis belongs to one client (one thread at a time),
 * and none of its calls made from the loop blocks (fly_redis_connect, made
 * when the client is created, may wait for the resolver; see below). The
 * owner's loop watches the socket
 * (fly_redis_fd), calls fly_redis_io when it is ready or when
 * fly_redis_next_timeout has elapsed, and drains the answers with
 * fly_redis_next. No callback ever runs outside fly_redis_* calls.
 *
 * Redis away, slow or wrong never fails an admission: an admission not
 * answered within `timeout` seconds comes back as FLY_REDIS_LOCAL (the caller
 * uses its local bucket), the limiter is marked down and tries again at the
 * first admission after `retry` seconds; while down, fly_redis_admit answers
 * FLY_REDIS_LOCAL at once without touching the network.
 *
 * One connection per fly_redis, hence per client: clients may live on
 * different threads, and a connection shared between them would need a lock
 * on the hot path and a loop to own it. A host name is resolved (getaddrinfo)
 * before hiredis connects to the address: fly_redis_connect waits for the
 * resolver; a reconnection from the loop (an admission) resolves on a thread
 * of its own and sends admissions to the local bucket meanwhile, so no call
 * of the loop waits for the resolver (one that takes longer than `timeout`
 * marks the limiter down, as an unanswered admission does). An IP address or
 * a Unix socket is never resolved. A single Redis (or a primary) is expected:
 * Redis Cluster's redirections count as wrong answers.
 *
 * Wiring into a loop (what the client's loop does):
 *   - at admission, instead of fly_rate_reserve: fly_redis_admit(key, limit,
 *     0, request, now); 0 -> the request waits in a state "admitting" (not
 *     launched, not counted by the earliest ready time); FLY_REDIS_LOCAL ->
 *     fly_rate_reserve as without Redis;
 *   - every turn: fd = fly_redis_fd(&events) as one more curl_waitfd for
 *     curl_multi_poll; the poll's timeout no later than
 *     fly_redis_next_timeout; then fly_redis_io(revents or 0, now) and drain
 *     fly_redis_next: GRANTED -> ready_at = max(now, max(answer.ready_at,
 *     fly_rate_reserve(key, limit, now)) + margin) (the local bucket keeps
 *     counting this process's requests, so a fallback goes on from where this
 *     process stood); LOCAL -> fly_rate_admit; then queued;
 *   - a 429: fly_redis_admit(..., penalize = 1, ...) (after fly_rate_penalize)
 *     for its retry; fly_redis_penalize when the 429 is the call's answer;
 *   - a request cancelled or finished while admitting: fly_redis_cancel;
 *   - a request whose admission took a token (answer.took) and that never
 *     went out: fly_redis_refund;
 *   - fly_redis_warning after fly_redis_io/admit, to the trace hook or stderr. */
#ifndef FLY_REDIS_H
#define FLY_REDIS_H

#include <stddef.h>

#include "ratelimit.h"

typedef struct fly_redis fly_redis;

/* Length of the hex identity fly_redis_identity writes (plus a NUL). */
#define FLY_REDIS_ID_LEN 32

/* Which answer an admission got. */
enum {
  FLY_REDIS_GRANTED = 1, /* Redis reserved a place: its time is ready_at */
  FLY_REDIS_LOCAL = 2    /* Redis did not answer in time or is down: use the local bucket */
};

typedef struct fly_redis_answer {
  void *cookie;     /* as given to fly_redis_admit */
  int status;       /* FLY_REDIS_GRANTED or FLY_REDIS_LOCAL */
  double ready_at;  /* GRANTED: the reservation's time, as fly_rate_reserve's (the
                       `now` of the fly_redis_io call that read the answer, plus the
                       delay Redis computed); the request goes `margin` after it, or
                       at once when that is past */
  double delay;     /* GRANTED: the delay Redis computed, in seconds (negative when the
                       token was there already) */
  int took;         /* GRANTED: Redis took a token for it (not when the delay was past its
                       `latest`): fly_redis_refund gives it back if the request never goes out */
} fly_redis_answer;

/* Counters, for tests and traces. */
typedef struct fly_redis_stats {
  unsigned long granted;    /* admissions Redis answered */
  unsigned long local;      /* admissions sent back to the local bucket */
  unsigned long reloads;    /* NOSCRIPT answers followed by a reload */
  unsigned long connects;   /* connection attempts */
  int down;                 /* 1 while the limiter is marked down */
} fly_redis_stats;

/* Parses `url` (redis://[[user]:password@]host[:port][/db] or
 * unix:///path.sock[?db=N][&password=P], password percent-encoded); the
 * connection opens at fly_redis_connect or at the first admission, so a
 * client that never admits here (inside nginx, whose transport has buckets of
 * its own) need not open one. `timeout`: seconds an admission may wait for its answer;
 * `retry`: seconds between reconnection attempts while down. Returns NULL
 * with a message in err (never containing the password) when the URL is bad
 * or memory is short: a programmer error for the caller to raise. A Redis
 * that cannot be reached is not an error here: the limiter starts down. */
fly_redis *fly_redis_new(const char *url, double timeout, double retry, char *err, size_t errlen);

/* Starts connecting now, unless a connection is open or the limiter is down
 * and not yet due to retry. */
void fly_redis_connect(fly_redis *r, double now);

/* Closes the connection; pending admissions are dropped without results (one
 * without a latest delay, whose token Redis takes for sure, gets it back). */
void fly_redis_free(fly_redis *r);

/* The socket to watch, or -1 when there is none; *events gets POLLIN and/or
 * POLLOUT (<poll.h>, the same bits as CURL_WAIT_POLLIN/CURL_WAIT_POLLOUT). */
int fly_redis_fd(fly_redis *r, short *events);

/* Reads and writes what the socket allows (revents: POLLIN, POLLOUT, POLLERR,
 * POLLHUP; 0 when only time has passed), then ends admissions whose answer is
 * overdue (an answer that came while the caller did not look is read first).
 * Answers go to the result queue. */
void fly_redis_io(fly_redis *r, short revents, double now);

/* Seconds from `now` until fly_redis_io must be called even if the socket is
 * quiet (the oldest admission's timeout), or -1 when nothing is pending. */
double fly_redis_next_timeout(fly_redis *r, double now);

/* Sends an admission for bucket `key` (see fly_redis_key) under `limit`.
 * penalize: first empty the bucket (the server answered 429), as
 * fly_rate_penalize. latest: the latest delay (seconds from when the token
 * came to now, as the answer's `delay`) at which the request is still in
 * time; one that is later takes no token, and its answer's delay says how
 * late it is (INFINITY: any). Returns 0 when the admission is on its way: exactly one
 * answer will come through fly_redis_next with this cookie (unless it is
 * cancelled); or FLY_REDIS_LOCAL when the limiter is down (or short of
 * memory): use the local bucket now, nothing is queued. */
int fly_redis_admit(fly_redis *r, const char *key, fly_limit limit, int penalize, double latest,
                    void *cookie, double now);

/* Gives back to bucket `key` the token an admission took (its answer's
 * `took`) for a request that then never went out (its connection could not
 * be made, or it ended while it waited): the bucket moves one interval back,
 * never past full. Nothing answers; while Redis is down or not connected the
 * token stays taken (it was taken in a bucket this process cannot reach). */
void fly_redis_refund(fly_redis *r, const char *key, fly_limit limit, double now);

/* Empties bucket `key` after a 429 that no retry follows (one that is
 * retried is admitted with penalize = 1 instead): no token is taken. Nothing
 * answers; while Redis is down or not connected only the local bucket was
 * emptied. */
void fly_redis_penalize(fly_redis *r, const char *key, fly_limit limit, double now);

/* Forgets the admission with this cookie (its request went away): no result
 * will be queued for it, and a token Redis takes for it is given back.
 * Returns 1 when its answer had come already and took a token, which the
 * caller gives back (fly_redis_refund: it knows the bucket). */
int fly_redis_cancel(fly_redis *r, void *cookie);

/* Pops the oldest answer into *out: 1, or 0 when there is none. */
int fly_redis_next(fly_redis *r, fly_redis_answer *out);

/* A message for the trace hook or stderr, once per change (Redis became
 * unavailable, or available again: *available, unless NULL, says which), or
 * NULL. Valid until the next fly_redis_* call. Never contains the password. */
const char *fly_redis_warning(fly_redis *r, int *available);

void fly_redis_get_stats(const fly_redis *r, fly_redis_stats *out);

/* The bucket owner's name: hex of the first 128 bits of SHA-256(base URL,
 * "\n", token). One-way: the key names in Redis never reveal the token.
 * Returns 0 only when OpenSSL is out of memory. */
int fly_redis_identity(const char *base, size_t base_len, const char *token, size_t token_len,
                       char out[FLY_REDIS_ID_LEN + 1]);

/* Writes "fly:rl:<identity>:<action>:<scope>" into out (NUL-terminated);
 * returns its length, or the length it would need (>= outlen: truncated). */
size_t fly_redis_key(char *out, size_t outlen, const char *identity, const char *action,
                     const char *scope);

#endif
