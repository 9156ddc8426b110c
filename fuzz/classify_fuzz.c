/* libFuzzer target: the response classifier (csrc/classify.c) on arbitrary
 * responses, fed as the libcurl transport feeds it.
 *
 * Input: byte 0 picks the operation (from the operation table), byte 1 the
 * retry settings (safe or not, attempts, a deadline, the body cap, and how
 * long the attempt took: up to 28 s of the deadline's 30); the
 * rest is a response as on the wire: a status line, header lines up to an
 * empty line, then the body up to the first NUL byte, then trailer lines.
 * Lines end in "\n" ("\r\n" works too). Status lines inside the head start a
 * new response (the body so far dropped), as curl.c's on_header does.
 *
 * Checked, besides what the sanitizers catch: exactly one verdict; a success
 * only for a 2xx with no failure code, whose body is what the operation
 * returns; an error for every other status; too_large past the cap, never
 * retried; a 429 retried only when its Retry-After is within max_wait and
 * not before it; a retry only with more time left before the deadline than
 * the attempt took; no control character in any error text; and the token of
 * the Authorization line never left in what a failure keeps, written plainly
 * or with JSON escapes, nor in the request id of any answer, nor at the end
 * of the head a too_large keeps. */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "operations.h"

#define AUTH "Authorization: FlyV1 fm2_fuzztoken-part-one,fm2_fuzztoken-part-two"
#define TOKEN "fm2_fuzztoken-part-one,fm2_fuzztoken-part-two"
#define PART "fm2_fuzztoken-part-one"

static void check(int ok, const char *what) {
  if (ok) return;
  fprintf(stderr, "classify_fuzz: %s\n", what);
  abort();
}

/* s[0..n) with its JSON escapes of single bytes (`\/`, `\u00XX`, ...)
 * read, into out (n + 1 bytes); returns the length. */
static size_t unescape(const char *s, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\\' && i + 1 < n && s[i + 1] && strchr("/\\\"", s[i + 1])) {
      out[o++] = s[++i];
    } else if (s[i] == '\\' && i + 5 < n && s[i + 1] == 'u' && s[i + 2] == '0' && s[i + 3] == '0') {
      unsigned v;
      char hex[3] = {s[i + 4], s[i + 5], 0};
      if (sscanf(hex, "%2x", &v) == 1 && strspn(hex, "0123456789abcdefABCDEF") == 2) {
        out[o++] = (char)v;
        i += 5;
      } else {
        out[o++] = s[i];
      }
    } else if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
      unsigned v;
      char hex[3] = {s[i + 1], s[i + 2], 0};
      sscanf(hex, "%2x", &v);
      out[o++] = (char)v;
      i += 2;
    } else {
      out[o++] = s[i];
    }
  }
  out[o] = '\0';
  return o;
}

static int printable(const char *s) {
  for (; s && *s; s++)
    if ((unsigned char)*s < 32 || *s == 127) return 0;
  return 1;
}

/* One line of data[*at..end): its start, its length with the line end, and
 * *at moved past it. */
static const char *next_line(const char *data, size_t end, size_t *at, size_t *len) {
  const char *nl = memchr(data + *at, '\n', end - *at);
  size_t stop = nl ? (size_t)(nl - data) + 1 : end;
  const char *line = data + *at;
  *len = stop - *at;
  *at = stop;
  return line;
}

static int blank_line(const char *line, size_t n) {
  return n == 0 || (n == 1 && line[0] == '\n') || (n == 2 && line[0] == '\r' && line[1] == '\n');
}

/* The status of a line fly_reply_header took for a status line. */
static long status_of(const char *line, size_t n) {
  const char *sp = memchr(line, ' ', n);
  if (!sp || (size_t)(sp - line) + 4 > n) return 0;
  return (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  const fly_operation *op = &fly_operations[data[0] % fly_operation_count];
  uint8_t flags = data[1];
  size_t max_body = (size_t)16 << ((flags >> 4) & 7); /* 16 B .. 2 KiB */
  const char *text = (const char *)data + 2;
  size_t n = size - 2;

  /* the body buffer, as the request keeps it; one byte more for the NUL */
  char *body = malloc(n + 1);
  check(body != NULL, "out of memory");
  size_t body_len = 0;
  int too_large = 0;

  fly_reply a;
  fly_reply_reset(&a);
  a.auth = AUTH; /* as the request sets it: masked in the fields kept */
  a.sent = 1;
  size_t at = 0, len;
  int head = 1, any_status = 0;
  while (at < n && head) { /* the head: status lines and fields, to the empty line */
    const char *line = next_line(text, n, &at, &len);
    if (fly_reply_header(&a, line, len)) {
      any_status = 1;
      a.status = status_of(line, len);
      body_len = 0;
    } else if (blank_line(line, len) && any_status && a.status >= 200) {
      head = 0;
    }
  }
  const char *nul = memchr(text + at, '\0', n - at);
  size_t body_end = nul ? (size_t)(nul - text) : n;
  size_t want = body_end - at, body_at = at;
  if (want > 0) a.body_seen = 1;
  if (want > max_body) too_large = 1;
  else memcpy(body, text + at, want), body_len = want;
  body[body_len] = '\0';
  for (at = nul ? body_end + 1 : n; at < n;) { /* trailers change nothing */
    char before[sizeof a.content_type];
    memcpy(before, a.content_type, sizeof before);
    long status = a.status;
    const char *line = next_line(text, n, &at, &len);
    check(!a.body_seen || fly_reply_header(&a, line, len) == 0, "a trailer started a new response");
    check(!a.body_seen || (status == a.status && memcmp(before, a.content_type, sizeof before) == 0),
          "a trailer changed the answer");
  }
  if (!any_status) a.code = "protocol"; /* the transport saw no response */
  check(a.retry_after == -1 || (a.retry_after >= 0 && a.retry_after <= 1e9), "retry_after out of range");
  check(strlen(a.content_type) < sizeof a.content_type && strlen(a.request_id) < sizeof a.request_id,
        "a header field overran its buffer");

  const char *why = fly_reply_settle(&a, op->returns, body, body_len, too_large);
  check(!why || printable(why), "a control character in an error message");
  if (too_large) check(a.code && strcmp(a.code, "too_large") == 0, "a body over the cap is not too_large");
  check(!strstr(a.request_id, PART) && !strstr(a.content_type, PART), "the token is left in a header field");
  if (a.code || a.status < 200 || a.status > 299) {
    fly_scrub(body, body_len, AUTH);
    check(!memmem(body, body_len, TOKEN, strlen(TOKEN)) && !memmem(body, body_len, PART, strlen(PART)),
          "the token is left in a failure's body");
    char *plain = malloc(body_len + 1);
    check(plain != NULL, "out of memory");
    size_t pn = unescape(body, body_len, plain);
    check(!memmem(plain, pn, PART, strlen(PART)), "the token is left escaped in a failure's body");
    check(!memmem(plain, pn, PART, 16), "the first 16 bytes of the token are left in a failure's body");
    free(plain);
  }
  if (want > max_body) { /* the head a too_large keeps, cut at the cap: no start of a part at its end */
    char *head = malloc(max_body + 1), *plain = malloc(max_body + 1);
    check(head && plain, "out of memory");
    memcpy(head, text + body_at, max_body);
    fly_scrub_head(head, max_body, AUTH);
    size_t pn = unescape(head, max_body, plain);
    for (size_t k = 4; k < strlen(PART) && k <= pn; k++)
      check(memcmp(plain + pn - k, PART, k) != 0, "a too_large head ends with the start of the token");
    free(head);
    free(plain);
  }

  fly_retry p;
  memset(&p, 0, sizeof p);
  p.safe = flags & 1;
  p.max_attempts = 1 + ((flags >> 1) & 3);
  p.attempts = 0;
  p.deadline = (flags & 8) ? 1000.0 + 30 : 0;
  p.base = 0.1;
  p.cap = 5;
  p.max_wait = 60;
  p.limit.rate = 1;
  p.limit.burst = 3;
  p.rng = 88172645463325252ull;
  double now = 1000.0, retry_at = 0;
  p.started = now - ((flags & 128) ? 4.0 * ((flags >> 4) & 7) : 0);
  long status = a.status;
  int verdict = fly_classify(&p, &a, now, &retry_at);
  check(p.took == now - p.started, "the attempt's time is not what it took");
  check(verdict == FLY_SUCCESS || verdict == FLY_FAILURE || verdict == FLY_RETRY, "no single verdict");
  check(p.attempts == 1, "the attempt was not counted");
  if (verdict == FLY_SUCCESS) {
    check(!a.code && status >= 200 && status <= 299, "a success that is not a 2xx");
    check(fly_reply_accept(&a, op->returns, body, body_len) == NULL, "a success the operation does not return");
    if (op->returns == FLY_RETURNS_JSON || op->returns == FLY_RETURNS_JSON_BYTES) {
      size_t i = 0;
      while (i < body_len && strchr(" \t\r\n", body[i])) i++;
      check(i < body_len && (body[i] == '{' || body[i] == '['), "a JSON success that is no object or array");
      check(a.media == FLY_MEDIA_JSON || a.media == FLY_MEDIA_NONE ||
                (op->returns == FLY_RETURNS_JSON_BYTES && a.media == FLY_MEDIA_BYTES),
            "a JSON success labelled otherwise");
    }
  } else if (verdict == FLY_RETRY) {
    check(retry_at >= now, "a retry in the past");
    check(!p.deadline || retry_at + p.took < p.deadline, "a retry that does not fit before the deadline");
    check(!a.code || strcmp(a.code, "too_large") != 0, "too_large retried");
    if (!a.code && a.status == 429 && a.retry_after >= 0) {
      check(a.retry_after <= p.max_wait, "a Retry-After over max_wait honoured");
      check(retry_at - now >= a.retry_after, "retried before Retry-After");
    }
    check(a.code || p.safe || a.status == 429, "an unsafe request retried after it was executed");
  }
  if (a.code && a.keep_status) check(a.status == status, "a kept status changed");
  free(body);
  return 0;
}
