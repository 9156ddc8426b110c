/* fly.Request: one API call, whichever transport carries it.
 *
 * A Request owns everything the call needs (what build made, its retry
 * state, the last reply and its body). fly_request_call runs build and
 * admit; a transport then sends it at `ready_at`, reports each attempt's
 * outcome to classify, and sends it again at the time classify gives, until
 * the request is done. result(), success() and json() read a done request
 * the same way whatever carried it.
 *
 * Lifetime: a request carried by the libcurl transport is pinned in the
 * registry and linked into its client's live list while queued or running,
 * so the collector cannot free memory libcurl still uses; it is unpinned
 * when done. Cancel and __close end a live request (it stays readable);
 * only __gc frees its memory. */
#ifndef FLY_REQUEST_H
#define FLY_REQUEST_H

#include <lua.h>

#include "build.h"
#include "classify.h"
#include "client.h"
#include "operations.h"

#define REQUEST_MT "fly.Request"
#define ARRAY_MT "fly.array"

enum { KIND_HTTP, KIND_TIMER };
/* NEW: built, not on the libcurl loop (another transport carries it) */
enum { REQ_NEW, REQ_QUEUED, REQ_ACTIVE, REQ_DONE };

struct fly_easy;
struct curl_slist;

struct fly_request {
  fly_client *client;          /* set while on the libcurl loop */
  fly_request *prev, *next;    /* the client's list of live requests */
  fly_request *qprev, *qnext;  /* the client's queue (state QUEUED), oldest first */
  unsigned long long seq;      /* the order of pinning, which the queue keeps */
  const fly_operation *op;     /* NULL for timers */
  int kind, state, ref;        /* ref: registry pin while live */
  struct fly_easy *easy;       /* libcurl: borrowed from the pool while active */
  struct curl_slist *curl_headers; /* libcurl: owned copy of wire.headers, made at the first start */
  fly_wire wire;               /* owned: what build made */
  char *rate_key;              /* owned; NULL when not rate limited (retry.rate_key points here) */
  char *shared_key;            /* owned: the bucket's key in Redis; NULL without rate_limit.redis */
  int admitting;               /* libcurl: queued, waiting for Redis's answer (ready_at not final) */
  int shared_taken;            /* libcurl: Redis took a token for the attempt, which has not gone out */
  int held;                    /* libcurl: ready, but behind an unsent request on its bucket */
  fly_retry retry;
  fly_reply reply;             /* the last attempt */
  double ready_at;             /* monotonic seconds: when to send the next attempt */
  int external;                /* admitted by its transport, not by the core's buckets (_build) */
  int insecure;                /* _build: the client's TLS settings, for the wire form */
  long connect_timeout_ms;
  long timeout_ms;             /* per attempt */
  char *message;               /* owned: what went wrong, or NULL */
  char *auth;                  /* owned copy of its "Authorization: ..." line (reply.auth points
                                  here), wiped before it is freed; NULL when it has none */
  char *resp;                  /* owned response body, NUL-terminated */
  size_t resp_len, resp_cap;
  /* the trace (trace.h); all zero when the client has no hook */
  struct fly_trace *trace;     /* a reference to the client's queue, or NULL */
  long long call;              /* this call's number there */
  double attempt_start;        /* when the open attempt started */
  double trace_wait;           /* the wait before the next attempt */
  int trace_flags;             /* TRACE_OPEN: an attempt is running; TRACE_ENDED */
  size_t max_body;             /* the cap on resp_len (decoded bytes); 0: none */
  int too_large;               /* this attempt's body went over max_body */
};

fly_request *fly_check_request(lua_State *L, int idx);

/* A new zeroed request of `kind`, pushed on the stack. */
fly_request *fly_request_new(lua_State *L, int kind);

/* The part client:_submit and client:_build share: arguments at 1 (client),
 * 2 (operation id), 3 (params), 4 (opts); checks them (programmer errors at
 * call level `level`), builds and admits. Pushes the request and returns it,
 * not yet on any loop; the caller decides what a "ready at" past the
 * deadline means. */
fly_request *fly_request_call(lua_State *L, fly_client *c, int level);

/* Links a request into the client's live list and pins the value at idx. */
void fly_request_pin(lua_State *L, fly_client *c, fly_request *r, int idx);

/* Moves a pinned request to `state`, in the client's queue while it is
 * REQ_QUEUED (at its place by pinning order) and out of it otherwise. */
void fly_request_set_state(fly_request *r, int state);

/* Ends a request: stops its transfer, unlinks and unpins it. */
void fly_request_finish(lua_State *L, fly_request *r);

void fly_request_set_message(fly_request *r, const char *msg);
/* Sets the failure without ending the request. */
void fly_request_set_failure(fly_request *r, const char *code, const char *msg, int retryable);
/* Sets the failure and ends the request. */
void fly_request_fail(lua_State *L, fly_request *r, const char *code, const char *msg, int retryable);

/* Whether the request's next attempt, starting at `at`, fits before its
 * deadline: a first attempt before it, a retry with more time left than the
 * attempt before it took (fly_retry_fits). */
int fly_request_fits(const fly_request *r, double at);
/* The time (fly_now's clock) before which the request must be ready to fit
 * (fly_request_fits: `at < latest`); INFINITY without a deadline. */
double fly_request_latest(const fly_request *r);

/* Ends a request whose next attempt does not fit (the caller finishes or
 * delivers it): a retry keeps the outcome of the attempt before it, which is
 * what happened; a request with no outcome yet becomes a timeout (`why`). */
void fly_request_out_of_time(fly_request *r, const char *why);

/* Appends response body bytes; 0 on out of memory, or past max_body (then
 * too_large is set and what fits below max_body is kept). */
int fly_request_add_body(fly_request *r, const char *data, size_t len);
/* Drops the response body received so far (and its too_large mark). */
void fly_request_clear_body(fly_request *r);

/* An attempt's bytes are all in (before classify): a body past max_body
 * becomes code too_large, a 2xx the operation does not return (see
 * fly_reply_accept) code protocol, both keeping the status; in a reply that
 * is not a success, the request's credentials are masked (fly_request_scrub),
 * so they never reach an error. (The header fields a reply keeps are masked
 * as they come: fly_reply_field.) */
void fly_request_accept(fly_request *r);
/* Masks the credentials of the request's Authorization line in its body and
 * message: for a reply that becomes an error. */
void fly_request_scrub(fly_request *r);
/* Whether the request's body may be the head of a longer one, cut at
 * max_body or by a failed transfer: it may then end inside the token. */
int fly_request_body_cut(const fly_request *r);

int fly_l_decode(lua_State *L);
int fly_l_build(lua_State *L);
int fly_l_request_gc(lua_State *L);
int fly_l_request_close(lua_State *L);
int fly_l_request_tostring(lua_State *L);
extern const luaL_Reg fly_request_methods[];

#endif
