/* grad — the backward pass of the whole decoder: from the mean
 * cross-entropy of the last model_forward back to the LoRA parameters
 * and, in full-training mode, to every base weight.
 *
 * Use: model_prepare(m, B, T, MODEL_KEEP_ACTS); attach LoRA with u buffers
 * (model_set_lora) when training adapters; model_forward(m, tokens,
 * targets, ...); grad_backward(...) with the same tokens and targets. The
 * backward overwrites the logits in the arena with their gradient. All
 * gradients are accumulated (+=) so micro-batches add up; the caller zeroes
 * them at the start of a step.
 *
 * The workspace holds the gradient buffers of one layer's activations
 * (shared by all layers, llm.c style) and the scratch of the kernels; one
 * allocation sized once for [B, T]. One thread uses a workspace at a time;
 * the kernels use OpenMP. */
#ifndef FL_GRAD_H
#define FL_GRAD_H
#include "model.h"

#include <stddef.h>
#include <stdint.h>

/* Gradients of the base weights (full training), f32, shapes as the
 * weights: any NULL pointer is not computed. */
typedef struct grad_layer {
	float *attn_norm;     /* [C] */
	float *wq, *wk, *wv;  /* [QD, C], [KVD, C], [KVD, C] */
	float *bq, *bk, *bv;  /* [QD], [KVD], [KVD] (models with QKV bias) */
	float *q_norm;        /* [hd] (qwen3) */
	float *k_norm;        /* [hd] (qwen3) */
	float *wo;            /* [C, QD] */
	float *ffn_norm;      /* [C] */
	float *w_gate, *w_up; /* [F, C] */
	float *w_down;        /* [C, F] */
} grad_layer;

typedef struct grad_weights {
	float *tok_embd;    /* [V, C]; also receives the output gradient when tied */
	float *output;      /* [V, C]; ignored when tied */
	float *output_norm; /* [C] */
	grad_layer *layers; /* [L] */
} grad_weights;

/* Gradients of the attached LoRA: [L * MODEL_LORA_NT] arrays indexed like
 * model_lora.a/b; a NULL entry (or a NULL array) is not computed (FFA-LoRA
 * passes da = NULL: A frozen). */
typedef struct grad_lora {
	float *const *da; /* dA [rank, in] */
	float *const *db; /* dB [out, rank] */
} grad_lora;

typedef struct grad_ws grad_ws;

/* Workspace for batches up to [B, T] of model m (rank: the largest LoRA rank
 * used, 0 without LoRA). FL_EINVAL, FL_ENOMEM, FL_ETOOBIG. */
int grad_ws_new(const model *m, int B, int T, int rank, grad_ws **out);
void grad_ws_free(grad_ws *ws);
size_t grad_ws_bytes(const grad_ws *ws);

/* Backward of loss_scale * mean cross-entropy (over targets >= 0) of the
 * last model_forward of m over [B, T] tokens/targets (the same arrays).
 * lg: LoRA gradients (the model's attached LoRA must have kept u for every
 * projection that lg asks a gradient for, and for every adapted projection
 * when gw is given); gw: base-weight gradients (F32 weights only — the
 * product dW needs no W, but full training is meant for F32 models).
 * Either may be NULL. Returns FL_EINVAL for shapes beyond the workspace or
 * the arena, a missing u, or when the arena does not keep activations;
 * FL_ENUMERIC when no target counts. *n_counted (may be NULL) gets the
 * number of counted targets. */
int grad_backward(grad_ws *ws, model *m, const int32_t *tokens, const int32_t *targets, int B,
                  int T, float loss_scale, const grad_lora *lg, const grad_weights *gw,
                  int *n_counted);

/* Floating-point operations of one backward over [B, T] (2 per
 * multiply-add): the input gradient of every projection and the output
 * layer, attention over its causal chunks, and with full the weight
 * gradients; without full, layer 0's q/k/v input gradients are left out
 * (the pass stops there when layer 0 is adapted). LoRA terms excluded. */
double grad_backward_flops(const model_config *c, int B, int T, int full);

/* Optional timing (benchmarks): seconds inside the matrix products of the
 * backward and their flops. Detach with NULL. */
typedef struct grad_prof {
	double t_matmul, t_attn, t_lora, t_other;
	double t_recompute; /* checkpointing: layers recomputed (part of t_other) */
	double f_matmul;
	long passes;
} grad_prof;
void grad_set_prof(grad_ws *ws, grad_prof *p);

#endif
