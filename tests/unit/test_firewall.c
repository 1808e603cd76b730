/* test_firewall.c - the firewall programmer (node/firewall.c,
 * docs/firewall.md): the policy's firewall part as parsed, the ruleset
 * generator against golden files, the splitting of overlapping whitelist
 * entries (checked packet by packet against the entries), and, as root,
 * the rulesets loaded through libnftables in a network namespace of this
 * test's own: checked (nft -c), applied, compared, counted, a refused
 * apply that leaves the previous table, and 10,000 whitelist entries.
 *
 * Golden cases: tests/vectors/firewall/NAME.json is a policy document,
 * NAME.nft the ruleset fw_generate must print for it, byte for byte;
 * NAME.local (optional) sets what the node knows, one "key value" a line:
 * "iface lan0" (repeatable; default one, lan0) and "port 3129" (the
 * transparent proxy port; default 3129, 0 for none). PC_UPDATE_GOLDEN=1
 * rewrites the .nft files from the generator (then read the diff).
 */
#include "cu_main.h"
#include "firewall.h"
#include "pc_policy.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FW_DIR VECTOR_DIR "/firewall"

/* --- helpers -------------------------------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            break;
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1)
            break;
        cap *= 2;
        char *nb = realloc(buf, cap);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (len)
            *len = n;
    }
    return buf;
}

static pc_policy *parse_ok(const char *json)
{
    pc_policy *p = NULL;
    char err[512];
    int rc = pc_policy_parse(json, strlen(json), &p, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  unexpected refusal: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return p;
}

/* A document with the given firewall part ("" for none). */
static pc_policy *doc_with(const char *firewall)
{
    char buf[8192];
    snprintf(buf, sizeof(buf),
             "{\"schema\":\"portcullis.policy/1\",\"version\":7,"
             "\"proxy\":{\"ports\":{\"80\":\"http\",\"443\":\"tls\"}},"
             "\"defaults\":{\"use_lists\":[]}%s%s}",
             firewall[0] ? ",\"firewall\":" : "", firewall);
    return parse_ok(buf);
}

static fw_local local_default(void)
{
    fw_local l = {.nifaces = 1, .proxy_port = 3129};
    l.lan_ifaces[0] = "lan0";
    return l;
}

static char *gen_ok(const pc_policy *p, const fw_local *l)
{
    char *out = NULL, err[512] = "";
    int rc = fw_generate(p, l, &out, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  fw_generate failed: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    return out;
}

static void gen_refused(const pc_policy *p, const fw_local *l, const char *prefix)
{
    char *out = (char *)0x1, err[512] = "";
    int rc = fw_generate(p, l, &out, err, sizeof(err));
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_PTR_NULL(out);
    if (rc == 0)
        free(out);
    if (strncmp(err, prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "\n  expected error starting '%s'\n  got '%s'\n", prefix, err);
        CU_FAIL("error message");
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The golden cases' names (NAME of NAME.json), sorted; free each and v. */
static char **golden_names(size_t *n)
{
    DIR *d = opendir(FW_DIR);
    char **v = NULL;
    *n = 0;
    if (!d)
        return NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= 5 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        char **nv = realloc(v, (*n + 1) * sizeof(*v));
        if (!nv)
            break;
        v = nv;
        v[(*n)++] = strndup(e->d_name, len - 5);
    }
    closedir(d);
    if (v)
        qsort(v, *n, sizeof(*v), cmp_str);
    return v;
}

/* Reads NAME.local into l (names point into *keep, which the caller frees). */
static int golden_local(const char *name, fw_local *l, char **keep)
{
    char path[1024];
    *l = local_default();
    *keep = NULL;
    snprintf(path, sizeof(path), FW_DIR "/%s.local", name);
    char *txt = slurp(path, NULL);
    if (!txt)
        return 0;
    *keep = txt;
    l->nifaces = 0;
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "iface ", 6) == 0 && l->nifaces < FW_MAX_IFACES)
            l->lan_ifaces[l->nifaces++] = line + 6;
        else if (strncmp(line, "port ", 5) == 0)
            l->proxy_port = (uint16_t)atoi(line + 5);
        else if (line[0] != '#')
            return -1;
    }
    if (l->nifaces == 0) {
        l->nifaces = 1;
        l->lan_ifaces[0] = "lan0";
    }
    return 0;
}

/* The generated ruleset of golden case name (free()), or NULL. */
static char *golden_generate(const char *name)
{
    char path[1024], err[512], *keep = NULL, *out = NULL;
    fw_local l;
    pc_policy *p = NULL;
    snprintf(path, sizeof(path), FW_DIR "/%s.json", name);
    if (golden_local(name, &l, &keep) != 0) {
        fprintf(stderr, "\n  %s.local: lines must be 'iface NAME' or 'port N'\n", name);
    } else if (pc_policy_load_file(path, &p, err, sizeof(err)) != 0) {
        fprintf(stderr, "\n  %s.json refused: %s\n", name, err);
    } else if (fw_generate(p, &l, &out, err, sizeof(err)) != 0) {
        fprintf(stderr, "\n  %s: fw_generate failed: %s\n", name, err);
    }
    pc_policy_unref(p);
    free(keep);
    return out;
}

/* --- the parsed firewall part ---------------------------------------------- */

static void test_parsed_values(void)
{
    pc_policy *p =
        doc_with("{\"lan\":[\"192.0.2.0/24\",\"2001:db8:1::/48\"],\"web\":\"proxy\","
                 "\"web_devices\":[\"192.0.2.8\"],"
                 "\"allow\":[{\"name\":\"mail\",\"devices\":[\"192.0.2.25/32\"],\"proto\":\"tcp\","
                 "\"ports\":[\"25\",\"8000-8100\"]},"
                 "{\"devices\":[\"::ffff:192.0.2.0/120\"],\"proto\":\"udp\",\"ports\":[\"123\"]}],"
                 "\"dns\":[\"198.51.100.53\"],\"high_ports\":{\"from\":2000},"
                 "\"log_drops\":{\"per_minute\":10}}");
    const pc_firewall *fw = pc_policy_firewall(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fw);
    CU_ASSERT_EQUAL(fw->nlan, 2);
    CU_ASSERT_EQUAL(fw->lan[1].family, AF_INET6);
    CU_ASSERT_EQUAL(fw->web, PC_FW_WEB_PROXY);
    CU_ASSERT_EQUAL(fw->nweb_devices, 1);
    CU_ASSERT_EQUAL(fw->nallow, 2);
    CU_ASSERT_STRING_EQUAL(fw->allow[0].name, "mail");
    CU_ASSERT_EQUAL(fw->allow[0].proto, IPPROTO_TCP);
    CU_ASSERT_EQUAL(fw->allow[0].nports, 2);
    CU_ASSERT_EQUAL(fw->allow[0].ports[1].lo, 8000);
    CU_ASSERT_EQUAL(fw->allow[0].ports[1].hi, 8100);
    CU_ASSERT_STRING_EQUAL(fw->allow[1].name, "");
    CU_ASSERT_EQUAL(fw->allow[1].proto, IPPROTO_UDP);
    /* An IPv4-mapped prefix is the IPv4 prefix: forwarded IPv4 never
     * carries a mapped source. */
    CU_ASSERT_EQUAL(fw->allow[1].devices[0].family, AF_INET);
    CU_ASSERT_EQUAL(fw->allow[1].devices[0].bits, 24);
    CU_ASSERT_FALSE(fw->dns_any);
    CU_ASSERT_EQUAL(fw->ndns, 1);
    CU_ASSERT_TRUE(fw->high_ports_block);
    CU_ASSERT_EQUAL(fw->high_ports_from, 2000);
    CU_ASSERT_EQUAL(fw->log_per_minute, 10);
    pc_policy_unref(p);

    /* Every default. */
    p = doc_with("{}");
    fw = pc_policy_firewall(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fw);
    CU_ASSERT_EQUAL(fw->nlan, 0);
    CU_ASSERT_EQUAL(fw->web, PC_FW_WEB_TRANSPARENT);
    CU_ASSERT_EQUAL(fw->nallow, 0);
    CU_ASSERT_TRUE(fw->dns_any);
    CU_ASSERT_TRUE(fw->high_ports_block);
    CU_ASSERT_EQUAL(fw->high_ports_from, 1024);
    CU_ASSERT_EQUAL(fw->log_per_minute, 0);
    pc_policy_unref(p);

    /* No part: NULL. */
    p = doc_with("");
    CU_ASSERT_PTR_NULL(pc_policy_firewall(p));
    pc_policy_unref(p);
    CU_ASSERT_PTR_NULL(pc_policy_firewall(NULL));

    /* "dns": [] is "to none", not "any". */
    p = doc_with("{\"dns\":[],\"log_drops\":null,\"high_ports\":{\"block\":false}}");
    fw = pc_policy_firewall(p);
    CU_ASSERT_FALSE(fw->dns_any);
    CU_ASSERT_EQUAL(fw->ndns, 0);
    CU_ASSERT_FALSE(fw->high_ports_block);
    CU_ASSERT_EQUAL(fw->log_per_minute, 0);
    pc_policy_unref(p);
}

static void test_builtin_firewall(void)
{
    /* Fail closed: nothing forwarded, no resolver, web to the proxy. */
    pc_policy *b = pc_policy_builtin();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const pc_firewall *fw = pc_policy_firewall(b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fw);
    CU_ASSERT_EQUAL(fw->web, PC_FW_WEB_TRANSPARENT);
    CU_ASSERT_EQUAL(fw->nallow, 0);
    CU_ASSERT_FALSE(fw->dns_any);
    CU_ASSERT_EQUAL(fw->ndns, 0);
    CU_ASSERT_TRUE(fw->high_ports_block);

    /* NULL, the built-in policy and a document without a firewall part
     * (with the same proxy ports) all give the built-in firewall. */
    fw_local l = local_default();
    char *a = gen_ok(NULL, &l);
    char *c = gen_ok(b, &l);
    CU_ASSERT_STRING_EQUAL(a, c);
    pc_policy *none = doc_with("");
    char *d = gen_ok(none, &l);
    /* Only the version in the first comment differs. */
    CU_ASSERT_STRING_EQUAL(strchr(a, '\n'), strchr(d, '\n'));
    CU_ASSERT_PTR_NOT_NULL(strstr(a, "the built-in firewall"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a, "elements = { 80, 443 }"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a, "redirect to :3129"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a, "counter name drop_dns drop"));
    free(a);
    free(c);
    free(d);
    pc_policy_unref(none);
    pc_policy_unref(b);
}

/* --- the generator ---------------------------------------------------------- */

static void test_golden(void)
{
    size_t n;
    char **names = golden_names(&n);
    CU_ASSERT_TRUE_FATAL(names != NULL && n >= 6);
    bool update = getenv("PC_UPDATE_GOLDEN") && strcmp(getenv("PC_UPDATE_GOLDEN"), "1") == 0;
    for (size_t i = 0; i < n; i++) {
        char path[1024];
        char *got = golden_generate(names[i]);
        snprintf(path, sizeof(path), FW_DIR "/%s.nft", names[i]);
        if (!got) {
            CU_FAIL("golden case does not generate");
        } else if (update) {
            FILE *f = fopen(path, "wb");
            CU_ASSERT_PTR_NOT_NULL(f);
            if (f) {
                fputs(got, f);
                fclose(f);
            }
        } else {
            char *want = slurp(path, NULL);
            if (!want) {
                fprintf(stderr, "\n  %s.nft is missing (PC_UPDATE_GOLDEN=1 writes it)\n", names[i]);
                CU_FAIL("golden file missing");
            } else if (strcmp(want, got) != 0) {
                size_t k = 0, line = 1;
                while (want[k] && want[k] == got[k])
                    line += want[k++] == '\n';
                fprintf(stderr,
                        "\n  %s.nft differs from the generator at line %zu:\n"
                        "    want: %.80s\n    got:  %.80s\n",
                        names[i], line, want + k, got + k);
                CU_FAIL("golden ruleset differs");
            } else {
                CU_PASS("golden ruleset");
            }
            free(want);
        }
        free(got);
        free(names[i]);
    }
    free(names);
}

static void test_local_errors(void)
{
    pc_policy *p = doc_with("{\"web\":\"transparent\"}");
    fw_local l = local_default();
    l.nifaces = 0;
    gen_refused(p, &l, "--lan-interface: the firewall needs 1 to 16 LAN interfaces");
    l = local_default();
    l.lan_ifaces[0] = "lan0\" }; flush ruleset; #";
    gen_refused(p, &l, "--lan-interface 'lan0\" }; flush ruleset; #': an interface name is");
    l = local_default();
    l.proxy_port = 0;
    gen_refused(p, &l,
                "$.firewall.web: 'transparent' redirects LAN web traffic to this node's "
                "proxy: start it with --transparent");
    gen_refused(NULL, &l, "the built-in firewall redirects LAN web traffic to this node's proxy");
    pc_policy_unref(p);

    /* Proxy mode needs no local proxy. */
    p = doc_with("{\"web\":\"proxy\",\"web_devices\":[\"192.0.2.8\"]}");
    char *r = gen_ok(p, &l);
    CU_ASSERT_PTR_NULL(strstr(r, "prerouting"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r, "ip saddr @web4 tcp dport @web_ports accept"));
    free(r);
    pc_policy_unref(p);
}

/* What an allow set holds, parsed back from the generated text. */
typedef struct pelem {
    pc_cidr net;
    int proto;
    unsigned lo, hi;
} pelem;

static size_t parse_allow4(const char *text, pelem *v, size_t max)
{
    const char *s = strstr(text, "set allow4 {");
    const char *end = s ? strstr(s, "\n\t}\n") : NULL;
    size_t n = 0;
    if (!s || !end)
        return 0;
    for (const char *line = s; line && line < end;
         line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        char pfx[64], proto[8], ports[32];
        if (sscanf(line, "\t\t\t%63s . %7s . %31[0-9-]", pfx, proto, ports) != 3 || n >= max)
            continue;
        char e[128];
        if (pc_cidr_parse(pfx, &v[n].net, e, sizeof(e)) != 0)
            continue;
        v[n].proto = strcmp(proto, "tcp") == 0 ? IPPROTO_TCP : IPPROTO_UDP;
        char *dash = strchr(ports, '-');
        v[n].lo = (unsigned)atoi(ports);
        v[n].hi = dash ? (unsigned)atoi(dash + 1) : v[n].lo;
        n++;
    }
    return n;
}

static struct sockaddr_in sin4(uint32_t host)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(host);
    return a;
}

/* Whitelist entries that overlap in every way (nested prefixes, shared
 * and overlapping ranges, duplicates) become elements that do not overlap
 * (nftables refuses overlaps) and that let through exactly the packets
 * the entries do. */
static void test_overlaps_split(void)
{
    static const char *fwpart =
        "{\"allow\":["
        "{\"name\":\"all\",\"devices\":[\"10.0.0.0/8\"],\"proto\":\"tcp\",\"ports\":[\"25\","
        "\"100-200\"]},"
        "{\"name\":\"sub\",\"devices\":[\"10.1.0.0/16\",\"10.1.0.0/16\"],\"proto\":\"tcp\","
        "\"ports\":[\"150-300\",\"25\",\"26\",\"1-10\"]},"
        "{\"name\":\"host\",\"devices\":[\"10.1.2.3\"],\"proto\":\"tcp\",\"ports\":[\"1-65535\"]},"
        "{\"name\":\"sib\",\"devices\":[\"10.2.0.0/"
        "16\"],\"proto\":\"tcp\",\"ports\":[\"100-200\"]},"
        "{\"name\":\"udp\",\"devices\":[\"10.0.0.0/8\",\"10.1.2.0/24\"],\"proto\":\"udp\","
        "\"ports\":[\"53\",\"25\"]}"
        "]}";
    pc_policy *p = doc_with(fwpart);
    fw_local l = local_default();
    char *r = gen_ok(p, &l);
    pelem v[256];
    size_t n = parse_allow4(r, v, 256);
    CU_ASSERT_TRUE_FATAL(n >= 8);

    /* No two elements overlap. */
    unsigned overlaps = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            const pc_cidr *a = &v[i].net, *b = &v[j].net;
            const pc_cidr *shorter = a->bits <= b->bits ? a : b, *longer = shorter == a ? b : a;
            struct sockaddr_in s = {.sin_family = AF_INET};
            memcpy(&s.sin_addr, longer->addr, 4);
            bool nets = pc_cidr_contains(shorter, (const struct sockaddr *)&s);
            if (nets && v[i].proto == v[j].proto && v[i].lo <= v[j].hi && v[j].lo <= v[i].hi)
                overlaps++;
        }
    CU_ASSERT_EQUAL(overlaps, 0);

    /* Packet by packet: the elements allow what the entries allow. */
    const pc_firewall *fw = pc_policy_firewall(p);
    static const uint32_t hosts[] = {0x0A000001, 0x0A010001, 0x0A010203, 0x0A010204,
                                     0x0A020005, 0x0A030001, 0x0B000001, 0x0A0102FF};
    static const unsigned ports[] = {1,   5,   10,  11,  24,  25,  26,  27,   53,   99,
                                     100, 149, 150, 200, 201, 300, 301, 1024, 65535};
    unsigned wrong = 0;
    for (size_t h = 0; h < sizeof(hosts) / sizeof(hosts[0]); h++) {
        struct sockaddr_in a = sin4(hosts[h]);
        for (size_t k = 0; k < sizeof(ports) / sizeof(ports[0]); k++) {
            for (int proto = IPPROTO_TCP; proto <= IPPROTO_UDP;
                 proto += IPPROTO_UDP - IPPROTO_TCP) {
                bool want = false, got = false;
                for (size_t e = 0; e < fw->nallow; e++) {
                    const pc_fw_allow *al = &fw->allow[e];
                    if (al->proto != proto)
                        continue;
                    for (size_t d = 0; d < al->ndevices; d++)
                        for (size_t q = 0; q < al->nports; q++)
                            if (pc_cidr_contains(&al->devices[d], (const struct sockaddr *)&a) &&
                                ports[k] >= al->ports[q].lo && ports[k] <= al->ports[q].hi)
                                want = true;
                }
                for (size_t i = 0; i < n; i++)
                    if (v[i].proto == proto &&
                        pc_cidr_contains(&v[i].net, (const struct sockaddr *)&a) &&
                        ports[k] >= v[i].lo && ports[k] <= v[i].hi)
                        got = true;
                if (want != got) {
                    fprintf(stderr, "\n  %08x %s %u: entries say %d, elements %d", hosts[h],
                            proto == IPPROTO_TCP ? "tcp" : "udp", ports[k], want, got);
                    wrong++;
                }
            }
        }
    }
    CU_ASSERT_EQUAL(wrong, 0);
    free(r);
    pc_policy_unref(p);
}

/* A document with n whitelist entries, each one device and one port. */
static char *doc_many(size_t n)
{
    size_t cap = 200 + n * 96;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    size_t k = (size_t)snprintf(buf, cap,
                                "{\"schema\":\"portcullis.policy/1\",\"version\":9,"
                                "\"defaults\":{\"use_lists\":[]},\"firewall\":{\"lan\":"
                                "[\"10.0.0.0/8\"],\"allow\":[");
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(buf + k, cap - k,
                              "%s{\"name\":\"e%zu\",\"devices\":[\"10.%zu.%zu.%zu\"],"
                              "\"proto\":\"%s\",\"ports\":[\"%zu\"]}",
                              i ? "," : "", i, (i >> 16) & 255, (i >> 8) & 255, i & 255,
                              i % 3 ? "tcp" : "udp", 1024 + i % 5000);
    snprintf(buf + k, cap - k, "]}}");
    return buf;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void test_many_entries(void)
{
    char *doc = doc_many(PC_FW_MAX_ALLOW);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    pc_policy *p = parse_ok(doc);
    fw_local l = local_default();
    double t0 = now_ms();
    char *r = gen_ok(p, &l);
    double t1 = now_ms();
    pelem *v = malloc(sizeof(*v) * (PC_FW_MAX_ALLOW + 10));
    CU_ASSERT_EQUAL(parse_allow4(r, v, PC_FW_MAX_ALLOW + 10), PC_FW_MAX_ALLOW);
    fprintf(stderr, "\n  %d whitelist entries: %zu bytes of ruleset in %.1f ms ", PC_FW_MAX_ALLOW,
            strlen(r), t1 - t0);
    free(v);
    free(r);
    pc_policy_unref(p);
    free(doc);
}

/* Nested prefixes with many distinct ports each: splitting them apart
 * would take more elements than nftables should be given. */
static void test_overlap_explosion_refused(void)
{
    size_t cap = 400000;
    char *buf = malloc(cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    size_t k = (size_t)snprintf(buf, cap,
                                "{\"schema\":\"portcullis.policy/1\",\"version\":1,"
                                "\"defaults\":{\"use_lists\":[]},\"firewall\":{\"allow\":["
                                "{\"devices\":[\"10.0.0.0/8\"],\"proto\":\"tcp\",\"ports\":[");
    for (size_t i = 0; i < 4000; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s\"%zu\"", i ? "," : "", 2 * i + 2);
    k += (size_t)snprintf(buf + k, cap - k, "]},{\"devices\":[");
    for (size_t i = 0; i < 5000; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s\"10.1.%zu.%zu\"", i ? "," : "", i / 256,
                              i % 256);
    snprintf(buf + k, cap - k, "],\"proto\":\"tcp\",\"ports\":[\"1-65535\"]}]}}");
    pc_policy *p = parse_ok(buf);
    fw_local l = local_default();
    gen_refused(p, &l, "$.firewall.allow: the entries overlap into more than 100000 set elements");
    pc_policy_unref(p);
    free(buf);
}

/* --- nftables, as root, in a network namespace of this test's own --------- */

static int nft_state = -1; /* -1 unknown, 0 unavailable, 1 ready */

static bool nft_ready(void)
{
    if (nft_state < 0) {
        nft_state = 0;
        char err[512];
        if (geteuid() != 0) {
            fprintf(stderr, "\n  not root: nftables cases skipped ");
        } else if (unshare(CLONE_NEWNET) != 0) {
            fprintf(stderr, "\n  unshare(CLONE_NEWNET): %s: nftables cases skipped ",
                    strerror(errno));
        } else if (fw_remove(err, sizeof(err)) != 0) {
            fprintf(stderr, "\n  nftables unavailable (%s): nftables cases skipped ", err);
        } else {
            nft_state = 1;
        }
    }
    return nft_state == 1;
}

static void test_nft_check_golden(void)
{
    if (!nft_ready())
        return;
    size_t n;
    char **names = golden_names(&n);
    CU_ASSERT_TRUE_FATAL(names != NULL && n >= 6);
    for (size_t i = 0; i < n; i++) {
        char err[1024];
        char *r = golden_generate(names[i]);
        CU_ASSERT_PTR_NOT_NULL(r);
        if (r && fw_check(r, err, sizeof(err)) != 0) {
            fprintf(stderr, "\n  %s: nft -c refuses it: %s\n", names[i], err);
            CU_FAIL("generated ruleset refused by nftables");
        }
        free(r);
        free(names[i]);
    }
    free(names);
}

static void test_nft_apply_show_compare(void)
{
    if (!nft_ready())
        return;
    char err[1024], *shown = NULL;
    bool same = true;
    fw_local l = local_default();
    pc_policy *p1 = doc_with("{\"lan\":[\"192.0.2.0/24\"],\"allow\":[{\"name\":\"mail\","
                             "\"devices\":[\"192.0.2.25\"],\"proto\":\"tcp\",\"ports\":[\"25\"]}],"
                             "\"dns\":[\"198.51.100.53\"]}");
    pc_policy *p2 = doc_with("{\"lan\":[\"192.0.2.0/24\"],\"allow\":[{\"name\":\"mail\","
                             "\"devices\":[\"192.0.2.26\"],\"proto\":\"tcp\",\"ports\":[\"25\"]}],"
                             "\"dns\":[\"198.51.100.53\"]}");
    char *r1 = gen_ok(p1, &l), *r2 = gen_ok(p2, &l);

    CU_ASSERT_EQUAL_FATAL(fw_remove(err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(fw_show(&shown, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NULL(shown);
    CU_ASSERT_EQUAL(fw_compare(r1, &same, err, sizeof(err)), 0);
    CU_ASSERT_FALSE(same); /* nothing loaded */

    if (fw_apply(r1, err, sizeof(err)) != 0)
        fprintf(stderr, "\n  fw_apply: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(fw_apply(r1, err, sizeof(err)), 0); /* twice: replaces itself */
    CU_ASSERT_EQUAL(fw_show(&shown, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(shown);
    CU_ASSERT_PTR_NOT_NULL(strstr(shown, "table inet portcullis {"));
    CU_ASSERT_PTR_NOT_NULL(strstr(shown, "192.0.2.25 . tcp . 25"));
    free(shown);
    CU_ASSERT_EQUAL(fw_compare(r1, &same, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(same);
    CU_ASSERT_EQUAL(fw_compare(r2, &same, err, sizeof(err)), 0);
    CU_ASSERT_FALSE(same);

    /* A ruleset nftables refuses (a LAN interface name longer than the
     * kernel's 15 bytes, which the generator leaves to nftables): the
     * apply fails with nftables' own message and the table stays. */
    fw_local bad = local_default();
    bad.lan_ifaces[0] = "lan-interface-too-long";
    char *rbad = gen_ok(p2, &bad);
    err[0] = '\0';
    CU_ASSERT_EQUAL(fw_apply(rbad, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "Error: String exceeds maximum length of 16"));
    CU_ASSERT_PTR_NULL(strchr(err, '\n'));
    CU_ASSERT_EQUAL(fw_check(rbad, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(fw_compare(r1, &same, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(same);
    free(rbad);

    /* Counters: named, read back, carried over a replacement. */
    cJSON *c = cJSON_CreateObject();
    CU_ASSERT_EQUAL(fw_counters(c, err, sizeof(err)), 0);
    static const char *const keys[] = {"drop_inbound", "drop_spoofed", "drop_dns",
                                       "drop_high_ports", "drop_default"};
    for (size_t i = 0; i < 5; i++) {
        char k[64];
        snprintf(k, sizeof(k), "%s_packets", keys[i]);
        CU_ASSERT_TRUE(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(c, k)));
        snprintf(k, sizeof(k), "%s_bytes", keys[i]);
        CU_ASSERT_TRUE(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(c, k)));
    }
    cJSON_Delete(c);
    char *seeded = strdup(r1);
    char *at = strstr(seeded, "counter drop_default { packets 0 bytes 0 }");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    memcpy(at, "counter drop_default { packets 7 bytes 4 }", 42);
    CU_ASSERT_EQUAL(fw_apply(seeded, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(fw_apply(r2, err, sizeof(err)), 0);
    c = cJSON_CreateObject();
    CU_ASSERT_EQUAL(fw_counters(c, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(
        cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(c, "drop_default_packets")), 7);
    CU_ASSERT_EQUAL(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(c, "drop_default_bytes")),
                    4);
    cJSON_Delete(c);
    free(seeded);
    CU_ASSERT_EQUAL(fw_compare(r2, &same, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(same);

    /* Removed: nothing shown, no counters. */
    CU_ASSERT_EQUAL(fw_remove(err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(fw_show(&shown, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NULL(shown);
    c = cJSON_CreateObject();
    CU_ASSERT_EQUAL(fw_counters(c, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NULL(c->child);
    cJSON_Delete(c);
    free(r1);
    free(r2);
    pc_policy_unref(p1);
    pc_policy_unref(p2);
}

static void test_nft_many_entries(void)
{
    if (!nft_ready())
        return;
    char err[1024];
    char *doc = doc_many(PC_FW_MAX_ALLOW);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    pc_policy *p = parse_ok(doc);
    fw_local l = local_default();
    char *r = gen_ok(p, &l);
    double t0 = now_ms();
    int rc = fw_check(r, err, sizeof(err));
    double t1 = now_ms();
    if (rc != 0)
        fprintf(stderr, "\n  nft -c: %s\n", err);
    CU_ASSERT_EQUAL(rc, 0);
    rc = fw_apply(r, err, sizeof(err));
    double t2 = now_ms();
    if (rc != 0)
        fprintf(stderr, "\n  apply: %s\n", err);
    CU_ASSERT_EQUAL(rc, 0);
    fprintf(stderr, "\n  %d entries: nft -c %.0f ms, apply %.0f ms ", PC_FW_MAX_ALLOW, t1 - t0,
            t2 - t1);
    CU_ASSERT_EQUAL(fw_remove(err, sizeof(err)), 0);
    free(r);
    pc_policy_unref(p);
    free(doc);
}

int unit_register(void)
{
    static const unit_case policy[] = {
        {"parsed_values", test_parsed_values},
        {"builtin_firewall", test_builtin_firewall},
        {NULL, NULL},
    };
    static const unit_case generator[] = {
        {"golden", test_golden},
        {"local_errors", test_local_errors},
        {"overlaps_split", test_overlaps_split},
        {"many_entries", test_many_entries},
        {"overlap_explosion_refused", test_overlap_explosion_refused},
        {NULL, NULL},
    };
    static const unit_case nft[] = {
        {"check_golden", test_nft_check_golden},
        {"apply_show_compare", test_nft_apply_show_compare},
        {"many_entries", test_nft_many_entries},
        {NULL, NULL},
    };
    if (unit_add_suite("firewall_policy", policy) != 0 ||
        unit_add_suite("firewall_generator", generator) != 0 ||
        unit_add_suite("firewall_nftables", nft) != 0)
        return -1;
    return 0;
}
