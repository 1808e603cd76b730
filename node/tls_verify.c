/* tls_verify.c - verifies a server's DER certificate chain against a shared,
 * read-only OpenSSL trust store and the name the client asked for, and lists
 * the leaf's DNS names for the domain policy (see tls_verify.h). */
#include "tls_verify.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tls_verify_store {
    X509_STORE *store;
};

static void say(char *buf, size_t buflen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(char *buf, size_t buflen, const char *fmt, ...)
{
    if (!buf || buflen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, buflen, fmt, ap);
    va_end(ap);
}

/* OpenSSL's reason for the first error queued on this thread (the root
 * cause, such as "No such file or directory"), then an empty error queue so
 * the next caller on the thread starts clean. */
static void last_ssl_error(char *buf, size_t buflen)
{
    unsigned long e = ERR_peek_error();
    const char *r = NULL;
    char sys[128];
    if (e && ERR_SYSTEM_ERROR(e))
        r = strerror_r(ERR_GET_REASON(e), sys, sizeof(sys));
    else if (e)
        r = ERR_reason_error_string(e);
    if (r)
        snprintf(buf, buflen, "%s", r);
    else if (e)
        ERR_error_string_n(e, buf, buflen);
    else
        snprintf(buf, buflen, "unknown error");
    ERR_clear_error();
}

tls_verify_store *tls_verify_store_new(const char *ca_file, char *err, size_t errlen)
{
    tls_verify_store *s = calloc(1, sizeof(*s));
    char why[256];
    if (!s) {
        say(err, errlen, "trust store: out of memory");
        return NULL;
    }
    s->store = X509_STORE_new();
    if (!s->store) {
        last_ssl_error(why, sizeof(why));
        say(err, errlen, "trust store: %s", why);
        goto fail;
    }
    if (ca_file && ca_file[0]) {
        if (X509_STORE_load_file(s->store, ca_file) != 1) {
            last_ssl_error(why, sizeof(why));
            say(err, errlen, "%s: %s", ca_file, why);
            goto fail;
        }
    } else if (X509_STORE_set_default_paths(s->store) != 1) {
        last_ssl_error(why, sizeof(why));
        say(err, errlen, "system trust store: %s", why);
        goto fail;
    }
    ERR_clear_error();
    return s;
fail:
    tls_verify_store_free(s);
    return NULL;
}

void tls_verify_store_free(tls_verify_store *s)
{
    if (!s)
        return;
    X509_STORE_free(s->store);
    free(s);
}

void *tls_verify_store_x509(tls_verify_store *s)
{
    return s ? s->store : NULL;
}

/* A DNS name fit for a comma-separated list: printable, no comma or space,
 * no embedded NUL (the ASN.1 length is what counts, not strlen). */
static bool name_listable(const unsigned char *p, int len)
{
    if (len <= 0 || len > 253)
        return false;
    for (int i = 0; i < len; i++)
        if (p[i] <= ' ' || p[i] > '~' || p[i] == ',')
            return false;
    return true;
}

/* Appends one name, lower-cased, only if it fits whole. */
static void names_add(char *names, size_t nameslen, size_t *used, const unsigned char *p, int len)
{
    if (!name_listable(p, len))
        return;
    size_t need = (size_t)len + (*used ? 1 : 0);
    if (*used + need + 1 > nameslen)
        return;
    if (*used)
        names[(*used)++] = ',';
    for (int i = 0; i < len; i++)
        names[(*used)++] = (char)tolower(p[i]);
    names[*used] = '\0';
}

/* The leaf's DNS subjectAltNames; the subject CNs only when there is no DNS
 * SAN, which is when OpenSSL's host check falls back to the CN too. */
static void leaf_names(X509 *leaf, char *names, size_t nameslen)
{
    size_t used = 0;
    bool any_dns = false;
    GENERAL_NAMES *gens = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_DNS)
            continue;
        any_dns = true;
        names_add(names, nameslen, &used, ASN1_STRING_get0_data(g->d.dNSName),
                  ASN1_STRING_length(g->d.dNSName));
    }
    GENERAL_NAMES_free(gens);
    if (any_dns)
        return;
    const X509_NAME *subj = X509_get_subject_name(leaf);
    for (int i = -1; subj && (i = X509_NAME_get_index_by_NID(subj, NID_commonName, i)) >= 0;) {
        const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, i));
        unsigned char *utf8 = NULL;
        int n = ASN1_STRING_to_UTF8(&utf8, cn);
        if (n > 0)
            names_add(names, nameslen, &used, utf8, n);
        OPENSSL_free(utf8);
    }
}

/* One DER certificate, exactly: trailing bytes are a parse error too. */
static X509 *parse_der(const uint8_t *der, size_t len)
{
    if (!der || len == 0 || len > 0x7fffffff)
        return NULL;
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x && p != der + len) {
        X509_free(x);
        x = NULL;
    }
    return x;
}

static bool is_ip_literal(const char *name)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

/* Sorts an OpenSSL verify error into the stable reason prefixes. */
static const char *reason_kind(int err)
{
    switch (err) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH: return "certificate-name-mismatch";
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID: return "certificate-expired";
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_REJECTED: return "certificate-untrusted";
    default: return "certificate-invalid";
    }
}

void tls_verify_reason(long err, const char *name, char *reason, size_t reasonlen)
{
    if (err == X509_V_ERR_HOSTNAME_MISMATCH || err == X509_V_ERR_IP_ADDRESS_MISMATCH)
        say(reason, reasonlen, "certificate-name-mismatch: %s", name ? name : "");
    else if (err == X509_V_OK) /* a handshake that failed before any verdict */
        say(reason, reasonlen, "certificate-untrusted: no certificate");
    else
        say(reason, reasonlen, "%s: %s", reason_kind((int)err), X509_verify_cert_error_string(err));
}

int tls_verify_chain(tls_verify_store *s, const uint8_t *const *der, const size_t *der_len,
                     size_t n, const char *name, char *reason, size_t reasonlen, char *names,
                     size_t nameslen)
{
    int rc = -1;
    X509 *leaf = NULL;
    STACK_OF(X509) *untrusted = NULL;
    X509_STORE_CTX *ctx = NULL;

    say(reason, reasonlen, "%s", "");
    if (names && nameslen)
        names[0] = '\0';
    if (!s || !s->store) {
        say(reason, reasonlen, "certificate-invalid: no trust store");
        return -1;
    }
    if (!der || !der_len || n == 0) {
        say(reason, reasonlen, "certificate-parse: empty chain");
        return -1;
    }
    leaf = parse_der(der[0], der_len[0]);
    if (!leaf) {
        say(reason, reasonlen, "certificate-parse: certificate 1 of %zu is not DER X.509", n);
        goto done;
    }
    if (names && nameslen)
        leaf_names(leaf, names, nameslen);
    untrusted = sk_X509_new_null();
    if (!untrusted) {
        say(reason, reasonlen, "certificate-invalid: out of memory");
        goto done;
    }
    for (size_t i = 1; i < n; i++) {
        X509 *x = parse_der(der[i], der_len[i]);
        if (!x) {
            say(reason, reasonlen, "certificate-parse: certificate %zu of %zu is not DER X.509",
                i + 1, n);
            goto done;
        }
        if (!sk_X509_push(untrusted, x)) {
            X509_free(x);
            say(reason, reasonlen, "certificate-invalid: out of memory");
            goto done;
        }
    }
    ctx = X509_STORE_CTX_new();
    if (!ctx || X509_STORE_CTX_init(ctx, s->store, leaf, untrusted) != 1) {
        say(reason, reasonlen, "certificate-invalid: cannot set up verification");
        goto done;
    }
    /* The purpose also selects the trust setting for server certificates. */
    X509_VERIFY_PARAM *vpm = X509_STORE_CTX_get0_param(ctx);
    if (X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER) != 1 ||
        X509_VERIFY_PARAM_clear_flags(vpm, X509_V_FLAG_PARTIAL_CHAIN) != 1) {
        say(reason, reasonlen, "certificate-invalid: cannot set up verification");
        goto done;
    }
    if (name && name[0]) {
        int ok;
        if (is_ip_literal(name)) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(vpm, name);
        } else {
            X509_VERIFY_PARAM_set_hostflags(vpm, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = X509_VERIFY_PARAM_set1_host(vpm, name, strlen(name));
        }
        if (ok != 1) {
            say(reason, reasonlen, "certificate-name-mismatch: %s", name);
            goto done;
        }
    }
    if (X509_verify_cert(ctx) == 1) {
        rc = 0;
        goto done;
    }
    tls_verify_reason(X509_STORE_CTX_get_error(ctx), name, reason, reasonlen);
done:
    X509_STORE_CTX_free(ctx);
    sk_X509_pop_free(untrusted, X509_free);
    X509_free(leaf);
    ERR_clear_error();
    return rc;
}
