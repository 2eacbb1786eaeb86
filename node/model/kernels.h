/* kernels — the numeric building blocks of the Llama-family decoder: matrix
 * products over GGUF-typed weights, RMSNorm, RoPE, causal grouped-query
 * attention, SwiGLU, softmax and cross-entropy.
 *
 * Every kernel is a plain function over caller-owned float buffers with the
 * shapes given in its comment ([N, C] means N rows of C floats, row-major);
 * none allocates. Threads: kernels parallelise internally with OpenMP and
 * may be called from one thread at a time per set of output buffers. The
 * BLAS is driven single-threaded from inside OpenMP regions (kern_init does
 * that for OpenBLAS), so one thread pool does all the work.
 *
 * Weights are kern_mat views in their stored ggml type (common/gtype.h):
 * F32 goes straight to sgemm; every other type is dequantized a tile of rows
 * at a time into per-thread scratch and that tile is multiplied against all
 * N input rows at once, so no weight row is ever dequantized per token. */
#ifndef FL_KERNELS_H
#define FL_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/* Default rows per dequantized tile (a tile is tile_rows x cols floats). */
#define KERN_TILE_ROWS    128
/* Largest head dimension kern_rope accepts. */
#define KERN_MAX_HEAD_DIM 1024

/* RoPE pairing conventions (as llama.cpp names them):
 *   KERN_ROPE_NORM: pairs (x[2i], x[2i+1]) — GGUF llama (Q/K rows stored
 *                   permuted so adjacent pairs are the rotary pairs);
 *   KERN_ROPE_NEOX: pairs (x[i], x[i + n_rot/2]) — qwen2 and HF layout.
 * Angle for pair i at position p: p * base^(-2i / n_rot). */
enum kern_rope_mode { KERN_ROPE_NORM = 0, KERN_ROPE_NEOX = 2 };

/* A weight matrix W [rows, cols] in ggml type `type`: row r is
 * gtype_row_size(type, cols) bytes at data + r * row_bytes. */
typedef struct kern_mat {
	uint32_t type;
	const void *data;
	int rows, cols;
	size_t row_bytes;
} kern_mat;

/* Fills *m after checking the type is supported and cols is a multiple of
 * its block size. FL_EUNSUPPORTED / FL_EINVAL; *m untouched on error. */
int kern_mat_init(kern_mat *m, uint32_t type, const void *data, int rows, int cols);

/* Sets the BLAS to one thread (OpenBLAS) so OpenMP owns all threads; idempotent
 * and thread-safe. Every kernel calls it; callers need not. */
void kern_init(void);
/* Threads used by the kernels (OpenMP); n <= 0 keeps the current setting. */
void kern_set_threads(int n);
int kern_threads(void);
/* Whether the vector inner loops (exp in softmax, cross-entropy, SwiGLU;
 * fused row dots) are used: AVX2+FMA, on by default when the CPU has them,
 * or NEON, always available in aarch64 builds. kern_use_avx2(0) forces the
 * portable loops (tests run both); returns the previous setting, and asking
 * for 1 where neither exists leaves it off. */
int kern_use_avx2(int on);
/* Kernels run on the calling thread when their work is small (see
 * kernels.c); kern_parallel_always(1) removes that cut-off so tests cover
 * the threaded paths on tiny shapes. Not thread-safe: call at start-up. */
void kern_parallel_always(int on);

/* Floats of scratch kern_matmul needs to run `nthreads` threads on weights
 * with up to max_cols columns in any non-F32 type (F32 needs none). */
size_t kern_matmul_scratch(int max_cols, int nthreads);

/* out [N, O] = inp [N, I] @ W [O, I]^T (+ bias [O] if non-NULL).
 * inp rows are ld_in floats apart (ld_in >= I), out rows ld_out (>= O).
 * scratch/scratch_n: tile buffer for non-F32 weights; the thread count is
 * reduced to what the scratch holds (at least 16 rows x I per thread is
 * required: returns FL_EINVAL otherwise; always pass it — only the fused
 * small-batch path below does without). For N <= 4 (decode steps) F32 runs
 * as matrix-vector products and, with AVX2 or NEON, F16/Q8_0/Q4_0 as fused
 * row-dot kernels that read each stored row once for all N inputs. out must
 * not alias inp. */
int kern_matmul(float *out, int ld_out, const float *inp, int ld_in, const kern_mat *w,
                const float *bias, int N, float *scratch, size_t scratch_n);

/* out [N, C] = rows tokens[n] of the embedding table E [V, C] (dequantized).
 * Token ids must be in [0, V) (the caller validates). */
void kern_embed(float *out, const int32_t *tokens, const kern_mat *E, int N);

/* RMSNorm per row: rstd[n] = 1/sqrt(mean(x[n]^2) + eps),
 * out [N, C] = x [N, C] * rstd[n] * w [C]. rstd may be NULL. out may alias x. */
void kern_rmsnorm(float *out, float *rstd, const float *x, const float *w, float eps, int N, int C);

/* In-place rotary embedding on x [N, nh, hd] (row stride ld floats,
 * ld >= nh*hd): token n at position pos[n]; the first n_rot dims of each head
 * rotate (n_rot even, <= hd <= KERN_MAX_HEAD_DIM), the rest pass through. */
void kern_rope(float *x, int ld, const int32_t *pos, int N, int nh, int hd, int n_rot,
               float freq_base, int mode);
/* kern_rope with per-pair frequency factors (Llama 3 RoPE scaling, linear
 * scaling): pair i turns by pos * base^(-2i/n_rot) / ff[i]; ff [n_rot/2]
 * positive, NULL for none (then equal to kern_rope). */
void kern_rope_ff(float *x, int ld, const int32_t *pos, int N, int nh, int hd, int n_rot,
                  float freq_base, int mode, const float *ff);

/* Causal grouped-query attention over B sequences.
 *   q   [B, Tq, NH*hd]   row stride q_ld, batch stride Tq*q_ld
 *   k,v [B, Tk, NKV*hd]  row stride kv_ld, batch stride kv_bs (>= Tk*kv_ld)
 *   att [B, NH, Tq, Tk]  out: softmax probabilities (0 above the causal
 *                        diagonal; kept for a backward pass)
 *   out [B, Tq, NH*hd]   row stride out_ld
 * Query t of a sequence sits at absolute position pos0 + t and sees keys
 * 0..pos0+t (requires pos0 + Tq <= Tk); head h reads KV head h / (NH/NKV)
 * (NH a multiple of NKV). Scores are scaled by 1/sqrt(hd). */
typedef struct kern_attn {
	int B, Tq, Tk, pos0, NH, NKV, hd;
	int q_ld, kv_ld, out_ld;
	size_t kv_bs;
} kern_attn;
void kern_attention(float *out, float *att, const float *q, const float *k, const float *v,
                    const kern_attn *s);

/* out [n] = silu(gate [n]) * up [n], silu(x) = x / (1 + exp(-x)). out may
 * alias gate or up. */
void kern_swiglu(float *out, const float *gate, const float *up, size_t n);

/* out [n] = a [n] + b [n]; out may alias a or b. */
void kern_add(float *out, const float *a, const float *b, size_t n);

/* Row-wise softmax: probs [N, V] from logits [N, V] (may alias). */
void kern_softmax(float *probs, const float *logits, int N, int V);

/* Cross-entropy per row: losses[n] = logsumexp(logits[n]) - logits[n][t_n]
 * for targets[n] in [0, V); rows whose target is negative get loss 0 and
 * are not counted. Returns the number of counted rows; *sum gets the sum of
 * their losses (double). Targets >= V are a programmer error (validated by
 * the caller). */
int kern_crossentropy(float *losses, double *sum, const float *logits, const int32_t *targets,
                      int N, int V);

#endif
