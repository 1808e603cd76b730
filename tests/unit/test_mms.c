/* test_mms.c - the MMS (MS-MMSP over TCP) classifier against its vectors
 * (tests/vectors/mms, recorded and hand-written), plus what the runner does
 * not see: early refusal, the MID and count facts, the dead state. */
#include "cu_main.h"
#include "mms_classify.h"
#include "vectors.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void describe(const void *state, int ev, char *buf, size_t buflen)
{
    uint32_t mid = mms_classify_last_mid(state);
    if (ev != MMS_EV_MESSAGE)
        snprintf(buf, buflen, "event=%d", ev);
    else if (mid == 0)
        snprintf(buf, buflen, "data");
    else
        snprintf(buf, buflen, "mid=0x%08x count=%u", (unsigned)mid, mms_classify_last_count(state));
}

static void test_vectors(void)
{
    int n = vec_check_dir(&mms_cls_ops, describe, VECTOR_DIR "/mms");
    CU_ASSERT(n > 0);
}

static mms_classify *new_classifier(void)
{
    mms_classify *m = calloc(1, mms_classify_size());
    if (m)
        mms_classify_init(m);
    return m;
}

static void free_classifier(mms_classify *m)
{
    if (!m)
        return;
    mms_classify_release(m);
    free(m);
}

static bool reason_is(const mms_classify *m, const char *prefix)
{
    const char *why = mms_classify_reason(m);
    return why && strncmp(why, prefix, strlen(prefix)) == 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* One TcpMessageHeader packet with one message of body_len (multiple of 8,
 * chunkLen and MID included) bytes; returns its length. */
static size_t command(uint8_t *out, uint16_t seq, uint32_t mid, size_t msg_len)
{
    memset(out, 0, 32 + msg_len);
    out[0] = 1;
    put32(out + 4, 0xB00BFACE);
    put32(out + 8, (uint32_t)(msg_len + 16));
    put32(out + 12, 0x20534D4D);
    put32(out + 16, (uint32_t)(msg_len + 16) / 8);
    out[20] = (uint8_t)seq;
    out[21] = (uint8_t)(seq >> 8);
    put32(out + 32, (uint32_t)msg_len / 8);
    put32(out + 36, mid);
    return 32 + msg_len;
}

/* Junk is refused at the first byte that cannot be MMS, not after a whole
 * would-be packet. */
static void test_early_refusal(void)
{
    mms_classify *m = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    static const uint8_t junk[] = {0x16, 0x03, 0x01, 0x02, 0x00};
    size_t used = 0;
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_C2S, junk, sizeof(junk), &used), CLS_VIOLATES);
    CU_ASSERT_EQUAL(used, 1);
    CU_ASSERT(reason_is(m, "mms-rep: 0x16"));
    free_classifier(m);

    m = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    uint8_t pkt[64];
    size_t n = command(pkt, 0, 0x00030001, 24);
    pkt[14] = 'X'; /* seal "MMX " */
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_C2S, pkt, n, &used), CLS_VIOLATES);
    CU_ASSERT_EQUAL(used, 16);
    CU_ASSERT(reason_is(m, "mms-seal"));
    free_classifier(m);
}

/* Partial units are held and consumed whole; a complete one stops right
 * after its last byte with the MID; finish inside a unit is a violation. */
static void test_units(void)
{
    mms_classify *m = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    uint8_t buf[256];
    size_t n = command(buf, 0, 0x00030001, 24);
    n += command(buf + n, 1, 0x00030018, 16);
    size_t used = 0;
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_C2S, buf, 40, &used), CLS_NEED_MORE);
    CU_ASSERT_EQUAL(used, 40);
    CU_ASSERT_EQUAL(mms_classify_event(m), CLS_EV_NONE);
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_C2S, buf + 40, n - 40, &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(used, 56 - 40);
    CU_ASSERT_EQUAL(mms_classify_event(m), MMS_EV_MESSAGE);
    CU_ASSERT_EQUAL(mms_classify_last_mid(m), 0x00030001);
    CU_ASSERT_EQUAL(mms_classify_last_count(m), 1);
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_C2S, buf + 56, n - 56 - 1, &used), CLS_NEED_MORE);
    CU_ASSERT_EQUAL(mms_classify_finish(m, CLS_S2C), CLS_CONFORMS);
    CU_ASSERT_EQUAL(mms_classify_finish(m, CLS_C2S), CLS_VIOLATES);
    CU_ASSERT(reason_is(m, "mms-truncated"));
    /* Dead: same answer and reason forever, nothing consumed. */
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_C2S, buf, n, &used), CLS_VIOLATES);
    CU_ASSERT_EQUAL(used, 0);
    CU_ASSERT(reason_is(m, "mms-truncated"));
    free_classifier(m);
}

/* Data packets only while the server has announced them. */
static void test_data_window(void)
{
    mms_classify *m = new_classifier();
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    uint8_t buf[256];
    size_t used = 0, n;
    n = command(buf, 0, 0x00030001, 24);
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_C2S, buf, n, &used), CLS_CONFORMS);
    n = command(buf, 0, 0x00040001, 64);
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_S2C, buf, n, &used), CLS_CONFORMS);
    n = command(buf, 1, 0x00040011, 24); /* ReportReadBlock */
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_S2C, buf, n, &used), CLS_CONFORMS);
    static const uint8_t data[] = {0, 0, 0, 0, 2, 0x0c, 12, 0, 'A', 'S', 'F', '!'};
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_S2C, data, sizeof(data), &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(used, sizeof(data));
    CU_ASSERT_EQUAL(mms_classify_event(m), MMS_EV_MESSAGE);
    CU_ASSERT_EQUAL(mms_classify_last_mid(m), 0);
    n = command(buf, 2, 0x0004001E, 16); /* ReportEndOfStream */
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_S2C, buf, n, &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(mms_classify_last_mid(m), 0x0004001E);
    CU_ASSERT_EQUAL(mms_classify_feed(m, CLS_S2C, data, sizeof(data), &used), CLS_VIOLATES);
    CU_ASSERT(reason_is(m, "mms-rep"));
    free_classifier(m);
}

int unit_register(void)
{
    static const unit_case cases[] = {
        {"vectors", test_vectors},
        {"early_refusal", test_early_refusal},
        {"units", test_units},
        {"data_window", test_data_window},
        {NULL, NULL},
    };
    return unit_add_suite("mms", cases);
}
