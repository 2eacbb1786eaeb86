/* xfer — resumable chunked transfers of large application messages: a layer
 * between the federation logic and the channel (common/chan.h). A message
 * above a threshold is announced by its SHA-256, its size and the SHA-256 of
 * every chunk (XferOffer), and travels as chunks with at most `window`
 * unacknowledged. The receiver verifies every chunk, writes it to a file in
 * a spill directory (so a 100 MB payload never sits in memory per session)
 * and keeps that partial file when the session drops: when the peer
 * reconnects and offers a message whose chunks it already holds (the same
 * Update resent, or a RoundStart with the same adapter payload), it says so
 * in XferAccept and only the missing chunks travel. docs/TRANSPORT.md,
 * "Chunked transfers", has the protocol, limits and failure behaviour.
 *
 * Pure state machine: no sockets, no clock. Inputs are explicit calls (peer
 * up/gone, message received, send, tick with the time); outputs go through
 * the xfer_io callbacks. One thread: the one running the channel.
 * Callbacks may call xfer_send (a delivered message answered at once). */
#ifndef FL_XFER_H
#define FL_XFER_H
#include <stddef.h>
#include <stdint.h>

/* The head chunk (chunk 0, which carries the envelope's header fields) is
 * at least this long, so header changes between two sends of the same
 * payload (sequence number, relative deadline) stay inside it. */
#define XFER_HEAD_MIN   (64u << 10)
#define XFER_CHUNK_MIN  (16u << 10)
#define XFER_CHUNK_MAX  (16u << 20)
#define XFER_WINDOW_MAX 1024u
#define XFER_MAX_CHUNKS 65536u /* per transfer: an offer is at most 2 MiB of hashes */
#define XFER_KEY_MAX    64     /* peer identity (certificate CN) */

/* Configuration rows, in both binaries' schemas (section "transport"). */
#define XFER_CFG_KEYS                                                                              \
	{"transport", "chunk_threshold",                                                           \
	 CFG_SIZE,    "16MiB",                                                                     \
	 0,           4294967295.0,                                                                \
	 NULL,        "messages above this many bytes travel in resumable chunks; 0 = never"},     \
	    {"transport",    "chunk_size",   CFG_SIZE, "256KiB",                                   \
	     XFER_CHUNK_MIN, XFER_CHUNK_MAX, NULL,     "bytes per chunk of a chunked transfer"},   \
	    {"transport", "chunk_window",  CFG_INT, "8",                                           \
	     1,           XFER_WINDOW_MAX, NULL,    "unacknowledged chunks in flight at most"},    \
	    {"transport",                                                                          \
	     "partial_keep_ms",                                                                    \
	     CFG_INT,                                                                              \
	     "600000",                                                                             \
	     0,                                                                                    \
	     86400000,                                                                             \
	     NULL,                                                                                 \
	     "a partial inbound transfer whose peer went away is kept this long for a resume"},    \
	{                                                                                          \
		"transport", "max_partials", CFG_INT, "64", 1, 100000, NULL,                       \
		    "inbound chunked transfers held at once (active and kept)"                     \
	}

typedef struct xfer_opts {
	size_t threshold;      /* messages above this travel chunked; 0 = never */
	size_t chunk_size;     /* XFER_CHUNK_MIN .. XFER_CHUNK_MAX */
	uint32_t window;       /* 1 .. XFER_WINDOW_MAX unacknowledged chunks */
	size_t max_msg;        /* largest inbound (reassembled) message */
	size_t queue_max;      /* bytes queued per peer before xfer_send says FL_EAGAIN */
	const char *dir;       /* spill directory (created; leftover *.part removed) */
	uint64_t keep_ms;      /* partial of a gone peer kept this long */
	uint32_t max_partials; /* inbound transfers held at once */
} xfer_opts;

/* Defaults as in XFER_CFG_KEYS; max_msg 128 MiB, queue_max max_msg + 1 MiB,
 * dir NULL (must be set). */
void xfer_opts_default(xfer_opts *o);
/* Defaults, then the transport.* keys of XFER_CFG_KEYS from c (the schema
 * has checked their ranges). max_msg, queue_max and dir stay the caller's. */
struct cfg;
void xfer_opts_from_cfg(const struct cfg *c, xfer_opts *o);

typedef struct xfer_io {
	void *ud;
	/* One message to the channel. Return 0 (queued), FL_EAGAIN (retried
	 * on a later xfer_tick) or another FL_E* (dropped; the session is
	 * ending anyway). */
	int (*send)(void *ud, uint64_t peer, const uint8_t *data, size_t len);
	/* A whole chunked message arrived and its SHA-256 verified: handle it
	 * like a channel message. data is valid during the call only. */
	void (*deliver)(void *ud, uint64_t peer, const uint8_t *data, size_t len);
	/* The peer broke the protocol (why names what): end its session. The
	 * peer's verified chunks are kept for a resume. */
	void (*fail)(void *ud, uint64_t peer, const char *why);
} xfer_io;

typedef struct xfer xfer;

/* FL_EINVAL (an option out of range, named in the log), FL_EIO (the spill
 * directory), FL_ENOMEM. */
int xfer_new(const xfer_opts *o, const xfer_io *io, xfer **out);
/* Drops all state and removes the partial files. NULL ok. */
void xfer_free(xfer *x);

/* A session is up with the peer whose identity is key (a certificate CN;
 * partial transfers are kept per key across sessions). FL_ENOMEM. */
int xfer_peer_up(xfer *x, uint64_t peer, const char *key, uint64_t now_ms);
/* The session ended: its outbound queue is dropped (logged if a transfer
 * was cut), its inbound partial is kept for keep_ms. */
void xfer_peer_gone(xfer *x, uint64_t peer, uint64_t now_ms);

/* A reference-counted outbound message (one copy for many peers). */
typedef struct xfer_blob xfer_blob;
/* Copies data. */
int xfer_blob_new(const void *data, size_t len, xfer_blob **out);
/* Takes ownership of malloc'd data (freed with the blob, also on error). */
int xfer_blob_wrap(void *data, size_t len, xfer_blob **out);
void xfer_blob_release(xfer_blob *b); /* NULL ok */

/* Whether a message of len bytes to peer must go through xfer_send: it is
 * above the threshold, or earlier messages to that peer are still queued
 * here (order is kept). Otherwise the caller sends it on the channel. */
int xfer_wants(const xfer *x, uint64_t peer, size_t len);
/* Queues b for peer (takes its own reference). Messages to one peer leave
 * in order; above the threshold as a chunked transfer. FL_ENOENT (no such
 * peer), FL_EAGAIN (the peer's queue would pass queue_max: the caller
 * should close the session), FL_ENOMEM. */
int xfer_send(xfer *x, uint64_t peer, xfer_blob *b);

/* Whether a received channel message is one of xfer's (XferOffer, Accept,
 * Chunk, Ack): a scan of the envelope's top-level fields, no decoding. */
int xfer_is_mine(const uint8_t *data, size_t len);
/* Handles one of xfer's messages from peer. Protocol errors call io.fail
 * and return FL_EPROTO (or FL_ETOOBIG, FL_EIO, ...); 0 otherwise. */
int xfer_on_message(xfer *x, uint64_t peer, const uint8_t *data, size_t len, uint64_t now_ms);

/* Retries sends that met FL_EAGAIN; expires kept partials. */
void xfer_tick(xfer *x, uint64_t now_ms);
/* ms until xfer_tick has work, -1 for none. */
int xfer_timeout(const xfer *x, uint64_t now_ms);

/* Chunk geometry of a message of len bytes (len >= 1): *n chunks, chunk 0
 * of *head bytes at offset 0, chunk i >= 1 of chunk_size bytes at offset
 * head + (i - 1) * chunk_size. */
void xfer_geometry(size_t len, size_t chunk_size, uint32_t *n, size_t *head);

typedef struct xfer_stats {
	uint64_t out_msgs;        /* messages sent chunked (completed) */
	uint64_t out_chunks;      /* chunks sent */
	uint64_t out_chunk_bytes; /* their payload bytes */
	uint64_t out_held_bytes;  /* bytes the receivers already held (not sent) */
	uint64_t out_cut;         /* transfers cut by the session ending */
	uint64_t in_msgs;         /* messages reassembled, verified, delivered */
	uint64_t in_chunk_bytes;  /* chunk payload bytes received and stored */
	uint64_t in_reused_bytes; /* bytes taken from a partial of an earlier session */
	uint64_t in_failed;       /* inbound transfers refused (protocol, disk) */
	uint64_t partials;        /* inbound partials held now */
	uint64_t peers;           /* sessions known */
} xfer_stats;
void xfer_get_stats(const xfer *x, xfer_stats *st);

#endif
