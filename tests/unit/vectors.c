/* vectors.c - data-driven classifier test runner (see vectors.h). */
#include "vectors.h"

#include <CUnit/CUnit.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VEC_MAX_SEGMENTS 256
#define VEC_FACTS 8192

typedef struct vec_segment {
    cls_dir dir;
    uint8_t *data;
    size_t len;
} vec_segment;

typedef struct vec_case {
    cls_verdict expect;
    char reason[256];
    char events[256]; /* "" = not checked */
    char has[16][256];
    int nhas;
    bool finish;
    vec_segment seg[VEC_MAX_SEGMENTS];
    int nseg;
} vec_case;

static void vec_case_free(vec_case *c)
{
    for (int i = 0; i < c->nseg; i++)
        free(c->seg[i].data);
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Decodes C-style escapes in s into out (at least strlen(s) bytes). */
static int unescape(const char *s, uint8_t *out, size_t *outlen)
{
    size_t n = 0;
    for (const char *p = s; *p; p++) {
        if (*p != '\\') {
            out[n++] = (uint8_t)*p;
            continue;
        }
        p++;
        switch (*p) {
        case 'r': out[n++] = '\r'; break;
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case '0': out[n++] = '\0'; break;
        case '\\': out[n++] = '\\'; break;
        case 'x': {
            int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);
            if (hi < 0 || lo < 0)
                return -1;
            out[n++] = (uint8_t)(hi * 16 + lo);
            p += 2;
            break;
        }
        default:
            return -1;
        }
    }
    *outlen = n;
    return 0;
}

static int unhex(const char *s, uint8_t *out, size_t *outlen)
{
    size_t n = 0;
    int hi = -1;
    for (const char *p = s; *p; p++) {
        if (*p == ' ' || *p == '\t' || *p == ':')
            continue;
        int v = hexval(*p);
        if (v < 0)
            return -1;
        if (hi < 0) {
            hi = v;
        } else {
            out[n++] = (uint8_t)(hi * 16 + v);
            hi = -1;
        }
    }
    if (hi >= 0)
        return -1;
    *outlen = n;
    return 0;
}

static uint8_t *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap * 2);
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
    *len = n;
    return buf;
}

static int add_segment(vec_case *c, cls_dir dir, uint8_t *data, size_t len)
{
    if (c->nseg == VEC_MAX_SEGMENTS) {
        free(data);
        return -1;
    }
    c->seg[c->nseg++] = (vec_segment){dir, data, len};
    return 0;
}

static int parse_case(const char *path, vec_case *c, char *msg, size_t msglen)
{
    memset(c, 0, sizeof(*c));
    c->expect = (cls_verdict)-1;
    size_t flen;
    uint8_t *text = read_whole(path, &flen);
    if (!text) {
        snprintf(msg, msglen, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    char *buf = realloc(text, flen + 1);
    if (!buf) {
        free(text);
        return -1;
    }
    buf[flen] = '\0';

    char dirpath[1024];
    snprintf(dirpath, sizeof(dirpath), "%s", path);
    char *slash = strrchr(dirpath, '/');
    if (slash)
        *slash = '\0';
    else
        strcpy(dirpath, ".");

    int rc = 0, lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r')
            line[--ll] = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        if (line[0] == '>' || line[0] == '<') {
            cls_dir dir = line[0] == '>' ? CLS_C2S : CLS_S2C;
            const char *rest = line + 1;
            uint8_t *data = NULL;
            size_t len = 0;
            int bad = 0;
            if (strncmp(rest, "hex ", 4) == 0) {
                data = malloc(strlen(rest) + 1);
                bad = !data || unhex(rest + 4, data, &len) != 0;
            } else if (strncmp(rest, "file ", 5) == 0) {
                char fp[2048];
                snprintf(fp, sizeof(fp), "%s/%s", dirpath, rest + 5);
                data = read_whole(fp, &len);
                bad = data == NULL;
            } else {
                if (*rest == ' ')
                    rest++;
                data = malloc(strlen(rest) + 1);
                bad = !data || unescape(rest, data, &len) != 0;
            }
            if (bad || add_segment(c, dir, data, len) != 0) {
                if (bad)
                    free(data);
                snprintf(msg, msglen, "%s:%d: bad segment", path, lineno);
                rc = -1;
                break;
            }
            continue;
        }
        char *colon = strchr(line, ':');
        if (!colon) {
            snprintf(msg, msglen, "%s:%d: unknown line", path, lineno);
            rc = -1;
            break;
        }
        *colon = '\0';
        char *val = colon + 1;
        while (*val == ' ')
            val++;
        if (strcmp(line, "expect") == 0) {
            if (strcmp(val, "conforms") == 0)
                c->expect = CLS_CONFORMS;
            else if (strcmp(val, "violates") == 0)
                c->expect = CLS_VIOLATES;
            else if (strcmp(val, "need_more") == 0)
                c->expect = CLS_NEED_MORE;
        } else if (strcmp(line, "reason") == 0) {
            snprintf(c->reason, sizeof(c->reason), "%s", val);
        } else if (strcmp(line, "events") == 0) {
            snprintf(c->events, sizeof(c->events), "%s", val);
        } else if (strcmp(line, "has") == 0 && c->nhas < 16) {
            snprintf(c->has[c->nhas++], sizeof(c->has[0]), "%s", val);
        } else if (strcmp(line, "finish") == 0) {
            c->finish = strcmp(val, "yes") == 0;
        } else {
            snprintf(msg, msglen, "%s:%d: unknown directive '%s'", path, lineno, line);
            rc = -1;
            break;
        }
    }
    free(buf);
    if (rc == 0 && (int)c->expect == -1) {
        snprintf(msg, msglen, "%s: no 'expect:' line", path);
        rc = -1;
    }
    if (rc == 0 && c->expect == CLS_VIOLATES && c->reason[0] == '\0') {
        snprintf(msg, msglen, "%s: a violation vector must name its 'reason:'", path);
        rc = -1;
    }
    return rc;
}

typedef struct vec_outcome {
    cls_verdict verdict;
    char reason[256];
    char events[256];
    char facts[VEC_FACTS];
} vec_outcome;

static void append(char *buf, size_t cap, const char *s)
{
    size_t n = strlen(buf);
    if (n + 1 < cap)
        snprintf(buf + n, cap - n, "%s", s);
}

/* split: 0 = whole segments, 1 = byte by byte, >1 = random seed. */
static void run_case(const cls_ops *ops, vec_describe_fn describe, const vec_case *c,
                     unsigned split, vec_outcome *out)
{
    memset(out, 0, sizeof(*out));
    void *st = calloc(1, ops->state_size);
    if (!st) {
        out->verdict = (cls_verdict)-1;
        return;
    }
    ops->init(st);
    unsigned rnd = split * 2654435761u + 1;
    cls_verdict v = CLS_NEED_MORE;
    for (int i = 0; i < c->nseg && v != CLS_VIOLATES; i++) {
        const vec_segment *sg = &c->seg[i];
        size_t off = 0;
        do {
            size_t piece = sg->len - off;
            if (split == 1 && piece > 1) {
                piece = 1;
            } else if (split > 1 && piece > 1) {
                rnd = rnd * 1103515245u + 12345u;
                piece = 1 + (rnd >> 8) % piece;
            }
            /* The fed piece is a fresh copy so a classifier that reads past
             * len or keeps pointers into it trips the sanitizer. */
            uint8_t *copy = malloc(piece ? piece : 1);
            if (!copy) {
                v = CLS_VIOLATES;
                break;
            }
            memcpy(copy, sg->data + off, piece);
            size_t pos = 0;
            for (;;) {
                size_t used = 0;
                v = ops->feed(st, sg->dir, copy + pos, piece - pos, &used);
                if (used > piece - pos)
                    used = piece - pos; /* a contract breach; caught below */
                pos += used;
                if (v == CLS_VIOLATES)
                    break;
                int ev = ops->event(st);
                if (ev != CLS_EV_NONE) {
                    char tmp[16];
                    snprintf(tmp, sizeof(tmp), "%s%d", out->events[0] ? "," : "", ev);
                    append(out->events, sizeof(out->events), tmp);
                    if (describe) {
                        char f[1024] = "";
                        describe(st, ev, f, sizeof(f));
                        append(out->facts, sizeof(out->facts), f);
                        append(out->facts, sizeof(out->facts), "\n");
                    }
                }
                if (pos >= piece)
                    break;
                if (v == CLS_NEED_MORE) {
                    /* NEED_MORE must consume everything. */
                    v = CLS_VIOLATES;
                    snprintf(out->reason, sizeof(out->reason),
                             "runner: NEED_MORE left %zu bytes unconsumed", piece - pos);
                    break;
                }
                if (used == 0 && ev == CLS_EV_NONE) {
                    v = CLS_VIOLATES;
                    snprintf(out->reason, sizeof(out->reason),
                             "runner: CONFORMS consumed nothing without an event");
                    break;
                }
            }
            free(copy);
            off += piece;
        } while (off < sg->len && v != CLS_VIOLATES);
    }
    if (v != CLS_VIOLATES && c->finish) {
        v = ops->finish(st, CLS_C2S);
        if (v != CLS_VIOLATES)
            v = ops->finish(st, CLS_S2C);
    }
    out->verdict = v;
    if (v == CLS_VIOLATES && out->reason[0] == '\0') {
        const char *r = ops->reason(st);
        snprintf(out->reason, sizeof(out->reason), "%s", r ? r : "(null reason)");
    }
    ops->release(st);
    free(st);
}

static const char *verdict_str(cls_verdict v)
{
    switch (v) {
    case CLS_NEED_MORE: return "need_more";
    case CLS_CONFORMS: return "conforms";
    case CLS_VIOLATES: return "violates";
    }
    return "?";
}

int vec_check_file(const cls_ops *ops, vec_describe_fn describe, const char *path, char *msg,
                   size_t msglen)
{
    vec_case *c = calloc(1, sizeof(*c));
    vec_outcome *o = calloc(1, sizeof(*o));
    int rc = -1;
    if (!c || !o) {
        snprintf(msg, msglen, "out of memory");
        goto done;
    }
    if (parse_case(path, c, msg, msglen) != 0)
        goto done;
    static const unsigned splits[] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (size_t s = 0; s < sizeof(splits) / sizeof(splits[0]); s++) {
        run_case(ops, describe, c, splits[s], o);
        const char *why = NULL;
        if (o->verdict != c->expect)
            why = "verdict";
        else if (c->expect == CLS_VIOLATES &&
                 strncmp(o->reason, c->reason, strlen(c->reason)) != 0)
            why = "reason";
        else if (c->events[0] && strcmp(o->events, c->events) != 0)
            why = "events";
        for (int h = 0; !why && h < c->nhas; h++)
            if (!strstr(o->facts, c->has[h]))
                why = "facts";
        if (why) {
            snprintf(msg, msglen,
                     "%s: split %u: %s differs: got %s (%s) events [%s] facts [%s]; expected %s "
                     "(%s) events [%s]",
                     path, splits[s], why, verdict_str(o->verdict), o->reason, o->events,
                     o->facts, verdict_str(c->expect), c->reason, c->events);
            goto done;
        }
    }
    rc = 0;
done:
    if (c)
        vec_case_free(c);
    free(c);
    free(o);
    return rc;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int vec_check_dir(const cls_ops *ops, vec_describe_fn describe, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        CU_FAIL_FATAL("vector directory missing");
        return 0;
    }
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".vec") == 0)
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof(names[0]), name_cmp);
    for (int i = 0; i < n; i++) {
        char path[2048], msg[4096 + 2048] = "";
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        int rc = vec_check_file(ops, describe, path, msg, sizeof(msg));
        /* CUnit keeps the condition text, so the message names the file. */
        CU_assertImplementation(rc == 0, __LINE__, rc == 0 ? path : msg, __FILE__, "",
                                CU_FALSE);
        free(names[i]);
    }
    return n;
}
