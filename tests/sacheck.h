/* sacheck — checks of a secure round's test dumps for the end-to-end
 * secure-aggregation tests (header-only, static; include after fedtest.h). */
#ifndef FL_SACHECK_H
#define FL_SACHECK_H
#include "fedtest.h"

/* Reads a dump of `dim` little-endian u32 values (NULL if absent). */
static uint32_t *sat_read_u32(const char *path, size_t dim)
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
static uint32_t *sat_unpack(const uint8_t *p, size_t len, size_t dim, uint32_t m)
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
static double sat_chi2_top8(const uint32_t *x, size_t n, uint32_t m)
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

/* Checks round r's dumps (FEDLORA_TEST_SECAGG_DUMP: the coordinator's in
 * cdump/, the nodes' in ndump/): the unmasked sum equals, bit for bit, the
 * plaintext sum mod 2^m of the grid vectors of the nodes whose masked
 * input arrived; each masked vector and their sum pass a chi-square
 * uniformity test, every plaintext vector and the unmasked sum fail it.
 * Returns the number of masked inputs received. */
static int sat_check_round(ft *f, int r, int nnodes)
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
	uint32_t *sum = sat_read_u32(ft_path(f, "cdump/r%d-sum.bin", r), dim);
	assert_non_null(sum);
	uint32_t mask = m == 32 ? 0xffffffffu : (1u << m) - 1;
	uint32_t *plain = calloc(dim, sizeof *plain);
	uint32_t *msum = calloc(dim, sizeof *msum);
	int survivors = 0;
	for (int i = 0; i < nnodes; i++) {
		uint8_t *pk = NULL;
		size_t pl = 0;
		if (file_read_all(ft_path(f, "cdump/r%d-masked-%d.bin", r, i), 64u << 20, &pk,
		                  &pl) != 0)
			continue;
		survivors++;
		uint32_t *y = sat_unpack(pk, pl, dim, m);
		free(pk);
		assert_non_null(y);
		uint32_t *x = sat_read_u32(ft_path(f, "ndump/r%d-x-%d.bin", r, i), dim);
		assert_non_null(x);
		double cy = sat_chi2_top8(y, dim - 1, m), cx = sat_chi2_top8(x, dim - 1, m);
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
	double cms = sat_chi2_top8(msum, dim - 1, m), cs = sat_chi2_top8(sum, dim - 1, m);
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

/* Starts the coordinator with flags cx and FEDLORA_TEST_SECAGG_DUMP = cdump/,
 * then leaves FEDLORA_TEST_SECAGG_DUMP = ndump/ set for the nodes. */
static void sat_start_coord(ft *f, const char *const *cx)
{
	assert_int_equal(tu_system("mkdir -p '%s/cdump' '%s/ndump'", f->dir, f->dir), 0);
	setenv("FEDLORA_TEST_SECAGG_DUMP", ft_path(f, "cdump"), 1);
	ft_start_coord(f, cx);
	setenv("FEDLORA_TEST_SECAGG_DUMP", ft_path(f, "ndump"), 1);
}

/* Stops the federation (nodes, then the coordinator); when failed, keeps
 * its files and fails the test with `what`. */
static void sat_stop(ft *f, int failed, const char *what)
{
	for (int i = 0; i < f->nnodes; i++)
		ft_stop(&f->node[i], SIGTERM, 8000);
	ft_stop(&f->coord, SIGTERM, 8000);
	if (failed) {
		ft_cleanup(f, 1);
		fail_msg("%s", what);
	}
}

#endif
