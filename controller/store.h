/* store.h - the controller's state in one SQLite file: the policy model
 * (regions, offices, groups, settings, rules, lists, nodes) with a revision
 * and an audit row for every change, users and API tokens, node state, and
 * node events. docs/controller-store.md is the operator's page.
 *
 * Conventions:
 * - Every function returns STORE_OK (0) or a negative STORE_E* code; on
 *   failure store_error_message() says why and store_error_field() names the
 *   offending input field ("" when none). Nothing is changed on failure.
 * - Objects go in and out as cJSON. What a function returns through a
 *   cJSON ** is the caller's (cJSON_Delete); an output pointer may be NULL
 *   when the caller does not want it. Inputs are only read.
 * - Times are milliseconds since 1970 UTC on input and ISO 8601 UTC strings
 *   ("2026-11-24T23:59:01.123Z") in returned JSON.
 * - actor is who makes the change (a user name, "system"); it goes into the
 *   audit log and the revision's author. 1 to 128 bytes of text.
 * - if_etag: the etag the caller read (a policy object's "etag", the number
 *   of the revision that last changed it); 0 = do not check. A mismatch is
 *   STORE_ESTALE and changes nothing.
 * - A store handle is used by one thread at a time. Open one per thread:
 *   SQLite in WAL mode lets readers run beside the one writer.
 */
#ifndef PORTCULLIS_STORE_H
#define PORTCULLIS_STORE_H

#include "model.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_WUR __attribute__((warn_unused_result))

typedef struct store store;

/* The codes, with the HTTP status a REST answer would carry. */
enum {
    STORE_OK = 0,
    STORE_ERR = -1,       /* 500: SQLite, I/O or memory; the message says which */
    STORE_ENOTFOUND = -2, /* 404: no such object, revision, node, user or token */
    STORE_ECONFLICT = -3, /* 409: a unique name is taken, or the object is still used */
    STORE_EINVALID = -4,  /* 422: bad input; store_error_field() names the field */
    STORE_ESTALE = -5,    /* 412: if_etag is not the object's etag: read it again */
    STORE_EVERSION = -6,  /* store_open: the database is newer than this binary */
    STORE_EBUSY = -7,     /* 503: another writer held the database past the busy timeout */
};

/* --- opening ------------------------------------------------------------- */

/* Opens (creating when missing) the database at path and brings its schema to
 * the newest migration this binary carries, all pending migrations in one
 * transaction; a new database is also seeded (global settings, the shipped
 * lists, user "admin", revision 1). A database of a newer schema is refused
 * with STORE_EVERSION and a message naming both versions. On failure err
 * holds the reason and *out is NULL. */
int store_open(const char *path, store **out, char *err, size_t errlen) STORE_WUR;
/* Closes the database; NULL is fine. */
void store_close(store *s);
/* Whether this store_open created the database (first start). */
bool store_created(const store *s);
/* The schema version this binary migrates to (the newest NNN_*.sql). */
int store_schema_version(void);
/* Why the last call on s failed; "" after a success. Valid until the next
 * call on s. */
const char *store_error_message(const store *s);
/* The input field the last failure is about ("name", "sources[2]",
 * "list.domains[0]"), or "". Valid until the next call on s. */
const char *store_error_field(const store *s);
/* A short constant name for a STORE_* code ("not-found", "conflict", ...). */
const char *store_code_name(int code);

/* --- policy objects ------------------------------------------------------ */

/* The kinds of policy object with an id. Each JSON object has "id" and
 * "etag" (read-only; ignored on input) and these fields:
 *   region: name (1..128 bytes of text)
 *   office: name, region_id, lan_prefixes ([CIDR], default [])
 *   group:  name ([A-Za-z0-9_.-]{1,64}, not "defaults"), office_id (null =
 *           every office), sources ([CIDR], at least one), users ([name])
 *   rule:   scope ("global", "region", "office", "group"), scope_id (null for
 *           global), kind ("skype", "domain", "prefix", "url_suffix"), value
 *           ("" or absent for skype), action ("allow", "block"), comment
 *   list:   name ([A-Za-z0-9_.-]{1,64}), list (the object a policy document
 *           carries under "lists"); returned with "category" and "shipped"
 *   node:   name (its identity, [A-Za-z0-9_.-]{1,64}), office_id; returned
 *           with its state: enrollment, last_seen, enforced_version,
 *           pending_version, last_error
 * Values are returned normalized (CIDRs canonical, domains lower case).
 * Unknown input fields are STORE_EINVALID. */
typedef enum {
    STORE_REGION = 0,
    STORE_OFFICE,
    STORE_GROUP,
    STORE_RULE,
    STORE_LIST,
    STORE_NODE,
} store_kind;

/* The kind's singular name ("region"), as used in audit rows. */
const char *store_kind_name(store_kind k);

/* All objects of a kind as a JSON array ordered by id; *out is the caller's. */
int store_object_list(store *s, store_kind k, cJSON **out) STORE_WUR;
/* One page of a kind's objects ordered by id: those with id > after, at most
 * limit (1..1000): {"items": [...], "next_cursor": "<last id>" or null};
 * *out is the caller's. */
int store_object_page(store *s, store_kind k, int64_t after, unsigned limit, cJSON **out) STORE_WUR;
/* One object; *out is the caller's. STORE_ENOTFOUND when there is none. */
int store_object_get(store *s, store_kind k, int64_t id, cJSON **out) STORE_WUR;
/* Creates an object from in; makes a new revision and an audit row. *out
 * (optional) is the created object, the caller's. */
int store_object_create(store *s, store_kind k, const cJSON *in, const char *actor,
                        cJSON **out) STORE_WUR;
/* Replaces object id with in (every writable field; an absent optional field
 * takes its default); new revision and audit row. *out (optional) is the
 * object as stored, the caller's. */
int store_object_update(store *s, store_kind k, int64_t id, const cJSON *in, int64_t if_etag,
                        const char *actor, cJSON **out) STORE_WUR;
/* Deletes object id; new revision and audit row. A region with offices, an
 * office with groups or nodes, and a list named in settings are
 * STORE_ECONFLICT. An office's or region's rules and settings, and a
 * group's rules, go with it. */
int store_object_delete(store *s, store_kind k, int64_t id, int64_t if_etag,
                        const char *actor) STORE_WUR;

/* --- settings ------------------------------------------------------------ */

/* Settings of one scope: MODEL_SCOPE_GLOBAL (scope_id 0), _REGION or _OFFICE.
 * JSON fields, each null = inherit from the scope above: ports ({"443":
 * "tls", ...}: http, tls, rtsp, mms, passthrough), require_certificate,
 * block_executables, use_lists ([list name]), block_high_ports,
 * high_port_threshold (1..65535), open_ports ([{"port": 25 or "8000-8100",
 * "proto": "tcp"|"udp", "devices": [CIDR]}]), dns_resolvers ([IP address]),
 * web_mode ("transparent"|"proxy"), web_devices ([CIDR]),
 * log_drops_per_minute (0..10000, 0 = off); read-only: scope, scope_id,
 * etag. */
int store_settings_get(store *s, model_scope scope, int64_t scope_id, cJSON **out) STORE_WUR;
/* Every scope's settings, global first, then regions and offices by id. */
int store_settings_list(store *s, cJSON **out) STORE_WUR;
/* Replaces a scope's settings with in (an absent field is null); new
 * revision and audit row. *out (optional) is the result, the caller's. */
int store_settings_put(store *s, model_scope scope, int64_t scope_id, const cJSON *in,
                       int64_t if_etag, const char *actor, cJSON **out) STORE_WUR;

/* --- revisions ----------------------------------------------------------- */

/* The newest revision's number into *out. */
int store_revision_current(store *s, int64_t *out) STORE_WUR;
/* Revisions newest first, numbers below before (0 = from the newest), at most
 * limit (1..1000; 0 = 100): [{"revision", "created_at", "author",
 * "comment"}]; *out is the caller's. */
int store_revision_list(store *s, int64_t before, unsigned limit, cJSON **out) STORE_WUR;
/* One revision: its metadata, "changes" (what changed from the revision
 * before, as in store_revision_diff) and the whole model under "model" (the
 * objects of every kind as the API shows their policy fields, and
 * "settings"); *out is the caller's. */
int store_revision_get(store *s, int64_t revision, cJSON **out) STORE_WUR;
/* What changed from revision a to b: {"from", "to", "changes": [{"type",
 * "op": "added"|"removed"|"changed", "id" (or "scope", "scope_id" for
 * settings), "before", "after"}]}; *out is the caller's. */
int store_revision_diff(store *s, int64_t a, int64_t b, cJSON **out) STORE_WUR;
/* Restores the policy of an earlier revision (regions, offices, groups,
 * settings, rules, lists, with their ids) as one new revision with an audit
 * row; its number into *new_revision (optional). Objects it changes get the
 * new revision as etag. Nodes stay as they are: if a node's office is not in
 * that revision, STORE_ECONFLICT. */
int store_rollback(store *s, int64_t revision, const char *actor, int64_t *new_revision) STORE_WUR;
/* Fills *out with the model at a revision (0 = the newest); the caller
 * releases it with model_free. On failure *out is zeroed. */
int store_model_load(store *s, int64_t revision, model *out) STORE_WUR;
/* Dry run: calls change(s, arg), which makes ONE mutation through this store
 * (store_object_*, store_settings_put); that mutation is checked and applied
 * as usual, but inside its transaction *after is filled with the model as it
 * would then be, and the transaction is rolled back: nothing is kept, no
 * revision or audit row remains. Returns change's result; on failure *after
 * is zeroed. The caller releases *after with model_free. */
int store_dry_run(store *s, int (*change)(store *s, void *arg), void *arg, model *after) STORE_WUR;

/* --- audit --------------------------------------------------------------- */

typedef struct store_audit_query {
    int64_t from_ms, to_ms;  /* [from, to); 0 = unbounded */
    const char *actor;       /* NULL = any */
    const char *object_type; /* "region", "settings", "token", ...; NULL = any */
    const char *object_id;   /* with object_type; NULL = any */
    const char *cursor;      /* "next_cursor" of the previous page; NULL = newest */
    unsigned limit;          /* 1..1000; 0 = 100 */
} store_audit_query;

/* Audit rows newest first: {"entries": [{"id", "time", "actor", "action",
 * "object_type", "object_id", "before", "after", "revision"}],
 * "next_cursor": string or null}; *out is the caller's. */
int store_audit_list(store *s, const store_audit_query *q, cJSON **out) STORE_WUR;

/* --- users and API tokens ------------------------------------------------ */

typedef enum {
    STORE_ROLE_NONE = 0,
    STORE_ROLE_VIEWER = 1,   /* read only */
    STORE_ROLE_OPERATOR = 2, /* policy and nodes */
    STORE_ROLE_ADMIN = 3,    /* everything */
} store_role;

/* "viewer", "operator", "admin" (NULL for NONE), and back (NONE when unknown). */
const char *store_role_name(store_role r);
store_role store_role_from_name(const char *name);

/* Creates a user from {"name", "role"}; audited. *out (optional) is
 * {"id", "name", "role", "created_at"}, the caller's. */
int store_user_create(store *s, const cJSON *in, const char *actor, cJSON **out) STORE_WUR;
/* Users ordered by id; *out is the caller's. */
int store_user_list(store *s, cJSON **out) STORE_WUR;
/* One user by id; *out is the caller's. */
int store_user_get(store *s, int64_t id, cJSON **out) STORE_WUR;
/* The id of the user with this name into *id. */
int store_user_find(store *s, const char *name, int64_t *id) STORE_WUR;
/* Deletes a user and its tokens; audited. */
int store_user_delete(store *s, int64_t id, const char *actor) STORE_WUR;

/* Who a token belongs to. */
typedef struct store_principal {
    int64_t user_id, token_id;
    char user[65];
    store_role role; /* the token's role */
} store_principal;

/* Creates a random token for a user with a role no higher than the user's;
 * audited. *token receives the plaintext (the only time it exists; the
 * caller frees it with free() after explicit_bzero); *out (optional) is the
 * token's row without any secret, the caller's. */
int store_token_create(store *s, int64_t user_id, store_role role, const char *label,
                       const char *actor, char **token, cJSON **out) STORE_WUR;
/* The same for a plaintext the operator chose (PORTCULLIS_ADMIN_TOKEN): 32
 * to 256 printable ASCII bytes; only its hash is stored. */
int store_token_import(store *s, int64_t user_id, store_role role, const char *label,
                       const char *token, const char *actor, cJSON **out) STORE_WUR;
/* Checks a presented token: STORE_OK and *p filled when it is known and not
 * revoked (its last use is recorded, at most once a minute); STORE_ENOTFOUND
 * otherwise, the same for unknown and revoked. */
int store_token_verify(store *s, const char *token, store_principal *p) STORE_WUR;
/* Revokes a token (kept, marked revoked); audited. Revoking twice is fine. */
int store_token_revoke(store *s, int64_t token_id, const char *actor) STORE_WUR;
/* Tokens ordered by id: {"id", "user_id", "user", "role", "label",
 * "created_at", "last_used_at", "revoked_at"}; *out is the caller's. */
int store_token_list(store *s, cJSON **out) STORE_WUR;

/* --- passwords and sign-in sessions (docs/controller.md) ----------------- */

#define STORE_PASSWORD_MIN 12
#define STORE_PASSWORD_MAX 256
#define STORE_SESSION_IDLE_MS (12LL * 3600 * 1000)    /* unused this long: ended */
#define STORE_SESSION_MAX_MS (7LL * 24 * 3600 * 1000) /* after sign-in: ended */

/* Hashes a password with scrypt (N=2^15, r=8, p=1, a 16-byte random salt)
 * as "scrypt$N$r$p$salt_hex$hash_hex" into *out (the caller's, free()).
 * Returns 0, or -1 when OpenSSL fails. No store needed. */
int store_password_hash(const char *password, char **out) STORE_WUR;
/* Whether password matches an encoded hash (constant-time comparison);
 * false for a malformed or NULL encoded. */
bool store_password_verify(const char *password, const char *encoded);

/* Sets user id's password (STORE_PASSWORD_MIN..MAX bytes of text, else
 * STORE_EINVALID on "password") and ends the user's sessions except
 * keep_session (0 = all); audited without the password. */
int store_user_set_password(store *s, int64_t id, const char *password, int64_t keep_session,
                            const char *actor) STORE_WUR;
/* Whether password is user id's current one: STORE_OK, or STORE_ENOTFOUND
 * for a wrong password, no password set, or no such user. */
int store_user_check_password(store *s, int64_t id, const char *password) STORE_WUR;

/* A signed-in session. */
typedef struct store_session {
    int64_t id, user_id;
    char user[65];
    store_role role;                /* the user's role now */
    char csrf[65];                  /* the CSRF token, 64 hex digits */
    int64_t created_at, expires_at; /* ms since 1970 */
} store_session;

/* Signs in: checks name and password at now_ms and on success makes a
 * session: *token receives its secret (64 hex digits, the only time it
 * exists; the caller wipes and frees it) and *out the session. A wrong
 * password, an unknown name and a user without a password are all
 * STORE_ENOTFOUND with one message, and take the same time. Success and
 * failure are audited (a failure with actor "anonymous" and the name tried
 * as object_id); the password never is. Expired sessions are removed. */
int store_session_signin(store *s, const char *name, const char *password, int64_t now_ms,
                         char **token, store_session *out) STORE_WUR;
/* The live session of a token at now_ms: STORE_OK and *out, its idle expiry
 * moved on (written at most once a minute); STORE_ENOTFOUND for an unknown,
 * ended or expired token. */
int store_session_lookup(store *s, const char *token, int64_t now_ms, store_session *out) STORE_WUR;
/* Ends session id (sign-out); audited with actor. STORE_ENOTFOUND when it
 * is gone already. */
int store_session_delete(store *s, int64_t id, const char *actor) STORE_WUR;

/* --- node state (not revisioned) ----------------------------------------- */

/* The node with this identity; *out (the caller's) as store_object_get. */
int store_node_find(store *s, const char *name, cJSON **out) STORE_WUR;
/* Sets "pending", "enrolled" or "revoked"; audited (no new revision). */
int store_node_set_enrollment(store *s, int64_t id, const char *state, const char *actor) STORE_WUR;
/* Records when the hub last heard from the node. */
int store_node_seen(store *s, int64_t id, int64_t time_ms) STORE_WUR;
/* Records the node's policy state: the version it enforces and the one it
 * was sent and has not acknowledged (0 = none for either), and its last
 * error (NULL = none). */
int store_node_set_versions(store *s, int64_t id, int64_t enforced, int64_t pending,
                            const char *last_error) STORE_WUR;

/* --- enrollment and the link (docs/link.md) ----------------------------- */

/* Creates a one-time enrollment token for node node_id, valid ttl_s seconds
 * (60..604800); audited. *secret receives its secret part (64 hex digits;
 * only its SHA-256 is kept; the caller wipes and frees it), to
 * which the API adds the prefix and the CA fingerprint. *out (optional) is
 * {"id", "node_id", "created_at", "expires_at", "used_at", "created_by"}. */
int store_enroll_token_create(store *s, int64_t node_id, int64_t ttl_s, const char *actor,
                              char **secret, cJSON **out) STORE_WUR;
/* The node's tokens, newest first, without secrets; each with "state":
 * "valid", "used" or "expired". */
int store_enroll_token_list(store *s, int64_t node_id, cJSON **out) STORE_WUR;
/* Expires every unused token of the node now; audited. *n (optional) how many. */
int store_enroll_token_expire(store *s, int64_t node_id, const char *actor, size_t *n) STORE_WUR;

/* Why a redemption was refused. */
typedef enum {
    STORE_ENROLL_OK = 0,
    STORE_ENROLL_UNKNOWN, /* no such token */
    STORE_ENROLL_EXPIRED, /* past its expiry, or expired by an operator */
    STORE_ENROLL_USED,    /* redeemed before */
} store_enroll_why;

/* "ok", "token-unknown", "token-expired", "token-used". */
const char *store_enroll_why_name(store_enroll_why w);

/* The certificate issuer the redemption calls inside its transaction: it
 * issues a certificate for the node and writes its SHA-256 fingerprint (64
 * hex digits) to fingerprint; returns 0, or -1 with err (the redemption then
 * fails with STORE_ERR and that message, and the token stays unused). */
typedef int (*store_issue_fn)(void *arg, int64_t node_id, const char *node_name,
                              char fingerprint[65], char *err, size_t errlen);

/* Redeems a token's secret in one transaction: checks it is known, unused
 * and unexpired at now_ms, calls issue, marks the token used, and sets the
 * node "enrolled" with the new certificate's fingerprint (which replaces
 * the old: a certificate issued before no longer passes store_node_identity);
 * audited with actor "enroll". A refused token is STORE_ENOTFOUND with *why
 * saying which and nothing changed. */
int store_enroll_redeem(store *s, const char *secret, int64_t now_ms, store_issue_fn issue,
                        void *arg, store_enroll_why *why) STORE_WUR;

/* What the hub checks of a connecting node's certificate. */
typedef struct store_node_identity {
    int64_t id, office_id;
    char name[65];
    char fingerprint[65]; /* "" when it has none */
    bool enrolled;        /* enrollment == "enrolled" */
    int64_t events_seq;   /* the highest event seq stored for it */
} store_node_identity;

/* The node with this name; STORE_ENOTFOUND when none. */
int store_node_identity_get(store *s, const char *name, store_node_identity *out) STORE_WUR;

/* Sets the node "revoked" (keeps its fingerprint for the record) and expires
 * its unused enrollment tokens; audited.
 * The hub closes its connection (the caller tells it). */
int store_node_revoke(store *s, int64_t id, const char *actor) STORE_WUR;

/* Every node's name, office and region: [{"id", "name", "office_id",
 * "region_id"}], ordered by id. */
int store_node_offices(store *s, cJSON **out) STORE_WUR;

/* One write of the hub, applied by store_link_apply. */
typedef enum {
    STORE_LINK_EVENTS = 0, /* node, events: store the batch; high_seq, inserted out */
    STORE_LINK_HELLO,      /* node_id, time_ms, software: connected and seen */
    STORE_LINK_VERSIONS,   /* node_id, enforced, pending, last_error */
    STORE_LINK_STATS,      /* node_id, time_ms, stats (JSON text) */
    STORE_LINK_SEEN,       /* node_id, time_ms */
    STORE_LINK_GONE,       /* node_id, time_ms: the connection closed */
    /* office_id, pending: a document of this version was made for the
     * office; every node of it that is not connected and does not enforce
     * it shows it as pending (a push that cannot reach a node is visible). */
    STORE_LINK_OFFICE_PENDING,
} store_link_kind;

typedef struct store_link_op {
    store_link_kind kind;
    int64_t node_id;
    int64_t office_id;   /* OFFICE_PENDING */
    const char *node;    /* EVENTS: the node's name */
    const cJSON *events; /* EVENTS: the array as the node sent it */
    int64_t dropped;     /* EVENTS: the spool's drop count, kept with the node */
    int64_t time_ms;
    const char *software;   /* HELLO */
    int64_t enforced;       /* VERSIONS: 0 = none */
    int64_t pending;        /* VERSIONS: 0 = none */
    const char *last_error; /* VERSIONS: NULL = none */
    const char *stats;      /* STATS: a JSON object as text */
    /* results */
    int rc;           /* STORE_OK or the op's own failure */
    size_t inserted;  /* EVENTS: new rows */
    size_t rejected;  /* EVENTS: malformed events skipped (error says why the first was) */
    int64_t high_seq; /* EVENTS: the node's highest stored seq after it */
    char error[256];  /* the failure's message when rc != STORE_OK */
} store_link_op;

/* Applies n ops in ONE transaction, each in a savepoint of its own: an op
 * that fails (a malformed event: "[3].time: ...") is rolled back alone and
 * says why in its rc and error; the others are kept. In an EVENTS op a
 * malformed event ("[3].time: ...") is skipped and counted in rejected
 * (error holds the first reason) while the rest of the batch is stored and
 * rc stays STORE_OK, so one bad event never holds back a node's stream.
 * Returns STORE_OK when
 * the transaction committed (look at each op's rc), or the code of the
 * failure that stopped it (nothing kept). */
int store_link_apply(store *s, store_link_op *ops, size_t n) STORE_WUR;

/* Marks every node disconnected (the hub, at start). */
int store_link_reset(store *s) STORE_WUR;

/* Deletes events received before older_than_ms (0 = no age limit), then the
 * oldest beyond keep (0 = no count limit); at most limit rows per call
 * (0 = 10000), so the writer never holds the database long. *deleted
 * (optional) how many. */
int store_events_prune(store *s, int64_t older_than_ms, int64_t keep, unsigned limit,
                       size_t *deleted) STORE_WUR;

/* --- staged rollout ------------------------------------------------------- */

/* {"mode": "auto"|"manual", "newest": N, "released": N, "canary": null |
 * {"revision", "offices": [ids], "regions": [ids]}, "updated_at"}. */
int store_rollout_get(store *s, cJSON **out) STORE_WUR;
/* "auto" releases the newest revision everywhere (and ends a canary);
 * "manual" holds the revisions made from now on (released = the newest
 * now). Audited. *out (optional) as store_rollout_get. */
int store_rollout_set_mode(store *s, const char *mode, const char *actor, cJSON **out) STORE_WUR;
/* Releases revision (0 = the newest; must exist and not be older than
 * released) to the offices listed and every office of the regions listed
 * (arrays of ids, each must exist; at least one in all); manual mode only
 * (STORE_ECONFLICT in auto). Audited. */
int store_rollout_canary(store *s, int64_t revision, const cJSON *offices, const cJSON *regions,
                         const char *actor, cJSON **out) STORE_WUR;
/* The canary's revision becomes the released one (STORE_ECONFLICT when
 * there is no canary). Audited. */
int store_rollout_promote(store *s, const char *actor, cJSON **out) STORE_WUR;
/* Ends the canary; its offices return to the released revision. Audited. */
int store_rollout_abort(store *s, const char *actor, cJSON **out) STORE_WUR;

/* What every office should run now. */
typedef struct store_rollout_plan {
    int64_t released;        /* the revision of every office not in the canary */
    int64_t canary;          /* 0 = no canary */
    int64_t *canary_offices; /* sorted office ids */
    size_t ncanary;
} store_rollout_plan;
int store_rollout_plan_get(store *s, store_rollout_plan *out) STORE_WUR;
void store_rollout_plan_free(store_rollout_plan *p);

/* --- events -------------------------------------------------------------- */

/* Stores a batch of a node's events (a JSON array of objects shaped as
 * docs/events.md, each with "seq" >= 1) in one transaction, each (node, seq)
 * at most once: a seq already stored is skipped. *inserted (optional)
 * receives how many were new. Fields the store does not know are ignored; a
 * malformed event refuses the batch (field "[i].name"). */
int store_events_insert(store *s, const char *node, const cJSON *batch, size_t *inserted) STORE_WUR;

typedef struct store_event_query {
    int64_t from_ms, to_ms; /* [from, to); 0 = unbounded */
    int64_t office_id;      /* 0 = any */
    int64_t region_id;      /* 0 = any */
    const char *group;      /* NULL = any */
    const char *type;       /* "block", "exception", "allow"; NULL = any */
    const char *node;       /* NULL = any */
    const char *cursor;     /* "next_cursor" of the previous page; NULL = newest */
    unsigned limit;         /* 1..1000; 0 = 100 */
} store_event_query;

/* Events newest first: {"events": [...], "next_cursor": string or null};
 * *out is the caller's. */
int store_events_query(store *s, const store_event_query *q, cJSON **out) STORE_WUR;
/* The live tail: events with after_id < id <= to_id (to_id 0: no upper
 * bound), oldest first, matching q's filters (its time range, cursor and
 * limit are not used), at most limit (1..1000): a JSON array, each event
 * with its "id"; *out is the caller's. The filters never pick an index: the
 * id range is walked, so the cost is that of the rows since after_id, not of
 * the filter's whole history; a caller that got fewer than limit rows has
 * seen everything up to to_id. The newest id of all events is a good start:
 * store_events_last_id. */
int store_events_since(store *s, const store_event_query *q, int64_t after_id, int64_t to_id,
                       unsigned limit, cJSON **out) STORE_WUR;
int store_events_last_id(store *s, int64_t *out) STORE_WUR;

/* --- internal: the generated table of embedded files, and tests ---------- */

typedef struct store_migration {
    int version;      /* 1, 2, ... without gaps */
    const char *name; /* "001_init.sql" */
    const char *sql;
} store_migration;

typedef struct store_shipped_list {
    const char *name; /* the file name without .json */
    const char *json;
} store_shipped_list;

extern const store_migration store__migrations[];
extern const size_t store__nmigrations;
extern const store_shipped_list store__shipped_lists[];
extern const size_t store__nshipped_lists;

/* store_open with another list of migrations; store_open passes the
 * embedded one. Tests use it to build old databases and to fail a
 * migration on purpose. */
int store__open_with(const char *path, const store_migration *migrations, size_t n, store **out,
                     char *err, size_t errlen) STORE_WUR;

#endif
