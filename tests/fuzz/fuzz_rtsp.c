/* fuzz_rtsp.c - libFuzzer target for the RTSP classifier, on the shared
 * split-and-compare driver (fuzz_split.h); request facts are checked after
 * every RTSP_EV_REQUEST. */
#include "fuzz_split.h"
#include "rtsp_classify.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const fuzz_target target;

static void check_info(const rtsp_request_info *ri)
{
    if (!ri || !ri->method || !ri->url || !ri->host || !ri->path)
        fuzz_breach(&target, "request info with NULL strings");
    if (ri->method[0] == '\0' || ri->url[0] == '\0')
        fuzz_breach(&target, "request without method or URL");
    for (const char *p = ri->host; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            fuzz_breach(&target, "host not lower-cased");
    if (ri->version != 10 && ri->version != 20)
        fuzz_breach(&target, "bad version");
    if (ri->content_length > RTSP_MAX_BODY)
        fuzz_breach(&target, "content length past the bound");
    if (strcmp(ri->url, "*") == 0 ? ri->host[0] != '\0' : ri->host[0] == '\0')
        fuzz_breach(&target, "host does not match the URL form");
}

static void check(const void *state, cls_dir dir, cls_verdict v, size_t used, int ev)
{
    if (ev != CLS_EV_NONE && ev != RTSP_EV_REQUEST && ev != RTSP_EV_MESSAGE_END)
        fuzz_breach(&target, "unknown event");
    if (ev == RTSP_EV_REQUEST)
        check_info(rtsp_classify_request(state));
}

static const fuzz_target target = {"fuzz_rtsp", &rtsp_cls_ops, "rtsp-", check};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_split_run(&target, data, size);
}
