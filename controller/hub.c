/* hub.c - the node hub (hub.h, docs/link.md): one libwebsockets server
 * thread owns every connection; a writer thread stores what nodes send
 * (store_link_apply, many ops per transaction) and prunes old events; a
 * compiler thread turns the released (and canary) revision into one document
 * per office. The threads talk through two locked queues: work for the
 * writer, and an inbox the lws thread drains when lws_cancel_service wakes
 * it (results, a new document table, kicks).
 *
 * Credit (docs/link.md, "Sequence and pacing"): every connected node holds a
 * small standing grant so it can ship a first few events without asking; a
 * node that uses up its grant (or says hello with a spool to flush) is
 * "hungry" and is topped up to its target, which doubles with each grant it
 * uses up, to PCW_EVENTS_MAX, when the global budget (events granted but not
 * received, plus events received but not stored) allows, else it waits its
 * turn in a FIFO. Grants are added to what the node holds. A node that sends less
 * than it holds has emptied its spool, and one that leaves a grant unused
 * for 2 s has nothing to send; the rest of its grant moves out of the budget
 * (to "slack") so it does not keep the others waiting. Should nodes spend
 * slack at once and the events held pass the budget, no connection is read
 * until the writer has stored half of them (rx_valve).
 */
#include "hub.h"

#include "compiler.h"
#include "enroll.h"
#include "pc_pki.h"
#include "pc_wire.h"
#include "store.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <libwebsockets.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

_Static_assert(PCW_PRE >= LWS_PRE, "pc_wire frames must leave room for the lws header");

#define HUB_DEFAULT_MAX_NODES 10000u
#define HUB_DEFAULT_PING_S 30u
#define HUB_DEFAULT_BUDGET 25000u
#define HUB_HELLO_TIMEOUT_MS 30000
#define HUB_CHECK_MS 5000         /* compiler's fallback check */
#define HUB_PRUNE_MS 60000        /* retention */
#define HUB_PRUNE_LIMIT 10000u    /* rows per prune call */
#define HUB_WRITE_OPS 512         /* ops per transaction */
#define HUB_WRITE_EVENTS 10000    /* events per transaction (parsed at once) */
#define HUB_TXQ_MAX 256           /* frames queued to one node before we give up on it */
#define HUB_FLOOD_WINDOW_MS 10000 /* non-event messages allowed per window */
#define HUB_FLOOD_MAX 100
#define HUB_SEEN_MS 30000   /* last_seen is written at most this often */
#define HUB_IDLE_MAX 100    /* the standing grant is at most this */
#define HUB_DORMANT_MS 2000 /* a grant unused this long goes to the slack pool */
#define HUB_RX_CHUNK 16384  /* lws rx buffer (one per connection); frames arrive in pieces */
#define HUB_RX_KEEP 65536   /* receive buffers above this are freed after use */
#define HUB_KNOWN_MAX 1024  /* (version, sha256) pairs remembered as sent */
#define HUB_CLOSE_GRACE_S 5

enum {
    CLOSE_BAD_MESSAGE = 4001,
    CLOSE_REFUSED = 4003,
    CLOSE_CREDIT = 4008,
    CLOSE_REPLACED = 4009,
};

/* --- small helpers ------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hub_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void hub_log(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "portcullis-controller: hub: %s\n", line);
}

/* Absolute CLOCK_REALTIME deadline ms from now, for pthread_cond_timedwait. */
static struct timespec deadline_in(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Copies src into dst (cap bytes), cut at a UTF-8 character boundary: a
 * close reason must stay valid UTF-8. */
static void copy_cut(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static int64_t json_i64(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

/* --- frames shared between connections ----------------------------------- */

/* A built frame with a reference count: a policy frame is queued to every
 * node of an office without a copy. Counted on the lws thread only. */
typedef struct oframe {
    unsigned refs;
    pcw_frame f;
} oframe;

/* Takes *f. NULL (and *f freed) when memory runs out. */
static oframe *oframe_new(pcw_frame *f)
{
    oframe *o = malloc(sizeof(*o));
    if (!o) {
        pcw_frame_free(f);
        return NULL;
    }
    o->refs = 1;
    o->f = *f;
    memset(f, 0, sizeof(*f));
    return o;
}

static oframe *oframe_ref(oframe *o)
{
    o->refs++;
    return o;
}

static void oframe_unref(oframe *o)
{
    if (o && --o->refs == 0) {
        pcw_frame_free(&o->f);
        free(o);
    }
}

/* --- the document table the compiler hands over --------------------------- */

typedef struct tdoc {
    int64_t office_id, version;
    char sha256[65];
    oframe *frame; /* the policy message */
} tdoc;

typedef struct tnode {
    int64_t node_id, office_id;
} tnode;

/* Immutable once handed to the lws thread. */
typedef struct ptable {
    int64_t released, canary;
    tdoc *docs; /* by office_id */
    size_t ndocs;
    tnode *nodes; /* by node_id */
    size_t nnodes;
} ptable;

static void ptable_free(ptable *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->ndocs; i++)
        oframe_unref(t->docs[i].frame);
    free(t->docs);
    free(t->nodes);
    free(t);
}

static const tdoc *ptable_doc(const ptable *t, int64_t office_id)
{
    size_t lo = 0, hi = t ? t->ndocs : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->docs[mid].office_id == office_id)
            return &t->docs[mid];
        if (t->docs[mid].office_id < office_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* The node's office per the table; 0 when the table does not list it. */
static int64_t ptable_office(const ptable *t, int64_t node_id)
{
    size_t lo = 0, hi = t ? t->nnodes : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->nodes[mid].node_id == node_id)
            return t->nodes[mid].office_id;
        if (t->nodes[mid].node_id < node_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* --- work for the writer, and its results ----------------------------------- */

typedef struct witem {
    struct witem *next;
    store_link_op op;
    cJSON *root;   /* EVENTS: the message (parsed once, by pcw_parse) op.events is in */
    char *text;    /* the string op points to (node, software, stats, last_error) */
    uint64_t conn; /* EVENTS: the connection that sent them */
    int64_t nevents;
} witem;

static void witem_free(witem *w)
{
    if (!w)
        return;
    cJSON_Delete(w->root);
    free(w->text);
    free(w);
}

typedef struct kick {
    struct kick *next;
    int64_t node_id;
} kick;

/* --- connections ---------------------------------------------------------- */

typedef enum {
    C_WAIT_HELLO = 0,
    C_READY,
    C_CLOSING,
} conn_state;

typedef struct txnode {
    struct txnode *next;
    oframe *o;
} txnode;

typedef struct nstate nstate;

typedef struct conn {
    struct conn *prev, *next; /* every connection */
    struct lws *wsi;
    uint64_t id;
    conn_state state;
    bool identified; /* passed the certificate check; nodes map points here */
    char peer[64];
    char cn[65];
    int64_t node_id, office_id;
    nstate *ns;
    /* receiving */
    char *rx;
    size_t rxlen, rxcap;
    bool rx_binary;
    /* sending */
    txnode *txh, *txt;
    size_t ntx;
    oframe *policy_out;
    int close_code;
    char close_reason[124];
    /* policy state as last recorded */
    char sent_sha[65]; /* sent, or reported in hello: the node has (or had) it */
    int64_t enforced, pending;
    char *last_error;
    /* credit: what the node holds; slack is the part of it counted in the
     * slack pool instead of the budget */
    int64_t credit, slack, high_seq;
    int64_t target;        /* what a hungry node is topped up to; doubles with use */
    int64_t credit_active; /* monotonic ms of its last grant or batch */
    bool hungry, queued;
    struct conn *qprev, *qnext;
    /* times (monotonic ms) */
    int64_t since, last_rx, last_ping, seen_posted, flood_start;
    unsigned flood_n;
} conn;

/* What the hub remembers of a node across its connections. */
struct nstate {
    int64_t node_id;
    conn *c;           /* its current connection */
    int64_t high_seq;  /* newest stored seq we know of */
    bool db_connected; /* a HELLO was recorded and no GONE since */
};

/* Open-addressing map node_id -> nstate (entries live as long as the hub). */
typedef struct nmap {
    nstate **slots;
    size_t cap, n;
} nmap;

typedef struct known {
    int64_t version;
    char sha256[65];
} known;

typedef struct http_pss {
    char *body;
    size_t len, cap;
    bool post, enroll, too_large, close;
    char *resp; /* JSON body to write */
    size_t resp_len;
} http_pss;

typedef struct ws_pss {
    conn *c;
} ws_pss;

struct hub {
    hub_options o;
    char *listen_copy;
    unsigned max_nodes, ping_s, budget;
    uint16_t port;
    struct lws_context *ctx;
    atomic_bool stopping;
    store *ls, *ws, *cs; /* the lws thread's, the writer's, the compiler's */
    pthread_t lws_thread, writer_thread, compiler_thread;
    bool lws_started, writer_started, compiler_started;
    bool locks_ready;

    /* lws thread only */
    conn *conns;
    size_t nconns;
    uint64_t next_conn_id;
    nmap nodes;
    ptable *table;
    known known[HUB_KNOWN_MAX];
    size_t nknown, known_next;
    conn *qh, *qt;
    int64_t credit_total, held, idle_credit, big_credit;
    int64_t slack_total;
    bool rx_paused; /* held > budget: no connection is read until it drains */
    lws_sorted_usec_list_t tick;

    /* inbox of the lws thread */
    pthread_mutex_t in_lock;
    bool ctx_alive; /* lws_cancel_service may be called */
    witem *in_res, *in_res_tail;
    ptable *in_table;
    kick *in_kicks;

    /* called by the writer after events were stored (hub_set_stored_listener);
     * guarded by in_lock */
    void (*stored_fn)(void *arg);
    void *stored_arg;

    /* writer */
    pthread_mutex_t w_lock;
    pthread_cond_t w_cond;
    witem *wq, *wq_tail;
    bool w_stop;
    store_link_op *w_ops;

    /* compiler */
    pthread_mutex_t c_lock;
    pthread_cond_t c_cond;
    bool c_dirty, c_stop;

    /* counters */
    atomic_uint_fast64_t connected, refused, bad_messages, events_received, events_stored,
        events_held, policies_sent, acks_applied, acks_failed, enrollments, enrollments_refused;
};

/* --- node map --------------------------------------------------------------- */

static size_t nmap_slot(const nmap *m, int64_t id)
{
    uint64_t x = (uint64_t)id * UINT64_C(0x9E3779B97F4A7C15);
    size_t i = (size_t)(x >> 17) & (m->cap - 1);
    while (m->slots[i] && m->slots[i]->node_id != id)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static nstate *nmap_find(const nmap *m, int64_t id)
{
    if (!m->cap)
        return NULL;
    return m->slots[nmap_slot(m, id)];
}

static nstate *nmap_get(nmap *m, int64_t id)
{
    nstate *s = nmap_find(m, id);
    if (s)
        return s;
    if ((m->n + 1) * 2 > m->cap) {
        nmap bigger = {.cap = m->cap ? m->cap * 2 : 64};
        bigger.slots = calloc(bigger.cap, sizeof(*bigger.slots));
        if (!bigger.slots)
            return NULL;
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i])
                bigger.slots[nmap_slot(&bigger, m->slots[i]->node_id)] = m->slots[i];
        bigger.n = m->n;
        free(m->slots);
        *m = bigger;
    }
    if (!(s = calloc(1, sizeof(*s))))
        return NULL;
    s->node_id = id;
    m->slots[nmap_slot(m, id)] = s;
    m->n++;
    return s;
}

static void nmap_free(nmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i]);
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

/* --- posting between threads ------------------------------------------------ */

static void wake_lws(hub *h)
{
    /* with in_lock held */
    if (h->ctx_alive)
        lws_cancel_service(h->ctx);
}

static void post_result(hub *h, witem *w)
{
    pthread_mutex_lock(&h->in_lock);
    w->next = NULL;
    if (h->in_res_tail)
        h->in_res_tail->next = w;
    else
        h->in_res = w;
    h->in_res_tail = w;
    wake_lws(h);
    pthread_mutex_unlock(&h->in_lock);
}

static void post_table(hub *h, ptable *t)
{
    pthread_mutex_lock(&h->in_lock);
    ptable_free(h->in_table); /* an older one nobody took yet */
    h->in_table = t;
    wake_lws(h);
    pthread_mutex_unlock(&h->in_lock);
}

/* Hands w to the writer (taken). */
static void writer_push(hub *h, witem *w)
{
    pthread_mutex_lock(&h->w_lock);
    w->next = NULL;
    if (h->wq_tail)
        h->wq_tail->next = w;
    else
        h->wq = w;
    h->wq_tail = w;
    pthread_cond_signal(&h->w_cond);
    pthread_mutex_unlock(&h->w_lock);
}

/* A writer op for node c; text (may be NULL) is duplicated. NULL when memory
 * runs out (the op is then lost: logged). */
static witem *witem_new(store_link_kind kind, int64_t node_id, const char *text)
{
    witem *w = calloc(1, sizeof(*w));
    if (!w || (text && !(w->text = strdup(text)))) {
        free(w);
        hub_log("out of memory recording node %" PRId64, node_id);
        return NULL;
    }
    w->op.kind = kind;
    w->op.node_id = node_id;
    w->op.time_ms = now_ms();
    return w;
}

static void record_versions(hub *h, conn *c)
{
    witem *w = witem_new(STORE_LINK_VERSIONS, c->node_id, c->last_error);
    if (!w)
        return;
    w->op.enforced = c->enforced;
    w->op.pending = c->pending;
    w->op.last_error = w->text;
    writer_push(h, w);
}

static void record_simple(hub *h, conn *c, store_link_kind kind)
{
    witem *w = witem_new(kind, c->node_id, NULL);
    if (w)
        writer_push(h, w);
}

/* --- sending and closing (lws thread) ----------------------------------------- */

static void conn_want_write(hub *h, conn *c)
{
    /* Not while the context is being destroyed: its connections are closing. */
    if (c->wsi && !atomic_load(&h->stopping))
        lws_callback_on_writable(c->wsi);
}

/* Queues o (a reference is taken). */
static void conn_send(hub *h, conn *c, oframe *o)
{
    txnode *t;
    if (!o)
        return;
    if (c->ntx >= HUB_TXQ_MAX) {
        if (c->state != C_CLOSING)
            hub_log("node '%s' (%s) does not read what it is sent; dropping it", c->cn, c->peer);
        c->state = C_CLOSING;
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    if (!(t = malloc(sizeof(*t)))) {
        hub_log("out of memory sending to node '%s'", c->cn);
        return;
    }
    t->next = NULL;
    t->o = oframe_ref(o);
    if (c->txt)
        c->txt->next = t;
    else
        c->txh = t;
    c->txt = t;
    c->ntx++;
    conn_want_write(h, c);
}

/* Builds with the pcw builder result and queues it. */
static void conn_send_built(hub *h, conn *c, int built, pcw_frame *f)
{
    oframe *o;
    if (built != 0) {
        hub_log("out of memory building a message for node '%s'", c->cn);
        return;
    }
    if (!(o = oframe_new(f)))
        return;
    conn_send(h, c, o);
    oframe_unref(o);
}

static void send_events_ack(hub *h, conn *c, int64_t grant)
{
    pcw_frame f;
    conn_send_built(h, c, pcw_build_events_ack(&f, c->high_seq, grant), &f);
}

static void send_ping(hub *h, conn *c)
{
    pcw_frame f;
    conn_send_built(h, c, pcw_build_ping(&f, now_ms()), &f);
    c->last_ping = mono_ms();
}

static void queue_remove(hub *h, conn *c);

/* Closes c with code and reason after what is queued has gone out. */
static void conn_close(hub *h, conn *c, int code, const char *reason)
{
    if (c->close_code)
        return;
    c->state = C_CLOSING;
    c->close_code = code;
    copy_cut(c->close_reason, sizeof(c->close_reason), reason);
    oframe_unref(c->policy_out);
    c->policy_out = NULL;
    queue_remove(h, c);
    conn_want_write(h, c);
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, HUB_CLOSE_GRACE_S);
}

/* Answers a bad message: error frame, count, log, close (code). */
static void conn_fail(hub *h, conn *c, int code, const char *ecode, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void conn_fail(hub *h, conn *c, int code, const char *ecode, const char *fmt, ...)
{
    char msg[1024];
    pcw_frame f;
    va_list ap;
    if (c->state == C_CLOSING)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    atomic_fetch_add(&h->bad_messages, 1);
    hub_log("node '%s' (%s): %s: %s; closing (%d)", c->cn[0] ? c->cn : "?", c->peer, ecode, msg,
            code);
    conn_send_built(h, c, pcw_build_error(&f, ecode, msg), &f);
    conn_close(h, c, code, msg);
}

/* --- credit (lws thread) ------------------------------------------------------ */

static int64_t credit_free(const hub *h)
{
    return (int64_t)h->budget - h->credit_total - h->held;
}

static void credit_add(hub *h, conn *c, int64_t g)
{
    c->credit += g;
    h->credit_total += g;
    c->credit_active = mono_ms();
}

/* n events arrived on c's credit: they are held now. What came out of its
 * slack was not in the budget, so the budget may be overdrawn (rx_valve). */
static void credit_use(hub *h, conn *c, int64_t n)
{
    int64_t from_slack = n < c->slack ? n : c->slack;
    c->slack -= from_slack;
    h->slack_total -= from_slack;
    c->credit -= n;
    h->credit_total -= n - from_slack;
    h->held += n;
    c->credit_active = mono_ms();
}

/* c sent less than it held (its spool is empty), or has not used its grant
 * for a while: the rest may go unused for long. Beyond its standing grant it
 * stops counting against the budget, which then serves nodes that have
 * events now. */
static void credit_park(hub *h, conn *c)
{
    int64_t mv = c->credit - c->slack - h->idle_credit;
    if (mv <= 0)
        return;
    c->slack += mv;
    h->slack_total += mv;
    h->credit_total -= mv;
}

/* The hard bound on events in memory: slack grants are not in the budget,
 * so when nodes spend them at once the held events may pass it; then no
 * connection is read (TCP pushes back on the nodes) until the writer has
 * stored half of them. */
static void rx_valve(hub *h)
{
    bool pause = h->held > (int64_t)h->budget, resume = h->held <= (int64_t)h->budget / 2;
    if ((pause && h->rx_paused) || (!pause && !(h->rx_paused && resume)))
        return;
    h->rx_paused = pause;
    for (conn *c = h->conns; c; c = c->next)
        if (c->wsi && c->state == C_READY)
            lws_rx_flow_control(c->wsi, pause ? 0 : 1);
}

static void queue_push(hub *h, conn *c)
{
    if (c->queued)
        return;
    c->queued = true;
    c->qnext = NULL;
    c->qprev = h->qt;
    if (h->qt)
        h->qt->qnext = c;
    else
        h->qh = c;
    h->qt = c;
}

static void queue_remove(hub *h, conn *c)
{
    if (!c->queued)
        return;
    if (c->qprev)
        c->qprev->qnext = c->qnext;
    else
        h->qh = c->qnext;
    if (c->qnext)
        c->qnext->qprev = c->qprev;
    else
        h->qt = c->qprev;
    c->queued = false;
    c->qprev = c->qnext = NULL;
}

/* What to grant c now (already added to its credit). A node that is not
 * hungry is topped up to the standing grant (a reserve outside the budget's
 * turns); a hungry one gets its target from the budget, or waits its turn in
 * the FIFO holding what it has (a trickle of standing grants meanwhile would
 * only cost round trips). */
static int64_t credit_grant(hub *h, conn *c)
{
    int64_t g = 0;
    if (c->state != C_READY)
        return 0;
    if (!c->hungry) {
        if (c->credit < h->idle_credit) {
            g = h->idle_credit - c->credit;
            credit_add(h, c, g);
        }
        return g;
    }
    int64_t want = c->target - c->credit;
    if (want <= 0 || c->queued)
        return 0;
    if (!h->qh && credit_free(h) >= want) {
        credit_add(h, c, want);
        return want;
    }
    queue_push(h, c);
    return 0;
}

/* Serves the FIFO while the budget allows. */
static void credit_pump(hub *h)
{
    if (atomic_load(&h->stopping))
        return;
    while (h->qh) {
        conn *c = h->qh;
        int64_t want = c->target - c->credit;
        if (want <= 0 || c->state != C_READY) {
            queue_remove(h, c);
            continue;
        }
        if (credit_free(h) < want)
            break;
        queue_remove(h, c);
        credit_add(h, c, want);
        send_events_ack(h, c, want);
    }
}

/* --- policy push (lws thread) ------------------------------------------------- */

static bool known_has(const hub *h, int64_t version, const char *sha)
{
    for (size_t i = 0; i < h->nknown; i++)
        if (h->known[i].version == version && strcmp(h->known[i].sha256, sha) == 0)
            return true;
    return false;
}

static void known_add(hub *h, int64_t version, const char *sha)
{
    if (known_has(h, version, sha))
        return;
    h->known[h->known_next].version = version;
    snprintf(h->known[h->known_next].sha256, sizeof(h->known[0].sha256), "%s", sha);
    h->known_next = (h->known_next + 1) % HUB_KNOWN_MAX;
    if (h->nknown < HUB_KNOWN_MAX)
        h->nknown++;
}

static const tdoc *conn_doc(const hub *h, const conn *c)
{
    return ptable_doc(h->table, c->office_id);
}

/* Sends c its office's document if it differs from what it has; returns
 * whether it did (the caller records the versions). */
static bool push_if_needed(hub *h, conn *c)
{
    const tdoc *d = conn_doc(h, c);
    if (!d || !d->frame || strcmp(d->sha256, c->sent_sha) == 0)
        return false;
    oframe_unref(c->policy_out);
    c->policy_out = oframe_ref(d->frame);
    conn_want_write(h, c);
    snprintf(c->sent_sha, sizeof(c->sent_sha), "%s", d->sha256);
    c->pending = d->version;
    known_add(h, d->version, d->sha256);
    atomic_fetch_add(&h->policies_sent, 1);
    return true;
}

static void install_table(hub *h, ptable *t)
{
    ptable_free(h->table);
    h->table = t;
    for (conn *c = h->conns; c; c = c->next) {
        if (!c->identified || c->state == C_CLOSING)
            continue;
        int64_t office = ptable_office(t, c->node_id);
        if (office)
            c->office_id = office;
        if (c->state == C_READY && push_if_needed(h, c))
            record_versions(h, c);
    }
    /* The nodes not connected now get it when they are: until then the
     * store shows it as pending for them. */
    for (size_t i = 0; i < t->ndocs; i++) {
        witem *w = witem_new(STORE_LINK_OFFICE_PENDING, 0, NULL);
        if (!w)
            break;
        w->op.office_id = t->docs[i].office_id;
        w->op.pending = t->docs[i].version;
        writer_push(h, w);
    }
}

/* --- messages from a node (lws thread) ------------------------------------------ */

static void set_last_error(conn *c, const char *e)
{
    free(c->last_error);
    c->last_error = e ? strdup(e) : NULL;
}

static void on_hello(hub *h, conn *c, const pcw_msg *m)
{
    cJSON *row = NULL;
    const tdoc *d;
    witem *w;
    if (c->state != C_WAIT_HELLO) {
        conn_fail(h, c, CLOSE_BAD_MESSAGE, "wrong-state", "hello was already received");
        return;
    }
    if (strcmp(m->u.hello.node, c->cn) != 0) {
        conn_fail(h, c, CLOSE_BAD_MESSAGE, "identity",
                  "$.node: '%s' is not the node of this certificate ('%s')", m->u.hello.node,
                  c->cn);
        return;
    }
    /* What the store says now: its enforced version and error stand unless
     * this hello proves otherwise. A read; WAL readers do not wait. */
    if (store_object_get(h->ls, STORE_NODE, c->node_id, &row) == STORE_OK) {
        const cJSON *le = cJSON_GetObjectItemCaseSensitive(row, "last_error");
        c->enforced = json_i64(row, "enforced_version");
        set_last_error(c, cJSON_IsString(le) ? le->valuestring : NULL);
    }
    cJSON_Delete(row);
    d = conn_doc(h, c);
    c->sent_sha[0] = '\0';
    if (m->u.hello.has_policy) {
        int64_t v = m->u.hello.policy_version;
        const char *sha = m->u.hello.policy_sha256;
        if ((d && d->version == v && strcmp(d->sha256, sha) == 0) || known_has(h, v, sha))
            c->enforced = v;
        snprintf(c->sent_sha, sizeof(c->sent_sha), "%s", sha);
    }
    c->pending = 0;
    c->state = C_READY;
    bool pushed = push_if_needed(h, c);
    if (m->u.hello.has_reverted) {
        char e[512];
        snprintf(e, sizeof(e), "reverted to version %" PRId64 ": %s", m->u.hello.reverted_version,
                 m->u.hello.reverted_reason);
        set_last_error(c, e);
    } else if (!pushed && d && strcmp(d->sha256, c->sent_sha) == 0) {
        set_last_error(c, NULL); /* it runs its office's document */
    }
    if ((w = witem_new(STORE_LINK_HELLO, c->node_id, m->u.hello.software))) {
        w->op.software = w->text;
        writer_push(h, w);
        c->ns->db_connected = true;
    }
    c->seen_posted = mono_ms();
    record_versions(h, c);
    char pol[32] = "built-in";
    if (m->u.hello.has_policy)
        snprintf(pol, sizeof(pol), "version %" PRId64, m->u.hello.policy_version);
    hub_log("node '%s' connected from %s (%s, policy %s)%s", c->cn, c->peer, m->u.hello.software,
            pol, pushed ? "; sending its document" : "");
    /* A spool to flush gets a full grant at once; otherwise grants start at
     * the standing one and double as they are used up, so a node is rarely
     * left holding much it does not need. */
    c->hungry = m->u.hello.pending > 0;
    c->target = c->hungry ? h->big_credit : h->idle_credit;
    send_events_ack(h, c, credit_grant(h, c));
    send_ping(h, c);
}

static void on_ack(hub *h, conn *c, const pcw_msg *m)
{
    int64_t v = m->u.ack.version;
    if (m->u.ack.applied) {
        c->enforced = v;
        if (v >= c->pending)
            c->pending = 0;
        set_last_error(c, NULL);
        atomic_fetch_add(&h->acks_applied, 1);
    } else {
        char e[1200];
        if (v >= c->pending)
            c->pending = 0;
        snprintf(e, sizeof(e), "version %" PRId64 " failed: %s", v,
                 m->u.ack.error ? m->u.ack.error : "no reason given");
        set_last_error(c, e);
        atomic_fetch_add(&h->acks_failed, 1);
        hub_log("node '%s' failed to apply version %" PRId64 ": %s", c->cn, v,
                m->u.ack.error ? m->u.ack.error : "no reason given");
    }
    record_versions(h, c);
    send_ping(h, c);
}

static void on_events(hub *h, conn *c, pcw_msg *m)
{
    int64_t n = (int64_t)m->u.events.n;
    witem *w;
    if (n > c->credit) {
        conn_fail(h, c, CLOSE_CREDIT, "no-credit",
                  "sent %" PRId64 " events holding credit for %" PRId64, n, c->credit);
        return;
    }
    if (!(w = witem_new(STORE_LINK_EVENTS, c->node_id, c->cn))) {
        conn_close(h, c, 1011, "out of memory");
        return;
    }
    credit_use(h, c, n);
    rx_valve(h);
    atomic_store(&h->events_held, (uint64_t)h->held);
    atomic_fetch_add(&h->events_received, (uint64_t)n);
    w->op.node = w->text;
    w->op.events = m->u.events.events;
    w->op.dropped = m->u.events.dropped;
    w->root = m->root; /* the events point into it: the writer frees it */
    m->root = NULL;
    w->conn = c->id;
    w->nevents = n;
    writer_push(h, w);
}

static void on_stats(hub *h, conn *c, const pcw_msg *m)
{
    char *text = cJSON_PrintUnformatted(m->u.stats.counters);
    witem *w = text ? witem_new(STORE_LINK_STATS, c->node_id, text) : NULL;
    free(text);
    if (!w)
        return;
    w->op.stats = w->text;
    writer_push(h, w);
}

static void on_frame(hub *h, conn *c)
{
    pcw_msg m;
    char err[512];
    int64_t t = mono_ms();
    c->last_rx = t;
    if (c->rx_binary) {
        conn_fail(h, c, CLOSE_BAD_MESSAGE, "bad-message",
                  "$: binary frame; portcullis.v1 messages are JSON text frames");
        return;
    }
    if (pcw_parse(c->rx, c->rxlen, &m, err, sizeof(err)) != 0) {
        conn_fail(h, c, CLOSE_BAD_MESSAGE, "bad-message", "%s", err);
        return;
    }
    if (m.type != PCW_EVENTS) {
        if (t - c->flood_start > HUB_FLOOD_WINDOW_MS) {
            c->flood_start = t;
            c->flood_n = 0;
        }
        if (++c->flood_n > HUB_FLOOD_MAX) {
            conn_fail(h, c, CLOSE_CREDIT, "flood", "more than %d messages in %d s besides events",
                      HUB_FLOOD_MAX, HUB_FLOOD_WINDOW_MS / 1000);
            goto done;
        }
    }
    if (c->state == C_WAIT_HELLO && m.type != PCW_HELLO) {
        conn_fail(h, c, CLOSE_BAD_MESSAGE, "wrong-state",
                  "$.type: '%s' before hello; hello comes first", pcw_type_name(m.type));
        goto done;
    }
    switch (m.type) {
    case PCW_HELLO: on_hello(h, c, &m); break;
    case PCW_ACK: on_ack(h, c, &m); break;
    case PCW_EVENTS: on_events(h, c, &m); break;
    case PCW_STATS: on_stats(h, c, &m); break;
    case PCW_ERROR:
        hub_log("node '%s' reports an error: %s: %s", c->cn, m.u.error.code, m.u.error.message);
        break;
    default:
        conn_fail(h, c, CLOSE_BAD_MESSAGE, "wrong-state",
                  "$.type: '%s' is a message the controller sends, not a node",
                  pcw_type_name(m.type));
        break;
    }
    if (c->state == C_READY && m.type != PCW_HELLO && m.type != PCW_STATS &&
        t - c->seen_posted >= HUB_SEEN_MS) {
        c->seen_posted = t;
        record_simple(h, c, STORE_LINK_SEEN);
    }
done:
    pcw_msg_free(&m);
}

/* --- results from the writer (lws thread) ---------------------------------------- */

static void on_result(hub *h, witem *w)
{
    nstate *ns = nmap_find(&h->nodes, w->op.node_id);
    conn *c = ns && ns->c && ns->c->id == w->conn ? ns->c : NULL;
    h->held -= w->nevents;
    rx_valve(h);
    atomic_store(&h->events_held, (uint64_t)h->held);
    if (w->op.rc == STORE_OK) {
        atomic_fetch_add(&h->events_stored, (uint64_t)w->op.inserted);
        if (ns && w->op.high_seq > ns->high_seq)
            ns->high_seq = w->op.high_seq;
    }
    if (!c || c->state != C_READY)
        return;
    if (w->op.rc == STORE_EINVALID) {
        conn_fail(h, c, CLOSE_BAD_MESSAGE, "bad-events", "$.events%s%s",
                  w->op.error[0] == '[' ? "" : ": ", w->op.error);
        return;
    }
    if (w->op.rc != STORE_OK) {
        hub_log("node '%s': events not stored: %s; closing so it sends them again", c->cn,
                w->op.error);
        conn_close(h, c, 1011, "events not stored; send them again");
        return;
    }
    if (ns->high_seq > c->high_seq)
        c->high_seq = ns->high_seq;
    c->hungry = c->credit == 0;
    if (c->hungry) {
        c->target = c->target * 2 < h->big_credit ? c->target * 2 : h->big_credit;
    } else {
        c->target = h->idle_credit;
        credit_park(h, c);
    }
    send_events_ack(h, c, credit_grant(h, c));
}

static void drain_inbox(hub *h)
{
    witem *res;
    ptable *t;
    kick *k;
    pthread_mutex_lock(&h->in_lock);
    res = h->in_res;
    h->in_res = h->in_res_tail = NULL;
    t = h->in_table;
    h->in_table = NULL;
    k = h->in_kicks;
    h->in_kicks = NULL;
    pthread_mutex_unlock(&h->in_lock);
    if (t)
        install_table(h, t);
    while (k) {
        kick *next = k->next;
        nstate *ns = nmap_find(&h->nodes, k->node_id);
        if (ns && ns->c) {
            hub_log("node '%s' was revoked or enrolled again; closing its connection", ns->c->cn);
            conn_close(h, ns->c, CLOSE_REFUSED, "node revoked or enrolled again");
        }
        free(k);
        k = next;
    }
    while (res) {
        witem *next = res->next;
        on_result(h, res);
        witem_free(res);
        res = next;
    }
    credit_pump(h);
}

/* --- connection lifecycle (lws thread) ------------------------------------------- */

static void conn_refuse(hub *h, conn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_refuse(hub *h, conn *c, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    atomic_fetch_add(&h->refused, 1);
    hub_log("refused a connection from %s: %s", c->peer, msg);
    conn_close(h, c, CLOSE_REFUSED, msg);
}

/* The certificate check of a new websocket: a verified client certificate
 * from our CA whose CN is an enrolled node and whose fingerprint is the one
 * issued last. On success c is the node's connection. */
static void conn_identify(hub *h, conn *c)
{
    SSL *ssl = lws_get_ssl(c->wsi);
    X509 *x = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    char fp[PKI_FP_HEX], err[256];
    store_node_identity id;
    int rc;
    if (!x) {
        conn_refuse(h, c, "no client certificate (enroll the node first)");
        goto done;
    }
    long vr = SSL_get_verify_result(ssl);
    if (vr != X509_V_OK) {
        conn_refuse(h, c, "client certificate not accepted: %s (not issued by this controller?)",
                    X509_verify_cert_error_string(vr));
        goto done;
    }
    if (pki_cert_cn(x, c->cn, sizeof(c->cn), err, sizeof(err)) != 0) {
        c->cn[0] = '\0';
        conn_refuse(h, c, "client certificate: %s", err);
        goto done;
    }
    if (pki_cert_fingerprint(x, fp) != 0) {
        conn_refuse(h, c, "client certificate of '%s': no fingerprint", c->cn);
        goto done;
    }
    rc = store_node_identity_get(h->ls, c->cn, &id);
    if (rc == STORE_ENOTFOUND) {
        conn_refuse(h, c, "there is no node '%s'", c->cn);
        goto done;
    }
    if (rc != STORE_OK) {
        hub_log("node '%s': identity check failed: %s", c->cn, store_error_message(h->ls));
        conn_close(h, c, 1011, "controller database error; try again");
        goto done;
    }
    if (!id.enrolled) {
        conn_refuse(h, c, "node '%s' is revoked or not enrolled", c->cn);
        goto done;
    }
    if (strcmp(id.fingerprint, fp) != 0) {
        conn_refuse(h, c, "node '%s': this certificate was replaced by a later enrollment", c->cn);
        goto done;
    }
    nstate *ns = nmap_get(&h->nodes, id.id);
    if (!ns) {
        conn_close(h, c, 1011, "out of memory");
        goto done;
    }
    if (ns->c) {
        conn *old = ns->c;
        hub_log("node '%s' connected again from %s; closing its older connection", c->cn, c->peer);
        ns->c = NULL;
        atomic_fetch_sub(&h->connected, 1);
        conn_close(h, old, CLOSE_REPLACED, "replaced by a newer connection of the same node");
    }
    ns->c = c;
    atomic_fetch_add(&h->connected, 1);
    if (id.events_seq > ns->high_seq)
        ns->high_seq = id.events_seq;
    c->ns = ns;
    c->identified = true;
    c->node_id = id.id;
    c->office_id = ptable_office(h->table, id.id);
    if (!c->office_id)
        c->office_id = id.office_id;
    c->high_seq = ns->high_seq;
done:
    X509_free(x);
}

static conn *conn_new(hub *h, struct lws *wsi)
{
    conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->wsi = wsi;
    c->id = ++h->next_conn_id;
    if (!lws_get_peer_simple(wsi, c->peer, sizeof(c->peer)))
        snprintf(c->peer, sizeof(c->peer), "?");
    c->since = c->last_rx = c->last_ping = c->flood_start = mono_ms();
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    return c;
}

static void conn_free(hub *h, conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->nconns--;
    queue_remove(h, c);
    h->credit_total -= c->credit - c->slack;
    h->slack_total -= c->slack;
    if (c->ns && c->ns->c == c) {
        c->ns->c = NULL;
        atomic_fetch_sub(&h->connected, 1);
        if (c->ns->db_connected) {
            record_simple(h, c, STORE_LINK_GONE);
            c->ns->db_connected = false;
        }
        if (c->state != C_CLOSING || c->close_code != CLOSE_REFUSED)
            hub_log("node '%s' (%s) disconnected", c->cn, c->peer);
    }
    while (c->txh) {
        txnode *t = c->txh;
        c->txh = t->next;
        oframe_unref(t->o);
        free(t);
    }
    oframe_unref(c->policy_out);
    free(c->rx);
    free(c->last_error);
    free(c);
    credit_pump(h);
}

/* --- lws callbacks ---------------------------------------------------------------- */

static hub *wsi_hub(struct lws *wsi)
{
    struct lws_context *ctx = wsi ? lws_get_context(wsi) : NULL;
    return ctx ? lws_context_user(ctx) : NULL;
}

static int ws_writeable(hub *h, conn *c)
{
    oframe *o = NULL;
    if (c->txh) {
        txnode *t = c->txh;
        c->txh = t->next;
        if (!c->txh)
            c->txt = NULL;
        c->ntx--;
        o = t->o;
        free(t);
    } else if (c->policy_out) {
        o = c->policy_out;
        c->policy_out = NULL;
    }
    if (o) {
        int n = lws_write(c->wsi, (unsigned char *)pcw_payload(&o->f), o->f.len, LWS_WRITE_TEXT);
        bool ok = n >= 0 && (size_t)n >= o->f.len;
        oframe_unref(o);
        if (!ok)
            return -1;
    } else if (c->close_code) {
        lws_close_reason(c->wsi, (enum lws_close_status)c->close_code,
                         (unsigned char *)c->close_reason, strlen(c->close_reason));
        return -1;
    }
    if (c->txh || c->policy_out || c->close_code)
        lws_callback_on_writable(c->wsi);
    (void)h;
    return 0;
}

static int ws_receive(hub *h, conn *c, const void *in, size_t len)
{
    if (c->state == C_CLOSING)
        return 0;
    if (lws_is_first_fragment(c->wsi)) {
        c->rxlen = 0;
        c->rx_binary = lws_frame_is_binary(c->wsi);
    }
    if (c->rxlen + len > PCW_NODE_FRAME_MAX) {
        conn_fail(h, c, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "too-large",
                  "$: message larger than %d bytes", PCW_NODE_FRAME_MAX);
        return 0;
    }
    if (c->rxlen + len + 1 > c->rxcap) {
        size_t cap = c->rxcap ? c->rxcap : 4096;
        while (cap < c->rxlen + len + 1)
            cap *= 2;
        char *nb = realloc(c->rx, cap);
        if (!nb) {
            hub_log("node '%s': out of memory receiving", c->cn);
            return -1;
        }
        c->rx = nb;
        c->rxcap = cap;
    }
    if (len)
        memcpy(c->rx + c->rxlen, in, len);
    c->rxlen += len;
    c->rx[c->rxlen] = '\0';
    if (lws_is_final_fragment(c->wsi) && !lws_remaining_packet_payload(c->wsi)) {
        on_frame(h, c);
        c->rxlen = 0;
        if (c->rxcap > HUB_RX_KEEP) {
            free(c->rx);
            c->rx = NULL;
            c->rxcap = 0;
        }
    }
    return 0;
}

static int cb_ws(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                 size_t len)
{
    hub *h = wsi_hub(wsi);
    ws_pss *pss = user;
    conn *c = pss ? pss->c : NULL;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        if (!(c = conn_new(h, wsi)))
            return -1;
        pss->c = c;
        if (h->nconns > h->max_nodes) {
            atomic_fetch_add(&h->refused, 1);
            hub_log("refused a connection from %s: %u connections already", c->peer, h->max_nodes);
            conn_close(h, c, 1013 /* try again later */, "controller at its node limit");
            return 0;
        }
        conn_identify(h, c);
        return 0;
    case LWS_CALLBACK_RECEIVE: return c ? ws_receive(h, c, in, len) : -1;
    case LWS_CALLBACK_SERVER_WRITEABLE: return c ? ws_writeable(h, c) : -1;
    case LWS_CALLBACK_CLOSED:
        if (c) {
            pss->c = NULL;
            conn_free(h, c);
        }
        return 0;
    default: return 0;
    }
}

static void http_reset(http_pss *p)
{
    free(p->body);
    free(p->resp);
    memset(p, 0, sizeof(*p));
}

/* {"error":{"code","message"}} as a new string. */
static char *json_error(const char *code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static char *json_error(const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    char *s = NULL;
    if (e && cJSON_AddStringToObject(e, "code", code) && cJSON_AddStringToObject(e, "message", msg))
        s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* Sends the headers now and body (taken) when writable. -1: close. */
static int http_respond(struct lws *wsi, http_pss *p, unsigned status, char *body)
{
    unsigned char buf[LWS_PRE + 512], *start = buf + LWS_PRE, *pos = start,
                                      *end = buf + sizeof(buf) - 1;
    if (!body)
        return -1;
    free(p->resp);
    p->resp = body;
    p->resp_len = strlen(body);
    if (lws_add_http_common_headers(wsi, status, "application/json", (lws_filepos_t)p->resp_len,
                                    &pos, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &pos, end) ||
        lws_finalize_write_http_header(wsi, start, &pos, end))
        return -1;
    lws_callback_on_writable(wsi);
    return 0;
}

/* A node enrolled again: its connection with the old certificate goes. */
static void after_enroll(hub *h, const char *resp)
{
    cJSON *r = cJSON_Parse(resp);
    const cJSON *node = cJSON_GetObjectItemCaseSensitive(r, "node");
    store_node_identity id;
    if (cJSON_IsString(node)) {
        hub_log("node '%s' enrolled", node->valuestring);
        if (store_node_identity_get(h->ls, node->valuestring, &id) == STORE_OK) {
            nstate *ns = nmap_find(&h->nodes, id.id);
            if (ns && ns->c)
                conn_close(h, ns->c, CLOSE_REFUSED, "node enrolled again with a new certificate");
        }
    }
    cJSON_Delete(r);
}

static int http_body_done(hub *h, struct lws *wsi, http_pss *p)
{
    int status = 500;
    char *resp = NULL, peer[64];
    if (!p->enroll) {
        p->close = true;
        return http_respond(wsi, p, 404,
                            json_error("not-found", "no such resource; the node hub serves POST "
                                                    "/enroll and the portcullis.v1 websocket"));
    }
    if (p->too_large) {
        p->close = true;
        return http_respond(
            wsi, p, 413,
            json_error("too-large", "the body is larger than %d bytes", ENROLL_BODY_MAX));
    }
    if (enroll_handle(h->ls, h->o.ca, p->body ? p->body : "", p->len, &status, &resp) != 0)
        return http_respond(wsi, p, 500, json_error("internal", "out of memory"));
    if (status == 200) {
        atomic_fetch_add(&h->enrollments, 1);
        after_enroll(h, resp);
    } else {
        atomic_fetch_add(&h->enrollments_refused, 1);
        if (!lws_get_peer_simple(wsi, peer, sizeof(peer)))
            snprintf(peer, sizeof(peer), "?");
        hub_log("refused an enrollment from %s: %d %s", peer, status, resp ? resp : "");
    }
    return http_respond(wsi, p, (unsigned)status, resp);
}

static int cb_http(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                   size_t len)
{
    hub *h = wsi_hub(wsi);
    http_pss *p = user;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (h)
            drain_inbox(h);
        return 0;
    case LWS_CALLBACK_OPENSSL_PERFORM_CLIENT_CERT_VERIFICATION:
        /* Accept here; a websocket upgrade checks the verify result, and
         * POST /enroll needs no certificate at all. */
        return 0;
    case LWS_CALLBACK_OPENSSL_LOAD_EXTRA_SERVER_VERIFY_CERTS:
        if (user)
            SSL_CTX_set_min_proto_version((SSL_CTX *)user, TLS1_2_VERSION);
        return 0;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return -1; /* a websocket without subprotocol portcullis.v1 */
    case LWS_CALLBACK_HTTP: {
        char cl[32];
        http_reset(p);
        p->post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
        p->enroll = p->post && strcmp((const char *)in, "/enroll") == 0;
        if (!p->post) {
            p->close = true;
            if (strcmp((const char *)in, "/enroll") == 0)
                return http_respond(wsi, p, 405,
                                    json_error("method-not-allowed", "enroll with POST /enroll"));
            return http_respond(wsi, p, 404,
                                json_error("not-found",
                                           "no such resource; the node hub serves POST /enroll "
                                           "and the portcullis.v1 websocket"));
        }
        if (lws_hdr_copy(wsi, cl, sizeof(cl), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || *end || n > ENROLL_BODY_MAX) {
                p->too_large = true;
                return http_body_done(h, wsi, p);
            }
            if (n == 0)
                return http_body_done(h, wsi, p);
        }
        return 0;
    }
    case LWS_CALLBACK_HTTP_BODY:
        if (p->too_large || p->resp)
            return 0;
        if (p->len + len > ENROLL_BODY_MAX) {
            p->too_large = true;
            return 0;
        }
        if (p->len + len + 1 > p->cap) {
            size_t cap = p->cap ? p->cap * 2 : 4096;
            while (cap < p->len + len + 1)
                cap *= 2;
            char *nb = realloc(p->body, cap);
            if (!nb)
                return -1;
            p->body = nb;
            p->cap = cap;
        }
        memcpy(p->body + p->len, in, len);
        p->len += len;
        p->body[p->len] = '\0';
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (p->resp)
            return 0;
        return http_body_done(h, wsi, p);
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (!p->resp)
            return 0;
        unsigned char *buf = malloc(LWS_PRE + p->resp_len);
        if (!buf)
            return -1;
        memcpy(buf + LWS_PRE, p->resp, p->resp_len);
        int n = lws_write(wsi, buf + LWS_PRE, p->resp_len, LWS_WRITE_HTTP_FINAL);
        free(buf);
        bool close = p->close || n < 0 || (size_t)n < p->resp_len;
        http_reset(p);
        if (close || lws_http_transaction_completed(wsi))
            return -1;
        return 0;
    }
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (p)
            http_reset(p);
        return 0;
    default: return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols hub_protocols[] = {
    {"http", cb_http, sizeof(http_pss), 0, 0, NULL, 0},
    {PCW_PROTOCOL, cb_ws, sizeof(ws_pss), HUB_RX_CHUNK, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* Once a second: hello deadlines, pings, silent nodes. */
static void tick(lws_sorted_usec_list_t *sul)
{
    hub *h = lws_container_of(sul, hub, tick);
    int64_t t = mono_ms(), ping_ms = (int64_t)h->ping_s * 1000;
    for (conn *c = h->conns; c; c = c->next) {
        if (c->state == C_WAIT_HELLO && t - c->since > HUB_HELLO_TIMEOUT_MS) {
            conn_fail(h, c, CLOSE_BAD_MESSAGE, "no-hello", "no hello within %d s",
                      HUB_HELLO_TIMEOUT_MS / 1000);
        } else if (c->state == C_READY) {
            if (!c->queued && c->credit - c->slack > h->idle_credit &&
                t - c->credit_active > HUB_DORMANT_MS)
                credit_park(h, c);
            if (t - c->last_rx > 3 * ping_ms + 10000) {
                hub_log("node '%s' (%s) silent for %" PRId64 " s; closing", c->cn, c->peer,
                        (t - c->last_rx) / 1000);
                conn_close(h, c, LWS_CLOSE_STATUS_GOINGAWAY, "silent too long");
            } else if (t - c->last_ping >= ping_ms) {
                send_ping(h, c);
            }
        }
    }
    credit_pump(h);
    lws_sul_schedule(h->ctx, 0, &h->tick, tick, LWS_US_PER_SEC);
}

static void *lws_main(void *arg)
{
    hub *h = arg;
    lws_sul_schedule(h->ctx, 0, &h->tick, tick, LWS_US_PER_SEC);
    drain_inbox(h); /* anything posted before the loop ran */
    while (!atomic_load(&h->stopping))
        if (lws_service(h->ctx, 0) < 0)
            break;
    pthread_mutex_lock(&h->in_lock);
    h->ctx_alive = false;
    pthread_mutex_unlock(&h->in_lock);
    lws_sul_cancel(&h->tick);
    lws_context_destroy(h->ctx); /* closes every connection: conn_free for each */
    h->ctx = NULL;
    return NULL;
}

/* --- writer thread ---------------------------------------------------------------- */

static void writer_apply(hub *h, witem *batch)
{
    size_t n = 0;
    int rc = STORE_ERR;
    for (witem *w = batch; w; w = w->next)
        h->w_ops[n++] = w->op;
    for (int attempt = 0; attempt < 3; attempt++) {
        rc = store_link_apply(h->ws, h->w_ops, n);
        if (rc != STORE_EBUSY)
            break;
        usleep(50000);
    }
    if (rc != STORE_OK)
        hub_log("storing %zu node records failed: %s", n, store_error_message(h->ws));
    bool stored = false;
    for (size_t i = 0; rc == STORE_OK && i < n; i++)
        stored |= h->w_ops[i].kind == STORE_LINK_EVENTS && h->w_ops[i].inserted > 0;
    if (stored) {
        /* Under in_lock: hub_set_stored_listener(NULL) must not return while
         * the listener runs (the API frees what it points to). */
        pthread_mutex_lock(&h->in_lock);
        if (h->stored_fn)
            h->stored_fn(h->stored_arg);
        pthread_mutex_unlock(&h->in_lock);
    }
    n = 0;
    for (witem *w = batch, *next; w; w = next) {
        next = w->next;
        w->op = h->w_ops[n++];
        if (rc != STORE_OK) {
            w->op.rc = rc;
            snprintf(w->op.error, sizeof(w->op.error), "%s", store_error_message(h->ws));
        } else if (w->op.rc != STORE_OK && w->op.kind != STORE_LINK_EVENTS) {
            hub_log("node %" PRId64 ": recording state failed: %s", w->op.node_id, w->op.error);
        }
        if (w->op.kind == STORE_LINK_EVENTS) {
            /* The events are stored (or not); the lws thread needs only the
             * counts back. */
            cJSON_Delete(w->root);
            w->root = NULL;
            w->op.events = NULL;
            post_result(h, w);
        } else {
            witem_free(w);
        }
    }
}

static void writer_prune(hub *h, int64_t *next_prune)
{
    size_t deleted = 0;
    int64_t older =
        h->o.retention_days ? now_ms() - (int64_t)h->o.retention_days * 86400 * INT64_C(1000) : 0;
    *next_prune = mono_ms() + HUB_PRUNE_MS;
    if (!older && !h->o.retention_max)
        return;
    if (store_events_prune(h->ws, older, h->o.retention_max, HUB_PRUNE_LIMIT, &deleted) !=
        STORE_OK) {
        hub_log("event retention failed: %s", store_error_message(h->ws));
        return;
    }
    if (deleted == HUB_PRUNE_LIMIT)
        *next_prune = mono_ms() + 1000; /* more to do; let other writes in between */
}

static void *writer_main(void *arg)
{
    hub *h = arg;
    int64_t next_prune = mono_ms() + 5000;
    if (store_link_reset(h->ws) != STORE_OK)
        hub_log("marking nodes disconnected failed: %s", store_error_message(h->ws));
    for (;;) {
        witem *batch = NULL, **tail = &batch;
        size_t ops = 0;
        int64_t events = 0;
        pthread_mutex_lock(&h->w_lock);
        while (!h->wq && !h->w_stop && mono_ms() < next_prune) {
            struct timespec dl = deadline_in(next_prune - mono_ms());
            pthread_cond_timedwait(&h->w_cond, &h->w_lock, &dl);
        }
        bool stop = h->w_stop && !h->wq;
        while (h->wq && ops < HUB_WRITE_OPS && events < HUB_WRITE_EVENTS) {
            witem *w = h->wq;
            h->wq = w->next;
            w->next = NULL;
            *tail = w;
            tail = &w->next;
            ops++;
            events += w->nevents;
        }
        if (!h->wq)
            h->wq_tail = NULL;
        pthread_mutex_unlock(&h->w_lock);
        if (batch)
            writer_apply(h, batch);
        if (stop)
            break;
        if (mono_ms() >= next_prune)
            writer_prune(h, &next_prune);
    }
    return NULL;
}

/* --- compiler thread ------------------------------------------------------------------ */

static int cmp_doc(const void *a, const void *b)
{
    const tdoc *x = a, *y = b;
    return x->office_id < y->office_id ? -1 : x->office_id > y->office_id;
}

static bool in_sorted(const int64_t *v, size_t n, int64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] == x)
            return true;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static bool model_has_office(const model *m, int64_t id)
{
    for (size_t i = 0; i < m->noffices; i++)
        if (m->offices[i].id == id)
            return true;
    return false;
}

/* Compiles office id from m into t->docs[t->ndocs++]; a compile error is
 * logged (once per distinct text) and the office left out, so its nodes keep
 * what they run. */
static int table_add(ptable *t, const model *m, int64_t id, char *last_err, size_t last_errlen)
{
    char *doc = NULL, sha[65], err[COMPILER_ERR_MAX];
    pcw_frame f;
    if (compiler_office_document(m, id, &doc, sha, err, sizeof(err)) != 0) {
        if (strncmp(last_err, err, last_errlen) != 0) {
            hub_log("office %" PRId64 " at revision %" PRId64 " does not compile: %s", id,
                    m->revision, err);
            snprintf(last_err, last_errlen, "%s", err);
        }
        return 0;
    }
    int rc = pcw_build_policy(&f, m->revision, sha, doc, strlen(doc));
    free(doc);
    if (rc != 0)
        return -1;
    tdoc *d = &t->docs[t->ndocs];
    d->office_id = id;
    d->version = m->revision;
    snprintf(d->sha256, sizeof(d->sha256), "%s", sha);
    if (!(d->frame = oframe_new(&f)))
        return -1;
    t->ndocs++;
    return 0;
}

static ptable *table_build(hub *h, char *last_err, size_t last_errlen)
{
    store_rollout_plan plan = {0};
    model mr = {0}, mc = {0};
    bool have_plan = false, have_r = false, have_c = false;
    cJSON *nodes = NULL;
    ptable *t = calloc(1, sizeof(*t)), *out = NULL;
    int rc;
    if (!t)
        goto done;
    if ((rc = store_rollout_plan_get(h->cs, &plan)) != STORE_OK)
        goto store_fail;
    have_plan = true;
    if ((rc = store_model_load(h->cs, plan.released, &mr)) != STORE_OK)
        goto store_fail;
    have_r = true;
    if (plan.canary) {
        if ((rc = store_model_load(h->cs, plan.canary, &mc)) != STORE_OK)
            goto store_fail;
        have_c = true;
    }
    if ((rc = store_node_offices(h->cs, &nodes)) != STORE_OK)
        goto store_fail;
    t->released = plan.released;
    t->canary = plan.canary;
    if (!(t->docs = calloc(mr.noffices + plan.ncanary + 1, sizeof(*t->docs))))
        goto done;
    for (size_t i = 0; i < mr.noffices; i++) {
        int64_t id = mr.offices[i].id;
        bool canary =
            have_c && in_sorted(plan.canary_offices, plan.ncanary, id) && model_has_office(&mc, id);
        if (!canary && table_add(t, &mr, id, last_err, last_errlen) != 0)
            goto done;
    }
    for (size_t i = 0; have_c && i < plan.ncanary; i++)
        if (model_has_office(&mc, plan.canary_offices[i]) &&
            table_add(t, &mc, plan.canary_offices[i], last_err, last_errlen) != 0)
            goto done;
    qsort(t->docs, t->ndocs, sizeof(*t->docs), cmp_doc);
    size_t nn = (size_t)cJSON_GetArraySize(nodes);
    if (!(t->nodes = calloc(nn + 1, sizeof(*t->nodes))))
        goto done;
    const cJSON *it;
    int64_t prev = 0;
    cJSON_ArrayForEach(it, nodes)
    {
        tnode n = {json_i64(it, "id"), json_i64(it, "office_id")};
        if (n.node_id <= prev) /* the store orders them by id; refuse anything else */
            continue;
        prev = n.node_id;
        t->nodes[t->nnodes++] = n;
    }
    out = t;
    t = NULL;
    goto done;
store_fail:
    if (strncmp(last_err, store_error_message(h->cs), last_errlen) != 0) {
        hub_log("loading the policy to push failed: %s", store_error_message(h->cs));
        snprintf(last_err, last_errlen, "%s", store_error_message(h->cs));
    }
done:
    if (!out && t && !last_err[0])
        hub_log("out of memory compiling the documents to push");
    ptable_free(t);
    cJSON_Delete(nodes);
    if (have_c)
        model_free(&mc);
    if (have_r)
        model_free(&mr);
    if (have_plan)
        store_rollout_plan_free(&plan);
    return out;
}

/* The newest revision and the rollout's updated_at: what the fallback check
 * compares. */
static int policy_mark(hub *h, int64_t *rev, char *updated, size_t len)
{
    cJSON *r = NULL;
    if (store_revision_current(h->cs, rev) != STORE_OK || store_rollout_get(h->cs, &r) != STORE_OK)
        return -1;
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(r, "updated_at");
    const cJSON *rel = cJSON_GetObjectItemCaseSensitive(r, "released");
    snprintf(updated, len, "%s/%" PRId64, cJSON_IsString(u) ? u->valuestring : "",
             cJSON_IsNumber(rel) ? (int64_t)rel->valuedouble : (int64_t)0);
    cJSON_Delete(r);
    return 0;
}

static void *compiler_main(void *arg)
{
    hub *h = arg;
    int64_t last_rev = -1, rev = 0;
    char last_mark[96] = "", mark[96], last_err[COMPILER_ERR_MAX] = "";
    for (;;) {
        pthread_mutex_lock(&h->c_lock);
        if (!h->c_dirty && !h->c_stop) {
            struct timespec dl = deadline_in(HUB_CHECK_MS);
            pthread_cond_timedwait(&h->c_cond, &h->c_lock, &dl);
        }
        bool stop = h->c_stop, notified = h->c_dirty;
        h->c_dirty = false;
        pthread_mutex_unlock(&h->c_lock);
        if (stop)
            break;
        if (policy_mark(h, &rev, mark, sizeof(mark)) != 0) {
            if (!last_err[0])
                hub_log("checking the policy revision failed: %s", store_error_message(h->cs));
            snprintf(last_err, sizeof(last_err), "%s", store_error_message(h->cs));
            continue;
        }
        if (!notified && rev == last_rev && strcmp(mark, last_mark) == 0)
            continue;
        ptable *t = table_build(h, last_err, sizeof(last_err));
        if (!t)
            continue; /* retried at the next check */
        last_err[0] = '\0';
        last_rev = rev;
        snprintf(last_mark, sizeof(last_mark), "%s", mark);
        post_table(h, t);
    }
    return NULL;
}

/* --- public ----------------------------------------------------------------------- */

static void lws_log_emit(int level, const char *line)
{
    (void)level;
    fprintf(stderr, "portcullis-controller: hub: lws: %s", line);
}

/* "ADDR:PORT" / "[V6]:PORT" into host and port. */
static int split_listen(const char *s, char *host, size_t hostlen, int *port, bool *v6)
{
    const char *colon, *hs = s;
    size_t hl;
    *v6 = false;
    if (!s || !*s)
        return -1;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        hs = s + 1;
        hl = (size_t)(close - s - 1);
        colon = close + 1;
        *v6 = true;
    } else {
        colon = strrchr(s, ':');
        if (!colon || strchr(s, ':') != colon)
            return -1;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= hostlen)
        return -1;
    memcpy(host, hs, hl);
    host[hl] = '\0';
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

/* Binds host:port once and lets go, so "address in use" is said plainly
 * (and lws, whose failed start leaks, is not started). 0, or -1 with err. */
static int probe_bind(const char *host, int port, bool v6, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int one = 1, rc = -1;
    memset(&ss, 0, sizeof(ss));
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        len = sizeof(*a);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            goto bad;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        len = sizeof(*a);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            goto bad;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "hub: socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0)
        snprintf(err, errlen, "cannot serve the node hub on %s:%d: %s", host, port,
                 strerror(errno));
    else
        rc = 0;
    close(fd);
    return rc;
bad:
    snprintf(err, errlen, "hub listen: '%s' is not a numeric IP address", host);
    return -1;
}

int hub_start(const hub_options *o, hub **out, char *err, size_t errlen)
{
    hub *h = NULL;
    char host[64];
    int port;
    bool v6;
    *out = NULL;
    if (!o || !o->ca || !o->db_path || !o->ca->hub_cert_path || !o->ca->hub_key_path ||
        !o->ca->cert_path) {
        snprintf(err, errlen, "hub: missing options (listen, database, CA)");
        return -1;
    }
    if (split_listen(o->listen, host, sizeof(host), &port, &v6) != 0) {
        snprintf(err, errlen, "hub listen '%s': expected ADDR:PORT or [IPV6]:PORT",
                 o->listen ? o->listen : "");
        return -1;
    }
    if (port && probe_bind(host, port, v6, err, errlen) != 0)
        return -1;
    if (!(h = calloc(1, sizeof(*h))) || !(h->listen_copy = strdup(o->listen))) {
        free(h);
        snprintf(err, errlen, "hub: out of memory");
        return -1;
    }
    h->o = *o;
    h->o.listen = h->listen_copy;
    h->max_nodes = o->max_nodes ? o->max_nodes : HUB_DEFAULT_MAX_NODES;
    h->ping_s = o->ping_s ? o->ping_s : HUB_DEFAULT_PING_S;
    h->budget = o->event_budget ? o->event_budget : HUB_DEFAULT_BUDGET;
    h->big_credit = h->budget / 2 < PCW_EVENTS_MAX ? h->budget / 2 : PCW_EVENTS_MAX;
    if (h->big_credit < 1)
        h->big_credit = 1;
    h->idle_credit = (int64_t)h->budget / (2 * (int64_t)h->max_nodes);
    if (h->idle_credit > HUB_IDLE_MAX)
        h->idle_credit = HUB_IDLE_MAX;
    if (h->idle_credit < 1)
        h->idle_credit = 1;
    pthread_mutex_init(&h->in_lock, NULL);
    pthread_mutex_init(&h->w_lock, NULL);
    pthread_cond_init(&h->w_cond, NULL);
    pthread_mutex_init(&h->c_lock, NULL);
    pthread_cond_init(&h->c_cond, NULL);
    h->locks_ready = true;
    h->c_dirty = true; /* the first table */
    if (!(h->w_ops = calloc(HUB_WRITE_OPS, sizeof(*h->w_ops)))) {
        snprintf(err, errlen, "hub: out of memory");
        goto fail;
    }
    if (store_open(o->db_path, &h->ls, err, errlen) != STORE_OK ||
        store_open(o->db_path, &h->ws, err, errlen) != STORE_OK ||
        store_open(o->db_path, &h->cs, err, errlen) != STORE_OK)
        goto fail;

    lws_set_log_level(LLL_ERR, lws_log_emit);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    info.port = port;
    info.iface = host;
    info.protocols = hub_protocols;
    info.user = h;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT |
                   LWS_SERVER_OPTION_REQUIRE_VALID_OPENSSL_CLIENT_CERT |
                   LWS_SERVER_OPTION_PEER_CERT_NOT_REQUIRED;
    if (!v6)
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    info.ssl_cert_filepath = o->ca->hub_cert_path;
    info.ssl_private_key_filepath = o->ca->hub_key_path;
    info.ssl_ca_filepath = o->ca->cert_path;
    info.ssl_options_set = SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1;
    info.alpn = "http/1.1";
    info.timeout_secs = 20;
    info.ka_time = 60;
    info.ka_probes = 3;
    info.ka_interval = 10;
    info.fd_limit_per_thread = h->max_nodes + 64;
    h->ctx = lws_create_context(&info);
    if (!h->ctx) {
        snprintf(err, errlen,
                 "cannot serve the node hub on %s (address in use, or unusable certificate "
                 "files %s / %s)",
                 o->listen, o->ca->hub_cert_path, o->ca->hub_key_path);
        goto fail;
    }
    h->ctx_alive = true;
    struct lws_vhost *vh = lws_get_vhost_by_name(h->ctx, "default");
    h->port = vh ? (uint16_t)lws_get_vhost_listen_port(vh) : (uint16_t)port;

    if (pthread_create(&h->writer_thread, NULL, writer_main, h) != 0) {
        snprintf(err, errlen, "hub: cannot start the writer thread");
        goto fail;
    }
    h->writer_started = true;
    if (pthread_create(&h->compiler_thread, NULL, compiler_main, h) != 0) {
        snprintf(err, errlen, "hub: cannot start the compiler thread");
        goto fail;
    }
    h->compiler_started = true;
    if (pthread_create(&h->lws_thread, NULL, lws_main, h) != 0) {
        snprintf(err, errlen, "hub: cannot start the service thread");
        goto fail;
    }
    h->lws_started = true;
    *out = h;
    return 0;
fail:
    hub_stop(h);
    return -1;
}

uint16_t hub_port(const hub *h)
{
    return h ? h->port : 0;
}

void hub_notify_policy(hub *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->c_lock);
    h->c_dirty = true;
    pthread_cond_signal(&h->c_cond);
    pthread_mutex_unlock(&h->c_lock);
}

void hub_kick_node(hub *h, int64_t node_id)
{
    kick *k;
    if (!h || !(k = calloc(1, sizeof(*k))))
        return;
    k->node_id = node_id;
    pthread_mutex_lock(&h->in_lock);
    k->next = h->in_kicks;
    h->in_kicks = k;
    wake_lws(h);
    pthread_mutex_unlock(&h->in_lock);
}

void hub_get_stats(hub *h, hub_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!h)
        return;
    out->connected = atomic_load(&h->connected);
    out->refused = atomic_load(&h->refused);
    out->bad_messages = atomic_load(&h->bad_messages);
    out->events_received = atomic_load(&h->events_received);
    out->events_stored = atomic_load(&h->events_stored);
    out->events_held = atomic_load(&h->events_held);
    out->policies_sent = atomic_load(&h->policies_sent);
    out->acks_applied = atomic_load(&h->acks_applied);
    out->acks_failed = atomic_load(&h->acks_failed);
    out->enrollments = atomic_load(&h->enrollments);
    out->enrollments_refused = atomic_load(&h->enrollments_refused);
}

void hub_stop(hub *h)
{
    if (!h)
        return;
    /* The service thread first (its connections post their last records to
     * the writer), then the compiler, then the writer, which stores what is
     * queued before it returns. */
    atomic_store(&h->stopping, true);
    if (h->lws_started) {
        pthread_mutex_lock(&h->in_lock);
        wake_lws(h);
        pthread_mutex_unlock(&h->in_lock);
        pthread_join(h->lws_thread, NULL);
    } else if (h->ctx) {
        lws_context_destroy(h->ctx);
        h->ctx = NULL;
    }
    if (h->compiler_started) {
        pthread_mutex_lock(&h->c_lock);
        h->c_stop = true;
        pthread_cond_signal(&h->c_cond);
        pthread_mutex_unlock(&h->c_lock);
        pthread_join(h->compiler_thread, NULL);
    }
    if (h->writer_started) {
        pthread_mutex_lock(&h->w_lock);
        h->w_stop = true;
        pthread_cond_signal(&h->w_cond);
        pthread_mutex_unlock(&h->w_lock);
        pthread_join(h->writer_thread, NULL);
    }
    while (h->wq) {
        witem *w = h->wq;
        h->wq = w->next;
        witem_free(w);
    }
    while (h->in_res) {
        witem *w = h->in_res;
        h->in_res = w->next;
        witem_free(w);
    }
    while (h->in_kicks) {
        kick *k = h->in_kicks;
        h->in_kicks = k->next;
        free(k);
    }
    ptable_free(h->in_table);
    ptable_free(h->table);
    nmap_free(&h->nodes);
    store_close(h->cs);
    store_close(h->ws);
    store_close(h->ls);
    if (h->locks_ready) {
        pthread_cond_destroy(&h->c_cond);
        pthread_mutex_destroy(&h->c_lock);
        pthread_cond_destroy(&h->w_cond);
        pthread_mutex_destroy(&h->w_lock);
        pthread_mutex_destroy(&h->in_lock);
    }
    free(h->w_ops);
    free(h->listen_copy);
    free(h);
}

void hub_set_stored_listener(hub *h, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&h->in_lock);
    h->stored_fn = fn;
    h->stored_arg = arg;
    pthread_mutex_unlock(&h->in_lock);
}
