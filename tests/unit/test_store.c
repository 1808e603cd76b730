/* test_store.c - the controller's SQLite store (controller/store.h) on real
 * database files in a temporary directory: migrations and version refusal,
 * constraints, revisions and audit, optimistic concurrency, rollback,
 * tokens, events. */
#include "cu_main.h"
#include "store.h"

#include <CUnit/CUnit.h>
#include <ftw.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/pc-store-test-XXXXXX";
static int dbcount;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int suite_init(void)
{
    return mkdtemp(tmpdir) ? 0 : -1;
}

static void suite_clean(void)
{
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A path for a new database file. */
static void db_path(char *buf, size_t len)
{
    snprintf(buf, len, "%s/db%d.sqlite", tmpdir, ++dbcount);
}

/* A new, seeded store; the test fails when it cannot be opened. */
static store *fresh(void)
{
    char path[256], err[512];
    store *s = NULL;
    db_path(path, sizeof(path));
    int rc = store_open(path, &s, err, sizeof(err));
    if (rc != STORE_OK)
        fprintf(stderr, "store_open: %s\n", err);
    CU_ASSERT_FATAL(rc == STORE_OK);
    return s;
}

static cJSON *J(const char *txt)
{
    cJSON *j = cJSON_Parse(txt);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    return j;
}

/* Creates an object from JSON text; returns its id (the test fails when
 * the store refuses it). */
static int64_t create(store *s, store_kind k, const char *txt)
{
    cJSON *in = J(txt), *out = NULL;
    int rc = store_object_create(s, k, in, "tester", &out);
    if (rc != STORE_OK)
        fprintf(stderr, "create %s: %s (%s)\n", txt, store_error_message(s), store_error_field(s));
    CU_ASSERT_FATAL(rc == STORE_OK);
    int64_t id = (int64_t)cJSON_GetObjectItem(out, "id")->valuedouble;
    cJSON_Delete(in);
    cJSON_Delete(out);
    return id;
}

/* Tries to create; returns the code, with the failure's field in field. */
static int try_create(store *s, store_kind k, const char *txt, char *field, size_t len)
{
    cJSON *in = J(txt);
    int rc = store_object_create(s, k, in, "tester", NULL);
    snprintf(field, len, "%s", store_error_field(s));
    cJSON_Delete(in);
    return rc;
}

static int64_t count_rows(store *s, const char *what)
{
    int64_t n = 0;
    if (strcmp(what, "revisions") == 0) {
        CU_ASSERT_EQUAL_FATAL(store_revision_current(s, &n), STORE_OK);
        return n;
    }
    store_audit_query q = {.limit = 1000};
    cJSON *page = NULL;
    CU_ASSERT_EQUAL_FATAL(store_audit_list(s, &q, &page), STORE_OK);
    n = cJSON_GetArraySize(cJSON_GetObjectItem(page, "entries"));
    cJSON_Delete(page);
    return n;
}

/* The newest audit row; the caller frees it. */
static cJSON *last_audit(store *s)
{
    store_audit_query q = {.limit = 1};
    cJSON *page = NULL;
    CU_ASSERT_EQUAL_FATAL(store_audit_list(s, &q, &page), STORE_OK);
    cJSON *e = cJSON_DetachItemFromArray(cJSON_GetObjectItem(page, "entries"), 0);
    cJSON_Delete(page);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    return e;
}

/* Reads an integer PRAGMA straight from the file. */
static int64_t raw_pragma(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* --- migrations ------------------------------------------------------------ */

static void test_new_database(void)
{
    char path[256], err[512];
    store *s = NULL;
    db_path(path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    CU_ASSERT_TRUE(store_created(s));
    CU_ASSERT_EQUAL(store_schema_version(), (int)store__nmigrations);
    int64_t rev = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &rev), STORE_OK);
    CU_ASSERT_EQUAL(rev, 1);

    /* Seeded: the shipped lists, the global settings using the Skype list,
     * the admin user. */
    cJSON *lists = NULL, *g = NULL, *users = NULL;
    CU_ASSERT_EQUAL_FATAL(store_object_list(s, STORE_LIST, &lists), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(lists), 2);
    cJSON *skype = cJSON_GetArrayItem(lists, 0);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(skype, "name")->valuestring, "skype");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(skype, "category")->valuestring, "skype");
    CU_ASSERT_TRUE(cJSON_IsTrue(cJSON_GetObjectItem(skype, "shipped")));
    /* The list is the shipped file's JSON value, unchanged. */
    char lpath[512];
    snprintf(lpath, sizeof(lpath), "%s/shared/lists/skype.json", SOURCE_DIR);
    FILE *f = fopen(lpath, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char buf[16384];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *file = J(buf);
    CU_ASSERT_TRUE(cJSON_Compare(file, cJSON_GetObjectItem(skype, "list"), true));
    cJSON_Delete(file);

    CU_ASSERT_EQUAL_FATAL(store_settings_get(s, MODEL_SCOPE_GLOBAL, 0, &g), STORE_OK);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(g, "ports")->child->string, "80");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(g, "use_lists")->child->valuestring, "skype");
    CU_ASSERT_TRUE(cJSON_IsTrue(cJSON_GetObjectItem(g, "block_executables")));
    CU_ASSERT_EQUAL_FATAL(store_user_list(s, &users), STORE_OK);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(users->child, "name")->valuestring, "admin");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(users->child, "role")->valuestring, "admin");
    cJSON_Delete(lists);
    cJSON_Delete(g);
    cJSON_Delete(users);
    store_close(s);

    /* On the file: the schema version, WAL, our application id. */
    CU_ASSERT_EQUAL(raw_pragma(path, "PRAGMA user_version"), store_schema_version());
    CU_ASSERT_EQUAL(raw_pragma(path, "PRAGMA application_id"), 0x50437374);
    CU_ASSERT_EQUAL(raw_pragma(path, "SELECT count(*) FROM pragma_journal_mode "
                                     "WHERE journal_mode = 'wal'"),
                    1);
}

static void test_embedded_migrations_are_the_files(void)
{
    /* The build embeds each schema/controller/NNN_name.sql byte for byte. */
    for (size_t i = 0; i < store__nmigrations; i++) {
        char path[512], buf[65536];
        snprintf(path, sizeof(path), "%s/schema/controller/%s", SOURCE_DIR,
                 store__migrations[i].name);
        FILE *f = fopen(path, "r");
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        CU_ASSERT_EQUAL(store__migrations[i].version, (int)i + 1);
        CU_ASSERT_STRING_EQUAL(store__migrations[i].sql, buf);
    }
}

static void test_reopen(void)
{
    char path[256], err[512];
    store *s = NULL;
    db_path(path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    store_close(s);
    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    CU_ASSERT_FALSE(store_created(s));
    cJSON *regions = NULL;
    CU_ASSERT_EQUAL_FATAL(store_object_list(s, STORE_REGION, &regions), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(regions), 1);
    int64_t rev = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &rev), STORE_OK);
    CU_ASSERT_EQUAL(rev, 2); /* seed + the region; reopening adds nothing */
    cJSON_Delete(regions);
    store_close(s);
}

static void test_newer_database_refused(void)
{
    char path[256], err[512];
    store *s = NULL;
    db_path(path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    store_close(s);
    raw_exec(path, "PRAGMA user_version = 99");
    s = (store *)1;
    CU_ASSERT_EQUAL(store_open(path, &s, err, sizeof(err)), STORE_EVERSION);
    CU_ASSERT_PTR_NULL(s);
    char want[64];
    snprintf(want, sizeof(want), "newer than this portcullis-controller knows (%d)",
             store_schema_version());
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "schema version 99"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
    /* Refused without touching it. */
    CU_ASSERT_EQUAL(raw_pragma(path, "PRAGMA user_version"), 99);
}

/* The production migrations plus one more, as a newer release would ship. */
static store_migration upgraded[8];
static size_t upgraded_n(const char *extra_name, const char *extra_sql)
{
    size_t n = store__nmigrations;
    for (size_t i = 0; i < n; i++)
        upgraded[i] = store__migrations[i];
    upgraded[n] = (store_migration){(int)n + 1, extra_name, extra_sql};
    return n + 1;
}

/* The settings fields 003_firewall.sql added. */
#define FW_FIELDS "'$.dns_resolvers', '$.web_mode', '$.web_devices', '$.log_drops_per_minute'"
#define FW_CHANGE_FIELDS                                                                           \
    "'$.before.dns_resolvers', '$.before.web_mode', '$.before.web_devices', "                      \
    "'$.before.log_drops_per_minute', '$.after.dns_resolvers', '$.after.web_mode', "               \
    "'$.after.web_devices', '$.after.log_drops_per_minute'"

/* Turns a closed database into what a binary that knew only the first
 * `version` migrations would have written: each later migration undone,
 * and (below 3) the revisions without the firewall settings, their
 * snapshots of format 1. */
static void downgrade(const char *path, int version)
{
    if (version < 4)
        raw_exec(path, "DROP TABLE sessions; PRAGMA user_version = 3;");
    if (version < 3)
        raw_exec(path,
                 "UPDATE revisions SET changes = (SELECT json_group_array(json(json_remove("
                 "value, " FW_CHANGE_FIELDS "))) FROM json_each(revisions.changes));"
                 "UPDATE revisions SET snapshot = json_set(snapshot, '$.format', 1, '$.settings', "
                 "(SELECT json_group_array(json(json_remove(value, " FW_FIELDS
                 "))) FROM json_each(revisions.snapshot, '$.settings'))) "
                 "WHERE snapshot IS NOT NULL;"
                 "ALTER TABLE settings DROP COLUMN dns_resolvers;"
                 "ALTER TABLE settings DROP COLUMN web_mode;"
                 "ALTER TABLE settings DROP COLUMN web_devices;"
                 "ALTER TABLE settings DROP COLUMN log_drops_per_minute;"
                 "PRAGMA user_version = 2;");
    if (version < 2)
        raw_exec(path, "DROP TABLE enrollment_tokens; DROP TABLE rollout;"
                       "ALTER TABLE nodes DROP COLUMN cert_fingerprint;"
                       "ALTER TABLE nodes DROP COLUMN enrolled_at;"
                       "ALTER TABLE nodes DROP COLUMN software;"
                       "ALTER TABLE nodes DROP COLUMN connected;"
                       "ALTER TABLE nodes DROP COLUMN events_seq;"
                       "ALTER TABLE nodes DROP COLUMN events_dropped;"
                       "ALTER TABLE nodes DROP COLUMN stats;"
                       "ALTER TABLE nodes DROP COLUMN stats_at;"
                       "PRAGMA user_version = 1;");
    CU_ASSERT_EQUAL(raw_pragma(path, "PRAGMA user_version"), version);
}

static void test_old_database_upgraded(void)
{
    char path[256], err[512];
    store *s = NULL;
    db_path(path, sizeof(path));
    /* A database made by a binary that knew only the first migration. */
    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    create(s, STORE_REGION, "{\"name\": \"APAC\"}");
    store_close(s);
    downgrade(path, 1);

    size_t n = upgraded_n("099_test_extra.sql",
                          "CREATE TABLE test_extra (x INTEGER NOT NULL);\n"
                          "ALTER TABLE regions ADD COLUMN note TEXT NOT NULL DEFAULT 'n';\n"
                          "INSERT INTO test_extra (x) SELECT count(*) FROM regions;\n");
    CU_ASSERT_EQUAL_FATAL(store__open_with(path, upgraded, n, &s, err, sizeof(err)), STORE_OK);
    CU_ASSERT_FALSE(store_created(s));
    cJSON *regions = NULL;
    CU_ASSERT_EQUAL_FATAL(store_object_list(s, STORE_REGION, &regions), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(regions), 1);
    cJSON_Delete(regions);
    store_close(s);
    CU_ASSERT_EQUAL(raw_pragma(path, "PRAGMA user_version"), (int64_t)n);
    /* The migration ran over the existing rows. */
    CU_ASSERT_EQUAL(raw_pragma(path, "SELECT x FROM test_extra"), 1);
    CU_ASSERT_EQUAL(raw_pragma(path, "SELECT count(*) FROM regions WHERE note = 'n'"), 1);

    /* And this binary, which lacks the extra migration, now refuses the file. */
    CU_ASSERT_EQUAL(store_open(path, &s, err, sizeof(err)), STORE_EVERSION);
}

/* A database of the release before 003_firewall.sql: its revisions know
 * nothing of the new settings. After the upgrade they read as null
 * (inherit), the history still replays and diffs, and a rollback to a
 * revision from before the upgrade works. */
static void test_firewall_settings_upgrade(void)
{
    char path[256], err[512], txt[256];
    store *s = NULL;
    db_path(path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    int64_t o = create(s, STORE_OFFICE, txt);
    cJSON *in = J("{\"open_ports\": [{\"port\": 25, \"proto\": \"tcp\", \"devices\": "
                  "[\"10.1.0.25\"]}]}");
    CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_OFFICE, o, in, 0, "tester", NULL), STORE_OK);
    cJSON_Delete(in);
    int64_t old_rev = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &old_rev), STORE_OK);
    store_close(s);
    downgrade(path, 2);
    CU_ASSERT_EQUAL(raw_pragma(path, "SELECT count(*) FROM revisions WHERE snapshot IS NOT NULL "
                                     "AND json_extract(snapshot, '$.format') = 1"),
                    1);

    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    CU_ASSERT_EQUAL(raw_pragma(path, "PRAGMA user_version"), store_schema_version());
    /* The new fields of every scope: null. */
    cJSON *g = NULL, *rev = NULL, *diff = NULL;
    CU_ASSERT_EQUAL_FATAL(store_settings_get(s, MODEL_SCOPE_GLOBAL, 0, &g), STORE_OK);
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(g, "dns_resolvers")));
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(g, "web_mode")));
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(g, "log_drops_per_minute")));
    int64_t getag = (int64_t)cJSON_GetObjectItem(g, "etag")->valuedouble;
    cJSON_Delete(g);
    /* An old revision reads with them, as null, in the fields' order. */
    CU_ASSERT_EQUAL_FATAL(store_revision_get(s, 1, &rev), STORE_OK);
    cJSON *gs =
        cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(rev, "model"), "settings"), 0);
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(gs, "web_devices")));
    CU_ASSERT_STRING_EQUAL(cJSON_GetArrayItem(gs, 12)->string, "log_drops_per_minute");
    CU_ASSERT_STRING_EQUAL(cJSON_GetArrayItem(gs, 13)->string, "etag");
    CU_ASSERT_PTR_NULL(cJSON_GetObjectItem(cJSON_GetObjectItem(rev, "model"), "format"));
    cJSON_Delete(rev);
    /* The newest pre-upgrade revision and now: the same policy. */
    CU_ASSERT_EQUAL_FATAL(store_revision_diff(s, old_rev, old_rev, &diff), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(diff, "changes")), 0);
    cJSON_Delete(diff);

    /* New settings after the upgrade, then back to before it. */
    in = J("{\"dns_resolvers\": [\"198.51.100.53\"], \"web_mode\": \"proxy\", "
           "\"web_devices\": [\"10.1.0.8\"], \"log_drops_per_minute\": 60}");
    CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_GLOBAL, 0, in, getag, "tester", NULL),
                    STORE_OK);
    cJSON_Delete(in);
    int64_t cur = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &cur), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(store_revision_diff(s, old_rev, cur, &diff), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(diff, "changes")), 1);
    cJSON_Delete(diff);
    model m;
    CU_ASSERT_EQUAL_FATAL(store_model_load(s, 0, &m), STORE_OK);
    CU_ASSERT_TRUE(m.global.has_dns_resolvers);
    CU_ASSERT_STRING_EQUAL(m.global.web_mode, "proxy");
    CU_ASSERT_EQUAL(m.global.log_drops_per_minute, 60);
    model_free(&m);
    CU_ASSERT_EQUAL_FATAL(store_rollback(s, old_rev, "tester", NULL), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(store_model_load(s, 0, &m), STORE_OK);
    CU_ASSERT_FALSE(m.global.has_dns_resolvers);
    CU_ASSERT_FALSE(m.global.has_web_mode);
    CU_ASSERT_FALSE(m.global.has_web_devices);
    CU_ASSERT_FALSE(m.global.has_log_drops_per_minute);
    CU_ASSERT_EQUAL_FATAL(m.noffices, 1);
    CU_ASSERT_EQUAL(m.offices[0].settings.nopen_ports, 1);
    model_free(&m);
    /* Every revision, old and new, still rebuilds. */
    CU_ASSERT_EQUAL(store_revision_current(s, &cur), STORE_OK);
    for (int64_t i = 1; i <= cur; i++) {
        CU_ASSERT_EQUAL(store_model_load(s, i, &m), STORE_OK);
        model_free(&m);
    }
    store_close(s);
}

static void test_failed_migration_rolls_back(void)
{
    char path[256], err[512];
    store *s = NULL;
    db_path(path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    store_close(s);
    /* The first statement works, the second fails: neither may remain. */
    size_t n = upgraded_n("099_broken.sql", "CREATE TABLE half_done (x INTEGER);\n"
                                            "INSERT INTO no_such_table VALUES (1);\n");
    CU_ASSERT_EQUAL(store__open_with(path, upgraded, n, &s, err, sizeof(err)), STORE_ERR);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "099_broken.sql"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "no_such_table"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "unchanged"));
    CU_ASSERT_EQUAL(raw_pragma(path, "PRAGMA user_version"), store_schema_version());
    CU_ASSERT_EQUAL(raw_pragma(path, "SELECT count(*) FROM sqlite_schema WHERE name = 'half_done'"),
                    0);
    /* The database still opens with the migrations it has. */
    CU_ASSERT_EQUAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    store_close(s);

    /* On a new file a failure leaves nothing: no schema, no seed. */
    db_path(path, sizeof(path));
    CU_ASSERT_EQUAL(store__open_with(path, upgraded, n, &s, err, sizeof(err)), STORE_ERR);
    CU_ASSERT_EQUAL(raw_pragma(path, "PRAGMA user_version"), 0);
    CU_ASSERT_EQUAL(raw_pragma(path, "SELECT count(*) FROM sqlite_schema"), 0);
    CU_ASSERT_EQUAL_FATAL(store_open(path, &s, err, sizeof(err)), STORE_OK);
    CU_ASSERT_TRUE(store_created(s));
    store_close(s);
}

static void test_foreign_files_refused(void)
{
    char path[256], err[512];
    store *s = NULL;
    db_path(path, sizeof(path));
    raw_exec(path, "CREATE TABLE someone_elses (x)");
    CU_ASSERT_EQUAL(store_open(path, &s, err, sizeof(err)), STORE_ERR);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a Portcullis controller database"));

    db_path(path, sizeof(path));
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("this is a text file and no database at all, long enough to have a header\n", f);
    fclose(f);
    CU_ASSERT_EQUAL(store_open(path, &s, err, sizeof(err)), STORE_ERR);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a database"));
    CU_ASSERT_PTR_NULL(s);
}

/* --- constraints ----------------------------------------------------------- */

static void test_unique_names(void)
{
    store *s = fresh();
    char field[128];
    create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    CU_ASSERT_EQUAL(try_create(s, STORE_REGION, "{\"name\": \"EMEA\"}", field, sizeof(field)),
                    STORE_ECONFLICT);
    CU_ASSERT_STRING_EQUAL(field, "name");
    CU_ASSERT_PTR_NOT_NULL(strstr(store_error_message(s), "EMEA"));

    int64_t r = create(s, STORE_REGION, "{\"name\": \"APAC\"}");
    char txt[256];
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    int64_t paris = create(s, STORE_OFFICE, txt);
    CU_ASSERT_EQUAL(try_create(s, STORE_OFFICE, txt, field, sizeof(field)), STORE_ECONFLICT);
    CU_ASSERT_STRING_EQUAL(field, "name");

    /* Group names: unique per office, and a group for every office shares
     * a node document with each office's groups. */
    snprintf(txt, sizeof(txt),
             "{\"name\": \"board\", \"office_id\": %lld, \"sources\": [\"10.1.0.0/24\"]}",
             (long long)paris);
    create(s, STORE_GROUP, txt);
    CU_ASSERT_EQUAL(try_create(s, STORE_GROUP,
                               "{\"name\": \"board\", \"sources\": [\"10.9.0.0/24\"]}", field,
                               sizeof(field)),
                    STORE_ECONFLICT);
    CU_ASSERT_STRING_EQUAL(field, "name");
    /* A source selects one group. */
    CU_ASSERT_EQUAL(try_create(s, STORE_GROUP,
                               "{\"name\": \"it\", \"sources\": [\"10.8.0.0/24\", "
                               "\"10.1.0.0/24\"]}",
                               field, sizeof(field)),
                    STORE_ECONFLICT);
    CU_ASSERT_STRING_EQUAL(field, "sources[1]");
    CU_ASSERT_PTR_NOT_NULL(strstr(store_error_message(s), "board"));

    create(s, STORE_RULE,
           "{\"scope\": \"global\", \"kind\": \"domain\", \"value\": \"example.com\", "
           "\"action\": \"block\"}");
    /* The same rule differently spelled is the same rule. */
    CU_ASSERT_EQUAL(try_create(s, STORE_RULE,
                               "{\"scope\": \"global\", \"kind\": \"domain\", \"value\": "
                               "\"Example.COM.\", \"action\": \"allow\"}",
                               field, sizeof(field)),
                    STORE_ECONFLICT);
    CU_ASSERT_STRING_EQUAL(field, "value");
    store_close(s);
}

static void test_foreign_keys(void)
{
    store *s = fresh();
    char txt[512];
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    int64_t o = create(s, STORE_OFFICE, txt);
    int64_t rev0 = count_rows(s, "revisions");

    /* A region with offices cannot go, and nothing changes. */
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_REGION, r, 0, "tester"), STORE_ECONFLICT);
    CU_ASSERT_PTR_NOT_NULL(strstr(store_error_message(s), "office"));
    CU_ASSERT_EQUAL(count_rows(s, "revisions"), rev0);
    cJSON *got = NULL;
    CU_ASSERT_EQUAL(store_object_get(s, STORE_REGION, r, &got), STORE_OK);
    cJSON_Delete(got);

    /* A reference to nothing is invalid input, named by its field. */
    char field[128];
    CU_ASSERT_EQUAL(
        try_create(s, STORE_OFFICE, "{\"name\": \"X\", \"region_id\": 999}", field, sizeof(field)),
        STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(field, "region_id");

    /* An office with a node cannot go; its rules and settings go with it. */
    snprintf(txt, sizeof(txt), "{\"name\": \"gw-paris\", \"office_id\": %lld}", (long long)o);
    int64_t node = create(s, STORE_NODE, txt);
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_OFFICE, o, 0, "tester"), STORE_ECONFLICT);
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_NODE, node, 0, "tester"), STORE_OK);
    snprintf(txt, sizeof(txt),
             "{\"scope\": \"office\", \"scope_id\": %lld, \"kind\": \"skype\", \"action\": "
             "\"allow\"}",
             (long long)o);
    int64_t rule = create(s, STORE_RULE, txt);
    cJSON *set = J("{\"block_executables\": false}");
    CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_OFFICE, o, set, 0, "tester", NULL), STORE_OK);
    cJSON_Delete(set);
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_OFFICE, o, 0, "tester"), STORE_OK);
    CU_ASSERT_EQUAL(store_object_get(s, STORE_RULE, rule, &got), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(store_settings_get(s, MODEL_SCOPE_OFFICE, o, &got), STORE_ENOTFOUND);
    cJSON *settings = NULL;
    CU_ASSERT_EQUAL(store_settings_list(s, &settings), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(settings), 2); /* global and the region's */
    cJSON_Delete(settings);
    /* The audit row keeps what went with it. */
    cJSON *a = last_audit(s);
    cJSON *with = cJSON_GetObjectItem(cJSON_GetObjectItem(a, "before"), "deleted_with");
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(with, "rules")), 1);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(with, "settings")), 1);
    cJSON_Delete(a);
    /* Now the region is free to go. */
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_REGION, r, 0, "tester"), STORE_OK);

    /* A list in use cannot go nor be renamed. */
    cJSON *lists = NULL;
    CU_ASSERT_EQUAL_FATAL(store_object_list(s, STORE_LIST, &lists), STORE_OK);
    int64_t skype = (int64_t)cJSON_GetObjectItem(lists->child, "id")->valuedouble;
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_LIST, skype, 0, "tester"), STORE_ECONFLICT);
    CU_ASSERT_PTR_NOT_NULL(strstr(store_error_message(s), "global"));
    cJSON *renamed = cJSON_Duplicate(lists->child, true);
    cJSON_ReplaceItemInObject(renamed, "name", cJSON_CreateString("skype2"));
    CU_ASSERT_EQUAL(store_object_update(s, STORE_LIST, skype, renamed, 0, "tester", NULL),
                    STORE_ECONFLICT);
    cJSON_Delete(renamed);
    cJSON_Delete(lists);
    store_close(s);
}

static void expect_invalid(store *s, store_kind k, const char *txt, const char *field)
{
    char got[128];
    int rc = try_create(s, k, txt, got, sizeof(got));
    CU_ASSERT_EQUAL(rc, STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(got, field);
    if (rc != STORE_EINVALID || strcmp(got, field) != 0)
        fprintf(stderr, "%s: rc %d field '%s' (%s), expected '%s'\n", txt, rc, got,
                store_error_message(s), field);
}

static void test_invalid_input(void)
{
    store *s = fresh();
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    char txt[256];
    int64_t rev0 = count_rows(s, "revisions");
    expect_invalid(s, STORE_REGION, "{\"name\": \"\"}", "name");
    expect_invalid(s, STORE_REGION, "{\"name\": 5}", "name");
    expect_invalid(s, STORE_REGION, "{}", "name");
    expect_invalid(s, STORE_REGION, "{\"name\": \"x\", \"colour\": \"red\"}", "colour");
    expect_invalid(s, STORE_REGION, "{\"name\": \"x\", \"name\": \"y\"}", "name");
    expect_invalid(s, STORE_REGION, "[1]", "");
    snprintf(txt, sizeof(txt),
             "{\"name\": \"Paris\", \"region_id\": %lld, \"lan_prefixes\": [\"10.0.0.0/8\", "
             "\"192.0.2.300/24\"]}",
             (long long)r);
    expect_invalid(s, STORE_OFFICE, txt, "lan_prefixes[1]");
    CU_ASSERT_PTR_NOT_NULL(strstr(store_error_message(s), "192.0.2.300"));
    snprintf(txt, sizeof(txt),
             "{\"name\": \"Paris\", \"region_id\": %lld, \"lan_prefixes\": [\"10.0.0.1/8\"]}",
             (long long)r);
    expect_invalid(s, STORE_OFFICE, txt, "lan_prefixes[0]");
    CU_ASSERT_PTR_NOT_NULL(strstr(store_error_message(s), "host bits"));
    expect_invalid(s, STORE_GROUP, "{\"name\": \"g\", \"sources\": []}", "sources");
    expect_invalid(s, STORE_GROUP, "{\"name\": \"g\", \"sources\": [\"nope\"]}", "sources[0]");
    expect_invalid(s, STORE_GROUP, "{\"name\": \"defaults\", \"sources\": [\"10.0.0.0/8\"]}",
                   "name");
    expect_invalid(s, STORE_GROUP, "{\"name\": \"has space\", \"sources\": [\"10.0.0.0/8\"]}",
                   "name");
    expect_invalid(s, STORE_RULE,
                   "{\"scope\": \"global\", \"kind\": \"domain\", \"value\": \"com\", "
                   "\"action\": \"block\"}",
                   "value");
    expect_invalid(s, STORE_RULE,
                   "{\"scope\": \"global\", \"kind\": \"prefix\", \"value\": \"10.0.0.1/8\", "
                   "\"action\": \"block\"}",
                   "value");
    expect_invalid(s, STORE_RULE,
                   "{\"scope\": \"global\", \"kind\": \"url_suffix\", \"value\": \"a b\", "
                   "\"action\": \"block\"}",
                   "value");
    expect_invalid(s, STORE_RULE,
                   "{\"scope\": \"global\", \"kind\": \"domain\", \"value\": \"a.com\", "
                   "\"action\": \"maybe\"}",
                   "action");
    expect_invalid(s, STORE_RULE,
                   "{\"scope\": \"office\", \"scope_id\": 77, \"kind\": \"skype\", "
                   "\"action\": \"allow\"}",
                   "scope_id");
    expect_invalid(s, STORE_RULE, "{\"scope\": \"planet\", \"kind\": \"skype\"}", "scope");
    expect_invalid(s, STORE_LIST,
                   "{\"name\": \"mine\", \"list\": {\"category\": \"x\", \"domains\": "
                   "[\"ok.com\", \"*.bad.com\"]}}",
                   "list.domains[1]");
    expect_invalid(s, STORE_LIST, "{\"name\": \"mine\", \"list\": {\"domains\": []}}",
                   "list.category");
    expect_invalid(s, STORE_LIST, "{\"name\": \"group\", \"list\": {\"category\": \"x\"}}", "name");
    expect_invalid(s, STORE_NODE, "{\"name\": \"n1\", \"office_id\": 5}", "office_id");

    cJSON *bad[] = {
        J("{\"ports\": {\"80\": \"gopher\"}}"),
        J("{\"ports\": {\"0\": \"http\"}}"),
        J("{\"use_lists\": [\"skype\", \"nosuch\"]}"),
        J("{\"high_port_threshold\": 70000}"),
        J("{\"open_ports\": [{\"port\": 25, \"proto\": \"tcp\", \"devices\": [\"x\"]}]}"),
        J("{\"open_ports\": [{\"port\": 25, \"proto\": \"tcp\", \"devices\": "
          "[\"192.0.2.10\"], \"note\": 1}]}"),
        J("{\"require_certificate\": \"yes\"}"),
        J("{\"open_ports\": [{\"port\": \"8100-8000\", \"proto\": \"tcp\", \"devices\": "
          "[\"192.0.2.10\"]}]}"),
        J("{\"open_ports\": [{\"port\": \"80-\", \"proto\": \"tcp\", \"devices\": "
          "[\"192.0.2.10\"]}]}"),
        J("{\"open_ports\": [{\"port\": \"080\", \"proto\": \"tcp\", \"devices\": "
          "[\"192.0.2.10\"]}]}"),
        J("{\"open_ports\": [{\"port\": 25, \"proto\": \"tcp\", \"devices\": []}]}"),
        J("{\"open_ports\": [{\"port\": 25, \"proto\": \"tcp\", \"devices\": "
          "[\"192.0.2.25\"]}, {\"port\": \"20-30\", \"proto\": \"tcp\", \"devices\": "
          "[\"192.0.2.26\"]}]}"),
        J("{\"open_ports\": [{\"port\": 25, \"proto\": \"tcp\", \"devices\": "
          "[\"192.0.2.25\"]}, {\"port\": \"25\", \"proto\": \"tcp\", \"devices\": "
          "[\"192.0.2.26\"]}]}"),
        J("{\"dns_resolvers\": [\"198.51.100.0/24\"]}"),
        J("{\"dns_resolvers\": [\"198.51.100.53\", \"::ffff:198.51.100.53\"]}"),
        J("{\"dns_resolvers\": \"198.51.100.53\"}"),
        J("{\"web_mode\": \"bridge\"}"),
        J("{\"web_devices\": [\"192.0.2.1/24\"]}"),
        J("{\"web_mode\": \"transparent\", \"web_devices\": [\"192.0.2.8\"]}"),
        J("{\"log_drops_per_minute\": 10001}"),
        J("{\"log_drops_per_minute\": -1}"),
    };
    const char *fields[] = {"ports['80']",
                            "ports['0']",
                            "use_lists[1]",
                            "high_port_threshold",
                            "open_ports[0].devices[0]",
                            "open_ports[0].note",
                            "require_certificate",
                            "open_ports[0].port",
                            "open_ports[0].port",
                            "open_ports[0].port",
                            "open_ports[0].devices",
                            "open_ports[1]",
                            "open_ports[1]",
                            "dns_resolvers[0]",
                            "dns_resolvers[1]",
                            "dns_resolvers",
                            "web_mode",
                            "web_devices[0]",
                            "web_devices",
                            "log_drops_per_minute",
                            "log_drops_per_minute"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_GLOBAL, 0, bad[i], 0, "tester", NULL),
                        STORE_EINVALID);
        CU_ASSERT_STRING_EQUAL(store_error_field(s), fields[i]);
        cJSON_Delete(bad[i]);
    }
    /* The actor is checked too. */
    cJSON *in = J("{\"name\": \"fine\"}");
    CU_ASSERT_EQUAL(store_object_create(s, STORE_REGION, in, "", NULL), STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(store_error_field(s), "actor");
    cJSON_Delete(in);
    /* Nothing of it was stored. */
    CU_ASSERT_EQUAL(count_rows(s, "revisions"), rev0);
    store_close(s);
}

/* --- revisions, audit, etags ----------------------------------------------- */

/* Runs a change and checks it made exactly one revision and one audit row
 * with the expected action and before/after presence. */
static void one_change(store *s, int rc, const char *action, bool has_before, bool has_after)
{
    static int64_t revs, audits;
    if (!action) { /* start counting */
        revs = count_rows(s, "revisions");
        audits = count_rows(s, "audit");
        return;
    }
    CU_ASSERT_EQUAL(rc, STORE_OK);
    CU_ASSERT_EQUAL(count_rows(s, "revisions"), revs + 1);
    CU_ASSERT_EQUAL(count_rows(s, "audit"), audits + 1);
    cJSON *a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(a, "action")->valuestring, action);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(a, "actor")->valuestring, "tester");
    CU_ASSERT_EQUAL(cJSON_IsObject(cJSON_GetObjectItem(a, "before")), has_before);
    CU_ASSERT_EQUAL(cJSON_IsObject(cJSON_GetObjectItem(a, "after")), has_after);
    CU_ASSERT_EQUAL((int64_t)cJSON_GetObjectItem(a, "revision")->valuedouble, revs + 1);
    cJSON_Delete(a);
    revs++;
    audits++;
}

static void test_every_change_is_one_revision(void)
{
    store *s = fresh();
    char txt[256];
    cJSON *in, *out = NULL;
    one_change(s, 0, NULL, false, false);

    /* For every kind: create, update, delete. */
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    one_change(s, STORE_OK, "create", false, true);
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    int64_t o = create(s, STORE_OFFICE, txt);
    one_change(s, STORE_OK, "create", false, true);
    const char *objs[] = {
        "{\"name\": \"board\", \"sources\": [\"10.0.0.0/24\"]}",
        "{\"scope\": \"global\", \"kind\": \"url_suffix\", \"value\": \"x.exe\", \"action\": "
        "\"block\"}",
        "{\"name\": \"games\", \"list\": {\"category\": \"games\", \"domains\": "
        "[\"game.example\"]}}",
        NULL};
    store_kind ks[] = {STORE_GROUP, STORE_RULE, STORE_LIST};
    for (int i = 0; objs[i]; i++) {
        int64_t id = create(s, ks[i], objs[i]);
        one_change(s, STORE_OK, "create", false, true);
        in = J(objs[i]);
        CU_ASSERT_EQUAL(store_object_get(s, ks[i], id, &out), STORE_OK);
        int64_t etag = (int64_t)cJSON_GetObjectItem(out, "etag")->valuedouble;
        cJSON_Delete(out);
        one_change(s, store_object_update(s, ks[i], id, in, etag, "tester", NULL), "update", true,
                   true);
        cJSON_Delete(in);
        one_change(s, store_object_delete(s, ks[i], id, 0, "tester"), "delete", true, false);
    }
    snprintf(txt, sizeof(txt), "{\"name\": \"gw1\", \"office_id\": %lld}", (long long)o);
    int64_t node = create(s, STORE_NODE, txt);
    one_change(s, STORE_OK, "create", false, true);
    in = J("{\"require_certificate\": false, \"ports\": {\"443\": \"tls\", \"80\": \"http\"}}");
    one_change(s, store_settings_put(s, MODEL_SCOPE_REGION, r, in, 0, "tester", &out), "update",
               true, true);
    /* Normalized: ports in order, unset fields null. */
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(out, "ports")->child->string, "80");
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(out, "block_executables")));
    cJSON_Delete(out);
    cJSON_Delete(in);
    one_change(s, store_object_delete(s, STORE_NODE, node, 0, "tester"), "delete", true, false);
    one_change(s, store_object_delete(s, STORE_OFFICE, o, 0, "tester"), "delete", true, false);
    one_change(s, store_object_delete(s, STORE_REGION, r, 0, "tester"), "delete", true, false);

    /* The audit row's before and after are the object's two states. */
    in = J("{\"name\": \"Americas\"}");
    r = create(s, STORE_REGION, "{\"name\": \"AMER\"}");
    one_change(s, STORE_OK, "create", false, true);
    one_change(s, store_object_update(s, STORE_REGION, r, in, 0, "tester", NULL), "update", true,
               true);
    cJSON *a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(
        cJSON_GetObjectItem(cJSON_GetObjectItem(a, "before"), "name")->valuestring, "AMER");
    CU_ASSERT_STRING_EQUAL(
        cJSON_GetObjectItem(cJSON_GetObjectItem(a, "after"), "name")->valuestring, "Americas");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(a, "object_type")->valuestring, "region");
    cJSON_Delete(a);
    cJSON_Delete(in);

    /* Users and tokens are audited without a policy revision. */
    int64_t revs = count_rows(s, "revisions"), audits = count_rows(s, "audit");
    in = J("{\"name\": \"ops@example.com\", \"role\": \"operator\"}");
    CU_ASSERT_EQUAL(store_user_create(s, in, "tester", NULL), STORE_OK);
    cJSON_Delete(in);
    CU_ASSERT_EQUAL(count_rows(s, "revisions"), revs);
    CU_ASSERT_EQUAL(count_rows(s, "audit"), audits + 1);
    a = last_audit(s);
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(a, "revision")));
    cJSON_Delete(a);
    store_close(s);
}

typedef struct dry_change {
    const char *json;
    int64_t region;
} dry_change;

static int dry_create_office(store *s, void *arg)
{
    dry_change *d = arg;
    cJSON *in = J(d->json);
    int rc = store_object_create(s, STORE_OFFICE, in, "tester", NULL);
    cJSON_Delete(in);
    return rc;
}

static void test_dry_run(void)
{
    store *s = fresh();
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    int64_t before_rev = 0, after_rev = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &before_rev), STORE_OK);
    char txt[128];
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    dry_change d = {txt, r};
    model after;
    CU_ASSERT_EQUAL_FATAL(store_dry_run(s, dry_create_office, &d, &after), STORE_OK);
    /* The model as it would be has the office ... */
    CU_ASSERT_EQUAL(after.noffices, 1);
    if (after.noffices == 1)
        CU_ASSERT_STRING_EQUAL(after.offices[0].name, "Paris");
    model_free(&after);
    /* ... and nothing of it was kept: no office, no new revision. */
    cJSON *offices = NULL;
    CU_ASSERT_EQUAL(store_object_list(s, STORE_OFFICE, &offices), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(offices), 0);
    cJSON_Delete(offices);
    CU_ASSERT_EQUAL(store_revision_current(s, &after_rev), STORE_OK);
    CU_ASSERT_EQUAL(after_rev, before_rev);
    /* A change the store refuses is refused in a dry run too, with the field. */
    dry_change bad = {"{\"name\": \"\", \"region_id\": 1}", r};
    CU_ASSERT_EQUAL(store_dry_run(s, dry_create_office, &bad, &after), STORE_EINVALID);
    CU_ASSERT_EQUAL(after.noffices, 0);
    /* And the store still works normally afterwards. */
    create(s, STORE_OFFICE, txt);
    CU_ASSERT_EQUAL(store_revision_current(s, &after_rev), STORE_OK);
    CU_ASSERT_EQUAL(after_rev, before_rev + 1);
    store_close(s);
}

static void test_stale_etag(void)
{
    store *s = fresh();
    cJSON *out = NULL, *in = J("{\"name\": \"Asia\"}");
    int64_t r = create(s, STORE_REGION, "{\"name\": \"APAC\"}");
    CU_ASSERT_EQUAL_FATAL(store_object_get(s, STORE_REGION, r, &out), STORE_OK);
    int64_t etag = (int64_t)cJSON_GetObjectItem(out, "etag")->valuedouble;
    cJSON_Delete(out);
    int64_t revs = count_rows(s, "revisions"), audits = count_rows(s, "audit");

    /* Someone else's change makes the etag stale. */
    cJSON *other = J("{\"name\": \"AsiaPac\"}");
    CU_ASSERT_EQUAL(store_object_update(s, STORE_REGION, r, other, etag, "other", &out), STORE_OK);
    int64_t etag2 = (int64_t)cJSON_GetObjectItem(out, "etag")->valuedouble;
    CU_ASSERT_TRUE(etag2 > etag);
    cJSON_Delete(out);
    cJSON_Delete(other);

    CU_ASSERT_EQUAL(store_object_update(s, STORE_REGION, r, in, etag, "tester", NULL),
                    STORE_ESTALE);
    CU_ASSERT_STRING_EQUAL(store_error_field(s), "etag");
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_REGION, r, etag, "tester"), STORE_ESTALE);
    CU_ASSERT_EQUAL(count_rows(s, "revisions"), revs + 1);
    CU_ASSERT_EQUAL(count_rows(s, "audit"), audits + 1);
    CU_ASSERT_EQUAL(store_object_get(s, STORE_REGION, r, &out), STORE_OK);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(out, "name")->valuestring, "AsiaPac");
    cJSON_Delete(out);

    /* Settings have etags too. */
    CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_GLOBAL, 0, in, 1, "tester", NULL),
                    STORE_EINVALID); /* "name" is no settings field ... */
    cJSON *set = J("{\"block_high_ports\": false}");
    CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_GLOBAL, 0, set, 9999, "tester", NULL),
                    STORE_ESTALE); /* ... and a wrong etag is refused */
    CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_GLOBAL, 0, set, 1, "tester", NULL), STORE_OK);
    cJSON_Delete(set);
    /* The right etag works. */
    CU_ASSERT_EQUAL(store_object_update(s, STORE_REGION, r, in, etag2, "tester", NULL), STORE_OK);
    CU_ASSERT_EQUAL(store_object_update(s, STORE_REGION, 4242, in, 0, "tester", NULL),
                    STORE_ENOTFOUND);
    cJSON_Delete(in);
    store_close(s);
}

/* Whether two models are the same apart from the revision number. */
static bool strv_eq(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return true;
}

static bool settings_eq(const model_settings *a, const model_settings *b)
{
    if (a->has_ports != b->has_ports || a->nports != b->nports ||
        a->has_require_certificate != b->has_require_certificate ||
        a->require_certificate != b->require_certificate ||
        a->has_block_executables != b->has_block_executables ||
        a->block_executables != b->block_executables || a->has_use_lists != b->has_use_lists ||
        !strv_eq(a->use_lists, a->nuse_lists, b->use_lists, b->nuse_lists) ||
        a->has_block_high_ports != b->has_block_high_ports ||
        a->block_high_ports != b->block_high_ports ||
        a->has_high_port_threshold != b->has_high_port_threshold ||
        a->high_port_threshold != b->high_port_threshold ||
        a->has_open_ports != b->has_open_ports || a->nopen_ports != b->nopen_ports ||
        a->has_dns_resolvers != b->has_dns_resolvers ||
        !strv_eq(a->dns_resolvers, a->ndns_resolvers, b->dns_resolvers, b->ndns_resolvers) ||
        a->has_web_mode != b->has_web_mode || strcmp(a->web_mode, b->web_mode) != 0 ||
        a->has_web_devices != b->has_web_devices ||
        !strv_eq(a->web_devices, a->nweb_devices, b->web_devices, b->nweb_devices) ||
        a->has_log_drops_per_minute != b->has_log_drops_per_minute ||
        a->log_drops_per_minute != b->log_drops_per_minute)
        return false;
    for (size_t i = 0; i < a->nports; i++)
        if (a->ports[i] != b->ports[i] || strcmp(a->port_protos[i], b->port_protos[i]) != 0)
            return false;
    for (size_t i = 0; i < a->nopen_ports; i++)
        if (a->open_ports[i].port != b->open_ports[i].port ||
            a->open_ports[i].port_last != b->open_ports[i].port_last ||
            strcmp(a->open_ports[i].proto, b->open_ports[i].proto) != 0 ||
            !strv_eq(a->open_ports[i].devices, a->open_ports[i].ndevices, b->open_ports[i].devices,
                     b->open_ports[i].ndevices))
            return false;
    return true;
}

static bool model_eq(const model *a, const model *b)
{
    if (!settings_eq(&a->global, &b->global) || a->nregions != b->nregions ||
        a->noffices != b->noffices || a->ngroups != b->ngroups || a->nnodes != b->nnodes ||
        a->nrules != b->nrules || a->nlists != b->nlists)
        return false;
    for (size_t i = 0; i < a->nregions; i++)
        if (a->regions[i].id != b->regions[i].id ||
            strcmp(a->regions[i].name, b->regions[i].name) != 0 ||
            !settings_eq(&a->regions[i].settings, &b->regions[i].settings))
            return false;
    for (size_t i = 0; i < a->noffices; i++)
        if (a->offices[i].id != b->offices[i].id ||
            a->offices[i].region_id != b->offices[i].region_id ||
            strcmp(a->offices[i].name, b->offices[i].name) != 0 ||
            !strv_eq(a->offices[i].lan_prefixes, a->offices[i].nlan, b->offices[i].lan_prefixes,
                     b->offices[i].nlan) ||
            !settings_eq(&a->offices[i].settings, &b->offices[i].settings))
            return false;
    for (size_t i = 0; i < a->ngroups; i++)
        if (a->groups[i].id != b->groups[i].id ||
            a->groups[i].office_id != b->groups[i].office_id ||
            strcmp(a->groups[i].name, b->groups[i].name) != 0 ||
            !strv_eq(a->groups[i].sources, a->groups[i].nsources, b->groups[i].sources,
                     b->groups[i].nsources) ||
            !strv_eq(a->groups[i].users, a->groups[i].nusers, b->groups[i].users,
                     b->groups[i].nusers))
            return false;
    for (size_t i = 0; i < a->nnodes; i++)
        if (a->nodes[i].id != b->nodes[i].id || a->nodes[i].office_id != b->nodes[i].office_id ||
            strcmp(a->nodes[i].name, b->nodes[i].name) != 0)
            return false;
    for (size_t i = 0; i < a->nrules; i++)
        if (a->rules[i].id != b->rules[i].id || a->rules[i].scope != b->rules[i].scope ||
            a->rules[i].scope_id != b->rules[i].scope_id || a->rules[i].kind != b->rules[i].kind ||
            a->rules[i].allow != b->rules[i].allow ||
            strcmp(a->rules[i].value, b->rules[i].value) != 0 ||
            strcmp(a->rules[i].comment, b->rules[i].comment) != 0)
            return false;
    for (size_t i = 0; i < a->nlists; i++)
        if (strcmp(a->lists[i].name, b->lists[i].name) != 0 ||
            strcmp(a->lists[i].json, b->lists[i].json) != 0)
            return false;
    return true;
}

static void test_model_load(void)
{
    store *s = fresh();
    char txt[512];
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    snprintf(txt, sizeof(txt),
             "{\"name\": \"Paris\", \"region_id\": %lld, \"lan_prefixes\": [\"10.1.0.0/16\", "
             "\"2001:db8::/48\"]}",
             (long long)r);
    int64_t o = create(s, STORE_OFFICE, txt);
    snprintf(txt, sizeof(txt),
             "{\"name\": \"board\", \"office_id\": %lld, \"sources\": [\"10.1.2.0/24\"], "
             "\"users\": [\"alice\"]}",
             (long long)o);
    int64_t g = create(s, STORE_GROUP, txt);
    snprintf(txt, sizeof(txt),
             "{\"scope\": \"group\", \"scope_id\": %lld, \"kind\": \"skype\", \"action\": "
             "\"allow\", \"comment\": \"the board may call\"}",
             (long long)g);
    create(s, STORE_RULE, txt);
    create(s, STORE_RULE,
           "{\"scope\": \"global\", \"kind\": \"prefix\", \"value\": \"::ffff:192.0.2.0/120\", "
           "\"action\": \"block\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"gw-paris\", \"office_id\": %lld}", (long long)o);
    create(s, STORE_NODE, txt);
    cJSON *set = J("{\"ports\": {\"8080\": \"http\", \"443\": \"tls\"}, \"block_high_ports\": "
                   "false, \"open_ports\": [{\"port\": 25, \"proto\": \"tcp\", \"devices\": "
                   "[\"10.1.0.25\"]}, {\"port\": \"8000-8100\", \"proto\": \"udp\", "
                   "\"devices\": [\"10.1.7.0/24\"]}, {\"port\": \"53-53\", \"proto\": \"udp\", "
                   "\"devices\": [\"10.1.0.53\"]}], \"dns_resolvers\": [\"::ffff:198.51.100.53\", "
                   "\"2001:DB8::53\"], \"web_mode\": \"proxy\", \"web_devices\": [\"10.1.0.8\"], "
                   "\"log_drops_per_minute\": 0}");
    cJSON *got = NULL;
    CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_OFFICE, o, set, 0, "tester", &got), STORE_OK);
    cJSON_Delete(set);
    /* As the API shows them: normalized, a range as "first-last", one port
     * as a number. */
    char *gtxt = cJSON_PrintUnformatted(got);
    CU_ASSERT_PTR_NOT_NULL(strstr(
        gtxt, "\"open_ports\":[{\"devices\":[\"10.1.0.25/32\"],\"port\":25,\"proto\":\"tcp\"},"
              "{\"devices\":[\"10.1.7.0/24\"],\"port\":\"8000-8100\",\"proto\":\"udp\"},"
              "{\"devices\":[\"10.1.0.53/32\"],\"port\":53,\"proto\":\"udp\"}],"
              "\"dns_resolvers\":[\"198.51.100.53\",\"2001:db8::53\"],\"web_mode\":\"proxy\","
              "\"web_devices\":[\"10.1.0.8/32\"],\"log_drops_per_minute\":0,"));
    free(gtxt);
    cJSON_Delete(got);

    model m;
    CU_ASSERT_EQUAL_FATAL(store_model_load(s, 0, &m), STORE_OK);
    int64_t cur = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &cur), STORE_OK);
    CU_ASSERT_EQUAL(m.revision, cur);
    CU_ASSERT_EQUAL_FATAL(m.noffices, 1);
    CU_ASSERT_EQUAL(m.offices[0].region_id, r);
    CU_ASSERT_EQUAL(m.offices[0].nlan, 2);
    CU_ASSERT_STRING_EQUAL(m.offices[0].lan_prefixes[1], "2001:db8::/48");
    const model_settings *os = &m.offices[0].settings;
    CU_ASSERT_TRUE(os->has_ports);
    CU_ASSERT_EQUAL_FATAL(os->nports, 2);
    CU_ASSERT_EQUAL(os->ports[0], 443); /* in port order */
    CU_ASSERT_STRING_EQUAL(os->port_protos[1], "http");
    CU_ASSERT_TRUE(os->has_block_high_ports);
    CU_ASSERT_FALSE(os->block_high_ports);
    CU_ASSERT_FALSE(os->has_require_certificate); /* inherits */
    CU_ASSERT_FALSE(os->has_use_lists);
    CU_ASSERT_EQUAL_FATAL(os->nopen_ports, 3);
    CU_ASSERT_EQUAL(os->open_ports[0].port, 25);
    CU_ASSERT_EQUAL(os->open_ports[0].port_last, 0);
    CU_ASSERT_STRING_EQUAL(os->open_ports[0].proto, "tcp");
    CU_ASSERT_STRING_EQUAL(os->open_ports[0].devices[0], "10.1.0.25/32");
    CU_ASSERT_EQUAL(os->open_ports[1].port, 8000);
    CU_ASSERT_EQUAL(os->open_ports[1].port_last, 8100);
    CU_ASSERT_EQUAL(os->open_ports[2].port, 53);
    CU_ASSERT_EQUAL(os->open_ports[2].port_last, 0);
    CU_ASSERT_TRUE(os->has_dns_resolvers);
    CU_ASSERT_EQUAL_FATAL(os->ndns_resolvers, 2);
    CU_ASSERT_STRING_EQUAL(os->dns_resolvers[0], "198.51.100.53");
    CU_ASSERT_TRUE(os->has_web_mode);
    CU_ASSERT_STRING_EQUAL(os->web_mode, "proxy");
    CU_ASSERT_EQUAL_FATAL(os->nweb_devices, 1);
    CU_ASSERT_STRING_EQUAL(os->web_devices[0], "10.1.0.8/32");
    CU_ASSERT_TRUE(os->has_log_drops_per_minute); /* 0 is a value: not logged */
    CU_ASSERT_EQUAL(os->log_drops_per_minute, 0);
    /* Unset: inherits. The seeded global states the white paper's values. */
    const model_settings *rs = &m.regions[0].settings;
    CU_ASSERT_FALSE(rs->has_dns_resolvers || rs->has_web_mode || rs->has_web_devices ||
                    rs->has_log_drops_per_minute || rs->has_open_ports);
    CU_ASSERT_FALSE(m.global.has_dns_resolvers); /* any resolver */
    CU_ASSERT_STRING_EQUAL(m.global.web_mode, "transparent");
    CU_ASSERT_TRUE(m.global.has_web_devices);
    CU_ASSERT_EQUAL(m.global.nweb_devices, 0);
    CU_ASSERT_TRUE(m.global.has_log_drops_per_minute);
    CU_ASSERT_TRUE(m.global.has_open_ports);
    CU_ASSERT_FALSE(m.regions[0].settings.has_ports);
    CU_ASSERT_TRUE(m.global.has_use_lists);
    CU_ASSERT_EQUAL_FATAL(m.ngroups, 1);
    CU_ASSERT_EQUAL(m.groups[0].office_id, o);
    CU_ASSERT_STRING_EQUAL(m.groups[0].users[0], "alice");
    CU_ASSERT_EQUAL_FATAL(m.nrules, 2);
    CU_ASSERT_EQUAL(m.rules[0].scope, MODEL_SCOPE_GROUP);
    CU_ASSERT_EQUAL(m.rules[0].scope_id, g);
    CU_ASSERT_EQUAL(m.rules[0].kind, MODEL_RULE_SKYPE);
    CU_ASSERT_TRUE(m.rules[0].allow);
    CU_ASSERT_STRING_EQUAL(m.rules[0].comment, "the board may call");
    CU_ASSERT_EQUAL(m.rules[1].kind, MODEL_RULE_PREFIX);
    CU_ASSERT_STRING_EQUAL(m.rules[1].value, "192.0.2.0/24");
    CU_ASSERT_FALSE(m.rules[1].allow);
    CU_ASSERT_EQUAL_FATAL(m.nnodes, 1);
    CU_ASSERT_STRING_EQUAL(m.nodes[0].name, "gw-paris");
    CU_ASSERT_EQUAL(m.nlists, 2);
    cJSON *lj = J(m.lists[0].json);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(lj, "category")->valuestring, "skype");
    cJSON_Delete(lj);

    /* An older revision is the model as it was. */
    model first;
    CU_ASSERT_EQUAL_FATAL(store_model_load(s, 1, &first), STORE_OK);
    CU_ASSERT_EQUAL(first.revision, 1);
    CU_ASSERT_EQUAL(first.nregions, 0);
    CU_ASSERT_EQUAL(first.nlists, 2);
    model_free(&first);
    CU_ASSERT_EQUAL(store_model_load(s, cur + 1, &first), STORE_ENOTFOUND);
    model_free(&m);
    store_close(s);
}

static void test_rollback(void)
{
    store *s = fresh();
    char txt[512];
    cJSON *in, *out = NULL;
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    int64_t o = create(s, STORE_OFFICE, txt);
    snprintf(txt, sizeof(txt),
             "{\"name\": \"board\", \"office_id\": %lld, \"sources\": [\"10.1.2.0/24\"]}",
             (long long)o);
    int64_t g = create(s, STORE_GROUP, txt);
    int64_t rule = create(s, STORE_RULE,
                          "{\"scope\": \"global\", \"kind\": \"domain\", \"value\": "
                          "\"example.com\", \"action\": \"block\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"gw-paris\", \"office_id\": %lld}", (long long)o);
    create(s, STORE_NODE, txt);
    int64_t target = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &target), STORE_OK);
    model before;
    CU_ASSERT_EQUAL_FATAL(store_model_load(s, target, &before), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(store_object_get(s, STORE_OFFICE, o, &out), STORE_OK);
    int64_t office_etag = (int64_t)cJSON_GetObjectItem(out, "etag")->valuedouble;
    cJSON_Delete(out);

    /* Changes of every sort after it. */
    in = J("{\"name\": \"Europe\"}");
    CU_ASSERT_EQUAL(store_object_update(s, STORE_REGION, r, in, 0, "tester", NULL), STORE_OK);
    cJSON_Delete(in);
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_RULE, rule, 0, "tester"), STORE_OK);
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_GROUP, g, 0, "tester"), STORE_OK);
    int64_t r2 = create(s, STORE_REGION, "{\"name\": \"EMEA\"}"); /* the old name, reused */
    snprintf(txt, sizeof(txt), "{\"name\": \"Berlin\", \"region_id\": %lld}", (long long)r2);
    create(s, STORE_OFFICE, txt);
    create(s, STORE_LIST, "{\"name\": \"games\", \"list\": {\"category\": \"games\"}}");
    in = J("{\"use_lists\": [\"skype\", \"teams\"], \"block_executables\": false, "
           "\"dns_resolvers\": [\"198.51.100.53\"], \"web_mode\": \"proxy\", "
           "\"web_devices\": [\"10.1.0.8\"], \"log_drops_per_minute\": 5, \"open_ports\": "
           "[{\"port\": \"8000-8100\", \"proto\": \"tcp\", \"devices\": [\"10.1.0.0/16\"]}]}");
    CU_ASSERT_EQUAL(store_settings_put(s, MODEL_SCOPE_GLOBAL, 0, in, 0, "tester", NULL), STORE_OK);
    cJSON_Delete(in);
    int64_t cur = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &cur), STORE_OK);
    int64_t audits = count_rows(s, "audit");

    int64_t made = 0;
    CU_ASSERT_EQUAL_FATAL(store_rollback(s, target, "tester", &made), STORE_OK);
    CU_ASSERT_EQUAL(made, cur + 1); /* one new revision */
    int64_t now = 0;
    CU_ASSERT_EQUAL(store_revision_current(s, &now), STORE_OK);
    CU_ASSERT_EQUAL(now, cur + 1);
    CU_ASSERT_EQUAL(count_rows(s, "audit"), audits + 1);

    model after;
    CU_ASSERT_EQUAL_FATAL(store_model_load(s, 0, &after), STORE_OK);
    CU_ASSERT_EQUAL(after.revision, made);
    CU_ASSERT_TRUE(model_eq(&before, &after));
    /* the firewall settings too: back to the seeded ones */
    CU_ASSERT_FALSE(after.global.has_dns_resolvers);
    CU_ASSERT_STRING_EQUAL(after.global.web_mode, "transparent");
    CU_ASSERT_EQUAL(after.global.nweb_devices, 0);
    CU_ASSERT_EQUAL(after.global.log_drops_per_minute, 0);
    CU_ASSERT_EQUAL(after.global.nopen_ports, 0);
    /* Nothing differs between the two revisions. */
    CU_ASSERT_EQUAL(store_revision_diff(s, target, made, &out), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(out, "changes")), 0);
    cJSON_Delete(out);
    /* What the rollback changed has the new revision as its etag, so an
     * etag read before it is stale; what it left alone keeps its etag. */
    CU_ASSERT_EQUAL_FATAL(store_object_get(s, STORE_REGION, r, &out), STORE_OK);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(out, "name")->valuestring, "EMEA");
    CU_ASSERT_EQUAL((int64_t)cJSON_GetObjectItem(out, "etag")->valuedouble, made);
    cJSON_Delete(out);
    CU_ASSERT_EQUAL_FATAL(store_object_get(s, STORE_OFFICE, o, &out), STORE_OK);
    CU_ASSERT_EQUAL((int64_t)cJSON_GetObjectItem(out, "etag")->valuedouble, office_etag);
    cJSON_Delete(out);
    CU_ASSERT_EQUAL(store_object_get(s, STORE_REGION, r2, &out), STORE_ENOTFOUND);

    /* The audit row says what was restored and what changed. */
    cJSON *a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(a, "action")->valuestring, "rollback");
    cJSON *aft = cJSON_GetObjectItem(a, "after");
    CU_ASSERT_EQUAL((int64_t)cJSON_GetObjectItem(aft, "restored")->valuedouble, target);
    CU_ASSERT_TRUE(cJSON_GetArraySize(cJSON_GetObjectItem(aft, "changes")) >= 6);
    CU_ASSERT_EQUAL(
        (int64_t)cJSON_GetObjectItem(cJSON_GetObjectItem(a, "before"), "revision")->valuedouble,
        cur);
    cJSON_Delete(a);

    /* Later changes work on the restored state (ids are not reused). */
    int64_t r3 = create(s, STORE_REGION, "{\"name\": \"APAC\"}");
    CU_ASSERT_TRUE(r3 > r2);

    /* A node whose office the older revision lacks blocks a rollback. */
    int64_t rev_empty_office = 0;
    snprintf(txt, sizeof(txt), "{\"name\": \"Tokyo\", \"region_id\": %lld}", (long long)r3);
    int64_t tokyo = create(s, STORE_OFFICE, txt);
    CU_ASSERT_EQUAL(store_revision_current(s, &rev_empty_office), STORE_OK);
    snprintf(txt, sizeof(txt), "{\"name\": \"gw-tokyo\", \"office_id\": %lld}", (long long)tokyo);
    create(s, STORE_NODE, txt);
    CU_ASSERT_EQUAL(store_revision_current(s, &cur), STORE_OK);
    CU_ASSERT_EQUAL(store_rollback(s, target, "tester", NULL), STORE_ECONFLICT);
    CU_ASSERT_PTR_NOT_NULL(strstr(store_error_message(s), "gw-tokyo"));
    CU_ASSERT_EQUAL(store_revision_current(s, &now), STORE_OK);
    CU_ASSERT_EQUAL(now, cur);
    CU_ASSERT_EQUAL(store_rollback(s, 9999, "tester", NULL), STORE_ENOTFOUND);
    /* Foreign keys are on again after a refused rollback. */
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_OFFICE, tokyo, 0, "tester"), STORE_ECONFLICT);

    model_free(&before);
    model_free(&after);
    store_close(s);
}

/* The id of the newest object of a kind, or 0. */
static int64_t last_id(store *s, store_kind k)
{
    cJSON *all = NULL;
    CU_ASSERT_EQUAL_FATAL(store_object_list(s, k, &all), STORE_OK);
    cJSON *last = cJSON_GetArrayItem(all, cJSON_GetArraySize(all) - 1);
    int64_t id = last ? (int64_t)cJSON_GetObjectItem(last, "id")->valuedouble : 0;
    cJSON_Delete(all);
    return id;
}

/* The newest revision's model as text, read right after it was made. */
static char *model_text(store *s, int64_t rev)
{
    cJSON *r = NULL;
    CU_ASSERT_EQUAL_FATAL(store_revision_get(s, rev, &r), STORE_OK);
    char *txt = cJSON_PrintUnformatted(cJSON_GetObjectItem(r, "model"));
    cJSON_Delete(r);
    return txt;
}

static void test_history_replays(void)
{
    /* Older revisions are rebuilt from a checkpoint and the changes since;
     * each must come out exactly as the model was when it was current,
     * across more than one checkpoint and through rollbacks and deletes
     * that take rules and settings along. */
    enum { STEPS = 230 };
    store *s = fresh();
    char *seen[STEPS + 2] = {0};
    char txt[256];
    int64_t cur = 0;
    seen[1] = model_text(s, 1);
    for (int i = 0; i < STEPS; i++) {
        int64_t r = last_id(s, STORE_REGION), o = last_id(s, STORE_OFFICE);
        int step = i % 7, rc;
        cJSON *in = NULL;
        if (!r)
            step = 0;
        else if (!o && step >= 2 && step != 4)
            step = 1;
        switch (step) {
        case 0: snprintf(txt, sizeof(txt), "{\"name\": \"R%d\"}", i); break;
        case 1:
            snprintf(txt, sizeof(txt),
                     "{\"name\": \"O%d\", \"region_id\": %lld, \"lan_prefixes\": "
                     "[\"10.%d.0.0/16\"]}",
                     i, (long long)r, i % 250);
            break;
        case 2:
            snprintf(txt, sizeof(txt),
                     "{\"scope\": \"office\", \"scope_id\": %lld, \"kind\": \"domain\", "
                     "\"value\": \"d%d.example\", \"action\": \"block\"}",
                     (long long)o, i);
            break;
        case 3:
            snprintf(txt, sizeof(txt), "{\"block_executables\": %s}", i % 2 ? "true" : "false");
            break;
        case 4: snprintf(txt, sizeof(txt), "{\"name\": \"R%d-renamed\"}", i); break;
        case 5: txt[0] = '\0'; break;
        default:
            snprintf(txt, sizeof(txt),
                     "{\"name\": \"L%d\", \"list\": {\"category\": \"x\", \"domains\": "
                     "[\"l%d.example\"]}}",
                     i, i);
        }
        in = txt[0] ? J(txt) : NULL;
        if (step == 0)
            rc = store_object_create(s, STORE_REGION, in, "tester", NULL);
        else if (step == 1)
            rc = store_object_create(s, STORE_OFFICE, in, "tester", NULL);
        else if (step == 2)
            rc = store_object_create(s, STORE_RULE, in, "tester", NULL);
        else if (step == 3)
            rc = store_settings_put(s, MODEL_SCOPE_OFFICE, o, in, 0, "tester", NULL);
        else if (step == 4)
            rc = store_object_update(s, STORE_REGION, r, in, 0, "tester", NULL);
        else if (step == 5)
            rc = store_object_delete(s, STORE_OFFICE, o, 0, "tester");
        else if (i % 3 == 0)
            rc = store_rollback(s, cur > 4 ? cur - 3 : 1, "tester", NULL);
        else
            rc = store_object_create(s, STORE_LIST, in, "tester", NULL);
        cJSON_Delete(in);
        if (rc != STORE_OK)
            fprintf(stderr, "step %d (%d): %s\n", i, step, store_error_message(s));
        CU_ASSERT_EQUAL_FATAL(rc, STORE_OK);
        CU_ASSERT_EQUAL_FATAL(store_revision_current(s, &cur), STORE_OK);
        CU_ASSERT_EQUAL_FATAL(cur, i + 2);
        seen[cur] = model_text(s, cur);
    }
    for (int64_t rev = 1; rev <= cur; rev++) {
        char *now = model_text(s, rev);
        CU_ASSERT_STRING_EQUAL(now, seen[rev]);
        /* The compiler's view agrees too. */
        model a;
        CU_ASSERT_EQUAL(store_model_load(s, rev, &a), STORE_OK);
        CU_ASSERT_EQUAL(a.revision, rev);
        model_free(&a);
        cJSON_free(now);
    }
    for (int64_t rev = 1; rev <= cur; rev++)
        cJSON_free(seen[rev]);
    store_close(s);
}

static void test_revision_read(void)
{
    store *s = fresh();
    create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    cJSON *in = J("{\"name\": \"Europe\"}"), *out = NULL;
    CU_ASSERT_EQUAL(store_object_update(s, STORE_REGION, 1, in, 0, "tester", NULL), STORE_OK);
    cJSON_Delete(in);

    CU_ASSERT_EQUAL_FATAL(store_revision_list(s, 0, 2, &out), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(out), 2);
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(out->child, "revision")->valuedouble, 3);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(out->child, "author")->valuestring, "tester");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(out->child, "comment")->valuestring,
                           "update region 1");
    cJSON_Delete(out);
    CU_ASSERT_EQUAL_FATAL(store_revision_list(s, 2, 0, &out), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(out), 1);
    cJSON_Delete(out);

    CU_ASSERT_EQUAL_FATAL(store_revision_get(s, 2, &out), STORE_OK);
    cJSON *regions = cJSON_GetObjectItem(cJSON_GetObjectItem(out, "model"), "regions");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(regions->child, "name")->valuestring, "EMEA");
    cJSON_Delete(out);
    CU_ASSERT_EQUAL(store_revision_get(s, 4, &out), STORE_ENOTFOUND);

    CU_ASSERT_EQUAL_FATAL(store_revision_diff(s, 1, 3, &out), STORE_OK);
    cJSON *changes = cJSON_GetObjectItem(out, "changes");
    /* The region and its settings were added. */
    CU_ASSERT_EQUAL(cJSON_GetArraySize(changes), 2);
    cJSON_Delete(out);
    CU_ASSERT_EQUAL_FATAL(store_revision_diff(s, 2, 3, &out), STORE_OK);
    changes = cJSON_GetObjectItem(out, "changes");
    CU_ASSERT_EQUAL_FATAL(cJSON_GetArraySize(changes), 1);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(changes->child, "op")->valuestring, "changed");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(changes->child, "type")->valuestring, "region");
    CU_ASSERT_STRING_EQUAL(
        cJSON_GetObjectItem(cJSON_GetObjectItem(changes->child, "before"), "name")->valuestring,
        "EMEA");
    CU_ASSERT_STRING_EQUAL(
        cJSON_GetObjectItem(cJSON_GetObjectItem(changes->child, "after"), "name")->valuestring,
        "Europe");
    cJSON_Delete(out);
    store_close(s);
}

/* --- data ------------------------------------------------------------------ */

static void test_sql_metacharacters(void)
{
    store *s = fresh();
    const char *names[] = {"Robert'); DROP TABLE regions;--", "\"quoted\" % _ \\ ?1 :x @y $z",
                           "ÉMEA – ü 東京", "a' OR '1'='1"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        cJSON *in = cJSON_CreateObject(), *out = NULL;
        cJSON_AddStringToObject(in, "name", names[i]);
        CU_ASSERT_EQUAL_FATAL(store_object_create(s, STORE_REGION, in, names[i], &out), STORE_OK);
        int64_t id = (int64_t)cJSON_GetObjectItem(out, "id")->valuedouble;
        cJSON_Delete(out);
        CU_ASSERT_EQUAL_FATAL(store_object_get(s, STORE_REGION, id, &out), STORE_OK);
        CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(out, "name")->valuestring, names[i]);
        cJSON_Delete(out);
        /* Once stored, the same text is a duplicate (not a pattern). */
        CU_ASSERT_EQUAL(store_object_create(s, STORE_REGION, in, "tester", NULL), STORE_ECONFLICT);
        cJSON_Delete(in);
        cJSON *a = last_audit(s);
        CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(a, "actor")->valuestring, names[i]);
        cJSON_Delete(a);
    }
    cJSON *all = NULL;
    CU_ASSERT_EQUAL(store_object_list(s, STORE_REGION, &all), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(all), 4);
    cJSON_Delete(all);
    /* A comment and a user name carry them too. */
    cJSON *in = J("{\"scope\": \"global\", \"kind\": \"skype\", \"action\": \"block\", "
                  "\"comment\": \"'; DELETE FROM rules; --\"}"),
          *out = NULL;
    CU_ASSERT_EQUAL(store_object_create(s, STORE_RULE, in, "tester", &out), STORE_OK);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(out, "comment")->valuestring,
                           "'; DELETE FROM rules; --");
    cJSON_Delete(in);
    cJSON_Delete(out);
    in = J("{\"name\": \"g\", \"sources\": [\"10.0.0.0/8\"], \"users\": [\"o'brien\", "
           "\"x\\\"); --\"]}");
    CU_ASSERT_EQUAL(store_object_create(s, STORE_GROUP, in, "tester", &out), STORE_OK);
    CU_ASSERT_TRUE(
        cJSON_Compare(cJSON_GetObjectItem(in, "users"), cJSON_GetObjectItem(out, "users"), true));
    cJSON_Delete(in);
    cJSON_Delete(out);
    store_close(s);
}

static void test_tokens(void)
{
    store *s = fresh();
    int64_t admin = 0;
    char *tok = NULL;
    cJSON *row = NULL;
    store_principal p;
    CU_ASSERT_EQUAL_FATAL(store_user_find(s, "admin", &admin), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(
        store_token_create(s, admin, STORE_ROLE_OPERATOR, "ci job", "tester", &tok, &row),
        STORE_OK);
    CU_ASSERT_EQUAL(strncmp(tok, "pct_", 4), 0);
    CU_ASSERT_EQUAL(strlen(tok), 4 + 64);
    int64_t id = (int64_t)cJSON_GetObjectItem(row, "id")->valuedouble;
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(row, "label")->valuestring, "ci job");
    cJSON_Delete(row);

    CU_ASSERT_EQUAL(store_token_verify(s, tok, &p), STORE_OK);
    CU_ASSERT_EQUAL(p.user_id, admin);
    CU_ASSERT_EQUAL(p.token_id, id);
    CU_ASSERT_STRING_EQUAL(p.user, "admin");
    CU_ASSERT_EQUAL(p.role, STORE_ROLE_OPERATOR);

    /* A wrong token, one character off, and an empty one. */
    char *wrong = strdup(tok);
    wrong[10] = wrong[10] == 'a' ? 'b' : 'a';
    CU_ASSERT_EQUAL(store_token_verify(s, wrong, &p), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(p.role, STORE_ROLE_NONE);
    CU_ASSERT_EQUAL(store_token_verify(s, "", &p), STORE_ENOTFOUND);
    free(wrong);

    /* Only the hash is stored: the list shows no secret, and the last use. */
    cJSON *list = NULL;
    CU_ASSERT_EQUAL_FATAL(store_token_list(s, &list), STORE_OK);
    char *txt = cJSON_PrintUnformatted(list);
    CU_ASSERT_PTR_NULL(strstr(txt, tok + 4));
    CU_ASSERT_TRUE(cJSON_IsString(cJSON_GetObjectItem(list->child, "last_used_at")));
    cJSON_free(txt);
    cJSON_Delete(list);

    /* Revoked: refused like an unknown token. */
    CU_ASSERT_EQUAL(store_token_revoke(s, id, "tester"), STORE_OK);
    CU_ASSERT_EQUAL(store_token_verify(s, tok, &p), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(store_token_revoke(s, 999, "tester"), STORE_ENOTFOUND);
    cJSON *a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(a, "action")->valuestring, "revoke");
    CU_ASSERT_TRUE(
        cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(a, "before"), "revoked_at")));
    CU_ASSERT_TRUE(
        cJSON_IsString(cJSON_GetObjectItem(cJSON_GetObjectItem(a, "after"), "revoked_at")));
    cJSON_Delete(a);
    explicit_bzero(tok, strlen(tok));
    free(tok);

    /* An operator's chosen token (PORTCULLIS_ADMIN_TOKEN), once. */
    const char *chosen = "my-very-own-admin-token-of-40-characters";
    CU_ASSERT_EQUAL(store_token_import(s, admin, STORE_ROLE_ADMIN, "env", chosen, "tester", NULL),
                    STORE_OK);
    CU_ASSERT_EQUAL(store_token_import(s, admin, STORE_ROLE_ADMIN, "env", chosen, "tester", NULL),
                    STORE_ECONFLICT);
    CU_ASSERT_EQUAL(store_token_import(s, admin, STORE_ROLE_ADMIN, "env", "short", "tester", NULL),
                    STORE_EINVALID);
    CU_ASSERT_EQUAL(store_token_verify(s, chosen, &p), STORE_OK);
    CU_ASSERT_EQUAL(p.role, STORE_ROLE_ADMIN);

    /* A token cannot outrank its user; a user's tokens go with the user. */
    cJSON *in = J("{\"name\": \"viewer1\", \"role\": \"viewer\"}"), *u = NULL;
    CU_ASSERT_EQUAL_FATAL(store_user_create(s, in, "tester", &u), STORE_OK);
    int64_t vid = (int64_t)cJSON_GetObjectItem(u, "id")->valuedouble;
    CU_ASSERT_EQUAL(store_token_create(s, vid, STORE_ROLE_ADMIN, NULL, "tester", &tok, NULL),
                    STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(store_error_field(s), "role");
    CU_ASSERT_PTR_NULL(tok);
    CU_ASSERT_EQUAL_FATAL(store_token_create(s, vid, STORE_ROLE_VIEWER, NULL, "tester", &tok, NULL),
                          STORE_OK);
    CU_ASSERT_EQUAL(store_token_verify(s, tok, &p), STORE_OK);
    CU_ASSERT_EQUAL(store_user_delete(s, vid, "tester"), STORE_OK);
    CU_ASSERT_EQUAL(store_token_verify(s, tok, &p), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(store_user_delete(s, admin, "tester"), STORE_ECONFLICT); /* the last admin */
    free(tok);
    cJSON_Delete(in);
    cJSON_Delete(u);
    store_close(s);
}

/* --- events ---------------------------------------------------------------- */

/* A batch of events seq first..last of one node, times 1 s apart, every
 * third at the same time as the one before. */
static cJSON *event_batch(int first, int last, const char *type)
{
    cJSON *arr = cJSON_CreateArray();
    for (int i = first; i <= last; i++) {
        char t[64];
        int sec = i - (i % 3 == 0);
        snprintf(t, sizeof(t), "2026-11-24T10:%02d:%02d.250Z", sec / 60, sec % 60);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "seq", i);
        cJSON_AddStringToObject(e, "time", t);
        cJSON_AddStringToObject(e, "type", type);
        cJSON_AddStringToObject(e, "reason", "blocked-domain");
        cJSON_AddStringToObject(e, "detail", "host www.skype.com matches skype.com (list skype)");
        cJSON_AddStringToObject(e, "source", "10.1.2.3");
        cJSON_AddNumberToObject(e, "source_port", 50000 + i);
        cJSON_AddStringToObject(e, "destination", "www.skype.com");
        cJSON_AddNullToObject(e, "destination_address");
        cJSON_AddNumberToObject(e, "port", 443);
        cJSON_AddStringToObject(e, "protocol", "tls");
        cJSON_AddStringToObject(e, "group", "defaults");
        cJSON_AddNumberToObject(e, "policy_version", 7);
        cJSON_AddNumberToObject(e, "bytes_up", 517);
        cJSON_AddNumberToObject(e, "bytes_down", 0);
        cJSON_AddStringToObject(e, "field_from_a_newer_node", "ignored");
        cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

static void test_events_at_most_once(void)
{
    store *s = fresh();
    char txt[256];
    size_t n = 99;
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    int64_t o = create(s, STORE_OFFICE, txt);
    snprintf(txt, sizeof(txt), "{\"name\": \"gw1\", \"office_id\": %lld}", (long long)o);
    create(s, STORE_NODE, txt);

    cJSON *b = event_batch(1, 3, "block");
    CU_ASSERT_EQUAL(store_events_insert(s, "gw1", b, &n), STORE_OK);
    CU_ASSERT_EQUAL(n, 3);
    /* The same batch again (the ack was lost): nothing new. */
    CU_ASSERT_EQUAL(store_events_insert(s, "gw1", b, &n), STORE_OK);
    CU_ASSERT_EQUAL(n, 0);
    cJSON_Delete(b);
    b = event_batch(3, 4, "block");
    CU_ASSERT_EQUAL(store_events_insert(s, "gw1", b, &n), STORE_OK);
    CU_ASSERT_EQUAL(n, 1);
    cJSON_Delete(b);

    store_event_query q = {.limit = 100};
    cJSON *page = NULL;
    CU_ASSERT_EQUAL_FATAL(store_events_query(s, &q, &page), STORE_OK);
    cJSON *evs = cJSON_GetObjectItem(page, "events");
    CU_ASSERT_EQUAL(cJSON_GetArraySize(evs), 4);
    cJSON *e = evs->child; /* newest first: seq 4 */
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(e, "seq")->valuedouble, 4);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(e, "time")->valuestring, "2026-11-24T10:00:04.250Z");
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(e, "office_id")->valuedouble, (double)o);
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(e, "region_id")->valuedouble, (double)r);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(e, "verdict")->valuestring, "blocked");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(e, "group")->valuestring, "defaults");
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(e, "destination_address")));
    CU_ASSERT_PTR_NULL(cJSON_GetObjectItem(e, "field_from_a_newer_node"));
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(page, "next_cursor")));
    cJSON_Delete(page);

    /* A malformed event refuses its whole batch, naming it. */
    b = event_batch(5, 7, "block");
    cJSON_ReplaceItemInObject(cJSON_GetArrayItem(b, 1), "time", cJSON_CreateString("yesterday"));
    CU_ASSERT_EQUAL(store_events_insert(s, "gw1", b, &n), STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(store_error_field(s), "[1].time");
    CU_ASSERT_EQUAL(store_events_insert(s, "gw-unknown", b, &n), STORE_ENOTFOUND);
    cJSON_Delete(b);
    CU_ASSERT_EQUAL_FATAL(store_events_query(s, &q, &page), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(page, "events")), 4);
    cJSON_Delete(page);
    store_close(s);
}

static void test_events_cursor(void)
{
    store *s = fresh();
    char txt[256];
    size_t n = 0;
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    int64_t paris = create(s, STORE_OFFICE, txt);
    snprintf(txt, sizeof(txt), "{\"name\": \"Lyon\", \"region_id\": %lld}", (long long)r);
    int64_t lyon = create(s, STORE_OFFICE, txt);
    snprintf(txt, sizeof(txt), "{\"name\": \"gw-paris\", \"office_id\": %lld}", (long long)paris);
    create(s, STORE_NODE, txt);
    snprintf(txt, sizeof(txt), "{\"name\": \"gw-lyon\", \"office_id\": %lld}", (long long)lyon);
    create(s, STORE_NODE, txt);
    cJSON *b = event_batch(1, 25, "block");
    CU_ASSERT_EQUAL(store_events_insert(s, "gw-paris", b, &n), STORE_OK);
    CU_ASSERT_EQUAL(n, 25);
    cJSON_Delete(b);
    b = event_batch(1, 5, "exception");
    CU_ASSERT_EQUAL(store_events_insert(s, "gw-lyon", b, &n), STORE_OK);
    CU_ASSERT_EQUAL(n, 5);
    cJSON_Delete(b);

    /* Pages of 10 over Paris's 25: 10, 10, 5, each event once, newest
     * first, even where times are equal. */
    store_event_query q = {.office_id = paris, .limit = 10};
    char cursor[64] = "";
    int seen[26] = {0}, pages = 0, total = 0;
    int prev_seq = 1 << 30;
    for (;;) {
        cJSON *page = NULL;
        q.cursor = cursor[0] ? cursor : NULL;
        CU_ASSERT_EQUAL_FATAL(store_events_query(s, &q, &page), STORE_OK);
        cJSON *evs = cJSON_GetObjectItem(page, "events");
        pages++;
        CU_ASSERT_EQUAL(cJSON_GetArraySize(evs), pages < 3 ? 10 : 5);
        for (cJSON *e = evs->child; e; e = e->next) {
            int seq = (int)cJSON_GetObjectItem(e, "seq")->valuedouble;
            CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(e, "node")->valuestring, "gw-paris");
            CU_ASSERT_TRUE(seq >= 1 && seq <= 25);
            if (seq >= 1 && seq <= 25)
                seen[seq]++;
            /* Later seq, later or equal time: descending seq is the order. */
            CU_ASSERT_TRUE(seq < prev_seq);
            prev_seq = seq;
            total++;
        }
        cJSON *next = cJSON_GetObjectItem(page, "next_cursor");
        if (cJSON_IsNull(next)) {
            cJSON_Delete(page);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", next->valuestring);
        cJSON_Delete(page);
        CU_ASSERT_FATAL(pages < 5);
    }
    CU_ASSERT_EQUAL(pages, 3);
    CU_ASSERT_EQUAL(total, 25);
    for (int i = 1; i <= 25; i++)
        CU_ASSERT_EQUAL(seen[i], 1);

    /* Filters: region (both offices), type, time range. */
    cJSON *page = NULL;
    store_event_query qr = {.region_id = r, .limit = 100};
    CU_ASSERT_EQUAL_FATAL(store_events_query(s, &qr, &page), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(page, "events")), 30);
    cJSON_Delete(page);
    store_event_query qt = {.type = "exception"};
    CU_ASSERT_EQUAL_FATAL(store_events_query(s, &qt, &page), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(page, "events")), 5);
    cJSON_Delete(page);
    /* 10:00:10.000 to 10:00:20.000 of Paris: seconds 10..19 hold seq 10
     * (time 9 s), 11, 12 (11 s), 13..19, 21 (time 20 s) is out: seq 11..20
     * except those at 9 s or 20 s. */
    store_event_query qtime = {
        .office_id = paris, .from_ms = 1795514410000LL, .to_ms = 1795514420000LL, .limit = 100};
    CU_ASSERT_EQUAL_FATAL(store_events_query(s, &qtime, &page), STORE_OK);
    int in_range = 0;
    for (int i = 1; i <= 25; i++) {
        int sec = i - (i % 3 == 0);
        in_range += sec >= 10 && sec < 20;
    }
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(page, "events")), in_range);
    cJSON_Delete(page);
    store_event_query bad = {.cursor = "12;DROP"};
    CU_ASSERT_EQUAL(store_events_query(s, &bad, &page), STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(store_error_field(s), "cursor");
    store_close(s);
}

static void test_node_state(void)
{
    store *s = fresh();
    char txt[256];
    int64_t r = create(s, STORE_REGION, "{\"name\": \"EMEA\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"Paris\", \"region_id\": %lld}", (long long)r);
    int64_t o = create(s, STORE_OFFICE, txt);
    snprintf(txt, sizeof(txt), "{\"name\": \"gw1\", \"office_id\": %lld}", (long long)o);
    int64_t id = create(s, STORE_NODE, txt);
    int64_t revs = count_rows(s, "revisions");
    CU_ASSERT_EQUAL(store_node_seen(s, id, 1795514410000LL), STORE_OK);
    CU_ASSERT_EQUAL(store_node_set_versions(s, id, 5, 6, "nft: table busy"), STORE_OK);
    CU_ASSERT_EQUAL(store_node_set_enrollment(s, id, "enrolled", "tester"), STORE_OK);
    CU_ASSERT_EQUAL(store_node_set_enrollment(s, id, "gone", "tester"), STORE_EINVALID);
    CU_ASSERT_EQUAL(store_node_seen(s, 999, 1), STORE_ENOTFOUND);
    /* State is not policy: no revision. */
    CU_ASSERT_EQUAL(count_rows(s, "revisions"), revs);
    cJSON *n = NULL;
    CU_ASSERT_EQUAL_FATAL(store_node_find(s, "gw1", &n), STORE_OK);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(n, "enrollment")->valuestring, "enrolled");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(n, "last_seen")->valuestring,
                           "2026-11-24T10:00:10.000Z");
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(n, "enforced_version")->valuedouble, 5);
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(n, "pending_version")->valuedouble, 6);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(n, "last_error")->valuestring, "nft: table busy");
    cJSON_Delete(n);
    CU_ASSERT_EQUAL(store_node_set_versions(s, id, 6, 0, NULL), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(store_object_get(s, STORE_NODE, id, &n), STORE_OK);
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(n, "pending_version")));
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(n, "last_error")));
    cJSON_Delete(n);
    CU_ASSERT_EQUAL(store_node_find(s, "nope", &n), STORE_ENOTFOUND);
    store_close(s);
}

/* --- enrollment, the link, rollout ------------------------------------------- */

/* A region, an office and a node named name in it; returns the node id. */
static int64_t make_node(store *s, const char *name, int64_t *office_out)
{
    char txt[256];
    static int n;
    snprintf(txt, sizeof(txt), "{\"name\": \"R%d\"}", ++n);
    int64_t r = create(s, STORE_REGION, txt);
    snprintf(txt, sizeof(txt), "{\"name\": \"O%d\", \"region_id\": %lld}", n, (long long)r);
    int64_t o = create(s, STORE_OFFICE, txt);
    snprintf(txt, sizeof(txt), "{\"name\": \"%s\", \"office_id\": %lld}", name, (long long)o);
    if (office_out)
        *office_out = o;
    return create(s, STORE_NODE, txt);
}

typedef struct issue_arg {
    int calls;
    bool fail;
    char fp[65];
} issue_arg;

static int fake_issue(void *arg, int64_t node_id, const char *node_name, char fingerprint[65],
                      char *err, size_t errlen)
{
    issue_arg *a = arg;
    a->calls++;
    if (a->fail) {
        snprintf(err, errlen, "the request's signature does not verify");
        return -1;
    }
    snprintf(fingerprint, 65, "%s", a->fp);
    return 0;
}

static void test_enrollment(void)
{
    store *s = fresh();
    int64_t id = make_node(s, "gw-enroll", NULL);
    char *secret = NULL;
    cJSON *tok = NULL;
    int64_t revs = count_rows(s, "revisions");
    CU_ASSERT_EQUAL(store_enroll_token_create(s, id, 10, "tester", &secret, NULL), STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(store_error_field(s), "ttl_seconds");
    CU_ASSERT_EQUAL(store_enroll_token_create(s, 999, 600, "tester", &secret, NULL),
                    STORE_ENOTFOUND);
    CU_ASSERT_EQUAL_FATAL(store_enroll_token_create(s, id, 600, "tester", &secret, &tok), STORE_OK);
    CU_ASSERT_EQUAL(strlen(secret), 64);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(tok, "state")->valuestring, "valid");
    cJSON_Delete(tok);
    /* Not policy: no revision; audited. */
    CU_ASSERT_EQUAL(count_rows(s, "revisions"), revs);
    cJSON *a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(a, "action")->valuestring, "enrollment-token");
    cJSON_Delete(a);

    issue_arg ia = {.fp = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"};
    store_enroll_why why;
    int64_t now = 1795514410000LL;
    /* A failing issuer leaves the token unused. */
    ia.fail = true;
    CU_ASSERT_EQUAL(store_enroll_redeem(s, secret, now, fake_issue, &ia, &why), STORE_ERR);
    CU_ASSERT_STRING_EQUAL(store_error_message(s), "the request's signature does not verify");
    ia.fail = false;
    CU_ASSERT_EQUAL(store_enroll_redeem(s, "nope", now, fake_issue, &ia, &why), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(why, STORE_ENROLL_UNKNOWN);
    CU_ASSERT_EQUAL(store_enroll_redeem(s, secret, now, fake_issue, &ia, &why), STORE_OK);
    CU_ASSERT_EQUAL(why, STORE_ENROLL_OK);
    CU_ASSERT_EQUAL(ia.calls, 2);
    CU_ASSERT_EQUAL(store_enroll_redeem(s, secret, now, fake_issue, &ia, &why), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(why, STORE_ENROLL_USED);
    CU_ASSERT_STRING_EQUAL(store_enroll_why_name(why), "token-used");
    CU_ASSERT_EQUAL(ia.calls, 2);

    store_node_identity ni;
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(s, "gw-enroll", &ni), STORE_OK);
    CU_ASSERT(ni.enrolled && ni.id == id);
    CU_ASSERT_STRING_EQUAL(ni.fingerprint, ia.fp);
    CU_ASSERT_EQUAL(store_node_identity_get(s, "nope", &ni), STORE_ENOTFOUND);

    /* Expired: by time, and by the operator. */
    free(secret);
    CU_ASSERT_EQUAL_FATAL(store_enroll_token_create(s, id, 60, "tester", &secret, NULL), STORE_OK);
    CU_ASSERT_EQUAL(
        store_enroll_redeem(s, secret, now + 400LL * 86400 * 1000, fake_issue, &ia, &why),
        STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(why, STORE_ENROLL_EXPIRED);
    size_t n = 0;
    CU_ASSERT_EQUAL(store_enroll_token_expire(s, id, "tester", &n), STORE_OK);
    CU_ASSERT_EQUAL(n, 1);
    /* The operator's expiry is now: any later redemption is refused. */
    CU_ASSERT_EQUAL(
        store_enroll_redeem(s, secret, (int64_t)time(NULL) * 1000 + 1000, fake_issue, &ia, &why),
        STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(why, STORE_ENROLL_EXPIRED);
    free(secret);
    cJSON *list = NULL;
    CU_ASSERT_EQUAL_FATAL(store_enroll_token_list(s, id, &list), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(list), 2);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "state")->valuestring,
                           "expired");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 1), "state")->valuestring,
                           "used");
    char *txt = cJSON_PrintUnformatted(list);
    CU_ASSERT_PTR_NULL(strstr(txt, "hash"));
    free(txt);
    cJSON_Delete(list);

    /* Revoking expires the tokens not used yet. */
    CU_ASSERT_EQUAL_FATAL(store_enroll_token_create(s, id, 600, "tester", &secret, NULL), STORE_OK);
    CU_ASSERT_EQUAL(store_node_revoke(s, id, "tester"), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(s, "gw-enroll", &ni), STORE_OK);
    CU_ASSERT_FALSE(ni.enrolled);
    CU_ASSERT_EQUAL(
        store_enroll_redeem(s, secret, (int64_t)time(NULL) * 1000 + 1000, fake_issue, &ia, &why),
        STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(why, STORE_ENROLL_EXPIRED);
    free(secret);
    store_close(s);
}

static void test_link_apply(void)
{
    store *s = fresh();
    int64_t id = make_node(s, "gw-link", NULL);
    cJSON *good = J("[{\"seq\": 1, \"time\": \"2026-11-24T10:00:10.000Z\", \"type\": \"block\", "
                    "\"verdict\": \"blocked\", \"reason\": \"blocked-domain\"}, {\"seq\": 2, "
                    "\"time\": \"2026-11-24T10:00:11.000Z\", \"type\": \"block\", \"verdict\": "
                    "\"blocked\", \"reason\": \"tls-certificate\"}]");
    cJSON *bad = J("[{\"seq\": 3, \"time\": \"yesterday\", \"type\": \"block\", \"verdict\": "
                   "\"blocked\", \"reason\": \"x\"}, {\"seq\": 4, \"time\": "
                   "\"2026-11-24T10:00:12.000Z\", \"type\": \"block\", \"reason\": "
                   "\"http-request-line\", \"port\": 0, \"source_port\": null}]");
    store_link_op ops[5] = {
        {.kind = STORE_LINK_HELLO, .node_id = id, .time_ms = 1000, .software = "node 1"},
        {.kind = STORE_LINK_EVENTS, .node = "gw-link", .events = good, .dropped = 4},
        {.kind = STORE_LINK_EVENTS, .node = "gw-link", .events = bad},
        {.kind = STORE_LINK_VERSIONS, .node_id = id, .enforced = 3, .pending = 4},
        {.kind = STORE_LINK_STATS, .node_id = id, .time_ms = 2000, .stats = "{\"accepted\": 5}"},
    };
    CU_ASSERT_EQUAL_FATAL(store_link_apply(s, ops, 5), STORE_OK);
    CU_ASSERT_EQUAL(ops[0].rc, STORE_OK);
    CU_ASSERT_EQUAL(ops[1].rc, STORE_OK);
    CU_ASSERT_EQUAL(ops[1].inserted, 2);
    CU_ASSERT_EQUAL(ops[1].high_seq, 2);
    /* The malformed event is skipped and counted, saying where; the one
     * after it (an unknown port, 0 from older nodes) is stored. */
    CU_ASSERT_EQUAL(ops[2].rc, STORE_OK);
    CU_ASSERT_EQUAL(ops[2].rejected, 1);
    CU_ASSERT_EQUAL(ops[2].inserted, 1);
    CU_ASSERT_EQUAL(ops[2].high_seq, 4);
    CU_ASSERT_PTR_NOT_NULL(strstr(ops[2].error, "[0].time"));
    CU_ASSERT_EQUAL(ops[3].rc, STORE_OK);
    CU_ASSERT_EQUAL(ops[4].rc, STORE_OK);
    /* The same batch again: stored once. */
    store_link_op again = {.kind = STORE_LINK_EVENTS, .node = "gw-link", .events = good};
    CU_ASSERT_EQUAL(store_link_apply(s, &again, 1), STORE_OK);
    CU_ASSERT_EQUAL(again.inserted, 0);
    CU_ASSERT_EQUAL(again.high_seq, 4);
    cJSON *n = NULL;
    CU_ASSERT_EQUAL_FATAL(store_object_get(s, STORE_NODE, id, &n), STORE_OK);
    CU_ASSERT_TRUE(cJSON_IsTrue(cJSON_GetObjectItem(n, "connected")));
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(n, "software")->valuestring, "node 1");
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(n, "events_seq")->valuedouble, 4);
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(n, "events_dropped")->valuedouble, 4);
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(n, "enforced_version")->valuedouble, 3);
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(cJSON_GetObjectItem(n, "stats"), "accepted")->valuedouble,
                    5);
    cJSON_Delete(n);
    store_event_query q = {.node = "gw-link"};
    cJSON *page = NULL;
    CU_ASSERT_EQUAL_FATAL(store_events_query(s, &q, &page), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(page, "events")), 3);
    cJSON_Delete(page);
    /* The live tail: oldest first after an id, filtered. */
    cJSON *tail = NULL;
    store_event_query none = {0}, other = {.node = "someone-else"};
    CU_ASSERT_EQUAL_FATAL(store_events_since(s, &none, 0, 0, 10, &tail), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(tail), 3);
    int64_t first = (int64_t)cJSON_GetObjectItem(cJSON_GetArrayItem(tail, 0), "id")->valuedouble;
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(cJSON_GetArrayItem(tail, 0), "seq")->valuedouble, 1);
    cJSON_Delete(tail);
    CU_ASSERT_EQUAL_FATAL(store_events_since(s, &none, first, 0, 10, &tail), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(tail), 2);
    cJSON_Delete(tail);
    /* An upper bound. */
    CU_ASSERT_EQUAL_FATAL(store_events_since(s, &none, 0, first, 10, &tail), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(tail), 1);
    cJSON_Delete(tail);
    CU_ASSERT_EQUAL_FATAL(store_events_since(s, &other, 0, 0, 10, &tail), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(tail), 0);
    cJSON_Delete(tail);
    int64_t last = 0;
    CU_ASSERT_EQUAL(store_events_last_id(s, &last), STORE_OK);
    CU_ASSERT_EQUAL(last, first + 2);
    CU_ASSERT_EQUAL(store_link_reset(s), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(store_object_get(s, STORE_NODE, id, &n), STORE_OK);
    CU_ASSERT_FALSE(cJSON_IsTrue(cJSON_GetObjectItem(n, "connected")));
    cJSON_Delete(n);
    /* Retention by count keeps the newest. */
    size_t del = 0;
    CU_ASSERT_EQUAL(store_events_prune(s, 0, 1, 0, &del), STORE_OK);
    CU_ASSERT_EQUAL(del, 2);
    CU_ASSERT_EQUAL_FATAL(store_events_query(s, &q, &page), STORE_OK);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(page, "events")), 1);
    CU_ASSERT_EQUAL(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(page, "events"), 0), "seq")
            ->valuedouble,
        4);
    cJSON_Delete(page);
    /* The high-water mark survives retention: an old seq stays old. */
    CU_ASSERT_EQUAL(store_events_prune(s, 1LL << 62, 0, 0, &del), STORE_OK);
    CU_ASSERT_EQUAL(del, 1);
    CU_ASSERT_EQUAL(store_link_apply(s, &again, 1), STORE_OK);
    CU_ASSERT_EQUAL(again.high_seq, 4);
    /* A node deleted and made again under the same name carries on above
     * the events stored under that name, so none of its own is taken for
     * a duplicate. */
    cJSON *seven = J("[{\"seq\": 7, \"time\": 1, \"type\": \"block\", \"reason\": \"x\"}]");
    store_link_op op7 = {.kind = STORE_LINK_EVENTS, .node = "gw-link", .events = seven};
    CU_ASSERT_EQUAL(store_link_apply(s, &op7, 1), STORE_OK);
    CU_ASSERT_EQUAL(op7.inserted, 1);
    cJSON_Delete(seven);
    CU_ASSERT_EQUAL(store_object_delete(s, STORE_NODE, id, 0, "tester"), STORE_OK);
    int64_t o2 = 0;
    make_node(s, "gw-other", &o2);
    char txt[128];
    snprintf(txt, sizeof(txt), "{\"name\": \"gw-link\", \"office_id\": %lld}", (long long)o2);
    create(s, STORE_NODE, txt);
    store_node_identity ni;
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(s, "gw-link", &ni), STORE_OK);
    CU_ASSERT_NOT_EQUAL(ni.id, id);
    CU_ASSERT_EQUAL(ni.events_seq, 7);
    cJSON_Delete(good);
    cJSON_Delete(bad);
    store_close(s);
}

static void test_rollout(void)
{
    store *s = fresh();
    int64_t o1 = 0, o2 = 0;
    make_node(s, "gw-a", &o1);
    make_node(s, "gw-b", &o2);
    int64_t newest = 0;
    CU_ASSERT_EQUAL_FATAL(store_revision_current(s, &newest), STORE_OK);
    store_rollout_plan p;
    CU_ASSERT_EQUAL_FATAL(store_rollout_plan_get(s, &p), STORE_OK);
    CU_ASSERT(p.released == newest && p.canary == 0 && p.ncanary == 0);
    store_rollout_plan_free(&p);
    cJSON *offices = J("[1]"), *out = NULL;
    /* A canary needs manual mode. */
    CU_ASSERT_EQUAL(store_rollout_canary(s, 0, offices, NULL, "tester", NULL), STORE_ECONFLICT);
    cJSON_Delete(offices);
    CU_ASSERT_EQUAL(store_rollout_set_mode(s, "sometimes", "tester", NULL), STORE_EINVALID);
    CU_ASSERT_EQUAL(store_rollout_set_mode(s, "manual", "tester", NULL), STORE_OK);
    int64_t held = newest;
    create(s, STORE_REGION, "{\"name\": \"later\"}");
    CU_ASSERT_EQUAL_FATAL(store_revision_current(s, &newest), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(store_rollout_plan_get(s, &p), STORE_OK);
    CU_ASSERT_EQUAL(p.released, held);
    store_rollout_plan_free(&p);
    char txt[64];
    snprintf(txt, sizeof(txt), "[%lld]", (long long)o2);
    offices = J(txt);
    cJSON *bad = J("[999]");
    CU_ASSERT_EQUAL(store_rollout_canary(s, 0, bad, NULL, "tester", NULL), STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(store_error_field(s), "offices[0]");
    CU_ASSERT_EQUAL(store_rollout_canary(s, newest + 5, offices, NULL, "tester", NULL),
                    STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(store_rollout_canary(s, 0, offices, NULL, "tester", &out), STORE_OK);
    CU_ASSERT_EQUAL(
        cJSON_GetObjectItem(cJSON_GetObjectItem(out, "canary"), "revision")->valuedouble, newest);
    cJSON_Delete(out);
    CU_ASSERT_EQUAL_FATAL(store_rollout_plan_get(s, &p), STORE_OK);
    CU_ASSERT(p.released == held && p.canary == newest && p.ncanary == 1);
    CU_ASSERT(p.ncanary == 1 && p.canary_offices[0] == o2);
    store_rollout_plan_free(&p);
    CU_ASSERT_EQUAL(store_rollout_promote(s, "tester", NULL), STORE_OK);
    CU_ASSERT_EQUAL(store_rollout_promote(s, "tester", NULL), STORE_ECONFLICT);
    CU_ASSERT_EQUAL_FATAL(store_rollout_plan_get(s, &p), STORE_OK);
    CU_ASSERT(p.released == newest && p.canary == 0);
    store_rollout_plan_free(&p);
    CU_ASSERT_EQUAL(store_rollout_canary(s, 0, offices, NULL, "tester", NULL), STORE_OK);
    CU_ASSERT_EQUAL(store_rollout_abort(s, "tester", NULL), STORE_OK);
    CU_ASSERT_EQUAL(store_rollout_abort(s, "tester", NULL), STORE_ECONFLICT);
    CU_ASSERT_EQUAL(store_rollout_set_mode(s, "auto", "tester", &out), STORE_OK);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(out, "mode")->valuestring, "auto");
    cJSON_Delete(out);
    cJSON *a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(a, "action")->valuestring, "rollout-mode");
    cJSON_Delete(a);
    cJSON_Delete(offices);
    cJSON_Delete(bad);
    store_close(s);
}

/* --- passwords and sessions ------------------------------------------------------ */

/* The audit row's field as a string ("" when absent or null). */
static const char *audit_str(const cJSON *a, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(a, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void test_password_hash(void)
{
    char *h = NULL, *h2 = NULL;
    CU_ASSERT_EQUAL_FATAL(store_password_hash("correct horse battery", &h), 0);
    /* scrypt$N$r$p$salt(16 bytes)$hash(32 bytes) */
    CU_ASSERT_EQUAL(strncmp(h, "scrypt$32768$8$1$", 17), 0);
    CU_ASSERT_EQUAL(strlen(h), 17 + 32 + 1 + 64);
    CU_ASSERT_EQUAL(h[17 + 32], '$');
    CU_ASSERT_EQUAL(strspn(h + 17, "0123456789abcdef"), 32);
    CU_ASSERT_EQUAL(strspn(h + 17 + 33, "0123456789abcdef"), 64);
    CU_ASSERT_TRUE(store_password_verify("correct horse battery", h));
    CU_ASSERT_FALSE(store_password_verify("correct horse batterz", h));
    CU_ASSERT_FALSE(store_password_verify("", h));
    /* A new salt each time: the same password hashes differently. */
    CU_ASSERT_EQUAL_FATAL(store_password_hash("correct horse battery", &h2), 0);
    CU_ASSERT_STRING_NOT_EQUAL(h, h2);
    CU_ASSERT_TRUE(store_password_verify("correct horse battery", h2));
    /* Malformed or hostile stored hashes never match. */
    CU_ASSERT_FALSE(store_password_verify("correct horse battery", NULL));
    CU_ASSERT_FALSE(store_password_verify("correct horse battery", ""));
    CU_ASSERT_FALSE(
        store_password_verify("x", "scrypt$1073741824$8$1$00$0000000000000000000000000000000000"));
    CU_ASSERT_FALSE(store_password_verify("x", "bcrypt$32768$8$1$00$00"));
    h[strlen(h) - 1] = 'g';
    CU_ASSERT_FALSE(store_password_verify("correct horse battery", h));
    free(h);
    free(h2);
}

static void test_user_password(void)
{
    store *s = fresh();
    int64_t admin = 0;
    CU_ASSERT_EQUAL_FATAL(store_user_find(s, "admin", &admin), STORE_OK);
    /* No password yet: cannot sign in. */
    CU_ASSERT_EQUAL(store_user_check_password(s, admin, "anything at all"), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(store_user_set_password(s, admin, "short", 0, "tester"), STORE_EINVALID);
    CU_ASSERT_STRING_EQUAL(store_error_field(s), "password");
    CU_ASSERT_EQUAL(store_user_set_password(s, admin, "tab\there is not text", 0, "tester"),
                    STORE_EINVALID);
    CU_ASSERT_EQUAL(store_user_set_password(s, 999, "a long enough password", 0, "tester"),
                    STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(store_user_set_password(s, admin, "a long enough password", 0, "tester"),
                    STORE_OK);
    CU_ASSERT_EQUAL(store_user_check_password(s, admin, "a long enough password"), STORE_OK);
    CU_ASSERT_EQUAL(store_user_check_password(s, admin, "a long enough passworD"), STORE_ENOTFOUND);
    cJSON *a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(audit_str(a, "action"), "set-password");
    CU_ASSERT_STRING_EQUAL(audit_str(a, "actor"), "tester");
    char *txt = cJSON_PrintUnformatted(a);
    CU_ASSERT_PTR_NULL(strstr(txt, "long enough"));
    free(txt);
    cJSON_Delete(a);
    store_close(s);
}

static void test_sessions(void)
{
    store *s = fresh();
    int64_t admin = 0, t0 = 1700000000000;
    char *tok = NULL, *tok2 = NULL;
    store_session se, got;
    CU_ASSERT_EQUAL_FATAL(store_user_find(s, "admin", &admin), STORE_OK);
    /* Without a password nobody signs in; unknown names and wrong passwords
     * fail alike, and each failure is audited without the password. */
    CU_ASSERT_EQUAL(store_session_signin(s, "admin", "a long enough password", t0, &tok, &se),
                    STORE_ENOTFOUND);
    CU_ASSERT_EQUAL_FATAL(store_user_set_password(s, admin, "a long enough password", 0, "tester"),
                          STORE_OK);
    CU_ASSERT_EQUAL(store_session_signin(s, "admin", "wrong password!!", t0, &tok, &se),
                    STORE_ENOTFOUND);
    char msg_wrong[512];
    snprintf(msg_wrong, sizeof(msg_wrong), "%s", store_error_message(s));
    CU_ASSERT_PTR_NULL(tok);
    cJSON *a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(audit_str(a, "action"), "sign-in-failed");
    CU_ASSERT_STRING_EQUAL(audit_str(a, "actor"), "anonymous");
    CU_ASSERT_STRING_EQUAL(audit_str(a, "object_id"), "admin");
    char *txt = cJSON_PrintUnformatted(a);
    CU_ASSERT_PTR_NULL(strstr(txt, "wrong password"));
    free(txt);
    cJSON_Delete(a);
    CU_ASSERT_EQUAL(store_session_signin(s, "nobody", "a long enough password", t0, &tok, &se),
                    STORE_ENOTFOUND);
    CU_ASSERT_STRING_EQUAL(store_error_message(s), msg_wrong);

    /* Sign in: a 64-hex-digit token and CSRF token; the audit names the user. */
    CU_ASSERT_EQUAL_FATAL(store_session_signin(s, "admin", "a long enough password", t0, &tok, &se),
                          STORE_OK);
    CU_ASSERT_EQUAL(strlen(tok), 64);
    CU_ASSERT_EQUAL(strlen(se.csrf), 64);
    CU_ASSERT_STRING_NOT_EQUAL(tok, se.csrf);
    CU_ASSERT_STRING_EQUAL(se.user, "admin");
    CU_ASSERT_EQUAL(se.role, STORE_ROLE_ADMIN);
    CU_ASSERT_EQUAL(se.expires_at, t0 + STORE_SESSION_IDLE_MS);
    a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(audit_str(a, "action"), "sign-in");
    CU_ASSERT_STRING_EQUAL(audit_str(a, "actor"), "admin");
    cJSON_Delete(a);

    /* Lookup: the same session; a wrong token is not. */
    CU_ASSERT_EQUAL(store_session_lookup(s, tok, t0 + 1000, &got), STORE_OK);
    CU_ASSERT_EQUAL(got.id, se.id);
    CU_ASSERT_STRING_EQUAL(got.csrf, se.csrf);
    CU_ASSERT_STRING_EQUAL(got.user, "admin");
    char wrong[65];
    snprintf(wrong, sizeof(wrong), "%s", tok);
    wrong[5] = wrong[5] == 'a' ? 'b' : 'a';
    CU_ASSERT_EQUAL(store_session_lookup(s, wrong, t0 + 1000, &got), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(got.id, 0);
    CU_ASSERT_EQUAL(store_session_lookup(s, "", t0, &got), STORE_ENOTFOUND);

    /* Idle expiry: used every 11 hours it lives on, up to 7 days after
     * sign-in; 12 idle hours end it. */
    int64_t t = t0;
    for (int i = 0; i < 15; i++) {
        t += 11LL * 3600 * 1000;
        CU_ASSERT_EQUAL(store_session_lookup(s, tok, t, &got), STORE_OK);
    }
    t += 11LL * 3600 * 1000; /* 176 h > 7 days */
    CU_ASSERT_EQUAL(store_session_lookup(s, tok, t, &got), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL_FATAL(
        store_session_signin(s, "admin", "a long enough password", t0, &tok2, &se), STORE_OK);
    CU_ASSERT_EQUAL(store_session_lookup(s, tok2, t0 + STORE_SESSION_IDLE_MS + 1, &got),
                    STORE_ENOTFOUND);
    free(tok2);
    tok2 = NULL;

    /* Sign-out deletes it; a second time there is nothing to delete. */
    CU_ASSERT_EQUAL_FATAL(
        store_session_signin(s, "admin", "a long enough password", t0, &tok2, &se), STORE_OK);
    CU_ASSERT_EQUAL(store_session_delete(s, se.id, "admin"), STORE_OK);
    a = last_audit(s);
    CU_ASSERT_STRING_EQUAL(audit_str(a, "action"), "sign-out");
    cJSON_Delete(a);
    CU_ASSERT_EQUAL(store_session_lookup(s, tok2, t0 + 1, &got), STORE_ENOTFOUND);
    CU_ASSERT_EQUAL(store_session_delete(s, se.id, "admin"), STORE_ENOTFOUND);
    free(tok2);
    tok2 = NULL;

    /* A new password ends the user's other sessions, but not the one kept. */
    store_session keep;
    CU_ASSERT_EQUAL_FATAL(
        store_session_signin(s, "admin", "a long enough password", t0, &tok2, &keep), STORE_OK);
    free(tok);
    tok = NULL;
    CU_ASSERT_EQUAL_FATAL(store_session_signin(s, "admin", "a long enough password", t0, &tok, &se),
                          STORE_OK);
    CU_ASSERT_EQUAL(store_user_set_password(s, admin, "another good password", keep.id, "admin"),
                    STORE_OK);
    CU_ASSERT_EQUAL(store_session_lookup(s, tok2, t0 + 1, &got), STORE_OK);
    CU_ASSERT_EQUAL(store_session_lookup(s, tok, t0 + 1, &got), STORE_ENOTFOUND);
    free(tok);
    tok = NULL;
    CU_ASSERT_EQUAL(store_session_signin(s, "admin", "a long enough password", t0, &tok, &se),
                    STORE_ENOTFOUND);

    /* Deleting the user ends its sessions. */
    cJSON *u = J("{\"name\":\"vera\",\"role\":\"viewer\"}"), *row = NULL;
    CU_ASSERT_EQUAL_FATAL(store_user_create(s, u, "tester", &row), STORE_OK);
    int64_t vera = (int64_t)cJSON_GetObjectItem(row, "id")->valuedouble;
    CU_ASSERT_EQUAL(store_user_set_password(s, vera, "vera's password!", 0, "tester"), STORE_OK);
    free(tok);
    tok = NULL;
    CU_ASSERT_EQUAL_FATAL(store_session_signin(s, "vera", "vera's password!", t0, &tok, &se),
                          STORE_OK);
    CU_ASSERT_EQUAL(se.role, STORE_ROLE_VIEWER);
    CU_ASSERT_EQUAL(store_user_delete(s, vera, "tester"), STORE_OK);
    CU_ASSERT_EQUAL(store_session_lookup(s, tok, t0 + 1, &got), STORE_ENOTFOUND);
    cJSON_Delete(u);
    cJSON_Delete(row);
    free(tok);
    free(tok2);
    store_close(s);
}

int unit_register(void)
{
    static const unit_case migrations[] = {
        {"new database", test_new_database},
        {"embedded migrations are the files", test_embedded_migrations_are_the_files},
        {"reopen", test_reopen},
        {"newer database refused", test_newer_database_refused},
        {"old database upgraded", test_old_database_upgraded},
        {"firewall settings upgrade", test_firewall_settings_upgrade},
        {"failed migration rolls back", test_failed_migration_rolls_back},
        {"foreign files refused", test_foreign_files_refused},
        {NULL, NULL}};
    static const unit_case constraints[] = {{"unique names", test_unique_names},
                                            {"foreign keys", test_foreign_keys},
                                            {"invalid input", test_invalid_input},
                                            {"sql metacharacters", test_sql_metacharacters},
                                            {NULL, NULL}};
    static const unit_case revisions[] = {
        {"every change is one revision", test_every_change_is_one_revision},
        {"stale etag", test_stale_etag},
        {"dry run", test_dry_run},
        {"model load", test_model_load},
        {"rollback", test_rollback},
        {"revision read", test_revision_read},
        {"history replays", test_history_replays},
        {NULL, NULL}};
    static const unit_case other[] = {{"tokens", test_tokens},
                                      {"events at most once", test_events_at_most_once},
                                      {"events cursor", test_events_cursor},
                                      {"node state", test_node_state},
                                      {"enrollment", test_enrollment},
                                      {"link apply", test_link_apply},
                                      {"rollout", test_rollout},
                                      {NULL, NULL}};
    static const unit_case auth[] = {{"password hash", test_password_hash},
                                     {"user password", test_user_password},
                                     {"sessions", test_sessions},
                                     {NULL, NULL}};
    if (suite_init() != 0)
        return -1;
    atexit(suite_clean);
    if (unit_add_suite("store_migrations", migrations) != 0 ||
        unit_add_suite("store_constraints", constraints) != 0 ||
        unit_add_suite("store_revisions", revisions) != 0 ||
        unit_add_suite("store_other", other) != 0 || unit_add_suite("store_auth", auth) != 0)
        return -1;
    return 0;
}
