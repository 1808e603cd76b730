/* fuzz_split.h - the driver the classifier fuzz targets share: the input is a
 * script of chunks for both directions, fed once in the script's chunking
 * (each chunk in pieces the script chooses) and once byte by byte; both runs
 * must keep the classify.h contract and agree on events, verdict and reason.
 * Any breach abort()s.
 *
 * Input: if the first byte is 0xA5, a script follows: per chunk a control
 * byte c (bit 0: direction, bits 1..7: length n; n == 127 takes a second
 * byte b and means 127 + 16 * b), then n data bytes. The piece size of the
 * first run is (c >> 1) % 7 + 1. Otherwise the whole input is one
 * client-to-server stream (so raw recorded .bin files are seeds too).
 */
#ifndef PORTCULLIS_FUZZ_SPLIT_H
#define PORTCULLIS_FUZZ_SPLIT_H

#include "classify.h"

#include <stdbool.h>

typedef struct fuzz_target {
    const char *name; /* in breach messages: "fuzz_rtsp" */
    const cls_ops *ops;
    const char *reason_prefix; /* every violation's reason starts so: "rtsp-" */
    /* Checks one non-violating feed result (verdict v, bytes used of the
     * piece, event ev) and what the classifier exposes after it; calls
     * fuzz_breach on a problem. */
    void (*check)(const void *state, cls_dir dir, cls_verdict v, size_t used, int ev);
} fuzz_target;

/* Reports a contract breach and aborts. */
_Noreturn void fuzz_breach(const fuzz_target *t, const char *what);

/* Runs one input through t as described above. */
int fuzz_split_run(const fuzz_target *t, const uint8_t *data, size_t size);

#endif
