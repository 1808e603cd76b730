/* classify.h - what every protocol classifier shares: verdicts, directions,
 * and the streaming contract the proxy and the vector tests rely on.
 *
 * A classifier is a pure function over a byte stream in two directions: it
 * does no I/O and never allocates without bound. The proxy feeds it every byte
 * it receives, in whatever split the network delivered, and forwards only the
 * bytes the classifier has accepted.
 *
 * The feed contract (identical for http, tls, rtsp and mms):
 *
 *   cls_verdict X_feed(X_state *s, cls_dir dir,
 *                      const uint8_t *data, size_t len, size_t *consumed);
 *
 *   - CLS_VIOLATES: the stream is not the protocol. *consumed says how far
 *     the classifier read; X_reason() names the problem. The state is dead:
 *     every later feed returns CLS_VIOLATES again with the same reason.
 *   - CLS_CONFORMS: every byte of this direction up to *consumed conforms
 *     and may be forwarded. *consumed may be less than len: the classifier
 *     stops right after a unit the caller may want to inspect (a complete
 *     message head, a ClientHello, a certificate...); X_event() says which.
 *     The caller inspects, then feeds the rest (data + *consumed).
 *   - CLS_NEED_MORE: all len bytes were consumed, but the last unit is not
 *     complete yet (a head cut in the middle, say). The caller holds the bytes
 *     since the last CONFORMS and feeds more when it arrives.
 *
 * So the proxy keeps a "conforming frontier" per direction and forwards up to
 * it. Feeding len == 0 is allowed and returns the current state's verdict for
 * an empty input (CLS_NEED_MORE unless dead).
 *
 * End of stream: X_finish(s, dir) tells the classifier that a direction was
 * half-closed; it returns CLS_VIOLATES when the stream ended inside a unit
 * (truncated head, truncated record), otherwise CLS_CONFORMS.
 */
#ifndef PORTCULLIS_CLASSIFY_H
#define PORTCULLIS_CLASSIFY_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    CLS_NEED_MORE = 0,
    CLS_CONFORMS = 1,
    CLS_VIOLATES = 2,
} cls_verdict;

typedef enum {
    CLS_C2S = 0, /* client to server */
    CLS_S2C = 1, /* server to client */
} cls_dir;

/* Generic event numbers; each classifier defines its own values >= 1 in its
 * header. 0 means "nothing to inspect". */
#define CLS_EV_NONE 0

/* Reasons are short, stable, lower-case strings "proto-problem", optionally
 * followed by ": detail" (e.g. "http-obs-fold", "tls-record-length: 20000 >
 * 18432"). Events and tests match on the part before the colon. The string
 * lives in the classifier state (or is static) and stays valid until the next
 * feed on that state. */

/* Names used in events and logs. */
const char *cls_verdict_name(cls_verdict v);

/* One operations table per protocol, so the proxy and the vector test runner
 * can drive any classifier the same way. state_size bytes are allocated by
 * the caller; init must be called before the first feed and release after the
 * last (release frees what the classifier allocated inside its state, never
 * the state itself). */
typedef struct cls_ops {
    const char *name; /* "http", "tls", "rtsp", "mms" */
    size_t state_size;
    void (*init)(void *state);
    cls_verdict (*feed)(void *state, cls_dir dir, const uint8_t *data, size_t len,
                        size_t *consumed);
    cls_verdict (*finish)(void *state, cls_dir dir);
    int (*event)(const void *state);          /* event of the last CONFORMS, or 0 */
    const char *(*reason)(const void *state); /* NULL unless violated */
    void (*release)(void *state);
} cls_ops;

/* Defines <pfx>_cls_ops over the functions <pfx>_classify_init, _feed,
 * _finish, _event, _reason and _release of a classifier whose state type is
 * <pfx>_classify; one line at the end of each classifier's .c file. */
#define CLS_DEFINE_OPS(pfx)                                                                        \
    static void pfx##_ops_init(void *s)                                                            \
    {                                                                                              \
        pfx##_classify_init(s);                                                                    \
    }                                                                                              \
    static cls_verdict pfx##_ops_feed(void *s, cls_dir dir, const uint8_t *data, size_t len,       \
                                      size_t *consumed)                                            \
    {                                                                                              \
        return pfx##_classify_feed(s, dir, data, len, consumed);                                   \
    }                                                                                              \
    static cls_verdict pfx##_ops_finish(void *s, cls_dir dir)                                      \
    {                                                                                              \
        return pfx##_classify_finish(s, dir);                                                      \
    }                                                                                              \
    static int pfx##_ops_event(const void *s)                                                      \
    {                                                                                              \
        return pfx##_classify_event(s);                                                            \
    }                                                                                              \
    static const char *pfx##_ops_reason(const void *s)                                             \
    {                                                                                              \
        return pfx##_classify_reason(s);                                                           \
    }                                                                                              \
    static void pfx##_ops_release(void *s)                                                         \
    {                                                                                              \
        pfx##_classify_release(s);                                                                 \
    }                                                                                              \
    const cls_ops pfx##_cls_ops = {                                                                \
        .name = #pfx,                                                                              \
        .state_size = sizeof(pfx##_classify),                                                      \
        .init = pfx##_ops_init,                                                                    \
        .feed = pfx##_ops_feed,                                                                    \
        .finish = pfx##_ops_finish,                                                                \
        .event = pfx##_ops_event,                                                                  \
        .reason = pfx##_ops_reason,                                                                \
        .release = pfx##_ops_release,                                                              \
    }

extern const cls_ops http_cls_ops;
extern const cls_ops tls_cls_ops;
extern const cls_ops rtsp_cls_ops;
extern const cls_ops mms_cls_ops;

#endif
