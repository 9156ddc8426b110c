/* Shims so the core also builds against Lua 5.1 and LuaJIT. Everything here
 * carries the project's own prefix: LuaJIT already declares several 5.2
 * functions, so defining them under their lua_ names would clash. */
#ifndef FLY_COMPAT_H
#define FLY_COMPAT_H

#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>

#if LUA_VERSION_NUM >= 502
#define fly_setfuncs luaL_setfuncs
#define fly_rawlen lua_rawlen
#define fly_setmetatable luaL_setmetatable
#define fly_absindex lua_absindex
#else
static inline void fly_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#define fly_rawlen lua_objlen
static inline void fly_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}
#define fly_absindex(L, i) ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)
#endif

#if LUA_VERSION_NUM >= 503
#define fly_stringtonumber lua_stringtonumber
#else
/* Pushes the number in s and returns nonzero, or pushes nothing and returns 0. */
static inline size_t fly_stringtonumber(lua_State *L, const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end != '\0') return 0;
  lua_pushnumber(L, (lua_Number)v);
  return (size_t)(end - s) + 1;
}
#endif

#if LUA_VERSION_NUM >= 504
#define fly_newuserdata(L, size) lua_newuserdatauv((L), (size), 0)
#define fly_newuserdata_uv(L, size) lua_newuserdatauv((L), (size), 1)
#define fly_getuservalue(L, idx) ((void)lua_getiuservalue((L), (idx), 1))
#define fly_setuservalue(L, idx) ((void)lua_setiuservalue((L), (idx), 1))
#elif LUA_VERSION_NUM >= 502
#define fly_newuserdata(L, size) lua_newuserdata((L), (size))
#define fly_newuserdata_uv(L, size) lua_newuserdata((L), (size))
#define fly_getuservalue(L, idx) ((void)lua_getuservalue((L), (idx)))
#define fly_setuservalue(L, idx) lua_setuservalue((L), (idx))
#else
/* Lua 5.1 and LuaJIT: a userdata's environment table holds its one value */
#define fly_newuserdata(L, size) lua_newuserdata((L), (size))
#define fly_newuserdata_uv(L, size) lua_newuserdata((L), (size))
#define fly_getuservalue(L, idx) lua_getfenv((L), (idx))
#define fly_setuservalue(L, idx) ((void)lua_setfenv((L), (idx)))
#endif

#endif
