/* chan_client — node end of the channel (chan.h): one DEALER, one TLS
 * session at a time, re-handshaking by itself after any failure. */
#include "chan_int.h"

#include "clock.h"
#include "err.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct chan_client {
	chan_client_opts o;
	char *s_endpoint, *s_cert, *s_key, *s_ca, *s_crl;
	char server_name[256];
	tlsctx_opts topts;
	tlsctx *tls;
	X509 *cert; /* in-memory identity (opts.cert/key) or NULL */
	EVP_PKEY *key;
	void *ctx;
	int own_ctx;
	void *sock, *mon;
	int detached;
	chan_out_fn out;
	void *out_arg;
	int link_up;
	chan_sess *cs; /* current session or NULL */
	uint64_t sid;
	uint64_t sess_no;
	int up, ready;
	int blocked; /* pending frame refused with EAGAIN */
	char cn[65];
	uint64_t hs_deadline, next_attempt, backoff, retry_at;
	/* while no ZMTP link: since when, when the last warning was, and when
	 * ZeroMQ scheduled its next TCP connect (CONNECT_RETRIED) */
	uint64_t wait_since, wait_logged, next_connect;
	chan_evq evq;
	chan_client_stats st;
	chan_counters ctr;
	uint64_t next_sweep;
	int sweep_ms;
};

void chan_client_opts_default(chan_client_opts *o)
{
	memset(o, 0, sizeof *o);
	o->max_msg = CHAN_DEFAULT_MAX_MSG;
	o->out_queue_max = CHAN_DEFAULT_MAX_MSG + (1u << 20);
	o->handshake_timeout_ms = 10000;
	o->idle_timeout_ms = 30000;
	o->heartbeat_ivl_ms = 5000;
	o->zmtp_heartbeat_ivl_ms = 2000;
	o->zmtp_heartbeat_timeout_ms = 6000;
	o->linger_ms = 2000;
	o->reconnect_ivl_ms = 100;
	o->reconnect_ivl_max_ms = 5000;
}

static char *dup_opt(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* Host part of tcp://HOST:PORT (brackets of an IPv6 literal removed). */
static int host_of(const char *ep, char *out, size_t n)
{
	const char *p = strstr(ep, "://");
	if (!p)
		return FL_EINVAL;
	p += 3;
	const char *e;
	if (*p == '[') {
		p++;
		e = strchr(p, ']');
	} else {
		e = strrchr(p, ':');
	}
	if (!e || e == p || (size_t)(e - p) >= n)
		return FL_EINVAL;
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = '\0';
	if (strcmp(out, "*") == 0)
		return FL_EINVAL;
	return 0;
}

void chan_client_free(chan_client *c);

static int common_new(const chan_client_opts *o, chan_client **out)
{
	int rc;
	if (o->max_msg == 0 || o->max_msg > CHAN_MAX_SEND_LEN || o->out_queue_max < 64 ||
	    o->handshake_timeout_ms < 1 || o->idle_timeout_ms < 1 || o->heartbeat_ivl_ms < 1 ||
	    o->zmtp_heartbeat_ivl_ms < 0 || o->zmtp_heartbeat_timeout_ms < 0 || o->linger_ms < 0 ||
	    o->reconnect_ivl_ms < 1 || o->reconnect_ivl_max_ms < o->reconnect_ivl_ms) {
		LOGE(CHAN_MOD, "client options out of range");
		return FL_EINVAL;
	}
	chan_client *c = calloc(1, sizeof *c);
	if (!c)
		return FL_ENOMEM;
	c->o = *o;
	c->s_endpoint = dup_opt(o->endpoint);
	c->s_cert = dup_opt(o->cert_path);
	c->s_key = dup_opt(o->key_path);
	c->s_ca = dup_opt(o->ca_path);
	c->s_crl = dup_opt(o->crl_path);
	if ((o->endpoint && !c->s_endpoint) || (o->cert_path && !c->s_cert) ||
	    (o->key_path && !c->s_key) || (o->ca_path && !c->s_ca) || (o->crl_path && !c->s_crl)) {
		rc = FL_ENOMEM;
		goto out;
	}
	c->o.endpoint = c->s_endpoint;
	c->o.cert_path = c->s_cert;
	c->o.key_path = c->s_key;
	c->o.ca_path = c->s_ca;
	c->o.crl_path = c->s_crl;
	c->o.server_name = NULL;
	if (o->server_name && *o->server_name) {
		if (strlen(o->server_name) >= sizeof c->server_name) {
			rc = FL_EINVAL;
			goto out;
		}
		snprintf(c->server_name, sizeof c->server_name, "%s", o->server_name);
	} else if (!o->endpoint ||
	           host_of(o->endpoint, c->server_name, sizeof c->server_name) != 0) {
		LOGE(CHAN_MOD,
		     "cannot tell the coordinator's name from endpoint '%s': set server_name",
		     o->endpoint ? o->endpoint : "");
		rc = FL_EINVAL;
		goto out;
	}
	c->o.tls = NULL;
	c->o.cert = NULL;
	c->o.key = NULL;
	if (!o->cert != !o->key || (o->cert && (o->cert_path || o->key_path))) {
		LOGE(CHAN_MOD, "client identity: give a certificate and a key, either as files "
		               "or in memory");
		rc = FL_EINVAL;
		goto out;
	}
	if (o->cert) {
		if (X509_check_private_key(o->cert, o->key) != 1) {
			LOGE(CHAN_MOD, "client identity: the key does not match the certificate");
			rc = FL_ECONFIG;
			goto out;
		}
		X509_up_ref(o->cert);
		c->cert = o->cert;
		EVP_PKEY_up_ref(o->key);
		c->key = o->key;
	}
	if (o->tls) {
		c->tls = tlsctx_ref(o->tls);
	} else {
		c->topts.role = TLSCTX_CLIENT;
		c->topts.cert_path = c->s_cert;
		c->topts.key_path = c->s_key;
		c->topts.ca_path = c->s_ca;
		c->topts.crl_path = c->s_crl;
		if ((rc = tlsctx_new(&c->topts, &c->tls)))
			goto out;
	}
	c->backoff = (uint64_t)o->reconnect_ivl_ms;
	int m = o->handshake_timeout_ms;
	if (o->idle_timeout_ms < m)
		m = o->idle_timeout_ms;
	if (o->heartbeat_ivl_ms < m)
		m = o->heartbeat_ivl_ms;
	c->sweep_ms = m / 4 < 10 ? 10 : m / 4 > 250 ? 250 : m / 4;
	c->next_sweep = chan_now_ms();
	*out = c;
	return 0;
out:
	chan_client_free(c);
	return rc;
}

int chan_client_new(const chan_client_opts *o, chan_client **out)
{
	static unsigned counter;
	chan_client *c = NULL;
	int rc;
	char mon_ep[96];
	if (!o || !out || !o->endpoint)
		return FL_EINVAL;
	if ((rc = common_new(o, &c)))
		return rc;
	if (o->zmq_ctx) {
		c->ctx = o->zmq_ctx;
	} else {
		c->ctx = zmq_ctx_new();
		c->own_ctx = 1;
		if (!c->ctx) {
			LOGE(CHAN_MOD, "zmq_ctx_new: %s", zmq_strerror(errno));
			rc = FL_ENET;
			goto out;
		}
	}
	c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
	if (!c->sock) {
		LOGE(CHAN_MOD, "zmq_socket(DEALER): %s", zmq_strerror(errno));
		rc = FL_ENET;
		goto out;
	}
	int64_t maxmsg = CHAN_FRAME_MAX;
	if (zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0) {
		rc = FL_ENET;
		goto out;
	}
	/* ZMQ_IMMEDIATE before connect: nothing is queued for a connection
	 * that is not up, so records of an old session never reach a new
	 * coordinator. */
	if ((rc = chan_zmq_setint(c->sock, ZMQ_IMMEDIATE, 1, "ZMQ_IMMEDIATE")) ||
	    (rc = chan_zmq_setint(c->sock, ZMQ_LINGER, o->linger_ms, "ZMQ_LINGER")) ||
	    (rc = chan_zmq_setint(c->sock, ZMQ_SNDHWM, CHAN_SNDHWM, "ZMQ_SNDHWM")) ||
	    (rc = chan_zmq_setint(c->sock, ZMQ_RCVHWM,
	                          o->rcvhwm > 0   ? o->rcvhwm
	                          : o->rcvhwm < 0 ? 0
	                                          : CHAN_RCVHWM,
	                          "ZMQ_RCVHWM")) ||
	    (rc = chan_zmq_setint(c->sock, ZMQ_RECONNECT_IVL, o->reconnect_ivl_ms,
	                          "ZMQ_RECONNECT_IVL")) ||
	    (rc = chan_zmq_setint(c->sock, ZMQ_RECONNECT_IVL_MAX, o->reconnect_ivl_max_ms,
	                          "ZMQ_RECONNECT_IVL_MAX")))
		goto out;
	if (o->zmtp_heartbeat_ivl_ms > 0 &&
	    ((rc = chan_zmq_setint(c->sock, ZMQ_HEARTBEAT_IVL, o->zmtp_heartbeat_ivl_ms,
	                           "ZMQ_HEARTBEAT_IVL")) ||
	     (rc = chan_zmq_setint(c->sock, ZMQ_HEARTBEAT_TIMEOUT, o->zmtp_heartbeat_timeout_ms,
	                           "ZMQ_HEARTBEAT_TIMEOUT")) ||
	     (rc = chan_zmq_setint(c->sock, ZMQ_HEARTBEAT_TTL, o->zmtp_heartbeat_timeout_ms,
	                           "ZMQ_HEARTBEAT_TTL"))))
		goto out;
	/* The monitor is connected before the DEALER so no event is missed. */
	snprintf(mon_ep, sizeof mon_ep, "inproc://fedlora-chan-mon-%ld-%u-%p", (long)getpid(),
	         __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED), (void *)c);
	if (zmq_socket_monitor(c->sock, mon_ep,
	                       ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
	                           ZMQ_EVENT_CONNECT_RETRIED) != 0) {
		LOGE(CHAN_MOD, "zmq_socket_monitor: %s", zmq_strerror(errno));
		rc = FL_ENET;
		goto out;
	}
	c->mon = zmq_socket(c->ctx, ZMQ_PAIR);
	if (!c->mon || zmq_connect(c->mon, mon_ep) != 0) {
		LOGE(CHAN_MOD, "monitor socket: %s", zmq_strerror(errno));
		rc = FL_ENET;
		goto out;
	}
	if (zmq_connect(c->sock, o->endpoint) != 0) {
		LOGE(CHAN_MOD, "cannot connect to %s: %s", o->endpoint, zmq_strerror(errno));
		rc = FL_ENET;
		goto out;
	}
	LOGI(CHAN_MOD, "node connecting to %s (coordinator name %s)", o->endpoint, c->server_name);
	c->wait_since = chan_now_ms();
	*out = c;
	return 0;
out:
	chan_client_free(c);
	return rc;
}

int chan_client_new_detached(const chan_client_opts *o, chan_out_fn outfn, void *arg,
                             chan_client **cli)
{
	chan_client *c = NULL;
	int rc;
	chan_client_opts t;
	if (!o || !outfn || !cli)
		return FL_EINVAL;
	t = *o;
	if (!t.server_name && !t.endpoint)
		t.server_name = "localhost";
	if ((rc = common_new(&t, &c)))
		return rc;
	c->detached = 1;
	c->out = outfn;
	c->out_arg = arg;
	*cli = c;
	return 0;
}

/* ---- frames ---- */

static int send_frame(chan_client *c, enum chan_kind kind, uint64_t sid, uint8_t *body, size_t len,
                      size_t cap)
{
	uint8_t hdr[CHAN_HDR_LEN];
	chan_hdr_put(hdr, kind, sid);
	if (c->detached) {
		int rc = c->out(c->out_arg, NULL, 0, hdr, sizeof hdr, body, len);
		if (rc == 0)
			chan_frame_put(body, cap);
		return rc == 0 || rc == FL_EAGAIN || rc == FL_ECLOSED ? rc : FL_ECLOSED;
	}
	if (zmq_send(c->sock, hdr, sizeof hdr, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
		if (errno == EAGAIN)
			return FL_EAGAIN;
		LOGW(CHAN_MOD, "zmq_send: %s", zmq_strerror(errno));
		return FL_ECLOSED;
	}
	zmq_msg_t m;
	if (len == 0 ||
	    zmq_msg_init_data(&m, body, len, chan_zmq_free_body, (void *)(uintptr_t)cap) != 0) {
		zmq_msg_init(&m);
		chan_frame_put(body, cap);
	}
	if (zmq_msg_send(&m, c->sock, ZMQ_DONTWAIT) < 0) {
		LOGW(CHAN_MOD, "zmq_msg_send(body): %s", zmq_strerror(errno));
		zmq_msg_close(&m);
	}
	return 0;
}

static int sess_send(void *arg, enum chan_kind kind, uint8_t *body, size_t len, size_t cap)
{
	chan_client *c = arg;
	return send_frame(c, kind, c->sid, body, len, cap);
}

/* ---- session life ---- */

static uint64_t jitter(uint64_t ms)
{
	/* 75%..125%: thousands of nodes do not come back in lock-step */
	uint16_t r = 0;
	if (chan_random(&r, sizeof r))
		return ms;
	return ms * 3 / 4 + (ms / 2) * r / 65535u;
}

/* Ends the current session: DOWN event, optionally what OpenSSL wrote
 * (alert, close_notify) and RESET, then schedules the next attempt. */
static void drop(chan_client *c, int reason, const char *why, int flush, int reset)
{
	if (!c->cs)
		return;
	chan_event ev;
	chan_ev_gone(&ev, c->sess_no, c->cn, "", reason, why, c->up);
	ev.type = CHAN_EV_DOWN;
	chan_evq_push(&c->evq, &ev);
	c->st.downs++;
	if (flush)
		(void)chan_sess_flush(c->cs, sess_send, c, CHAN_FRAME_MAX);
	if (reset)
		(void)send_frame(c, CHAN_KIND_RESET, c->sid, NULL, 0, 0);
	chan_sess_fini(c->cs);
	free(c->cs);
	c->cs = NULL;
	if (c->ready)
		c->backoff = (uint64_t)c->o.reconnect_ivl_ms;
	c->up = c->ready = 0;
	c->blocked = 0;
	c->cn[0] = '\0';
	c->next_attempt = chan_now_ms() + jitter(c->backoff);
	c->backoff *= 2;
	if (c->backoff > (uint64_t)c->o.reconnect_ivl_max_ms)
		c->backoff = (uint64_t)c->o.reconnect_ivl_max_ms;
}

static int on_up(void *arg)
{
	chan_client *c = arg;
	tlsctx_peer p;
	if (tlsctx_peer_info(c->cs->ssl, &p) == 0)
		snprintf(c->cn, sizeof c->cn, "%s", p.cn);
	c->up = 1;
	c->st.ups++;
	LOGI(CHAN_MOD, "session %llu: TLS up with coordinator %s; waiting for its Welcome",
	     (unsigned long long)c->sess_no, c->cn);
	chan_event ev;
	memset(&ev, 0, sizeof ev);
	ev.type = CHAN_EV_UP;
	ev.peer = c->sess_no;
	snprintf(ev.cn, sizeof ev.cn, "%s", c->cn);
	return chan_evq_push(&c->evq, &ev);
}

static int on_msg(void *arg, uint8_t *data, size_t len)
{
	chan_client *c = arg;
	chan_event ev;
	memset(&ev, 0, sizeof ev);
	ev.type = CHAN_EV_MESSAGE;
	ev.peer = c->sess_no;
	snprintf(ev.cn, sizeof ev.cn, "%s", c->cn);
	ev.data = data;
	ev.len = len;
	return chan_evq_push(&c->evq, &ev);
}

static void start_attempt(chan_client *c)
{
	uint64_t sid = 0;
	chan_sess *cs = calloc(1, sizeof *cs);
	if (!cs)
		goto retry;
	while (sid == 0)
		if (chan_random(&sid, sizeof sid))
			goto retry;
	/* A fresh random session id for every SSL*: the coordinator tells this
	 * session's records from any stale ones of an earlier session. */
	if (chan_sess_init(cs, c->tls, c->server_name, c->o.max_msg, c->o.out_queue_max, &c->ctr))
		goto retry;
	if (c->cert && (SSL_use_certificate(cs->ssl, c->cert) != 1 ||
	                SSL_use_PrivateKey(cs->ssl, c->key) != 1)) {
		LOGE(CHAN_MOD, "cannot attach the client identity to a TLS session");
		chan_sess_fini(cs);
		goto retry;
	}
	cs->next_kind = CHAN_KIND_HELLO;
	if (chan_sess_start(cs)) {
		LOGE(CHAN_MOD, "cannot start a TLS handshake: %s", cs->why);
		chan_sess_fini(cs);
		goto retry;
	}
	c->cs = cs;
	c->sid = sid;
	c->sess_no++;
	c->st.attempts++;
	c->up = c->ready = 0;
	c->blocked = 0;
	c->hs_deadline = chan_now_ms() + (uint64_t)c->o.handshake_timeout_ms;
	LOGD(CHAN_MOD, "session %llu: handshake started (id %016llx)",
	     (unsigned long long)c->sess_no, (unsigned long long)sid);
	return;
retry:
	free(cs);
	c->next_attempt = chan_now_ms() + jitter(c->backoff);
}

static void sess_failed(chan_client *c, int rc)
{
	const char *why = c->cs->why[0] ? c->cs->why : fl_strerror(rc);
	if (rc == FL_ECLOSED) {
		LOGI(CHAN_MOD, "session %llu: the coordinator closed it",
		     (unsigned long long)c->sess_no);
		drop(c, rc, "the coordinator closed the session", 0, 0);
		return;
	}
	if (!c->up)
		LOGW(CHAN_MOD, "session %llu: handshake with %s failed: %s",
		     (unsigned long long)c->sess_no, c->o.endpoint ? c->o.endpoint : "coordinator",
		     why);
	else
		LOGW(CHAN_MOD, "session %llu with coordinator %s ended: %s",
		     (unsigned long long)c->sess_no, c->cn, why);
	char w[200];
	snprintf(w, sizeof w, "%s", why);
	drop(c, rc, w, 1, 1);
}

static void dispatch(chan_client *c, int nframes, const chan_frame *fr)
{
	char why[96];
	enum chan_kind kind;
	uint64_t sid;
	if (nframes != 2) {
		LOGW(CHAN_MOD, "dropped a message of %d frames from the coordinator", nframes);
		return;
	}
	if (chan_hdr_get(fr[0].p, fr[0].n, &kind, &sid, why, sizeof why)) {
		LOGW(CHAN_MOD, "dropped a malformed message from the coordinator: %s", why);
		return;
	}
	if (!c->cs || sid != c->sid || kind == CHAN_KIND_HELLO) {
		c->st.stale_drops++;
		return;
	}
	if (kind == CHAN_KIND_RESET) {
		c->st.resets_rcvd++;
		if (c->up)
			LOGI(CHAN_MOD, "session %llu: the coordinator reset it",
			     (unsigned long long)c->sess_no);
		else
			LOGW(CHAN_MOD,
			     "session %llu: the coordinator reset the session before it was "
			     "authenticated (it may be refusing connections: max_pending or "
			     "max_sessions reached, or a handshake deadline); retrying",
			     (unsigned long long)c->sess_no);
		drop(c, FL_ECLOSED, "the coordinator reset the session", 0, 0);
		return;
	}
	chan_sess_cb cb = {c, on_up, on_msg};
	int rc = chan_sess_input(c->cs, fr[1].p, fr[1].n, &cb);
	if (rc)
		sess_failed(c, rc);
}

int chan_client_feed(chan_client *c, const chan_frame *frames, int nframes)
{
	if (!c || !c->detached || nframes < 0 || (nframes && !frames))
		return FL_EINVAL;
	dispatch(c, nframes, frames);
	return 0;
}

void chan_client_link_event(chan_client *c, int up)
{
	if (!c)
		return;
	if (up) {
		c->st.connects++;
		c->link_up = 1;
		return;
	}
	c->st.disconnects++;
	c->link_up = 0;
	if (c->cs) {
		LOGW(CHAN_MOD, "session %llu: connection to the coordinator lost%s",
		     (unsigned long long)c->sess_no,
		     c->up ? ""
		           : " before authentication (the coordinator closes unauthenticated "
		             "connections past max_pending or its handshake deadline); retrying");
		drop(c, FL_ENET, "connection to the coordinator lost", 0, 0);
	}
}

static void recv_all(chan_client *c)
{
	size_t bytes = 0;
	for (int budget = 0; budget < CHAN_RECV_BUDGET && bytes < CHAN_RECV_BYTES; budget++) {
		zmq_msg_t part[2];
		int n = chan_zmq_recv_parts(c->sock, part, 2);
		if (n > 0) {
			chan_frame fr[2];
			for (int i = 0; i < 2; i++) {
				fr[i].p = zmq_msg_data(&part[i]);
				fr[i].n = zmq_msg_size(&part[i]);
				bytes += fr[i].n;
			}
			dispatch(c, n, fr);
		}
		zmq_msg_close(&part[0]);
		zmq_msg_close(&part[1]);
		if (n == 0)
			return;
	}
}

/* Nothing answers at the endpoint (ZeroMQ retries the TCP connect by
 * itself): a warning after CHAN_WAIT_WARN_MS without a link, then every
 * CHAN_WAIT_WARN_MS, with the time of the next attempt (from the interval
 * ZeroMQ reported with its last CONNECT_RETRIED). Called by the sweep. */
#define CHAN_WAIT_WARN_MS 10000
static void no_answer(chan_client *c, uint64_t now)
{
	if (c->link_up || now - c->wait_since < CHAN_WAIT_WARN_MS ||
	    (c->wait_logged && now - c->wait_logged < CHAN_WAIT_WARN_MS))
		return;
	c->wait_logged = now;
	char next[48] = "";
	if (c->next_connect > now)
		snprintf(next, sizeof next, "; next attempt in %.1f s",
		         (c->next_connect - now) / 1000.0);
	else
		snprintf(next, sizeof next, "; retrying");
	LOGW(CHAN_MOD,
	     "no answer from the coordinator at %s for %llu s (is it running and reachable?)%s",
	     c->o.endpoint, (unsigned long long)((now - c->wait_since) / 1000), next);
}

static void monitor_events(chan_client *c)
{
	for (int budget = 0; budget < 64; budget++) {
		zmq_msg_t a, b;
		zmq_msg_init(&a);
		if (zmq_msg_recv(&a, c->mon, ZMQ_DONTWAIT) < 0) {
			zmq_msg_close(&a);
			return;
		}
		uint16_t ev = 0;
		uint32_t val = 0;
		if (zmq_msg_size(&a) >= 2)
			memcpy(&ev, zmq_msg_data(&a), 2);
		if (zmq_msg_size(&a) >= 6)
			memcpy(&val, (const uint8_t *)zmq_msg_data(&a) + 2, 4);
		int more = zmq_msg_more(&a);
		zmq_msg_close(&a);
		while (more) {
			zmq_msg_init(&b);
			if (zmq_msg_recv(&b, c->mon, 0) < 0) {
				zmq_msg_close(&b);
				break;
			}
			more = zmq_msg_more(&b);
			zmq_msg_close(&b);
		}
		if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
			if (c->wait_logged)
				LOGI(CHAN_MOD, "the coordinator at %s answers (after %llu s)",
				     c->o.endpoint,
				     (unsigned long long)((chan_now_ms() - c->wait_since) / 1000));
			else
				LOGD(CHAN_MOD, "connected to %s", c->o.endpoint);
			c->wait_logged = 0;
			chan_client_link_event(c, 1);
		} else if (ev == ZMQ_EVENT_DISCONNECTED) {
			LOGD(CHAN_MOD, "disconnected from %s", c->o.endpoint);
			c->wait_since = chan_now_ms();
			c->wait_logged = 0;
			chan_client_link_event(c, 0);
		} else if (ev == ZMQ_EVENT_CONNECT_RETRIED) {
			c->next_connect = chan_now_ms() + val;
		}
	}
}

static void flush(chan_client *c)
{
	if (!c->cs)
		return;
	int rc = chan_sess_flush(c->cs, sess_send, c, CHAN_SEND_BUDGET);
	c->blocked = rc == FL_EAGAIN;
	if (c->blocked)
		c->retry_at = chan_now_ms() + 50;
	if (rc == 0 && chan_sess_idle(c->cs) && c->up)
		chan_sess_shrink(c->cs);
	if (rc == FL_ECLOSED) {
		drop(c, FL_ENET, "connection to the coordinator lost", 0, 0);
	} else if (rc && rc != FL_EAGAIN && rc != FL_EBUSY) {
		sess_failed(c, rc);
	}
}

static void timers(chan_client *c)
{
	uint64_t now = chan_now_ms();
	char why[120];
	no_answer(c, now);
	if (c->cs && !c->ready && now >= c->hs_deadline) {
		snprintf(why, sizeof why,
		         c->up ? "no Welcome from the coordinator within %d ms"
		               : "handshake not finished within %d ms",
		         c->o.handshake_timeout_ms);
		LOGW(CHAN_MOD, "session %llu: %s", (unsigned long long)c->sess_no, why);
		drop(c, FL_ETIMEDOUT, why, 0, 1);
	} else if (c->cs && c->up && now - c->cs->last_in_ms >= (uint64_t)c->o.idle_timeout_ms) {
		snprintf(why, sizeof why, "no traffic from the coordinator for %d ms",
		         c->o.idle_timeout_ms);
		LOGW(CHAN_MOD, "session %llu: %s", (unsigned long long)c->sess_no, why);
		drop(c, FL_ETIMEDOUT, why, 0, 1);
	} else if (c->cs && c->up && now - c->cs->last_out_ms >= (uint64_t)c->o.heartbeat_ivl_ms &&
	           !c->cs->oq_head && !c->cs->pend) {
		chan_sess_queue_keepalive(c->cs);
		c->cs->last_out_ms = now;
	}
	if (c->cs && c->up && !c->cs->oq_head && chan_sess_idle(c->cs))
		chan_sess_shrink(c->cs);
}

/* ---- API ---- */

void chan_client_free(chan_client *c)
{
	if (!c)
		return;
	if (c->cs && c->up && !c->detached) {
		/* Hand what is queued to ZeroMQ within linger, then close_notify;
		 * ZMQ_LINGER lets ZeroMQ deliver it after zmq_close. */
		uint64_t deadline = chan_now_ms() + (uint64_t)c->o.linger_ms;
		for (;;) {
			int rc = chan_sess_flush(c->cs, sess_send, c, SIZE_MAX);
			if (rc != FL_EAGAIN || chan_now_ms() >= deadline)
				break;
			zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLOUT, 0};
			zmq_poll(&it, 1, 20);
		}
		chan_sess_shutdown(c->cs);
		(void)chan_sess_flush(c->cs, sess_send, c, CHAN_FRAME_MAX);
	}
	if (c->cs) {
		chan_sess_fini(c->cs);
		free(c->cs);
	}
	if (c->sock) {
		zmq_socket_monitor(c->sock, NULL, 0);
		zmq_close(c->sock);
	}
	if (c->mon) {
		int zero = 0;
		zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero);
		zmq_close(c->mon);
	}
	if (c->own_ctx && c->ctx)
		zmq_ctx_term(c->ctx);
	chan_evq_fini(&c->evq);
	tlsctx_unref(c->tls);
	X509_free(c->cert);
	EVP_PKEY_free(c->key);
	free(c->s_endpoint);
	free(c->s_cert);
	free(c->s_key);
	free(c->s_ca);
	free(c->s_crl);
	free(c);
}

int chan_client_send(chan_client *c, const void *data, size_t len)
{
	if (!c || (len && !data))
		return FL_EINVAL;
	if (!c->cs || !c->up)
		return FL_ESTATE;
	return chan_sess_queue(c->cs, data, len, NULL);
}

int chan_client_send_shared(chan_client *c, chan_shared *m)
{
	if (!c || !m)
		return FL_EINVAL;
	if (!c->cs || !c->up)
		return FL_ESTATE;
	return chan_sess_queue(c->cs, m->data, m->len, m);
}

int chan_client_set_ready(chan_client *c)
{
	if (!c || !c->cs || !c->up)
		return FL_ESTATE;
	if (!c->ready)
		LOGI(CHAN_MOD, "session %llu with coordinator %s is ready",
		     (unsigned long long)c->sess_no, c->cn);
	c->ready = 1;
	c->backoff = (uint64_t)c->o.reconnect_ivl_ms;
	return 0;
}

int chan_client_is_ready(const chan_client *c)
{
	return c && c->cs && c->ready;
}

int chan_client_reset(chan_client *c, const char *why)
{
	if (!c)
		return FL_EINVAL;
	if (!c->cs)
		return FL_ESTATE;
	why = why && *why ? why : "reset by the application";
	LOGI(CHAN_MOD, "session %llu: %s", (unsigned long long)c->sess_no, why);
	char w[200];
	snprintf(w, sizeof w, "%s", why);
	drop(c, FL_ECLOSED, w, 0, 1);
	return 0;
}

int chan_client_pollitems(chan_client *c, zmq_pollitem_t *items, int max)
{
	int n = 0;
	if (c->detached)
		return 0;
	if (n < max) {
		items[n].socket = c->sock;
		items[n].fd = 0;
		items[n].events = (short)(ZMQ_POLLIN | (c->blocked ? ZMQ_POLLOUT : 0));
		items[n].revents = 0;
		n++;
	}
	if (n < max) {
		items[n].socket = c->mon;
		items[n].fd = 0;
		items[n].events = ZMQ_POLLIN;
		items[n].revents = 0;
		n++;
	}
	return n;
}

int chan_client_timeout(const chan_client *c)
{
	uint64_t now = chan_now_ms();
	if (c->evq.n)
		return 0;
	if (c->cs && !c->blocked && (c->cs->oq_head || c->cs->pend))
		return 0;
	uint64_t t = c->next_sweep > now ? c->next_sweep - now : 0;
	if (c->blocked) {
		uint64_t r = c->retry_at > now ? c->retry_at - now : 0;
		if (r < t)
			t = r;
	}
	if (!c->cs && c->link_up) {
		uint64_t r = c->next_attempt > now ? c->next_attempt - now : 0;
		if (r < t)
			t = r;
	}
	return (int)t;
}

int chan_client_process(chan_client *c, const zmq_pollitem_t *items, int n)
{
	int pollout = 0;
	if (!c)
		return FL_EINVAL;
	for (int i = 0; i < n && !c->detached; i++) {
		if (items[i].socket == c->mon && (items[i].revents & ZMQ_POLLIN))
			monitor_events(c);
		else if (items[i].socket == c->sock) {
			if (items[i].revents & ZMQ_POLLIN)
				recv_all(c);
			if (items[i].revents & ZMQ_POLLOUT)
				pollout = 1;
		}
	}
	uint64_t now = chan_now_ms();
	if (!c->cs && c->link_up && now >= c->next_attempt)
		start_attempt(c);
	if (c->cs && (!c->blocked || pollout || now >= c->retry_at))
		flush(c);
	if (now >= c->next_sweep) {
		timers(c);
		chan_frame_pool_trim(0);
		c->next_sweep = now + (uint64_t)c->sweep_ms;
		if (c->cs && !c->blocked)
			flush(c);
	}
	return 0;
}

int chan_client_poll(chan_client *c, int timeout_ms)
{
	zmq_pollitem_t it[CHAN_POLLITEMS_MAX];
	if (!c)
		return FL_EINVAL;
	int n = chan_client_pollitems(c, it, CHAN_POLLITEMS_MAX);
	int t = chan_client_timeout(c);
	if (timeout_ms >= 0 && timeout_ms < t)
		t = timeout_ms;
	int rc = chan_zmq_poll(it, n, t);
	if (rc)
		return rc;
	return chan_client_process(c, it, n);
}

int chan_client_next(chan_client *c, chan_event *ev)
{
	if (!c || !ev)
		return FL_EINVAL;
	return chan_evq_pop(&c->evq, ev);
}

void chan_client_get_stats(const chan_client *c, chan_client_stats *st)
{
	*st = c->st;
	st->msgs_in = c->ctr.msgs_in;
	st->msgs_out = c->ctr.msgs_out;
	st->bytes_in = c->ctr.bytes_in;
	st->bytes_out = c->ctr.bytes_out;
}

chan_sess *chan_client_test_sess(chan_client *c)
{
	return c ? c->cs : NULL;
}
