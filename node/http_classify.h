/* http_classify.h - strict HTTP/1.x conformance (RFC 9112) for both
 * directions of one connection, every message on it, with the request and
 * response facts the proxy's policy checks need.
 *
 * Follows the feed contract of classify.h. The classifier stops with
 * CLS_CONFORMS and an event after:
 *   HTTP_EV_REQUEST_HEAD  - a complete, valid request head (C2S);
 *                           http_classify_request() describes it.
 *   HTTP_EV_RESPONSE_HEAD - a complete, valid response head plus the first
 *                           two bytes of its body content (de-chunked), or
 *                           fewer when the body is shorter (S2C);
 *                           http_classify_response() describes it.
 *   HTTP_EV_MESSAGE_END   - the end of a message's body (either direction),
 *                           so the next head always starts at the frontier.
 * Body bytes between these are returned as CLS_CONFORMS without an event as
 * soon as their framing (Content-Length, chunk sizes) is known to be right.
 *
 * Response framing follows the requests (HEAD and 1xx/204/304 have no body;
 * a response to CONNECT with 2xx ends HTTP on the connection), so pipelined
 * requests are found and checked one by one. A 101 Switching Protocols is a
 * violation ("http-upgrade"): after it the bytes are no longer HTTP.
 *
 * The state is small while idle; a head buffer is allocated only while a head
 * is being read and is freed after its event has been consumed.
 */
#ifndef PORTCULLIS_HTTP_CLASSIFY_H
#define PORTCULLIS_HTTP_CLASSIFY_H

#include "classify.h"

#include <stdbool.h>

enum {
    HTTP_EV_REQUEST_HEAD = 1,
    HTTP_EV_RESPONSE_HEAD = 2,
    HTTP_EV_MESSAGE_END = 3,
};

/* Bounds (bytes). A line or head past them is a violation
 * ("http-line-too-long", "http-head-too-large", "http-too-many-headers"). */
#define HTTP_MAX_LINE 8192
#define HTTP_MAX_HEAD 32768
#define HTTP_MAX_HEADERS 100
/* Requests outstanding (sent, response not complete) the classifier tracks;
 * the proxy stops reading from the client at this depth. */
#define HTTP_MAX_PIPELINE 32

typedef enum {
    HTTP_FORM_ORIGIN = 1,    /* /path?query */
    HTTP_FORM_ABSOLUTE = 2,  /* http://host:port/path?query */
    HTTP_FORM_AUTHORITY = 3, /* host:port (CONNECT only) */
    HTTP_FORM_ASTERISK = 4,  /* * (OPTIONS only) */
} http_target_form;

typedef struct http_request_info {
    const char *method;     /* NUL-terminated token */
    int version;            /* 10 or 11 */
    http_target_form form;
    const char *target;     /* request-target as received, NUL-terminated */
    /* Authority: from the target for absolute/authority form, otherwise from
     * the Host header. host is lower-cased, without brackets for IPv6, ""
     * when absent (allowed only for HTTP/1.0 origin-form). port is 0 when
     * the request did not name one. */
    const char *host;
    uint16_t port;
    const char *path;       /* path component only (no query), "" for
                               authority/asterisk form; for suffix checks */
    const char *origin;     /* origin-form to send upstream: path?query, or
                               "*" for asterisk form */
    bool keep_alive;        /* connection persists after this exchange */
    bool has_body;
    int64_t content_length; /* -1 when chunked or no body */
    bool chunked;
} http_request_info;

typedef struct http_response_info {
    int status;
    int version;
    const char *content_type;        /* lower-cased media type without
                                        parameters, "" when absent */
    const char *disposition_filename; /* filename or filename* of
                                         Content-Disposition, "" when absent */
    bool body_starts_mz;             /* first two body bytes are "MZ" */
    bool keep_alive;
    int64_t content_length;          /* -1 when chunked/close-delimited/none */
    bool chunked;
    bool close_delimited;
} http_response_info;

typedef struct http_classify http_classify;

/* Allocation-free init of caller-provided storage of http_classify_size()
 * bytes. */
size_t http_classify_size(void);
void http_classify_init(http_classify *h);
void http_classify_release(http_classify *h);

cls_verdict http_classify_feed(http_classify *h, cls_dir dir, const uint8_t *data,
                               size_t len, size_t *consumed);
cls_verdict http_classify_finish(http_classify *h, cls_dir dir);
int http_classify_event(const http_classify *h);
const char *http_classify_reason(const http_classify *h);

/* Valid right after the matching event, until the next feed on h. */
const http_request_info *http_classify_request(const http_classify *h);
const http_response_info *http_classify_response(const http_classify *h);

/* Requests sent whose responses have not completed. */
unsigned http_classify_outstanding(const http_classify *h);

#endif
