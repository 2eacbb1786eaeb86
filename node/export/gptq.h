/* gptq — GPTQ post-training quantization (Frantar et al., 2022) of one
 * weight matrix onto ggml's Q4_0 / Q8_0 blocks, so the result is an
 * ordinary Q4_0/Q8_0 tensor that any GGUF runtime loads.
 *
 * For W [rows, cols] (y = W x) and calibration inputs x_1..x_N of the layer:
 *   H = 2/N sum_n x_n x_n^T                       [cols, cols]
 *   H += damp * mean(diag H) * I                  (dead columns: H_ii = 1, W[:, i] = 0)
 *   U = upper Cholesky factor of H^-1             (H^-1 = U^T U)
 *   for each column i in natural order, in lazy blocks of `block` columns:
 *     at the first column of each 32-column group: the block scale of every
 *       row, from that row's current (error-compensated) 32 values, by the
 *       format's own rule (Q4_0: d = v / -8 with v the value of largest
 *       magnitude; Q8_0: d = max|v| / 127), rounded to f16 as stored;
 *     q = the format's code for W[:, i] with that scale, clamped to its range;
 *     e = (W[:, i] - deq(q)) / U_ii;  W[:, j] -= e * U_ij for the block's
 *       j > i;  the columns after the block get the accumulated update at the
 *       block's end (one dgemm).
 * A quantization group is exactly one ggml block (32 consecutive weights of
 * a row with one f16 scale). See docs/EXPORT.md for the choices.
 *
 * Arithmetic is double precision throughout (the Hessian is accumulated from
 * f32 products of at most one chunk of inputs). Rows are independent and run
 * on OpenMP threads; results do not depend on the thread count. */
#ifndef FL_GPTQ_H
#define FL_GPTQ_H
#include <stddef.h>
#include <stdint.h>

#define GPTQ_DEFAULT_DAMP  0.01 /* fraction of mean(diag H) added to the diagonal */
#define GPTQ_DEFAULT_BLOCK 128  /* lazy-update block, columns (multiple of 32) */
#define GPTQ_MAX_COLS      65536
#define GPTQ_DAMP_RETRIES  4 /* damp x10 per retry when Cholesky fails */

typedef struct gptq_opts {
	double damp; /* <= 0 -> GPTQ_DEFAULT_DAMP */
	int block;   /* <= 0 -> GPTQ_DEFAULT_BLOCK; must be a multiple of 32 */
	int stats;   /* 1: fill err_gptq/err_rtn (costs one more rows x cols^2 product) */
} gptq_opts;

typedef struct gptq_stats {
	double damp_used; /* fraction actually used (after retries) */
	int dead_cols;    /* columns with zero input energy */
	/* with opts.stats: tr(D H D^T) / rows with D = W - deq(Q), H undamped:
	 * the mean squared output error per row on the calibration inputs
	 * (times 2), for GPTQ and for round-to-nearest of the same format */
	double err_gptq, err_rtn;
} gptq_stats;

/* ---- Hessian accumulator ------------------------------------------------ */

typedef struct gptq_hess gptq_hess;

/* n input features (1..GPTQ_MAX_COLS). Memory: 8 n^2 + 4 n^2 bytes. */
int gptq_hess_new(int n, gptq_hess **out);
void gptq_hess_free(gptq_hess *h);
void gptq_hess_reset(gptq_hess *h);
/* Adds m inputs: rows of X [m, n], row stride ld floats. Non-finite inputs
 * -> FL_ENUMERIC (nothing added). */
int gptq_hess_add(gptq_hess *h, const float *X, int m, int ld);
int gptq_hess_n(const gptq_hess *h);
uint64_t gptq_hess_count(const gptq_hess *h);
/* Writes H = 2/N sum x x^T, full symmetric [n, n], into H (caller's n*n
 * doubles). FL_ESTATE when nothing was added. */
int gptq_hess_matrix(const gptq_hess *h, double *H);

/* ---- quantization ------------------------------------------------------- */

/* Quantizes W [rows, cols] (f32, row-major; cols a multiple of 32) with
 * Hessian H [cols, cols] (full symmetric, as gptq_hess_matrix gives; not
 * modified) into `out`: rows * gtype_row_size(type, cols) bytes of ggml
 * blocks, type GTYPE_Q4_0 or GTYPE_Q8_0. st (may be NULL) gets statistics.
 * FL_EINVAL bad arguments, FL_EUNSUPPORTED other types, FL_ENUMERIC NaN/Inf
 * in W or H or a Cholesky failure after GPTQ_DAMP_RETRIES, FL_ENOMEM.
 * Scratch: 16 cols^2 + 8 rows * cols bytes (+ 8 rows * cols with stats). */
int gptq_quantize(const float *W, int rows, int cols, const double *H, uint32_t type,
                  const gptq_opts *o, void *out, gptq_stats *st);

/* The per-block rule, exposed for tests: the stored (f16-rounded) scale of
 * 32 values, and the code of one value under scale d (Q4_0: 0..15, value
 * d * (q - 8); Q8_0: -127..127, value d * q). */
float gptq_block_scale(uint32_t type, const double *v32);
int gptq_code(uint32_t type, double w, float d);

/* tr(D H D^T) with D = W - deq(Q) for quantized rows q (type Q4_0/Q8_0/F16/
 * F32...), double precision. */
int gptq_output_error(const float *W, const void *q, uint32_t type, int rows, int cols,
                      const double *H, double *out);

#endif
