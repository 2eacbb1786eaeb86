/* End to end per-node rank and upload precision: a rank-16 federation of
 * real processes over mutual TLS where node-01 trains 4 rank slots and
 * uploads q4 (its group in rank.groups), node-02 trains 8 slots and
 * uploads q8 (its group), node-03 announces node.max_rank 16 and node-04
 * no max_rank (every slot, q4), and node-05, announcing node.max_rank 2
 * while its group requires 4, is refused with a message naming both. After
 * three rounds every version each node verified is the coordinator's bit
 * for bit (same SHA-256), the small nodes' uploads are the size of their slices,
 * and each committed version changed slots 8..15 only as far as the
 * full-rank nodes' updates reach: every slot moved. */
#include "fedtest.h"

#include <inttypes.h>

#include "lrank.h"
#include "qtensor.h"

#define ROUNDS 3
#define RK     16

/* Payload bytes of the rank-r slices of v0's tensors in (fmt, 32). */
static size_t slice_bytes(const tset *v0, uint32_t r, enum qt_fmt fmt)
{
	size_t sum = 0;
	for (size_t i = 0; i < tset_count(v0); i++) {
		size_t sl, dl;
		assert_int_equal(qt_layout(fmt, 32, lrank_slice_numel(tset_at(v0, i), r), &sl, &dl),
		                 0);
		sum += sl + dl;
	}
	return sum;
}

static void test_rank(void **state)
{
	(void)state;
	static ft f;
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 5, 0);
	const char *cx[] = {"--rounds.max_rounds=3", "--state.keep_versions=100",
	                    "--rounds.min_nodes=4", "--lora.rank=16", "--lora.alpha=32",
	                    "--rank.groups=node-0[15]:4:q4 node-02:8:q8",
	                    /* few steps and no per-version evaluation: the test
	                     * is about slots, versions and bytes (test_rank
	                     * checks the training of the slots) */
	                    "--train.local_steps=3", "--rounds.deadline_ms=600000", NULL};
	ft_start_coord(&f, cx);
	const char *n1[] = {"--lora.rank=16",           "--lora.alpha=32",   "--node.max_rank=4",
	                    "--node.upload_formats=q4", "--node.eval=false", NULL};
	const char *n2[] = {"--lora.rank=16",    "--lora.alpha=32",
	                    "--node.max_rank=8", "--node.upload_formats=q8,q4",
	                    "--node.eval=false", NULL};
	const char *n3[] = {"--lora.rank=16", "--lora.alpha=32", "--node.max_rank=16",
	                    "--node.eval=false", NULL};
	const char *n4[] = {"--lora.rank=16", "--lora.alpha=32", "--node.eval=false", NULL};
	const char *n5[] = {"--lora.rank=16", "--lora.alpha=32", "--node.max_rank=2", NULL};
	const char *const *ex[5] = {n1, n2, n3, n4, n5};
	for (int i = 0; i < 5; i++)
		ft_start_node(&f, i, ex[i]);
	/* node-05 is refused and exits with a runtime failure */
	int st5 = ft_wait_pid(f.node[4], 60000);
	f.node[4] = 0;
	if (!ft_log_has(&f, "node-05.log",
	                "node node-05 announces node.max_rank 2, below rank 4 that its group "
	                "'node-0[15]' requires (rank.groups)")) {
		ft_cleanup(&f, 1);
		fail_msg("node-05 was not refused with the rank message");
	}
	assert_true(st5 > 0);
	f.nnodes = 4; /* the rest of the test is about the four admitted nodes */
	if (ft_wait_committed(&f, ROUNDS, 240000) < ROUNDS) {
		ft_cleanup(&f, 1);
		fail_msg("rounds did not complete");
	}
	if (!ft_wait_node_rounds(&f, ROUNDS, 30000)) {
		ft_cleanup(&f, 1);
		fail_msg("not every node recorded %d rounds", ROUNDS);
	}
	ft_stop_all(&f);
	assert_true(ft_log_has(&f, "coordinator.log", "node node-01: rank 4 of 16, uploads q4"));
	assert_true(ft_log_has(&f, "coordinator.log", "node node-02: rank 8 of 16, uploads q8"));

	/* every version a node verified is the coordinator's, bit for bit, and
	 * its global on disk is the last of them; every node reached version
	 * ROUNDS - 1 in rounds, and holds version ROUNDS on disk: the final
	 * version reaches the nodes when the federation ends (DownFinal) */
	uint8_t sha[32];
	char hex[65];
	tset *last = NULL, *v0 = NULL;
	assert_int_equal(ft_coord_version_sha(&f, ROUNDS, sha, &last), 0);
	for (int i = 0; i < 4; i++) {
		ft_node_metrics m = ft_node(&f, i);
		assert_true(m.globals >= 1);
		for (int k = 0; k < m.globals; k++) {
			assert_int_equal(ft_coord_version_sha(&f, m.gver[k], sha, NULL), 0);
			hex_encode(sha, 32, hex);
			if (strcmp(hex, m.gsha[k]) != 0) {
				ft_cleanup(&f, 1);
				fail_msg("node-%02d's version %" PRIu64
				         " differs from the coordinator's",
				         i + 1, m.gver[k]);
			}
		}
		assert_true(m.gver[m.globals - 1] == ROUNDS - 1);
		tset *g = NULL;
		uint8_t gs[32];
		assert_int_equal(
		    st_read_tset(ft_path(&f, "node-%02d/global.safetensors", i + 1), NULL, &g), 0);
		assert_int_equal(tset_fingerprint(g, gs), 0);
		hex_encode(gs, 32, hex);
		char fhex[65];
		assert_int_equal(ft_coord_version_sha(&f, ROUNDS, sha, NULL), 0);
		hex_encode(sha, 32, fhex);
		assert_string_equal(hex, fhex);
		tset_free(g);
		print_message("node-%02d verified %d versions, all equal to the coordinator's\n",
		              i + 1, m.globals);
	}
	/* upload sizes: the slices in each node's format (+ envelope framing) */
	assert_int_equal(ft_coord_version_sha(&f, 0, sha, &v0), 0);
	const size_t want[4] = {slice_bytes(v0, 4, QT_Q4), slice_bytes(v0, 8, QT_Q8),
	                        slice_bytes(v0, RK, QT_Q4), slice_bytes(v0, RK, QT_Q4)};
	for (int i = 0; i < 4; i++) {
		ft_node_metrics m = ft_node(&f, i);
		assert_true(m.uploaded >= ROUNDS);
		for (int k = 0; k < m.uploaded; k++) {
			if (!(m.bytes_up[k] >= (double)want[i] &&
			      m.bytes_up[k] <= 1.1 * want[i] + 600))
				fail_msg("node-%02d upload %d: %.0f bytes, slices take %zu", i + 1,
				         k, m.bytes_up[k], want[i]);
		}
		print_message(
		    "node-%02d: %.0f bytes per upload (payload of its slices: %zu; a full "
		    "q4 update: %zu)\n",
		    i + 1, m.bytes_up[0], want[i], want[2]);
	}
	/* every slot of every lora_b moved (the full-rank nodes reach 8..15) */
	int moved[RK] = {0};
	for (size_t i = 0; i < tset_count(last); i++) {
		const tensor *t = tset_at(last, i);
		if (!lora_is_b(t->name))
			continue;
		for (size_t k = 0; k < t->n; k++)
			moved[k % RK] |= t->data[k] != 0.0f; /* lora_b starts at 0 */
	}
	for (int j = 0; j < RK; j++)
		if (!moved[j])
			fail_msg("slot %d of lora_b never moved", j);
	tset_free(last);
	tset_free(v0);
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_rank, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
