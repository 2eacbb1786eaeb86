/* quant_avx2 — AVX2/FMA/F16C kernels of quant.h (compiled with -mavx2 -mfma
 * -mf16c, chosen at run time). Each vector operation mirrors one scalar
 * operation of quant.c on the same operands in the same order:
 *   encode  x = a + b; absmax = max |x|; t = x / s; (q2: t = (t - 1) * 0.5);
 *           q = nearbyint(t) or floor(t + u); clamp; pack
 *   decode  v = (float)L * s
 *   accum   acc = fma((float)L, w * s, acc)   (f32/f16: fma(v, w, acc))
 * so both paths produce the same bytes and the same floats. The
 * whole-tensor drivers are quant_simd.h's (shared with quant_neon.c);
 * partial final blocks are handed to the scalar block kernels. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include "quant.h"

#ifdef __AVX2__
#include "err.h"
#include "half.h"
#include "quant_int.h"

#include <float.h>
#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

#define qs_vf           __m256
#define QS_LANES        8
#define qs_set1(x)      _mm256_set1_ps(x)
#define qs_loadf(p)     _mm256_loadu_ps(p)
#define qs_storef(p, v) _mm256_storeu_ps((p), (v))
#define qs_loadh(p)     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define qs_fma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define QS_FN(name)     quant_avx2_##name
#include "quant_simd.h"

/* ---- stochastic-rounding stream: quant_uniform() on 8 lanes ---- */

AI __m256i mix32v(__m256i x)
{
	x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
	x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x7feb352du));
	x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
	x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bu));
	x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
	return x;
}

AI __m256 uniformv(uint64_t seed, uint32_t i0)
{
	__m256i idx =
	    _mm256_add_epi32(_mm256_set1_epi32((int)i0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
	__m256i h = _mm256_add_epi32(_mm256_mullo_epi32(idx, _mm256_set1_epi32((int)0x9e3779b9u)),
	                             _mm256_set1_epi32((int)(uint32_t)seed));
	h = mix32v(h);
	h = mix32v(_mm256_xor_si256(h, _mm256_set1_epi32((int)(uint32_t)(seed >> 32))));
	return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)), _mm256_set1_ps(0x1p-24f));
}

/* ---- encode ---- */

/* 4 vectors of 8 int32 (each in -128..255 range of a byte) -> 32 bytes in
 * element order. */
AI __m256i pack32(__m256i v0, __m256i v1, __m256i v2, __m256i v3)
{
	__m256i p01 = _mm256_packs_epi32(v0, v1);
	__m256i p23 = _mm256_packs_epi32(v2, v3);
	__m256i b = _mm256_packs_epi16(p01, p23);
	return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

AI float hmax(__m256 v)
{
	__m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	m = _mm_max_ps(m, _mm_movehl_ps(m, m));
	m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
	return _mm_cvtss_f32(m);
}

/* One full block of B (32, 64 or 128) elements. */
static int enc_block(const quant_params *p, const float *a, const float *b, uint32_t i0,
                     uint8_t *scale, uint8_t *data)
{
	const enum qt_fmt fmt = p->fmt;
	const size_t nv = p->block / 8;
	__m256 xv[16];
	const __m256 signbit = _mm256_set1_ps(-0.0f);
	const __m256 big = _mm256_set1_ps(FLT_MAX);
	__m256 amax = _mm256_setzero_ps();
	__m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
	for (size_t j = 0; j < nv; j++) {
		__m256 x = _mm256_loadu_ps(a + 8 * j);
		if (b)
			x = _mm256_add_ps(x, _mm256_loadu_ps(b + 8 * j));
		xv[j] = x;
		__m256 ax = _mm256_andnot_ps(signbit, x);
		ok = _mm256_and_ps(ok, _mm256_cmp_ps(ax, big, _CMP_LE_OQ));
		amax = _mm256_max_ps(amax, ax);
	}
	if (_mm256_movemask_ps(ok) != 0xff)
		return FL_ENUMERIC;
	float s;
	int rc = qs_block_scale(p, hmax(amax), scale, data, &s);
	if (rc)
		return rc < 0 ? rc : 0;

	const __m256 sv = _mm256_set1_ps(s);
	const __m256 lo = _mm256_set1_ps(fmt == QT_Q8 ? -127.0f : fmt == QT_Q4 ? -7.0f : -2.0f);
	const __m256 hi = _mm256_set1_ps(fmt == QT_Q8 ? 127.0f : fmt == QT_Q4 ? 7.0f : 1.0f);
	const __m256i off = _mm256_set1_epi32(fmt == QT_Q8 ? 0 : fmt == QT_Q4 ? 8 : 2);
	const int sto = p->round == QUANT_STOCHASTIC;
	__m256i uv[16];
	for (size_t j = 0; j < nv; j++) {
		__m256 t = _mm256_div_ps(xv[j], sv);
		if (fmt == QT_Q2) {
			__m256 t1 = _mm256_sub_ps(t, _mm256_set1_ps(1.0f));
			t = _mm256_mul_ps(t1, _mm256_set1_ps(0.5f));
		}
		__m256 q;
		if (sto) {
			__m256 tr = _mm256_add_ps(t, uniformv(p->seed, i0 + (uint32_t)(8 * j)));
			q = _mm256_floor_ps(tr);
		} else {
			q = _mm256_round_ps(t, _MM_FROUND_NEARBYINT);
		}
		q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
		uv[j] = _mm256_add_epi32(_mm256_cvttps_epi32(q), off);
	}
	for (size_t g = 0; g < nv / 4; g++) {
		__m256i by = pack32(uv[4 * g], uv[4 * g + 1], uv[4 * g + 2], uv[4 * g + 3]);
		if (fmt == QT_Q8) {
			_mm256_storeu_si256((__m256i *)(data + 32 * g), by);
		} else if (fmt == QT_Q4) {
			__m256i r = _mm256_or_si256(
			    _mm256_and_si256(by, _mm256_set1_epi16(0x000f)),
			    _mm256_and_si256(_mm256_srli_epi16(by, 4), _mm256_set1_epi16(0x00f0)));
			__m256i pk = _mm256_packus_epi16(r, r);
			pk = _mm256_permute4x64_epi64(pk, _MM_SHUFFLE(3, 1, 2, 0));
			_mm_storeu_si128((__m128i *)(data + 16 * g), _mm256_castsi256_si128(pk));
		} else {
			const __m256i m3 = _mm256_set1_epi32(0x3);
			__m256i r = _mm256_and_si256(by, m3);
			r = _mm256_or_si256(
			    r, _mm256_and_si256(_mm256_srli_epi32(by, 6), _mm256_set1_epi32(0xc)));
			r = _mm256_or_si256(r, _mm256_and_si256(_mm256_srli_epi32(by, 12),
			                                        _mm256_set1_epi32(0x30)));
			r = _mm256_or_si256(r, _mm256_and_si256(_mm256_srli_epi32(by, 18),
			                                        _mm256_set1_epi32(0xc0)));
			__m256i t = _mm256_packus_epi32(r, r);
			t = _mm256_packus_epi16(t, t);
			t = _mm256_permutevar8x32_epi32(t,
			                                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
			_mm_storel_epi64((__m128i *)(data + 8 * g), _mm256_castsi256_si128(t));
		}
	}
	return 0;
}

static int enc_f16(const quant_params *p, const float *a, const float *b, size_t n, uint8_t *data)
{
	const __m256 signbit = _mm256_set1_ps(-0.0f);
	const __m256 big = _mm256_set1_ps(FLT_MAX);
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 x = _mm256_loadu_ps(a + i);
		if (b)
			x = _mm256_add_ps(x, _mm256_loadu_ps(b + i));
		__m256 ok = _mm256_cmp_ps(_mm256_andnot_ps(signbit, x), big, _CMP_LE_OQ);
		if (_mm256_movemask_ps(ok) != 0xff)
			return FL_ENUMERIC;
		__m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
		__m128i inf = _mm_cmpeq_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)),
		                              _mm_set1_epi16(0x7c00));
		if (_mm_movemask_epi8(inf))
			return FL_ENUMERIC;
		_mm_storeu_si128((__m128i *)(data + 2 * i), h);
	}
	if (i < n)
		return quant_encode_block(p, a + i, b ? b + i : NULL, i, n - i, NULL, data + 2 * i);
	return 0;
}

/* ---- decode / accumulate ---- */

/* out = L * m (decode, m = s) or out = fma(L, m, out) (accumulate, m = w * s) */
AI void emit(float *out, __m256 L, __m256 m, int acc)
{
	if (acc)
		_mm256_storeu_ps(out, _mm256_fmadd_ps(L, m, _mm256_loadu_ps(out)));
	else
		_mm256_storeu_ps(out, _mm256_mul_ps(L, m));
}

AI void blk_q8(const uint8_t *d, size_t B, __m256 m, int acc, float *out)
{
	for (size_t j = 0; j < B; j += 8) {
		__m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(d + j)));
		emit(out + j, _mm256_cvtepi32_ps(c), m, acc);
	}
}

AI void blk_q4(const uint8_t *d, size_t B, __m256 m, int acc, float *out)
{
	const __m128i mask = _mm_set1_epi8(0x0f);
	const __m256i eight = _mm256_set1_epi32(8);
	for (size_t j = 0; j < B; j += 32) {
		__m128i raw = _mm_loadu_si128((const __m128i *)(d + j / 2));
		__m128i lo = _mm_and_si128(raw, mask);
		__m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
		__m128i e0 = _mm_unpacklo_epi8(lo, hi); /* elements 0..15 */
		__m128i e1 = _mm_unpackhi_epi8(lo, hi); /* elements 16..31 */
		__m256i c0 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(e0), eight);
		__m256i c1 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(e0, 8)), eight);
		__m256i c2 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(e1), eight);
		__m256i c3 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(e1, 8)), eight);
		emit(out + j, _mm256_cvtepi32_ps(c0), m, acc);
		emit(out + j + 8, _mm256_cvtepi32_ps(c1), m, acc);
		emit(out + j + 16, _mm256_cvtepi32_ps(c2), m, acc);
		emit(out + j + 24, _mm256_cvtepi32_ps(c3), m, acc);
	}
}

AI void blk_q2(const uint8_t *d, size_t B, __m256 m, int acc, float *out)
{
	const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
	const __m256i three = _mm256_set1_epi32(3);
	for (size_t j = 0; j < B; j += 8) {
		const uint8_t *p = d + j / 4;
		__m256i v = _mm256_set1_epi32(p[0] | p[1] << 8);
		__m256i u = _mm256_and_si256(_mm256_srlv_epi32(v, sh), three);
		__m256i c = _mm256_sub_epi32(_mm256_slli_epi32(u, 1), three); /* 2u - 3 */
		emit(out + j, _mm256_cvtepi32_ps(c), m, acc);
	}
}

#else
/* Not an AVX2 build: quant.c never calls into this file. */
typedef int quant_avx2_unused;
#endif
