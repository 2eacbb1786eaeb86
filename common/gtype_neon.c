/* gtype_neon — AArch64 Advanced SIMD row kernels for gtype (F16, Q8_0,
 * Q4_0 dequantization), called through the dispatchers in gtype.c in every
 * aarch64 build (ASIMD is part of ARMv8-A: chosen at build time). Results
 * equal the scalar kernels' bit for bit: F16 -> F32 is exact, and d * q of
 * an f16 scale and an integer level of at most 8 bits has at most 19
 * significant bits, so the one multiplication is exact too (only NaN
 * payloads may differ: FCVTL quiets signalling NaNs). */
#include <stddef.h>
#include <stdint.h>

void gtype_dequant_f16_neon(const void *src, float *dst, size_t n);
void gtype_dequant_q8_0_neon(const void *src, float *dst, size_t n);
void gtype_dequant_q4_0_neon(const void *src, float *dst, size_t n);

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#include "gtype.h"
#include "half.h"

static inline float32x4_t f16x4(const uint8_t *p)
{
	return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); /* little endian */
}

void gtype_dequant_f16_neon(const void *src, float *dst, size_t n)
{
	const uint8_t *p = src;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		vst1q_f32(dst + i, f16x4(p + 2 * i));
		vst1q_f32(dst + i + 4, f16x4(p + 2 * i + 8));
	}
	for (; i < n; i++)
		dst[i] = half_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}

/* dst[0..16) = d * (float)q for 16 int8 levels */
static inline void mul16(float *dst, int8x16_t q, float32x4_t d)
{
	int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
	vst1q_f32(dst, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d));
	vst1q_f32(dst + 4, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))), d));
	vst1q_f32(dst + 8, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d));
	vst1q_f32(dst + 12, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))), d));
}

static inline float32x4_t scale_of(const uint8_t *b)
{
	return vdupq_n_f32(half_to_f32((uint16_t)(b[0] | b[1] << 8)));
}

void gtype_dequant_q8_0_neon(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QK; i++, b += 2 + GTYPE_QK, dst += GTYPE_QK) {
		const float32x4_t d = scale_of(b);
		mul16(dst, vld1q_s8((const int8_t *)(b + 2)), d);
		mul16(dst + 16, vld1q_s8((const int8_t *)(b + 18)), d);
	}
}

void gtype_dequant_q4_0_neon(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	const int8x16_t eight = vdupq_n_s8(8);
	for (size_t i = 0; i < n / GTYPE_QK; i++, b += 2 + GTYPE_QK / 2, dst += GTYPE_QK) {
		const float32x4_t d = scale_of(b);
		const uint8x16_t q = vld1q_u8(b + 2);
		/* low nibbles are elements 0..15, high nibbles 16..31 */
		const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
		const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
		mul16(dst, vsubq_s8(lo, eight), d);
		mul16(dst + 16, vsubq_s8(hi, eight), d);
	}
}
#endif
