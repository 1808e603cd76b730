/* pc_wire.c - the messages of the controller <-> node link: checked parsing
 * of one frame, and builders that leave room for the websocket header. */
#include "pc_wire.h"

#include "pc_buf.h"
#include "pc_text.h"

#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const type_names[] = {
    [PCW_HELLO] = "hello", [PCW_ACK] = "ack",       [PCW_EVENTS] = "events",
    [PCW_STATS] = "stats", [PCW_POLICY] = "policy", [PCW_EVENTS_ACK] = "events_ack",
    [PCW_PING] = "ping",   [PCW_ERROR] = "error",
};
#define NTYPES (sizeof(type_names) / sizeof(type_names[0]))

const char *pcw_type_name(pcw_type t)
{
    return (size_t)t < NTYPES ? type_names[t] : "unknown";
}

/* --- parsing -------------------------------------------------------------- */

typedef struct pctx {
    char *err;
    size_t errlen;
} pctx;

__attribute__((format(printf, 2, 3))) static int bad(pctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* JSON numbers are doubles: an integer is exact up to 2^53. */
#define INT_MAX53 9007199254740992.0

static int want_int(pctx *c, const cJSON *o, const char *k, const char *path, int64_t min,
                    int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v)
        return bad(c, "%s.%s: missing", path, k);
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != (double)(int64_t)d || d < (double)min || d > INT_MAX53)
        return bad(c, "%s.%s: must be an integer >= %lld", path, k, (long long)min);
    *out = (int64_t)d;
    return 0;
}

/* A string of minlen..maxlen bytes of text (UTF-8, no controls but none
 * either way: pc_text_ok); hex64 also wants 64 lower-case hex digits. */
static int want_str(pctx *c, const cJSON *o, const char *k, const char *path, size_t minlen,
                    size_t maxlen, bool nullable, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    *out = NULL;
    if (!v)
        return bad(c, "%s.%s: missing", path, k);
    if (nullable && cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v))
        return bad(c, "%s.%s: must be a string%s", path, k, nullable ? " or null" : "");
    size_t n = strlen(v->valuestring);
    if (n < minlen || n > maxlen) {
        if (minlen == maxlen)
            return bad(c, "%s.%s: must be %zu bytes", path, k, minlen);
        return bad(c, "%s.%s: must be %zu to %zu bytes", path, k, minlen, maxlen);
    }
    if (!pc_text_ok(v->valuestring))
        return bad(c, "%s.%s: must be UTF-8 text without control characters", path, k);
    *out = v->valuestring;
    return 0;
}

static int want_sha(pctx *c, const cJSON *o, const char *k, const char *path, const char **out)
{
    if (want_str(c, o, k, path, 64, 64, false, out) != 0)
        return -1;
    for (const char *p = *out; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return bad(c, "%s.%s: must be 64 lower-case hex digits", path, k);
    return 0;
}

static int want_obj(pctx *c, const cJSON *o, const char *k, const char *path, bool nullable,
                    const cJSON **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    *out = NULL;
    if (!v)
        return bad(c, "%s.%s: missing", path, k);
    if (nullable && cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsObject(v))
        return bad(c, "%s.%s: must be an object%s", path, k, nullable ? " or null" : "");
    *out = v;
    return 0;
}

static bool ident_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '.' || ch == '-';
}

static int parse_hello(pctx *c, const cJSON *r, pcw_msg *m)
{
    const cJSON *pol, *sp, *rev = cJSON_GetObjectItemCaseSensitive(r, "reverted");
    if (want_str(c, r, "node", "$", 1, 64, false, &m->u.hello.node) != 0)
        return -1;
    for (const char *p = m->u.hello.node; *p; p++)
        if (!ident_char(*p))
            return bad(c, "$.node: only letters, digits, '_', '.' and '-'");
    if (want_str(c, r, "software", "$", 1, 64, false, &m->u.hello.software) != 0 ||
        want_obj(c, r, "policy", "$", true, &pol) != 0 ||
        want_obj(c, r, "spool", "$", false, &sp) != 0)
        return -1;
    if (pol) {
        m->u.hello.has_policy = true;
        if (want_int(c, pol, "version", "$.policy", 1, &m->u.hello.policy_version) != 0 ||
            want_sha(c, pol, "sha256", "$.policy", &m->u.hello.policy_sha256) != 0)
            return -1;
    }
    if (want_int(c, sp, "last_seq", "$.spool", 0, &m->u.hello.last_seq) != 0 ||
        want_int(c, sp, "pending", "$.spool", 0, &m->u.hello.pending) != 0 ||
        want_int(c, sp, "dropped", "$.spool", 0, &m->u.hello.dropped) != 0)
        return -1;
    if (rev && !cJSON_IsNull(rev)) {
        if (!cJSON_IsObject(rev))
            return bad(c, "$.reverted: must be an object or null");
        m->u.hello.has_reverted = true;
        if (want_int(c, rev, "version", "$.reverted", 0, &m->u.hello.reverted_version) != 0 ||
            want_str(c, rev, "reason", "$.reverted", 1, 1024, false, &m->u.hello.reverted_reason) !=
                0)
            return -1;
    }
    return 0;
}

static int parse_ack(pctx *c, const cJSON *r, pcw_msg *m)
{
    const char *status;
    if (want_int(c, r, "version", "$", 1, &m->u.ack.version) != 0 ||
        want_sha(c, r, "sha256", "$", &m->u.ack.sha256) != 0 ||
        want_str(c, r, "status", "$", 1, 16, false, &status) != 0)
        return -1;
    if (strcmp(status, "applied") == 0)
        m->u.ack.applied = true;
    else if (strcmp(status, "failed") != 0)
        return bad(c, "$.status: must be \"applied\" or \"failed\"");
    if (want_str(c, r, "error", "$", 1, 4096, true, &m->u.ack.error) != 0)
        return -1;
    if (!m->u.ack.applied && !m->u.ack.error)
        return bad(c, "$.error: a failed ack must say why");
    if (m->u.ack.applied)
        m->u.ack.error = NULL;
    return 0;
}

static int parse_events(pctx *c, const cJSON *r, pcw_msg *m)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r, "events");
    if (!arr)
        return bad(c, "$.events: missing");
    if (!cJSON_IsArray(arr))
        return bad(c, "$.events: must be an array");
    int64_t prev = 0;
    size_t i = 0;
    char path[48];
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        if (i >= PCW_EVENTS_MAX)
            return bad(c, "$.events: at most %d events in one batch", PCW_EVENTS_MAX);
        snprintf(path, sizeof(path), "$.events[%zu]", i);
        if (!cJSON_IsObject(e))
            return bad(c, "%s: must be an object", path);
        int64_t seq = 0;
        if (want_int(c, e, "seq", path, 1, &seq) != 0)
            return -1;
        if (seq <= prev)
            return bad(c, "%s.seq: must be above the one before (%lld)", path, (long long)prev);
        if (i == 0)
            m->u.events.first_seq = seq;
        prev = seq;
    }
    if (i == 0)
        return bad(c, "$.events: must hold at least one event");
    m->u.events.events = arr;
    m->u.events.n = i;
    m->u.events.last_seq = prev;
    return want_int(c, r, "dropped", "$", 0, &m->u.events.dropped);
}

/* Counters: an object whose members are non-negative integers or objects of
 * them, two levels at most. */
static int check_counters(pctx *c, const cJSON *o, const char *path, int depth)
{
    for (const cJSON *v = o->child; v; v = v->next) {
        if (!v->string[0] || !pc_text_ok(v->string) || strlen(v->string) > 64)
            return bad(c, "%s: a counter's name must be 1 to 64 bytes of text", path);
        if (cJSON_IsObject(v) && depth < 2) {
            char sub[160];
            snprintf(sub, sizeof(sub), "%s.%s", path, v->string);
            if (check_counters(c, v, sub, depth + 1) != 0)
                return -1;
            continue;
        }
        double d = v->valuedouble;
        if (!cJSON_IsNumber(v) || d < 0 || d != (double)(int64_t)d || d > INT_MAX53)
            return bad(c, "%s.%s: must be a non-negative integer%s", path, v->string,
                       depth < 2 ? " or an object of them" : "");
    }
    return 0;
}

static int parse_stats(pctx *c, const cJSON *r, pcw_msg *m)
{
    if (want_int(c, r, "time", "$", 0, &m->u.stats.time) != 0 ||
        want_obj(c, r, "counters", "$", false, &m->u.stats.counters) != 0)
        return -1;
    return check_counters(c, m->u.stats.counters, "$.counters", 1);
}

static int parse_policy(pctx *c, const cJSON *r, pcw_msg *m)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(r, "document");
    if (want_int(c, r, "version", "$", 1, &m->u.policy.version) != 0 ||
        want_sha(c, r, "sha256", "$", &m->u.policy.sha256) != 0)
        return -1;
    if (!d)
        return bad(c, "$.document: missing");
    if (!cJSON_IsString(d) || !d->valuestring[0])
        return bad(c, "$.document: must be the document as a non-empty string");
    m->u.policy.document = d->valuestring;
    m->u.policy.document_len = strlen(d->valuestring);
    return 0;
}

static int parse_error(pctx *c, const cJSON *r, pcw_msg *m)
{
    if (want_str(c, r, "code", "$", 1, 64, false, &m->u.error.code) != 0 ||
        want_str(c, r, "message", "$", 0, 1024, false, &m->u.error.message) != 0)
        return -1;
    for (const char *p = m->u.error.code; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            return bad(c, "$.code: only a-z, 0-9 and '-'");
    return 0;
}

int pcw_parse(const char *buf, size_t len, pcw_msg *out, char *err, size_t errlen)
{
    pctx c = {err, errlen};
    memset(out, 0, sizeof(*out));
    const char *end = NULL;
    /* A NUL inside the frame would end cJSON's view of it early. */
    if (memchr(buf, '\0', len))
        return bad(&c, "$: a NUL byte in the frame");
    cJSON *r = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    if (!r) {
        size_t at = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
        return bad(&c, "$: not valid JSON (at byte %zu)", at);
    }
    if (end != buf + len) {
        /* Only whitespace may follow the object. */
        for (const char *p = end; p < buf + len; p++)
            if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
                cJSON_Delete(r);
                return bad(&c, "$: data after the JSON object (at byte %zu)", (size_t)(p - buf));
            }
    }
    int rc = -1;
    if (!cJSON_IsObject(r)) {
        bad(&c, "$: must be an object");
        goto done;
    }
    int64_t v = 0;
    const char *type;
    if (want_str(&c, r, "type", "$", 1, 32, false, &type) != 0 ||
        want_int(&c, r, "v", "$", 0, &v) != 0)
        goto done;
    if (v != PCW_VERSION) {
        bad(&c, "$.v: version %lld is not spoken here (only %d)", (long long)v, PCW_VERSION);
        goto done;
    }
    size_t t;
    for (t = 0; t < NTYPES; t++)
        if (strcmp(type, type_names[t]) == 0)
            break;
    if (t == NTYPES) {
        bad(&c, "$.type: unknown message type '%s'", type);
        goto done;
    }
    out->type = (pcw_type)t;
    out->root = r;
    switch (out->type) {
    case PCW_HELLO: rc = parse_hello(&c, r, out); break;
    case PCW_ACK: rc = parse_ack(&c, r, out); break;
    case PCW_EVENTS: rc = parse_events(&c, r, out); break;
    case PCW_STATS: rc = parse_stats(&c, r, out); break;
    case PCW_POLICY: rc = parse_policy(&c, r, out); break;
    case PCW_EVENTS_ACK:
        rc = want_int(&c, r, "seq", "$", 0, &out->u.events_ack.seq) != 0 ||
                     want_int(&c, r, "credit", "$", 0, &out->u.events_ack.credit) != 0
                 ? -1
                 : 0;
        break;
    case PCW_PING: rc = want_int(&c, r, "time", "$", 0, &out->u.ping.time); break;
    case PCW_ERROR: rc = parse_error(&c, r, out); break;
    }
done:
    if (rc != 0) {
        cJSON_Delete(r);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}

void pcw_msg_free(pcw_msg *m)
{
    if (!m)
        return;
    cJSON_Delete(m->root);
    memset(m, 0, sizeof(*m));
}

/* --- building ------------------------------------------------------------- */

void pcw_frame_free(pcw_frame *f)
{
    if (!f)
        return;
    free(f->mem);
    f->mem = NULL;
    f->len = 0;
}

/* A JSON string (or null), escaped by cJSON so every byte a peer chose
 * comes out as valid JSON. */
static void fb_json_str(pc_buf *b, const char *s)
{
    if (!s) {
        pc_buf_str(b, "null");
        return;
    }
    cJSON *v = cJSON_CreateString(s);
    char *t = v ? cJSON_PrintUnformatted(v) : NULL;
    if (t)
        pc_buf_str(b, t);
    else
        b->oom = true;
    free(t);
    cJSON_Delete(v);
}

/* Free text (an error, a reason) as the parser on the other side accepts
 * it: at most max bytes, control characters as spaces, and if what is left
 * is not UTF-8, every non-ASCII byte as '?'. NULL stays null. */
static void fb_text(pc_buf *b, const char *s, size_t max)
{
    if (!s) {
        pc_buf_str(b, "null");
        return;
    }
    size_t n = strlen(s);
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--; /* not inside a UTF-8 sequence */
    }
    char *t = malloc(n + 1);
    if (!t) {
        b->oom = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        t[i] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
    }
    t[n] = '\0';
    if (!pc_text_ok(t))
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)t[i] >= 0x80)
                t[i] = '?';
    fb_json_str(b, t);
    free(t);
}

static void fb_begin(pc_buf *b, pcw_type t)
{
    static const char zero[PCW_PRE];
    pc_buf_put(b, zero, PCW_PRE);
    pc_buf_printf(b, "{\"type\":\"%s\",\"v\":%d", type_names[t], PCW_VERSION);
}

static int fb_end(pc_buf *b, pcw_frame *f)
{
    pc_buf_str(b, "}");
    if (b->oom) {
        pc_buf_free(b);
        f->mem = NULL;
        f->len = 0;
        return -1;
    }
    f->mem = b->p;
    f->len = b->len - PCW_PRE;
    return 0;
}

int pcw_build_hello(pcw_frame *f, const char *node, const char *software, bool has_policy,
                    int64_t policy_version, const char *policy_sha256, int64_t last_seq,
                    int64_t pending, int64_t dropped, bool has_reverted, int64_t reverted_version,
                    const char *reverted_reason)
{
    pc_buf b = {0};
    fb_begin(&b, PCW_HELLO);
    pc_buf_str(&b, ",\"node\":");
    fb_json_str(&b, node);
    pc_buf_str(&b, ",\"software\":");
    fb_json_str(&b, software);
    if (has_policy) {
        pc_buf_printf(&b, ",\"policy\":{\"version\":%lld,\"sha256\":", (long long)policy_version);
        fb_json_str(&b, policy_sha256);
        pc_buf_str(&b, "}");
    } else {
        pc_buf_str(&b, ",\"policy\":null");
    }
    pc_buf_printf(&b, ",\"spool\":{\"last_seq\":%lld,\"pending\":%lld,\"dropped\":%lld}",
                  (long long)last_seq, (long long)pending, (long long)dropped);
    if (has_reverted) {
        pc_buf_printf(&b,
                      ",\"reverted\":{\"version\":%lld,\"reason\":", (long long)reverted_version);
        fb_text(&b, reverted_reason && *reverted_reason ? reverted_reason : "reverted", 1024);
        pc_buf_str(&b, "}");
    }
    return fb_end(&b, f);
}

int pcw_build_ack(pcw_frame *f, int64_t version, const char *sha256, bool applied,
                  const char *error)
{
    pc_buf b = {0};
    fb_begin(&b, PCW_ACK);
    pc_buf_printf(&b, ",\"version\":%lld,\"sha256\":", (long long)version);
    fb_json_str(&b, sha256);
    pc_buf_printf(&b, ",\"status\":\"%s\",\"error\":", applied ? "applied" : "failed");
    fb_text(&b, applied ? NULL : (error && *error ? error : "failed"), 4096);
    return fb_end(&b, f);
}

int pcw_build_events(pcw_frame *f, const char *const *events_json, const size_t *lens,
                     const int64_t *seqs, size_t n, int64_t dropped)
{
    pc_buf b = {0};
    fb_begin(&b, PCW_EVENTS);
    pc_buf_str(&b, ",\"events\":[");
    for (size_t i = 0; i < n; i++) {
        const char *e = events_json[i];
        size_t len = lens[i];
        /* Past the '{' and any space: the object's members follow "seq". */
        size_t k = 0;
        while (k < len && e[k] != '{')
            k++;
        k = k < len ? k + 1 : len;
        while (k < len && (e[k] == ' ' || e[k] == '\n'))
            k++;
        pc_buf_printf(&b, "%s{\"seq\":%lld", i ? "," : "", (long long)seqs[i]);
        if (k < len && e[k] != '}')
            pc_buf_str(&b, ",");
        pc_buf_put(&b, e + k, len - k);
        /* An event line may end in a newline: drop it, keep the '}'. */
        while (b.len > PCW_PRE && !b.oom && (b.p[b.len - 1] == '\n' || b.p[b.len - 1] == ' '))
            b.len--;
    }
    pc_buf_printf(&b, "],\"dropped\":%lld", (long long)dropped);
    return fb_end(&b, f);
}

int pcw_build_stats(pcw_frame *f, int64_t time_ms, const cJSON *counters)
{
    pc_buf b = {0};
    fb_begin(&b, PCW_STATS);
    pc_buf_printf(&b, ",\"time\":%lld,\"counters\":", (long long)time_ms);
    char *t = counters ? cJSON_PrintUnformatted(counters) : NULL;
    if (t)
        pc_buf_str(&b, t);
    else if (counters)
        b.oom = true;
    else
        pc_buf_str(&b, "{}");
    free(t);
    return fb_end(&b, f);
}

int pcw_build_policy(pcw_frame *f, int64_t version, const char *sha256, const char *document,
                     size_t document_len)
{
    pc_buf b = {0};
    fb_begin(&b, PCW_POLICY);
    pc_buf_printf(&b, ",\"version\":%lld,\"sha256\":", (long long)version);
    fb_json_str(&b, sha256);
    pc_buf_str(&b, ",\"document\":");
    char *copy = malloc(document_len + 1);
    if (copy) {
        memcpy(copy, document, document_len);
        copy[document_len] = '\0';
        fb_json_str(&b, copy);
    } else {
        b.oom = true;
    }
    free(copy);
    return fb_end(&b, f);
}

int pcw_build_events_ack(pcw_frame *f, int64_t seq, int64_t credit)
{
    pc_buf b = {0};
    fb_begin(&b, PCW_EVENTS_ACK);
    pc_buf_printf(&b, ",\"seq\":%lld,\"credit\":%lld", (long long)seq, (long long)credit);
    return fb_end(&b, f);
}

int pcw_build_ping(pcw_frame *f, int64_t time_ms)
{
    pc_buf b = {0};
    fb_begin(&b, PCW_PING);
    pc_buf_printf(&b, ",\"time\":%lld", (long long)time_ms);
    return fb_end(&b, f);
}

int pcw_build_error(pcw_frame *f, const char *code, const char *message)
{
    pc_buf b = {0};
    fb_begin(&b, PCW_ERROR);
    pc_buf_str(&b, ",\"code\":");
    fb_json_str(&b, code);
    pc_buf_str(&b, ",\"message\":");
    /* The message may quote a peer's bytes. */
    fb_text(&b, message ? message : "", 1024);
    return fb_end(&b, f);
}

void pcw_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    static const char hex[] = "0123456789abcdef";
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        out[0] = '\0';
        return;
    }
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}
