/* build: operation + parameters -> method, URL, headers, body and safety.
 * See build.h. */
#include "build.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"

int fly_strlist_add(fly_strlist *l, const char *s, size_t n) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    char **v = realloc(l->v, cap * sizeof *v);
    if (!v) return 0;
    l->v = v;
    l->cap = cap;
  }
  char *copy = dupn(s, n);
  if (!copy) return 0;
  l->v[l->n++] = copy;
  return 1;
}

void fly_strlist_free(fly_strlist *l) {
  for (size_t i = 0; i < l->n; i++) free(l->v[i]);
  free(l->v);
  l->v = NULL;
  l->n = l->cap = 0;
}

void fly_wire_free(fly_wire *w) {
  free(w->url.p), w->url.p = NULL;
  w->url.n = w->url.cap = 0;
  free(w->path), w->path = NULL;
  free(w->body), w->body = NULL;
  w->body_len = 0;
  fly_strlist_free(&w->headers);
}

const char *fly_strlist_auth(const fly_strlist *l) {
  for (size_t i = 0; i < l->n; i++)
    if (strncasecmp(l->v[i], "Authorization:", 14) == 0) return l->v[i];
  return NULL;
}

const fly_strlist *fly_wire_headers(const fly_wire *w, const fly_build_base *base) {
  if (w->headers.n) return &w->headers;
  return w->body ? base->json_headers : base->headers;
}

/* A number as text: an integer (Lua 5.3+ integer subtype, or a whole double
 * up to 2^53) without exponent or fraction, any other double in the
 * shortest of 15, 16 or 17 significant digits that reads back identical. */
static void number_string(lua_State *L, int idx, char *tmp, size_t cap) {
#if LUA_VERSION_NUM >= 503
  if (lua_isinteger(L, idx)) {
    snprintf(tmp, cap, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
    return;
  }
#endif
  double v = (double)lua_tonumber(L, idx);
  if (v == floor(v) && fabs(v) <= 9007199254740992.0) {
    snprintf(tmp, cap, "%.0f", v);
    return;
  }
  for (int digits = 15; digits <= 17; digits++) {
    snprintf(tmp, cap, "%.*g", digits, v);
    if (strtod(tmp, NULL) == v) return;
  }
}

const char *fly_param_string(lua_State *L, int idx, const fly_operation *op, const char *name, size_t *len,
                             int level) {
  int t = lua_type(L, idx);
  if (t == LUA_TBOOLEAN) {
    const char *s = lua_toboolean(L, idx) ? "true" : "false";
    *len = strlen(s);
    return s;
  }
  if (t == LUA_TNUMBER) {
    char tmp[64];
    double v = (double)lua_tonumber(L, idx);
    if (!isfinite(v))
      raise_at(L, level, "fly: %s: parameter '%s' must be a finite number (got %s)", op->id, name,
               v != v ? "NaN" : v > 0 ? "inf" : "-inf");
    number_string(L, idx, tmp, sizeof tmp);
    lua_pushstring(L, tmp);
    lua_replace(L, idx);
    return lua_tolstring(L, idx, len);
  }
  if (t != LUA_TSTRING)
    raise_at(L, level, "fly: %s: parameter '%s' must be a string, number or boolean (got %s)", op->id, name,
             luaL_typename(L, idx));
  return lua_tolstring(L, idx, len);
}

static void add_query_pair(lua_State *L, sbuf *b, int *first, const char *k, size_t kn, const char *v,
                           size_t vn) {
  sbuf_add(L, b, *first ? "?" : "&", 1);
  *first = 0;
  sbuf_add_escaped(L, b, k, kn, 0);
  sbuf_add(L, b, "=", 1);
  sbuf_add_escaped(L, b, v, vn, 0);
}

/* Appends the query string for one parameter value at idx. */
static void add_query(lua_State *L, sbuf *b, int *first, const fly_operation *op, const fly_param *p, int idx,
                      int level) {
  size_t wn = strlen(p->wire), vn;
  if (p->in == FLY_IN_QUERY_MAP) { /* metadata = {k = v} -> metadata.k=v */
    if (!lua_istable(L, idx))
      raise_at(L, level, "fly: %s: parameter '%s' must be a table of key = value", op->id, p->name);
    const char *dot = strchr(p->wire, '.');
    size_t pn = dot ? (size_t)(dot - p->wire) : wn;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      if (lua_type(L, -2) != LUA_TSTRING)
        raise_at(L, level, "fly: %s: parameter '%s' needs string keys", op->id, p->name);
      size_t kn;
      const char *k = lua_tolstring(L, -2, &kn);
      const char *v = fly_param_string(L, lua_gettop(L), op, p->name, &vn, level);
      sbuf_add(L, b, *first ? "?" : "&", 1);
      *first = 0;
      sbuf_add_escaped(L, b, p->wire, pn, 0);
      sbuf_add(L, b, ".", 1);
      sbuf_add_escaped(L, b, k, kn, 0);
      sbuf_add(L, b, "=", 1);
      sbuf_add_escaped(L, b, v, vn, 0);
      lua_pop(L, 1);
    }
    return;
  }
  if (lua_istable(L, idx)) { /* an array repeats the key (or makes the list); anything else is a mistake */
    int n = (int)fly_rawlen(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      lua_Number k = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
      if (!(k >= 1 && k <= n && k == floor(k)))
        raise_at(L, level, "fly: %s: parameter '%s' must be a value or an array of values", op->id, p->name);
    }
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      const char *v = fly_param_string(L, lua_gettop(L), op, p->name, &vn, level);
      if (p->in != FLY_IN_QUERY_LIST || i == 1) add_query_pair(L, b, first, p->wire, wn, v, vn);
      else sbuf_add(L, b, ",", 1), sbuf_add_escaped(L, b, v, vn, 0); /* name=a,b */
      lua_pop(L, 1);
    }
    return;
  }
  const char *v = fly_param_string(L, idx, op, p->name, &vn, level);
  add_query_pair(L, b, first, p->wire, wn, v, vn);
}

static void add_header(lua_State *L, fly_strlist *l, const char *h, size_t n) {
  if (!fly_strlist_add(l, h, n)) luaL_error(L, "fly: out of memory");
}

void fly_build(lua_State *L, const fly_build_base *base, const fly_operation *op, int params, int level,
               fly_wire *w) {
  /* every key must be a parameter of this operation, or body */
  lua_pushnil(L);
  while (lua_next(L, params)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) raise_at(L, level, "fly: %s: parameter names must be strings", op->id);
    const char *k = lua_tostring(L, -1);
    int known = strcmp(k, "body") == 0;
    for (int i = 0; !known && i < op->nparams; i++) known = strcmp(k, op->params[i].name) == 0;
    if (!known) raise_at(L, level, "fly: %s: unknown parameter '%s'", op->id, k);
  }
  rawfield(L, params, "body");
  int body = lua_gettop(L);
  if (!lua_isnil(L, body) && lua_type(L, body) != LUA_TSTRING)
    raise_at(L, level, "fly: %s: body must be an encoded string here", op->id);
  if (!lua_isnil(L, body) && !op->has_body) raise_at(L, level, "fly: %s: this operation takes no body", op->id);
  for (int i = 0; i < op->nparams; i++) {
    if (!op->params[i].required) continue;
    rawfield(L, params, op->params[i].name);
    if (lua_isnil(L, -1))
      raise_at(L, level, "fly: %s: missing required parameter '%s'", op->id, op->params[i].name);
    lua_pop(L, 1);
  }

  /* the URL: base, path template with its segments filled in, query */
  sbuf *url = &w->url;
  w->base_len = strlen(base->base_url);
  sbuf_add(L, url, base->base_url, w->base_len);
  for (const char *t = op->path; *t;) {
    const char *open = strchr(t, '{');
    if (!open) {
      sbuf_add(L, url, t, strlen(t));
      break;
    }
    sbuf_add(L, url, t, (size_t)(open - t));
    const char *close = strchr(open, '}');
    size_t nn = (size_t)(close - open - 1);
    const fly_param *p = NULL;
    for (int i = 0; !p && i < op->nparams; i++)
      if (op->params[i].in == FLY_IN_PATH && strncmp(op->params[i].name, open + 1, nn) == 0 &&
          op->params[i].name[nn] == '\0')
        p = &op->params[i];
    rawfield(L, params, p->name);
    size_t vn;
    const char *v = fly_param_string(L, lua_gettop(L), op, p->name, &vn, level);
    if (vn == 0) raise_at(L, level, "fly: %s: parameter '%s' must not be empty", op->id, p->name);
    sbuf_add_escaped(L, url, v, vn, only_dots(v, vn));
    lua_pop(L, 1);
    t = close + 1;
  }
  size_t path_len = url->n - w->base_len;
  int first = 1;
  for (int i = 0; i < op->nparams; i++) {
    const fly_param *p = &op->params[i];
    if (p->in != FLY_IN_QUERY && p->in != FLY_IN_QUERY_LIST && p->in != FLY_IN_QUERY_MAP) continue;
    rawfield(L, params, p->name);
    if (!lua_isnil(L, -1)) add_query(L, url, &first, op, p, lua_gettop(L), level);
    lua_pop(L, 1);
  }
  w->path = dupn(url->p + w->base_len, path_len);
  if (!w->path) luaL_error(L, "fly: out of memory");

  if (!lua_isnil(L, body) || op->has_body) { /* a declared body is always sent, {} at least */
    size_t bn = 2;
    const char *b = lua_isnil(L, body) ? "{}" : lua_tolstring(L, body, &bn);
    w->body = dupn(b, bn);
    if (!w->body) luaL_error(L, "fly: out of memory");
    w->body_len = bn;
  }
  lua_pop(L, 1); /* body */

  /* header parameters: the request gets its own list */
  for (int i = 0; i < op->nparams; i++) {
    const fly_param *p = &op->params[i];
    if (p->in != FLY_IN_HEADER) continue;
    rawfield(L, params, p->name);
    if (!lua_isnil(L, -1)) {
      /* a header value is text: `false` would be sent as "false" (and a nonce of false taken
         for a lease held) */
      if (lua_type(L, -1) != LUA_TSTRING)
        raise_at(L, level, "fly: %s: parameter '%s' must be a string (got %s)", op->id, p->name,
                 luaL_typename(L, -1));
      size_t vn;
      const char *v = fly_param_string(L, lua_gettop(L), op, p->name, &vn, level);
      const char *flaw = header_flaw(v, vn);
      if (flaw) raise_at(L, level, "fly: %s: parameter '%s' contains %s", op->id, p->name, flaw);
      /* libcurl leaves out a header with nothing but blanks after its colon (its ISSPACE: space,
         tab, vertical tab, form feed; CR and LF are refused above): a blank lease nonce would
         make an update outside any lease look like one under it (safe to repeat) */
      size_t k = 0;
      while (k < vn && (v[k] == ' ' || v[k] == '\t' || v[k] == '\v' || v[k] == '\f')) k++;
      if (k == vn)
        raise_at(L, level, "fly: %s: parameter '%s' must not be %s", op->id, p->name, vn ? "blank" : "empty");
      if (!w->headers.n) {
        const fly_strlist *shared = w->body ? base->json_headers : base->headers;
        for (size_t j = 0; j < shared->n; j++) add_header(L, &w->headers, shared->v[j], strlen(shared->v[j]));
      }
      lua_pushfstring(L, "%s: %s", p->wire, v);
      add_header(L, &w->headers, lua_tostring(L, -1), fly_rawlen(L, -1));
      if (strcmp(p->name, "lease_nonce") == 0) w->nonce = 1;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  w->safe = op->safety == FLY_SAFE || (op->safety == FLY_SAFE_WITH_LEASE && w->nonce);
}
