/* quant — block-wise quantization of adapter deltas, error feedback, and the
 * fused decode-accumulate that aggregation runs on.
 *
 * Formats, byte layout and the exact arithmetic are specified in
 * docs/FORMATS.md; in short, a tensor is quantized as its row-major
 * flattening in blocks of B consecutive elements (B = 32, 64 or 128; the
 * last block may be shorter), each block with one f16 scale s, and
 *   deq(q)_i = (float)L_i * s          (exact: no rounding happens)
 *   acc_i   <- fmaf((float)L_i, w * s, acc_i)   (one rounding; w * s rounded once per block)
 *   t_i     <- t_i + deq(q)_i          (quant_apply: the same as w = 1)
 * where L_i is the integer level of element i. The AVX2 and NEON paths and
 * the scalar path compute exactly these operations, so their results are equal
 * bit for bit, and a node and the coordinator applying the same qtensor to
 * the same global adapter reach the same bytes.
 *
 * All functions may be called from any thread on distinct data; the
 * implementation choice (quant_set_impl) is process-wide and meant to be
 * made once, before threads start. */
#ifndef FL_QUANT_H
#define FL_QUANT_H
#include <stddef.h>
#include <stdint.h>

#include "half.h"
#include "qtensor.h"
#include "tensor.h"

enum quant_round {
	QUANT_NEAREST = 0,    /* round to nearest, ties to even */
	QUANT_STOCHASTIC = 1, /* unbiased: P(up) = distance to the lower level */
};

typedef struct quant_params {
	enum qt_fmt fmt;
	uint32_t block; /* 32, 64 or 128 for q8/q4/q2; must be 0 for f32/f16 */
	enum quant_round round;
	uint64_t seed; /* stochastic rounding: the stream is a pure function of
	                  (seed, element index), so results are reproducible */
} quant_params;

/* 0 when p is usable, FL_EINVAL otherwise. */
int quant_check_params(const quant_params *p);

/* Quantizes x (n = product of shape floats, row-major) into q, which must
 * be initialised (its buffers are reused). name may be NULL.
 * FL_ENUMERIC when x holds a NaN/Inf, or a block's scale would not fit in
 * f16 (|x| > 65504 * qmax, see docs/FORMATS.md) or an f16-format element
 * overflows; then q is left empty (fmt 0). FL_EINVAL for bad params/shape,
 * FL_ETOOBIG past 2^31 elements, FL_ENOMEM. */
int quant_encode(const quant_params *p, const char *name, const float *x, uint32_t ndim,
                 const uint64_t *shape, qtensor *q);

/* Error feedback: with x = delta + residual (one f32 addition per
 * element), q = Q(x) and then residual = x - deq(q). The caller keeps one
 * residual per tensor, zero at the start. On failure residual and q are
 * as for quant_encode (residual unchanged, q empty). */
int quant_encode_ef(const quant_params *p, const char *name, const float *delta, float *residual,
                    uint32_t ndim, const uint64_t *shape, qtensor *q);

/* The caller guarantees q passed qt_check (or came from quant_encode);
 * these functions only check that n matches (FL_EMISMATCH) and that the
 * header is self-consistent (FL_EINVAL). */

/* out = deq(q), n floats. */
int quant_decode(const qtensor *q, float *out, size_t n);
/* acc += w * deq(q) without materialising deq(q) (the aggregation loop).
 * w must be finite. */
int quant_accumulate(const qtensor *q, float w, float *acc, size_t n);
/* t += deq(q): how every party applies a global delta. */
int quant_apply(const qtensor *q, float *t, size_t n);

/* The same on tensors of a set: shapes must match (FL_EMISMATCH) and, when
 * q has a name, names too. */
int quant_encode_tensor(const quant_params *p, const tensor *x, qtensor *q);
int quant_encode_tensor_ef(const quant_params *p, const tensor *delta, tensor *residual,
                           qtensor *q);
/* Differential privacy on the node (DP-FedAvg, docs/PRIVACY.md): the whole
 * update v = delta[i] (+ residual[i] with error feedback; residual may be
 * NULL) over n tensors is scaled to L2 norm <= clip, quantized into out[i]
 * with ps[i] (initialised qtensors), and the bound is verified on what the
 * coordinator will sum: sum_i ||deq(out[i])||^2 <= clip^2, in double.
 * Quantization can push the norm above clip (rounding up, stochastic
 * rounding, scale rounding): then v is scaled down by the excess and
 * quantized again, up to 8 times; if the bound still fails the update is
 * all zeros. With a residual, residual[i] becomes w - deq(out[i]) where w
 * is the scaled v that was quantized: the part cut by the clip is dropped,
 * so no later round resends it. *norm_out (may be NULL): the decoded norm.
 * Errors as quant_encode (residuals unchanged then). Allocates. */
int quant_encode_clipped(const quant_params *ps, size_t n, const tensor *const *delta,
                         tensor *const *residual, double clip, qtensor *out, double *norm_out);
int quant_accumulate_tensor(const qtensor *q, float w, tensor *acc);
int quant_apply_tensor(const qtensor *q, tensor *t);
/* Applies nq quantized tensors to the tensors of s with the same names.
 * Every name must exist in s with the same shape and appear at most once
 * (s may have tensors no qtensor names, e.g. frozen lora_a with FFA-LoRA).
 * All checks happen first: on an error s is unchanged. */
int quant_apply_set(tset *s, const qtensor *qs, size_t nq);

/* Per-tensor seed from a round seed and the tensor name, so that tensors of
 * one update use independent random streams. */
uint64_t quant_seed_derive(uint64_t seed, const char *name);

/* Implementation selection (tests and benchmarks). AUTO picks AVX2 when
 * the build has it and the CPU supports AVX2, FMA and F16C (x86-64, chosen
 * at run time), NEON in every aarch64 build (ASIMD is part of ARMv8-A:
 * chosen at build time), the scalar code otherwise. */
enum quant_impl {
	QUANT_IMPL_AUTO = 0,
	QUANT_IMPL_SCALAR = 1,
	QUANT_IMPL_AVX2 = 2,
	QUANT_IMPL_NEON = 3,
};
/* FL_EUNSUPPORTED when AVX2 or NEON is asked for but unavailable. */
int quant_set_impl(enum quant_impl impl);
/* QUANT_IMPL_SCALAR, QUANT_IMPL_AVX2 or QUANT_IMPL_NEON. */
enum quant_impl quant_impl_active(void);
int quant_have_avx2(void);
/* 1 in aarch64 builds (quant_neon.c), 0 elsewhere. */
int quant_have_neon(void);
/* The vector implementation this build and CPU can run (AVX2 or NEON), or
 * QUANT_IMPL_SCALAR when there is none: what tests compare with scalar. */
enum quant_impl quant_vector_impl(void);
/* "scalar", "avx2" or "neon" */
const char *quant_impl_name(enum quant_impl impl);

#endif
