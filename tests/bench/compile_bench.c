/* compile_bench.c - how long the policy compiler takes to compile every
 * office's document after a global change (issue 3: 2,000 offices, 10,000
 * groups, 5 regions, under 1 s). Builds the model in memory: the shipped
 * Skype and Teams lists, 10 groups in every office and 9,990 office groups,
 * about 450 rules at every scope. Then compiles all offices once (warm-up),
 * adds one global rule as a new revision, and times compiling every office
 * again; also times the dry run (compiler_diff) of that change.
 *
 *   compile_bench [--rounds N] [--source-dir DIR]
 *
 * Prints what it measured, then one JSON line:
 *   {"bench":"compile","offices":2000,"groups":10000,"seconds":...}
 * "seconds" is the best of the rounds (default 5).
 */
#include "compiler.h"
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef SOURCE_DIR
#define SOURCE_DIR "."
#endif

enum { REGIONS = 5, OFFICES = 2000, GROUPS = 10000, EVERYWHERE = 10 };

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "compile_bench: out of memory\n");
        exit(1);
    }
    return p;
}

__attribute__((format(printf, 1, 2))) static char *xprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) {
        fprintf(stderr, "compile_bench: out of memory\n");
        exit(1);
    }
    va_end(ap);
    return s;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "compile_bench: cannot read %s (use --source-dir)\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = xcalloc((size_t)n + 1, 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "compile_bench: short read on %s\n", path);
        exit(1);
    }
    fclose(f);
    return buf;
}

static model_rule *add_rule(model *m, model_scope scope, int64_t scope_id, model_rule_kind kind,
                            char *value, bool allow)
{
    model_rule *r = &m->rules[m->nrules];
    *r = (model_rule){.id = (int64_t)m->nrules + 1,
                      .scope = scope,
                      .scope_id = scope_id,
                      .kind = kind,
                      .value = value,
                      .allow = allow};
    m->nrules++;
    return r;
}

static void build(model *m, const char *source_dir)
{
    m->revision = 1000;
    /* global settings */
    m->global.has_ports = true;
    m->global.nports = 4;
    m->global.ports = xcalloc(4, sizeof(uint16_t));
    m->global.port_protos = xcalloc(4, sizeof(char *));
    static const uint16_t gp[] = {80, 443, 554, 1755};
    static const char *const gpp[] = {"http", "tls", "rtsp", "mms"};
    for (int i = 0; i < 4; i++) {
        m->global.ports[i] = gp[i];
        m->global.port_protos[i] = strdup(gpp[i]);
    }
    m->global.has_use_lists = true;
    m->global.nuse_lists = 1;
    m->global.use_lists = xcalloc(1, sizeof(char *));
    m->global.use_lists[0] = strdup("skype");
    m->global.has_require_certificate = m->global.require_certificate = true;

    m->nlists = 2;
    m->lists = xcalloc(2, sizeof(model_list));
    m->lists[0].name = strdup("skype");
    m->lists[1].name = strdup("teams");
    for (int i = 0; i < 2; i++) {
        char *path = xprintf("%s/shared/lists/%s.json", source_dir, m->lists[i].name);
        m->lists[i].json = slurp(path);
        free(path);
    }

    m->nregions = REGIONS;
    m->regions = xcalloc(REGIONS, sizeof(model_region));
    for (int r = 0; r < REGIONS; r++) {
        m->regions[r].id = r + 1;
        m->regions[r].name = xprintf("region-%d", r + 1);
        if (r % 2 == 1) { /* some regions also block Teams */
            model_settings *s = &m->regions[r].settings;
            s->has_use_lists = true;
            s->nuse_lists = 2;
            s->use_lists = xcalloc(2, sizeof(char *));
            s->use_lists[0] = strdup("skype");
            s->use_lists[1] = strdup("teams");
        }
    }

    m->noffices = OFFICES;
    m->offices = xcalloc(OFFICES, sizeof(model_office));
    m->nnodes = OFFICES;
    m->nodes = xcalloc(OFFICES, sizeof(model_node));
    for (int o = 0; o < OFFICES; o++) {
        model_office *of = &m->offices[o];
        of->id = 1000 + o;
        of->region_id = o % REGIONS + 1;
        of->name = xprintf("office-%04d", o);
        of->nlan = 1;
        of->lan_prefixes = xcalloc(1, sizeof(char *));
        of->lan_prefixes[0] = xprintf("10.%d.%d.0/24", o >> 8, o & 255);
        if (o % 7 == 0) {
            of->settings.has_block_executables = true;
            of->settings.block_executables = false;
        }
        m->nodes[o] = (model_node){.id = o + 1, .name = xprintf("gw-%04d", o), .office_id = of->id};
    }

    /* 10 groups in every office, the rest 4 or 5 per office */
    m->ngroups = GROUPS;
    m->groups = xcalloc(GROUPS, sizeof(model_group));
    size_t g = 0;
    for (int k = 0; k < EVERYWHERE; k++, g++) {
        m->groups[g] = (model_group){.id = (int64_t)g + 1, .name = xprintf("everywhere-%d", k)};
        m->groups[g].nsources = 1;
        m->groups[g].sources = xcalloc(1, sizeof(char *));
        m->groups[g].sources[0] = xprintf("172.16.%d.0/24", k);
    }
    for (int o = 0; g < GROUPS; o = (o + 1) % OFFICES) {
        for (int k = 0; k < 5 && g < GROUPS; k++, g++) {
            if (o < EVERYWHERE && k == 4)
                break;
            model_group *gr = &m->groups[g];
            *gr = (model_group){
                .id = (int64_t)g + 1, .name = xprintf("o%d-g%d", o, k), .office_id = 1000 + o};
            gr->nsources = 1;
            gr->sources = xcalloc(1, sizeof(char *));
            gr->sources[0] = xprintf("10.%d.%d.%d/27", o >> 8, o & 255, k * 32);
        }
        if (o == OFFICES - 1 && g < GROUPS) {
            fprintf(stderr, "compile_bench: group layout bug\n");
            exit(1);
        }
    }

    /* rules at every scope */
    m->rules = xcalloc(600, sizeof(model_rule));
    add_rule(m, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_SKYPE, NULL, false);
    for (int i = 0; i < 150; i++)
        add_rule(m, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_DOMAIN, xprintf("blocked-%d.example", i),
                 false);
    for (int i = 0; i < 20; i++)
        add_rule(m, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_PREFIX, xprintf("198.18.%d.0/24", i), false);
    for (int i = 0; i < 20; i++)
        add_rule(m, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_URL_SUFFIX, xprintf(".ext%d", i), false);
    for (int r = 0; r < REGIONS; r++) {
        for (int i = 0; i < 5; i++)
            add_rule(m, MODEL_SCOPE_REGION, r + 1, MODEL_RULE_DOMAIN,
                     xprintf("blocked-%d.example", r * 5 + i), true);
        for (int i = 0; i < 5; i++)
            add_rule(m, MODEL_SCOPE_REGION, r + 1, MODEL_RULE_DOMAIN,
                     xprintf("region-%d-%d.example", r, i), false);
        if (r == 2)
            add_rule(m, MODEL_SCOPE_REGION, r + 1, MODEL_RULE_SKYPE, NULL, true);
    }
    for (int i = 0; i < 100; i++) {
        int64_t office_id = 1000 + i * 20;
        if (i % 2)
            add_rule(m, MODEL_SCOPE_OFFICE, office_id, MODEL_RULE_SKYPE, NULL, true);
        else
            add_rule(m, MODEL_SCOPE_OFFICE, office_id, MODEL_RULE_DOMAIN,
                     xprintf("office-%d.example", i), false);
    }
    for (int i = 0; i < 100; i++) {
        int64_t group_id = EVERYWHERE + 1 + i * 97;
        if (i % 2)
            add_rule(m, MODEL_SCOPE_GROUP, group_id, MODEL_RULE_SKYPE, NULL, true);
        else
            add_rule(m, MODEL_SCOPE_GROUP, group_id, MODEL_RULE_DOMAIN,
                     xprintf("blocked-%d.example", 100 + i % 50), true);
    }
    add_rule(m, MODEL_SCOPE_GROUP, 3, MODEL_RULE_DOMAIN, strdup("everywhere.example"), false);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Compiles every office; returns the seconds it took, adds the bytes. */
static double compile_all(const model *m, size_t *bytes)
{
    char err[COMPILER_ERR_MAX], sha[65];
    double t0 = now();
    for (size_t i = 0; i < m->noffices; i++) {
        char *json = NULL;
        if (compiler_office_document(m, m->offices[i].id, &json, sha, err, sizeof(err)) != 0) {
            fprintf(stderr, "compile_bench: office %lld: %s\n", (long long)m->offices[i].id, err);
            exit(1);
        }
        *bytes += strlen(json);
        free(json);
    }
    return now() - t0;
}

int main(int argc, char **argv)
{
    const char *source_dir = SOURCE_DIR;
    int rounds = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--source-dir") == 0 && i + 1 < argc)
            source_dir = argv[++i];
        else {
            fprintf(stderr, "usage: compile_bench [--rounds N] [--source-dir DIR]\n");
            return 2;
        }
    }
    if (rounds < 1)
        rounds = 1;

    model before = {0};
    build(&before, source_dir);
    size_t bytes = 0;
    double warm = compile_all(&before, &bytes);
    printf("model: %d regions, %zu offices, %zu groups, %zu rules; warm-up %.3f s\n", REGIONS,
           before.noffices, before.ngroups, before.nrules, warm);

    /* The global change: one more blocked domain, a new revision. */
    model after = {0};
    build(&after, source_dir);
    after.revision = before.revision + 1;
    add_rule(&after, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_DOMAIN, strdup("new-global.example"), false);

    double best = 1e9, sum = 0;
    for (int r = 0; r < rounds; r++) {
        bytes = 0;
        double s = compile_all(&after, &bytes);
        sum += s;
        if (s < best)
            best = s;
        printf("round %d: %zu documents, %zu bytes, %.3f s\n", r + 1, after.noffices, bytes, s);
    }

    compiler_change *c = NULL;
    size_t n = 0;
    char err[COMPILER_ERR_MAX];
    double t0 = now();
    if (compiler_diff(&before, &after, &c, &n, err, sizeof(err)) != 0) {
        fprintf(stderr, "compile_bench: dry run: %s\n", err);
        return 1;
    }
    double diff = now() - t0;
    printf("dry run: %zu offices changed, %.3f s\n", n, diff);
    compiler_changes_free(c, n);

    printf("{\"bench\":\"compile\",\"offices\":%zu,\"groups\":%zu,\"regions\":%d,\"rules\":%zu,"
           "\"seconds\":%.3f,\"mean_seconds\":%.3f,\"rounds\":%d,\"bytes\":%zu,"
           "\"dry_run_seconds\":%.3f,\"changed\":%zu}\n",
           after.noffices, after.ngroups, REGIONS, after.nrules, best, sum / rounds, rounds, bytes,
           diff, n);
    model_free(&before);
    model_free(&after);
    return 0;
}
