/* Whether a text is one JSON value, checked without building anything (no
 * Lua, no allocation): classify.c asks it of a 2xx body that must be JSON,
 * so that one that does not parse is a failure of the attempt (retried when
 * the call is safe to repeat) rather than of the decoding after the call.
 *
 * It accepts exactly what the decoder (json.c) decodes: RFC 8259's grammar,
 * escapes checked (\u surrogates in pairs), bytes above 0x7F taken as they
 * are, at most FLY_JSON_MAX_DEPTH nested containers, whitespace around. */
#ifndef FLY_JSONVALID_H
#define FLY_JSONVALID_H

#include <stddef.h>

#define FLY_JSON_MAX_DEPTH 512

/* 1 when s[0..n) is one JSON value (with whitespace around), else 0. */
int fly_json_valid(const char *s, size_t n);

#endif
