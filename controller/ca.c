/* ca.c - the controller's certificate authority and the hub's server
 * certificate, kept as PEM files next to the database (ca.h, docs/link.md). */
#include "ca.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* PEM files larger than this are not ours. */
#define CA_FILE_MAX (256 * 1024)
/* How long the hub's certificate lives, and how close to its end it is
 * made again at start. */
#define CA_HUB_DAYS 825
#define CA_HUB_RENEW_S (30 * 86400)
/* Most names the hub certificate carries. */
#define CA_SANS_MAX 32

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* a followed by b, as a new string; NULL when memory runs out. */
static char *concat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *p = malloc(na + nb + 1);
    if (p) {
        memcpy(p, a, na);
        memcpy(p + na, b, nb + 1);
    }
    return p;
}

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* A fresh CA (key and certificate) written to cert_path and key_path. */
static int ca_make(ca *c, const char *key_path, char *err, size_t errlen)
{
    int rc = -1;
    char *key_pem = NULL, cn[64];
    unsigned char rnd[4];
    /* A distinct name per controller, so a certificate from another
     * Portcullis CA is never mistaken for one of ours by name. */
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "no random bytes for the CA's name");
        goto done;
    }
    snprintf(cn, sizeof(cn), "Portcullis controller CA %02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3]);
    if (pki_key_new(&c->key, err, errlen) != 0 ||
        pki_ca_new(c->key, cn, CA_DAYS, &c->cert, err, errlen) != 0 ||
        pki_key_to_pem(c->key, &key_pem, err, errlen) != 0 ||
        pki_cert_to_pem(c->cert, &c->cert_pem, err, errlen) != 0)
        goto done;
    /* The key first: a certificate on disk without its key would be a CA
     * nobody can use. */
    if (pki_write_file(key_path, key_pem, strlen(key_pem), 0600, err, errlen) != 0 ||
        pki_write_file(c->cert_path, c->cert_pem, strlen(c->cert_pem), 0644, err, errlen) != 0)
        goto done;
    rc = 0;
done:
    wipe_free(key_pem);
    return rc;
}

/* Loads the CA from its two files and checks they belong together. */
static int ca_load(ca *c, const char *key_path, char *err, size_t errlen)
{
    int rc = -1;
    char *key_pem = NULL, why[256];
    if (pki_read_file(c->cert_path, CA_FILE_MAX, &c->cert_pem, NULL, err, errlen) != 0 ||
        pki_read_file(key_path, CA_FILE_MAX, &key_pem, NULL, err, errlen) != 0)
        goto done;
    if (pki_cert_from_pem(c->cert_pem, &c->cert, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s: %s", c->cert_path, why);
        goto done;
    }
    if (pki_key_from_pem(key_pem, &c->key, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s: %s", key_path, why);
        goto done;
    }
    if (X509_check_ca(c->cert) < 1) {
        snprintf(err, errlen, "%s: not a CA certificate", c->cert_path);
        goto done;
    }
    if (X509_check_private_key(c->cert, c->key) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "%s does not hold the key of %s", key_path, c->cert_path);
        goto done;
    }
    rc = 0;
done:
    wipe_free(key_pem);
    return rc;
}

/* Whether the hub certificate x (with the rest of its file's chain after
 * it) is still fit: issued by this CA, the CA's certificate after it in the
 * file, more than 30 days left, every name in sans. why says what is not. */
static bool hub_fit(ca *c, X509 *x, X509 *next, const char *const *sans, char *why, size_t whylen)
{
    char fp[PKI_FP_HEX];
    time_t renew = time(NULL) + CA_HUB_RENEW_S;
    EVP_PKEY *capub = X509_get0_pubkey(c->cert);
    if (X509_check_issued(c->cert, x) != X509_V_OK || !capub || X509_verify(x, capub) != 1) {
        ERR_clear_error();
        snprintf(why, whylen, "it is not from this CA");
        return false;
    }
    if (!next || pki_cert_fingerprint(next, fp) != 0 || strcmp(fp, c->fingerprint) != 0) {
        snprintf(why, whylen, "the CA certificate does not follow it");
        return false;
    }
    if (X509_cmp_time(X509_get0_notAfter(x), &renew) <= 0) {
        snprintf(why, whylen, "it expires within 30 days");
        return false;
    }
    for (size_t i = 0; sans[i]; i++) {
        const char *n = sans[i];
        unsigned char ip[16];
        int ok = inet_pton(AF_INET, n, ip) == 1 || inet_pton(AF_INET6, n, ip) == 1
                     ? X509_check_ip_asc(x, n, 0)
                     : X509_check_host(x, n, 0, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, NULL);
        if (ok != 1) {
            ERR_clear_error();
            snprintf(why, whylen, "it lacks the name %s", n);
            return false;
        }
    }
    return true;
}

/* Loads the hub's certificate and key when they are fit; *fit false when
 * they are missing or not (the caller makes new ones). */
static int hub_load(ca *c, const char *const *sans, bool *fit, char *err, size_t errlen)
{
    int rc = -1;
    char *chain = NULL, *key_pem = NULL, why[256] = "";
    BIO *b = NULL;
    X509 *x = NULL, *next = NULL;
    EVP_PKEY *k = NULL;
    *fit = false;
    if (!file_exists(c->hub_cert_path) || !file_exists(c->hub_key_path)) {
        rc = 0;
        goto done;
    }
    if (pki_read_file(c->hub_cert_path, CA_FILE_MAX, &chain, NULL, err, errlen) != 0 ||
        pki_read_file(c->hub_key_path, CA_FILE_MAX, &key_pem, NULL, err, errlen) != 0)
        goto done;
    rc = 0;
    if (!(b = BIO_new_mem_buf(chain, -1)) || !(x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        snprintf(why, sizeof(why), "it is not a PEM certificate");
        goto done;
    }
    next = PEM_read_bio_X509(b, NULL, NULL, NULL);
    if (pki_key_from_pem(key_pem, &k, why, sizeof(why)) != 0)
        goto done;
    if (X509_check_private_key(x, k) != 1) {
        snprintf(why, sizeof(why), "its key file holds another key");
        goto done;
    }
    if (!hub_fit(c, x, next, sans, why, sizeof(why)))
        goto done;
    c->hub_cert_pem = chain;
    c->hub_key_pem = key_pem;
    chain = key_pem = NULL;
    *fit = true;
done:
    ERR_clear_error();
    if (rc == 0 && !*fit && why[0])
        fprintf(stderr, "portcullis-controller: making a new hub certificate: %s: %s\n",
                c->hub_cert_path, why);
    EVP_PKEY_free(k);
    X509_free(next);
    X509_free(x);
    BIO_free(b);
    free(chain);
    wipe_free(key_pem);
    return rc;
}

/* Makes the hub's key and certificate for sans and writes them; the
 * certificate file holds the CA's certificate after the hub's, so the hub
 * presents the whole chain and a node can find the CA its token names. */
static int hub_make(ca *c, const char *const *sans, char *err, size_t errlen)
{
    int rc = -1;
    EVP_PKEY *k = NULL;
    X509 *x = NULL;
    char *leaf = NULL, *chain = NULL, *key_pem = NULL;
    if (pki_key_new(&k, err, errlen) != 0 ||
        pki_issue_key(c->cert, c->key, k, "portcullis hub", sans, PKI_SERVER, CA_HUB_DAYS, &x, err,
                      errlen) != 0 ||
        pki_cert_to_pem(x, &leaf, err, errlen) != 0 ||
        pki_key_to_pem(k, &key_pem, err, errlen) != 0)
        goto done;
    if (!(chain = concat(leaf, c->cert_pem))) {
        snprintf(err, errlen, "hub certificate: out of memory");
        goto done;
    }
    if (pki_write_file(c->hub_key_path, key_pem, strlen(key_pem), 0600, err, errlen) != 0 ||
        pki_write_file(c->hub_cert_path, chain, strlen(chain), 0644, err, errlen) != 0)
        goto done;
    c->hub_cert_pem = chain;
    c->hub_key_pem = key_pem;
    chain = key_pem = NULL;
    rc = 0;
done:
    free(chain);
    free(leaf);
    wipe_free(key_pem);
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

/* sans with "localhost" and "127.0.0.1" added, duplicates and empty names
 * left out, into list (at most CA_SANS_MAX + NULL). */
static int sans_all(const char *const *sans, const char **list, char *err, size_t errlen)
{
    size_t n = 0;
    list[n++] = "localhost";
    list[n++] = "127.0.0.1";
    for (size_t i = 0; sans && sans[i]; i++) {
        bool dup = !sans[i][0];
        for (size_t k = 0; k < n && !dup; k++)
            dup = strcasecmp(list[k], sans[i]) == 0;
        if (dup)
            continue;
        if (n == CA_SANS_MAX) {
            snprintf(err, errlen, "the hub certificate can carry at most %d names", CA_SANS_MAX);
            return -1;
        }
        list[n++] = sans[i];
    }
    list[n] = NULL;
    return 0;
}

int ca_open(const char *db_path, const char *const *sans, ca *out, bool *created, char *err,
            size_t errlen)
{
    int rc = -1;
    char *key_path = NULL;
    const char *names[CA_SANS_MAX + 1];
    bool fit = false;
    memset(out, 0, sizeof(*out));
    if (created)
        *created = false;
    if (!(out->cert_path = concat(db_path, ".ca.pem")) ||
        !(key_path = concat(db_path, ".ca.key.pem")) ||
        !(out->hub_cert_path = concat(db_path, ".hub.pem")) ||
        !(out->hub_key_path = concat(db_path, ".hub.key.pem"))) {
        snprintf(err, errlen, "CA: out of memory");
        goto done;
    }
    if (sans_all(sans, names, err, errlen) != 0)
        goto done;
    bool have_cert = file_exists(out->cert_path), have_key = file_exists(key_path);
    if (have_cert != have_key) {
        snprintf(err, errlen,
                 "%s exists but %s does not: restore the missing file, or remove both to make a "
                 "new CA (every node must then enroll again)",
                 have_cert ? out->cert_path : key_path, have_cert ? key_path : out->cert_path);
        goto done;
    }
    if (have_cert) {
        if (ca_load(out, key_path, err, errlen) != 0)
            goto done;
    } else {
        if (ca_make(out, key_path, err, errlen) != 0)
            goto done;
        if (created)
            *created = true;
    }
    if (pki_cert_fingerprint(out->cert, out->fingerprint) != 0) {
        snprintf(err, errlen, "%s: cannot compute its fingerprint", out->cert_path);
        goto done;
    }
    if (hub_load(out, names, &fit, err, errlen) != 0)
        goto done;
    if (!fit && hub_make(out, names, err, errlen) != 0)
        goto done;
    rc = 0;
done:
    free(key_path);
    if (rc != 0)
        ca_close(out);
    return rc;
}

void ca_close(ca *c)
{
    if (!c)
        return;
    X509_free(c->cert);
    EVP_PKEY_free(c->key);
    free(c->cert_pem);
    free(c->hub_cert_pem);
    wipe_free(c->hub_key_pem);
    free(c->cert_path);
    free(c->hub_cert_path);
    free(c->hub_key_path);
    memset(c, 0, sizeof(*c));
}

int ca_issue_node(ca *c, const char *csr_pem, const char *node_name, char **cert_pem,
                  char fingerprint[PKI_FP_HEX], char *err, size_t errlen)
{
    int rc = -1;
    X509 *x = NULL;
    *cert_pem = NULL;
    fingerprint[0] = '\0';
    if (pki_issue(c->cert, c->key, csr_pem, node_name, NULL, PKI_CLIENT, CA_NODE_DAYS, &x, err,
                  errlen) != 0)
        goto done;
    if (pki_cert_fingerprint(x, fingerprint) != 0) {
        snprintf(err, errlen, "the new certificate's fingerprint cannot be computed");
        goto done;
    }
    if (pki_cert_to_pem(x, cert_pem, err, errlen) != 0)
        goto done;
    rc = 0;
done:
    X509_free(x);
    return rc;
}
