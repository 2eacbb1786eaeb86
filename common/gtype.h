/* gtype — ggml tensor element types as stored in GGUF files: ids, names,
 * block geometry, row sizes, and row conversion to/from f32.
 *
 * Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K
 * (every type of the usual Q4_K_M / Q5_K_M / Q8_0 downloads), both ways:
 * dequantization, and quantization — for Q8_0 and Q4_0 ggml's
 * round-to-nearest reference quantizers bit for bit; for the others our own
 * range-covering quantizers (gtype_k.c: every element within half a step;
 * not byte-equal to ggml's, but any decoder of the format reads them). Every other ggml type id is
 * known by name only, so a refusal can say which type a file asked for. All functions are pure and
 * thread-safe. */
#ifndef FL_GTYPE_H
#define FL_GTYPE_H
#include <stddef.h>
#include <stdint.h>

/* The official ggml type ids (the numbers stored in GGUF tensor infos). */
enum gtype {
	GTYPE_F32 = 0,
	GTYPE_F16 = 1,
	GTYPE_Q4_0 = 2,
	GTYPE_Q4_1 = 3,
	GTYPE_Q5_0 = 6,
	GTYPE_Q5_1 = 7,
	GTYPE_Q8_0 = 8,
	GTYPE_Q4_K = 12,
	GTYPE_Q5_K = 13,
	GTYPE_Q6_K = 14,
	GTYPE_BF16 = 30,
};

/* Block geometry of the supported types.
 *   Q8_0: 32 elems, 34 bytes  { f16 d; int8 qs[32] }            y = d*q
 *   Q4_0: 32 elems, 18 bytes  { f16 d; u8 qs[16] }  y[j] = d*((qs[j]&15)-8),
 *                                                   y[j+16] = d*((qs[j]>>4)-8)
 *   Q4_1: 32 elems, 20 bytes  { f16 d, m; u8 qs[16] }   y = d*q + m, nibbles as Q4_0
 *   Q5_0: 32 elems, 22 bytes  { f16 d; u8 qh[4]; u8 qs[16] }  y = d*(q - 16),
 *                             q = nibble as Q4_0 | bit j of LE u32 qh << 4
 *   Q5_1: 32 elems, 24 bytes  { f16 d, m; u8 qh[4]; u8 qs[16] }  y = d*q + m
 *   Q4_K: 256 elems, 144 bytes { f16 d, dmin; u8 scales[12]; u8 qs[128] }
 *         8 sub-blocks of 32, 6-bit scale sc and min mn: y = d*sc*q - dmin*mn
 *   Q5_K: 256 elems, 176 bytes { f16 d, dmin; u8 scales[12]; u8 qh[32];
 *         u8 qs[128] } as Q4_K, fifth bit of element l of sub-block k in
 *         bit k of qh[l]
 *   Q6_K: 256 elems, 210 bytes { u8 ql[128]; u8 qh[64]; int8 sc[16]; f16 d }
 *         16 sub-blocks of 16: y = d*sc*(q - 32), q 6-bit */
#define GTYPE_QK  32  /* Q8_0 / Q4_0 block */
#define GTYPE_QKK 256 /* K-quant super-block */

/* 1 if id is one of the supported types above, else 0. */
int gtype_supported(uint32_t id);

/* Name of any ggml type id ("Q5_K", "IQ2_XS", ...), supported or not, or
 * NULL for ids ggml never defined. Static storage. */
const char *gtype_name(uint32_t id);

/* Elements per block / bytes per block; 0 for unsupported ids. */
size_t gtype_block_elems(uint32_t id);
size_t gtype_block_bytes(uint32_t id);

/* Bytes of a row of n elements. FL_EUNSUPPORTED for an unsupported id,
 * FL_EINVAL when n is not a multiple of the block size, FL_EOVERFLOW when
 * the size does not fit a size_t. *out written only on success. */
int gtype_row_size(uint32_t id, uint64_t n, size_t *out);

/* Bytes of a tensor of `ndims` dims ne[0..ndims-1] (ne[0] = row length,
 * innermost). Same errors as gtype_row_size; any product overflow ->
 * FL_EOVERFLOW. ndims 0 means a scalar (one element). */
int gtype_tensor_size(uint32_t id, const uint64_t *ne, int ndims, size_t *out);

/* Row converters: n elements (a multiple of the block size; callers check
 * with gtype_row_size first — violating that is a programmer error).
 * src holds gtype_row_size(id, n) bytes, any alignment. */
typedef void (*gtype_dequant_fn)(const void *src, float *dst, size_t n);
/* NULL for unsupported ids. */
gtype_dequant_fn gtype_dequant_fn_of(uint32_t id);

void gtype_dequant_f32(const void *src, float *dst, size_t n);
void gtype_dequant_f16(const void *src, float *dst, size_t n); /* F16C / NEON when available */
void gtype_dequant_f16_scalar(const void *src, float *dst, size_t n);
void gtype_dequant_bf16(const void *src, float *dst, size_t n);
/* Q8_0 / Q4_0 use NEON in aarch64 builds; the _scalar references give the
 * same bits (tests compare them). */
void gtype_dequant_q8_0(const void *src, float *dst, size_t n);
void gtype_dequant_q4_0(const void *src, float *dst, size_t n);
void gtype_dequant_q8_0_scalar(const void *src, float *dst, size_t n);
void gtype_dequant_q4_0_scalar(const void *src, float *dst, size_t n);
void gtype_dequant_q4_1(const void *src, float *dst, size_t n);
void gtype_dequant_q5_0(const void *src, float *dst, size_t n);
void gtype_dequant_q5_1(const void *src, float *dst, size_t n);
void gtype_dequant_q4_k(const void *src, float *dst, size_t n);
void gtype_dequant_q5_k(const void *src, float *dst, size_t n);
void gtype_dequant_q6_k(const void *src, float *dst, size_t n);

/* Checked dispatcher: FL_EUNSUPPORTED / FL_EINVAL (n not a block multiple). */
int gtype_dequant_row(uint32_t id, const void *src, float *dst, size_t n);

/* Quantizes/converts n floats into dst (gtype_row_size(id, n) bytes).
 * Every supported id; others FL_EUNSUPPORTED. FL_EINVAL when n is not a
 * block multiple. Quantized types refuse NaN/Inf input with FL_ENUMERIC (a
 * scale cannot represent them), and so do Q4_1..Q6_K when a block's scale
 * or offset does not fit an f16; F16 converts values
 * beyond ±65504 to ±Inf and BF16/F16 keep NaN, as a plain cast would.
 * On error dst may be partly written. */
int gtype_quant_row(uint32_t id, const float *src, void *dst, size_t n);

#endif
