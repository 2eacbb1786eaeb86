/* gtype_k — the 5-bit and offset block types (Q4_1, Q5_0, Q5_1), Q5_K, and
 * our quantizers for them and for Q4_K / Q6_K. Layouts follow ggml's public
 * block definitions (see gtype.h); the code is our own, scalar and portable
 * (every CPU uses these loops; SIMD variants, if added, must equal them).
 *
 * The quantizers are not ggml's (its K-quant reference searches scales
 * iteratively): they pick scales that cover each sub-block's range exactly,
 * rounding the f16 super-block scales up, so every element is within half a
 * quantization step of its input. Any decoder of the format reads them. */
#include "err.h"
#include "gtype.h"
#include "gtype_int.h"
#include "half.h"

#include <math.h>
#include <string.h>

/* ---- dequantization ---- */

void gtype_dequant_q4_1(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QK; i++, b += 20, dst += GTYPE_QK) {
		const float d = half_to_f32(gt_ld16(b)), m = half_to_f32(gt_ld16(b + 2));
		const uint8_t *q = b + 4;
		for (int j = 0; j < GTYPE_QK / 2; j++) {
			dst[j] = d * (float)(q[j] & 0x0f) + m;
			dst[j + GTYPE_QK / 2] = d * (float)(q[j] >> 4) + m;
		}
	}
}

/* The fifth bits of Q5_0 / Q5_1: bit j of the little-endian u32 qh belongs
 * to element j (0..31). */
static inline uint32_t ld32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void gtype_dequant_q5_0(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QK; i++, b += 22, dst += GTYPE_QK) {
		const float d = half_to_f32(gt_ld16(b));
		const uint32_t qh = ld32(b + 2);
		const uint8_t *q = b + 6;
		for (int j = 0; j < GTYPE_QK / 2; j++) {
			const int lo = (q[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
			const int hi = (q[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
			dst[j] = d * (float)(lo - 16);
			dst[j + GTYPE_QK / 2] = d * (float)(hi - 16);
		}
	}
}

void gtype_dequant_q5_1(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QK; i++, b += 24, dst += GTYPE_QK) {
		const float d = half_to_f32(gt_ld16(b)), m = half_to_f32(gt_ld16(b + 2));
		const uint32_t qh = ld32(b + 4);
		const uint8_t *q = b + 8;
		for (int j = 0; j < GTYPE_QK / 2; j++) {
			const int lo = (q[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
			const int hi = (q[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
			dst[j] = d * (float)lo + m;
			dst[j + GTYPE_QK / 2] = d * (float)hi + m;
		}
	}
}

void gtype_dequant_q5_k(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QKK; i++, b += 176) {
		const float d = half_to_f32(gt_ld16(b));
		const float dmin = half_to_f32(gt_ld16(b + 2));
		const uint8_t *s = b + 4, *qh = b + 16, *q = b + 48;
		/* as Q4_K, plus the fifth bit of element l of sub-block k in bit k
		 * of qh[l] */
		for (int g = 0; g < 4; g++, q += 32) {
			int sc, mn;
			gt_kscale_min(2 * g, s, &sc, &mn);
			const float d1 = d * (float)sc, m1 = dmin * (float)mn;
			gt_kscale_min(2 * g + 1, s, &sc, &mn);
			const float d2 = d * (float)sc, m2 = dmin * (float)mn;
			for (int l = 0; l < 32; l++)
				*dst++ =
				    d1 * (float)((q[l] & 0x0f) | ((qh[l] >> (2 * g)) & 1) << 4) -
				    m1;
			for (int l = 0; l < 32; l++)
				*dst++ =
				    d2 * (float)((q[l] >> 4) | ((qh[l] >> (2 * g + 1)) & 1) << 4) -
				    m2;
		}
	}
}

/* ---- quantization ---- */

/* The f16 next to h towards +inf (up) or -inf. h finite. */
static uint16_t h_step(uint16_t h, int up)
{
	if ((h & 0x7fff) == 0)
		return up ? 0x0001 : 0x8001;
	const int neg = h >> 15;
	return (uint16_t)(up != neg ? h + 1 : h - 1);
}

/* Smallest f16 >= x (up) or largest f16 <= x; FL_ENUMERIC beyond range. */
static int half_round(float x, int up, uint16_t *out)
{
	if (!(fabsf(x) <= HALF_MAX))
		return FL_ENUMERIC;
	uint16_t h = half_from_f32(x);
	while (up ? half_to_f32(h) < x : half_to_f32(h) > x)
		h = h_step(h, up);
	*out = h;
	return 0;
}

static inline int clampi(long v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : (int)v;
}

/* Q4_1 / Q5_1: offset m = the f16 at or below the block's minimum, step d
 * the f16 at or above (max - m) / nmax; q = round((x - m) / d). */
static int quant_offset(const float *x, uint8_t *b, size_t n, int five)
{
	const int nmax = five ? 31 : 15;
	const size_t bs = five ? 24 : 20;
	for (size_t i = 0; i < n / GTYPE_QK; i++, x += GTYPE_QK, b += bs) {
		float mn = x[0], mx = x[0];
		for (int j = 1; j < GTYPE_QK; j++) {
			mn = fminf(mn, x[j]);
			mx = fmaxf(mx, x[j]);
		}
		uint16_t hm, hd;
		if (half_round(mn, 0, &hm) != 0)
			return FL_ENUMERIC;
		const float m = half_to_f32(hm);
		if (half_round((float)(((double)mx - m) / nmax), 1, &hd) != 0)
			return FL_ENUMERIC;
		const float d = half_to_f32(hd);
		gt_st16(b, hd);
		gt_st16(b + 2, hm);
		uint8_t *qs = b + (five ? 8 : 4);
		uint32_t qh = 0;
		memset(qs, 0, 16);
		for (int j = 0; j < GTYPE_QK; j++) {
			const int q = d > 0 ? clampi(lround(((double)x[j] - m) / d), 0, nmax) : 0;
			qs[j % 16] |= (uint8_t)((q & 15) << (j < 16 ? 0 : 4));
			qh |= (uint32_t)(q >> 4) << j;
		}
		if (five)
			for (int k = 0; k < 4; k++)
				b[4 + k] = (uint8_t)(qh >> (8 * k));
	}
	return 0;
}

int gt_quant_q4_1(const float *x, uint8_t *b, size_t n)
{
	return quant_offset(x, b, n, 0);
}

int gt_quant_q5_1(const float *x, uint8_t *b, size_t n)
{
	return quant_offset(x, b, n, 1);
}

/* Q5_0: symmetric, d the f16 at or above amax / 15, q - 16 in [-15, 15]. */
int gt_quant_q5_0(const float *x, uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n / GTYPE_QK; i++, x += GTYPE_QK, b += 22) {
		float amax = 0.0f;
		for (int j = 0; j < GTYPE_QK; j++)
			amax = fmaxf(amax, fabsf(x[j]));
		uint16_t hd;
		if (half_round(amax / 15.0f, 1, &hd) != 0)
			return FL_ENUMERIC;
		const float d = half_to_f32(hd);
		gt_st16(b, hd);
		uint8_t *qs = b + 6;
		uint32_t qh = 0;
		memset(qs, 0, 16);
		for (int j = 0; j < GTYPE_QK; j++) {
			const int q = d > 0 ? clampi(lround((double)x[j] / d), -16, 15) + 16 : 16;
			qs[j % 16] |= (uint8_t)((q & 15) << (j < 16 ? 0 : 4));
			qh |= (uint32_t)(q >> 4) << j;
		}
		for (int k = 0; k < 4; k++)
			b[2 + k] = (uint8_t)(qh >> (8 * k));
	}
	return 0;
}

/* 6-bit value v of scale j < 8 packed as gt_kscale_min reads it. */
static void kpack_scales(uint8_t *s, const int sc[8], const int mn[8])
{
	for (int j = 0; j < 4; j++) {
		s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
		s[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
		s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
	}
}

/* Q4_K / Q5_K: per sub-block of 32, an offset mn (>= 0, subtracted) that
 * reaches the sub-block's minimum (or 0) and a step that reaches its maximum
 * from there, both as 6-bit multiples of the f16 super-block units dmin and
 * d, rounded up so the range is covered; q = round((x + m) / step). */
static int quant_kmin(const float *x, uint8_t *b, size_t n, int five)
{
	const int nmax = five ? 31 : 15;
	const size_t bs = five ? 176 : 144;
	for (size_t i = 0; i < n / GTYPE_QKK; i++, x += GTYPE_QKK, b += bs) {
		float lo[8], hi[8], mmax = 0.0f;
		for (int k = 0; k < 8; k++) {
			lo[k] = 0.0f;
			hi[k] = x[32 * k];
			for (int l = 0; l < 32; l++) {
				lo[k] = fminf(lo[k], x[32 * k + l]);
				hi[k] = fmaxf(hi[k], x[32 * k + l]);
			}
			mmax = fmaxf(mmax, -lo[k]);
		}
		uint16_t hdm, hd;
		if (half_round(mmax / 63.0f, 1, &hdm) != 0)
			return FL_ENUMERIC;
		const float dmin = half_to_f32(hdm);
		int sc[8], mn[8];
		float off[8], need[8], nmx = 0.0f;
		for (int k = 0; k < 8; k++) {
			mn[k] = dmin > 0 ? clampi((long)ceil(-(double)lo[k] / dmin), 0, 63) : 0;
			off[k] = dmin * (float)mn[k]; /* as the decoder computes it */
			need[k] = (float)(((double)hi[k] + off[k]) / nmax);
			nmx = fmaxf(nmx, need[k]);
		}
		if (half_round(nmx / 63.0f, 1, &hd) != 0)
			return FL_ENUMERIC;
		const float d = half_to_f32(hd);
		for (int k = 0; k < 8; k++)
			sc[k] = d > 0 ? clampi((long)ceil((double)need[k] / d), 0, 63) : 0;
		gt_st16(b, hd);
		gt_st16(b + 2, hdm);
		kpack_scales(b + 4, sc, mn);
		uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
		if (five)
			memset(qh, 0, 32);
		memset(qs, 0, 128);
		for (int e = 0; e < GTYPE_QKK; e++) {
			const int k = e / 32, g = e / 64, h = k & 1, l = e % 32;
			const float step = d * (float)sc[k];
			const int q =
			    step > 0 ? clampi(lround(((double)x[e] + off[k]) / step), 0, nmax) : 0;
			qs[32 * g + l] |= (uint8_t)((q & 15) << (4 * h));
			if (five)
				qh[l] |= (uint8_t)((q >> 4) << k);
		}
	}
	return 0;
}

int gt_quant_q4_k(const float *x, uint8_t *b, size_t n)
{
	return quant_kmin(x, b, n, 0);
}

int gt_quant_q5_k(const float *x, uint8_t *b, size_t n)
{
	return quant_kmin(x, b, n, 1);
}

/* Q6_K: per sub-block of 16 a non-negative 8-bit scale, step = d * sc with
 * d the f16 at or above max(amax / 31) / 127; q - 32 in [-31, 31]. */
int gt_quant_q6_k(const float *x, uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n / GTYPE_QKK; i++, x += GTYPE_QKK, b += 210) {
		float need[16], nmx = 0.0f;
		for (int k = 0; k < 16; k++) {
			float amax = 0.0f;
			for (int l = 0; l < 16; l++)
				amax = fmaxf(amax, fabsf(x[16 * k + l]));
			need[k] = amax / 31.0f;
			nmx = fmaxf(nmx, need[k]);
		}
		uint16_t hd;
		if (half_round(nmx / 127.0f, 1, &hd) != 0)
			return FL_ENUMERIC;
		const float d = half_to_f32(hd);
		int8_t *sc = (int8_t *)(b + 192);
		for (int k = 0; k < 16; k++)
			sc[k] =
			    (int8_t)(d > 0 ? clampi((long)ceil((double)need[k] / d), 0, 127) : 0);
		gt_st16(b + 208, hd);
		uint8_t *ql = b, *qh = b + 128;
		memset(b, 0, 192);
		/* element e = 128h + 32t + l: low 4 bits in ql[64h + l + 32(t&1)]
		 * (low nibble for t < 2), high 2 bits in qh[32h + l] at bit 2t;
		 * scale index 8h + 2t + l/16 (= e / 16) */
		for (int e = 0; e < GTYPE_QKK; e++) {
			const int h = e / 128, t = (e % 128) / 32, l = e % 32;
			const float step = d * (float)sc[e / 16];
			const int q =
			    (step > 0 ? clampi(lround((double)x[e] / step), -31, 31) : 0) + 32;
			ql[64 * h + l + 32 * (t & 1)] |= (uint8_t)((q & 15) << (t < 2 ? 0 : 4));
			qh[32 * h + l] |= (uint8_t)((q >> 4) << (2 * t));
		}
	}
	return 0;
}
