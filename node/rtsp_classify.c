/* rtsp_classify.c - RTSP/1.0 and RTSP/2.0 conformance over both directions
 * of one connection: message heads, CSeq pairing, Content-Length bodies and
 * interleaved RTP/RTCP frames (see rtsp_classify.h for the rules). */
#include "rtsp_classify.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    RS_IDLE,       /* at a message boundary */
    RS_HEAD,       /* reading a head into the head buffer */
    RS_BODY,       /* inside a body, body_left bytes to go */
    RS_FRAME_HDR,  /* reading '$', channel, length and the first payload byte */
    RS_FRAME_DATA, /* inside an interleaved frame, frame_left bytes to go */
} rtsp_state;

/* What the head being read has said so far. Offsets point into the head
 * buffer, which may move while it grows. */
typedef struct rtsp_msg {
    bool request;
    bool star;
    int version;
    int status;
    size_t method_off, method_len;
    size_t url_off, url_len;
    size_t host_off, host_len;
    size_t path_off, path_len;
    uint16_t port;
    unsigned headers;
    unsigned ncseq, nclen;
    uint32_t cseq;
    uint32_t clen;
    bool has_chan;
    uint8_t chan_lo, chan_hi; /* the first range named */
    uint8_t chan[32];         /* interleaved channels named by a Transport header */
} rtsp_msg;

/* A request awaiting its final response; a SETUP remembers the first
 * interleaved range it asked for, for an answer that does not repeat it. */
typedef struct rtsp_pending {
    uint32_t cseq;
    bool setup;
    bool has_chan;
    uint8_t chan_lo, chan_hi;
} rtsp_pending;

typedef struct rtsp_side {
    rtsp_state st;
    bool pending_end; /* a bodiless request's MESSAGE_END is still owed */
    bool first_token_done;
    uint8_t fhdr_len;
    uint8_t fhdr[5];
    uint16_t frame_left;
    uint32_t body_left;
    uint8_t *head; /* only while a head is read, or until the next feed */
    size_t head_len, head_cap;
    size_t line_start;
    unsigned lines;
    rtsp_msg msg;
    /* Requests sent in this direction that await their final response. */
    rtsp_pending out[RTSP_MAX_PIPELINE];
    unsigned nout;
} rtsp_side;

struct rtsp_classify {
    rtsp_side side[2];
    bool dead;
    bool interleaved;
    int event;
    uint8_t channels[32];
    rtsp_request_info req;
    char reason[160];
};

static const rtsp_request_info empty_info = {"", "", "", "", 0, CLS_C2S, 0, 0, 0};

size_t rtsp_classify_size(void)
{
    return sizeof(rtsp_classify);
}

void rtsp_classify_init(rtsp_classify *r)
{
    memset(r, 0, sizeof(*r));
    r->req = empty_info;
}

static void free_head(rtsp_side *s)
{
    free(s->head);
    s->head = NULL;
    s->head_len = s->head_cap = 0;
}

void rtsp_classify_release(rtsp_classify *r)
{
    free_head(&r->side[0]);
    free_head(&r->side[1]);
    r->req = empty_info;
}

/* Records the first violation; the state is dead from here on. */
static int die(rtsp_classify *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int die(rtsp_classify *r, const char *fmt, ...)
{
    if (!r->dead) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
        va_end(ap);
        r->dead = true;
    }
    return -1;
}

/* A short printable copy of untrusted bytes for a reason's detail. */
static const char *show(char *buf, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap; i++)
        buf[o++] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    if (n > cap - 4 && o + 3 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* Field values and reason phrases: HTAB, SP, VCHAR, obs-text. */
static bool is_text(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static bool ieq(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    if (n != l)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != lower((unsigned char)lit[i]))
            return false;
    return true;
}

static bool eq(const char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

static int parse_version(const char *s, size_t n)
{
    if (eq(s, n, "RTSP/1.0"))
        return 10;
    if (eq(s, n, "RTSP/2.0"))
        return 20;
    return 0;
}

/* RFC 3986 unreserved, sub-delims and the extra characters a path or query
 * segment may hold; '%' is checked separately. */
static bool is_pchar(unsigned char c, const char *extra)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && (strchr("-._~!$&'()*+,;=:@", c) != NULL || strchr(extra, c) != NULL);
}

static bool valid_part(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n || !is_hex((unsigned char)s[i + 1]) || !is_hex((unsigned char)s[i + 2]))
                return false;
            i += 2;
        } else if (!is_pchar((unsigned char)s[i], extra)) {
            return false;
        }
    }
    return true;
}

/* Request-URI of a request line starting at off in the head; fills the URL
 * parts of m. The host is a DNS name (letters, digits, '-', '.', '_'), an
 * IPv4 address or a bracketed IPv6 literal; userinfo is skipped. */
static int parse_url(rtsp_classify *r, rtsp_msg *m, const char *head, size_t off, size_t n)
{
    const char *u = head + off;
    char tmp[48];
    m->host_off = m->path_off = off;
    m->host_len = m->path_len = 0;
    m->port = 0;
    size_t i;
    if (n > 7 && ieq(u, 7, "rtsp://"))
        i = 7;
    else if (n > 8 && (ieq(u, 8, "rtsps://") || ieq(u, 8, "rtspu://")))
        i = 8;
    else
        return die(r, "rtsp-request-uri: not an absolute rtsp URL: %s",
                   show(tmp, sizeof(tmp), u, n));
    if (memchr(u, '#', n))
        return die(r, "rtsp-request-uri: fragment in a Request-URI");
    size_t auth_end = i;
    while (auth_end < n && u[auth_end] != '/' && u[auth_end] != '?')
        auth_end++;
    const char *at = NULL;
    for (size_t k = i; k < auth_end; k++)
        if (u[k] == '@') {
            if (at)
                return die(r, "rtsp-request-uri: two '@' in the authority");
            at = u + k;
        }
    if (at) {
        size_t ui = (size_t)(at - u);
        if (!valid_part(u + i, ui - i, ""))
            return die(r, "rtsp-request-uri: bad userinfo");
        i = ui + 1;
    }
    size_t h = i, hend;
    if (i < auth_end && u[i] == '[') {
        hend = i + 1;
        while (hend < auth_end &&
               (is_hex((unsigned char)u[hend]) || u[hend] == ':' || u[hend] == '.'))
            hend++;
        if (hend >= auth_end || u[hend] != ']' || hend == i + 1)
            return die(r, "rtsp-request-uri: bad IPv6 literal");
        m->host_off = off + i + 1;
        m->host_len = hend - i - 1;
        hend++;
    } else {
        hend = i;
        while (hend < auth_end && u[hend] != ':') {
            unsigned char c = (unsigned char)u[hend];
            if (!(is_digit(c) || (lower(c) >= 'a' && lower(c) <= 'z') || c == '-' || c == '.' ||
                  c == '_'))
                return die(r, "rtsp-request-uri: bad host");
            hend++;
        }
        if (hend == h)
            return die(r, "rtsp-request-uri: no host");
        m->host_off = off + h;
        m->host_len = hend - h;
    }
    if (hend < auth_end) {
        if (u[hend] != ':' || hend + 1 == auth_end || auth_end - hend - 1 > 5)
            return die(r, "rtsp-request-uri: bad port");
        unsigned long port = 0;
        for (size_t k = hend + 1; k < auth_end; k++) {
            if (!is_digit((unsigned char)u[k]))
                return die(r, "rtsp-request-uri: bad port");
            port = port * 10 + (unsigned long)(u[k] - '0');
        }
        if (port == 0 || port > 65535)
            return die(r, "rtsp-request-uri: port %lu out of range", port);
        m->port = (uint16_t)port;
    }
    size_t q = auth_end;
    while (q < n && u[q] != '?')
        q++;
    if (!valid_part(u + auth_end, q - auth_end, "/"))
        return die(r, "rtsp-request-uri: bad path");
    if (q < n && !valid_part(u + q + 1, n - q - 1, "/?"))
        return die(r, "rtsp-request-uri: bad query");
    m->path_off = off + auth_end;
    m->path_len = q - auth_end;
    return 0;
}

static int request_line(rtsp_classify *r, rtsp_side *s, const char *line, size_t n)
{
    rtsp_msg *m = &s->msg;
    char tmp[48];
    const char *sp1 = memchr(line, ' ', n);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - line)) : NULL;
    if (n == 0)
        return die(r, "rtsp-request-line: empty line");
    if (!sp1 || !sp2 || sp1 == line || sp2 == sp1 + 1 || sp2 + 1 == line + n ||
        memchr(sp2 + 1, ' ', n - (size_t)(sp2 + 1 - line)))
        return die(r, "rtsp-request-line: not method SP URI SP version: %s",
                   show(tmp, sizeof(tmp), line, n));
    const char *ver = sp2 + 1;
    size_t vlen = n - (size_t)(ver - line);
    m->version = parse_version(ver, vlen);
    if (!m->version)
        return die(r, "rtsp-version: %s", show(tmp, sizeof(tmp), ver, vlen));
    for (const char *p = line; p < sp1; p++)
        if (!is_tchar((unsigned char)*p))
            return die(r, "rtsp-request-line: bad method");
    m->request = true;
    m->method_off = (size_t)(line - (const char *)s->head);
    m->method_len = (size_t)(sp1 - line);
    m->url_off = m->method_off + m->method_len + 1;
    m->url_len = (size_t)(sp2 - sp1 - 1);
    if (m->url_len == 1 && sp1[1] == '*') {
        m->star = true;
        if (!eq(line, m->method_len, "OPTIONS") && !eq(line, m->method_len, "GET_PARAMETER") &&
            !eq(line, m->method_len, "SET_PARAMETER"))
            return die(r, "rtsp-request-uri: '*' with %s",
                       show(tmp, sizeof(tmp), line, m->method_len));
        m->host_off = m->path_off = m->url_off;
        m->host_len = m->path_len = 0;
        return 0;
    }
    return parse_url(r, m, (const char *)s->head, m->url_off, m->url_len);
}

static int status_line(rtsp_classify *r, rtsp_side *s, const char *line, size_t n)
{
    rtsp_msg *m = &s->msg;
    char tmp[48];
    const char *sp = memchr(line, ' ', n);
    size_t vlen = sp ? (size_t)(sp - line) : n;
    m->version = parse_version(line, vlen);
    if (!m->version)
        return die(r, "rtsp-version: %s", show(tmp, sizeof(tmp), line, vlen));
    if (n < 13 || !is_digit((unsigned char)line[9]) || line[9] < '1' || line[9] > '5' ||
        !is_digit((unsigned char)line[10]) || !is_digit((unsigned char)line[11]) || line[12] != ' ')
        return die(r, "rtsp-status-line: %s", show(tmp, sizeof(tmp), line, n));
    for (size_t i = 13; i < n; i++)
        if (!is_text((unsigned char)line[i]))
            return die(r, "rtsp-status-line: control byte in reason phrase");
    m->request = false;
    m->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    return 0;
}

/* Digits only; at most maxdig of them. */
static int parse_number(const char *v, size_t n, size_t maxdig, uint64_t *out)
{
    uint64_t x = 0;
    if (n == 0 || n > maxdig)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit((unsigned char)v[i]))
            return -1;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    *out = x;
    return 0;
}

static int parse_channel(const char *v, size_t n, unsigned *out)
{
    uint64_t x;
    if (parse_number(v, n, 3, &x) != 0 || x > 255)
        return -1;
    *out = (unsigned)x;
    return 0;
}

/* Collects "interleaved=N[-M]" parameters of every transport spec. */
static int transport(rtsp_classify *r, rtsp_msg *m, const char *v, size_t n)
{
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && v[j] != ';' && v[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && is_ows((unsigned char)v[a]))
            a++;
        while (b > a && is_ows((unsigned char)v[b - 1]))
            b--;
        if (b - a >= 12 && ieq(v + a, 12, "interleaved=")) {
            const char *p = v + a + 12;
            size_t pl = b - a - 12;
            const char *dash = memchr(p, '-', pl);
            unsigned lo, hi;
            if (dash) {
                if (parse_channel(p, (size_t)(dash - p), &lo) != 0 ||
                    parse_channel(dash + 1, pl - (size_t)(dash + 1 - p), &hi) != 0 || hi < lo)
                    return die(r, "rtsp-header: bad interleaved channels in Transport");
            } else {
                if (parse_channel(p, pl, &lo) != 0)
                    return die(r, "rtsp-header: bad interleaved channels in Transport");
                hi = lo;
            }
            for (unsigned c = lo; c <= hi; c++)
                m->chan[c / 8] |= (uint8_t)(1u << (c % 8));
            if (!m->has_chan) {
                m->chan_lo = (uint8_t)lo;
                m->chan_hi = (uint8_t)hi;
            }
            m->has_chan = true;
        }
        i = j + 1;
    }
    return 0;
}

static int header_line(rtsp_classify *r, rtsp_side *s, const char *line, size_t n)
{
    rtsp_msg *m = &s->msg;
    if (is_ows((unsigned char)line[0]))
        return die(r, "rtsp-obs-fold: header line starts with whitespace");
    if (++m->headers > RTSP_MAX_HEADERS)
        return die(r, "rtsp-too-many-headers: more than %d", RTSP_MAX_HEADERS);
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)line[i]))
        i++;
    if (i == n)
        return die(r, "rtsp-header: no colon");
    if (line[i] != ':') {
        if (is_ows((unsigned char)line[i]))
            return die(r, "rtsp-header: whitespace before colon");
        return die(r, "rtsp-header: byte 0x%02x in field name", (unsigned char)line[i]);
    }
    if (i == 0)
        return die(r, "rtsp-header: empty field name");
    size_t a = i + 1, b = n;
    for (size_t k = a; k < n; k++)
        if (!is_text((unsigned char)line[k]))
            return die(r, "rtsp-header: control byte 0x%02x in field value",
                       (unsigned char)line[k]);
    while (a < b && is_ows((unsigned char)line[a]))
        a++;
    while (b > a && is_ows((unsigned char)line[b - 1]))
        b--;
    const char *v = line + a;
    size_t vl = b - a;
    uint64_t x;
    if (ieq(line, i, "CSeq")) {
        if (++m->ncseq > 1)
            return die(r, "rtsp-cseq: repeated");
        if (parse_number(v, vl, 10, &x) != 0 || x > UINT32_MAX)
            return die(r, "rtsp-cseq: not a number");
        m->cseq = (uint32_t)x;
    } else if (ieq(line, i, "Content-Length")) {
        if (++m->nclen > 1)
            return die(r, "rtsp-content-length: repeated");
        if (parse_number(v, vl, 19, &x) != 0)
            return die(r, "rtsp-content-length: not a number");
        if (x > RTSP_MAX_BODY)
            return die(r, "rtsp-content-length: %llu > %d", (unsigned long long)x, RTSP_MAX_BODY);
        m->clen = (uint32_t)x;
    } else if (ieq(line, i, "Transfer-Encoding")) {
        return die(r, "rtsp-header: Transfer-Encoding is not RTSP");
    } else if (ieq(line, i, "Transport")) {
        return transport(r, m, v, vl);
    }
    return 0;
}

static int start_line(rtsp_classify *r, rtsp_side *s, const char *line, size_t n)
{
    if (n >= 5 && memcmp(line, "RTSP/", 5) == 0)
        return status_line(r, s, line, n);
    return request_line(r, s, line, n);
}

/* Takes one head byte; 1 when the head is complete, 0 for more, -1 dead. */
static int head_byte(rtsp_classify *r, rtsp_side *s, uint8_t b)
{
    if (s->head_len >= RTSP_MAX_HEAD)
        return die(r, "rtsp-head-too-large: more than %d bytes", RTSP_MAX_HEAD);
    if (s->head_len == s->head_cap) {
        size_t cap = s->head_cap ? s->head_cap * 2 : 512;
        uint8_t *nh = realloc(s->head, cap);
        if (!nh)
            return die(r, "rtsp-no-memory: head buffer");
        s->head = nh;
        s->head_cap = cap;
    }
    uint8_t prev = s->head_len > s->line_start ? s->head[s->head_len - 1] : 0;
    if (b == 0)
        return die(r, "rtsp-nul: NUL byte in a head");
    if (prev == '\r' && b != '\n')
        return die(r, "rtsp-bare-cr: CR not followed by LF");
    if (b == '\n' && prev != '\r')
        return die(r, "rtsp-bare-lf: LF without CR");
    s->head[s->head_len++] = b;
    if (b == '\r')
        return 0;
    if (b != '\n') {
        size_t linelen = s->head_len - s->line_start;
        if (linelen > RTSP_MAX_LINE)
            return die(r, "rtsp-line-too-long: more than %d bytes", RTSP_MAX_LINE);
        /* The first token of a start line is checked byte by byte, so that
         * binary junk is refused at once instead of after a whole line. */
        if (s->lines == 0 && !s->first_token_done) {
            const char *tok = (const char *)s->head + s->line_start;
            if (b == ' ') {
                if (linelen == 1)
                    return die(r, "rtsp-request-line: starts with a space");
                s->first_token_done = true;
            } else if (b == '/') {
                char tmp[48];
                if (!eq(tok, linelen - 1, "RTSP"))
                    return die(r, "rtsp-version: %s", show(tmp, sizeof(tmp), tok, linelen));
            } else if (!is_tchar(b)) {
                return die(r, "rtsp-request-line: byte 0x%02x in method", b);
            }
        }
        return 0;
    }
    const char *line = (const char *)s->head + s->line_start;
    size_t n = s->head_len - 2 - s->line_start;
    s->line_start = s->head_len;
    if (s->lines++ == 0)
        return start_line(r, s, line, n) ? -1 : 0;
    if (n == 0)
        return 1;
    return header_line(r, s, line, n) ? -1 : 0;
}

static void merge_channels(rtsp_classify *r, const uint8_t chan[32])
{
    for (size_t i = 0; i < sizeof(r->channels); i++)
        r->channels[i] |= chan[i];
    r->interleaved = true;
}

/* Copies the request's strings behind the head and points r->req at them. */
static int request_info(rtsp_classify *r, rtsp_side *s, cls_dir dir)
{
    const rtsp_msg *m = &s->msg;
    size_t need = s->head_len + m->method_len + m->url_len + m->host_len + m->path_len + 4;
    uint8_t *nh = realloc(s->head, need);
    if (!nh)
        return die(r, "rtsp-no-memory: request info");
    s->head = nh;
    s->head_cap = need;
    char *p = (char *)nh + s->head_len;
    const char *h = (const char *)nh;
    r->req.method = p;
    memcpy(p, h + m->method_off, m->method_len);
    p += m->method_len;
    *p++ = '\0';
    r->req.url = p;
    memcpy(p, h + m->url_off, m->url_len);
    p += m->url_len;
    *p++ = '\0';
    r->req.host = p;
    for (size_t i = 0; i < m->host_len; i++)
        *p++ = (char)lower((unsigned char)h[m->host_off + i]);
    *p++ = '\0';
    r->req.path = p;
    memcpy(p, h + m->path_off, m->path_len);
    p += m->path_len;
    *p = '\0';
    r->req.version = m->version;
    r->req.dir = dir;
    r->req.port = m->port;
    r->req.cseq = m->cseq;
    r->req.content_length = m->clen;
    return 0;
}

static int head_done(rtsp_classify *r, rtsp_side *s, cls_dir dir)
{
    const rtsp_msg *m = &s->msg;
    if (m->ncseq == 0)
        return die(r, "rtsp-cseq: missing");
    if (m->request) {
        for (unsigned i = 0; i < s->nout; i++)
            if (s->out[i].cseq == m->cseq)
                return die(r, "rtsp-cseq: %u already outstanding", m->cseq);
        if (s->nout == RTSP_MAX_PIPELINE)
            return die(r, "rtsp-pipeline: more than %d requests outstanding", RTSP_MAX_PIPELINE);
        rtsp_pending *p = &s->out[s->nout++];
        p->cseq = m->cseq;
        p->setup = eq((const char *)s->head + m->method_off, m->method_len, "SETUP");
        p->has_chan = p->setup && m->has_chan;
        p->chan_lo = m->chan_lo;
        p->chan_hi = m->chan_hi;
        return request_info(r, s, dir);
    }
    rtsp_side *o = &r->side[dir == CLS_C2S ? CLS_S2C : CLS_C2S];
    unsigned i = 0;
    while (i < o->nout && o->out[i].cseq != m->cseq)
        i++;
    if (i == o->nout)
        return die(r, "rtsp-cseq: response %u answers no outstanding request", m->cseq);
    rtsp_pending p = o->out[i];
    if (m->status >= 200) {
        memmove(&o->out[i], &o->out[i + 1], (o->nout - i - 1) * sizeof(o->out[0]));
        o->nout--;
    }
    if (!p.setup || m->status / 100 != 2)
        return 0;
    if (m->has_chan) {
        merge_channels(r, m->chan);
    } else if (p.has_chan) {
        uint8_t chan[32] = {0};
        for (unsigned c = p.chan_lo; c <= p.chan_hi; c++)
            chan[c / 8] |= (uint8_t)(1u << (c % 8));
        merge_channels(r, chan);
    }
    return 0;
}

static void start_head(rtsp_side *s)
{
    s->st = RS_HEAD;
    s->head_len = 0;
    s->line_start = 0;
    s->lines = 0;
    s->first_token_done = false;
    memset(&s->msg, 0, sizeof(s->msg));
}

/* Heads whose event has been seen are not needed any more. */
static void release_done_heads(rtsp_classify *r)
{
    for (int i = 0; i < 2; i++)
        if (r->side[i].head && (r->side[i].st != RS_HEAD || r->dead))
            free_head(&r->side[i]);
    r->req = empty_info;
}

cls_verdict rtsp_classify_feed(rtsp_classify *r, cls_dir dir, const uint8_t *data, size_t len,
                               size_t *consumed)
{
    *consumed = 0;
    r->event = CLS_EV_NONE;
    release_done_heads(r);
    if (r->dead)
        return CLS_VIOLATES;
    dir = dir == CLS_C2S ? CLS_C2S : CLS_S2C;
    rtsp_side *s = &r->side[dir];
    if (s->pending_end) {
        s->pending_end = false;
        r->event = RTSP_EV_MESSAGE_END;
        return CLS_CONFORMS;
    }
    size_t pos = 0;
    while (pos < len) {
        switch (s->st) {
        case RS_IDLE:
            /* Bytes before pos conform (an interleaved frame ended). Stop
             * here unless the next unit's framing can be checked at once,
             * so a NEED_MORE never holds bytes that already conform. */
            if (pos > 0 && !(data[pos] == '$' && len - pos >= sizeof(s->fhdr))) {
                *consumed = pos;
                return CLS_CONFORMS;
            }
            if (data[pos] == '$') {
                if (!r->interleaved) {
                    *consumed = pos + 1;
                    die(r, "rtsp-interleaved: binary frame before an interleaved SETUP");
                    return CLS_VIOLATES;
                }
                s->st = RS_FRAME_HDR;
                s->fhdr_len = 0;
            } else {
                start_head(s);
            }
            break;
        case RS_HEAD: {
            int rc = 0;
            while (pos < len && rc == 0)
                rc = head_byte(r, s, data[pos++]);
            if (rc < 0 || (rc > 0 && head_done(r, s, dir) != 0)) {
                *consumed = pos;
                return CLS_VIOLATES;
            }
            if (rc == 0)
                break;
            uint32_t clen = s->msg.clen;
            s->body_left = clen;
            s->st = clen ? RS_BODY : RS_IDLE;
            if (s->msg.request) {
                s->pending_end = clen == 0;
                r->event = RTSP_EV_REQUEST;
                *consumed = pos;
                return CLS_CONFORMS;
            }
            if (clen == 0) {
                r->event = RTSP_EV_MESSAGE_END;
                *consumed = pos;
                return CLS_CONFORMS;
            }
            break;
        }
        case RS_BODY: {
            size_t n = len - pos < s->body_left ? len - pos : s->body_left;
            pos += n;
            s->body_left -= (uint32_t)n;
            if (s->body_left == 0) {
                s->st = RS_IDLE;
                r->event = RTSP_EV_MESSAGE_END;
                *consumed = pos;
                return CLS_CONFORMS;
            }
            break;
        }
        case RS_FRAME_HDR: {
            while (pos < len && s->fhdr_len < sizeof(s->fhdr))
                s->fhdr[s->fhdr_len++] = data[pos++];
            if (s->fhdr_len < sizeof(s->fhdr))
                break;
            unsigned ch = s->fhdr[1];
            unsigned flen = (unsigned)s->fhdr[2] << 8 | s->fhdr[3];
            if (!(r->channels[ch / 8] & (1u << (ch % 8))))
                die(r, "rtsp-interleaved: channel %u was not set up", ch);
            else if (flen < 4)
                die(r, "rtsp-interleaved: %u-byte frame", flen);
            else if ((s->fhdr[4] & 0xc0) != 0x80)
                die(r, "rtsp-interleaved: payload is not RTP or RTCP version 2");
            if (r->dead) {
                *consumed = pos;
                return CLS_VIOLATES;
            }
            s->frame_left = (uint16_t)(flen - 1);
            s->st = RS_FRAME_DATA;
            break;
        }
        case RS_FRAME_DATA: {
            size_t n = len - pos < s->frame_left ? len - pos : s->frame_left;
            pos += n;
            s->frame_left = (uint16_t)(s->frame_left - n);
            if (s->frame_left == 0)
                s->st = RS_IDLE;
            break;
        }
        }
    }
    *consumed = len;
    if (s->st == RS_HEAD || s->st == RS_FRAME_HDR)
        return CLS_NEED_MORE;
    return len ? CLS_CONFORMS : CLS_NEED_MORE;
}

cls_verdict rtsp_classify_finish(rtsp_classify *r, cls_dir dir)
{
    r->event = CLS_EV_NONE;
    if (r->dead)
        return CLS_VIOLATES;
    const rtsp_side *s = &r->side[dir == CLS_C2S ? CLS_C2S : CLS_S2C];
    switch (s->st) {
    case RS_IDLE: return CLS_CONFORMS;
    case RS_HEAD: die(r, "rtsp-truncated: stream ended inside a head"); break;
    case RS_BODY: die(r, "rtsp-truncated: %u body bytes missing", s->body_left); break;
    case RS_FRAME_HDR:
    case RS_FRAME_DATA: die(r, "rtsp-truncated: stream ended inside an interleaved frame"); break;
    }
    return CLS_VIOLATES;
}

int rtsp_classify_event(const rtsp_classify *r)
{
    return r->event;
}

const char *rtsp_classify_reason(const rtsp_classify *r)
{
    return r->dead ? r->reason : NULL;
}

const rtsp_request_info *rtsp_classify_request(const rtsp_classify *r)
{
    return &r->req;
}

CLS_DEFINE_OPS(rtsp);
