/* wire — Envelope encode/decode (protobuf-c) with size caps and a budgeted
 * allocator.
 *
 * Decoding untrusted bytes: the length is checked against max_len before
 * anything happens, and protobuf-c allocates through a budget allocator
 * (default budget: 64 KiB + 64 x len; the worst case protobuf-c reaches is
 * about 50 x len, for many empty sub-messages), so a small message can never make us
 * allocate much. The protocol version and the presence of a body are checked.
 * A decoded message owns all its memory; wire_free() releases it. Thread-safe
 * (no shared state). */
#ifndef FL_WIRE_H
#define FL_WIRE_H
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "fedlora.pb-c.h"

#define WIRE_PROTOCOL_VERSION 1

typedef struct wire_msg wire_msg;

/* Decodes an Envelope. budget = 0 selects the default. On error *out is
 * untouched and nothing is leaked: FL_ETOOBIG (len > max_len or over
 * budget), FL_EPROTO (not a valid Envelope, or no body),
 * FL_EUNSUPPORTED (protocol version other than WIRE_PROTOCOL_VERSION). */
int wire_decode(const uint8_t *data, size_t len, size_t max_len, size_t budget, wire_msg **out);
const Fedlora__Envelope *wire_env(const wire_msg *m);
/* Bytes allocated by the decoder for this message (for tests/metrics). */
size_t wire_allocated(const wire_msg *m);
void wire_free(wire_msg *m); /* NULL ok */

/* Encodes env, appending to out; FL_ETOOBIG if the packed size exceeds
 * max_len (0 = no cap beyond out's own). protocol_version is written as
 * WIRE_PROTOCOL_VERSION whatever env holds. */
int wire_encode(const Fedlora__Envelope *env, size_t max_len, buf *out);
/* Packed size of env (with the protocol version set). */
size_t wire_size(const Fedlora__Envelope *env);

/* "join", "welcome", ... or "none" (for logs). */
const char *wire_body_name(const Fedlora__Envelope *env);

#endif
