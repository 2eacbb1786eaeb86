/* trainer_iface — what the federation client needs from a local trainer.
 *
 * The client (node/client.c, node/run.c) never touches a model: it hands a
 * trainer the global adapter and the round's hyper-parameters and gets a
 * locally trained adapter back, and asks it for the held-out loss of an
 * adapter. A trainer is a small table of functions (ntr_ops) over an opaque
 * instance; ntr_find() returns one by name:
 *   "lora"  — LoRA/QLoRA training of the GGUF base model on the node's
 *             private text (node/trainer_lora.c, over the engine's API);
 *   "synth" — a small, deterministic least-squares problem over the same
 *             adapter layout (node/trainer_synth.c), for protocol tests and
 *             simulations that need many nodes and no language model.
 *
 * Threads: an instance belongs to the training thread that opened it; every
 * function except the spec helpers is called from that thread only. train
 * and eval call the progress callback between steps; a non-zero return
 * stops them with FL_EINTR (this is how the network thread cancels work).
 *
 * The adapter spec, its wire form (LoraSpec) and the tensor names are
 * common/lora's. */
#ifndef FL_TRAINER_IFACE_H
#define FL_TRAINER_IFACE_H
#include <stddef.h>
#include <stdint.h>

#include "fedlora.pb-c.h"
#include "lora.h"
#include "tensor.h"

/* What a trainer needs to set itself up. Strings must outlive open(). */
typedef struct ntr_spec {
	const char *model_path; /* base GGUF (synth: optional, gives the layout) */
	const char *train_path; /* private training data */
	const char *eval_path;  /* private held-out data; NULL: eval_fraction of train */
	double eval_fraction;   /* used when eval_path is NULL */
	lora_spec lora;         /* the adapter spec the node is configured with */
	const char *base_quant; /* "none", "q8_0", "q4_0" (QLoRA) */
	int threads;            /* compute threads; 0 = library default */
	uint32_t max_ctx;       /* caps on what a round may ask for (memory bound) */
	uint32_t max_batch;
	uint32_t max_steps;
	uint64_t eval_max_tokens; /* held-out evaluation budget (0 = all) */
	uint64_t seed;            /* node-local seed (data order), mixed with the round's */
} ntr_spec;

/* Outcome of one local round. */
typedef struct ntr_result {
	double first_loss; /* training loss of the first step */
	double train_loss; /* mean training loss of the last steps */
	uint64_t steps;
	uint64_t tokens;  /* tokens (or synthetic samples) seen */
	uint64_t samples; /* distinct training samples available (FedAvg weight) */
	double seconds;
} ntr_result;

typedef int (*ntr_progress_fn)(void *arg, uint32_t step, uint32_t total, double loss);

typedef struct ntr_ops {
	const char *name;
	/* Loads the model and the private data. err gets a sentence on
	 * failure (FL_ENOENT, FL_EFORMAT, FL_ECONFIG, ...). */
	int (*open)(const ntr_spec *spec, void **self, char *err, size_t errlen);
	void (*close)(void *self);
	/* A new all-zero set with the adapter layout this trainer trains
	 * (names and shapes); its shape fingerprint goes into Join. */
	int (*layout)(void *self, tset **out);
	/* Training samples (FedAvg weight), > 0. */
	uint64_t (*sample_count)(void *self);
	/* Trains from `global` for p->local_steps steps and writes the result
	 * into `local` (same layout as global; the caller allocated it).
	 * With spec.lora.ffa the lora_a tensors of local equal global's bit
	 * for bit. FL_EINTR when the callback asked to stop. */
	int (*train)(void *self, const tset *global, const Fedlora__TrainParams *p, tset *local,
	             ntr_result *res, ntr_progress_fn cb, void *arg);
	/* Mean held-out loss of `adapter`. */
	int (*eval)(void *self, const tset *adapter, double *loss, ntr_progress_fn cb, void *arg);
} ntr_ops;

/* Trainer by name ("lora", "synth"); NULL when unknown. */
const ntr_ops *ntr_find(const char *name);
/* "lora|synth" for help texts. */
const char *ntr_names(void);

#endif
