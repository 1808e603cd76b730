/* tls_probe.h - for TLS 1.3, where the server certificate travels encrypted,
 * the node verifies the server itself: its own TLS connection (OpenSSL,
 * non-blocking, on the caller's libuv loop) to the same address and port with
 * the same server name, chain and name verified against a tls_verify_store.
 *
 * Results are cached per (address, port, name) for a configured time, shared
 * by all proxy threads (the cache is locked; probes run on the loop of the
 * thread that asked). Concurrent requests for the same key on the same loop
 * share one probe.
 */
#ifndef PORTCULLIS_TLS_PROBE_H
#define PORTCULLIS_TLS_PROBE_H

#include "tls_verify.h"

#include <stdbool.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct tls_probe_cache tls_probe_cache;

typedef struct tls_probe_config {
    unsigned ttl_ok_s;     /* how long a success is trusted */
    unsigned ttl_fail_s;   /* how long a failure is remembered */
    unsigned timeout_ms;   /* connect + handshake deadline */
    size_t max_entries;    /* oldest entries are evicted past this */
} tls_probe_config;

/* store is borrowed and must outlive the cache. NULL on allocation failure. */
tls_probe_cache *tls_probe_cache_new(tls_verify_store *store, const tls_probe_config *cfg);
void tls_probe_cache_free(tls_probe_cache *c);

/* Called once, on the loop that started the probe. ok true when the server
 * presented a certificate that verifies for name; otherwise reason says why
 * ("certificate-untrusted: ...", "probe-timeout", "probe-connect: ..."). */
typedef void (*tls_probe_cb)(void *arg, bool ok, const char *reason);

typedef struct tls_probe_req tls_probe_req;

/* Returns 1 and fills *ok/reason without calling cb when the answer is
 * cached; 0 when a probe was started (or joined) and cb will be called,
 * with *req set so the caller can cancel; negative errno-style code when no
 * probe could be started. */
int tls_probe_check(tls_probe_cache *c, uv_loop_t *loop, const struct sockaddr *addr,
                    const char *name, tls_probe_cb cb, void *arg, bool *ok, char *reason,
                    size_t reasonlen, tls_probe_req **req);

/* The caller went away: cb will not be called for this request. The probe
 * itself still finishes and fills the cache. */
void tls_probe_cancel(tls_probe_req *req);

/* Closes every probe running on loop (their callbacks are not called), for
 * shutting a loop down. */
void tls_probe_abort_loop(tls_probe_cache *c, uv_loop_t *loop);

/* Counters for stats and benchmarks. */
typedef struct tls_probe_stats {
    uint64_t hits, misses, probes, failures;
} tls_probe_stats;
void tls_probe_cache_stats(tls_probe_cache *c, tls_probe_stats *out);

#endif
