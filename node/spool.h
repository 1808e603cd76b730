/* spool.h - the node's crash-safe event spool (docs/link.md, docs/node.md):
 * an SQLite file (WAL) where every event waits, under a sequence number of
 * its own (1, 2, 3 ... never reused), until the controller acknowledges it.
 *
 * Any proxy thread adds events (spool_add: into memory, under a lock); the
 * agent's loop commits them (spool_flush, one transaction for all queued,
 * every few milliseconds), reads batches to ship and deletes what was
 * acknowledged. A spool past its bound drops its oldest events and counts
 * them; the count is persisted and reported.
 *
 * Durability: committed events survive a crash of the daemon (kill -9);
 * events not yet flushed (at most one flush interval's worth) do not, and
 * a power loss may also take the last commits (synchronous=NORMAL).
 */
#ifndef PORTCULLIS_SPOOL_H
#define PORTCULLIS_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#define SPOOL_WUR __attribute__((warn_unused_result))

/* Events queued in memory before spool_add starts dropping (counted). */
#define SPOOL_QUEUE_MAX 100000

typedef struct spool spool;

/* Opens or creates the spool at path, holding at most max_events (>= 1000).
 * Returns 0 and *out, or -1 with err. */
SPOOL_WUR int spool_open(const char *path, int64_t max_events, spool **out, char *err,
                         size_t errlen);
/* Flushes what is queued, closes. NULL is fine. */
void spool_close(spool *s);

/* Queues one event (JSON object text as ev_format writes it, len bytes,
 * without the newline). Any thread; never blocks on I/O. */
void spool_add(spool *s, const char *json, size_t len);
/* Number of events queued and not yet flushed. Any thread. */
size_t spool_queued(spool *s);
/* Commits the queued events (numbering them) in one transaction and drops
 * the oldest beyond max_events. Returns how many were committed, or -1 (the
 * events stay queued; err says why). One thread (the agent's loop). */
int spool_flush(spool *s, char *err, size_t errlen);

/* A batch to ship: events with seq > after, in order. */
typedef struct spool_batch {
    size_t n;
    int64_t *seqs;
    char **json;
    size_t *lens;
} spool_batch;
/* Reads at most max_n events and about max_bytes of them (at least one)
 * with seq > after. Returns 0 (n may be 0), or -1 with err. */
SPOOL_WUR int spool_read(spool *s, int64_t after, size_t max_n, size_t max_bytes,
                         spool_batch *out, char *err, size_t errlen);
void spool_batch_free(spool_batch *b);
/* Deletes every event with seq <= seq (acknowledged). */
SPOOL_WUR int spool_ack(spool *s, int64_t seq, char *err, size_t errlen);

/* The highest seq ever given (0 before the first), events in the file, and
 * events dropped since the spool was made (full spool or full queue). */
int64_t spool_last_seq(spool *s);
int64_t spool_pending(spool *s);
int64_t spool_dropped(spool *s);

/* The controller has stored up to controller_seq for this node and that is
 * beyond spool_last_seq (the spool was lost): renumber so every unacked
 * event, and every later one, has a seq above controller_seq. */
SPOOL_WUR int spool_rebase(spool *s, int64_t controller_seq, char *err, size_t errlen);

#endif
