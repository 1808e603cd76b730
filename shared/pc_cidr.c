/* pc_cidr.c - IPv4/IPv6 prefixes and longest-prefix sets of them.
 *
 * A set keeps, per address family and prefix length, a small open-addressing
 * hash table of network addresses. A lookup masks the address to each length
 * present, longest first, and probes that table, so it costs at most one probe
 * per distinct length (a few in practice) and adding stays O(1) amortised:
 * lists of tens of thousands of prefixes build in milliseconds.
 */
#include "pc_cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Quotes at most 64 bytes of s, printable only, so a hostile string cannot
 * flood or corrupt a log line. */
static const char *quote(char *q, size_t qlen, const char *s)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 5 < qlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 64) {
            memcpy(q + j, "...", 3);
            j += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\'') {
            q[j++] = (char)c;
        } else {
            snprintf(q + j, qlen - j, "\\x%02x", c);
            j += 4;
        }
    }
    q[j] = '\0';
    return q;
}

static void mask_bits(uint8_t *addr, unsigned bits, unsigned total)
{
    for (unsigned i = 0; i < total / 8; i++) {
        unsigned lo = i * 8;
        if (bits >= lo + 8)
            continue;
        if (bits <= lo)
            addr[i] = 0;
        else
            addr[i] &= (uint8_t)(0xffu << (8 - (bits - lo)));
    }
}

int pc_cidr_parse(const char *s, pc_cidr *out, char *err, size_t errlen)
{
    char buf[64];
    const char *slash;
    size_t alen;
    unsigned bits = 0, max;
    bool has_len;
    pc_cidr c;

    char q[80];

    if (!s || !out) {
        snprintf(err, err ? errlen : 0, "'' is not an address prefix");
        return -1;
    }
    memset(&c, 0, sizeof(c));
    slash = strchr(s, '/');
    alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= sizeof(buf))
        goto bad;
    memcpy(buf, s, alen);
    buf[alen] = '\0';

    if (inet_pton(AF_INET, buf, c.addr) == 1) {
        c.family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, c.addr) == 1) {
        c.family = AF_INET6;
        max = 128;
    } else {
        goto bad;
    }

    has_len = slash != NULL;
    if (has_len) {
        const char *d = slash + 1;
        size_t n = strlen(d);
        /* Decimal only: no sign, no spaces, no leading zero ("/024"). */
        if (n == 0 || n > 3 || (n > 1 && d[0] == '0'))
            goto bad;
        for (size_t i = 0; i < n; i++) {
            if (d[i] < '0' || d[i] > '9')
                goto bad;
            bits = bits * 10 + (unsigned)(d[i] - '0');
        }
        if (bits > max) {
            snprintf(err, err ? errlen : 0, "'%s': prefix length must be 0..%u",
                     quote(q, sizeof(q), s), max);
            return -1;
        }
    } else {
        bits = max;
    }

    {
        uint8_t masked[16];
        memcpy(masked, c.addr, sizeof(masked));
        mask_bits(masked, bits, max);
        if (memcmp(masked, c.addr, max / 8) != 0) {
            char net[INET6_ADDRSTRLEN];
            inet_ntop(c.family, masked, net, sizeof(net));
            snprintf(err, err ? errlen : 0, "'%s': host bits set (the network is %s/%u)",
                     quote(q, sizeof(q), s), net, bits);
            return -1;
        }
    }

    /* An IPv4-mapped IPv6 prefix (::ffff:192.0.2.0/120) is the IPv4 prefix
     * it spells, so it matches the IPv4 addresses the kernel reports. */
    if (c.family == AF_INET6 && bits >= 96 && memcmp(c.addr, v4mapped_prefix, 12) == 0) {
        uint8_t v4[4];
        memcpy(v4, c.addr + 12, 4);
        memset(c.addr, 0, sizeof(c.addr));
        memcpy(c.addr, v4, 4);
        c.family = AF_INET;
        bits -= 96;
    }
    c.bits = (uint8_t)bits;
    *out = c;
    return 0;

bad:
    snprintf(err, err ? errlen : 0, "'%s' is not an address prefix", quote(q, sizeof(q), s));
    return -1;
}

void pc_cidr_format(const pc_cidr *c, char *buf, size_t buflen)
{
    char a[INET6_ADDRSTRLEN];
    if (!buf || buflen == 0)
        return;
    if (!c || (c->family != AF_INET && c->family != AF_INET6) ||
        !inet_ntop(c->family, c->addr, a, sizeof(a))) {
        snprintf(buf, buflen, "?");
        return;
    }
    snprintf(buf, buflen, "%s/%u", a, (unsigned)c->bits);
}

/* The family and address bytes of a socket address, IPv4-mapped IPv6
 * addresses reported as IPv4. Returns false for anything else. */
static bool sockaddr_bytes(const struct sockaddr *sa, uint8_t *family, uint8_t addr[16])
{
    if (!sa)
        return false;
    memset(addr, 0, 16);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        memcpy(addr, &in->sin_addr, 4);
        *family = AF_INET;
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        const uint8_t *b = in6->sin6_addr.s6_addr;
        if (memcmp(b, v4mapped_prefix, 12) == 0) {
            memcpy(addr, b + 12, 4);
            *family = AF_INET;
        } else {
            memcpy(addr, b, 16);
            *family = AF_INET6;
        }
        return true;
    }
    return false;
}

static bool prefix_match(const uint8_t *net, const uint8_t *addr, unsigned bits)
{
    unsigned full = bits / 8, rest = bits % 8;
    if (memcmp(net, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t m = (uint8_t)(0xffu << (8 - rest));
    return (net[full] & m) == (addr[full] & m);
}

bool pc_cidr_contains(const pc_cidr *c, const struct sockaddr *addr)
{
    uint8_t fam, a[16];
    if (!c || !sockaddr_bytes(addr, &fam, a) || fam != c->family)
        return false;
    return prefix_match(c->addr, a, c->bits);
}

/* --- sets ---------------------------------------------------------------- */

typedef struct cidr_slot {
    uint8_t used;
    uint8_t addr[16];
    intptr_t value;
} cidr_slot;

typedef struct cidr_table {
    size_t cap; /* power of two, or 0 */
    size_t n;
    cidr_slot *slots;
} cidr_table;

typedef struct cidr_family {
    unsigned maxbits;       /* 32 or 128 */
    uint8_t present[17];    /* bitmap of prefix lengths with entries */
    cidr_table tables[129]; /* indexed by prefix length */
} cidr_family;

struct pc_cidrset {
    cidr_family v4, v6;
    size_t count;
};

static uint32_t addr_hash(const uint8_t *addr, unsigned bits)
{
    uint32_t h = 2166136261u;
    for (unsigned i = 0; i < (bits + 7) / 8; i++) {
        h ^= addr[i];
        h *= 16777619u;
    }
    h ^= bits;
    h *= 16777619u;
    return h;
}

pc_cidrset *pc_cidrset_new(void)
{
    pc_cidrset *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->v4.maxbits = 32;
    s->v6.maxbits = 128;
    return s;
}

void pc_cidrset_free(pc_cidrset *s)
{
    if (!s)
        return;
    for (unsigned b = 0; b <= 128; b++) {
        free(s->v4.tables[b].slots);
        free(s->v6.tables[b].slots);
    }
    free(s);
}

/* Finds addr in t: its slot, or the empty slot where it would go. */
static cidr_slot *table_find(const cidr_table *t, const uint8_t *addr, unsigned bits)
{
    size_t mask = t->cap - 1;
    size_t i = addr_hash(addr, bits) & mask;
    size_t nb = (bits + 7) / 8;
    for (;;) {
        cidr_slot *sl = &t->slots[i];
        if (!sl->used || memcmp(sl->addr, addr, nb) == 0)
            return sl;
        i = (i + 1) & mask;
    }
}

static int table_grow(cidr_table *t, unsigned bits)
{
    size_t ncap = t->cap ? t->cap * 2 : 8;
    cidr_table nt = {ncap, 0, calloc(ncap, sizeof(cidr_slot))};
    if (!nt.slots)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].used)
            continue;
        cidr_slot *d = table_find(&nt, t->slots[i].addr, bits);
        *d = t->slots[i];
        nt.n++;
    }
    free(t->slots);
    *t = nt;
    return 0;
}

int pc_cidrset_add(pc_cidrset *s, const pc_cidr *c, intptr_t value)
{
    if (!s || !c)
        return -1;
    cidr_family *f;
    if (c->family == AF_INET && c->bits <= 32)
        f = &s->v4;
    else if (c->family == AF_INET6 && c->bits <= 128)
        f = &s->v6;
    else
        return -1;
    uint8_t net[16];
    memcpy(net, c->addr, sizeof(net));
    mask_bits(net, c->bits, f->maxbits);
    if (f->maxbits == 32)
        memset(net + 4, 0, 12);
    cidr_table *t = &f->tables[c->bits];
    /* Keep the load factor at or under one half. */
    if ((t->n + 1) * 2 > t->cap && table_grow(t, c->bits) != 0)
        return -1;
    cidr_slot *sl = table_find(t, net, c->bits);
    if (sl->used)
        return 0; /* the first value stays */
    sl->used = 1;
    memcpy(sl->addr, net, sizeof(sl->addr));
    sl->value = value;
    t->n++;
    f->present[c->bits / 8] |= (uint8_t)(1u << (c->bits % 8));
    s->count++;
    return 0;
}

bool pc_cidrset_lookup(const pc_cidrset *s, const struct sockaddr *addr, intptr_t *value,
                       pc_cidr *match)
{
    uint8_t fam, a[16];
    if (!s || !sockaddr_bytes(addr, &fam, a))
        return false;
    const cidr_family *f = fam == AF_INET ? &s->v4 : &s->v6;
    for (int b = (int)f->maxbits; b >= 0; b--) {
        if (!(f->present[b / 8] & (1u << (b % 8))))
            continue;
        uint8_t net[16];
        memcpy(net, a, sizeof(net));
        mask_bits(net, (unsigned)b, f->maxbits);
        const cidr_table *t = &f->tables[b];
        const cidr_slot *sl = table_find(t, net, (unsigned)b);
        if (!sl->used)
            continue;
        if (value)
            *value = sl->value;
        if (match) {
            memset(match, 0, sizeof(*match));
            match->family = fam;
            match->bits = (uint8_t)b;
            memcpy(match->addr, sl->addr, f->maxbits / 8);
        }
        return true;
    }
    return false;
}

bool pc_cidrset_get(const pc_cidrset *s, const pc_cidr *c, intptr_t *value)
{
    if (!s || !c)
        return false;
    const cidr_family *f;
    if (c->family == AF_INET && c->bits <= 32)
        f = &s->v4;
    else if (c->family == AF_INET6 && c->bits <= 128)
        f = &s->v6;
    else
        return false;
    const cidr_table *t = &f->tables[c->bits];
    if (t->n == 0)
        return false;
    uint8_t net[16];
    memcpy(net, c->addr, sizeof(net));
    mask_bits(net, c->bits, f->maxbits);
    if (f->maxbits == 32)
        memset(net + 4, 0, 12);
    const cidr_slot *sl = table_find(t, net, c->bits);
    if (!sl->used)
        return false;
    if (value)
        *value = sl->value;
    return true;
}

size_t pc_cidrset_count(const pc_cidrset *s)
{
    return s ? s->count : 0;
}
