/* train_kern_avx2 — see train_kern_avx2.h. */
#include "train_kern_avx2.h"

#ifdef __AVX2__
#include <immintrin.h>

/* exp(x) for 8 floats: x = k ln2 + r, |r| <= ln2/2, exp(r) by a degree-5
 * polynomial (Cephes expf coefficients), times 2^k through the exponent
 * bits. */
static inline __m256 tk_exp8(__m256 x)
{
	const __m256 hi = _mm256_set1_ps(88.7f), lo = _mm256_set1_ps(-87.3f);
	x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
	const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
	                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
	r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
	__m256 y = _mm256_set1_ps(1.9875691500e-4f);
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
	y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	const __m256i e =
	    _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

void tk_avx2_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, size_t n)
{
	const __m256 one = _mm256_set1_ps(1.0f);
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		const __m256 g = _mm256_loadu_ps(gate + i), d = _mm256_loadu_ps(dh + i);
		const __m256 u = _mm256_loadu_ps(up + i);
		const __m256 sg = _mm256_div_ps(
		    one, _mm256_add_ps(one, tk_exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
		/* dup = dh * g * sg; dgate = dh * up * sg * (1 + g * (1 - sg)) */
		const __m256 dsil =
		    _mm256_mul_ps(sg, _mm256_fmadd_ps(g, _mm256_sub_ps(one, sg), one));
		_mm256_storeu_ps(dup + i, _mm256_mul_ps(d, _mm256_mul_ps(g, sg)));
		_mm256_storeu_ps(dgate + i, _mm256_mul_ps(_mm256_mul_ps(d, u), dsil));
	}
	for (; i < n; i++) {
		const __m256 g = _mm256_set1_ps(gate[i]);
		const __m256 sg = _mm256_div_ps(
		    one, _mm256_add_ps(one, tk_exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
		const float s = _mm256_cvtss_f32(sg), gg = gate[i], d = dh[i];
		dup[i] = d * (gg * s);
		dgate[i] = (d * up[i]) * (s * (1.0f + gg * (1.0f - s)));
	}
}

#else

void tk_avx2_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, size_t n)
{
	(void)dgate;
	(void)dup;
	(void)dh;
	(void)gate;
	(void)up;
	(void)n;
}

#endif
