/* build: operation + parameters -> what goes on the wire.
 *
 * The method, the URL (base, path with each segment percent-encoded, query),
 * the header lines, the body, and whether the request is safe to repeat
 * after an ambiguous failure (the operation's safety class, and the lease
 * nonce for the classes that depend on it). No libcurl types: headers are
 * the project's own list of "Name: value" strings, which a transport turns
 * into whatever it sends. A request without header parameters keeps an
 * empty list and uses its client's shared list (built once per client). */
#ifndef FLY_BUILD_H
#define FLY_BUILD_H

#include <lua.h>
#include <stddef.h>

#include "operations.h"
#include "util.h"

/* A list of NUL-terminated strings; the list owns them. */
typedef struct fly_strlist {
  char **v;
  size_t n, cap;
} fly_strlist;

/* Appends a copy of s; 0 on out of memory (the list is unchanged). */
int fly_strlist_add(fly_strlist *l, const char *s, size_t n);
void fly_strlist_free(fly_strlist *l);
/* The "Authorization: ..." line among l's, or NULL. */
const char *fly_strlist_auth(const fly_strlist *l);

/* What a request sends. Owned by the request that holds it. */
typedef struct fly_wire {
  sbuf url;                    /* base URL, path and query */
  size_t base_len;             /* url.p + base_len: path and query */
  char *path;                  /* the path alone (for results and messages) */
  char *body;                  /* NULL: no body */
  size_t body_len;
  fly_strlist headers;         /* empty: the client's shared list */
  int nonce;                   /* carries a lease nonce */
  int safe;                    /* may be repeated after an ambiguous failure */
} fly_wire;

/* The client's part of every request. */
typedef struct fly_build_base {
  const char *base_url;        /* without trailing slash */
  const fly_strlist *headers;      /* Authorization, User-Agent, Accept, extras */
  const fly_strlist *json_headers; /* the same plus Content-Type */
} fly_build_base;

/* Checks the parameter table at index `params` against `op` and fills `w`
 * (which must be zeroed and owned by a userdata on the stack, so a raised
 * error leaks nothing). Programmer errors are raised at call level `level`. */
void fly_build(lua_State *L, const fly_build_base *base, const fly_operation *op, int params, int level,
               fly_wire *w);

/* The string form of the parameter value at idx (replacing a number there by
 * its text), or a programmer error naming the parameter. Integers are written
 * exactly, floats in the shortest form that reads back identical. */
const char *fly_param_string(lua_State *L, int idx, const fly_operation *op, const char *name, size_t *len,
                             int level);

/* The header list a request sends: its own, or the client's shared one. */
const fly_strlist *fly_wire_headers(const fly_wire *w, const fly_build_base *base);

void fly_wire_free(fly_wire *w);

#endif
