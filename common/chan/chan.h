/* chan — the secure channel between nodes and the coordinator: mutual TLS 1.3
 * carried inside ZeroMQ messages, delivering whole opaque application
 * messages between authenticated peers.
 *
 * Coordinator side: one ROUTER, one TLS session per node (chan_server).
 * Node side: one DEALER, one TLS session at a time (chan_client), with
 * connect, handshake, reset and reconnect handled inside. Callers never see
 * TLS, partial messages or unauthenticated bytes. docs/TRANSPORT.md has the
 * wire format, the rules it follows and the reasons for them.
 *
 * Threads: a chan_server or chan_client, its ZeroMQ socket(s), its OpenSSL
 * sessions and its events belong to the one thread that created it; every
 * function taking one must be called from that thread. The only shared
 * piece is a ZeroMQ context passed in the options, which is thread-safe.
 *
 * Event loop integration (both sides): add the object's poll items to your
 * zmq_poll set (chan_*_pollitems), bound your timeout by chan_*_timeout(),
 * then call chan_*_process() with the returned items and drain events with
 * chan_*_next() until it returns FL_EAGAIN. chan_*_poll() does all of that
 * for a loop that has nothing else to wait on. Sends never block. */
#ifndef FL_CHAN_H
#define FL_CHAN_H
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

/* Largest ZeroMQ frame either side sends or accepts (ZMQ_MAXMSGSIZE):
 * application messages are cut into TLS records and the records into
 * frames of at most this many bytes. */
#define CHAN_FRAME_MAX       (256u * 1024u)
/* Default cap on one application message. */
#define CHAN_DEFAULT_MAX_MSG (128u << 20)
/* Poll items a channel needs (socket + monitor/ZAP). */
#define CHAN_POLLITEMS_MAX   2

enum chan_event_type {
	CHAN_EV_PEER_UP = 1,   /* authenticated session up */
	CHAN_EV_MESSAGE = 2,   /* one whole application message */
	CHAN_EV_PEER_GONE = 3, /* session ended (or, on a node, an attempt failed) */
};
/* Node-side names for the same events. */
#define CHAN_EV_UP   CHAN_EV_PEER_UP
#define CHAN_EV_DOWN CHAN_EV_PEER_GONE

typedef struct chan_event {
	enum chan_event_type type;
	/* Coordinator: the session handle, unique for the server's lifetime
	 * (never reused). Node: a counter of sessions (1, 2, ...). */
	uint64_t peer;
	/* Peer certificate subject CN: the node id (coordinator side), the
	 * coordinator's CN (node side). Empty for a node's failed attempt. */
	char cn[65];
	/* Peer IP address as ZeroMQ reports it (coordinator side). */
	char addr[64];
	/* MESSAGE: malloc'd bytes owned by the receiver (free() them, or call
	 * chan_event_fini). len may be 0. */
	uint8_t *data;
	size_t len;
	/* PEER_GONE: FL_E* code and a sentence saying why. */
	int reason;
	char why[200];
	/* PEER_GONE on a node: whether this session had reached UP. */
	int was_up;
} chan_event;

void chan_event_fini(chan_event *ev); /* frees data; ev reusable */

/* ------------------------------------------------------------------ */
/* Coordinator side                                                   */
/* ------------------------------------------------------------------ */

typedef struct chan_server chan_server;

typedef struct chan_server_opts {
	const char *endpoint;     /* bind address, e.g. "tcp://0.0.0.0:7777" or tcp://127.0.0.1:* */
	const char *cert_path;    /* coordinator certificate (EKU serverAuth) */
	const char *key_path;     /* its private key */
	const char *ca_path;      /* federation CA: the only trust anchor */
	const char *crl_path;     /* optional CRL; re-read by chan_server_reload */
	const char *allow_path;   /* optional allow-list of node ids; re-read on reload */
	size_t max_msg;           /* cap on one inbound application message */
	size_t out_queue_max;     /* cap on bytes queued for one session */
	int max_sessions;         /* live sessions, handshaking included */
	int max_pending;          /* connections not yet authenticated (oldest evicted first) */
	int max_pending_per_addr; /* of those, from one IP address */
	int handshake_timeout_ms; /* connect (and HELLO) to authenticated, else dropped */
	int idle_timeout_ms;      /* no authenticated traffic for this long: dropped */
	int heartbeat_ivl_ms;     /* in-TLS keepalive after this long without sending */
	int zmtp_heartbeat_ivl_ms;     /* ZMTP PING interval (dead TCP links) */
	int zmtp_heartbeat_timeout_ms; /* ZMTP: no traffic for this long closes the link */
	int linger_ms;                 /* ZMQ_LINGER at close (final Bye) */
	int bind_retry_ms;             /* keep retrying zmq_bind (EADDRINUSE) this long */
	/* Optional ZAP handler for the NULL mechanism: comma-separated IPs or
	 * CIDR prefixes. A connecting address must match ip_allow (if set) and
	 * must not match ip_deny. Runs on the server's thread; needs a ZeroMQ
	 * context without another ZAP handler. */
	const char *ip_allow;
	const char *ip_deny;
	void *zmq_ctx; /* optional shared context; NULL: the server makes its own */
} chan_server_opts;

/* Fills defaults: max_msg CHAN_DEFAULT_MAX_MSG, out_queue_max max_msg + 1 MiB,
 * 10000 sessions, 256 pending (32 per address), handshake 10 s, idle 30 s, heartbeat 5 s,
 * ZMTP heartbeat 2 s / 6 s, linger 2 s, bind retry 10 s. */
void chan_server_opts_default(chan_server_opts *o);

/* Loads certificates, binds the ROUTER (retrying with back-off while the
 * address is in use). Errors: FL_EINVAL/FL_ENOENT/FL_ECONFIG (named in the
 * log), FL_EBUSY (address still in use), FL_ENET. */
int chan_server_new(const chan_server_opts *o, chan_server **out);
/* Sends close_notify to every session, flushes what ZeroMQ accepts within
 * linger, closes. Pending events are dropped. NULL is a no-op. */
void chan_server_free(chan_server *s);

/* The bound endpoint (ZMQ_LAST_ENDPOINT), e.g. "tcp://127.0.0.1:40123". */
const char *chan_server_endpoint(const chan_server *s);

/* Queues one application message for an UP session. Never blocks; the
 * data is copied. FL_ENOENT: no such (or no longer UP) peer; FL_EAGAIN: the
 * session's outbound queue would pass out_queue_max (try again after
 * the queue drains; chan_server_queued tells how full it is); FL_ETOOBIG:
 * the message alone is over out_queue_max, or over 4 GiB - 2 (the length
 * prefix is a u32 and 0xFFFFFFFF marks a keepalive). */
int chan_server_send(chan_server *s, uint64_t peer, const void *data, size_t len);

/* A reference-counted message for sending the same bytes to many peers
 * without one copy per peer (e.g. a global adapter). Create, send to any
 * number of peers, release your reference; the channel holds its own while
 * queued. All on the channel's thread. */
typedef struct chan_shared chan_shared;
int chan_shared_new(const void *data, size_t len, chan_shared **out);
/* A shared message of len bytes to fill in place (no copy at all, e.g.
 * encode an envelope straight into it): write chan_shared_data(m) before
 * the first send, never after. */
int chan_shared_alloc(size_t len, chan_shared **out);
uint8_t *chan_shared_data(chan_shared *m);
size_t chan_shared_len(const chan_shared *m);
void chan_shared_release(chan_shared *m); /* NULL ok */
int chan_server_send_shared(chan_server *s, uint64_t peer, chan_shared *m);

/* Bytes queued for a peer (plaintext not yet handed to ZeroMQ), or -1. */
long long chan_server_queued(const chan_server *s, uint64_t peer);

/* Ends a session (e.g. after an application-level Reject): sends
 * close_notify and RESET, emits PEER_GONE with FL_ECLOSED and why. */
int chan_server_close_peer(chan_server *s, uint64_t peer, const char *why);

/* Re-reads certificate, key, CA, CRL and allow-list (SIGHUP). New
 * handshakes use them; established sessions whose node is now revoked or
 * no longer allowed are dropped (PEER_GONE, FL_EAUTH); all others stay.
 * On error nothing changes and the reason is logged. */
int chan_server_reload(chan_server *s);

/* Event loop pieces (see the top of this file). pollitems fills up to
 * CHAN_POLLITEMS_MAX items and returns how many; timeout returns ms until
 * the next timer, 0 if work is pending; process does all I/O that is ready
 * and the timers that are due. */
int chan_server_pollitems(chan_server *s, zmq_pollitem_t *items, int max);
int chan_server_timeout(const chan_server *s);
int chan_server_process(chan_server *s, const zmq_pollitem_t *items, int n);
/* zmq_poll on the server alone for at most timeout_ms (<0: no limit) then
 * process. Returns 0, FL_EINTR when a signal interrupted zmq_poll. */
int chan_server_poll(chan_server *s, int timeout_ms);
/* Pops one event: 0 and *ev filled, or FL_EAGAIN when there is none. */
int chan_server_next(chan_server *s, chan_event *ev);

typedef struct chan_server_stats {
	uint64_t sessions;  /* live sessions, handshaking included */
	uint64_t pending;   /* of which handshaking */
	uint64_t hs_ok;     /* sessions that reached PEER_UP */
	uint64_t hs_failed; /* handshakes refused or failed */
	uint64_t hs_timeout;
	uint64_t idle_expired;
	uint64_t replaced;    /* old session of a CN freed by a newer one */
	uint64_t unreachable; /* EHOSTUNREACH: connection gone */
	uint64_t resets_sent, resets_rcvd;
	uint64_t bad_frames;    /* malformed ZeroMQ messages dropped */
	uint64_t stale_drops;   /* records for unknown/old session ids dropped */
	uint64_t oversize;      /* sessions ended for an over-cap message */
	uint64_t tls_errors;    /* sessions ended by a TLS error after the handshake */
	uint64_t zap_denied;    /* connections refused by ip_allow/ip_deny */
	uint64_t conns;         /* open TCP connections */
	uint64_t evicted;       /* unauthenticated connections evicted for newer ones */
	uint64_t conn_refused;  /* connections refused: max_sessions reached */
	uint64_t zmtp_errors;   /* connections closed for a ZMTP protocol violation */
	uint64_t link_timeouts; /* connections closed: no bytes for zmtp_heartbeat_timeout_ms */
	uint64_t msgs_in, msgs_out, bytes_in, bytes_out; /* application level */
	uint64_t wire_in, wire_out;                      /* frame bytes */
	size_t max_inbound_alloc; /* largest buffer ever allocated for one inbound message */
} chan_server_stats;
void chan_server_get_stats(const chan_server *s, chan_server_stats *st);

/* ------------------------------------------------------------------ */
/* Node side                                                          */
/* ------------------------------------------------------------------ */

typedef struct chan_client chan_client;

typedef struct chan_client_opts {
	const char *endpoint;  /* coordinator, e.g. "tcp://coord.example:7777" */
	const char *cert_path; /* node certificate (EKU clientAuth, CN = node id) */
	const char *key_path;
	const char *ca_path;  /* federation CA */
	const char *crl_path; /* optional CRL (checks the coordinator's certificate) */
	/* Name the coordinator's certificate must carry (SAN DNS or IP).
	 * NULL: the host part of endpoint. */
	const char *server_name;
	size_t max_msg;
	size_t out_queue_max;
	/* From HELLO until the application calls chan_client_set_ready (after
	 * its Welcome): otherwise the attempt is abandoned and retried. */
	int handshake_timeout_ms;
	int idle_timeout_ms;
	int heartbeat_ivl_ms;
	int zmtp_heartbeat_ivl_ms;
	int zmtp_heartbeat_timeout_ms;
	int linger_ms;
	int reconnect_ivl_ms;     /* ZeroMQ reconnect and first re-handshake delay */
	int reconnect_ivl_max_ms; /* both back off exponentially up to this */
	void *zmq_ctx;
	/* For a process holding many sessions with distinct identities (the
	 * fleet load generator, tests/bench/bench_fleet.c). tls: a client
	 * context (tlsctx_new, role client, CA and CRL only) shared between
	 * the clients instead of one built from the paths above; the client
	 * takes a reference. cert/key: this client's identity in memory instead
	 * of cert_path/key_path (both or neither; the client takes references;
	 * the key must match the certificate, else chan_client_new fails with
	 * FL_ECONFIG). */
	struct tlsctx *tls;
	struct x509_st *cert;
	struct evp_pkey_st *key;
	/* ZMQ_RCVHWM of the DEALER in messages: 0 = CHAN_RCVHWM (16 chunks
	 * of at most CHAN_CHUNK), -1 = no limit. No limit is for the fleet load
	 * generator only: with thousands of sessions in one slow process,
	 * libzmq 4.3.4 aborts (assertion !_io_error in stream_engine_base.cpp)
	 * when a connection ends while its input is stopped by a full pipe. */
	int rcvhwm;
} chan_client_opts;

/* Defaults as for the server; reconnect 100 ms up to 5 s. */
void chan_client_opts_default(chan_client_opts *o);

/* Loads certificates, connects the DEALER (ZMQ_IMMEDIATE) and its monitor.
 * The first handshake starts when the connection is up. */
int chan_client_new(const chan_client_opts *o, chan_client **out);
/* Flushes queued messages (within linger), sends close_notify, closes. */
void chan_client_free(chan_client *c);

/* Queues a message on the current session (the data is copied).
 * FL_ESTATE when no session is UP, FL_EAGAIN when the queue would pass
 * out_queue_max, FL_ETOOBIG when the message alone does. */
int chan_client_send(chan_client *c, const void *data, size_t len);
/* The same without the copy (see chan_shared_alloc). */
int chan_client_send_shared(chan_client *c, chan_shared *m);
/* The application received and accepted the coordinator's Welcome: the
 * session is up for real (in TLS 1.3 the node's handshake completes before
 * the coordinator has judged the node's certificate). Stops the
 * handshake timer and resets the reconnect back-off. FL_ESTATE when no
 * session is UP. */
int chan_client_set_ready(chan_client *c);
int chan_client_is_ready(const chan_client *c);
/* Abandons the current session (e.g. the application got a Reject or a
 * malformed Welcome) and re-handshakes after the back-off. Emits DOWN. */
int chan_client_reset(chan_client *c, const char *why);

int chan_client_pollitems(chan_client *c, zmq_pollitem_t *items, int max);
int chan_client_timeout(const chan_client *c);
int chan_client_process(chan_client *c, const zmq_pollitem_t *items, int n);
int chan_client_poll(chan_client *c, int timeout_ms);
int chan_client_next(chan_client *c, chan_event *ev);

typedef struct chan_client_stats {
	uint64_t attempts;              /* handshakes started */
	uint64_t ups;                   /* sessions that reached UP */
	uint64_t downs;                 /* DOWN events */
	uint64_t connects, disconnects; /* from the socket monitor */
	uint64_t resets_rcvd;
	uint64_t stale_drops;
	uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
} chan_client_stats;
void chan_client_get_stats(const chan_client *c, chan_client_stats *st);

/* ------------------------------------------------------------------ */
/* Tests and fuzzing: channels without sockets                        */
/* ------------------------------------------------------------------ */

/* Where a detached channel's outbound ZeroMQ messages go. rid is the
 * routing id (server side; NULL/0 on a client). Return 0 (sent), FL_EAGAIN
 * (would block: the channel retries later) or FL_ECLOSED (peer unreachable,
 * like EHOSTUNREACH). */
typedef int (*chan_out_fn)(void *arg, const uint8_t *rid, size_t rid_len, const uint8_t *hdr,
                           size_t hdr_len, const uint8_t *body, size_t body_len);

/* One received frame. */
typedef struct chan_frame {
	const void *p;
	size_t n;
} chan_frame;

/* A server/client with no socket: opts->endpoint is ignored, output goes to
 * out(arg, ...), input comes from chan_*_feed (frames as they would arrive
 * from ZeroMQ, without the routing id). Timers run on process(). */
int chan_server_new_detached(const chan_server_opts *o, chan_out_fn out, void *arg,
                             chan_server **srv);
int chan_server_feed(chan_server *s, const void *rid, size_t rid_len, const chan_frame *frames,
                     int nframes);
int chan_client_new_detached(const chan_client_opts *o, chan_out_fn out, void *arg,
                             chan_client **cli);
int chan_client_feed(chan_client *c, const chan_frame *frames, int nframes);
/* Detached client: the link came up (starts a handshake) or went down. */
void chan_client_link_event(chan_client *c, int up);
/* Replaces the millisecond monotonic clock of every channel (tests of
 * timeouts). NULL restores the real clock. Not thread-safe: set it before
 * creating channels. */
void chan_test_set_clock(uint64_t (*now_ms)(void));

/* Wire header constants (docs/TRANSPORT.md). */
enum chan_kind { CHAN_KIND_HELLO = 1, CHAN_KIND_TLS = 2, CHAN_KIND_RESET = 3 };
#define CHAN_HDR_LEN 9

#endif
