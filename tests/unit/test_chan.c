/* chan: the channel's rules, run on detached channels (no sockets) wired
 * together in memory with a test clock — timeouts, keepalive, last-wins,
 * stale session ids, RESET, back-pressure, unreachable peers, limits,
 * close after flush, shared messages, BIO shrinking, the ZAP matcher. */
#include "chantest.h"

#include "buf.h"
#include "chan_int.h"

#include <openssl/bio.h>

static char *g_root;
static uint64_t g_now = 1000000;

static uint64_t fake_now(void)
{
	return g_now;
}

/* ---- in-memory wire ---- */

typedef struct dfr {
	int from; /* client index (to server) */
	uint8_t hdr[CHAN_HDR_LEN];
	size_t hn;
	uint8_t *body;
	size_t bn;
} dfr;

typedef struct dq {
	dfr *v;
	int n, cap;
} dq;

#define NC 4
typedef struct wire {
	chan_server *srv;
	chan_client *cli[NC];
	dq to_srv, to_cli[NC];
	int block[NC];     /* server -> client i: EAGAIN */
	int gone[NC];      /* server -> client i: unreachable */
	int drop_up[NC];   /* client i -> server frames are lost */
	int drop_down[NC]; /* server -> client i frames are lost */
	ct_evs sev, cev[NC];
	int idx[NC];
	uint64_t hello_sid[64]; /* session ids of the HELLOs sent */
	int nhello;
} wire;

static void dq_push(dq *q, int from, const uint8_t *hdr, size_t hn, const uint8_t *body, size_t bn)
{
	if (q->n == q->cap) {
		q->cap = q->cap ? q->cap * 2 : 64;
		q->v = realloc(q->v, (size_t)q->cap * sizeof *q->v);
		assert_non_null(q->v);
	}
	dfr *f = &q->v[q->n++];
	f->from = from;
	assert_true(hn <= sizeof f->hdr);
	memcpy(f->hdr, hdr, hn);
	f->hn = hn;
	f->body = malloc(bn ? bn : 1);
	assert_non_null(f->body);
	if (bn)
		memcpy(f->body, body, bn);
	f->bn = bn;
}

static void dq_clear(dq *q)
{
	for (int i = 0; i < q->n; i++)
		free(q->v[i].body);
	q->n = 0;
}

static void dq_fini(dq *q)
{
	dq_clear(q);
	free(q->v);
	q->v = NULL;
	q->cap = 0;
}

static int srv_out(void *arg, const uint8_t *rid, size_t rid_len, const uint8_t *hdr, size_t hn,
                   const uint8_t *body, size_t bn)
{
	wire *w = arg;
	assert_int_equal(rid_len, 1);
	int i = rid[0];
	assert_true(i >= 0 && i < NC);
	if (w->gone[i])
		return FL_ECLOSED;
	if (w->block[i])
		return FL_EAGAIN;
	if (!w->drop_down[i])
		dq_push(&w->to_cli[i], -1, hdr, hn, body, bn);
	return 0;
}

static int cli_out(void *arg, const uint8_t *rid, size_t rid_len, const uint8_t *hdr, size_t hn,
                   const uint8_t *body, size_t bn)
{
	int *idx = arg;
	wire *w = (wire *)((char *)(idx - *idx) - offsetof(wire, idx));
	assert_null(rid);
	assert_int_equal(rid_len, 0);
	if (hn == CHAN_HDR_LEN && hdr[0] == CHAN_KIND_HELLO && w->nhello < 64)
		w->hello_sid[w->nhello++] = ld_u64le(hdr + 1);
	if (!w->drop_up[*idx])
		dq_push(&w->to_srv, *idx, hdr, hn, body, bn);
	return 0;
}

/* Moves frames until nothing moves; runs process() (timers, flushes). */
static void pump(wire *w)
{
	for (int round = 0; round < 10000; round++) {
		int moved = 0;
		if (w->srv)
			chan_server_process(w->srv, NULL, 0);
		for (int i = 0; i < NC; i++)
			if (w->cli[i])
				chan_client_process(w->cli[i], NULL, 0);
		dq q = w->to_srv;
		memset(&w->to_srv, 0, sizeof w->to_srv);
		for (int k = 0; k < q.n; k++) {
			uint8_t rid = (uint8_t)q.v[k].from;
			chan_frame fr[2] = {{q.v[k].hdr, q.v[k].hn}, {q.v[k].body, q.v[k].bn}};
			if (w->srv)
				chan_server_feed(w->srv, &rid, 1, fr, 2);
			moved = 1;
		}
		dq_fini(&q);
		for (int i = 0; i < NC; i++) {
			q = w->to_cli[i];
			memset(&w->to_cli[i], 0, sizeof w->to_cli[i]);
			for (int k = 0; k < q.n; k++) {
				chan_frame fr[2] = {{q.v[k].hdr, q.v[k].hn},
				                    {q.v[k].body, q.v[k].bn}};
				if (w->cli[i])
					chan_client_feed(w->cli[i], fr, 2);
				moved = 1;
			}
			dq_fini(&q);
		}
		chan_event ev;
		while (w->srv && chan_server_next(w->srv, &ev) == 0) {
			if (ev.type == CHAN_EV_PEER_UP)
				chan_server_send(w->srv, ev.peer, CT_WELCOME, strlen(CT_WELCOME));
			ct_evs_push(&w->sev, &ev);
		}
		for (int i = 0; i < NC; i++)
			while (w->cli[i] && chan_client_next(w->cli[i], &ev) == 0) {
				if (ev.type == CHAN_EV_MESSAGE && ev.len == strlen(CT_WELCOME) &&
				    memcmp(ev.data, CT_WELCOME, ev.len) == 0)
					chan_client_set_ready(w->cli[i]);
				ct_evs_push(&w->cev[i], &ev);
			}
		if (!moved)
			return;
	}
	fail_msg("pump did not settle");
}

/* Advances the test clock in steps, pumping after each. */
static void advance(wire *w, uint64_t ms)
{
	for (uint64_t t = 0; t < ms; t += 10) {
		g_now += 10;
		pump(w);
	}
}

static void srv_opts(chan_server_opts *o)
{
	ct_server_opts(o, g_root);
	o->endpoint = NULL;
	o->handshake_timeout_ms = 1000;
	o->idle_timeout_ms = 3000;
	o->heartbeat_ivl_ms = 500;
}

static void cli_opts(chan_client_opts *o, const char *id)
{
	ct_client_opts(o, g_root, "pki", id, NULL);
	o->handshake_timeout_ms = 1000;
	o->idle_timeout_ms = 3000;
	o->heartbeat_ivl_ms = 500;
	o->reconnect_ivl_ms = 100;
	o->reconnect_ivl_max_ms = 400;
}

static wire *wire_new(const chan_server_opts *so)
{
	wire *w = calloc(1, sizeof *w);
	assert_non_null(w);
	for (int i = 0; i < NC; i++)
		w->idx[i] = i;
	assert_int_equal(chan_server_new_detached(so, srv_out, w, &w->srv), 0);
	return w;
}

static void wire_add(wire *w, int i, const char *id, int link_up)
{
	chan_client_opts co;
	cli_opts(&co, id);
	assert_int_equal(chan_client_new_detached(&co, cli_out, &w->idx[i], &w->cli[i]), 0);
	if (link_up)
		chan_client_link_event(w->cli[i], 1);
}

static void wire_free(wire *w)
{
	/* Channels first: closing sends frames into the queues. */
	for (int i = 0; i < NC; i++) {
		chan_client_free(w->cli[i]);
		w->cli[i] = NULL;
	}
	chan_server_free(w->srv);
	for (int i = 0; i < NC; i++) {
		dq_fini(&w->to_cli[i]);
		ct_evs_clear(&w->cev[i]);
	}
	dq_fini(&w->to_srv);
	ct_evs_clear(&w->sev);
	free(w);
}

static uint64_t peer_of(wire *w, const char *cn)
{
	int k = -1;
	for (int j = 0; j < w->sev.n; j++)
		if (w->sev.v[j].type == CHAN_EV_PEER_UP && strcmp(w->sev.v[j].cn, cn) == 0)
			k = j;
	assert_true(k >= 0);
	return w->sev.v[k].peer;
}

static int group_setup(void **state)
{
	(void)state;
	g_root = tu_mkdtemp();
	if (!g_root)
		return -1;
	ct_log_to(g_root);
	chan_test_set_clock(fake_now);
	return ct_make_pki(g_root) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	chan_test_set_clock(NULL);
	if (getenv("CT_SHOWLOG"))
		ct_log_dump(0);
	tu_rmtree(g_root);
	free(g_root);
	return 0;
}

/* ---- tests ---- */

static void test_up_and_messages(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 1);
	pump(w);
	assert_true(chan_client_is_ready(w->cli[0]));
	uint64_t p = peer_of(w, "node-01");
	assert_int_equal(chan_client_send(w->cli[0], "abc", 3), 0);
	assert_int_equal(chan_server_send(w->srv, p, "xyz!", 4), 0);
	/* Not UP: FL_ENOENT for an unknown peer, FL_ESTATE for a node without
	 * a session. */
	assert_int_equal(chan_server_send(w->srv, p + 100, "x", 1), FL_ENOENT);
	pump(w);
	int k = ct_evs_find(&w->sev, 0, CHAN_EV_MESSAGE, p, "node-01");
	assert_true(k >= 0);
	assert_int_equal(w->sev.v[k].len, 3);
	assert_memory_equal(w->sev.v[k].data, "abc", 3);
	k = ct_evs_find(&w->cev[0], 0, CHAN_EV_MESSAGE, 0, NULL);
	k = ct_evs_find(&w->cev[0], k + 1, CHAN_EV_MESSAGE, 0, NULL); /* after WELCOME */
	assert_true(k >= 0);
	assert_memory_equal(w->cev[0].v[k].data, "xyz!", 4);
	chan_client_stats cs;
	chan_client_get_stats(w->cli[0], &cs);
	assert_int_equal(cs.attempts, 1);
	assert_int_equal(cs.ups, 1);
	assert_int_equal(cs.msgs_out, 1);
	assert_int_equal(cs.msgs_in, 2);
	wire_free(w);
}

/* One CN, one live session: the newer one wins, the older is closed. */
static void test_last_wins(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-02", 1);
	pump(w);
	uint64_t p1 = peer_of(w, "node-02");
	wire_add(w, 1, "node-02", 1);
	pump(w);
	uint64_t p2 = peer_of(w, "node-02");
	assert_true(p2 != p1);
	int k = ct_evs_find(&w->sev, 0, CHAN_EV_PEER_GONE, p1, "node-02");
	assert_true(k >= 0);
	assert_non_null(strstr(w->sev.v[k].why, "replaced by a newer session"));
	assert_true(chan_client_is_ready(w->cli[1]));
	assert_true(ct_evs_find(&w->cev[0], 0, CHAN_EV_DOWN, 0, NULL) >= 0);
	chan_server_stats st;
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.replaced, 1);
	assert_int_equal(chan_server_send(w->srv, p1, "x", 1), FL_ENOENT);
	/* The first node comes back after its back-off and replaces the
	 * second in turn: still one session per CN. */
	chan_client_free(w->cli[1]);
	w->cli[1] = NULL;
	advance(w, 1000);
	chan_server_get_stats(w->srv, &st);
	assert_true(chan_client_is_ready(w->cli[0]));
	assert_int_equal(st.sessions, 1);
	wire_free(w);
}

/* Handshakes that never finish are dropped by both ends; a fresh session
 * id is drawn for every attempt; records of an old session are ignored. */
static void test_handshake_timeout_and_stale(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 0);
	w->drop_down[0] = 1; /* the coordinator's answers are lost */
	chan_client_link_event(w->cli[0], 1);
	pump(w);
	chan_server_stats st;
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.pending, 1);
	/* Keep the HELLO of this attempt to replay it later. */
	advance(w, 1100);
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.hs_timeout, 1);
	/* no connection is authenticated (the node may have retried by now) */
	assert_int_equal(st.conns, st.pending);
	int k = ct_evs_find(&w->cev[0], 0, CHAN_EV_DOWN, 0, NULL);
	assert_true(k >= 0);
	assert_int_equal(w->cev[0].v[k].reason, FL_ETIMEDOUT);
	assert_int_equal(w->cev[0].v[k].was_up, 0);

	/* Capture the next HELLO: its session id differs from the current one. */
	w->drop_down[0] = 0;
	advance(w, 1500);
	assert_true(chan_client_is_ready(w->cli[0]));
	chan_client_stats cs;
	chan_client_get_stats(w->cli[0], &cs);
	assert_true(cs.attempts >= 2);
	/* Every attempt drew its own random session id. */
	assert_int_equal(w->nhello, (int)cs.attempts);
	for (int i = 0; i < w->nhello; i++)
		for (int j = i + 1; j < w->nhello; j++)
			assert_true(w->hello_sid[i] != w->hello_sid[j]);

	/* A TLS record with an unknown session id: dropped silently. */
	chan_server_get_stats(w->srv, &st);
	uint64_t stale0 = st.stale_drops;
	uint8_t hdr[CHAN_HDR_LEN];
	chan_hdr_put(hdr, CHAN_KIND_TLS, 0x1234567890ull);
	chan_frame fr[2] = {{hdr, sizeof hdr}, {"garbage", 7}};
	uint8_t rid = 0;
	long mark = ct_log_mark();
	chan_server_feed(w->srv, &rid, 1, fr, 2);
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.stale_drops, stale0 + 1);
	assert_false(ct_log_has(mark, "chan", NULL));
	assert_true(chan_client_is_ready(w->cli[0]));
	/* RESET for another session id: ignored; for the current one: the
	 * session ends and the node re-handshakes. */
	chan_hdr_put(hdr, CHAN_KIND_RESET, 0x1234567890ull);
	fr[1].n = 0;
	chan_server_feed(w->srv, &rid, 1, fr, 2);
	assert_true(chan_client_is_ready(w->cli[0]));
	chan_client_feed(w->cli[0], fr, 2); /* stale RESET to the node */
	assert_true(chan_client_is_ready(w->cli[0]));
	chan_client_get_stats(w->cli[0], &cs);
	assert_int_equal(cs.stale_drops, 1);
	wire_free(w);
}

/* The coordinator resets a session: the node sees DOWN, retries after the
 * back-off with a new session id, and is served again. */
static void test_reset_rehandshake(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 1);
	pump(w);
	uint64_t p1 = peer_of(w, "node-01");
	assert_int_equal(chan_server_close_peer(w->srv, p1, "test says so"), 0);
	pump(w);
	int k = ct_evs_find(&w->sev, 0, CHAN_EV_PEER_GONE, p1, NULL);
	assert_true(k >= 0);
	assert_string_equal(w->sev.v[k].why, "test says so");
	k = ct_evs_find(&w->cev[0], 0, CHAN_EV_DOWN, 0, NULL);
	assert_true(k >= 0);
	assert_int_equal(w->cev[0].v[k].reason, FL_ECLOSED);
	assert_int_equal(w->cev[0].v[k].was_up, 1);
	advance(w, 300);
	assert_true(chan_client_is_ready(w->cli[0]));
	uint64_t p2 = peer_of(w, "node-01");
	assert_true(p2 != p1);
	/* The node abandons its session itself: the coordinator frees it. */
	ct_evs_clear(&w->sev);
	assert_int_equal(chan_client_reset(w->cli[0], "application says so"), 0);
	pump(w);
	k = ct_evs_find(&w->sev, 0, CHAN_EV_PEER_GONE, p2, NULL);
	assert_true(k >= 0);
	assert_string_equal(w->sev.v[k].why, "node reset the session");
	chan_server_stats st;
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.resets_rcvd, 1);
	wire_free(w);
}

/* Keepalives keep idle sessions up; silence expires them. */
static void test_keepalive_and_idle(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 1);
	pump(w);
	uint64_t p = peer_of(w, "node-01");
	chan_server_stats st0, st1;
	chan_server_get_stats(w->srv, &st0);
	advance(w, 10000); /* > 3 idle timeouts, nothing sent by anyone */
	chan_server_get_stats(w->srv, &st1);
	assert_true(chan_client_is_ready(w->cli[0]));
	assert_int_equal(st1.idle_expired, 0);
	assert_true(st1.wire_out > st0.wire_out); /* keepalives */
	assert_true(st1.wire_in > st0.wire_in);
	assert_int_equal(st1.msgs_in, st0.msgs_in); /* not seen as messages */
	assert_int_equal(ct_evs_find(&w->sev, 0, CHAN_EV_PEER_GONE, 0, NULL), -1);
	/* The node goes silent (its frames are lost): expired. */
	w->drop_up[0] = 1;
	advance(w, 3500);
	chan_server_get_stats(w->srv, &st1);
	assert_int_equal(st1.idle_expired, 1);
	int k = ct_evs_find(&w->sev, 0, CHAN_EV_PEER_GONE, p, NULL);
	assert_true(k >= 0);
	assert_int_equal(w->sev.v[k].reason, FL_ETIMEDOUT);
	wire_free(w);
}

/* Back-pressure: EAGAIN keeps bytes in the session's bounded queue;
 * they go out in order when ZeroMQ takes them again. EHOSTUNREACH frees
 * the session. */
static void test_backpressure_and_unreachable(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	so.out_queue_max = 100000;
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 1);
	wire_add(w, 1, "node-02", 1);
	pump(w);
	uint64_t p0 = peer_of(w, "node-01"), p1 = peer_of(w, "node-02");
	w->block[0] = 1;
	uint8_t m[10000];
	int sent = 0, rc;
	for (;;) {
		memset(m, sent, sizeof m);
		if ((rc = chan_server_send(w->srv, p0, m, sizeof m)) != 0)
			break;
		sent++;
		pump(w);
	}
	assert_int_equal(rc, FL_EAGAIN);
	assert_true(sent >= 8);
	assert_true(chan_server_queued(w->srv, p0) > 90000);
	assert_int_equal(chan_server_send(w->srv, p0, m, 200000), FL_ETOOBIG);
	/* The other node is served meanwhile. */
	assert_int_equal(chan_server_send(w->srv, p1, "free", 4), 0);
	pump(w);
	assert_true(ct_evs_find(&w->cev[1], 0, CHAN_EV_MESSAGE, 0, NULL) >= 0);
	ct_evs_clear(&w->cev[0]);
	w->block[0] = 0;
	advance(w, 50);
	int n = 0;
	for (int j = 0; j < w->cev[0].n; j++)
		if (w->cev[0].v[j].type == CHAN_EV_MESSAGE) {
			assert_int_equal(w->cev[0].v[j].len, sizeof m);
			assert_int_equal(w->cev[0].v[j].data[0], n);
			n++;
		}
	assert_int_equal(n, sent);
	assert_int_equal(chan_server_queued(w->srv, p0), 0);
	/* Unreachable: the next send finds the peer gone. */
	w->gone[1] = 1;
	assert_int_equal(chan_server_send(w->srv, p1, "x", 1), 0);
	pump(w);
	int k = ct_evs_find(&w->sev, 0, CHAN_EV_PEER_GONE, p1, NULL);
	assert_true(k >= 0);
	assert_int_equal(w->sev.v[k].reason, FL_ENET);
	chan_server_stats st;
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.unreachable, 1);
	assert_int_equal(st.sessions, 1);
	wire_free(w);
}

/* Admission: past max_pending the oldest unauthenticated connection makes
 * room for the newest (so a good node is never starved by older pending
 * ones); past max_sessions connections are refused. */
static void test_limits(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	so.max_pending = 1;
	so.max_sessions = 2;
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 0);
	wire_add(w, 1, "node-02", 0);
	wire_add(w, 2, "node-03", 0);
	w->drop_down[0] = 1; /* keeps node-01 handshaking */
	chan_client_link_event(w->cli[0], 1);
	pump(w);
	chan_server_stats st;
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.pending, 1);
	long mark = ct_log_mark();
	chan_client_link_event(w->cli[1], 1);
	pump(w);
	assert_true(ct_log_has(mark, "max_pending reached", "closed the oldest unauthenticated"));
	assert_true(chan_client_is_ready(w->cli[1]));
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.evicted, 1);
	/* node-01 tries again and gets in: two authenticated connections. */
	w->drop_down[0] = 0;
	advance(w, 2500);
	assert_true(chan_client_is_ready(w->cli[0]));
	assert_true(chan_client_is_ready(w->cli[1]));
	/* A third connection finds max_sessions authenticated ones: refused
	 * (nothing unauthenticated to evict); the others stay. */
	mark = ct_log_mark();
	chan_client_link_event(w->cli[2], 1);
	advance(w, 300);
	assert_true(ct_log_has(mark, "refused a connection", "max_sessions (2)"));
	assert_false(chan_client_is_ready(w->cli[2]));
	chan_client_stats cs;
	chan_client_get_stats(w->cli[2], &cs);
	assert_true(cs.resets_rcvd >= 1);
	chan_server_get_stats(w->srv, &st);
	assert_true(st.conn_refused >= 1);
	assert_int_equal(st.sessions, 2);
	assert_true(chan_client_is_ready(w->cli[0]) && chan_client_is_ready(w->cli[1]));
	wire_free(w);
}

/* close_peer sends what is queued first, then closes; a shared message
 * goes to several peers. */
static void test_close_after_flush_and_shared(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 1);
	wire_add(w, 1, "node-02", 1);
	pump(w);
	uint64_t p0 = peer_of(w, "node-01"), p1 = peer_of(w, "node-02");
	chan_shared *sh = NULL;
	uint8_t *big = ct_pattern(300000, 5);
	assert_int_equal(chan_shared_new(big, 300000, &sh), 0);
	assert_int_equal(chan_server_send_shared(w->srv, p0, sh), 0);
	assert_int_equal(chan_server_send_shared(w->srv, p1, sh), 0);
	chan_shared_release(sh);
	assert_int_equal(chan_server_send(w->srv, p0, "bye", 3), 0);
	assert_int_equal(chan_server_close_peer(w->srv, p0, "round over"), 0);
	assert_int_equal(chan_server_send(w->srv, p0, "late", 4), FL_ENOENT);
	pump(w);
	for (int i = 0; i < 2; i++) {
		int k = -1;
		for (int j = 0; j < w->cev[i].n; j++)
			if (w->cev[i].v[j].type == CHAN_EV_MESSAGE && w->cev[i].v[j].len == 300000)
				k = j;
		assert_true(k >= 0);
		assert_memory_equal(w->cev[i].v[k].data, big, 300000);
	}
	int kb = -1, kd = ct_evs_find(&w->cev[0], 0, CHAN_EV_DOWN, 0, NULL);
	for (int j = 0; j < w->cev[0].n; j++)
		if (w->cev[0].v[j].type == CHAN_EV_MESSAGE && w->cev[0].v[j].len == 3)
			kb = j;
	assert_true(kb >= 0 && kd > kb); /* "bye" arrived before the close */
	free(big);
	wire_free(w);
}

/* After a large transfer an idle session holds no transfer buffers. */
static void test_idle_buffers(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 1);
	pump(w);
	uint64_t p = peer_of(w, "node-01");
	uint8_t *big = ct_pattern(4u << 20, 7);
	assert_int_equal(chan_client_send(w->cli[0], big, 4u << 20), 0);
	assert_int_equal(chan_server_send(w->srv, p, big, 4u << 20), 0);
	pump(w);
	advance(w, 300); /* a sweep or two */
	/* Nothing kept: no frame buffer, no partial message, no queue, and
	 * one BIO of ours for both directions. */
	chan_sess *cs = chan_client_test_sess(w->cli[0]);
	assert_non_null(cs);
	assert_null(cs->wb);
	assert_int_equal(cs->wcap, 0);
	assert_true(chan_sess_idle(cs));
	assert_ptr_equal(SSL_get_rbio(cs->ssl), SSL_get_wbio(cs->ssl));
	assert_int_equal(BIO_ctrl_pending(SSL_get_rbio(cs->ssl)), 0);
	chan_server_stats st;
	chan_server_get_stats(w->srv, &st);
	assert_int_equal(st.max_inbound_alloc, 4u << 20);
	free(big);
	wire_free(w);
}

/* Frames the node must drop: wrong counts, bad header, HELLO from the
 * coordinator. */
static void test_client_bad_frames(void **state)
{
	(void)state;
	chan_server_opts so;
	srv_opts(&so);
	wire *w = wire_new(&so);
	wire_add(w, 0, "node-01", 1);
	pump(w);
	long mark = ct_log_mark();
	uint8_t hdr[CHAN_HDR_LEN];
	chan_hdr_put(hdr, CHAN_KIND_TLS, 1);
	chan_frame fr[3] = {{hdr, sizeof hdr}, {"x", 1}, {"y", 1}};
	chan_client_feed(w->cli[0], fr, 1);
	chan_client_feed(w->cli[0], fr, 3);
	fr[0].n = 4;
	chan_client_feed(w->cli[0], fr, 2);
	assert_true(ct_log_has(mark, "message of 1 frames from the coordinator", NULL));
	assert_true(ct_log_has(mark, "message of 3 frames from the coordinator", NULL));
	assert_true(ct_log_has(mark, "malformed message from the coordinator", "4 bytes"));
	assert_true(chan_client_is_ready(w->cli[0]));
	wire_free(w);
}

static void test_zap_matcher(void **state)
{
	(void)state;
	chan_zap *z = NULL;
	assert_int_equal(chan_zap_new("10.0.0.0/8, 192.168.1.5,fd00::/8", "10.1.0.0/16", &z), 0);
	assert_true(chan_zap_check(z, "10.2.3.4", NULL));
	assert_false(chan_zap_check(z, "10.1.3.4", NULL));
	assert_true(chan_zap_check(z, "192.168.1.5", NULL));
	assert_false(chan_zap_check(z, "192.168.1.6", NULL));
	assert_true(chan_zap_check(z, "::ffff:10.9.9.9", NULL));
	assert_true(chan_zap_check(z, "fd12::1", NULL));
	assert_false(chan_zap_check(z, "fe80::1", NULL));
	assert_false(chan_zap_check(z, "not an address", NULL));
	chan_zap_free(z);
	z = NULL;
	assert_int_equal(chan_zap_new(NULL, "127.0.0.1", &z), 0);
	assert_false(chan_zap_check(z, "127.0.0.1", NULL));
	assert_true(chan_zap_check(z, "127.0.0.2", NULL));
	chan_zap_free(z);
	z = NULL;
	long mark = ct_log_mark();
	assert_int_equal(chan_zap_new("10.0.0.0/33", NULL, &z), FL_ECONFIG);
	assert_true(ct_log_has(mark, "ip_allow", "'10.0.0.0/33'"));
	assert_int_equal(chan_zap_new(NULL, "host.example", &z), FL_ECONFIG);
	assert_null(z);
}

static void test_options_and_header(void **state)
{
	(void)state;
	chan_server_opts so;
	chan_server *s = NULL;
	srv_opts(&so);
	so.max_msg = 0;
	assert_int_equal(chan_server_new_detached(&so, srv_out, NULL, &s), FL_EINVAL);
	srv_opts(&so);
	so.ca_path = ct_path(g_root, "pki/missing.crt");
	assert_int_equal(chan_server_new_detached(&so, srv_out, NULL, &s), FL_ENOENT);
	assert_null(s);
	chan_client_opts co;
	chan_client *c = NULL;
	cli_opts(&co, "node-01");
	co.endpoint = "tcp://*:7777";
	assert_int_equal(chan_client_new(&co, &c), FL_EINVAL);
	enum chan_kind k;
	uint64_t sid;
	char why[80];
	uint8_t h[CHAN_HDR_LEN];
	chan_hdr_put(h, CHAN_KIND_RESET, 0x0102030405060708ull);
	assert_int_equal(h[1], 8);
	assert_int_equal(chan_hdr_get(h, sizeof h, &k, &sid, why, sizeof why), 0);
	assert_int_equal(k, CHAN_KIND_RESET);
	assert_true(sid == 0x0102030405060708ull);
	h[0] = 0;
	assert_int_equal(chan_hdr_get(h, sizeof h, &k, &sid, why, sizeof why), FL_EPROTO);
	assert_int_equal(chan_hdr_get(h, 8, &k, &sid, why, sizeof why), FL_EPROTO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_options_and_header),
	    cmocka_unit_test(test_zap_matcher),
	    cmocka_unit_test(test_up_and_messages),
	    cmocka_unit_test(test_last_wins),
	    cmocka_unit_test(test_handshake_timeout_and_stale),
	    cmocka_unit_test(test_reset_rehandshake),
	    cmocka_unit_test(test_keepalive_and_idle),
	    cmocka_unit_test(test_backpressure_and_unreachable),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_close_after_flush_and_shared),
	    cmocka_unit_test(test_idle_buffers),
	    cmocka_unit_test(test_client_bad_frames),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
