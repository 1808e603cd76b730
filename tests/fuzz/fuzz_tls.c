/* fuzz_tls.c - libFuzzer target for the TLS classifier: feeds both
 * directions in random pieces and abort()s on any breach of the feed
 * contract (classify.h) or of what tls_classify.h promises.
 *
 * Input: one byte seeding the piece sizes, then segments, each a 2-byte
 * header (bit 15: 0 = client to server, 1 = server to client; bits 0-14:
 * length) and that many bytes (fewer at the end of the input). The same
 * segments are also fed whole to a second classifier; verdict, reason and
 * events must not depend on the split.
 *
 * Build and run (from the repository root):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
 *     -D_GNU_SOURCE -Inode tests/fuzz/fuzz_tls.c node/tls_classify.c node/classify.c \
 *     -o fuzz_tls
 *   python3 tests/vectors/tls/fuzz_seeds.py seeds/    # the vectors as seeds
 *   ./fuzz_tls -max_len=70000 corpus/ seeds/
 */
#include "tls_classify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define BREACH(...)                                                                                \
    do {                                                                                           \
        fprintf(stderr, "contract breach: " __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

typedef struct run {
    tls_classify *t;
    cls_verdict last;
    char events[16];
    int nevents;
    char reason[256];
} run;

static const char *const reasons[] = {
    "tls-record-type",         "tls-record-version", "tls-record-length",  "tls-not-handshake",
    "tls-client-hello",        "tls-server-hello",   "tls-certificate",    "tls-unexpected-message",
    "tls-handshake-too-large", "tls-truncated",      "tls-no-certificate", "tls-alert",
    "tls-change-cipher-spec",  "tls-no-memory",
};

static void check_reason(const tls_classify *t)
{
    const char *r = tls_classify_reason(t);
    if (!r)
        BREACH("VIOLATES without a reason");
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        size_t n = strlen(reasons[i]);
        if (strncmp(r, reasons[i], n) == 0 && (r[n] == '\0' || r[n] == ':'))
            return;
    }
    BREACH("unknown reason '%s'", r);
}

/* What the caller may look at after an event. */
static void check_event(run *r, int ev)
{
    const tls_info *i = tls_classify_info(r->t);
    if (ev < TLS_EV_CLIENT_HELLO || ev > TLS_EV_CERTIFICATE)
        BREACH("event %d", ev);
    for (int k = 0; k < r->nevents; k++)
        if (r->events[k] >= ev)
            BREACH("event %d after event %d", ev, r->events[k]);
    if (r->nevents == (int)sizeof(r->events))
        BREACH("too many events");
    r->events[r->nevents++] = (char)ev;
    if (strnlen(i->sni, sizeof(i->sni)) == sizeof(i->sni) ||
        strnlen(i->alpn, sizeof(i->alpn)) == sizeof(i->alpn))
        BREACH("unterminated info string");
    if (ev == TLS_EV_SERVER_HELLO && i->version == 0)
        BREACH("ServerHello without a version");
    const uint8_t *const *der;
    const size_t *der_len;
    size_t n = tls_classify_chain(r->t, &der, &der_len);
    if (ev == TLS_EV_CERTIFICATE) {
        if (n == 0 || n > TLS_MAX_CHAIN)
            BREACH("chain of %zu", n);
        unsigned sum = 0;
        for (size_t k = 0; k < n; k++) {
            if (der_len[k] == 0)
                BREACH("empty certificate");
            for (size_t b = 0; b < der_len[k]; b++) /* ASan checks the bytes are there */
                sum += der[k][b];
        }
        if (sum == 0xffffffffu)
            fputc(' ', stderr);
    } else if (n != 0) {
        BREACH("chain outside TLS_EV_CERTIFICATE");
    }
}

/* One piece the way the proxy feeds it: on each stop, look, feed the rest. */
static void feed_piece(run *r, cls_dir dir, const uint8_t *p, size_t len)
{
    size_t pos = 0;
    do {
        size_t used = (size_t)-1;
        /* a fresh copy, so reads past len or kept pointers are caught */
        uint8_t *copy = malloc(len - pos ? len - pos : 1);
        if (!copy)
            abort();
        memcpy(copy, p + pos, len - pos);
        cls_verdict v = tls_classify_feed(r->t, dir, copy, len - pos, &used);
        int ev = tls_classify_event(r->t);
        free(copy);
        if (used > len - pos)
            BREACH("consumed %zu of %zu", used, len - pos);
        r->last = v;
        if (v == CLS_VIOLATES) {
            check_reason(r->t);
            if (ev != CLS_EV_NONE)
                BREACH("event with VIOLATES");
            snprintf(r->reason, sizeof(r->reason), "%s", tls_classify_reason(r->t));
            return;
        }
        if (v != CLS_CONFORMS && v != CLS_NEED_MORE)
            BREACH("verdict %d", (int)v);
        if (len - pos == 0) {
            if (v != CLS_NEED_MORE || used != 0 || ev != CLS_EV_NONE)
                BREACH("empty feed gave %d/%zu/%d", (int)v, used, ev);
            return;
        }
        if (v == CLS_NEED_MORE && used != len - pos)
            BREACH("NEED_MORE consumed %zu of %zu", used, len - pos);
        if (v == CLS_NEED_MORE && ev != CLS_EV_NONE)
            BREACH("event with NEED_MORE");
        if (v == CLS_CONFORMS && used < len - pos && ev == CLS_EV_NONE)
            BREACH("CONFORMS stopped early without an event");
        if (v == CLS_CONFORMS && used == 0 && ev == CLS_EV_NONE)
            BREACH("CONFORMS consumed nothing");
        if (ev != CLS_EV_NONE)
            check_event(r, ev);
        pos += used;
    } while (pos < len);
}

static void run_init(run *r)
{
    memset(r, 0, sizeof(*r));
    r->t = calloc(1, tls_classify_size());
    if (!r->t)
        abort();
    tls_classify_init(r->t);
    r->last = CLS_NEED_MORE;
}

/* After a violation: dead for good, with the same reason. */
static void check_dead(run *r)
{
    size_t used = 1;
    static const uint8_t more[] = {0x16, 0x03, 0x03, 0x00, 0x01, 0x01};
    if (tls_classify_feed(r->t, CLS_C2S, more, sizeof(more), &used) != CLS_VIOLATES || used != 0)
        BREACH("feed after a violation did not violate");
    if (tls_classify_feed(r->t, CLS_S2C, more, 0, &used) != CLS_VIOLATES)
        BREACH("empty feed after a violation did not violate");
    if (tls_classify_finish(r->t, CLS_S2C) != CLS_VIOLATES)
        BREACH("finish after a violation did not violate");
    if (strcmp(tls_classify_reason(r->t), r->reason) != 0)
        BREACH("reason changed from '%s' to '%s'", r->reason, tls_classify_reason(r->t));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t rnd = data[0] * 2654435761u + 1;
    run split, whole;
    run_init(&split);
    run_init(&whole);
    size_t off = 1;
    while (off + 2 <= size && split.last != CLS_VIOLATES) {
        cls_dir dir = data[off] & 0x80 ? CLS_S2C : CLS_C2S;
        size_t len = ((size_t)(data[off] & 0x7f) << 8) | data[off + 1];
        off += 2;
        if (len > size - off)
            len = size - off;
        const uint8_t *seg = data + off;
        off += len;

        feed_piece(&whole, dir, seg, len);
        size_t pos = 0;
        do {
            rnd = rnd * 1103515245u + 12345u;
            size_t piece = len - pos;
            switch ((rnd >> 16) % 4) {
            case 0: break;
            case 1: piece = piece ? 1 : 0; break;
            default: piece = piece ? 1 + (rnd >> 8) % piece : 0; break;
            }
            feed_piece(&split, dir, seg + pos, piece);
            pos += piece;
        } while (pos < len && split.last != CLS_VIOLATES);
    }
    /* finish when the input says so: both directions, in the last byte's order */
    if (size > 1 && (data[size - 1] & 1) && split.last != CLS_VIOLATES) {
        cls_dir first = data[size - 1] & 2 ? CLS_S2C : CLS_C2S;
        run *rs[2] = {&split, &whole};
        for (int k = 0; k < 2; k++) {
            cls_verdict v = tls_classify_finish(rs[k]->t, first);
            if (v != CLS_VIOLATES)
                v = tls_classify_finish(rs[k]->t, (cls_dir)!first);
            if (v == CLS_VIOLATES) {
                check_reason(rs[k]->t);
                snprintf(rs[k]->reason, sizeof(rs[k]->reason), "%s", tls_classify_reason(rs[k]->t));
            } else if (v != CLS_CONFORMS) {
                BREACH("finish gave %d", (int)v);
            }
            rs[k]->last = v;
        }
    }
    if (split.last == CLS_VIOLATES && whole.last != CLS_VIOLATES) {
        /* the whole run stopped feeding? no: it got every byte the split
         * run got, so it must have violated too */
        BREACH("split violated (%s), whole did not", split.reason);
    }
    if (split.last != whole.last)
        BREACH("verdict depends on the split: %d vs %d", (int)split.last, (int)whole.last);
    if (split.last == CLS_VIOLATES && strcmp(split.reason, whole.reason) != 0)
        BREACH("reason depends on the split: '%s' vs '%s'", split.reason, whole.reason);
    if (split.nevents != whole.nevents || memcmp(split.events, whole.events, 16) != 0)
        BREACH("events depend on the split");
    if (split.last == CLS_VIOLATES) {
        check_dead(&split);
    } else if (tls_classify_heap(split.t) > 2 * TLS_MAX_HANDSHAKE + 4096) {
        BREACH("heap %zu", tls_classify_heap(split.t));
    }
    tls_classify_release(split.t);
    tls_classify_release(whole.t);
    free(split.t);
    free(whole.t);
    return 0;
}
