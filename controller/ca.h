/* ca.h - the controller's certificate authority (docs/link.md): an EC P-256
 * CA made on first start and kept next to the database, which signs every
 * node's certificate and the hub's own server certificate. Nodes pin it by
 * the fingerprint their enrollment token carries.
 */
#ifndef PORTCULLIS_CA_H
#define PORTCULLIS_CA_H

#include "pc_pki.h"

#include <stdbool.h>
#include <stddef.h>

#define CA_WUR __attribute__((warn_unused_result))

#define CA_NODE_DAYS 825
#define CA_DAYS 3650

typedef struct ca {
    X509 *cert;
    EVP_PKEY *key;
    char *cert_pem;                /* the CA certificate, what a node receives */
    char fingerprint[PKI_FP_HEX];  /* of cert, lower-case hex */
    /* The hub's server certificate, issued by this CA, followed by the CA's
     * certificate (the chain it presents, so a node can find the CA its
     * token names); hub_cert_path holds the same chain. */
    char *hub_cert_pem, *hub_key_pem;
    char *cert_path, *hub_cert_path, *hub_key_path; /* files the hub's TLS loads */
} ca;

/* Loads <db>.ca.pem / <db>.ca.key.pem, or makes them (key 0600) when
 * neither exists (*created then true); one without the other is an error.
 * Then loads or makes the hub certificate <db>.hub.pem / <db>.hub.key.pem
 * for the names in sans (NULL-terminated: DNS names and IP literals;
 * "localhost" and "127.0.0.1" are always added), remaking it when it is not
 * from this CA, expires within 30 days, or lacks one of the names. Returns
 * 0, or -1 with err. */
CA_WUR int ca_open(const char *db_path, const char *const *sans, ca *out, bool *created, char *err,
                   size_t errlen);
void ca_close(ca *c);

/* Issues a node certificate (CN = node name, clientAuth, CA_NODE_DAYS) for
 * the request csr_pem; *cert_pem is the caller's; fingerprint gets its
 * SHA-256. Refuses a request that does not verify (err says why). */
CA_WUR int ca_issue_node(ca *c, const char *csr_pem, const char *node_name, char **cert_pem,
                         char fingerprint[PKI_FP_HEX], char *err, size_t errlen);

#endif
