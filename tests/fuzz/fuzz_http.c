/* fuzz_http.c - libFuzzer target for the HTTP/1.x classifier. It turns its input into a
 * conversation (both directions), feeds it twice - whole segments, then cut at random points -
 * and aborts when the feed contract of classify.h breaks: consumed past len, NEED_MORE that
 * left bytes, CONFORMS that took nothing and said nothing, a violation that is not sticky or
 * changes its reason, facts missing after their event, or an outcome (verdict class, reason,
 * events) that depends on how the bytes were cut.
 *
 * Input: text in the vector format (lines "> ...", "< ...", ">hex ...", "<hex ..." with the
 * C escapes of tests/unit/vectors.h), so the vector files seed it; any other input is raw:
 * byte 0 picks client bytes alone, or a fixed request then the rest as the server's answer.
 * Build: clang -fsanitize=fuzzer,address,undefined -I node tests/fuzz/fuzz_http.c
 *        node/http_classify.c node/classify.c */
#include "http_classify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEGS 64
#define MAX_BYTES (1 << 20)

typedef struct seg {
    cls_dir dir;
    size_t off, len; /* into the conversation buffer */
} seg;

typedef struct conv {
    uint8_t *buf;
    size_t len;
    seg segs[MAX_SEGS];
    int nseg;
} conv;

typedef struct outcome {
    int violated;
    char reason[128];
    char events[512];
} outcome;

static void breach(const char *what)
{
    fprintf(stderr, "fuzz_http: contract breach: %s\n", what);
    abort();
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static void add_seg(conv *cv, cls_dir dir, size_t off)
{
    if (cv->nseg < MAX_SEGS && cv->len > off)
        cv->segs[cv->nseg++] = (seg){dir, off, cv->len - off};
}

/* One "> text" or ">hex ..." line (without its newline). */
static void parse_line(conv *cv, const uint8_t *p, size_t n)
{
    cls_dir dir = p[0] == '>' ? CLS_C2S : CLS_S2C;
    size_t off = cv->len;
    p++;
    n--;
    if (n >= 4 && memcmp(p, "hex ", 4) == 0) {
        int hi = -1;
        for (size_t i = 4; i < n; i++) {
            int v = hexval(p[i]);
            if (v < 0)
                continue;
            if (hi < 0) {
                hi = v;
            } else {
                cv->buf[cv->len++] = (uint8_t)(hi * 16 + v);
                hi = -1;
            }
        }
    } else if (n >= 5 && memcmp(p, "file ", 5) == 0) {
        return;
    } else {
        size_t i = n > 0 && p[0] == ' ' ? 1 : 0;
        for (; i < n; i++) {
            uint8_t c = p[i];
            if (c == '\\' && i + 1 < n) {
                i++;
                switch (p[i]) {
                case 'r': c = '\r'; break;
                case 'n': c = '\n'; break;
                case 't': c = '\t'; break;
                case '0': c = 0; break;
                case 'x':
                    if (i + 2 < n && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
                        c = (uint8_t)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
                        i += 2;
                    }
                    break;
                default: c = p[i]; break;
                }
            }
            cv->buf[cv->len++] = c;
        }
    }
    add_seg(cv, dir, off);
}

static void build(conv *cv, const uint8_t *data, size_t size)
{
    cv->len = 0;
    cv->nseg = 0;
    for (size_t i = 0; i < size;) {
        const uint8_t *nl = memchr(data + i, '\n', size - i);
        size_t e = nl ? (size_t)(nl - data) : size;
        size_t n = e - i;
        if (n > 0 && data[e - 1] == '\r')
            n--;
        if (n > 0 && (data[i] == '>' || data[i] == '<'))
            parse_line(cv, data + i, n);
        i = e + 1;
    }
    if (cv->nseg > 0)
        return;
    if (size == 0)
        return;
    if (data[0] & 1) {
        static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        memcpy(cv->buf, req, sizeof(req) - 1);
        cv->len = sizeof(req) - 1;
        add_seg(cv, CLS_C2S, 0);
        size_t off = cv->len;
        memcpy(cv->buf + cv->len, data + 1, size - 1);
        cv->len += size - 1;
        add_seg(cv, CLS_S2C, off);
    } else {
        memcpy(cv->buf, data + 1, size - 1);
        cv->len = size - 1;
        add_seg(cv, CLS_C2S, 0);
    }
}

static uint32_t next(uint32_t *r)
{
    *r ^= *r << 13;
    *r ^= *r >> 17;
    *r ^= *r << 5;
    return *r;
}

static void check_facts(const http_classify *h, int ev)
{
    if (ev == HTTP_EV_REQUEST_HEAD) {
        const http_request_info *r = http_classify_request(h);
        if (!r)
            breach("no request facts after HTTP_EV_REQUEST_HEAD");
        /* touch every string: ASan catches one that is not NUL-terminated in its block */
        size_t n = strlen(r->method) + strlen(r->target) + strlen(r->host) + strlen(r->path) +
                   strlen(r->origin);
        (void)n;
        if (r->version != 10 && r->version != 11)
            breach("request version");
    } else if (ev == HTTP_EV_RESPONSE_HEAD) {
        const http_response_info *r = http_classify_response(h);
        if (!r)
            breach("no response facts after HTTP_EV_RESPONSE_HEAD");
        size_t n = strlen(r->content_type) + strlen(r->disposition_filename);
        (void)n;
        if (r->status < 100 || r->status > 599)
            breach("response status");
    } else if (ev != HTTP_EV_MESSAGE_END) {
        breach("unknown event");
    }
}

/* seed 0: whole segments; otherwise random cuts. */
static void run(const conv *cv, uint32_t seed, int finish, outcome *o)
{
    http_classify *h = malloc(http_classify_size());
    if (!h)
        return;
    http_classify_init(h);
    memset(o, 0, sizeof(*o));
    uint32_t r = seed | 1u;
    cls_verdict v = CLS_NEED_MORE;
    for (int k = 0; k < cv->nseg && v != CLS_VIOLATES; k++) {
        const seg *s = &cv->segs[k];
        size_t off = 0;
        while (off < s->len && v != CLS_VIOLATES) {
            size_t piece = s->len - off;
            if (seed && piece > 1)
                piece = 1 + next(&r) % (next(&r) % 4 == 0 ? piece : (piece < 16 ? piece : 16));
            /* a fresh copy, so reading past it or keeping pointers into it is caught */
            uint8_t *copy = malloc(piece);
            if (!copy)
                break;
            memcpy(copy, cv->buf + s->off + off, piece);
            size_t pos = 0;
            while (pos < piece) {
                size_t used = (size_t)-1;
                v = http_classify_feed(h, s->dir, copy + pos, piece - pos, &used);
                if (used > piece - pos)
                    breach("consumed more than len");
                if (v == CLS_VIOLATES)
                    break;
                if (v == CLS_NEED_MORE && used != piece - pos)
                    breach("NEED_MORE left bytes unconsumed");
                if (v != CLS_CONFORMS && v != CLS_NEED_MORE)
                    breach("unknown verdict");
                if (http_classify_reason(h))
                    breach("a reason without a violation");
                int ev = http_classify_event(h);
                if (v == CLS_NEED_MORE && ev)
                    breach("an event with NEED_MORE");
                if (v == CLS_CONFORMS && used == 0 && !ev)
                    breach("CONFORMS consumed nothing without an event");
                if (http_classify_outstanding(h) > HTTP_MAX_PIPELINE)
                    breach("outstanding past HTTP_MAX_PIPELINE");
                if (ev) {
                    check_facts(h, ev);
                    char t[8];
                    snprintf(t, sizeof(t), "%s%d", o->events[0] ? "," : "", ev);
                    strncat(o->events, t, sizeof(o->events) - strlen(o->events) - 1);
                }
                pos += used;
            }
            free(copy);
            off += piece;
        }
    }
    if (v != CLS_VIOLATES && finish) {
        v = http_classify_finish(h, CLS_C2S);
        if (v != CLS_VIOLATES)
            v = http_classify_finish(h, CLS_S2C);
        if (v == CLS_NEED_MORE)
            breach("finish returned NEED_MORE");
        if (v == CLS_CONFORMS && http_classify_event(h))
            check_facts(h, http_classify_event(h));
    }
    if (v == CLS_VIOLATES) {
        const char *reason = http_classify_reason(h);
        if (!reason || strncmp(reason, "http-", 5) != 0)
            breach("violation without an http- reason");
        o->violated = 1;
        snprintf(o->reason, sizeof(o->reason), "%s", reason);
        size_t used = 0;
        static const uint8_t more[] = "GET / HTTP/1.1\r\n";
        if (http_classify_feed(h, CLS_C2S, more, sizeof(more) - 1, &used) != CLS_VIOLATES ||
            http_classify_feed(h, CLS_S2C, more, 0, &used) != CLS_VIOLATES ||
            http_classify_finish(h, CLS_C2S) != CLS_VIOLATES ||
            strcmp(http_classify_reason(h), o->reason) != 0)
            breach("violation not sticky");
    }
    http_classify_release(h);
    free(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *buf;
    if (size > MAX_BYTES / 2)
        return 0;
    if (!buf && !(buf = malloc(MAX_BYTES)))
        return 0;
    conv cv = {.buf = buf};
    build(&cv, data, size);
    if (cv.nseg == 0)
        return 0;
    uint32_t seed = 2166136261u;
    for (size_t i = 0; i < size; i++)
        seed = (seed ^ data[i]) * 16777619u;
    for (int finish = 0; finish <= 1; finish++) {
        outcome whole, cut;
        run(&cv, 0, finish, &whole);
        for (uint32_t k = 1; k <= 2; k++) {
            run(&cv, seed + k, finish, &cut);
            if (cut.violated != whole.violated || strcmp(cut.reason, whole.reason) != 0 ||
                strcmp(cut.events, whole.events) != 0) {
                fprintf(stderr, "whole: %d '%s' [%s]\ncut:   %d '%s' [%s]\n", whole.violated,
                        whole.reason, whole.events, cut.violated, cut.reason, cut.events);
                breach("the outcome depends on how the bytes were cut");
            }
        }
    }
    return 0;
}
