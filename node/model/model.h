/* model — Llama-family decoder (architectures `llama`, `qwen2`, `qwen3`): weights
 * from a GGUF file (mmapped, kept in their stored type) or from memory,
 * batched forward over [B, T] token ids to logits and mean cross-entropy,
 * and incremental decoding with a KV cache.
 *
 * Memory, llm.c style: the weights are views (kern_mat) into the mapping or
 * the caller's buffers; the small 1-D parameters (norms, biases) are copied
 * once to f32; all activations of a forward pass live in one arena sized
 * once for [B, T] (model_prepare) and are laid out below; the KV cache and
 * its own small activation arena are a second allocation (model_cache_alloc).
 *
 * Threads: a model is used by one thread at a time; the kernels inside use
 * OpenMP (kern_set_threads). */
#ifndef FL_MODEL_H
#define FL_MODEL_H
#include "gguf.h"
#include "kernels.h"

#include <stddef.h>
#include <stdint.h>

enum model_arch { MODEL_ARCH_LLAMA = 0, MODEL_ARCH_QWEN2 = 1, MODEL_ARCH_QWEN3 = 2 };

/* Caps on shapes accepted from files (bigger is refused, not allocated). */
#define MODEL_MAX_DIM      65536
#define MODEL_MAX_LAYERS   512
#define MODEL_MAX_HEADS    1024
#define MODEL_MAX_HEAD_DIM 1024
#define MODEL_MAX_VOCAB    1048576
#define MODEL_MAX_CTX      1048576

typedef struct model_config {
	int arch;        /* enum model_arch */
	int dim;         /* C: embedding_length */
	int n_layers;    /* L: block_count */
	int n_heads;     /* NH: attention.head_count */
	int n_kv_heads;  /* NKV: attention.head_count_kv (NH % NKV == 0) */
	int head_dim;    /* hd: attention.key_length, else C / NH (NH*hd may differ from C) */
	int ffn_dim;     /* F: feed_forward_length */
	int vocab;       /* V: rows of token_embd */
	int ctx;         /* context_length: the longest position we accept */
	int n_rot;       /* rope.dimension_count (default hd) */
	int rope_mode;   /* enum kern_rope_mode: NORM for llama, NEOX for qwen2/qwen3 */
	float rope_base; /* rope.freq_base (default 10000) */
	float norm_eps;  /* attention.layer_norm_rms_epsilon (default 1e-5) */
} model_config;

/* One decoder block's parameters. Shapes as [out, in]. */
typedef struct model_layer {
	const float *attn_norm;    /* [C] */
	kern_mat wq;               /* [NH*hd, C] */
	kern_mat wk, wv;           /* [NKV*hd, C] */
	const float *bq, *bk, *bv; /* [NH*hd], [NKV*hd], [NKV*hd]; qwen2 only, else NULL */
	const float *q_norm;       /* [hd] per-head RMSNorm of q, k before RoPE; */
	const float *k_norm;       /* qwen3 only (required there), else NULL */
	kern_mat wo;               /* [C, NH*hd] */
	const float *ffn_norm;     /* [C] */
	kern_mat w_gate, w_up;     /* [F, C] */
	kern_mat w_down;           /* [C, F] */
} model_layer;

typedef struct model_weights {
	kern_mat tok_embd;        /* [V, C] */
	model_layer *layers;      /* [L] */
	const float *output_norm; /* [C] */
	kern_mat output;          /* [V, C]; a copy of tok_embd when tied */
	int tied;                 /* 1 when output is the embedding table */
	/* RoPE frequency factors [n_rot/2] (rope_freqs.weight of Llama 3.x, or
	 * linear scaling folded in), pair i turning at base^(-2i/n_rot)/ff[i];
	 * NULL: none. */
	const float *rope_ff;
} model_weights;

typedef struct model model;

/* "llama", "qwen2", "qwen3" (the GGUF general.architecture), "?" otherwise. */
const char *model_arch_name(int arch);

/* Checks a configuration (positive sizes within the caps, NH % NKV == 0,
 * C == NH*hd, n_rot even and <= hd, finite positive eps/base). FL_EINVAL. */
int model_config_check(const model_config *c);

/* Loads a GGUF file (general.architecture llama, qwen2 or qwen3):
 * hyper-parameters from `<arch>.*` metadata, tensors by their standard names,
 * tied output when output.weight is absent, RoPE frequency factors from
 * rope_freqs.weight and/or `<arch>.rope.scaling.type` linear (other scaling
 * types are refused by name). Matrices stay in the mapping in their stored type;
 * 1-D tensors are converted to f32 copies. On failure returns FL_EFORMAT
 * (missing/invalid key or tensor, wrong shape), FL_EUNSUPPORTED (another
 * architecture or tensor type), FL_EIO, FL_ENOMEM, and writes a one-line
 * message naming what is wrong into err (or logs it when err is NULL). */
int model_load(const char *path, model **out, char *err, size_t errlen);

/* Builds a model over weights the caller keeps alive for the model's life
 * (the struct is copied, the layers array too; the pointed-to data is not).
 * Shapes are checked against cfg. */
int model_new_from_weights(const model_config *cfg, const model_weights *w, model **out);

void model_free(model *m);

const model_config *model_cfg(const model *m);
const model_weights *model_wts(const model *m);
/* The loaded GGUF reader (owned by the model), NULL for in-memory models;
 * the tokenizer and other readers of metadata use it. */
const gguf *model_gguf(const model *m);

/* Total parameter count (elements of all tensors; tied output counted once). */
size_t model_param_count(const model *m);
/* Floating-point operations of one forward pass over [B, T] (matmuls only,
 * 2 flops per multiply-add; attention score and value products over the
 * causal half included). */
double model_forward_flops(const model_config *c, int B, int T);

/* Optional per-phase timing of forward passes (benchmarks, tuning): while a
 * profile is attached, every model_forward/model_decode adds its seconds and
 * flops here. Detach with NULL. */
typedef struct model_prof {
	double t_matmul, t_attn, t_other; /* seconds */
	double t_lora;                    /* seconds in LoRA terms (model_set_lora) */
	double f_matmul, f_attn;          /* flops (2 per multiply-add) */
	long passes;
} model_prof;
void model_set_prof(model *m, model_prof *p);

/* LoRA on the seven projections of every layer (docs/TRAINING.md):
 *   y = W x (+ bias) + scale * B (A x),   A [rank, in], B [out, rank]
 * Targets, in this order (index t of a[l * MODEL_LORA_NT + t]): attn_q,
 * attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down. The LoRA term of
 * q and k is added before RoPE (it is part of the projection). */
#define MODEL_LORA_NT 7
typedef struct model_lora {
	int rank;    /* r >= 1 */
	float scale; /* s: alpha / r, or alpha / sqrt(r) (rsLoRA) */
	/* [L * MODEL_LORA_NT] each; a NULL pair leaves that projection alone */
	const float *const *a; /* A [rank, in] */
	const float *const *b; /* B [out, rank] */
	/* Optional [L * MODEL_LORA_NT]: when u[i] is non-NULL, model_forward
	 * keeps u = x A^T [N, rank] of that projection there (N = B*T of the
	 * call) for the backward pass. NULL: not kept. */
	float *const *u;
} model_lora;

/* Attaches LoRA to every following forward and decode; NULL detaches. The
 * struct is copied; the arrays and the tensors they point to must stay
 * valid (and u buffers large enough for the prepared [B, T]) while
 * attached. FL_EINVAL for rank < 1 or a non-finite scale, FL_ENOMEM. */
int model_set_lora(model *m, const model_lora *lo);
/* The attached LoRA or NULL. */
const model_lora *model_get_lora(const model *m);
/* In/out width of LoRA target t (0..MODEL_LORA_NT-1) under config c. */
void model_lora_dims(const model_config *c, int t, int *in, int *out);

/* The part of attention between projection and scores, shared by the
 * forward and the export calibration pass: q [N, NH*hd] and k [N, NKV*hd]
 * (projections incl. bias and LoRA) get the per-head RMSNorm of y when it
 * has one (qwen3; then qraw/kraw, if non-NULL, keep the inputs and
 * qrstd/krstd [N*NH]/[N*NKV] the 1/rms), then RoPE at positions pos [N]
 * with the model's frequency factors. */
void model_qk_prep(const model_config *c, const model_weights *w, const model_layer *y, float *q,
                   float *k, const int32_t *pos, int N, float *qraw, float *qrstd, float *kraw,
                   float *krstd);

/* Flags for model_prepare. */
enum {
	MODEL_KEEP_ACTS = 1, /* keep every layer's activations (backward pass) */
	/* activation checkpointing for the backward pass (instead of KEEP_ACTS):
	 * keep only each layer's output res2 [L, N, C]; the other activations
	 * live in one shared slot and grad_backward recomputes a layer's
	 * (model_recompute_layer) before its gradient. Activation memory drops
	 * from about L*(6C + 2QD + 2KVD + 3F + NH*T) floats per token to L*C plus
	 * one layer's set, for one more forward pass of the blocks per step. */
	MODEL_CHECKPOINT = 2,
};

/* Sizes the forward arena for batches up to [B, T] (T <= ctx). Replaces an
 * earlier arena. Without MODEL_KEEP_ACTS the layers share one set of
 * per-layer buffers (inference). FL_ENOMEM, FL_EINVAL, FL_EOVERFLOW. */
int model_prepare(model *m, int B, int T, int flags);
/* Bytes of the forward arena (0 before model_prepare). */
size_t model_arena_bytes(const model *m);

/* Forward over tokens [B, T] (B, T within the prepared arena), positions
 * 0..T-1 in every sequence. Logits [B, T, V] stay in the arena
 * (model_logits). If targets [B, T] is non-NULL, *loss gets the mean
 * cross-entropy over targets >= 0 (targets < 0 are ignored; NAN when none
 * counts). Token or target ids >= V -> FL_EINVAL (nothing computed). */
int model_forward(model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                  float *loss);
/* Logits [B, T, V] of the last model_forward. */
const float *model_logits(const model *m);
/* Per-position losses [B, T] of the last model_forward with targets. */
const float *model_losses(const model *m);

/* Activation arena layout, exposed for the backward pass. Per-layer pointers
 * are `base + l * layer_stride` (stride 0 without MODEL_KEEP_ACTS). N = B*T
 * of the prepared arena. */
typedef struct model_acts {
	int B, T;        /* current batch shape (<= prepared) */
	float *encoded;  /* [N, C] token embeddings */
	float *ln1;      /* [L, N, C] attn RMSNorm output */
	float *ln1_rstd; /* [L, N] */
	float *q;        /* [L, N, NH*hd] after bias (qk-norm) and RoPE */
	float *k;        /* [L, N, NKV*hd] after bias (qk-norm) and RoPE */
	float *qraw;     /* [L, N, NH*hd] q before its per-head norm (qwen3 only) */
	float *kraw;     /* [L, N, NKV*hd] */
	float *qrstd;    /* [L, N*NH] per-head 1/rms of q (qwen3 only) */
	float *krstd;    /* [L, N*NKV] */
	float *v;        /* [L, N, NKV*hd] */
	float *att;      /* [L, B, NH, T, T] softmax probabilities */
	float *atty;     /* [L, N, NH*hd] attention output */
	float *res1;     /* [L, N, C] residual after attention */
	float *ln2;      /* [L, N, C] ffn RMSNorm output */
	float *ln2_rstd; /* [L, N] */
	float *gate;     /* [L, N, F] pre-activation */
	float *up;       /* [L, N, F] */
	float *hmid;     /* [L, N, F] silu(gate) * up */
	float *res2;     /* [L, N, C] residual after the block (stride_res) */
	float *lnf;      /* [N, C] */
	float *lnf_rstd; /* [N] */
	float *logits;   /* [N, V] */
	float *losses;   /* [N] */
	int32_t *pos;    /* [N] positions */
	size_t stride_C, stride_N, stride_QD, stride_KVD, stride_att, stride_F; /* per-layer */
	size_t stride_qr, stride_kr, stride_qn, stride_kn; /* qraw, kraw, qrstd, krstd (qwen3) */
	size_t stride_res; /* res2's per-layer stride (also set when checkpointing) */
	int ckpt;          /* prepared with MODEL_CHECKPOINT */
} model_acts;
const model_acts *model_get_acts(const model *m);

/* Checkpointed arena: recomputes layer l's activations (into the shared
 * slot) from its stored input, for the batch of the last model_forward,
 * LoRA u kept as the forward keeps it. FL_EINVAL without MODEL_CHECKPOINT
 * or a forward. */
int model_recompute_layer(model *m, int l);

/* Allocates the KV cache for incremental decoding of B sequences of up to
 * max_T tokens (<= ctx), processed in steps of up to chunk tokens per
 * model_decode call. The model owns it (model_free frees it); it replaces
 * an earlier cache. (Was model_cache_init: an _init does not allocate.) */
int model_cache_alloc(model *m, int B, int max_T, int chunk);
/* Drops the cached positions (keeps the allocation). */
void model_cache_reset(model *m);
/* Tokens already in the cache (the position of the next one). */
int model_cache_pos(const model *m);
/* Appends tokens [B, Tn] (Tn <= chunk, pos + Tn <= max_T) to every sequence
 * and computes their logits [B, Tn, V] into *logits (valid until the next
 * call). FL_EINVAL for bad ids or shapes, FL_ETOOBIG when the cache is full. */
int model_decode(model *m, const int32_t *tokens, int B, int Tn, const float **logits);

#endif
