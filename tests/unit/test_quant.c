/* Unit tests for quant: error bounds per format against a brute-force
 * nearest-level reference, special values, unbiased stochastic rounding,
 * error feedback telescoping, the documented byte layout, and bit identity
 * of the scalar and AVX2 paths. */
#include "testutil.h"

#include "err.h"
#include "half.h"
#include "quant.h"
#include "tensor.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const enum qt_fmt QFMTS[] = {QT_Q8, QT_Q4, QT_Q2};
static const uint32_t BLOCKS[] = {32, 64, 128};

/* Levels a format can produce (encoder side) and the scale divisor. */
static void levels(enum qt_fmt f, int *lo, int *hi, int *stride, double *qdiv)
{
	if (f == QT_Q8) {
		*lo = -127, *hi = 127, *stride = 1, *qdiv = 127;
	} else if (f == QT_Q4) {
		*lo = -7, *hi = 7, *stride = 1, *qdiv = 7;
	} else {
		*lo = -3, *hi = 3, *stride = 2, *qdiv = 3;
	}
}

static float scale_of(const qtensor *q, size_t j)
{
	return half_to_f32((uint16_t)(q->scales[2 * j] | q->scales[2 * j + 1] << 8));
}

static void fill(float *x, size_t n, uint64_t *rs)
{
	/* blocks of very different magnitudes, signed, some exact zeros */
	for (size_t i = 0; i < n; i++) {
		double mag = pow(10.0, (double)((i / 32) % 7) - 4.0);
		double u = tu_randu(rs) * 2 - 1;
		x[i] = (i % 17 == 5) ? 0.0f : (float)(u * mag);
	}
}

/* Nearest rounding: every element within half a step of its block's
 * scale, the scale is the smallest f16 >= absmax/qmax, and the chosen level
 * is a nearest one (checked against all levels in double). */
static void test_nearest_bounds(void **state)
{
	(void)state;
	uint64_t rs = 42;
	const uint64_t shapes[][2] = {{7, 45}, {16, 64}, {3, 40}, {1, 1}, {5, 128}};
	for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
		size_t n = (size_t)(shapes[si][0] * shapes[si][1]);
		float *x = malloc(n * 4), *y = malloc(n * 4);
		fill(x, n, &rs);
		for (size_t fi = 0; fi < 3; fi++)
			for (size_t bi = 0; bi < 3; bi++) {
				enum qt_fmt f = QFMTS[fi];
				uint32_t B = BLOCKS[bi];
				quant_params p = {f, B, QUANT_NEAREST, 0};
				qtensor q;
				qt_init(&q);
				assert_int_equal(quant_encode(&p, "t", x, 2, shapes[si], &q), 0);
				assert_int_equal(qt_check(&q, NULL, NULL, 0), 0);
				assert_int_equal(quant_decode(&q, y, n), 0);
				int lo, hi, stride;
				double qdiv;
				levels(f, &lo, &hi, &stride, &qdiv);
				for (size_t j = 0; j * B < n; j++) {
					size_t e = (j + 1) * B < n ? (j + 1) * B : n;
					float amax = 0;
					for (size_t i = j * B; i < e; i++)
						amax = fmaxf(amax, fabsf(x[i]));
					float s = scale_of(&q, j);
					uint16_t sb =
					    (uint16_t)(q.scales[2 * j] | q.scales[2 * j + 1] << 8);
					float want = amax / (float)qdiv;
					if (amax == 0) {
						assert_true(s == 0);
					} else {
						assert_true(s >= want);
						if (sb > 1)
							assert_true(
							    half_to_f32((uint16_t)(sb - 1)) < want);
					}
					double step = (double)s * stride;
					for (size_t i = j * B; i < e; i++) {
						double err = fabs((double)x[i] - (double)y[i]);
						if (err > step / 2 * (1 + 1e-6) + 1e-30)
							fail_msg("%s B%u n=%zu i=%zu x=%g y=%g "
							         "s=%g err=%g",
							         qt_fmt_name(f), B, n, i,
							         (double)x[i], (double)y[i],
							         (double)s, err);
						/* nearest among all levels (ties allowed either
						 * way) */
						double best = INFINITY;
						for (int L = lo; L <= hi; L += stride)
							best = fmin(best, fabs((double)x[i] -
							                       L * (double)s));
						assert_true(err <= best + step * 1e-6 + 1e-30);
					}
				}
				qt_fini(&q);
			}
		free(x);
		free(y);
	}
}

static void test_f16_f32(void **state)
{
	(void)state;
	uint64_t rs = 7, shape[1] = {1000};
	float x[1000], y[1000];
	fill(x, 1000, &rs);
	x[3] = 1e-7f; /* f16 subnormal range */
	x[4] = 65504.0f;
	x[5] = -65519.0f; /* rounds to -65504 */
	qtensor q;
	qt_init(&q);
	quant_params p = {QT_F32, 0, QUANT_NEAREST, 0};
	assert_int_equal(quant_encode(&p, "a", x, 1, shape, &q), 0);
	assert_int_equal(q.data_len, 4000);
	assert_int_equal(q.scales_len, 0);
	assert_int_equal(quant_decode(&q, y, 1000), 0);
	assert_memory_equal(x, y, sizeof x);
	p.fmt = QT_F16;
	assert_int_equal(quant_encode(&p, "a", x, 1, shape, &q), 0);
	assert_int_equal(q.data_len, 2000);
	assert_int_equal(quant_decode(&q, y, 1000), 0);
	for (int i = 0; i < 1000; i++) {
		assert_true(y[i] == half_to_f32(half_from_f32(x[i])));
		/* RNE: within half an f16 ulp (relative 2^-11, absolute 2^-25 for subnormals) */
		assert_true(fabs((double)x[i] - y[i]) <=
		            fmax(fabs((double)x[i]) * 0x1p-11, 0x1p-25));
	}
	/* f16 overflow is an error, not a silent Inf */
	x[7] = 70000.0f;
	assert_int_equal(quant_encode(&p, "a", x, 1, shape, &q), FL_ENUMERIC);
	assert_int_equal(q.fmt, 0);
	p.round = QUANT_STOCHASTIC;
	assert_int_equal(quant_encode(&p, "a", x, 1, shape, &q), FL_ENUMERIC);
	x[7] = 1.0f;
	x[5] = -65000.0f; /* -65519 is fine rounded to nearest, out of range stochastically */
	assert_int_equal(quant_encode(&p, "a", x, 1, shape, &q), 0);
	assert_int_equal(quant_encode(&p, "a", x, 1, shape, &q), 0);
	assert_int_equal(quant_decode(&q, y, 1000), 0);
	for (int i = 0; i < 1000; i++) {
		/* stochastic f16: one of the two neighbouring f16 values */
		uint16_t h = half_from_f32(fabsf(x[i]));
		float v = half_to_f32(h);
		float other = v < fabsf(x[i]) ? half_to_f32((uint16_t)(h + 1))
		                              : (h ? half_to_f32((uint16_t)(h - 1)) : v);
		float ay = fabsf(y[i]);
		assert_true(ay == v || ay == other);
	}
	qt_fini(&q);
}

static void test_special_values(void **state)
{
	(void)state;
	qtensor q;
	qt_init(&q);
	float x[64], y[64];
	uint64_t shape[1] = {64};
	for (size_t fi = 0; fi < 3; fi++) {
		enum qt_fmt f = QFMTS[fi];
		quant_params p = {f, 32, QUANT_NEAREST, 1};
		/* all zeros: scale 0, decodes to exactly +0 */
		memset(x, 0, sizeof x);
		assert_int_equal(quant_encode(&p, "z", x, 1, shape, &q), 0);
		assert_int_equal(scale_of(&q, 0), 0);
		assert_int_equal(quant_decode(&q, y, 64), 0);
		for (int i = 0; i < 64; i++)
			assert_true(y[i] == 0.0f && !signbit(y[i]));
		/* one huge outlier: the rest of its block rounds within half a step */
		for (int i = 0; i < 64; i++)
			x[i] = 1e-3f * (float)(i % 5 - 2);
		x[10] = 1000.0f;
		assert_int_equal(quant_encode(&p, "o", x, 1, shape, &q), 0);
		assert_int_equal(quant_decode(&q, y, 64), 0);
		double step = scale_of(&q, 0) * (f == QT_Q2 ? 2.0 : 1.0);
		for (int i = 0; i < 32; i++)
			assert_true(fabs((double)x[i] - y[i]) <= step / 2 * (1 + 1e-6));
		assert_true(fabs(y[10] - 1000.0f) <= step / 2);
		/* second block unaffected by the outlier: fine scale */
		assert_true(scale_of(&q, 1) < 1e-3f);
		/* denormal inputs: scale becomes the smallest f16 subnormal */
		for (int i = 0; i < 64; i++)
			x[i] = (i & 1 ? -1.0f : 1.0f) * 1e-40f * (float)i;
		assert_int_equal(quant_encode(&p, "d", x, 1, shape, &q), 0);
		assert_true(scale_of(&q, 0) == 0x1p-24f);
		assert_int_equal(quant_decode(&q, y, 64), 0);
		for (int i = 0; i < 64; i++)
			assert_true(fabs((double)x[i] - y[i]) <= 0x1p-24 * (f == QT_Q2 ? 1 : 0.5));
		/* NaN / Inf are rejected and leave q empty */
		const float bad[] = {NAN, INFINITY, -INFINITY};
		for (int b = 0; b < 3; b++) {
			memset(x, 0, sizeof x);
			x[40] = bad[b];
			assert_int_equal(quant_encode(&p, "n", x, 1, shape, &q), FL_ENUMERIC);
			assert_int_equal(q.fmt, 0);
			assert_int_equal(q.data_len, 0);
		}
		/* scale overflow: |x| > 65504 * qmax is an error */
		double qmax = f == QT_Q8 ? 127 : f == QT_Q4 ? 7 : 3;
		memset(x, 0, sizeof x);
		x[0] = (float)(65504.0 * qmax * 0.999);
		assert_int_equal(quant_encode(&p, "big", x, 1, shape, &q), 0);
		assert_true(scale_of(&q, 0) <= HALF_MAX);
		x[0] = (float)(65504.0 * qmax * 1.01);
		assert_int_equal(quant_encode(&p, "big", x, 1, shape, &q), FL_ENUMERIC);
		x[0] = FLT_MAX;
		assert_int_equal(quant_encode(&p, "big", x, 1, shape, &q), FL_ENUMERIC);
	}
	qt_fini(&q);
}

/* Layout from docs/FORMATS.md, by hand. */
static void test_layout_bytes(void **state)
{
	(void)state;
	qtensor q;
	qt_init(&q);
	float x[32] = {0};
	uint64_t shape[1] = {32};
	/* q8: absmax 127 -> scale 1.0 (f16 0x3c00) */
	x[0] = 127, x[1] = -127, x[2] = 5, x[3] = -2.5f; /* -2.5 ties to even: -2 */
	quant_params p = {QT_Q8, 32, QUANT_NEAREST, 0};
	assert_int_equal(quant_encode(&p, "l", x, 1, shape, &q), 0);
	assert_int_equal(q.scales_len, 2);
	assert_int_equal(q.scales[0], 0x00);
	assert_int_equal(q.scales[1], 0x3c);
	assert_int_equal(q.data[0], 0x7f);
	assert_int_equal(q.data[1], 0x81);
	assert_int_equal(q.data[2], 0x05);
	assert_int_equal(q.data[3], 0xfe);
	assert_int_equal(q.data[4], 0x00);
	/* q4: absmax 7 -> scale 1; nibble = level + 8, element 2k low nibble */
	memset(x, 0, sizeof x);
	x[0] = 1, x[1] = -2, x[2] = 7, x[3] = -7;
	p.fmt = QT_Q4;
	assert_int_equal(quant_encode(&p, "l", x, 1, shape, &q), 0);
	assert_int_equal(q.data_len, 16);
	assert_int_equal(q.scales[1], 0x3c);
	assert_int_equal(q.data[0], 0x69);
	assert_int_equal(q.data[1], 0x1f);
	assert_int_equal(q.data[2], 0x88);
	/* q2: absmax 3 -> scale 1; levels -3,-1,1,3 stored as 0..3, element 4k in bits 0-1 */
	memset(x, 0, sizeof x);
	x[0] = 3, x[1] = -3, x[2] = 1, x[3] = -1;
	x[4] = 0.2f, x[5] = -0.2f, x[6] = 2.2f, x[7] = -2.2f;
	p.fmt = QT_Q2;
	assert_int_equal(quant_encode(&p, "l", x, 1, shape, &q), 0);
	assert_int_equal(q.data_len, 8);
	assert_int_equal(q.data[0], 3 | 0 << 2 | 2 << 4 | 1 << 6);
	assert_int_equal(q.data[1], 2 | 1 << 2 | 3 << 4 | 0 << 6);
	/* final partial block, last dim not a multiple of the block: shape
	 * [3, 40] is 120 elements in 4 blocks (32, 32, 32, 24); block 1 spans
	 * rows 0 and 1 and takes its scale from both */
	float z[120];
	for (int i = 0; i < 120; i++)
		z[i] = 0.01f;
	z[45] = 7.0f; /* row 1, element 5 -> block 1 */
	uint64_t sh2[2] = {3, 40};
	p.fmt = QT_Q4;
	assert_int_equal(quant_encode(&p, "flat", z, 2, sh2, &q), 0);
	assert_int_equal(q.scales_len, 8);
	assert_int_equal(q.data_len, 60);
	assert_true(scale_of(&q, 1) == 1.0f);
	assert_true(scale_of(&q, 0) < 0.01f && scale_of(&q, 3) < 0.01f);
	/* odd element count: q4 pads the last byte's high nibble with 0 */
	uint64_t sh3[1] = {33};
	float w[33];
	for (int i = 0; i < 33; i++)
		w[i] = -7.0f;
	assert_int_equal(quant_encode(&p, "odd", w, 1, sh3, &q), 0);
	assert_int_equal(q.data_len, 17);
	assert_int_equal(q.data[16], 0x01);
	assert_int_equal(qt_check(&q, NULL, NULL, 0), 0);
	qt_fini(&q);
}

/* Mean of stochastic dequantized values over many seeds converges to x.
 * Per element, the rounding noise has variance <= step^2 / 4, so with N
 * seeds the mean's standard error is <= step / (2 sqrt N); we allow 5 of
 * those (a false alarm has probability ~ 1e-6 per element). */
static void test_stochastic_unbiased(void **state)
{
	(void)state;
	enum { N = 20000, n = 64 };
	float x[n], y[n];
	uint64_t rs = 99, shape[1] = {n};
	for (int i = 0; i < n; i++)
		x[i] = (float)(tu_randu(&rs) * 2 - 1);
	x[0] = 1.0f; /* absmax of block 0 */
	x[1] = 0.0f;
	for (size_t fi = 0; fi < 6; fi++) {
		/* each format with the scalar path, then with the active one */
		if (quant_set_impl(fi < 3 ? QUANT_IMPL_SCALAR : QUANT_IMPL_AUTO))
			fail();
		quant_params p = {QFMTS[fi % 3], 32, QUANT_STOCHASTIC, 0};
		double sum[n] = {0};
		qtensor q;
		qt_init(&q);
		double smax = 0;
		for (int k = 0; k < N; k++) {
			p.seed = quant_seed_derive((uint64_t)k, "x");
			assert_int_equal(quant_encode(&p, "x", x, 1, shape, &q), 0);
			assert_int_equal(quant_decode(&q, y, n), 0);
			for (int i = 0; i < n; i++) {
				double st =
				    scale_of(&q, (size_t)i / 32) * (p.fmt == QT_Q2 ? 2.0 : 1.0);
				/* always one of the two levels around x */
				assert_true(fabs((double)y[i] - x[i]) <= st * (1 + 1e-6));
				sum[i] += y[i];
				smax = fmax(smax, st);
			}
		}
		double tol = 5 * smax / (2 * sqrt((double)N));
		for (int i = 0; i < n; i++) {
			double mean = sum[i] / N;
			if (fabs(mean - x[i]) > tol)
				fail_msg("%s elem %d: mean %.6f vs x %.6f (tol %.6f)",
				         qt_fmt_name(p.fmt), i, mean, (double)x[i], tol);
		}
		/* reproducible: same seed, same bytes; another seed, other bytes */
		qtensor a, b;
		qt_init(&a);
		qt_init(&b);
		p.seed = 1234;
		assert_int_equal(quant_encode(&p, "x", x, 1, shape, &a), 0);
		assert_int_equal(quant_encode(&p, "x", x, 1, shape, &b), 0);
		assert_memory_equal(a.data, b.data, a.data_len);
		assert_true(b.stochastic);
		p.seed = 1235;
		assert_int_equal(quant_encode(&p, "x", x, 1, shape, &b), 0);
		assert_true(memcmp(a.data, b.data, a.data_len) != 0);
		qt_fini(&a);
		qt_fini(&b);
		qt_fini(&q);
	}
}

/* Error feedback: sum of deq(q_t) tracks sum of delta_t within one step
 * (the final residual), for every format and both roundings. */
static void test_error_feedback(void **state)
{
	(void)state;
	enum { T = 60, n = 200 };
	uint64_t rs = 5, shape[2] = {4, 50};
	const enum qt_fmt fmts[] = {QT_F16, QT_Q8, QT_Q4, QT_Q2};
	for (size_t fi = 0; fi < 4; fi++)
		for (int sto = 0; sto < 2; sto++) {
			quant_params p = {fmts[fi], fmts[fi] == QT_F16 ? 0 : 32,
			                  sto ? QUANT_STOCHASTIC : QUANT_NEAREST, 0};
			float delta[n], res[n] = {0}, y[n], lastx[n];
			double sd[n] = {0}, sq[n] = {0};
			qtensor q;
			qt_init(&q);
			for (int t = 0; t < T; t++) {
				for (int i = 0; i < n; i++)
					delta[i] = (float)((tu_randu(&rs) - 0.3) * 1e-3);
				p.seed = (uint64_t)t;
				for (int i = 0; i < n; i++)
					lastx[i] = delta[i] + res[i];
				assert_int_equal(quant_encode_ef(&p, "d", delta, res, 2, shape, &q),
				                 0);
				assert_int_equal(quant_decode(&q, y, n), 0);
				for (int i = 0; i < n; i++) {
					sd[i] += delta[i];
					sq[i] += y[i];
				}
			}
			for (int i = 0; i < n; i++) {
				double step;
				if (fmts[fi] == QT_F16) /* f16 ulp at the last input */
					step =
					    fmax(pow(2, floor(log2(fabs((double)lastx[i]))) - 10),
					         0x1p-24);
				else
					step = scale_of(&q, (size_t)i / 32) *
					       (fmts[fi] == QT_Q2 ? 2.0 : 1.0);
				double gap = fabs(sd[i] - sq[i]);
				/* the residual holds exactly the gap (up to f32 rounding) */
				assert_true(fabs(gap - fabs((double)res[i])) <= 1e-8);
				double bound = (sto ? 1.0 : 0.5) * step * (1 + 1e-5) + 1e-8;
				if (gap > bound)
					fail_msg("%s %s elem %d: |sum delta - sum deq| = %g > %g",
					         qt_fmt_name(fmts[fi]), sto ? "sto" : "near", i,
					         gap, bound);
			}
			qt_fini(&q);
		}
	/* failure leaves the residual untouched */
	float d2[32] = {0}, r2[32], r2c[32];
	uint64_t s2[1] = {32};
	for (int i = 0; i < 32; i++)
		r2[i] = r2c[i] = 0.5f * (float)i;
	d2[3] = NAN;
	quant_params p = {QT_Q4, 32, QUANT_NEAREST, 0};
	qtensor q;
	qt_init(&q);
	assert_int_equal(quant_encode_ef(&p, "d", d2, r2, 1, s2, &q), FL_ENUMERIC);
	assert_memory_equal(r2, r2c, sizeof r2);
	qt_fini(&q);
}

/* acc += w * deq and t += deq against a double reference and against
 * decode-then-add. */
static void test_accumulate_apply(void **state)
{
	(void)state;
	enum { n = 777 };
	uint64_t rs = 11, shape[1] = {n};
	float x[n], acc[n], ref[n], y[n];
	fill(x, n, &rs);
	const enum qt_fmt fmts[] = {QT_F32, QT_F16, QT_Q8, QT_Q4, QT_Q2};
	for (size_t fi = 0; fi < 5; fi++) {
		quant_params p = {fmts[fi], fmts[fi] >= QT_Q8 ? 64 : 0, QUANT_NEAREST, 0};
		qtensor q;
		qt_init(&q);
		assert_int_equal(quant_encode(&p, "a", x, 1, shape, &q), 0);
		assert_int_equal(quant_decode(&q, y, n), 0);
		for (int i = 0; i < n; i++)
			acc[i] = ref[i] = (float)(tu_randu(&rs) - 0.5) * 1e-3f;
		float w = 0.3717f;
		assert_int_equal(quant_accumulate(&q, w, acc, n), 0);
		for (int i = 0; i < n; i++) {
			double r = (double)ref[i] + (double)w * (double)y[i];
			/* one f32 rounding of the sum, plus w*s rounded once per block */
			double tol = fabs(r) * 0x1p-24 + fabs((double)w * y[i]) * 0x1p-23 + 1e-30;
			assert_true(fabs((double)acc[i] - r) <= tol);
		}
		/* apply == decode, then add in f32 (bit for bit) */
		for (int i = 0; i < n; i++)
			acc[i] = ref[i];
		assert_int_equal(quant_apply(&q, acc, n), 0);
		for (int i = 0; i < n; i++) {
			float e = ref[i] + y[i];
			assert_memory_equal(&acc[i], &e, 4);
		}
		assert_int_equal(quant_apply(&q, acc, n - 1), FL_EMISMATCH);
		assert_int_equal(quant_accumulate(&q, NAN, acc, n), FL_EINVAL);
		qt_fini(&q);
	}
}

static void test_params(void **state)
{
	(void)state;
	float x[4] = {1, 2, 3, 4};
	uint64_t shape[1] = {4}, zero[1] = {0};
	qtensor q;
	qt_init(&q);
	quant_params p = {QT_Q4, 16, QUANT_NEAREST, 0};
	assert_int_equal(quant_encode(&p, "x", x, 1, shape, &q), FL_EINVAL);
	p.block = 256;
	assert_int_equal(quant_encode(&p, "x", x, 1, shape, &q), FL_EINVAL);
	p = (quant_params){QT_F32, 32, QUANT_NEAREST, 0};
	assert_int_equal(quant_encode(&p, "x", x, 1, shape, &q), FL_EINVAL);
	p = (quant_params){(enum qt_fmt)9, 32, QUANT_NEAREST, 0};
	assert_int_equal(quant_encode(&p, "x", x, 1, shape, &q), FL_EINVAL);
	p = (quant_params){QT_Q8, 32, (enum quant_round)5, 0};
	assert_int_equal(quant_encode(&p, "x", x, 1, shape, &q), FL_EINVAL);
	p = (quant_params){QT_Q8, 32, QUANT_NEAREST, 0};
	assert_int_equal(quant_encode(&p, "x", x, 1, zero, &q), FL_EINVAL);
	assert_int_equal(quant_encode(&p, "x", x, 0, shape, &q), FL_EINVAL);
	assert_int_equal(quant_encode(&p, "x", x, 1, shape, &q), 0);
	assert_int_equal(quant_seed_derive(1, "a") == quant_seed_derive(1, "b"), 0);
	assert_int_equal(quant_seed_derive(1, "a") == quant_seed_derive(2, "a"), 0);
	qt_fini(&q);
}

static void test_tensor_and_set(void **state)
{
	(void)state;
	tset *g = NULL, *d = NULL, *res = NULL;
	assert_int_equal(tset_new(&g), 0);
	uint64_t sa[2] = {8, 96}, sb[2] = {80, 8};
	tensor *ta, *tb;
	assert_int_equal(tset_insert(g, "blk.0.attn_q.lora_a", 2, sa, NULL, &ta), 0);
	assert_int_equal(tset_insert(g, "blk.0.attn_q.lora_b", 2, sb, NULL, &tb), 0);
	assert_int_equal(tset_zeros_like(g, &d), 0);
	assert_int_equal(tset_zeros_like(g, &res), 0);
	uint64_t rs = 3;
	for (size_t i = 0; i < tset_count(d); i++)
		fill(tset_at(d, i)->data, tset_at(d, i)->n, &rs);
	quant_params p = {QT_Q4, 32, QUANT_NEAREST, 0};
	qtensor qs[2];
	for (int i = 0; i < 2; i++) {
		qt_init(&qs[i]);
		assert_int_equal(quant_encode_tensor_ef(&p, tset_at(d, (size_t)i),
		                                        tset_at(res, (size_t)i), &qs[i]),
		                 0);
		assert_string_equal(qs[i].name, tset_at(d, (size_t)i)->name);
	}
	/* apply_set == per tensor apply */
	tset *g2 = NULL;
	assert_int_equal(tset_clone(g, &g2), 0);
	assert_int_equal(quant_apply_set(g, qs, 2), 0);
	assert_int_equal(quant_apply_tensor(&qs[1], tset_find(g2, qs[1].name)), 0);
	assert_int_equal(quant_apply_tensor(&qs[0], tset_find(g2, qs[0].name)), 0);
	uint8_t f1[32], f2[32], f3[32];
	assert_int_equal(tset_fingerprint(g, f1), 0);
	assert_int_equal(tset_fingerprint(g2, f2), 0);
	assert_memory_equal(f1, f2, 32);
	/* errors leave the set unchanged */
	qtensor bad[2];
	qt_init(&bad[0]);
	qt_init(&bad[1]);
	assert_int_equal(qt_copy(&bad[0], &qs[0]), 0);
	assert_int_equal(qt_copy(&bad[1], &qs[0]), 0);
	assert_int_equal(quant_apply_set(g, bad, 2), FL_EMISMATCH); /* duplicate */
	memcpy(bad[1].name, "blk.9.x", 8);
	assert_int_equal(quant_apply_set(g, bad, 2), FL_EMISMATCH); /* unknown */
	assert_int_equal(quant_apply_tensor(&qs[0], tset_find(g, qs[1].name)), FL_EMISMATCH);
	assert_int_equal(tset_fingerprint(g, f3), 0);
	assert_memory_equal(f1, f3, 32);
	/* a subset is fine (FFA-LoRA sends lora_b only) */
	assert_int_equal(quant_apply_set(g, &qs[1], 1), 0);
	for (int i = 0; i < 2; i++) {
		qt_fini(&qs[i]);
		qt_fini(&bad[i]);
	}
	tset_free(g);
	tset_free(g2);
	tset_free(d);
	tset_free(res);
}

/* Scalar and vector paths (AVX2 on x86-64, NEON on aarch64): same bytes,
 * same floats, for every format, block, rounding, with and without error
 * feedback, and tails of every length. */
static void test_scalar_avx2_identical(void **state)
{
	(void)state;
	const enum quant_impl vi = quant_vector_impl();
	if (vi == QUANT_IMPL_SCALAR) {
		print_message("no AVX2/FMA/F16C or NEON here: scalar path only\n");
		skip();
	}
	print_message("comparing scalar with %s\n", quant_impl_name(vi));
	const size_t sizes[] = {1, 7, 8, 31, 32, 33, 100, 128, 129, 1000, 4103};
	const enum qt_fmt fmts[] = {QT_F32, QT_F16, QT_Q8, QT_Q4, QT_Q2};
	uint64_t rs = 2024;
	size_t maxn = 4103;
	float *x = malloc(maxn * 4), *r0 = malloc(maxn * 4), *r1 = malloc(maxn * 4);
	float *y0 = malloc(maxn * 4), *y1 = malloc(maxn * 4);
	float *a0 = malloc(maxn * 4), *a1 = malloc(maxn * 4);
	for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
		size_t n = sizes[si];
		uint64_t shape[1] = {n};
		fill(x, n, &rs);
		for (size_t fi = 0; fi < 5; fi++)
			for (size_t bi = 0; bi < 3; bi++)
				for (int sto = 0; sto < 2; sto++)
					for (int ef = 0; ef < 2; ef++) {
						enum qt_fmt f = fmts[fi];
						if (f <= QT_F16 && bi)
							continue;
						quant_params p = {f, f <= QT_F16 ? 0 : BLOCKS[bi],
						                  sto ? QUANT_STOCHASTIC
						                      : QUANT_NEAREST,
						                  0x0123456789abcdefull + n};
						qtensor q0, q1;
						qt_init(&q0);
						qt_init(&q1);
						for (size_t i = 0; i < n; i++)
							r0[i] = r1[i] =
							    (float)(tu_randu(&rs) - 0.5) * 1e-3f;
						assert_int_equal(quant_set_impl(QUANT_IMPL_SCALAR),
						                 0);
						assert_int_equal(
						    ef ? quant_encode_ef(&p, "t", x, r0, 1, shape,
						                         &q0)
						       : quant_encode(&p, "t", x, 1, shape, &q0),
						    0);
						assert_int_equal(quant_set_impl(vi), 0);
						assert_int_equal(
						    ef ? quant_encode_ef(&p, "t", x, r1, 1, shape,
						                         &q1)
						       : quant_encode(&p, "t", x, 1, shape, &q1),
						    0);
						assert_int_equal(q0.data_len, q1.data_len);
						assert_int_equal(q0.scales_len, q1.scales_len);
						if (memcmp(q0.data, q1.data, q0.data_len) ||
						    (q0.scales_len &&
						     memcmp(q0.scales, q1.scales, q0.scales_len)))
							fail_msg("encode differs: %s B%u n=%zu "
							         "sto=%d ef=%d",
							         qt_fmt_name(f), p.block, n, sto,
							         ef);
						assert_memory_equal(r0, r1, n * 4);
						/* decode and accumulate with both paths on the same
						 * bytes */
						for (size_t i = 0; i < n; i++)
							a0[i] = a1[i] =
							    (float)(tu_randu(&rs) - 0.5);
						assert_int_equal(quant_set_impl(QUANT_IMPL_SCALAR),
						                 0);
						assert_int_equal(quant_decode(&q0, y0, n), 0);
						assert_int_equal(
						    quant_accumulate(&q0, 0.123f, a0, n), 0);
						assert_int_equal(quant_set_impl(vi), 0);
						assert_int_equal(quant_decode(&q0, y1, n), 0);
						assert_int_equal(
						    quant_accumulate(&q0, 0.123f, a1, n), 0);
						if (memcmp(y0, y1, n * 4) || memcmp(a0, a1, n * 4))
							fail_msg("decode differs: %s B%u n=%zu",
							         qt_fmt_name(f), p.block, n);
						qt_fini(&q0);
						qt_fini(&q1);
					}
	}
	assert_int_equal(quant_set_impl(QUANT_IMPL_AUTO), 0);
	free(x);
	free(r0);
	free(r1);
	free(y0);
	free(y1);
	free(a0);
	free(a1);
}

/* Values a compiler could get wrong by contracting mul+add: accumulate with
 * an acc that cancels the product; fma and mul-then-add differ there, and
 * both paths must agree with the explicit fmaf reference. */
static void test_fma_semantics(void **state)
{
	(void)state;
	float x[32];
	uint64_t shape[1] = {32};
	for (int i = 0; i < 32; i++)
		x[i] = (float)(i - 16) * 0.3f + 0.01f;
	quant_params p = {QT_Q8, 32, QUANT_NEAREST, 0};
	qtensor q;
	qt_init(&q);
	assert_int_equal(quant_encode(&p, "f", x, 1, shape, &q), 0);
	float s = scale_of(&q, 0), w = 0.1f, ws = w * s;
	float acc[32], ref[32];
	for (int i = 0; i < 32; i++) {
		int L = (int8_t)q.data[i];
		acc[i] = -(float)L * ws * (1.0f + 0x1p-20f); /* near-cancellation */
		ref[i] = fmaf((float)L, ws, acc[i]);
	}
	for (int impl = QUANT_IMPL_SCALAR; impl <= QUANT_IMPL_NEON; impl++) {
		if (quant_set_impl((enum quant_impl)impl))
			continue;
		float a[32];
		memcpy(a, acc, sizeof a);
		assert_int_equal(quant_accumulate(&q, w, a, 32), 0);
		assert_memory_equal(a, ref, sizeof a);
	}
	quant_set_impl(QUANT_IMPL_AUTO);
	qt_fini(&q);
}

/* Several threads decode and accumulate at once (the coordinator's
 * aggregation workers), including the very first calls that pick the
 * implementation; every thread gets the single-threaded result. */
enum { TH = 4, TN = 5000 };
typedef struct th_arg {
	const qtensor *q;
	float acc[TN];
} th_arg;

static void *th_main(void *p)
{
	th_arg *a = p;
	for (int r = 0; r < 20; r++)
		if (quant_accumulate(a->q, 0.5f, a->acc, TN) != 0)
			return p;
	return NULL;
}

static void test_threads(void **state)
{
	(void)state;
	float x[TN];
	uint64_t rs = 8, shape[1] = {TN};
	fill(x, TN, &rs);
	qtensor q;
	qt_init(&q);
	quant_params p = {QT_Q4, 32, QUANT_NEAREST, 0};
	assert_int_equal(quant_encode(&p, "t", x, 1, shape, &q), 0);
	static th_arg args[TH];
	pthread_t th[TH];
	for (int i = 0; i < TH; i++) {
		args[i].q = &q;
		memset(args[i].acc, 0, sizeof args[i].acc);
		assert_int_equal(pthread_create(&th[i], NULL, th_main, &args[i]), 0);
	}
	for (int i = 0; i < TH; i++) {
		void *ret = &ret;
		assert_int_equal(pthread_join(th[i], &ret), 0);
		assert_null(ret);
	}
	float ref[TN] = {0};
	for (int r = 0; r < 20; r++)
		assert_int_equal(quant_accumulate(&q, 0.5f, ref, TN), 0);
	for (int i = 0; i < TH; i++)
		assert_memory_equal(args[i].acc, ref, sizeof ref);
	qt_fini(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_threads), /* first: races the lazy set-up */
	    cmocka_unit_test(test_nearest_bounds),
	    cmocka_unit_test(test_f16_f32),
	    cmocka_unit_test(test_special_values),
	    cmocka_unit_test(test_layout_bytes),
	    cmocka_unit_test(test_stochastic_unbiased),
	    cmocka_unit_test(test_error_feedback),
	    cmocka_unit_test(test_accumulate_apply),
	    cmocka_unit_test(test_params),
	    cmocka_unit_test(test_tensor_and_set),
	    cmocka_unit_test(test_scalar_avx2_identical),
	    cmocka_unit_test(test_fma_semantics),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
