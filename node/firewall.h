/* firewall.h - the node's firewall (docs/firewall.md): a pure generator from
 * the policy's firewall part to an nftables ruleset (one "table inet
 * portcullis"), and its atomic application and read-back through
 * libnftables. Only forwarded LAN traffic and its redirect to the proxy are
 * touched; the node's own traffic never is.
 */
#ifndef PORTCULLIS_FIREWALL_H
#define PORTCULLIS_FIREWALL_H

#include "pc_policy.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FW_WUR __attribute__((warn_unused_result))

#define FW_TABLE "portcullis"
#define FW_MAX_IFACES 16

/* What the node itself knows (not policy). */
typedef struct fw_local {
    const char *lan_ifaces[FW_MAX_IFACES]; /* --lan-interface, at least one */
    size_t nifaces;
    uint16_t proxy_port; /* the transparent listener's port (web "transparent"); 0: none */
} fw_local;

/* The ruleset for p (NULL, the built-in policy, or a document without a
 * firewall part: the built-in firewall with p's proxy ports)
 * as nftables text, starting with the table's removal when present so the
 * whole is one transaction. Pure. Returns 0 and *out (free()), or -1 with
 * err naming the policy field ("$.firewall.allow[3].ports[0]: ..."). */
FW_WUR int fw_generate(const pc_policy *p, const fw_local *local, char **out, char *err,
                       size_t errlen);

/* Applies a generated ruleset in one libnftables transaction. On failure
 * the previous ruleset stays and err holds nftables' own message. */
FW_WUR int fw_apply(const char *ruleset, char *err, size_t errlen);

/* Checks a ruleset with the kernel without applying it (nft -c). */
FW_WUR int fw_check(const char *ruleset, char *err, size_t errlen);

/* Adds the table's counters to out ({"drop_default_packets": n, ...});
 * nothing when the table is absent. Returns 0 or -1 with err. */
FW_WUR int fw_counters(cJSON *out, char *err, size_t errlen);

/* The loaded table as nftables prints it (*out, free()), or NULL in *out
 * when there is none. */
FW_WUR int fw_show(char **out, char *err, size_t errlen);

/* Whether the loaded table is the one ruleset loads: *same is true when
 * nftables lists both alike (without counter values). ruleset is loaded in
 * a private network namespace of a forked child, never on the host; needs
 * root. *same is false when no table is loaded. Returns 0 or -1 with err. */
FW_WUR int fw_compare(const char *ruleset, bool *same, char *err, size_t errlen);

/* What the loaded table says of the node that loaded it: its LAN
 * interfaces (copied into names) and the port it redirects web traffic to
 * (0: none), for `firewall show` run without the node's options. Returns 1
 * and *out, 0 when no table is loaded, -1 with err. */
FW_WUR int fw_loaded_local(fw_local *out, char names[FW_MAX_IFACES][32], char *err, size_t errlen);

/* Removes the table (used by tests and `firewall flush`). */
FW_WUR int fw_remove(char *err, size_t errlen);

#endif
