/* tls_verify.h - verify a server certificate chain against a trust store and
 * match it to the name the client asked for (OpenSSL). Used on the chain the
 * TLS classifier saw (TLS <= 1.2) and by the TLS 1.3 probe.
 *
 * A tls_verify_store is built once from the system trust store or a
 * configured CA bundle and is read-only afterwards, so every proxy thread may
 * use the same one.
 */
#ifndef PORTCULLIS_TLS_VERIFY_H
#define PORTCULLIS_TLS_VERIFY_H

#include <stddef.h>
#include <stdint.h>

typedef struct tls_verify_store tls_verify_store;

/* ca_file NULL or "": the system default paths. Returns NULL and fills err
 * (naming the file and OpenSSL's reason) on failure. Caller frees with
 * tls_verify_store_free. */
tls_verify_store *tls_verify_store_new(const char *ca_file, char *err, size_t errlen);
void tls_verify_store_free(tls_verify_store *s);
/* The underlying X509_STORE (for SSL_CTX_set1_verify_cert_store). Borrowed. */
void *tls_verify_store_x509(tls_verify_store *s);

/* Verifies the DER chain (leaf first) at the current time and, when name is
 * not empty, that the leaf is valid for it (DNS name or IP address).
 * Returns 0 when it verifies; otherwise -1 with a reason in reason
 * ("certificate-untrusted: self-signed certificate", "certificate-name-
 * mismatch: www.example.com", "certificate-expired: certificate has expired",
 * "certificate-parse").
 * names (optional) receives the leaf's DNS names, comma-separated, for the
 * domain policy check, even when verification fails.
 *
 * Reason prefixes (the text after ": " is OpenSSL's verify error string, or
 * the name for a mismatch):
 *   certificate-parse          a certificate is not exactly one DER X.509
 *   certificate-untrusted      no path to a trusted root (self-signed, unknown
 *                              issuer, untrusted or rejected root)
 *   certificate-expired        outside its validity period (also "not yet
 *                              valid")
 *   certificate-name-mismatch  the leaf is not valid for name
 *   certificate-invalid        anything else (bad signature, wrong purpose,
 *                              not a CA, path length, ...)
 * No partial chains: the path must end at a root in the store. DNS names are
 * checked without partial wildcards ("w*.example.com"); an IP literal name is
 * matched against IP address SANs. names lists the DNS SANs lower-cased
 * (names that are not printable or hold a comma are left out, and a name that
 * does not fit whole is dropped); only when the leaf has no DNS SAN, the
 * subject CNs, as OpenSSL's host check does. Safe to call from several
 * threads on the same store. */
int tls_verify_chain(tls_verify_store *s, const uint8_t *const *der, const size_t *der_len,
                     size_t n, const char *name, char *reason, size_t reasonlen, char *names,
                     size_t nameslen);

/* The reason text for an OpenSSL verify error (X509_V_ERR_*), the same for
 * the chain seen in a TLS <= 1.2 handshake and for the TLS 1.3 probe:
 * "certificate-name-mismatch: NAME", "certificate-expired: ...",
 * "certificate-untrusted: ...", "certificate-invalid: ...". */
void tls_verify_reason(long err, const char *name, char *reason, size_t reasonlen);

#endif
