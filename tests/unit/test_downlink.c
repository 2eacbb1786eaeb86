/* Unit tests for downlink (the global adapter on the downlink grid):
 * nothing is lost (version + residual = v0 + the sum of the steps, against
 * a double-precision sum), every version lies on the grid and re-encodes to
 * itself, the residual stays within half a level, an uncommitted version
 * leaves the residual alone, and the residual's save/load. */
#include "testutil.h"

#include "downlink.h"
#include "err.h"
#include "half.h"
#include "quant.h"
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Three tensors; "t.c" has 150 elements (the last block is short). */
static tset *mk_layout(void)
{
	tset *l;
	assert_int_equal(tset_new(&l), 0);
	uint64_t a[2] = {4, 48}, b[2] = {32, 4}, c[2] = {5, 30};
	assert_int_equal(tset_insert(l, "t.a", 2, a, NULL, NULL), 0);
	assert_int_equal(tset_insert(l, "t.b", 2, b, NULL, NULL), 0);
	assert_int_equal(tset_insert(l, "t.c", 2, c, NULL, NULL), 0);
	return l;
}

static void fill(tset *t, double amp, uint64_t *rs)
{
	for (size_t i = 0; i < tset_count(t); i++) {
		tensor *x = tset_at(t, i);
		for (size_t k = 0; k < x->n; k++)
			x->data[k] = (float)((tu_randu(rs) * 2 - 1) * amp);
	}
}

/* The residual as a set (DOWN_STATE_PREFIX names). */
static tset *residual(const down *d)
{
	tset *r;
	assert_int_equal(tset_new(&r), 0);
	assert_int_equal(down_state_export(d, 0, r), 0);
	return r;
}

static void check_grid(const down *d, const tset *g, const tset *r, enum qt_fmt fmt)
{
	size_t nq;
	const qtensor *q = down_grid(d, &nq);
	assert_non_null(q);
	assert_int_equal(nq, tset_count(g));
	double half = fmt == QT_Q2 ? 1.0 : 0.5; /* q2's levels are 2 apart */
	for (size_t i = 0; i < nq; i++) {
		const tensor *gt = tset_find(g, q[i].name);
		char nm[TSET_NAME_MAX + 16];
		snprintf(nm, sizeof nm, "%s%s", DOWN_STATE_PREFIX, q[i].name);
		const tensor *rt = tset_find(r, nm);
		assert_non_null(gt);
		assert_non_null(rt);
		float *dq = malloc(gt->n * sizeof *dq);
		assert_int_equal(quant_decode(&q[i], dq, gt->n), 0);
		assert_memory_equal(dq, gt->data, gt->n * sizeof *dq); /* g = deq(q) */
		free(dq);
		for (size_t k = 0; k < gt->n; k++) {
			size_t j = k / q[i].block;
			double s = half_to_f32(
			    (uint16_t)(q[i].scales[2 * j] | q[i].scales[2 * j + 1] << 8));
			if (fabs(rt->data[k]) > half * s * (1 + 1e-3) + 1e-12)
				fail_msg("%s[%zu]: residual %g beyond half a level (scale %g)",
				         q[i].name, k, rt->data[k], s);
		}
	}
}

static void grid_invariant(enum qt_fmt fmt)
{
	tset *l = mk_layout(), *g = NULL, *step = NULL, *ng = NULL;
	down *d = NULL;
	assert_int_equal(down_new(fmt, 32, l, &d), 0);
	uint64_t rs = 7 + (uint64_t)fmt;
	assert_int_equal(tset_clone(l, &g), 0);
	fill(g, 0.1, &rs);
	/* reference: v0 + the sum of the steps, in double */
	size_t n = tset_numel(g);
	double *ref = calloc(n, sizeof *ref);
	for (size_t i = 0, o = 0; i < tset_count(g); o += tset_at(g, i)->n, i++)
		for (size_t k = 0; k < tset_at(g, i)->n; k++)
			ref[o + k] = tset_at(g, i)->data[k];
	assert_int_equal(down_next(d, g, NULL, &ng), 0);
	down_commit(d);
	tset_free(g);
	g = ng;
	/* steps on t.b and t.c only, like FFA's lora_b: t.a keeps its grid */
	assert_int_equal(tset_new(&step), 0);
	uint64_t sb[2] = {32, 4}, sc[2] = {5, 30};
	assert_int_equal(tset_insert(step, "t.c", 2, sc, NULL, NULL), 0);
	assert_int_equal(tset_insert(step, "t.b", 2, sb, NULL, NULL), 0);
	double maxdev = 0;
	for (int round = 1; round <= 30; round++) {
		fill(step, 0.01, &rs);
		for (size_t i = 0, o = 0; i < tset_count(g); o += tset_at(g, i)->n, i++) {
			const tensor *s = tset_find(step, tset_at(g, i)->name);
			for (size_t k = 0; s && k < s->n; k++)
				ref[o + k] += s->data[k];
		}
		float a0 = tset_find(g, "t.a")->data[0];
		assert_int_equal(down_next(d, g, step, &ng), 0);
		down_commit(d);
		tset_free(g);
		g = ng;
		assert_true(tset_find(g, "t.a")->data[0] == a0); /* no step: stays */
		tset *r = residual(d);
		check_grid(d, g, r, fmt);
		for (size_t i = 0, o = 0; i < tset_count(g); o += tset_at(g, i)->n, i++) {
			const tensor *gt = tset_at(g, i);
			char nm[TSET_NAME_MAX + 16];
			snprintf(nm, sizeof nm, "%s%s", DOWN_STATE_PREFIX, gt->name);
			const tensor *rt = tset_find(r, nm);
			for (size_t k = 0; k < gt->n; k++) {
				double dev = fabs((double)gt->data[k] + rt->data[k] - ref[o + k]);
				maxdev = dev > maxdev ? dev : maxdev;
			}
		}
		tset_free(r);
	}
	/* each round adds at most a few f32 roundings of values below 0.5:
	 * 30 rounds x 4 x 2^-24 x 0.5 < 4e-6 */
	print_message("%s: max |version + residual - (v0 + sum of steps)| = %.3g after 30 rounds\n",
	              qt_fmt_name(fmt), maxdev);
	assert_true(maxdev < 4e-6);
	/* the version re-encodes to itself: the same grid bytes */
	size_t nq;
	const qtensor *q = down_grid(d, &nq);
	qtensor *keep = calloc(nq, sizeof *keep);
	for (size_t i = 0; i < nq; i++) {
		qt_init(&keep[i]);
		assert_int_equal(qt_copy(&keep[i], &q[i]), 0);
	}
	assert_int_equal(down_reencode(d, g), 0);
	q = down_grid(d, &nq);
	for (size_t i = 0; i < nq; i++) {
		assert_int_equal(q[i].scales_len, keep[i].scales_len);
		assert_int_equal(q[i].data_len, keep[i].data_len);
		assert_memory_equal(q[i].scales, keep[i].scales, q[i].scales_len);
		assert_memory_equal(q[i].data, keep[i].data, q[i].data_len);
		qt_fini(&keep[i]);
	}
	free(keep);
	free(ref);
	tset_free(step);
	tset_free(g);
	tset_free(l);
	down_free(d);
}

static void test_grid_q8(void **st)
{
	(void)st;
	grid_invariant(QT_Q8);
}

static void test_grid_q4(void **st)
{
	(void)st;
	grid_invariant(QT_Q4);
}

static void test_grid_q2(void **st)
{
	(void)st;
	grid_invariant(QT_Q2);
}

/* A version off the grid is refused by down_reencode; an uncommitted
 * down_next leaves the residual; bad formats and shapes. */
static void test_reencode_and_pending(void **st)
{
	(void)st;
	tset *l = mk_layout(), *g = NULL, *a = NULL, *b = NULL, *step = NULL;
	down *d = NULL;
	assert_int_equal(down_new(QT_F32, 0, l, &d), FL_EINVAL);
	assert_int_equal(down_new(QT_Q4, 48, l, &d), FL_EINVAL);
	assert_int_equal(down_new(QT_Q4, 32, l, &d), 0);
	uint64_t rs = 3;
	assert_int_equal(tset_clone(l, &g), 0);
	fill(g, 0.1, &rs);
	size_t nq;
	assert_null(down_grid(d, &nq));
	assert_int_equal(down_reencode(d, g), FL_EMISMATCH);
	assert_null(down_grid(d, &nq));
	assert_int_equal(nq, 0);
	/* two down_next without a commit in between give the same version */
	assert_int_equal(tset_clone(l, &step), 0);
	fill(step, 0.01, &rs);
	assert_int_equal(down_next(d, g, step, &a), 0);
	assert_int_equal(down_next(d, g, step, &b), 0);
	for (size_t i = 0; i < tset_count(a); i++)
		assert_memory_equal(tset_at(a, i)->data, tset_at(b, i)->data,
		                    tset_at(a, i)->n * sizeof(float));
	/* a step with a tensor that is not in the layout, or misshapen */
	tset *bad;
	assert_int_equal(tset_new(&bad), 0);
	uint64_t sh[1] = {7};
	assert_int_equal(tset_insert(bad, "t.a", 1, sh, NULL, NULL), 0);
	tset *x = NULL;
	assert_int_equal(down_next(d, g, bad, &x), FL_EMISMATCH);
	assert_null(x);
	tset_free(bad);
	tset_free(a);
	tset_free(b);
	tset_free(step);
	tset_free(g);
	tset_free(l);
	down_free(d);
}

/* Residual save and load: the optimiser's own tensors pass through. */
static void test_state(void **st)
{
	(void)st;
	tset *l = mk_layout(), *g = NULL, *ng = NULL, *save = NULL, *rest = NULL;
	down *d = NULL, *e = NULL;
	assert_int_equal(down_new(QT_Q4, 32, l, &d), 0);
	assert_int_equal(down_new(QT_Q4, 32, l, &e), 0);
	uint64_t rs = 11;
	assert_int_equal(tset_clone(l, &g), 0);
	fill(g, 0.1, &rs);
	assert_int_equal(down_next(d, g, NULL, &ng), 0);
	/* pending: the committed residual is still zero */
	assert_int_equal(tset_new(&save), 0);
	assert_int_equal(down_state_export(d, 0, save), 0);
	assert_true(tset_at(save, 0)->data[0] == 0.0f);
	tset_free(save);
	assert_int_equal(tset_new(&save), 0);
	uint64_t sh[1] = {3};
	assert_int_equal(tset_insert(save, "opt.m.t.a", 1, sh, NULL, NULL), 0);
	assert_int_equal(down_state_export(d, 1, save), 0);
	assert_int_equal(tset_count(save), 4);
	size_t bad = 9;
	assert_int_equal(down_state_import(e, save, &rest, &bad), 0);
	assert_int_equal(bad, 0);
	assert_int_equal(tset_count(rest), 1);
	assert_non_null(tset_find(rest, "opt.m.t.a"));
	tset_free(rest);
	down_commit(d);
	tset *r1 = residual(d), *r2 = residual(e);
	for (size_t i = 0; i < tset_count(r1); i++)
		assert_memory_equal(tset_at(r1, i)->data, tset_find(r2, tset_at(r1, i)->name)->data,
		                    tset_at(r1, i)->n * sizeof(float));
	tset_free(r2);
	/* a damaged entry (NaN) and a missing one count as bad, start at zero */
	tset_find(save, DOWN_STATE_PREFIX "t.b")->data[5] = NAN;
	tset *partial;
	assert_int_equal(tset_new(&partial), 0);
	for (size_t i = 0; i < tset_count(save); i++) {
		const tensor *t = tset_at(save, i);
		if (strcmp(t->name, DOWN_STATE_PREFIX "t.c"))
			assert_int_equal(
			    tset_insert(partial, t->name, t->ndim, t->shape, t->data, NULL), 0);
	}
	assert_int_equal(down_state_import(e, partial, &rest, &bad), 0);
	assert_int_equal(bad, 2);
	r2 = residual(e);
	assert_true(tset_find(r2, DOWN_STATE_PREFIX "t.b")->data[5] == 0.0f);
	assert_true(tset_find(r2, DOWN_STATE_PREFIX "t.a")->data[0] ==
	            tset_find(r1, DOWN_STATE_PREFIX "t.a")->data[0]);
	tset_free(r1);
	tset_free(r2);
	tset_free(rest);
	tset_free(partial);
	tset_free(save);
	tset_free(ng);
	tset_free(g);
	tset_free(l);
	down_free(d);
	down_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_grid_q8), cmocka_unit_test(test_grid_q4),
	    cmocka_unit_test(test_grid_q2), cmocka_unit_test(test_reencode_and_pending),
	    cmocka_unit_test(test_state),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
