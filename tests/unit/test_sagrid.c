/* Unit tests for sagrid (the common integer grid of secure rounds),
 * checked against a double-precision reference computed here:
 *  - every level is floor or ceil of (clipped value / step), clamped to
 *    +-L, and the residual is exactly what was not sent;
 *  - stochastic rounding is unbiased (mean of many encodings within 4
 *    standard errors of the value);
 *  - the L2 clip scales to C;
 *  - the weight folds in as w / w_max before rounding, the last element is
 *    the weight, negative levels wrap mod 2^m and decode back; the decoded
 *    sum of three nodes equals w_max * sum_i level_i * step computed in
 *    double, and divided by the weight sum approximates the weighted mean;
 *  - the steps (initial and from a mean) follow their documented formulas;
 *  - sag_check_sum accepts honest sums and refuses out-of-range ones. */
#include "testutil.h"

#include "err.h"
#include "rng.h"
#include "sagrid.h"
#include "tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static tensor *mk(tset *s, const char *name, uint64_t rows, uint64_t cols, double scale,
                  uint64_t seed)
{
	uint64_t shape[2] = {rows, cols};
	tensor *t = NULL;
	assert_int_equal(tset_insert(s, name, 2, shape, NULL, &t), 0);
	rng r;
	rng_seed(&r, seed);
	for (size_t k = 0; k < t->n; k++)
		t->data[k] = (float)(scale * rng_normal(&r));
	return t;
}

static void test_levels(void **state)
{
	(void)state;
	assert_int_equal(sag_levels(8), 127);
	assert_int_equal(sag_levels(4), 7);
	assert_int_equal(sag_levels(2), 1);
	assert_int_equal(sag_levels(1), 0);
	assert_int_equal(sag_signed(0xffff, 16), -1);
	assert_int_equal(sag_signed(0x7fff, 16), 32767);
	assert_int_equal(sag_signed(0x8000, 16), -32768);
	assert_int_equal(sag_signed(0xffffffffu, 32), -1);
}

/* Levels, residuals, clip and weights against the reference. */
static void test_encode_reference(void **state)
{
	(void)state;
	tset *s = NULL, *r = NULL;
	assert_int_equal(tset_new(&s), 0);
	assert_int_equal(tset_new(&r), 0);
	const tensor *d[2] = {mk(s, "a", 8, 16, 0.02, 1), mk(s, "b", 16, 8, 0.05, 2)};
	tensor *res[2] = {mk(r, "a", 8, 16, 0.001, 3), mk(r, "b", 16, 8, 0.001, 4)};
	float r0[2][128];
	memcpy(r0[0], res[0]->data, sizeof r0[0]);
	memcpy(r0[1], res[1]->data, sizeof r0[1]);
	float steps[2] = {0.004f, 0.01f};
	uint32_t bits = 4, L = 7, w = 5, w_max = 7;
	uint32_t m = 4 + 3 + 1; /* b + ceil(log2 n) + 1 for n 8 */
	double ss = 0;
	for (int t = 0; t < 2; t++)
		for (size_t k = 0; k < d[t]->n; k++) {
			double v = (double)d[t]->data[k] + r0[t][k];
			ss += v * v;
		}
	double nrm = sqrt(ss), clip = nrm / 2; /* forces a clip by 1/2 */
	uint32_t x[257];
	double got_norm = 0;
	assert_int_equal(sag_encode(d, res, 2, steps, clip, bits, w, w_max, m, 99, x, &got_norm),
	                 0);
	assert_true(fabs(got_norm - nrm) <= 1e-9 * nrm);
	double scale = clip / nrm, fold = (double)w / w_max;
	size_t e = 0;
	for (int t = 0; t < 2; t++)
		for (size_t k = 0; k < d[t]->n; k++, e++) {
			double v = ((double)d[t]->data[k] + r0[t][k]) * scale;
			int64_t lv = sag_signed(x[e], m);
			double q = v * fold / steps[t];
			double lo = fmax(floor(q), -(double)L), hi = fmin(ceil(q), (double)L);
			if (q > L)
				lo = hi = L;
			if (q < -(double)L)
				lo = hi = -(double)L;
			assert_true((double)lv >= lo && (double)lv <= hi);
			/* residual: what was not sent (float storage of a double) */
			double want = v - (double)lv * steps[t] / fold;
			assert_true(fabs((double)res[t]->data[k] - want) <=
			            1e-6 * fabs(want) + 1e-12);
		}
	assert_int_equal(x[256], w);
	tset_free(s);
	tset_free(r);
}

/* Unbiased stochastic rounding: E[level * step] = value. */
static void test_unbiased(void **state)
{
	(void)state;
	tset *s = NULL;
	assert_int_equal(tset_new(&s), 0);
	tensor *t = mk(s, "a", 4, 8, 0.01, 5);
	const tensor *d[1] = {t};
	float step = 0.007f;
	uint32_t x[33], m = 17;
	double sum[32] = {0};
	int trials = 4000;
	for (int i = 0; i < trials; i++) {
		assert_int_equal(
		    sag_encode(d, NULL, 1, &step, 1e9, 4, 1, 1, m, (uint64_t)i + 1, x, NULL), 0);
		for (int k = 0; k < 32; k++)
			sum[k] += (double)sag_signed(x[k], m) * step;
	}
	for (int k = 0; k < 32; k++) {
		double mean = sum[k] / trials, v = t->data[k];
		/* one rounding has variance <= step^2 / 4 */
		double se = step / 2 / sqrt((double)trials);
		if (fabs(v) < 7 * step) /* inside the range: unbiased */
			assert_true(fabs(mean - v) <= 4 * se);
	}
	tset_free(s);
}

/* Three nodes: the decoded sum is w_max * sum_i level_i * step (double),
 * and over the weight sum it is the weighted mean within the rounding. */
static void test_sum_decode(void **state)
{
	(void)state;
	float steps[2] = {0.003f, 0.02f};
	uint32_t m = 8 + 2 + 1, x[3][257], sum[257], w_max = 100;
	int64_t ref[256] = {0};
	double wmean[256] = {0};
	memset(sum, 0, sizeof sum);
	uint32_t w[3] = {1, 100, 77};
	for (int i = 0; i < 3; i++) {
		tset *s = NULL;
		assert_int_equal(tset_new(&s), 0);
		const tensor *d[2] = {mk(s, "a", 8, 16, 0.01, 10 + (uint64_t)i),
		                      mk(s, "b", 16, 8, 0.03, 20 + (uint64_t)i)};
		assert_int_equal(
		    sag_encode(d, NULL, 2, steps, 1e9, 8, w[i], w_max, m, 7, x[i], NULL), 0);
		for (int e = 0; e < 256; e++)
			wmean[e] += w[i] * (double)d[e < 128 ? 0 : 1]->data[e % 128] / 178.0;
		for (int e = 0; e < 257; e++) {
			sum[e] = (sum[e] + x[i][e]) & ((1u << m) - 1);
			if (e < 256)
				ref[e] += sag_signed(x[i][e], m);
		}
		tset_free(s);
	}
	assert_int_equal(sag_check_sum(sum, 257, m, 8, 3, w_max, NULL, 0), 0);
	tset *o = NULL;
	assert_int_equal(tset_new(&o), 0);
	tensor *out[2] = {mk(o, "a", 8, 16, 0, 1), mk(o, "b", 16, 8, 0, 1)};
	uint64_t ws = 0;
	assert_int_equal(sag_decode(sum, m, w_max, steps, out, 2, &ws), 0);
	assert_int_equal(ws, 178);
	double err = 0;
	for (int e = 0; e < 256; e++) {
		int t = e < 128 ? 0 : 1;
		double want = (double)ref[e] * steps[t] * w_max;
		double got = out[t]->data[e % 128];
		assert_true(fabs(got - want) <= 1e-6 * fabs(want) + 1e-12);
		/* the weighted mean, within the rounding: under one step per node,
		 * scaled back by w_max / W */
		double dev = fabs(got / 178.0 - wmean[e]);
		assert_true(dev <= 3 * steps[t] * w_max / 178.0 + 1e-9);
		err += dev;
	}
	print_message("weighted mean from the grid: mean abs error %.3g\n", err / 256);
	/* out of range: a weight sum of 0, an element past n * L */
	uint32_t bad[257];
	memcpy(bad, sum, sizeof bad);
	bad[256] = 0;
	char why[160];
	assert_int_equal(sag_check_sum(bad, 257, m, 8, 3, w_max, why, sizeof why), FL_EPROTO);
	memcpy(bad, sum, sizeof bad);
	bad[5] = 3 * 127 + 1;
	assert_int_equal(sag_check_sum(bad, 257, m, 8, 3, w_max, why, sizeof why), FL_EPROTO);
	print_message("refusal: %s\n", why);
	tset_free(o);
}

static void test_steps(void **state)
{
	(void)state;
	size_t numel[2] = {100, 300};
	float st[2];
	assert_int_equal(sag_steps_initial(numel, 2, 2.0, 4.0, 4, st), 0);
	double want = 4.0 * 2.0 / sqrt(400.0) / 7;
	assert_true(fabs(st[0] - want) <= 1e-6 * want && st[1] == st[0]);
	assert_int_equal(sag_steps_initial(numel, 2, 0, 4.0, 4, st), FL_EINVAL);
	tset *s = NULL;
	assert_int_equal(tset_new(&s), 0);
	tensor *a = mk(s, "a", 10, 10, 0, 1), *b = mk(s, "b", 10, 30, 0, 1);
	for (size_t k = 0; k < a->n; k++)
		a->data[k] = (k % 2) ? 0.03f : -0.03f; /* RMS 0.03 */
	const tensor *mt[2] = {a, b};                  /* b all zero: the floor */
	assert_int_equal(sag_steps_from_mean(mt, 2, 2.0, 4.0, 4, st), 0);
	assert_true(fabs(st[0] - 4.0 * 0.03 / 7) <= 1e-6);
	assert_true(fabs(st[1] - want / 64) <= 1e-6 * want);
	tset_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_levels),   cmocka_unit_test(test_encode_reference),
	    cmocka_unit_test(test_unbiased), cmocka_unit_test(test_sum_decode),
	    cmocka_unit_test(test_steps),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
