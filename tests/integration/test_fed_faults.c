/* End to end, with faults, all real processes on 127.0.0.1 over mutual TLS:
 *  - a node killed (SIGKILL) mid-training and restarted rejoins, gets the
 *    right version, and its error-feedback residual survives;
 *  - a node killed during its upload (FEDLORA_TEST_KILL_ON_UPLOAD: the node
 *    SIGKILLs itself once its update is queued in the channel, before it is
 *    flushed, so the coordinator never gets it): the round completes with
 *    the others;
 *  - the coordinator killed (SIGKILL) mid-round and restarted: the nodes
 *    reconnect by themselves and the federation continues from the last
 *    committed version, every node still bit-identical to it;
 *  - a node with a different base model is refused, with a clear message
 *    on both sides, while one with the federation's model (fingerprinted
 *    by the coordinator from the same GGUF) is admitted. */
#include "fedtest.h"

static const char *long_steps(const ft *f)
{
	/* long enough that "mid-training" is a wide window */
	return strcmp(f->trainer, "synth") == 0 ? "--train.local_steps=1500"
	                                        : "--train.local_steps=30";
}

static void test_node_killed_mid_training(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 4, 0);
	const char *cx[] = {"--rounds.max_rounds=3", "--state.keep_versions=100", long_steps(&f),
	                    NULL};
	ft_start_coord(&f, cx);
	for (int i = 0; i < 4; i++)
		ft_start_node(&f, i, NULL);
	int ok = ft_wait_committed(&f, 1, 120000) >= 1 &&
	         ft_wait_log(&f, "node-03.log", "round 2: training", 1, 60000);
	if (!ok) {
		ft_cleanup(&f, 1);
		fail_msg("round 2 never started training on node-03");
	}
	/* the residual node-03 keeps from round 1 */
	tset *res = NULL;
	uint8_t rsha[32];
	char rhex[65], want[128];
	assert_int_equal(st_read_tset(ft_path(&f, "node-03/residual.safetensors"), NULL, &res), 0);
	assert_int_equal(tset_fingerprint(res, rsha), 0);
	tset_free(res);
	hex_encode(rsha, 32, rhex);
	assert_int_equal(ft_stop(&f.node[2], SIGKILL, 5000), 128 + SIGKILL);
	ft_start_node(&f, 2, NULL);
	snprintf(want, sizeof want, "residual of round 1 loaded (sha256 %s)", rhex);
	ok = ft_wait_log(&f, "node-03.log", want, 1, 20000) &&
	     ft_wait_log(&f, "node-03.log", "welcomed as", 2, 30000) &&
	     ft_wait_committed(&f, 3, 180000) >= 3;
	if (!ok) {
		ft_cleanup(&f, 1);
		fail_msg("node-03 did not come back with its residual, or rounds stalled");
	}
	ft_stop_all(&f);
	/* it rejoined holding version 1 and went on to verify version 2 */
	ft_node_metrics m = ft_node(&f, 2);
	assert_true(m.globals >= 3);
	assert_int_equal(m.gver[m.globals - 1], 2);
	for (int i = 0; i < 4; i++)
		ft_check_versions(&f, i);
	assert_true(ft_log_has(&f, "node-03.log", "joining (have version 1"));
	ft_cleanup(&f, 0);
}

static void test_node_killed_mid_upload(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 4, 0);
	const char *cx[] = {"--rounds.max_rounds=3", "--state.keep_versions=100", NULL};
	ft_start_coord(&f, cx);
	for (int i = 0; i < 3; i++)
		ft_start_node(&f, i, NULL);
	/* node-04 dies while its round-2 update is on the wire */
	setenv("FEDLORA_TEST_KILL_ON_UPLOAD", "2", 1);
	ft_start_node(&f, 3, NULL);
	unsetenv("FEDLORA_TEST_KILL_ON_UPLOAD");
	int st = ft_wait_pid(f.node[3], 120000);
	f.node[3] = 0;
	if (st != 128 + SIGKILL || !ft_log_has(&f, "node-04.log", "during the upload of round 2")) {
		ft_cleanup(&f, 1);
		fail_msg("node-04 was not killed during its upload (status %d)", st);
	}
	uint64_t t0 = clk_mono_ms();
	int committed = ft_wait_committed(&f, 2, 60000);
	uint64_t took = clk_mono_ms() - t0;
	if (committed < 2) {
		ft_cleanup(&f, 1);
		fail_msg("round 2 did not complete without node-04");
	}
	ft_rounds r = ft_journal(&f);
	print_message("round 2 committed %llu ms after node-04 died, with %d updates\n",
	              (unsigned long long)took, r.participants[1]);
	assert_int_equal(r.participants[0], 4);
	assert_int_equal(r.participants[1], 3);
	/* back again: it rejoins and round 3 has all four */
	ft_start_node(&f, 3, NULL);
	if (ft_wait_committed(&f, 3, 120000) < 3) {
		ft_cleanup(&f, 1);
		fail_msg("round 3 did not complete");
	}
	r = ft_journal(&f);
	assert_int_equal(r.participants[2], 4);
	ft_stop_all(&f);
	for (int i = 0; i < 4; i++)
		ft_check_versions(&f, i);
	ft_cleanup(&f, 0);
}

static void test_coordinator_restart_mid_round(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 4, 0);
	const char *cx[] = {"--state.keep_versions=100", long_steps(&f), NULL};
	ft_start_coord(&f, cx);
	for (int i = 0; i < 4; i++)
		ft_start_node(&f, i, NULL);
	int ok = ft_wait_committed(&f, 2, 120000) >= 2 &&
	         ft_wait_log(&f, "node-01.log", "round 3: training", 1, 60000);
	if (!ok) {
		ft_cleanup(&f, 1);
		fail_msg("round 3 never started");
	}
	assert_int_equal(ft_stop(&f.coord, SIGKILL, 5000), 128 + SIGKILL);
	ft_rounds before = ft_journal(&f);
	assert_int_equal(before.committed, 2);
	clk_sleep_ms(300);
	ft_start_coord(&f, cx);
	/* the nodes find it again on their own and two more rounds commit */
	ok = ft_wait_committed(&f, 4, 180000) >= 4;
	for (int i = 0; i < 4 && ok; i++) {
		char log[32];
		snprintf(log, sizeof log, "node-%02d.log", i + 1);
		ok = ft_count_in_log(&f, log, "welcomed as") >= 2;
	}
	if (!ok) {
		ft_cleanup(&f, 1);
		fail_msg("the federation did not continue after the coordinator restart");
	}
	ft_stop_all(&f);
	assert_true(ft_log_has(&f, "coordinator.log", "resumed at version 2"));
	ft_rounds after = ft_journal(&f);
	assert_true(after.last_version >= 4);
	for (int i = 0; i < 4; i++) {
		ft_check_versions(&f, i);
		ft_node_metrics m = ft_node(&f, i);
		/* versions arrive in order, none skipped backwards */
		for (int k = 1; k < m.globals; k++)
			assert_true(m.gver[k] >= m.gver[k - 1]);
		assert_true(m.gver[m.globals - 1] >= 3);
	}
	ft_cleanup(&f, 0);
}

static void test_other_base_model_rejected(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 2, 0);
	assert_int_equal(tu_system("'%s' init-model --out '%s/other.gguf' --dim %d --layers %d "
	                           "--heads %d --ffn %d --ctx %d --seed 12 >/dev/null",
	                           f.node_bin, f.dir, FT_DIM, FT_LAYERS, FT_HEADS, FT_FFN, FT_CTX),
	                 0);
	/* The coordinator derives the fingerprint from the GGUF itself here
	 * (and checks it against the configured hex): both sides use the same
	 * definition, so the node with the right model is admitted. */
	char gflag[PATH_MAX + 64];
	snprintf(gflag, sizeof gflag, "--federation.base_gguf=%s/base.gguf", f.dir);
	const char *cx[] = {gflag, NULL};
	ft_start_coord(&f, cx);
	ft_start_node(&f, 0, NULL);
	char flag[PATH_MAX + 64];
	snprintf(flag, sizeof flag, "--model.path=%s/other.gguf", f.dir);
	const char *nx[] = {flag, NULL};
	ft_start_node(&f, 1, nx);
	if (!ft_wait_log(&f, "node-01.log", "welcomed as 'node-01'", 1, 30000)) {
		ft_cleanup(&f, 1);
		fail_msg("node-01 with the federation's base model was not admitted");
	}
	int st = ft_wait_pid(f.node[1], 30000);
	f.node[1] = 0;
	if (st != 1) {
		ft_cleanup(&f, 1);
		fail_msg("node with another base model: exit status %d, expected 1", st);
	}
	/* node side: says what is wrong and what to fix */
	assert_true(ft_log_has(&f, "node-02.log", "base model mismatch"));
	assert_true(ft_log_has(&f, "node-02.log", "differs from the federation's"));
	/* coordinator side: says why it refused whom */
	assert_true(ft_wait_log(&f, "coordinator.log", "base model fingerprint", 1, 5000));
	assert_true(ft_log_has(&f, "coordinator.log", "node-02"));
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_other_base_model_rejected, ft_teardown),
	    cmocka_unit_test_teardown(test_node_killed_mid_upload, ft_teardown),
	    cmocka_unit_test_teardown(test_node_killed_mid_training, ft_teardown),
	    cmocka_unit_test_teardown(test_coordinator_restart_mid_round, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
