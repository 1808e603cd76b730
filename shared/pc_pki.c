/* pc_pki.c - keys, certificate requests, the CA's signing, fingerprints and
 * safely written PEM files for enrollment (pc_pki.h, docs/link.md). */
#include "pc_pki.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A request bigger than this is not one of ours. */
#define PKI_CSR_MAX (64 * 1024)

/* err = "what: <OpenSSL's reason>", and OpenSSL's error queue emptied so the
 * next failure does not report this one. */
static void ssl_err(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "no detail from OpenSSL";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    snprintf(err, errlen, "%s: %s", what, buf);
}

/* The text a memory BIO holds, as a new NUL-terminated string. */
static char *bio_text(BIO *b)
{
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    if (n <= 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return NULL;
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    return s;
}

int pki_key_new(EVP_PKEY **out, char *err, size_t errlen)
{
    *out = EVP_EC_gen("P-256");
    if (!*out) {
        ssl_err(err, errlen, "making an EC P-256 key");
        return -1;
    }
    return 0;
}

int pki_key_to_pem(EVP_PKEY *key, char **out, char *err, size_t errlen)
{
    int rc = -1;
    BIO *b = BIO_new(BIO_s_secmem());
    *out = NULL;
    if (!b || PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) != 1) {
        ssl_err(err, errlen, "writing the key as PEM");
        goto done;
    }
    if (!(*out = bio_text(b))) {
        snprintf(err, errlen, "writing the key as PEM: out of memory");
        goto done;
    }
    rc = 0;
done:
    BIO_free(b); /* secmem: wiped */
    return rc;
}

int pki_key_from_pem(const char *pem, EVP_PKEY **out, char *err, size_t errlen)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    *out = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (!*out) {
        ssl_err(err, errlen, "not an unencrypted PEM private key");
        return -1;
    }
    return 0;
}

int pki_cert_to_pem(X509 *cert, char **out, char *err, size_t errlen)
{
    int rc = -1;
    BIO *b = BIO_new(BIO_s_mem());
    *out = NULL;
    if (!b || PEM_write_bio_X509(b, cert) != 1) {
        ssl_err(err, errlen, "writing the certificate as PEM");
        goto done;
    }
    if (!(*out = bio_text(b))) {
        snprintf(err, errlen, "writing the certificate as PEM: out of memory");
        goto done;
    }
    rc = 0;
done:
    BIO_free(b);
    return rc;
}

int pki_cert_from_pem(const char *pem, X509 **out, char *err, size_t errlen)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    *out = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (!*out) {
        ssl_err(err, errlen, "not a PEM certificate");
        return -1;
    }
    return 0;
}

/* A name with CN=cn (UTF-8). */
static X509_NAME *name_cn(const char *cn)
{
    X509_NAME *n = X509_NAME_new();
    if (n && X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                        -1, -1, 0) != 1) {
        X509_NAME_free(n);
        n = NULL;
    }
    return n;
}

int pki_csr_new(EVP_PKEY *key, const char *cn, char **pem_out, char *err, size_t errlen)
{
    int rc = -1;
    X509_REQ *req = NULL;
    X509_NAME *name = NULL;
    BIO *b = NULL;
    *pem_out = NULL;
    req = X509_REQ_new();
    if (!req || X509_REQ_set_version(req, 0) != 1) {
        ssl_err(err, errlen, "making the certificate request");
        goto done;
    }
    if (cn) {
        if (!(name = name_cn(cn)) || X509_REQ_set_subject_name(req, name) != 1) {
            ssl_err(err, errlen, "the request's subject");
            goto done;
        }
    }
    if (X509_REQ_set_pubkey(req, key) != 1 || X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
        ssl_err(err, errlen, "signing the certificate request");
        goto done;
    }
    b = BIO_new(BIO_s_mem());
    if (!b || PEM_write_bio_X509_REQ(b, req) != 1) {
        ssl_err(err, errlen, "writing the certificate request as PEM");
        goto done;
    }
    if (!(*pem_out = bio_text(b))) {
        snprintf(err, errlen, "writing the certificate request: out of memory");
        goto done;
    }
    rc = 0;
done:
    BIO_free(b);
    X509_NAME_free(name);
    X509_REQ_free(req);
    return rc;
}

/* Adds an extension given in openssl.cnf syntax (constant values only:
 * nothing from outside goes through this parser). */
static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

/* The parts every certificate we make shares: v3, a random positive 128-bit
 * serial, subject CN=cn, validity from an hour ago for days, the public key. */
static int cert_base(X509 *x, const char *cn, int days, EVP_PKEY *pub, char *err, size_t errlen)
{
    int rc = -1;
    BIGNUM *bn = NULL;
    X509_NAME *name = NULL;
    if (days <= 0 || days > 36500) {
        snprintf(err, errlen, "validity of %d days is out of range (1..36500)", days);
        return -1;
    }
    if (!cn || !*cn || strlen(cn) > 64) {
        snprintf(err, errlen, "the common name must be 1 to 64 bytes");
        return -1;
    }
    if (X509_set_version(x, 2) != 1) {
        ssl_err(err, errlen, "certificate version");
        goto done;
    }
    bn = BN_new();
    /* Top bit set: exactly 128 bits, never zero, never negative. */
    if (!bn || BN_rand(bn, 128, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1 ||
        !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x))) {
        ssl_err(err, errlen, "certificate serial");
        goto done;
    }
    if (!(name = name_cn(cn)) || X509_set_subject_name(x, name) != 1) {
        ssl_err(err, errlen, "certificate subject");
        goto done;
    }
    if (!X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL)) {
        ssl_err(err, errlen, "certificate validity");
        goto done;
    }
    if (X509_set_pubkey(x, pub) != 1) {
        ssl_err(err, errlen, "certificate public key");
        goto done;
    }
    rc = 0;
done:
    X509_NAME_free(name);
    BN_free(bn);
    return rc;
}

int pki_ca_new(EVP_PKEY *key, const char *cn, int days, X509 **out, char *err, size_t errlen)
{
    int rc = -1;
    X509 *x = X509_new();
    *out = NULL;
    if (!x) {
        ssl_err(err, errlen, "making the CA certificate");
        goto done;
    }
    if (cert_base(x, cn, days, key, err, errlen) != 0)
        goto done;
    if (X509_set_issuer_name(x, X509_get_subject_name(x)) != 1 ||
        add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") != 0 ||
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
        add_ext(x, x, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, x, NID_authority_key_identifier, "keyid:always") != 0) {
        ssl_err(err, errlen, "the CA certificate's extensions");
        goto done;
    }
    if (X509_sign(x, key, EVP_sha256()) <= 0) {
        ssl_err(err, errlen, "signing the CA certificate");
        goto done;
    }
    *out = x;
    x = NULL;
    rc = 0;
done:
    X509_free(x);
    return rc;
}

/* Whether key is an EC key on P-256. */
static bool key_is_p256(EVP_PKEY *key)
{
    char group[64] = "";
    size_t n = 0;
    if (!EVP_PKEY_is_a(key, "EC"))
        return false;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &n) !=
        1) {
        ERR_clear_error();
        return false;
    }
    return strcmp(group, SN_X9_62_prime256v1) == 0 || strcmp(group, "P-256") == 0;
}

/* A DNS name fit for a SAN: 1..253 bytes of letters, digits, '-', '.', '_'
 * and a leading "*." wildcard. */
static bool dns_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    if (n > 2 && s[0] == '*' && s[1] == '.')
        s += 2;
    for (; *s; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_'))
            return false;
    }
    return true;
}

/* The subjectAltName extension for sans, each entry an IP literal or a DNS
 * name; built as objects, so no entry can smuggle config syntax. */
static int add_sans(X509 *x, const char *const *sans, char *err, size_t errlen)
{
    int rc = -1;
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *gen = NULL;
    if (!gens)
        goto oom;
    for (size_t i = 0; sans[i]; i++) {
        unsigned char ip[16];
        const char *s = sans[i];
        if (inet_pton(AF_INET, s, ip) == 1 || inet_pton(AF_INET6, s, ip) == 1) {
            ASN1_OCTET_STRING *o = a2i_IPADDRESS(s);
            if (!o || !(gen = GENERAL_NAME_new())) {
                ASN1_OCTET_STRING_free(o);
                goto oom;
            }
            GENERAL_NAME_set0_value(gen, GEN_IPADD, o);
        } else if (dns_name_ok(s)) {
            ASN1_IA5STRING *a = ASN1_IA5STRING_new();
            if (!a || ASN1_STRING_set(a, s, -1) != 1 || !(gen = GENERAL_NAME_new())) {
                ASN1_IA5STRING_free(a);
                goto oom;
            }
            GENERAL_NAME_set0_value(gen, GEN_DNS, a);
        } else {
            snprintf(err, errlen, "'%.80s' is neither an IP address nor a DNS name", s);
            goto done;
        }
        if (!sk_GENERAL_NAME_push(gens, gen))
            goto oom;
        gen = NULL;
    }
    if (sk_GENERAL_NAME_num(gens) > 0 &&
        X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_REPLACE) != 1)
        goto oom;
    rc = 0;
    goto done;
oom:
    ssl_err(err, errlen, "the certificate's subjectAltName");
done:
    GENERAL_NAME_free(gen);
    GENERAL_NAMES_free(gens);
    return rc;
}

int pki_issue_key(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *key, const char *cn,
                  const char *const *sans, pki_usage usage, int days, X509 **out, char *err,
                  size_t errlen)
{
    int rc = -1;
    X509 *x = NULL;
    *out = NULL;
    if (!ca) {
        ca_key = key; /* self-signed */
    } else if (X509_check_private_key(ca, ca_key) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "the CA key does not belong to the CA certificate");
        goto done;
    }
    if (!(x = X509_new())) {
        ssl_err(err, errlen, "making a certificate");
        goto done;
    }
    if (cert_base(x, cn, days, key, err, errlen) != 0)
        goto done;
    X509 *issuer = ca ? ca : x;
    if (X509_set_issuer_name(x, X509_get_subject_name(issuer)) != 1 ||
        add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_ext(x, issuer, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(x, issuer, NID_ext_key_usage, usage == PKI_SERVER ? "serverAuth" : "clientAuth") !=
            0 ||
        add_ext(x, issuer, NID_subject_key_identifier, "hash") != 0 ||
        (ca && add_ext(x, issuer, NID_authority_key_identifier, "keyid:always") != 0)) {
        ssl_err(err, errlen, "the certificate's extensions");
        goto done;
    }
    if (sans && add_sans(x, sans, err, errlen) != 0)
        goto done;
    if (X509_sign(x, ca_key, EVP_sha256()) <= 0) {
        ssl_err(err, errlen, "signing the certificate");
        goto done;
    }
    *out = x;
    x = NULL;
    rc = 0;
done:
    X509_free(x);
    return rc;
}

int pki_issue(X509 *ca, EVP_PKEY *ca_key, const char *csr_pem, const char *cn,
              const char *const *sans, pki_usage usage, int days, X509 **out, char *err,
              size_t errlen)
{
    int rc = -1;
    BIO *b = NULL;
    X509_REQ *req = NULL;
    EVP_PKEY *pub = NULL;
    *out = NULL;
    size_t n = csr_pem ? strnlen(csr_pem, PKI_CSR_MAX + 1) : 0;
    if (n == 0 || n > PKI_CSR_MAX) {
        snprintf(err, errlen, "the certificate request is %s", n ? "too large" : "empty");
        goto done;
    }
    b = BIO_new_mem_buf(csr_pem, (int)n);
    if (!b || !(req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL))) {
        ERR_clear_error();
        snprintf(err, errlen, "the certificate request is not a PEM CERTIFICATE REQUEST");
        goto done;
    }
    if (!(pub = X509_REQ_get0_pubkey(req))) {
        ssl_err(err, errlen, "the certificate request's public key cannot be read");
        goto done;
    }
    if (!key_is_p256(pub)) {
        snprintf(err, errlen, "the certificate request's key is %s, not EC P-256",
                 EVP_PKEY_get0_type_name(pub) ? EVP_PKEY_get0_type_name(pub) : "unknown");
        goto done;
    }
    if (X509_REQ_verify(req, pub) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "the certificate request's signature does not verify");
        goto done;
    }
    rc = pki_issue_key(ca, ca_key, pub, cn, sans, usage, days, out, err, errlen);
done:
    X509_REQ_free(req);
    BIO_free(b);
    return rc;
}

int pki_cert_fingerprint(X509 *cert, char out[PKI_FP_HEX])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (!cert || X509_digest(cert, EVP_sha256(), md, &n) != 1 || n != 32) {
        ERR_clear_error();
        return -1;
    }
    for (unsigned int i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
    return 0;
}

int pki_cert_cn(X509 *cert, char *out, size_t outlen, char *err, size_t errlen)
{
    int rc = -1;
    unsigned char *utf8 = NULL;
    X509_NAME *name = X509_get_subject_name(cert);
    int i = name ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
    if (outlen)
        out[0] = '\0';
    if (i < 0) {
        snprintf(err, errlen, "the certificate's subject has no CN");
        goto done;
    }
    if (X509_NAME_get_index_by_NID(name, NID_commonName, i) >= 0) {
        snprintf(err, errlen, "the certificate's subject has more than one CN");
        goto done;
    }
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
    if (n < 0) {
        ssl_err(err, errlen, "the certificate's CN");
        goto done;
    }
    if (n == 0 || (size_t)n >= outlen) {
        snprintf(err, errlen, "the certificate's CN is %s", n ? "too long" : "empty");
        goto done;
    }
    for (int k = 0; k < n; k++) {
        unsigned char ch = utf8[k];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_')) {
            snprintf(err, errlen, "the certificate's CN has a character outside [A-Za-z0-9_.-]");
            goto done;
        }
    }
    memcpy(out, utf8, (size_t)n);
    out[n] = '\0';
    rc = 0;
done:
    OPENSSL_free(utf8);
    return rc;
}

/* The directory part of path ("." when it has none), into a new string. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int pki_write_file(const char *path, const void *data, size_t len, unsigned mode, char *err,
                   size_t errlen)
{
    int rc = -1, fd = -1, dfd = -1;
    char *tmp = NULL, *dir = NULL;
    const unsigned char *p = data;
    size_t left = len;
    if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0) {
        tmp = NULL;
        snprintf(err, errlen, "%s: out of memory", path);
        goto done;
    }
    /* mkstemp makes it 0600, so a key is never readable by others, even
     * for a moment; fchmod then gives the mode asked for. */
    if ((fd = mkstemp(tmp)) < 0) {
        snprintf(err, errlen, "%s: cannot create a temporary file: %s", path, strerror(errno));
        free(tmp);
        tmp = NULL;
        goto done;
    }
    if (fchmod(fd, (mode_t)mode) != 0) {
        snprintf(err, errlen, "%s: chmod: %s", tmp, strerror(errno));
        goto done;
    }
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(err, errlen, "%s: write: %s", tmp, w < 0 ? strerror(errno) : "wrote nothing");
            goto done;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) {
        snprintf(err, errlen, "%s: fsync: %s", tmp, strerror(errno));
        goto done;
    }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) {
        snprintf(err, errlen, "%s: close: %s", tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: rename: %s", path, strerror(errno));
        goto done;
    }
    free(tmp);
    tmp = NULL; /* renamed: nothing to remove */
    if (!(dir = dir_of(path))) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto done;
    }
    if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 || fsync(dfd) != 0) {
        snprintf(err, errlen, "%s: fsync of the directory: %s", dir, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    if (dfd >= 0)
        close(dfd);
    if (fd >= 0)
        close(fd);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    free(dir);
    return rc;
}

int pki_read_file(const char *path, size_t max, char **out, size_t *len, char *err, size_t errlen)
{
    int rc = -1, fd = -1;
    char *buf = NULL;
    size_t n = 0;
    struct stat st;
    *out = NULL;
    if (len)
        *len = 0;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto done;
    }
    if ((uintmax_t)st.st_size > max) {
        snprintf(err, errlen, "%s: larger than %zu bytes", path, max);
        goto done;
    }
    if (!(buf = malloc(max + 1))) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto done;
    }
    /* Read to end of file rather than trusting st_size: the file may grow. */
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: read: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            snprintf(err, errlen, "%s: larger than %zu bytes", path, max);
            goto done;
        }
    }
    buf[n] = '\0';
    *out = buf;
    buf = NULL;
    if (len)
        *len = n;
    rc = 0;
done:
    if (buf) {
        explicit_bzero(buf, n);
        free(buf);
    }
    if (fd >= 0)
        close(fd);
    return rc;
}
