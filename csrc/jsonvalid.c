/* The JSON checker (see jsonvalid.h): one pass over the text, with the open
 * containers kept in a small array instead of recursion. */
#include "jsonvalid.h"

static int is_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static const char *spaces(const char *p, const char *e) {
  while (p < e && is_space(*p)) p++;
  return p;
}

static int hex4(const char *p, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

/* A string (p at its opening quote): past its closing quote, or NULL. */
static const char *string(const char *p, const char *e) {
  for (p++; p < e;) {
    unsigned char c = (unsigned char)*p++;
    if (c == '"') return p;
    if (c < 0x20) return NULL;
    if (c != '\\') continue;
    if (p >= e) return NULL;
    switch (*p++) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': break;
    case 'u': {
      unsigned cp, lo;
      if (e - p < 4 || !hex4(p, &cp)) return NULL;
      p += 4;
      if (cp >= 0xD800 && cp <= 0xDBFF) { /* a high surrogate: its low one must follow */
        if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
          return NULL;
        p += 6;
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return NULL;
      }
      break;
    }
    default: return NULL;
    }
  }
  return NULL;
}

/* A number: past it, or NULL. */
static const char *number(const char *p, const char *e) {
  if (p < e && *p == '-') p++;
  if (p >= e) return NULL;
  if (*p == '0') p++;
  else if (is_digit(*p)) while (p < e && is_digit(*p)) p++;
  else return NULL;
  if (p < e && *p == '.') {
    if (++p >= e || !is_digit(*p)) return NULL;
    while (p < e && is_digit(*p)) p++;
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    if (++p < e && (*p == '+' || *p == '-')) p++;
    if (p >= e || !is_digit(*p)) return NULL;
    while (p < e && is_digit(*p)) p++;
  }
  return p;
}

static const char *word(const char *p, const char *e, const char *w, size_t n) {
  if ((size_t)(e - p) < n) return NULL;
  for (size_t i = 0; i < n; i++)
    if (p[i] != w[i]) return NULL;
  return p + n;
}

int fly_json_valid(const char *s, size_t n) {
  const char *p = spaces(s, s + n), *e = s + n;
  char open[FLY_JSON_MAX_DEPTH]; /* '{' or '[' for each open container */
  int depth = 0;
  enum { VALUE, NAME, NEXT } want = VALUE; /* what comes next (after spaces) */
  for (;;) {
    if (want == NAME) { /* a member's name and its colon, then its value */
      if (p >= e || *p != '"' || !(p = string(p, e))) return 0;
      p = spaces(p, e);
      if (p >= e || *p != ':') return 0;
      p = spaces(p + 1, e);
      want = VALUE;
    }
    if (want == VALUE) {
      if (p >= e) return 0;
      char c = *p;
      if (c == '{' || c == '[') {
        if (depth == FLY_JSON_MAX_DEPTH) return 0;
        open[depth++] = c;
        p = spaces(p + 1, e);
        if (p < e && *p == (c == '{' ? '}' : ']')) { /* empty */
          depth--;
          p++;
        } else {
          want = c == '{' ? NAME : VALUE;
          continue;
        }
      } else if (c == '"') {
        p = string(p, e);
      } else if (c == 't') {
        p = word(p, e, "true", 4);
      } else if (c == 'f') {
        p = word(p, e, "false", 5);
      } else if (c == 'n') {
        p = word(p, e, "null", 4);
      } else {
        p = number(p, e);
      }
      if (!p) return 0;
    }
    /* after a value: the end, a comma or a closing bracket */
    p = spaces(p, e);
    if (depth == 0) return p == e;
    if (p >= e) return 0;
    char top = open[depth - 1];
    if (*p == ',') {
      p = spaces(p + 1, e);
      want = top == '{' ? NAME : VALUE;
    } else if (*p == (top == '{' ? '}' : ']')) {
      depth--;
      p++;
      want = NEXT;
    } else {
      return 0;
    }
  }
}
