/* mms_classify.c - MS-MMSP over TCP conformance: TcpMessageHeader command
 * packets in both directions and the server's Data packets, checked field by
 * field as the bytes arrive (see mms_classify.h for the rules). */
#include "mms_classify.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define MMS_SESSION_ID 0xB00BFACEu
#define MMS_SEAL 0x20534D4Du
#define MMS_HDR 32     /* TcpMessageHeader before the MMS message field */
#define MMS_DATA_HDR 8 /* Data packet header */
#define MMS_MSG_HDR 8  /* chunkLen and MID */

typedef enum {
    MS_IDLE,
    MS_PEEK,     /* first 8 bytes of a server unit that may be data */
    MS_CMD_HDR,  /* TcpMessageHeader */
    MS_MSG_HDR,  /* chunkLen and MID of a message in the packet */
    MS_MSG_BODY, /* rest of that message */
    MS_DATA,     /* payload of a data packet */
} mms_state;

typedef struct mms_side {
    mms_state st;
    uint8_t hlen;
    uint8_t hdr[MMS_HDR];
    uint16_t seq;      /* seq the next command packet must carry */
    bool started;      /* a first message has been seen */
    uint32_t msg_left; /* bytes of the MMS message field still to come */
    uint32_t body_left;
    uint32_t mid;   /* MID of the message being read */
    unsigned count; /* messages in the packet being read */
} mms_side;

struct mms_classify {
    mms_side side[2];
    bool dead;
    bool data_ok; /* the server has announced data packets */
    int event;
    uint32_t last_mid;
    unsigned last_count;
    char reason[128];
};

/* The MS-MMSP 2.2.4 messages and the bytes of their fixed fields (chunkLen
 * and MID included, plus the shortest variable part a message can have). */
typedef struct mms_mid_info {
    uint32_t mid;
    uint32_t min;
} mms_mid_info;

static const mms_mid_info c2s_mids[] = {
    {0x00030001, 22},   /* LinkViewerToMacConnect: subscriberName >= NUL */
    {0x00030002, 30},   /* LinkViewerToMacConnectFunnel: funnelName >= NUL */
    {0x00030005, 24},   /* LinkViewerToMacOpenFile */
    {0x00030007, 40},   /* LinkViewerToMacStartPlaying */
    {0x00030009, 16},   /* LinkViewerToMacStopPlaying */
    {0x0003000D, 16},   /* LinkViewerToMacCloseFile */
    {0x00030015, 56},   /* LinkViewerToMacReadBlock */
    {0x00030018, 12},   /* LinkViewerToMacFunnelInfo */
    {0x0003001A, 20},   /* LinkViewerToMacSecurityResponse */
    {0x0003001B, 16},   /* LinkViewerToMacPong */
    {0x00030025, 12},   /* LinkViewerToMacCancelReadBlock */
    {0x00030028, 48},   /* LinkViewerToMacStartStriding */
    {0x00030032, 1498}, /* LinkViewerToMacLogging: 1490-byte CLIENT_LOG */
    {0x00030033, 12},   /* LinkViewerToMacStreamSwitch */
};

static const mms_mid_info s2c_mids[] = {
    {0x00040001, 64},  /* LinkMacToViewerReportConnectedEX */
    {0x00040002, 20},  /* LinkMacToViewerReportConnectedFunnel */
    {0x00040003, 16},  /* LinkMacToViewerReportDisconnectedFunnel */
    {0x00040005, 36},  /* LinkMacToViewerReportStartedPlaying */
    {0x00040006, 116}, /* LinkMacToViewerReportOpenFile */
    {0x0004000A, 20},  /* LinkMacToViewerReportStartStriding */
    {0x00040011, 20},  /* LinkMacToViewerReportReadBlock */
    {0x00040015, 48},  /* LinkMacToViewerReportFunnelInfo */
    {0x0004001A, 20},  /* LinkMacToViewerSecurityChallenge */
    {0x0004001B, 16},  /* LinkMacToViewerPing */
    {0x0004001E, 16},  /* LinkMacToViewerReportEndOfStream */
    {0x00040020, 32},  /* LinkMacToViewerReportStreamChange */
    {0x00040021, 12},  /* LinkMacToViewerReportStreamSwitch */
    {0x00040022, 18},  /* LinkMacToViewerReportRedirect: wszLocation >= NUL */
};

#define MID_CONNECT 0x00030001u
#define MID_CONNECTED_EX 0x00040001u
#define MID_START_PLAYING_OK 0x00040005u
#define MID_START_STRIDING_OK 0x0004000Au
#define MID_READ_BLOCK_OK 0x00040011u
#define MID_END_OF_STREAM 0x0004001Eu
#define MID_STREAM_CHANGE 0x00040020u

size_t mms_classify_size(void)
{
    return sizeof(mms_classify);
}

void mms_classify_init(mms_classify *m)
{
    memset(m, 0, sizeof(*m));
}

void mms_classify_release(mms_classify *m)
{
    (void)m; /* nothing is allocated */
}

static int die(mms_classify *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int die(mms_classify *m, const char *fmt, ...)
{
    if (!m->dead) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m->reason, sizeof(m->reason), fmt, ap);
        va_end(ap);
        m->dead = true;
    }
    return -1;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* Checks the TcpMessageHeader field that ends at byte i (0-based). */
static int check_cmd_byte(mms_classify *m, mms_side *s, unsigned i)
{
    const uint8_t *h = s->hdr;
    switch (i) {
    case 0:
        if (h[0] != 0x01)
            return die(m, "mms-rep: 0x%02x", h[0]);
        break;
    case 2:
        if (h[1] != 0 || h[2] != 0)
            return die(m, "mms-version: %u.%u", h[1], h[2]);
        break;
    case 7:
        if (le32(h + 4) != MMS_SESSION_ID)
            return die(m, "mms-session-id: 0x%08x", le32(h + 4));
        break;
    case 11: {
        uint32_t ml = le32(h + 8);
        if (ml > MMS_MAX_MESSAGE - 16)
            return die(m, "mms-too-large: %u-byte message", ml);
        if (ml < 16 + MMS_MSG_HDR || ml % 8 != 0)
            return die(m, "mms-length: messageLength %u", ml);
        break;
    }
    case 15:
        if (le32(h + 12) != MMS_SEAL)
            return die(m, "mms-seal: 0x%08x", le32(h + 12));
        break;
    case 19:
        if (le32(h + 16) != le32(h + 8) / 8)
            return die(m, "mms-length: chunkCount %u for messageLength %u", le32(h + 16),
                       le32(h + 8));
        break;
    case 21:
        if (le16(h + 20) != s->seq)
            return die(m, "mms-seq: %u, expected %u", le16(h + 20), s->seq);
        break;
    case 23:
        if (le16(h + 22) != 0)
            return die(m, "mms-mbz: 0x%04x", le16(h + 22));
        break;
    default: break;
    }
    return 0;
}

static const mms_mid_info *find_mid(const mms_mid_info *t, size_t n, uint32_t mid)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].mid == mid)
            return &t[i];
    return NULL;
}

/* chunkLen and MID of one message inside the packet. */
static int check_msg_hdr(mms_classify *m, mms_side *s, cls_dir dir)
{
    uint32_t chunks = le32(s->hdr), mid = le32(s->hdr + 4);
    bool c2s = dir == CLS_C2S;
    const mms_mid_info *own = c2s ? find_mid(c2s_mids, sizeof(c2s_mids) / sizeof(c2s_mids[0]), mid)
                                  : find_mid(s2c_mids, sizeof(s2c_mids) / sizeof(s2c_mids[0]), mid);
    if (chunks < 2 || chunks > s->msg_left / 8)
        return die(m, "mms-chunk-length: %u chunks, %u bytes left in the packet", chunks,
                   s->msg_left);
    if (!own) {
        bool other = c2s ? find_mid(s2c_mids, sizeof(s2c_mids) / sizeof(s2c_mids[0]), mid) != NULL
                         : find_mid(c2s_mids, sizeof(c2s_mids) / sizeof(c2s_mids[0]), mid) != NULL;
        if (other)
            return die(m, "mms-mid: 0x%08x is a %s message", mid, c2s ? "server" : "client");
        return die(m, "mms-mid: unknown 0x%08x", mid);
    }
    if (chunks * 8 < own->min)
        return die(m, "mms-chunk-length: %u bytes for 0x%08x, at least %u", chunks * 8, mid,
                   own->min);
    if (!s->started && mid != (c2s ? MID_CONNECT : MID_CONNECTED_EX))
        return die(m, "mms-order: first %s message is 0x%08x", c2s ? "client" : "server", mid);
    s->started = true;
    s->mid = mid;
    s->count++;
    s->body_left = chunks * 8 - MMS_MSG_HDR;
    s->msg_left -= chunks * 8;
    if (!c2s) {
        if (mid == MID_READ_BLOCK_OK || mid == MID_START_PLAYING_OK ||
            mid == MID_START_STRIDING_OK || mid == MID_STREAM_CHANGE)
            m->data_ok = true;
        else if (mid == MID_END_OF_STREAM)
            m->data_ok = false;
    }
    return 0;
}

static int check_data_hdr(mms_classify *m, mms_side *s)
{
    uint16_t size = le16(s->hdr + 6);
    if (size <= MMS_DATA_HDR)
        return die(m, "mms-data-packet: PacketSize %u", size);
    if (s->hdr[4] == 0)
        return die(m, "mms-data-packet: reserved playIncarnation 0x00");
    s->body_left = size - MMS_DATA_HDR;
    return 0;
}

static cls_verdict unit_done(mms_classify *m, mms_side *s, bool data, size_t pos, size_t *consumed)
{
    s->st = MS_IDLE;
    m->event = MMS_EV_MESSAGE;
    m->last_mid = data ? 0 : s->mid;
    m->last_count = data ? 0 : s->count;
    *consumed = pos;
    return CLS_CONFORMS;
}

cls_verdict mms_classify_feed(mms_classify *m, cls_dir dir, const uint8_t *data, size_t len,
                              size_t *consumed)
{
    *consumed = 0;
    m->event = CLS_EV_NONE;
    if (m->dead)
        return CLS_VIOLATES;
    dir = dir == CLS_C2S ? CLS_C2S : CLS_S2C;
    mms_side *s = &m->side[dir];
    size_t pos = 0;
    while (pos < len) {
        switch (s->st) {
        case MS_IDLE:
            s->hlen = 0;
            s->count = 0;
            s->st = dir == CLS_S2C && m->data_ok ? MS_PEEK : MS_CMD_HDR;
            break;
        case MS_PEEK:
            s->hdr[s->hlen++] = data[pos++];
            if (s->hlen < MMS_DATA_HDR)
                break;
            if (le32(s->hdr + 4) == MMS_SESSION_ID) {
                for (unsigned i = 0; i < MMS_DATA_HDR; i++)
                    if (check_cmd_byte(m, s, i) != 0)
                        goto violates;
                s->st = MS_CMD_HDR;
                break;
            }
            if (check_data_hdr(m, s) != 0)
                goto violates;
            s->st = MS_DATA;
            break;
        case MS_CMD_HDR:
            s->hdr[s->hlen++] = data[pos++];
            if (check_cmd_byte(m, s, s->hlen - 1u) != 0)
                goto violates;
            if (s->hlen < MMS_HDR)
                break;
            s->msg_left = le32(s->hdr + 8) - 16;
            s->seq++;
            s->hlen = 0;
            s->st = MS_MSG_HDR;
            break;
        case MS_MSG_HDR:
            s->hdr[s->hlen++] = data[pos++];
            if (s->hlen < MMS_MSG_HDR)
                break;
            if (check_msg_hdr(m, s, dir) != 0)
                goto violates;
            s->hlen = 0;
            s->st = MS_MSG_BODY;
            if (s->body_left == 0 && s->msg_left == 0)
                return unit_done(m, s, false, pos, consumed);
            if (s->body_left == 0)
                s->st = MS_MSG_HDR;
            break;
        case MS_MSG_BODY: {
            size_t n = len - pos < s->body_left ? len - pos : s->body_left;
            pos += n;
            s->body_left -= (uint32_t)n;
            if (s->body_left != 0)
                break;
            if (s->msg_left == 0)
                return unit_done(m, s, false, pos, consumed);
            s->st = MS_MSG_HDR;
            break;
        }
        case MS_DATA: {
            size_t n = len - pos < s->body_left ? len - pos : s->body_left;
            pos += n;
            s->body_left -= (uint32_t)n;
            if (s->body_left == 0)
                return unit_done(m, s, true, pos, consumed);
            break;
        }
        }
    }
    *consumed = len;
    return CLS_NEED_MORE;
violates:
    *consumed = pos;
    return CLS_VIOLATES;
}

cls_verdict mms_classify_finish(mms_classify *m, cls_dir dir)
{
    m->event = CLS_EV_NONE;
    if (m->dead)
        return CLS_VIOLATES;
    const mms_side *s = &m->side[dir == CLS_C2S ? CLS_C2S : CLS_S2C];
    if (s->st == MS_IDLE)
        return CLS_CONFORMS;
    die(m, "mms-truncated: stream ended inside a %s",
        s->st == MS_DATA   ? "data packet"
        : s->st == MS_PEEK ? "packet header"
                           : "command packet");
    return CLS_VIOLATES;
}

int mms_classify_event(const mms_classify *m)
{
    return m->event;
}

const char *mms_classify_reason(const mms_classify *m)
{
    return m->dead ? m->reason : NULL;
}

uint32_t mms_classify_last_mid(const mms_classify *m)
{
    return m->last_mid;
}

unsigned mms_classify_last_count(const mms_classify *m)
{
    return m->last_count;
}

CLS_DEFINE_OPS(mms);
