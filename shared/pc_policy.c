/* pc_policy.c - the effective-policy document: strict parse and validation
 * into an immutable, reference-counted object, and the checks the proxy runs
 * against a group (docs/policy.md describes the document and the semantics).
 *
 * Everything the object holds (strings, arrays, hash sets) comes from one
 * arena freed with it, except the prefix sets, which pc_cidr owns. Nothing is
 * changed after pc_policy_parse returns, so proxy threads share it without
 * locks; only the reference count moves, with C11 atomics.
 */
#include "pc_policy.h"

#include "pc_text.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The shipped Skype list (shared/lists/skype.json), compiled in by CMake. */
const char *pc__policy_builtin_list(size_t *len);

#define MAX_DOMAIN 253
#define MAX_SUFFIX 256
#define MAX_NAME 64
#define MAX_TEXT 4096
#define MAX_SAFE_INT 9007199254740991.0 /* 2^53 - 1: exact in a double */

/* --- arena ---------------------------------------------------------------- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(max_align_t) unsigned char data[];
} arena_block;

typedef struct arena {
    arena_block *head;
} arena;

/* Zeroed memory that lives until arena_free; NULL when memory runs out. */
static void *arena_alloc(arena *a, size_t n)
{
    const size_t align = _Alignof(max_align_t);
    if (n > SIZE_MAX / 2)
        return NULL;
    n = (n + align - 1) & ~(align - 1);
    if (n == 0)
        n = align;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        arena_block *b = calloc(1, sizeof(*b) + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        b->next = a->head;
        a->head = b;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

static void *arena_array(arena *a, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    return arena_alloc(a, n * size);
}

static void arena_free(arena *a)
{
    arena_block *b = a->head;
    while (b) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}

/* --- domain hash sets ----------------------------------------------------- */

typedef struct dom_entry {
    const char *name; /* normalized: lower case, no trailing dot */
    uint32_t len;
    uint32_t hash;
} dom_entry;

typedef struct domset {
    size_t cap; /* power of two, or 0 when empty */
    size_t n;
    dom_entry *slots;
} domset;

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static uint32_t dom_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= lower((unsigned char)s[i]);
        h *= 16777619u;
    }
    return h;
}

static bool eq_nocase(const char *a, const char *b, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    return true;
}

static int domset_init(domset *d, arena *a, size_t n)
{
    d->n = 0;
    d->cap = 0;
    d->slots = NULL;
    if (n == 0)
        return 0;
    size_t cap = 8;
    while (cap < n * 2)
        cap *= 2;
    d->slots = arena_array(a, cap, sizeof(dom_entry));
    if (!d->slots)
        return -1;
    d->cap = cap;
    return 0;
}

/* The entry for s (any case), or NULL. */
static const dom_entry *domset_find(const domset *d, const char *s, size_t len)
{
    if (d->cap == 0)
        return NULL;
    uint32_t h = dom_hash(s, len);
    size_t mask = d->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const dom_entry *e = &d->slots[i];
        if (!e->name)
            return NULL;
        if (e->hash == h && e->len == len && eq_nocase(e->name, s, len))
            return e;
    }
}

/* Adds a normalized name; a duplicate is ignored. The set was sized for
 * every name in init, so there is always room. */
static void domset_add(domset *d, const char *name, size_t len)
{
    uint32_t h = dom_hash(name, len);
    size_t mask = d->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        dom_entry *e = &d->slots[i];
        if (!e->name) {
            e->name = name;
            e->len = (uint32_t)len;
            e->hash = h;
            d->n++;
            return;
        }
        if (e->hash == h && e->len == len && memcmp(e->name, name, len) == 0)
            return;
    }
}

/* --- the object ----------------------------------------------------------- */

/* A set of blocking rules with one origin: a list, a group's own blocked_*
 * fields, or the defaults' own. */
typedef struct pc_rules {
    const char *name; /* list name, "group" or "defaults" */
    bool skype;       /* category "skype": the exception lifts it */
    domset domains;
    pc_cidrset *prefixes;     /* value: index into prefix_text */
    const char **prefix_text; /* as formatted by pc_cidr_format */
    size_t nprefixes;
    const char **suffixes; /* lower case */
    size_t *suffix_len;
    size_t nsuffixes;
} pc_rules;

struct pc_group {
    const char *name;
    bool skype_exception;
    bool require_certificate;
    bool block_executables;
    const char *exec_origin; /* "group" or "defaults": where block_executables came from */
    const pc_rules **lists;  /* use_lists, in order */
    size_t nlists;
    pc_rules own;                /* the fields this group sets itself */
    const pc_rules *own_domains; /* &own, or the defaults' own when inherited */
    const pc_rules *own_prefixes;
    const pc_rules *own_suffixes;
    bool has_use_lists, has_domains, has_prefixes, has_suffixes;
    bool has_exec, has_cert, has_exception;
};

typedef struct port_proto {
    uint16_t port;
    uint8_t proto;
} port_proto;

struct pc_policy {
    atomic_uint refs;
    arena mem;
    uint64_t version;
    bool builtin;
    pc_proxy_settings proxy;
    const port_proto *ports; /* ascending */
    size_t nports;
    pc_rules *lists;
    size_t nlists;
    pc_group defaults;
    pc_group *groups;
    size_t ngroups;
    pc_cidrset *sources;         /* value: group index */
    const pc_firewall *firewall; /* NULL: the document has none */
};

static void rules_release(pc_rules *r)
{
    pc_cidrset_free(r->prefixes);
    r->prefixes = NULL;
}

static void policy_destroy(pc_policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nlists; i++)
        rules_release(&p->lists[i]);
    rules_release(&p->defaults.own);
    for (size_t i = 0; i < p->ngroups; i++)
        rules_release(&p->groups[i].own);
    pc_cidrset_free(p->sources);
    arena_free(&p->mem);
    free(p);
}

/* --- validation context and messages -------------------------------------- */

typedef struct ctx {
    char path[512];
    size_t plen;
    char *err;
    size_t errlen;
    pc_policy *p;
    const pc_rules **by_name; /* the lists sorted by name, for lookups */
    uint32_t *seen;           /* per list: the use_lists array that last named it */
    uint32_t stamp;
} ctx;

/* Writes "<path>: <message>" to the caller's buffer; always returns -1. */
__attribute__((format(printf, 2, 3))) static int fail(ctx *c, const char *fmt, ...)
{
    if (!c->err || c->errlen == 0)
        return -1;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s: %s", c->path, msg);
    return -1;
}

static int fail_oom(ctx *c)
{
    return fail(c, "out of memory");
}

/* A value quoted for a message: at most 80 bytes, control and non-ASCII
 * bytes as \xHH, so a hostile document cannot forge log lines. */
static const char *q(char *buf, size_t buflen, const char *s)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 5 < buflen; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i >= 80) {
            memcpy(buf + j, "...", 3);
            j += 3;
            break;
        }
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
            buf[j++] = (char)ch;
        } else {
            snprintf(buf + j, buflen - j, "\\x%02x", ch);
            j += 4;
        }
    }
    buf[j] = '\0';
    return buf;
}

/* Appends to the path; returns the length to restore with path_pop. A path
 * that would not fit is cut (the message stays correct up to the cut). */
static size_t path_append(ctx *c, const char *s)
{
    size_t old = c->plen;
    size_t room = sizeof(c->path) - 1 - c->plen;
    size_t n = strlen(s);
    if (n > room)
        n = room;
    memcpy(c->path + c->plen, s, n);
    c->plen += n;
    c->path[c->plen] = '\0';
    return old;
}

static size_t path_key(ctx *c, const char *key)
{
    char buf[200];
    if (pc_text_is_ident(key) && strlen(key) < 100) {
        snprintf(buf, sizeof(buf), ".%s", key);
    } else {
        char qb[120];
        snprintf(buf, sizeof(buf), "['%s']", q(qb, sizeof(qb), key));
    }
    return path_append(c, buf);
}

static size_t path_index(ctx *c, size_t i)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "[%zu]", i);
    return path_append(c, buf);
}

static void path_pop(ctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

/* Levenshtein distance, capped: only used to suggest a key for a typo. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 99;
    size_t prev[41], cur[41];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(size_t) * (lb + 1));
    }
    return prev[lb];
}

static int cmp_keyptr(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    int r = strcmp(x->string, y->string);
    if (r)
        return r;
    /* Stable on position, so the duplicate reported is the later one. */
    return x < y ? -1 : (x > y);
}

/* Refuses an object that has a key twice (cJSON keeps both, and a reader
 * would see only the first); the path names the later one. */
static int check_dups(ctx *c, const cJSON *obj)
{
    size_t n = 0;
    for (const cJSON *it = obj->child; it; it = it->next)
        n++;
    if (n < 2)
        return 0;
    const cJSON **v = malloc(n * sizeof(*v));
    if (!v)
        return fail_oom(c);
    size_t i = 0;
    for (const cJSON *it = obj->child; it; it = it->next)
        v[i++] = it;
    qsort(v, n, sizeof(*v), cmp_keyptr);
    int rc = 0;
    for (i = 1; i < n && rc == 0; i++) {
        if (strcmp(v[i - 1]->string, v[i]->string) == 0) {
            size_t old = path_key(c, v[i]->string);
            rc = fail(c, "duplicate key");
            path_pop(c, old);
        }
    }
    free(v);
    return rc;
}

/* Checks an object's keys: each known and present once, the required ones
 * present. allowed and required are NULL-terminated. */
static int check_keys(ctx *c, const cJSON *obj, const char *const *allowed,
                      const char *const *required)
{
    for (const cJSON *it = obj->child; it; it = it->next) {
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = strcmp(*a, it->string) == 0;
        if (known)
            continue;
        const char *best = NULL;
        size_t bestd = 3;
        for (const char *const *a = allowed; *a; a++) {
            size_t d = edit_distance(it->string, *a);
            if (d < bestd) {
                bestd = d;
                best = *a;
            }
        }
        size_t old = path_key(c, it->string);
        if (best)
            fail(c, "unknown key (did you mean '%s'?)", best);
        else
            fail(c, "unknown key");
        path_pop(c, old);
        return -1;
    }
    if (check_dups(c, obj) != 0)
        return -1;
    for (const char *const *r = required; r && *r; r++) {
        if (!cJSON_GetObjectItemCaseSensitive(obj, *r)) {
            size_t old = path_key(c, *r);
            fail(c, "required key is missing");
            path_pop(c, old);
            return -1;
        }
    }
    return 0;
}

static const cJSON *get(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* The reads below run with the path already at the value. */

static int want_object(ctx *c, const cJSON *v)
{
    return cJSON_IsObject(v) ? 0 : fail(c, "must be an object");
}

static int want_array(ctx *c, const cJSON *v)
{
    return cJSON_IsArray(v) ? 0 : fail(c, "must be an array");
}

static int read_bool(ctx *c, const cJSON *v, bool *out)
{
    if (!cJSON_IsBool(v))
        return fail(c, "must be true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

static int read_uint(ctx *c, const cJSON *v, double min, double max, uint64_t *out)
{
    /* The range test comes first: it also refuses NaN and infinities, so
     * the conversion below is defined. */
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1.0;
    if (!(d >= min && d <= max) || (double)(uint64_t)d != d)
        return fail(c, "must be an integer from %.0f to %.0f", min, max);
    *out = (uint64_t)d;
    return 0;
}

/* Free text (descriptions, sources): UTF-8 without control characters.
 * Copied into the policy when out is not NULL. */
static int read_text(ctx *c, const cJSON *v, size_t maxlen, const char **out)
{
    if (!cJSON_IsString(v))
        return fail(c, "must be a string");
    size_t n = strlen(v->valuestring);
    if (n > maxlen)
        return fail(c, "is %zu bytes, more than %zu", n, maxlen);
    if (!pc_text_ok(v->valuestring))
        return fail(c, "must be UTF-8 text without control characters");
    if (!out)
        return 0;
    char *s = arena_alloc(&c->p->mem, n + 1);
    if (!s)
        return fail_oom(c);
    memcpy(s, v->valuestring, n + 1);
    *out = s;
    return 0;
}

/* Group and list names: [A-Za-z0-9_.-]{1,64}. */
static bool name_ok(const char *s)
{
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

/* Normalizes and checks a domain rule into out (at least MAX_DOMAIN + 1). */
static int read_domain(ctx *c, const cJSON *v, char *out, size_t *outlen)
{
    char qb[200];
    if (!cJSON_IsString(v))
        return fail(c, "must be a string");
    const char *s = v->valuestring;
    size_t n = strlen(s);
    if (n == 0)
        return fail(c, "a domain cannot be empty");
    if (n >= 2 && s[0] == '*' && s[1] == '.') {
        char qb2[200];
        return fail(c,
                    "'%s': write '%s' without '*.': a rule covers the name and every name "
                    "under it",
                    q(qb, sizeof(qb), s), q(qb2, sizeof(qb2), s + 2));
    }
    if (s[n - 1] == '.')
        n--; /* one trailing dot: the absolute form of the same name */
    if (n == 0 || n > MAX_DOMAIN)
        return fail(c, "'%s' is not a domain name (1 to 253 characters)", q(qb, sizeof(qb), s));
    size_t labels = 0, lab = 0;
    bool all_digits = true;
    for (size_t i = 0; i <= n; i++) {
        char ch = i < n ? s[i] : '.';
        if (ch == '.') {
            if (lab == 0)
                return fail(c, "'%s' is not a domain name (empty label)", q(qb, sizeof(qb), s));
            if (lab > 63)
                return fail(c, "'%s' is not a domain name (a label is longer than 63)",
                            q(qb, sizeof(qb), s));
            if (s[i - lab] == '-' || s[i - 1] == '-')
                return fail(c, "'%s' is not a domain name (a label starts or ends with '-')",
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
            return fail(c, "'%s' is not a domain name (letters, digits, '-', '_' and dots only)",
                        q(qb, sizeof(qb), s));
        if (ch < '0' || ch > '9')
            all_digits = false;
        lab++;
    }
    if (all_digits)
        return fail(c, "'%s' is an address, not a domain name: put it in the prefixes",
                    q(qb, sizeof(qb), s));
    if (labels < 2)
        return fail(c, "'%s': a whole top-level domain is refused; name at least two labels",
                    q(qb, sizeof(qb), s));
    for (size_t i = 0; i < n; i++)
        out[i] = (char)lower((unsigned char)s[i]);
    out[n] = '\0';
    *outlen = n;
    return 0;
}

static int read_suffix(ctx *c, const cJSON *v, char *out, size_t *outlen)
{
    char qb[200];
    if (!cJSON_IsString(v))
        return fail(c, "must be a string");
    const char *s = v->valuestring;
    size_t n = strlen(s);
    if (n == 0)
        return fail(c, "a URL suffix cannot be empty (it would match every path)");
    if (n > MAX_SUFFIX)
        return fail(c, "a URL suffix is at most %d bytes", MAX_SUFFIX);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f)
            return fail(c, "'%s': printable ASCII without spaces only", q(qb, sizeof(qb), s));
        if (ch == '?' || ch == '#')
            return fail(c, "'%s': the query and fragment are not part of the path",
                        q(qb, sizeof(qb), s));
        if (ch == '%')
            return fail(c,
                        "'%s': write the decoded text; paths are percent-decoded before "
                        "they are matched",
                        q(qb, sizeof(qb), s));
        out[i] = (char)lower(ch);
    }
    out[n] = '\0';
    *outlen = n;
    return 0;
}

static int read_prefix(ctx *c, const cJSON *v, pc_cidr *out)
{
    char e[256];
    if (!cJSON_IsString(v))
        return fail(c, "must be a string");
    if (pc_cidr_parse(v->valuestring, out, e, sizeof(e)) != 0)
        return fail(c, "%s", e);
    return 0;
}

/* --- rules ---------------------------------------------------------------- */

static int rules_read_domains(ctx *c, pc_rules *r, const cJSON *arr)
{
    if (want_array(c, arr) != 0)
        return -1;
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    if (domset_init(&r->domains, &c->p->mem, n) != 0)
        return fail_oom(c);
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char name[MAX_DOMAIN + 1] = "";
        size_t len = 0;
        size_t old = path_index(c, i);
        if (read_domain(c, it, name, &len) != 0)
            return -1;
        path_pop(c, old);
        char *s = arena_alloc(&c->p->mem, len + 1);
        if (!s)
            return fail_oom(c);
        memcpy(s, name, len + 1);
        domset_add(&r->domains, s, len);
    }
    return 0;
}

static int rules_read_prefixes(ctx *c, pc_rules *r, const cJSON *arr)
{
    if (want_array(c, arr) != 0)
        return -1;
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    r->prefixes = pc_cidrset_new();
    r->prefix_text = arena_array(&c->p->mem, n ? n : 1, sizeof(char *));
    if (!r->prefixes || !r->prefix_text)
        return fail_oom(c);
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        pc_cidr cidr;
        size_t old = path_index(c, i);
        if (read_prefix(c, it, &cidr) != 0)
            return -1;
        path_pop(c, old);
        char buf[64];
        pc_cidr_format(&cidr, buf, sizeof(buf));
        size_t len = strlen(buf);
        char *s = arena_alloc(&c->p->mem, len + 1);
        if (!s)
            return fail_oom(c);
        memcpy(s, buf, len + 1);
        r->prefix_text[r->nprefixes] = s;
        if (pc_cidrset_add(r->prefixes, &cidr, (intptr_t)r->nprefixes) != 0)
            return fail_oom(c);
        r->nprefixes++;
    }
    return 0;
}

static int rules_read_suffixes(ctx *c, pc_rules *r, const cJSON *arr)
{
    if (want_array(c, arr) != 0)
        return -1;
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    r->suffixes = arena_array(&c->p->mem, n ? n : 1, sizeof(char *));
    r->suffix_len = arena_array(&c->p->mem, n ? n : 1, sizeof(size_t));
    if (!r->suffixes || !r->suffix_len)
        return fail_oom(c);
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char buf[MAX_SUFFIX + 1];
        size_t len = 0;
        size_t old = path_index(c, i);
        if (read_suffix(c, it, buf, &len) != 0)
            return -1;
        path_pop(c, old);
        char *s = arena_alloc(&c->p->mem, len + 1);
        if (!s)
            return fail_oom(c);
        memcpy(s, buf, len + 1);
        r->suffixes[r->nsuffixes] = s;
        r->suffix_len[r->nsuffixes] = len;
        r->nsuffixes++;
    }
    return 0;
}

/* Reads an array of strings by fn at obj[key]; absent is fine. */
typedef int (*rules_reader)(ctx *, pc_rules *, const cJSON *);
static int rules_field(ctx *c, pc_rules *r, const cJSON *obj, const char *key, rules_reader fn,
                       bool *present)
{
    const cJSON *v = get(obj, key);
    *present = v != NULL;
    if (!v)
        return 0;
    size_t old = path_key(c, key);
    if (fn(c, r, v) != 0)
        return -1;
    path_pop(c, old);
    return 0;
}

/* --- document sections ---------------------------------------------------- */

static const struct {
    const char *name;
    pc_proto proto;
} proto_names[] = {
    {"http", PC_PROTO_HTTP},
    {"tls", PC_PROTO_TLS},
    {"rtsp", PC_PROTO_RTSP},
    {"mms", PC_PROTO_MMS},
    {"passthrough", PC_PROTO_PASSTHROUGH},
};

static bool port_key(const char *k, unsigned *port)
{
    size_t n = strlen(k);
    unsigned v = 0;
    if (n == 0 || n > 5 || k[0] == '0')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (k[i] < '0' || k[i] > '9')
            return false;
        v = v * 10 + (unsigned)(k[i] - '0');
    }
    if (v < 1 || v > 65535)
        return false;
    *port = v;
    return true;
}

static int cmp_port(const void *a, const void *b)
{
    const port_proto *x = a, *y = b;
    return (int)x->port - (int)y->port;
}

static int parse_ports(ctx *c, const cJSON *v)
{
    pc_policy *p = c->p;
    char qb[200];
    if (want_object(c, v) != 0)
        return -1;
    size_t n = (size_t)cJSON_GetArraySize(v), np = 0;
    port_proto *ports = arena_array(&p->mem, n ? n : 1, sizeof(port_proto));
    if (!ports)
        return fail_oom(c);
    for (const cJSON *it = v->child; it; it = it->next) {
        size_t old = path_key(c, it->string);
        unsigned port;
        if (!port_key(it->string, &port))
            return fail(c, "'%s' is not a port (1 to 65535, decimal, no leading zero)",
                        q(qb, sizeof(qb), it->string));
        if (!cJSON_IsString(it))
            return fail(c, "must be one of http, tls, rtsp, mms, passthrough");
        pc_proto proto = PC_PROTO_NONE;
        for (size_t i = 0; i < sizeof(proto_names) / sizeof(proto_names[0]); i++)
            if (strcmp(it->valuestring, proto_names[i].name) == 0)
                proto = proto_names[i].proto;
        if (proto == PC_PROTO_NONE)
            return fail(c, "'%s' is not one of http, tls, rtsp, mms, passthrough",
                        q(qb, sizeof(qb), it->valuestring));
        ports[np].port = (uint16_t)port;
        ports[np].proto = (uint8_t)proto;
        np++;
        path_pop(c, old);
    }
    /* Keys are canonical decimal and check_dups ran on the object, so the
     * ports are unique too. */
    qsort(ports, np, sizeof(port_proto), cmp_port);
    p->ports = ports;
    p->nports = np;
    return 0;
}

/* Reads obj[key] when present, an integer from min to max, into *out. */
static int opt_unsigned(ctx *c, const cJSON *obj, const char *key, unsigned min, unsigned max,
                        unsigned *out)
{
    const cJSON *it = get(obj, key);
    if (!it)
        return 0;
    uint64_t val = 0;
    size_t old = path_key(c, key);
    if (read_uint(c, it, min, max, &val) != 0)
        return -1;
    *out = (unsigned)val;
    path_pop(c, old);
    return 0;
}

static int parse_proxy(ctx *c, const cJSON *v)
{
    static const char *const keys[] = {
        "ports",   "max_connections", "header_timeout_ms", "idle_timeout_ms",  "connect_timeout_ms",
        "ca_file", "probe_ttl_s",     "probe_fail_ttl_s",  "probe_timeout_ms", "log_allowed",
        NULL};
    pc_policy *p = c->p;
    if (want_object(c, v) != 0 || check_keys(c, v, keys, NULL) != 0)
        return -1;
    pc_proxy_settings *ps = &p->proxy;
    if (opt_unsigned(c, v, "max_connections", 1, 1000000, &ps->max_connections) != 0 ||
        opt_unsigned(c, v, "header_timeout_ms", 100, 600000, &ps->header_timeout_ms) != 0 ||
        opt_unsigned(c, v, "idle_timeout_ms", 1000, 86400000, &ps->idle_timeout_ms) != 0 ||
        opt_unsigned(c, v, "connect_timeout_ms", 100, 600000, &ps->connect_timeout_ms) != 0 ||
        opt_unsigned(c, v, "probe_ttl_s", 1, 86400, &ps->probe_ttl_s) != 0 ||
        opt_unsigned(c, v, "probe_fail_ttl_s", 1, 86400, &ps->probe_fail_ttl_s) != 0 ||
        opt_unsigned(c, v, "probe_timeout_ms", 100, 60000, &ps->probe_timeout_ms) != 0)
        return -1;
    const cJSON *it;
    if ((it = get(v, "ca_file"))) {
        size_t old = path_key(c, "ca_file");
        const char *s = NULL;
        if (read_text(c, it, 4095, &s) != 0)
            return -1;
        if (s[0] && s[0] != '/')
            return fail(c, "must be an absolute path, or \"\" for the system trust store");
        p->proxy.ca_file = s;
        path_pop(c, old);
    }
    if ((it = get(v, "log_allowed"))) {
        size_t old = path_key(c, "log_allowed");
        if (read_bool(c, it, &p->proxy.log_allowed) != 0)
            return -1;
        path_pop(c, old);
    }
    if ((it = get(v, "ports"))) {
        size_t old = path_key(c, "ports");
        if (want_object(c, it) != 0)
            return -1;
        if (check_dups(c, it) != 0 || parse_ports(c, it) != 0)
            return -1;
        path_pop(c, old);
    }
    return 0;
}

static int parse_lists(ctx *c, const cJSON *v)
{
    static const char *const keys[] = {"category", "description",  "sources", "domains",
                                       "prefixes", "url_suffixes", NULL};
    static const char *const required[] = {"category", NULL};
    pc_policy *p = c->p;
    char qb[200];
    if (want_object(c, v) != 0 || check_dups(c, v) != 0)
        return -1;
    size_t n = (size_t)cJSON_GetArraySize(v);
    p->lists = arena_array(&p->mem, n ? n : 1, sizeof(pc_rules));
    if (!p->lists)
        return fail_oom(c);
    for (const cJSON *it = v->child; it; it = it->next) {
        size_t old = path_key(c, it->string);
        if (!name_ok(it->string))
            return fail(c, "'%s' is not a list name ([A-Za-z0-9_.-], 1 to 64 characters)",
                        q(qb, sizeof(qb), it->string));
        if (strcmp(it->string, "group") == 0 || strcmp(it->string, "defaults") == 0)
            return fail(c, "'%s' is reserved: decisions use it for a group's own rules",
                        it->string);
        if (want_object(c, it) != 0 || check_keys(c, it, keys, required) != 0)
            return -1;
        pc_rules *r = &p->lists[p->nlists++];
        r->name = arena_alloc(&p->mem, strlen(it->string) + 1);
        if (!r->name)
            return fail_oom(c);
        memcpy((char *)r->name, it->string, strlen(it->string) + 1);

        const cJSON *f = get(it, "category");
        size_t o2 = path_key(c, "category");
        if (!cJSON_IsString(f) || !name_ok(f->valuestring))
            return fail(c, "must be a category name ([A-Za-z0-9_.-], 1 to 64 characters)");
        r->skype = strcmp(f->valuestring, "skype") == 0;
        path_pop(c, o2);

        if ((f = get(it, "description"))) {
            o2 = path_key(c, "description");
            if (read_text(c, f, MAX_TEXT, NULL) != 0)
                return -1;
            path_pop(c, o2);
        }
        if ((f = get(it, "sources"))) {
            o2 = path_key(c, "sources");
            if (want_array(c, f) != 0)
                return -1;
            size_t i = 0;
            for (const cJSON *e = f->child; e; e = e->next, i++) {
                size_t o3 = path_index(c, i);
                if (read_text(c, e, MAX_TEXT, NULL) != 0)
                    return -1;
                path_pop(c, o3);
            }
            path_pop(c, o2);
        }
        bool present;
        if (rules_field(c, r, it, "domains", rules_read_domains, &present) != 0 ||
            rules_field(c, r, it, "prefixes", rules_read_prefixes, &present) != 0 ||
            rules_field(c, r, it, "url_suffixes", rules_read_suffixes, &present) != 0)
            return -1;
        path_pop(c, old);
    }
    return 0;
}

static int cmp_rules_name(const void *a, const void *b)
{
    return strcmp((*(const pc_rules *const *)a)->name, (*(const pc_rules *const *)b)->name);
}

static int cmp_name_rules(const void *key, const void *elem)
{
    return strcmp(key, (*(const pc_rules *const *)elem)->name);
}

/* Indexes the lists by name once they are all read. */
static int index_lists(ctx *c)
{
    pc_policy *p = c->p;
    size_t n = p->nlists ? p->nlists : 1;
    c->by_name = malloc(n * sizeof(*c->by_name));
    c->seen = calloc(n, sizeof(*c->seen));
    if (!c->by_name || !c->seen)
        return fail_oom(c);
    for (size_t i = 0; i < p->nlists; i++)
        c->by_name[i] = &p->lists[i];
    qsort(c->by_name, p->nlists, sizeof(*c->by_name), cmp_rules_name);
    return 0;
}

static const pc_rules *find_list(const ctx *c, const char *name)
{
    const pc_rules *const *r =
        bsearch(name, c->by_name, c->p->nlists, sizeof(*c->by_name), cmp_name_rules);
    return r ? *r : NULL;
}

static int parse_use_lists(ctx *c, pc_group *g, const cJSON *v)
{
    pc_policy *p = c->p;
    char qb[200];
    if (want_array(c, v) != 0)
        return -1;
    size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
    g->lists = arena_array(&p->mem, n ? n : 1, sizeof(pc_rules *));
    if (!g->lists)
        return fail_oom(c);
    c->stamp++;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        size_t old = path_index(c, i);
        if (!cJSON_IsString(it))
            return fail(c, "must be a string");
        const pc_rules *r = find_list(c, it->valuestring);
        if (!r) {
            char names[256] = "";
            size_t used = 0, k;
            for (k = 0; k < p->nlists && used + 70 < sizeof(names); k++)
                used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s", k ? ", " : "",
                                         p->lists[k].name);
            return fail(c, "no list named '%s' (lists: %s%s)", q(qb, sizeof(qb), it->valuestring),
                        p->nlists ? names : "none", k < p->nlists ? ", ..." : "");
        }
        size_t li = (size_t)(r - p->lists);
        if (c->seen[li] == c->stamp)
            return fail(c, "'%s' is listed twice", r->name);
        c->seen[li] = c->stamp;
        g->lists[g->nlists++] = r;
        path_pop(c, old);
    }
    return 0;
}

/* Reads obj[key] when present into *val and sets *has. */
static int opt_bool(ctx *c, const cJSON *obj, const char *key, bool *val, bool *has)
{
    const cJSON *it = get(obj, key);
    if (!it)
        return 0;
    size_t old = path_key(c, key);
    if (read_bool(c, it, val) != 0)
        return -1;
    *has = true;
    path_pop(c, old);
    return 0;
}

/* The fields defaults and groups share; for a group, each one present
 * overrides the defaults' value. */
static int parse_rule_fields(ctx *c, pc_group *g, const cJSON *v)
{
    const cJSON *it;
    if ((it = get(v, "use_lists"))) {
        size_t old = path_key(c, "use_lists");
        if (parse_use_lists(c, g, it) != 0)
            return -1;
        path_pop(c, old);
        g->has_use_lists = true;
    }
    if (opt_bool(c, v, "block_executables", &g->block_executables, &g->has_exec) != 0 ||
        opt_bool(c, v, "require_certificate", &g->require_certificate, &g->has_cert) != 0 ||
        opt_bool(c, v, "skype_exception", &g->skype_exception, &g->has_exception) != 0)
        return -1;
    if (rules_field(c, &g->own, v, "blocked_domains", rules_read_domains, &g->has_domains) != 0 ||
        rules_field(c, &g->own, v, "blocked_prefixes", rules_read_prefixes, &g->has_prefixes) !=
            0 ||
        rules_field(c, &g->own, v, "blocked_url_suffixes", rules_read_suffixes, &g->has_suffixes) !=
            0)
        return -1;
    return 0;
}

static int parse_defaults(ctx *c, const cJSON *v)
{
    static const char *const keys[] = {
        "use_lists",         "blocked_domains",     "blocked_prefixes", "blocked_url_suffixes",
        "block_executables", "require_certificate", "skype_exception",  NULL};
    static const char *const required[] = {"use_lists", NULL};
    pc_group *d = &c->p->defaults;
    if (want_object(c, v) != 0 || check_keys(c, v, keys, required) != 0)
        return -1;
    d->name = "defaults";
    d->own.name = "defaults";
    /* Unset booleans take the safe side. */
    d->block_executables = true;
    d->require_certificate = true;
    d->skype_exception = false;
    if (parse_rule_fields(c, d, v) != 0)
        return -1;
    d->exec_origin = "defaults";
    d->own_domains = d->own_prefixes = d->own_suffixes = &d->own;
    return 0;
}

static int parse_group(ctx *c, pc_group *g, size_t index, const cJSON *v)
{
    static const char *const keys[] = {"name",
                                       "description",
                                       "sources",
                                       "use_lists",
                                       "blocked_domains",
                                       "blocked_prefixes",
                                       "blocked_url_suffixes",
                                       "block_executables",
                                       "require_certificate",
                                       "skype_exception",
                                       NULL};
    static const char *const required[] = {"name", "sources", NULL};
    pc_policy *p = c->p;
    const pc_group *d = &p->defaults;
    char qb[200];
    if (want_object(c, v) != 0 || check_keys(c, v, keys, required) != 0)
        return -1;

    const cJSON *it = get(v, "name");
    size_t old = path_key(c, "name");
    if (!cJSON_IsString(it) || !name_ok(it->valuestring))
        return fail(c, "must be a group name ([A-Za-z0-9_.-], 1 to 64 characters)");
    if (strcmp(it->valuestring, "defaults") == 0)
        return fail(c, "'defaults' is reserved for sources in no group");
    size_t nlen = strlen(it->valuestring);
    char *name = arena_alloc(&p->mem, nlen + 1);
    if (!name)
        return fail_oom(c);
    memcpy(name, it->valuestring, nlen + 1);
    g->name = name;
    path_pop(c, old);

    if ((it = get(v, "description"))) {
        old = path_key(c, "description");
        if (read_text(c, it, MAX_TEXT, NULL) != 0)
            return -1;
        path_pop(c, old);
    }

    it = get(v, "sources");
    old = path_key(c, "sources");
    if (want_array(c, it) != 0)
        return -1;
    if (!it->child)
        return fail(c, "a group needs at least one source prefix");
    size_t i = 0;
    for (const cJSON *e = it->child; e; e = e->next, i++) {
        pc_cidr cidr;
        intptr_t other;
        size_t o2 = path_index(c, i);
        if (read_prefix(c, e, &cidr) != 0)
            return -1;
        if (pc_cidrset_get(p->sources, &cidr, &other)) {
            char txt[64];
            pc_cidr_format(&cidr, txt, sizeof(txt));
            if ((size_t)other == index)
                return fail(c, "%s is listed twice in this group", txt);
            return fail(c,
                        "%s is also a source of group '%s' ($.groups[%zu]); a source must "
                        "select one group",
                        txt, q(qb, sizeof(qb), p->groups[other].name), (size_t)other);
        }
        if (pc_cidrset_add(p->sources, &cidr, (intptr_t)index) != 0)
            return fail_oom(c);
        path_pop(c, o2);
    }
    path_pop(c, old);

    g->own.name = "group";
    if (parse_rule_fields(c, g, v) != 0)
        return -1;

    /* Inherit what the group does not set. */
    if (!g->has_use_lists) {
        g->lists = d->lists;
        g->nlists = d->nlists;
    }
    if (!g->has_exec)
        g->block_executables = d->block_executables;
    if (!g->has_cert)
        g->require_certificate = d->require_certificate;
    if (!g->has_exception)
        g->skype_exception = d->skype_exception;
    g->exec_origin = g->has_exec ? "group" : "defaults";
    g->own_domains = g->has_domains ? &g->own : &d->own;
    g->own_prefixes = g->has_prefixes ? &g->own : &d->own;
    g->own_suffixes = g->has_suffixes ? &g->own : &d->own;
    return 0;
}

static int cmp_group_name(const void *a, const void *b)
{
    const pc_group *x = *(const pc_group *const *)a, *y = *(const pc_group *const *)b;
    int r = strcmp(x->name, y->name);
    return r ? r : (x < y ? -1 : (x > y));
}

/* Group names are unique; the later of two is the one reported. */
static int check_group_names(ctx *c)
{
    pc_policy *p = c->p;
    if (p->ngroups < 2)
        return 0;
    const pc_group **v = malloc(p->ngroups * sizeof(*v));
    if (!v)
        return fail_oom(c);
    for (size_t i = 0; i < p->ngroups; i++)
        v[i] = &p->groups[i];
    qsort(v, p->ngroups, sizeof(*v), cmp_group_name);
    int rc = 0;
    for (size_t i = 1; i < p->ngroups && rc == 0; i++) {
        if (strcmp(v[i - 1]->name, v[i]->name) == 0) {
            size_t later = (size_t)(v[i] - p->groups), first = (size_t)(v[i - 1] - p->groups);
            path_index(c, later);
            path_key(c, "name");
            rc = fail(c, "'%s' is already the name of $.groups[%zu]", v[i]->name, first);
        }
    }
    free(v);
    return rc;
}

static int parse_groups(ctx *c, const cJSON *v)
{
    pc_policy *p = c->p;
    if (want_array(c, v) != 0)
        return -1;
    size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
    p->groups = arena_array(&p->mem, n ? n : 1, sizeof(pc_group));
    if (!p->groups)
        return fail_oom(c);
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        size_t old = path_index(c, i);
        p->ngroups = i + 1; /* so a failure frees what this group built */
        if (parse_group(c, &p->groups[i], i, it) != 0)
            return -1;
        path_pop(c, old);
    }
    return check_group_names(c);
}

/* --- firewall ------------------------------------------------------------- */

/* An array of prefixes at the path into the arena; nonempty: at least one. */
static int read_prefix_array(ctx *c, const cJSON *v, bool nonempty, const char *what,
                             const pc_cidr **out, size_t *n)
{
    if (want_array(c, v) != 0)
        return -1;
    size_t cnt = (size_t)cJSON_GetArraySize(v), i = 0;
    if (nonempty && cnt == 0)
        return fail(c, "%s", what);
    pc_cidr *arr = arena_array(&c->p->mem, cnt ? cnt : 1, sizeof(pc_cidr));
    if (!arr)
        return fail_oom(c);
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        size_t old = path_index(c, i);
        if (read_prefix(c, it, &arr[i]) != 0)
            return -1;
        path_pop(c, old);
    }
    *out = arr;
    *n = cnt;
    return 0;
}

/* A decimal port 1..65535 without a leading zero, from s[0..len). */
static bool port_digits(const char *s, size_t len, uint16_t *out)
{
    unsigned v = 0;
    if (len == 0 || len > 5 || s[0] == '0')
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return false;
    *out = (uint16_t)v;
    return true;
}

/* "25" or "8000-8100". */
static int read_fw_ports(ctx *c, const cJSON *v, pc_fw_ports *out)
{
    char qb[200];
    if (!cJSON_IsString(v))
        return fail(c, "must be a string: a port (\"25\") or a range (\"8000-8100\")");
    const char *s = v->valuestring;
    const char *dash = strchr(s, '-');
    size_t n = strlen(s);
    bool ok = dash ? port_digits(s, (size_t)(dash - s), &out->lo) &&
                         port_digits(dash + 1, n - (size_t)(dash - s) - 1, &out->hi)
                   : port_digits(s, n, &out->lo);
    if (!ok)
        return fail(c, "'%s' is not a port (\"25\") or a range (\"8000-8100\") of ports 1 to 65535",
                    q(qb, sizeof(qb), s));
    if (!dash)
        out->hi = out->lo;
    else if (out->hi < out->lo)
        return fail(c, "'%s': the range ends before it starts", q(qb, sizeof(qb), s));
    return 0;
}

static int parse_fw_allow(ctx *c, pc_fw_allow *a, const cJSON *v, size_t *expanded)
{
    static const char *const keys[] = {"name", "devices", "proto", "ports", NULL};
    static const char *const required[] = {"devices", "proto", "ports", NULL};
    char qb[200];
    if (want_object(c, v) != 0 || check_keys(c, v, keys, required) != 0)
        return -1;
    const cJSON *it;
    a->name = "";
    if ((it = get(v, "name"))) {
        size_t old = path_key(c, "name");
        if (!cJSON_IsString(it) || !name_ok(it->valuestring))
            return fail(c, "must be a name ([A-Za-z0-9_.-], 1 to 64 characters)");
        size_t len = strlen(it->valuestring);
        char *name = arena_alloc(&c->p->mem, len + 1);
        if (!name)
            return fail_oom(c);
        memcpy(name, it->valuestring, len + 1);
        a->name = name;
        path_pop(c, old);
    }
    size_t old = path_key(c, "devices");
    if (read_prefix_array(c, get(v, "devices"), true, "an entry needs at least one device prefix",
                          &a->devices, &a->ndevices) != 0)
        return -1;
    path_pop(c, old);

    it = get(v, "proto");
    old = path_key(c, "proto");
    if (!cJSON_IsString(it))
        return fail(c, "must be \"tcp\" or \"udp\"");
    if (strcmp(it->valuestring, "tcp") == 0)
        a->proto = IPPROTO_TCP;
    else if (strcmp(it->valuestring, "udp") == 0)
        a->proto = IPPROTO_UDP;
    else
        return fail(c, "'%s' is not \"tcp\" or \"udp\"", q(qb, sizeof(qb), it->valuestring));
    path_pop(c, old);

    it = get(v, "ports");
    old = path_key(c, "ports");
    if (want_array(c, it) != 0)
        return -1;
    size_t n = (size_t)cJSON_GetArraySize(it), i = 0;
    if (n == 0)
        return fail(c, "an entry needs at least one port");
    pc_fw_ports *ports = arena_array(&c->p->mem, n, sizeof(pc_fw_ports));
    if (!ports)
        return fail_oom(c);
    for (const cJSON *e = it->child; e; e = e->next, i++) {
        size_t o2 = path_index(c, i);
        if (read_fw_ports(c, e, &ports[i]) != 0)
            return -1;
        path_pop(c, o2);
    }
    a->ports = ports;
    a->nports = n;
    path_pop(c, old);

    /* Bounded before multiplying: each factor is at most the array size
     * cJSON could hold, the sum stops at the first entry past the limit. */
    if (a->ndevices > PC_FW_MAX_ALLOW || a->nports > PC_FW_MAX_ALLOW ||
        a->ndevices * a->nports > PC_FW_MAX_ALLOW - *expanded)
        return fail(c,
                    "the whitelist has more than %d entries after expansion (devices times "
                    "ports, all entries together)",
                    PC_FW_MAX_ALLOW);
    *expanded += a->ndevices * a->nports;
    return 0;
}

static int parse_firewall(ctx *c, const cJSON *v)
{
    static const char *const keys[] = {"lan", "web",        "web_devices", "allow",
                                       "dns", "high_ports", "log_drops",   NULL};
    char qb[200];
    if (want_object(c, v) != 0 || check_keys(c, v, keys, NULL) != 0)
        return -1;
    pc_firewall *fw = arena_alloc(&c->p->mem, sizeof(*fw));
    if (!fw)
        return fail_oom(c);
    fw->web = PC_FW_WEB_TRANSPARENT;
    fw->dns_any = true;
    fw->high_ports_block = true;
    fw->high_ports_from = 1024;

    const cJSON *it;
    size_t old;
    if ((it = get(v, "lan"))) {
        old = path_key(c, "lan");
        if (read_prefix_array(c, it, false, "", &fw->lan, &fw->nlan) != 0)
            return -1;
        path_pop(c, old);
    }
    if ((it = get(v, "web"))) {
        old = path_key(c, "web");
        if (!cJSON_IsString(it))
            return fail(c, "must be \"transparent\" or \"proxy\"");
        if (strcmp(it->valuestring, "transparent") == 0)
            fw->web = PC_FW_WEB_TRANSPARENT;
        else if (strcmp(it->valuestring, "proxy") == 0)
            fw->web = PC_FW_WEB_PROXY;
        else
            return fail(c, "'%s' is not \"transparent\" or \"proxy\"",
                        q(qb, sizeof(qb), it->valuestring));
        path_pop(c, old);
    }
    if ((it = get(v, "web_devices"))) {
        old = path_key(c, "web_devices");
        if (read_prefix_array(c, it, false, "", &fw->web_devices, &fw->nweb_devices) != 0)
            return -1;
        if (fw->nweb_devices && fw->web != PC_FW_WEB_PROXY)
            return fail(c, "only with \"web\": \"proxy\" (in transparent mode this node's "
                           "proxy is the only web client upstream)");
        path_pop(c, old);
    }
    if ((it = get(v, "allow"))) {
        old = path_key(c, "allow");
        if (want_array(c, it) != 0)
            return -1;
        size_t n = (size_t)cJSON_GetArraySize(it), i = 0, expanded = 0;
        pc_fw_allow *allow = arena_array(&c->p->mem, n ? n : 1, sizeof(pc_fw_allow));
        if (!allow)
            return fail_oom(c);
        for (const cJSON *e = it->child; e; e = e->next, i++) {
            size_t o2 = path_index(c, i);
            if (parse_fw_allow(c, &allow[i], e, &expanded) != 0)
                return -1;
            path_pop(c, o2);
        }
        fw->allow = allow;
        fw->nallow = n;
        path_pop(c, old);
    }
    if ((it = get(v, "dns"))) {
        old = path_key(c, "dns");
        if (!cJSON_IsNull(it)) {
            if (!cJSON_IsArray(it))
                return fail(c, "must be null (any resolver) or an array of addresses");
            fw->dns_any = false;
            if (read_prefix_array(c, it, false, "", &fw->dns, &fw->ndns) != 0)
                return -1;
        }
        path_pop(c, old);
    }
    if ((it = get(v, "high_ports"))) {
        static const char *const hkeys[] = {"block", "from", NULL};
        old = path_key(c, "high_ports");
        if (want_object(c, it) != 0 || check_keys(c, it, hkeys, NULL) != 0)
            return -1;
        bool has = false;
        unsigned from = fw->high_ports_from;
        if (opt_bool(c, it, "block", &fw->high_ports_block, &has) != 0 ||
            opt_unsigned(c, it, "from", 1, 65535, &from) != 0)
            return -1;
        fw->high_ports_from = (uint16_t)from;
        path_pop(c, old);
    }
    if ((it = get(v, "log_drops"))) {
        static const char *const lkeys[] = {"per_minute", NULL};
        old = path_key(c, "log_drops");
        if (!cJSON_IsNull(it)) {
            if (!cJSON_IsObject(it))
                return fail(c, "must be null (drops are not logged) or {\"per_minute\": N}");
            if (check_keys(c, it, lkeys, lkeys) != 0 ||
                opt_unsigned(c, it, "per_minute", 1, 10000, &fw->log_per_minute) != 0)
                return -1;
        }
        path_pop(c, old);
    }
    c->p->firewall = fw;
    return 0;
}

static int parse_root(ctx *c, const cJSON *root)
{
    static const char *const keys[] = {"schema",   "version", "proxy",    "lists",
                                       "defaults", "groups",  "firewall", NULL};
    static const char *const required[] = {"schema", "version", "defaults", NULL};
    pc_policy *p = c->p;
    if (want_object(c, root) != 0)
        return -1;
    /* The schema first: a newer document should say so, not trip over a
     * key this node does not know. */
    const cJSON *v = get(root, "schema");
    if (v) {
        size_t old = path_key(c, "schema");
        if (!cJSON_IsString(v))
            return fail(c, "must be the string '%s'", PC_POLICY_SCHEMA);
        if (strcmp(v->valuestring, PC_POLICY_SCHEMA) != 0) {
            char qb[200];
            return fail(c, "'%s' is not a schema this node reads (it reads '%s')",
                        q(qb, sizeof(qb), v->valuestring), PC_POLICY_SCHEMA);
        }
        path_pop(c, old);
    }
    if (check_keys(c, root, keys, required) != 0)
        return -1;

    size_t old = path_key(c, "version");
    if (read_uint(c, get(root, "version"), 1, MAX_SAFE_INT, &p->version) != 0)
        return -1;
    path_pop(c, old);

    if ((v = get(root, "proxy"))) {
        old = path_key(c, "proxy");
        if (parse_proxy(c, v) != 0)
            return -1;
        path_pop(c, old);
    }
    if ((v = get(root, "lists"))) {
        old = path_key(c, "lists");
        if (parse_lists(c, v) != 0)
            return -1;
        path_pop(c, old);
    }
    if (index_lists(c) != 0)
        return -1;
    old = path_key(c, "defaults");
    if (parse_defaults(c, get(root, "defaults")) != 0)
        return -1;
    path_pop(c, old);
    if ((v = get(root, "groups"))) {
        old = path_key(c, "groups");
        if (parse_groups(c, v) != 0)
            return -1;
        path_pop(c, old);
    }
    if ((v = get(root, "firewall"))) {
        old = path_key(c, "firewall");
        if (parse_firewall(c, v) != 0)
            return -1;
        path_pop(c, old);
    }
    return 0;
}

static void set_proxy_defaults(pc_policy *p)
{
    static const port_proto def_ports[] = {
        {80, PC_PROTO_HTTP}, {443, PC_PROTO_TLS}, {554, PC_PROTO_RTSP}, {1755, PC_PROTO_MMS}};
    p->proxy = (pc_proxy_settings){
        .max_connections = 20000,
        .header_timeout_ms = 10000,
        .idle_timeout_ms = 300000,
        .connect_timeout_ms = 10000,
        .ca_file = "",
        .probe_ttl_s = 600,
        .probe_fail_ttl_s = 60,
        .probe_timeout_ms = 5000,
        .log_allowed = false,
    };
    p->ports = def_ports;
    p->nports = sizeof(def_ports) / sizeof(def_ports[0]);
}

/* Where cJSON stopped, as byte offset, line and column (1-based). */
static void json_error(ctx *c, const char *json, size_t len, size_t off, const char *what)
{
    size_t line = 1, col = 1;
    if (off > len)
        off = len;
    for (size_t i = 0; i < off; i++) {
        if (json[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    fail(c, "invalid JSON at byte %zu (line %zu, column %zu): %s", off, line, col, what);
}

int pc_policy_parse(const char *json, size_t len, pc_policy **out, char *err, size_t errlen)
{
    ctx c = {.path = "$", .plen = 1, .err = err, .errlen = errlen, .p = NULL};
    cJSON *root = NULL;
    int rc = -1;

    if (err && errlen)
        err[0] = '\0';
    if (!json || !out) {
        fail(&c, "no document");
        return -1;
    }
    if (len > PC_POLICY_MAX_BYTES) {
        fail(&c, "the document is %zu bytes, more than the %u allowed", len,
             (unsigned)PC_POLICY_MAX_BYTES);
        return -1;
    }
    const char *nul = memchr(json, '\0', len);
    if (nul) {
        json_error(&c, json, len, (size_t)(nul - json), "NUL byte");
        return -1;
    }
    size_t esc = pc_text_json_nul_escape(json, len);
    if (esc < len) {
        json_error(&c, json, len, esc, "\\u0000 is not allowed in a string");
        return -1;
    }
    /* cJSON also records a failure in a global of its own; nothing here
     * reads it, and the position comes from end instead. */
    const char *end = NULL;
    root = len ? cJSON_ParseWithLengthOpts(json, len, &end, false) : NULL;
    if (!root) {
        size_t off = end && end >= json ? (size_t)(end - json) : 0;
        json_error(&c, json, len, off, len ? "syntax error" : "empty document");
        return -1;
    }
    {
        size_t off = (size_t)(end - json);
        while (off < len &&
               (json[off] == ' ' || json[off] == '\t' || json[off] == '\n' || json[off] == '\r'))
            off++;
        if (off < len) {
            json_error(&c, json, len, off, "data after the document");
            goto done;
        }
    }

    c.p = calloc(1, sizeof(*c.p));
    if (!c.p) {
        fail_oom(&c);
        goto done;
    }
    atomic_init(&c.p->refs, 1);
    set_proxy_defaults(c.p);
    c.p->sources = pc_cidrset_new();
    if (!c.p->sources) {
        fail_oom(&c);
        goto done;
    }
    if (parse_root(&c, root) != 0)
        goto done;
    *out = c.p;
    c.p = NULL;
    rc = 0;
done:
    free(c.by_name);
    free(c.seen);
    policy_destroy(c.p);
    cJSON_Delete(root);
    return rc;
}

int pc_policy_load_file(const char *path, pc_policy **out, char *err, size_t errlen)
{
    FILE *f = NULL;
    char *buf = NULL;
    int rc = -1;
    struct stat st;

    if (!path || !out) {
        snprintf(err, err ? errlen : 0, "no file given");
        return -1;
    }
    f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err ? errlen : 0, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fileno(f), &st) != 0) {
        snprintf(err, err ? errlen : 0, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, err ? errlen : 0, "%s: not a regular file", path);
        goto done;
    }
    if ((uint64_t)st.st_size > PC_POLICY_MAX_BYTES) {
        snprintf(err, err ? errlen : 0, "%s: %lld bytes, more than the %u allowed", path,
                 (long long)st.st_size, (unsigned)PC_POLICY_MAX_BYTES);
        goto done;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size ? size : 1);
    if (!buf) {
        snprintf(err, err ? errlen : 0, "%s: out of memory", path);
        goto done;
    }
    size_t got = fread(buf, 1, size, f);
    if (got != size || ferror(f)) {
        snprintf(err, err ? errlen : 0, "%s: read error", path);
        goto done;
    }
    rc = pc_policy_parse(buf, size, out, err, errlen);
done:
    free(buf);
    fclose(f);
    return rc;
}

pc_policy *pc_policy_builtin(void)
{
    size_t llen;
    const char *list = pc__policy_builtin_list(&llen);
    if (llen > PC_POLICY_MAX_BYTES)
        return NULL;
    size_t cap = llen + 512;
    char *doc = malloc(cap);
    if (!doc)
        return NULL;
    int n = snprintf(doc, cap,
                     "{\"schema\":\"%s\",\"version\":1,"
                     "\"proxy\":{\"ports\":{\"80\":\"http\",\"443\":\"tls\"}},"
                     "\"lists\":{\"skype\":%.*s},"
                     "\"defaults\":{\"use_lists\":[\"skype\"],\"block_executables\":true,"
                     "\"require_certificate\":true,\"skype_exception\":false},"
                     "\"firewall\":{\"web\":\"transparent\",\"dns\":[]}}",
                     PC_POLICY_SCHEMA, (int)llen, list);
    pc_policy *p = NULL;
    if (n > 0 && (size_t)n < cap && pc_policy_parse(doc, (size_t)n, &p, NULL, 0) == 0)
        p->builtin = true;
    free(doc);
    return p;
}

bool pc_policy_is_builtin(const pc_policy *p)
{
    return p && p->builtin;
}

pc_policy *pc_policy_ref(pc_policy *p)
{
    if (p)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void pc_policy_unref(pc_policy *p)
{
    if (!p)
        return;
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_release) == 1) {
        atomic_thread_fence(memory_order_acquire);
        policy_destroy(p);
    }
}

/* --- accessors ------------------------------------------------------------ */

const char *pc_proto_name(pc_proto p)
{
    switch (p) {
    case PC_PROTO_NONE: return "none";
    case PC_PROTO_HTTP: return "http";
    case PC_PROTO_TLS: return "tls";
    case PC_PROTO_RTSP: return "rtsp";
    case PC_PROTO_MMS: return "mms";
    case PC_PROTO_PASSTHROUGH: return "passthrough";
    }
    return "?";
}

uint64_t pc_policy_version(const pc_policy *p)
{
    return p ? p->version : 0;
}

const pc_firewall *pc_policy_firewall(const pc_policy *p)
{
    return p ? p->firewall : NULL;
}

const pc_proxy_settings *pc_policy_proxy(const pc_policy *p)
{
    return p ? &p->proxy : NULL;
}

pc_proto pc_policy_port_proto(const pc_policy *p, uint16_t port)
{
    if (!p)
        return PC_PROTO_NONE;
    size_t lo = 0, hi = p->nports;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->ports[mid].port == port)
            return (pc_proto)p->ports[mid].proto;
        if (p->ports[mid].port < port)
            lo = mid + 1;
        else
            hi = mid;
    }
    return PC_PROTO_NONE;
}

size_t pc_policy_ports(const pc_policy *p, uint16_t *ports, size_t max)
{
    if (!p)
        return 0;
    for (size_t i = 0; i < p->nports && i < max; i++)
        ports[i] = p->ports[i].port;
    return p->nports;
}

const pc_group *pc_policy_group_for(const pc_policy *p, const struct sockaddr *src)
{
    intptr_t idx;
    if (!p)
        return NULL;
    if (src && pc_cidrset_lookup(p->sources, src, &idx, NULL) && (size_t)idx < p->ngroups)
        return &p->groups[idx];
    return &p->defaults;
}

const pc_group *pc_policy_group_by_name(const pc_policy *p, const char *name)
{
    if (!p || !name)
        return NULL;
    if (strcmp(name, "defaults") == 0)
        return &p->defaults;
    for (size_t i = 0; i < p->ngroups; i++)
        if (strcmp(p->groups[i].name, name) == 0)
            return &p->groups[i];
    return NULL;
}

size_t pc_policy_group_count(const pc_policy *p)
{
    return p ? p->ngroups : 0;
}

const char *pc_group_name(const pc_group *g)
{
    return g ? g->name : NULL;
}

bool pc_group_skype_exception(const pc_group *g)
{
    return g && g->skype_exception;
}

pc_cert_mode pc_group_cert_mode(const pc_group *g)
{
    if (!g || g->require_certificate)
        return (g && g->skype_exception) ? PC_CERT_EXEMPT : PC_CERT_REQUIRED;
    return PC_CERT_OFF;
}

/* --- checks --------------------------------------------------------------- */

typedef struct verdict {
    pc_decision block; /* first rule that blocks */
    pc_decision exc;   /* first rule the exception lifted */
    bool have_block, have_exc;
} verdict;

/* Records a match; returns true once something blocks (the caller stops). */
static bool consider(const pc_group *g, const pc_rules *r, const char *rule, verdict *v)
{
    if (g->skype_exception && r->skype) {
        if (!v->have_exc) {
            v->exc = (pc_decision){false, true, r->name, rule};
            v->have_exc = true;
        }
        return false;
    }
    if (!v->have_block) {
        v->block = (pc_decision){true, false, r->name, rule};
        v->have_block = true;
    }
    return true;
}

static pc_decision result(const verdict *v)
{
    if (v->have_block)
        return v->block;
    if (v->have_exc)
        return v->exc;
    return (pc_decision){false, false, NULL, NULL};
}

/* The k-th rule source of a group in check order: its lists in use_lists
 * order, then its own rules (own, which is the defaults' when inherited). */
static const pc_rules *src_at(const pc_group *g, const pc_rules *own, size_t k)
{
    return k < g->nlists ? g->lists[k] : own;
}

static void addr_check(const pc_group *g, const struct sockaddr *addr, verdict *v)
{
    for (size_t k = 0; k <= g->nlists; k++) {
        const pc_rules *r = src_at(g, g->own_prefixes, k);
        intptr_t idx;
        if (r->prefixes && pc_cidrset_lookup(r->prefixes, addr, &idx, NULL) &&
            consider(g, r, r->prefix_text[idx], v))
            return;
    }
}

pc_decision pc_group_check_addr(const pc_group *g, const struct sockaddr *addr)
{
    verdict v = {0};
    if (g && addr)
        addr_check(g, addr, &v);
    return result(&v);
}

/* Parses an IP literal host ("192.0.2.1", "[2001:db8::1]", "2001:db8::1",
 * and the legacy IPv4 forms a resolver accepts, such as "3221225985" or
 * "0xc0.0.2.1"). */
static bool host_ip(const char *host, size_t len, struct sockaddr_storage *ss)
{
    char buf[64];
    memset(ss, 0, sizeof(*ss));
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, host, len);
    buf[len] = '\0';
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (strchr(buf, ':')) {
        if (inet_pton(AF_INET6, buf, &in6->sin6_addr) != 1)
            return false;
        in6->sin6_family = AF_INET6;
        return true;
    }
    if (buf[0] < '0' || buf[0] > '9')
        return false; /* "cafe.de" is a name */
    for (size_t i = 0; i < len; i++) {
        char ch = buf[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') ||
              ch == 'x' || ch == 'X' || ch == '.'))
            return false;
    }
    if (inet_aton(buf, &in->sin_addr) == 0)
        return false;
    in->sin_family = AF_INET;
    return true;
}

pc_decision pc_group_check_host(const pc_group *g, const char *host)
{
    verdict v = {0};
    if (!g || !host)
        return result(&v);
    size_t len = strlen(host);
    if (len && host[len - 1] == '.')
        len--;
    if (len == 0)
        return result(&v);

    struct sockaddr_storage ss;
    if (host_ip(host, len, &ss)) {
        addr_check(g, (const struct sockaddr *)&ss, &v);
        return result(&v);
    }

    /* Most specific suffix first. A suffix longer than any rule can be
     * skipped, which also bounds the work for a hostile, huge name. */
    size_t i = 0;
    for (;;) {
        if (i < len && len - i <= MAX_DOMAIN) {
            for (size_t k = 0; k <= g->nlists; k++) {
                const pc_rules *r = src_at(g, g->own_domains, k);
                const dom_entry *e = domset_find(&r->domains, host + i, len - i);
                if (e && consider(g, r, e->name, &v))
                    return result(&v);
            }
        }
        const char *dot = i < len ? memchr(host + i, '.', len - i) : NULL;
        if (!dot)
            break;
        i = (size_t)(dot - host) + 1;
    }
    return result(&v);
}

static int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes and lower-cases s[0..len) into out (len bytes suffice);
 * an invalid escape stays as it is. Returns the decoded length. */
static size_t decode_lower(const char *s, size_t len, char *out)
{
    size_t j = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        int h, l;
        if (ch == '%' && i + 2 < len && (h = hexval((unsigned char)s[i + 1])) >= 0 &&
            (l = hexval((unsigned char)s[i + 2])) >= 0) {
            ch = (unsigned char)(h * 16 + l);
            i += 2;
        }
        out[j++] = (char)lower(ch);
    }
    return j;
}

static bool ends_with(const char *s, size_t n, const char *suf, size_t sn)
{
    return sn <= n && memcmp(s + n - sn, suf, sn) == 0;
}

/* Checks the url suffix rules of g against views of the decoded text d:
 * each view is a length of d to test the suffixes at. */
static void suffix_check(const pc_group *g, const char *d, const size_t *views, size_t nv,
                         verdict *v)
{
    for (size_t k = 0; k <= g->nlists; k++) {
        const pc_rules *r = src_at(g, g->own_suffixes, k);
        for (size_t i = 0; i < r->nsuffixes; i++) {
            for (size_t w = 0; w < nv; w++) {
                if (ends_with(d, views[w], r->suffixes[i], r->suffix_len[i])) {
                    if (consider(g, r, r->suffixes[i], v))
                        return;
                    break;
                }
            }
        }
    }
}

/* A buffer for decoding len bytes: stack when small, else heap. */
typedef struct dbuf {
    char stack[1024];
    char *p;
} dbuf;

static char *dbuf_get(dbuf *b, size_t len)
{
    b->p = len <= sizeof(b->stack) ? b->stack : malloc(len);
    return b->p;
}

static void dbuf_free(dbuf *b)
{
    if (b->p != b->stack)
        free(b->p);
}

/* Fails closed: a check that cannot run blocks. */
static pc_decision oom_block(void)
{
    return (pc_decision){true, false, "policy", "out of memory"};
}

pc_decision pc_group_check_path(const pc_group *g, const char *path)
{
    verdict v = {0};
    if (!g || !path)
        return result(&v);
    size_t len = strlen(path);
    dbuf b;
    char *d = dbuf_get(&b, len);
    if (!d)
        return oom_block();
    size_t n = decode_lower(path, len, d);

    /* The views a server might act on: the whole decoded path; the path cut
     * at a decoded NUL; and each without ";params" in its last segment and
     * trailing slashes ("/skype.exe;x=1", "/skype.exe/"). */
    size_t views[4], nv = 0;
    views[nv++] = n;
    const char *nul = memchr(d, '\0', n);
    if (nul)
        views[nv++] = (size_t)(nul - d);
    for (size_t k = 0, base = nv; k < base; k++) {
        size_t m = views[k];
        size_t seg = m;
        while (seg > 0 && d[seg - 1] != '/')
            seg--;
        const char *semi = memchr(d + seg, ';', m - seg);
        size_t t = semi ? (size_t)(semi - d) : m;
        while (t > 0 && d[t - 1] == '/')
            t--;
        if (t != m)
            views[nv++] = t;
    }
    suffix_check(g, d, views, nv, &v);
    dbuf_free(&b);
    return result(&v);
}

/* Media types of Windows executables and installers. */
static const char *const exe_types[] = {
    "application/x-msdownload",
    "application/x-msdos-program",
    "application/x-dosexec",
    "application/x-ms-dos-executable",
    "application/vnd.microsoft.portable-executable",
    "application/x-ms-installer",
    "application/x-msi",
    "application/x-ms-application",
    "application/x-winexe",
    "application/x-exe",
    "application/exe",
    "application/msix",
    "application/msixbundle",
    "application/appx",
    "application/appxbundle",
    NULL,
};

/* File name extensions Windows runs or installs. */
static const char *const exe_exts[] = {
    ".exe", ".msi", ".msp",  ".msu",  ".dll",        ".scr",        ".com",
    ".cpl", ".pif", ".msix", ".appx", ".msixbundle", ".appxbundle", ".bat",
    ".cmd", ".vbs", ".vbe",  ".wsf",  ".hta",        ".ps1",        NULL,
};

static void exec_block(const pc_group *g, const char *rule, verdict *v)
{
    v->block = (pc_decision){true, false, g->exec_origin, rule};
    v->have_block = true;
}

pc_decision pc_group_check_download(const pc_group *g, const char *content_type,
                                    const char *filename, bool body_starts_mz)
{
    verdict v = {0};
    if (!g)
        return result(&v);

    if (filename && filename[0]) {
        /* The last segment of a URL path or a Windows path. */
        const char *base = filename;
        for (const char *s = filename; *s; s++)
            if (*s == '/' || *s == '\\')
                base = s + 1;
        size_t blen = strlen(base);
        dbuf b;
        char *d = dbuf_get(&b, blen);
        if (!d)
            return oom_block();
        size_t n = decode_lower(base, blen, d);
        const char *nul = memchr(d, '\0', n);
        if (nul)
            n = (size_t)(nul - d);
        /* Windows ignores trailing dots and spaces: "setup.exe. " runs. */
        while (n > 0 && (d[n - 1] == '.' || d[n - 1] == ' '))
            n--;
        suffix_check(g, d, &n, 1, &v);
        if (!v.have_block && g->block_executables) {
            size_t dot = n;
            while (dot > 0 && d[dot - 1] != '.')
                dot--;
            for (const char *const *e = exe_exts; dot > 0 && *e; e++) {
                size_t el = strlen(*e);
                if (n - (dot - 1) == el && memcmp(d + dot - 1, *e, el) == 0) {
                    exec_block(g, *e, &v);
                    break;
                }
            }
        }
        dbuf_free(&b);
    }

    if (!v.have_block && g->block_executables && content_type) {
        const char *s = content_type;
        while (*s == ' ' || *s == '\t')
            s++;
        size_t n = strcspn(s, ";");
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        for (const char *const *t = exe_types; *t; t++) {
            if (strlen(*t) == n && eq_nocase(s, *t, n)) {
                exec_block(g, *t, &v);
                break;
            }
        }
    }

    if (!v.have_block && g->block_executables && body_starts_mz)
        exec_block(g, "MZ", &v);
    return result(&v);
}
