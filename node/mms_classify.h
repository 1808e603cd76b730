/* mms_classify.h - MMS (MS-MMSP, Microsoft Media Server protocol over TCP)
 * conformance on port 1755: every command message's TcpMessageHeader with
 * its fixed fields (rep 0x01, sessionId 0xB00BFACE, seal "MMS "), consistent
 * messageLength and chunkLen, a known MID direction (0x0003xxxx from the
 * client, 0x0004xxxx from the server), and the server's data packets
 * (MS-MMSP 2.2.3) framed by their own header, in both directions.
 *
 * Follows the feed contract of classify.h. Each complete message is returned
 * as CLS_CONFORMS with MMS_EV_MESSAGE; mms_classify_last_mid() names it.
 *
 * Reasons: "mms-rep", "mms-session-id", "mms-seal", "mms-length",
 * "mms-chunk-length", "mms-mid", "mms-data-packet", "mms-too-large",
 * "mms-truncated".
 */
#ifndef PORTCULLIS_MMS_CLASSIFY_H
#define PORTCULLIS_MMS_CLASSIFY_H

#include "classify.h"

enum {
    MMS_EV_MESSAGE = 1,
};

/* Largest message accepted (MS-MMSP bounds commands well below this). */
#define MMS_MAX_MESSAGE 65536

typedef struct mms_classify mms_classify;

size_t mms_classify_size(void);
void mms_classify_init(mms_classify *m);
void mms_classify_release(mms_classify *m);
cls_verdict mms_classify_feed(mms_classify *m, cls_dir dir, const uint8_t *data, size_t len,
                              size_t *consumed);
cls_verdict mms_classify_finish(mms_classify *m, cls_dir dir);
int mms_classify_event(const mms_classify *m);
const char *mms_classify_reason(const mms_classify *m);
/* MID of the last complete command message in either direction, 0 for data. */
uint32_t mms_classify_last_mid(const mms_classify *m);

#endif
