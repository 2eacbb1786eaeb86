/* quant_int — the internals the scalar and vector quantizers share
 * (quant.c, quant_avx2.c, quant_neon.c, quant_simd.h): the stochastic
 * rounding draw, the block scale, the scalar block kernels and the vector
 * whole-tensor entry points. Not for callers: they use quant.h, whose
 * dispatch picks the implementation. */
#ifndef FL_QUANT_INT_H
#define FL_QUANT_INT_H
#include "half.h"
#include "quant.h"

#include <stddef.h>
#include <stdint.h>

/* Stochastic-rounding uniform in [0, 1) (multiples of 2^-24) for element i. */
static inline uint32_t quant_mix32(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	x *= 0x846ca68bu;
	x ^= x >> 16;
	return x;
}
static inline float quant_uniform(uint64_t seed, uint32_t i)
{
	uint32_t h = quant_mix32(i * 0x9e3779b9u + (uint32_t)seed);
	h = quant_mix32(h ^ (uint32_t)(seed >> 32));
	return (float)(h >> 8) * 0x1p-24f;
}
/* Smallest f16 scale s >= absmax / qdiv, qdiv = 127 (q8), 7 (q4), 3 (q2);
 * 0 for absmax 0, at least the smallest f16 subnormal otherwise.
 * FL_ENUMERIC (-17) when s overflows f16. Inline so both paths run the
 * very same code per block. */
static inline int quant_scale_for(enum qt_fmt fmt, float absmax, uint16_t *bits, float *s)
{
	if (absmax == 0.0f) {
		*bits = 0;
		*s = 0.0f;
		return 0;
	}
	float want = absmax / (fmt == QT_Q8 ? 127.0f : fmt == QT_Q4 ? 7.0f : 3.0f);
	uint16_t h = half_from_f32(want);
	if (h >= 0x7c00)
		return -17;
	if (half_to_f32(h) < want)
		h++; /* next f16 up (positive values: bits are monotonic) */
	if (h == 0)
		h = 1; /* want underflowed: smallest subnormal */
	if (h >= 0x7c00)
		return -17;
	*bits = h;
	*s = half_to_f32(h);
	return 0;
}
/* Scalar kernels on one block (or, for f32/f16, any run) of len elements
 * starting at element i0; data points at the block's first byte. */
int quant_encode_block(const quant_params *p, const float *a, const float *b, size_t i0, size_t len,
                       uint8_t *scale, uint8_t *data);
void quant_decode_block(enum qt_fmt fmt, const uint8_t *data, float s, size_t len, float *out);
void quant_accum_block(enum qt_fmt fmt, const uint8_t *data, float s, float w, size_t len,
                       float *acc);
/* AVX2 whole-tensor kernels (quant_avx2.c). */
int quant_avx2_encode(const quant_params *p, const float *a, const float *b, size_t n,
                      uint8_t *scales, uint8_t *data);
void quant_avx2_decode(const qtensor *q, float *out);
void quant_avx2_accumulate(const qtensor *q, float w, float *acc);
/* NEON whole-tensor kernels (quant_neon.c), the same contracts. */
int quant_neon_encode(const quant_params *p, const float *a, const float *b, size_t n,
                      uint8_t *scales, uint8_t *data);
void quant_neon_decode(const qtensor *q, float *out);
void quant_neon_accumulate(const qtensor *q, float w, float *acc);

#endif
