/* proxy.h - the conformance proxy: one libuv loop per thread, all sharing
 * one listening port (SO_REUSEPORT). Every connection is classified by the
 * protocol of its port and checked against the policy of its source's group;
 * see docs/proxy.md.
 */
#ifndef PORTCULLIS_PROXY_H
#define PORTCULLIS_PROXY_H

#include "events.h"
#include "pc_policy.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct proxy_config {
    const char *listen;   /* "127.0.0.1:3128", "[::1]:3128", port 0 = any free */
    bool transparent;     /* original destination from the socket */
    unsigned threads;     /* 0: one per CPU */
} proxy_config;

typedef struct proxy proxy;

/* Binds the listening sockets (so errors surface here) and starts the
 * worker threads. policy: one reference is taken. events: borrowed, must
 * outlive the proxy. Returns 0, or -1 with err filled. */
int proxy_start(proxy **out, const proxy_config *cfg, pc_policy *policy, ev_sink *events,
                char *err, size_t errlen);

/* The address actually bound (useful with port 0), as "host:port". */
const char *proxy_listen_address(const proxy *p);

/* Swaps the policy for new connections; live connections keep theirs. Takes
 * one reference. Thread-safe. */
void proxy_set_policy(proxy *p, pc_policy *policy);

/* Stops accepting, closes every connection, joins the threads and frees p. */
void proxy_stop(proxy *p);

/* Counters, summed over threads. */
typedef struct proxy_stats {
    uint64_t accepted, active, blocked, refused_limit, exceptions;
    uint64_t bytes_up, bytes_down;
} proxy_stats;
void proxy_get_stats(proxy *p, proxy_stats *out);

#endif
