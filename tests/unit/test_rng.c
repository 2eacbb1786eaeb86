/* rng: reproducibility and distribution moments against their known values. */
#include "testutil.h"

#include "rng.h"

#include <math.h>
#include <stdlib.h>

static void test_reproducible(void **s)
{
	(void)s;
	rng a, b;
	rng_seed(&a, 123);
	rng_seed(&b, 123);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(rng_u64(&a), rng_u64(&b));
	rng_seed(&b, 124);
	assert_int_not_equal(rng_u64(&a), rng_u64(&b));
}

static void test_moments(void **s)
{
	(void)s;
	rng r;
	rng_seed(&r, 7);
	const int n = 200000;
	double su = 0, sn = 0, sn2 = 0;
	long below[10] = {0};
	for (int i = 0; i < n; i++) {
		su += rng_uniform(&r);
		double z = rng_normal(&r);
		sn += z;
		sn2 += z * z;
		below[rng_below(&r, 10)]++;
	}
	/* Standard errors: uniform mean 1/sqrt(12 n) = 6.5e-4; normal mean
	 * 2.2e-3, variance ~3.2e-3. Tolerances are ~5 standard errors. */
	assert_true(fabs(su / n - 0.5) < 0.004);
	assert_true(fabs(sn / n) < 0.012);
	assert_true(fabs(sn2 / n - 1.0) < 0.016);
	for (int k = 0; k < 10; k++)
		assert_true(labs(below[k] - n / 10) < 700); /* sd ~134 */
	/* Gamma(a): mean a, variance a. */
	const double shapes[3] = {0.3, 1.0, 4.5};
	for (int k = 0; k < 3; k++) {
		double a = shapes[k], m = 0, v = 0;
		for (int i = 0; i < n; i++) {
			double g = rng_gamma(&r, a);
			assert_true(g >= 0);
			m += g;
			v += g * g;
		}
		m /= n;
		v = v / n - m * m;
		assert_true(fabs(m - a) < 5 * sqrt(a / n));
		assert_true(fabs(v - a) < 0.05 * a + 0.01);
	}
}

static void test_shuffle_is_permutation(void **s)
{
	(void)s;
	rng r;
	rng_seed(&r, 1);
	uint32_t a[1000];
	for (uint32_t i = 0; i < 1000; i++)
		a[i] = i;
	rng_shuffle_u32(&r, a, 1000);
	int seen[1000] = {0}, moved = 0;
	for (uint32_t i = 0; i < 1000; i++) {
		seen[a[i]]++;
		moved += a[i] != i;
	}
	for (int i = 0; i < 1000; i++)
		assert_int_equal(seen[i], 1);
	assert_true(moved > 900);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_reproducible),
	    cmocka_unit_test(test_moments),
	    cmocka_unit_test(test_shuffle_is_permutation),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
