/* agg — see agg.h. */
#include "agg.h"

#include "dp.h"
#include "err.h"
#include "fedlora.pb-c.h"
#include "log.h"
#include "lora.h"
#include "lrank.h"
#include "quant.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* No single (clipped, weighted) update may carry more L2 mass than this:
 * the float accumulator stays far from overflow for any realistic number
 * of updates (FLT_MAX / 1e30 > 10^8 updates). */
#define AGG_HARD_NORM 1e30
/* Coordinates per tile in the coordinate-wise strategies. */
#define AGG_TILE      64
/* DP: updates are scaled to dp_clip * (1 - AGG_DP_MARGIN) when above it, so
 * that the contribution actually added (products rounded to float, the
 * weight-times-scale factor rounded once per block, docs/FORMATS.md) stays
 * below dp_clip: each of those roundings is at most 2^-24 relative. */
#define AGG_DP_MARGIN 1e-6

struct agg {
	agg_opts o;
	tset *lay;   /* exchanged layout (zeros) */
	size_t nt;   /* tensors */
	tensor **tl; /* layout tensors in insertion order */
	size_t *off; /* flat offset of each tensor */
	size_t numel, max_n;
	/* pointer -> index lookup: layout tensors sorted by address */
	tensor **by_ptr;
	size_t *by_ptr_idx;
	uint32_t *seen; /* per tensor: stamp of the update that last carried it */
	uint32_t stamp;
	float *scratch; /* max_n floats: decode for the norm pass */
	qtensor *views; /* nt views for agg_add_payload */
	/* mean strategies */
	tset *acc;
	tensor **tacc;
	double wsum;
	size_t count;
	/* buffering strategies: one flat array per update */
	float **slots;
	size_t nslots, slots_cap;
	/* optimiser state: current and shadow (written by agg_finish) */
	tset *m, *v, *m_new, *v_new;
	int have_new;
	/* DP: noise stream and a max_n double scratch for the noised sum */
	dp_rng *noise;
	double *dscratch;
	/* rank slots (docs/TRAINING.md, "Per-node rank"): the layout's rank
	 * (0: not a LoRA layout), the rank of the update being added, the
	 * weight sum of each slot this round, whether an update had fewer
	 * slots than rfull */
	uint32_t rfull, cur_rank;
	double *wslot;
	int mixed;
	/* agg_add_payload_scaled: factor on the next update's numerator
	 * weight (set only during that call) */
	int sfac_on;
	double sfac;
};

void agg_opts_default(agg_opts *o)
{
	memset(o, 0, sizeof *o);
	o->strategy = AGG_FEDAVG;
	o->weighting = AGG_W_SAMPLES;
	o->server_lr = 1.0;
	o->momentum = 0.9;
	o->beta1 = 0.9;
	o->beta2 = 0.99;
	o->tau = 1e-3;
	o->trim = 0.1;
	o->max_weight = 1ull << 32;
	o->max_buffer_bytes = (size_t)4 << 30;
}

static const char *const strat_names[] = {"fedavg",  "fedavgm",      "fedadam",
                                          "fedyogi", "trimmed_mean", "median"};

const char *agg_strategy_name(enum agg_strategy s)
{
	if ((unsigned)s < sizeof strat_names / sizeof strat_names[0])
		return strat_names[s];
	return "?";
}

int agg_strategy_parse(const char *s, enum agg_strategy *out)
{
	for (unsigned i = 0; i < sizeof strat_names / sizeof strat_names[0]; i++)
		if (strcmp(s, strat_names[i]) == 0) {
			*out = (enum agg_strategy)i;
			return 0;
		}
	return FL_EINVAL;
}

int agg_strategy_buffers(enum agg_strategy s)
{
	return s == AGG_TRIMMED_MEAN || s == AGG_MEDIAN;
}

static int has_m(enum agg_strategy s)
{
	return s == AGG_FEDAVGM || s == AGG_FEDADAM || s == AGG_FEDYOGI;
}

static int has_v(enum agg_strategy s)
{
	return s == AGG_FEDADAM || s == AGG_FEDYOGI;
}

int agg_name_exchanged(const char *name, int ffa)
{
	if (!ffa)
		return 1;
	size_t n = strlen(name);
	return n >= 7 && strcmp(name + n - 7, ".lora_b") == 0;
}

const char *agg_verdict_name(enum agg_verdict v)
{
	switch (v) {
	case AGG_ACCEPTED:
		return "accepted";
	case AGG_MALFORMED:
		return "malformed";
	case AGG_NON_FINITE:
		return "non_finite";
	case AGG_NORM:
		return "norm";
	case AGG_FULL:
		return "full";
	}
	return "?";
}

#define WHY(...) snprintf(why, whylen, __VA_ARGS__)

int agg_opts_check(const agg_opts *o, char *why, size_t whylen)
{
	char dummy[8];
	if (!why) {
		why = dummy;
		whylen = sizeof dummy;
	}
	if ((unsigned)o->strategy > AGG_MEDIAN) {
		WHY("unknown strategy %d", (int)o->strategy);
		return FL_EINVAL;
	}
	if (o->weighting != AGG_W_SAMPLES && o->weighting != AGG_W_UNIFORM) {
		WHY("unknown weighting %d", (int)o->weighting);
		return FL_EINVAL;
	}
	if (!(o->clip_norm >= 0) || !isfinite(o->clip_norm)) {
		WHY("clip_norm must be a finite number >= 0 (0 = off), not %g", o->clip_norm);
		return FL_EINVAL;
	}
	if (!(o->reject_norm >= 0) || !isfinite(o->reject_norm)) {
		WHY("reject_norm must be a finite number >= 0 (0 = off), not %g", o->reject_norm);
		return FL_EINVAL;
	}
	if (!(o->server_lr > 0) || !isfinite(o->server_lr)) {
		WHY("server_lr must be > 0, not %g", o->server_lr);
		return FL_EINVAL;
	}
	if (!(o->momentum >= 0 && o->momentum < 1)) {
		WHY("momentum must be in [0, 1), not %g", o->momentum);
		return FL_EINVAL;
	}
	if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1)) {
		WHY("beta1 and beta2 must be in [0, 1) (got %g, %g)", o->beta1, o->beta2);
		return FL_EINVAL;
	}
	if (!(o->tau > 0) || !isfinite(o->tau)) {
		WHY("tau must be > 0, not %g", o->tau);
		return FL_EINVAL;
	}
	if (!(o->trim >= 0 && o->trim < 0.5)) {
		WHY("trim must be in [0, 0.5), not %g", o->trim);
		return FL_EINVAL;
	}
	if (o->max_weight < 1) {
		WHY("max_weight must be >= 1");
		return FL_EINVAL;
	}
	if (!(o->dp_clip >= 0) || !isfinite(o->dp_clip) || !(o->dp_noise_std >= 0) ||
	    !isfinite(o->dp_noise_std)) {
		WHY("dp_clip and dp_noise_std must be finite numbers >= 0");
		return FL_EINVAL;
	}
	if (o->dp_clip > 0) {
		if (agg_strategy_buffers(o->strategy)) {
			WHY("aggregation.strategy %s does not combine with differential privacy "
			    "(its sensitivity is not bounded by the clip); use fedavg, fedavgm, "
			    "fedadam or fedyogi",
			    agg_strategy_name(o->strategy));
			return FL_EINVAL;
		}
		if (o->weighting != AGG_W_UNIFORM) {
			WHY("differential privacy needs aggregation.weighting = uniform (a sample "
			    "weight would scale one node's influence past the clip)");
			return FL_EINVAL;
		}
		if (!(o->dp_denom >= 1) || !isfinite(o->dp_denom)) {
			WHY("dp_denom must be >= 1, not %g", o->dp_denom);
			return FL_EINVAL;
		}
	}
	return 0;
}

static int cmp_ptr(const void *a, const void *b)
{
	const tensor *x = *(tensor *const *)a, *y = *(tensor *const *)b;
	return x < y ? -1 : x > y;
}

void agg_free(agg *a)
{
	if (!a)
		return;
	tset_free(a->lay);
	tset_free(a->acc);
	tset_free(a->m);
	tset_free(a->v);
	tset_free(a->m_new);
	tset_free(a->v_new);
	free(a->tl);
	free(a->tacc);
	free(a->off);
	free(a->by_ptr);
	free(a->by_ptr_idx);
	free(a->seen);
	free(a->scratch);
	free(a->dscratch);
	free(a->wslot);
	dp_rng_free(a->noise);
	if (a->views) {
		for (size_t i = 0; i < a->nt; i++)
			qt_fini(&a->views[i]);
		free(a->views);
	}
	for (size_t i = 0; i < a->slots_cap; i++)
		free(a->slots[i]);
	free(a->slots);
	free(a);
}

static int zeros_state(const tset *lay, tset **out, float fill)
{
	int rc = tset_zeros_like(lay, out);
	if (rc || fill == 0.0f)
		return rc;
	for (size_t i = 0; i < tset_count(*out); i++) {
		tensor *t = tset_at(*out, i);
		for (size_t k = 0; k < t->n; k++)
			t->data[k] = fill;
	}
	return 0;
}

int agg_new(const agg_opts *o, const tset *layout, agg **out)
{
	char why[200];
	if (agg_opts_check(o, why, sizeof why)) {
		LOGE("agg", "bad options: %s", why);
		return FL_EINVAL;
	}
	int rc = FL_ENOMEM;
	agg *a = calloc(1, sizeof *a);
	if (!a)
		return FL_ENOMEM;
	a->o = *o;
	rc = tset_new(&a->lay);
	for (size_t i = 0; !rc && i < tset_count(layout); i++) {
		const tensor *t = tset_at(layout, i);
		if (agg_name_exchanged(t->name, o->ffa))
			rc = tset_insert(a->lay, t->name, t->ndim, t->shape, NULL, NULL);
	}
	if (rc)
		goto out;
	a->nt = tset_count(a->lay);
	if (a->nt == 0) {
		LOGE("agg", "no exchanged tensors in the adapter layout%s",
		     o->ffa ? " (FFA-LoRA needs *.lora_b tensors)" : "");
		rc = FL_EINVAL;
		goto out;
	}
	rc = FL_ENOMEM;
	a->tl = calloc(a->nt, sizeof *a->tl);
	a->tacc = calloc(a->nt, sizeof *a->tacc);
	a->off = calloc(a->nt, sizeof *a->off);
	a->by_ptr = calloc(a->nt, sizeof *a->by_ptr);
	a->by_ptr_idx = calloc(a->nt, sizeof *a->by_ptr_idx);
	a->seen = calloc(a->nt, sizeof *a->seen);
	a->views = calloc(a->nt, sizeof *a->views);
	if (!a->tl || !a->tacc || !a->off || !a->by_ptr || !a->by_ptr_idx || !a->seen || !a->views)
		goto out;
	for (size_t i = 0; i < a->nt; i++) {
		a->tl[i] = tset_at(a->lay, i);
		a->off[i] = a->numel;
		a->numel += a->tl[i]->n; /* tset caps keep this far from overflow */
		if (a->tl[i]->n > a->max_n)
			a->max_n = a->tl[i]->n;
		a->by_ptr[i] = a->tl[i];
		qt_init(&a->views[i]);
	}
	qsort(a->by_ptr, a->nt, sizeof *a->by_ptr, cmp_ptr);
	for (size_t i = 0; i < a->nt; i++)
		for (size_t k = 0; k < a->nt; k++)
			if (a->by_ptr[k] == a->tl[i]) {
				a->by_ptr_idx[k] = i;
				break;
			}
	a->scratch = malloc((a->max_n ? a->max_n : 1) * sizeof(float));
	if (!a->scratch)
		goto out;
	a->rfull = a->cur_rank = lrank_set_rank(a->lay);
	a->wslot = calloc(a->rfull ? a->rfull : 1, sizeof *a->wslot);
	if (!a->wslot)
		goto out;
	if (o->dp_clip > 0) {
		a->dscratch = malloc((a->max_n ? a->max_n : 1) * sizeof(double));
		if (!a->dscratch)
			goto out;
		if ((rc = dp_rng_new(NULL, &a->noise)) != 0)
			goto out;
		rc = FL_ENOMEM;
	}
	if (!agg_strategy_buffers(o->strategy)) {
		rc = tset_zeros_like(a->lay, &a->acc);
		if (rc)
			goto out;
		for (size_t i = 0; i < a->nt; i++)
			a->tacc[i] = tset_find(a->acc, a->tl[i]->name);
	}
	rc = 0;
	if (has_m(o->strategy)) {
		rc = zeros_state(a->lay, &a->m, 0.0f);
		if (!rc)
			rc = zeros_state(a->lay, &a->m_new, 0.0f);
	}
	if (!rc && has_v(o->strategy)) {
		float v0 = (float)(o->tau * o->tau);
		rc = zeros_state(a->lay, &a->v, v0);
		if (!rc)
			rc = zeros_state(a->lay, &a->v_new, v0);
	}
	if (rc)
		goto out;
	*out = a;
	a = NULL;
out:
	agg_free(a);
	return rc;
}

const tset *agg_layout(const agg *a)
{
	return a->lay;
}

int agg_set_noise_key(agg *a, const uint8_t key[32])
{
	if (!(a->o.dp_clip > 0))
		return FL_EINVAL;
	dp_rng *r = NULL;
	int rc = dp_rng_new(key, &r);
	if (rc)
		return rc;
	dp_rng_free(a->noise);
	a->noise = r;
	return 0;
}

const agg_opts *agg_get_opts(const agg *a)
{
	return &a->o;
}

void agg_begin(agg *a)
{
	if (a->acc)
		tset_zero(a->acc);
	a->wsum = 0;
	a->count = 0;
	a->nslots = 0;
	a->have_new = 0;
	a->mixed = 0;
	if (a->rfull)
		memset(a->wslot, 0, a->rfull * sizeof *a->wslot);
}

int agg_set_sum(agg *a, const tset *sum, double wsum, size_t count)
{
	if (agg_strategy_buffers(a->o.strategy) || a->o.dp_clip > 0 || !(wsum > 0) || !count)
		return FL_EINVAL;
	if (tset_same_layout(sum, a->lay))
		return FL_EMISMATCH;
	for (size_t i = 0; i < a->nt; i++) {
		const tensor *s = tset_find(sum, a->tl[i]->name);
		for (size_t k = 0; k < s->n; k++)
			if (!isfinite(s->data[k]))
				return FL_ENUMERIC;
	}
	for (size_t i = 0; i < a->nt; i++) {
		const tensor *s = tset_find(sum, a->tl[i]->name);
		memcpy(a->tacc[i]->data, s->data, s->n * sizeof(float));
	}
	a->wsum = wsum;
	a->count = count;
	return 0;
}

size_t agg_count(const agg *a)
{
	return a->count;
}

double agg_weight_sum(const agg *a)
{
	return a->wsum;
}

/* Index of the layout tensor named like q, or -1. */
static long find_idx(const agg *a, const char *name)
{
	tensor *t = tset_find(a->lay, name);
	if (!t)
		return -1;
	size_t lo = 0, hi = a->nt;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (a->by_ptr[mid] == t)
			return (long)a->by_ptr_idx[mid];
		if ((const void *)a->by_ptr[mid] < (const void *)t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static int shape_eq(const qtensor *q, const tensor *t)
{
	if (q->ndim != t->ndim || q->n != t->n)
		return 0;
	for (uint32_t d = 0; d < q->ndim; d++)
		if (q->shape[d] != t->shape[d])
			return 0;
	return 1;
}

static void shape_str(uint32_t ndim, const uint64_t *shape, char *out, size_t cap)
{
	size_t k = 0;
	out[0] = 0;
	for (uint32_t d = 0; d < ndim && k < cap; d++) {
		int w = snprintf(out + k, cap - k, "%s%llu", d ? "x" : "",
		                 (unsigned long long)shape[d]);
		if (w < 0)
			break;
		k += (size_t)w;
	}
}

static int refuse(agg_result *res, enum agg_verdict v)
{
	res->verdict = v;
	return 0;
}

/* Sum of squares in double. Eight independent partial sums keep the adds
 * from waiting on each other (the order is fixed, so the result is
 * deterministic). */
static double sumsq(const float *x, size_t n)
{
	double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int k = 0; k < 8; k++)
			p[k] += (double)x[i + k] * (double)x[i + k];
	double s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
	for (; i < n; i++)
		s += (double)x[i] * (double)x[i];
	return s;
}

/* ---- rank slots (docs/TRAINING.md, "Per-node rank") ---- */

/* t's shape cut to rank r (t a layout tensor of rank rfull). */
static void slot_shape(tensor *t, uint32_t r)
{
	if (lora_is_b(t->name))
		t->shape[1] = r;
	else
		t->shape[0] = r;
	t->n = (size_t)t->shape[0] * t->shape[1];
}

/* Accumulates w x the update of rank cur_rank (checked) into the first
 * cur_rank slots of acc: decode each slice into scratch, then scatter. */
static int slot_accumulate(agg *a, const qtensor *qs, size_t nq, float w)
{
	for (size_t i = 0; i < nq; i++) {
		long idx = find_idx(a, qs[i].name);
		int rc = quant_decode(&qs[i], a->scratch, qs[i].n);
		if (rc) /* cannot happen after the norm pass */
			return rc;
		lrank_scatter_add(a->tacc[idx], a->cur_rank, a->scratch, w);
	}
	return 0;
}

/* The per-slot weighted mean: slot j of every tensor divided by the weight
 * of the updates that carried slot j; 0 where none did. */
static void slot_mean(agg *a, tset *step)
{
	for (size_t i = 0; i < a->nt; i++) {
		tensor *d = tset_find(step, a->tl[i]->name);
		const float *acc = a->tacc[i]->data;
		int b = lora_is_b(d->name);
		size_t cols = d->shape[1];
		for (size_t k = 0; k < d->n; k++) {
			size_t j = b ? k % cols : k / cols; /* the slot of element k */
			double ws = a->wslot[j];
			d->data[k] = ws > 0 ? (float)((double)acc[k] / ws) : 0.0f;
		}
	}
}

uint32_t agg_rank(const agg *a)
{
	return a->rfull;
}

double agg_slot_weight(const agg *a, uint32_t slot)
{
	return slot < a->rfull ? a->wslot[slot] : 0.0;
}

int agg_add_rank(agg *a, const qtensor *qs, size_t nq, uint64_t samples, uint32_t rank,
                 agg_result *res)
{
	if (rank && rank < a->rfull)
		a->cur_rank = rank;
	int rc = agg_add(a, qs, nq, samples, res);
	a->cur_rank = a->rfull;
	return rc;
}

int agg_add_payload_rank(agg *a, const Fedlora__AdapterPayload *p, uint64_t samples, uint32_t rank,
                         agg_result *res)
{
	if (rank && rank < a->rfull)
		a->cur_rank = rank;
	int rc = agg_add_payload(a, p, samples, res);
	a->cur_rank = a->rfull;
	return rc;
}

/* Makes sure slot nslots exists. */
static int slot_reserve(agg *a)
{
	size_t per = a->numel * sizeof(float);
	if ((a->nslots + 1) > a->o.max_buffer_bytes / (per ? per : 1))
		return FL_ETOOBIG;
	if (a->nslots < a->slots_cap)
		return 0;
	size_t ncap = a->slots_cap ? a->slots_cap * 2 : 8;
	float **ns = realloc(a->slots, ncap * sizeof *ns);
	if (!ns)
		return FL_ENOMEM;
	for (size_t i = a->slots_cap; i < ncap; i++)
		ns[i] = NULL;
	a->slots = ns;
	a->slots_cap = ncap;
	return 0;
}

int agg_add(agg *a, const qtensor *qs, size_t nq, uint64_t samples, agg_result *res)
{
	memset(res, 0, sizeof *res);
	res->scale = 1.0;
	char *why = res->why;
	size_t whylen = sizeof res->why;
	if (samples == 0 && a->o.weighting == AGG_W_SAMPLES) {
		WHY("sample_count is 0");
		return refuse(res, AGG_MALFORMED);
	}
	if (nq != a->nt) {
		WHY("update has %zu tensors, the federation exchanges %zu", nq, a->nt);
		return refuse(res, AGG_MALFORMED);
	}
	/* Structure first: every name known, once, with its shape. */
	if (++a->stamp == 0) {
		memset(a->seen, 0, a->nt * sizeof *a->seen);
		a->stamp = 1;
	}
	for (size_t i = 0; i < nq; i++) {
		const qtensor *q = &qs[i];
		long idx = find_idx(a, q->name);
		if (idx < 0) {
			WHY("tensor '%.64s' is not exchanged by this federation%s", q->name,
			    a->o.ffa ? " (FFA-LoRA: only lora_b)" : "");
			return refuse(res, AGG_MALFORMED);
		}
		if (a->seen[idx] == a->stamp) {
			WHY("tensor '%.64s' appears twice", q->name);
			return refuse(res, AGG_MALFORMED);
		}
		a->seen[idx] = a->stamp;
		tensor want = *a->tl[idx];
		if (a->cur_rank < a->rfull)
			slot_shape(&want, a->cur_rank);
		if (!shape_eq(q, &want)) {
			char s1[48], s2[48];
			shape_str(q->ndim, q->shape, s1, sizeof s1);
			shape_str(want.ndim, want.shape, s2, sizeof s2);
			WHY("tensor '%.40s' has shape %.47s, expected %.47s", q->name, s1, s2);
			return refuse(res, AGG_MALFORMED);
		}
		if (!q->fmt || qt_check_fmt_block(q->fmt, q->block)) {
			WHY("tensor '%.64s' has an invalid format", q->name);
			return refuse(res, AGG_MALFORMED);
		}
	}
	int buffering = agg_strategy_buffers(a->o.strategy);
	if (a->cur_rank < a->rfull && (buffering || a->o.dp_clip > 0)) {
		WHY("an update of rank %u (of %u) needs a mean strategy without central DP "
		    "(rank slots; docs/TRAINING.md)",
		    a->cur_rank, a->rfull);
		return refuse(res, AGG_MALFORMED);
	}
	float *slot = NULL;
	if (buffering) {
		int rc = slot_reserve(a);
		if (rc == FL_ETOOBIG) {
			WHY("buffer cap of %zu bytes reached (%zu updates buffered)",
			    a->o.max_buffer_bytes, a->nslots);
			return refuse(res, AGG_FULL);
		}
		if (rc)
			return rc;
		if (!a->slots[a->nslots]) {
			a->slots[a->nslots] = malloc((a->numel ? a->numel : 1) * sizeof(float));
			if (!a->slots[a->nslots])
				return FL_ENOMEM;
		}
		slot = a->slots[a->nslots];
	}
	/* Norm pass (decode into scratch, or into the slot when buffering). */
	double ss = 0;
	for (size_t i = 0; i < nq; i++) {
		long idx = find_idx(a, qs[i].name);
		float *dst = buffering ? slot + a->off[idx] : a->scratch;
		int rc = quant_decode(&qs[i], dst, qs[i].n); /* n: checked against the shape */
		if (rc) {
			WHY("tensor '%.64s' cannot be decoded (%s)", qs[i].name, fl_strerror(rc));
			return refuse(res, AGG_MALFORMED);
		}
		ss += sumsq(dst, qs[i].n);
	}
	double norm = sqrt(ss);
	res->norm = norm;
	if (!isfinite(norm)) {
		WHY("update is not finite");
		return refuse(res, AGG_NON_FINITE);
	}
	if (a->o.reject_norm > 0 && norm > a->o.reject_norm) {
		WHY("update norm %.6g exceeds reject_norm %.6g", norm, a->o.reject_norm);
		return refuse(res, AGG_NORM);
	}
	double scale = 1.0;
	if (a->o.clip_norm > 0 && norm > a->o.clip_norm)
		scale = a->o.clip_norm / norm;
	if (a->o.dp_clip > 0) {
		double lim = a->o.dp_clip * (1 - AGG_DP_MARGIN);
		if (norm * scale > lim)
			scale = lim / norm;
	}
	double w = 1.0;
	if (a->o.weighting == AGG_W_SAMPLES)
		w = (double)(samples < a->o.max_weight ? samples : a->o.max_weight);
	if (norm * scale * (buffering ? 1.0 : w) > AGG_HARD_NORM) {
		WHY("update norm %.6g (weight %.6g) is too large to aggregate; set "
		    "aggregation.clip_norm",
		    norm, w);
		return refuse(res, AGG_NORM);
	}
	res->scale = scale;
	res->weight = w;
	if (buffering) {
		if (scale != 1.0) {
			float fs = (float)scale;
			for (size_t k = 0; k < a->numel; k++)
				slot[k] *= fs;
		}
		a->nslots++;
	} else if (a->cur_rank < a->rfull) {
		int rc =
		    slot_accumulate(a, qs, nq, (float)(w * scale * (a->sfac_on ? a->sfac : 1.0)));
		if (rc)
			return rc;
	} else {
		float fw = (float)(w * scale * (a->sfac_on ? a->sfac : 1.0));
		for (size_t i = 0; i < nq; i++) {
			long idx = find_idx(a, qs[i].name);
			int rc = quant_accumulate(&qs[i], fw, a->tacc[idx]->data, a->tacc[idx]->n);
			if (rc) /* cannot happen after the checks above */
				return rc;
		}
	}
	a->wsum += w;
	a->count++;
	for (uint32_t j = 0; j < a->cur_rank; j++)
		a->wslot[j] += w;
	a->mixed |= a->cur_rank < a->rfull;
	res->verdict = AGG_ACCEPTED;
	return 0;
}

int agg_add_payload(agg *a, const Fedlora__AdapterPayload *p, uint64_t samples, agg_result *res)
{
	memset(res, 0, sizeof *res);
	res->scale = 1.0;
	char *why = res->why;
	size_t whylen = sizeof res->why;
	if (!p) {
		WHY("update carries no delta");
		return refuse(res, AGG_MALFORMED);
	}
	if (p->kind != FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA) {
		WHY("update payload kind is %d, expected DELTA", (int)p->kind);
		return refuse(res, AGG_MALFORMED);
	}
	if (p->n_tensors != a->nt) {
		WHY("update has %zu tensors, the federation exchanges %zu", p->n_tensors, a->nt);
		return refuse(res, AGG_MALFORMED);
	}
	qt_limits lim = {.max_elems = a->max_n ? a->max_n : 1};
	for (size_t i = 0; i < p->n_tensors; i++) {
		char w2[160];
		int rc = qt_view_proto(p->tensors[i], &lim, &a->views[i], w2, sizeof w2);
		if (rc == FL_ENUMERIC) {
			WHY("tensor %zu: %s", i, w2);
			return refuse(res, AGG_NON_FINITE);
		}
		if (rc) {
			WHY("tensor %zu: %s", i, w2);
			return refuse(res, AGG_MALFORMED);
		}
	}
	return agg_add(a, a->views, p->n_tensors, samples, res);
}

int agg_add_payload_scaled(agg *a, const Fedlora__AdapterPayload *p, uint64_t samples,
                           double factor, agg_result *res)
{
	if (!(factor > 0 && factor <= 1) || agg_strategy_buffers(a->o.strategy) ||
	    a->o.dp_clip > 0) {
		memset(res, 0, sizeof *res);
		return FL_EINVAL;
	}
	a->sfac_on = 1;
	a->sfac = factor;
	int rc = agg_add_payload(a, p, samples, res);
	a->sfac_on = 0;
	return rc;
}

/* ---- coordinate-wise selection ---- */

/* Partitions x[lo..hi] so that x[k] holds the value of rank k, smaller or
 * equal values before it and larger or equal after (Hoare quickselect with
 * median-of-three pivots; deterministic). */
static void select_k(float *x, size_t lo, size_t hi, size_t k)
{
	while (hi > lo) {
		size_t mid = lo + (hi - lo) / 2;
		/* median of three into x[mid] */
		if (x[mid] < x[lo]) {
			float t = x[mid];
			x[mid] = x[lo];
			x[lo] = t;
		}
		if (x[hi] < x[lo]) {
			float t = x[hi];
			x[hi] = x[lo];
			x[lo] = t;
		}
		if (x[hi] < x[mid]) {
			float t = x[hi];
			x[hi] = x[mid];
			x[mid] = t;
		}
		float piv = x[mid];
		size_t i = lo, j = hi;
		while (i <= j) {
			while (x[i] < piv)
				i++;
			while (x[j] > piv)
				j--;
			if (i <= j) {
				float t = x[i];
				x[i] = x[j];
				x[j] = t;
				i++;
				if (j == 0)
					break;
				j--;
			}
		}
		/* now x[lo..j] <= piv <= x[i..hi], and j < i */
		if (k <= j)
			hi = j;
		else if (k >= i)
			lo = i;
		else
			return;
	}
}

/* Coordinate-wise reduction of K values. */
static double robust_reduce(enum agg_strategy s, float *col, size_t K, size_t cut)
{
	if (K == 1)
		return col[0];
	if (s == AGG_MEDIAN) {
		size_t h = K / 2;
		select_k(col, 0, K - 1, h);
		if (K % 2)
			return col[h];
		/* even: mean of ranks h-1 and h; rank h-1 is the max of the left part */
		float hi = col[h];
		float lo = col[0];
		for (size_t i = 1; i < h; i++)
			if (col[i] > lo)
				lo = col[i];
		return 0.5 * ((double)lo + (double)hi);
	}
	/* trimmed mean: drop `cut` smallest and `cut` largest */
	if (cut > 0) {
		select_k(col, 0, K - 1, cut);
		select_k(col, cut, K - 1, K - cut - 1);
	}
	double sum = 0;
	for (size_t i = cut; i < K - cut; i++)
		sum += col[i];
	return sum / (double)(K - 2 * cut);
}

/* Trimmed mean of one tile of up to AGG_TILE coordinates without sorting:
 * one pass keeps, per coordinate, the cut+1 smallest and cut+1 largest
 * values in two sorted lists updated with min/max only (branch-free, and
 * the loops over the tile's coordinates vectorise); their ends are the
 * values of rank cut (lo) and rank K-1-cut (hi). A second pass sums the
 * values strictly between, and ties at lo/hi are counted in by rank, so the
 * result is exactly the mean of ranks cut..K-1-cut (summed in double). */
#ifndef AGG_FAST_CUT_MAX
#define AGG_FAST_CUT_MAX 32
#endif
static void trimmed_tile(float *const *slots, size_t K, size_t cut, size_t j0, size_t len,
                         float *out)
{
	float lo[AGG_FAST_CUT_MAX + 1][AGG_TILE], hi[AGG_FAST_CUT_MAX + 1][AGG_TILE];
	float x[AGG_TILE], y[AGG_TILE];
	for (size_t i = 0; i <= cut; i++)
		for (size_t j = 0; j < AGG_TILE; j++) {
			lo[i][j] = INFINITY;
			hi[i][j] = -INFINITY;
		}
	memset(x, 0, sizeof x);
	for (size_t k = 0; k < K; k++) {
		memcpy(x, slots[k] + j0, len * sizeof(float));
		memcpy(y, x, sizeof y);
		for (size_t i = 0; i <= cut; i++) {
			float *li = lo[i], *hi_ = hi[i];
			for (size_t j = 0; j < AGG_TILE; j++) {
				float a = li[j], v = x[j];
				float mn = a < v ? a : v, mx = a < v ? v : a;
				li[j] = mn; /* keep the smaller, pass the larger on */
				x[j] = mx;
				float b = hi_[j], w = y[j];
				float bmx = b > w ? b : w, bmn = b > w ? w : b;
				hi_[j] = bmx;
				y[j] = bmn;
			}
		}
		if (len < AGG_TILE) /* padding lanes stay 0 for the next load */
			memset(x + len, 0, (AGG_TILE - len) * sizeof(float));
	}
	double sum[AGG_TILE];
	int32_t nlt[AGG_TILE], neql[AGG_TILE], ngt[AGG_TILE], neqh[AGG_TILE];
	memset(sum, 0, sizeof sum);
	memset(nlt, 0, sizeof nlt);
	memset(neql, 0, sizeof neql);
	memset(ngt, 0, sizeof ngt);
	memset(neqh, 0, sizeof neqh);
	const float *L = lo[cut], *H = hi[cut];
	for (size_t k = 0; k < K; k++) {
		memcpy(x, slots[k] + j0, len * sizeof(float));
		for (size_t j = 0; j < AGG_TILE; j++) {
			float v = x[j];
			int in = (v > L[j]) & (v < H[j]);
			sum[j] += (double)(v * (float)in); /* v is finite: v * 0 == 0 */
			nlt[j] += v < L[j];
			neql[j] += v == L[j];
			ngt[j] += v > H[j];
			neqh[j] += v == H[j];
		}
	}
	long a0 = (long)cut, a1 = (long)K - 1 - (long)cut; /* kept ranks */
	for (size_t j = 0; j < len; j++) {
		double m;
		if (L[j] == H[j]) {
			m = L[j];
		} else {
			/* ranks holding lo: [nlt, nlt + neql - 1]; hi: [K - ngt - neqh, K - ngt -
			 * 1] */
			long l0 = nlt[j], l1 = (long)nlt[j] + neql[j] - 1;
			long h0 = (long)K - ngt[j] - neqh[j], h1 = (long)K - 1 - ngt[j];
			long ml = (l1 < a1 ? l1 : a1) - (l0 > a0 ? l0 : a0) + 1;
			long mh = (h1 < a1 ? h1 : a1) - (h0 > a0 ? h0 : a0) + 1;
			m = sum[j] + (ml > 0 ? (double)ml * L[j] : 0.0) +
			    (mh > 0 ? (double)mh * H[j] : 0.0);
			m /= (double)(a1 - a0 + 1);
		}
		out[j0 + j] = (float)m;
	}
}

static int robust_mean(agg *a, float *out)
{
	size_t K = a->nslots;
	size_t cut = 0;
	if (a->o.strategy == AGG_TRIMMED_MEAN) {
		cut = (size_t)floor(a->o.trim * (double)K);
		if (2 * cut >= K)
			cut = (K - 1) / 2;
	}
	size_t ntiles = (a->numel + AGG_TILE - 1) / AGG_TILE;
	float *const *slots = a->slots;
	enum agg_strategy s = a->o.strategy;
	size_t numel = a->numel;
	if (s == AGG_TRIMMED_MEAN && cut <= AGG_FAST_CUT_MAX) {
#pragma omp parallel for schedule(static)
		for (size_t t = 0; t < ntiles; t++) {
			size_t j0 = t * AGG_TILE;
			size_t len = numel - j0 < AGG_TILE ? numel - j0 : AGG_TILE;
			trimmed_tile(slots, K, cut, j0, len, out);
		}
		return 0;
	}
	int nth = omp_get_max_threads();
	if (nth < 1)
		nth = 1;
	float *cols = malloc((size_t)nth * K * AGG_TILE * sizeof(float));
	if (!cols)
		return FL_ENOMEM;
#pragma omp parallel num_threads(nth)
	{
		float *col = cols + (size_t)omp_get_thread_num() * K * AGG_TILE;
#pragma omp for schedule(static)
		for (size_t t = 0; t < ntiles; t++) {
			size_t j0 = t * AGG_TILE;
			size_t len = numel - j0 < AGG_TILE ? numel - j0 : AGG_TILE;
			/* transpose: col[j*K + k] = slot k, coordinate j0 + j */
			for (size_t k = 0; k < K; k++) {
				const float *src = slots[k] + j0;
				for (size_t j = 0; j < len; j++)
					col[j * K + k] = src[j];
			}
			for (size_t j = 0; j < len; j++)
				out[j0 + j] = (float)robust_reduce(s, col + j * K, K, cut);
		}
	}
	free(cols);
	return 0;
}

int agg_finish(agg *a, tset *step)
{
	int dp = a->o.dp_clip > 0;
	if (a->count == 0 && !dp)
		return FL_ESTATE;
	if (tset_same_layout(step, a->lay))
		return FL_EMISMATCH;
	const agg_opts *o = &a->o;
	int rc = 0;
	/* g = the aggregated delta (pseudo-gradient), written into step first */
	if (agg_strategy_buffers(o->strategy)) {
		float *flat = malloc((a->numel ? a->numel : 1) * sizeof(float));
		if (!flat)
			return FL_ENOMEM;
		rc = robust_mean(a, flat);
		if (rc) {
			free(flat);
			return rc;
		}
		for (size_t i = 0; i < a->nt; i++) {
			tensor *d = tset_find(step, a->tl[i]->name);
			memcpy(d->data, flat + a->off[i], d->n * sizeof(float));
		}
		free(flat);
	} else if (dp) {
		/* DP-FedAvg: (sum + N(0, (z C)^2 I)) / expected count, in double */
		double inv = 1.0 / a->o.dp_denom;
		for (size_t i = 0; i < a->nt; i++) {
			tensor *d = tset_find(step, a->tl[i]->name);
			const float *acc = a->tacc[i]->data;
			double *x = a->dscratch;
			for (size_t k = 0; k < d->n; k++)
				x[k] = acc[k];
			if (a->o.dp_noise_std > 0 &&
			    dp_rng_add_gauss(a->noise, a->o.dp_noise_std, x, d->n))
				return FL_ECRYPTO;
			for (size_t k = 0; k < d->n; k++)
				d->data[k] = (float)(x[k] * inv);
		}
	} else if (a->mixed) {
		slot_mean(a, step);
	} else {
		double inv = 1.0 / a->wsum;
		for (size_t i = 0; i < a->nt; i++) {
			tensor *d = tset_find(step, a->tl[i]->name);
			const float *acc = a->tacc[i]->data;
			for (size_t k = 0; k < d->n; k++)
				d->data[k] = (float)((double)acc[k] * inv);
		}
	}
	/* server optimiser: step = eta * f(g) */
	double eta = o->server_lr;
	int finite = 1;
	for (size_t i = 0; i < a->nt; i++) {
		tensor *d = tset_find(step, a->tl[i]->name);
		float *x = d->data;
		size_t n = d->n;
		if (o->strategy == AGG_FEDAVGM) {
			const float *m = tset_find(a->m, d->name)->data;
			float *mn = tset_find(a->m_new, d->name)->data;
			for (size_t k = 0; k < n; k++) {
				mn[k] = (float)(o->momentum * m[k] + (double)x[k]);
				x[k] = (float)(eta * mn[k]);
			}
		} else if (o->strategy == AGG_FEDADAM || o->strategy == AGG_FEDYOGI) {
			const float *m = tset_find(a->m, d->name)->data;
			const float *v = tset_find(a->v, d->name)->data;
			float *mn = tset_find(a->m_new, d->name)->data;
			float *vn = tset_find(a->v_new, d->name)->data;
			int yogi = o->strategy == AGG_FEDYOGI;
			for (size_t k = 0; k < n; k++) {
				double g = x[k], g2 = g * g;
				double mk = o->beta1 * m[k] + (1 - o->beta1) * g;
				double vk;
				if (yogi) {
					double dv = (double)v[k] - g2;
					double sg = dv > 0 ? 1.0 : dv < 0 ? -1.0 : 0.0;
					vk = v[k] - (1 - o->beta2) * g2 * sg;
				} else {
					vk = o->beta2 * v[k] + (1 - o->beta2) * g2;
				}
				mn[k] = (float)mk;
				vn[k] = (float)vk;
				x[k] =
				    (float)(eta * (double)mn[k] / (sqrt((double)vn[k]) + o->tau));
			}
		} else if (eta != 1.0) {
			for (size_t k = 0; k < n; k++)
				x[k] = (float)(eta * x[k]);
		}
		for (size_t k = 0; k < n && finite; k++)
			if (!isfinite(x[k]))
				finite = 0;
	}
	if (!finite) {
		LOGW("agg", "aggregated step is not finite; round result discarded");
		rc = FL_ENUMERIC;
		a->have_new = 0;
		return rc;
	}
	a->have_new = has_m(o->strategy);
	return 0;
}

void agg_commit_state(agg *a)
{
	if (!a->have_new)
		return;
	tset *t = a->m;
	a->m = a->m_new;
	a->m_new = t;
	if (a->v) {
		t = a->v;
		a->v = a->v_new;
		a->v_new = t;
	}
	a->have_new = 0;
}

static int state_name(char *out, size_t cap, char which, const char *name)
{
	int n = snprintf(out, cap, "opt.%c.%s", which, name);
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

int agg_state_export(const agg *a, int pending, tset **out)
{
	tset *s = NULL;
	int rc = tset_new(&s);
	char nm[TSET_NAME_MAX + 1];
	const tset *m = pending && a->have_new ? a->m_new : a->m;
	const tset *v = pending && a->have_new ? a->v_new : a->v;
	for (size_t i = 0; !rc && m && i < a->nt; i++) {
		const tensor *t = tset_find(m, a->tl[i]->name);
		rc = state_name(nm, sizeof nm, 'm', t->name);
		if (!rc)
			rc = tset_insert(s, nm, t->ndim, t->shape, t->data, NULL);
	}
	for (size_t i = 0; !rc && v && i < a->nt; i++) {
		const tensor *t = tset_find(v, a->tl[i]->name);
		rc = state_name(nm, sizeof nm, 'v', t->name);
		if (!rc)
			rc = tset_insert(s, nm, t->ndim, t->shape, t->data, NULL);
	}
	if (rc) {
		tset_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

int agg_state_import(agg *a, const tset *st)
{
	size_t want = (a->m ? a->nt : 0) + (a->v ? a->nt : 0);
	if (tset_count(st) != want)
		return FL_EMISMATCH;
	char nm[TSET_NAME_MAX + 1];
	/* check everything first */
	for (int pass = 0; pass < 2; pass++) {
		for (int which = 0; which < 2; which++) {
			tset *dst = which ? a->v : a->m;
			if (!dst)
				continue;
			for (size_t i = 0; i < a->nt; i++) {
				const tensor *t = tset_find(dst, a->tl[i]->name);
				if (state_name(nm, sizeof nm, which ? 'v' : 'm', t->name))
					return FL_EMISMATCH;
				const tensor *s = tset_find(st, nm);
				if (!s || s->ndim != t->ndim || s->n != t->n ||
				    memcmp(s->shape, t->shape, t->ndim * sizeof t->shape[0]))
					return FL_EMISMATCH;
				if (pass == 0) {
					for (size_t k = 0; k < s->n; k++)
						if (!isfinite(s->data[k]))
							return FL_EMISMATCH;
				} else {
					memcpy(t->data, s->data, t->n * sizeof(float));
				}
			}
		}
	}
	a->have_new = 0;
	return 0;
}
