/* proxy.c - the conformance proxy's event loops: accept, classify, check the
 * policy, connect upstream and move bytes, on one libuv loop per thread.
 *
 * Each direction of a connection is a "half" with one buffer the socket reads
 * straight into. Three marks split it: [0, ok) is approved and is being
 * written to the other side, [ok, fed) has been consumed by the classifier
 * but not approved yet (a head in progress, or a unit whose policy check
 * waits on DNS, a connect or a certificate probe), [fed, len) has not been
 * fed yet. Nothing beyond ok ever reaches the other side, so a unit that
 * fails its check is never forwarded. A half whose write is in flight stops
 * reading its source (backpressure), and a buffer that is empty goes back to
 * the thread's pool, so an idle connection holds no buffer at all.
 */
#include "proxy.h"

#include "classify.h"
#include "http_classify.h"
#include "mms_classify.h"
#include "rtsp_classify.h"
#include "tls_classify.h"
#include "tls_probe.h"
#include "tls_verify.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define BUF_SIZE (64 * 1024)
/* A half may grow past BUF_SIZE only to hold one unit the classifier has not
 * finished (a certificate chain, a head); the classifiers bound those well
 * below this. */
#define BUF_MAX (160 * 1024)
#define POOL_MAX 64
#define LINGER_MS 2000

typedef struct conn conn;
typedef struct worker worker;

typedef enum { H_CONTINUE, H_WAIT, H_CLOSED } hresult;

typedef struct half {
    uint8_t *buf;
    size_t cap, len;
    size_t ok, fed;
    bool event_pending; /* the unit at [ok, fed) awaits its policy check */
    int ev;             /* its event (the classifier's own is reset by the
                           other direction's feeds) */
    bool waiting;       /* that check waits on something asynchronous */
    bool checked;       /* its policy checks ran (they run once per unit) */
    bool eof;           /* the source half-closed */
    bool finished;      /* the classifier was told (after the last unit) */
    bool shut;          /* the destination's write side was shut down */
    bool writing;       /* a uv_write of [0, wlen) is in flight */
    size_t wlen;
    uint64_t bytes;
    uv_write_t wreq;
} half;

struct conn {
    worker *w;
    conn *prev, *next;
    pc_policy *policy;
    const pc_group *group;
    uv_tcp_t client;
    uv_tcp_t *up;
    uv_timer_t timer;
    int open_handles;
    enum { ST_OPEN, ST_LINGER, ST_CLOSING } st;
    pc_proto proto; /* classifier now on the connection */
    const cls_ops *ops;
    void *cls;
    half h[2];
    struct sockaddr_storage src;
    struct sockaddr_storage dst; /* upstream (transparent: original dst) */
    bool have_dst;
    bool explicit_mode;
    bool tunnel; /* explicit CONNECT established */
    bool up_connected;
    bool connecting;
    bool first_done; /* first unit from the client approved */
    bool switch_pending;
    bool blocked;
    bool resp_open;        /* a response is on its way to the client */
    pc_proto tunnel_proto; /* explicit CONNECT: the port's protocol */
    char host[256];        /* the name the client asked for (CONNECT, Host, SNI) */
    uint16_t port;         /* destination port */
    char up_host[256];     /* authority the upstream connection is for */
    uint16_t up_port;
    uint64_t head_deadline, connect_deadline, last_activity;
    uint64_t timer_due;
    uv_getaddrinfo_t *gai;
    uv_connect_t *creq;
    tls_probe_req *probe;
    bool probe_ok;
};

struct worker {
    proxy *px;
    unsigned idx;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    uv_thread_t thread;
    int listen_fd;
    bool stopping;
    conn *conns;
    void *pool[POOL_MAX];
    int npool;
    uint64_t limit_logged_at;
    _Atomic uint64_t accepted, blocked, refused_limit, exceptions, bytes_up, bytes_down;
};

struct proxy {
    proxy_config cfg;
    char listen_str[80];
    struct sockaddr_storage listen_addr;
    pthread_mutex_t policy_lock;
    pc_policy *policy;
    ev_sink *events;
    tls_verify_store *store;
    tls_probe_cache *probe;
    _Atomic unsigned active;
    worker *workers;
    unsigned nworkers;
};

static void conn_close(conn *c);
static void pump(conn *c, cls_dir dir);
static void flush(conn *c, cls_dir dir);
static void update_reading(conn *c, cls_dir dir);
static void arm_timer(conn *c);
static void maybe_switch(conn *c);

/* ---- small helpers ---------------------------------------------------- */

static const char *proto_name(pc_proto p)
{
    return pc_proto_name(p);
}

static const cls_ops *ops_for(pc_proto p)
{
    switch (p) {
    case PC_PROTO_HTTP: return &http_cls_ops;
    case PC_PROTO_TLS: return &tls_cls_ops;
    case PC_PROTO_RTSP: return &rtsp_cls_ops;
    case PC_PROTO_MMS: return &mms_cls_ops;
    default: return NULL;
    }
}

static uv_stream_t *dest_of(conn *c, cls_dir dir)
{
    return dir == CLS_C2S ? (uv_stream_t *)c->up : (uv_stream_t *)&c->client;
}

static uv_stream_t *source_of(conn *c, cls_dir dir)
{
    return dir == CLS_C2S ? (uv_stream_t *)&c->client : (uv_stream_t *)c->up;
}

static void emit(conn *c, const char *type, const char *reason, const char *detail)
{
    pc_event e = {
        .type = type,
        .reason = reason,
        .detail = detail,
        .src = (const struct sockaddr *)&c->src,
        .dst_host = c->host,
        .dst_addr = c->have_dst ? (const struct sockaddr *)&c->dst : NULL,
        .port = c->port,
        .proto = proto_name(c->proto),
        .group = c->group ? pc_group_name(c->group) : NULL,
        .policy_version = c->policy ? pc_policy_version(c->policy) : 0,
        .bytes_up = c->h[CLS_C2S].bytes,
        .bytes_down = c->h[CLS_S2C].bytes,
    };
    ev_emit(c->w->px->events, &e);
}

/* The reason code of a classifier reason "code: detail". */
static void split_reason(const char *r, char *code, size_t codelen, const char **detail)
{
    const char *colon = strstr(r, ": ");
    size_t n = colon ? (size_t)(colon - r) : strlen(r);
    if (n >= codelen)
        n = codelen - 1;
    memcpy(code, r, n);
    code[n] = '\0';
    *detail = colon ? colon + 2 : NULL;
}

/* ---- buffers ------------------------------------------------------------ */

static void *pool_get(worker *w)
{
    if (w->npool > 0)
        return w->pool[--w->npool];
    return malloc(BUF_SIZE);
}

static void half_release(worker *w, half *h)
{
    if (!h->buf)
        return;
    if (h->cap == BUF_SIZE && w->npool < POOL_MAX)
        w->pool[w->npool++] = h->buf;
    else
        free(h->buf);
    h->buf = NULL;
    h->cap = h->len = h->ok = h->fed = 0;
}

/* Drops n written bytes from the front. */
static void half_consume(worker *w, half *h, size_t n)
{
    if (n == 0)
        return;
    memmove(h->buf, h->buf + n, h->len - n);
    h->len -= n;
    h->ok -= n;
    h->fed -= n;
    if (h->len == 0 && !h->writing)
        half_release(w, h);
}

/* Removes [from, to) from the buffer (a head the proxy consumed itself). */
static void half_cut(half *h, size_t from, size_t to)
{
    memmove(h->buf + from, h->buf + to, h->len - to);
    h->len -= to - from;
    if (h->fed >= to)
        h->fed -= to - from;
    else if (h->fed > from)
        h->fed = from;
}

/* ---- closing ------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *hd)
{
    conn *c = hd->data;
    if (hd != (uv_handle_t *)&c->client && hd != (uv_handle_t *)&c->timer)
        free(hd); /* the upstream handle */
    if (--c->open_handles > 0)
        return;
    worker *w = c->w;
    for (int d = 0; d < 2; d++)
        half_release(w, &c->h[d]);
    if (c->cls) {
        c->ops->release(c->cls);
        free(c->cls);
    }
    if (c->policy)
        pc_policy_unref(c->policy);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    atomic_fetch_sub(&w->px->active, 1);
    free(c);
}

static void close_up(conn *c)
{
    if (c->creq) {
        c->creq->data = NULL; /* its callback runs with UV_ECANCELED */
        c->creq = NULL;
    }
    if (c->gai) {
        uv_cancel((uv_req_t *)c->gai); /* its callback frees it */
        c->gai->data = NULL;
        c->gai = NULL;
    }
    if (c->up && !uv_is_closing((uv_handle_t *)c->up))
        uv_close((uv_handle_t *)c->up, on_handle_closed);
    c->up = NULL;
    c->up_connected = false;
    c->connecting = false;
    c->connect_deadline = 0;
    half *h = &c->h[CLS_S2C];
    h->eof = h->shut = h->event_pending = h->waiting = h->finished = false;
}

static void conn_close(conn *c)
{
    if (c->st == ST_CLOSING)
        return;
    c->st = ST_CLOSING;
    if (c->probe) {
        tls_probe_cancel(c->probe);
        c->probe = NULL;
    }
    if (c->policy && pc_policy_proxy(c->policy)->log_allowed && c->first_done && !c->blocked)
        emit(c, "allow", "closed", NULL);
    close_up(c);
    if (!uv_is_closing((uv_handle_t *)&c->client))
        uv_close((uv_handle_t *)&c->client, on_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

/* ---- blocking ------------------------------------------------------------ */

static void html_escape(const char *s, char *out, size_t outlen)
{
    size_t n = 0;
    for (; *s && n + 7 < outlen; s++) {
        const char *rep = NULL;
        switch (*s) {
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '&': rep = "&amp;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        default: break;
        }
        if (rep) {
            size_t l = strlen(rep);
            memcpy(out + n, rep, l);
            n += l;
        } else if ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f) {
            out[n++] = *s;
        } else {
            out[n++] = '?';
        }
    }
    out[n] = '\0';
}

static void on_linger_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = s->data;
    free(buf->base);
    if (nread < 0)
        conn_close(c);
}

static void linger_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    buf->base = malloc(4096);
    buf->len = buf->base ? 4096 : 0;
}

static void on_page_shutdown(uv_shutdown_t *req, int status)
{
    conn *c = req->data;
    free(req);
    if (status < 0 || c->st == ST_CLOSING) {
        conn_close(c);
        return;
    }
    /* Read and drop what the client still sends, so closing does not reset
     * the connection before the client has read the page. */
    uv_read_stop((uv_stream_t *)&c->client);
    if (uv_read_start((uv_stream_t *)&c->client, linger_alloc, on_linger_read) != 0)
        conn_close(c);
}

static void on_page_written(uv_write_t *req, int status)
{
    conn *c = req->data;
    free(req);
    if (status < 0 || c->st == ST_CLOSING) {
        conn_close(c);
        return;
    }
    uv_shutdown_t *sd = malloc(sizeof(*sd));
    if (!sd || uv_shutdown(sd, (uv_stream_t *)&c->client, on_page_shutdown) != 0) {
        free(sd);
        conn_close(c);
        return;
    }
    sd->data = c;
}

static void on_own_written(uv_write_t *req, int status)
{
    free(req);
}

/* Sends bytes the proxy itself produced to the client; cb must free req
 * (on_own_written does nothing else). */
static int send_to_client(conn *c, const char *data, size_t len, uv_write_cb cb)
{
    struct {
        uv_write_t req;
        char data[];
    } *m = malloc(sizeof(*m) + len);
    if (!m)
        return -1;
    memcpy(m->data, data, len);
    m->req.data = c;
    uv_buf_t b = uv_buf_init(m->data, (unsigned)len);
    if (uv_write(&m->req, (uv_stream_t *)&c->client, &b, 1, cb) != 0) {
        free(m);
        return -1;
    }
    return 0;
}

static void send_page(conn *c, int status, const char *reason, const char *detail)
{
    char esc_reason[128], esc_detail[600], body[1024], msg[2048];
    html_escape(reason, esc_reason, sizeof(esc_reason));
    html_escape(detail ? detail : "", esc_detail, sizeof(esc_detail));
    int bl = snprintf(body, sizeof(body),
                      "<!DOCTYPE html>\n<html><head><title>%d %s</title></head>"
                      "<body><h1>Blocked by Portcullis</h1>"
                      "<p>Reason: <code>%s</code></p><p>%s</p>"
                      "<p>Your IT department's policy does not allow this connection.</p>"
                      "</body></html>\n",
                      status, status == 403 ? "Forbidden" : "Bad Gateway", esc_reason, esc_detail);
    int ml = snprintf(msg, sizeof(msg),
                      "HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\n"
                      "Content-Length: %d\r\nCache-Control: no-store\r\nConnection: close\r\n"
                      "X-Portcullis-Reason: %s\r\n\r\n%s",
                      status, status == 403 ? "Forbidden" : "Bad Gateway", bl, esc_reason, body);
    c->st = ST_LINGER;
    close_up(c);
    uv_read_stop((uv_stream_t *)&c->client);
    c->head_deadline = 0;
    c->connect_deadline = 0;
    c->last_activity = uv_now(&c->w->loop);
    if (send_to_client(c, msg, (size_t)ml, on_page_written) != 0)
        conn_close(c);
    else
        arm_timer(c);
}

/* Whether a 403 page can still reach the client as an HTTP response: the
 * client speaks HTTP on this connection and no response is half-sent. */
static bool can_send_page(conn *c, cls_dir dir)
{
    if (c->proto != PC_PROTO_HTTP)
        return false;
    if (!c->cls)
        return true; /* explicit mode before a classifier switch */
    return !c->resp_open && http_classify_outstanding(c->cls) <= 1 && c->h[CLS_S2C].ok == 0 &&
           !c->h[CLS_S2C].writing;
}

/* Ends the connection with an event: a page with status for an HTTP client
 * that can still read one, otherwise a plain close. */
static hresult block_with(conn *c, cls_dir dir, int status, const char *reason, const char *detail)
{
    c->blocked = true;
    atomic_fetch_add_explicit(&c->w->blocked, 1, memory_order_relaxed);
    emit(c, "block", reason, detail);
    if (can_send_page(c, dir))
        send_page(c, status, reason, detail);
    else
        conn_close(c);
    return H_CLOSED;
}

static hresult block(conn *c, cls_dir dir, const char *reason, const char *detail)
{
    return block_with(c, dir, 403, reason, detail);
}

static void note_exception(conn *c, const pc_decision *d, const char *what)
{
    if (!d->exception)
        return;
    atomic_fetch_add_explicit(&c->w->exceptions, 1, memory_order_relaxed);
    char detail[512];
    snprintf(detail, sizeof(detail), "%s %s (list %s) allowed by the Skype exception", what,
             d->rule ? d->rule : "", d->list ? d->list : "");
    emit(c, "exception", "skype-exception", detail);
}

/* Runs a host check; returns H_CLOSED when it blocked. */
static hresult check_host(conn *c, cls_dir dir, const char *host, const char *what)
{
    if (!host || !host[0])
        return H_CONTINUE;
    pc_decision d = pc_group_check_host(c->group, host);
    if (d.block) {
        char detail[600];
        snprintf(detail, sizeof(detail), "%s %s matches %s (list %s)", what, host,
                 d.rule ? d.rule : "", d.list ? d.list : "");
        return block(c, dir, "blocked-domain", detail);
    }
    note_exception(c, &d, what);
    return H_CONTINUE;
}

static hresult check_path(conn *c, cls_dir dir, const char *path)
{
    if (!path || !path[0])
        return H_CONTINUE;
    pc_decision d = pc_group_check_path(c->group, path);
    if (d.block) {
        char detail[600];
        snprintf(detail, sizeof(detail), "path %.400s ends with %s (list %s)", path,
                 d.rule ? d.rule : "", d.list ? d.list : "");
        return block(c, dir, "blocked-url-suffix", detail);
    }
    note_exception(c, &d, "path");
    return H_CONTINUE;
}

static hresult check_addr(conn *c, cls_dir dir, const struct sockaddr *sa)
{
    pc_decision d = pc_group_check_addr(c->group, sa);
    if (d.block) {
        char detail[300];
        snprintf(detail, sizeof(detail), "address in %s (list %s)", d.rule ? d.rule : "",
                 d.list ? d.list : "");
        return block(c, dir, "blocked-prefix", detail);
    }
    note_exception(c, &d, "address");
    return H_CONTINUE;
}

/* ---- timers -------------------------------------------------------------- */

static uint64_t next_deadline(conn *c)
{
    const pc_proxy_settings *ps = pc_policy_proxy(c->policy);
    uint64_t due = c->last_activity + (c->st == ST_LINGER ? LINGER_MS : ps->idle_timeout_ms);
    if (c->head_deadline && c->head_deadline < due)
        due = c->head_deadline;
    if (c->connect_deadline && c->connect_deadline < due)
        due = c->connect_deadline;
    return due;
}

static void on_timer(uv_timer_t *t)
{
    conn *c = t->data;
    uint64_t now = uv_now(&c->w->loop);
    c->timer_due = 0;
    if (c->st == ST_LINGER) {
        if (now >= c->last_activity + LINGER_MS) {
            conn_close(c);
            return;
        }
    } else if (c->head_deadline && now >= c->head_deadline) {
        block(c, CLS_C2S, c->first_done ? "timeout-header" : "timeout-first-bytes",
              "the client did not complete its message in time");
        return;
    } else if (c->connect_deadline && now >= c->connect_deadline) {
        block(c, CLS_C2S, "upstream-timeout", c->up_host);
        return;
    } else if (now >= c->last_activity + pc_policy_proxy(c->policy)->idle_timeout_ms) {
        conn_close(c);
        return;
    }
    arm_timer(c);
}

static void arm_timer(conn *c)
{
    if (c->st == ST_CLOSING)
        return;
    uint64_t due = next_deadline(c);
    if (c->timer_due && c->timer_due <= due)
        return; /* an earlier firing re-computes */
    uint64_t now = uv_now(&c->w->loop);
    c->timer_due = due;
    uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
}

/* ---- upstream ------------------------------------------------------------ */

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf);

static void resume(conn *c, cls_dir dir)
{
    c->h[dir].waiting = false;
    pump(c, dir);
}

/* Puts proto's classifier (none for passthrough) on the connection, releasing
 * the one before. Returns 0, or -1 when out of memory. */
static int conn_set_proto(conn *c, pc_proto proto)
{
    if (c->cls) {
        c->ops->release(c->cls);
        free(c->cls);
        c->cls = NULL;
    }
    c->proto = proto;
    c->ops = ops_for(proto);
    if (!c->ops)
        return 0;
    c->cls = malloc(c->ops->state_size);
    if (!c->cls)
        return -1;
    c->ops->init(c->cls);
    return 0;
}

static void tunnel_established(conn *c)
{
    /* The CONNECT head was the proxy's own business: drop it, answer it and
     * put the port's classifier on the tunnel. */
    half *h = &c->h[CLS_C2S];
    half_cut(h, h->ok, h->fed);
    h->event_pending = false;
    h->fed = h->ok;
    if (h->len == 0 && !h->writing)
        half_release(c->w, h); /* an idle tunnel holds no buffer */
    if (conn_set_proto(c, c->tunnel_proto) != 0) {
        conn_close(c);
        return;
    }
    c->tunnel = true;
    if (c->ops) /* the tunnel's first unit (a ClientHello) must come in time */
        c->head_deadline = uv_now(&c->w->loop) + pc_policy_proxy(c->policy)->header_timeout_ms;
    else {
        c->first_done = true; /* passthrough: nothing to wait for */
        c->head_deadline = 0;
    }
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    if (send_to_client(c, ok, sizeof(ok) - 1, on_own_written) != 0) {
        conn_close(c);
        return;
    }
    c->h[CLS_S2C].bytes = 0;
    c->h[CLS_C2S].bytes = h->len;
}

static void on_connected(uv_connect_t *req, int status)
{
    conn *c = req->data;
    free(req);
    if (!c)
        return;
    c->creq = NULL;
    if (c->st != ST_OPEN)
        return;
    c->connecting = false;
    c->connect_deadline = 0;
    if (status < 0) {
        char detail[300];
        snprintf(detail, sizeof(detail), "%s port %u: %s", c->up_host, c->up_port,
                 uv_strerror(status));
        block_with(c, CLS_C2S, 502, "upstream-unreachable", detail);
        return;
    }
    c->up_connected = true;
    uv_tcp_nodelay(c->up, 1);
    if (c->explicit_mode && !c->tunnel && c->tunnel_proto != PC_PROTO_NONE) {
        tunnel_established(c);
        if (c->st != ST_OPEN)
            return;
    }
    update_reading(c, CLS_S2C);
    resume(c, CLS_C2S);
}

/* Connects upstream to sa; checked: its prefix was already checked. */
static void connect_addr(conn *c, const struct sockaddr *sa, bool checked)
{
    memcpy(&c->dst, sa,
           sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    c->have_dst = true;
    if (!checked && check_addr(c, CLS_C2S, sa) == H_CLOSED)
        return;
    c->up = malloc(sizeof(*c->up));
    c->creq = malloc(sizeof(*c->creq));
    if (!c->up || !c->creq || uv_tcp_init(&c->w->loop, c->up) != 0) {
        free(c->up);
        free(c->creq);
        c->up = NULL;
        c->creq = NULL;
        conn_close(c);
        return;
    }
    c->up->data = c;
    c->open_handles++;
    c->creq->data = c;
    int rc = uv_tcp_connect(c->creq, c->up, sa, on_connected);
    if (rc != 0) {
        free(c->creq);
        c->creq = NULL;
        char detail[300];
        snprintf(detail, sizeof(detail), "%s: %s", c->up_host, uv_strerror(rc));
        block_with(c, CLS_C2S, 502, "upstream-unreachable", detail);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    conn *c = req->data;
    free(req);
    if (!c) {
        uv_freeaddrinfo(res);
        return;
    }
    c->gai = NULL;
    if (c->st != ST_OPEN) {
        uv_freeaddrinfo(res);
        return;
    }
    if (status < 0 || !res) {
        char detail[300];
        snprintf(detail, sizeof(detail), "%s: %s", c->up_host, uv_strerror(status));
        c->connecting = false;
        c->connect_deadline = 0;
        uv_freeaddrinfo(res);
        block_with(c, CLS_C2S, 502, "dns-failure", detail);
        return;
    }
    /* Every address the name resolves to is checked: a name that leads into
     * a blocked prefix is blocked whichever address would be used. */
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        pc_decision d = pc_group_check_addr(c->group, ai->ai_addr);
        if (d.block) {
            memcpy(&c->dst, ai->ai_addr, ai->ai_addrlen);
            c->have_dst = true;
            uv_freeaddrinfo(res);
            char detail[300];
            snprintf(detail, sizeof(detail), "address in %s (list %s)", d.rule ? d.rule : "",
                     d.list ? d.list : "");
            block(c, CLS_C2S, "blocked-prefix", detail);
            return;
        }
    }
    struct sockaddr_storage sa;
    memcpy(&sa, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    connect_addr(c, (struct sockaddr *)&sa, true);
}

/* Starts connecting upstream to host:port (a name or an address literal). */
static void connect_start(conn *c, const char *host, uint16_t port)
{
    snprintf(c->up_host, sizeof(c->up_host), "%s", host);
    c->up_port = port;
    c->connecting = true;
    c->connect_deadline = uv_now(&c->w->loop) + pc_policy_proxy(c->policy)->connect_timeout_ms;
    arm_timer(c);
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof(sa));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&sa) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&sa) == 0) {
        connect_addr(c, (struct sockaddr *)&sa, false);
        return;
    }
    c->gai = malloc(sizeof(*c->gai));
    if (!c->gai) {
        conn_close(c);
        return;
    }
    c->gai->data = c;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = uv_getaddrinfo(&c->w->loop, c->gai, on_resolved, host, portstr, &hints);
    if (rc != 0) {
        free(c->gai);
        c->gai = NULL;
        block_with(c, CLS_C2S, 502, "dns-failure", uv_strerror(rc));
    }
}

/* Connects to the original destination (transparent mode) once. */
static hresult ensure_upstream(conn *c)
{
    if (c->up_connected)
        return H_CONTINUE;
    if (!c->connecting) {
        char addr[INET6_ADDRSTRLEN] = "";
        const struct sockaddr *sa = (const struct sockaddr *)&c->dst;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof(addr));
        else
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, sizeof(addr));
        snprintf(c->up_host, sizeof(c->up_host), "%s", addr);
        c->up_port = c->port;
        c->connecting = true;
        c->connect_deadline = uv_now(&c->w->loop) + pc_policy_proxy(c->policy)->connect_timeout_ms;
        arm_timer(c);
        struct sockaddr_storage copy = c->dst;
        connect_addr(c, (struct sockaddr *)&copy, true); /* checked at accept */
        if (c->st != ST_OPEN)
            return H_CLOSED;
    }
    return H_WAIT;
}

/* ---- policy checks per event --------------------------------------------- */

/* Rewrites an absolute-form request line to origin-form in place. */
static void rewrite_request_line(conn *c, const http_request_info *r)
{
    half *h = &c->h[CLS_C2S];
    uint8_t *start = h->buf + h->ok;
    uint8_t *eol = memchr(start, '\n', h->fed - h->ok);
    if (!eol)
        return;
    char line[HTTP_MAX_LINE + 64];
    int n = snprintf(line, sizeof(line), "%s %s HTTP/1.%d\r", r->method, r->origin,
                     r->version == 10 ? 0 : 1);
    size_t old = (size_t)(eol - start);
    if (n < 0 || (size_t)n > old)
        return; /* origin-form is never longer; keep the original if it were */
    memcpy(start, line, (size_t)n);
    half_cut(h, h->ok + (size_t)n, h->ok + old);
}

static hresult on_http_request(conn *c, const http_request_info *r)
{
    if (!r)
        return block(c, CLS_C2S, "proxy-state", "request facts missing");
    if (c->explicit_mode && !c->tunnel) {
        if (r->form == HTTP_FORM_AUTHORITY) {
            if (c->up) /* CONNECT after plain requests on the same connection */
                return block(c, CLS_C2S, "proxy-connect-reuse",
                             "CONNECT must be the first request on a connection");
            c->port = r->port;
            snprintf(c->host, sizeof(c->host), "%s", r->host);
            pc_proto p = pc_policy_port_proto(c->policy, r->port);
            if (p == PC_PROTO_NONE) {
                char detail[64];
                snprintf(detail, sizeof(detail), "CONNECT to port %u", r->port);
                return block(c, CLS_C2S, "port-not-allowed", detail);
            }
            if (check_host(c, CLS_C2S, r->host, "CONNECT host") == H_CLOSED)
                return H_CLOSED;
            c->tunnel_proto = p; /* set up once connected */
            if (c->connecting || c->up_connected)
                return H_WAIT;
            connect_start(c, r->host, r->port);
            return c->st == ST_OPEN ? H_WAIT : H_CLOSED;
        }
        if (r->form != HTTP_FORM_ABSOLUTE)
            return block(c, CLS_C2S, "proxy-origin-form",
                         "a request to the proxy must name its URL in absolute form");
        uint16_t port = r->port ? r->port : 80;
        if (pc_policy_port_proto(c->policy, port) != PC_PROTO_HTTP) {
            char detail[64];
            snprintf(detail, sizeof(detail), "HTTP to port %u", port);
            return block(c, CLS_C2S, "port-not-allowed", detail);
        }
        if (!c->h[CLS_C2S].checked) {
            snprintf(c->host, sizeof(c->host), "%s", r->host);
            c->port = port;
            if (check_host(c, CLS_C2S, r->host, "host") == H_CLOSED ||
                check_path(c, CLS_C2S, r->path) == H_CLOSED)
                return H_CLOSED;
            rewrite_request_line(c, r);
            c->h[CLS_C2S].checked = true;
        }
        if (c->up_connected && strcmp(c->up_host, c->host) == 0 && c->up_port == port)
            return H_CONTINUE;
        if (c->connecting)
            return H_WAIT;
        if (c->up) {
            /* Another origin: wait for the responses in flight, then switch. */
            const half *s2c = &c->h[CLS_S2C];
            if (http_classify_outstanding(c->cls) > 1 || s2c->len != 0 || s2c->writing) {
                c->switch_pending = true;
                update_reading(c, CLS_C2S);
                return H_WAIT;
            }
            c->switch_pending = false;
            close_up(c);
            half_release(c->w, &c->h[CLS_S2C]);
        }
        connect_start(c, c->host, port);
        return c->st == ST_OPEN ? H_WAIT : H_CLOSED;
    }

    /* Transparent mode or inside a tunnel: origin-form to the destination. */
    if (r->form == HTTP_FORM_AUTHORITY)
        return block(c, CLS_C2S, "http-connect-not-proxy", "CONNECT sent to an origin server");
    if (!c->h[CLS_C2S].checked) {
        if (r->host[0])
            snprintf(c->host, sizeof(c->host), "%s", r->host);
        if (check_host(c, CLS_C2S, r->host, "host") == H_CLOSED ||
            check_path(c, CLS_C2S, r->path) == H_CLOSED)
            return H_CLOSED;
        c->h[CLS_C2S].checked = true;
    }
    return ensure_upstream(c);
}

static hresult on_http_response(conn *c, const http_response_info *r)
{
    if (!r)
        return block(c, CLS_S2C, "proxy-state", "response facts missing");
    pc_decision d = pc_group_check_download(c->group, r->content_type, r->disposition_filename,
                                            r->body_starts_mz);
    if (d.block) {
        char detail[600];
        snprintf(detail, sizeof(detail), "content-type '%s' file '%s'%s: rule %s", r->content_type,
                 r->disposition_filename, r->body_starts_mz ? " body starts with MZ" : "",
                 d.rule ? d.rule : "");
        return block(c, CLS_S2C, "executable-download", detail);
    }
    note_exception(c, &d, "download");
    return H_CONTINUE;
}

static void on_probe_done(void *arg, bool ok, const char *reason)
{
    conn *c = arg;
    c->probe = NULL;
    if (c->st != ST_OPEN)
        return;
    if (!ok) {
        block(c, CLS_S2C, "tls-certificate", reason);
        return;
    }
    c->probe_ok = true; /* not looked up again: the cache entry may be gone */
    resume(c, CLS_S2C);
}

/* The name a server's certificate must be valid for: the SNI, else the
 * CONNECT host, else the address connected to (an IP address SAN). */
static const char *tls_name(conn *c, const tls_info *ti, char *buf, size_t buflen)
{
    if (ti->sni[0])
        return ti->sni;
    if (c->host[0])
        return c->host;
    const struct sockaddr *sa = (const struct sockaddr *)&c->dst;
    buf[0] = '\0';
    inet_ntop(sa->sa_family,
              sa->sa_family == AF_INET
                  ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                  : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr,
              buf, (socklen_t)buflen);
    return buf;
}

static hresult on_tls_server_hello(conn *c, const tls_info *ti)
{
    /* TLS <= 1.2 sends its Certificate message in the clear and it is checked
     * when it arrives; TLS 1.3 encrypts it, and a resumed TLS 1.2 session
     * sends none (a client and server could fake a resumption to skip it):
     * for both the node verifies the server itself. */
    if (ti->version != 0x0304 && !ti->resumed && !ti->maybe_resumed)
        return H_CONTINUE;
    pc_cert_mode mode = pc_group_cert_mode(c->group);
    if (mode != PC_CERT_REQUIRED)
        return H_CONTINUE; /* the exception: no probe (docs/proxy.md) */
    if (c->probe_ok)
        return H_CONTINUE;
    if (c->probe)
        return H_WAIT;
    bool ok = false;
    char reason[300] = "", addrname[INET6_ADDRSTRLEN];
    const char *name = tls_name(c, ti, addrname, sizeof(addrname));
    int rc = tls_probe_check(c->w->px->probe, &c->w->loop, (const struct sockaddr *)&c->dst, name,
                             on_probe_done, c, &ok, reason, sizeof(reason), &c->probe);
    if (rc == 1) {
        if (ok)
            return H_CONTINUE;
        return block(c, CLS_S2C, "tls-certificate", reason);
    }
    if (rc == -EBUSY)
        return block(c, CLS_S2C, "tls-certificate",
                     "probe-busy: too many servers are being verified at once");
    if (rc < 0)
        return block(c, CLS_S2C, "tls-certificate", "probe-start: the probe could not start");
    return H_WAIT;
}

static hresult on_tls_certificate(conn *c)
{
    const tls_info *ti = tls_classify_info(c->cls);
    const uint8_t *const *der;
    const size_t *der_len;
    size_t n = tls_classify_chain(c->cls, &der, &der_len);
    char reason[300] = "", names[1024] = "", addrname[INET6_ADDRSTRLEN];
    const char *name = tls_name(c, ti, addrname, sizeof(addrname));
    int rc = tls_verify_chain(c->w->px->store, der, der_len, n, name, reason, sizeof(reason), names,
                              sizeof(names));
    /* The names the certificate is for count as much as the SNI. */
    char *save = NULL;
    for (char *nm = strtok_r(names, ",", &save); nm; nm = strtok_r(NULL, ",", &save)) {
        while (*nm == ' ')
            nm++;
        const char *label = nm[0] == '*' && nm[1] == '.' ? nm + 2 : nm;
        if (check_host(c, CLS_S2C, label, "certificate name") == H_CLOSED)
            return H_CLOSED;
    }
    if (rc == 0)
        return H_CONTINUE;
    switch (pc_group_cert_mode(c->group)) {
    case PC_CERT_REQUIRED: return block(c, CLS_S2C, "tls-certificate", reason);
    case PC_CERT_EXEMPT: {
        pc_decision d = {.exception = true, .list = "certificate", .rule = reason};
        note_exception(c, &d, "certificate");
        return H_CONTINUE;
    }
    case PC_CERT_OFF: break;
    }
    return H_CONTINUE;
}

static hresult on_event(conn *c, cls_dir dir, int ev)
{
    switch (c->proto) {
    case PC_PROTO_HTTP:
        if (ev == HTTP_EV_REQUEST_HEAD && dir == CLS_C2S)
            return on_http_request(c, http_classify_request(c->cls));
        if (ev == HTTP_EV_RESPONSE_HEAD && dir == CLS_S2C) {
            hresult r = on_http_response(c, http_classify_response(c->cls));
            const http_response_info *ri = http_classify_response(c->cls);
            if (r == H_CONTINUE && !ri->interim)
                c->resp_open = !ri->complete;
            return r;
        }
        if (ev == HTTP_EV_MESSAGE_END && dir == CLS_S2C)
            c->resp_open = false;
        return H_CONTINUE;
    case PC_PROTO_TLS: {
        const tls_info *ti = tls_classify_info(c->cls);
        if (ev == TLS_EV_CLIENT_HELLO) {
            if (!c->h[CLS_C2S].checked) {
                if (ti->sni[0] && !c->host[0])
                    snprintf(c->host, sizeof(c->host), "%s", ti->sni);
                if (check_host(c, CLS_C2S, ti->sni, "server name") == H_CLOSED)
                    return H_CLOSED;
                c->h[CLS_C2S].checked = true;
            }
            return ensure_upstream(c);
        }
        if (ev == TLS_EV_SERVER_HELLO)
            return on_tls_server_hello(c, ti);
        if (ev == TLS_EV_CERTIFICATE)
            return on_tls_certificate(c);
        return H_CONTINUE;
    }
    case PC_PROTO_RTSP:
        if (ev == RTSP_EV_REQUEST) {
            const rtsp_request_info *r = rtsp_classify_request(c->cls);
            if (!c->h[dir].checked) {
                if (dir == CLS_C2S && r->host[0])
                    snprintf(c->host, sizeof(c->host), "%s", r->host);
                if (check_host(c, dir, r->host, "host") == H_CLOSED ||
                    check_path(c, dir, r->path) == H_CLOSED)
                    return H_CLOSED;
                c->h[dir].checked = true;
            }
        }
        return dir == CLS_C2S ? ensure_upstream(c) : H_CONTINUE;
    case PC_PROTO_MMS: return dir == CLS_C2S ? ensure_upstream(c) : H_CONTINUE;
    default: return H_CONTINUE;
    }
}

/* ---- moving bytes ---------------------------------------------------------- */

static void block_violation(conn *c, cls_dir dir)
{
    char code[64];
    const char *detail;
    split_reason(c->ops->reason(c->cls), code, sizeof(code), &detail);
    block(c, dir, code, detail);
}

/* The HTTP classifier follows at most HTTP_MAX_PIPELINE requests at once; a
 * client with more in flight is slowed down (not fed, not read), not blocked. */
static bool pipeline_full(const conn *c, cls_dir dir)
{
    return dir == CLS_C2S && c->proto == PC_PROTO_HTTP && c->cls &&
           http_classify_outstanding(c->cls) >= HTTP_MAX_PIPELINE;
}

static void pump(conn *c, cls_dir dir)
{
    half *h = &c->h[dir];
    for (;;) {
        while (c->st == ST_OPEN && !h->waiting) {
            if (h->event_pending) {
                hresult r = on_event(c, dir, h->ev);
                if (r == H_CLOSED || c->st != ST_OPEN)
                    return;
                if (r == H_WAIT) {
                    h->waiting = true;
                    break;
                }
                h->event_pending = false;
                h->checked = false;
                h->ok = h->fed;
                if (dir == CLS_C2S)
                    c->first_done = true;
                continue;
            }
            if (h->fed == h->len || pipeline_full(c, dir))
                break;
            if (!c->ops) { /* passthrough */
                h->ok = h->fed = h->len;
                break;
            }
            size_t used = 0;
            cls_verdict v = c->ops->feed(c->cls, dir, h->buf + h->fed, h->len - h->fed, &used);
            h->fed += used;
            if (v == CLS_VIOLATES) {
                block_violation(c, dir);
                return;
            }
            if (v == CLS_CONFORMS) {
                h->ev = c->ops->event(c->cls);
                if (h->ev != CLS_EV_NONE) {
                    h->event_pending = true;
                    continue;
                }
                h->ok = h->fed;
            }
        }
        if (c->st != ST_OPEN)
            return;
        if (!h->eof || h->finished || h->event_pending || h->waiting || h->fed != h->len)
            break;
        /* The classifier hears of the end only after every unit before it was
         * checked (its facts stay valid for those checks). The end may itself
         * complete a unit (a close-delimited response): check that too. */
        h->finished = true;
        if (!c->ops)
            break;
        if (c->ops->finish(c->cls, dir) == CLS_VIOLATES) {
            block_violation(c, dir);
            return;
        }
        h->ev = c->ops->event(c->cls);
        if (h->ev == CLS_EV_NONE) {
            h->ok = h->fed;
            break;
        }
        h->event_pending = true;
    }
    if (dir == CLS_C2S) {
        /* Slowloris: a unit the client has started must finish in time; time
         * the proxy itself waits (DNS, connect, an origin switch) does not
         * count. */
        bool partial = !h->event_pending && (h->fed > h->ok || !c->first_done);
        if (partial && !c->head_deadline) {
            c->head_deadline = uv_now(&c->w->loop) + pc_policy_proxy(c->policy)->header_timeout_ms;
            arm_timer(c);
        } else if (!partial) {
            c->head_deadline = 0;
        }
    }
    flush(c, dir);
    if (dir == CLS_S2C && c->st == ST_OPEN) {
        maybe_switch(c);
        half *up = &c->h[CLS_C2S];
        if (c->st == ST_OPEN && c->proto == PC_PROTO_HTTP && !pipeline_full(c, CLS_C2S)) {
            /* Requests held back by the pipeline depth: feed what is buffered
             * and read the client again. */
            if (!up->waiting && !up->event_pending && up->fed < up->len)
                pump(c, CLS_C2S);
            else
                update_reading(c, CLS_C2S);
        }
    }
}

/* Explicit mode: a request for another origin waits until the responses
 * before it have reached the client; then its check runs again and opens the
 * new upstream connection. */
static void maybe_switch(conn *c)
{
    const half *s2c = &c->h[CLS_S2C];
    if (c->st != ST_OPEN || !c->switch_pending || s2c->len != 0 || s2c->writing ||
        http_classify_outstanding(c->cls) > 1)
        return;
    c->switch_pending = false;
    resume(c, CLS_C2S);
}

static void on_write_done(uv_write_t *req, int status)
{
    conn *c = req->data;
    cls_dir dir = req == &c->h[CLS_C2S].wreq ? CLS_C2S : CLS_S2C;
    half *h = &c->h[dir];
    h->writing = false;
    if (c->st != ST_OPEN)
        return; /* closing, or lingering after a page: cancelled writes too */
    if (status < 0) {
        conn_close(c);
        return;
    }
    half_consume(c->w, h, h->wlen);
    if (h->len == 0)
        half_release(c->w, h);
    flush(c, dir);
    if (c->st == ST_OPEN && h->fed < h->len && !h->waiting)
        pump(c, dir);
    if (dir == CLS_S2C)
        maybe_switch(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn *c = req->data;
    free(req);
    if (c->st != ST_OPEN)
        return;
    if (c->h[CLS_C2S].shut && c->h[CLS_S2C].shut)
        conn_close(c);
}

static void flush(conn *c, cls_dir dir)
{
    half *h = &c->h[dir];
    uv_stream_t *dst = dest_of(c, dir);
    if (c->st != ST_OPEN || h->writing)
        return;
    if (dir == CLS_C2S && !c->up_connected) {
        update_reading(c, dir);
        return;
    }
    if (h->ok > 0) {
        uv_buf_t b = uv_buf_init((char *)h->buf, (unsigned)h->ok);
        int n = uv_try_write(dst, &b, 1);
        if (n < 0 && n != UV_EAGAIN) {
            conn_close(c);
            return;
        }
        size_t wrote = n > 0 ? (size_t)n : 0;
        half_consume(c->w, h, wrote);
        if (h->ok > 0) {
            h->wlen = h->ok;
            h->wreq.data = c;
            b = uv_buf_init((char *)h->buf, (unsigned)h->ok);
            if (uv_write(&h->wreq, dst, &b, 1, on_write_done) != 0) {
                conn_close(c);
                return;
            }
            h->writing = true;
        }
    }
    if (!h->writing && h->eof && h->len == 0 && !h->shut) {
        h->shut = true;
        uv_shutdown_t *sd = malloc(sizeof(*sd));
        if (!sd || uv_shutdown(sd, dst, on_shutdown) != 0) {
            free(sd);
            conn_close(c);
            return;
        }
        sd->data = c;
    }
    update_reading(c, dir);
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* A half grows past its first buffer only while everything in it is one unit
 * the classifier has not finished; otherwise a full buffer stops reading. */
static bool half_may_grow(const half *h)
{
    return !h->buf || (h->cap < BUF_MAX && h->ok == 0 && h->fed == h->len && !h->event_pending);
}

static void update_reading(conn *c, cls_dir dir)
{
    if (c->st != ST_OPEN)
        return;
    half *h = &c->h[dir];
    uv_stream_t *src = source_of(c, dir);
    if (!src || (dir == CLS_S2C && !c->up_connected))
        return;
    bool want = !h->writing && !h->eof && !(dir == CLS_C2S && c->switch_pending) &&
                !pipeline_full(c, dir) && (h->len < h->cap || half_may_grow(h));
    if (want && !uv_is_active((uv_handle_t *)src))
        uv_read_start(src, on_alloc, dir == CLS_C2S ? on_client_read : on_up_read);
    else if (!want && uv_is_active((uv_handle_t *)src))
        uv_read_stop(src);
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    conn *c = hd->data;
    half *h = &c->h[hd == (uv_handle_t *)&c->client ? CLS_C2S : CLS_S2C];
    if (!h->buf) {
        h->buf = pool_get(c->w);
        h->cap = h->buf ? BUF_SIZE : 0;
        h->len = h->ok = h->fed = 0;
    } else if (h->len == h->cap && half_may_grow(h)) {
        size_t ncap = h->cap * 2 > BUF_MAX ? BUF_MAX : h->cap * 2;
        uint8_t *nb = realloc(h->buf, ncap);
        if (nb) {
            h->buf = nb;
            h->cap = ncap;
        }
    }
    buf->base = h->buf ? (char *)h->buf + h->len : NULL;
    buf->len = h->buf ? h->cap - h->len : 0;
}

static void on_read(conn *c, cls_dir dir, ssize_t nread)
{
    half *h = &c->h[dir];
    if (c->st != ST_OPEN)
        return;
    if (nread > 0) {
        h->len += (size_t)nread;
        h->bytes += (uint64_t)nread;
        atomic_fetch_add_explicit(dir == CLS_C2S ? &c->w->bytes_up : &c->w->bytes_down,
                                  (uint64_t)nread, memory_order_relaxed);
        c->last_activity = uv_now(&c->w->loop);
        pump(c, dir);
        if (c->st == ST_OPEN && h->len == BUF_MAX && h->ok == 0 && h->fed == h->len &&
            !h->event_pending)
            block(c, dir, "unit-too-large", "a message or handshake exceeds the proxy's buffer");
        return;
    }
    if (nread == 0) {
        if (h->len == 0)
            half_release(c->w, h);
        return;
    }
    if (nread != UV_EOF) {
        conn_close(c);
        return;
    }
    h->eof = true;
    uv_read_stop(source_of(c, dir));
    if (dir == CLS_C2S && !c->up_connected && !c->connecting && !h->event_pending) {
        /* The client left before anything was sent upstream. */
        if (h->len > h->fed || h->fed > h->ok)
            pump(c, dir); /* a cut-off unit is still a violation */
        if (c->st == ST_OPEN)
            conn_close(c);
        return;
    }
    pump(c, dir);
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    on_read(s->data, CLS_C2S, nread);
}

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    on_read(s->data, CLS_S2C, nread);
}

/* ---- accepting ----------------------------------------------------------- */

static pc_policy *current_policy(proxy *px)
{
    pthread_mutex_lock(&px->policy_lock);
    pc_policy *p = pc_policy_ref(px->policy);
    pthread_mutex_unlock(&px->policy_lock);
    return p;
}

static int original_dst(uv_tcp_t *t, struct sockaddr_storage *out)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)t, &fd) != 0)
        return -1;
    socklen_t len = sizeof(*out);
    memset(out, 0, sizeof(*out));
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &len) == 0)
        return 0;
    len = sizeof(*out);
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &len) == 0)
        return 0;
    return -1;
}

static uint16_t sa_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return 0;
}

static void on_accept(uv_stream_t *server, int status)
{
    worker *w = server->data;
    proxy *px = w->px;
    if (status < 0)
        return;
    conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->w = w;
    uv_tcp_init(&w->loop, &c->client);
    c->client.data = c;
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    atomic_fetch_add(&px->active, 1);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->client) != 0) {
        c->st = ST_CLOSING;
        uv_close((uv_handle_t *)&c->client, on_handle_closed);
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
        return;
    }
    atomic_fetch_add_explicit(&w->accepted, 1, memory_order_relaxed);
    c->policy = current_policy(px);
    const pc_proxy_settings *ps = pc_policy_proxy(c->policy);
    int len = sizeof(c->src);
    uv_tcp_getpeername(&c->client, (struct sockaddr *)&c->src, &len);
    c->group = pc_policy_group_for(c->policy, (struct sockaddr *)&c->src);
    c->last_activity = uv_now(&w->loop);

    if (atomic_load(&px->active) > ps->max_connections) {
        atomic_fetch_add_explicit(&w->refused_limit, 1, memory_order_relaxed);
        uint64_t now = uv_now(&w->loop);
        if (now - w->limit_logged_at >= 1000 || w->limit_logged_at == 0) {
            /* At most one event a second per thread: a flood must not flood
             * the log as well. */
            w->limit_logged_at = now;
            emit(c, "block", "connection-limit",
                 "too many connections; further refusals this second are counted only");
        }
        c->blocked = true;
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->client, 1);

    if (px->cfg.transparent) {
        if (original_dst(&c->client, &c->dst) != 0) {
            c->proto = PC_PROTO_NONE;
            block(c, CLS_C2S, "no-original-destination",
                  "transparent mode needs connections redirected by the firewall");
            return;
        }
        struct sockaddr_storage local;
        int ll = sizeof(local);
        if (uv_tcp_getsockname(&c->client, (struct sockaddr *)&local, &ll) == 0 &&
            sa_port((struct sockaddr *)&local) == sa_port((struct sockaddr *)&c->dst) &&
            memcmp(&local, &c->dst, (size_t)ll) == 0) {
            /* Not redirected: the client connected to the proxy itself. */
            c->proto = PC_PROTO_NONE;
            block(c, CLS_C2S, "no-original-destination",
                  "transparent mode needs connections redirected by the firewall");
            return;
        }
        c->have_dst = true;
        c->port = sa_port((struct sockaddr *)&c->dst);
        c->proto = pc_policy_port_proto(c->policy, c->port);
        if (c->proto == PC_PROTO_NONE) {
            char detail[64];
            snprintf(detail, sizeof(detail), "port %u", c->port);
            block(c, CLS_C2S, "port-not-allowed", detail);
            return;
        }
        if (check_addr(c, CLS_C2S, (struct sockaddr *)&c->dst) == H_CLOSED)
            return;
    } else {
        c->explicit_mode = true;
        c->proto = PC_PROTO_HTTP;
    }
    if (conn_set_proto(c, c->proto) != 0) {
        conn_close(c);
        return;
    }
    c->head_deadline = c->last_activity + ps->header_timeout_ms;
    arm_timer(c);
    if (!c->ops) {
        /* Passthrough: connect at once, relay without classification. */
        struct sockaddr_storage copy = c->dst;
        c->first_done = true;
        c->head_deadline = 0;
        c->connecting = true;
        c->connect_deadline = c->last_activity + ps->connect_timeout_ms;
        connect_addr(c, (struct sockaddr *)&copy, true);
        if (c->st != ST_OPEN)
            return;
    }
    update_reading(c, CLS_C2S);
}

/* ---- threads ------------------------------------------------------------- */

static void on_stop(uv_async_t *a)
{
    worker *w = a->data;
    w->stopping = true;
    uv_close((uv_handle_t *)&w->listener, NULL);
    uv_close((uv_handle_t *)&w->stop, NULL);
    for (conn *c = w->conns; c; c = c->next)
        conn_close(c); /* cancels each connection's probe request first */
    if (w->px->probe)
        tls_probe_abort_loop(w->px->probe, &w->loop);
}

static void worker_main(void *arg)
{
    worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

static int parse_listen(const char *s, struct sockaddr_storage *out, char *err, size_t errlen)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s) {
        snprintf(err, errlen, "--listen '%s': expected HOST:PORT", s);
        return -1;
    }
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[' && hl >= 2 && s[hl - 1] == ']') {
        s++;
        hl -= 2;
    }
    if (hl >= sizeof(host)) {
        snprintf(err, errlen, "--listen: host too long");
        return -1;
    }
    memcpy(host, s, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || colon[1] == '\0') {
        snprintf(err, errlen, "--listen: '%s' is not a port", colon + 1);
        return -1;
    }
    memset(out, 0, sizeof(*out));
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) != 0 &&
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) != 0) {
        snprintf(err, errlen, "--listen: '%s' is not an IP address", host);
        return -1;
    }
    return 0;
}

static int bind_reuseport(const struct sockaddr *sa, char *err, size_t errlen)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, sa,
             sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                       : sizeof(struct sockaddr_in)) != 0) {
        snprintf(err, errlen, "bind: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int proxy_start(proxy **out, const proxy_config *cfg, pc_policy *policy, ev_sink *events, char *err,
                size_t errlen)
{
    proxy *px = calloc(1, sizeof(*px));
    if (!px) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    px->cfg = *cfg;
    px->events = events;
    pthread_mutex_init(&px->policy_lock, NULL);
    px->policy = pc_policy_ref(policy);
    const pc_proxy_settings *ps = pc_policy_proxy(policy);
    px->store = tls_verify_store_new(ps->ca_file, err, errlen);
    if (!px->store)
        goto fail;
    tls_probe_config pcfg = {.ttl_ok_s = ps->probe_ttl_s,
                             .ttl_fail_s = ps->probe_fail_ttl_s,
                             .timeout_ms = ps->probe_timeout_ms,
                             .max_entries = 10000};
    px->probe = tls_probe_cache_new(px->store, &pcfg);
    if (!px->probe) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (parse_listen(cfg->listen, &px->listen_addr, err, errlen) != 0)
        goto fail;

    unsigned n = cfg->threads;
    if (n == 0) {
        uv_cpu_info_t *ci;
        int count = 0;
        n = uv_cpu_info(&ci, &count) == 0 && count > 0 ? (unsigned)count : 1;
        if (count > 0)
            uv_free_cpu_info(ci, count);
    }
    px->workers = calloc(n, sizeof(*px->workers));
    if (!px->workers) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Bind every socket before any thread starts, so a bad address fails
     * here; with port 0 the first bind picks the port the others share. */
    for (unsigned i = 0; i < n; i++) {
        worker *w = &px->workers[i];
        w->px = px;
        w->idx = i;
        w->listen_fd = bind_reuseport((struct sockaddr *)&px->listen_addr, err, errlen);
        if (w->listen_fd < 0)
            goto fail_workers;
        px->nworkers = i + 1;
        if (i == 0) {
            socklen_t sl = sizeof(px->listen_addr);
            getsockname(w->listen_fd, (struct sockaddr *)&px->listen_addr, &sl);
        }
        if (listen(w->listen_fd, 1024) != 0) {
            snprintf(err, errlen, "listen: %s", strerror(errno));
            goto fail_workers;
        }
    }
    char host[INET6_ADDRSTRLEN];
    const struct sockaddr *la = (const struct sockaddr *)&px->listen_addr;
    if (la->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)la)->sin6_addr, host, sizeof(host));
        snprintf(px->listen_str, sizeof(px->listen_str), "[%s]:%u", host, sa_port(la));
    } else {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)la)->sin_addr, host, sizeof(host));
        snprintf(px->listen_str, sizeof(px->listen_str), "%s:%u", host, sa_port(la));
    }
    for (unsigned i = 0; i < n; i++) {
        worker *w = &px->workers[i];
        uv_loop_init(&w->loop);
        uv_tcp_init(&w->loop, &w->listener);
        w->listener.data = w;
        uv_async_init(&w->loop, &w->stop, on_stop);
        w->stop.data = w;
        if (uv_tcp_open(&w->listener, w->listen_fd) != 0 ||
            uv_listen((uv_stream_t *)&w->listener, 1024, on_accept) != 0) {
            snprintf(err, errlen, "listen on %s failed", px->listen_str);
            goto fail_workers;
        }
    }
    for (unsigned i = 0; i < n; i++)
        uv_thread_create(&px->workers[i].thread, worker_main, &px->workers[i]);
    *out = px;
    return 0;

fail_workers:
    for (unsigned i = 0; i < px->nworkers; i++)
        if (px->workers[i].listen_fd >= 0)
            close(px->workers[i].listen_fd);
fail:
    free(px->workers);
    if (px->probe)
        tls_probe_cache_free(px->probe);
    if (px->store)
        tls_verify_store_free(px->store);
    pc_policy_unref(px->policy);
    pthread_mutex_destroy(&px->policy_lock);
    free(px);
    return -1;
}

const char *proxy_listen_address(const proxy *p)
{
    return p->listen_str;
}

void proxy_set_policy(proxy *p, pc_policy *policy)
{
    pc_policy *nw = pc_policy_ref(policy);
    pthread_mutex_lock(&p->policy_lock);
    pc_policy *old = p->policy;
    p->policy = nw;
    pthread_mutex_unlock(&p->policy_lock);
    pc_policy_unref(old);
}

void proxy_stop(proxy *p)
{
    for (unsigned i = 0; i < p->nworkers; i++)
        uv_async_send(&p->workers[i].stop);
    for (unsigned i = 0; i < p->nworkers; i++) {
        worker *w = &p->workers[i];
        uv_thread_join(&w->thread);
        uv_run(&w->loop, UV_RUN_DEFAULT); /* close callbacks still pending */
        uv_loop_close(&w->loop);
        for (int k = 0; k < w->npool; k++)
            free(w->pool[k]);
    }
    free(p->workers);
    tls_probe_cache_free(p->probe);
    tls_verify_store_free(p->store);
    pc_policy_unref(p->policy);
    pthread_mutex_destroy(&p->policy_lock);
    free(p);
}

void proxy_get_stats(proxy *p, proxy_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->active = atomic_load(&p->active);
    for (unsigned i = 0; i < p->nworkers; i++) {
        worker *w = &p->workers[i];
        out->accepted += atomic_load(&w->accepted);
        out->blocked += atomic_load(&w->blocked);
        out->refused_limit += atomic_load(&w->refused_limit);
        out->exceptions += atomic_load(&w->exceptions);
        out->bytes_up += atomic_load(&w->bytes_up);
        out->bytes_down += atomic_load(&w->bytes_down);
    }
}
