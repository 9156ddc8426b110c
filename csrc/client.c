/* fly.Client: core.new reads the options the Lua layer has checked, builds
 * the header lines every request shares (Authorization first), the rate-limit
 * and retry settings, and opens the libcurl transport; close cancels what is
 * live and frees it all. */
#include "client.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "classify.h"
#include "compat.h"
#include "curl.h"
#include "ops.h"
#include "redis.h"
#include "request.h"
#include "trace.h"
#include "util.h"

fly_client *fly_check_client(lua_State *L, int idx) {
  fly_client *c = luaL_checkudata(L, idx, CLIENT_MT);
  if (c->closed) luaL_error(L, "fly: client is closed");
  return c;
}

uint64_t fly_client_seed(fly_client *c) { /* splitmix64 over the client's counter */
  uint64_t z = (c->rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z ? z : 88172645463325252ull;
}

void fly_client_close(lua_State *L, fly_client *c) {
  if (c->closed) return;
  c->closed = 1;
  while (c->live) fly_request_fail(L, c->live, "cancelled", "the client was closed", 0);
  fly_curl_close(c);
  fly_redis_free(c->redis), c->redis = NULL;
  fly_strlist_free(&c->headers);
  fly_strlist_free(&c->json_headers);
  free(c->base_url), c->base_url = NULL;
  free(c->ca_file), c->ca_file = NULL;
}

static int l_close(lua_State *L) {
  fly_client_close(L, luaL_checkudata(L, 1, CLIENT_MT));
  return 0;
}

/* The trace queue outlives close, so the events of what close cancelled can
 * still be taken; it goes with the client (or its last request). */
int fly_l_client_gc(lua_State *L) {
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  fly_client_close(L, c);
  fly_trace_release(c->trace), c->trace = NULL;
  return 0;
}

int fly_l_client_tostring(lua_State *L) {
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  if (c->closed) lua_pushfstring(L, "fly.Client{closed}: %p", (void *)c);
  else lua_pushfstring(L, "fly.Client{%s}: %p", c->base_url, (void *)c);
  return 1;
}

static int l_base_url(lua_State *L) {
  lua_pushstring(L, fly_check_client(L, 1)->base_url);
  return 1;
}

/* client:_state() -> the table the Lua layer keeps per client (tasks,
 * bound namespaces, …): held by the client itself, so it goes with it and
 * needs no weak table keyed by the client. */
static int l_state(lua_State *L) {
  luaL_checkudata(L, 1, CLIENT_MT);
  fly_getuservalue(L, 1);
  return 1;
}

static int l_is_closed(lua_State *L) {
  lua_pushboolean(L, ((fly_client *)luaL_checkudata(L, 1, CLIENT_MT))->closed);
  return 1;
}

/* client:_mask(s) -> s with the client's credentials masked (fly_scrub):
 * for what the Lua layer quotes from an answer in an error of its own. A
 * closed client no longer knows them: "?" then. */
static int l_mask(lua_State *L) {
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  const char *auth = fly_strlist_auth(&c->headers);
  if (!auth) {
    if (c->closed) lua_pushliteral(L, "?");
    else lua_pushvalue(L, 2);
    return 1;
  }
  char *p = fly_newuserdata(L, n ? n : 1); /* scratch the collector owns */
  memcpy(p, s, n);
  fly_scrub(p, n, auth);
  lua_pushlstring(L, p, n);
  return 1;
}

/* The Authorization header for a token, as fly-go builds it: macaroon tokens
 * (a comma-separated part starting fm1r_, fm1a_ or fm2_) use the FlyV1
 * scheme, anything else Bearer; a scheme already in the token is dropped so
 * it is never doubled. */
/* The credential itself (*tok, *n narrowed to it): without the blanks around
 * it and without a scheme in front ("Bearer ", "FlyV1 "). */
static void bare_token(const char **tok, size_t *n) {
  const char *t = *tok;
  size_t k = *n;
  for (int again = 1; again;) {
    again = 0;
    while (k > 0 && (*t == ' ' || *t == '\t')) t++, k--;
    if (k >= 7 && strncasecmp(t, "Bearer ", 7) == 0) t += 7, k -= 7, again = 1;
    else if (k >= 6 && strncasecmp(t, "FlyV1 ", 6) == 0) t += 6, k -= 6, again = 1;
  }
  while (k > 0 && (t[k - 1] == ' ' || t[k - 1] == '\t')) k--;
  *tok = t, *n = k;
}

static void push_authorization(lua_State *L, const char *tok, size_t n) {
  bare_token(&tok, &n);
  int macaroon = 0;
  for (size_t i = 0; i < n && !macaroon; i++) {
    if (i == 0 || tok[i - 1] == ',' || (tok[i - 1] == ' ' && i >= 2 && tok[i - 2] == ',')) {
      const char *s = tok + i;
      size_t left = n - i;
      macaroon = (left >= 5 && (memcmp(s, "fm1r_", 5) == 0 || memcmp(s, "fm1a_", 5) == 0)) ||
                 (left >= 4 && memcmp(s, "fm2_", 4) == 0);
    }
  }
  lua_pushstring(L, macaroon ? "Authorization: FlyV1 " : "Authorization: Bearer ");
  lua_pushlstring(L, tok, n);
  lua_concat(L, 2);
}

static int append_top(lua_State *L, fly_strlist *l) {
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  int ok = fly_strlist_add(l, s, n);
  lua_pop(L, 1);
  return ok;
}

/* rate_limit.redis (a URL), redis_timeout and redis_retry (seconds), in the
 * table at t: connects to the shared buckets. 0 with the client closed and a
 * message pushed when an option is wrong (a bad URL raises at fly.new); a
 * Redis that cannot be reached is no error (the limiter starts down). */
static int open_redis(lua_State *L, fly_client *c, int t) {
  int type = rawfield(L, t, "redis");
  const char *url = type == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  double timeout = opt_number_in(L, t, "rate_limit", "redis_timeout", 0.1);
  double retry = opt_number_in(L, t, "rate_limit", "redis_retry", 5);
  char err[256];
  if (type != LUA_TNIL && type != LUA_TSTRING) {
    snprintf(err, sizeof err, "rate_limit.redis must be a string (a redis:// or unix:// URL), got %s",
             lua_typename(L, type));
  } else if (!(timeout > 0) || !(retry > 0)) {
    snprintf(err, sizeof err, "rate_limit.redis_timeout and redis_retry must be > 0");
  } else if (!url) {
    lua_pop(L, 1);
    return 1;
  } else if ((c->redis = fly_redis_new(url, timeout, retry, err, sizeof err))) {
    lua_pop(L, 1);
    /* connected ahead of the first call, unless the client's transport admits
       its calls itself (inside nginx: fly.ngx.redis), which passes
       redis_connect = false: then the connection is never opened */
    rawfield(L, 1, "redis_connect");
    int connect = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (connect) fly_redis_connect(c->redis, fly_now());
    return 1;
  }
  fly_client_close(L, c);
  lua_pushfstring(L, "fly: %s", err);
  return 0;
}

/* core.new(opts) -> Client. The Lua layer has already checked option names,
 * types and defaults; this reads them. */
int fly_l_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  fly_client *c = fly_newuserdata_uv(L, sizeof *c);
  memset(c, 0, sizeof *c);
  c->closed = 1; /* until fully built, so __gc frees only what exists */
  fly_setmetatable(L, CLIENT_MT);
  int cidx = lua_gettop(L);
  lua_newtable(L); /* the Lua layer's per-client state (client:_state()) */
  fly_setuservalue(L, cidx);

  rawfield(L, 1, "token");
  size_t tn;
  const char *token = luaL_checklstring(L, -1, &tn);
  const char *flaw = header_flaw(token, tn);
  if (flaw) return luaL_error(L, "fly: the token contains %s", flaw);
  rawfield(L, 1, "base_url");
  size_t bn;
  const char *base = luaL_checklstring(L, -1, &bn);
  while (bn > 0 && base[bn - 1] == '/') bn--;
  rawfield(L, 1, "user_agent");
  size_t un;
  const char *ua = luaL_checklstring(L, -1, &un);
  if ((flaw = header_flaw(ua, un))) return luaL_error(L, "fly: user_agent contains %s", flaw);
  rawfield(L, 1, "ca_file");
  const char *ca = luaL_optstring(L, -1, NULL);

  c->closed = 0;
  c->base_url = dupn(base, bn);
  c->ca_file = ca ? dupn(ca, strlen(ca)) : NULL;
  if (!c->base_url || (ca && !c->ca_file)) {
    fly_client_close(L, c);
    return luaL_error(L, "fly: out of memory");
  }
  /* the owner of the buckets, the same in the local buckets and in Redis: one-way, never the
     token; the credential as sent, whichever way it was given ("Bearer x", " x", "x") */
  const char *cred = token;
  size_t cn = tn;
  bare_token(&cred, &cn);
  uint64_t h = fnv64(14695981039346656037ull, base, bn);
  h = fnv64(h, "\n", 1);
  h = fnv64(h, cred, cn);
  if (!fly_redis_identity(base, bn, cred, cn, c->identity)) {
    fly_client_close(L, c);
    return luaL_error(L, "fly: out of memory");
  }
  c->rng = h ^ (uint64_t)(uintptr_t)c ^ (uint64_t)(fly_now() * 1e9);

  c->timeout_ms = seconds_to_ms(opt_number_field(L, 1, "timeout", 60));
  c->connect_timeout_ms = seconds_to_ms(opt_number_field(L, 1, "connect_timeout", 10));
  c->deadline = opt_number_field(L, 1, "deadline", 0);
  if (!(c->deadline > 0) || c->deadline > 1e8) c->deadline = 0;
  rawfield(L, 1, "insecure");
  c->insecure = lua_toboolean(L, -1);
  lua_pop(L, 1);

  /* headers: Authorization first, then ours, then the user's extras */
  int ok = 1;
  push_authorization(L, token, tn);
  ok &= append_top(L, &c->headers);
  lua_pushfstring(L, "User-Agent: %s", ua);
  ok &= append_top(L, &c->headers);
  lua_pushliteral(L, "Accept: application/json");
  ok &= append_top(L, &c->headers);
  lua_pushliteral(L, "Expect:");
  ok &= append_top(L, &c->headers);
  rawfield(L, 1, "headers");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (ok && lua_next(L, t)) {
      if (lua_type(L, -2) != LUA_TSTRING)
        return fly_client_close(L, c), luaL_error(L, "fly: headers must map names to strings");
      if (lua_type(L, -1) != LUA_TSTRING)
        return fly_client_close(L, c), luaL_error(L, "fly: header '%s' must be a string (got %s)",
                                                  lua_tostring(L, -2), luaL_typename(L, -1));
      size_t kn, vn;
      const char *k = lua_tolstring(L, -2, &kn);
      const char *v = lua_tolstring(L, -1, &vn);
      if (kn == 0 || header_flaw(k, kn) || header_flaw(v, vn) || memchr(k, ':', kn))
        return fly_client_close(L, c), luaL_error(L, "fly: header '%s' is not a valid header", k);
      if (strcasecmp(k, "Authorization") == 0)
        return fly_client_close(L, c), luaL_error(L, "fly: set the token with the token option, not a header");
      lua_pushfstring(L, "%s: %s", k, v);
      ok &= append_top(L, &c->headers);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  for (size_t i = 0; ok && i < c->headers.n; i++)
    ok &= fly_strlist_add(&c->json_headers, c->headers.v[i], strlen(c->headers.v[i]));
  lua_pushliteral(L, "Content-Type: application/json");
  ok &= append_top(L, &c->json_headers);
  c->base.base_url = c->base_url;
  c->base.headers = &c->headers;
  c->base.json_headers = &c->json_headers;
  if (!ok || !fly_curl_open(c)) return fly_client_close(L, c), luaL_error(L, "fly: out of memory");

  /* rate limiting: false, or a table of { scale = n, [action] = {rate, burst} } */
  c->rate_limit = 1;
  c->rate_scale = 1;
  c->rate_margin = 0.02;
  rawfield(L, 1, "rate_limit");
  if (lua_isboolean(L, -1)) {
    c->rate_limit = lua_toboolean(L, -1);
  } else if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    c->rate_scale = opt_number_in(L, t, "rate_limit", "scale", 1);
    c->rate_margin = opt_number_in(L, t, "rate_limit", "margin", 0.02);
    if (!(c->rate_margin >= 0 && c->rate_margin <= FLY_RATE_MARGIN_MAX))
      return fly_client_close(L, c), luaL_error(L, "fly: rate_limit.margin must be between 0 and 1 (seconds)");
    if (!(c->rate_scale > 0) || !isfinite(c->rate_scale))
      return fly_client_close(L, c), luaL_error(L, "fly: rate_limit.scale must be a finite number > 0");
    lua_pushnil(L);
    while (lua_next(L, t)) {
      const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      if (key && (strcmp(key, "scale") == 0 || strcmp(key, "margin") == 0 || strcmp(key, "redis") == 0 ||
                  strcmp(key, "redis_timeout") == 0 || strcmp(key, "redis_retry") == 0)) {
        /* read above or below */
      } else if (key && !fly_operation_known_action(key) && fly_operation_find(key)) {
        /* an operation that draws from another operation's bucket */
        const char *action = fly_operation_find(key)->action;
        fly_client_close(L, c);
        return luaL_error(L, "fly: rate_limit: '%s' counts as '%s': give the limit there", key, action);
      } else if (key && fly_operation_known_action(key) && !lua_istable(L, -1)) {
        fly_client_close(L, c);
        return luaL_error(L, "fly: rate_limit.%s must be a table { rate = r, burst = b } (got %s)", key,
                          luaL_typename(L, -1));
      } else if (!key || !lua_istable(L, -1) || !fly_operation_known_action(key)) {
        fly_client_close(L, c);
        return luaL_error(L, "fly: rate_limit: '%s' is neither scale, margin, redis, redis_timeout, "
                          "redis_retry nor an action "
                          "(an operationId) mapped to { rate = r, burst = b }",
                          key ? key : luaL_typename(L, -2));
      } else {
        const char *action = key;
        if (c->noverrides == OVERRIDES_MAX || strlen(action) >= sizeof c->overrides[0].action)
          return fly_client_close(L, c), luaL_error(L, "fly: too many rate_limit overrides");
        fly_override *o = &c->overrides[c->noverrides++];
        snprintf(o->action, sizeof o->action, "%s", action);
        int ot = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, ot)) {
          const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
          if (!k || (strcmp(k, "rate") != 0 && strcmp(k, "burst") != 0))
            return fly_client_close(L, c), luaL_error(L, "fly: rate_limit.%s: unknown option '%s' (options are "
                                                         "rate, burst)", action, k ? k : luaL_typename(L, -2));
          if (lua_type(L, -1) != LUA_TNUMBER)
            return fly_client_close(L, c), luaL_error(L, "fly: rate_limit.%s.%s must be a number (got %s)", action,
                                                      k, luaL_typename(L, -1));
          lua_pop(L, 1);
        }
        rawfield(L, ot, "rate");
        rawfield(L, ot, "burst");
        int given = !lua_isnil(L, -2) && !lua_isnil(L, -1);
        o->limit.rate = lua_tonumber(L, -2);
        o->limit.burst = lua_tonumber(L, -1);
        lua_pop(L, 2);
        if (!given || !(o->limit.rate > 0) || !(o->limit.burst >= 1) || !isfinite(o->limit.rate) ||
            !isfinite(o->limit.burst) || !isfinite(o->limit.rate * c->rate_scale))
          return fly_client_close(L, c),
                 luaL_error(L, "fly: rate_limit.%s needs both rate > 0 and burst >= 1 (finite numbers)", action);
      }
      lua_pop(L, 1);
    }
    if (!open_redis(L, c, t)) return lua_error(L); /* the client is closed, the message on top */
  }
  lua_pop(L, 1);

  double max_body = opt_number_field(L, 1, "max_body", 64.0 * 1024 * 1024);
  if (!(max_body >= 1)) return fly_client_close(L, c), luaL_error(L, "fly: max_body must be >= 1");
  c->max_body = max_body >= (double)(SIZE_MAX / 2) ? SIZE_MAX / 2 : (size_t)max_body;

  c->max_attempts = 4;
  c->retry_base = 0.1;
  c->retry_cap = 5;
  c->retry_max_wait = 60;
  rawfield(L, 1, "retry");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
      const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      if (!key || (strcmp(key, "attempts") != 0 && strcmp(key, "base") != 0 && strcmp(key, "cap") != 0 &&
                   strcmp(key, "max_wait") != 0))
        return fly_client_close(L, c), luaL_error(L, "fly: retry: unknown option '%s' (options are attempts, "
                                                     "base, cap, max_wait)", key ? key : luaL_typename(L, -2));
      lua_pop(L, 1);
    }
    double attempts = opt_number_in(L, t, "retry", "attempts", 4);
    if (!(attempts >= 1) || attempts != floor(attempts))
      return fly_client_close(L, c), luaL_error(L, "fly: retry.attempts must be a whole number >= 1");
    c->max_attempts = attempts > 1000 ? 1000 : (int)attempts;
    c->retry_base = opt_number_in(L, t, "retry", "base", 0.1);
    c->retry_cap = opt_number_in(L, t, "retry", "cap", 5);
    c->retry_max_wait = opt_number_in(L, t, "retry", "max_wait", 60);
    if (!(c->retry_base >= 0) || !(c->retry_cap >= 0) || !(c->retry_max_wait >= 0))
      return fly_client_close(L, c), luaL_error(L, "fly: retry.base, retry.cap and retry.max_wait must be >= 0");
  } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
    c->max_attempts = 1;
  }
  lua_pop(L, 1);

  /* trace: the Lua layer has a hook and takes the events with _trace() */
  rawfield(L, 1, "trace");
  if (lua_toboolean(L, -1)) {
    rawfield(L, 1, "trace_bodies");
    c->trace = fly_trace_new(lua_toboolean(L, -1));
    if (!c->trace) return fly_client_close(L, c), luaL_error(L, "fly: out of memory");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushvalue(L, cidx);
  return 1;
}

const luaL_Reg fly_client_methods[] = {
  {"_submit", fly_l_submit},   {"_build", fly_l_build},     {"_timer", fly_l_timer},
  {"_step", fly_l_step},       {"_step_until", fly_l_step_until}, {"_wait", fly_l_wait},
  {"_timeout", fly_l_timeout}, {"_sockets", fly_l_sockets}, {"close", l_close},
  {"base_url", l_base_url},    {"is_closed", l_is_closed},  {"_state", l_state},
  {"_trace", fly_l_trace},     {"_mask", l_mask},
  {NULL, NULL}};
