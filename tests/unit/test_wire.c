/* test_wire.c - the link's messages (shared/pc_wire): every frame in
 * tests/vectors/wire parses to the type or the error its first line expects
 * ("ok TYPE" or "error <message prefix>"), and every builder's frame parses
 * back to what went in. */
#include "cu_main.h"
#include "pc_wire.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WIRE_DIR VECTOR_DIR "/wire"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[n] = '\0';
    *len = n;
    return buf;
}

static void test_vectors(void)
{
    DIR *d = opendir(WIRE_DIR);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    int files = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strstr(de->d_name, ".txt"))
            continue;
        char path[512];
        size_t len = 0;
        snprintf(path, sizeof(path), "%s/%s", WIRE_DIR, de->d_name);
        char *buf = slurp(path, &len);
        CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
        char *nl = strchr(buf, '\n');
        CU_ASSERT_PTR_NOT_NULL_FATAL(nl);
        *nl = '\0';
        const char *frame = nl + 1;
        size_t flen = len - (size_t)(frame - buf);
        while (flen && frame[flen - 1] == '\n')
            flen--;
        pcw_msg m;
        char err[256] = "";
        int rc = pcw_parse(frame, flen, &m, err, sizeof(err));
        bool ok;
        if (strncmp(buf, "ok ", 3) == 0)
            ok = rc == 0 && strcmp(pcw_type_name(m.type), buf + 3) == 0;
        else
            ok = rc == -1 && strncmp(buf, "error ", 6) == 0 &&
                 strncmp(err, buf + 6, strlen(buf + 6)) == 0 && m.root == NULL;
        if (!ok)
            fprintf(stderr, "\n%s: expected '%s', got rc %d type %s err '%s'\n", de->d_name, buf,
                    rc, rc == 0 ? pcw_type_name(m.type) : "-", err);
        CU_ASSERT(ok);
        pcw_msg_free(&m);
        free(buf);
        files++;
    }
    closedir(d);
    CU_ASSERT(files >= 30);
}

/* Builds, checks the room in front, parses back. */
static int reparse(pcw_frame *f, pcw_msg *m)
{
    char err[256];
    int rc = pcw_parse(pcw_payload(f), f->len, m, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\nbuilt frame does not parse: %s\n%s\n", err, pcw_payload(f));
    return rc;
}

static const char sha[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void test_build_hello_ack(void)
{
    pcw_frame f;
    pcw_msg m;
    CU_ASSERT_FATAL(pcw_build_hello(&f, "gw-1", "portcullis-node 0.3.0", true, 12, sha, 40, 3, 1,
                                    true, 11, "no round trip\nwithin 60 s") == 0);
    CU_ASSERT_EQUAL(strlen(pcw_payload(&f)), f.len);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT_EQUAL(m.type, PCW_HELLO);
    CU_ASSERT_STRING_EQUAL(m.u.hello.node, "gw-1");
    CU_ASSERT(m.u.hello.has_policy && m.u.hello.policy_version == 12);
    CU_ASSERT_STRING_EQUAL(m.u.hello.policy_sha256, sha);
    CU_ASSERT(m.u.hello.last_seq == 40 && m.u.hello.pending == 3 && m.u.hello.dropped == 1);
    CU_ASSERT(m.u.hello.has_reverted && m.u.hello.reverted_version == 11);
    /* A control character in free text is sent as a space. */
    CU_ASSERT_STRING_EQUAL(m.u.hello.reverted_reason, "no round trip within 60 s");
    pcw_msg_free(&m);
    pcw_frame_free(&f);

    CU_ASSERT_FATAL(pcw_build_ack(&f, 7, sha, false, "$.proxy: \xff\xfe bad") == 0);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT(m.type == PCW_ACK && !m.u.ack.applied && m.u.ack.version == 7);
    CU_ASSERT_STRING_EQUAL(m.u.ack.error, "$.proxy: ?? bad");
    pcw_msg_free(&m);
    pcw_frame_free(&f);

    CU_ASSERT_FATAL(pcw_build_ack(&f, 8, sha, true, NULL) == 0);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT(m.u.ack.applied && m.u.ack.error == NULL);
    pcw_msg_free(&m);
    pcw_frame_free(&f);
}

static void test_build_events(void)
{
    const char *ev[] = {"{\"type\":\"block\",\"reason\":\"blocked-domain\"}\n", "{}",
                        "{\"host\":\"<script>\\\"x\"}"};
    size_t lens[] = {strlen(ev[0]), strlen(ev[1]), strlen(ev[2])};
    int64_t seqs[] = {3, 4, 9};
    pcw_frame f;
    pcw_msg m;
    CU_ASSERT_FATAL(pcw_build_events(&f, ev, lens, seqs, 3, 5) == 0);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT(m.type == PCW_EVENTS && m.u.events.n == 3);
    CU_ASSERT(m.u.events.first_seq == 3 && m.u.events.last_seq == 9 && m.u.events.dropped == 5);
    const cJSON *e0 = cJSON_GetArrayItem(m.u.events.events, 0);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(e0, "reason")->valuestring, "blocked-domain");
    const cJSON *e2 = cJSON_GetArrayItem(m.u.events.events, 2);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(e2, "host")->valuestring, "<script>\"x");
    pcw_msg_free(&m);
    pcw_frame_free(&f);
}

static void test_build_controller(void)
{
    pcw_frame f;
    pcw_msg m;
    const char doc[] = "{\"schema\":\"portcullis.policy/1\",\"s\":\"a\\\"b\\\\\"}";
    CU_ASSERT_FATAL(pcw_build_policy(&f, 3, sha, doc, strlen(doc)) == 0);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT(m.type == PCW_POLICY && m.u.policy.version == 3);
    /* The document arrives byte for byte, so its hash still matches. */
    CU_ASSERT_EQUAL(m.u.policy.document_len, strlen(doc));
    CU_ASSERT_STRING_EQUAL(m.u.policy.document, doc);
    pcw_msg_free(&m);
    pcw_frame_free(&f);

    CU_ASSERT_FATAL(pcw_build_events_ack(&f, 1234, 1000) == 0);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT(m.u.events_ack.seq == 1234 && m.u.events_ack.credit == 1000);
    pcw_msg_free(&m);
    pcw_frame_free(&f);

    CU_ASSERT_FATAL(pcw_build_ping(&f, 99) == 0);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT(m.type == PCW_PING && m.u.ping.time == 99);
    pcw_msg_free(&m);
    pcw_frame_free(&f);

    char longmsg[3000];
    memset(longmsg, 'x', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = '\0';
    CU_ASSERT_FATAL(pcw_build_error(&f, "bad-message", longmsg) == 0);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT(m.type == PCW_ERROR && strlen(m.u.error.message) == 1024);
    pcw_msg_free(&m);
    pcw_frame_free(&f);

    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "accepted", 12);
    cJSON *b = cJSON_AddObjectToObject(c, "blocks");
    cJSON_AddNumberToObject(b, "blocked-domain", 3);
    CU_ASSERT_FATAL(pcw_build_stats(&f, 5, c) == 0);
    CU_ASSERT_FATAL(reparse(&f, &m) == 0);
    CU_ASSERT(m.type == PCW_STATS && m.u.stats.time == 5);
    CU_ASSERT_EQUAL(cJSON_GetObjectItem(m.u.stats.counters, "accepted")->valueint, 12);
    pcw_msg_free(&m);
    pcw_frame_free(&f);
    cJSON_Delete(c);
}

static void test_nul_and_sha(void)
{
    pcw_msg m;
    char err[128];
    const char frame[] = "{\"type\":\"ping\",\"v\":1,\"time\":1}\0junk";
    CU_ASSERT_EQUAL(pcw_parse(frame, sizeof(frame) - 1, &m, err, sizeof(err)), -1);
    CU_ASSERT_STRING_EQUAL(err, "$: a NUL byte in the frame");
    char hex[65];
    pcw_sha256_hex("abc", 3, hex);
    CU_ASSERT_STRING_EQUAL(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

int unit_register(void)
{
    static const unit_case cases[] = {
        {"vectors", test_vectors},
        {"build_hello_ack", test_build_hello_ack},
        {"build_events", test_build_events},
        {"build_controller", test_build_controller},
        {"nul_and_sha", test_nul_and_sha},
        {NULL, NULL},
    };
    return unit_add_suite("wire", cases);
}
