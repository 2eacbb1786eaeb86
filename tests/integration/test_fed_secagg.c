/* Secure aggregation end to end: one coordinator and eight nodes as real
 * processes on 127.0.0.1 over mutual TLS with aggregation.secure = true.
 *
 * Both the coordinator and the nodes run with FEDLORA_TEST_SECAGG_DUMP: the
 * coordinator writes every masked input it receives and each unmasked sum,
 * the nodes write their grid vector before masking. The test then checks:
 *  - round 1 (every node joined by then, at least six) and round 2 (two
 *    nodes kill themselves with SIGKILL on receiving the unmask request,
 *    FEDLORA_TEST_SECAGG_DIE: at the threshold, in the last phase) commit;
 *    the unmasked sum equals, bit for bit, the plaintext sum mod 2^m of
 *    the integer vectors whose masked input arrived (the same round
 *    without masks), and every surviving node verified every committed
 *    version's SHA-256 against the coordinator's file;
 *  - what the coordinator received holds no individual update: each masked
 *    vector's residues pass a chi-square uniformity test (and the test has
 *    power: every plaintext vector fails it), the sum of the masked
 *    vectors is uniform too, and only the unmasked sum is not;
 *  - round 3 runs with six nodes, two more are killed: beyond the
 *    threshold, the round is abandoned, the version does not advance and
 *    the journal says why.
 * A second test: check-config refuses secure aggregation with a strategy
 * that needs individual updates (naming both keys), and a node without
 * the "secagg" capability is refused at Join with the reason. */
#include "fedtest.h"
#include "sacheck.h"

#define N 8

static void test_secure(void **state)
{
	(void)state;
	static ft f;
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, N, 0);
	const char *cx[] = {"--aggregation.secure=true",
	                    "--rounds.min_nodes=6",
	                    "--rounds.start_delay_ms=4000",
	                    "--train.local_steps=3",
	                    "--state.keep_versions=100",
	                    "--aggregation.secure_phase_ms=8000",
	                    NULL};
	sat_start_coord(&f, cx);
	for (int i = 0; i < N; i++) {
		if (i >= 6) /* gone during unmasking of round 2 */
			setenv("FEDLORA_TEST_SECAGG_DIE", "unmask:2", 1);
		ft_start_node(&f, i, NULL);
	}
	unsetenv("FEDLORA_TEST_SECAGG_DUMP");
	unsetenv("FEDLORA_TEST_SECAGG_DIE");
	int failed = ft_wait_committed(&f, 1, 240000) != 1;
	/* round 2: two nodes die on receiving the unmask request */
	if (!failed)
		failed = ft_wait_committed(&f, 2, 240000) != 2;
	if (!failed) {
		int s6 = ft_wait_pid(f.node[6], 10000), s7 = ft_wait_pid(f.node[7], 10000);
		f.node[6] = f.node[7] = 0;
		print_message("nodes 7 and 8 ended with status %d and %d (137 = SIGKILL)\n", s6,
		              s7);
		failed = s6 != 128 + SIGKILL || s7 != 128 + SIGKILL;
	}
	/* round 3: six participants, two more killed: beyond the threshold */
	if (!failed)
		failed = !ft_wait_log(&f, "coordinator.log", "round 3: secure", 1, 60000);
	if (!failed) {
		clk_sleep_ms(150);
		ft_stop(&f.node[4], SIGKILL, 2000);
		ft_stop(&f.node[5], SIGKILL, 2000);
		ft_rounds jr;
		uint64_t end = clk_mono_ms() + 120000;
		do {
			clk_sleep_ms(200);
			jr = ft_journal(&f);
		} while (jr.abandoned < 1 && clk_mono_ms() < end);
		failed = jr.abandoned < 1;
	}
	sat_stop(&f, failed, "the secure federation did not get through its three rounds");
	ft_rounds jr = ft_journal(&f);
	assert_int_equal(jr.committed, 2);
	assert_true(jr.participants[0] >= 6);
	assert_int_equal(jr.participants[1], N); /* all masked inputs are in the sum */
	assert_true(jr.abandoned >= 1);
	assert_int_equal(jr.last_version, 2);
	assert_true(ft_log_has(&f, "coord-state/journal.jsonl", "secure aggregation"));
	assert_int_equal(ft_count_in_log(&f, "coord-state/journal.jsonl", "\"secure\":true"), 3);
	assert_true(ft_log_has(&f, "coordinator.log", "dropped from the secure round"));
	/* no version past 2 */
	uint8_t sha[3][32];
	for (uint64_t v = 0; v <= 2; v++)
		assert_int_equal(ft_coord_version_sha(&f, v, sha[v], NULL), 0);
	assert_int_not_equal(ft_coord_version_sha(&f, 3, sha[0], NULL), 0);
	assert_int_equal(ft_coord_version_sha(&f, 0, sha[0], NULL), 0);

	assert_int_equal(sat_check_round(&f, 1, N), jr.participants[0]);
	assert_int_equal(sat_check_round(&f, 2, N), N);
	assert_int_equal(ft_count_in_log(&f, "node-07.log", "dying in the unmask phase"), 1);

	/* every node alive in round 3 verified versions 1 and 2 */
	for (int i = 0; i < 4; i++) {
		ft_node_metrics m = ft_node(&f, i);
		int seen = 0;
		for (int k = 0; k < m.globals; k++) {
			if (m.gver[k] < 1 || m.gver[k] > 2)
				continue;
			char hex[65];
			hex_encode(sha[m.gver[k]], 32, hex);
			assert_string_equal(m.gsha[k], hex);
			seen++;
		}
		assert_int_equal(seen, 2);
	}
	ft_cleanup(&f, 0);
}

static void test_refusals(void **state)
{
	(void)state;
	static ft f;
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 3, 0);
	/* check-config: secure + a strategy that needs individual updates */
	char *out = NULL;
	int st = tu_system("'%s' check-config --config '%s' --aggregation.secure=true "
	                   "--aggregation.strategy=trimmed_mean > '%s/cc.txt' 2>&1",
	                   f.coord_bin, ft_path(&f, "coordinator.conf"), f.dir);
	out = ft_read(ft_path(&f, "cc.txt"));
	assert_non_null(out);
	print_message("check-config: %s", out);
	assert_int_not_equal(st, 0);
	assert_non_null(strstr(out, "aggregation.strategy"));
	assert_non_null(strstr(out, "aggregation.secure"));
	free(out);
	st = tu_system("'%s' check-config --config '%s' --aggregation.secure=true "
	               "--aggregation.reject_norm=5 > '%s/cc.txt' 2>&1",
	               f.coord_bin, ft_path(&f, "coordinator.conf"), f.dir);
	out = ft_read(ft_path(&f, "cc.txt"));
	assert_non_null(out);
	assert_int_not_equal(st, 0);
	assert_non_null(strstr(out, "aggregation.reject_norm"));
	assert_non_null(strstr(out, "aggregation.secure"));
	free(out);
	/* a node without the capability is refused at Join */
	const char *cx[] = {"--aggregation.secure=true", "--rounds.min_nodes=3", NULL};
	ft_start_coord(&f, cx);
	setenv("FEDLORA_TEST_NO_SECAGG", "1", 1);
	ft_start_node(&f, 0, NULL);
	unsetenv("FEDLORA_TEST_NO_SECAGG");
	assert_true(ft_wait_log(&f, "coordinator.log", "join refused (secagg)", 1, 30000));
	assert_true(ft_log_has(&f, "coordinator.log", "node-01 does not announce"));
	int ns = ft_wait_pid(f.node[0], 15000);
	f.node[0] = 0;
	print_message("node without secagg exited with %d\n", ns);
	assert_true(ns > 0);
	assert_true(ft_log_has(&f, "node-01.log", "secagg"));
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_refusals, ft_teardown),
	    cmocka_unit_test_teardown(test_secure, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
