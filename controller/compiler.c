/* compiler.c - the policy compiler (compiler.h): the model at one revision
 * becomes one canonical effective-policy document per office; explain and
 * dry run are built on those documents, so neither can disagree with what a
 * node enforces. docs/controller-policy.md is the operator's description.
 *
 * How one office compiles:
 *   settings  global -> region -> office: the most specific scope that sets a
 *             field gives it (ports, use_lists, require_certificate,
 *             block_executables); unset everywhere, the built-in value.
 *   rules     global -> region -> office (-> group): for each (kind, value)
 *             the most specific rule decides; a block puts the value in the
 *             blocked_* array, an allow removes a block of the same value
 *             from a less specific scope. The MODEL_RULE_SKYPE chain gives
 *             skype_exception. Two rules of one scope that disagree on the
 *             same (kind, value) are an error: which one did the operator mean?
 *   groups    every group of the office or of every office; a group carries
 *             only the fields where its chain differs from the defaults (the
 *             node's semantics: a group field replaces the defaults' value).
 *   firewall  the office's LAN prefixes and the firewall settings of the
 *             chain, inherited like the others; each open port becomes one
 *             allow entry ("port-25-tcp"); docs/firewall.md is the format.
 * Canonical output: keys in a fixed order, unordered arrays sorted, values
 * normalized as the node normalizes them, no whitespace. The document is
 * then parsed by pc_policy_parse before it is handed out.
 */
#include "compiler.h"

#include "pc_buf.h"
#include "pc_text.h"

#include "pc_cidr.h"
#include "pc_policy.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DOMAIN 253
#define MAX_SUFFIX 256
#define MAX_NAME 64
#define MAX_VERSION 9007199254740991LL     /* 2^53 - 1, the node's limit */
#define COMPILER_MAX_ALLOW PC_FW_MAX_ALLOW /* (device, ports) pairs of firewall.allow */
#define BUILTIN_HIGH_PORTS 1024            /* high_ports.from when no scope sets it */

enum { LEVEL_GLOBAL = 0, LEVEL_REGION = 1, LEVEL_OFFICE = 2, LEVEL_GROUP = 3 };
/* blocked_* arrays, indexed by rule kind - 1 */
enum { K_DOMAIN = 0, K_PREFIX = 1, K_SUFFIX = 2, NKINDS = 3 };

static const char *const kind_field[NKINDS] = {"blocked_domains", "blocked_prefixes",
                                               "blocked_url_suffixes"};
static const char *const kind_noun[] = {"Skype", "domain", "prefix", "URL suffix"};

static const char *const proto_names[] = {"http", "tls", "rtsp", "mms", "passthrough"};

/* The node's value for proxy.ports when a document leaves it out; the
 * compiler writes it out instead, so every document says what it serves. */
static const struct {
    uint16_t port;
    const char *proto;
} builtin_ports[] = {{80, "http"}, {443, "tls"}, {554, "rtsp"}, {1755, "mms"}};

/* --- small helpers -------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A value quoted for a message: at most 80 bytes, control and non-ASCII
 * bytes and quotes as \xHH, so a hostile value cannot forge log lines. */
static const char *q(char *buf, size_t buflen, const char *s)
{
    size_t j = 0;
    if (!s)
        s = "";
    for (size_t i = 0; s[i] && j + 5 < buflen; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i >= 80) {
            memcpy(buf + j, "...", 3);
            j += 3;
            break;
        }
        if (ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '\'') {
            buf[j++] = (char)ch;
        } else {
            snprintf(buf + j, buflen - j, "\\x%02x", ch);
            j += 4;
        }
    }
    buf[j] = '\0';
    return buf;
}

static char *xstrdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static inline char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Group and list names: [A-Za-z0-9_.-]{1,64}, as the node reads them. */
static bool name_ok(const char *s)
{
    if (!s)
        return false;
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

static bool proto_ok(const char *p)
{
    if (!p)
        return false;
    for (size_t i = 0; i < sizeof(proto_names) / sizeof(proto_names[0]); i++)
        if (strcmp(p, proto_names[i]) == 0)
            return true;
    return false;
}

/* Strings in blocks that live as long as one compile. */
typedef struct pool_block {
    struct pool_block *next;
    size_t used, cap;
    char data[];
} pool_block;

typedef struct pool {
    pool_block *head;
} pool;

static const char *pool_strndup(pool *p, const char *s, size_t n)
{
    if (!p->head || p->head->cap - p->head->used < n + 1) {
        size_t cap = n + 1 > 8192 ? n + 1 : 8192;
        pool_block *b = malloc(sizeof(*b) + cap);
        if (!b)
            return NULL;
        b->next = p->head;
        b->used = 0;
        b->cap = cap;
        p->head = b;
    }
    char *d = p->head->data + p->head->used;
    memcpy(d, s, n);
    d[n] = '\0';
    p->head->used += n + 1;
    return d;
}

static void pool_free(pool *p)
{
    while (p->head) {
        pool_block *next = p->head->next;
        free(p->head);
        p->head = next;
    }
}

/* A vector of borrowed strings. */
typedef struct strv {
    const char **v;
    size_t n, cap;
} strv;

static int strv_push(strv *s, const char *x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **v = realloc(s->v, cap * sizeof(*v));
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

static void strv_free(strv *s)
{
    free(s->v);
    *s = (strv){0};
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void strv_sort_unique(strv *s)
{
    if (s->n < 2)
        return;
    qsort(s->v, s->n, sizeof(*s->v), cmp_str);
    size_t k = 1;
    for (size_t i = 1; i < s->n; i++)
        if (strcmp(s->v[i], s->v[k - 1]) != 0)
            s->v[k++] = s->v[i];
    s->n = k;
}

static bool strv_eq(const strv *a, const strv *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return false;
    return true;
}

/* --- rule values, checked as the node checks them (pc_policy.c) ----------- */

/* A domain rule: normalized (lower case, no trailing dot) into out, which
 * holds MAX_DOMAIN + 1 bytes. */
static int domain_norm(const char *s, char *out, char *msg, size_t msglen)
{
    char qb[200];
    size_t n = strlen(s);
    if (n == 0)
        return fail(msg, msglen, "a domain cannot be empty");
    if (n >= 2 && s[0] == '*' && s[1] == '.') {
        char qb2[200];
        return fail(msg, msglen,
                    "'%s': write '%s' without '*.': a rule covers the name and every name under "
                    "it",
                    q(qb, sizeof(qb), s), q(qb2, sizeof(qb2), s + 2));
    }
    if (s[n - 1] == '.')
        n--;
    if (n == 0 || n > MAX_DOMAIN)
        return fail(msg, msglen, "'%s' is not a domain name (1 to 253 characters)",
                    q(qb, sizeof(qb), s));
    size_t labels = 0, lab = 0;
    bool all_digits = true;
    for (size_t i = 0; i <= n; i++) {
        char ch = i < n ? s[i] : '.';
        if (ch == '.') {
            if (lab == 0)
                return fail(msg, msglen, "'%s' is not a domain name (empty label)",
                            q(qb, sizeof(qb), s));
            if (lab > 63)
                return fail(msg, msglen, "'%s' is not a domain name (a label is longer than 63)",
                            q(qb, sizeof(qb), s));
            if (s[i - lab] == '-' || s[i - 1] == '-')
                return fail(msg, msglen,
                            "'%s' is not a domain name (a label starts or ends with '-')",
                            q(qb, sizeof(qb), s));
            labels++;
            if (i < n) {
                lab = 0;
                all_digits = true;
            }
            continue;
        }
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        if (!ok)
            return fail(msg, msglen,
                        "'%s' is not a domain name (letters, digits, '-', '_' and dots only)",
                        q(qb, sizeof(qb), s));
        if (ch < '0' || ch > '9')
            all_digits = false;
        lab++;
    }
    if (all_digits)
        return fail(msg, msglen, "'%s' is an address, not a domain name: make it a prefix rule",
                    q(qb, sizeof(qb), s));
    if (labels < 2)
        return fail(msg, msglen,
                    "'%s': a whole top-level domain is refused; name at least two labels",
                    q(qb, sizeof(qb), s));
    for (size_t i = 0; i < n; i++)
        out[i] = lower(s[i]);
    out[n] = '\0';
    return 0;
}

/* A URL suffix rule: lower case into out (MAX_SUFFIX + 1 bytes). */
static int suffix_norm(const char *s, char *out, char *msg, size_t msglen)
{
    char qb[200];
    size_t n = strlen(s);
    if (n == 0)
        return fail(msg, msglen, "a URL suffix cannot be empty (it would match every path)");
    if (n > MAX_SUFFIX)
        return fail(msg, msglen, "a URL suffix is at most %d bytes", MAX_SUFFIX);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f)
            return fail(msg, msglen, "'%s': printable ASCII without spaces only",
                        q(qb, sizeof(qb), s));
        if (ch == '?' || ch == '#')
            return fail(msg, msglen, "'%s': the query and fragment are not part of the path",
                        q(qb, sizeof(qb), s));
        if (ch == '%')
            return fail(msg, msglen,
                        "'%s': write the decoded text; paths are percent-decoded before they "
                        "are matched",
                        q(qb, sizeof(qb), s));
        out[i] = lower((char)ch);
    }
    out[n] = '\0';
    return 0;
}

/* A prefix rule or group source: the node's canonical spelling into out
 * (64 bytes): "::ffff:192.0.2.0/120" is "192.0.2.0/24". */
static int prefix_norm(const char *s, char *out, char *msg, size_t msglen)
{
    pc_cidr c;
    if (pc_cidr_parse(s, &c, msg, msglen) != 0)
        return -1;
    pc_cidr_format(&c, out, 64);
    return 0;
}

/* --- the model ------------------------------------------------------------ */

static const model_office *find_office(const model *m, int64_t id)
{
    for (size_t i = 0; i < m->noffices; i++)
        if (m->offices[i].id == id)
            return &m->offices[i];
    return NULL;
}

static const model_region *find_region(const model *m, int64_t id)
{
    for (size_t i = 0; i < m->nregions; i++)
        if (m->regions[i].id == id)
            return &m->regions[i];
    return NULL;
}

static const model_list *find_list(const model *m, const char *name)
{
    for (size_t i = 0; i < m->nlists; i++)
        if (m->lists[i].name && strcmp(m->lists[i].name, name) == 0)
            return &m->lists[i];
    return NULL;
}

static bool group_applies(const model_group *g, int64_t office_id)
{
    return g->office_id == office_id || g->office_id == 0;
}

/* "office 3 'Berlin'" and the like, for messages. */
static const char *obj_label(char *buf, size_t n, const char *what, int64_t id, const char *name)
{
    char qb[200];
    snprintf(buf, n, "%s %lld '%s'", what, (long long)id, q(qb, sizeof(qb), name));
    return buf;
}

/* One scope of an office's settings chain. */
typedef struct scope_ref {
    const model_settings *s;
    int64_t id;
    const char *name;
    const char *what; /* "global", "region", "office" */
} scope_ref;

/* One relevant rule, its value normalized. */
typedef struct entry {
    const model_rule *rule;
    const char *value; /* "" for MODEL_RULE_SKYPE */
    int kind;
    int level;
    size_t group; /* index into the office's groups, for LEVEL_GROUP */
    bool allow;
} entry;

/* A group that applies in the office being compiled. */
typedef struct ginfo {
    const model_group *g;
    strv sources;        /* normalized, sorted, unique */
    size_t first, count; /* its rules in the sorted group entries */
} ginfo;

/* Everything one office's compile holds; released by ctx_free. */
typedef struct ctx {
    const model *m;
    const model_office *office;
    const model_region *region;
    scope_ref chain[3];
    pool mem;
    entry *ents; /* office chain rules, then group rules */
    size_t nents, nchain;
    entry **chain_sorted;
    entry **group_sorted;
    ginfo *groups;
    size_t ngroups;
    strv use_lists;
    strv blocked[NKINDS];
    bool skype_exception;
    char *err;
    size_t errlen;
} ctx;

static void ctx_free(ctx *c)
{
    for (size_t i = 0; i < c->ngroups; i++)
        strv_free(&c->groups[i].sources);
    free(c->groups);
    free(c->ents);
    free(c->chain_sorted);
    free(c->group_sorted);
    strv_free(&c->use_lists);
    for (int k = 0; k < NKINDS; k++)
        strv_free(&c->blocked[k]);
    pool_free(&c->mem);
}

static const char *scope_label(const ctx *c, const entry *e, char *buf, size_t n)
{
    switch (e->level) {
    case LEVEL_GLOBAL: snprintf(buf, n, "global"); break;
    case LEVEL_REGION: obj_label(buf, n, "region", c->region->id, c->region->name); break;
    case LEVEL_OFFICE: obj_label(buf, n, "office", c->office->id, c->office->name); break;
    default: {
        const model_group *g = c->groups[e->group].g;
        obj_label(buf, n, "group", g->id, g->name);
    }
    }
    return buf;
}

static int oom(ctx *c)
{
    return fail(c->err, c->errlen, "out of memory");
}

/* --- settings ------------------------------------------------------------- */

static int settings_label(const scope_ref *r, char *buf, size_t n)
{
    if (strcmp(r->what, "global") == 0)
        snprintf(buf, n, "global settings");
    else {
        char ob[200];
        snprintf(buf, n, "%s settings", obj_label(ob, sizeof(ob), r->what, r->id, r->name));
    }
    return 0;
}

/* An open port's range as the node writes it: "25" or "8000-8100". */
static void port_text(const struct model_open_port *op, char *buf, size_t n)
{
    if (op->port_last && op->port_last != op->port)
        snprintf(buf, n, "%u-%u", (unsigned)op->port, (unsigned)op->port_last);
    else
        snprintf(buf, n, "%u", (unsigned)op->port);
}

static unsigned port_last(const struct model_open_port *op)
{
    return op->port_last ? op->port_last : op->port;
}

/* A DNS resolver: an address (no prefix length) in the node's spelling
 * into out (64 bytes). */
static int address_norm(const char *s, char *out, char *msg, size_t msglen)
{
    char qb[200];
    pc_cidr c;
    if (!s || strchr(s, '/') || pc_cidr_parse(s, &c, NULL, 0) != 0)
        return fail(msg, msglen, "'%s' is not an IP address", q(qb, sizeof(qb), s));
    pc_cidr_format(&c, out, 64);
    char *slash = strchr(out, '/');
    if (slash)
        *slash = '\0';
    return 0;
}

/* Every prefix of v (n of them) is one the node reads. */
static int check_prefixes(ctx *c, char *const *v, size_t n, const char *what)
{
    char msg[COMPILER_ERR_MAX], norm[64];
    if (n && !v)
        return fail(c->err, c->errlen, "%s: %zu prefixes but no array", what, n);
    for (size_t i = 0; i < n; i++)
        if (prefix_norm(v[i] ? v[i] : "", norm, msg, sizeof(msg)) != 0)
            return fail(c->err, c->errlen, "%s: %s", what, msg);
    return 0;
}

/* The firewall settings of one scope (docs/firewall.md). */
static int check_firewall_settings(ctx *c, const model_settings *s, const char *lb)
{
    char what[512], msg[COMPILER_ERR_MAX], norm[64], qb[200];
    if (s->has_high_port_threshold && s->high_port_threshold == 0)
        return fail(c->err, c->errlen, "%s: high_port_threshold: 0 is not a port (1 to 65535)", lb);
    if (s->has_open_ports) {
        if (s->nopen_ports && !s->open_ports)
            return fail(c->err, c->errlen, "%s: open_ports: %zu entries but no array", lb,
                        s->nopen_ports);
        size_t pairs = 0;
        for (size_t i = 0; i < s->nopen_ports; i++) {
            const struct model_open_port *op = &s->open_ports[i];
            char pt[16];
            port_text(op, pt, sizeof(pt));
            if (strcmp(op->proto, "tcp") != 0 && strcmp(op->proto, "udp") != 0)
                return fail(c->err, c->errlen, "%s: open_ports: %s: '%s' is not tcp or udp", lb, pt,
                            q(qb, sizeof(qb), op->proto));
            if (op->port == 0 || port_last(op) < op->port)
                return fail(c->err, c->errlen, "%s: open_ports: %s/%s is not a port range", lb, pt,
                            op->proto);
            if (op->ndevices == 0)
                return fail(c->err, c->errlen, "%s: open_ports: %s/%s: no devices", lb, pt,
                            op->proto);
            snprintf(what, sizeof(what), "%s: open_ports: %s/%s: device", lb, pt, op->proto);
            if (check_prefixes(c, op->devices, op->ndevices, what) != 0)
                return -1;
            for (size_t j = 0; j < i; j++) {
                const struct model_open_port *o = &s->open_ports[j];
                char ot[16];
                if (strcmp(o->proto, op->proto) != 0 || port_last(o) < op->port ||
                    o->port > port_last(op))
                    continue;
                port_text(o, ot, sizeof(ot));
                return fail(c->err, c->errlen,
                            "%s: open_ports: %s/%s overlaps %s/%s; list each port once", lb, pt,
                            op->proto, ot, o->proto);
            }
            pairs += op->ndevices;
        }
        if (pairs > COMPILER_MAX_ALLOW)
            return fail(c->err, c->errlen,
                        "%s: open_ports: %zu devices in all; the node takes at most %d", lb, pairs,
                        COMPILER_MAX_ALLOW);
    }
    if (s->has_dns_resolvers) {
        if (s->ndns_resolvers && !s->dns_resolvers)
            return fail(c->err, c->errlen, "%s: dns_resolvers: %zu addresses but no array", lb,
                        s->ndns_resolvers);
        for (size_t i = 0; i < s->ndns_resolvers; i++)
            if (address_norm(s->dns_resolvers[i], norm, msg, sizeof(msg)) != 0)
                return fail(c->err, c->errlen, "%s: dns_resolvers: %s", lb, msg);
    }
    if (s->has_web_mode && strcmp(s->web_mode, "transparent") != 0 &&
        strcmp(s->web_mode, "proxy") != 0)
        return fail(c->err, c->errlen, "%s: web_mode: '%s' is not transparent or proxy", lb,
                    q(qb, sizeof(qb), s->web_mode));
    snprintf(what, sizeof(what), "%s: web_devices", lb);
    if (s->has_web_devices && check_prefixes(c, s->web_devices, s->nweb_devices, what) != 0)
        return -1;
    if (s->has_log_drops_per_minute && s->log_drops_per_minute > 10000)
        return fail(c->err, c->errlen,
                    "%s: log_drops_per_minute: %u is more than 10000 (0: not logged)", lb,
                    (unsigned)s->log_drops_per_minute);
    return 0;
}

static int check_settings(ctx *c, const scope_ref *r)
{
    const model_settings *s = r->s;
    char lb[256], qb[200];
    settings_label(r, lb, sizeof(lb));
    if (s->has_ports) {
        if (s->nports && (!s->ports || !s->port_protos))
            return fail(c->err, c->errlen, "%s: ports: %zu ports but no array", lb, s->nports);
        for (size_t i = 0; i < s->nports; i++) {
            if (s->ports[i] == 0)
                return fail(c->err, c->errlen, "%s: ports: 0 is not a port (1 to 65535)", lb);
            if (!proto_ok(s->port_protos[i]))
                return fail(c->err, c->errlen,
                            "%s: ports: %u: '%s' is not one of http, tls, rtsp, mms, passthrough",
                            lb, (unsigned)s->ports[i], q(qb, sizeof(qb), s->port_protos[i]));
            for (size_t j = 0; j < i; j++)
                if (s->ports[j] == s->ports[i])
                    return fail(c->err, c->errlen, "%s: ports: %u is given twice", lb,
                                (unsigned)s->ports[i]);
        }
    }
    if (s->has_use_lists) {
        if (s->nuse_lists && !s->use_lists)
            return fail(c->err, c->errlen, "%s: use_lists: %zu names but no array", lb,
                        s->nuse_lists);
        for (size_t i = 0; i < s->nuse_lists; i++) {
            const char *name = s->use_lists[i];
            if (name && find_list(c->m, name))
                continue;
            pc_buf names = {0};
            for (size_t k = 0; k < c->m->nlists && k < 10; k++)
                pc_buf_printf(&names, "%s%s", k ? ", " : "", q(qb, sizeof(qb), c->m->lists[k].name));
            if (c->m->nlists > 10)
                pc_buf_printf(&names, ", ...");
            char *all = pc_buf_take(&names);
            fail(c->err, c->errlen, "%s: use_lists: no list named '%s' (lists: %s)", lb,
                 q(qb, sizeof(qb), name), all && *all ? all : "none");
            free(all);
            return -1;
        }
    }
    return check_firewall_settings(c, s, lb);
}

/* The most specific scope of the chain that sets a field, or -1. */
#define CHAIN_SETTER(c, field)                                                                     \
    ((c)->chain[2].s->field ? 2 : (c)->chain[1].s->field ? 1 : (c)->chain[0].s->field ? 0 : -1)

static int build_use_lists(ctx *c)
{
    int who = CHAIN_SETTER(c, has_use_lists);
    if (who < 0) {
        /* Unset everywhere: what the node's built-in policy does. */
        if (find_list(c->m, "skype") && strv_push(&c->use_lists, "skype") != 0)
            return oom(c);
        return 0;
    }
    const model_settings *s = c->chain[who].s;
    for (size_t i = 0; i < s->nuse_lists; i++)
        if (strv_push(&c->use_lists, s->use_lists[i]) != 0)
            return oom(c);
    strv_sort_unique(&c->use_lists);
    return 0;
}

typedef struct port_proto {
    uint16_t port;
    const char *proto;
} port_proto;

static int cmp_port(const void *a, const void *b)
{
    const port_proto *x = a, *y = b;
    return (int)x->port - (int)y->port;
}

static cJSON *build_proxy(ctx *c)
{
    int who = CHAIN_SETTER(c, has_ports);
    size_t n = who < 0 ? sizeof(builtin_ports) / sizeof(builtin_ports[0]) : c->chain[who].s->nports;
    port_proto *pp = calloc(n ? n : 1, sizeof(*pp));
    cJSON *proxy = cJSON_CreateObject(), *ports = cJSON_CreateObject();
    if (!pp || !proxy || !ports)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        if (who < 0)
            pp[i] = (port_proto){builtin_ports[i].port, builtin_ports[i].proto};
        else
            pp[i] = (port_proto){c->chain[who].s->ports[i], c->chain[who].s->port_protos[i]};
    }
    qsort(pp, n, sizeof(*pp), cmp_port);
    for (size_t i = 0; i < n; i++) {
        char key[8];
        snprintf(key, sizeof(key), "%u", (unsigned)pp[i].port);
        if (!cJSON_AddStringToObject(ports, key, pp[i].proto))
            goto oom;
    }
    cJSON_AddItemToObject(proxy, "ports", ports);
    free(pp);
    return proxy;
oom:
    free(pp);
    cJSON_Delete(ports);
    cJSON_Delete(proxy);
    oom(c);
    return NULL;
}

/* --- lists ---------------------------------------------------------------- */

static const char *const list_keys[] = {"category", "description", "sources",
                                        "domains",  "prefixes",    "url_suffixes"};

/* The node's path of a list ("$.lists.skype", "$.lists['my-list']"). */
static void list_path(const char *name, char *buf, size_t n)
{
    bool ident =
        (name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z') || name[0] == '_';
    for (const char *s = name + 1; ident && *s; s++)
        ident = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                *s == '_';
    if (ident)
        snprintf(buf, n, "$.lists.%s", name);
    else
        snprintf(buf, n, "$.lists['%s']", name);
}

/* The list object with its keys in a fixed order. Its arrays stay as the
 * operator stored them: the same model still gives the same bytes, and the
 * node parser's error positions ("$.lists.mine.domains[3]") are the stored
 * ones. Their content is checked by that parser on the whole document. */
static cJSON *list_canonical(ctx *c, const model_list *l)
{
    char qb[200];
    const char *name = q(qb, sizeof(qb), l->name);
    if (!l->json) {
        fail(c->err, c->errlen, "list '%s': has no JSON", name);
        return NULL;
    }
    size_t len = strlen(l->json);
    if (pc_text_json_nul_escape(l->json, len) < len) {
        fail(c->err, c->errlen, "list '%s': \\u0000 is not allowed in a string", name);
        return NULL;
    }
    const char *end = NULL;
    cJSON *src = cJSON_ParseWithLengthOpts(l->json, len, &end, false);
    if (!src) {
        size_t off = end && end >= l->json ? (size_t)(end - l->json) : 0;
        fail(c->err, c->errlen, "list '%s': invalid JSON at byte %zu", name, off);
        return NULL;
    }
    size_t off = (size_t)(end - l->json);
    while (off < len && strchr(" \t\r\n", l->json[off]))
        off++;
    cJSON *dst = NULL;
    if (off < len) {
        fail(c->err, c->errlen, "list '%s': data after the JSON object at byte %zu", name, off);
        goto done;
    }
    if (!cJSON_IsObject(src)) {
        fail(c->err, c->errlen, "list '%s': must be a JSON object", name);
        goto done;
    }
    for (const cJSON *it = src->child; it; it = it->next) {
        bool known = false;
        char qk[200];
        for (size_t k = 0; k < sizeof(list_keys) / sizeof(list_keys[0]); k++)
            known = known || strcmp(it->string, list_keys[k]) == 0;
        if (!known) {
            fail(c->err, c->errlen,
                 "list '%s': unknown key '%s' (a list has category, description, sources, "
                 "domains, prefixes, url_suffixes)",
                 name, q(qk, sizeof(qk), it->string));
            goto done;
        }
        for (const cJSON *o = src->child; o != it; o = o->next)
            if (strcmp(o->string, it->string) == 0) {
                fail(c->err, c->errlen, "list '%s': duplicate key '%s'", name,
                     q(qk, sizeof(qk), it->string));
                goto done;
            }
    }
    dst = cJSON_CreateObject();
    if (!dst) {
        oom(c);
        goto done;
    }
    for (size_t k = 0; k < sizeof(list_keys) / sizeof(list_keys[0]); k++) {
        cJSON *it = cJSON_DetachItemFromObjectCaseSensitive(src, list_keys[k]);
        if (it)
            cJSON_AddItemToObject(dst, list_keys[k], it);
    }
done:
    cJSON_Delete(src);
    return dst;
}

static cJSON *build_lists(ctx *c)
{
    cJSON *lists = cJSON_CreateObject();
    if (!lists) {
        oom(c);
        return NULL;
    }
    for (size_t i = 0; i < c->use_lists.n; i++) {
        const char *name = c->use_lists.v[i];
        const model_list *l = find_list(c->m, name);
        char qb[200];
        if (!name_ok(name) || strcmp(name, "group") == 0 || strcmp(name, "defaults") == 0) {
            fail(c->err, c->errlen,
                 "list '%s': not a list name ([A-Za-z0-9_.-], 1 to 64 characters; 'group' and "
                 "'defaults' are reserved)",
                 q(qb, sizeof(qb), name));
            goto fail;
        }
        for (const model_list *o = l + 1; o < c->m->lists + c->m->nlists; o++)
            if (o->name && strcmp(o->name, name) == 0) {
                fail(c->err, c->errlen, "list '%s': defined twice", q(qb, sizeof(qb), name));
                goto fail;
            }
        cJSON *obj = list_canonical(c, l);
        if (!obj)
            goto fail;
        cJSON_AddItemToObject(lists, name, obj);
    }
    return lists;
fail:
    cJSON_Delete(lists);
    return NULL;
}

/* --- rules ---------------------------------------------------------------- */

/* Checks one rule and fills e; level and group are the caller's. */
static int entry_make(ctx *c, const model_rule *r, entry *e)
{
    char msg[COMPILER_ERR_MAX], val[MAX_SUFFIX + 1];
    e->rule = r;
    e->kind = (int)r->kind;
    e->allow = r->allow;
    if (r->kind == MODEL_RULE_SKYPE) {
        e->value = "";
        return 0;
    }
    if (!r->value)
        return fail(c->err, c->errlen, "rule %lld: has no value", (long long)r->id);
    int rc;
    switch (r->kind) {
    case MODEL_RULE_DOMAIN: rc = domain_norm(r->value, val, msg, sizeof(msg)); break;
    case MODEL_RULE_PREFIX: rc = prefix_norm(r->value, val, msg, sizeof(msg)); break;
    case MODEL_RULE_URL_SUFFIX: rc = suffix_norm(r->value, val, msg, sizeof(msg)); break;
    default:
        return fail(c->err, c->errlen, "rule %lld: unknown kind %d", (long long)r->id, r->kind);
    }
    if (rc != 0)
        return fail(c->err, c->errlen, "rule %lld: %s", (long long)r->id, msg);
    e->value = pool_strndup(&c->mem, val, strlen(val));
    if (!e->value)
        return oom(c);
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;
    if (x->group != y->group)
        return x->group < y->group ? -1 : 1;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    int r = strcmp(x->value, y->value);
    if (r)
        return r;
    if (x->level != y->level)
        return x->level < y->level ? -1 : 1;
    if (x->rule->id != y->rule->id)
        return x->rule->id < y->rule->id ? -1 : 1;
    return 0;
}

/* Sorted entries of one scope chain: for each (kind, value) the most
 * specific entry decides. A block goes to blocked, an allow to allowed (when
 * given); *skype gets the Skype decision (-1: no rule). */
static int resolve(ctx *c, entry *const *ev, size_t n, strv blocked[NKINDS], strv *allowed,
                   int *skype)
{
    *skype = -1;
    size_t i = 0;
    while (i < n) {
        size_t j = i + 1;
        while (j < n && ev[j]->kind == ev[i]->kind && strcmp(ev[j]->value, ev[i]->value) == 0)
            j++;
        for (size_t k = i + 1; k < j; k++) {
            const entry *a = ev[k - 1], *b = ev[k];
            if (a->level == b->level && a->allow != b->allow) {
                char lb[256], obj[300];
                const char *what = b->kind == MODEL_RULE_SKYPE ? "the Skype exception" : NULL;
                if (!what) {
                    char qb[200];
                    snprintf(obj, sizeof(obj), "%s '%s'", kind_noun[b->kind],
                             q(qb, sizeof(qb), b->value));
                    what = obj;
                }
                return fail(c->err, c->errlen,
                            "rule %lld: %s %s but rule %lld %s it at the same scope (%s); "
                            "remove one",
                            (long long)b->rule->id, b->allow ? "allows" : "blocks", what,
                            (long long)a->rule->id, a->allow ? "allows" : "blocks",
                            scope_label(c, b, lb, sizeof(lb)));
            }
        }
        const entry *w = ev[j - 1];
        if (w->kind == MODEL_RULE_SKYPE) {
            *skype = w->allow ? 1 : 0;
        } else if (!w->allow) {
            if (strv_push(&blocked[w->kind - 1], w->value) != 0)
                return oom(c);
        } else if (allowed) {
            if (strv_push(&allowed[w->kind - 1], w->value) != 0)
                return oom(c);
        }
        i = j;
    }
    return 0;
}

/* out = (d + add) - del; all sorted and unique. */
static int merge(const strv *d, const strv *add, const strv *del, strv *out)
{
    size_t i = 0, j = 0, k = 0;
    while (i < d->n || j < add->n) {
        const char *x;
        if (j >= add->n || (i < d->n && strcmp(d->v[i], add->v[j]) < 0)) {
            x = d->v[i++];
        } else if (i >= d->n || strcmp(d->v[i], add->v[j]) > 0) {
            x = add->v[j++];
        } else {
            x = d->v[i++];
            j++;
        }
        while (k < del->n && strcmp(del->v[k], x) < 0)
            k++;
        if (k < del->n && strcmp(del->v[k], x) == 0)
            continue;
        if (strv_push(out, x) != 0)
            return -1;
    }
    return 0;
}

static int cmp_ginfo(const void *a, const void *b)
{
    const ginfo *x = a, *y = b;
    int r = strcmp(x->g->name, y->g->name);
    if (r)
        return r;
    return x->g->id < y->g->id ? -1 : x->g->id > y->g->id;
}

typedef struct src_ref {
    const char *text;
    size_t group;
} src_ref;

static int cmp_src(const void *a, const void *b)
{
    const src_ref *x = a, *y = b;
    int r = strcmp(x->text, y->text);
    if (r)
        return r;
    return x->group < y->group ? -1 : x->group > y->group;
}

/* The groups that apply in the office: checked, sources normalized, sorted
 * by name. A group with no sources selects nobody and is left out. */
static int collect_groups(ctx *c)
{
    const model *m = c->m;
    char lb[256], qb[200], msg[COMPILER_ERR_MAX], pfx[64];
    size_t n = 0;
    for (size_t i = 0; i < m->ngroups; i++)
        if (group_applies(&m->groups[i], c->office->id) && m->groups[i].nsources > 0)
            n++;
    c->groups = calloc(n ? n : 1, sizeof(*c->groups));
    if (!c->groups)
        return oom(c);
    size_t nsrc = 0;
    for (size_t i = 0; i < m->ngroups; i++) {
        const model_group *g = &m->groups[i];
        if (!group_applies(g, c->office->id) || g->nsources == 0)
            continue;
        if (!name_ok(g->name))
            return fail(c->err, c->errlen,
                        "group %lld: '%s' is not a group name ([A-Za-z0-9_.-], 1 to 64 "
                        "characters)",
                        (long long)g->id, q(qb, sizeof(qb), g->name));
        obj_label(lb, sizeof(lb), "group", g->id, g->name);
        if (strcmp(g->name, "defaults") == 0)
            return fail(c->err, c->errlen,
                        "%s: the name 'defaults' is reserved for sources in no group", lb);
        ginfo *gi = &c->groups[c->ngroups++];
        gi->g = g;
        for (size_t k = 0; k < g->nsources; k++) {
            if (!g->sources || !g->sources[k])
                return fail(c->err, c->errlen, "%s: source %zu is missing", lb, k);
            if (prefix_norm(g->sources[k], pfx, msg, sizeof(msg)) != 0)
                return fail(c->err, c->errlen, "%s: source %s", lb, msg);
            const char *s = pool_strndup(&c->mem, pfx, strlen(pfx));
            if (!s || strv_push(&gi->sources, s) != 0)
                return oom(c);
        }
        /* The same prefix twice in one group means the same thing once. */
        strv_sort_unique(&gi->sources);
        nsrc += gi->sources.n;
    }
    qsort(c->groups, c->ngroups, sizeof(*c->groups), cmp_ginfo);
    for (size_t i = 1; i < c->ngroups; i++) {
        const model_group *a = c->groups[i - 1].g, *b = c->groups[i].g;
        if (strcmp(a->name, b->name) == 0)
            return fail(c->err, c->errlen,
                        "%s: group %lld in the same office has the same name; group names must "
                        "be unique in an office",
                        obj_label(lb, sizeof(lb), "group", b->id, b->name), (long long)a->id);
    }
    /* One source, one group: the node must know which group it selects. */
    src_ref *all = malloc((nsrc ? nsrc : 1) * sizeof(*all));
    if (!all)
        return oom(c);
    size_t k = 0;
    for (size_t i = 0; i < c->ngroups; i++)
        for (size_t s = 0; s < c->groups[i].sources.n; s++)
            all[k++] = (src_ref){c->groups[i].sources.v[s], i};
    qsort(all, nsrc, sizeof(*all), cmp_src);
    for (size_t i = 1; i < nsrc; i++) {
        if (strcmp(all[i].text, all[i - 1].text) != 0)
            continue;
        const model_group *a = c->groups[all[i - 1].group].g, *b = c->groups[all[i].group].g;
        if (a->id > b->id) {
            const model_group *t = a;
            a = b;
            b = t;
        }
        fail(c->err, c->errlen,
             "%s: source %s is also a source of group %lld '%s'; a source must select one group",
             obj_label(lb, sizeof(lb), "group", b->id, b->name), all[i].text, (long long)a->id,
             q(qb, sizeof(qb), a->name));
        free(all);
        return -1;
    }
    free(all);
    return 0;
}

static long group_index(const ctx *c, int64_t id)
{
    for (size_t i = 0; i < c->ngroups; i++)
        if (c->groups[i].g->id == id)
            return (long)i;
    return -1;
}

/* The rules that bear on this office: checked, normalized, and sorted into
 * the office chain and the groups' own. */
static int collect_rules(ctx *c)
{
    const model *m = c->m;
    c->ents = calloc(m->nrules ? m->nrules : 1, sizeof(*c->ents));
    if (!c->ents)
        return oom(c);
    size_t ngroup = 0;
    for (size_t pass = 0; pass < 2; pass++) {
        /* The chain's rules first, then the groups', so both are contiguous. */
        for (size_t i = 0; i < m->nrules; i++) {
            const model_rule *r = &m->rules[i];
            int level;
            long gi = 0;
            switch (r->scope) {
            case MODEL_SCOPE_GLOBAL: level = LEVEL_GLOBAL; break;
            case MODEL_SCOPE_REGION:
                if (r->scope_id != c->region->id)
                    continue;
                level = LEVEL_REGION;
                break;
            case MODEL_SCOPE_OFFICE:
                if (r->scope_id != c->office->id)
                    continue;
                level = LEVEL_OFFICE;
                break;
            case MODEL_SCOPE_GROUP:
                gi = group_index(c, r->scope_id);
                if (gi < 0)
                    continue;
                level = LEVEL_GROUP;
                break;
            default:
                return fail(c->err, c->errlen, "rule %lld: unknown scope %d", (long long)r->id,
                            (int)r->scope);
            }
            if ((pass == 0) != (level != LEVEL_GROUP))
                continue;
            entry *e = &c->ents[c->nents++];
            e->level = level;
            e->group = level == LEVEL_GROUP ? (size_t)gi : 0;
            if (entry_make(c, r, e) != 0)
                return -1;
            if (level == LEVEL_GROUP)
                ngroup++;
        }
        if (pass == 0)
            c->nchain = c->nents;
    }
    c->chain_sorted = malloc((c->nchain ? c->nchain : 1) * sizeof(entry *));
    c->group_sorted = malloc((ngroup ? ngroup : 1) * sizeof(entry *));
    if (!c->chain_sorted || !c->group_sorted)
        return oom(c);
    for (size_t i = 0; i < c->nchain; i++)
        c->chain_sorted[i] = &c->ents[i];
    for (size_t i = 0; i < ngroup; i++)
        c->group_sorted[i] = &c->ents[c->nchain + i];
    qsort(c->chain_sorted, c->nchain, sizeof(entry *), cmp_entry);
    qsort(c->group_sorted, ngroup, sizeof(entry *), cmp_entry);
    for (size_t i = 0; i < ngroup;) {
        size_t j = i;
        while (j < ngroup && c->group_sorted[j]->group == c->group_sorted[i]->group)
            j++;
        c->groups[c->group_sorted[i]->group].first = i;
        c->groups[c->group_sorted[i]->group].count = j - i;
        i = j;
    }
    int skype;
    if (resolve(c, c->chain_sorted, c->nchain, c->blocked, NULL, &skype) != 0)
        return -1;
    c->skype_exception = skype == 1;
    return 0;
}

/* --- the document --------------------------------------------------------- */

static cJSON *string_array(const strv *s)
{
    cJSON *a = cJSON_CreateArray();
    if (!a)
        return NULL;
    for (size_t i = 0; i < s->n; i++) {
        cJSON *it = cJSON_CreateString(s->v[i]);
        if (!it) {
            cJSON_Delete(a);
            return NULL;
        }
        cJSON_AddItemToArray(a, it);
    }
    return a;
}

static bool add_array(cJSON *obj, const char *key, const strv *s)
{
    cJSON *a = string_array(s);
    if (!a)
        return false;
    cJSON_AddItemToObject(obj, key, a);
    return true;
}

static bool add_bool(cJSON *obj, const char *key, bool v)
{
    return cJSON_AddBoolToObject(obj, key, v) != NULL;
}

static cJSON *build_defaults(ctx *c)
{
    int who;
    bool cert = (who = CHAIN_SETTER(c, has_require_certificate)) < 0
                    ? true
                    : c->chain[who].s->require_certificate;
    bool exec = (who = CHAIN_SETTER(c, has_block_executables)) < 0
                    ? true
                    : c->chain[who].s->block_executables;
    cJSON *d = cJSON_CreateObject();
    if (!d || !add_array(d, "use_lists", &c->use_lists))
        goto oom;
    for (int k = 0; k < NKINDS; k++)
        if (!add_array(d, kind_field[k], &c->blocked[k]))
            goto oom;
    if (!add_bool(d, "block_executables", exec) || !add_bool(d, "require_certificate", cert) ||
        !add_bool(d, "skype_exception", c->skype_exception))
        goto oom;
    return d;
oom:
    cJSON_Delete(d);
    oom(c);
    return NULL;
}

static cJSON *build_group(ctx *c, const ginfo *gi)
{
    strv gblock[NKINDS] = {{0}}, gallow[NKINDS] = {{0}}, eff[NKINDS] = {{0}};
    cJSON *g = cJSON_CreateObject();
    bool ok = false;
    int skype = -1;
    if (!g || !cJSON_AddStringToObject(g, "name", gi->g->name) ||
        !add_array(g, "sources", &gi->sources)) {
        oom(c);
        goto done;
    }
    if (gi->count) {
        if (resolve(c, c->group_sorted + gi->first, gi->count, gblock, gallow, &skype) != 0)
            goto done;
        for (int k = 0; k < NKINDS; k++) {
            if (merge(&c->blocked[k], &gblock[k], &gallow[k], &eff[k]) != 0) {
                oom(c);
                goto done;
            }
            if (!strv_eq(&eff[k], &c->blocked[k]) && !add_array(g, kind_field[k], &eff[k])) {
                oom(c);
                goto done;
            }
        }
        if (skype >= 0 && (skype == 1) != c->skype_exception &&
            !add_bool(g, "skype_exception", skype == 1)) {
            oom(c);
            goto done;
        }
    }
    ok = true;
done:
    for (int k = 0; k < NKINDS; k++) {
        strv_free(&gblock[k]);
        strv_free(&gallow[k]);
        strv_free(&eff[k]);
    }
    if (!ok) {
        cJSON_Delete(g);
        return NULL;
    }
    return g;
}

/* --- the firewall part (docs/firewall.md) --------------------------------- */

/* One entry of firewall.allow before it is written. */
typedef struct fw_allow {
    const struct model_open_port *op;
    strv devices; /* normalized, sorted, unique */
} fw_allow;

static int cmp_allow(const void *a, const void *b)
{
    const struct model_open_port *x = ((const fw_allow *)a)->op, *y = ((const fw_allow *)b)->op;
    if (x->port != y->port)
        return x->port < y->port ? -1 : 1;
    if (port_last(x) != port_last(y))
        return port_last(x) < port_last(y) ? -1 : 1;
    return strcmp(x->proto, y->proto);
}

/* The prefixes v (checked already) in the node's spelling into out,
 * sorted, each once; the strings live in the compile's pool. */
static int norm_prefixes(ctx *c, char *const *v, size_t n, strv *out)
{
    char norm[64], msg[COMPILER_ERR_MAX];
    for (size_t i = 0; i < n; i++) {
        if (prefix_norm(v[i] ? v[i] : "", norm, msg, sizeof(msg)) != 0)
            return fail(c->err, c->errlen, "%s", msg);
        const char *p = pool_strndup(&c->mem, norm, strlen(norm));
        if (!p || strv_push(out, p) != 0)
            return oom(c);
    }
    strv_sort_unique(out);
    return 0;
}

/* The office's "firewall": its LAN prefixes and the firewall settings of
 * its chain, each from the most specific scope that sets it. */
static cJSON *build_firewall(ctx *c)
{
    const model_office *o = c->office;
    strv lan = {0}, web_devices = {0}, dns = {0};
    fw_allow *allow = NULL;
    size_t nallow = 0;
    cJSON *fw = cJSON_CreateObject(), *arr = NULL, *obj = NULL;
    bool ok = false;
    char lb[256], msg[COMPILER_ERR_MAX], norm[64];
    int who;

    if (!fw)
        goto oom;
    for (size_t i = 0; i < o->nlan; i++) {
        if (prefix_norm(o->lan_prefixes && o->lan_prefixes[i] ? o->lan_prefixes[i] : "", norm, msg,
                        sizeof(msg)) != 0) {
            fail(c->err, c->errlen, "%s: lan_prefixes: %s",
                 obj_label(lb, sizeof(lb), "office", o->id, o->name), msg);
            goto done;
        }
        const char *p = pool_strndup(&c->mem, norm, strlen(norm));
        if (!p || strv_push(&lan, p) != 0)
            goto oom;
    }
    strv_sort_unique(&lan);
    if (!add_array(fw, "lan", &lan))
        goto oom;

    who = CHAIN_SETTER(c, has_web_mode);
    const char *mode = who < 0 ? "transparent" : c->chain[who].s->web_mode;
    if (!cJSON_AddStringToObject(fw, "web", mode))
        goto oom;
    /* The proxy hosts matter only when the proxy runs elsewhere; in
     * transparent mode the node's own proxy is the only web client
     * upstream (and the node refuses web_devices there). */
    if (strcmp(mode, "proxy") == 0 && (who = CHAIN_SETTER(c, has_web_devices)) >= 0 &&
        norm_prefixes(c, c->chain[who].s->web_devices, c->chain[who].s->nweb_devices,
                      &web_devices) != 0)
        goto done;
    if (!add_array(fw, "web_devices", &web_devices))
        goto oom;

    if ((who = CHAIN_SETTER(c, has_open_ports)) >= 0) {
        const model_settings *s = c->chain[who].s;
        if (!(allow = calloc(s->nopen_ports ? s->nopen_ports : 1, sizeof(*allow))))
            goto oom;
        for (; nallow < s->nopen_ports; nallow++) {
            allow[nallow].op = &s->open_ports[nallow];
            if (norm_prefixes(c, s->open_ports[nallow].devices, s->open_ports[nallow].ndevices,
                              &allow[nallow].devices) != 0) {
                nallow++;
                goto done;
            }
        }
        qsort(allow, nallow, sizeof(*allow), cmp_allow);
    }
    if (!(arr = cJSON_AddArrayToObject(fw, "allow")))
        goto oom;
    for (size_t i = 0; i < nallow; i++) {
        char pt[16], name[32];
        cJSON *ports;
        port_text(allow[i].op, pt, sizeof(pt));
        snprintf(name, sizeof(name), "port-%s-%s", pt, allow[i].op->proto);
        if (!(obj = cJSON_CreateObject()))
            goto oom;
        cJSON_AddItemToArray(arr, obj);
        if (!cJSON_AddStringToObject(obj, "name", name) ||
            !add_array(obj, "devices", &allow[i].devices) ||
            !cJSON_AddStringToObject(obj, "proto", allow[i].op->proto) ||
            !(ports = cJSON_AddArrayToObject(obj, "ports")) ||
            !cJSON_AddItemToArray(ports, cJSON_CreateString(pt)))
            goto oom;
    }

    if ((who = CHAIN_SETTER(c, has_dns_resolvers)) < 0) {
        /* Unset everywhere: LAN DNS may go to any resolver. */
        if (!cJSON_AddNullToObject(fw, "dns"))
            goto oom;
    } else {
        const model_settings *s = c->chain[who].s;
        for (size_t i = 0; i < s->ndns_resolvers; i++) {
            if (address_norm(s->dns_resolvers[i], norm, msg, sizeof(msg)) != 0) {
                fail(c->err, c->errlen, "dns_resolvers: %s", msg);
                goto done;
            }
            const char *p = pool_strndup(&c->mem, norm, strlen(norm));
            if (!p || strv_push(&dns, p) != 0)
                goto oom;
        }
        strv_sort_unique(&dns);
        if (!add_array(fw, "dns", &dns))
            goto oom;
    }

    bool block = (who = CHAIN_SETTER(c, has_block_high_ports)) < 0
                     ? true
                     : c->chain[who].s->block_high_ports;
    unsigned from = (who = CHAIN_SETTER(c, has_high_port_threshold)) < 0
                        ? BUILTIN_HIGH_PORTS
                        : c->chain[who].s->high_port_threshold;
    if (!(obj = cJSON_AddObjectToObject(fw, "high_ports")) || !add_bool(obj, "block", block) ||
        !cJSON_AddNumberToObject(obj, "from", from))
        goto oom;
    unsigned per_minute = (who = CHAIN_SETTER(c, has_log_drops_per_minute)) < 0
                              ? 0
                              : c->chain[who].s->log_drops_per_minute;
    if (per_minute == 0 ? !cJSON_AddNullToObject(fw, "log_drops")
                        : (!(obj = cJSON_AddObjectToObject(fw, "log_drops")) ||
                           !cJSON_AddNumberToObject(obj, "per_minute", per_minute)))
        goto oom;
    ok = true;
    goto done;
oom:
    oom(c);
done:
    for (size_t i = 0; i < nallow; i++)
        strv_free(&allow[i].devices);
    free(allow);
    strv_free(&lan);
    strv_free(&web_devices);
    strv_free(&dns);
    if (!ok) {
        cJSON_Delete(fw);
        return NULL;
    }
    return fw;
}

static void sha256_hex(const char *data, size_t len, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)data, len, md);
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Compiles office o; on success *json_out and sha (may be NULL). */
static int compile_office(const model *m, const model_office *o, char **json_out, char *sha,
                          char *err, size_t errlen)
{
    ctx c = {.m = m, .office = o, .err = err, .errlen = errlen};
    cJSON *root = NULL;
    char *json = NULL;
    int rc = -1;
    char lb[256];

    *json_out = NULL;
    if (m->revision < 1 || m->revision > MAX_VERSION) {
        fail(err, errlen, "model: revision %lld is not a policy version (1 to 2^53-1)",
             (long long)m->revision);
        goto done;
    }
    c.region = find_region(m, o->region_id);
    if (!c.region) {
        fail(err, errlen, "%s: region %lld does not exist",
             obj_label(lb, sizeof(lb), "office", o->id, o->name), (long long)o->region_id);
        goto done;
    }
    c.chain[0] = (scope_ref){&m->global, 0, "global", "global"};
    c.chain[1] = (scope_ref){&c.region->settings, c.region->id, c.region->name, "region"};
    c.chain[2] = (scope_ref){&o->settings, o->id, o->name, "office"};
    for (int i = 0; i < 3; i++)
        if (check_settings(&c, &c.chain[i]) != 0)
            goto done;
    if (build_use_lists(&c) != 0 || collect_groups(&c) != 0 || collect_rules(&c) != 0)
        goto done;

    root = cJSON_CreateObject();
    char ver[32];
    snprintf(ver, sizeof(ver), "%lld", (long long)m->revision);
    cJSON *item;
    if (!root || !cJSON_AddStringToObject(root, "schema", PC_POLICY_SCHEMA) ||
        !cJSON_AddRawToObject(root, "version", ver)) {
        oom(&c);
        goto done;
    }
    if (!(item = build_proxy(&c)))
        goto done;
    cJSON_AddItemToObject(root, "proxy", item);
    if (!(item = build_lists(&c)))
        goto done;
    cJSON_AddItemToObject(root, "lists", item);
    if (!(item = build_defaults(&c)))
        goto done;
    cJSON_AddItemToObject(root, "defaults", item);
    cJSON *groups = cJSON_AddArrayToObject(root, "groups");
    if (!groups) {
        oom(&c);
        goto done;
    }
    for (size_t i = 0; i < c.ngroups; i++) {
        if (!(item = build_group(&c, &c.groups[i])))
            goto done;
        cJSON_AddItemToArray(groups, item);
    }
    if (!(item = build_firewall(&c)))
        goto done;
    cJSON_AddItemToObject(root, "firewall", item);
    json = cJSON_PrintUnformatted(root);
    if (!json) {
        oom(&c);
        goto done;
    }

    /* The node's parser has the last word: a list with a bad entry is only
     * found here, and a compiler bug must not reach a node. */
    size_t len = strlen(json);
    pc_policy *p = NULL;
    char perr[COMPILER_ERR_MAX];
    if (pc_policy_parse(json, len, &p, perr, sizeof(perr)) != 0) {
        for (size_t i = 0; i < c.use_lists.n; i++) {
            char path[128];
            list_path(c.use_lists.v[i], path, sizeof(path));
            size_t pl = strlen(path);
            if (strncmp(perr, path, pl) == 0 && strchr(".[:", perr[pl])) {
                char qb[200];
                fail(err, errlen, "list '%s': %s", q(qb, sizeof(qb), c.use_lists.v[i]), perr);
                goto done;
            }
        }
        fail(err, errlen, "%s: the node's parser refuses the compiled document: %s",
             obj_label(lb, sizeof(lb), "office", o->id, o->name), perr);
        goto done;
    }
    pc_policy_unref(p);
    if (sha)
        sha256_hex(json, len, sha);
    *json_out = json;
    json = NULL;
    rc = 0;
done:
    free(json);
    cJSON_Delete(root);
    ctx_free(&c);
    return rc;
}

int compiler_office_document(const model *m, int64_t office_id, char **json_out,
                             char sha256_hex_out[65], char *err, size_t errlen)
{
    if (json_out)
        *json_out = NULL;
    if (!m || !json_out || !sha256_hex_out)
        return fail(err, errlen, "no model");
    sha256_hex_out[0] = '\0';
    const model_office *o = find_office(m, office_id);
    if (!o)
        return fail(err, errlen, "no office %lld", (long long)office_id);
    return compile_office(m, o, json_out, sha256_hex_out, err, errlen);
}

/* --- explain -------------------------------------------------------------- */

const char *compiler_verdict_name(compiler_verdict v)
{
    switch (v) {
    case COMPILER_ALLOW: return "allow";
    case COMPILER_BLOCK: return "block";
    case COMPILER_EXCEPTION: return "exception";
    case COMPILER_REFUSED: return "refused";
    }
    return "?";
}

const char *compiler_step_scope_name(compiler_step_scope s)
{
    switch (s) {
    case COMPILER_STEP_BUILTIN: return "builtin";
    case COMPILER_STEP_GLOBAL: return "global";
    case COMPILER_STEP_REGION: return "region";
    case COMPILER_STEP_OFFICE: return "office";
    case COMPILER_STEP_GROUP: return "group";
    }
    return "?";
}

/* A scope of the explained connection's chain. */
typedef struct xscope {
    compiler_step_scope scope;
    int64_t id;
    const char *name;
    const model_settings *s; /* NULL for the group and the built-in */
    bool skype_list;         /* built-in: the model has a list "skype" */
    char label[160];         /* "region EMEA" */
} xscope;

/* A step being collected, with the keys that order the chain. */
typedef struct xstep {
    compiler_step st;
    int order; /* which input: settings, group, Skype, then rules by kind */
} xstep;

typedef struct xbuild {
    xstep *v;
    size_t n, cap;
    bool oom;
} xbuild;

__attribute__((format(printf, 8, 9))) static void
step_add(xbuild *b, const xscope *sc, int64_t rule_id, const char *input, int order, bool in_force,
         const char *overridden_by, const char *fmt, ...)
{
    if (b->oom)
        return;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        xstep *v = realloc(b->v, cap * sizeof(*v));
        if (!v) {
            b->oom = true;
            return;
        }
        b->v = v;
        b->cap = cap;
    }
    char body[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    pc_buf t = {0};
    pc_buf_printf(&t, "%s: %s", sc->label, body);
    if (!in_force && overridden_by)
        pc_buf_printf(&t, " (overridden by %s)", overridden_by);
    xstep *x = &b->v[b->n];
    *x = (xstep){0};
    x->st.scope = sc->scope;
    x->st.scope_id = sc->id;
    x->st.scope_name = xstrdup(sc->scope == COMPILER_STEP_BUILTIN ? "built-in"
                               : sc->name                         ? sc->name
                                                                  : "");
    x->st.rule_id = rule_id;
    x->st.input = input;
    x->st.in_force = in_force;
    x->st.text = pc_buf_take(&t);
    x->order = order;
    if (!x->st.scope_name || !x->st.text) {
        free(x->st.scope_name);
        free(x->st.text);
        b->oom = true;
        return;
    }
    b->n++;
}

static int cmp_xstep(const void *a, const void *b)
{
    const xstep *x = a, *y = b;
    if (x->st.scope != y->st.scope)
        return x->st.scope < y->st.scope ? -1 : 1;
    if (x->order != y->order)
        return x->order < y->order ? -1 : 1;
    if (x->st.rule_id != y->st.rule_id)
        return x->st.rule_id < y->st.rule_id ? -1 : 1;
    return 0;
}

static void ports_text(pc_buf *b, const model_settings *s)
{
    size_t n = s ? s->nports : sizeof(builtin_ports) / sizeof(builtin_ports[0]);
    port_proto *pp = calloc(n ? n : 1, sizeof(*pp));
    if (!pp) {
        b->oom = true;
        return;
    }
    for (size_t i = 0; i < n; i++)
        pp[i] = s ? (port_proto){s->ports[i], s->port_protos[i]}
                  : (port_proto){builtin_ports[i].port, builtin_ports[i].proto};
    qsort(pp, n, sizeof(*pp), cmp_port);
    pc_buf_printf(b, "ports ");
    for (size_t i = 0; i < n; i++)
        pc_buf_printf(b, "%s%u %s", i ? ", " : "", (unsigned)pp[i].port, pp[i].proto);
    if (n == 0)
        pc_buf_printf(b, "(none)");
    free(pp);
}

static const char *port_proto_in(const model_settings *s, uint16_t port)
{
    size_t n = s ? s->nports : sizeof(builtin_ports) / sizeof(builtin_ports[0]);
    for (size_t i = 0; i < n; i++) {
        uint16_t p = s ? s->ports[i] : builtin_ports[i].port;
        if (p == port)
            return s ? s->port_protos[i] : builtin_ports[i].proto;
    }
    return NULL;
}

/* Settings steps: each scope that sets the input, the last one in force;
 * none, the built-in value. */
static void settings_steps(xbuild *b, const xscope *sc, const xscope *builtin, uint16_t port,
                           bool tls)
{
    enum { S_PORTS, S_LISTS, S_CERT };
    for (int what = S_PORTS; what <= S_CERT; what++) {
        if (what == S_CERT && !tls)
            continue;
        int last = -1;
        for (int i = 0; i < 3; i++) {
            const model_settings *s = sc[i].s;
            bool set = what == S_PORTS   ? s->has_ports
                       : what == S_LISTS ? s->has_use_lists
                                         : s->has_require_certificate;
            if (set)
                last = i;
        }
        for (int i = -1; i < 3; i++) {
            const model_settings *s = i < 0 ? NULL : sc[i].s;
            if (i < 0 && last >= 0)
                continue;
            if (s && !(what == S_PORTS   ? s->has_ports
                       : what == S_LISTS ? s->has_use_lists
                                         : s->has_require_certificate))
                continue;
            const xscope *at = i < 0 ? builtin : &sc[i];
            bool in_force = i == last;
            const char *over = last >= 0 ? sc[last].label : NULL;
            pc_buf t = {0};
            if (what == S_PORTS) {
                const char *proto = port_proto_in(s, port);
                if (proto)
                    pc_buf_printf(&t, "serves port %u as %s (", (unsigned)port, proto);
                else
                    pc_buf_printf(&t, "does not serve port %u (", (unsigned)port);
                ports_text(&t, s);
                pc_buf_printf(&t, "%s)", s ? "" : "; no scope sets ports");
            } else if (what == S_LISTS) {
                pc_buf_printf(&t, "use_lists ");
                if (s) {
                    for (size_t k = 0; k < s->nuse_lists; k++)
                        pc_buf_printf(&t, "%s%s", k ? ", " : "", s->use_lists[k]);
                    if (s->nuse_lists == 0)
                        pc_buf_printf(&t, "(none)");
                } else {
                    pc_buf_printf(&t, "%s (no scope sets use_lists)",
                              builtin->skype_list ? "skype" : "(none)");
                }
            } else {
                pc_buf_printf(&t, "require_certificate %s%s",
                          (s ? s->require_certificate : true) ? "true" : "false",
                          s ? "" : " (no scope sets it)");
            }
            char *txt = pc_buf_take(&t);
            if (!txt) {
                b->oom = true;
                return;
            }
            static const char *const inputs[] = {"ports", "use_lists", "require_certificate"};
            step_add(b, at, 0, inputs[what], what, in_force, over, "%s", txt);
            free(txt);
        }
    }
}

/* The host as the node compares it: lower case, no trailing dot, no
 * brackets around an IPv6 literal. */
static void host_norm(const char *host, char *out, size_t n)
{
    size_t len = strlen(host), j = 0;
    if (len && host[len - 1] == '.')
        len--;
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }
    for (size_t i = 0; i < len && j + 1 < n; i++)
        out[j++] = lower(host[i]);
    out[j] = '\0';
}

static bool domain_matches(const char *host, const char *rule)
{
    size_t h = strlen(host), r = strlen(rule);
    if (h < r || strcmp(host + h - r, rule) != 0)
        return false;
    return h == r || host[h - r - 1] == '.';
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = lower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Whether the path ends with the suffix the way the node looks: decoded
 * once, any case, and also without ";params" or trailing slashes. */
static bool suffix_matches(const char *path, const char *suffix)
{
    size_t n = strlen(path), j = 0;
    char *d = malloc(n + 1);
    if (!d)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (path[i] == '%' && i + 2 < n && hexval(path[i + 1]) >= 0 && hexval(path[i + 2]) >= 0) {
            d[j++] = lower((char)(hexval(path[i + 1]) * 16 + hexval(path[i + 2])));
            i += 2;
        } else {
            d[j++] = lower(path[i]);
        }
    }
    d[j] = '\0';
    size_t views[3] = {strlen(d), 0, 0}, nv = 1;
    char *seg = strrchr(d, '/');
    char *semi = strchr(seg ? seg : d, ';');
    if (semi)
        views[nv++] = (size_t)(semi - d);
    size_t t = views[0];
    while (t > 0 && d[t - 1] == '/')
        t--;
    if (t != views[0])
        views[nv++] = t;
    size_t sl = strlen(suffix);
    bool hit = false;
    for (size_t i = 0; i < nv && !hit; i++)
        hit = views[i] >= sl && memcmp(d + views[i] - sl, suffix, sl) == 0;
    free(d);
    return hit;
}

static bool ip_literal(const char *host, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        return true;
    }
    return false;
}

typedef struct xrule {
    const model_rule *r;
    const xscope *sc;
    int level;
    char value[MAX_SUFFIX + 1];
} xrule;

static int cmp_xrule(const void *a, const void *b)
{
    const xrule *x = a, *y = b;
    if (x->r->kind != y->r->kind)
        return x->r->kind < y->r->kind ? -1 : 1;
    int r = strcmp(x->value, y->value);
    if (r)
        return r;
    if (x->level != y->level)
        return x->level < y->level ? -1 : 1;
    return x->r->id < y->r->id ? -1 : x->r->id > y->r->id;
}

/* Rule steps: the Skype rules of the chain, and the rules whose value
 * matches the destination; per (kind, value), the most specific in force. */
static void rule_steps(xbuild *b, const model *m, const xscope *sc, size_t nsc, const char *host,
                       const char *path)
{
    char h[300] = "";
    struct sockaddr_storage ss;
    bool is_ip = false;
    if (host && *host) {
        host_norm(host, h, sizeof(h));
        is_ip = ip_literal(h, &ss);
    }
    xrule *v = calloc(m->nrules ? m->nrules : 1, sizeof(*v));
    if (!v) {
        b->oom = true;
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < m->nrules; i++) {
        const model_rule *r = &m->rules[i];
        int level = -1;
        for (size_t k = 0; k < nsc; k++) {
            bool match = false;
            switch (sc[k].scope) {
            case COMPILER_STEP_GLOBAL: match = r->scope == MODEL_SCOPE_GLOBAL; break;
            case COMPILER_STEP_REGION:
                match = r->scope == MODEL_SCOPE_REGION && r->scope_id == sc[k].id;
                break;
            case COMPILER_STEP_OFFICE:
                match = r->scope == MODEL_SCOPE_OFFICE && r->scope_id == sc[k].id;
                break;
            case COMPILER_STEP_GROUP:
                match = r->scope == MODEL_SCOPE_GROUP && r->scope_id == sc[k].id;
                break;
            case COMPILER_STEP_BUILTIN: break;
            }
            if (match)
                level = (int)k;
        }
        if (level < 0)
            continue;
        xrule *x = &v[n];
        x->value[0] = '\0';
        x->r = r;
        x->sc = &sc[level];
        x->level = level;
        char msg[COMPILER_ERR_MAX];
        bool hit = false;
        switch (r->kind) {
        case MODEL_RULE_SKYPE: hit = true; break;
        case MODEL_RULE_DOMAIN:
            hit = h[0] && !is_ip && domain_norm(r->value, x->value, msg, sizeof(msg)) == 0 &&
                  domain_matches(h, x->value);
            break;
        case MODEL_RULE_PREFIX: {
            pc_cidr c;
            hit = is_ip && pc_cidr_parse(r->value, &c, msg, sizeof(msg)) == 0 &&
                  pc_cidr_contains(&c, (const struct sockaddr *)&ss);
            if (hit)
                pc_cidr_format(&c, x->value, sizeof(x->value));
            break;
        }
        case MODEL_RULE_URL_SUFFIX:
            hit = path && suffix_norm(r->value, x->value, msg, sizeof(msg)) == 0 &&
                  suffix_matches(path, x->value);
            break;
        }
        if (hit)
            n++;
    }
    qsort(v, n, sizeof(*v), cmp_xrule);
    static const char *const inputs[] = {"skype_exception", "blocked_domains", "blocked_prefixes",
                                         "blocked_url_suffixes"};
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && v[j].r->kind == v[i].r->kind && strcmp(v[j].value, v[i].value) == 0)
            j++;
        const xrule *w = &v[j - 1];
        char over[200];
        snprintf(over, sizeof(over), "%s rule %lld", w->sc->label, (long long)w->r->id);
        for (size_t k = i; k < j; k++) {
            const xrule *x = &v[k];
            bool in_force = x->level == w->level;
            int kind = (int)x->r->kind;
            if (kind == MODEL_RULE_SKYPE)
                step_add(b, x->sc, x->r->id, inputs[kind], 2, in_force, over,
                         "rule %lld %s Skype (skype_exception %s)", (long long)x->r->id,
                         x->r->allow ? "allows" : "blocks", x->r->allow ? "true" : "false");
            else
                step_add(b, x->sc, x->r->id, inputs[kind], 2 + kind, in_force, over,
                         "rule %lld %s %s %s", (long long)x->r->id,
                         x->r->allow ? "allows" : "blocks", kind_noun[kind], x->value);
        }
        i = j;
    }
    free(v);
}

static bool parse_source(const char *ip, struct sockaddr_storage *ss)
{
    return ip && ip_literal(ip, ss);
}

void compiler_explanation_free(compiler_explanation *e)
{
    if (!e)
        return;
    free(e->office);
    free(e->source);
    free(e->group);
    free(e->group_source);
    free(e->host);
    free(e->path);
    free(e->list);
    free(e->rule);
    free(e->reason);
    for (size_t i = 0; i < e->nsteps; i++) {
        free(e->steps[i].scope_name);
        free(e->steps[i].text);
    }
    free(e->steps);
    *e = (compiler_explanation){0};
}

/* A list's category from its JSON, or NULL. */
static char *list_category(const model *m, const char *name)
{
    const model_list *l = name ? find_list(m, name) : NULL;
    cJSON *j = l && l->json ? cJSON_Parse(l->json) : NULL;
    const cJSON *cat = cJSON_GetObjectItemCaseSensitive(j, "category");
    char *s = cJSON_IsString(cat) ? xstrdup(cat->valuestring) : NULL;
    cJSON_Delete(j);
    return s;
}

static void reason_text(pc_buf *r, const compiler_explanation *e, const char *match_what,
                        const char *match_subject, const char *category)
{
    const char *who = strcmp(e->group, "defaults") == 0 ? "the defaults" : NULL;
    char gb[120];
    if (!who) {
        snprintf(gb, sizeof(gb), "group %s", e->group);
        who = gb;
    }
    switch (e->verdict) {
    case COMPILER_REFUSED:
        pc_buf_printf(r, "refused: office %s's proxy does not serve port %u", e->office,
                  (unsigned)e->port);
        return;
    case COMPILER_BLOCK:
        if (strcmp(e->list, "group") == 0 || strcmp(e->list, "defaults") == 0) {
            const char *field = strcmp(match_subject, "path") == 0 ? "blocked_url_suffixes"
                                : strchr(e->rule, '/')             ? "blocked_prefixes"
                                                                   : "blocked_domains";
            pc_buf_printf(r, "blocked: %s %s matches %s in %s %s", match_subject, match_what, e->rule,
                      strcmp(e->list, "group") == 0 ? "the group's own" : "the defaults'", field);
            if (e->skype_exception)
                pc_buf_printf(r, "; the Skype exception does not lift own rules");
        } else {
            pc_buf_printf(r, "blocked: %s %s matches %s in list %s", match_subject, match_what, e->rule,
                      e->list);
            if (category && strcmp(category, "skype") == 0)
                pc_buf_printf(r, " (category skype; %s has no Skype exception)", who);
            else
                pc_buf_printf(r, " (category %s, which the Skype exception never lifts)",
                          category ? category : "?");
        }
        return;
    case COMPILER_EXCEPTION:
        pc_buf_printf(r,
                  "allowed by the Skype exception of %s: %s %s matches %s in list %s, which the "
                  "exception lifts (the node records an exception event)",
                  who, match_subject, match_what, e->rule, e->list);
        break;
    case COMPILER_ALLOW:
        if (e->host && e->path)
            pc_buf_printf(r, "allowed: no rule of %s matches host %s or path %s", who, e->host,
                      e->path);
        else if (e->host)
            pc_buf_printf(r, "allowed: no rule of %s matches host %s", who, e->host);
        else
            pc_buf_printf(r, "allowed: port %u is served", (unsigned)e->port);
        break;
    }
    if (e->certificate) {
        if (strcmp(e->certificate, "required") == 0)
            pc_buf_printf(r, "; on port %u the server must present a certificate that verifies",
                      (unsigned)e->port);
        else if (strcmp(e->certificate, "exempt") == 0)
            pc_buf_printf(r, "; the Skype exception lifts the certificate requirement on port %u",
                      (unsigned)e->port);
        else
            pc_buf_printf(r, "; certificates are not required");
    }
}

int compiler_explain_path(const model *m, int64_t office_id, const char *source_ip,
                          const char *host, uint16_t port, const char *path,
                          compiler_explanation *out, char *err, size_t errlen)
{
    char *json = NULL, qb[200];
    pc_policy *p = NULL;
    xbuild b = {0};
    int rc = -1;

    if (!out)
        return fail(err, errlen, "no explanation to fill");
    *out = (compiler_explanation){0};
    if (!m)
        return fail(err, errlen, "no model");
    if (host && !*host)
        host = NULL;
    if (path && !*path)
        path = NULL;
    const model_office *o = find_office(m, office_id);
    if (!o)
        return fail(err, errlen, "no office %lld", (long long)office_id);
    struct sockaddr_storage src;
    if (!parse_source(source_ip, &src))
        return fail(err, errlen, "source '%s' is not an IP address", q(qb, sizeof(qb), source_ip));
    if (compile_office(m, o, &json, out->sha256, err, errlen) != 0)
        return -1;
    if (pc_policy_parse(json, strlen(json), &p, err, errlen) != 0)
        goto done;

    const model_region *region = find_region(m, o->region_id);
    out->office_id = o->id;
    out->version = m->revision;
    out->port = port;
    out->office = xstrdup(o->name ? o->name : "");
    out->source = xstrdup(source_ip);
    out->host = host ? xstrdup(host) : NULL;
    out->path = path ? xstrdup(path) : NULL;
    if (!out->office || !out->source || (host && !out->host) || (path && !out->path))
        goto oom;
    for (size_t i = 0; i < o->nlan; i++) {
        pc_cidr c;
        if (o->lan_prefixes[i] && pc_cidr_parse(o->lan_prefixes[i], &c, NULL, 0) == 0 &&
            pc_cidr_contains(&c, (const struct sockaddr *)&src))
            out->source_in_office_lan = true;
    }

    /* The verdict: the node's own answers on the compiled document. */
    const pc_group *g = pc_policy_group_for(p, (const struct sockaddr *)&src);
    out->group = xstrdup(pc_group_name(g));
    if (!out->group)
        goto oom;
    const model_group *mg = NULL;
    if (strcmp(out->group, "defaults") != 0) {
        for (size_t i = 0; i < m->ngroups && !mg; i++)
            if (group_applies(&m->groups[i], o->id) && m->groups[i].nsources &&
                strcmp(m->groups[i].name, out->group) == 0)
                mg = &m->groups[i];
    }
    int best = -1;
    if (mg) {
        out->group_id = mg->id;
        for (size_t i = 0; i < mg->nsources; i++) {
            pc_cidr c;
            if (pc_cidr_parse(mg->sources[i], &c, NULL, 0) == 0 &&
                pc_cidr_contains(&c, (const struct sockaddr *)&src) && (int)c.bits > best) {
                char buf[64];
                pc_cidr_format(&c, buf, sizeof(buf));
                free(out->group_source);
                out->group_source = xstrdup(buf);
                if (!out->group_source)
                    goto oom;
                best = c.bits;
            }
        }
    }
    out->skype_exception = pc_group_skype_exception(g);
    pc_proto proto = pc_policy_port_proto(p, port);
    out->proto = proto == PC_PROTO_NONE ? NULL : pc_proto_name(proto);
    if (proto == PC_PROTO_TLS) {
        pc_cert_mode cm = pc_group_cert_mode(g);
        out->certificate = cm == PC_CERT_REQUIRED ? "required"
                           : cm == PC_CERT_EXEMPT ? "exempt"
                                                  : "off";
    }
    pc_decision d = {0}, dh = {0}, dp = {0};
    const char *subject = NULL, *what = NULL;
    if (proto == PC_PROTO_NONE) {
        out->verdict = COMPILER_REFUSED;
    } else {
        if (host)
            dh = pc_group_check_host(g, host);
        if (path)
            dp = pc_group_check_path(g, path);
        if (dh.block || (!dp.block && dh.exception)) {
            d = dh;
            subject = "host";
            what = host;
        } else if (dp.block || dp.exception) {
            d = dp;
            subject = "path";
            what = path;
        }
        out->verdict = d.block ? COMPILER_BLOCK : d.exception ? COMPILER_EXCEPTION : COMPILER_ALLOW;
        if (d.list) {
            out->list = xstrdup(d.list);
            out->rule = xstrdup(d.rule);
            if (!out->list || !out->rule)
                goto oom;
        }
    }

    /* The chain: where each input of that verdict came from. */
    xscope sc[4], builtin = {.scope = COMPILER_STEP_BUILTIN, .name = "built-in"};
    size_t nsc = 3;
    snprintf(builtin.label, sizeof(builtin.label), "built-in default");
    builtin.skype_list = find_list(m, "skype") != NULL;
    sc[0] = (xscope){.scope = COMPILER_STEP_GLOBAL, .id = 0, .name = "global", .s = &m->global};
    snprintf(sc[0].label, sizeof(sc[0].label), "global");
    sc[1] = (xscope){.scope = COMPILER_STEP_REGION,
                     .id = region->id,
                     .name = region->name,
                     .s = &region->settings};
    snprintf(sc[1].label, sizeof(sc[1].label), "region %s", q(qb, sizeof(qb), region->name));
    sc[2] =
        (xscope){.scope = COMPILER_STEP_OFFICE, .id = o->id, .name = o->name, .s = &o->settings};
    snprintf(sc[2].label, sizeof(sc[2].label), "office %s", q(qb, sizeof(qb), o->name));
    if (mg) {
        sc[3] = (xscope){.scope = COMPILER_STEP_GROUP, .id = mg->id, .name = mg->name};
        snprintf(sc[3].label, sizeof(sc[3].label), "group %s", q(qb, sizeof(qb), mg->name));
        nsc = 4;
        step_add(&b, &sc[3], 0, "group", 1, true, NULL,
                 "source %s is in %s (the longest matching prefix%s)", out->source,
                 out->group_source ? out->group_source : "?",
                 mg->office_id == 0 ? "; the group applies in every office" : "");
    } else {
        step_add(&b, &sc[2], 0, "group", 1, true, NULL,
                 "source %s is in no group: the defaults apply", out->source);
    }
    settings_steps(&b, sc, &builtin, port, proto == PC_PROTO_TLS);
    rule_steps(&b, m, sc, nsc, host, path);
    bool any_skype = false;
    for (size_t i = 0; i < b.n; i++)
        any_skype = any_skype || strcmp(b.v[i].st.input, "skype_exception") == 0;
    if (!any_skype)
        step_add(&b, &builtin, 0, "skype_exception", 2, true, NULL,
                 "skype_exception false (no rule sets it)");
    if (b.oom)
        goto oom;
    qsort(b.v, b.n, sizeof(*b.v), cmp_xstep);
    out->steps = calloc(b.n ? b.n : 1, sizeof(*out->steps));
    if (!out->steps)
        goto oom;
    for (size_t i = 0; i < b.n; i++)
        out->steps[i] = b.v[i].st;
    out->nsteps = b.n;
    b.n = 0;

    pc_buf r = {0};
    char *category = list_category(m, out->list);
    reason_text(&r, out, what ? what : "", subject ? subject : "", category);
    free(category);
    out->reason = pc_buf_take(&r);
    if (!out->reason)
        goto oom;
    rc = 0;
    goto done;
oom:
    fail(err, errlen, "out of memory");
done:
    for (size_t i = 0; i < b.n; i++) {
        free(b.v[i].st.scope_name);
        free(b.v[i].st.text);
    }
    free(b.v);
    if (rc != 0)
        compiler_explanation_free(out);
    pc_policy_unref(p);
    free(json);
    return rc;
}

int compiler_explain(const model *m, int64_t office_id, const char *source_ip, const char *host,
                     uint16_t port, compiler_explanation *out, char *err, size_t errlen)
{
    return compiler_explain_path(m, office_id, source_ip, host, port, NULL, out, err, errlen);
}

/* --- JSON helpers ---------------------------------------------------------- */

static bool add_int(cJSON *obj, const char *key, int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%lld", (long long)v);
    return cJSON_AddRawToObject(obj, key, buf) != NULL;
}

static bool add_str_or_null(cJSON *obj, const char *key, const char *s)
{
    return (s ? cJSON_AddStringToObject(obj, key, s) : cJSON_AddNullToObject(obj, key)) != NULL;
}

char *compiler_explanation_json(const compiler_explanation *e)
{
    cJSON *o = cJSON_CreateObject(), *chain = NULL;
    char *out = NULL;
    if (!e || !o)
        goto done;
    bool ok = add_int(o, "office_id", e->office_id) && add_str_or_null(o, "office", e->office) &&
              add_int(o, "version", e->version) && add_str_or_null(o, "sha256", e->sha256) &&
              add_str_or_null(o, "source", e->source) &&
              add_bool(o, "source_in_office_lan", e->source_in_office_lan) &&
              add_str_or_null(o, "group", e->group) &&
              (e->group_id ? add_int(o, "group_id", e->group_id)
                           : cJSON_AddNullToObject(o, "group_id") != NULL) &&
              add_str_or_null(o, "group_source", e->group_source) &&
              add_str_or_null(o, "host", e->host) && add_int(o, "port", e->port) &&
              add_str_or_null(o, "path", e->path) && add_str_or_null(o, "proto", e->proto) &&
              add_str_or_null(o, "verdict", compiler_verdict_name(e->verdict)) &&
              add_str_or_null(o, "reason", e->reason);
    if (!ok)
        goto done;
    if (e->list) {
        cJSON *mt = cJSON_AddObjectToObject(o, "match");
        if (!mt || !add_str_or_null(mt, "list", e->list) || !add_str_or_null(mt, "rule", e->rule))
            goto done;
    } else if (!cJSON_AddNullToObject(o, "match")) {
        goto done;
    }
    if (!add_bool(o, "skype_exception", e->skype_exception) ||
        !add_str_or_null(o, "certificate", e->certificate))
        goto done;
    chain = cJSON_AddArrayToObject(o, "chain");
    if (!chain)
        goto done;
    for (size_t i = 0; i < e->nsteps; i++) {
        const compiler_step *s = &e->steps[i];
        cJSON *st = cJSON_CreateObject();
        if (!st)
            goto done;
        cJSON_AddItemToArray(chain, st);
        if (!add_str_or_null(st, "scope", compiler_step_scope_name(s->scope)) ||
            !add_int(st, "scope_id", s->scope_id) || !add_str_or_null(st, "name", s->scope_name) ||
            !(s->rule_id ? add_int(st, "rule_id", s->rule_id)
                         : cJSON_AddNullToObject(st, "rule_id") != NULL) ||
            !add_str_or_null(st, "input", s->input) || !add_bool(st, "in_force", s->in_force) ||
            !add_str_or_null(st, "text", s->text))
            goto done;
    }
    out = cJSON_PrintUnformatted(o);
done:
    cJSON_Delete(o);
    return out;
}

/* --- diff ----------------------------------------------------------------- */

/* A JSONPath string literal body: quotes and backslashes escaped. */
static void path_lit(pc_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\'' || *s == '\\')
            pc_buf_printf(b, "\\%c", *s);
        else
            pc_buf_printf(b, "%c", *s);
    }
}

static char *path_key(const char *base, const char *key)
{
    pc_buf b = {0};
    if (pc_text_is_ident(key)) {
        pc_buf_printf(&b, "%s.%s", base, key);
    } else {
        pc_buf_printf(&b, "%s['", base);
        path_lit(&b, key);
        pc_buf_printf(&b, "']");
    }
    return pc_buf_take(&b);
}

static char *path_named(const char *base, const char *name)
{
    pc_buf b = {0};
    pc_buf_printf(&b, "%s[?(@.name=='", base);
    path_lit(&b, name);
    pc_buf_printf(&b, "')]");
    return pc_buf_take(&b);
}

static bool diff_entry(cJSON *out, const char *path, const char *op, const char *k1,
                       const cJSON *v1, const char *k2, const cJSON *v2)
{
    cJSON *e = cJSON_CreateObject();
    if (!e)
        return false;
    cJSON_AddItemToArray(out, e);
    if (!cJSON_AddStringToObject(e, "path", path) || !cJSON_AddStringToObject(e, "op", op))
        return false;
    if (k1) {
        cJSON *d = cJSON_Duplicate(v1, true);
        if (!d)
            return false;
        cJSON_AddItemToObject(e, k1, d);
    }
    if (k2) {
        cJSON *d = cJSON_Duplicate(v2, true);
        if (!d)
            return false;
        cJSON_AddItemToObject(e, k2, d);
    }
    return true;
}

static bool named_objects(const cJSON *arr)
{
    for (const cJSON *it = arr->child; it; it = it->next)
        if (!cJSON_IsObject(it) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(it, "name")))
            return false;
    return true;
}

static bool scalars(const cJSON *arr)
{
    for (const cJSON *it = arr->child; it; it = it->next)
        if (cJSON_IsArray(it) || cJSON_IsObject(it))
            return false;
    return true;
}

static const cJSON *by_name(const cJSON *arr, const char *name)
{
    for (const cJSON *it = arr->child; it; it = it->next)
        if (strcmp(cJSON_GetObjectItemCaseSensitive(it, "name")->valuestring, name) == 0)
            return it;
    return NULL;
}

typedef struct keyed {
    const char *key; /* a string's value, or the element printed */
    bool printed;    /* key is owned (printed); strings sort before the rest */
    const cJSON *item;
} keyed;

static int cmp_keyed(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    if (x->printed != y->printed)
        return x->printed ? 1 : -1;
    return strcmp(x->key, y->key);
}

static void keyed_free(keyed *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        if (v[i].printed)
            free((char *)v[i].key);
    free(v);
}

/* The elements of an array of scalars, sorted by a key that is equal
 * exactly when the elements are. */
static keyed *keyed_array(const cJSON *arr, size_t *n)
{
    *n = (size_t)cJSON_GetArraySize(arr);
    keyed *v = calloc(*n ? *n : 1, sizeof(*v));
    if (!v)
        return NULL;
    size_t i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        v[i].item = it;
        if (cJSON_IsString(it)) {
            v[i].key = it->valuestring;
            continue;
        }
        v[i].printed = true;
        if (!(v[i].key = cJSON_PrintUnformatted(it))) {
            keyed_free(v, i);
            return NULL;
        }
    }
    qsort(v, *n, sizeof(*v), cmp_keyed);
    return v;
}

/* Arrays of scalars compared as sets: one "elements" entry. */
static bool diff_elements(cJSON *out, const char *path, const cJSON *a, const cJSON *b)
{
    size_t na = 0, nb = 0;
    keyed *ka = keyed_array(a, &na), *kb = keyed_array(b, &nb);
    cJSON *added = cJSON_CreateArray(), *removed = cJSON_CreateArray();
    bool ok = false;
    if (!ka || !kb || !added || !removed)
        goto done;
    size_t i = 0, j = 0;
    while (i < na || j < nb) {
        int r = i >= na ? 1 : j >= nb ? -1 : cmp_keyed(&ka[i], &kb[j]);
        cJSON *d = NULL;
        if (r < 0) {
            if (!i || cmp_keyed(&ka[i], &ka[i - 1]) != 0) {
                if (!(d = cJSON_Duplicate(ka[i].item, true)))
                    goto done;
                cJSON_AddItemToArray(removed, d);
            }
            i++;
        } else if (r > 0) {
            if (!j || cmp_keyed(&kb[j], &kb[j - 1]) != 0) {
                if (!(d = cJSON_Duplicate(kb[j].item, true)))
                    goto done;
                cJSON_AddItemToArray(added, d);
            }
            j++;
        } else {
            i++;
            j++;
        }
    }
    if (cJSON_GetArraySize(added) || cJSON_GetArraySize(removed)) {
        cJSON *e = cJSON_CreateObject();
        if (!e)
            goto done;
        cJSON_AddItemToArray(out, e);
        if (!cJSON_AddStringToObject(e, "path", path) ||
            !cJSON_AddStringToObject(e, "op", "elements"))
            goto done;
        cJSON_AddItemToObject(e, "added", added);
        cJSON_AddItemToObject(e, "removed", removed);
        added = removed = NULL;
    } else if (!cJSON_Compare(a, b, true)) {
        /* Same elements, other order or count: still a change. */
        if (!diff_entry(out, path, "changed", "before", a, "after", b))
            goto done;
    }
    ok = true;
done:
    cJSON_Delete(added);
    cJSON_Delete(removed);
    keyed_free(ka, na);
    keyed_free(kb, nb);
    return ok;
}

static bool diff_value(cJSON *out, const char *path, const cJSON *a, const cJSON *b, bool top);

static bool diff_objects(cJSON *out, const char *path, const cJSON *a, const cJSON *b, bool top)
{
    for (const cJSON *x = a->child; x; x = x->next) {
        if (top && strcmp(x->string, "version") == 0)
            continue;
        char *p = path_key(path, x->string);
        if (!p)
            return false;
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
        bool ok = y ? diff_value(out, p, x, y, false)
                    : diff_entry(out, p, "removed", "value", x, NULL, NULL);
        free(p);
        if (!ok)
            return false;
    }
    for (const cJSON *y = b->child; y; y = y->next) {
        if (top && strcmp(y->string, "version") == 0)
            continue;
        if (cJSON_GetObjectItemCaseSensitive(a, y->string))
            continue;
        char *p = path_key(path, y->string);
        if (!p)
            return false;
        bool ok = diff_entry(out, p, "added", "value", y, NULL, NULL);
        free(p);
        if (!ok)
            return false;
    }
    return true;
}

static bool diff_named(cJSON *out, const char *path, const cJSON *a, const cJSON *b)
{
    for (const cJSON *x = a->child; x; x = x->next) {
        const char *name = cJSON_GetObjectItemCaseSensitive(x, "name")->valuestring;
        char *p = path_named(path, name);
        if (!p)
            return false;
        const cJSON *y = by_name(b, name);
        bool ok = y ? diff_value(out, p, x, y, false)
                    : diff_entry(out, p, "removed", "value", x, NULL, NULL);
        free(p);
        if (!ok)
            return false;
    }
    for (const cJSON *y = b->child; y; y = y->next) {
        const char *name = cJSON_GetObjectItemCaseSensitive(y, "name")->valuestring;
        if (by_name(a, name))
            continue;
        char *p = path_named(path, name);
        if (!p)
            return false;
        bool ok = diff_entry(out, p, "added", "value", y, NULL, NULL);
        free(p);
        if (!ok)
            return false;
    }
    return true;
}

static bool diff_value(cJSON *out, const char *path, const cJSON *a, const cJSON *b, bool top)
{
    if (cJSON_IsObject(a) && cJSON_IsObject(b))
        return diff_objects(out, path, a, b, top);
    if (cJSON_IsArray(a) && cJSON_IsArray(b)) {
        if (named_objects(a) && named_objects(b) && (a->child || b->child))
            return diff_named(out, path, a, b);
        if (scalars(a) && scalars(b))
            return diff_elements(out, path, a, b);
    }
    if (cJSON_Compare(a, b, true))
        return true;
    return diff_entry(out, path, "changed", "before", a, "after", b);
}

int compiler_document_diff(const char *before_json, const char *after_json, char **diff_out,
                           char *err, size_t errlen)
{
    cJSON *a = NULL, *b = NULL, *out = NULL;
    int rc = -1;
    if (!diff_out)
        return fail(err, errlen, "nowhere to put the diff");
    *diff_out = NULL;
    if (before_json && !(a = cJSON_Parse(before_json))) {
        fail(err, errlen, "before: not a JSON document");
        goto done;
    }
    if (after_json && !(b = cJSON_Parse(after_json))) {
        fail(err, errlen, "after: not a JSON document");
        goto done;
    }
    out = cJSON_CreateArray();
    if (!out)
        goto oom;
    bool ok = true;
    if (a && b) {
        ok = diff_value(out, "$", a, b, true);
    } else if (a || b) {
        cJSON *e = cJSON_CreateObject();
        ok = e != NULL;
        if (ok) {
            cJSON_AddItemToArray(out, e);
            ok = cJSON_AddStringToObject(e, "path", "$") &&
                 cJSON_AddStringToObject(e, "op", a ? "removed" : "added");
        }
    }
    if (!ok)
        goto oom;
    *diff_out = cJSON_PrintUnformatted(out);
    if (!*diff_out)
        goto oom;
    rc = 0;
    goto done;
oom:
    fail(err, errlen, "out of memory");
done:
    cJSON_Delete(a);
    cJSON_Delete(b);
    cJSON_Delete(out);
    return rc;
}

/* The document after its "version": canonical documents that agree from
 * here on differ in nothing else. */
static const char *after_version(const char *json)
{
    static const char pre[] = "{\"schema\":\"" PC_POLICY_SCHEMA "\",\"version\":";
    if (strncmp(json, pre, sizeof(pre) - 1) != 0)
        return json;
    json += sizeof(pre) - 1;
    while (*json >= '0' && *json <= '9')
        json++;
    return json;
}

static int cmp_office_ptr(const void *a, const void *b)
{
    const model_office *x = *(const model_office *const *)a, *y = *(const model_office *const *)b;
    return x->id < y->id ? -1 : x->id > y->id;
}

static const model_office **offices_by_id(const model *m)
{
    const model_office **v = malloc((m->noffices ? m->noffices : 1) * sizeof(*v));
    if (!v)
        return NULL;
    for (size_t i = 0; i < m->noffices; i++)
        v[i] = &m->offices[i];
    qsort(v, m->noffices, sizeof(*v), cmp_office_ptr);
    return v;
}

void compiler_changes_free(compiler_change *c, size_t n)
{
    for (size_t i = 0; c && i < n; i++) {
        free(c[i].office);
        for (size_t k = 0; k < c[i].nnodes; k++)
            free(c[i].nodes[k]);
        free(c[i].nodes);
        free(c[i].diff);
    }
    free(c);
}

static int change_nodes(compiler_change *ch, const model *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nnodes; i++)
        n += m->nodes[i].office_id == ch->office_id;
    ch->nodes = calloc(n ? n : 1, sizeof(char *));
    if (!ch->nodes)
        return -1;
    for (size_t i = 0; i < m->nnodes; i++) {
        if (m->nodes[i].office_id != ch->office_id)
            continue;
        ch->nodes[ch->nnodes] = xstrdup(m->nodes[i].name ? m->nodes[i].name : "");
        if (!ch->nodes[ch->nnodes])
            return -1;
        ch->nnodes++;
    }
    qsort(ch->nodes, ch->nnodes, sizeof(char *), cmp_str);
    return 0;
}

int compiler_diff(const model *before, const model *after, compiler_change **out, size_t *n,
                  char *err, size_t errlen)
{
    const model_office **ob = NULL, **oa = NULL;
    compiler_change *v = NULL;
    size_t nv = 0, cap = 0;
    char *jb = NULL, *ja = NULL;
    int rc = -1;
    char e[COMPILER_ERR_MAX], lb[256];

    if (!out || !n)
        return fail(err, errlen, "nowhere to put the changes");
    *out = NULL;
    *n = 0;
    if (!before || !after)
        return fail(err, errlen, "no model");
    ob = offices_by_id(before);
    oa = offices_by_id(after);
    if (!ob || !oa)
        goto oom;
    size_t i = 0, j = 0;
    while (i < before->noffices || j < after->noffices) {
        const model_office *b = NULL, *a = NULL;
        if (j >= after->noffices || (i < before->noffices && ob[i]->id < oa[j]->id))
            b = ob[i++];
        else if (i >= before->noffices || ob[i]->id > oa[j]->id)
            a = oa[j++];
        else {
            b = ob[i++];
            a = oa[j++];
        }
        char sb[65] = "", sa[65] = "";
        if (b && compile_office(before, b, &jb, sb, e, sizeof(e)) != 0) {
            fail(err, errlen, "before: %s: %s", obj_label(lb, sizeof(lb), "office", b->id, b->name),
                 e);
            goto done;
        }
        if (a && compile_office(after, a, &ja, sa, e, sizeof(e)) != 0) {
            fail(err, errlen, "after: %s: %s", obj_label(lb, sizeof(lb), "office", a->id, a->name),
                 e);
            goto done;
        }
        if (!(a && b && strcmp(after_version(jb), after_version(ja)) == 0)) {
            if (nv == cap) {
                size_t nc = cap ? cap * 2 : 8;
                compiler_change *t = realloc(v, nc * sizeof(*t));
                if (!t)
                    goto oom;
                v = t;
                cap = nc;
            }
            compiler_change *ch = &v[nv++];
            *ch = (compiler_change){0};
            ch->office_id = a ? a->id : b->id;
            memcpy(ch->before_sha256, sb, sizeof(sb));
            memcpy(ch->after_sha256, sa, sizeof(sa));
            ch->office = xstrdup(a ? a->name : b->name);
            if (!ch->office || change_nodes(ch, a ? after : before) != 0)
                goto oom;
            if (compiler_document_diff(jb, ja, &ch->diff, e, sizeof(e)) != 0) {
                fail(err, errlen, "%s", e);
                goto done;
            }
        }
        free(jb);
        free(ja);
        jb = ja = NULL;
    }
    *out = v;
    *n = nv;
    v = NULL;
    rc = 0;
    goto done;
oom:
    fail(err, errlen, "out of memory");
done:
    free(jb);
    free(ja);
    compiler_changes_free(v, nv);
    free(ob);
    free(oa);
    return rc;
}

char *compiler_changes_json(const compiler_change *c, size_t n)
{
    cJSON *root = cJSON_CreateObject(), *offices = NULL;
    char *out = NULL;
    if (!root || !add_int(root, "changed", (int64_t)n) ||
        !(offices = cJSON_AddArrayToObject(root, "offices")))
        goto done;
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject(), *nodes = NULL;
        if (!o)
            goto done;
        cJSON_AddItemToArray(offices, o);
        if (!add_int(o, "office_id", c[i].office_id) ||
            !add_str_or_null(o, "office", c[i].office) ||
            !(nodes = cJSON_AddArrayToObject(o, "nodes")))
            goto done;
        for (size_t k = 0; k < c[i].nnodes; k++) {
            cJSON *s = cJSON_CreateString(c[i].nodes[k]);
            if (!s)
                goto done;
            cJSON_AddItemToArray(nodes, s);
        }
        if (!add_str_or_null(o, "before_sha256",
                             c[i].before_sha256[0] ? c[i].before_sha256 : NULL) ||
            !add_str_or_null(o, "after_sha256", c[i].after_sha256[0] ? c[i].after_sha256 : NULL))
            goto done;
        cJSON *d = cJSON_Parse(c[i].diff ? c[i].diff : "[]");
        if (!d)
            goto done;
        cJSON_AddItemToObject(o, "diff", d);
    }
    out = cJSON_PrintUnformatted(root);
done:
    cJSON_Delete(root);
    return out;
}
