/* fileio: atomic writes survive a writer killed at any moment. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"

#include <stdio.h>

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char *g_dir;
static int g_pipe[2];

static int setup(void **state)
{
	(void)state;
	g_dir = tu_mkdtemp();
	return g_dir ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(g_dir);
	free(g_dir);
	return 0;
}

static void path_in(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "%s/%s", g_dir, name);
}

static void test_write_read_roundtrip(void **state)
{
	(void)state;
	char p[512];
	path_in(p, sizeof p, "a.bin");
	const char msg[] = "hello\0world";
	assert_int_equal(file_write_atomic(p, msg, sizeof msg), 0);
	uint8_t *got = NULL;
	size_t n = 0;
	assert_int_equal(file_read_all(p, 1024, &got, &n), 0);
	assert_int_equal(n, sizeof msg);
	assert_memory_equal(got, msg, sizeof msg);
	free(got);
	assert_int_equal(file_read_all(p, 4, &got, &n), FL_ETOOBIG);
	path_in(p, sizeof p, "missing");
	assert_int_equal(file_read_all(p, 4, &got, &n), FL_ENOENT);
}

static void hook_pause(const char *tmp)
{
	(void)tmp;
	char c = 'x';
	if (write(g_pipe[1], &c, 1) != 1)
		_exit(3);
	for (;;)
		pause();
}

/* Kill the writer between fsync and rename: the old content must remain. */
static void test_kill_between_write_and_rename(void **state)
{
	(void)state;
	char p[512];
	path_in(p, sizeof p, "state.bin");
	const char old[] = "old committed state";
	assert_int_equal(file_write_atomic(p, old, sizeof old), 0);
	assert_int_equal(pipe(g_pipe), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		fileio_test_hook = hook_pause;
		static char big[1 << 20];
		memset(big, 'N', sizeof big);
		file_write_atomic(p, big, sizeof big);
		_exit(0);
	}
	char c;
	assert_int_equal(read(g_pipe[0], &c, 1), 1);
	assert_int_equal(kill(pid, SIGKILL), 0);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st));
	close(g_pipe[0]);
	close(g_pipe[1]);
	uint8_t *got = NULL;
	size_t n = 0;
	assert_int_equal(file_read_all(p, 1 << 22, &got, &n), 0);
	assert_int_equal(n, sizeof old);
	assert_memory_equal(got, old, sizeof old);
	free(got);
}

/* Kill writers at random moments during large writes: the file is always
 * either entirely the old version or entirely the new one. */
static void test_kill_at_random_moments(void **state)
{
	(void)state;
	char p[512];
	path_in(p, sizeof p, "random.bin");
	size_t sz = 4u << 20;
	uint8_t *a = malloc(sz), *b = malloc(sz);
	memset(a, 'A', sz);
	memset(b, 'B', sz);
	assert_int_equal(file_write_atomic(p, a, sz), 0);
	uint64_t rs = 42;
	int saw_new = 0, saw_old = 0;
	for (int i = 0; i < 12; i++) {
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			for (;;) {
				file_write_atomic(p, (i & 1) ? a : b, sz);
				file_write_atomic(p, (i & 1) ? b : a, sz);
			}
		}
		usleep((useconds_t)(1000 + tu_rand(&rs) % 40000));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		uint8_t *got = NULL;
		size_t n = 0;
		assert_int_equal(file_read_all(p, sz * 2, &got, &n), 0);
		assert_int_equal(n, sz);
		uint8_t first = got[0];
		assert_true(first == 'A' || first == 'B');
		for (size_t k = 0; k < n; k += 4093)
			assert_int_equal(got[k], first);
		assert_int_equal(got[n - 1], first);
		saw_new += first == 'B';
		saw_old += first == 'A';
		free(got);
	}
	assert_int_equal(saw_new + saw_old, 12);
	free(a);
	free(b);
}

static void test_map_and_mkdirs(void **state)
{
	(void)state;
	char p[512];
	path_in(p, sizeof p, "x/y/z");
	assert_int_equal(file_mkdirs(p), 0);
	assert_true(file_exists(p));
	path_in(p, sizeof p, "x/y/z/m.bin");
	assert_int_equal(file_write_atomic(p, "abc", 3), 0);
	file_map m;
	assert_int_equal(file_map_open(p, &m), 0);
	assert_int_equal(m.n, 3);
	assert_memory_equal(m.p, "abc", 3);
	file_map_close(&m);
	assert_int_equal(file_append_sync(p, "de", 2), 0);
	uint8_t *got;
	size_t n;
	assert_int_equal(file_read_all(p, 100, &got, &n), 0);
	assert_int_equal(n, 5);
	assert_memory_equal(got, "abcde", 5);
	free(got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_write_read_roundtrip),
	    cmocka_unit_test(test_kill_between_write_and_rename),
	    cmocka_unit_test(test_kill_at_random_moments),
	    cmocka_unit_test(test_map_and_mkdirs),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
