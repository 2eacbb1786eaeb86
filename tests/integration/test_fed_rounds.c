/* End to end: one coordinator and four nodes as real processes on
 * 127.0.0.1 over mutual TLS, six rounds with q4 uploads and error
 * feedback. After every round each node holds, bit for bit, the global
 * version the coordinator committed (the node's own SHA-256 of what it
 * applied equals the fingerprint recomputed from the coordinator's version
 * file); the held-out loss goes down; every upload is the q4 format's size
 * plus framing and at most 15 % of the same update in f32. When the
 * federation ends, every node receives the last version (DownFinal),
 * verifies it, keeps it, evaluates it on its held-out data and reports the
 * loss, which the coordinator journals and `status` shows. */
#include "fedtest.h"

#include "qtensor.h"

#include <math.h>

#define ROUNDS 6

static void test_rounds(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 4, 0);
	const char *cx[] = {"--rounds.max_rounds=6", "--state.keep_versions=100", NULL};
	ft_start_coord(&f, cx);
	for (int i = 0; i < 4; i++)
		ft_start_node(&f, i, NULL);
	int committed = ft_wait_committed(&f, ROUNDS, 200000);
	int failed = committed != ROUNDS;
	if (!failed) {
		int st = ft_wait_pid(f.coord, 20000); /* max_rounds reached: it stops */
		f.coord = 0;
		failed = st != 0;
		if (failed)
			fprintf(stderr, "coordinator exit status %d\n", st);
	}
	/* the last round's line reaches each node's metrics with RoundEnd */
	if (!failed && !ft_wait_node_rounds(&f, ROUNDS, 30000)) {
		failed = 1;
		fprintf(stderr, "not every node recorded %d rounds\n", ROUNDS);
	}
	for (int i = 0; i < 4; i++)
		ft_stop(&f.node[i], SIGTERM, 8000);
	if (failed) {
		ft_cleanup(&f, 1);
		fail_msg("%d of %d rounds committed", committed, ROUNDS);
	}

	ft_rounds r = ft_journal(&f);
	assert_int_equal(r.committed, ROUNDS);
	for (int k = 0; k < ROUNDS; k++)
		assert_int_equal(r.participants[k], 4);

	/* the coordinator's versions, fingerprints recomputed from the files */
	uint8_t csha[ROUNDS + 1][32];
	tset *v0 = NULL;
	for (uint64_t v = 0; v <= ROUNDS; v++)
		assert_int_equal(ft_coord_version_sha(&f, v, csha[v], v == 0 ? &v0 : NULL), 0);

	/* q4 payload of one full update of this adapter */
	size_t payload = 0, ntensors = tset_count(v0);
	for (size_t i = 0; i < ntensors; i++) {
		size_t sl, dl;
		assert_int_equal(qt_layout(QT_Q4, 32, tset_at(v0, i)->n, &sl, &dl), 0);
		payload += sl + dl;
	}

	double loss0 = 0, loss_last = 0, final_loss = 0;
	print_message("node  loss(v0)  loss(v%d)  bytes/round  f32 bytes  ratio\n", ROUNDS - 1);
	for (int i = 0; i < 4; i++) {
		ft_node_metrics m = ft_node(&f, i);
		/* versions 0..ROUNDS-1 reached the node at the starts of rounds
		 * 1..ROUNDS, each verified against the coordinator's file */
		assert_int_equal(m.globals, ROUNDS);
		for (int k = 0; k < m.globals; k++) {
			char hex[65];
			assert_int_equal(m.gver[k], (uint64_t)k);
			hex_encode(csha[k], 32, hex);
			assert_string_equal(m.gsha[k], hex);
		}
		/* the node's state holds the final version (DownFinal), verified
		 * again on disk */
		tset *g = NULL;
		uint8_t gs[32];
		assert_int_equal(
		    st_read_tset(ft_path(&f, "node-%02d/global.safetensors", i + 1), NULL, &g), 0);
		assert_int_equal(tset_fingerprint(g, gs), 0);
		assert_memory_equal(gs, csha[ROUNDS], 32);
		tset_free(g);
		/* one held-out evaluation per version, the final one included */
		assert_int_equal(m.evals, ROUNDS + 1);
		assert_int_equal(m.ever[0], 0);
		assert_int_equal(m.ever[ROUNDS - 1], ROUNDS - 1);
		assert_int_equal(m.ever[ROUNDS], ROUNDS);
		assert_int_equal(m.finals, 1);
		assert_true(m.final_verified);
		assert_int_equal(m.final_version, ROUNDS);
		assert_true(m.final_loss == m.eloss[ROUNDS]);
		final_loss += m.eloss[ROUNDS] / 4;
		loss0 += m.eloss[0] / 4;
		loss_last += m.eloss[ROUNDS - 1] / 4;
		/* uploads */
		assert_int_equal(m.uploaded, ROUNDS);
		for (int k = 0; k < m.uploaded; k++) {
			assert_true(m.bytes_up[k] >= (double)payload);
			assert_true(m.bytes_up[k] <= (double)(payload + 64 * ntensors + 512));
			assert_true(m.bytes_up[k] <= 0.15 * m.bytes_fp32[k]);
		}
		print_message("%4d  %8.4f  %8.4f  %11.0f  %9.0f  %5.3f\n", i + 1, m.eloss[0],
		              m.eloss[ROUNDS - 1], m.bytes_up[0], m.bytes_fp32[0],
		              m.bytes_up[0] / m.bytes_fp32[0]);
	}
	print_message("mean held-out loss: v0 %.4f -> v%d %.4f (q4 payload %zu bytes per update)\n",
	              loss0, ROUNDS - 1, loss_last, payload);
	assert_true(loss_last < loss0);
	/* the coordinator journaled each node's evaluation of the final version
	 * and their mean; status shows it */
	ft_finals jf = ft_journal_finals(&f);
	assert_int_equal(jf.evals, 4);
	assert_int_equal(jf.summaries, 1);
	assert_int_equal(jf.version, ROUNDS);
	assert_int_equal(jf.answered, 4);
	print_message("final version v%d: mean held-out loss %.4f (nodes), %.4f (journal)\n",
	              ROUNDS, final_loss, jf.mean);
	assert_true(fabs(jf.mean - final_loss) < 1e-6);
	assert_int_equal(tu_system("'%s' status --state-dir '%s' | grep -q 'final version: %d'",
	                           f.coord_bin, ft_path(&f, "coord-state"), ROUNDS),
	                 0);
	tset_free(v0);
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_rounds, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
