/* The libcurl transport.
 *
 * A client's requests run on its multi handle. _submit builds and admits a
 * request (request.c) and queues it with its "ready at" time; each step
 * starts what is ready on an easy handle from the client's pool, lets libcurl
 * work, and hands every finished attempt to classify: retry later (queued
 * again at the time it gives) or done. Nothing here sleeps on its own except
 * the step's wait on the sockets and the nearest deadline, and no Lua code
 * runs inside a libcurl callback: callbacks only copy bytes into C buffers.
 *
 * Ownership: the transport state (multi handle, pool, the shared header
 * lists as curl_slists) belongs to the client; an easy handle is borrowed by
 * a request while its transfer runs; a request with its own headers owns
 * their curl_slist copy. */
#define _POSIX_C_SOURCE 200809L
#include "curl.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>

#include "redis.h"
#include "request.h"
#include "util.h"

#define POOL_MAX 32

/* An easy handle and the error buffer libcurl writes into, kept together in
 * the client's pool (so a request does not carry 256 bytes for a message it
 * rarely gets). */
typedef struct fly_easy {
  CURL *curl;
  char errbuf[CURL_ERROR_SIZE];
} fly_easy;

struct fly_curl {
  CURLM *multi;
  struct curl_slist *headers;      /* owned: the client's shared list */
  struct curl_slist *json_headers; /* owned: the same plus Content-Type */
  fly_easy *pool[POOL_MAX];
  int npool;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }
void fly_curl_global_init(void) { pthread_once(&curl_once, curl_init_once); }

const char *fly_curl_version(void) { return curl_version_info(CURLVERSION_NOW)->version; }

static struct curl_slist *to_slist(const fly_strlist *l, int *ok) {
  struct curl_slist *s = NULL;
  for (size_t i = 0; i < l->n; i++) {
    struct curl_slist *n = curl_slist_append(s, l->v[i]);
    if (!n) {
      curl_slist_free_all(s);
      *ok = 0;
      return NULL;
    }
    s = n;
  }
  return s;
}

int fly_curl_open(fly_client *c) {
  struct fly_curl *t = calloc(1, sizeof *t);
  if (!t) return 0;
  c->curl = t;
  int ok = 1;
  t->multi = curl_multi_init();
  t->headers = to_slist(&c->headers, &ok);
  t->json_headers = to_slist(&c->json_headers, &ok);
  return ok && t->multi;
}

static void easy_free(fly_easy *e) {
  curl_easy_cleanup(e->curl);
  free(e);
}

void fly_curl_close(fly_client *c) {
  struct fly_curl *t = c->curl;
  if (!t) return;
  for (int i = 0; i < t->npool; i++) easy_free(t->pool[i]);
  if (t->multi) curl_multi_cleanup(t->multi);
  curl_slist_free_all(t->headers);
  curl_slist_free_all(t->json_headers);
  free(t);
  c->curl = NULL;
}

void fly_curl_request_free(fly_request *r) {
  if (r->curl_headers) curl_slist_free_all(r->curl_headers), r->curl_headers = NULL;
}

/* Easy handles are reused: the options that never change for a client are
 * set once, when a handle is made; start_transfer sets the rest. */
static void pool_put(fly_client *c, fly_easy *e) {
  struct fly_curl *t = c->curl;
  if (t->npool < POOL_MAX) t->pool[t->npool++] = e;
  else easy_free(e);
}

static size_t on_body(char *data, size_t size, size_t n, void *ud);
static size_t on_header(char *line, size_t size, size_t n, void *ud);

static fly_easy *pool_get(fly_client *c) {
  struct fly_curl *t = c->curl;
  if (t->npool > 0) return t->pool[--t->npool];
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

void fly_curl_stop(fly_request *r) {
  if (r->admitting && r->client && r->client->redis) fly_redis_cancel(r->client->redis, r);
  r->admitting = 0;
  if (r->easy && r->client) {
    curl_multi_remove_handle(r->client->curl->multi, r->easy->curl);
    pool_put(r->client, r->easy);
  } else if (r->easy) {
    easy_free(r->easy);
  }
  r->easy = NULL;
}

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  size_t len = size * n;
  return fly_request_add_body(ud, data, len) ? len : 0; /* 0 aborts: CURLE_WRITE_ERROR */
}

static size_t on_header(char *line, size_t size, size_t n, void *ud) {
  fly_request *r = ud;
  size_t len = size * n;
  if (fly_reply_header(&r->reply, line, len)) fly_request_clear_body(r);
  return len;
}

static int start_transfer(fly_client *c, fly_request *r) {
  struct fly_curl *t = c->curl;
  if (r->wire.headers.n && !r->curl_headers) {
    int ok = 1;
    r->curl_headers = to_slist(&r->wire.headers, &ok);
    if (!ok) return 0;
  }
  fly_easy *fe = pool_get(c);
  if (!fe) return 0;
  CURL *e = fe->curl;
  r->easy = fe;
  fe->errbuf[0] = '\0';
  fly_reply_reset(&r->reply);
  fly_request_set_message(r, NULL);
  fly_request_clear_body(r);
  curl_easy_setopt(e, CURLOPT_URL, r->wire.url.p);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER,
                   r->curl_headers ? r->curl_headers : (r->wire.body ? t->json_headers : t->headers));
  /* the method, stated in full each time since the handle is reused */
  const char *m = r->op->method;
  int get = strcmp(m, "GET") == 0, post = strcmp(m, "POST") == 0;
  if (get || (!r->wire.body && strcmp(m, "DELETE") == 0)) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)r->wire.body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->wire.body ? r->wire.body : "");
  }
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, get || post ? NULL : m);
  /* libcurl silently resends a request whose reused connection closed before
   * any answer; for a call that is not safe to repeat that could run it twice,
   * so such calls always get a connection of their own. */
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, r->wire.safe ? 0L : 1L);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  long timeout = r->timeout_ms;
  if (r->retry.deadline > 0) {
    long left = (long)((r->retry.deadline - fly_now()) * 1000) + 1;
    if (left < 1) left = 1;
    if (timeout <= 0 || left < timeout) timeout = left;
  }
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
  if (curl_multi_add_handle(t->multi, e) != CURLM_OK) {
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

/* Ends a request and pushes it on the stack: a step returns the requests it
 * finished as its results. The stack space is made sure of first, so nothing
 * can fail once the request is ended. */
static void deliver(lua_State *L, fly_request *r, int *finished) {
  luaL_checkstack(L, 1, "fly: too many finished requests");
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  fly_request_finish(L, r);
  (*finished)++;
}

/* ------------------------------------------------ shared admission (Redis)
 *
 * With rate_limit.redis, a request (and each retry) is admitted twice: by the
 * process's bucket (request.c, classify.c), which gives a provisional ready
 * time, and by the same bucket in Redis. Until Redis answers, the request is
 * "admitting": queued but neither started nor counted by earliest(). Its
 * ready time is then the later of the two; when Redis is away the local one
 * stands (redis.h). The Redis socket is one more descriptor in the step's
 * poll and in sockets(), its timeout one more deadline in timeout(). */

/* The one place the limiter's warnings go: stderr, a line each. */
static void shared_warn(fly_client *c) {
  const char *w;
  while ((w = fly_redis_warning(c->redis))) fprintf(stderr, "%s\n", w);
}

/* Asks Redis for a place for r (penalize: after a 429); r waits "admitting"
 * for the answer unless the limiter is down (its local time stands). */
static void shared_admit(fly_client *c, fly_request *r, int penalize) {
  double now = fly_now();
  r->admitting = fly_redis_admit(c->redis, r->shared_key, r->retry.limit, penalize, r, now) == 0;
  /* send it now: the socket is writable but for a full buffer, which hiredis notices; the
     answer is read by the loop's next turns */
  if (r->admitting) fly_redis_io(c->redis, POLLOUT, now);
  shared_warn(c);
}

static void deliver(lua_State *L, fly_request *r, int *finished);

/* Lets the limiter read and write (revents from a poll, or -1: poll its
 * socket now without waiting), then settles the requests it answered. */
static void shared_io(lua_State *L, fly_client *c, short revents, int *finished) {
  if (!c->redis) return;
  if (revents < 0) {
    struct pollfd pfd = {0, 0, 0};
    pfd.fd = fly_redis_fd(c->redis, &pfd.events);
    revents = pfd.fd >= 0 && poll(&pfd, 1, 0) > 0 ? pfd.revents : 0;
  }
  double now = fly_now();
  fly_redis_io(c->redis, revents, now);
  fly_redis_answer a;
  while (fly_redis_next(c->redis, &a)) {
    fly_request *r = a.cookie;
    r->admitting = 0;
    if (a.status == FLY_REDIS_GRANTED) {
      double at = a.ready_at > now ? a.ready_at + c->rate_margin : a.ready_at;
      if (at > r->ready_at) r->ready_at = at;
    }
    if (r->retry.deadline > 0 && r->ready_at > r->retry.deadline) {
      r->reply.status = 0;
      fly_request_set_failure(r, "timeout", "the rate limit delays this request past its deadline", 1);
      deliver(L, r, finished);
    }
  }
  shared_warn(c);
}

/* The Redis socket as a curl_waitfd for the step's poll; 0 when none. */
static unsigned shared_waitfd(fly_client *c, struct curl_waitfd *w) {
  short events;
  int fd = c->redis ? fly_redis_fd(c->redis, &events) : -1;
  if (fd < 0 || !events) return 0;
  w->fd = fd;
  w->events = (short)((events & POLLIN ? CURL_WAIT_POLLIN : 0) | (events & POLLOUT ? CURL_WAIT_POLLOUT : 0));
  w->revents = 0;
  return 1;
}

/* Seconds until the limiter needs a turn though its socket is quiet, or +inf. */
static double shared_timeout(fly_client *c) {
  double t = c->redis ? fly_redis_next_timeout(c->redis, fly_now()) : -1;
  return t < 0 ? INFINITY : t;
}

/* ------------------------------------------------------------------------ */

/* libcurl is done with an attempt: classify it, then retry later or end. */
static void attempt_done(lua_State *L, fly_client *c, fly_request *r, CURLcode cc, int *finished) {
  long sent = 0;
  CURL *e = r->easy->curl;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->reply.status);
  curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &sent);
  r->reply.sent = sent > 0;
  if (cc != CURLE_OK) {
    fly_request_set_message(r, r->easy->errbuf[0] ? r->easy->errbuf : curl_easy_strerror(cc));
    r->reply.code = transport_code(cc);
  }
  curl_multi_remove_handle(c->curl->multi, e);
  pool_put(c, r->easy);
  r->easy = NULL;
  double at;
  if (fly_classify(&r->retry, &r->reply, fly_now(), &at) == FLY_RETRY) {
    r->state = REQ_QUEUED;
    r->ready_at = at;
    if (r->shared_key) shared_admit(c, r, r->reply.status == 429); /* a retry is another request */
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
    if (r->state != REQ_QUEUED || r->admitting) continue;
    if (r->kind == KIND_HTTP && r->retry.deadline > 0 && now >= r->retry.deadline) {
      r->reply.status = 0;
      fly_request_set_failure(r, "timeout", "deadline exceeded", 1);
      deliver(L, r, finished);
    } else if (r->ready_at <= now) {
      if (r->kind == KIND_TIMER) {
        deliver(L, r, finished);
      } else if (!start_transfer(c, r)) {
        fly_request_set_failure(r, "protocol", "could not start the transfer (out of memory)", 0);
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
    if (r->state != REQ_QUEUED || r->admitting) continue;
    double t = r->ready_at;
    if (r->kind == KIND_HTTP && r->retry.deadline > 0 && r->retry.deadline < t) t = r->retry.deadline;
    if (t < next) next = t;
  }
  return next;
}

static void harvest(lua_State *L, fly_client *c, int *finished) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(c->curl->multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    fly_request *r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    if (r) attempt_done(L, c, r, msg->data.result, finished);
  }
}

/* One turn: start what is ready, let libcurl work, and if nothing finished,
 * wait at most max_wait seconds on the sockets and the nearest deadline. */
static void step_once(lua_State *L, fly_client *c, int *finished, double max_wait) {
  CURLM *multi = c->curl->multi;
  int running;
  shared_io(L, c, -1, finished);
  launch_ready(L, c, finished);
  curl_multi_perform(multi, &running);
  harvest(L, c, finished); /* may queue retries: the earliest time is taken after */
  if (*finished == 0 && max_wait > 0 && c->live) {
    double now = fly_now();
    double wait = max_wait;
    double next = earliest(c);
    if (next - now < wait) wait = next - now;
    if (shared_timeout(c) < wait) wait = shared_timeout(c);
    long curl_ms = -1;
    curl_multi_timeout(multi, &curl_ms);
    if (curl_ms >= 0 && curl_ms / 1000.0 < wait) wait = curl_ms / 1000.0;
    if (wait > 3600) wait = 3600; /* the caller loops; keeps the int below in range */
    struct curl_waitfd extra;
    unsigned nextra = shared_waitfd(c, &extra);
    if (wait > 0) curl_multi_poll(multi, nextra ? &extra : NULL, nextra, (int)ceil(wait * 1000), NULL);
    if (c->redis)
      shared_io(L, c, !nextra || wait <= 0 ? -1 :
                (short)((extra.revents & CURL_WAIT_POLLIN ? POLLIN : 0) |
                        (extra.revents & CURL_WAIT_POLLOUT ? POLLOUT : 0)), finished);
    launch_ready(L, c, finished);
    curl_multi_perform(multi, &running);
    harvest(L, c, finished);
  }
}

/* client:_submit(operation_id, params, opts, level) -> Request, queued on
 * this client's libcurl loop: build and admit (request.c), then enqueue.
 * params: parameters by name and `body` (an encoded string). opts: timeout,
 * deadline (seconds from now), attempts. Raises on programmer errors, at call
 * level `level` (default 1: the caller). The fast path of every call. */
int fly_l_submit(lua_State *L) {
  int level = (int)luaL_optinteger(L, 5, 1);
  lua_settop(L, 4);
  fly_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  if (c->closed) return raise_at(L, level, "fly: client is closed");
  fly_request *r = fly_request_call(L, c, level);
  if (c->closed) return raise_at(L, level, "fly: client is closed");
  fly_request_pin(L, c, r, -1);
  if (r->retry.deadline > 0 && r->ready_at > r->retry.deadline)
    fly_request_fail(L, r, "timeout", "the rate limit delays this request past its deadline", 1);
  else if (r->shared_key)
    shared_admit(c, r, 0);
  return 1;
}

/* client:_timer(seconds) -> Request that finishes after that many seconds */
int fly_l_timer(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  double s = luaL_checknumber(L, 2);
  fly_request *r = fly_request_new(L, KIND_TIMER);
  r->ready_at = fly_now() + (s > 0 ? s : 0);
  fly_request_pin(L, c, r, lua_gettop(L));
  return 1;
}

/* client:_step(max_wait) -> the requests that finished (as results).
 * Waits at most max_wait seconds for something to happen. */
int fly_l_step(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  double max_wait = luaL_optnumber(L, 2, 0);
  lua_settop(L, 2);
  int finished = 0;
  step_once(L, c, &finished, max_wait);
  return finished;
}

/* client:_step_until(request) -> the requests that finished (as results).
 * Steps until `request` or any other request finishes: a plain call needs
 * one trip into C instead of one per turn. */
int fly_l_step_until(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  fly_request *r = fly_check_request(L, 2);
  lua_settop(L, 2);
  int finished = 0;
  while (r->state != REQ_DONE && finished == 0 && c->live) step_once(L, c, &finished, 1.0);
  return finished;
}

/* client:_wait(request): steps until `request` finishes. For plain calls on
 * a client with no tasks: nobody else waits for anything, so the other
 * requests that finish meanwhile are simply left finished. */
int fly_l_wait(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  fly_request *r = fly_check_request(L, 2);
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
int fly_l_timeout(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  if (!c->live) return lua_pushnil(L), 1;
  double wait = earliest(c) - fly_now();
  if (shared_timeout(c) < wait) wait = shared_timeout(c);
  long curl_ms = -1;
  curl_multi_timeout(c->curl->multi, &curl_ms);
  if (curl_ms >= 0 && curl_ms / 1000.0 < wait) wait = curl_ms / 1000.0;
  if (wait == INFINITY) wait = 1.0; /* only sockets: wake up now and then anyway */
  lua_pushnumber(L, wait < 0 ? 0 : wait);
  return 1;
}

/* client:_sockets() -> { [fd] = "r" | "w" | "rw" }: the sockets libcurl
 * waits on right now (as curl_multi_fdset reports them, so descriptors up to
 * FD_SETSIZE). The set changes after every step, and a number may be reused
 * for a new connection: watchers are best made anew after each step. */
int fly_l_sockets(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  fd_set r, w, x;
  int maxfd = -1;
  FD_ZERO(&r);
  FD_ZERO(&w);
  FD_ZERO(&x);
  curl_multi_fdset(c->curl->multi, &r, &w, &x, &maxfd);
  lua_createtable(L, 0, maxfd + 1 > 0 ? maxfd + 1 : 0);
  for (int fd = 0; fd <= maxfd && fd < FD_SETSIZE; fd++) {
    int rd = FD_ISSET(fd, &r), wr = FD_ISSET(fd, &w);
    if (!rd && !wr) continue;
    lua_pushstring(L, rd && wr ? "rw" : rd ? "r" : "w");
    lua_rawseti(L, -2, fd);
  }
  struct curl_waitfd extra; /* the shared limiter's socket */
  if (shared_waitfd(c, &extra)) {
    int rd = extra.events & CURL_WAIT_POLLIN, wr = extra.events & CURL_WAIT_POLLOUT;
    lua_pushstring(L, rd && wr ? "rw" : rd ? "r" : "w");
    lua_rawseti(L, -2, extra.fd);
  }
  return 1;
}
