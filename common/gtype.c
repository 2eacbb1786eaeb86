/* gtype — see gtype.h. Block layouts follow ggml's definitions (checked
 * against the public format description); the code is our own. */
#include "gtype.h"

#include "err.h"
#include "gtype_int.h"
#include "half.h"

#include <math.h>
#include <string.h>

/* Every id ggml has defined, so errors can name what a file asked for.
 * Ids 4 and 5 (Q4_2, Q4_3) and 31..33, 36..38 (repacked variants) were
 * removed from ggml but may still appear in old or odd files. */
static const char *const type_names[] = {
    [0] = "F32",     [1] = "F16",         [2] = "Q4_0",        [3] = "Q4_1",        [4] = "Q4_2",
    [5] = "Q4_3",    [6] = "Q5_0",        [7] = "Q5_1",        [8] = "Q8_0",        [9] = "Q8_1",
    [10] = "Q2_K",   [11] = "Q3_K",       [12] = "Q4_K",       [13] = "Q5_K",       [14] = "Q6_K",
    [15] = "Q8_K",   [16] = "IQ2_XXS",    [17] = "IQ2_XS",     [18] = "IQ3_XXS",    [19] = "IQ1_S",
    [20] = "IQ4_NL", [21] = "IQ3_S",      [22] = "IQ2_S",      [23] = "IQ4_XS",     [24] = "I8",
    [25] = "I16",    [26] = "I32",        [27] = "I64",        [28] = "F64",        [29] = "IQ1_M",
    [30] = "BF16",   [31] = "Q4_0_4_4",   [32] = "Q4_0_4_8",   [33] = "Q4_0_8_8",   [34] = "TQ1_0",
    [35] = "TQ2_0",  [36] = "IQ4_NL_4_4", [37] = "IQ4_NL_4_8", [38] = "IQ4_NL_8_8", [39] = "MXFP4",
};

const char *gtype_name(uint32_t id)
{
	if (id >= sizeof type_names / sizeof type_names[0])
		return NULL;
	return type_names[id];
}

struct tinfo {
	size_t elems, bytes;
	gtype_dequant_fn deq;
};

static int info_of(uint32_t id, struct tinfo *ti)
{
	switch (id) {
	case GTYPE_F32:
		*ti = (struct tinfo){1, 4, gtype_dequant_f32};
		return 1;
	case GTYPE_F16:
		*ti = (struct tinfo){1, 2, gtype_dequant_f16};
		return 1;
	case GTYPE_BF16:
		*ti = (struct tinfo){1, 2, gtype_dequant_bf16};
		return 1;
	case GTYPE_Q8_0:
		*ti = (struct tinfo){GTYPE_QK, 2 + GTYPE_QK, gtype_dequant_q8_0};
		return 1;
	case GTYPE_Q4_0:
		*ti = (struct tinfo){GTYPE_QK, 2 + GTYPE_QK / 2, gtype_dequant_q4_0};
		return 1;
	case GTYPE_Q4_1:
		*ti = (struct tinfo){GTYPE_QK, 4 + GTYPE_QK / 2, gtype_dequant_q4_1};
		return 1;
	case GTYPE_Q5_0:
		*ti = (struct tinfo){GTYPE_QK, 2 + 4 + GTYPE_QK / 2, gtype_dequant_q5_0};
		return 1;
	case GTYPE_Q5_1:
		*ti = (struct tinfo){GTYPE_QK, 4 + 4 + GTYPE_QK / 2, gtype_dequant_q5_1};
		return 1;
	case GTYPE_Q4_K:
		*ti = (struct tinfo){GTYPE_QKK, 4 + 12 + GTYPE_QKK / 2, gtype_dequant_q4_k};
		return 1;
	case GTYPE_Q5_K:
		*ti = (struct tinfo){GTYPE_QKK, 4 + 12 + GTYPE_QKK / 8 + GTYPE_QKK / 2,
		                     gtype_dequant_q5_k};
		return 1;
	case GTYPE_Q6_K:
		*ti = (struct tinfo){GTYPE_QKK, GTYPE_QKK / 2 + GTYPE_QKK / 4 + GTYPE_QKK / 16 + 2,
		                     gtype_dequant_q6_k};
		return 1;
	default:
		return 0;
	}
}

int gtype_supported(uint32_t id)
{
	struct tinfo ti;
	return info_of(id, &ti);
}

size_t gtype_block_elems(uint32_t id)
{
	struct tinfo ti;
	return info_of(id, &ti) ? ti.elems : 0;
}

size_t gtype_block_bytes(uint32_t id)
{
	struct tinfo ti;
	return info_of(id, &ti) ? ti.bytes : 0;
}

gtype_dequant_fn gtype_dequant_fn_of(uint32_t id)
{
	struct tinfo ti;
	return info_of(id, &ti) ? ti.deq : NULL;
}

int gtype_row_size(uint32_t id, uint64_t n, size_t *out)
{
	struct tinfo ti;
	if (!info_of(id, &ti))
		return FL_EUNSUPPORTED;
	if (n % ti.elems != 0)
		return FL_EINVAL;
	uint64_t blocks = n / ti.elems;
	if (blocks > SIZE_MAX / ti.bytes)
		return FL_EOVERFLOW;
	*out = (size_t)blocks * ti.bytes;
	return 0;
}

int gtype_tensor_size(uint32_t id, const uint64_t *ne, int ndims, size_t *out)
{
	if (ndims < 0 || (ndims > 0 && !ne))
		return FL_EINVAL;
	size_t row;
	int rc = gtype_row_size(id, ndims > 0 ? ne[0] : 1, &row);
	if (rc)
		return rc;
	size_t total = row;
	for (int i = 1; i < ndims; i++) {
		if ((uint64_t)(size_t)ne[i] != ne[i])
			return FL_EOVERFLOW;
		if (ne[i] != 0 && total > SIZE_MAX / (size_t)ne[i])
			return FL_EOVERFLOW;
		total *= (size_t)ne[i];
	}
	*out = total;
	return 0;
}

/* ---- dequantization ---- */

static inline uint16_t ld16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

void gtype_dequant_f32(const void *src, float *dst, size_t n)
{
	/* GGUF is little endian and so are the hosts we build for. */
	memcpy(dst, src, n * sizeof(float));
}

#ifdef FL_HAVE_AVX2_BUILD
void gtype_dequant_f16_avx2(const void *src, float *dst, size_t n);
#endif
/* NEON kernels (gtype_neon.c): every aarch64 build has them. */
#if defined(__aarch64__) && defined(__ARM_NEON)
#define GTYPE_NEON 1
void gtype_dequant_f16_neon(const void *src, float *dst, size_t n);
void gtype_dequant_q8_0_neon(const void *src, float *dst, size_t n);
void gtype_dequant_q4_0_neon(const void *src, float *dst, size_t n);
#else
#define GTYPE_NEON 0
#endif

void gtype_dequant_f16(const void *src, float *dst, size_t n)
{
#ifdef FL_HAVE_AVX2_BUILD
	/* every AVX2 CPU has F16C (it came a generation earlier); clang's
	 * __builtin_cpu_supports does not know "f16c" */
	if (__builtin_cpu_supports("avx2")) {
		gtype_dequant_f16_avx2(src, dst, n);
		return;
	}
#endif
#if GTYPE_NEON
	gtype_dequant_f16_neon(src, dst, n);
	return;
#endif
	gtype_dequant_f16_scalar(src, dst, n);
}

void gtype_dequant_f16_scalar(const void *src, float *dst, size_t n)
{
	const uint8_t *p = src;
	for (size_t i = 0; i < n; i++)
		dst[i] = half_to_f32(ld16(p + 2 * i));
}

void gtype_dequant_bf16(const void *src, float *dst, size_t n)
{
	const uint8_t *p = src;
	for (size_t i = 0; i < n; i++)
		dst[i] = bf16_to_f32(ld16(p + 2 * i));
}

void gtype_dequant_q8_0(const void *src, float *dst, size_t n)
{
#if GTYPE_NEON
	gtype_dequant_q8_0_neon(src, dst, n);
#else
	gtype_dequant_q8_0_scalar(src, dst, n);
#endif
}

void gtype_dequant_q8_0_scalar(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QK; i++, b += 2 + GTYPE_QK, dst += GTYPE_QK) {
		const float d = half_to_f32(ld16(b));
		const int8_t *q = (const int8_t *)(b + 2);
		for (int j = 0; j < GTYPE_QK; j++)
			dst[j] = (float)q[j] * d;
	}
}

void gtype_dequant_q4_0(const void *src, float *dst, size_t n)
{
#if GTYPE_NEON
	gtype_dequant_q4_0_neon(src, dst, n);
#else
	gtype_dequant_q4_0_scalar(src, dst, n);
#endif
}

void gtype_dequant_q4_0_scalar(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QK; i++, b += 2 + GTYPE_QK / 2, dst += GTYPE_QK) {
		const float d = half_to_f32(ld16(b));
		const uint8_t *q = b + 2;
		/* low nibbles hold elements 0..15, high nibbles 16..31 */
		for (int j = 0; j < GTYPE_QK / 2; j++) {
			dst[j] = (float)((q[j] & 0x0f) - 8) * d;
			dst[j + GTYPE_QK / 2] = (float)((q[j] >> 4) - 8) * d;
		}
	}
}

void gtype_dequant_q4_k(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QKK; i++, b += 144) {
		const float d = half_to_f32(ld16(b));
		const float dmin = half_to_f32(ld16(b + 2));
		const uint8_t *s = b + 4;
		const uint8_t *q = b + 16;
		/* 4 groups of 64 elements; each group is 32 low nibbles (sub-block
		 * 2g) then 32 high nibbles (sub-block 2g+1) of the same 32 bytes. */
		for (int g = 0; g < 4; g++, q += 32) {
			int sc, mn;
			gt_kscale_min(2 * g, s, &sc, &mn);
			const float d1 = d * (float)sc, m1 = dmin * (float)mn;
			gt_kscale_min(2 * g + 1, s, &sc, &mn);
			const float d2 = d * (float)sc, m2 = dmin * (float)mn;
			for (int l = 0; l < 32; l++)
				*dst++ = d1 * (float)(q[l] & 0x0f) - m1;
			for (int l = 0; l < 32; l++)
				*dst++ = d2 * (float)(q[l] >> 4) - m2;
		}
	}
}

void gtype_dequant_q6_k(const void *src, float *dst, size_t n)
{
	const uint8_t *b = src;
	for (size_t i = 0; i < n / GTYPE_QKK; i++, b += 210) {
		const uint8_t *ql = b;
		const uint8_t *qh = b + 128;
		const int8_t *sc = (const int8_t *)(b + 192);
		const float d = half_to_f32(ld16(b + 208));
		/* 2 halves of 128 elements; in each, element l (0..31) of the four
		 * 32-element quarters takes its low 4 bits from ql[l] / ql[l+32]
		 * (low, then high nibble) and its high 2 bits from qh[l]. Scales
		 * cover 16 elements each. */
		for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, dst += 128) {
			for (int l = 0; l < 32; l++) {
				const int is = l / 16;
				const int q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
				const int q2 =
				    ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
				const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
				const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
				dst[l] = d * (float)sc[is] * (float)q1;
				dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
				dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
				dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
			}
		}
	}
}

int gtype_dequant_row(uint32_t id, const void *src, float *dst, size_t n)
{
	struct tinfo ti;
	if (!info_of(id, &ti))
		return FL_EUNSUPPORTED;
	if (n % ti.elems != 0)
		return FL_EINVAL;
	ti.deq(src, dst, n);
	return 0;
}

/* ---- quantization ---- */

static inline void st16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static int all_finite(const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return 0;
	return 1;
}

/* Q8_0, as ggml's reference: d = amax/127, q = round(x/d) (half away from
 * zero), d stored as f16 while the quants use the f32 d. The clamp only
 * matters when 1/d overflows (amax subnormal), where ggml's cast would be
 * undefined; such blocks store d = 0 anyway. */
static void quant_q8_0(const float *x, uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n / GTYPE_QK; i++, x += GTYPE_QK, b += 2 + GTYPE_QK) {
		float amax = 0.0f;
		for (int j = 0; j < GTYPE_QK; j++)
			amax = fmaxf(amax, fabsf(x[j]));
		const float d = amax / 127.0f;
		const float id = d != 0.0f ? 1.0f / d : 0.0f;
		st16(b, half_from_f32(d));
		int8_t *q = (int8_t *)(b + 2);
		for (int j = 0; j < GTYPE_QK; j++) {
			float v = roundf(x[j] * id);
			if (isnan(v)) /* 0 * inf: x == 0 with an overflowed 1/d */
				v = 0.0f;
			v = fminf(fmaxf(v, -127.0f), 127.0f);
			q[j] = (int8_t)v;
		}
	}
}

/* Q4_0, as ggml's reference: the element of largest magnitude (first one on
 * ties) maps to -8, d = max/-8, q = min(15, trunc(x/d + 8.5)). */
static void quant_q4_0(const float *x, uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n / GTYPE_QK; i++, x += GTYPE_QK, b += 2 + GTYPE_QK / 2) {
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < GTYPE_QK; j++) {
			if (amax < fabsf(x[j])) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		}
		const float d = max / -8.0f;
		const float id = d != 0.0f ? 1.0f / d : 0.0f;
		st16(b, half_from_f32(d));
		uint8_t *q = b + 2;
		for (int j = 0; j < GTYPE_QK / 2; j++) {
			float v0 = x[j] * id + 8.5f;
			float v1 = x[j + GTYPE_QK / 2] * id + 8.5f;
			/* x*id lies in [-8, 8] unless 1/d overflowed; keep the
			 * conversion defined either way. */
			v0 = v0 >= 0.0f ? fminf(v0, 15.0f) : 0.0f;
			v1 = v1 >= 0.0f ? fminf(v1, 15.0f) : 0.0f;
			q[j] = (uint8_t)((uint8_t)v0 | (uint8_t)v1 << 4);
		}
	}
}

int gtype_quant_row(uint32_t id, const float *src, void *dst, size_t n)
{
	uint8_t *p = dst;
	switch (id) {
	case GTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		return 0;
	case GTYPE_F16:
		for (size_t i = 0; i < n; i++)
			st16(p + 2 * i, half_from_f32(src[i]));
		return 0;
	case GTYPE_BF16:
		for (size_t i = 0; i < n; i++)
			st16(p + 2 * i, bf16_from_f32(src[i]));
		return 0;
	case GTYPE_Q8_0:
	case GTYPE_Q4_0:
		if (n % GTYPE_QK != 0)
			return FL_EINVAL;
		if (!all_finite(src, n))
			return FL_ENUMERIC;
		if (id == GTYPE_Q8_0)
			quant_q8_0(src, p, n);
		else
			quant_q4_0(src, p, n);
		return 0;
	case GTYPE_Q4_1:
	case GTYPE_Q5_0:
	case GTYPE_Q5_1:
	case GTYPE_Q4_K:
	case GTYPE_Q5_K:
	case GTYPE_Q6_K:
		if (n % gtype_block_elems(id) != 0)
			return FL_EINVAL;
		if (!all_finite(src, n))
			return FL_ENUMERIC;
		return id == GTYPE_Q4_1   ? gt_quant_q4_1(src, p, n)
		       : id == GTYPE_Q5_0 ? gt_quant_q5_0(src, p, n)
		       : id == GTYPE_Q5_1 ? gt_quant_q5_1(src, p, n)
		       : id == GTYPE_Q4_K ? gt_quant_q4_k(src, p, n)
		       : id == GTYPE_Q5_K ? gt_quant_q5_k(src, p, n)
		                          : gt_quant_q6_k(src, p, n);
	default:
		return FL_EUNSUPPORTED;
	}
}
