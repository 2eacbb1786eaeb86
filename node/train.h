/* train — local training on the node: LoRA / QLoRA adapters over a frozen
 * base, or every weight of an F32 base (full training), on a tokenized
 * dataset (dataset.h), with AdamW (optim.h), and the held-out loss.
 * docs/TRAINING.md describes the whole pipeline.
 *
 * Two objects:
 *   trn_base  the base model as training holds it: the GGUF file mapped
 *             (weights used in place), or its matrices quantized to Q8_0/Q4_0
 *             at load (QLoRA --base-quant; the file's pages are released), or
 *             all of it converted to one writable F32 blob (full training).
 *   trainer   the activation arena, gradient workspace, adapter buffers,
 *             optimiser state and batch buffers for batches up to
 *             [max_batch, max_ctx]; everything is allocated in trn_new, a
 *             training step allocates nothing.
 *
 * A step: for `accum` micro-batches of `batch` windows (dataset packing)
 * forward + backward with the loss scaled by 1/accum, so the step's
 * gradient is the mean of the micro-batches' mean-token gradients; then
 * AdamW at the schedule's lr. The step loss reported is the mean of the
 * micro-batch losses. The window order is a seeded permutation per epoch
 * (seed, epoch), continuing across epochs without a gap; the same seed,
 * data, thread count and hyper-parameters give bit-identical results.
 *
 * Threads: a trainer and its base belong to the thread that created them
 * (the kernels use OpenMP inside). */
#ifndef FL_TRAIN_H
#define FL_TRAIN_H
#include "dataset.h"
#include "gguf.h"
#include "model/adapter.h"
#include "model/grad.h"
#include "model/model.h"
#include "tensor.h"

#include <stddef.h>
#include <stdint.h>

typedef struct trn_base trn_base;

/* Loads path. quant: NULL or "none" (weights as stored), "q8_0" / "q4_0"
 * (F32/F16/BF16 matrices quantized at load; already quantized ones kept).
 * full: every parameter converted to a writable F32 blob (quant must be
 * none). Errors come with a sentence in err naming the file or tensor. */
int trn_base_load(const char *path, const char *quant, int full, trn_base **out, char *err,
                  size_t errlen);
void trn_base_free(trn_base *b);
/* The model to train / evaluate / generate with. */
model *trn_base_model(trn_base *b);
/* The file's GGUF reader (metadata, tokenizer, exports). */
const gguf *trn_base_gguf(const trn_base *b);
/* Bytes of the weight matrices as held in memory (mapped or converted). */
size_t trn_base_weight_bytes(const trn_base *b);
/* "F32", "Q8_0", "mixed" ...: the type of the projection matrices. */
const char *trn_base_type_name(const trn_base *b);
/* Full training: writes the current weights as an F32 GGUF with every
 * metadata key of the source (general.file_type = 0) and the source's
 * tensor order; atomic. FL_ESTATE unless loaded with full. */
int trn_base_save_gguf(const trn_base *b, const char *path, char *err, size_t errlen);

typedef struct trn_opts {
	int full;       /* train the base's weights (base loaded with full) */
	lora_spec lora; /* adapter (ignored with full) */
	int max_batch;  /* windows per micro-batch, >= 1 */
	int max_ctx;    /* tokens per window, 2..context_length */
	int threads;    /* 0: OpenMP default */
	int checkpoint; /* activation checkpointing (MODEL_CHECKPOINT) */
} trn_opts;

typedef struct trn_hparams {
	long steps; /* optimiser steps */
	float lr;
	int sched;          /* OPTIM_CONSTANT / OPTIM_COSINE */
	long warmup;        /* warmup steps */
	float min_lr_ratio; /* cosine floor / lr */
	int batch, accum, ctx;
	float weight_decay, max_grad_norm, prox_mu;
	float beta1, beta2, eps;
	uint64_t seed; /* data order */
	/* LoRA only: when not NULL, the first step's adapter gradients (of the
	 * mean loss per target over the step's batch and accumulation, before
	 * clipping, weight decay or the FedProx term) are written here as a
	 * safetensors file with the canonical names (blk.N.<target>.lora_a/b),
	 * F32, metadata fedlora.grads.{step,loss,grad_norm}. */
	const char *dump_grads;
	/* LoRA only: > 0 and below the adapter's rank: only rank slots
	 * 0..train_rank-1 (rows of lora_a, columns of lora_b) are trained; the
	 * other slots keep the adapter's values bit for bit (their gradients
	 * are zeroed before clipping, and weight decay is undone), while the
	 * forward pass uses every slot (docs/TRAINING.md, "Per-node rank"). */
	int train_rank;
} trn_hparams;

/* Defaults: 100 steps, lr 1e-3 constant, batch 4, accum 1, ctx 256,
 * wd 0, clip 1, mu 0, betas 0.9/0.999, eps 1e-8, seed 1. */
trn_hparams trn_defaults(void);

typedef struct trn_metrics {
	double first_loss; /* loss of the first step */
	double last_loss;  /* loss of the last step */
	double tail_loss;  /* mean loss of the last min(10, steps) steps */
	double grad_norm;  /* last step's global gradient norm (before clipping) */
	long steps;
	uint64_t tokens;  /* input positions processed (batch * ctx per micro-batch) */
	uint64_t targets; /* counted target tokens */
	double seconds;
} trn_metrics;

typedef struct trn_progress {
	long step, total; /* steps done (1-based) and planned */
	double loss, lr, grad_norm;
	uint64_t tokens;
	double seconds;
} trn_progress;
/* Called after every step (train) or batch (eval, step = windows done);
 * non-zero stops the call with FL_EINTR. */
typedef int (*trn_progress_fn)(void *arg, const trn_progress *p);

typedef struct trainer trainer;

/* Everything for batches up to [max_batch, max_ctx] of base b (which must
 * outlive the trainer). FL_EINVAL with a sentence in err for bad options
 * (a full trainer on a base not loaded with full, ctx beyond the model's),
 * FL_ENOMEM / FL_ETOOBIG for memory. */
int trn_new(trn_base *b, const trn_opts *o, trainer **out, char *err, size_t errlen);
void trn_free(trainer *t);
/* Bytes of the trainer's own buffers (arena, workspace, adapter, moments). */
size_t trn_bytes(const trainer *t);

/* Optional per-phase timing (benchmarks): every following forward adds to
 * fp and every backward to gp (either may be NULL: detached). */
void trn_set_prof(trainer *t, model_prof *fp, grad_prof *gp);

/* A zero adapter / the initial adapter (PEFT init, seed) of the trainer's
 * spec. */
int trn_adapter_layout(const trainer *t, tset **out);
int trn_adapter_init(const trainer *t, uint64_t seed, tset **out);

/* Trains hp->steps steps on data. LoRA: adapter (the spec's layout) is the
 * starting point and receives the result; global (same layout, may be NULL)
 * is the FedProx anchor (the term is off without it). Full: adapter and
 * global must be NULL; the base's weights change in place. The optimiser
 * state starts fresh on every call. On any error (FL_EINTR when cb asked
 * to stop, FL_ENUMERIC for a non-finite loss or gradient) adapter is left
 * as it was. mt (may be NULL) gets the metrics. */
int trn_train(trainer *t, tset *adapter, const tset *global, const ds *data, const trn_hparams *hp,
              trn_metrics *mt, trn_progress_fn cb, void *arg, char *err, size_t errlen);

/* Mean NLL per target token of the model with adapter (NULL: none / full
 * training) over data's windows of ctx tokens, batch windows at a time,
 * stopping after the window that reaches max_targets counted targets
 * (0: all). *count gets the targets scored. */
int trn_eval(trainer *t, const tset *adapter, const ds *data, int ctx, int batch,
             uint64_t max_targets, double *nll, uint64_t *count, trn_progress_fn cb, void *arg);

/* An adapter file attached to a model for inference (eval, generate):
 * a PEFT directory, a GGUF LoRA adapter, or a safetensors file
 * (common/lora_fmt.h lfmt_load), checked against m's GGUF. alpha > 0 is
 * used when the file does not say (a canonical safetensors without
 * metadata); a contradicting value is refused. The adapter stays attached
 * (model_set_lora) until trn_adapter_close. desc gets "rank 8, alpha 16,
 * attn_q,attn_v" for messages. */
typedef struct trn_adapter trn_adapter;
int trn_adapter_open(model *m, const char *path, float alpha, trn_adapter **out, char *desc,
                     size_t desclen, char *err, size_t errlen);
void trn_adapter_close(model *m, trn_adapter *a);

/* Writes a trained adapter as PEFT (dir/adapter_model.safetensors with
 * Hugging Face names and q/k rows, dir/adapter_config.json) for the base
 * whose GGUF is g. */
int trn_adapter_save_peft(const tset *ad, const lora_spec *s, const gguf *g, const char *base_id,
                          const char *dir, char *err, size_t errlen);

/* The same for the weights being trained, from inside a progress callback
 * of trn_train (the adapter as trained so far, or the current weights in
 * full training); FL_ESTATE elsewhere. Does not disturb the training. */
int trn_eval_live(trainer *t, const ds *data, int ctx, int batch, uint64_t max_targets, double *nll,
                  uint64_t *count);

/* Optimiser steps for `epochs` passes over data's windows at this batch
 * shape: ceil(epochs * windows / (batch * accum)), at least 1; 0 when the
 * data has no window with a target. */
long trn_steps_for_epochs(const ds *data, int ctx, int batch, int accum, double epochs);

#endif
