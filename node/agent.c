/* agent.c - the node's link to its controller (docs/link.md): one
 * libwebsockets client connection at a time, on the daemon's main libuv loop
 * (lws's libuv event library on a foreign loop), mutual TLS with the
 * enrollment's files and only the controller's CA trusted. It applies the
 * documents pushed to it, ships the spool's events as credit allows, and
 * puts the last good document back when one cuts it off (safe apply).
 */
#include "agent.h"

#include "pc_pki.h"

#include "pc_wire.h"

#include <errno.h>
#include <fcntl.h>
#include <libwebsockets.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

_Static_assert(PCW_PRE >= LWS_PRE, "pc_wire leaves less room than lws_write needs");

#define AGENT_FLUSH_MS 20
/* About this many bytes of event bodies in one batch (a node frame is at
 * most PCW_NODE_FRAME_MAX). */
#define AGENT_BATCH_BYTES (512 * 1024)
/* The controller pings every 30 s: a link silent for longer than three of
 * those is dead even if TCP has not noticed. */
#define AGENT_SILENCE_MS 95000
#define AGENT_LINK_MAX 4096
/* A batch the controller has not acknowledged in this long is resent on a
 * new connection. */
#define AGENT_BATCH_ACK_MS 120000
/* Documents reverted by safe apply that the node remembers (reverted.json)
 * and refuses when the controller pushes them again. */
#define AGENT_REVERTED_KEEP 16
#define AGENT_REVERTED_MAX_BYTES 65536

/* lws's LWS_WRITE_CLOSE: the close frame's lws_write type, left out of
 * its public header (which leaves value 4 for it). */
#define AGENT_WRITE_CLOSE ((enum lws_write_protocol)4)

typedef enum { LINK_IDLE = 0, LINK_CONNECTING, LINK_OPEN } link_state;

typedef struct txq {
    struct txq *next;
    pcw_frame f;
    bool safe_ack; /* the ack of a document under its safe-apply check */
} txq;

typedef struct reverted_doc {
    int64_t version;
    char sha256[65];
    unsigned timeout_ms; /* the check it failed */
} reverted_doc;

struct agent {
    uv_loop_t *loop;
    void *loops[1];
    agent_hooks hooks;
    spool *sp;
    char *state_dir, *software;
    unsigned backoff_min_ms, backoff_max_ms, stats_interval_ms, safe_timeout_ms;
    agent_safe_mode safe_mode;

    char node[65];
    char host[256];
    char hostport[300];
    int port;
    char *path_policy, *path_good, *path_reverted;

    SSL_CTX *ssl_ctx;
    struct lws_protocols protocols[2];
    struct lws_context *ctx;
    struct lws *wsi;

    uv_timer_t reconnect_timer, flush_timer, stats_timer, safe_timer;
    int open_handles;              /* timers not closed yet */
    struct lws_context *lws_alive; /* lws sets it to NULL when destroyed */
    unsigned reap_tries;
    bool stopping;

    /* The connection. */
    link_state state;
    uint64_t conn_gen;
    unsigned backoff_ms;
    bool reconnect_now; /* the next reconnect waits for no backoff */
    uint64_t rng;
    bool hello_done;
    uint64_t last_rx_ms;
    char *rx;
    size_t rxlen, rxcap;
    txq *tx_head, *tx_tail;
    int close_code; /* > 0: close once tx is written */
    char close_reason[124];
    char down_reason[512];
    char tls_err[200]; /* why the hub's certificate was refused */
    int64_t credit;
    int64_t acked; /* the controller's highest stored seq (this connection) */
    bool batch_in_flight;
    int64_t inflight_last;   /* the last seq of the batch in flight */
    uint64_t inflight_since; /* uv_now when it was queued */

    /* The policy enforced: from the controller (doc != NULL) or not. */
    char *cur_doc;
    size_t cur_len;
    char cur_sha[65];
    int64_t cur_version;

    /* The last document that passed its check (policy.good.json). */
    char *good_doc;
    size_t good_len;

    /* A document under its safe-apply check: only a connection made after
     * it was applied (conn_gen > safe_conn_gen) can confirm it. */
    bool safe_armed;
    uint64_t safe_conn_gen;
    int64_t safe_version;

    /* Documents reverted by safe apply, oldest first (reverted.json). */
    reverted_doc reverted[AGENT_REVERTED_KEEP];
    size_t n_reverted;

    /* A revert not yet reported in a hello. */
    bool has_reverted;
    int64_t reverted_version;
    char reverted_reason[256];

    agent_status st;
};

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "portcullis-node: %s\n", line);
    fflush(stderr);
}

static void lws_log_emit(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    fprintf(stderr, "portcullis-node: lws: %.*s\n", (int)n, line);
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static uint64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* 0 and the whole file (NUL-terminated), 1 when it does not exist, -1. */
static int read_whole(const char *path, size_t max, char **out, size_t *len, char *err,
                      size_t errlen)
{
    int ret = -1;
    char *buf = NULL;
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 1;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto done;
    }
    if ((uint64_t)st.st_size > max) {
        snprintf(err, errlen, "%s: larger than %zu bytes", path, max);
        goto done;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto done;
    }
    size_t off = 0;
    while (off < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + off, (size_t)st.st_size - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        off += (size_t)r;
    }
    buf[off] = '\0';
    *out = buf;
    *len = off;
    buf = NULL;
    ret = 0;
done:
    free(buf);
    close(fd);
    return ret;
}

/* Writes path atomically (pki_write_file: a temp file of its own in the same
 * directory, fsync, rename, fsync of the directory). */
static int write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    return pki_write_file(path, data, len, 0640, err, errlen);
}

bool agent_enrolled(const char *state_dir)
{
    static const char *const files[] = {"link.json", "node.key", "node.crt", "ca.crt"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *p = path_join(state_dir, files[i]);
        bool ok = p && access(p, R_OK) == 0;
        free(p);
        if (!ok)
            return false;
    }
    return true;
}

int agent_load_cached(const char *state_dir, pc_policy **out, char sha256[65], char *err,
                      size_t errlen)
{
    char *path = path_join(state_dir, "policy.json"), *doc = NULL;
    size_t len;
    int ret = -1;
    *out = NULL;
    if (!path) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = read_whole(path, PC_POLICY_MAX_BYTES, &doc, &len, err, errlen);
    if (rc != 0) {
        ret = rc;
        goto done;
    }
    char perr[512];
    if (pc_policy_parse(doc, len, out, perr, sizeof(perr)) != 0) {
        snprintf(err, errlen, "%s: %s", path, perr);
        goto done;
    }
    pcw_sha256_hex(doc, len, sha256);
    ret = 0;
done:
    free(doc);
    free(path);
    return ret;
}

/* link.json: {"controller": "https://HOST:PORT", "node": "NAME"}. */
static int load_link(agent *a, char *err, size_t errlen)
{
    char *path = path_join(a->state_dir, "link.json"), *txt = NULL;
    cJSON *j = NULL;
    size_t len;
    int ret = -1;
    if (!path) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = read_whole(path, AGENT_LINK_MAX, &txt, &len, err, errlen);
    if (rc != 0) {
        if (rc == 1)
            snprintf(err, errlen, "%s: missing (enroll the node first)", path);
        goto done;
    }
    j = cJSON_ParseWithLength(txt, len);
    const cJSON *url = j ? cJSON_GetObjectItemCaseSensitive(j, "controller") : NULL;
    const cJSON *node = j ? cJSON_GetObjectItemCaseSensitive(j, "node") : NULL;
    if (!cJSON_IsString(url) || !cJSON_IsString(node)) {
        snprintf(err, errlen,
                 "%s: expected {\"controller\": \"https://HOST:PORT\", \"node\": NAME}", path);
        goto done;
    }
    size_t nlen = strlen(node->valuestring);
    if (nlen == 0 || nlen >= sizeof(a->node) ||
        strspn(node->valuestring, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789_.-") != nlen) {
        snprintf(err, errlen, "%s: $.node: 1..64 of [A-Za-z0-9_.-]", path);
        goto done;
    }
    memcpy(a->node, node->valuestring, nlen + 1);

    const char *u = url->valuestring;
    if (strncmp(u, "https://", 8) != 0) {
        snprintf(err, errlen, "%s: $.controller: '%s' is not https://HOST:PORT", path, u);
        goto done;
    }
    u += 8;
    const char *hend, *rest;
    if (*u == '[') {
        hend = strchr(u, ']');
        if (!hend) {
            snprintf(err, errlen, "%s: $.controller: unterminated [address]", path);
            goto done;
        }
        u++;
        rest = hend + 1;
    } else {
        hend = u + strcspn(u, ":/");
        rest = hend;
    }
    size_t hlen = (size_t)(hend - u);
    if (hlen == 0 || hlen >= sizeof(a->host)) {
        snprintf(err, errlen, "%s: $.controller: no host", path);
        goto done;
    }
    memcpy(a->host, u, hlen);
    a->host[hlen] = '\0';
    a->port = 443;
    if (*rest == ':') {
        char *end;
        long p = strtol(rest + 1, &end, 10);
        if (end == rest + 1 || p < 1 || p > 65535 || (*end && strcmp(end, "/") != 0)) {
            snprintf(err, errlen, "%s: $.controller: bad port in '%s'", path, url->valuestring);
            goto done;
        }
        a->port = (int)p;
    } else if (*rest && strcmp(rest, "/") != 0) {
        snprintf(err, errlen, "%s: $.controller: '%s' is not https://HOST:PORT", path,
                 url->valuestring);
        goto done;
    }
    snprintf(a->hostport, sizeof(a->hostport), strchr(a->host, ':') ? "[%s]:%d" : "%s:%d", a->host,
             a->port);
    ret = 0;
done:
    cJSON_Delete(j);
    free(txt);
    free(path);
    return ret;
}

static void ssl_err(char *err, size_t errlen, const char *what, const char *path)
{
    char reason[256] = "unknown error";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, reason, sizeof(reason));
    ERR_clear_error();
    snprintf(err, errlen, "%s %s: %s", what, path, reason);
}

/* The client TLS context: our certificate and key, only the controller's CA
 * trusted, the hub's name checked against the controller URL's host. */
static int make_ssl_ctx(agent *a, char *err, size_t errlen)
{
    int ret = -1;
    char *crt = path_join(a->state_dir, "node.crt");
    char *key = path_join(a->state_dir, "node.key");
    char *ca = path_join(a->state_dir, "ca.crt");
    if (!crt || !key || !ca) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    a->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!a->ssl_ctx) {
        ssl_err(err, errlen, "TLS", "context");
        goto done;
    }
    SSL_CTX_set_min_proto_version(a->ssl_ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(a->ssl_ctx, crt) != 1) {
        ssl_err(err, errlen, "cannot load the node certificate", crt);
        goto done;
    }
    if (SSL_CTX_use_PrivateKey_file(a->ssl_ctx, key, SSL_FILETYPE_PEM) != 1) {
        ssl_err(err, errlen, "cannot load the node key", key);
        goto done;
    }
    if (SSL_CTX_check_private_key(a->ssl_ctx) != 1) {
        ssl_err(err, errlen, "the key does not match the certificate", crt);
        goto done;
    }
    /* A new SSL_CTX trusts nothing: the CA file is the only anchor. */
    if (SSL_CTX_load_verify_locations(a->ssl_ctx, ca, NULL) != 1) {
        ssl_err(err, errlen, "cannot load the controller CA", ca);
        goto done;
    }
    SSL_CTX_set_verify(a->ssl_ctx, SSL_VERIFY_PEER, NULL);
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(a->ssl_ctx);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (X509_VERIFY_PARAM_set1_ip_asc(param, a->host) != 1 &&
        X509_VERIFY_PARAM_set1_host(param, a->host, 0) != 1) {
        ssl_err(err, errlen, "cannot check the hub's name", a->host);
        goto done;
    }
    ret = 0;
done:
    free(crt);
    free(key);
    free(ca);
    return ret;
}

/* ---- sending ---- */

static void tx_clear(agent *a)
{
    while (a->tx_head) {
        txq *q = a->tx_head;
        a->tx_head = q->next;
        pcw_frame_free(&q->f);
        free(q);
    }
    a->tx_tail = NULL;
}

/* Queues a built frame (taken) on the open connection. */
static void tx_push(agent *a, pcw_frame *f, bool safe_ack)
{
    txq *q = calloc(1, sizeof(*q));
    if (!q || a->state != LINK_OPEN || !a->wsi) {
        free(q);
        pcw_frame_free(f);
        return;
    }
    q->f = *f;
    q->safe_ack = safe_ack;
    memset(f, 0, sizeof(*f));
    if (a->tx_tail)
        a->tx_tail->next = q;
    else
        a->tx_head = q;
    a->tx_tail = q;
    lws_callback_on_writable(a->wsi);
}

/* Closes the connection once what is queued is written. */
static void link_close(agent *a, int code, const char *reason)
{
    /* A connection still being made will say hello with what is true by
     * then: nothing to close. */
    if (a->state != LINK_OPEN || !a->wsi || a->close_code)
        return;
    a->close_code = code;
    snprintf(a->close_reason, sizeof(a->close_reason), "%.*s", (int)sizeof(a->close_reason) - 1,
             reason);
    snprintf(a->down_reason, sizeof(a->down_reason), "%s", reason);
    lws_callback_on_writable(a->wsi);
}

/* A message the controller should not have sent: say so and close. */
static void protocol_error(agent *a, const char *code, const char *msg)
{
    logf_("bad message from the controller: %s; closing the link", msg);
    pcw_frame f;
    if (pcw_build_error(&f, code, msg) == 0)
        tx_push(a, &f, false);
    link_close(a, 4001, "bad message from the controller");
    snprintf(a->down_reason, sizeof(a->down_reason), "bad message from the controller: %s", msg);
}

static void send_stats(agent *a)
{
    cJSON *c = cJSON_CreateObject();
    if (!c)
        return;
    if (a->hooks.counters)
        a->hooks.counters(a->hooks.arg, c);
    cJSON_AddNumberToObject(c, "spool_last_seq", (double)spool_last_seq(a->sp));
    cJSON_AddNumberToObject(c, "spool_pending", (double)spool_pending(a->sp));
    cJSON_AddNumberToObject(c, "spool_dropped", (double)spool_dropped(a->sp));
    cJSON_AddNumberToObject(c, "spool_queued", (double)(uint64_t)spool_queued(a->sp));
    pcw_frame f;
    if (pcw_build_stats(&f, (int64_t)now_ms(), c) == 0)
        tx_push(a, &f, false);
    cJSON_Delete(c);
}

static void flush_spool(agent *a)
{
    if (spool_queued(a->sp) == 0)
        return;
    char err[512];
    if (spool_flush(a->sp, err, sizeof(err)) < 0)
        logf_("%s", err);
}

/* Ships the next batch when the controller's credit allows and no batch is
 * waiting for its ack. */
static void ship(agent *a)
{
    if (a->state != LINK_OPEN || !a->hello_done || a->batch_in_flight || a->credit <= 0 ||
        a->close_code)
        return;
    size_t max_n = a->credit < PCW_EVENTS_MAX ? (size_t)a->credit : PCW_EVENTS_MAX;
    char err[512];
    for (;;) {
        spool_batch b;
        if (spool_read(a->sp, a->acked, max_n, AGENT_BATCH_BYTES, &b, err, sizeof(err)) != 0) {
            logf_("%s", err);
            return;
        }
        if (b.n == 0) {
            spool_batch_free(&b);
            return;
        }
        pcw_frame f;
        if (pcw_build_events(&f, (const char *const *)b.json, b.lens, b.seqs, b.n,
                             spool_dropped(a->sp)) != 0) {
            spool_batch_free(&b);
            logf_("out of memory building an events batch");
            return;
        }
        if (f.len > PCW_NODE_FRAME_MAX) {
            pcw_frame_free(&f);
            if (b.n > 1) {
                max_n = b.n / 2;
                spool_batch_free(&b);
                continue;
            }
            /* One event larger than a frame can never be delivered. */
            logf_("event %lld is too large to ship (%zu bytes); dropping it", (long long)b.seqs[0],
                  b.lens[0]);
            if (spool_ack(a->sp, b.seqs[0], err, sizeof(err)) != 0)
                logf_("%s", err);
            spool_batch_free(&b);
            continue;
        }
        a->credit -= (int64_t)b.n;
        a->batch_in_flight = true;
        a->inflight_last = b.seqs[b.n - 1];
        a->inflight_since = uv_now(a->loop);
        spool_batch_free(&b);
        tx_push(a, &f, false);
        return;
    }
}

/* ---- policy ---- */

/* Whether two documents' "firewall" members differ (absent == absent). */
static bool firewall_differs(const char *a_doc, size_t a_len, const char *b_doc, size_t b_len)
{
    cJSON *ja = a_doc ? cJSON_ParseWithLength(a_doc, a_len) : NULL;
    cJSON *jb = b_doc ? cJSON_ParseWithLength(b_doc, b_len) : NULL;
    const cJSON *fa = ja ? cJSON_GetObjectItemCaseSensitive(ja, "firewall") : NULL;
    const cJSON *fb = jb ? cJSON_GetObjectItemCaseSensitive(jb, "firewall") : NULL;
    bool differs;
    if (!fa || !fb)
        differs = fa != fb;
    else
        differs = !cJSON_Compare(fa, fb, true);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    return differs;
}

static int set_bytes(char **dst, size_t *dlen, const char *src, size_t len)
{
    char *copy = NULL;
    if (src) {
        copy = malloc(len + 1);
        if (!copy)
            return -1;
        memcpy(copy, src, len);
        copy[len] = '\0';
    }
    free(*dst);
    *dst = copy;
    *dlen = src ? len : 0;
    return 0;
}

/* The document in force passed its check (or needed none). */
static void good_set_current(agent *a)
{
    char err[512];
    if (!a->cur_doc)
        return;
    if (write_atomic(a->path_good, a->cur_doc, a->cur_len, err, sizeof(err)) != 0)
        logf_("cannot keep the last good policy: %s", err);
    if (set_bytes(&a->good_doc, &a->good_len, a->cur_doc, a->cur_len) != 0)
        logf_("out of memory keeping the last good policy");
}

static void safe_disarm(agent *a)
{
    a->safe_armed = false;
    if (!a->stopping)
        uv_timer_stop(&a->safe_timer);
}

static void safe_confirm(agent *a)
{
    safe_disarm(a);
    good_set_current(a);
    logf_("policy version %lld confirmed (a new connection to the controller worked after it "
          "was applied)",
          (long long)a->safe_version);
}

/* Whether the document in force needs a round trip before it counts as
 * good; `prev` is what it is compared with (the last good one). */
static bool safe_needed(agent *a, const char *prev, size_t prev_len)
{
    switch (a->safe_mode) {
    case AGENT_SAFE_NEVER: return false;
    case AGENT_SAFE_ALWAYS: return true;
    case AGENT_SAFE_FIREWALL:
    default: return firewall_differs(prev, prev_len, a->cur_doc, a->cur_len);
    }
}

static void safe_timeout_cb(uv_timer_t *t);

static void safe_arm(agent *a)
{
    a->safe_armed = true;
    a->safe_conn_gen = a->conn_gen;
    a->safe_version = a->cur_version;
    uv_timer_start(&a->safe_timer, safe_timeout_cb, a->safe_timeout_ms, 0);
}

/* The record of reverted documents, so that one the controller pushes
 * again is not applied again (and reverted again, cutting the node off for
 * another safe_timeout each time). */
static const reverted_doc *reverted_find(const agent *a, const char *sha256)
{
    for (size_t i = 0; i < a->n_reverted; i++)
        if (strcmp(a->reverted[i].sha256, sha256) == 0)
            return &a->reverted[i];
    return NULL;
}

static bool is_sha256_hex(const char *s)
{
    return strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

/* Adds to the record in memory; past AGENT_REVERTED_KEEP the oldest goes. */
static void reverted_push(agent *a, int64_t version, const char *sha256, unsigned timeout_ms)
{
    if (a->n_reverted == AGENT_REVERTED_KEEP) {
        memmove(&a->reverted[0], &a->reverted[1],
                (AGENT_REVERTED_KEEP - 1) * sizeof(a->reverted[0]));
        a->n_reverted--;
    }
    reverted_doc *r = &a->reverted[a->n_reverted++];
    r->version = version;
    snprintf(r->sha256, sizeof(r->sha256), "%s", sha256);
    r->timeout_ms = timeout_ms;
}

/* reverted.json: {"reverted": [{"version", "sha256", "timeout_ms"}, ...]},
 * oldest first. A file that does not load is reported and ignored. */
static void reverted_load(agent *a)
{
    char err[512], *txt = NULL;
    size_t len;
    cJSON *j = NULL;
    a->n_reverted = 0;
    int rc = read_whole(a->path_reverted, AGENT_REVERTED_MAX_BYTES, &txt, &len, err, sizeof(err));
    if (rc != 0) {
        if (rc < 0)
            logf_("%s; no record of reverted documents", err);
        goto done;
    }
    j = cJSON_ParseWithLength(txt, len);
    const cJSON *arr = j ? cJSON_GetObjectItemCaseSensitive(j, "reverted") : NULL;
    if (!cJSON_IsArray(arr)) {
        logf_("%s: expected {\"reverted\": [...]}; no record of reverted documents",
              a->path_reverted);
        goto done;
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "version");
        const cJSON *sha = cJSON_GetObjectItemCaseSensitive(e, "sha256");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "timeout_ms");
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0 ||
            !cJSON_IsString(sha) || !is_sha256_hex(sha->valuestring) || !cJSON_IsNumber(t) ||
            t->valuedouble < 0 || t->valuedouble > UINT_MAX) {
            logf_("%s: $.reverted[%d]: expected {\"version\", \"sha256\" (64 hex digits), "
                  "\"timeout_ms\"}; skipped",
                  a->path_reverted, i);
        } else if (!reverted_find(a, sha->valuestring)) {
            reverted_push(a, (int64_t)v->valuedouble, sha->valuestring, (unsigned)t->valuedouble);
        }
        i++;
    }
done:
    cJSON_Delete(j);
    free(txt);
}

/* Records a reverted document and writes the record (atomically). */
static void reverted_add(agent *a, int64_t version, const char *sha256)
{
    char err[512];
    if (reverted_find(a, sha256))
        return;
    reverted_push(a, version, sha256, a->safe_timeout_ms);

    cJSON *j = cJSON_CreateObject();
    cJSON *arr = j ? cJSON_AddArrayToObject(j, "reverted") : NULL;
    char *txt = NULL;
    for (size_t i = 0; arr && i < a->n_reverted; i++) {
        cJSON *e = cJSON_CreateObject();
        if (!e || !cJSON_AddItemToArray(arr, e)) {
            cJSON_Delete(e);
            arr = NULL;
            break;
        }
        if (!cJSON_AddNumberToObject(e, "version", (double)a->reverted[i].version) ||
            !cJSON_AddStringToObject(e, "sha256", a->reverted[i].sha256) ||
            !cJSON_AddNumberToObject(e, "timeout_ms", (double)a->reverted[i].timeout_ms))
            arr = NULL;
    }
    if (arr)
        txt = cJSON_PrintUnformatted(j);
    if (!txt)
        logf_("out of memory recording the reverted policy version %lld", (long long)version);
    else if (write_atomic(a->path_reverted, txt, strlen(txt), err, sizeof(err)) != 0)
        logf_("cannot record the reverted policy version %lld: %s", (long long)version, err);
    free(txt);
    cJSON_Delete(j);
}

static void reconnect_cb(uv_timer_t *t);

/* A fresh connection attempt now, without backoff: after a revert (the
 * link may have been cut by the document just reverted) and for the
 * safe-apply check. A connection still being made says hello with what is
 * true when it opens; if it fails, the next attempt is at once. */
static void reconnect_at_once(agent *a, const char *why)
{
    if (a->stopping)
        return;
    a->reconnect_now = true;
    if (a->state == LINK_OPEN) {
        link_close(a, 1000, why);
    } else if (a->state == LINK_IDLE) {
        a->reconnect_now = false;
        uv_timer_stop(&a->reconnect_timer);
        uv_timer_start(&a->reconnect_timer, reconnect_cb, 0, 0);
    }
}

static void safe_timeout_cb(uv_timer_t *t)
{
    agent *a = t->data;
    char err[1024], bad_sha[65] = "";
    int64_t bad = a->safe_version;
    safe_disarm(a);
    if (a->cur_doc)
        memcpy(bad_sha, a->cur_sha, sizeof(bad_sha));

    pc_policy *p = NULL;
    if (a->good_doc && pc_policy_parse(a->good_doc, a->good_len, &p, err, sizeof(err)) != 0) {
        logf_("the last good policy does not load (%s); reverting to the built-in policy", err);
        free(a->good_doc);
        a->good_doc = NULL;
        a->good_len = 0;
        p = NULL;
    }
    if (!p)
        p = pc_policy_builtin();
    if (!p) {
        logf_("out of memory reverting policy version %lld", (long long)bad);
        return;
    }
    if (a->hooks.apply(a->hooks.arg, p, err, sizeof(err)) != 0) {
        logf_("reverting policy version %lld failed: %s", (long long)bad, err);
        pc_policy_unref(p);
        return;
    }
    int64_t version = (int64_t)pc_policy_version(p);
    pc_policy_unref(p);
    if (a->good_doc) {
        if (write_atomic(a->path_policy, a->good_doc, a->good_len, err, sizeof(err)) != 0)
            logf_("cannot write the reverted policy: %s", err);
        pcw_sha256_hex(a->good_doc, a->good_len, a->cur_sha);
    } else {
        if (unlink(a->path_policy) != 0 && errno != ENOENT)
            logf_("cannot remove %s: %s", a->path_policy, strerror(errno));
        a->cur_sha[0] = '\0';
    }
    if (set_bytes(&a->cur_doc, &a->cur_len, a->good_doc, a->good_len) != 0)
        logf_("out of memory reverting");
    a->cur_version = version;
    a->st.policy_version = version;
    a->st.reverts++;
    a->has_reverted = true;
    a->reverted_version = bad;
    snprintf(a->reverted_reason, sizeof(a->reverted_reason),
             "safe-apply: no round trip with the controller within %g s after applying version "
             "%lld",
             a->safe_timeout_ms / 1000.0, (long long)bad);
    logf_("policy version %lld reverted (%s); enforcing %s version %lld", (long long)bad,
          a->reverted_reason, a->good_doc ? "the last good policy," : "the built-in policy,",
          (long long)version);
    /* Recorded after policy.json says what is enforced: a crash in between
     * at worst lets the document be tried (and checked) once more. */
    if (bad_sha[0])
        reverted_add(a, bad, bad_sha);
    /* A link that may still be half alive: start over so the next hello
     * reports the revert. */
    reconnect_at_once(a, "safe-apply revert");
}

static void on_policy(agent *a, const pcw_msg *m)
{
    char err[1024] = "", sha[65];
    const char *doc = m->u.policy.document;
    size_t len = m->u.policy.document_len;
    int64_t version = m->u.policy.version;
    pc_policy *p = NULL;
    bool ok = false, armed = false;

    pcw_sha256_hex(doc, len, sha);
    if (strcmp(sha, m->u.policy.sha256) != 0) {
        snprintf(err, sizeof(err), "sha256 mismatch: the document's bytes hash to %s", sha);
        goto ack;
    }
    if (a->cur_doc && strcmp(sha, a->cur_sha) == 0) {
        ok = true; /* enforced already (sent again after a reconnect) */
        goto ack;
    }
    const reverted_doc *r = reverted_find(a, sha);
    if (r) {
        snprintf(err, sizeof(err),
                 "version %lld was reverted by safe apply (no round trip with the controller "
                 "within %g s); not applied again",
                 (long long)r->version, r->timeout_ms / 1000.0);
        goto ack;
    }
    if (pc_policy_parse(doc, len, &p, err, sizeof(err)) != 0)
        goto ack;
    if ((int64_t)pc_policy_version(p) != version) {
        snprintf(err, sizeof(err), "$.version: the document says %llu, the message %lld",
                 (unsigned long long)pc_policy_version(p), (long long)version);
        goto ack;
    }
    if (write_atomic(a->path_policy, doc, len, err, sizeof(err)) != 0)
        goto ack;
    if (a->hooks.apply(a->hooks.arg, p, err, sizeof(err)) != 0) {
        /* Keep the cache saying what is enforced. */
        char werr[512];
        if (a->cur_doc) {
            if (write_atomic(a->path_policy, a->cur_doc, a->cur_len, werr, sizeof(werr)) != 0)
                logf_("cannot restore the cached policy: %s", werr);
        } else if (unlink(a->path_policy) != 0 && errno != ENOENT) {
            logf_("cannot remove %s: %s", a->path_policy, strerror(errno));
        }
        goto ack;
    }
    if (set_bytes(&a->cur_doc, &a->cur_len, doc, len) != 0) {
        logf_("out of memory keeping the applied policy");
    }
    memcpy(a->cur_sha, sha, sizeof(sha));
    a->cur_version = version;
    a->st.policy_version = version;
    ok = true;

    /* Compared with the last good document: one still under its check is
     * not good yet. */
    if (safe_needed(a, a->good_doc, a->good_len)) {
        safe_arm(a);
        armed = true;
    } else {
        safe_disarm(a);
        good_set_current(a);
    }
ack:
    if (p)
        pc_policy_unref(p);
    if (ok) {
        a->st.policies_applied++;
        logf_("policy version %lld applied%s", (long long)version,
              armed ? " (safe apply: waiting for the controller)" : "");
    } else {
        a->st.policies_failed++;
        logf_("policy version %lld refused: %s", (long long)version, err);
    }
    pcw_frame f;
    if (pcw_build_ack(&f, version, m->u.policy.sha256, ok, ok ? NULL : err) == 0)
        tx_push(a, &f, armed);
}

/* ---- receiving ---- */

static void on_events_ack(agent *a, const pcw_msg *m)
{
    char err[512];
    int64_t seq = m->u.events_ack.seq;
    if (seq > spool_last_seq(a->sp)) {
        flush_spool(a);
        if (seq > spool_last_seq(a->sp)) {
            logf_("the controller has events up to %lld, beyond this spool's %lld: "
                  "numbering moves past them",
                  (long long)seq, (long long)spool_last_seq(a->sp));
            if (spool_rebase(a->sp, seq, err, sizeof(err)) != 0)
                logf_("%s", err);
        }
    }
    if (spool_ack(a->sp, seq, err, sizeof(err)) != 0)
        logf_("%s", err);
    a->acked = seq;
    a->st.acked_seq = seq;
    /* An events_ack may only bring credit (the controller had none to
     * spare when it acked the last batch): the batch in flight is done
     * only when its last event is acknowledged. */
    if (a->batch_in_flight && seq >= a->inflight_last)
        a->batch_in_flight = false;
    int64_t credit = m->u.events_ack.credit;
    a->credit = credit > INT64_MAX - a->credit ? INT64_MAX : a->credit + credit;
    ship(a);
}

static void hello_accepted(agent *a)
{
    a->hello_done = true;
    a->st.connected = true;
    a->st.connects++;
    a->backoff_ms = a->backoff_min_ms;
    if (a->has_reverted)
        a->has_reverted = false; /* reported in this connection's hello */
    logf_("controller link up (%s at %s)", a->node, a->hostport);
}

static void on_message(agent *a, const char *buf, size_t len)
{
    pcw_msg m;
    char err[512];
    if (pcw_parse(buf, len, &m, err, sizeof(err)) != 0) {
        protocol_error(a, "bad-message", err);
        return;
    }
    a->last_rx_ms = uv_now(a->loop);
    switch (m.type) {
    case PCW_POLICY:
    case PCW_EVENTS_ACK:
    case PCW_PING:
        if (!a->hello_done)
            hello_accepted(a);
        break;
    default: break;
    }
    /* The round trip that confirms a document: the controller answered the
     * hello of a connection made after it was applied. A message on an older
     * connection proves nothing: a firewall that blocks new connections may
     * still let established ones through. */
    if (a->safe_armed && m.type == PCW_EVENTS_ACK && a->conn_gen > a->safe_conn_gen)
        safe_confirm(a);
    switch (m.type) {
    case PCW_POLICY: on_policy(a, &m); break;
    case PCW_EVENTS_ACK: on_events_ack(a, &m); break;
    case PCW_PING: send_stats(a); break;
    case PCW_ERROR:
        logf_("the controller reports %s: %s", m.u.error.code, m.u.error.message);
        snprintf(a->down_reason, sizeof(a->down_reason), "the controller said %s: %s",
                 m.u.error.code, m.u.error.message);
        break;
    default: {
        char msg[128];
        snprintf(msg, sizeof(msg), "$.type: '%s' is not a message the controller sends",
                 pcw_type_name(m.type));
        protocol_error(a, "unexpected-type", msg);
        break;
    }
    }
    pcw_msg_free(&m);
}

/* ---- the connection ---- */

static uint64_t rng_next(agent *a)
{
    /* xorshift64*: jitter only, not security. */
    a->rng ^= a->rng >> 12;
    a->rng ^= a->rng << 25;
    a->rng ^= a->rng >> 27;
    return a->rng * 2685821657736338717ull;
}

static void schedule_reconnect(agent *a)
{
    if (a->stopping || uv_is_active((uv_handle_t *)&a->reconnect_timer))
        return;
    unsigned b = a->backoff_ms;
    unsigned wait = b / 2 + (unsigned)(rng_next(a) % (b - b / 2 + 1));
    a->backoff_ms = b > a->backoff_max_ms / 2 ? a->backoff_max_ms : b * 2;
    uv_timer_start(&a->reconnect_timer, reconnect_cb, wait, 0);
}

/* The connection is gone (failed, closed by either side). */
static void link_lost(agent *a, const char *reason)
{
    if (a->state == LINK_IDLE)
        return;
    const char *why = a->down_reason[0] ? a->down_reason : reason;
    logf_("link down: %s", why && *why ? why : "connection closed");
    a->state = LINK_IDLE;
    a->wsi = NULL;
    a->hello_done = false;
    a->st.connected = false;
    tx_clear(a);
    free(a->rx);
    a->rx = NULL;
    a->rxlen = a->rxcap = 0;
    a->close_code = 0;
    a->credit = 0;
    a->batch_in_flight = false;
    a->down_reason[0] = '\0';
    /* The connection a document under its check was applied on: the check
     * needs a new one, at once. */
    if (a->safe_armed && a->conn_gen == a->safe_conn_gen)
        a->reconnect_now = true;
    if (a->reconnect_now && !a->stopping) {
        a->reconnect_now = false;
        uv_timer_stop(&a->reconnect_timer);
        uv_timer_start(&a->reconnect_timer, reconnect_cb, 0, 0);
    } else {
        schedule_reconnect(a);
    }
}

static void connect_now(agent *a)
{
    if (a->stopping || a->state != LINK_IDLE)
        return;
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof(ci));
    ci.context = a->ctx;
    ci.address = a->host;
    ci.port = a->port;
    ci.ssl_connection = LCCSCF_USE_SSL | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK;
    ci.path = "/";
    ci.host = a->hostport;
    ci.origin = a->hostport;
    ci.protocol = PCW_PROTOCOL;
    ci.local_protocol_name = PCW_PROTOCOL;
    ci.ietf_version_or_minus_one = -1;
    a->state = LINK_CONNECTING;
    a->conn_gen++;
    a->down_reason[0] = '\0';
    a->tls_err[0] = '\0';
    struct lws *wsi = lws_client_connect_via_info(&ci);
    if (a->state != LINK_CONNECTING)
        return; /* failed inside the call, already handled */
    if (!wsi) {
        link_lost(a, "cannot start a connection");
        return;
    }
    a->wsi = wsi;
}

static void reconnect_cb(uv_timer_t *t)
{
    connect_now(t->data);
}

static int on_writeable(agent *a, struct lws *wsi)
{
    if (a->tx_head) {
        txq *q = a->tx_head;
        a->tx_head = q->next;
        if (!a->tx_head)
            a->tx_tail = NULL;
        int n = lws_write(wsi, (unsigned char *)pcw_payload(&q->f), q->f.len, LWS_WRITE_TEXT);
        bool safe_ack = q->safe_ack;
        pcw_frame_free(&q->f);
        free(q);
        if (n < 0) {
            snprintf(a->down_reason, sizeof(a->down_reason), "write failed");
            return -1;
        }
        if (safe_ack && a->safe_armed && a->conn_gen == a->safe_conn_gen && !a->close_code) {
            /* Only a new connection shows the document lets the node reach
             * its controller: this one was open before it was applied. */
            logf_("safe apply: checking the controller link with a new connection");
            link_close(a, 1000, "closed for the safe-apply check");
            a->reconnect_now = true;
        }
        if (a->tx_head || a->close_code)
            lws_callback_on_writable(wsi);
        return 0;
    }
    if (a->close_code) {
        /* lws_close_reason and -1 should send the close frame, but lws
         * built with _DEBUG on a libuv loop closes such a wsi twice and the
         * second close drops it without one ("uv repeat test"): the frame
         * is written here, and the connection dropped after it. */
        unsigned char buf[LWS_PRE + 2 + sizeof(a->close_reason)];
        size_t rlen = strlen(a->close_reason);
        buf[LWS_PRE] = (unsigned char)(a->close_code >> 8);
        buf[LWS_PRE + 1] = (unsigned char)(a->close_code & 0xff);
        memcpy(buf + LWS_PRE + 2, a->close_reason, rlen);
        if (lws_write(wsi, buf + LWS_PRE, 2 + rlen, AGENT_WRITE_CLOSE) < 0)
            logf_("cannot send the close frame (code %d) to the controller", a->close_code);
        return -1;
    }
    return 0;
}

static int on_receive(agent *a, struct lws *wsi, const char *in, size_t len)
{
    if (a->close_code)
        return 0;
    if (lws_frame_is_binary(wsi)) {
        protocol_error(a, "bad-message", "binary frame (messages are JSON text)");
        return 0;
    }
    if (a->rxlen + len > PCW_CONTROLLER_FRAME_MAX) {
        logf_("a message from the controller is larger than %d bytes; closing the link",
              PCW_CONTROLLER_FRAME_MAX);
        /* Like every close the node starts: the frame (1009) goes out from
         * the writable callback, and what else arrives is ignored. */
        link_close(a, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "message too large");
        snprintf(a->down_reason, sizeof(a->down_reason), "message from the controller too large");
        a->rxlen = 0;
        return 0;
    }
    if (a->rxlen + len > a->rxcap) {
        size_t cap = a->rxcap ? a->rxcap : 65536;
        while (cap < a->rxlen + len)
            cap *= 2;
        if (cap > PCW_CONTROLLER_FRAME_MAX)
            cap = PCW_CONTROLLER_FRAME_MAX;
        char *n = realloc(a->rx, cap);
        if (!n) {
            snprintf(a->down_reason, sizeof(a->down_reason), "out of memory");
            return -1;
        }
        a->rx = n;
        a->rxcap = cap;
    }
    memcpy(a->rx + a->rxlen, in, len);
    a->rxlen += len;
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
        return 0;
    size_t n = a->rxlen;
    a->rxlen = 0;
    on_message(a, a->rx, n);
    return 0;
}

static void send_hello(agent *a)
{
    flush_spool(a);
    pcw_frame f;
    if (pcw_build_hello(&f, a->node, a->software, a->cur_doc != NULL, a->cur_version,
                        a->cur_doc ? a->cur_sha : NULL, spool_last_seq(a->sp), spool_pending(a->sp),
                        spool_dropped(a->sp), a->has_reverted, a->reverted_version,
                        a->has_reverted ? a->reverted_reason : NULL) != 0) {
        logf_("out of memory building hello");
        link_close(a, 1011, "out of memory");
        return;
    }
    tx_push(a, &f, false);
}

static int agent_lws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len)
{
    struct lws_context *cx = lws_get_context(wsi);
    agent *a = cx ? lws_context_user(cx) : NULL;
    if (!a)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
        /* user: the X509_STORE_CTX, len: OpenSSL's verdict so far. Only
         * remembered, so the link-down line can say why. */
        if (!len && user && !a->tls_err[0]) {
            X509_STORE_CTX *x = user;
            snprintf(a->tls_err, sizeof(a->tls_err), "the hub's certificate: %s (depth %d)",
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)),
                     X509_STORE_CTX_get_error_depth(x));
        }
        return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
        char why[600];
        snprintf(why, sizeof(why), "cannot connect to %s: %s", a->hostport,
                 a->tls_err[0] ? a->tls_err
                 : in          ? (const char *)in
                               : "connection failed");
        link_lost(a, why);
        return 0;
    }
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        a->wsi = wsi;
        a->state = LINK_OPEN;
        a->reconnect_now = false;
        a->last_rx_ms = uv_now(a->loop);
        a->acked = 0;
        a->credit = 0;
        a->batch_in_flight = false;
        a->close_code = 0;
        send_hello(a);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE: return on_receive(a, wsi, in, len);
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (a->state != LINK_OPEN)
            return 0;
        return on_writeable(a, wsi);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (len >= 2 && !a->down_reason[0]) {
            const unsigned char *b = in;
            snprintf(a->down_reason, sizeof(a->down_reason),
                     "closed by the controller (code %u%s%.*s)", (unsigned)(b[0] << 8 | b[1]),
                     len > 2 ? ": " : "", (int)(len - 2 < 200 ? len - 2 : 200),
                     (const char *)b + 2);
        }
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        link_lost(a, a->stopping ? "node stopping" : "connection closed");
        return 0;
    default: return 0;
    }
}

/* ---- timers ---- */

static void flush_cb(uv_timer_t *t)
{
    agent *a = t->data;
    flush_spool(a);
    ship(a);
    if (a->state == LINK_OPEN && !a->close_code &&
        uv_now(a->loop) - a->last_rx_ms > AGENT_SILENCE_MS) {
        char why[96];
        snprintf(why, sizeof(why), "no message from the controller for %d s",
                 AGENT_SILENCE_MS / 1000);
        link_close(a, 1001, why);
    }
    if (a->state == LINK_OPEN && !a->close_code && a->batch_in_flight &&
        uv_now(a->loop) - a->inflight_since > AGENT_BATCH_ACK_MS) {
        char why[128];
        snprintf(why, sizeof(why), "events up to %lld not acknowledged within %d s",
                 (long long)a->inflight_last, AGENT_BATCH_ACK_MS / 1000);
        link_close(a, 1001, why);
    }
}

static void stats_cb(uv_timer_t *t)
{
    agent *a = t->data;
    if (a->state == LINK_OPEN && a->hello_done && !a->close_code)
        send_stats(a);
}

/* ---- life cycle ---- */

static void agent_free(agent *a)
{
    tx_clear(a);
    free(a->rx);
    free(a->cur_doc);
    free(a->good_doc);
    free(a->path_policy);
    free(a->path_good);
    free(a->path_reverted);
    free(a->state_dir);
    free(a->software);
    if (a->ssl_ctx)
        SSL_CTX_free(a->ssl_ctx);
    free(a);
}

static void handle_closed(uv_handle_t *h)
{
    agent *a = h->data;
    if (--a->open_handles > 0)
        return;
    /* lws NULLs lws_alive once its context is wholly gone (on a foreign
     * loop that is done by now); until then its callbacks may still look
     * at the agent, so a context still alive keeps it. */
    if (a->lws_alive)
        fprintf(stderr, "portcullis-node: libwebsockets context not destroyed at stop\n");
    else
        agent_free(a);
}

/* Loads the documents of the state directory that the agent compares
 * with: the one in force (when it came from the controller) and the last
 * good one; arms the safe-apply check for one that was never confirmed. */
static int load_docs(agent *a, const char *current_sha256, char *err, size_t errlen)
{
    size_t len;
    char *doc = NULL;
    int rc;
    if (current_sha256) {
        rc = read_whole(a->path_policy, PC_POLICY_MAX_BYTES, &doc, &len, err, errlen);
        if (rc < 0)
            return -1;
        char sha[65];
        if (rc == 0)
            pcw_sha256_hex(doc, len, sha);
        if (rc == 0 && strcmp(sha, current_sha256) == 0) {
            a->cur_doc = doc;
            a->cur_len = len;
            memcpy(a->cur_sha, sha, sizeof(sha));
        } else {
            free(doc);
            logf_("%s changed since it was loaded; reporting the policy as not from the "
                  "controller",
                  a->path_policy);
        }
    }
    rc = read_whole(a->path_good, PC_POLICY_MAX_BYTES, &a->good_doc, &a->good_len, err, errlen);
    if (rc < 0)
        return -1;
    if (a->cur_doc && !(a->good_doc && a->good_len == a->cur_len &&
                        memcmp(a->good_doc, a->cur_doc, a->cur_len) == 0)) {
        /* The node stopped (or crashed) before the document in force was
         * confirmed: check it now. */
        if (safe_needed(a, a->good_doc, a->good_len))
            safe_arm(a);
        else
            good_set_current(a);
    }
    return 0;
}

int agent_start(uv_loop_t *loop, const agent_config *cfg, const agent_hooks *hooks, spool *sp,
                const pc_policy *current, const char *current_sha256, agent **out, char *err,
                size_t errlen)
{
    *out = NULL;
    agent *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    a->loop = loop;
    a->loops[0] = loop;
    a->hooks = *hooks;
    a->sp = sp;
    a->state_dir = strdup(cfg->state_dir);
    a->software = strdup(cfg->software ? cfg->software : "portcullis-node");
    a->path_policy = path_join(cfg->state_dir, "policy.json");
    a->path_good = path_join(cfg->state_dir, "policy.good.json");
    a->path_reverted = path_join(cfg->state_dir, "reverted.json");
    if (!a->state_dir || !a->software || !a->path_policy || !a->path_good || !a->path_reverted) {
        snprintf(err, errlen, "out of memory");
        agent_free(a);
        return -1;
    }
    a->backoff_min_ms = cfg->backoff_min_ms ? cfg->backoff_min_ms : 1000;
    a->backoff_max_ms = cfg->backoff_max_ms ? cfg->backoff_max_ms : 60000;
    if (a->backoff_max_ms < a->backoff_min_ms)
        a->backoff_max_ms = a->backoff_min_ms;
    a->backoff_ms = a->backoff_min_ms;
    a->stats_interval_ms = cfg->stats_interval_ms ? cfg->stats_interval_ms : 30000;
    a->safe_timeout_ms = cfg->safe_timeout_ms ? cfg->safe_timeout_ms : 60000;
    a->safe_mode = cfg->safe_mode;
    a->cur_version = current ? (int64_t)pc_policy_version(current) : 0;
    a->st.policy_version = a->cur_version;
    a->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)a;
    if (!a->rng)
        a->rng = 1;

    if (load_link(a, err, errlen) != 0 || make_ssl_ctx(a, err, errlen) != 0) {
        agent_free(a);
        return -1;
    }

    a->protocols[0].name = PCW_PROTOCOL;
    a->protocols[0].callback = agent_lws_cb;
    a->protocols[0].rx_buffer_size = 65536;

    lws_set_log_level(LLL_ERR, lws_log_emit);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = a->protocols;
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.foreign_loops = a->loops;
    info.provided_client_ssl_ctx = a->ssl_ctx;
    info.user = a;
    info.timeout_secs = 20;
    info.pcontext = &a->lws_alive;
    a->ctx = lws_create_context(&info);
    if (!a->ctx) {
        snprintf(err, errlen,
                 "cannot start the link (libwebsockets with libuv failed to "
                 "initialise; is libwebsockets-evlib-uv installed?)");
        agent_free(a);
        return -1;
    }
    a->lws_alive = a->ctx;

    uv_timer_t *timers[] = {&a->reconnect_timer, &a->flush_timer, &a->stats_timer, &a->safe_timer};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = a;
        a->open_handles++;
    }

    reverted_load(a);
    if (load_docs(a, current_sha256, err, errlen) != 0) {
        logf_("%s", err); /* the agent still runs: nothing to compare with */
        err[0] = '\0';
    }
    uv_timer_start(&a->flush_timer, flush_cb, AGENT_FLUSH_MS, AGENT_FLUSH_MS);
    uv_timer_start(&a->stats_timer, stats_cb, a->stats_interval_ms, a->stats_interval_ms);
    connect_now(a);
    *out = a;
    return 0;
}

/* Counts the handles on the loop that are neither the agent's timers nor
 * signal handlers: what lws still has open. */
typedef struct walk_count {
    agent *a;
    unsigned n;
} walk_count;

static void count_lws_handle(uv_handle_t *h, void *arg)
{
    walk_count *w = arg;
    agent *a = w->a;
    if (h == (uv_handle_t *)&a->reconnect_timer || h == (uv_handle_t *)&a->flush_timer ||
        h == (uv_handle_t *)&a->stats_timer || h == (uv_handle_t *)&a->safe_timer ||
        h->type == UV_SIGNAL)
        return;
    w->n++;
}

/* Runs on the loop after the first lws_context_destroy. On a foreign loop
 * that call only starts closing lws's handles; a second call frees the
 * context (and unloads the event-library plugin), so it must wait until
 * libuv has run every one of those close callbacks. */
static void reap_cb(uv_timer_t *t)
{
    agent *a = t->data;
    walk_count w = {a, 0};
    uv_walk(a->loop, count_lws_handle, &w);
    if (w.n > 0 && ++a->reap_tries < 1000)
        return;
    if (a->lws_alive)
        lws_context_destroy(a->lws_alive);
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, handle_closed);
}

void agent_stop(agent *a)
{
    if (!a)
        return;
    a->stopping = true;
    uv_timer_t *timers[] = {&a->reconnect_timer, &a->stats_timer, &a->safe_timer};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_stop(timers[i]);
        uv_close((uv_handle_t *)timers[i], handle_closed);
    }
    if (a->wsi && a->state == LINK_OPEN)
        snprintf(a->down_reason, sizeof(a->down_reason), "node stopping");
    /* Closes the connection now (our callbacks run inside) and starts
     * closing lws's handles; the flush timer becomes the reaper that
     * finishes the job. */
    a->ctx = NULL;
    lws_context_destroy(a->lws_alive);
    uv_timer_stop(&a->flush_timer);
    uv_timer_start(&a->flush_timer, reap_cb, 1, 1);
}

void agent_get_status(agent *a, agent_status *out)
{
    *out = a->st;
}
