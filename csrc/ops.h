/* The operation table seen from the rest of the core: lookup, published
 * rate limits per class, and core.operations() for the Lua layer. The table
 * itself is data, generated into operations.c. */
#ifndef FLY_OPS_H
#define FLY_OPS_H

#include <lua.h>

#include "operations.h"
#include "ratelimit.h"

/* The published limit of an operation's rate class. */
fly_limit fly_operation_default_limit(const fly_operation *op);

/* Whether some operation counts against the rate-limit action `name`. */
int fly_operation_known_action(const char *name);

/* core.operations() -> array of operation descriptions (a copy of the table) */
int fly_l_operations(lua_State *L);

#endif
