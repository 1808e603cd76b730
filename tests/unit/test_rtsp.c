/* test_rtsp.c - the RTSP classifier against its vectors (tests/vectors/rtsp,
 * recorded and hand-written), plus the parts of its contract the vector
 * runner does not see: head buffers, request facts, pending events and
 * the state after a violation. */
#include "cu_main.h"
#include "rtsp_classify.h"
#include "vectors.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void describe(const void *state, int ev, char *buf, size_t buflen)
{
    if (ev == RTSP_EV_REQUEST) {
        const rtsp_request_info *ri = rtsp_classify_request(state);
        snprintf(buf, buflen, "method=%s url=%s host=%s port=%u path=%s version=%d cseq=%u len=%u",
                 ri->method, ri->url, ri->host, (unsigned)ri->port, ri->path, ri->version,
                 (unsigned)ri->cseq, (unsigned)ri->content_length);
    } else if (ev == RTSP_EV_MESSAGE_END) {
        snprintf(buf, buflen, "end");
    } else {
        snprintf(buf, buflen, "event=%d", ev);
    }
}

static void test_vectors(void)
{
    int n = vec_check_dir(&rtsp_cls_ops, describe, VECTOR_DIR "/rtsp");
    CU_ASSERT(n > 0);
}

typedef struct feeder {
    rtsp_classify *r;
    cls_verdict v;
    size_t used;
} feeder;

static cls_verdict feed_str(feeder *f, cls_dir dir, const char *s)
{
    f->used = 0;
    f->v = rtsp_classify_feed(f->r, dir, (const uint8_t *)s, strlen(s), &f->used);
    return f->v;
}

static bool reason_is(const rtsp_classify *r, const char *prefix)
{
    const char *why = rtsp_classify_reason(r);
    return why && strncmp(why, prefix, strlen(prefix)) == 0;
}

static rtsp_classify *new_classifier(void)
{
    rtsp_classify *r = calloc(1, rtsp_classify_size());
    if (r)
        rtsp_classify_init(r);
    return r;
}

static void free_classifier(rtsp_classify *r)
{
    if (!r)
        return;
    rtsp_classify_release(r);
    free(r);
}

/* The request facts the proxy's domain and suffix checks use. */
static void test_request_info(void)
{
    rtsp_classify *r = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    feeder f = {r, 0, 0};
    const char *req = "DESCRIBE rtsp://User:pw@Media.Example.COM:8554/a/b.sdp?x=1 RTSP/1.0\r\n"
                      "CSeq: 7\r\nAccept: application/sdp\r\n\r\n";
    CU_ASSERT_EQUAL(feed_str(&f, CLS_C2S, req), CLS_CONFORMS);
    CU_ASSERT_EQUAL(f.used, strlen(req));
    CU_ASSERT_EQUAL(rtsp_classify_event(r), RTSP_EV_REQUEST);
    const rtsp_request_info *ri = rtsp_classify_request(r);
    CU_ASSERT_STRING_EQUAL(ri->method, "DESCRIBE");
    CU_ASSERT_STRING_EQUAL(ri->host, "media.example.com");
    CU_ASSERT_STRING_EQUAL(ri->path, "/a/b.sdp");
    CU_ASSERT_EQUAL(ri->port, 8554);
    CU_ASSERT_EQUAL(ri->version, 10);
    CU_ASSERT_EQUAL(ri->cseq, 7);
    CU_ASSERT_EQUAL(ri->dir, CLS_C2S);
    /* The message end of a bodiless request comes with the next feed, even
     * an empty one, and consumes nothing. */
    CU_ASSERT_EQUAL(rtsp_classify_feed(r, CLS_C2S, NULL, 0, &f.used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(f.used, 0);
    CU_ASSERT_EQUAL(rtsp_classify_event(r), RTSP_EV_MESSAGE_END);
    CU_ASSERT_STRING_EQUAL(rtsp_classify_request(r)->method, "");
    CU_ASSERT_EQUAL(rtsp_classify_feed(r, CLS_C2S, NULL, 0, &f.used), CLS_NEED_MORE);
    CU_ASSERT_EQUAL(rtsp_classify_finish(r, CLS_C2S), CLS_CONFORMS);
    free_classifier(r);
}

/* A request from the server (RFC 2326 10.6 ANNOUNCE, 10.9 GET_PARAMETER) is
 * described too, and the client answers it. */
static void test_server_request(void)
{
    rtsp_classify *r = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    feeder f = {r, 0, 0};
    CU_ASSERT_EQUAL(feed_str(&f, CLS_S2C, "GET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
                    CLS_CONFORMS);
    CU_ASSERT_EQUAL(rtsp_classify_event(r), RTSP_EV_REQUEST);
    CU_ASSERT_EQUAL(rtsp_classify_request(r)->dir, CLS_S2C);
    CU_ASSERT_STRING_EQUAL(rtsp_classify_request(r)->url, "*");
    CU_ASSERT_STRING_EQUAL(rtsp_classify_request(r)->host, "");
    CU_ASSERT_EQUAL(feed_str(&f, CLS_C2S, "RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n"), CLS_CONFORMS);
    CU_ASSERT_EQUAL(rtsp_classify_event(r), RTSP_EV_MESSAGE_END);
    /* Answered once; a second answer is not solicited. */
    CU_ASSERT_EQUAL(feed_str(&f, CLS_C2S, "RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n"), CLS_VIOLATES);
    CU_ASSERT(reason_is(r, "rtsp-cseq"));
    free_classifier(r);
}

/* After a violation every feed and finish says so again, with the same
 * reason, and consumes nothing. */
static void test_dead_state(void)
{
    rtsp_classify *r = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    feeder f = {r, 0, 0};
    CU_ASSERT_EQUAL(feed_str(&f, CLS_C2S, "GET / HTTP/1.1\r\n"), CLS_VIOLATES);
    char reason[160];
    snprintf(reason, sizeof(reason), "%s", rtsp_classify_reason(r));
    CU_ASSERT_NSTRING_EQUAL(reason, "rtsp-version", 12);
    CU_ASSERT_EQUAL(feed_str(&f, CLS_S2C, "RTSP/1.0 200 OK\r\n"), CLS_VIOLATES);
    CU_ASSERT_EQUAL(f.used, 0);
    CU_ASSERT_EQUAL(rtsp_classify_finish(r, CLS_C2S), CLS_VIOLATES);
    CU_ASSERT_STRING_EQUAL(rtsp_classify_reason(r), reason);
    free_classifier(r);
}

/* Interleaved frames stream through without being held, and a head that
 * follows a frame in the same feed is left for the next feed. */
static void test_interleaved_frontier(void)
{
    rtsp_classify *r = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    feeder f = {r, 0, 0};
    feed_str(&f, CLS_C2S,
             "SETUP rtsp://h/s/track1 RTSP/1.0\r\nCSeq: 3\r\n"
             "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n");
    CU_ASSERT_EQUAL(f.v, CLS_CONFORMS);
    CU_ASSERT_EQUAL(feed_str(&f, CLS_S2C,
                             "RTSP/1.0 200 OK\r\nCSeq: 3\r\nSession: 1\r\n"
                             "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"),
                    CLS_CONFORMS);
    static const uint8_t frame[] = {'$', 0, 0, 12, 0x80, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4};
    size_t used = 0;
    /* Header and part of the payload: conforms at once. */
    CU_ASSERT_EQUAL(rtsp_classify_feed(r, CLS_S2C, frame, 7, &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(used, 7);
    uint8_t tail[9 + 4];
    memcpy(tail, frame + 7, 9);
    memcpy(tail + 9, "RTSP", 4);
    CU_ASSERT_EQUAL(rtsp_classify_feed(r, CLS_S2C, tail, sizeof(tail), &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(used, 9);
    CU_ASSERT_EQUAL(rtsp_classify_event(r), CLS_EV_NONE);
    /* The SETUP's message end is still owed to the client direction. */
    CU_ASSERT_EQUAL(rtsp_classify_feed(r, CLS_C2S, frame, 3, &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(used, 0);
    CU_ASSERT_EQUAL(rtsp_classify_event(r), RTSP_EV_MESSAGE_END);
    /* A frame header cut short is held. */
    CU_ASSERT_EQUAL(rtsp_classify_feed(r, CLS_C2S, frame, 3, &used), CLS_NEED_MORE);
    CU_ASSERT_EQUAL(used, 3);
    CU_ASSERT_EQUAL(rtsp_classify_finish(r, CLS_C2S), CLS_VIOLATES);
    CU_ASSERT(reason_is(r, "rtsp-truncated"));
    free_classifier(r);
}

/* A head is buffered only while it is read: releasing mid-head frees it
 * (the sanitizer build would report a leak otherwise), and a head of the
 * maximum size is refused one byte later. */
static void test_head_bounds(void)
{
    rtsp_classify *r = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    feeder f = {r, 0, 0};
    CU_ASSERT_EQUAL(feed_str(&f, CLS_C2S, "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n"), CLS_NEED_MORE);
    free_classifier(r);

    r = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    f.r = r;
    char *big = malloc(RTSP_MAX_HEAD + 2048);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    size_t n = (size_t)snprintf(big, 64, "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n");
    while (n <= RTSP_MAX_HEAD) {
        memcpy(big + n, "X-Pad: ", 7);
        memset(big + n + 7, 'a', 991);
        memcpy(big + n + 998, "\r\n", 2);
        n += 1000;
    }
    big[n] = '\0';
    CU_ASSERT_EQUAL(feed_str(&f, CLS_C2S, big), CLS_VIOLATES);
    CU_ASSERT(reason_is(r, "rtsp-head-too-large"));
    CU_ASSERT_EQUAL(f.used, RTSP_MAX_HEAD + 1);
    free(big);
    free_classifier(r);
}

int unit_register(void)
{
    static const unit_case cases[] = {
        {"vectors", test_vectors},
        {"request_info", test_request_info},
        {"server_request", test_server_request},
        {"dead_state", test_dead_state},
        {"interleaved_frontier", test_interleaved_frontier},
        {"head_bounds", test_head_bounds},
        {NULL, NULL},
    };
    return unit_add_suite("rtsp", cases);
}
