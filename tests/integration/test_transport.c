/* transport: the secure channel over real ZeroMQ sockets on 127.0.0.1 with
 * certificates from deploy/certs.sh — byte-exact messages both ways,
 * refusals (each with a log line saying why) while a good node keeps being
 * served, reload, and processes killed with SIGKILL and restarted. */
#include "chantest.h"

#include "tlsctx.h"

#include <openssl/pem.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

static char *g_root;

static int group_setup(void **state)
{
	(void)state;
	g_root = tu_mkdtemp();
	if (!g_root)
		return -1;
	ct_log_to(g_root);
	if (ct_make_pki(g_root) != 0) {
		fprintf(stderr, "certs.sh failed\n");
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	if (getenv("CT_SHOWLOG"))
		ct_log_dump(0);
	tu_rmtree(g_root);
	free(g_root);
	return 0;
}

static ct_h *h_new(void)
{
	ct_h *h = calloc(1, sizeof *h);
	assert_non_null(h);
	h->welcome = 1;
	return h;
}

static void h_free(ct_h *h)
{
	ct_h_fini(h);
	free(h);
}

/* Starts a coordinator and one node, waits until the node is ready. */
static void start_pair(ct_h *h, chan_server_opts *so, const char *id)
{
	chan_client_opts co;
	assert_int_equal(chan_server_new(so, &h->srv), 0);
	ct_client_opts(&co, g_root, "pki", id, chan_server_endpoint(h->srv));
	assert_int_equal(chan_client_new(&co, &h->cli[0]), 0);
	assert_true(CT_WAIT(h, 10000, chan_client_is_ready(h->cli[0])));
}

/* Waits for a message of len bytes at client i (or the server if i < 0),
 * from index from on; returns its index. */
static int wait_msg(ct_h *h, int i, size_t len, int ms)
{
	ct_evs *e = i < 0 ? &h->sev : &h->cev[i];
	int k = -1;
	uint64_t dl = clk_mono_ms() + (uint64_t)ms;
	while (clk_mono_ms() < dl) {
		for (int j = 0; j < e->n; j++)
			if (e->v[j].type == CHAN_EV_MESSAGE && e->v[j].len == len)
				k = j;
		if (k >= 0)
			return k;
		ct_pump(h, 20);
	}
	return -1;
}

static void roundtrip(ct_h *h, uint64_t peer, size_t len, uint64_t seed)
{
	uint8_t *up = ct_pattern(len, seed), *down = ct_pattern(len, seed + 1);
	assert_int_equal(chan_client_send(h->cli[0], up, len), 0);
	int k = wait_msg(h, -1, len, 60000);
	assert_true(k >= 0);
	assert_int_equal(h->sev.v[k].peer, peer);
	assert_string_equal(h->sev.v[k].cn, "node-01");
	assert_memory_equal(h->sev.v[k].data, up, len);
	assert_int_equal(chan_server_send(h->srv, peer, down, len), 0);
	k = wait_msg(h, 0, len, 60000);
	assert_true(k >= 0);
	assert_memory_equal(h->cev[0].v[k].data, down, len);
	ct_evs_clear(&h->sev);
	ct_evs_clear(&h->cev[0]);
	free(up);
	free(down);
}

static void test_roundtrip(void **state)
{
	(void)state;
	ct_h *h = h_new();
	chan_server_opts so;
	ct_server_opts(&so, g_root);
	start_pair(h, &so, "node-01");
	int k = ct_evs_find(&h->sev, 0, CHAN_EV_PEER_UP, 0, "node-01");
	assert_true(k >= 0);
	uint64_t peer = h->sev.v[k].peer;
	assert_string_equal(h->sev.v[k].addr, "127.0.0.1");
	k = ct_evs_find(&h->cev[0], 0, CHAN_EV_UP, 0, NULL);
	assert_true(k >= 0);
	assert_string_equal(h->cev[0].v[k].cn, "fedlora-coordinator");
	ct_evs_clear(&h->sev);
	ct_evs_clear(&h->cev[0]);

	roundtrip(h, peer, 1024, 1);
	roundtrip(h, peer, 0, 2);
	roundtrip(h, peer, 64u << 20, 3);
	roundtrip(h, peer, 1024, 4);

	/* A burst of small messages arrives whole and in order. */
	for (int i = 0; i < 200; i++) {
		uint8_t m[64];
		memset(m, i, sizeof m);
		assert_int_equal(chan_client_send(h->cli[0], m, (size_t)(i % 64) + 1), 0);
	}
	assert_true(CT_WAIT(h, 10000, h->sev.n >= 200));
	for (int i = 0; i < 200; i++) {
		assert_int_equal(h->sev.v[i].type, CHAN_EV_MESSAGE);
		assert_int_equal(h->sev.v[i].len, (size_t)(i % 64) + 1);
		assert_int_equal(h->sev.v[i].data[0], (uint8_t)i);
	}

	/* Reading is bounded per call (CHAN_RECV_BYTES): three 1 MiB messages
	 * waiting in the coordinator's socket are not all read and decrypted
	 * by one call, and all three then arrive whole. */
	ct_evs_clear(&h->sev);
	const size_t big = 1u << 20;
	uint8_t *pat = ct_pattern(big, 9);
	for (int i = 0; i < 3; i++)
		assert_int_equal(chan_client_send(h->cli[0], pat, big), 0);
	for (int i = 0; i < 100; i++) /* node side only: frames reach the socket */
		chan_client_poll(h->cli[0], 10);
	chan_server_poll(h->srv, 1000);
	int got = 0;
	chan_event ev;
	while (chan_server_next(h->srv, &ev) == 0) {
		got += ev.type == CHAN_EV_MESSAGE;
		ct_evs_push(&h->sev, &ev);
	}
	assert_true(got <= 1);
	assert_true(CT_WAIT(h, 10000, h->sev.n >= 3));
	for (int i = 0; i < 3; i++) {
		assert_int_equal(h->sev.v[i].len, big);
		assert_memory_equal(h->sev.v[i].data, pat, big);
	}
	free(pat);

	chan_server_stats st;
	chan_server_get_stats(h->srv, &st);
	assert_int_equal(st.sessions, 1);
	assert_int_equal(st.hs_ok, 1);
	assert_int_equal(st.bad_frames, 0);
	/* The big message was received in growing buffers, never past its size. */
	assert_int_equal(st.max_inbound_alloc, 64u << 20);
	h_free(h);
}

/* ---- refusals ---- */

/* The good node (client 0) sends a ping, the coordinator echoes it back. */
static void ping_good(ct_h *h, int i)
{
	char m[32];
	int n = snprintf(m, sizeof m, "ping-%d", i);
	ct_evs_clear(&h->cev[0]);
	assert_true(chan_client_is_ready(h->cli[0]));
	assert_int_equal(chan_client_send(h->cli[0], m, (size_t)n), 0);
	assert_true(CT_WAIT(h, 5000, ct_evs_find(&h->sev, 0, CHAN_EV_MESSAGE, 0, "node-02") >= 0));
	int k = ct_evs_find(&h->sev, 0, CHAN_EV_MESSAGE, 0, "node-02");
	assert_int_equal(h->sev.v[k].len, (size_t)n);
	assert_int_equal(chan_server_send(h->srv, h->sev.v[k].peer, m, (size_t)n), 0);
	ct_evs_clear(&h->sev);
	assert_true(CT_WAIT(h, 5000, ct_evs_find(&h->cev[0], 0, CHAN_EV_MESSAGE, 0, NULL) >= 0));
	k = ct_evs_find(&h->cev[0], 0, CHAN_EV_MESSAGE, 0, NULL);
	assert_memory_equal(h->cev[0].v[k].data, m, (size_t)n);
}

/* Runs a node that must be refused, waits for the coordinator's log line
 * naming the reason, checks it never came up and the good node still
 * works. */
static void refused_node(ct_h *h, const char *pki, const char *id, int no_cert, const char *expect,
                         int step)
{
	chan_client_opts co;
	long mark = ct_log_mark();
	ct_client_opts(&co, g_root, pki, id, chan_server_endpoint(h->srv));
	if (no_cert)
		co.cert_path = co.key_path = NULL;
	assert_int_equal(chan_client_new(&co, &h->cli[1]), 0);
	int ok = CT_WAIT(h, 8000, ct_log_has(mark, "refused node at 127.0.0.1", expect));
	if (!ok)
		ct_log_dump(mark);
	assert_true(ok);
	/* The node side learns it too (DOWN with FL_EAUTH). */
	assert_true(CT_WAIT(h, 5000, ct_evs_find(&h->cev[1], 0, CHAN_EV_DOWN, 0, NULL) >= 0));
	int k = ct_evs_find(&h->cev[1], 0, CHAN_EV_DOWN, 0, NULL);
	assert_int_equal(h->cev[1].v[k].reason, FL_EAUTH);
	assert_false(chan_client_is_ready(h->cli[1]));
	chan_client_free(h->cli[1]);
	h->cli[1] = NULL;
	ct_evs_clear(&h->cev[1]);
	assert_int_equal(ct_evs_find(&h->sev, 0, CHAN_EV_PEER_UP, 0, NULL), -1);
	ping_good(h, step);
}

static X509 *load_cert(const char *rel)
{
	FILE *f = fopen(ct_path(g_root, rel), "r");
	assert_non_null(f);
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

static EVP_PKEY *load_key(const char *rel)
{
	FILE *f = fopen(ct_path(g_root, rel), "r");
	assert_non_null(f);
	EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(k);
	return k;
}

/* Identities in memory and one shared client context (what the fleet
 * load generator uses to hold thousands of sessions): two nodes, each
 * authenticated by the coordinator under its own certificate's name;
 * a key that does not match its certificate, or half an identity, is
 * refused when the client is made. */
static void test_identity_in_memory(void **state)
{
	(void)state;
	ct_h *h = h_new();
	chan_server_opts so;
	ct_server_opts(&so, g_root);
	assert_int_equal(chan_server_new(&so, &h->srv), 0);
	tlsctx_opts to = {.role = TLSCTX_CLIENT, .ca_path = ct_path(g_root, "pki/ca.crt")};
	tlsctx *tls = NULL;
	assert_int_equal(tlsctx_new(&to, &tls), 0);
	X509 *c1 = load_cert("pki/nodes/node-01.crt"), *c2 = load_cert("pki/nodes/node-02.crt");
	EVP_PKEY *k1 = load_key("pki/nodes/node-01.key"), *k2 = load_key("pki/nodes/node-02.key");
	chan_client_opts co;
	chan_client_opts_default(&co);
	co.endpoint = chan_server_endpoint(h->srv);
	co.tls = tls;
	co.reconnect_ivl_ms = 50;
	co.linger_ms = 200;
	co.cert = c1;
	co.key = k1;
	assert_int_equal(chan_client_new(&co, &h->cli[0]), 0);
	co.cert = c2;
	co.key = k2;
	assert_int_equal(chan_client_new(&co, &h->cli[1]), 0);
	/* the clients hold their own references */
	X509_free(c2);
	EVP_PKEY_free(k2);
	tlsctx_unref(tls);
	assert_true(
	    CT_WAIT(h, 10000, chan_client_is_ready(h->cli[0]) && chan_client_is_ready(h->cli[1])));
	assert_true(ct_evs_find(&h->sev, 0, CHAN_EV_PEER_UP, 0, "node-01") >= 0);
	assert_true(ct_evs_find(&h->sev, 0, CHAN_EV_PEER_UP, 0, "node-02") >= 0);

	chan_client *bad = NULL;
	EVP_PKEY *k3 = load_key("pki/nodes/node-03.key");
	co.tls = NULL;
	co.ca_path = ct_path(g_root, "pki/ca.crt");
	co.cert = c1;
	co.key = k3;
	assert_int_equal(chan_client_new(&co, &bad), FL_ECONFIG);
	co.key = NULL;
	assert_int_equal(chan_client_new(&co, &bad), FL_EINVAL);
	co.key = k1;
	co.cert_path = ct_path(g_root, "pki/nodes/node-01.crt");
	assert_int_equal(chan_client_new(&co, &bad), FL_EINVAL);
	assert_null(bad);
	X509_free(c1);
	EVP_PKEY_free(k1);
	EVP_PKEY_free(k3);
	h_free(h);
}

static void test_refusals(void **state)
{
	(void)state;
	ct_h *h = h_new();
	chan_server_opts so;
	ct_server_opts(&so, g_root);
	so.crl_path = ct_path(g_root, "pki/crl.pem");
	so.allow_path = ct_path(g_root, "allow.txt");
	so.max_msg = 1u << 20;
	start_pair(h, &so, "node-02");
	ct_evs_clear(&h->sev);
	ping_good(h, 0);

	refused_node(h, "other", "node-01", 0, "unable to get local issuer certificate", 1);
	refused_node(h, "pki", "node-exp", 0, "certificate has expired", 2);
	refused_node(h, "pki", "node-future", 0, "certificate is not yet valid", 3);
	refused_node(h, "pki", "node-rev", 0, "certificate revoked", 4);
	refused_node(h, "pki", "node-out", 0, "node CN 'node-out' is not in the allow-list", 5);
	refused_node(h, "pki", "node-01", 1, "peer did not return a certificate", 6);

	/* A fake coordinator holding a node certificate: the node refuses it
	 * and says why. */
	{
		chan_server_opts fo;
		chan_client_opts co;
		chan_server *fake = NULL;
		chan_client *victim = NULL;
		ct_server_opts(&fo, g_root);
		fo.cert_path = ct_path(g_root, "pki/nodes/node-03.crt");
		fo.key_path = ct_path(g_root, "pki/nodes/node-03.key");
		long mark = ct_log_mark();
		assert_int_equal(chan_server_new(&fo, &fake), 0);
		ct_client_opts(&co, g_root, "pki", "node-04", chan_server_endpoint(fake));
		assert_int_equal(chan_client_new(&co, &victim), 0);
		uint64_t dl = clk_mono_ms() + 8000;
		int ok = 0, up = 0;
		chan_event ev;
		while (!ok && clk_mono_ms() < dl) {
			chan_server_poll(fake, 5);
			chan_client_poll(victim, 5);
			ct_pump(h, 5);
			while (chan_server_next(fake, &ev) == 0) {
				up |= ev.type == CHAN_EV_PEER_UP;
				chan_event_fini(&ev);
			}
			while (chan_client_next(victim, &ev) == 0) {
				up |= ev.type == CHAN_EV_UP;
				chan_event_fini(&ev);
			}
			ok = ct_log_has(mark, "handshake with", "unsuitable certificate purpose");
		}
		if (!ok)
			ct_log_dump(mark);
		assert_true(ok);
		assert_false(up);
		chan_client_free(victim);
		chan_server_free(fake);
		ping_good(h, 7);
	}

	/* A plain ZeroMQ peer: garbage, wrong frame counts, a HELLO that is
	 * not TLS, records for a session that does not exist. */
	{
		void *zc = zmq_ctx_new();
		void *d = zmq_socket(zc, ZMQ_DEALER);
		int linger = 0;
		zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
		assert_int_equal(zmq_connect(d, chan_server_endpoint(h->srv)), 0);
		chan_server_stats st0, st1;
		chan_server_get_stats(h->srv, &st0);
		long mark = ct_log_mark();
		uint8_t junk[300];
		for (size_t i = 0; i < sizeof junk; i++)
			junk[i] = (uint8_t)(i * 37 + 11);
		zmq_send(d, junk, 3, ZMQ_SNDMORE);
		zmq_send(d, junk, 100, 0);
		assert_true(CT_WAIT(h, 5000,
		                    ct_log_has(mark, "malformed message from 127.0.0.1",
		                               "header frame of 3 bytes")));
		junk[0] = 9; /* unknown kind */
		zmq_send(d, junk, 9, ZMQ_SNDMORE);
		zmq_send(d, junk, 10, 0);
		assert_true(CT_WAIT(
		    h, 5000,
		    ct_log_has(mark, "malformed message from 127.0.0.1", "unknown frame kind 9")));
		zmq_send(d, junk, 50, 0);
		assert_true(CT_WAIT(
		    h, 5000, ct_log_has(mark, "message of 1 frames from 127.0.0.1", "want 2")));
		zmq_send(d, junk, 9, ZMQ_SNDMORE);
		zmq_send(d, junk, 9, ZMQ_SNDMORE);
		zmq_send(d, junk, 9, 0);
		assert_true(CT_WAIT(
		    h, 5000, ct_log_has(mark, "message of 3 frames from 127.0.0.1", "want 2")));
		uint8_t hdr[CHAN_HDR_LEN] = {CHAN_KIND_HELLO, 1, 2, 3, 4, 5, 6, 7, 8};
		zmq_send(d, hdr, sizeof hdr, ZMQ_SNDMORE);
		zmq_send(d, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, 0);
		int ok = CT_WAIT(
		    h, 5000, ct_log_has(mark, "refused node at 127.0.0.1", "TLS handshake failed"));
		if (!ok)
			ct_log_dump(mark);
		assert_true(ok);
		hdr[0] = CHAN_KIND_TLS;
		hdr[1] = 0x55;
		zmq_send(d, hdr, sizeof hdr, ZMQ_SNDMORE);
		zmq_send(d, junk, 200, 0);
		assert_true(CT_WAIT(
		    h, 5000,
		    (chan_server_get_stats(h->srv, &st1), st1.stale_drops > st0.stale_drops)));
		assert_int_equal(st1.bad_frames - st0.bad_frames, 4);
		assert_int_equal(st1.hs_failed - st0.hs_failed, 1);
		assert_int_equal(st1.sessions, 1);
		zmq_close(d);
		zmq_ctx_term(zc);
		ping_good(h, 8);
	}

	/* An authenticated node sending a message over the cap: refused from
	 * the length prefix, before any allocation. */
	{
		chan_client_opts co;
		long mark = ct_log_mark();
		ct_client_opts(&co, g_root, "pki", "node-01", chan_server_endpoint(h->srv));
		assert_int_equal(chan_client_new(&co, &h->cli[1]), 0);
		assert_true(CT_WAIT(h, 8000, chan_client_is_ready(h->cli[1])));
		uint8_t *big = ct_pattern(2u << 20, 9);
		assert_int_equal(chan_client_send(h->cli[1], big, 2u << 20), 0);
		free(big);
		int ok = CT_WAIT(h, 5000,
		                 ct_log_has(mark,
		                            "node node-01 (127.0.0.1): application "
		                            "message of 2097152 bytes is over the cap "
		                            "of 1048576 bytes",
		                            NULL));
		if (!ok)
			ct_log_dump(mark);
		assert_true(ok);
		int k = ct_evs_find(&h->sev, 0, CHAN_EV_PEER_GONE, 0, "node-01");
		assert_true(k >= 0);
		assert_int_equal(h->sev.v[k].reason, FL_ETOOBIG);
		assert_true(
		    CT_WAIT(h, 5000, ct_evs_find(&h->cev[1], 0, CHAN_EV_DOWN, 0, NULL) >= 0));
		chan_client_free(h->cli[1]);
		h->cli[1] = NULL;
		ct_evs_clear(&h->cev[1]);
		chan_server_stats st;
		chan_server_get_stats(h->srv, &st);
		assert_int_equal(st.oversize, 1);
		/* Largest inbound buffer: the good node's pings, nothing near 2 MiB. */
		assert_true(st.max_inbound_alloc <= 16);
		ping_good(h, 9);
	}

	/* The refused peers' connections are gone (closed by them or by the
	 * handshake deadline); only the good node's remains. */
	chan_server_stats st;
	assert_true(CT_WAIT(h, 15000, (chan_server_get_stats(h->srv, &st), st.pending == 0)));
	assert_int_equal(st.sessions, 1);
	assert_int_equal(st.conns, 1);
	h_free(h);
}

/* Reload (what SIGHUP does): a node revoked in the new CRL and a node
 * taken off the allow-list are dropped; the other node stays up. A reload
 * that fails changes nothing. */
static void test_reload(void **state)
{
	(void)state;
	static const char *ids[3] = {"node-01", "node-02", "node-04"};
	char allow[PATH_MAX];
	snprintf(allow, sizeof allow, "%s/allow2.txt", g_root);
	assert_int_equal(tu_system("printf 'node-01\\nnode-02\\nnode-04\\n' > %s", allow), 0);
	ct_h *h = h_new();
	chan_server_opts so;
	chan_client_opts co;
	ct_server_opts(&so, g_root);
	so.crl_path = ct_path(g_root, "pki/crl.pem");
	so.allow_path = allow;
	assert_int_equal(chan_server_new(&so, &h->srv), 0);
	for (int i = 0; i < 3; i++) {
		ct_client_opts(&co, g_root, "pki", ids[i], chan_server_endpoint(h->srv));
		assert_int_equal(chan_client_new(&co, &h->cli[i]), 0);
	}
	assert_true(CT_WAIT(h, 10000,
	                    chan_client_is_ready(h->cli[0]) && chan_client_is_ready(h->cli[1]) &&
	                        chan_client_is_ready(h->cli[2])));
	ct_evs_clear(&h->sev);

	/* A broken allow-list: reload refused, sessions untouched. */
	assert_int_equal(tu_system("printf 'node-01\\nnot a name\\n' > %s", allow), 0);
	assert_int_equal(chan_server_reload(h->srv), FL_ECONFIG);
	ct_pump(h, 50);
	assert_int_equal(ct_evs_find(&h->sev, 0, CHAN_EV_PEER_GONE, 0, NULL), -1);

	assert_int_equal(tu_system("bash %s revoke %s/pki node-04 >/dev/null",
	                           tu_src_path("deploy/certs.sh"), g_root),
	                 0);
	assert_int_equal(tu_system("printf 'node-01\\nnode-04\\n' > %s", allow), 0);
	long mark = ct_log_mark();
	assert_int_equal(chan_server_reload(h->srv), 0);
	assert_true(CT_WAIT(h, 2000, h->sev.n >= 2));
	int k = ct_evs_find(&h->sev, 0, CHAN_EV_PEER_GONE, 0, "node-04");
	assert_true(k >= 0);
	assert_int_equal(h->sev.v[k].reason, FL_EAUTH);
	assert_non_null(strstr(h->sev.v[k].why, "revoked"));
	k = ct_evs_find(&h->sev, 0, CHAN_EV_PEER_GONE, 0, "node-02");
	assert_true(k >= 0);
	assert_non_null(strstr(h->sev.v[k].why, "no longer in the allow-list"));
	assert_true(ct_log_has(mark, "node node-04", "revoked"));
	assert_int_equal(ct_evs_find(&h->sev, 0, CHAN_EV_PEER_GONE, 0, "node-01"), -1);
	/* node-01 is still served. */
	ct_evs_clear(&h->sev);
	assert_int_equal(chan_client_send(h->cli[0], "still here", 10), 0);
	assert_true(CT_WAIT(h, 5000, ct_evs_find(&h->sev, 0, CHAN_EV_MESSAGE, 0, "node-01") >= 0));
	/* The dropped nodes try again and are refused now. */
	assert_true(CT_WAIT(h, 5000,
	                    ct_log_has(mark, "refused node at 127.0.0.1", "certificate revoked") &&
	                        ct_log_has(mark, "refused node at 127.0.0.1",
	                                   "node CN 'node-02' is not in the allow-list")));
	chan_server_stats st;
	chan_server_get_stats(h->srv, &st);
	assert_int_equal(st.conns - st.pending, 1); /* authenticated connections */
	h_free(h);
}

/* The optional address filter (ip_allow/ip_deny) refuses a TCP peer when
 * its connection opens, before any byte of it is read, and admits an
 * allowed one. */
static void test_zap(void **state)
{
	(void)state;
	ct_h *h = h_new();
	chan_server_opts so;
	chan_client_opts co;
	ct_server_opts(&so, g_root);
	so.ip_deny = "10.0.0.0/8, 127.0.0.1";
	long mark = ct_log_mark();
	assert_int_equal(chan_server_new(&so, &h->srv), 0);
	ct_client_opts(&co, g_root, "pki", "node-01", chan_server_endpoint(h->srv));
	assert_int_equal(chan_client_new(&co, &h->cli[0]), 0);
	int ok = CT_WAIT(h, 5000,
	                 ct_log_has(mark, "refused a connection from 127.0.0.1",
	                            "matches ip_deny (ip_allow/ip_deny)"));
	assert_true(ok);
	ct_pump(h, 200);
	chan_server_stats st;
	chan_server_get_stats(h->srv, &st);
	assert_true(st.zap_denied >= 1);
	assert_int_equal(st.hs_ok + st.hs_failed + st.sessions, 0);
	assert_false(chan_client_is_ready(h->cli[0]));
	ct_h_fini(h);

	ct_server_opts(&so, g_root);
	so.ip_allow = "192.168.0.0/16, 127.0.0.0/8";
	so.ip_deny = "127.0.0.2";
	assert_int_equal(chan_server_new(&so, &h->srv), 0);
	ct_client_opts(&co, g_root, "pki", "node-01", chan_server_endpoint(h->srv));
	assert_int_equal(chan_client_new(&co, &h->cli[0]), 0);
	assert_true(CT_WAIT(h, 5000, chan_client_is_ready(h->cli[0])));
	h_free(h);
}

/* zmq_bind is retried with back-off while the port is still taken (a
 * restarted coordinator whose predecessor has not let go yet). */
typedef struct blocker {
	char ep[128];
	int bound;
	pthread_mutex_t mu;
	pthread_cond_t cv;
} blocker;

static void *hold_port(void *arg)
{
	blocker *b = arg;
	void *zc = zmq_ctx_new(), *s = zmq_socket(zc, ZMQ_ROUTER);
	int zero = 0;
	size_t n = sizeof b->ep;
	zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
	zmq_bind(s, "tcp://127.0.0.1:*");
	zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, b->ep, &n);
	pthread_mutex_lock(&b->mu);
	b->bound = 1;
	pthread_cond_signal(&b->cv);
	pthread_mutex_unlock(&b->mu);
	clk_sleep_ms(400);
	zmq_close(s);
	zmq_ctx_term(zc);
	return NULL;
}

static void test_bind_retry(void **state)
{
	(void)state;
	blocker b = {"", 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};
	pthread_t th;
	pthread_create(&th, NULL, hold_port, &b);
	pthread_mutex_lock(&b.mu);
	while (!b.bound)
		pthread_cond_wait(&b.cv, &b.mu);
	pthread_mutex_unlock(&b.mu);
	chan_server_opts so;
	chan_server *s = NULL;
	ct_server_opts(&so, g_root);
	so.endpoint = b.ep;
	so.bind_retry_ms = 0;
	assert_int_equal(chan_server_new(&so, &s), FL_EBUSY);
	long mark = ct_log_mark();
	so.bind_retry_ms = 5000;
	assert_int_equal(chan_server_new(&so, &s), 0);
	assert_true(ct_log_has(mark, "is in use; retrying", NULL)); /* it did have to wait */
	assert_string_equal(chan_server_endpoint(s), b.ep);
	chan_server_free(s);
	pthread_join(th, NULL);
}

/* ---- real processes: SIGKILL and restart ---- */

static volatile sig_atomic_t g_hup, g_term;
static void on_sig(int sig)
{
	if (sig == SIGHUP)
		g_hup = 1;
	else
		g_term = 1;
}

/* Child: a coordinator answering PEER_UP with WELCOME and echoing every
 * message; prints its endpoint; SIGHUP reloads, SIGTERM ends. */
static int child_coord(const char *root, const char *endpoint)
{
	chan_server_opts so;
	chan_server *s = NULL;
	ct_log_to(root);
	log_set_name("coord-child");
	signal(SIGHUP, on_sig);
	signal(SIGTERM, on_sig);
	ct_server_opts(&so, root);
	so.endpoint = endpoint;
	so.crl_path = ct_path(root, "pki/crl.pem");
	if (chan_server_new(&so, &s) != 0)
		return 1;
	printf("%s\n", chan_server_endpoint(s));
	fflush(stdout);
	while (!g_term) {
		chan_event ev;
		chan_server_poll(s, 100);
		if (g_hup) {
			g_hup = 0;
			chan_server_reload(s);
		}
		while (chan_server_next(s, &ev) == 0) {
			if (ev.type == CHAN_EV_PEER_UP)
				chan_server_send(s, ev.peer, CT_WELCOME, strlen(CT_WELCOME));
			else if (ev.type == CHAN_EV_MESSAGE)
				chan_server_send(s, ev.peer, ev.data, ev.len);
			chan_event_fini(&ev);
		}
	}
	chan_server_free(s);
	return 0;
}

/* Child: a node that becomes ready on WELCOME and then says hello. */
static int child_node(const char *root, const char *id, const char *endpoint)
{
	chan_client_opts co;
	chan_client *c = NULL;
	ct_log_to(root);
	log_set_name("node-child");
	signal(SIGTERM, on_sig);
	ct_client_opts(&co, root, "pki", id, endpoint);
	if (chan_client_new(&co, &c) != 0)
		return 1;
	while (!g_term) {
		chan_event ev;
		chan_client_poll(c, 100);
		while (chan_client_next(c, &ev) == 0) {
			if (ev.type == CHAN_EV_MESSAGE && ev.len == strlen(CT_WELCOME) &&
			    memcmp(ev.data, CT_WELCOME, ev.len) == 0) {
				chan_client_set_ready(c);
				chan_client_send(c, "hello", 5);
				printf("READY %llu\n", (unsigned long long)ev.peer);
				fflush(stdout);
			}
			chan_event_fini(&ev);
		}
	}
	chan_client_free(c);
	return 0;
}

/* Starts this test binary in a child mode; its stdout comes back on *fd
 * (non-blocking). */
static pid_t spawn(const char *mode, const char *a, const char *b, const char *c, int *fd)
{
	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(p[1], 1);
		close(p[0]);
		close(p[1]);
		execl("/proc/self/exe", "test_transport", mode, a, b, c, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	*fd = p[0];
	return pid;
}

/* Appends what the child printed to acc; 1 if acc now contains needle. */
static int child_said(int fd, char *acc, size_t cap, const char *needle)
{
	size_t n = strlen(acc);
	ssize_t k;
	while (n + 1 < cap && (k = read(fd, acc + n, cap - 1 - n)) > 0)
		n += (size_t)k;
	acc[n] = '\0';
	return strstr(acc, needle) != NULL;
}

static void reap(pid_t pid, int fd, int sig)
{
	int st;
	kill(pid, sig);
	waitpid(pid, &st, 0);
	close(fd);
}

/* A node process killed with SIGKILL: its session is freed (the keepalive
 * finds the connection gone); a restarted node gets a new session, and an
 * old session still around when the new one comes up is replaced. */
static void test_node_killed(void **state)
{
	(void)state;
	ct_h *h = h_new();
	chan_server_opts so;
	char acc[4096] = "";
	int fd;
	ct_server_opts(&so, g_root);
	so.heartbeat_ivl_ms = 300;
	assert_int_equal(chan_server_new(&so, &h->srv), 0);
	const char *ep = chan_server_endpoint(h->srv);

	pid_t pid = spawn("--node", g_root, "node-03", ep, &fd);
	assert_true(CT_WAIT(h, 10000, ct_evs_find(&h->sev, 0, CHAN_EV_MESSAGE, 0, "node-03") >= 0));
	uint64_t h1 = h->sev.v[ct_evs_find(&h->sev, 0, CHAN_EV_PEER_UP, 0, "node-03")].peer;
	reap(pid, fd, SIGKILL);
	/* Not restarted: freed as unreachable within a few keepalive periods. */
	assert_true(CT_WAIT(h, 5000, ct_evs_find(&h->sev, 0, CHAN_EV_PEER_GONE, h1, NULL) >= 0));
	int k = ct_evs_find(&h->sev, 0, CHAN_EV_PEER_GONE, h1, NULL);
	assert_int_equal(h->sev.v[k].reason, FL_ENET);
	chan_server_stats st;
	chan_server_get_stats(h->srv, &st);
	assert_int_equal(st.sessions, 0);
	assert_true(st.unreachable >= 1);
	ct_evs_clear(&h->sev);

	/* Restarted: a new session. */
	acc[0] = '\0';
	pid = spawn("--node", g_root, "node-03", ep, &fd);
	assert_true(CT_WAIT(h, 10000, ct_evs_find(&h->sev, 0, CHAN_EV_MESSAGE, 0, "node-03") >= 0));
	uint64_t h2 = h->sev.v[ct_evs_find(&h->sev, 0, CHAN_EV_PEER_UP, 0, "node-03")].peer;
	assert_true(h2 != h1);
	assert_true(CT_WAIT(h, 5000, child_said(fd, acc, sizeof acc, "READY 1")));

	/* Killed and restarted at once: the old session is freed (replaced or
	 * unreachable, whichever comes first), the new one serves. */
	reap(pid, fd, SIGKILL);
	ct_evs_clear(&h->sev);
	pid = spawn("--node", g_root, "node-03", ep, &fd);
	assert_true(CT_WAIT(h, 10000,
	                    ct_evs_find(&h->sev, 0, CHAN_EV_MESSAGE, 0, "node-03") >= 0 &&
	                        ct_evs_find(&h->sev, 0, CHAN_EV_PEER_GONE, h2, NULL) >= 0));
	k = ct_evs_find(&h->sev, 0, CHAN_EV_MESSAGE, 0, "node-03");
	uint64_t h3 = h->sev.v[k].peer;
	assert_true(h3 != h2 && h3 != h1);
	assert_int_equal(chan_server_send(h->srv, h3, "pong", 4), 0);
	assert_true(CT_WAIT(h, 2000, (chan_server_get_stats(h->srv, &st), st.sessions == 1)));
	chan_server_get_stats(h->srv, &st);
	assert_int_equal(st.sessions, 1);
	assert_int_equal(st.pending, 0);
	reap(pid, fd, SIGTERM);
	h_free(h);
}

/* The coordinator process killed with SIGKILL and restarted on the same
 * port: every node notices, reconnects and re-handshakes by itself. */
static void test_coordinator_killed(void **state)
{
	(void)state;
	ct_h *h = h_new();
	char acc[4096] = "", ep[256];
	int fd;
	pid_t pid = spawn("--coord", g_root, "tcp://127.0.0.1:*", "-", &fd);
	assert_true(CT_WAIT(h, 10000, child_said(fd, acc, sizeof acc, "\n")));
	snprintf(ep, sizeof ep, "%.*s", (int)strcspn(acc, "\n"), acc);
	static const char *ids[3] = {"node-01", "node-02", "node-03"};
	for (int i = 0; i < 3; i++) {
		chan_client_opts co;
		ct_client_opts(&co, g_root, "pki", ids[i], ep);
		assert_int_equal(chan_client_new(&co, &h->cli[i]), 0);
	}
	assert_true(CT_WAIT(h, 10000,
	                    chan_client_is_ready(h->cli[0]) && chan_client_is_ready(h->cli[1]) &&
	                        chan_client_is_ready(h->cli[2])));
	/* SIGHUP reload in the child keeps the sessions. */
	kill(pid, SIGHUP);
	ct_pump(h, 300);
	assert_true(chan_client_is_ready(h->cli[0]) && chan_client_is_ready(h->cli[1]) &&
	            chan_client_is_ready(h->cli[2]));

	for (int round = 0; round < 2; round++) {
		reap(pid, fd, SIGKILL);
		assert_true(CT_WAIT(h, 5000,
		                    !chan_client_is_ready(h->cli[0]) &&
		                        !chan_client_is_ready(h->cli[1]) &&
		                        !chan_client_is_ready(h->cli[2])));
		uint64_t t0 = clk_mono_ms();
		acc[0] = '\0';
		pid = spawn("--coord", g_root, ep, "-", &fd);
		int ok =
		    CT_WAIT(h, 10000,
		            chan_client_is_ready(h->cli[0]) && chan_client_is_ready(h->cli[1]) &&
		                chan_client_is_ready(h->cli[2]));
		uint64_t dt = clk_mono_ms() - t0;
		print_message("coordinator restart %d: all 3 nodes ready again after %llu ms\n",
		              round + 1, (unsigned long long)dt);
		assert_true(ok);
		/* The new sessions carry traffic (the child echoes). */
		ct_evs_clear(&h->cev[2]);
		assert_int_equal(chan_client_send(h->cli[2], "echo?", 5), 0);
		assert_true(
		    CT_WAIT(h, 5000, ct_evs_find(&h->cev[2], 0, CHAN_EV_MESSAGE, 0, NULL) >= 0));
	}
	chan_client_stats cs;
	chan_client_get_stats(h->cli[0], &cs);
	assert_true(cs.ups >= 3);
	assert_true(cs.disconnects >= 2);
	reap(pid, fd, SIGTERM);
	h_free(h);
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "--coord") == 0)
		return child_coord(argv[2], argv[3]);
	if (argc == 5 && strcmp(argv[1], "--node") == 0)
		return child_node(argv[2], argv[3], argv[4]);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip),   cmocka_unit_test(test_identity_in_memory),
	    cmocka_unit_test(test_refusals),    cmocka_unit_test(test_reload),
	    cmocka_unit_test(test_zap),         cmocka_unit_test(test_bind_retry),
	    cmocka_unit_test(test_node_killed), cmocka_unit_test(test_coordinator_killed),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
