/* http_classify.c - strict HTTP/1.x (RFC 9112) conformance for both directions of one
 * connection: every request and response on it, pipelining, chunked framing, and the request
 * and response facts the proxy's policy checks need. Pure: no I/O; the only memory beyond the
 * state is one buffer per direction while a head (or a trailer section) is read. The contract
 * and the reason strings are in http_classify.h. */
#include "http_classify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Character classes (table below, generated from the RFC 9110/9112/3986 grammars). */
#define CC_PLAIN 0x01 /* needs no attention while scanning a head: HTAB SP VCHAR obs-text */
#define CC_TCHAR 0x02 /* token */
#define CC_TARGET                                                                                  \
    0x04 /* path/query of a request-target: pchar / "/" / "?" plus the WHATWG                      \
            leniency [ ] { } | ^ \ ` ('%' is checked apart) */
#define CC_HEX 0x08
#define CC_REG 0x10 /* unreserved / sub-delims: reg-name without pct-encoded */
#define CC_DIGIT 0x20
#define CC_QDTEXT 0x40 /* qdtext of a quoted-string */
#define CC_ATTR 0x80   /* attr-char of an RFC 8187 ext-value */

static const uint8_t ctab[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x41, 0xd7, 0x01, 0xc3, 0xd7, 0x47, 0xd7, 0x57, 0x55, 0x55, 0x57, 0xd7, 0x55, 0xd7, 0xd7, 0x45,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x45, 0x55, 0x41, 0x55, 0x41, 0x45,
    0x45, 0xdf, 0xdf, 0xdf, 0xdf, 0xdf, 0xdf, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7,
    0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0x45, 0x05, 0x45, 0xc7, 0xd7,
    0xc7, 0xdf, 0xdf, 0xdf, 0xdf, 0xdf, 0xdf, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7,
    0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0xd7, 0x45, 0xc7, 0x45, 0xd7, 0x00,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
};

static bool is_tchar(uint8_t c)
{
    return (ctab[c] & CC_TCHAR) != 0;
}

static bool is_hex(uint8_t c)
{
    return (ctab[c] & CC_HEX) != 0;
}

static bool is_digit(uint8_t c)
{
    return (ctab[c] & CC_DIGIT) != 0;
}

static bool is_ws(uint8_t c)
{
    return c == ' ' || c == '\t';
}

static int hex_value(uint8_t c)
{
    if (c <= '9')
        return c - '0';
    return (c | 0x20) - 'a' + 10;
}

static uint8_t lower(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c | 0x20) : c;
}

/* ASCII case-insensitive comparison of p[0..n) with the lower-case NUL-terminated s. */
static bool name_is(const uint8_t *p, size_t n, const char *s)
{
    size_t i = 0;
    for (; i < n && s[i]; i++)
        if (lower(p[i]) != (uint8_t)s[i])
            return false;
    return i == n && s[i] == '\0';
}

/* ---- state ----------------------------------------------------------------------------- */

enum {
    HK_REQUEST = 0,
    HK_RESPONSE = 1,
    HK_TRAILER = 2,
};

/* A head (or trailer section) being read, then the facts of its event. While it is read the
 * raw bytes sit in data[0..len), located by offsets (the buffer moves when it grows); once it
 * is parsed, data holds only the NUL-terminated strings the info points to (head_compact). */
typedef struct http_head {
    union {
        http_request_info req;
        http_response_info resp;
    } info;
    uint32_t len;   /* bytes buffered */
    uint32_t cap;   /* room in data */
    uint32_t line;  /* where the line being read starts */
    uint32_t start; /* the start line */
    uint32_t start_len;
    uint32_t host_off, host_len;   /* Host value (trimmed) */
    uint32_t ctype_off, ctype_len; /* Content-Type value */
    uint32_t cdisp_off, cdisp_len; /* Content-Disposition value */
    int64_t cl;                    /* Content-Length value, -1 when none */
    uint16_t nfields;
    uint16_t status;
    uint16_t method_len;
    uint8_t kind;     /* HK_* */
    uint8_t version;  /* 10 or 11 */
    uint8_t started;  /* the start line has been read */
    uint8_t skipped;  /* the one empty line before a request-line was seen */
    uint8_t reported; /* its event has been returned */
    uint8_t nhost, ncl, nctype, ncdisp;
    uint8_t te;   /* TE_* */
    uint8_t conn; /* CONN_* */
    uint8_t nmz;  /* first body bytes seen while the response event waits */
    uint8_t mz[2];
    uint8_t data[];
} http_head;

#define TE_SEEN 0x01
#define TE_CHUNKED 0x02 /* chunked is the last coding (anything after it is a violation) */

#define CONN_CLOSE 0x01
#define CONN_KEEP_ALIVE 0x02

/* Phases of one direction. */
enum {
    PH_HEAD = 0,   /* between messages, or reading a head */
    PH_BODY_CL,    /* Content-Length body: remaining bytes left */
    PH_BODY_CHUNK, /* chunked body: sub-state in sub */
    PH_BODY_CLOSE, /* response body that the server's close ends */
    PH_CLOSED,     /* the connection ends after the last message: no byte may follow */
    PH_TUNNEL,     /* a CONNECT succeeded: the bytes are not HTTP any more */
};

/* Chunked-body sub-states (RFC 9112 7.1). */
enum {
    CK_SIZE0,    /* first hex digit of a chunk-size */
    CK_SIZE,     /* more digits, BWS, ';' or CR */
    CK_BWS,      /* BWS that must lead to ';' */
    CK_NAME0,    /* after ';', before the extension name */
    CK_NAME,     /* in the name: tchar, BWS, '=', ';' or CR */
    CK_NAME_BWS, /* BWS after the name: '=' or ';' */
    CK_VAL0,     /* after '=', before the value */
    CK_TOKEN,    /* in a token value */
    CK_QS,       /* in a quoted-string value */
    CK_QS_ESC,   /* after a backslash in it */
    CK_QS_END,   /* after its closing quote */
    CK_LF,       /* the chunk line's CR was seen */
    CK_DATA,     /* chunk data: remaining bytes */
    CK_DATA_CR,  /* the CRLF after the data */
    CK_DATA_LF,
    CK_TRAILER0, /* after the last chunk: CR (the end) or a trailer field */
    CK_END_LF,   /* the final CR was seen */
    CK_TRAILER,  /* trailer fields, read into the head buffer */
};

#define DF_PENDING 0x01  /* the response head event waits for two body bytes */
#define DF_KA 0x02       /* the connection persists after this message */
#define DF_FINISHED 0x04 /* finish() was called on this direction */

typedef struct http_dir {
    http_head *head;
    uint64_t remaining; /* body or chunk bytes left; the chunk-size being read */
    uint32_t line_len;  /* bytes of the chunk line being read */
    uint8_t phase;
    uint8_t sub;
    uint8_t flags;
} http_dir;

/* Flags of an outstanding request, for the framing of its response. */
#define Q_HEAD 0x01
#define Q_CONNECT 0x02 /* CONNECT whose final response head has not come yet */
#define Q_V10 0x04
#define Q_CLOSE 0x08 /* the request ended the connection */

struct http_classify {
    http_dir dir[2];
    uint8_t queue[HTTP_MAX_PIPELINE];
    uint8_t qhead, qcount;
    uint8_t dead;
    uint8_t event;
    char reason[96];
};

/* Most heads fit in the first buffer; it doubles up to HTTP_MAX_HEAD. */
#define HEAD_INITIAL 1024

__attribute__((format(printf, 2, 3))) static cls_verdict fail(http_classify *h, const char *fmt,
                                                              ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->reason, sizeof(h->reason), fmt, ap);
    va_end(ap);
    h->dead = 1;
    h->event = CLS_EV_NONE;
    return CLS_VIOLATES;
}

/* Copies up to max bytes of p as printable text for a reason's detail. */
static const char *show(const uint8_t *p, size_t n, char *out, size_t max)
{
    size_t k = 0;
    for (; k < n && k < max; k++)
        out[k] = p[k] > 0x20 && p[k] < 0x7f ? (char)p[k] : '?';
    out[k] = '\0';
    return out;
}

static void head_free(http_dir *d)
{
    free(d->head);
    d->head = NULL;
}

static http_head *head_new(http_dir *d, uint8_t kind)
{
    http_head *hd = malloc(sizeof(*hd) + HEAD_INITIAL);
    if (!hd)
        return NULL;
    memset(hd, 0, sizeof(*hd));
    hd->cap = HEAD_INITIAL;
    hd->kind = kind;
    hd->cl = -1;
    d->head = hd;
    return hd;
}

/* Makes room for need bytes in d->head's data; 0 or -1. The head may move. */
static int head_reserve(http_dir *d, size_t need)
{
    http_head *hd = d->head;
    if (need <= hd->cap)
        return 0;
    size_t cap = (size_t)hd->cap * 2;
    if (cap < need)
        cap = need;
    http_head *nh = realloc(hd, sizeof(*hd) + cap);
    if (!nh)
        return -1;
    nh->cap = (uint32_t)cap;
    d->head = nh;
    return 0;
}

static int head_append(http_dir *d, const uint8_t *p, size_t n)
{
    if (n == 0)
        return 0;
    if (head_reserve(d, (size_t)d->head->len + n) != 0)
        return -1;
    memcpy(d->head->data + d->head->len, p, n);
    d->head->len += (uint32_t)n;
    return 0;
}

/* Moves the n bytes at data[off] (a head's facts) to the front and gives the rest of the
 * buffer back: after its event a head keeps only what its info points to. */
static const char *head_compact(http_dir *d, size_t off, size_t n)
{
    http_head *hd = d->head;
    memmove(hd->data, hd->data + off, n);
    hd->len = (uint32_t)n;
    http_head *nh = realloc(hd, sizeof(*hd) + n);
    if (nh) {
        nh->cap = (uint32_t)n;
        d->head = nh;
    }
    return (const char *)d->head->data;
}

/* ---- start lines ------------------------------------------------------------------------ */

/* Checks the beginning of a start line that may not be complete yet, so junk is refused on
 * its first bytes. A complete line is checked with the same function first, so the reason
 * does not depend on how the bytes were split. */
static int start_prefix(http_classify *h, const http_head *hd, const uint8_t *p, size_t n)
{
    if (hd->kind == HK_REQUEST) {
        for (size_t i = 0; i < n && i < 32; i++) {
            if (p[i] == ' ') {
                if (i == 0) {
                    fail(h, "http-request-line: empty method");
                    return -1;
                }
                break;
            }
            if (!is_tchar(p[i])) {
                fail(h, "http-request-line: method is not a token (0x%02x)", p[i]);
                return -1;
            }
        }
        return 0;
    }
    size_t m = n < 5 ? n : 5;
    if (memcmp(p, "HTTP/", m) != 0) {
        fail(h, "http-status-line: does not start with HTTP/");
        return -1;
    }
    return 0;
}

static int version_of(const uint8_t *p, size_t n)
{
    if (n != 8 || memcmp(p, "HTTP/1.", 7) != 0)
        return 0;
    return p[7] == '0' ? 10 : p[7] == '1' ? 11 : 0;
}

typedef struct authority {
    size_t host_off, host_len; /* without brackets */
    int port;                  /* -1 when not named */
} authority;

static bool ipv4_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= n || s[i] != '.')
                return false;
            i++;
        }
        size_t b = i;
        unsigned v = 0;
        while (i < n && is_digit(s[i]) && i - b < 3)
            v = v * 10 + (unsigned)(s[i++] - '0');
        if (i == b || v > 255 || (i - b > 1 && s[b] == '0'))
            return false;
    }
    return i == n;
}

/* RFC 3986 IPv6address (no zone). */
static bool ipv6_ok(const uint8_t *s, size_t n)
{
    int groups = 0;
    bool dcolon = false;
    size_t i = 0;
    if (n >= 2 && s[0] == ':' && s[1] == ':') {
        dcolon = true;
        i = 2;
    } else if (n > 0 && s[0] == ':') {
        return false;
    }
    while (i < n) {
        size_t j = i;
        while (j < n && is_hex(s[j]) && j - i < 4)
            j++;
        if (j == i)
            return false;
        if (j < n && (s[j] == '.' || is_hex(s[j]))) {
            /* only a dotted IPv4 may close the address */
            if (!ipv4_ok(s + i, n - i))
                return false;
            groups += 2;
            i = n;
            break;
        }
        groups++;
        i = j;
        if (i == n)
            break;
        if (s[i] != ':')
            return false;
        i++;
        if (i < n && s[i] == ':') {
            if (dcolon)
                return false;
            dcolon = true;
            i++;
        } else if (i == n) {
            return false;
        }
    }
    return dcolon ? groups <= 7 : groups == 8;
}

/* IP-literal contents: IPv6address / IPvFuture. */
static bool ip_literal_ok(const uint8_t *s, size_t n)
{
    if (n > 0 && (s[0] == 'v' || s[0] == 'V')) {
        size_t i = 1;
        while (i < n && is_hex(s[i]))
            i++;
        if (i == 1 || i >= n || s[i] != '.' || i + 1 == n)
            return false;
        for (i++; i < n; i++)
            if (!(ctab[s[i]] & CC_REG) && s[i] != ':')
                return false;
        return true;
    }
    return ipv6_ok(s, n);
}

/* uri-host [ ":" port ]. NULL, or what is wrong. */
static const char *authority_parse(const uint8_t *a, size_t n, authority *au)
{
    size_t i = 0;
    au->port = -1;
    if (n == 0)
        return "empty";
    if (memchr(a, '@', n))
        return "userinfo";
    if (a[0] == '[') {
        const uint8_t *rb = memchr(a, ']', n);
        if (!rb)
            return "unterminated IP literal";
        size_t l = (size_t)(rb - a) - 1;
        if (!ip_literal_ok(a + 1, l))
            return "bad IP literal";
        au->host_off = 1;
        au->host_len = l;
        i = l + 2;
    } else {
        while (i < n && a[i] != ':') {
            if (a[i] == '%') {
                if (i + 2 >= n || !is_hex(a[i + 1]) || !is_hex(a[i + 2]))
                    return "bad percent-encoding";
                i += 3;
                continue;
            }
            if (!(ctab[a[i]] & CC_REG))
                return "bad host character";
            i++;
        }
        if (i == 0)
            return "empty host";
        au->host_off = 0;
        au->host_len = i;
    }
    if (i == n)
        return NULL;
    if (a[i] != ':')
        return "junk after the host";
    i++;
    if (i == n)
        return NULL; /* an empty port is as if none were named */
    unsigned port = 0;
    for (; i < n; i++) {
        if (!is_digit(a[i]))
            return "bad port";
        port = port * 10 + (unsigned)(a[i] - '0');
        if (port > 65535)
            return "port out of range";
    }
    if (port == 0)
        return "port 0";
    au->port = (int)port;
    return NULL;
}

/* Path and query characters of a request-target. */
static const char *target_chars(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '%') {
            if (i + 2 >= n || !is_hex(p[i + 1]) || !is_hex(p[i + 2]))
                return "bad percent-encoding";
            i += 2;
            continue;
        }
        if (!(ctab[c] & CC_TARGET))
            return "invalid character";
    }
    return NULL;
}

typedef struct target {
    http_target_form form;
    authority au;    /* offsets into the target (absolute and authority form) */
    size_t path_off; /* path (origin and absolute form) */
    size_t path_len;
    size_t query_off; /* '?' and the query, up to the end */
} target;

static const char *target_parse(const uint8_t *t, size_t n, const uint8_t *m, size_t mlen,
                                target *tg)
{
    bool connect = mlen == 7 && memcmp(m, "CONNECT", 7) == 0;
    bool options = mlen == 7 && memcmp(m, "OPTIONS", 7) == 0;
    memset(tg, 0, sizeof(*tg));
    tg->au.port = -1;
    if (connect) {
        tg->form = HTTP_FORM_AUTHORITY;
        const char *why = authority_parse(t, n, &tg->au);
        if (why)
            return why;
        if (tg->au.port < 0)
            return "CONNECT needs host:port";
        return NULL;
    }
    if (n == 1 && t[0] == '*') {
        if (!options)
            return "the asterisk form is only for OPTIONS";
        tg->form = HTTP_FORM_ASTERISK;
        return NULL;
    }
    size_t rest = 0;
    if (t[0] == '/') {
        tg->form = HTTP_FORM_ORIGIN;
    } else {
        tg->form = HTTP_FORM_ABSOLUTE;
        if (n < 7 || !name_is(t, 7, "http://")) {
            size_t s = 0;
            while (s < n && (ctab[t[s]] & CC_REG) && t[s] != ':')
                s++;
            return s < n && t[s] == ':' ? "scheme is not http" : "not a request-target";
        }
        size_t a = 7, e = 7;
        while (e < n && t[e] != '/' && t[e] != '?')
            e++;
        const char *why = authority_parse(t + a, e - a, &tg->au);
        if (why)
            return why;
        tg->au.host_off += a;
        rest = e;
    }
    const char *why = target_chars(t + rest, n - rest);
    if (why)
        return why;
    const uint8_t *q = memchr(t + rest, '?', n - rest);
    tg->path_off = rest;
    tg->query_off = q ? (size_t)(q - t) : n;
    tg->path_len = tg->query_off - rest;
    return NULL;
}

static int request_line(http_classify *h, http_head *hd, const uint8_t *p, size_t n)
{
    char tmp[24];
    if (start_prefix(h, hd, p, n) != 0)
        return -1;
    const uint8_t *sp1 = memchr(p, ' ', n);
    if (!sp1) {
        fail(h, "http-request-line: no SP after the method");
        return -1;
    }
    size_t mlen = (size_t)(sp1 - p);
    for (size_t i = 0; i < mlen; i++)
        if (!is_tchar(p[i])) {
            fail(h, "http-request-line: method is not a token (0x%02x)", p[i]);
            return -1;
        }
    size_t sp2 = n;
    while (p[sp2 - 1] != ' ')
        sp2--;
    sp2--;
    if (p + sp2 == sp1) {
        fail(h, "http-request-line: no HTTP-version");
        return -1;
    }
    if (memchr(sp1 + 1, ' ', sp2 - mlen - 1)) {
        fail(h, "http-request-line: more than two SP");
        return -1;
    }
    int v = version_of(p + sp2 + 1, n - sp2 - 1);
    if (!v) {
        fail(h, "http-version: '%s'", show(p + sp2 + 1, n - sp2 - 1, tmp, 16));
        return -1;
    }
    target tg;
    const char *why = target_parse(sp1 + 1, sp2 - mlen - 1, p, mlen, &tg);
    if (why) {
        fail(h, "http-target: %s", why);
        return -1;
    }
    hd->version = (uint8_t)v;
    hd->method_len = (uint16_t)mlen;
    return 0;
}

static int status_line(http_classify *h, http_head *hd, const uint8_t *p, size_t n)
{
    char tmp[24];
    if (start_prefix(h, hd, p, n) != 0)
        return -1;
    const uint8_t *sp = memchr(p, ' ', n);
    size_t vlen = sp ? (size_t)(sp - p) : n;
    int v = version_of(p, vlen);
    if (!v) {
        fail(h, "http-version: '%s'", show(p, vlen, tmp, 16));
        return -1;
    }
    if (n < 12 || !is_digit(p[9]) || !is_digit(p[10]) || !is_digit(p[11]) || p[9] < '1' ||
        p[9] > '5') {
        fail(h, "http-status-line: bad status code");
        return -1;
    }
    if (n == 12 || p[12] != ' ') {
        fail(h, "http-status-line: no SP after the status code");
        return -1;
    }
    /* reason-phrase: HTAB / SP / VCHAR / obs-text, which the head scan already ensured */
    hd->version = (uint8_t)v;
    hd->status = (uint16_t)((p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0'));
    return 0;
}

/* ---- field lines ------------------------------------------------------------------------ */

static const char *parse_cl(const uint8_t *v, size_t n, int64_t *out)
{
    int64_t x = 0;
    if (n == 0)
        return "empty";
    for (size_t i = 0; i < n; i++) {
        if (v[i] == ',')
            return "a list";
        if (!is_digit(v[i]))
            return "not a number";
        int d = v[i] - '0';
        if (x > (INT64_MAX - d) / 10)
            return "too large";
        x = x * 10 + d;
    }
    *out = x;
    return NULL;
}

/* Length of a quoted-string at p (with its quotes), 0 when there is none or it is bad. */
static size_t quoted_len(const uint8_t *p, size_t n)
{
    if (n == 0 || p[0] != '"')
        return 0;
    for (size_t i = 1; i < n; i++) {
        if (p[i] == '"')
            return i + 1;
        if (p[i] == '\\') {
            if (i + 1 == n || !(ctab[p[i + 1]] & CC_PLAIN))
                return 0;
            i++;
        } else if (!(ctab[p[i]] & CC_QDTEXT)) {
            return 0;
        }
    }
    return 0;
}

static size_t skip_ws(const uint8_t *p, size_t i, size_t n)
{
    while (i < n && is_ws(p[i]))
        i++;
    return i;
}

/* Transfer-Encoding = #transfer-coding; several lines make one list. */
static const char *parse_te(http_head *hd, const uint8_t *v, size_t n)
{
    size_t i = 0;
    hd->te |= TE_SEEN;
    for (;;) {
        i = skip_ws(v, i, n);
        if (i == n)
            break;
        if (v[i] == ',') {
            i++;
            continue;
        }
        size_t b = i;
        while (i < n && is_tchar(v[i]))
            i++;
        if (i == b)
            return "not a list of codings";
        bool chunked = name_is(v + b, i - b, "chunked");
        bool params = false;
        for (;;) {
            size_t j = skip_ws(v, i, n);
            if (j == n || v[j] != ';')
                break;
            j = skip_ws(v, j + 1, n);
            size_t pb = j;
            while (j < n && is_tchar(v[j]))
                j++;
            if (j == pb)
                return "bad parameter";
            j = skip_ws(v, j, n);
            if (j == n || v[j] != '=')
                return "bad parameter";
            j = skip_ws(v, j + 1, n);
            if (j < n && v[j] == '"') {
                size_t q = quoted_len(v + j, n - j);
                if (!q)
                    return "bad parameter";
                j += q;
            } else {
                size_t vb = j;
                while (j < n && is_tchar(v[j]))
                    j++;
                if (j == vb)
                    return "bad parameter";
            }
            params = true;
            i = j;
        }
        if (hd->te & TE_CHUNKED)
            return chunked ? "chunked twice" : "chunked is not the last coding";
        if (chunked) {
            if (params)
                return "chunked with parameters";
            hd->te |= TE_CHUNKED;
        }
        i = skip_ws(v, i, n);
        if (i < n && v[i] != ',')
            return "not a list of codings";
    }
    return NULL;
}

/* Connection = #connection-option (tokens). */
static const char *parse_connection(http_head *hd, const uint8_t *v, size_t n)
{
    size_t i = 0;
    for (;;) {
        i = skip_ws(v, i, n);
        if (i == n)
            return NULL;
        if (v[i] == ',') {
            i++;
            continue;
        }
        size_t b = i;
        while (i < n && is_tchar(v[i]))
            i++;
        if (i == b)
            return "not a list of tokens";
        if (name_is(v + b, i - b, "close"))
            hd->conn |= CONN_CLOSE;
        else if (name_is(v + b, i - b, "keep-alive"))
            hd->conn |= CONN_KEEP_ALIVE;
        i = skip_ws(v, i, n);
        if (i < n && v[i] != ',')
            return "not a list of tokens";
    }
}

static int field_line(http_classify *h, http_head *hd, const uint8_t *p, size_t n)
{
    const char *why;
    if (is_ws(p[0])) {
        if (hd->kind != HK_TRAILER && hd->nfields == 0)
            fail(h, "http-obs-fold: whitespace after the start line");
        else
            fail(h, "http-obs-fold: line folding");
        return -1;
    }
    size_t i = 0;
    while (i < n && is_tchar(p[i]))
        i++;
    if (i == n) {
        fail(h, "http-field-name: no colon");
        return -1;
    }
    if (p[i] != ':') {
        if (is_ws(p[i]))
            fail(h, "http-ws-before-colon");
        else
            fail(h, "http-field-name: not a token (0x%02x)", p[i]);
        return -1;
    }
    if (i == 0) {
        fail(h, "http-field-name: empty");
        return -1;
    }
    if (++hd->nfields > HTTP_MAX_HEADERS) {
        fail(h, "http-too-many-headers: more than %d", HTTP_MAX_HEADERS);
        return -1;
    }
    size_t vb = skip_ws(p, i + 1, n), ve = n;
    while (ve > vb && is_ws(p[ve - 1]))
        ve--;
    const uint8_t *v = p + vb;
    size_t vn = ve - vb;
    uint32_t voff = (uint32_t)(v - hd->data);
    char tmp[24];

    switch (i) {
    case 4:
        if (!name_is(p, i, "host"))
            return 0;
        break;
    case 10:
        if (!name_is(p, i, "connection"))
            return 0;
        break;
    case 12:
        if (!name_is(p, i, "content-type"))
            return 0;
        break;
    case 14:
        if (!name_is(p, i, "content-length"))
            return 0;
        break;
    case 17:
        if (!name_is(p, i, "transfer-encoding"))
            return 0;
        break;
    case 19:
        if (!name_is(p, i, "content-disposition"))
            return 0;
        break;
    default: return 0;
    }
    if (hd->kind == HK_TRAILER) {
        fail(h, "http-trailer: %s is not allowed in a trailer", show(p, i, tmp, 20));
        return -1;
    }
    switch (i) {
    case 4:
        if (++hd->nhost > 1) {
            fail(h, "http-host: more than one Host");
            return -1;
        }
        hd->host_off = voff;
        hd->host_len = (uint32_t)vn;
        return 0;
    case 10:
        why = parse_connection(hd, v, vn);
        if (why) {
            fail(h, "http-connection: %s", why);
            return -1;
        }
        return 0;
    case 12:
        if (++hd->nctype > 1) {
            fail(h, "http-content-type: more than one Content-Type");
            return -1;
        }
        hd->ctype_off = voff;
        hd->ctype_len = (uint32_t)vn;
        return 0;
    case 14:
        if (++hd->ncl > 1) {
            fail(h, "http-content-length: more than one Content-Length");
            return -1;
        }
        why = parse_cl(v, vn, &hd->cl);
        if (why) {
            fail(h, "http-content-length: %s", why);
            return -1;
        }
        return 0;
    case 17:
        why = parse_te(hd, v, vn);
        if (why) {
            fail(h, "http-transfer-encoding: %s", why);
            return -1;
        }
        return 0;
    default:
        if (++hd->ncdisp > 1) {
            fail(h, "http-content-disposition: more than one Content-Disposition");
            return -1;
        }
        hd->cdisp_off = voff;
        hd->cdisp_len = (uint32_t)vn;
        return 0;
    }
}

/* ---- reading a head --------------------------------------------------------------------- */

enum { HR_MORE, HR_DONE, HR_BAD };
enum { P_NONE, P_HEAD, P_LINE, P_CR, P_LF, P_CTL };
enum { HL_OK, HL_END, HL_BAD };

/* The line [hd->line, hd->len - 2) is complete. */
static int head_line(http_classify *h, http_head *hd)
{
    const uint8_t *p = hd->data + hd->line;
    size_t n = hd->len - 2 - hd->line;
    if (hd->kind != HK_TRAILER && !hd->started) {
        if (n == 0) {
            if (hd->kind == HK_REQUEST && !hd->skipped) {
                hd->skipped = 1;
                return HL_OK;
            }
            fail(h, hd->kind == HK_REQUEST ? "http-request-line: empty line"
                                           : "http-status-line: empty line");
            return HL_BAD;
        }
        hd->started = 1;
        hd->start = hd->line;
        hd->start_len = (uint32_t)n;
        int r = hd->kind == HK_REQUEST ? request_line(h, hd, p, n) : status_line(h, hd, p, n);
        return r == 0 ? HL_OK : HL_BAD;
    }
    if (n == 0)
        return HL_END;
    return field_line(h, hd, p, n) == 0 ? HL_OK : HL_BAD;
}

/* Before reporting a problem found inside a start line that is not complete, the start-line
 * prefix check runs on the bytes before it, as it would have had they come in pieces. */
static bool prefix_failed(http_classify *h, http_head *hd)
{
    if (hd->kind == HK_TRAILER || hd->started)
        return false;
    size_t n = hd->len - hd->line;
    if (n > 0 && hd->data[hd->len - 1] == '\r')
        n--;
    return start_prefix(h, hd, hd->data + hd->line, n) != 0;
}

/* Whether an 8-byte word has a byte below 0x20 or equal to 0x7f (a CTL, CR, LF or HTAB):
 * the classic "has less than" and "has zero" bit tricks, exact for "any". */
static bool word_has_ctl(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t del = w ^ (0x7f * ones);
    return (((w - 0x20 * ones) & ~w) | ((del - ones) & ~del)) & highs;
}

/* The end of the run of plain head bytes in data[i..lim): eight at a time, then one by one. */
static size_t plain_run(const uint8_t *data, size_t i, size_t lim)
{
    while (lim - i >= 8) {
        uint64_t w;
        memcpy(&w, data + i, 8);
        if (word_has_ctl(w))
            break;
        i += 8;
    }
    while (i < lim && (ctab[data[i]] & CC_PLAIN))
        i++;
    return i;
}

/* Reads head bytes from data. HR_MORE: all taken, the head goes on. HR_DONE: the head ends
 * after *used bytes. HR_BAD: h is dead; *used is where the problem is. */
static int head_read(http_classify *h, http_dir *d, uint8_t kind, const uint8_t *data, size_t len,
                     size_t *used)
{
    http_head *hd = d->head;
    if (!hd) {
        hd = head_new(d, kind);
        if (!hd) {
            fail(h, "http-no-memory");
            *used = 0;
            return HR_BAD;
        }
    }
    /* head offset of data[i] is base + i */
    const size_t base = hd->len;
    size_t i = 0, from = 0;
    if (hd->len > 0 && hd->data[hd->len - 1] == '\r' && data[0] != '\n') {
        *used = 0;
        if (!prefix_failed(h, hd))
            fail(h, "http-bare-cr");
        return HR_BAD;
    }
    for (;;) {
        /* A plain byte at line offset HTTP_MAX_LINE or head offset HTTP_MAX_HEAD is over. */
        size_t cap_line = (size_t)hd->line + HTTP_MAX_LINE;
        size_t cap_off = cap_line < HTTP_MAX_HEAD ? cap_line : HTTP_MAX_HEAD;
        size_t lim = len;
        if (cap_off <= base + i)
            lim = i;
        else if (cap_off - base < len)
            lim = cap_off - base;
        i = plain_run(data, i, lim);
        if (i == len)
            break;
        uint8_t c = data[i];
        int problem = P_NONE;
        if (base + i >= HTTP_MAX_HEAD)
            problem = P_HEAD;
        else if (ctab[c] & CC_PLAIN)
            problem = P_LINE;
        else if (c == '\r') {
            if (i + 1 == len || data[i + 1] == '\n') {
                i++;
                continue;
            }
            problem = P_CR;
        } else if (c == '\n') {
            uint8_t prev = i > 0 ? data[i - 1] : hd->len > 0 ? hd->data[hd->len - 1] : 0;
            if (prev != '\r')
                problem = P_LF;
        } else {
            problem = P_CTL;
        }
        if (problem != P_NONE) {
            *used = i;
            if (head_append(d, data + from, i - from) != 0) {
                fail(h, "http-no-memory");
                return HR_BAD;
            }
            if (prefix_failed(h, d->head))
                return HR_BAD;
            switch (problem) {
            case P_HEAD: fail(h, "http-head-too-large: over %d bytes", HTTP_MAX_HEAD); break;
            case P_LINE: fail(h, "http-line-too-long: over %d bytes", HTTP_MAX_LINE); break;
            case P_CR: fail(h, "http-bare-cr"); break;
            case P_LF: fail(h, "http-bare-lf"); break;
            default: fail(h, "http-ctl: 0x%02x", c); break;
            }
            return HR_BAD;
        }
        /* LF ending a line */
        i++;
        if (head_append(d, data + from, i - from) != 0) {
            *used = i;
            fail(h, "http-no-memory");
            return HR_BAD;
        }
        hd = d->head;
        from = i;
        int r = head_line(h, hd);
        if (r == HL_BAD) {
            *used = i;
            return HR_BAD;
        }
        if (r == HL_END) {
            *used = i;
            return HR_DONE;
        }
        hd->line = hd->len;
    }
    if (head_append(d, data + from, len - from) != 0) {
        *used = len;
        fail(h, "http-no-memory");
        return HR_BAD;
    }
    if (prefix_failed(h, d->head)) {
        *used = len;
        return HR_BAD;
    }
    *used = len;
    return HR_MORE;
}

/* ---- facts ------------------------------------------------------------------------------ */

/* Writes the lower-cased media type of a Content-Type value (no parameters). */
static size_t media_type(const uint8_t *v, size_t n, char *out)
{
    size_t e = 0;
    while (e < n && v[e] != ';')
        e++;
    while (e > 0 && is_ws(v[e - 1]))
        e--;
    for (size_t i = 0; i < e; i++)
        out[i] = (char)lower(v[i]);
    out[e] = '\0';
    return e + 1;
}

/* Decodes an RFC 8187 ext-value (charset'lang'pct-value) into out (room for 2n + 1); *outlen
 * is the decoded length, NUL bytes included. */
static const char *ext_value(const uint8_t *v, size_t n, char *out, size_t *outlen)
{
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') { /* quoted by mistake: seen in the wild */
        v++;
        n -= 2;
    }
    const uint8_t *q1 = memchr(v, '\'', n);
    const uint8_t *q2 = q1 ? memchr(q1 + 1, '\'', n - (size_t)(q1 - v) - 1) : NULL;
    if (!q2)
        return "bad filename*";
    bool latin1 = name_is(v, (size_t)(q1 - v), "iso-8859-1");
    size_t k = 0;
    for (const uint8_t *p = q2 + 1; p < v + n; p++) {
        uint8_t c = *p;
        if (c == '%') {
            if (p + 2 >= v + n || !is_hex(p[1]) || !is_hex(p[2]))
                return "bad percent-encoding in filename*";
            c = (uint8_t)(hex_value(p[1]) * 16 + hex_value(p[2]));
            p += 2;
        } else if (!(ctab[c] & CC_PLAIN) || is_ws(c)) {
            return "bad character in filename*";
        }
        if (latin1 && c >= 0x80) {
            out[k++] = (char)(0xc0 | (c >> 6));
            out[k++] = (char)(0x80 | (c & 0x3f));
        } else {
            out[k++] = (char)c;
        }
    }
    out[k] = '\0';
    *outlen = k;
    return NULL;
}

/* The file name of a Content-Disposition value (filename* before filename, RFC 6266), into
 * out (room for 2n + 1); "" when there is none. NULL, or what is wrong. */
static const char *disposition_filename(const uint8_t *v, size_t n, char *out)
{
    const uint8_t *fn = NULL, *fx = NULL;
    size_t fnlen = 0, fxlen = 0, k = 0;
    size_t i = 0;
    out[0] = '\0';
    while (i < n) {
        i = skip_ws(v, i, n);
        size_t s = i, eq = n;
        bool inq = false;
        while (i < n) {
            uint8_t c = v[i];
            if (inq) {
                if (c == '\\') {
                    if (i + 1 >= n)
                        return "unterminated quoted-string";
                    i += 2;
                    continue;
                }
                if (c == '"')
                    inq = false;
            } else if (c == '"') {
                inq = true;
            } else if (c == ';') {
                break;
            } else if (c == '=' && eq == n) {
                eq = i;
            }
            i++;
        }
        if (inq)
            return "unterminated quoted-string";
        size_t e = i;
        while (e > s && is_ws(v[e - 1]))
            e--;
        if (eq < e) {
            size_t ne = eq;
            while (ne > s && is_ws(v[ne - 1]))
                ne--;
            size_t vb = skip_ws(v, eq + 1, e);
            if (name_is(v + s, ne - s, "filename")) {
                if (fn)
                    return "more than one filename";
                fn = v + vb;
                fnlen = e - vb;
            } else if (name_is(v + s, ne - s, "filename*")) {
                if (fx)
                    return "more than one filename*";
                fx = v + vb;
                fxlen = e - vb;
            }
        }
        i++; /* the ';' */
    }
    if (fx) {
        const char *why = ext_value(fx, fxlen, out, &k);
        if (why)
            return why;
    } else if (fn) {
        if (fnlen >= 2 && fn[0] == '"') {
            for (size_t j = 1; j + 1 < fnlen; j++) {
                if (fn[j] == '\\' && j + 2 < fnlen)
                    j++;
                out[k++] = (char)fn[j];
            }
        } else {
            memcpy(out, fn, fnlen);
            k = fnlen;
        }
        out[k] = '\0';
    }
    /* a control byte (a %00 above all) would cut or disguise the name the policy sees */
    for (size_t j = 0; j < k; j++)
        if ((uint8_t)out[j] < 0x20 || out[j] == 0x7f)
            return "control character in the file name";
    return NULL;
}

/* ---- pipeline --------------------------------------------------------------------------- */

static uint8_t *queue_at(http_classify *h, unsigned k)
{
    return &h->queue[(h->qhead + k) % HTTP_MAX_PIPELINE];
}

static void queue_pop(http_classify *h)
{
    if (h->qcount == 0)
        return;
    h->qhead = (uint8_t)((h->qhead + 1) % HTTP_MAX_PIPELINE);
    h->qcount--;
}

/* ---- messages --------------------------------------------------------------------------- */

/* After a message's last byte: the next head, or nothing when the connection ends. */
static void message_done(http_classify *h, http_dir *d, cls_dir dir)
{
    if (d->head && !d->head->reported)
        head_free(d); /* a trailer section */
    d->phase = (d->flags & DF_KA) ? PH_HEAD : PH_CLOSED;
    d->sub = 0;
    d->remaining = 0;
    d->flags &= (uint8_t) ~(DF_PENDING | DF_KA);
    if (dir == CLS_S2C)
        queue_pop(h);
}

static void report_head(http_classify *h, http_dir *d, bool complete)
{
    http_head *hd = d->head;
    hd->reported = 1;
    d->flags &= (uint8_t)~DF_PENDING;
    if (hd->kind == HK_REQUEST) {
        hd->info.req.complete = complete;
        h->event = HTTP_EV_REQUEST_HEAD;
    } else {
        hd->info.resp.complete = complete;
        hd->info.resp.body_starts_mz = hd->nmz == 2 && hd->mz[0] == 'M' && hd->mz[1] == 'Z';
        h->event = HTTP_EV_RESPONSE_HEAD;
    }
}

/* Lower-cases a host into out; returns the bytes written with the NUL. */
static size_t put_host(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (char)lower(p[i]);
    out[n] = '\0';
    return n + 1;
}

static bool same_host(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    if (an != bn)
        return false;
    for (size_t i = 0; i < an; i++)
        if (lower(a[i]) != lower(b[i]))
            return false;
    return true;
}

/* A complete request head: check what needs the whole head, record the facts. */
static int request_done(http_classify *h, http_dir *d)
{
    http_head *hd = d->head;
    const uint8_t *line = hd->data + hd->start;
    size_t mlen = hd->method_len;
    size_t toff = hd->start + mlen + 1;
    size_t tlen = hd->start_len - mlen - 1 - 9;
    target tg;
    authority hau = {0, 0, -1};
    const char *why;

    if (hd->te & TE_SEEN) {
        if (hd->version == 10) {
            fail(h, "http-transfer-encoding: in an HTTP/1.0 request");
            return -1;
        }
        if (hd->ncl) {
            fail(h, "http-cl-te: Content-Length with Transfer-Encoding");
            return -1;
        }
        if (!(hd->te & TE_CHUNKED)) {
            fail(h, "http-transfer-encoding: chunked is not the last coding");
            return -1;
        }
    }
    if (hd->version == 11 && hd->nhost == 0) {
        fail(h, "http-host: missing in an HTTP/1.1 request");
        return -1;
    }
    (void)target_parse(hd->data + toff, tlen, line, mlen, &tg);
    if (hd->nhost) {
        why = authority_parse(hd->data + hd->host_off, hd->host_len, &hau);
        if (why) {
            fail(h, "http-host: %s", why);
            return -1;
        }
        if (tg.form == HTTP_FORM_ABSOLUTE || tg.form == HTTP_FORM_AUTHORITY) {
            int tp = tg.au.port < 0 ? 80 : tg.au.port, hp = hau.port < 0 ? 80 : hau.port;
            if (tp != hp || !same_host(hd->data + toff + tg.au.host_off, tg.au.host_len,
                                       hd->data + hd->host_off + hau.host_off, hau.host_len)) {
                fail(h, "http-host: does not match the request-target");
                return -1;
            }
        }
    }
    bool connect = tg.form == HTTP_FORM_AUTHORITY;
    if (connect && ((hd->te & TE_SEEN) || hd->cl > 0)) {
        fail(h, "http-connect: a CONNECT request has no content");
        return -1;
    }
    if (h->qcount >= HTTP_MAX_PIPELINE) {
        fail(h, "http-pipeline-depth: more than %d requests outstanding", HTTP_MAX_PIPELINE);
        return -1;
    }

    /* The facts, as strings after the raw head; then they move to the front and the rest of
     * the buffer is given back (head_compact). */
    size_t hoff = 0, hlen = 0;
    int port = -1;
    if (connect || tg.form == HTTP_FORM_ABSOLUTE) {
        hoff = toff + tg.au.host_off;
        hlen = tg.au.host_len;
        port = tg.au.port;
    } else if (hd->nhost) {
        hoff = hd->host_off + hau.host_off;
        hlen = hau.host_len;
        port = hau.port;
    }
    uint8_t q = 0;
    if (mlen == 4 && memcmp(line, "HEAD", 4) == 0)
        q |= Q_HEAD;
    size_t need = mlen + 1 + tlen + 1 + hlen + 1 + 2 * (tlen + 2);
    if (head_reserve(d, (size_t)hd->len + need) != 0) {
        fail(h, "http-no-memory");
        return -1;
    }
    hd = d->head;
    const uint8_t *raw = hd->data;
    char *sc0 = (char *)hd->data + hd->len, *sc = sc0;
    memcpy(sc, raw + hd->start, mlen);
    sc[mlen] = '\0';
    sc += mlen + 1;
    size_t o_target = (size_t)(sc - sc0);
    memcpy(sc, raw + toff, tlen);
    sc[tlen] = '\0';
    sc += tlen + 1;
    size_t o_host = (size_t)(sc - sc0);
    sc += put_host(raw + hoff, hlen, sc);
    size_t o_path = (size_t)(sc - sc0);
    if (tg.form == HTTP_FORM_ORIGIN || tg.form == HTTP_FORM_ABSOLUTE) {
        if (tg.path_len == 0)
            *sc++ = '/';
        memcpy(sc, raw + toff + tg.path_off, tg.path_len);
        sc += tg.path_len;
    }
    *sc++ = '\0';
    size_t o_origin = (size_t)(sc - sc0);
    if (tg.form == HTTP_FORM_ASTERISK) {
        *sc++ = '*';
    } else if (tg.form != HTTP_FORM_AUTHORITY) {
        if (tg.path_len == 0)
            *sc++ = '/';
        memcpy(sc, raw + toff + tg.path_off, tlen - tg.path_off);
        sc += tlen - tg.path_off;
    }
    *sc++ = '\0';
    const char *s = head_compact(d, hd->len, (size_t)(sc - sc0));
    hd = d->head;
    http_request_info *ri = &hd->info.req;
    memset(ri, 0, sizeof(*ri));
    ri->method = s;
    ri->target = s + o_target;
    ri->host = s + o_host;
    ri->port = port > 0 ? (uint16_t)port : 0;
    ri->path = s + o_path;
    ri->origin = s + o_origin;
    ri->version = hd->version;
    ri->form = tg.form;
    ri->chunked = (hd->te & TE_CHUNKED) != 0;
    ri->content_length = ri->chunked ? -1 : hd->cl;
    ri->has_body = ri->chunked || hd->cl > 0;
    bool ka = hd->version == 11 ? !(hd->conn & CONN_CLOSE)
                                : (hd->conn & CONN_KEEP_ALIVE) && !(hd->conn & CONN_CLOSE);
    ri->keep_alive = ka;

    if (connect)
        q |= Q_CONNECT;
    if (hd->version == 10)
        q |= Q_V10;
    if (!ka)
        q |= Q_CLOSE;
    *queue_at(h, h->qcount) = q;
    h->qcount++;

    d->flags = (uint8_t)((d->flags & DF_FINISHED) | (ka ? DF_KA : 0));
    if (ri->chunked) {
        d->phase = PH_BODY_CHUNK;
        d->sub = CK_SIZE0;
        d->remaining = 0;
        d->line_len = 0;
        report_head(h, d, false);
    } else if (hd->cl > 0) {
        d->phase = PH_BODY_CL;
        d->remaining = (uint64_t)hd->cl;
        report_head(h, d, false);
    } else {
        report_head(h, d, true);
        message_done(h, d, CLS_C2S);
    }
    return 0;
}

/* A complete response head. Returns -1 on a violation, 0 when its event is reported, 1 when
 * the event waits for body bytes. */
static int response_done(http_classify *h, http_dir *d)
{
    http_head *hd = d->head;
    uint8_t *req = queue_at(h, 0);
    int status = hd->status;
    const char *why;

    if (status == 101) {
        fail(h, "http-upgrade: 101 Switching Protocols");
        return -1;
    }
    if (hd->te & TE_SEEN) {
        if (hd->version == 10) {
            fail(h, "http-transfer-encoding: in an HTTP/1.0 response");
            return -1;
        }
        if (*req & Q_V10) {
            fail(h, "http-transfer-encoding: in a response to an HTTP/1.0 request");
            return -1;
        }
        if (hd->ncl) {
            fail(h, "http-cl-te: Content-Length with Transfer-Encoding");
            return -1;
        }
    }
    size_t need = hd->ctype_len + 1 + 2 * (size_t)hd->cdisp_len + 1;
    if (head_reserve(d, (size_t)hd->len + need) != 0) {
        fail(h, "http-no-memory");
        return -1;
    }
    hd = d->head;
    char *sc0 = (char *)hd->data + hd->len;
    size_t o_file = media_type(hd->data + hd->ctype_off, hd->ctype_len, sc0);
    why = disposition_filename(hd->data + hd->cdisp_off, hd->cdisp_len, sc0 + o_file);
    if (why) {
        fail(h, "http-content-disposition: %s", why);
        return -1;
    }
    const char *s = head_compact(d, hd->len, o_file + strlen(sc0 + o_file) + 1);
    hd = d->head;
    http_response_info *ri = &hd->info.resp;
    memset(ri, 0, sizeof(*ri));
    ri->status = status;
    ri->version = hd->version;
    ri->content_type = s;
    ri->disposition_filename = s + o_file;
    ri->content_length = -1;

    if (status < 200) {
        ri->interim = true;
        ri->keep_alive = true;
        d->flags &= (uint8_t)~DF_KA;
        report_head(h, d, true);
        return 0; /* the final response follows: stay in PH_HEAD */
    }
    bool ka = !(*req & Q_CLOSE) &&
              (hd->version == 11 ? !(hd->conn & CONN_CLOSE)
                                 : (hd->conn & CONN_KEEP_ALIVE) && !(hd->conn & CONN_CLOSE));
    bool connect = (*req & Q_CONNECT) != 0;
    *req &= (uint8_t)~Q_CONNECT; /* the client may go on after a refused CONNECT */

    if (connect && status < 300) {
        report_head(h, d, true);
        queue_pop(h);
        h->dir[CLS_C2S].phase = PH_TUNNEL;
        d->phase = PH_TUNNEL;
        return 0;
    }
    if ((*req & Q_HEAD) || status == 204 || status == 304) {
        ri->keep_alive = ka;
        d->flags = (uint8_t)((d->flags & DF_FINISHED) | (ka ? DF_KA : 0));
        report_head(h, d, true);
        message_done(h, d, CLS_S2C);
        return 0;
    }
    if (hd->te & TE_SEEN) {
        if (hd->te & TE_CHUNKED) {
            ri->chunked = true;
            d->phase = PH_BODY_CHUNK;
            d->sub = CK_SIZE0;
            d->remaining = 0;
            d->line_len = 0;
        } else {
            ri->close_delimited = true;
            d->phase = PH_BODY_CLOSE;
            ka = false;
        }
    } else if (hd->ncl) {
        ri->content_length = hd->cl;
        d->phase = PH_BODY_CL;
        d->remaining = (uint64_t)hd->cl;
    } else {
        ri->close_delimited = true;
        d->phase = PH_BODY_CLOSE;
        ka = false;
    }
    ri->keep_alive = ka;
    d->flags = (uint8_t)((d->flags & DF_FINISHED) | (ka ? DF_KA : 0));
    if (d->phase == PH_BODY_CL && d->remaining == 0) {
        report_head(h, d, true);
        message_done(h, d, CLS_S2C);
        return 0;
    }
    d->flags |= DF_PENDING;
    return 1;
}

/* ---- bodies ----------------------------------------------------------------------------- */

/* Takes body bytes for the waiting response event; true when it can be reported. */
static bool take_mz(http_dir *d, const uint8_t *p, size_t n)
{
    http_head *hd = d->head;
    while (n-- > 0 && hd->nmz < 2)
        hd->mz[hd->nmz++] = *p++;
    return hd->nmz == 2;
}

static cls_verdict chunk_fail(http_classify *h, uint8_t c, uint8_t sub)
{
    if (c == '\n')
        return fail(h, "http-bare-lf");
    if (sub == CK_SIZE0 || sub == CK_SIZE)
        return fail(h, "http-chunk-size: not a hex number (0x%02x)", c);
    return fail(h, "http-chunk: bad chunk extension (0x%02x)", c);
}

/* Body bytes in d's current phase. Stops with an event, or at the end of the last complete
 * framing unit (restoring the state there) when a unit is cut at the end of data. */
static cls_verdict body_feed(http_classify *h, http_dir *d, cls_dir dir, const uint8_t *data,
                             size_t len, size_t *consumed)
{
    size_t i = 0, frontier = 0;
    http_dir snap = *d;
    while (i < len) {
        if (d->phase == PH_BODY_CL || d->phase == PH_BODY_CLOSE) {
            size_t n = len - i;
            if (d->phase == PH_BODY_CL && n > d->remaining)
                n = (size_t)d->remaining;
            bool ready = false;
            if (d->flags & DF_PENDING) {
                size_t want = 2u - d->head->nmz;
                if (n > want)
                    n = want;
                ready = take_mz(d, data + i, n);
            }
            i += n;
            bool ended = false;
            if (d->phase == PH_BODY_CL) {
                d->remaining -= n;
                ended = d->remaining == 0;
            }
            if (d->flags & DF_PENDING) {
                if (!ready && !ended)
                    continue;
                report_head(h, d, ended);
                if (ended)
                    message_done(h, d, dir);
                *consumed = i;
                return CLS_CONFORMS;
            }
            if (ended) {
                message_done(h, d, dir);
                h->event = HTTP_EV_MESSAGE_END;
                *consumed = i;
                return CLS_CONFORMS;
            }
            frontier = i;
            snap = *d;
            continue;
        }
        if (d->phase != PH_BODY_CHUNK)
            break; /* cannot happen: the caller routes the other phases */

        if (d->sub == CK_DATA) {
            size_t n = len - i;
            if (n > d->remaining)
                n = (size_t)d->remaining;
            bool ready = false;
            if (d->flags & DF_PENDING) {
                size_t want = 2u - d->head->nmz;
                if (n > want)
                    n = want;
                ready = take_mz(d, data + i, n);
            }
            i += n;
            d->remaining -= n;
            if (d->remaining == 0)
                d->sub = CK_DATA_CR;
            if (ready) {
                report_head(h, d, false);
                *consumed = i;
                return CLS_CONFORMS;
            }
            frontier = i;
            snap = *d;
            continue;
        }
        if (d->sub == CK_TRAILER0 && data[i] != '\r' && data[i] != '\n') {
            /* trailer fields: read from the start of a feed, like a head */
            if (i > 0) {
                *consumed = i;
                return CLS_CONFORMS;
            }
            d->sub = CK_TRAILER;
        }
        if (d->sub == CK_TRAILER) {
            size_t used = 0;
            int r = head_read(h, d, HK_TRAILER, data + i, len - i, &used);
            if (r == HR_BAD) {
                *consumed = i + used;
                return CLS_VIOLATES;
            }
            if (r == HR_MORE) {
                *consumed = len;
                return CLS_NEED_MORE;
            }
            message_done(h, d, dir);
            h->event = HTTP_EV_MESSAGE_END;
            *consumed = i + used;
            return CLS_CONFORMS;
        }

        uint8_t c = data[i++];
        switch (d->sub) {
        case CK_DATA_CR:
            if (c != '\r') {
                *consumed = i - 1;
                return c == '\n' ? fail(h, "http-bare-lf")
                                 : fail(h, "http-chunk: data longer than the chunk-size");
            }
            d->sub = CK_DATA_LF;
            continue;
        case CK_DATA_LF:
        case CK_END_LF:
        case CK_LF:
            if (c != '\n') {
                *consumed = i - 1;
                return fail(h, "http-bare-cr");
            }
            if (d->sub == CK_END_LF) {
                message_done(h, d, dir);
                h->event = HTTP_EV_MESSAGE_END;
                *consumed = i;
                return CLS_CONFORMS;
            }
            if (d->sub == CK_DATA_LF) {
                d->sub = CK_SIZE0;
                d->line_len = 0;
                d->remaining = 0;
            } else if (d->remaining > 0) {
                d->sub = CK_DATA;
            } else {
                d->sub = CK_TRAILER0;
                if (d->flags & DF_PENDING) {
                    report_head(h, d, false);
                    *consumed = i;
                    return CLS_CONFORMS;
                }
            }
            frontier = i;
            snap = *d;
            continue;
        case CK_TRAILER0:
            if (c == '\n') {
                *consumed = i - 1;
                return fail(h, "http-bare-lf");
            }
            d->sub = CK_END_LF; /* c is CR */
            continue;
        default: break;
        }

        /* a chunk line: chunk-size [ chunk-ext ] CRLF */
        if (c == '\r') {
            if (d->sub == CK_SIZE0 || d->sub == CK_BWS || d->sub == CK_NAME0 ||
                d->sub == CK_NAME_BWS || d->sub == CK_VAL0 || d->sub == CK_QS ||
                d->sub == CK_QS_ESC) {
                *consumed = i - 1;
                return chunk_fail(h, c, d->sub);
            }
            d->sub = CK_LF;
            continue;
        }
        if (++d->line_len > HTTP_MAX_LINE) {
            *consumed = i - 1;
            return fail(h, "http-line-too-long: over %d bytes", HTTP_MAX_LINE);
        }
        bool ok = true;
        switch (d->sub) {
        case CK_SIZE0:
        case CK_SIZE:
            if (is_hex(c)) {
                if (d->remaining > ((uint64_t)INT64_MAX - (uint64_t)hex_value(c)) / 16) {
                    *consumed = i - 1;
                    return fail(h, "http-chunk-size: over %lld", (long long)INT64_MAX);
                }
                d->remaining = d->remaining * 16 + (uint64_t)hex_value(c);
                d->sub = CK_SIZE;
            } else if (d->sub == CK_SIZE && is_ws(c)) {
                d->sub = CK_BWS;
            } else if (d->sub == CK_SIZE && c == ';') {
                d->sub = CK_NAME0;
            } else {
                ok = false;
            }
            break;
        case CK_BWS:
            if (c == ';')
                d->sub = CK_NAME0;
            else
                ok = is_ws(c);
            break;
        case CK_NAME0:
            if (is_tchar(c))
                d->sub = CK_NAME;
            else
                ok = is_ws(c);
            break;
        case CK_NAME:
            if (is_ws(c))
                d->sub = CK_NAME_BWS;
            else if (c == '=')
                d->sub = CK_VAL0;
            else if (c == ';')
                d->sub = CK_NAME0;
            else
                ok = is_tchar(c);
            break;
        case CK_NAME_BWS:
            if (c == '=')
                d->sub = CK_VAL0;
            else if (c == ';')
                d->sub = CK_NAME0;
            else
                ok = is_ws(c);
            break;
        case CK_VAL0:
            if (c == '"')
                d->sub = CK_QS;
            else if (is_tchar(c))
                d->sub = CK_TOKEN;
            else
                ok = is_ws(c);
            break;
        case CK_TOKEN:
        case CK_QS_END:
            if (is_ws(c))
                d->sub = CK_BWS;
            else if (c == ';')
                d->sub = CK_NAME0;
            else
                ok = d->sub == CK_TOKEN && is_tchar(c);
            break;
        case CK_QS:
            if (c == '"')
                d->sub = CK_QS_END;
            else if (c == '\\')
                d->sub = CK_QS_ESC;
            else
                ok = (ctab[c] & CC_QDTEXT) != 0;
            break;
        case CK_QS_ESC:
            ok = (ctab[c] & CC_PLAIN) != 0;
            d->sub = CK_QS;
            break;
        default: ok = false; break;
        }
        if (!ok) {
            *consumed = i - 1;
            return chunk_fail(h, c, d->sub);
        }
    }
    if (d->flags & DF_PENDING) {
        *consumed = len;
        return CLS_NEED_MORE;
    }
    if (frontier == i) {
        *consumed = len;
        return CLS_CONFORMS;
    }
    if (frontier > 0) {
        *d = snap;
        *consumed = frontier;
        return CLS_CONFORMS;
    }
    *consumed = len;
    return CLS_NEED_MORE;
}

/* ---- the interface ---------------------------------------------------------------------- */

size_t http_classify_size(void)
{
    return sizeof(http_classify);
}

void http_classify_init(http_classify *h)
{
    memset(h, 0, sizeof(*h));
}

void http_classify_release(http_classify *h)
{
    head_free(&h->dir[CLS_C2S]);
    head_free(&h->dir[CLS_S2C]);
}

/* Frees the head of d when its event has been seen (or h died). */
static void release_reported(http_classify *h, http_dir *d)
{
    if (d->head && (d->head->reported || h->dead))
        head_free(d);
}

static cls_verdict request_feed(http_classify *h, http_dir *d, const uint8_t *data, size_t len,
                                size_t *consumed)
{
    if (!d->head && h->qcount > 0 && (*queue_at(h, h->qcount - 1u) & Q_CONNECT))
        return fail(h, "http-connect: client bytes before the response to CONNECT");
    size_t used = 0;
    int r = head_read(h, d, HK_REQUEST, data, len, &used);
    *consumed = used;
    if (r == HR_BAD)
        return CLS_VIOLATES;
    if (r == HR_MORE)
        return CLS_NEED_MORE;
    if (request_done(h, d) != 0)
        return CLS_VIOLATES;
    return CLS_CONFORMS;
}

static cls_verdict response_feed(http_classify *h, http_dir *d, const uint8_t *data, size_t len,
                                 size_t *consumed)
{
    if (h->qcount == 0)
        return fail(h, "http-unsolicited-response: no request is outstanding");
    size_t used = 0;
    int r = head_read(h, d, HK_RESPONSE, data, len, &used);
    *consumed = used;
    if (r == HR_BAD)
        return CLS_VIOLATES;
    if (r == HR_MORE)
        return CLS_NEED_MORE;
    r = response_done(h, d);
    if (r < 0)
        return CLS_VIOLATES;
    if (r == 0)
        return CLS_CONFORMS;
    if (used == len)
        return CLS_NEED_MORE;
    size_t more = 0;
    cls_verdict v = body_feed(h, d, CLS_S2C, data + used, len - used, &more);
    *consumed = used + more;
    return v;
}

cls_verdict http_classify_feed(http_classify *h, cls_dir dir, const uint8_t *data, size_t len,
                               size_t *consumed)
{
    *consumed = 0;
    http_dir *d = &h->dir[dir == CLS_S2C ? CLS_S2C : CLS_C2S];
    /* The facts of this direction's last event go now; the other direction's stay until it
     * is fed (a caller may hold a request event while responses flow). */
    release_reported(h, d);
    if (h->dead) {
        release_reported(h, &h->dir[dir == CLS_S2C ? CLS_C2S : CLS_S2C]);
        return CLS_VIOLATES;
    }
    h->event = CLS_EV_NONE;
    if (len == 0)
        return CLS_NEED_MORE;
    if (d->flags & DF_FINISHED)
        return fail(h, "http-after-close: bytes after the end of the stream");
    switch (d->phase) {
    case PH_CLOSED:
        return fail(h, dir == CLS_C2S ? "http-after-close: client bytes after a request that closes"
                                      : "http-after-close: server bytes after the last response");
    case PH_TUNNEL: return fail(h, "http-connect: bytes inside a CONNECT tunnel");
    case PH_HEAD:
        return dir == CLS_C2S ? request_feed(h, d, data, len, consumed)
                              : response_feed(h, d, data, len, consumed);
    default: return body_feed(h, d, dir, data, len, consumed);
    }
}

cls_verdict http_classify_finish(http_classify *h, cls_dir dir)
{
    http_dir *d = &h->dir[dir == CLS_S2C ? CLS_S2C : CLS_C2S];
    release_reported(h, d);
    if (h->dead)
        return CLS_VIOLATES;
    h->event = CLS_EV_NONE;
    if (d->flags & DF_FINISHED)
        return CLS_CONFORMS;
    d->flags |= DF_FINISHED;
    switch (d->phase) {
    case PH_HEAD:
        if (d->head) {
            http_head *hd = d->head;
            /* the one empty line a client may send before a request-line */
            bool empty = hd->kind == HK_REQUEST && !hd->started &&
                         (hd->len == 0 || (hd->skipped && hd->len == 2) ||
                          (hd->len == 1 && hd->data[0] == '\r'));
            if (!empty)
                return fail(h, dir == CLS_C2S ? "http-truncated: inside a request head"
                                              : "http-truncated: inside a response head");
            head_free(d);
        }
        return CLS_CONFORMS;
    case PH_BODY_CL:
    case PH_BODY_CHUNK:
        return fail(h, dir == CLS_C2S ? "http-truncated: inside a request body"
                                      : "http-truncated: inside a response body");
    case PH_BODY_CLOSE:
        if (d->flags & DF_PENDING)
            report_head(h, d, true);
        else
            h->event = HTTP_EV_MESSAGE_END;
        d->flags &= (uint8_t)~DF_KA;
        message_done(h, d, dir);
        return CLS_CONFORMS;
    default: return CLS_CONFORMS;
    }
}

int http_classify_event(const http_classify *h)
{
    return h->event;
}

const char *http_classify_reason(const http_classify *h)
{
    return h->dead ? h->reason : NULL;
}

const http_request_info *http_classify_request(const http_classify *h)
{
    const http_head *hd = h->dir[CLS_C2S].head;
    if (h->dead || !hd || !hd->reported || hd->kind != HK_REQUEST)
        return NULL;
    return &hd->info.req;
}

const http_response_info *http_classify_response(const http_classify *h)
{
    const http_head *hd = h->dir[CLS_S2C].head;
    if (h->dead || !hd || !hd->reported || hd->kind != HK_RESPONSE)
        return NULL;
    return &hd->info.resp;
}

unsigned http_classify_outstanding(const http_classify *h)
{
    return h->qcount;
}

/* ---- cls_ops ---------------------------------------------------------------------------- */

CLS_DEFINE_OPS(http);
