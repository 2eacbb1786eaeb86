/* kernels_avx2 — see kernels_avx2.h. */
#include "kernels_avx2.h"

#ifdef __AVX2__
#include <immintrin.h>

int kern_avx2_usable(void)
{
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* exp(x), 8 lanes: x = n ln2 + r (|r| <= ln2/2), e^r by its Taylor polynomial
 * to r^7 (truncation below 1e-8 relative), 2^n through the exponent bits.
 * Inputs are clamped to [-87.3, 88.7] (so tiny results are ~1e-38 rather
 * than denormal or 0); NaN stays NaN (max/min return the second operand for
 * NaN, which is x). */
static inline __m256 exp8(__m256 x)
{
	const __m256 big = _mm256_set1_ps(12582912.0f); /* 1.5*2^23: round to integer */
	x = _mm256_min_ps(_mm256_set1_ps(88.7f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
	__m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504f), big);
	__m256 n = _mm256_sub_ps(t, big);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
	r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
	__m256 p = _mm256_set1_ps(1.9841270e-4f);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3888889e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3333338e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1666668e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666667e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
	__m256i e = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(big));
	e = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* Lanes [0, n) of 8 loaded/stored through a mask for loop tails. */
static inline __m256i tail_mask(int n)
{
	const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

float kern_avx2_exp_sub_sum(float *x, int n, float mx)
{
	const __m256 m = _mm256_set1_ps(mx);
	__m256 acc = _mm256_setzero_ps();
	int i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
		_mm256_storeu_ps(x + i, e);
		acc = _mm256_add_ps(acc, e);
	}
	if (i < n) {
		__m256i k = tail_mask(n - i);
		__m256 e = exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), m));
		e = _mm256_and_ps(e, _mm256_castsi256_ps(k));
		_mm256_maskstore_ps(x + i, k, e);
		acc = _mm256_add_ps(acc, e);
	}
	return hsum8(acc);
}

float kern_avx2_sum_exp_sub(const float *x, int n, float mx)
{
	const __m256 m = _mm256_set1_ps(mx);
	__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
	int i = 0;
	for (; i + 16 <= n; i += 16) {
		a0 = _mm256_add_ps(a0, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m)));
		a1 = _mm256_add_ps(a1, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), m)));
	}
	for (; i + 8 <= n; i += 8)
		a0 = _mm256_add_ps(a0, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m)));
	if (i < n) {
		__m256i k = tail_mask(n - i);
		__m256 e = exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), m));
		a1 = _mm256_add_ps(a1, _mm256_and_ps(e, _mm256_castsi256_ps(k)));
	}
	return hsum8(_mm256_add_ps(a0, a1));
}

void kern_avx2_swiglu(float *out, const float *g, const float *u, size_t n)
{
	const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 gv = _mm256_loadu_ps(g + i);
		__m256 den = _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, gv)));
		__m256 y = _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u + i));
		_mm256_storeu_ps(out + i, y);
	}
	for (; i < n; i++) {
		__m256 gv = _mm256_set1_ps(g[i]);
		__m256 den = _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, gv)));
		out[i] = _mm256_cvtss_f32(_mm256_div_ps(gv, den)) * u[i];
	}
}

#else /* no AVX2 in this build: never usable, never called */

int kern_avx2_usable(void)
{
	return 0;
}

float kern_avx2_exp_sub_sum(float *x, int n, float mx)
{
	(void)x;
	(void)n;
	(void)mx;
	return 0.0f;
}

float kern_avx2_sum_exp_sub(const float *x, int n, float mx)
{
	(void)x;
	(void)n;
	(void)mx;
	return 0.0f;
}

void kern_avx2_swiglu(float *out, const float *g, const float *u, size_t n)
{
	(void)out;
	(void)g;
	(void)u;
	(void)n;
}

#endif
