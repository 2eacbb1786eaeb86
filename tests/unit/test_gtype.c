/* test_gtype — ggml tensor types: geometry, row sizes, dequantization of
 * hand-built blocks whose values are known, and the Q8_0/Q4_0 reference
 * quantizers (exact bytes on known inputs, round-trip error bounds); for
 * Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K an independent double-precision
 * decoder written here (element -> byte/bit, from the format description)
 * checks the library's decoders on random blocks and our quantizers by
 * round trip (error within half a step, step no coarser than the range
 * allows).
 *
 * The blocks are built by packing functions written here from the layout
 * description (element -> byte/bit position), the inverse of the decoder's
 * loops, so a layout mistake in either shows up as a mismatch. */
#include "testutil.h"

#include "err.h"
#include "gtype.h"
#include "half.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void expect_floats(const float *got, const double *want, size_t n, double tol)
{
	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)got[i] - want[i]);
		if (e > tol) {
			print_error("element %zu: got %.9g want %.9g (tol %g)\n", i, (double)got[i],
			            want[i], tol);
			fail();
		}
	}
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void test_geometry(void **state)
{
	(void)state;
	struct {
		uint32_t id;
		const char *name;
		size_t elems, bytes;
	} t[] = {
	    {0, "F32", 1, 4},       {1, "F16", 1, 2},       {30, "BF16", 1, 2},
	    {8, "Q8_0", 32, 34},    {2, "Q4_0", 32, 18},    {12, "Q4_K", 256, 144},
	    {14, "Q6_K", 256, 210}, {3, "Q4_1", 32, 20},    {6, "Q5_0", 32, 22},
	    {7, "Q5_1", 32, 24},    {13, "Q5_K", 256, 176},
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		assert_int_equal(gtype_supported(t[i].id), 1);
		assert_string_equal(gtype_name(t[i].id), t[i].name);
		assert_int_equal(gtype_block_elems(t[i].id), t[i].elems);
		assert_int_equal(gtype_block_bytes(t[i].id), t[i].bytes);
		assert_non_null(gtype_dequant_fn_of(t[i].id));
	}
	/* known but unsupported ids are named, never sized */
	assert_string_equal(gtype_name(11), "Q3_K");
	assert_string_equal(gtype_name(10), "Q2_K");
	assert_string_equal(gtype_name(28), "F64");
	assert_string_equal(gtype_name(39), "MXFP4");
	assert_null(gtype_name(40));
	assert_null(gtype_name(0xffffffffu));
	for (uint32_t id = 0; id < 64; id++) {
		int sup = id == 0 || id == 1 || id == 2 || id == 3 || id == 6 || id == 7 ||
		          id == 8 || id == 12 || id == 13 || id == 14 || id == 30;
		assert_int_equal(gtype_supported(id), sup);
		if (!sup) {
			size_t sz = 7;
			assert_int_equal(gtype_block_bytes(id), 0);
			assert_null(gtype_dequant_fn_of(id));
			assert_int_equal(gtype_row_size(id, 256, &sz), FL_EUNSUPPORTED);
			assert_int_equal(sz, 7);
		}
	}
}

static void test_row_size(void **state)
{
	(void)state;
	size_t sz = 0;
	assert_int_equal(gtype_row_size(GTYPE_Q4_0, 4096, &sz), 0);
	assert_int_equal(sz, 128 * 18);
	assert_int_equal(gtype_row_size(GTYPE_Q8_0, 96, &sz), 0);
	assert_int_equal(sz, 3 * 34);
	assert_int_equal(gtype_row_size(GTYPE_Q6_K, 512, &sz), 0);
	assert_int_equal(sz, 420);
	assert_int_equal(gtype_row_size(GTYPE_F16, 7, &sz), 0);
	assert_int_equal(sz, 14);
	assert_int_equal(gtype_row_size(GTYPE_F32, 0, &sz), 0);
	assert_int_equal(sz, 0);
	sz = 99;
	assert_int_equal(gtype_row_size(GTYPE_Q4_0, 33, &sz), FL_EINVAL);
	assert_int_equal(gtype_row_size(GTYPE_Q4_K, 128, &sz), FL_EINVAL);
	assert_int_equal(sz, 99);
	/* 2^64 - 32 elements of Q8_0: 2^59 - 1 blocks of 34 bytes overflow */
	assert_int_equal(gtype_row_size(GTYPE_Q8_0, UINT64_MAX - 31, &sz), FL_EOVERFLOW);
	assert_int_equal(gtype_row_size(GTYPE_F32, UINT64_MAX / 2, &sz), FL_EOVERFLOW);
	assert_int_equal(sz, 99);

	uint64_t ne[4] = {64, 3, 5, 2};
	assert_int_equal(gtype_tensor_size(GTYPE_Q8_0, ne, 4, &sz), 0);
	assert_int_equal(sz, 2 * 34 * 3 * 5 * 2);
	assert_int_equal(gtype_tensor_size(GTYPE_F32, ne, 1, &sz), 0);
	assert_int_equal(sz, 256);
	assert_int_equal(gtype_tensor_size(GTYPE_F32, NULL, 0, &sz), 0);
	assert_int_equal(sz, 4);
	uint64_t zero[2] = {32, 0};
	assert_int_equal(gtype_tensor_size(GTYPE_Q4_0, zero, 2, &sz), 0);
	assert_int_equal(sz, 0);
	uint64_t big[3] = {1u << 20, 1u << 20, 1u << 30};
	sz = 5;
	assert_int_equal(gtype_tensor_size(GTYPE_F32, big, 3, &sz), FL_EOVERFLOW);
	uint64_t odd[2] = {31, 2};
	assert_int_equal(gtype_tensor_size(GTYPE_Q4_0, odd, 2, &sz), FL_EINVAL);
	assert_int_equal(sz, 5);
}

static void test_dequant_float_types(void **state)
{
	(void)state;
	/* F32: raw little-endian bytes */
	uint8_t f32b[12] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x00, 0x00};
	float out[8];
	double w32[3] = {1.0, -2.0, 0.0};
	gtype_dequant_f32(f32b, out, 3);
	expect_floats(out, w32, 3, 0);

	/* F16 bit patterns with known values */
	uint16_t h[6] = {0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x3555};
	double wh[6] = {1.0, -2.0, 0.5, 65504.0, ldexp(1.0, -24), 0.333251953125};
	uint8_t hb[12];
	for (int i = 0; i < 6; i++)
		put16(hb + 2 * i, h[i]);
	assert_int_equal(gtype_dequant_row(GTYPE_F16, hb, out, 6), 0);
	expect_floats(out, wh, 6, 0);

	/* BF16: top half of an f32 */
	uint16_t bh[4] = {0x3f80, 0xc040, 0x4049, 0x0000};
	double wb[4] = {1.0, -3.0, 3.140625, 0.0};
	uint8_t bb[8];
	for (int i = 0; i < 4; i++)
		put16(bb + 2 * i, bh[i]);
	assert_int_equal(gtype_dequant_row(GTYPE_BF16, bb, out, 4), 0);
	expect_floats(out, wb, 4, 0);
}

static void test_dequant_q8_0(void **state)
{
	(void)state;
	uint8_t blk[2 * 34];
	double want[64];
	/* block 0: d = 0.5, q = j - 16; block 1: d = -0.25, q = extremes */
	put16(blk, 0x3800);
	for (int j = 0; j < 32; j++) {
		blk[2 + j] = (uint8_t)(int8_t)(j - 16);
		want[j] = 0.5 * (j - 16);
	}
	put16(blk + 34, 0xb400);
	for (int j = 0; j < 32; j++) {
		int q = (j & 1) ? 127 : -128 + j;
		blk[36 + j] = (uint8_t)(int8_t)q;
		want[32 + j] = -0.25 * q;
	}
	float out[64];
	assert_int_equal(gtype_dequant_row(GTYPE_Q8_0, blk, out, 64), 0);
	expect_floats(out, want, 64, 0);
	assert_int_equal(gtype_dequant_row(GTYPE_Q8_0, blk, out, 48), FL_EINVAL);
}

static void test_dequant_q4_0(void **state)
{
	(void)state;
	uint8_t blk[18];
	double want[32];
	int v[32];
	for (int e = 0; e < 32; e++)
		v[e] = (e * 7 + 3) % 16; /* every nibble value appears */
	put16(blk, 0x4000);              /* d = 2 */
	/* element e < 16 in the low nibble of byte e, e >= 16 in the high
	 * nibble of byte e - 16 */
	memset(blk + 2, 0, 16);
	for (int e = 0; e < 32; e++) {
		if (e < 16)
			blk[2 + e] |= (uint8_t)v[e];
		else
			blk[2 + e - 16] |= (uint8_t)(v[e] << 4);
		want[e] = 2.0 * (v[e] - 8);
	}
	float out[32];
	assert_int_equal(gtype_dequant_row(GTYPE_Q4_0, blk, out, 32), 0);
	expect_floats(out, want, 32, 0);
}

/* Q4_K: 8 sub-blocks of 32; sub-block k has a 6-bit scale sc[k] and a
 * 6-bit min mn[k]; y = d*sc[k]*q - dmin*mn[k]. Element e = 64g + 32h + l
 * (sub-block k = 2g + h) has its 4-bit q in byte qs[32g + l], low nibble
 * for h = 0, high for h = 1. The 12 scale bytes: bytes 0..3 hold sc[0..3]
 * in bits 0..5 and sc[4..7]'s bits 4..5 in bits 6..7; bytes 4..7 the same
 * for the mins; bytes 8..11 hold sc[4..7] low 4 bits | mn[4..7] low 4 bits
 * << 4. */
static void pack_q4_k(uint8_t *b, uint16_t d, uint16_t dmin, const int sc[8], const int mn[8],
                      const int q[256])
{
	put16(b, d);
	put16(b + 2, dmin);
	uint8_t *s = b + 4, *qs = b + 16;
	for (int j = 0; j < 4; j++) {
		s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
		s[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
		s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
	}
	memset(qs, 0, 128);
	for (int e = 0; e < 256; e++) {
		int g = e / 64, h = (e / 32) % 2, l = e % 32;
		qs[32 * g + l] |= (uint8_t)(h ? q[e] << 4 : q[e]);
	}
}

static void test_dequant_q4_k(void **state)
{
	(void)state;
	/* scales/mins chosen so every one of the 6 bits is exercised */
	const int sc[8] = {1, 63, 17, 32, 48, 5, 63, 34};
	const int mn[8] = {0, 21, 63, 2, 33, 62, 16, 47};
	int q[256];
	for (int e = 0; e < 256; e++)
		q[e] = (e * 5 + e / 16) % 16;
	uint8_t blk[2 * 144];
	/* block 0: d = 0.5, dmin = 0.25; block 1: d = 1/1024 (0x1400), dmin = 3 */
	pack_q4_k(blk, 0x3800, 0x3400, sc, mn, q);
	pack_q4_k(blk + 144, 0x1400, 0x4200, mn, sc, q);
	double want[512];
	for (int e = 0; e < 256; e++) {
		int k = e / 32;
		want[e] = 0.5 * sc[k] * q[e] - 0.25 * mn[k];
		want[256 + e] = (1.0 / 1024) * mn[k] * q[e] - 3.0 * sc[k];
	}
	float out[512];
	assert_int_equal(gtype_dequant_row(GTYPE_Q4_K, blk, out, 512), 0);
	/* all values are exact in f32 */
	expect_floats(out, want, 512, 0);
	assert_int_equal(gtype_dequant_row(GTYPE_Q4_K, blk, out, 288), FL_EINVAL);
}

/* Q6_K: 16 sub-blocks of 16 with signed 8-bit scales; y = d*sc*(q - 32),
 * q 6-bit. Element e = 128h + 32t + l (half h, quarter t, l < 32): low 4
 * bits in ql[64h + l + 32(t & 1)] (low nibble for t < 2, high for t >= 2),
 * high 2 bits in qh[32h + l] at bit 2t, scale sc[8h + 2t + l/16]. */
static void pack_q6_k(uint8_t *b, uint16_t d, const int sc[16], const int q[256])
{
	uint8_t *ql = b, *qh = b + 128;
	int8_t *s = (int8_t *)(b + 192);
	memset(b, 0, 192);
	for (int i = 0; i < 16; i++)
		s[i] = (int8_t)sc[i];
	put16(b + 208, d);
	for (int e = 0; e < 256; e++) {
		int h = e / 128, t = (e % 128) / 32, l = e % 32;
		int lo = q[e] & 15, hi = q[e] >> 4;
		ql[64 * h + l + 32 * (t & 1)] |= (uint8_t)(t < 2 ? lo : lo << 4);
		qh[32 * h + l] |= (uint8_t)(hi << (2 * t));
	}
}

static int q6_scale_index(int e)
{
	int h = e / 128, t = (e % 128) / 32, l = e % 32;
	return 8 * h + 2 * t + l / 16;
}

static void test_dequant_q6_k(void **state)
{
	(void)state;
	const int sc[16] = {1, -1, 127, -128, 3, 50, -77, 9, 0, 100, -3, 64, 12, -60, 7, 33};
	int q[256];
	for (int e = 0; e < 256; e++)
		q[e] = (e * 37 + 11) % 64; /* every 6-bit value appears */
	uint8_t blk[210];
	pack_q6_k(blk, 0x3400 /* 0.25 */, sc, q);
	double want[256];
	for (int e = 0; e < 256; e++)
		want[e] = 0.25 * sc[q6_scale_index(e)] * (q[e] - 32);
	float out[256];
	assert_int_equal(gtype_dequant_row(GTYPE_Q6_K, blk, out, 256), 0);
	expect_floats(out, want, 256, 0);
	/* sanity of the test's own index map: each scale covers 16 elements */
	int count[16] = {0};
	for (int e = 0; e < 256; e++)
		count[q6_scale_index(e)]++;
	for (int i = 0; i < 16; i++)
		assert_int_equal(count[i], 16);
}

/* Every f16 bit pattern: the dispatched (possibly F16C) kernel equals the
 * scalar one and half_to_f32; NaN stays NaN. Odd length covers the tail. */
static void test_f16_all_patterns(void **state)
{
	(void)state;
	enum { N = 65536 + 3 };
	static uint8_t b[2 * N];
	static float a[N], s[N];
	for (uint32_t i = 0; i < N; i++)
		put16(b + 2 * i, (uint16_t)i);
	gtype_dequant_f16(b, a, N);
	gtype_dequant_f16_scalar(b, s, N);
	for (uint32_t i = 0; i < N; i++) {
		float w = half_to_f32((uint16_t)i);
		if (isnan(w)) {
			assert_true(isnan(a[i]) && isnan(s[i]));
			continue;
		}
		if (memcmp(&a[i], &w, 4) != 0 || memcmp(&s[i], &w, 4) != 0) {
			print_error("f16 0x%04x: got %g / %g want %g\n", i & 0xffff, (double)a[i],
			            (double)s[i], (double)w);
			fail();
		}
	}
}

/* Exact bytes of the reference quantizers on inputs whose result can be
 * worked out by hand. */
static void test_quant_known(void **state)
{
	(void)state;
	float x[32];
	for (int j = 0; j < 32; j++)
		x[j] = (float)(j - 16);
	/* Q4_0: largest magnitude is x[0] = -16, so d = -16/-8 = 2, and
	 * q = min(15, floor(x/2 + 8.5)) */
	uint8_t b4[18];
	assert_int_equal(gtype_quant_row(GTYPE_Q4_0, x, b4, 32), 0);
	assert_int_equal(b4[0] | b4[1] << 8, 0x4000);
	for (int j = 0; j < 16; j++) {
		int q0 = (int)floor((j - 16) / 2.0 + 8.5), q1 = (int)floor((j) / 2.0 + 8.5);
		q0 = q0 > 15 ? 15 : q0;
		q1 = q1 > 15 ? 15 : q1;
		assert_int_equal(b4[2 + j], q0 | q1 << 4);
	}
	/* Q8_0: d = 16/127, q = round-half-away((j-16) * 127/16) */
	uint8_t b8[34];
	assert_int_equal(gtype_quant_row(GTYPE_Q8_0, x, b8, 32), 0);
	assert_int_equal(b8[0] | b8[1] << 8, half_from_f32(16.0f / 127.0f));
	for (int j = 0; j < 32; j++) {
		double v = (j - 16) * 127.0 / 16.0;
		int q = (int)(v < 0 ? -floor(-v + 0.5) : floor(v + 0.5));
		assert_int_equal((int8_t)b8[2 + j], q);
	}
	/* all-zero block: quants 0 (Q4_0 stores the offset 8); Q4_0's d is
	 * 0/-8 = -0.0, stored as f16 0x8000 exactly as the reference does */
	float z[32] = {0};
	assert_int_equal(gtype_quant_row(GTYPE_Q4_0, z, b4, 32), 0);
	assert_int_equal(b4[0] | b4[1] << 8, 0x8000);
	for (int j = 0; j < 16; j++)
		assert_int_equal(b4[2 + j], 0x88);
	assert_int_equal(gtype_quant_row(GTYPE_Q8_0, z, b8, 32), 0);
	for (int j = 0; j < 34; j++)
		assert_int_equal(b8[j], 0);
	/* F16 / BF16 conversions */
	float f[3] = {1.0f, -2.5f, 70000.0f};
	uint8_t hb[6];
	assert_int_equal(gtype_quant_row(GTYPE_F16, f, hb, 3), 0);
	assert_int_equal(hb[0] | hb[1] << 8, 0x3c00);
	assert_int_equal(hb[2] | hb[3] << 8, 0xc100);
	assert_int_equal(hb[4] | hb[5] << 8, 0x7c00); /* beyond range: Inf */
	assert_int_equal(gtype_quant_row(GTYPE_BF16, f, hb, 2), 0);
	assert_int_equal(hb[0] | hb[1] << 8, 0x3f80);
	assert_int_equal(hb[2] | hb[3] << 8, 0xc020);
}

static void test_quant_refusals(void **state)
{
	(void)state;
	float x[64] = {0};
	uint8_t b[128];
	assert_int_equal(gtype_quant_row(GTYPE_Q4_K, x, b, 32), FL_EINVAL);
	assert_int_equal(gtype_quant_row(GTYPE_Q6_K, x, b, 32), FL_EINVAL);
	assert_int_equal(gtype_quant_row(GTYPE_Q5_1, x, b, 40), FL_EINVAL);
	assert_int_equal(gtype_quant_row(11, x, b, 32), FL_EUNSUPPORTED);
	/* a block whose scale exceeds the f16 range is refused, not wrapped */
	x[3] = 1e7f;
	assert_int_equal(gtype_quant_row(GTYPE_Q5_0, x, b, 32), FL_ENUMERIC);
	assert_int_equal(gtype_quant_row(GTYPE_Q4_1, x, b, 32), FL_ENUMERIC);
	x[3] = 0.0f;
	assert_int_equal(gtype_quant_row(GTYPE_Q8_0, x, b, 40), FL_EINVAL);
	x[5] = NAN;
	assert_int_equal(gtype_quant_row(GTYPE_Q8_0, x, b, 32), FL_ENUMERIC);
	x[5] = INFINITY;
	assert_int_equal(gtype_quant_row(GTYPE_Q4_0, x, b, 32), FL_ENUMERIC);
	/* subnormal magnitudes: 1/d overflows; must stay defined (UBSan) and
	 * decode to zeros since d rounds to 0 in f16 */
	for (int j = 0; j < 32; j++)
		x[j] = (j % 3 - 1) * 1e-40f;
	float y[32];
	assert_int_equal(gtype_quant_row(GTYPE_Q8_0, x, b, 32), 0);
	gtype_dequant_q8_0(b, y, 32);
	for (int j = 0; j < 32; j++)
		assert_true(y[j] == 0.0f);
	assert_int_equal(gtype_quant_row(GTYPE_Q4_0, x, b, 32), 0);
	gtype_dequant_q4_0(b, y, 32);
	for (int j = 0; j < 32; j++)
		assert_true(y[j] == 0.0f);
}

/* Round trip on random data: per-block error bounds.
 *   Q8_0: |x - y| <= d/2 + 127 * |d - f16(d)|, d = amax/127
 *   Q4_0: |x - y| <= d + 8 * |d - f16(d)|, d = amax/8 (the element opposite
 *         in sign to the max can clip from +8 to +7: one step) */
static void test_roundtrip(void **state)
{
	(void)state;
	enum { N = 32 * 64 };
	static float x[N], y[N];
	static uint8_t b[N * 2];
	uint64_t rng = 42;
	for (int rep = 0; rep < 3; rep++) {
		double scale = rep == 0 ? 1.0 : rep == 1 ? 1e-3 : 300.0;
		for (int i = 0; i < N; i++)
			x[i] = (float)((tu_randu(&rng) * 2 - 1) * scale *
			               (i % 32 == 7 ? 4 : 1)); /* one outlier per block */
		for (int t = 0; t < 2; t++) {
			uint32_t id = t ? GTYPE_Q4_0 : GTYPE_Q8_0;
			size_t rs = 0;
			assert_int_equal(gtype_row_size(id, N, &rs), 0);
			assert_true(rs <= sizeof b);
			assert_int_equal(gtype_quant_row(id, x, b, N), 0);
			assert_int_equal(gtype_dequant_row(id, b, y, N), 0);
			double worst = 0;
			for (int blk = 0; blk < N / 32; blk++) {
				double amax = 0;
				for (int j = 0; j < 32; j++)
					amax = fmax(amax, fabs(x[blk * 32 + j]));
				double d = amax / (t ? 8.0 : 127.0);
				double d16 = half_to_f32(half_from_f32((float)d));
				double bound =
				    t ? d + 8 * fabs(d - d16) : d / 2 + 127 * fabs(d - d16);
				bound = bound * (1 + 1e-6) + 1e-30;
				for (int j = 0; j < 32; j++) {
					double e = fabs((double)x[blk * 32 + j] - y[blk * 32 + j]);
					if (e > bound) {
						print_error(
						    "%s block %d elem %d: err %g > bound %g\n",
						    gtype_name(id), blk, j, e, bound);
						fail();
					}
					worst = fmax(worst, e / bound);
				}
			}
			/* the bound is not vacuous: the worst error reaches a good part of
			 * it (half a step of Q8_0; Q4_0's bound allows the clipped +8) */
			print_message("%s scale %g: worst err/bound %.3f\n", gtype_name(id), scale,
			              worst);
			assert_true(worst > 0.3 && worst <= 1.0);
		}
		/* F16 / BF16 round trip: relative error <= 2^-11 / 2^-8 */
		for (int t = 0; t < 2; t++) {
			uint32_t id = t ? GTYPE_BF16 : GTYPE_F16;
			assert_int_equal(gtype_quant_row(id, x, b, 512), 0);
			assert_int_equal(gtype_dequant_row(id, b, y, 512), 0);
			double rel = t ? ldexp(1, -8) : ldexp(1, -11);
			for (int i = 0; i < 512; i++) {
				double e = fabs((double)x[i] - y[i]);
				/* f16 subnormals below 2^-14 have absolute precision 2^-25 */
				assert_true(e <= rel * fabs(x[i]) + (t ? 0 : ldexp(1, -25)));
			}
		}
	}
}

/* ---- independent double-precision decoders of the newer block types ----
 *
 * Written element by element from the public format description (which
 * byte and bit of a block holds element e), the opposite direction of the
 * decoder's loops: ref_elem returns element e's value of the block at b and
 * its quantization step (the value of one unit of q). */
static double h2d(const uint8_t *p)
{
	return half_to_f32((uint16_t)(p[0] | p[1] << 8));
}

/* nibble of element e < 32 in the 16 bytes qs: low nibbles hold 0..15 */
static int nib32(const uint8_t *qs, int e)
{
	return e < 16 ? qs[e] & 15 : qs[e - 16] >> 4;
}

/* 6-bit scale (which 0) or min (which 1) of sub-block k of a Q4_K/Q5_K
 * block's 12 scale bytes s: k < 4 in the low 6 bits of s[k] (scales) or
 * s[4 + k] (mins); k >= 4 low 4 bits in s[8 + k - 4] (scale low nibble, min
 * high nibble) and high 2 bits in the top bits of s[k - 4] / s[k]. */
static int kscale(const uint8_t *s, int k, int which)
{
	if (k < 4)
		return s[4 * which + k] & 63;
	int lo = which ? s[8 + k - 4] >> 4 : s[8 + k - 4] & 15;
	int hi = s[4 * which + k - 4] >> 6;
	return lo | hi << 4;
}

static double ref_elem(uint32_t id, const uint8_t *b, int e, double *step, double *offs)
{
	*offs = 0;
	switch (id) {
	case GTYPE_Q4_1:
		*step = h2d(b);
		*offs = fabs(h2d(b + 2));
		return h2d(b) * nib32(b + 4, e) + h2d(b + 2);
	case GTYPE_Q5_0: {
		int q = nib32(b + 6, e) | ((b[2 + e / 8] >> (e % 8)) & 1) << 4;
		*step = fabs(h2d(b));
		return h2d(b) * (q - 16);
	}
	case GTYPE_Q5_1: {
		int q = nib32(b + 8, e) | ((b[4 + e / 8] >> (e % 8)) & 1) << 4;
		*step = h2d(b);
		*offs = fabs(h2d(b + 2));
		return h2d(b) * q + h2d(b + 2);
	}
	case GTYPE_Q4_K:
	case GTYPE_Q5_K: {
		/* element e = 64g + 32h + l: sub-block k = 2g + h, 4 low bits in
		 * the (h ? high : low) nibble of qs[32g + l]; Q5_K's fifth bit is
		 * bit k of qh[l] */
		int k = e / 32, g = e / 64, h = k & 1, l = e % 32;
		int five = id == GTYPE_Q5_K;
		const uint8_t *qs = b + (five ? 48 : 16);
		int q = (qs[32 * g + l] >> (4 * h)) & 15;
		if (five)
			q |= ((b[16 + l] >> k) & 1) << 4;
		double d = h2d(b), dmin = h2d(b + 2);
		*step = fabs(d * kscale(b + 4, k, 0));
		*offs = fabs(dmin * kscale(b + 4, k, 1));
		return d * kscale(b + 4, k, 0) * q - dmin * kscale(b + 4, k, 1);
	}
	case GTYPE_Q6_K: {
		int h = e / 128, t = (e % 128) / 32, l = e % 32;
		int lo = (b[64 * h + l + 32 * (t & 1)] >> (t < 2 ? 0 : 4)) & 15;
		int hi = (b[128 + 32 * h + l] >> (2 * t)) & 3;
		int sc = (int8_t)b[192 + e / 16];
		*step = fabs(h2d(b + 208) * sc);
		return h2d(b + 208) * sc * ((lo | hi << 4) - 32);
	}
	default:
		fail_msg("no reference for type %u", id);
		return 0;
	}
}

static const uint32_t new_types[] = {GTYPE_Q4_1, GTYPE_Q5_0, GTYPE_Q5_1,
                                     GTYPE_Q4_K, GTYPE_Q5_K, GTYPE_Q6_K};

/* offsets of the f16 fields of each type (random bytes there would often
 * be Inf/NaN; the test puts moderate finite values) */
static void f16_fields(uint32_t id, int off[2], int *nf)
{
	*nf = 1;
	off[0] = id == GTYPE_Q6_K ? 208 : 0;
	off[1] = 2;
	if (id == GTYPE_Q4_1 || id == GTYPE_Q5_1 || id == GTYPE_Q4_K || id == GTYPE_Q5_K)
		*nf = 2;
}

/* Random blocks: the library's decoder equals the reference decoder to
 * the rounding of its f32 arithmetic (2^-22 of the terms' magnitude). */
static void test_dequant_new_vs_reference(void **state)
{
	(void)state;
	uint64_t rng = 7;
	for (size_t t = 0; t < sizeof new_types / sizeof new_types[0]; t++) {
		const uint32_t id = new_types[t];
		const size_t be = gtype_block_elems(id), bb = gtype_block_bytes(id);
		enum { NB = 24 };
		static uint8_t blk[NB * 256];
		static float out[NB * 256];
		for (size_t i = 0; i < NB * bb; i++)
			blk[i] = (uint8_t)(tu_randu(&rng) * 256);
		for (int k = 0; k < NB; k++) {
			int off[2], nf;
			f16_fields(id, off, &nf);
			for (int f = 0; f < nf; f++)
				put16(blk + k * bb + off[f],
				      half_from_f32((float)((tu_randu(&rng) * 2 - 1) * 4.0)));
		}
		size_t rs = 0;
		assert_int_equal(gtype_row_size(id, NB * be, &rs), 0);
		assert_int_equal(rs, NB * bb);
		assert_int_equal(gtype_dequant_row(id, blk, out, NB * be), 0);
		for (int k = 0; k < NB; k++)
			for (size_t e = 0; e < be; e++) {
				double step, offs;
				double want = ref_elem(id, blk + k * bb, (int)e, &step, &offs);
				double tol = ldexp(fabs(want) + 2 * offs, -22);
				double got = out[k * be + e];
				if (fabs(got - want) > tol) {
					print_error("%s block %d elem %zu: got %.9g want %.9g\n",
					            gtype_name(id), k, e, got, want);
					fail();
				}
			}
		/* a length that is not a block multiple is refused */
		assert_int_equal(gtype_dequant_row(id, blk, out, be + be / 2), FL_EINVAL);
	}
}

/* Hand-packed Q5_K / Q5_0 / Q5_1 / Q4_1 blocks with exact known values
 * (the packers place element e's bits as the layout describes). */
static void pack_q5_k(uint8_t *b, uint16_t d, uint16_t dmin, const int sc[8], const int mn[8],
                      const int q[256])
{
	uint8_t tmp[144];
	int lo[256];
	for (int e = 0; e < 256; e++)
		lo[e] = q[e] & 15;
	pack_q4_k(tmp, d, dmin, sc, mn, lo);
	memcpy(b, tmp, 16);            /* d, dmin, scales */
	memcpy(b + 48, tmp + 16, 128); /* low nibbles */
	memset(b + 16, 0, 32);
	for (int e = 0; e < 256; e++)
		b[16 + e % 32] |= (uint8_t)((q[e] >> 4) << (e / 32));
}

static void pack_32(uint8_t *qs, uint8_t *qh, const int q[32])
{
	memset(qs, 0, 16);
	if (qh)
		memset(qh, 0, 4);
	for (int e = 0; e < 32; e++) {
		qs[e % 16] |= (uint8_t)((q[e] & 15) << (e < 16 ? 0 : 4));
		if (qh)
			qh[e / 8] |= (uint8_t)((q[e] >> 4) << (e % 8));
	}
}

static void test_dequant_new_known(void **state)
{
	(void)state;
	const int sc[8] = {1, 63, 17, 32, 48, 5, 63, 34};
	const int mn[8] = {0, 21, 63, 2, 33, 62, 16, 47};
	int q[256];
	for (int e = 0; e < 256; e++)
		q[e] = (e * 7 + e / 32) % 32; /* every 5-bit value in every sub-block */
	uint8_t blk[176];
	pack_q5_k(blk, 0x3800 /* 0.5 */, 0x3400 /* 0.25 */, sc, mn, q);
	double want[256];
	float out[256];
	for (int e = 0; e < 256; e++)
		want[e] = 0.5 * sc[e / 32] * q[e] - 0.25 * mn[e / 32];
	assert_int_equal(gtype_dequant_row(GTYPE_Q5_K, blk, out, 256), 0);
	expect_floats(out, want, 256, 0);

	/* Q5_0 (d = -0.5), Q5_1 (d = 2, m = -3), Q4_1 (d = 0.25, m = 1) */
	int q5[32], q4[32];
	for (int e = 0; e < 32; e++) {
		q5[e] = (e * 13 + 5) % 32;
		q4[e] = (e * 5 + 3) % 16;
	}
	uint8_t b5[24];
	put16(b5, 0xb800);
	pack_32(b5 + 6, b5 + 2, q5);
	for (int e = 0; e < 32; e++)
		want[e] = -0.5 * (q5[e] - 16);
	assert_int_equal(gtype_dequant_row(GTYPE_Q5_0, b5, out, 32), 0);
	expect_floats(out, want, 32, 0);
	put16(b5, 0x4000);
	put16(b5 + 2, 0xc200);
	pack_32(b5 + 8, b5 + 4, q5);
	for (int e = 0; e < 32; e++)
		want[e] = 2.0 * q5[e] - 3.0;
	assert_int_equal(gtype_dequant_row(GTYPE_Q5_1, b5, out, 32), 0);
	expect_floats(out, want, 32, 0);
	put16(b5, 0x3400);
	put16(b5 + 2, 0x3c00);
	pack_32(b5 + 4, NULL, q4);
	for (int e = 0; e < 32; e++)
		want[e] = 0.25 * q4[e] + 1.0;
	assert_int_equal(gtype_dequant_row(GTYPE_Q4_1, b5, out, 32), 0);
	expect_floats(out, want, 32, 0);
}

/* Our quantizers for the newer types, decoded by the reference above:
 * every element within half its step (plus f32 rounding of the decode), the
 * step no coarser than the block's range allows (range / levels plus one
 * unit of the f16 super-scale), and the library decoder agrees with the
 * reference on the quantized bytes. */
static void test_quant_new_roundtrip(void **state)
{
	(void)state;
	enum { N = 256 * 16 };
	static float x[N], y[N];
	static uint8_t b[N * 2];
	uint64_t rng = 99;
	for (int rep = 0; rep < 4; rep++) {
		double scale = rep == 0 ? 1.0 : rep == 1 ? 1e-3 : rep == 2 ? 300.0 : 0.02;
		for (int i = 0; i < N; i++) {
			double u = (tu_randu(&rng) * 2 - 1) * scale * (i % 32 == 7 ? 4 : 1);
			/* rep 3: a weight-like sub-block of one sign, then zeros */
			if (rep == 3)
				u = (i / 64) % 4 == 1 ? fabs(u) : (i / 64) % 4 == 3 ? 0.0 : u;
			x[i] = (float)u;
		}
		for (size_t t = 0; t < sizeof new_types / sizeof new_types[0]; t++) {
			const uint32_t id = new_types[t];
			const size_t be = gtype_block_elems(id), bb = gtype_block_bytes(id);
			/* levels per sub-block and sub-block length */
			const int lev = id == GTYPE_Q4_1 || id == GTYPE_Q4_K ? 15
			                : id == GTYPE_Q6_K                   ? 31
			                                                     : 31;
			const int sub = id == GTYPE_Q6_K ? 16 : 32;
			assert_int_equal(gtype_quant_row(id, x, b, N), 0);
			assert_int_equal(gtype_dequant_row(id, b, y, N), 0);
			double worst = 0;
			for (size_t k = 0; k < N / be; k++) {
				const uint8_t *blk = b + k * bb;
				/* the f16 unit of the block's scales (K types) */
				double unit = id == GTYPE_Q4_K || id == GTYPE_Q5_K ? h2d(blk)
				              : id == GTYPE_Q6_K                   ? h2d(blk + 208)
				                                                   : 0;
				double munit =
				    id == GTYPE_Q4_K || id == GTYPE_Q5_K ? h2d(blk + 2) : 0;
				for (size_t s0 = 0; s0 < be; s0 += (size_t)sub) {
					double lo = 0, hi = 0, amax = 0;
					lo = hi = x[k * be + s0];
					for (int j = 0; j < sub; j++) {
						double v = x[k * be + s0 + (size_t)j];
						lo = fmin(lo, v);
						hi = fmax(hi, v);
						amax = fmax(amax, fabs(v));
					}
					/* the ideal step for this sub-block's range */
					double ideal =
					    id == GTYPE_Q5_0   ? amax / 15
					    : id == GTYPE_Q6_K ? amax / 31
					    : id == GTYPE_Q4_1 || id == GTYPE_Q5_1
					        ? (hi - lo + fabs(lo) * ldexp(1, -10)) / lev
					        : (hi - fmin(lo, 0) + munit) / lev;
					for (int j = 0; j < sub; j++) {
						size_t i = k * be + s0 + (size_t)j;
						double step, offs;
						double r = ref_elem(id, blk, (int)(s0 + (size_t)j),
						                    &step, &offs);
						double maxstep = ideal * (1 + ldexp(1, -10)) +
						                 unit * (1 + 1e-6) + 1e-30;
						if (step > maxstep) {
							print_error("%s elem %zu: step %g > %g\n",
							            gtype_name(id), i, step,
							            maxstep);
							fail();
						}
						double bound = step / 2 * (1 + 1e-6) +
						               ldexp(fabs(x[i]) + 2 * offs, -21) +
						               1e-30;
						double e = fabs(x[i] - r);
						if (e > bound) {
							print_error(
							    "%s scale %g elem %zu: x %g ref %g err "
							    "%g > bound %g\n",
							    gtype_name(id), scale, i, (double)x[i],
							    r, e, bound);
							fail();
						}
						worst = fmax(worst, e / bound);
						if (fabs(y[i] - r) >
						    ldexp(fabs(r) + 2 * offs, -22)) {
							print_error(
							    "%s elem %zu: decoder %g ref %g\n",
							    gtype_name(id), i, (double)y[i], r);
							fail();
						}
					}
				}
			}
			print_message("%s scale %g: worst err/bound %.3f\n", gtype_name(id), scale,
			              worst);
			assert_true(worst > 0.3 && worst <= 1.0);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_geometry),
	    cmocka_unit_test(test_row_size),
	    cmocka_unit_test(test_dequant_float_types),
	    cmocka_unit_test(test_dequant_q8_0),
	    cmocka_unit_test(test_dequant_q4_0),
	    cmocka_unit_test(test_dequant_q4_k),
	    cmocka_unit_test(test_dequant_q6_k),
	    cmocka_unit_test(test_f16_all_patterns),
	    cmocka_unit_test(test_quant_known),
	    cmocka_unit_test(test_quant_refusals),
	    cmocka_unit_test(test_roundtrip),
	    cmocka_unit_test(test_dequant_new_vs_reference),
	    cmocka_unit_test(test_dequant_new_known),
	    cmocka_unit_test(test_quant_new_roundtrip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
