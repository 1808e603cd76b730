/* fuzz_split.c - the shared driver of the classifier fuzz targets
 * (fuzz_split.h). */
#include "fuzz_split.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EVENTS 4096

typedef struct run {
    const fuzz_target *t;
    void *st;
    bool dead;
    char reason[160];
    int events[MAX_EVENTS];
    size_t nevents;
} run;

void fuzz_breach(const fuzz_target *t, const char *what)
{
    fprintf(stderr, "%s: contract breach: %s\n", t->name, what);
    abort();
}

/* Feeds one piece until it is consumed or the stream is dead. */
static void feed_piece(run *ru, cls_dir dir, const uint8_t *p, size_t n)
{
    const fuzz_target *t = ru->t;
    size_t pos = 0;
    int idle = 0;
    do {
        size_t used = (size_t)-1;
        /* A fresh copy, so reading past n trips the sanitizer. */
        uint8_t *copy = malloc(n - pos ? n - pos : 1);
        if (!copy)
            abort();
        memcpy(copy, p + pos, n - pos);
        cls_verdict v = t->ops->feed(ru->st, dir, copy, n - pos, &used);
        free(copy);
        if (used > n - pos)
            fuzz_breach(t, "consumed more than given");
        const char *why = t->ops->reason(ru->st);
        if (ru->dead) {
            if (v != CLS_VIOLATES || used != 0)
                fuzz_breach(t, "a dead state came back to life");
            if (!why || strcmp(why, ru->reason) != 0)
                fuzz_breach(t, "reason changed after the violation");
            return;
        }
        int ev = t->ops->event(ru->st);
        if (v == CLS_VIOLATES) {
            if (!why || strncmp(why, t->reason_prefix, strlen(t->reason_prefix)) != 0)
                fuzz_breach(t, "violation without the protocol's reason prefix");
            if (ev != CLS_EV_NONE)
                fuzz_breach(t, "event with a violation");
            snprintf(ru->reason, sizeof(ru->reason), "%s", why);
            ru->dead = true;
            return;
        }
        if (why)
            fuzz_breach(t, "reason without a violation");
        if (v == CLS_NEED_MORE && (used != n - pos || ev != CLS_EV_NONE))
            fuzz_breach(t, "NEED_MORE left bytes or carried an event");
        if (v != CLS_NEED_MORE && v != CLS_CONFORMS)
            fuzz_breach(t, "unknown verdict");
        t->check(ru->st, dir, v, used, ev);
        if (ev != CLS_EV_NONE && ru->nevents < MAX_EVENTS)
            ru->events[ru->nevents++] = ev;
        if (used == 0 && ev == CLS_EV_NONE && n - pos > 0)
            fuzz_breach(t, "CONFORMS consumed nothing without an event");
        idle = used == 0 ? idle + 1 : 0;
        if (idle > 2)
            fuzz_breach(t, "no progress");
        pos += used;
    } while (pos < n);
}

static void finish(run *ru)
{
    const fuzz_target *t = ru->t;
    char truncated[64];
    snprintf(truncated, sizeof(truncated), "%struncated", t->reason_prefix);
    for (int d = 0; d < 2; d++) {
        cls_verdict v = t->ops->finish(ru->st, (cls_dir)d);
        const char *why = t->ops->reason(ru->st);
        if (ru->dead) {
            if (v != CLS_VIOLATES || !why || strcmp(why, ru->reason) != 0)
                fuzz_breach(t, "finish changed a dead state");
            continue;
        }
        if (v == CLS_VIOLATES) {
            if (!why || strncmp(why, truncated, strlen(truncated)) != 0)
                fuzz_breach(t, "a violation at the end is not <proto>-truncated");
            snprintf(ru->reason, sizeof(ru->reason), "%s", why);
            ru->dead = true;
        } else if (v != CLS_CONFORMS || why) {
            fuzz_breach(t, "finish said neither conforms nor violates");
        }
    }
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

static void run_init(run *ru, const fuzz_target *t)
{
    memset(ru, 0, sizeof(*ru));
    ru->t = t;
    ru->st = calloc(1, t->ops->state_size);
    if (!ru->st)
        abort();
    t->ops->init(ru->st);
}

static void run_free(run *ru)
{
    ru->t->ops->release(ru->st);
    free(ru->st);
}

int fuzz_split_run(const fuzz_target *t, const uint8_t *data, size_t size)
{
    run *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
    if (!a || !b)
        abort();
    run_init(a, t);
    run_init(b, t);
    play(a, data, size, false);
    play(b, data, size, true);
    finish(a);
    finish(b);
    if (a->dead != b->dead || (a->dead && strcmp(a->reason, b->reason) != 0))
        fuzz_breach(t, "the verdict depends on how the bytes were split");
    if (a->nevents != b->nevents || memcmp(a->events, b->events, a->nevents * sizeof(int)) != 0)
        fuzz_breach(t, "the events depend on how the bytes were split");
    run_free(a);
    run_free(b);
    free(a);
    free(b);
    return 0;
}
