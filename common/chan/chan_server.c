/* chan_server — coordinator end of the channel (chan.h): one ROUTER, one
 * TLS session per node keyed by ZeroMQ routing id, never blocking on a
 * node. */
#include "chan_int.h"

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "hmap.h"
#include "log.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How far an unauthenticated connection got: eviction takes the least
 * advanced first (a half-open flood goes before a node in its handshake),
 * the oldest first within a level. */
enum { LVL_TCP, LVL_ZMTP, LVL_TLS, LVL_N };

typedef struct srv_sess srv_sess;
typedef struct srv_conn srv_conn;
typedef struct srv_addr srv_addr;

/* One TLS session (between HELLO and its end), on one connection. */
struct srv_sess {
	chan_sess cs;
	chan_server *srv;
	srv_conn *conn;
	uint64_t handle;
	uint64_t sid;
	void *link_h, *link_cn;  /* hash map links */
	srv_sess *prev, *next;   /* every session */
	srv_sess *dprev, *dnext; /* sessions with output to hand to ZeroMQ */
	int in_dirty;
	int blocked; /* ZeroMQ said EAGAIN for its pending frame */
	int up;
	int closing; /* PEER_GONE emitted; sending what is queued, then close */
	int in_maps; /* in by_handle and by_cn (only while up and not closing) */
	uint64_t hs_deadline, close_deadline;
	tlsctx_peer peer;
	char addr[64];
	uint8_t hkey[8];
};

/* Unauthenticated connections per peer address (fair admission). */
struct srv_addr {
	void *link;
	unsigned n;
	char addr[64];
};

/* One TCP connection of the STREAM socket: the coordinator speaks ZMTP on
 * it itself (chan_zmtp.c), so nothing a peer sends is buffered beyond one
 * frame header or command before this code has looked at it. */
struct srv_conn {
	chan_server *srv;
	void *link_rid;
	srv_conn *prev, *next;   /* every connection */
	srv_conn *pprev, *pnext; /* unauthenticated ones of its level, oldest first */
	srv_sess *sess;          /* current session, NULL before HELLO */
	srv_addr *pa;            /* while unauthenticated: its address count */
	int pending;             /* no authenticated session on it */
	int level;               /* while pending: how far it got (LVL_*) */
	int closed;              /* closed by us: freed at the end of the call */
	int hdr_sent;            /* the prefix of the frame being sent went out */
	uint64_t deadline;       /* unauthenticated: closed at this time */
	uint64_t last_in, last_out;
	chan_zmtp z;
	/* the message being received */
	unsigned nfr;
	int cur_idx, cur_more;
	int mbad, to_sess;
	char mwhy[96];
	uint8_t hdr[CHAN_HDR_LEN];
	size_t hdr_have;
	uint64_t hdr_size;
	enum chan_kind kind;
	uint64_t sid;
	char addr[64];
	uint8_t rid_len;
	uint8_t rid[];
};

struct chan_server {
	chan_server_opts o;
	char *s_endpoint, *s_cert, *s_key, *s_ca, *s_crl, *s_allow;
	tlsctx_opts topts;
	tlsctx *tls;
	void *ctx;
	int own_ctx;
	void *sock;
	chan_zap *zap; /* address filter (matcher only) */
	char endpoint[256];
	int detached;
	chan_out_fn out;
	void *out_arg;
	hmap by_rid, by_handle, by_cn, by_addr;
	srv_sess *all;
	srv_sess *dirty;
	srv_conn *conns;
	srv_conn *pend_head[LVL_N], *pend_tail[LVL_N];
	srv_conn *zombies; /* closed during this call, freed at its end */
	uint64_t next_handle;
	uint64_t nsess, nconns, npend;
	chan_evq evq;
	chan_server_stats st;
	chan_counters ctr;
	chan_ratelog rl;
	uint64_t next_sweep;
	uint64_t out_retry_at;        /* no POLLOUT wanted before this (no progress) */
	uint64_t freed, last_free_ms; /* teardowns since the last heap trim */
	uint8_t *rbuf;                /* CHAN_RBATCH bytes: one connection's consecutive chunks */
	int sweep_ms;
};

/* end() flags */
#define END_ALERT        1 /* send what OpenSSL wrote (an alert) */
#define END_CLOSE_NOTIFY 2 /* write and send close_notify */
#define END_RESET        4 /* send RESET */

static void key_rid(const void *it, const uint8_t **k, size_t *kn)
{
	const srv_conn *c = it;
	*k = c->rid;
	*kn = c->rid_len;
}
static void key_handle(const void *it, const uint8_t **k, size_t *kn)
{
	const srv_sess *s = it;
	*k = s->hkey;
	*kn = sizeof s->hkey;
}
static void key_cn(const void *it, const uint8_t **k, size_t *kn)
{
	const srv_sess *s = it;
	*k = (const uint8_t *)s->peer.cn;
	*kn = strlen(s->peer.cn);
}
static void key_addr(const void *it, const uint8_t **k, size_t *kn)
{
	const srv_addr *a = it;
	*k = (const uint8_t *)a->addr;
	*kn = strlen(a->addr);
}

static char *dup_opt(const char *s)
{
	return s ? strdup(s) : NULL;
}

void chan_server_opts_default(chan_server_opts *o)
{
	memset(o, 0, sizeof *o);
	o->max_msg = CHAN_DEFAULT_MAX_MSG;
	o->out_queue_max = CHAN_DEFAULT_MAX_MSG + (1u << 20);
	o->max_sessions = 10000;
	o->max_pending = 256;
	o->max_pending_per_addr = 32;
	o->handshake_timeout_ms = 10000;
	o->idle_timeout_ms = 30000;
	o->heartbeat_ivl_ms = 5000;
	o->zmtp_heartbeat_ivl_ms = 2000;
	o->zmtp_heartbeat_timeout_ms = 6000;
	o->linger_ms = 2000;
	o->bind_retry_ms = 10000;
}

static int check_opts(const chan_server_opts *o)
{
	if (o->max_msg == 0 || o->max_msg > CHAN_MAX_SEND_LEN || o->out_queue_max < 64 ||
	    o->max_sessions < 1 || o->max_pending < 1 || o->max_pending_per_addr < 1 ||
	    o->handshake_timeout_ms < 1 || o->idle_timeout_ms < 1 || o->heartbeat_ivl_ms < 1 ||
	    o->zmtp_heartbeat_ivl_ms < 0 || o->zmtp_heartbeat_timeout_ms < 0 || o->linger_ms < 0 ||
	    o->bind_retry_ms < 0) {
		LOGE(CHAN_MOD, "server options out of range (max_msg 1..4 GiB-2, timeouts > 0)");
		return FL_EINVAL;
	}
	if (o->heartbeat_ivl_ms >= o->idle_timeout_ms)
		LOGW(CHAN_MOD,
		     "heartbeat interval %d ms is not below the idle timeout %d ms: idle nodes "
		     "will be expired",
		     o->heartbeat_ivl_ms, o->idle_timeout_ms);
	return 0;
}

static int clampi(int v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

static int common_new(const chan_server_opts *o, chan_server **out)
{
	int rc;
	chan_server *s = calloc(1, sizeof *s);
	if (!s)
		return FL_ENOMEM;
	s->o = *o;
	s->s_endpoint = dup_opt(o->endpoint);
	s->s_cert = dup_opt(o->cert_path);
	s->s_key = dup_opt(o->key_path);
	s->s_ca = dup_opt(o->ca_path);
	s->s_crl = dup_opt(o->crl_path);
	s->s_allow = dup_opt(o->allow_path);
	s->o.endpoint = s->s_endpoint;
	s->o.cert_path = s->s_cert;
	s->o.key_path = s->s_key;
	s->o.ca_path = s->s_ca;
	s->o.crl_path = s->s_crl;
	s->o.allow_path = s->s_allow;
	s->o.ip_allow = s->o.ip_deny = NULL; /* only used in chan_server_new */
	s->topts.role = TLSCTX_SERVER;
	s->topts.cert_path = s->s_cert;
	s->topts.key_path = s->s_key;
	s->topts.ca_path = s->s_ca;
	s->topts.crl_path = s->s_crl;
	s->topts.allow_path = s->s_allow;
	if ((o->endpoint && !s->s_endpoint) || (o->cert_path && !s->s_cert) ||
	    (o->key_path && !s->s_key) || (o->ca_path && !s->s_ca) || (o->crl_path && !s->s_crl) ||
	    (o->allow_path && !s->s_allow)) {
		rc = FL_ENOMEM;
		goto out;
	}
	/* Keyed hashes: routing ids, addresses and names come from peers. The
	 * tables are allocated here so that puts cannot fail later. */
	hmap_init(&s->by_rid, offsetof(srv_conn, link_rid), key_rid);
	hmap_init(&s->by_handle, offsetof(srv_sess, link_h), key_handle);
	hmap_init(&s->by_cn, offsetof(srv_sess, link_cn), key_cn);
	hmap_init(&s->by_addr, offsetof(srv_addr, link), key_addr);
	if ((rc = hmap_reserve(&s->by_rid, 64)) || (rc = hmap_reserve(&s->by_handle, 64)) ||
	    (rc = hmap_reserve(&s->by_cn, 64)) || (rc = hmap_reserve(&s->by_addr, 64)))
		goto out;
	if ((rc = tlsctx_new(&s->topts, &s->tls)))
		goto out;
	int m = o->handshake_timeout_ms;
	if (o->idle_timeout_ms < m)
		m = o->idle_timeout_ms;
	if (o->heartbeat_ivl_ms < m)
		m = o->heartbeat_ivl_ms;
	s->sweep_ms = clampi(m / 4, 10, 250);
	s->next_sweep = chan_now_ms() + (uint64_t)s->sweep_ms;
	*out = s;
	return 0;
out:
	chan_server_free(s);
	return rc;
}

static int setup_socket(chan_server *s)
{
	const chan_server_opts *o = &s->o;
	int rc;
	/* A STREAM socket hands over raw TCP bytes in chunks of at most 8 KiB
	 * and stops reading a connection while CHAN_STREAM_RCVHWM chunks of it
	 * wait: ZeroMQ never holds more than that per connection, whatever a
	 * peer sends. The ZMTP protocol is spoken here (chan_zmtp.c), so
	 * nodes keep their ordinary DEALER. */
	s->sock = zmq_socket(s->ctx, ZMQ_STREAM);
	if (!s->sock) {
		LOGE(CHAN_MOD, "zmq_socket(STREAM): %s", zmq_strerror(errno));
		return FL_ENET;
	}
	if ((rc = chan_zmq_setint(s->sock, ZMQ_STREAM_NOTIFY, 1, "ZMQ_STREAM_NOTIFY")) ||
	    (rc = chan_zmq_setint(s->sock, ZMQ_LINGER, o->linger_ms, "ZMQ_LINGER")) ||
	    (rc = chan_zmq_setint(s->sock, ZMQ_SNDHWM, CHAN_STREAM_SNDHWM, "ZMQ_SNDHWM")) ||
	    (rc = chan_zmq_setint(s->sock, ZMQ_RCVHWM, CHAN_STREAM_RCVHWM, "ZMQ_RCVHWM")))
		return rc;
	/* A restarted coordinator may find its port still held for a moment:
	 * retry with back-off instead of failing at once. */
	uint64_t t0 = clk_mono_ms();
	int wait = 50, logged = 0;
	while (zmq_bind(s->sock, o->endpoint) != 0) {
		int e = errno;
		if (e != EADDRINUSE || clk_mono_ms() - t0 >= (uint64_t)o->bind_retry_ms) {
			LOGE(CHAN_MOD, "cannot bind %s: %s", o->endpoint, zmq_strerror(e));
			return e == EADDRINUSE ? FL_EBUSY : FL_ENET;
		}
		if (!logged++)
			LOGW(CHAN_MOD, "%s is in use; retrying for up to %d ms", o->endpoint,
			     o->bind_retry_ms);
		clk_sleep_ms((uint64_t)wait);
		wait = wait * 2 > 1000 ? 1000 : wait * 2;
	}
	size_t len = sizeof s->endpoint;
	if (zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->endpoint, &len) != 0)
		snprintf(s->endpoint, sizeof s->endpoint, "%s", o->endpoint);
	return 0;
}

int chan_server_new(const chan_server_opts *o, chan_server **out)
{
	chan_server *s = NULL;
	int rc;
	if (!o || !out || !o->endpoint)
		return FL_EINVAL;
	if ((rc = check_opts(o)) || (rc = common_new(o, &s)))
		return rc;
	if (o->zmq_ctx) {
		s->ctx = o->zmq_ctx;
	} else {
		s->ctx = zmq_ctx_new();
		s->own_ctx = 1;
		if (!s->ctx) {
			LOGE(CHAN_MOD, "zmq_ctx_new: %s", zmq_strerror(errno));
			rc = FL_ENET;
			goto out;
		}
	}
	if ((o->ip_allow && *o->ip_allow) || (o->ip_deny && *o->ip_deny)) {
		/* Checked when a connection opens, before anything is read. */
		if ((rc = chan_zap_new(o->ip_allow, o->ip_deny, &s->zap)))
			goto out;
	}
	if ((rc = setup_socket(s)))
		goto out;
	LOGI(CHAN_MOD, "coordinator listening on %s (CRL %s, allow-list %s%s)", s->endpoint,
	     o->crl_path ? o->crl_path : "none", o->allow_path ? o->allow_path : "none",
	     s->zap ? ", IP filter on" : "");
	*out = s;
	return 0;
out:
	chan_server_free(s);
	return rc;
}

int chan_server_new_detached(const chan_server_opts *o, chan_out_fn outfn, void *arg,
                             chan_server **srv)
{
	chan_server *s = NULL;
	int rc;
	if (!o || !outfn || !srv)
		return FL_EINVAL;
	if ((rc = check_opts(o)) || (rc = common_new(o, &s)))
		return rc;
	s->detached = 1;
	s->out = outfn;
	s->out_arg = arg;
	snprintf(s->endpoint, sizeof s->endpoint, "detached");
	*srv = s;
	return 0;
}

const char *chan_server_endpoint(const chan_server *s)
{
	return s->endpoint;
}

/* ---- sending ---- */

/* One STREAM message [routing id, bytes]: 0, FL_EAGAIN, FL_ECLOSED. */
static int stream_send(chan_server *s, srv_conn *c, const void *p, size_t n)
{
	if (zmq_send(s->sock, c->rid, c->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
		int e = errno;
		if (e == EAGAIN)
			return FL_EAGAIN;
		if (e != EHOSTUNREACH)
			LOGW(CHAN_MOD, "zmq_send: %s", zmq_strerror(e));
		return FL_ECLOSED;
	}
	/* Once the routing id is accepted the data is. */
	if (zmq_send(s->sock, p, n, ZMQ_DONTWAIT) < 0)
		LOGW(CHAN_MOD, "zmq_send(data): %s", zmq_strerror(errno));
	c->last_out = chan_now_ms();
	return 0;
}

/* One channel frame as a ZMTP message: [ZMTP header frame: kind, sid]
 * [body frame]. The ZMTP prefix (20 bytes at most) goes first; the body
 * follows without a copy. If ZeroMQ takes the prefix and pushes back on
 * the body, hdr_sent remembers it: the caller retries the same frame
 * (chan_sess keeps it) and only the body goes then. Ownership of body
 * passes on 0 only. */
static int send_frame(chan_server *s, srv_conn *c, enum chan_kind kind, uint64_t sid, uint8_t *body,
                      size_t len, size_t cap)
{
	uint8_t hdr[CHAN_HDR_LEN];
	int rc;
	chan_hdr_put(hdr, kind, sid);
	if (s->detached) {
		rc = s->out(s->out_arg, c->rid, c->rid_len, hdr, sizeof hdr, body, len);
		if (rc == 0) {
			s->st.wire_out += sizeof hdr + len;
			chan_frame_put(body, cap);
		}
		return rc == 0 || rc == FL_EAGAIN || rc == FL_ECLOSED ? rc : FL_ECLOSED;
	}
	if (c->closed)
		return FL_ECLOSED;
	if (!c->hdr_sent) {
		uint8_t pre[9 + CHAN_HDR_LEN + 9];
		size_t k = chan_zmtp_frame_hdr(pre, CHAN_HDR_LEN, 1);
		memcpy(pre + k, hdr, sizeof hdr);
		k += sizeof hdr;
		k += chan_zmtp_frame_hdr(pre + k, len, 0);
		if ((rc = stream_send(s, c, pre, k)))
			return rc;
		s->st.wire_out += sizeof hdr;
		if (len == 0) {
			chan_frame_put(body, cap);
			return 0;
		}
		c->hdr_sent = 1;
	}
	if (zmq_send(s->sock, c->rid, c->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
		int e = errno;
		if (e == EAGAIN)
			return FL_EAGAIN;
		return FL_ECLOSED;
	}
	zmq_msg_t m;
	if (zmq_msg_init_data(&m, body, len, chan_zmq_free_body, (void *)(uintptr_t)cap) != 0) {
		LOGW(CHAN_MOD, "zmq_msg_init_data: %s", zmq_strerror(errno));
		zmq_msg_init_size(&m, len); /* cannot happen with a non-NULL body */
		if (zmq_msg_size(&m) == len)
			memcpy(zmq_msg_data(&m), body, len);
		chan_frame_put(body, cap);
	}
	if (zmq_msg_send(&m, s->sock, ZMQ_DONTWAIT) < 0) {
		LOGW(CHAN_MOD, "zmq_msg_send(body): %s", zmq_strerror(errno));
		zmq_msg_close(&m);
	}
	c->hdr_sent = 0;
	s->st.wire_out += len;
	return 0;
}

static int sess_send(void *arg, enum chan_kind kind, uint8_t *body, size_t len, size_t cap)
{
	srv_sess *ss = arg;
	if (!ss->conn)
		return FL_ECLOSED;
	return send_frame(ss->srv, ss->conn, kind, ss->sid, body, len, cap);
}

static void send_reset(chan_server *s, srv_conn *c, uint64_t sid)
{
	if (c->hdr_sent)
		return; /* mid-frame: the connection is being closed instead */
	if (send_frame(s, c, CHAN_KIND_RESET, sid, NULL, 0, 0) == 0)
		s->st.resets_sent++;
}

/* ---- session bookkeeping ---- */

static void dirty_add(chan_server *s, srv_sess *ss)
{
	if (ss->in_dirty)
		return;
	ss->in_dirty = 1;
	ss->dprev = NULL;
	ss->dnext = s->dirty;
	if (s->dirty)
		s->dirty->dprev = ss;
	s->dirty = ss;
}

static void dirty_del(chan_server *s, srv_sess *ss)
{
	if (!ss->in_dirty)
		return;
	if (ss->dprev)
		ss->dprev->dnext = ss->dnext;
	else
		s->dirty = ss->dnext;
	if (ss->dnext)
		ss->dnext->dprev = ss->dprev;
	ss->in_dirty = 0;
	ss->blocked = 0;
	ss->dprev = ss->dnext = NULL;
}

static void maps_del(chan_server *s, srv_sess *ss)
{
	if (!ss->in_maps)
		return;
	hmap_del(&s->by_handle, ss);
	if (hmap_get(&s->by_cn, ss->peer.cn, strlen(ss->peer.cn)) == ss)
		hmap_del(&s->by_cn, ss);
	ss->in_maps = 0;
}

static void emit_gone(chan_server *s, srv_sess *ss, int reason, const char *why)
{
	chan_event ev;
	chan_ev_gone(&ev, ss->handle, ss->peer.cn, ss->addr, reason, why, 1);
	chan_evq_push(&s->evq, &ev);
}

static void conn_close(chan_server *s, srv_conn *c);
static void conn_set_pending(chan_server *s, srv_conn *c, int pending);

/* Ends a session: event (if the application knew it), what to send, free.
 * Its connection stays, unauthenticated again (or is closed when a frame
 * was half sent on it). */
static void end(chan_server *s, srv_sess *ss, int reason, const char *why, int flags)
{
	srv_conn *c = ss->conn;
	if (ss->up && !ss->closing)
		emit_gone(s, ss, reason, why);
	if (c && !c->closed) {
		if (flags & END_CLOSE_NOTIFY)
			chan_sess_shutdown(&ss->cs);
		if (flags & (END_ALERT | END_CLOSE_NOTIFY))
			(void)chan_sess_flush(&ss->cs, sess_send, ss, CHAN_FRAME_MAX);
		if (flags & END_RESET)
			send_reset(s, c, ss->sid);
	}
	maps_del(s, ss);
	dirty_del(s, ss);
	if (ss->prev)
		ss->prev->next = ss->next;
	else
		s->all = ss->next;
	if (ss->next)
		ss->next->prev = ss->prev;
	s->nsess--;
	if (c) {
		c->sess = NULL;
		c->to_sess = 0;
		if (c->hdr_sent) /* the rest of a frame will never come: close */
			conn_close(s, c);
		else if (!c->closed)
			conn_set_pending(s, c, 1);
	}
	chan_sess_fini(&ss->cs);
	free(ss);
	s->freed++;
	s->last_free_ms = chan_now_ms();
}

static srv_sess *by_handle(const chan_server *s, uint64_t peer)
{
	uint8_t k[8];
	st_u64le(k, peer);
	return hmap_get(&s->by_handle, k, sizeof k);
}

/* ---- connections and admission ---- */

static void pend_unlink(chan_server *s, srv_conn *c)
{
	int l = c->level;
	if (c->pprev)
		c->pprev->pnext = c->pnext;
	else
		s->pend_head[l] = c->pnext;
	if (c->pnext)
		c->pnext->pprev = c->pprev;
	else
		s->pend_tail[l] = c->pprev;
	c->pprev = c->pnext = NULL;
}

static void pend_append(chan_server *s, srv_conn *c)
{
	int l = c->level;
	c->pprev = s->pend_tail[l];
	c->pnext = NULL;
	if (s->pend_tail[l])
		s->pend_tail[l]->pnext = c;
	else
		s->pend_head[l] = c;
	s->pend_tail[l] = c;
}

/* An unauthenticated connection got further: it moves to the end of the
 * next level's list (its deadline stays). */
static void conn_advance(chan_server *s, srv_conn *c, int level)
{
	if (!c->pending || c->level >= level)
		return;
	pend_unlink(s, c);
	c->level = level;
	pend_append(s, c);
}

/* Unauthenticated connections are in a list, oldest first, counted per
 * address, and closed at their deadline: a slow drip cannot extend it
 * (it runs from when the connection became unauthenticated, not from its
 * last byte or HELLO). */
static void conn_set_pending(chan_server *s, srv_conn *c, int pending)
{
	if (c->pending == pending)
		return;
	if (pending) {
		srv_addr *a = hmap_get(&s->by_addr, c->addr, strlen(c->addr));
		if (!a) {
			a = calloc(1, sizeof *a);
			if (a) {
				snprintf(a->addr, sizeof a->addr, "%s", c->addr);
				hmap_put(&s->by_addr, a);
			}
		}
		if (a)
			a->n++;
		c->pa = a;
		c->pending = 1;
		c->level = c->z.ready ? LVL_ZMTP : LVL_TCP;
		c->deadline = chan_now_ms() + (uint64_t)s->o.handshake_timeout_ms;
		pend_append(s, c);
		s->npend++;
	} else {
		pend_unlink(s, c);
		if (c->pa && --c->pa->n == 0) {
			hmap_del(&s->by_addr, c->pa);
			free(c->pa);
		}
		c->pa = NULL;
		c->pending = 0;
		s->npend--;
	}
}

/* Takes a connection out of every list; it is freed with the zombies. */
static void conn_unlink(chan_server *s, srv_conn *c)
{
	c->closed = 1;
	conn_set_pending(s, c, 0);
	hmap_del(&s->by_rid, c);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	c->next = s->zombies;
	s->zombies = c;
	s->freed++;
	s->last_free_ms = chan_now_ms();
}

/* Closes a connection: its session ends, the TCP connection is closed
 * (detached: a RESET tells the node), the memory is freed at the end of
 * the current call (callbacks may still be running on it). */
static void conn_close(chan_server *s, srv_conn *c)
{
	if (c->closed)
		return;
	c->closed = 1;
	if (c->sess) {
		srv_sess *ss = c->sess;
		if (s->detached && !c->hdr_sent)
			send_reset(s, c, ss->sid);
		end(s, ss, FL_ENET, "connection closed", 0);
	}
	if (!s->detached)
		(void)stream_send(s, c, NULL, 0); /* a zero-length message closes it */
	conn_unlink(s, c);
}

static void free_zombies(chan_server *s)
{
	while (s->zombies) {
		srv_conn *c = s->zombies;
		s->zombies = c->next;
		free(c);
	}
}

/* The least advanced, then oldest, unauthenticated connection (of one
 * address when a is given). */
static srv_conn *oldest_pending(chan_server *s, const srv_addr *a)
{
	for (int l = 0; l < LVL_N; l++)
		for (srv_conn *c = s->pend_head[l]; c; c = c->pnext)
			if (!a || c->pa == a)
				return c;
	return NULL;
}

/* Makes room for one more unauthenticated connection from addr: the least
 * advanced, then oldest, unauthenticated connection from the same address
 * when that address is at its cap, else of all when the total is. A node
 * with a valid certificate therefore gets its handshake time: only
 * connections that are newer and at least as far along can push it out. */
static int admit(chan_server *s, const char *addr)
{
	srv_addr *a = hmap_get(&s->by_addr, addr, strlen(addr));
	srv_conn *victim = NULL;
	const char *cap = NULL;
	if (a && a->n >= (unsigned)s->o.max_pending_per_addr) {
		victim = oldest_pending(s, a);
		cap = "max_pending_per_addr";
	} else if (s->npend >= (uint64_t)s->o.max_pending ||
	           (s->nconns >= (uint64_t)s->o.max_sessions && s->npend)) {
		victim = oldest_pending(s, NULL);
		cap = s->npend >= (uint64_t)s->o.max_pending ? "max_pending" : "max_sessions";
	}
	if (victim) {
		s->st.evicted++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD,
			     "%s reached: closed the oldest unauthenticated connection (from %s, "
			     "%llu ms old) for a new one from %s",
			     cap, victim->addr,
			     (unsigned long long)(chan_now_ms() +
			                          (uint64_t)s->o.handshake_timeout_ms -
			                          victim->deadline),
			     addr);
		conn_close(s, victim);
	}
	if (s->nconns >= (uint64_t)s->o.max_sessions) {
		s->st.conn_refused++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD,
			     "refused a connection from %s: max_sessions (%d) authenticated "
			     "connections",
			     addr, s->o.max_sessions);
		return FL_EBUSY;
	}
	return 0;
}

static srv_conn *conn_new(chan_server *s, const uint8_t *rid, size_t rid_len, const char *addr)
{
	if (rid_len == 0 || rid_len > 255)
		return NULL;
	const char *why = NULL;
	if (s->zap && !chan_zap_check(s->zap, addr, &why)) {
		s->st.zap_denied++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD, "refused a connection from %s: %s (ip_allow/ip_deny)", addr,
			     why);
		return NULL;
	}
	if (admit(s, addr))
		return NULL;
	srv_conn *c = calloc(1, sizeof *c + rid_len);
	if (!c) {
		LOGE(CHAN_MOD, "out of memory for a connection from %s", addr);
		return NULL;
	}
	c->srv = s;
	c->rid_len = (uint8_t)rid_len;
	memcpy(c->rid, rid, rid_len);
	snprintf(c->addr, sizeof c->addr, "%s", addr);
	chan_zmtp_init(&c->z);
	c->last_in = c->last_out = chan_now_ms();
	hmap_put(&s->by_rid, c);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->nconns++;
	conn_set_pending(s, c, 1);
	return c;
}

/* ---- session callbacks ---- */

static int on_up(void *arg)
{
	srv_sess *ss = arg;
	chan_server *s = ss->srv;
	if (tlsctx_peer_info(ss->cs.ssl, &ss->peer) != 0 ||
	    !tlsctx_valid_name(ss->peer.cn, strlen(ss->peer.cn))) {
		snprintf(ss->cs.why, sizeof ss->cs.why, "node certificate has no usable CN");
		return FL_EAUTH;
	}
	ss->up = 1;
	s->st.hs_ok++;
	if (ss->conn)
		conn_set_pending(s, ss->conn, 0);
	srv_sess *old = hmap_get(&s->by_cn, ss->peer.cn, strlen(ss->peer.cn));
	if (old) {
		s->st.replaced++;
		LOGI(CHAN_MOD, "node %s: new session from %s replaces the one from %s (last wins)",
		     ss->peer.cn, ss->addr, old->addr);
		end(s, old, FL_ECLOSED, "replaced by a newer session of the same node",
		    END_CLOSE_NOTIFY | END_RESET);
	}
	hmap_put(&s->by_handle, ss);
	hmap_put(&s->by_cn, ss);
	ss->in_maps = 1;
	LOGI(CHAN_MOD, "node %s authenticated from %s (peer %llu)", ss->peer.cn, ss->addr,
	     (unsigned long long)ss->handle);
	chan_event ev;
	memset(&ev, 0, sizeof ev);
	ev.type = CHAN_EV_PEER_UP;
	ev.peer = ss->handle;
	snprintf(ev.cn, sizeof ev.cn, "%s", ss->peer.cn);
	snprintf(ev.addr, sizeof ev.addr, "%s", ss->addr);
	return chan_evq_push(&s->evq, &ev);
}

static int on_msg(void *arg, uint8_t *data, size_t len)
{
	srv_sess *ss = arg;
	chan_event ev;
	memset(&ev, 0, sizeof ev);
	ev.type = CHAN_EV_MESSAGE;
	ev.peer = ss->handle;
	snprintf(ev.cn, sizeof ev.cn, "%s", ss->peer.cn);
	snprintf(ev.addr, sizeof ev.addr, "%s", ss->addr);
	ev.data = data;
	ev.len = len;
	return chan_evq_push(&ss->srv->evq, &ev);
}

/* A session failed while reading: say why, tell the node, free it. */
static void sess_failed(chan_server *s, srv_sess *ss, int rc)
{
	const char *why = ss->cs.why[0] ? ss->cs.why : fl_strerror(rc);
	if (!ss->up) {
		s->st.hs_failed++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD, "refused node at %s (session %016llx): %s", ss->addr,
			     (unsigned long long)ss->sid, why);
		end(s, ss, rc, why, END_ALERT | END_RESET);
		return;
	}
	if (rc == FL_ECLOSED) {
		LOGI(CHAN_MOD, "node %s (%s) closed its session", ss->peer.cn, ss->addr);
		end(s, ss, rc, why, END_RESET);
		return;
	}
	if (rc == FL_ETOOBIG)
		s->st.oversize++;
	else
		s->st.tls_errors++;
	LOGW(CHAN_MOD, "node %s (%s): %s; session ended", ss->peer.cn, ss->addr, why);
	end(s, ss, rc, why, END_ALERT | END_RESET);
}

static void feed(chan_server *s, srv_sess *ss, const uint8_t *p, size_t n)
{
	chan_sess_cb cb = {ss, on_up, on_msg};
	int rc = chan_sess_input(&ss->cs, p, n, &cb);
	if (rc) {
		sess_failed(s, ss, rc);
		return;
	}
	dirty_add(s, ss);
}

static srv_sess *new_session(chan_server *s, srv_conn *c, uint64_t sid)
{
	srv_sess *ss = calloc(1, sizeof *ss);
	if (!ss) {
		LOGE(CHAN_MOD, "out of memory for a session from %s", c->addr);
		return NULL;
	}
	int rc = chan_sess_init(&ss->cs, s->tls, NULL, s->o.max_msg, s->o.out_queue_max, &s->ctr);
	if (rc) {
		LOGE(CHAN_MOD, "cannot start a session: %s", fl_strerror(rc));
		free(ss);
		return NULL;
	}
	ss->srv = s;
	ss->conn = c;
	ss->sid = sid;
	ss->handle = ++s->next_handle;
	st_u64le(ss->hkey, ss->handle);
	snprintf(ss->addr, sizeof ss->addr, "%s", c->addr);
	ss->hs_deadline = chan_now_ms() + (uint64_t)s->o.handshake_timeout_ms;
	ss->next = s->all;
	if (s->all)
		s->all->prev = ss;
	s->all = ss;
	s->nsess++;
	c->sess = ss;
	return ss;
}

/* ---- receiving: channel messages over ZMTP frames ----
 * A message is [header frame: kind u8, session id u64][body frame]. Both
 * frames' sizes and flags are known before their bytes arrive: the header
 * (9 bytes) is the only thing kept; a body is streamed into its TLS session
 * or dropped as it arrives. Malformed messages are counted, logged (rate
 * limited) and dropped; frames over CHAN_FRAME_MAX or messages of more than
 * CHAN_MSG_FRAMES_MAX frames close the connection. */

static void msg_bad(srv_conn *c, const char *why)
{
	if (!c->mbad) {
		c->mbad = 1;
		snprintf(c->mwhy, sizeof c->mwhy, "%s", why);
	}
}

static int c_on_frame(void *arg, unsigned idx, uint64_t size, int more)
{
	srv_conn *c = arg;
	chan_server *s = c->srv;
	char why[96];
	if (c->closed)
		return FL_ECLOSED;
	if (idx == 0) {
		c->nfr = 0;
		c->mbad = 0;
		c->mwhy[0] = 0;
		c->hdr_have = 0;
		c->hdr_size = size;
		c->to_sess = 0;
	}
	c->nfr++;
	c->cur_idx = (int)idx;
	c->cur_more = more;
	if (c->nfr > CHAN_MSG_FRAMES_MAX) {
		snprintf(c->z.why, sizeof c->z.why, "a message of more than %d frames",
		         CHAN_MSG_FRAMES_MAX);
		return FL_EPROTO;
	}
	if (idx != 1) {
		if (idx > 1)
			c->to_sess = 0;
		return 0;
	}
	if (size > CHAN_FRAME_MAX) {
		snprintf(c->z.why, sizeof c->z.why, "a frame of %llu bytes (max %u)",
		         (unsigned long long)size, CHAN_FRAME_MAX);
		return FL_EPROTO;
	}
	if (more || c->mbad)
		return 0; /* a message of three frames or more, or a bad header */
	srv_sess *ss = c->sess;
	switch (c->kind) {
	case CHAN_KIND_HELLO:
		if (ss && ss->sid == c->sid) {
			s->st.stale_drops++; /* repeated HELLO */
			return 0;
		}
		if (size == 0) {
			snprintf(why, sizeof why, "an empty HELLO");
			msg_bad(c, why);
			return 0;
		}
		if (ss) /* the node gave up that session and starts another */
			end(s, ss, FL_ECLOSED, "node started a new session", 0);
		if (c->closed || !new_session(s, c, c->sid))
			return 0;
		conn_advance(s, c, LVL_TLS);
		c->to_sess = 1;
		return 0;
	case CHAN_KIND_TLS:
		if (!ss || ss->sid != c->sid || ss->closing) {
			s->st.stale_drops++; /* silently: an old session's records */
			return 0;
		}
		c->to_sess = 1;
		return 0;
	case CHAN_KIND_RESET:
		return 0; /* acted on at the end of the message */
	}
	return 0;
}

static int c_on_data(void *arg, const uint8_t *p, size_t n)
{
	srv_conn *c = arg;
	if (c->closed)
		return FL_ECLOSED;
	c->srv->st.wire_in += n;
	if (c->cur_idx == 0) {
		if (c->hdr_size == CHAN_HDR_LEN) {
			memcpy(c->hdr + c->hdr_have, p, n);
			c->hdr_have += n;
		}
		return 0;
	}
	if (c->cur_idx == 1 && c->to_sess) {
		srv_sess *ss = c->sess;
		if (!ss || ss->sid != c->sid || ss->closing) {
			c->to_sess = 0; /* the session ended on an earlier piece */
			return 0;
		}
		feed(c->srv, ss, p, n);
	}
	return 0;
}

static void msg_end(chan_server *s, srv_conn *c)
{
	if (c->nfr != 2 || c->mbad) {
		s->st.bad_frames++;
		if (chan_ratelog_allow(&s->rl)) {
			if (c->nfr != 2)
				LOGW(
				    CHAN_MOD,
				    "dropped a message of %u frames from %s (want 2: header, body)",
				    c->nfr, c->addr);
			else
				LOGW(CHAN_MOD, "dropped a malformed message from %s: %s", c->addr,
				     c->mwhy);
		}
		return;
	}
	if (c->kind == CHAN_KIND_RESET) {
		srv_sess *ss = c->sess;
		if (!ss || ss->sid != c->sid) {
			s->st.stale_drops++;
			return;
		}
		s->st.resets_rcvd++;
		if (ss->up && !ss->closing)
			LOGI(CHAN_MOD, "node %s (%s) reset its session", ss->peer.cn, ss->addr);
		end(s, ss, FL_ECLOSED, "node reset the session", 0);
	}
}

static int c_on_frame_end(void *arg)
{
	srv_conn *c = arg;
	char why[96];
	if (c->closed)
		return FL_ECLOSED;
	if (c->cur_idx == 0) {
		if (c->hdr_size != CHAN_HDR_LEN) {
			snprintf(why, sizeof why, "header frame of %llu bytes (want %d)",
			         (unsigned long long)c->hdr_size, CHAN_HDR_LEN);
			msg_bad(c, why);
		} else if (chan_hdr_get(c->hdr, CHAN_HDR_LEN, &c->kind, &c->sid, why, sizeof why)) {
			msg_bad(c, why);
		}
	}
	if (!c->cur_more)
		msg_end(c->srv, c);
	return 0;
}

static int c_on_ready(void *arg)
{
	srv_conn *c = arg;
	if (c->closed)
		return FL_ECLOSED;
	conn_advance(c->srv, c, LVL_ZMTP);
	return 0;
}

static int c_on_ping(void *arg, const uint8_t *ctx, size_t n)
{
	srv_conn *c = arg;
	uint8_t pong[32];
	if (c->closed)
		return FL_ECLOSED;
	size_t k = chan_zmtp_command(pong, sizeof pong, "PONG", ctx, n);
	/* Not between the two frames of a message; a lost PONG is harmless. */
	if (k && !c->hdr_sent && !c->srv->detached)
		(void)stream_send(c->srv, c, pong, k);
	return 0;
}

static const chan_zmtp_cb conn_cb = {NULL,       c_on_ready, c_on_ping,
                                     c_on_frame, c_on_data,  c_on_frame_end};

/* Raw bytes from a connection. */
static void conn_input(chan_server *s, srv_conn *c, const uint8_t *p, size_t n)
{
	chan_zmtp_cb cb = conn_cb;
	cb.arg = c;
	c->last_in = chan_now_ms();
	int rc = chan_zmtp_input(&c->z, p, n, &cb);
	if (rc && !c->closed) {
		s->st.zmtp_errors++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD, "closed the connection from %s%s%s: %s", c->addr,
			     c->sess && c->sess->up ? " of node " : "",
			     c->sess && c->sess->up ? c->sess->peer.cn : "", c->z.why);
		conn_close(s, c);
	}
}

/* Detached (tests, fuzzing): one ZeroMQ message as a DEALER would send
 * it, through the same frame handlers; the connection is made on first
 * sight of a routing id. */
int chan_server_feed(chan_server *s, const void *rid, size_t rid_len, const chan_frame *frames,
                     int nframes)
{
	if (!s || !s->detached || (!rid && rid_len) || nframes < 0 || (nframes && !frames))
		return FL_EINVAL;
	srv_conn *c = rid_len ? hmap_get(&s->by_rid, rid, rid_len) : NULL;
	if (!c && !(c = conn_new(s, rid, rid_len, "detached"))) {
		/* refused: a real connection would be closed; here the node
		 * hears a RESET for the session it tried */
		enum chan_kind k;
		uint64_t sid;
		char why[96];
		uint8_t hdr[CHAN_HDR_LEN];
		if (nframes == 2 && rid_len &&
		    chan_hdr_get(frames[0].p, frames[0].n, &k, &sid, why, sizeof why) == 0) {
			chan_hdr_put(hdr, CHAN_KIND_RESET, sid);
			if (s->out(s->out_arg, rid, rid_len, hdr, sizeof hdr, NULL, 0) == 0)
				s->st.resets_sent++;
		}
		return 0;
	}
	c->z.ready = 1;
	conn_advance(s, c, LVL_ZMTP);
	c->last_in = chan_now_ms();
	int rc = 0;
	if (nframes == 0)
		c->nfr = 0;
	for (int i = 0; i < nframes && !rc; i++) {
		int more = i + 1 < nframes;
		rc = c_on_frame(c, (unsigned)i, frames[i].n, more);
		if (!rc && frames[i].n)
			rc = c_on_data(c, frames[i].p, frames[i].n);
		if (!rc)
			rc = c_on_frame_end(c);
	}
	if (rc && !c->closed) {
		s->st.zmtp_errors++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD, "closed the connection from %s: %s", c->addr, c->z.why);
		conn_close(s, c);
	}
	free_zombies(s);
	return 0;
}

/* A connection opened: greet it (greeting and READY), or refuse it. */
static void conn_open(chan_server *s, const uint8_t *rid, size_t rid_len, const char *addr)
{
	uint8_t hello[128];
	srv_conn *c = conn_new(s, rid, rid_len, addr);
	if (!c) {
		/* close it at once */
		if (zmq_send(s->sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) == 0)
			zmq_send(s->sock, "", 0, ZMQ_DONTWAIT);
		return;
	}
	size_t k = chan_zmtp_hello(hello, sizeof hello);
	if (stream_send(s, c, hello, k) != 0)
		conn_unlink(s, c); /* not a live connection (a late notice of one gone) */
}

/* The peer closed the connection (or it broke). */
static void conn_gone(chan_server *s, srv_conn *c)
{
	if (c->sess) {
		srv_sess *ss = c->sess;
		if (ss->up && !ss->closing) {
			s->st.unreachable++;
			LOGI(CHAN_MOD, "node %s (%s): connection closed", ss->peer.cn, ss->addr);
		}
		end(s, ss, FL_ENET, "connection to the node is gone", 0);
	}
	conn_unlink(s, c); /* nothing to send: it is gone */
}

/* Consecutive chunks of one connection (ZeroMQ delivers a bulk sender's
 * bytes 8 KiB at a time) are decoded together, up to this many bytes: one
 * copy instead of a ZMTP, TLS and BIO round per chunk. */
#define CHAN_RBATCH (256u * 1024u)

static void batch_flush(chan_server *s, srv_conn **bc, size_t *bn)
{
	if (*bc && *bn && !(*bc)->closed)
		conn_input(s, *bc, s->rbuf, *bn);
	*bc = NULL;
	*bn = 0;
}

static void recv_all(chan_server *s)
{
	size_t bytes = 0, bn = 0;
	srv_conn *bc = NULL;
	if (!s->rbuf && !(s->rbuf = malloc(CHAN_RBATCH)))
		return;
	for (int budget = 0; budget < CHAN_RECV_BUDGET && bytes < CHAN_RECV_BYTES; budget++) {
		zmq_msg_t part[2];
		int n = chan_zmq_recv_parts(s->sock, part, 2);
		if (n == 0) {
			for (int i = 0; i < 2; i++)
				zmq_msg_close(&part[i]);
			break;
		}
		const uint8_t *rid = zmq_msg_data(&part[0]);
		size_t rid_len = zmq_msg_size(&part[0]);
		size_t len = n > 1 ? zmq_msg_size(&part[1]) : 0;
		srv_conn *c = rid_len ? hmap_get(&s->by_rid, rid, rid_len) : NULL;
		if (n != 2) {
			/* a STREAM socket always delivers [routing id, data] */
		} else if (len == 0) {
			batch_flush(s, &bc, &bn);
			if (c) {
				conn_gone(s, c);
			} else {
				char addr[64] = "?";
				const char *a = zmq_msg_gets(&part[1], "Peer-Address");
				if (a)
					snprintf(addr, sizeof addr, "%s", a);
				conn_open(s, rid, rid_len, addr);
			}
		} else if (c) {
			bytes += len;
			if (bc != c || bn + len > CHAN_RBATCH)
				batch_flush(s, &bc, &bn);
			if (len >= CHAN_RBATCH) {
				conn_input(s, c, zmq_msg_data(&part[1]), len);
			} else {
				memcpy(s->rbuf + bn, zmq_msg_data(&part[1]), len);
				bn += len;
				bc = c;
			}
		}
		for (int i = 0; i < 2; i++)
			zmq_msg_close(&part[i]);
	}
	batch_flush(s, &bc, &bn);
	free_zombies(s);
}

/* Hands queued output to ZeroMQ for every session that has some. */
static void flush_all(chan_server *s, int pollout)
{
	int progress = 0, blocked = 0;
	uint64_t now = chan_now_ms();
	srv_sess *ss = s->dirty;
	while (ss) {
		srv_sess *next = ss->dnext;
		if (ss->blocked && !pollout && now < s->out_retry_at) {
			blocked++;
			ss = next;
			continue;
		}
		size_t before = chan_sess_queued(&ss->cs);
		int rc = chan_sess_flush(&ss->cs, sess_send, ss, CHAN_SEND_BUDGET);
		if (chan_sess_queued(&ss->cs) != before || rc == 0)
			progress = 1;
		if (rc == 0) {
			if (ss->closing) {
				/* Everything queued went out: now the close. */
				end(s, ss, FL_ECLOSED, "closed", END_CLOSE_NOTIFY | END_RESET);
			} else {
				dirty_del(s, ss);
				if (ss->up && chan_sess_idle(&ss->cs))
					chan_sess_shrink(&ss->cs);
			}
		} else if (rc == FL_EAGAIN) {
			ss->blocked = 1;
			blocked++;
		} else if (rc == FL_EBUSY) {
			ss->blocked = 0;
		} else if (rc == FL_ECLOSED) {
			s->st.unreachable++;
			LOGI(CHAN_MOD,
			     "node %s (%s) is unreachable (connection gone); session freed",
			     ss->up ? ss->peer.cn : "?", ss->addr);
			end(s, ss, FL_ENET, "connection to the node is gone", 0);
		} else {
			sess_failed(s, ss, rc);
		}
		ss = next;
	}
	if (blocked && !progress)
		s->out_retry_at = now + 2;
	else
		s->out_retry_at = 0;
	free_zombies(s);
}

static void sweep(chan_server *s)
{
	uint64_t now = chan_now_ms();
	time_t wall = (time_t)(clk_wall_ms() / 1000);
	char why[120];
	/* Connections: unauthenticated past their deadline, silent links. */
	srv_conn *c;
	for (int l = 0; l < LVL_N; l++) {
		for (c = s->pend_head[l]; c;) {
			srv_conn *next = c->pnext;
			if (now < c->deadline) { /* (a level's list is by arrival, not deadline) */
				c = next;
				continue;
			}
			s->st.hs_timeout++;
			if (chan_ratelog_allow(&s->rl))
				LOGW(CHAN_MOD,
				     "handshake from %s not finished within %d ms; dropped",
				     c->addr, s->o.handshake_timeout_ms);
			if (c->sess && !c->sess->up) {
				srv_sess *ss = c->sess;
				if (!c->hdr_sent)
					send_reset(s, c, ss->sid);
				end(s, ss, FL_ETIMEDOUT, "handshake timed out", 0);
			}
			conn_close(s, c);
			c = next;
		}
	}
	if (!s->detached && s->o.zmtp_heartbeat_ivl_ms > 0) {
		for (c = s->conns; c; c = c->next) {
			if (c->closed)
				continue;
			if (s->o.zmtp_heartbeat_timeout_ms > 0 &&
			    now - c->last_in >= (uint64_t)s->o.zmtp_heartbeat_timeout_ms) {
				s->st.link_timeouts++;
				if (chan_ratelog_allow(&s->rl))
					LOGW(CHAN_MOD,
					     "connection from %s%s%s silent for %d ms; closed",
					     c->addr, c->sess && c->sess->up ? " (node " : "",
					     c->sess && c->sess->up ? c->sess->peer.cn : "",
					     s->o.zmtp_heartbeat_timeout_ms);
				conn_close(s, c);
			} else if (now - c->last_out >= (uint64_t)s->o.zmtp_heartbeat_ivl_ms &&
			           !c->hdr_sent && c->z.ready) {
				uint8_t ping[16];
				uint8_t ttl[2] = {
				    (uint8_t)((s->o.zmtp_heartbeat_timeout_ms / 100) >> 8),
				    (uint8_t)(s->o.zmtp_heartbeat_timeout_ms / 100)};
				size_t k = chan_zmtp_command(ping, sizeof ping, "PING", ttl, 2);
				(void)stream_send(s, c, ping, k);
			}
		}
	}
	srv_sess *ss = s->all;
	while (ss) {
		srv_sess *next = ss->next;
		if (ss->closing) {
			if (now >= ss->close_deadline)
				end(s, ss, FL_ETIMEDOUT, "close timed out", END_RESET);
		} else if (!ss->up) {
			if (now >= ss->hs_deadline) {
				s->st.hs_timeout++;
				if (chan_ratelog_allow(&s->rl))
					LOGW(CHAN_MOD,
					     "handshake from %s not finished within %d ms; dropped",
					     ss->addr, s->o.handshake_timeout_ms);
				end(s, ss, FL_ETIMEDOUT, "handshake timed out", END_RESET);
			}
		} else if (now - ss->cs.last_in_ms >= (uint64_t)s->o.idle_timeout_ms) {
			s->st.idle_expired++;
			snprintf(why, sizeof why, "no traffic from the node for %d ms",
			         s->o.idle_timeout_ms);
			LOGW(CHAN_MOD, "node %s (%s): %s; session expired", ss->peer.cn, ss->addr,
			     why);
			end(s, ss, FL_ETIMEDOUT, why, END_CLOSE_NOTIFY | END_RESET);
		} else if (ss->peer.not_after && wall > ss->peer.not_after) {
			LOGW(CHAN_MOD, "node %s (%s): certificate expired during the session",
			     ss->peer.cn, ss->addr);
			end(s, ss, FL_EAUTH, "node certificate expired",
			    END_CLOSE_NOTIFY | END_RESET);
		} else {
			if (now - ss->cs.last_out_ms >= (uint64_t)s->o.heartbeat_ivl_ms &&
			    !ss->cs.oq_head && !ss->cs.pend) {
				/* Keepalive; also finds nodes whose connection is gone
				 * (EHOSTUNREACH) */
				if (chan_sess_queue_keepalive(&ss->cs) == 0)
					dirty_add(s, ss);
				ss->cs.last_out_ms = now;
			}
			if (!ss->in_dirty && chan_sess_idle(&ss->cs))
				chan_sess_shrink(&ss->cs);
		}
		ss = next;
	}
	free_zombies(s);
	/* Give memory back after a burst of teardowns (a flood of sessions):
	 * glibc keeps freed heap otherwise. Once the burst has been quiet for
	 * a second. */
	if (s->freed >= CHAN_TRIM_AFTER && now - s->last_free_ms >= 1000) {
		s->freed = 0;
		chan_heap_trim();
	}
}

/* ---- API ---- */

void chan_server_free(chan_server *s)
{
	if (!s)
		return;
	int n = 0;
	while (s->all) {
		srv_sess *ss = s->all;
		if (ss->up && !ss->closing)
			n++;
		/* Flush what fits, then close_notify. */
		(void)chan_sess_flush(&ss->cs, sess_send, ss, SIZE_MAX);
		ss->closing = 1; /* no events any more */
		end(s, ss, FL_ECLOSED, "coordinator shutting down",
		    ss->up ? END_CLOSE_NOTIFY | END_RESET : END_RESET);
	}
	if (n)
		LOGI(CHAN_MOD, "closed %d session(s)", n);
	/* No close messages: ZMQ_LINGER lets what was queued (close_notify,
	 * RESET, a final Bye) go out after zmq_close. */
	while (s->conns)
		conn_unlink(s, s->conns);
	free_zombies(s);
	if (s->sock)
		zmq_close(s->sock);
	chan_zap_free(s->zap);
	if (s->own_ctx && s->ctx)
		zmq_ctx_term(s->ctx);
	chan_evq_fini(&s->evq);
	hmap_fini(&s->by_rid);
	hmap_fini(&s->by_handle);
	hmap_fini(&s->by_cn);
	hmap_fini(&s->by_addr);
	free(s->rbuf);
	tlsctx_unref(s->tls);
	free(s->s_endpoint);
	free(s->s_cert);
	free(s->s_key);
	free(s->s_ca);
	free(s->s_crl);
	free(s->s_allow);
	free(s);
}

static int send_common(chan_server *s, uint64_t peer, const void *data, size_t len, chan_shared *sh)
{
	if (!s || (len && !data && !sh))
		return FL_EINVAL;
	srv_sess *ss = by_handle(s, peer);
	if (!ss || !ss->up || ss->closing)
		return FL_ENOENT;
	int rc = chan_sess_queue(&ss->cs, data, len, sh);
	if (rc)
		return rc;
	dirty_add(s, ss);
	return 0;
}

int chan_server_send(chan_server *s, uint64_t peer, const void *data, size_t len)
{
	return send_common(s, peer, data, len, NULL);
}

int chan_server_send_shared(chan_server *s, uint64_t peer, chan_shared *m)
{
	if (!m)
		return FL_EINVAL;
	return send_common(s, peer, m->data, m->len, m);
}

long long chan_server_queued(const chan_server *s, uint64_t peer)
{
	srv_sess *ss = s ? by_handle(s, peer) : NULL;
	return ss ? (long long)chan_sess_queued(&ss->cs) : -1;
}

int chan_server_close_peer(chan_server *s, uint64_t peer, const char *why)
{
	srv_sess *ss = s ? by_handle(s, peer) : NULL;
	if (!ss || !ss->up || ss->closing)
		return FL_ENOENT;
	why = why && *why ? why : "closed by the coordinator";
	LOGI(CHAN_MOD, "closing the session of node %s (%s): %s", ss->peer.cn, ss->addr, why);
	emit_gone(s, ss, FL_ECLOSED, why);
	ss->closing = 1;
	ss->close_deadline = chan_now_ms() + (uint64_t)(s->o.linger_ms > 0 ? s->o.linger_ms : 1);
	maps_del(s, ss);
	dirty_add(s, ss);
	return 0;
}

int chan_server_reload(chan_server *s)
{
	tlsctx *nt = NULL;
	char why[200];
	if (!s)
		return FL_EINVAL;
	int rc = tlsctx_new(&s->topts, &nt);
	if (rc) {
		LOGE(CHAN_MOD, "reload failed (%s): keeping the previous certificates and lists",
		     fl_strerror(rc));
		return rc;
	}
	tlsctx_unref(s->tls);
	s->tls = nt;
	int dropped = 0;
	srv_sess *ss = s->all;
	while (ss) {
		srv_sess *next = ss->next;
		if (ss->up && !ss->closing && tlsctx_recheck(nt, &ss->peer, why, sizeof why)) {
			LOGW(CHAN_MOD, "node %s (%s): %s; session ended", ss->peer.cn, ss->addr,
			     why);
			end(s, ss, FL_EAUTH, why, END_CLOSE_NOTIFY | END_RESET);
			dropped++;
		}
		ss = next;
	}
	LOGI(CHAN_MOD,
	     "reloaded certificates (CRL entries %d, allow-list names %d); %d session(s) "
	     "dropped",
	     tlsctx_crl_entries(nt), tlsctx_allow_count(nt), dropped);
	return 0;
}

static int want_pollout(const chan_server *s)
{
	if (s->out_retry_at && chan_now_ms() < s->out_retry_at)
		return 0;
	for (srv_sess *ss = s->dirty; ss; ss = ss->dnext)
		if (ss->blocked)
			return 1;
	return 0;
}

int chan_server_pollitems(chan_server *s, zmq_pollitem_t *items, int max)
{
	int n = 0;
	if (s->detached)
		return 0;
	if (n < max) {
		items[n].socket = s->sock;
		items[n].fd = 0;
		items[n].events = (short)(ZMQ_POLLIN | (want_pollout(s) ? ZMQ_POLLOUT : 0));
		items[n].revents = 0;
		n++;
	}
	return n;
}

int chan_server_timeout(const chan_server *s)
{
	uint64_t now = chan_now_ms();
	if (s->evq.n)
		return 0;
	uint64_t t = s->next_sweep > now ? s->next_sweep - now : 0;
	for (srv_sess *ss = s->dirty; ss; ss = ss->dnext) {
		if (!ss->blocked)
			return 0;
		uint64_t r = s->out_retry_at > now ? s->out_retry_at - now : 0;
		if (r < t)
			t = r;
	}
	return (int)t;
}

int chan_server_process(chan_server *s, const zmq_pollitem_t *items, int n)
{
	int pollout = 0;
	if (!s)
		return FL_EINVAL;
	for (int i = 0; i < n && !s->detached; i++) {
		if (items[i].socket == s->sock) {
			if (items[i].revents & ZMQ_POLLIN)
				recv_all(s);
			if (items[i].revents & ZMQ_POLLOUT)
				pollout = 1;
		}
	}
	if (s->dirty)
		flush_all(s, pollout);
	uint64_t now = chan_now_ms();
	if (now >= s->next_sweep) {
		sweep(s);
		chan_frame_pool_trim(0);
		s->next_sweep = now + (uint64_t)s->sweep_ms;
		if (s->dirty)
			flush_all(s, 0);
	}
	return 0;
}

int chan_server_poll(chan_server *s, int timeout_ms)
{
	zmq_pollitem_t it[CHAN_POLLITEMS_MAX];
	if (!s)
		return FL_EINVAL;
	int n = chan_server_pollitems(s, it, CHAN_POLLITEMS_MAX);
	int t = chan_server_timeout(s);
	if (timeout_ms >= 0 && timeout_ms < t)
		t = timeout_ms;
	int rc = chan_zmq_poll(it, n, t);
	if (rc)
		return rc;
	if (n == 0 && t > 0)
		clk_sleep_ms((uint64_t)t);
	return chan_server_process(s, it, n);
}

int chan_server_next(chan_server *s, chan_event *ev)
{
	if (!s || !ev)
		return FL_EINVAL;
	return chan_evq_pop(&s->evq, ev);
}

void chan_server_get_stats(const chan_server *s, chan_server_stats *st)
{
	*st = s->st;
	st->sessions = s->nsess;
	st->pending = s->npend;
	st->conns = s->nconns;
	st->msgs_in = s->ctr.msgs_in;
	st->msgs_out = s->ctr.msgs_out;
	st->bytes_in = s->ctr.bytes_in;
	st->bytes_out = s->ctr.bytes_out;
	st->max_inbound_alloc = s->ctr.max_alloc;
}
