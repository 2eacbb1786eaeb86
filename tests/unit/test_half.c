/* half: f16/bf16 conversions against an independent double-precision
 * reference (nearest representable value found by search, ties to even). */
#include "testutil.h"

#include "half.h"

#include <math.h>
#include <string.h>

static double pos_half[31745]; /* all finite non-negative halves, ascending */

static void build_table(void)
{
	for (int h = 0; h <= 0x7c00 - 1; h++) {
		int e = h >> 10, m = h & 0x3ff;
		pos_half[h] = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
	}
}

/* Reference f32 -> f16 bits using doubles only. */
static uint16_t ref_from(float f)
{
	double a = fabs((double)f);
	uint16_t sign = signbit(f) ? 0x8000 : 0;
	/* Overflow threshold: halfway between 65504 and 65536 rounds to Inf. */
	if (a >= 65520.0)
		return sign | 0x7c00;
	int lo = 0, hi = 0x7bff;
	while (lo < hi) { /* largest index with value <= a */
		int mid = (lo + hi + 1) / 2;
		if (pos_half[mid] <= a)
			lo = mid;
		else
			hi = mid - 1;
	}
	int best = lo;
	if (lo < 0x7bff) {
		double dl = a - pos_half[lo], dh = pos_half[lo + 1] - a;
		if (dh < dl || (dh == dl && (lo & 1)))
			best = lo + 1;
	}
	return (uint16_t)(sign | best);
}

static void test_f16_all_halves_roundtrip(void **s)
{
	(void)s;
	build_table();
	for (uint32_t h = 0; h < 65536; h++) {
		float f = half_to_f32((uint16_t)h);
		uint32_t e = (h >> 10) & 0x1f;
		if (e == 31) {
			if (h & 0x3ff)
				assert_true(isnan(f));
			else
				assert_true(isinf(f));
			continue;
		}
		double want = pos_half[h & 0x7fff] * ((h & 0x8000) ? -1 : 1);
		if ((double)f != want)
			fail_msg("half %04x -> %g, want %g", h, (double)f, want);
		assert_int_equal(half_from_f32(f), h);
	}
}

static void test_f16_random_floats(void **s)
{
	(void)s;
	build_table();
	uint64_t rs = 99;
	for (int i = 0; i < 300000; i++) {
		uint32_t u = (uint32_t)tu_rand(&rs);
		/* bias towards the half range: exponents 100..150 */
		if (i & 1)
			u = (u & 0x807fffffu) | ((100u + (u >> 24) % 51) << 23);
		float f;
		memcpy(&f, &u, 4);
		if (isnan(f))
			continue;
		uint16_t got = half_from_f32(f), want = ref_from(f);
		if (isinf(f))
			want = (uint16_t)((signbit(f) ? 0x8000 : 0) | 0x7c00);
		if (got != want)
			fail_msg("f=%a: got %04x want %04x", (double)f, got, want);
	}
	/* ties */
	assert_int_equal(half_from_f32(1.0f + 1.0f / 2048), 0x3c00); /* tie to even (down) */
	assert_int_equal(half_from_f32(1.0f + 3.0f / 2048), 0x3c02); /* tie to even (up) */
	assert_int_equal(half_from_f32(65504.0f), 0x7bff);
	assert_int_equal(half_from_f32(65519.0f), 0x7bff);
	assert_int_equal(half_from_f32(65520.0f), 0x7c00);
	assert_int_equal(half_from_f32(-0.0f), 0x8000);
	assert_int_equal(half_from_f32(ldexpf(1, -25)), 0x0000); /* tie to even 0 */
	assert_int_equal(half_from_f32(ldexpf(1.5f, -25)), 0x0001);
	assert_true(isnan(half_to_f32(half_from_f32(NAN))));
}

static void test_bf16(void **s)
{
	(void)s;
	assert_true(bf16_to_f32(bf16_from_f32(1.0f)) == 1.0f);
	assert_int_equal(bf16_from_f32(1.0f + ldexpf(1, -8)), 0x3f80); /* tie -> even */
	assert_int_equal(bf16_from_f32(1.0f + ldexpf(3, -8)), 0x3f82); /* tie -> even up */
	assert_true(isnan(bf16_to_f32(bf16_from_f32(NAN))));
	uint64_t rs = 5;
	for (int i = 0; i < 100000; i++) {
		float f = (float)(tu_randu(&rs) * 2000 - 1000);
		float r = bf16_to_f32(bf16_from_f32(f));
		assert_true(fabs((double)r - f) <= fabs((double)f) * ldexp(1, -8));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_f16_all_halves_roundtrip),
	    cmocka_unit_test(test_f16_random_floats),
	    cmocka_unit_test(test_bf16),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
