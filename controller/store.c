/* store.c - the controller's SQLite store (store.h): schema migrations, the
 * policy objects with a revision and an audit row per change, rollback,
 * users and API tokens, node state and node events. Every statement is
 * prepared with its values bound; every change runs in one transaction. */
#include "store.h"
#include "pc_text.h"

#include "pc_cidr.h"
#include "pc_policy.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define APP_ID 0x50437374 /* "PCst": PRAGMA application_id of our databases */
#define BUSY_TIMEOUT_MS 5000
/* 2: settings have the firewall fields of 003_firewall.sql. A snapshot of
 * format 1 (and changes written before it) lack them: read as null. */
#define SNAPSHOT_FORMAT 2
#define CHECKPOINT_MAX_GAP 1000 /* revisions between whole-model snapshots, at most */
#define MAX_LABEL 128           /* region and office names, actors, token labels */
#define MAX_IDENT 64            /* group, list, node and user names */
#define MAX_TEXT 1024           /* rule comments, event strings */
#define MAX_DETAIL 8192         /* event detail */
#define MAX_ITEMS 4096          /* entries of one array field */
#define MAX_BATCH 10000         /* events in one batch */
#define MAX_PAGE 1000
#define DEFAULT_PAGE 100
#define TOKEN_USE_GRANULARITY_MS 60000
#define N(a) (sizeof(a) / sizeof((a)[0]))

#define STMT_CACHE 48

struct store {
    sqlite3 *db;
    /* Prepared statements kept for reuse, by their SQL text: the same few
     * queries run on every request, and preparing them was a tenth of a
     * request's time. */
    struct stmt_slot {
        char *sql;
        sqlite3_stmt *st;
        bool busy;
    } cache[STMT_CACHE];
    bool created;
    model *dry; /* set during store_dry_run: fill it and roll back */
    char msg[512];
    char field[128];
};

/* --- errors --------------------------------------------------------------- */

__attribute__((format(printf, 4, 0))) static int vfail(store *s, int code, const char *field,
                                                       const char *fmt, va_list ap)
{
    char m[sizeof(s->msg)];
    /* The arguments may point into s->msg or s->field. */
    vsnprintf(m, sizeof(m), fmt, ap);
    memcpy(s->msg, m, sizeof(m));
    snprintf(m, sizeof(s->field), "%s", field ? field : "");
    memcpy(s->field, m, sizeof(s->field));
    return code;
}

__attribute__((format(printf, 4, 5))) static int fail(store *s, int code, const char *field,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(s, code, field, fmt, ap);
    va_end(ap);
    return code;
}

static int oom(store *s)
{
    return fail(s, STORE_ERR, NULL, "out of memory");
}

static void clear_error(store *s)
{
    s->msg[0] = '\0';
    s->field[0] = '\0';
}

/* Maps a SQLite failure to a store code. The checks before each write catch
 * what a user can cause with a clear message; this is the backstop. */
static int db_fail(store *s, int rc, const char *what)
{
    const char *m = sqlite3_errmsg(s->db);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return fail(s, STORE_EBUSY, NULL, "%s: the database stayed locked by another writer (%s)",
                    what, m);
    case SQLITE_CONSTRAINT:
        if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
            /* "UNIQUE constraint failed: regions.name" */
            const char *dot = strrchr(m, '.');
            return fail(s, STORE_ECONFLICT, dot && !strchr(dot, ' ') ? dot + 1 : NULL,
                        "%s: already exists (%s)", what, m);
        }
        if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
            return fail(s, STORE_ECONFLICT, NULL, "%s: still referenced (%s)", what, m);
        return fail(s, STORE_EINVALID, NULL, "%s: %s", what, m);
    default: return fail(s, STORE_ERR, NULL, "%s: %s", what, m);
    }
}

const char *store_code_name(int code)
{
    switch (code) {
    case STORE_OK: return "ok";
    case STORE_ENOTFOUND: return "not-found";
    case STORE_ECONFLICT: return "conflict";
    case STORE_EINVALID: return "invalid";
    case STORE_ESTALE: return "stale-etag";
    case STORE_EVERSION: return "schema-version";
    case STORE_EBUSY: return "busy";
    default: return "internal";
    }
}

const char *store_error_message(const store *s)
{
    return s->msg;
}

const char *store_error_field(const store *s)
{
    return s->field;
}

bool store_created(const store *s)
{
    return s->created;
}

int store_schema_version(void)
{
    return (int)store__nmigrations;
}

/* --- statements ----------------------------------------------------------- */

/* A statement for sql: a cached one when sql ran before and is not in use
 * (nested use prepares another); release it with unprep. */
static int prep(store *s, const char *sql, sqlite3_stmt **st)
{
    struct stmt_slot *free_slot = NULL;
    for (size_t i = 0; i < STMT_CACHE; i++) {
        struct stmt_slot *c = &s->cache[i];
        if (!c->sql) {
            if (!free_slot)
                free_slot = c;
        } else if (!c->busy && strcmp(c->sql, sql) == 0) {
            c->busy = true;
            *st = c->st;
            return STORE_OK;
        }
    }
    int rc =
        sqlite3_prepare_v3(s->db, sql, -1, free_slot ? SQLITE_PREPARE_PERSISTENT : 0, st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, "preparing a statement");
    if (free_slot && (free_slot->sql = strdup(sql))) {
        free_slot->st = *st;
        free_slot->busy = true;
    }
    return STORE_OK;
}

/* Gives a statement from prep back: a cached one is reset for its next use,
 * any other finalized. */
static void unprep(store *s, sqlite3_stmt *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < STMT_CACHE; i++) {
        if (s->cache[i].st == st && s->cache[i].busy) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            s->cache[i].busy = false;
            return;
        }
    }
    sqlite3_finalize(st);
}

/* Binds values from ?1 on as types says: 'i' int64_t, 'z' int64_t with 0 as
 * NULL, 't' const char * (NULL as NULL), 'j' const cJSON * as its text
 * (NULL or JSON null as NULL), 'b' a const void * and an int length. */
static int bindv(store *s, sqlite3_stmt *st, const char *types, va_list ap)
{
    int rc = SQLITE_OK;
    for (int i = 1; types[i - 1] && rc == SQLITE_OK; i++) {
        switch (types[i - 1]) {
        case 'i': rc = sqlite3_bind_int64(st, i, va_arg(ap, int64_t)); break;
        case 'z': {
            int64_t v = va_arg(ap, int64_t);
            rc = v ? sqlite3_bind_int64(st, i, v) : sqlite3_bind_null(st, i);
            break;
        }
        case 't': {
            const char *v = va_arg(ap, const char *);
            rc = v ? sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
            break;
        }
        case 'j': {
            const cJSON *v = va_arg(ap, const cJSON *);
            if (!v || cJSON_IsNull(v)) {
                rc = sqlite3_bind_null(st, i);
                break;
            }
            char *txt = cJSON_PrintUnformatted(v);
            if (!txt)
                return oom(s);
            rc = sqlite3_bind_text(st, i, txt, -1, SQLITE_TRANSIENT);
            cJSON_free(txt);
            break;
        }
        case 'b': {
            const void *p = va_arg(ap, const void *);
            int n = va_arg(ap, int);
            rc = sqlite3_bind_blob(st, i, p, n, SQLITE_TRANSIENT);
            break;
        }
        default: return fail(s, STORE_ERR, NULL, "bad bind type '%c'", types[i - 1]);
        }
    }
    return rc == SQLITE_OK ? STORE_OK : db_fail(s, rc, "binding a value");
}

/* Runs one statement that returns no rows. */
static int run(store *s, const char *what, const char *sql, const char *types, ...)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(s, sql, &st);
    if (rc == STORE_OK) {
        va_list ap;
        va_start(ap, types);
        rc = bindv(s, st, types, ap);
        va_end(ap);
    }
    if (rc == STORE_OK) {
        int r = sqlite3_step(st);
        if (r != SQLITE_DONE && r != SQLITE_ROW)
            rc = db_fail(s, r, what);
    }
    unprep(s, st);
    return rc;
}

/* Runs a query for the integer in the first column of its first row;
 * *found says whether there was a row (*out is 0 when not, or NULL). */
static int one_int(store *s, bool *found, int64_t *out, const char *sql, const char *types, ...)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(s, sql, &st);
    *found = false;
    *out = 0;
    if (rc == STORE_OK) {
        va_list ap;
        va_start(ap, types);
        rc = bindv(s, st, types, ap);
        va_end(ap);
    }
    if (rc == STORE_OK) {
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            *found = true;
            *out = sqlite3_column_int64(st, 0);
        } else if (r != SQLITE_DONE) {
            rc = db_fail(s, r, "reading");
        }
    }
    unprep(s, st);
    return rc;
}

static int begin(store *s, bool write)
{
    int rc = sqlite3_exec(s->db, write ? "BEGIN IMMEDIATE" : "BEGIN", NULL, NULL, NULL);
    return rc == SQLITE_OK ? STORE_OK : db_fail(s, rc, "starting a transaction");
}

static int commit(store *s)
{
    int rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    return rc == SQLITE_OK ? STORE_OK : db_fail(s, rc, "committing");
}

static void rollback(store *s)
{
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

static int dry_run_capture(store *s);

/* Ends a transaction: commits when rc is STORE_OK, else rolls back. In a
 * dry run a successful change is captured as a model, then rolled back. */
static int finish(store *s, int rc)
{
    if (rc == STORE_OK && s->dry) {
        rc = dry_run_capture(s);
        rollback(s);
        return rc;
    }
    if (rc == STORE_OK)
        rc = commit(s);
    if (rc != STORE_OK)
        rollback(s);
    return rc;
}

/* --- time ----------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void format_time(int64_t ms, char *buf, size_t len)
{
    int64_t sec = ms / 1000, frac = ms % 1000;
    if (frac < 0) {
        frac += 1000;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(buf, len, "%lld", (long long)ms);
        return;
    }
    /* Years past 9999 do not occur; a cut string would still sort. */
    if (snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)frac) >= (int)len)
        buf[len - 1] = '\0';
}

static bool digits(const char *p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return true;
}

/* "YYYY-MM-DDTHH:MM:SS[.fraction]Z" to ms since 1970. */
static bool parse_time(const char *s, int64_t *out)
{
    int y, mo, d, h, mi, sec, ms = 0;
    if (strlen(s) < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
        s[7] != '-' || !digits(s + 8, 2, &d) || s[10] != 'T' || !digits(s + 11, 2, &h) ||
        s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' || !digits(s + 17, 2, &sec))
        return false;
    const char *p = s + 19;
    if (*p == '.') {
        int n = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, n++)
            if (n < 3)
                ms = ms * 10 + (*p - '0');
        if (n == 0 || n > 9)
            return false;
        for (; n < 3; n++)
            ms *= 10;
    }
    if (strcmp(p, "Z") != 0 || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 ||
        mi > 59 || sec > 59)
        return false;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || tm.tm_mday != d)
        return false;
    *out = (int64_t)t * 1000 + ms;
    return true;
}

/* --- JSON rows -------------------------------------------------------------- */

/* Adds v to o; false (and v freed) when v is NULL or the add fails. */
static bool jadd(cJSON *o, const char *k, cJSON *v)
{
    if (!v)
        return false;
    if (!cJSON_AddItemToObject(o, k, v)) {
        cJSON_Delete(v);
        return false;
    }
    return true;
}

static bool jpush(cJSON *arr, cJSON *v)
{
    if (!v)
        return false;
    if (!cJSON_AddItemToArray(arr, v)) {
        cJSON_Delete(v);
        return false;
    }
    return true;
}

static cJSON *jtime(int64_t ms)
{
    char buf[40];
    format_time(ms, buf, sizeof(buf));
    return cJSON_CreateString(buf);
}

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static bool is_null(const cJSON *v)
{
    return !v || cJSON_IsNull(v);
}

/* The integer at o[k], or 0 when absent or null. */
static int64_t get_int(const cJSON *o, const char *k)
{
    const cJSON *v = get(o, k);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

static const char *get_str(const cJSON *o, const char *k)
{
    const cJSON *v = get(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* How a column maps to a JSON field. */
typedef enum { C_INT, C_TEXT, C_BOOL, C_JSON, C_TIME } ctype;
typedef struct col {
    const char *key;
    ctype type;
} col;

static cJSON *col_json(sqlite3_stmt *st, int i, ctype t)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return cJSON_CreateNull();
    switch (t) {
    case C_INT: return cJSON_CreateNumber((double)sqlite3_column_int64(st, i));
    case C_TEXT: return cJSON_CreateString((const char *)sqlite3_column_text(st, i));
    case C_BOOL: return cJSON_CreateBool(sqlite3_column_int(st, i) != 0);
    case C_TIME: return jtime(sqlite3_column_int64(st, i));
    case C_JSON: return cJSON_Parse((const char *)sqlite3_column_text(st, i));
    }
    return NULL;
}

static cJSON *row_json(sqlite3_stmt *st, const col *cols, size_t n)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; o && i < n; i++) {
        if (!jadd(o, cols[i].key, col_json(st, (int)i, cols[i].type))) {
            cJSON_Delete(o);
            o = NULL;
        }
    }
    return o;
}

/* Runs a query and appends one object per row to arr. */
static int rows_into(store *s, cJSON *arr, const col *cols, size_t ncols, const char *sql,
                     const char *types, ...)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(s, sql, &st);
    if (rc == STORE_OK) {
        va_list ap;
        va_start(ap, types);
        rc = bindv(s, st, types, ap);
        va_end(ap);
    }
    int r = SQLITE_DONE;
    while (rc == STORE_OK && (r = sqlite3_step(st)) == SQLITE_ROW)
        if (!jpush(arr, row_json(st, cols, ncols)))
            rc = oom(s);
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = db_fail(s, r, "reading");
    unprep(s, st);
    return rc;
}

/* Binds the fields of obj named by cols to ?first, ?first+1, ... */
static int bind_cols(store *s, sqlite3_stmt *st, int first, const cJSON *obj, const col *cols,
                     size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const cJSON *v = get(obj, cols[i].key);
        int idx = first + (int)i, rc;
        if (is_null(v)) {
            rc = sqlite3_bind_null(st, idx);
        } else if (cols[i].type == C_TEXT && cJSON_IsString(v)) {
            rc = sqlite3_bind_text(st, idx, v->valuestring, -1, SQLITE_TRANSIENT);
        } else if (cols[i].type == C_INT && cJSON_IsNumber(v)) {
            rc = sqlite3_bind_int64(st, idx, (int64_t)v->valuedouble);
        } else if (cols[i].type == C_BOOL && cJSON_IsBool(v)) {
            rc = sqlite3_bind_int(st, idx, cJSON_IsTrue(v));
        } else if (cols[i].type == C_JSON) {
            char *txt = cJSON_PrintUnformatted(v);
            if (!txt)
                return oom(s);
            rc = sqlite3_bind_text(st, idx, txt, -1, SQLITE_TRANSIENT);
            cJSON_free(txt);
        } else {
            return fail(s, STORE_ERR, cols[i].key, "internal: '%s' has the wrong type",
                        cols[i].key);
        }
        if (rc != SQLITE_OK)
            return db_fail(s, rc, "binding a value");
    }
    return STORE_OK;
}

/* --- input checks ---------------------------------------------------------- */

static int invalid(store *s, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int invalid(store *s, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(s, STORE_EINVALID, field, fmt, ap);
    va_end(ap);
    return STORE_EINVALID;
}

static bool in_list(const char *k, const char *const *list)
{
    for (; list && *list; list++)
        if (strcmp(*list, k) == 0)
            return true;
    return false;
}

/* in must be an object whose keys are in allowed or ignored (read-only
 * fields a client may send back), each once. */
static int check_keys(store *s, const cJSON *in, const char *const *allowed,
                      const char *const *ignored)
{
    if (!cJSON_IsObject(in))
        return invalid(s, "", "must be a JSON object");
    /* No object of ours has this many fields; the test for repeats below
     * takes time by the square of the count. */
    if (cJSON_GetArraySize(in) > 32)
        return invalid(s, "", "has too many fields");
    for (const cJSON *it = in->child; it; it = it->next) {
        if (!in_list(it->string, allowed) && !in_list(it->string, ignored))
            return invalid(s, it->string, "unknown field");
        for (const cJSON *o = in->child; o != it; o = o->next)
            if (strcmp(o->string, it->string) == 0)
                return invalid(s, it->string, "given twice");
    }
    return STORE_OK;
}

/* A string of text of min..max bytes. */
static int want_text(store *s, const cJSON *v, const char *field, size_t min, size_t max,
                     const char **out)
{
    if (!cJSON_IsString(v))
        return invalid(s, field, "must be a string");
    size_t n = strlen(v->valuestring);
    if (n < min || n > max)
        return invalid(s, field, "must be %zu to %zu bytes long", min, max);
    if (!pc_text_ok(v->valuestring))
        return invalid(s, field, "must be UTF-8 text without control characters");
    *out = v->valuestring;
    return STORE_OK;
}

/* A display name (regions, offices): text without surrounding spaces. */
static int want_label(store *s, const cJSON *v, const char *field, const char **out)
{
    int rc = want_text(s, v, field, 1, MAX_LABEL, out);
    if (rc == STORE_OK && ((*out)[0] == ' ' || (*out)[strlen(*out) - 1] == ' '))
        return invalid(s, field, "must not start or end with a space");
    return rc;
}

/* [A-Za-z0-9_.-]{1,64}, plus the characters in extra. */
static int want_ident(store *s, const cJSON *v, const char *field, const char *extra,
                      const char **out)
{
    if (!cJSON_IsString(v))
        return invalid(s, field, "must be a string");
    const char *p = v->valuestring;
    size_t n = strlen(p);
    bool ok = n >= 1 && n <= MAX_IDENT;
    for (size_t i = 0; ok && i < n; i++)
        ok = (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
             (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || p[i] == '.' || p[i] == '-' ||
             (p[i] && strchr(extra, p[i]));
    if (!ok)
        return invalid(s, field, "must be 1 to %d characters of A-Z a-z 0-9 _ . -%s%s", MAX_IDENT,
                       extra[0] ? " " : "", extra);
    *out = p;
    return STORE_OK;
}

static int want_int(store *s, const cJSON *v, const char *field, int64_t min, int64_t max,
                    int64_t *out)
{
    /* The range test also refuses NaN, so the conversion is defined. */
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1e300;
    if (!(d >= (double)min && d <= (double)max) || (double)(int64_t)d != d)
        return invalid(s, field, "must be an integer from %lld to %lld", (long long)min,
                       (long long)max);
    *out = (int64_t)d;
    return STORE_OK;
}

/* A boolean or null: *out is 1, 0 or -1 for null or absent. */
static int want_tristate(store *s, const cJSON *v, const char *field, int *out)
{
    if (is_null(v))
        *out = -1;
    else if (cJSON_IsBool(v))
        *out = cJSON_IsTrue(v);
    else
        return invalid(s, field, "must be true, false or null (inherit)");
    return STORE_OK;
}

static int want_enum(store *s, const cJSON *v, const char *field, const char *const *values,
                     const char *list, const char **out)
{
    if (!cJSON_IsString(v) || !in_list(v->valuestring, values))
        return invalid(s, field, "must be one of %s", list);
    *out = v->valuestring;
    return STORE_OK;
}

/* A CIDR in canonical form into out (at least 64 bytes). */
static int want_cidr(store *s, const cJSON *v, const char *field, char *out, size_t outlen)
{
    char e[200];
    pc_cidr c;
    if (!cJSON_IsString(v))
        return invalid(s, field, "must be a string");
    if (pc_cidr_parse(v->valuestring, &c, e, sizeof(e)) != 0)
        return invalid(s, field, "%s", e);
    pc_cidr_format(&c, out, outlen);
    return STORE_OK;
}

/* An array of CIDRs, canonical and without repeats, into a new array. */
static int want_cidrs(store *s, const cJSON *v, const char *field, size_t min, cJSON **out)
{
    char f[128];
    *out = NULL;
    if (!cJSON_IsArray(v))
        return invalid(s, field, "must be an array of address prefixes");
    int n = cJSON_GetArraySize(v);
    if ((size_t)n < min || n > MAX_ITEMS)
        return invalid(s, field, "must hold %zu to %d prefixes", min, MAX_ITEMS);
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return oom(s);
    int i = 0;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        char buf[64];
        snprintf(f, sizeof(f), "%s[%d]", field, i);
        int rc = want_cidr(s, it, f, buf, sizeof(buf));
        for (const cJSON *o = arr->child; rc == STORE_OK && o; o = o->next)
            if (strcmp(o->valuestring, buf) == 0)
                rc = invalid(s, f, "%s is listed twice", buf);
        if (rc == STORE_OK && !jpush(arr, cJSON_CreateString(buf)))
            rc = oom(s);
        if (rc != STORE_OK) {
            cJSON_Delete(arr);
            return rc;
        }
    }
    *out = arr;
    return STORE_OK;
}

/* Whether a row exists: sql takes the id as ?1. */
static int want_ref(store *s, const cJSON *v, const char *field, const char *sql, const char *what,
                    int64_t *out)
{
    bool found;
    int64_t dummy;
    int rc = want_int(s, v, field, 1, (int64_t)1 << 53, out);
    if (rc == STORE_OK)
        rc = one_int(s, &found, &dummy, sql, "i", *out);
    if (rc == STORE_OK && !found)
        rc = invalid(s, field, "there is no %s %lld", what, (long long)*out);
    return rc;
}

/* Refuses name when sql (?1 name, ?2 the object's own id, ?3 scope when
 * types is "tii") finds another row. */
static int want_free(store *s, const char *field, const char *sql, const char *types,
                     const char *name, int64_t id, int64_t scope, const char *what)
{
    bool found;
    int64_t other;
    int rc = one_int(s, &found, &other, sql, types, name, id, scope);
    if (rc == STORE_OK && found)
        rc = fail(s, STORE_ECONFLICT, field, "%s '%s' exists already (id %lld)", what, name,
                  (long long)other);
    return rc;
}

static int check_actor(store *s, const char *actor)
{
    if (!actor || !actor[0] || strlen(actor) > MAX_LABEL || !pc_text_ok(actor))
        return invalid(s, "actor", "must be 1 to %d bytes of text", MAX_LABEL);
    return STORE_OK;
}

/* Runs the node's own policy parser over doc, so that whatever the store
 * accepts a node accepts too. An error at path is reported on field plus
 * the rest of the path ("list.domains[0]"). */
static int node_accepts(store *s, const cJSON *doc, const char *path, const char *field)
{
    char err[512], f[128];
    pc_policy *p = NULL;
    char *txt = cJSON_PrintUnformatted(doc);
    if (!txt)
        return oom(s);
    int rc = pc_policy_parse(txt, strlen(txt), &p, err, sizeof(err));
    cJSON_free(txt);
    if (rc == 0) {
        pc_policy_unref(p);
        return STORE_OK;
    }
    const char *msg = err;
    size_t pl = strlen(path);
    snprintf(f, sizeof(f), "%s", field);
    if (strncmp(err, path, pl) == 0) {
        const char *rest = err + pl, *colon = strstr(rest, ": ");
        if (colon) {
            size_t rl = (size_t)(colon - rest);
            if (!field[0] && rl && rest[0] == '.') {
                rest++;
                rl--;
            }
            snprintf(f, sizeof(f), "%s%.*s", field, (int)rl, rest);
            msg = colon + 2;
        }
    }
    return invalid(s, f, "%s", msg);
}

/* A minimal policy document for node_accepts; the caller adds the part to
 * check. */
static cJSON *probe_doc(cJSON **defaults)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *d = cJSON_CreateObject();
    if (!doc || !d || !jadd(doc, "schema", cJSON_CreateString(PC_POLICY_SCHEMA)) ||
        !jadd(doc, "version", cJSON_CreateNumber(1)) ||
        !jadd(d, "use_lists", cJSON_CreateArray())) {
        cJSON_Delete(doc);
        cJSON_Delete(d);
        return NULL;
    }
    if (!jadd(doc, "defaults", d)) {
        cJSON_Delete(doc);
        return NULL;
    }
    *defaults = d;
    return doc;
}

/* Adds a duplicate of v to o under k. */
static bool jadd_dup(cJSON *o, const char *k, const cJSON *v)
{
    return jadd(o, k, cJSON_Duplicate(v, true));
}

/* --- policy object types ----------------------------------------------------- */

typedef enum { W_NEW, W_UPDATE, W_RESTORE } wmode;

/* Everything the generic code needs to know about one kind of object. */
typedef struct otype {
    const char *name, *plural;
    /* The object as the API shows it, and as a snapshot keeps it (policy
     * fields only; NULL = the same). The columns are in cols' order. */
    const char *select;
    const col *cols;
    size_t ncols;
    const char *pselect;
    const col *pcols;
    size_t npcols;
    const char *order;
    /* Writes bind ?1 the id (NULL for a new one), ?2... the fields in w,
     * then the etag. */
    const col *w;
    size_t nw;
    const char *update, *insert, *del;
    int (*check)(store *s, int64_t id, const cJSON *in, cJSON **norm);
    int (*refs)(store *s, int64_t id, const cJSON *obj); /* refuse deleting while used */
    const char *cascade;        /* WHERE clause (?1 = id) of the rules/settings going with it */
    model_scope settings_scope; /* MODEL_SCOPE_GLOBAL: has no settings of its own */
} otype;

static int check_region(store *s, int64_t id, const cJSON *in, cJSON **norm);
static int check_office(store *s, int64_t id, const cJSON *in, cJSON **norm);
static int check_group(store *s, int64_t id, const cJSON *in, cJSON **norm);
static int check_rule(store *s, int64_t id, const cJSON *in, cJSON **norm);
static int check_list(store *s, int64_t id, const cJSON *in, cJSON **norm);
static int check_node(store *s, int64_t id, const cJSON *in, cJSON **norm);
static int refs_region(store *s, int64_t id, const cJSON *obj);
static int refs_office(store *s, int64_t id, const cJSON *obj);
static int refs_list(store *s, int64_t id, const cJSON *obj);

static const col region_cols[] = {{"id", C_INT}, {"name", C_TEXT}, {"etag", C_INT}};
static const col region_w[] = {{"name", C_TEXT}};
static const otype ot_region = {
    .name = "region",
    .plural = "regions",
    .select = "SELECT id, name, etag FROM regions",
    .cols = region_cols,
    .ncols = N(region_cols),
    .order = " ORDER BY id",
    .w = region_w,
    .nw = N(region_w),
    .update = "UPDATE regions SET name = ?2, etag = ?3 WHERE id = ?1",
    .insert = "INSERT INTO regions (id, name, etag) VALUES (?1, ?2, ?3)",
    .del = "DELETE FROM regions WHERE id = ?1",
    .check = check_region,
    .refs = refs_region,
    .cascade = " WHERE region_id = ?1",
    .settings_scope = MODEL_SCOPE_REGION,
};

static const col office_cols[] = {{"id", C_INT},
                                  {"name", C_TEXT},
                                  {"region_id", C_INT},
                                  {"lan_prefixes", C_JSON},
                                  {"etag", C_INT}};
static const col office_w[] = {{"name", C_TEXT}, {"region_id", C_INT}, {"lan_prefixes", C_JSON}};
static const otype ot_office = {
    .name = "office",
    .plural = "offices",
    .select = "SELECT id, name, region_id, lan_prefixes, etag FROM offices",
    .cols = office_cols,
    .ncols = N(office_cols),
    .order = " ORDER BY id",
    .w = office_w,
    .nw = N(office_w),
    .update = "UPDATE offices SET name = ?2, region_id = ?3, lan_prefixes = ?4, etag = ?5 "
              "WHERE id = ?1",
    .insert = "INSERT INTO offices (id, name, region_id, lan_prefixes, etag) "
              "VALUES (?1, ?2, ?3, ?4, ?5)",
    .del = "DELETE FROM offices WHERE id = ?1",
    .check = check_office,
    .refs = refs_office,
    .cascade = " WHERE office_id = ?1",
    .settings_scope = MODEL_SCOPE_OFFICE,
};

static const col group_cols[] = {{"id", C_INT},       {"name", C_TEXT},  {"office_id", C_INT},
                                 {"sources", C_JSON}, {"users", C_JSON}, {"etag", C_INT}};
static const col group_w[] = {
    {"name", C_TEXT}, {"office_id", C_INT}, {"sources", C_JSON}, {"users", C_JSON}};
static const otype ot_group = {
    .name = "group",
    .plural = "groups",
    .select = "SELECT id, name, office_id, sources, users, etag FROM groups",
    .cols = group_cols,
    .ncols = N(group_cols),
    .order = " ORDER BY id",
    .w = group_w,
    .nw = N(group_w),
    .update = "UPDATE groups SET name = ?2, office_id = ?3, sources = ?4, users = ?5, etag = ?6 "
              "WHERE id = ?1",
    .insert = "INSERT INTO groups (id, name, office_id, sources, users, etag) "
              "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    .del = "DELETE FROM groups WHERE id = ?1",
    .check = check_group,
    .cascade = " WHERE group_id = ?1",
};

static const col rule_cols[] = {{"id", C_INT},       {"scope", C_TEXT}, {"scope_id", C_INT},
                                {"kind", C_TEXT},    {"value", C_TEXT}, {"action", C_TEXT},
                                {"comment", C_TEXT}, {"etag", C_INT}};
static const col rule_w[] = {{"scope", C_TEXT}, {"scope_id", C_INT}, {"kind", C_TEXT},
                             {"value", C_TEXT}, {"action", C_TEXT},  {"comment", C_TEXT}};
static const otype ot_rule = {
    .name = "rule",
    .plural = "rules",
    .select = "SELECT id, scope, coalesce(region_id, office_id, group_id), kind, value, action, "
              "comment, etag FROM rules",
    .cols = rule_cols,
    .ncols = N(rule_cols),
    .order = " ORDER BY id",
    .w = rule_w,
    .nw = N(rule_w),
    .update = "UPDATE rules SET scope = ?2, region_id = CASE ?2 WHEN 'region' THEN ?3 END, "
              "office_id = CASE ?2 WHEN 'office' THEN ?3 END, "
              "group_id = CASE ?2 WHEN 'group' THEN ?3 END, "
              "kind = ?4, value = ?5, action = ?6, comment = ?7, etag = ?8 WHERE id = ?1",
    .insert = "INSERT INTO rules (id, scope, region_id, office_id, group_id, kind, value, action, "
              "comment, etag) VALUES (?1, ?2, CASE ?2 WHEN 'region' THEN ?3 END, "
              "CASE ?2 WHEN 'office' THEN ?3 END, CASE ?2 WHEN 'group' THEN ?3 END, "
              "?4, ?5, ?6, ?7, ?8)",
    .del = "DELETE FROM rules WHERE id = ?1",
    .check = check_rule,
};

static const col list_cols[] = {{"id", C_INT},       {"name", C_TEXT}, {"category", C_TEXT},
                                {"shipped", C_BOOL}, {"list", C_JSON}, {"etag", C_INT}};
static const col list_w[] = {
    {"name", C_TEXT}, {"category", C_TEXT}, {"list", C_JSON}, {"shipped", C_BOOL}};
static const otype ot_list = {
    .name = "list",
    .plural = "lists",
    .select = "SELECT id, name, category, shipped, json, etag FROM lists",
    .cols = list_cols,
    .ncols = N(list_cols),
    .order = " ORDER BY id",
    .w = list_w,
    .nw = N(list_w),
    .update = "UPDATE lists SET name = ?2, category = ?3, json = ?4, shipped = ?5, etag = ?6 "
              "WHERE id = ?1",
    .insert = "INSERT INTO lists (id, name, category, json, shipped, etag) "
              "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    .del = "DELETE FROM lists WHERE id = ?1",
    .check = check_list,
    .refs = refs_list,
};

static const col node_cols[] = {{"id", C_INT},
                                {"name", C_TEXT},
                                {"office_id", C_INT},
                                {"etag", C_INT},
                                {"enrollment", C_TEXT},
                                {"last_seen", C_TIME},
                                {"enforced_version", C_INT},
                                {"pending_version", C_INT},
                                {"last_error", C_TEXT},
                                {"connected", C_BOOL},
                                {"software", C_TEXT},
                                {"enrolled_at", C_TIME},
                                {"cert_fingerprint", C_TEXT},
                                {"events_seq", C_INT},
                                {"events_dropped", C_INT},
                                {"stats", C_JSON},
                                {"stats_at", C_TIME}};
static const col node_w[] = {{"name", C_TEXT}, {"office_id", C_INT}};
static const otype ot_node = {
    .name = "node",
    .plural = "nodes",
    .select = "SELECT id, name, office_id, etag, enrollment, last_seen, enforced_version, "
              "pending_version, last_error, connected, software, enrolled_at, cert_fingerprint, "
              "events_seq, events_dropped, stats, stats_at FROM nodes",
    .cols = node_cols,
    .ncols = N(node_cols),
    .pselect = "SELECT id, name, office_id, etag FROM nodes",
    .pcols = node_cols,
    .npcols = 4,
    .order = " ORDER BY id",
    .w = node_w,
    .nw = N(node_w),
    .update = "UPDATE nodes SET name = ?2, office_id = ?3, etag = ?4 WHERE id = ?1",
    .insert = "INSERT INTO nodes (id, name, office_id, etag) VALUES (?1, ?2, ?3, ?4)",
    .del = "DELETE FROM nodes WHERE id = ?1",
    .check = check_node,
};

/* Settings are keyed by scope, not id: the writes bind ?2 scope and ?3
 * scope_id, and ?1 is unused. */
static const col settings_cols[] = {{"scope", C_TEXT},
                                    {"scope_id", C_INT},
                                    {"ports", C_JSON},
                                    {"require_certificate", C_BOOL},
                                    {"block_executables", C_BOOL},
                                    {"use_lists", C_JSON},
                                    {"block_high_ports", C_BOOL},
                                    {"high_port_threshold", C_INT},
                                    {"open_ports", C_JSON},
                                    {"dns_resolvers", C_JSON},
                                    {"web_mode", C_TEXT},
                                    {"web_devices", C_JSON},
                                    {"log_drops_per_minute", C_INT},
                                    {"etag", C_INT}};
static const otype ot_settings = {
    .name = "settings",
    .plural = "settings",
    .select = "SELECT scope, coalesce(region_id, office_id), ports, require_certificate, "
              "block_executables, use_lists, block_high_ports, high_port_threshold, open_ports, "
              "dns_resolvers, web_mode, web_devices, log_drops_per_minute, etag FROM settings",
    .cols = settings_cols,
    .ncols = N(settings_cols),
    .order = " ORDER BY CASE scope WHEN 'global' THEN 0 WHEN 'region' THEN 1 ELSE 2 END, "
             "coalesce(region_id, office_id)",
    .w = settings_cols,
    .nw = N(settings_cols) - 1,
    .update = "UPDATE settings SET ports = ?4, require_certificate = ?5, block_executables = ?6, "
              "use_lists = ?7, block_high_ports = ?8, high_port_threshold = ?9, "
              "open_ports = ?10, dns_resolvers = ?11, web_mode = ?12, web_devices = ?13, "
              "log_drops_per_minute = ?14, etag = ?15 "
              "WHERE scope = ?2 AND coalesce(region_id, office_id, 0) = coalesce(?3, 0)",
    .insert = "INSERT INTO settings (scope, region_id, office_id, ports, require_certificate, "
              "block_executables, use_lists, block_high_ports, high_port_threshold, open_ports, "
              "dns_resolvers, web_mode, web_devices, log_drops_per_minute, etag) "
              "VALUES (?2, CASE ?2 WHEN 'region' THEN ?3 END, CASE ?2 WHEN 'office' THEN ?3 END, "
              "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
};

static const otype *const kinds[] = {&ot_region, &ot_office, &ot_group,
                                     &ot_rule,   &ot_list,   &ot_node};
/* What a revision's snapshot holds, in this order. */
static const otype *const snap_types[] = {&ot_settings, &ot_region, &ot_office, &ot_group,
                                          &ot_rule,     &ot_list,   &ot_node};

const char *store_kind_name(store_kind k)
{
    return (unsigned)k < N(kinds) ? kinds[k]->name : "unknown";
}

static const otype *kind_type(store *s, store_kind k)
{
    if ((unsigned)k >= N(kinds)) {
        fail(s, STORE_EINVALID, NULL, "unknown kind of object %d", (int)k);
        return NULL;
    }
    return kinds[k];
}

/* Objects of type t (api: as the API shows them, else the policy fields)
 * matching where (?1 = arg), or all when where is "". */
/* Rows of t matching where (with ?1 = arg), in t's order, at most limit of
 * them when limit > 0. */
static int obj_query_n(store *s, const otype *t, bool api, const char *where, int64_t arg,
                       unsigned limit, cJSON **out)
{
    char sql[1024], lim[32] = "";
    bool p = !api && t->pselect;
    if (limit)
        snprintf(lim, sizeof(lim), " LIMIT %u", limit);
    snprintf(sql, sizeof(sql), "%s%s%s%s", p ? t->pselect : t->select, where, t->order, lim);
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return oom(s);
    int rc = rows_into(s, arr, p ? t->pcols : t->cols, p ? t->npcols : t->ncols, sql,
                       where[0] ? "i" : "", arg);
    if (rc != STORE_OK) {
        cJSON_Delete(arr);
        arr = NULL;
    }
    *out = arr;
    return rc;
}

static int obj_query(store *s, const otype *t, bool api, const char *where, int64_t arg,
                     cJSON **out)
{
    return obj_query_n(s, t, api, where, arg, 0, out);
}

/* One object by id; STORE_ENOTFOUND when there is none. */
static int obj_load(store *s, const otype *t, bool api, int64_t id, cJSON **out)
{
    cJSON *arr = NULL;
    *out = NULL;
    int rc = obj_query(s, t, api, " WHERE id = ?1", id, &arr);
    if (rc == STORE_OK && !arr->child)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no %s %lld", t->name, (long long)id);
    if (rc == STORE_OK)
        *out = cJSON_DetachItemFromArray(arr, 0);
    cJSON_Delete(arr);
    return rc;
}

/* Writes obj as a row of t with the given etag: W_NEW inserts with a new
 * id (into *newid), W_UPDATE changes row id, W_RESTORE inserts with obj's
 * own id. */
static int obj_write(store *s, const otype *t, wmode mode, int64_t id, const cJSON *obj,
                     int64_t etag, int64_t *newid)
{
    sqlite3_stmt *st = NULL;
    if (mode == W_RESTORE)
        id = get_int(obj, "id");
    int rc = prep(s, mode == W_UPDATE ? t->update : t->insert, &st);
    if (rc == STORE_OK) {
        int r = mode == W_NEW || !id ? sqlite3_bind_null(st, 1) : sqlite3_bind_int64(st, 1, id);
        if (r != SQLITE_OK)
            rc = db_fail(s, r, "binding a value");
    }
    if (rc == STORE_OK)
        rc = bind_cols(s, st, 2, obj, t->w, t->nw);
    if (rc == STORE_OK) {
        int r = sqlite3_bind_int64(st, 2 + (int)t->nw, etag);
        if (r == SQLITE_OK)
            r = sqlite3_step(st);
        if (r != SQLITE_DONE)
            rc = db_fail(s, r, mode == W_UPDATE ? "updating" : "inserting");
    }
    unprep(s, st);
    if (rc == STORE_OK && mode == W_UPDATE && sqlite3_changes(s->db) != 1)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no such %s", t->name);
    if (rc == STORE_OK && newid)
        *newid = mode == W_NEW ? sqlite3_last_insert_rowid(s->db) : id;
    return rc;
}

/* --- checks of each type ------------------------------------------------------ */

static const char *const ro_id_etag[] = {"id", "etag", NULL};

static int check_region(store *s, int64_t id, const cJSON *in, cJSON **norm)
{
    static const char *const keys[] = {"name", NULL};
    const char *name = NULL;
    int rc = check_keys(s, in, keys, ro_id_etag);
    if (rc == STORE_OK)
        rc = want_label(s, get(in, "name"), "name", &name);
    if (rc == STORE_OK)
        rc = want_free(s, "name", "SELECT id FROM regions WHERE name = ?1 AND id <> ?2", "ti", name,
                       id, 0, "a region named");
    if (rc != STORE_OK)
        return rc;
    cJSON *o = cJSON_CreateObject();
    if (!o || !jadd(o, "name", cJSON_CreateString(name))) {
        cJSON_Delete(o);
        return oom(s);
    }
    *norm = o;
    return STORE_OK;
}

static int check_office(store *s, int64_t id, const cJSON *in, cJSON **norm)
{
    static const char *const keys[] = {"name", "region_id", "lan_prefixes", NULL};
    const char *name = NULL;
    int64_t region = 0;
    cJSON *lan = NULL;
    int rc = check_keys(s, in, keys, ro_id_etag);
    if (rc == STORE_OK)
        rc = want_label(s, get(in, "name"), "name", &name);
    if (rc == STORE_OK)
        rc = want_ref(s, get(in, "region_id"), "region_id", "SELECT 1 FROM regions WHERE id = ?1",
                      "region", &region);
    if (rc == STORE_OK) {
        const cJSON *v = get(in, "lan_prefixes");
        rc = is_null(v) ? ((lan = cJSON_CreateArray()) ? STORE_OK : oom(s))
                        : want_cidrs(s, v, "lan_prefixes", 0, &lan);
    }
    if (rc == STORE_OK)
        rc = want_free(s, "name", "SELECT id FROM offices WHERE name = ?1 AND id <> ?2", "ti", name,
                       id, 0, "an office named");
    if (rc != STORE_OK) {
        cJSON_Delete(lan);
        return rc;
    }
    cJSON *o = cJSON_CreateObject();
    if (!o)
        cJSON_Delete(lan);
    /* jadd takes lan whether it succeeds or not. */
    if (!o || !jadd(o, "lan_prefixes", lan) || !jadd(o, "name", cJSON_CreateString(name)) ||
        !jadd(o, "region_id", cJSON_CreateNumber((double)region))) {
        cJSON_Delete(o);
        return oom(s);
    }
    *norm = o;
    return STORE_OK;
}

/* The groups that can meet a group of office ?3 in one node's document:
 * those of the same office and those of every office; a group of every
 * office (?3 = 0) meets all. Two statements, so that the first can use the
 * index on office_id. */
#define GROUPS_MEETING(office) ((office) ? "(g.office_id = ?3 OR g.office_id IS NULL)" : "?3 = 0")

static int check_group(store *s, int64_t id, const cJSON *in, cJSON **norm)
{
    static const char *const keys[] = {"name", "office_id", "sources", "users", NULL};
    const char *name = NULL;
    int64_t office = 0;
    cJSON *sources = NULL, *users = NULL, *o = NULL, *doc = NULL, *d = NULL;
    const cJSON *v;
    int rc = check_keys(s, in, keys, ro_id_etag);
    if (rc == STORE_OK)
        rc = want_ident(s, get(in, "name"), "name", "", &name);
    if (rc == STORE_OK && !is_null(v = get(in, "office_id")))
        rc = want_ref(s, v, "office_id", "SELECT 1 FROM offices WHERE id = ?1", "office", &office);
    if (rc == STORE_OK)
        rc = want_cidrs(s, get(in, "sources"), "sources", 1, &sources);
    /* The node's parser has the last word on a group's name and sources. */
    if (rc == STORE_OK) {
        cJSON *groups = NULL, *g = NULL;
        doc = probe_doc(&d);
        if (!doc || !jadd(doc, "groups", groups = cJSON_CreateArray()) ||
            !jpush(groups, g = cJSON_CreateObject()) ||
            !jadd(g, "name", cJSON_CreateString(name)) || !jadd_dup(g, "sources", sources))
            rc = oom(s);
        else
            rc = node_accepts(s, doc, "$.groups[0]", "");
    }
    if (rc == STORE_OK) {
        v = get(in, "users");
        int i = 0;
        if (is_null(v)) {
            users = cJSON_CreateArray();
            rc = users ? STORE_OK : oom(s);
        } else if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > MAX_ITEMS) {
            rc = invalid(s, "users", "must be an array of at most %d user names", MAX_ITEMS);
        } else {
            users = cJSON_Duplicate(v, true);
            rc = users ? STORE_OK : oom(s);
        }
        for (const cJSON *u = users ? users->child : NULL; rc == STORE_OK && u; u = u->next, i++) {
            char f[32];
            const char *t = "";
            snprintf(f, sizeof(f), "users[%d]", i);
            rc = want_text(s, u, f, 1, 256, &t);
            for (const cJSON *p = users->child; rc == STORE_OK && p != u; p = p->next)
                if (strcmp(p->valuestring, u->valuestring) == 0)
                    rc = invalid(s, f, "'%s' is listed twice", t);
        }
    }
    if (rc == STORE_OK)
        rc = want_free(s, "name",
                       "SELECT g.id FROM groups g WHERE g.name = ?1 AND g.id <> ?2 AND "
                       "(g.office_id = ?3 OR g.office_id IS NULL OR ?3 = 0)",
                       "tii", name, id, office,
                       office ? "a group for every office, or of this office, named"
                              : "a group named");
    /* A source selects one group: the same prefix in two groups that meet
     * in a node's document would make it refuse the document. */
    if (rc == STORE_OK) {
        sqlite3_stmt *st = NULL;
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "SELECT g.name, j.value FROM groups g, json_each(g.sources) j "
                 "WHERE g.id <> ?2 AND %s AND j.value IN (SELECT value FROM json_each(?1)) "
                 "LIMIT 1",
                 GROUPS_MEETING(office));
        rc = prep(s, sql, &st);
        if (rc == STORE_OK) {
            char *txt = cJSON_PrintUnformatted(sources);
            int r = txt ? sqlite3_bind_text(st, 1, txt, -1, SQLITE_TRANSIENT) : SQLITE_NOMEM;
            cJSON_free(txt);
            if (r == SQLITE_OK)
                r = sqlite3_bind_int64(st, 2, id);
            if (r == SQLITE_OK)
                r = sqlite3_bind_int64(st, 3, office);
            if (r == SQLITE_OK)
                r = sqlite3_step(st);
            if (r == SQLITE_ROW) {
                const char *other = (const char *)sqlite3_column_text(st, 0);
                const char *prefix = (const char *)sqlite3_column_text(st, 1);
                char f[32] = "sources";
                int i = 0;
                for (const cJSON *e = sources->child; e; e = e->next, i++)
                    if (strcmp(e->valuestring, prefix) == 0)
                        snprintf(f, sizeof(f), "sources[%d]", i);
                rc = fail(s, STORE_ECONFLICT, f,
                          "%s is a source of group '%s' too, which applies in the same offices; "
                          "a source selects one group",
                          prefix, other);
            } else if (r != SQLITE_DONE) {
                rc = db_fail(s, r, "reading");
            }
        }
        unprep(s, st);
    }
    if (rc == STORE_OK) {
        o = cJSON_CreateObject();
        if (!o || !jadd(o, "name", cJSON_CreateString(name)) ||
            !jadd(o, "office_id",
                  office ? cJSON_CreateNumber((double)office) : cJSON_CreateNull()) ||
            !jadd_dup(o, "sources", sources) || !jadd_dup(o, "users", users))
            rc = oom(s);
    }
    cJSON_Delete(doc);
    cJSON_Delete(sources);
    cJSON_Delete(users);
    if (rc != STORE_OK) {
        cJSON_Delete(o);
        return rc;
    }
    *norm = o;
    return STORE_OK;
}

static const char *const scope_names[] = {"global", "region", "office", "group", NULL};
static const char *const kind_names[] = {"skype", "domain", "prefix", "url_suffix", NULL};

/* Lower case, and without the one trailing dot a domain may have: the form
 * the node matches in, so that equal rules compare equal. */
static void normalize_value(const char *kind, const char *in, char *out, size_t len)
{
    if (strcmp(kind, "prefix") == 0) {
        pc_cidr c;
        char e[8];
        if (pc_cidr_parse(in, &c, e, sizeof(e)) == 0) {
            pc_cidr_format(&c, out, len);
            return;
        }
    }
    size_t n = 0;
    for (; in[n] && n + 1 < len; n++)
        out[n] = (in[n] >= 'A' && in[n] <= 'Z') ? (char)(in[n] - 'A' + 'a') : in[n];
    out[n] = '\0';
    if (strcmp(kind, "domain") == 0 && n > 1 && out[n - 1] == '.')
        out[n - 1] = '\0';
}

static int check_rule(store *s, int64_t id, const cJSON *in, cJSON **norm)
{
    static const char *const keys[] = {"scope",  "kind",    "scope_id", "value",
                                       "action", "comment", NULL};
    static const char *const actions[] = {"allow", "block", NULL};
    static const char *const scope_sql[] = {NULL, "SELECT 1 FROM regions WHERE id = ?1",
                                            "SELECT 1 FROM offices WHERE id = ?1",
                                            "SELECT 1 FROM groups WHERE id = ?1"};
    const char *scope = NULL, *kind = NULL, *action = NULL, *comment = "", *value = "";
    char nvalue[300] = "";
    int64_t scope_id = 0;
    const cJSON *v;
    int rc = check_keys(s, in, keys, ro_id_etag);
    if (rc == STORE_OK)
        rc = want_enum(s, get(in, "scope"), "scope", scope_names, "global, region, office, group",
                       &scope);
    if (rc == STORE_OK) {
        int sc = 0;
        while (strcmp(scope_names[sc], scope) != 0)
            sc++;
        v = get(in, "scope_id");
        if (sc == MODEL_SCOPE_GLOBAL) {
            if (!is_null(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
                rc = invalid(s, "scope_id", "a global rule has no scope_id");
        } else {
            rc = want_ref(s, v, "scope_id", scope_sql[sc], scope, &scope_id);
        }
    }
    if (rc == STORE_OK)
        rc = want_enum(s, get(in, "kind"), "kind", kind_names, "skype, domain, prefix, url_suffix",
                       &kind);
    if (rc == STORE_OK) {
        v = get(in, "value");
        if (strcmp(kind, "skype") == 0) {
            if (!is_null(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
                rc = invalid(s, "value", "a skype rule has no value");
        } else if (!cJSON_IsString(v) || !v->valuestring[0]) {
            rc = invalid(s, "value", "a %s rule needs a value", kind);
        } else {
            /* The node checks the value as a group's blocked_* entry. */
            cJSON *d = NULL, *doc = probe_doc(&d), *arr = NULL;
            const char *key = strcmp(kind, "domain") == 0   ? "blocked_domains"
                              : strcmp(kind, "prefix") == 0 ? "blocked_prefixes"
                                                            : "blocked_url_suffixes";
            char path[64];
            snprintf(path, sizeof(path), "$.defaults.%s[0]", key);
            if (!doc || !jadd(d, key, arr = cJSON_CreateArray()) ||
                !jpush(arr, cJSON_Duplicate(v, true))) {
                rc = oom(s);
            } else {
                rc = node_accepts(s, doc, path, "value");
            }
            cJSON_Delete(doc);
            if (rc == STORE_OK) {
                normalize_value(kind, v->valuestring, nvalue, sizeof(nvalue));
                value = nvalue;
            }
        }
    }
    if (rc == STORE_OK)
        rc = want_enum(s, get(in, "action"), "action", actions, "allow, block", &action);
    if (rc == STORE_OK && !is_null(v = get(in, "comment")))
        rc = want_text(s, v, "comment", 0, MAX_TEXT, &comment);
    if (rc == STORE_OK) {
        bool found;
        int64_t other;
        rc = one_int(s, &found, &other,
                     "SELECT id FROM rules WHERE scope = ?1 AND "
                     "coalesce(region_id, office_id, group_id, 0) = ?2 AND kind = ?3 AND "
                     "value = ?4 AND id <> ?5",
                     "titti", scope, scope_id, kind, value, id);
        if (rc == STORE_OK && found)
            rc = fail(s, STORE_ECONFLICT, "value",
                      "rule %lld has this scope, kind and value already; change that one",
                      (long long)other);
    }
    if (rc != STORE_OK)
        return rc;
    cJSON *o = cJSON_CreateObject();
    if (!o || !jadd(o, "scope", cJSON_CreateString(scope)) ||
        !jadd(o, "scope_id",
              scope_id ? cJSON_CreateNumber((double)scope_id) : cJSON_CreateNull()) ||
        !jadd(o, "kind", cJSON_CreateString(kind)) ||
        !jadd(o, "value", cJSON_CreateString(value)) ||
        !jadd(o, "action", cJSON_CreateString(action)) ||
        !jadd(o, "comment", cJSON_CreateString(comment))) {
        cJSON_Delete(o);
        return oom(s);
    }
    *norm = o;
    return STORE_OK;
}

/* Checks a list object with the node's parser (field "list..."). */
static int check_list_body(store *s, const cJSON *list)
{
    if (!cJSON_IsObject(list))
        return invalid(s, "list", "must be an object (as under \"lists\" in a policy document)");
    cJSON *d = NULL, *doc = probe_doc(&d), *lists = NULL;
    int rc;
    if (!doc || !jadd(doc, "lists", lists = cJSON_CreateObject()) || !jadd_dup(lists, "x", list)) {
        rc = oom(s);
    } else {
        rc = node_accepts(s, doc, "$.lists.x", "list");
    }
    cJSON_Delete(doc);
    return rc;
}

static int check_list(store *s, int64_t id, const cJSON *in, cJSON **norm)
{
    static const char *const keys[] = {"name", "list", NULL};
    static const char *const ro[] = {"id", "etag", "category", "shipped", NULL};
    const char *name = NULL;
    int64_t shipped = 0;
    bool found = false;
    int rc = check_keys(s, in, keys, ro);
    if (rc == STORE_OK)
        rc = want_ident(s, get(in, "name"), "name", "", &name);
    if (rc == STORE_OK && (strcmp(name, "group") == 0 || strcmp(name, "defaults") == 0))
        rc = invalid(s, "name", "'%s' is reserved: a node's decisions use it", name);
    if (rc == STORE_OK)
        rc = check_list_body(s, get(in, "list"));
    if (rc == STORE_OK)
        rc = want_free(s, "name", "SELECT id FROM lists WHERE name = ?1 AND id <> ?2", "ti", name,
                       id, 0, "a list named");
    if (rc == STORE_OK && id) {
        rc = one_int(s, &found, &shipped, "SELECT shipped FROM lists WHERE id = ?1 AND name <> ?2",
                     "it", id, name);
        if (rc == STORE_OK && found) /* a rename: the old name must be unused */
            rc = refs_list(s, id, NULL);
        if (rc == STORE_OK && !found)
            rc = one_int(s, &found, &shipped, "SELECT shipped FROM lists WHERE id = ?1", "i", id);
    }
    if (rc != STORE_OK)
        return rc;
    const cJSON *list = get(in, "list");
    cJSON *o = cJSON_CreateObject();
    if (!o || !jadd(o, "name", cJSON_CreateString(name)) ||
        !jadd(o, "category", cJSON_CreateString(get_str(list, "category"))) ||
        !jadd_dup(o, "list", list) || !jadd(o, "shipped", cJSON_CreateBool(shipped != 0))) {
        cJSON_Delete(o);
        return oom(s);
    }
    *norm = o;
    return STORE_OK;
}

static int check_node(store *s, int64_t id, const cJSON *in, cJSON **norm)
{
    static const char *const keys[] = {"name", "office_id", NULL};
    static const char *const ro[] = {"id",
                                     "etag",
                                     "enrollment",
                                     "last_seen",
                                     "enforced_version",
                                     "pending_version",
                                     "last_error",
                                     "connected",
                                     "software",
                                     "enrolled_at",
                                     "cert_fingerprint",
                                     "events_seq",
                                     "events_dropped",
                                     "stats",
                                     "stats_at",
                                     NULL};
    const char *name = NULL;
    int64_t office = 0;
    int rc = check_keys(s, in, keys, ro);
    if (rc == STORE_OK)
        rc = want_ident(s, get(in, "name"), "name", "", &name);
    if (rc == STORE_OK)
        rc = want_ref(s, get(in, "office_id"), "office_id", "SELECT 1 FROM offices WHERE id = ?1",
                      "office", &office);
    if (rc == STORE_OK)
        rc = want_free(s, "name", "SELECT id FROM nodes WHERE name = ?1 AND id <> ?2", "ti", name,
                       id, 0, "a node named");
    if (rc != STORE_OK)
        return rc;
    cJSON *o = cJSON_CreateObject();
    if (!o || !jadd(o, "name", cJSON_CreateString(name)) ||
        !jadd(o, "office_id", cJSON_CreateNumber((double)office))) {
        cJSON_Delete(o);
        return oom(s);
    }
    *norm = o;
    return STORE_OK;
}

static int refs_region(store *s, int64_t id, const cJSON *obj)
{
    bool found;
    int64_t n;
    int rc = one_int(s, &found, &n, "SELECT count(*) FROM offices WHERE region_id = ?1", "i", id);
    if (rc == STORE_OK && n > 0)
        rc = fail(s, STORE_ECONFLICT, NULL,
                  "region '%s' still has %lld office(s); delete them or move them to another "
                  "region first",
                  get_str(obj, "name"), (long long)n);
    return rc;
}

static int refs_office(store *s, int64_t id, const cJSON *obj)
{
    bool found;
    int64_t groups, nodes;
    int rc =
        one_int(s, &found, &groups, "SELECT count(*) FROM groups WHERE office_id = ?1", "i", id);
    if (rc == STORE_OK)
        rc = one_int(s, &found, &nodes, "SELECT count(*) FROM nodes WHERE office_id = ?1", "i", id);
    if (rc == STORE_OK && (groups > 0 || nodes > 0))
        rc = fail(s, STORE_ECONFLICT, NULL,
                  "office '%s' still has %lld group(s) and %lld node(s); delete or move them "
                  "first",
                  get_str(obj, "name"), (long long)groups, (long long)nodes);
    return rc;
}

/* A list named in some scope's use_lists cannot go (or be renamed). */
static int refs_list(store *s, int64_t id, const cJSON *obj)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(s,
                  "SELECT l.name, s.scope, coalesce(s.region_id, s.office_id) FROM lists l, "
                  "settings s, json_each(s.use_lists) j WHERE l.id = ?1 AND j.value = l.name "
                  "LIMIT 1",
                  &st);
    if (rc == STORE_OK) {
        int r = sqlite3_bind_int64(st, 1, id);
        if (r == SQLITE_OK)
            r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            char where[64] = "global";
            if (sqlite3_column_type(st, 2) != SQLITE_NULL)
                snprintf(where, sizeof(where), "%s %lld", (const char *)sqlite3_column_text(st, 1),
                         (long long)sqlite3_column_int64(st, 2));
            rc = fail(s, STORE_ECONFLICT, NULL,
                      "list '%s' is in use by the %s settings; take it out of use_lists first",
                      (const char *)sqlite3_column_text(st, 0), where);
        } else if (r != SQLITE_DONE)
            rc = db_fail(s, r, "reading");
    }
    unprep(s, st);
    (void)obj;
    return rc;
}

/* --- settings ----------------------------------------------------------------- */

static const char *scope_name(model_scope sc)
{
    return (unsigned)sc < 4 ? scope_names[sc] : "unknown";
}

/* Checks the scope exists; settings rows exist for every region and
 * office. */
static int settings_scope_check(store *s, model_scope scope, int64_t scope_id)
{
    bool found = false;
    int64_t dummy;
    int rc = STORE_OK;
    if (scope == MODEL_SCOPE_GLOBAL) {
        if (scope_id != 0)
            return invalid(s, "scope_id", "the global scope has no id");
        return STORE_OK;
    }
    if (scope == MODEL_SCOPE_REGION)
        rc = one_int(s, &found, &dummy, "SELECT 1 FROM regions WHERE id = ?1", "i", scope_id);
    else if (scope == MODEL_SCOPE_OFFICE)
        rc = one_int(s, &found, &dummy, "SELECT 1 FROM offices WHERE id = ?1", "i", scope_id);
    else
        return invalid(s, "scope", "settings exist for the global, region and office scopes");
    if (rc == STORE_OK && !found)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no %s %lld", scope_name(scope),
                  (long long)scope_id);
    return rc;
}

static int settings_load(store *s, model_scope scope, int64_t scope_id, cJSON **out)
{
    char sql[1024];
    cJSON *arr = cJSON_CreateArray();
    *out = NULL;
    if (!arr)
        return oom(s);
    snprintf(sql, sizeof(sql), "%s%s", ot_settings.select,
             " WHERE scope = ?1 AND coalesce(region_id, office_id, 0) = ?2");
    int rc = rows_into(s, arr, ot_settings.cols, ot_settings.ncols, sql, "ti", scope_name(scope),
                       scope_id);
    if (rc == STORE_OK && !arr->child)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there are no settings for %s %lld", scope_name(scope),
                  (long long)scope_id);
    if (rc == STORE_OK)
        *out = cJSON_DetachItemFromArray(arr, 0);
    cJSON_Delete(arr);
    return rc;
}

static int cmp_port_key(const void *a, const void *b)
{
    const char *x = (*(const cJSON *const *)a)->string, *y = (*(const cJSON *const *)b)->string;
    size_t nx = strlen(x), ny = strlen(y);
    return nx != ny ? (nx < ny ? -1 : 1) : strcmp(x, y);
}

static int check_ports(store *s, const cJSON *v, cJSON **out)
{
    if (!cJSON_IsObject(v))
        return invalid(s, "ports", "must be an object of port to protocol, or null (inherit)");
    if (cJSON_GetArraySize(v) > 1024)
        return invalid(s, "ports", "at most 1024 ports");
    cJSON *d = NULL, *doc = probe_doc(&d), *proxy = cJSON_CreateObject();
    int rc;
    if (!doc || !jadd(doc, "proxy", proxy) || !jadd_dup(proxy, "ports", v)) {
        if (!doc)
            cJSON_Delete(proxy);
        rc = oom(s);
    } else {
        rc = node_accepts(s, doc, "$.proxy.ports", "ports");
    }
    cJSON_Delete(doc);
    if (rc != STORE_OK)
        return rc;
    /* In port order, so that equal settings print the same. The node took
     * the keys as ports, so they are decimal numbers of 1 to 5 digits: in
     * port order when sorted by length, then text. */
    size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
    const cJSON **sorted = calloc(n ? n : 1, sizeof(*sorted));
    cJSON *o = cJSON_CreateObject();
    for (const cJSON *it = v->child; sorted && it; it = it->next)
        sorted[i++] = it;
    if (sorted)
        qsort(sorted, n, sizeof(*sorted), cmp_port_key);
    for (i = 0; o && sorted && i < n; i++)
        if (!jadd_dup(o, sorted[i]->string, sorted[i])) {
            cJSON_Delete(o);
            o = NULL;
        }
    free(sorted);
    if (!o || !sorted)
        return oom(s);
    *out = o;
    return STORE_OK;
}

static int check_use_lists(store *s, const cJSON *v, cJSON **out)
{
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > 256)
        return invalid(s, "use_lists", "must be an array of list names, or null (inherit)");
    int i = 0;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        char f[32];
        bool found;
        int64_t dummy;
        snprintf(f, sizeof(f), "use_lists[%d]", i);
        if (!cJSON_IsString(it))
            return invalid(s, f, "must be a list name");
        int rc =
            one_int(s, &found, &dummy, "SELECT 1 FROM lists WHERE name = ?1", "t", it->valuestring);
        if (rc != STORE_OK)
            return rc;
        if (!found)
            return invalid(s, f, "there is no list named '%s'", it->valuestring);
        for (const cJSON *o = v->child; o != it; o = o->next)
            if (strcmp(o->valuestring, it->valuestring) == 0)
                return invalid(s, f, "'%s' is listed twice", it->valuestring);
    }
    *out = cJSON_Duplicate(v, true);
    return *out ? STORE_OK : oom(s);
}

/* Puts prefix before the field of the last failure ("open_ports[1]" and
 * "port" make "open_ports[1].port"). */
static void field_prefix(store *s, const char *prefix)
{
    char g[sizeof(s->field)];
    if (snprintf(g, sizeof(g), "%s%s%s", prefix, s->field[0] ? "." : "", s->field) >=
        (int)sizeof(g))
        g[sizeof(g) - 1] = '\0'; /* cut: still names the start of the path */
    memcpy(s->field, g, sizeof(g));
}

/* A decimal port of 1 to 5 digits (no sign, no leading zero) at *p; moves
 * *p past it. */
static bool port_digits(const char **p, int64_t *out)
{
    const char *q = *p;
    int64_t v = 0;
    size_t n = 0;
    while (q[n] >= '0' && q[n] <= '9' && n < 6)
        v = v * 10 + (q[n++] - '0');
    if (n == 0 || n > 5 || (n > 1 && q[0] == '0') || v < 1 || v > 65535)
        return false;
    *p = q + n;
    *out = v;
    return true;
}

/* An open port: a number, or a string "N" or "N-M" (a range); *last is
 * *first for one port. */
static int want_port_range(store *s, const cJSON *v, const char *field, int64_t *first,
                           int64_t *last)
{
    if (cJSON_IsNumber(v)) {
        int rc = want_int(s, v, field, 1, 65535, first);
        *last = *first;
        return rc;
    }
    const char *p = cJSON_IsString(v) ? v->valuestring : NULL;
    if (!p || !port_digits(&p, first))
        return invalid(s, field, "must be a port (1 to 65535) or a range such as \"8000-8100\"");
    *last = *first;
    if (*p == '-') {
        p++;
        if (!port_digits(&p, last))
            return invalid(s, field,
                           "must be a port (1 to 65535) or a range such as \"8000-8100\"");
    }
    if (*p)
        return invalid(s, field, "must be a port (1 to 65535) or a range such as \"8000-8100\"");
    if (*last < *first)
        return invalid(s, field, "'%s': the range ends before it starts", v->valuestring);
    return STORE_OK;
}

/* The range of a stored open port's "port" (a number or "N-M"). */
static void port_range_of(const cJSON *port, int64_t *first, int64_t *last)
{
    const char *p = cJSON_IsString(port) ? port->valuestring : NULL;
    *first = *last = cJSON_IsNumber(port) ? (int64_t)port->valuedouble : 0;
    if (p && port_digits(&p, first)) {
        *last = *first;
        if (*p == '-') {
            p++;
            if (!port_digits(&p, last))
                *last = *first;
        }
    }
}

/* The node accepts at most this many (device, port) pairs in its service
 * whitelist (docs/firewall.md). */
#define MAX_ALLOW_PAIRS PC_FW_MAX_ALLOW

static int check_open_ports(store *s, const cJSON *v, cJSON **out)
{
    static const char *const keys[] = {"port", "proto", "devices", NULL};
    static const char *const protos[] = {"tcp", "udp", NULL};
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > 256)
        return invalid(s, "open_ports", "must be an array of {port, proto, devices}, or null");
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return oom(s);
    int i = 0, rc = STORE_OK, pairs = 0;
    for (const cJSON *it = v->child; rc == STORE_OK && it; it = it->next, i++) {
        char f[32], g[64], pb[48];
        int64_t port = 0, last = 0;
        const char *proto = NULL;
        cJSON *devices = NULL, *e = NULL;
        snprintf(f, sizeof(f), "open_ports[%d]", i);
        rc = check_keys(s, it, keys, NULL);
        if (rc == STORE_EINVALID)
            field_prefix(s, f);
        if (rc == STORE_OK) {
            snprintf(g, sizeof(g), "%s.port", f);
            rc = want_port_range(s, get(it, "port"), g, &port, &last);
        }
        if (rc == STORE_OK) {
            snprintf(g, sizeof(g), "%s.proto", f);
            rc = want_enum(s, get(it, "proto"), g, protos, "tcp, udp", &proto);
        }
        if (rc == STORE_OK) {
            snprintf(g, sizeof(g), "%s.devices", f);
            rc = want_cidrs(s, get(it, "devices"), g, 1, &devices);
        }
        if (last > port)
            snprintf(pb, sizeof(pb), "%lld-%lld", (long long)port, (long long)last);
        else
            snprintf(pb, sizeof(pb), "%lld", (long long)port);
        int j = 0;
        for (const cJSON *o = arr->child; rc == STORE_OK && o; o = o->next, j++) {
            int64_t a, b;
            port_range_of(get(o, "port"), &a, &b);
            if (strcmp(get_str(o, "proto"), proto) != 0 || b < port || a > last)
                continue;
            if (a == port && b == last)
                rc = invalid(s, f, "%s/%s is listed twice", pb, proto);
            else
                rc = invalid(s, f, "%s/%s overlaps open_ports[%d]; list each port once", pb, proto,
                             j);
        }
        if (rc == STORE_OK && (pairs += cJSON_GetArraySize(devices)) > MAX_ALLOW_PAIRS)
            rc = invalid(s, f, "more than %d devices in all open ports", MAX_ALLOW_PAIRS);
        if (rc == STORE_OK) {
            /* jadd takes devices whether it succeeds or not. */
            if (!jpush(arr, e = cJSON_CreateObject()))
                cJSON_Delete(devices);
            else if (!jadd(e, "devices", devices) ||
                     !jadd(e, "port",
                           last > port ? cJSON_CreateString(pb)
                                       : cJSON_CreateNumber((double)port)) ||
                     !jadd(e, "proto", cJSON_CreateString(proto)))
                rc = oom(s);
            if (!e)
                rc = oom(s);
        } else {
            cJSON_Delete(devices);
        }
    }
    if (rc != STORE_OK) {
        cJSON_Delete(arr);
        return rc;
    }
    *out = arr;
    return STORE_OK;
}

#define MAX_RESOLVERS 64

/* DNS resolvers: IP addresses, in the node's spelling ("::ffff:192.0.2.1"
 * is 192.0.2.1), each once. */
static int check_dns_resolvers(store *s, const cJSON *v, cJSON **out)
{
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > MAX_RESOLVERS)
        return invalid(s, "dns_resolvers",
                       "must be an array of at most %d IP addresses, or null (inherit)",
                       MAX_RESOLVERS);
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return oom(s);
    int i = 0, rc = STORE_OK;
    for (const cJSON *it = v->child; rc == STORE_OK && it; it = it->next, i++) {
        char f[32], buf[64];
        pc_cidr c;
        snprintf(f, sizeof(f), "dns_resolvers[%d]", i);
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/') ||
            pc_cidr_parse(it->valuestring, &c, NULL, 0) != 0) {
            rc = invalid(s, f, "must be an IP address");
            break;
        }
        pc_cidr_format(&c, buf, sizeof(buf));
        char *slash = strchr(buf, '/');
        if (slash)
            *slash = '\0';
        for (const cJSON *o = arr->child; rc == STORE_OK && o; o = o->next)
            if (strcmp(o->valuestring, buf) == 0)
                rc = invalid(s, f, "%s is listed twice", buf);
        if (rc == STORE_OK && !jpush(arr, cJSON_CreateString(buf)))
            rc = oom(s);
    }
    if (rc != STORE_OK) {
        cJSON_Delete(arr);
        return rc;
    }
    *out = arr;
    return STORE_OK;
}

static int check_settings(store *s, model_scope scope, int64_t scope_id, const cJSON *in,
                          cJSON **norm)
{
    static const char *const keys[] = {"ports",       "require_certificate",  "block_executables",
                                       "use_lists",   "block_high_ports",     "high_port_threshold",
                                       "open_ports",  "dns_resolvers",        "web_mode",
                                       "web_devices", "log_drops_per_minute", NULL};
    static const char *const ro[] = {"scope", "scope_id", "etag", NULL};
    static const char *const web_modes[] = {"transparent", "proxy", NULL};
    static const char *const bools[] = {"require_certificate", "block_executables",
                                        "block_high_ports"};
    int rc = check_keys(s, in, keys, ro);
    if (rc != STORE_OK)
        return rc;
    cJSON *o = cJSON_CreateObject();
    if (!o || !jadd(o, "scope", cJSON_CreateString(scope_name(scope))) ||
        !jadd(o, "scope_id",
              scope_id ? cJSON_CreateNumber((double)scope_id) : cJSON_CreateNull())) {
        cJSON_Delete(o);
        return oom(s);
    }
    const cJSON *v;
    cJSON *val = NULL;
    if (is_null(v = get(in, "ports")))
        val = cJSON_CreateNull();
    else if ((rc = check_ports(s, v, &val)) != STORE_OK)
        goto done;
    if (!jadd(o, "ports", val))
        goto nomem;
    for (size_t i = 0; i < N(bools); i++) {
        int t = -1;
        if ((rc = want_tristate(s, get(in, bools[i]), bools[i], &t)) != STORE_OK)
            goto done;
        if (!jadd(o, bools[i], t < 0 ? cJSON_CreateNull() : cJSON_CreateBool(t)))
            goto nomem;
    }
    val = NULL;
    if (is_null(v = get(in, "use_lists")))
        val = cJSON_CreateNull();
    else if ((rc = check_use_lists(s, v, &val)) != STORE_OK)
        goto done;
    if (!jadd(o, "use_lists", val))
        goto nomem;
    int64_t threshold = 0;
    if (!is_null(v = get(in, "high_port_threshold")) &&
        (rc = want_int(s, v, "high_port_threshold", 1, 65535, &threshold)) != STORE_OK)
        goto done;
    if (!jadd(o, "high_port_threshold",
              threshold ? cJSON_CreateNumber((double)threshold) : cJSON_CreateNull()))
        goto nomem;
    val = NULL;
    if (is_null(v = get(in, "open_ports")))
        val = cJSON_CreateNull();
    else if ((rc = check_open_ports(s, v, &val)) != STORE_OK)
        goto done;
    if (!jadd(o, "open_ports", val))
        goto nomem;
    val = NULL;
    if (is_null(v = get(in, "dns_resolvers")))
        val = cJSON_CreateNull();
    else if ((rc = check_dns_resolvers(s, v, &val)) != STORE_OK)
        goto done;
    if (!jadd(o, "dns_resolvers", val))
        goto nomem;
    const char *mode = NULL;
    if (!is_null(v = get(in, "web_mode")) &&
        (rc = want_enum(s, v, "web_mode", web_modes, "transparent, proxy", &mode)) != STORE_OK)
        goto done;
    if (!jadd(o, "web_mode", mode ? cJSON_CreateString(mode) : cJSON_CreateNull()))
        goto nomem;
    val = NULL;
    if (is_null(v = get(in, "web_devices")))
        val = cJSON_CreateNull();
    else if ((rc = want_cidrs(s, v, "web_devices", 0, &val)) != STORE_OK)
        goto done;
    if (!jadd(o, "web_devices", val))
        goto nomem;
    if (mode && strcmp(mode, "transparent") == 0 && cJSON_GetArraySize(val) > 0) {
        rc = invalid(s, "web_devices",
                     "only with web_mode proxy: in transparent mode the node's own proxy is the "
                     "only web client upstream");
        goto done;
    }
    int64_t per_minute = -1;
    if (!is_null(v = get(in, "log_drops_per_minute")) &&
        (rc = want_int(s, v, "log_drops_per_minute", 0, 10000, &per_minute)) != STORE_OK)
        goto done;
    if (!jadd(o, "log_drops_per_minute",
              per_minute >= 0 ? cJSON_CreateNumber((double)per_minute) : cJSON_CreateNull()))
        goto nomem;
    *norm = o;
    return STORE_OK;
nomem:
    rc = oom(s);
done:
    cJSON_Delete(o);
    return rc;
}

/* A new region or office starts with settings that inherit everything. */
static int settings_create(store *s, model_scope scope, int64_t scope_id, int64_t etag)
{
    return run(s, "creating settings",
               "INSERT INTO settings (scope, region_id, office_id, etag) VALUES "
               "(?1, CASE ?1 WHEN 'region' THEN ?2 END, CASE ?1 WHEN 'office' THEN ?2 END, ?3)",
               "tii", scope_name(scope), scope_id, etag);
}

/* --- revisions: snapshots and change sets ----------------------------------- */

/* A revision keeps the structured change from the one before ("changes");
 * a checkpoint also keeps the whole model ("snapshot"). The model at an
 * older revision is its checkpoint with the later changes applied; the
 * newest is read from the tables. A checkpoint is taken when the changes
 * since the last one outweigh it, or after CHECKPOINT_MAX_GAP revisions:
 * the history stays within about twice the size of its changes, and
 * rebuilding a revision reads at most about two snapshots' worth. */

/* The whole policy model as it is in the tables now. */
static int snapshot(store *s, cJSON **out)
{
    cJSON *snap = cJSON_CreateObject();
    int rc = snap && jadd(snap, "format", cJSON_CreateNumber(SNAPSHOT_FORMAT)) ? STORE_OK : oom(s);
    for (size_t i = 0; rc == STORE_OK && i < N(snap_types); i++) {
        cJSON *arr = NULL;
        rc = obj_query(s, snap_types[i], false, "", 0, &arr);
        if (rc == STORE_OK && !jadd(snap, snap_types[i]->plural, arr))
            rc = oom(s);
    }
    if (rc != STORE_OK) {
        cJSON_Delete(snap);
        snap = NULL;
    }
    *out = snap;
    return rc;
}

/* An object's place in its (sorted) snapshot array. */
typedef struct okey {
    int rank;
    int64_t id;
} okey;

static okey obj_key(const otype *t, const cJSON *o)
{
    okey k = {0, 0};
    if (t == &ot_settings) {
        const char *sc = get_str(o, "scope");
        k.rank = !sc ? 3 : strcmp(sc, "global") == 0 ? 0 : strcmp(sc, "region") == 0 ? 1 : 2;
        k.id = get_int(o, "scope_id");
    } else {
        k.id = get_int(o, "id");
    }
    return k;
}

static int key_cmp(okey a, okey b)
{
    if (a.rank != b.rank)
        return a.rank < b.rank ? -1 : 1;
    return a.id < b.id ? -1 : a.id > b.id;
}

/* Equal but for the etag. */
static bool same_object(const cJSON *a, const cJSON *b)
{
    size_t na = 0, nb = 0;
    for (const cJSON *x = a->child; x; x = x->next) {
        if (strcmp(x->string, "etag") == 0)
            continue;
        const cJSON *y = get(b, x->string);
        if (!y || !cJSON_Compare(x, y, true))
            return false;
        na++;
    }
    for (const cJSON *y = b->child; y; y = y->next)
        nb += strcmp(y->string, "etag") != 0;
    return na == nb;
}

static bool diff_entry(cJSON *changes, const otype *t, const char *op, const cJSON *before,
                       const cJSON *after)
{
    const cJSON *any = before ? before : after;
    cJSON *e = cJSON_CreateObject();
    if (!jpush(changes, e) || !jadd(e, "type", cJSON_CreateString(t->name)) ||
        !jadd(e, "op", cJSON_CreateString(op)))
        return false;
    if (t == &ot_settings) {
        if (!jadd_dup(e, "scope", get(any, "scope")) ||
            !jadd_dup(e, "scope_id", get(any, "scope_id")))
            return false;
    } else if (!jadd_dup(e, "id", get(any, "id"))) {
        return false;
    }
    return jadd(e, "before", before ? cJSON_Duplicate(before, true) : cJSON_CreateNull()) &&
           jadd(e, "after", after ? cJSON_Duplicate(after, true) : cJSON_CreateNull());
}

/* Appends to changes what differs from snapshot a to b (arrays sorted by
 * key, as snapshot() writes them). */
static bool snap_diff(const cJSON *a, const cJSON *b, cJSON *changes)
{
    for (size_t i = 0; i < N(snap_types); i++) {
        const otype *t = snap_types[i];
        const cJSON *x = get(a, t->plural), *y = get(b, t->plural);
        x = x ? x->child : NULL;
        y = y ? y->child : NULL;
        while (x || y) {
            int c = !x ? 1 : !y ? -1 : key_cmp(obj_key(t, x), obj_key(t, y));
            bool ok = true;
            if (c < 0) {
                ok = diff_entry(changes, t, "removed", x, NULL);
                x = x->next;
            } else if (c > 0) {
                ok = diff_entry(changes, t, "added", NULL, y);
                y = y->next;
            } else {
                if (!same_object(x, y))
                    ok = diff_entry(changes, t, "changed", x, y);
                x = x->next;
                y = y->next;
            }
            if (!ok)
                return false;
        }
    }
    return true;
}

/* Applies one revision's changes to a snapshot in place. Each array stays
 * sorted by key; a change that does not fit (adding what exists, changing
 * or removing what does not) makes it fail. */
typedef struct keyed_change {
    okey k;
    const cJSON *c;
} keyed_change;

static int cmp_keyed_change(const void *a, const void *b)
{
    return key_cmp(((const keyed_change *)a)->k, ((const keyed_change *)b)->k);
}

static bool snap_apply(cJSON *snap, const cJSON *changes)
{
    size_t n = (size_t)cJSON_GetArraySize(changes);
    keyed_change *p = calloc(n ? n : 1, sizeof(*p));
    bool ok = p != NULL;
    for (size_t ti = 0; ok && ti < N(snap_types); ti++) {
        const otype *t = snap_types[ti];
        size_t m = 0;
        for (const cJSON *c = changes->child; c; c = c->next) {
            const char *type = get_str(c, "type");
            if (!type || strcmp(type, t->name) != 0)
                continue;
            const cJSON *after = get(c, "after");
            p[m].k = obj_key(t, is_null(after) ? get(c, "before") : after);
            p[m++].c = c;
        }
        if (m == 0)
            continue;
        qsort(p, m, sizeof(*p), cmp_keyed_change);
        cJSON *old = cJSON_GetObjectItemCaseSensitive(snap, t->plural), *arr = cJSON_CreateArray();
        cJSON *x = old ? old->child : NULL;
        size_t j = 0;
        ok = arr != NULL;
        while (ok && (x || j < m)) {
            int cmp = !x ? 1 : j >= m ? -1 : key_cmp(obj_key(t, x), p[j].k);
            cJSON *next = x ? x->next : NULL;
            if (cmp < 0) {
                cJSON_AddItemToArray(arr, cJSON_DetachItemViaPointer(old, x));
                x = next;
                continue;
            }
            const char *op = get_str(p[j].c, "op");
            bool adds = op && strcmp(op, "added") == 0;
            if (!op || (!adds && strcmp(op, "changed") != 0 && strcmp(op, "removed") != 0) ||
                adds == (cmp == 0)) {
                ok = false;
                break;
            }
            if (cmp == 0) {
                cJSON_Delete(cJSON_DetachItemViaPointer(old, x));
                x = next;
            }
            if (strcmp(op, "removed") != 0)
                ok = jpush(arr, cJSON_Duplicate(get(p[j].c, "after"), true));
            j++;
        }
        if (!arr)
            break;
        if (!ok) {
            cJSON_Delete(arr);
        } else if (old && !cJSON_ReplaceItemInObjectCaseSensitive(snap, t->plural, arr)) {
            cJSON_Delete(arr);
            ok = false;
        } else if (!old) {
            ok = jadd(snap, t->plural, arr);
        }
    }
    free(p);
    return ok;
}

static int next_revision(store *s, int64_t *rev)
{
    bool found;
    return one_int(s, &found, rev, "SELECT coalesce(max(number), 0) + 1 FROM revisions", "");
}

/* Writes the audit row of a change and, when rev is not 0, the revision it
 * makes with its changes (and at a checkpoint the whole model as it is
 * now). */
static int record(store *s, int64_t rev, const char *actor, const char *action, const char *type,
                  const char *object_id, const cJSON *before, const cJSON *after,
                  const char *comment, const cJSON *changes)
{
    int64_t now = now_ms();
    int rc = STORE_OK;
    if (rev) {
        char gen[256];
        char *ctxt = cJSON_PrintUnformatted(changes), *stxt = NULL;
        int64_t clen = ctxt ? (int64_t)strlen(ctxt) : 0, cp_bytes = 0, since = 0, gap = 0;
        bool found;
        if (!comment) {
            snprintf(gen, sizeof(gen), "%s %s %s", action, type, object_id);
            comment = gen;
        }
        rc = ctxt ? STORE_OK : oom(s);
        if (rc == STORE_OK)
            rc = one_int(s, &found, &cp_bytes,
                         "SELECT bytes FROM revisions WHERE snapshot IS NOT NULL "
                         "ORDER BY number DESC LIMIT 1",
                         "");
        if (rc == STORE_OK)
            rc = one_int(s, &found, &since,
                         "SELECT coalesce(sum(bytes), 0) FROM revisions WHERE number > "
                         "(SELECT max(number) FROM revisions WHERE snapshot IS NOT NULL)",
                         "");
        if (rc == STORE_OK)
            rc = one_int(s, &found, &gap,
                         "SELECT ?1 - coalesce(max(number), 0) FROM revisions "
                         "WHERE snapshot IS NOT NULL",
                         "i", rev);
        if (rc == STORE_OK && (rev == 1 || since + clen >= cp_bytes || gap >= CHECKPOINT_MAX_GAP)) {
            cJSON *snap = NULL;
            rc = snapshot(s, &snap);
            if (rc == STORE_OK && !(stxt = cJSON_PrintUnformatted(snap)))
                rc = oom(s);
            cJSON_Delete(snap);
        }
        if (rc == STORE_OK)
            rc = run(s, "writing the revision",
                     "INSERT INTO revisions (number, created_at, author, comment, bytes, changes, "
                     "snapshot) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                     "iittitt", rev, now, actor, comment, clen + (stxt ? (int64_t)strlen(stxt) : 0),
                     ctxt, stxt);
        cJSON_free(ctxt);
        cJSON_free(stxt);
    }
    if (rc == STORE_OK)
        rc = run(s, "writing the audit row",
                 "INSERT INTO audit (time, actor, action, object_type, object_id, before, after, "
                 "revision) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                 "ittttjjz", now, actor, action, type, object_id, before, after, rev);
    return rc;
}

/* Gives every settings object of snap every field of the settings, in
 * their order: those a revision older than a migration lacks are null
 * (inherit), as the migration made them in the table. */
static bool snap_upgrade(cJSON *snap)
{
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(snap, ot_settings.plural);
    for (cJSON *o = arr ? arr->child : NULL; o; o = o->next) {
        bool complete = true;
        for (size_t i = 0; i < ot_settings.ncols && complete; i++)
            complete = get(o, ot_settings.cols[i].key) != NULL;
        if (complete)
            continue;
        cJSON *n = cJSON_CreateObject();
        for (size_t i = 0; n && i < ot_settings.ncols; i++) {
            cJSON *v = cJSON_DetachItemFromObjectCaseSensitive(o, ot_settings.cols[i].key);
            if (!jadd(n, ot_settings.cols[i].key, v ? v : cJSON_CreateNull())) {
                cJSON_Delete(n);
                n = NULL;
            }
        }
        while (n && o->child) { /* anything else stays, after them */
            cJSON *v = cJSON_DetachItemViaPointer(o, o->child);
            cJSON_AddItemToObject(n, v->string, v);
        }
        if (!n)
            return false;
        /* Swap the contents, so that o keeps its place in arr. */
        o->child = n->child;
        n->child = NULL;
        cJSON_Delete(n);
    }
    return true;
}

/* The model at an older revision: its checkpoint and the changes since. */
static int snapshot_rebuild(store *s, int64_t rev, cJSON **out)
{
    sqlite3_stmt *st = NULL;
    cJSON *snap = NULL;
    bool found;
    int64_t cp = 0;
    *out = NULL;
    int rc = one_int(s, &found, &cp,
                     "SELECT max(number) FROM revisions WHERE snapshot IS NOT NULL AND "
                     "number <= ?1",
                     "i", rev);
    if (rc == STORE_OK)
        rc = prep(s,
                  "SELECT number, CASE number WHEN ?1 THEN snapshot ELSE changes END "
                  "FROM revisions WHERE number >= ?1 AND number <= ?2 ORDER BY number",
                  &st);
    int r = SQLITE_OK;
    if (rc == STORE_OK && ((r = sqlite3_bind_int64(st, 1, cp)) != SQLITE_OK ||
                           (r = sqlite3_bind_int64(st, 2, rev)) != SQLITE_OK))
        rc = db_fail(s, r, "binding a value");
    while (rc == STORE_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t number = sqlite3_column_int64(st, 0);
        cJSON *j = cJSON_Parse((const char *)sqlite3_column_text(st, 1));
        if (!j) {
            rc = fail(s, STORE_ERR, NULL, "revision %lld cannot be read", (long long)number);
        } else if (!snap) {
            if (get_int(j, "format") < 1 || get_int(j, "format") > SNAPSHOT_FORMAT)
                rc = fail(s, STORE_ERR, NULL, "revision %lld has a snapshot of format %lld",
                          (long long)number, (long long)get_int(j, "format"));
            snap = j;
            j = NULL;
        } else if (!snap_apply(snap, j)) {
            rc = fail(s, STORE_ERR, NULL,
                      "the changes of revision %lld do not apply to revision %lld",
                      (long long)number, (long long)number - 1);
        }
        cJSON_Delete(j);
    }
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = db_fail(s, r, "reading revisions");
    if (rc == STORE_OK && !snap)
        rc = fail(s, STORE_ERR, NULL, "revision %lld has no checkpoint before it", (long long)rev);
    if (rc == STORE_OK && !snap_upgrade(snap))
        rc = oom(s);
    if (rc == STORE_OK && !cJSON_ReplaceItemInObjectCaseSensitive(
                              snap, "format", cJSON_CreateNumber(SNAPSHOT_FORMAT)))
        rc = oom(s);
    unprep(s, st);
    if (rc != STORE_OK) {
        cJSON_Delete(snap);
        return rc;
    }
    *out = snap;
    return STORE_OK;
}

/* The model at a revision (0 = the newest), and its number; run inside a
 * transaction, so that the revision and the tables agree. */
static int snapshot_at(store *s, int64_t revision, cJSON **out, int64_t *number)
{
    bool found;
    int64_t cur = 0;
    *out = NULL;
    int rc = one_int(s, &found, &cur, "SELECT coalesce(max(number), 0) FROM revisions", "");
    if (rc != STORE_OK)
        return rc;
    if (revision == 0)
        revision = cur;
    if (revision < 1 || revision > cur)
        return fail(s, STORE_ENOTFOUND, "revision", "there is no revision %lld",
                    (long long)revision);
    if (number)
        *number = revision;
    return revision == cur ? snapshot(s, out) : snapshot_rebuild(s, revision, out);
}

/* --- generic object operations ------------------------------------------------ */

int store_object_list(store *s, store_kind k, cJSON **out)
{
    const otype *t;
    clear_error(s);
    *out = NULL;
    if (!(t = kind_type(s, k)))
        return STORE_EINVALID;
    return obj_query(s, t, true, "", 0, out);
}

static int page_wrap(store *s, cJSON *rows, const char *key, unsigned limit, const char *time_key,
                     cJSON **out);

int store_object_page(store *s, store_kind k, int64_t after, unsigned limit, cJSON **out)
{
    const otype *t;
    cJSON *rows = NULL;
    clear_error(s);
    *out = NULL;
    if (!(t = kind_type(s, k)))
        return STORE_EINVALID;
    if (limit < 1 || limit > 1000)
        return fail(s, STORE_EINVALID, "limit", "limit must be 1 to 1000");
    /* One row more than asked tells whether there is a next page. */
    int rc = obj_query_n(s, t, true, " WHERE id > ?1", after, limit + 1, &rows);
    return rc == STORE_OK ? page_wrap(s, rows, "items", limit, NULL, out) : rc;
}

int store_object_get(store *s, store_kind k, int64_t id, cJSON **out)
{
    const otype *t;
    clear_error(s);
    *out = NULL;
    if (!(t = kind_type(s, k)))
        return STORE_EINVALID;
    return obj_load(s, t, true, id, out);
}

static int etag_check(store *s, const otype *t, const cJSON *cur, int64_t if_etag)
{
    int64_t etag = get_int(cur, "etag");
    if (if_etag != 0 && if_etag != etag)
        return fail(s, STORE_ESTALE, "etag",
                    "the %s changed since it was read (etag %lld, expected %lld); read it again",
                    t->name, (long long)etag, (long long)if_etag);
    return STORE_OK;
}

/* A delete's change set: the object and the rules and settings that go
 * with it; the audit row's before gets them under "deleted_with". */
static int delete_changes(store *s, const otype *t, int64_t id, cJSON *before, cJSON *changes)
{
    cJSON *rules = NULL, *settings = NULL, *with = NULL;
    if (!diff_entry(changes, t, "removed", before, NULL))
        return oom(s);
    if (!t->cascade)
        return STORE_OK;
    int rc = obj_query(s, &ot_rule, false, t->cascade, id, &rules);
    if (rc == STORE_OK && t->settings_scope != MODEL_SCOPE_GLOBAL)
        rc = obj_query(s, &ot_settings, false, t->cascade, id, &settings);
    for (const cJSON *r = rules ? rules->child : NULL; rc == STORE_OK && r; r = r->next)
        if (!diff_entry(changes, &ot_rule, "removed", r, NULL))
            rc = oom(s);
    for (const cJSON *r = settings ? settings->child : NULL; rc == STORE_OK && r; r = r->next)
        if (!diff_entry(changes, &ot_settings, "removed", r, NULL))
            rc = oom(s);
    /* jadd takes rules and settings whether it succeeds or not. */
    if (rc == STORE_OK &&
        (!jadd(before, "deleted_with", with = cJSON_CreateObject()) ||
         !jadd(with, "rules", rules) || (settings && !jadd(with, "settings", settings))))
        return oom(s);
    if (rc != STORE_OK) {
        cJSON_Delete(rules);
        cJSON_Delete(settings);
    }
    return rc;
}

typedef enum { OP_CREATE, OP_UPDATE, OP_DELETE } mutation;
static const char *const op_names[] = {"create", "update", "delete"};

static int obj_mutate(store *s, const otype *t, mutation o, int64_t id, const cJSON *in,
                      int64_t if_etag, const char *actor, cJSON **out)
{
    cJSON *before = NULL, *after = NULL, *norm = NULL, *set = NULL;
    cJSON *changes = cJSON_CreateArray();
    int64_t rev = 0;
    char oid[32];
    if (out)
        *out = NULL;
    clear_error(s);
    int rc = changes ? check_actor(s, actor) : oom(s);
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK) {
        cJSON_Delete(changes);
        return rc;
    }
    rc = next_revision(s, &rev);
    if (rc == STORE_OK && o != OP_CREATE) {
        rc = obj_load(s, t, false, id, &before);
        if (rc == STORE_OK)
            rc = etag_check(s, t, before, if_etag);
    }
    if (rc == STORE_OK && o == OP_DELETE) {
        if (t->refs)
            rc = t->refs(s, id, before);
        if (rc == STORE_OK)
            rc = delete_changes(s, t, id, before, changes);
        if (rc == STORE_OK)
            rc = run(s, "deleting", t->del, "i", id);
    } else if (rc == STORE_OK) {
        rc = t->check(s, o == OP_UPDATE ? id : 0, in, &norm);
        if (rc == STORE_OK)
            rc = obj_write(s, t, o == OP_UPDATE ? W_UPDATE : W_NEW, id, norm, rev, &id);
        if (rc == STORE_OK)
            rc = obj_load(s, t, false, id, &after);
        if (rc == STORE_OK &&
            !diff_entry(changes, t, o == OP_UPDATE ? "changed" : "added", before, after))
            rc = oom(s);
        /* A new region or office starts with settings that inherit all. */
        if (rc == STORE_OK && o == OP_CREATE && t->settings_scope != MODEL_SCOPE_GLOBAL) {
            rc = settings_create(s, t->settings_scope, id, rev);
            if (rc == STORE_OK)
                rc = settings_load(s, t->settings_scope, id, &set);
            if (rc == STORE_OK && !diff_entry(changes, &ot_settings, "added", NULL, set))
                rc = oom(s);
        }
    }
    snprintf(oid, sizeof(oid), "%lld", (long long)id);
    if (rc == STORE_OK)
        rc = record(s, rev, actor, op_names[o], t->name, oid, before, after, NULL, changes);
    if (rc == STORE_OK && out && o != OP_DELETE)
        rc = obj_load(s, t, true, id, out);
    rc = finish(s, rc);
    if (rc != STORE_OK && out) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    cJSON_Delete(before);
    cJSON_Delete(after);
    cJSON_Delete(norm);
    cJSON_Delete(set);
    cJSON_Delete(changes);
    return rc;
}

int store_object_create(store *s, store_kind k, const cJSON *in, const char *actor, cJSON **out)
{
    const otype *t = kind_type(s, k);
    return t ? obj_mutate(s, t, OP_CREATE, 0, in, 0, actor, out) : STORE_EINVALID;
}

int store_object_update(store *s, store_kind k, int64_t id, const cJSON *in, int64_t if_etag,
                        const char *actor, cJSON **out)
{
    const otype *t = kind_type(s, k);
    return t ? obj_mutate(s, t, OP_UPDATE, id, in, if_etag, actor, out) : STORE_EINVALID;
}

int store_object_delete(store *s, store_kind k, int64_t id, int64_t if_etag, const char *actor)
{
    const otype *t = kind_type(s, k);
    return t ? obj_mutate(s, t, OP_DELETE, id, NULL, if_etag, actor, NULL) : STORE_EINVALID;
}

int store_settings_get(store *s, model_scope scope, int64_t scope_id, cJSON **out)
{
    clear_error(s);
    *out = NULL;
    int rc = settings_scope_check(s, scope, scope_id);
    return rc == STORE_OK ? settings_load(s, scope, scope_id, out) : rc;
}

int store_settings_list(store *s, cJSON **out)
{
    clear_error(s);
    return obj_query(s, &ot_settings, true, "", 0, out);
}

int store_settings_put(store *s, model_scope scope, int64_t scope_id, const cJSON *in,
                       int64_t if_etag, const char *actor, cJSON **out)
{
    cJSON *before = NULL, *after = NULL, *norm = NULL;
    int64_t rev = 0;
    char oid[48];
    if (out)
        *out = NULL;
    clear_error(s);
    int rc = check_actor(s, actor);
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = next_revision(s, &rev);
    if (rc == STORE_OK)
        rc = settings_scope_check(s, scope, scope_id);
    if (rc == STORE_OK)
        rc = settings_load(s, scope, scope_id, &before);
    if (rc == STORE_OK)
        rc = etag_check(s, &ot_settings, before, if_etag);
    if (rc == STORE_OK)
        rc = check_settings(s, scope, scope_id, in, &norm);
    if (rc == STORE_OK)
        rc = obj_write(s, &ot_settings, W_UPDATE, 0, norm, rev, NULL);
    if (rc == STORE_OK)
        rc = settings_load(s, scope, scope_id, &after);
    if (scope == MODEL_SCOPE_GLOBAL)
        snprintf(oid, sizeof(oid), "global");
    else
        snprintf(oid, sizeof(oid), "%s/%lld", scope_name(scope), (long long)scope_id);
    cJSON *changes = cJSON_CreateArray();
    if (rc == STORE_OK && !diff_entry(changes, &ot_settings, "changed", before, after))
        rc = oom(s);
    if (rc == STORE_OK)
        rc = record(s, rev, actor, "update", "settings", oid, before, after, NULL, changes);
    cJSON_Delete(changes);
    rc = finish(s, rc);
    if (rc == STORE_OK && out) {
        *out = after;
        after = NULL;
    }
    cJSON_Delete(before);
    cJSON_Delete(after);
    cJSON_Delete(norm);
    return rc;
}

/* --- revisions: read, diff, rollback, model ----------------------------------- */

int store_revision_current(store *s, int64_t *out)
{
    bool found;
    clear_error(s);
    return one_int(s, &found, out, "SELECT coalesce(max(number), 0) FROM revisions", "");
}

static const col revision_cols[] = {
    {"revision", C_INT}, {"created_at", C_TIME}, {"author", C_TEXT}, {"comment", C_TEXT}};

static unsigned page_limit(unsigned limit)
{
    return limit == 0 ? DEFAULT_PAGE : limit;
}

int store_revision_list(store *s, int64_t before, unsigned limit, cJSON **out)
{
    clear_error(s);
    *out = NULL;
    limit = page_limit(limit);
    if (limit > MAX_PAGE)
        return invalid(s, "limit", "must be 1 to %d", MAX_PAGE);
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return oom(s);
    int rc = rows_into(s, arr, revision_cols, N(revision_cols),
                       "SELECT number, created_at, author, comment FROM revisions "
                       "WHERE ?1 = 0 OR number < ?1 ORDER BY number DESC LIMIT ?2",
                       "ii", before, (int64_t)limit);
    if (rc != STORE_OK)
        cJSON_Delete(arr);
    else
        *out = arr;
    return rc;
}

int store_revision_get(store *s, int64_t revision, cJSON **out)
{
    cJSON *arr = NULL, *snap = NULL;
    clear_error(s);
    *out = NULL;
    if (revision <= 0)
        return fail(s, STORE_ENOTFOUND, "revision", "there is no revision %lld",
                    (long long)revision);
    int rc = begin(s, false);
    if (rc != STORE_OK)
        return rc;
    static const col cols[] = {{"revision", C_INT},
                               {"created_at", C_TIME},
                               {"author", C_TEXT},
                               {"comment", C_TEXT},
                               {"changes", C_JSON}};
    rc = snapshot_at(s, revision, &snap, NULL);
    if (rc == STORE_OK)
        rc = (arr = cJSON_CreateArray())
                 ? rows_into(s, arr, cols, N(cols),
                             "SELECT number, created_at, author, comment, changes FROM revisions "
                             "WHERE number = ?1",
                             "i", revision)
                 : oom(s);
    rollback(s);
    if (rc == STORE_OK) {
        cJSON *o = cJSON_DetachItemFromArray(arr, 0);
        cJSON_DeleteItemFromObjectCaseSensitive(snap, "format");
        if (!jadd(o, "model", snap)) {
            cJSON_Delete(o);
            rc = oom(s);
        } else {
            *out = o;
        }
        snap = NULL;
    }
    cJSON_Delete(snap);
    cJSON_Delete(arr);
    return rc;
}

int store_revision_diff(store *s, int64_t a, int64_t b, cJSON **out)
{
    cJSON *sa = NULL, *sb = NULL, *o = NULL, *changes = NULL;
    clear_error(s);
    *out = NULL;
    if (a <= 0 || b <= 0)
        return fail(s, STORE_ENOTFOUND, "revision", "there is no revision %lld",
                    (long long)(a <= 0 ? a : b));
    int rc = begin(s, false);
    if (rc != STORE_OK)
        return rc;
    rc = snapshot_at(s, a, &sa, NULL);
    if (rc == STORE_OK)
        rc = snapshot_at(s, b, &sb, NULL);
    rollback(s);
    if (rc == STORE_OK) {
        o = cJSON_CreateObject();
        if (!o || !jadd(o, "from", cJSON_CreateNumber((double)a)) ||
            !jadd(o, "to", cJSON_CreateNumber((double)b)) ||
            !jadd(o, "changes", changes = cJSON_CreateArray())) {
            rc = oom(s);
        } else if (!snap_diff(sa, sb, changes)) {
            rc = oom(s);
        }
    }
    if (rc == STORE_OK)
        *out = o;
    else
        cJSON_Delete(o);
    cJSON_Delete(sa);
    cJSON_Delete(sb);
    return rc;
}

/* The object of t with key k in a snapshot array, or NULL. */
static const cJSON *snap_find(const otype *t, const cJSON *arr, okey k)
{
    for (const cJSON *it = arr ? arr->child : NULL; it; it = it->next) {
        int c = key_cmp(obj_key(t, it), k);
        if (c == 0)
            return it;
        if (c > 0)
            break;
    }
    return NULL;
}

/* Replaces the policy tables with snapshot target; an object unchanged
 * from cur keeps its etag, every other gets rev. Runs with foreign keys
 * off (so nothing cascades) and checks them all at the end. */
static int restore(store *s, const cJSON *target, const cJSON *cur, int64_t rev)
{
    static const char *const wipe[] = {"DELETE FROM rules",   "DELETE FROM settings",
                                       "DELETE FROM groups",  "DELETE FROM offices",
                                       "DELETE FROM regions", "DELETE FROM lists"};
    int rc = STORE_OK;
    for (size_t i = 0; rc == STORE_OK && i < N(wipe); i++)
        rc = run(s, "clearing the policy", wipe[i], "");
    for (size_t i = 0; rc == STORE_OK && i < N(snap_types); i++) {
        const otype *t = snap_types[i];
        if (t == &ot_node)
            continue; /* nodes stay as they are */
        const cJSON *arr = get(target, t->plural), *carr = get(cur, t->plural);
        /* Both arrays are sorted by key: walk cur alongside. */
        const cJSON *c = carr ? carr->child : NULL;
        for (const cJSON *o = arr ? arr->child : NULL; rc == STORE_OK && o; o = o->next) {
            okey k = obj_key(t, o);
            while (c && key_cmp(obj_key(t, c), k) < 0)
                c = c->next;
            int64_t etag =
                c && key_cmp(obj_key(t, c), k) == 0 && same_object(c, o) ? get_int(c, "etag") : rev;
            rc = obj_write(s, t, W_RESTORE, 0, o, etag, NULL);
        }
    }
    if (rc == STORE_OK) {
        sqlite3_stmt *st = NULL;
        rc = prep(s, "PRAGMA foreign_key_check", &st);
        if (rc == STORE_OK) {
            int r = sqlite3_step(st);
            if (r == SQLITE_ROW)
                rc = fail(s, STORE_ECONFLICT, NULL,
                          "the restored policy breaks a reference: table %s, row %lld refers to "
                          "%s",
                          (const char *)sqlite3_column_text(st, 0),
                          (long long)sqlite3_column_int64(st, 1),
                          (const char *)sqlite3_column_text(st, 2));
            else if (r != SQLITE_DONE)
                rc = db_fail(s, r, "checking references");
        }
        unprep(s, st);
    }
    return rc;
}

/* Nodes are not rolled back; each must keep its office. */
static int rollback_nodes_check(store *s, const cJSON *target, int64_t revision)
{
    cJSON *nodes = NULL;
    int rc = obj_query(s, &ot_node, false, "", 0, &nodes);
    const cJSON *offices = get(target, "offices");
    for (const cJSON *n = nodes ? nodes->child : NULL; rc == STORE_OK && n; n = n->next) {
        okey k = {0, get_int(n, "office_id")};
        if (!snap_find(&ot_office, offices, k))
            rc = fail(s, STORE_ECONFLICT, NULL,
                      "node '%s' is in office %lld, which revision %lld does not have; move or "
                      "delete the node first",
                      get_str(n, "name"), (long long)k.id, (long long)revision);
    }
    cJSON_Delete(nodes);
    return rc;
}

int store_rollback(store *s, int64_t revision, const char *actor, int64_t *new_revision)
{
    cJSON *target = NULL, *cur = NULL, *now = NULL, *before = NULL, *after = NULL;
    cJSON *changes = NULL;
    int64_t rev = 0, curnum = 0;
    char oid[32], comment[64];
    clear_error(s);
    int rc = check_actor(s, actor);
    if (rc != STORE_OK)
        return rc;
    if (revision <= 0)
        return fail(s, STORE_ENOTFOUND, "revision", "there is no revision %lld",
                    (long long)revision);
    /* Foreign keys can only be switched outside a transaction. */
    if (sqlite3_exec(s->db, "PRAGMA foreign_keys = OFF", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(s, sqlite3_errcode(s->db), "switching foreign keys off");
    rc = begin(s, true);
    if (rc == STORE_OK)
        rc = next_revision(s, &rev);
    if (rc == STORE_OK)
        rc = snapshot_at(s, revision, &target, NULL);
    if (rc == STORE_OK)
        rc = snapshot_at(s, 0, &cur, &curnum);
    if (rc == STORE_OK)
        rc = rollback_nodes_check(s, target, revision);
    if (rc == STORE_OK)
        rc = restore(s, target, cur, rev);
    /* The revision's changes are what the tables show now against before,
     * new etags included. */
    if (rc == STORE_OK)
        rc = snapshot(s, &now);
    if (rc == STORE_OK) {
        before = cJSON_CreateObject();
        after = cJSON_CreateObject();
        if (!before || !after || !jadd(before, "revision", cJSON_CreateNumber((double)curnum)) ||
            !jadd(after, "revision", cJSON_CreateNumber((double)rev)) ||
            !jadd(after, "restored", cJSON_CreateNumber((double)revision)) ||
            !jadd(after, "changes", changes = cJSON_CreateArray()) || !snap_diff(cur, now, changes))
            rc = oom(s);
    }
    snprintf(oid, sizeof(oid), "%lld", (long long)revision);
    snprintf(comment, sizeof(comment), "rollback to revision %lld", (long long)revision);
    if (rc == STORE_OK)
        rc = record(s, rev, actor, "rollback", "revision", oid, before, after, comment, changes);
    rc = finish(s, rc);
    if (sqlite3_exec(s->db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK &&
        rc == STORE_OK)
        rc = db_fail(s, sqlite3_errcode(s->db), "switching foreign keys on");
    if (rc == STORE_OK && new_revision)
        *new_revision = rev;
    cJSON_Delete(target);
    cJSON_Delete(cur);
    cJSON_Delete(now);
    cJSON_Delete(before);
    cJSON_Delete(after);
    return rc;
}

/* --- the model of a revision ------------------------------------------------- */

static char *dupstr(const char *p)
{
    return p ? strdup(p) : NULL;
}

/* A JSON array of strings into a new char ** of *n entries. */
static bool strv_from(const cJSON *arr, char ***out, size_t *n)
{
    size_t cnt = cJSON_IsArray(arr) ? (size_t)cJSON_GetArraySize(arr) : 0;
    *out = calloc(cnt ? cnt : 1, sizeof(char *));
    if (!*out)
        return false;
    *n = cnt;
    size_t i = 0;
    for (const cJSON *it = cnt ? arr->child : NULL; it; it = it->next, i++)
        if (!((*out)[i] = dupstr(cJSON_IsString(it) ? it->valuestring : "")))
            return false;
    return true;
}

/* Reads a boolean or null field into has/value. */
static void tri_from(const cJSON *o, const char *k, bool *has, bool *value)
{
    const cJSON *v = get(o, k);
    *has = cJSON_IsBool(v);
    *value = cJSON_IsTrue(v);
}

static bool settings_from(const cJSON *o, model_settings *ms)
{
    const cJSON *v = get(o, "ports");
    if (cJSON_IsObject(v)) {
        size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
        ms->has_ports = true;
        ms->ports = calloc(n ? n : 1, sizeof(uint16_t));
        ms->port_protos = calloc(n ? n : 1, sizeof(char *));
        if (!ms->ports || !ms->port_protos)
            return false;
        ms->nports = n;
        /* check_ports stored them in port order. */
        for (const cJSON *it = v->child; it; it = it->next, i++) {
            ms->ports[i] = (uint16_t)strtoul(it->string, NULL, 10);
            if (!(ms->port_protos[i] = dupstr(cJSON_IsString(it) ? it->valuestring : "")))
                return false;
        }
    }
    tri_from(o, "require_certificate", &ms->has_require_certificate, &ms->require_certificate);
    tri_from(o, "block_executables", &ms->has_block_executables, &ms->block_executables);
    tri_from(o, "block_high_ports", &ms->has_block_high_ports, &ms->block_high_ports);
    if (cJSON_IsArray(v = get(o, "use_lists"))) {
        ms->has_use_lists = true;
        if (!strv_from(v, &ms->use_lists, &ms->nuse_lists))
            return false;
    }
    if (cJSON_IsNumber(v = get(o, "high_port_threshold"))) {
        ms->has_high_port_threshold = true;
        ms->high_port_threshold = (uint16_t)v->valuedouble;
    }
    if (cJSON_IsArray(v = get(o, "open_ports"))) {
        size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
        ms->has_open_ports = true;
        ms->open_ports = calloc(n ? n : 1, sizeof(*ms->open_ports));
        if (!ms->open_ports)
            return false;
        ms->nopen_ports = n;
        for (const cJSON *it = v->child; it; it = it->next, i++) {
            struct model_open_port *op = &ms->open_ports[i];
            int64_t first, last;
            port_range_of(get(it, "port"), &first, &last);
            op->port = (uint16_t)first;
            op->port_last = last > first ? (uint16_t)last : 0;
            snprintf(op->proto, sizeof(op->proto), "%s",
                     get_str(it, "proto") ? get_str(it, "proto") : "");
            if (!strv_from(get(it, "devices"), &op->devices, &op->ndevices))
                return false;
        }
    }
    if (cJSON_IsArray(v = get(o, "dns_resolvers"))) {
        ms->has_dns_resolvers = true;
        if (!strv_from(v, &ms->dns_resolvers, &ms->ndns_resolvers))
            return false;
    }
    if (cJSON_IsString(v = get(o, "web_mode"))) {
        ms->has_web_mode = true;
        snprintf(ms->web_mode, sizeof(ms->web_mode), "%s", v->valuestring);
    }
    if (cJSON_IsArray(v = get(o, "web_devices"))) {
        ms->has_web_devices = true;
        if (!strv_from(v, &ms->web_devices, &ms->nweb_devices))
            return false;
    }
    if (cJSON_IsNumber(v = get(o, "log_drops_per_minute"))) {
        ms->has_log_drops_per_minute = true;
        ms->log_drops_per_minute = (uint16_t)v->valuedouble;
    }
    return true;
}

/* Allocates an array of n elements of size sz (at least one, zeroed). */
static void *alloc_n(size_t n, size_t sz)
{
    return calloc(n ? n : 1, sz);
}

static model_scope scope_from(const char *p)
{
    for (int i = 0; p && scope_names[i]; i++)
        if (strcmp(scope_names[i], p) == 0)
            return (model_scope)i;
    return MODEL_SCOPE_GLOBAL;
}

static bool model_from(const cJSON *snap, model *m)
{
    const cJSON *regions = get(snap, "regions"), *offices = get(snap, "offices");
    const cJSON *groups = get(snap, "groups"), *nodes = get(snap, "nodes");
    const cJSON *rules = get(snap, "rules"), *lists = get(snap, "lists");
    size_t i;
#define ALLOC(field, count, arr)                                                                   \
    do {                                                                                           \
        size_t n_ = (size_t)cJSON_GetArraySize(arr);                                               \
        if (!(m->field = alloc_n(n_, sizeof(*m->field))))                                          \
            return false;                                                                          \
        m->count = n_;                                                                             \
    } while (0)
    ALLOC(regions, nregions, regions);
    ALLOC(offices, noffices, offices);
    ALLOC(groups, ngroups, groups);
    ALLOC(nodes, nnodes, nodes);
    ALLOC(rules, nrules, rules);
    ALLOC(lists, nlists, lists);
#undef ALLOC
    i = 0;
    for (const cJSON *o = regions->child; o; o = o->next, i++) {
        m->regions[i].id = get_int(o, "id");
        if (!(m->regions[i].name = dupstr(get_str(o, "name"))))
            return false;
    }
    i = 0;
    for (const cJSON *o = offices->child; o; o = o->next, i++) {
        model_office *of = &m->offices[i];
        of->id = get_int(o, "id");
        of->region_id = get_int(o, "region_id");
        if (!(of->name = dupstr(get_str(o, "name"))) ||
            !strv_from(get(o, "lan_prefixes"), &of->lan_prefixes, &of->nlan))
            return false;
    }
    i = 0;
    for (const cJSON *o = groups->child; o; o = o->next, i++) {
        model_group *g = &m->groups[i];
        g->id = get_int(o, "id");
        g->office_id = get_int(o, "office_id");
        if (!(g->name = dupstr(get_str(o, "name"))) ||
            !strv_from(get(o, "sources"), &g->sources, &g->nsources) ||
            !strv_from(get(o, "users"), &g->users, &g->nusers))
            return false;
    }
    i = 0;
    for (const cJSON *o = nodes->child; o; o = o->next, i++) {
        m->nodes[i].id = get_int(o, "id");
        m->nodes[i].office_id = get_int(o, "office_id");
        if (!(m->nodes[i].name = dupstr(get_str(o, "name"))))
            return false;
    }
    i = 0;
    for (const cJSON *o = rules->child; o; o = o->next, i++) {
        model_rule *r = &m->rules[i];
        const char *kind = get_str(o, "kind");
        r->id = get_int(o, "id");
        r->scope = scope_from(get_str(o, "scope"));
        r->scope_id = get_int(o, "scope_id");
        r->kind = MODEL_RULE_SKYPE;
        for (int k = 0; kind && kind_names[k]; k++)
            if (strcmp(kind_names[k], kind) == 0)
                r->kind = (model_rule_kind)k;
        r->allow = get_str(o, "action") && strcmp(get_str(o, "action"), "allow") == 0;
        if (!(r->value = dupstr(get_str(o, "value"))) ||
            !(r->comment = dupstr(get_str(o, "comment"))))
            return false;
    }
    i = 0;
    for (const cJSON *o = lists->child; o; o = o->next, i++) {
        char *txt = cJSON_PrintUnformatted(get(o, "list"));
        m->lists[i].json = dupstr(txt);
        cJSON_free(txt);
        if (!m->lists[i].json || !(m->lists[i].name = dupstr(get_str(o, "name"))))
            return false;
    }
    /* Settings after their regions and offices; both arrays are sorted by
     * id. */
    for (const cJSON *o = get(snap, "settings")->child; o; o = o->next) {
        model_scope sc = scope_from(get_str(o, "scope"));
        int64_t id = get_int(o, "scope_id");
        model_settings *ms = NULL;
        if (sc == MODEL_SCOPE_GLOBAL)
            ms = &m->global;
        for (i = 0; sc == MODEL_SCOPE_REGION && i < m->nregions && !ms; i++)
            if (m->regions[i].id == id)
                ms = &m->regions[i].settings;
        for (i = 0; sc == MODEL_SCOPE_OFFICE && i < m->noffices && !ms; i++)
            if (m->offices[i].id == id)
                ms = &m->offices[i].settings;
        if (ms && !settings_from(o, ms))
            return false;
    }
    return true;
}

/* Inside the dry run's transaction: the model as the change left it. */
static int dry_run_capture(store *s)
{
    cJSON *snap = NULL;
    int64_t number = 0;
    int rc = snapshot_at(s, 0, &snap, &number);
    if (rc == STORE_OK) {
        s->dry->revision = number;
        if (!model_from(snap, s->dry))
            rc = oom(s);
    }
    cJSON_Delete(snap);
    return rc;
}

int store_dry_run(store *s, int (*change)(store *s, void *arg), void *arg, model *after)
{
    memset(after, 0, sizeof(*after));
    s->dry = after;
    int rc = change(s, arg);
    s->dry = NULL;
    if (rc != STORE_OK) {
        model_free(after);
        memset(after, 0, sizeof(*after));
    }
    return rc;
}

int store_model_load(store *s, int64_t revision, model *out)
{
    cJSON *snap = NULL;
    int64_t number = 0;
    clear_error(s);
    memset(out, 0, sizeof(*out));
    if (revision < 0)
        return fail(s, STORE_ENOTFOUND, "revision", "there is no revision %lld",
                    (long long)revision);
    int rc = begin(s, false);
    if (rc != STORE_OK)
        return rc;
    rc = snapshot_at(s, revision, &snap, &number);
    rollback(s);
    if (rc != STORE_OK)
        return rc;
    static const char *const parts[] = {"settings", "regions", "offices", "groups",
                                        "nodes",    "rules",   "lists"};
    for (size_t i = 0; i < N(parts); i++)
        if (!cJSON_IsArray(get(snap, parts[i])))
            rc = fail(s, STORE_ERR, NULL, "revision %lld: the snapshot has no %s",
                      (long long)number, parts[i]);
    if (rc == STORE_OK) {
        out->revision = number;
        if (!model_from(snap, out))
            rc = oom(s);
    }
    cJSON_Delete(snap);
    if (rc != STORE_OK) {
        model_free(out);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}

/* --- audit ------------------------------------------------------------------- */

static const col audit_cols[] = {{"id", C_INT},      {"time", C_TIME},        {"actor", C_TEXT},
                                 {"action", C_TEXT}, {"object_type", C_TEXT}, {"object_id", C_TEXT},
                                 {"before", C_JSON}, {"after", C_JSON},       {"revision", C_INT}};

/* A cursor "<a>.<b>" of two non-negative integers (b may be absent when
 * want_b is false). */
static bool parse_cursor(const char *c, int64_t *a, int64_t *b, bool want_b)
{
    char *end;
    if (!c[0] || c[0] < '0' || c[0] > '9')
        return false;
    long long x = strtoll(c, &end, 10);
    if (!want_b)
        return *end == '\0' && x > 0 && (*a = x, true);
    if (*end != '.' || end[1] < '0' || end[1] > '9')
        return false;
    long long y = strtoll(end + 1, &end, 10);
    if (*end != '\0')
        return false;
    *a = x;
    *b = y;
    return true;
}

/* Wraps a page of rows: {"<key>": rows, "next_cursor": ...}; the rows
 * array holds one row more than limit when there is a next page. */
static int page_wrap(store *s, cJSON *rows, const char *key, unsigned limit, const char *time_key,
                     cJSON **out)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *next = NULL;
    if (o && cJSON_GetArraySize(rows) > (int)limit) {
        cJSON_DeleteItemFromArray(rows, (int)limit);
        const cJSON *last = cJSON_GetArrayItem(rows, (int)limit - 1);
        char buf[64];
        if (time_key)
            snprintf(buf, sizeof(buf), "%lld.%lld", (long long)get_int(last, time_key),
                     (long long)get_int(last, "id"));
        else
            snprintf(buf, sizeof(buf), "%lld", (long long)get_int(last, "id"));
        next = cJSON_CreateString(buf);
    } else if (o) {
        next = cJSON_CreateNull();
    }
    if (!o) {
        cJSON_Delete(rows);
        return oom(s);
    }
    /* jadd takes rows and next whether it succeeds or not. */
    bool ok = jadd(o, key, rows);
    if (!jadd(o, "next_cursor", next) || !ok) {
        cJSON_Delete(o);
        return oom(s);
    }
    *out = o;
    return STORE_OK;
}

int store_audit_list(store *s, const store_audit_query *q, cJSON **out)
{
    int64_t cursor = 0, dummy;
    clear_error(s);
    *out = NULL;
    unsigned limit = page_limit(q->limit);
    if (limit > MAX_PAGE)
        return invalid(s, "limit", "must be 1 to %d", MAX_PAGE);
    if (q->cursor && !parse_cursor(q->cursor, &cursor, &dummy, false))
        return invalid(s, "cursor", "is not a cursor this API returned");
    if (q->object_id && !q->object_type)
        return invalid(s, "object_id", "needs object_type");
    cJSON *rows = cJSON_CreateArray();
    if (!rows)
        return oom(s);
    int rc = rows_into(s, rows, audit_cols, N(audit_cols),
                       "SELECT id, time, actor, action, object_type, object_id, before, after, "
                       "revision FROM audit WHERE (?1 = 0 OR time >= ?1) AND (?2 = 0 OR time < ?2) "
                       "AND (?3 IS NULL OR actor = ?3) AND (?4 IS NULL OR object_type = ?4) AND "
                       "(?5 IS NULL OR object_id = ?5) AND (?6 = 0 OR id < ?6) "
                       "ORDER BY id DESC LIMIT ?7",
                       "iitttii", q->from_ms, q->to_ms, q->actor, q->object_type, q->object_id,
                       cursor, (int64_t)limit + 1);
    if (rc != STORE_OK) {
        cJSON_Delete(rows);
        return rc;
    }
    return page_wrap(s, rows, "entries", limit, NULL, out);
}

/* --- users and tokens -------------------------------------------------------- */

static const char *const role_names[] = {NULL, "viewer", "operator", "admin"};

const char *store_role_name(store_role r)
{
    return (unsigned)r < N(role_names) ? role_names[r] : NULL;
}

store_role store_role_from_name(const char *name)
{
    for (size_t i = 1; name && i < N(role_names); i++)
        if (strcmp(role_names[i], name) == 0)
            return (store_role)i;
    return STORE_ROLE_NONE;
}

static const col user_cols[] = {
    {"id", C_INT}, {"name", C_TEXT}, {"role", C_TEXT}, {"created_at", C_TIME}};
#define USER_SELECT "SELECT id, name, role, created_at FROM users"

static const col token_cols[] = {
    {"id", C_INT},     {"user_id", C_INT},     {"user", C_TEXT},         {"role", C_TEXT},
    {"label", C_TEXT}, {"created_at", C_TIME}, {"last_used_at", C_TIME}, {"revoked_at", C_TIME}};
#define TOKEN_SELECT                                                                               \
    "SELECT t.id, t.user_id, u.name, t.role, t.label, t.created_at, t.last_used_at, "              \
    "t.revoked_at FROM api_tokens t JOIN users u ON u.id = t.user_id"

/* The single row of a query as an object; STORE_ENOTFOUND (about what)
 * when there is none. */
static int one_row(store *s, const col *cols, size_t n, const char *sql, int64_t id,
                   const char *what, cJSON **out)
{
    cJSON *arr = cJSON_CreateArray();
    *out = NULL;
    int rc = arr ? rows_into(s, arr, cols, n, sql, "i", id) : oom(s);
    if (rc == STORE_OK && !arr->child)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no %s %lld", what, (long long)id);
    if (rc == STORE_OK)
        *out = cJSON_DetachItemFromArray(arr, 0);
    cJSON_Delete(arr);
    return rc;
}

static int user_insert(store *s, const char *name, const char *role, int64_t *id)
{
    int rc = run(s, "creating the user",
                 "INSERT INTO users (name, role, created_at) VALUES (?1, ?2, ?3)", "tti", name,
                 role, now_ms());
    *id = sqlite3_last_insert_rowid(s->db);
    return rc;
}

int store_user_create(store *s, const cJSON *in, const char *actor, cJSON **out)
{
    static const char *const keys[] = {"name", "role", NULL};
    static const char *const ro[] = {"id", "created_at", NULL};
    static const char *const roles[] = {"admin", "operator", "viewer", NULL};
    const char *name = NULL, *role = NULL;
    cJSON *after = NULL;
    int64_t id = 0;
    char oid[32];
    if (out)
        *out = NULL;
    clear_error(s);
    int rc = check_actor(s, actor);
    if (rc == STORE_OK)
        rc = check_keys(s, in, keys, ro);
    if (rc == STORE_OK)
        rc = want_ident(s, get(in, "name"), "name", "@", &name);
    if (rc == STORE_OK)
        rc = want_enum(s, get(in, "role"), "role", roles, "admin, operator, viewer", &role);
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = want_free(s, "name", "SELECT id FROM users WHERE name = ?1 AND id <> ?2", "ti", name, 0, 0,
                   "a user named");
    if (rc == STORE_OK)
        rc = user_insert(s, name, role, &id);
    if (rc == STORE_OK)
        rc = one_row(s, user_cols, N(user_cols), USER_SELECT " WHERE id = ?1", id, "user", &after);
    snprintf(oid, sizeof(oid), "%lld", (long long)id);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, "create", "user", oid, NULL, after, NULL, NULL);
    rc = finish(s, rc);
    if (rc == STORE_OK && out) {
        *out = after;
        after = NULL;
    }
    cJSON_Delete(after);
    return rc;
}

int store_user_list(store *s, cJSON **out)
{
    clear_error(s);
    *out = cJSON_CreateArray();
    if (!*out)
        return oom(s);
    int rc = rows_into(s, *out, user_cols, N(user_cols), USER_SELECT " ORDER BY id", "");
    if (rc != STORE_OK) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return rc;
}

int store_user_get(store *s, int64_t id, cJSON **out)
{
    clear_error(s);
    return one_row(s, user_cols, N(user_cols), USER_SELECT " WHERE id = ?1", id, "user", out);
}

int store_user_find(store *s, const char *name, int64_t *id)
{
    bool found;
    clear_error(s);
    int rc = one_int(s, &found, id, "SELECT id FROM users WHERE name = ?1", "t", name ? name : "");
    if (rc == STORE_OK && !found)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no user named '%s'", name ? name : "");
    return rc;
}

int store_user_delete(store *s, int64_t id, const char *actor)
{
    cJSON *before = NULL;
    char oid[32];
    bool found;
    int64_t admins = 0;
    clear_error(s);
    int rc = check_actor(s, actor);
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = one_row(s, user_cols, N(user_cols), USER_SELECT " WHERE id = ?1", id, "user", &before);
    if (rc == STORE_OK && strcmp(get_str(before, "role"), "admin") == 0) {
        rc = one_int(s, &found, &admins, "SELECT count(*) FROM users WHERE role = 'admin'", "");
        if (rc == STORE_OK && admins <= 1)
            rc = fail(s, STORE_ECONFLICT, NULL,
                      "'%s' is the last admin; make another user admin first",
                      get_str(before, "name"));
    }
    if (rc == STORE_OK)
        rc = run(s, "deleting the user", "DELETE FROM users WHERE id = ?1", "i", id);
    snprintf(oid, sizeof(oid), "%lld", (long long)id);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, "delete", "user", oid, before, NULL, NULL, NULL);
    rc = finish(s, rc);
    cJSON_Delete(before);
    return rc;
}

static bool sha256(const char *data, size_t len, unsigned char out[32])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

/* The index key of a token hash: its first 8 bytes. */
static int64_t hash_lookup(const unsigned char h[32])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | h[i];
    return (int64_t)v;
}

static int token_store(store *s, int64_t user_id, store_role role, const char *label,
                       const char *token, const char *actor, cJSON **out)
{
    cJSON *after = NULL;
    unsigned char h[32];
    int64_t id = 0, user_role = 0;
    bool found;
    char oid[32];
    if (out)
        *out = NULL;
    int rc = check_actor(s, actor);
    if (rc == STORE_OK && !store_role_name(role))
        rc = invalid(s, "role", "must be admin, operator or viewer");
    if (rc == STORE_OK && label && (strlen(label) > MAX_LABEL || !pc_text_ok(label)))
        rc = invalid(s, "label", "must be at most %d bytes of text", MAX_LABEL);
    if (rc == STORE_OK && !sha256(token, strlen(token), h))
        rc = fail(s, STORE_ERR, NULL, "SHA-256 failed");
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = one_int(s, &found, &user_role,
                 "SELECT CASE role WHEN 'admin' THEN 3 WHEN 'operator' THEN 2 ELSE 1 END "
                 "FROM users WHERE id = ?1",
                 "i", user_id);
    if (rc == STORE_OK && !found)
        rc = fail(s, STORE_ENOTFOUND, "user_id", "there is no user %lld", (long long)user_id);
    if (rc == STORE_OK && (int64_t)role > user_role)
        rc = invalid(s, "role", "a token's role cannot be above its user's (%s)",
                     store_role_name((store_role)user_role));
    if (rc == STORE_OK) {
        rc = one_int(s, &found, &id, "SELECT id FROM api_tokens WHERE token_hash = ?1", "b", h, 32);
        if (rc == STORE_OK && found)
            rc = fail(s, STORE_ECONFLICT, "token", "this token is stored already (id %lld)",
                      (long long)id);
    }
    if (rc == STORE_OK)
        rc = run(s, "storing the token",
                 "INSERT INTO api_tokens (user_id, lookup, token_hash, role, label, created_at) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                 "iibtti", user_id, hash_lookup(h), h, 32, store_role_name(role),
                 label ? label : "", now_ms());
    id = sqlite3_last_insert_rowid(s->db);
    if (rc == STORE_OK)
        rc = one_row(s, token_cols, N(token_cols), TOKEN_SELECT " WHERE t.id = ?1", id, "token",
                     &after);
    snprintf(oid, sizeof(oid), "%lld", (long long)id);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, "create", "token", oid, NULL, after, NULL, NULL);
    rc = finish(s, rc);
    if (rc == STORE_OK && out) {
        *out = after;
        after = NULL;
    }
    cJSON_Delete(after);
    explicit_bzero(h, sizeof(h));
    return rc;
}

int store_token_create(store *s, int64_t user_id, store_role role, const char *label,
                       const char *actor, char **token, cJSON **out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[32];
    char *t = malloc(4 + 2 * sizeof(raw) + 1);
    clear_error(s);
    *token = NULL;
    if (!t)
        return oom(s);
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        free(t);
        return fail(s, STORE_ERR, NULL, "no random bytes for a token");
    }
    memcpy(t, "pct_", 4);
    for (size_t i = 0; i < sizeof(raw); i++) {
        t[4 + 2 * i] = hex[raw[i] >> 4];
        t[5 + 2 * i] = hex[raw[i] & 15];
    }
    t[4 + 2 * sizeof(raw)] = '\0';
    explicit_bzero(raw, sizeof(raw));
    int rc = token_store(s, user_id, role, label, t, actor, out);
    if (rc != STORE_OK) {
        explicit_bzero(t, strlen(t));
        free(t);
        return rc;
    }
    *token = t;
    return STORE_OK;
}

int store_token_import(store *s, int64_t user_id, store_role role, const char *label,
                       const char *token, const char *actor, cJSON **out)
{
    clear_error(s);
    size_t n = token ? strlen(token) : 0;
    bool ok = n >= 32 && n <= 256;
    for (size_t i = 0; ok && i < n; i++)
        ok = token[i] > 0x20 && token[i] < 0x7f;
    if (!ok)
        return invalid(s, "token", "must be 32 to 256 printable ASCII characters without spaces");
    return token_store(s, user_id, role, label, token, actor, out);
}

int store_token_verify(store *s, const char *token, store_principal *p)
{
    unsigned char h[32];
    sqlite3_stmt *st = NULL;
    bool matched = false;
    int64_t last_used = 0;
    clear_error(s);
    memset(p, 0, sizeof(*p));
    size_t n = token ? strlen(token) : 0;
    if (n == 0 || n > 256)
        return fail(s, STORE_ENOTFOUND, NULL, "unknown or revoked token");
    if (!sha256(token, n, h))
        return fail(s, STORE_ERR, NULL, "SHA-256 failed");
    /* Found by the first 8 bytes of the hash; the whole hash is compared in
     * constant time. */
    int rc = prep(s,
                  "SELECT t.id, t.user_id, u.name, t.token_hash, t.revoked_at, t.last_used_at, "
                  "CASE t.role WHEN 'admin' THEN 3 WHEN 'operator' THEN 2 ELSE 1 END, "
                  "CASE u.role WHEN 'admin' THEN 3 WHEN 'operator' THEN 2 ELSE 1 END "
                  "FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.lookup = ?1",
                  &st);
    int r = rc == STORE_OK ? sqlite3_bind_int64(st, 1, hash_lookup(h)) : SQLITE_OK;
    if (rc == STORE_OK && r != SQLITE_OK)
        rc = db_fail(s, r, "binding a value");
    while (rc == STORE_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
        const void *stored = sqlite3_column_blob(st, 3);
        if (sqlite3_column_bytes(st, 3) != 32 || CRYPTO_memcmp(stored, h, 32) != 0 ||
            sqlite3_column_type(st, 4) != SQLITE_NULL)
            continue;
        matched = true;
        p->token_id = sqlite3_column_int64(st, 0);
        p->user_id = sqlite3_column_int64(st, 1);
        snprintf(p->user, sizeof(p->user), "%s", (const char *)sqlite3_column_text(st, 2));
        last_used = sqlite3_column_int64(st, 5);
        int trole = sqlite3_column_int(st, 6), urole = sqlite3_column_int(st, 7);
        p->role = (store_role)(trole < urole ? trole : urole);
    }
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = db_fail(s, r, "reading tokens");
    unprep(s, st);
    explicit_bzero(h, sizeof(h));
    if (rc == STORE_OK && !matched) {
        memset(p, 0, sizeof(*p));
        rc = fail(s, STORE_ENOTFOUND, NULL, "unknown or revoked token");
    }
    /* The last use is kept to the minute, so a busy client does not make a
     * write of every request; failing to record it does not refuse the
     * token. */
    int64_t now = now_ms();
    if (rc == STORE_OK && now - last_used >= TOKEN_USE_GRANULARITY_MS &&
        run(s, "recording the token's use", "UPDATE api_tokens SET last_used_at = ?1 WHERE id = ?2",
            "ii", now, p->token_id) != STORE_OK)
        clear_error(s);
    return rc;
}

int store_token_revoke(store *s, int64_t token_id, const char *actor)
{
    cJSON *before = NULL, *after = NULL;
    char oid[32];
    clear_error(s);
    int rc = check_actor(s, actor);
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = one_row(s, token_cols, N(token_cols), TOKEN_SELECT " WHERE t.id = ?1", token_id, "token",
                 &before);
    if (rc == STORE_OK)
        rc = run(s, "revoking the token",
                 "UPDATE api_tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL", "ii",
                 now_ms(), token_id);
    if (rc == STORE_OK)
        rc = one_row(s, token_cols, N(token_cols), TOKEN_SELECT " WHERE t.id = ?1", token_id,
                     "token", &after);
    snprintf(oid, sizeof(oid), "%lld", (long long)token_id);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, "revoke", "token", oid, before, after, NULL, NULL);
    rc = finish(s, rc);
    cJSON_Delete(before);
    cJSON_Delete(after);
    return rc;
}

int store_token_list(store *s, cJSON **out)
{
    clear_error(s);
    *out = cJSON_CreateArray();
    if (!*out)
        return oom(s);
    int rc = rows_into(s, *out, token_cols, N(token_cols), TOKEN_SELECT " ORDER BY t.id", "");
    if (rc != STORE_OK) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return rc;
}

/* --- passwords and sign-in sessions ----------------------------------------- */

#define SCRYPT_LOG_N 15
#define SCRYPT_R 8
#define SCRYPT_P 1
#define SCRYPT_SALT 16
#define SCRYPT_KEY 32
/* scrypt needs 128 * r * N bytes (32 MiB here) and a little more; OpenSSL's
 * default ceiling is 32 MiB, so it is raised. */
#define SCRYPT_MAXMEM (64ULL * 1024 * 1024)
#define SESSION_SEEN_GRANULARITY_MS 60000
#define SIGNIN_FAILED "wrong user name or password"

/* Compared against when a user has no password or does not exist, so that
 * every refusal costs one scrypt: the time does not tell which it was. */
static const char dummy_hash[] = "scrypt$32768$8$1$00000000000000000000000000000000$"
                                 "0000000000000000000000000000000000000000000000000000000000000000";

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes exactly len hex digits (lower case) of in into out; false when
 * in is not that. */
static bool hex_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 2)
        return false;
    for (size_t i = 0; i < len; i += 2) {
        int hi = hex_digit(in[i]), lo = hex_digit(in[i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

/* A random secret of 32 bytes as 64 hex digits. */
static bool random_hex32(char out[65])
{
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return false;
    hex_encode(raw, sizeof(raw), out);
    explicit_bzero(raw, sizeof(raw));
    return true;
}

int store_password_hash(const char *password, char **out)
{
    unsigned char salt[SCRYPT_SALT], key[SCRYPT_KEY];
    char salt_hex[2 * SCRYPT_SALT + 1], key_hex[2 * SCRYPT_KEY + 1];
    int rc = -1;
    *out = NULL;
    if (!password || RAND_bytes(salt, sizeof(salt)) != 1 ||
        EVP_PBE_scrypt(password, strlen(password), salt, sizeof(salt), 1ULL << SCRYPT_LOG_N,
                       SCRYPT_R, SCRYPT_P, SCRYPT_MAXMEM, key, sizeof(key)) != 1)
        goto done;
    hex_encode(salt, sizeof(salt), salt_hex);
    hex_encode(key, sizeof(key), key_hex);
    size_t n = sizeof("scrypt$$$$$") + 32 + sizeof(salt_hex) + sizeof(key_hex);
    char *p = malloc(n);
    if (!p)
        goto done;
    snprintf(p, n, "scrypt$%llu$%d$%d$%s$%s", 1ULL << SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, salt_hex,
             key_hex);
    *out = p;
    rc = 0;
done:
    explicit_bzero(key, sizeof(key));
    explicit_bzero(key_hex, sizeof(key_hex));
    return rc;
}

/* A decimal number of at most 9 digits ending at '$'; moves *p past it. */
static bool hash_num(const char **p, unsigned long *out)
{
    unsigned long v = 0;
    const char *q = *p;
    while (*q >= '0' && *q <= '9' && q - *p < 9)
        v = v * 10 + (unsigned long)(*q++ - '0');
    if (q == *p || *q != '$')
        return false;
    *p = q + 1;
    *out = v;
    return true;
}

bool store_password_verify(const char *password, const char *encoded)
{
    unsigned char salt[64], want[64], got[64];
    unsigned long n, r, par;
    bool ok = false;
    if (!password || !encoded || strncmp(encoded, "scrypt$", 7) != 0)
        return false;
    const char *p = encoded + 7;
    if (!hash_num(&p, &n) || !hash_num(&p, &r) || !hash_num(&p, &par))
        return false;
    /* Bounds keep a stored hash from asking for unbounded work or memory. */
    if (n < 2 || n > (1UL << 20) || (n & (n - 1)) || r < 1 || r > 32 || par < 1 || par > 16)
        return false;
    const char *dollar = strchr(p, '$');
    if (!dollar)
        return false;
    size_t salt_len = (size_t)(dollar - p), key_len = strlen(dollar + 1);
    if (salt_len < 2 || salt_len > 2 * sizeof(salt) || key_len < 32 || key_len > 2 * sizeof(want) ||
        !hex_decode(p, salt_len, salt) || !hex_decode(dollar + 1, key_len, want))
        return false;
    if (EVP_PBE_scrypt(password, strlen(password), salt, salt_len / 2, n, r, par, SCRYPT_MAXMEM,
                       got, key_len / 2) == 1)
        ok = CRYPTO_memcmp(got, want, key_len / 2) == 0;
    explicit_bzero(got, sizeof(got));
    return ok;
}

/* The user's id, name, role (1..3) and password hash (NULL when none; the
 * caller's, free()) by name (when name is not NULL) or by id. *found says
 * whether there is such a user. */
static int user_password(store *s, const char *name, int64_t id, bool *found, int64_t *uid,
                         char uname[65], int *role, char **hash)
{
    sqlite3_stmt *st = NULL;
    *found = false;
    *hash = NULL;
    int rc = prep(s,
                  name ? "SELECT id, name, CASE role WHEN 'admin' THEN 3 WHEN 'operator' THEN 2 "
                         "ELSE 1 END, password_hash FROM users WHERE name = ?1"
                       : "SELECT id, name, CASE role WHEN 'admin' THEN 3 WHEN 'operator' THEN 2 "
                         "ELSE 1 END, password_hash FROM users WHERE id = ?1",
                  &st);
    int r = SQLITE_OK;
    if (rc == STORE_OK)
        r = name ? sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT)
                 : sqlite3_bind_int64(st, 1, id);
    if (rc == STORE_OK && r != SQLITE_OK)
        rc = db_fail(s, r, "binding a value");
    if (rc == STORE_OK) {
        r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            *found = true;
            *uid = sqlite3_column_int64(st, 0);
            snprintf(uname, 65, "%s", (const char *)sqlite3_column_text(st, 1));
            *role = sqlite3_column_int(st, 2);
            const unsigned char *h = sqlite3_column_text(st, 3);
            if (h && !(*hash = strdup((const char *)h)))
                rc = oom(s);
        } else if (r != SQLITE_DONE) {
            rc = db_fail(s, r, "reading the user");
        }
    }
    unprep(s, st);
    return rc;
}

static void free_hash(char *hash)
{
    if (hash) {
        explicit_bzero(hash, strlen(hash));
        free(hash);
    }
}

int store_user_set_password(store *s, int64_t id, const char *password, int64_t keep_session,
                            const char *actor)
{
    char *hash = NULL, oid[32];
    bool found;
    int64_t dummy;
    clear_error(s);
    int rc = check_actor(s, actor);
    size_t n = password ? strlen(password) : 0;
    if (rc == STORE_OK &&
        (n < STORE_PASSWORD_MIN || n > STORE_PASSWORD_MAX || !pc_text_ok(password)))
        rc = invalid(s, "password", "must be %d to %d bytes of text", STORE_PASSWORD_MIN,
                     STORE_PASSWORD_MAX);
    /* Hashed before the transaction: scrypt is slow on purpose, and the
     * database need not wait for it. */
    if (rc == STORE_OK && store_password_hash(password, &hash) != 0)
        rc = fail(s, STORE_ERR, NULL, "scrypt failed");
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK) {
        free_hash(hash);
        return rc;
    }
    rc = one_int(s, &found, &dummy, "SELECT id FROM users WHERE id = ?1", "i", id);
    if (rc == STORE_OK && !found)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no user %lld", (long long)id);
    if (rc == STORE_OK)
        rc = run(s, "storing the password", "UPDATE users SET password_hash = ?1 WHERE id = ?2",
                 "ti", hash, id);
    if (rc == STORE_OK)
        rc = run(s, "ending the user's sessions",
                 "DELETE FROM sessions WHERE user_id = ?1 AND id <> ?2", "ii", id, keep_session);
    snprintf(oid, sizeof(oid), "%lld", (long long)id);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, "set-password", "user", oid, NULL, NULL, NULL, NULL);
    rc = finish(s, rc);
    free_hash(hash);
    return rc;
}

int store_user_check_password(store *s, int64_t id, const char *password)
{
    bool found;
    int64_t uid = 0;
    int role = 0;
    char name[65], *hash = NULL;
    clear_error(s);
    int rc = user_password(s, NULL, id, &found, &uid, name, &role, &hash);
    if (rc == STORE_OK) {
        bool ok = store_password_verify(password, hash ? hash : dummy_hash) && hash;
        if (!ok)
            rc = fail(s, STORE_ENOTFOUND, "current", "the password is wrong");
    }
    free_hash(hash);
    return rc;
}

int store_session_signin(store *s, const char *name, const char *password, int64_t now,
                         char **token, store_session *out)
{
    char tok[65] = "", csrf[65] = "", uname[65] = "", *hash = NULL, oid[32];
    unsigned char h[32];
    bool found = false;
    int64_t uid = 0;
    int role = 0;
    clear_error(s);
    *token = NULL;
    memset(out, 0, sizeof(*out));
    bool name_ok = name && name[0] && strlen(name) <= MAX_IDENT && pc_text_ok(name);
    size_t plen = password ? strlen(password) : 0;
    int rc = name_ok ? user_password(s, name, 0, &found, &uid, uname, &role, &hash) : STORE_OK;
    if (rc != STORE_OK)
        return rc;
    bool ok = store_password_verify(password ? password : "", hash ? hash : dummy_hash) && hash &&
              plen <= STORE_PASSWORD_MAX;
    free_hash(hash);
    if (!ok) {
        /* The name tried is kept as the audit row's object, as text. */
        const char *tried = name && name[0] && strlen(name) <= MAX_LABEL && pc_text_ok(name)
                                ? name
                                : "(not a user name)";
        rc = begin(s, true);
        if (rc == STORE_OK)
            rc = finish(s, record(s, 0, "anonymous", "sign-in-failed", "session", tried, NULL, NULL,
                                  NULL, NULL));
        return rc == STORE_OK ? fail(s, STORE_ENOTFOUND, NULL, SIGNIN_FAILED) : rc;
    }
    if (!random_hex32(tok) || !random_hex32(csrf))
        return fail(s, STORE_ERR, NULL, "no random bytes for a session");
    if (!sha256(tok, strlen(tok), h)) {
        rc = fail(s, STORE_ERR, NULL, "SHA-256 failed");
        goto done;
    }
    rc = begin(s, true);
    if (rc != STORE_OK)
        goto done;
    rc = run(s, "removing expired sessions", "DELETE FROM sessions WHERE expires_at <= ?1", "i",
             now);
    if (rc == STORE_OK)
        rc = run(s, "creating the session",
                 "INSERT INTO sessions (user_id, lookup, token_hash, csrf_token, created_at, "
                 "last_seen, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
                 "iibtii", uid, hash_lookup(h), h, 32, csrf, now, now + STORE_SESSION_IDLE_MS);
    out->id = sqlite3_last_insert_rowid(s->db);
    snprintf(oid, sizeof(oid), "%lld", (long long)out->id);
    if (rc == STORE_OK)
        rc = record(s, 0, uname, "sign-in", "session", oid, NULL, NULL, NULL, NULL);
    rc = finish(s, rc);
    if (rc == STORE_OK && !(*token = strdup(tok)))
        rc = oom(s);
    if (rc == STORE_OK) {
        out->user_id = uid;
        snprintf(out->user, sizeof(out->user), "%s", uname);
        out->role = (store_role)role;
        memcpy(out->csrf, csrf, sizeof(out->csrf));
        out->created_at = now;
        out->expires_at = now + STORE_SESSION_IDLE_MS;
    }
done:
    if (rc != STORE_OK)
        memset(out, 0, sizeof(*out));
    explicit_bzero(tok, sizeof(tok));
    explicit_bzero(csrf, sizeof(csrf));
    explicit_bzero(h, sizeof(h));
    return rc;
}

int store_session_lookup(store *s, const char *token, int64_t now, store_session *out)
{
    unsigned char h[32];
    sqlite3_stmt *st = NULL;
    bool matched = false;
    int64_t last_seen = 0;
    clear_error(s);
    memset(out, 0, sizeof(*out));
    size_t n = token ? strlen(token) : 0;
    if (n != 64)
        return fail(s, STORE_ENOTFOUND, NULL, "unknown or expired session");
    if (!sha256(token, n, h))
        return fail(s, STORE_ERR, NULL, "SHA-256 failed");
    int rc = prep(s,
                  "SELECT se.id, se.user_id, u.name, se.token_hash, se.csrf_token, se.created_at, "
                  "se.last_seen, se.expires_at, "
                  "CASE u.role WHEN 'admin' THEN 3 WHEN 'operator' THEN 2 ELSE 1 END "
                  "FROM sessions se JOIN users u ON u.id = se.user_id WHERE se.lookup = ?1",
                  &st);
    int r = rc == STORE_OK ? sqlite3_bind_int64(st, 1, hash_lookup(h)) : SQLITE_OK;
    if (rc == STORE_OK && r != SQLITE_OK)
        rc = db_fail(s, r, "binding a value");
    while (rc == STORE_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
        const void *stored = sqlite3_column_blob(st, 3);
        if (sqlite3_column_bytes(st, 3) != 32 || CRYPTO_memcmp(stored, h, 32) != 0 ||
            sqlite3_column_int64(st, 7) <= now)
            continue;
        matched = true;
        out->id = sqlite3_column_int64(st, 0);
        out->user_id = sqlite3_column_int64(st, 1);
        snprintf(out->user, sizeof(out->user), "%s", (const char *)sqlite3_column_text(st, 2));
        snprintf(out->csrf, sizeof(out->csrf), "%s", (const char *)sqlite3_column_text(st, 4));
        out->created_at = sqlite3_column_int64(st, 5);
        last_seen = sqlite3_column_int64(st, 6);
        out->expires_at = sqlite3_column_int64(st, 7);
        out->role = (store_role)sqlite3_column_int(st, 8);
    }
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = db_fail(s, r, "reading sessions");
    unprep(s, st);
    explicit_bzero(h, sizeof(h));
    if (rc == STORE_OK && !matched)
        rc = fail(s, STORE_ENOTFOUND, NULL, "unknown or expired session");
    if (rc != STORE_OK) {
        memset(out, 0, sizeof(*out));
        return rc;
    }
    /* The idle expiry moves with use, written at most once a minute; a
     * failed write does not refuse the session. */
    if (now - last_seen >= SESSION_SEEN_GRANULARITY_MS) {
        int64_t exp = now + STORE_SESSION_IDLE_MS, cap = out->created_at + STORE_SESSION_MAX_MS;
        if (exp > cap)
            exp = cap;
        if (run(s, "recording the session's use",
                "UPDATE sessions SET last_seen = ?1, expires_at = ?2 WHERE id = ?3", "iii", now,
                exp, out->id) == STORE_OK)
            out->expires_at = exp;
        else
            clear_error(s);
    }
    return STORE_OK;
}

int store_session_delete(store *s, int64_t id, const char *actor)
{
    char oid[32];
    clear_error(s);
    int rc = check_actor(s, actor);
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = run(s, "ending the session", "DELETE FROM sessions WHERE id = ?1", "i", id);
    if (rc == STORE_OK && sqlite3_changes(s->db) == 0)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no session %lld", (long long)id);
    snprintf(oid, sizeof(oid), "%lld", (long long)id);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, "sign-out", "session", oid, NULL, NULL, NULL, NULL);
    return finish(s, rc);
}

/* --- node state ---------------------------------------------------------------- */

int store_node_find(store *s, const char *name, cJSON **out)
{
    bool found;
    int64_t id;
    clear_error(s);
    *out = NULL;
    int rc = one_int(s, &found, &id, "SELECT id FROM nodes WHERE name = ?1", "t", name ? name : "");
    if (rc == STORE_OK && !found)
        return fail(s, STORE_ENOTFOUND, NULL, "there is no node named '%s'", name ? name : "");
    return rc == STORE_OK ? obj_load(s, &ot_node, true, id, out) : rc;
}

/* Runs an UPDATE of one node; STORE_ENOTFOUND when it changed no row. */
static int node_update(store *s, int64_t id, const char *sql, const char *types, int64_t a,
                       int64_t b, const char *c)
{
    int rc = run(s, "updating the node", sql, types, id, a, b, c);
    if (rc == STORE_OK && sqlite3_changes(s->db) == 0)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no node %lld", (long long)id);
    return rc;
}

int store_node_set_enrollment(store *s, int64_t id, const char *state, const char *actor)
{
    static const char *const states[] = {"pending", "enrolled", "revoked", NULL};
    cJSON *before = NULL, *after = NULL;
    char oid[32];
    clear_error(s);
    int rc = check_actor(s, actor);
    if (rc == STORE_OK && (!state || !in_list(state, states)))
        rc = invalid(s, "enrollment", "must be pending, enrolled or revoked");
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = obj_load(s, &ot_node, true, id, &before);
    if (rc == STORE_OK)
        rc = run(s, "updating the node", "UPDATE nodes SET enrollment = ?2 WHERE id = ?1", "it", id,
                 state);
    /* A revoked node comes back only with a token made after the revocation. */
    if (rc == STORE_OK && strcmp(state, "revoked") == 0)
        rc = run(s, "expiring enrollment tokens",
                 "UPDATE enrollment_tokens SET expires_at = ?2 WHERE node_id = ?1 AND used_at IS "
                 "NULL AND expires_at > ?2",
                 "ii", id, now_ms());
    if (rc == STORE_OK)
        rc = obj_load(s, &ot_node, true, id, &after);
    snprintf(oid, sizeof(oid), "%lld", (long long)id);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, "enrollment", "node", oid, before, after, NULL, NULL);
    rc = finish(s, rc);
    cJSON_Delete(before);
    cJSON_Delete(after);
    return rc;
}

int store_node_seen(store *s, int64_t id, int64_t time_ms)
{
    clear_error(s);
    return node_update(s, id, "UPDATE nodes SET last_seen = ?2 WHERE id = ?1", "ii", time_ms, 0,
                       NULL);
}

int store_node_set_versions(store *s, int64_t id, int64_t enforced, int64_t pending,
                            const char *last_error)
{
    clear_error(s);
    if (enforced < 0 || pending < 0)
        return invalid(s, enforced < 0 ? "enforced_version" : "pending_version",
                       "must not be negative");
    if (last_error && strlen(last_error) > MAX_DETAIL)
        return invalid(s, "last_error", "must be at most %d bytes", MAX_DETAIL);
    return node_update(s, id,
                       "UPDATE nodes SET enforced_version = ?2, pending_version = ?3, "
                       "last_error = ?4 WHERE id = ?1",
                       "izzt", enforced, pending, last_error);
}

/* --- events ------------------------------------------------------------------- */

static const col event_cols[] = {{"id", C_INT},
                                 {"node", C_TEXT},
                                 {"seq", C_INT},
                                 {"time", C_TIME},
                                 {"received", C_TIME},
                                 {"type", C_TEXT},
                                 {"verdict", C_TEXT},
                                 {"reason", C_TEXT},
                                 {"detail", C_TEXT},
                                 {"source", C_TEXT},
                                 {"source_port", C_INT},
                                 {"destination", C_TEXT},
                                 {"destination_address", C_TEXT},
                                 {"port", C_INT},
                                 {"protocol", C_TEXT},
                                 {"group", C_TEXT},
                                 {"office_id", C_INT},
                                 {"region_id", C_INT},
                                 {"policy_version", C_INT},
                                 {"bytes_up", C_INT},
                                 {"bytes_down", C_INT},
                                 {"time_ms", C_INT}};
#define EVENT_SELECT                                                                               \
    "SELECT id, node, seq, time, received, type, verdict, reason, detail, source, source_port, "   \
    "destination, destination_address, port, protocol, group_name, office_id, region_id, "         \
    "policy_version, bytes_up, bytes_down, time FROM events"

/* Binds an optional string field of an event: absent or null is NULL. */
static int ev_text(store *s, sqlite3_stmt *st, int idx, const cJSON *ev, const char *key, size_t i,
                   size_t max)
{
    char f[64];
    const cJSON *v = get(ev, key);
    snprintf(f, sizeof(f), "[%zu].%s", i, key);
    if (is_null(v))
        return sqlite3_bind_null(st, idx) == SQLITE_OK ? STORE_OK : oom(s);
    if (!cJSON_IsString(v) || strlen(v->valuestring) > max)
        return invalid(s, f, "must be a string of at most %zu bytes, or null", max);
    return sqlite3_bind_text(st, idx, v->valuestring, -1, SQLITE_TRANSIENT) == SQLITE_OK ? STORE_OK
                                                                                         : oom(s);
}

static int ev_int(store *s, sqlite3_stmt *st, int idx, const cJSON *ev, const char *key, size_t i,
                  int64_t min, int64_t max, bool null_ok)
{
    char f[64];
    int64_t v = 0;
    const cJSON *it = get(ev, key);
    snprintf(f, sizeof(f), "[%zu].%s", i, key);
    if (is_null(it) && null_ok)
        return sqlite3_bind_null(st, idx) == SQLITE_OK ? STORE_OK : oom(s);
    int rc = want_int(s, it, f, min, max, &v);
    if (rc == STORE_OK && sqlite3_bind_int64(st, idx, v) != SQLITE_OK)
        rc = oom(s);
    return rc;
}

/* A port: 1..65535, or null (or 0, which nodes before 0.3 wrote) when the
 * event happened before one was known. */
static int ev_port(store *s, sqlite3_stmt *st, int idx, const cJSON *ev, const char *key, size_t i)
{
    const cJSON *v = get(ev, key);
    if (cJSON_IsNumber(v) && v->valuedouble == 0)
        return sqlite3_bind_null(st, idx) == SQLITE_OK ? STORE_OK : oom(s);
    return ev_int(s, st, idx, ev, key, i, 1, 65535, true);
}

static int ev_bind(store *s, sqlite3_stmt *st, const cJSON *ev, size_t i)
{
    static const char *const types[] = {"block", "exception", "allow", NULL};
    static const char *const verdicts[] = {"blocked", "allowed", NULL};
    static const char *const protos[] = {"http", "tls", "rtsp", "mms", "passthrough", "none", NULL};
    const int64_t max53 = ((int64_t)1 << 53) - 1;
    char f[64];
    const char *type = NULL, *verdict = NULL, *p = NULL;
    int64_t t = 0;
    const cJSON *v;
    if (!cJSON_IsObject(ev)) {
        snprintf(f, sizeof(f), "[%zu]", i);
        return invalid(s, f, "must be an event object");
    }
    int rc = ev_int(s, st, 2, ev, "seq", i, 1, max53, false);
    if (rc == STORE_OK) {
        snprintf(f, sizeof(f), "[%zu].time", i);
        v = get(ev, "time");
        if (cJSON_IsString(v) ? !parse_time(v->valuestring, &t)
                              : want_int(s, v, f, 0, max53, &t) != STORE_OK)
            rc = invalid(s, f, "must be a UTC time such as 2026-11-24T23:59:01.123Z");
        else if (sqlite3_bind_int64(st, 3, t) != SQLITE_OK)
            rc = oom(s);
    }
    if (rc == STORE_OK) {
        snprintf(f, sizeof(f), "[%zu].type", i);
        rc = want_enum(s, get(ev, "type"), f, types, "block, exception, allow", &type);
    }
    if (rc == STORE_OK) {
        snprintf(f, sizeof(f), "[%zu].verdict", i);
        if (is_null(v = get(ev, "verdict")))
            verdict = strcmp(type, "block") == 0 ? "blocked" : "allowed";
        else
            rc = want_enum(s, v, f, verdicts, "blocked, allowed", &verdict);
    }
    if (rc == STORE_OK) {
        snprintf(f, sizeof(f), "[%zu].reason", i);
        v = get(ev, "reason");
        if (!cJSON_IsString(v) || !v->valuestring[0] || strlen(v->valuestring) > 128)
            rc = invalid(s, f, "must be a reason code of 1 to 128 bytes");
    }
    if (rc == STORE_OK && !is_null(v = get(ev, "protocol"))) {
        snprintf(f, sizeof(f), "[%zu].protocol", i);
        rc = want_enum(s, v, f, protos, "http, tls, rtsp, mms, passthrough, none", &p);
    }
    if (rc == STORE_OK &&
        (sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC) != SQLITE_OK ||
         sqlite3_bind_text(st, 5, verdict, -1, SQLITE_STATIC) != SQLITE_OK ||
         sqlite3_bind_text(st, 6, get_str(ev, "reason"), -1, SQLITE_TRANSIENT) != SQLITE_OK))
        rc = oom(s);
    if (rc == STORE_OK) {
        rc = ev_text(s, st, 7, ev, "detail", i, MAX_DETAIL);
        /* detail is never NULL in the table. */
        if (rc == STORE_OK && is_null(get(ev, "detail")) &&
            sqlite3_bind_text(st, 7, "", 0, SQLITE_STATIC) != SQLITE_OK)
            rc = oom(s);
    }
    if (rc == STORE_OK)
        rc = ev_text(s, st, 8, ev, "source", i, MAX_TEXT);
    if (rc == STORE_OK)
        rc = ev_port(s, st, 9, ev, "source_port", i);
    if (rc == STORE_OK)
        rc = ev_text(s, st, 10, ev, "destination", i, MAX_TEXT);
    if (rc == STORE_OK)
        rc = ev_text(s, st, 11, ev, "destination_address", i, MAX_TEXT);
    if (rc == STORE_OK)
        rc = ev_port(s, st, 12, ev, "port", i);
    if (rc == STORE_OK)
        rc = ev_text(s, st, 13, ev, "protocol", i, 16);
    if (rc == STORE_OK)
        rc = ev_text(s, st, 14, ev, "group", i, MAX_IDENT);
    if (rc == STORE_OK)
        rc = ev_int(s, st, 15, ev, "policy_version", i, 0, max53, true);
    if (rc == STORE_OK)
        rc = ev_int(s, st, 16, ev, "bytes_up", i, 0, max53, true);
    if (rc == STORE_OK)
        rc = ev_int(s, st, 17, ev, "bytes_down", i, 0, max53, true);
    return rc;
}

int store_events_insert(store *s, const char *node, const cJSON *batch, size_t *inserted)
{
    sqlite3_stmt *st = NULL;
    bool found;
    int64_t office = 0, region = 0, now = now_ms();
    size_t count = 0, i = 0;
    clear_error(s);
    if (inserted)
        *inserted = 0;
    if (!cJSON_IsArray(batch) || cJSON_GetArraySize(batch) > MAX_BATCH)
        return invalid(s, "", "must be an array of at most %d events", MAX_BATCH);
    int rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = one_int(s, &found, &office, "SELECT office_id FROM nodes WHERE name = ?1", "t",
                 node ? node : "");
    if (rc == STORE_OK && !found)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no node named '%s'", node ? node : "");
    if (rc == STORE_OK)
        rc =
            one_int(s, &found, &region, "SELECT region_id FROM offices WHERE id = ?1", "i", office);
    if (rc == STORE_OK)
        rc = prep(s,
                  "INSERT INTO events (node, seq, time, type, verdict, reason, detail, source, "
                  "source_port, destination, destination_address, port, protocol, group_name, "
                  "policy_version, bytes_up, bytes_down, office_id, region_id, received) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, "
                  "coalesce(?16, 0), coalesce(?17, 0), ?18, ?19, ?20) "
                  "ON CONFLICT (node, seq) DO NOTHING",
                  &st);
    for (const cJSON *ev = batch->child; rc == STORE_OK && ev; ev = ev->next, i++) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (sqlite3_bind_text(st, 1, node, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
            sqlite3_bind_int64(st, 18, office) != SQLITE_OK ||
            sqlite3_bind_int64(st, 19, region) != SQLITE_OK ||
            sqlite3_bind_int64(st, 20, now) != SQLITE_OK)
            rc = oom(s);
        if (rc == STORE_OK)
            rc = ev_bind(s, st, ev, i);
        if (rc == STORE_OK) {
            int r = sqlite3_step(st);
            if (r != SQLITE_DONE)
                rc = db_fail(s, r, "storing an event");
            else
                count += (size_t)sqlite3_changes(s->db);
        }
    }
    unprep(s, st);
    rc = finish(s, rc);
    if (rc == STORE_OK && inserted)
        *inserted = count;
    return rc;
}

int store_events_query(store *s, const store_event_query *q, cJSON **out)
{
    int64_t ct = 0, cid = 0;
    char sql[1024];
    sqlite3_stmt *st = NULL;
    clear_error(s);
    *out = NULL;
    unsigned limit = page_limit(q->limit);
    if (limit > MAX_PAGE)
        return invalid(s, "limit", "must be 1 to %d", MAX_PAGE);
    if (q->cursor && !parse_cursor(q->cursor, &ct, &cid, true))
        return invalid(s, "cursor", "is not a cursor this API returned");
    /* Only the filters in use go into the statement, so that SQLite picks
     * the index of the one that narrows most; the values are all bound. */
    snprintf(sql, sizeof(sql), "%s WHERE 1%s%s%s%s%s%s%s%s ORDER BY time DESC, id DESC LIMIT ?10",
             EVENT_SELECT, q->from_ms ? " AND time >= ?1" : "", q->to_ms ? " AND time < ?2" : "",
             q->office_id ? " AND office_id = ?3" : "", q->region_id ? " AND region_id = ?4" : "",
             q->group ? " AND group_name = ?5" : "", q->type ? " AND type = ?6" : "",
             q->node ? " AND node = ?7" : "",
             q->cursor ? " AND time <= ?8 AND (time < ?8 OR id < ?9)" : "");
    cJSON *rows = cJSON_CreateArray();
    int rc = rows ? prep(s, sql, &st) : oom(s);
    int r = SQLITE_OK;
    if (rc == STORE_OK) {
        /* Unused numbers stay NULL and appear nowhere in the statement. */
        if ((q->from_ms && (r = sqlite3_bind_int64(st, 1, q->from_ms)) != SQLITE_OK) ||
            (q->to_ms && (r = sqlite3_bind_int64(st, 2, q->to_ms)) != SQLITE_OK) ||
            (q->office_id && (r = sqlite3_bind_int64(st, 3, q->office_id)) != SQLITE_OK) ||
            (q->region_id && (r = sqlite3_bind_int64(st, 4, q->region_id)) != SQLITE_OK) ||
            (q->group &&
             (r = sqlite3_bind_text(st, 5, q->group, -1, SQLITE_TRANSIENT)) != SQLITE_OK) ||
            (q->type &&
             (r = sqlite3_bind_text(st, 6, q->type, -1, SQLITE_TRANSIENT)) != SQLITE_OK) ||
            (q->node &&
             (r = sqlite3_bind_text(st, 7, q->node, -1, SQLITE_TRANSIENT)) != SQLITE_OK) ||
            (q->cursor && ((r = sqlite3_bind_int64(st, 8, ct)) != SQLITE_OK ||
                           (r = sqlite3_bind_int64(st, 9, cid)) != SQLITE_OK)) ||
            (r = sqlite3_bind_int64(st, 10, (int64_t)limit + 1)) != SQLITE_OK)
            rc = db_fail(s, r, "binding a value");
    }
    while (rc == STORE_OK && (r = sqlite3_step(st)) == SQLITE_ROW)
        if (!jpush(rows, row_json(st, event_cols, N(event_cols))))
            rc = oom(s);
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = db_fail(s, r, "reading events");
    unprep(s, st);
    if (rc != STORE_OK) {
        cJSON_Delete(rows);
        return rc;
    }
    rc = page_wrap(s, rows, "events", limit, "time_ms", out);
    /* time_ms only served the cursor. */
    for (cJSON *e = rc == STORE_OK ? get(*out, "events")->child : NULL; e; e = e->next)
        cJSON_DeleteItemFromObjectCaseSensitive(e, "time_ms");
    return rc;
}

/* --- opening and migrations ---------------------------------------------------- */

static int pragma_int(store *s, const char *sql, int64_t *out)
{
    bool found;
    int rc = one_int(s, &found, out, sql, "");
    if (rc == STORE_OK && !found)
        rc = fail(s, STORE_ERR, NULL, "%s returned nothing", sql);
    return rc;
}

/* A new database: the global settings, the shipped lists, the first admin
 * user and revision 1. */
static int seed(store *s)
{
    cJSON *g = NULL, *norm = NULL;
    bool have_skype = false;
    int64_t id = 0;
    int rc = STORE_OK;
    for (size_t i = 0; rc == STORE_OK && i < store__nshipped_lists; i++) {
        const store_shipped_list *l = &store__shipped_lists[i];
        cJSON *in = cJSON_CreateObject(), *body = cJSON_Parse(l->json);
        if (!in)
            cJSON_Delete(body);
        /* jadd takes body whether it succeeds or not. */
        if (!in || !jadd(in, "list", body) || !jadd(in, "name", cJSON_CreateString(l->name)))
            rc = oom(s);
        if (rc == STORE_OK)
            rc = check_list(s, 0, in, &norm);
        if (rc == STORE_OK &&
            !cJSON_ReplaceItemInObjectCaseSensitive(norm, "shipped", cJSON_CreateTrue()))
            rc = oom(s);
        if (rc == STORE_OK)
            rc = obj_write(s, &ot_list, W_NEW, 0, norm, 1, NULL);
        if (rc != STORE_OK)
            snprintf(s->msg + strlen(s->msg), sizeof(s->msg) - strlen(s->msg), " (shipped list %s)",
                     l->name);
        have_skype |= strcmp(l->name, "skype") == 0;
        cJSON_Delete(in);
        cJSON_Delete(norm);
        norm = NULL;
    }
    /* What the white paper asks for, stated at the global scope so that an
     * operator sees every knob; regions and offices inherit it. */
    if (rc == STORE_OK) {
        g = cJSON_Parse("{\"ports\": {\"80\": \"http\", \"443\": \"tls\", \"554\": \"rtsp\", "
                        "\"1755\": \"mms\"}, \"require_certificate\": true, "
                        "\"block_executables\": true, \"use_lists\": [], "
                        "\"block_high_ports\": true, \"high_port_threshold\": 1024, "
                        "\"open_ports\": [], \"dns_resolvers\": null, "
                        "\"web_mode\": \"transparent\", \"web_devices\": [], "
                        "\"log_drops_per_minute\": 0}");
        cJSON *ul = g ? cJSON_GetObjectItemCaseSensitive(g, "use_lists") : NULL;
        if (!ul || (have_skype && !jpush(ul, cJSON_CreateString("skype"))))
            rc = oom(s);
    }
    if (rc == STORE_OK)
        rc = check_settings(s, MODEL_SCOPE_GLOBAL, 0, g, &norm);
    if (rc == STORE_OK)
        rc = obj_write(s, &ot_settings, W_NEW, 0, norm, 1, NULL);
    if (rc == STORE_OK)
        rc = user_insert(s, "admin", "admin", &id);
    /* Revision 1's changes add everything; it is a checkpoint too. */
    cJSON *snap = NULL, *empty = cJSON_CreateObject(), *changes = cJSON_CreateArray();
    if (rc == STORE_OK)
        rc = snapshot(s, &snap);
    if (rc == STORE_OK && (!empty || !changes || !snap_diff(empty, snap, changes)))
        rc = oom(s);
    if (rc == STORE_OK)
        rc = record(s, 1, "system", "seed", "revision", "1", NULL, NULL, "initial policy", changes);
    cJSON_Delete(snap);
    cJSON_Delete(empty);
    cJSON_Delete(changes);
    cJSON_Delete(g);
    cJSON_Delete(norm);
    return rc;
}

/* Applies migrations from+1..n in one transaction (foreign keys are off
 * meanwhile, as SQLite advises for schema changes, and checked at the end);
 * seeds a new database. Either all of it happens or nothing. */
static int migrate(store *s, const store_migration *mig, size_t n)
{
    int64_t cur = 0, bad = 0;
    char sql[64];
    if (sqlite3_exec(s->db, "PRAGMA foreign_keys = OFF", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(s, sqlite3_errcode(s->db), "switching foreign keys off");
    int rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    /* Another process may have migrated while this one waited. */
    rc = pragma_int(s, "PRAGMA user_version", &cur);
    if (rc == STORE_OK && cur > (int64_t)n)
        rc = fail(s, STORE_EVERSION, NULL,
                  "the database is at schema version %lld, newer than this binary knows (%zu)",
                  (long long)cur, n);
    for (size_t v = (size_t)cur + 1; rc == STORE_OK && v <= n; v++) {
        char *err = NULL;
        if (mig[v - 1].version != (int)v) {
            rc = fail(s, STORE_ERR, NULL, "migration %s is numbered %d, expected %zu",
                      mig[v - 1].name, mig[v - 1].version, v);
        } else if (sqlite3_exec(s->db, mig[v - 1].sql, NULL, NULL, &err) != SQLITE_OK) {
            rc = fail(s, STORE_ERR, NULL,
                      "migration %s failed: %s; the database is unchanged (schema version %lld)",
                      mig[v - 1].name, err ? err : sqlite3_errmsg(s->db), (long long)cur);
        }
        sqlite3_free(err);
    }
    if (rc == STORE_OK && cur < (int64_t)n) {
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %zu", n);
        rc = run(s, "setting the schema version", sql, "");
    }
    if (rc == STORE_OK && cur == 0) {
        snprintf(sql, sizeof(sql), "PRAGMA application_id = %d", APP_ID);
        rc = run(s, "marking the database", sql, "");
        if (rc == STORE_OK)
            rc = seed(s);
        s->created = rc == STORE_OK;
    }
    if (rc == STORE_OK) {
        bool found;
        rc = one_int(s, &found, &bad, "PRAGMA foreign_key_check", "");
        if (rc == STORE_OK && found)
            rc = fail(s, STORE_ERR, NULL,
                      "after the migrations a reference is broken; the database is unchanged "
                      "(schema version %lld)",
                      (long long)cur);
    }
    rc = finish(s, rc);
    if (rc != STORE_OK)
        s->created = false;
    return rc;
}

int store__open_with(const char *path, const store_migration *mig, size_t n, store **out, char *err,
                     size_t errlen)
{
    store *s = calloc(1, sizeof(*s));
    int64_t version = 0, app = 0, objects = 0, on = 0;
    *out = NULL;
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return STORE_ERR;
    }
    int rc = STORE_OK;
    int r = sqlite3_open_v2(
        path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (r != SQLITE_OK) {
        rc = fail(s, STORE_ERR, NULL, "cannot open %s: %s", path,
                  s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(r));
        goto done;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    /* No statement may corrupt the file behind SQLite's back (writable
     * schema, direct page writes). The schema itself is trusted: its CHECK
     * constraints call the JSON functions. */
    sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    rc = pragma_int(s, "PRAGMA user_version", &version);
    if (rc == STORE_OK)
        rc = pragma_int(s, "PRAGMA application_id", &app);
    if (rc == STORE_OK)
        rc = pragma_int(s, "SELECT count(*) FROM sqlite_schema", &objects);
    if (rc != STORE_OK) {
        rc = fail(s, rc, NULL, "%s: %s", path, s->msg);
        goto done;
    }
    if (version > (int64_t)n) {
        rc = fail(s, STORE_EVERSION, NULL,
                  "%s is at schema version %lld, newer than this portcullis-controller knows "
                  "(%zu); run the newer controller, or restore a backup made for this one",
                  path, (long long)version, n);
        goto done;
    }
    if ((app != 0 && app != APP_ID) || (app == 0 && objects > 0)) {
        rc = fail(s, STORE_ERR, NULL,
                  "%s is a SQLite database of something else (application id %lld), not a "
                  "Portcullis controller database",
                  path, (long long)app);
        goto done;
    }
    {
        sqlite3_stmt *st = NULL;
        rc = prep(s, "PRAGMA journal_mode = WAL", &st);
        if (rc == STORE_OK) {
            r = sqlite3_step(st);
            const char *mode = r == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
            if (!mode || (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0))
                rc = fail(s, STORE_ERR, NULL, "%s: cannot use WAL mode (journal mode %s)", path,
                          mode ? mode : sqlite3_errmsg(s->db));
        }
        unprep(s, st);
    }
    /* A change the controller reported as made survives a power cut. */
    if (rc == STORE_OK)
        rc = run(s, "setting synchronous", "PRAGMA synchronous = FULL", "");
    if (rc == STORE_OK && version < (int64_t)n)
        rc = migrate(s, mig, n);
    if (rc == STORE_OK &&
        sqlite3_exec(s->db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK)
        rc = db_fail(s, sqlite3_errcode(s->db), "switching foreign keys on");
    if (rc == STORE_OK)
        rc = pragma_int(s, "PRAGMA foreign_keys", &on);
    if (rc == STORE_OK && on != 1)
        rc = fail(s, STORE_ERR, NULL, "this SQLite does not enforce foreign keys");
    if (rc != STORE_OK && rc != STORE_EVERSION && strncmp(s->msg, path, strlen(path)) != 0) {
        char m[sizeof(s->msg)];
        snprintf(m, sizeof(m), "%s", s->msg);
        fail(s, rc, NULL, "%s: %s", path, m);
    }
done:
    if (rc != STORE_OK) {
        snprintf(err, errlen, "%s", s->msg);
        store_close(s);
        return rc;
    }
    clear_error(s);
    *out = s;
    return STORE_OK;
}

int store_open(const char *path, store **out, char *err, size_t errlen)
{
    return store__open_with(path, store__migrations, store__nmigrations, out, err, errlen);
}

void store_close(store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < STMT_CACHE; i++) {
        sqlite3_finalize(s->cache[i].st);
        free(s->cache[i].sql);
    }
    sqlite3_close_v2(s->db);
    free(s);
}

/* --- enrollment and the link ------------------------------------------------ */

#define ENROLL_TTL_MIN 60
#define ENROLL_TTL_MAX 604800

static const col enroll_cols[] = {
    {"id", C_INT},       {"node_id", C_INT},     {"created_at", C_TIME}, {"expires_at", C_TIME},
    {"used_at", C_TIME}, {"created_by", C_TEXT}, {"state", C_TEXT}};
#define ENROLL_SELECT                                                                              \
    "SELECT id, node_id, created_at, expires_at, used_at, created_by, CASE WHEN used_at IS NOT "   \
    "NULL THEN 'used' WHEN expires_at <= ?2 THEN 'expired' ELSE 'valid' END FROM "                 \
    "enrollment_tokens"

static int node_exists(store *s, int64_t node_id)
{
    bool found;
    int64_t one;
    int rc = one_int(s, &found, &one, "SELECT 1 FROM nodes WHERE id = ?1", "i", node_id);
    if (rc == STORE_OK && !found)
        rc = fail(s, STORE_ENOTFOUND, NULL, "there is no node %lld", (long long)node_id);
    return rc;
}

int store_enroll_token_create(store *s, int64_t node_id, int64_t ttl_s, const char *actor,
                              char **secret, cJSON **out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[32], h[32];
    char *t = NULL, oid[32];
    cJSON *after = NULL, *arr = NULL;
    int64_t now = now_ms();
    clear_error(s);
    *secret = NULL;
    if (out)
        *out = NULL;
    int rc = check_actor(s, actor);
    if (rc == STORE_OK && (ttl_s < ENROLL_TTL_MIN || ttl_s > ENROLL_TTL_MAX))
        rc = invalid(s, "ttl_seconds", "must be %d to %d seconds", ENROLL_TTL_MIN, ENROLL_TTL_MAX);
    if (rc == STORE_OK && !(t = malloc(2 * sizeof(raw) + 1)))
        rc = oom(s);
    if (rc == STORE_OK && RAND_bytes(raw, sizeof(raw)) != 1)
        rc = fail(s, STORE_ERR, NULL, "no random bytes for a token");
    if (rc == STORE_OK) {
        for (size_t i = 0; i < sizeof(raw); i++) {
            t[2 * i] = hex[raw[i] >> 4];
            t[2 * i + 1] = hex[raw[i] & 15];
        }
        t[2 * sizeof(raw)] = '\0';
        if (!sha256(t, strlen(t), h))
            rc = fail(s, STORE_ERR, NULL, "SHA-256 failed");
    }
    explicit_bzero(raw, sizeof(raw));
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        goto done;
    rc = node_exists(s, node_id);
    if (rc == STORE_OK)
        rc = run(s, "storing the enrollment token",
                 "INSERT INTO enrollment_tokens (node_id, token_hash, created_at, created_by, "
                 "expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                 "ibiti", node_id, h, 32, now, actor, now + ttl_s * 1000);
    int64_t id = sqlite3_last_insert_rowid(s->db);
    if (rc == STORE_OK && !(arr = cJSON_CreateArray()))
        rc = oom(s);
    if (rc == STORE_OK)
        rc = rows_into(s, arr, enroll_cols, N(enroll_cols), ENROLL_SELECT " WHERE id = ?1", "ii",
                       id, now);
    if (rc == STORE_OK && !(after = cJSON_DetachItemFromArray(arr, 0)))
        rc = oom(s);
    snprintf(oid, sizeof(oid), "%lld", (long long)node_id);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, "enrollment-token", "node", oid, NULL, after, NULL, NULL);
    rc = finish(s, rc);
done:
    explicit_bzero(h, sizeof(h));
    cJSON_Delete(arr);
    if (rc != STORE_OK) {
        if (t)
            explicit_bzero(t, strlen(t));
        free(t);
        cJSON_Delete(after);
        return rc;
    }
    *secret = t;
    if (out)
        *out = after;
    else
        cJSON_Delete(after);
    return STORE_OK;
}

int store_enroll_token_list(store *s, int64_t node_id, cJSON **out)
{
    clear_error(s);
    *out = NULL;
    int rc = node_exists(s, node_id);
    cJSON *arr = rc == STORE_OK ? cJSON_CreateArray() : NULL;
    if (rc == STORE_OK && !arr)
        rc = oom(s);
    if (rc == STORE_OK)
        rc = rows_into(s, arr, enroll_cols, N(enroll_cols),
                       ENROLL_SELECT " WHERE node_id = ?1 ORDER BY id DESC", "ii", node_id,
                       now_ms());
    if (rc != STORE_OK) {
        cJSON_Delete(arr);
        return rc;
    }
    *out = arr;
    return STORE_OK;
}

int store_enroll_token_expire(store *s, int64_t node_id, const char *actor, size_t *n)
{
    char oid[32];
    int64_t now = now_ms();
    clear_error(s);
    if (n)
        *n = 0;
    int rc = check_actor(s, actor);
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = node_exists(s, node_id);
    if (rc == STORE_OK)
        rc = run(s, "expiring enrollment tokens",
                 "UPDATE enrollment_tokens SET expires_at = ?2 WHERE node_id = ?1 AND used_at IS "
                 "NULL AND expires_at > ?2",
                 "ii", node_id, now);
    size_t changed = rc == STORE_OK ? (size_t)sqlite3_changes(s->db) : 0;
    snprintf(oid, sizeof(oid), "%lld", (long long)node_id);
    if (rc == STORE_OK && changed)
        rc = record(s, 0, actor, "enrollment-expire", "node", oid, NULL, NULL, NULL, NULL);
    rc = finish(s, rc);
    if (rc == STORE_OK && n)
        *n = changed;
    return rc;
}

const char *store_enroll_why_name(store_enroll_why w)
{
    switch (w) {
    case STORE_ENROLL_OK: return "ok";
    case STORE_ENROLL_UNKNOWN: return "token-unknown";
    case STORE_ENROLL_EXPIRED: return "token-expired";
    case STORE_ENROLL_USED: return "token-used";
    }
    return "token-unknown";
}

int store_enroll_redeem(store *s, const char *secret, int64_t now_ms_, store_issue_fn issue,
                        void *arg, store_enroll_why *why)
{
    unsigned char h[32];
    sqlite3_stmt *st = NULL;
    int64_t tid = 0, node_id = 0, expires = 0;
    bool used = false, found = false;
    char name[65] = "", fp[65] = "", ierr[256] = "", oid[32];
    cJSON *before = NULL, *after = NULL;
    clear_error(s);
    *why = STORE_ENROLL_UNKNOWN;
    if (!secret || strlen(secret) > 256 || !sha256(secret, strlen(secret), h))
        return fail(s, STORE_ENOTFOUND, "token", "the enrollment token is not known");
    int rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    rc = prep(s,
              "SELECT t.id, t.node_id, t.expires_at, t.used_at IS NOT NULL, n.name FROM "
              "enrollment_tokens t JOIN nodes n ON n.id = t.node_id WHERE t.token_hash = ?1",
              &st);
    if (rc == STORE_OK && sqlite3_bind_blob(st, 1, h, 32, SQLITE_TRANSIENT) != SQLITE_OK)
        rc = oom(s);
    if (rc == STORE_OK) {
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            found = true;
            tid = sqlite3_column_int64(st, 0);
            node_id = sqlite3_column_int64(st, 1);
            expires = sqlite3_column_int64(st, 2);
            used = sqlite3_column_int(st, 3) != 0;
            snprintf(name, sizeof(name), "%s", (const char *)sqlite3_column_text(st, 4));
        } else if (r != SQLITE_DONE) {
            rc = db_fail(s, r, "reading the enrollment token");
        }
    }
    unprep(s, st);
    if (rc == STORE_OK && !found)
        rc = fail(s, STORE_ENOTFOUND, "token", "the enrollment token is not known");
    else if (rc == STORE_OK && used) {
        *why = STORE_ENROLL_USED;
        rc = fail(s, STORE_ENOTFOUND, "token", "the enrollment token was used before");
    } else if (rc == STORE_OK && expires <= now_ms_) {
        *why = STORE_ENROLL_EXPIRED;
        rc = fail(s, STORE_ENOTFOUND, "token", "the enrollment token has expired");
    }
    if (rc == STORE_OK)
        rc = obj_load(s, &ot_node, true, node_id, &before);
    if (rc == STORE_OK && issue(arg, node_id, name, fp, ierr, sizeof(ierr)) != 0)
        rc = fail(s, STORE_ERR, NULL, "%s", ierr[0] ? ierr : "issuing the certificate failed");
    if (rc == STORE_OK && strlen(fp) != 64)
        rc = fail(s, STORE_ERR, NULL, "the issued certificate has no fingerprint");
    if (rc == STORE_OK)
        rc = run(s, "using the token", "UPDATE enrollment_tokens SET used_at = ?2 WHERE id = ?1",
                 "ii", tid, now_ms_);
    if (rc == STORE_OK)
        rc = run(s, "enrolling the node",
                 "UPDATE nodes SET enrollment = 'enrolled', cert_fingerprint = ?2, enrolled_at = "
                 "?3 WHERE id = ?1",
                 "iti", node_id, fp, now_ms_);
    if (rc == STORE_OK)
        rc = obj_load(s, &ot_node, true, node_id, &after);
    snprintf(oid, sizeof(oid), "%lld", (long long)node_id);
    if (rc == STORE_OK)
        rc = record(s, 0, "enroll", "enroll", "node", oid, before, after, NULL, NULL);
    rc = finish(s, rc);
    if (rc == STORE_OK)
        *why = STORE_ENROLL_OK;
    explicit_bzero(h, sizeof(h));
    cJSON_Delete(before);
    cJSON_Delete(after);
    return rc;
}

int store_node_identity_get(store *s, const char *name, store_node_identity *out)
{
    sqlite3_stmt *st = NULL;
    clear_error(s);
    memset(out, 0, sizeof(*out));
    int rc = prep(s,
                  "SELECT id, office_id, name, coalesce(cert_fingerprint, ''), enrollment = "
                  "'enrolled', max(events_seq, coalesce((SELECT max(seq) FROM events WHERE node = "
                  "?1), 0)) FROM nodes WHERE name = ?1",
                  &st);
    if (rc == STORE_OK &&
        sqlite3_bind_text(st, 1, name ? name : "", -1, SQLITE_TRANSIENT) != SQLITE_OK)
        rc = oom(s);
    if (rc == STORE_OK) {
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            out->id = sqlite3_column_int64(st, 0);
            out->office_id = sqlite3_column_int64(st, 1);
            snprintf(out->name, sizeof(out->name), "%s", (const char *)sqlite3_column_text(st, 2));
            snprintf(out->fingerprint, sizeof(out->fingerprint), "%s",
                     (const char *)sqlite3_column_text(st, 3));
            out->enrolled = sqlite3_column_int(st, 4) != 0;
            out->events_seq = sqlite3_column_int64(st, 5);
        } else if (r == SQLITE_DONE) {
            rc = fail(s, STORE_ENOTFOUND, NULL, "there is no node named '%s'", name ? name : "");
        } else {
            rc = db_fail(s, r, "reading the node");
        }
    }
    unprep(s, st);
    return rc;
}

int store_node_revoke(store *s, int64_t id, const char *actor)
{
    return store_node_set_enrollment(s, id, "revoked", actor);
}

int store_node_offices(store *s, cJSON **out)
{
    static const col cols[] = {
        {"id", C_INT}, {"name", C_TEXT}, {"office_id", C_INT}, {"region_id", C_INT}};
    clear_error(s);
    *out = NULL;
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return oom(s);
    int rc = rows_into(s, arr, cols, N(cols),
                       "SELECT n.id, n.name, n.office_id, o.region_id FROM nodes n JOIN offices o "
                       "ON o.id = n.office_id ORDER BY n.id",
                       "");
    if (rc != STORE_OK) {
        cJSON_Delete(arr);
        return rc;
    }
    *out = arr;
    return STORE_OK;
}

/* Stores one batch of a node's events inside the caller's transaction and
 * savepoint; op->inserted and op->high_seq say what came of it. */
static int link_events(store *s, store_link_op *op, int64_t now)
{
    sqlite3_stmt *st = NULL;
    bool found;
    int64_t node_id = 0, office = 0, region = 0, max_seq = 0;
    size_t i = 0;
    if (!cJSON_IsArray(op->events) || cJSON_GetArraySize(op->events) > MAX_BATCH)
        return invalid(s, "", "must be an array of at most %d events", MAX_BATCH);
    int rc = one_int(s, &found, &node_id, "SELECT id FROM nodes WHERE name = ?1", "t",
                     op->node ? op->node : "");
    if (rc == STORE_OK && !found)
        rc =
            fail(s, STORE_ENOTFOUND, NULL, "there is no node named '%s'", op->node ? op->node : "");
    if (rc == STORE_OK)
        rc = one_int(s, &found, &office, "SELECT office_id FROM nodes WHERE id = ?1", "i", node_id);
    if (rc == STORE_OK)
        rc =
            one_int(s, &found, &region, "SELECT region_id FROM offices WHERE id = ?1", "i", office);
    if (rc == STORE_OK)
        rc = prep(s,
                  "INSERT INTO events (node, seq, time, type, verdict, reason, detail, source, "
                  "source_port, destination, destination_address, port, protocol, group_name, "
                  "policy_version, bytes_up, bytes_down, office_id, region_id, received) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, "
                  "coalesce(?16, 0), coalesce(?17, 0), ?18, ?19, ?20) "
                  "ON CONFLICT (node, seq) DO NOTHING",
                  &st);
    for (const cJSON *ev = op->events->child; rc == STORE_OK && ev; ev = ev->next, i++) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (sqlite3_bind_text(st, 1, op->node, -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_int64(st, 18, office) != SQLITE_OK ||
            sqlite3_bind_int64(st, 19, region) != SQLITE_OK ||
            sqlite3_bind_int64(st, 20, now) != SQLITE_OK)
            rc = oom(s);
        int brc = rc == STORE_OK ? ev_bind(s, st, ev, i) : rc;
        if (brc == STORE_EINVALID) {
            /* One malformed event must not hold back the ones after it:
             * it is counted and skipped, and its seq still counts as
             * received so the node moves on. */
            if (!op->rejected++)
                snprintf(op->error, sizeof(op->error), "%.64s%s%.180s", s->field,
                         s->field[0] ? ": " : "", s->msg);
        } else if (brc != STORE_OK) {
            rc = brc;
        } else {
            int r = sqlite3_step(st);
            if (r != SQLITE_DONE)
                rc = db_fail(s, r, "storing an event");
            else
                op->inserted += (size_t)sqlite3_changes(s->db);
        }
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(ev, "seq");
        if (rc == STORE_OK && cJSON_IsNumber(seq) && (int64_t)seq->valuedouble > max_seq)
            max_seq = (int64_t)seq->valuedouble;
    }
    unprep(s, st);
    if (rc == STORE_OK)
        rc = run(s, "recording the node's events",
                 "UPDATE nodes SET events_seq = max(events_seq, ?2), events_dropped = "
                 "max(events_dropped, ?3), last_seen = ?4 WHERE id = ?1",
                 "iiii", node_id, max_seq, op->dropped, now);
    if (rc == STORE_OK)
        rc = one_int(s, &found, &op->high_seq, "SELECT events_seq FROM nodes WHERE id = ?1", "i",
                     node_id);
    return rc;
}

static int link_op(store *s, store_link_op *op, int64_t now)
{
    switch (op->kind) {
    case STORE_LINK_EVENTS: return link_events(s, op, now);
    case STORE_LINK_HELLO:
        return node_update(s, op->node_id,
                           "UPDATE nodes SET connected = 1, last_seen = ?2, software = ?4 "
                           "WHERE id = ?1",
                           "iizt", op->time_ms, 0, op->software);
    case STORE_LINK_VERSIONS:
        if (op->last_error && strlen(op->last_error) > MAX_DETAIL)
            return invalid(s, "last_error", "must be at most %d bytes", MAX_DETAIL);
        return node_update(s, op->node_id,
                           "UPDATE nodes SET enforced_version = ?2, pending_version = ?3, "
                           "last_error = ?4 WHERE id = ?1",
                           "izzt", op->enforced, op->pending, op->last_error);
    case STORE_LINK_STATS: {
        cJSON *j = op->stats ? cJSON_Parse(op->stats) : NULL;
        bool ok = cJSON_IsObject(j);
        cJSON_Delete(j);
        if (!ok)
            return invalid(s, "stats", "must be a JSON object");
        return node_update(s, op->node_id,
                           "UPDATE nodes SET stats = ?4, stats_at = ?2, last_seen = ?2 WHERE id = "
                           "?1",
                           "iizt", op->time_ms, 0, op->stats);
    }
    case STORE_LINK_SEEN:
        return node_update(s, op->node_id, "UPDATE nodes SET last_seen = ?2 WHERE id = ?1", "ii",
                           op->time_ms, 0, NULL);
    case STORE_LINK_GONE:
        return node_update(s, op->node_id,
                           "UPDATE nodes SET connected = 0, last_seen = ?2 WHERE id = ?1", "ii",
                           op->time_ms, 0, NULL);
    case STORE_LINK_OFFICE_PENDING:
        return run(s, "recording pending versions",
                   "UPDATE nodes SET pending_version = ?2 WHERE office_id = ?1 AND connected = 0 "
                   "AND coalesce(enforced_version, 0) <> ?2 AND coalesce(pending_version, 0) <> ?2",
                   "ii", op->office_id, op->pending);
    }
    return invalid(s, "kind", "unknown link operation %d", (int)op->kind);
}

int store_link_apply(store *s, store_link_op *ops, size_t n)
{
    int64_t now = now_ms();
    clear_error(s);
    int rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    for (size_t i = 0; i < n && rc == STORE_OK; i++) {
        store_link_op *op = &ops[i];
        op->rc = STORE_OK;
        op->inserted = 0;
        op->rejected = 0;
        op->high_seq = 0;
        op->error[0] = '\0';
        rc = run(s, "starting a savepoint", "SAVEPOINT link_op", "");
        if (rc != STORE_OK)
            break;
        op->rc = link_op(s, op, now);
        if (op->rc == STORE_OK) {
            rc = run(s, "releasing a savepoint", "RELEASE link_op", "");
        } else {
            snprintf(op->error, sizeof(op->error), "%.64s%s%.180s", s->field,
                     s->field[0] ? ": " : "", s->msg);
            op->inserted = 0;
            rc = run(s, "rolling back a savepoint", "ROLLBACK TO link_op", "");
            if (rc == STORE_OK)
                rc = run(s, "releasing a savepoint", "RELEASE link_op", "");
            /* A database failure (not the op's own input) stops the batch. */
            if (rc == STORE_OK && (op->rc == STORE_ERR || op->rc == STORE_EBUSY))
                rc = op->rc;
        }
    }
    rc = finish(s, rc);
    if (rc == STORE_OK)
        clear_error(s);
    return rc;
}

int store_link_reset(store *s)
{
    clear_error(s);
    return run(s, "resetting node connections", "UPDATE nodes SET connected = 0 WHERE connected",
               "");
}

int store_events_prune(store *s, int64_t older_than_ms, int64_t keep, unsigned limit,
                       size_t *deleted)
{
    size_t total = 0;
    bool found;
    clear_error(s);
    if (deleted)
        *deleted = 0;
    if (!limit)
        limit = 10000;
    int rc = begin(s, true);
    if (rc != STORE_OK)
        return rc;
    /* Rows are only ever deleted from the oldest end, so ids are dense
     * from min(id) to max(id), and received grows with id: both cuts are
     * found from the oldest rows without reading the table. */
    if (older_than_ms > 0) {
        int64_t cut = 0;
        rc = one_int(s, &found, &cut,
                     "SELECT max(id) FROM (SELECT id, received FROM events ORDER BY id LIMIT ?2) "
                     "WHERE received < ?1",
                     "ii", older_than_ms, (int64_t)limit);
        if (rc == STORE_OK && cut > 0)
            rc = run(s, "deleting old events", "DELETE FROM events WHERE id <= ?1", "i", cut);
        if (rc == STORE_OK && cut > 0)
            total += (size_t)sqlite3_changes(s->db);
    }
    if (rc == STORE_OK && keep > 0 && total < limit) {
        int64_t lo = 0, hi = 0;
        rc = one_int(s, &found, &lo, "SELECT coalesce(min(id), 0) FROM events", "");
        if (rc == STORE_OK)
            rc = one_int(s, &found, &hi, "SELECT coalesce(max(id), 0) FROM events", "");
        int64_t extra = hi - lo + 1 - keep;
        if (extra > (int64_t)(limit - total))
            extra = (int64_t)(limit - total);
        if (rc == STORE_OK && hi > 0 && extra > 0)
            rc = run(s, "deleting the oldest events", "DELETE FROM events WHERE id < ?1", "i",
                     lo + extra);
        if (rc == STORE_OK && hi > 0 && extra > 0)
            total += (size_t)sqlite3_changes(s->db);
    }
    rc = finish(s, rc);
    if (rc == STORE_OK && deleted)
        *deleted = total;
    return rc;
}

/* --- staged rollout --------------------------------------------------------- */

static int rollout_load(store *s, cJSON **out)
{
    sqlite3_stmt *st = NULL;
    bool found;
    int64_t newest = 0;
    *out = NULL;
    int rc = one_int(s, &found, &newest, "SELECT coalesce(max(number), 0) FROM revisions", "");
    if (rc == STORE_OK)
        rc = prep(s,
                  "SELECT mode, released, canary_revision, canary_offices, canary_regions, "
                  "updated_at FROM rollout WHERE id = 1",
                  &st);
    if (rc == STORE_OK && sqlite3_step(st) != SQLITE_ROW)
        rc = fail(s, STORE_ERR, NULL, "the rollout row is missing");
    if (rc == STORE_OK) {
        cJSON *o = cJSON_CreateObject();
        const char *mode = (const char *)sqlite3_column_text(st, 0);
        bool manual = mode && strcmp(mode, "manual") == 0;
        int64_t released = manual ? sqlite3_column_int64(st, 1) : newest;
        cJSON *canary = NULL;
        if (sqlite3_column_type(st, 2) != SQLITE_NULL) {
            canary = cJSON_CreateObject();
            if (canary) {
                jadd(canary, "revision", cJSON_CreateNumber((double)sqlite3_column_int64(st, 2)));
                jadd(canary, "offices", col_json(st, 3, C_JSON));
                jadd(canary, "regions", col_json(st, 4, C_JSON));
            }
        } else {
            canary = cJSON_CreateNull();
        }
        if (!o || !jadd(o, "mode", cJSON_CreateString(manual ? "manual" : "auto")) ||
            !jadd(o, "newest", cJSON_CreateNumber((double)newest)) ||
            !jadd(o, "released", cJSON_CreateNumber((double)released)) ||
            !jadd(o, "canary", canary) || !jadd(o, "updated_at", col_json(st, 5, C_TIME))) {
            cJSON_Delete(o);
            rc = oom(s);
        } else {
            *out = o;
        }
    }
    unprep(s, st);
    return rc;
}

int store_rollout_get(store *s, cJSON **out)
{
    clear_error(s);
    return rollout_load(s, out);
}

/* Ends a rollout change: the audit row with before and after, and *out. */
static int rollout_finish(store *s, int rc, const char *actor, const char *action, cJSON *before,
                          cJSON **out)
{
    cJSON *after = NULL;
    if (out)
        *out = NULL;
    if (rc == STORE_OK)
        rc = rollout_load(s, &after);
    if (rc == STORE_OK)
        rc = record(s, 0, actor, action, "rollout", "1", before, after, NULL, NULL);
    rc = finish(s, rc);
    cJSON_Delete(before);
    if (rc == STORE_OK && out)
        *out = after;
    else
        cJSON_Delete(after);
    return rc;
}

static int rollout_begin(store *s, const char *actor, cJSON **before)
{
    *before = NULL;
    int rc = check_actor(s, actor);
    if (rc == STORE_OK)
        rc = begin(s, true);
    if (rc == STORE_OK && (rc = rollout_load(s, before)) != STORE_OK)
        rollback(s);
    return rc;
}

static bool rollout_manual(const cJSON *r)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(r, "mode");
    return cJSON_IsString(m) && strcmp(m->valuestring, "manual") == 0;
}

int store_rollout_set_mode(store *s, const char *mode, const char *actor, cJSON **out)
{
    static const char *const modes[] = {"auto", "manual", NULL};
    cJSON *before = NULL;
    clear_error(s);
    if (out)
        *out = NULL;
    if (!mode || !in_list(mode, modes))
        return invalid(s, "mode", "must be \"auto\" or \"manual\"");
    int rc = rollout_begin(s, actor, &before);
    if (rc != STORE_OK)
        return rc;
    if (strcmp(mode, "auto") == 0)
        rc = run(s, "changing the rollout",
                 "UPDATE rollout SET mode = 'auto', released = NULL, canary_revision = NULL, "
                 "canary_offices = '[]', canary_regions = '[]', updated_at = ?1",
                 "i", now_ms());
    else if (!rollout_manual(before))
        rc = run(s, "changing the rollout",
                 "UPDATE rollout SET mode = 'manual', released = (SELECT max(number) FROM "
                 "revisions), updated_at = ?1",
                 "i", now_ms());
    return rollout_finish(s, rc, actor, "rollout-mode", before, out);
}

/* Checks an array of ids of a table: each an integer that exists. */
static int want_ids(store *s, const cJSON *v, const char *field, const char *sql, const char *what,
                    size_t *count)
{
    char f[64];
    size_t i = 0;
    *count = 0;
    if (!v || cJSON_IsNull(v))
        return STORE_OK;
    if (!cJSON_IsArray(v))
        return invalid(s, field, "must be an array of %s ids", what);
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        snprintf(f, sizeof(f), "%s[%zu]", field, i);
        int64_t id = 0;
        int rc = want_ref(s, e, f, sql, what, &id);
        if (rc != STORE_OK)
            return rc;
    }
    *count = i;
    return STORE_OK;
}

int store_rollout_canary(store *s, int64_t revision, const cJSON *offices, const cJSON *regions,
                         const char *actor, cJSON **out)
{
    cJSON *before = NULL, *o_ids = NULL, *r_ids = NULL;
    size_t no = 0, nr = 0;
    bool found;
    int64_t newest = 0, released = 0;
    clear_error(s);
    if (out)
        *out = NULL;
    int rc = rollout_begin(s, actor, &before);
    if (rc != STORE_OK)
        return rc;
    if (!rollout_manual(before))
        rc = fail(s, STORE_ECONFLICT, "mode",
                  "a canary needs the manual rollout mode (PUT /api/v1/rollout "
                  "{\"mode\": \"manual\"}) first");
    if (rc == STORE_OK)
        rc = one_int(s, &found, &newest, "SELECT coalesce(max(number), 0) FROM revisions", "");
    released = (int64_t)cJSON_GetObjectItemCaseSensitive(before, "released")->valuedouble;
    if (rc == STORE_OK && revision == 0)
        revision = newest;
    if (rc == STORE_OK && (revision < 1 || revision > newest))
        rc = fail(s, STORE_ENOTFOUND, "revision", "there is no revision %lld", (long long)revision);
    if (rc == STORE_OK && revision < released)
        rc = invalid(s, "revision", "revision %lld is older than the released one (%lld)",
                     (long long)revision, (long long)released);
    if (rc == STORE_OK)
        rc = want_ids(s, offices, "offices", "SELECT 1 FROM offices WHERE id = ?1", "office", &no);
    if (rc == STORE_OK)
        rc = want_ids(s, regions, "regions", "SELECT 1 FROM regions WHERE id = ?1", "region", &nr);
    if (rc == STORE_OK && no + nr == 0)
        rc = invalid(s, "offices", "name at least one office or region for the canary");
    if (rc == STORE_OK &&
        (!(o_ids = offices ? cJSON_Duplicate(offices, true) : cJSON_CreateArray()) ||
         !(r_ids = regions ? cJSON_Duplicate(regions, true) : cJSON_CreateArray())))
        rc = oom(s);
    if (rc == STORE_OK)
        rc = run(s, "starting the canary",
                 "UPDATE rollout SET canary_revision = ?1, canary_offices = ?2, canary_regions = "
                 "?3, updated_at = ?4",
                 "ijji", revision, o_ids, r_ids, now_ms());
    cJSON_Delete(o_ids);
    cJSON_Delete(r_ids);
    return rollout_finish(s, rc, actor, "rollout-canary", before, out);
}

/* Ends the canary: promote makes its revision the released one, abort
 * sends its offices back to the released revision. */
static int rollout_end(store *s, bool promote, const char *actor, cJSON **out)
{
    cJSON *before = NULL;
    clear_error(s);
    int rc = rollout_begin(s, actor, &before);
    if (rc != STORE_OK)
        return rc;
    if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(before, "canary")))
        rc = fail(s, STORE_ECONFLICT, NULL, "there is no canary to %s",
                  promote ? "promote" : "abort");
    if (rc == STORE_OK)
        rc = run(s, promote ? "promoting the canary" : "ending the canary",
                 promote ? "UPDATE rollout SET released = canary_revision, canary_revision = "
                           "NULL, canary_offices = '[]', canary_regions = '[]', updated_at = ?1"
                         : "UPDATE rollout SET canary_revision = NULL, canary_offices = '[]', "
                           "canary_regions = '[]', updated_at = ?1",
                 "i", now_ms());
    return rollout_finish(s, rc, actor, promote ? "rollout-promote" : "rollout-abort", before, out);
}

int store_rollout_promote(store *s, const char *actor, cJSON **out)
{
    return rollout_end(s, true, actor, out);
}

int store_rollout_abort(store *s, const char *actor, cJSON **out)
{
    return rollout_end(s, false, actor, out);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int store_rollout_plan_get(store *s, store_rollout_plan *out)
{
    cJSON *r = NULL;
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    clear_error(s);
    memset(out, 0, sizeof(*out));
    int rc = begin(s, false);
    if (rc != STORE_OK)
        return rc;
    rc = rollout_load(s, &r);
    if (rc == STORE_OK) {
        out->released = (int64_t)cJSON_GetObjectItemCaseSensitive(r, "released")->valuedouble;
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(r, "canary");
        if (cJSON_IsObject(c))
            out->canary = (int64_t)cJSON_GetObjectItemCaseSensitive(c, "revision")->valuedouble;
    }
    /* The offices listed and those of the regions listed, as they are now. */
    if (rc == STORE_OK && out->canary)
        rc = prep(s,
                  "SELECT id FROM offices WHERE id IN (SELECT value FROM json_each((SELECT "
                  "canary_offices FROM rollout WHERE id = 1))) OR region_id IN (SELECT value "
                  "FROM json_each((SELECT canary_regions FROM rollout WHERE id = 1))) ORDER BY id",
                  &st);
    int r2 = SQLITE_DONE;
    while (rc == STORE_OK && out->canary && (r2 = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->ncanary == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            int64_t *p = realloc(out->canary_offices, ncap * sizeof(*p));
            if (!p) {
                rc = oom(s);
                break;
            }
            out->canary_offices = p;
            cap = ncap;
        }
        out->canary_offices[out->ncanary++] = sqlite3_column_int64(st, 0);
    }
    if (rc == STORE_OK && out->canary && r2 != SQLITE_DONE)
        rc = db_fail(s, r2, "reading the canary offices");
    unprep(s, st);
    rollback(s);
    cJSON_Delete(r);
    if (rc != STORE_OK) {
        store_rollout_plan_free(out);
        return rc;
    }
    if (out->ncanary)
        qsort(out->canary_offices, out->ncanary, sizeof(int64_t), cmp_i64);
    return STORE_OK;
}

void store_rollout_plan_free(store_rollout_plan *p)
{
    if (!p)
        return;
    free(p->canary_offices);
    memset(p, 0, sizeof(*p));
}

int store_events_since(store *s, const store_event_query *q, int64_t after_id, int64_t to_id,
                       unsigned limit, cJSON **out)
{
    char sql[1024];
    sqlite3_stmt *st = NULL;
    clear_error(s);
    *out = NULL;
    if (limit < 1 || limit > MAX_PAGE)
        return invalid(s, "limit", "must be 1 to %d", MAX_PAGE);
    /* Unary + keeps SQLite off the filters' indexes: it walks the id
     * range, which is what a live tail has not seen yet. */
    snprintf(sql, sizeof(sql), "%s WHERE id > ?1%s%s%s%s%s%s ORDER BY id LIMIT ?8", EVENT_SELECT,
             to_id ? " AND id <= ?2" : "", q->office_id ? " AND +office_id = ?3" : "",
             q->region_id ? " AND +region_id = ?4" : "", q->group ? " AND +group_name = ?5" : "",
             q->type ? " AND +type = ?6" : "", q->node ? " AND +node = ?7" : "");
    cJSON *rows = cJSON_CreateArray();
    int rc = rows ? prep(s, sql, &st) : oom(s);
    int r = SQLITE_OK;
    if (rc == STORE_OK &&
        ((r = sqlite3_bind_int64(st, 1, after_id)) != SQLITE_OK ||
         (to_id && (r = sqlite3_bind_int64(st, 2, to_id)) != SQLITE_OK) ||
         (q->office_id && (r = sqlite3_bind_int64(st, 3, q->office_id)) != SQLITE_OK) ||
         (q->region_id && (r = sqlite3_bind_int64(st, 4, q->region_id)) != SQLITE_OK) ||
         (q->group &&
          (r = sqlite3_bind_text(st, 5, q->group, -1, SQLITE_TRANSIENT)) != SQLITE_OK) ||
         (q->type && (r = sqlite3_bind_text(st, 6, q->type, -1, SQLITE_TRANSIENT)) != SQLITE_OK) ||
         (q->node && (r = sqlite3_bind_text(st, 7, q->node, -1, SQLITE_TRANSIENT)) != SQLITE_OK) ||
         (r = sqlite3_bind_int64(st, 8, (int64_t)limit)) != SQLITE_OK))
        rc = db_fail(s, r, "binding a value");
    while (rc == STORE_OK && (r = sqlite3_step(st)) == SQLITE_ROW)
        if (!jpush(rows, row_json(st, event_cols, N(event_cols))))
            rc = oom(s);
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = db_fail(s, r, "reading events");
    unprep(s, st);
    for (cJSON *e = rc == STORE_OK ? rows->child : NULL; e; e = e->next)
        cJSON_DeleteItemFromObjectCaseSensitive(e, "time_ms");
    if (rc != STORE_OK) {
        cJSON_Delete(rows);
        return rc;
    }
    *out = rows;
    return STORE_OK;
}

int store_events_last_id(store *s, int64_t *out)
{
    bool found;
    clear_error(s);
    return one_int(s, &found, out, "SELECT coalesce(max(id), 0) FROM events", "");
}
