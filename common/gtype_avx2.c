/* gtype_avx2 — AVX2/F16C row kernels for gtype, called only through the
 * dispatchers in gtype.c after a run-time CPU check. Results equal the
 * scalar kernels' (F16 -> F32 is exact either way; only NaN payloads may
 * differ: F16C quiets signalling NaNs). */
#include <stddef.h>
#include <stdint.h>

void gtype_dequant_f16_avx2(const void *src, float *dst, size_t n);

#ifdef __AVX2__
#include <immintrin.h>

#include "half.h"

void gtype_dequant_f16_avx2(const void *src, float *dst, size_t n)
{
	const uint8_t *p = src;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m128i h = _mm_loadu_si128((const __m128i *)(p + 2 * i));
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
	}
	for (; i < n; i++)
		dst[i] = half_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}
#endif
