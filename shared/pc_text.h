/* pc_text.h - checks on text that comes from outside (policy files, REST
 * bodies, names stored in the controller). */
#ifndef PORTCULLIS_PC_TEXT_H
#define PORTCULLIS_PC_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* Whether s is valid UTF-8 (shortest forms, no surrogates, at most U+10FFFF)
 * without control characters (C0 and DEL). */
bool pc_text_ok(const char *s);

/* Whether k is an identifier ([A-Za-z_][A-Za-z0-9_]*), which a JSONPath can
 * name as .k rather than ['k']. */
bool pc_text_is_ident(const char *k);

/* The offset of the first "\u0000" inside a JSON string in s[0..len), or
 * len when there is none: cJSON turns it into a NUL that silently ends the
 * C string, so "skype.com\u0000x" would read as "skype.com". */
size_t pc_text_json_nul_escape(const char *s, size_t len);

#endif
