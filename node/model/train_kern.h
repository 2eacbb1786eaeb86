/* train_kern — kernels of training: the LoRA projection (forward and
 * backward) and the backward pass of every decoder op (matrix products over
 * GGUF-typed weights, RMSNorm, RoPE, causal GQA attention, SwiGLU, softmax
 * cross-entropy, embedding lookup, bias).
 *
 * Same contract as kernels.h: plain functions over caller-owned float
 * buffers with the shapes in their comments, no allocation, OpenMP inside,
 * one caller per set of output buffers. Gradients named `d*` are
 * accumulated (+=) unless the comment says "overwrite". Quantized weights
 * are dequantized a tile at a time into caller scratch, each element once
 * per call, exactly as the forward does (QLoRA: the base stays quantized). */
#ifndef FL_TRAIN_KERN_H
#define FL_TRAIN_KERN_H
#include "kernels.h"

#include <stddef.h>
#include <stdint.h>

/* Like kern_parallel_always for these kernels (tests cover the threaded
 * paths on tiny shapes). Not thread-safe: call at start-up. */
void tk_parallel_always(int on);
/* Whether the vector loops (SwiGLU backward) are used: AVX2+FMA, on by
 * default when the CPU has them, or NEON, always there in aarch64 builds;
 * 0 forces the portable loops (tests run both). Returns the previous
 * setting; asking for 1 where neither exists leaves it off. */
int tk_use_avx2(int on);

/* LoRA forward of one projection:
 *   u [N, r] = x [N, in] (row stride ld_x) @ A [r, in]^T      (overwrite)
 *   out [N, O] (ld_out) += s * u @ B [O, r]^T
 * With B == 0 out is unchanged bit for bit. */
void tk_lora_forward(float *out, int ld_out, const float *x, int ld_x, const float *A,
                     const float *B, int r, int in, int O, float s, int N, float *u);

/* LoRA backward of one projection, given dy [N, O] (ld_dy), the input
 * x [N, in] (ld_x) and u = x A^T [N, r] from the forward:
 *   dB [O, r]  += s * dy^T u        (dB NULL: B not trained)
 *   du [N, r]   = s * dy B          (caller scratch, overwrite)
 *   dA [r, in] += du^T x            (dA NULL: A frozen, FFA-LoRA)
 *   dx [N, in] (ld_dx) += du A      (dx NULL: input gradient not needed) */
void tk_lora_backward(float *dx, int ld_dx, float *dA, float *dB, float *du, const float *dy,
                      int ld_dy, const float *x, int ld_x, const float *u, const float *A,
                      const float *B, int r, int in, int O, float s, int N);

/* Floats of scratch tk_matmul_dx needs for weights of up to max_cols columns
 * in a non-F32 type on nthreads threads (F32 needs none). */
size_t tk_matmul_dx_scratch(int max_cols, int nthreads);

/* dx [N, I] (ld_dx) = dy [N, O] (ld_dy) @ W [O, I]; with accumulate, +=.
 * Threads split the I columns (block-aligned for quantized types); a
 * non-F32 W is dequantized in tiles of rows of each thread's column slice,
 * each element once per call. FL_EINVAL when the scratch is too small
 * (non-F32), FL_EUNSUPPORTED for a type without a dequantizer. dx must not
 * alias dy. */
int tk_matmul_dx(float *dx, int ld_dx, const float *dy, int ld_dy, const kern_mat *W, int N,
                 int accumulate, float *scratch, size_t scratch_n);

/* dW [O, I] += dy [N, O]^T (ld_dy) @ x [N, I] (ld_x)   (full training, f32). */
void tk_matmul_dw(float *dW, const float *dy, int ld_dy, const float *x, int ld_x, int N, int O,
                  int In);

/* db [O] += sum over n of dy [n, :] (ld_dy). */
void tk_bias_bwd(float *db, const float *dy, int ld_dy, int N, int O);

/* Backward of out = x * rstd * w (kern_rmsnorm), rstd [N] from the forward:
 *   dx [N, C] (+)= rstd * (dout * w) - x * rstd^3 / C * sum_i(dout_i w_i x_i)
 *   dw [C] += sum_n dout * x * rstd          (dw NULL: not needed)
 * accumulate 0 overwrites dx. dx must not alias dout or x. */
void tk_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                    const float *rstd, int N, int C, int accumulate);

/* Backward of kern_rope in place on dx [N, nh, hd] (row stride ld): the
 * transpose of the rotation, i.e. a rotation by the negative angle. */
void tk_rope_bwd(float *dx, int ld, const int32_t *pos, int N, int nh, int hd, int n_rot,
                 float freq_base, int mode);
/* The same for kern_rope_ff (ff [n_rot/2] or NULL). */
void tk_rope_bwd_ff(float *dx, int ld, const int32_t *pos, int N, int nh, int hd, int n_rot,
                    float freq_base, int mode, const float *ff);

/* Backward of out = silu(gate) * up (overwrite):
 *   dgate = dh * up * sig(g) * (1 + g * (1 - sig(g))),  dup = dh * silu(g)
 * dgate and dup are distinct from each other; either may alias dh. */
void tk_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                   size_t n);

/* Floats of scratch tk_attention_bwd needs for sequences of T tokens,
 * nh query heads of hd dims, N = B*T rows, on nthreads threads. */
size_t tk_attention_bwd_scratch(int B, int T, int NH, int NKV, int hd, int nthreads);

/* Backward of kern_attention over a full forward (pos0 = 0, Tq = Tk = T):
 * given dout [B, T, NH*hd] (s->out_ld) and the forward's q, k, v and att,
 * writes (overwrite) dq [B, T, NH*hd] (row stride s->q_ld) and dk, dv
 * [B, T, NKV*hd] (row stride s->kv_ld), summing the query heads that share
 * a KV head. Per (sequence, head), in chunks of 64 queries that see the
 * keys up to the chunk's end (the causal part, as the forward):
 *   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
 *   dQ = scale * dS K,  dK += scale * dS^T Q,  scale = 1/sqrt(hd). */
void tk_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                      const float *k, const float *v, const float *att, const kern_attn *s,
                      float *scratch, size_t scratch_n);

/* In place over logits [N, V]: row n becomes (softmax(row) - onehot(t_n)) *
 * scale for targets t_n >= 0 and zero for t_n < 0 (the gradient of
 * scale * sum of the counted rows' cross-entropies). */
void tk_crossentropy_bwd(float *logits, const int32_t *targets, int N, int V, float scale);

/* dE [V, C] rows tokens[n] += dx [n, :] (N rows of C). */
void tk_embed_bwd(float *dE, const int32_t *tokens, const float *dx, int N, int C);

#endif
