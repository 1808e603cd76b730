/* vectors.h - the data-driven runner every classifier suite uses: reads
 * vector files (tests/vectors/<proto>/NAME.vec), feeds them to a classifier in
 * several splits (whole, byte by byte, seeded random) and reports through
 * CUnit any split whose outcome differs from what the file expects.
 *
 * Vector file format (one directive per line; '#' starts a comment line):
 *   expect: conforms | violates | need_more   final verdict (required)
 *   reason: <text>       the reason must start with this (violates only)
 *   events: 1,3,2        exact sequence of events seen (optional)
 *   has: <text>          the facts log must contain this (repeatable)
 *   finish: yes          call finish() on both directions at the end
 *   > <escaped text>     client-to-server bytes: C escapes \r \n \t \0 \\
 *   < <escaped text>     server-to-client bytes (\xHH for any byte);
 *                        no newline is implied
 *   >hex <hex>  <hex <hex>   bytes as hex, whitespace ignored
 *   >file <path> <file <path>  raw bytes from a file (relative to the vector)
 * Segments are fed in file order. The final verdict is VIOLATES if any feed
 * (or finish) returned it, otherwise the verdict of the last feed. For a
 * violation, bytes after the violating segment are not fed.
 */
#ifndef PORTCULLIS_TEST_VECTORS_H
#define PORTCULLIS_TEST_VECTORS_H

#include "classify.h"

/* Appends a one-line description of what the classifier exposes after event
 * ev (e.g. "host=example.com path=/a") to buf. NULL: no facts. */
typedef void (*vec_describe_fn)(const void *state, int ev, char *buf, size_t buflen);

/* Runs every *.vec file in dir; one CUnit assertion per file and split.
 * Returns the number of files run (a suite asserts it is > 0). */
int vec_check_dir(const cls_ops *ops, vec_describe_fn describe, const char *dir);

/* Runs one file; returns 0 when every split matched, else -1 with a message. */
int vec_check_file(const cls_ops *ops, vec_describe_fn describe, const char *path,
                   char *msg, size_t msglen);

#endif
