/* compiler.h - the policy compiler: turns the controller's model (model.h) at
 * one revision into the effective-policy document each office's node enforces
 * (docs/policy.md), explains the verdict for one connection, and lists what a
 * proposed change would change in every office's document (dry run).
 *
 * Pure: no I/O, nothing kept between calls, the model only read. (cJSON,
 * which it uses, notes a parse failure in a global of its own that nothing
 * reads.) What the operator sees of it (scopes, inheritance, precedence,
 * explain, dry run, the diff format) is in docs/controller-policy.md.
 *
 * Errors name the model object at fault, e.g. "rule 12: 'skype..com' is not
 * a domain name (empty label)", "group 5 'board': source '10.0.0.1/8': host
 * bits set (the network is 10.0.0.0/8)", "list 'mine': $.lists.mine.domains[0]:
 * ...". A document the node would refuse is never returned.
 */
#ifndef PORTCULLIS_COMPILER_H
#define PORTCULLIS_COMPILER_H

#include "model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A size for err buffers that holds every message the compiler writes. */
#define COMPILER_ERR_MAX 512

#define COMPILER_WUR __attribute__((warn_unused_result))

/* --- documents ------------------------------------------------------------ */

/* Compiles office office_id's effective-policy document from m. On success
 * returns 0, *json_out is the canonical document (compact JSON, keys in a
 * fixed order, rule values, sources, lists and groups sorted; the lists'
 * own arrays as stored; the caller frees it with free()) and
 * sha256_hex holds the SHA-256 of exactly those bytes in lower-case hex. The
 * same model always gives the same bytes, whatever the order of its arrays.
 * On failure returns -1, *json_out is NULL and err names the object at fault.
 * The document has passed pc_policy_parse, the node's own parser. */
COMPILER_WUR int compiler_office_document(const model *m, int64_t office_id, char **json_out,
                                          char sha256_hex[65], char *err, size_t errlen);

/* --- explain -------------------------------------------------------------- */

typedef enum {
    COMPILER_ALLOW = 0,     /* no rule blocks the destination */
    COMPILER_BLOCK = 1,     /* a rule or list blocks it */
    COMPILER_EXCEPTION = 2, /* a Skype rule matched; the group's exception lifts it */
    COMPILER_REFUSED = 3,   /* the proxy does not serve the port */
} compiler_verdict;

/* "allow", "block", "exception", "refused". */
const char *compiler_verdict_name(compiler_verdict v);

typedef enum {
    COMPILER_STEP_BUILTIN = 0, /* no scope sets the input: the built-in value */
    COMPILER_STEP_GLOBAL = 1,
    COMPILER_STEP_REGION = 2,
    COMPILER_STEP_OFFICE = 3,
    COMPILER_STEP_GROUP = 4,
} compiler_step_scope;

/* "builtin", "global", "region", "office", "group". */
const char *compiler_step_scope_name(compiler_step_scope s);

/* One link of the chain: what one scope set that bears on the verdict. */
typedef struct compiler_step {
    compiler_step_scope scope;
    int64_t scope_id; /* region, office or group id; 0 for global and builtin */
    char *scope_name; /* "global", "built-in", or the region/office/group name */
    int64_t rule_id;  /* the rule this step is; 0 for a setting */
    /* What the step is about: "ports", "use_lists", "require_certificate",
     * "skype_exception", "blocked_domains", "blocked_prefixes",
     * "blocked_url_suffixes" or "group" (the group the source selected). */
    const char *input;
    char *text;    /* one line, e.g. "region EMEA: rule 7 allows Skype (skype_exception true)" */
    bool in_force; /* false: a more specific scope overrides it */
} compiler_step;

/* The verdict for one connection and where its inputs came from. Every
 * char * is owned by the struct (compiler_explanation_free); the const
 * char * fields point to static strings. */
typedef struct compiler_explanation {
    int64_t office_id;
    char *office;
    int64_t version;
    char sha256[65]; /* of the document the verdict was taken from */
    char *source;
    bool source_in_office_lan;
    char *group;        /* "defaults" when the source is in no group */
    int64_t group_id;   /* 0 for defaults */
    char *group_source; /* the group's prefix that matched; NULL for defaults */
    char *host;         /* NULL when none was given */
    char *path;         /* NULL when none was given */
    uint16_t port;
    const char *proto; /* "http", "tls", ... ; NULL when the port is not served */
    compiler_verdict verdict;
    char *list; /* the matching rule's list ("skype"), or "group"/"defaults"; NULL if none */
    char *rule; /* the matching rule ("skype.com"); NULL if none */
    bool skype_exception; /* the group's effective value */
    /* TLS ports: "required", "exempt" (required, lifted by the exception) or
     * "off"; NULL on other ports. */
    const char *certificate;
    char *reason; /* one sentence for the operator */
    size_t nsteps;
    compiler_step *steps; /* global -> region -> office -> group */
} compiler_explanation;

/* Explains what office office_id's node does with a connection from
 * source_ip to host:port. host may be a name or an IP literal, or NULL/""
 * to check only the port. The verdict comes from the compiled document and
 * the node's own checks (pc_policy), so it cannot differ from what the node
 * does; a name is checked against domain rules only (the node checks the
 * address it resolves against the prefixes: pass an address to see those).
 * On success returns 0 and fills *out (free with compiler_explanation_free);
 * on failure returns -1, *out is zeroed, err says why. */
COMPILER_WUR int compiler_explain(const model *m, int64_t office_id, const char *source_ip,
                                  const char *host, uint16_t port, compiler_explanation *out,
                                  char *err, size_t errlen);
/* The same, also checking a URL path (without the query; NULL: none) as the
 * node checks an HTTP request's path against the URL suffixes. */
COMPILER_WUR int compiler_explain_path(const model *m, int64_t office_id, const char *source_ip,
                                       const char *host, uint16_t port, const char *path,
                                       compiler_explanation *out, char *err, size_t errlen);
/* Frees what *e holds (not e) and zeroes it. */
void compiler_explanation_free(compiler_explanation *e);
/* The explanation as compact JSON (docs/controller-policy.md has the
 * format); the caller frees it with free(). NULL when memory runs out. */
COMPILER_WUR char *compiler_explanation_json(const compiler_explanation *e);

/* --- dry run -------------------------------------------------------------- */

/* One office whose document differs between two models. Owned by the array
 * compiler_diff returns (compiler_changes_free). */
typedef struct compiler_change {
    int64_t office_id;
    char *office;           /* its name (in after; in before when removed) */
    char before_sha256[65]; /* "" when the office is new */
    char after_sha256[65];  /* "" when the office is gone */
    size_t nnodes;
    char **nodes; /* the office's nodes, which would get the document */
    char *diff;   /* JSON array of diff entries (compiler_document_diff) */
} compiler_change;

/* Compiles every office of both models and lists, in office id order, the
 * offices whose documents differ with "version" left out of the comparison,
 * and how. On success returns 0, *out holds *n changes (NULL when none).
 * On failure returns -1 with err starting "before: " or "after: " and the
 * compile error ("after: office 3 'Berlin': rule 12: ..."); *out is NULL. */
COMPILER_WUR int compiler_diff(const model *before, const model *after, compiler_change **out,
                               size_t *n, char *err, size_t errlen);
void compiler_changes_free(compiler_change *c, size_t n);
/* {"changed":N,"offices":[{...}]} as compact JSON; free with free(). NULL
 * when memory runs out. */
COMPILER_WUR char *compiler_changes_json(const compiler_change *c, size_t n);

/* The structural diff of two documents (either may be NULL: absent), with
 * the top-level "version" left out: a JSON array of entries
 *   {"path":P,"op":"added","value":V}      only in after
 *   {"path":P,"op":"removed","value":V}    only in before
 *   {"path":P,"op":"changed","before":B,"after":A}
 *   {"path":P,"op":"elements","added":[..],"removed":[..]}  arrays of scalars, as sets
 * with P a JSONPath ("$.defaults.blocked_domains", "$.proxy.ports['443']",
 * "$.groups[?(@.name=='board')].skype_exception"). "[]" when they are the
 * same. Returns 0 and *diff_out (free with free()), or -1 with err. */
COMPILER_WUR int compiler_document_diff(const char *before_json, const char *after_json,
                                        char **diff_out, char *err, size_t errlen);

#endif
