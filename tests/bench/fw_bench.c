/* fw_bench.c - how long the node takes to turn a policy's whitelist into an
 * nftables ruleset and to load it (issue 5: 10,000 whitelist entries applied
 * in under 100 ms), and the loader tests/bench/fw_bench.sh uses for its
 * forwarding-throughput part. Linked with pcfirewall: it times the node's own
 * fw_generate and fw_apply, nothing rewritten.
 *
 *   fw_bench [--runs R] [--unshare] [N ...]       time N-entry policies (10 1000 10000)
 *   fw_bench --load N --lan-interface IF --client ADDR --port P
 *                                                 load an N-entry policy that allows
 *                                                 ADDR to reach tcp and udp port P; it stays
 *   fw_bench --remove                             remove the table
 *   fw_bench --print N                            print policy A's ruleset (its document
 *                                                 on stderr); touches nothing
 *
 * It changes nftables only in the network namespace it runs in, and refuses
 * to run in the host's: run it under `unshare -n`, `ip netns exec NAME`, or
 * with --unshare (a private namespace of its own, timing mode only).
 *
 * A policy of N entries has N (device, port) pairs after expansion, as the
 * policy counts them: about 2,000 allow entries of 1-4 devices times 1-3
 * ports, devices distinct (85 % /32 in 10.0.0.0/8, 10 % /24, 5 % IPv6 /128),
 * ports from 24 disjoint services (one in five a range such as 16384-32767),
 * 70 % TCP. With transparent web, DNS to one resolver, high ports blocked and
 * drops logged, as a gateway runs. Two such policies (A and B, different
 * devices) are made for each N.
 *
 * For each N, R times each (default 20): pc_policy_parse of the document;
 * fw_generate; fw_check (nft -c); the first load (fw_apply with no table:
 * the table is removed, untimed, before each); the steady-state swap
 * (fw_apply replacing the loaded table, alternately B and A, so every run
 * changes the whitelist); and the two parts of fw_apply: reading the
 * counters (fw_counters: the one netlink dump fw_apply makes; it was two
 * libnftables listings, half of a 10,000-entry swap) and one libnftables
 * run of the ruleset text alone, from a memfd as fw_apply does it and from
 * a buffer. The "netlink" figure repeats the counters'. Median and max of each,
 * and the user and system CPU time of the swap and of the libnftables run.
 * After the swaps the loaded table is compared with the last ruleset
 * applied (fw_compare); the table is removed at the end.
 *
 * Prints two tables, then one JSON line:
 *   {"bench":"fw_apply","runs":20,"results":[{"entries":10000,...}],...}
 */
#include "firewall.h"
#include "pc_policy.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <nftables/libnftables.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_RUNS 20
#define MAX_SIZES 16
#define TARGET_ENTRIES 10000
#define TARGET_MS 100.0

/* --- text ------------------------------------------------------------------ */

typedef struct buf {
    char *p;
    size_t len, cap;
    bool oom;
} buf;

__attribute__((format(printf, 2, 3))) static void buf_printf(buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->p && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 65536;
        while (cap - b->len <= (size_t)n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* --- the policies ---------------------------------------------------------- */

/* Services a whitelist opens, pairwise disjoint so that the ports of one
 * entry never overlap: 19 single ports and 5 ranges. */
static const char *const port_pool[] = {
    "22",        "25",   "110",  "123",       "143",  "161-162",   "389",  "465",
    "514",       "587",  "636",  "993",       "995",  "1194",      "1433", "1521",
    "1812-1813", "3306", "3389", "5060-5061", "5432", "8000-8100", "8443", "16384-32767",
};
#define NPORTS (sizeof(port_pool) / sizeof(port_pool[0]))

typedef struct gen {
    uint64_t s;             /* xorshift64* state */
    unsigned host, net, v6; /* next /32, /24 and /128 device */
} gen;

static uint32_t rnd(gen *g)
{
    g->s ^= g->s >> 12;
    g->s ^= g->s << 25;
    g->s ^= g->s >> 27;
    return (uint32_t)((g->s * 2685821657736338717ull) >> 32);
}

/* One distinct device prefix. */
static void device(gen *g, buf *b)
{
    unsigned r = rnd(g) % 100;
    if (r < 85) {
        unsigned h = g->host++;
        buf_printf(b, "\"10.%u.%u.%u\"", 1 + h / (256 * 254), (h / 254) % 256, 1 + h % 254);
    } else if (r < 95) {
        unsigned n = g->net++;
        buf_printf(b, "\"10.%u.%u.0/24\"", 200 + n / 256, n % 256);
    } else {
        unsigned k = ++g->v6;
        buf_printf(b, "\"2001:db8::%x:%x\"", k >> 16, k & 0xffff);
    }
}

/* A policy document whose whitelist has n (device, port) pairs, the flow
 * entries (client, tcp and udp port) counted among them. variant picks
 * other devices and another draw. */
static char *policy_doc(size_t n, int variant, const char *client, unsigned port)
{
    buf b = {0};
    gen g = {.s = 0x9e3779b97f4a7c15ull ^ (uint64_t)(variant + 1) * 0x5851f42d4c957f2dull,
             .host = variant ? 100000 : 0,
             .net = variant ? 5000 : 0,
             .v6 = variant ? 50000 : 0};
    buf_printf(&b,
               "{\"schema\":\"portcullis.policy/1\",\"version\":%d,"
               "\"defaults\":{\"use_lists\":[]},\"firewall\":{"
               "\"lan\":[\"10.0.0.0/8\",\"192.0.2.0/24\",\"2001:db8::/32\"],"
               "\"web\":\"transparent\",\"dns\":[\"198.51.100.53\"],"
               "\"high_ports\":{\"block\":true,\"from\":1024},"
               "\"log_drops\":{\"per_minute\":10},\"allow\":[",
               100 + variant);
    size_t left = n, entry = 0;
    if (client && left >= 2) {
        buf_printf(&b,
                   "{\"name\":\"bench-flow-tcp\",\"devices\":[\"%s\"],\"proto\":\"tcp\","
                   "\"ports\":[\"%u\"]},"
                   "{\"name\":\"bench-flow-udp\",\"devices\":[\"%s\"],\"proto\":\"udp\","
                   "\"ports\":[\"%u\"]}",
                   client, port, client, port);
        left -= 2;
        entry = 2;
    }
    while (left > 0) {
        size_t nd = 1 + rnd(&g) % 4, np = 1 + rnd(&g) % 3;
        if (nd * np > left) {
            nd = left;
            np = 1;
        }
        bool udp = rnd(&g) % 10 < 3;
        size_t first = rnd(&g) % NPORTS;
        buf_printf(&b, "%s{\"name\":\"svc%zu\",\"devices\":[", entry ? "," : "", entry);
        for (size_t d = 0; d < nd; d++) {
            buf_printf(&b, "%s", d ? "," : "");
            device(&g, &b);
        }
        buf_printf(&b, "],\"proto\":\"%s\",\"ports\":[", udp ? "udp" : "tcp");
        for (size_t p = 0; p < np; p++)
            buf_printf(&b, "%s\"%s\"", p ? "," : "", port_pool[(first + p) % NPORTS]);
        buf_printf(&b, "]}");
        left -= nd * np;
        entry++;
    }
    buf_printf(&b, "]}}");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* Elements of allow4 and allow6 in a generated ruleset. */
static size_t count_elements(const char *r)
{
    size_t n = 0;
    for (const char *s = r; (s = strstr(s, " . ")) != NULL; s += 3)
        if (strncmp(s + 3, "tcp . ", 6) == 0 || strncmp(s + 3, "udp . ", 6) == 0)
            n++;
    return n;
}

/* --- the namespace --------------------------------------------------------- */

static bool same_ns(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev;
}

/* 0 when this process is in a network namespace other than the host's;
 * -1 with err otherwise. The host's is PID 1's; when that cannot be read
 * (a sandbox hides it), a namespace named by `ip netns add` or one other
 * than the parent's (`unshare -n` and `ip netns exec` from a host shell)
 * is accepted. */
static int check_netns(char *err, size_t errlen)
{
    struct stat self, other;
    if (stat("/proc/self/ns/net", &self) != 0) {
        snprintf(err, errlen, "cannot read /proc/self/ns/net: %s", strerror(errno));
        return -1;
    }
    if (stat("/proc/1/ns/net", &other) == 0) {
        if (!same_ns(&self, &other))
            return 0;
        snprintf(err, errlen, "this is the host's network namespace (PID 1's)");
        return -1;
    }
    DIR *d = opendir("/run/netns");
    if (d) {
        struct dirent *e;
        bool named = false;
        while (!named && (e = readdir(d)) != NULL) {
            char path[300];
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof(path), "/run/netns/%s", e->d_name);
            named = stat(path, &other) == 0 && same_ns(&self, &other);
        }
        closedir(d);
        if (named)
            return 0;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)getppid());
    if (stat(path, &other) == 0 && !same_ns(&self, &other))
        return 0;
    snprintf(err, errlen,
             "cannot tell that this is not the host's network namespace (PID 1's is "
             "unreadable, and this one is unnamed and its parent's)");
    return -1;
}

/* --- timing ---------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double cpu_ms(const struct timeval *tv)
{
    return (double)tv->tv_sec * 1e3 + (double)tv->tv_usec / 1e3;
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct stat2 {
    double median, max;
} stat2;

static stat2 summarize(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), dbl_cmp);
    double med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    return (stat2){med, v[n - 1]};
}

/* One libnftables run of text in a fresh context, as fw_apply's last step
 * makes it: from a memfd (a file, so that nftables names the line it
 * refuses), or, from_buffer, straight from memory. */
static int nft_raw(const char *text, bool from_buffer, char *err, size_t errlen)
{
    int rc = -1, fd = -1;
    struct nft_ctx *nft = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!nft) {
        snprintf(err, errlen, "nft_ctx_new failed");
        return -1;
    }
    if (nft_ctx_buffer_output(nft) != 0 || nft_ctx_buffer_error(nft) != 0) {
        snprintf(err, errlen, "nft_ctx_buffer_* failed");
        goto done;
    }
    int r;
    if (from_buffer) {
        r = nft_run_cmd_from_buffer(nft, text);
    } else {
        char path[64];
        size_t len = strlen(text);
        fd = memfd_create("fw-bench", MFD_CLOEXEC);
        if (fd < 0 || write(fd, text, len) != (ssize_t)len) {
            snprintf(err, errlen, "memfd: %s", strerror(errno));
            goto done;
        }
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        r = nft_run_cmd_from_filename(nft, path);
    }
    if (r != 0) {
        const char *e = nft_ctx_get_error_buffer(nft);
        snprintf(err, errlen, "libnftables: %.400s", e ? e : "failed");
        goto done;
    }
    rc = 0;
done:
    if (fd >= 0)
        close(fd);
    nft_ctx_free(nft);
    return rc;
}

typedef struct result {
    size_t entries, elements, bytes;
    stat2 parse, gen, check, first, apply, counters, counters_nl, raw, rawbuf;
    double apply_user_ms, apply_sys_ms; /* mean per swap */
    double raw_user_ms, raw_sys_ms;     /* mean per libnftables run */
    bool loaded_matches;
} result;

static int bench_size(size_t n, int runs, result *res, char *err, size_t errlen)
{
    char *doc[2] = {NULL, NULL}, *rs[2] = {NULL, NULL};
    pc_policy *pol[2] = {NULL, NULL};
    double *t = NULL;
    int rc = -1;
    fw_local local = {.lan_ifaces = {"lan0"}, .nifaces = 1, .proxy_port = 3129};
    memset(res, 0, sizeof(*res));
    res->entries = n;
    t = calloc((size_t)runs, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (int v = 0; v < 2; v++) {
        doc[v] = policy_doc(n, v, NULL, 0);
        if (!doc[v]) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        if (pc_policy_parse(doc[v], strlen(doc[v]), &pol[v], err, errlen) != 0)
            goto done;
    }

    for (int i = 0; i < runs; i++) {
        pc_policy *p = NULL;
        double t0 = now_ms();
        int r = pc_policy_parse(doc[0], strlen(doc[0]), &p, err, errlen);
        t[i] = now_ms() - t0;
        pc_policy_unref(p);
        if (r != 0)
            goto done;
    }
    res->parse = summarize(t, (size_t)runs);

    for (int i = 0; i < runs; i++) {
        char *out = NULL;
        double t0 = now_ms();
        int r = fw_generate(pol[i % 2], &local, &out, err, errlen);
        t[i] = now_ms() - t0;
        free(out);
        if (r != 0)
            goto done;
    }
    res->gen = summarize(t, (size_t)runs);
    for (int v = 0; v < 2; v++)
        if (fw_generate(pol[v], &local, &rs[v], err, errlen) != 0)
            goto done;
    res->bytes = strlen(rs[0]);
    res->elements = count_elements(rs[0]);

    for (int i = 0; i < runs; i++) {
        double t0 = now_ms();
        int r = fw_check(rs[0], err, errlen);
        t[i] = now_ms() - t0;
        if (r != 0)
            goto done;
    }
    res->check = summarize(t, (size_t)runs);

    for (int i = 0; i < runs; i++) {
        if (fw_remove(err, errlen) != 0)
            goto done;
        double t0 = now_ms();
        int r = fw_apply(rs[0], err, errlen);
        t[i] = now_ms() - t0;
        if (r != 0)
            goto done;
    }
    res->first = summarize(t, (size_t)runs);

    /* A loaded, then B, A, B, ...: each swap replaces a whole table. */
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    for (int i = 0; i < runs; i++) {
        double t0 = now_ms();
        int r = fw_apply(rs[(i + 1) % 2], err, errlen);
        t[i] = now_ms() - t0;
        if (r != 0)
            goto done;
    }
    getrusage(RUSAGE_SELF, &ru1);
    res->apply = summarize(t, (size_t)runs);
    res->apply_user_ms = (cpu_ms(&ru1.ru_utime) - cpu_ms(&ru0.ru_utime)) / runs;
    res->apply_sys_ms = (cpu_ms(&ru1.ru_stime) - cpu_ms(&ru0.ru_stime)) / runs;
    if (fw_compare(rs[runs % 2], &res->loaded_matches, err, errlen) != 0)
        goto done;

    for (int i = 0; i < runs; i++) {
        cJSON *c = cJSON_CreateObject();
        if (!c) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        double t0 = now_ms();
        int r = fw_counters(c, err, errlen);
        t[i] = now_ms() - t0;
        cJSON_Delete(c);
        if (r != 0)
            goto done;
    }
    res->counters = summarize(t, (size_t)runs);

    /* fw_counters is the one netlink dump itself (node/firewall.c reads the
     * counters that way since it cost half a swap through libnftables): the
     * "netlink" column, kept so runs compare, is the same figure. */
    res->counters_nl = res->counters;

    getrusage(RUSAGE_SELF, &ru0);
    for (int i = 0; i < runs; i++) {
        double t0 = now_ms();
        int r = nft_raw(rs[i % 2], false, err, errlen);
        t[i] = now_ms() - t0;
        if (r != 0)
            goto done;
    }
    getrusage(RUSAGE_SELF, &ru1);
    res->raw = summarize(t, (size_t)runs);
    res->raw_user_ms = (cpu_ms(&ru1.ru_utime) - cpu_ms(&ru0.ru_utime)) / runs;
    res->raw_sys_ms = (cpu_ms(&ru1.ru_stime) - cpu_ms(&ru0.ru_stime)) / runs;
    for (int i = 0; i < runs; i++) {
        double t0 = now_ms();
        int r = nft_raw(rs[i % 2], true, err, errlen);
        t[i] = now_ms() - t0;
        if (r != 0)
            goto done;
    }
    res->rawbuf = summarize(t, (size_t)runs);
    if (fw_remove(err, errlen) != 0)
        goto done;
    rc = 0;
done:
    for (int v = 0; v < 2; v++) {
        free(doc[v]);
        free(rs[v]);
        pc_policy_unref(pol[v]);
    }
    free(t);
    return rc;
}

static void add_stat(cJSON *o, const char *name, stat2 s)
{
    char key[64];
    snprintf(key, sizeof(key), "%s_ms_median", name);
    cJSON_AddNumberToObject(o, key, (double)(long long)(s.median * 1000 + 0.5) / 1000);
    snprintf(key, sizeof(key), "%s_ms_max", name);
    cJSON_AddNumberToObject(o, key, (double)(long long)(s.max * 1000 + 0.5) / 1000);
}

static double round3(double v)
{
    return (double)(long long)(v * 1000 + 0.5) / 1000;
}

static int run_timing(const size_t *sizes, size_t nsizes, int runs)
{
    char err[1024];
    int rc = 1;
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!root || !arr) {
        fprintf(stderr, "fw_bench: out of memory\n");
        cJSON_Delete(root);
        cJSON_Delete(arr);
        return 1;
    }
    cJSON_AddStringToObject(root, "bench", "fw_apply");
    cJSON_AddNumberToObject(root, "runs", runs);
    cJSON_AddItemToObject(root, "results", arr);
    if (fw_remove(err, sizeof(err)) != 0) {
        fprintf(stderr, "fw_bench: nftables is not usable here: %s\n", err);
        goto done;
    }
    result res[MAX_SIZES];
    bool target_met = true, target_seen = false;
    for (size_t i = 0; i < nsizes; i++) {
        result *r = &res[i];
        fprintf(stderr, "fw_bench: %zu entries, %d runs of each step\n", sizes[i], runs);
        if (bench_size(sizes[i], runs, r, err, sizeof(err)) != 0) {
            fprintf(stderr, "fw_bench: %zu entries: %s\n", sizes[i], err);
            goto done;
        }
        cJSON *o = cJSON_CreateObject();
        if (!o)
            goto done;
        cJSON_AddNumberToObject(o, "entries", (double)r->entries);
        cJSON_AddNumberToObject(o, "elements", (double)r->elements);
        cJSON_AddNumberToObject(o, "ruleset_bytes", (double)r->bytes);
        add_stat(o, "parse", r->parse);
        add_stat(o, "generate", r->gen);
        add_stat(o, "check", r->check);
        add_stat(o, "first_apply", r->first);
        add_stat(o, "apply", r->apply);
        add_stat(o, "counters", r->counters);
        add_stat(o, "counters_netlink", r->counters_nl);
        add_stat(o, "nft_run", r->raw);
        add_stat(o, "nft_run_buffer", r->rawbuf);
        cJSON_AddNumberToObject(o, "apply_user_ms", round3(r->apply_user_ms));
        cJSON_AddNumberToObject(o, "apply_sys_ms", round3(r->apply_sys_ms));
        cJSON_AddNumberToObject(o, "nft_run_user_ms", round3(r->raw_user_ms));
        cJSON_AddNumberToObject(o, "nft_run_sys_ms", round3(r->raw_sys_ms));
        cJSON_AddNumberToObject(o, "generate_apply_ms_median",
                                round3(r->gen.median + r->apply.median));
        cJSON_AddBoolToObject(o, "loaded_matches", r->loaded_matches);
        cJSON_AddItemToArray(arr, o);
        if (!r->loaded_matches)
            target_met = false;
        if (r->entries == TARGET_ENTRIES) {
            target_seen = true;
            if (r->apply.median >= TARGET_MS)
                target_met = false;
        }
    }
    printf("\nRuleset generation and apply, ms (median / max of %d runs)\n", runs);
    printf("%8s %8s %8s %15s %15s %15s %17s %8s\n", "entries", "elements", "ruleset", "generate",
           "first load", "swap (apply)", "generate + swap", "matches");
    for (size_t i = 0; i < nsizes; i++) {
        const result *r = &res[i];
        printf("%8zu %8zu %6zuKB %7.2f/%7.2f %7.2f/%7.2f %7.2f/%7.2f %17.2f %8s\n", r->entries,
               r->elements, (r->bytes + 512) / 1024, r->gen.median, r->gen.max, r->first.median,
               r->first.max, r->apply.median, r->apply.max, r->gen.median + r->apply.median,
               r->loaded_matches ? "yes" : "NO");
    }
    printf("\nWhere a swap's time goes, ms median (CPU: mean user / system per run)\n");
    printf("%8s %9s %8s %8s %11s %15s %15s %11s %11s %13s\n", "entries", "parse doc", "nft -c",
           "swap", "= counters", "+ nft run (file)", "nft run CPU", "from buffer", "netlink cnt",
           "swap CPU");
    for (size_t i = 0; i < nsizes; i++) {
        const result *r = &res[i];
        printf("%8zu %9.2f %8.2f %8.2f %11.2f %16.2f %7.1f/%7.1f %11.2f %11.3f %6.1f/%6.1f\n",
               r->entries, r->parse.median, r->check.median, r->apply.median, r->counters.median,
               r->raw.median, r->raw_user_ms, r->raw_sys_ms, r->rawbuf.median,
               r->counters_nl.median, r->apply_user_ms, r->apply_sys_ms);
    }
    if (target_seen)
        cJSON_AddBoolToObject(root, "target_10000_apply_lt_100ms", target_met);
    char *line = cJSON_PrintUnformatted(root);
    if (!line)
        goto done;
    printf("%s\n", line);
    free(line);
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* Prints the ruleset of policy A of n entries (for nft -f by hand) and,
 * on stderr, the document. */
static int run_print(size_t n)
{
    char err[1024], *doc = NULL, *rs = NULL;
    pc_policy *p = NULL;
    int rc = 1;
    fw_local local = {.lan_ifaces = {"lan0"}, .nifaces = 1, .proxy_port = 3129};
    doc = policy_doc(n, 0, NULL, 0);
    if (!doc) {
        fprintf(stderr, "fw_bench: out of memory\n");
        goto done;
    }
    if (pc_policy_parse(doc, strlen(doc), &p, err, sizeof(err)) != 0 ||
        fw_generate(p, &local, &rs, err, sizeof(err)) != 0) {
        fprintf(stderr, "fw_bench: %s\n", err);
        goto done;
    }
    fprintf(stderr, "%s\n", doc);
    fputs(rs, stdout);
    rc = 0;
done:
    free(doc);
    free(rs);
    pc_policy_unref(p);
    return rc;
}

/* Loads an n-entry policy for the forwarding measurement and leaves it. */
static int run_load(size_t n, const char *iface, const char *client, unsigned port)
{
    char err[1024], *doc = NULL, *rs = NULL;
    pc_policy *p = NULL;
    int rc = 1;
    fw_local local = {.lan_ifaces = {iface}, .nifaces = 1, .proxy_port = 3129};
    doc = policy_doc(n, 0, client, port);
    if (!doc) {
        fprintf(stderr, "fw_bench: out of memory\n");
        goto done;
    }
    if (pc_policy_parse(doc, strlen(doc), &p, err, sizeof(err)) != 0 ||
        fw_generate(p, &local, &rs, err, sizeof(err)) != 0) {
        fprintf(stderr, "fw_bench: %s\n", err);
        goto done;
    }
    double t0 = now_ms();
    if (fw_apply(rs, err, sizeof(err)) != 0) {
        fprintf(stderr, "fw_bench: apply: %s\n", err);
        goto done;
    }
    printf("{\"loaded\":true,\"entries\":%zu,\"elements\":%zu,\"ruleset_bytes\":%zu,"
           "\"apply_ms\":%.3f}\n",
           n, count_elements(rs), strlen(rs), now_ms() - t0);
    rc = 0;
done:
    free(doc);
    free(rs);
    pc_policy_unref(p);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: fw_bench [--runs R] [--unshare] [N ...]\n"
                    "       fw_bench --load N --lan-interface IF --client ADDR --port P\n"
                    "       fw_bench --remove\n"
                    "       fw_bench --print N\n");
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v == 0 || v > PC_FW_MAX_ALLOW)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    size_t sizes[MAX_SIZES], nsizes = 0, load = 0, print = 0;
    int runs = DEFAULT_RUNS;
    bool unshare_ns = false, remove = false;
    const char *iface = NULL, *client = NULL;
    unsigned port = 0;
    char err[512];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--runs") == 0 && v) {
            runs = atoi(v);
            i++;
            if (runs < 1 || runs > 10000) {
                fprintf(stderr, "fw_bench: --runs '%s': 1 to 10000\n", v);
                return 2;
            }
        } else if (strcmp(a, "--unshare") == 0) {
            unshare_ns = true;
        } else if (strcmp(a, "--remove") == 0) {
            remove = true;
        } else if (strcmp(a, "--load") == 0 && v) {
            if (parse_size(v, &load) != 0 || load < 2) {
                fprintf(stderr, "fw_bench: --load '%s': 2 to %d entries\n", v, PC_FW_MAX_ALLOW);
                return 2;
            }
            i++;
        } else if (strcmp(a, "--print") == 0 && v) {
            if (parse_size(v, &print) != 0) {
                fprintf(stderr, "fw_bench: --print '%s': 1 to %d entries\n", v, PC_FW_MAX_ALLOW);
                return 2;
            }
            i++;
        } else if (strcmp(a, "--lan-interface") == 0 && v) {
            iface = v;
            i++;
        } else if (strcmp(a, "--client") == 0 && v) {
            client = v;
            i++;
        } else if (strcmp(a, "--port") == 0 && v) {
            port = (unsigned)atoi(v);
            i++;
            if (port < 1 || port > 65535) {
                fprintf(stderr, "fw_bench: --port '%s': 1 to 65535\n", v);
                return 2;
            }
        } else if (a[0] != '-' && nsizes < MAX_SIZES && parse_size(a, &sizes[nsizes]) == 0) {
            nsizes++;
        } else {
            fprintf(stderr, "fw_bench: unknown or incomplete argument '%s'\n", a);
            usage();
            return 2;
        }
    }
    if (print)
        return run_print(print);
    if (load && (!iface || !client || !port)) {
        fprintf(stderr, "fw_bench: --load needs --lan-interface, --client and --port\n");
        return 2;
    }
    if (unshare_ns && (load || remove)) {
        fprintf(stderr, "fw_bench: --unshare is for timing: a table loaded there would vanish\n");
        return 2;
    }
    if (unshare_ns && unshare(CLONE_NEWNET) != 0) {
        fprintf(stderr, "fw_bench: unshare(CLONE_NEWNET): %s (needs root)\n", strerror(errno));
        return 1;
    }
    if (check_netns(err, sizeof(err)) != 0) {
        fprintf(stderr,
                "fw_bench: %s; it changes nftables and must not touch the host's: run it "
                "under `unshare -n`, `ip netns exec NAME`, or with --unshare\n",
                err);
        return 1;
    }
    if (remove) {
        if (fw_remove(err, sizeof(err)) != 0) {
            fprintf(stderr, "fw_bench: %s\n", err);
            return 1;
        }
        return 0;
    }
    if (load)
        return run_load(load, iface, client, port);
    if (nsizes == 0) {
        sizes[nsizes++] = 10;
        sizes[nsizes++] = 1000;
        sizes[nsizes++] = 10000;
    }
    return run_timing(sizes, nsizes, runs);
}
