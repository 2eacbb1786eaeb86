/* One `fedlora-node run` per state directory: a second one with the same
 * state_dir exits 1 at once, naming the directory and the pid of the node
 * that holds it, and leaves the first running; once the first has stopped
 * the directory can be used again. Real processes (no coordinator is
 * needed: a node holds its lock while it tries to connect). */
#include "fedtest.h"

static void test_second_node_refused(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 1, 0);
	ft_start_node(&f, 0, NULL);
	if (!ft_wait_log(&f, "node-01.log", "node starting", 1, 60000)) {
		ft_cleanup(&f, 1);
		fail_msg("the first node did not start");
	}
	pid_t first = f.node[0];
	const char *argv[] = {f.node_bin, "run", "--config", ft_path(&f, "node-01.conf"), NULL};
	pid_t second = ft_spawn(ft_path(&f, "second.log"), argv);
	int st = ft_wait_pid(second, 30000);
	if (st < 0)
		kill(second, SIGKILL), ft_wait_pid(second, 5000);
	assert_int_equal(st, 1); /* runtime failure, README's exit codes */
	char want[PATH_MAX + 128];
	snprintf(want, sizeof want, "node.state_dir %s is in use by another fedlora-node (pid %ld",
	         ft_path(&f, "node-01"), (long)first);
	char *log = ft_read(ft_path(&f, "second.log"));
	assert_non_null(log);
	if (!strstr(log, want))
		fail_msg("second node's log lacks \"%s\":\n%s", want, log);
	/* it stopped before doing anything: no training, no connection */
	assert_null(strstr(log, "node starting"));
	free(log);
	/* the first one is unaffected */
	assert_int_equal(waitpid(first, &st, WNOHANG), 0);
	assert_int_equal(ft_stop(&f.node[0], SIGTERM, 10000), 0);
	/* the lock went with the first process: the directory is free again */
	ft_start_node(&f, 0, NULL);
	assert_true(ft_wait_log(&f, "node-01.log", "node starting", 2, 60000));
	assert_int_equal(ft_stop(&f.node[0], SIGTERM, 10000), 0);
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_second_node_refused, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
