/* fuzz_mms.c - libFuzzer target for the MMS classifier: the input is a
 * script of chunks for both directions, fed once in the script's chunking
 * (each chunk in pieces the script chooses) and once byte by byte; both runs
 * must keep the classify.h contract and agree on events, verdict and reason.
 * Any breach abort()s.
 *
 * Every CONFORMS must carry a whole unit (MMS_EV_MESSAGE) whose MID has the
 * direction's prefix, or a data packet (MID 0) from the server.
 *
 * Input: if the first byte is 0xA5, a script follows: per chunk a control
 * byte c (bit 0: direction, bits 1..7: length n; n == 127 takes a second
 * byte b and means 127 + 16 * b), then n data bytes. The piece size of the
 * first run is (c >> 1) % 7 + 1. Otherwise the whole input is one
 * client-to-server stream (so the raw recorded .bin files are seeds too).
 */
#include "mms_classify.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_EVENTS 4096

typedef struct run {
    mms_classify *r;
    cls_verdict last;
    bool dead;
    char reason[128];
    int events[MAX_EVENTS];
    size_t nevents;
} run;

static void breach(const char *what)
{
    fprintf(stderr, "fuzz_mms: contract breach: %s\n", what);
    abort();
}

static void check_unit(const mms_classify *m, cls_dir dir)
{
    uint32_t mid = mms_classify_last_mid(m);
    unsigned count = mms_classify_last_count(m);
    if (mid == 0) {
        if (dir != CLS_S2C || count != 0)
            breach("data packet from the client or with a count");
    } else if ((mid >> 16) != (dir == CLS_C2S ? 3u : 4u) || count == 0) {
        breach("MID of the wrong direction or no count");
    }
}

/* Feeds one piece until it is consumed or the stream is dead. */
static void feed_piece(run *ru, cls_dir dir, const uint8_t *p, size_t n)
{
    size_t pos = 0;
    int idle = 0;
    do {
        size_t used = (size_t)-1;
        /* A fresh copy, so reading past n trips the sanitizer. */
        uint8_t *copy = malloc(n - pos ? n - pos : 1);
        if (!copy)
            abort();
        memcpy(copy, p + pos, n - pos);
        cls_verdict v = mms_classify_feed(ru->r, dir, copy, n - pos, &used);
        free(copy);
        if (used > n - pos)
            breach("consumed more than given");
        if (ru->dead) {
            if (v != CLS_VIOLATES || used != 0)
                breach("a dead state came back to life");
            const char *why = mms_classify_reason(ru->r);
            if (!why || strcmp(why, ru->reason) != 0)
                breach("reason changed after the violation");
            return;
        }
        int ev = mms_classify_event(ru->r);
        ru->last = v;
        if (v == CLS_VIOLATES) {
            const char *why = mms_classify_reason(ru->r);
            if (!why || strncmp(why, "mms-", 4) != 0)
                breach("violation without an mms- reason");
            if (ev != CLS_EV_NONE)
                breach("event with a violation");
            snprintf(ru->reason, sizeof(ru->reason), "%s", why);
            ru->dead = true;
            return;
        }
        if (mms_classify_reason(ru->r))
            breach("reason without a violation");
        if (v == CLS_NEED_MORE && (used != n - pos || ev != CLS_EV_NONE))
            breach("NEED_MORE left bytes or carried an event");
        if (v != CLS_NEED_MORE && v != CLS_CONFORMS)
            breach("unknown verdict");
        if (v == CLS_CONFORMS && (ev != MMS_EV_MESSAGE || used == 0))
            breach("CONFORMS without a whole unit");
        if (ev == MMS_EV_MESSAGE)
            check_unit(ru->r, dir);
        if (ev != CLS_EV_NONE && ru->nevents < MAX_EVENTS)
            ru->events[ru->nevents++] = ev;
        if (used == 0 && ev == CLS_EV_NONE && n - pos > 0)
            breach("CONFORMS consumed nothing without an event");
        idle = used == 0 ? idle + 1 : 0;
        if (idle > 2)
            breach("no progress");
        pos += used;
    } while (pos < n);
}

static void finish(run *ru)
{
    for (int d = 0; d < 2; d++) {
        cls_verdict v = mms_classify_finish(ru->r, (cls_dir)d);
        const char *why = mms_classify_reason(ru->r);
        if (ru->dead) {
            if (v != CLS_VIOLATES || !why || strcmp(why, ru->reason) != 0)
                breach("finish changed a dead state");
            continue;
        }
        if (v == CLS_VIOLATES) {
            if (!why || strncmp(why, "mms-truncated", 13) != 0)
                breach("finish violation is not mms-truncated");
            snprintf(ru->reason, sizeof(ru->reason), "%s", why);
            ru->dead = true;
            ru->last = v;
        } else if (v != CLS_CONFORMS || why) {
            breach("finish said neither conforms nor violates");
        }
    }
}

static void run_init(run *ru)
{
    memset(ru, 0, sizeof(*ru));
    ru->r = calloc(1, mms_classify_size());
    if (!ru->r)
        abort();
    mms_classify_init(ru->r);
    ru->last = CLS_NEED_MORE;
}

static void run_free(run *ru)
{
    mms_classify_release(ru->r);
    free(ru->r);
}

/* Walks the script; bytewise selects the second run's chunking. */
static void play(run *ru, const uint8_t *data, size_t size, bool bytewise)
{
    if (size == 0 || data[0] != 0xA5) {
        size_t piece = bytewise || size == 0 ? 1 : size;
        for (size_t i = 0; i < size && !ru->dead; i += piece)
            feed_piece(ru, CLS_C2S, data + i, size - i < piece ? size - i : piece);
        return;
    }
    size_t i = 1;
    while (i < size && !ru->dead) {
        uint8_t c = data[i++];
        cls_dir dir = (c & 1) ? CLS_S2C : CLS_C2S;
        size_t n = c >> 1;
        if (n == 127 && i < size)
            n += 16u * data[i++];
        if (n > size - i)
            n = size - i;
        size_t piece = bytewise ? 1 : (size_t)((c >> 1) % 7 + 1);
        if (n == 0)
            feed_piece(ru, dir, data + i, 0);
        for (size_t k = 0; k < n && !ru->dead; k += piece)
            feed_piece(ru, dir, data + i + k, n - k < piece ? n - k : piece);
        i += n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run a, b;
    run_init(&a);
    run_init(&b);
    play(&a, data, size, false);
    play(&b, data, size, true);
    finish(&a);
    finish(&b);
    if (a.dead != b.dead || (a.dead && strcmp(a.reason, b.reason) != 0))
        breach("the verdict depends on how the bytes were split");
    if (a.nevents != b.nevents || memcmp(a.events, b.events, a.nevents * sizeof(int)) != 0)
        breach("the events depend on how the bytes were split");
    run_free(&a);
    run_free(&b);
    return 0;
}
