/* trace: events of a call, queued in C for the Lua layer's hook. See trace.h. */
#include "trace.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "classify.h"
#include "client.h"
#include "request.h"
#include "util.h"

enum { TRACE_OPEN = 1, TRACE_ENDED = 2 };

static const char *const KINDS[] = {"wait", "start", "finish", "retry", "giveup", "limiter"};

fly_trace *fly_trace_new(int bodies) {
  fly_trace *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->refs = 1;
  t->bodies = bodies;
  return t;
}

static void event_free(fly_event *e) {
  free(e->path), e->path = NULL;
  free(e->body), e->body = NULL;
  free(e->message), e->message = NULL;
  fly_strlist_free(&e->headers);
}

void fly_trace_release(fly_trace *t) {
  if (!t || --t->refs > 0) return;
  for (size_t i = 0; i < t->n; i++) event_free(&t->ev[(t->head + i) % t->cap]);
  free(t->ev);
  free(t);
}

/* A new zeroed event of `kind` at the tail of the queue; NULL when the queue
 * is full (the event is counted as dropped) or out of memory. */
static fly_event *push_to(fly_trace *t, int kind, double now) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 16;
    fly_event *ev = cap <= FLY_TRACE_MAX ? malloc(cap * sizeof *ev) : NULL;
    if (!ev) {
      t->dropped++;
      return NULL;
    }
    for (size_t i = 0; i < t->n; i++) ev[i] = t->ev[(t->head + i) % t->cap];
    free(t->ev);
    t->ev = ev, t->cap = cap, t->head = 0;
  }
  fly_event *e = &t->ev[(t->head + t->n) % t->cap];
  memset(e, 0, sizeof *e);
  t->n++;
  e->kind = kind;
  e->time = now;
  return e;
}

/* A new event of `r` at the tail of its queue, zeroed but for what every
 * event of a call carries; NULL as push_to. */
static fly_event *push(fly_request *r, int kind, double now) {
  fly_event *e = push_to(r->trace, kind, now);
  if (!e) return NULL;
  e->call = r->call;
  e->operation = r->op->id;
  e->method = r->op->method;
  e->path = r->wire.path ? dupn(r->wire.path, strlen(r->wire.path)) : NULL; /* NULL on OOM: left out */
  e->attempt = r->retry.attempts + 1;
  e->seconds = -1;
  e->wait = r->trace_wait;
  return e;
}

int fly_trace_limiter(fly_trace *t, const char *message, int available, double now) {
  fly_event *e = push_to(t, FLY_EV_LIMITER, now);
  if (!e) return 0;
  e->message = dupn(message, strlen(message)); /* NULL on OOM: left out */
  e->available = available;
  return 1;
}

void fly_trace_admit(fly_request *r, fly_trace *t, double now) {
  t->refs++;
  r->trace = t;
  r->call = ++t->calls;
  if (r->ready_at > now) fly_trace_wait(r, r->ready_at - now, now);
}

void fly_trace_wait(fly_request *r, double wait, double now) {
  r->trace_wait = wait;
  push(r, FLY_EV_WAIT, now);
}

void fly_trace_start(fly_request *r, const fly_strlist *headers, double now) {
  if (r->trace_flags & (TRACE_OPEN | TRACE_ENDED)) return;
  r->trace_flags |= TRACE_OPEN;
  r->attempt_start = now;
  fly_event *e = push(r, FLY_EV_START, now);
  if (!e || !r->trace->bodies) return;
  /* copies, masked: the caller may send the token itself (tokens:authenticate, a header of
     its own), which the event must not show */
  if (r->wire.body) {
    e->body = dupn(r->wire.body, r->wire.body_len);
    if (e->body) e->body_len = r->wire.body_len;
    if (e->body && r->auth) fly_scrub(e->body, e->body_len, r->auth);
  }
  for (size_t i = 0; headers && i < headers->n; i++) {
    const char *h = headers->v[i];
    if (strncasecmp(h, "Authorization:", 14) == 0) continue; /* the token, never */
    const char *colon = strchr(h, ':'), *v = colon ? colon + 1 : NULL;
    while (v && (*v == ' ' || *v == '\t')) v++;
    if (v && !*v) continue; /* "Name:" tells libcurl not to send one: nothing sent */
    if (!fly_strlist_add(&e->headers, h, strlen(h))) break;
    char *copy = e->headers.v[e->headers.n - 1];
    if (r->auth) fly_scrub(copy, strlen(copy), r->auth);
  }
}

/* The attempt's end, from the request's last reply. */
static void finish_event(fly_request *r, double now, int attempt) {
  fly_event *e = push(r, FLY_EV_FINISH, now);
  r->trace_flags &= ~TRACE_OPEN;
  if (!e) return;
  const fly_reply *a = &r->reply;
  e->attempt = attempt;
  e->status = a->status;
  e->code = a->code;
  e->retryable = a->retryable;
  e->seconds = now - r->attempt_start;
  e->resends = a->resends;
  memcpy(e->request_id, a->request_id, sizeof e->request_id);
  if (r->trace->bodies && r->resp && r->resp_len) {
    e->body = dupn(r->resp, r->resp_len);
    if (e->body) e->body_len = r->resp_len;
    if (e->body && r->auth) { /* a success's too: a copy */
      if (fly_request_body_cut(r)) fly_scrub_head(e->body, e->body_len, r->auth);
      else fly_scrub(e->body, e->body_len, r->auth);
    }
  }
}

/* The call ends without another attempt: its failure was retryable but no
 * attempt or time is left, or it ended while it waited (cancelled). */
static void giveup_event(fly_request *r, double now) {
  fly_event *e = push(r, FLY_EV_GIVEUP, now);
  if (!e) return;
  const fly_reply *a = &r->reply;
  e->attempt = r->retry.attempts;
  e->status = a->status;
  e->code = a->code;
  e->retryable = a->retryable;
  e->wait = 0;
  memcpy(e->request_id, a->request_id, sizeof e->request_id);
}

void fly_trace_attempt(fly_request *r, int verdict, double now, double retry_at) {
  if (r->trace_flags & TRACE_ENDED) return;
  if (r->trace_flags & TRACE_OPEN) finish_event(r, now, r->retry.attempts);
  if (verdict == FLY_RETRY) {
    r->trace_wait = retry_at > now ? retry_at - now : 0;
    fly_event *e = push(r, FLY_EV_RETRY, now);
    if (e) {
      e->attempt = r->retry.attempts;
      e->status = r->reply.status;
      e->code = r->reply.code;
      e->retryable = 1;
      memcpy(e->request_id, r->reply.request_id, sizeof e->request_id);
    }
    return;
  }
  r->trace_flags |= TRACE_ENDED;
  if (verdict == FLY_FAILURE && r->reply.retryable) giveup_event(r, now);
}

void fly_trace_end(fly_request *r) {
  if (r->trace_flags & TRACE_ENDED) return;
  double now = fly_now();
  if (r->trace_flags & TRACE_OPEN) {
    finish_event(r, now, r->retry.attempts + 1); /* cut short: cancelled, or the client closed */
  } else if (r->reply.code || r->reply.status) {
    giveup_event(r, now); /* it ended while it waited: no time left, cancelled, the client closed */
  }
  r->trace_flags |= TRACE_ENDED;
}

/* ------------------------------------------------------------- to Lua */

static void set_string(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static void set_number(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static void set_integer(lua_State *L, const char *k, long long v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* Pushes the event as a table. */
static void push_event(lua_State *L, const fly_event *e) {
  lua_createtable(L, 0, 12);
  set_string(L, "kind", KINDS[e->kind]);
  if (e->kind == FLY_EV_LIMITER) { /* of no call */
    set_number(L, "time", e->time);
    if (e->message) set_string(L, "message", e->message);
    lua_pushboolean(L, e->available);
    lua_setfield(L, -2, "available");
    return;
  }
  set_string(L, "operation", e->operation);
  set_string(L, "method", e->method);
  if (e->path) set_string(L, "path", e->path);
  set_integer(L, "call", e->call);
  set_integer(L, "attempt", e->attempt);
  set_number(L, "time", e->time);
  if (e->status) set_integer(L, "status", e->status);
  if (e->code) set_string(L, "code", e->code);
  if (e->kind == FLY_EV_FINISH || e->kind == FLY_EV_RETRY || e->kind == FLY_EV_GIVEUP) {
    lua_pushboolean(L, e->retryable);
    lua_setfield(L, -2, "retryable");
  }
  if (e->request_id[0]) set_string(L, "request_id", e->request_id);
  if (e->seconds >= 0) set_number(L, "seconds", e->seconds);
  if (e->resends) set_integer(L, "resends", e->resends);
  set_number(L, "wait", e->wait);
  if (e->body) {
    lua_pushlstring(L, e->body, e->body_len);
    lua_setfield(L, -2, "body");
  }
  if (e->headers.n) {
    lua_createtable(L, (int)e->headers.n, 0);
    for (size_t i = 0; i < e->headers.n; i++) {
      lua_pushstring(L, e->headers.v[i]);
      lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "headers");
  }
}

/* client:_trace() -> { event, … } or nothing. The events leave the queue
 * one by one as they are pushed, so a raised "out of memory" loses none
 * of those still queued. A count of dropped events comes last, as
 * { kind = "dropped", count = n }. */
int fly_l_trace(lua_State *L) {
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  fly_trace *t = c->trace;
  if (!t || (t->n == 0 && t->dropped == 0)) return 0;
  lua_createtable(L, (int)t->n + (t->dropped ? 1 : 0), 0);
  int i = 0;
  while (t->n) {
    fly_event *e = &t->ev[t->head];
    push_event(L, e);
    lua_rawseti(L, -2, ++i);
    event_free(e);
    t->head = (t->head + 1) % t->cap;
    t->n--;
  }
  if (t->dropped) {
    lua_createtable(L, 0, 2);
    set_string(L, "kind", "dropped");
    set_integer(L, "count", (long long)t->dropped);
    lua_rawseti(L, -2, ++i);
    t->dropped = 0;
  }
  return 1;
}
