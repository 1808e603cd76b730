/* model.h - the controller's policy model in memory: what the store loads
 * for one revision and what the compiler (compiler.h) turns into one
 * effective-policy document per office node. Plain data, no behaviour; the
 * store owns every string and array (model_free releases them).
 *
 * Scopes, from least to most specific: global, region, office, group. A
 * setting left unset (has_* false, or NULL) at a scope inherits from the
 * scope above; for a rule on the same (kind, value) the most specific scope
 * wins (docs/controller-policy.md).
 */
#ifndef PORTCULLIS_MODEL_H
#define PORTCULLIS_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    MODEL_SCOPE_GLOBAL = 0,
    MODEL_SCOPE_REGION = 1,
    MODEL_SCOPE_OFFICE = 2,
    MODEL_SCOPE_GROUP = 3,
} model_scope;

/* Enforcement settings (global, region, office). Each field may be unset. */
typedef struct model_settings {
    /* Conformance proxy: which check runs on a port ("http", "tls", "rtsp",
     * "mms", "passthrough"); NULL = inherit. Parallel arrays. */
    size_t nports;
    uint16_t *ports;
    char **port_protos;
    bool has_ports;
    bool has_require_certificate, require_certificate;
    bool has_block_executables, block_executables;
    /* Named lists (shipped "skype", "teams", or an operator's) in force. */
    bool has_use_lists;
    size_t nuse_lists;
    char **use_lists;
    /* The firewall (docs/firewall.md), compiled into the document's
     * "firewall" part. High ports: forwarded traffic to a port >= the
     * threshold is dropped unless open_ports lets it through. */
    bool has_block_high_ports, block_high_ports;
    bool has_high_port_threshold;
    uint16_t high_port_threshold;
    /* Open ports whitelist: port (or port..port_last) over proto allowed
     * for the listed device prefixes (e.g. 25/tcp for the mail server only). */
    bool has_open_ports;
    size_t nopen_ports;
    struct model_open_port {
        uint16_t port;
        uint16_t port_last; /* a range's last port; 0: the one port */
        char proto[4];      /* "tcp" or "udp" */
        size_t ndevices;
        char **devices; /* CIDRs */
    } *open_ports;
    /* Where LAN DNS may go: IP addresses ([]: nowhere). Unset at every
     * scope: to any resolver. */
    bool has_dns_resolvers;
    size_t ndns_resolvers;
    char **dns_resolvers;
    /* "transparent" (the node's own proxy takes LAN web traffic) or "proxy"
     * (the proxy runs elsewhere: only web_devices reach the web ports). */
    bool has_web_mode;
    char web_mode[12];
    bool has_web_devices;
    size_t nweb_devices;
    char **web_devices; /* CIDRs */
    /* Dropped packets logged, at most this many a minute; 0: not logged. */
    bool has_log_drops_per_minute;
    uint16_t log_drops_per_minute;
} model_settings;

typedef enum {
    MODEL_RULE_SKYPE = 0,      /* value unused: allow = Skype exception */
    MODEL_RULE_DOMAIN = 1,     /* value: a domain (label boundaries) */
    MODEL_RULE_PREFIX = 2,     /* value: a CIDR */
    MODEL_RULE_URL_SUFFIX = 3, /* value: a suffix such as "skype.exe" */
} model_rule_kind;

typedef struct model_rule {
    int64_t id;
    model_scope scope;
    int64_t scope_id; /* region/office/group id; 0 for global */
    model_rule_kind kind;
    char *value;
    bool allow; /* false = block */
    char *comment;
} model_rule;

typedef struct model_region {
    int64_t id;
    char *name;
    model_settings settings;
} model_region;

typedef struct model_office {
    int64_t id;
    int64_t region_id;
    char *name;
    size_t nlan;
    char **lan_prefixes; /* CIDRs of the office's LANs */
    model_settings settings;
} model_office;

typedef struct model_group {
    int64_t id;
    char *name;
    int64_t office_id; /* 0: the group applies in every office */
    size_t nsources;
    char **sources; /* CIDRs */
    size_t nusers;
    char **users; /* user names, for proxy authentication later */
} model_group;

typedef struct model_node {
    int64_t id;
    char *name; /* node identity */
    int64_t office_id;
} model_node;

/* A named list of domains/prefixes/url suffixes (the shipped Skype and Teams
 * lists are seeded from shared/lists/). json is the list object exactly as
 * the node's policy document carries it under "lists". */
typedef struct model_list {
    char *name;
    char *json;
} model_list;

typedef struct model {
    int64_t revision;
    model_settings global;
    size_t nregions, noffices, ngroups, nnodes, nrules, nlists;
    model_region *regions;
    model_office *offices;
    model_group *groups;
    model_node *nodes;
    model_rule *rules;
    model_list *lists;
} model;

/* Frees everything a model holds (not the struct itself). */
void model_free(model *m);

#endif
