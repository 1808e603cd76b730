/* tls_classify.h - TLS conformance for both directions of one connection:
 * record framing for its whole life, the ClientHello parsed completely, the
 * ServerHello, and (TLS <= 1.2) the server's Certificate message.
 *
 * Follows the feed contract of classify.h. The classifier stops with
 * CLS_CONFORMS and an event after:
 *   TLS_EV_CLIENT_HELLO  - the complete ClientHello (C2S); the proxy checks
 *                          the SNI before anything reaches the server.
 *   TLS_EV_SERVER_HELLO  - the ServerHello (S2C); tls_classify_info() says
 *                          the negotiated version. For TLS 1.3 the proxy must
 *                          verify the server itself (tls_probe.h) before it
 *                          forwards further server bytes.
 *   TLS_EV_CERTIFICATE   - the complete Certificate handshake message of a
 *                          TLS <= 1.2 server (S2C); tls_classify_chain()
 *                          gives the DER certificates for tls_verify.h.
 * Handshake messages may span records and records may hold several
 * messages; both are reassembled (bounded: TLS_MAX_HANDSHAKE). After the
 * handshake only record framing is checked: content type, version, length
 * <= 2^14 + 2048, and no plaintext handshake/application data where the
 * protocol does not allow it.
 *
 * Reasons: "tls-record-type", "tls-record-version", "tls-record-length",
 * "tls-not-handshake" (first record is not a handshake), "tls-client-hello"
 * (with detail), "tls-server-hello", "tls-certificate" (malformed message),
 * "tls-unexpected-message", "tls-handshake-too-large", "tls-truncated".
 * Also: "tls-no-certificate" (a TLS <= 1.2 server that does not resume a
 * session went on without a Certificate: anonymous or PSK), "tls-alert" (a
 * plaintext alert that is not level 1/2 + description), "tls-change-cipher-
 * spec" (not the single byte 0x01), "tls-no-memory" (reassembly buffer).
 *
 * Details a caller must know:
 *   - Each event fires at most once per connection. After a TLS 1.3
 *     HelloRetryRequest (no event; info.hello_retry) the second ClientHello
 *     is parsed and must keep the first one's server_name (else a violation),
 *     but it raises no second TLS_EV_CLIENT_HELLO; tls_info keeps the first
 *     ClientHello's facts. TLS_EV_SERVER_HELLO is the real ServerHello.
 *   - info.resumed: a TLS <= 1.2 ServerHello echoed the client's session id,
 *     so no Certificate follows (abbreviated handshake) and no
 *     TLS_EV_CERTIFICATE comes; the caller must verify the server another
 *     way, as for TLS 1.3. A server that skips the Certificate without
 *     echoing the session id violates ("tls-no-certificate").
 *   - CLS_CONFORMS without an event (consumed == len) means the input ended
 *     at a point where all of it conforms: between records, after a
 *     validated record header, inside an encrypted or application data
 *     record (its bytes are opaque), or inside a handshake message that is
 *     only framed, not parsed. Inside a record header, a ClientHello,
 *     ServerHello or Certificate message, or a 1-2 byte alert/CCS body it is
 *     CLS_NEED_MORE.
 *   - Plaintext handshake messages are bounded by TLS_MAX_HANDSHAKE whether
 *     or not they are reassembled; only the ClientHello, ServerHello and
 *     Certificate are buffered, in a buffer that exists only while one is
 *     being reassembled (plus the last ClientHello until the ServerHello,
 *     and the Certificate until the feed after its event).
 */
#ifndef PORTCULLIS_TLS_CLASSIFY_H
#define PORTCULLIS_TLS_CLASSIFY_H

#include "classify.h"

#include <stdbool.h>

enum {
    TLS_EV_CLIENT_HELLO = 1,
    TLS_EV_SERVER_HELLO = 2,
    TLS_EV_CERTIFICATE = 3,
};

#define TLS_MAX_RECORD (16384 + 2048)
/* Largest handshake message reassembled (a certificate chain). */
#define TLS_MAX_HANDSHAKE 65536
/* Most certificates accepted in one Certificate message. */
#define TLS_MAX_CHAIN 32

typedef struct tls_info {
    char sni[256];               /* server_name host_name, lower-cased; "" if none */
    uint16_t client_max_version; /* highest version offered (0x0304 = 1.3) */
    uint16_t version;            /* negotiated, from the ServerHello; 0 before */
    uint16_t cipher;             /* negotiated cipher suite */
    char alpn[32];               /* first ALPN protocol offered, "" if none
                                    (non-printable bytes as '?', truncated) */
    bool early_data;             /* the ClientHello offers TLS 1.3 early data with a
                                    PSK: application data records may follow it
                                    before the ServerHello */
    bool hello_retry;            /* the server sent a HelloRetryRequest */
    bool resumed;                /* TLS <= 1.2 session resumption; see above */
    bool maybe_resumed;          /* TLS <= 1.2, the client sent a session ticket
                                    with an empty session_id: the server may
                                    resume without echoing an id (RFC 5077 3.4),
                                    so no Certificate may follow; the proxy
                                    verifies such a server itself */
} tls_info;

typedef struct tls_classify tls_classify;

size_t tls_classify_size(void);
void tls_classify_init(tls_classify *t);
void tls_classify_release(tls_classify *t);

cls_verdict tls_classify_feed(tls_classify *t, cls_dir dir, const uint8_t *data, size_t len,
                              size_t *consumed);
cls_verdict tls_classify_finish(tls_classify *t, cls_dir dir);
int tls_classify_event(const tls_classify *t);
const char *tls_classify_reason(const tls_classify *t);

const tls_info *tls_classify_info(const tls_classify *t);

/* Heap bytes t holds right now (reassembly buffer, hello facts, reason):
 * 0 once the handshake messages it parses are done. For memory accounting
 * and tests. */
size_t tls_classify_heap(const tls_classify *t);

/* After TLS_EV_CERTIFICATE, until the next feed: the certificates in the
 * order the server sent them (leaf first). Pointers into t's buffer. */
size_t tls_classify_chain(const tls_classify *t, const uint8_t *const **der,
                          const size_t **der_len);

#endif
