/* quant_simd — the whole-tensor drivers shared by the vector kernels of
 * quant.h (quant_avx2.c, quant_neon.c); internal, included by those files
 * only. The includer defines, before including this header:
 *   qs_vf                    its float vector type
 *   qs_set1(x)               a qs_vf with every lane x
 *   enc_block(p, a, b, i0, scale, data)  one full block, as quant_encode_block
 *   enc_f16(p, a, b, n, data)            f16 with round-to-nearest, any n
 *   blk_q8/blk_q4/blk_q2(d, B, m, acc, out)  one full block's levels L:
 *                            out = L * m, or fma(L, m, out) when acc
 *   run_f(q, acc, w, out)    f32 / f16 tensors
 * Partial final blocks go to the scalar block kernels of quant.c, so the
 * drivers add no arithmetic of their own but the per-block w * s. */
#ifndef FL_QUANT_SIMD_H
#define FL_QUANT_SIMD_H
#include "err.h"
#include "half.h"
#include "quant_int.h"
#include "quant.h"

#include <string.h>

/* the includer's kernels (defined after the include) */
static int enc_block(const quant_params *p, const float *a, const float *b, uint32_t i0,
                     uint8_t *scale, uint8_t *data);
static int enc_f16(const quant_params *p, const float *a, const float *b, size_t n, uint8_t *data);
static inline void blk_q8(const uint8_t *d, size_t B, qs_vf m, int acc, float *out);
static inline void blk_q4(const uint8_t *d, size_t B, qs_vf m, int acc, float *out);
static inline void blk_q2(const uint8_t *d, size_t B, qs_vf m, int acc, float *out);

/* After the absmax of a full block: its f16 scale into scale[0..1] and *s.
 * Returns FL_ENUMERIC (scale overflow), 1 when s is 0 (then the block's
 * codes, level 0 everywhere, are written too), 0 otherwise. */
static inline int qs_block_scale(const quant_params *p, float absmax, uint8_t *scale, uint8_t *data,
                                 float *s)
{
	const enum qt_fmt fmt = p->fmt;
	uint16_t sb;
	int rc = quant_scale_for(fmt, absmax, &sb, s);
	if (rc)
		return rc;
	scale[0] = (uint8_t)sb;
	scale[1] = (uint8_t)(sb >> 8);
	if (*s != 0.0f)
		return 0;
	memset(data,
	       fmt == QT_Q8   ? 0x00
	       : fmt == QT_Q4 ? 0x88
	                      : 0xaa,
	       p->block * qt_fmt_bits(fmt) / 8);
	return 1;
}

static int qs_encode(const quant_params *p, const float *a, const float *b, size_t n,
                     uint8_t *scales, uint8_t *data)
{
	if (p->fmt == QT_F16 && p->round == QUANT_NEAREST)
		return enc_f16(p, a, b, n, data);
	if (p->fmt != QT_Q8 && p->fmt != QT_Q4 && p->fmt != QT_Q2)
		return FL_EINVAL; /* quant.c routes other cases to the scalar code */
	const size_t B = p->block, bits = qt_fmt_bits(p->fmt);
	const size_t nfull = n / B;
	for (size_t j = 0; j < nfull; j++) {
		int rc = enc_block(p, a + j * B, b ? b + j * B : NULL, (uint32_t)(j * B),
		                   scales + 2 * j, data + j * B * bits / 8);
		if (rc)
			return rc;
	}
	if (n % B)
		return quant_encode_block(p, a + nfull * B, b ? b + nfull * B : NULL, nfull * B,
		                          n - nfull * B, scales + 2 * nfull,
		                          data + nfull * B * bits / 8);
	return 0;
}

static inline __attribute__((always_inline)) void qs_run_q(const qtensor *q, enum qt_fmt fmt,
                                                           int acc, float w, float *out)
{
	const size_t B = q->block, n = q->n, nfull = n / B, bits = qt_fmt_bits(fmt);
	for (size_t j = 0; j < nfull; j++) {
		float s = half_to_f32((uint16_t)(q->scales[2 * j] | q->scales[2 * j + 1] << 8));
		float ms = s;
		if (acc)
			ms = w * s;
		const qs_vf m = qs_set1(ms);
		const uint8_t *d = q->data + j * B * bits / 8;
		float *o = out + j * B;
		if (fmt == QT_Q8)
			blk_q8(d, B, m, acc, o);
		else if (fmt == QT_Q4)
			blk_q4(d, B, m, acc, o);
		else
			blk_q2(d, B, m, acc, o);
	}
	if (n % B) {
		size_t j = nfull, i0 = nfull * B;
		float s = half_to_f32((uint16_t)(q->scales[2 * j] | q->scales[2 * j + 1] << 8));
		const uint8_t *d = q->data + i0 * bits / 8;
		if (acc)
			quant_accum_block(fmt, d, s, w, n - i0, out + i0);
		else
			quant_decode_block(fmt, d, s, n - i0, out + i0);
	}
}

/* f32 / f16 tensors: out = v or fma(v, w, out) */
static void run_f(const qtensor *q, int acc, float w, float *out)
{
	const size_t n = q->n;
	const qs_vf wv = qs_set1(w);
	size_t i = 0;
	if (q->fmt == QT_F32) {
		if (!acc) {
			memcpy(out, q->data, n * 4);
			return;
		}
		for (; i + QS_LANES <= n; i += QS_LANES) {
			qs_vf v = qs_loadf((const float *)(const void *)(q->data + 4 * i));
			qs_storef(out + i, qs_fma(v, wv, qs_loadf(out + i)));
		}
	} else {
		for (; i + QS_LANES <= n; i += QS_LANES) {
			qs_vf v = qs_loadh(q->data + 2 * i); /* exact */
			if (acc)
				v = qs_fma(v, wv, qs_loadf(out + i));
			qs_storef(out + i, v);
		}
	}
	if (i < n) {
		const uint8_t *d = q->data + i * (q->fmt == QT_F32 ? 4 : 2);
		if (acc)
			quant_accum_block(q->fmt, d, 0.0f, w, n - i, out + i);
		else
			quant_decode_block(q->fmt, d, 0.0f, n - i, out + i);
	}
}

/* decode (acc 0, w 1) or accumulate (acc 1) a whole tensor */
static inline __attribute__((always_inline)) void qs_run(const qtensor *q, int acc, float w,
                                                         float *out)
{
	switch (q->fmt) {
	case QT_Q8:
		qs_run_q(q, QT_Q8, acc, w, out);
		break;
	case QT_Q4:
		qs_run_q(q, QT_Q4, acc, w, out);
		break;
	case QT_Q2:
		qs_run_q(q, QT_Q2, acc, w, out);
		break;
	default:
		run_f(q, acc, w, out);
		break;
	}
}

int QS_FN(encode)(const quant_params *p, const float *a, const float *b, size_t n, uint8_t *scales,
                  uint8_t *data)
{
	return qs_encode(p, a, b, n, scales, data);
}

void QS_FN(decode)(const qtensor *q, float *out)
{
	qs_run(q, 0, 1.0f, out);
}

void QS_FN(accumulate)(const qtensor *q, float w, float *acc)
{
	qs_run(q, 1, w, acc);
}

#endif
