/* tls_classify.c - TLS conformance over both directions of one connection:
 * record framing for its whole life, the ClientHello and ServerHello parsed
 * completely, and the TLS <= 1.2 server Certificate handed out for
 * verification (see tls_classify.h). Pure: no I/O, no OpenSSL. */
#include "tls_classify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TLS_MAX_PLAIN 16384                /* TLSPlaintext.length */
#define TLS13_MAX_CIPHERTEXT (16384 + 256) /* TLS 1.3 TLSCiphertext.length */
#define TLS_HS_CHUNK 4096                  /* first reassembly allocation */

enum {
    CT_CCS = 20,
    CT_ALERT = 21,
    CT_HANDSHAKE = 22,
    CT_APPDATA = 23,
    CT_HEARTBEAT = 24,
};

enum {
    HT_CLIENT_HELLO = 1,
    HT_SERVER_HELLO = 2,
    HT_NEW_SESSION_TICKET = 4,
    HT_CERTIFICATE = 11,
    HT_SERVER_KEY_EXCHANGE = 12,
    HT_CERTIFICATE_REQUEST = 13,
    HT_SERVER_HELLO_DONE = 14,
    HT_CERTIFICATE_VERIFY = 15,
    HT_CLIENT_KEY_EXCHANGE = 16,
    HT_CERTIFICATE_STATUS = 22,
};

enum {
    EXT_SERVER_NAME = 0,
    EXT_SUPPORTED_GROUPS = 10,
    EXT_EC_POINT_FORMATS = 11,
    EXT_SIGNATURE_ALGORITHMS = 13,
    EXT_ALPN = 16,
    EXT_SESSION_TICKET = 35,
    EXT_PRE_SHARED_KEY = 41,
    EXT_EARLY_DATA = 42,
    EXT_SUPPORTED_VERSIONS = 43,
    EXT_COOKIE = 44,
    EXT_PSK_KEY_EXCHANGE_MODES = 45,
    EXT_KEY_SHARE = 51,
    EXT_RENEGOTIATION_INFO = 0xff01,
};

#define CS_EMPTY_RENEGOTIATION_INFO_SCSV 0x00ff
#define CS_FALLBACK_SCSV 0x5600

/* ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest"). */
static const uint8_t hrr_random[32] = {
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c};

/* Where the connection is in its handshake. */
typedef enum {
    PH_CLIENT_HELLO,  /* waiting for the first ClientHello */
    PH_SERVER_HELLO,  /* ClientHello done, waiting for the ServerHello */
    PH_RETRY,         /* HelloRetryRequest done, waiting for ClientHello 2 */
    PH_SERVER_HELLO2, /* second ClientHello done, waiting for the ServerHello */
    PH_TLS12,         /* TLS <= 1.2 negotiated */
    PH_TLS13,         /* TLS 1.3 negotiated: handshake content is encrypted */
} tls_phase;

/* How the body of the current record is read. */
typedef enum {
    RK_OPAQUE,    /* encrypted or application data: skipped by length */
    RK_HANDSHAKE, /* plaintext handshake messages */
    RK_ALERT,     /* plaintext alert: level, description */
    RK_CCS,       /* plaintext change_cipher_spec: 0x01 */
} rec_kind;

/* Order of the plaintext TLS <= 1.2 handshake messages after the hellos. */
enum {
    RANK_NONE = 0,
    RANK_CERT,   /* server: Certificate; client: Certificate */
    RANK_STATUS, /* server: CertificateStatus; client: ClientKeyExchange */
    RANK_SKE,    /* server: ServerKeyExchange; client: CertificateVerify */
    RANK_CREQ,   /* server: CertificateRequest */
    RANK_DONE,   /* server: ServerHelloDone */
    RANK_TICKET, /* server: NewSessionTicket */
};
#define RANK_CKE RANK_STATUS
#define RANK_CV RANK_SKE

typedef struct tls_dir {
    uint8_t hdr[5];   /* record header */
    uint8_t hdr_have; /* bytes of hdr read; 5 while in the body */
    uint8_t kind;     /* rec_kind of the current record */
    uint8_t small[2]; /* plaintext alert / change_cipher_spec body */
    uint8_t small_have;
    uint8_t hs_hdr[4];   /* handshake message header */
    uint8_t hs_hdr_have; /* 4 while in the message body */
    bool hs_collect;     /* the message body goes to the reassembly buffer */
    bool started;        /* a record header was read */
    bool encrypted;      /* TLS <= 1.2 after this side's change_cipher_spec */
    uint8_t rank;        /* RANK_* of the last plaintext message (TLS <= 1.2) */
    uint8_t ccs;         /* change_cipher_spec records seen */
    uint16_t rec_left;   /* record body bytes still to come */
    uint32_t hs_left;    /* message body bytes still to come */
} tls_dir;

/* What exists only during the handshake. */
typedef struct tls_hs {
    uint8_t *msg; /* body of the message being reassembled */
    uint32_t msg_len, msg_have, msg_cap;
    uint8_t *ch; /* body of the last ClientHello, for the ServerHello checks */
    uint32_t ch_len;
    uint8_t *cert; /* body of the Certificate message the chain points into */
    uint32_t cert_len;
    size_t nchain;
    const uint8_t *chain[TLS_MAX_CHAIN];
    size_t chain_len[TLS_MAX_CHAIN];
} tls_hs;

struct tls_classify {
    tls_info info;
    tls_dir dir[2];
    tls_hs *hs;
    char *reason_buf;
    const char *reason;
    uint8_t phase;
    uint8_t event;
    bool offered13; /* the ClientHello offers TLS 1.3 */
    bool ticket_no_sid; /* it offers a session ticket with an empty session_id */
    bool dead;
};

/* ---- helpers ---------------------------------------------------------- */

static void hs_free(tls_classify *t)
{
    if (!t->hs)
        return;
    free(t->hs->msg);
    free(t->hs->ch);
    free(t->hs->cert);
    free(t->hs);
    t->hs = NULL;
}

static tls_hs *hs_get(tls_classify *t)
{
    if (!t->hs)
        t->hs = calloc(1, sizeof(*t->hs));
    return t->hs;
}

/* Frees the handshake context once nothing in it is needed any more. */
static void hs_trim(tls_classify *t)
{
    if (t->hs && !t->hs->msg && !t->hs->ch && !t->hs->cert)
        hs_free(t);
}

static int violate(tls_classify *t, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Kills the state with reason "kind: detail"; returns -1. */
static int violate(tls_classify *t, const char *kind, const char *fmt, ...)
{
    char detail[192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    free(t->reason_buf);
    size_t n = strlen(kind) + 2 + strlen(detail) + 1;
    t->reason_buf = malloc(n);
    if (t->reason_buf) {
        snprintf(t->reason_buf, n, "%s: %s", kind, detail);
        t->reason = t->reason_buf;
    } else {
        t->reason = kind;
    }
    t->dead = true;
    t->event = CLS_EV_NONE;
    hs_free(t);
    return -1;
}

static const char *ct_name(unsigned type)
{
    switch (type) {
    case CT_CCS: return "change_cipher_spec";
    case CT_ALERT: return "alert";
    case CT_HANDSHAKE: return "handshake";
    case CT_APPDATA: return "application_data";
    default: return "unknown";
    }
}

static const char *dir_name(cls_dir dir)
{
    return dir == CLS_C2S ? "client" : "server";
}

static bool is_grease(unsigned v)
{
    return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

static uint32_t get24(const uint8_t *p)
{
    return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}

/* A bounds-checked reader over a message; base is the offset of p[0] in the
 * message, for error messages. */
typedef struct rd {
    const uint8_t *p;
    size_t n, off, base;
} rd;

static size_t rd_left(const rd *r)
{
    return r->n - r->off;
}

static size_t rd_at(const rd *r)
{
    return r->base + r->off;
}

static bool rd_u8(rd *r, unsigned *v)
{
    if (rd_left(r) < 1)
        return false;
    *v = r->p[r->off++];
    return true;
}

static bool rd_u16(rd *r, unsigned *v)
{
    if (rd_left(r) < 2)
        return false;
    *v = (unsigned)r->p[r->off] << 8 | r->p[r->off + 1];
    r->off += 2;
    return true;
}

static bool rd_u32(rd *r, uint32_t *v)
{
    if (rd_left(r) < 4)
        return false;
    *v = (uint32_t)r->p[r->off] << 24 | get24(r->p + r->off + 1);
    r->off += 4;
    return true;
}

static bool rd_take(rd *r, size_t k, rd *sub)
{
    if (rd_left(r) < k)
        return false;
    *sub = (rd){r->p + r->off, k, 0, r->base + r->off};
    r->off += k;
    return true;
}

/* A vector with a 1, 2 or 3 byte length prefix. */
static bool rd_vec(rd *r, int lenbytes, rd *sub)
{
    size_t k = 0;
    if (rd_left(r) < (size_t)lenbytes)
        return false;
    for (int i = 0; i < lenbytes; i++)
        k = k << 8 | r->p[r->off + (size_t)i];
    r->off += (size_t)lenbytes;
    return rd_take(r, k, sub);
}

/* A vector that must fill the rest of r exactly, with min..max bytes and a
 * length that is a multiple of unit. */
static bool rd_vec_all(rd *r, int lenbytes, size_t min, size_t max, size_t unit, rd *sub)
{
    return rd_vec(r, lenbytes, sub) && rd_left(r) == 0 && sub->n >= min && sub->n <= max &&
           sub->n % unit == 0;
}

static bool bit_test(const uint8_t *bits, unsigned v)
{
    return bits[v >> 3] & (1u << (v & 7));
}

static bool bit_test_set(uint8_t *bits, unsigned v)
{
    bool was = bits[v >> 3] & (1u << (v & 7));
    bits[v >> 3] |= (uint8_t)(1u << (v & 7));
    return was;
}

/* ---- ClientHello ------------------------------------------------------ */

#define CH "tls-client-hello"

typedef struct ch_facts {
    char sni[256];
    char alpn[32];
    unsigned max_version;
    bool offered13;
    bool early_data;
    bool psk;
    bool ticket; /* a non-empty session_ticket (RFC 5077): resumption asked */
    bool empty_sid;
} ch_facts;

/* A host_name: LDH labels (and '_', which real names use) of 1..63 bytes,
 * at most 253 bytes, no trailing dot; stored lower-cased. */
static int check_host(tls_classify *t, const rd *name, ch_facts *f)
{
    if (name->n == 0 || name->n > 253)
        return violate(t, CH, "bad sni: length %zu", name->n);
    size_t label = 0;
    for (size_t i = 0; i < name->n; i++) {
        unsigned char c = name->p[i];
        if (c == '.') {
            if (label == 0)
                return violate(t, CH, "bad sni: empty label at %zu", rd_at(name) + i);
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
            label++;
        } else if (c >= 'A' && c <= 'Z') {
            c = (unsigned char)(c - 'A' + 'a');
            label++;
        } else {
            return violate(t, CH, "bad sni: byte 0x%02x at %zu", c, rd_at(name) + i);
        }
        if (label > 63)
            return violate(t, CH, "bad sni: label longer than 63");
        f->sni[i] = (char)c;
    }
    if (label == 0)
        return violate(t, CH, "bad sni: trailing dot");
    f->sni[name->n] = '\0';
    return 0;
}

static int ch_server_name(tls_classify *t, rd *e, ch_facts *f)
{
    rd list, name;
    bool have_host = false;
    if (!rd_vec_all(e, 2, 1, SIZE_MAX, 1, &list))
        return violate(t, CH, "bad sni: server_name_list length at %zu", rd_at(e));
    while (rd_left(&list)) {
        unsigned type;
        if (!rd_u8(&list, &type) || !rd_vec(&list, 2, &name))
            return violate(t, CH, "bad sni: entry overruns the list at %zu", rd_at(&list));
        if (type != 0)
            return violate(t, CH, "bad sni: name_type %u", type);
        if (have_host)
            return violate(t, CH, "bad sni: two host_name entries");
        have_host = true;
        if (check_host(t, &name, f) != 0)
            return -1;
    }
    return 0;
}

static int ch_alpn(tls_classify *t, rd *e, ch_facts *f)
{
    rd list, proto;
    if (!rd_vec_all(e, 2, 2, SIZE_MAX, 1, &list))
        return violate(t, CH, "malformed application_layer_protocol_negotiation at %zu", rd_at(e));
    bool first = true;
    while (rd_left(&list)) {
        if (!rd_vec(&list, 1, &proto) || proto.n == 0)
            return violate(t, CH, "malformed ALPN protocol name at %zu", rd_at(&list));
        if (first) {
            size_t k = proto.n < sizeof(f->alpn) - 1 ? proto.n : sizeof(f->alpn) - 1;
            for (size_t i = 0; i < k; i++)
                f->alpn[i] = proto.p[i] > ' ' && proto.p[i] <= '~' ? (char)proto.p[i] : '?';
            f->alpn[k] = '\0';
            first = false;
        }
    }
    return 0;
}

static int ch_supported_versions(tls_classify *t, rd *e, ch_facts *f)
{
    rd list;
    unsigned v, max = 0;
    if (!rd_vec_all(e, 1, 2, 254, 2, &list))
        return violate(t, CH, "malformed supported_versions at %zu", rd_at(e));
    while (rd_u16(&list, &v)) {
        if (is_grease(v) || (v >> 8) != 3)
            continue;
        if (v > max)
            max = v;
        if (v == 0x0304)
            f->offered13 = true;
    }
    if (max == 0)
        return violate(t, CH, "supported_versions offers no TLS version");
    f->max_version = max;
    return 0;
}

static int ch_pre_shared_key(tls_classify *t, rd *e, ch_facts *f)
{
    rd ids, binders, x;
    uint32_t age;
    size_t nid = 0, nbind = 0;
    f->psk = true;
    if (!rd_vec(e, 2, &ids) || ids.n < 7 || !rd_vec(e, 2, &binders) || binders.n < 33 ||
        rd_left(e) != 0)
        return violate(t, CH, "malformed pre_shared_key at %zu", rd_at(e));
    while (rd_left(&ids)) {
        if (!rd_vec(&ids, 2, &x) || x.n == 0 || !rd_u32(&ids, &age))
            return violate(t, CH, "malformed PSK identity at %zu", rd_at(&ids));
        nid++;
    }
    while (rd_left(&binders)) {
        if (!rd_vec(&binders, 1, &x) || x.n < 32)
            return violate(t, CH, "malformed PSK binder at %zu", rd_at(&binders));
        nbind++;
    }
    if (nid != nbind)
        return violate(t, CH, "%zu PSK identities but %zu binders", nid, nbind);
    return 0;
}

static int ch_key_share(tls_classify *t, rd *e)
{
    rd list, key;
    unsigned group;
    if (!rd_vec_all(e, 2, 0, SIZE_MAX, 1, &list))
        return violate(t, CH, "malformed key_share at %zu", rd_at(e));
    while (rd_left(&list))
        if (!rd_u16(&list, &group) || !rd_vec(&list, 2, &key) || key.n == 0)
            return violate(t, CH, "malformed key_share entry at %zu", rd_at(&list));
    return 0;
}

/* Checks one extension's body; the ones not named here are only framed. */
static int ch_extension(tls_classify *t, unsigned type, rd *e, ch_facts *f)
{
    rd v;
    switch (type) {
    case EXT_SERVER_NAME: return ch_server_name(t, e, f);
    case EXT_ALPN: return ch_alpn(t, e, f);
    case EXT_SUPPORTED_VERSIONS: return ch_supported_versions(t, e, f);
    case EXT_PRE_SHARED_KEY: return ch_pre_shared_key(t, e, f);
    case EXT_KEY_SHARE: return ch_key_share(t, e);
    case EXT_SUPPORTED_GROUPS:
    case EXT_SIGNATURE_ALGORITHMS:
        if (!rd_vec_all(e, 2, 2, SIZE_MAX, 2, &v))
            return violate(t, CH, "malformed extension 0x%04x at %zu", type, rd_at(e));
        return 0;
    case EXT_EC_POINT_FORMATS:
    case EXT_PSK_KEY_EXCHANGE_MODES:
        if (!rd_vec_all(e, 1, 1, SIZE_MAX, 1, &v))
            return violate(t, CH, "malformed extension 0x%04x at %zu", type, rd_at(e));
        return 0;
    case EXT_EARLY_DATA:
        if (rd_left(e) != 0)
            return violate(t, CH, "early_data extension is not empty");
        f->early_data = true;
        return 0;
    case EXT_SESSION_TICKET:
        f->ticket = rd_left(e) != 0;
        return 0;
    default: return 0;
    }
}

static int ch_extensions(tls_classify *t, rd *exts, ch_facts *f)
{
    uint8_t seen[8192];
    memset(seen, 0, sizeof(seen));
    while (rd_left(exts)) {
        size_t at = rd_at(exts);
        unsigned type;
        rd e;
        if (!rd_u16(exts, &type) || !rd_vec(exts, 2, &e))
            return violate(t, CH, "extension at %zu overruns the extensions block", at);
        if (bit_test_set(seen, type))
            return violate(t, CH, "duplicate extension 0x%04x at %zu", type, at);
        if (f->psk)
            return violate(t, CH, "pre_shared_key is not the last extension");
        if (ch_extension(t, type, &e, f) != 0)
            return -1;
    }
    return 0;
}

/* The fields of a ClientHello that the ServerHello is checked against. */
typedef struct ch_view {
    unsigned version;
    rd session_id, ciphers, compressions, exts;
} ch_view;

/* Walks a ClientHello's fixed part; false if it is malformed. */
static bool ch_walk(const uint8_t *b, size_t n, ch_view *v)
{
    rd r = {b, n, 0, 0}, random;
    memset(v, 0, sizeof(*v));
    if (!rd_u16(&r, &v->version) || !rd_take(&r, 32, &random) || !rd_vec(&r, 1, &v->session_id) ||
        !rd_vec(&r, 2, &v->ciphers) || !rd_vec(&r, 1, &v->compressions))
        return false;
    return rd_left(&r) == 0 || (rd_vec(&r, 2, &v->exts) && rd_left(&r) == 0);
}

static int parse_client_hello(tls_classify *t, const uint8_t *b, size_t n, bool second)
{
    rd r = {b, n, 0, 0}, random, sid, ciphers, comp, exts;
    unsigned ver;
    ch_facts f;
    memset(&f, 0, sizeof(f));
    if (!rd_u16(&r, &ver))
        return violate(t, CH, "truncated at legacy_version");
    if ((ver >> 8) != 3 || (ver & 0xff) > 4)
        return violate(t, CH, "legacy_version 0x%04x", ver);
    if (!rd_take(&r, 32, &random))
        return violate(t, CH, "truncated in random");
    if (!rd_vec(&r, 1, &sid))
        return violate(t, CH, "session_id overruns the message at %zu", rd_at(&r));
    if (sid.n > 32)
        return violate(t, CH, "session_id length %zu > 32", sid.n);
    f.empty_sid = sid.n == 0;
    if (!rd_vec(&r, 2, &ciphers))
        return violate(t, CH, "cipher_suites overrun the message at %zu", rd_at(&r));
    if (ciphers.n < 2 || ciphers.n % 2)
        return violate(t, CH, "cipher_suites length %zu", ciphers.n);
    if (!rd_vec(&r, 1, &comp))
        return violate(t, CH, "compression_methods overrun the message at %zu", rd_at(&r));
    if (comp.n == 0 || !memchr(comp.p, 0, comp.n))
        return violate(t, CH, "compression_methods lack null");
    if (rd_left(&r)) {
        if (!rd_vec(&r, 2, &exts))
            return violate(t, CH, "extensions overrun the message at %zu", rd_at(&r));
        if (rd_left(&r))
            return violate(t, CH, "%zu bytes after the extensions", rd_left(&r));
        if (ch_extensions(t, &exts, &f) != 0)
            return -1;
    }
    if (f.max_version == 0)
        f.max_version = ver;
    if (!second) {
        memcpy(t->info.sni, f.sni, sizeof(t->info.sni));
        memcpy(t->info.alpn, f.alpn, sizeof(t->info.alpn));
        t->info.client_max_version = (uint16_t)f.max_version;
        t->info.early_data = f.early_data && f.psk && f.offered13;
        t->offered13 = f.offered13;
        t->ticket_no_sid = f.ticket && f.empty_sid;
        return 0;
    }
    if (strcmp(f.sni, t->info.sni) != 0)
        return violate(t, CH, "server_name changed after HelloRetryRequest");
    if (!f.offered13)
        return violate(t, CH, "second ClientHello does not offer TLS 1.3");
    if (f.early_data)
        return violate(t, CH, "early_data after HelloRetryRequest");
    return 0;
}

/* ---- ServerHello ------------------------------------------------------ */

#define SH "tls-server-hello"

static bool list_has16(const rd *list, unsigned v)
{
    for (size_t i = 0; i + 1 < list->n; i += 2)
        if (((unsigned)list->p[i] << 8 | list->p[i + 1]) == v)
            return true;
    return false;
}

/* Checks the ServerHello's extensions; *selected gets supported_versions'
 * value, or stays 0 without that extension. */
static int sh_extensions(tls_classify *t, rd *exts, const ch_view *cv, bool hrr, unsigned *selected)
{
    uint8_t offered[8192], seen[8192];
    memset(offered, 0, sizeof(offered));
    memset(seen, 0, sizeof(seen));
    rd ce = cv->exts, e, v;
    unsigned type, x;
    while (rd_u16(&ce, &type) && rd_vec(&ce, 2, &e))
        bit_test_set(offered, type);
    while (rd_left(exts)) {
        size_t at = rd_at(exts);
        if (!rd_u16(exts, &type) || !rd_vec(exts, 2, &e))
            return violate(t, SH, "extension at %zu overruns the extensions block", at);
        if (bit_test_set(seen, type))
            return violate(t, SH, "duplicate extension 0x%04x at %zu", type, at);
        bool ok = bit_test(offered, type) || (hrr && type == EXT_COOKIE) ||
                  (type == EXT_RENEGOTIATION_INFO &&
                   list_has16(&cv->ciphers, CS_EMPTY_RENEGOTIATION_INFO_SCSV));
        if (!ok)
            return violate(t, SH, "extension 0x%04x was not offered", type);
        switch (type) {
        case EXT_SUPPORTED_VERSIONS:
            if (!rd_u16(&e, selected) || rd_left(&e) || *selected == 0)
                return violate(t, SH, "malformed supported_versions at %zu", at);
            break;
        case EXT_KEY_SHARE:
            if (!rd_u16(&e, &x) || (!hrr && (!rd_vec(&e, 2, &v) || v.n == 0)) || rd_left(&e))
                return violate(t, SH, "malformed key_share at %zu", at);
            break;
        case EXT_PRE_SHARED_KEY:
            if (!rd_u16(&e, &x) || rd_left(&e))
                return violate(t, SH, "malformed pre_shared_key at %zu", at);
            break;
        case EXT_COOKIE:
            if (!rd_vec_all(&e, 2, 1, SIZE_MAX, 1, &v))
                return violate(t, SH, "malformed cookie at %zu", at);
            break;
        default: break;
        }
    }
    return 0;
}

/* Parses the ServerHello against the ClientHello it answers; sets *ev to the
 * event to raise. */
static int parse_server_hello(tls_classify *t, const uint8_t *b, size_t n, int *ev)
{
    rd r = {b, n, 0, 0}, random, sid, exts = {0};
    unsigned ver, cipher, comp, selected = 0;
    ch_view cv;
    *ev = CLS_EV_NONE;
    if (!t->hs || !t->hs->ch || !ch_walk(t->hs->ch, t->hs->ch_len, &cv))
        return violate(t, SH, "no ClientHello to answer");
    if (!rd_u16(&r, &ver))
        return violate(t, SH, "truncated at legacy_version");
    if (ver < 0x0300 || ver > 0x0303)
        return violate(t, SH, "legacy_version 0x%04x", ver);
    if (!rd_take(&r, 32, &random))
        return violate(t, SH, "truncated in random");
    if (!rd_vec(&r, 1, &sid))
        return violate(t, SH, "session_id overruns the message at %zu", rd_at(&r));
    if (sid.n > 32)
        return violate(t, SH, "session_id length %zu > 32", sid.n);
    if (!rd_u16(&r, &cipher) || !rd_u8(&r, &comp))
        return violate(t, SH, "truncated at cipher_suite");
    if (rd_left(&r)) {
        if (!rd_vec(&r, 2, &exts))
            return violate(t, SH, "extensions overrun the message at %zu", rd_at(&r));
        if (rd_left(&r))
            return violate(t, SH, "%zu bytes after the extensions", rd_left(&r));
    }
    bool hrr = memcmp(random.p, hrr_random, sizeof(hrr_random)) == 0;
    if (sh_extensions(t, &exts, &cv, hrr, &selected) != 0)
        return -1;
    if (cipher == CS_EMPTY_RENEGOTIATION_INFO_SCSV || cipher == CS_FALLBACK_SCSV ||
        is_grease(cipher) || !list_has16(&cv.ciphers, cipher))
        return violate(t, SH, "cipher_suite 0x%04x was not offered", cipher);
    if (!memchr(cv.compressions.p, (int)comp, cv.compressions.n))
        return violate(t, SH, "compression_method %u was not offered", comp);
    bool same_sid = sid.n == cv.session_id.n && memcmp(sid.p, cv.session_id.p, sid.n) == 0;

    if (selected) {
        if (selected != 0x0304 || !t->offered13)
            return violate(t, SH, "selected version 0x%04x was not offered", selected);
        if (ver != 0x0303)
            return violate(t, SH, "TLS 1.3 with legacy_version 0x%04x", ver);
        if (!same_sid)
            return violate(t, SH, "legacy_session_id_echo differs from the ClientHello's");
        if (comp != 0)
            return violate(t, SH, "TLS 1.3 with compression_method %u", comp);
        if (hrr) {
            if (t->phase == PH_SERVER_HELLO2)
                return violate(t, SH, "second HelloRetryRequest");
            t->info.hello_retry = true;
            t->info.cipher = (uint16_t)cipher;
            t->phase = PH_RETRY;
            return 0;
        }
        if (t->info.hello_retry && cipher != t->info.cipher)
            return violate(t, SH, "cipher_suite 0x%04x differs from the HelloRetryRequest's",
                           cipher);
        t->phase = PH_TLS13;
    } else {
        if (t->phase == PH_SERVER_HELLO2)
            return violate(t, SH, "TLS 0x%04x after a HelloRetryRequest", ver);
        if (ver > cv.version)
            return violate(t, SH, "version 0x%04x above the client's 0x%04x", ver, cv.version);
        t->info.resumed = sid.n > 0 && same_sid;
        /* RFC 5077 3.4: a server resuming from a ticket the client sent with
         * an empty session_id has no id to echo; whether it resumes shows only
         * in what follows (a Certificate, or a ticket / change_cipher_spec). */
        t->info.maybe_resumed = !t->info.resumed && t->ticket_no_sid;
        t->phase = PH_TLS12;
    }
    t->info.version = (uint16_t)(selected ? selected : ver);
    t->info.cipher = (uint16_t)cipher;
    *ev = TLS_EV_SERVER_HELLO;
    return 0;
}

/* ---- Certificate (TLS <= 1.2) ------------------------------------------ */

static int parse_certificate(tls_classify *t, const uint8_t *b, size_t n)
{
    rd r = {b, n, 0, 0}, list, cert;
    tls_hs *hs = t->hs;
    if (!rd_vec(&r, 3, &list) || rd_left(&r))
        return violate(t, "tls-certificate", "certificate_list length does not match the message");
    if (list.n == 0)
        return violate(t, "tls-certificate", "empty certificate_list");
    hs->nchain = 0;
    while (rd_left(&list)) {
        size_t at = rd_at(&list);
        if (!rd_vec(&list, 3, &cert))
            return violate(t, "tls-certificate", "certificate at %zu overruns the list", at);
        if (cert.n == 0)
            return violate(t, "tls-certificate", "empty certificate at %zu", at);
        if (hs->nchain == TLS_MAX_CHAIN)
            return violate(t, "tls-certificate", "more than %d certificates", TLS_MAX_CHAIN);
        hs->chain[hs->nchain] = cert.p;
        hs->chain_len[hs->nchain] = cert.n;
        hs->nchain++;
    }
    return 0;
}

/* ---- handshake message stream ----------------------------------------- */

/* TLS <= 1.2: the order of the server's plaintext messages after the
 * ServerHello. */
static int server_order(tls_classify *t, tls_dir *d, unsigned type, uint32_t len)
{
    static const struct {
        uint8_t type, rank;
    } order[] = {
        {HT_CERTIFICATE, RANK_CERT},        {HT_CERTIFICATE_STATUS, RANK_STATUS},
        {HT_SERVER_KEY_EXCHANGE, RANK_SKE}, {HT_CERTIFICATE_REQUEST, RANK_CREQ},
        {HT_SERVER_HELLO_DONE, RANK_DONE},  {HT_NEW_SESSION_TICKET, RANK_TICKET},
    };
    uint8_t rank = 0;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (order[i].type == type)
            rank = order[i].rank;
    if (rank == 0)
        return violate(t, "tls-unexpected-message", "server handshake type %u", type);
    if (t->info.maybe_resumed && d->rank == RANK_NONE && rank == RANK_TICKET)
        t->info.resumed = true; /* the ticket was accepted: abbreviated */
    if (t->info.resumed) {
        if (rank != RANK_TICKET || d->rank != RANK_NONE)
            return violate(t, "tls-unexpected-message",
                           "server handshake type %u in a resumed session", type);
    } else if (d->rank == RANK_NONE && rank != RANK_CERT) {
        return violate(t, "tls-no-certificate", "server handshake type %u before a Certificate",
                       type);
    } else if (rank <= d->rank || (rank == RANK_TICKET && d->rank != RANK_DONE)) {
        return violate(t, "tls-unexpected-message", "server handshake type %u out of order", type);
    }
    if (type == HT_SERVER_HELLO_DONE && len != 0)
        return violate(t, "tls-unexpected-message", "ServerHelloDone of %u bytes", len);
    d->rank = rank;
    return 0;
}

/* TLS <= 1.2: the order of the client's plaintext messages after the
 * ServerHello. */
static int client_order(tls_classify *t, tls_dir *d, unsigned type)
{
    uint8_t rank = type == HT_CERTIFICATE           ? RANK_CERT
                   : type == HT_CLIENT_KEY_EXCHANGE ? RANK_CKE
                   : type == HT_CERTIFICATE_VERIFY  ? RANK_CV
                                                    : 0;
    if (rank == 0 || t->info.resumed || rank <= d->rank || (rank == RANK_CV && d->rank != RANK_CKE))
        return violate(t, "tls-unexpected-message", "client handshake type %u%s", type,
                       t->info.resumed ? " in a resumed session" : "");
    d->rank = rank;
    return 0;
}

/* A handshake message header is complete: may it come now, and is it
 * reassembled? */
static int msg_start(tls_classify *t, cls_dir dir, unsigned type, uint32_t len)
{
    tls_dir *d = &t->dir[dir];
    bool keep = false;
    if (dir == CLS_C2S) {
        if (t->phase == PH_CLIENT_HELLO && type != HT_CLIENT_HELLO)
            return violate(t, CH, "first handshake message has type %u", type);
        if (t->phase == PH_CLIENT_HELLO || t->phase == PH_RETRY) {
            if (type != HT_CLIENT_HELLO)
                return violate(t, "tls-unexpected-message",
                               "handshake type %u after HelloRetryRequest", type);
            keep = true;
        } else if (t->phase == PH_TLS12) {
            if (client_order(t, d, type) != 0)
                return -1;
        } else {
            return violate(t, "tls-unexpected-message", "client handshake type %u", type);
        }
    } else {
        if (t->phase == PH_SERVER_HELLO || t->phase == PH_SERVER_HELLO2) {
            if (type != HT_SERVER_HELLO)
                return violate(t, "tls-unexpected-message",
                               "server handshake type %u before the ServerHello", type);
            keep = true;
        } else if (t->phase == PH_TLS12) {
            if (server_order(t, d, type, len) != 0)
                return -1;
            keep = type == HT_CERTIFICATE;
        } else {
            return violate(t, "tls-unexpected-message", "server handshake type %u", type);
        }
    }
    if (len > TLS_MAX_HANDSHAKE)
        return violate(t, "tls-handshake-too-large", "type %u of %u bytes > %u", type,
                       (unsigned)len, TLS_MAX_HANDSHAKE);
    d->hs_collect = keep;
    if (!keep)
        return 0;
    tls_hs *hs = hs_get(t);
    if (!hs || hs->msg)
        return violate(t, "tls-no-memory", "handshake context");
    hs->msg_len = len;
    hs->msg_have = 0;
    hs->msg_cap = 0;
    return 0;
}

/* Appends message body bytes, growing the buffer as they arrive so a
 * peer that announces a large message and stalls costs little. */
static int collect(tls_classify *t, const uint8_t *p, size_t k)
{
    tls_hs *hs = t->hs;
    if (hs->msg_have + k > hs->msg_cap) {
        size_t cap = hs->msg_cap ? (size_t)hs->msg_cap * 2 : TLS_HS_CHUNK;
        if (cap < hs->msg_have + k)
            cap = hs->msg_have + k;
        if (cap > hs->msg_len)
            cap = hs->msg_len;
        uint8_t *nb = realloc(hs->msg, cap);
        if (!nb)
            return violate(t, "tls-no-memory", "%zu-byte handshake message", cap);
        hs->msg = nb;
        hs->msg_cap = (uint32_t)cap;
    }
    memcpy(hs->msg + hs->msg_have, p, k);
    hs->msg_have += (uint32_t)k;
    return 0;
}

/* A message is complete. Returns -1 (violation), 0, or 1 with t->event set. */
static int msg_end(tls_classify *t, cls_dir dir)
{
    tls_dir *d = &t->dir[dir];
    if (!d->hs_collect)
        return 0;
    d->hs_collect = false;
    tls_hs *hs = t->hs;
    uint8_t *body = hs->msg;
    uint32_t n = hs->msg_len;
    hs->msg = NULL;
    hs->msg_cap = 0;
    int ev = CLS_EV_NONE;
    int rc;
    if (dir == CLS_C2S) {
        bool second = t->phase == PH_RETRY;
        rc = parse_client_hello(t, body, n, second);
        if (rc == 0) {
            free(hs->ch);
            hs->ch = body;
            hs->ch_len = n;
            body = NULL;
            t->phase = second ? PH_SERVER_HELLO2 : PH_SERVER_HELLO;
            ev = second ? CLS_EV_NONE : TLS_EV_CLIENT_HELLO;
        }
    } else if (t->phase != PH_TLS12) {
        rc = parse_server_hello(t, body, n, &ev);
        if (rc == 0) {
            free(hs->ch);
            hs->ch = NULL;
        }
    } else {
        rc = parse_certificate(t, body, n);
        if (rc == 0) {
            hs->cert = body;
            hs->cert_len = n;
            body = NULL;
            ev = TLS_EV_CERTIFICATE;
        }
    }
    free(body);
    if (rc != 0)
        return -1;
    hs_trim(t);
    t->event = (uint8_t)ev;
    return ev != CLS_EV_NONE;
}

/* Plaintext handshake bytes of one record. Stops after a message that raises
 * an event. Returns -1, 0 or 1 (event); *used says how far it read. */
static int hs_feed(tls_classify *t, cls_dir dir, const uint8_t *p, size_t n, size_t *used)
{
    tls_dir *d = &t->dir[dir];
    size_t i = 0;
    int rc = 0;
    while (i < n && rc == 0) {
        if (d->hs_hdr_have < 4) {
            size_t k = 4u - d->hs_hdr_have;
            if (k > n - i)
                k = n - i;
            memcpy(d->hs_hdr + d->hs_hdr_have, p + i, k);
            d->hs_hdr_have = (uint8_t)(d->hs_hdr_have + k);
            i += k;
            if (d->hs_hdr_have < 4)
                break;
            d->hs_left = get24(d->hs_hdr + 1);
            if (msg_start(t, dir, d->hs_hdr[0], d->hs_left) != 0) {
                rc = -1;
                break;
            }
        } else {
            size_t k = d->hs_left;
            if (k > n - i)
                k = n - i;
            if (d->hs_collect && collect(t, p + i, k) != 0) {
                rc = -1;
                break;
            }
            i += k;
            d->hs_left -= (uint32_t)k;
        }
        if (d->hs_left == 0) {
            d->hs_hdr_have = 0;
            rc = msg_end(t, dir);
        }
    }
    *used = i;
    return rc;
}

/* ---- records ------------------------------------------------------------ */

static int ccs_check(tls_classify *t, cls_dir dir)
{
    tls_dir *d = &t->dir[dir];
    if (t->phase == PH_TLS12) {
        if (dir == CLS_C2S) {
            if (t->info.resumed ? d->rank != RANK_NONE : d->rank < RANK_CKE)
                return violate(t, "tls-unexpected-message",
                               "client change_cipher_spec before its key exchange");
        } else if (t->info.resumed || (t->info.maybe_resumed && d->rank == RANK_NONE)) {
            if (d->rank != RANK_NONE && d->rank != RANK_TICKET)
                return violate(t, "tls-unexpected-message", "server change_cipher_spec");
            t->info.resumed = true;
        } else if (d->rank == RANK_NONE) {
            return violate(t, "tls-no-certificate",
                           "server change_cipher_spec without a Certificate or resumption");
        } else if (d->rank < RANK_DONE) {
            return violate(t, "tls-unexpected-message",
                           "server change_cipher_spec before ServerHelloDone");
        }
        return 0;
    }
    /* TLS 1.3 middlebox compatibility: one dummy record per side, from the
     * client after a ClientHello offering 1.3, from the server after its
     * first hello. */
    bool ok = dir == CLS_C2S ? t->offered13 : t->phase != PH_SERVER_HELLO;
    if (!ok || d->ccs > 0)
        return violate(t, "tls-unexpected-message", "%s change_cipher_spec",
                       d->ccs > 0 ? "second" : dir_name(dir));
    return 0;
}

static bool appdata_allowed(const tls_classify *t, cls_dir dir)
{
    if (t->phase == PH_TLS13)
        return true;
    /* 0-RTT data follows the first ClientHello until the client hears the
     * server's answer. */
    return dir == CLS_C2S && t->info.early_data &&
           (t->phase == PH_SERVER_HELLO || t->phase == PH_RETRY);
}

/* A record header is complete: check it and decide how to read the body. */
static int record_start(tls_classify *t, cls_dir dir)
{
    tls_dir *d = &t->dir[dir];
    const uint8_t *h = d->hdr;
    unsigned type = h[0], ver = (unsigned)h[1] << 8 | h[2], len = (unsigned)h[3] << 8 | h[4];
    bool first = !d->started;
    d->started = true;
    if (type < CT_CCS || type > CT_APPDATA) {
        if (first && dir == CLS_C2S && (h[0] & 0x80) && h[2] == 1)
            return violate(t, "tls-record-type", "SSLv2-format ClientHello");
        if (type == CT_HEARTBEAT)
            return violate(t, "tls-record-type", "heartbeat (24)");
        return violate(t, "tls-record-type", "%u", type);
    }
    if (h[1] != 3 || h[2] > 4)
        return violate(t, "tls-record-version", "0x%04x", ver);
    if (len > TLS_MAX_RECORD)
        return violate(t, "tls-record-length", "%u > %u", len, TLS_MAX_RECORD);
    if (len == 0 && type != CT_APPDATA)
        return violate(t, "tls-record-length", "empty %s record", ct_name(type));
    d->rec_left = (uint16_t)len;
    d->small_have = 0;
    d->kind = RK_OPAQUE;
    if (d->encrypted)
        return 0; /* TLS <= 1.2 after change_cipher_spec: framing only */

    if (type != CT_HANDSHAKE && d->hs_hdr_have > 0)
        return violate(t, "tls-unexpected-message", "%s record inside a handshake message",
                       ct_name(type));
    if (t->phase == PH_CLIENT_HELLO) {
        if (dir == CLS_S2C)
            return violate(t, "tls-unexpected-message", "server sent data before the ClientHello");
        if (type != CT_HANDSHAKE)
            return violate(t, "tls-not-handshake", "%s record", ct_name(type));
    }
    if (type == CT_APPDATA) {
        if (!appdata_allowed(t, dir))
            return violate(t, "tls-unexpected-message", "%s application data too early",
                           dir_name(dir));
        if (len == 0 || len > TLS13_MAX_CIPHERTEXT)
            return violate(t, "tls-record-length", "%u-byte TLS 1.3 application_data", len);
        return 0;
    }
    if (len > TLS_MAX_PLAIN)
        return violate(t, "tls-record-length", "%u > %u in a plaintext %s record", len,
                       TLS_MAX_PLAIN, ct_name(type));
    switch (type) {
    case CT_HANDSHAKE: {
        bool ok = dir == CLS_C2S
                      ? t->phase == PH_CLIENT_HELLO || t->phase == PH_RETRY || t->phase == PH_TLS12
                      : t->phase == PH_SERVER_HELLO || t->phase == PH_SERVER_HELLO2 ||
                            t->phase == PH_TLS12;
        if (!ok)
            return violate(t, "tls-unexpected-message", "plaintext handshake record from the %s%s",
                           dir_name(dir),
                           t->phase == PH_TLS13 ? " after a TLS 1.3 ServerHello" : "");
        d->kind = RK_HANDSHAKE;
        return 0;
    }
    case CT_ALERT:
        if (len != 2)
            return violate(t, "tls-alert", "%u-byte plaintext alert record", len);
        d->kind = RK_ALERT;
        return 0;
    default: /* CT_CCS */
        if (len != 1)
            return violate(t, "tls-change-cipher-spec", "%u-byte record", len);
        if (ccs_check(t, dir) != 0)
            return -1;
        d->kind = RK_CCS;
        return 0;
    }
}

/* Body bytes of a plaintext alert or change_cipher_spec record. */
static int small_feed(tls_classify *t, cls_dir dir, const uint8_t *p, size_t n)
{
    tls_dir *d = &t->dir[dir];
    memcpy(d->small + d->small_have, p, n); /* n <= rec_left <= 2 - small_have */
    d->small_have = (uint8_t)(d->small_have + n);
    if (d->kind == RK_ALERT) {
        if (d->small_have == 2 && d->small[0] != 1 && d->small[0] != 2)
            return violate(t, "tls-alert", "level %u", d->small[0]);
        return 0;
    }
    if (d->small_have == 1) {
        if (d->small[0] != 1)
            return violate(t, "tls-change-cipher-spec", "value %u", d->small[0]);
        d->ccs++;
        if (t->phase == PH_TLS12)
            d->encrypted = true;
    }
    return 0;
}

/* Whether everything read so far in this direction conforms. */
static bool at_frontier(const tls_dir *d)
{
    if (d->hs_hdr_have > 0 && (d->hs_hdr_have < 4 || d->hs_collect))
        return false;
    if (d->hdr_have == 0)
        return true;
    if (d->hdr_have < 5)
        return false;
    if (d->kind == RK_ALERT || d->kind == RK_CCS)
        return d->small_have == 0;
    return true;
}

/* ---- API ---------------------------------------------------------------- */

size_t tls_classify_size(void)
{
    return sizeof(tls_classify);
}

void tls_classify_init(tls_classify *t)
{
    memset(t, 0, sizeof(*t));
    t->phase = PH_CLIENT_HELLO;
}

void tls_classify_release(tls_classify *t)
{
    hs_free(t);
    free(t->reason_buf);
    t->reason_buf = NULL;
    t->reason = NULL;
}

cls_verdict tls_classify_feed(tls_classify *t, cls_dir dir, const uint8_t *data, size_t len,
                              size_t *consumed)
{
    *consumed = 0;
    if (t->dead)
        return CLS_VIOLATES;
    t->event = CLS_EV_NONE;
    if (t->hs && t->hs->cert) { /* the chain lives until the next feed */
        free(t->hs->cert);
        t->hs->cert = NULL;
        t->hs->nchain = 0;
        hs_trim(t);
    }
    if (dir != CLS_C2S && dir != CLS_S2C) {
        violate(t, "tls-unexpected-message", "direction %d", (int)dir);
        return CLS_VIOLATES;
    }
    if (len == 0)
        return CLS_NEED_MORE;
    tls_dir *d = &t->dir[dir];
    size_t pos = 0;
    while (pos < len) {
        if (d->hdr_have < 5) {
            size_t k = 5u - d->hdr_have;
            if (k > len - pos)
                k = len - pos;
            memcpy(d->hdr + d->hdr_have, data + pos, k);
            d->hdr_have = (uint8_t)(d->hdr_have + k);
            pos += k;
            if (d->hdr_have < 5)
                break;
            if (record_start(t, dir) != 0) {
                *consumed = pos;
                return CLS_VIOLATES;
            }
            if (d->rec_left == 0)
                d->hdr_have = 0;
            continue;
        }
        size_t avail = len - pos;
        if (avail > d->rec_left)
            avail = d->rec_left;
        size_t used = avail;
        int rc = 0;
        if (d->kind == RK_HANDSHAKE)
            rc = hs_feed(t, dir, data + pos, avail, &used);
        else if (d->kind != RK_OPAQUE)
            rc = small_feed(t, dir, data + pos, avail);
        pos += used;
        d->rec_left = (uint16_t)(d->rec_left - used);
        if (rc < 0) {
            *consumed = pos;
            return CLS_VIOLATES;
        }
        if (d->rec_left == 0)
            d->hdr_have = 0;
        if (rc > 0) {
            *consumed = pos;
            return CLS_CONFORMS;
        }
    }
    *consumed = len;
    return at_frontier(d) ? CLS_CONFORMS : CLS_NEED_MORE;
}

cls_verdict tls_classify_finish(tls_classify *t, cls_dir dir)
{
    if (t->dead)
        return CLS_VIOLATES;
    if (dir != CLS_C2S && dir != CLS_S2C)
        return CLS_CONFORMS;
    const tls_dir *d = &t->dir[dir];
    if (d->hdr_have > 0) {
        violate(t, "tls-truncated", "%s stream ended inside a record", dir_name(dir));
        return CLS_VIOLATES;
    }
    if (d->hs_hdr_have > 0) {
        violate(t, "tls-truncated", "%s stream ended inside a handshake message", dir_name(dir));
        return CLS_VIOLATES;
    }
    return CLS_CONFORMS;
}

int tls_classify_event(const tls_classify *t)
{
    return t->event;
}

const char *tls_classify_reason(const tls_classify *t)
{
    return t->dead ? t->reason : NULL;
}

const tls_info *tls_classify_info(const tls_classify *t)
{
    return &t->info;
}

size_t tls_classify_heap(const tls_classify *t)
{
    size_t n = t->reason_buf ? strlen(t->reason_buf) + 1 : 0;
    if (t->hs)
        n += sizeof(*t->hs) + t->hs->msg_cap + t->hs->ch_len + (t->hs->cert ? t->hs->cert_len : 0);
    return n;
}

size_t tls_classify_chain(const tls_classify *t, const uint8_t *const **der, const size_t **der_len)
{
    if (!t->hs || !t->hs->cert || t->hs->nchain == 0) {
        *der = NULL;
        *der_len = NULL;
        return 0;
    }
    *der = t->hs->chain;
    *der_len = t->hs->chain_len;
    return t->hs->nchain;
}

/* ---- cls_ops ------------------------------------------------------------- */

CLS_DEFINE_OPS(tls);
