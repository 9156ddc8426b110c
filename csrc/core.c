/* fly.core: the C core of the Fly Machines client.
 *
 * A Client owns one libcurl multi handle. Every API call becomes a Request,
 * a userdata that owns everything the transfer needs (URL, body, headers,
 * response buffer). A Request is queued with a "ready at" time (rate limit,
 * retry backoff), started on the multi handle when that time comes, and
 * classified when libcurl is done with it: success, retry later, or final.
 *
 * Nothing here sleeps on its own and no Lua code runs inside a libcurl
 * callback: callbacks only copy bytes into C buffers. The Lua layer drives the
 * loop through client:_step(max_wait), which starts what is ready, lets
 * libcurl work, and waits on the sockets and the nearest deadline.
 *
 * Ownership: a Client owns its multi handle, its pool of easy handles and its
 * strings; a Request owns its strings and buffers and borrows an easy handle
 * from its client's pool while a transfer runs. While a Request is queued or
 * running it is pinned in the registry so the collector cannot free memory
 * that libcurl still uses; closing the client cancels and unpins them all. */
#define _POSIX_C_SOURCE 200809L
#include <curl/curl.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/select.h>

#include "compat.h"
#include "json.h"
#include "operations.h"
#include "ratelimit.h"

#define CLIENT_MT "fly.Client"
#define REQUEST_MT "fly.Request"
#define ARRAY_MT "fly.array"
#define POOL_MAX 32
#define OVERRIDES_MAX 32

typedef struct fly_client fly_client;
typedef struct fly_request fly_request;

/* An easy handle and the error buffer libcurl writes into, kept together in
 * the client's pool (so a request does not carry 256 bytes for a message it
 * rarely gets). */
typedef struct fly_easy {
  CURL *curl;
  char errbuf[CURL_ERROR_SIZE];
} fly_easy;

/* A growable string owned by a Request (freed by its __gc even when an error
 * is raised half-way). */
typedef struct {
  char *p;
  size_t n, cap;
} sbuf;


enum { KIND_HTTP, KIND_TIMER };
enum { REQ_NEW, REQ_QUEUED, REQ_ACTIVE, REQ_DONE };

struct fly_request {
  fly_client *client;          /* set while queued or active */
  fly_request *prev, *next;    /* the client's list of live requests */
  const fly_operation *op;     /* NULL for timers */
  int kind, state, ref;        /* ref: registry pin while live */
  fly_easy *easy;              /* borrowed from the pool while active */
  sbuf url;                    /* owned: base URL, path and query */
  char *path, *body;           /* owned */
  size_t body_len;
  struct curl_slist *headers;  /* owned; NULL: the client's shared list */
  char *rate_key;              /* owned; NULL when not rate limited */
  fly_limit limit;
  int nonce;                   /* carries a lease nonce: safe to retry */
  double ready_at, deadline;   /* monotonic seconds; deadline 0: none */
  long timeout_ms;
  int attempts, max_attempts;
  /* the last attempt */
  long status;
  int sent;                    /* the request left this machine */
  const char *code;            /* transport or local failure code, or NULL */
  int retryable;
  char *message;               /* owned: what went wrong, or NULL */
  char *resp;                  /* owned response body, NUL-terminated */
  size_t resp_len, resp_cap;
  char request_id[64], content_type[64];
  double retry_after;          /* seconds; < 0 when absent */
};

typedef struct {
  char action[64];
  fly_limit limit;
} fly_override;

struct fly_client {
  CURLM *multi;
  int closed;
  char *base_url;              /* owned, without trailing slash */
  char identity[17];           /* hash of base URL and token: the bucket owner */
  struct curl_slist *headers;  /* owned: Authorization, User-Agent, Accept, extras */
  struct curl_slist *json_headers; /* owned: the same plus Content-Type */
  char *ca_file;               /* owned or NULL */
  int insecure;
  long timeout_ms, connect_timeout_ms;
  int rate_limit;
  double rate_scale;
  double rate_margin;          /* added to every rate wait: absorbs latency jitter */
  fly_override overrides[OVERRIDES_MAX];
  int noverrides;
  int max_attempts;
  double retry_base, retry_cap;
  uint64_t rng;
  fly_request *live;           /* queued and active requests */
  fly_easy *pool[POOL_MAX];
  int npool;
};

/* ------------------------------------------------------------------ utils */

static char *dupn(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

static uint64_t fnv64(uint64_t h, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static double rng_unit(fly_client *c) { /* xorshift64*, in [0, 1) */
  c->rng ^= c->rng >> 12;
  c->rng ^= c->rng << 25;
  c->rng ^= c->rng >> 27;
  return (double)((c->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static int has_crlf(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 1;
  return 0;
}

static fly_client *check_client(lua_State *L, int idx) {
  fly_client *c = luaL_checkudata(L, idx, CLIENT_MT);
  if (c->closed) luaL_error(L, "fly: client is closed");
  return c;
}

static fly_request *check_request(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, REQUEST_MT);
}

/* Pushes t[k] without metamethods: user tables are read raw, so no user
 * code can run half-way through a core function. */
static int rawfield(lua_State *L, int t, const char *k) {
  lua_pushstring(L, k);
  lua_rawget(L, t < 0 ? t - 1 : t);
  return lua_type(L, -1);
}

static double opt_number_field(lua_State *L, int t, const char *k, double dflt) {
  double v = dflt;
  rawfield(L, t, k);
  if (!lua_isnil(L, -1)) {
    if (!lua_isnumber(L, -1)) luaL_error(L, "fly: option '%s' must be a number", k);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* Raises a programmer error positioned at the given call level (1: the
 * function that called the C function), as `error(msg, level)` would. */
static int raise_at(lua_State *L, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  luaL_where(L, level);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

/* Seconds to milliseconds for libcurl; 0 (no limit) for values too large
 * to mean anything, so an infinite timeout never overflows. */
static long seconds_to_ms(double s) {
  if (!(s > 0)) return 1;
  if (s > 1e8) return 0;
  return (long)ceil(s * 1000);
}

/* ------------------------------------------------------------- operations */

static int cmp_op(const void *key, const void *elem) {
  return strcmp(key, ((const fly_operation *)elem)->id);
}

const fly_operation *fly_operation_find(const char *id) {
  return bsearch(id, fly_operations, fly_operation_count, sizeof fly_operations[0], cmp_op);
}

static const char *const RATE_CLASS_NAMES[] = {"default", "get_machine", "app_delete"};
static const fly_limit RATE_DEFAULTS[] = {{1.0, 3.0}, {5.0, 10.0}, {100.0 / 60.0, 100.0}};
static const char *const PARAM_IN_NAMES[] = {"path", "query", "query_map", "header"};

/* core.operations() -> array of operation descriptions (a copy of the table) */
static int l_operations(lua_State *L) {
  lua_createtable(L, (int)fly_operation_count, 0);
  for (size_t i = 0; i < fly_operation_count; i++) {
    const fly_operation *op = &fly_operations[i];
    lua_createtable(L, 0, 12);
    lua_pushstring(L, op->id), lua_setfield(L, -2, "id");
    lua_pushstring(L, op->method), lua_setfield(L, -2, "method");
    lua_pushstring(L, op->path), lua_setfield(L, -2, "path");
    lua_pushstring(L, op->tag), lua_setfield(L, -2, "tag");
    lua_pushboolean(L, op->idempotent), lua_setfield(L, -2, "idempotent");
    lua_pushboolean(L, op->has_body), lua_setfield(L, -2, "has_body");
    lua_pushboolean(L, op->body_required), lua_setfield(L, -2, "body_required");
    lua_pushstring(L, op->action), lua_setfield(L, -2, "action");
    lua_pushstring(L, RATE_CLASS_NAMES[op->rate_class]), lua_setfield(L, -2, "rate_class");
    lua_pushnumber(L, RATE_DEFAULTS[op->rate_class].rate), lua_setfield(L, -2, "rate");
    lua_pushnumber(L, RATE_DEFAULTS[op->rate_class].burst), lua_setfield(L, -2, "burst");
    if (op->scope >= 0) lua_pushstring(L, op->params[op->scope].name), lua_setfield(L, -2, "scope");
    lua_createtable(L, op->nparams, 0);
    for (int j = 0; j < op->nparams; j++) {
      const fly_param *p = &op->params[j];
      lua_createtable(L, 0, 4);
      lua_pushstring(L, p->name), lua_setfield(L, -2, "name");
      lua_pushstring(L, p->wire), lua_setfield(L, -2, "wire");
      lua_pushstring(L, PARAM_IN_NAMES[p->in]), lua_setfield(L, -2, "in");
      lua_pushboolean(L, p->required), lua_setfield(L, -2, "required");
      lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, -2, "params");
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}

/* --------------------------------------------------------------- encoding */

static void sbuf_add(lua_State *L, sbuf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) luaL_error(L, "fly: out of memory");
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static int unreserved(unsigned char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
         ch == '_' || ch == '~' || ch == '.';
}

/* Appends s percent-encoded: runs of unreserved bytes are copied as they are
 * (dots too, unless all_dots), everything else becomes %XX. */
static void sbuf_add_escaped(lua_State *L, sbuf *b, const char *s, size_t n, int all_dots) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i = 0;
  while (i < n) {
    size_t run = i;
    while (run < n && unreserved((unsigned char)s[run]) && !(all_dots && s[run] == '.')) run++;
    if (run > i) sbuf_add(L, b, s + i, run - i);
    if (run == n) break;
    unsigned char ch = (unsigned char)s[run];
    char esc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
    sbuf_add(L, b, esc, 3);
    i = run + 1;
  }
}

/* A segment made only of dots would be read as "." or ".." by path
 * normalisation: escape its dots so it stays one literal segment. */
static int only_dots(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != '.') return 0;
  return 1;
}

/* The string form of a parameter value, or a raised error naming it. */
static const char *param_string(lua_State *L, int idx, const fly_operation *op, const char *name,
                                size_t *len, int level) {
  int t = lua_type(L, idx);
  if (t == LUA_TBOOLEAN) {
    const char *s = lua_toboolean(L, idx) ? "true" : "false";
    *len = strlen(s);
    return s;
  }
  if (t == LUA_TNUMBER) {
    lua_Number v = lua_tonumber(L, idx);
    char tmp[64];
    if (v == floor(v) && fabs(v) < 1e15)
      snprintf(tmp, sizeof tmp, "%.0f", (double)v);
    else
      snprintf(tmp, sizeof tmp, "%.17g", (double)v);
    lua_pushstring(L, tmp);
    lua_replace(L, idx);
    return lua_tolstring(L, idx, len);
  }
  if (t != LUA_TSTRING)
    raise_at(L, level, "fly: %s: parameter '%s' must be a string, number or boolean (got %s)", op->id, name,
               luaL_typename(L, idx));
  return lua_tolstring(L, idx, len);
}

static void add_query_pair(lua_State *L, sbuf *b, int *first, const char *k, size_t kn, const char *v,
                           size_t vn) {
  sbuf_add(L, b, *first ? "?" : "&", 1);
  *first = 0;
  sbuf_add_escaped(L, b, k, kn, 0);
  sbuf_add(L, b, "=", 1);
  sbuf_add_escaped(L, b, v, vn, 0);
}

/* -------------------------------------------------------------- requests */

static void request_unlink(fly_request *r) {
  fly_client *c = r->client;
  if (!c) return;
  if (r->prev) r->prev->next = r->next;
  else c->live = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
  r->client = NULL;
}

/* Easy handles are reused: the options that never change for a client are
 * set once, when a handle is made; start_transfer sets the rest. */
static void easy_free(fly_easy *e) {
  curl_easy_cleanup(e->curl);
  free(e);
}

static void pool_put(fly_client *c, fly_easy *e) {
  if (c->npool < POOL_MAX) c->pool[c->npool++] = e;
  else easy_free(e);
}

static size_t on_body(char *data, size_t size, size_t n, void *ud);
static size_t on_header(char *line, size_t size, size_t n, void *ud);

static fly_easy *pool_get(fly_client *c) {
  if (c->npool > 0) return c->pool[--c->npool];
  fly_easy *fe = malloc(sizeof *fe);
  if (!fe) return NULL;
  CURL *e = fe->curl = curl_easy_init();
  if (!e) return free(fe), NULL;
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, fe->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
  if (c->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, c->insecure ? 0L : 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, c->insecure ? 0L : 2L);
  return fe;
}

/* Stops the transfer if one runs and gives the easy handle back. */
static void request_stop_transfer(fly_request *r) {
  if (r->easy && r->client) {
    curl_multi_remove_handle(r->client->multi, r->easy->curl);
    pool_put(r->client, r->easy);
  } else if (r->easy) {
    easy_free(r->easy);
  }
  r->easy = NULL;
}

/* Ends a live request: detached from its client and unpinned. */
static void request_finish(lua_State *L, fly_request *r) {
  request_stop_transfer(r);
  request_unlink(r);
  r->state = REQ_DONE;
  if (r->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    r->ref = LUA_NOREF;
  }
}

static void set_message(fly_request *r, const char *msg) {
  free(r->message);
  r->message = msg ? dupn(msg, strlen(msg)) : NULL; /* NULL on out of memory: the code remains */
}

static void set_failure(fly_request *r, const char *code, const char *msg, int retryable) {
  r->code = code;
  r->retryable = retryable;
  set_message(r, msg);
}

static void request_fail(lua_State *L, fly_request *r, const char *code, const char *msg, int retryable) {
  set_failure(r, code, msg, retryable);
  request_finish(L, r);
}

static int request_gc(lua_State *L) {
  fly_request *r = check_request(L, 1);
  request_finish(L, r);
  free(r->url.p), r->url.p = NULL;
  free(r->path), r->path = NULL;
  free(r->body), r->body = NULL;
  free(r->rate_key), r->rate_key = NULL;
  free(r->resp), r->resp = NULL;
  free(r->message), r->message = NULL;
  if (r->headers) curl_slist_free_all(r->headers), r->headers = NULL;
  return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  fly_request *r = ud;
  size_t len = size * n;
  if (r->resp_len + len + 1 > r->resp_cap) {
    size_t cap = r->resp_cap ? r->resp_cap : 1024;
    while (cap < r->resp_len + len + 1) cap *= 2;
    char *p = realloc(r->resp, cap);
    if (!p) return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    r->resp = p;
    r->resp_cap = cap;
  }
  memcpy(r->resp + r->resp_len, data, len);
  r->resp_len += len;
  r->resp[r->resp_len] = '\0'; /* the JSON decoder may rely on it */
  return len;
}

static void copy_header_value(char *dst, size_t cap, const char *v, size_t n) {
  while (n > 0 && (*v == ' ' || *v == '\t')) v++, n--;
  while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ')) n--;
  if (n >= cap) n = cap - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static int header_is(const char *line, size_t n, const char *name) {
  size_t k = strlen(name);
  return n > k && line[k] == ':' && strncasecmp(line, name, k) == 0;
}

static size_t on_header(char *line, size_t size, size_t n, void *ud) {
  fly_request *r = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) { /* a new response starts */
    r->request_id[0] = r->content_type[0] = '\0';
    r->retry_after = -1;
    r->resp_len = 0;
    if (r->resp) r->resp[0] = '\0';
  } else if (header_is(line, len, "fly-request-id")) {
    copy_header_value(r->request_id, sizeof r->request_id, line + 15, len - 15);
  } else if (header_is(line, len, "content-type")) {
    copy_header_value(r->content_type, sizeof r->content_type, line + 13, len - 13);
  } else if (header_is(line, len, "retry-after")) {
    char tmp[32];
    copy_header_value(tmp, sizeof tmp, line + 12, len - 12);
    char *end;
    double v = strtod(tmp, &end);
    if (end != tmp && v >= 0 && v < 86400) r->retry_after = v;
  }
  return len;
}

static int start_transfer(fly_client *c, fly_request *r) {
  fly_easy *fe = pool_get(c);
  if (!fe) return 0;
  CURL *e = fe->curl;
  r->easy = fe;
  fe->errbuf[0] = '\0';
  r->status = 0;
  r->sent = 0;
  r->code = NULL;
  set_message(r, NULL);
  r->resp_len = 0;
  if (r->resp) r->resp[0] = '\0';
  r->request_id[0] = r->content_type[0] = '\0';
  r->retry_after = -1;
  curl_easy_setopt(e, CURLOPT_URL, r->url.p);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER,
                   r->headers ? r->headers : (r->body ? c->json_headers : c->headers));
  /* the method, stated in full each time since the handle is reused */
  const char *m = r->op->method;
  int get = strcmp(m, "GET") == 0, post = strcmp(m, "POST") == 0;
  if (get || (!r->body && strcmp(m, "DELETE") == 0)) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)r->body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body ? r->body : "");
  }
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, get || post ? NULL : m);
  /* libcurl silently resends a request whose reused connection closed before
   * any answer; for a call that is not safe to repeat that could run it twice,
   * so such calls always get a connection of their own. */
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, (r->op->idempotent || r->nonce) ? 0L : 1L);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  long timeout = r->timeout_ms;
  if (r->deadline > 0) {
    long left = (long)((r->deadline - fly_now()) * 1000) + 1;
    if (left < 1) left = 1;
    if (timeout <= 0 || left < timeout) timeout = left;
  }
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
  if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
    pool_put(c, fe);
    r->easy = NULL;
    return 0;
  }
  r->state = REQ_ACTIVE;
  return 1;
}

static const char *transport_code(CURLcode cc) {
  switch (cc) {
  case CURLE_OPERATION_TIMEDOUT: return "timeout";
  case CURLE_COULDNT_CONNECT: return "connect";
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY: return "resolve";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_CRL_BADFILE: return "tls";
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING: return "reset";
  default: return "protocol";
  }
}

static int is_wait(const fly_operation *op) { return strcmp(op->id, "Machines_wait") == 0; }

/* Ends a request and pushes it on the stack: a step returns the requests it
 * finished as its results. The stack space is made sure of first, so nothing
 * can fail once the request is ended. */
static void deliver(lua_State *L, fly_request *r, int *finished) {
  luaL_checkstack(L, 1, "fly: too many finished requests");
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  request_finish(L, r);
  (*finished)++;
}

/* Seconds to wait before the next attempt; negative: do not retry. */
static double retry_delay(fly_client *c, fly_request *r, double now) {
  int safe = r->op->idempotent || r->nonce;
  if (r->code) {
    if (!r->sent || safe) r->retryable = 1;
  } else if (r->status == 429) {
    r->retryable = 1;
  } else if (safe && (r->status == 500 || r->status == 502 || r->status == 503 || r->status == 504 ||
                      (r->status == 408 && !is_wait(r->op)))) {
    r->retryable = 1;
  }
  if (!r->retryable || r->attempts >= r->max_attempts) return -1;
  double delay;
  if (r->status == 429) {
    /* the bucket's refill time: through the shared bucket when limiting,
       else one token's worth of the published limit */
    if (r->rate_key) {
      fly_rate_penalize(r->rate_key, r->limit, now);
      delay = fly_rate_reserve(r->rate_key, r->limit, now) + c->rate_margin - now;
    } else {
      delay = 1.0 / r->limit.rate;
    }
    if (r->retry_after > delay) delay = r->retry_after;
    if (delay <= 0) delay = c->retry_base;
    delay += rng_unit(c) * delay * 0.1; /* later, never earlier, than allowed */
  } else {
    double cap = c->retry_base * pow(2.0, r->attempts - 1);
    if (cap > c->retry_cap) cap = c->retry_cap;
    delay = rng_unit(c) * cap; /* full jitter */
    if (r->deadline > 0 && now + delay >= r->deadline) return -1;
    if (r->rate_key) { /* a retry is another request: it takes its place in the bucket */
      double at = fly_rate_reserve(r->rate_key, r->limit, now);
      if (at > now && at + c->rate_margin - now > delay) delay = at + c->rate_margin - now;
    }
  }
  if (r->deadline > 0 && now + delay >= r->deadline) return -1;
  return delay;
}

/* libcurl is done with an attempt: retry later, or end the request. */
static void attempt_done(lua_State *L, fly_client *c, fly_request *r, CURLcode cc, int *finished) {
  long sent = 0;
  CURL *e = r->easy->curl;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &sent);
  r->sent = sent > 0;
  if (cc != CURLE_OK) set_message(r, r->easy->errbuf[0] ? r->easy->errbuf : curl_easy_strerror(cc));
  curl_multi_remove_handle(c->multi, e);
  pool_put(c, r->easy);
  r->easy = NULL;
  r->attempts++;
  r->retryable = 0;
  if (cc != CURLE_OK) {
    r->code = transport_code(cc);
    r->status = 0;
  }
  double now = fly_now();
  double delay = retry_delay(c, r, now);
  if (delay >= 0) {
    r->state = REQ_QUEUED;
    r->ready_at = now + delay;
    return;
  }
  deliver(L, r, finished);
}

/* Starts every queued request whose time has come; ends timers and requests
 * whose deadline passed. */
static void launch_ready(lua_State *L, fly_client *c, int *finished) {
  double now = fly_now();
  for (fly_request *r = c->live, *nx; r; r = nx) {
    nx = r->next;
    if (r->state != REQ_QUEUED) continue;
    if (r->deadline > 0 && now >= r->deadline && r->kind == KIND_HTTP) {
      r->status = 0;
      set_failure(r, "timeout", "deadline exceeded", 1);
      deliver(L, r, finished);
    } else if (r->ready_at <= now) {
      if (r->kind == KIND_TIMER) {
        deliver(L, r, finished);
      } else if (!start_transfer(c, r)) {
        set_failure(r, "protocol", "could not start the transfer (out of memory)", 0);
        deliver(L, r, finished);
      }
    }
  }
}

/* The earliest time a queued request needs attention (ready, or its
 * deadline), or +inf. */
static double earliest(fly_client *c) {
  double next = INFINITY;
  for (fly_request *r = c->live; r; r = r->next) {
    if (r->state != REQ_QUEUED) continue;
    double t = r->ready_at;
    if (r->deadline > 0 && r->deadline < t) t = r->deadline;
    if (t < next) next = t;
  }
  return next;
}

static void harvest(lua_State *L, fly_client *c, int *finished) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(c->multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    fly_request *r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    if (r) attempt_done(L, c, r, msg->data.result, finished);
  }
}

/* One turn: start what is ready, let libcurl work, and if nothing finished,
 * wait at most max_wait seconds on the sockets and the nearest deadline. */
static void step_once(lua_State *L, fly_client *c, int *finished, double max_wait) {
  int running;
  launch_ready(L, c, finished);
  curl_multi_perform(c->multi, &running);
  harvest(L, c, finished); /* may queue retries: the earliest time is taken after */
  if (*finished == 0 && max_wait > 0 && c->live) {
    double now = fly_now();
    double wait = max_wait;
    double next = earliest(c);
    if (next - now < wait) wait = next - now;
    long curl_ms = -1;
    curl_multi_timeout(c->multi, &curl_ms);
    if (curl_ms >= 0 && curl_ms / 1000.0 < wait) wait = curl_ms / 1000.0;
    if (wait > 3600) wait = 3600; /* the caller loops; keeps the int below in range */
    if (wait > 0) curl_multi_poll(c->multi, NULL, 0, (int)ceil(wait * 1000), NULL);
    launch_ready(L, c, finished);
    curl_multi_perform(c->multi, &running);
    harvest(L, c, finished);
  }
}

/* client:_step(max_wait) -> the requests that finished (as results).
 * Waits at most max_wait seconds for something to happen. */
static int l_step(lua_State *L) {
  fly_client *c = check_client(L, 1);
  double max_wait = luaL_optnumber(L, 2, 0);
  lua_settop(L, 2);
  int finished = 0;
  step_once(L, c, &finished, max_wait);
  return finished;
}

/* client:_step_until(request) -> the requests that finished (as results).
 * Steps until `request` or any other request finishes: a plain call needs
 * one trip into C instead of one per turn. */
static int l_step_until(lua_State *L) {
  fly_client *c = check_client(L, 1);
  fly_request *r = check_request(L, 2);
  lua_settop(L, 2);
  int finished = 0;
  while (r->state != REQ_DONE && finished == 0 && c->live) step_once(L, c, &finished, 1.0);
  return finished;
}

/* client:_wait(request): steps until `request` finishes. For plain calls on
 * a client with no tasks: nobody else waits for anything, so the other
 * requests that finish meanwhile are simply left finished. */
static int l_wait(lua_State *L) {
  fly_client *c = check_client(L, 1);
  fly_request *r = check_request(L, 2);
  lua_settop(L, 2);
  while (r->state != REQ_DONE && c->live) {
    int finished = 0;
    step_once(L, c, &finished, 1.0);
    lua_settop(L, 2);
  }
  return 0;
}

/* client:_timeout() -> seconds until the loop needs a step (0: now), or nil
 * when nothing is live. For host event loops. */
static int l_timeout(lua_State *L) {
  fly_client *c = check_client(L, 1);
  if (!c->live) return lua_pushnil(L), 1;
  double wait = earliest(c) - fly_now();
  long curl_ms = -1;
  curl_multi_timeout(c->multi, &curl_ms);
  if (curl_ms >= 0 && curl_ms / 1000.0 < wait) wait = curl_ms / 1000.0;
  if (wait == INFINITY) wait = 1.0; /* only sockets: wake up now and then anyway */
  lua_pushnumber(L, wait < 0 ? 0 : wait);
  return 1;
}

/* client:_sockets() -> { [fd] = "r" | "w" | "rw" }: the sockets libcurl
 * waits on right now (as curl_multi_fdset reports them, so descriptors up to
 * FD_SETSIZE). The set changes after every step, and a number may be reused
 * for a new connection: watchers are best made anew after each step. */
static int l_sockets(lua_State *L) {
  fly_client *c = check_client(L, 1);
  fd_set r, w, x;
  int maxfd = -1;
  FD_ZERO(&r);
  FD_ZERO(&w);
  FD_ZERO(&x);
  curl_multi_fdset(c->multi, &r, &w, &x, &maxfd);
  lua_createtable(L, 0, maxfd + 1 > 0 ? maxfd + 1 : 0);
  for (int fd = 0; fd <= maxfd && fd < FD_SETSIZE; fd++) {
    int rd = FD_ISSET(fd, &r), wr = FD_ISSET(fd, &w);
    if (!rd && !wr) continue;
    lua_pushstring(L, rd && wr ? "rw" : rd ? "r" : "w");
    lua_rawseti(L, -2, fd);
  }
  return 1;
}

/* ---------------------------------------------------------------- submit */

static void pin(lua_State *L, fly_client *c, fly_request *r, int idx) {
  lua_pushvalue(L, idx);
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  r->client = c;
  r->next = c->live;
  if (c->live) c->live->prev = r;
  c->live = r;
  r->state = REQ_QUEUED;
}

static fly_request *new_request(lua_State *L, int kind) {
  fly_request *r = fly_newuserdata(L, sizeof *r);
  memset(r, 0, sizeof *r);
  r->kind = kind;
  r->ref = LUA_NOREF;
  r->retry_after = -1;
  fly_setmetatable(L, REQUEST_MT);
  return r;
}

static int known_action(const char *name) {
  for (size_t i = 0; i < fly_operation_count; i++)
    if (strcmp(fly_operations[i].action, name) == 0) return 1;
  return 0;
}

static fly_limit limit_for(fly_client *c, const fly_operation *op) {
  fly_limit l = RATE_DEFAULTS[op->rate_class];
  for (int i = 0; i < c->noverrides; i++)
    if (strcmp(c->overrides[i].action, op->action) == 0) l = c->overrides[i].limit;
  l.rate *= c->rate_scale;
  return l;
}

/* Appends the query string for one parameter value at idx. */
static void add_query(lua_State *L, sbuf *b, int *first, const fly_operation *op, const fly_param *p,
                      int idx, int level) {
  size_t wn = strlen(p->wire), vn;
  if (p->in == FLY_IN_QUERY_MAP) { /* metadata = {k = v} -> metadata.k=v */
    if (!lua_istable(L, idx))
      raise_at(L, level, "fly: %s: parameter '%s' must be a table of key = value", op->id, p->name);
    const char *dot = strchr(p->wire, '.');
    size_t pn = dot ? (size_t)(dot - p->wire) : wn;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      if (lua_type(L, -2) != LUA_TSTRING)
        raise_at(L, level, "fly: %s: parameter '%s' needs string keys", op->id, p->name);
      size_t kn;
      const char *k = lua_tolstring(L, -2, &kn);
      const char *v = param_string(L, lua_gettop(L), op, p->name, &vn, level);
      sbuf_add(L, b, *first ? "?" : "&", 1);
      *first = 0;
      sbuf_add_escaped(L, b, p->wire, pn, 0);
      sbuf_add(L, b, ".", 1);
      sbuf_add_escaped(L, b, k, kn, 0);
      sbuf_add(L, b, "=", 1);
      sbuf_add_escaped(L, b, v, vn, 0);
      lua_pop(L, 1);
    }
    return;
  }
  if (lua_istable(L, idx)) { /* an array repeats the key */
    int n = (int)fly_rawlen(L, idx);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      const char *v = param_string(L, lua_gettop(L), op, p->name, &vn, level);
      add_query_pair(L, b, first, p->wire, wn, v, vn);
      lua_pop(L, 1);
    }
    return;
  }
  const char *v = param_string(L, idx, op, p->name, &vn, level);
  add_query_pair(L, b, first, p->wire, wn, v, vn);
}

static void add_header(lua_State *L, struct curl_slist **list, const char *h) {
  struct curl_slist *n = curl_slist_append(*list, h);
  if (!n) luaL_error(L, "fly: out of memory");
  *list = n;
}

/* client:_submit(operation_id, params, opts) -> Request
 * params: parameters by name and `body` (an encoded string). opts: timeout,
 * deadline (seconds from now), attempts. Raises on programmer errors, at call
 * level `level` (default 1: the caller). */
static int l_submit(lua_State *L) {
  int level = (int)luaL_optinteger(L, 5, 1);
  lua_settop(L, 4);
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  if (c->closed) return raise_at(L, level, "fly: client is closed");
  const char *id = luaL_checkstring(L, 2);
  const fly_operation *op = fly_operation_find(id);
  if (!op) return raise_at(L, level, "fly: unknown operation '%s'", id);
  if (lua_isnil(L, 3)) lua_newtable(L), lua_replace(L, 3);
  if (!lua_istable(L, 3)) return raise_at(L, level, "fly: %s: params must be a table", op->id);
  int has_opts = !lua_isnil(L, 4);
  if (has_opts && !lua_istable(L, 4)) return raise_at(L, level, "fly: %s: options must be a table", op->id);

  /* every key must be a parameter of this operation, or body */
  lua_pushnil(L);
  while (lua_next(L, 3)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      return raise_at(L, level, "fly: %s: parameter names must be strings", op->id);
    const char *k = lua_tostring(L, -1);
    int known = strcmp(k, "body") == 0;
    for (int i = 0; !known && i < op->nparams; i++) known = strcmp(k, op->params[i].name) == 0;
    if (!known) return raise_at(L, level, "fly: %s: unknown parameter '%s'", op->id, k);
  }
  rawfield(L, 3, "body"); /* 5 */
  if (!lua_isnil(L, 5) && lua_type(L, 5) != LUA_TSTRING)
    return raise_at(L, level, "fly: %s: body must be an encoded string here", op->id);
  if (!lua_isnil(L, 5) && !op->has_body)
    return raise_at(L, level, "fly: %s: this operation takes no body", op->id);
  for (int i = 0; i < op->nparams; i++) {
    if (!op->params[i].required) continue;
    rawfield(L, 3, op->params[i].name);
    if (lua_isnil(L, -1))
      return raise_at(L, level, "fly: %s: missing required parameter '%s'", op->id, op->params[i].name);
    lua_pop(L, 1);
  }

  /* the request owns everything built from here on, also when an error is
     raised half-way (its __gc frees it) */
  fly_request *r = new_request(L, KIND_HTTP); /* 6 */
  r->op = op;
  r->timeout_ms = c->timeout_ms;
  r->max_attempts = c->max_attempts;
  double deadline = 0;
  if (has_opts) {
    lua_pushnil(L);
    while (lua_next(L, 4)) {
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      if (!k || (strcmp(k, "timeout") != 0 && strcmp(k, "deadline") != 0 && strcmp(k, "attempts") != 0))
        return raise_at(L, level, "fly: %s: unknown option '%s' (options are timeout, deadline, attempts)",
                        op->id, k ? k : luaL_typename(L, -2));
      if (lua_type(L, -1) != LUA_TNUMBER)
        return raise_at(L, level, "fly: %s: option '%s' must be a number (got %s)", op->id, k,
                        luaL_typename(L, -1));
      lua_pop(L, 1);
    }
    double timeout = opt_number_field(L, 4, "timeout", 1);
    deadline = opt_number_field(L, 4, "deadline", 1);
    double attempts = opt_number_field(L, 4, "attempts", 1);
    if (!(timeout > 0) || !(deadline > 0) || !(attempts >= 1))
      return raise_at(L, level, "fly: %s: options timeout and deadline must be > 0, attempts >= 1", op->id);
    if (rawfield(L, 4, "timeout") != LUA_TNIL) r->timeout_ms = seconds_to_ms(timeout);
    if (rawfield(L, 4, "attempts") != LUA_TNIL) r->max_attempts = attempts > 1000 ? 1000 : (int)attempts;
    if (rawfield(L, 4, "deadline") == LUA_TNIL || deadline > 1e8) deadline = 0;
    lua_pop(L, 3);
  }

  sbuf *url = &r->url;
  size_t base_len = strlen(c->base_url), path_len;
  sbuf_add(L, url, c->base_url, base_len);
  for (const char *t = op->path; *t;) {
    const char *open = strchr(t, '{');
    if (!open) {
      sbuf_add(L, url, t, strlen(t));
      break;
    }
    sbuf_add(L, url, t, (size_t)(open - t));
    const char *close = strchr(open, '}');
    size_t nn = (size_t)(close - open - 1);
    const fly_param *p = NULL;
    for (int i = 0; !p && i < op->nparams; i++)
      if (op->params[i].in == FLY_IN_PATH && strncmp(op->params[i].name, open + 1, nn) == 0 &&
          op->params[i].name[nn] == '\0')
        p = &op->params[i];
    rawfield(L, 3, p->name);
    size_t vn;
    const char *v = param_string(L, lua_gettop(L), op, p->name, &vn, level);
    if (vn == 0) return raise_at(L, level, "fly: %s: parameter '%s' must not be empty", op->id, p->name);
    sbuf_add_escaped(L, url, v, vn, only_dots(v, vn));
    lua_pop(L, 1);
    t = close + 1;
  }
  path_len = url->n - base_len;
  int first = 1;
  for (int i = 0; i < op->nparams; i++) {
    const fly_param *p = &op->params[i];
    if (p->in != FLY_IN_QUERY && p->in != FLY_IN_QUERY_MAP) continue;
    rawfield(L, 3, p->name);
    if (!lua_isnil(L, -1)) add_query(L, url, &first, op, p, lua_gettop(L), level);
    lua_pop(L, 1);
  }
  r->path = dupn(url->p + base_len, path_len);
  if (!r->path) return luaL_error(L, "fly: out of memory");

  if (!lua_isnil(L, 5) || op->has_body) { /* a declared body is always sent, {} at least */
    size_t bn = 2;
    const char *b = lua_isnil(L, 5) ? "{}" : lua_tolstring(L, 5, &bn);
    r->body = dupn(b, bn);
    if (!r->body) return luaL_error(L, "fly: out of memory");
    r->body_len = bn;
  }

  /* header parameters: the request gets its own list */
  for (int i = 0; i < op->nparams; i++) {
    const fly_param *p = &op->params[i];
    if (p->in != FLY_IN_HEADER) continue;
    rawfield(L, 3, p->name);
    if (!lua_isnil(L, -1)) {
      size_t vn;
      const char *v = param_string(L, lua_gettop(L), op, p->name, &vn, level);
      if (has_crlf(v, vn))
        return raise_at(L, level, "fly: %s: parameter '%s' contains a line break", op->id, p->name);
      if (!r->headers)
        for (struct curl_slist *h = r->body ? c->json_headers : c->headers; h; h = h->next)
          add_header(L, &r->headers, h->data);
      lua_pushfstring(L, "%s: %s", p->wire, v);
      add_header(L, &r->headers, lua_tostring(L, -1));
      if (strcmp(p->name, "lease_nonce") == 0) r->nonce = 1;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }

  double now = fly_now();
  r->deadline = deadline > 0 ? now + deadline : 0;
  r->ready_at = now;
  r->limit = limit_for(c, op);
  if (c->rate_limit) {
    const char *scope = "";
    size_t scope_len;
    if (op->scope >= 0) {
      rawfield(L, 3, op->params[op->scope].name);
      scope = param_string(L, lua_gettop(L), op, op->params[op->scope].name, &scope_len, level);
    }
    lua_pushfstring(L, "%s|%s|%s", c->identity, op->action, scope);
    r->rate_key = dupn(lua_tostring(L, -1), fly_rawlen(L, -1));
    if (!r->rate_key) return luaL_error(L, "fly: out of memory");
    r->ready_at = fly_rate_reserve(r->rate_key, r->limit, now);
    if (r->ready_at > now) r->ready_at += c->rate_margin;
  }
  if (c->closed) return raise_at(L, level, "fly: client is closed");
  pin(L, c, r, 6);
  if (r->deadline > 0 && r->ready_at > r->deadline)
    request_fail(L, r, "timeout", "the rate limit delays this request past its deadline", 1);
  lua_pushvalue(L, 6);
  return 1;
}

/* client:_timer(seconds) -> Request that finishes after that many seconds */
static int l_timer(lua_State *L) {
  fly_client *c = check_client(L, 1);
  double s = luaL_checknumber(L, 2);
  fly_request *r = new_request(L, KIND_TIMER);
  r->ready_at = fly_now() + (s > 0 ? s : 0);
  pin(L, c, r, lua_gettop(L));
  return 1;
}

/* ------------------------------------------------------- request methods */

static int l_req_done(lua_State *L) {
  lua_pushboolean(L, check_request(L, 1)->state == REQ_DONE);
  return 1;
}

static int l_req_cancel(lua_State *L) {
  fly_request *r = check_request(L, 1);
  if (r->state != REQ_DONE) request_fail(L, r, "cancelled", "cancelled", 0);
  return 0;
}

/* request:result() -> table describing the outcome of a finished request */
static int l_req_result(lua_State *L) {
  fly_request *r = check_request(L, 1);
  if (r->state != REQ_DONE) return luaL_error(L, "fly: request has not finished");
  lua_createtable(L, 0, 12);
  if (r->kind == KIND_TIMER) {
    lua_pushboolean(L, 1), lua_setfield(L, -2, "timer");
    return 1;
  }
  lua_pushstring(L, r->op->id), lua_setfield(L, -2, "operation");
  lua_pushstring(L, r->op->method), lua_setfield(L, -2, "method");
  lua_pushstring(L, r->path), lua_setfield(L, -2, "path");
  lua_pushinteger(L, r->attempts), lua_setfield(L, -2, "attempts");
  lua_pushboolean(L, r->retryable), lua_setfield(L, -2, "retryable");
  if (r->status) lua_pushinteger(L, r->status), lua_setfield(L, -2, "status");
  if (r->code) {
    lua_pushstring(L, r->code), lua_setfield(L, -2, "code");
    lua_pushstring(L, r->message ? r->message : r->code), lua_setfield(L, -2, "message");
  }
  lua_pushlstring(L, r->resp ? r->resp : "", r->resp_len), lua_setfield(L, -2, "body");
  if (r->content_type[0]) lua_pushstring(L, r->content_type), lua_setfield(L, -2, "content_type");
  if (r->request_id[0]) lua_pushstring(L, r->request_id), lua_setfield(L, -2, "request_id");
  if (r->retry_after >= 0) lua_pushnumber(L, r->retry_after), lua_setfield(L, -2, "retry_after");
  return 1;
}

static int is_json_type(const char *ct) {
  return strstr(ct, "json") != NULL;
}

/* Decodes the body of a finished request (pushes the value, or nil and a
 * message). */
static int decode_body(lua_State *L, fly_request *r) {
  luaL_getmetatable(L, ARRAY_MT);
  int n = fly_json_decode(L, r->resp ? r->resp : "", r->resp_len, -1);
  lua_remove(L, -n - 1);
  return n;
}

/* request:success() -> the result of a successful call: its decoded JSON,
 * `true` for an empty body, or the text of any other body; nil and a
 * message when the body is not the JSON it claims to be; nothing for a call
 * that failed (status or transport). The fast path of every call. */
static int l_req_success(lua_State *L) {
  fly_request *r = check_request(L, 1);
  if (r->state != REQ_DONE || r->kind != KIND_HTTP || r->code || r->status < 200 || r->status > 299) return 0;
  if (r->resp_len == 0) return lua_pushboolean(L, 1), 1;
  int json = r->content_type[0] ? is_json_type(r->content_type) : (r->resp[0] == '{' || r->resp[0] == '[');
  if (json) return decode_body(L, r);
  lua_pushlstring(L, r->resp, r->resp_len);
  return 1;
}

/* request:json() -> the body decoded as JSON, or nil and a message. */
static int l_req_json(lua_State *L) {
  fly_request *r = check_request(L, 1);
  if (r->state != REQ_DONE || r->kind != KIND_HTTP) return luaL_error(L, "fly: request has not finished");
  return decode_body(L, r);
}

/* core.decode(string) -> the value, or nil and a message: the decoder that
 * reads responses, for JSON text from elsewhere. */
static int l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  luaL_getmetatable(L, ARRAY_MT);
  return fly_json_decode(L, s, n, 2);
}

static int l_req_tostring(lua_State *L) {
  fly_request *r = check_request(L, 1);
  static const char *const states[] = {"new", "queued", "active", "done"};
  if (r->kind == KIND_TIMER) lua_pushfstring(L, "fly.Request{timer, %s}: %p", states[r->state], (void *)r);
  else lua_pushfstring(L, "fly.Request{%s %s, %s}: %p", r->op->method, r->path, states[r->state], (void *)r);
  return 1;
}

/* ----------------------------------------------------------------- client */

static void client_close(lua_State *L, fly_client *c) {
  if (c->closed) return;
  c->closed = 1;
  while (c->live) request_fail(L, c->live, "cancelled", "the client was closed", 0);
  for (int i = 0; i < c->npool; i++) easy_free(c->pool[i]);
  c->npool = 0;
  if (c->multi) curl_multi_cleanup(c->multi), c->multi = NULL;
  if (c->headers) curl_slist_free_all(c->headers), c->headers = NULL;
  if (c->json_headers) curl_slist_free_all(c->json_headers), c->json_headers = NULL;
  free(c->base_url), c->base_url = NULL;
  free(c->ca_file), c->ca_file = NULL;
}

static int l_close(lua_State *L) {
  client_close(L, luaL_checkudata(L, 1, CLIENT_MT));
  return 0;
}

static int l_client_tostring(lua_State *L) {
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  if (c->closed) lua_pushfstring(L, "fly.Client{closed}: %p", (void *)c);
  else lua_pushfstring(L, "fly.Client{%s}: %p", c->base_url, (void *)c);
  return 1;
}

static int l_base_url(lua_State *L) {
  lua_pushstring(L, check_client(L, 1)->base_url);
  return 1;
}

/* client:_state() -> the table the Lua layer keeps per client (tasks,
 * bound namespaces, …): held by the client itself, so it goes with it and
 * needs no weak table keyed by the client. */
static int l_state(lua_State *L) {
  luaL_checkudata(L, 1, CLIENT_MT);
  fly_getuservalue(L, 1);
  return 1;
}

static int l_is_closed(lua_State *L) {
  lua_pushboolean(L, ((fly_client *)luaL_checkudata(L, 1, CLIENT_MT))->closed);
  return 1;
}

/* The Authorization header for a token, as fly-go builds it: macaroon tokens
 * (a comma-separated part starting fm1r_, fm1a_ or fm2_) use the FlyV1
 * scheme, anything else Bearer; a scheme already in the token is dropped so
 * it is never doubled. */
static void push_authorization(lua_State *L, const char *tok, size_t n) {
  for (int again = 1; again;) {
    again = 0;
    while (n > 0 && (*tok == ' ' || *tok == '\t')) tok++, n--;
    if (n >= 7 && strncasecmp(tok, "Bearer ", 7) == 0) tok += 7, n -= 7, again = 1;
    else if (n >= 6 && strncasecmp(tok, "FlyV1 ", 6) == 0) tok += 6, n -= 6, again = 1;
  }
  while (n > 0 && (tok[n - 1] == ' ' || tok[n - 1] == '\t')) n--;
  int macaroon = 0;
  for (size_t i = 0; i < n && !macaroon; i++) {
    if (i == 0 || tok[i - 1] == ',' || (tok[i - 1] == ' ' && i >= 2 && tok[i - 2] == ',')) {
      const char *s = tok + i;
      size_t left = n - i;
      macaroon = (left >= 5 && (memcmp(s, "fm1r_", 5) == 0 || memcmp(s, "fm1a_", 5) == 0)) ||
                 (left >= 4 && memcmp(s, "fm2_", 4) == 0);
    }
  }
  lua_pushstring(L, macaroon ? "Authorization: FlyV1 " : "Authorization: Bearer ");
  lua_pushlstring(L, tok, n);
  lua_concat(L, 2);
}

static int append_header(struct curl_slist **list, const char *h) {
  struct curl_slist *n = curl_slist_append(*list, h);
  if (!n) return 0;
  *list = n;
  return 1;
}

/* core.new(opts) -> Client. The Lua layer has already checked option names,
 * types and defaults; this reads them. */
static int l_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  fly_client *c = fly_newuserdata_uv(L, sizeof *c);
  memset(c, 0, sizeof *c);
  c->closed = 1; /* until fully built, so __gc frees only what exists */
  fly_setmetatable(L, CLIENT_MT);
  int cidx = lua_gettop(L);
  lua_newtable(L); /* the Lua layer's per-client state (client:_state()) */
  fly_setuservalue(L, cidx);

  rawfield(L, 1, "token");
  size_t tn;
  const char *token = luaL_checklstring(L, -1, &tn);
  if (has_crlf(token, tn)) return luaL_error(L, "fly: the token contains a line break");
  rawfield(L, 1, "base_url");
  size_t bn;
  const char *base = luaL_checklstring(L, -1, &bn);
  while (bn > 0 && base[bn - 1] == '/') bn--;
  rawfield(L, 1, "user_agent");
  const char *ua = luaL_checkstring(L, -1);
  if (has_crlf(ua, strlen(ua))) return luaL_error(L, "fly: user_agent contains a line break");
  rawfield(L, 1, "ca_file");
  const char *ca = luaL_optstring(L, -1, NULL);

  c->closed = 0;
  c->base_url = dupn(base, bn);
  c->ca_file = ca ? dupn(ca, strlen(ca)) : NULL;
  c->multi = curl_multi_init();
  if (!c->base_url || (ca && !c->ca_file) || !c->multi) {
    client_close(L, c);
    return luaL_error(L, "fly: out of memory");
  }
  uint64_t h = fnv64(14695981039346656037ull, base, bn);
  h = fnv64(h, "\n", 1);
  h = fnv64(h, token, tn);
  snprintf(c->identity, sizeof c->identity, "%016llx", (unsigned long long)h);
  c->rng = h ^ (uint64_t)(uintptr_t)c ^ (uint64_t)(fly_now() * 1e9);
  if (!c->rng) c->rng = 88172645463325252ull;

  c->timeout_ms = seconds_to_ms(opt_number_field(L, 1, "timeout", 60));
  c->connect_timeout_ms = seconds_to_ms(opt_number_field(L, 1, "connect_timeout", 10));
  rawfield(L, 1, "insecure");
  c->insecure = lua_toboolean(L, -1);
  lua_pop(L, 1);

  /* headers: Authorization first, then ours, then the user's extras */
  int ok = 1;
  push_authorization(L, token, tn);
  ok &= append_header(&c->headers, lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_pushfstring(L, "User-Agent: %s", ua);
  ok &= append_header(&c->headers, lua_tostring(L, -1));
  lua_pop(L, 1);
  ok &= append_header(&c->headers, "Accept: application/json");
  ok &= append_header(&c->headers, "Expect:");
  rawfield(L, 1, "headers");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (ok && lua_next(L, t)) {
      if (lua_type(L, -2) != LUA_TSTRING)
        return client_close(L, c), luaL_error(L, "fly: headers must map names to strings");
      if (lua_type(L, -1) != LUA_TSTRING)
        return client_close(L, c), luaL_error(L, "fly: header '%s' must be a string (got %s)",
                                              lua_tostring(L, -2), luaL_typename(L, -1));
      size_t kn, vn;
      const char *k = lua_tolstring(L, -2, &kn);
      const char *v = lua_tolstring(L, -1, &vn);
      if (kn == 0 || has_crlf(k, kn) || has_crlf(v, vn) || memchr(k, ':', kn))
        return client_close(L, c), luaL_error(L, "fly: header '%s' is not a valid header", k);
      if (strcasecmp(k, "Authorization") == 0)
        return client_close(L, c), luaL_error(L, "fly: set the token with the token option, not a header");
      lua_pushfstring(L, "%s: %s", k, v);
      ok &= append_header(&c->headers, lua_tostring(L, -1));
      lua_pop(L, 2);
    }
  }
  lua_pop(L, 1);
  for (struct curl_slist *s = c->headers; ok && s; s = s->next) ok &= append_header(&c->json_headers, s->data);
  ok &= append_header(&c->json_headers, "Content-Type: application/json");
  if (!ok) return client_close(L, c), luaL_error(L, "fly: out of memory");

  /* rate limiting: false, or a table of { scale = n, [action] = {rate, burst} } */
  c->rate_limit = 1;
  c->rate_scale = 1;
  c->rate_margin = 0.02;
  rawfield(L, 1, "rate_limit");
  if (lua_isboolean(L, -1)) {
    c->rate_limit = lua_toboolean(L, -1);
  } else if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    c->rate_scale = opt_number_field(L, t, "scale", 1);
    c->rate_margin = opt_number_field(L, t, "margin", 0.02);
    if (!(c->rate_margin >= 0)) return client_close(L, c), luaL_error(L, "fly: rate_limit.margin must be >= 0");
    if (!(c->rate_scale > 0)) return client_close(L, c), luaL_error(L, "fly: rate_limit.scale must be > 0");
    lua_pushnil(L);
    while (lua_next(L, t)) {
      const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      if (key && (strcmp(key, "scale") == 0 || strcmp(key, "margin") == 0)) {
        /* read above */
      } else if (!key || !lua_istable(L, -1) || !known_action(key)) {
        client_close(L, c);
        return luaL_error(L, "fly: rate_limit: '%s' is neither scale, margin nor an action "
                          "(an operationId) mapped to { rate = r, burst = b }",
                          key ? key : luaL_typename(L, -2));
      } else {
        const char *action = key;
        if (c->noverrides == OVERRIDES_MAX || strlen(action) >= sizeof c->overrides[0].action)
          return client_close(L, c), luaL_error(L, "fly: too many rate_limit overrides");
        fly_override *o = &c->overrides[c->noverrides++];
        snprintf(o->action, sizeof o->action, "%s", action);
        o->limit.rate = opt_number_field(L, lua_gettop(L), "rate", 1);
        o->limit.burst = opt_number_field(L, lua_gettop(L), "burst", 1);
        if (!(o->limit.rate > 0) || !(o->limit.burst >= 1))
          return client_close(L, c), luaL_error(L, "fly: rate_limit.%s needs rate > 0 and burst >= 1", action);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);

  c->max_attempts = 4;
  c->retry_base = 0.1;
  c->retry_cap = 5;
  rawfield(L, 1, "retry");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    double attempts = opt_number_field(L, t, "attempts", 4);
    c->max_attempts = attempts > 1000 ? 1000 : attempts >= 1 ? (int)attempts : 1;
    c->retry_base = opt_number_field(L, t, "base", 0.1);
    c->retry_cap = opt_number_field(L, t, "cap", 5);
  } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
    c->max_attempts = 1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, cidx);
  return 1;
}

static int l_gc(lua_State *L) {
  client_close(L, luaL_checkudata(L, 1, CLIENT_MT));
  return 0;
}

/* ----------------------------------------------------------------- module */

static int l_now(lua_State *L) {
  lua_pushnumber(L, fly_now());
  return 1;
}

static int l_bucket_count(lua_State *L) {
  fly_rate_sweep(fly_now());
  lua_pushinteger(L, (lua_Integer)fly_rate_bucket_count());
  return 1;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static const luaL_Reg client_methods[] = {
  {"_submit", l_submit}, {"_timer", l_timer}, {"_step", l_step}, {"_step_until", l_step_until},
  {"_wait", l_wait},
  {"_timeout", l_timeout},
  {"_sockets", l_sockets}, {"close", l_close}, {"base_url", l_base_url}, {"is_closed", l_is_closed},
  {"_state", l_state},
  {NULL, NULL}};

static const luaL_Reg request_methods[] = {
  {"done", l_req_done}, {"result", l_req_result},
  {"success", l_req_success}, {"json", l_req_json},
  {"cancel", l_req_cancel}, {NULL, NULL}};

/* Creates a class metatable once per state; loading the module again (busted
 * does) finds it and leaves it, and whatever the Lua layer added, as it is.
 * The method table stays reachable as the metatable's `methods` field. */
static void new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                      lua_CFunction tostring) {
  if (!luaL_newmetatable(L, name)) return;
  lua_newtable(L);
  fly_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "methods");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc), lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, gc), lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, tostring), lua_setfield(L, -2, "__tostring");
  lua_pushstring(L, name), lua_setfield(L, -2, "__name");
  lua_pushliteral(L, "fly: metatable is protected"), lua_setfield(L, -2, "__metatable");
}

int luaopen_fly_core(lua_State *L) {
  pthread_once(&curl_once, curl_init_once);
  lua_newtable(L);
  new_class(L, CLIENT_MT, client_methods, l_gc, l_client_tostring);
  lua_getfield(L, -1, "methods");
  lua_setfield(L, -3, "Client"); /* the method table, for the Lua layer to extend */
  lua_setfield(L, -2, "client_mt");
  new_class(L, REQUEST_MT, request_methods, request_gc, l_req_tostring);
  lua_setfield(L, -2, "request_mt");
  luaL_newmetatable(L, ARRAY_MT); /* the mark of a JSON array; the same table on every load */
  lua_setfield(L, -2, "array_mt");
  static const luaL_Reg fns[] = {{"new", l_new}, {"operations", l_operations}, {"now", l_now},
                                 {"decode", l_decode},
                                 {"bucket_count", l_bucket_count},
                                 {NULL, NULL}};
  fly_setfuncs(L, fns, 0);
  curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
  lua_pushstring(L, v->version), lua_setfield(L, -2, "curl_version");
  return 1;
}
