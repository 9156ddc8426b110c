/* Small helpers shared by every file of the core: growable strings, copies,
 * programmer errors positioned at the caller, raw option reads and
 * percent-encoding. Nothing here knows about requests or transports. */
#ifndef FLY_UTIL_H
#define FLY_UTIL_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* These helpers are the core's own: hidden from the shared object's symbol
 * table, so they can never clash with a host's symbols of the same name. */
#pragma GCC visibility push(hidden)

/* A growable, NUL-terminated string. Its owner frees `p` (also when an error
 * is raised half-way, which is why owners are userdata with a __gc). */
typedef struct sbuf {
  char *p;
  size_t n, cap;
} sbuf;

/* Appends n bytes; raises "out of memory" on failure. */
void sbuf_add(lua_State *L, sbuf *b, const char *s, size_t n);

/* Appends s percent-encoded: runs of unreserved bytes are copied as they are
 * (dots too, unless all_dots), everything else becomes %XX. */
void sbuf_add_escaped(lua_State *L, sbuf *b, const char *s, size_t n, int all_dots);

/* A segment made only of dots ("." or "..") that path normalisation would
 * eat: its dots are escaped so it stays one literal segment. */
int only_dots(const char *s, size_t n);

/* A malloc'd NUL-terminated copy of n bytes (caller owns it), NULL on OOM. */
char *dupn(const char *s, size_t n);

/* FNV-1a over n bytes, continuing from h. */
uint64_t fnv64(uint64_t h, const char *s, size_t n);

/* What makes s unfit for a header line: "a line break" (CR or LF) or "a
 * NUL byte"; NULL when nothing does. */
const char *header_flaw(const char *s, size_t n);

/* Pushes t[k] read raw (no metamethods: no user code runs half-way through
 * a core function) and returns its type. */
int rawfield(lua_State *L, int t, const char *k);

/* t[k] as a number, dflt when nil; raises when it is something else (a
 * numeric string too), naming it "<owner>.<k>" (owner NULL: "option 'k'"). */
double opt_number_in(lua_State *L, int t, const char *owner, const char *k, double dflt);
double opt_number_field(lua_State *L, int t, const char *k, double dflt);

/* Raises a programmer error positioned at the given call level (1: the
 * function that called the C function), as `error(msg, level)` would. */
int raise_at(lua_State *L, int level, const char *fmt, ...);

/* Seconds to milliseconds for a transport; 0 (no limit) for values too large
 * to mean anything, so an infinite timeout never overflows. */
long seconds_to_ms(double s);

#pragma GCC visibility pop

#endif
