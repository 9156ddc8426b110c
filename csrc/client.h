/* fly.Client: what core.new builds from its options, shared by every request
 * of the client (base URL, headers with the Authorization line, timeouts,
 * rate-limit and retry settings), the transport state, and close. */
#ifndef FLY_CLIENT_H
#define FLY_CLIENT_H

#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>

#include "build.h"
#include "ratelimit.h"

#define CLIENT_MT "fly.Client"
#define OVERRIDES_MAX 32

typedef struct fly_client fly_client;
typedef struct fly_request fly_request;
struct fly_curl;
struct fly_redis;

struct fly_client {
  int closed;
  char *base_url;              /* owned, without trailing slash */
  char identity[33];           /* hash of base URL and token: the bucket owner (fly_redis_identity) */
  fly_strlist headers;         /* owned: Authorization, User-Agent, Accept, extras */
  fly_strlist json_headers;    /* owned: the same plus Content-Type */
  fly_build_base base;         /* points into the fields above */
  struct fly_curl *curl;       /* owned: the libcurl transport's state */
  char *ca_file;               /* owned or NULL */
  int insecure;
  long timeout_ms, connect_timeout_ms;
  double deadline;             /* seconds a call may take in all, unless it says; 0: no limit */
  int rate_limit;
  double rate_scale;
  double rate_margin;          /* requests go at least this long after their token came:
                                  absorbs latency jitter (0..1 s) */
  fly_override overrides[OVERRIDES_MAX];
  int noverrides;
  int max_attempts;
  double retry_base, retry_cap;
  double retry_max_wait;       /* the longest Retry-After honoured (seconds) */
  size_t max_body;             /* the cap on a response body, decoded bytes */
  uint64_t rng;                /* seeds each request's backoff jitter */
  fly_request *live;           /* requests queued or running on the libcurl transport */
  fly_request *queue, *queue_tail; /* the live requests in state REQ_QUEUED, oldest first: what
                                  the loop may start looks at these only (request.c) */
  unsigned long long pinned;   /* requests pinned so far (their seq) */
  struct fly_trace *trace;     /* a reference to the trace queue (trace.h), kept until __gc; NULL: no hook */
  struct fly_redis *redis;     /* owned or NULL: rate_limit.redis, the buckets shared through Redis */
  unsigned long turns;         /* steps begun so far (step_once): a step that ran Lua code sees
                                  whether another step ran meanwhile */
  size_t idle_heap;            /* the Lua heap (bytes) when a blocking wait last began; 0: none yet */
  int idle_kb;                 /* what a call allocates between two blocking waits (KB), as last seen */
};

/* The client at idx; raises when it is closed. */
fly_client *fly_check_client(lua_State *L, int idx);

/* A fresh nonzero seed for a request's jitter. */
uint64_t fly_client_seed(fly_client *c);

/* Cancels every live request and frees what the client owns; idempotent. */
void fly_client_close(lua_State *L, fly_client *c);

int fly_l_new(lua_State *L);
int fly_l_client_gc(lua_State *L);
int fly_l_client_tostring(lua_State *L);
extern const luaL_Reg fly_client_methods[];

#endif
