/* rtsp_classify.h - RTSP conformance (RFC 2326 RTSP/1.0 and RFC 7826
 * RTSP/2.0) on port 554: request and response messages in both directions
 * (requests may flow both ways), CSeq on every message, Content-Length
 * bodies, and interleaved binary data frames ('$', channel, 16-bit length)
 * between messages.
 *
 * Follows the feed contract of classify.h. Stops with CLS_CONFORMS and
 * RTSP_EV_REQUEST after a complete request head, so the proxy can check the
 * URL's host and path; rtsp_classify_request() describes it.
 *
 * Reasons: "rtsp-request-line", "rtsp-status-line", "rtsp-version",
 * "rtsp-header", "rtsp-cseq", "rtsp-content-length", "rtsp-line-too-long",
 * "rtsp-head-too-large", "rtsp-bare-cr", "rtsp-truncated".
 */
#ifndef PORTCULLIS_RTSP_CLASSIFY_H
#define PORTCULLIS_RTSP_CLASSIFY_H

#include "classify.h"

enum {
    RTSP_EV_REQUEST = 1,
    RTSP_EV_MESSAGE_END = 2,
};

typedef struct rtsp_request_info {
    const char *method;
    const char *url;   /* request URL as received, or "*" */
    const char *host;  /* lower-cased host of an rtsp:// URL, "" otherwise */
    const char *path;  /* path of the URL, "" when none */
    int version;       /* 10 or 20 */
} rtsp_request_info;

typedef struct rtsp_classify rtsp_classify;

size_t rtsp_classify_size(void);
void rtsp_classify_init(rtsp_classify *r);
void rtsp_classify_release(rtsp_classify *r);
cls_verdict rtsp_classify_feed(rtsp_classify *r, cls_dir dir, const uint8_t *data, size_t len,
                               size_t *consumed);
cls_verdict rtsp_classify_finish(rtsp_classify *r, cls_dir dir);
int rtsp_classify_event(const rtsp_classify *r);
const char *rtsp_classify_reason(const rtsp_classify *r);
/* Valid right after RTSP_EV_REQUEST, until the next feed on r. */
const rtsp_request_info *rtsp_classify_request(const rtsp_classify *r);

#endif
