/* pc_wire.h - the messages of the controller <-> node link, subprotocol
 * "portcullis.v1" (docs/link.md, schema/wire/): parse one text
 * frame into a checked message, and build the frames either side sends.
 *
 * Pure: no I/O. A parse failure names the field ("$.events[3].seq: must be
 * an integer >= 1"), so the peer's error message can say exactly what was
 * wrong. Built frames leave PCW_PRE bytes in front of the payload, which
 * lws_write needs (LWS_PRE), so a frame is sent without a copy.
 */
#ifndef PORTCULLIS_PC_WIRE_H
#define PORTCULLIS_PC_WIRE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PCW_WUR __attribute__((warn_unused_result))

#define PCW_PROTOCOL "portcullis.v1"
#define PCW_VERSION 1
/* Room left in front of every built payload; >= LWS_PRE (checked where lws
 * is used). */
#define PCW_PRE 32
/* Largest frame a node may send, and the controller. */
#define PCW_NODE_FRAME_MAX (1024 * 1024)
#define PCW_CONTROLLER_FRAME_MAX (4 * 1024 * 1024)
/* Events in one batch. */
#define PCW_EVENTS_MAX 1000

typedef enum {
    PCW_HELLO = 0, /* node -> controller */
    PCW_ACK,
    PCW_EVENTS,
    PCW_STATS,
    PCW_POLICY, /* controller -> node */
    PCW_EVENTS_ACK,
    PCW_PING,
    PCW_ERROR, /* either way */
} pcw_type;

/* "hello", "ack", ... */
const char *pcw_type_name(pcw_type t);

/* A parsed message. Strings and cJSON pointers point into root, which the
 * message owns (pcw_msg_free). A field documented as optional is NULL / 0
 * / false when absent. */
typedef struct pcw_msg {
    pcw_type type;
    cJSON *root;
    union {
        struct {
            const char *node;     /* 1..64 bytes, [A-Za-z0-9_.-] */
            const char *software; /* 1..64 bytes of text */
            bool has_policy;      /* false: "policy": null (the built-in policy) */
            int64_t policy_version;
            const char *policy_sha256; /* 64 lower-case hex digits */
            int64_t last_seq, pending, dropped;
            bool has_reverted;
            int64_t reverted_version;
            const char *reverted_reason;
        } hello;
        struct {
            int64_t version;
            const char *sha256;
            bool applied;
            const char *error; /* NULL when applied */
        } ack;
        struct {
            const cJSON *events; /* the array: 1..PCW_EVENTS_MAX objects */
            size_t n;
            int64_t first_seq, last_seq; /* seq strictly ascending, >= 1 */
            int64_t dropped;
        } events;
        struct {
            int64_t time;
            const cJSON *counters; /* object */
        } stats;
        struct {
            int64_t version;
            const char *sha256;
            const char *document; /* the document's bytes (NUL-terminated) */
            size_t document_len;
        } policy;
        struct {
            int64_t seq; /* >= 0 */
            int64_t credit; /* >= 0 */
        } events_ack;
        struct {
            int64_t time;
        } ping;
        struct {
            const char *code;    /* 1..64 bytes, [a-z0-9-] */
            const char *message; /* text, <= 1024 bytes */
        } error;
    } u;
} pcw_msg;

/* Parses and checks one frame (len bytes; need not be NUL-terminated).
 * Returns 0 and fills *out (pcw_msg_free), or -1 with err naming the field
 * and *out zeroed. Unknown fields are ignored (a newer peer may add some);
 * an unknown "type" or a "v" other than PCW_VERSION is an error. */
PCW_WUR int pcw_parse(const char *buf, size_t len, pcw_msg *out, char *err, size_t errlen);
void pcw_msg_free(pcw_msg *m);

/* A built frame: the payload is mem + PCW_PRE, len bytes, NUL after it. */
typedef struct pcw_frame {
    char *mem;
    size_t len;
} pcw_frame;

static inline char *pcw_payload(const pcw_frame *f)
{
    return f->mem + PCW_PRE;
}
void pcw_frame_free(pcw_frame *f);

/* Builders: 0, or -1 when memory runs out (*f zeroed). Strings are escaped
 * as needed; NULL strings become null. */
PCW_WUR int pcw_build_hello(pcw_frame *f, const char *node, const char *software, bool has_policy,
                            int64_t policy_version, const char *policy_sha256, int64_t last_seq,
                            int64_t pending, int64_t dropped, bool has_reverted,
                            int64_t reverted_version, const char *reverted_reason);
PCW_WUR int pcw_build_ack(pcw_frame *f, int64_t version, const char *sha256, bool applied,
                          const char *error);
/* events_json[i] is one event object as JSON text (docs/events.md, as
 * ev_format writes it, without "seq"), seqs[i] its sequence number; the
 * builder puts "seq" in front of each object's members without parsing it. */
PCW_WUR int pcw_build_events(pcw_frame *f, const char *const *events_json, const size_t *lens,
                             const int64_t *seqs, size_t n, int64_t dropped);
/* counters: an object (not taken). */
PCW_WUR int pcw_build_stats(pcw_frame *f, int64_t time_ms, const cJSON *counters);
PCW_WUR int pcw_build_policy(pcw_frame *f, int64_t version, const char *sha256,
                             const char *document, size_t document_len);
PCW_WUR int pcw_build_events_ack(pcw_frame *f, int64_t seq, int64_t credit);
PCW_WUR int pcw_build_ping(pcw_frame *f, int64_t time_ms);
PCW_WUR int pcw_build_error(pcw_frame *f, const char *code, const char *message);

/* SHA-256 of len bytes as 64 lower-case hex digits (OpenSSL). */
void pcw_sha256_hex(const void *data, size_t len, char out[65]);

#endif
