/* trainer_synth — a deterministic stand-in trainer for protocol tests and
 * large simulations: the same adapter layout as LoRA on the base model, and
 * a real (small) learning problem instead of a language model.
 *
 * For every adapted weight W [out, in] the node holds private samples
 * (x, y = M x) with x ~ N(0, I) and M = M_fed + M_site: M_fed is a random
 * rank-r map shared by the federation (drawn from the LoRA init_seed), M_site
 * a smaller site-specific map drawn from the node's seed (non-IID). The model
 * is the adapter itself, y_hat = s·B·A·x, the loss the mean over samples and
 * adapted weights of ||y_hat - y||^2 / out; training is minibatch SGD with
 * the round's lr, batch, steps, clipping and FedProx term; FFA-LoRA leaves
 * A untouched. Everything is seeded, so a node's result is a pure function
 * of (global adapter, round parameters, node seed).
 *
 * Layout: with spec.model_path, every blk.N.<target>.weight of the GGUF
 * gives lora_a [r, in] and lora_b [out, r]; without it, 2 layers of 32x32
 * weights. Sample count: 256 + 128 * (seed % 4) training samples, 128
 * held-out samples. */
#ifndef FL_TRAINER_SYNTH_H
#define FL_TRAINER_SYNTH_H
#include "trainer_iface.h"

extern const ntr_ops ntr_synth_ops;

#endif
