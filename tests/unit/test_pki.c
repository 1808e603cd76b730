/* test_pki.c - enrollment's OpenSSL side: keys, requests and certificates
 * (shared/pc_pki.h), the controller's CA files (controller/ca.h) and the
 * answer to "POST /enroll" (controller/enroll.h) against a real SQLite
 * store in a temporary directory. */
#include "ca.h"
#include "cu_main.h"
#include "enroll.h"
#include "pc_pki.h"
#include "store.h"

#include <CUnit/CUnit.h>
#include <ctype.h>
#include <dirent.h>
#include <ftw.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/pc-pki-test-XXXXXX";
static int pathcount;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void suite_clean(void)
{
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A new path in the temporary directory. */
static void new_path(char *buf, size_t len, const char *what)
{
    snprintf(buf, len, "%s/%s%d", tmpdir, what, ++pathcount);
}

/* --- helpers ---------------------------------------------------------------- */

static EVP_PKEY *key_new(void)
{
    char err[256];
    EVP_PKEY *k = NULL;
    CU_ASSERT_EQUAL_FATAL(pki_key_new(&k, err, sizeof(err)), 0);
    return k;
}

static char *csr_new(EVP_PKEY *k, const char *cn)
{
    char err[256], *pem = NULL;
    CU_ASSERT_EQUAL_FATAL(pki_csr_new(k, cn, &pem, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(strstr(pem, "-----BEGIN CERTIFICATE REQUEST-----"));
    return pem;
}

/* A CA made in memory. */
static void ca_mem(EVP_PKEY **key, X509 **cert)
{
    char err[256];
    *key = key_new();
    CU_ASSERT_EQUAL_FATAL(pki_ca_new(*key, "Test CA", 30, cert, err, sizeof(err)), 0);
}

/* Whether leaf verifies against cac alone for purpose ("ssl_client",
 * "ssl_server"); the reason into why. */
static bool chain_ok(X509 *cac, X509 *leaf, const char *purpose, char *why, size_t whylen)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    CU_ASSERT_FATAL(st && ctx);
    CU_ASSERT_FATAL(X509_STORE_add_cert(st, cac) == 1);
    CU_ASSERT_FATAL(X509_STORE_CTX_init(ctx, st, leaf, NULL) == 1);
    CU_ASSERT_FATAL(X509_STORE_CTX_set_default(ctx, purpose) == 1);
    bool ok = X509_verify_cert(ctx) == 1;
    snprintf(why, whylen, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    ERR_clear_error();
    return ok;
}

/* A request for k whose public key was swapped for other's after signing:
 * it names a key its sender does not hold. */
static char *csr_forged(EVP_PKEY *k, EVP_PKEY *other)
{
    char *pem = csr_new(k, NULL);
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    CU_ASSERT_FATAL(X509_REQ_set_pubkey(req, other) == 1);
    BIO_free(b);
    free(pem);
    b = BIO_new(BIO_s_mem());
    CU_ASSERT_FATAL(PEM_write_bio_X509_REQ(b, req) == 1);
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    char *out = strndup(p, (size_t)n);
    BIO_free(b);
    X509_REQ_free(req);
    return out;
}

/* --- pc_pki ----------------------------------------------------------------- */

static void test_issue_and_verify(void)
{
    char err[256], why[128], cn[65];
    EVP_PKEY *cak = NULL, *k = key_new();
    X509 *cac = NULL, *cert = NULL;
    ca_mem(&cak, &cac);
    char *csr = csr_new(k, "ignored-name");
    const char *const sans[] = {"node1.example", "10.0.0.1", "2001:db8::1", NULL};
    CU_ASSERT_EQUAL_FATAL(
        pki_issue(cac, cak, csr, "node1", sans, PKI_CLIENT, 825, &cert, err, sizeof(err)), 0);
    /* The CA's name, not the request's subject, is what counts. */
    CU_ASSERT_EQUAL(pki_cert_cn(cert, cn, sizeof(cn), err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(cn, "node1");
    CU_ASSERT_TRUE(chain_ok(cac, cert, "ssl_client", why, sizeof(why)));
    /* A client certificate is not a server certificate. */
    CU_ASSERT_FALSE(chain_ok(cac, cert, "ssl_server", why, sizeof(why)));
    CU_ASSERT_EQUAL(X509_check_private_key(cert, k), 1);
    CU_ASSERT_EQUAL(X509_check_host(cert, "node1.example", 0, 0, NULL), 1);
    CU_ASSERT_EQUAL(X509_check_ip_asc(cert, "10.0.0.1", 0), 1);
    CU_ASSERT_EQUAL(X509_check_ip_asc(cert, "2001:db8::1", 0), 1);
    CU_ASSERT_EQUAL(X509_check_ca(cert), 0);
    CU_ASSERT_EQUAL(X509_check_ca(cac), 1);
    /* 825 days, give or take the hour it starts early. */
    int days = 0, secs = 0;
    CU_ASSERT_EQUAL(
        ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), X509_get0_notAfter(cert)), 1);
    CU_ASSERT(days == 825 || (days == 824 && secs > 0));

    /* Another CA's certificate does not verify against this one. */
    EVP_PKEY *cak2 = NULL;
    X509 *ca2 = NULL, *cert2 = NULL;
    ca_mem(&cak2, &ca2);
    CU_ASSERT_EQUAL_FATAL(
        pki_issue(ca2, cak2, csr, "node1", NULL, PKI_CLIENT, 1, &cert2, err, sizeof(err)), 0);
    CU_ASSERT_FALSE(chain_ok(cac, cert2, "ssl_client", why, sizeof(why)));
    /* Nor does one signed with a key that is not the CA's. */
    X509_free(cert2);
    cert2 = NULL;
    CU_ASSERT_EQUAL(
        pki_issue(cac, cak2, csr, "node1", NULL, PKI_CLIENT, 1, &cert2, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "CA key does not belong"));
    CU_ASSERT_PTR_NULL(cert2);

    X509_free(ca2);
    EVP_PKEY_free(cak2);
    free(csr);
    X509_free(cert);
    X509_free(cac);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(k);
}

static void test_server_usage(void)
{
    char err[256], why[128];
    EVP_PKEY *cak = NULL, *k = key_new();
    X509 *cac = NULL, *cert = NULL;
    ca_mem(&cak, &cac);
    const char *const sans[] = {"hub.example", NULL};
    CU_ASSERT_EQUAL_FATAL(
        pki_issue_key(cac, cak, k, "hub", sans, PKI_SERVER, 10, &cert, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(chain_ok(cac, cert, "ssl_server", why, sizeof(why)));
    CU_ASSERT_FALSE(chain_ok(cac, cert, "ssl_client", why, sizeof(why)));
    X509_free(cert);
    cert = NULL;
    /* A SAN that is neither an address nor a name is refused, not parsed. */
    const char *const bad[] = {"a,DNS:evil.example", NULL};
    CU_ASSERT_EQUAL(pki_issue_key(cac, cak, k, "hub", bad, PKI_SERVER, 10, &cert, err, sizeof(err)),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "neither an IP address nor a DNS name"));
    X509_free(cac);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(k);
}

/* ca NULL: a self-signed leaf (the controller's REST certificate). */
static void test_self_signed(void)
{
    char err[512];
    EVP_PKEY *k = NULL;
    X509 *x = NULL;
    const char *const sans[] = {"localhost", "127.0.0.1", NULL};
    CU_ASSERT_FATAL(pki_key_new(&k, err, sizeof(err)) == 0);
    CU_ASSERT_FATAL(
        pki_issue_key(NULL, NULL, k, "localhost", sans, PKI_SERVER, 10, &x, err, sizeof(err)) == 0);
    CU_ASSERT_EQUAL(X509_verify(x, k), 1);
    CU_ASSERT_EQUAL(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);
    CU_ASSERT_EQUAL(X509_check_host(x, "localhost", 0, 0, NULL), 1);
    CU_ASSERT_EQUAL(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
    CU_ASSERT_EQUAL(X509_check_ca(x), 0);
    X509_free(x);
    EVP_PKEY_free(k);
}

static void test_pem_roundtrip_and_fingerprint(void)
{
    char err[256], fp1[PKI_FP_HEX], fp2[PKI_FP_HEX], fp3[PKI_FP_HEX], *pem = NULL, *kpem = NULL;
    EVP_PKEY *cak = NULL, *k2 = NULL;
    X509 *cac = NULL, *back = NULL, *other = NULL;
    ca_mem(&cak, &cac);
    CU_ASSERT_EQUAL_FATAL(pki_cert_fingerprint(cac, fp1), 0);
    CU_ASSERT_EQUAL(strlen(fp1), 64);
    for (size_t i = 0; i < 64; i++)
        CU_ASSERT(isxdigit((unsigned char)fp1[i]) && !isupper((unsigned char)fp1[i]));
    CU_ASSERT_EQUAL_FATAL(pki_cert_to_pem(cac, &pem, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(pki_cert_from_pem(pem, &back, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(pki_cert_fingerprint(back, fp2), 0);
    CU_ASSERT_STRING_EQUAL(fp1, fp2);
    ca_mem(&k2, &other);
    CU_ASSERT_EQUAL(pki_cert_fingerprint(other, fp3), 0);
    CU_ASSERT_STRING_NOT_EQUAL(fp1, fp3);

    CU_ASSERT_EQUAL_FATAL(pki_key_to_pem(cak, &kpem, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(kpem, "PRIVATE KEY"));
    EVP_PKEY *kback = NULL;
    CU_ASSERT_EQUAL_FATAL(pki_key_from_pem(kpem, &kback, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(X509_check_private_key(cac, kback), 1);
    EVP_PKEY_free(kback);

    X509 *junk = NULL;
    CU_ASSERT_EQUAL(pki_cert_from_pem("not a certificate", &junk, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NULL(junk);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a PEM certificate"));
    CU_ASSERT_EQUAL(pki_key_from_pem(pem, &kback, err, sizeof(err)), -1);

    free(kpem);
    free(pem);
    X509_free(back);
    X509_free(other);
    EVP_PKEY_free(k2);
    X509_free(cac);
    EVP_PKEY_free(cak);
}

static void test_cn_charset(void)
{
    char err[256], cn[65];
    EVP_PKEY *cak = NULL, *k = key_new();
    X509 *cac = NULL;
    ca_mem(&cak, &cac);
    static const char *const bad[] = {"two words", "a/b", "caf\xc3\xa9", "x;y", NULL};
    for (size_t i = 0; bad[i]; i++) {
        X509 *cert = NULL;
        CU_ASSERT_EQUAL_FATAL(
            pki_issue_key(cac, cak, k, bad[i], NULL, PKI_CLIENT, 1, &cert, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(pki_cert_cn(cert, cn, sizeof(cn), err, sizeof(err)), -1);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "[A-Za-z0-9_.-]"));
        X509_free(cert);
    }
    X509 *cert = NULL;
    CU_ASSERT_EQUAL_FATAL(
        pki_issue_key(cac, cak, k, "Office-7_gw.1", NULL, PKI_CLIENT, 1, &cert, err, sizeof(err)),
        0);
    CU_ASSERT_EQUAL(pki_cert_cn(cert, cn, sizeof(cn), err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(cn, "Office-7_gw.1");
    /* Too small a buffer is an error, not a cut name. */
    CU_ASSERT_EQUAL(pki_cert_cn(cert, cn, 5, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "too long"));
    X509_free(cert);
    X509_free(cac);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(k);
}

static void test_bad_requests_refused(void)
{
    char err[256];
    EVP_PKEY *cak = NULL, *k = key_new(), *k2 = key_new();
    X509 *cac = NULL, *cert = NULL;
    ca_mem(&cak, &cac);

    /* Signed by one key, naming another: no proof of possession. */
    char *forged = csr_forged(k, k2);
    CU_ASSERT_EQUAL(pki_issue(cac, cak, forged, "n", NULL, PKI_CLIENT, 1, &cert, err, sizeof(err)),
                    -1);
    CU_ASSERT_PTR_NULL(cert);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "signature does not verify"));
    free(forged);

    /* RSA and other curves are not P-256. */
    EVP_PKEY *rsa = EVP_RSA_gen(2048), *p384 = EVP_EC_gen("P-384");
    CU_ASSERT_PTR_NOT_NULL_FATAL(rsa);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p384);
    char *rcsr = csr_new(rsa, "n"), *pcsr = csr_new(p384, "n");
    CU_ASSERT_EQUAL(pki_issue(cac, cak, rcsr, "n", NULL, PKI_CLIENT, 1, &cert, err, sizeof(err)),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "RSA, not EC P-256"));
    CU_ASSERT_EQUAL(pki_issue(cac, cak, pcsr, "n", NULL, PKI_CLIENT, 1, &cert, err, sizeof(err)),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not EC P-256"));
    free(rcsr);
    free(pcsr);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(p384);

    /* Not PEM at all, and empty. */
    CU_ASSERT_EQUAL(pki_issue(cac, cak, "hello", "n", NULL, PKI_CLIENT, 1, &cert, err, sizeof(err)),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a PEM CERTIFICATE REQUEST"));
    CU_ASSERT_EQUAL(pki_issue(cac, cak, "", "n", NULL, PKI_CLIENT, 1, &cert, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "empty"));
    CU_ASSERT_EQUAL(ERR_peek_error(), 0);

    X509_free(cac);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(k);
    EVP_PKEY_free(k2);
}

/* Whether the directory holds anything but the named file. */
static int entries_other_than(const char *dir, const char *name)
{
    int n = 0;
    DIR *d = opendir(dir);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, name))
            n++;
    closedir(d);
    return n;
}

static void test_write_and_read_file(void)
{
    char dir[256], path[300], err[256], *back = NULL;
    size_t len = 0;
    struct stat st;
    new_path(dir, sizeof(dir), "files");
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/node.key", dir);
    CU_ASSERT_EQUAL_FATAL(pki_write_file(path, "secret\n", 7, 0600, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    CU_ASSERT_EQUAL(entries_other_than(dir, "node.key"), 0); /* no temp file left */
    CU_ASSERT_EQUAL_FATAL(pki_read_file(path, 100, &back, &len, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(len, 7);
    CU_ASSERT_STRING_EQUAL(back, "secret\n");
    free(back);
    back = NULL;

    /* Replacing keeps one file with the new content and mode. */
    CU_ASSERT_EQUAL_FATAL(pki_write_file(path, "new", 3, 0644, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0644);
    CU_ASSERT_EQUAL_FATAL(pki_read_file(path, 100, &back, NULL, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(back, "new");
    free(back);
    back = NULL;
    CU_ASSERT_EQUAL(entries_other_than(dir, "node.key"), 0);

    /* Larger than allowed, missing, a directory. */
    CU_ASSERT_EQUAL(pki_read_file(path, 2, &back, NULL, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NULL(back);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "larger than 2 bytes"));
    snprintf(path, sizeof(path), "%s/missing", dir);
    CU_ASSERT_EQUAL(pki_read_file(path, 100, &back, NULL, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "No such file"));
    CU_ASSERT_EQUAL(pki_read_file(dir, 100, &back, NULL, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a regular file"));
    /* A directory that does not exist cannot be written to. */
    snprintf(path, sizeof(path), "%s/nodir/x", dir);
    CU_ASSERT_EQUAL(pki_write_file(path, "x", 1, 0600, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "nodir/x"));
}

/* --- ca --------------------------------------------------------------------- */

/* The certificates in a PEM chain text. */
static STACK_OF(X509) * pem_chain(const char *pem)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *b = BIO_new_mem_buf(pem, -1);
    for (X509 *x; (x = PEM_read_bio_X509(b, NULL, NULL, NULL));)
        sk_X509_push(sk, x);
    ERR_clear_error();
    BIO_free(b);
    return sk;
}

static void test_ca_create_and_reload(void)
{
    char db[256], path[300], err[512], fp[PKI_FP_HEX], why[128];
    const char *const sans[] = {"hub.example", "192.0.2.7", NULL};
    struct stat st;
    ca c;
    bool created = false;
    new_path(db, sizeof(db), "ca.db");
    CU_ASSERT_EQUAL_FATAL(ca_open(db, sans, &c, &created, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(created);
    snprintf(path, sizeof(path), "%s.ca.key.pem", db);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    snprintf(path, sizeof(path), "%s.hub.key.pem", db);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    snprintf(path, sizeof(path), "%s.hub.pem", db);
    CU_ASSERT_STRING_EQUAL(c.hub_cert_path, path);
    CU_ASSERT_EQUAL(strlen(c.fingerprint), 64);
    CU_ASSERT_EQUAL(X509_check_ca(c.cert), 1);

    /* The hub's file holds its certificate and then the CA's, so it
     * presents the chain a node's token can be checked against. */
    STACK_OF(X509) *chain = pem_chain(c.hub_cert_pem);
    CU_ASSERT_EQUAL_FATAL(sk_X509_num(chain), 2);
    X509 *hub = sk_X509_value(chain, 0);
    CU_ASSERT_EQUAL(pki_cert_fingerprint(sk_X509_value(chain, 1), fp), 0);
    CU_ASSERT_STRING_EQUAL(fp, c.fingerprint);
    CU_ASSERT_TRUE(chain_ok(c.cert, hub, "ssl_server", why, sizeof(why)));
    CU_ASSERT_EQUAL(X509_check_host(hub, "localhost", 0, 0, NULL), 1);
    CU_ASSERT_EQUAL(X509_check_host(hub, "hub.example", 0, 0, NULL), 1);
    CU_ASSERT_EQUAL(X509_check_ip_asc(hub, "127.0.0.1", 0), 1);
    CU_ASSERT_EQUAL(X509_check_ip_asc(hub, "192.0.2.7", 0), 1);
    CU_ASSERT_EQUAL(X509_check_host(hub, "other.example", 0, 0, NULL), 0);
    EVP_PKEY *hk = NULL;
    CU_ASSERT_EQUAL_FATAL(pki_key_from_pem(c.hub_key_pem, &hk, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(X509_check_private_key(hub, hk), 1);
    EVP_PKEY_free(hk);
    sk_X509_pop_free(chain, X509_free);

    char *ca_fp = strdup(c.fingerprint), *hub_pem = strdup(c.hub_cert_pem);
    ca_close(&c);

    /* Reloaded: the same CA and, still fit, the same hub certificate. */
    CU_ASSERT_EQUAL_FATAL(ca_open(db, sans, &c, &created, err, sizeof(err)), 0);
    CU_ASSERT_FALSE(created);
    CU_ASSERT_STRING_EQUAL(c.fingerprint, ca_fp);
    CU_ASSERT_STRING_EQUAL(c.hub_cert_pem, hub_pem);
    ca_close(&c);

    /* A new name makes a new hub certificate from the same CA. */
    const char *const more[] = {"hub.example", "192.0.2.7", "hub2.example", NULL};
    CU_ASSERT_EQUAL_FATAL(ca_open(db, more, &c, &created, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(c.fingerprint, ca_fp);
    CU_ASSERT_STRING_NOT_EQUAL(c.hub_cert_pem, hub_pem);
    chain = pem_chain(c.hub_cert_pem);
    CU_ASSERT_EQUAL_FATAL(sk_X509_num(chain), 2);
    CU_ASSERT_EQUAL(X509_check_host(sk_X509_value(chain, 0), "hub2.example", 0, 0, NULL), 1);
    sk_X509_pop_free(chain, X509_free);
    ca_close(&c);

    /* A hub certificate from another CA is replaced. */
    char db2[256], other[300];
    ca c2;
    new_path(db2, sizeof(db2), "ca.db");
    CU_ASSERT_EQUAL_FATAL(ca_open(db2, more, &c2, NULL, err, sizeof(err)), 0);
    snprintf(path, sizeof(path), "%s.hub.pem", db);
    snprintf(other, sizeof(other), "%s.hub.pem", db2);
    CU_ASSERT_EQUAL(rename(other, path), 0);
    snprintf(path, sizeof(path), "%s.hub.key.pem", db);
    snprintf(other, sizeof(other), "%s.hub.key.pem", db2);
    CU_ASSERT_EQUAL(rename(other, path), 0);
    ca_close(&c2);
    CU_ASSERT_EQUAL_FATAL(ca_open(db, more, &c, NULL, err, sizeof(err)), 0);
    chain = pem_chain(c.hub_cert_pem);
    CU_ASSERT_TRUE(chain_ok(c.cert, sk_X509_value(chain, 0), "ssl_server", why, sizeof(why)));
    sk_X509_pop_free(chain, X509_free);
    ca_close(&c);

    free(ca_fp);
    free(hub_pem);
}

static void test_ca_file_missing(void)
{
    char db[256], path[300], err[512];
    ca c;
    new_path(db, sizeof(db), "ca.db");
    CU_ASSERT_EQUAL_FATAL(ca_open(db, NULL, &c, NULL, err, sizeof(err)), 0);
    ca_close(&c);
    snprintf(path, sizeof(path), "%s.ca.key.pem", db);
    CU_ASSERT_EQUAL_FATAL(unlink(path), 0);
    CU_ASSERT_EQUAL(ca_open(db, NULL, &c, NULL, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "does not"));
    CU_ASSERT_PTR_NULL(c.cert);

    /* A key that is not the certificate's. */
    char db2[256], other[300];
    new_path(db2, sizeof(db2), "ca.db");
    CU_ASSERT_EQUAL_FATAL(ca_open(db2, NULL, &c, NULL, err, sizeof(err)), 0);
    ca_close(&c);
    snprintf(other, sizeof(other), "%s.ca.key.pem", db2);
    CU_ASSERT_EQUAL_FATAL(rename(other, path), 0);
    CU_ASSERT_EQUAL(ca_open(db, NULL, &c, NULL, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "does not hold the key"));
}

static void test_ca_issue_node(void)
{
    char db[256], err[512], fp[PKI_FP_HEX], fp2[PKI_FP_HEX], cn[65], why[128], *pem = NULL;
    ca c;
    new_path(db, sizeof(db), "ca.db");
    CU_ASSERT_EQUAL_FATAL(ca_open(db, NULL, &c, NULL, err, sizeof(err)), 0);
    EVP_PKEY *k = key_new();
    char *csr = csr_new(k, NULL);
    CU_ASSERT_EQUAL_FATAL(ca_issue_node(&c, csr, "gw-berlin", &pem, fp, err, sizeof(err)), 0);
    X509 *x = NULL;
    CU_ASSERT_EQUAL_FATAL(pki_cert_from_pem(pem, &x, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(pki_cert_fingerprint(x, fp2), 0);
    CU_ASSERT_STRING_EQUAL(fp, fp2);
    CU_ASSERT_EQUAL(pki_cert_cn(x, cn, sizeof(cn), err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(cn, "gw-berlin");
    CU_ASSERT_TRUE(chain_ok(c.cert, x, "ssl_client", why, sizeof(why)));
    CU_ASSERT(X509_get_extended_key_usage(x) & XKU_SSL_CLIENT);
    X509_free(x);
    free(pem);
    pem = NULL;
    CU_ASSERT_EQUAL(ca_issue_node(&c, "junk", "gw-berlin", &pem, fp, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NULL(pem);
    free(csr);
    EVP_PKEY_free(k);
    ca_close(&c);
}

/* --- enroll_handle ---------------------------------------------------------- */

/* A store with one node "gw1" and the CA beside it. */
typedef struct fixture {
    store *s;
    ca c;
    int64_t node_id;
} fixture;

static int64_t create(store *s, store_kind k, const char *txt)
{
    cJSON *in = cJSON_Parse(txt), *out = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(in);
    int rc = store_object_create(s, k, in, "tester", &out);
    if (rc != STORE_OK)
        fprintf(stderr, "create %s: %s\n", txt, store_error_message(s));
    CU_ASSERT_EQUAL_FATAL(rc, STORE_OK);
    int64_t id = (int64_t)cJSON_GetObjectItem(out, "id")->valuedouble;
    cJSON_Delete(in);
    cJSON_Delete(out);
    return id;
}

static void fixture_open(fixture *f)
{
    char db[256], err[512], txt[128];
    new_path(db, sizeof(db), "enroll.db");
    memset(f, 0, sizeof(*f));
    CU_ASSERT_EQUAL_FATAL(store_open(db, &f->s, err, sizeof(err)), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(ca_open(db, NULL, &f->c, NULL, err, sizeof(err)), 0);
    int64_t r = create(f->s, STORE_REGION, "{\"name\": \"Europe\"}");
    snprintf(txt, sizeof(txt), "{\"name\": \"Berlin\", \"region_id\": %lld}", (long long)r);
    int64_t o = create(f->s, STORE_OFFICE, txt);
    snprintf(txt, sizeof(txt), "{\"name\": \"gw1\", \"office_id\": %lld}", (long long)o);
    f->node_id = create(f->s, STORE_NODE, txt);
}

static void fixture_close(fixture *f)
{
    ca_close(&f->c);
    store_close(f->s);
}

/* A new token for the fixture's node, as the operator gets it. */
static char *token_new(fixture *f)
{
    char *secret = NULL;
    CU_ASSERT_EQUAL_FATAL(
        store_enroll_token_create(f->s, f->node_id, 3600, "tester", &secret, NULL), STORE_OK);
    char *t = enroll_token_format(secret, f->c.fingerprint);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    free(secret);
    return t;
}

static char *body_of(const char *token, const char *csr)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "token", token);
    cJSON_AddStringToObject(o, "csr", csr);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* Runs enroll_handle on text; returns the status, *ans the parsed answer. */
static int post(fixture *f, const char *body, cJSON **ans)
{
    int status = 0;
    char *resp = NULL;
    CU_ASSERT_EQUAL_FATAL(enroll_handle(f->s, &f->c, body, strlen(body), &status, &resp), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
    *ans = cJSON_Parse(resp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(*ans);
    free(resp);
    return status;
}

/* The error code of an answer ("" when none). */
static const char *code_of(const cJSON *ans)
{
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(ans, "error"), "code");
    return cJSON_IsString(c) ? c->valuestring : "";
}

static const char *message_of(const cJSON *ans)
{
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(ans, "error"), "message");
    return cJSON_IsString(c) ? c->valuestring : "";
}

static void test_enroll_success_and_reuse(void)
{
    fixture f;
    fixture_open(&f);
    char *token = token_new(&f), err[256], why[128], fp[PKI_FP_HEX], cn[65];
    EVP_PKEY *k = key_new();
    char *csr = csr_new(k, NULL), *body = body_of(token, csr);
    cJSON *ans = NULL;

    store_node_identity id;
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(f.s, "gw1", &id), STORE_OK);
    CU_ASSERT_FALSE(id.enrolled);

    int status = post(&f, body, &ans);
    CU_ASSERT_EQUAL_FATAL(status, 200);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(ans, "node")->valuestring, "gw1");
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(ans, "ca_certificate")->valuestring, f.c.cert_pem);
    X509 *cert = NULL;
    CU_ASSERT_EQUAL_FATAL(pki_cert_from_pem(cJSON_GetObjectItem(ans, "certificate")->valuestring,
                                            &cert, err, sizeof(err)),
                          0);
    CU_ASSERT_TRUE(chain_ok(f.c.cert, cert, "ssl_client", why, sizeof(why)));
    CU_ASSERT_EQUAL(X509_check_private_key(cert, k), 1);
    CU_ASSERT_EQUAL(pki_cert_cn(cert, cn, sizeof(cn), err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(cn, "gw1");
    CU_ASSERT_EQUAL(pki_cert_fingerprint(cert, fp), 0);
    cJSON_Delete(ans);

    /* The node is enrolled with exactly this certificate. */
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(f.s, "gw1", &id), STORE_OK);
    CU_ASSERT_TRUE(id.enrolled);
    CU_ASSERT_STRING_EQUAL(id.fingerprint, fp);

    /* The same token again: used. */
    CU_ASSERT_EQUAL(post(&f, body, &ans), 401);
    CU_ASSERT_STRING_EQUAL(code_of(ans), "token-used");
    cJSON_Delete(ans);
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(f.s, "gw1", &id), STORE_OK);
    CU_ASSERT_STRING_EQUAL(id.fingerprint, fp);

    /* A new token enrolls again; the new certificate replaces the old. */
    char *token2 = token_new(&f), *body2 = body_of(token2, csr);
    CU_ASSERT_EQUAL(post(&f, body2, &ans), 200);
    cJSON_Delete(ans);
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(f.s, "gw1", &id), STORE_OK);
    CU_ASSERT_TRUE(id.enrolled);
    CU_ASSERT_EQUAL(strlen(id.fingerprint), 64);
    CU_ASSERT_STRING_NOT_EQUAL(id.fingerprint, fp);

    free(body2);
    free(token2);
    X509_free(cert);
    free(body);
    free(csr);
    EVP_PKEY_free(k);
    free(token);
    fixture_close(&f);
}

static void test_enroll_tokens_refused(void)
{
    fixture f;
    fixture_open(&f);
    EVP_PKEY *k = key_new();
    char *csr = csr_new(k, NULL), *body = NULL;
    cJSON *ans = NULL;
    store_node_identity id;

    /* Well formed, but no such secret. */
    char *unknown =
        enroll_token_format("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", f.c.fingerprint);
    body = body_of(unknown, csr);
    CU_ASSERT_EQUAL(post(&f, body, &ans), 401);
    CU_ASSERT_STRING_EQUAL(code_of(ans), "token-unknown");
    cJSON_Delete(ans);
    free(body);
    free(unknown);

    /* Not a token at all. */
    body = body_of("hello", csr);
    CU_ASSERT_EQUAL(post(&f, body, &ans), 401);
    CU_ASSERT_STRING_EQUAL(code_of(ans), "token-unknown");
    CU_ASSERT_PTR_NOT_NULL(strstr(message_of(ans), "pce1"));
    cJSON_Delete(ans);
    free(body);

    /* A real token, made for another controller's CA. */
    char *token = token_new(&f), *secret = strdup(token + 5);
    *strchr(secret, '.') = '\0';
    char other[PKI_FP_HEX];
    memset(other, 'a', 64);
    other[64] = '\0';
    char *wrong = enroll_token_format(secret, other);
    body = body_of(wrong, csr);
    CU_ASSERT_EQUAL(post(&f, body, &ans), 401);
    CU_ASSERT_STRING_EQUAL(code_of(ans), "token-ca-mismatch");
    CU_ASSERT_PTR_NOT_NULL(strstr(message_of(ans), f.c.fingerprint));
    cJSON_Delete(ans);
    free(body);
    free(wrong);

    /* Expired by the operator. */
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(store_enroll_token_expire(f.s, f.node_id, "tester", &n), STORE_OK);
    CU_ASSERT_EQUAL(n, 1);
    body = body_of(token, csr);
    CU_ASSERT_EQUAL(post(&f, body, &ans), 401);
    CU_ASSERT_STRING_EQUAL(code_of(ans), "token-expired");
    cJSON_Delete(ans);
    free(body);

    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(f.s, "gw1", &id), STORE_OK);
    CU_ASSERT_FALSE(id.enrolled);
    CU_ASSERT_STRING_EQUAL(id.fingerprint, "");

    free(secret);
    free(token);
    free(csr);
    EVP_PKEY_free(k);
    fixture_close(&f);
}

static void test_enroll_bad_input(void)
{
    fixture f;
    fixture_open(&f);
    char *token = token_new(&f);
    EVP_PKEY *k = key_new(), *k2 = key_new();
    char *csr = csr_new(k, NULL), *body = NULL, big[ENROLL_BODY_MAX + 2];
    cJSON *ans = NULL;
    static const struct {
        const char *body, *says;
    } bad[] = {
        {"not json", "not a JSON object"},
        {"[1, 2]", "not a JSON object"},
        {"{\"token\": \"x\", \"csr\": \"y\", \"extra\": 1}", "$.extra: unknown field"},
        {"{\"token\": 5, \"csr\": \"y\"}", "$.token: must be a string"},
        {"{\"csr\": \"y\"}", "$.token: missing"},
        {"{\"token\": \"x\"}", "$.csr: missing"},
        {"{\"token\": \"x\", \"token\": \"x\", \"csr\": \"y\"}", "$.token: given twice"},
        {"{\"token\": \"x\\u0000\", \"csr\": \"y\"}", "\\u0000"},
        {NULL, NULL},
    };
    for (size_t i = 0; bad[i].body; i++) {
        CU_ASSERT_EQUAL(post(&f, bad[i].body, &ans), 400);
        CU_ASSERT_STRING_EQUAL(code_of(ans), "bad-request");
        if (!strstr(message_of(ans), bad[i].says))
            fprintf(stderr, "\n%s -> %s\n", bad[i].body, message_of(ans));
        CU_ASSERT_PTR_NOT_NULL(strstr(message_of(ans), bad[i].says));
        cJSON_Delete(ans);
    }
    memset(big, ' ', sizeof(big));
    big[sizeof(big) - 1] = '\0';
    CU_ASSERT_EQUAL(post(&f, big, &ans), 400);
    cJSON_Delete(ans);

    /* Requests that prove nothing or carry the wrong key: 422, and the
     * token is still good afterwards. */
    char *forged = csr_forged(k, k2);
    const char *csrs[] = {"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE "
                          "REQUEST-----\n",
                          forged, NULL};
    for (size_t i = 0; csrs[i]; i++) {
        body = body_of(token, csrs[i]);
        CU_ASSERT_EQUAL(post(&f, body, &ans), 422);
        CU_ASSERT_STRING_EQUAL(code_of(ans), "bad-csr");
        CU_ASSERT_PTR_NOT_NULL(strstr(message_of(ans), "$.csr"));
        cJSON_Delete(ans);
        free(body);
    }
    store_node_identity id;
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(f.s, "gw1", &id), STORE_OK);
    CU_ASSERT_FALSE(id.enrolled);
    body = body_of(token, csr);
    CU_ASSERT_EQUAL(post(&f, body, &ans), 200);
    cJSON_Delete(ans);
    free(body);
    CU_ASSERT_EQUAL_FATAL(store_node_identity_get(f.s, "gw1", &id), STORE_OK);
    CU_ASSERT_TRUE(id.enrolled);

    free(forged);
    free(csr);
    EVP_PKEY_free(k);
    EVP_PKEY_free(k2);
    free(token);
    fixture_close(&f);
}

int unit_register(void)
{
    static const unit_case pki[] = {
        {"issue and verify", test_issue_and_verify},
        {"server usage", test_server_usage},
        {"self-signed", test_self_signed},
        {"pem roundtrip and fingerprint", test_pem_roundtrip_and_fingerprint},
        {"cn charset", test_cn_charset},
        {"bad requests refused", test_bad_requests_refused},
        {"write and read file", test_write_and_read_file},
        {NULL, NULL}};
    static const unit_case cas[] = {{"create and reload", test_ca_create_and_reload},
                                    {"file missing", test_ca_file_missing},
                                    {"issue node", test_ca_issue_node},
                                    {NULL, NULL}};
    static const unit_case enroll[] = {{"success and reuse", test_enroll_success_and_reuse},
                                       {"tokens refused", test_enroll_tokens_refused},
                                       {"bad input", test_enroll_bad_input},
                                       {NULL, NULL}};
    if (!mkdtemp(tmpdir))
        return -1;
    atexit(suite_clean);
    if (unit_add_suite("pki", pki) != 0 || unit_add_suite("ca", cas) != 0 ||
        unit_add_suite("enroll", enroll) != 0)
        return -1;
    return 0;
}
