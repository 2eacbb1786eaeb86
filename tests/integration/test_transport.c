/* transport: the secure channel over real ZeroMQ sockets on 127.0.0.1 with
 * certificates from deploy/certs.sh — byte-exact messages both ways,
 * refusals (each with a log line saying why) while a good node keeps being
 * served, reload, and processes killed with SIGKILL and restarted. */
#include "chantest.h"

#include <errno.h>
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

	chan_server_stats st;
	chan_server_get_stats(h->srv, &st);
	assert_int_equal(st.sessions, 1);
	assert_int_equal(st.hs_ok, 1);
	assert_int_equal(st.bad_frames, 0);
	/* The big message was received in growing buffers, never past its size. */
	assert_int_equal(st.max_inbound_alloc, 64u << 20);
	h_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
