/* pc_pki.h - the OpenSSL pieces of enrollment that both daemons use: keys,
 * certificate requests, the controller's CA signing them, fingerprints, and
 * PEM files written safely. docs/link.md says how they fit together.
 *
 * Keys are EC P-256. Certificates are X.509 v3 with SHA-256 signatures.
 * Every function returns 0 or -1 with err saying what failed (OpenSSL's
 * reason included); outputs are the caller's (free() for strings,
 * EVP_PKEY_free / X509_free for objects).
 */
#ifndef PORTCULLIS_PC_PKI_H
#define PORTCULLIS_PC_PKI_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PKI_WUR __attribute__((warn_unused_result))

/* "AB:CD:..." is for people; the wire and the store use lower-case hex. */
#define PKI_FP_HEX 65 /* 64 hex digits + NUL */

/* A new EC P-256 key. */
PKI_WUR int pki_key_new(EVP_PKEY **out, char *err, size_t errlen);

/* PEM text <-> objects. The text is NUL-terminated; *out is the caller's. */
PKI_WUR int pki_key_to_pem(EVP_PKEY *key, char **out, char *err, size_t errlen);
PKI_WUR int pki_key_from_pem(const char *pem, EVP_PKEY **out, char *err, size_t errlen);
PKI_WUR int pki_cert_to_pem(X509 *cert, char **out, char *err, size_t errlen);
PKI_WUR int pki_cert_from_pem(const char *pem, X509 **out, char *err, size_t errlen);

/* A certificate request for key (subject CN=cn, or no subject when cn is
 * NULL), signed with it, as PEM. */
PKI_WUR int pki_csr_new(EVP_PKEY *key, const char *cn, char **pem_out, char *err, size_t errlen);

/* A self-signed CA certificate for key: CN=cn, basicConstraints critical
 * CA:TRUE, keyUsage keyCertSign+cRLSign, valid days from now. */
PKI_WUR int pki_ca_new(EVP_PKEY *key, const char *cn, int days, X509 **out, char *err,
                       size_t errlen);

typedef enum { PKI_CLIENT = 0, PKI_SERVER = 1 } pki_usage;

/* Issues a certificate signed by ca/ca_key for the public key of the PEM
 * request csr_pem, whose own signature must verify (proof that the sender
 * holds the key). The request's subject and extensions are ignored: the
 * certificate says CN=cn, SAN from sans (NULL-terminated list of DNS names
 * and IP literals, may be NULL), extendedKeyUsage clientAuth or serverAuth,
 * a random 128-bit serial, valid days from an hour ago. A request that is
 * not PEM, whose key is not EC P-256 or whose signature fails is refused
 * with err saying which. */
PKI_WUR int pki_issue(X509 *ca, EVP_PKEY *ca_key, const char *csr_pem, const char *cn,
                      const char *const *sans, pki_usage usage, int days, X509 **out, char *err,
                      size_t errlen);
/* The same for a key already in hand (the hub's own server certificate).
 * ca NULL: a self-signed leaf, signed with key (ca_key is not used). */
PKI_WUR int pki_issue_key(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *key, const char *cn,
                          const char *const *sans, pki_usage usage, int days, X509 **out,
                          char *err, size_t errlen);

/* SHA-256 of the certificate's DER, lower-case hex. */
PKI_WUR int pki_cert_fingerprint(X509 *cert, char out[PKI_FP_HEX]);
/* The subject's CN into out (text, [A-Za-z0-9_.-] only, else an error). */
PKI_WUR int pki_cert_cn(X509 *cert, char *out, size_t outlen, char *err, size_t errlen);

/* Writes len bytes to path atomically: a temp file in the same directory
 * with mode, fsync, rename, fsync of the directory. */
PKI_WUR int pki_write_file(const char *path, const void *data, size_t len, unsigned mode,
                           char *err, size_t errlen);
/* Reads a whole file of at most max bytes, NUL-terminated; *len optional. */
PKI_WUR int pki_read_file(const char *path, size_t max, char **out, size_t *len, char *err,
                          size_t errlen);

#endif
