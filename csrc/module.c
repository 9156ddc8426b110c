/* fly.core: the C core of the Fly Machines client. luaopen_fly_core only
 * registers; each step of a call lives in its own file:
 *
 *   build.c     operation + params -> method, URL, headers, body, safety
 *   ratelimit.c admit: the process-wide token buckets -> "ready at"
 *   curl.c      the libcurl transport and the loop the Lua layer drives
 *   classify.c  status + headers (or a transport failure) -> done | retry at
 *   request.c   fly.Request: lifetime, reading results, the seam for other
 *               transports (_build, _wire, _complete, _failed)
 *   client.c    fly.Client: core.new, headers, close
 *   ops.c       the operation table (operations.c, generated) as seen by Lua
 *   json.c      the response decoder
 *
 * Loading the module again in the same state (busted does) is harmless:
 * classes are made once per state and found the next time. */
#include <lauxlib.h>
#include <lua.h>

#include "client.h"
#include "compat.h"
#include "curl.h"
#include "ops.h"
#include "ratelimit.h"
#include "request.h"

static int l_now(lua_State *L) {
  lua_pushnumber(L, fly_now());
  return 1;
}

static int l_bucket_count(lua_State *L) {
  fly_rate_sweep(fly_now());
  lua_pushinteger(L, (lua_Integer)fly_rate_bucket_count());
  return 1;
}

/* Creates a class metatable once per state; loading the module again finds
 * it and leaves it, and whatever the Lua layer added, as it is. The method
 * table stays reachable as the metatable's `methods` field. */
static void new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                      lua_CFunction close, lua_CFunction tostring) {
  if (!luaL_newmetatable(L, name)) return;
  lua_newtable(L);
  fly_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "methods");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc), lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, close), lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, tostring), lua_setfield(L, -2, "__tostring");
  lua_pushstring(L, name), lua_setfield(L, -2, "__name");
  lua_pushliteral(L, "fly: metatable is protected"), lua_setfield(L, -2, "__metatable");
}

int luaopen_fly_core(lua_State *L) {
  fly_curl_global_init();
  lua_newtable(L);
  new_class(L, CLIENT_MT, fly_client_methods, fly_l_client_gc, fly_l_client_gc, fly_l_client_tostring);
  lua_getfield(L, -1, "methods");
  lua_setfield(L, -3, "Client"); /* the method table, for the Lua layer to extend */
  lua_setfield(L, -2, "client_mt");
  new_class(L, REQUEST_MT, fly_request_methods, fly_l_request_gc, fly_l_request_close, fly_l_request_tostring);
  lua_setfield(L, -2, "request_mt");
  luaL_newmetatable(L, ARRAY_MT); /* the mark of a JSON array; the same table on every load */
  lua_setfield(L, -2, "array_mt");
  static const luaL_Reg fns[] = {{"new", fly_l_new},           {"operations", fly_l_operations},
                                 {"now", l_now},               {"decode", fly_l_decode},
                                 {"bucket_count", l_bucket_count}, {NULL, NULL}};
  fly_setfuncs(L, fns, 0);
  lua_pushstring(L, fly_curl_version()), lua_setfield(L, -2, "curl_version");
  return 1;
}
