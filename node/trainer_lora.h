/* trainer_lora — the "lora" trainer of the federation client: LoRA / QLoRA
 * training of the GGUF base model on the node's private data, through the
 * engine's training API (train.h, dataset.h).
 *
 * open: loads the base (model.path; model.base_quant none|q8_0|q4_0
 * quantizes at load), its tokenizer, the training data (data.train, text or
 * JSONL, see dataset.h) and the held-out data (data.eval, or
 * data.eval_fraction of data.train). The trainer's buffers are sized for
 * the round's [batch, ctx] on the first round that asks for them (capped by
 * data.max_batch / data.max_ctx and the model's context_length) and kept
 * while later rounds fit.
 * train: local = global, then TrainParams.local_steps AdamW steps (lr,
 * batch_size, ctx, weight_decay, max_grad_norm, fedprox_mu with global as
 * the anchor), data order from (round seed, node seed). FFA-LoRA leaves
 * lora_a bit-identical.
 * eval: mean NLL per target token of the held-out windows (ctx of the last
 * round, or min(256, max_ctx) before any), at most data.eval_max_tokens.
 * sample_count: the training tokens that carry loss.
 *
 * Threads: as trainer_iface.h (everything on the training thread; open may
 * run on another thread before the training thread starts). */
#ifndef FL_TRAINER_LORA_H
#define FL_TRAINER_LORA_H
#include "trainer_iface.h"

extern const ntr_ops ntr_lora_ops;

#endif
