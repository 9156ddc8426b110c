/* libFuzzer target: the JSON decoder (csrc/json.c) on arbitrary bytes.
 *
 * Each input is decoded twice, as the core decodes a response body: from a
 * copy followed by a NUL byte (the decoder relies on it), into one Lua
 * state kept for the whole run. Once with no bound, once with a small bound
 * on the number of values (the first byte picks it). Besides what the
 * sanitizers catch, it checks the decoder's contract: one value on success,
 * nil and a message naming a byte inside the text (or the bound) on
 * failure, the stack otherwise untouched, and the same outcome for the
 * same text whatever the bound when the bound is not reached. A text that
 * decodes to a lone number must read as Lua itself reads it (same value,
 * same subtype): integers to 64 bits, correctly rounded floats. Before the
 * first decode, the tables the last input's decode asked for are made
 * ahead (fly_json_prefill), as a call's wait makes them, so that objects
 * and arrays also take tables from the pool; every table of a result is
 * then in it once, and every array holds exactly its elements (its length
 * is what `next` counts, with nothing after the last), room to spare or
 * not. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static lua_State *L; /* the harness's one state, made on the first input */

static void check(int ok, const char *what, const uint8_t *data, size_t size) {
  if (ok) return;
  fprintf(stderr, "json_fuzz: %s (input of %zu bytes)\n", what, size);
  (void)data;
  abort();
}

/* Walks the value at the top of the stack: each table is met once (`seen`,
 * a table at stack index seen_idx, holds those met), and each table with
 * the array mark (stack index 1) has a length equal to its count of
 * members, and nothing at length + 1. */
static void walk(int seen_idx, const uint8_t *data, size_t size) {
  if (!lua_istable(L, -1)) return;
  check(lua_checkstack(L, 4), "no stack to walk the result", data, size);
  lua_pushvalue(L, -1);
  lua_rawget(L, seen_idx);
  check(lua_isnil(L, -1), "a table is in the result twice", data, size);
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  lua_pushboolean(L, 1);
  lua_rawset(L, seen_idx);
  int array = 0;
  if (lua_getmetatable(L, -1)) {
    array = lua_rawequal(L, -1, 1);
    lua_pop(L, 1);
  }
  lua_Integer count = 0;
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    count++;
    walk(seen_idx, data, size);
    lua_pop(L, 1);
  }
  if (array) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
    check(len == count, "an array's length is not its count of elements", data, size);
    lua_rawgeti(L, -1, len + 1);
    check(lua_isnil(L, -1), "an array holds something after its last element", data, size);
    lua_pop(L, 1);
  }
}

/* Decodes; returns 1 (a value) or 2 (nil, message), leaving the stack as it found it. */
static int decode(const char *text, size_t size, size_t max_values, const uint8_t *data) {
  int top = lua_gettop(L);
  int n = fly_json_decode_max(L, text, size, 1, max_values);
  check(n == 1 || n == 2, "returned neither 1 nor 2", data, size);
  check(lua_gettop(L) == top + n, "pushed a different number of values than it returned", data, size);
  if (n == 2) {
    check(lua_isnil(L, -2) && lua_type(L, -1) == LUA_TSTRING, "failure is not nil, message", data, size);
    const char *msg = lua_tostring(L, -1);
    const char *at = strstr(msg, " at byte ");
    if (strncmp(msg, FLY_JSON_TOO_MANY, strlen(FLY_JSON_TOO_MANY)) == 0) {
      check(max_values > 0, "stopped by a bound it was not given", data, size);
    } else {
      check(at != NULL, "message names no byte", data, size);
      long byte = strtol(at + 9, NULL, 10);
      check(byte >= 1 && (size_t)byte <= size + 1, "message names a byte outside the text", data, size);
    }
  } else if (lua_type(L, -1) == LUA_TNUMBER) {
    check(lua_stringtonumber(L, text) != 0, "a number Lua does not read as one", data, size);
    check(lua_rawequal(L, -1, -2), "a number read differently from Lua", data, size);
    check(lua_isinteger(L, -1) == lua_isinteger(L, -2), "a number of another subtype than Lua's", data, size);
  } else if (lua_istable(L, -1)) {
    if (lua_getmetatable(L, -1)) {
      check(lua_rawequal(L, -1, 1), "a table carries a metatable other than the array mark", data, size);
      lua_pop(L, 1);
    }
    lua_newtable(L); /* the tables met */
    lua_insert(L, -2);
    walk(lua_gettop(L) - 1, data, size);
  }
  lua_settop(L, top);
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) {
    L = luaL_newstate();
    if (!L) abort();
    lua_newtable(L); /* index 1: the array metatable */
  }
  char *text = malloc(size + 1); /* freed below */
  if (!text) return 0;
  if (size) memcpy(text, data, size);
  text[size] = '\0';
  int top = lua_gettop(L);
  fly_json_prefill(L);
  check(lua_gettop(L) == top, "making tables ahead changed the stack", data, size);
  int whole = decode(text, size, 0, data);
  size_t bound = size ? 1 + data[0] % 32 : 1;
  int bounded = decode(text, size, bound, data);
  if (bounded == 1) check(whole == 1, "decodes under a bound but not without one", data, size);
  free(text);
  static unsigned runs;
  if (++runs % 1024 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
