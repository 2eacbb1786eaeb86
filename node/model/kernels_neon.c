/* kernels_neon — see kernels_neon.h. The loops mirror kernels_avx2.c on 4
 * lanes: the same exp (x = n ln2 + r, Taylor polynomial to r^7, 2^n through
 * the exponent bits, inputs clamped to [-87.3, 88.7], NaN propagates:
 * FMAX/FMIN return NaN for a NaN operand), the same two accumulators per
 * vector in the fused row dots. Results are not bit-identical to the
 * portable loops (libm expf, other summation order): test_kernels holds
 * both to the same double-precision references. */
#include "kernels_neon.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#include <string.h>

static inline float32x4_t exp4(float32x4_t x)
{
	const float32x4_t big = vdupq_n_f32(12582912.0f); /* 1.5*2^23: round to integer */
	x = vminq_f32(vdupq_n_f32(88.7f), vmaxq_f32(vdupq_n_f32(-87.3f), x));
	float32x4_t t = vfmaq_f32(big, x, vdupq_n_f32(1.44269504f));
	float32x4_t n = vsubq_f32(t, big);
	float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
	r = vfmaq_f32(r, n, vdupq_n_f32(2.12194440e-4f));
	float32x4_t p = vdupq_n_f32(1.9841270e-4f);
	p = vfmaq_f32(vdupq_n_f32(1.3888889e-3f), p, r);
	p = vfmaq_f32(vdupq_n_f32(8.3333338e-3f), p, r);
	p = vfmaq_f32(vdupq_n_f32(4.1666668e-2f), p, r);
	p = vfmaq_f32(vdupq_n_f32(1.6666667e-1f), p, r);
	p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
	p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
	p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
	int32x4_t e = vsubq_s32(vreinterpretq_s32_f32(t), vreinterpretq_s32_f32(big));
	e = vshlq_n_s32(vaddq_s32(e, vdupq_n_s32(127)), 23);
	return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

/* Lanes [0, n) of a 4-lane tail through a small buffer. */
static inline float32x4_t load_tail(const float *x, int n)
{
	float b[4] = {0, 0, 0, 0};
	memcpy(b, x, sizeof(float) * (size_t)n);
	return vld1q_f32(b);
}

static inline float32x4_t keep_lanes(float32x4_t v, int n)
{
	static const uint32_t idx[4] = {0, 1, 2, 3};
	uint32x4_t m = vcltq_u32(vld1q_u32(idx), vdupq_n_u32((uint32_t)n));
	return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), m));
}

float kern_neon_exp_sub_sum(float *x, int n, float mx)
{
	const float32x4_t m = vdupq_n_f32(mx);
	float32x4_t acc = vdupq_n_f32(0.0f);
	int i = 0;
	for (; i + 4 <= n; i += 4) {
		float32x4_t e = exp4(vsubq_f32(vld1q_f32(x + i), m));
		vst1q_f32(x + i, e);
		acc = vaddq_f32(acc, e);
	}
	if (i < n) {
		float b[4];
		float32x4_t e = keep_lanes(exp4(vsubq_f32(load_tail(x + i, n - i), m)), n - i);
		vst1q_f32(b, e);
		memcpy(x + i, b, sizeof(float) * (size_t)(n - i));
		acc = vaddq_f32(acc, e);
	}
	return vaddvq_f32(acc);
}

float kern_neon_sum_exp_sub(const float *x, int n, float mx)
{
	const float32x4_t m = vdupq_n_f32(mx);
	float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
	int i = 0;
	for (; i + 8 <= n; i += 8) {
		a0 = vaddq_f32(a0, exp4(vsubq_f32(vld1q_f32(x + i), m)));
		a1 = vaddq_f32(a1, exp4(vsubq_f32(vld1q_f32(x + i + 4), m)));
	}
	for (; i + 4 <= n; i += 4)
		a0 = vaddq_f32(a0, exp4(vsubq_f32(vld1q_f32(x + i), m)));
	if (i < n)
		a1 = vaddq_f32(a1, keep_lanes(exp4(vsubq_f32(load_tail(x + i, n - i), m)), n - i));
	return vaddvq_f32(vaddq_f32(a0, a1));
}

/* silu(g) * u = g / (1 + exp(-g)) * u on 4 lanes */
static inline float32x4_t swiglu4(float32x4_t g, float32x4_t u)
{
	float32x4_t den = vaddq_f32(vdupq_n_f32(1.0f), exp4(vnegq_f32(g)));
	return vmulq_f32(vdivq_f32(g, den), u);
}

void kern_neon_swiglu(float *out, const float *g, const float *u, size_t n)
{
	size_t i = 0;
	for (; i + 4 <= n; i += 4)
		vst1q_f32(out + i, swiglu4(vld1q_f32(g + i), vld1q_f32(u + i)));
	for (; i < n; i++)
		out[i] = vgetq_lane_f32(swiglu4(vdupq_n_f32(g[i]), vdupq_n_f32(u[i])), 0);
}

static inline float f16_at(const unsigned char *p)
{
	return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))), 0);
}

/* acc[k][s] += w * x_k[j..j+4) for the N vectors (two accumulators per
 * vector, as kernels_avx2.c). */
#define ACC4(w, j, s_)                                                                             \
	do {                                                                                       \
		for (int k_ = 0; k_ < N; k_++)                                                     \
			acc[k_][s_] =                                                              \
			    vfmaq_f32(acc[k_][s_], (w), vld1q_f32(x + (size_t)k_ * ldx + (j)));    \
	} while (0)

/* 16 int8 levels times d, four 4-lane vectors, accumulated at j..j+16 */
#define ACC16(q, d, j)                                                                             \
	do {                                                                                       \
		const int16x8_t lo_ = vmovl_s8(vget_low_s8(q)), hi_ = vmovl_s8(vget_high_s8(q));   \
		ACC4(vmulq_f32((d), vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo_)))), (j), 0);         \
		ACC4(vmulq_f32((d), vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo_)))), (j) + 4, 1);    \
		ACC4(vmulq_f32((d), vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi_)))), (j) + 8, 0);     \
		ACC4(vmulq_f32((d), vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi_)))), (j) + 12, 1);   \
	} while (0)

static inline __attribute__((always_inline)) void dots_n(unsigned type, const unsigned char *p,
                                                         int n, const float *x, int ldx,
                                                         const int N, float *out, int ld_out)
{
	float32x4_t acc[4][2];
	for (int k = 0; k < 4; k++)
		acc[k][0] = acc[k][1] = vdupq_n_f32(0.0f);
	if (type == 1) { /* F16 */
		for (int j = 0; j < n; j += 8) {
			float16x8_t h = vreinterpretq_f16_u8(vld1q_u8(p + 2 * j));
			ACC4(vcvt_f32_f16(vget_low_f16(h)), j, 0);
			ACC4(vcvt_high_f32_f16(h), j + 4, 1);
		}
	} else if (type == 8) { /* Q8_0: 34-byte blocks */
		for (int j = 0; j < n; j += 32, p += 34) {
			const float32x4_t d = vdupq_n_f32(f16_at(p));
			ACC16(vld1q_s8((const int8_t *)(p + 2)), d, j);
			ACC16(vld1q_s8((const int8_t *)(p + 18)), d, j + 16);
		}
	} else { /* Q4_0: 18-byte blocks, low nibbles are 0..15, high 16..31 */
		const int8x16_t eight = vdupq_n_s8(8);
		for (int j = 0; j < n; j += 32, p += 18) {
			const float32x4_t d = vdupq_n_f32(f16_at(p));
			const uint8x16_t q = vld1q_u8(p + 2);
			const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
			const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
			ACC16(vsubq_s8(lo, eight), d, j);
			ACC16(vsubq_s8(hi, eight), d, j + 16);
		}
	}
	for (int k = 0; k < N; k++)
		out[(size_t)k * ld_out] = vaddvq_f32(vaddq_f32(acc[k][0], acc[k][1]));
}
#undef ACC16
#undef ACC4

int kern_neon_row_dots(unsigned type, const void *row, int n, const float *x, int ldx, int N,
                       float *out, int ld_out)
{
	const unsigned char *p = row;
	if (type != 1 && type != 8 && type != 2)
		return -1;
	if (type == 1 && n % 16 != 0)
		return -1; /* as the AVX2 kernel: F16 rows in 16-element steps */
	switch (N) {
	case 1:
		dots_n(type, p, n, x, ldx, 1, out, ld_out);
		return 0;
	case 2:
		dots_n(type, p, n, x, ldx, 2, out, ld_out);
		return 0;
	case 3:
		dots_n(type, p, n, x, ldx, 3, out, ld_out);
		return 0;
	case 4:
		dots_n(type, p, n, x, ldx, 4, out, ld_out);
		return 0;
	default:
		return -1;
	}
}

#else /* not aarch64: kernels_simd.h never selects these */
typedef int kernels_neon_unused;
#endif
