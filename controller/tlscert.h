/* tlscert.h - the controller's HTTPS certificate: loaded from the operator's
 * PEM files, or a self-signed one (EC P-256) made on first start, kept in
 * two files and reused on later starts. Both give the PEM text in memory for
 * libmicrohttpd and the SHA-256 fingerprint an operator pins (docs/controller.md).
 */
#ifndef PORTCULLIS_TLSCERT_H
#define PORTCULLIS_TLSCERT_H

#include <stdbool.h>
#include <stddef.h>

#define TLSCERT_WUR __attribute__((warn_unused_result))

typedef struct tlscert {
    char *cert_pem; /* NUL-terminated PEM of the certificate (chain) */
    char *key_pem;  /* NUL-terminated PEM of the private key; wiped on free */
    /* "AB:CD:..." SHA-256 of the leaf certificate's DER (32 bytes, 95 chars) */
    char fingerprint[96];
} tlscert;

/* Loads cert_file and key_file (PEM) and checks that the key belongs to the
 * certificate. Returns 0 and fills *out (tlscert_free), or -1 with err. */
TLSCERT_WUR int tlscert_load(const char *cert_file, const char *key_file, tlscert *out, char *err,
                             size_t errlen);

/* Loads cert_file/key_file if both exist; if neither exists, makes a
 * self-signed certificate (EC P-256, 10 years, SAN DNS:localhost,
 * IP:127.0.0.1 and server_name if not NULL/"") and writes it there, the key
 * with mode 0600. *created tells which. One file without the other is an
 * error (the operator must decide). Returns 0 or -1 with err. */
TLSCERT_WUR int tlscert_load_or_create(const char *cert_file, const char *key_file,
                                       const char *server_name, tlscert *out, bool *created,
                                       char *err, size_t errlen);

/* Frees what c holds (the key wiped first) and zeroes it. */
void tlscert_free(tlscert *c);

#endif
