/* events.c - JSON-lines event log shared by the proxy threads. Strings from
 * the network (host names, reasons with detail) are escaped so a line is
 * always one valid JSON object. */
#include "events.h"
#include "spool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct ev_sink {
    pthread_mutex_t lock;
    int fd;
    bool owned;
    char *path;
    bool warned;
    spool *sp;
    /* Blocks counted by reason for the stats message; a reason past the
     * table's end counts as "other". Under lock. */
    struct {
        char reason[EV_REASON_MAX];
        uint64_t n;
    } by_reason[EV_REASONS];
    size_t nreasons;
    uint64_t other;
};

ev_sink *ev_sink_open(const char *path, char *err, size_t errlen)
{
    ev_sink *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->fd = STDOUT_FILENO;
    if (path && strcmp(path, "none") == 0) {
        s->fd = -1;
    } else if (path && strcmp(path, "-") != 0) {
        s->path = strdup(path);
        s->fd = s->path ? open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640) : -1;
        if (s->fd < 0) {
            snprintf(err, errlen, "%s: %s", path, s->path ? strerror(errno) : "out of memory");
            free(s->path);
            pthread_mutex_destroy(&s->lock);
            free(s);
            return NULL;
        }
        s->owned = true;
    }
    return s;
}

int ev_sink_reopen(ev_sink *s)
{
    if (!s->owned)
        return 0;
    int fd = open(s->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    pthread_mutex_lock(&s->lock);
    int old = s->fd;
    s->fd = fd;
    pthread_mutex_unlock(&s->lock);
    close(old);
    return 0;
}

void ev_sink_set_spool(ev_sink *s, spool *sp)
{
    s->sp = sp;
}

void ev_sink_close(ev_sink *s)
{
    if (!s)
        return;
    if (s->owned)
        close(s->fd);
    free(s->path);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

typedef struct jbuf {
    char *p;
    size_t cap, len;
} jbuf;

static void jb_raw(jbuf *b, const char *s, size_t n)
{
    if (b->len < b->cap) {
        size_t room = b->cap - b->len;
        memcpy(b->p + b->len, s, n < room ? n : room);
    }
    b->len += n;
}

static void jb_str(jbuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    jb_raw(b, "\"", 1);
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        char esc[6];
        if (*q == '"' || *q == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*q;
            jb_raw(b, esc, 2);
        } else if (*q < 0x20 || *q == 0x7f || *q >= 0x80) {
            /* Non-ASCII bytes from the network may not be UTF-8: escape them
             * as code points U+0080..U+00FF so the line stays valid JSON. */
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[*q >> 4];
            esc[5] = hex[*q & 15];
            jb_raw(b, esc, 6);
        } else {
            jb_raw(b, (const char *)q, 1);
        }
    }
    jb_raw(b, "\"", 1);
}

static void jb_key(jbuf *b, const char *k)
{
    jb_raw(b, b->len > 1 ? ",\"" : "\"", b->len > 1 ? 2 : 1);
    jb_raw(b, k, strlen(k));
    jb_raw(b, "\":", 2);
}

static void jb_kstr(jbuf *b, const char *k, const char *v)
{
    jb_key(b, k);
    if (v)
        jb_str(b, v);
    else
        jb_raw(b, "null", 4);
}

static void jb_knum(jbuf *b, const char *k, uint64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    jb_key(b, k);
    jb_raw(b, num, (size_t)n);
}

/* A port, or null when it is not known (0). */
static void jb_kport(jbuf *b, const char *k, uint16_t v)
{
    if (v)
        jb_knum(b, k, v);
    else
        jb_kstr(b, k, NULL);
}

static const char *addr_str(const struct sockaddr *sa, char *buf, size_t len, uint16_t *port)
{
    *port = 0;
    if (!sa)
        return NULL;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        *port = ntohs(in->sin_port);
        return inet_ntop(AF_INET, &in->sin_addr, buf, (socklen_t)len);
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        *port = ntohs(in6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], buf, (socklen_t)len);
        return inet_ntop(AF_INET6, &in6->sin6_addr, buf, (socklen_t)len);
    }
    return NULL;
}

size_t ev_format(const pc_event *e, char *buf, size_t buflen)
{
    jbuf b = {buf, buflen, 0};
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[96]; /* wide enough for any int the format could see */
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));

    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
    uint16_t sport, dport;
    const char *s = addr_str(e->src, src, sizeof(src), &sport);
    const char *d = addr_str(e->dst_addr, dst, sizeof(dst), &dport);

    jb_raw(&b, "{", 1);
    jb_kstr(&b, "time", ts);
    jb_kstr(&b, "type", e->type);
    jb_kstr(&b, "verdict", strcmp(e->type, "block") == 0 ? "blocked" : "allowed");
    jb_kstr(&b, "reason", e->reason);
    jb_kstr(&b, "detail", e->detail);
    jb_kstr(&b, "source", s);
    jb_kport(&b, "source_port", sport);
    jb_kstr(&b, "destination", e->dst_host && e->dst_host[0] ? e->dst_host : d);
    jb_kstr(&b, "destination_address", d);
    jb_kport(&b, "port", e->port ? e->port : dport);
    jb_kstr(&b, "protocol", e->proto);
    jb_kstr(&b, "group", e->group);
    jb_knum(&b, "policy_version", e->policy_version);
    jb_knum(&b, "bytes_up", e->bytes_up);
    jb_knum(&b, "bytes_down", e->bytes_down);
    jb_raw(&b, "}\n", 2);
    return b.len;
}

/* Under s->lock. */
static void count_reason(ev_sink *s, const char *reason)
{
    for (size_t i = 0; i < s->nreasons; i++)
        if (strcmp(s->by_reason[i].reason, reason) == 0) {
            s->by_reason[i].n++;
            return;
        }
    if (s->nreasons < EV_REASONS && strlen(reason) < EV_REASON_MAX) {
        snprintf(s->by_reason[s->nreasons].reason, EV_REASON_MAX, "%s", reason);
        s->by_reason[s->nreasons++].n = 1;
        return;
    }
    s->other++;
}

void ev_sink_blocks_by_reason(ev_sink *s, cJSON *out)
{
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nreasons; i++)
        cJSON_AddNumberToObject(out, s->by_reason[i].reason, (double)s->by_reason[i].n);
    if (s->other)
        cJSON_AddNumberToObject(out, "other", (double)s->other);
    pthread_mutex_unlock(&s->lock);
}

void ev_emit(ev_sink *s, const pc_event *e)
{
    char stack[2048];
    char *line = stack;
    size_t n = ev_format(e, stack, sizeof(stack));
    if (n > sizeof(stack)) {
        line = malloc(n);
        if (!line)
            return;
        ev_format(e, line, n);
    }
    if (s->sp)
        spool_add(s->sp, line, n - 1); /* without the newline */
    pthread_mutex_lock(&s->lock);
    if (e->type && strcmp(e->type, "block") == 0 && e->reason)
        count_reason(s, e->reason);
    size_t off = 0;
    while (s->fd >= 0 && off < n) {
        ssize_t w = write(s->fd, line + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (!s->warned)
                fprintf(stderr, "portcullis-node: cannot write events: %s\n",
                        w < 0 ? strerror(errno) : "short write");
            s->warned = true;
            break;
        }
        off += (size_t)w;
    }
    pthread_mutex_unlock(&s->lock);
    if (line != stack)
        free(line);
}
