/* rtsp_classify.h - RTSP conformance (RFC 2326 RTSP/1.0 and RFC 7826
 * RTSP/2.0) on port 554: request and response messages in both directions
 * (requests may flow both ways), CSeq on every message, Content-Length
 * bodies, and interleaved binary data frames ('$', channel, 16-bit length)
 * between messages.
 *
 * Follows the feed contract of classify.h. Stops with CLS_CONFORMS and
 * RTSP_EV_REQUEST after a complete request head, so the proxy can check the
 * URL's host and path; rtsp_classify_request() describes it. Every message
 * (request or response, either direction) ends with CLS_CONFORMS and
 * RTSP_EV_MESSAGE_END right after its last byte. A request without a body
 * ends where its head ends: its RTSP_EV_MESSAGE_END is delivered by the next
 * feed on that direction, which consumes nothing (a feed with len == 0 is
 * enough). Body bytes and interleaved frame bytes are returned as
 * CLS_CONFORMS without an event as soon as their framing is known to be
 * right; heads are held (CLS_NEED_MORE) until complete.
 *
 * What is checked, beyond the message grammar (CRLF line ends only, no
 * obs-fold, no whitespace before a colon, no control bytes, bounded lines and
 * heads):
 *   - Request-URI is "*" (OPTIONS, GET_PARAMETER, SET_PARAMETER only) or an
 *     absolute rtsp:// rtsps:// rtspu:// URL with a host; userinfo is
 *     tolerated and skipped, a fragment is not.
 *   - Version is exactly RTSP/1.0 or RTSP/2.0.
 *   - Exactly one numeric CSeq (at most 10 digits, < 2^32) on every message;
 *     a response must carry the CSeq of a request still outstanding from the
 *     other direction (1xx responses keep it outstanding), and a direction
 *     may have at most RTSP_MAX_PIPELINE requests outstanding.
 *   - At most one Content-Length, digits only, at most RTSP_MAX_BODY; none
 *     means no body. Transfer-Encoding does not exist in RTSP and is refused.
 *   - Interleaved frames only after a 2xx answer to a SETUP, only on the
 *     channels its Transport named ("interleaved=N[-M]"; when the answer
 *     names none, the first range the SETUP asked for), at least 4 bytes
 *     long and carrying RTP or RTCP (version 2 in the first payload byte).
 *
 * The state is small while idle; a head buffer is allocated only while a head
 * is being read and is freed at the next feed after the head completed.
 *
 * Reasons (the part before ": " is stable):
 *   "rtsp-request-line"   request line is not method SP URI SP version
 *   "rtsp-request-uri"    Request-URI is not "*" or an absolute RTSP URL
 *   "rtsp-status-line"    status line is not version SP 3DIGIT SP reason
 *   "rtsp-version"        version other than RTSP/1.0 or RTSP/2.0
 *   "rtsp-header"         malformed header field line
 *   "rtsp-obs-fold"       header line folded onto the previous one
 *   "rtsp-too-many-headers"
 *   "rtsp-cseq"           CSeq missing, repeated, not numeric, or unmatched
 *   "rtsp-pipeline"       more than RTSP_MAX_PIPELINE requests outstanding
 *   "rtsp-content-length" Content-Length repeated, not numeric, too large
 *   "rtsp-interleaved"    binary frame not allowed here or malformed
 *   "rtsp-line-too-long", "rtsp-head-too-large"
 *   "rtsp-bare-cr", "rtsp-bare-lf", "rtsp-nul"
 *   "rtsp-truncated"      stream ended inside a head, body or frame
 *   "rtsp-no-memory"      the head buffer could not be allocated
 */
#ifndef PORTCULLIS_RTSP_CLASSIFY_H
#define PORTCULLIS_RTSP_CLASSIFY_H

#include "classify.h"

enum {
    RTSP_EV_REQUEST = 1,
    RTSP_EV_MESSAGE_END = 2,
};

/* Bounds. */
#define RTSP_MAX_LINE 4096    /* bytes of one line, without CRLF */
#define RTSP_MAX_HEAD 16384   /* bytes of a whole head, CRLFs included */
#define RTSP_MAX_HEADERS 64   /* header fields in one head */
#define RTSP_MAX_BODY 1048576 /* largest Content-Length */
#define RTSP_MAX_PIPELINE 16  /* requests outstanding per direction */

typedef struct rtsp_request_info {
    const char *method;
    const char *url;  /* request URL as received, or "*" */
    const char *host; /* lower-cased host of an rtsp:// URL, "" otherwise */
    const char *path; /* path of the URL, "" when none */
    int version;      /* 10 or 20 */
    cls_dir dir;      /* direction the request travels in */
    uint16_t port;    /* port named in the URL, 0 when none */
    uint32_t cseq;
    uint32_t content_length; /* body bytes that follow the head */
} rtsp_request_info;

typedef struct rtsp_classify rtsp_classify;

/* Allocation-free init of caller-provided storage of rtsp_classify_size()
 * bytes; release frees the head buffer, never r itself. */
size_t rtsp_classify_size(void);
void rtsp_classify_init(rtsp_classify *r);
void rtsp_classify_release(rtsp_classify *r);
cls_verdict rtsp_classify_feed(rtsp_classify *r, cls_dir dir, const uint8_t *data, size_t len,
                               size_t *consumed);
cls_verdict rtsp_classify_finish(rtsp_classify *r, cls_dir dir);
int rtsp_classify_event(const rtsp_classify *r);
const char *rtsp_classify_reason(const rtsp_classify *r);
/* Valid right after RTSP_EV_REQUEST, until the next feed on r; owned by r. */
const rtsp_request_info *rtsp_classify_request(const rtsp_classify *r);

#endif
