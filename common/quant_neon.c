/* quant_neon — AArch64 Advanced SIMD (NEON) kernels of quant.h. ASIMD is
 * part of every ARMv8-A CPU, so an aarch64 build always has them: the
 * choice is made at build time (__aarch64__), and quant_set_impl can still
 * pick the scalar path for tests. Like quant_avx2.c, each vector operation
 * mirrors one scalar operation of quant.c on the same operands in the same
 * order:
 *   encode  x = a + b; absmax = max |x|; t = x / s; (q2: t = (t - 1) * 0.5);
 *           q = nearbyint(t) (FRINTN: ties to even) or floor(t + u) (FRINTM);
 *           clamp; pack
 *   decode  v = (float)L * s
 *   accum   acc = fma((float)L, w * s, acc)   (f32/f16: fma(v, w, acc)),
 *           FMLA, one rounding, as fmaf
 * so both paths produce the same bytes and the same floats. The
 * whole-tensor drivers are quant_simd.h's (shared with quant_avx2.c);
 * partial final blocks go to the scalar block kernels. The file is compiled with
 * -ffp-contract=off (CMakeLists.txt) like every file on the exact path, and
 * every fused multiply-add here is an explicit vfmaq_f32. The default FPCR
 * of Linux processes (round to nearest, no flush-to-zero) is assumed, as the
 * scalar code assumes the default floating-point environment. */
#include "quant.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include "err.h"
#include "half.h"
#include "quant_int.h"

#include <arm_neon.h>
#include <float.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

#define qs_vf           float32x4_t
#define QS_LANES        4
#define qs_set1(x)      vdupq_n_f32(x)
#define qs_loadf(p)     vld1q_f32(p)
#define qs_storef(p, v) vst1q_f32((p), (v))
#define qs_loadh(p)     vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)))
#define qs_fma(a, b, c) vfmaq_f32((c), (a), (b))
#define QS_FN(name)     quant_neon_##name
#include "quant_simd.h"

/* ---- stochastic-rounding stream: quant_uniform() on 4 lanes ---- */

AI uint32x4_t mix32v(uint32x4_t x)
{
	x = veorq_u32(x, vshrq_n_u32(x, 16));
	x = vmulq_u32(x, vdupq_n_u32(0x7feb352du));
	x = veorq_u32(x, vshrq_n_u32(x, 15));
	x = vmulq_u32(x, vdupq_n_u32(0x846ca68bu));
	x = veorq_u32(x, vshrq_n_u32(x, 16));
	return x;
}

AI float32x4_t uniformv(uint64_t seed, uint32_t i0)
{
	static const uint32_t lane[4] = {0, 1, 2, 3};
	uint32x4_t idx = vaddq_u32(vdupq_n_u32(i0), vld1q_u32(lane));
	uint32x4_t h =
	    vaddq_u32(vmulq_u32(idx, vdupq_n_u32(0x9e3779b9u)), vdupq_n_u32((uint32_t)seed));
	h = mix32v(h);
	h = mix32v(veorq_u32(h, vdupq_n_u32((uint32_t)(seed >> 32))));
	/* h >> 8 < 2^24: the conversion is exact, as in the scalar code */
	return vmulq_f32(vcvtq_f32_u32(vshrq_n_u32(h, 8)), vdupq_n_f32(0x1p-24f));
}

/* ---- encode ---- */

/* One full block of B (32, 64 or 128) elements. */
static int enc_block(const quant_params *p, const float *a, const float *b, uint32_t i0,
                     uint8_t *scale, uint8_t *data)
{
	const enum qt_fmt fmt = p->fmt;
	const size_t nv = p->block / 4;
	float32x4_t xv[32];
	const float32x4_t big = vdupq_n_f32(FLT_MAX);
	float32x4_t amax = vdupq_n_f32(0.0f);
	uint32x4_t ok = vdupq_n_u32(0xffffffffu);
	for (size_t j = 0; j < nv; j++) {
		float32x4_t x = vld1q_f32(a + 4 * j);
		if (b)
			x = vaddq_f32(x, vld1q_f32(b + 4 * j));
		xv[j] = x;
		float32x4_t ax = vabsq_f32(x);
		ok = vandq_u32(ok, vcleq_f32(ax, big)); /* false for NaN */
		amax = vmaxq_f32(amax, ax);
	}
	if (vminvq_u32(ok) != 0xffffffffu)
		return FL_ENUMERIC;
	float s;
	int rc = qs_block_scale(p, vmaxvq_f32(amax), scale, data, &s);
	if (rc)
		return rc < 0 ? rc : 0;

	const float32x4_t sv = vdupq_n_f32(s);
	const float32x4_t lo = vdupq_n_f32(fmt == QT_Q8 ? -127.0f : fmt == QT_Q4 ? -7.0f : -2.0f);
	const float32x4_t hi = vdupq_n_f32(fmt == QT_Q8 ? 127.0f : fmt == QT_Q4 ? 7.0f : 1.0f);
	const int32x4_t off = vdupq_n_s32(fmt == QT_Q8 ? 0 : fmt == QT_Q4 ? 8 : 2);
	const int sto = p->round == QUANT_STOCHASTIC;
	/* stored codes, one byte per element, in element order (4 spare bytes:
	 * each step stores 8 bytes of which the first 4 are its lanes) */
	uint8_t u8[128 + 4];
	for (size_t j = 0; j < nv; j++) {
		float32x4_t t = vdivq_f32(xv[j], sv);
		if (fmt == QT_Q2) {
			float32x4_t t1 = vsubq_f32(t, vdupq_n_f32(1.0f));
			t = vmulq_f32(t1, vdupq_n_f32(0.5f));
		}
		float32x4_t q;
		if (sto)
			q = vrndmq_f32(vaddq_f32(t, uniformv(p->seed, i0 + (uint32_t)(4 * j))));
		else
			q = vrndnq_f32(t);
		q = vminq_f32(vmaxq_f32(q, lo), hi);
		int32x4_t u = vaddq_s32(vcvtq_s32_f32(q), off); /* -127..127 or 0..15 */
		/* narrow: q8 keeps the two's complement byte, like (qi & 0xff) */
		int16x4_t h16 = vmovn_s32(u);
		int8x8_t b8 = vmovn_s16(vcombine_s16(h16, h16));
		vst1_s8((int8_t *)(u8 + 4 * j), b8);
	}
	const size_t B = p->block;
	if (fmt == QT_Q8) {
		memcpy(data, u8, B);
	} else if (fmt == QT_Q4) {
		/* byte k = u[2k] | u[2k+1] << 4 */
		for (size_t g = 0; g < B; g += 32) {
			uint8x16x2_t e = vld2q_u8(u8 + g); /* val[0]: even, val[1]: odd */
			vst1q_u8(data + g / 2, vorrq_u8(e.val[0], vshlq_n_u8(e.val[1], 4)));
		}
	} else {
		/* byte k = u[4k] | u[4k+1] << 2 | u[4k+2] << 4 | u[4k+3] << 6 */
		for (size_t g = 0; g < B; g += 32) {
			uint8x8x4_t e = vld4_u8(u8 + g);
			uint8x8_t r = vorr_u8(e.val[0], vshl_n_u8(e.val[1], 2));
			r = vorr_u8(r, vshl_n_u8(e.val[2], 4));
			r = vorr_u8(r, vshl_n_u8(e.val[3], 6));
			vst1_u8(data + g / 4, r);
		}
	}
	return 0;
}

static int enc_f16(const quant_params *p, const float *a, const float *b, size_t n, uint8_t *data)
{
	const float32x4_t big = vdupq_n_f32(FLT_MAX);
	size_t i = 0;
	for (; i + 4 <= n; i += 4) {
		float32x4_t x = vld1q_f32(a + i);
		if (b)
			x = vaddq_f32(x, vld1q_f32(b + i));
		uint32x4_t ok = vcleq_f32(vabsq_f32(x), big);
		if (vminvq_u32(ok) != 0xffffffffu)
			return FL_ENUMERIC;
		/* FCVTN: round to nearest even under the default FPCR, as
		 * half_from_f32 */
		uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(x));
		uint16x4_t inf = vceq_u16(vand_u16(h, vdup_n_u16(0x7fff)), vdup_n_u16(0x7c00));
		if (vmaxv_u16(inf))
			return FL_ENUMERIC;
		vst1_u8(data + 2 * i, vreinterpret_u8_u16(h)); /* little endian */
	}
	if (i < n)
		return quant_encode_block(p, a + i, b ? b + i : NULL, i, n - i, NULL, data + 2 * i);
	return 0;
}

/* ---- decode / accumulate ---- */

/* out[0..8) = L * m (decode, m = s) or fma(L, m, out) (accumulate, m = w * s)
 * for 8 integer levels. */
AI void emit8(float *out, int16x8_t L, float32x4_t m, int acc)
{
	float32x4_t l0 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(L)));
	float32x4_t l1 = vcvtq_f32_s32(vmovl_s16(vget_high_s16(L)));
	if (acc) {
		vst1q_f32(out, vfmaq_f32(vld1q_f32(out), l0, m));
		vst1q_f32(out + 4, vfmaq_f32(vld1q_f32(out + 4), l1, m));
	} else {
		vst1q_f32(out, vmulq_f32(l0, m));
		vst1q_f32(out + 4, vmulq_f32(l1, m));
	}
}

/* 16 levels as int8 -> out[0..16) */
AI void emit16(float *out, int8x16_t L, float32x4_t m, int acc)
{
	emit8(out, vmovl_s8(vget_low_s8(L)), m, acc);
	emit8(out + 8, vmovl_s8(vget_high_s8(L)), m, acc);
}

AI void blk_q8(const uint8_t *d, size_t B, float32x4_t m, int acc, float *out)
{
	for (size_t j = 0; j < B; j += 16)
		emit16(out + j, vld1q_s8((const int8_t *)(d + j)), m, acc);
}

AI void blk_q4(const uint8_t *d, size_t B, float32x4_t m, int acc, float *out)
{
	const uint8x16_t mask = vdupq_n_u8(0x0f);
	const int8x16_t eight = vdupq_n_s8(8);
	for (size_t j = 0; j < B; j += 32) {
		uint8x16_t raw = vld1q_u8(d + j / 2);
		uint8x16_t lo = vandq_u8(raw, mask); /* elements 2k */
		uint8x16_t hi = vshrq_n_u8(raw, 4);  /* elements 2k+1 */
		int8x16_t e0 = vsubq_s8(vreinterpretq_s8_u8(vzip1q_u8(lo, hi)), eight);
		int8x16_t e1 = vsubq_s8(vreinterpretq_s8_u8(vzip2q_u8(lo, hi)), eight);
		emit16(out + j, e0, m, acc);
		emit16(out + j + 16, e1, m, acc);
	}
}

AI void blk_q2(const uint8_t *d, size_t B, float32x4_t m, int acc, float *out)
{
	const uint8x8_t three = vdup_n_u8(3);
	for (size_t j = 0; j < B; j += 32) {
		uint8x8_t raw = vld1_u8(d + j / 4);
		uint8x8x4_t e;
		e.val[0] = vand_u8(raw, three);
		e.val[1] = vand_u8(vshr_n_u8(raw, 2), three);
		e.val[2] = vand_u8(vshr_n_u8(raw, 4), three);
		e.val[3] = vshr_n_u8(raw, 6);
		uint8_t u[32];
		vst4_u8(u, e); /* element order: byte k's four codes, then k+1's */
		for (size_t g = 0; g < 32; g += 16) {
			/* level = 2u - 3 */
			int8x16_t c = vreinterpretq_s8_u8(vld1q_u8(u + g));
			c = vsubq_s8(vaddq_s8(c, c), vdupq_n_s8(3));
			emit16(out + j + g, c, m, acc);
		}
	}
}

#else
/* Not an aarch64 build: quant.c never calls into this file. */
typedef int quant_neon_unused;
#endif
