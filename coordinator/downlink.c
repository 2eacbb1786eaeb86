/* downlink — the global adapter on the downlink grid (downlink.h). */
#include "downlink.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "quant.h"

struct down {
	quant_params qp;
	tset *r;     /* residual, shaped like the layout */
	tset *r_new; /* pending residual of the last down_next */
	tset *x;     /* scratch: g + step */
	int pending; /* r_new holds an uncommitted residual */
	qtensor *q;  /* grid encoding of the current version, one per tensor */
	size_t nq;
	int have_q;
};

int down_new(enum qt_fmt fmt, uint32_t block, const tset *layout, down **out)
{
	down *d = NULL;
	int rc;
	if (fmt == QT_F32 || qt_check_fmt_block(fmt, block))
		return FL_EINVAL;
	d = calloc(1, sizeof *d);
	if (!d)
		return FL_ENOMEM;
	d->qp.fmt = fmt;
	d->qp.block = block;
	d->qp.round = QUANT_NEAREST;
	if ((rc = quant_check_params(&d->qp)) != 0)
		goto fail;
	d->nq = tset_count(layout);
	d->q = calloc(d->nq ? d->nq : 1, sizeof *d->q);
	if (!d->q) {
		rc = FL_ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < d->nq; i++)
		qt_init(&d->q[i]);
	if ((rc = tset_zeros_like(layout, &d->r)) != 0 ||
	    (rc = tset_zeros_like(layout, &d->r_new)) != 0 ||
	    (rc = tset_zeros_like(layout, &d->x)) != 0)
		goto fail;
	*out = d;
	return 0;
fail:
	down_free(d);
	return rc;
}

void down_free(down *d)
{
	if (!d)
		return;
	for (size_t i = 0; d->q && i < d->nq; i++)
		qt_fini(&d->q[i]);
	free(d->q);
	tset_free(d->r);
	tset_free(d->r_new);
	tset_free(d->x);
	free(d);
}

/* x = g (+ step by name); FL_EMISMATCH when g or step do not fit. */
static int gather(down *d, const tset *g, const tset *step)
{
	int rc = tset_same_layout(g, d->x);
	if (!rc)
		rc = tset_copy(d->x, g);
	if (rc)
		return rc;
	for (size_t i = 0; step && i < tset_count(step); i++) {
		const tensor *s = tset_at(step, i);
		tensor *t = tset_find(d->x, s->name);
		if (!t || t->n != s->n || t->ndim != s->ndim ||
		    memcmp(t->shape, s->shape, t->ndim * sizeof t->shape[0]))
			return FL_EMISMATCH;
		for (size_t k = 0; k < t->n; k++)
			t->data[k] += s->data[k];
	}
	return 0;
}

/* out = deq(d->q), shaped like the layout. */
static int decode_all(const down *d, tset **out)
{
	tset *t = NULL;
	int rc = tset_zeros_like(d->x, &t);
	for (size_t i = 0; !rc && i < d->nq; i++) {
		tensor *dt = tset_at(t, i);
		rc = quant_decode(&d->q[i], dt->data, dt->n);
	}
	if (rc) {
		tset_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

int down_next(down *d, const tset *g, const tset *step, tset **out)
{
	int rc = gather(d, g, step);
	if (rc)
		return rc;
	d->have_q = 0;
	if ((rc = tset_copy(d->r_new, d->r)) != 0)
		return rc;
	for (size_t i = 0; i < d->nq; i++) {
		rc = quant_encode_tensor_ef(&d->qp, tset_at(d->x, i), tset_at(d->r_new, i),
		                            &d->q[i]);
		if (rc)
			return rc;
	}
	tset *ng = NULL;
	if ((rc = decode_all(d, &ng)) != 0)
		return rc;
	d->have_q = 1;
	d->pending = 1;
	*out = ng;
	return 0;
}

void down_commit(down *d)
{
	if (!d->pending)
		return;
	tset *t = d->r;
	d->r = d->r_new;
	d->r_new = t;
	d->pending = 0;
}

const qtensor *down_grid(const down *d, size_t *n)
{
	*n = d->have_q ? d->nq : 0;
	return d->have_q ? d->q : NULL;
}

int down_reencode(down *d, const tset *g)
{
	d->have_q = 0;
	int rc = gather(d, g, NULL);
	for (size_t i = 0; !rc && i < d->nq; i++)
		rc = quant_encode_tensor(&d->qp, tset_at(d->x, i), &d->q[i]);
	if (rc)
		return rc;
	tset *back = NULL;
	if ((rc = decode_all(d, &back)) != 0)
		return rc;
	/* bit for bit: compare the representations, not the values (-0 vs 0) */
	for (size_t i = 0; !rc && i < d->nq; i++) {
		const tensor *a = tset_at(back, i), *b = tset_find(g, a->name);
		if (memcmp(a->data, b->data, a->n * sizeof(float)))
			rc = FL_EMISMATCH;
	}
	tset_free(back);
	d->have_q = rc == 0;
	return rc;
}

static int state_name(char *out, size_t cap, const char *name)
{
	int n = snprintf(out, cap, "%s%s", DOWN_STATE_PREFIX, name);
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

int down_state_export(const down *d, int pending, tset *st)
{
	const tset *r = pending && d->pending ? d->r_new : d->r;
	char nm[TSET_NAME_MAX + 1];
	for (size_t i = 0; i < tset_count(r); i++) {
		const tensor *t = tset_at(r, i);
		int rc = state_name(nm, sizeof nm, t->name);
		if (!rc)
			rc = tset_insert(st, nm, t->ndim, t->shape, t->data, NULL);
		if (rc)
			return rc;
	}
	return 0;
}

int down_state_import(down *d, const tset *st, tset **rest, size_t *bad)
{
	tset *o = NULL;
	size_t nbad = 0;
	int rc = tset_new(&o);
	size_t plen = strlen(DOWN_STATE_PREFIX);
	for (size_t i = 0; !rc && i < tset_count(st); i++) {
		const tensor *t = tset_at(st, i);
		if (strncmp(t->name, DOWN_STATE_PREFIX, plen) != 0)
			rc = tset_insert(o, t->name, t->ndim, t->shape, t->data, NULL);
	}
	if (rc) {
		tset_free(o);
		return rc;
	}
	char nm[TSET_NAME_MAX + 1];
	tset_zero(d->r);
	for (size_t i = 0; i < tset_count(d->r); i++) {
		tensor *r = tset_at(d->r, i);
		const tensor *s = state_name(nm, sizeof nm, r->name) ? NULL : tset_find(st, nm);
		int ok = s && s->ndim == r->ndim && s->n == r->n &&
		         !memcmp(s->shape, r->shape, r->ndim * sizeof r->shape[0]);
		for (size_t k = 0; ok && k < s->n; k++)
			ok = isfinite(s->data[k]);
		if (ok)
			memcpy(r->data, s->data, r->n * sizeof(float));
		else
			nbad++;
	}
	d->pending = 0;
	*rest = o;
	*bad = nbad;
	return 0;
}
