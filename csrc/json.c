/* Decoding of JSON response bodies straight into Lua values.
 *
 * Responses are decoded here, from the request's own buffer, rather than
 * through lua-cjson: that saves copying each body into a Lua string, and it
 * gives what cjson 2.1 cannot: whole numbers become Lua integers, and arrays
 * carry the `fly.array` metatable, so an empty array read from the API is sent
 * back as `[]`. JSON null is the light userdata NULL, which is cjson.null.
 *
 * The text must be followed by a NUL byte (Lua strings and the request's
 * buffer are): scanning loops stop on it instead of checking the length at
 * every byte.
 *
 * Members and elements are gathered on the Lua stack first and the table is
 * made at its final size, so no table is ever rehashed while decoding. No
 * foreign frames are on the C stack here: a memory error raised by the Lua
 * API unwinds cleanly. */
#include "json.h"

#include <lauxlib.h>
#include <string.h>

#define MAX_DEPTH 512

typedef struct {
  lua_State *L;
  const char *p, *start, *end;
  const char *err; /* static message, set on a syntax error */
  int depth;
  int array_mt;    /* stack index of the array metatable */
} decoder;

static int value(decoder *d);

/* Bytes that end a run of plain string content: quote, backslash, and every
 * control character (NUL included, which also marks the end of the text). */
static const unsigned char stops[256] = {
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  ['"'] = 1, ['\\'] = 1,
};

static void skip_ws(decoder *d) {
  while (*d->p == ' ' || *d->p == '\n' || *d->p == '\r' || *d->p == '\t') d->p++;
}

static int fail(decoder *d, const char *msg) {
  if (!d->err) d->err = msg;
  return 0;
}

static int hex4(const char *s, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = s[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
  char out[4];
  int n;
  if (cp < 0x80) out[0] = (char)cp, n = 1;
  else if (cp < 0x800) out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
  else if (cp < 0x10000)
    out[0] = (char)(0xE0 | cp >> 12), out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)),
    out[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
  else
    out[0] = (char)(0xF0 | cp >> 18), out[1] = (char)(0x80 | ((cp >> 12) & 0x3F)),
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
  luaL_addlstring(b, out, (size_t)n);
}

/* A string (d->p at the opening quote) pushed on the stack. */
static int string(decoder *d) {
  const char *s = ++d->p;
  while (!stops[(unsigned char)*d->p]) d->p++;
  if (d->p >= d->end) return fail(d, "unterminated string");
  if (*d->p == '"') { /* no escapes: the common case */
    lua_pushlstring(d->L, s, (size_t)(d->p - s));
    d->p++;
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(d->L, &b);
  luaL_addlstring(&b, s, (size_t)(d->p - s));
  while (d->p < d->end && *d->p != '"') {
    unsigned char c = (unsigned char)*d->p;
    if (c < 0x20) return fail(d, "control character in string");
    if (c != '\\') {
      const char *run = d->p;
      while (!stops[(unsigned char)*d->p]) d->p++;
      luaL_addlstring(&b, run, (size_t)(d->p - run));
      continue;
    }
    if (++d->p >= d->end) return fail(d, "unterminated string");
    switch (*d->p++) {
    case '"': luaL_addchar(&b, '"'); break;
    case '\\': luaL_addchar(&b, '\\'); break;
    case '/': luaL_addchar(&b, '/'); break;
    case 'b': luaL_addchar(&b, '\b'); break;
    case 'f': luaL_addchar(&b, '\f'); break;
    case 'n': luaL_addchar(&b, '\n'); break;
    case 'r': luaL_addchar(&b, '\r'); break;
    case 't': luaL_addchar(&b, '\t'); break;
    case 'u': {
      unsigned cp, lo;
      if (d->end - d->p < 4 || !hex4(d->p, &cp)) return fail(d, "bad \\u escape");
      d->p += 4;
      if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
        if (d->end - d->p < 6 || d->p[0] != '\\' || d->p[1] != 'u' || !hex4(d->p + 2, &lo) || lo < 0xDC00 ||
            lo > 0xDFFF)
          return fail(d, "bad surrogate pair");
        d->p += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return fail(d, "bad surrogate pair");
      }
      add_utf8(&b, cp);
      break;
    }
    default: return fail(d, "bad escape");
    }
  }
  if (d->p >= d->end) return fail(d, "unterminated string");
  d->p++;
  luaL_pushresult(&b);
  return 1;
}

/* A number, checked against JSON's grammar, converted by Lua itself: whole
 * numbers that fit become integers, the rest floats. */
static int number(decoder *d) {
  const char *s = d->p, *p = d->p, *e = d->end;
  if (p < e && *p == '-') p++;
  if (p < e && *p == '0') p++;
  else if (p < e && *p >= '1' && *p <= '9') while (p < e && *p >= '0' && *p <= '9') p++;
  else return fail(d, "bad number");
  if (p < e && *p == '.') {
    if (++p >= e || *p < '0' || *p > '9') return fail(d, "bad number");
    while (p < e && *p >= '0' && *p <= '9') p++;
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < e && (*p == '+' || *p == '-')) p++;
    if (p >= e || *p < '0' || *p > '9') return fail(d, "bad number");
    while (p < e && *p >= '0' && *p <= '9') p++;
  }
  char buf[64];
  size_t n = (size_t)(p - s);
  d->p = p;
  if (n < sizeof buf) {
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (fly_stringtonumber(d->L, buf) == 0) return fail(d, "bad number");
  } else {
    lua_pushlstring(d->L, s, n);
    int ok = fly_stringtonumber(d->L, lua_tostring(d->L, -1)) != 0;
    lua_remove(d->L, ok ? -2 : -1);
    if (!ok) return fail(d, "bad number");
  }
  return 1;
}

static int literal(decoder *d, const char *word, size_t n) {
  if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0) return fail(d, "unexpected character");
  d->p += n;
  return 1;
}

/* Moves the `n` values (or key/value pairs) on top of the stack into the
 * table at index `t`, made here at its final size when `t` still holds the
 * placeholder (nil). Pairs are set from the top down, each rawset popping
 * its own pair; values are set by index, last first. */
static void collect(lua_State *L, int t, int n, int pairs) {
  if (lua_isnil(L, t)) {
    lua_createtable(L, pairs ? 0 : n, pairs ? n : 0);
    lua_replace(L, t);
  }
  if (pairs) {
    for (int i = 0; i < n; i++) lua_rawset(L, t);
  } else {
    int base = (int)fly_rawlen(L, t);
    for (int i = n; i >= 1; i--) lua_rawseti(L, t, base + i);
  }
}

/* An object or array (d->p at its opening bracket). */
static int container(decoder *d, int object) {
  lua_State *L = d->L;
  char close = object ? '}' : ']';
  if (++d->depth > MAX_DEPTH) return fail(d, "nested too deeply");
  d->p++;
  lua_pushnil(L); /* the table's place, filled by collect */
  int t = lua_gettop(L), n = 0;
  skip_ws(d);
  if (*d->p == close) {
    d->p++;
  } else {
    for (;;) {
      if (!lua_checkstack(L, 4)) { /* the stack is full: move what is gathered into the table */
        collect(L, t, n, object);
        n = 0;
        if (!lua_checkstack(L, 4)) return fail(d, "out of stack");
      }
      skip_ws(d);
      if (object) {
        if (*d->p != '"') return fail(d, "expected a member name");
        if (!string(d)) return 0;
        skip_ws(d);
        if (*d->p != ':') return fail(d, "expected ':'");
        d->p++;
      }
      if (!value(d)) return 0;
      n++;
      skip_ws(d);
      if (*d->p == ',') {
        d->p++;
        continue;
      }
      if (*d->p == close) {
        d->p++;
        break;
      }
      return fail(d, d->p >= d->end ? "unexpected end" : object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
  }
  collect(L, t, n, object);
  if (!object) {
    lua_pushvalue(L, d->array_mt);
    lua_setmetatable(L, t);
  }
  d->depth--;
  return 1;
}

static int value(decoder *d) {
  skip_ws(d);
  if (d->p >= d->end) return fail(d, "unexpected end");
  switch (*d->p) {
  case '{': return container(d, 1);
  case '[': return container(d, 0);
  case '"': return string(d);
  case 't': return literal(d, "true", 4) && (lua_pushboolean(d->L, 1), 1);
  case 'f': return literal(d, "false", 5) && (lua_pushboolean(d->L, 0), 1);
  case 'n': return literal(d, "null", 4) && (lua_pushlightuserdata(d->L, NULL), 1);
  default: return number(d);
  }
}

int fly_json_decode(lua_State *L, const char *s, size_t len, int array_mt) {
  int top = lua_gettop(L);
  decoder d = {L, s, s, s + len, NULL, 0, fly_absindex(L, array_mt)};
  if (value(&d)) {
    skip_ws(&d);
    if (d.p == d.end) return 1;
    d.err = "trailing characters";
  }
  lua_settop(L, top);
  lua_pushnil(L);
  lua_pushfstring(L, "%s at byte %d", d.err ? d.err : "invalid JSON", (int)(d.p - d.start) + 1);
  return 2;
}
