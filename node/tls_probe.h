/* tls_probe.h - for TLS 1.3, where the server certificate travels encrypted,
 * the node verifies the server itself: its own TLS connection (OpenSSL,
 * non-blocking, on the caller's libuv loop) to the same address and port with
 * the same server name, chain and name verified against a tls_verify_store.
 *
 * Results are cached per (address, port, name) for a configured time, shared
 * by all proxy threads (the cache is locked; probes run on the loop of the
 * thread that asked). Concurrent requests for the same key on the same loop
 * share one probe.
 *
 * Threads: the cache may be used from any thread; a probe, its requests and
 * tls_probe_cancel/tls_probe_abort_loop belong to the thread running its loop.
 * The process must ignore SIGPIPE (libuv writes with write(2)).
 */
#ifndef PORTCULLIS_TLS_PROBE_H
#define PORTCULLIS_TLS_PROBE_H

#include "tls_verify.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct tls_probe_cache tls_probe_cache;

/* A reason buffer of this size never truncates (the longest is
 * "certificate-name-mismatch: " and a 253-byte name). */
#define TLS_PROBE_REASON_LEN 320

/* A ttl of 0 or max_entries 0 means that kind of result is not cached;
 * timeout_ms 0 means 10000. */
typedef struct tls_probe_config {
    unsigned ttl_ok_s;   /* how long a success is trusted */
    unsigned ttl_fail_s; /* how long a failure is remembered */
    unsigned timeout_ms; /* connect + handshake deadline */
    size_t max_entries;  /* oldest entries are evicted past this */
    size_t max_running;  /* probes running at once, all loops; past it
                            tls_probe_check returns -EBUSY (0: 256) */
} tls_probe_config;

/* store is borrowed and must outlive the cache. NULL on allocation failure. */
tls_probe_cache *tls_probe_cache_new(tls_verify_store *store, const tls_probe_config *cfg);
/* Only once no probe is left: every loop that used the cache has run
 * tls_probe_abort_loop (or its probes finished) and then its close callbacks. */
void tls_probe_cache_free(tls_probe_cache *c);

/* Called once, on the loop that started the probe. ok true when the server
 * presented a certificate that verifies for name; otherwise reason says why
 * ("certificate-untrusted: ...", "probe-timeout", "probe-connect: ...").
 * Reasons, by prefix (tls_verify_reason gives the certificate-* ones):
 *   certificate-name-mismatch: <name>   chain good, not valid for name
 *   certificate-expired: <why>          expired, or not yet valid
 *   certificate-untrusted: <why>        no path to a trusted root; OpenSSL's
 *                                       verify string, or "no certificate"
 *   certificate-invalid: <why>          any other verify error (purpose,
 *                                       signature, ...), as tls_verify_chain
 *   probe-connect: <libuv error>        TCP connect failed
 *   probe-handshake: <why>              TLS failed before a certificate
 *                                       verdict (OpenSSL's reason, or the
 *                                       connection closed or reset)
 *   probe-timeout                       no verdict within timeout_ms */
typedef void (*tls_probe_cb)(void *arg, bool ok, const char *reason);

typedef struct tls_probe_req tls_probe_req;

/* Returns 1 and fills *ok/reason without calling cb when the answer is
 * cached; 0 when a probe was started (or joined) and cb will be called,
 * with *req set so the caller can cancel; negative errno-style code when no
 * probe could be started.
 * Must be called on the thread running loop. name is what the client asked
 * for (SNI), matched case-insensitively; a client that sent no SNI is probed
 * with the address literal as name ("192.0.2.1", "2001:db8::1"), which sends
 * no SNI and checks the certificate's IP addresses. A name that is not a
 * host name or an IP literal (empty, over 253 bytes, other characters) gives
 * -EINVAL; an address that is not IPv4/IPv6 -EAFNOSUPPORT. req may be NULL;
 * otherwise *req is valid until cb has returned or tls_probe_cancel.
 * ok, reason may be NULL; reason is "" for ok. Failures of the node itself
 * (memory, file descriptors, local ports) are reported but never cached. */
int tls_probe_check(tls_probe_cache *c, uv_loop_t *loop, const struct sockaddr *addr,
                    const char *name, tls_probe_cb cb, void *arg, bool *ok, char *reason,
                    size_t reasonlen, tls_probe_req **req);

/* The caller went away: cb will not be called for this request. The probe
 * itself still finishes and fills the cache. Frees req. */
void tls_probe_cancel(tls_probe_req *req);

/* Closes every probe running on loop (their callbacks are not called), for
 * shutting a loop down. Their requests are freed: drop every tls_probe_req
 * pointer for this loop (no tls_probe_cancel after). Aborted probes fill no
 * cache entry; their memory goes in close callbacks, so run the loop after. */
void tls_probe_abort_loop(tls_probe_cache *c, uv_loop_t *loop);

/* Counters for stats and benchmarks. */
typedef struct tls_probe_stats {
    uint64_t hits, misses, probes, failures;
    /* misses: checks not answered from the cache (a joined probe counts);
     * probes: connections started; failures: probes that ended not ok;
     * coalesced: checks that joined a running probe; evictions: entries
     * dropped for room; entries: results cached now (expired ones included
     * until looked up or evicted); refused: checks turned away because
     * max_running probes were running. */
    uint64_t coalesced, evictions, entries, refused;
} tls_probe_stats;
void tls_probe_cache_stats(tls_probe_cache *c, tls_probe_stats *out);

#endif
