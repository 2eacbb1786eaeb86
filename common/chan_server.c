/* chan_server — coordinator end of the channel (chan.h): one ROUTER, one
 * TLS session per node keyed by ZeroMQ routing id, never blocking on a
 * node. */
#include "chan_int.h"

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct srv_sess srv_sess;
struct srv_sess {
	chan_sess cs;
	chan_server *srv;
	uint64_t handle;
	uint64_t sid;
	void *link_rid, *link_h, *link_cn; /* hash map links */
	srv_sess *prev, *next;             /* every session */
	srv_sess *dprev, *dnext;           /* sessions with output to hand to ZeroMQ */
	int in_dirty;
	int blocked; /* ZeroMQ said EAGAIN for its pending frame */
	int up;
	int closing; /* PEER_GONE emitted; sending what is queued, then close */
	int in_maps; /* in by_handle and by_cn (only while up and not closing) */
	uint64_t hs_deadline, close_deadline;
	tlsctx_peer peer;
	char addr[64];
	uint8_t hkey[8];
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
	chan_zap *zap;
	char endpoint[256];
	int detached;
	chan_out_fn out;
	void *out_arg;
	chan_hmap by_rid, by_handle, by_cn;
	srv_sess *all;
	srv_sess *dirty;
	uint64_t next_handle;
	uint64_t nsess, npending;
	chan_evq evq;
	chan_server_stats st;
	chan_counters ctr;
	chan_ratelog rl;
	uint64_t next_sweep;
	uint64_t out_retry_at; /* no POLLOUT wanted before this (no progress) */
	int sweep_ms;
};

/* end() flags */
#define END_ALERT        1 /* send what OpenSSL wrote (an alert) */
#define END_CLOSE_NOTIFY 2 /* write and send close_notify */
#define END_RESET        4 /* send RESET */

static void key_rid(const void *it, const uint8_t **k, size_t *kn)
{
	const srv_sess *s = it;
	*k = s->rid;
	*kn = s->rid_len;
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
	    o->max_sessions < 1 || o->max_pending < 1 || o->handshake_timeout_ms < 1 ||
	    o->idle_timeout_ms < 1 || o->heartbeat_ivl_ms < 1 || o->zmtp_heartbeat_ivl_ms < 0 ||
	    o->zmtp_heartbeat_timeout_ms < 0 || o->linger_ms < 0 || o->bind_retry_ms < 0) {
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
	if ((rc = chan_hmap_init(&s->by_rid, offsetof(srv_sess, link_rid), key_rid)) ||
	    (rc = chan_hmap_init(&s->by_handle, offsetof(srv_sess, link_h), key_handle)) ||
	    (rc = chan_hmap_init(&s->by_cn, offsetof(srv_sess, link_cn), key_cn)))
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
	s->sock = zmq_socket(s->ctx, ZMQ_ROUTER);
	if (!s->sock) {
		LOGE(CHAN_MOD, "zmq_socket(ROUTER): %s", zmq_strerror(errno));
		return FL_ENET;
	}
	int64_t maxmsg = CHAN_FRAME_MAX;
	if (zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0) {
		LOGE(CHAN_MOD, "ZMQ_MAXMSGSIZE: %s", zmq_strerror(errno));
		return FL_ENET;
	}
	if ((rc = chan_zmq_setint(s->sock, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY")) ||
	    (rc = chan_zmq_setint(s->sock, ZMQ_LINGER, o->linger_ms, "ZMQ_LINGER")) ||
	    (rc = chan_zmq_setint(s->sock, ZMQ_SNDHWM, CHAN_SNDHWM, "ZMQ_SNDHWM")) ||
	    (rc = chan_zmq_setint(s->sock, ZMQ_RCVHWM, CHAN_RCVHWM, "ZMQ_RCVHWM")))
		return rc;
	if (o->zmtp_heartbeat_ivl_ms > 0 &&
	    ((rc = chan_zmq_setint(s->sock, ZMQ_HEARTBEAT_IVL, o->zmtp_heartbeat_ivl_ms,
	                           "ZMQ_HEARTBEAT_IVL")) ||
	     (rc = chan_zmq_setint(s->sock, ZMQ_HEARTBEAT_TIMEOUT, o->zmtp_heartbeat_timeout_ms,
	                           "ZMQ_HEARTBEAT_TIMEOUT")) ||
	     (rc = chan_zmq_setint(s->sock, ZMQ_HEARTBEAT_TTL, o->zmtp_heartbeat_timeout_ms,
	                           "ZMQ_HEARTBEAT_TTL"))))
		return rc;
	if (s->zap && zmq_setsockopt(s->sock, ZMQ_ZAP_DOMAIN, "fedlora", 7) != 0) {
		LOGE(CHAN_MOD, "ZMQ_ZAP_DOMAIN: %s", zmq_strerror(errno));
		return FL_ENET;
	}
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
		/* The handler must be bound before the ROUTER accepts anyone. */
		if ((rc = chan_zap_new(s->ctx, o->ip_allow, o->ip_deny, &s->zap)))
			goto out;
	}
	if ((rc = setup_socket(s)))
		goto out;
	LOGI(CHAN_MOD, "coordinator listening on %s (CRL %s, allow-list %s%s)", s->endpoint,
	     o->crl_path ? o->crl_path : "none", o->allow_path ? o->allow_path : "none",
	     s->zap ? ", ZAP IP filter on" : "");
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

/* ---- sending frames ---- */

static int send_frame(chan_server *s, const uint8_t *rid, size_t rid_len, enum chan_kind kind,
                      uint64_t sid, uint8_t *body, size_t len, size_t cap)
{
	uint8_t hdr[CHAN_HDR_LEN];
	chan_hdr_put(hdr, kind, sid);
	if (s->detached) {
		int rc = s->out(s->out_arg, rid, rid_len, hdr, sizeof hdr, body, len);
		if (rc == 0) {
			s->st.wire_out += sizeof hdr + len;
			chan_frame_put(body, cap);
		}
		return rc == 0 || rc == FL_EAGAIN || rc == FL_ECLOSED ? rc : FL_ECLOSED;
	}
	if (zmq_send(s->sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
		int e = errno;
		if (e == EAGAIN)
			return FL_EAGAIN;
		if (e != EHOSTUNREACH)
			LOGW(CHAN_MOD, "zmq_send: %s", zmq_strerror(e));
		return FL_ECLOSED;
	}
	/* Once the routing frame is accepted the rest of the message is. */
	zmq_msg_t m;
	if (zmq_send(s->sock, hdr, sizeof hdr, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
		LOGW(CHAN_MOD, "zmq_send(header): %s", zmq_strerror(errno));
	if (len == 0 ||
	    zmq_msg_init_data(&m, body, len, chan_zmq_free_body, (void *)(uintptr_t)cap) != 0) {
		if (len)
			LOGW(CHAN_MOD, "zmq_msg_init_data: %s", zmq_strerror(errno));
		zmq_msg_init(&m);
		chan_frame_put(body, cap);
		len = 0;
	}
	if (zmq_msg_send(&m, s->sock, ZMQ_DONTWAIT) < 0) {
		LOGW(CHAN_MOD, "zmq_msg_send(body): %s", zmq_strerror(errno));
		zmq_msg_close(&m);
	}
	s->st.wire_out += sizeof hdr + len;
	return 0;
}

static int sess_send(void *arg, enum chan_kind kind, uint8_t *body, size_t len, size_t cap)
{
	srv_sess *ss = arg;
	return send_frame(ss->srv, ss->rid, ss->rid_len, kind, ss->sid, body, len, cap);
}

static void send_reset(chan_server *s, const uint8_t *rid, size_t rid_len, uint64_t sid)
{
	if (send_frame(s, rid, rid_len, CHAN_KIND_RESET, sid, NULL, 0, 0) == 0)
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
	chan_hmap_del(&s->by_handle, ss);
	if (chan_hmap_get(&s->by_cn, ss->peer.cn, strlen(ss->peer.cn)) == ss)
		chan_hmap_del(&s->by_cn, ss);
	ss->in_maps = 0;
}

static void emit_gone(chan_server *s, srv_sess *ss, int reason, const char *why)
{
	chan_event ev;
	chan_ev_gone(&ev, ss->handle, ss->peer.cn, ss->addr, reason, why, 1);
	chan_evq_push(&s->evq, &ev);
}

/* Ends a session: event (if the application knew it), what to send, free. */
static void end(chan_server *s, srv_sess *ss, int reason, const char *why, int flags)
{
	if (ss->up && !ss->closing)
		emit_gone(s, ss, reason, why);
	if (flags & END_CLOSE_NOTIFY)
		chan_sess_shutdown(&ss->cs);
	if (flags & (END_ALERT | END_CLOSE_NOTIFY))
		(void)chan_sess_flush(&ss->cs, sess_send, ss, CHAN_FRAME_MAX);
	if (flags & END_RESET)
		send_reset(s, ss->rid, ss->rid_len, ss->sid);
	maps_del(s, ss);
	dirty_del(s, ss);
	chan_hmap_del(&s->by_rid, ss);
	if (ss->prev)
		ss->prev->next = ss->next;
	else
		s->all = ss->next;
	if (ss->next)
		ss->next->prev = ss->prev;
	s->nsess--;
	if (!ss->up)
		s->npending--;
	chan_sess_fini(&ss->cs);
	free(ss);
}

static srv_sess *by_handle(const chan_server *s, uint64_t peer)
{
	uint8_t k[8];
	st_u64le(k, peer);
	return chan_hmap_get(&s->by_handle, k, sizeof k);
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
	s->npending--;
	s->st.hs_ok++;
	srv_sess *old = chan_hmap_get(&s->by_cn, ss->peer.cn, strlen(ss->peer.cn));
	if (old) {
		s->st.replaced++;
		LOGI(CHAN_MOD, "node %s: new session from %s replaces the one from %s (last wins)",
		     ss->peer.cn, ss->addr, old->addr);
		end(s, old, FL_ECLOSED, "replaced by a newer session of the same node",
		    END_CLOSE_NOTIFY | END_RESET);
	}
	chan_hmap_put(&s->by_handle, ss);
	chan_hmap_put(&s->by_cn, ss);
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

static void new_session(chan_server *s, const uint8_t *rid, size_t rid_len, uint64_t sid,
                        const char *addr, const uint8_t *body, size_t n)
{
	const char *full = NULL;
	if (s->nsess >= (uint64_t)s->o.max_sessions)
		full = "max_sessions";
	else if (s->npending >= (uint64_t)s->o.max_pending)
		full = "max_pending";
	if (full) {
		s->st.hs_failed++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD, "refused HELLO from %s: %s reached", addr, full);
		send_reset(s, rid, rid_len, sid);
		return;
	}
	srv_sess *ss = calloc(1, sizeof *ss + rid_len);
	if (!ss) {
		LOGE(CHAN_MOD, "out of memory for a session from %s", addr);
		return;
	}
	int rc = chan_sess_init(&ss->cs, s->tls, NULL, s->o.max_msg, s->o.out_queue_max, &s->ctr);
	if (rc) {
		LOGE(CHAN_MOD, "cannot start a session: %s", fl_strerror(rc));
		free(ss);
		return;
	}
	ss->srv = s;
	ss->sid = sid;
	ss->handle = ++s->next_handle;
	st_u64le(ss->hkey, ss->handle);
	ss->rid_len = (uint8_t)rid_len;
	memcpy(ss->rid, rid, rid_len);
	snprintf(ss->addr, sizeof ss->addr, "%s", addr);
	ss->hs_deadline = chan_now_ms() + (uint64_t)s->o.handshake_timeout_ms;
	chan_hmap_put(&s->by_rid, ss);
	ss->next = s->all;
	if (s->all)
		s->all->prev = ss;
	s->all = ss;
	s->nsess++;
	s->npending++;
	feed(s, ss, body, n);
}

/* One ZeroMQ message: routing id, header frame, body frame. */
static void dispatch(chan_server *s, const uint8_t *rid, size_t rid_len, int nframes,
                     const chan_frame *fr, const char *addr)
{
	char why[96];
	enum chan_kind kind;
	uint64_t sid;
	if (nframes != 2) {
		s->st.bad_frames++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD,
			     "dropped a message of %d frames from %s (want 2: header, body)",
			     nframes, addr);
		return;
	}
	if (rid_len == 0 || rid_len > 255 ||
	    chan_hdr_get(fr[0].p, fr[0].n, &kind, &sid, why, sizeof why)) {
		if (rid_len == 0 || rid_len > 255)
			snprintf(why, sizeof why, "routing id of %zu bytes", rid_len);
		s->st.bad_frames++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD, "dropped a malformed message from %s: %s", addr, why);
		return;
	}
	if (fr[1].n > CHAN_FRAME_MAX) {
		s->st.bad_frames++;
		if (chan_ratelog_allow(&s->rl))
			LOGW(CHAN_MOD, "dropped a %zu-byte frame from %s (max %u)", fr[1].n, addr,
			     CHAN_FRAME_MAX);
		return;
	}
	srv_sess *ss = chan_hmap_get(&s->by_rid, rid, rid_len);
	switch (kind) {
	case CHAN_KIND_HELLO:
		if (ss && ss->sid == sid) {
			s->st.stale_drops++; /* repeated HELLO */
			return;
		}
		if (fr[1].n == 0) {
			s->st.bad_frames++;
			if (chan_ratelog_allow(&s->rl))
				LOGW(CHAN_MOD, "dropped an empty HELLO from %s", addr);
			return;
		}
		if (ss) /* the node gave up that session and starts another */
			end(s, ss, FL_ECLOSED, "node started a new session", 0);
		new_session(s, rid, rid_len, sid, addr, fr[1].p, fr[1].n);
		return;
	case CHAN_KIND_TLS:
		if (!ss || ss->sid != sid || ss->closing) {
			s->st.stale_drops++; /* silently: an old session's records */
			return;
		}
		feed(s, ss, fr[1].p, fr[1].n);
		return;
	case CHAN_KIND_RESET:
		if (!ss || ss->sid != sid) {
			s->st.stale_drops++;
			return;
		}
		s->st.resets_rcvd++;
		if (ss->up && !ss->closing)
			LOGI(CHAN_MOD, "node %s (%s) reset its session", ss->peer.cn, ss->addr);
		end(s, ss, FL_ECLOSED, "node reset the session", 0);
		return;
	}
}

int chan_server_feed(chan_server *s, const void *rid, size_t rid_len, const chan_frame *frames,
                     int nframes)
{
	if (!s || !s->detached || (!rid && rid_len) || nframes < 0 || (nframes && !frames))
		return FL_EINVAL;
	for (int i = 0; i < nframes; i++)
		s->st.wire_in += frames[i].n;
	dispatch(s, rid, rid_len, nframes, frames, "detached");
	return 0;
}

static void recv_all(chan_server *s)
{
	size_t bytes = 0;
	for (int budget = 0; budget < CHAN_RECV_BUDGET && bytes < CHAN_RECV_BYTES; budget++) {
		zmq_msg_t part[3];
		int n = chan_zmq_recv_parts(s->sock, part, 3);
		if (n == 0) {
			for (int i = 0; i < 3; i++)
				zmq_msg_close(&part[i]);
			return;
		}
		char addr[64] = "?";
		if (n > 1) {
			const char *a = zmq_msg_gets(&part[1], "Peer-Address");
			if (a)
				snprintf(addr, sizeof addr, "%s", a);
		}
		chan_frame fr[2];
		for (int i = 1; i < 3; i++) {
			fr[i - 1].p = zmq_msg_data(&part[i]);
			fr[i - 1].n = zmq_msg_size(&part[i]);
		}
		size_t in = 0;
		for (int i = 1; i < n && i < 3; i++)
			in += zmq_msg_size(&part[i]);
		s->st.wire_in += in;
		bytes += in;
		dispatch(s, zmq_msg_data(&part[0]), zmq_msg_size(&part[0]), n - 1, fr, addr);
		for (int i = 0; i < 3; i++)
			zmq_msg_close(&part[i]);
	}
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
}

static void sweep(chan_server *s)
{
	uint64_t now = chan_now_ms();
	time_t wall = (time_t)(clk_wall_ms() / 1000);
	char why[120];
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
	if (s->sock)
		zmq_close(s->sock);
	chan_zap_free(s->zap);
	if (s->own_ctx && s->ctx)
		zmq_ctx_term(s->ctx);
	chan_evq_fini(&s->evq);
	chan_hmap_fini(&s->by_rid);
	chan_hmap_fini(&s->by_handle);
	chan_hmap_fini(&s->by_cn);
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
	if (s->zap && n < max) {
		items[n].socket = chan_zap_socket(s->zap);
		items[n].fd = 0;
		items[n].events = ZMQ_POLLIN;
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
		} else if (s->zap && items[i].socket == chan_zap_socket(s->zap) &&
		           (items[i].revents & ZMQ_POLLIN)) {
			chan_zap_process(s->zap, &s->st.zap_denied);
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
	st->pending = s->npending;
	st->msgs_in = s->ctr.msgs_in;
	st->msgs_out = s->ctr.msgs_out;
	st->bytes_in = s->ctr.bytes_in;
	st->bytes_out = s->ctr.bytes_out;
	st->max_inbound_alloc = s->ctr.max_alloc;
}
