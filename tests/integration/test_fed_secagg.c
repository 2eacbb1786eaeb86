/* Secure aggregation end to end: one coordinator and eight nodes as real
 * processes on 127.0.0.1 over mutual TLS with aggregation.secure = true.
 *
 * Both the coordinator and the nodes run with FEDLORA_TEST_SECAGG_DUMP: the
 * coordinator writes every masked input it receives and each unmasked sum,
 * the nodes write their grid vector before masking. The test then checks:
 *  - round 1 (every node joined by then, at least six) and round 2 (two nodes SIGKILLed as soon as
 *    the round starts) commit; the unmasked sum equals, bit for bit, the
 *    plaintext sum mod 2^m of the survivors' integer vectors (the same
 *    round without masks), and every surviving node verified every
 *    committed version's SHA-256 against the coordinator's file;
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

#define N 8

/* Reads a dump of `dim` little-endian u32 values (NULL if absent). */
static uint32_t *read_u32(const char *path, size_t dim)
{
	uint8_t *b = NULL;
	size_t n = 0;
	if (file_read_all(path, 64u << 20, &b, &n) != 0)
		return NULL;
	if (n != dim * 4) {
		free(b);
		return NULL;
	}
	uint32_t *x = malloc(dim * sizeof *x);
	for (size_t e = 0; e < dim; e++)
		x[e] = (uint32_t)b[4 * e] | (uint32_t)b[4 * e + 1] << 8 |
		       (uint32_t)b[4 * e + 2] << 16 | (uint32_t)b[4 * e + 3] << 24;
	free(b);
	return x;
}

/* Unpacks m-bit little-endian-bit-order elements (independent of the
 * library's sa_unpack). */
static uint32_t *unpack(const uint8_t *p, size_t len, size_t dim, uint32_t m)
{
	if (len != (dim * m + 7) / 8)
		return NULL;
	uint32_t *x = calloc(dim, sizeof *x);
	for (size_t e = 0; e < dim; e++)
		for (uint32_t j = 0; j < m; j++) {
			size_t bit = e * m + j;
			x[e] |= (uint32_t)((p[bit / 8] >> (bit % 8)) & 1) << j;
		}
	return x;
}

/* Chi-square of the top 8 bits of m-bit residues against uniform (255
 * degrees of freedom: mean 255, sd 22.6; 340 is beyond the 99.99th
 * percentile). */
static double chi2_top8(const uint32_t *x, size_t n, uint32_t m)
{
	double cnt[256] = {0};
	for (size_t e = 0; e < n; e++)
		cnt[(x[e] >> (m - 8)) & 255]++;
	double ex = (double)n / 256, c = 0;
	for (int b = 0; b < 256; b++)
		c += (cnt[b] - ex) * (cnt[b] - ex) / ex;
	return c;
}
#define CHI2_LIMIT 340.0

/* Checks round r's dumps: returns survivors (masked inputs received). */
static int check_round(ft *f, int r)
{
	char *meta = ft_read(ft_path(f, "cdump/r%d-meta.txt", r));
	assert_non_null(meta);
	unsigned m = 0;
	size_t dim = 0;
	assert_int_equal(sscanf(meta, "%u %zu", &m, &dim), 2);
	free(meta);
	/* the bandwidth goal: m <= b + ceil(log2 n) + 2 = 4 + 3 + 2 for n <= 8
	 * (the weight costs no bits: it is folded into the levels) */
	print_message("round %d: m = %u bits per element, %zu elements\n", r, m, dim);
	assert_true(m >= 8 && m <= 9);
	uint32_t *sum = read_u32(ft_path(f, "cdump/r%d-sum.bin", r), dim);
	assert_non_null(sum);
	uint32_t mask = m == 32 ? 0xffffffffu : (1u << m) - 1;
	uint32_t *plain = calloc(dim, sizeof *plain);
	uint32_t *msum = calloc(dim, sizeof *msum);
	int survivors = 0;
	for (int i = 0; i < N; i++) {
		uint8_t *pk = NULL;
		size_t pl = 0;
		if (file_read_all(ft_path(f, "cdump/r%d-masked-%d.bin", r, i), 64u << 20, &pk,
		                  &pl) != 0)
			continue;
		survivors++;
		uint32_t *y = unpack(pk, pl, dim, m);
		free(pk);
		assert_non_null(y);
		uint32_t *x = read_u32(ft_path(f, "ndump/r%d-x-%d.bin", r, i), dim);
		assert_non_null(x);
		double cy = chi2_top8(y, dim - 1, m), cx = chi2_top8(x, dim - 1, m);
		print_message("round %d node index %d: chi2 masked %.1f, plaintext %.1f (limit "
		              "%.0f)\n",
		              r, i, cy, cx, CHI2_LIMIT);
		assert_true(cy < CHI2_LIMIT);
		assert_true(cx > 10 * CHI2_LIMIT);
		size_t same = 0;
		for (size_t e = 0; e < dim; e++) {
			plain[e] = (plain[e] + x[e]) & mask;
			msum[e] = (msum[e] + y[e]) & mask;
			same += x[e] == y[e];
		}
		assert_true(same < dim / 100 + 2);
		free(x);
		free(y);
	}
	/* bit for bit: the unmasked sum is the plaintext sum of the vectors */
	assert_memory_equal(sum, plain, dim * sizeof *sum);
	double cms = chi2_top8(msum, dim - 1, m), cs = chi2_top8(sum, dim - 1, m);
	print_message("round %d: %d masked inputs; chi2 of their sum %.1f, of the unmasked sum "
	              "%.1f; weight sum %u\n",
	              r, survivors, cms, cs, sum[dim - 1]);
	assert_true(cms < CHI2_LIMIT);
	assert_true(cs > 10 * CHI2_LIMIT);
	free(sum);
	free(plain);
	free(msum);
	return survivors;
}

static void test_secure(void **state)
{
	(void)state;
	static ft f;
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, N, 0);
	assert_int_equal(tu_system("mkdir -p '%s/cdump' '%s/ndump'", f.dir, f.dir), 0);
	setenv("FEDLORA_TEST_SECAGG_DUMP", ft_path(&f, "cdump"), 1);
	const char *cx[] = {"--aggregation.secure=true",
	                    "--rounds.min_nodes=6",
	                    "--rounds.start_delay_ms=4000",
	                    "--train.local_steps=3",
	                    "--state.keep_versions=100",
	                    "--aggregation.secure_phase_ms=8000",
	                    NULL};
	ft_start_coord(&f, cx);
	setenv("FEDLORA_TEST_SECAGG_DUMP", ft_path(&f, "ndump"), 1);
	for (int i = 0; i < N; i++)
		ft_start_node(&f, i, NULL);
	unsetenv("FEDLORA_TEST_SECAGG_DUMP");
	int failed = ft_wait_committed(&f, 1, 240000) != 1;
	/* round 2: two nodes killed as soon as it starts */
	if (!failed)
		failed = !ft_wait_log(&f, "coordinator.log", "round 2: secure", 1, 60000);
	if (!failed) {
		clk_sleep_ms(150);
		ft_stop(&f.node[6], SIGKILL, 2000);
		ft_stop(&f.node[7], SIGKILL, 2000);
		failed = ft_wait_committed(&f, 2, 240000) != 2;
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
	for (int i = 0; i < N; i++)
		ft_stop(&f.node[i], SIGTERM, 8000);
	ft_stop(&f.coord, SIGTERM, 8000);
	if (failed) {
		ft_cleanup(&f, 1);
		fail_msg("the secure federation did not get through its three rounds");
	}
	ft_rounds jr = ft_journal(&f);
	assert_int_equal(jr.committed, 2);
	assert_true(jr.participants[0] >= 6);
	assert_int_equal(jr.participants[1], 6);
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

	assert_int_equal(check_round(&f, 1), jr.participants[0]);
	assert_int_equal(check_round(&f, 2), 6);

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
