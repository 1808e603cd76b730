/* main.c - portcullis-node: the branch-office daemon (docs/node.md). It
 * starts the conformance proxy with the policy it has (cached from the
 * controller, a file, or the built-in one) before anything else, then, when
 * the state directory holds an enrollment, links up with the controller on
 * the main libuv loop. `portcullis-node enroll ...` enrolls the node. */
#include "agent.h"
#include "node_enroll.h"
#include "events.h"
#include "pc_policy.h"
#include "proxy.h"
#include "spool.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#define NODE_VERSION "0.1.0"
#define NODE_STATE_DEFAULT "/var/lib/portcullis-node"

static void usage(FILE *f)
{
    fprintf(
        f, "usage: portcullis-node [options]\n"
           "       portcullis-node enroll --controller https://HOST:PORT --token TOKEN "
           "[--state DIR]\n"
           "  --policy FILE     effective-policy document when there is no cached one\n"
           "                    (default: the built-in policy)\n"
           "  --listen ADDR:PORT  where the proxy listens (default 127.0.0.1:3128)\n"
           "  --transparent     take the destination from redirected connections\n"
           "  --threads N       event loops (default: one per CPU)\n"
           "  --events FILE     JSON-lines event log, '-' for stdout (default), 'none' for no log\n"
           "  --state DIR       state directory (default " NODE_STATE_DEFAULT ");\n"
           "                    when it holds an enrollment the node links to its controller\n"
           "  --spool-max N     events the spool keeps for the controller (default 1000000)\n"
           "  --safe-apply firewall|always|never  which documents must be confirmed by a\n"
           "                    round trip with the controller (default firewall)\n"
           "  --safe-apply-timeout SECONDS  before an unconfirmed document is reverted "
           "(default 60)\n"
           "  --backoff-max SECONDS   longest wait between reconnects (default 60)\n"
           "  --backoff-min-ms MS     first wait between reconnects (default 1000)\n"
           "  -n, --check       check the configuration, print 'configuration OK', exit\n"
           "  --version         print the version\n"
           "Signals: SIGHUP reloads the policy file (when the controller does not manage\n"
           "the policy) and reopens the event log, SIGUSR1 prints counters, SIGINT/SIGTERM "
           "stop.\n");
}

static int load_policy(const char *path, pc_policy **out)
{
    char err[512];
    if (!path) {
        *out = pc_policy_builtin();
        if (!*out) {
            fprintf(stderr, "portcullis-node: the built-in policy does not load\n");
            return -1;
        }
        return 0;
    }
    if (pc_policy_load_file(path, out, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-node: %s: %s\n", path, err);
        return -1;
    }
    return 0;
}

/* Parses seconds (decimals allowed) in [min, max] into milliseconds. */
static int parse_seconds(const char *opt, const char *s, double min, double max, unsigned *ms)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v < min || v > max) {
        fprintf(stderr, "portcullis-node: %s '%s': expected seconds in %g..%g\n", opt, s, min, max);
        return -1;
    }
    *ms = (unsigned)(v * 1000.0 + 0.5);
    if (*ms == 0)
        *ms = 1;
    return 0;
}

static int parse_long(const char *opt, const char *s, long long min, long long max, long long *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || v < min || v > max) {
        fprintf(stderr, "portcullis-node: %s '%s': expected %lld..%lld\n", opt, s, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

/* Opens DIR/spool.db. One that does not open (a damaged file) is moved
 * aside, named in the log, and a new one started: the controller then
 * holds higher numbers than the new spool and the node moves past them. */
static int open_spool(const char *state_dir, long long max, spool **out)
{
    char path[4096], aside[4200], err[1024];
    if (snprintf(path, sizeof(path), "%s/spool.db", state_dir) >= (int)sizeof(path)) {
        fprintf(stderr, "portcullis-node: --state: path too long\n");
        return -1;
    }
    if (spool_open(path, max, out, err, sizeof(err)) == 0)
        return 0;
    fprintf(stderr, "portcullis-node: %s\n", err);
    snprintf(aside, sizeof(aside), "%s.broken-%lld", path, (long long)time(NULL));
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char from[4200], to[4300];
        snprintf(from, sizeof(from), "%s%s", path, suffixes[i]);
        snprintf(to, sizeof(to), "%s%s", aside, suffixes[i]);
        if (rename(from, to) != 0 && errno != ENOENT) {
            fprintf(stderr, "portcullis-node: cannot move %s aside: %s\n", from, strerror(errno));
            goto fail;
        }
    }
    fprintf(stderr, "portcullis-node: the spool was moved aside to %s; starting a new one\n",
            aside);
    if (spool_open(path, max, out, err, sizeof(err)) == 0)
        return 0;
    fprintf(stderr, "portcullis-node: %s\n", err);
fail:
    fprintf(stderr, "portcullis-node: running without the controller link (no spool)\n");
    *out = NULL;
    return -1;
}

/* What the signal handlers and the agent's hooks work on. */
typedef struct node {
    uv_loop_t *loop;
    proxy *px;
    agent *ag;
    spool *sp;
    ev_sink *events;
    const char *policy_path;
    uv_signal_t sig_hup, sig_usr1, sig_int, sig_term;
    bool stopping;
} node;

static int hook_apply(void *arg, pc_policy *p, char *err, size_t errlen)
{
    node *n = arg;
    (void)err;
    (void)errlen;
    proxy_set_policy(n->px, p);
    return 0;
}

static void hook_counters(void *arg, cJSON *c)
{
    node *n = arg;
    proxy_stats st;
    proxy_get_stats(n->px, &st);
    cJSON_AddNumberToObject(c, "accepted", (double)st.accepted);
    cJSON_AddNumberToObject(c, "active", (double)st.active);
    cJSON_AddNumberToObject(c, "blocked", (double)st.blocked);
    cJSON_AddNumberToObject(c, "exceptions", (double)st.exceptions);
    cJSON_AddNumberToObject(c, "refused_limit", (double)st.refused_limit);
    cJSON_AddNumberToObject(c, "bytes_up", (double)st.bytes_up);
    cJSON_AddNumberToObject(c, "bytes_down", (double)st.bytes_down);
    cJSON *br = cJSON_AddObjectToObject(c, "blocks_by_reason");
    if (br)
        ev_sink_blocks_by_reason(n->events, br);
    if (n->ag) {
        agent_status as;
        agent_get_status(n->ag, &as);
        cJSON *a = cJSON_AddObjectToObject(c, "agent");
        if (a) {
            cJSON_AddNumberToObject(a, "connected", as.connected ? 1 : 0);
            cJSON_AddNumberToObject(a, "policy_version", (double)as.policy_version);
            cJSON_AddNumberToObject(a, "connects", (double)as.connects);
            cJSON_AddNumberToObject(a, "policies_applied", (double)as.policies_applied);
            cJSON_AddNumberToObject(a, "policies_failed", (double)as.policies_failed);
            cJSON_AddNumberToObject(a, "reverts", (double)as.reverts);
            cJSON_AddNumberToObject(a, "acked_seq", (double)as.acked_seq);
        }
    }
}

static void print_counters(node *n)
{
    proxy_stats st;
    proxy_get_stats(n->px, &st);
    fprintf(stderr,
            "portcullis-node: accepted %llu active %llu blocked %llu exceptions %llu "
            "refused-limit %llu bytes-up %llu bytes-down %llu\n",
            (unsigned long long)st.accepted, (unsigned long long)st.active,
            (unsigned long long)st.blocked, (unsigned long long)st.exceptions,
            (unsigned long long)st.refused_limit, (unsigned long long)st.bytes_up,
            (unsigned long long)st.bytes_down);
    if (n->ag) {
        agent_status as;
        agent_get_status(n->ag, &as);
        fprintf(stderr,
                "portcullis-node: link %s policy-version %lld connects %llu policies-applied "
                "%llu policies-failed %llu reverts %llu acked-seq %lld spool-pending %lld "
                "spool-dropped %lld\n",
                as.connected ? "up" : "down", (long long)as.policy_version,
                (unsigned long long)as.connects, (unsigned long long)as.policies_applied,
                (unsigned long long)as.policies_failed, (unsigned long long)as.reverts,
                (long long)as.acked_seq, (long long)spool_pending(n->sp),
                (long long)spool_dropped(n->sp));
    }
    fflush(stderr);
}

static void on_signal(uv_signal_t *h, int sig)
{
    node *n = h->data;
    if (n->stopping)
        return;
    if (sig == SIGHUP) {
        if (n->ag) {
            fprintf(stderr, "portcullis-node: the controller manages the policy; "
                            "reopening the event log only\n");
        } else {
            pc_policy *np;
            if (load_policy(n->policy_path, &np) == 0) {
                proxy_set_policy(n->px, np);
                fprintf(stderr, "portcullis-node: policy version %llu applied\n",
                        (unsigned long long)pc_policy_version(np));
                pc_policy_unref(np);
            } else {
                fprintf(stderr, "portcullis-node: keeping the previous policy\n");
            }
        }
        ev_sink_reopen(n->events);
        fflush(stderr);
        return;
    }
    if (sig == SIGUSR1) {
        print_counters(n);
        return;
    }
    n->stopping = true;
    fprintf(stderr, "portcullis-node: stopping\n");
    fflush(stderr);
    agent_stop(n->ag);
    n->ag = NULL;
    uv_close((uv_handle_t *)&n->sig_hup, NULL);
    uv_close((uv_handle_t *)&n->sig_usr1, NULL);
    uv_close((uv_handle_t *)&n->sig_int, NULL);
    uv_close((uv_handle_t *)&n->sig_term, NULL);
    proxy_stop(n->px);
    n->px = NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "enroll") == 0)
        return node_enroll_main(argc - 1, argv + 1);

    enum {
        OPT_STATE = 256,
        OPT_SPOOL_MAX,
        OPT_SAFE,
        OPT_SAFE_TIMEOUT,
        OPT_BACKOFF_MAX,
        OPT_BACKOFF_MIN_MS,
    };
    static const struct option opts[] = {
        {"policy", required_argument, NULL, 'p'},
        {"listen", required_argument, NULL, 'l'},
        {"transparent", no_argument, NULL, 't'},
        {"threads", required_argument, NULL, 'T'},
        {"events", required_argument, NULL, 'e'},
        {"state", required_argument, NULL, OPT_STATE},
        {"spool-max", required_argument, NULL, OPT_SPOOL_MAX},
        {"safe-apply", required_argument, NULL, OPT_SAFE},
        {"safe-apply-timeout", required_argument, NULL, OPT_SAFE_TIMEOUT},
        {"backoff-max", required_argument, NULL, OPT_BACKOFF_MAX},
        {"backoff-min-ms", required_argument, NULL, OPT_BACKOFF_MIN_MS},
        {"check", no_argument, NULL, 'n'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *policy_path = NULL, *events_path = "-", *state_dir = NODE_STATE_DEFAULT;
    proxy_config cfg = {.listen = "127.0.0.1:3128"};
    agent_config acfg = {.software = "portcullis-node " NODE_VERSION,
                         .safe_mode = AGENT_SAFE_FIREWALL};
    long long spool_max = 1000000, v;
    int check_only = 0, ch;
    while ((ch = getopt_long(argc, argv, "nh", opts, NULL)) != -1) {
        switch (ch) {
        case 'p': policy_path = optarg; break;
        case 'l': cfg.listen = optarg; break;
        case 't': cfg.transparent = true; break;
        case 'T':
            if (parse_long("--threads", optarg, 1, 256, &v) != 0)
                return 2;
            cfg.threads = (unsigned)v;
            break;
        case 'e': events_path = optarg; break;
        case OPT_STATE: state_dir = optarg; break;
        case OPT_SPOOL_MAX:
            if (parse_long("--spool-max", optarg, 1000, 1000000000, &spool_max) != 0)
                return 2;
            break;
        case OPT_SAFE:
            if (strcmp(optarg, "firewall") == 0)
                acfg.safe_mode = AGENT_SAFE_FIREWALL;
            else if (strcmp(optarg, "always") == 0)
                acfg.safe_mode = AGENT_SAFE_ALWAYS;
            else if (strcmp(optarg, "never") == 0)
                acfg.safe_mode = AGENT_SAFE_NEVER;
            else {
                fprintf(stderr,
                        "portcullis-node: --safe-apply '%s': expected firewall, always or never\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_SAFE_TIMEOUT:
            if (parse_seconds("--safe-apply-timeout", optarg, 0.1, 86400, &acfg.safe_timeout_ms) !=
                0)
                return 2;
            break;
        case OPT_BACKOFF_MAX:
            if (parse_seconds("--backoff-max", optarg, 0.01, 3600, &acfg.backoff_max_ms) != 0)
                return 2;
            break;
        case OPT_BACKOFF_MIN_MS:
            if (parse_long("--backoff-min-ms", optarg, 1, 3600000, &v) != 0)
                return 2;
            acfg.backoff_min_ms = (unsigned)v;
            break;
        case 'n': check_only = 1; break;
        case 'V': printf("portcullis-node %s\n", NODE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "portcullis-node: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    acfg.state_dir = state_dir;

    /* Enforcement never waits for the controller: the cached document
     * first, then the file, then the built-in policy. */
    char err[1024], cached_sha[65];
    char source[1200];
    const char *current_sha = NULL;
    pc_policy *policy = NULL;
    int rc = agent_load_cached(state_dir, &policy, cached_sha, err, sizeof(err));
    if (rc == 0) {
        current_sha = cached_sha;
        snprintf(source, sizeof(source), "%s/policy.json (cached from the controller)", state_dir);
    } else {
        if (rc < 0)
            fprintf(stderr, "portcullis-node: the cached policy does not load (%s); using %s\n",
                    err, policy_path ? policy_path : "the built-in policy");
        if (load_policy(policy_path, &policy) != 0)
            return 1;
        snprintf(source, sizeof(source), "%s", policy_path ? policy_path : "the built-in policy");
    }
    bool enrolled = agent_enrolled(state_dir);
    if (check_only) {
        printf("%s: policy version %llu: configuration OK\n", source,
               (unsigned long long)pc_policy_version(policy));
        pc_policy_unref(policy);
        return 0;
    }

    int status = 1;
    node n = {.policy_path = policy_path};
    uv_loop_t loop;
    bool loop_open = false;
    n.events = ev_sink_open(events_path, err, sizeof(err));
    if (!n.events) {
        fprintf(stderr, "portcullis-node: --events %s\n", err);
        goto done;
    }
    /* Enforcement goes on without a spool; the link needs one. */
    if (enrolled && open_spool(state_dir, spool_max, &n.sp) != 0)
        n.sp = NULL;
    if (n.sp)
        ev_sink_set_spool(n.events, n.sp);

    /* Worker threads inherit this mask; only the main thread takes signals
     * (through its loop, once the handlers are in place). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* DNS lookups run on libuv's thread pool, 4 threads unless told: a few
     * names that resolve slowly must not stall every other lookup. */
    setenv("UV_THREADPOOL_SIZE", "32", 0);

    if (proxy_start(&n.px, &cfg, policy, n.events, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-node: %s\n", err);
        goto done;
    }
    fprintf(stderr, "portcullis-node %s: listening on %s (%s proxy), policy version %llu from %s\n",
            NODE_VERSION, proxy_listen_address(n.px), cfg.transparent ? "transparent" : "explicit",
            (unsigned long long)pc_policy_version(policy), source);
    fflush(stderr);

    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "portcullis-node: cannot start the main loop\n");
        goto done;
    }
    loop_open = true;
    n.loop = &loop;
    uv_signal_t *sigs[] = {&n.sig_hup, &n.sig_usr1, &n.sig_int, &n.sig_term};
    const int signums[] = {SIGHUP, SIGUSR1, SIGINT, SIGTERM};
    for (size_t i = 0; i < 4; i++) {
        uv_signal_init(&loop, sigs[i]);
        sigs[i]->data = &n;
        uv_signal_start(sigs[i], on_signal, signums[i]);
    }
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);

    if (enrolled && n.sp) {
        agent_hooks hooks = {.arg = &n, .apply = hook_apply, .counters = hook_counters};
        if (agent_start(&loop, &acfg, &hooks, n.sp, policy, current_sha, &n.ag, err, sizeof(err)) !=
            0) {
            /* Enforcement goes on without the controller. */
            fprintf(stderr, "portcullis-node: controller link not started: %s\n", err);
            n.ag = NULL;
        } else {
            fprintf(stderr, "portcullis-node: linking to the controller (state %s)\n", state_dir);
        }
    } else if (!enrolled) {
        fprintf(stderr, "portcullis-node: %s holds no enrollment; running without a controller\n",
                state_dir);
        if (strcmp(events_path, "none") == 0)
            fprintf(stderr, "portcullis-node: --events none without a controller: events are "
                            "not recorded\n");
    }
    fflush(stderr);
    pc_policy_unref(policy);
    policy = NULL;

    uv_run(&loop, UV_RUN_DEFAULT);
    status = 0;
done:
    if (loop_open) {
        /* Only after an early failure: the stop path has closed these. */
        if (!n.stopping) {
            uv_signal_t *sigs2[] = {&n.sig_hup, &n.sig_usr1, &n.sig_int, &n.sig_term};
            for (size_t i = 0; i < 4; i++)
                if (!uv_is_closing((uv_handle_t *)sigs2[i]))
                    uv_close((uv_handle_t *)sigs2[i], NULL);
            uv_run(&loop, UV_RUN_DEFAULT);
        }
        if (uv_loop_close(&loop) != 0)
            fprintf(stderr, "portcullis-node: the main loop still had handles at exit\n");
    }
    if (n.px)
        proxy_stop(n.px);
    spool_close(n.sp);
    ev_sink_close(n.events);
    if (policy)
        pc_policy_unref(policy);
    return status;
}
