/* trace: what a call does, recorded for a hook in Lua.
 *
 * A client made with a trace hook owns a fly_trace: a bounded queue of small
 * events. The shared steps of a call record into it, whichever transport
 * carries the call: admission (a rate-limit wait), the start of an attempt,
 * its end (status or transport failure, time taken) and the retry decision
 * that follows (retry after a wait, or give up); and, of no call, the shared
 * rate limiter going away or coming back. No Lua runs while
 * recording (libcurl callbacks never record); the Lua layer takes the queued
 * events with client:_trace() after each step and hands them to the hook, in
 * order.
 *
 * Ownership: the queue is reference-counted. The client holds one
 * reference, and each request it builds holds another until the request is
 * collected, so a request carried by another transport records safely even
 * after its client is gone. The queue owns its events and what they point
 * to (a copy of the path, bodies and header lines when asked for).
 *
 * A client without a hook has no fly_trace: every hook point is one NULL
 * test, nothing is allocated or queued. Never recorded: the token, the
 * Authorization header, and bodies unless the client asked for them. */
#ifndef FLY_TRACE_H
#define FLY_TRACE_H

#include <lua.h>
#include <stddef.h>

#include "build.h"

/* At most this many events wait for the Lua layer; past that, events are
 * counted as dropped. */
#define FLY_TRACE_MAX 4096

enum fly_event_kind { FLY_EV_WAIT, FLY_EV_START, FLY_EV_FINISH, FLY_EV_RETRY, FLY_EV_GIVEUP, FLY_EV_LIMITER };

typedef struct fly_event {
  int kind;
  int attempt;                 /* 1 for the first attempt */
  long long call;              /* the call's number on its client (1, 2, …) */
  double time;                 /* monotonic seconds when it happened */
  const char *operation, *method; /* static: the operation table's */
  char *path;                  /* owned copy, or NULL */
  long status;                 /* 0: none */
  const char *code;            /* static: a failure code, or NULL */
  int retryable;               /* finish/giveup: the failure was retryable */
  double seconds;              /* finish: the attempt's time; < 0: unknown */
  int resends;                 /* finish: times libcurl sent the attempt again by itself, on a new
                                  connection after a reused one failed before any answer (or a
                                  stream the server refused) */
  double wait;                 /* wait, retry: the delay ahead; start, finish: the one before */
  char request_id[64];
  char *body;                  /* owned, with bodies only: sent (start) or received (finish) */
  size_t body_len;
  fly_strlist headers;         /* owned, with bodies only (start): sent, without Authorization */
  char *message;               /* owned: limiter, what it says */
  int available;               /* limiter: the shared limiter is available (again) */
} fly_event;

typedef struct fly_trace {
  int refs;                    /* the client and each traced request */
  int bodies;                  /* record bodies and header lines */
  long long calls;             /* calls numbered so far */
  fly_event *ev;               /* ring of cap events, n of them from head */
  size_t head, n, cap;
  size_t dropped;              /* events lost since the last take */
} fly_trace;

struct fly_request;

/* A new queue with one reference (the caller's), or NULL on out of memory. */
fly_trace *fly_trace_new(int bodies);
/* Drops a reference; the last one frees the queue and its events. NULL: no-op. */
void fly_trace_release(fly_trace *t);

/* Admission: the request joins the queue `t` (takes a reference, gets its
 * call number) and, when it has to wait before its first attempt, records
 * a wait. */
void fly_trace_admit(struct fly_request *r, fly_trace *t, double now);
/* A delay before the next attempt decided outside classify (a transport's
 * own admission). */
void fly_trace_wait(struct fly_request *r, double wait, double now);
/* An attempt starts (once per attempt; calling again is harmless). `headers`
 * are the lines sent, recorded only with bodies. */
void fly_trace_start(struct fly_request *r, const fly_strlist *headers, double now);
/* After classify: the attempt's end, then retry (verdict FLY_RETRY, at
 * `retry_at`) or give up (a retryable failure left without attempts). */
void fly_trace_attempt(struct fly_request *r, int verdict, double now, double retry_at);
/* A request ends outside classify (cancelled, deadline passed while
 * waiting): closes an open attempt, or records the give-up. */
void fly_trace_end(struct fly_request *r);

/* The client's shared rate limiter (Redis) became unavailable, or available
 * again (`available`): an event of no call, with the message that would
 * otherwise go to stderr. 0 when the queue had no room (counted as dropped):
 * the caller tells it elsewhere. */
int fly_trace_limiter(fly_trace *t, const char *message, int available, double now);

/* client:_trace() -> the events queued since the last call, as tables, or
 * nothing when there are none (or the client has no hook). */
int fly_l_trace(lua_State *L);

#endif
