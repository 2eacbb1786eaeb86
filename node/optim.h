/* optim — the optimiser of local training: AdamW with decoupled weight
 * decay and bias correction, global-norm gradient clipping, an optional
 * FedProx proximal term, and learning-rate schedules.
 *
 * One step, for every trainable element p with gradient g (t = 1, 2, ...):
 *   g  <- g + mu * (p - p_global)                (FedProx, mu > 0 and an anchor)
 *   g  <- g * min(1, max_norm / ||g||)            (clipping; ||.|| over all segments)
 *   m  <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
 *   p  <- p * (1 - lr * wd)                       (decay, segments with decay on)
 *   p  <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * (the PyTorch AdamW formulation). Schedules: constant, or linear warmup
 * then cosine to min_ratio * lr.
 *
 * An optim belongs to one thread; it never allocates after optim_new. */
#ifndef FL_OPTIM_H
#define FL_OPTIM_H
#include <stddef.h>

/* A run of trainable floats and their gradient (caller-owned). */
typedef struct optim_seg {
	float *p;
	float *g;
	size_t n;
	int decay;        /* 1: weight decay applies to this segment */
	const float *ref; /* FedProx anchor [n] (the global value), or NULL */
} optim_seg;

typedef struct optim_cfg {
	float beta1, beta2, eps; /* 0.9, 0.999, 1e-8 are usual */
	float weight_decay;      /* decoupled, >= 0 */
	float max_grad_norm;     /* 0: no clipping */
	float prox_mu;           /* FedProx mu >= 0 (0: off) */
} optim_cfg;

/* Sensible defaults: b1 0.9, b2 0.999, eps 1e-8, wd 0, clip 1.0, mu 0. */
optim_cfg optim_defaults(void);

typedef struct optim optim;

/* Copies the segment table and allocates the moments (zero). FL_EINVAL for
 * a bad config (betas outside [0, 1), negative decay/mu/clip, eps <= 0),
 * FL_ENOMEM, FL_EOVERFLOW. */
int optim_new(const optim_seg *segs, size_t nseg, const optim_cfg *cfg, optim **out);
void optim_free(optim *o);
/* Moments to zero, step count to 0 (a new round of local training). */
void optim_reset(optim *o);
/* Replaces the configuration (same validation), keeping the moments. */
int optim_set_cfg(optim *o, const optim_cfg *cfg);
/* Steps taken since the last reset. */
long optim_steps(const optim *o);

/* One step with learning rate lr. Modifies the gradients (FedProx term,
 * clipping). *gnorm (may be NULL) gets the global gradient norm after the
 * FedProx term and before clipping. A non-finite gradient norm leaves the
 * parameters, moments and step count untouched and returns FL_ENUMERIC;
 * FL_EINVAL for a negative or non-finite lr. */
int optim_step(optim *o, float lr, double *gnorm);

/* Learning-rate schedules. */
enum optim_sched_kind { OPTIM_CONSTANT = 0, OPTIM_COSINE = 1 };
typedef struct optim_sched {
	int kind;
	float lr;        /* peak */
	long warmup;     /* steps of linear warmup (both kinds), >= 0 */
	long total;      /* steps of the run (cosine reaches the minimum there) */
	float min_ratio; /* cosine floor as a fraction of lr */
} optim_sched;

/* lr at step s (0-based): s < warmup: lr * (s + 1) / warmup; then constant
 * lr, or lr_min + (lr - lr_min) * (1 + cos(pi * (s - warmup) /
 * max(1, total - warmup))) / 2, and lr_min for s >= total. */
float optim_lr(const optim_sched *s, long step);

/* Parses "constant" / "cosine". FL_EINVAL otherwise. */
int optim_sched_parse(const char *s, int *kind);

#endif
