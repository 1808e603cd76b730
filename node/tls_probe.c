/* tls_probe.c - the TLS 1.3 certificate probe: a non-blocking OpenSSL client
 * on the caller's libuv loop, and the result cache all proxy threads share
 * (see tls_probe.h).
 *
 * I/O: the socket belongs to libuv (uv_tcp_connect, uv_read, uv_write) and
 * OpenSSL only sees two memory BIOs: bytes read are fed into one, bytes
 * OpenSSL wants sent are drained from the other. The alternative, uv_poll on
 * the fd with OpenSSL doing its own reads and writes, would put a second
 * owner on the descriptor beside libuv's stream machinery, need our own
 * WANT_READ/WANT_WRITE bookkeeping, and lose libuv's close rules (pending
 * connect and write requests are cancelled before the close callback). With
 * memory BIOs a probe is an ordinary libuv stream client and OpenSSL is pure
 * computation on buffers.
 *
 * Lifetime: a probe owns a uv_tcp_t and a uv_timer_t; it is freed only when
 * both close callbacks have run. Its result is final ("finished") before
 * that: the cache is filled, callbacks are called, and then, after a good
 * handshake or our own alert, close_notify/alert is flushed and the write
 * side shut down while the reads drain to EOF, bounded by a grace timer.
 *
 * Locking: cache->mu guards the result table, the table of running probes
 * (for coalescing), the list of live probes (for abort) and the counters.
 * Everything else in a probe belongs to the thread running its loop.
 */
#include "tls_probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROBE_NAME_MAX 253
#define PROBE_READ_BUF 16384
#define PROBE_WRITE_CHUNK 65536
#define PROBE_GRACE_MS 1000
#define PROBE_DEFAULT_MAX_RUNNING 256
#define PROBE_DEFAULT_TIMEOUT_MS 10000
#define PROBE_MIN_BUCKETS 64
#define PROBE_MAX_BUCKETS (1u << 20)

typedef struct probe_key {
    uint8_t addr[16]; /* IPv4 in the first 4 bytes, the rest zero */
    uint16_t port;    /* host order */
    sa_family_t family;
    char name[PROBE_NAME_MAX + 1]; /* lower case, no trailing dot */
} probe_key;

typedef struct probe_entry probe_entry;
struct probe_entry {
    probe_key key;
    uint64_t hash;
    uint64_t expires_ms; /* CLOCK_MONOTONIC */
    bool ok;
    probe_entry *hnext, **hpprev; /* bucket chain */
    probe_entry *older, *newer;   /* insertion order, for eviction */
    char reason[];
};

typedef struct probe probe;

struct tls_probe_req {
    probe *p;
    tls_probe_cb cb;
    void *arg;
    tls_probe_req *next, **pprev;
};

struct probe {
    tls_probe_cache *cache;
    uv_loop_t *loop;
    probe_key key;
    uint64_t hash;
    struct sockaddr_storage addr;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_shutdown_t shutdown;
    SSL *ssl;
    BIO *rbio, *wbio;                /* owned by ssl */
    tls_probe_req *waiters, **wtail; /* told in the order they asked */
    probe *hnext, **hpprev;          /* running table, until finished (mu) */
    probe *next, **pprev;            /* live list, until freed (mu) */
    int connect_error;               /* synchronous connect failure, reported by the timer */
    int handles_open;
    bool hashed, linked, connected, finished, closing;
    char rbuf[PROBE_READ_BUF];
};

typedef struct probe_write {
    uv_write_t req;
    char data[];
} probe_write;

struct tls_probe_cache {
    pthread_mutex_t mu;
    tls_probe_config cfg;
    SSL_CTX *ctx;
    size_t nbuckets; /* power of two, for entries and running */
    probe_entry **entries;
    probe **running;
    probe_entry *oldest, *newest;
    size_t nentries;
    probe *live;
    size_t nrunning; /* probes started and not finished, all loops */
    tls_probe_stats stats;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const uint8_t *b = data;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t key_hash(const probe_key *k)
{
    uint64_t h = 0xcbf29ce484222325ull;
    uint8_t fam = (uint8_t)k->family;
    h = fnv1a(h, &fam, 1);
    h = fnv1a(h, &k->port, sizeof k->port);
    h = fnv1a(h, k->addr, sizeof k->addr);
    return fnv1a(h, k->name, strlen(k->name));
}

static bool key_eq(const probe_key *a, const probe_key *b)
{
    return a->family == b->family && a->port == b->port &&
           memcmp(a->addr, b->addr, sizeof a->addr) == 0 && strcmp(a->name, b->name) == 0;
}

/* The name comes from the client's ClientHello: accept only what a host name
 * or an address literal can look like, so nothing odd reaches OpenSSL or the
 * reason strings. */
static int name_normalize(const char *in, char *out, bool *is_ip)
{
    size_t n = strnlen(in, PROBE_NAME_MAX + 2);
    if (n > 1 && in[n - 1] == '.')
        n--;
    if (n == 0 || n > PROBE_NAME_MAX)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        char ch = in[i];
        out[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    out[n] = '\0';

    uint8_t buf[16];
    if (inet_pton(AF_INET, out, buf) == 1 || inet_pton(AF_INET6, out, buf) == 1) {
        *is_ip = true;
        return 0;
    }
    *is_ip = false;
    if (out[0] == '.')
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        char ch = out[i];
        bool good = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                    ch == '_' || ch == '.';
        if (!good || (ch == '.' && out[i + 1] == '.'))
            return -EINVAL;
    }
    return 0;
}

static int key_make(probe_key *k, const struct sockaddr *addr, const char *name, bool *is_ip)
{
    memset(k, 0, sizeof *k);
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
        memcpy(k->addr, &sin->sin_addr, 4);
        k->port = ntohs(sin->sin_port);
    } else if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;
        memcpy(k->addr, &sin6->sin6_addr, 16);
        k->port = ntohs(sin6->sin6_port);
    } else {
        return -EAFNOSUPPORT;
    }
    k->family = addr->sa_family;
    return name_normalize(name, k->name, is_ip);
}

static void set_reason(char *dst, size_t len, const char *src)
{
    if (dst && len > 0)
        snprintf(dst, len, "%s", src);
}

/* ---- result table (all under mu) ---- */

static probe_entry *entry_find(tls_probe_cache *c, const probe_key *k, uint64_t h)
{
    for (probe_entry *e = c->entries[h & (c->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && key_eq(&e->key, k))
            return e;
    return NULL;
}

static void entry_remove(tls_probe_cache *c, probe_entry *e)
{
    *e->hpprev = e->hnext;
    if (e->hnext)
        e->hnext->hpprev = e->hpprev;
    if (e->older)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    c->nentries--;
    free(e);
}

static void entry_put(tls_probe_cache *c, const probe_key *k, uint64_t h, bool ok,
                      const char *reason, uint64_t now)
{
    unsigned ttl_s = ok ? c->cfg.ttl_ok_s : c->cfg.ttl_fail_s;
    if (ttl_s == 0 || c->cfg.max_entries == 0)
        return;
    probe_entry *old = entry_find(c, k, h);
    if (old)
        entry_remove(c, old);
    /* Expired entries at the old end go first; then make room. */
    while (c->oldest && c->oldest->expires_ms <= now)
        entry_remove(c, c->oldest);
    while (c->nentries >= c->cfg.max_entries) {
        entry_remove(c, c->oldest);
        c->stats.evictions++;
    }
    size_t rlen = strlen(reason) + 1;
    probe_entry *e = malloc(sizeof *e + rlen);
    if (!e)
        return; /* the answer was still given; it is just not remembered */
    e->key = *k;
    e->hash = h;
    e->ok = ok;
    e->expires_ms = now + (uint64_t)ttl_s * 1000u;
    memcpy(e->reason, reason, rlen);
    probe_entry **head = &c->entries[h & (c->nbuckets - 1)];
    e->hnext = *head;
    if (*head)
        (*head)->hpprev = &e->hnext;
    e->hpprev = head;
    *head = e;
    e->newer = NULL;
    e->older = c->newest;
    if (c->newest)
        c->newest->newer = e;
    else
        c->oldest = e;
    c->newest = e;
    c->nentries++;
}

/* ---- running probes and live list (under mu) ---- */

static probe *running_find(tls_probe_cache *c, const uv_loop_t *loop, const probe_key *k,
                           uint64_t h)
{
    for (probe *p = c->running[h & (c->nbuckets - 1)]; p; p = p->hnext)
        if (p->loop == loop && p->hash == h && key_eq(&p->key, k))
            return p;
    return NULL;
}

static void running_remove(probe *p)
{
    if (!p->hashed)
        return;
    *p->hpprev = p->hnext;
    if (p->hnext)
        p->hnext->hpprev = p->hpprev;
    p->hashed = false;
    p->cache->nrunning--;
}

static void probe_link(tls_probe_cache *c, probe *p)
{
    probe **head = &c->running[p->hash & (c->nbuckets - 1)];
    p->hnext = *head;
    if (*head)
        (*head)->hpprev = &p->hnext;
    p->hpprev = head;
    *head = p;
    p->hashed = true;
    c->nrunning++;
    p->next = c->live;
    if (c->live)
        c->live->pprev = &p->next;
    p->pprev = &c->live;
    c->live = p;
    p->linked = true;
}

/* ---- one probe ---- */

static void waiter_add(probe *p, tls_probe_req *r)
{
    r->p = p;
    r->next = NULL;
    r->pprev = p->wtail;
    *p->wtail = r;
    p->wtail = &r->next;
}

static void waiter_remove(tls_probe_req *r)
{
    *r->pprev = r->next;
    if (r->next)
        r->next->pprev = r->pprev;
    else
        r->p->wtail = r->pprev;
}

static void probe_on_close(uv_handle_t *h)
{
    probe *p = h->data;
    if (--p->handles_open > 0)
        return;
    if (p->linked) {
        pthread_mutex_lock(&p->cache->mu);
        *p->pprev = p->next;
        if (p->next)
            p->next->pprev = p->pprev;
        pthread_mutex_unlock(&p->cache->mu);
    }
    SSL_free(p->ssl);
    free(p);
}

/* Pending connect, write and shutdown requests get UV_ECANCELED before the
 * close callbacks; they only free their own memory then. */
static void probe_close(probe *p)
{
    if (p->closing)
        return;
    p->closing = true;
    if (uv_is_active((uv_handle_t *)&p->timer))
        uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, probe_on_close);
    if (p->handles_open > 1)
        uv_close((uv_handle_t *)&p->tcp, probe_on_close);
}

static bool is_local_error(int err)
{
    return err == UV_ENOMEM || err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOBUFS ||
           err == UV_EADDRNOTAVAIL || err == UV_EAFNOSUPPORT;
}

static void probe_on_write(uv_write_t *req, int status);
static void probe_on_timer(uv_timer_t *t);

/* Hands everything OpenSSL queued to libuv. */
static int probe_flush(probe *p)
{
    size_t pending;
    while ((pending = BIO_ctrl_pending(p->wbio)) > 0) {
        size_t chunk = pending < PROBE_WRITE_CHUNK ? pending : PROBE_WRITE_CHUNK;
        probe_write *w = malloc(sizeof *w + chunk);
        if (!w)
            return UV_ENOMEM;
        int got = BIO_read(p->wbio, w->data, (int)chunk);
        if (got <= 0) {
            free(w);
            return UV_EIO;
        }
        uv_buf_t b = uv_buf_init(w->data, (unsigned)got);
        int r = uv_write(&w->req, (uv_stream_t *)&p->tcp, &b, 1, probe_on_write);
        if (r < 0) {
            free(w);
            return r;
        }
    }
    return 0;
}

static void probe_on_shutdown(uv_shutdown_t *req, int status)
{
    probe *p = req->data;
    if (status < 0 && status != UV_ECANCELED)
        probe_close(p);
}

/* The result is final: fill the cache, then end the connection (politely
 * after a handshake we took part in to the end), then tell the waiters.
 * Waiter callbacks may cancel other waiters, start checks or abort the loop;
 * p stays valid throughout because it is freed only in close callbacks. */
static void probe_finish(probe *p, bool ok, const char *reason, bool cacheable, bool polite)
{
    if (p->finished)
        return;
    p->finished = true;
    tls_probe_cache *c = p->cache;
    uint64_t now = now_ms();
    pthread_mutex_lock(&c->mu);
    running_remove(p);
    if (!ok)
        c->stats.failures++;
    if (cacheable)
        entry_put(c, &p->key, p->hash, ok, reason, now);
    pthread_mutex_unlock(&c->mu);

    uv_timer_stop(&p->timer);
    if (polite && p->connected && probe_flush(p) == 0 &&
        uv_shutdown(&p->shutdown, (uv_stream_t *)&p->tcp, probe_on_shutdown) == 0) {
        unsigned grace = c->cfg.timeout_ms < PROBE_GRACE_MS ? c->cfg.timeout_ms : PROBE_GRACE_MS;
        uv_timer_start(&p->timer, probe_on_timer, grace, 0);
    } else {
        probe_close(p);
    }

    tls_probe_req *r;
    while ((r = p->waiters) != NULL) {
        waiter_remove(r);
        r->cb(r->arg, ok, reason);
        free(r);
    }
}

static void probe_fail_uv(probe *p, const char *what, int err, bool polite)
{
    char reason[TLS_PROBE_REASON_LEN];
    snprintf(reason, sizeof reason, "%s: %s", what, uv_strerror(err));
    probe_finish(p, false, reason, !is_local_error(err), polite);
}

static void probe_on_write(uv_write_t *req, int status)
{
    probe_write *w = (probe_write *)req;
    probe *p = req->handle->data;
    free(w);
    if (status < 0 && status != UV_ECANCELED && !p->finished)
        probe_fail_uv(p, "probe-handshake", status, false);
}

static void probe_on_timer(uv_timer_t *t)
{
    probe *p = t->data;
    if (p->finished) {
        probe_close(p); /* the grace period for a polite close is over */
        return;
    }
    if (p->connect_error) {
        probe_fail_uv(p, "probe-connect", p->connect_error, false);
        return;
    }
    probe_finish(p, false, "probe-timeout", true, false);
}

/* Runs the handshake as far as the bytes received allow. */
static void probe_drive(probe *p)
{
    char reason[TLS_PROBE_REASON_LEN];
    ERR_clear_error();
    int r = SSL_do_handshake(p->ssl);
    if (r == 1) {
        long v = SSL_get_verify_result(p->ssl);
        if (v != X509_V_OK || SSL_get0_peer_certificate(p->ssl) == NULL) {
            tls_verify_reason(v, p->key.name, reason, sizeof reason);
            probe_finish(p, false, reason, true, true);
            return;
        }
        /* Queues close_notify; the server's is not waited for. */
        (void)SSL_shutdown(p->ssl);
        ERR_clear_error();
        probe_finish(p, true, "", true, true);
        return;
    }
    int e = SSL_get_error(p->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        int fr = probe_flush(p);
        if (fr < 0)
            probe_fail_uv(p, "probe-handshake", fr, false);
        return;
    }
    long v = SSL_get_verify_result(p->ssl);
    if (v != X509_V_OK) {
        tls_verify_reason(v, p->key.name, reason, sizeof reason);
    } else {
        unsigned long err = ERR_peek_last_error();
        const char *s = err ? ERR_reason_error_string(err) : NULL;
        if (s)
            snprintf(reason, sizeof reason, "probe-handshake: %s", s);
        else
            snprintf(reason, sizeof reason, "probe-handshake: error %d", e);
    }
    ERR_clear_error();
    /* Polite: OpenSSL queued an alert for the server. */
    probe_finish(p, false, reason, true, true);
}

static void probe_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    probe *p = h->data;
    *buf = uv_buf_init(p->rbuf, sizeof p->rbuf);
}

static void probe_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    probe *p = s->data;
    if (n == 0)
        return;
    if (p->finished) { /* draining after our close_notify or alert */
        if (n < 0)
            probe_close(p);
        return;
    }
    if (n == UV_EOF) {
        probe_finish(p, false, "probe-handshake: connection closed by server", true, false);
        return;
    }
    if (n < 0) {
        probe_fail_uv(p, "probe-handshake", (int)n, false);
        return;
    }
    if (BIO_write(p->rbio, buf->base, (int)n) != (int)n) {
        probe_finish(p, false, "probe-handshake: out of memory", false, false);
        return;
    }
    probe_drive(p);
}

static void probe_on_connect(uv_connect_t *req, int status)
{
    probe *p = req->data;
    if (p->finished)
        return; /* UV_ECANCELED from an abort */
    if (status < 0) {
        probe_fail_uv(p, "probe-connect", status, false);
        return;
    }
    p->connected = true;
    (void)uv_tcp_nodelay(&p->tcp, 1); /* the last flight and close_notify go at once */
    int r = uv_read_start((uv_stream_t *)&p->tcp, probe_on_alloc, probe_on_read);
    if (r < 0) {
        probe_fail_uv(p, "probe-handshake", r, false);
        return;
    }
    probe_drive(p);
}

static SSL *probe_ssl_new(tls_probe_cache *c, const probe_key *k, bool is_ip)
{
    SSL *ssl = SSL_new(c->ctx);
    if (!ssl)
        return NULL;
    BIO *rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(BIO_s_mem());
    if (!rbio || !wbio) {
        BIO_free(rbio);
        BIO_free(wbio);
        SSL_free(ssl);
        return NULL;
    }
    BIO_set_mem_eof_return(rbio, -1); /* empty means "more later", not EOF */
    SSL_set_bio(ssl, rbio, wbio);
    SSL_set_connect_state(ssl);
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    int good;
    if (is_ip)
        good = X509_VERIFY_PARAM_set1_ip_asc(param, k->name) == 1;
    else
        good = SSL_set_tlsext_host_name(ssl, k->name) == 1 && SSL_set1_host(ssl, k->name) == 1;
    if (!good) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    return ssl;
}

static int probe_start(tls_probe_cache *c, uv_loop_t *loop, const struct sockaddr *addr,
                       const probe_key *k, uint64_t h, bool is_ip, probe **out)
{
    probe *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->cache = c;
    p->loop = loop;
    p->key = *k;
    p->hash = h;
    p->wtail = &p->waiters;
    memcpy(&p->addr, addr,
           addr->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    p->ssl = probe_ssl_new(c, k, is_ip);
    if (!p->ssl) {
        free(p);
        return -ENOMEM;
    }
    p->rbio = SSL_get_rbio(p->ssl);
    p->wbio = SSL_get_wbio(p->ssl);

    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    p->handles_open = 1;
    int r = uv_tcp_init(loop, &p->tcp);
    if (r < 0) {
        probe_close(p);
        return r;
    }
    p->tcp.data = p;
    p->handles_open = 2;
    p->connect.data = p;
    p->shutdown.data = p;
    r = uv_tcp_connect(&p->connect, &p->tcp, (const struct sockaddr *)&p->addr, probe_on_connect);
    if (r < 0) {
        if (is_local_error(r)) {
            probe_close(p);
            return r;
        }
        /* The network's answer (unreachable, refused): reported, joined and
         * cached like an asynchronous one, from the timer. */
        p->connect_error = r;
    }

    pthread_mutex_lock(&c->mu);
    probe_link(c, p);
    c->stats.probes++;
    pthread_mutex_unlock(&c->mu);
    uv_timer_start(&p->timer, probe_on_timer, p->connect_error ? 0 : c->cfg.timeout_ms, 0);
    *out = p;
    return 0;
}

/* ---- public ---- */

tls_probe_cache *tls_probe_cache_new(tls_verify_store *store, const tls_probe_config *cfg)
{
    if (!store || !cfg)
        return NULL;
    X509_STORE *xs = tls_verify_store_x509(store);
    if (!xs)
        return NULL;
    tls_probe_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cfg = *cfg;
    if (c->cfg.timeout_ms == 0)
        c->cfg.timeout_ms = PROBE_DEFAULT_TIMEOUT_MS;
    if (c->cfg.max_running == 0)
        c->cfg.max_running = PROBE_DEFAULT_MAX_RUNNING;
    c->nbuckets = PROBE_MIN_BUCKETS;
    while (c->nbuckets < c->cfg.max_entries && c->nbuckets < PROBE_MAX_BUCKETS)
        c->nbuckets <<= 1;
    c->entries = calloc(c->nbuckets, sizeof *c->entries);
    c->running = calloc(c->nbuckets, sizeof *c->running);
    if (!c->entries || !c->running)
        goto fail;
    if (pthread_mutex_init(&c->mu, NULL) != 0)
        goto fail;

    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx)
        goto fail_mu;
    /* The probe asks one question, "does this server present a valid
     * certificate for this name", so any version from 1.2 up will do. */
    if (SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION) != 1)
        goto fail_ctx;
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_set1_verify_cert_store(c->ctx, xs) != 1) /* takes its own reference */
        goto fail_ctx;
    /* Every probe must see the full certificate: no resumption. */
    SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(c->ctx, SSL_OP_NO_TICKET);
    return c;

fail_ctx:
    SSL_CTX_free(c->ctx);
fail_mu:
    pthread_mutex_destroy(&c->mu);
fail:
    ERR_clear_error();
    free(c->running);
    free(c->entries);
    free(c);
    return NULL;
}

void tls_probe_cache_free(tls_probe_cache *c)
{
    if (!c)
        return;
    while (c->oldest)
        entry_remove(c, c->oldest);
    SSL_CTX_free(c->ctx);
    pthread_mutex_destroy(&c->mu);
    free(c->running);
    free(c->entries);
    free(c);
}

int tls_probe_check(tls_probe_cache *c, uv_loop_t *loop, const struct sockaddr *addr,
                    const char *name, tls_probe_cb cb, void *arg, bool *ok, char *reason,
                    size_t reasonlen, tls_probe_req **req)
{
    if (req)
        *req = NULL;
    if (!c || !loop || !addr || !name || !cb)
        return -EINVAL;
    probe_key k;
    bool is_ip;
    int r = key_make(&k, addr, name, &is_ip);
    if (r < 0)
        return r;
    uint64_t h = key_hash(&k);
    uint64_t now = now_ms();

    pthread_mutex_lock(&c->mu);
    probe_entry *e = entry_find(c, &k, h);
    if (e && e->expires_ms > now) {
        c->stats.hits++;
        if (ok)
            *ok = e->ok;
        set_reason(reason, reasonlen, e->reason);
        pthread_mutex_unlock(&c->mu);
        return 1;
    }
    if (e)
        entry_remove(c, e);
    c->stats.misses++;
    /* Only this thread finishes probes on this loop, so p stays valid
     * after the unlock. */
    probe *p = running_find(c, loop, &k, h);
    if (p)
        c->stats.coalesced++;
    /* A client naming ever new servers must not make the node open a
     * connection for each: past the bound, no new probe starts. */
    bool full = !p && c->nrunning >= c->cfg.max_running;
    if (full)
        c->stats.refused++;
    pthread_mutex_unlock(&c->mu);
    if (full)
        return -EBUSY;

    tls_probe_req *rq = calloc(1, sizeof *rq);
    if (!rq)
        return -ENOMEM;
    if (!p) {
        r = probe_start(c, loop, addr, &k, h, is_ip, &p);
        if (r < 0) {
            free(rq);
            return r;
        }
    }
    rq->cb = cb;
    rq->arg = arg;
    waiter_add(p, rq);
    if (req)
        *req = rq;
    return 0;
}

void tls_probe_cancel(tls_probe_req *req)
{
    if (!req)
        return;
    waiter_remove(req);
    free(req);
}

/* The header keeps loop non-const: the caller hands over a loop to shut down. */
/* cppcheck-suppress constParameter */
void tls_probe_abort_loop(tls_probe_cache *c, uv_loop_t *loop)
{
    if (!c || !loop)
        return;
    pthread_mutex_lock(&c->mu);
    for (probe *p = c->live; p; p = p->next) {
        /* A probe already closing may still be calling its waiters (abort
         * from inside a callback): those must not hear anything more. */
        if (p->loop != loop)
            continue;
        running_remove(p);
        p->finished = true;
        tls_probe_req *r;
        while ((r = p->waiters) != NULL) {
            waiter_remove(r);
            free(r);
        }
        probe_close(p); /* only schedules: no callback runs under the lock */
    }
    pthread_mutex_unlock(&c->mu);
}

void tls_probe_cache_stats(tls_probe_cache *c, tls_probe_stats *out)
{
    if (!c || !out)
        return;
    pthread_mutex_lock(&c->mu);
    *out = c->stats;
    out->entries = c->nentries;
    pthread_mutex_unlock(&c->mu);
}
