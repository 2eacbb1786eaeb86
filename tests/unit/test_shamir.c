/* Unit tests for shamir: field arithmetic against 128-bit integer
 * arithmetic, a hand-computed vector, reconstruction from many different
 * subsets (each subset an independent check of the others), the interpolated
 * value at further points, and refusal of bad arguments. */
#include "testutil.h"

#include "err.h"
#include "shamir.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define P SHAMIR_P

static void test_field(void **state)
{
	(void)state;
	uint64_t rs = 7;
	for (int i = 0; i < 20000; i++) {
		uint64_t a = tu_rand(&rs) % P, b = tu_rand(&rs) % P;
		unsigned __int128 prod = (unsigned __int128)a * b;
		assert_int_equal(shamir_mul(a, b), (uint64_t)(prod % P));
		assert_int_equal(shamir_add(a, b), (a + b) % P);
		assert_int_equal(shamir_sub(a, b), (a + P - b) % P);
		if (a) {
			assert_int_equal(shamir_mul(a, shamir_inv(a)), 1);
		}
	}
	/* edges: p - 1 is -1 */
	assert_int_equal(shamir_mul(P - 1, P - 1), 1);
	assert_int_equal(shamir_add(P - 1, 1), 0);
	assert_int_equal(shamir_sub(0, 1), P - 1);
}

/* f(x) = 5 + 3x + 2x^2: f(1) = 10, f(2) = 19, f(3) = 32, f(4) = 49 (by hand).
 * Lagrange weights at 0 for x = 1, 2, 3 are 3, -3, 1. */
static void test_hand_vector(void **state)
{
	(void)state;
	uint64_t secret = 5, coef[2] = {3, 2}, xs[4] = {1, 2, 3, 4}, sh[4];
	assert_int_equal(shamir_split_coef(&secret, 1, 3, coef, xs, 4, sh), 0);
	assert_int_equal(sh[0], 10);
	assert_int_equal(sh[1], 19);
	assert_int_equal(sh[2], 32);
	assert_int_equal(sh[3], 49);
	uint64_t w[3];
	assert_int_equal(shamir_weights(xs, 3, w), 0);
	assert_int_equal(w[0], 3);
	assert_int_equal(w[1], P - 3);
	assert_int_equal(w[2], 1);
	uint64_t out;
	assert_int_equal(shamir_combine(xs, sh, 3, 1, &out), 0);
	assert_int_equal(out, 5);
	/* from shares 2, 3, 4: weights 6, -8, 3 -> 6*19 - 8*32 + 3*49 = 5 */
	uint64_t xs2[3] = {2, 3, 4}, ys2[3] = {19, 32, 49};
	assert_int_equal(shamir_combine(xs2, ys2, 3, 1, &out), 0);
	assert_int_equal(out, 5);
	/* the polynomial through x = 1, 2, 3 at x = 4 is f(4) */
	assert_int_equal(shamir_interpolate_at(xs, sh, 3, 1, 4, &out), 0);
	assert_int_equal(out, 49);
	/* a wrong share moves the value at 4 */
	uint64_t bad[3] = {10, 20, 32};
	assert_int_equal(shamir_interpolate_at(xs, bad, 3, 1, 4, &out), 0);
	assert_int_not_equal(out, 49);
}

static void test_subsets(void **state)
{
	(void)state;
	enum { N = 20, T = 7, L = 8 };
	uint64_t secret[L], xs[N], sh[N * L], rs = 42;
	for (int e = 0; e < L; e++)
		secret[e] = e == 0 ? P - 1 : (e == 1 ? 0 : tu_rand(&rs) % P);
	for (int h = 0; h < N; h++)
		xs[h] = 1000 + 37 * (uint64_t)h; /* arbitrary distinct x */
	assert_int_equal(shamir_split(secret, L, T, xs, N, sh), 0);
	/* 50 different random T-subsets each give the secret */
	for (int trial = 0; trial < 50; trial++) {
		uint32_t idx[N];
		for (int h = 0; h < N; h++)
			idx[h] = (uint32_t)h;
		for (int a = 0; a < T; a++) {
			int b = a + (int)(tu_rand(&rs) % (uint64_t)(N - a));
			uint32_t t = idx[a];
			idx[a] = idx[b];
			idx[b] = t;
		}
		uint64_t sx[T], sy[T * L], out[L];
		for (int a = 0; a < T; a++) {
			sx[a] = xs[idx[a]];
			memcpy(sy + a * L, sh + idx[a] * L, sizeof(uint64_t) * L);
		}
		assert_int_equal(shamir_combine(sx, sy, T, L, out), 0);
		assert_memory_equal(out, secret, sizeof secret);
		/* and predict every other share */
		for (int h = 0; h < N; h++) {
			assert_int_equal(shamir_interpolate_at(sx, sy, T, L, xs[h], out), 0);
			assert_memory_equal(out, sh + h * L, sizeof out);
		}
	}
	/* T - 1 shares do not determine it: the combine of T-1 gives another
	 * value (with overwhelming probability for random coefficients) */
	uint64_t out[L];
	assert_int_equal(shamir_combine(xs, sh, T - 1, L, out), 0);
	assert_true(memcmp(out, secret, sizeof out) != 0);
}

/* Large t: the barycentric evaluation against Horner on the known
 * polynomial (an independent computation), at shares and at random x. */
static void test_large_t(void **state)
{
	(void)state;
	enum { T = 600, N = 900 };
	uint64_t *coef = malloc(T * sizeof *coef), *xs = malloc(N * sizeof *xs);
	uint64_t *sh = malloc(N * sizeof *sh), rs = 99, secret;
	assert_true(coef && xs && sh);
	for (int j = 0; j < T; j++)
		coef[j] = tu_rand(&rs) % SHAMIR_P;
	secret = coef[0];
	for (int h = 0; h < N; h++)
		xs[h] = 5 + 3 * (uint64_t)h;
	assert_int_equal(shamir_split_coef(&secret, 1, T, coef + 1, xs, N, sh), 0);
	for (int h = 0; h < N; h += 97)
		assert_int_equal(sh[h], shamir_eval(coef, T, xs[h]));
	/* from the last T holders */
	uint64_t out;
	assert_int_equal(shamir_combine(xs + N - T, sh + N - T, T, 1, &out), 0);
	assert_int_equal(out, secret);
	uint64_t w[T], scratch[3 * T];
	assert_int_equal(shamir_bary_weights(xs + N - T, T, w, scratch), 0);
	for (int i = 0; i < 200; i++) {
		uint64_t x = tu_rand(&rs) % SHAMIR_P;
		assert_int_equal(
		    shamir_bary_eval(xs + N - T, w, sh + N - T, T, 1, x, &out, scratch), 0);
		assert_int_equal(out, shamir_eval(coef, T, x));
	}
	free(coef);
	free(xs);
	free(sh);
}

static void test_bad_args(void **state)
{
	(void)state;
	uint64_t s = 1, sh[4], xs[3] = {1, 1, 2}, out;
	assert_int_equal(shamir_split(&s, 1, 2, xs, 3, sh), FL_EINVAL); /* repeated x */
	uint64_t xz[2] = {0, 1};
	assert_int_equal(shamir_split(&s, 1, 2, xz, 2, sh), FL_EINVAL); /* x = 0 */
	uint64_t xp[2] = {1, P};
	assert_int_equal(shamir_split(&s, 1, 2, xp, 2, sh), FL_EINVAL); /* x = p */
	uint64_t ok[2] = {1, 2};
	assert_int_equal(shamir_split(&s, 1, 3, ok, 2, sh), FL_EINVAL); /* t > holders */
	assert_int_equal(shamir_split(&s, 1, 0, ok, 2, sh), FL_EINVAL);
	uint64_t big = P;
	assert_int_equal(shamir_split(&big, 1, 2, ok, 2, sh), FL_EINVAL); /* secret >= p */
	uint64_t ys[2] = {1, P};
	assert_int_equal(shamir_combine(ok, ys, 2, 1, &out), FL_EINVAL); /* share >= p */
	assert_int_equal(shamir_combine(xs, ys, 2, 1, &out), FL_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_field),    cmocka_unit_test(test_hand_vector),
	    cmocka_unit_test(test_subsets),  cmocka_unit_test(test_large_t),
	    cmocka_unit_test(test_bad_args),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
