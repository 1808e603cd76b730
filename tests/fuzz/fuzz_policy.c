/* fuzz_policy.c - libFuzzer target for the policy parser and for every check
 * the proxy runs with bytes from the network (host, path, content type, file
 * name, addresses) and for the CIDR parser.
 *
 * Each input is parsed as a policy document; when it is accepted, the checks
 * run against its groups. The same input, as a string, is also fed to the
 * checks of a fixed policy and of the built-in one, so the checks are fuzzed
 * even when the document is refused.
 *
 * Build and run (the generated source comes from any CMake build tree):
 *   cmake -S . -B build-policy
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ishared \
 *     tests/fuzz/fuzz_policy.c shared/pc_policy.c shared/pc_cidr.c \
 *     build-policy/shared/pc_policy_builtin.c -lcjson -o fuzz_policy
 *   mkdir -p corpus
 *   find tests/vectors/policy docs/examples shared/lists -name '*.json' -exec cp {} corpus/ ';'
 *   ./fuzz_policy -max_total_time=60 corpus
 */
#include "pc_cidr.h"
#include "pc_policy.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fixed_doc[] =
    "{\"schema\":\"portcullis.policy/1\",\"version\":1,"
    "\"lists\":{\"skype\":{\"category\":\"skype\",\"domains\":[\"skype.com\",\"skype.net\"],"
    "\"prefixes\":[\"198.51.100.0/24\",\"2001:db8:5::/48\"],"
    "\"url_suffixes\":[\"skype.exe\",\"/x;y\"]},"
    "\"teams\":{\"category\":\"teams\",\"domains\":[\"teams.microsoft.com\"],"
    "\"prefixes\":[\"0.0.0.0/1\"],\"url_suffixes\":[\".zip\"]}},"
    "\"defaults\":{\"use_lists\":[\"skype\"],\"blocked_domains\":[\"a.b\"]},"
    "\"groups\":[{\"name\":\"x\",\"sources\":[\"128.0.0.0/1\"],\"skype_exception\":true,"
    "\"use_lists\":[\"teams\",\"skype\"]},"
    "{\"name\":\"y\",\"sources\":[\"::/0\"],\"block_executables\":false}]}";

static pc_policy *fixed, *builtin;

/* An IPv4 and an IPv6 socket address from the first input bytes. */
static void addrs(const uint8_t *data, size_t size, struct sockaddr_in *v4, struct sockaddr_in6 *v6)
{
    memset(v4, 0, sizeof(*v4));
    memset(v6, 0, sizeof(*v6));
    v4->sin_family = AF_INET;
    v6->sin6_family = AF_INET6;
    memcpy(&v4->sin_addr, data, size < 4 ? size : 4);
    memcpy(&v6->sin6_addr, data, size < 16 ? size : 16);
}

static void run_checks(const pc_policy *p, const char *s, const struct sockaddr *a4,
                       const struct sockaddr *a6, bool mz)
{
    const pc_group *groups[4] = {
        pc_policy_group_for(p, a4),
        pc_policy_group_for(p, a6),
        pc_policy_group_by_name(p, "defaults"),
        pc_policy_group_by_name(p, s),
    };
    for (size_t i = 0; i < 4; i++) {
        const pc_group *g = groups[i];
        if (!g)
            continue;
        (void)pc_group_name(g);
        (void)pc_group_cert_mode(g);
        (void)pc_group_check_host(g, s);
        (void)pc_group_check_path(g, s);
        (void)pc_group_check_download(g, s, s, mz);
        (void)pc_group_check_addr(g, a4);
        (void)pc_group_check_addr(g, a6);
    }
    uint16_t ports[8];
    (void)pc_policy_ports(p, ports, 8);
    (void)pc_policy_port_proto(p, (uint16_t)(s[0] * 256 + (s[0] ? s[1] : 0)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fixed) {
        char err[256];
        if (pc_policy_parse(fixed_doc, sizeof(fixed_doc) - 1, &fixed, err, sizeof(err)) != 0)
            abort(); /* the harness is wrong, not the input */
        builtin = pc_policy_builtin();
        if (!builtin)
            abort();
    }

    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    addrs(data, size, &v4, &v6);
    const struct sockaddr *a4 = (const struct sockaddr *)&v4;
    const struct sockaddr *a6 = (const struct sockaddr *)&v6;

    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    bool mz = size && (data[0] & 1);

    pc_policy *p = NULL;
    char err[512];
    if (pc_policy_parse((const char *)data, size, &p, err, sizeof(err)) == 0) {
        pc_policy *again = pc_policy_ref(p);
        (void)pc_policy_version(again);
        (void)pc_policy_proxy(again);
        (void)pc_policy_group_count(again);
        run_checks(again, s, a4, a6, mz);
        pc_policy_unref(again);
        pc_policy_unref(p);
    } else if (err[0] != '$') {
        abort(); /* every refusal names a JSON path */
    }

    run_checks(fixed, s, a4, a6, mz);
    run_checks(builtin, s, a4, a6, mz);

    pc_cidr c;
    char cerr[256];
    if (pc_cidr_parse(s, &c, cerr, sizeof(cerr)) == 0) {
        char buf[64];
        pc_cidr_format(&c, buf, sizeof(buf));
        pc_cidr again;
        /* Formatting and parsing again gives the same prefix. */
        if (pc_cidr_parse(buf, &again, NULL, 0) != 0 || memcmp(&c, &again, sizeof(c)) != 0)
            abort();
        (void)pc_cidr_contains(&c, a4);
        (void)pc_cidr_contains(&c, a6);
    }
    free(s);
    return 0;
}
