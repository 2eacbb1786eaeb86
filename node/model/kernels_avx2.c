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

static inline float f16_to_f32(const unsigned char *p)
{
	unsigned short h = (unsigned short)(p[0] | p[1] << 8);
	return _cvtsh_ss(h);
}

/* acc[k][s] += w * x_k[j..j+8) for the N vectors; two accumulator slots
 * per vector break the FMA dependency chain. N is a compile-time constant
 * at every call of dots_n (see kern_avx2_row_dots), so the k loops unroll
 * and the accumulators stay in registers. */
#define ACC8(w, j, s_)                                                                             \
	do {                                                                                       \
		for (int k_ = 0; k_ < N; k_++)                                                     \
			acc[k_][s_] = _mm256_fmadd_ps(                                             \
			    (w), _mm256_loadu_ps(x + (size_t)k_ * ldx + (j)), acc[k_][s_]);        \
	} while (0)

static inline __attribute__((always_inline)) void dots_n(unsigned type, const unsigned char *p,
                                                         int n, const float *x, int ldx,
                                                         const int N, float *out, int ld_out)
{
	__m256 acc[4][2];
	for (int k = 0; k < 4; k++)
		acc[k][0] = acc[k][1] = _mm256_setzero_ps();
	if (type == 1) { /* F16 */
		for (int j = 0; j < n; j += 16) {
			__m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * j)));
			__m256 w1 =
			    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * j + 16)));
			ACC8(w0, j, 0);
			ACC8(w1, j + 8, 1);
		}
	} else if (type == 8) { /* Q8_0: 34-byte blocks */
		for (int j = 0; j < n; j += 32, p += 34) {
			const __m256 d = _mm256_set1_ps(f16_to_f32(p));
			const __m128i q0 = _mm_loadu_si128((const __m128i *)(p + 2));
			const __m128i q1 = _mm_loadu_si128((const __m128i *)(p + 18));
			__m256 w0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)));
			__m256 w1 = _mm256_mul_ps(
			    d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))));
			__m256 w2 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)));
			__m256 w3 = _mm256_mul_ps(
			    d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))));
			ACC8(w0, j, 0);
			ACC8(w1, j + 8, 1);
			ACC8(w2, j + 16, 0);
			ACC8(w3, j + 24, 1);
		}
	} else { /* Q4_0: 18-byte blocks, low nibbles are 0..15, high 16..31 */
		const __m128i lo4 = _mm_set1_epi8(0x0f);
		const __m256i eight = _mm256_set1_epi32(8);
		for (int j = 0; j < n; j += 32, p += 18) {
			const __m256 d = _mm256_set1_ps(f16_to_f32(p));
			const __m128i q = _mm_loadu_si128((const __m128i *)(p + 2));
			const __m128i lo = _mm_and_si128(q, lo4);
			const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), lo4);
#define NIB(v)                                                                                     \
	_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(v), eight)))
			__m256 w0 = NIB(lo), w1 = NIB(_mm_srli_si128(lo, 8));
			__m256 w2 = NIB(hi), w3 = NIB(_mm_srli_si128(hi, 8));
#undef NIB
			ACC8(w0, j, 0);
			ACC8(w1, j + 8, 1);
			ACC8(w2, j + 16, 0);
			ACC8(w3, j + 24, 1);
		}
	}
	for (int k = 0; k < N; k++)
		out[(size_t)k * ld_out] = hsum8(_mm256_add_ps(acc[k][0], acc[k][1]));
}
#undef ACC8

int kern_avx2_row_dots(unsigned type, const void *row, int n, const float *x, int ldx, int N,
                       float *out, int ld_out)
{
	const unsigned char *p = row;
	if (type != 1 && type != 8 && type != 2)
		return -1;
	if (type == 1 && n % 16 != 0)
		return -1; /* F16 rows here come in 16-element steps */
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

int kern_avx2_row_dots(unsigned type, const void *row, int n, const float *x, int ldx, int N,
                       float *out, int ld_out)
{
	(void)type;
	(void)row;
	(void)n;
	(void)x;
	(void)ldx;
	(void)N;
	(void)out;
	(void)ld_out;
	return -1;
}

#endif
