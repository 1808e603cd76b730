/* fuzz_wire.c - libFuzzer target for the link's message parser (pc_wire):
 * any bytes a peer sends as one frame. An accepted message is built again
 * with the builders and must parse back to the same type and fields, so the
 * two sides never disagree on what is valid.
 *
 * The vectors in tests/vectors/wire start with an expectation line: the
 * frame after it is fed too.
 *
 * Build and run:
 *   cmake -S . -B build-fuzz -DPORTCULLIS_FUZZ=ON -DCMAKE_C_COMPILER=clang
 *   cmake --build build-fuzz --target fuzz_wire
 *   ./build-fuzz/tests/fuzz/fuzz_wire -max_total_time=60 tests/vectors/wire
 */
#include "pc_wire.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void must(int cond)
{
    if (!cond)
        abort(); /* a built frame the parser refuses, or one that changed */
}

static void rebuild(const pcw_msg *m)
{
    pcw_frame f = {0};
    pcw_msg b;
    char err[256];
    int rc = -1;
    switch (m->type) {
    case PCW_HELLO:
        rc = pcw_build_hello(&f, m->u.hello.node, m->u.hello.software, m->u.hello.has_policy,
                             m->u.hello.policy_version, m->u.hello.policy_sha256,
                             m->u.hello.last_seq, m->u.hello.pending, m->u.hello.dropped,
                             m->u.hello.has_reverted, m->u.hello.reverted_version,
                             m->u.hello.reverted_reason);
        break;
    case PCW_ACK:
        rc = pcw_build_ack(&f, m->u.ack.version, m->u.ack.sha256, m->u.ack.applied,
                           m->u.ack.error);
        break;
    case PCW_EVENTS: {
        size_t n = m->u.events.n;
        const char **txt = calloc(n, sizeof(*txt));
        size_t *lens = calloc(n, sizeof(*lens));
        int64_t *seqs = calloc(n, sizeof(*seqs));
        char **own = calloc(n, sizeof(*own));
        size_t i = 0;
        bool ok = txt && lens && seqs && own;
        for (const cJSON *e = m->u.events.events->child; ok && e; e = e->next, i++) {
            cJSON *copy = cJSON_Duplicate(e, 1);
            if (copy)
                cJSON_DeleteItemFromObjectCaseSensitive(copy, "seq");
            own[i] = copy ? cJSON_PrintUnformatted(copy) : NULL;
            cJSON_Delete(copy);
            if (!own[i]) {
                ok = false;
                break;
            }
            txt[i] = own[i];
            lens[i] = strlen(own[i]);
            seqs[i] = (int64_t)cJSON_GetObjectItemCaseSensitive(e, "seq")->valuedouble;
        }
        if (ok)
            rc = pcw_build_events(&f, txt, lens, seqs, n, m->u.events.dropped);
        for (size_t k = 0; own && k < n; k++)
            free(own[k]);
        free(own);
        free(txt);
        free(lens);
        free(seqs);
        if (!ok)
            return;
        break;
    }
    case PCW_STATS: rc = pcw_build_stats(&f, m->u.stats.time, m->u.stats.counters); break;
    case PCW_POLICY:
        rc = pcw_build_policy(&f, m->u.policy.version, m->u.policy.sha256, m->u.policy.document,
                              m->u.policy.document_len);
        break;
    case PCW_EVENTS_ACK:
        rc = pcw_build_events_ack(&f, m->u.events_ack.seq, m->u.events_ack.credit);
        break;
    case PCW_PING: rc = pcw_build_ping(&f, m->u.ping.time); break;
    case PCW_ERROR: rc = pcw_build_error(&f, m->u.error.code, m->u.error.message); break;
    }
    if (rc != 0)
        return; /* out of memory */
    must(pcw_parse(pcw_payload(&f), f.len, &b, err, sizeof(err)) == 0);
    must(b.type == m->type);
    switch (m->type) {
    case PCW_HELLO:
        must(strcmp(b.u.hello.node, m->u.hello.node) == 0);
        must(b.u.hello.last_seq == m->u.hello.last_seq);
        break;
    case PCW_EVENTS:
        must(b.u.events.n == m->u.events.n && b.u.events.last_seq == m->u.events.last_seq);
        break;
    case PCW_POLICY:
        must(b.u.policy.document_len == m->u.policy.document_len &&
             memcmp(b.u.policy.document, m->u.policy.document, m->u.policy.document_len) == 0);
        break;
    case PCW_EVENTS_ACK:
        must(b.u.events_ack.seq == m->u.events_ack.seq &&
             b.u.events_ack.credit == m->u.events_ack.credit);
        break;
    default: break;
    }
    pcw_msg_free(&b);
    pcw_frame_free(&f);
}

static void one(const char *buf, size_t len)
{
    pcw_msg m;
    char err[256];
    if (pcw_parse(buf, len, &m, err, sizeof(err)) != 0) {
        must(err[0] == '$'); /* every refusal names where */
        return;
    }
    rebuild(&m);
    pcw_msg_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    one(buf, size);
    const char *nl = memchr(buf, '\n', size);
    if (nl)
        one(nl + 1, size - (size_t)(nl + 1 - buf));
    return 0;
}
