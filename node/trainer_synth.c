/* trainer_synth — deterministic least-squares stand-in trainer (see header). */
#include "trainer_synth.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "gguf.h"
#include "lrank.h"
#include "rng.h"

#define SYN_DEFAULT_LAYERS 2
#define SYN_DEFAULT_DIM    32
#define SYN_EVAL_SAMPLES   128
#define SYN_SITE_RANK      2
#define SYN_MAX_PAIRS      4096
#define SYN_MAX_DIM        16384

typedef struct pair {
	tensor *a, *b; /* in the layout set (names and shapes) */
	uint32_t in, out;
	float *ytr; /* [ntr, out] */
	float *yev; /* [nev, out] */
} pair;

typedef struct synth {
	lora_spec lora;
	uint64_t seed;
	uint32_t max_steps, max_batch;
	tset *layout;
	pair *pairs;
	size_t npairs;
	uint32_t max_in, max_out;
	size_t ntr, nev;
	float *xtr; /* [ntr, max_in] */
	float *xev; /* [nev, max_in] */
	/* scratch, sized once */
	float *ax, *t, *e; /* [r], [r], [max_out] */
	tset *grad, *m1, *m2;
} synth;

static void say(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *err, size_t n, const char *fmt, ...)
{
	if (!err || !n)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
}

static void syn_close(void *self)
{
	synth *s = self;
	if (!s)
		return;
	for (size_t i = 0; i < s->npairs; i++) {
		free(s->pairs[i].ytr);
		free(s->pairs[i].yev);
	}
	free(s->pairs);
	free(s->xtr);
	free(s->xev);
	free(s->ax);
	free(s->t);
	free(s->e);
	tset_free(s->layout);
	tset_free(s->grad);
	tset_free(s->m1);
	tset_free(s->m2);
	free(s);
}

/* Adds lora_a [r, in] and lora_b [out, r] for (layer, target). */
static int add_pair(synth *s, int layer, int target, uint32_t in, uint32_t out, char *err,
                    size_t errlen)
{
	char na[96], nb[96];
	if (in == 0 || out == 0 || in > SYN_MAX_DIM || out > SYN_MAX_DIM) {
		say(err, errlen, "blk.%d.%s.weight: shape %u x %u outside 1..%u", layer,
		    lora_target_name(target), out, in, SYN_MAX_DIM);
		return FL_EFORMAT;
	}
	if (s->npairs >= SYN_MAX_PAIRS) {
		say(err, errlen, "more than %d adapted weights", SYN_MAX_PAIRS);
		return FL_ETOOBIG;
	}
	int rc = lora_name(na, sizeof na, (uint32_t)layer, target, 0);
	if (!rc)
		rc = lora_name(nb, sizeof nb, (uint32_t)layer, target, 1);
	if (rc)
		return rc;
	uint64_t sa[2] = {s->lora.rank, in}, sb[2] = {out, s->lora.rank};
	pair *p = &s->pairs[s->npairs];
	memset(p, 0, sizeof *p);
	if ((rc = tset_insert(s->layout, na, 2, sa, NULL, &p->a)) != 0 ||
	    (rc = tset_insert(s->layout, nb, 2, sb, NULL, &p->b)) != 0)
		return rc;
	p->in = in;
	p->out = out;
	s->npairs++;
	if (in > s->max_in)
		s->max_in = in;
	if (out > s->max_out)
		s->max_out = out;
	return 0;
}

static int layout_from_gguf(synth *s, const char *path, char *err, size_t errlen)
{
	gguf *g = NULL;
	char gerr[256];
	int rc = gguf_open(path, &g, gerr, sizeof gerr);
	if (rc) {
		say(err, errlen, "%s: %s", path, gerr);
		return rc;
	}
	for (int l = 0; l < 512; l++) {
		int found = 0;
		for (int t = 0; t < LORA_NTARGETS; t++) {
			if (!(s->lora.targets & (1u << t)))
				continue;
			char name[96];
			gguf_tensor ti;
			lora_base_name(name, sizeof name, (uint32_t)l, t);
			if (gguf_tensor_find(g, name, &ti) != 0) {
				if (found || l == 0) {
					say(err, errlen, "%s: tensor %s missing", path, name);
					rc = FL_EFORMAT;
					goto out;
				}
				continue;
			}
			if (ti.ndims != 2 || ti.ne[0] > UINT32_MAX || ti.ne[1] > UINT32_MAX) {
				say(err, errlen, "%s: %s is not a matrix", path, name);
				rc = FL_EFORMAT;
				goto out;
			}
			found = 1;
			rc = add_pair(s, l, t, (uint32_t)ti.ne[0], (uint32_t)ti.ne[1], err, errlen);
			if (rc)
				goto out;
		}
		if (!found)
			break;
	}
out:
	gguf_free(g);
	return rc;
}

/* Standard normal samples scaled by sd. */
static void fill_normal(rng *r, float *p, size_t n, double sd)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (float)(rng_normal(r) * sd);
}

/* y[j] = (Uf Vf^T + Us Vs^T) x_j for j < n, computed in double. */
static void make_targets(const float *x, size_t n, uint32_t ld, uint32_t in, uint32_t out,
                         const float *uf, const float *vf, uint32_t rf, const float *us,
                         const float *vs, uint32_t rs, float *y)
{
	double tf[LORA_MAX_RANK], ts[SYN_SITE_RANK];
	for (size_t j = 0; j < n; j++) {
		const float *xj = x + j * ld;
		for (uint32_t k = 0; k < rf; k++) {
			double a = 0;
			for (uint32_t i = 0; i < in; i++)
				a += (double)vf[(size_t)i * rf + k] * xj[i];
			tf[k] = a;
		}
		for (uint32_t k = 0; k < rs; k++) {
			double a = 0;
			for (uint32_t i = 0; i < in; i++)
				a += (double)vs[(size_t)i * rs + k] * xj[i];
			ts[k] = a;
		}
		for (uint32_t o = 0; o < out; o++) {
			double a = 0;
			for (uint32_t k = 0; k < rf; k++)
				a += (double)uf[(size_t)o * rf + k] * tf[k];
			for (uint32_t k = 0; k < rs; k++)
				a += (double)us[(size_t)o * rs + k] * ts[k];
			y[j * out + o] = (float)a;
		}
	}
}

static int make_data(synth *s)
{
	size_t nx, tmp;
	if (sz_mul(s->ntr, s->max_in, &nx) || sz_mul(s->nev, s->max_in, &tmp))
		return FL_EOVERFLOW;
	s->xtr = malloc(nx * sizeof(float));
	s->xev = malloc(tmp * sizeof(float));
	if (!s->xtr || !s->xev)
		return FL_ENOMEM;
	rng r;
	rng_seed(&r, s->seed ^ 0x5eed0da7aULL);
	fill_normal(&r, s->xtr, nx, 1.0);
	fill_normal(&r, s->xev, tmp, 1.0);
	uint32_t rf = s->lora.rank, rs = SYN_SITE_RANK;
	int rc = 0;
	for (size_t p = 0; p < s->npairs && !rc; p++) {
		pair *q = &s->pairs[p];
		float *uf = malloc((size_t)q->out * rf * sizeof(float));
		float *vf = malloc((size_t)q->in * rf * sizeof(float));
		float *us = malloc((size_t)q->out * rs * sizeof(float));
		float *vs = malloc((size_t)q->in * rs * sizeof(float));
		q->ytr = malloc(s->ntr * q->out * sizeof(float));
		q->yev = malloc(s->nev * q->out * sizeof(float));
		if (!uf || !vf || !us || !vs || !q->ytr || !q->yev) {
			rc = FL_ENOMEM;
		} else {
			/* Federation map: the same on every node (seeded by the
			 * spec); site map: this node's own (seeded by its seed). */
			rng rfed, rsite;
			rng_seed(&rfed, s->lora.init_seed * 0x9e3779b97f4a7c15ULL + p + 1);
			rng_seed(&rsite, s->seed * 0xbf58476d1ce4e5b9ULL + p + 7);
			fill_normal(&rfed, uf, (size_t)q->out * rf, 1.0 / sqrt((double)rf));
			fill_normal(&rfed, vf, (size_t)q->in * rf, 1.0 / sqrt((double)q->in));
			fill_normal(&rsite, us, (size_t)q->out * rs, 0.5 / sqrt((double)rs));
			fill_normal(&rsite, vs, (size_t)q->in * rs, 1.0 / sqrt((double)q->in));
			make_targets(s->xtr, s->ntr, s->max_in, q->in, q->out, uf, vf, rf, us, vs,
			             rs, q->ytr);
			make_targets(s->xev, s->nev, s->max_in, q->in, q->out, uf, vf, rf, us, vs,
			             rs, q->yev);
		}
		free(uf);
		free(vf);
		free(us);
		free(vs);
	}
	return rc;
}

static int syn_open(const ntr_spec *spec, void **self, char *err, size_t errlen)
{
	synth *s = calloc(1, sizeof *s);
	if (!s)
		return FL_ENOMEM;
	int rc;
	s->lora = spec->lora;
	s->seed = spec->seed;
	s->max_steps = spec->max_steps;
	s->max_batch = spec->max_batch;
	if (s->lora.rank == 0 || s->lora.rank > LORA_MAX_RANK || !s->lora.targets) {
		say(err, errlen, "synth trainer: bad LoRA spec (rank %u)", s->lora.rank);
		rc = FL_ECONFIG;
		goto fail;
	}
	if ((rc = tset_new(&s->layout)) != 0)
		goto fail;
	s->pairs = calloc(SYN_MAX_PAIRS, sizeof *s->pairs);
	if (!s->pairs) {
		rc = FL_ENOMEM;
		goto fail;
	}
	if (spec->model_path && *spec->model_path) {
		rc = layout_from_gguf(s, spec->model_path, err, errlen);
	} else {
		rc = 0;
		for (int l = 0; l < SYN_DEFAULT_LAYERS && !rc; l++)
			for (int t = 0; t < LORA_NTARGETS && !rc; t++)
				if (s->lora.targets & (1u << t))
					rc = add_pair(s, l, t, SYN_DEFAULT_DIM, SYN_DEFAULT_DIM,
					              err, errlen);
	}
	if (rc)
		goto fail;
	if (s->npairs == 0) {
		say(err, errlen, "synth trainer: the model has no adapted weight");
		rc = FL_EFORMAT;
		goto fail;
	}
	s->ntr = 256 + 128 * (size_t)(s->seed % 4);
	s->nev = SYN_EVAL_SAMPLES;
	if ((rc = make_data(s)) != 0)
		goto fail;
	s->ax = malloc(s->lora.rank * sizeof(float));
	s->t = malloc(s->lora.rank * sizeof(float));
	s->e = malloc(s->max_out * sizeof(float));
	if (!s->ax || !s->t || !s->e) {
		rc = FL_ENOMEM;
		goto fail;
	}
	if ((rc = tset_zeros_like(s->layout, &s->grad)) != 0 ||
	    (rc = tset_zeros_like(s->layout, &s->m1)) != 0 ||
	    (rc = tset_zeros_like(s->layout, &s->m2)) != 0)
		goto fail;
	*self = s;
	return 0;
fail:
	if (rc == FL_ENOMEM)
		say(err, errlen, "synth trainer: out of memory");
	syn_close(s);
	return rc;
}

static int syn_layout(void *self, tset **out)
{
	synth *s = self;
	return tset_zeros_like(s->layout, out);
}

static uint64_t syn_samples(void *self)
{
	return ((synth *)self)->ntr;
}

/* Loss of one sample for one pair; with g (non-NULL) accumulates gradients
 * of w * loss into ga, gb. A [r, in], B [out, r]. */
static double pair_sample(synth *s, const pair *q, const float *A, const float *B, const float *x,
                          const float *y, float *ga, float *gb, double w)
{
	uint32_t r = s->lora.rank, in = q->in, out = q->out;
	float sc = (float)lora_scale(&s->lora);
	for (uint32_t k = 0; k < r; k++) {
		double a = 0;
		const float *Ak = A + (size_t)k * in;
		for (uint32_t i = 0; i < in; i++)
			a += (double)Ak[i] * x[i];
		s->ax[k] = (float)a;
	}
	double l = 0;
	for (uint32_t o = 0; o < out; o++) {
		double a = 0;
		const float *Bo = B + (size_t)o * r;
		for (uint32_t k = 0; k < r; k++)
			a += (double)Bo[k] * s->ax[k];
		double e = sc * a - y[o];
		s->e[o] = (float)e;
		l += e * e;
	}
	l /= out;
	if (!ga)
		return l;
	/* d(w * l)/d e_o = 2 w e_o / out */
	float ge = (float)(2.0 * w / out);
	for (uint32_t k = 0; k < r; k++)
		s->t[k] = 0;
	for (uint32_t o = 0; o < out; o++) {
		float g = ge * s->e[o];
		float *gBo = gb + (size_t)o * r;
		const float *Bo = B + (size_t)o * r;
		for (uint32_t k = 0; k < r; k++) {
			gBo[k] += sc * g * s->ax[k];
			s->t[k] += sc * g * Bo[k];
		}
	}
	for (uint32_t k = 0; k < r; k++) {
		float *gAk = ga + (size_t)k * in;
		for (uint32_t i = 0; i < in; i++)
			gAk[i] += s->t[k] * x[i];
	}
	return l;
}

/* Tensor of `set` with the same name as layout tensor `lt`. */
static tensor *peer(const tset *set, const tensor *lt)
{
	return tset_find(set, lt->name);
}

static int syn_train(void *self, const tset *global, const Fedlora__TrainParams *p, tset *local,
                     ntr_result *res, ntr_progress_fn cb, void *arg)
{
	synth *s = self;
	double t0 = clk_seconds();
	int rc;
	if ((rc = tset_same_layout(global, s->layout)) != 0 ||
	    (rc = tset_same_layout(local, s->layout)) != 0)
		return rc;
	if ((rc = tset_copy(local, global)) != 0)
		return rc;
	uint32_t steps = p->local_steps ? p->local_steps : 1;
	if (s->max_steps && steps > s->max_steps)
		steps = s->max_steps;
	uint32_t batch = p->batch_size ? p->batch_size : 8;
	if (s->max_batch && batch > s->max_batch)
		batch = s->max_batch;
	double lr = p->lr > 0 && isfinite(p->lr) ? p->lr : 0.01;
	double wd = isfinite(p->weight_decay) && p->weight_decay > 0 ? p->weight_decay : 0;
	double mu = isfinite(p->fedprox_mu) && p->fedprox_mu > 0 ? p->fedprox_mu : 0;
	double clip = isfinite(p->max_grad_norm) && p->max_grad_norm > 0 ? p->max_grad_norm : 0;
	rng r;
	rng_seed(&r, p->seed ^ (s->seed * 0x94d049bb133111ebULL));
	tset_zero(s->m1);
	tset_zero(s->m2);
	double first = 0, tail = 0;
	uint32_t ntail = steps < 10 ? steps : 10;
	const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
	for (uint32_t st = 0; st < steps; st++) {
		tset_zero(s->grad);
		double loss = 0, w = 1.0 / ((double)batch * (double)s->npairs);
		for (uint32_t j = 0; j < batch; j++) {
			size_t idx = (size_t)rng_below(&r, s->ntr);
			for (size_t pi = 0; pi < s->npairs; pi++) {
				const pair *q = &s->pairs[pi];
				const tensor *A = peer(local, q->a), *B = peer(local, q->b);
				tensor *gA = peer(s->grad, q->a), *gB = peer(s->grad, q->b);
				loss += w * pair_sample(
				                s, q, A->data, B->data, s->xtr + idx * s->max_in,
				                q->ytr + idx * q->out, gA->data, gB->data, w);
			}
		}
		if (st == 0)
			first = loss;
		if (st >= steps - ntail)
			tail += loss / ntail;
		/* FedProx: + mu (theta - theta_global) */
		if (mu > 0 && (rc = tset_axpy(s->grad, (float)mu, local)) == 0)
			rc = tset_axpy(s->grad, (float)-mu, global);
		if (rc)
			return rc;
		if (s->lora.ffa)
			for (size_t pi = 0; pi < s->npairs; pi++) {
				tensor *gA = peer(s->grad, s->pairs[pi].a);
				memset(gA->data, 0, gA->n * sizeof(float));
			}
		uint32_t tr = p->train_rank && p->train_rank < s->lora.rank ? p->train_rank : 0;
		if (tr) /* rank slots tr.. stay the global's (docs/TRAINING.md) */
			for (size_t ti = 0; ti < tset_count(s->grad); ti++)
				lrank_zero_tail(tset_at(s->grad, ti), tr);
		if (clip > 0) {
			double nrm = tset_norm(s->grad);
			if (nrm > clip)
				tset_scale(s->grad, (float)(clip / nrm));
		}
		double bc1 = 1 - pow(b1, st + 1), bc2 = 1 - pow(b2, st + 1);
		for (size_t ti = 0; ti < tset_count(local); ti++) {
			tensor *th = tset_at(local, ti);
			if (s->lora.ffa && !lora_is_b(th->name))
				continue; /* A stays bit-identical */
			tensor *g = tset_find(s->grad, th->name), *m = tset_find(s->m1, th->name),
			       *v = tset_find(s->m2, th->name);
			for (size_t i = 0; i < th->n; i++) {
				double gi = g->data[i];
				m->data[i] = (float)(b1 * m->data[i] + (1 - b1) * gi);
				v->data[i] = (float)(b2 * v->data[i] + (1 - b2) * gi * gi);
				double upd = (m->data[i] / bc1) / (sqrt(v->data[i] / bc2) + eps);
				th->data[i] = (float)(th->data[i] - lr * (upd + wd * th->data[i]));
			}
			if (tr)
				lrank_copy_tail(th, tset_find(global, th->name), tr);
		}
		if (!isfinite(loss))
			return FL_ENUMERIC;
		if (cb && cb(arg, st + 1, steps, loss))
			return FL_EINTR;
	}
	ntr_result out = {first, tail, steps, (uint64_t)steps * batch, s->ntr, clk_seconds() - t0};
	*res = out;
	return 0;
}

static int syn_eval(void *self, const tset *adapter, double *loss, ntr_progress_fn cb, void *arg)
{
	synth *s = self;
	int rc = tset_same_layout(adapter, s->layout);
	if (rc)
		return rc;
	double sum = 0;
	for (size_t pi = 0; pi < s->npairs; pi++) {
		const pair *q = &s->pairs[pi];
		const tensor *A = peer(adapter, q->a), *B = peer(adapter, q->b);
		for (size_t j = 0; j < s->nev; j++)
			sum += pair_sample(s, q, A->data, B->data, s->xev + j * s->max_in,
			                   q->yev + j * q->out, NULL, NULL, 0);
		if (cb && cb(arg, (uint32_t)(pi + 1), (uint32_t)s->npairs, NAN))
			return FL_EINTR;
	}
	*loss = sum / ((double)s->nev * (double)s->npairs);
	return 0;
}

const ntr_ops ntr_synth_ops = {
    .name = "synth",
    .open = syn_open,
    .close = syn_close,
    .layout = syn_layout,
    .sample_count = syn_samples,
    .train = syn_train,
    .eval = syn_eval,
};
