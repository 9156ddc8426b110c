/* classify: what one attempt got -> success | final failure | retry at.
 * See classify.h. Pure C: a fuzz target or any transport can drive it. */
#define _POSIX_C_SOURCE 200809L
#include "classify.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "operations.h"

void fly_reply_reset(fly_reply *a) { /* auth stays: it belongs to the request */
  a->status = 0;
  a->code = NULL;
  a->sent = 0;
  a->resends = 0;
  a->unclear_resend = 0;
  a->retryable = 0;
  a->keep_status = 0;
  a->body_seen = 0;
  a->media = FLY_MEDIA_NONE;
  a->retry_after = -1;
  a->request_id[0] = a->content_type[0] = '\0';
}

static void copy_value(char *dst, size_t cap, const char *v, size_t n) {
  while (n > 0 && (*v == ' ' || *v == '\t')) v++, n--;
  while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
  if (n >= cap) n = cap - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static int name_is(const char *name, size_t nn, const char *want) {
  return strlen(want) == nn && strncasecmp(name, want, nn) == 0;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* The media type of a whole Content-Type value: type/subtype before any
 * parameter, any case, blanks around it ignored. */
static int media_of(const char *v, size_t n) {
  while (n > 0 && is_blank(*v)) v++, n--;
  const char *semi = memchr(v, ';', n);
  if (semi) n = (size_t)(semi - v);
  while (n > 0 && is_blank(v[n - 1])) n--;
  if (n == 16 && strncasecmp(v, "application/json", 16) == 0) return FLY_MEDIA_JSON;
  if (n == 10 && strncasecmp(v, "text/plain", 10) == 0) return FLY_MEDIA_TEXT;
  if (n == 24 && strncasecmp(v, "application/octet-stream", 24) == 0) return FLY_MEDIA_BYTES;
  const char *slash = memchr(v, '/', n);
  if (slash && n > 5 && (size_t)(slash - v) + 1 <= n - 5 && strncasecmp(v + n - 5, "+json", 5) == 0)
    return FLY_MEDIA_JSON;
  return FLY_MEDIA_OTHER;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static long days_from_civil(long y, long m, long d) {
  y -= m <= 2;
  long era = (y >= 0 ? y : y - 399) / 400;
  long yoe = y - era * 400;
  long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

/* An HTTP-date in its only current form, "Sun, 06 Nov 1994 08:49:37 GMT",
 * as seconds since the epoch; -1 when it is not one. */
static double http_date(const char *s) {
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  const char *comma = strchr(s, ',');
  if (!comma) return -1;
  int d, y, hh, mm, ss, used = 0;
  char mon[4];
  if (sscanf(comma + 1, " %2d %3s %4d %2d:%2d:%2d GMT%n", &d, mon, &y, &hh, &mm, &ss, &used) != 6 || !used)
    return -1;
  const char *m = strlen(mon) == 3 ? strstr(months, mon) : NULL;
  if (!m || (m - months) % 3 || d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60 || y < 1970) return -1;
  return (double)days_from_civil(y, (m - months) / 3 + 1, d) * 86400 + hh * 3600 + mm * 60 + ss;
}

/* Retry-After: delta-seconds (digits, a fraction allowed) or an HTTP-date;
 * -1 when it is neither. */
static double retry_after_of(const char *v, size_t n) {
  char tmp[64];
  copy_value(tmp, sizeof tmp, v, n);
  size_t i = 0;
  while (tmp[i] >= '0' && tmp[i] <= '9') i++;
  if (i > 0 && tmp[i] == '.') {
    i++;
    while (tmp[i] >= '0' && tmp[i] <= '9') i++;
  }
  if (i > 0 && tmp[i] == '\0') {
    double s = strtod(tmp, NULL);
    return s > 1e9 ? 1e9 : s;
  }
  double at = http_date(tmp);
  if (at < 0) return -1;
  double left = at - (double)time(NULL);
  return left < 0 ? 0 : left > 1e9 ? 1e9 : left;
}

/* Keeps a header value the reply shows (cut to cap - 1 bytes), with the
 * request's credentials masked in the whole value before it is cut, so that
 * no head of a long token survives the cut. A value too long to scrub
 * (FIELD_SCRUB_MAX) is not kept. */
#define FIELD_SCRUB_MAX 1024
static void keep_field(const fly_reply *a, char *dst, size_t cap, const char *v, size_t n) {
  char tmp[FIELD_SCRUB_MAX];
  if (!a->auth) {
    copy_value(dst, cap, v, n);
  } else if (n >= sizeof tmp) {
    dst[0] = '\0';
  } else {
    memcpy(tmp, v, n);
    fly_scrub(tmp, n, a->auth);
    copy_value(dst, cap, tmp, n);
  }
}

void fly_reply_field(fly_reply *a, const char *name, size_t nn, const char *v, size_t vn) {
  if (name_is(name, nn, "fly-request-id")) {
    keep_field(a, a->request_id, sizeof a->request_id, v, vn);
  } else if (name_is(name, nn, "content-type")) {
    keep_field(a, a->content_type, sizeof a->content_type, v, vn);
    a->media = media_of(v, vn);
  } else if (name_is(name, nn, "retry-after")) {
    a->retry_after = retry_after_of(v, vn);
  }
}

/* "HTTP/" version, a space and three digits (then a space or the line end). */
static int is_status_line(const char *line, size_t n) {
  if (n < 10 || memcmp(line, "HTTP/", 5) != 0) return 0;
  size_t i = 5;
  while (i < n && ((line[i] >= '0' && line[i] <= '9') || line[i] == '.')) i++;
  if (i == 5 || i + 4 > n || line[i] != ' ') return 0;
  for (size_t k = i + 1; k < i + 4; k++)
    if (line[k] < '0' || line[k] > '9') return 0;
  return i + 4 == n || line[i + 4] == ' ' || line[i + 4] == '\r' || line[i + 4] == '\n';
}

int fly_reply_header(fly_reply *a, const char *line, size_t n) {
  if (a->body_seen) return 0; /* trailers: nothing in them changes the answer */
  if (is_status_line(line, n)) { /* a new response starts */
    a->request_id[0] = a->content_type[0] = '\0';
    a->media = FLY_MEDIA_NONE;
    a->retry_after = -1;
    return 1;
  }
  const char *colon = memchr(line, ':', n);
  if (colon) fly_reply_field(a, line, (size_t)(colon - line), colon + 1, n - (size_t)(colon - line) - 1);
  return 0;
}

const char *fly_reply_accept(const fly_reply *a, int returns, const char *body, size_t n) {
  if (returns == FLY_RETURNS_JSON || returns == FLY_RETURNS_JSON_BYTES) {
    if (a->media != FLY_MEDIA_JSON && a->media != FLY_MEDIA_NONE &&
        !(returns == FLY_RETURNS_JSON_BYTES && a->media == FLY_MEDIA_BYTES))
      return "the operation returns JSON, the response is labelled otherwise";
    size_t i = 0;
    while (i < n && is_blank(body[i])) i++;
    if (i == n) return "the operation returns JSON, the response body is empty";
    if (body[i] != '{' && body[i] != '[')
      return "the operation returns a JSON object or array, the response body is neither";
  } else if (returns == FLY_RETURNS_TEXT) {
    if (a->media != FLY_MEDIA_TEXT && a->media != FLY_MEDIA_NONE)
      return "the operation returns text/plain, the response is labelled otherwise";
    if (n == 0) return "the operation returns text, the response body is empty";
  }
  return NULL;
}

const char *fly_reply_settle(fly_reply *a, int returns, const char *body, size_t n, int too_large) {
  const char *why = NULL;
  if (too_large) {
    a->code = "too_large";
    why = "the response body is larger than max_body";
  } else if (!a->code && a->status >= 200 && a->status <= 299) {
    why = fly_reply_accept(a, returns, body, n);
    if (why) a->code = "protocol";
  }
  if (why) a->keep_status = a->status != 0;
  return why;
}

static int hex_digit(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* How many bytes at p (before end) spell the byte c: 1 when it is c itself,
 * the length of a JSON escape of c (`\/`, `\u002f`, ...) or of its
 * percent-encoding (`%2F`, as in a URL a server quotes), 0 when none. */
static size_t spells(const char *p, const char *end, unsigned char c) {
  if ((unsigned char)*p == c) return 1;
  if (*p == '%') {
    int hi, lo;
    if (end - p < 3 || (hi = hex_digit(p[1])) < 0 || (lo = hex_digit(p[2])) < 0) return 0;
    return hi * 16 + lo == c ? 3 : 0;
  }
  if (*p != '\\' || end - p < 2) return 0;
  switch (p[1]) {
  case '/': case '\\': case '"': return (unsigned char)p[1] == c ? 2 : 0;
  case 'b': return c == '\b' ? 2 : 0;
  case 'f': return c == '\f' ? 2 : 0;
  case 'n': return c == '\n' ? 2 : 0;
  case 'r': return c == '\r' ? 2 : 0;
  case 't': return c == '\t' ? 2 : 0;
  case 'u': {
    if (end - p < 6) return 0;
    int v = 0;
    for (int i = 2; i < 6; i++) {
      int d = hex_digit(p[i]);
      if (d < 0) return 0;
      v = v * 16 + d;
    }
    return v == c ? 6 : 0;
  }
  default: return 0;
  }
}

/* How much of s the bytes from p (before end) spell, plainly or as JSON
 * escapes: the bytes of s matched (*k) and where the spelling ends. */
static char *spelled(char *p, char *end, const char *s, size_t sn, size_t *k) {
  *k = 0;
  for (size_t m; *k < sn && p < end && (m = spells(p, end, (unsigned char)s[*k])); ++*k) p += m;
  return p;
}

/* The fewest leading bytes of a secret that are masked where they stand
 * alone: a server that cuts a long token short in its message ("invalid
 * token fm2_lJPE...") must not show what it kept of it. */
#define PREFIX_MIN 16

/* Masks every occurrence of s in buf, and of its first PREFIX_MIN or more
 * bytes, written plainly, with any of its bytes as JSON escapes (a server
 * that echoes the token inside JSON may write `/` as `\/`, or any byte as
 * `\u00XX`) or percent-encoded: the whole spelling becomes '*', so JSON stays
 * JSON and decodes to stars. */
static void mask(char *buf, size_t n, const char *s, size_t sn) {
  if (sn == 0) return;
  size_t least = sn < PREFIX_MIN ? sn : PREFIX_MIN;
  char *end = buf + n;
  for (char *p = buf; p < end;) {
    if (*p != *s && *p != '\\' && *p != '%') { /* the common case: cannot start a spelling */
      p++;
      continue;
    }
    size_t k;
    char *q = spelled(p, end, s, sn, &k);
    if (k >= least) {
      memset(p, '*', (size_t)(q - p));
      p = q;
    } else {
      p++;
    }
  }
}

/* Masks the end of buf when it spells the start of s (any length): buf is
 * the head of something longer, cut there, maybe inside a spelling of s. */
static void mask_tail(char *buf, size_t n, const char *s, size_t sn) {
  size_t reach = 6 * sn; /* the longest spelling of s */
  char *end = buf + n;
  for (char *p = n > reach ? end - reach : buf; p < end; p++) {
    if (*p != *s && *p != '\\' && *p != '%') continue;
    size_t k;
    char *q = spelled(p, end, s, sn, &k);
    if (k < sn && q < end && ((*q == '\\' && end - q < 6) || (*q == '%' && end - q < 3)))
      q = end; /* cut inside an escape */
    if (k > 0 && k < sn && q == end) {
      memset(p, '*', (size_t)(end - p));
      return;
    }
  }
}

static void scrub(char *buf, size_t n, const char *auth, int cut) {
  if (!buf || !auth || strncasecmp(auth, "Authorization:", 14) != 0) return;
  const char *t = auth + 14;
  while (*t == ' ' || *t == '\t') t++;
  const char *sp = strpbrk(t, " \t");
  if (sp) t = sp; /* past the scheme */
  while (*t == ' ' || *t == '\t') t++;
  size_t tn = strlen(t);
  while (tn > 0 && is_blank(t[tn - 1])) tn--;
  if (tn == 0) return;
  mask(buf, n, t, tn);
  if (cut) mask_tail(buf, n, t, tn);
  for (const char *p = t, *end = t + tn; p < end;) {
    const char *c = memchr(p, ',', (size_t)(end - p));
    const char *e = c ? c : end;
    const char *b = p;
    while (b < e && is_blank(*b)) b++;
    if (e - b >= 8 && (size_t)(e - b) < tn) {
      mask(buf, n, b, (size_t)(e - b));
      if (cut) mask_tail(buf, n, b, (size_t)(e - b));
    }
    p = c ? c + 1 : end;
  }
}

void fly_scrub(char *buf, size_t n, const char *auth) { scrub(buf, n, auth, 0); }

void fly_scrub_head(char *buf, size_t n, const char *auth) { scrub(buf, n, auth, 1); }

static const char *const CODES[] = {"timeout", "connect", "resolve", "tls", "reset", "protocol", "too_large", NULL};

const char *fly_transport_code(const char *name) {
  for (int i = 0; CODES[i]; i++)
    if (strcmp(CODES[i], name) == 0) return CODES[i];
  return NULL;
}

static double rng_unit(fly_retry *p) { /* xorshift64*, in [0, 1) */
  p->rng ^= p->rng >> 12;
  p->rng ^= p->rng << 25;
  p->rng ^= p->rng >> 27;
  return (double)((p->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

/* Seconds to wait before the next attempt; negative: do not retry. */
static double retry_delay(fly_retry *p, fly_reply *a, double now) {
  if (a->code) {
    /* too_large: the same request gets the same answer */
    if ((!a->sent || p->safe) && strcmp(a->code, "too_large") != 0) a->retryable = 1;
  } else if (a->status == 429) {
    a->retryable = 1; /* not executed: safe for every operation */
    /* the bucket is emptied whether a retry follows or the 429 is the answer: the calls after
       this one wait for a refill instead of meeting the same limit */
    if (p->rate_key) fly_rate_penalize(p->rate_key, p->limit, now);
  } else if (p->safe && (a->status == 500 || a->status == 502 || a->status == 503 || a->status == 504 ||
                         (a->status == 408 && !p->is_wait))) {
    a->retryable = 1;
  }
  if (!a->retryable || p->attempts >= p->max_attempts) return -1;
  /* the server asks for a longer wait than the caller's bound: its answer is final now */
  if (!a->code && a->status == 429 && a->retry_after > p->max_wait) return -1;
  double delay;
  /* the latest a retry may start and still fit (fly_retry_fits): a retry that
     would start later gets no token from its bucket */
  double latest = p->deadline > 0 ? p->deadline - p->took : INFINITY;
  if (a->status == 429) {
    double stretch = 1 + rng_unit(p) * 0.1; /* jitter: later, never earlier, than allowed */
    double retry_after = a->retry_after > 0 ? a->retry_after : 0;
    /* the bucket's refill time: through the shared bucket when limiting,
       else one token's worth of the published limit */
    if (p->rate_key) { /* (emptied above) */
      /* no token for a retry that cannot fit even at its Retry-After */
      if (!fly_retry_fits(p, now + retry_after * stretch)) return -1;
      double before = now + (latest - now) / stretch - p->margin;
      delay = fly_rate_reserve_marked(p->rate_key, p->limit, now, before, &p->mark) + p->margin - now;
    } else {
      delay = 1.0 / p->limit.rate;
    }
    if (retry_after > delay) delay = retry_after;
    if (delay <= 0) delay = p->base;
    delay *= stretch;
  } else {
    double cap = p->base * pow(2.0, p->attempts - 1);
    if (cap > p->cap) cap = p->cap;
    delay = rng_unit(p) * cap; /* full jitter */
    if (!fly_retry_fits(p, now + delay)) return -1; /* before its token is taken */
    if (p->rate_key) { /* a retry is another request: it takes its place in the bucket */
      double at = fly_rate_admit_marked(p->rate_key, p->limit, now, p->margin, latest, &p->mark);
      if (at - now > delay) delay = at - now;
    }
  }
  if (!fly_retry_fits(p, now + delay)) return -1;
  return delay;
}

int fly_retry_fits(const fly_retry *p, double at) {
  return p->deadline <= 0 || at + p->took < p->deadline;
}

int fly_classify(fly_retry *p, fly_reply *a, double now, double *retry_at) {
  p->attempts++;
  p->took = p->started > 0 && now > p->started ? now - p->started : 0;
  a->retryable = 0;
  if (a->code && !a->keep_status) a->status = 0;
  /* an attempt that went out and got no definitive answer (a transport failure after it left,
     a 5xx, a 408) may have been carried out: a retry's 404 or 412 may be its doing */
  if (a->code ? a->sent : a->status >= 500 || a->status == 408) p->may_have_run = 1;
  if (a->unclear_resend) p->may_have_run = 1; /* sent again after a send that may have run */
  double delay = retry_delay(p, a, now);
  if (delay >= 0) {
    *retry_at = now + delay;
    return FLY_RETRY;
  }
  return !a->code && a->status >= 200 && a->status <= 299 ? FLY_SUCCESS : FLY_FAILURE;
}
