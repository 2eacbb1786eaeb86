/* gtype_int — helpers shared by the gtype sources (gtype.c, gtype_k.c);
 * not part of the public interface. */
#ifndef FL_GTYPE_INT_H
#define FL_GTYPE_INT_H
#include <stddef.h>
#include <stdint.h>

static inline uint16_t gt_ld16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline void gt_st16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/* Q4_K / Q5_K pack 8 six-bit scales and 8 six-bit mins into 12 bytes:
 * sub-blocks 0..3: scale = s[j] & 63, min = s[j+4] & 63;
 * sub-blocks 4..7: low 4 bits from s[j+4] (scale: low nibble, min: high
 * nibble), high 2 bits from the top bits of s[j-4] (scale) / s[j] (min). */
static inline void gt_kscale_min(int j, const uint8_t *s, int *sc, int *mn)
{
	if (j < 4) {
		*sc = s[j] & 63;
		*mn = s[j + 4] & 63;
	} else {
		*sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
		*mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
	}
}

/* Quantizers of gtype_k.c (n a block multiple, x finite: checked by
 * gtype_quant_row). 0, or FL_ENUMERIC when a block's scale does not fit an
 * f16. */
int gt_quant_q4_1(const float *x, uint8_t *b, size_t n);
int gt_quant_q5_0(const float *x, uint8_t *b, size_t n);
int gt_quant_q5_1(const float *x, uint8_t *b, size_t n);
int gt_quant_q4_k(const float *x, uint8_t *b, size_t n);
int gt_quant_q5_k(const float *x, uint8_t *b, size_t n);
int gt_quant_q6_k(const float *x, uint8_t *b, size_t n);

#endif
