/* Shims so the core also builds against Lua 5.1 and LuaJIT. Everything here
 * carries the project's own prefix: LuaJIT already declares several 5.2
 * functions, so defining them under their lua_ names would clash. */
#ifndef FLY_COMPAT_H
#define FLY_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM >= 502
#define fly_setfuncs luaL_setfuncs
#define fly_rawlen lua_rawlen
#define fly_setmetatable luaL_setmetatable
#else
static void fly_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
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
static void fly_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}
#endif

#if LUA_VERSION_NUM >= 504
#define fly_newuserdata(L, size) lua_newuserdatauv((L), (size), 0)
#else
#define fly_newuserdata(L, size) lua_newuserdata((L), (size))
#endif

#endif
