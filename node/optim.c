/* optim — see optim.h. */
#include "optim.h"

#include "buf.h"
#include "err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct optim {
	optim_seg *segs;
	size_t nseg, total;
	float *m, *v; /* [total] each, segments back to back */
	optim_cfg cfg;
	long t;
};

optim_cfg optim_defaults(void)
{
	optim_cfg c = {.beta1 = 0.9f,
	               .beta2 = 0.999f,
	               .eps = 1e-8f,
	               .weight_decay = 0.0f,
	               .max_grad_norm = 1.0f,
	               .prox_mu = 0.0f};
	return c;
}

static int cfg_ok(const optim_cfg *c)
{
	return c->beta1 >= 0.0f && c->beta1 < 1.0f && c->beta2 >= 0.0f && c->beta2 < 1.0f &&
	       c->eps > 0.0f && isfinite(c->eps) && c->weight_decay >= 0.0f &&
	       isfinite(c->weight_decay) && c->max_grad_norm >= 0.0f &&
	       isfinite(c->max_grad_norm) && c->prox_mu >= 0.0f && isfinite(c->prox_mu);
}

int optim_new(const optim_seg *segs, size_t nseg, const optim_cfg *cfg, optim **out)
{
	if (!cfg || !cfg_ok(cfg) || (nseg && !segs))
		return FL_EINVAL;
	size_t total = 0, bytes;
	for (size_t i = 0; i < nseg; i++) {
		if (!segs[i].p || !segs[i].g)
			return FL_EINVAL;
		if (sz_add(total, segs[i].n, &total) != 0)
			return FL_EOVERFLOW;
	}
	if (sz_mul(total ? total : 1, sizeof(float), &bytes) != 0)
		return FL_EOVERFLOW;
	optim *o = calloc(1, sizeof *o);
	if (!o)
		return FL_ENOMEM;
	o->segs = malloc(sizeof *segs * (nseg ? nseg : 1));
	o->m = calloc(1, bytes);
	o->v = calloc(1, bytes);
	if (!o->segs || !o->m || !o->v) {
		optim_free(o);
		return FL_ENOMEM;
	}
	if (nseg)
		memcpy(o->segs, segs, sizeof *segs * nseg);
	o->nseg = nseg;
	o->total = total;
	o->cfg = *cfg;
	*out = o;
	return 0;
}

void optim_free(optim *o)
{
	if (!o)
		return;
	free(o->segs);
	free(o->m);
	free(o->v);
	free(o);
}

void optim_reset(optim *o)
{
	memset(o->m, 0, sizeof(float) * o->total);
	memset(o->v, 0, sizeof(float) * o->total);
	o->t = 0;
}

int optim_set_cfg(optim *o, const optim_cfg *cfg)
{
	if (!cfg || !cfg_ok(cfg))
		return FL_EINVAL;
	o->cfg = *cfg;
	return 0;
}

long optim_steps(const optim *o)
{
	return o->t;
}

int optim_step(optim *o, float lr, double *gnorm)
{
	const optim_cfg *c = &o->cfg;
	if (!isfinite(lr) || lr < 0.0f)
		return FL_EINVAL;
	/* the FedProx term first (it is part of the gradient), then the norm;
	 * on a non-finite norm undo nothing: the term went only into g */
	double ss = 0.0;
	for (size_t s = 0; s < o->nseg; s++) {
		const optim_seg *sg = &o->segs[s];
		const int prox = c->prox_mu > 0.0f && sg->ref;
		double part = 0.0;
#pragma omp parallel for simd reduction(+ : part) if (sg->n > 65536)
		for (size_t i = 0; i < sg->n; i++) {
			float g = sg->g[i];
			if (prox)
				g += c->prox_mu * (sg->p[i] - sg->ref[i]);
			sg->g[i] = g;
			part += (double)g * g;
		}
		ss += part;
	}
	const double norm = sqrt(ss);
	if (gnorm)
		*gnorm = norm;
	if (!isfinite(norm))
		return FL_ENUMERIC;
	float clip = 1.0f;
	if (c->max_grad_norm > 0.0f && norm > c->max_grad_norm)
		clip = (float)(c->max_grad_norm / norm);
	o->t++;
	const float b1 = c->beta1, b2 = c->beta2;
	const float bc1 = (float)(1.0 - pow((double)b1, (double)o->t));
	const float bc2 = (float)(1.0 - pow((double)b2, (double)o->t));
	const float step = lr / bc1, inv_sqrt_bc2 = (float)(1.0 / sqrt((double)bc2));
	size_t off = 0;
	for (size_t s = 0; s < o->nseg; s++) {
		const optim_seg *sg = &o->segs[s];
		float *m = o->m + off, *v = o->v + off, *p = sg->p;
		const float *gr = sg->g;
		const float decay = sg->decay ? 1.0f - lr * c->weight_decay : 1.0f;
#pragma omp parallel for simd if (sg->n > 65536)
		for (size_t i = 0; i < sg->n; i++) {
			const float g = gr[i] * clip;
			const float mi = b1 * m[i] + (1.0f - b1) * g;
			const float vi = b2 * v[i] + (1.0f - b2) * g * g;
			m[i] = mi;
			v[i] = vi;
			p[i] = p[i] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + c->eps);
		}
		off += sg->n;
	}
	return 0;
}

float optim_lr(const optim_sched *s, long step)
{
	if (step < 0)
		step = 0;
	if (s->warmup > 0 && step < s->warmup)
		return s->lr * (float)(step + 1) / (float)s->warmup;
	if (s->kind != OPTIM_COSINE)
		return s->lr;
	const double lo = (double)s->lr * s->min_ratio;
	if (step >= s->total)
		return (float)lo;
	long span = s->total - s->warmup;
	if (span < 1)
		span = 1;
	const double prog = (double)(step - s->warmup) / (double)span;
	return (float)(lo + ((double)s->lr - lo) * 0.5 * (1.0 + cos(M_PI * prog)));
}

int optim_sched_parse(const char *s, int *kind)
{
	if (s && strcmp(s, "constant") == 0)
		*kind = OPTIM_CONSTANT;
	else if (s && strcmp(s, "cosine") == 0)
		*kind = OPTIM_COSINE;
	else
		return FL_EINVAL;
	return 0;
}
