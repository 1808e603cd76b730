/* link_load.c - N simulated nodes against one portcullis-controller: the
 * load generator of the issue-4 benchmark (tests/bench/link_bench.sh starts
 * the controller and runs this; docs/benchmarks.md has the figures).
 *
 *   link_load --rest HOST:PORT --rest-ca FILE --hub HOST:PORT --hub-ca FILE
 *             [--nodes 1000] [--offices 10] [--rounds 3] [--sustain-seconds 30]
 *             [--events 2000000] [--ingest-seconds 120] [--pid CONTROLLER_PID]
 *             [--workers 4] [--parallel 64] [--hub-path /]
 *   The admin token comes from PORTCULLIS_ADMIN_TOKEN.
 *
 * Every simulated node is a real one as far as the hub can tell: its own EC
 * P-256 key, a certificate the controller's CA issued through the real
 * enrollment (REST token, then POST /enroll on the hub port with a CSR), a
 * TLS connection with that certificate, a websocket (RFC 6455, subprotocol
 * portcullis.v1) and the messages of docs/link.md built and parsed with
 * pc_wire. One libwebsockets client context cannot hold a thousand client
 * certificates, so the nodes are plain OpenSSL on non-blocking sockets, all
 * in one epoll loop, with a minimal websocket client: the upgrade checked
 * (101, Sec-WebSocket-Accept, the subprotocol), masked frames out, server
 * frames in with 16/64-bit lengths, fragments, ping/pong and close.
 *
 * Phases, each printing its figures:
 *   1. setup: 1 region, OFFICES offices, NODES nodes, one enrollment token
 *      each (REST), each node enrolled (key, CSR, POST /enroll); WORKERS
 *      threads, each with its own keep-alive connections.
 *   2. connect: every node connects (at most PARALLEL handshakes at once)
 *      and says hello; done when each has its events_ack and has acked the
 *      policy the hub sent it; GET /api/v1/hub must say connected = NODES.
 *   3. policy: ROUNDS times, one PUT /api/v1/settings/global that changes
 *      every office's document (high_port_threshold); per node the time
 *      from the PUT's start to the policy frame and to its ack written;
 *      then GET /api/v1/nodes (paged) must show every node's
 *      enforced_version at the new version.
 *   4. sustained ingest: for SUSTAIN_SECONDS every node sends events (seq
 *      1, 2, ... ascending, shaped as docs/events.md) in batches of up to
 *      1000 as the hub's credit allows (a grant adds to what it holds); the
 *      rate is what was acked as stored within the window; then nothing
 *      more is sent until all is acked.
 *   5. backlog: EVENTS events in total, each node its share, sent the same
 *      way, timed until the last is acked (at most INGEST_SECONDS).
 *   During 4 and 5 a thread times GET /api/v1/health and GET
 *   /api/v1/nodes?limit=100 in turn every 100 ms, and once a second the
 *   loop logs what is stored, what the hub holds unstored (GET
 *   /api/v1/hub events_held) and credit held by nodes with nothing to send.
 *   The controller's VmRSS / VmHWM and CPU time (/proc/PID) are sampled
 *   throughout when --pid is given.
 * The last line is "RESULT " and one JSON object with every figure. Exit 0
 * when every phase completed (targets met or not), 1 otherwise.
 */
#include "pc_pki.h"
#include "pc_wire.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SOFTWARE "link_load/1"
#define IO_TIMEOUT_S 30
#define FRAME_IN_MAX (PCW_CONTROLLER_FRAME_MAX + 16)
#define WRITE_CHUNK (64 * 1024)
#define POOL 64

/* ------------------------------------------------------------------ misc */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("link_load: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(ap);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The q-th quantile (0..1) of n sorted values, nearest rank. */
static int64_t quantile(const int64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t k = (size_t)(q * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

static double ms(int64_t ns)
{
    return (double)ns / 1e6;
}

/* ------------------------------------------------------------ the options */

typedef struct options {
    char rest_host[64];
    int rest_port;
    const char *rest_ca;
    char hub_host[64];
    int hub_port;
    const char *hub_ca;
    const char *hub_path;
    const char *token;
    unsigned nodes, offices, workers, parallel, rounds, ingest_s, sustain_s;
    int64_t events;
    pid_t pid;
} options;

static options opt = {
    .hub_path = "/",
    .nodes = 1000,
    .offices = 10,
    .workers = 4,
    .parallel = 64,
    .rounds = 3,
    .ingest_s = 120,
    .sustain_s = 30,
    .events = 2000000,
};

static int parse_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= hostlen || colon == s)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (!end || *end || p < 1 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

/* ------------------------------------------ the controller's /proc figures */

typedef struct proc_sample {
    long rss_kib, hwm_kib;
    double cpu_s; /* user + system */
} proc_sample;

static int proc_read(pid_t pid, proc_sample *out)
{
    char path[64], line[256];
    memset(out, 0, sizeof(*out));
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            out->rss_kib = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "VmHWM:", 6) == 0)
            out->hwm_kib = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command's closing parenthesis: state is field 3,
     * utime 14, stime 15. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    out->cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    return 0;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ------------------------------------------------ blocking HTTPS requests */

/* One keep-alive HTTPS connection (REST or the hub's /enroll), blocking
 * with IO_TIMEOUT_S timeouts, reconnected when the server closed it. */
typedef struct hconn {
    const char *host;
    int port;
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
    char *buf;
    size_t len, cap;
} hconn;

typedef struct hresp {
    int status;
    char *body; /* NUL-terminated, the caller frees (hresp_free) */
    size_t body_len;
    char etag[64];
} hresp;

static void hresp_free(hresp *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

static SSL_CTX *tls_ctx_new(const char *cafile, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
        snprintf(err, errlen, "%s: cannot load as CA certificate", cafile);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

/* Checks the server certificate names host (an IP literal or a DNS name). */
static void tls_expect_host(SSL *ssl, const char *host)
{
    X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        X509_VERIFY_PARAM_set1_ip_asc(vp, host);
    else
        X509_VERIFY_PARAM_set1_host(vp, host, 0);
}

static int tcp_connect(const char *host, int port, bool nonblock)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (!nonblock) {
        struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void hc_close(hconn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->len = 0;
}

static void hc_free(hconn *c)
{
    hc_close(c);
    free(c->buf);
    c->buf = NULL;
    c->cap = 0;
}

static int hc_open(hconn *c, char *err, size_t errlen)
{
    c->len = 0;
    c->fd = tcp_connect(c->host, c->port, false);
    if (c->fd < 0) {
        snprintf(err, errlen, "connect %s:%d: %s", c->host, c->port, strerror(errno));
        return -1;
    }
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl) {
        snprintf(err, errlen, "SSL_new failed");
        hc_close(c);
        return -1;
    }
    tls_expect_host(c->ssl, c->host);
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) {
        snprintf(err, errlen, "TLS handshake with %s:%d: %s", c->host, c->port,
                 ERR_reason_error_string(ERR_get_error()));
        hc_close(c);
        return -1;
    }
    return 0;
}

/* Reads more into c->buf: bytes read, 0 at EOF, -1 on error. */
static ssize_t hc_fill(hconn *c)
{
    if (c->cap - c->len < 16384) {
        size_t cap = c->cap ? c->cap * 2 : 65536;
        char *b = realloc(c->buf, cap);
        if (!b)
            return -1;
        c->buf = b;
        c->cap = cap;
    }
    int n = SSL_read(c->ssl, c->buf + c->len, (int)(c->cap - c->len - 1));
    if (n > 0) {
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
        return n;
    }
    return SSL_get_error(c->ssl, n) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

static void hc_consume(hconn *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    if (c->buf)
        c->buf[c->len] = '\0';
}

/* Finds a header's value in the head (lines after the first), copied into
 * out; 0 when found. */
static int head_get(const char *head, size_t headlen, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    const char *p = memchr(head, '\n', headlen), *end = head + headlen;
    while (p && p < end) {
        p++;
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            size_t n = (size_t)(ve - v);
            if (n >= outlen)
                n = outlen - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return 0;
        }
        p = eol;
    }
    return -1;
}

/* Reads one response. Returns 0, or -1 (connection unusable). *got_any
 * says whether any byte of it arrived. */
static int hc_read_response(hconn *c, hresp *r, bool *close_after, bool *got_any)
{
    char *head_end;
    *got_any = c->len > 0;
    while (!(head_end = c->buf ? strstr(c->buf, "\r\n\r\n") : NULL)) {
        if (c->len > 65536 || hc_fill(c) <= 0)
            return -1;
        *got_any = true;
    }
    size_t headlen = (size_t)(head_end - c->buf) + 4;
    char v[128];
    if (sscanf(c->buf, "HTTP/1.%*d %d", &r->status) != 1)
        return -1;
    *close_after =
        head_get(c->buf, headlen, "Connection", v, sizeof(v)) == 0 && strcasecmp(v, "close") == 0;
    if (head_get(c->buf, headlen, "ETag", v, sizeof(v)) == 0)
        snprintf(r->etag, sizeof(r->etag), "%.63s", v);
    bool chunked = head_get(c->buf, headlen, "Transfer-Encoding", v, sizeof(v)) == 0 &&
                   strcasecmp(v, "chunked") == 0;
    long long clen = -1;
    if (head_get(c->buf, headlen, "Content-Length", v, sizeof(v)) == 0)
        clen = atoll(v);
    hc_consume(c, headlen);
    size_t blen = 0, bcap = 4096;
    char *body = malloc(bcap);
    if (!body)
        return -1;
    if (chunked) {
        for (;;) {
            char *eol;
            while (!(eol = c->buf ? strstr(c->buf, "\r\n") : NULL))
                if (hc_fill(c) <= 0)
                    goto fail;
            size_t sz = strtoul(c->buf, NULL, 16);
            hc_consume(c, (size_t)(eol - c->buf) + 2);
            while (c->len < sz + 2)
                if (hc_fill(c) <= 0)
                    goto fail;
            if (blen + sz + 1 > bcap) {
                bcap = (blen + sz + 1) * 2;
                char *nb = realloc(body, bcap);
                if (!nb)
                    goto fail;
                body = nb;
            }
            memcpy(body + blen, c->buf, sz);
            blen += sz;
            hc_consume(c, sz + 2);
            if (sz == 0)
                break; /* no trailers expected: the last chunk's CRLF ends it */
        }
    } else if (clen >= 0) {
        while (c->len < (size_t)clen)
            if (hc_fill(c) <= 0)
                goto fail;
        if ((size_t)clen + 1 > bcap) {
            char *nb = realloc(body, (size_t)clen + 1);
            if (!nb)
                goto fail;
            body = nb;
        }
        memcpy(body, c->buf, (size_t)clen);
        blen = (size_t)clen;
        hc_consume(c, (size_t)clen);
    } else {
        ssize_t n;
        while ((n = hc_fill(c)) > 0)
            ;
        if (n < 0 && c->len == 0)
            goto fail;
        char *nb = realloc(body, c->len + 1);
        if (!nb)
            goto fail;
        body = nb;
        memcpy(body, c->buf, c->len);
        blen = c->len;
        c->len = 0;
        *close_after = true;
    }
    body[blen] = '\0';
    r->body = body;
    r->body_len = blen;
    return 0;
fail:
    free(body);
    return -1;
}

/* One request: 0 with *r filled (any status), or -1 with err. A request on
 * a kept-alive connection that the server had closed is sent again once. */
static int hc_request(hconn *c, const char *method, const char *path, const char *auth,
                      const char *if_match, const char *body, hresp *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof(*r));
    size_t blen = body ? strlen(body) : 0;
    char head[1024], a[300] = "", m[100] = "";
    if (auth)
        snprintf(a, sizeof(a), "Authorization: Bearer %s\r\n", auth);
    if (if_match)
        snprintf(m, sizeof(m), "If-Match: %s\r\n", if_match);
    int hl =
        snprintf(head, sizeof(head),
                 "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%s%s%sContent-Length: %zu\r\n\r\n", method, path,
                 c->host, c->port, a, m, body ? "Content-Type: application/json\r\n" : "", blen);
    if (hl < 0 || (size_t)hl >= sizeof(head)) {
        snprintf(err, errlen, "request head too long");
        return -1;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        bool reused = c->ssl != NULL;
        if (!c->ssl && hc_open(c, err, errlen) != 0)
            return -1;
        bool close_after = false, got_any = false;
        if (SSL_write(c->ssl, head, hl) == hl &&
            (blen == 0 || SSL_write(c->ssl, body, (int)blen) == (int)blen) &&
            hc_read_response(c, r, &close_after, &got_any) == 0) {
            if (close_after)
                hc_close(c);
            return 0;
        }
        hc_close(c);
        if (!reused || got_any)
            break;
    }
    snprintf(err, errlen, "%s %s on %s:%d: no answer", method, path, c->host, c->port);
    return -1;
}

/* A request whose answer must have status want and a JSON body (parsed
 * into *json when json is not NULL). */
static int hc_json(hconn *c, const char *method, const char *path, const char *body, int want,
                   cJSON **json, char *etag, size_t etaglen, char *err, size_t errlen)
{
    hresp r;
    if (json)
        *json = NULL;
    if (hc_request(c, method, path, opt.token, NULL, body, &r, err, errlen) != 0)
        return -1;
    int rc = -1;
    if (r.status != want) {
        snprintf(err, errlen, "%s %s: status %d, wanted %d: %.300s", method, path, r.status, want,
                 r.body ? r.body : "");
        goto done;
    }
    if (etag)
        snprintf(etag, etaglen, "%s", r.etag);
    if (json && !(*json = cJSON_ParseWithLength(r.body, r.body_len))) {
        snprintf(err, errlen, "%s %s: answer is not JSON: %.200s", method, path, r.body);
        goto done;
    }
    rc = 0;
done:
    hresp_free(&r);
    return rc;
}

static int64_t json_int(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
}

/* Adds a figure rounded to 3 decimals, its name prefixed. */
static void add_fig(cJSON *o, const char *prefix, const char *name, double v)
{
    char key[96];
    snprintf(key, sizeof(key), "%s%s", prefix, name);
    cJSON_AddNumberToObject(o, key, (double)llround(v * 1000) / 1000);
}

/* --------------------------------------------------------- simulated nodes */

typedef enum { S_IDLE = 0, S_TCP, S_TLS, S_UPGRADE, S_OPEN, S_DEAD } sim_state;

typedef struct sim {
    unsigned idx;
    char name[32];
    int64_t id, office_id;
    EVP_PKEY *key;
    X509 *cert;

    sim_state st;
    int fd;
    SSL *ssl;
    uint32_t events_mask; /* what epoll watches now */
    bool write_wants_read;
    char ws_accept[32]; /* the Sec-WebSocket-Accept expected */

    unsigned char *in; /* bytes read, not yet parsed */
    size_t in_off, in_len, in_cap;
    unsigned char *msg; /* a fragmented message being put together */
    size_t msg_len, msg_cap;
    int msg_op;         /* 0: none in progress */
    unsigned char *out; /* bytes to write */
    size_t out_off, out_len, out_cap;

    bool ready; /* has its events_ack after hello */
    int64_t policy_version;
    int64_t policies;                 /* policy frames received */
    int64_t t_policy;                 /* when the last policy frame was parsed */
    int64_t t_ack;                    /* when its ack was written out */
    uint64_t out_queued, out_written; /* bytes, since the start */
    uint64_t ack_mark;                /* the ack is written once out_written reaches it */
    bool ack_waiting;
    char policy_sha[65];
    int64_t acked_seq;  /* highest seq the hub says it stored */
    int64_t sent_seq;   /* highest seq sent */
    int64_t quota;      /* the last seq this node sends */
    int64_t credit;     /* events it may still send */
    int64_t t_last_ack; /* when the events_ack that completed it came */
    uint64_t errors, pings, batches;
} sim;

/* PH_SETTLE: the ingest is over, nothing more is sent, acks still count. */
typedef enum { PH_SETUP = 0, PH_CONNECT, PH_POLICY, PH_INGEST, PH_SETTLE, PH_DONE } phase;

static struct {
    int ep;
    SSL_CTX *ctx;
    sim *sims;
    unsigned n;
    phase ph;
    unsigned connecting; /* sims in S_TCP / S_TLS / S_UPGRADE */
    unsigned next_connect;
    unsigned open, ready, dead;
    uint64_t error_msgs, unexpected_msgs, closed_by_peer;
    int64_t acked_total; /* sum over sims of acked_seq in the ingest phase */
    int64_t sent_total;
    unsigned ingest_done; /* sims with every event acked */
    uint64_t rng;
    cJSON *counters;
    /* the event pool: POOL event objects as JSON text */
    char *pool[POOL];
    size_t pool_len[POOL];
    int64_t pool_time_s;
    char first_error[512];
} L = {.ep = -1};

static uint32_t rng32(void)
{
    /* xorshift64*: the mask keys (RFC 6455 wants them unpredictable to
     * script in a browser; a load generator's can come from a fast PRNG). */
    L.rng ^= L.rng >> 12;
    L.rng ^= L.rng << 25;
    L.rng ^= L.rng >> 27;
    return (uint32_t)((L.rng * 2685821657736338717ULL) >> 32);
}

static void note_error(sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_error(sim *s, const char *fmt, ...)
{
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    s->errors++;
    if (!L.first_error[0])
        snprintf(L.first_error, sizeof(L.first_error), "%s: %s", s->name, buf);
}

static void sim_set_mask(sim *s, uint32_t mask)
{
    if (s->fd < 0 || mask == s->events_mask)
        return;
    struct epoll_event ev = {.events = mask, .data.u32 = s->idx};
    if (epoll_ctl(L.ep, EPOLL_CTL_MOD, s->fd, &ev) == 0)
        s->events_mask = mask;
}

static void sim_kill(sim *s, const char *why)
{
    if (s->st == S_DEAD || s->st == S_IDLE)
        return;
    if (s->st == S_TCP || s->st == S_TLS || s->st == S_UPGRADE)
        L.connecting--;
    if (s->st == S_OPEN)
        L.open--;
    if (s->ready)
        L.ready--;
    s->ready = false;
    note_error(s, "connection closed: %s", why);
    if (s->ssl) {
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0) {
        epoll_ctl(L.ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    s->st = S_DEAD;
    L.dead++;
}

static int buf_reserve(unsigned char **b, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    unsigned char *nb = realloc(*b, c);
    if (!nb)
        return -1;
    *b = nb;
    *cap = c;
    return 0;
}

static int out_append(sim *s, const void *data, size_t len)
{
    if (s->out_off > 0 && s->out_off == s->out_len)
        s->out_off = s->out_len = 0;
    if (s->out_off > 0 && s->out_len + len > s->out_cap) {
        memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
        s->out_len -= s->out_off;
        s->out_off = 0;
    }
    if (buf_reserve(&s->out, &s->out_cap, s->out_len + len) != 0)
        return -1;
    memcpy(s->out + s->out_len, data, len);
    s->out_len += len;
    s->out_queued += len;
    return 0;
}

/* Writes what it can of s->out. */
static void sim_flush(sim *s)
{
    while (s->out_off < s->out_len) {
        size_t n = s->out_len - s->out_off;
        if (n > WRITE_CHUNK)
            n = WRITE_CHUNK;
        ERR_clear_error();
        int w = SSL_write(s->ssl, s->out + s->out_off, (int)n);
        if (w > 0) {
            s->out_off += (size_t)w;
            s->out_written += (uint64_t)w;
            if (s->ack_waiting && s->out_written >= s->ack_mark) {
                s->ack_waiting = false;
                s->t_ack = now_ns();
            }
            continue;
        }
        int e = SSL_get_error(s->ssl, w);
        if (e == SSL_ERROR_WANT_WRITE) {
            sim_set_mask(s, EPOLLIN | EPOLLOUT);
            return;
        }
        if (e == SSL_ERROR_WANT_READ) {
            s->write_wants_read = true;
            sim_set_mask(s, EPOLLIN);
            return;
        }
        sim_kill(s, "write failed");
        return;
    }
    s->out_off = s->out_len = 0;
    sim_set_mask(s, EPOLLIN);
}

/* Queues one frame (opcode op) with payload p/len, masked. */
static int ws_queue(sim *s, int op, const unsigned char *p, size_t len)
{
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = (unsigned char)(0x80 | op);
    if (len < 126) {
        hdr[h++] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(len >> 8);
        hdr[h++] = (unsigned char)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    uint32_t mk = rng32();
    unsigned char mask[4];
    memcpy(mask, &mk, 4);
    memcpy(hdr + h, mask, 4);
    h += 4;
    if (s->out_off > 0 && s->out_off == s->out_len)
        s->out_off = s->out_len = 0;
    if (out_append(s, hdr, h) != 0 || buf_reserve(&s->out, &s->out_cap, s->out_len + len) != 0)
        return -1;
    unsigned char *d = s->out + s->out_len;
    /* Mask eight bytes at a time; the key repeats every four. */
    uint64_t m8;
    unsigned char m8b[8] = {mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]};
    memcpy(&m8, m8b, 8);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= m8;
        memcpy(d + i, &w, 8);
    }
    for (; i < len; i++)
        d[i] = p[i] ^ mask[i & 3];
    s->out_len += len;
    s->out_queued += len;
    return 0;
}

static int ws_send_frame(sim *s, pcw_frame *f)
{
    int rc = ws_queue(s, 1, (const unsigned char *)pcw_payload(f), f->len);
    pcw_frame_free(f);
    if (rc != 0)
        sim_kill(s, "out of memory");
    return rc;
}

/* -------------------------------------------------------------- the events */

static const struct {
    const char *type, *reason, *detail, *dest, *proto;
    int port;
} ev_kinds[] = {
    {"block", "blocked-domain", "host www.skype.com matches skype.com (list skype)",
     "www.skype.com", "http", 80},
    {"block", "blocked-domain", "sni login.live.com matches login.live.com (list skype)",
     "login.live.com", "tls", 443},
    {"block", "tls-no-handshake", "first record is not a TLS handshake (type 0x17)",
     "157.55.130.146", "tls", 443},
    {"block", "blocked-url-suffix", "path /download/SkypeSetup.exe ends with skype.exe",
     "download.skype.com", "http", 80},
    {"block", "executable-download", "response content type application/x-msdownload",
     "get.example.net", "http", 80},
    {"block", "rtsp-bad-request-line", "request line is not RTSP/1.0", "91.190.216.21", "rtsp",
     554},
    {"exception", "skype-exception", "group execs: skype rule lifted", "web.skype.com", "tls", 443},
    {"allow", "closed", "", "intranet.example.org", "http", 80},
};

/* Fills the pool with POOL events timestamped now (refreshed every second,
 * so stored times move as a real node's would). */
static int pool_fill(void)
{
    int64_t t = wall_ms();
    if (t / 1000 == L.pool_time_s && L.pool[0])
        return 0;
    L.pool_time_s = t / 1000;
    time_t sec = (time_t)(t / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    for (unsigned i = 0; i < POOL; i++) {
        unsigned k = i % (sizeof(ev_kinds) / sizeof(ev_kinds[0]));
        const char *type = ev_kinds[k].type;
        char buf[768];
        int n = snprintf(
            buf, sizeof(buf),
            "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\",\"type\":\"%s\",\"verdict\":\"%s\","
            "\"reason\":\"%s\",\"detail\":\"%s\",\"source\":\"10.%u.%u.%u\",\"source_port\":%u,"
            "\"destination\":\"%s\",\"destination_address\":%s,\"port\":%d,\"protocol\":\"%s\","
            "\"group\":\"%s\",\"policy_version\":%d,\"bytes_up\":%u,\"bytes_down\":%u}",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
            (int)(t % 1000), type, strcmp(type, "block") == 0 ? "blocked" : "allowed",
            ev_kinds[k].reason, ev_kinds[k].detail, (i * 7) % 250 + 1, (i * 13) % 250,
            (i * 31) % 250 + 1, 40000 + i * 97, ev_kinds[k].dest,
            k == 1 ? "\"13.107.42.14\"" : "null", ev_kinds[k].port, ev_kinds[k].proto,
            i % 3 == 0 ? "staff" : (i % 3 == 1 ? "guests" : "defaults"), 2, 80 + i * 11,
            strcmp(type, "allow") == 0 ? 5000 + i * 101 : 0);
        if (n < 0 || (size_t)n >= sizeof(buf))
            return -1;
        char *copy = strdup(buf);
        if (!copy)
            return -1;
        free(L.pool[i]);
        L.pool[i] = copy;
        L.pool_len[i] = (size_t)n;
    }
    return 0;
}

/* Sends batches while the node holds credit and has events left. */
static void sim_send_events(sim *s)
{
    static const char *ptrs[PCW_EVENTS_MAX];
    static size_t lens[PCW_EVENTS_MAX];
    static int64_t seqs[PCW_EVENTS_MAX];
    if (L.ph != PH_INGEST || s->st != S_OPEN || !s->ready)
        return;
    while (s->credit > 0 && s->sent_seq < s->quota && s->st == S_OPEN) {
        int64_t n = s->quota - s->sent_seq;
        if (n > s->credit)
            n = s->credit;
        if (n > PCW_EVENTS_MAX)
            n = PCW_EVENTS_MAX;
        for (int64_t i = 0; i < n; i++) {
            unsigned k = (unsigned)((s->sent_seq + i + s->idx) % POOL);
            ptrs[i] = L.pool[k];
            lens[i] = L.pool_len[k];
            seqs[i] = s->sent_seq + 1 + i;
        }
        pcw_frame f;
        if (pcw_build_events(&f, ptrs, lens, seqs, (size_t)n, 0) != 0) {
            sim_kill(s, "out of memory building events");
            return;
        }
        if (ws_send_frame(s, &f) != 0)
            return;
        s->sent_seq += n;
        s->credit -= n;
        s->batches++;
        L.sent_total += n;
    }
    sim_flush(s);
}

/* ------------------------------------------------------- message handling */

static void sim_on_message(sim *s, const unsigned char *p, size_t len)
{
    pcw_msg m;
    char err[256];
    if (pcw_parse((const char *)p, len, &m, err, sizeof(err)) != 0) {
        note_error(s, "bad message from the hub: %s", err);
        L.unexpected_msgs++;
        return;
    }
    pcw_frame f;
    switch (m.type) {
    case PCW_POLICY: {
        char sha[65];
        s->t_policy = now_ns();
        s->policies++;
        pcw_sha256_hex(m.u.policy.document, m.u.policy.document_len, sha);
        bool ok = strcmp(sha, m.u.policy.sha256) == 0;
        if (!ok)
            note_error(s, "policy %lld: sha256 of the document is %s, message says %s",
                       (long long)m.u.policy.version, sha, m.u.policy.sha256);
        if (pcw_build_ack(&f, m.u.policy.version, m.u.policy.sha256, ok,
                          ok ? NULL : "sha256 mismatch") != 0 ||
            ws_send_frame(s, &f) != 0)
            break;
        if (ok) {
            s->policy_version = m.u.policy.version;
            memcpy(s->policy_sha, sha, sizeof(sha));
        }
        s->ack_mark = s->out_queued;
        s->ack_waiting = true;
        sim_flush(s);
        break;
    }
    case PCW_EVENTS_ACK: {
        bool first = !s->ready;
        int64_t old = s->acked_seq;
        if (m.u.events_ack.seq > s->acked_seq)
            s->acked_seq = m.u.events_ack.seq;
        if (L.ph == PH_INGEST || L.ph == PH_SETTLE) {
            L.acked_total += s->acked_seq - old;
            if (s->acked_seq >= s->quota && old < s->quota) {
                s->t_last_ack = now_ns();
                L.ingest_done++;
            }
        }
        /* A grant adds to what the node holds (the hub counts what is in
         * flight against it). */
        s->credit += m.u.events_ack.credit;
        if (first) {
            s->ready = true;
            L.ready++;
            if (s->sent_seq < s->acked_seq)
                s->sent_seq = s->acked_seq;
        }
        sim_send_events(s);
        break;
    }
    case PCW_PING:
        s->pings++;
        if (pcw_build_stats(&f, wall_ms(), L.counters) == 0 && ws_send_frame(s, &f) == 0)
            sim_flush(s);
        break;
    case PCW_ERROR:
        L.error_msgs++;
        note_error(s, "hub error %s: %s", m.u.error.code, m.u.error.message);
        break;
    default:
        L.unexpected_msgs++;
        note_error(s, "unexpected %s from the hub", pcw_type_name(m.type));
        break;
    }
    pcw_msg_free(&m);
}

/* Parses the frames in s->in. */
static void sim_on_frames(sim *s)
{
    while (s->st == S_OPEN && s->in_len - s->in_off >= 2) {
        const unsigned char *b = s->in + s->in_off;
        size_t avail = s->in_len - s->in_off;
        bool fin = b[0] & 0x80;
        int op = b[0] & 0x0f;
        if (b[0] & 0x70) {
            sim_kill(s, "frame with RSV bits from the hub");
            return;
        }
        if (b[1] & 0x80) {
            sim_kill(s, "masked frame from the hub");
            return;
        }
        uint64_t plen = b[1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = (uint64_t)b[2] << 8 | b[3];
            h = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | b[2 + i];
            h = 10;
        }
        if (plen > FRAME_IN_MAX) {
            sim_kill(s, "frame over 4 MiB from the hub");
            return;
        }
        if (avail < h + plen)
            break;
        const unsigned char *p = b + h;
        s->in_off += h + (size_t)plen;
        if (op >= 8) {
            if (!fin || plen > 125) {
                sim_kill(s, "bad control frame");
                return;
            }
            if (op == 9) {
                if (ws_queue(s, 10, p, (size_t)plen) == 0)
                    sim_flush(s);
            } else if (op == 8) {
                L.closed_by_peer++;
                char why[160];
                unsigned code = plen >= 2 ? (unsigned)(p[0] << 8 | p[1]) : 0;
                snprintf(why, sizeof(why), "close frame %u from the hub: %.*s", code,
                         plen > 2 ? (int)plen - 2 : 0, (const char *)p + 2);
                unsigned char c2[2] = {p[0], p[1]};
                if (ws_queue(s, 8, c2, plen >= 2 ? 2 : 0) == 0)
                    sim_flush(s);
                sim_kill(s, why);
                return;
            }
            continue;
        }
        if (op == 0) {
            if (!s->msg_op) {
                sim_kill(s, "continuation without a message");
                return;
            }
        } else if (op == 1 || op == 2) {
            if (s->msg_op) {
                sim_kill(s, "new message inside a fragmented one");
                return;
            }
            if (fin) {
                sim_on_message(s, p, (size_t)plen);
                continue;
            }
            s->msg_op = op;
            s->msg_len = 0;
        } else {
            sim_kill(s, "unknown opcode from the hub");
            return;
        }
        if (s->msg_len + plen > FRAME_IN_MAX ||
            buf_reserve(&s->msg, &s->msg_cap, s->msg_len + (size_t)plen) != 0) {
            sim_kill(s, "fragmented message too large");
            return;
        }
        memcpy(s->msg + s->msg_len, p, (size_t)plen);
        s->msg_len += (size_t)plen;
        if (fin) {
            s->msg_op = 0;
            sim_on_message(s, s->msg, s->msg_len);
        }
    }
    if (s->in_off == s->in_len) {
        s->in_off = s->in_len = 0;
    } else if (s->in_off > 0) {
        memmove(s->in, s->in + s->in_off, s->in_len - s->in_off);
        s->in_len -= s->in_off;
        s->in_off = 0;
    }
}

/* --------------------------------------------------------- the connection */

static void b64(const unsigned char *in, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

static void sim_start(sim *s)
{
    s->fd = tcp_connect(opt.hub_host, opt.hub_port, true);
    if (s->fd < 0) {
        s->st = S_TCP;
        L.connecting++;
        sim_kill(s, strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = s->idx};
    epoll_ctl(L.ep, EPOLL_CTL_ADD, s->fd, &ev);
    s->events_mask = EPOLLOUT;
    s->st = S_TCP;
    L.connecting++;
}

static void sim_upgrade_send(sim *s)
{
    unsigned char key[16];
    char key64[32], req[512];
    RAND_bytes(key, sizeof(key));
    b64(key, sizeof(key), key64);
    /* The accept value the server must answer with (RFC 6455 4.2.2). */
    char cat[96];
    unsigned char sha[20];
    snprintf(cat, sizeof(cat), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key64);
    EVP_Digest(cat, strlen(cat), sha, NULL, EVP_sha1(), NULL);
    b64(sha, sizeof(sha), s->ws_accept);
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n",
                     opt.hub_path, opt.hub_host, opt.hub_port, key64, PCW_PROTOCOL);
    if (out_append(s, req, (size_t)n) != 0) {
        sim_kill(s, "out of memory");
        return;
    }
    s->st = S_UPGRADE;
    sim_flush(s);
}

static void sim_handshake(sim *s)
{
    if (!s->ssl) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            sim_kill(s, strerror(err));
            return;
        }
        s->ssl = SSL_new(L.ctx);
        if (!s->ssl || SSL_use_certificate(s->ssl, s->cert) != 1 ||
            SSL_use_PrivateKey(s->ssl, s->key) != 1) {
            sim_kill(s, "cannot set up TLS with the node's certificate");
            return;
        }
        tls_expect_host(s->ssl, opt.hub_host);
        SSL_set_fd(s->ssl, s->fd);
        s->st = S_TLS;
    }
    ERR_clear_error();
    int r = SSL_connect(s->ssl);
    if (r == 1) {
        sim_upgrade_send(s);
        return;
    }
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        sim_set_mask(s, EPOLLIN);
    else if (e == SSL_ERROR_WANT_WRITE)
        sim_set_mask(s, EPOLLIN | EPOLLOUT);
    else {
        char why[300];
        unsigned long ec = ERR_get_error();
        long vr = SSL_get_verify_result(s->ssl);
        snprintf(why, sizeof(why), "TLS handshake: %s%s%s",
                 ec ? ERR_reason_error_string(ec) : "connection closed",
                 vr != X509_V_OK ? "; verify: " : "",
                 vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
        sim_kill(s, why);
    }
}

/* The 101 answer: status, accept key, subprotocol. Then hello. */
static void sim_on_upgrade(sim *s)
{
    char *hend = memmem(s->in, s->in_len, "\r\n\r\n", 4);
    if (!hend) {
        if (s->in_len > 16384)
            sim_kill(s, "upgrade answer too long");
        return;
    }
    size_t hl = (size_t)(hend - (char *)s->in) + 4;
    char v[128], line[128];
    const char *head = (const char *)s->in;
    int status = 0;
    if (sscanf(head, "HTTP/1.1 %d", &status) != 1 || status != 101) {
        const char *eol = memchr(head, '\r', hl);
        snprintf(line, sizeof(line), "upgrade refused: %.*s", eol ? (int)(eol - head) : 60, head);
        sim_kill(s, line);
        return;
    }
    if (head_get(head, hl, "Sec-WebSocket-Accept", v, sizeof(v)) != 0 ||
        strcmp(v, s->ws_accept) != 0) {
        sim_kill(s, "wrong or missing Sec-WebSocket-Accept");
        return;
    }
    if (head_get(head, hl, "Sec-WebSocket-Protocol", v, sizeof(v)) != 0 ||
        strcmp(v, PCW_PROTOCOL) != 0) {
        sim_kill(s, "the hub did not agree to subprotocol portcullis.v1");
        return;
    }
    s->in_off = hl;
    s->st = S_OPEN;
    L.connecting--;
    L.open++;
    pcw_frame f;
    if (pcw_build_hello(&f, s->name, SOFTWARE, s->policy_version > 0, s->policy_version,
                        s->policy_version > 0 ? s->policy_sha : NULL, s->acked_seq, 0, 0, false, 0,
                        NULL) != 0) {
        sim_kill(s, "out of memory");
        return;
    }
    if (ws_send_frame(s, &f) == 0)
        sim_flush(s);
    sim_on_frames(s);
}

static void sim_read(sim *s)
{
    for (int rounds = 0; rounds < 64 && s->st != S_DEAD; rounds++) {
        if (buf_reserve(&s->in, &s->in_cap, s->in_len + 32768) != 0) {
            sim_kill(s, "out of memory");
            return;
        }
        ERR_clear_error();
        int n = SSL_read(s->ssl, s->in + s->in_len, (int)(s->in_cap - s->in_len));
        if (n <= 0) {
            int e = SSL_get_error(s->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            L.closed_by_peer++;
            sim_kill(s, e == SSL_ERROR_ZERO_RETURN ? "TLS closed by the hub"
                                                   : "connection reset or TLS error");
            return;
        }
        s->in_len += (size_t)n;
        if (s->st == S_UPGRADE)
            sim_on_upgrade(s);
        else if (s->st == S_OPEN)
            sim_on_frames(s);
    }
}

static void sim_on_event(sim *s, uint32_t ev)
{
    if (s->st == S_TCP || s->st == S_TLS) {
        sim_handshake(s);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (s->write_wants_read) {
            s->write_wants_read = false;
            sim_flush(s);
        }
        sim_read(s);
    }
    if (s->st != S_DEAD && (ev & EPOLLOUT))
        sim_flush(s);
}

/* ----------------------------------------------------------- the main loop */

static proc_sample P_last;
static long rss_max_kib;

static void sample_proc(void)
{
    proc_sample p;
    if (proc_read(opt.pid, &p) == 0) {
        P_last = p;
        if (p.rss_kib > rss_max_kib)
            rss_max_kib = p.rss_kib;
    }
}

typedef bool (*until_fn)(void);

/* Runs the loop until until() or deadline_ns; each second calls every(). */
static bool loop_run(until_fn until, int64_t deadline_ns, void (*every)(void))
{
    struct epoll_event evs[256];
    int64_t next_tick = now_ns() + 1000000000;
    while (!until()) {
        int64_t t = now_ns();
        if (t >= deadline_ns)
            return false;
        if (t >= next_tick) {
            next_tick = t + 1000000000;
            if (every)
                every();
        }
        while (L.ph == PH_CONNECT && L.connecting < opt.parallel && L.next_connect < L.n)
            sim_start(&L.sims[L.next_connect++]);
        int n = epoll_wait(L.ep, evs, 256, 20);
        for (int i = 0; i < n; i++)
            sim_on_event(&L.sims[evs[i].data.u32], evs[i].events);
    }
    return true;
}

/* ------------------------------------------------------- REST side thread */

/* A blocking REST job run in its own thread while the loop serves the
 * nodes. */
typedef struct job {
    void (*fn)(struct job *);
    hconn c;
    atomic_bool done;
    int rc;
    char err[512];
    /* policy round */
    const char *body, *etag;
    int64_t t_start, t_end;
    /* prober */
    atomic_bool stop;
    int64_t *lat[2];
    size_t nlat[2], caplat[2];
    unsigned failures;
} job;

static void *job_main(void *arg)
{
    job *j = arg;
    j->fn(j);
    atomic_store(&j->done, true);
    return NULL;
}

static job *J_current;
static bool job_finished(void)
{
    return atomic_load(&J_current->done);
}

/* The policy change: one PUT of the global settings. */
static void job_put_settings(job *j)
{
    hresp r = {0};
    /* Connected before the clock starts: the time is the request's. */
    if (hc_open(&j->c, j->err, sizeof(j->err)) != 0) {
        j->rc = -1;
        return;
    }
    j->t_start = now_ns();
    j->rc = hc_request(&j->c, "PUT", "/api/v1/settings/global", opt.token, j->etag, j->body, &r,
                       j->err, sizeof(j->err));
    j->t_end = now_ns();
    if (j->rc == 0 && r.status != 200) {
        snprintf(j->err, sizeof(j->err), "PUT /api/v1/settings/global: status %d: %.300s", r.status,
                 r.body ? r.body : "");
        j->rc = -1;
    }
    hresp_free(&r);
}

/* Times GET /api/v1/health and GET /api/v1/nodes?limit=100 in turn, one
 * every 100 ms, until told to stop. */
static void job_probe(job *j)
{
    static const char *const paths[2] = {"/api/v1/health", "/api/v1/nodes?limit=100"};
    for (unsigned k = 0; !atomic_load(&j->stop); k++) {
        unsigned w = k & 1;
        hresp r;
        char err[256];
        int64_t t0 = now_ns();
        int rc = hc_request(&j->c, "GET", paths[w], opt.token, NULL, NULL, &r, err, sizeof(err));
        int64_t t1 = now_ns();
        if (rc != 0 || r.status != 200) {
            j->failures++;
        } else if (j->nlat[w] < 100000) {
            if (j->nlat[w] == j->caplat[w]) {
                size_t cap = j->caplat[w] ? j->caplat[w] * 2 : 1024;
                int64_t *nl = realloc(j->lat[w], cap * sizeof(int64_t));
                if (nl) {
                    j->lat[w] = nl;
                    j->caplat[w] = cap;
                }
            }
            if (j->nlat[w] < j->caplat[w])
                j->lat[w][j->nlat[w]++] = t1 - t0;
        }
        hresp_free(&r);
        usleep(100000);
    }
}

static int job_start(job *j, pthread_t *th)
{
    atomic_store(&j->done, false);
    J_current = j;
    if (pthread_create(th, NULL, job_main, j) != 0) {
        snprintf(j->err, sizeof(j->err), "pthread_create failed");
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------- setup phase */

typedef struct setup_worker {
    hconn rest, hub;
    atomic_uint *next;
    int rc;
    char err[512];
    double enroll_ns_sum;
} setup_worker;

static int64_t *office_ids;

/* Creates node i, its token, its key and CSR, and enrolls it. */
static int setup_one(setup_worker *w, sim *s)
{
    char body[512], path[128], err[256];
    cJSON *j = NULL;
    int rc = -1;
    char *csr = NULL, *token = NULL;
    hresp r = {0};
    s->office_id = office_ids[s->idx % opt.offices];
    snprintf(body, sizeof(body), "{\"name\":\"%s\",\"office_id\":%lld}", s->name,
             (long long)s->office_id);
    if (hc_json(&w->rest, "POST", "/api/v1/nodes", body, 201, &j, NULL, 0, w->err,
                sizeof(w->err)) != 0)
        goto done;
    s->id = json_int(j, "id");
    cJSON_Delete(j);
    j = NULL;
    snprintf(path, sizeof(path), "/api/v1/nodes/%lld/enrollment", (long long)s->id);
    if (hc_json(&w->rest, "POST", path, "{}", 201, &j, NULL, 0, w->err, sizeof(w->err)) != 0)
        goto done;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "token");
    if (!cJSON_IsString(t) || !(token = strdup(t->valuestring))) {
        snprintf(w->err, sizeof(w->err), "%s: no token in the enrollment answer", path);
        goto done;
    }
    cJSON_Delete(j);
    j = NULL;
    if (pki_key_new(&s->key, err, sizeof(err)) != 0 ||
        pki_csr_new(s->key, s->name, &csr, err, sizeof(err)) != 0) {
        snprintf(w->err, sizeof(w->err), "%s: %s", s->name, err);
        goto done;
    }
    cJSON *req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "token", token) ||
        !cJSON_AddStringToObject(req, "csr", csr)) {
        cJSON_Delete(req);
        goto done;
    }
    char *rb = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!rb)
        goto done;
    /* The hub answers 429 past 20 enrollments a second (or 4 at once):
     * wait and send it again; only the answered try is timed. */
    int64_t t0 = now_ns();
    int hr = -1;
    for (int tries = 0; tries < 1200; tries++) {
        hresp_free(&r);
        t0 = now_ns();
        hr = hc_request(&w->hub, "POST", "/enroll", NULL, NULL, rb, &r, w->err, sizeof(w->err));
        if (hr != 0 || r.status != 429)
            break;
        usleep(50000);
    }
    w->enroll_ns_sum += (double)(now_ns() - t0);
    free(rb);
    if (hr != 0)
        goto done;
    if (r.status != 200) {
        snprintf(w->err, sizeof(w->err), "POST /enroll for %s: status %d: %.300s", s->name,
                 r.status, r.body ? r.body : "");
        goto done;
    }
    j = cJSON_ParseWithLength(r.body, r.body_len);
    const cJSON *cert = cJSON_GetObjectItemCaseSensitive(j, "certificate");
    if (!cJSON_IsString(cert) || pki_cert_from_pem(cert->valuestring, &s->cert, err, sizeof(err))) {
        snprintf(w->err, sizeof(w->err), "POST /enroll for %s: no certificate in %.200s", s->name,
                 r.body);
        goto done;
    }
    rc = 0;
done:
    hresp_free(&r);
    cJSON_Delete(j);
    free(csr);
    if (token) {
        explicit_bzero(token, strlen(token));
        free(token);
    }
    return rc;
}

static void *setup_main(void *arg)
{
    setup_worker *w = arg;
    w->rc = 0;
    for (;;) {
        unsigned i = atomic_fetch_add(w->next, 1);
        if (i >= L.n)
            break;
        if (setup_one(w, &L.sims[i]) != 0) {
            w->rc = -1;
            atomic_store(w->next, L.n); /* the others stop too */
            break;
        }
    }
    return NULL;
}

static int phase_setup(SSL_CTX *rest_ctx, SSL_CTX *hub_ctx, hconn *rest, cJSON *result)
{
    char err[512], body[256];
    cJSON *j = NULL;
    int rc = -1;
    int64_t t0 = now_ns();
    if (hc_json(rest, "POST", "/api/v1/regions", "{\"name\":\"bench-region\"}", 201, &j, NULL, 0,
                err, sizeof(err)) != 0)
        goto done;
    int64_t region = json_int(j, "id");
    cJSON_Delete(j);
    j = NULL;
    office_ids = calloc(opt.offices, sizeof(int64_t));
    if (!office_ids)
        goto done;
    for (unsigned i = 0; i < opt.offices; i++) {
        snprintf(body, sizeof(body), "{\"name\":\"bench-office-%02u\",\"region_id\":%lld}", i + 1,
                 (long long)region);
        if (hc_json(rest, "POST", "/api/v1/offices", body, 201, &j, NULL, 0, err, sizeof(err)) != 0)
            goto done;
        office_ids[i] = json_int(j, "id");
        cJSON_Delete(j);
        j = NULL;
    }
    atomic_uint next = 0;
    setup_worker *ws = calloc(opt.workers, sizeof(*ws));
    pthread_t *th = calloc(opt.workers, sizeof(*th));
    if (!ws || !th) {
        free(ws);
        free(th);
        goto done;
    }
    for (unsigned i = 0; i < opt.workers; i++) {
        ws[i].rest =
            (hconn){.host = opt.rest_host, .port = opt.rest_port, .ctx = rest_ctx, .fd = -1};
        ws[i].hub = (hconn){.host = opt.hub_host, .port = opt.hub_port, .ctx = hub_ctx, .fd = -1};
        ws[i].next = &next;
        pthread_create(&th[i], NULL, setup_main, &ws[i]);
    }
    double enroll_ns = 0;
    rc = 0;
    for (unsigned i = 0; i < opt.workers; i++) {
        pthread_join(th[i], NULL);
        if (ws[i].rc != 0 && rc == 0) {
            snprintf(err, sizeof(err), "%s", ws[i].err);
            rc = -1;
        }
        enroll_ns += ws[i].enroll_ns_sum;
        hc_free(&ws[i].rest);
        hc_free(&ws[i].hub);
    }
    free(ws);
    free(th);
    if (rc != 0)
        goto done;
    double secs = ms(now_ns() - t0) / 1000;
    logf_("setup: 1 region, %u offices, %u nodes created and enrolled in %.1f s (%.0f nodes/s; "
          "POST /enroll mean %.2f ms with %u workers)",
          opt.offices, L.n, secs, L.n / secs, enroll_ns / L.n / 1e6, opt.workers);
    add_fig(result, "", "setup_s", secs);
    add_fig(result, "", "enroll_mean_ms", enroll_ns / L.n / 1e6);
done:
    if (rc != 0)
        logf_("setup failed: %s", err);
    cJSON_Delete(j);
    return rc;
}

/* --------------------------------------------------------- connect phase */

static bool all_ready(void)
{
    if (L.ready + L.dead < L.n)
        return false;
    for (unsigned i = 0; i < L.n; i++)
        if (L.sims[i].st == S_OPEN && (L.sims[i].policies == 0 || L.sims[i].ack_waiting))
            return false;
    return true;
}

static void every_connect(void)
{
    sample_proc();
    logf_("  connect: %u ready, %u connecting, %u failed; controller RSS %.1f MiB", L.ready,
          L.connecting, L.dead, P_last.rss_kib / 1024.0);
}

static int hub_connected(hconn *rest, int64_t *connected, cJSON **hub_json)
{
    char err[256];
    cJSON *j = NULL;
    *connected = -1;
    if (hc_json(rest, "GET", "/api/v1/hub", NULL, 200, &j, NULL, 0, err, sizeof(err)) != 0) {
        logf_("GET /api/v1/hub: %s", err);
        return -1;
    }
    *connected = json_int(j, "connected");
    if (hub_json)
        *hub_json = j;
    else
        cJSON_Delete(j);
    return 0;
}

static int phase_connect(hconn *rest, cJSON *result)
{
    L.ph = PH_CONNECT;
    proc_sample before;
    proc_read(opt.pid, &before);
    int64_t t0 = now_ns();
    bool ok = loop_run(all_ready, t0 + 180 * (int64_t)1000000000, every_connect);
    int64_t t1 = now_ns();
    sample_proc();
    double secs = ms(t1 - t0) / 1000;
    int64_t policies = 0;
    for (unsigned i = 0; i < L.n; i++)
        policies += L.sims[i].policies > 0;
    int64_t connected = -1;
    hub_connected(rest, &connected, NULL);
    logf_("connect: %u of %u nodes connected, hello'd and holding their policy in %.2f s "
          "(%.0f/s, %u handshakes at once); %u failed; GET /api/v1/hub connected = %lld",
          L.ready, L.n, secs, L.ready / secs, opt.parallel, L.dead, (long long)connected);
    logf_("connect: controller RSS %.1f MiB (HWM %.1f MiB), CPU %.2f s in the phase",
          P_last.rss_kib / 1024.0, P_last.hwm_kib / 1024.0, P_last.cpu_s - before.cpu_s);
    if (L.first_error[0])
        logf_("connect: first error: %s", L.first_error);
    add_fig(result, "", "connected", (double)L.ready);
    add_fig(result, "", "hub_connected", (double)connected);
    add_fig(result, "", "connect_s", secs);
    add_fig(result, "", "initial_policies", (double)policies);
    add_fig(result, "", "rss_connected_mib", P_last.rss_kib / 1024.0);
    add_fig(result, "", "connect_ctl_cpu_s", P_last.cpu_s - before.cpu_s);
    return ok && L.ready == L.n && connected == (int64_t)L.n ? 0 : -1;
}

/* ---------------------------------------------------------- policy phase */

static int64_t policy_before;
static bool all_have_policy(void)
{
    for (unsigned i = 0; i < L.n; i++) {
        sim *s = &L.sims[i];
        if (s->st == S_OPEN && (s->policy_version <= policy_before || s->ack_waiting))
            return false;
    }
    return true;
}

static bool never(void)
{
    return false;
}

/* Checks through GET /api/v1/nodes (pages of 1000) that every bench node
 * enforces version v with nothing pending. *ok_nodes: how many do. */
static int verify_nodes(hconn *rest, int64_t v, unsigned *ok_nodes, char *first_bad, size_t fblen)
{
    char path[256], err[256];
    char cursor[128] = "";
    *ok_nodes = 0;
    first_bad[0] = '\0';
    for (int pages = 0; pages < 1000; pages++) {
        cJSON *j = NULL;
        snprintf(path, sizeof(path), "/api/v1/nodes?limit=1000%s%s", cursor[0] ? "&cursor=" : "",
                 cursor);
        if (hc_json(rest, "GET", path, NULL, 200, &j, NULL, 0, err, sizeof(err)) != 0) {
            logf_("%s", err);
            return -1;
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "items"))
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
            if (!cJSON_IsString(name) || strncmp(name->valuestring, "sim-", 4) != 0)
                continue;
            int64_t enf = json_int(it, "enforced_version");
            const cJSON *pend = cJSON_GetObjectItemCaseSensitive(it, "pending_version");
            bool pending =
                cJSON_IsNumber(pend) && pend->valuedouble > 0 && (int64_t)pend->valuedouble != enf;
            if (enf == v && !pending)
                (*ok_nodes)++;
            else if (!first_bad[0])
                snprintf(first_bad, fblen, "%s: enforced_version %lld, pending_version %s",
                         name->valuestring, (long long)enf, cJSON_IsNumber(pend) ? "set" : "null");
        }
        const cJSON *nc = cJSON_GetObjectItemCaseSensitive(j, "next_cursor");
        if (cJSON_IsString(nc))
            snprintf(cursor, sizeof(cursor), "%s", nc->valuestring);
        cJSON_Delete(j);
        if (!cJSON_IsString(nc))
            return 0;
    }
    return 0;
}

static int64_t *lat_all, *ack_all;
static size_t nlat_all;

static int policy_round(SSL_CTX *rest_ctx, hconn *rest, unsigned round, cJSON *rounds)
{
    char err[512], etag[64];
    cJSON *g = NULL;
    int rc = -1;
    char *body = NULL;
    job j = {0};
    j.c = (hconn){.host = opt.rest_host, .port = opt.rest_port, .ctx = rest_ctx, .fd = -1};
    if (hc_json(rest, "GET", "/api/v1/settings/global", NULL, 200, &g, etag, sizeof(etag), err,
                sizeof(err)) != 0) {
        logf_("policy: %s", err);
        goto done;
    }
    /* Alternate the high-port threshold: every office inherits it, so
     * every office's document changes. */
    int64_t th = json_int(g, "high_port_threshold");
    int64_t nth = th == 1024 + (int64_t)round ? 1024 + (int64_t)round + 1 : 1024 + round;
    cJSON_DeleteItemFromObjectCaseSensitive(g, "high_port_threshold");
    add_fig(g, "", "high_port_threshold", (double)nth);
    cJSON_DeleteItemFromObjectCaseSensitive(g, "scope");
    cJSON_DeleteItemFromObjectCaseSensitive(g, "scope_id");
    cJSON_DeleteItemFromObjectCaseSensitive(g, "etag");
    body = cJSON_PrintUnformatted(g);
    if (!body || !etag[0]) {
        logf_("policy: GET /api/v1/settings/global gave no ETag or no body");
        goto done;
    }
    policy_before = 0;
    for (unsigned i = 0; i < L.n; i++)
        if (L.sims[i].policy_version > policy_before)
            policy_before = L.sims[i].policy_version;
    for (unsigned i = 0; i < L.n; i++)
        L.sims[i].t_policy = L.sims[i].t_ack = 0;
    j.fn = job_put_settings;
    j.body = body;
    j.etag = etag;
    pthread_t th_put;
    proc_sample p0;
    proc_read(opt.pid, &p0);
    if (job_start(&j, &th_put) != 0)
        goto done;
    /* Serve the nodes while the PUT is answered and every node gets (and
     * acks) a version newer than before; the times count from the PUT's
     * start. */
    int64_t deadline = now_ns() + 30 * (int64_t)1000000000;
    bool all = loop_run(all_have_policy, deadline, NULL);
    loop_run(job_finished, deadline + 30 * (int64_t)1000000000, NULL);
    pthread_join(th_put, NULL);
    if (j.rc != 0) {
        logf_("policy: %s", j.err);
        goto done;
    }
    proc_sample p1;
    proc_read(opt.pid, &p1);
    int64_t want_version = 0, vmin = INT64_MAX;
    for (unsigned i = 0; i < L.n; i++) {
        if (L.sims[i].policy_version > want_version)
            want_version = L.sims[i].policy_version;
        if (L.sims[i].st == S_OPEN && L.sims[i].policy_version < vmin)
            vmin = L.sims[i].policy_version;
    }
    if (vmin != want_version)
        logf_("policy round %u: nodes hold versions %lld to %lld", round, (long long)vmin,
              (long long)want_version);
    size_t n = 0;
    int64_t *lat = calloc(L.n, sizeof(int64_t)), *ack = calloc(L.n, sizeof(int64_t));
    if (!lat || !ack) {
        free(lat);
        free(ack);
        goto done;
    }
    for (unsigned i = 0; i < L.n; i++) {
        sim *s = &L.sims[i];
        if (s->policy_version >= want_version && s->t_policy && s->t_ack) {
            lat[n] = s->t_policy - j.t_start;
            ack[n] = s->t_ack - j.t_start;
            lat_all[nlat_all] = lat[n];
            ack_all[nlat_all++] = ack[n];
            n++;
        }
    }
    qsort(lat, n, sizeof(int64_t), cmp_i64);
    qsort(ack, n, sizeof(int64_t), cmp_i64);
    /* The REST view: every node's enforced_version (the hub records acks
     * through its writer thread, so give it a moment). */
    unsigned ok_nodes = 0;
    char bad[256] = "";
    int64_t vdeadline = now_ns() + 10 * (int64_t)1000000000;
    do {
        if (verify_nodes(rest, want_version, &ok_nodes, bad, sizeof(bad)) != 0)
            break;
        if (ok_nodes == L.n)
            break;
        loop_run(never, now_ns() + 200000000, NULL);
    } while (now_ns() < vdeadline);
    logf_("policy round %u: PUT settings/global answered in %.1f ms; version %lld reached %zu "
          "of %u nodes; receive p50 %.1f / p99 %.1f / max %.1f ms; ack written p50 %.1f / p99 "
          "%.1f / max %.1f ms; REST shows %u of %u enforcing it%s%s; controller CPU %.2f s",
          round, ms(j.t_end - j.t_start), (long long)want_version, n, L.n,
          ms(quantile(lat, n, 0.5)), ms(quantile(lat, n, 0.99)), ms(quantile(lat, n, 1)),
          ms(quantile(ack, n, 0.5)), ms(quantile(ack, n, 0.99)), ms(quantile(ack, n, 1)), ok_nodes,
          L.n, bad[0] ? "; first not: " : "", bad, p1.cpu_s - p0.cpu_s);
    cJSON *r = cJSON_CreateObject();
    add_fig(r, "", "version", (double)want_version);
    add_fig(r, "", "put_ms", ms(j.t_end - j.t_start));
    add_fig(r, "", "reached", (double)n);
    add_fig(r, "", "p50_ms", ms(quantile(lat, n, 0.5)));
    add_fig(r, "", "p99_ms", ms(quantile(lat, n, 0.99)));
    add_fig(r, "", "max_ms", ms(quantile(lat, n, 1)));
    add_fig(r, "", "ack_p99_ms", ms(quantile(ack, n, 0.99)));
    add_fig(r, "", "rest_enforcing", ok_nodes);
    cJSON_AddItemToArray(rounds, r);
    free(lat);
    free(ack);
    rc = all && n == L.n && ok_nodes == L.n ? 0 : -1;
done:
    hc_free(&j.c);
    free(body);
    cJSON_Delete(g);
    return rc;
}

static int phase_policy(SSL_CTX *rest_ctx, hconn *rest, cJSON *result)
{
    L.ph = PH_POLICY;
    int rc = 0;
    lat_all = calloc((size_t)L.n * opt.rounds, sizeof(int64_t));
    ack_all = calloc((size_t)L.n * opt.rounds, sizeof(int64_t));
    if (!lat_all || !ack_all)
        return -1;
    cJSON *rounds = cJSON_AddArrayToObject(result, "policy_rounds");
    for (unsigned r = 1; r <= opt.rounds; r++) {
        if (policy_round(rest_ctx, rest, r, rounds) != 0)
            rc = -1;
        /* Let the pings that answer the acks settle between rounds. */
        loop_run(never, now_ns() + 500000000, NULL);
    }
    qsort(lat_all, nlat_all, sizeof(int64_t), cmp_i64);
    qsort(ack_all, nlat_all, sizeof(int64_t), cmp_i64);
    logf_("policy: over %u rounds (%zu deliveries): receive p50 %.1f / p99 %.1f / max %.1f ms, "
          "ack written p99 %.1f ms",
          opt.rounds, nlat_all, ms(quantile(lat_all, nlat_all, 0.5)),
          ms(quantile(lat_all, nlat_all, 0.99)), ms(quantile(lat_all, nlat_all, 1)),
          ms(quantile(ack_all, nlat_all, 0.99)));
    add_fig(result, "", "policy_p50_ms", ms(quantile(lat_all, nlat_all, 0.5)));
    add_fig(result, "", "policy_p99_ms", ms(quantile(lat_all, nlat_all, 0.99)));
    add_fig(result, "", "policy_max_ms", ms(quantile(lat_all, nlat_all, 1)));
    add_fig(result, "", "policy_ack_p99_ms", ms(quantile(ack_all, nlat_all, 0.99)));
    sample_proc();
    add_fig(result, "", "rss_after_policy_mib", P_last.rss_kib / 1024.0);
    return rc;
}

/* ---------------------------------------------------------- ingest phase */

static int64_t *per_sec;
static size_t n_per_sec, cap_per_sec;
static int64_t last_acked_sample;

static bool ingest_finished(void)
{
    return L.ingest_done + L.dead >= L.n;
}

static bool settled(void)
{
    for (unsigned i = 0; i < L.n; i++)
        if (L.sims[i].st == S_OPEN && L.sims[i].acked_seq < L.sims[i].sent_seq)
            return false;
    return true;
}

static hconn *rest_main; /* for the once-a-second look at GET /api/v1/hub */

static void every_ingest(void)
{
    sample_proc();
    pool_fill();
    /* Events the hub holds in memory (received, not yet stored): near the
     * budget, the writer is the limit; far below it, the credit is. */
    int64_t held = -1;
    cJSON *hj = NULL;
    char err[256];
    if (rest_main &&
        hc_json(rest_main, "GET", "/api/v1/hub", NULL, 200, &hj, NULL, 0, err, sizeof(err)) == 0)
        held = json_int(hj, "events_held");
    cJSON_Delete(hj);
    int64_t d = L.acked_total - last_acked_sample;
    last_acked_sample = L.acked_total;
    if (n_per_sec < cap_per_sec)
        per_sec[n_per_sec++] = d;
    /* Credit a node holds but has nothing left to send for: the hub cannot
     * grant it to anyone else. */
    int64_t idle_credit = 0, credit = 0;
    unsigned finished = 0;
    for (unsigned i = 0; i < L.n; i++) {
        const sim *s = &L.sims[i];
        credit += s->credit;
        if (s->sent_seq >= s->quota) {
            finished++;
            idle_credit += s->credit;
        }
    }
    logf_("  ingest: %lld stored (+%lld/s), %lld sent; hub holds %lld unstored; nodes hold "
          "credit %lld, %lld of it by the %u with nothing left to send; controller RSS %.1f MiB",
          (long long)L.acked_total, (long long)d, (long long)L.sent_total, (long long)held,
          (long long)credit, (long long)idle_credit, finished, P_last.rss_kib / 1024.0);
    /* Nodes with credit they could not use (their buffers were full) try
     * again. */
    for (unsigned i = 0; i < L.n; i++)
        if (L.sims[i].credit > 0 && L.sims[i].sent_seq < L.sims[i].quota)
            sim_send_events(&L.sims[i]);
}

/* One ingest run. sustain: every node sends without end for seconds, then
 * stops; the rate is what was stored within the window. Otherwise: every
 * node sends its share of events, the rate is events over the time until
 * the last is acked (at most seconds). Figures go to result with prefix. */
static int phase_ingest(SSL_CTX *rest_ctx, hconn *rest, cJSON *result, bool sustain,
                        unsigned seconds, int64_t events, const char *prefix)
{
    int rc = -1;
    cJSON *h0 = NULL, *h1 = NULL;
    int64_t connected = 0;
    const char *what = sustain ? "sustained" : "backlog";
    hub_connected(rest, &connected, &h0);
    int64_t stored0 = json_int(h0, "events_stored");
    int64_t per = events / L.n, extra = events % L.n;
    uint64_t batches0 = 0;
    for (unsigned i = 0; i < L.n; i++) {
        sim *s = &L.sims[i];
        s->quota = sustain ? INT64_MAX / 2 : s->sent_seq + per + ((int64_t)i < extra);
        s->t_last_ack = 0;
        batches0 += s->batches;
    }
    L.acked_total = L.sent_total = 0;
    L.ingest_done = 0;
    last_acked_sample = 0;
    n_per_sec = 0;
    free(per_sec);
    cap_per_sec = (size_t)seconds + 10;
    per_sec = calloc(cap_per_sec, sizeof(int64_t));
    if (!per_sec || pool_fill() != 0)
        goto done;
    job probe = {0};
    probe.c = (hconn){.host = opt.rest_host, .port = opt.rest_port, .ctx = rest_ctx, .fd = -1};
    probe.fn = job_probe;
    pthread_t th_probe;
    if (job_start(&probe, &th_probe) != 0)
        goto done;
    proc_sample p0;
    proc_read(opt.pid, &p0);
    rss_max_kib = p0.rss_kib;
    double self0 = self_cpu_s();
    logf_("%s ingest: %s", what,
          sustain ? "every node sends as fast as its credit allows" : "every node sends its share");
    L.ph = PH_INGEST;
    int64_t t0 = now_ns();
    for (unsigned i = 0; i < L.n; i++)
        sim_send_events(&L.sims[i]);
    bool all = loop_run(sustain ? never : ingest_finished, t0 + (int64_t)seconds * 1000000000,
                        every_ingest);
    int64_t t1 = now_ns();
    int64_t in_window = L.acked_total;
    if (sustain) {
        /* Stop sending; what is in flight must still be acked. */
        L.ph = PH_SETTLE;
        all = loop_run(settled, t1 + 30 * (int64_t)1000000000, NULL);
    }
    atomic_store(&probe.stop, true);
    pthread_join(th_probe, NULL);
    proc_sample p1;
    proc_read(opt.pid, &p1);
    if (p1.rss_kib > rss_max_kib)
        rss_max_kib = p1.rss_kib;
    double self1 = self_cpu_s();
    L.ph = PH_DONE;
    int64_t t_last = t0;
    for (unsigned i = 0; i < L.n; i++)
        if (L.sims[i].t_last_ack > t_last)
            t_last = L.sims[i].t_last_ack;
    if (sustain || !all)
        t_last = t1;
    double secs = ms(t_last - t0) / 1000;
    double rate = secs > 0 ? (double)in_window / secs : 0;
    /* The median of the whole seconds. */
    int64_t *sorted = calloc(n_per_sec ? n_per_sec : 1, sizeof(int64_t));
    int64_t med = 0, best = 0;
    if (sorted && n_per_sec) {
        memcpy(sorted, per_sec, n_per_sec * sizeof(int64_t));
        qsort(sorted, n_per_sec, sizeof(int64_t), cmp_i64);
        med = quantile(sorted, n_per_sec, 0.5);
        best = sorted[n_per_sec - 1];
    }
    free(sorted);
    hub_connected(rest, &connected, &h1);
    int64_t stored1 = json_int(h1, "events_stored");
    for (unsigned w = 0; w < 2; w++)
        qsort(probe.lat[w], probe.nlat[w], sizeof(int64_t), cmp_i64);
    double cpu = p1.cpu_s - p0.cpu_s, wall = ms(now_ns() - t0) / 1000;
    uint64_t batches = 0;
    for (unsigned i = 0; i < L.n; i++)
        batches += L.sims[i].batches;
    batches -= batches0;
    if (sustain)
        logf_("%s ingest: %lld events acked as stored in the %.1f s window: %.0f events/s "
              "(median second %lld/s, best %lld/s); %lld sent, all acked after it: %s; "
              "GET /api/v1/hub events_stored grew by %lld",
              what, (long long)in_window, secs, rate, (long long)med, (long long)best,
              (long long)L.sent_total, all ? "yes" : "NO", (long long)(stored1 - stored0));
    else
        logf_("%s ingest: %lld of %lld events acked as stored in %.2f s: %.0f events/s (median "
              "second %lld/s, best %lld/s); GET /api/v1/hub events_stored grew by %lld",
              what, (long long)L.acked_total, (long long)events, secs, rate, (long long)med,
              (long long)best, (long long)(stored1 - stored0));
    logf_("%s ingest: controller RSS max %.1f MiB, end %.1f MiB, HWM %.1f MiB; controller CPU "
          "%.1f s (%.0f %% of one core), link_load CPU %.1f s (%.0f %%); %llu batches (mean %.0f "
          "events)",
          what, rss_max_kib / 1024.0, p1.rss_kib / 1024.0, p1.hwm_kib / 1024.0, cpu,
          wall > 0 ? 100 * cpu / wall : 0, self1 - self0,
          wall > 0 ? 100 * (self1 - self0) / wall : 0, (unsigned long long)batches,
          batches ? (double)L.sent_total / (double)batches : 0);
    logf_("%s ingest: REST meanwhile: GET /api/v1/health p50 %.1f / p99 %.1f / max %.1f ms "
          "(%zu); GET /api/v1/nodes?limit=100 p50 %.1f / p99 %.1f / max %.1f ms (%zu); %u failed",
          what, ms(quantile(probe.lat[0], probe.nlat[0], 0.5)),
          ms(quantile(probe.lat[0], probe.nlat[0], 0.99)),
          ms(quantile(probe.lat[0], probe.nlat[0], 1)), probe.nlat[0],
          ms(quantile(probe.lat[1], probe.nlat[1], 0.5)),
          ms(quantile(probe.lat[1], probe.nlat[1], 0.99)),
          ms(quantile(probe.lat[1], probe.nlat[1], 1)), probe.nlat[1], probe.failures);
    add_fig(result, prefix, "events", sustain ? (double)in_window : (double)events);
    add_fig(result, prefix, "events_stored", (double)L.acked_total);
    add_fig(result, prefix, "hub_events_stored_delta", (double)(stored1 - stored0));
    add_fig(result, prefix, "s", secs);
    add_fig(result, prefix, "events_per_s", (double)llround(rate));
    add_fig(result, prefix, "median_second", (double)med);
    add_fig(result, prefix, "events_per_batch",
            batches ? (double)llround((double)L.sent_total / (double)batches) : 0);
    add_fig(result, prefix, "rss_max_mib", rss_max_kib / 1024.0);
    add_fig(result, prefix, "ctl_cpu_pct", wall > 0 ? 100 * cpu / wall : 0);
    add_fig(result, prefix, "load_cpu_pct", wall > 0 ? 100 * (self1 - self0) / wall : 0);
    add_fig(result, prefix, "rest_health_p99_ms", ms(quantile(probe.lat[0], probe.nlat[0], 0.99)));
    add_fig(result, prefix, "rest_nodes_p50_ms", ms(quantile(probe.lat[1], probe.nlat[1], 0.5)));
    add_fig(result, prefix, "rest_nodes_p99_ms", ms(quantile(probe.lat[1], probe.nlat[1], 0.99)));
    add_fig(result, prefix, "rest_nodes_max_ms", ms(quantile(probe.lat[1], probe.nlat[1], 1)));
    add_fig(result, prefix, "rest_failures", probe.failures);
    free(probe.lat[0]);
    free(probe.lat[1]);
    hc_free(&probe.c);
    rc = all ? 0 : -1;
done:
    cJSON_Delete(h0);
    cJSON_Delete(h1);
    return rc;
}

/* ------------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f, "usage: link_load --rest HOST:PORT --rest-ca FILE --hub HOST:PORT --hub-ca FILE\n"
               "                 [--nodes N] [--offices N] [--events N] [--ingest-seconds S]\n"
               "                 [--sustain-seconds S]\n"
               "                 [--rounds N] [--pid PID] [--workers N] [--parallel N]\n"
               "                 [--hub-path PATH]\n"
               "PORTCULLIS_ADMIN_TOKEN: the REST token.\n");
}

static int uint_arg(const char *s, unsigned min, unsigned max, unsigned *out)
{
    char *end = NULL;
    unsigned long v = strtoul(s, &end, 10);
    if (!end || *end || v < min || v > max)
        return -1;
    *out = (unsigned)v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"rest", required_argument, NULL, 'r'},
        {"rest-ca", required_argument, NULL, 'R'},
        {"hub", required_argument, NULL, 'u'},
        {"hub-ca", required_argument, NULL, 'U'},
        {"hub-path", required_argument, NULL, 'P'},
        {"nodes", required_argument, NULL, 'n'},
        {"offices", required_argument, NULL, 'o'},
        {"events", required_argument, NULL, 'e'},
        {"ingest-seconds", required_argument, NULL, 'i'},
        {"sustain-seconds", required_argument, NULL, 's'},
        {"rounds", required_argument, NULL, 'k'},
        {"pid", required_argument, NULL, 'p'},
        {"workers", required_argument, NULL, 'w'},
        {"parallel", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch, status = 1;
    bool bad = false;
    unsigned u;
    SSL_CTX *rest_ctx = NULL, *hub_ctx = NULL;
    hconn rest = {.fd = -1};
    cJSON *result = cJSON_CreateObject();
    char err[512];
    while ((ch = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        switch (ch) {
        case 'r':
            bad |= parse_hostport(optarg, opt.rest_host, sizeof(opt.rest_host), &opt.rest_port);
            break;
        case 'R': opt.rest_ca = optarg; break;
        case 'u':
            bad |= parse_hostport(optarg, opt.hub_host, sizeof(opt.hub_host), &opt.hub_port);
            break;
        case 'U': opt.hub_ca = optarg; break;
        case 'P': opt.hub_path = optarg; break;
        case 'n': bad |= uint_arg(optarg, 1, 100000, &opt.nodes); break;
        case 'o': bad |= uint_arg(optarg, 1, 1000, &opt.offices); break;
        case 'e':
            bad |= uint_arg(optarg, 0, 2000000000, &u);
            opt.events = u;
            break;
        case 'i': bad |= uint_arg(optarg, 1, 3600, &opt.ingest_s); break;
        case 's': bad |= uint_arg(optarg, 0, 3600, &opt.sustain_s); break;
        case 'k': bad |= uint_arg(optarg, 0, 100, &opt.rounds); break;
        case 'p':
            bad |= uint_arg(optarg, 1, 1u << 30, &u);
            opt.pid = (pid_t)u;
            break;
        case 'w': bad |= uint_arg(optarg, 1, 64, &opt.workers); break;
        case 'c': bad |= uint_arg(optarg, 1, 10000, &opt.parallel); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    opt.token = getenv("PORTCULLIS_ADMIN_TOKEN");
    if (bad || optind != argc || !opt.rest_port || !opt.hub_port || !opt.rest_ca || !opt.hub_ca ||
        !opt.token || !result) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < opt.nodes + 256u) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < opt.nodes + 64u) {
            fprintf(stderr, "link_load: only %llu file descriptors for %u nodes\n",
                    (unsigned long long)rl.rlim_cur, opt.nodes);
            return 1;
        }
    }
    RAND_bytes((unsigned char *)&L.rng, sizeof(L.rng));
    L.rng |= 1;
    L.n = opt.nodes;
    L.sims = calloc(L.n, sizeof(sim));
    L.counters = cJSON_Parse("{\"connections\":1200,\"blocks\":{\"blocked-domain\":31,"
                             "\"tls-no-handshake\":4},\"bytes_up\":123456,\"bytes_down\":"
                             "9876543,\"firewall\":{\"dropped\":17}}");
    L.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!L.sims || !L.counters || L.ep < 0)
        goto done;
    for (unsigned i = 0; i < L.n; i++) {
        L.sims[i].idx = i;
        L.sims[i].fd = -1;
        snprintf(L.sims[i].name, sizeof(L.sims[i].name), "sim-%05u", i + 1);
    }
    if (!(rest_ctx = tls_ctx_new(opt.rest_ca, err, sizeof(err))) ||
        !(hub_ctx = tls_ctx_new(opt.hub_ca, err, sizeof(err)))) {
        fprintf(stderr, "link_load: %s\n", err);
        goto done;
    }
    L.ctx = hub_ctx;
    rest = (hconn){.host = opt.rest_host, .port = opt.rest_port, .ctx = rest_ctx, .fd = -1};
    rest_main = &rest;
    cJSON_AddStringToObject(result, "bench", "link");
    add_fig(result, "", "nodes", L.n);
    add_fig(result, "", "offices", opt.offices);

    int failed = 0;
    if (phase_setup(rest_ctx, hub_ctx, &rest, result) != 0)
        goto report;
    if (phase_connect(&rest, result) != 0)
        failed++;
    if (opt.rounds && phase_policy(rest_ctx, &rest, result) != 0)
        failed++;
    if (opt.sustain_s &&
        phase_ingest(rest_ctx, &rest, result, true, opt.sustain_s, 0, "sustain_") != 0)
        failed++;
    if (opt.events &&
        phase_ingest(rest_ctx, &rest, result, false, opt.ingest_s, opt.events, "backlog_") != 0)
        failed++;
    sample_proc();
    add_fig(result, "", "rss_end_mib", P_last.rss_kib / 1024.0);
    add_fig(result, "", "rss_hwm_end_mib", P_last.hwm_kib / 1024.0);
    add_fig(result, "", "failed_nodes", L.dead);
    add_fig(result, "", "hub_error_messages", (double)L.error_msgs);
    if (L.first_error[0])
        cJSON_AddStringToObject(result, "first_error", L.first_error);
    status = failed ? 1 : 0;
report : {
    char *line = cJSON_PrintUnformatted(result);
    if (line)
        printf("RESULT %s\n", line);
    free(line);
}
done:
    fflush(stdout);
    for (unsigned i = 0; L.sims && i < L.n; i++) {
        sim *s = &L.sims[i];
        if (s->ssl)
            SSL_free(s->ssl);
        if (s->fd >= 0)
            close(s->fd);
        EVP_PKEY_free(s->key);
        X509_free(s->cert);
        free(s->in);
        free(s->out);
        free(s->msg);
    }
    for (unsigned i = 0; i < POOL; i++)
        free(L.pool[i]);
    free(L.sims);
    free(office_ids);
    free(lat_all);
    free(ack_all);
    free(per_sec);
    hc_free(&rest);
    if (L.ep >= 0)
        close(L.ep);
    SSL_CTX_free(rest_ctx);
    SSL_CTX_free(hub_ctx);
    cJSON_Delete(L.counters);
    cJSON_Delete(result);
    return status;
}
