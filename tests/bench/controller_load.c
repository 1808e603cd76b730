/* controller_load.c - fills a controller database through the store API and
 * times event queries, for tests/bench/controller_bench.sh (issue 3).
 *
 *   controller_load load DB TOKEN
 *       5 regions, 2,000 offices (one node each), 10,000 groups (10 for
 *       every office, 9,990 of one office each), 145 rules; imports TOKEN as
 *       an admin token of user "admin". Every object is its own store call,
 *       so its own transaction, revision and audit row: the store has no
 *       batch create.
 *   controller_load events DB N [BATCH]
 *       stores N events through store_events_insert, BATCH (default 1000) a
 *       call, the nodes in turn, times rising over the last 30 days (each
 *       batch a contiguous stretch of time, as a node ships its recent events).
 *   controller_load query DB SAMPLES
 *       "last 100 events of one office" (office filter, limit 100) for SAMPLES
 *       random offices; p50, p99 and max in milliseconds.
 *
 * Each mode ends with one line "RESULT key=value ..." for the script.
 */
#include "store.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { REGIONS = 5, OFFICES = 2000, GROUPS = 10000, EVERYWHERE = 10 };
#define ACTOR "bench"
#define DAY_MS 86400000LL

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die_store(store *s, const char *what, int rc)
{
    fprintf(stderr, "controller_load: %s: %s (%s, field '%s')\n", what, store_error_message(s),
            store_code_name(rc), store_error_field(s));
    exit(1);
}

static cJSON *parsef(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static cJSON *parsef(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    cJSON *j = cJSON_Parse(buf);
    if (!j) {
        fprintf(stderr, "controller_load: bad JSON %s\n", buf);
        exit(1);
    }
    return j;
}

static int64_t create(store *s, store_kind k, cJSON *in)
{
    cJSON *out = NULL;
    int rc = store_object_create(s, k, in, ACTOR, &out);
    if (rc != STORE_OK)
        die_store(s, store_kind_name(k), rc);
    int64_t id = (int64_t)cJSON_GetObjectItemCaseSensitive(out, "id")->valuedouble;
    cJSON_Delete(out);
    cJSON_Delete(in);
    return id;
}

static store *open_db(const char *path)
{
    store *s = NULL;
    char err[512];
    if (store_open(path, &s, err, sizeof(err)) != STORE_OK) {
        fprintf(stderr, "controller_load: %s: %s\n", path, err);
        exit(1);
    }
    return s;
}

static int do_load(const char *path, const char *token)
{
    store *s = open_db(path);
    int64_t region[REGIONS], office[OFFICES], uid = 0;
    size_t nrules = 0;
    double t0 = now_s(), t;
    int rc;

    for (int i = 0; i < REGIONS; i++)
        region[i] = create(s, STORE_REGION, parsef("{\"name\":\"region-%d\"}", i + 1));
    for (int i = 0; i < OFFICES; i++)
        office[i] = create(s, STORE_OFFICE,
                           parsef("{\"name\":\"office-%04d\",\"region_id\":%lld,"
                                  "\"lan_prefixes\":[\"10.%d.%d.0/24\"]}",
                                  i + 1, (long long)region[i % REGIONS], 100 + i / 256, i % 256));
    t = now_s();
    printf("regions+offices: %d in %.1f s\n", REGIONS + OFFICES, t - t0);
    for (int i = 0; i < OFFICES; i++)
        create(s, STORE_NODE,
               parsef("{\"name\":\"node-%04d\",\"office_id\":%lld}", i + 1, (long long)office[i]));
    printf("nodes: %d in %.1f s\n", OFFICES, now_s() - t);
    t = now_s();
    /* 10 groups of every office, then 9,990 spread over the offices. */
    for (int i = 0; i < EVERYWHERE; i++)
        create(s, STORE_GROUP,
               parsef("{\"name\":\"all-%d\",\"sources\":[\"172.16.%d.0/24\"],\"users\":[]}", i,
                      i));
    for (int i = 0; i < GROUPS - EVERYWHERE; i++)
        create(s, STORE_GROUP,
               parsef("{\"name\":\"g%d\",\"office_id\":%lld,\"sources\":[\"10.%d.%d.0/24\"]}", i,
                      (long long)office[i % OFFICES], i / 256, i % 256));
    printf("groups: %d in %.1f s\n", GROUPS, now_s() - t);
    t = now_s();
    /* 10 global, 5 per region, 1 per 20 offices (100), and 1 per 1,000
     * groups (10 of the first groups). */
    for (int i = 0; i < 10; i++, nrules++)
        create(s, STORE_RULE,
               parsef("{\"scope\":\"global\",\"kind\":\"domain\",\"value\":\"blocked%d.example\","
                      "\"action\":\"block\",\"comment\":\"bench\"}",
                      i));
    for (int r = 0; r < REGIONS; r++)
        for (int i = 0; i < 5; i++, nrules++)
            create(s, STORE_RULE,
                   parsef("{\"scope\":\"region\",\"scope_id\":%lld,\"kind\":\"prefix\","
                          "\"value\":\"198.51.%d.0/24\",\"action\":\"block\"}",
                          (long long)region[r], r * 5 + i));
    for (int i = 0; i < OFFICES; i += 20, nrules++)
        create(s, STORE_RULE,
               parsef("{\"scope\":\"office\",\"scope_id\":%lld,\"kind\":\"domain\","
                      "\"value\":\"office%d.example\",\"action\":\"allow\"}",
                      (long long)office[i], i));
    for (int i = 0; i < 10; i++, nrules++)
        create(s, STORE_RULE,
               parsef("{\"scope\":\"group\",\"scope_id\":%d,\"kind\":\"url_suffix\","
                      "\"value\":\"setup%d.exe\",\"action\":\"block\"}",
                      EVERYWHERE + 1 + i * 1000, i));
    printf("rules: %zu in %.1f s\n", nrules, now_s() - t);
    if ((rc = store_user_find(s, "admin", &uid)) != STORE_OK)
        die_store(s, "user admin", rc);
    if ((rc = store_token_import(s, uid, STORE_ROLE_ADMIN, "bench", token, ACTOR, NULL)) !=
        STORE_OK)
        die_store(s, "token import", rc);
    int64_t rev = 0;
    if ((rc = store_revision_current(s, &rev)) != STORE_OK)
        die_store(s, "revision", rc);
    double total = now_s() - t0;
    printf("load: %d regions, %d offices, %d nodes, %d groups, %zu rules, revision %lld, %.1f s\n",
           REGIONS, OFFICES, OFFICES, GROUPS, nrules, (long long)rev, total);
    printf("RESULT load_s=%.1f rules=%zu revision=%lld\n", total, nrules, (long long)rev);
    store_close(s);
    return 0;
}

static const char *const reasons[] = {"blocked-domain", "blocked-prefix", "tls-certificate",
                                      "port-not-allowed", "executable-download"};

static int do_events(const char *path, long long n, int batch)
{
    store *s = open_db(path);
    int64_t *seq = calloc(OFFICES, sizeof(*seq));
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t end = (int64_t)wall.tv_sec * 1000 - 60000, start = end - 30 * DAY_MS;
    double step = (double)(end - start) / (double)(n > 0 ? n : 1);
    long long done = 0, k = 0;
    double t0 = now_s(), tlast = t0;
    char node[32], src[32], grp[16];
    while (done < n) {
        int off = (int)(k++ % OFFICES), m = (int)(n - done < batch ? n - done : batch);
        snprintf(node, sizeof(node), "node-%04d", off + 1);
        cJSON *arr = cJSON_CreateArray();
        for (int j = 0; j < m; j++) {
            long long i = done + j;
            int64_t sq = ++seq[off];
            int kind = (int)(sq % 10); /* 7 block, 2 exception, 1 allow */
            const char *type = kind < 7 ? "block" : kind < 9 ? "exception" : "allow";
            cJSON *e = cJSON_CreateObject();
            snprintf(src, sizeof(src), "10.%d.%d.%d", 100 + off / 256, off % 256,
                     (int)(sq % 250) + 2);
            /* The office's own groups are g(off), g(off+2000), ...; "defaults" sometimes. */
            if (sq % 7 == 0)
                snprintf(grp, sizeof(grp), "defaults");
            else
                snprintf(grp, sizeof(grp), "g%d", off + OFFICES * (int)(sq % 5));
            cJSON_AddNumberToObject(e, "seq", (double)sq);
            cJSON_AddNumberToObject(e, "time", (double)(start + (int64_t)((double)i * step)));
            cJSON_AddStringToObject(e, "type", type);
            cJSON_AddStringToObject(e, "reason",
                                    kind < 7   ? reasons[sq % 5]
                                    : kind < 9 ? "skype-exception"
                                               : "closed");
            cJSON_AddStringToObject(e, "detail", kind < 7 ? "host matches skype.com (list skype)" : "");
            cJSON_AddStringToObject(e, "source", src);
            cJSON_AddNumberToObject(e, "source_port", (double)(1024 + sq % 60000));
            cJSON_AddStringToObject(e, "destination", "www.skype.com");
            cJSON_AddNullToObject(e, "destination_address");
            cJSON_AddNumberToObject(e, "port", 443);
            cJSON_AddStringToObject(e, "protocol", "tls");
            cJSON_AddStringToObject(e, "group", grp);
            cJSON_AddNumberToObject(e, "policy_version", 12345);
            cJSON_AddNumberToObject(e, "bytes_up", 517);
            cJSON_AddNumberToObject(e, "bytes_down", kind == 9 ? 4096 : 0);
            cJSON_AddItemToArray(arr, e);
        }
        size_t ins = 0;
        int rc = store_events_insert(s, node, arr, &ins);
        if (rc != STORE_OK)
            die_store(s, "events insert", rc);
        if ((int)ins != m) {
            fprintf(stderr, "controller_load: %s: %zu of %d events new\n", node, ins, m);
            return 1;
        }
        cJSON_Delete(arr);
        done += m;
        double t = now_s();
        if (t - tlast >= 10) {
            printf("  %lld events, %.0f/s\n", done, (double)done / (t - t0));
            fflush(stdout);
            tlast = t;
        }
    }
    double total = now_s() - t0;
    printf("events: %lld in %.1f s (%.0f/s, batches of %d)\n", n, total, (double)n / total, batch);
    printf("RESULT events=%lld events_insert_s=%.1f events_per_s=%.0f\n", n, total,
           (double)n / total);
    store_close(s);
    free(seq);
    return 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int do_query(const char *path, int samples)
{
    store *s = open_db(path);
    double *ms = calloc((size_t)samples, sizeof(*ms));
    unsigned seed = 12345;
    long long nrows = 0;
    for (int i = 0; i < samples; i++) {
        store_event_query q = {.office_id = 1 + rand_r(&seed) % OFFICES, .limit = 100};
        cJSON *out = NULL;
        double t = now_s();
        int rc = store_events_query(s, &q, &out);
        ms[i] = (now_s() - t) * 1000;
        if (rc != STORE_OK)
            die_store(s, "events query", rc);
        int got = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(out, "events"));
        nrows += got;
        cJSON_Delete(out);
    }
    qsort(ms, (size_t)samples, sizeof(*ms), cmp_d);
    double p50 = ms[samples / 2], p99 = ms[(samples * 99) / 100 < samples ? (samples * 99) / 100 : samples - 1],
           max = ms[samples - 1];
    printf("events query (office, limit 100): %d offices, %.1f events each, p50 %.3f ms, p99 %.3f "
           "ms, max %.3f ms\n",
           samples, (double)nrows / samples, p50, p99, max);
    printf("RESULT q_p50_ms=%.3f q_p99_ms=%.3f q_max_ms=%.3f q_rows=%.1f\n", p50, p99, max,
           (double)nrows / samples);
    store_close(s);
    free(ms);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "load") == 0)
        return do_load(argv[2], argv[3]);
    if (argc >= 4 && strcmp(argv[1], "events") == 0)
        return do_events(argv[2], atoll(argv[3]), argc >= 5 ? atoi(argv[4]) : 1000);
    if (argc >= 4 && strcmp(argv[1], "query") == 0)
        return do_query(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage: controller_load load DB TOKEN | events DB N [BATCH] | query DB "
                    "SAMPLES\n");
    return 2;
}
