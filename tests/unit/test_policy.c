/* test_policy.c - the policy document and CIDR sets: parsing and strict
 * validation (every refusal names its JSON path), the checks the proxy runs
 * (hosts on label boundaries, paths, downloads, addresses), group selection
 * and inheritance, the Skype exception, reference counting across threads,
 * the built-in policy, the shipped lists and the documented examples.
 *
 * Data-driven cases: tests/vectors/policy/bad/NAME.json must be refused with
 * an error starting with the first line of NAME.expect (the second line,
 * "schema: reject|accept", is for tests/unit/check_schema.py);
 * every tests/vectors/policy/good/NAME.json must be accepted.
 */
#include "cu_main.h"
#include "pc_cidr.h"
#include "pc_policy.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --- helpers -------------------------------------------------------------- */

typedef struct addr_box {
    struct sockaddr_storage ss;
} addr_box;

static struct sockaddr_storage sa(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
    } else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
    } else {
        fprintf(stderr, "test bug: bad address %s\n", ip);
        abort();
    }
    return ss;
}

/* A sockaddr for a literal, valid to the end of the enclosing block. */
#define SA(ip) ((const struct sockaddr *)&(addr_box){sa(ip)}.ss)

static pc_policy *parse_ok(const char *json)
{
    pc_policy *p = NULL;
    char err[512];
    int rc = pc_policy_parse(json, strlen(json), &p, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  unexpected refusal: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    return p;
}

/* Asserts json is refused with an error starting with prefix. */
static void refused(const char *json, const char *prefix)
{
    pc_policy *p = (pc_policy *)0x1; /* must stay untouched */
    char err[512] = "";
    int rc = pc_policy_parse(json, strlen(json), &p, err, sizeof(err));
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_PTR_EQUAL(p, (pc_policy *)0x1);
    if (strncmp(err, prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "\n  expected error starting '%s'\n  got '%s'\n", prefix, err);
        CU_FAIL("error message");
    }
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* A policy with two lists and three groups, used by most suites. */
static const char *const doc =
    "{"
    "\"schema\": \"portcullis.policy/1\","
    "\"version\": 7,"
    "\"lists\": {"
    "  \"skype\": {\"category\": \"skype\","
    "    \"domains\": [\"skype.com\", \"SkypeAssets.COM.\"],"
    "    \"prefixes\": [\"198.51.100.0/24\", \"2001:db8:5::/48\"],"
    "    \"url_suffixes\": [\"skype.exe\", \"SkypeSetup.exe\"]},"
    "  \"teams\": {\"category\": \"teams\","
    "    \"domains\": [\"teams.microsoft.com\"],"
    "    \"prefixes\": [\"203.0.113.0/24\"],"
    "    \"url_suffixes\": [\"teamsbootstrapper.exe\"]}"
    "},"
    "\"defaults\": {"
    "  \"use_lists\": [\"skype\"],"
    "  \"blocked_domains\": [\"evil.example\"],"
    "  \"blocked_prefixes\": [\"192.0.2.66/32\"],"
    "  \"blocked_url_suffixes\": [\".torrent\"]"
    "},"
    "\"groups\": ["
    "  {\"name\": \"office\", \"sources\": [\"192.0.2.0/24\"]},"
    "  {\"name\": \"board\", \"sources\": [\"192.0.2.128/25\"],"
    "   \"skype_exception\": true, \"use_lists\": [\"skype\", \"teams\"],"
    "   \"blocked_domains\": [\"skype.com\", \"games.example\"]},"
    "  {\"name\": \"lab\", \"sources\": [\"2001:db8:1::/48\", \"10.9.0.0/16\"],"
    "   \"block_executables\": false, \"require_certificate\": false,"
    "   \"use_lists\": [], \"blocked_url_suffixes\": []}"
    "]}";

/* --- CIDR ----------------------------------------------------------------- */

static void test_cidr_parse(void)
{
    static const struct {
        const char *in, *out; /* out NULL: refused */
        const char *err;      /* start of the message when refused */
    } cases[] = {
        {"192.0.2.0/24", "192.0.2.0/24", NULL},
        {"192.0.2.7", "192.0.2.7/32", NULL},
        {"0.0.0.0/0", "0.0.0.0/0", NULL},
        {"2001:db8::/32", "2001:db8::/32", NULL},
        {"2001:DB8:0:0::/64", "2001:db8::/64", NULL},
        {"::1", "::1/128", NULL},
        {"::/0", "::/0", NULL},
        {"::ffff:192.0.2.0/120", "192.0.2.0/24", NULL},
        {"::ffff:198.51.100.9", "198.51.100.9/32", NULL},
        {"192.0.2.300/24", NULL, "'192.0.2.300/24' is not an address prefix"},
        {"192.0.2.1/24", NULL, "'192.0.2.1/24': host bits set (the network is 192.0.2.0/24)"},
        {"2001:db8::1/32", NULL, "'2001:db8::1/32': host bits set (the network is 2001:db8::/32)"},
        {"192.0.2.0/33", NULL, "'192.0.2.0/33': prefix length must be 0..32"},
        {"2001:db8::/129", NULL, "'2001:db8::/129': prefix length must be 0..128"},
        {"192.0.2.0/024", NULL, "'192.0.2.0/024' is not an address prefix"},
        {"192.0.2.0/", NULL, "'192.0.2.0/' is not an address prefix"},
        {"192.0.2.0/-1", NULL, "'192.0.2.0/-1' is not an address prefix"},
        {"192.0.2.0/ 24", NULL, "'192.0.2.0/ 24' is not an address prefix"},
        {"/24", NULL, "'/24' is not an address prefix"},
        {"", NULL, "'' is not an address prefix"},
        {"010.0.0.0/8", NULL, "'010.0.0.0/8' is not an address prefix"},
        {"fe80::1%eth0", NULL, "'fe80::1%eth0' is not an address prefix"},
        {"skype.com", NULL, "'skype.com' is not an address prefix"},
        {"1.2.3.4\n", NULL, "'1.2.3.4\\x0a' is not an address prefix"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pc_cidr c;
        char err[256] = "";
        int rc = pc_cidr_parse(cases[i].in, &c, err, sizeof(err));
        if (cases[i].out) {
            char buf[64];
            CU_ASSERT_EQUAL(rc, 0);
            pc_cidr_format(&c, buf, sizeof(buf));
            if (rc != 0 || strcmp(buf, cases[i].out) != 0) {
                fprintf(stderr, "\n  %s: got %s (%s)\n", cases[i].in, buf, err);
                CU_FAIL("cidr parse/format");
            }
        } else {
            CU_ASSERT_EQUAL(rc, -1);
            if (strcmp(err, cases[i].err) != 0) {
                fprintf(stderr, "\n  %s: got '%s'\n", cases[i].in, err);
                CU_FAIL("cidr error");
            }
        }
    }
    /* NULL error buffer is allowed. */
    pc_cidr c;
    CU_ASSERT_EQUAL(pc_cidr_parse("x", &c, NULL, 0), -1);
}

static void test_cidr_contains(void)
{
    pc_cidr v4, v6, all6;
    CU_ASSERT_EQUAL_FATAL(pc_cidr_parse("192.0.2.128/25", &v4, NULL, 0), 0);
    CU_ASSERT_EQUAL_FATAL(pc_cidr_parse("2001:db8::/33", &v6, NULL, 0), 0);
    CU_ASSERT_EQUAL_FATAL(pc_cidr_parse("::/0", &all6, NULL, 0), 0);
    CU_ASSERT_TRUE(pc_cidr_contains(&v4, SA("192.0.2.128")));
    CU_ASSERT_TRUE(pc_cidr_contains(&v4, SA("192.0.2.255")));
    CU_ASSERT_FALSE(pc_cidr_contains(&v4, SA("192.0.2.127")));
    CU_ASSERT_FALSE(pc_cidr_contains(&v4, SA("192.0.3.200")));
    /* An IPv4-mapped IPv6 address is its IPv4 address. */
    CU_ASSERT_TRUE(pc_cidr_contains(&v4, SA("::ffff:192.0.2.200")));
    CU_ASSERT_FALSE(pc_cidr_contains(&v4, SA("::ffff:192.0.2.1")));
    CU_ASSERT_FALSE(pc_cidr_contains(&all6, SA("::ffff:192.0.2.200")));
    CU_ASSERT_TRUE(pc_cidr_contains(&all6, SA("2001:db8::1")));
    CU_ASSERT_TRUE(pc_cidr_contains(&v6, SA("2001:db8:7fff::1")));
    CU_ASSERT_FALSE(pc_cidr_contains(&v6, SA("2001:db8:8000::1")));
    CU_ASSERT_FALSE(pc_cidr_contains(&v6, SA("192.0.2.200")));
    CU_ASSERT_FALSE(pc_cidr_contains(&v4, NULL));
    struct sockaddr other = {.sa_family = AF_UNIX};
    CU_ASSERT_FALSE(pc_cidr_contains(&v4, &other));
}

static void add(pc_cidrset *s, const char *txt, intptr_t v)
{
    pc_cidr c;
    CU_ASSERT_EQUAL_FATAL(pc_cidr_parse(txt, &c, NULL, 0), 0);
    CU_ASSERT_EQUAL(pc_cidrset_add(s, &c, v), 0);
}

static intptr_t lpm(const pc_cidrset *s, const char *ip, char *match)
{
    intptr_t v = -1;
    pc_cidr m;
    if (!pc_cidrset_lookup(s, SA(ip), &v, &m))
        return -1;
    if (match)
        pc_cidr_format(&m, match, 64);
    return v;
}

static void test_cidrset_lpm(void)
{
    pc_cidrset *s = pc_cidrset_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    char m[64];
    CU_ASSERT_EQUAL(lpm(s, "192.0.2.1", NULL), -1);
    add(s, "0.0.0.0/0", 1);
    add(s, "192.0.2.0/24", 2);
    add(s, "192.0.2.128/25", 3);
    add(s, "192.0.2.200/32", 4);
    add(s, "2001:db8::/32", 5);
    add(s, "2001:db8:1::/48", 6);
    add(s, "::ffff:10.0.0.0/104", 7); /* = 10.0.0.0/8 */
    add(s, "192.0.2.0/24", 99);       /* the first value stays */
    CU_ASSERT_EQUAL(pc_cidrset_count(s), 7);
    CU_ASSERT_EQUAL(lpm(s, "192.0.2.1", m), 2);
    CU_ASSERT_STRING_EQUAL(m, "192.0.2.0/24");
    CU_ASSERT_EQUAL(lpm(s, "192.0.2.129", m), 3);
    CU_ASSERT_STRING_EQUAL(m, "192.0.2.128/25");
    CU_ASSERT_EQUAL(lpm(s, "192.0.2.200", m), 4);
    CU_ASSERT_STRING_EQUAL(m, "192.0.2.200/32");
    CU_ASSERT_EQUAL(lpm(s, "::ffff:192.0.2.200", NULL), 4);
    CU_ASSERT_EQUAL(lpm(s, "8.8.8.8", m), 1);
    CU_ASSERT_STRING_EQUAL(m, "0.0.0.0/0");
    CU_ASSERT_EQUAL(lpm(s, "10.1.2.3", m), 7);
    CU_ASSERT_STRING_EQUAL(m, "10.0.0.0/8");
    CU_ASSERT_EQUAL(lpm(s, "2001:db8:1::5", m), 6);
    CU_ASSERT_STRING_EQUAL(m, "2001:db8:1::/48");
    CU_ASSERT_EQUAL(lpm(s, "2001:db8:2::5", m), 5);
    CU_ASSERT_EQUAL(lpm(s, "2001:db9::1", NULL), -1);

    pc_cidr c;
    intptr_t v = 0;
    CU_ASSERT_EQUAL_FATAL(pc_cidr_parse("192.0.2.0/24", &c, NULL, 0), 0);
    CU_ASSERT_TRUE(pc_cidrset_get(s, &c, &v));
    CU_ASSERT_EQUAL(v, 2);
    CU_ASSERT_EQUAL_FATAL(pc_cidr_parse("192.0.2.0/23", &c, NULL, 0), 0);
    CU_ASSERT_FALSE(pc_cidrset_get(s, &c, &v));
    CU_ASSERT_EQUAL_FATAL(pc_cidr_parse("192.0.2.0/26", &c, NULL, 0), 0);
    CU_ASSERT_FALSE(pc_cidrset_get(s, &c, &v));
    pc_cidrset_free(s);
    pc_cidrset_free(NULL);
}

/* Many prefixes of many lengths: every one found, its neighbours not. */
static void test_cidrset_large(void)
{
    pc_cidrset *s = pc_cidrset_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    for (unsigned i = 0; i < 20000; i++) {
        pc_cidr c = {.family = AF_INET, .bits = 32};
        c.addr[0] = 100;
        c.addr[1] = (uint8_t)(i >> 8);
        c.addr[2] = (uint8_t)i;
        c.addr[3] = 1;
        CU_ASSERT_EQUAL(pc_cidrset_add(s, &c, (intptr_t)i), 0);
        pc_cidr c6 = {.family = AF_INET6, .bits = 48};
        c6.addr[0] = 0x20;
        c6.addr[1] = 0x01;
        c6.addr[2] = 0x0d;
        c6.addr[3] = 0xb8;
        c6.addr[4] = (uint8_t)(i >> 8);
        c6.addr[5] = (uint8_t)i;
        CU_ASSERT_EQUAL(pc_cidrset_add(s, &c6, (intptr_t)(100000 + i)), 0);
    }
    CU_ASSERT_EQUAL(pc_cidrset_count(s), 40000);
    unsigned bad = 0;
    for (unsigned i = 0; i < 20000; i += 7) {
        char ip[64];
        snprintf(ip, sizeof(ip), "100.%u.%u.1", i >> 8, i & 255);
        bad += lpm(s, ip, NULL) != (intptr_t)i;
        snprintf(ip, sizeof(ip), "100.%u.%u.2", i >> 8, i & 255);
        bad += lpm(s, ip, NULL) != -1;
        snprintf(ip, sizeof(ip), "2001:db8:%x::9", i);
        bad += lpm(s, ip, NULL) != (intptr_t)(100000 + i);
    }
    CU_ASSERT_EQUAL(bad, 0);
    pc_cidrset_free(s);
}

/* --- document: values, defaults, errors ---------------------------------- */

static void test_doc_minimal_defaults(void)
{
    pc_policy *p = parse_ok("{\"schema\":\"portcullis.policy/1\",\"version\":1,"
                            "\"defaults\":{\"use_lists\":[]}}");
    CU_ASSERT_EQUAL(pc_policy_version(p), 1);
    CU_ASSERT_FALSE(pc_policy_is_builtin(p));
    const pc_proxy_settings *s = pc_policy_proxy(p);
    CU_ASSERT_EQUAL(s->max_connections, 20000);
    CU_ASSERT_EQUAL(s->header_timeout_ms, 10000);
    CU_ASSERT_EQUAL(s->idle_timeout_ms, 300000);
    CU_ASSERT_EQUAL(s->connect_timeout_ms, 10000);
    CU_ASSERT_STRING_EQUAL(s->ca_file, "");
    CU_ASSERT_EQUAL(s->probe_ttl_s, 600);
    CU_ASSERT_EQUAL(s->probe_fail_ttl_s, 60);
    CU_ASSERT_EQUAL(s->probe_timeout_ms, 5000);
    CU_ASSERT_FALSE(s->log_allowed);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 80), PC_PROTO_HTTP);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 443), PC_PROTO_TLS);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 554), PC_PROTO_RTSP);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 1755), PC_PROTO_MMS);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 8080), PC_PROTO_NONE);
    uint16_t ports[8];
    CU_ASSERT_EQUAL(pc_policy_ports(p, ports, 8), 4);
    CU_ASSERT_EQUAL(ports[0], 80);
    CU_ASSERT_EQUAL(ports[3], 1755);
    CU_ASSERT_EQUAL(pc_policy_group_count(p), 0);
    const pc_group *g = pc_policy_group_for(p, SA("192.0.2.1"));
    CU_ASSERT_STRING_EQUAL(pc_group_name(g), "defaults");
    /* Unset booleans take the safe side. */
    CU_ASSERT_EQUAL(pc_group_cert_mode(g), PC_CERT_REQUIRED);
    CU_ASSERT_FALSE(pc_group_skype_exception(g));
    CU_ASSERT_TRUE(pc_group_check_download(g, NULL, "a.exe", false).block);
    pc_policy_unref(p);
}

static void test_doc_proxy_values(void)
{
    pc_policy *p =
        parse_ok("{\"schema\":\"portcullis.policy/1\",\"version\":9007199254740991,"
                 "\"proxy\":{\"ports\":{\"8080\":\"http\",\"443\":\"tls\",\"22\":\"passthrough\"},"
                 "\"max_connections\":5,\"header_timeout_ms\":100,\"idle_timeout_ms\":86400000,"
                 "\"connect_timeout_ms\":600000,\"ca_file\":\"/etc/ssl/certs/ca-certificates.crt\","
                 "\"probe_ttl_s\":1,\"probe_fail_ttl_s\":86400,\"probe_timeout_ms\":60000,"
                 "\"log_allowed\":true},"
                 "\"defaults\":{\"use_lists\":[]}}");
    CU_ASSERT_EQUAL(pc_policy_version(p), 9007199254740991ull);
    const pc_proxy_settings *s = pc_policy_proxy(p);
    CU_ASSERT_EQUAL(s->max_connections, 5);
    CU_ASSERT_EQUAL(s->header_timeout_ms, 100);
    CU_ASSERT_EQUAL(s->idle_timeout_ms, 86400000);
    CU_ASSERT_EQUAL(s->connect_timeout_ms, 600000);
    CU_ASSERT_STRING_EQUAL(s->ca_file, "/etc/ssl/certs/ca-certificates.crt");
    CU_ASSERT_EQUAL(s->probe_ttl_s, 1);
    CU_ASSERT_EQUAL(s->probe_fail_ttl_s, 86400);
    CU_ASSERT_EQUAL(s->probe_timeout_ms, 60000);
    CU_ASSERT_TRUE(s->log_allowed);
    /* Ports not listed are refused, including the defaults' 80. */
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 80), PC_PROTO_NONE);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 8080), PC_PROTO_HTTP);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 22), PC_PROTO_PASSTHROUGH);
    uint16_t ports[2];
    CU_ASSERT_EQUAL(pc_policy_ports(p, ports, 2), 3);
    CU_ASSERT_EQUAL(ports[0], 22);
    CU_ASSERT_EQUAL(ports[1], 443);
    CU_ASSERT_STRING_EQUAL(pc_proto_name(PC_PROTO_PASSTHROUGH), "passthrough");
    CU_ASSERT_STRING_EQUAL(pc_proto_name(PC_PROTO_NONE), "none");
    pc_policy_unref(p);

    /* An empty ports object serves nothing. */
    p = parse_ok("{\"schema\":\"portcullis.policy/1\",\"version\":2,\"proxy\":{\"ports\":{}},"
                 "\"defaults\":{\"use_lists\":[]}}");
    CU_ASSERT_EQUAL(pc_policy_ports(p, NULL, 0), 0);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 443), PC_PROTO_NONE);
    pc_policy_unref(p);
}

static void test_doc_errors(void)
{
    /* Invalid JSON: byte offset, line and column. */
    refused("{\n  \"schema\": \"portcullis.policy/1\",\n  \"version\": 1,,\n}",
            "$: invalid JSON at byte 53 (line 3, column 17): syntax error");
    refused("", "$: invalid JSON at byte 0 (line 1, column 1): empty document");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":[]}} {}",
            "$: invalid JSON at byte 73 (line 1, column 74): data after the document");
    refused("{\"schema\":\"portcullis.policy/1\",\"x\":\"a\\u0000b\"}",
            "$: invalid JSON at byte 38 (line 1, column 39): \\u0000 is not allowed in a string");
    {
        static const char withnul[] = "{\"schema\":\"port\0cullis\"}";
        pc_policy *p = NULL;
        char err[256];
        CU_ASSERT_EQUAL(pc_policy_parse(withnul, sizeof(withnul) - 1, &p, err, sizeof(err)), -1);
        CU_ASSERT_STRING_EQUAL(err, "$: invalid JSON at byte 15 (line 1, column 16): NUL byte");
    }
    /* An escaped backslash before u0000 is text, not a NUL. */
    pc_policy *p = parse_ok("{\"schema\":\"portcullis.policy/1\",\"version\":1,"
                            "\"lists\":{\"x\":{\"category\":\"c\",\"description\":\"a\\\\u0000\"}},"
                            "\"defaults\":{\"use_lists\":[]}}");
    pc_policy_unref(p);

    refused("[]", "$: must be an object");
    refused("{\"version\":1,\"defaults\":{\"use_lists\":[]}}", "$.schema: required key is missing");
    refused("{\"schema\":\"portcullis.policy/2\",\"unknown\":1}",
            "$.schema: 'portcullis.policy/2' is not a schema this node reads (it reads "
            "'portcullis.policy/1')");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":[]},"
            "\"group\":[]}",
            "$.group: unknown key (did you mean 'groups'?)");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":[]},"
            "\"zzzzzz\":[]}",
            "$.zzzzzz: unknown key");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":[]},"
            "\"odd key\":[]}",
            "$['odd key']: unknown key");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":[],"
            "\"skype_exception\":false,\"skype_exception\":true}}",
            "$.defaults.skype_exception: duplicate key");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1.5,\"defaults\":{\"use_lists\":[]}}",
            "$.version: must be an integer from 1 to 9007199254740991");
    refused(
        "{\"schema\":\"portcullis.policy/1\",\"version\":1e300,\"defaults\":{\"use_lists\":[]}}",
        "$.version: must be an integer from 1 to 9007199254740991");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":[]},"
            "\"groups\":[{\"name\":\"a\",\"sources\":[\"192.0.2.0/24\"]},"
            "{\"name\":\"b\",\"sources\":[\"192.0.2.300/24\"]}]}",
            "$.groups[1].sources[0]: '192.0.2.300/24' is not an address prefix");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":[]},"
            "\"proxy\":{\"ports\":{\"443\":\"tls\",\"443\":\"http\"}}}",
            "$.proxy.ports['443']: duplicate key");
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":[]},"
            "\"lists\":{\"a\":{\"category\":\"x\"},\"a\":{\"category\":\"y\"}}}",
            "$.lists.a: duplicate key");
    /* A hostile value is quoted safely in the message. */
    refused("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"defaults\":{\"use_lists\":"
            "[\"a\\nb\"]}}",
            "$.defaults.use_lists[0]: no list named 'a\\x0ab' (lists: none)");

    /* NULL error buffer, NULL arguments. */
    CU_ASSERT_EQUAL(pc_policy_parse("{", 1, &p, NULL, 0), -1);
    CU_ASSERT_EQUAL(pc_policy_parse(NULL, 0, &p, NULL, 0), -1);
}

static void test_doc_load_file(void)
{
    pc_policy *p = NULL;
    char err[512];
    CU_ASSERT_EQUAL(pc_policy_load_file("/nonexistent/policy.json", &p, err, sizeof(err)), -1);
    CU_ASSERT_STRING_EQUAL(err, "/nonexistent/policy.json: No such file or directory");
    CU_ASSERT_EQUAL(pc_policy_load_file("/", &p, err, sizeof(err)), -1);
    CU_ASSERT_STRING_EQUAL(err, "/: not a regular file");
    CU_ASSERT_EQUAL(pc_policy_load_file(SOURCE_DIR "/docs/examples/policy-block-skype.json", &p,
                                        err, sizeof(err)),
                    0);
    pc_policy_unref(p);
}

/* A big document (60000 domains, 20000 prefixes, 3000 groups, 500 lists)
 * parses in well under a second and every part of it is in force. */
static void test_doc_large(void)
{
    size_t cap = 8u << 20, n = 0;
    char *d = malloc(cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
#define OUT(...) (n += (size_t)snprintf(d + n, cap - n, __VA_ARGS__))
    OUT("{\"schema\":\"portcullis.policy/1\",\"version\":1,\"lists\":{");
    OUT("\"big\":{\"category\":\"skype\",\"domains\":[");
    for (unsigned i = 0; i < 60000; i++)
        OUT("%s\"d%u.example\"", i ? "," : "", i);
    OUT("],\"prefixes\":[");
    for (unsigned i = 0; i < 20000; i++)
        OUT("%s\"10.%u.%u.0/24\"", i ? "," : "", i >> 8, i & 255);
    OUT("]}");
    for (unsigned i = 0; i < 500; i++)
        OUT(",\"l%u\":{\"category\":\"c\",\"domains\":[\"x%u.example\"]}", i, i);
    OUT("},\"defaults\":{\"use_lists\":[\"big\"]},\"groups\":[");
    for (unsigned i = 0; i < 3000; i++)
        OUT("%s{\"name\":\"g%u\",\"sources\":[\"100.64.%u.%u/32\"],\"use_lists\":"
            "[\"l%u\",\"big\"]}",
            i ? "," : "", i, i >> 8, i & 255, i % 500);
    OUT("]}");
#undef OUT
    CU_ASSERT_TRUE_FATAL(n < cap - 1);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pc_policy *p = parse_ok(d);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (secs > 5.0) /* ASan and a loaded machine included */
        fprintf(stderr, "\n  parsing took %.2f s\n", secs);
    CU_ASSERT_TRUE(secs < 5.0);
    CU_ASSERT_EQUAL(pc_policy_group_count(p), 3000);
    const pc_group *g = pc_policy_group_for(p, SA("100.64.11.183")); /* 2999 = 11 * 256 + 183 */
    CU_ASSERT_STRING_EQUAL(pc_group_name(g), "g2999");
    pc_decision dd = pc_group_check_host(g, "www.d59999.example");
    CU_ASSERT_TRUE(dd.block);
    CU_ASSERT_STRING_EQUAL(dd.rule, "d59999.example");
    CU_ASSERT_TRUE(pc_group_check_host(g, "x499.example").block); /* 2999 % 500 */
    CU_ASSERT_FALSE(pc_group_check_host(g, "x498.example").block);
    CU_ASSERT_TRUE(pc_group_check_addr(g, SA("10.78.31.9")).block); /* 19999 */
    CU_ASSERT_FALSE(pc_group_check_addr(g, SA("10.78.32.9")).block);
    pc_policy_unref(p);
    free(d);
}

/* --- checks --------------------------------------------------------------- */

static void test_host_label_boundaries(void)
{
    pc_policy *p = parse_ok(doc);
    const pc_group *g = pc_policy_group_by_name(p, "office");
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    static const struct {
        const char *host;
        bool block;
        const char *list, *rule;
    } cases[] = {
        {"skype.com", true, "skype", "skype.com"},
        {"www.skype.com", true, "skype", "skype.com"},
        {"a.b.c.skype.com", true, "skype", "skype.com"},
        {"SKYPE.COM.", true, "skype", "skype.com"},
        {"Www.SkYpE.cOm", true, "skype", "skype.com"},
        {"static.skypeassets.com", true, "skype", "skypeassets.com"},
        {"notskype.com", false, NULL, NULL},
        {"skype.com.evil.net", false, NULL, NULL},
        {"skype.co", false, NULL, NULL},
        {"kype.com", false, NULL, NULL},
        {"com", false, NULL, NULL},
        {".skype.com", true, "skype", "skype.com"},
        {"x..skype.com", true, "skype", "skype.com"},
        {"skype.com..", false, NULL, NULL},
        {"", false, NULL, NULL},
        {".", false, NULL, NULL},
        {"evil.example", true, "defaults", "evil.example"},
        {"cdn.evil.example", true, "defaults", "evil.example"},
        {"teams.microsoft.com", false, NULL, NULL}, /* office does not use the teams list */
        /* IP literals are checked against the prefixes. */
        {"198.51.100.7", true, "skype", "198.51.100.0/24"},
        {"[2001:db8:5::1]", true, "skype", "2001:db8:5::/48"},
        {"2001:db8:5::1", true, "skype", "2001:db8:5::/48"},
        {"[::ffff:198.51.100.7]", true, "skype", "198.51.100.0/24"},
        {"3325256711", true, "skype", "198.51.100.0/24"}, /* 198.51.100.7 as one number */
        {"0xc6.0x33.0x64.7", true, "skype", "198.51.100.0/24"},
        {"192.0.2.66", true, "defaults", "192.0.2.66/32"},
        {"192.0.2.67", false, NULL, NULL},
        {"cafe.be", false, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pc_decision d = pc_group_check_host(g, cases[i].host);
        bool ok = d.block == cases[i].block && !d.exception &&
                  (cases[i].list ? d.list && strcmp(d.list, cases[i].list) == 0 : !d.list) &&
                  (cases[i].rule ? d.rule && strcmp(d.rule, cases[i].rule) == 0 : !d.rule);
        if (!ok) {
            fprintf(stderr, "\n  host '%s': block=%d list=%s rule=%s\n", cases[i].host, d.block,
                    d.list ? d.list : "-", d.rule ? d.rule : "-");
            CU_FAIL("host check");
        }
    }
    /* A huge name is checked too, and quickly: only suffixes that fit. */
    size_t n = 200000;
    char *huge = malloc(n + 16);
    CU_ASSERT_PTR_NOT_NULL_FATAL(huge);
    for (size_t i = 0; i < n; i += 2)
        memcpy(huge + i, "a.", 2);
    strcpy(huge + n, "skype.com");
    CU_ASSERT_TRUE(pc_group_check_host(g, huge).block);
    huge[n] = 'x';
    CU_ASSERT_FALSE(pc_group_check_host(g, huge).block);
    free(huge);
    CU_ASSERT_FALSE(pc_group_check_host(g, NULL).block);
    CU_ASSERT_FALSE(pc_group_check_host(NULL, "skype.com").block);
    pc_policy_unref(p);
}

static void test_path_suffixes(void)
{
    pc_policy *p = parse_ok(doc);
    const pc_group *g = pc_policy_group_by_name(p, "office");
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    static const struct {
        const char *path;
        const char *rule; /* NULL: allowed */
    } cases[] = {
        {"/download/skype.exe", "skype.exe"},
        {"/SKYPE.EXE", "skype.exe"},
        {"/a/SkypeSetup.exe", "skypesetup.exe"},
        {"/SkypeSetup/skype%2Eexe", "skype.exe"},
        {"/SkypeSetup/skype%2eEXE", "skype.exe"},
        {"/%53%4b%59%50%45%2E%45%58%45", "skype.exe"},
        {"/skype.exe;jsessionid=1", "skype.exe"},
        {"/skype.exe/", "skype.exe"},
        {"/skype.exe%00.jpg", "skype.exe"},
        {"/myskype.exe", "skype.exe"}, /* a suffix, as the white paper says */
        {"/files/x.torrent", ".torrent"},
        {"/skype.exe.txt", NULL},
        {"/skype.ex", NULL},
        {"/skype%2", NULL},
        {"/skype.exe%zz", NULL},
        {"/", NULL},
        {"", NULL},
        {"/teamsbootstrapper.exe", NULL}, /* office does not use the teams list */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pc_decision d = pc_group_check_path(g, cases[i].path);
        bool ok = cases[i].rule ? d.block && d.rule && strcmp(d.rule, cases[i].rule) == 0
                                : !d.block && !d.exception && !d.rule;
        if (!ok) {
            fprintf(stderr, "\n  path '%s': block=%d rule=%s\n", cases[i].path, d.block,
                    d.rule ? d.rule : "-");
            CU_FAIL("path check");
        }
    }
    /* The query is the caller's to strip: with it, the path does not end in
     * the suffix. */
    CU_ASSERT_FALSE(pc_group_check_path(g, "/skype.exe?x=1").block);
    /* A long path goes through the heap buffer. */
    size_t n = 100000;
    char *longp = malloc(n + 16);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longp);
    memset(longp, 'a', n);
    longp[0] = '/';
    strcpy(longp + n, "/skype%2eexe");
    CU_ASSERT_TRUE(pc_group_check_path(g, longp).block);
    free(longp);
    /* lab sets blocked_url_suffixes to [] and uses no list: nothing. */
    const pc_group *lab = pc_policy_group_by_name(p, "lab");
    CU_ASSERT_FALSE(pc_group_check_path(lab, "/x.torrent").block);
    CU_ASSERT_FALSE(pc_group_check_path(lab, "/skype.exe").block);
    pc_policy_unref(p);
}

static void test_downloads(void)
{
    pc_policy *p = parse_ok(doc);
    const pc_group *g = pc_policy_group_by_name(p, "office");
    const pc_group *lab = pc_policy_group_by_name(p, "lab");
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_PTR_NOT_NULL_FATAL(lab);
    static const char *const types[] = {
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-dosexec",
        "application/vnd.microsoft.portable-executable",
        "application/x-ms-installer",
        "application/x-msi",
        "Application/X-MSDownload; charset=binary",
        "  application/x-msi  ;x=y",
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        pc_decision d = pc_group_check_download(g, types[i], NULL, false);
        CU_ASSERT_TRUE(d.block);
        CU_ASSERT_STRING_EQUAL(d.list, "defaults");
        CU_ASSERT_FALSE(pc_group_check_download(lab, types[i], NULL, false).block);
    }
    pc_decision d = pc_group_check_download(g, "application/x-msdownload", "", false);
    CU_ASSERT_STRING_EQUAL(d.rule, "application/x-msdownload");
    static const char *const safe_types[] = {"text/html", "application/octet-stream",
                                             "application/x-msdownloadx", "", "application/"};
    for (size_t i = 0; i < sizeof(safe_types) / sizeof(safe_types[0]); i++)
        CU_ASSERT_FALSE(pc_group_check_download(g, safe_types[i], NULL, false).block);

    static const struct {
        const char *name;
        const char *rule;
    } names[] = {
        {"setup.exe", ".exe"},
        {"Setup.EXE", ".exe"},
        {"tool.msi", ".msi"},
        {"x.dll", ".dll"},
        {"x.scr", ".scr"},
        {"x.com", ".com"},
        {"app.msix", ".msix"},
        {"app.appx", ".appx"},
        {"patch.msp", ".msp"},
        {"setup.exe.", ".exe"},
        {"setup.exe . .", ".exe"},
        {"setup%2Eexe", ".exe"},
        {"C:\\temp\\setup.exe", ".exe"},
        {"/dl/files/setup.exe", ".exe"},
        {"SkypeSetup.exe", "skypesetup.exe"}, /* the list's suffix is the better reason */
        {"x.torrent", ".torrent"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        d = pc_group_check_download(g, "application/octet-stream", names[i].name, false);
        if (!d.block || !d.rule || strcmp(d.rule, names[i].rule) != 0) {
            fprintf(stderr, "\n  filename '%s': block=%d rule=%s\n", names[i].name, d.block,
                    d.rule ? d.rule : "-");
            CU_FAIL("download filename");
        }
    }
    static const char *const safe_names[] = {"report.pdf", "exe", "setup.exe.txt", "setup.ex",
                                             "a.exe/readme.txt"};
    for (size_t i = 0; i < sizeof(safe_names) / sizeof(safe_names[0]); i++)
        CU_ASSERT_FALSE(pc_group_check_download(g, "text/plain", safe_names[i], false).block);

    d = pc_group_check_download(g, "image/png", "cat.png", true);
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_STRING_EQUAL(d.rule, "MZ");
    CU_ASSERT_STRING_EQUAL(d.list, "defaults");
    CU_ASSERT_FALSE(pc_group_check_download(lab, "image/png", "setup.exe", true).block);
    CU_ASSERT_FALSE(pc_group_check_download(g, NULL, NULL, false).block);
    pc_policy_unref(p);
}

static void test_addresses(void)
{
    pc_policy *p = parse_ok(doc);
    const pc_group *g = pc_policy_group_by_name(p, "office");
    pc_decision d = pc_group_check_addr(g, SA("198.51.100.200"));
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_STRING_EQUAL(d.list, "skype");
    CU_ASSERT_STRING_EQUAL(d.rule, "198.51.100.0/24");
    d = pc_group_check_addr(g, SA("::ffff:198.51.100.200"));
    CU_ASSERT_TRUE(d.block);
    d = pc_group_check_addr(g, SA("2001:db8:5:1::1"));
    CU_ASSERT_STRING_EQUAL(d.rule, "2001:db8:5::/48");
    d = pc_group_check_addr(g, SA("192.0.2.66"));
    CU_ASSERT_STRING_EQUAL(d.list, "defaults");
    CU_ASSERT_FALSE(pc_group_check_addr(g, SA("203.0.113.1")).block);
    CU_ASSERT_FALSE(pc_group_check_addr(g, SA("8.8.8.8")).block);
    CU_ASSERT_FALSE(pc_group_check_addr(g, NULL).block);
    const pc_group *board = pc_policy_group_by_name(p, "board");
    d = pc_group_check_addr(board, SA("203.0.113.1"));
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_STRING_EQUAL(d.list, "teams");
    pc_policy_unref(p);
}

/* --- groups --------------------------------------------------------------- */

static void test_group_selection(void)
{
    pc_policy *p = parse_ok(doc);
    static const struct {
        const char *ip, *group;
    } cases[] = {
        {"192.0.2.1", "office"},   {"192.0.2.127", "office"},       {"192.0.2.128", "board"},
        {"192.0.2.255", "board"},  {"::ffff:192.0.2.130", "board"}, {"::ffff:192.0.2.5", "office"},
        {"2001:db8:1::77", "lab"}, {"10.9.255.255", "lab"},         {"10.10.0.1", "defaults"},
        {"192.0.3.1", "defaults"}, {"2001:db8:2::1", "defaults"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const pc_group *g = pc_policy_group_for(p, SA(cases[i].ip));
        CU_ASSERT_PTR_NOT_NULL_FATAL(g);
        if (strcmp(pc_group_name(g), cases[i].group) != 0) {
            fprintf(stderr, "\n  %s -> %s, want %s\n", cases[i].ip, pc_group_name(g),
                    cases[i].group);
            CU_FAIL("group selection");
        }
    }
    CU_ASSERT_STRING_EQUAL(pc_group_name(pc_policy_group_for(p, NULL)), "defaults");
    CU_ASSERT_EQUAL(pc_policy_group_count(p), 3);
    CU_ASSERT_PTR_NULL(pc_policy_group_by_name(p, "nobody"));
    CU_ASSERT_PTR_EQUAL(pc_policy_group_by_name(p, "defaults"), pc_policy_group_for(p, NULL));
    pc_policy_unref(p);
}

static void test_group_inheritance(void)
{
    pc_policy *p = parse_ok(doc);
    const pc_group *office = pc_policy_group_by_name(p, "office");
    const pc_group *board = pc_policy_group_by_name(p, "board");
    const pc_group *lab = pc_policy_group_by_name(p, "lab");
    const pc_group *def = pc_policy_group_by_name(p, "defaults");

    /* office sets nothing: everything from defaults, labelled "defaults". */
    CU_ASSERT_EQUAL(pc_group_cert_mode(office), PC_CERT_REQUIRED);
    pc_decision d = pc_group_check_host(office, "evil.example");
    CU_ASSERT_STRING_EQUAL(d.list, "defaults");
    d = pc_group_check_download(office, NULL, "a.exe", false);
    CU_ASSERT_STRING_EQUAL(d.list, "defaults");

    /* board overrides blocked_domains: the defaults' evil.example is gone,
     * its own games.example blocks as "group"; blocked_prefixes are still
     * inherited. use_lists is replaced, not merged. */
    CU_ASSERT_FALSE(pc_group_check_host(board, "evil.example").block);
    d = pc_group_check_host(board, "www.games.example");
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_STRING_EQUAL(d.list, "group");
    d = pc_group_check_addr(board, SA("192.0.2.66"));
    CU_ASSERT_STRING_EQUAL(d.list, "defaults");
    d = pc_group_check_host(board, "teams.microsoft.com");
    CU_ASSERT_STRING_EQUAL(d.list, "teams");

    /* lab: no lists, no suffixes, executables and certificates off. */
    CU_ASSERT_FALSE(pc_group_check_host(lab, "skype.com").block);
    CU_ASSERT_TRUE(pc_group_check_host(lab, "evil.example").block);
    CU_ASSERT_EQUAL(pc_group_cert_mode(lab), PC_CERT_OFF);
    CU_ASSERT_FALSE(pc_group_check_download(lab, "application/x-msi", "a.msi", true).block);

    CU_ASSERT_STRING_EQUAL(pc_group_name(def), "defaults");
    CU_ASSERT_TRUE(pc_group_check_host(def, "skype.com").block);
    pc_policy_unref(p);

    /* Inheritance of booleans from non-default defaults. */
    p = parse_ok("{\"schema\":\"portcullis.policy/1\",\"version\":1,"
                 "\"defaults\":{\"use_lists\":[],\"block_executables\":false,"
                 "\"require_certificate\":false,\"skype_exception\":true},"
                 "\"groups\":[{\"name\":\"a\",\"sources\":[\"10.0.0.0/8\"]},"
                 "{\"name\":\"b\",\"sources\":[\"11.0.0.0/8\"],\"block_executables\":true,"
                 "\"require_certificate\":true,\"skype_exception\":false}]}");
    const pc_group *a = pc_policy_group_by_name(p, "a");
    const pc_group *b = pc_policy_group_by_name(p, "b");
    CU_ASSERT_TRUE(pc_group_skype_exception(a));
    CU_ASSERT_EQUAL(pc_group_cert_mode(a), PC_CERT_OFF);
    CU_ASSERT_FALSE(pc_group_check_download(a, NULL, "x.exe", false).block);
    CU_ASSERT_FALSE(pc_group_skype_exception(b));
    CU_ASSERT_EQUAL(pc_group_cert_mode(b), PC_CERT_REQUIRED);
    d = pc_group_check_download(b, NULL, "x.exe", false);
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_STRING_EQUAL(d.list, "group");
    pc_policy_unref(p);
}

/* --- the Skype exception --------------------------------------------------- */

static void test_exception(void)
{
    pc_policy *p = parse_ok(doc);
    const pc_group *board = pc_policy_group_by_name(p, "board");
    CU_ASSERT_TRUE(pc_group_skype_exception(board));
    CU_ASSERT_EQUAL(pc_group_cert_mode(board), PC_CERT_EXEMPT);

    /* A rule from the skype list is lifted: no block, exception reported. */
    pc_decision d = pc_group_check_host(board, "static.skypeassets.com");
    CU_ASSERT_FALSE(d.block);
    CU_ASSERT_TRUE(d.exception);
    CU_ASSERT_STRING_EQUAL(d.list, "skype");
    CU_ASSERT_STRING_EQUAL(d.rule, "skypeassets.com");
    d = pc_group_check_addr(board, SA("198.51.100.1"));
    CU_ASSERT_FALSE(d.block);
    CU_ASSERT_TRUE(d.exception);
    d = pc_group_check_path(board, "/skype.exe");
    CU_ASSERT_FALSE(d.block);
    CU_ASSERT_TRUE(d.exception);
    CU_ASSERT_STRING_EQUAL(d.rule, "skype.exe");

    /* The group's own rules still apply, even naming a Skype domain: here
     * board's own blocked_domains has skype.com, so it blocks as "group". */
    d = pc_group_check_host(board, "web.skype.com");
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_FALSE(d.exception);
    CU_ASSERT_STRING_EQUAL(d.list, "group");
    CU_ASSERT_STRING_EQUAL(d.rule, "skype.com");

    /* Other lists are not lifted. */
    d = pc_group_check_host(board, "teams.microsoft.com");
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_FALSE(d.exception);
    d = pc_group_check_path(board, "/teamsbootstrapper.exe");
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_STRING_EQUAL(d.list, "teams");

    /* block_executables still applies: the Skype installer is lifted as a
     * list rule but blocked as an executable. */
    d = pc_group_check_download(board, "application/octet-stream", "SkypeSetup.exe", false);
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_FALSE(d.exception);
    CU_ASSERT_STRING_EQUAL(d.rule, ".exe");
    d = pc_group_check_download(board, "text/plain", "notes-skype.exe.txt", false);
    CU_ASSERT_FALSE(d.block);

    /* office, same lists, no exception: blocked. */
    const pc_group *office = pc_policy_group_by_name(p, "office");
    d = pc_group_check_host(office, "static.skypeassets.com");
    CU_ASSERT_TRUE(d.block);
    CU_ASSERT_FALSE(d.exception);
    pc_policy_unref(p);

    /* With executables allowed, the Skype download is an exception event. */
    p = parse_ok("{\"schema\":\"portcullis.policy/1\",\"version\":1,"
                 "\"lists\":{\"s\":{\"category\":\"skype\",\"url_suffixes\":[\"skypesetup.exe\"]}},"
                 "\"defaults\":{\"use_lists\":[\"s\"],\"skype_exception\":true,"
                 "\"block_executables\":false,\"require_certificate\":false}}");
    const pc_group *def = pc_policy_group_for(p, NULL);
    d = pc_group_check_download(def, "application/x-msdownload", "SkypeSetup.exe", true);
    CU_ASSERT_FALSE(d.block);
    CU_ASSERT_TRUE(d.exception);
    CU_ASSERT_STRING_EQUAL(d.list, "s");
    /* An exception without certificates required is simply off. */
    CU_ASSERT_EQUAL(pc_group_cert_mode(def), PC_CERT_OFF);
    pc_policy_unref(p);
}

/* --- reference counting ---------------------------------------------------- */

typedef struct worker_arg {
    pc_policy *p;
    unsigned blocked;
} worker_arg;

static void *worker(void *arg)
{
    worker_arg *w = arg;
    for (int i = 0; i < 20000; i++) {
        pc_policy *mine = pc_policy_ref(w->p);
        const pc_group *g = pc_policy_group_for(mine, SA(i % 2 ? "192.0.2.1" : "192.0.2.129"));
        w->blocked += pc_group_check_host(g, "www.skype.com").block;
        w->blocked += pc_group_check_path(g, "/skype.exe").block;
        pc_policy_unref(mine);
    }
    return NULL;
}

static void test_refcount(void)
{
    pc_policy *p = parse_ok(doc);
    CU_ASSERT_PTR_EQUAL(pc_policy_ref(p), p);
    pc_policy_unref(p); /* back to one */
    pc_policy_ref(NULL);
    pc_policy_unref(NULL);

    /* Threads share one policy, each taking and dropping references; the
     * owner drops its own reference while they run, so the last worker's
     * unref frees it (ASan reports any use after free or leak). */
    enum { N = 4 };
    pthread_t t[N];
    worker_arg w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker_arg){pc_policy_ref(p), 0};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, worker, &w[i]), 0);
    }
    pc_policy_unref(p);
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        /* office blocks both (10000 x 2); board: host blocked by its own rule,
         * path lifted (10000 x 1). */
        CU_ASSERT_EQUAL(w[i].blocked, 30000);
        pc_policy_unref(w[i].p);
    }
}

/* --- built-in policy, shipped lists, examples ------------------------------ */

static cJSON *load_json(const char *path)
{
    size_t len;
    char *text = slurp(path, &len);
    if (!text) {
        fprintf(stderr, "\n  cannot read %s\n", path);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j)
        fprintf(stderr, "\n  %s is not JSON\n", path);
    return j;
}

static void test_builtin(void)
{
    pc_policy *p = pc_policy_builtin();
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_TRUE(pc_policy_is_builtin(p));
    CU_ASSERT_EQUAL(pc_policy_version(p), 1);
    uint16_t ports[4];
    CU_ASSERT_EQUAL(pc_policy_ports(p, ports, 4), 2);
    CU_ASSERT_EQUAL(ports[0], 80);
    CU_ASSERT_EQUAL(ports[1], 443);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 80), PC_PROTO_HTTP);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 443), PC_PROTO_TLS);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 554), PC_PROTO_NONE);
    CU_ASSERT_EQUAL(pc_policy_port_proto(p, 1755), PC_PROTO_NONE);
    const pc_group *g = pc_policy_group_for(p, SA("192.0.2.1"));
    CU_ASSERT_STRING_EQUAL(pc_group_name(g), "defaults");
    CU_ASSERT_EQUAL(pc_group_cert_mode(g), PC_CERT_REQUIRED);
    CU_ASSERT_TRUE(pc_group_check_download(g, NULL, "x.msi", false).block);
    CU_ASSERT_TRUE(pc_group_check_download(g, NULL, NULL, true).block);

    /* Every entry of the shipped Skype list is in force. */
    cJSON *list = load_json(SOURCE_DIR "/shared/lists/skype.json");
    CU_ASSERT_PTR_NOT_NULL_FATAL(list);
    const cJSON *e;
    unsigned n = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(list, "domains"))
    {
        char host[300];
        snprintf(host, sizeof(host), "www.%s", e->valuestring);
        pc_decision d = pc_group_check_host(g, host);
        CU_ASSERT_TRUE(d.block);
        CU_ASSERT_STRING_EQUAL(d.list, "skype");
        n++;
    }
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(list, "url_suffixes"))
    {
        char path[300];
        snprintf(path, sizeof(path), "/download/%s", e->valuestring);
        CU_ASSERT_TRUE(pc_group_check_path(g, path).block);
        n++;
    }
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(list, "prefixes"))
    {
        pc_cidr c;
        CU_ASSERT_EQUAL_FATAL(pc_cidr_parse(e->valuestring, &c, NULL, 0), 0);
        char txt[64];
        pc_cidr_format(&c, txt, sizeof(txt));
        *strchr(txt, '/') = '\0';
        CU_ASSERT_TRUE(pc_group_check_host(g, txt).block);
        n++;
    }
    CU_ASSERT_TRUE(n >= 4);
    CU_ASSERT_TRUE(pc_group_check_host(g, "www.skype.com").block);
    CU_ASSERT_TRUE(pc_group_check_path(g, "/SkypeSetup/skype%2Eexe").block);
    CU_ASSERT_FALSE(pc_group_check_host(g, "example.org").block);
    CU_ASSERT_FALSE(pc_group_check_host(g, "login.microsoftonline.com").block);
    cJSON_Delete(list);
    pc_policy_unref(p);
}

/* The shipped lists must themselves be valid list entries. */
static void test_shipped_lists(void)
{
    static const char *const names[] = {"skype", "teams"};
    for (size_t i = 0; i < 2; i++) {
        char path[512];
        snprintf(path, sizeof(path), SOURCE_DIR "/shared/lists/%s.json", names[i]);
        size_t len;
        char *list = slurp(path, &len);
        CU_ASSERT_PTR_NOT_NULL_FATAL(list);
        size_t cap = len + 256;
        char *docbuf = malloc(cap);
        CU_ASSERT_PTR_NOT_NULL_FATAL(docbuf);
        snprintf(docbuf, cap,
                 "{\"schema\":\"portcullis.policy/1\",\"version\":1,\"lists\":{\"%s\":%s},"
                 "\"defaults\":{\"use_lists\":[\"%s\"]}}",
                 names[i], list, names[i]);
        pc_policy *p = parse_ok(docbuf);
        pc_policy_unref(p);
        cJSON *j = cJSON_Parse(list);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItem(j, "category")->valuestring, names[i]);
        CU_ASSERT_TRUE(cJSON_GetArraySize(cJSON_GetObjectItem(j, "sources")) > 0);
        cJSON_Delete(j);
        free(docbuf);
        free(list);
    }
    /* Shared Microsoft domains stay out of the Teams list: blocking them
     * would break Office. */
    cJSON *teams = load_json(SOURCE_DIR "/shared/lists/teams.json");
    CU_ASSERT_PTR_NOT_NULL_FATAL(teams);
    char buf[4096];
    char *text = cJSON_PrintUnformatted(cJSON_GetObjectItem(teams, "domains"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    snprintf(buf, sizeof(buf), "%s", text);
    static const char *const shared[] = {"\"live.com\"",   "microsoftonline.com", "\"office.net\"",
                                         "\"office.com\"", "\"microsoft.com\"",   "\"aka.ms\"",
                                         "windows.net"};
    for (size_t i = 0; i < sizeof(shared) / sizeof(shared[0]); i++)
        CU_ASSERT_PTR_NULL(strstr(buf, shared[i]));
    free(text);
    cJSON_Delete(teams);
}

static void test_examples(void)
{
    static const char *const examples[] = {"policy-block-skype.json",
                                           "policy-skype-exception.json"};
    static const char *const lists[] = {"skype", "teams"};
    for (size_t i = 0; i < 2; i++) {
        char path[512];
        snprintf(path, sizeof(path), SOURCE_DIR "/docs/examples/%s", examples[i]);
        pc_policy *p = NULL;
        char err[512];
        int rc = pc_policy_load_file(path, &p, err, sizeof(err));
        if (rc != 0)
            fprintf(stderr, "\n  %s: %s\n", examples[i], err);
        CU_ASSERT_EQUAL_FATAL(rc, 0);

        /* The lists in the example are the shipped ones, exactly. */
        cJSON *ex = load_json(path);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ex);
        const cJSON *exl = cJSON_GetObjectItemCaseSensitive(ex, "lists");
        CU_ASSERT_EQUAL(cJSON_GetArraySize(exl), 2);
        for (size_t k = 0; k < 2; k++) {
            char lp[512];
            snprintf(lp, sizeof(lp), SOURCE_DIR "/shared/lists/%s.json", lists[k]);
            cJSON *shipped = load_json(lp);
            CU_ASSERT_PTR_NOT_NULL_FATAL(shipped);
            const cJSON *embedded = cJSON_GetObjectItemCaseSensitive(exl, lists[k]);
            if (!cJSON_Compare(embedded, shipped, true)) {
                fprintf(stderr, "\n  %s: lists.%s differs from shared/lists/%s.json\n", examples[i],
                        lists[k], lists[k]);
                CU_FAIL("example list differs from the shipped list");
            }
            cJSON_Delete(shipped);
        }
        cJSON_Delete(ex);

        /* What each example promises. */
        const pc_group *lan = pc_policy_group_for(p, SA("192.0.2.10"));
        CU_ASSERT_TRUE(pc_group_check_host(lan, "www.skype.com").block);
        CU_ASSERT_TRUE(pc_group_check_path(lan, "/SkypeSetup.exe").block);
        CU_ASSERT_EQUAL(pc_group_cert_mode(lan), PC_CERT_REQUIRED);
        const pc_group *board = pc_policy_group_for(p, SA("192.0.2.200"));
        pc_decision d = pc_group_check_host(board, "www.skype.com");
        if (i == 0) {
            CU_ASSERT_TRUE(d.block);
        } else {
            CU_ASSERT_STRING_EQUAL(pc_group_name(board), "board");
            CU_ASSERT_FALSE(d.block);
            CU_ASSERT_TRUE(d.exception);
            CU_ASSERT_EQUAL(pc_group_cert_mode(board), PC_CERT_EXEMPT);
        }
        pc_policy_unref(p);
    }
}

/* --- vectors -------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The *.json names in dir, sorted; *n gets the count. */
static char **json_files(const char *dir, size_t *n)
{
    DIR *d = opendir(dir);
    *n = 0;
    if (!d)
        return NULL;
    char **v = NULL;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".json") != 0)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nv = realloc(v, cap * sizeof(*v));
            if (!nv)
                break;
            v = nv;
        }
        v[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    if (v)
        qsort(v, *n, sizeof(*v), cmp_str);
    return v;
}

static void test_vectors_bad(void)
{
    size_t n;
    char **files = json_files(VECTOR_DIR "/policy/bad", &n);
    CU_ASSERT_TRUE_FATAL(files != NULL && n >= 30);
    for (size_t i = 0; i < n; i++) {
        char path[1024], expath[1024];
        snprintf(path, sizeof(path), VECTOR_DIR "/policy/bad/%s", files[i]);
        snprintf(expath, sizeof(expath), VECTOR_DIR "/policy/bad/%.*s.expect",
                 (int)(strlen(files[i]) - 5), files[i]);
        size_t len;
        char *json = slurp(path, &len);
        char *expect = slurp(expath, NULL);
        if (!json || !expect) {
            fprintf(stderr, "\n  %s: missing %s\n", files[i], json ? expath : path);
            CU_FAIL("vector files");
            free(json);
            free(expect);
            free(files[i]);
            continue;
        }
        expect[strcspn(expect, "\n")] = '\0';
        pc_policy *p = NULL;
        char err[512] = "";
        int rc = pc_policy_parse(json, len, &p, err, sizeof(err));
        if (rc == 0) {
            fprintf(stderr, "\n  %s: accepted, should be refused with '%s'\n", files[i], expect);
            CU_FAIL("bad vector accepted");
            pc_policy_unref(p);
        } else if (expect[0] != '$' || !strstr(expect, ": ") ||
                   strncmp(err, expect, strlen(expect)) != 0) {
            fprintf(stderr, "\n  %s:\n    expected '%s'\n    got      '%s'\n", files[i], expect,
                    err);
            CU_FAIL("bad vector error");
        } else {
            CU_PASS("refused as expected");
        }
        free(json);
        free(expect);
        free(files[i]);
    }
    free(files);
}

static void test_vectors_good(void)
{
    size_t n;
    char **files = json_files(VECTOR_DIR "/policy/good", &n);
    CU_ASSERT_TRUE_FATAL(files != NULL && n >= 3);
    for (size_t i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof(path), VECTOR_DIR "/policy/good/%s", files[i]);
        pc_policy *p = NULL;
        char err[512];
        if (pc_policy_load_file(path, &p, err, sizeof(err)) != 0) {
            fprintf(stderr, "\n  %s refused: %s\n", files[i], err);
            CU_FAIL("good vector refused");
        } else {
            pc_policy_unref(p);
        }
        free(files[i]);
    }
    free(files);
}

int unit_register(void)
{
    static const unit_case cidr[] = {
        {"parse_and_format", test_cidr_parse},
        {"contains", test_cidr_contains},
        {"set_longest_prefix", test_cidrset_lpm},
        {"set_large", test_cidrset_large},
        {NULL, NULL},
    };
    static const unit_case document[] = {
        {"minimal_and_defaults", test_doc_minimal_defaults},
        {"proxy_values", test_doc_proxy_values},
        {"errors_name_the_path", test_doc_errors},
        {"load_file", test_doc_load_file},
        {"large_document", test_doc_large},
        {"builtin", test_builtin},
        {"shipped_lists", test_shipped_lists},
        {"examples", test_examples},
        {NULL, NULL},
    };
    static const unit_case checks[] = {
        {"host_label_boundaries", test_host_label_boundaries},
        {"path_suffixes", test_path_suffixes},
        {"downloads", test_downloads},
        {"addresses", test_addresses},
        {NULL, NULL},
    };
    static const unit_case groups[] = {
        {"selection", test_group_selection},
        {"inheritance", test_group_inheritance},
        {"skype_exception", test_exception},
        {"refcount_threads", test_refcount},
        {NULL, NULL},
    };
    static const unit_case vectors[] = {
        {"bad_refused_with_path", test_vectors_bad},
        {"good_accepted", test_vectors_good},
        {NULL, NULL},
    };
    if (unit_add_suite("policy_cidr", cidr) != 0 ||
        unit_add_suite("policy_document", document) != 0 ||
        unit_add_suite("policy_checks", checks) != 0 ||
        unit_add_suite("policy_groups", groups) != 0 ||
        unit_add_suite("policy_vectors", vectors) != 0)
        return -1;
    return 0;
}
