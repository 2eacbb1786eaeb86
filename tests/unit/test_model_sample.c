/* test_model_sample — the engine's RNG and next-token sampler: determinism,
 * normal moments, greedy/top-k/temperature frequencies against the exact
 * softmax probabilities (fixed seeds, so the statistical bounds are checked
 * once and cannot flake). */
#include "testutil.h"

#include "model/sample.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void test_rng(void **state)
{
	(void)state;
	sample_rng a, b;
	sample_seed(&a, 42);
	sample_seed(&b, 42);
	for (int i = 0; i < 100; i++)
		assert_int_equal(sample_u64(&a), sample_u64(&b));
	sample_seed(&b, 43);
	assert_true(sample_u64(&a) != sample_u64(&b));
	/* N(0,1) moments over 200k draws: |mean| < 0.01, |var - 1| < 0.02 */
	sample_seed(&a, 7);
	double s = 0, s2 = 0;
	const int n = 200000;
	for (int i = 0; i < n; i++) {
		double x = sample_normal(&a);
		s += x;
		s2 += x * x;
	}
	double mean = s / n, var = s2 / n - mean * mean;
	printf("  normal: mean %.4f var %.4f over %d draws\n", mean, var, n);
	assert_true(fabs(mean) < 0.01);
	assert_true(fabs(var - 1.0) < 0.02);
	for (int i = 0; i < 1000; i++) {
		double u = sample_uniform(&a);
		assert_true(u >= 0.0 && u < 1.0);
	}
}

static void test_greedy(void **state)
{
	(void)state;
	float lg[7] = {0.1f, 2.0f, -1.0f, 3.5f, 3.5f, 0.0f, -9.0f};
	float work[14];
	sample_rng r;
	sample_seed(&r, 1);
	assert_int_equal(sample_token(lg, 7, 0.0f, 0, &r, work), 3); /* lowest id of ties */
	assert_int_equal(sample_token(lg, 7, -1.0f, 5, &r, work), 3);
	/* top_k = 1 is greedy at any temperature (3 and 4 tie: lower id ranks first) */
	for (int i = 0; i < 50; i++)
		assert_int_equal(sample_token(lg, 7, 5.0f, 1, &r, work), 3);
	lg[2] = NAN;
	assert_int_equal(sample_token(lg, 7, 1.0f, 0, &r, work), -1);
	assert_int_equal(sample_token(lg, 0, 1.0f, 0, &r, work), -1);
}

static void freq_case(float temp, int top_k)
{
	enum { V = 9, DRAWS = 200000 };
	const float lg[V] = {0.5f, -0.3f, 1.2f, 0.9f, -2.0f, 1.1f, 0.0f, 0.7f, -0.6f};
	float work[2 * V];
	int cnt[V] = {0};
	sample_rng r;
	sample_seed(&r, 12345);
	for (int i = 0; i < DRAWS; i++) {
		int t = sample_token(lg, V, temp, top_k, &r, work);
		assert_true(t >= 0 && t < V);
		cnt[t]++;
	}
	/* exact distribution: softmax(lg/temp) over the top_k largest */
	int k = top_k <= 0 || top_k >= V ? V : top_k;
	int keep[V] = {0};
	for (int j = 0; j < k; j++) {
		int best = -1;
		for (int i = 0; i < V; i++)
			if (!keep[i] && (best < 0 || lg[i] > lg[best]))
				best = i;
		keep[best] = 1;
	}
	double z = 0, p[V];
	for (int i = 0; i < V; i++)
		z += keep[i] ? exp(lg[i] / temp) : 0.0;
	double worst = 0;
	for (int i = 0; i < V; i++) {
		p[i] = keep[i] ? exp(lg[i] / temp) / z : 0.0;
		double f = (double)cnt[i] / DRAWS, e = fabs(f - p[i]);
		worst = e > worst ? e : worst;
		if (!keep[i])
			assert_int_equal(cnt[i], 0);
	}
	printf("  temp %.2f top-k %d: max |freq - p| = %.4f over %d draws\n", temp, top_k, worst,
	       DRAWS);
	assert_true(worst < 0.006);
}

static void test_frequencies(void **state)
{
	(void)state;
	freq_case(1.0f, 0);
	freq_case(1.0f, 3);
	freq_case(0.5f, 4);
	freq_case(2.0f, 100);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rng),
	    cmocka_unit_test(test_greedy),
	    cmocka_unit_test(test_frequencies),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
