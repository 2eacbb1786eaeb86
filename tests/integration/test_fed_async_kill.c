/* Asynchronous buffered aggregation (aggregation.mode = async): kill -9 of
 * the coordinator between a full buffer and its commit (it is paused at the
 * "aggregated" stage of the commit job, FEDLORA_TEST_COMMIT_PAUSE_MS): the
 * version committed before stays on disk and verifies, the lost version was
 * never announced to a node, and a restarted coordinator resumes from the
 * last committed version and goes on, every node holding exactly the
 * coordinator's versions. The buffered updates are lost by contract
 * (docs/COORDINATOR.md). Real processes on 127.0.0.1 over mutual TLS. */
#include "fedtest.h"

static void test_kill9_before_commit(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 4, 0);
	const char *cx[] = {"--aggregation.mode=async", "--aggregation.buffer_size=2",
	                    "--train.local_steps=4", "--state.keep_versions=100", NULL};
	/* every commit stage pauses 1 s: a wide window between the full
	 * buffer (stage "aggregated") and the version on disk */
	setenv("FEDLORA_TEST_COMMIT_PAUSE_MS", "1000", 1);
	ft_start_coord(&f, cx);
	unsetenv("FEDLORA_TEST_COMMIT_PAUSE_MS");
	const char *nx[] = {"--node.eval=false", NULL};
	for (int i = 0; i < 4; i++)
		ft_start_node(&f, i, nx);
	/* version 1 commits; version 2's buffer is full and its commit job is
	 * paused after aggregating: kill -9 there */
	int ok = ft_wait_committed(&f, 1, 120000) >= 1 &&
	         ft_wait_log(&f, "coordinator.log", "commit stage aggregated", 2, 60000);
	if (!ok) {
		ft_cleanup(&f, 1);
		fail_msg("the second commit never started");
	}
	assert_int_equal(ft_stop(&f.coord, SIGKILL, 5000), 128 + SIGKILL);
	ft_rounds before = ft_journal(&f);
	assert_int_equal(before.committed, 1);
	uint8_t c[32];
	assert_int_equal(ft_coord_version_sha(&f, 1, c, NULL), 0); /* v1 verifies */
	assert_true(ft_coord_version_sha(&f, 2, c, NULL) != 0);    /* v2 never written */
	/* nobody was told of a version that is not on disk */
	for (int i = 0; i < 4; i++) {
		ft_node_metrics m = ft_node(&f, i);
		for (int k = 0; k < m.globals; k++)
			assert_true(m.gver[k] <= 1);
	}
	ft_start_coord(&f, cx);
	ok = ft_wait_committed(&f, 4, 120000) >= 4;
	if (!ok) {
		ft_cleanup(&f, 1);
		fail_msg("the federation did not go on after the restart");
	}
	ft_stop_all(&f);
	assert_true(ft_log_has(&f, "coordinator.log", "resumed at version 1"));
	for (int i = 0; i < 4; i++) {
		assert_true(ft_versions_match(&f, i));
		ft_node_metrics m = ft_node(&f, i);
		for (int k = 1; k < m.globals; k++)
			assert_true(m.gver[k] >= m.gver[k - 1]);
	}
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_kill9_before_commit, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
