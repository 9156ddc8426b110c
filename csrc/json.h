/* Decoding of JSON response bodies straight into Lua values (json.c). */
#ifndef FLY_JSON_H
#define FLY_JSON_H

#include <stddef.h>
#include "compat.h"

/* Decodes s[0..len) and pushes the value (returns 1), or pushes nil and a
 * message naming the byte where it went wrong (returns 2). Arrays get the
 * metatable at stack index `array_mt`; null is the light userdata NULL. */
int fly_json_decode(lua_State *L, const char *s, size_t len, int array_mt);

/* The message of a decode stopped by `max_values` (compared by address). */
extern const char FLY_JSON_TOO_MANY[];

/* fly_json_decode, stopped with nil and a message starting with
 * FLY_JSON_TOO_MANY once the text holds more than `max_values` values
 * (strings, numbers, literals, objects and arrays; 0: no bound). A bound
 * on values is a bound on the memory a body can take once decoded: an
 * empty object costs about 60 bytes of Lua memory for its 3 bytes of text. */
int fly_json_decode_max(lua_State *L, const char *s, size_t len, int array_mt, size_t max_values);

/* Makes, for the next decode, the empty tables the last one asked for (as
 * many of each size as it took, within a bound): for a moment when the
 * program waits anyway. May run the collector, and so finalizers. */
void fly_json_prefill(lua_State *L);

#endif
