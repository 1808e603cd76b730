/* api.h - the controller's REST API: HTTPS (libmicrohttpd) on one port,
 * /api/v1/..., JSON in and out, bearer tokens with roles, the JSON error
 * convention of docs/api/openapi.json. One internal polling thread serves
 * every connection, so the one store handle (store.h) is used from that
 * thread only.
 */
#ifndef PORTCULLIS_API_H
#define PORTCULLIS_API_H

#include "hub.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define API_WUR __attribute__((warn_unused_result))

/* Request bodies larger than this are refused with 413 as they arrive. */
#define API_BODY_MAX (1024 * 1024)
/* Simultaneous connections; more are refused by the server. */
#define API_CONNECTION_LIMIT 256

#define API_VERSION "0.2.0"

typedef struct api api;

typedef struct api_options {
    const char *listen;        /* "ADDR:PORT" or "[V6ADDR]:PORT"; port 0 picks one */
    const char *cert_pem;      /* PEM text of the certificate, kept by the caller */
    const char *key_pem;       /* PEM text of its key, kept by the caller */
    size_t body_max;           /* 0: API_BODY_MAX */
    unsigned connection_limit; /* 0: API_CONNECTION_LIMIT */
    const char *web_root;      /* the dashboard's built files (copied), or NULL: "/" then
                                  says the dashboard is not built here */
} api_options;

/* Parses "ADDR:PORT" / "[V6]:PORT" (numeric addresses only) into *ss.
 * Returns 0, or -1 with err naming what is wrong. */
API_WUR int api_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
                             size_t errlen);

/* Checks a PORTCULLIS_ADMIN_TOKEN value against the store's rules for an
 * imported token (32 to 256 printable ASCII bytes, no spaces), so a bad one
 * is refused before the database is created. Returns 0, or -1 with err. */
API_WUR int api_admin_token_check(const char *token, char *err, size_t errlen);

/* Opens (creating and seeding if needed) the store at db_path
 * (store_open). Returns 0 and *out (api_free), or -1 with err. */
API_WUR int api_open(const char *db_path, api **out, char *err, size_t errlen);

/* First start (store_created): creates the admin token for the seeded user
 * "admin", env_token if not NULL (checked with api_admin_token_check first)
 * or else a random one. Returns 1 with *token_out the token to show (a
 * random one; the caller wipes and frees it) or NULL (env_token was used),
 * 0 when the database existed before (never again), -1 with err. */
API_WUR int api_bootstrap_admin(api *a, const char *env_token, char **token_out, char *err,
                                size_t errlen);

/* Connects the API to the node hub (call before api_start): enrollment
 * tokens carry c's fingerprint and their command names the hub as
 * https://hub_name:<hub port>; revocations close the node's link and every
 * policy change is pushed. h and c are the caller's and must outlive a;
 * hub_name is copied. Without it the node link routes answer 503. Returns 0,
 * or -1 when memory runs out. */
API_WUR int api_set_hub(api *a, hub *h, ca *c, const char *hub_name);

/* Starts serving: /api/ is the REST API, every other path a file under
 * o->web_root (docs/controller.md, "Dashboard files"). Returns 0, or -1 with err (address in use,
 * bad PEM...). */
API_WUR int api_start(api *a, const api_options *o, char *err, size_t errlen);

/* The port the server listens on (after api_start). */
uint16_t api_port(const api *a);

/* Stops serving (waits for requests in progress) and frees a. NULL is ok. */
void api_free(api *a);

#endif
