/*
 * bench/plain.c — the baseline for bench/run: N sequential GETs with plain
 * libcurl, the way a careful C program would do them.
 *
 *   usage: plain [--ids] URL N TOKEN
 *
 * Without --ids every request fetches URL.  With --ids, URL is a prefix and
 * each request fetches a URL of its own: URL followed by a new 14-character
 * machine id ("e2865" and 9 hex digits of a counter, as bench/get.lua makes
 * them), set on the handle before each request.
 *
 * One easy handle, reused for every request (so one keep-alive connection),
 * the same request headers the fly module sends (Authorization, User-Agent,
 * Accept, Accept-Encoding; the User-Agent string comes from the
 * environment variable BENCH_USER_AGENT when set), and each response body
 * collected into a fresh growing heap buffer (as the module does before it
 * hands the body to the JSON decoder).  The body is not parsed.
 *
 * One untimed request opens the connection; the N timed requests follow.
 * Output (stdout, one line, first field is the rate; cpu is this process's
 * processor time, user + system, over the timed requests):
 *   <rate> requests/s (N=<n>, <seconds> s, <bytes> body bytes/request, cpu=<us> us/request)
 * Exit status is non-zero when any request fails or answers other than 200.
 */
#define _POSIX_C_SOURCE 200809L

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* the first characters of every machine id made with --ids */
#define ID_PREFIX "e2865"

#ifndef BENCH_USER_AGENT
#define BENCH_USER_AGENT "fly-machines (bench/plain.c)"
#endif

struct buf {
    char *data;
    size_t len, cap;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t n = size * nmemb;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return 0; /* makes curl fail with CURLE_WRITE_ERROR */
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now(void) { return clock_s(CLOCK_MONOTONIC); }

/* processor time of this process (user + system), seconds */
static double cpu(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

/* One request; returns the body length, or -1 (message on stderr). */
static long get_once(CURL *h, long i, const char *prefix)
{
    struct buf b = {NULL, 0, 0};
    long status = 0, len;
    CURLcode rc;

    if (prefix) {
        char url[2048];
        int w = snprintf(url, sizeof url, "%s%s%09lx", prefix, ID_PREFIX, (unsigned long)i);
        if (w < 0 || (size_t)w >= sizeof url) {
            fprintf(stderr, "plain: URL too long\n");
            return -1;
        }
        curl_easy_setopt(h, CURLOPT_URL, url); /* libcurl copies it */
    }
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    rc = curl_easy_perform(h);
    if (rc != CURLE_OK) {
        fprintf(stderr, "plain: request %ld: %s\n", i, curl_easy_strerror(rc));
        free(b.data);
        return -1;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200 || b.len == 0) {
        fprintf(stderr, "plain: request %ld: HTTP %ld, %zu body bytes\n", i, status, b.len);
        free(b.data);
        return -1;
    }
    len = (long)b.len;
    free(b.data);
    return len;
}

int main(int argc, char **argv)
{
    const char *url, *token, *ua, *prefix = NULL;
    char *end, *auth;
    long n, i, len = 0;
    struct curl_slist *headers = NULL;
    CURL *h;
    double t0, dt, c0, dc;
    int status = 1;

    if (argc == 5 && strcmp(argv[1], "--ids") == 0) {
        argv++;
        argc--;
        prefix = argv[1];
    }
    if (argc != 4) {
        fprintf(stderr, "usage: %s [--ids] URL N TOKEN\n", argv[0]);
        return 2;
    }
    url = argv[1];
    errno = 0;
    n = strtol(argv[2], &end, 10);
    if (errno || *end || n < 1) {
        fprintf(stderr, "plain: N must be a positive integer, got '%s'\n", argv[2]);
        return 2;
    }
    token = argv[3];

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "plain: curl_global_init failed\n");
        return 1;
    }
    h = curl_easy_init();
    auth = malloc(strlen(token) + sizeof "Authorization: Bearer ");
    if (!h || !auth) {
        fprintf(stderr, "plain: out of memory\n");
        goto done;
    }
    sprintf(auth, "Authorization: Bearer %s", token);
    headers = curl_slist_append(headers, auth);
    headers = curl_slist_append(headers, "Accept: application/json");
    if (!headers) {
        fprintf(stderr, "plain: out of memory\n");
        goto done;
    }

    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    ua = getenv("BENCH_USER_AGENT");
    curl_easy_setopt(h, CURLOPT_USERAGENT, ua && *ua ? ua : BENCH_USER_AGENT);
    /* as the module: Accept-Encoding with every decoder libcurl has (the
     * bench server does not compress, so only the header bytes matter) */
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);

    /* warm-up: opens the connection, not timed */
    if (get_once(h, 0, prefix) < 0)
        goto done;

    t0 = now();
    c0 = cpu();
    for (i = 1; i <= n; i++) {
        len = get_once(h, i, prefix);
        if (len < 0)
            goto done;
    }
    dt = now() - t0;
    dc = cpu() - c0;

    printf("%.1f requests/s (N=%ld, %.3f s, %ld body bytes/request, cpu=%.2f us/request)\n",
           (double)n / dt, n, dt, len, dc / (double)n * 1e6);
    status = 0;

done:
    curl_slist_free_all(headers);
    free(auth);
    if (h)
        curl_easy_cleanup(h);
    curl_global_cleanup();
    return status;
}
