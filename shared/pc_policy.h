/* pc_policy.h - the effective-policy document a node enforces: parsed and
 * validated strictly (every problem named by its JSON path), then read-only
 * and shared by all proxy threads. The controller produces it later; today it
 * comes from a file (schema/policy.schema.json, docs/policy.md).
 *
 * A connection takes a reference to the policy current when it starts and
 * keeps it to the end, so a policy swap never changes the rules under a live
 * connection.
 */
#ifndef PORTCULLIS_PC_POLICY_H
#define PORTCULLIS_PC_POLICY_H

#include "pc_cidr.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PC_POLICY_SCHEMA "portcullis.policy/1"
/* A larger document is refused before it is parsed. */
#define PC_POLICY_MAX_BYTES (16u * 1024 * 1024)

typedef struct pc_policy pc_policy;
typedef struct pc_group pc_group;

/* What the proxy runs on a port (transparent mode: the original destination
 * port; explicit mode: the CONNECT target port, or 80 for absolute-form). */
typedef enum {
    PC_PROTO_NONE = 0, /* not served: connections to it are refused */
    PC_PROTO_HTTP,
    PC_PROTO_TLS,
    PC_PROTO_RTSP,
    PC_PROTO_MMS,
    PC_PROTO_PASSTHROUGH, /* no conformance check (operator's choice) */
} pc_proto;

const char *pc_proto_name(pc_proto p);

/* The policy's optional "firewall" part (docs/firewall.md), as parsed:
 * what node/firewall.c turns into an nftables ruleset. */
typedef enum {
    PC_FW_WEB_TRANSPARENT = 0, /* LAN web traffic is redirected to this node's proxy */
    PC_FW_WEB_PROXY = 1,       /* the proxy runs elsewhere: only web_devices reach web ports */
} pc_fw_web;

typedef struct pc_fw_ports {
    uint16_t lo, hi; /* one port ("25": lo == hi) or a range ("8000-8100"), lo <= hi */
} pc_fw_ports;

/* One whitelist entry: devices may reach ports over proto anywhere. */
typedef struct pc_fw_allow {
    const char *name;       /* "" when the entry has none */
    uint8_t proto;          /* IPPROTO_TCP (6) or IPPROTO_UDP (17) */
    const pc_cidr *devices; /* at least one */
    size_t ndevices;
    const pc_fw_ports *ports; /* at least one */
    size_t nports;
} pc_fw_allow;

typedef struct pc_firewall {
    const pc_cidr *lan; /* LAN prefixes; none: any source on a LAN interface */
    size_t nlan;
    pc_fw_web web;
    const pc_cidr *web_devices; /* the proxy hosts (web "proxy" only) */
    size_t nweb_devices;
    const pc_fw_allow *allow;
    size_t nallow;
    bool dns_any;       /* "dns": null: DNS to any resolver */
    const pc_cidr *dns; /* otherwise DNS only to these (none: to none) */
    size_t ndns;
    bool high_ports_block;    /* drop destination ports >= high_ports_from */
    uint16_t high_ports_from; /* 1..65535 */
    unsigned log_per_minute;  /* 0: drops are not logged */
} pc_firewall;

/* Whitelist entries after expansion (devices x ports, all entries) a
 * document may hold. */
#define PC_FW_MAX_ALLOW 10000

typedef struct pc_proxy_settings {
    unsigned max_connections;    /* client connections at once, all threads */
    unsigned header_timeout_ms;  /* a head or handshake must complete in this */
    unsigned idle_timeout_ms;    /* no byte either way for this long: close */
    unsigned connect_timeout_ms; /* DNS + TCP connect upstream */
    const char *ca_file;         /* "" = system trust store */
    unsigned probe_ttl_s;        /* TLS 1.3 probe: cache a success */
    unsigned probe_fail_ttl_s;   /* TLS 1.3 probe: cache a failure */
    unsigned probe_timeout_ms;   /* TLS 1.3 probe: time limit of one probe */
    bool log_allowed;            /* an event for every allowed connection */
} pc_proxy_settings;

/* Parses and validates a policy document. On success returns 0 and *out
 * holds one reference. On failure returns -1, *out is untouched, and err
 * holds "<json path>: <problem>", e.g.
 * "$.groups[1].sources[0]: '192.0.2.300/24' is not an address prefix". */
int pc_policy_parse(const char *json, size_t len, pc_policy **out, char *err, size_t errlen);
/* The same from a file; err names the file for I/O problems. */
int pc_policy_load_file(const char *path, pc_policy **out, char *err, size_t errlen);
/* The built-in policy for a node with nothing else: the conformance checks
 * on 80/443 only, the shipped Skype list blocked, certificates required,
 * executables blocked; its firewall part is the built-in firewall
 * ({"web": "transparent", "dns": []}). Built from shared/lists/skype.json
 * at build time. Returns one reference; NULL only when memory runs out. */
pc_policy *pc_policy_builtin(void);
/* Whether p came from pc_policy_builtin() rather than a document. */
bool pc_policy_is_builtin(const pc_policy *p);

pc_policy *pc_policy_ref(pc_policy *p); /* atomic; returns p */
void pc_policy_unref(pc_policy *p);     /* atomic; frees at zero */

uint64_t pc_policy_version(const pc_policy *p);
/* The document's firewall part, or NULL when it has none. The built-in
 * policy's is the built-in firewall: everything forwarded dropped, LAN web
 * traffic redirected to the proxy (docs/firewall.md, "Fail closed"). Lives
 * as long as p. */
const pc_firewall *pc_policy_firewall(const pc_policy *p);
const pc_proxy_settings *pc_policy_proxy(const pc_policy *p);
pc_proto pc_policy_port_proto(const pc_policy *p, uint16_t port);
/* The served ports (proto != PC_PROTO_NONE) in ascending order: writes at
 * most max of them to ports (may be NULL when max is 0) and returns how many
 * there are in all. */
size_t pc_policy_ports(const pc_policy *p, uint16_t *ports, size_t max);

/* The group of a source address: the group with the longest matching source
 * prefix, else the default group. Never NULL. */
const pc_group *pc_policy_group_for(const pc_policy *p, const struct sockaddr *src);
/* The named group ("defaults" names the default group), or NULL. */
const pc_group *pc_policy_group_by_name(const pc_policy *p, const char *name);
/* Groups in the document, not counting the default group. */
size_t pc_policy_group_count(const pc_policy *p);
/* A group's name; the default group is "defaults". The string lives as long
 * as the policy. */
const char *pc_group_name(const pc_group *g);
bool pc_group_skype_exception(const pc_group *g);

/* What one policy check found. When several rules match, a rule that blocks
 * wins over one the exception lifts (then exception is false). list and rule
 * are NULL when nothing matched; otherwise they live as long as the policy. */
typedef struct pc_decision {
    bool block;       /* the connection must be blocked */
    bool exception;   /* a Skype rule matched but the group's exception lifted it */
    const char *list; /* where the rule comes from: a list name ("skype"), or
                         "group" / "defaults" for the group's own blocked_*
                         and block_executables (whichever the group took) */
    const char *rule; /* the rule that matched, e.g. "skype.com", "skype.exe",
                         "52.112.0.0/14", ".msi", "application/x-msi", "MZ" */
} pc_decision;

/* Host names (Host, CONNECT target, SNI, certificate names): a rule
 * "skype.com" matches skype.com and every name under it, on label
 * boundaries, never notskype.com. Case and a trailing dot are ignored. An
 * IP literal is checked against the prefix rules instead. */
pc_decision pc_group_check_host(const pc_group *g, const char *host);
/* Destination address against the blocked prefixes. */
pc_decision pc_group_check_addr(const pc_group *g, const struct sockaddr *addr);
/* URL path (without query) against the blocked suffixes, case-insensitive,
 * after percent-decoding. Also tried: the path cut at a decoded NUL, and
 * without ";params" of its last segment and trailing slashes. */
pc_decision pc_group_check_path(const pc_group *g, const char *path);
/* An HTTP response: executable by media type, by Content-Disposition file
 * name extension, or by "MZ" at the start of the body. filename (may be NULL
 * or "") is also checked against the blocked URL suffixes; a path is cut to
 * its last segment, percent-decoded, and trailing dots and spaces (ignored
 * by Windows) are dropped. content_type may carry parameters. */
pc_decision pc_group_check_download(const pc_group *g, const char *content_type,
                                    const char *filename, bool body_starts_mz);

typedef enum {
    PC_CERT_OFF = 0,      /* the group does not require certificates */
    PC_CERT_REQUIRED = 1, /* a failing certificate blocks */
    PC_CERT_EXEMPT = 2,   /* required, but the Skype exception lifts it: a
                             failure is reported as an exception, not blocked */
} pc_cert_mode;
pc_cert_mode pc_group_cert_mode(const pc_group *g);

#endif
