/* fly.Request: lifetime, the shared build + admit step, the seam for other
 * transports, and reading a finished request. See request.h.
 *
 * The seam (for a transport written in Lua, e.g. on nginx cosockets):
 *   client:_build(op, params, opts, level, external) -> Request: built and
 *       admitted (its token taken from the rate-limit bucket), not started;
 *       with `external` true the core's buckets are left alone: the
 *       transport admits it through buckets of its own (_rate, _admit);
 *   req:_ready_at()  -> when to send it (monotonic seconds, core.now());
 *   req:_rate()      -> key, rate, burst, margin: the bucket that paces it
 *       (nothing when rate limiting is off);
 *   req:_admit(wait) -> "ready", at | "done": send it `wait` seconds from
 *       now, or it is done (the wait runs past its deadline);
 *   req:_wire()      -> { method, url, scheme, host, port, target, headers =
 *       {"Name: value", ...}, body, safe, timeout, connect_timeout,
 *       insecure, max_body }: what to send (the headers include
 *       Authorization: never log them; Host, Content-Length and Connection
 *       are the transport's to write) and the largest body to take in
 *       (bytes; past it the transport stops reading and reports too_large);
 *   req:_complete(status, headers, body) / req:_failed(code, message, sent)
 *       -> "done", or "retry", at[, bucket]: classify's verdict on the
 *       attempt; for an externally admitted request that is rate limited,
 *       `bucket` says what its bucket must do before the retry ("penalize"
 *       after a 429, then "reserve" as for any retry), and the retry waits
 *       for the later of `at` and the bucket; "done", nil, "penalize": a 429
 *       ends the call, and its bucket is emptied (no token taken). After "done", result(),
 *       success() and json() read it exactly as they read a request the
 *       libcurl transport carried. */
#include "request.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "compat.h"
#include "curl.h"
#include "json.h"
#include "ops.h"
#include "trace.h"
#include "redis.h"
#include "util.h"

/* The most of a body result() gives (an error's body). */
#define FLY_ERROR_BODY_MAX 4096
/* Bytes of max_body per JSON value a body may decode to. */
#define FLY_BYTES_PER_VALUE 32

fly_request *fly_check_request(lua_State *L, int idx) { return luaL_checkudata(L, idx, REQUEST_MT); }

fly_request *fly_request_new(lua_State *L, int kind) {
  fly_request *r = fly_newuserdata(L, sizeof *r);
  memset(r, 0, sizeof *r);
  r->kind = kind;
  r->ref = LUA_NOREF;
  r->reply.retry_after = -1;
  fly_setmetatable(L, REQUEST_MT);
  return r;
}

/* ------------------------------------------------------------- lifetime */

void fly_request_pin(lua_State *L, fly_client *c, fly_request *r, int idx) {
  lua_pushvalue(L, idx);
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  r->client = c;
  r->next = c->live;
  if (c->live) c->live->prev = r;
  c->live = r;
  r->seq = ++c->pinned;
  fly_request_set_state(r, REQ_QUEUED);
}

/* Puts r in its client's queue after the last request pinned before it: at
 * the end when it is new, further in when a retry or a resend comes back. */
static void queue_insert(fly_client *c, fly_request *r) {
  fly_request *after = c->queue_tail;
  while (after && after->seq > r->seq) after = after->qprev;
  r->qprev = after;
  r->qnext = after ? after->qnext : c->queue;
  if (r->qnext) r->qnext->qprev = r;
  else c->queue_tail = r;
  if (after) after->qnext = r;
  else c->queue = r;
}

static void queue_remove(fly_client *c, fly_request *r) {
  if (r->qprev) r->qprev->qnext = r->qnext;
  else c->queue = r->qnext;
  if (r->qnext) r->qnext->qprev = r->qprev;
  else c->queue_tail = r->qprev;
  r->qprev = r->qnext = NULL;
}

void fly_request_set_state(fly_request *r, int state) {
  fly_client *c = r->client;
  if (c && r->state == REQ_QUEUED && state != REQ_QUEUED) queue_remove(c, r);
  if (c && r->state != REQ_QUEUED && state == REQ_QUEUED) queue_insert(c, r);
  r->state = state;
}

static void request_unlink(fly_request *r) {
  fly_client *c = r->client;
  if (!c) return;
  if (r->state == REQ_QUEUED) queue_remove(c, r);
  if (r->prev) r->prev->next = r->next;
  else c->live = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
  r->client = NULL;
}

void fly_request_finish(lua_State *L, fly_request *r) {
  if (r->trace && r->state != REQ_DONE) {
    fly_curl_note(r);
    fly_trace_end(r);
  }
  /* ended before its attempt went out (cancelled, past its deadline while it waited): the
     bucket gets its token back */
  if (r->retry.rate_key && r->state != REQ_DONE)
    fly_rate_refund(r->retry.rate_key, r->retry.limit, &r->retry.mark, fly_now());
  fly_curl_stop(r);
  request_unlink(r);
  r->state = REQ_DONE;
  if (r->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    r->ref = LUA_NOREF;
  }
}

void fly_request_set_message(fly_request *r, const char *msg) {
  free(r->message);
  r->message = msg ? dupn(msg, strlen(msg)) : NULL; /* NULL on out of memory: the code remains */
}

void fly_request_set_failure(fly_request *r, const char *code, const char *msg, int retryable) {
  r->reply.code = code;
  r->reply.retryable = retryable;
  fly_request_set_message(r, msg);
}

void fly_request_fail(lua_State *L, fly_request *r, const char *code, const char *msg, int retryable) {
  /* cut off after it went out: it may run all the same */
  if (r->state == REQ_ACTIVE && (r->reply.sent || fly_curl_went_out(r))) r->retry.may_have_run = 1;
  fly_request_set_failure(r, code, msg, retryable);
  fly_request_finish(L, r);
}

int fly_request_fits(const fly_request *r, double at) {
  if (r->retry.deadline <= 0) return 1;
  return r->retry.attempts == 0 ? at < r->retry.deadline : fly_retry_fits(&r->retry, at);
}

double fly_request_latest(const fly_request *r) {
  if (r->retry.deadline <= 0) return INFINITY;
  return r->retry.attempts == 0 ? r->retry.deadline : r->retry.deadline - r->retry.took;
}

void fly_request_out_of_time(fly_request *r, const char *why) {
  /* a retry's last outcome stays, unless a restart that sent nothing cleared it */
  if (r->retry.attempts > 0 && (r->reply.status || r->reply.code)) return;
  r->reply.status = 0;
  fly_request_set_failure(r, "timeout", why, 1);
}

int fly_request_add_body(fly_request *r, const char *data, size_t len) {
  int over = r->max_body && len > r->max_body - r->resp_len;
  if (over) { /* what fits is kept: an error shows the head of what came */
    len = r->max_body - r->resp_len;
    r->too_large = 1;
    if (len == 0) return 0;
  }
  if (r->resp_len + len + 1 > r->resp_cap) {
    size_t cap = r->resp_cap ? r->resp_cap : 1024;
    while (cap < r->resp_len + len + 1) cap *= 2;
    if (r->max_body && cap > r->max_body + 1) cap = r->max_body + 1; /* memory bounded by the cap */
    char *p = realloc(r->resp, cap);
    if (!p) return 0;
    r->resp = p;
    r->resp_cap = cap;
  }
  memcpy(r->resp + r->resp_len, data, len);
  r->resp_len += len;
  r->resp[r->resp_len] = '\0'; /* the JSON decoder may rely on it */
  return !over;
}

void fly_request_clear_body(fly_request *r) {
  r->resp_len = 0;
  r->too_large = 0;
  if (r->resp) r->resp[0] = '\0';
}

void fly_request_accept(fly_request *r) {
  fly_reply *a = &r->reply;
  const char *why = fly_reply_settle(a, r->op->returns, r->resp, r->resp_len, r->too_large);
  if (why && r->too_large) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s (%zu bytes)", why, r->max_body);
    fly_request_set_message(r, msg);
  } else if (why) {
    fly_request_set_message(r, why);
  }
  if (!a->code && a->status >= 200 && a->status <= 299) return;
  fly_request_scrub(r);
}

int fly_request_body_cut(const fly_request *r) { return r->too_large || r->reply.code; }

void fly_request_scrub(fly_request *r) {
  if (!r->auth) return;
  if (fly_request_body_cut(r)) fly_scrub_head(r->resp, r->resp_len, r->auth);
  else fly_scrub(r->resp, r->resp_len, r->auth);
  if (r->message) fly_scrub(r->message, strlen(r->message), r->auth);
}

/* Frees what the request owns: only the collector calls this. */
int fly_l_request_gc(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  fly_trace_release(r->trace), r->trace = NULL; /* nothing to record while collected */
  fly_request_finish(L, r);
  fly_curl_request_free(r);
  fly_wire_free(&r->wire);
  free(r->rate_key), r->rate_key = NULL;
  free(r->shared_key), r->shared_key = NULL;
  r->retry.rate_key = NULL;
  free(r->resp), r->resp = NULL;
  r->resp_len = r->resp_cap = 0;
  free(r->message), r->message = NULL;
  if (r->auth) explicit_bzero(r->auth, strlen(r->auth)), free(r->auth), r->auth = NULL;
  r->reply.auth = NULL;
  return 0;
}

/* __close: ends the request if it is still live (as cancel does); it stays
 * readable, its memory goes with __gc. */
int fly_l_request_close(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  if (r->state != REQ_DONE) fly_request_fail(L, r, "cancelled", "cancelled", 0);
  return 0;
}

/* ------------------------------------------------------- build + admit */

static fly_request *build_admit(lua_State *L, fly_client *c, int level, int external) {
  const char *id = luaL_checkstring(L, 2);
  const fly_operation *op = fly_operation_find(id);
  if (!op) raise_at(L, level, "fly: unknown operation '%s'", id);
  if (lua_isnil(L, 3)) lua_newtable(L), lua_replace(L, 3);
  if (!lua_istable(L, 3)) raise_at(L, level, "fly: %s: params must be a table", op->id);
  int has_opts = !lua_isnil(L, 4);
  if (has_opts && !lua_istable(L, 4)) raise_at(L, level, "fly: %s: options must be a table", op->id);

  /* the request owns everything built from here on, also when an error is
     raised half-way (its __gc frees it) */
  fly_request *r = fly_request_new(L, KIND_HTTP);
  int ridx = lua_gettop(L);
  r->op = op;
  r->timeout_ms = c->timeout_ms;
  r->max_body = c->max_body;
  r->retry.max_attempts = c->max_attempts;
  double deadline = c->deadline; /* the client's, unless the call gives its own */
  if (has_opts) {
    lua_pushnil(L);
    while (lua_next(L, 4)) {
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      if (!k || (strcmp(k, "timeout") != 0 && strcmp(k, "deadline") != 0 && strcmp(k, "attempts") != 0))
        raise_at(L, level, "fly: %s: unknown option '%s' (options are timeout, deadline, attempts)", op->id,
                 k ? k : luaL_typename(L, -2));
      if (lua_type(L, -1) != LUA_TNUMBER)
        raise_at(L, level, "fly: %s: option '%s' must be a number (got %s)", op->id, k, luaL_typename(L, -1));
      lua_pop(L, 1);
    }
    double timeout = opt_number_field(L, 4, "timeout", 1);
    double own = opt_number_field(L, 4, "deadline", 1);
    double attempts = opt_number_field(L, 4, "attempts", 1);
    if (!(timeout > 0) || !(own > 0) || !(attempts >= 1) || attempts != floor(attempts))
      raise_at(L, level, "fly: %s: options timeout and deadline must be > 0, attempts a whole number >= 1",
               op->id);
    if (rawfield(L, 4, "timeout") != LUA_TNIL) r->timeout_ms = seconds_to_ms(timeout);
    if (rawfield(L, 4, "attempts") != LUA_TNIL) r->retry.max_attempts = attempts > 1000 ? 1000 : (int)attempts;
    if (rawfield(L, 4, "deadline") != LUA_TNIL) deadline = own > 1e8 ? 0 : own; /* math.huge: none */
    lua_pop(L, 3);
  }

  fly_build(L, &c->base, op, 3, level, &r->wire);
  /* the credentials to mask in what the server sends back, kept by the
     request: it may be read after its client is gone */
  const char *auth = fly_strlist_auth(fly_wire_headers(&r->wire, &c->base));
  if (auth) {
    if (!(r->auth = dupn(auth, strlen(auth)))) luaL_error(L, "fly: out of memory");
    r->reply.auth = r->auth;
    /* the path is only shown (errors, traces, tostring): a token given by mistake as a path
       parameter is not (the URL sent keeps it) */
    fly_scrub(r->wire.path, strlen(r->wire.path), r->auth);
  }

  fly_retry *p = &r->retry;
  p->safe = r->wire.safe;
  p->is_wait = strcmp(op->id, "Machines_wait") == 0;
  p->base = c->retry_base;
  p->cap = c->retry_cap;
  p->max_wait = c->retry_max_wait;
  p->margin = c->rate_margin;
  p->rng = fly_client_seed(c);
  p->limit = fly_rate_limit_for(fly_operation_default_limit(op), op->action, c->overrides, c->noverrides,
                                c->rate_scale);

  /* admit */
  double now = fly_now();
  p->deadline = deadline > 0 ? now + deadline : 0;
  r->ready_at = now;
  if (c->rate_limit) {
    const char *scope = "";
    size_t scope_len;
    if (op->scope >= 0) {
      rawfield(L, 3, op->params[op->scope].name);
      scope = fly_param_string(L, lua_gettop(L), op, op->params[op->scope].name, &scope_len, level);
    }
    /* "<identity>|<action>|<scope>", made in place (no Lua string per call) */
    size_t il = strlen(c->identity), al = strlen(op->action), sl = strlen(scope);
    r->rate_key = malloc(il + al + sl + 3); /* the request owns it: freed by its __gc */
    if (!r->rate_key) luaL_error(L, "fly: out of memory");
    char *k = r->rate_key;
    memcpy(k, c->identity, il), k += il, *k++ = '|';
    memcpy(k, op->action, al), k += al, *k++ = '|';
    memcpy(k, scope, sl), k[sl] = '\0';
    if (external) r->external = 1; /* the transport admits it: _rate, _admit */
    else {
      p->rate_key = r->rate_key;
      /* a request the wait would make miss its deadline fails without the token (fly_l_submit) */
      r->ready_at = fly_rate_admit_marked(r->rate_key, p->limit, now, c->rate_margin,
                                          p->deadline > 0 ? p->deadline : INFINITY, &p->mark);
      if (c->redis) { /* the same bucket in Redis: the libcurl loop admits there too (curl.c) */
        size_t n = fly_redis_key(NULL, 0, c->identity, op->action, scope) + 1;
        if (!(r->shared_key = malloc(n))) luaL_error(L, "fly: out of memory");
        fly_redis_key(r->shared_key, n, c->identity, op->action, scope);
      }
    }
  }
  if (c->trace) fly_trace_admit(r, c->trace, now);
  lua_settop(L, ridx);
  return r;
}

fly_request *fly_request_call(lua_State *L, fly_client *c, int level) { return build_admit(L, c, level, 0); }

/* client:_build(operation_id, params, opts, level, external) -> Request,
 * built and admitted, for a transport other than libcurl to carry. A request
 * the rate limit delays past its deadline comes back done (a timeout).
 * external: admitted by the transport (_rate, _admit), not by the core's
 * buckets. */
int fly_l_build(lua_State *L) {
  int level = (int)luaL_optinteger(L, 5, 1);
  int external = lua_toboolean(L, 6);
  lua_settop(L, 4);
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  if (c->closed) return raise_at(L, level, "fly: client is closed");
  fly_request *r = build_admit(L, c, level, external);
  r->insecure = c->insecure;
  r->connect_timeout_ms = c->connect_timeout_ms;
  if (!r->wire.headers.n) { /* self-contained: the client may go before it */
    const fly_strlist *shared = fly_wire_headers(&r->wire, &c->base);
    for (size_t i = 0; i < shared->n; i++)
      if (!fly_strlist_add(&r->wire.headers, shared->v[i], strlen(shared->v[i])))
        return luaL_error(L, "fly: out of memory");
  }
  if (!fly_request_fits(r, r->ready_at))
    fly_request_fail(L, r, "timeout", "the rate limit delays this request past its deadline", 1);
  return 1;
}

/* ------------------------------------------------------------ the seam */

/* A request another transport may report on: built by _build, not done. */
static fly_request *check_carried(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  if (r->kind != KIND_HTTP) luaL_error(L, "fly: a timer has no wire form");
  if (r->state == REQ_QUEUED || r->state == REQ_ACTIVE)
    luaL_error(L, "fly: this request is carried by the libcurl transport");
  return r;
}

/* req:_ready_at() -> monotonic seconds when the next attempt may be sent */
static int l_req_ready_at(lua_State *L) {
  lua_pushnumber(L, fly_check_request(L, 1)->ready_at);
  return 1;
}

/* req:_rate() -> key, rate, burst, margin of the bucket that paces this
 * request; nothing when it is not rate limited. */
static int l_req_rate(lua_State *L) {
  fly_request *r = check_carried(L);
  if (!r->rate_key) return 0;
  lua_pushstring(L, r->rate_key);
  lua_pushnumber(L, r->retry.limit.rate);
  lua_pushnumber(L, r->retry.limit.burst);
  lua_pushnumber(L, r->retry.margin);
  return 4;
}

/* req:_latest() -> seconds from now before which the request's next attempt
 * must be ready to go in time (a transport's limiter then takes no token for
 * one that would wait longer: see fly_request_latest), or nothing without a
 * deadline. */
static int l_req_latest(lua_State *L) {
  fly_request *r = check_carried(L);
  double latest = fly_request_latest(r);
  if (latest == INFINITY) return 0;
  lua_pushnumber(L, latest - fly_now());
  return 1;
}

/* req:_admit(wait) -> "ready", at | "done": an externally admitted request
 * (or retry) may be sent `wait` seconds from now. When it would not fit
 * before the deadline then (fly_request_fits) it ends: as a timeout before
 * its first attempt, else with the last attempt's outcome (as classify ends
 * a retry it cannot wait for). `_admit(0)` right before sending checks that
 * a late wake-up still leaves the time. */
static int l_req_admit(lua_State *L) {
  fly_request *r = check_carried(L);
  double wait = luaL_checknumber(L, 2);
  if (r->state == REQ_DONE) return lua_pushliteral(L, "done"), 1;
  double at = fly_now() + (wait > 0 ? wait : 0);
  if (!fly_request_fits(r, at)) {
    fly_request_out_of_time(r, wait > 0 ? "the rate limit delays this request past its deadline" : "deadline exceeded");
    fly_request_finish(L, r);
    return lua_pushliteral(L, "done"), 1;
  }
  if (r->trace && wait > 0 && at > r->ready_at) { /* the trace sees the transport's bucket wait as the core's */
    double now = fly_now();
    if (r->retry.attempts == 0) fly_trace_wait(r, at - now, now);
    else r->trace_wait = at - now;
  }
  if (at > r->ready_at) r->ready_at = at;
  lua_pushliteral(L, "ready");
  lua_pushnumber(L, r->ready_at);
  return 2;
}

/* Whether a header line is one the transport writes itself (Host,
 * Content-Length, Connection) or a libcurl directive ("Name:" with no value
 * removes a header libcurl would add). */
static int transport_header(const char *line) {
  static const char *const own[] = {"host", "content-length", "connection", NULL};
  const char *colon = strchr(line, ':');
  if (!colon) return 1;
  const char *v = colon + 1;
  while (*v == ' ' || *v == '\t') v++;
  if (!*v) return 1;
  size_t n = (size_t)(colon - line);
  for (int i = 0; own[i]; i++)
    if (strlen(own[i]) == n && strncasecmp(line, own[i], n) == 0) return 1;
  return 0;
}

/* req:_wire() -> what to send, see the top of this file. */
static int l_req_wire(lua_State *L) {
  fly_request *r = check_carried(L);
  fly_wire *w = &r->wire;
  double now = fly_now(); /* asking what to send starts an attempt */
  r->retry.started = now;
  if (r->trace) fly_trace_start(r, &w->headers, now);
  lua_createtable(L, 0, 12);
  lua_pushstring(L, r->op->method), lua_setfield(L, -2, "method");
  lua_pushlstring(L, w->url.p, w->url.n), lua_setfield(L, -2, "url");
  /* base URL: scheme://host[:port][/prefix] (core.new checked the scheme) */
  const char *u = w->url.p, *sep = strstr(u, "://");
  const char *host = sep ? sep + 3 : u;
  size_t scheme_len = sep ? (size_t)(sep - u) : 0;
  lua_pushlstring(L, u, scheme_len), lua_setfield(L, -2, "scheme");
  const char *end = host;
  while (*end && *end != '/' && *end != '?') end++;
  const char *colon = NULL;
  if (*host == '[') { /* [v6]:port: the host stays bracketed, as Host writes it */
    const char *rb = memchr(host, ']', (size_t)(end - host));
    if (rb && rb + 1 < end && rb[1] == ':') colon = rb + 1;
    lua_pushlstring(L, host, rb ? (size_t)(rb - host + 1) : (size_t)(end - host));
  } else {
    colon = memchr(host, ':', (size_t)(end - host));
    lua_pushlstring(L, host, (size_t)((colon ? colon : end) - host));
  }
  lua_setfield(L, -2, "host");
  long port = scheme_len == 5 && strncmp(u, "https", 5) == 0 ? 443 : 80;
  if (colon) port = strtol(colon + 1, NULL, 10);
  lua_pushinteger(L, port), lua_setfield(L, -2, "port");
  lua_pushstring(L, *end ? end : "/"), lua_setfield(L, -2, "target");
  lua_createtable(L, (int)w->headers.n, 0);
  int nh = 0;
  for (size_t i = 0; i < w->headers.n; i++) {
    if (transport_header(w->headers.v[i])) continue;
    lua_pushstring(L, w->headers.v[i]);
    lua_rawseti(L, -2, ++nh);
  }
  lua_setfield(L, -2, "headers");
  if (w->body) lua_pushlstring(L, w->body, w->body_len), lua_setfield(L, -2, "body");
  lua_pushboolean(L, w->safe), lua_setfield(L, -2, "safe");
  /* this attempt's timeout: the per-attempt one, cut to the deadline */
  double timeout = r->timeout_ms > 0 ? r->timeout_ms / 1000.0 : 0;
  if (r->retry.deadline > 0) {
    double left = r->retry.deadline - fly_now();
    if (left < 0.001) left = 0.001;
    if (timeout <= 0 || left < timeout) timeout = left;
  }
  if (timeout > 0) lua_pushnumber(L, timeout), lua_setfield(L, -2, "timeout");
  if (r->max_body) lua_pushinteger(L, (lua_Integer)r->max_body), lua_setfield(L, -2, "max_body");
  if (r->connect_timeout_ms > 0)
    lua_pushnumber(L, r->connect_timeout_ms / 1000.0), lua_setfield(L, -2, "connect_timeout");
  lua_pushboolean(L, r->insecure), lua_setfield(L, -2, "insecure");
  return 1;
}

/* Runs classify on the attempt just reported and pushes its verdict. */
static int report(lua_State *L, fly_request *r) {
  double now = fly_now(), at = 0;
  int verdict = fly_classify(&r->retry, &r->reply, now, &at);
  if (r->trace) fly_trace_attempt(r, verdict, now, at);
  if (verdict == FLY_RETRY) {
    r->ready_at = at;
    lua_pushliteral(L, "retry");
    lua_pushnumber(L, at);
    if (!r->external) return 2;
    /* the bucket is the transport's: it penalizes it after a 429, and the
       retry takes its place in it */
    if (r->reply.status == 429) lua_pushliteral(L, "penalize");
    else lua_pushliteral(L, "reserve");
    return 3;
  }
  fly_request_finish(L, r);
  lua_pushliteral(L, "done");
  if (!(r->external && r->rate_key && r->reply.status == 429 && !r->reply.code)) return 1;
  /* a 429 that is the answer empties the transport's bucket too (no retry takes a token) */
  lua_pushnil(L);
  lua_pushliteral(L, "penalize");
  return 3;
}

/* Clears what the previous attempt left; 0 when the request is done
 * already (cancelled meanwhile: that outcome stands). */
static int begin_report(fly_request *r) {
  if (r->state == REQ_DONE) return 0;
  fly_reply_reset(&r->reply);
  fly_request_set_message(r, NULL);
  fly_request_clear_body(r);
  return 1;
}

/* req:_complete(status, headers, body) -> "done" | "retry", at
 * headers: { [name] = value } (any case) or nil; body: string or nil. */
static int l_req_complete(lua_State *L) {
  fly_request *r = check_carried(L);
  lua_Integer status = luaL_checkinteger(L, 2);
  if (status < 100 || status > 999) return luaL_argerror(L, 2, "an HTTP status");
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  size_t bn = 0;
  const char *body = luaL_optlstring(L, 4, "", &bn);
  lua_settop(L, 4);
  if (!begin_report(r)) return lua_pushliteral(L, "done"), 1;
  r->reply.status = (long)status;
  r->reply.sent = 1;
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
        size_t kn, vn;
        const char *k = lua_tolstring(L, -2, &kn), *v = lua_tolstring(L, -1, &vn);
        fly_reply_field(&r->reply, k, kn, v, vn);
      }
      lua_pop(L, 1);
    }
  }
  if (bn && !fly_request_add_body(r, body, bn) && !r->too_large) {
    fly_request_set_failure(r, "protocol", "out of memory for the response body", 0);
    r->reply.status = 0;
    fly_request_finish(L, r);
    return lua_pushliteral(L, "done"), 1;
  }
  r->reply.body_seen = bn > 0;
  fly_request_accept(r);
  return report(L, r);
}

/* req:_failed(code, message, sent[, status]) -> "done" | "retry", at[, bucket]
 * code: timeout, connect, resolve, tls, reset, protocol or too_large (the
 * response was larger than the transport accepts: final); sent: whether
 * the request may have reached the server; status: the answer's, kept by a
 * too_large (as the libcurl transport keeps it). */
static int l_req_failed(lua_State *L) {
  fly_request *r = check_carried(L);
  const char *code = fly_transport_code(luaL_checkstring(L, 2));
  if (!code) return luaL_argerror(L, 2, "one of timeout, connect, resolve, tls, reset, protocol, too_large");
  const char *msg = luaL_optstring(L, 3, NULL);
  int sent = lua_toboolean(L, 4);
  lua_Integer status = luaL_optinteger(L, 5, 0);
  if (status && (status < 100 || status > 999)) return luaL_argerror(L, 5, "an HTTP status");
  if (!begin_report(r)) return lua_pushliteral(L, "done"), 1;
  r->reply.code = code;
  r->reply.sent = sent;
  if (status && strcmp(code, "too_large") == 0) { /* the body: in the libcurl transport's words */
    char body_msg[96];
    snprintf(body_msg, sizeof body_msg, "the response body is larger than max_body (%zu bytes)", r->max_body);
    r->reply.status = (long)status;
    r->reply.keep_status = 1;
    fly_request_set_message(r, body_msg);
  } else {
    fly_request_set_message(r, msg);
  }
  fly_request_accept(r);
  return report(L, r);
}

/* -------------------------------------------------------------- reading */

static int l_req_done(lua_State *L) {
  lua_pushboolean(L, fly_check_request(L, 1)->state == REQ_DONE);
  return 1;
}

static int l_req_cancel(lua_State *L) { return fly_l_request_close(L); }

/* request:result() -> table describing the outcome of a finished request */
static int l_req_result(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  if (r->state != REQ_DONE) return luaL_error(L, "fly: request has not finished");
  lua_createtable(L, 0, 12);
  if (r->kind == KIND_TIMER) {
    lua_pushboolean(L, 1), lua_setfield(L, -2, "timer");
    return 1;
  }
  const fly_reply *a = &r->reply;
  lua_pushstring(L, r->op->id), lua_setfield(L, -2, "operation");
  lua_pushstring(L, r->op->method), lua_setfield(L, -2, "method");
  if (r->wire.path) lua_pushstring(L, r->wire.path), lua_setfield(L, -2, "path");
  lua_pushinteger(L, r->retry.attempts), lua_setfield(L, -2, "attempts");
  lua_pushboolean(L, a->retryable), lua_setfield(L, -2, "retryable");
  lua_pushboolean(L, r->wire.safe), lua_setfield(L, -2, "safe");
  if (a->status) lua_pushinteger(L, a->status), lua_setfield(L, -2, "status");
  if (a->code) {
    lua_pushstring(L, a->code), lua_setfield(L, -2, "code");
    lua_pushstring(L, r->message ? r->message : a->code), lua_setfield(L, -2, "message");
  }
  /* what an error keeps of the body: its head (an error's text, or enough
     to recognise what came); the whole body is json()'s */
  size_t keep = r->resp_len < FLY_ERROR_BODY_MAX ? r->resp_len : FLY_ERROR_BODY_MAX;
  lua_pushlstring(L, r->resp ? r->resp : "", r->resp ? keep : 0), lua_setfield(L, -2, "body");
  if (keep < r->resp_len || (r->too_large && r->resp_len)) {
    lua_pushinteger(L, (lua_Integer)r->resp_len), lua_setfield(L, -2, "body_size");
  }
  if (a->content_type[0]) lua_pushstring(L, a->content_type), lua_setfield(L, -2, "content_type");
  if (a->request_id[0]) lua_pushstring(L, a->request_id), lua_setfield(L, -2, "request_id");
  if (a->retry_after >= 0) lua_pushnumber(L, a->retry_after), lua_setfield(L, -2, "retry_after");
  if (r->retry.may_have_run) lua_pushboolean(L, 1), lua_setfield(L, -2, "may_have_run");
  return 1;
}

/* Decodes the body of a finished request (pushes the value, or nil and a
 * message). The values it may make are bounded by the body cap: one per
 * FLY_BYTES_PER_VALUE bytes of max_body, so what a body takes once decoded
 * stays in proportion to the cap (an empty object takes about 60 bytes of
 * Lua memory for its 3 bytes of text). */
static int decode_body(lua_State *L, fly_request *r) {
  luaL_getmetatable(L, ARRAY_MT);
  size_t max_values = r->max_body ? r->max_body / FLY_BYTES_PER_VALUE + 1 : 0;
  int n = fly_json_decode_max(L, r->resp ? r->resp : "", r->resp ? r->resp_len : 0, -1, max_values);
  lua_remove(L, -n - 1);
  return n;
}

/* The first non-blank byte of the body, or 0. */
static char body_start(const fly_request *r) {
  for (size_t i = 0; i < r->resp_len; i++)
    if (r->resp[i] != ' ' && r->resp[i] != '\t' && r->resp[i] != '\r' && r->resp[i] != '\n') return r->resp[i];
  return 0;
}

/* request:success() -> the result of a successful call, by what the
 * operation returns: JSON -> the decoded object or array; text -> the text;
 * nothing declared -> a JSON object or array labelled JSON, decoded, else
 * `true` (an empty body, or anything else). nil and a message when the body
 * is not the JSON it claims to be; nothing for a call that failed (status,
 * transport, or a body checked and refused: code protocol or too_large).
 * A body with more values than the cap allows turns the request into a
 * too_large failure (nothing returned). The fast path of every call. */
static int l_req_success(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  fly_reply *a = &r->reply;
  if (r->state != REQ_DONE || r->kind != KIND_HTTP || a->code || a->status < 200 || a->status > 299) return 0;
  int returns = r->op->returns;
  if (returns == FLY_RETURNS_TEXT) return lua_pushlstring(L, r->resp ? r->resp : "", r->resp_len), 1;
  if (returns == FLY_RETURNS_NONE) {
    char c = r->resp ? body_start(r) : 0;
    if (a->media != FLY_MEDIA_JSON || (c != '{' && c != '[')) return lua_pushboolean(L, 1), 1;
  }
  int n = decode_body(L, r);
  if (n == 2) fly_request_scrub(r); /* the body becomes an error's */
  if (n == 2 && strncmp(lua_tostring(L, -1), FLY_JSON_TOO_MANY, strlen(FLY_JSON_TOO_MANY)) == 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "the response body holds more than %zu JSON values (one per %d bytes of max_body)",
             r->max_body / FLY_BYTES_PER_VALUE + 1, FLY_BYTES_PER_VALUE);
    a->code = "too_large";
    a->keep_status = 1;
    a->retryable = 0;
    fly_request_set_message(r, msg);
    lua_pop(L, 2);
    return 0;
  }
  return n;
}

/* request:json() -> the body decoded as JSON, or nil and a message. */
static int l_req_json(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  if (r->state != REQ_DONE || r->kind != KIND_HTTP) return luaL_error(L, "fly: request has not finished");
  return decode_body(L, r);
}

/* core.decode(string) -> the value, or nil and a message: the decoder that
 * reads responses, for JSON text from elsewhere. */
int fly_l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  luaL_getmetatable(L, ARRAY_MT);
  return fly_json_decode(L, s, n, 2);
}

int fly_l_request_tostring(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  static const char *const states[] = {"new", "queued", "active", "done"};
  if (r->kind == KIND_TIMER) lua_pushfstring(L, "fly.Request{timer, %s}: %p", states[r->state], (void *)r);
  else
    lua_pushfstring(L, "fly.Request{%s %s, %s}: %p", r->op->method, r->wire.path ? r->wire.path : "?",
                    states[r->state], (void *)r);
  return 1;
}

const luaL_Reg fly_request_methods[] = {
  {"done", l_req_done},         {"result", l_req_result},     {"success", l_req_success},
  {"json", l_req_json},         {"cancel", l_req_cancel},     {"_ready_at", l_req_ready_at},
  {"_wire", l_req_wire},        {"_complete", l_req_complete}, {"_failed", l_req_failed},
  {"_rate", l_req_rate},        {"_admit", l_req_admit},      {"_latest", l_req_latest},
  {NULL, NULL}};
