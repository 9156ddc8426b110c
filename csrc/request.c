/* fly.Request: lifetime, the shared build + admit step, the seam for other
 * transports, and reading a finished request. See request.h.
 *
 * The seam (for a transport written in Lua, e.g. on nginx cosockets):
 *   client:_build(op, params, opts, level) -> Request: built and admitted
 *       (its token taken from the rate-limit bucket), not started;
 *   req:_ready_at()  -> when to send it (monotonic seconds, core.now());
 *   req:_wire()      -> { method, url, scheme, host, port, target, headers =
 *       {"Name: value", ...}, body, safe, timeout }: what to send (the
 *       headers include Authorization: never log them);
 *   req:_complete(status, headers, body) / req:_failed(code, message, sent)
 *       -> "done", or "retry", at: classify's verdict on the attempt. After
 *       "done", result(), success() and json() read it exactly as they read a
 *       request the libcurl transport carried. */
#include "request.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"
#include "curl.h"
#include "json.h"
#include "ops.h"
#include "redis.h"
#include "util.h"

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
  r->state = REQ_QUEUED;
}

static void request_unlink(fly_request *r) {
  fly_client *c = r->client;
  if (!c) return;
  if (r->prev) r->prev->next = r->next;
  else c->live = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
  r->client = NULL;
}

void fly_request_finish(lua_State *L, fly_request *r) {
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
  fly_request_set_failure(r, code, msg, retryable);
  fly_request_finish(L, r);
}

int fly_request_add_body(fly_request *r, const char *data, size_t len) {
  if (r->resp_len + len + 1 > r->resp_cap) {
    size_t cap = r->resp_cap ? r->resp_cap : 1024;
    while (cap < r->resp_len + len + 1) cap *= 2;
    char *p = realloc(r->resp, cap);
    if (!p) return 0;
    r->resp = p;
    r->resp_cap = cap;
  }
  memcpy(r->resp + r->resp_len, data, len);
  r->resp_len += len;
  r->resp[r->resp_len] = '\0'; /* the JSON decoder may rely on it */
  return 1;
}

void fly_request_clear_body(fly_request *r) {
  r->resp_len = 0;
  if (r->resp) r->resp[0] = '\0';
}

/* Frees what the request owns: only the collector calls this. */
int fly_l_request_gc(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  fly_request_finish(L, r);
  fly_curl_request_free(r);
  fly_wire_free(&r->wire);
  free(r->rate_key), r->rate_key = NULL;
  free(r->shared_key), r->shared_key = NULL;
  r->retry.rate_key = NULL;
  free(r->resp), r->resp = NULL;
  r->resp_len = r->resp_cap = 0;
  free(r->message), r->message = NULL;
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

fly_request *fly_request_call(lua_State *L, fly_client *c, int level) {
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
  r->retry.max_attempts = c->max_attempts;
  double deadline = 0;
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
    deadline = opt_number_field(L, 4, "deadline", 1);
    double attempts = opt_number_field(L, 4, "attempts", 1);
    if (!(timeout > 0) || !(deadline > 0) || !(attempts >= 1))
      raise_at(L, level, "fly: %s: options timeout and deadline must be > 0, attempts >= 1", op->id);
    if (rawfield(L, 4, "timeout") != LUA_TNIL) r->timeout_ms = seconds_to_ms(timeout);
    if (rawfield(L, 4, "attempts") != LUA_TNIL) r->retry.max_attempts = attempts > 1000 ? 1000 : (int)attempts;
    if (rawfield(L, 4, "deadline") == LUA_TNIL || deadline > 1e8) deadline = 0;
    lua_pop(L, 3);
  }

  fly_build(L, &c->base, op, 3, level, &r->wire);

  fly_retry *p = &r->retry;
  p->safe = r->wire.safe;
  p->is_wait = strcmp(op->id, "Machines_wait") == 0;
  p->base = c->retry_base;
  p->cap = c->retry_cap;
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
    lua_pushfstring(L, "%s|%s|%s", c->identity, op->action, scope);
    r->rate_key = dupn(lua_tostring(L, -1), fly_rawlen(L, -1));
    if (!r->rate_key) luaL_error(L, "fly: out of memory");
    p->rate_key = r->rate_key;
    r->ready_at = fly_rate_admit(r->rate_key, p->limit, now, c->rate_margin);
    if (c->redis) { /* the same bucket in Redis: the libcurl loop admits there too (curl.c) */
      size_t n = fly_redis_key(NULL, 0, c->identity, op->action, scope) + 1;
      if (!(r->shared_key = malloc(n))) luaL_error(L, "fly: out of memory");
      fly_redis_key(r->shared_key, n, c->identity, op->action, scope);
    }
  }
  lua_settop(L, ridx);
  return r;
}

/* client:_build(operation_id, params, opts, level) -> Request, built and
 * admitted, for a transport other than libcurl to carry. A request the rate
 * limit delays past its deadline comes back done (a timeout). */
int fly_l_build(lua_State *L) {
  int level = (int)luaL_optinteger(L, 5, 1);
  lua_settop(L, 4);
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  if (c->closed) return raise_at(L, level, "fly: client is closed");
  fly_request *r = fly_request_call(L, c, level);
  if (!r->wire.headers.n) { /* self-contained: the client may go before it */
    const fly_strlist *shared = fly_wire_headers(&r->wire, &c->base);
    for (size_t i = 0; i < shared->n; i++)
      if (!fly_strlist_add(&r->wire.headers, shared->v[i], strlen(shared->v[i])))
        return luaL_error(L, "fly: out of memory");
  }
  if (r->retry.deadline > 0 && r->ready_at > r->retry.deadline)
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

/* req:_wire() -> what to send, see the top of this file. */
static int l_req_wire(lua_State *L) {
  fly_request *r = check_carried(L);
  fly_wire *w = &r->wire;
  lua_createtable(L, 0, 11);
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
  if (*host == '[') { /* [v6]:port */
    const char *rb = memchr(host, ']', (size_t)(end - host));
    if (rb && rb + 1 < end && rb[1] == ':') colon = rb + 1;
    lua_pushlstring(L, host + 1, rb ? (size_t)(rb - host - 1) : (size_t)(end - host - 1));
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
  for (size_t i = 0; i < w->headers.n; i++) {
    lua_pushstring(L, w->headers.v[i]);
    lua_rawseti(L, -2, (int)i + 1);
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
  return 1;
}

/* Runs classify on the attempt just reported and pushes its verdict. */
static int report(lua_State *L, fly_request *r) {
  double now = fly_now(), at = 0;
  if (fly_classify(&r->retry, &r->reply, now, &at) == FLY_RETRY) {
    r->ready_at = at;
    lua_pushliteral(L, "retry");
    lua_pushnumber(L, at);
    return 2;
  }
  fly_request_finish(L, r);
  lua_pushliteral(L, "done");
  return 1;
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
  if (bn && !fly_request_add_body(r, body, bn)) {
    fly_request_set_failure(r, "protocol", "out of memory for the response body", 0);
    r->reply.status = 0;
    fly_request_finish(L, r);
    return lua_pushliteral(L, "done"), 1;
  }
  return report(L, r);
}

/* req:_failed(code, message, sent) -> "done" | "retry", at
 * code: timeout, connect, resolve, tls, reset or protocol; sent: whether
 * the request may have reached the server. */
static int l_req_failed(lua_State *L) {
  fly_request *r = check_carried(L);
  const char *code = fly_transport_code(luaL_checkstring(L, 2));
  if (!code) return luaL_argerror(L, 2, "one of timeout, connect, resolve, tls, reset, protocol");
  const char *msg = luaL_optstring(L, 3, NULL);
  int sent = lua_toboolean(L, 4);
  if (!begin_report(r)) return lua_pushliteral(L, "done"), 1;
  r->reply.code = code;
  r->reply.sent = sent;
  fly_request_set_message(r, msg);
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
  if (a->status) lua_pushinteger(L, a->status), lua_setfield(L, -2, "status");
  if (a->code) {
    lua_pushstring(L, a->code), lua_setfield(L, -2, "code");
    lua_pushstring(L, r->message ? r->message : a->code), lua_setfield(L, -2, "message");
  }
  lua_pushlstring(L, r->resp ? r->resp : "", r->resp ? r->resp_len : 0), lua_setfield(L, -2, "body");
  if (a->content_type[0]) lua_pushstring(L, a->content_type), lua_setfield(L, -2, "content_type");
  if (a->request_id[0]) lua_pushstring(L, a->request_id), lua_setfield(L, -2, "request_id");
  if (a->retry_after >= 0) lua_pushnumber(L, a->retry_after), lua_setfield(L, -2, "retry_after");
  return 1;
}

/* Decodes the body of a finished request (pushes the value, or nil and a
 * message). */
static int decode_body(lua_State *L, fly_request *r) {
  luaL_getmetatable(L, ARRAY_MT);
  int n = fly_json_decode(L, r->resp ? r->resp : "", r->resp ? r->resp_len : 0, -1);
  lua_remove(L, -n - 1);
  return n;
}

/* request:success() -> the result of a successful call: its decoded JSON,
 * `true` for an empty body, or the text of any other body; nil and a
 * message when the body is not the JSON it claims to be; nothing for a call
 * that failed (status or transport). The fast path of every call. */
static int l_req_success(lua_State *L) {
  fly_request *r = fly_check_request(L, 1);
  const fly_reply *a = &r->reply;
  if (r->state != REQ_DONE || r->kind != KIND_HTTP || a->code || a->status < 200 || a->status > 299) return 0;
  if (!r->resp || r->resp_len == 0) return lua_pushboolean(L, 1), 1;
  int json = a->content_type[0] ? strstr(a->content_type, "json") != NULL : (r->resp[0] == '{' || r->resp[0] == '[');
  if (json) return decode_body(L, r);
  lua_pushlstring(L, r->resp, r->resp_len);
  return 1;
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
  {NULL, NULL}};
