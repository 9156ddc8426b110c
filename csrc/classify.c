/* classify: what one attempt got -> success | final failure | retry at.
 * See classify.h. Pure C: a fuzz target or any transport can drive it. */
#include "classify.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void fly_reply_reset(fly_reply *a) {
  a->status = 0;
  a->code = NULL;
  a->sent = 0;
  a->retryable = 0;
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

void fly_reply_field(fly_reply *a, const char *name, size_t nn, const char *v, size_t vn) {
  if (name_is(name, nn, "fly-request-id")) {
    copy_value(a->request_id, sizeof a->request_id, v, vn);
  } else if (name_is(name, nn, "content-type")) {
    copy_value(a->content_type, sizeof a->content_type, v, vn);
  } else if (name_is(name, nn, "retry-after")) {
    char tmp[32];
    copy_value(tmp, sizeof tmp, v, vn);
    char *end;
    double s = strtod(tmp, &end);
    if (end != tmp && s >= 0 && s < 86400) a->retry_after = s;
  }
}

int fly_reply_header(fly_reply *a, const char *line, size_t n) {
  if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) { /* a new response starts */
    a->request_id[0] = a->content_type[0] = '\0';
    a->retry_after = -1;
    return 1;
  }
  const char *colon = memchr(line, ':', n);
  if (colon) fly_reply_field(a, line, (size_t)(colon - line), colon + 1, n - (size_t)(colon - line) - 1);
  return 0;
}

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
    /* too_large: the same request would get the same response */
    if ((!a->sent || p->safe) && strcmp(a->code, "too_large") != 0) a->retryable = 1;
  } else if (a->status == 429) {
    a->retryable = 1; /* not executed: safe for every operation */
  } else if (p->safe && (a->status == 500 || a->status == 502 || a->status == 503 || a->status == 504 ||
                         (a->status == 408 && !p->is_wait))) {
    a->retryable = 1;
  }
  if (!a->retryable || p->attempts >= p->max_attempts) return -1;
  double delay;
  if (a->status == 429) {
    /* the bucket's refill time: through the shared bucket when limiting,
       else one token's worth of the published limit */
    if (p->rate_key) {
      fly_rate_penalize(p->rate_key, p->limit, now);
      delay = fly_rate_reserve(p->rate_key, p->limit, now) + p->margin - now;
    } else {
      delay = 1.0 / p->limit.rate;
    }
    if (a->retry_after > delay) delay = a->retry_after;
    if (delay <= 0) delay = p->base;
    delay += rng_unit(p) * delay * 0.1; /* later, never earlier, than allowed */
  } else {
    double cap = p->base * pow(2.0, p->attempts - 1);
    if (cap > p->cap) cap = p->cap;
    delay = rng_unit(p) * cap; /* full jitter */
    if (p->deadline > 0 && now + delay >= p->deadline) return -1;
    if (p->rate_key) { /* a retry is another request: it takes its place in the bucket */
      double at = fly_rate_reserve(p->rate_key, p->limit, now);
      if (at > now && at + p->margin - now > delay) delay = at + p->margin - now;
    }
  }
  if (p->deadline > 0 && now + delay >= p->deadline) return -1;
  return delay;
}

int fly_classify(fly_retry *p, fly_reply *a, double now, double *retry_at) {
  p->attempts++;
  a->retryable = 0;
  if (a->code) a->status = 0;
  double delay = retry_delay(p, a, now);
  if (delay >= 0) {
    *retry_at = now + delay;
    return FLY_RETRY;
  }
  return !a->code && a->status >= 200 && a->status <= 299 ? FLY_SUCCESS : FLY_FAILURE;
}
