/* half — IEEE-754 binary16 and bfloat16 conversions (scalar, exact).
 *
 * f32 -> f16 rounds to nearest even; values beyond the f16 range become
 * ±Inf (callers that must not overflow check with half_fits first); NaN
 * stays NaN. f16 -> f32 is exact, subnormals included. Header-only so the
 * hot loops of the codec and the engine can inline it. */
#ifndef FL_HALF_H
#define FL_HALF_H
#include <stdint.h>
#include <string.h>

#define HALF_MAX 65504.0f

static inline uint32_t half_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float half_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline float half_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;
	if (exp == 0) {
		if (man == 0)
			return half_bits_f32(sign);
		/* subnormal: man * 2^-24, exact in f32 */
		float v = (float)man * (1.0f / 16777216.0f);
		return sign ? -v : v;
	}
	if (exp == 31)
		return half_bits_f32(sign | 0x7f800000u | (man << 13));
	return half_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t half_from_f32(float f)
{
	uint32_t x = half_f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
	uint32_t ax = x & 0x7fffffffu;
	if (ax >= 0x7f800000u) /* Inf or NaN */
		return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
	if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow */
		return (uint16_t)(sign | 0x7c00);
	if (ax < 0x38800000u) {       /* below 2^-14: subnormal or zero */
		if (ax < 0x33000000u) /* < 2^-25 rounds to 0 */
			return sign;
		uint32_t e = ax >> 23;
		uint32_t m = (ax & 0x7fffff) | 0x800000;
		uint32_t shift = 126 - e; /* 14..24 */
		uint32_t r = m >> shift;
		uint32_t rem = m & ((1u << shift) - 1);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (r & 1)))
			r++;
		return (uint16_t)(sign | r);
	}
	uint32_t r = ((ax - 0x38000000u) >> 13); /* rebias 127 -> 15 */
	uint32_t rem = ax & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
		r++;
	return (uint16_t)(sign | r);
}

static inline float bf16_to_f32(uint16_t h)
{
	return half_bits_f32((uint32_t)h << 16);
}

static inline uint16_t bf16_from_f32(float f)
{
	uint32_t x = half_f32_bits(f);
	if ((x & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
	x += 0x7fff + ((x >> 16) & 1);               /* round to nearest even */
	return (uint16_t)(x >> 16);
}

#endif
