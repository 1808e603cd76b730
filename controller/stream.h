/* stream.h - the live tail of events for the dashboard and for scripts:
 * GET /api/v1/events/stream as server-sent events (text/event-stream), each
 * stored event one "event: event" message with its id, so a client that
 * reconnects with Last-Event-ID misses nothing. A connection with nothing
 * to send is suspended (libmicrohttpd's suspend/resume), so waiting clients
 * hold no thread; stream_wake resumes them when events are stored, and a
 * ticker every few seconds sends a keep-alive comment and notices clients
 * that went away.
 */
#ifndef PORTCULLIS_STREAM_H
#define PORTCULLIS_STREAM_H

#include "store.h"

#include <microhttpd.h>
#include <stdint.h>

typedef struct stream_hub stream_hub;

/* The serving thread's store handle (the API's per-thread one). */
typedef store *(*stream_store_fn)(void *arg);

/* Starts the ticker. NULL when memory or the thread fails. */
stream_hub *stream_hub_new(stream_store_fn get_store, void *arg);
/* Ends every stream (each sends what it has and finishes): call before
 * stopping the MHD daemon, which must not stop with suspended connections. */
void stream_hub_stop(stream_hub *h);
/* Stops the ticker and frees; after the MHD daemon has stopped (no stream
 * is alive then). NULL is fine. */
void stream_hub_free(stream_hub *h);
/* New events may be stored: wake the waiting streams. Any thread; cheap. */
void stream_wake(stream_hub *h);

/* A response that streams the events after after_id matching q (its
 * strings are copied) to connection c; NULL when memory runs out. The
 * caller queues it with status 200 and destroys its reference. */
struct MHD_Response *stream_response(stream_hub *h, struct MHD_Connection *c,
                                     const store_event_query *q, int64_t after_id);

/* Streams open now (GET /api/v1/hub shows it). */
unsigned stream_count(stream_hub *h);

#endif
