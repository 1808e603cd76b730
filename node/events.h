/* events.h - the node's event log: one JSON object per line (time, type,
 * source, destination, port, group, verdict, reason, bytes), written to
 * stdout or a file by any proxy thread. The shape is what the agent link will
 * ship to the controller (docs/events.md).
 */
#ifndef PORTCULLIS_EVENTS_H
#define PORTCULLIS_EVENTS_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct ev_sink ev_sink;
typedef struct spool spool;

/* path NULL or "-": stdout; "none": no log (events only go to a spool set
 * with ev_sink_set_spool). The file is opened for append. Returns NULL and
 * fills err on failure. */
ev_sink *ev_sink_open(const char *path, char *err, size_t errlen);
void ev_sink_close(ev_sink *s);
/* Reopens the file (after log rotation); a no-op for stdout and "none". */
int ev_sink_reopen(ev_sink *s);
/* Also queues every event in sp (spool_add; borrowed, must outlive the
 * sink's use). Call before any thread emits. */
void ev_sink_set_spool(ev_sink *s, spool *sp);

typedef struct pc_event {
    const char *type;    /* "block", "exception", "allow" */
    const char *reason;  /* stable code, e.g. "http-obs-fold", "blocked-domain" */
    const char *detail;  /* free text (the rule, the classifier's detail), or NULL */
    const struct sockaddr *src;
    const char *dst_host;            /* name the client asked for, or NULL */
    const struct sockaddr *dst_addr; /* address connected to, or NULL */
    uint16_t port;
    const char *proto;   /* classifier on the port: http, tls, rtsp, mms */
    const char *group;
    uint64_t policy_version;
    uint64_t bytes_up, bytes_down;
} pc_event;

/* Distinct block reasons counted (the stats message's blocks_by_reason),
 * and the longest reason code kept; more, or longer, count as "other". */
#define EV_REASONS 128
#define EV_REASON_MAX 48

/* Adds {reason: blocks since start} to out (an object); thread-safe. */
void ev_sink_blocks_by_reason(ev_sink *s, cJSON *out);

/* Writes one line; thread-safe; never fails the caller (a failed write is
 * counted and reported on stderr once). */
void ev_emit(ev_sink *s, const pc_event *e);

/* Formats e as one JSON line (with '\n') into buf; returns its length, or
 * the length it would need when buflen is too small. */
size_t ev_format(const pc_event *e, char *buf, size_t buflen);

#endif
