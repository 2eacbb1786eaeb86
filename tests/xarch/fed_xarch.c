/* fed_xarch — a federation across CPU architectures: an x86-64
 * coordinator (FEDLORA_COORD_BIN) with
 *   1. two aarch64 nodes, and
 *   2. one x86-64 node (FEDLORA_NODE_BIN) and one aarch64 node,
 * all real processes on 127.0.0.1 over mutual TLS, 3 rounds each. The
 * aarch64 node is FEDLORA_XARCH_NODE_BIN: a program that runs the aarch64
 * fedlora-node (under qemu-user on an x86-64 host: the wrapper script
 * build-arm64/tests/emu/fedlora-node). After every round each node holds,
 * bit for bit, the version the coordinator committed: the SHA-256 the node
 * computed of what it applied equals the fingerprint recomputed from the
 * coordinator's version file, for every version, and the node's state on
 * disk holds the last one.
 *
 * Not registered with ctest (it needs the cross build): the arm64 stage of
 * tests/run.sh builds the aarch64 binaries and runs this program. The
 * trainer is FEDLORA_FED_TRAINER (the stage uses "synth", so that qemu time
 * stays small); the base model, data and certificates are made by the
 * x86-64 node binary, so the aarch64 node also checks the base model's
 * fingerprint across architectures. */
#include "fedtest.h"

#define ROUNDS 3

static void run_fed(const char *bin0, const char *bin1)
{
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		fail_msg("FEDLORA_NODE_BIN / FEDLORA_COORD_BIN not usable");
	ft_setup(&f, 2, 0);
	f.node_bin_of[0] = bin0;
	f.node_bin_of[1] = bin1;
	print_message("node 1: %s\nnode 2: %s\n", bin0, bin1);
	const char *cx[] = {"--rounds.max_rounds=3", "--state.keep_versions=100", NULL};
	ft_start_coord(&f, cx);
	for (int i = 0; i < 2; i++)
		ft_start_node(&f, i, NULL);
	int committed = ft_wait_committed(&f, ROUNDS, 400000);
	int failed = committed != ROUNDS;
	if (!failed) {
		int st = ft_wait_pid(f.coord, 30000); /* max_rounds reached: it stops */
		f.coord = 0;
		failed = st != 0;
		if (failed)
			fprintf(stderr, "coordinator exit status %d\n", st);
	}
	if (!failed && !ft_wait_node_rounds(&f, ROUNDS, 60000)) {
		failed = 1;
		fprintf(stderr, "not every node recorded %d rounds\n", ROUNDS);
	}
	for (int i = 0; i < 2; i++)
		ft_stop(&f.node[i], SIGTERM, 20000);
	if (failed) {
		ft_cleanup(&f, 1);
		fail_msg("%d of %d rounds committed", committed, ROUNDS);
	}

	ft_rounds r = ft_journal(&f);
	assert_int_equal(r.committed, ROUNDS);
	for (int k = 0; k < ROUNDS; k++)
		assert_int_equal(r.participants[k], 2); /* both architectures, every round */

	uint8_t csha[ROUNDS + 1][32];
	for (uint64_t v = 0; v <= ROUNDS; v++)
		assert_int_equal(ft_coord_version_sha(&f, v, csha[v], NULL), 0);
	for (int i = 0; i < 2; i++) {
		ft_node_metrics m = ft_node(&f, i);
		/* versions 0..ROUNDS-1 reached the node at the starts of rounds
		 * 1..ROUNDS; the node applied each delta itself */
		assert_int_equal(m.globals, ROUNDS);
		for (int k = 0; k < m.globals; k++) {
			char hex[65];
			assert_int_equal(m.gver[k], (uint64_t)k);
			hex_encode(csha[k], 32, hex);
			if (strcmp(m.gsha[k], hex) != 0)
				fail_msg("node %d version %d: sha %s, coordinator %s", i + 1, k,
				         m.gsha[k], hex);
			print_message("node %d v%d sha256 %.16s... = coordinator's\n", i + 1, k,
			              hex);
		}
		tset *g = NULL;
		uint8_t gs[32];
		assert_int_equal(
		    st_read_tset(ft_path(&f, "node-%02d/global.safetensors", i + 1), NULL, &g), 0);
		assert_int_equal(tset_fingerprint(g, gs), 0);
		/* on disk: the final version, which the coordinator sends when the
		 * federation ends (DownFinal) and the node verified and wrote */
		assert_memory_equal(gs, csha[ROUNDS], 32);
		tset_free(g);
		assert_int_equal(m.uploaded, ROUNDS);
	}
	ft_cleanup(&f, 0);
}

static const char *arm_bin(void)
{
	const char *b = getenv("FEDLORA_XARCH_NODE_BIN");
	if (!b || access(b, X_OK) != 0)
		fail_msg("FEDLORA_XARCH_NODE_BIN (the aarch64 node, e.g. "
		         "build-arm64/tests/emu/fedlora-node) not set or not executable");
	return b;
}

static void test_two_aarch64_nodes(void **state)
{
	(void)state;
	const char *a = arm_bin();
	run_fed(a, a);
}

static void test_mixed_nodes(void **state)
{
	(void)state;
	const char *a = arm_bin();
	run_fed(getenv("FEDLORA_NODE_BIN"), a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_two_aarch64_nodes, ft_teardown),
	    cmocka_unit_test_teardown(test_mixed_nodes, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
