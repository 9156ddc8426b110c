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
 * An object's table is made when its first member name is read, at the
 * size remembered for objects that begin with the same name in the same
 * place (under the same member name: `"alive": {"type": …}` and the
 * elements of `"events": [{"type": …}]` are apart), and each member is set
 * in it as it is read: objects of one schema have the same members, so a
 * table of ordinary size is made at its final size without gathering its
 * members first, and without a rehash when the members come. The size is
 * the larger of the last two objects there (an array whose elements have 3
 * and 2 members makes each at 3; a large one is forgotten two objects on).
 * What a body can make larger than it needs stays in proportion to its
 * length: a size is at most GUESS_MOST, is given to no object nested in the
 * one that took it (it is taken away while that one is read), and all of
 * one body's stay within `room` (one member per 4 bytes).
 *
 * Elements of an array are gathered on the Lua stack and the table is made
 * with room for them once they are read (2^k >= n slots when it is one made
 * ahead, see below). The stack is finite (8000 slots on Lua 5.1, a million
 * on 5.4): an array that is about to run short moves what it has gathered
 * into its table and goes on, so a flat array of a million objects decodes.
 * Each container keeps free, before each of its members, enough stack for
 * every level that may still open below it (RESERVE), which an array can
 * always get back by flushing its own elements: its parent kept that much
 * for it.
 *
 * Member names repeat from body to body: the state remembers them (see
 * push_name()), so most are a table read instead of a hash and a string
 * table search.
 *
 * Empty tables made ahead: fly_json_prefill() makes, while a call waits for
 * its answer, as many empty tables of each size (a hash part of 1, 2, 4 …
 * 64 slots, or an array part of as many) as the last decode asked for, up
 * to a bound; an object whose size is guessed takes one of its size instead
 * of making it, and so does an array of up to 64 elements once they are
 * read. A table made at 3 hash slots has 4, as one made at 4 does: the
 * tables are the same. An array of 3 elements in an array part of 4 is
 * the same array to Lua (its length, its elements, `next`), as a table
 * whose fourth element was set to nil.
 *
 * Numbers: a literal without fraction or exponent is an integer where the
 * Lua has integers and the value fits in 64 bits; every other number is a
 * float read by strtod (correctly rounded). `-0` is the integer 0 there;
 * `-0.0` is the float -0.0. Duplicate member names: the last one wins.
 *
 * No foreign frames are on the C stack here: a memory error raised by the
 * Lua API unwinds cleanly. */
#include "json.h"

#include <lauxlib.h>
#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 512

/* Stack slots a container at `depth` keeps free before each member: two per
 * level that may still open below it (an array's placeholder, or an
 * object's table and a member name), and room for the innermost value, a
 * luaL_Buffer's pieces included. */
#define RESERVE(depth) (2 * (MAX_DEPTH - (depth)) + 32)
/* Array elements gathered between two checks of the stack (each takes one
 * slot): a check asks for RESERVE plus their room. */
#define CHECK_EVERY 16

/* Member names seen before, remembered per Lua state: API bodies repeat the
 * same few dozen names in every object, and pushing a remembered string
 * costs a table read where lua_pushlstring hashes every byte and searches
 * Lua's string table. Each slot holds a name's bytes (those of a Lua string
 * the anchor table keeps alive at the slot's index) and a hash of them. A
 * name's hash picks a set of NAME_WAYS slots, any of which may hold it: a
 * new name takes the set's slots in turn, so names that share a set (five
 * of a Machine's 53 shared two, with one slot per set) do not push each
 * other out body after body. */
#define NAME_WAYS 4
#define NAME_SETS 256
#define NAME_SLOTS (NAME_WAYS * NAME_SETS)
/* Remembered object sizes, by (first member name, the member name above) */
#define SIZE_SLOTS 1024
#define NAME_LONGEST 40 /* the longest name remembered (Lua 5.4 interns up to 40 bytes) */
/* The largest size an object's table is made at before its members are read. */
#define GUESS_MOST 64
/* Tables made ahead (fly_json_prefill): by class c, hash parts (c <
 * POOL_SIZES) or array parts (the rest) of 2^k slots, k = c % POOL_SIZES,
 * up to GUESS_MOST, at most POOL_MOST(c) of each (fewer of the larger: 126
 * tables of 736 slots of each kind), held in the pool table at the slots
 * pool_slot(c, 0 .. POOL_MOST(c) - 1). */
#define POOL_SIZES 7
#define POOL_CLASSES (2 * POOL_SIZES)
#define POOL_PER_CLASS 32
#define POOL_MOST(c) \
  ((128 >> ((c) % POOL_SIZES)) < POOL_PER_CLASS ? (128 >> ((c) % POOL_SIZES)) : POOL_PER_CLASS)

typedef struct {
  const char *s; /* the anchored string's bytes, or NULL */
  uint32_t len, hash;
} name_slot;

typedef struct {
  name_slot names[NAME_SLOTS];
  unsigned char next_way[NAME_SETS]; /* the way of its set the next new name takes */
  /* by where an object is (size_key()): the member counts of the last two
   * objects there, the larger of which the next one's table is made at */
  unsigned char last[SIZE_SLOTS], before[SIZE_SLOTS];
  /* tables made ahead: how many the pool holds of each size class, and how
   * many the last decode asked for (at most POOL_MOST) */
  unsigned char pooled[POOL_CLASSES], wanted[POOL_CLASSES];
} memory;

/* The registry key of the anchor table: its 1..NAME_SLOTS hold the names,
 * its NAME_SLOTS + 1 the userdata holding the memory, its POOL_INDEX the
 * pool table (apart: filling it touches only that table, which a
 * generational collector then traverses again, not the names). The pool
 * table's array part has a slot for every table it may hold, so that
 * storing one allocates nothing. */
static const char names_key = 'n';
#define POOL_INDEX (NAME_SLOTS + 2)

static int pool_slot(unsigned c, unsigned i) { return (int)(c * POOL_PER_CLASS + i + 1); }

typedef struct {
  lua_State *L;
  const char *p, *start, *end;
  memory *mem;      /* the state's remembered names and object sizes */
  int names_idx;    /* stack index of their anchor table */
  int pool_idx;     /* stack index of the pool table */
  unsigned char asked[POOL_CLASSES]; /* tables this decode asked for, by size class (saturating) */
  unsigned place;   /* the slot of the member name the value being read is under
                       (NAME_SLOTS: none, or one not remembered); an array's elements are
                       under the array's */
  const char *err; /* static message, set on a syntax error */
  int depth;
  int array_mt;    /* stack index of the array metatable */
  size_t values, max_values; /* values made so far, and the bound (0: none) */
  size_t room;               /* members the rest of the body's tables may still be made for ahead */
} decoder;

const char FLY_JSON_TOO_MANY[] = "too many values";

static int value(decoder *d);

/* Bytes that end a run of plain string content: quote, backslash, and every
 * control character (NUL included, which also marks the end of the text). */
static const unsigned char stops[256] = {
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  ['"'] = 1, ['\\'] = 1,
};

/* Whitespace: JSON's four bytes. */
static const unsigned char spaces[256] = {[' '] = 1, ['\n'] = 1, ['\r'] = 1, ['\t'] = 1};

/* The scanning loops below read through a local pointer and store d->p once:
 * through d->p itself, every byte read (a char, which may alias anything)
 * would force the pointer back to memory and reload it. */
static void skip_ws(decoder *d) {
  const char *p = d->p;
  if (!spaces[(unsigned char)*p]) return; /* bodies from the API are compact */
  while (spaces[(unsigned char)*p]) p++;
  d->p = p;
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

static uint64_t load8(const char *s) {
  uint64_t v;
  memcpy(&v, s, 8);
  return v;
}

static uint32_t load4(const char *s) {
  uint32_t v;
  memcpy(&v, s, 4);
  return v;
}

/* Whether x[0..n) and y[0..n) hold the same bytes (1 <= n <= NAME_LONGEST),
 * word by word: at this length cheaper than a call to memcmp. */
static int same_bytes(const char *x, const char *y, size_t n) {
  if (n >= 8) {
    for (size_t i = 0; i + 8 < n; i += 8)
      if (load8(x + i) != load8(y + i)) return 0;
    return load8(x + n - 8) == load8(y + n - 8);
  }
  if (n >= 4) return load4(x) == load4(y) && load4(x + n - 4) == load4(y + n - 4);
  return x[0] == y[0] && x[n / 2] == y[n / 2] && x[n - 1] == y[n - 1];
}

/* A hash of the name s[0..n) (1 <= n <= NAME_LONGEST) from its length and
 * its first, middle and last 8 bytes (4, or 3 single bytes, when shorter). */
static uint32_t name_hash(const char *s, size_t n) {
  uint64_t a, b, c;
  if (n >= 8) a = load8(s), b = load8(s + (n - 8) / 2), c = load8(s + n - 8);
  else if (n >= 4) a = load4(s), b = 0, c = load4(s + n - 4);
  else a = (unsigned char)s[0], b = (unsigned char)s[n / 2], c = (unsigned char)s[n - 1];
  uint64_t h = (a ^ (uint64_t)n << 59) * 0x9E3779B97F4A7C15u ^ b * 0xC2B2AE3D27D4EB4Fu ^ c * 0x165667B19E3779F9u;
  return (uint32_t)(h >> 32) ^ (uint32_t)h;
}

/* Pushes the member name s[0..n) (1 <= n <= NAME_LONGEST): the remembered
 * one when a slot of its set holds the same bytes, else a new one, which
 * takes the set's next slot over. Returns the slot's index. */
static unsigned push_name(decoder *d, const char *s, size_t n) {
  uint32_t h = name_hash(s, n);
  unsigned set = (h ^ h >> 16) & (NAME_SETS - 1), i = set * NAME_WAYS;
  name_slot *e = &d->mem->names[i];
  for (unsigned w = 0; w < NAME_WAYS; w++, e++, i++) {
    if (e->hash == h && e->len == n && e->s && same_bytes(e->s, s, n)) {
      lua_rawgeti(d->L, d->names_idx, (int)i + 1);
      return i;
    }
  }
  unsigned w = d->mem->next_way[set];
  d->mem->next_way[set] = (unsigned char)((w + 1) % NAME_WAYS);
  i = set * NAME_WAYS + w;
  e = &d->mem->names[i];
  lua_pushlstring(d->L, s, n);
  lua_pushvalue(d->L, -1);
  lua_rawseti(d->L, d->names_idx, (int)i + 1);
  e->s = lua_tostring(d->L, -1);
  e->len = (uint32_t)n;
  e->hash = h;
  return i;
}

static int escaped_string(decoder *d, const char *s);

/* A string (d->p at the opening quote) pushed on the stack; `slot`, when
 * not NULL, a member name: it gets the index of the name's slot, or
 * NAME_SLOTS for a name not remembered (one with escapes, empty, or longer
 * than NAME_LONGEST). */
static int string(decoder *d, unsigned *slot) {
  const char *s = d->p + 1, *p = s;
  while (!stops[(unsigned char)*p]) p++;
  size_t n = (size_t)(p - s);
  if (slot) *slot = NAME_SLOTS;
  if (*p == '"') { /* no escapes: the common case (a quote is never the NUL at the end) */
    d->p = p + 1;
    if (slot && n - 1 < NAME_LONGEST) *slot = push_name(d, s, n); /* not empty, not too long */
    else lua_pushlstring(d->L, s, n);
    return 1;
  }
  d->p = p;
  return escaped_string(d, s);
}

/* The rest of a string that holds an escape or a control character, or
 * ends early (d->p there, its content from s): apart from string() so that
 * the common case keeps a small frame, without the buffer. */
static __attribute__((noinline)) int escaped_string(decoder *d, const char *s) {
  if (d->p >= d->end) return fail(d, "unterminated string");
  luaL_Buffer b;
  luaL_buffinit(d->L, &b);
  luaL_addlstring(&b, s, (size_t)(d->p - s));
  while (d->p < d->end && *d->p != '"') {
    unsigned char c = (unsigned char)*d->p;
    if (c < 0x20) return fail(d, "control character in string");
    if (c != '\\') {
      const char *run = d->p, *p = run;
      while (!stops[(unsigned char)*p]) p++;
      d->p = p;
      luaL_addlstring(&b, run, (size_t)(p - run));
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

/* Pushes the state's anchor table of remembered names and its pool table
 * (made the first time) and returns its memory. */
static memory *push_memory(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&names_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_istable(L, -1)) {
    lua_rawgeti(L, -1, NAME_SLOTS + 1);
    memory *mem = lua_touserdata(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, -1, POOL_INDEX);
    return mem;
  }
  lua_pop(L, 1);
  lua_createtable(L, POOL_INDEX, 0);
  memory *mem = fly_newuserdata(L, sizeof *mem);
  memset(mem, 0, sizeof *mem);
  lua_rawseti(L, -2, NAME_SLOTS + 1);
  lua_createtable(L, POOL_CLASSES * POOL_PER_CLASS, 0);
  lua_rawseti(L, -2, POOL_INDEX);
  lua_pushlightuserdata(L, (void *)&names_key);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_rawgeti(L, -1, POOL_INDEX);
  return mem;
}

/* The size of a table made for `n` >= 1 members or elements: 2^k slots
 * (n <= GUESS_MOST). */
static unsigned size_class(unsigned n) {
  unsigned k = 0;
  while ((1u << k) < n) k++;
  return k;
}

/* Pushes an empty table of class c (made with narr array slots and nrec
 * hash slots when the pool has none). */
static void pool_take(decoder *d, unsigned c, int narr, int nrec) {
  if (d->asked[c] < POOL_MOST(c)) d->asked[c]++;
  if (d->mem->pooled[c] > 0) {
    int i = pool_slot(c, --d->mem->pooled[c]);
    lua_rawgeti(d->L, d->pool_idx, i); /* a table: the count says what the pool holds */
    lua_pushnil(d->L);                  /* the pool lets go of it */
    lua_rawseti(d->L, d->pool_idx, i);
    return;
  }
  lua_createtable(d->L, narr, nrec);
}

/* Pushes an empty table with room for `n` members: one made ahead when the
 * pool has one of its size, else a new one. */
static void new_table(decoder *d, int n) {
  if (n > 0) pool_take(d, size_class((unsigned)n), 0, n);
  else lua_createtable(d->L, 0, 0);
}

/* Pushes an empty table for an array of `n` elements: one made ahead with
 * room for them when there is one, else a new one of their size. */
static void new_array(decoder *d, int n) {
  if (n > 0 && n <= GUESS_MOST) pool_take(d, POOL_SIZES + size_class((unsigned)n), n, 0);
  else lua_createtable(d->L, n, 0);
}

void fly_json_prefill(lua_State *L) {
  if (!lua_checkstack(L, 4)) return;
  memory *mem = push_memory(L);
  for (unsigned c = 0; c < POOL_CLASSES; c++) {
    /* a finalizer that the collector runs at an allocation here may decode (and
       take tables): the count is read again after each */
    while (mem->pooled[c] < mem->wanted[c]) {
      int slots = 1 << (c % POOL_SIZES);
      if (c < POOL_SIZES) lua_createtable(L, 0, slots);
      else lua_createtable(L, slots, 0);
      unsigned i = mem->pooled[c];
      if (i >= mem->wanted[c]) { /* (it changed meanwhile) */
        lua_pop(L, 1);
        break;
      }
      lua_rawseti(L, -2, pool_slot(c, i)); /* in the array part: allocates nothing */
      mem->pooled[c] = (unsigned char)(i + 1);
    }
  }
  lua_pop(L, 2);
}

/* A float from the number text s[0..n): strtod, which reads the decimal
 * point of the C library's locale; when that is not '.', the text is
 * copied with the locale's point, as Lua itself does. */
static int push_float(decoder *d, const char *s, size_t n) {
  char *end;
  double v = strtod(s, &end);
  if (end != s + n) {
    char buf[512], *copy = n < sizeof buf ? buf : malloc(n + 1); /* freed below */
    if (!copy) return fail(d, "not enough memory");
    memcpy(copy, s, n);
    copy[n] = '\0';
    char *dot = memchr(copy, '.', n);
    if (dot) *dot = localeconv()->decimal_point[0];
    v = strtod(copy, &end);
    int ok = end == copy + n;
    if (copy != buf) free(copy);
    if (!ok) return fail(d, "bad number");
  }
  lua_pushnumber(d->L, (lua_Number)v);
  return 1;
}

/* A number, checked against JSON's grammar. Integer literals of up to 19
 * digits are read here, exactly; the rest go to strtod. */
static int number(decoder *d) {
  const char *s = d->p, *p = d->p;
  int neg = *p == '-';
  if (neg) p++;
  const char *digits = p;
  uint64_t u = 0;
  if (*p == '0') p++;
  else if (*p >= '1' && *p <= '9') while (*p >= '0' && *p <= '9') u = u * 10 + (uint64_t)(*p++ - '0');
  else return fail(d, "bad number");
  int whole = 1;
  if (*p == '.') {
    whole = 0;
    if (*++p < '0' || *p > '9') return fail(d, "bad number");
    while (*p >= '0' && *p <= '9') p++;
  }
  if (*p == 'e' || *p == 'E') {
    whole = 0;
    p++;
    if (*p == '+' || *p == '-') p++;
    if (*p < '0' || *p > '9') return fail(d, "bad number");
    while (*p >= '0' && *p <= '9') p++;
  }
  d->p = p;
  if (!whole || p - digits > 19) return push_float(d, s, (size_t)(p - s)); /* 19 digits cannot wrap */
#if LUA_VERSION_NUM >= 503
  if (!neg && u <= (uint64_t)LUA_MAXINTEGER) {
    lua_pushinteger(d->L, (lua_Integer)u);
    return 1;
  }
  if (neg && u <= (uint64_t)LUA_MAXINTEGER + 1) {
    lua_pushinteger(d->L, (lua_Integer)(0 - u)); /* wraps to LUA_MININTEGER at the bound */
    return 1;
  }
#endif
  /* beyond 64 bits, or no integers: the conversion rounds as strtod does */
  lua_pushnumber(d->L, neg ? -(lua_Number)u : (lua_Number)u);
  return 1;
}

static int literal(decoder *d, const char *word, size_t n) {
  if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0) return fail(d, "unexpected character");
  d->p += n;
  return 1;
}

/* Moves the `n` values on top of the stack into the table at index `t`,
 * made here with room for them (or taken from those made ahead) when `t`
 * still holds the placeholder (nil), and pops them. */
static void collect(decoder *d, int t, int n) {
  lua_State *L = d->L;
  if (lua_isnil(L, t)) {
    new_array(d, n);
    lua_replace(L, t);
  }
  int base = (int)fly_rawlen(L, t);
  for (int i = n; i >= 1; i--) lua_rawseti(L, t, base + i);
}

/* The slot of an object's remembered size: by its first member name's slot
 * and the slot of the member name it is under (`place`). */
static unsigned size_key(unsigned first, unsigned place) {
  uint32_t x = (uint32_t)first * 0x9E3779B1u + (uint32_t)place * 0x85EBCA77u;
  return (x ^ x >> 15) & (SIZE_SLOTS - 1);
}

/* The members of an object (d->p past its opening brace, at a member name
 * or the closing brace). Members are set in the order they come, so that of
 * two equal names the last one wins. Apart from the table and the name on
 * top of it, a member takes no stack: what its parent kept free for it is
 * what its value may take. */
static int object(decoder *d) {
  lua_State *L = d->L;
  if (*d->p == '}') {
    d->p++;
    lua_createtable(L, 0, 0);
    return 1;
  }
  unsigned slot, key = SIZE_SLOTS, last = 0;
  int t = 0, n = 0;
  for (;;) {
    if (*d->p != '"') return fail(d, "expected a member name");
    if (!string(d, &slot)) return 0;
    if (n == 0) { /* the table, at the size remembered for objects like this one */
      int guess = 0;
      if (slot < NAME_SLOTS) { /* taken: an object nested in this one gets no guess from it */
        key = size_key(slot, d->place);
        last = d->mem->last[key];
        guess = last > d->mem->before[key] ? (int)last : d->mem->before[key];
        d->mem->last[key] = d->mem->before[key] = 0;
        if ((size_t)guess > d->room) guess = (int)d->room;
        d->room -= (size_t)guess;
      }
      new_table(d, guess);
      lua_insert(L, -2);
      t = lua_gettop(L) - 1;
    }
    skip_ws(d);
    if (*d->p != ':') return fail(d, "expected ':'");
    d->p++;
    d->place = slot;
    if (!value(d)) return 0;
    lua_rawset(L, t);
    n++;
    skip_ws(d);
    if (*d->p == ',') {
      d->p++;
      skip_ws(d);
      continue;
    }
    if (*d->p == '}') {
      d->p++;
      break;
    }
    return fail(d, d->p >= d->end ? "unexpected end" : "expected ',' or '}'");
  }
  if (key < SIZE_SLOTS) {
    d->mem->before[key] = (unsigned char)last;
    d->mem->last[key] = (unsigned char)(n < GUESS_MOST ? n : GUESS_MOST);
  }
  return 1;
}

/* The elements of an array (d->p past its opening bracket, at an element
 * or the closing bracket), gathered on the stack and moved into the table
 * at its end, or sooner when the stack runs short. */
static int array(decoder *d) {
  lua_State *L = d->L;
  unsigned place = d->place; /* each element is under the array's member name */
  lua_pushnil(L); /* the table's place, filled by collect */
  int t = lua_gettop(L), n = 0, room = 0; /* room: elements that fit before the next check */
  if (*d->p == ']') {
    d->p++;
  } else {
    for (;;) {
      if (room == 0) { /* the stack is checked for CHECK_EVERY elements at once */
        if (lua_checkstack(L, RESERVE(d->depth) + CHECK_EVERY)) {
          room = CHECK_EVERY;
        } else { /* short of stack: move what is gathered into the table */
          collect(d, t, n);
          n = 0;
          if (lua_checkstack(L, RESERVE(d->depth) + CHECK_EVERY)) room = CHECK_EVERY;
          else if (lua_checkstack(L, RESERVE(d->depth))) room = 1;
          else return fail(d, "out of stack");
        }
      }
      room--;
      d->place = place;
      if (!value(d)) return 0;
      n++;
      skip_ws(d);
      if (*d->p == ',') {
        d->p++;
        continue;
      }
      if (*d->p == ']') {
        d->p++;
        break;
      }
      return fail(d, d->p >= d->end ? "unexpected end" : "expected ',' or ']'");
    }
  }
  collect(d, t, n);
  lua_pushvalue(L, d->array_mt);
  lua_setmetatable(L, t);
  return 1;
}

/* An object or array (d->p at its opening bracket). */
static int container(decoder *d, int is_object) {
  if (++d->depth > MAX_DEPTH) return fail(d, "nested too deeply");
  d->p++;
  skip_ws(d);
  if (!(is_object ? object(d) : array(d))) return 0;
  d->depth--;
  return 1;
}

static int value(decoder *d) {
  skip_ws(d);
  if (d->p >= d->end) return fail(d, "unexpected end");
  if (++d->values > d->max_values && d->max_values) return fail(d, FLY_JSON_TOO_MANY);
  switch (*d->p) {
  case '{': return container(d, 1);
  case '[': return container(d, 0);
  case '"': return string(d, NULL);
  case 't': return literal(d, "true", 4) && (lua_pushboolean(d->L, 1), 1);
  case 'f': return literal(d, "false", 5) && (lua_pushboolean(d->L, 0), 1);
  case 'n': return literal(d, "null", 4) && (lua_pushlightuserdata(d->L, NULL), 1);
  default: return number(d);
  }
}

int fly_json_decode_max(lua_State *L, const char *s, size_t len, int array_mt, size_t max_values) {
  int top = lua_gettop(L);
  array_mt = fly_absindex(L, array_mt);
  /* room for members ahead: one per 4 bytes of text, so that sizes taken from other bodies'
     objects keep what a body takes in proportion to its length (a member takes 4 bytes at
     least: `"":0,`, of which the name's quotes are read before its table is made) */
  decoder d = {L,    s,      s, s + len, NULL, top + 1,    top + 2, {0}, NAME_SLOTS,
               NULL, 0, array_mt, 0,       max_values, len / 4};
  /* push_memory takes up to 5 slots; the decoding, RESERVE(0) + 2 above its table */
  int ok = lua_checkstack(L, RESERVE(0) + 5) && (d.mem = push_memory(L)) && value(&d);
  if (d.mem) memcpy(d.mem->wanted, d.asked, sizeof d.asked);
  if (ok) {
    skip_ws(&d);
    if (d.p == d.end) {
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
      return 1;
    }
    d.err = "trailing characters";
  }
  lua_settop(L, top);
  lua_pushnil(L);
  if (d.err == FLY_JSON_TOO_MANY) lua_pushfstring(L, "%s (more than %d)", d.err, (int)(max_values > INT32_MAX ? INT32_MAX : max_values));
  else lua_pushfstring(L, "%s at byte %d", d.err ? d.err : "out of stack", (int)(d.p - d.start) + 1);
  return 2;
}

int fly_json_decode(lua_State *L, const char *s, size_t len, int array_mt) {
  return fly_json_decode_max(L, s, len, array_mt, 0);
}
