/* agent.h - the node's link to its controller (docs/link.md): a
 * libwebsockets client on the node's main libuv loop, mutual TLS with the
 * files enrollment left in the state directory, subprotocol
 * "portcullis.v1". It says hello, applies the documents the controller
 * pushes (validate, persist, apply, ack), ships the spool's events as credit
 * allows, sends counters, reconnects with jittered exponential backoff, and
 * reverts a document that cut the controller off (safe apply: only a new
 * connection made after a document was applied confirms it; a reverted
 * document is remembered in reverted.json and never applied again).
 */
#ifndef PORTCULLIS_AGENT_H
#define PORTCULLIS_AGENT_H

#include "pc_policy.h"
#include "spool.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define AGENT_WUR __attribute__((warn_unused_result))

typedef enum {
    AGENT_SAFE_FIREWALL = 0, /* check documents whose firewall part changed */
    AGENT_SAFE_ALWAYS,       /* check every document */
    AGENT_SAFE_NEVER,
} agent_safe_mode;

/* What the agent asks of the daemon around it. Called on the loop's thread. */
typedef struct agent_hooks {
    void *arg;
    /* Makes p the enforced policy (the firewall first, then the proxy swap). Returns
     * 0, or -1 with err (the agent then acks "failed" and keeps the old). */
    int (*apply)(void *arg, pc_policy *p, char *err, size_t errlen);
    /* Fills counters (an empty object) for a stats message. */
    void (*counters)(void *arg, cJSON *counters);
} agent_hooks;

typedef struct agent_config {
    const char *state_dir;      /* node.*, ca.crt, link.json, policy*.json, reverted.json */
    const char *software;       /* "portcullis-node 0.3.0" */
    unsigned backoff_min_ms;    /* 0 = 1000 */
    unsigned backoff_max_ms;    /* 0 = 60000 */
    unsigned stats_interval_ms; /* 0 = 30000 */
    agent_safe_mode safe_mode;
    unsigned safe_timeout_ms; /* 0 = 60000 */
} agent_config;

typedef struct agent agent;

/* Whether state_dir holds an enrollment (link.json, node.key, node.crt,
 * ca.crt all present). */
bool agent_enrolled(const char *state_dir);

/* Loads the cached document (policy.json) of state_dir: 0 and *out and the
 * SHA-256 of its bytes, 1 when there is none, -1 with err when it exists but
 * does not load (the caller then falls back, and says so). */
AGENT_WUR int agent_load_cached(const char *state_dir, pc_policy **out, char sha256[65], char *err,
                                size_t errlen);

/* Starts the link on loop (which the caller runs). current is the policy
 * enforced now and current_sha256 the SHA-256 of its document as
 * agent_load_cached gave it (NULL: a policy not from the controller, which
 * hello reports as null); neither is taken. Returns 0 and *out, or -1 with
 * err (bad files in state_dir, lws failed). */
AGENT_WUR int agent_start(uv_loop_t *loop, const agent_config *cfg, const agent_hooks *hooks,
                          spool *sp, const pc_policy *current, const char *current_sha256,
                          agent **out, char *err, size_t errlen);
/* Closes the link and frees the agent; the loop must then run until its
 * handles are closed (uv_run). NULL is fine. */
void agent_stop(agent *a);

/* For SIGUSR1 and tests: connected or not, the version enforced, events
 * shipped and acked. */
typedef struct agent_status {
    bool connected;
    int64_t policy_version;
    uint64_t connects, policies_applied, policies_failed, reverts;
    int64_t acked_seq;
} agent_status;
void agent_get_status(agent *a, agent_status *out);

#endif
