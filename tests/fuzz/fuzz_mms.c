/* fuzz_mms.c - libFuzzer target for the MMS classifier, on the shared
 * split-and-compare driver (fuzz_split.h). Every CONFORMS must carry a whole
 * unit (MMS_EV_MESSAGE) whose MID has the direction's prefix, or a data
 * packet (MID 0) from the server. */
#include "fuzz_split.h"
#include "mms_classify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const fuzz_target target;

static void check(const void *state, cls_dir dir, cls_verdict v, size_t used, int ev)
{
    if (v == CLS_CONFORMS && (ev != MMS_EV_MESSAGE || used == 0))
        fuzz_breach(&target, "CONFORMS without a whole unit");
    if (ev != MMS_EV_MESSAGE)
        return;
    uint32_t mid = mms_classify_last_mid(state);
    unsigned count = mms_classify_last_count(state);
    if (mid == 0) {
        if (dir != CLS_S2C || count != 0)
            fuzz_breach(&target, "data packet from the client or with a count");
    } else if ((mid >> 16) != (dir == CLS_C2S ? 3u : 4u) || count == 0) {
        fuzz_breach(&target, "MID of the wrong direction or no count");
    }
}

static const fuzz_target target = {"fuzz_mms", &mms_cls_ops, "mms-", check};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_split_run(&target, data, size);
}
