/* pc_buf.c - a growable string (pc_buf.h). */
#include "pc_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for need more bytes and the NUL. */
static bool grow(pc_buf *b, size_t need)
{
    if (b->oom)
        return false;
    if (b->p && b->cap - b->len > need)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void pc_buf_put(pc_buf *b, const char *s, size_t n)
{
    if (!grow(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void pc_buf_str(pc_buf *b, const char *s)
{
    pc_buf_put(b, s, strlen(s));
}

void pc_buf_printf(pc_buf *b, const char *fmt, ...)
{
    if (!grow(b, 0))
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        if (!grow(b, (size_t)n))
            return;
    }
}

char *pc_buf_take(pc_buf *b)
{
    char *s = b->p;
    if (b->oom) {
        free(s);
        s = NULL;
    } else if (!s) {
        s = strdup("");
    }
    *b = (pc_buf){0};
    return s;
}

void pc_buf_free(pc_buf *b)
{
    free(b->p);
    *b = (pc_buf){0};
}
