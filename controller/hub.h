/* hub.h - the node hub (docs/link.md): a libwebsockets server on its own
 * port and thread, mutual TLS with the controller's CA, subprotocol
 * "portcullis.v1"; "POST /enroll" on the same port without a client
 * certificate. It pushes each node its office's document at the released
 * revision, records acks, takes events with credit-based pacing and hands
 * them to a writer thread that stores them in group transactions.
 *
 * Threads: the lws service thread (connections, never waits on SQLite
 * writes), the writer (store_link_apply, retention), the compiler (builds
 * every office's document when the policy or the rollout changes), the
 * enroller (answers POST /enroll: the token's transaction and the signing).
 * Each has its own store handle.
 */
#ifndef PORTCULLIS_HUB_H
#define PORTCULLIS_HUB_H

#include "ca.h"

#include <stddef.h>
#include <stdint.h>

#define HUB_WUR __attribute__((warn_unused_result))

typedef struct hub hub;

typedef struct hub_options {
    const char *listen;  /* "ADDR:PORT"; port 0 picks one */
    const char *db_path; /* the store the hub opens its handles on */
    ca *ca;              /* kept by the caller for the hub's life */
    unsigned max_nodes;  /* identified nodes at once; 0 = 10000 */
    unsigned ping_s;     /* ping interval; 0 = 30 */
    /* Events held in memory (received, not yet stored), all nodes
     * together; credit is granted from it. 0 = 25000 (as parsed JSON an
     * event takes about 2.5 KiB). */
    unsigned event_budget;
    /* Retention: events older than this many days (0 = keep) and beyond
     * this count (0 = no limit) are deleted by the writer. */
    unsigned retention_days;
    int64_t retention_max;
} hub_options;

/* Opens the store handles, binds, starts the threads. Returns 0 and *out,
 * or -1 with err. */
HUB_WUR int hub_start(const hub_options *o, hub **out, char *err, size_t errlen);
/* The port it listens on. */
uint16_t hub_port(const hub *h);
/* The policy or the rollout may have changed: recompile and push. Any
 * thread; cheap; coalesced. */
void hub_notify_policy(hub *h);
/* Node node_id was revoked or re-enrolled: close its connection now. Any
 * thread. */
void hub_kick_node(hub *h, int64_t node_id);

/* fn(arg) is called on the writer thread after each transaction that stored
 * new events (the live tail wakes its streams). Set it before events can
 * arrive: right after hub_start. fn NULL removes it; when that call returns
 * the old fn is not running and will not run again. */
void hub_set_stored_listener(hub *h, void (*fn)(void *arg), void *arg);

/* Counters for GET /api/v1/hub and the benchmark. */
typedef struct hub_stats {
    uint64_t connected;       /* nodes connected now */
    uint64_t refused;         /* upgrades, identities or connections over the limit refused */
    uint64_t bad_messages;    /* errors answered and connections closed */
    uint64_t events_received; /* in batches accepted */
    uint64_t events_stored;   /* new rows */
    uint64_t events_rejected; /* malformed events skipped in stored batches */
    uint64_t events_held;     /* in memory now */
    uint64_t policies_sent;
    uint64_t acks_applied, acks_failed;
    uint64_t enrollments, enrollments_refused; /* refused includes 429 (rate limit) */
} hub_stats;
void hub_get_stats(hub *h, hub_stats *out);

/* Stops the threads, closes every connection, frees h. NULL is fine. */
void hub_stop(hub *h);

#endif
