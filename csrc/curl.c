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

#include <arpa/inet.h>
#include <curl/curl.h>
#include <lauxlib.h>
#include <math.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include "json.h"
#include "redis.h"
#include "request.h"
#include "trace.h"
#include "util.h"

#define POOL_MAX 32
#define STREAMS_MAX 100L /* HTTP/2 streams per connection */
/* HTTP/2 connections to the host at most: calls beyond their streams wait for one to end. Until
   a connection shows the server speaks only HTTP/1.1 (then each call needs its own). */
#define H2_CONNECTIONS_MAX 4L
#define KEEPALIVE_IDLE 30     /* seconds idle before the first TCP keep-alive probe */
#define KEEPALIVE_INTERVAL 15 /* seconds between probes */

/* libcurl's message when it stops sending a request again (Curl_retry_request),
 * which it writes only when no earlier failure left one. */
#define REFUSED_GIVE_UP "Connection died, tried "

/* Why the pre-request callback stopped an attempt (see on_prereq). */
enum { STOP_NONE, STOP_STALE, STOP_RESEND };

struct fly_curl;

/* An easy handle and the error buffer libcurl writes into, kept together in
 * the client's pool (so a request does not carry 256 bytes for a message it
 * rarely gets), with what the pre-request callback knows of the attempt. */
typedef struct fly_easy {
  CURL *curl;
  struct fly_curl *t;          /* the client's transport, for its sockets */
  int watched;                 /* a call not safe to repeat: on_prereq guards its sends */
  struct fly_request *paced;   /* a rate-limited request: on_prereq tells its bucket when it goes */
  int hooked;                  /* on_prereq is set on the handle (once, on its first transfer) */
  int sends;                   /* times libcurl was about to send it */
  long connects;               /* connections it made, at the last send */
  int h2;                      /* the last send went over HTTP/2 */
  int unclear;                 /* a send was made again after one the server may have processed
                                  (not a refused HTTP/2 stream) */
  int stop;                    /* STOP_*: why on_prereq stopped it */
  /* while `paced` has started and not gone out: in the transport's list of
     such handles (see behind_unsent), with a hash of its bucket's key */
  struct fly_easy *uprev, *unext;
  int in_unsent;
  uint64_t key_hash;
  char errbuf[CURL_ERROR_SIZE];
} fly_easy;

struct fly_curl {
  CURLM *multi;
  struct curl_slist *headers;      /* owned: the client's shared list */
  struct curl_slist *json_headers; /* owned: the same plus Content-Type */
  fly_easy *pool[POOL_MAX];
  int npool;
  /* the sockets libcurl opened for this client and has not closed (on_sockopt adds one,
     on_close_socket takes it out), with their ports once read (see find_socket) */
  struct fly_socket {
    int fd, local_port, remote_port; /* the ports: 0 until read */
  } *opened;                         /* owned */
  int nopened, opened_cap;
  /* The sockets libcurl waits on, kept by its socket callback (on_socket):
   * socks[i] is the socket libcurl knows as index i + 1 (curl_multi_assign). */
  struct pollfd *socks; /* owned */
  int nsocks, socks_cap;
  struct pollfd *ready; /* owned: a step's copy of the ready sockets, socks_cap long */
  int ready_cap;
  int cursor;           /* where the next step starts among ready sockets (round robin) */
  double timer_at;      /* when libcurl wants CURL_SOCKET_TIMEOUT (on_timer); INFINITY: never */
  int backlog;          /* the last step ran out of budget with work left */
  int unread;           /* libcurl acted since its queue of finished transfers was last found empty */
  fly_easy *unsent;     /* the rate-limited transfers started and not sent yet (see behind_unsent) */
  int https;            /* the base URL is https: HTTP/2 may be negotiated */
  int only_h1;          /* a connection of this client went without HTTP/2: its server has none */
  long host_cap;        /* CURLMOPT_MAX_HOST_CONNECTIONS in force (0: none) */
};

/* A hash of a bucket's key, to tell most keys apart without comparing them. */
static uint64_t key_hash(const char *key) { return fnv64(14695981039346656037ull, key, strlen(key)); }

/* Links a handle whose rate-limited request has started into the list of
 * those not sent yet. */
static void unsent_link(struct fly_curl *t, fly_easy *e) {
  e->key_hash = key_hash(e->paced->retry.rate_key);
  e->uprev = NULL;
  e->unext = t->unsent;
  if (t->unsent) t->unsent->uprev = e;
  t->unsent = e;
  e->in_unsent = 1;
}

/* Takes a handle out of that list: its request went out, or its attempt
 * ended without sending. */
static void unsent_unlink(struct fly_curl *t, fly_easy *e) {
  if (!e->in_unsent) return;
  if (e->uprev) e->uprev->unext = e->unext;
  else t->unsent = e->unext;
  if (e->unext) e->unext->uprev = e->uprev;
  e->uprev = e->unext = NULL;
  e->in_unsent = 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }
void fly_curl_global_init(void) { pthread_once(&curl_once, curl_init_once); }

const char *fly_curl_version(void) { return curl_version_info(CURLVERSION_NOW)->version; }

/* The header lines for libcurl. A request without a body gets "Content-Type:"
 * too, which tells libcurl to leave out the form type it would otherwise give
 * a POST (start, stop, cordon, ...). */
static struct curl_slist *to_slist(const fly_strlist *l, int body, int *ok) {
  struct curl_slist *s = NULL;
  size_t n_lines = l->n + (body ? 0 : 1);
  for (size_t i = 0; i < n_lines; i++) {
    struct curl_slist *n = curl_slist_append(s, i < l->n ? l->v[i] : "Content-Type:");
    if (!n) {
      curl_slist_free_all(s);
      *ok = 0;
      return NULL;
    }
    s = n;
  }
  return s;
}

/* Doubles the room for sockets to wait on; 0 when out of memory. */
static int socks_grow(struct fly_curl *t) {
  int cap = t->socks_cap ? t->socks_cap * 2 : 16;
  struct pollfd *n = realloc(t->socks, (size_t)cap * sizeof *n);
  if (!n) return 0;
  t->socks = n;
  t->socks_cap = cap;
  return 1;
}

/* CURLMOPT_SOCKETFUNCTION: libcurl tells what to wait for on a socket. Only
 * the client's socket table changes; -1 (out of memory) aborts the transfers. */
static int on_socket(CURL *e, curl_socket_t s, int what, void *ud, void *sockp) {
  struct fly_curl *t = ud;
  int i = (int)(intptr_t)sockp - 1;
  (void)e;
  if (i < 0 || i >= t->nsocks || t->socks[i].fd != s) i = -1;
  if (what == CURL_POLL_REMOVE) {
    if (i < 0) return 0;
    if (i != --t->nsocks) { /* the last one moves into the gap */
      t->socks[i] = t->socks[t->nsocks];
      curl_multi_assign(t->multi, t->socks[i].fd, (void *)(intptr_t)(i + 1));
    }
    return 0;
  }
  if (i < 0) {
    if (t->nsocks == t->socks_cap && !socks_grow(t)) return -1;
    i = t->nsocks++;
    t->socks[i].fd = s;
    curl_multi_assign(t->multi, s, (void *)(intptr_t)(i + 1));
  }
  t->socks[i].events = (short)((what & CURL_POLL_IN ? POLLIN : 0) | (what & CURL_POLL_OUT ? POLLOUT : 0));
  t->socks[i].revents = 0;
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: when libcurl next wants CURL_SOCKET_TIMEOUT. */
static int on_timer(CURLM *m, long ms, void *ud) {
  struct fly_curl *t = ud;
  (void)m;
  t->timer_at = ms < 0 ? INFINITY : fly_now() + ms / 1000.0;
  return 0;
}

int fly_curl_open(fly_client *c) {
  struct fly_curl *t = calloc(1, sizeof *t);
  if (!t) return 0;
  c->curl = t;
  int ok = 1;
  t->timer_at = INFINITY;
  t->multi = curl_multi_init();
  t->headers = to_slist(&c->headers, 0, &ok);
  t->json_headers = to_slist(&c->json_headers, 1, &ok);
  if (!t->multi) return 0;
  /* HTTP/2 when the server offers it: concurrent requests share a connection */
  curl_multi_setopt(t->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  curl_multi_setopt(t->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, STREAMS_MAX);
  /* without a cap, libcurl 7.88 opens a connection for every call past a full one's streams (its
     calls do not wait for the second connection being opened): 200 calls at once took 101 */
  t->https = strncasecmp(c->base_url, "https:", 6) == 0;
  t->host_cap = t->https ? H2_CONNECTIONS_MAX : 0;
  if (t->host_cap) curl_multi_setopt(t->multi, CURLMOPT_MAX_HOST_CONNECTIONS, t->host_cap);
  curl_multi_setopt(t->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(t->multi, CURLMOPT_SOCKETDATA, t);
  curl_multi_setopt(t->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(t->multi, CURLMOPT_TIMERDATA, t);
  return ok;
}

static void easy_free(fly_easy *e) {
  curl_easy_cleanup(e->curl);
  free(e);
}

void fly_curl_close(fly_client *c) {
  struct fly_curl *t = c->curl;
  if (!t) return;
  for (int i = 0; i < t->npool; i++) easy_free(t->pool[i]);
  if (t->multi) curl_multi_cleanup(t->multi); /* may still call on_socket */
  free(t->socks);
  free(t->ready);
  free(t->opened); /* after the multi: closing its connections calls on_close_socket */
  curl_slist_free_all(t->headers);
  curl_slist_free_all(t->json_headers);
  free(t);
  c->curl = NULL;
}

void fly_curl_request_free(fly_request *r) {
  if (r->curl_headers) curl_slist_free_all(r->curl_headers), r->curl_headers = NULL;
}

/* Easy handles are reused: the options that never change for a client are
 * set once, when a handle is made; start_transfer sets the rest. Not one
 * that libcurl may have counted a resend on (one it made, or one it meant
 * to make when the transfer failed): libcurl 7.88 keeps that count on the
 * handle from transfer to transfer and gives up on the resend that takes it
 * past 5, so a reused handle would fail a later call's first resend with
 * "Connection died, tried 5 times", and the message would not mean what
 * attempt_done reads in it. */
static void pool_put(fly_client *c, fly_easy *e, int failed) {
  struct fly_curl *t = c->curl;
  unsent_unlink(t, e);
  e->paced = NULL; /* the request it carried may go now */
  if (t->npool < POOL_MAX && e->sends <= 1 && !failed) t->pool[t->npool++] = e;
  else easy_free(e);
}

static size_t on_body(char *data, size_t size, size_t n, void *ud);
static size_t on_header(char *line, size_t size, size_t n, void *ud);
static int on_prereq(void *ud, char *remote_ip, char *local_ip, int remote_port, int local_port);
static int on_sockopt(void *ud, curl_socket_t fd, curlsocktype purpose);
static int on_close_socket(void *ud, curl_socket_t fd);

static fly_easy *pool_get(fly_client *c) {
  struct fly_curl *t = c->curl;
  if (t->npool > 0) return t->pool[--t->npool];
  fly_easy *fe = calloc(1, sizeof *fe);
  if (!fe) return NULL;
  CURL *e = fe->curl = curl_easy_init();
  if (!e) return free(fe), NULL;
  fe->t = t;
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, fe->errbuf);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, fe);
  curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, on_sockopt);
  curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, t);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket); /* a connection keeps it */
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, t);
  /* over TLS the server may offer HTTP/2: a request waits for a connection
     in progress to share it rather than open its own. Plain HTTP is
     HTTP/1.1 only, where waiting would only delay. */
  if (strncasecmp(c->base_url, "https:", 6) == 0) curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
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
  /* TCP keep-alive probes on the client's connections once idle for
     KEEPALIVE_IDLE seconds, then every KEEPALIVE_INTERVAL: they keep a
     middlebox's mapping of a warm connection alive, and a peer that has
     forgotten the connection answers one with a reset, which libcurl's check
     before reuse then sees, so the next call opens a new connection instead
     of sending into a dead one. */
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, (long)KEEPALIVE_IDLE);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, (long)KEEPALIVE_INTERVAL);
  if (c->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, c->insecure ? 0L : 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, c->insecure ? 0L : 2L);
  return fe;
}

void fly_curl_note(fly_request *r) {
  if (r->easy && r->easy->sends > 1) r->reply.resends = r->easy->sends - 1;
  if (r->easy && r->easy->unclear) r->reply.unclear_resend = 1;
}

int fly_curl_went_out(const fly_request *r) { return r->easy && r->easy->sends > 0; }

static void shared_refund(fly_client *c, fly_request *r);

void fly_curl_stop(fly_request *r) {
  fly_redis *redis = r->client ? r->client->redis : NULL;
  if (r->admitting && redis && fly_redis_cancel(redis, r)) r->shared_taken = 1;
  r->admitting = 0;
  if (r->shared_taken && redis) shared_refund(r->client, r); /* it never went out */
  if (r->easy && r->client) {
    curl_multi_remove_handle(r->client->curl->multi, r->easy->curl);
    pool_put(r->client, r->easy, 1); /* stopped in the middle: whatever libcurl counted goes with it */
  } else if (r->easy) {
    easy_free(r->easy);
  }
  r->easy = NULL;
}

/* Body bytes, decoded (gzip, deflate) when the server compressed them:
 * past max_body the transfer stops (0 aborts: CURLE_WRITE_ERROR). */
static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  fly_request *r = ud;
  size_t len = size * n;
  if (len) r->reply.body_seen = 1;
  return fly_request_add_body(r, data, len) ? len : 0;
}

static size_t on_header(char *line, size_t size, size_t n, void *ud) {
  fly_request *r = ud;
  size_t len = size * n;
  if (fly_reply_header(&r->reply, line, len)) fly_request_clear_body(r);
  return len;
}

/* Remembers a socket libcurl opens for this client (before it connects): the
 * client's sockets are known exactly, however many it has had at once. A
 * number already there is a socket closed without a word (libcurl closes a
 * connection's sockets through on_close_socket): its ports are read again.
 * Out of memory: the connection fails before anything is sent on it. */
static int on_sockopt(void *ud, curl_socket_t fd, curlsocktype purpose) {
  struct fly_curl *t = ud;
  (void)purpose;
  for (int i = 0; i < t->nopened; i++)
    if (t->opened[i].fd == (int)fd) {
      t->opened[i].local_port = t->opened[i].remote_port = 0;
      return CURL_SOCKOPT_OK;
    }
  if (t->nopened == t->opened_cap) {
    int cap = t->opened_cap ? t->opened_cap * 2 : 16;
    struct fly_socket *n = realloc(t->opened, (size_t)cap * sizeof *n);
    if (!n) return CURL_SOCKOPT_ERROR;
    t->opened = n;
    t->opened_cap = cap;
  }
  t->opened[t->nopened++] = (struct fly_socket){(int)fd, 0, 0};
  return CURL_SOCKOPT_OK;
}

/* CURLOPT_CLOSESOCKETFUNCTION: libcurl closes one of the client's sockets
 * (a connection keeps the callback of the handle that made it, so this
 * comes also while the multi handle is cleaned up). */
static int on_close_socket(void *ud, curl_socket_t fd) {
  struct fly_curl *t = ud;
  for (int i = 0; i < t->nopened; i++)
    if (t->opened[i].fd == (int)fd) {
      t->opened[i] = t->opened[--t->nopened];
      break;
    }
  return close(fd) == 0 ? 0 : 1;
}

static int port_of(const struct sockaddr_storage *a) {
  if (a->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)a)->sin_port);
  if (a->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
  return -1;
}

/* Reads the ports of a connected socket: 0 when it has none (yet). */
static int read_ports(int fd, int *local_port, int *remote_port) {
  struct sockaddr_storage a;
  socklen_t n = sizeof a;
  if (getsockname(fd, (struct sockaddr *)&a, &n) != 0 || (*local_port = port_of(&a)) <= 0) return 0;
  n = sizeof a;
  if (getpeername(fd, (struct sockaddr *)&a, &n) != 0 || (*remote_port = port_of(&a)) <= 0) return 0;
  return 1;
}

/* The socket of the connection with these ports, among the client's; -1
 * when none matches. Ports are read once per socket; the one that matches
 * is read again, so that a number reused behind libcurl's back is not
 * trusted. */
static int find_socket(struct fly_curl *t, int local_port, int remote_port) {
  for (int i = 0; i < t->nopened; i++) {
    struct fly_socket *s = &t->opened[i];
    int lp, rp;
    if (!s->local_port) {
      if (!read_ports(s->fd, &lp, &rp)) continue; /* still connecting */
      s->local_port = lp, s->remote_port = rp;
      if (lp == local_port && rp == remote_port) return s->fd;
    } else if (s->local_port == local_port && s->remote_port == remote_port) {
      if (read_ports(s->fd, &lp, &rp) && lp == local_port && rp == remote_port) return s->fd;
      s->local_port = s->remote_port = 0; /* not what it was: read again next time */
    }
  }
  return -1;
}

/* Whether the connection the transfer is on speaks HTTP/2: TLS with "h2"
 * chosen by ALPN (libcurl never speaks HTTP/2 over plain HTTP unless told
 * to, and this client never tells it). */
static int on_h2(CURL *e) {
  struct curl_tlssessioninfo *tls = NULL;
  if (curl_easy_getinfo(e, CURLINFO_TLS_SSL_PTR, &tls) != CURLE_OK || !tls || !tls->internals ||
      tls->backend != CURLSSLBACKEND_OPENSSL)
    return 0;
  const unsigned char *alpn = NULL;
  unsigned int n = 0;
  SSL_get0_alpn_selected((SSL *)tls->internals, &alpn, &n);
  return n == 2 && memcmp(alpn, "h2", 2) == 0;
}

/* Runs before libcurl sends the request on a connection: the first send,
 * and again for every resend libcurl makes on its own (Curl_retry_request:
 * a reused connection that failed before any response byte, a refused
 * HTTP/2 stream). Set for every call: the trace's `finish` tells its resends,
 * and a resend after a send the server may have processed (anything but a
 * refused HTTP/2 stream) makes a failed call say it may have run.
 *
 * A rate-limited request's send tells its bucket when it went
 * (fly_rate_sent): one that waited for a new connection's handshakes goes
 * later than its bucket planned, and so reaches the server later (the
 * requests behind it wait for that: see launch_ready).
 *
 * Calls not safe to repeat are guarded (the others go on unchecked,
 * libcurl's resend included):
 *
 * - A resend is vetoed (STOP_RESEND: the attempt is ambiguous) unless the
 *   previous send went over HTTP/2 and libcurl recorded no failure for it:
 *   in libcurl that is a stream the server refused (RST_STREAM
 *   REFUSED_STREAM, or above the last stream of a GOAWAY), which the
 *   protocol says was not processed. A dropped HTTP/2 connection or stream
 *   always leaves an error message.
 * - An idle HTTP/1.1 connection with bytes or EOF waiting was closed by the
 *   server (over TLS its close_notify makes libcurl's liveness check call it
 *   alive): stopped before anything is sent (STOP_STALE), and not reused. */
static int on_prereq(void *ud, char *remote_ip, char *local_ip, int remote_port, int local_port) {
  fly_easy *fe = ud;
  (void)remote_ip, (void)local_ip;
  /* a resend after anything but a refused HTTP/2 stream (which left no error): the send before
     may have been processed */
  if (fe->sends > 0 && !(fe->h2 && fe->errbuf[0] == '\0')) {
    if (fe->watched) {
      fe->stop = STOP_RESEND;
      return CURL_PREREQFUNC_ABORT;
    }
    fe->unclear = 1;
  }
  int h2 = fe->t->https && (fe->watched || !fe->t->only_h1) ? on_h2(fe->curl) : 0;
  if (fe->t->https && !h2) fe->t->only_h1 = 1; /* the cap goes once libcurl is out of its call */
  fe->h2 = h2;
  if (fe->watched) {
    long connects = 0;
    curl_easy_getinfo(fe->curl, CURLINFO_NUM_CONNECTS, &connects);
    int reused = connects == fe->connects;
    fe->connects = connects;
    if (reused && !fe->h2) {
      /* a socket not found (never, while the client knows its sockets) is taken as closed */
      int fd = find_socket(fe->t, local_port, remote_port);
      struct pollfd p = {.fd = fd, .events = POLLIN};
      if (fd < 0 || poll(&p, 1, 0) != 0) {
        fe->stop = STOP_STALE;
        curl_easy_setopt(fe->curl, CURLOPT_FORBID_REUSE, 1L); /* it is closed when this attempt ends */
        return CURL_PREREQFUNC_ABORT;
      }
    }
  }
  if (fe->paced) { /* the server counts it from now */
    fly_retry *p = &fe->paced->retry;
    unsent_unlink(fe->t, fe);
    fly_rate_sent(p->rate_key, p->limit, &fe->paced->ready_at, &p->mark, fly_now());
    p->mark.taken = 0; /* the token is spent: the request goes out */
    fe->paced->shared_taken = 0; /* and Redis's */
  }
  fe->sends++;
  return CURL_PREREQFUNC_OK;
}

static int start_transfer(fly_client *c, fly_request *r) {
  struct fly_curl *t = c->curl;
  if (r->wire.headers.n && !r->curl_headers) {
    int ok = 1;
    r->curl_headers = to_slist(&r->wire.headers, r->wire.body != NULL, &ok);
    if (!ok) return 0;
  }
  fly_easy *fe = pool_get(c);
  if (!fe) return 0;
  CURL *e = fe->curl;
  r->easy = fe;
  fe->errbuf[0] = '\0';
  fe->watched = !r->wire.safe; /* only calls not safe to repeat are watched */
  fe->paced = r->retry.rate_key ? r : NULL;
  if (!fe->hooked) { /* every call's resends are counted: a resend says the first send went out */
    fe->hooked = 1;
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  }
  fe->sends = fe->h2 = fe->unclear = 0;
  if (fe->paced) unsent_link(t, fe);
  fe->connects = 0;
  if (fe->stop == STOP_STALE) curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 0L);
  fe->stop = STOP_NONE;
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
  /* every call goes on a warm connection when there is one: on_prereq keeps
     libcurl from sending a call that is not safe to repeat a second time */
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  long timeout = r->timeout_ms;
  if (r->retry.deadline > 0) {
    long left = (long)((r->retry.deadline - fly_now()) * 1000) + 1;
    if (left < 1) left = 1;
    if (timeout <= 0 || left < timeout) timeout = left;
  }
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
  r->retry.started = fly_now();
  if (curl_multi_add_handle(t->multi, e) != CURLM_OK) {
    pool_put(c, fe, 0);
    r->easy = NULL;
    return 0;
  }
  fly_request_set_state(r, REQ_ACTIVE);
  if (r->trace) fly_trace_start(r, fly_wire_headers(&r->wire, &c->base), fly_now());
  return 1;
}

static const char *transport_code(CURLcode cc, long http_version) {
  switch (cc) {
  case CURLE_PARTIAL_FILE:
    /* over HTTP/1.1 (an answer came, so its version is known): a body
       shorter than its Content-Length, a truncated answer. Otherwise
       HTTP/2, where a stream ends explicitly (a short body with END_STREAM
       is a stream error, 92): the stream or its connection was cut off,
       before or during the answer. */
    if (http_version == CURL_HTTP_VERSION_1_0 || http_version == CURL_HTTP_VERSION_1_1) return "protocol";
    return "reset";
  case CURLE_HTTP2_STREAM: /* the server reset the stream (RST_STREAM), before or during the answer */
    return "reset";
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

/* Whether the stack has room for one more finished request, and for the two
 * values a budgeted step returns before them. When it has not (Lua 5.1 and
 * LuaJIT let a C function hold about 8000 values), the rest of the work waits
 * for the next step (backlog), which starts with an empty stack: each place
 * that may end a request asks before it takes the work in hand, so that no
 * request is left half done. */
static int room(lua_State *L, struct fly_curl *t) {
  if (lua_checkstack(L, 3)) return 1;
  t->backlog = 1;
  return 0;
}

/* Ends a request and pushes it on the stack: a step returns the requests it
 * finished as its results. The caller made sure of the stack space (room),
 * so nothing fails once the request is ended. */
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

/* The limiter's news (unavailable, available again): to the trace hook when
 * the client has one (and its queue has room), else a line on stderr. */
static void shared_warn(fly_client *c) {
  const char *w;
  int available;
  while ((w = fly_redis_warning(c->redis, &available)))
    if (!c->trace || !fly_trace_limiter(c->trace, w, available, fly_now())) fprintf(stderr, "%s\n", w);
}

/* Gives Redis back the token it took for r's attempt, which never went out. */
static void shared_refund(fly_client *c, fly_request *r) {
  double now = fly_now();
  r->shared_taken = 0;
  fly_redis_refund(c->redis, r->shared_key, r->retry.limit, now);
  fly_redis_io(c->redis, POLLOUT, now); /* sent now, as an admission is */
  shared_warn(c);
}

/* Asks Redis for a place for r (penalize: after a 429); r waits "admitting"
 * for the answer unless the limiter is down (its local time stands). */
static void shared_admit(fly_client *c, fly_request *r, int penalize) {
  double now = fly_now();
  /* a request Redis would delay past its deadline takes no token there (after a 429 the bucket
     is emptied all the same) */
  double latest = fly_request_latest(r) - now - c->rate_margin;
  r->admitting = fly_redis_admit(c->redis, r->shared_key, r->retry.limit, penalize, latest, r, now) == 0;
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
  while (room(L, c->curl) && fly_redis_next(c->redis, &a)) { /* the rest wait in the limiter */
    fly_request *r = a.cookie;
    r->admitting = 0;
    r->shared_taken = a.status == FLY_REDIS_GRANTED && a.took;
    if (a.status == FLY_REDIS_GRANTED) {
      double at = a.ready_at + c->rate_margin; /* r->ready_at: the local bucket's, never past */
      if (at > r->ready_at) r->ready_at = at;
    }
    if (!fly_request_fits(r, r->ready_at)) {
      fly_request_out_of_time(r, "the rate limit delays this request past its deadline");
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
  long sent = 0, version = 0;
  fly_easy *fe = r->easy;
  CURL *e = fe->curl;
  int stop = cc == CURLE_ABORTED_BY_CALLBACK ? fe->stop : STOP_NONE;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->reply.status);
  curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &sent);
  r->reply.sent = sent > 0;
  fly_curl_note(r); /* the resends, counted when on_prereq is set */
  if (stop == STOP_RESEND) {
    /* it went out once and the connection failed before any answer */
    r->reply.sent = 1;
    r->reply.code = "reset";
    fly_request_set_message(r, "the connection failed before any answer; the request may have been "
                               "executed, so it was not sent again");
  } else if ((cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR) && fe->watched && fe->h2 &&
             strncmp(fe->errbuf, REFUSED_GIVE_UP, sizeof REFUSED_GIVE_UP - 1) == 0) {
    /* libcurl sent it again after each refused stream (on_prereq let it: nothing else left an
       error) until it gave up: the server processed none of the sends, so it may be retried */
    r->reply.sent = 0;
    r->reply.code = "reset";
    fly_request_set_message(r, "the server refused the request's HTTP/2 stream each time (not processed)");
  } else if (cc != CURLE_OK) {
    curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &version);
    fly_request_set_message(r, fe->errbuf[0] ? fe->errbuf : curl_easy_strerror(cc));
    r->reply.code = transport_code(cc, version);
  }
  curl_multi_remove_handle(c->curl->multi, e);
  pool_put(c, fe, cc != CURLE_OK && !(stop == STOP_STALE && fe->sends == 0)); /* that stop came first */
  r->easy = NULL;
  if (stop == STOP_STALE) { /* nothing was sent: again at once, on another connection */
    r->reply.code = NULL;
    r->retry.took = 0; /* the same attempt, started within the time it had: only the deadline bounds it */
    fly_request_set_state(r, REQ_QUEUED);
    r->ready_at = fly_now();
    return;
  }
  fly_request_accept(r);
  double at = 0, now = fly_now();
  /* an attempt that never went out (no connection) gives its token back: a retry takes its own */
  if (r->retry.rate_key) fly_rate_refund(r->retry.rate_key, r->retry.limit, &r->retry.mark, now);
  if (r->shared_taken) shared_refund(c, r);
  int verdict = fly_classify(&r->retry, &r->reply, now, &at);
  if (r->trace) fly_trace_attempt(r, verdict, now, at);
  if (verdict == FLY_RETRY) {
    fly_request_set_state(r, REQ_QUEUED);
    r->ready_at = at;
    if (r->shared_key) shared_admit(c, r, r->reply.status == 429); /* a retry is another request */
    return;
  }
  /* a 429 that is the answer empties the shared bucket all the same */
  if (r->shared_key && c->redis && r->reply.status == 429 && !r->reply.code) {
    fly_redis_penalize(c->redis, r->shared_key, r->retry.limit, now);
    fly_redis_io(c->redis, POLLOUT, now); /* sent now, as an admission is */
    shared_warn(c);
  }
  deliver(L, r, finished);
}

/* Lets libcurl do what its timer asked for, if the time has come. libcurl
 * 7.88 does not always tell on_timer that it has no timer left (its last
 * time would stay, in the past, and every wait would end at once: a busy
 * loop while calls wait for their rate-limit slot), so a time that is still
 * past after the run is read again from curl_multi_timeout. */
/* Lifts the cap on connections once the server showed it speaks only
 * HTTP/1.1 (from outside libcurl's calls: not from a callback). Calls the cap
 * held back go when a call in flight ends. */
static void uncap(struct fly_curl *t) {
  if (t->only_h1 && t->host_cap) {
    t->host_cap = 0;
    curl_multi_setopt(t->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
  }
}

static void run_timer(struct fly_curl *t) {
  int running;
  if (t->timer_at <= fly_now()) {
    curl_multi_socket_action(t->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    t->unread = 1;
    uncap(t);
    long ms;
    double now = fly_now();
    if (t->timer_at <= now && curl_multi_timeout(t->multi, &ms) == CURLM_OK)
      t->timer_at = ms < 0 ? INFINITY : now + (double)ms / 1000.0;
  }
}

/* The parts of a step whose work a budget holds back (the stages). */
enum { STAGE_SOCKETS = 1, STAGE_HARVEST, STAGE_LAUNCH };

/* A step's time budget. A unit of work (a ready socket, a finished attempt,
 * a start) begins only while the clock is before `end`, except the first
 * unit of the whole poll (so that every poll makes progress) and the first
 * unit of the stage whose turn it is (`free`, which the caller rotates, so
 * that no stage waits for ever behind the others). A poll therefore ends at
 * most two units past its budget. */
typedef struct {
  double end; /* INFINITY: no limit */
  int free;   /* the stage (STAGE_*) whose first unit may begin past `end`; 0: none, or used */
  int did;    /* a unit of this poll has begun (here or before the step, in the Lua loop) */
} budget;

/* Whether a unit of `stage` may begin now. */
static int may_begin(const budget *b, int stage) {
  return b->end == INFINITY || !b->did || b->free == stage || fly_now() < b->end;
}

/* Counts a unit of `stage` as begun. */
static void begin(budget *b, int stage) {
  if (b->free == stage) b->free = 0;
  b->did = 1;
}

/* Whether r is behind another request on its bucket that has started and
 * not gone out yet, and was ready more than FLY_RATE_SLACK before r (r had to
 * wait for its token, or came later): one that waits for a name, a
 * connection or a stream, as the requests of a fresh client's burst do. Its
 * send may push the bucket back (fly_rate_sent), so r waits until it has
 * gone: started now, r would wait for the same name or connection and go out
 * with it, early. Requests ready as early as it (the rest of its burst) go
 * along with it. Only this client's requests count. */
static int behind_unsent(fly_client *c, const fly_request *r) {
  fly_easy *e = c->curl->unsent;
  if (!e) return 0; /* the common case */
  uint64_t h = key_hash(r->retry.rate_key);
  for (; e; e = e->unext) {
    const fly_request *q = e->paced;
    if (e->key_hash == h && q != r && r->ready_at > q->ready_at + FLY_RATE_SLACK &&
        strcmp(q->retry.rate_key, r->retry.rate_key) == 0)
      return 1;
  }
  return 0;
}

/* How often a request held behind an unsent one looks again (the sends
 * themselves happen in the same steps, so this only bounds a missed one). */
#define HOLD_RECHECK 0.005

/* Starts the queued requests whose time has come, oldest first, and ends
 * timers and requests whose deadline passed, while the budget lets them
 * (the rest waits for the next step). A rate-limited request waits while
 * another on its bucket has started and not gone out, then for the time its
 * bucket was pushed back meanwhile. */
static void launch_ready(lua_State *L, fly_client *c, int *finished, budget *b) {
  struct fly_curl *t = c->curl;
  double now = fly_now();
  int limited = b->end < INFINITY;
  for (fly_request *r = c->queue, *next; r; r = next) {
    next = r->qnext; /* r may leave the queue, and no other request does meanwhile */
    if (r->admitting) { /* waits for the shared limiter's answer, within its deadline */
      if (r->kind != KIND_HTTP || fly_request_fits(r, now)) continue;
      if (!room(L, t)) break;
      if (!may_begin(b, STAGE_LAUNCH)) {
        t->backlog = 1;
        break;
      }
      begin(b, STAGE_LAUNCH);
      /* its admission is cancelled as it finishes: a token Redis takes for it goes back */
      fly_request_out_of_time(r, "the shared rate limiter did not answer before the deadline");
      deliver(L, r, finished);
      continue;
    }
    /* past its deadline, or a retry due with less time left than its last attempt took */
    int expired = r->kind == KIND_HTTP && !fly_request_fits(r, r->ready_at > now ? r->ready_at : now);
    if (!expired && r->ready_at > now) continue;
    r->held = !expired && r->retry.rate_key && behind_unsent(c, r);
    if (r->held) continue;
    if (!room(L, t)) break;
    if (!may_begin(b, STAGE_LAUNCH)) {
      t->backlog = 1;
      break;
    }
    /* its bucket was pushed back since it was admitted: later, or past its deadline */
    if (!expired && r->retry.rate_key && fly_rate_catch_up(r->retry.rate_key, &r->retry.mark, &r->ready_at) > 0) {
      if (!fly_request_fits(r, r->ready_at)) {
        begin(b, STAGE_LAUNCH);
        fly_request_out_of_time(r, "the rate limit delays this request past its deadline");
        deliver(L, r, finished);
        continue;
      }
      if (r->ready_at > now) continue;
    }
    begin(b, STAGE_LAUNCH);
    if (expired) {
      fly_request_out_of_time(r, "deadline exceeded");
      deliver(L, r, finished);
    } else if (r->kind == KIND_TIMER) {
      deliver(L, r, finished);
    } else if (!start_transfer(c, r)) {
      fly_request_set_failure(r, "protocol", "could not start the transfer (out of memory)", 0);
      deliver(L, r, finished);
    } else if (limited) {
      run_timer(t); /* connect and send now, so that the clock counts it */
    }
  }
  run_timer(t);
}

/* The earliest time a queued request needs attention (ready, or its
 * deadline), or +inf. */
static double earliest(fly_client *c) {
  double next = INFINITY, now = fly_now();
  for (fly_request *r = c->queue; r; r = r->qnext) {
    if (r->admitting) { /* only its deadline: the limiter's answer comes on its socket */
      double latest = r->kind == KIND_HTTP ? fly_request_latest(r) : INFINITY;
      if (latest < next) next = latest;
      continue;
    }
    double t = r->held && r->ready_at <= now ? now + HOLD_RECHECK : r->ready_at;
    if (r->kind == KIND_HTTP && r->retry.deadline > 0 && r->retry.deadline < t) t = r->retry.deadline;
    if (t < next) next = t;
  }
  return next;
}

/* Hands finished attempts to attempt_done, oldest first, while the budget
 * lets them (libcurl keeps the rest). */
static void harvest(lua_State *L, fly_client *c, int *finished, budget *b) {
  CURLMsg *msg;
  struct fly_curl *t = c->curl;
  int left = -1; /* unknown until the first read (libcurl cannot be asked without reading) */
  for (;;) {
    if (!may_begin(b, STAGE_HARVEST)) {
      if (left > 0 || (left < 0 && t->unread)) t->backlog = 1;
      return;
    }
    if (!room(L, t)) return; /* libcurl keeps the message */
    msg = curl_multi_info_read(t->multi, &left);
    if (!msg || left == 0) t->unread = 0;
    if (!msg) return;
    if (msg->msg != CURLMSG_DONE) continue;
    begin(b, STAGE_HARVEST);
    fly_request *r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    if (r) attempt_done(L, c, r, msg->data.result, finished);
  }
}

/* The end of a budget of `seconds` that starts now. */
static double budget_end(double seconds) { return seconds < INFINITY ? fly_now() + seconds : INFINITY; }

/* Waits at most wait_ms on the sockets (and `extra`, the shared limiter's
 * socket, whose revents it fills), then lets libcurl act on those that are
 * ready, from where the last step stopped, while the budget lets it. After a
 * wait the budget's `seconds` start again (b->end); without one they run on
 * from the step's start (asking the kernel which sockets are ready counts). */
static void act_on_sockets(struct fly_curl *t, int wait_ms, double seconds, budget *b, struct pollfd *extra) {
  int n, waits = wait_ms > 0;
  if (extra && t->nsocks == t->socks_cap) socks_grow(t); /* a spare slot for it */
  if (extra && t->nsocks < t->socks_cap) { /* the extra socket rides in the spare slot */
    t->socks[t->nsocks] = *extra;
    n = poll(t->socks, (nfds_t)t->nsocks + 1, wait_ms);
    extra->revents = n > 0 ? t->socks[t->nsocks].revents : 0;
    if (extra->revents) n--;
  } else if (extra) { /* no spare slot (out of memory): the extra socket alone first */
    n = poll(extra, 1, t->nsocks ? 0 : wait_ms);
    if (n > 0) wait_ms = 0; /* something to do already */
    n = t->nsocks ? poll(t->socks, (nfds_t)t->nsocks, wait_ms) : 0;
  } else if (t->nsocks == 0) {
    if (waits) poll(NULL, 0, wait_ms), b->end = budget_end(seconds);
    return;
  } else {
    n = poll(t->socks, (nfds_t)t->nsocks, wait_ms);
  }
  if (waits) b->end = budget_end(seconds);
  if (n <= 0) return;
  if (t->ready_cap < t->nsocks) { /* on_socket may grow socks meanwhile, never ready */
    struct pollfd *n = realloc(t->ready, (size_t)t->socks_cap * sizeof *n);
    if (!n) return; /* the timer still drives the transfers */
    t->ready = n;
    t->ready_cap = t->socks_cap;
  }
  int nready = 0, first = t->cursor < t->nsocks ? t->cursor : 0;
  for (int k = 0; k < t->nsocks; k++) {
    struct pollfd *p = &t->socks[(first + k) % t->nsocks];
    if (p->revents && p->events) t->ready[nready++] = *p;
  }
  int running;
  for (int k = 0; k < nready; k++) {
    if (!may_begin(b, STAGE_SOCKETS)) {
      t->backlog = 1;
      /* roughly: on_socket may have moved some, or removed them all */
      t->cursor = t->nsocks ? (first + k) % t->nsocks : 0;
      return;
    }
    begin(b, STAGE_SOCKETS);
    short re = t->ready[k].revents;
    int ev = (re & (POLLIN | POLLERR | POLLHUP) ? CURL_CSELECT_IN : 0) |
             (re & (POLLOUT | ((t->ready[k].events & POLLOUT) ? POLLERR | POLLHUP : 0)) ? CURL_CSELECT_OUT : 0) |
             (re & POLLNVAL ? CURL_CSELECT_ERR : 0);
    curl_multi_socket_action(t->multi, t->ready[k].fd, ev, &running);
    t->unread = 1;
    uncap(t);
  }
  t->cursor = 0;
}

/* One round of work: sockets (waiting at most wait_ms for one), libcurl's
 * timer, finished attempts, starts, and the attempts that finished while
 * starting (a reused connection and a quick server can answer at once),
 * within `seconds` from the end of the wait as the budget `b` lets them. */
static void work(lua_State *L, fly_client *c, int *finished, int wait_ms, double seconds, budget *b) {
  struct pollfd extra = {-1, 0, 0}; /* the shared limiter's socket (Redis), if it has one */
  if (c->redis) extra.fd = fly_redis_fd(c->redis, &extra.events);
  int has_extra = extra.fd >= 0 && extra.events;
  act_on_sockets(c->curl, wait_ms, seconds, b, has_extra ? &extra : NULL);
  if (c->redis) shared_io(L, c, has_extra ? extra.revents : 0, finished);
  run_timer(c->curl);
  harvest(L, c, finished, b); /* may queue retries: the earliest time is taken after */
  launch_ready(L, c, finished, b);
  harvest(L, c, finished, b);
}

/* The most a call is taken to allocate between two blocking waits (KB): a
 * program that allocates a lot between its calls gets no larger hint (an
 * incremental step's work grows with the debt it pays). */
#define IDLE_KB_MOST 64

/* Collector work that a blocking call would soon do anyway, done while it
 * waits for the server (Lua 5.4, while the collector runs; its time comes
 * off the call's own): when the collector would step within about what a
 * call allocates (the growth of the heap from one blocking wait to the
 * next, when no collection came between), it steps now instead of after
 * the answer, on the way back to the caller. The hint is taken back after:
 * a step in the middle of an incremental cycle has paid for it; one that
 * sets a new debt (a young collection, the end of a cycle) then falls due a
 * hint later, so the next step again comes at the first wait after it is
 * due. No step comes in addition (a young collection comes at most one
 * call's allocation later than it would). Finalizers may run here, as at any
 * allocation: the caller looks at the client again afterwards. Other Luas:
 * nothing (the LUA_GCSTEP of 5.1, 5.2 and LuaJIT always works, due or not;
 * 5.3's incremental steps come several a call, of which a hint would move
 * one). */
#if LUA_VERSION_NUM >= 504
static size_t heap_bytes(lua_State *L) {
  return (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
}
#endif

static void idle_collect(lua_State *L, fly_client *c) {
#if LUA_VERSION_NUM >= 504
  if (lua_gc(L, LUA_GCISRUNNING, 0) != 1) return; /* stopped by the program, or collecting now (-1) */
  size_t heap = heap_bytes(L);
  if (c->idle_heap && heap > c->idle_heap) {
    size_t kb = (heap - c->idle_heap) / 1024 + 1;
    c->idle_kb = kb < IDLE_KB_MOST ? (int)kb : IDLE_KB_MOST;
  }
  if (c->idle_kb > 0) {
    lua_gc(L, LUA_GCSTEP, c->idle_kb);  /* steps if its debt is within idle_kb of due */
    lua_gc(L, LUA_GCSTEP, -c->idle_kb); /* takes the hint back (never a step) */
    heap = heap_bytes(L);
  }
  c->idle_heap = heap;
#else
  (void)L, (void)c;
#endif
}

/* Freed memory sorted while a blocking call waits. glibc's malloc keeps the
 * small blocks a program frees (the collector's sweep frees dozens a call,
 * a young collection thousands) in "fast" bins, and merges them into its
 * unsorted list only when a request of 1 KiB or more comes; that request,
 * and the ones after it, then sort the list into the ordinary bins, block by
 * block, until one finds a block of exactly its size. Left to the call, the
 * first such request is the answer's body buffer, right after the answer,
 * and libcurl's next allocations sort the rest. Requests made and freed
 * here, after the collector's step and the tables made ahead, do it while
 * the server works. Their sizes (blocks of 1,216 and 1,264 bytes) are away
 * from what the client frees in bulk (Lua's table parts and the body
 * buffers are powers of two: a young collection frees dozens of 2 KiB body
 * buffers at once), so that the sort is unlikely to stop at a block of the
 * size asked for before the list is sorted; should the first meet one, the
 * second goes on. With another allocator: two mallocs and two frees. */
#define TIDY_BYTES 1200
static void tidy_heap(void) {
  void *volatile a = malloc(TIDY_BYTES); /* volatile: kept, not folded away with their frees */
  void *volatile b = malloc(TIDY_BYTES + 48);
  free(a);
  free(b);
}

/* How long a step may wait on the sockets: at most max_wait, and not past
 * the nearest queued request's time or deadline, libcurl's timer or the
 * shared limiter's. */
static double wait_time(fly_client *c, double max_wait) {
  struct fly_curl *t = c->curl;
  double now = fly_now(), wait = max_wait, next = earliest(c), shared = shared_timeout(c);
  if (next - now < wait) wait = next - now;
  if (t->timer_at - now < wait) wait = t->timer_at - now;
  if (shared < wait) wait = shared;
  return wait > 3600 ? 3600 : wait; /* the caller loops; keeps the int in work() in range */
}

/* One turn: work within `seconds` (INFINITY: no limit) as the budget `b`
 * lets it; if nothing finished and no work was left over, wait at most
 * max_wait seconds on the sockets and the nearest deadline (with nothing in
 * flight, the whole max_wait, as poll(2) with no descriptors: a frame loop
 * that gives an idle client the rest of its frame sleeps, it does not spin),
 * then work within a new `seconds` if it waited, else within what is left of
 * the first. b->end is when the last of them ends. */
static void step_once(lua_State *L, fly_client *c, int *finished, double max_wait, double seconds, budget *b,
                      int idle) {
  struct fly_curl *t = c->curl;
  unsigned long turn = ++c->turns;
  t->backlog = 0;
  b->end = budget_end(seconds);
  work(L, c, finished, 0, seconds, b);
  if (*finished == 0 && !t->backlog && max_wait > 0) {
    double wait = wait_time(c, max_wait);
    if (idle && wait > 0) {
      idle_collect(L, c);
      fly_json_prefill(L);
      tidy_heap();
      if (c->closed || c->turns != turn) return; /* a finalizer closed the client or stepped it */
      wait = wait_time(c, max_wait); /* without the time that took, or what a finalizer queued */
    }
    work(L, c, finished, wait > 0 ? (int)ceil(wait * 1000) : 0, seconds, b);
  }
}

/* A step with no budget. */
static void step_free(lua_State *L, fly_client *c, int *finished, double max_wait) {
  budget b = {INFINITY, 0, 0};
  step_once(L, c, finished, max_wait, INFINITY, &b, 1);
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
  if (!fly_request_fits(r, r->ready_at)) /* its token was not taken (build_admit) */
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

/* client:_step(max_wait[, budget, free, did]) -> the requests that
 * finished (as results). Waits at most max_wait seconds for something to
 * happen. Given a budget (seconds), works about that long at most before the
 * wait and again after it, and leaves what does not fit for the next step,
 * oldest first; `free` is the stage (1 sockets, 2 finished attempts, 3
 * starts; 0 none) whose first unit may begin past the budget, `did` whether
 * the caller's poll has already done a unit of work. Then returns first the
 * time (fly.now) its last budget ends and whether a unit of the poll has
 * begun, for the caller's own share of the work. */
int fly_l_step(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  double max_wait = luaL_optnumber(L, 2, 0);
  int budgeted = !lua_isnoneornil(L, 3);
  double seconds = budgeted ? luaL_checknumber(L, 3) : INFINITY;
  budget b = {INFINITY, (int)luaL_optinteger(L, 4, 0), lua_toboolean(L, 5)};
  lua_settop(L, 5);
  int finished = 0;
  step_once(L, c, &finished, max_wait, seconds, &b, 0);
  if (!budgeted) return finished;
  luaL_checkstack(L, 2, "fly: too many finished requests");
  lua_pushnumber(L, b.end);
  lua_insert(L, 6);
  lua_pushboolean(L, b.did);
  lua_insert(L, 7);
  return finished + 2;
}

/* client:_step_until(request) -> the requests that finished (as results).
 * Steps until `request` or any other request finishes: a plain call needs
 * one trip into C instead of one per turn. */
int fly_l_step_until(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  fly_request *r = fly_check_request(L, 2);
  lua_settop(L, 2);
  int finished = 0;
  while (r->state != REQ_DONE && finished == 0 && c->live) step_free(L, c, &finished, 1.0);
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
    step_free(L, c, &finished, 1.0);
    lua_settop(L, 2);
  }
  return 0;
}

/* client:_timeout() -> seconds until the loop needs a step (0: now, also
 * when the last step left work over), or nil when nothing is live. For host
 * event loops: libcurl's timer (its timer callback) and the nearest queued
 * request. */
int fly_l_timeout(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  if (!c->live) return lua_pushnil(L), 1;
  struct fly_curl *t = c->curl;
  double wait = earliest(c);
  if (t->timer_at < wait) wait = t->timer_at;
  double shared = shared_timeout(c); /* seconds from now */
  if (shared < INFINITY && fly_now() + shared < wait) wait = fly_now() + shared;
  if (t->backlog) wait = 0;
  else if (wait == INFINITY) wait = 1.0; /* only sockets: wake up now and then anyway */
  else wait -= fly_now();
  lua_pushnumber(L, wait < 0 ? 0 : wait);
  return 1;
}

/* client:_sockets() -> { [fd] = "r" | "w" | "rw" }: the sockets libcurl
 * waits on right now, as its socket callback reported them (any descriptor
 * number). The set changes after every step, and a number may be reused for
 * a new connection: watchers are best made anew after each step. */
int fly_l_sockets(lua_State *L) {
  fly_client *c = fly_check_client(L, 1);
  struct fly_curl *t = c->curl;
  lua_createtable(L, 0, t->nsocks);
  for (int i = 0; i < t->nsocks; i++) {
    int rd = t->socks[i].events & POLLIN, wr = t->socks[i].events & POLLOUT;
    if (!rd && !wr) continue;
    lua_pushstring(L, rd && wr ? "rw" : rd ? "r" : "w");
    lua_rawseti(L, -2, t->socks[i].fd);
  }
  struct curl_waitfd extra; /* the shared limiter's socket */
  if (shared_waitfd(c, &extra)) {
    int rd = extra.events & CURL_WAIT_POLLIN, wr = extra.events & CURL_WAIT_POLLOUT;
    lua_pushstring(L, rd && wr ? "rw" : rd ? "r" : "w");
    lua_rawseti(L, -2, extra.fd);
  }
  return 1;
}
