/* api.c - the controller's REST API (api.h): request plumbing (body limit,
 * content type, JSON errors), bearer-token auth with roles, the route table,
 * and the handlers. Every piece of state is in the store (store.h); the
 * compiler (compiler.h) makes the documents and explanations. The API adds
 * HTTP: ETag/If-Match, status codes, paging parameters, roles.
 * docs/api/openapi.json describes every route here; the system test
 * tests/system/test_controller.py checks both agree.
 */
#include "api.h"
#include "pc_text.h"

#include "compiler.h"
#include "enroll.h"
#include "store.h"
#include "stream.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* docs/api/openapi.json, embedded at build time (controller/CMakeLists.txt). */
extern const unsigned char api_openapi_json[];
extern const size_t api_openapi_json_len;

/* Bytes of a chunked body we read and drop past the limit before we stop
 * reading and close the connection. */
#define API_DISCARD_MAX (16u * 1024 * 1024)
/* The user the first admin token and, by default, new tokens belong to
 * (seeded by store_open). */
#define API_ADMIN_USER "admin"
/* JSON nesting we check for duplicate members; the store refuses deeper
 * bodies anyway. */
#define API_DEPTH_MAX 32

/* Threads serving requests (libmicrohttpd's pool); each has its own store
 * handle, since a store handle is used by one thread at a time. */
#define API_THREADS 2

/* Sign-in (docs/controller.md, "Sign-in and sessions"): the session cookie,
 * and failed attempts allowed per user name and per client address in a
 * window, kept in a table of this many entries (the oldest is forgotten
 * when it is full). */
#define API_COOKIE "pc_session"
#define API_SIGNIN_WINDOW_MS (5 * 60 * 1000)
#define API_SIGNIN_PER_NAME 5
#define API_SIGNIN_PER_ADDR 20
#define API_SIGNIN_SLOTS 4096

/* Failed sign-ins of one user name or client address since first_ms. */
typedef struct signin_slot {
    char key[72]; /* "n:<name>" or "a:<address>"; "" = free */
    int64_t first_ms;
    unsigned failures;
} signin_slot;

struct api {
    store *st; /* the opening thread's: first start, before api_start */
    char *db_path;
    struct MHD_Daemon *mhd;
    size_t body_max;
    uint16_t port;
    pthread_mutex_t lock; /* guards stores */
    store *stores[API_THREADS + 2];
    size_t nstores;
    stream_hub *streams;         /* the live tail of events */
    hub *hub;                    /* the node hub, or NULL (api_set_hub) */
    ca *ca;                      /* the CA whose fingerprint enrollment tokens carry */
    char *hub_name;              /* the host name nodes reach the hub by */
    pthread_mutex_t signin_lock; /* guards signins */
    signin_slot signins[API_SIGNIN_SLOTS];
    char *web_root; /* the dashboard's built files, or NULL (api_options) */
};

/* The serving thread's own store handle, opened on its first request. */
static __thread store *t_store;

typedef struct route route;

/* One request; lives from the first call of the access handler to the
 * completion callback. */
typedef struct req {
    api *a;
    store *st; /* this thread's store handle */
    struct MHD_Connection *c;
    const char *method; /* "HEAD" is served as "GET" */
    const char *url;
    char *body;
    size_t len, cap;
    size_t discarded;
    bool too_large;
    bool responded; /* a response was queued before the body was read */
    bool begun;     /* the access handler has seen this request */
    bool raw_bad;   /* the raw path has %2F, %5C or %00 (the dashboard refuses it) */
    const route *rt;
    store_principal who;  /* the token's user and role; zero without auth */
    store_session sess;   /* the session, when the cookie authenticated (sess.id != 0) */
    char set_cookie[160]; /* a Set-Cookie header for the response, or "" */
    char retry_after[24]; /* a Retry-After header for the response, or "" */
    const char *idseg;    /* the {id} segment of the URL, NUL-terminated copy */
    char idbuf[64];
} req;

typedef enum MHD_Result (*handler_fn)(req *r);

struct route {
    const char *path;    /* "/api/v1/regions/{id}" */
    const char *method;  /* "GET", "POST", "PUT", "PATCH", "DELETE" */
    store_role min_role; /* STORE_ROLE_NONE: no authentication */
    handler_fn fn;
    int arg; /* the store_kind or model_scope the handler serves */
};

/* --- responses -------------------------------------------------------------- */

static enum MHD_Result send_text(req *r, unsigned status, char *text, const char *etag,
                                 const char *location, const char *allow)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (etag)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    if (location)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, location);
    if (allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    if (r->set_cookie[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_SET_COOKIE, r->set_cookie);
    if (r->retry_after[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, r->retry_after);
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                "Bearer realm=\"portcullis\"");
    enum MHD_Result ret = MHD_queue_response(r->c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Sends obj (taken) as the body. */
static enum MHD_Result send_json(req *r, unsigned status, cJSON *obj, const char *etag,
                                 const char *location)
{
    char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!text)
        return MHD_NO;
    return send_text(r, status, text, etag, location, NULL);
}

/* {"error":{"code":..,"message":..,"field":..}}; field may be NULL. */
static enum MHD_Result send_error_allow(req *r, unsigned status, const char *code,
                                        const char *field, const char *allow, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static enum MHD_Result send_error_allow(req *r, unsigned status, const char *code,
                                        const char *field, const char *allow, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    if (!e || !cJSON_AddStringToObject(e, "code", code) ||
        !cJSON_AddStringToObject(e, "message", msg) ||
        !(field ? cJSON_AddStringToObject(e, "field", field) : cJSON_AddNullToObject(e, "field"))) {
        cJSON_Delete(root);
        return MHD_NO;
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text)
        return MHD_NO;
    return send_text(r, status, text, NULL, NULL, allow);
}

#define send_error(r, status, code, field, ...)                                                    \
    send_error_allow(r, status, code, field, NULL, __VA_ARGS__)

static enum MHD_Result send_internal(req *r, const char *what)
{
    fprintf(stderr, "portcullis-controller: %s %s: %s\n", r->method, r->url, what);
    return send_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", NULL,
                      "internal error; see the controller's log");
}

/* --- small helpers -------------------------------------------------------- */

static const char *header(req *r, const char *name)
{
    return MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, name);
}

/* A positive decimal id without sign, spaces or leading zeros. */
static bool parse_id(const char *s, int64_t *out)
{
    int64_t v = 0;
    if (!s || !*s || *s == '0' || strlen(s) > 18)
        return false;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return true;
}

/* An object's ETag header: its store etag (the revision that last changed
 * it), quoted. */
static void etag_of(const cJSON *obj, char out[32])
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(obj, "etag");
    snprintf(out, 32, "\"%" PRId64 "\"", cJSON_IsNumber(e) ? (int64_t)e->valuedouble : (int64_t)0);
}

static int64_t etag_num(const cJSON *obj)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(obj, "etag");
    return cJSON_IsNumber(e) ? (int64_t)e->valuedouble : 0;
}

/* RFC 9110 If-Match: "*" or a list of entity tags, strong comparison. */
static bool if_match_ok(const char *hdr, const char *etag)
{
    size_t n = strlen(etag);
    const char *p = hdr;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p)
            break;
        if (*p == '*')
            return true;
        if (strncmp(p, etag, n) == 0 && (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
            return true;
        while (*p && *p != ',')
            p++;
    }
    return false;
}

static bool content_type_json(req *r)
{
    const char *ct = header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    static const char want[] = "application/json";
    if (!ct)
        return false;
    while (*ct == ' ')
        ct++;
    if (strncasecmp(ct, want, sizeof(want) - 1) != 0)
        return false;
    ct += sizeof(want) - 1;
    return *ct == '\0' || *ct == ';' || *ct == ' ';
}

/* Looks for an object member given twice anywhere in j (cJSON keeps both,
 * and which one counts would be a guess). Returns 1 with path naming it in
 * the store's style ("name", "sources[2]", "ports.443"), -1 when j nests
 * deeper than API_DEPTH_MAX, 0 when there is none. */
static int duplicate_member(const cJSON *j, char *path, size_t cap, int depth)
{
    size_t len = strlen(path);
    int i = 0;
    if (depth > API_DEPTH_MAX)
        return -1;
    for (const cJSON *it = j->child; it; it = it->next, i++) {
        if (cJSON_IsObject(j)) {
            for (const cJSON *o = j->child; o != it; o = o->next) {
                if (strcmp(o->string, it->string) == 0) {
                    snprintf(path + len, cap - len, "%s%s", len ? "." : "", it->string);
                    return 1;
                }
            }
            snprintf(path + len, cap - len, "%s%s", len ? "." : "", it->string);
        } else {
            snprintf(path + len, cap - len, "[%d]", i);
        }
        if (it->child) {
            int d = duplicate_member(it, path, cap, depth + 1);
            if (d != 0)
                return d;
        }
        path[len] = '\0';
    }
    return 0;
}

/* Parses the request body as one JSON object. On failure sends the error
 * (400 bad JSON, 422 not an object) and returns NULL with *sent set. */
static cJSON *body_object(req *r, enum MHD_Result *sent)
{
    const char *end = NULL;
    if (r->len == 0) {
        *sent = send_error(r, MHD_HTTP_BAD_REQUEST, "bad_json", NULL,
                           "the request needs a JSON object body");
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLengthOpts(r->body, r->len, &end, false);
    if (!j) {
        size_t off = end && end >= r->body ? (size_t)(end - r->body) : 0;
        *sent = send_error(r, MHD_HTTP_BAD_REQUEST, "bad_json", NULL,
                           "the body is not valid JSON (at byte %zu)", off);
        return NULL;
    }
    for (const char *p = end; p < r->body + r->len; p++) {
        if (!isspace((unsigned char)*p)) {
            cJSON_Delete(j);
            *sent = send_error(r, MHD_HTTP_BAD_REQUEST, "bad_json", NULL,
                               "the body is not valid JSON (data after the value at byte %zu)",
                               (size_t)(p - r->body));
            return NULL;
        }
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", NULL,
                           "the body must be a JSON object");
        return NULL;
    }
    char path[256] = "";
    int d = duplicate_member(j, path, sizeof(path), 0);
    if (d != 0) {
        cJSON_Delete(j);
        *sent = d > 0 ? send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "duplicate_field", path,
                                   "field '%s' appears twice", path)
                      : send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", NULL,
                                   "the body nests deeper than %d levels", API_DEPTH_MAX);
        return NULL;
    }
    return j;
}

/* Refuses members not in allowed (NULL-terminated) and duplicate members. */
static bool fields_known(req *r, const cJSON *obj, const char *const *allowed,
                         enum MHD_Result *sent)
{
    for (const cJSON *it = obj->child; it; it = it->next) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(it->string, *a) == 0)
                ok = true;
        if (!ok) {
            *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "unknown_field", it->string,
                               "unknown field '%s'", it->string);
            return false;
        }
        for (const cJSON *o = obj->child; o != it; o = o->next) {
            if (strcmp(o->string, it->string) == 0) {
                *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "duplicate_field", it->string,
                                   "field '%s' appears twice", it->string);
                return false;
            }
        }
    }
    return true;
}

/* A string member: absent is fine unless required; otherwise a string of
 * min..max bytes, valid UTF-8, no control characters. */
static bool string_field(req *r, const cJSON *obj, const char *name, bool required, size_t min,
                         size_t max, const char **out, enum MHD_Result *sent)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    *out = NULL;
    if (!v) {
        if (!required)
            return true;
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "missing_field", name,
                           "field '%s' is required", name);
        return false;
    }
    if (!cJSON_IsString(v)) {
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "wrong_type", name,
                           "field '%s' must be a string", name);
        return false;
    }
    size_t n = strlen(v->valuestring);
    if (n < min || n > max) {
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", name,
                           "field '%s' must be %zu to %zu bytes long", name, min, max);
        return false;
    }
    if (!pc_text_ok(v->valuestring)) {
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", name,
                           "field '%s' must be UTF-8 text without control characters", name);
        return false;
    }
    *out = v->valuestring;
    return true;
}

/* Maps a store failure to its HTTP answer with the store's message and
 * field. */
static enum MHD_Result send_store_error(req *r, int rc)
{
    const char *msg = store_error_message(r->st), *f = store_error_field(r->st);
    const char *field = f && *f ? f : NULL;
    switch (rc) {
    case STORE_ENOTFOUND: return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", field, "%s", msg);
    case STORE_ECONFLICT: return send_error(r, MHD_HTTP_CONFLICT, "conflict", field, "%s", msg);
    case STORE_EINVALID:
        return send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", field, "%s", msg);
    case STORE_ESTALE:
        return send_error(r, MHD_HTTP_PRECONDITION_FAILED, "precondition_failed", field,
                          "the object changed since you read it: %s", msg);
    case STORE_EBUSY:
        return send_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "busy", NULL, "%s; try again", msg);
    default: return send_internal(r, msg);
    }
}

static enum MHD_Result send_no_content(req *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    if (r->set_cookie[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_SET_COOKIE, r->set_cookie);
    enum MHD_Result ret = MHD_queue_response(r->c, MHD_HTTP_NO_CONTENT, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Sends {"items": items} (taken). */
static enum MHD_Result send_items(req *r, cJSON *items)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddItemToObject(o, "items", items)) {
        cJSON_Delete(o);
        cJSON_Delete(items);
        return MHD_NO;
    }
    return send_json(r, MHD_HTTP_OK, o, NULL, NULL);
}

/* A JSON number that is a whole number in [min, max]. */
static bool json_int(const cJSON *v, int64_t min, int64_t max, int64_t *out)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < (double)min || v->valuedouble > (double)max ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

/* An integer member in [min, max]: absent is fine unless required (then
 * *out is left alone). */
static bool int_field(req *r, const cJSON *obj, const char *name, bool required, int64_t min,
                      int64_t max, int64_t *out, enum MHD_Result *sent)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v) {
        if (!required)
            return true;
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "missing_field", name,
                           "field '%s' is required", name);
        return false;
    }
    if (!cJSON_IsNumber(v)) {
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "wrong_type", name,
                           "field '%s' must be an integer", name);
        return false;
    }
    if (!json_int(v, min, max, out)) {
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", name,
                           "field '%s' must be a whole number from %" PRId64 " to %" PRId64, name,
                           min, max);
        return false;
    }
    return true;
}

/* --- query parameters ------------------------------------------------------ */

typedef struct query_check {
    const char *const *allowed;
    const char *unknown; /* the first parameter not in allowed */
} query_check;

static enum MHD_Result query_visit(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    query_check *q = cls;
    for (const char *const *a = q->allowed; *a; a++)
        if (strcmp(key, *a) == 0)
            return MHD_YES;
    q->unknown = key;
    return MHD_NO;
}

/* Refuses query parameters not in allowed (NULL-terminated): a misspelt
 * filter must not silently match everything. */
static bool query_known(req *r, const char *const *allowed, enum MHD_Result *sent)
{
    query_check q = {allowed, NULL};
    MHD_get_connection_values(r->c, MHD_GET_ARGUMENT_KIND, query_visit, &q);
    if (!q.unknown)
        return true;
    *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "unknown_field", q.unknown,
                       "unknown query parameter '%s'", q.unknown);
    return false;
}

static const char *query(req *r, const char *name)
{
    return MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, name);
}

/* Decimal digits only, at most 15 of them (safe in a double and in ms). */
static bool digits(const char *s, int64_t *out)
{
    int64_t v = 0;
    size_t n = strlen(s);
    if (n == 0 || n > 15)
        return false;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return true;
}

/* A time as milliseconds since 1970 UTC, or ISO 8601 UTC
 * "2026-11-24T23:59:01Z" with an optional fraction of a second. */
static bool parse_time(const char *s, int64_t *ms)
{
    static const char pat[] = "dddd-dd-ddTdd:dd:dd";
    int f[6] = {0}, k = 0, frac = 0, scale = 100;
    if (digits(s, ms))
        return true;
    if (strlen(s) < sizeof(pat) - 1)
        return false;
    for (size_t i = 0; i < sizeof(pat) - 1; i++) {
        if (pat[i] == 'd') {
            if (s[i] < '0' || s[i] > '9')
                return false;
            f[k] = f[k] * 10 + (s[i] - '0');
        } else if (s[i] != pat[i]) {
            return false;
        } else {
            k++;
        }
    }
    const char *p = s + sizeof(pat) - 1;
    if (*p == '.') {
        if (!isdigit((unsigned char)p[1]))
            return false;
        for (p++; isdigit((unsigned char)*p); p++) {
            frac += (*p - '0') * scale;
            scale /= 10;
        }
    }
    if (strcmp(p, "Z") != 0 || f[0] < 1970)
        return false;
    struct tm tm = {.tm_year = f[0] - 1900,
                    .tm_mon = f[1] - 1,
                    .tm_mday = f[2],
                    .tm_hour = f[3],
                    .tm_min = f[4],
                    .tm_sec = f[5]};
    time_t t = timegm(&tm);
    /* timegm normalizes 31 April to 1 May: refuse what it had to move. */
    if (t == (time_t)-1 || tm.tm_year != f[0] - 1900 || tm.tm_mon != f[1] - 1 ||
        tm.tm_mday != f[2] || tm.tm_hour != f[3] || tm.tm_min != f[4] || tm.tm_sec != f[5])
        return false;
    *ms = (int64_t)t * 1000 + frac;
    return true;
}

/* Query parameter kinds for query_parse. */
typedef enum { Q_TIME, Q_ID, Q_LIMIT, Q_TEXT } qkind;

/* Reads the parameter name into *i64 or *str (untouched when absent). */
static bool query_parse(req *r, const char *name, qkind k, int64_t *i64, const char **str,
                        enum MHD_Result *sent)
{
    const char *v = query(r, name);
    int64_t n = 0;
    const char *want = NULL;
    if (!v)
        return true;
    switch (k) {
    case Q_TIME:
        if (!parse_time(v, &n))
            want = "milliseconds since 1970 or an ISO 8601 UTC time (2026-11-24T23:59:01Z)";
        break;
    case Q_ID:
        if (!parse_id(v, &n))
            want = "a positive integer id";
        break;
    case Q_LIMIT:
        if (!digits(v, &n) || n < 1 || n > 1000)
            want = "a whole number from 1 to 1000";
        break;
    case Q_TEXT:
        if (!*v || strlen(v) > 256 || !pc_text_ok(v))
            want = "1 to 256 bytes of text";
        break;
    }
    if (want) {
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", name,
                           "query parameter '%s' must be %s", name, want);
        return false;
    }
    if (k == Q_TEXT)
        *str = v;
    else
        *i64 = n;
    return true;
}

/* --- handlers: health, openapi ---------------------------------------------- */

static enum MHD_Result h_health(req *r)
{
    int64_t rev = 0;
    bool db_ok = store_revision_current(r->st, &rev) == STORE_OK;
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "status", db_ok ? "ok" : "degraded") ||
        !cJSON_AddStringToObject(o, "db", db_ok ? "ok" : "error") ||
        !cJSON_AddStringToObject(o, "version", API_VERSION) ||
        !cJSON_AddNumberToObject(o, "revision", (double)rev)) {
        cJSON_Delete(o);
        return MHD_NO;
    }
    return send_json(r, db_ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, o, NULL, NULL);
}

static enum MHD_Result h_openapi(req *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        api_openapi_json_len, (void *)api_openapi_json, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result ret = MHD_queue_response(r->c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* --- handlers: policy objects (regions, offices, groups, rules, lists, nodes) */

/* Every accepted policy change: the hub recompiles and pushes. */
static void notify_policy(req *r)
{
    if (r->a->hub)
        hub_notify_policy(r->a->hub);
}

/* If-Match is required on writes to an object: 428 without, 412 when it
 * does not name the object's current ETag. */
static bool precondition(req *r, const cJSON *cur, enum MHD_Result *sent)
{
    char etag[32];
    const char *im = header(r, MHD_HTTP_HEADER_IF_MATCH);
    etag_of(cur, etag);
    if (!im) {
        *sent = send_error(r, MHD_HTTP_PRECONDITION_REQUIRED, "precondition_required", NULL,
                           "send If-Match with the ETag of the object (GET it first)");
        return false;
    }
    if (!if_match_ok(im, etag)) {
        *sent = send_error(r, MHD_HTTP_PRECONDITION_FAILED, "precondition_failed", NULL,
                           "the object changed since you read it (now ETag %s)", etag);
        return false;
    }
    return true;
}

/* The {id} of the URL; sends 404 when it is not an id. */
static bool url_id(req *r, int64_t *id, enum MHD_Result *sent)
{
    if (parse_id(r->idseg, id))
        return true;
    *sent =
        send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no %s '%s'",
                   r->rt->arg >= 0 ? store_kind_name((store_kind)r->rt->arg) : "object", r->idseg);
    return false;
}

/* A page of objects: ?cursor=<next_cursor of the page before>&limit=N
 * (default 100, at most 1000). */
static enum MHD_Result h_obj_list(req *r)
{
    static const char *const params[] = {"cursor", "limit", NULL};
    enum MHD_Result sent = MHD_NO;
    int64_t after = 0, limit = 0;
    cJSON *o = NULL;
    if (!query_known(r, params, &sent) || !query_parse(r, "cursor", Q_ID, &after, NULL, &sent) ||
        !query_parse(r, "limit", Q_LIMIT, &limit, NULL, &sent))
        return sent;
    int rc =
        store_object_page(r->st, (store_kind)r->rt->arg, after, limit ? (unsigned)limit : 100, &o);
    return rc == STORE_OK ? send_json(r, MHD_HTTP_OK, o, NULL, NULL) : send_store_error(r, rc);
}

static enum MHD_Result h_obj_get(req *r)
{
    enum MHD_Result sent = MHD_NO;
    int64_t id;
    cJSON *o = NULL;
    char etag[32];
    if (!url_id(r, &id, &sent))
        return sent;
    int rc = store_object_get(r->st, (store_kind)r->rt->arg, id, &o);
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    etag_of(o, etag);
    return send_json(r, MHD_HTTP_OK, o, etag, NULL);
}

static enum MHD_Result h_obj_create(req *r)
{
    enum MHD_Result sent = MHD_NO;
    cJSON *b = body_object(r, &sent), *o = NULL;
    char loc[96], etag[32];
    if (!b)
        return sent;
    int rc = store_object_create(r->st, (store_kind)r->rt->arg, b, r->who.user, &o);
    cJSON_Delete(b);
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    notify_policy(r);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    snprintf(loc, sizeof(loc), "%s/%" PRId64, r->rt->path,
             cJSON_IsNumber(id) ? (int64_t)id->valuedouble : (int64_t)0);
    etag_of(o, etag);
    return send_json(r, MHD_HTTP_CREATED, o, etag, loc);
}

/* PUT replaces the object with the body; PATCH (partial) replaces only the
 * members the body has, on the object as read. Either way the write carries
 * the etag checked here, so a change between the read and the write is a
 * 412 too. */
static enum MHD_Result obj_write(req *r, bool partial)
{
    enum MHD_Result sent = MHD_NO;
    store_kind k = (store_kind)r->rt->arg;
    int64_t id;
    cJSON *b = NULL, *cur = NULL, *o = NULL;
    char etag[32];
    int rc;
    /* The body first: a bad request is a 4xx for what it is, whatever the
     * state of the object. */
    if (!(b = body_object(r, &sent)) || !url_id(r, &id, &sent))
        goto out;
    if ((rc = store_object_get(r->st, k, id, &cur)) != STORE_OK) {
        sent = send_store_error(r, rc);
        goto out;
    }
    if (!precondition(r, cur, &sent))
        goto out;
    if (partial) {
        for (cJSON *it = b->child; it; it = it->next) {
            cJSON *dup = cJSON_Duplicate(it, true);
            if (!dup)
                goto out;
            bool ok = cJSON_HasObjectItem(cur, it->string)
                          ? cJSON_ReplaceItemInObjectCaseSensitive(cur, it->string, dup)
                          : cJSON_AddItemToObject(cur, it->string, dup);
            if (!ok) {
                cJSON_Delete(dup);
                goto out;
            }
        }
    }
    rc = store_object_update(r->st, k, id, partial ? cur : b, etag_num(cur), r->who.user, &o);
    if (rc != STORE_OK) {
        sent = send_store_error(r, rc);
        goto out;
    }
    notify_policy(r);
    etag_of(o, etag);
    sent = send_json(r, MHD_HTTP_OK, o, etag, NULL);
out:
    cJSON_Delete(cur);
    cJSON_Delete(b);
    return sent;
}

static enum MHD_Result h_obj_put(req *r)
{
    return obj_write(r, false);
}

static enum MHD_Result h_obj_patch(req *r)
{
    return obj_write(r, true);
}

static enum MHD_Result h_obj_delete(req *r)
{
    enum MHD_Result sent = MHD_NO;
    store_kind k = (store_kind)r->rt->arg;
    int64_t id;
    cJSON *cur = NULL;
    int rc;
    if (!url_id(r, &id, &sent))
        return sent;
    if ((rc = store_object_get(r->st, k, id, &cur)) != STORE_OK)
        return send_store_error(r, rc);
    if (precondition(r, cur, &sent)) {
        rc = store_object_delete(r->st, k, id, etag_num(cur), r->who.user);
        if (rc == STORE_OK)
            notify_policy(r);
        if (rc == STORE_OK && k == STORE_NODE && r->a->hub)
            hub_kick_node(r->a->hub, id); /* a deleted node's link goes too */
        sent = rc == STORE_OK ? send_no_content(r) : send_store_error(r, rc);
    }
    cJSON_Delete(cur);
    return sent;
}

/* --- handlers: settings ------------------------------------------------------ */

static enum MHD_Result h_settings_list(req *r)
{
    cJSON *items = NULL;
    int rc = store_settings_list(r->st, &items);
    return rc == STORE_OK ? send_items(r, items) : send_store_error(r, rc);
}

/* The scope of a settings URL: global, or region/office {id}. */
static bool settings_scope(req *r, model_scope *scope, int64_t *id, enum MHD_Result *sent)
{
    *scope = (model_scope)r->rt->arg;
    *id = 0;
    if (*scope == MODEL_SCOPE_GLOBAL || parse_id(r->idseg, id))
        return true;
    *sent = send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no %s '%s'",
                       *scope == MODEL_SCOPE_REGION ? "region" : "office", r->idseg);
    return false;
}

static enum MHD_Result h_settings_get(req *r)
{
    enum MHD_Result sent = MHD_NO;
    model_scope scope;
    int64_t id;
    cJSON *o = NULL;
    char etag[32];
    if (!settings_scope(r, &scope, &id, &sent))
        return sent;
    int rc = store_settings_get(r->st, scope, id, &o);
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    etag_of(o, etag);
    return send_json(r, MHD_HTTP_OK, o, etag, NULL);
}

static enum MHD_Result h_settings_put(req *r)
{
    enum MHD_Result sent = MHD_NO;
    model_scope scope;
    int64_t id;
    cJSON *b = NULL, *cur = NULL, *o = NULL;
    char etag[32];
    int rc;
    if (!(b = body_object(r, &sent)) || !settings_scope(r, &scope, &id, &sent))
        goto out;
    if ((rc = store_settings_get(r->st, scope, id, &cur)) != STORE_OK) {
        sent = send_store_error(r, rc);
        goto out;
    }
    if (!precondition(r, cur, &sent))
        goto out;
    rc = store_settings_put(r->st, scope, id, b, etag_num(cur), r->who.user, &o);
    if (rc != STORE_OK) {
        sent = send_store_error(r, rc);
        goto out;
    }
    notify_policy(r);
    etag_of(o, etag);
    sent = send_json(r, MHD_HTTP_OK, o, etag, NULL);
out:
    cJSON_Delete(cur);
    cJSON_Delete(b);
    return sent;
}

/* --- handlers: revisions ----------------------------------------------------- */

static enum MHD_Result h_revisions_list(req *r)
{
    static const char *const params[] = {"before", "limit", NULL};
    enum MHD_Result sent = MHD_NO;
    int64_t before = 0, limit = 0;
    cJSON *items = NULL;
    if (!query_known(r, params, &sent) || !query_parse(r, "before", Q_ID, &before, NULL, &sent) ||
        !query_parse(r, "limit", Q_LIMIT, &limit, NULL, &sent))
        return sent;
    int rc = store_revision_list(r->st, before, (unsigned)limit, &items);
    return rc == STORE_OK ? send_items(r, items) : send_store_error(r, rc);
}

static enum MHD_Result h_revision_get(req *r)
{
    int64_t id;
    cJSON *o = NULL;
    if (!parse_id(r->idseg, &id))
        return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no revision '%s'", r->idseg);
    int rc = store_revision_get(r->st, id, &o);
    return rc == STORE_OK ? send_json(r, MHD_HTTP_OK, o, NULL, NULL) : send_store_error(r, rc);
}

static enum MHD_Result h_revisions_diff(req *r)
{
    static const char *const params[] = {"from", "to", NULL};
    enum MHD_Result sent = MHD_NO;
    int64_t from = 0, to = 0;
    cJSON *o = NULL;
    int rc;
    if (!query_known(r, params, &sent) || !query_parse(r, "from", Q_ID, &from, NULL, &sent) ||
        !query_parse(r, "to", Q_ID, &to, NULL, &sent))
        return sent;
    if (!from)
        return send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "missing_field", "from",
                          "query parameter 'from' is required");
    if (!to && (rc = store_revision_current(r->st, &to)) != STORE_OK)
        return send_store_error(r, rc);
    rc = store_revision_diff(r->st, from, to, &o);
    return rc == STORE_OK ? send_json(r, MHD_HTTP_OK, o, NULL, NULL) : send_store_error(r, rc);
}

/* A body is optional here; when given it must be an empty object. */
static bool empty_body(req *r, enum MHD_Result *sent)
{
    static const char *const none[] = {NULL};
    if (r->len == 0)
        return true;
    cJSON *b = body_object(r, sent);
    bool ok = b && fields_known(r, b, none, sent);
    cJSON_Delete(b);
    return ok;
}

static enum MHD_Result h_revision_rollback(req *r)
{
    enum MHD_Result sent = MHD_NO;
    int64_t id, rev = 0;
    char loc[64];
    if (!empty_body(r, &sent))
        return sent;
    if (!parse_id(r->idseg, &id))
        return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no revision '%s'", r->idseg);
    int rc = store_rollback(r->st, id, r->who.user, &rev);
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    notify_policy(r);
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddNumberToObject(o, "revision", (double)rev) ||
        !cJSON_AddNumberToObject(o, "restored", (double)id)) {
        cJSON_Delete(o);
        return MHD_NO;
    }
    snprintf(loc, sizeof(loc), "/api/v1/revisions/%" PRId64, rev);
    return send_json(r, MHD_HTTP_CREATED, o, NULL, loc);
}

/* --- handlers: audit, events ------------------------------------------------- */

static enum MHD_Result h_audit(req *r)
{
    static const char *const params[] = {"from",      "to",     "actor", "object_type",
                                         "object_id", "cursor", "limit", NULL};
    enum MHD_Result sent = MHD_NO;
    store_audit_query q = {0};
    int64_t limit = 0;
    cJSON *o = NULL;
    if (!query_known(r, params, &sent) ||
        !query_parse(r, "from", Q_TIME, &q.from_ms, NULL, &sent) ||
        !query_parse(r, "to", Q_TIME, &q.to_ms, NULL, &sent) ||
        !query_parse(r, "actor", Q_TEXT, NULL, &q.actor, &sent) ||
        !query_parse(r, "object_type", Q_TEXT, NULL, &q.object_type, &sent) ||
        !query_parse(r, "object_id", Q_TEXT, NULL, &q.object_id, &sent) ||
        !query_parse(r, "cursor", Q_TEXT, NULL, &q.cursor, &sent) ||
        !query_parse(r, "limit", Q_LIMIT, &limit, NULL, &sent))
        return sent;
    q.limit = (unsigned)limit;
    int rc = store_audit_list(r->st, &q, &o);
    return rc == STORE_OK ? send_json(r, MHD_HTTP_OK, o, NULL, NULL) : send_store_error(r, rc);
}

static enum MHD_Result h_events(req *r)
{
    static const char *const params[] = {"from", "to",   "office", "region", "group",
                                         "type", "node", "cursor", "limit",  NULL};
    enum MHD_Result sent = MHD_NO;
    store_event_query q = {0};
    int64_t limit = 0;
    cJSON *o = NULL;
    if (!query_known(r, params, &sent) ||
        !query_parse(r, "from", Q_TIME, &q.from_ms, NULL, &sent) ||
        !query_parse(r, "to", Q_TIME, &q.to_ms, NULL, &sent) ||
        !query_parse(r, "office", Q_ID, &q.office_id, NULL, &sent) ||
        !query_parse(r, "region", Q_ID, &q.region_id, NULL, &sent) ||
        !query_parse(r, "group", Q_TEXT, NULL, &q.group, &sent) ||
        !query_parse(r, "type", Q_TEXT, NULL, &q.type, &sent) ||
        !query_parse(r, "node", Q_TEXT, NULL, &q.node, &sent) ||
        !query_parse(r, "cursor", Q_TEXT, NULL, &q.cursor, &sent) ||
        !query_parse(r, "limit", Q_LIMIT, &limit, NULL, &sent))
        return sent;
    if (q.type && strcmp(q.type, "block") != 0 && strcmp(q.type, "exception") != 0 &&
        strcmp(q.type, "allow") != 0)
        return send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "type",
                          "query parameter 'type' must be block, exception or allow");
    q.limit = (unsigned)limit;
    int rc = store_events_query(r->st, &q, &o);
    return rc == STORE_OK ? send_json(r, MHD_HTTP_OK, o, NULL, NULL) : send_store_error(r, rc);
}

static store *stream_store(void *arg);

/* The live tail (stream.h): the filters of h_events but the time range,
 * and where to start: the event after Last-Event-ID (what a reconnecting
 * EventSource sends) or "after", else the events stored from now on. */
static enum MHD_Result h_events_stream(req *r)
{
    static const char *const params[] = {"office", "region", "group", "type",
                                         "node",   "after",  NULL};
    enum MHD_Result sent = MHD_NO;
    store_event_query q = {0};
    int64_t after = -1;
    const char *after_txt = NULL;
    if (!query_known(r, params, &sent) ||
        !query_parse(r, "office", Q_ID, &q.office_id, NULL, &sent) ||
        !query_parse(r, "region", Q_ID, &q.region_id, NULL, &sent) ||
        !query_parse(r, "group", Q_TEXT, NULL, &q.group, &sent) ||
        !query_parse(r, "type", Q_TEXT, NULL, &q.type, &sent) ||
        !query_parse(r, "node", Q_TEXT, NULL, &q.node, &sent) ||
        !query_parse(r, "after", Q_TEXT, NULL, &after_txt, &sent))
        return sent;
    if (q.type && strcmp(q.type, "block") != 0 && strcmp(q.type, "exception") != 0 &&
        strcmp(q.type, "allow") != 0)
        return send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "type",
                          "query parameter 'type' must be block, exception or allow");
    const char *last = MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "Last-Event-ID");
    const char *start = last ? last : after_txt;
    if (start) {
        char *end;
        errno = 0;
        long long v = strtoll(start, &end, 10);
        if (errno || *end || end == start || v < 0)
            return send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid",
                              last ? "Last-Event-ID" : "after",
                              "must be the id of an event (a non-negative integer)");
        after = v;
    } else if (store_events_last_id(r->st, &after) != STORE_OK) {
        return send_store_error(r, STORE_ERR);
    }
    if (!r->a->streams)
        return send_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "busy", NULL,
                          "the live tail is not running");
    struct MHD_Response *resp = stream_response(r->a->streams, r->c, &q, after);
    if (!resp)
        return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(r->c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* --- handlers: compiled documents, explain ----------------------------------- */

/* Checks that office id exists (sending the store's answer when not) and
 * loads the newest model into *m. */
static bool load_for_office(req *r, int64_t id, model *m, const char *field, enum MHD_Result *sent)
{
    cJSON *office = NULL;
    int rc = store_object_get(r->st, STORE_OFFICE, id, &office);
    cJSON_Delete(office);
    if (rc == STORE_ENOTFOUND && field) {
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", field,
                           "there is no office %" PRId64, id);
        return false;
    }
    if (rc == STORE_OK)
        rc = store_model_load(r->st, 0, m);
    if (rc != STORE_OK) {
        *sent = send_store_error(r, rc);
        return false;
    }
    return true;
}

/* The office's document exactly as the compiler made it (the bytes its
 * sha256 is of), wrapped: {"office_id", "revision", "sha256", "document"}. */
static enum MHD_Result h_office_document(req *r)
{
    enum MHD_Result sent = MHD_NO;
    model m = {0};
    int64_t id;
    char *doc = NULL, *text = NULL, sha[65], err[COMPILER_ERR_MAX], etag[72];
    if (!url_id(r, &id, &sent) || !load_for_office(r, id, &m, NULL, &sent))
        return sent;
    if (compiler_office_document(&m, id, &doc, sha, err, sizeof(err)) != 0) {
        sent = send_error(r, MHD_HTTP_CONFLICT, "compile_error", NULL,
                          "the stored policy does not compile: %s", err);
    } else if (asprintf(&text,
                        "{\"office_id\":%" PRId64 ",\"revision\":%" PRId64
                        ",\"sha256\":\"%s\",\"document\":%s}",
                        id, m.revision, sha, doc) < 0) {
        sent = MHD_NO;
    } else {
        snprintf(etag, sizeof(etag), "\"%s\"", sha);
        sent = send_text(r, MHD_HTTP_OK, text, etag, NULL, NULL);
    }
    free(doc);
    model_free(&m);
    return sent;
}

static enum MHD_Result h_explain(req *r)
{
    static const char *const fields[] = {"office", "source", "host", "port", "path", NULL};
    enum MHD_Result sent = MHD_NO;
    cJSON *b = body_object(r, &sent);
    const char *source, *host, *path;
    int64_t office = 0, port = 0;
    unsigned char addr[16];
    model m = {0};
    compiler_explanation e = {0};
    char err[COMPILER_ERR_MAX];
    bool loaded = false;
    if (!b)
        return sent;
    if (!fields_known(r, b, fields, &sent) ||
        !int_field(r, b, "office", true, 1, INT64_C(999999999999999), &office, &sent) ||
        !string_field(r, b, "source", true, 1, 64, &source, &sent) ||
        !string_field(r, b, "host", false, 0, 253, &host, &sent) ||
        !int_field(r, b, "port", true, 1, 65535, &port, &sent) ||
        !string_field(r, b, "path", false, 1, 4096, &path, &sent))
        goto out;
    if (inet_pton(AF_INET, source, addr) != 1 && inet_pton(AF_INET6, source, addr) != 1) {
        sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "source",
                          "source must be an IPv4 or IPv6 address");
        goto out;
    }
    if (!(loaded = load_for_office(r, office, &m, "office", &sent)))
        goto out;
    if (compiler_explain_path(&m, office, source, host, (uint16_t)port, path, &e, err,
                              sizeof(err)) != 0) {
        sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", NULL, "%s", err);
        goto out;
    }
    char *text = compiler_explanation_json(&e);
    sent = text ? send_text(r, MHD_HTTP_OK, text, NULL, NULL, NULL) : MHD_NO;
out:
    compiler_explanation_free(&e);
    if (loaded)
        model_free(&m);
    cJSON_Delete(b);
    return sent;
}

/* --- handler: dry run --------------------------------------------------------- */

typedef struct dry_req {
    int kind; /* a store_kind, or -1 for settings */
    model_scope scope;
    int op; /* 0 create, 1 update, 2 delete */
    int64_t id;
    const cJSON *body;
    const char *actor;
} dry_req;

static int dry_apply(store *st, void *arg)
{
    const dry_req *d = arg;
    if (d->kind < 0)
        return store_settings_put(st, d->scope, d->id, d->body, 0, d->actor, NULL);
    switch (d->op) {
    case 0: return store_object_create(st, (store_kind)d->kind, d->body, d->actor, NULL);
    case 1: return store_object_update(st, (store_kind)d->kind, d->id, d->body, 0, d->actor, NULL);
    default: return store_object_delete(st, (store_kind)d->kind, d->id, 0, d->actor);
    }
}

/* POST /dry-run {"kind", "op", "id", "scope", "body"}: the proposed change is
 * applied inside a transaction that is rolled back (store_dry_run); the
 * answer lists the offices whose documents would change, and how. */
static enum MHD_Result h_dry_run(req *r)
{
    static const char *const fields[] = {"kind", "op", "id", "scope", "body", NULL};
    static const char *const ops[] = {"create", "update", "delete"};
    static const char *const scopes[] = {"global", "region", "office"};
    enum MHD_Result sent = MHD_NO;
    cJSON *b = body_object(r, &sent);
    const char *kind, *op, *scope;
    model before = {0}, after = {0};
    compiler_change *changes = NULL;
    size_t n = 0;
    bool have_before = false, have_after = false;
    char err[COMPILER_ERR_MAX];
    dry_req d = {.kind = -2, .op = -1, .actor = r->who.user};
    if (!b)
        return sent;
    if (!fields_known(r, b, fields, &sent) ||
        !string_field(r, b, "kind", true, 1, 16, &kind, &sent) ||
        !string_field(r, b, "op", false, 1, 16, &op, &sent) ||
        !string_field(r, b, "scope", false, 1, 16, &scope, &sent) ||
        !int_field(r, b, "id", false, 0, INT64_C(999999999999999), &d.id, &sent))
        goto out;
    if (strcmp(kind, "settings") == 0) {
        d.kind = -1;
        d.op = 1;
        for (int i = 0; scope && i < 3; i++)
            if (strcmp(scope, scopes[i]) == 0)
                d.scope = (model_scope)i;
        if (!scope || (strcmp(scope, scopes[d.scope]) != 0)) {
            sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "scope",
                              "settings need a scope: global, region or office");
            goto out;
        }
    } else {
        for (int k = STORE_REGION; k <= STORE_NODE; k++)
            if (strcmp(kind, store_kind_name((store_kind)k)) == 0)
                d.kind = k;
        for (int i = 0; op && i < 3; i++)
            if (strcmp(op, ops[i]) == 0)
                d.op = i;
        if (d.kind < 0) {
            sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "kind",
                              "kind must be region, office, group, rule, list, node or settings");
            goto out;
        }
        if (d.op < 0) {
            sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "op",
                              "op must be create, update or delete");
            goto out;
        }
    }
    d.body = cJSON_GetObjectItemCaseSensitive(b, "body");
    if (d.op != 2 && !cJSON_IsObject(d.body)) {
        sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "missing_field", "body",
                          "field 'body' must be the object as it would be sent");
        goto out;
    }
    int rc = store_model_load(r->st, 0, &before);
    have_before = rc == STORE_OK;
    if (rc == STORE_OK)
        rc = store_dry_run(r->st, dry_apply, &d, &after);
    have_after = have_before && rc == STORE_OK;
    if (rc != STORE_OK) {
        sent = send_store_error(r, rc);
        goto out;
    }
    if (compiler_diff(&before, &after, &changes, &n, err, sizeof(err)) != 0) {
        sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "compile_error", NULL,
                          "the change would not compile: %s", err);
        goto out;
    }
    char *text = compiler_changes_json(changes, n);
    sent = text ? send_text(r, MHD_HTTP_OK, text, NULL, NULL, NULL) : MHD_NO;
out:
    compiler_changes_free(changes, n);
    if (have_after)
        model_free(&after);
    if (have_before)
        model_free(&before);
    cJSON_Delete(b);
    return sent;
}

/* --- handlers: users and tokens (admin) -------------------------------------- */

static enum MHD_Result h_users_list(req *r)
{
    cJSON *items = NULL;
    int rc = store_user_list(r->st, &items);
    return rc == STORE_OK ? send_items(r, items) : send_store_error(r, rc);
}

static enum MHD_Result h_users_create(req *r)
{
    enum MHD_Result sent = MHD_NO;
    cJSON *b = body_object(r, &sent), *o = NULL;
    char loc[64];
    if (!b)
        return sent;
    int rc = store_user_create(r->st, b, r->who.user, &o);
    cJSON_Delete(b);
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    snprintf(loc, sizeof(loc), "/api/v1/users/%" PRId64,
             cJSON_IsNumber(id) ? (int64_t)id->valuedouble : (int64_t)0);
    return send_json(r, MHD_HTTP_CREATED, o, NULL, loc);
}

static enum MHD_Result h_user_get(req *r)
{
    int64_t id;
    cJSON *o = NULL;
    if (!parse_id(r->idseg, &id))
        return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no user '%s'", r->idseg);
    int rc = store_user_get(r->st, id, &o);
    return rc == STORE_OK ? send_json(r, MHD_HTTP_OK, o, NULL, NULL) : send_store_error(r, rc);
}

static enum MHD_Result h_user_delete(req *r)
{
    int64_t id;
    if (!parse_id(r->idseg, &id))
        return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no user '%s'", r->idseg);
    int rc = store_user_delete(r->st, id, r->who.user);
    return rc == STORE_OK ? send_no_content(r) : send_store_error(r, rc);
}

static enum MHD_Result h_tokens_list(req *r)
{
    cJSON *items = NULL;
    int rc = store_token_list(r->st, &items);
    return rc == STORE_OK ? send_items(r, items) : send_store_error(r, rc);
}

/* {"role", "label"?, "user"?}: a token for the named user, by default the
 * seeded "admin". */
static enum MHD_Result h_tokens_create(req *r)
{
    static const char *const fields[] = {"role", "label", "user", NULL};
    enum MHD_Result sent = MHD_NO;
    const char *role, *label, *user;
    cJSON *b = body_object(r, &sent), *o = NULL;
    char *token = NULL, loc[64];
    int64_t uid = 0;
    int rc;
    if (!b)
        return sent;
    if (!fields_known(r, b, fields, &sent) ||
        !string_field(r, b, "role", true, 1, 16, &role, &sent) ||
        !string_field(r, b, "label", false, 0, 128, &label, &sent) ||
        !string_field(r, b, "user", false, 1, 64, &user, &sent))
        goto out;
    if (store_role_from_name(role) == STORE_ROLE_NONE) {
        sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "role",
                          "role must be 'admin', 'operator' or 'viewer'");
        goto out;
    }
    rc = store_user_find(r->st, user ? user : API_ADMIN_USER, &uid);
    if (rc == STORE_ENOTFOUND) {
        sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "user",
                          "there is no user '%s'", user ? user : API_ADMIN_USER);
        goto out;
    }
    if (rc == STORE_OK)
        rc = store_token_create(r->st, uid, store_role_from_name(role), label, r->who.user, &token,
                                &o);
    if (rc != STORE_OK) {
        sent = send_store_error(r, rc);
        goto out;
    }
    if (!cJSON_AddStringToObject(o, "token", token)) {
        sent = MHD_NO;
        goto out;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    snprintf(loc, sizeof(loc), "/api/v1/tokens/%" PRId64,
             cJSON_IsNumber(id) ? (int64_t)id->valuedouble : (int64_t)0);
    sent = send_json(r, MHD_HTTP_CREATED, o, NULL, loc);
    o = NULL;
out:
    if (o) {
        /* The plaintext may be in it: wipe before freeing. */
        cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "token");
        if (cJSON_IsString(t))
            explicit_bzero(t->valuestring, strlen(t->valuestring));
        cJSON_Delete(o);
    }
    if (token) {
        explicit_bzero(token, strlen(token));
        free(token);
    }
    cJSON_Delete(b);
    return sent;
}

static enum MHD_Result h_token_get(req *r)
{
    int64_t id;
    cJSON *items = NULL, *found = NULL;
    if (!parse_id(r->idseg, &id))
        return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no token '%s'", r->idseg);
    int rc = store_token_list(r->st, &items);
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    const cJSON *it;
    cJSON_ArrayForEach(it, items)
    {
        int64_t tid;
        if (json_int(cJSON_GetObjectItemCaseSensitive(it, "id"), 1, INT64_MAX / 2, &tid) &&
            tid == id) {
            found = cJSON_Duplicate(it, true);
            break;
        }
    }
    cJSON_Delete(items);
    if (!found)
        return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "there is no token %" PRId64,
                          id);
    return send_json(r, MHD_HTTP_OK, found, NULL, NULL);
}

/* Revokes: the token stays listed with revoked_at. */
static enum MHD_Result h_token_delete(req *r)
{
    int64_t id;
    if (!parse_id(r->idseg, &id))
        return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no token '%s'", r->idseg);
    int rc = store_token_revoke(r->st, id, r->who.user);
    return rc == STORE_OK ? send_no_content(r) : send_store_error(r, rc);
}

/* --- handlers: node link (enrollment, revocation, rollout, hub) -------------- */

static bool hub_ready(req *r, enum MHD_Result *sent)
{
    if (r->a->hub && r->a->ca)
        return true;
    *sent = send_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "hub_unavailable", NULL,
                       "the node hub is not running");
    return false;
}

/* The node of the URL, which must exist; *node (optional) is the caller's. */
static bool url_node(req *r, int64_t *id, cJSON **node, enum MHD_Result *sent)
{
    cJSON *o = NULL;
    int rc;
    if (!parse_id(r->idseg, id)) {
        *sent = send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no node '%s'", r->idseg);
        return false;
    }
    if ((rc = store_object_get(r->st, STORE_NODE, *id, &o)) != STORE_OK) {
        *sent = send_store_error(r, rc);
        return false;
    }
    if (node)
        *node = o;
    else
        cJSON_Delete(o);
    return true;
}

static void wipe_string_member(cJSON *o, const char *name)
{
    cJSON *t = cJSON_GetObjectItemCaseSensitive(o, name);
    if (cJSON_IsString(t))
        explicit_bzero(t->valuestring, strlen(t->valuestring));
}

/* POST {"ttl_seconds"?}: a one-time token for the node and the command that
 * uses it. The secret exists only in this answer. */
static enum MHD_Result h_enroll_create(req *r)
{
    static const char *const fields[] = {"ttl_seconds", NULL};
    enum MHD_Result sent = MHD_NO;
    cJSON *b = NULL, *o = NULL;
    char *secret = NULL, *token = NULL, *command = NULL, loc[96];
    int64_t id, ttl = 86400;
    int rc;
    if (r->len > 0 && (!(b = body_object(r, &sent)) || !fields_known(r, b, fields, &sent) ||
                       !int_field(r, b, "ttl_seconds", false, 60, 604800, &ttl, &sent)))
        goto out;
    if (!hub_ready(r, &sent) || !url_node(r, &id, NULL, &sent))
        goto out;
    rc = store_enroll_token_create(r->st, id, ttl, r->who.user, &secret, &o);
    if (rc != STORE_OK) {
        sent = send_store_error(r, rc);
        goto out;
    }
    bool v6 = strchr(r->a->hub_name, ':') && r->a->hub_name[0] != '[';
    if (!(token = enroll_token_format(secret, r->a->ca->fingerprint)) ||
        asprintf(&command, "portcullis-node enroll --controller https://%s%s%s:%u --token %s",
                 v6 ? "[" : "", r->a->hub_name, v6 ? "]" : "", (unsigned)hub_port(r->a->hub),
                 token) < 0) {
        command = NULL;
        sent = send_internal(r, "out of memory");
        goto out;
    }
    if (!cJSON_AddStringToObject(o, "token", token) ||
        !cJSON_AddStringToObject(o, "command", command)) {
        sent = MHD_NO;
        goto out;
    }
    snprintf(loc, sizeof(loc), "/api/v1/nodes/%" PRId64 "/enrollment", id);
    char *text = cJSON_PrintUnformatted(o);
    sent = text ? send_text(r, MHD_HTTP_CREATED, text, NULL, loc, NULL) : MHD_NO;
out:
    if (o) {
        wipe_string_member(o, "token");
        wipe_string_member(o, "command");
        cJSON_Delete(o);
    }
    if (command) {
        explicit_bzero(command, strlen(command));
        free(command);
    }
    if (token) {
        explicit_bzero(token, strlen(token));
        free(token);
    }
    if (secret) {
        explicit_bzero(secret, strlen(secret));
        free(secret);
    }
    cJSON_Delete(b);
    return sent;
}

static enum MHD_Result h_enroll_list(req *r)
{
    enum MHD_Result sent = MHD_NO;
    cJSON *items = NULL;
    int64_t id;
    if (!url_node(r, &id, NULL, &sent))
        return sent;
    int rc = store_enroll_token_list(r->st, id, &items);
    return rc == STORE_OK ? send_items(r, items) : send_store_error(r, rc);
}

static enum MHD_Result h_enroll_expire(req *r)
{
    enum MHD_Result sent = MHD_NO;
    int64_t id;
    if (!url_node(r, &id, NULL, &sent))
        return sent;
    int rc = store_enroll_token_expire(r->st, id, r->who.user, NULL);
    return rc == STORE_OK ? send_no_content(r) : send_store_error(r, rc);
}

/* Refuses the node's certificate from now on and closes its link. */
static enum MHD_Result h_node_revoke(req *r)
{
    enum MHD_Result sent = MHD_NO;
    cJSON *o = NULL;
    int64_t id;
    char etag[32];
    if (!empty_body(r, &sent) || !url_node(r, &id, NULL, &sent))
        return sent;
    int rc = store_node_revoke(r->st, id, r->who.user);
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    if (r->a->hub)
        hub_kick_node(r->a->hub, id);
    if ((rc = store_object_get(r->st, STORE_NODE, id, &o)) != STORE_OK)
        return send_store_error(r, rc);
    etag_of(o, etag);
    return send_json(r, MHD_HTTP_OK, o, etag, NULL);
}

static enum MHD_Result h_rollout_get(req *r)
{
    cJSON *o = NULL;
    int rc = store_rollout_get(r->st, &o);
    return rc == STORE_OK ? send_json(r, MHD_HTTP_OK, o, NULL, NULL) : send_store_error(r, rc);
}

/* A rollout change took effect: answer with the rollout, push. */
static enum MHD_Result rollout_done(req *r, int rc, cJSON *o)
{
    if (rc != STORE_OK) {
        cJSON_Delete(o);
        return send_store_error(r, rc);
    }
    notify_policy(r);
    if (!o && (rc = store_rollout_get(r->st, &o)) != STORE_OK)
        return send_store_error(r, rc);
    return send_json(r, MHD_HTTP_OK, o, NULL, NULL);
}

static enum MHD_Result h_rollout_put(req *r)
{
    static const char *const fields[] = {"mode", NULL};
    enum MHD_Result sent = MHD_NO;
    cJSON *b = body_object(r, &sent), *o = NULL;
    const char *mode;
    if (!b)
        return sent;
    if (!fields_known(r, b, fields, &sent) ||
        !string_field(r, b, "mode", true, 1, 16, &mode, &sent))
        goto out;
    if (strcmp(mode, "auto") != 0 && strcmp(mode, "manual") != 0) {
        sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", "mode",
                          "mode must be 'auto' or 'manual'");
        goto out;
    }
    int rc = store_rollout_set_mode(r->st, mode, r->who.user, &o);
    sent = rollout_done(r, rc, o);
out:
    cJSON_Delete(b);
    return sent;
}

/* An array member of ids: absent is an empty array (*out the caller's). */
static bool id_array(req *r, const cJSON *b, const char *name, cJSON **out, enum MHD_Result *sent)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(b, name);
    int i = 0;
    *out = NULL;
    if (v && !cJSON_IsArray(v)) {
        *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "wrong_type", name,
                           "field '%s' must be an array of ids", name);
        return false;
    }
    for (const cJSON *it = v ? v->child : NULL; it; it = it->next, i++) {
        int64_t id;
        if (!json_int(it, 1, INT64_C(999999999999999), &id)) {
            char field[64];
            snprintf(field, sizeof(field), "%s[%d]", name, i);
            *sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "invalid", field,
                               "field '%s' must be a positive integer id", field);
            return false;
        }
    }
    *out = v ? cJSON_Duplicate(v, true) : cJSON_CreateArray();
    if (!*out)
        *sent = MHD_NO;
    return *out != NULL;
}

/* {"revision"?, "offices"?, "regions"?}: release a revision to some offices
 * first (manual mode). */
static enum MHD_Result h_rollout_canary(req *r)
{
    static const char *const fields[] = {"revision", "offices", "regions", NULL};
    enum MHD_Result sent = MHD_NO;
    cJSON *b = body_object(r, &sent), *offices = NULL, *regions = NULL, *o = NULL;
    int64_t rev = 0;
    if (!b)
        return sent;
    if (fields_known(r, b, fields, &sent) &&
        int_field(r, b, "revision", false, 1, INT64_C(999999999999999), &rev, &sent) &&
        id_array(r, b, "offices", &offices, &sent) && id_array(r, b, "regions", &regions, &sent)) {
        int rc = store_rollout_canary(r->st, rev, offices, regions, r->who.user, &o);
        sent = rollout_done(r, rc, o);
    }
    cJSON_Delete(regions);
    cJSON_Delete(offices);
    cJSON_Delete(b);
    return sent;
}

static enum MHD_Result h_rollout_promote(req *r)
{
    enum MHD_Result sent = MHD_NO;
    cJSON *o = NULL;
    if (!empty_body(r, &sent))
        return sent;
    int rc = store_rollout_promote(r->st, r->who.user, &o);
    return rollout_done(r, rc, o);
}

static enum MHD_Result h_rollout_abort(req *r)
{
    enum MHD_Result sent = MHD_NO;
    cJSON *o = NULL;
    if (!empty_body(r, &sent))
        return sent;
    int rc = store_rollout_abort(r->st, r->who.user, &o);
    return rollout_done(r, rc, o);
}

/* The hub's counters. */
static enum MHD_Result h_hub(req *r)
{
    enum MHD_Result sent = MHD_NO;
    hub_stats st;
    if (!hub_ready(r, &sent))
        return sent;
    hub_get_stats(r->a->hub, &st);
    cJSON *o = cJSON_CreateObject();
    const struct {
        const char *name;
        uint64_t v;
    } f[] = {
        {"port", hub_port(r->a->hub)},
        {"connected", st.connected},
        {"refused", st.refused},
        {"bad_messages", st.bad_messages},
        {"events_received", st.events_received},
        {"events_stored", st.events_stored},
        {"events_rejected", st.events_rejected},
        {"events_held", st.events_held},
        {"policies_sent", st.policies_sent},
        {"acks_applied", st.acks_applied},
        {"acks_failed", st.acks_failed},
        {"enrollments", st.enrollments},
        {"enrollments_refused", st.enrollments_refused},
    };
    bool ok = o && cJSON_AddStringToObject(o, "name", r->a->hub_name) &&
              cJSON_AddStringToObject(o, "ca_fingerprint", r->a->ca->fingerprint);
    for (size_t i = 0; ok && i < sizeof(f) / sizeof(f[0]); i++)
        ok = cJSON_AddNumberToObject(o, f[i].name, (double)f[i].v) != NULL;
    if (!ok) {
        cJSON_Delete(o);
        return MHD_NO;
    }
    return send_json(r, MHD_HTTP_OK, o, NULL, NULL);
}

/* --- handlers: sign-in and sessions ------------------------------------------ */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Whether the Origin header, when the client sent one, names this server as
 * the browser reached it: https://<Host>. */
static bool same_origin(req *r)
{
    const char *origin = header(r, MHD_HTTP_HEADER_ORIGIN);
    const char *host = header(r, MHD_HTTP_HEADER_HOST);
    if (!origin)
        return true;
    return host && *host && strncmp(origin, "https://", 8) == 0 &&
           strcasecmp(origin + 8, host) == 0;
}

/* The CSRF check of a change made with the session cookie (which a browser
 * sends by itself): the session's csrf_token in X-CSRF-Token, and the
 * Origin, when present, this server. On failure a 403 is queued in *sent. */
static bool csrf_ok(req *r, enum MHD_Result *sent)
{
    const char *t = header(r, "X-CSRF-Token");
    size_t n = strlen(r->sess.csrf);
    if (!t || n == 0 || strlen(t) != n || CRYPTO_memcmp(t, r->sess.csrf, n) != 0) {
        *sent = send_error(r, MHD_HTTP_FORBIDDEN, "csrf", NULL,
                           "a change made with the session cookie needs the header X-CSRF-Token "
                           "with the session's csrf_token (GET /api/v1/session)");
        return false;
    }
    if (!same_origin(r)) {
        *sent = send_error(r, MHD_HTTP_FORBIDDEN, "csrf", NULL,
                           "cross-origin request refused: Origin '%.128s' is not this server",
                           header(r, MHD_HTTP_HEADER_ORIGIN));
        return false;
    }
    return true;
}

/* Looks up the session cookie: STORE_OK with r->sess and r->who set,
 * STORE_ENOTFOUND without a cookie (*present false) or for an unknown or
 * expired one, or another store failure. */
static int cookie_session(req *r, bool *present)
{
    const char *c = MHD_lookup_connection_value(r->c, MHD_COOKIE_KIND, API_COOKIE);
    memset(&r->sess, 0, sizeof(r->sess));
    *present = c && *c;
    if (!*present)
        return STORE_ENOTFOUND;
    int rc = store_session_lookup(r->st, c, wall_ms(), &r->sess);
    if (rc != STORE_OK) {
        memset(&r->sess, 0, sizeof(r->sess));
        return rc;
    }
    memset(&r->who, 0, sizeof(r->who));
    r->who.user_id = r->sess.user_id;
    snprintf(r->who.user, sizeof(r->who.user), "%s", r->sess.user);
    r->who.role = r->sess.role;
    return STORE_OK;
}

static void cookie_clear(req *r)
{
    snprintf(r->set_cookie, sizeof(r->set_cookie),
             "%s=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0", API_COOKIE);
}

/* The client's address as text ("" when unknown). */
static void client_address(req *r, char *out, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    out[0] = '\0';
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)len);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)len);
}

/* The slot of key, or NULL; with take, a new one (a free or stale slot, or
 * the oldest). Called with signin_lock held. */
static signin_slot *signin_find(api *a, const char *key, int64_t now, bool take)
{
    signin_slot *spare = NULL, *oldest = NULL;
    for (size_t i = 0; i < API_SIGNIN_SLOTS; i++) {
        signin_slot *sl = &a->signins[i];
        if (sl->key[0] && strcmp(sl->key, key) == 0)
            return sl;
        if (!spare && (!sl->key[0] || now - sl->first_ms >= API_SIGNIN_WINDOW_MS))
            spare = sl;
        if (!oldest || sl->first_ms < oldest->first_ms)
            oldest = sl;
    }
    signin_slot *victim = !take ? NULL : spare ? spare : oldest;
    if (victim) {
        snprintf(victim->key, sizeof(victim->key), "%s", key);
        victim->first_ms = now;
        victim->failures = 0;
    }
    return victim;
}

/* Seconds until key may try again, 0 when it may now. */
static unsigned signin_wait(api *a, const char *key, unsigned limit, int64_t now)
{
    unsigned wait = 0;
    pthread_mutex_lock(&a->signin_lock);
    signin_slot *sl = signin_find(a, key, now, false);
    if (sl && now - sl->first_ms < API_SIGNIN_WINDOW_MS && sl->failures >= limit)
        wait = (unsigned)((sl->first_ms + API_SIGNIN_WINDOW_MS - now + 999) / 1000);
    pthread_mutex_unlock(&a->signin_lock);
    return wait;
}

/* Counts a failure of key (reset: forgets key's failures). */
static void signin_count(api *a, const char *key, int64_t now, bool reset)
{
    pthread_mutex_lock(&a->signin_lock);
    signin_slot *sl = signin_find(a, key, now, !reset);
    if (sl && reset) {
        sl->key[0] = '\0';
    } else if (sl) {
        if (now - sl->first_ms >= API_SIGNIN_WINDOW_MS) {
            sl->first_ms = now;
            sl->failures = 0;
        }
        sl->failures++;
    }
    pthread_mutex_unlock(&a->signin_lock);
}

/* A 429 when the name (and, with addr, the client's address) has failed too
 * often; false with *sent queued. */
static bool signin_allowed(req *r, const char *name_key, const char *addr_key, int64_t now,
                           enum MHD_Result *sent)
{
    unsigned w = signin_wait(r->a, name_key, API_SIGNIN_PER_NAME, now);
    unsigned wa = addr_key ? signin_wait(r->a, addr_key, API_SIGNIN_PER_ADDR, now) : 0;
    if (wa > w)
        w = wa;
    if (!w)
        return true;
    snprintf(r->retry_after, sizeof(r->retry_after), "%u", w);
    *sent = send_error(r, MHD_HTTP_TOO_MANY_REQUESTS, "rate_limited", NULL,
                       "too many failed sign-in attempts; try again in %u seconds", w);
    return false;
}

/* {"user", "role", "csrf_token", "expires_at"} of r->sess. */
static enum MHD_Result send_session(req *r, unsigned status, const char *location)
{
    char when[40];
    time_t t = (time_t)(r->sess.expires_at / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof(when) - n, ".%03dZ", (int)(r->sess.expires_at % 1000));
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "user", r->sess.user) ||
        !cJSON_AddStringToObject(o, "role", store_role_name(r->sess.role)) ||
        !cJSON_AddStringToObject(o, "csrf_token", r->sess.csrf) ||
        !cJSON_AddStringToObject(o, "expires_at", when)) {
        cJSON_Delete(o);
        return MHD_NO;
    }
    return send_json(r, status, o, NULL, location);
}

static enum MHD_Result h_session_create(req *r)
{
    static const char *const allowed[] = {"name", "password", NULL};
    enum MHD_Result sent = MHD_NO;
    const char *name = NULL, *password = NULL;
    char addr[INET6_ADDRSTRLEN] = "", name_key[72], addr_key[72];
    char *token = NULL;
    if (!same_origin(r))
        return send_error(r, MHD_HTTP_FORBIDDEN, "csrf", NULL,
                          "cross-origin sign-in refused: Origin '%.128s' is not this server",
                          header(r, MHD_HTTP_HEADER_ORIGIN));
    cJSON *b = body_object(r, &sent);
    if (!b)
        return sent;
    if (!fields_known(r, b, allowed, &sent) ||
        !string_field(r, b, "name", true, 1, 64, &name, &sent) ||
        !string_field(r, b, "password", true, 1, STORE_PASSWORD_MAX, &password, &sent)) {
        cJSON_Delete(b);
        return sent;
    }
    int64_t now = wall_ms();
    client_address(r, addr, sizeof(addr));
    snprintf(name_key, sizeof(name_key), "n:%s", name);
    snprintf(addr_key, sizeof(addr_key), "a:%s", addr);
    if (!signin_allowed(r, name_key, addr_key, now, &sent)) {
        cJSON_Delete(b);
        return sent;
    }
    int rc = store_session_signin(r->st, name, password, now, &token, &r->sess);
    cJSON_Delete(b); /* the password is in it */
    if (rc == STORE_ENOTFOUND) {
        signin_count(r->a, name_key, now, false);
        signin_count(r->a, addr_key, now, false);
        return send_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", NULL,
                          "wrong user name or password");
    }
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    signin_count(r->a, name_key, now, true);
    snprintf(r->set_cookie, sizeof(r->set_cookie),
             "%s=%s; Path=/; HttpOnly; Secure; SameSite=Strict", API_COOKIE, token);
    explicit_bzero(token, strlen(token));
    free(token);
    enum MHD_Result ret = send_session(r, MHD_HTTP_CREATED, "/api/v1/session");
    explicit_bzero(r->set_cookie, sizeof(r->set_cookie));
    return ret;
}

static enum MHD_Result h_session_get(req *r)
{
    bool present;
    int rc = cookie_session(r, &present);
    if (rc == STORE_ENOTFOUND) {
        if (present)
            cookie_clear(r);
        return send_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", NULL,
                          present ? "the session has ended; sign in again" : "not signed in");
    }
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    return send_session(r, MHD_HTTP_OK, NULL);
}

static enum MHD_Result h_session_delete(req *r)
{
    enum MHD_Result sent = MHD_NO;
    bool present;
    int rc = cookie_session(r, &present);
    if (rc == STORE_ENOTFOUND) {
        cookie_clear(r);
        return send_no_content(r);
    }
    if (rc != STORE_OK)
        return send_store_error(r, rc);
    if (!csrf_ok(r, &sent))
        return sent;
    rc = store_session_delete(r->st, r->sess.id, r->sess.user);
    if (rc != STORE_OK && rc != STORE_ENOTFOUND)
        return send_store_error(r, rc);
    cookie_clear(r);
    return send_no_content(r);
}

static enum MHD_Result h_user_password(req *r)
{
    static const char *const allowed[] = {"password", "current", NULL};
    enum MHD_Result sent = MHD_NO;
    const char *password = NULL, *current = NULL;
    char name_key[72];
    int64_t id;
    int rc;
    if (!parse_id(r->idseg, &id))
        return send_error(r, MHD_HTTP_NOT_FOUND, "not_found", NULL, "no user '%s'", r->idseg);
    cJSON *b = body_object(r, &sent);
    if (!b)
        return sent;
    if (!fields_known(r, b, allowed, &sent) ||
        !string_field(r, b, "password", true, STORE_PASSWORD_MIN, STORE_PASSWORD_MAX, &password,
                      &sent) ||
        !string_field(r, b, "current", false, 1, STORE_PASSWORD_MAX, &current, &sent))
        goto done;
    if (r->who.role != STORE_ROLE_ADMIN) {
        /* Anyone else sets only their own, and proves they know it: a
         * stolen session alone cannot lock its owner out. */
        int64_t now = wall_ms();
        if (r->who.user_id != id) {
            sent = send_error(r, MHD_HTTP_FORBIDDEN, "forbidden", NULL,
                              "a %s may set only their own password", store_role_name(r->who.role));
            goto done;
        }
        if (!current) {
            sent = send_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, "missing_field", "current",
                              "field 'current' (your current password) is required");
            goto done;
        }
        snprintf(name_key, sizeof(name_key), "n:%s", r->who.user);
        if (!signin_allowed(r, name_key, NULL, now, &sent))
            goto done;
        rc = store_user_check_password(r->st, id, current);
        if (rc == STORE_ENOTFOUND) {
            signin_count(r->a, name_key, now, false);
            sent = send_error(r, MHD_HTTP_FORBIDDEN, "forbidden", "current",
                              "the current password is wrong");
            goto done;
        }
        if (rc != STORE_OK) {
            sent = send_store_error(r, rc);
            goto done;
        }
    }
    rc = store_user_set_password(r->st, id, password, r->sess.id, r->who.user);
    sent = rc == STORE_OK ? send_no_content(r) : send_store_error(r, rc);
done:
    cJSON_Delete(b);
    return sent;
}

/* --- dashboard files -------------------------------------------------------- */

/* Every path outside /api/ is the dashboard's (docs/controller.md,
 * "Dashboard files"): files under web_root, opened one path component at a
 * time beneath it with symlinks refused, so no URL reaches outside it. They
 * need no authentication: the data comes from the API. */

#define WEB_FILE_MAX (8u * 1024 * 1024) /* larger files are not served */
#define WEB_PATH_MAX 1024               /* bytes of a URL path */
#define WEB_DEPTH_MAX 16                /* path components */
#define WEB_NAME_MAX 255                /* bytes of one component */

static const char web_csp[] =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

static const char web_not_built[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Portcullis controller</title></head>\n"
    "<body><h1>Portcullis controller</h1>\n"
    "<p>The Portcullis dashboard is not built here. The REST API is at <a "
    "href=\"/api/v1/health\">/api/v1/</a> (docs/controller.md); build the dashboard with "
    "the commands in web/README.md and start the controller with <code>--web-root DIR</code> "
    "(or <code>\"web_root\"</code> in its config file) naming the directory of the built "
    "files.</p>\n"
    "</body></html>\n";

/* The headers of every dashboard response. */
static void web_headers(struct MHD_Response *resp, const char *ctype, const char *cache)
{
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "Cache-Control", cache);
    MHD_add_response_header(resp, "Content-Security-Policy", web_csp);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
}

/* Sends a constant body (not copied). */
static enum MHD_Result web_send_const(req *r, unsigned status, const char *body, const char *ctype,
                                      const char *allow)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    web_headers(resp, ctype, "no-cache");
    if (allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ret = MHD_queue_response(r->c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result web_not_found(req *r)
{
    return web_send_const(r, MHD_HTTP_NOT_FOUND, "not found\n", "text/plain; charset=utf-8", NULL);
}

/* The Content-Type for a file name's extension (ext includes the dot, or
 * is NULL). */
static const char *web_type(const char *ext)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".json", "application/json"},
        {".woff2", "font/woff2"},
        {".map", "application/json"},
        {".txt", "text/plain; charset=utf-8"},
    };
    for (size_t i = 0; ext && i < sizeof(types) / sizeof(types[0]); i++)
        if (strcasecmp(ext, types[i].ext) == 0)
            return types[i].type;
    return "application/octet-stream";
}

/* A name carrying a content hash: 8 or more hex digits between two dots
 * ("app.3f2a1b9c.js"); such a file never changes, so it is cached for good. */
static bool web_hashed(const char *name)
{
    for (const char *p = strchr(name, '.'); p;) {
        const char *next = strchr(p + 1, '.');
        if (!next)
            return false;
        size_t n = (size_t)(next - p - 1);
        if (n >= 8 && strspn(p + 1, "0123456789abcdefABCDEF") == n)
            return true;
        p = next;
    }
    return false;
}

/* Whether an Accept-Encoding value accepts coding (named, without q=0). */
static bool web_accepts(const char *ae, const char *coding)
{
    size_t cl = strlen(coding);
    for (const char *p = ae; *p;) {
        p += strspn(p, " \t,");
        const char *end = p + strcspn(p, ",");
        size_t n = strcspn(p, ";, \t");
        if (n == cl && strncasecmp(p, coding, cl) == 0) {
            for (const char *q = p + n; q < end;) {
                q += strspn(q, " \t;");
                if (q < end && strncasecmp(q, "q=", 2) == 0)
                    return strtod(q + 2, NULL) > 0.0;
                q += strcspn(q, ";");
            }
            return true;
        }
        p = end;
    }
    return false;
}

/* One path component: 1..WEB_NAME_MAX bytes of letters, digits and
 * "._-~@+", not starting with a dot (no ".", "..", nor hidden files). */
static bool web_segment_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > WEB_NAME_MAX || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._-~@+", s[i]))
            return false;
    return true;
}

/* Splits the URL path into checked components in buf (seg[] points into
 * it). Returns how many (0 for "/"), or -1 when any is refused. */
static int web_split(const char *url, char *buf, size_t cap, const char **seg)
{
    size_t len = strlen(url);
    int n = 0;
    if (url[0] != '/' || len >= cap)
        return -1;
    memcpy(buf, url + 1, len); /* with the NUL */
    if (!buf[0])
        return 0;
    for (char *p = buf;;) {
        char *slash = strchr(p, '/');
        if (slash)
            *slash = '\0';
        if (n == WEB_DEPTH_MAX || !web_segment_ok(p))
            return -1;
        seg[n++] = p;
        if (!slash)
            return n;
        p = slash + 1;
    }
}

/* Opens root/seg[0]/.../seg[n-2]/last beneath root, refusing a symlink at
 * every step; only a regular file up to WEB_FILE_MAX. Returns the fd with
 * *st, or -1 with errno (ENOENT: no such file). */
static int web_open(const char *root, const char *const *seg, int n, const char *last,
                    struct stat *st)
{
    int fd = -1, e = 0;
    int dir = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (int i = 0; dir >= 0 && i < n - 1; i++) {
        int next = openat(dir, seg[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        e = errno;
        close(dir);
        dir = next;
    }
    if (dir < 0) {
        errno = e ? e : errno;
        return -1;
    }
    fd = openat(dir, last, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    e = errno;
    close(dir);
    if (fd < 0) {
        errno = e;
        return -1;
    }
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode) || st->st_size > (off_t)WEB_FILE_MAX) {
        close(fd);
        errno = EACCES;
        return -1;
    }
    return fd;
}

/* Serves the file seg[0..n-1] (n >= 1) from web_root, precompressed when
 * the client accepts it. Returns 0 with *ret when a response was queued,
 * or the errno of the failure (ENOENT: no such file, or no web_root). */
static int web_file(req *r, const char *const *seg, int n, enum MHD_Result *ret)
{
    static const struct {
        const char *suffix, *coding;
    } variants[] = {{".br", "br"}, {".gz", "gzip"}, {"", NULL}};
    const char *name = seg[n - 1];
    const char *ae = header(r, MHD_HTTP_HEADER_ACCEPT_ENCODING);
    char last[WEB_NAME_MAX + 4];
    struct stat st;
    int fd = -1, e = ENOENT;
    size_t v;
    if (!r->a->web_root)
        return ENOENT;
    for (v = 0; v < sizeof(variants) / sizeof(variants[0]); v++) {
        if (variants[v].coding && !(ae && web_accepts(ae, variants[v].coding)))
            continue;
        snprintf(last, sizeof(last), "%s%s", name, variants[v].suffix);
        if ((fd = web_open(r->a->web_root, seg, n, last, &st)) >= 0)
            break;
        e = errno;
    }
    if (fd < 0)
        return e;
    struct MHD_Response *resp = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
    if (!resp) {
        close(fd);
        *ret = MHD_NO;
        return 0;
    }
    web_headers(resp, web_type(strrchr(name, '.')),
                web_hashed(name) ? "public, max-age=31536000, immutable" : "no-cache");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, MHD_HTTP_HEADER_ACCEPT_ENCODING);
    if (variants[v].coding)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_ENCODING, variants[v].coding);
    *ret = MHD_queue_response(r->c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return 0;
}

/* GET/HEAD of a path outside /api/: the file, else index.html for a path
 * without an extension (the dashboard's own routes), else 404; "/" without
 * a built dashboard says so. */
static enum MHD_Result web_serve(req *r)
{
    char buf[WEB_PATH_MAX];
    const char *seg[WEB_DEPTH_MAX];
    const char *index[] = {"index.html"};
    enum MHD_Result ret = MHD_NO;
    if (strcmp(r->method, "GET") != 0)
        return web_send_const(r, MHD_HTTP_METHOD_NOT_ALLOWED,
                              "only GET and HEAD are allowed outside /api/\n",
                              "text/plain; charset=utf-8", "GET, HEAD");
    int n = r->raw_bad ? -1 : web_split(r->url, buf, sizeof(buf), seg);
    if (n < 0)
        return web_not_found(r);
    int e = n > 0 ? web_file(r, seg, n, &ret) : ENOENT;
    if (e == 0)
        return ret;
    if (e != ENOENT || (n > 0 && strchr(seg[n - 1], '.')))
        return web_not_found(r);
    if (web_file(r, index, 1, &ret) == 0)
        return ret;
    return web_send_const(r, n == 0 ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, web_not_built,
                          "text/html; charset=utf-8", NULL);
}

/* Called with the raw request line's URI before it is decoded: marks a
 * path that encodes '/', '\' or NUL, which no dashboard file name needs.
 * The request starts here (on_request, on_completed). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    req *r = calloc(1, sizeof(*r));
    (void)cls;
    (void)c;
    if (!r)
        return NULL;
    size_t n = strcspn(uri, "?");
    for (size_t i = 0; i + 3 <= n; i++)
        if (!strncasecmp(uri + i, "%2f", 3) || !strncasecmp(uri + i, "%5c", 3) ||
            !strncmp(uri + i, "%00", 3))
            r->raw_bad = true;
    return r;
}

/* POST routes whose body may be left out (an empty object is fine too). */
static bool body_optional(const route *rt)
{
    return rt->fn == h_revision_rollback || rt->fn == h_enroll_create || rt->fn == h_node_revoke ||
           rt->fn == h_rollout_promote || rt->fn == h_rollout_abort;
}

/* --- routing ---------------------------------------------------------------- */

#define V STORE_ROLE_VIEWER
#define O STORE_ROLE_OPERATOR
#define A STORE_ROLE_ADMIN
/* Every route; docs/api/openapi.json lists exactly these (the system test
 * reads this table). Roles: viewer reads,
 * operator changes policy and nodes, admin everything (users and tokens). A
 * path without {id} wins over one with it ("/revisions/diff"). */
static const route routes[] = {
    {"/api/v1/health", "GET", STORE_ROLE_NONE, h_health, -1},
    {"/api/v1/openapi.json", "GET", STORE_ROLE_NONE, h_openapi, -1},
    {"/api/v1/regions", "GET", V, h_obj_list, STORE_REGION},
    {"/api/v1/regions", "POST", O, h_obj_create, STORE_REGION},
    {"/api/v1/regions/{id}", "GET", V, h_obj_get, STORE_REGION},
    {"/api/v1/regions/{id}", "PUT", O, h_obj_put, STORE_REGION},
    {"/api/v1/regions/{id}", "PATCH", O, h_obj_patch, STORE_REGION},
    {"/api/v1/regions/{id}", "DELETE", O, h_obj_delete, STORE_REGION},
    {"/api/v1/offices", "GET", V, h_obj_list, STORE_OFFICE},
    {"/api/v1/offices", "POST", O, h_obj_create, STORE_OFFICE},
    {"/api/v1/offices/{id}", "GET", V, h_obj_get, STORE_OFFICE},
    {"/api/v1/offices/{id}", "PUT", O, h_obj_put, STORE_OFFICE},
    {"/api/v1/offices/{id}", "PATCH", O, h_obj_patch, STORE_OFFICE},
    {"/api/v1/offices/{id}", "DELETE", O, h_obj_delete, STORE_OFFICE},
    {"/api/v1/groups", "GET", V, h_obj_list, STORE_GROUP},
    {"/api/v1/groups", "POST", O, h_obj_create, STORE_GROUP},
    {"/api/v1/groups/{id}", "GET", V, h_obj_get, STORE_GROUP},
    {"/api/v1/groups/{id}", "PUT", O, h_obj_put, STORE_GROUP},
    {"/api/v1/groups/{id}", "PATCH", O, h_obj_patch, STORE_GROUP},
    {"/api/v1/groups/{id}", "DELETE", O, h_obj_delete, STORE_GROUP},
    {"/api/v1/rules", "GET", V, h_obj_list, STORE_RULE},
    {"/api/v1/rules", "POST", O, h_obj_create, STORE_RULE},
    {"/api/v1/rules/{id}", "GET", V, h_obj_get, STORE_RULE},
    {"/api/v1/rules/{id}", "PUT", O, h_obj_put, STORE_RULE},
    {"/api/v1/rules/{id}", "PATCH", O, h_obj_patch, STORE_RULE},
    {"/api/v1/rules/{id}", "DELETE", O, h_obj_delete, STORE_RULE},
    {"/api/v1/lists", "GET", V, h_obj_list, STORE_LIST},
    {"/api/v1/lists", "POST", O, h_obj_create, STORE_LIST},
    {"/api/v1/lists/{id}", "GET", V, h_obj_get, STORE_LIST},
    {"/api/v1/lists/{id}", "PUT", O, h_obj_put, STORE_LIST},
    {"/api/v1/lists/{id}", "PATCH", O, h_obj_patch, STORE_LIST},
    {"/api/v1/lists/{id}", "DELETE", O, h_obj_delete, STORE_LIST},
    {"/api/v1/nodes", "GET", V, h_obj_list, STORE_NODE},
    {"/api/v1/nodes", "POST", O, h_obj_create, STORE_NODE},
    {"/api/v1/nodes/{id}", "GET", V, h_obj_get, STORE_NODE},
    {"/api/v1/nodes/{id}", "PUT", O, h_obj_put, STORE_NODE},
    {"/api/v1/nodes/{id}", "PATCH", O, h_obj_patch, STORE_NODE},
    {"/api/v1/nodes/{id}", "DELETE", O, h_obj_delete, STORE_NODE},
    {"/api/v1/offices/{id}/document", "GET", V, h_office_document, STORE_OFFICE},
    {"/api/v1/settings", "GET", V, h_settings_list, -1},
    {"/api/v1/settings/global", "GET", V, h_settings_get, MODEL_SCOPE_GLOBAL},
    {"/api/v1/settings/global", "PUT", O, h_settings_put, MODEL_SCOPE_GLOBAL},
    {"/api/v1/settings/region/{id}", "GET", V, h_settings_get, MODEL_SCOPE_REGION},
    {"/api/v1/settings/region/{id}", "PUT", O, h_settings_put, MODEL_SCOPE_REGION},
    {"/api/v1/settings/office/{id}", "GET", V, h_settings_get, MODEL_SCOPE_OFFICE},
    {"/api/v1/settings/office/{id}", "PUT", O, h_settings_put, MODEL_SCOPE_OFFICE},
    {"/api/v1/revisions", "GET", V, h_revisions_list, -1},
    {"/api/v1/revisions/diff", "GET", V, h_revisions_diff, -1},
    {"/api/v1/revisions/{id}", "GET", V, h_revision_get, -1},
    {"/api/v1/revisions/{id}/rollback", "POST", O, h_revision_rollback, -1},
    {"/api/v1/audit", "GET", V, h_audit, -1},
    {"/api/v1/events", "GET", V, h_events, -1},
    {"/api/v1/events/stream", "GET", V, h_events_stream, -1},
    {"/api/v1/explain", "POST", V, h_explain, -1},
    {"/api/v1/dry-run", "POST", O, h_dry_run, -1},
    {"/api/v1/users", "GET", A, h_users_list, -1},
    {"/api/v1/users", "POST", A, h_users_create, -1},
    {"/api/v1/users/{id}", "GET", A, h_user_get, -1},
    {"/api/v1/users/{id}", "DELETE", A, h_user_delete, -1},
    {"/api/v1/users/{id}/password", "PUT", V, h_user_password, -1},
    {"/api/v1/session", "POST", STORE_ROLE_NONE, h_session_create, -1},
    {"/api/v1/session", "GET", STORE_ROLE_NONE, h_session_get, -1},
    {"/api/v1/session", "DELETE", STORE_ROLE_NONE, h_session_delete, -1},
    {"/api/v1/tokens", "GET", A, h_tokens_list, -1},
    {"/api/v1/tokens", "POST", A, h_tokens_create, -1},
    {"/api/v1/tokens/{id}", "GET", A, h_token_get, -1},
    {"/api/v1/tokens/{id}", "DELETE", A, h_token_delete, -1},
    {"/api/v1/nodes/{id}/enrollment", "GET", O, h_enroll_list, STORE_NODE},
    {"/api/v1/nodes/{id}/enrollment", "POST", O, h_enroll_create, STORE_NODE},
    {"/api/v1/nodes/{id}/enrollment", "DELETE", O, h_enroll_expire, STORE_NODE},
    {"/api/v1/nodes/{id}/revoke", "POST", O, h_node_revoke, STORE_NODE},
    {"/api/v1/rollout", "GET", V, h_rollout_get, -1},
    {"/api/v1/rollout", "PUT", O, h_rollout_put, -1},
    {"/api/v1/rollout/canary", "POST", O, h_rollout_canary, -1},
    {"/api/v1/rollout/promote", "POST", O, h_rollout_promote, -1},
    {"/api/v1/rollout/abort", "POST", O, h_rollout_abort, -1},
    {"/api/v1/hub", "GET", V, h_hub, -1},
};
#undef V
#undef O
#undef A

/* Matches url against pattern; a "{id}" segment matches one non-empty
 * segment, copied to r->idbuf. */
static bool path_match(const char *pattern, const char *url, req *r)
{
    const char *p = pattern, *u = url;
    while (*p && *u) {
        if (strncmp(p, "{id}", 4) == 0) {
            size_t n = strcspn(u, "/");
            if (n == 0 || n >= sizeof(r->idbuf))
                return false;
            memcpy(r->idbuf, u, n);
            r->idbuf[n] = '\0';
            r->idseg = r->idbuf;
            p += 4;
            u += n;
            continue;
        }
        if (*p != *u)
            return false;
        p++, u++;
    }
    return *p == '\0' && *u == '\0';
}

/* A bearer token, or else the session cookie; a change made with the
 * cookie must pass the CSRF check (bearer tokens are not sent by a browser
 * on its own, so they need none). */
static enum MHD_Result authenticate(req *r, const route *rt)
{
    const char *h = header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h) {
        enum MHD_Result sent = MHD_NO;
        bool present;
        int rc = cookie_session(r, &present);
        if (rc == STORE_OK && strcmp(r->method, "GET") != 0 && !csrf_ok(r, &sent)) {
            memset(&r->who, 0, sizeof(r->who));
            return sent;
        }
        if (rc == STORE_OK && r->who.role < rt->min_role)
            return send_error(r, MHD_HTTP_FORBIDDEN, "forbidden", NULL,
                              "a %s may not %s %s (needs %s)", store_role_name(r->who.role),
                              rt->method, rt->path, store_role_name(rt->min_role));
        if (rc == STORE_OK)
            return MHD_YES;
        memset(&r->who, 0, sizeof(r->who));
        if (rc != STORE_ENOTFOUND)
            return send_store_error(r, rc);
        if (present)
            cookie_clear(r);
        return send_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", NULL,
                          present ? "the session has ended; sign in again"
                                  : "send 'Authorization: Bearer <token>' or sign in "
                                    "(POST /api/v1/session)");
    }
    if (strncasecmp(h, "Bearer ", 7) != 0 || !h[7])
        return send_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", NULL,
                          "send 'Authorization: Bearer <token>'");
    const char *tok = h + 7;
    while (*tok == ' ')
        tok++;
    if (strlen(tok) > 256)
        return send_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", NULL, "unknown token");
    int rc = store_token_verify(r->st, tok, &r->who);
    if (rc == STORE_ENOTFOUND || (rc == STORE_OK && r->who.role == STORE_ROLE_NONE)) {
        memset(&r->who, 0, sizeof(r->who));
        return send_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", NULL, "unknown token");
    }
    if (rc != STORE_OK) {
        memset(&r->who, 0, sizeof(r->who));
        return send_store_error(r, rc);
    }
    if (r->who.role < rt->min_role)
        return send_error(r, MHD_HTTP_FORBIDDEN, "forbidden", NULL,
                          "a %s token may not %s %s (needs %s)", store_role_name(r->who.role),
                          rt->method, rt->path, store_role_name(rt->min_role));
    return MHD_YES;
}

static enum MHD_Result dispatch(req *r)
{
    const route *rt = NULL;
    char allow[64] = "";
    bool path_known = false;
    if (strncmp(r->url, "/api/", 5) != 0 && strcmp(r->url, "/api") != 0)
        return web_serve(r);
    /* Pass 0: paths without {id}; pass 1, only when none matched: the rest. */
    for (int pass = 0; pass < 2 && !path_known; pass++) {
        for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
            if ((strstr(routes[i].path, "{id}") != NULL) != (pass == 1) ||
                !path_match(routes[i].path, r->url, r))
                continue;
            path_known = true;
            if (strlen(allow) + strlen(routes[i].method) + 3 < sizeof(allow)) {
                if (allow[0])
                    strcat(allow, ", ");
                strcat(allow, routes[i].method);
            }
            if (strcmp(routes[i].method, r->method) == 0)
                rt = &routes[i];
        }
    }
    if (!path_known)
        return send_error(r, MHD_HTTP_NOT_FOUND, "no_route", NULL, "no such resource: %s", r->url);
    if (!rt)
        return send_error_allow(r, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed", NULL, allow,
                                "%s is not allowed here (allowed: %s)", r->method, allow);
    /* path_match of the last route tried may have overwritten idbuf. */
    if (!path_match(rt->path, r->url, r))
        return send_internal(r, "route no longer matches");
    r->rt = rt;
    if (r->too_large)
        return send_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "too_large", NULL,
                          "the body is larger than %zu bytes", r->a->body_max);
    if (rt->min_role != STORE_ROLE_NONE) {
        /* authenticate queues an error response, or returns MHD_YES with
         * the principal set and nothing queued. */
        enum MHD_Result ar = authenticate(r, rt);
        if (ar != MHD_YES || r->who.role < rt->min_role)
            return ar;
    }
    bool wants_body = !strcmp(r->method, "PUT") || !strcmp(r->method, "PATCH") ||
                      (!strcmp(r->method, "POST") && !body_optional(rt));
    if ((wants_body || r->len > 0) && !content_type_json(r))
        return send_error(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", NULL,
                          "send the body as Content-Type: application/json");
    return rt->fn(r);
}

/* This thread's store handle, opened on first use and closed by api_free;
 * NULL when it cannot be opened (the request then gets 503). */
static store *thread_store(api *a)
{
    if (t_store)
        return t_store;
    char err[256];
    store *st = NULL;
    pthread_mutex_lock(&a->lock);
    if (a->nstores < sizeof(a->stores) / sizeof(a->stores[0]) &&
        store_open(a->db_path, &st, err, sizeof(err)) == STORE_OK)
        a->stores[a->nstores++] = st;
    else if (st)
        store_close(st), st = NULL;
    pthread_mutex_unlock(&a->lock);
    if (!st)
        fprintf(stderr, "portcullis-controller: a serving thread cannot open the database\n");
    return t_store = st;
}

static store *stream_store(void *arg)
{
    return thread_store(arg);
}

static void stream_stored(void *arg)
{
    stream_wake(arg);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    api *a = cls;
    req *r = *con_cls;
    if (!r || !r->begun) {
        /* on_uri made r, unless memory ran out there */
        if (!r && !(r = calloc(1, sizeof(*r))))
            return MHD_NO;
        *con_cls = r;
        r->begun = true;
        r->a = a;
        r->c = c;
        r->st = thread_store(a);
        if (!r->st) {
            r->responded = true;
            return send_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "busy", NULL,
                              "the database cannot be opened; try again");
        }
        r->url = url;
        r->method = strcmp(method, "HEAD") == 0 ? "GET" : method;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || *end || n > a->body_max) {
                r->responded = true;
                return send_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "too_large", NULL,
                                  "the body is larger than %zu bytes", a->body_max);
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->responded)
            return MHD_YES;
        if (r->too_large || r->len + n > a->body_max) {
            r->too_large = true;
            r->discarded += n;
            return r->discarded > API_DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        if (r->len + n + 1 > r->cap) {
            size_t cap = r->cap ? r->cap : 4096;
            while (cap < r->len + n + 1)
                cap *= 2;
            char *nb = realloc(r->body, cap);
            if (!nb)
                return MHD_NO;
            r->body = nb;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        r->body[r->len] = '\0';
        return MHD_YES;
    }
    if (r->responded)
        return MHD_YES;
    r->responded = true;
    return dispatch(r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    req *r = *con_cls;
    if (!r)
        return;
    free(r->body);
    free(r);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    fputs("portcullis-controller: http: ", stderr);
    vfprintf(stderr, fmt, ap);
}

/* --- lifecycle -------------------------------------------------------------- */

int api_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
                     size_t errlen)
{
    char host[64];
    const char *port;
    memset(ss, 0, sizeof(*ss));
    if (!s || !*s) {
        snprintf(err, errlen, "listen: empty address");
        return -1;
    }
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host)) {
            snprintf(err, errlen, "listen '%s': expected [IPV6]:PORT", s);
            return -1;
        }
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host) || strchr(s, ':') != colon) {
            snprintf(err, errlen, "listen '%s': expected ADDR:PORT", s);
            return -1;
        }
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port = colon + 1;
    }
    char *end;
    errno = 0;
    long p = strtol(port, &end, 10);
    if (!*port || *end || errno || p < 0 || p > 65535) {
        snprintf(err, errlen, "listen '%s': port must be 0..65535", s);
        return -1;
    }
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)p);
        *len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)p);
        *len = sizeof(*v6);
    } else {
        snprintf(err, errlen, "listen '%s': '%s' is not a numeric IP address", s, host);
        return -1;
    }
    return 0;
}

int api_admin_token_check(const char *token, char *err, size_t errlen)
{
    size_t len = strlen(token);
    bool ok = len >= 32 && len <= 256;
    for (size_t i = 0; ok && i < len; i++)
        ok = token[i] > 0x20 && token[i] < 0x7f;
    if (!ok)
        snprintf(err, errlen,
                 "PORTCULLIS_ADMIN_TOKEN must be 32 to 256 printable ASCII characters, no spaces");
    return ok ? 0 : -1;
}

int api_open(const char *db_path, api **out, char *err, size_t errlen)
{
    api *a = calloc(1, sizeof(*a));
    *out = NULL;
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (!(a->db_path = strdup(db_path))) {
        snprintf(err, errlen, "out of memory");
        free(a);
        return -1;
    }
    if (store_open(db_path, &a->st, err, errlen) != STORE_OK) {
        free(a->db_path);
        free(a);
        return -1;
    }
    pthread_mutex_init(&a->lock, NULL);
    pthread_mutex_init(&a->signin_lock, NULL);
    *out = a;
    return 0;
}

int api_bootstrap_admin(api *a, const char *env_token, char **token_out, char *err, size_t errlen)
{
    int64_t uid = 0;
    int rc;
    *token_out = NULL;
    if (!store_created(a->st))
        return 0;
    rc = store_user_find(a->st, API_ADMIN_USER, &uid);
    if (rc == STORE_OK && env_token)
        rc = store_token_import(a->st, uid, STORE_ROLE_ADMIN, "first start", env_token, "system",
                                NULL);
    else if (rc == STORE_OK)
        rc = store_token_create(a->st, uid, STORE_ROLE_ADMIN, "first start", "system", token_out,
                                NULL);
    if (rc != STORE_OK) {
        snprintf(err, errlen, "first admin token: %s", store_error_message(a->st));
        return -1;
    }
    return 1;
}

int api_start(api *a, const api_options *o, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (api_parse_listen(o->listen, &ss, &sslen, err, errlen) != 0)
        return -1;
    a->body_max = o->body_max ? o->body_max : API_BODY_MAX;
    free(a->web_root);
    a->web_root = NULL;
    if (o->web_root && !(a->web_root = strdup(o->web_root))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    unsigned flags = MHD_USE_TLS | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                     MHD_ALLOW_SUSPEND_RESUME;
    if (!a->streams && !(a->streams = stream_hub_new(stream_store, a))) {
        snprintf(err, errlen, "cannot start the live tail of events");
        return -1;
    }
    if (a->hub)
        hub_set_stored_listener(a->hub, stream_stored, a->streams);
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES)
        flags |= MHD_USE_EPOLL;
    else
        flags |= MHD_USE_POLL;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    a->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, a, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, a,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_HTTPS_MEM_CERT, o->cert_pem,
        MHD_OPTION_HTTPS_MEM_KEY, o->key_pem, MHD_OPTION_HTTPS_PRIORITIES,
        "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(o->connection_limit ? o->connection_limit : API_CONNECTION_LIMIT),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)API_THREADS, MHD_OPTION_URI_LOG_CALLBACK, on_uri, a,
        MHD_OPTION_END);
    if (!a->mhd) {
        snprintf(err, errlen, "cannot serve HTTPS on %s (address in use, or a bad certificate)",
                 o->listen);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_BIND_PORT);
    a->port = info ? info->port : 0;
    return 0;
}

int api_set_hub(api *a, hub *h, ca *c, const char *hub_name)
{
    char *name = strdup(hub_name);
    if (!name)
        return -1;
    free(a->hub_name);
    a->hub_name = name;
    a->hub = h;
    a->ca = c;
    return 0;
}

uint16_t api_port(const api *a)
{
    return a->port;
}

void api_free(api *a)
{
    if (!a)
        return;
    if (a->hub)
        hub_set_stored_listener(a->hub, NULL, NULL);
    /* Suspended streams are resumed and finish before the daemon stops. */
    stream_hub_stop(a->streams);
    if (a->mhd)
        MHD_stop_daemon(a->mhd); /* joins the serving threads */
    stream_hub_free(a->streams);
    for (size_t i = 0; i < a->nstores; i++)
        store_close(a->stores[i]);
    store_close(a->st);
    pthread_mutex_destroy(&a->lock);
    pthread_mutex_destroy(&a->signin_lock);
    free(a->hub_name);
    free(a->web_root);
    free(a->db_path);
    free(a);
}
