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
 *
 * Details a caller must know:
 *   - A message whose head is also its end (no body, Content-Length: 0, a
 *     response to HEAD, 1xx/204/304, or a response body of at most the two
 *     bytes HTTP_EV_RESPONSE_HEAD waits for) has no HTTP_EV_MESSAGE_END of its
 *     own: the head event says so with info->complete. Every other message
 *     ends with exactly one HTTP_EV_MESSAGE_END.
 *   - A stop can come without an event: body bytes are returned CONFORMS up
 *     to the end of the last complete framing unit, the rest is fed again.
 *   - Line endings are CRLF only: a bare LF is a violation ("http-bare-lf"),
 *     as is a CR not followed by LF ("http-bare-cr"). One empty line before
 *     a request-line is ignored (RFC 9112 2.2), a second is a violation.
 *   - The request-target accepts, besides RFC 3986 pchar, the characters
 *     browsers send unescaped (WHATWG URL): [ ] { } | ^ \ and backquote;
 *     never SP, CTLs, '"', '<', '>', '#', non-ASCII or a bad %-escape.
 *   - CONNECT (authority-form) is reported with HTTP_EV_REQUEST_HEAD; the
 *     proxy must take the connection over there (refuse it, or put another
 *     classifier on the tunnel). Client bytes while a CONNECT waits for its
 *     response, and any byte after a 2xx to CONNECT, are "http-connect".
 *   - http_classify_finish(S2C) ends a close-delimited response body: it
 *     returns CLS_CONFORMS with http_classify_event() set to
 *     HTTP_EV_MESSAGE_END, or HTTP_EV_RESPONSE_HEAD (complete) when the body
 *     was shorter than two bytes. Close-delimited and 2xx-CONNECT responses
 *     end the connection: later server bytes are a violation.
 *   - Response facts are taken from the bytes as sent: with a
 *     Content-Encoding the first body bytes are the encoded ones.
 *
 * Reasons (the part before ':' is stable; a detail may follow):
 *   http-request-line    malformed request-line (method not a token, SPs)
 *   http-status-line     malformed status-line (status code, SP, not HTTP/)
 *   http-version         not exactly HTTP/1.0 or HTTP/1.1 (e.g. HTTP/2.0)
 *   http-target          bad request-target, or a form the method can't use
 *   http-field-name      field name not a token, or no colon
 *   http-ws-before-colon whitespace between field name and colon
 *   http-obs-fold        a line starting with SP/HTAB (line folding)
 *   http-bare-cr         CR not followed by LF
 *   http-bare-lf         LF not preceded by CR
 *   http-ctl             a control byte (NUL, DEL, ...; HTAB is allowed)
 *   http-line-too-long   a line over HTTP_MAX_LINE bytes (CRLF not counted)
 *   http-head-too-large  a head or trailer section over HTTP_MAX_HEAD bytes
 *   http-too-many-headers more than HTTP_MAX_HEADERS field lines
 *   http-host            Host missing on HTTP/1.1, repeated, invalid, empty,
 *                        or not the absolute-form/CONNECT authority
 *   http-content-length  invalid, repeated (even if equal) or a list
 *   http-cl-te           Content-Length together with Transfer-Encoding
 *   http-transfer-encoding bad list, chunked not last (request) or twice,
 *                        or Transfer-Encoding with HTTP/1.0
 *   http-connection      Connection is not a list of tokens
 *   http-content-type    Content-Type repeated
 *   http-content-disposition repeated, unparsable filename, or a control
 *                        character in the file name
 *   http-chunk-size      chunk-size not hex, or over INT64_MAX
 *   http-chunk           bad chunk extension, or no CRLF after chunk data
 *   http-trailer         a framing/routing/policy field in a trailer
 *   http-upgrade         101 Switching Protocols
 *   http-connect         bytes the classifier can't judge around CONNECT
 *   http-unsolicited-response  server bytes with no request outstanding
 *   http-after-close     bytes after the message that ended the connection,
 *                        or after http_classify_finish() on that direction
 *   http-pipeline-depth  more than HTTP_MAX_PIPELINE requests outstanding
 *   http-truncated       the stream ended inside a head or a body
 *   http-no-memory       the head buffer could not be allocated
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
    const char *method; /* NUL-terminated token */
    int version;        /* 10 or 11 */
    http_target_form form;
    const char *target; /* request-target as received, NUL-terminated */
    /* Authority: from the target for absolute/authority form, otherwise from
     * the Host header. host is lower-cased, without brackets for IPv6, ""
     * when absent (allowed only for HTTP/1.0 origin-form). port is 0 when
     * the request did not name one. */
    const char *host;
    uint16_t port;
    const char *path;   /* path component only (no query), "" for
                           authority/asterisk form; for suffix checks */
    const char *origin; /* origin-form to send upstream: path?query, or
                           "*" for asterisk form */
    bool keep_alive;    /* connection persists after this exchange */
    bool has_body;
    int64_t content_length; /* -1 when chunked or no body */
    bool chunked;
    bool complete; /* the message ended with its head: no
                      HTTP_EV_MESSAGE_END follows */
} http_request_info;

typedef struct http_response_info {
    int status;
    int version;
    const char *content_type;         /* lower-cased media type without
                                         parameters, "" when absent */
    const char *disposition_filename; /* filename or filename* of
                                         Content-Disposition, "" when absent */
    bool body_starts_mz;              /* first two body bytes are "MZ" */
    bool keep_alive;
    int64_t content_length; /* -1 when chunked/close-delimited/none */
    bool chunked;
    bool close_delimited;
    bool complete; /* the message ended with this event:
                      no HTTP_EV_MESSAGE_END follows */
    bool interim;  /* 1xx: the final response follows */
} http_response_info;

typedef struct http_classify http_classify;

/* Allocation-free init of caller-provided storage of http_classify_size()
 * bytes. */
size_t http_classify_size(void);
void http_classify_init(http_classify *h);
void http_classify_release(http_classify *h);

cls_verdict http_classify_feed(http_classify *h, cls_dir dir, const uint8_t *data, size_t len,
                               size_t *consumed);
cls_verdict http_classify_finish(http_classify *h, cls_dir dir);
int http_classify_event(const http_classify *h);
const char *http_classify_reason(const http_classify *h);

/* Valid right after the matching event, until the next feed in the same
 * direction (or release); NULL at other times. Strings are NUL-terminated
 * and owned by h. */
const http_request_info *http_classify_request(const http_classify *h);
const http_response_info *http_classify_response(const http_classify *h);

/* Requests sent whose responses have not completed. */
unsigned http_classify_outstanding(const http_classify *h);

#endif
