/* main.c - portcullis-node: the branch-office daemon. Today it runs the
 * conformance proxy standalone from a policy file (docs/node.md). */
#include "events.h"
#include "pc_policy.h"
#include "proxy.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NODE_VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(f, "usage: portcullis-node [options]\n"
               "  --policy FILE     effective-policy document (default: the built-in policy)\n"
               "  --listen ADDR:PORT  where the proxy listens (default 127.0.0.1:3128)\n"
               "  --transparent     take the destination from redirected connections\n"
               "  --threads N       event loops (default: one per CPU)\n"
               "  --events FILE     JSON-lines event log, '-' for stdout (default)\n"
               "  -n, --check       check the configuration, print 'configuration OK', exit\n"
               "  --version         print the version\n"
               "Signals: SIGHUP reloads the policy and reopens the event log,\n"
               "SIGUSR1 prints counters, SIGINT/SIGTERM stop.\n");
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

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"policy", required_argument, NULL, 'p'},
        {"listen", required_argument, NULL, 'l'},
        {"transparent", no_argument, NULL, 't'},
        {"threads", required_argument, NULL, 'T'},
        {"events", required_argument, NULL, 'e'},
        {"check", no_argument, NULL, 'n'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *policy_path = NULL, *events_path = "-";
    proxy_config cfg = {.listen = "127.0.0.1:3128"};
    int check_only = 0, ch;
    while ((ch = getopt_long(argc, argv, "nh", opts, NULL)) != -1) {
        switch (ch) {
        case 'p': policy_path = optarg; break;
        case 'l': cfg.listen = optarg; break;
        case 't': cfg.transparent = true; break;
        case 'T': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 256) {
                fprintf(stderr, "portcullis-node: --threads '%s': expected 1..256\n", optarg);
                return 2;
            }
            cfg.threads = (unsigned)n;
            break;
        }
        case 'e': events_path = optarg; break;
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

    pc_policy *policy;
    if (load_policy(policy_path, &policy) != 0)
        return 1;
    if (check_only) {
        printf("%s: policy version %llu: configuration OK\n",
               policy_path ? policy_path : "built-in policy",
               (unsigned long long)pc_policy_version(policy));
        pc_policy_unref(policy);
        return 0;
    }

    char err[512];
    ev_sink *events = ev_sink_open(events_path, err, sizeof(err));
    if (!events) {
        fprintf(stderr, "portcullis-node: --events %s\n", err);
        pc_policy_unref(policy);
        return 1;
    }

    /* Worker threads inherit this mask; only this thread takes signals. */
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

    proxy *px;
    if (proxy_start(&px, &cfg, policy, events, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-node: %s\n", err);
        ev_sink_close(events);
        pc_policy_unref(policy);
        return 1;
    }
    fprintf(stderr, "portcullis-node %s: listening on %s (%s proxy), policy version %llu from %s\n",
            NODE_VERSION, proxy_listen_address(px), cfg.transparent ? "transparent" : "explicit",
            (unsigned long long)pc_policy_version(policy),
            policy_path ? policy_path : "the built-in policy");
    fflush(stderr);
    pc_policy_unref(policy);

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            pc_policy *np;
            if (load_policy(policy_path, &np) == 0) {
                proxy_set_policy(px, np);
                fprintf(stderr, "portcullis-node: policy version %llu applied\n",
                        (unsigned long long)pc_policy_version(np));
                pc_policy_unref(np);
            } else {
                fprintf(stderr, "portcullis-node: keeping the previous policy\n");
            }
            ev_sink_reopen(events);
            continue;
        }
        if (sig == SIGUSR1) {
            proxy_stats st;
            proxy_get_stats(px, &st);
            fprintf(stderr,
                    "portcullis-node: accepted %llu active %llu blocked %llu exceptions %llu "
                    "refused-limit %llu bytes-up %llu bytes-down %llu\n",
                    (unsigned long long)st.accepted, (unsigned long long)st.active,
                    (unsigned long long)st.blocked, (unsigned long long)st.exceptions,
                    (unsigned long long)st.refused_limit, (unsigned long long)st.bytes_up,
                    (unsigned long long)st.bytes_down);
            continue;
        }
        break;
    }
    fprintf(stderr, "portcullis-node: stopping\n");
    proxy_stop(px);
    ev_sink_close(events);
    return 0;
}
