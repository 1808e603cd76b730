/* test_http.c - the HTTP/1.x classifier: the vector files of tests/vectors/http (recorded
 * traffic of real clients and servers, and hand-written edge cases), then what vectors cannot
 * say well: the contract under every split, the limits at their exact bounds, the lifetime of
 * the facts and the size of the state. */
#include "cu_main.h"
#include "http_classify.h"
#include "vectors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *form_name(http_target_form f)
{
    switch (f) {
    case HTTP_FORM_ORIGIN: return "origin";
    case HTTP_FORM_ABSOLUTE: return "absolute";
    case HTTP_FORM_AUTHORITY: return "authority";
    case HTTP_FORM_ASTERISK: return "asterisk";
    }
    return "?";
}

/* The facts the vectors assert with "has:". */
static void describe(const void *state, int ev, char *buf, size_t buflen)
{
    const http_classify *h = state;
    if (ev == HTTP_EV_REQUEST_HEAD) {
        const http_request_info *r = http_classify_request(h);
        if (!r) {
            snprintf(buf, buflen, "request info missing");
            return;
        }
        snprintf(buf, buflen,
                 "method=%s host=%s port=%u path=%s form=%s ka=%d origin=%s target=%s "
                 "version=%d body=%d cl=%lld chunked=%d complete=%d outstanding=%u",
                 r->method, r->host, r->port, r->path, form_name(r->form), r->keep_alive, r->origin,
                 r->target, r->version, r->has_body, (long long)r->content_length, r->chunked,
                 r->complete, http_classify_outstanding(h));
    } else if (ev == HTTP_EV_RESPONSE_HEAD) {
        const http_response_info *r = http_classify_response(h);
        if (!r) {
            snprintf(buf, buflen, "response info missing");
            return;
        }
        snprintf(buf, buflen,
                 "status=%d ctype=%s file=%s mz=%d ka=%d version=%d cl=%lld chunked=%d "
                 "close=%d complete=%d interim=%d outstanding=%u",
                 r->status, r->content_type, r->disposition_filename, r->body_starts_mz,
                 r->keep_alive, r->version, (long long)r->content_length, r->chunked,
                 r->close_delimited, r->complete, r->interim, http_classify_outstanding(h));
    } else if (ev == HTTP_EV_MESSAGE_END) {
        snprintf(buf, buflen, "end outstanding=%u", http_classify_outstanding(h));
    }
}

static void test_vectors(void)
{
    int n = vec_check_dir(&http_cls_ops, describe, VECTOR_DIR "/http");
    CU_ASSERT(n > 0);
}

/* ---- a small driver for the direct tests ---- */

typedef struct seg {
    cls_dir dir;
    const char *bytes;
    size_t len; /* 0: strlen */
} seg;

typedef struct outcome {
    cls_verdict v;
    char reason[128];
    char events[256];
} outcome;

/* Feeds the segments in order, each cut at the given points (cuts[k] = offset in segment k
 * where a second piece begins, 0 = no cut), checking the feed contract on every call. */
static void run(const seg *segs, int nseg, const size_t *cuts, outcome *o)
{
    http_classify *h = malloc(http_classify_size());
    CU_ASSERT_FATAL(h != NULL);
    http_classify_init(h);
    memset(o, 0, sizeof(*o));
    cls_verdict v = CLS_NEED_MORE;
    for (int k = 0; k < nseg && v != CLS_VIOLATES; k++) {
        size_t len = segs[k].len ? segs[k].len : strlen(segs[k].bytes);
        size_t pieces[2][2] = {{0, len}, {0, 0}};
        int np = 1;
        if (cuts && cuts[k] > 0 && cuts[k] < len) {
            pieces[0][1] = cuts[k];
            pieces[1][0] = cuts[k];
            pieces[1][1] = len;
            np = 2;
        }
        for (int p = 0; p < np && v != CLS_VIOLATES; p++) {
            size_t plen = pieces[p][1] - pieces[p][0];
            uint8_t *copy = malloc(plen ? plen : 1);
            CU_ASSERT_FATAL(copy != NULL);
            memcpy(copy, segs[k].bytes + pieces[p][0], plen);
            size_t pos = 0;
            do {
                size_t used = 99999;
                v = http_classify_feed(h, segs[k].dir, copy + pos, plen - pos, &used);
                CU_ASSERT(used <= plen - pos);
                if (v == CLS_NEED_MORE)
                    CU_ASSERT(used == plen - pos);
                if (v == CLS_VIOLATES)
                    break;
                int ev = http_classify_event(h);
                CU_ASSERT(used > 0 || ev != 0 || plen == pos);
                if (ev) {
                    char t[8];
                    snprintf(t, sizeof(t), "%s%d", o->events[0] ? "," : "", ev);
                    strncat(o->events, t, sizeof(o->events) - strlen(o->events) - 1);
                }
                pos += used;
            } while (pos < plen);
            free(copy);
        }
    }
    o->v = v;
    if (v == CLS_VIOLATES) {
        snprintf(o->reason, sizeof(o->reason), "%s", http_classify_reason(h));
        /* sticky */
        size_t used = 0;
        CU_ASSERT(http_classify_feed(h, CLS_C2S, (const uint8_t *)"GET", 3, &used) == CLS_VIOLATES);
        CU_ASSERT(http_classify_feed(h, CLS_S2C, NULL, 0, &used) == CLS_VIOLATES);
        CU_ASSERT(http_classify_finish(h, CLS_S2C) == CLS_VIOLATES);
        CU_ASSERT_STRING_EQUAL(http_classify_reason(h), o->reason);
    }
    http_classify_release(h);
    free(h);
}

/* Every single cut point of every segment gives the outcome of the uncut run. */
static void check_all_cuts(const seg *segs, int nseg)
{
    outcome whole, cut;
    run(segs, nseg, NULL, &whole);
    for (int k = 0; k < nseg; k++) {
        size_t len = segs[k].len ? segs[k].len : strlen(segs[k].bytes);
        for (size_t c = 1; c < len; c++) {
            size_t cuts[16] = {0};
            cuts[k] = c;
            run(segs, nseg, cuts, &cut);
            CU_ASSERT_EQUAL(cut.v == CLS_VIOLATES, whole.v == CLS_VIOLATES);
            CU_ASSERT_STRING_EQUAL(cut.reason, whole.reason);
            CU_ASSERT_STRING_EQUAL(cut.events, whole.events);
        }
    }
}

static void test_state_small(void)
{
    CU_ASSERT(http_classify_size() < 300);
    CU_ASSERT(http_cls_ops.state_size == http_classify_size());
    CU_ASSERT_STRING_EQUAL(http_cls_ops.name, "http");
}

static void test_every_cut(void)
{
    static const seg pipelined[] = {
        {CLS_C2S,
         "GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
         "POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
         "3;name=\"v\\\"x\"\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
         "HEAD /h HTTP/1.1\r\nHost: example.com\r\n\r\n",
         0},
        {CLS_S2C,
         "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
         "HTTP/1.1 100 Continue\r\n\r\n"
         "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
         "1\r\nM\r\n1 ; a=b\r\nZ\r\n0\r\n\r\n"
         "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
         0},
    };
    check_all_cuts(pipelined, 2);
    static const seg junk[] = {
        {CLS_C2S, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0},
        {CLS_S2C, "HTTP/1.1 204 No Content\r\n\r\n", 0},
        {CLS_C2S, "\x17\x03\x01\x00\x20 random skype bytes", 0},
    };
    check_all_cuts(junk, 3);
    static const seg bad_chunk[] = {
        {CLS_C2S, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0},
        {CLS_S2C, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nMZab\r\n2x\r\n", 0},
    };
    check_all_cuts(bad_chunk, 2);
    static const seg smuggle[] = {
        {CLS_C2S,
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd"
         "GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
         0},
    };
    check_all_cuts(smuggle, 1);
}

static void test_need_more_and_empty(void)
{
    http_classify *h = malloc(http_classify_size());
    CU_ASSERT_FATAL(h != NULL);
    http_classify_init(h);
    size_t used = 7;
    CU_ASSERT(http_classify_feed(h, CLS_C2S, NULL, 0, &used) == CLS_NEED_MORE);
    CU_ASSERT(used == 0);
    const char *part = "GET /x HTTP/1.1\r\nHo";
    CU_ASSERT(http_classify_feed(h, CLS_C2S, (const uint8_t *)part, strlen(part), &used) ==
              CLS_NEED_MORE);
    CU_ASSERT(used == strlen(part));
    CU_ASSERT(http_classify_request(h) == NULL);
    const char *rest = "st: a\r\n\r\n";
    CU_ASSERT(http_classify_feed(h, CLS_C2S, (const uint8_t *)rest, strlen(rest), &used) ==
              CLS_CONFORMS);
    CU_ASSERT(used == strlen(rest));
    CU_ASSERT(http_classify_event(h) == HTTP_EV_REQUEST_HEAD);
    CU_ASSERT(http_classify_outstanding(h) == 1);
    const http_request_info *r = http_classify_request(h);
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT_STRING_EQUAL(r->path, "/x");
    /* a feed in the other direction leaves the request facts alone */
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    CU_ASSERT(http_classify_feed(h, CLS_S2C, (const uint8_t *)resp, strlen(resp), &used) ==
              CLS_CONFORMS);
    CU_ASSERT(http_classify_event(h) == HTTP_EV_RESPONSE_HEAD);
    CU_ASSERT(http_classify_outstanding(h) == 0);
    CU_ASSERT(http_classify_request(h) == r);
    CU_ASSERT_STRING_EQUAL(http_classify_request(h)->host, "a");
    CU_ASSERT(http_classify_response(h)->complete);
    /* the next feed in the same direction frees them */
    CU_ASSERT(http_classify_feed(h, CLS_C2S, (const uint8_t *)"G", 1, &used) == CLS_NEED_MORE);
    CU_ASSERT(http_classify_request(h) == NULL);
    CU_ASSERT(http_classify_event(h) == 0);
    CU_ASSERT(http_classify_finish(h, CLS_C2S) == CLS_VIOLATES);
    CU_ASSERT(strncmp(http_classify_reason(h), "http-truncated", 14) == 0);
    http_classify_release(h);
    free(h);
}

static void test_finish(void)
{
    http_classify *h = malloc(http_classify_size());
    CU_ASSERT_FATAL(h != NULL);
    http_classify_init(h);
    size_t used;
    const char *req = "GET / HTTP/1.0\r\n\r\n";
    CU_ASSERT(http_classify_feed(h, CLS_C2S, (const uint8_t *)req, strlen(req), &used) ==
              CLS_CONFORMS);
    CU_ASSERT(http_classify_finish(h, CLS_C2S) == CLS_CONFORMS);
    const char *resp = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nM";
    CU_ASSERT(http_classify_feed(h, CLS_S2C, (const uint8_t *)resp, strlen(resp), &used) ==
              CLS_NEED_MORE);
    CU_ASSERT(used == strlen(resp));
    /* the close ends the body, and the waiting head event comes with it */
    CU_ASSERT(http_classify_finish(h, CLS_S2C) == CLS_CONFORMS);
    CU_ASSERT(http_classify_event(h) == HTTP_EV_RESPONSE_HEAD);
    const http_response_info *r = http_classify_response(h);
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT(r->close_delimited && r->complete && !r->body_starts_mz);
    CU_ASSERT_STRING_EQUAL(r->content_type, "text/plain");
    CU_ASSERT(http_classify_finish(h, CLS_S2C) == CLS_CONFORMS);
    CU_ASSERT(http_classify_feed(h, CLS_S2C, (const uint8_t *)"x", 1, &used) == CLS_VIOLATES);
    CU_ASSERT(strncmp(http_classify_reason(h), "http-after-close", 16) == 0);
    http_classify_release(h);
    free(h);

    /* a longer close-delimited body ends with a MESSAGE_END from finish */
    h = malloc(http_classify_size());
    CU_ASSERT_FATAL(h != NULL);
    http_classify_init(h);
    CU_ASSERT(http_classify_feed(h, CLS_C2S, (const uint8_t *)req, strlen(req), &used) ==
              CLS_CONFORMS);
    const char *resp2 = "HTTP/1.1 200 OK\r\n\r\nMZ and more";
    CU_ASSERT(http_classify_feed(h, CLS_S2C, (const uint8_t *)resp2, strlen(resp2), &used) ==
              CLS_CONFORMS);
    CU_ASSERT(http_classify_event(h) == HTTP_EV_RESPONSE_HEAD);
    CU_ASSERT(http_classify_response(h)->body_starts_mz);
    size_t off = used;
    CU_ASSERT(http_classify_feed(h, CLS_S2C, (const uint8_t *)resp2 + off, strlen(resp2) - off,
                                 &used) == CLS_CONFORMS);
    CU_ASSERT(used == strlen(resp2) - off);
    CU_ASSERT(http_classify_event(h) == 0);
    CU_ASSERT(http_classify_finish(h, CLS_S2C) == CLS_CONFORMS);
    CU_ASSERT(http_classify_event(h) == HTTP_EV_MESSAGE_END);
    http_classify_release(h);
    free(h);
}

/* Builds a request with one header line padded to make the given line or head size. */
static outcome run_built(const char *text, size_t len)
{
    seg s[1] = {{CLS_C2S, text, len}};
    outcome o;
    run(s, 1, NULL, &o);
    return o;
}

static void test_limits(void)
{
    size_t cap = HTTP_MAX_HEAD + 4096;
    char *b = malloc(cap);
    CU_ASSERT_FATAL(b != NULL);

    /* a field line of exactly HTTP_MAX_LINE bytes, then one more */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(b, cap, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
        size_t fill = HTTP_MAX_LINE - 3 + (size_t)extra;
        memset(b + n, 'v', fill);
        n += fill;
        n += (size_t)snprintf(b + n, cap - n, "\r\n\r\n");
        outcome o = run_built(b, n);
        if (extra == 0) {
            CU_ASSERT(o.v == CLS_CONFORMS);
        } else {
            CU_ASSERT(o.v == CLS_VIOLATES);
            CU_ASSERT(strncmp(o.reason, "http-line-too-long", 18) == 0);
        }
    }
    /* a head of exactly HTTP_MAX_HEAD bytes, then one more */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(b, cap, "GET / HTTP/1.1\r\nHost: a\r\n");
        while (HTTP_MAX_HEAD - n > 4000 + 2) {
            n += (size_t)snprintf(b + n, cap - n, "X: ");
            memset(b + n, 'v', 3990);
            n += 3990;
            n += (size_t)snprintf(b + n, cap - n, "\r\n");
        }
        size_t last = HTTP_MAX_HEAD - n - 2 - 5 + (size_t)extra; /* "Y: " + CRLF + CRLF */
        n += (size_t)snprintf(b + n, cap - n, "Y: ");
        memset(b + n, 'w', last);
        n += last;
        n += (size_t)snprintf(b + n, cap - n, "\r\n\r\n");
        CU_ASSERT(n == HTTP_MAX_HEAD + (size_t)extra);
        outcome o = run_built(b, n);
        if (extra == 0) {
            CU_ASSERT(o.v == CLS_CONFORMS);
        } else {
            CU_ASSERT(o.v == CLS_VIOLATES);
            CU_ASSERT(strncmp(o.reason, "http-head-too-large", 19) == 0);
        }
    }
    /* HTTP_MAX_HEADERS field lines, then one more */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(b, cap, "GET / HTTP/1.1\r\nHost: a\r\n");
        for (int k = 1; k < HTTP_MAX_HEADERS + extra; k++)
            n += (size_t)snprintf(b + n, cap - n, "X-%d: %d\r\n", k, k);
        n += (size_t)snprintf(b + n, cap - n, "\r\n");
        outcome o = run_built(b, n);
        if (extra == 0) {
            CU_ASSERT(o.v == CLS_CONFORMS);
        } else {
            CU_ASSERT(o.v == CLS_VIOLATES);
            CU_ASSERT(strncmp(o.reason, "http-too-many-headers", 21) == 0);
        }
    }
    /* HTTP_MAX_PIPELINE requests outstanding, then one more */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = 0;
        for (int k = 0; k < HTTP_MAX_PIPELINE + extra; k++)
            n += (size_t)snprintf(b + n, cap - n, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", k);
        outcome o = run_built(b, n);
        if (extra == 0) {
            CU_ASSERT(o.v == CLS_CONFORMS);
        } else {
            CU_ASSERT(o.v == CLS_VIOLATES);
            CU_ASSERT(strncmp(o.reason, "http-pipeline-depth", 19) == 0);
        }
    }
    free(b);
}

static void test_chunk_size_bounds(void)
{
    static const seg max_ok[] = {
        {CLS_C2S, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
        {CLS_C2S, "7fffffffffffffff\r\nabc", 0},
    };
    outcome o;
    run(max_ok, 2, NULL, &o);
    CU_ASSERT(o.v == CLS_CONFORMS);
    static const seg over[] = {
        {CLS_C2S, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
        {CLS_C2S, "8000000000000000\r\n", 0},
    };
    run(over, 2, NULL, &o);
    CU_ASSERT(o.v == CLS_VIOLATES);
    CU_ASSERT(strncmp(o.reason, "http-chunk-size", 15) == 0);
    static const seg zeros[] = {
        {CLS_C2S, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
        {CLS_C2S, "00000000000000000000000000000001\r\nx\r\n0\r\n\r\n", 0},
    };
    run(zeros, 2, NULL, &o);
    CU_ASSERT(o.v == CLS_CONFORMS);
    CU_ASSERT_STRING_EQUAL(o.events, "1,3");
}

static void test_content_length_bounds(void)
{
    static const seg max_ok[] = {
        {CLS_C2S, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\nab", 0},
    };
    outcome o;
    run(max_ok, 1, NULL, &o);
    CU_ASSERT(o.v == CLS_CONFORMS);
    static const seg over[] = {
        {CLS_C2S, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", 0},
    };
    run(over, 1, NULL, &o);
    CU_ASSERT(o.v == CLS_VIOLATES);
    CU_ASSERT(strncmp(o.reason, "http-content-length", 19) == 0);
}

int unit_register(void)
{
    static const unit_case vectors[] = {{"vector files", test_vectors}, {NULL, NULL}};
    static const unit_case contract[] = {
        {"state is small", test_state_small},
        {"every cut point gives the same outcome", test_every_cut},
        {"need_more, empty feeds and the life of the facts", test_need_more_and_empty},
        {"finish: close-delimited bodies and truncation", test_finish},
        {"limits at their exact bounds", test_limits},
        {"chunk-size bounds", test_chunk_size_bounds},
        {"content-length bounds", test_content_length_bounds},
        {NULL, NULL},
    };
    if (unit_add_suite("http_vectors", vectors) != 0 ||
        unit_add_suite("http_contract", contract) != 0)
        return -1;
    return 0;
}
