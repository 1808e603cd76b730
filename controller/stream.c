/* stream.c - server-sent events of newly stored events (stream.h). */
#include "stream.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Events read per store query. */
#define STREAM_BATCH 200
/* Keep-alive comment after this long without a message. */
#define STREAM_KEEPALIVE_MS 15000
/* The ticker's period: waiting streams are resumed this often. */
#define STREAM_TICK_MS 5000

typedef struct stream stream;

struct stream_hub {
    stream_store_fn get_store;
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t ticker;
    bool stop, started;
    uint64_t gen;    /* bumped by every wake */
    stream *waiting; /* suspended streams */
    atomic_uint open;
};

struct stream {
    stream_hub *h;
    struct MHD_Connection *c;
    store_event_query q;
    char *group, *type, *node; /* owned copies of q's strings */
    int64_t after;
    char *buf; /* formatted, not yet sent: buf[off..len) */
    size_t len, off, cap;
    int64_t last_write_ms;
    stream *next; /* in h->waiting */
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Takes the waiting list under h->lock and resumes its connections after
 * letting go of it: a resumed stream may run (and be freed) at once, and
 * libmicrohttpd takes its own locks in MHD_resume_connection. A suspended
 * connection is never closed, so the pointers stay good until resumed. */
static void resume_all(stream_hub *h)
{
    struct MHD_Connection *few[64], **conns = few;
    size_t n = 0, cap = sizeof(few) / sizeof(few[0]);
    pthread_mutex_lock(&h->lock);
    for (stream *s = h->waiting; s; s = s->next)
        n++;
    if (n > cap && !(conns = malloc(n * sizeof(*conns)))) {
        conns = few; /* the rest wait for the next tick */
        n = cap;
    }
    size_t i = 0;
    while (h->waiting && i < n) {
        stream *s = h->waiting;
        h->waiting = s->next;
        conns[i++] = s->c;
    }
    pthread_mutex_unlock(&h->lock);
    for (size_t k = 0; k < i; k++)
        MHD_resume_connection(conns[k]);
    if (conns != few)
        free(conns);
}

void stream_wake(stream_hub *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->gen++;
    pthread_mutex_unlock(&h->lock);
    resume_all(h);
}

static void *ticker(void *arg)
{
    stream_hub *h = arg;
    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += STREAM_TICK_MS / 1000;
        pthread_cond_timedwait(&h->cond, &h->lock, &ts);
        pthread_mutex_unlock(&h->lock);
        resume_all(h);
        pthread_mutex_lock(&h->lock);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

stream_hub *stream_hub_new(stream_store_fn get_store, void *arg)
{
    stream_hub *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->get_store = get_store;
    h->arg = arg;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    if (pthread_create(&h->ticker, NULL, ticker, h) != 0) {
        pthread_cond_destroy(&h->cond);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return NULL;
    }
    h->started = true;
    return h;
}

void stream_hub_stop(stream_hub *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stop = true;
    h->gen++;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
    resume_all(h);
}

void stream_hub_free(stream_hub *h)
{
    if (!h)
        return;
    stream_hub_stop(h);
    if (h->started)
        pthread_join(h->ticker, NULL);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

unsigned stream_count(stream_hub *h)
{
    return atomic_load(&h->open);
}

static bool put(stream *s, const char *p, size_t n)
{
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n)
            cap *= 2;
        char *b = realloc(s->buf, cap);
        if (!b)
            return false;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    return true;
}

/* Reads the next events into s->buf as SSE messages; false on failure. */
static bool fill(stream *s)
{
    store *st = s->h->get_store(s->h->arg);
    cJSON *rows = NULL;
    int64_t last = 0;
    if (!st || store_events_last_id(st, &last) != STORE_OK)
        return false;
    if (last <= s->after)
        return true;
    if (store_events_since(st, &s->q, s->after, last, STREAM_BATCH, &rows) != STORE_OK)
        return false;
    /* Fewer than a batch: everything up to last was seen, matching or not,
     * so the next query starts there. */
    if (cJSON_GetArraySize(rows) < STREAM_BATCH)
        s->after = last;
    bool ok = true;
    for (cJSON *e = rows->child; e && ok; e = e->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        char *txt = cJSON_PrintUnformatted(e);
        char head[64];
        int n = snprintf(head, sizeof(head),
                         "id: %lld\nevent: event\ndata: ", (long long)id->valuedouble);
        /* cJSON escapes control characters: the data is one line. */
        ok = txt && put(s, head, (size_t)n) && put(s, txt, strlen(txt)) && put(s, "\n\n", 2);
        free(txt);
        if (ok && (int64_t)id->valuedouble > s->after)
            s->after = (int64_t)id->valuedouble;
    }
    cJSON_Delete(rows);
    return ok;
}

static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max)
{
    stream *s = cls;
    stream_hub *h = s->h;
    (void)pos;
    if (s->off == s->len) {
        s->off = s->len = 0;
        pthread_mutex_lock(&h->lock);
        uint64_t gen = h->gen;
        bool stop = h->stop;
        pthread_mutex_unlock(&h->lock);
        if (stop)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (!fill(s))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (s->len == 0 && mono_ms() - s->last_write_ms >= STREAM_KEEPALIVE_MS)
            put(s, ": keep-alive\n\n", 14);
        if (s->len == 0) {
            /* Nothing to send: wait, unless a wake came while we read. */
            pthread_mutex_lock(&h->lock);
            if (h->gen == gen && !h->stop) {
                s->next = h->waiting;
                h->waiting = s;
                MHD_suspend_connection(s->c);
            }
            pthread_mutex_unlock(&h->lock);
            return 0;
        }
    }
    size_t n = s->len - s->off;
    if (n > max)
        n = max;
    memcpy(out, s->buf + s->off, n);
    s->off += n;
    s->last_write_ms = mono_ms();
    return (ssize_t)n;
}

/* Never on the waiting list here: libmicrohttpd only ends a connection it
 * is processing, and a waiting one is suspended until resume_all has taken
 * it off the list. So no lock: the free callback may run under
 * libmicrohttpd's own locks. */
static void release(void *cls)
{
    stream *s = cls;
    atomic_fetch_sub(&s->h->open, 1);
    free(s->group);
    free(s->type);
    free(s->node);
    free(s->buf);
    free(s);
}

static bool dup_opt(const char *in, char **out)
{
    *out = NULL;
    return !in || (*out = strdup(in));
}

struct MHD_Response *stream_response(stream_hub *h, struct MHD_Connection *c,
                                     const store_event_query *q, int64_t after_id)
{
    stream *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->h = h;
    s->c = c;
    s->after = after_id;
    s->last_write_ms = mono_ms();
    if (!dup_opt(q->group, &s->group) || !dup_opt(q->type, &s->type) ||
        !dup_opt(q->node, &s->node)) {
        free(s->group);
        free(s->type);
        free(s);
        return NULL;
    }
    s->q.office_id = q->office_id;
    s->q.region_id = q->region_id;
    s->q.group = s->group;
    s->q.type = s->type;
    s->q.node = s->node;
    /* A first comment tells the client the stream is open. */
    put(s, ": portcullis events\n\n", 21);
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, reader, s, release);
    if (!r) {
        free(s->group);
        free(s->type);
        free(s->node);
        free(s->buf);
        free(s);
        return NULL;
    }
    atomic_fetch_add(&h->open, 1);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    return r;
}
