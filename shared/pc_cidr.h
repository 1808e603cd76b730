/* pc_cidr.h - IPv4/IPv6 prefixes and sets of them with longest-prefix
 * lookup; used for group sources and blocked destination prefixes.
 */
#ifndef PORTCULLIS_PC_CIDR_H
#define PORTCULLIS_PC_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct pc_cidr {
    uint8_t family;   /* AF_INET or AF_INET6 */
    uint8_t bits;     /* prefix length */
    uint8_t addr[16]; /* network address, host bits zero */
} pc_cidr;

/* Parses "192.0.2.0/24", "2001:db8::/32" or a bare address (a /32 or /128).
 * Host bits set beyond the prefix are an error ("host bits set"). Returns 0,
 * or -1 with a message in err. */
int pc_cidr_parse(const char *s, pc_cidr *out, char *err, size_t errlen);

/* Formats as "a.b.c.d/n" or "x::/n" into buf (at least 50 bytes). */
void pc_cidr_format(const pc_cidr *c, char *buf, size_t buflen);

/* Whether addr (AF_INET/AF_INET6 sockaddr; an IPv4-mapped IPv6 address counts
 * as IPv4) lies in c. */
bool pc_cidr_contains(const pc_cidr *c, const struct sockaddr *addr);

/* A set of prefixes, each with a caller-chosen value; lookup returns the
 * value of the longest matching prefix. Built once, then read-only (safe to
 * share between threads). */
typedef struct pc_cidrset pc_cidrset;

pc_cidrset *pc_cidrset_new(void);
void pc_cidrset_free(pc_cidrset *s);
/* Returns 0, or -1 on allocation failure. Adding the same prefix twice keeps
 * the first value. */
int pc_cidrset_add(pc_cidrset *s, const pc_cidr *c, intptr_t value);
/* Returns true and sets *value (and *match, optional) when addr is in the
 * set. */
bool pc_cidrset_lookup(const pc_cidrset *s, const struct sockaddr *addr, intptr_t *value,
                       pc_cidr *match);
/* Whether exactly prefix c (same family and length) was added; sets *value
 * (optional) to its value. Unlike lookup, a longer or shorter prefix that
 * covers c does not count. */
bool pc_cidrset_get(const pc_cidrset *s, const pc_cidr *c, intptr_t *value);
size_t pc_cidrset_count(const pc_cidrset *s);

#endif
