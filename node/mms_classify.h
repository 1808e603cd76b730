/* mms_classify.h - MMS (MS-MMSP, Microsoft Media Server protocol over TCP)
 * conformance on port 1755: every command message's TcpMessageHeader with
 * its fixed fields (rep 0x01, sessionId 0xB00BFACE, seal "MMS "), consistent
 * messageLength and chunkLen, a known MID direction (0x0003xxxx from the
 * client, 0x0004xxxx from the server), and the server's data packets
 * (MS-MMSP 2.2.2 "Data") framed by their own header.
 *
 * Follows the feed contract of classify.h. Each complete unit - a command
 * packet or a data packet - is returned as CLS_CONFORMS with MMS_EV_MESSAGE;
 * mms_classify_last_mid() names it. A partial unit is held (CLS_NEED_MORE),
 * so nothing is forwarded before the whole unit has been checked; a unit is
 * at most MMS_MAX_MESSAGE bytes.
 *
 * A command packet (all integers little-endian) is checked as:
 *   rep 0x01, version 0x00, versionMinor 0x00 (padding is ignored, as the
 *   spec says; servers put flags there), sessionId 0xB00BFACE, messageLength
 *   a multiple of 8 and at least 24, seal 0x20534D4D, chunkCount equal to
 *   messageLength / 8 (what Windows Media Player, ffmpeg and libmms send),
 *   seq 0, 1, 2, ... per direction (mod 2^16), MBZ 0, timeSent ignored. The
 *   MMS message field holds one or more messages, each with chunkLen >= 2,
 *   together filling it exactly; each MID must be one of the 2.2.4 messages
 *   of its direction and its chunkLen must cover that message's fixed fields.
 *   The client's first message must be LinkViewerToMacConnect, the server's
 *   first LinkMacToViewerReportConnectedEX.
 *
 * Data packets (LocationId, playIncarnation, AFFlags, PacketSize, payload):
 *   never from the client (its resend requests go over UDP). From the server
 *   only while data is announced: after LinkMacToViewerReportReadBlock (the
 *   ASF header follows), ReportStartedPlaying, ReportStartStriding or
 *   ReportStreamChange, until LinkMacToViewerReportEndOfStream. While data is
 *   allowed a unit is a command packet when its bytes 4..7 are the sessionId
 *   (the rule ffmpeg and libmms use), otherwise a data packet, whose
 *   PacketSize must exceed its 8-byte header and whose playIncarnation must
 *   not be the reserved 0x00.
 *
 * Reasons (the part before ": " is stable):
 *   "mms-rep", "mms-version", "mms-session-id", "mms-seal",
 *   "mms-length"        messageLength/chunkCount wrong or inconsistent
 *   "mms-seq", "mms-mbz"
 *   "mms-chunk-length"  chunkLen zero, past the packet or too short for its MID
 *   "mms-mid"           unknown MID, or one of the other direction
 *   "mms-order"         first message is not Connect / ReportConnectedEX
 *   "mms-data-packet"   data packet header with PacketSize <= 8 or the
 *                       reserved playIncarnation. Where no data packet may
 *                       come (client side, or none announced) a unit is read
 *                       as a command packet from its first byte, so a data
 *                       packet there fails a header field ("mms-rep" ...).
 *   "mms-too-large"     command packet over MMS_MAX_MESSAGE
 *   "mms-truncated"     stream ended inside a unit
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

/* Allocation-free: the state lives in caller-provided storage of
 * mms_classify_size() bytes and holds no pointers. */
size_t mms_classify_size(void);
void mms_classify_init(mms_classify *m);
void mms_classify_release(mms_classify *m);
cls_verdict mms_classify_feed(mms_classify *m, cls_dir dir, const uint8_t *data, size_t len,
                              size_t *consumed);
cls_verdict mms_classify_finish(mms_classify *m, cls_dir dir);
int mms_classify_event(const mms_classify *m);
const char *mms_classify_reason(const mms_classify *m);
/* MID of the last complete command message in either direction, 0 for data.
 * When a packet carries several messages, the MID of its last one. */
uint32_t mms_classify_last_mid(const mms_classify *m);
/* Number of MMS messages in the last complete command packet, 0 for data. */
unsigned mms_classify_last_count(const mms_classify *m);

#endif
