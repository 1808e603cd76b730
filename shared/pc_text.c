/* pc_text.c - checks on text from outside (pc_text.h). */
#include "pc_text.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

bool pc_text_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char ch = *p;
        size_t n;
        uint32_t cp;
        if (ch < 0x20 || ch == 0x7f)
            return false;
        if (ch < 0x80) {
            p++;
            continue;
        } else if ((ch & 0xe0) == 0xc0) {
            n = 1;
            cp = ch & 0x1f;
        } else if ((ch & 0xf0) == 0xe0) {
            n = 2;
            cp = ch & 0x0f;
        } else if ((ch & 0xf8) == 0xf0) {
            n = 3;
            cp = ch & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        p += n + 1;
    }
    return true;
}

bool pc_text_is_ident(const char *k)
{
    if (!((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= 'A' && k[0] <= 'Z') || k[0] == '_'))
        return false;
    for (const char *s = k + 1; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    return true;
}

size_t pc_text_json_nul_escape(const char *s, size_t len)
{
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        if (!in_str) {
            if (s[i] == '"')
                in_str = true;
        } else if (s[i] == '\\') {
            if (i + 5 < len && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0)
                return i;
            i++;
        } else if (s[i] == '"') {
            in_str = false;
        }
    }
    return len;
}
