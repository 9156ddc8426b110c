/* Decoding of JSON response bodies straight into Lua values (json.c). */
#ifndef FLY_JSON_H
#define FLY_JSON_H

#include <stddef.h>
#include "compat.h"

/* Decodes s[0..len) and pushes the value (returns 1), or pushes nil and a
 * message naming the byte where it went wrong (returns 2). Arrays get the
 * metatable at stack index `array_mt`; null is the light userdata NULL. */
int fly_json_decode(lua_State *L, const char *s, size_t len, int array_mt);

#endif
