/* test_compiler.c - the policy compiler (controller/compiler.h): inheritance
 * and precedence, the Skype exception at every scope, lists in force,
 * canonical output (determinism under shuffled input, SHA-256), explain
 * chains, the dry-run diff, and refusal of inputs that would make a document
 * the node refuses. Every document compiled here must also pass the node's
 * own parser (pc_policy_parse).
 *
 * Data-driven cases: tests/vectors/compiler/NAME.json, each a model and the
 * facts its documents must show (format in tests/vectors/compiler/README.md).
 */
#include "compiler.h"
#include "cu_main.h"
#include "model.h"
#include "pc_policy.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VDIR VECTOR_DIR "/compiler"

/* --- a model built in code ------------------------------------------------ */

static char *dup(const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        abort();
    return d;
}

static void *grow(void *p, size_t n, size_t size)
{
    void *q = realloc(p, (n ? n : 1) * size);
    if (!q)
        abort();
    return q;
}

/* "a,b,c" into a new string vector. */
static char **split(const char *csv, size_t *n)
{
    *n = 0;
    if (!csv || !*csv)
        return NULL;
    char **v = NULL;
    const char *s = csv;
    for (;;) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        v = grow(v, *n + 1, sizeof(*v));
        v[*n] = strndup(s, len);
        (*n)++;
        if (!e)
            break;
        s = e + 1;
    }
    return v;
}

static model *mk(int64_t revision)
{
    model *m = calloc(1, sizeof(*m));
    if (!m)
        abort();
    m->revision = revision;
    return m;
}

static void drop(model *m)
{
    model_free(m);
    free(m);
}

static void region(model *m, int64_t id, const char *name)
{
    m->regions = grow(m->regions, m->nregions + 1, sizeof(*m->regions));
    m->regions[m->nregions++] = (model_region){.id = id, .name = dup(name)};
}

static void office(model *m, int64_t id, int64_t region_id, const char *name, const char *lan)
{
    m->offices = grow(m->offices, m->noffices + 1, sizeof(*m->offices));
    model_office *o = &m->offices[m->noffices++];
    *o = (model_office){.id = id, .region_id = region_id, .name = dup(name)};
    o->lan_prefixes = split(lan, &o->nlan);
}

static void group(model *m, int64_t id, const char *name, int64_t office_id, const char *sources)
{
    m->groups = grow(m->groups, m->ngroups + 1, sizeof(*m->groups));
    model_group *g = &m->groups[m->ngroups++];
    *g = (model_group){.id = id, .name = dup(name), .office_id = office_id};
    g->sources = split(sources, &g->nsources);
}

static void rule(model *m, int64_t id, model_scope scope, int64_t scope_id, model_rule_kind kind,
                 const char *value, bool allow)
{
    m->rules = grow(m->rules, m->nrules + 1, sizeof(*m->rules));
    m->rules[m->nrules++] = (model_rule){.id = id,
                                         .scope = scope,
                                         .scope_id = scope_id,
                                         .kind = kind,
                                         .value = dup(value),
                                         .allow = allow};
}

static void node(model *m, int64_t id, const char *name, int64_t office_id)
{
    m->nodes = grow(m->nodes, m->nnodes + 1, sizeof(*m->nodes));
    m->nodes[m->nnodes++] = (model_node){.id = id, .name = dup(name), .office_id = office_id};
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void list_json(model *m, const char *name, const char *json)
{
    m->lists = grow(m->lists, m->nlists + 1, sizeof(*m->lists));
    m->lists[m->nlists++] = (model_list){.name = dup(name), .json = dup(json)};
}

/* The shipped list shared/lists/NAME.json. */
static void list_shipped(model *m, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/shared/lists/%s.json", SOURCE_DIR, name);
    char *json = slurp(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(json);
    list_json(m, name, json);
    free(json);
}

/* "80:http,443:tls"; "" is the empty map (serves nothing). */
static void ports(model_settings *s, const char *spec)
{
    for (size_t i = 0; i < s->nports; i++)
        free(s->port_protos[i]);
    free(s->ports);
    free(s->port_protos);
    size_t n;
    char **v = split(spec, &n);
    s->has_ports = true;
    s->nports = n;
    s->ports = grow(NULL, n, sizeof(*s->ports));
    s->port_protos = grow(NULL, n, sizeof(*s->port_protos));
    for (size_t i = 0; i < n; i++) {
        char *colon = strchr(v[i], ':');
        s->ports[i] = (uint16_t)atoi(v[i]);
        s->port_protos[i] = dup(colon ? colon + 1 : "");
        free(v[i]);
    }
    free(v);
}

static void use_lists(model_settings *s, const char *csv)
{
    for (size_t i = 0; i < s->nuse_lists; i++)
        free(s->use_lists[i]);
    free(s->use_lists);
    s->has_use_lists = true;
    s->use_lists = split(csv, &s->nuse_lists);
}

/* Adds an open port: "25" or "8000-8100", "tcp", "10.0.0.25/32,..." */
static void open_port(model_settings *s, const char *ports, const char *proto, const char *devices)
{
    s->has_open_ports = true;
    s->open_ports = grow(s->open_ports, s->nopen_ports + 1, sizeof(*s->open_ports));
    struct model_open_port *op = &s->open_ports[s->nopen_ports++];
    *op = (struct model_open_port){0};
    const char *dash = strchr(ports, '-');
    op->port = (uint16_t)atoi(ports);
    op->port_last = dash ? (uint16_t)atoi(dash + 1) : 0;
    snprintf(op->proto, sizeof(op->proto), "%s", proto);
    op->devices = split(devices, &op->ndevices);
}

static void strv_set(bool *has, char ***v, size_t *n, const char *csv)
{
    for (size_t i = 0; i < *n; i++)
        free((*v)[i]);
    free(*v);
    *has = true;
    *v = split(csv, n);
}

static void dns_resolvers(model_settings *s, const char *csv)
{
    strv_set(&s->has_dns_resolvers, &s->dns_resolvers, &s->ndns_resolvers, csv);
}

static void web(model_settings *s, const char *mode, const char *devices)
{
    if (mode) {
        s->has_web_mode = true;
        snprintf(s->web_mode, sizeof(s->web_mode), "%s", mode);
    }
    if (devices)
        strv_set(&s->has_web_devices, &s->web_devices, &s->nweb_devices, devices);
}

/* --- compiling ------------------------------------------------------------ */

/* Compiles an office that must compile; asserts the node accepts it and the
 * hash is the SHA-256 of the bytes. The caller frees the result. */
static char *compile_ok(const model *m, int64_t office_id, char sha[65])
{
    char *json = NULL, err[COMPILER_ERR_MAX] = "", hash[65];
    int rc = compiler_office_document(m, office_id, &json, hash, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  office %lld: unexpected error: %s\n", (long long)office_id, err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(json);

    pc_policy *p = NULL;
    char perr[512];
    int prc = pc_policy_parse(json, strlen(json), &p, perr, sizeof(perr));
    if (prc != 0)
        fprintf(stderr, "\n  the node refuses it: %s\n", perr);
    CU_ASSERT_EQUAL(prc, 0);
    CU_ASSERT_EQUAL(pc_policy_version(p), (uint64_t)m->revision);
    pc_policy_unref(p);

    unsigned char md[SHA256_DIGEST_LENGTH];
    char want[65];
    SHA256((const unsigned char *)json, strlen(json), md);
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    CU_ASSERT_STRING_EQUAL(hash, want);
    if (sha)
        memcpy(sha, hash, 65);
    return json;
}

/* Asserts office_id does not compile, with an error starting with prefix. */
static void compile_fails(const model *m, int64_t office_id, const char *prefix)
{
    char *json = (char *)0x1, err[COMPILER_ERR_MAX] = "", hash[65];
    int rc = compiler_office_document(m, office_id, &json, hash, err, sizeof(err));
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_PTR_NULL(json);
    if (strncmp(err, prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "\n  office %lld: expected error starting '%s'\n  got '%s'\n",
                (long long)office_id, prefix, err);
        CU_FAIL("error message");
    }
}

static cJSON *doc(const model *m, int64_t office_id)
{
    char *json = compile_ok(m, office_id, NULL);
    cJSON *j = cJSON_Parse(json);
    free(json);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    return j;
}

/* Asserts that the value at a dotted path of the document equals the JSON
 * text want. */
static void expect_at(const cJSON *root, const char *path, const char *want)
{
    const cJSON *v = root;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *save = NULL, *k = strtok_r(buf, ".", &save); k && v;
         k = strtok_r(NULL, ".", &save)) {
        if (cJSON_IsArray(v)) {
            const cJSON *found = NULL;
            for (const cJSON *it = v->child; it && !found; it = it->next) {
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "name");
                if (cJSON_IsString(n) && strcmp(n->valuestring, k) == 0)
                    found = it;
            }
            v = found;
        } else {
            v = cJSON_GetObjectItemCaseSensitive(v, k);
        }
    }
    cJSON *w = want ? cJSON_Parse(want) : NULL;
    bool ok = want ? (v && w && cJSON_Compare(v, w, true)) : v == NULL;
    if (!ok) {
        char *got = v ? cJSON_PrintUnformatted(v) : NULL;
        fprintf(stderr, "\n  %s: expected %s\n  got %s\n", path, want ? want : "(absent)",
                got ? got : "(absent)");
        free(got);
        CU_FAIL("value in the document");
    }
    cJSON_Delete(w);
}

/* --- data-driven cases ---------------------------------------------------- */

static model_scope scope_of(const char *s)
{
    if (strcmp(s, "region") == 0)
        return MODEL_SCOPE_REGION;
    if (strcmp(s, "office") == 0)
        return MODEL_SCOPE_OFFICE;
    if (strcmp(s, "group") == 0)
        return MODEL_SCOPE_GROUP;
    return MODEL_SCOPE_GLOBAL;
}

static model_rule_kind kind_of(const char *s)
{
    if (strcmp(s, "domain") == 0)
        return MODEL_RULE_DOMAIN;
    if (strcmp(s, "prefix") == 0)
        return MODEL_RULE_PREFIX;
    if (strcmp(s, "url_suffix") == 0)
        return MODEL_RULE_URL_SUFFIX;
    return MODEL_RULE_SKYPE;
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int64_t num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

/* A JSON array of strings as "a,b". */
static char *csv(const cJSON *arr)
{
    size_t len = 1;
    for (const cJSON *it = arr ? arr->child : NULL; it; it = it->next)
        len += strlen(it->valuestring) + 1;
    char *s = calloc(1, len);
    for (const cJSON *it = arr ? arr->child : NULL; it; it = it->next) {
        if (*s)
            strcat(s, ",");
        strcat(s, it->valuestring);
    }
    return s;
}

static void load_settings(model_settings *s, const cJSON *j)
{
    const cJSON *v;
    if (!j)
        return;
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "ports"))) {
        char spec[1024] = "";
        for (const cJSON *it = v->child; it; it = it->next) {
            size_t n = strlen(spec);
            snprintf(spec + n, sizeof(spec) - n, "%s%s:%s", n ? "," : "", it->string,
                     it->valuestring);
        }
        ports(s, spec);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "use_lists"))) {
        char *c = csv(v);
        use_lists(s, c);
        free(c);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "require_certificate"))) {
        s->has_require_certificate = true;
        s->require_certificate = cJSON_IsTrue(v);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "block_executables"))) {
        s->has_block_executables = true;
        s->block_executables = cJSON_IsTrue(v);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "block_high_ports"))) {
        s->has_block_high_ports = true;
        s->block_high_ports = cJSON_IsTrue(v);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "high_port_threshold"))) {
        s->has_high_port_threshold = true;
        s->high_port_threshold = (uint16_t)v->valueint;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "log_drops_per_minute"))) {
        s->has_log_drops_per_minute = true;
        s->log_drops_per_minute = (uint16_t)v->valueint;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "open_ports"))) {
        const cJSON *it;
        s->has_open_ports = true;
        cJSON_ArrayForEach(it, v)
        {
            const cJSON *port = cJSON_GetObjectItemCaseSensitive(it, "port");
            char pb[16], *c = csv(cJSON_GetObjectItemCaseSensitive(it, "devices"));
            if (cJSON_IsNumber(port))
                snprintf(pb, sizeof(pb), "%d", port->valueint);
            else
                snprintf(pb, sizeof(pb), "%s", port->valuestring);
            open_port(s, pb, str(it, "proto"), c);
            free(c);
        }
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "dns_resolvers"))) {
        char *c = csv(v);
        dns_resolvers(s, c);
        free(c);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "web_devices"))) {
        char *c = csv(v);
        web(s, NULL, c);
        free(c);
    }
    web(s, str(j, "web_mode"), NULL);
}

/* The model of a vector file (README.md in the vector directory). */
static model *load_model(const cJSON *j)
{
    model *m = mk(cJSON_GetObjectItemCaseSensitive(j, "revision") ? num(j, "revision") : 1);
    const cJSON *it;
    load_settings(&m->global, cJSON_GetObjectItemCaseSensitive(j, "global"));
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "regions"))
    {
        region(m, num(it, "id"), str(it, "name"));
        load_settings(&m->regions[m->nregions - 1].settings,
                      cJSON_GetObjectItemCaseSensitive(it, "settings"));
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "offices"))
    {
        char *lan = csv(cJSON_GetObjectItemCaseSensitive(it, "lan"));
        office(m, num(it, "id"), num(it, "region"), str(it, "name"), lan);
        free(lan);
        load_settings(&m->offices[m->noffices - 1].settings,
                      cJSON_GetObjectItemCaseSensitive(it, "settings"));
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "groups"))
    {
        char *src = csv(cJSON_GetObjectItemCaseSensitive(it, "sources"));
        group(m, num(it, "id"), str(it, "name"), num(it, "office"), src);
        free(src);
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "rules"))
    {
        rule(m, num(it, "id"), scope_of(str(it, "scope")), num(it, "scope_id"),
             kind_of(str(it, "kind")), str(it, "value"),
             cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "allow")));
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "nodes"))
    {
        node(m, num(it, "id"), str(it, "name"), num(it, "office"));
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "lists"))
    {
        if (cJSON_IsString(it) && it->valuestring[0] == '@') {
            char path[512];
            snprintf(path, sizeof(path), "%s/%s", SOURCE_DIR, it->valuestring + 1);
            char *json = slurp(path);
            CU_ASSERT_PTR_NOT_NULL_FATAL(json);
            list_json(m, it->string, json);
            free(json);
        } else if (cJSON_IsString(it)) {
            list_json(m, it->string, it->valuestring);
        } else {
            char *json = cJSON_PrintUnformatted(it);
            list_json(m, it->string, json);
            free(json);
        }
    }
    return m;
}

/* Reports a vector failure with the file and what differed. */
__attribute__((format(printf, 2, 3))) static int vec_fail(const char *file, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\n  %s: ", file);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

static int check_office(const char *file, const model *m, const char *id, const cJSON *want)
{
    int64_t office_id = strtoll(id, NULL, 10);
    const char *error = str(want, "error");
    char label[64];
    snprintf(label, sizeof(label), "office %s", id);
    if (error) {
        char *json = NULL, err[COMPILER_ERR_MAX] = "", sha[65];
        int rc = compiler_office_document(m, office_id, &json, sha, err, sizeof(err));
        free(json);
        if (rc != -1)
            return vec_fail(file, "%s: compiled, expected error '%s'", label, error);
        if (strncmp(err, error, strlen(error)) != 0)
            return vec_fail(file, "expected error '%s'\n  got '%s'", error, err);
        return 0;
    }
    char sha[65];
    char *json = compile_ok(m, office_id, sha);
    cJSON *d = cJSON_Parse(json);
    int bad = 0;
    const cJSON *w;
    if ((w = cJSON_GetObjectItemCaseSensitive(want, "document")) &&
        strcmp(w->valuestring, json) != 0)
        bad += vec_fail(file, "document differs\n  want %s\n  got  %s", w->valuestring, json);
    if ((w = cJSON_GetObjectItemCaseSensitive(want, "sha256")) && strcmp(w->valuestring, sha) != 0)
        bad += vec_fail(file, "sha256: want %s got %s", w->valuestring, sha);
    static const char *const exact[] = {"proxy", "defaults", "groups", "firewall"};
    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++) {
        if (!(w = cJSON_GetObjectItemCaseSensitive(want, exact[i])))
            continue;
        const cJSON *got = cJSON_GetObjectItemCaseSensitive(d, exact[i]);
        if (!cJSON_Compare(w, got, true)) {
            char *a = cJSON_PrintUnformatted(w), *b = cJSON_PrintUnformatted(got);
            char what[128];
            snprintf(what, sizeof(what), "%s %s", label, exact[i]);
            fprintf(stderr, "\n  %s: %s:", file, what);
            bad += vec_fail(file, "\n  want %s\n  got  %s", a, b);
            free(a);
            free(b);
        }
    }
    if ((w = cJSON_GetObjectItemCaseSensitive(want, "lists"))) {
        const cJSON *got = cJSON_GetObjectItemCaseSensitive(d, "lists");
        cJSON *names = cJSON_CreateArray();
        for (const cJSON *it = got->child; it; it = it->next)
            cJSON_AddItemToArray(names, cJSON_CreateString(it->string));
        bool ok = cJSON_IsArray(w) ? cJSON_Compare(w, names, true) : cJSON_Compare(w, got, true);
        if (!ok) {
            char *a = cJSON_PrintUnformatted(w), *b = cJSON_PrintUnformatted(got);
            bad += vec_fail(file, "lists\n  want %s\n  got  %s", a, b);
            free(a);
            free(b);
        }
        cJSON_Delete(names);
    }
    cJSON_Delete(d);
    free(json);
    return bad;
}

static int check_explain(const char *file, const model *m, const cJSON *x)
{
    compiler_explanation e;
    char err[COMPILER_ERR_MAX] = "";
    int bad = 0;
    const cJSON *port = cJSON_GetObjectItemCaseSensitive(x, "port");
    int rc = compiler_explain_path(m, num(x, "office"), str(x, "source"), str(x, "host"),
                                   (uint16_t)(port ? port->valueint : 443), str(x, "path"), &e, err,
                                   sizeof(err));
    const char *error = str(x, "error");
    if (error) {
        if (rc != -1 || strncmp(err, error, strlen(error)) != 0)
            return vec_fail(file, "explain: expected error '%s', got '%s'", error, err);
        return 0;
    }
    if (rc != 0)
        return vec_fail(file, "explain failed: %s%s", err, "");
    const char *v;
    if ((v = str(x, "verdict")) && strcmp(v, compiler_verdict_name(e.verdict)) != 0)
        bad +=
            vec_fail(file, "explain verdict: want %s got %s", v, compiler_verdict_name(e.verdict));
    if ((v = str(x, "group")) && strcmp(v, e.group) != 0)
        bad += vec_fail(file, "explain group: want %s got %s", v, e.group);
    if ((v = str(x, "list")) && (!e.list || strcmp(v, e.list) != 0))
        bad += vec_fail(file, "explain list: want %s got %s", v, e.list ? e.list : "(none)");
    if ((v = str(x, "rule")) && (!e.rule || strcmp(v, e.rule) != 0))
        bad += vec_fail(file, "explain rule: want %s got %s", v, e.rule ? e.rule : "(none)");
    if ((v = str(x, "certificate")) && strcmp(v, e.certificate ? e.certificate : "null") != 0)
        bad += vec_fail(file, "explain certificate: want %s got %s", v,
                        e.certificate ? e.certificate : "null");
    if ((v = str(x, "reason")) && strncmp(e.reason, v, strlen(v)) != 0)
        bad += vec_fail(file, "explain reason: want '%s...'\n  got '%s'", v, e.reason);
    /* Each expected line starts a step's text, in this order. */
    size_t at = 0;
    const cJSON *line;
    cJSON_ArrayForEach(line, cJSON_GetObjectItemCaseSensitive(x, "chain"))
    {
        while (at < e.nsteps &&
               strncmp(e.steps[at].text, line->valuestring, strlen(line->valuestring)) != 0)
            at++;
        if (at == e.nsteps) {
            fprintf(stderr, "\n  chain was:\n");
            for (size_t i = 0; i < e.nsteps; i++)
                fprintf(stderr, "    %s\n", e.steps[i].text);
            bad += vec_fail(file, "explain chain: no step '%s' (in this order)%s",
                            line->valuestring, "");
            break;
        }
        at++;
    }
    cJSON_ArrayForEach(line, cJSON_GetObjectItemCaseSensitive(x, "chain_absent"))
    {
        for (size_t i = 0; i < e.nsteps; i++)
            if (strstr(e.steps[i].text, line->valuestring))
                bad += vec_fail(file, "explain chain: unexpected step '%s'%s", e.steps[i].text, "");
    }
    char *json = compiler_explanation_json(&e);
    cJSON *j = json ? cJSON_Parse(json) : NULL;
    if (!j)
        bad += vec_fail(file, "explain JSON does not parse: %s%s", json ? json : "(null)", "");
    cJSON_Delete(j);
    free(json);
    compiler_explanation_free(&e);
    return bad;
}

static int run_vector(const char *path, const char *file)
{
    char *text = slurp(path);
    cJSON *v = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!v)
        return vec_fail(file, "not JSON%s%s", "", "");
    model *m = load_model(cJSON_GetObjectItemCaseSensitive(v, "model"));
    int bad = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(v, "offices"))
    {
        bad += check_office(file, m, it->string, it);
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(v, "explain"))
    {
        bad += check_explain(file, m, it);
    }
    drop(m);
    cJSON_Delete(v);
    return bad;
}

static void test_vectors(void)
{
    DIR *d = opendir(VDIR);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", VDIR, de->d_name);
        int bad = run_vector(path, de->d_name);
        if (bad)
            fprintf(stderr, "  %s: %d problem(s)\n", de->d_name, bad);
        CU_ASSERT_EQUAL(bad, 0);
        files++;
    }
    closedir(d);
    CU_ASSERT(files >= 8);
}

/* --- the model most suites use -------------------------------------------- */

/* Two regions, three offices, groups per office and everywhere, rules at
 * every scope, both shipped lists and one of the operator's. */
static model *sample(void)
{
    model *m = mk(7);
    ports(&m->global, "80:http,443:tls,554:rtsp,1755:mms");
    use_lists(&m->global, "skype");
    m->global.has_require_certificate = m->global.require_certificate = true;
    region(m, 1, "EMEA");
    region(m, 2, "APAC");
    use_lists(&m->regions[0].settings, "skype,teams");
    ports(&m->regions[1].settings, "443:tls,80:http");
    office(m, 10, 1, "Berlin", "10.10.0.0/16");
    office(m, 11, 1, "Paris", "10.11.0.0/16");
    office(m, 20, 2, "Tokyo", "10.20.0.0/16");
    m->offices[1].settings.has_block_executables = true;
    m->offices[1].settings.block_executables = false;
    group(m, 100, "board", 10, "10.10.1.0/24,10.10.2.0/24");
    group(m, 101, "interns", 10, "10.10.9.0/24");
    group(m, 110, "studio", 11, "10.11.5.0/24");
    group(m, 200, "lab", 20, "10.20.7.0/24,2001:db8:20::/48");
    group(m, 900, "guests", 0, "172.16.0.0/12");
    rule(m, 1, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_SKYPE, NULL, false);
    rule(m, 2, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_DOMAIN, "games.example", false);
    rule(m, 3, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_URL_SUFFIX, ".torrent", false);
    rule(m, 4, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_PREFIX, "198.51.100.0/24", false);
    rule(m, 5, MODEL_SCOPE_REGION, 1, MODEL_RULE_SKYPE, NULL, true);
    rule(m, 6, MODEL_SCOPE_OFFICE, 11, MODEL_RULE_SKYPE, NULL, false);
    rule(m, 7, MODEL_SCOPE_GROUP, 101, MODEL_RULE_SKYPE, NULL, false);
    rule(m, 8, MODEL_SCOPE_GROUP, 200, MODEL_RULE_SKYPE, NULL, true);
    rule(m, 9, MODEL_SCOPE_GROUP, 100, MODEL_RULE_DOMAIN, "games.example", true);
    rule(m, 10, MODEL_SCOPE_OFFICE, 20, MODEL_RULE_DOMAIN, "social.example", false);
    rule(m, 11, MODEL_SCOPE_GROUP, 900, MODEL_RULE_DOMAIN, "video.example", false);
    rule(m, 12, MODEL_SCOPE_REGION, 2, MODEL_RULE_DOMAIN, "news.example", false);
    rule(m, 13, MODEL_SCOPE_OFFICE, 20, MODEL_RULE_DOMAIN, "news.example", true);
    list_shipped(m, "skype");
    list_shipped(m, "teams");
    list_json(m, "games", "{\"category\":\"games\",\"domains\":[\"b.example\",\"a.example\"]}");
    node(m, 1, "gw-berlin-1", 10);
    node(m, 2, "gw-berlin-2", 10);
    node(m, 3, "gw-paris", 11);
    node(m, 4, "gw-tokyo", 20);
    return m;
}

/* --- inheritance and precedence ------------------------------------------- */

static void test_inheritance(void)
{
    model *m = sample();
    cJSON *b = doc(m, 10), *p = doc(m, 11), *t = doc(m, 20);
    /* ports: global for EMEA, APAC's own (sorted) for Tokyo */
    expect_at(b, "proxy",
              "{\"ports\":{\"80\":\"http\",\"443\":\"tls\",\"554\":\"rtsp\","
              "\"1755\":\"mms\"}}");
    expect_at(t, "proxy", "{\"ports\":{\"80\":\"http\",\"443\":\"tls\"}}");
    /* use_lists: EMEA's for its offices, global's elsewhere */
    expect_at(b, "defaults.use_lists", "[\"skype\",\"teams\"]");
    expect_at(p, "defaults.use_lists", "[\"skype\",\"teams\"]");
    expect_at(t, "defaults.use_lists", "[\"skype\"]");
    /* only the lists in force travel */
    expect_at(t, "lists.teams", NULL);
    expect_at(t, "lists.games", NULL);
    expect_at(b, "lists.games", NULL);
    /* block_executables: Paris overrides; unset elsewhere = built-in true */
    expect_at(p, "defaults.block_executables", "false");
    expect_at(b, "defaults.block_executables", "true");
    expect_at(t, "defaults.require_certificate", "true");
    cJSON_Delete(b);
    cJSON_Delete(p);
    cJSON_Delete(t);
    drop(m);
}

static void test_precedence(void)
{
    model *m = sample();
    cJSON *b = doc(m, 10), *t = doc(m, 20);
    /* a group allow lifts a global block for that group only */
    expect_at(b, "defaults.blocked_domains", "[\"games.example\"]");
    expect_at(b, "groups.board.blocked_domains", "[]");
    expect_at(b, "groups.interns.blocked_domains", NULL);
    /* an office allow beats its region's block; an office block stands */
    expect_at(t, "defaults.blocked_domains", "[\"games.example\",\"social.example\"]");
    /* a group everywhere, with its own rule, in every office */
    expect_at(b, "groups.guests.blocked_domains", "[\"games.example\",\"video.example\"]");
    expect_at(t, "groups.guests.blocked_domains",
              "[\"games.example\",\"social.example\",\"video.example\"]");
    expect_at(t, "groups.guests.sources", "[\"172.16.0.0/12\"]");
    /* groups carry only what differs */
    expect_at(b, "groups.board.skype_exception", NULL);
    expect_at(b, "groups.board.use_lists", NULL);
    expect_at(b, "groups.board.sources", "[\"10.10.1.0/24\",\"10.10.2.0/24\"]");
    cJSON_Delete(b);
    cJSON_Delete(t);

    /* Office block beats region allow; region allow removes a global block. */
    rule(m, 20, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_DOMAIN, "chat.example", false);
    rule(m, 21, MODEL_SCOPE_REGION, 1, MODEL_RULE_DOMAIN, "chat.example", true);
    rule(m, 22, MODEL_SCOPE_OFFICE, 11, MODEL_RULE_DOMAIN, "chat.example", false);
    cJSON *b2 = doc(m, 10), *p2 = doc(m, 11), *t2 = doc(m, 20);
    expect_at(b2, "defaults.blocked_domains", "[\"games.example\"]");
    expect_at(p2, "defaults.blocked_domains", "[\"chat.example\",\"games.example\"]");
    expect_at(t2, "defaults.blocked_domains",
              "[\"chat.example\",\"games.example\",\"social.example\"]");
    cJSON_Delete(b2);
    cJSON_Delete(p2);
    cJSON_Delete(t2);
    drop(m);
}

static void test_skype_exception(void)
{
    model *m = sample();
    cJSON *b = doc(m, 10), *p = doc(m, 11), *t = doc(m, 20);
    /* region EMEA grants it; office Paris takes it back */
    expect_at(b, "defaults.skype_exception", "true");
    expect_at(p, "defaults.skype_exception", "false");
    expect_at(t, "defaults.skype_exception", "false");
    /* group level, both ways */
    expect_at(b, "groups.interns.skype_exception", "false");
    expect_at(t, "groups.lab.skype_exception", "true");
    /* a group that says what its defaults say carries nothing */
    expect_at(p, "groups.studio", "{\"name\":\"studio\",\"sources\":[\"10.11.5.0/24\"]}");
    cJSON_Delete(b);
    cJSON_Delete(p);
    cJSON_Delete(t);
    drop(m);
}

static void test_lists_in_force(void)
{
    model *m = sample();
    /* The operator's list in one office: canonical form, and only there. */
    use_lists(&m->offices[2].settings, "games,skype,games");
    cJSON *t = doc(m, 20), *b = doc(m, 10);
    expect_at(t, "defaults.use_lists", "[\"games\",\"skype\"]");
    expect_at(t, "lists.games",
              "{\"category\":\"games\",\"domains\":[\"b.example\",\"a.example\"]}");
    expect_at(b, "lists.games", NULL);
    cJSON_Delete(t);
    cJSON_Delete(b);
    /* Unset everywhere: the built-in choice, the Skype list. */
    model_free(m);
    free(m);
    m = mk(1);
    region(m, 1, "R");
    office(m, 1, 1, "O", "");
    list_shipped(m, "skype");
    list_shipped(m, "teams");
    cJSON *o = doc(m, 1);
    expect_at(o, "defaults.use_lists", "[\"skype\"]");
    expect_at(o, "proxy.ports",
              "{\"80\":\"http\",\"443\":\"tls\",\"554\":\"rtsp\",\"1755\":\"mms\"}");
    expect_at(o, "lists.teams", NULL);
    cJSON_Delete(o);
    drop(m);
}

/* --- the firewall part ------------------------------------------------------ */

static void test_firewall(void)
{
    model *m = sample();
    /* No scope sets a firewall setting: the built-in values and the LAN. */
    cJSON *t = doc(m, 20);
    expect_at(t, "firewall",
              "{\"lan\":[\"10.20.0.0/16\"],\"web\":\"transparent\",\"web_devices\":[],"
              "\"allow\":[],\"dns\":null,\"high_ports\":{\"block\":true,\"from\":1024},"
              "\"log_drops\":null}");
    cJSON_Delete(t);

    /* Global: the mail server alone on 25, NTP for the LANs, DNS to two
     * resolvers, drops logged. */
    open_port(&m->global, "25", "tcp", "10.10.0.25");
    open_port(&m->global, "123", "udp", "10.0.0.0/8");
    dns_resolvers(&m->global, "198.51.100.54,::ffff:198.51.100.53");
    m->global.has_log_drops_per_minute = true;
    m->global.log_drops_per_minute = 10;
    /* APAC: the proxy runs elsewhere. Tokyo: its own open ports (one a
     * range), high ports from 2000. Paris: high ports allowed, DNS to no
     * one. Berlin: drops not logged. */
    web(&m->regions[1].settings, "proxy", "10.20.0.9,10.20.0.8/32");
    open_port(&m->offices[2].settings, "8000-8100", "tcp", "10.20.7.0/24");
    open_port(&m->offices[2].settings, "25", "tcp", "10.20.0.25,::ffff:10.20.0.25");
    m->offices[2].settings.has_high_port_threshold = true;
    m->offices[2].settings.high_port_threshold = 2000;
    m->offices[1].settings.has_block_high_ports = true;
    m->offices[1].settings.block_high_ports = false;
    dns_resolvers(&m->offices[1].settings, "");
    m->offices[0].settings.has_log_drops_per_minute = true;
    m->offices[0].settings.log_drops_per_minute = 0;
    cJSON *b = doc(m, 10), *p = doc(m, 11);
    t = doc(m, 20);
    expect_at(b, "firewall",
              "{\"lan\":[\"10.10.0.0/16\"],\"web\":\"transparent\",\"web_devices\":[],"
              "\"allow\":[{\"name\":\"port-25-tcp\",\"devices\":[\"10.10.0.25/32\"],"
              "\"proto\":\"tcp\",\"ports\":[\"25\"]},{\"name\":\"port-123-udp\","
              "\"devices\":[\"10.0.0.0/8\"],\"proto\":\"udp\",\"ports\":[\"123\"]}],"
              "\"dns\":[\"198.51.100.53\",\"198.51.100.54\"],"
              "\"high_ports\":{\"block\":true,\"from\":1024},\"log_drops\":null}");
    expect_at(p, "firewall.dns", "[]");
    expect_at(p, "firewall.high_ports", "{\"block\":false,\"from\":1024}");
    expect_at(p, "firewall.log_drops", "{\"per_minute\":10}");
    expect_at(p, "firewall.web", "\"transparent\"");
    /* Tokyo's open ports replace global's whole; the same device written
     * twice is one. */
    expect_at(t, "firewall",
              "{\"lan\":[\"10.20.0.0/16\"],\"web\":\"proxy\","
              "\"web_devices\":[\"10.20.0.8/32\",\"10.20.0.9/32\"],"
              "\"allow\":[{\"name\":\"port-25-tcp\",\"devices\":[\"10.20.0.25/32\"],"
              "\"proto\":\"tcp\",\"ports\":[\"25\"]},{\"name\":\"port-8000-8100-tcp\","
              "\"devices\":[\"10.20.7.0/24\"],\"proto\":\"tcp\",\"ports\":[\"8000-8100\"]}],"
              "\"dns\":[\"198.51.100.53\",\"198.51.100.54\"],"
              "\"high_ports\":{\"block\":true,\"from\":2000},\"log_drops\":{\"per_minute\":10}}");
    cJSON_Delete(b);
    cJSON_Delete(p);
    cJSON_Delete(t);
    /* An office that opens nothing: [] is a value, not "inherit". */
    m->offices[0].settings.has_open_ports = true;
    b = doc(m, 10);
    expect_at(b, "firewall.allow", "[]");
    cJSON_Delete(b);
    drop(m);
}

static void test_firewall_invalid(void)
{
    model *m = sample();
    /* the office's LAN goes into the document now */
    free(m->offices[0].lan_prefixes[0]);
    m->offices[0].lan_prefixes[0] = dup("10.10.0.1/16");
    compile_fails(m, 10,
                  "office 10 'Berlin': lan_prefixes: '10.10.0.1/16': host bits set (the network "
                  "is 10.10.0.0/16)");
    free(compile_ok(m, 11, NULL));
    drop(m);

    m = sample();
    open_port(&m->regions[0].settings, "25", "tcp", "10.10.0.25");
    open_port(&m->regions[0].settings, "20-30", "tcp", "10.10.0.26");
    compile_fails(m, 10,
                  "region 1 'EMEA' settings: open_ports: 20-30/tcp overlaps 25/tcp; list each "
                  "port once");
    free(compile_ok(m, 20, NULL)); /* another region */
    m->regions[0].settings.open_ports[1].port = 26;
    free(compile_ok(m, 10, NULL)); /* 26-30 is fine */
    snprintf(m->regions[0].settings.open_ports[1].proto, 4, "udp");
    m->regions[0].settings.open_ports[1].port = 20;
    free(compile_ok(m, 10, NULL)); /* so is another protocol */
    m->regions[0].settings.open_ports[1].port_last = 19;
    compile_fails(m, 10, "region 1 'EMEA' settings: open_ports: 20-19/udp is not a port range");
    m->regions[0].settings.open_ports[1].port_last = 0;
    snprintf(m->regions[0].settings.open_ports[1].proto, 4, "ip");
    compile_fails(m, 10, "region 1 'EMEA' settings: open_ports: 20: 'ip' is not tcp or udp");
    drop(m);

    m = sample();
    open_port(&m->offices[2].settings, "25", "tcp", "10.20.0.1/16");
    compile_fails(m, 20,
                  "office 20 'Tokyo' settings: open_ports: 25/tcp: device: '10.20.0.1/16': host "
                  "bits set");
    drop(m);

    /* checked all along the chain, even where a more specific scope
     * overrides it */
    m = sample();
    dns_resolvers(&m->global, "198.51.100.0/24");
    dns_resolvers(&m->offices[0].settings, "198.51.100.53");
    compile_fails(m, 10, "global settings: dns_resolvers: '198.51.100.0/24' is not an IP address");
    dns_resolvers(&m->global, "resolver.example");
    compile_fails(m, 11, "global settings: dns_resolvers: 'resolver.example' is not an IP address");
    drop(m);

    m = sample();
    web(&m->offices[1].settings, "bridge", "10.11.0.1/16");
    compile_fails(m, 11,
                  "office 11 'Paris' settings: web_mode: 'bridge' is not transparent or proxy");
    web(&m->offices[1].settings, "proxy", NULL);
    compile_fails(m, 11, "office 11 'Paris' settings: web_devices: '10.11.0.1/16': host bits set");
    web(&m->offices[1].settings, NULL, "10.11.0.1");
    free(compile_ok(m, 11, NULL));
    m->offices[1].settings.has_log_drops_per_minute = true;
    m->offices[1].settings.log_drops_per_minute = 10001;
    compile_fails(m, 11,
                  "office 11 'Paris' settings: log_drops_per_minute: 10001 is more than 10000");
    m->offices[1].settings.log_drops_per_minute = 10000;
    free(compile_ok(m, 11, NULL));
    m->global.has_high_port_threshold = true;
    m->global.high_port_threshold = 0;
    compile_fails(m, 11, "global settings: high_port_threshold: 0 is not a port");
    drop(m);

    /* at most 10,000 (device, port) pairs: what the node takes */
    m = sample();
    open_port(&m->global, "25", "tcp", "10.10.0.25");
    open_port(&m->global, "26", "tcp", "10.10.0.26");
    struct model_open_port *op = &m->global.open_ports[1];
    free(op->devices[0]);
    free(op->devices);
    op->ndevices = 10000;
    op->devices = grow(NULL, op->ndevices, sizeof(*op->devices));
    for (size_t i = 0; i < op->ndevices; i++) {
        char d[32];
        snprintf(d, sizeof(d), "10.%zu.%zu.0/24", 100 + i / 256, i % 256);
        op->devices[i] = dup(d);
    }
    compile_fails(m, 10,
                  "global settings: open_ports: 10001 devices in all; the node takes at most "
                  "10000");
    free(op->devices[--op->ndevices]);
    char *json = compile_ok(m, 10, NULL);
    CU_ASSERT(strlen(json) > 10000 * 14);
    free(json);
    drop(m);
}

/* --- canonical output ----------------------------------------------------- */

static unsigned long rng = 1;
static size_t rnd(size_t n)
{
    rng = rng * 6364136223846793005UL + 1442695040888963407UL;
    return n ? (size_t)((rng >> 33) % n) : 0;
}

#define SHUFFLE(arr, n)                                                                            \
    do {                                                                                           \
        for (size_t i_ = (n); i_ > 1; i_--) {                                                      \
            size_t j_ = rnd(i_);                                                                   \
            __typeof__((arr)[0]) t_ = (arr)[i_ - 1];                                               \
            (arr)[i_ - 1] = (arr)[j_];                                                             \
            (arr)[j_] = t_;                                                                        \
        }                                                                                          \
    } while (0)

static void shuffle_settings(model_settings *s)
{
    for (size_t i = s->nports; i > 1; i--) {
        size_t j = rnd(i);
        uint16_t p = s->ports[i - 1];
        char *q = s->port_protos[i - 1];
        s->ports[i - 1] = s->ports[j];
        s->port_protos[i - 1] = s->port_protos[j];
        s->ports[j] = p;
        s->port_protos[j] = q;
    }
    SHUFFLE(s->use_lists, s->nuse_lists);
    SHUFFLE(s->open_ports, s->nopen_ports);
    for (size_t i = 0; i < s->nopen_ports; i++)
        SHUFFLE(s->open_ports[i].devices, s->open_ports[i].ndevices);
    SHUFFLE(s->dns_resolvers, s->ndns_resolvers);
    SHUFFLE(s->web_devices, s->nweb_devices);
}

static void shuffle(model *m)
{
    SHUFFLE(m->regions, m->nregions);
    SHUFFLE(m->offices, m->noffices);
    SHUFFLE(m->groups, m->ngroups);
    SHUFFLE(m->rules, m->nrules);
    SHUFFLE(m->lists, m->nlists);
    SHUFFLE(m->nodes, m->nnodes);
    shuffle_settings(&m->global);
    for (size_t i = 0; i < m->nregions; i++)
        shuffle_settings(&m->regions[i].settings);
    for (size_t i = 0; i < m->noffices; i++) {
        shuffle_settings(&m->offices[i].settings);
        SHUFFLE(m->offices[i].lan_prefixes, m->offices[i].nlan);
    }
    for (size_t i = 0; i < m->ngroups; i++)
        SHUFFLE(m->groups[i].sources, m->groups[i].nsources);
}

static void test_determinism(void)
{
    static const int64_t ids[] = {10, 11, 20};
    model *m = sample();
    /* more to sort: rules in every kind, sources in both families */
    rule(m, 30, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_DOMAIN, "zeta.example", false);
    rule(m, 31, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_DOMAIN, "Alpha.Example.", false);
    rule(m, 32, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_PREFIX, "2001:db8:ffff::/48", false);
    rule(m, 33, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_PREFIX, "::ffff:203.0.113.0/120", false);
    rule(m, 34, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_URL_SUFFIX, "SETUP.EXE", false);
    rule(m, 35, MODEL_SCOPE_OFFICE, 10, MODEL_RULE_URL_SUFFIX, ".iso", false);
    /* and firewall settings with arrays in every place */
    open_port(&m->global, "25", "tcp", "10.10.0.25,10.11.0.25,2001:db8::25");
    open_port(&m->global, "25", "udp", "10.10.0.0/16");
    open_port(&m->global, "1000-2000", "udp", "10.0.0.0/8,172.16.0.0/12");
    open_port(&m->global, "123", "udp", "10.0.0.0/8");
    dns_resolvers(&m->global, "198.51.100.54,198.51.100.53,2001:db8::53");
    web(&m->regions[0].settings, "proxy", "10.10.0.8,10.11.0.8,10.10.0.9");
    char *first[3], sha[3][65];
    for (int i = 0; i < 3; i++)
        first[i] = compile_ok(m, ids[i], sha[i]);
    cJSON *b = cJSON_Parse(first[0]);
    expect_at(b, "defaults.blocked_domains",
              "[\"alpha.example\",\"games.example\",\"zeta.example\"]");
    expect_at(b, "defaults.blocked_prefixes",
              "[\"198.51.100.0/24\",\"2001:db8:ffff::/48\",\"203.0.113.0/24\"]");
    expect_at(b, "defaults.blocked_url_suffixes", "[\".iso\",\".torrent\",\"setup.exe\"]");
    expect_at(b, "firewall.web_devices", "[\"10.10.0.8/32\",\"10.10.0.9/32\",\"10.11.0.8/32\"]");
    expect_at(b, "firewall.dns", "[\"198.51.100.53\",\"198.51.100.54\",\"2001:db8::53\"]");
    expect_at(b, "firewall.allow.port-25-tcp.devices",
              "[\"10.10.0.25/32\",\"10.11.0.25/32\",\"2001:db8::25/128\"]");
    cJSON *names = cJSON_CreateArray();
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(
                               cJSON_GetObjectItemCaseSensitive(b, "firewall"), "allow"))
    {
        cJSON_AddItemToArray(names, cJSON_CreateString(str(it, "name")));
    }
    char *nm = cJSON_PrintUnformatted(names);
    CU_ASSERT_STRING_EQUAL(nm, "[\"port-25-tcp\",\"port-25-udp\",\"port-123-udp\","
                               "\"port-1000-2000-udp\"]");
    free(nm);
    cJSON_Delete(names);
    cJSON_Delete(b);
    for (unsigned seed = 1; seed <= 20; seed++) {
        rng = seed;
        shuffle(m);
        for (int i = 0; i < 3; i++) {
            char s2[65];
            char *again = compile_ok(m, ids[i], s2);
            CU_ASSERT_STRING_EQUAL(again, first[i]);
            CU_ASSERT_STRING_EQUAL(s2, sha[i]);
            free(again);
        }
    }
    for (int i = 0; i < 3; i++)
        free(first[i]);
    drop(m);
}

static void test_canonical_form(void)
{
    model *m = sample();
    char *json = compile_ok(m, 20, NULL);
    /* no whitespace outside strings, keys in the documented order */
    static const char prefix[] =
        "{\"schema\":\"portcullis.policy/1\",\"version\":7,\"proxy\":{\"ports\":{\"80\":\"http\","
        "\"443\":\"tls\"}},\"lists\":{\"skype\":{\"category\":\"skype\",\"description\":";
    CU_ASSERT_EQUAL(strncmp(json, prefix, strlen(prefix)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(json, "},\"defaults\":{\"use_lists\":[\"skype\"],"
                                        "\"blocked_domains\":[\"games.example\","
                                        "\"social.example\"],\"blocked_prefixes\":"
                                        "[\"198.51.100.0/24\"],\"blocked_url_suffixes\":"
                                        "[\".torrent\"],\"block_executables\":true,"
                                        "\"require_certificate\":true,\"skype_exception\":false},"
                                        "\"groups\":[{\"name\":\"guests\""));
    /* the firewall part last, its keys in the documented order */
    static const char tail[] =
        "}],\"firewall\":{\"lan\":[\"10.20.0.0/16\"],\"web\":\"transparent\",\"web_devices\":[],"
        "\"allow\":[],\"dns\":null,\"high_ports\":{\"block\":true,\"from\":1024},"
        "\"log_drops\":null}}";
    CU_ASSERT_STRING_EQUAL(json + strlen(json) - strlen(tail), tail);
    bool in_str = false;
    for (const char *s = json; *s; s++) {
        if (*s == '"' && s[-1] != '\\')
            in_str = !in_str;
        if (!in_str && (*s == ' ' || *s == '\n' || *s == '\t'))
            CU_FAIL("whitespace outside a string");
    }
    free(json);
    /* a large revision is written exactly */
    m->revision = 9007199254740991LL;
    json = compile_ok(m, 20, NULL);
    CU_ASSERT_PTR_NOT_NULL(strstr(json, "\"version\":9007199254740991,"));
    free(json);
    drop(m);
}

static void test_sha256(void)
{
    model *m = sample();
    char s1[65], s2[65], s3[65];
    char *a = compile_ok(m, 10, s1), *b = compile_ok(m, 10, s2);
    CU_ASSERT_STRING_EQUAL(a, b);
    CU_ASSERT_STRING_EQUAL(s1, s2);
    CU_ASSERT_EQUAL(strlen(s1), 64);
    for (const char *s = s1; *s; s++)
        CU_ASSERT(strchr("0123456789abcdef", *s) != NULL);
    /* a new revision changes the bytes and the hash */
    m->revision++;
    char *c = compile_ok(m, 10, s3);
    CU_ASSERT_STRING_NOT_EQUAL(s1, s3);
    free(a);
    free(b);
    free(c);
    drop(m);
}

/* The compiler refuses exactly the rule values the node refuses. */
static void test_values_agree_with_node(void)
{
    static const struct {
        model_rule_kind kind;
        const char *field, *value;
    } cases[] = {
        {MODEL_RULE_DOMAIN, "blocked_domains", "skype.com"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "SKYPE.com."},
        {MODEL_RULE_DOMAIN, "blocked_domains", "com"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "*.skype.com"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "a..b"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "-a.example"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "a-.example"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "192.0.2.1"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "under_score.example"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "sp ace.example"},
        {MODEL_RULE_DOMAIN, "blocked_domains", "1.2.3.example"},
        {MODEL_RULE_DOMAIN, "blocked_domains", ""},
        {MODEL_RULE_DOMAIN, "blocked_domains", "."},
        {MODEL_RULE_DOMAIN, "blocked_domains",
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example"},
        {MODEL_RULE_PREFIX, "blocked_prefixes", "192.0.2.0/24"},
        {MODEL_RULE_PREFIX, "blocked_prefixes", "192.0.2.1/24"},
        {MODEL_RULE_PREFIX, "blocked_prefixes", "192.0.2.1"},
        {MODEL_RULE_PREFIX, "blocked_prefixes", "2001:db8::/129"},
        {MODEL_RULE_PREFIX, "blocked_prefixes", "::ffff:192.0.2.0/120"},
        {MODEL_RULE_PREFIX, "blocked_prefixes", "192.0.2.0/024"},
        {MODEL_RULE_PREFIX, "blocked_prefixes", "example.com"},
        {MODEL_RULE_URL_SUFFIX, "blocked_url_suffixes", "skype.exe"},
        {MODEL_RULE_URL_SUFFIX, "blocked_url_suffixes", "/SkypeSetup.EXE"},
        {MODEL_RULE_URL_SUFFIX, "blocked_url_suffixes", "a b"},
        {MODEL_RULE_URL_SUFFIX, "blocked_url_suffixes", "x?y"},
        {MODEL_RULE_URL_SUFFIX, "blocked_url_suffixes", "x#y"},
        {MODEL_RULE_URL_SUFFIX, "blocked_url_suffixes", "skype%2Eexe"},
        {MODEL_RULE_URL_SUFFIX, "blocked_url_suffixes", "caf\xc3\xa9"},
        {MODEL_RULE_URL_SUFFIX, "blocked_url_suffixes", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *d = cJSON_CreateObject(), *def = cJSON_CreateObject(), *arr = cJSON_CreateArray();
        cJSON_AddStringToObject(d, "schema", "portcullis.policy/1");
        cJSON_AddNumberToObject(d, "version", 1);
        cJSON_AddItemToArray(arr, cJSON_CreateString(cases[i].value));
        cJSON_AddItemToObject(def, "use_lists", cJSON_CreateArray());
        cJSON_AddItemToObject(def, cases[i].field, arr);
        cJSON_AddItemToObject(d, "defaults", def);
        char *text = cJSON_PrintUnformatted(d);
        pc_policy *p = NULL;
        char perr[512];
        bool node_ok = pc_policy_parse(text, strlen(text), &p, perr, sizeof(perr)) == 0;
        pc_policy_unref(p);
        free(text);
        cJSON_Delete(d);

        model *m = mk(1);
        region(m, 1, "R");
        office(m, 1, 1, "O", "");
        use_lists(&m->global, "");
        rule(m, 42, MODEL_SCOPE_GLOBAL, 0, cases[i].kind, cases[i].value, false);
        char *json = NULL, err[COMPILER_ERR_MAX] = "", sha[65];
        bool ours = compiler_office_document(m, 1, &json, sha, err, sizeof(err)) == 0;
        if (ours != node_ok)
            fprintf(stderr, "\n  '%s': node %s, compiler %s (%s)\n", cases[i].value,
                    node_ok ? "accepts" : "refuses", ours ? "accepts" : "refuses", err);
        CU_ASSERT_EQUAL(ours, node_ok);
        if (!ours)
            CU_ASSERT_EQUAL(strncmp(err, "rule 42: ", 9), 0);
        free(json);
        drop(m);
    }
}

/* --- invalid input -------------------------------------------------------- */

static void test_invalid_input(void)
{
    model *m = sample();
    char *json = NULL, err[COMPILER_ERR_MAX], sha[65];
    CU_ASSERT_EQUAL(compiler_office_document(m, 99, &json, sha, err, sizeof(err)), -1);
    CU_ASSERT_STRING_EQUAL(err, "no office 99");
    CU_ASSERT_EQUAL(compiler_office_document(NULL, 10, &json, sha, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NULL(json);

    m->revision = 0;
    compile_fails(m, 10, "model: revision 0 is not a policy version");
    m->revision = 9007199254740992LL;
    compile_fails(m, 10, "model: revision 9007199254740992 is not a policy version");
    m->revision = 7;

    /* a bad global rule stops every office; a bad office rule only its own */
    rule(m, 50, MODEL_SCOPE_OFFICE, 11, MODEL_RULE_DOMAIN, "bad..example", false);
    compile_fails(m, 11, "rule 50: 'bad..example' is not a domain name (empty label)");
    free(compile_ok(m, 10, NULL));
    /* a rule of a group elsewhere does not matter here */
    rule(m, 51, MODEL_SCOPE_GROUP, 200, MODEL_RULE_PREFIX, "10.0.0.1/8", false);
    compile_fails(m, 20, "rule 51: '10.0.0.1/8': host bits set (the network is 10.0.0.0/8)");
    free(compile_ok(m, 10, NULL));
    /* a group everywhere colliding with an office's group */
    group(m, 901, "visitors", 0, "10.10.9.0/24");
    compile_fails(m, 10,
                  "group 901 'visitors': source 10.10.9.0/24 is also a source of group 101 "
                  "'interns'");
    /* the same network spelled another way is the same source */
    free(m->groups[m->ngroups - 1].sources[0]);
    m->groups[m->ngroups - 1].sources[0] = dup("::ffff:10.20.7.0/120");
    compile_fails(m, 20, "group 901 'visitors': source 10.20.7.0/24 is also a source of group 200");
    drop(m);

    m = sample();
    m->rules[0].scope = (model_scope)7;
    compile_fails(m, 10, "rule 1: unknown scope 7");
    m->rules[0].scope = MODEL_SCOPE_GLOBAL;
    m->rules[1].kind = (model_rule_kind)9;
    compile_fails(m, 10, "rule 2: unknown kind 9");
    m->rules[1].kind = MODEL_RULE_DOMAIN;
    free(m->rules[1].value);
    m->rules[1].value = NULL;
    compile_fails(m, 10, "rule 2: has no value");
    drop(m);

    /* a list in force that the node would refuse, named by the list */
    m = sample();
    free(m->lists[2].json);
    m->lists[2].json = dup("{\"category\":\"games\",\"prefixes\":[\"192.0.2.1/24\"]}");
    use_lists(&m->offices[0].settings, "games");
    compile_fails(m, 10, "list 'games': $.lists.games.prefixes[0]: '192.0.2.1/24': host bits set");
    free(compile_ok(m, 20, NULL)); /* not in force there */
    free(m->lists[2].json);
    m->lists[2].json = dup("{\"category\":\"games\",\"domains\":[\"ok.example\"]} x");
    compile_fails(m, 10, "list 'games': data after the JSON object at byte");
    free(m->lists[2].json);
    m->lists[2].json = dup("{\"category\":\"games\",\"url_suffixes\":[\"a\\u0000b\"]}");
    compile_fails(m, 10, "list 'games': \\u0000 is not allowed in a string");
    free(m->lists[2].json);
    m->lists[2].json = dup("{\"category\":\"games\",\"category\":\"skype\"}");
    compile_fails(m, 10, "list 'games': duplicate key 'category'");
    free(m->lists[2].json);
    m->lists[2].json = dup("[\"games\"]");
    compile_fails(m, 10, "list 'games': must be a JSON object");
    free(m->lists[2].json);
    m->lists[2].json = dup("{\"category\":\"games\",\"description\":\"bell\\u0007\"}");
    compile_fails(m, 10, "list 'games': $.lists.games.description: ");
    list_json(m, "games", "{\"category\":\"games\"}");
    compile_fails(m, 10, "list 'games': defined twice");
    drop(m);
}

/* --- explain -------------------------------------------------------------- */

static void explain_ok(const model *m, int64_t office_id, const char *src, const char *host,
                       uint16_t port, const char *path, compiler_explanation *e)
{
    char err[COMPILER_ERR_MAX] = "";
    int rc = compiler_explain_path(m, office_id, src, host, port, path, e, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  explain: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static const compiler_step *step_with(const compiler_explanation *e, const char *text)
{
    for (size_t i = 0; i < e->nsteps; i++)
        if (strcmp(e->steps[i].text, text) == 0)
            return &e->steps[i];
    fprintf(stderr, "\n  no step '%s'; the chain:\n", text);
    for (size_t i = 0; i < e->nsteps; i++)
        fprintf(stderr, "    %s\n", e->steps[i].text);
    return NULL;
}

static void test_explain_chain(void)
{
    model *m = sample();
    compiler_explanation e;

    /* Berlin, in no group: the region's exception lets Skype through */
    explain_ok(m, 10, "10.10.50.1", "www.skype.com", 443, NULL, &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_EXCEPTION);
    CU_ASSERT_STRING_EQUAL(e.group, "defaults");
    CU_ASSERT_STRING_EQUAL(e.list, "skype");
    CU_ASSERT_STRING_EQUAL(e.rule, "skype.com");
    CU_ASSERT_STRING_EQUAL(e.certificate, "exempt");
    CU_ASSERT(e.source_in_office_lan);
    const compiler_step *s =
        step_with(&e, "region EMEA: rule 5 allows Skype (skype_exception true)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT(s->in_force);
    CU_ASSERT_EQUAL(s->scope, COMPILER_STEP_REGION);
    CU_ASSERT_EQUAL(s->scope_id, 1);
    CU_ASSERT_EQUAL(s->rule_id, 5);
    s = step_with(&e, "global: rule 1 blocks Skype (skype_exception false) (overridden by region "
                      "EMEA rule 5)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT(!s->in_force);
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "region EMEA: use_lists skype, teams"));
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "office Berlin: source 10.10.50.1 is in no group: the "
                                         "defaults apply"));
    /* steps run from global to the most specific scope */
    for (size_t i = 1; i < e.nsteps; i++)
        CU_ASSERT(e.steps[i - 1].scope <= e.steps[i].scope);
    compiler_explanation_free(&e);

    /* Berlin interns: the group takes the exception back */
    explain_ok(m, 10, "10.10.9.20", "download.skype.com", 80, NULL, &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_BLOCK);
    CU_ASSERT_STRING_EQUAL(e.group, "interns");
    CU_ASSERT_EQUAL(e.group_id, 101);
    CU_ASSERT_STRING_EQUAL(e.group_source, "10.10.9.0/24");
    CU_ASSERT_PTR_NULL(e.certificate);
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "group interns: rule 7 blocks Skype (skype_exception "
                                         "false)"));
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "region EMEA: rule 5 allows Skype (skype_exception true) "
                                         "(overridden by group interns rule 7)"));
    CU_ASSERT_STRING_EQUAL(e.reason, "blocked: host download.skype.com matches skype.com in list "
                                     "skype (category skype; group interns has no Skype "
                                     "exception)");
    compiler_explanation_free(&e);

    /* board: its allow lifts the global block of games.example */
    explain_ok(m, 10, "10.10.1.7", "www.games.example", 443, NULL, &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_ALLOW);
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "global: rule 2 blocks domain games.example (overridden "
                                         "by group board rule 9)"));
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "group board: rule 9 allows domain games.example"));
    compiler_explanation_free(&e);

    /* the same host for the defaults of Berlin: blocked by the global rule */
    explain_ok(m, 10, "10.10.50.1", "games.example", 80, NULL, &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_BLOCK);
    CU_ASSERT_STRING_EQUAL(e.list, "defaults");
    CU_ASSERT_STRING_EQUAL(e.reason, "blocked: host games.example matches games.example in the "
                                     "defaults' blocked_domains; the Skype exception does not "
                                     "lift own rules");
    compiler_explanation_free(&e);

    /* Tokyo: port 554 is not served there (APAC's ports) */
    explain_ok(m, 20, "10.20.1.1", "media.example", 554, NULL, &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_REFUSED);
    CU_ASSERT_PTR_NULL(e.proto);
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "region APAC: does not serve port 554 (ports 80 http, 443 "
                                         "tls)"));
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "global: serves port 554 as rtsp (ports 80 http, 443 tls, "
                                         "554 rtsp, 1755 mms) (overridden by region APAC)"));
    compiler_explanation_free(&e);

    /* an address literal against the prefixes; an IPv6 source in lab */
    explain_ok(m, 20, "2001:db8:20::5", "198.51.100.9", 443, NULL, &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_BLOCK);
    CU_ASSERT_STRING_EQUAL(e.group, "lab");
    CU_ASSERT_STRING_EQUAL(e.rule, "198.51.100.0/24");
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "global: rule 4 blocks prefix 198.51.100.0/24"));
    compiler_explanation_free(&e);

    /* a path: skype.exe with the exception still falls to block_executables
     * only for downloads; the path itself is lifted for lab */
    explain_ok(m, 20, "10.20.7.7", "download.example", 80, "/get/SkypeSetup.exe", &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_EXCEPTION);
    CU_ASSERT_STRING_EQUAL(e.rule, "skypesetup.exe");
    compiler_explanation_free(&e);
    explain_ok(m, 20, "10.20.1.1", "download.example", 80, "/a/b.TORRENT", &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_BLOCK);
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "global: rule 3 blocks URL suffix .torrent"));
    compiler_explanation_free(&e);

    /* a guest everywhere */
    explain_ok(m, 11, "172.16.3.3", "cdn.video.example", 443, NULL, &e);
    CU_ASSERT_EQUAL(e.verdict, COMPILER_BLOCK);
    CU_ASSERT_STRING_EQUAL(e.list, "group");
    CU_ASSERT(!e.source_in_office_lan);
    CU_ASSERT_PTR_NOT_NULL(step_with(&e, "group guests: source 172.16.3.3 is in 172.16.0.0/12 (the "
                                         "longest matching prefix; the group applies in every "
                                         "office)"));
    compiler_explanation_free(&e);

    /* errors */
    char err[COMPILER_ERR_MAX];
    CU_ASSERT_EQUAL(compiler_explain(m, 10, "10.10.1.300", "x.example", 443, &e, err, sizeof(err)),
                    -1);
    CU_ASSERT_STRING_EQUAL(err, "source '10.10.1.300' is not an IP address");
    CU_ASSERT_EQUAL(compiler_explain(m, 12, "10.10.1.3", "x.example", 443, &e, err, sizeof(err)),
                    -1);
    CU_ASSERT_STRING_EQUAL(err, "no office 12");
    drop(m);
}

/* Explain can never disagree with the node: its verdict is the node's on
 * the same document, for every source and host tried. */
static void test_explain_matches_node(void)
{
    static const char *const sources[] = {"10.10.50.1", "10.10.1.1", "10.10.9.9",     "172.16.0.1",
                                          "10.11.5.5",  "10.20.7.1", "2001:db8:20::1"};
    static const char *const hosts[] = {"www.skype.com", "teams.microsoft.com", "games.example",
                                        "video.example", "social.example",      "198.51.100.1",
                                        "example.org",   "news.example"};
    static const int64_t offices[] = {10, 11, 20};
    model *m = sample();
    for (size_t o = 0; o < 3; o++) {
        char *json = compile_ok(m, offices[o], NULL);
        pc_policy *p = NULL;
        CU_ASSERT_EQUAL_FATAL(pc_policy_parse(json, strlen(json), &p, NULL, 0), 0);
        for (size_t s = 0; s < sizeof(sources) / sizeof(sources[0]); s++) {
            for (size_t h = 0; h < sizeof(hosts) / sizeof(hosts[0]); h++) {
                compiler_explanation e;
                explain_ok(m, offices[o], sources[s], hosts[h], 443, NULL, &e);
                struct sockaddr_storage ss = {0};
                struct sockaddr_in *in = (struct sockaddr_in *)&ss;
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
                if (inet_pton(AF_INET, sources[s], &in->sin_addr) == 1)
                    in->sin_family = AF_INET;
                else if (inet_pton(AF_INET6, sources[s], &in6->sin6_addr) == 1)
                    in6->sin6_family = AF_INET6;
                const pc_group *g = pc_policy_group_for(p, (struct sockaddr *)&ss);
                pc_decision d = pc_group_check_host(g, hosts[h]);
                CU_ASSERT_STRING_EQUAL(e.group, pc_group_name(g));
                CU_ASSERT_EQUAL(e.verdict == COMPILER_BLOCK, d.block);
                CU_ASSERT_EQUAL(e.verdict == COMPILER_EXCEPTION, d.exception);
                compiler_explanation_free(&e);
            }
        }
        pc_policy_unref(p);
        free(json);
    }
    drop(m);
}

static void test_explain_json(void)
{
    model *m = sample();
    compiler_explanation e;
    explain_ok(m, 10, "10.10.9.20", "www.skype.com", 443, NULL, &e);
    char *json = compiler_explanation_json(&e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(json);
    cJSON *j = cJSON_Parse(json);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    expect_at(j, "office_id", "10");
    expect_at(j, "office", "\"Berlin\"");
    expect_at(j, "version", "7");
    expect_at(j, "group", "\"interns\"");
    expect_at(j, "group_id", "101");
    expect_at(j, "group_source", "\"10.10.9.0/24\"");
    expect_at(j, "host", "\"www.skype.com\"");
    expect_at(j, "port", "443");
    expect_at(j, "path", "null");
    expect_at(j, "proto", "\"tls\"");
    expect_at(j, "verdict", "\"block\"");
    expect_at(j, "match", "{\"list\":\"skype\",\"rule\":\"skype.com\"}");
    expect_at(j, "skype_exception", "false");
    expect_at(j, "certificate", "\"required\"");
    expect_at(j, "source_in_office_lan", "true");
    const cJSON *chain = cJSON_GetObjectItemCaseSensitive(j, "chain");
    CU_ASSERT_EQUAL((size_t)cJSON_GetArraySize(chain), e.nsteps);
    bool seen = false;
    const cJSON *st;
    cJSON_ArrayForEach(st, chain)
    {
        const cJSON *rid = cJSON_GetObjectItemCaseSensitive(st, "rule_id");
        if (cJSON_IsNumber(rid) && rid->valueint == 7) {
            seen = true;
            CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItemCaseSensitive(st, "scope")->valuestring,
                                   "group");
            CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItemCaseSensitive(st, "name")->valuestring,
                                   "interns");
            CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "in_force")));
        }
    }
    CU_ASSERT(seen);
    char sha[65], want[80];
    free(compile_ok(m, 10, sha));
    snprintf(want, sizeof(want), "\"%s\"", sha);
    expect_at(j, "sha256", want);
    cJSON_Delete(j);
    free(json);
    compiler_explanation_free(&e);
    drop(m);
}

/* --- dry run -------------------------------------------------------------- */

static void test_diff_one_office(void)
{
    model *before = sample(), *after = sample();
    after->revision = 8;
    /* Paris blocks one more domain; nothing else changes */
    rule(after, 60, MODEL_SCOPE_OFFICE, 11, MODEL_RULE_DOMAIN, "x.com", false);
    compiler_change *c = NULL;
    size_t n = 99;
    char err[COMPILER_ERR_MAX];
    CU_ASSERT_EQUAL_FATAL(compiler_diff(before, after, &c, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_EQUAL(c[0].office_id, 11);
    CU_ASSERT_STRING_EQUAL(c[0].office, "Paris");
    CU_ASSERT_EQUAL(c[0].nnodes, 1);
    CU_ASSERT_STRING_EQUAL(c[0].nodes[0], "gw-paris");
    char sb[65], sa[65];
    free(compile_ok(before, 11, sb));
    free(compile_ok(after, 11, sa));
    CU_ASSERT_STRING_EQUAL(c[0].before_sha256, sb);
    CU_ASSERT_STRING_EQUAL(c[0].after_sha256, sa);
    /* the defaults, and guests, which carries its own blocked_domains */
    CU_ASSERT_STRING_EQUAL(c[0].diff,
                           "[{\"path\":\"$.defaults.blocked_domains\",\"op\":\"elements\","
                           "\"added\":[\"x.com\"],\"removed\":[]},"
                           "{\"path\":\"$.groups[?(@.name=='guests')].blocked_domains\","
                           "\"op\":\"elements\",\"added\":[\"x.com\"],\"removed\":[]}]");
    char *json = compiler_changes_json(c, n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(json);
    cJSON *j = cJSON_Parse(json);
    expect_at(j, "changed", "1");
    const cJSON *o = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "offices"), 0);
    expect_at(o, "office_id", "11");
    expect_at(o, "nodes", "[\"gw-paris\"]");
    expect_at(o, "diff", c[0].diff);
    cJSON_Delete(j);
    free(json);
    compiler_changes_free(c, n);

    /* a new revision alone changes no document */
    model *same = sample();
    same->revision = 9;
    CU_ASSERT_EQUAL(compiler_diff(before, same, &c, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_PTR_NULL(c);
    drop(same);
    drop(before);
    drop(after);
}

/* A firewall change is a change of the offices' documents, in the diff
 * format's terms (allow entries by name). */
static void test_diff_firewall(void)
{
    model *before = sample(), *after = sample();
    open_port(&before->global, "25", "tcp", "10.10.0.25");
    open_port(&after->global, "25", "tcp", "10.10.0.25,10.10.0.26");
    open_port(&after->global, "8000-8100", "tcp", "10.10.7.0/24");
    dns_resolvers(&after->regions[1].settings, "198.51.100.53");
    compiler_change *c = NULL;
    size_t n = 0;
    char err[COMPILER_ERR_MAX];
    CU_ASSERT_EQUAL_FATAL(compiler_diff(before, after, &c, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(n, 3);
    CU_ASSERT_STRING_EQUAL(
        c[0].diff,
        "[{\"path\":\"$.firewall.allow[?(@.name=='port-25-tcp')].devices\",\"op\":\"elements\","
        "\"added\":[\"10.10.0.26/32\"],\"removed\":[]},"
        "{\"path\":\"$.firewall.allow[?(@.name=='port-8000-8100-tcp')]\",\"op\":\"added\","
        "\"value\":{\"name\":\"port-8000-8100-tcp\",\"devices\":[\"10.10.7.0/24\"],"
        "\"proto\":\"tcp\",\"ports\":[\"8000-8100\"]}}]");
    CU_ASSERT_STRING_EQUAL(c[1].diff, c[0].diff);
    CU_ASSERT_EQUAL(c[2].office_id, 20);
    CU_ASSERT_PTR_NOT_NULL(strstr(c[2].diff,
                                  "{\"path\":\"$.firewall.dns\",\"op\":\"changed\",\"before\":null,"
                                  "\"after\":[\"198.51.100.53\"]}"));
    compiler_changes_free(c, n);
    drop(before);
    drop(after);
}

static void test_diff_shapes(void)
{
    model *before = sample(), *after = sample();
    /* a global change reaches all three offices */
    rule(after, 61, MODEL_SCOPE_GLOBAL, 0, MODEL_RULE_URL_SUFFIX, ".msi", false);
    /* Tokyo: the lab loses its exception, a group appears, ports change */
    after->rules[7].allow = false; /* rule 8, group lab */
    group(after, 201, "kiosk", 20, "10.20.8.0/24");
    ports(&after->regions[1].settings, "443:tls,8080:http");
    /* an office added, one node moved */
    office(after, 30, 2, "Seoul", "");
    compiler_change *c = NULL;
    size_t n = 0;
    char err[COMPILER_ERR_MAX];
    CU_ASSERT_EQUAL_FATAL(compiler_diff(before, after, &c, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(n, 4);
    CU_ASSERT_EQUAL(c[0].office_id, 10);
    CU_ASSERT_EQUAL(c[0].nnodes, 2);
    CU_ASSERT_EQUAL(c[1].office_id, 11);
    CU_ASSERT_EQUAL(c[2].office_id, 20);
    CU_ASSERT_EQUAL(c[3].office_id, 30);
    CU_ASSERT_STRING_EQUAL(c[3].before_sha256, "");
    CU_ASSERT_EQUAL(strlen(c[3].after_sha256), 64);
    CU_ASSERT_STRING_EQUAL(c[3].diff, "[{\"path\":\"$\",\"op\":\"added\"}]");
    CU_ASSERT_STRING_EQUAL(
        c[2].diff,
        "[{\"path\":\"$.proxy.ports['80']\",\"op\":\"removed\",\"value\":\"http\"},"
        "{\"path\":\"$.proxy.ports['8080']\",\"op\":\"added\",\"value\":\"http\"},"
        "{\"path\":\"$.defaults.blocked_url_suffixes\",\"op\":\"elements\",\"added\":[\".msi\"],"
        "\"removed\":[]},"
        "{\"path\":\"$.groups[?(@.name=='lab')].skype_exception\",\"op\":\"removed\","
        "\"value\":true},"
        "{\"path\":\"$.groups[?(@.name=='kiosk')]\",\"op\":\"added\",\"value\":{\"name\":"
        "\"kiosk\",\"sources\":[\"10.20.8.0/24\"]}}]");
    compiler_changes_free(c, n);

    /* an office removed; a change that does not compile is refused */
    drop(after);
    after = sample();
    after->noffices = 2; /* Tokyo (the last) gone; freed with the struct below */
    CU_ASSERT_EQUAL_FATAL(compiler_diff(before, after, &c, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_EQUAL(c[0].office_id, 20);
    CU_ASSERT_STRING_EQUAL(c[0].after_sha256, "");
    CU_ASSERT_STRING_EQUAL(c[0].nodes[0], "gw-tokyo");
    CU_ASSERT_STRING_EQUAL(c[0].diff, "[{\"path\":\"$\",\"op\":\"removed\"}]");
    compiler_changes_free(c, n);
    after->noffices = 3;
    rule(after, 62, MODEL_SCOPE_REGION, 2, MODEL_RULE_DOMAIN, "*.bad.example", false);
    CU_ASSERT_EQUAL(compiler_diff(before, after, &c, &n, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NULL(c);
    CU_ASSERT_STRING_EQUAL(err, "after: office 20 'Tokyo': rule 62: '*.bad.example': write "
                                "'bad.example' without '*.': a rule covers the name and every "
                                "name under it");
    drop(before);
    drop(after);
}

static void test_document_diff(void)
{
    char *d = NULL, err[COMPILER_ERR_MAX];
    /* version alone is not a change */
    CU_ASSERT_EQUAL(compiler_document_diff("{\"schema\":\"s\",\"version\":1,\"a\":1}",
                                           "{\"schema\":\"s\",\"version\":2,\"a\":1}", &d, err,
                                           sizeof(err)),
                    0);
    CU_ASSERT_STRING_EQUAL(d, "[]");
    free(d);
    CU_ASSERT_EQUAL(compiler_document_diff("{\"a\":{\"x\":1,\"l\":[\"p\",\"q\"]},\"b\":true}",
                                           "{\"a\":{\"x\":2,\"l\":[\"q\",\"r\"]},\"c\":[]}", &d,
                                           err, sizeof(err)),
                    0);
    CU_ASSERT_STRING_EQUAL(d, "[{\"path\":\"$.a.x\",\"op\":\"changed\",\"before\":1,\"after\":2},"
                              "{\"path\":\"$.a.l\",\"op\":\"elements\",\"added\":[\"r\"],"
                              "\"removed\":[\"p\"]},"
                              "{\"path\":\"$.b\",\"op\":\"removed\",\"value\":true},"
                              "{\"path\":\"$.c\",\"op\":\"added\",\"value\":[]}]");
    free(d);
    /* a name with a quote is escaped in the path */
    CU_ASSERT_EQUAL(compiler_document_diff("{\"groups\":[{\"name\":\"o'k\",\"v\":1}]}",
                                           "{\"groups\":[{\"name\":\"o'k\",\"v\":2}]}", &d, err,
                                           sizeof(err)),
                    0);
    CU_ASSERT_STRING_EQUAL(d, "[{\"path\":\"$.groups[?(@.name=='o\\\\'k')].v\",\"op\":\"changed\","
                              "\"before\":1,\"after\":2}]");
    free(d);
    CU_ASSERT_EQUAL(compiler_document_diff("{", "{}", &d, err, sizeof(err)), -1);
    CU_ASSERT_STRING_EQUAL(err, "before: not a JSON document");
}

int unit_register(void)
{
    static const unit_case documents[] = {
        {"inheritance", test_inheritance},
        {"precedence", test_precedence},
        {"skype_exception", test_skype_exception},
        {"lists_in_force", test_lists_in_force},
        {"determinism", test_determinism},
        {"canonical_form", test_canonical_form},
        {"sha256", test_sha256},
        {"values_agree_with_node", test_values_agree_with_node},
        {"invalid_input", test_invalid_input},
        {"firewall", test_firewall},
        {"firewall_invalid", test_firewall_invalid},
        {NULL, NULL},
    };
    static const unit_case vectors[] = {
        {"vectors", test_vectors},
        {NULL, NULL},
    };
    static const unit_case explain[] = {
        {"chain", test_explain_chain},
        {"matches_node", test_explain_matches_node},
        {"json", test_explain_json},
        {NULL, NULL},
    };
    static const unit_case dry_run[] = {
        {"one_office_of_three", test_diff_one_office},
        {"shapes", test_diff_shapes},
        {"firewall", test_diff_firewall},
        {"document_diff", test_document_diff},
        {NULL, NULL},
    };
    if (unit_add_suite("documents", documents) != 0 || unit_add_suite("vectors", vectors) != 0 ||
        unit_add_suite("explain", explain) != 0 || unit_add_suite("dry_run", dry_run) != 0)
        return -1;
    return 0;
}
