/* fuzz_firewall.c - libFuzzer target for the firewall part of the policy
 * document and the ruleset generator (node/firewall.c): any document the
 * parser accepts must generate a ruleset or be refused with a JSON path,
 * never crash; the generator is pure, so this needs no nftables.
 *
 * Build and run:
 *   cmake -S . -B build-fuzz -DPORTCULLIS_FUZZ=ON -DCMAKE_C_COMPILER=clang
 *   cmake --build build-fuzz --target fuzz_firewall
 *   ./build-fuzz/tests/fuzz/fuzz_firewall -max_total_time=60 tests/vectors/firewall
 */
#include "firewall.h"
#include "pc_policy.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pc_policy *p = NULL;
    char err[512];
    if (pc_policy_parse((const char *)data, size, &p, err, sizeof(err)) != 0)
        return 0;
    static const fw_local locals[] = {
        {.lan_ifaces = {"lan0"}, .nifaces = 1, .proxy_port = 3129},
        {.lan_ifaces = {"lan0", "lan1"}, .nifaces = 2, .proxy_port = 0},
    };
    for (size_t i = 0; i < sizeof(locals) / sizeof(locals[0]); i++) {
        char *rs = NULL;
        err[0] = '\0';
        if (fw_generate(p, &locals[i], &rs, err, sizeof(err)) == 0) {
            if (!rs || strstr(rs, "table inet " FW_TABLE) == NULL)
                abort(); /* a ruleset without its table */
        } else if (err[0] == '\0') {
            abort(); /* a refusal must say why */
        }
        free(rs);
    }
    pc_policy_unref(p);
    return 0;
}
