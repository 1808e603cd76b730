/* firewall.c - the node's firewall (docs/firewall.md): the pure generator
 * from a policy's firewall part to nftables text, and the few libnftables
 * calls that load, check, list and remove the one table Portcullis owns.
 *
 * The generator decides everything; libnftables only ever gets a whole
 * table in one buffer, so the kernel commits all of it or none of it.
 */
#include "firewall.h"

#include "pc_buf.h"

#include <endian.h>
#include <errno.h>
#include <netinet/in.h>
/* After netinet/in.h, whose definitions the kernel headers then reuse. */
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <nftables/libnftables.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Set elements the whitelist may turn into once overlapping entries are
 * split apart; only overlaps of pathological shape come near it. */
#define FW_MAX_ELEMS 100000
#define FW_LOG_LIMIT "log_drops"

static const char *const fw_counter_names[] = {
    "drop_inbound", "drop_spoofed", "drop_dns", "drop_high_ports", "drop_default",
};
#define FW_NCOUNTERS (sizeof(fw_counter_names) / sizeof(fw_counter_names[0]))

/* --- text ----------------------------------------------------------------- */

/* --- prefixes and port ranges --------------------------------------------- */

static size_t addr_len(const pc_cidr *c)
{
    return c->family == AF_INET ? 4 : 16;
}

/* Family, then address, then length: a prefix sorts before every prefix
 * it contains (pre-order of the containment forest). */
static int cidr_cmp(const pc_cidr *a, const pc_cidr *b)
{
    if (a->family != b->family)
        return a->family == AF_INET ? -1 : 1;
    int r = memcmp(a->addr, b->addr, addr_len(a));
    if (r)
        return r;
    return (int)a->bits - (int)b->bits;
}

static int cidr_qcmp(const void *a, const void *b)
{
    return cidr_cmp(a, b);
}

/* Whether p contains q (or is q). */
static bool cidr_contains(const pc_cidr *p, const pc_cidr *q)
{
    if (p->family != q->family || p->bits > q->bits)
        return false;
    size_t full = p->bits / 8, rest = p->bits % 8;
    if (memcmp(p->addr, q->addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (p->addr[full] & mask) == (q->addr[full] & mask);
}

/* Sorts v and drops every prefix another one contains: nftables refuses
 * overlapping intervals in one set. Returns the count kept. */
static size_t cidr_normalize(pc_cidr *v, size_t n)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cidr_qcmp);
    size_t kept = 1;
    for (size_t i = 1; i < n; i++) {
        /* In this order a prefix inside any kept one is inside the last. */
        if (cidr_contains(&v[kept - 1], &v[i]))
            continue;
        v[kept++] = v[i];
    }
    return kept;
}

typedef struct range {
    unsigned lo, hi;
} range;

static int range_cmp(const void *a, const void *b)
{
    const range *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return x->hi < y->hi ? -1 : (x->hi > y->hi);
}

/* Merges sorted ranges in place, joining overlapping and adjacent ones. */
static size_t ranges_merge(range *r, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k && r[i].lo <= r[k - 1].hi + 1) {
            if (r[i].hi > r[k - 1].hi)
                r[k - 1].hi = r[i].hi;
        } else {
            r[k++] = r[i];
        }
    }
    return k;
}

/* --- the whitelist ---------------------------------------------------------- */

/* One element of allow4/allow6: prefix . proto . port range. */
typedef struct fw_elem {
    pc_cidr net;
    uint8_t proto;
    range ports;
} fw_elem;

static int elem_cmp_build(const void *a, const void *b)
{
    const fw_elem *x = a, *y = b;
    if (x->net.family != y->net.family)
        return x->net.family == AF_INET ? -1 : 1;
    if (x->proto != y->proto)
        return x->proto < y->proto ? -1 : 1;
    int r = cidr_cmp(&x->net, &y->net);
    return r ? r : range_cmp(&x->ports, &y->ports);
}

static int elem_cmp_out(const void *a, const void *b)
{
    const fw_elem *x = a, *y = b;
    int r = cidr_cmp(&x->net, &y->net);
    if (r)
        return r;
    if (x->proto != y->proto)
        return x->proto < y->proto ? -1 : 1;
    return range_cmp(&x->ports, &y->ports);
}

/* A prefix of the containment forest being walked: its own merged port
 * ranges and, once it has a child, eff = its ranges and its ancestors'. */
typedef struct frame {
    pc_cidr net;
    range *own;
    size_t nown;
    range *eff;
    size_t neff;
    bool eff_ready;
} frame;

typedef struct elems {
    fw_elem *v;
    size_t n, cap;
} elems;

static int elems_push(elems *e, const pc_cidr *net, uint8_t proto, range r)
{
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 256;
        fw_elem *nv = realloc(e->v, cap * sizeof(*nv));
        if (!nv)
            return -1;
        e->v = nv;
        e->cap = cap;
    }
    e->v[e->n++] = (fw_elem){*net, proto, r};
    return 0;
}

/* a ∪ b of two merged lists into a new merged list. */
static int ranges_union(const range *a, size_t na, const range *b, size_t nb, range **out,
                        size_t *nout)
{
    range *r = malloc((na + nb ? na + nb : 1) * sizeof(*r));
    if (!r)
        return -1;
    size_t i = 0, j = 0, k = 0;
    while (i < na || j < nb) {
        range next = (j >= nb || (i < na && a[i].lo <= b[j].lo)) ? a[i++] : b[j++];
        if (k && next.lo <= r[k - 1].hi + 1) {
            if (next.hi > r[k - 1].hi)
                r[k - 1].hi = next.hi;
        } else {
            r[k++] = next;
        }
    }
    *out = r;
    *nout = k;
    return 0;
}

/* Emits own minus eff (both merged) as elements of net. */
static int emit_difference(elems *e, const pc_cidr *net, uint8_t proto, const range *own,
                           size_t nown, const range *eff, size_t neff)
{
    for (size_t i = 0; i < nown; i++) {
        unsigned cur = own[i].lo, end = own[i].hi;
        /* The first eff range that ends at or after cur. */
        size_t lo = 0, hi = neff;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (eff[mid].hi < cur)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t k = lo; k < neff && eff[k].lo <= end && cur <= end; k++) {
            if (eff[k].lo > cur && elems_push(e, net, proto, (range){cur, eff[k].lo - 1}) != 0)
                return -1;
            cur = eff[k].hi + 1;
        }
        if (cur <= end && elems_push(e, net, proto, (range){cur, end}) != 0)
            return -1;
    }
    return 0;
}

static void frame_free(frame *f)
{
    free(f->own);
    free(f->eff);
}

/* Turns entries that may overlap (one family and protocol, sorted by
 * elem_cmp_build) into elements that do not, covering the same packets.
 * Prefixes nest or are disjoint, so they form a forest; an element of a
 * prefix covers all its descendants too, so each prefix emits only the
 * ports its ancestors' elements do not already cover. A chain is at most
 * 129 prefixes deep (one per length). */
static int decompose(const fw_elem *in, size_t n, elems *out)
{
    frame stack[130];
    size_t depth = 0;
    int rc = -1;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && cidr_cmp(&in[j].net, &in[i].net) == 0)
            j++;
        range *own = malloc((j - i) * sizeof(*own));
        if (!own)
            goto done;
        for (size_t k = i; k < j; k++)
            own[k - i] = in[k].ports;
        size_t nown = ranges_merge(own, j - i);

        while (depth && !cidr_contains(&stack[depth - 1].net, &in[i].net))
            frame_free(&stack[--depth]);
        const range *peff = NULL;
        size_t npeff = 0;
        if (depth) {
            frame *parent = &stack[depth - 1];
            if (!parent->eff_ready) {
                const range *gp = depth > 1 ? stack[depth - 2].eff : NULL;
                size_t ngp = depth > 1 ? stack[depth - 2].neff : 0;
                if (ranges_union(gp, ngp, parent->own, parent->nown, &parent->eff, &parent->neff) !=
                    0) {
                    free(own);
                    goto done;
                }
                parent->eff_ready = true;
            }
            peff = parent->eff;
            npeff = parent->neff;
        }
        if (emit_difference(out, &in[i].net, in[i].proto, own, nown, peff, npeff) != 0 ||
            depth == sizeof(stack) / sizeof(stack[0])) {
            free(own);
            goto done;
        }
        stack[depth++] = (frame){.net = in[i].net, .own = own, .nown = nown};
        if (out->n > FW_MAX_ELEMS)
            goto done;
        i = j;
    }
    rc = 0;
done:
    while (depth)
        frame_free(&stack[--depth]);
    return rc;
}

/* The whitelist of fw as non-overlapping elements, in output order. */
static int build_allow(const pc_firewall *fw, elems *out, char *err, size_t errlen)
{
    elems raw = {0};
    int rc = -1;
    for (size_t a = 0; a < fw->nallow; a++) {
        const pc_fw_allow *al = &fw->allow[a];
        for (size_t d = 0; d < al->ndevices; d++)
            for (size_t p = 0; p < al->nports; p++)
                if (elems_push(&raw, &al->devices[d], al->proto,
                               (range){al->ports[p].lo, al->ports[p].hi}) != 0)
                    goto oom;
    }
    if (raw.n)
        qsort(raw.v, raw.n, sizeof(*raw.v), elem_cmp_build);
    for (size_t i = 0; i < raw.n;) {
        size_t j = i;
        while (j < raw.n && raw.v[j].net.family == raw.v[i].net.family &&
               raw.v[j].proto == raw.v[i].proto)
            j++;
        if (decompose(raw.v + i, j - i, out) != 0) {
            if (out->n > FW_MAX_ELEMS) {
                snprintf(err, errlen,
                         "$.firewall.allow: the entries overlap into more than %d set elements; "
                         "give nested device prefixes fewer distinct ports",
                         FW_MAX_ELEMS);
                goto done;
            }
            goto oom;
        }
        i = j;
    }
    if (out->n)
        qsort(out->v, out->n, sizeof(*out->v), elem_cmp_out);
    rc = 0;
    goto done;
oom:
    snprintf(err, errlen, "firewall: out of memory");
done:
    free(raw.v);
    return rc;
}

/* --- the generator ---------------------------------------------------------- */

static bool ifname_ok(const char *s)
{
    if (!s || !*s)
        return false;
    for (const char *c = s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == '.' || *c == '-'))
            return false;
    return true;
}

static const char *proto_name(uint8_t proto)
{
    return proto == IPPROTO_TCP ? "tcp" : "udp";
}

/* set NAME of addresses of family from v (normalized copy). */
static int emit_addr_set(pc_buf *b, const char *name, int family, const pc_cidr *v, size_t n)
{
    pc_cidr *w = malloc((n ? n : 1) * sizeof(*w));
    if (!w)
        return -1;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i].family == family)
            w[m++] = v[i];
    m = cidr_normalize(w, m);
    pc_buf_printf(b, "\tset %s {\n\t\ttype %s; flags interval\n", name,
                  family == AF_INET ? "ipv4_addr" : "ipv6_addr");
    if (m) {
        pc_buf_printf(b, "\t\telements = {");
        for (size_t i = 0; i < m; i++) {
            char txt[64];
            pc_cidr_format(&w[i], txt, sizeof(txt));
            pc_buf_printf(b, "%s %s", i ? "," : "", txt);
        }
        pc_buf_printf(b, " }\n");
    }
    pc_buf_printf(b, "\t}\n");
    free(w);
    return 0;
}

static void emit_allow_set(pc_buf *b, const char *name, int family, const elems *e)
{
    pc_buf_printf(b, "\tset %s {\n\t\ttype %s . inet_proto . inet_service; flags interval\n", name,
                  family == AF_INET ? "ipv4_addr" : "ipv6_addr");
    size_t shown = 0;
    for (size_t i = 0; i < e->n; i++) {
        const fw_elem *x = &e->v[i];
        if (x->net.family != family)
            continue;
        char txt[64];
        pc_cidr_format(&x->net, txt, sizeof(txt));
        pc_buf_printf(b, "%s\t\t\t%s . %s . %u", shown ? ",\n" : "\t\telements = {\n", txt,
                      proto_name(x->proto), x->ports.lo);
        if (x->ports.hi != x->ports.lo)
            pc_buf_printf(b, "-%u", x->ports.hi);
        shown++;
    }
    if (shown)
        pc_buf_printf(b, "\n\t\t}\n");
    pc_buf_printf(b, "\t}\n");
}

/* "# allow[3] mail: tcp 25 from 192.0.2.25/32" (at most 4 of each). */
static void emit_allow_comment(pc_buf *b, size_t idx, const pc_fw_allow *a)
{
    pc_buf_printf(b, "\t# allow[%zu]%s%s: %s", idx, a->name[0] ? " " : "", a->name,
                  proto_name(a->proto));
    for (size_t i = 0; i < a->nports && i < 4; i++) {
        pc_buf_printf(b, "%s%u", i ? ", " : " ", a->ports[i].lo);
        if (a->ports[i].hi != a->ports[i].lo)
            pc_buf_printf(b, "-%u", a->ports[i].hi);
    }
    if (a->nports > 4)
        pc_buf_printf(b, ", ... (%zu port entries)", a->nports);
    pc_buf_printf(b, " from");
    for (size_t i = 0; i < a->ndevices && i < 4; i++) {
        char txt[64];
        pc_cidr_format(&a->devices[i], txt, sizeof(txt));
        pc_buf_printf(b, "%s%s", i ? ", " : " ", txt);
    }
    if (a->ndevices > 4)
        pc_buf_printf(b, ", ... (%zu devices)", a->ndevices);
    pc_buf_printf(b, "\n");
}

/* A drop rule: match (may be "") counted by counter, logged first when
 * logging is on. A limit in the dropping rule itself would let packets
 * over the rate fall through to later rules, so the log is its own rule. */
static void emit_drop(pc_buf *b, bool log, const char *match, const char *counter)
{
    const char *sep = match[0] ? " " : "";
    if (log)
        pc_buf_printf(b, "\t\t%s%slimit name %s log prefix \"portcullis drop %s: \"\n", match, sep,
                      FW_LOG_LIMIT, counter);
    pc_buf_printf(b, "\t\t%s%scounter name %s drop\n", match, sep, counter);
}

int fw_generate(const pc_policy *p, const fw_local *local, char **out, char *err, size_t errlen)
{
    pc_policy *builtin = NULL;
    elems allow = {0};
    pc_buf b = {0};
    int rc = -1;
    char tmp[8];
    if (!err || errlen == 0) {
        err = tmp;
        errlen = sizeof(tmp);
    }
    err[0] = '\0';
    if (!out || !local) {
        snprintf(err, errlen, "firewall: nothing to generate");
        return -1;
    }
    *out = NULL;

    if (local->nifaces == 0 || local->nifaces > FW_MAX_IFACES) {
        snprintf(err, errlen, "--lan-interface: the firewall needs 1 to %d LAN interfaces",
                 FW_MAX_IFACES);
        goto done;
    }
    for (size_t i = 0; i < local->nifaces; i++) {
        /* The length is left to nftables, which names its limit. */
        if (!ifname_ok(local->lan_ifaces[i])) {
            snprintf(err, errlen,
                     "--lan-interface '%.64s': an interface name is letters, digits, '_', '.' "
                     "and '-'",
                     local->lan_ifaces[i] ? local->lan_ifaces[i] : "");
            goto done;
        }
    }

    const pc_policy *ports_of = p;
    const pc_firewall *fw = pc_policy_firewall(p);
    const char *where = "$.firewall";
    if (!p) {
        builtin = pc_policy_builtin();
        if (!builtin) {
            snprintf(err, errlen, "firewall: the built-in policy does not load");
            goto done;
        }
        ports_of = builtin;
    }
    if (!fw || pc_policy_is_builtin(p)) {
        if (!builtin && !(builtin = pc_policy_builtin())) {
            snprintf(err, errlen, "firewall: the built-in policy does not load");
            goto done;
        }
        fw = pc_policy_firewall(builtin);
        where = "the built-in firewall";
        if (!fw) {
            snprintf(err, errlen, "firewall: the built-in policy has no firewall part");
            goto done;
        }
    }
    bool transparent = fw->web == PC_FW_WEB_TRANSPARENT;
    if (transparent && local->proxy_port == 0) {
        if (where[0] == '$')
            snprintf(err, errlen,
                     "$.firewall.web: 'transparent' redirects LAN web traffic to this node's "
                     "proxy: start it with --transparent and a fixed --listen port");
        else
            snprintf(err, errlen,
                     "the built-in firewall redirects LAN web traffic to this node's proxy: "
                     "start it with --transparent and a fixed --listen port");
        goto done;
    }
    if (build_allow(fw, &allow, err, errlen) != 0)
        goto done;
    bool log = fw->log_per_minute > 0;

    pc_buf_printf(&b,
                  "# portcullis-node firewall (docs/firewall.md): policy version %llu, %s\n"
                  "# This text is loaded as one transaction: the old table goes with the new one "
                  "in.\n",
                  (unsigned long long)pc_policy_version(ports_of),
                  where[0] == '$' ? "its firewall part" : "the built-in firewall");
    pc_buf_printf(&b, "table inet %s\ndelete table inet %s\ntable inet %s {\n", FW_TABLE, FW_TABLE,
                  FW_TABLE);
    for (size_t i = 0; i < FW_NCOUNTERS; i++)
        pc_buf_printf(&b, "\tcounter %s { packets 0 bytes 0 }\n", fw_counter_names[i]);
    if (log)
        pc_buf_printf(&b, "\tlimit %s { rate %u/minute }\n", FW_LOG_LIMIT, fw->log_per_minute);

    pc_buf_printf(&b, "\tset lan_ifaces {\n\t\ttype ifname\n\t\telements = {");
    for (size_t i = 0; i < local->nifaces; i++)
        pc_buf_printf(&b, "%s \"%s\"", i ? "," : "", local->lan_ifaces[i]);
    pc_buf_printf(&b, " }\n\t}\n");
    if (emit_addr_set(&b, "lan4", AF_INET, fw->lan, fw->nlan) != 0 ||
        emit_addr_set(&b, "lan6", AF_INET6, fw->lan, fw->nlan) != 0 ||
        emit_addr_set(&b, "dns4", AF_INET, fw->dns, fw->ndns) != 0 ||
        emit_addr_set(&b, "dns6", AF_INET6, fw->dns, fw->ndns) != 0 ||
        emit_addr_set(&b, "web4", AF_INET, fw->web_devices, fw->nweb_devices) != 0 ||
        emit_addr_set(&b, "web6", AF_INET6, fw->web_devices, fw->nweb_devices) != 0)
        b.oom = true;

    uint16_t ports[64];
    size_t nports = pc_policy_ports(ports_of, ports, 64);
    uint16_t *allports = ports;
    if (nports > 64) {
        allports = malloc(nports * sizeof(*allports));
        if (!allports) {
            b.oom = true;
            nports = 0;
        } else {
            pc_policy_ports(ports_of, allports, nports);
        }
    }
    pc_buf_printf(&b, "\tset web_ports {\n\t\ttype inet_service\n");
    for (size_t i = 0; i < nports; i++)
        pc_buf_printf(&b, "%s%u", i ? ", " : "\t\telements = { ", allports[i]);
    pc_buf_printf(&b, "%s\t}\n", nports ? " }\n" : "");
    if (allports != ports)
        free(allports);

    for (size_t i = 0; i < fw->nallow; i++)
        emit_allow_comment(&b, i, &fw->allow[i]);
    emit_allow_set(&b, "allow4", AF_INET, &allow);
    emit_allow_set(&b, "allow6", AF_INET6, &allow);

    pc_buf_printf(&b, "\tchain forward {\n"
                      "\t\ttype filter hook forward priority filter; policy drop;\n"
                      "\t\tct state established,related accept\n");
    emit_drop(&b, log, "iifname != @lan_ifaces", "drop_inbound");
    if (fw->nlan) {
        emit_drop(&b, log, "ip saddr != @lan4", "drop_spoofed");
        emit_drop(&b, log, "ip6 saddr != @lan6", "drop_spoofed");
    }
    pc_buf_printf(&b, "\t\tip saddr . meta l4proto . th dport @allow4 accept\n"
                      "\t\tip6 saddr . meta l4proto . th dport @allow6 accept\n");
    if (fw->dns_any) {
        pc_buf_printf(&b, "\t\tmeta l4proto { tcp, udp } th dport 53 accept\n");
    } else {
        pc_buf_printf(&b, "\t\tmeta l4proto { tcp, udp } th dport 53 ip daddr @dns4 accept\n"
                          "\t\tmeta l4proto { tcp, udp } th dport 53 ip6 daddr @dns6 accept\n");
        emit_drop(&b, log, "meta l4proto { tcp, udp } th dport 53", "drop_dns");
    }
    if (!transparent)
        pc_buf_printf(&b, "\t\tip saddr @web4 tcp dport @web_ports accept\n"
                          "\t\tip6 saddr @web6 tcp dport @web_ports accept\n");
    if (fw->high_ports_block) {
        char match[96];
        snprintf(match, sizeof(match), "meta l4proto { tcp, udp } th dport >= %u",
                 fw->high_ports_from);
        emit_drop(&b, log, match, "drop_high_ports");
    }
    emit_drop(&b, log, "", "drop_default");
    pc_buf_printf(&b, "\t}\n");

    if (transparent)
        pc_buf_printf(&b,
                      "\tchain prerouting {\n"
                      "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
                      "\t\tiifname @lan_ifaces tcp dport @web_ports redirect to :%u\n"
                      "\t}\n",
                      local->proxy_port);
    pc_buf_printf(&b, "}\n");
    if (b.oom) {
        snprintf(err, errlen, "firewall: out of memory");
        goto done;
    }
    *out = b.p;
    b.p = NULL;
    rc = 0;
done:
    pc_buf_free(&b);
    free(allow.v);
    pc_policy_unref(builtin);
    return rc;
}

/* --- libnftables ------------------------------------------------------------ */

/* Writes all of buf to fd. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The text under the carets nftables prints below the echoed command: in
 * a buffer of thousands of lines, "at" says which part it refused. */
static void caret_text(const char *src, size_t srclen, const char *carets, size_t clen, char *out,
                       size_t outlen)
{
    out[0] = '\0';
    size_t start = 0;
    while (start < clen && carets[start] != '^')
        start++;
    size_t end = start;
    while (end < clen && carets[end] == '^')
        end++;
    if (start >= clen || end > srclen)
        return;
    size_t n = end - start;
    snprintf(out, outlen, " (at: %.*s%s)", (int)(n > 80 ? 80 : n), src + start,
             n > 80 ? "..." : "");
}

/* nftables' message in one line: its "Error:" lines, each with the text
 * it points at (the echoed command and the carets are dropped), else all
 * of its lines. */
static void nft_message(const char *buf, const char *path, char *err, size_t errlen)
{
    size_t used = 0, plen = strlen(path);
    err[0] = '\0';
    if (!buf)
        buf = "";
    for (int pass = 0; pass < 2 && used == 0; pass++) {
        const char *line = buf;
        while (*line) {
            const char *nl = strchr(line, '\n');
            size_t len = nl ? (size_t)(nl - line) : strlen(line);
            bool take = pass == 1 ? len > 0 : memmem(line, len, "Error:", 6) != NULL;
            char at[128] = "";
            if (take && pass == 0 && nl) {
                const char *src = nl + 1, *snl = strchr(src, '\n');
                const char *car = snl ? snl + 1 : NULL;
                const char *cnl = car ? strchr(car, '\n') : NULL;
                if (car)
                    caret_text(src, (size_t)(snl - src), car,
                               cnl ? (size_t)(cnl - car) : strlen(car), at, sizeof(at));
            }
            const char *shown = line;
            size_t slen = len;
            if (plen && len > plen && memcmp(line, path, plen) == 0 && line[plen] == ':') {
                /* "/proc/self/fd/7:12:5-9: Error: ..." -> "line 12:5-9: Error: ..." */
                shown = line + plen + 1;
                slen = len - plen - 1;
            }
            if (take && used + 3 < errlen) {
                int n = snprintf(err + used, errlen - used, "%s%s%.*s%s", used ? "; " : "",
                                 shown != line ? "line " : "", (int)slen, shown, at);
                used += n > 0 ? (size_t)n : 0;
                if (used >= errlen)
                    used = errlen - 1;
            }
            line += len + (nl ? 1 : 0);
        }
    }
    if (used == 0)
        snprintf(err, errlen, "nftables failed without a message");
}

/* Runs cmd through libnftables; *out (optional, free()) gets its output. */
static int nft_exec(const char *cmd, unsigned flags, bool dry, char **out, char *err, size_t errlen)
{
    int rc = -1, mfd = -1, run;
    char path[64];
    if (out)
        *out = NULL;
    struct nft_ctx *nft = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!nft) {
        snprintf(err, errlen, "nftables: cannot start libnftables");
        return -1;
    }
    if (nft_ctx_buffer_output(nft) != 0 || nft_ctx_buffer_error(nft) != 0) {
        snprintf(err, errlen, "nftables: cannot buffer its output");
        goto done;
    }
    nft_ctx_output_set_flags(nft, flags);
    nft_ctx_set_dry_run(nft, dry);
    /* Read from a file, nftables names the line it refuses and echoes that
     * line; from a buffer it does neither. A memfd is a file without a
     * directory. */
    size_t len = strlen(cmd);
    mfd = memfd_create("portcullis-ruleset", MFD_CLOEXEC);
    if (mfd >= 0 && write_all(mfd, cmd, len) == 0) {
        snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
        run = nft_run_cmd_from_filename(nft, path);
    } else {
        path[0] = '\0';
        run = nft_run_cmd_from_buffer(nft, cmd);
    }
    if (run != 0) {
        nft_message(nft_ctx_get_error_buffer(nft), path, err, errlen);
        goto done;
    }
    if (out) {
        const char *o = nft_ctx_get_output_buffer(nft);
        *out = strdup(o ? o : "");
        if (!*out) {
            snprintf(err, errlen, "nftables: out of memory");
            goto done;
        }
    }
    rc = 0;
done:
    if (mfd >= 0)
        close(mfd);
    nft_ctx_free(nft);
    return rc;
}

/* 1 when table inet portcullis is loaded, 0 when not, -1 with err. */
static int table_present(char *err, size_t errlen)
{
    char *out = NULL;
    if (nft_exec("list tables inet", NFT_CTX_OUTPUT_JSON, false, &out, err, errlen) != 0)
        return -1;
    int found = 0;
    cJSON *root = cJSON_Parse(out);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "nftables");
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "table");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
        const cJSON *fam = cJSON_GetObjectItemCaseSensitive(t, "family");
        if (cJSON_IsString(name) && cJSON_IsString(fam) &&
            strcmp(name->valuestring, FW_TABLE) == 0 && strcmp(fam->valuestring, "inet") == 0)
            found = 1;
    }
    if (!root) {
        snprintf(err, errlen, "nftables: unreadable JSON listing of tables");
        found = -1;
    }
    cJSON_Delete(root);
    free(out);
    return found;
}

typedef struct counter_val {
    double packets, bytes;
    bool seen;
} counter_val;

/* Copies a counter object's values out of one NFT_MSG_NEWOBJ message of
 * the dump: its name and the nested NFTA_OBJ_DATA's packets and bytes. */
static void counter_from_msg(const struct nlmsghdr *m, counter_val vals[FW_NCOUNTERS])
{
    size_t off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
    const char *name = NULL;
    uint64_t packets = 0, bytes = 0;
    bool have = false;
    while (off + NLA_HDRLEN <= m->nlmsg_len) {
        const struct nlattr *a = (const struct nlattr *)((const char *)m + off);
        if (a->nla_len < NLA_HDRLEN || off + a->nla_len > m->nlmsg_len)
            break;
        const char *data = (const char *)a + NLA_HDRLEN;
        size_t dlen = a->nla_len - NLA_HDRLEN;
        int type = a->nla_type & NLA_TYPE_MASK;
        if (type == NFTA_OBJ_NAME && dlen > 0 && memchr(data, '\0', dlen))
            name = data;
        if (type == NFTA_OBJ_DATA) {
            for (size_t o = 0; o + NLA_HDRLEN <= dlen;) {
                const struct nlattr *n = (const struct nlattr *)(data + o);
                if (n->nla_len < NLA_HDRLEN || o + n->nla_len > dlen)
                    break;
                uint64_t v;
                if (n->nla_len - NLA_HDRLEN == sizeof(v)) {
                    memcpy(&v, (const char *)n + NLA_HDRLEN, sizeof(v));
                    v = be64toh(v);
                    if ((n->nla_type & NLA_TYPE_MASK) == NFTA_COUNTER_PACKETS)
                        packets = v, have = true;
                    else if ((n->nla_type & NLA_TYPE_MASK) == NFTA_COUNTER_BYTES)
                        bytes = v;
                }
                o += NLA_ALIGN(n->nla_len);
            }
        }
        off += NLA_ALIGN(a->nla_len);
    }
    if (!name || !have)
        return;
    for (size_t i = 0; i < FW_NCOUNTERS; i++)
        if (strcmp(name, fw_counter_names[i]) == 0) {
            vals[i].packets = (double)packets;
            vals[i].bytes = (double)bytes;
            vals[i].seen = true;
        }
}

/* The table's counters by fw_counter_names index; 0 (none seen) when the
 * table is absent. One netlink dump of the table's counter objects
 * (NFT_MSG_GETOBJ): a libnftables listing would fetch and parse the whole
 * table, every set element included, which took half of a 10,000-entry
 * swap. Returns 1, 0 (no table) or -1 with err. */
static int read_counters(counter_val vals[FW_NCOUNTERS], char *err, size_t errlen)
{
    union {
        struct nlmsghdr h;
        char b[256];
    } req;
    static _Thread_local char rbuf[65536];
    int rc = -1;
    memset(vals, 0, sizeof(counter_val) * FW_NCOUNTERS);
    memset(&req, 0, sizeof(req));
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) {
        snprintf(err, errlen, "reading the firewall's counters: netlink socket: %s",
                 strerror(errno));
        return -1;
    }
    req.h.nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.h.nlmsg_seq = 1;
    struct nfgenmsg *g = (struct nfgenmsg *)(req.b + NLMSG_HDRLEN);
    g->nfgen_family = NFPROTO_INET;
    g->version = NFNETLINK_V0;
    size_t len = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(*g));
    struct nlattr *at = (struct nlattr *)(req.b + len);
    at->nla_type = NFTA_OBJ_TABLE;
    at->nla_len = (uint16_t)(NLA_HDRLEN + sizeof(FW_TABLE));
    memcpy(req.b + len + NLA_HDRLEN, FW_TABLE, sizeof(FW_TABLE));
    len += NLA_ALIGN(at->nla_len);
    at = (struct nlattr *)(req.b + len);
    at->nla_type = NFTA_OBJ_TYPE;
    at->nla_len = NLA_HDRLEN + 4;
    uint32_t type = htonl(NFT_OBJECT_COUNTER);
    memcpy(req.b + len + NLA_HDRLEN, &type, 4);
    len += NLA_ALIGN(at->nla_len);
    req.h.nlmsg_len = (uint32_t)len;
    if (send(fd, req.b, len, 0) != (ssize_t)len) {
        snprintf(err, errlen, "reading the firewall's counters: netlink send: %s", strerror(errno));
        goto done;
    }
    for (;;) {
        ssize_t r = recv(fd, rbuf, sizeof(rbuf), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(err, errlen, "reading the firewall's counters: netlink recv: %s",
                     r ? strerror(errno) : "closed");
            goto done;
        }
        size_t left = (size_t)r;
        for (struct nlmsghdr *m = (struct nlmsghdr *)rbuf; NLMSG_OK(m, left);
             m = NLMSG_NEXT(m, left)) {
            if (m->nlmsg_type == NLMSG_DONE) {
                rc = 1;
                goto done;
            }
            if (m->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(m);
                if (e->error == -ENOENT) {
                    rc = 0; /* no table */
                } else {
                    snprintf(err, errlen, "reading the firewall's counters: netlink: %s",
                             strerror(-e->error));
                }
                goto done;
            }
            if (m->nlmsg_type == ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ))
                counter_from_msg(m, vals);
        }
    }
done:
    close(fd);
    return rc;
}

int fw_apply(const char *ruleset, char *err, size_t errlen)
{
    pc_buf b = {0};
    int rc = -1;
    counter_val vals[FW_NCOUNTERS];
    if (!ruleset) {
        snprintf(err, errlen, "firewall: no ruleset");
        return -1;
    }
    /* The counters go on across a replacement: the new table's start where
     * the old one's are now (what is counted between the two is lost). */
    if (read_counters(vals, err, errlen) < 0)
        return -1;
    const char *s = ruleset;
    for (;;) {
        const char *hit = NULL;
        size_t which = 0, hitlen = 0;
        for (size_t i = 0; i < FW_NCOUNTERS; i++) {
            char pat[96];
            int n =
                snprintf(pat, sizeof(pat), "counter %s { packets 0 bytes 0 }", fw_counter_names[i]);
            const char *h = vals[i].seen ? strstr(s, pat) : NULL;
            if (h && (!hit || h < hit)) {
                hit = h;
                which = i;
                hitlen = (size_t)n;
            }
        }
        if (!hit)
            break;
        pc_buf_printf(&b, "%.*scounter %s { packets %.0f bytes %.0f }", (int)(hit - s), s,
                      fw_counter_names[which], vals[which].packets, vals[which].bytes);
        s = hit + hitlen;
    }
    pc_buf_printf(&b, "%s", s);
    if (b.oom) {
        snprintf(err, errlen, "firewall: out of memory");
        goto done;
    }
    rc = nft_exec(b.p, 0, false, NULL, err, errlen);
done:
    pc_buf_free(&b);
    return rc;
}

int fw_check(const char *ruleset, char *err, size_t errlen)
{
    if (!ruleset) {
        snprintf(err, errlen, "firewall: no ruleset");
        return -1;
    }
    return nft_exec(ruleset, 0, true, NULL, err, errlen);
}

int fw_counters(cJSON *out, char *err, size_t errlen)
{
    counter_val vals[FW_NCOUNTERS];
    int present = read_counters(vals, err, errlen);
    if (present <= 0)
        return present;
    for (size_t i = 0; i < FW_NCOUNTERS; i++) {
        char key[64];
        if (!vals[i].seen)
            continue;
        snprintf(key, sizeof(key), "%s_packets", fw_counter_names[i]);
        cJSON_AddNumberToObject(out, key, vals[i].packets);
        snprintf(key, sizeof(key), "%s_bytes", fw_counter_names[i]);
        cJSON_AddNumberToObject(out, key, vals[i].bytes);
    }
    return 0;
}

static int list_table(unsigned flags, char **out, char *err, size_t errlen)
{
    *out = NULL;
    int present = table_present(err, errlen);
    if (present <= 0)
        return present;
    return nft_exec("list table inet " FW_TABLE, flags, false, out, err, errlen);
}

int fw_show(char **out, char *err, size_t errlen)
{
    return list_table(0, out, err, errlen);
}

int fw_loaded_local(fw_local *out, char names[FW_MAX_IFACES][32], char *err, size_t errlen)
{
    char *json = NULL;
    memset(out, 0, sizeof(*out));
    int present = list_table(NFT_CTX_OUTPUT_JSON, &json, err, errlen);
    if (present < 0 || !json)
        return present < 0 ? -1 : 0;
    cJSON *root = cJSON_Parse(json);
    free(json);
    if (!root) {
        snprintf(err, errlen, "nftables: unreadable JSON listing of the table");
        return -1;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(root, "nftables"))
    {
        const cJSON *set = cJSON_GetObjectItemCaseSensitive(it, "set");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(set, "name");
        if (cJSON_IsString(name) && strcmp(name->valuestring, "lan_ifaces") == 0) {
            const cJSON *e;
            cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(set, "elem"))
            {
                if (cJSON_IsString(e) && out->nifaces < FW_MAX_IFACES) {
                    snprintf(names[out->nifaces], 32, "%s", e->valuestring);
                    out->lan_ifaces[out->nifaces] = names[out->nifaces];
                    out->nifaces++;
                }
            }
        }
        const cJSON *rule = cJSON_GetObjectItemCaseSensitive(it, "rule");
        const cJSON *x;
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(rule, "expr"))
        {
            const cJSON *port = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(x, "redirect"), "port");
            if (cJSON_IsNumber(port) && port->valuedouble >= 1 && port->valuedouble <= 65535)
                out->proxy_port = (uint16_t)port->valuedouble;
        }
    }
    cJSON_Delete(root);
    return 1;
}

int fw_remove(char *err, size_t errlen)
{
    return nft_exec("table inet " FW_TABLE "\ndelete table inet " FW_TABLE "\n", 0, false, NULL,
                    err, errlen);
}

/* In a forked child: loads ruleset in a new network namespace of its own
 * and writes "+" and the stateless listing, or "-" and the error, to fd. */
static void __attribute__((noreturn)) compare_child(int fd, const char *ruleset)
{
    char err[1024];
    char *listing = NULL;
    int code = 1;
    if (unshare(CLONE_NEWNET) != 0) {
        snprintf(err, sizeof(err), "cannot make a private network namespace: %s", strerror(errno));
    } else if (nft_exec(ruleset, 0, false, NULL, err, sizeof(err)) == 0 &&
               list_table(NFT_CTX_OUTPUT_STATELESS, &listing, err, sizeof(err)) == 0) {
        code = 0;
    }
    if (code == 0)
        code = write_all(fd, "+", 1) == 0 && write_all(fd, listing, strlen(listing)) == 0 ? 0 : 1;
    else
        (void)(write_all(fd, "-", 1) == 0 && write_all(fd, err, strlen(err)) == 0);
    free(listing);
    close(fd);
    _exit(code);
}

int fw_compare(const char *ruleset, bool *same, char *err, size_t errlen)
{
    char *loaded = NULL;
    pc_buf got = {0};
    int rc = -1, fds[2] = {-1, -1};
    pid_t pid = -1;
    *same = false;
    if (!ruleset) {
        snprintf(err, errlen, "firewall: no ruleset");
        return -1;
    }
    if (list_table(NFT_CTX_OUTPUT_STATELESS, &loaded, err, errlen) < 0)
        return -1;
    if (!loaded)
        return 0;
    if (pipe(fds) != 0) {
        snprintf(err, errlen, "firewall: pipe: %s", strerror(errno));
        goto done;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "firewall: fork: %s", strerror(errno));
        goto done;
    }
    if (pid == 0) {
        close(fds[0]);
        compare_child(fds[1], ruleset);
    }
    close(fds[1]);
    fds[1] = -1;
    for (;;) {
        char buf[4096];
        ssize_t n = read(fds[0], buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        pc_buf_printf(&got, "%.*s", (int)n, buf);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (got.oom) {
        snprintf(err, errlen, "firewall: out of memory");
        goto done;
    }
    if (!got.p || got.p[0] != '+' || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(err, errlen, "firewall: the ruleset to compare with does not load: %s",
                 got.p && got.p[0] == '-' ? got.p + 1 : "the check process failed");
        goto done;
    }
    *same = strcmp(got.p + 1, loaded) == 0;
    rc = 0;
done:
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    pc_buf_free(&got);
    free(loaded);
    return rc;
}
