/* test_gtype_simd — the dispatched Q8_0 / Q4_0 tile dequantizers (NEON in
 * aarch64 builds, common/gtype_neon.c) against the scalar references, bit
 * for bit: every f16 scale pattern with every level, and long rows of
 * random blocks. In x86-64 builds the dispatchers are the scalar code (no
 * AVX2 path exists for these two types), so the comparison is trivial there
 * and the test says so; the arm64 stage of tests/run.sh runs it under
 * qemu-aarch64. */
#include "testutil.h"

#include "gtype.h"
#include "half.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/* a and b equal bit for bit, or both NaN (FCVTL quiets signalling NaN
 * scales; the payload is not part of the contract) */
static void same_bits(const float *a, const float *b, size_t n, const char *what, uint32_t tag)
{
	for (size_t i = 0; i < n; i++) {
		if (isnan(a[i]) && isnan(b[i]))
			continue;
		if (memcmp(&a[i], &b[i], 4) != 0) {
			print_error("%s 0x%04x elem %zu: %a vs scalar %a\n", what, tag, i,
			            (double)a[i], (double)b[i]);
			fail();
		}
	}
}

static void test_every_scale(void **state)
{
	(void)state;
#if defined(__aarch64__)
	print_message("comparing NEON with scalar\n");
#else
	print_message("no NEON in this build: the dispatcher is the scalar code\n");
#endif
	/* 8 blocks per scale: Q8_0 levels -128..127, Q4_0 nibbles 0..15 in
	 * both halves, so every level meets every scale */
	enum { NB = 8, N = NB * GTYPE_QK };
	uint8_t q8[NB * 34], q4[NB * 18];
	float a[N], s[N];
	for (uint32_t h = 0; h < 65536; h++) {
		for (int k = 0; k < NB; k++) {
			put16(q8 + 34 * k, (uint16_t)h);
			put16(q4 + 18 * k, (uint16_t)h);
			for (int j = 0; j < 32; j++)
				q8[34 * k + 2 + j] = (uint8_t)(32 * k + j);
			for (int j = 0; j < 16; j++)
				q4[18 * k + 2 + j] =
				    (uint8_t)((j + k) & 15) | (uint8_t)((15 - j) << 4);
		}
		gtype_dequant_q8_0(q8, a, N);
		gtype_dequant_q8_0_scalar(q8, s, N);
		same_bits(a, s, N, "Q8_0 scale", h);
		gtype_dequant_q4_0(q4, a, N);
		gtype_dequant_q4_0_scalar(q4, s, N);
		same_bits(a, s, N, "Q4_0 scale", h);
	}
	/* the reference itself: level * scale, as gtype.h specifies */
	put16(q8, 0x3c00); /* 1.0 */
	q8[2] = 0x80;
	gtype_dequant_q8_0(q8, a, 32);
	assert_true(a[0] == -128.0f);
}

static void test_random_rows(void **state)
{
	(void)state;
	enum { NB = 257, N = NB * GTYPE_QK };
	static uint8_t b[NB * 34];
	/* Q4_0 reads the same bytes as 18-byte blocks: more elements */
	static float a[2 * N], s[2 * N];
	_Static_assert(NB * 34 / 18 * GTYPE_QK <= 2 * N, "Q4_0 view fits");
	uint64_t rs = 7;
	for (int rep = 0; rep < 20; rep++) {
		for (size_t i = 0; i < sizeof b; i++)
			b[i] = (uint8_t)(tu_randu(&rs) * 256);
		/* finite scales of every magnitude, subnormals included */
		for (int k = 0; k < NB; k++)
			put16(b + 34 * k, (uint16_t)(tu_randu(&rs) * 0x7c00));
		gtype_dequant_q8_0(b, a, N);
		gtype_dequant_q8_0_scalar(b, s, N);
		same_bits(a, s, N, "Q8_0 row", (uint32_t)rep);
		/* Q4_0: 18-byte blocks over the same bytes (scales random bits) */
		size_t n4 = (sizeof b / 18) * GTYPE_QK;
		gtype_dequant_q4_0(b, a, n4);
		gtype_dequant_q4_0_scalar(b, s, n4);
		same_bits(a, s, n4, "Q4_0 row", (uint32_t)rep);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_every_scale),
	    cmocka_unit_test(test_random_rows),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
