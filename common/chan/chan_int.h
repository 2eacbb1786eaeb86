/* chan_int.h — internals shared by the channel's source files: chan.c
 * (events, clock, hashing, shared messages), chan_sess.c (one TLS session
 * over an in-memory BIO with length-prefixed messages inside), chan_server.c,
 * chan_client.c and chan_zap.c. Not an API: only those files include it
 * (and the fuzz target, for its test hook). */
#ifndef FL_CHAN_INT_H
#define FL_CHAN_INT_H
#include <stddef.h>
#include <stdint.h>

#include "chan.h"
#include "tlsctx.h"

#include <openssl/ssl.h>

#define CHAN_MOD "chan"

/* Length prefix reserved for the in-TLS keepalive (no body follows). */
#define CHAN_KEEPALIVE_LEN  0xFFFFFFFFu
/* Largest application message: the prefix is a u32 and one value is taken. */
#define CHAN_MAX_SEND_LEN   0xFFFFFFFEu
/* Plaintext bytes per TLS record and an upper bound of a TLS 1.3 record's
 * overhead (5 header + 1 content type + 16 tag, rounded up). */
#define CHAN_REC_PLAIN      16384u
#define CHAN_REC_OVERHEAD   32u
/* ZeroMQ messages handled per process() call and socket, so one busy peer
 * cannot starve timers or other work. */
#define CHAN_RECV_BUDGET    256
/* Frame bytes read per process() call and socket. Without it one call
 * could read CHAN_RECV_BUDGET whole frames (64 MiB) and decrypt every
 * message in them before the application frees the first: each message
 * then lands in fresh, page-faulting memory. With it, a bulk sender's
 * messages reach the application about one megabyte at a time and their
 * buffers are reused while still in cache. */
#define CHAN_RECV_BYTES     (1u << 20)
/* Frame bytes one session may hand to ZeroMQ per process() call. */
#define CHAN_SEND_BUDGET    (8u << 20)
/* The node's DEALER high-water marks, in frames of up to CHAN_FRAME_MAX
 * bytes: 16 MiB may wait to be sent; at most 4 MiB is buffered from the
 * coordinator before the channel reads it. */
#define CHAN_SNDHWM         64
#define CHAN_RCVHWM         16
/* The coordinator's STREAM socket counts chunks of raw TCP bytes (at most
 * CHAN_STREAM_CHUNK each, ZeroMQ's read size): per connection ZeroMQ holds
 * at most CHAN_STREAM_RCVHWM chunks received and CHAN_STREAM_SNDHWM messages
 * (half of them frame bodies of up to CHAN_FRAME_MAX) to send. */
#define CHAN_STREAM_CHUNK   8192u
#define CHAN_STREAM_RCVHWM  16
#define CHAN_STREAM_SNDHWM  128
/* Frames in one message beyond which a peer is disconnected (the protocol
 * has two: header and body; more are counted and dropped up to this). */
#define CHAN_MSG_FRAMES_MAX 64

/* Session or connection teardowns after which the server gives freed heap
 * back to the system (once they stop for a second): RSS falls back after a
 * flood instead of staying at its peak. */
#define CHAN_TRIM_AFTER 64
/* Returns free heap memory to the system (glibc malloc_trim; a no-op
 * elsewhere). */
void chan_heap_trim(void);

/* ---- clock, randomness ---- */
uint64_t chan_now_ms(void);
/* Cryptographic randomness (RAND_bytes); FL_ECRYPTO if it fails. */
int chan_random(void *p, size_t n);

/* ---- wire header ---- */
void chan_hdr_put(uint8_t hdr[CHAN_HDR_LEN], enum chan_kind k, uint64_t sid);
/* 0 and fields, or FL_EPROTO with a reason in why. */
int chan_hdr_get(const void *p, size_t n, enum chan_kind *k, uint64_t *sid, char *why,
                 size_t why_len);
const char *chan_kind_name(int k);

/* ---- events ---- */
typedef struct chan_evq {
	chan_event *v;
	size_t cap, head, n;
} chan_evq;
/* Moves *ev into the queue (the queue owns ev->data afterwards, even on
 * failure, when the data is freed and the loss logged). */
int chan_evq_push(chan_evq *q, chan_event *ev);
int chan_evq_pop(chan_evq *q, chan_event *ev); /* 0 or FL_EAGAIN */
void chan_evq_fini(chan_evq *q);
/* Fills a PEER_GONE/DOWN event. */
void chan_ev_gone(chan_event *ev, uint64_t peer, const char *cn, const char *addr, int reason,
                  const char *why, int was_up);

/* ---- log rate limit for unauthenticated events ---- */
#define CHAN_RATELOG_MAX 20
typedef struct chan_ratelog {
	uint64_t at[CHAN_RATELOG_MAX]; /* times of the last lines logged, a ring */
	unsigned n, next;
	unsigned dropped;
	uint64_t last_note; /* when the count of suppressed lines was logged */
} chan_ratelog;
/* 1 if one more line may be logged now: at most CHAN_RATELOG_MAX lines in
 * any 1000 ms (a sliding window), plus at most one line a second saying
 * how many were suppressed. */
int chan_ratelog_allow(chan_ratelog *r);

/* ---- shared messages ---- */
struct chan_shared {
	unsigned refs;
	size_t len;
	uint8_t data[];
};
chan_shared *chan_shared_ref(chan_shared *m);

/* ---- one TLS session ---- */
typedef struct chan_counters {
	uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
	size_t max_alloc;
} chan_counters;

typedef struct chan_oitem {
	struct chan_oitem *next;
	chan_shared *sh; /* NULL: bytes follow the struct */
	const uint8_t *data;
	size_t len; /* message bytes */
	size_t off; /* stream bytes already written: 0 .. 4 + len */
	int ka;     /* keepalive (len 0, prefix CHAN_KEEPALIVE_LEN) */
	uint8_t pfx[4];
} chan_oitem;

typedef struct chan_sess_cb {
	void *arg;
	/* Handshake finished (peer certificate verified by this side). */
	int (*on_up)(void *arg);
	/* One whole message; data (malloc'd, may be NULL when len is 0) now
	 * belongs to the callee, also when it fails. */
	int (*on_msg)(void *arg, uint8_t *data, size_t len);
} chan_sess_cb;

typedef struct chan_sess {
	SSL *ssl;
	tlsctx *tls; /* reference: the verify callback reads it */
	tlsctx_note note;
	size_t max_msg, out_max;
	chan_counters *ctr;
	int hs_done;
	int shut; /* close_notify written: no more application data */
	int dead; /* fatal error: err and why say what */
	int err;
	char why[200];
	/* inbound: length prefix, then the message */
	uint8_t lenbuf[4];
	unsigned lenget;
	uint8_t *msg;
	size_t msg_len, msg_got, msg_cap;
	/* outbound plaintext, prefixed messages in order */
	chan_oitem *oq_head, *oq_tail;
	size_t oq_bytes; /* stream bytes not yet written into TLS */
	/* the BIO: the frame being read (borrowed while feeding) and the
	 * frame being written (owned, handed to ZeroMQ as it is) */
	const uint8_t *in_p;
	size_t in_n;
	uint8_t *wb;
	size_t wlen, wcap;
	/* one produced frame ZeroMQ did not take yet (EAGAIN) */
	uint8_t *pend;
	size_t pend_len, pend_cap;
	enum chan_kind next_kind; /* kind of the next frame (client: HELLO first) */
	uint64_t last_in_ms;      /* last authenticated inbound record */
	uint64_t last_out_ms;     /* last frame handed to ZeroMQ */
} chan_sess;

/* server_name: client side only. ctr must outlive the session. */
int chan_sess_init(chan_sess *s, tlsctx *t, const char *server_name, size_t max_msg, size_t out_max,
                   chan_counters *ctr);
void chan_sess_fini(chan_sess *s);
/* Client: writes the first flight (ClientHello) into the write BIO. */
int chan_sess_start(chan_sess *s);
/* Feeds received TLS bytes: advances the handshake, delivers messages
 * through cb. 0, or a negative code with s->why (s->dead set). */
int chan_sess_input(chan_sess *s, const uint8_t *p, size_t n, const chan_sess_cb *cb);
/* Queues a message (copied unless sh is given: then referenced). FL_EAGAIN
 * when the queue would pass out_max, FL_ETOOBIG when the message alone
 * does, FL_ESTATE after close_notify. */
int chan_sess_queue(chan_sess *s, const void *data, size_t len, chan_shared *sh);
int chan_sess_queue_keepalive(chan_sess *s);
/* Bytes queued and not yet handed to ZeroMQ (plaintext + pending frame). */
size_t chan_sess_queued(const chan_sess *s);
/* Produces the next frame body (at most CHAN_FRAME_MAX bytes of TLS
 * records in a buffer of *cap bytes, owned by the caller, released with
 * chan_frame_put): 0, FL_EAGAIN when there is nothing to send, or a fatal
 * error. */
int chan_sess_produce(chan_sess *s, uint8_t **out, size_t *len, size_t *cap);
/* Sends a frame: kind, body of len bytes in a buffer of cap bytes
 * (ownership passes to the callee on 0 only; release with chan_frame_put).
 * Returns 0, FL_EAGAIN (keep it, retry later) or FL_ECLOSED (unreachable). */
typedef int (*chan_sendfn)(void *arg, enum chan_kind kind, uint8_t *body, size_t len, size_t cap);
/* Hands frames to send until the queue is empty (0), ZeroMQ pushes back
 * (FL_EAGAIN), budget bytes went out (FL_EBUSY: call again), or an error
 * (FL_ECLOSED from send, or a TLS failure with s->why). */
int chan_sess_flush(chan_sess *s, chan_sendfn send, void *arg, size_t budget);
/* Writes close_notify (queued messages that were not yet encrypted are
 * dropped: flush first when they matter). */
void chan_sess_shutdown(chan_sess *s);
/* Whether nothing is buffered: no partial message in or out. */
int chan_sess_idle(const chan_sess *s);
/* Frees buffers an idle session does not need (idle sessions small). */
void chan_sess_shrink(chan_sess *s);
/* Test hook (fuzzing): writes raw plaintext into TLS, bypassing the
 * length prefix. */
int chan_sess_write_raw(chan_sess *s, const void *p, size_t n);

/* ---- ZMTP 3.x codec (coordinator side, chan_zmtp.c) ---- */
#define CHAN_ZMTP_GREETING_LEN 64
/* Largest command body accepted (READY with a 255-byte identity fits). */
#define CHAN_ZMTP_CMD_MAX      512
typedef struct chan_zmtp_cb {
	void *arg;
	/* The peer's READY was accepted (its socket type is DEALER). */
	int (*on_ready)(void *arg);
	/* A PING with its context (0..16 bytes): answer with a PONG. */
	int (*on_ping)(void *arg, const uint8_t *ctx, size_t n);
	/* A message frame begins: its index in the message (0 first), its
	 * announced size and whether more frames follow. Called before any of
	 * its bytes, so the callee decides what to keep. */
	int (*on_frame)(void *arg, unsigned idx, uint64_t size, int more);
	/* The next bytes of the current frame (never more than announced). */
	int (*on_data)(void *arg, const uint8_t *p, size_t n);
	/* The current frame is complete. */
	int (*on_frame_end)(void *arg);
} chan_zmtp_cb;
typedef struct chan_zmtp {
	int st, dead, ready;
	uint8_t flags;
	unsigned idx; /* index of the next frame in the current message */
	size_t have, need;
	uint64_t left; /* bytes of the current frame not yet seen */
	char why[96];
	uint8_t buf[CHAN_ZMTP_CMD_MAX]; /* greeting, frame size or command */
} chan_zmtp;
void chan_zmtp_init(chan_zmtp *z);
/* Decodes received bytes. 0, FL_EPROTO with z->why (the connection must be
 * closed), or a callback's error, returned as it is. */
int chan_zmtp_input(chan_zmtp *z, const uint8_t *p, size_t n, const chan_zmtp_cb *cb);
/* The server's greeting followed by its READY (Socket-Type ROUTER): the
 * bytes to send when a connection opens. Returns the length, 0 if cap is
 * too small (96 bytes suffice). */
size_t chan_zmtp_hello(uint8_t *out, size_t cap);
/* A message frame's flags and size: 2 or 9 bytes written. */
size_t chan_zmtp_frame_hdr(uint8_t out[9], uint64_t size, int more);
/* A short command frame (PING, PONG): length written, 0 if it does not fit. */
size_t chan_zmtp_command(uint8_t *out, size_t cap, const char *name, const uint8_t *data, size_t n);

/* ---- address filter (ip_allow / ip_deny), checked at connect ---- */
typedef struct chan_zap chan_zap;
/* Parses the lists (comma-separated IPs or CIDR prefixes). FL_ECONFIG
 * naming the bad entry. */
int chan_zap_new(const char *allow, const char *deny, chan_zap **out);
void chan_zap_free(chan_zap *z);
/* 1 if the address string passes the lists; else 0 and, if why is given,
 * the reason ("matches ip_deny", "not in ip_allow", "address not
 * understood"). */
int chan_zap_check(const chan_zap *z, const char *addr, const char **why);

/* ---- ZeroMQ helpers ---- */
int chan_zmq_setint(void *sock, int opt, int v, const char *name);
/* Receives one whole ZeroMQ message without waiting: its first `max`
 * parts into part[0..max) (each initialised here; the caller closes all
 * `max`), the rest read and dropped. Returns the number of parts the
 * message had, 0 when none was waiting (or on an error, logged unless
 * EAGAIN/EINTR). */
int chan_zmq_recv_parts(void *sock, zmq_msg_t *part, int max);
/* zmq_poll with the channel's error handling: FL_EINTR, FL_ENET (logged). */
int chan_zmq_poll(zmq_pollitem_t *it, int n, int timeout_ms);
/* Frame buffers of CHAN_FRAME_MAX bytes are recycled (a small process-wide
 * pool, thread-safe: ZeroMQ's I/O threads give them back), so bulk
 * transfers do not map and fault in fresh pages for every frame. */
uint8_t *chan_frame_get(void);               /* CHAN_FRAME_MAX bytes, or NULL */
void chan_frame_put(uint8_t *p, size_t cap); /* any malloc'd buffer; NULL ok */
/* Frees the pooled buffers once none was taken for 2 s (or at once with
 * force): called from the channels' timers, so idle processes give the
 * memory back. */
void chan_frame_pool_trim(int force);
/* ZeroMQ free callback for zero-copy frames; hint is the capacity. */
void chan_zmq_free_body(void *data, void *hint);

/* Test hook: the client's current session (NULL when none). */
chan_sess *chan_client_test_sess(chan_client *c);

#endif
