/* classify.c - what the classifiers share: verdict names. */
#include "classify.h"

const char *cls_verdict_name(cls_verdict v)
{
    switch (v) {
    case CLS_NEED_MORE: return "need_more";
    case CLS_CONFORMS: return "conforms";
    case CLS_VIOLATES: return "violates";
    }
    return "unknown";
}
