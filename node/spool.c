/* spool.c - the node's event spool: proxy threads queue events in memory,
 * the agent's loop commits them to SQLite in one transaction per flush and
 * deletes them once the controller has acknowledged them. AUTOINCREMENT
 * keeps sequence numbers from ever being reused, even after the newest
 * events were acknowledged and deleted. */
#include "spool.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct spool_item {
    char *json;
    size_t len;
} spool_item;

struct spool {
    sqlite3 *db;
    int64_t max_events;

    /* Shared with the proxy threads. */
    pthread_mutex_t lock;
    spool_item *queue;
    size_t nqueue, capqueue;
    int64_t queue_dropped; /* dropped at a full queue, not yet persisted */

    /* Only touched by the flushing thread, read under lock. */
    int64_t last_seq, pending, dropped;

    sqlite3_stmt *ins, *sel, *del_acked, *del_oldest, *set_dropped;
};

static const char schema_sql[] = "CREATE TABLE IF NOT EXISTS events("
                                 " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                                 " body TEXT NOT NULL);"
                                 "CREATE TABLE IF NOT EXISTS meta("
                                 " key TEXT PRIMARY KEY,"
                                 " value INTEGER NOT NULL);";

static void db_err(spool *s, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "spool: %s: %s", what, sqlite3_errmsg(s->db));
}

/* One integer from a query with no parameters; 0 when there is no row. */
static int query_int(spool *s, const char *sql, int64_t *out, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1;
    *out = 0;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        db_err(s, sql, err, errlen);
        goto done;
    }
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE) {
        db_err(s, sql, err, errlen);
        goto done;
    }
    ret = 0;
done:
    sqlite3_finalize(st);
    return ret;
}

static int spool_open_(const char *path, int64_t max_events, spool **out, char *err, size_t errlen);

int spool_open(const char *path, int64_t max_events, spool **out, char *err, size_t errlen)
{
    char e[768];
    if (spool_open_(path, max_events, out, e, sizeof(e)) == 0)
        return 0;
    /* Every message names the file. */
    snprintf(err, errlen, "spool %s: %s", path, strncmp(e, "spool: ", 7) == 0 ? e + 7 : e);
    return -1;
}

static int spool_open_(const char *path, int64_t max_events, spool **out, char *err, size_t errlen)
{
    int ret = -1;
    *out = NULL;
    if (max_events < 1000) {
        snprintf(err, errlen, "spool: a spool holds at least 1000 events (asked for %lld)",
                 (long long)max_events);
        return -1;
    }
    spool *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "spool: out of memory");
        return -1;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->max_events = max_events;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "%s", s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto done;
    }
    sqlite3_busy_timeout(s->db, 5000);
    /* WAL + NORMAL: a commit is in the log before the call returns, so a
     * killed process keeps it; only a power loss may cost the last ones. */
    int64_t dummy;
    if (query_int(s, "PRAGMA journal_mode=WAL", &dummy, err, errlen) != 0)
        goto done;
    if (sqlite3_exec(s->db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK) {
        db_err(s, path, err, errlen);
        goto done;
    }
    if (query_int(s, "SELECT seq FROM sqlite_sequence WHERE name='events'", &s->last_seq, err,
                  errlen) != 0 ||
        query_int(s, "SELECT count(*) FROM events", &s->pending, err, errlen) != 0 ||
        query_int(s, "SELECT value FROM meta WHERE key='dropped'", &s->dropped, err, errlen) != 0)
        goto done;
    if (sqlite3_prepare_v2(s->db, "INSERT INTO events(body) VALUES(?)", -1, &s->ins, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                           -1, &s->sel, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "DELETE FROM events WHERE seq <= ?", -1, &s->del_acked, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v2(s->db,
                           "DELETE FROM events WHERE seq IN"
                           " (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                           -1, &s->del_oldest, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO meta(key, value) VALUES('dropped', ?)",
                           -1, &s->set_dropped, NULL) != SQLITE_OK) {
        db_err(s, "preparing statements", err, errlen);
        goto done;
    }
    *out = s;
    ret = 0;
done:
    if (ret != 0) {
        sqlite3_finalize(s->ins);
        sqlite3_finalize(s->sel);
        sqlite3_finalize(s->del_acked);
        sqlite3_finalize(s->del_oldest);
        sqlite3_finalize(s->set_dropped);
        sqlite3_close(s->db);
        pthread_mutex_destroy(&s->lock);
        free(s);
    }
    return ret;
}

void spool_close(spool *s)
{
    if (!s)
        return;
    char err[256];
    if (spool_flush(s, err, sizeof(err)) < 0)
        fprintf(stderr, "portcullis-node: %s (queued events lost)\n", err);
    for (size_t i = 0; i < s->nqueue; i++)
        free(s->queue[i].json);
    free(s->queue);
    sqlite3_finalize(s->ins);
    sqlite3_finalize(s->sel);
    sqlite3_finalize(s->del_acked);
    sqlite3_finalize(s->del_oldest);
    sqlite3_finalize(s->set_dropped);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void spool_add(spool *s, const char *json, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, json, len);
        copy[len] = '\0';
    }
    pthread_mutex_lock(&s->lock);
    if (!copy || s->nqueue >= SPOOL_QUEUE_MAX) {
        s->queue_dropped++;
        goto done;
    }
    if (s->nqueue == s->capqueue) {
        size_t cap = s->capqueue ? s->capqueue * 2 : 256;
        spool_item *q = realloc(s->queue, cap * sizeof(*q));
        if (!q) {
            s->queue_dropped++;
            goto done;
        }
        s->queue = q;
        s->capqueue = cap;
    }
    s->queue[s->nqueue].json = copy;
    s->queue[s->nqueue].len = len;
    s->nqueue++;
    copy = NULL;
done:
    pthread_mutex_unlock(&s->lock);
    free(copy);
}

size_t spool_queued(spool *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->nqueue;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* Puts taken items back in front of whatever was queued meanwhile (a flush
 * that failed); what does not fit is dropped and counted. */
static void requeue(spool *s, spool_item *items, size_t n, int64_t qdropped)
{
    pthread_mutex_lock(&s->lock);
    s->queue_dropped += qdropped;
    size_t total = n + s->nqueue;
    spool_item *q = malloc((total ? total : 1) * sizeof(*q));
    if (!q) {
        for (size_t i = 0; i < n; i++)
            free(items[i].json);
        s->queue_dropped += (int64_t)n;
    } else {
        if (n)
            memcpy(q, items, n * sizeof(*q));
        if (s->nqueue)
            memcpy(q + n, s->queue, s->nqueue * sizeof(*q));
        free(s->queue);
        s->queue = q;
        s->nqueue = total;
        s->capqueue = total ? total : 1;
        while (s->nqueue > SPOOL_QUEUE_MAX) {
            free(s->queue[--s->nqueue].json);
            s->queue_dropped++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    free(items);
}

int spool_flush(spool *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->lock);
    spool_item *items = s->queue;
    size_t n = s->nqueue;
    int64_t qdropped = s->queue_dropped;
    s->queue = NULL;
    s->nqueue = s->capqueue = 0;
    s->queue_dropped = 0;
    pthread_mutex_unlock(&s->lock);

    if (n == 0 && qdropped == 0) {
        free(items);
        return 0;
    }
    int ret = -1;
    bool in_tx = false;
    int64_t last_seq = s->last_seq, pending = s->pending, dropped = s->dropped + qdropped;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        db_err(s, "begin", err, errlen);
        goto done;
    }
    in_tx = true;
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(s->ins);
        sqlite3_bind_text(s->ins, 1, items[i].json, (int)items[i].len, SQLITE_STATIC);
        if (sqlite3_step(s->ins) != SQLITE_DONE) {
            db_err(s, "insert", err, errlen);
            goto done;
        }
        last_seq = sqlite3_last_insert_rowid(s->db);
        pending++;
    }
    if (pending > s->max_events) {
        sqlite3_reset(s->del_oldest);
        sqlite3_bind_int64(s->del_oldest, 1, pending - s->max_events);
        if (sqlite3_step(s->del_oldest) != SQLITE_DONE) {
            db_err(s, "dropping the oldest events", err, errlen);
            goto done;
        }
        int64_t gone = sqlite3_changes(s->db);
        pending -= gone;
        dropped += gone;
    }
    if (dropped != s->dropped) {
        sqlite3_reset(s->set_dropped);
        sqlite3_bind_int64(s->set_dropped, 1, dropped);
        if (sqlite3_step(s->set_dropped) != SQLITE_DONE) {
            db_err(s, "counting dropped events", err, errlen);
            goto done;
        }
    }
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        db_err(s, "commit", err, errlen);
        goto done;
    }
    in_tx = false;
    ret = (int)n;
done:
    sqlite3_reset(s->ins);
    sqlite3_reset(s->del_oldest);
    sqlite3_reset(s->set_dropped);
    if (ret < 0) {
        if (in_tx)
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        requeue(s, items, n, qdropped);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        free(items[i].json);
    free(items);
    pthread_mutex_lock(&s->lock);
    s->last_seq = last_seq;
    s->pending = pending;
    s->dropped = dropped;
    pthread_mutex_unlock(&s->lock);
    return ret;
}

void spool_batch_free(spool_batch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++)
        free(b->json[i]);
    free(b->json);
    free(b->seqs);
    free(b->lens);
    memset(b, 0, sizeof(*b));
}

int spool_read(spool *s, int64_t after, size_t max_n, size_t max_bytes, spool_batch *out, char *err,
               size_t errlen)
{
    int ret = -1;
    memset(out, 0, sizeof(*out));
    if (max_n == 0)
        return 0;
    size_t cap = max_n < 1024 ? max_n : 1024;
    out->seqs = malloc(cap * sizeof(*out->seqs));
    out->json = malloc(cap * sizeof(*out->json));
    out->lens = malloc(cap * sizeof(*out->lens));
    if (!out->seqs || !out->json || !out->lens) {
        snprintf(err, errlen, "spool: out of memory");
        goto done;
    }
    sqlite3_reset(s->sel);
    sqlite3_bind_int64(s->sel, 1, after);
    sqlite3_bind_int64(s->sel, 2, (sqlite3_int64)max_n);
    size_t bytes = 0;
    int rc = SQLITE_DONE;
    while ((out->n == 0 || bytes < max_bytes) && (rc = sqlite3_step(s->sel)) == SQLITE_ROW) {
        if (out->n == cap) {
            size_t ncap = cap * 2;
            int64_t *seqs = realloc(out->seqs, ncap * sizeof(*seqs));
            if (seqs)
                out->seqs = seqs;
            char **json = realloc(out->json, ncap * sizeof(*json));
            if (json)
                out->json = json;
            size_t *lens = realloc(out->lens, ncap * sizeof(*lens));
            if (lens)
                out->lens = lens;
            if (!seqs || !json || !lens) {
                snprintf(err, errlen, "spool: out of memory");
                goto done;
            }
            cap = ncap;
        }
        const unsigned char *body = sqlite3_column_text(s->sel, 1);
        size_t len = (size_t)sqlite3_column_bytes(s->sel, 1);
        char *copy = malloc(len + 1);
        if (!copy) {
            snprintf(err, errlen, "spool: out of memory");
            goto done;
        }
        if (len)
            memcpy(copy, body, len);
        copy[len] = '\0';
        out->seqs[out->n] = sqlite3_column_int64(s->sel, 0);
        out->json[out->n] = copy;
        out->lens[out->n] = len;
        out->n++;
        bytes += len;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        db_err(s, "reading events", err, errlen);
        goto done;
    }
    ret = 0;
done:
    sqlite3_reset(s->sel);
    if (ret != 0 || out->n == 0)
        spool_batch_free(out);
    return ret;
}

int spool_ack(spool *s, int64_t seq, char *err, size_t errlen)
{
    sqlite3_reset(s->del_acked);
    sqlite3_bind_int64(s->del_acked, 1, seq);
    int rc = sqlite3_step(s->del_acked);
    int64_t gone = sqlite3_changes(s->db);
    sqlite3_reset(s->del_acked);
    if (rc != SQLITE_DONE) {
        db_err(s, "deleting acknowledged events", err, errlen);
        return -1;
    }
    pthread_mutex_lock(&s->lock);
    s->pending -= gone;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int64_t spool_last_seq(spool *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t v = s->last_seq;
    pthread_mutex_unlock(&s->lock);
    return v;
}

int64_t spool_pending(spool *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t v = s->pending;
    pthread_mutex_unlock(&s->lock);
    return v;
}

int64_t spool_dropped(spool *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t v = s->dropped + s->queue_dropped;
    pthread_mutex_unlock(&s->lock);
    return v;
}

/* One statement with up to two integer parameters, run to completion. */
static int exec_int2(spool *s, const char *sql, int64_t a, int64_t b, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        goto fail;
    int np = sqlite3_bind_parameter_count(st);
    if (np >= 1)
        sqlite3_bind_int64(st, 1, a);
    if (np >= 2)
        sqlite3_bind_int64(st, 2, b);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    ret = 0;
    goto done;
fail:
    db_err(s, "renumbering", err, errlen);
done:
    sqlite3_finalize(st);
    return ret;
}

int spool_rebase(spool *s, int64_t controller_seq, char *err, size_t errlen)
{
    int64_t last_seq = spool_last_seq(s);
    if (controller_seq <= last_seq)
        return 0;
    int ret = -1;
    int64_t min_seq = 0, max_seq = 0, new_last = controller_seq;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        db_err(s, "begin", err, errlen);
        return -1;
    }
    if (query_int(s, "SELECT min(seq) FROM events", &min_seq, err, errlen) != 0 ||
        query_int(s, "SELECT max(seq) FROM events", &max_seq, err, errlen) != 0)
        goto done;
    if (max_seq > 0) {
        /* controller_seq > last_seq >= max_seq, so every new number is above
         * every old one and the update never collides with itself. */
        int64_t shift = controller_seq - min_seq + 1;
        if (exec_int2(s, "UPDATE events SET seq = seq + ?", shift, 0, err, errlen) != 0)
            goto done;
        new_last = max_seq + shift;
    }
    if (exec_int2(s, "UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", new_last, 0, err,
                  errlen) != 0)
        goto done;
    if (sqlite3_changes(s->db) == 0 &&
        exec_int2(s, "INSERT INTO sqlite_sequence(name, seq) VALUES('events', ?)", new_last, 0, err,
                  errlen) != 0)
        goto done;
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        db_err(s, "commit", err, errlen);
        goto done;
    }
    pthread_mutex_lock(&s->lock);
    s->last_seq = new_last;
    pthread_mutex_unlock(&s->lock);
    ret = 0;
done:
    if (ret != 0)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}
