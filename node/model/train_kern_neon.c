/* train_kern_neon — see train_kern_neon.h. Mirrors train_kern_avx2.c on 4
 * lanes: exp(x) = 2^k exp(r), x = k ln2 + r, k = round(x / ln2) (FRINTN,
 * ties to even, as _MM_FROUND_TO_NEAREST_INT), exp(r) by the same degree-5
 * polynomial, inputs clamped to [-87.3, 88.7]. */
#include "train_kern_neon.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

static inline float32x4_t tk_exp4(float32x4_t x)
{
	x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.7f));
	const float32x4_t fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
	float32x4_t r = vfmsq_f32(x, fx, vdupq_n_f32(0.693359375f));
	r = vfmsq_f32(r, fx, vdupq_n_f32(-2.12194440e-4f));
	float32x4_t y = vdupq_n_f32(1.9875691500e-4f);
	y = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), y, r);
	y = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), y, r);
	y = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), y, r);
	y = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), y, r);
	y = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), y, r);
	y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), y, vmulq_f32(r, r));
	const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)), 23);
	return vmulq_f32(y, vreinterpretq_f32_s32(e));
}

static inline float32x4_t sigmoid4(float32x4_t g)
{
	const float32x4_t one = vdupq_n_f32(1.0f);
	return vdivq_f32(one, vaddq_f32(one, tk_exp4(vnegq_f32(g))));
}

void tk_neon_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, size_t n)
{
	const float32x4_t one = vdupq_n_f32(1.0f);
	size_t i = 0;
	for (; i + 4 <= n; i += 4) {
		const float32x4_t g = vld1q_f32(gate + i), d = vld1q_f32(dh + i);
		const float32x4_t u = vld1q_f32(up + i);
		const float32x4_t sg = sigmoid4(g);
		/* dup = dh * g * sg; dgate = dh * up * sg * (1 + g * (1 - sg)) */
		const float32x4_t dsil = vmulq_f32(sg, vfmaq_f32(one, g, vsubq_f32(one, sg)));
		vst1q_f32(dup + i, vmulq_f32(d, vmulq_f32(g, sg)));
		vst1q_f32(dgate + i, vmulq_f32(vmulq_f32(d, u), dsil));
	}
	for (; i < n; i++) {
		const float s = vgetq_lane_f32(sigmoid4(vdupq_n_f32(gate[i])), 0);
		const float gg = gate[i], d = dh[i];
		dup[i] = d * (gg * s);
		dgate[i] = (d * up[i]) * (s * (1.0f + gg * (1.0f - s)));
	}
}

#else /* not aarch64: train_kern.c never calls it */
typedef int train_kern_neon_unused;
#endif
