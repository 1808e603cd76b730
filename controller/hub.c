/* hub.c - the node hub (hub.h, docs/link.md): one libwebsockets server
 * thread owns every connection; a writer thread stores what nodes send
 * (store_link_apply, many ops per transaction) and prunes old events; a
 * compiler thread turns the released (and canary) revision into one document
 * per office; an enroller thread answers POST /enroll (a write transaction
 * and a signature: never on the lws thread). The threads talk through locked
 * queues: work for the writer and for the enroller, and an inbox the lws
 * thread drains when lws_cancel_service wakes it (results, answers to
 * enrollments, a new document table, kicks).
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
#define HUB_CLOSE_GRACE_S 5
#define HUB_SENT_KEEP 4         /* (version, sha256) sent to a node, remembered per node */
#define HUB_WRITE_TRIES 10      /* rounds a node-state record is tried before it is dropped */
#define HUB_WRITE_RETRY_MS 500  /* the writer's pause after a failed round */
#define HUB_ENROLL_ACTIVE 4     /* enrollments handed to the enroller and not answered */
#define HUB_ENROLL_RATE 20      /* enrollments per second (a bucket of this many) */
#define HUB_ENROLL_WAIT_S 30    /* a connection waits this long for its answer */
#define HUB_LOG_WINDOW_MS 10000 /* rate-limited log lines: at most HUB_LOG_BURST per window */
#define HUB_LOG_BURST 5
#define HUB_OVER_LOGGED 64 /* oversized documents remembered as logged */

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

/* A log line that peers can provoke at will: at most HUB_LOG_BURST per
 * window, then one line saying how many were left out. */
typedef struct ratelog {
    int64_t start;
    unsigned n, skipped;
} ratelog;

static bool ratelog_allow(ratelog *r)
{
    int64_t t = mono_ms();
    if (t - r->start >= HUB_LOG_WINDOW_MS) {
        if (r->skipped)
            hub_log("(%u similar lines left out in %d s)", r->skipped, HUB_LOG_WINDOW_MS / 1000);
        r->start = t;
        r->n = r->skipped = 0;
    }
    if (r->n < HUB_LOG_BURST) {
        r->n++;
        return true;
    }
    r->skipped++;
    return false;
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
    /* The office's document at over_version was too large for a node
     * (oversize bytes as a message): the compiler leaves frame NULL and the
     * lws thread puts the office's previous document (if any) in its place. */
    size_t oversize;
    int64_t over_version;
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
    unsigned tries; /* failed rounds (node-state records are tried again) */
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

/* One POST /enroll handed to the enroller and its answer. */
typedef struct ejob {
    struct ejob *next;
    uint64_t id; /* the lws thread's slot for it (enroll_wait) */
    char *body;
    size_t len;
    char peer[64];
    /* the answer */
    int status;
    char *resp;
    int64_t node_id; /* 200: the node enrolled (its old connection goes) */
    char node[65];
} ejob;

static void ejob_free(ejob *j)
{
    if (!j)
        return;
    if (j->body) {
        explicit_bzero(j->body, j->len); /* it holds a token */
        free(j->body);
    }
    free(j->resp);
    free(j);
}

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

typedef struct known {
    int64_t version;
    char sha256[65];
} known;

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
    conn *c;                   /* its current connection */
    int64_t high_seq;          /* newest stored seq we know of */
    bool db_connected;         /* a HELLO was recorded and no GONE since */
    known sent[HUB_SENT_KEEP]; /* documents sent to it, newest at sent_next - 1 */
    size_t sent_next;
    /* The document it reverted by safe apply: not sent again while it is
     * its office's document ("" = none), and why (its last_error until an
     * applied ack of another version). */
    char reverted_sha[65];
    int64_t reverted_version;
    char *revert_error;
};

/* Open-addressing map node_id -> nstate (entries live as long as the hub). */
typedef struct nmap {
    nstate **slots;
    size_t cap, n;
} nmap;

typedef struct http_pss {
    char *body;
    size_t len, cap;
    bool post, enroll, too_large, close;
    char *resp; /* JSON body to write */
    size_t resp_len;
    uint64_t job;     /* waiting for the enroller's answer to this job */
    bool hdr_pending; /* the answer came from the enroller: headers go out when writable */
    unsigned status;  /* hdr_pending: its HTTP status */
    bool retry_after; /* 429: say when to come back */
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
    conn *qh, *qt;
    struct {
        uint64_t id;     /* 0: free */
        struct lws *wsi; /* NULL once the connection closed */
    } enroll_wait[HUB_ENROLL_ACTIVE];
    uint64_t next_job;
    double enroll_tokens;
    int64_t enroll_refill; /* monotonic ms the bucket was last filled */
    ratelog log_refused, log_rejected, log_enroll, log_enroll_limit;
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
    ejob *in_enroll;

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

    /* enroller */
    store *es;
    pthread_t enroll_thread;
    bool enroll_started;
    pthread_mutex_t e_lock;
    pthread_cond_t e_cond;
    ejob *eq, *eq_tail;
    bool e_stop;

    /* compiler */
    pthread_mutex_t c_lock;
    pthread_cond_t c_cond;
    bool c_dirty, c_stop;
    struct {
        int64_t office, rev;
    } over_logged[HUB_OVER_LOGGED]; /* oversized documents logged */
    size_t over_next;

    /* counters */
    atomic_uint_fast64_t connected, refused, bad_messages, events_received, events_stored,
        events_rejected, events_held, policies_sent, acks_applied, acks_failed, enrollments,
        enrollments_refused;
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
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i])
            free(m->slots[i]->revert_error);
        free(m->slots[i]);
    }
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

/* What node ns was sent as version (its sha256), or NULL. */
static const char *sent_find(const nstate *ns, int64_t version)
{
    for (size_t k = 1; k <= HUB_SENT_KEEP; k++) {
        const known *e = &ns->sent[(ns->sent_next + HUB_SENT_KEEP - k) % HUB_SENT_KEEP];
        if (e->version == version && e->sha256[0])
            return e->sha256;
    }
    return NULL;
}

static void sent_add(nstate *ns, int64_t version, const char *sha)
{
    known *e = &ns->sent[ns->sent_next];
    e->version = version;
    snprintf(e->sha256, sizeof(e->sha256), "%s", sha);
    ns->sent_next = (ns->sent_next + 1) % HUB_SENT_KEEP;
}

static const tdoc *conn_doc(const hub *h, const conn *c)
{
    return ptable_doc(h->table, c->office_id);
}

/* Why d cannot reach the nodes of its office, into buf; false when it can. */
static bool doc_oversize_error(const tdoc *d, char *buf, size_t len)
{
    if (!d || !d->oversize)
        return false;
    snprintf(buf, len,
             "version %" PRId64 ": the document is %zu bytes as a policy message, over the %d MiB "
             "a node accepts",
             d->over_version, d->oversize, PCW_CONTROLLER_FRAME_MAX / (1024 * 1024));
    return true;
}

/* Sends c its office's document if it differs from what it has; returns
 * whether it did (the caller records the versions). A document the node
 * reverted is not sent again until the office's document changes. */
static bool push_if_needed(hub *h, conn *c)
{
    const tdoc *d = conn_doc(h, c);
    if (!d || !d->frame || strcmp(d->sha256, c->sent_sha) == 0)
        return false;
    if (c->ns->reverted_sha[0]) {
        if (strcmp(d->sha256, c->ns->reverted_sha) == 0)
            return false;
        c->ns->reverted_sha[0] = '\0'; /* the office's document moved on */
    }
    oframe_unref(c->policy_out);
    c->policy_out = oframe_ref(d->frame);
    conn_want_write(h, c);
    snprintf(c->sent_sha, sizeof(c->sent_sha), "%s", d->sha256);
    c->pending = d->version;
    sent_add(c->ns, d->version, d->sha256);
    atomic_fetch_add(&h->policies_sent, 1);
    return true;
}

static void set_last_error(conn *c, const char *e)
{
    free(c->last_error);
    c->last_error = e ? strdup(e) : NULL;
}

/* An office whose new document is too large keeps its previous one (from
 * old, the table being replaced), if it had one. */
static void keep_previous_docs(ptable *t, const ptable *old)
{
    for (size_t i = 0; i < t->ndocs; i++) {
        tdoc *d = &t->docs[i];
        const tdoc *prev = d->oversize ? ptable_doc(old, d->office_id) : NULL;
        if (!prev || !prev->frame)
            continue;
        d->version = prev->version;
        snprintf(d->sha256, sizeof(d->sha256), "%s", prev->sha256);
        d->frame = oframe_ref(prev->frame);
    }
}

static void install_table(hub *h, ptable *t)
{
    char e[256];
    keep_previous_docs(t, h->table);
    ptable_free(h->table);
    h->table = t;
    for (conn *c = h->conns; c; c = c->next) {
        if (!c->identified || c->state == C_CLOSING)
            continue;
        int64_t office = ptable_office(t, c->node_id);
        if (office)
            c->office_id = office;
        if (c->state != C_READY)
            continue;
        bool pushed = push_if_needed(h, c);
        bool over = doc_oversize_error(conn_doc(h, c), e, sizeof(e));
        if (over && (!c->last_error || strcmp(c->last_error, e) != 0))
            set_last_error(c, e);
        if (pushed || over)
            record_versions(h, c);
    }
    /* The nodes not connected now get it when they are: until then the
     * store shows it as pending for them. */
    for (size_t i = 0; i < t->ndocs; i++) {
        if (!t->docs[i].frame)
            continue;
        witem *w = witem_new(STORE_LINK_OFFICE_PENDING, 0, NULL);
        if (!w)
            break;
        w->op.office_id = t->docs[i].office_id;
        w->op.pending = t->docs[i].version;
        writer_push(h, w);
    }
}

/* --- messages from a node (lws thread) ------------------------------------------ */

/* The node's hello says safe apply took back the document of version
 * reverted_version: that document (the sha256 sent to it as that version,
 * or its office's document when that is the version) is not sent to it
 * again until its office's document changes, and the reason is its
 * last_error until it applies another version. */
static void note_revert(hub *h, conn *c, const pcw_msg *m, const tdoc *d)
{
    nstate *ns = c->ns;
    int64_t v = m->u.hello.reverted_version;
    const char *sha = sent_find(ns, v);
    char e[512], runs[48] = "its built-in policy";
    if (!sha && d && d->frame && d->version == v)
        sha = d->sha256;
    if (sha)
        snprintf(ns->reverted_sha, sizeof(ns->reverted_sha), "%s", sha);
    else
        ns->reverted_sha[0] = '\0'; /* not a document this controller knows: nothing to hold */
    ns->reverted_version = v;
    if (m->u.hello.has_policy)
        snprintf(runs, sizeof(runs), "version %" PRId64, m->u.hello.policy_version);
    snprintf(e, sizeof(e), "version %" PRId64 " reverted by safe apply (the node runs %s): %s", v,
             runs, m->u.hello.reverted_reason);
    free(ns->revert_error);
    ns->revert_error = strdup(e);
    hub_log("node '%s' reverted version %" PRId64 " (%s); %s", c->cn, v, m->u.hello.reverted_reason,
            sha ? "that document is not sent to it again until its office's document changes"
                : "this controller did not send it that version");
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
    /* The store's last error stands unless this hello proves otherwise (a
     * read; WAL readers do not wait). What the node enforces is what it
     * says: the built-in policy (0), or a version, even one this controller
     * did not send it since it started. */
    if (store_object_get(h->ls, STORE_NODE, c->node_id, &row) == STORE_OK) {
        const cJSON *le = cJSON_GetObjectItemCaseSensitive(row, "last_error");
        set_last_error(c, cJSON_IsString(le) ? le->valuestring : NULL);
    }
    cJSON_Delete(row);
    d = conn_doc(h, c);
    c->sent_sha[0] = '\0';
    c->enforced = 0;
    if (m->u.hello.has_policy) {
        c->enforced = m->u.hello.policy_version;
        snprintf(c->sent_sha, sizeof(c->sent_sha), "%s", m->u.hello.policy_sha256);
    }
    if (m->u.hello.has_reverted)
        note_revert(h, c, m, d);
    c->pending = 0;
    c->state = C_READY;
    bool pushed = push_if_needed(h, c);
    char over[256];
    if (m->u.hello.has_reverted || (c->ns->reverted_sha[0] && c->ns->revert_error)) {
        set_last_error(c, c->ns->revert_error); /* why it does not get its office's document */
    } else if (doc_oversize_error(d, over, sizeof(over))) {
        set_last_error(c, over);
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
        nstate *ns = c->ns;
        c->enforced = v;
        if (v >= c->pending)
            c->pending = 0;
        if (ns->revert_error && v == ns->reverted_version) {
            set_last_error(c, ns->revert_error); /* the reverted version: still why */
        } else {
            char over[256];
            free(ns->revert_error);
            ns->revert_error = NULL;
            ns->reverted_version = 0;
            /* An office stuck on its previous document still says why. */
            set_last_error(c, doc_oversize_error(conn_doc(h, c), over, sizeof(over)) ? over : NULL);
        }
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
        if (w->op.rejected) {
            /* Skipped by the store, acked with the rest: sending them again
             * would not make them valid. */
            atomic_fetch_add(&h->events_rejected, (uint64_t)w->op.rejected);
            if (ratelog_allow(&h->log_rejected))
                hub_log("node '%s': %zu malformed event%s skipped in a batch; the first: "
                        "$.events%s%s",
                        w->op.node ? w->op.node : "?", w->op.rejected,
                        w->op.rejected == 1 ? "" : "s", w->op.error[0] == '[' ? "" : ": ",
                        w->op.error);
        }
    }
    if (!c || c->state != C_READY)
        return;
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

static void enroll_answer(hub *h, ejob *j);

static void drain_inbox(hub *h)
{
    witem *res;
    ptable *t;
    kick *k;
    ejob *e;
    pthread_mutex_lock(&h->in_lock);
    res = h->in_res;
    h->in_res = h->in_res_tail = NULL;
    t = h->in_table;
    h->in_table = NULL;
    k = h->in_kicks;
    h->in_kicks = NULL;
    e = h->in_enroll;
    h->in_enroll = NULL;
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
    while (e) {
        ejob *next = e->next;
        enroll_answer(h, e);
        ejob_free(e);
        e = next;
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
    /* Only identified nodes count against the limit; a newer connection
     * of a node replaces its older one and takes no more room. */
    if (!ns->c && atomic_load(&h->connected) >= h->max_nodes) {
        atomic_fetch_add(&h->refused, 1);
        hub_log("refused node '%s' from %s: %u nodes connected already", c->cn, c->peer,
                h->max_nodes);
        conn_close(h, c, 1013 /* try again later */, "controller at its node limit");
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

/* Before a websocket upgrade is accepted (and holds anything): without a
 * client certificate that verified against the CA there is nothing to talk
 * about, so lws refuses it at once. Non-zero: refuse. */
static int upgrade_filter(hub *h, struct lws *wsi)
{
    SSL *ssl = lws_get_ssl(wsi);
    X509 *x = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    long vr = x ? SSL_get_verify_result(ssl) : X509_V_OK;
    char peer[64];
    if (x && vr == X509_V_OK)
        return 0;
    atomic_fetch_add(&h->refused, 1);
    if (ratelog_allow(&h->log_refused)) {
        if (!lws_get_peer_simple(wsi, peer, sizeof(peer)))
            snprintf(peer, sizeof(peer), "?");
        if (!x)
            hub_log("refused a websocket from %s: no client certificate (enroll the node first)",
                    peer);
        else
            hub_log("refused a websocket from %s: client certificate not accepted: %s (not "
                    "issued by this controller?)",
                    peer, X509_verify_cert_error_string(vr));
    }
    return -1;
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
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: return upgrade_filter(h, wsi);
    case LWS_CALLBACK_ESTABLISHED:
        if (!(c = conn_new(h, wsi)))
            return -1;
        pss->c = c;
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

/* Writes the response headers for p->resp. -1: close. */
static int http_headers(struct lws *wsi, http_pss *p, unsigned status)
{
    unsigned char buf[LWS_PRE + 512], *start = buf + LWS_PRE, *pos = start,
                                      *end = buf + sizeof(buf) - 1;
    if (lws_add_http_common_headers(wsi, status, "application/json", (lws_filepos_t)p->resp_len,
                                    &pos, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &pos, end) ||
        (p->retry_after && lws_add_http_header_by_name(wsi, (const unsigned char *)"retry-after:",
                                                       (const unsigned char *)"1", 1, &pos, end)) ||
        lws_finalize_write_http_header(wsi, start, &pos, end))
        return -1;
    return 0;
}

/* Sends the headers now and body (taken) when writable. -1: close. */
static int http_respond(struct lws *wsi, http_pss *p, unsigned status, char *body)
{
    if (!body)
        return -1;
    free(p->resp);
    p->resp = body;
    p->resp_len = strlen(body);
    if (http_headers(wsi, p, status) != 0)
        return -1;
    lws_callback_on_writable(wsi);
    return 0;
}

/* --- enrollment: the lws thread admits and answers, the enroller works ------------ */

/* The connection waiting for job id stopped waiting (it closed, or started
 * another request): its answer, when it comes, goes nowhere. */
static void enroll_detach(hub *h, http_pss *p)
{
    for (size_t i = 0; p->job && i < HUB_ENROLL_ACTIVE; i++)
        if (h->enroll_wait[i].id == p->job)
            h->enroll_wait[i].wsi = NULL;
    p->job = 0;
}

/* A free waiting slot (enrollments in progress are bounded), or -1; and
 * the rate: a bucket of HUB_ENROLL_RATE refilled at that many a second. On
 * refusal why says which. */
static int enroll_admit(hub *h, const char **why)
{
    int64_t t = mono_ms();
    int slot = -1;
    h->enroll_tokens += (double)(t - h->enroll_refill) * HUB_ENROLL_RATE / 1000.0;
    if (h->enroll_tokens > HUB_ENROLL_RATE)
        h->enroll_tokens = HUB_ENROLL_RATE;
    h->enroll_refill = t;
    for (int i = 0; i < HUB_ENROLL_ACTIVE && slot < 0; i++)
        if (!h->enroll_wait[i].id)
            slot = i;
    if (slot < 0) {
        *why = "too many enrollments in progress";
        return -1;
    }
    if (h->enroll_tokens < 1.0) {
        *why = "too many enrollments per second";
        return -1;
    }
    h->enroll_tokens -= 1.0;
    return slot;
}

/* Hands the request's body to the enroller; the answer comes through the
 * inbox (enroll_answer). */
static int enroll_dispatch(hub *h, struct lws *wsi, http_pss *p)
{
    const char *why = NULL;
    int slot = enroll_admit(h, &why);
    ejob *j;
    if (slot < 0) {
        char peer[64];
        atomic_fetch_add(&h->enrollments_refused, 1);
        if (ratelog_allow(&h->log_enroll_limit)) {
            if (!lws_get_peer_simple(wsi, peer, sizeof(peer)))
                snprintf(peer, sizeof(peer), "?");
            hub_log("refused an enrollment from %s: 429 %s", peer, why);
        }
        p->retry_after = true;
        return http_respond(wsi, p, 429,
                            json_error("too-many-requests",
                                       "%s (at most %d at once and %d a second); try again "
                                       "in a second",
                                       why, HUB_ENROLL_ACTIVE, HUB_ENROLL_RATE));
    }
    if (!(j = calloc(1, sizeof(*j))))
        return http_respond(wsi, p, 500, json_error("internal", "out of memory"));
    j->id = ++h->next_job;
    j->body = p->body; /* taken */
    j->len = p->len;
    p->body = NULL;
    p->len = p->cap = 0;
    if (!lws_get_peer_simple(wsi, j->peer, sizeof(j->peer)))
        snprintf(j->peer, sizeof(j->peer), "?");
    h->enroll_wait[slot].id = j->id;
    h->enroll_wait[slot].wsi = wsi;
    p->job = j->id;
    lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, HUB_ENROLL_WAIT_S);
    pthread_mutex_lock(&h->e_lock);
    if (h->eq_tail)
        h->eq_tail->next = j;
    else
        h->eq = j;
    h->eq_tail = j;
    pthread_cond_signal(&h->e_cond);
    pthread_mutex_unlock(&h->e_lock);
    return 0;
}

/* The enroller's answer to j (lws thread): to its connection if it still
 * waits; a node enrolled again loses its connection with the old
 * certificate. */
static void enroll_answer(hub *h, ejob *j)
{
    struct lws *wsi = NULL;
    for (size_t i = 0; i < HUB_ENROLL_ACTIVE; i++)
        if (h->enroll_wait[i].id == j->id) {
            wsi = h->enroll_wait[i].wsi;
            h->enroll_wait[i].id = 0;
            h->enroll_wait[i].wsi = NULL;
        }
    if (j->status == 200) {
        atomic_fetch_add(&h->enrollments, 1);
        hub_log("node '%s' enrolled from %s", j->node, j->peer);
        nstate *ns = j->node_id ? nmap_find(&h->nodes, j->node_id) : NULL;
        if (ns && ns->c)
            conn_close(h, ns->c, CLOSE_REFUSED, "node enrolled again with a new certificate");
    } else {
        atomic_fetch_add(&h->enrollments_refused, 1);
        if (ratelog_allow(&h->log_enroll))
            hub_log("refused an enrollment from %s: %d %s", j->peer, j->status,
                    j->resp ? j->resp : "");
    }
    if (!wsi)
        return;
    http_pss *p = lws_wsi_user(wsi);
    char *body = j->resp ? j->resp : json_error("internal", "out of memory");
    j->resp = NULL;
    if (!p || !body) {
        free(body);
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    p->job = 0;
    free(p->resp);
    p->resp = body;
    p->resp_len = strlen(body);
    p->status = (unsigned)j->status;
    p->hdr_pending = true;
    lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
    lws_callback_on_writable(wsi);
}

/* The enroller's work on one request (its own store handle; the only
 * thread that signs node certificates). */
static void enroll_run(hub *h, ejob *j)
{
    if (enroll_handle(h->es, h->o.ca, j->body ? j->body : "", j->len, &j->status, &j->resp) != 0) {
        j->status = 500;
        j->resp = NULL;
    }
    if (j->body) {
        explicit_bzero(j->body, j->len);
        free(j->body);
        j->body = NULL;
    }
    if (j->status == 200) {
        cJSON *r = cJSON_Parse(j->resp);
        const cJSON *node = cJSON_GetObjectItemCaseSensitive(r, "node");
        store_node_identity id;
        if (cJSON_IsString(node)) {
            snprintf(j->node, sizeof(j->node), "%s", node->valuestring);
            if (store_node_identity_get(h->es, node->valuestring, &id) == STORE_OK)
                j->node_id = id.id;
        }
        cJSON_Delete(r);
    }
}

static void *enroll_main(void *arg)
{
    hub *h = arg;
    for (;;) {
        pthread_mutex_lock(&h->e_lock);
        while (!h->eq && !h->e_stop)
            pthread_cond_wait(&h->e_cond, &h->e_lock);
        ejob *j = h->e_stop ? NULL : h->eq;
        if (j) {
            h->eq = j->next;
            if (!h->eq)
                h->eq_tail = NULL;
            j->next = NULL;
        }
        pthread_mutex_unlock(&h->e_lock);
        if (!j)
            break;
        enroll_run(h, j);
        pthread_mutex_lock(&h->in_lock);
        j->next = h->in_enroll;
        h->in_enroll = j;
        wake_lws(h);
        pthread_mutex_unlock(&h->in_lock);
    }
    return NULL;
}

static int http_body_done(hub *h, struct lws *wsi, http_pss *p)
{
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
    return enroll_dispatch(h, wsi, p);
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
        if (h)
            enroll_detach(h, p);
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
        if (p->too_large || p->resp || p->job)
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
        if (p->resp || p->job)
            return 0;
        return http_body_done(h, wsi, p);
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (!p->resp)
            return 0;
        if (p->hdr_pending) {
            /* An answer from the enroller: headers first, the body when
             * writable again. */
            p->hdr_pending = false;
            if (http_headers(wsi, p, p->status) != 0)
                return -1;
            lws_callback_on_writable(wsi);
            return 0;
        }
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
        if (p) {
            if (h)
                enroll_detach(h, p);
            http_reset(p);
        }
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

/* Puts the node-state records of a failed round back at the front of the
 * queue, in their order, for the next round; one that failed
 * HUB_WRITE_TRIES rounds, or any while the hub stops, is logged and
 * dropped. Takes retry (linked by next). */
static void writer_requeue(hub *h, witem *retry, witem *retry_tail, size_t nretry)
{
    if (!retry)
        return;
    pthread_mutex_lock(&h->w_lock);
    retry_tail->next = h->wq;
    h->wq = retry;
    if (!h->wq_tail)
        h->wq_tail = retry_tail;
    pthread_mutex_unlock(&h->w_lock);
    hub_log("%zu node-state record%s will be tried again", nretry, nretry == 1 ? "" : "s");
}

static const char *link_kind_name(store_link_kind k)
{
    switch (k) {
    case STORE_LINK_EVENTS: return "events";
    case STORE_LINK_HELLO: return "connected";
    case STORE_LINK_VERSIONS: return "versions";
    case STORE_LINK_STATS: return "stats";
    case STORE_LINK_SEEN: return "last seen";
    case STORE_LINK_GONE: return "disconnected";
    case STORE_LINK_OFFICE_PENDING: return "office pending";
    }
    return "?";
}

/* Stores batch in one transaction. Returns whether that failed (the
 * writer then pauses before its next round). */
static bool writer_apply(hub *h, witem *batch)
{
    size_t n = 0, nretry = 0;
    int rc = STORE_ERR;
    witem *retry = NULL, *retry_tail = NULL;
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
    pthread_mutex_lock(&h->w_lock);
    bool stopping = h->w_stop;
    pthread_mutex_unlock(&h->w_lock);
    for (witem *w = batch, *next; w; w = next) {
        next = w->next;
        w->op = h->w_ops[n++];
        if (rc != STORE_OK) {
            w->op.rc = rc;
            snprintf(w->op.error, sizeof(w->op.error), "%s", store_error_message(h->ws));
            if (w->op.kind != STORE_LINK_EVENTS) {
                /* Connected, pending, enforced would stay wrong: again. */
                if (!stopping && ++w->tries < HUB_WRITE_TRIES) {
                    w->next = NULL;
                    if (retry_tail)
                        retry_tail->next = w;
                    else
                        retry = w;
                    retry_tail = w;
                    nretry++;
                } else {
                    hub_log("node %" PRId64 ": %s record dropped after %u failed tries: %s",
                            w->op.node_id, link_kind_name(w->op.kind), w->tries, w->op.error);
                    witem_free(w);
                }
                continue;
            }
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
    writer_requeue(h, retry, retry_tail, nretry);
    return rc != STORE_OK;
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
        if (batch && writer_apply(h, batch)) {
            /* The database refused the round: give it a moment (new work
             * queues meanwhile) unless the hub stops. */
            int64_t until = mono_ms() + HUB_WRITE_RETRY_MS;
            pthread_mutex_lock(&h->w_lock);
            while (!h->w_stop && mono_ms() < until) {
                struct timespec dl = deadline_in(until - mono_ms());
                pthread_cond_timedwait(&h->w_cond, &h->w_lock, &dl);
            }
            pthread_mutex_unlock(&h->w_lock);
        }
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

/* Whether the oversized document of office id at revision rev is news (it
 * is logged once, not at every rebuild). Compiler thread. */
static bool over_first(hub *h, int64_t id, int64_t rev)
{
    for (size_t i = 0; i < HUB_OVER_LOGGED; i++)
        if (h->over_logged[i].office == id && h->over_logged[i].rev == rev)
            return false;
    h->over_logged[h->over_next].office = id;
    h->over_logged[h->over_next].rev = rev;
    h->over_next = (h->over_next + 1) % HUB_OVER_LOGGED;
    return true;
}

/* Compiles office id from m into t->docs[t->ndocs++]; a compile error is
 * logged (once per distinct text) and the office left out, so its nodes keep
 * what they run. A document whose message would be larger than a node
 * accepts is logged the same way and entered without a frame: the lws
 * thread keeps the office's previous one and tells its nodes why. */
static int table_add(hub *h, ptable *t, const model *m, int64_t id, char *last_err,
                     size_t last_errlen)
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
    size_t doclen = strlen(doc);
    free(doc);
    if (rc != 0)
        return -1;
    tdoc *d = &t->docs[t->ndocs];
    d->office_id = id;
    d->version = m->revision;
    snprintf(d->sha256, sizeof(d->sha256), "%s", sha);
    if (f.len > PCW_CONTROLLER_FRAME_MAX) {
        char e[COMPILER_ERR_MAX];
        snprintf(e, sizeof(e),
                 "office %" PRId64 " at revision %" PRId64 ": the document is %zu bytes (%zu as a "
                 "policy message), over the %d MiB a node accepts; its nodes keep the previous "
                 "document",
                 id, m->revision, doclen, f.len, PCW_CONTROLLER_FRAME_MAX / (1024 * 1024));
        if (over_first(h, id, m->revision))
            hub_log("%s", e);
        d->oversize = f.len;
        d->over_version = m->revision;
        d->sha256[0] = '\0';
        pcw_frame_free(&f);
        t->ndocs++;
        return 0;
    }
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
        if (!canary && table_add(h, t, &mr, id, last_err, last_errlen) != 0)
            goto done;
    }
    for (size_t i = 0; have_c && i < plan.ncanary; i++)
        if (model_has_office(&mc, plan.canary_offices[i]) &&
            table_add(h, t, &mc, plan.canary_offices[i], last_err, last_errlen) != 0)
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
    pthread_mutex_init(&h->e_lock, NULL);
    pthread_cond_init(&h->e_cond, NULL);
    h->locks_ready = true;
    h->enroll_tokens = HUB_ENROLL_RATE;
    h->enroll_refill = mono_ms();
    h->c_dirty = true; /* the first table */
    if (!(h->w_ops = calloc(HUB_WRITE_OPS, sizeof(*h->w_ops)))) {
        snprintf(err, errlen, "hub: out of memory");
        goto fail;
    }
    if (store_open(o->db_path, &h->ls, err, errlen) != STORE_OK ||
        store_open(o->db_path, &h->ws, err, errlen) != STORE_OK ||
        store_open(o->db_path, &h->cs, err, errlen) != STORE_OK ||
        store_open(o->db_path, &h->es, err, errlen) != STORE_OK)
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
    if (pthread_create(&h->enroll_thread, NULL, enroll_main, h) != 0) {
        snprintf(err, errlen, "hub: cannot start the enrollment thread");
        goto fail;
    }
    h->enroll_started = true;
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
    out->events_rejected = atomic_load(&h->events_rejected);
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
     * the writer; no new enrollments), then the enroller and the compiler,
     * then the writer, which stores what is queued before it returns. */
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
    if (h->enroll_started) {
        pthread_mutex_lock(&h->e_lock);
        h->e_stop = true;
        pthread_cond_signal(&h->e_cond);
        pthread_mutex_unlock(&h->e_lock);
        pthread_join(h->enroll_thread, NULL);
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
    while (h->eq) {
        ejob *j = h->eq;
        h->eq = j->next;
        ejob_free(j);
    }
    while (h->in_enroll) {
        ejob *j = h->in_enroll;
        h->in_enroll = j->next;
        ejob_free(j);
    }
    ptable_free(h->in_table);
    ptable_free(h->table);
    nmap_free(&h->nodes);
    store_close(h->es);
    store_close(h->cs);
    store_close(h->ws);
    store_close(h->ls);
    if (h->locks_ready) {
        pthread_cond_destroy(&h->e_cond);
        pthread_mutex_destroy(&h->e_lock);
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
