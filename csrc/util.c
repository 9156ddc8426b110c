/* Small helpers shared by every file of the core (see util.h). */
#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void sbuf_add(lua_State *L, sbuf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) luaL_error(L, "fly: out of memory");
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static int unreserved(unsigned char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
         ch == '_' || ch == '~' || ch == '.';
}

void sbuf_add_escaped(lua_State *L, sbuf *b, const char *s, size_t n, int all_dots) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i = 0;
  while (i < n) {
    size_t run = i;
    while (run < n && unreserved((unsigned char)s[run]) && !(all_dots && s[run] == '.')) run++;
    if (run > i) sbuf_add(L, b, s + i, run - i);
    if (run == n) break;
    unsigned char ch = (unsigned char)s[run];
    char esc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
    sbuf_add(L, b, esc, 3);
    i = run + 1;
  }
}

int only_dots(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != '.') return 0;
  return 1;
}

char *dupn(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

uint64_t fnv64(uint64_t h, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

const char *header_flaw(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\r' || s[i] == '\n') return "a line break";
    if (s[i] == '\0') return "a NUL byte";
  }
  return NULL;
}

int rawfield(lua_State *L, int t, const char *k) {
  lua_pushstring(L, k);
  lua_rawget(L, t < 0 ? t - 1 : t);
  return lua_type(L, -1);
}

double opt_number_in(lua_State *L, int t, const char *owner, const char *k, double dflt) {
  double v = dflt;
  rawfield(L, t, k);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER) { /* a numeric string is not a number here */
      if (owner) luaL_error(L, "fly: %s.%s must be a number (got %s)", owner, k, luaL_typename(L, -1));
      luaL_error(L, "fly: option '%s' must be a number (got %s)", k, luaL_typename(L, -1));
    }
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

double opt_number_field(lua_State *L, int t, const char *k, double dflt) { return opt_number_in(L, t, NULL, k, dflt); }

int raise_at(lua_State *L, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  luaL_where(L, level);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

long seconds_to_ms(double s) {
  if (!(s > 0)) return 1;
  if (s > 1e8) return 0;
  return (long)ceil(s * 1000);
}
