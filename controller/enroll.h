/* enroll.h - the controller's side of enrollment (docs/link.md): the token
 * format and the answer to one "POST /enroll" on the hub port. Pure but for
 * the store and the CA it is handed; the hub does the HTTP.
 */
#ifndef PORTCULLIS_ENROLL_H
#define PORTCULLIS_ENROLL_H

#include "ca.h"
#include "store.h"

#include <stddef.h>

#define ENROLL_WUR __attribute__((warn_unused_result))

/* Largest request body accepted. */
#define ENROLL_BODY_MAX (16 * 1024)

/* "pce1.<secret>.<ca fingerprint>" into a new string (the caller wipes and
 * frees it); NULL when memory runs out. */
char *enroll_token_format(const char *secret, const char *ca_fingerprint);

/* Answers one enrollment request: body is JSON {"token": "pce1....", "csr":
 * "-----BEGIN CERTIFICATE REQUEST-----..."}. On success *status is 200 and
 * *response {"node", "certificate", "ca_certificate"}; otherwise *status is
 * 400 (bad JSON or fields: code "bad-request"), 401 (token refused: codes
 * "token-unknown", "token-expired", "token-used", "token-ca-mismatch"), 422
 * ("bad-csr") or 500, and *response is {"error": {"code", "message"}}.
 * *response is the caller's (free). Returns 0, or -1 when memory ran out
 * (nothing to answer with). Nothing changes unless the answer is 200. */
ENROLL_WUR int enroll_handle(store *s, ca *c, const char *body, size_t len, int *status,
                             char **response);

#endif
