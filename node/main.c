/* main.c - portcullis-node: the branch-office daemon (docs/node.md). It
 * loads the firewall (with --firewall) and starts the conformance proxy with
 * the policy it has (cached from the controller, a file, or the built-in
 * one) before anything else, then, when the state directory holds an
 * enrollment, links up with the controller on the main libuv loop.
 * `portcullis-node enroll ...` enrolls the node; `portcullis-node firewall
 * show|flush` looks at or removes its firewall (docs/firewall.md). */
#include "agent.h"
#include "events.h"
#include "firewall.h"
#include "node_enroll.h"
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
           "       portcullis-node firewall show [--state DIR] [--policy FILE] "
           "[--lan-interface IF ...]\n"
           "                    [--listen ADDR:PORT --transparent]\n"
           "       portcullis-node firewall flush\n"
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
           "  --firewall        program the gateway's firewall from the policy (nftables,\n"
           "                    table inet portcullis) before anything else starts\n"
           "  --lan-interface IF  a LAN interface (repeatable; required with --firewall)\n"
           "  --dry-run         with --firewall: print the ruleset it would load, exit\n"
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

/* The port of "ADDR:PORT" / "[V6]:PORT", or -1. */
static int listen_port(const char *listen)
{
    const char *colon = strrchr(listen, ':');
    long long v;
    char *end;
    if (!colon || !colon[1])
        return -1;
    v = strtoll(colon + 1, &end, 10);
    if (*end || v < 0 || v > 65535)
        return -1;
    return (int)v;
}

/* The firewall's view of the node: --lan-interface and, for a transparent
 * proxy, its port (redirected LAN web traffic goes there). */
static int firewall_local(fw_local *l, const char *const *ifaces, size_t nifaces,
                          const char *listen, bool transparent)
{
    memset(l, 0, sizeof(*l));
    for (size_t i = 0; i < nifaces; i++)
        l->lan_ifaces[i] = ifaces[i];
    l->nifaces = nifaces;
    if (transparent) {
        int port = listen_port(listen);
        if (port <= 0) {
            fprintf(stderr,
                    "portcullis-node: --firewall redirects LAN web traffic to the proxy, which "
                    "needs a fixed port: --listen %s\n",
                    listen);
            return -1;
        }
        l->proxy_port = (uint16_t)port;
    }
    return 0;
}

/* The enforced policy as the daemon picks it: the cached document, else
 * the file, else the built-in policy. source describes it. */
static int enforced_policy(const char *state_dir, const char *policy_path, pc_policy **out,
                           char cached_sha[65], bool *cached, char *source, size_t srclen)
{
    char err[1024];
    int rc = agent_load_cached(state_dir, out, cached_sha, err, sizeof(err));
    *cached = rc == 0;
    if (rc == 0) {
        snprintf(source, srclen, "%s/policy.json (cached from the controller)", state_dir);
        return 0;
    }
    if (rc < 0)
        fprintf(stderr, "portcullis-node: the cached policy does not load (%s); using %s\n", err,
                policy_path ? policy_path : "the built-in policy");
    if (load_policy(policy_path, out) != 0)
        return -1;
    snprintf(source, srclen, "%s", policy_path ? policy_path : "the built-in policy");
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
    bool firewall; /* --firewall: the node programs the gateway */
    fw_local fwl;
    uv_signal_t sig_hup, sig_usr1, sig_int, sig_term;
    bool stopping;
} node;

/* Makes p's firewall the loaded one; with it refused, nothing changes. */
static int firewall_load(node *n, const pc_policy *p, char *err, size_t errlen)
{
    char *ruleset = NULL;
    if (!n->firewall)
        return 0;
    if (fw_generate(p, &n->fwl, &ruleset, err, errlen) != 0)
        return -1;
    int rc = fw_apply(ruleset, err, errlen);
    free(ruleset);
    return rc;
}

/* The firewall first: a document it refuses changes neither the firewall
 * nor the proxy (the agent acks "failed" with nftables' message). */
static int hook_apply(void *arg, pc_policy *p, char *err, size_t errlen)
{
    node *n = arg;
    if (firewall_load(n, p, err, errlen) != 0)
        return -1;
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
    if (n->firewall) {
        char err[512];
        cJSON *fw = cJSON_AddObjectToObject(c, "firewall");
        if (fw && fw_counters(fw, err, sizeof(err)) != 0)
            fprintf(stderr, "portcullis-node: firewall counters: %s\n", err);
    }
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
    if (n->firewall) {
        char err[512];
        cJSON *fw = cJSON_CreateObject();
        if (fw && fw_counters(fw, err, sizeof(err)) == 0) {
            fprintf(stderr, "portcullis-node: firewall");
            const cJSON *it;
            cJSON_ArrayForEach(it, fw)
            {
                fprintf(stderr, " %s %.0f", it->string, it->valuedouble);
            }
            fprintf(stderr, "%s\n", fw->child ? "" : " (no table loaded)");
        } else if (fw) {
            fprintf(stderr, "portcullis-node: firewall counters: %s\n", err);
        }
        cJSON_Delete(fw);
    }
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
            char err[1024];
            if (load_policy(n->policy_path, &np) == 0) {
                if (hook_apply(n, np, err, sizeof(err)) == 0)
                    fprintf(stderr, "portcullis-node: policy version %llu applied%s\n",
                            (unsigned long long)pc_policy_version(np),
                            n->firewall ? " (firewall and proxy)" : "");
                else
                    fprintf(stderr,
                            "portcullis-node: policy version %llu refused: the firewall does "
                            "not load: %s; keeping the previous policy\n",
                            (unsigned long long)pc_policy_version(np), err);
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
    /* The handlers stay installed (a second Ctrl-C or SIGTERM while
     * stopping is absorbed, not the default action that would kill the
     * process) but no longer keep the loop running; they are closed after
     * it ends. */
    uv_unref((uv_handle_t *)&n->sig_hup);
    uv_unref((uv_handle_t *)&n->sig_usr1);
    uv_unref((uv_handle_t *)&n->sig_int);
    uv_unref((uv_handle_t *)&n->sig_term);
    proxy_stop(n->px);
    n->px = NULL;
}

/* `portcullis-node firewall show|flush`: what is loaded, its counters,
 * and whether it is what the enforced policy generates. Exit 0: it
 * matches (show) or is removed (flush); 1: it does not, or an error; 2: bad
 * command line. */
static int firewall_main(int argc, char **argv)
{
    enum { O_STATE = 256, O_POLICY, O_LAN_IF, O_LISTEN, O_TRANSPARENT };
    static const struct option opts[] = {
        {"state", required_argument, NULL, O_STATE},
        {"policy", required_argument, NULL, O_POLICY},
        {"lan-interface", required_argument, NULL, O_LAN_IF},
        {"listen", required_argument, NULL, O_LISTEN},
        {"transparent", no_argument, NULL, O_TRANSPARENT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *state_dir = NODE_STATE_DEFAULT, *policy_path = NULL, *listen = NULL;
    const char *ifaces[FW_MAX_IFACES];
    size_t nifaces = 0;
    bool transparent = false;
    int ch;
    const char *what = argc > 1 ? argv[1] : "";
    if (strcmp(what, "show") != 0 && strcmp(what, "flush") != 0) {
        fprintf(stderr, "portcullis-node firewall: expected 'show' or 'flush'\n");
        usage(stderr);
        return 2;
    }
    optind = 2;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case O_STATE: state_dir = optarg; break;
        case O_POLICY: policy_path = optarg; break;
        case O_LAN_IF:
            if (nifaces == FW_MAX_IFACES) {
                fprintf(stderr, "portcullis-node: at most %d --lan-interface\n", FW_MAX_IFACES);
                return 2;
            }
            ifaces[nifaces++] = optarg;
            break;
        case O_LISTEN: listen = optarg; break;
        case O_TRANSPARENT: transparent = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "portcullis-node firewall: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    char err[1024];
    if (strcmp(what, "flush") == 0) {
        if (fw_remove(err, sizeof(err)) != 0) {
            fprintf(stderr, "portcullis-node: firewall flush: %s\n", err);
            return 1;
        }
        printf("table inet " FW_TABLE " removed\n");
        return 0;
    }

    char *shown = NULL, *ruleset = NULL, source[1200], sha[65], names[FW_MAX_IFACES][32];
    pc_policy *policy = NULL;
    bool cached, same = false;
    int status = 1;
    fw_local loaded, l;
    if (fw_show(&shown, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-node: firewall show: %s\n", err);
        return 1;
    }
    if (!shown) {
        printf("no table inet " FW_TABLE " is loaded\nmatches the enforced policy: no\n");
        return 1;
    }
    fputs(shown, stdout);
    cJSON *counters = cJSON_CreateObject();
    if (counters && fw_counters(counters, err, sizeof(err)) == 0) {
        printf("counters:\n");
        const cJSON *it;
        cJSON_ArrayForEach(it, counters)
        {
            size_t len = strlen(it->string);
            if (len <= 8 || strcmp(it->string + len - 8, "_packets") != 0)
                continue;
            char bytes_key[80];
            snprintf(bytes_key, sizeof(bytes_key), "%.*s_bytes", (int)(len - 8), it->string);
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(counters, bytes_key);
            printf("  %-16.*s %12.0f packets %14.0f bytes\n", (int)(len - 8), it->string,
                   it->valuedouble, cJSON_IsNumber(b) ? b->valuedouble : 0.0);
        }
    } else {
        printf("counters: %s\n", err);
    }
    cJSON_Delete(counters);

    /* The node's own settings: as given, else as the loaded table has them. */
    if (fw_loaded_local(&loaded, names, err, sizeof(err)) < 0) {
        fprintf(stderr, "portcullis-node: firewall show: %s\n", err);
        goto done;
    }
    l = loaded;
    if (nifaces) {
        for (size_t i = 0; i < nifaces; i++)
            l.lan_ifaces[i] = ifaces[i];
        l.nifaces = nifaces;
    }
    if (listen) {
        const char *keep[FW_MAX_IFACES];
        memcpy(keep, l.lan_ifaces, sizeof(keep));
        if (firewall_local(&l, keep, l.nifaces, listen, transparent) != 0)
            goto done;
    }
    if (enforced_policy(state_dir, policy_path, &policy, sha, &cached, source, sizeof(source)) != 0)
        goto done;
    printf("enforced policy: version %llu from %s\n", (unsigned long long)pc_policy_version(policy),
           source);
    if (fw_generate(policy, &l, &ruleset, err, sizeof(err)) != 0) {
        printf("matches the enforced policy: no (%s)\n", err);
        goto done;
    }
    if (fw_compare(ruleset, &same, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-node: firewall show: %s\n", err);
        goto done;
    }
    printf("matches the enforced policy: %s\n", same ? "yes" : "no");
    status = same ? 0 : 1;
done:
    fflush(stdout);
    free(ruleset);
    free(shown);
    pc_policy_unref(policy);
    return status;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "enroll") == 0)
        return node_enroll_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "firewall") == 0)
        return firewall_main(argc - 1, argv + 1);

    enum {
        OPT_STATE = 256,
        OPT_SPOOL_MAX,
        OPT_SAFE,
        OPT_SAFE_TIMEOUT,
        OPT_BACKOFF_MAX,
        OPT_BACKOFF_MIN_MS,
        OPT_FIREWALL,
        OPT_LAN_IF,
        OPT_DRY_RUN,
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
        {"firewall", no_argument, NULL, OPT_FIREWALL},
        {"lan-interface", required_argument, NULL, OPT_LAN_IF},
        {"dry-run", no_argument, NULL, OPT_DRY_RUN},
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
    bool firewall = false, dry_run = false;
    const char *ifaces[FW_MAX_IFACES];
    size_t nifaces = 0;
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
        case OPT_FIREWALL: firewall = true; break;
        case OPT_LAN_IF:
            if (nifaces == FW_MAX_IFACES) {
                fprintf(stderr, "portcullis-node: at most %d --lan-interface\n", FW_MAX_IFACES);
                return 2;
            }
            ifaces[nifaces++] = optarg;
            break;
        case OPT_DRY_RUN: dry_run = true; break;
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
    if (!firewall && (nifaces || dry_run)) {
        fprintf(stderr, "portcullis-node: %s only goes with --firewall\n",
                dry_run ? "--dry-run" : "--lan-interface");
        return 2;
    }
    if (firewall && nifaces == 0) {
        fprintf(stderr, "portcullis-node: --firewall needs at least one --lan-interface (the "
                        "interfaces of the office's LAN)\n");
        return 2;
    }
    /* A node that does not program the firewall cannot be cut off by a
     * change to the document's firewall part: nothing to check then. */
    if (!firewall && acfg.safe_mode == AGENT_SAFE_FIREWALL)
        acfg.safe_mode = AGENT_SAFE_NEVER;

    /* Enforcement never waits for the controller: the cached document
     * first, then the file, then the built-in policy. */
    char err[1024], cached_sha[65];
    char source[1200];
    const char *current_sha = NULL;
    pc_policy *policy = NULL;
    bool cached;
    if (enforced_policy(state_dir, policy_path, &policy, cached_sha, &cached, source,
                        sizeof(source)) != 0)
        return 1;
    if (cached)
        current_sha = cached_sha;
    bool enrolled = agent_enrolled(state_dir);

    int status = 1;
    node n = {.policy_path = policy_path, .firewall = firewall};
    char *ruleset = NULL;
    if (firewall) {
        if (firewall_local(&n.fwl, ifaces, nifaces, cfg.listen, cfg.transparent) != 0) {
            pc_policy_unref(policy);
            return 2;
        }
        if (fw_generate(policy, &n.fwl, &ruleset, err, sizeof(err)) != 0) {
            fprintf(stderr, "portcullis-node: %s: %s\n", source, err);
            pc_policy_unref(policy);
            return 1;
        }
        if (dry_run) {
            fputs(ruleset, stdout);
            free(ruleset);
            pc_policy_unref(policy);
            return fflush(stdout) == 0 ? 0 : 1;
        }
        if (check_only && fw_check(ruleset, err, sizeof(err)) != 0) {
            fprintf(stderr, "portcullis-node: %s: the firewall does not load: %s\n", source, err);
            free(ruleset);
            pc_policy_unref(policy);
            return 1;
        }
    }
    if (check_only) {
        printf("%s: policy version %llu%s: configuration OK\n", source,
               (unsigned long long)pc_policy_version(policy),
               firewall ? " (and its firewall)" : "");
        free(ruleset);
        pc_policy_unref(policy);
        return 0;
    }
    /* Fail closed: the firewall is in place before the proxy listens and
     * before any connection to the controller; without it, nothing starts. */
    if (firewall) {
        int frc = fw_apply(ruleset, err, sizeof(err));
        free(ruleset);
        ruleset = NULL;
        if (frc != 0) {
            fprintf(stderr, "portcullis-node: the firewall of %s does not load: %s\n", source, err);
            pc_policy_unref(policy);
            return 1;
        }
        fprintf(stderr,
                "portcullis-node: firewall loaded (table inet " FW_TABLE ") from policy version "
                "%llu from %s\n",
                (unsigned long long)pc_policy_version(policy), source);
        fflush(stderr);
    }

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
        /* The signal handlers last: until here a stop signal is absorbed, and
         * from here on it stays blocked (pending at exit, never fatal). */
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        uv_signal_t *sigs2[] = {&n.sig_hup, &n.sig_usr1, &n.sig_int, &n.sig_term};
        for (size_t i = 0; i < 4; i++)
            if (!uv_is_closing((uv_handle_t *)sigs2[i]))
                uv_close((uv_handle_t *)sigs2[i], NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
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
