/* pc_buf.h - a growable string that remembers running out of memory, so a
 * builder appends without checking each step and looks once at the end.
 * Used to build rulesets, documents, messages and explanations. */
#ifndef PORTCULLIS_PC_BUF_H
#define PORTCULLIS_PC_BUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct pc_buf {
    char *p;         /* NUL-terminated once anything was added; NULL before */
    size_t len, cap; /* len excludes the NUL */
    bool oom;        /* an append failed: p is incomplete */
} pc_buf;

/* Appends n bytes / a string / formatted text. After a failure every
 * append is a no-op and oom stays set. */
void pc_buf_put(pc_buf *b, const char *s, size_t n);
void pc_buf_str(pc_buf *b, const char *s);
__attribute__((format(printf, 2, 3))) void pc_buf_printf(pc_buf *b, const char *fmt, ...);
/* The string built (the caller frees it; "" when nothing was added), or
 * NULL when memory ran out at any point; b is empty afterwards. */
char *pc_buf_take(pc_buf *b);
/* Frees what b holds and empties it. */
void pc_buf_free(pc_buf *b);

#endif
