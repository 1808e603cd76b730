/* tlscert.c - the controller's HTTPS certificate: operator-given PEM files,
 * or a self-signed EC P-256 certificate made once and reused (tlscert.h). */
#include "tlscert.h"

#include "pc_pki.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* PEM files larger than this are not certificates we want. */
#define TLSCERT_FILE_MAX (1024 * 1024)

static void ssl_err(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "unknown error";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    snprintf(err, errlen, "%s: %s", what, buf);
}

static int read_file(const char *path, char **out, char *err, size_t errlen)
{
    return pki_read_file(path, TLSCERT_FILE_MAX, out, NULL, err, errlen);
}

static int fingerprint(X509 *x, char out[96])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32)
        return -1;
    for (unsigned int i = 0; i < n; i++)
        snprintf(out + i * 3, 4, "%02X%s", md[i], i + 1 < n ? ":" : "");
    return 0;
}

/* Parses the PEM texts in c, checks they match, fills the fingerprint. */
static int check_pair(tlscert *c, const char *what, char *err, size_t errlen)
{
    int rc = -1;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    BIO *b = BIO_new_mem_buf(c->cert_pem, -1);
    if (!b || !(x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        ssl_err(err, errlen, "certificate: not a PEM certificate");
        goto done;
    }
    BIO_free(b);
    b = BIO_new_mem_buf(c->key_pem, -1);
    if (!b || !(k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL))) {
        ssl_err(err, errlen, "key: not an unencrypted PEM private key");
        goto done;
    }
    if (X509_check_private_key(x, k) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: the key does not belong to the certificate", what);
        goto done;
    }
    if (fingerprint(x, c->fingerprint) != 0) {
        ssl_err(err, errlen, "certificate fingerprint");
        goto done;
    }
    rc = 0;
done:
    EVP_PKEY_free(k);
    X509_free(x);
    BIO_free(b);
    return rc;
}

int tlscert_load(const char *cert_file, const char *key_file, tlscert *out, char *err,
                 size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (read_file(cert_file, &out->cert_pem, err, errlen) != 0 ||
        read_file(key_file, &out->key_pem, err, errlen) != 0)
        goto fail;
    if (check_pair(out, cert_file, err, errlen) != 0)
        goto fail;
    return 0;
fail:
    tlscert_free(out);
    return -1;
}

/* A DNS name we are willing to put in a SAN: letters, digits, '-', '.'. */
static int san_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.'))
            return 0;
    }
    return 1;
}

static int make_self_signed(const char *server_name, tlscert *out, char *err, size_t errlen)
{
    int rc = -1;
    EVP_PKEY *k = NULL;
    X509 *x = NULL;
    bool named = server_name && *server_name && strcmp(server_name, "localhost") != 0;
    const char *sans[] = {"localhost", "127.0.0.1", named ? server_name : NULL, NULL};
    const char *cn = named && strlen(server_name) <= 64 ? server_name : "localhost";
    if (pki_key_new(&k, err, errlen) != 0 ||
        pki_issue_key(NULL, NULL, k, cn, sans, PKI_SERVER, 3650, &x, err, errlen) != 0 ||
        pki_cert_to_pem(x, &out->cert_pem, err, errlen) != 0 ||
        pki_key_to_pem(k, &out->key_pem, err, errlen) != 0)
        goto done;
    if (fingerprint(x, out->fingerprint) != 0) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    rc = 0;
done:
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

/* Writes text to path (created, never replaced) with mode, fsynced. */
static int write_new(const char *path, const char *text, mode_t mode, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            close(fd);
            unlink(path);
            return -1;
        }
        off += (size_t)n;
    }
    if (fchmod(fd, mode) != 0 || fsync(fd) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    close(fd);
    return 0;
}

int tlscert_load_or_create(const char *cert_file, const char *key_file, const char *server_name,
                           tlscert *out, bool *created, char *err, size_t errlen)
{
    struct stat st;
    bool have_cert = stat(cert_file, &st) == 0, have_key = stat(key_file, &st) == 0;
    memset(out, 0, sizeof(*out));
    *created = false;
    if (have_cert && have_key)
        return tlscert_load(cert_file, key_file, out, err, errlen);
    if (have_cert || have_key) {
        snprintf(err, errlen, "%s exists but %s does not; remove it or supply both",
                 have_cert ? cert_file : key_file, have_cert ? key_file : cert_file);
        return -1;
    }
    if (server_name && *server_name && !san_name_ok(server_name)) {
        snprintf(err, errlen, "server_name '%s' is not a DNS name", server_name);
        return -1;
    }
    if (make_self_signed(server_name, out, err, errlen) != 0)
        goto fail;
    if (write_new(key_file, out->key_pem, 0600, err, errlen) != 0)
        goto fail;
    if (write_new(cert_file, out->cert_pem, 0644, err, errlen) != 0) {
        unlink(key_file);
        goto fail;
    }
    *created = true;
    return 0;
fail:
    tlscert_free(out);
    return -1;
}

void tlscert_free(tlscert *c)
{
    if (!c)
        return;
    if (c->key_pem) {
        explicit_bzero(c->key_pem, strlen(c->key_pem));
        free(c->key_pem);
    }
    free(c->cert_pem);
    memset(c, 0, sizeof(*c));
}
