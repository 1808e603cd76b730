/* enroll.c - the controller's answer to "POST /enroll" (enroll.h,
 * docs/link.md): checks the token and the certificate request, redeems the
 * token and issues the node's certificate in one store transaction. */
#include "enroll.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "pc_text.h"

#define TOKEN_PREFIX "pce1."
/* The longest secret accepted (the store makes 43 characters). */
#define TOKEN_SECRET_MAX 256

char *enroll_token_format(const char *secret, const char *ca_fingerprint)
{
    size_t n = strlen(TOKEN_PREFIX) + strlen(secret) + 1 + strlen(ca_fingerprint) + 1;
    char *t = malloc(n);
    if (t)
        snprintf(t, n, "%s%s.%s", TOKEN_PREFIX, secret, ca_fingerprint);
    return t;
}

/* *response = {"error": {"code", "message"}} with *status; 0, or -1 when
 * memory ran out. */
static int answer_error(int *status, char **response, int http, const char *code, const char *fmt,
                        ...) __attribute__((format(printf, 5, 6)));
static int answer_error(int *status, char **response, int http, const char *code, const char *fmt,
                        ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    if (!e || !cJSON_AddStringToObject(e, "code", code) ||
        !cJSON_AddStringToObject(e, "message", msg) ||
        !(*response = cJSON_PrintUnformatted(root))) {
        cJSON_Delete(root);
        return -1;
    }
    cJSON_Delete(root);
    *status = http;
    return 0;
}

static bool is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static bool is_b64url(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_';
}

/* Splits "pce1.<secret>.<64 hex>" into secret (a new string) and fp (lower
 * case): 1; 0 when the token is not of that form, with why; -1 when memory
 * ran out. */
static int token_split(const char *token, char **secret, char fp[PKI_FP_HEX], const char **why)
{
    *secret = NULL;
    if (strncmp(token, TOKEN_PREFIX, strlen(TOKEN_PREFIX)) != 0) {
        *why = "it does not start with " TOKEN_PREFIX;
        return 0;
    }
    const char *s = token + strlen(TOKEN_PREFIX), *dot = strchr(s, '.');
    if (!dot || dot == s || (size_t)(dot - s) > TOKEN_SECRET_MAX) {
        *why = "its secret part is missing or too long";
        return 0;
    }
    for (const char *p = s; p < dot; p++) {
        if (!is_b64url(*p)) {
            *why = "its secret part has a character outside base64url";
            return 0;
        }
    }
    const char *f = dot + 1;
    size_t n = 0;
    while (n < 64 && is_hex(f[n]))
        n++;
    if (n != 64 || f[64] != '\0') {
        *why = "its CA fingerprint is not 64 hex digits";
        return 0;
    }
    for (size_t i = 0; i < 64; i++)
        fp[i] = (char)(f[i] >= 'A' && f[i] <= 'F' ? f[i] - 'A' + 'a' : f[i]);
    fp[64] = '\0';
    if (!(*secret = strndup(s, (size_t)(dot - s))))
        return -1;
    return 1;
}

/* What the issue callback works with and leaves behind. */
typedef struct issue_ctx {
    ca *c;
    const char *csr;
    char *cert_pem; /* the certificate issued */
    char node[65];  /* to whom */
    bool csr_bad;   /* the request was refused: 422, not 500 */
    char err[256];
} issue_ctx;

static int issue_cb(void *arg, int64_t node_id, const char *node_name, char fingerprint[65],
                    char *err, size_t errlen)
{
    issue_ctx *x = arg;
    (void)node_id;
    free(x->cert_pem);
    x->cert_pem = NULL;
    if (ca_issue_node(x->c, x->csr, node_name, &x->cert_pem, fingerprint, x->err, sizeof(x->err)) !=
        0) {
        x->csr_bad = true;
        snprintf(err, errlen, "%s", x->err);
        return -1;
    }
    snprintf(x->node, sizeof(x->node), "%s", node_name);
    return 0;
}

static const char *why_message(store_enroll_why w)
{
    switch (w) {
    case STORE_ENROLL_EXPIRED:
        return "the enrollment token has expired or was expired by an operator";
    case STORE_ENROLL_USED: return "the enrollment token was used before; ask for a new one";
    case STORE_ENROLL_UNKNOWN:
    default: return "the enrollment token is not known to this controller";
    }
}

int enroll_handle(store *s, ca *c, const char *body, size_t len, int *status, char **response)
{
    int rc = -1;
    cJSON *root = NULL, *answer = NULL;
    char *secret = NULL, fp[PKI_FP_HEX], *probe = NULL, probe_fp[PKI_FP_HEX];
    const char *token = NULL, *csr = NULL, *why = NULL;
    issue_ctx ictx = {.c = c};
    *response = NULL;
    *status = 500;

    if (len > ENROLL_BODY_MAX) {
        rc = answer_error(status, response, 400, "bad-request", "the body is larger than %d bytes",
                          ENROLL_BODY_MAX);
        goto done;
    }
    if (pc_text_json_nul_escape(body, len) != len) {
        rc = answer_error(status, response, 400, "bad-request", "the body holds \\u0000");
        goto done;
    }
    root = cJSON_ParseWithLength(body, len);
    if (!root || !cJSON_IsObject(root)) {
        rc = answer_error(status, response, 400, "bad-request",
                          "the body is not a JSON object {\"token\", \"csr\"}");
        goto done;
    }
    for (cJSON *f = root->child; f; f = f->next) {
        const char **slot = NULL;
        if (f->string && strcmp(f->string, "token") == 0)
            slot = &token;
        else if (f->string && strcmp(f->string, "csr") == 0)
            slot = &csr;
        if (!slot) {
            rc = answer_error(status, response, 400, "bad-request", "$.%.64s: unknown field",
                              f->string ? f->string : "");
            goto done;
        }
        if (*slot) {
            rc = answer_error(status, response, 400, "bad-request", "$.%s: given twice", f->string);
            goto done;
        }
        if (!cJSON_IsString(f) || !f->valuestring) {
            rc = answer_error(status, response, 400, "bad-request", "$.%s: must be a string",
                              f->string);
            goto done;
        }
        *slot = f->valuestring;
    }
    if (!token || !csr) {
        rc = answer_error(status, response, 400, "bad-request", "$.%s: missing",
                          token ? "csr" : "token");
        goto done;
    }
    int split = token_split(token, &secret, fp, &why);
    if (split < 0)
        goto done;
    if (split == 0) {
        rc = answer_error(status, response, 401, "token-unknown",
                          "$.token is not an enrollment token (pce1.<secret>.<CA fingerprint>): %s",
                          why);
        goto done;
    }
    if (strcmp(fp, c->fingerprint) != 0) {
        rc = answer_error(status, response, 401, "token-ca-mismatch",
                          "the token was made for the CA %s; this controller's CA is %s", fp,
                          c->fingerprint);
        goto done;
    }
    /* The request is checked before the token is touched, so a bad one
     * never costs the node its token. */
    if (ca_issue_node(c, csr, "enroll-check", &probe, probe_fp, ictx.err, sizeof(ictx.err)) != 0) {
        rc = answer_error(status, response, 422, "bad-csr", "$.csr: %s", ictx.err);
        goto done;
    }
    ictx.csr = csr;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    store_enroll_why w = STORE_ENROLL_OK;
    int src = store_enroll_redeem(s, secret, now_ms, issue_cb, &ictx, &w);
    if (src == STORE_ENOTFOUND && w != STORE_ENROLL_OK) {
        rc = answer_error(status, response, 401, store_enroll_why_name(w), "%s", why_message(w));
        goto done;
    }
    if (src != STORE_OK) {
        if (ictx.csr_bad)
            rc = answer_error(status, response, 422, "bad-csr", "$.csr: %s", ictx.err);
        else
            rc = answer_error(status, response, 500, "internal", "enrollment failed: %s",
                              store_error_message(s));
        goto done;
    }
    if (!ictx.cert_pem) {
        rc = answer_error(status, response, 500, "internal",
                          "enrollment failed: no certificate was issued");
        goto done;
    }
    answer = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(answer, "node", ictx.node) ||
        !cJSON_AddStringToObject(answer, "certificate", ictx.cert_pem) ||
        !cJSON_AddStringToObject(answer, "ca_certificate", c->cert_pem) ||
        !(*response = cJSON_PrintUnformatted(answer)))
        goto done;
    *status = 200;
    rc = 0;
done:
    if (rc != 0) {
        free(*response);
        *response = NULL;
        *status = 500;
    }
    cJSON_Delete(answer);
    free(ictx.cert_pem);
    free(probe);
    if (secret) {
        explicit_bzero(secret, strlen(secret));
        free(secret);
    }
    if (root) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "token");
        if (cJSON_IsString(t) && t->valuestring)
            explicit_bzero(t->valuestring, strlen(t->valuestring));
        cJSON_Delete(root);
    }
    return rc;
}
