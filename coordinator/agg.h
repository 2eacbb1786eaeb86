/* agg — aggregation of client deltas into one server step.
 *
 * One aggregator per federation. A round is agg_begin, then agg_add (or
 * agg_add_payload) once per accepted update, then agg_finish, which turns
 * what was added into the step to add to the global adapter and, for the
 * stateful strategies, advances the server optimiser (in shadow buffers:
 * agg_commit_state makes that permanent once the new version is on disk).
 *
 * Every update is checked (names, shapes, one tensor per exchanged name),
 * its L2 norm is measured over all its tensors in double, it is refused
 * above reject_norm, scaled down to clip_norm, and only then handed to the
 * strategy. FedAvg-family strategies stream: each update is decoded and
 * accumulated as it arrives (memory O(adapter)); trimmed mean and median
 * buffer every update (memory O(updates x adapter), capped).
 * docs/COORDINATOR.md describes each strategy and its parameters.
 *
 * Not thread-safe: one thread (the coordinator's aggregation worker) uses
 * an aggregator at a time. agg_finish runs OpenMP loops internally. */
#ifndef FL_AGG_H
#define FL_AGG_H
#include <stddef.h>
#include <stdint.h>

#include "qtensor.h"
#include "tensor.h"

enum agg_strategy {
	AGG_FEDAVG = 0,   /* sample-weighted mean of deltas */
	AGG_FEDAVGM,      /* FedAvg + server momentum */
	AGG_FEDADAM,      /* FedAvg mean as pseudo-gradient, Adam on the server */
	AGG_FEDYOGI,      /* same with Yogi's additive second moment */
	AGG_TRIMMED_MEAN, /* coordinate-wise trimmed mean (buffering) */
	AGG_MEDIAN,       /* coordinate-wise median (buffering) */
};

enum agg_weighting {
	AGG_W_SAMPLES = 0, /* weight = min(sample_count, max_weight) */
	AGG_W_UNIFORM = 1, /* weight = 1 */
};

typedef struct agg_opts {
	enum agg_strategy strategy;
	enum agg_weighting weighting;
	double clip_norm;        /* per-update L2 bound; larger updates are scaled down; 0 = off */
	double reject_norm;      /* per-update L2 norm above which an update is refused; 0 = off */
	double server_lr;        /* eta: step = eta * (aggregate or optimiser output) */
	double momentum;         /* FedAvgM beta */
	double beta1;            /* FedAdam/FedYogi first moment */
	double beta2;            /* FedAdam/FedYogi second moment */
	double tau;              /* FedAdam/FedYogi adaptivity; v starts at tau^2 */
	double trim;             /* trimmed mean: fraction cut at each end, [0, 0.5) */
	uint64_t max_weight;     /* cap on one update's sample weight (>= 1) */
	size_t max_buffer_bytes; /* trimmed mean / median: cap on buffered updates */
	int ffa;                 /* FFA-LoRA: only *.lora_b tensors are exchanged */
	/* DP-FedAvg (central DP, docs/PRIVACY.md). dp_clip > 0 turns it on:
	 * every accepted update is scaled so that the L2 norm of what is added
	 * to the sum is at most dp_clip (enforced here, whatever the node did),
	 * weights are 1, Gaussian noise of standard deviation dp_noise_std is
	 * added to every coordinate of the sum, and the mean divides by the
	 * fixed dp_denom (expected updates per round) instead of the count. A
	 * round with no accepted update still yields noise / dp_denom.
	 * FedAvg-family strategies only (the server optimisers are
	 * post-processing of the noised mean). */
	double dp_clip;
	double dp_noise_std;
	double dp_denom;
} agg_opts;

/* FedAvg, sample weights, no clip, eta 1, momentum 0.9, beta1 0.9,
 * beta2 0.99, tau 1e-3, trim 0.1, max_weight 2^32, buffer cap 4 GiB. */
void agg_opts_default(agg_opts *o);
/* 0, or FL_EINVAL with a sentence in why naming the parameter. */
int agg_opts_check(const agg_opts *o, char *why, size_t whylen);

/* "fedavg" "fedavgm" "fedadam" "fedyogi" "trimmed_mean" "median". */
const char *agg_strategy_name(enum agg_strategy s);
int agg_strategy_parse(const char *s, enum agg_strategy *out);
/* Whether a strategy keeps every update of a round in memory. */
int agg_strategy_buffers(enum agg_strategy s);
/* Whether a canonical tensor name is exchanged under the ffa flag. */
int agg_name_exchanged(const char *name, int ffa);

typedef struct agg agg;

/* layout: the global adapter (names and shapes; values unused). The
 * aggregator keeps the exchanged subset (all tensors, or the lora_b ones
 * with ffa) and zero optimiser state. FL_EINVAL for bad options or an
 * empty exchanged set. */
int agg_new(const agg_opts *o, const tset *layout, agg **out);
void agg_free(agg *a); /* NULL ok */

/* The exchanged tensors (zeros): the names/shapes an update must carry. */
const tset *agg_layout(const agg *a);
const agg_opts *agg_get_opts(const agg *a);

/* DP noise from a ChaCha20 stream with this key instead of one seeded by
 * RAND_bytes (tests: reproducible noise). FL_EINVAL without dp_clip. */
int agg_set_noise_key(agg *a, const uint8_t key[32]);

/* Starts a round: forgets the updates of the previous one. */
void agg_begin(agg *a);

enum agg_verdict {
	AGG_ACCEPTED = 0,
	AGG_MALFORMED,  /* names, shapes or count wrong; sample_count 0 */
	AGG_NON_FINITE, /* NaN/Inf */
	AGG_NORM,       /* above reject_norm, or too large to aggregate safely */
	AGG_FULL,       /* buffering strategy: buffer cap reached */
};
const char *agg_verdict_name(enum agg_verdict v); /* "accepted", "malformed"... */

typedef struct agg_result {
	enum agg_verdict verdict;
	double norm;   /* L2 norm of the update as received (0 if not measured) */
	double scale;  /* clip factor applied (1 = unclipped) */
	double weight; /* weight given to it */
	char why[256]; /* sentence for refusals */
} agg_result;

/* Adds one update made of nq tensors that have passed qt_check (or come
 * from quant_encode). Returns 0 with res->verdict saying whether it was
 * accepted; on a refusal nothing is changed. Negative FL_E* only for
 * internal failures (FL_ENOMEM). */
int agg_add(agg *a, const qtensor *qs, size_t nq, uint64_t samples, agg_result *res);

struct Fedlora__AdapterPayload;
/* The same straight from a decoded Update's delta: checks kind (DELTA),
 * every QTensor (qt_view_proto: structure, caps, finiteness; no copy), then
 * agg_add. The payload's from/to versions are the caller's business. */
int agg_add_payload(agg *a, const struct Fedlora__AdapterPayload *p, uint64_t samples,
                    agg_result *res);

/* Per-node rank (rank slots; docs/TRAINING.md, "Per-node rank"). Slot j
 * of a rank-R layout is row j of every lora_a and column j of every
 * lora_b. An update of rank r < R carries only slots 0..r-1 (lora_a
 * [r, in], lora_b [out, r]); it is checked, clipped and weighted like any
 * other (its norm is the slice's), and once a round holds such an update
 * agg_finish takes the mean of each slot over the updates that carried it:
 *   step[slot j] = sum_{i: r_i > j} w_i s_i d_i[j] / sum_{i: r_i > j} w_i
 * (s_i the clip factor), and 0 for a slot no update carried. Rounds whose
 * updates are all full rank are computed exactly as before. Mean
 * strategies without central DP only: a smaller update under a buffering
 * strategy or dp_clip is refused (AGG_MALFORMED, why says so). */
/* The layout's rank R (0: the exchanged tensors are not a LoRA layout of
 * one rank; every update is then full). */
uint32_t agg_rank(const agg *a);
/* agg_add / agg_add_payload for an update of rank `rank` (0 or >= R: a
 * full update). */
int agg_add_rank(agg *a, const qtensor *qs, size_t nq, uint64_t samples, uint32_t rank,
                 agg_result *res);
int agg_add_payload_rank(agg *a, const struct Fedlora__AdapterPayload *p, uint64_t samples,
                         uint32_t rank, agg_result *res);
/* Weight sum of slot j this round (0 for j >= R). */
double agg_slot_weight(const agg *a, uint32_t slot);
/* Asynchronous aggregation (staleness): the same as agg_add_payload, but
 * the update enters the numerator of the mean with weight factor * w and
 * the denominator with w (w its sample or uniform weight), so that
 * agg_finish yields sum_i f_i w_i d_i / sum_i w_i: stale updates shrink
 * the step rather than only their share of it (FedBuff). res->weight is w.
 * factor in (0, 1]; mean strategies without dp_clip only (FL_EINVAL
 * otherwise, nothing added). */
int agg_add_payload_scaled(agg *a, const struct Fedlora__AdapterPayload *p, uint64_t samples,
                           double factor, agg_result *res);

/* Secure aggregation: the round's weighted sum sum_i w_i * update_i of
 * count updates arrives already summed (tensors named and shaped like
 * agg_layout) with wsum = sum_i w_i. Replaces whatever was added since
 * agg_begin; agg_finish then divides by wsum and runs the strategy. Mean
 * strategies only (FL_EINVAL for buffering ones or dp_clip); FL_EMISMATCH
 * for a wrong layout; FL_ENUMERIC for a non-finite value. */
int agg_set_sum(agg *a, const tset *sum, double wsum, size_t count);

/* Updates accepted since agg_begin, and the sum of their weights. */
size_t agg_count(const agg *a);
double agg_weight_sum(const agg *a);

/* Computes the server step into step (same layout as agg_layout): the
 * value to add to every exchanged tensor of the global adapter. The
 * optimiser state for the step is kept in shadow until agg_commit_state.
 * FL_ESTATE without updates (unless dp_clip is set), FL_ENUMERIC when the
 * result is not finite, FL_ECRYPTO when the noise stream failed
 * (nothing changes then), FL_EMISMATCH for a wrong step layout. */
int agg_finish(agg *a, tset *step);
/* Makes the optimiser state computed by the last agg_finish current. */
void agg_commit_state(agg *a);

/* Optimiser state as a tensor set ("opt.m.<name>", "opt.v.<name>"; empty
 * for stateless strategies), for the state directory. pending = 1 exports
 * the state computed by the last agg_finish if it is not committed yet
 * (what will be current once the version is on disk), else the current. */
int agg_state_export(const agg *a, int pending, tset **out);
/* Loads state exported by agg_state_export for the same strategy and
 * layout; FL_EMISMATCH otherwise (state unchanged). */
int agg_state_import(agg *a, const tset *st);

#endif
