/* agg: every strategy against a double-precision reference computed here
 * from the dequantized updates; FedAvg of identical updates is that update;
 * weights follow sample counts; clipping, refusals, FFA-LoRA, buffer cap,
 * optimiser state export/import and shadow semantics. */
#include "testutil.h"

#include "agg.h"
#include "err.h"
#include "fedlora.pb-c.h"
#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A small adapter with sizes that are not multiples of the block. */
static tset *mk_layout(void)
{
	tset *s;
	assert_int_equal(tset_new(&s), 0);
	uint64_t a0[2] = {4, 40}, b0[2] = {24, 4}, a1[2] = {4, 72}, b1[2] = {40, 4};
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_a", 2, a0, NULL, NULL), 0);
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_b", 2, b0, NULL, NULL), 0);
	assert_int_equal(tset_insert(s, "blk.1.ffn_down.lora_a", 2, a1, NULL, NULL), 0);
	assert_int_equal(tset_insert(s, "blk.1.ffn_down.lora_b", 2, b1, NULL, NULL), 0);
	return s;
}

/* One quantized update over the tensors of lay (exchanged subset). */
typedef struct upd {
	size_t nq;
	qtensor q[8];
	double *deq[8]; /* dequantized values (the reference's input) */
} upd;

static void upd_make(upd *u, const tset *lay, enum qt_fmt fmt, double sigma, uint64_t *seed)
{
	memset(u, 0, sizeof *u);
	u->nq = tset_count(lay);
	assert_true(u->nq <= 8);
	quant_params p = {.fmt = fmt, .block = (fmt == QT_F32 || fmt == QT_F16) ? 0 : 32};
	for (size_t i = 0; i < u->nq; i++) {
		const tensor *t = tset_at(lay, i);
		float *x = malloc(t->n * sizeof(float));
		float *d = malloc(t->n * sizeof(float));
		for (size_t k = 0; k < t->n; k++)
			x[k] = (float)((tu_randu(seed) * 2 - 1) * sigma);
		qt_init(&u->q[i]);
		assert_int_equal(quant_encode(&p, t->name, x, t->ndim, t->shape, &u->q[i]), 0);
		assert_int_equal(quant_decode(&u->q[i], d, t->n), 0);
		u->deq[i] = malloc(t->n * sizeof(double));
		for (size_t k = 0; k < t->n; k++)
			u->deq[i][k] = d[k];
		free(x);
		free(d);
	}
}

static void upd_free(upd *u)
{
	for (size_t i = 0; i < u->nq; i++) {
		qt_fini(&u->q[i]);
		free(u->deq[i]);
	}
}

static double upd_norm(const upd *u, const tset *lay)
{
	double s = 0;
	for (size_t i = 0; i < u->nq; i++)
		for (size_t k = 0; k < tset_at(lay, i)->n; k++)
			s += u->deq[i][k] * u->deq[i][k];
	return sqrt(s);
}

/* max |got - want| / max(1e-30, max |want|) over all tensors */
static double rel_err(const tset *got, const tset *lay, double *const *want)
{
	double num = 0, den = 1e-30;
	for (size_t i = 0; i < tset_count(lay); i++) {
		const tensor *t = tset_find(got, tset_at(lay, i)->name);
		for (size_t k = 0; k < t->n; k++) {
			double e = fabs((double)t->data[k] - want[i][k]);
			if (e > num)
				num = e;
			if (fabs(want[i][k]) > den)
				den = fabs(want[i][k]);
		}
	}
	return num / den;
}

#define ASSERT_REL(err, tol)                                                                       \
	do {                                                                                       \
		double e_ = (err), t_ = (tol);                                                     \
		if (!(e_ <= t_))                                                                   \
			fail_msg("relative error %.3g > tolerance %.3g", e_, t_);                  \
	} while (0)

static double **ref_alloc(const tset *lay)
{
	double **r = calloc(tset_count(lay), sizeof *r);
	for (size_t i = 0; i < tset_count(lay); i++)
		r[i] = calloc(tset_at(lay, i)->n, sizeof(double));
	return r;
}

static void ref_free(double **r, const tset *lay)
{
	for (size_t i = 0; i < tset_count(lay); i++)
		free(r[i]);
	free(r);
}

static void add_ok(agg *a, upd *u, uint64_t samples)
{
	agg_result res;
	assert_int_equal(agg_add(a, u->q, u->nq, samples, &res), 0);
	if (res.verdict != AGG_ACCEPTED)
		fail_msg("update refused: %s (%s)", agg_verdict_name(res.verdict), res.why);
}

/* ---- FedAvg ---- */

static void test_fedavg_identical(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	uint64_t seed = 1;
	upd u;
	upd_make(&u, lay, QT_Q4, 0.01, &seed);
	agg_begin(a);
	uint64_t counts[5] = {3, 100, 7, 1, 55};
	for (int i = 0; i < 5; i++)
		add_ok(a, &u, counts[i]);
	assert_int_equal(agg_count(a), 5);
	assert_true(agg_weight_sum(a) == 166.0);
	tset *step;
	assert_int_equal(tset_zeros_like(agg_layout(a), &step), 0);
	assert_int_equal(agg_finish(a, step), 0);
	/* Mean of identical values: within a few float roundings of the value. */
	ASSERT_REL(rel_err(step, lay, u.deq), 4e-7);
	tset_free(step);
	upd_free(&u);
	agg_free(a);
	tset_free(lay);
}

static void test_fedavg_weights(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	uint64_t seed = 2;
	enum qt_fmt fmts[4] = {QT_Q8, QT_Q4, QT_F16, QT_Q2};
	uint64_t n[4] = {1, 3, 10, 86};
	upd u[4];
	for (int i = 0; i < 4; i++)
		upd_make(&u[i], lay, fmts[i], 0.05 * (i + 1), &seed);
	agg_begin(a);
	for (int i = 0; i < 4; i++)
		add_ok(a, &u[i], n[i]);
	double **ref = ref_alloc(lay);
	for (size_t t = 0; t < tset_count(lay); t++)
		for (size_t k = 0; k < tset_at(lay, t)->n; k++) {
			double acc = 0;
			for (int i = 0; i < 4; i++)
				acc += (double)n[i] / 100.0 * u[i].deq[t][k];
			ref[t][k] = acc;
		}
	tset *step;
	assert_int_equal(tset_zeros_like(agg_layout(a), &step), 0);
	assert_int_equal(agg_finish(a, step), 0);
	ASSERT_REL(rel_err(step, lay, ref), 1e-6);
	/* weights are proportional to sample counts: with uniform weighting the
	 * result differs and equals the plain mean */
	agg_free(a);
	o.weighting = AGG_W_UNIFORM;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	agg_begin(a);
	for (int i = 0; i < 4; i++)
		add_ok(a, &u[i], n[i]);
	assert_int_equal(agg_finish(a, step), 0);
	for (size_t t = 0; t < tset_count(lay); t++)
		for (size_t k = 0; k < tset_at(lay, t)->n; k++) {
			double acc = 0;
			for (int i = 0; i < 4; i++)
				acc += 0.25 * u[i].deq[t][k];
			ref[t][k] = acc;
		}
	ASSERT_REL(rel_err(step, lay, ref), 1e-6);
	/* max_weight caps a node claiming a huge sample count */
	agg_free(a);
	o.weighting = AGG_W_SAMPLES;
	o.max_weight = 10;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	agg_begin(a);
	add_ok(a, &u[0], 10);
	add_ok(a, &u[1], 1000000000000ull);
	assert_true(agg_weight_sum(a) == 20.0);
	assert_int_equal(agg_finish(a, step), 0);
	for (size_t t = 0; t < tset_count(lay); t++)
		for (size_t k = 0; k < tset_at(lay, t)->n; k++)
			ref[t][k] = 0.5 * u[0].deq[t][k] + 0.5 * u[1].deq[t][k];
	ASSERT_REL(rel_err(step, lay, ref), 1e-6);
	ref_free(ref, lay);
	tset_free(step);
	for (int i = 0; i < 4; i++)
		upd_free(&u[i]);
	agg_free(a);
	tset_free(lay);
}

/* ---- server optimisers over several rounds ---- */

static void run_server_opt(enum agg_strategy strat)
{
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	o.strategy = strat;
	o.server_lr = 0.5;
	o.momentum = 0.8;
	o.beta1 = 0.85;
	o.beta2 = 0.95;
	o.tau = 1e-2;
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	size_t nt = tset_count(lay);
	double **m = ref_alloc(lay), **v = ref_alloc(lay), **ref = ref_alloc(lay);
	for (size_t t = 0; t < nt; t++)
		for (size_t k = 0; k < tset_at(lay, t)->n; k++)
			v[t][k] = o.tau * o.tau;
	uint64_t seed = 10 + (uint64_t)strat;
	tset *step;
	assert_int_equal(tset_zeros_like(lay, &step), 0);
	for (int round = 0; round < 4; round++) {
		upd u[3];
		uint64_t n[3] = {5, 9, 2};
		agg_begin(a);
		for (int i = 0; i < 3; i++) {
			upd_make(&u[i], lay, QT_Q8, 0.02 * (round + 1), &seed);
			add_ok(a, &u[i], n[i]);
		}
		assert_int_equal(agg_finish(a, step), 0);
		agg_commit_state(a);
		for (size_t t = 0; t < nt; t++)
			for (size_t k = 0; k < tset_at(lay, t)->n; k++) {
				double g = 0;
				for (int i = 0; i < 3; i++)
					g += (double)n[i] / 16.0 * u[i].deq[t][k];
				if (strat == AGG_FEDAVGM) {
					m[t][k] = o.momentum * m[t][k] + g;
					ref[t][k] = o.server_lr * m[t][k];
				} else {
					m[t][k] = o.beta1 * m[t][k] + (1 - o.beta1) * g;
					if (strat == AGG_FEDADAM) {
						v[t][k] = o.beta2 * v[t][k] + (1 - o.beta2) * g * g;
					} else {
						double d = v[t][k] - g * g;
						double sg = d > 0 ? 1 : d < 0 ? -1 : 0;
						v[t][k] = v[t][k] - (1 - o.beta2) * g * g * sg;
					}
					ref[t][k] = o.server_lr * m[t][k] / (sqrt(v[t][k]) + o.tau);
				}
			}
		/* f32 state and f32 inputs: a few ulps per round, compounding */
		ASSERT_REL(rel_err(step, lay, ref), 2e-5);
		for (int i = 0; i < 3; i++)
			upd_free(&u[i]);
	}
	ref_free(m, lay);
	ref_free(v, lay);
	ref_free(ref, lay);
	tset_free(step);
	agg_free(a);
	tset_free(lay);
}

static void test_fedavgm(void **s)
{
	(void)s;
	run_server_opt(AGG_FEDAVGM);
}

static void test_fedadam(void **s)
{
	(void)s;
	run_server_opt(AGG_FEDADAM);
}

static void test_fedyogi(void **s)
{
	(void)s;
	run_server_opt(AGG_FEDYOGI);
}

/* ---- coordinate-wise strategies ---- */

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* dup: every even update is the same one (many exact ties) */
static void run_robust_ex(enum agg_strategy strat, int K, double trim, int dup, enum qt_fmt fmt)
{
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	o.strategy = strat;
	o.trim = trim;
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	uint64_t seed = 100 + (uint64_t)K;
	upd *u = calloc((size_t)K, sizeof *u);
	agg_begin(a);
	for (int i = 0; i < K; i++) {
		/* a couple of outliers to make trimming matter */
		uint64_t same = 4242;
		upd_make(&u[i], lay, i % 3 ? fmt : QT_F32, i == 1 ? 50.0 : 0.1,
		         dup && i % 2 == 0 ? &same : &seed);
		add_ok(a, &u[i], (uint64_t)(i + 1) * 7); /* weights ignored here */
	}
	tset *step;
	assert_int_equal(tset_zeros_like(lay, &step), 0);
	assert_int_equal(agg_finish(a, step), 0);
	double **ref = ref_alloc(lay);
	double *col = malloc((size_t)K * sizeof(double));
	int cut = (int)floor(trim * K);
	if (2 * cut >= K)
		cut = (K - 1) / 2;
	for (size_t t = 0; t < tset_count(lay); t++)
		for (size_t k = 0; k < tset_at(lay, t)->n; k++) {
			for (int i = 0; i < K; i++)
				col[i] = u[i].deq[t][k];
			qsort(col, (size_t)K, sizeof(double), cmp_d);
			if (strat == AGG_MEDIAN) {
				ref[t][k] =
				    K % 2 ? col[K / 2] : 0.5 * (col[K / 2 - 1] + col[K / 2]);
			} else {
				double sum = 0;
				for (int i = cut; i < K - cut; i++)
					sum += col[i];
				ref[t][k] = sum / (K - 2 * cut);
			}
		}
	ASSERT_REL(rel_err(step, lay, ref), 1e-6);
	free(col);
	ref_free(ref, lay);
	tset_free(step);
	for (int i = 0; i < K; i++)
		upd_free(&u[i]);
	free(u);
	agg_free(a);
	tset_free(lay);
}

static void run_robust(enum agg_strategy strat, int K, double trim)
{
	run_robust_ex(strat, K, trim, 0, QT_Q4);
}

static void test_median(void **s)
{
	(void)s;
	for (int K = 1; K <= 9; K++)
		run_robust(AGG_MEDIAN, K, 0);
	run_robust(AGG_MEDIAN, 40, 0);
}

static void test_trimmed_mean(void **s)
{
	(void)s;
	for (int K = 1; K <= 9; K++)
		run_robust(AGG_TRIMMED_MEAN, K, 0.2);
	run_robust(AGG_TRIMMED_MEAN, 40, 0.1);
	run_robust(AGG_TRIMMED_MEAN, 10, 0.0);
	run_robust(AGG_TRIMMED_MEAN, 10, 0.49);
	/* ties at the cut (identical updates, q2 levels) */
	run_robust_ex(AGG_TRIMMED_MEAN, 12, 0.25, 1, QT_Q2);
	run_robust_ex(AGG_TRIMMED_MEAN, 9, 0.3, 1, QT_Q2);
	run_robust_ex(AGG_MEDIAN, 12, 0, 1, QT_Q2);
	/* cut above the branch-free path's limit: the selection path */
	run_robust(AGG_TRIMMED_MEAN, 70, 0.49);
}

/* ---- clipping and refusals ---- */

static void test_clip_and_reject(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	o.clip_norm = 1.0;
	o.reject_norm = 1000.0;
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	uint64_t seed = 5;
	upd small, big, huge;
	upd_make(&small, lay, QT_Q8, 0.001, &seed);
	upd_make(&big, lay, QT_Q8, 5.0, &seed);
	upd_make(&huge, lay, QT_F32, 1e6, &seed);
	double nsmall = upd_norm(&small, lay), nbig = upd_norm(&big, lay);
	assert_true(nsmall < 1.0 && nbig > 1.0 && nbig < 1000.0);
	agg_begin(a);
	agg_result r;
	assert_int_equal(agg_add(a, huge.q, huge.nq, 1, &r), 0);
	assert_int_equal(r.verdict, AGG_NORM);
	assert_non_null(strstr(r.why, "reject_norm"));
	assert_int_equal(agg_count(a), 0);
	assert_int_equal(agg_add(a, small.q, small.nq, 1, &r), 0);
	assert_int_equal(r.verdict, AGG_ACCEPTED);
	assert_true(r.scale == 1.0);
	assert_int_equal(agg_add(a, big.q, big.nq, 3, &r), 0);
	assert_int_equal(r.verdict, AGG_ACCEPTED);
	assert_true(fabs(r.norm - nbig) <= 1e-9 * nbig);
	assert_true(fabs(r.scale - 1.0 / nbig) <= 1e-12);
	tset *step;
	assert_int_equal(tset_zeros_like(lay, &step), 0);
	assert_int_equal(agg_finish(a, step), 0);
	double **ref = ref_alloc(lay);
	for (size_t t = 0; t < tset_count(lay); t++)
		for (size_t k = 0; k < tset_at(lay, t)->n; k++)
			ref[t][k] = 0.25 * small.deq[t][k] + 0.75 * big.deq[t][k] / nbig;
	ASSERT_REL(rel_err(step, lay, ref), 1e-6);
	/* the clipped contribution has norm <= clip: the step's norm is bounded */
	assert_true(tset_norm(step) <= 0.25 * nsmall + 0.75 * 1.0 + 1e-6);
	/* without clip or reject, the hard bound still refuses absurd updates */
	agg_free(a);
	agg_opts_default(&o);
	assert_int_equal(agg_new(&o, lay, &a), 0);
	agg_begin(a);
	upd absurd;
	upd_make(&absurd, lay, QT_F32, 1e28, &seed);
	assert_int_equal(agg_add(a, absurd.q, absurd.nq, 1000, &r), 0);
	assert_int_equal(r.verdict, AGG_NORM);
	upd_free(&absurd);
	ref_free(ref, lay);
	tset_free(step);
	upd_free(&small);
	upd_free(&big);
	upd_free(&huge);
	agg_free(a);
	tset_free(lay);
}

static void test_malformed(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	uint64_t seed = 6;
	upd u;
	upd_make(&u, lay, QT_Q4, 0.1, &seed);
	agg_begin(a);
	agg_result r;
	/* too few tensors */
	assert_int_equal(agg_add(a, u.q, u.nq - 1, 1, &r), 0);
	assert_int_equal(r.verdict, AGG_MALFORMED);
	/* samples 0 */
	assert_int_equal(agg_add(a, u.q, u.nq, 0, &r), 0);
	assert_int_equal(r.verdict, AGG_MALFORMED);
	/* duplicate name */
	qtensor dup[4];
	memcpy(dup, u.q, sizeof dup);
	dup[3] = u.q[0];
	assert_int_equal(agg_add(a, dup, 4, 1, &r), 0);
	assert_int_equal(r.verdict, AGG_MALFORMED);
	assert_non_null(strstr(r.why, "twice"));
	/* unknown name */
	memcpy(dup, u.q, sizeof dup);
	snprintf(dup[2].name, sizeof dup[2].name, "blk.9.attn_q.lora_a");
	assert_int_equal(agg_add(a, dup, 4, 1, &r), 0);
	assert_int_equal(r.verdict, AGG_MALFORMED);
	/* wrong shape with the right element count */
	memcpy(dup, u.q, sizeof dup);
	dup[0].shape[0] = 40;
	dup[0].shape[1] = 4;
	assert_int_equal(agg_add(a, dup, 4, 1, &r), 0);
	assert_int_equal(r.verdict, AGG_MALFORMED);
	assert_non_null(strstr(r.why, "shape"));
	assert_int_equal(agg_count(a), 0);
	tset *step;
	assert_int_equal(tset_zeros_like(lay, &step), 0);
	assert_int_equal(agg_finish(a, step), FL_ESTATE);
	tset_free(step);
	/* after all these refusals a good update is still accepted */
	add_ok(a, &u, 1);
	upd_free(&u);
	agg_free(a);
	tset_free(lay);
}

/* NaN in an f32 tensor, and a NaN scale, through the protobuf path. */
static void test_non_finite_payload(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	uint64_t seed = 7;
	upd u;
	upd_make(&u, lay, QT_F32, 0.1, &seed);
	Fedlora__QTensor qm[4], *qp[4];
	for (int i = 0; i < 4; i++) {
		qt_to_proto(&u.q[i], &qm[i]);
		qp[i] = &qm[i];
	}
	Fedlora__AdapterPayload p = FEDLORA__ADAPTER_PAYLOAD__INIT;
	p.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	p.n_tensors = 4;
	p.tensors = qp;
	agg_begin(a);
	agg_result r;
	/* a clean payload goes through */
	assert_int_equal(agg_add_payload(a, &p, 2, &r), 0);
	assert_int_equal(r.verdict, AGG_ACCEPTED);
	/* NaN element */
	float nanv = NAN;
	uint8_t *bytes = malloc(qm[1].data.len);
	memcpy(bytes, qm[1].data.data, qm[1].data.len);
	memcpy(bytes + 8, &nanv, 4);
	qm[1].data.data = bytes;
	assert_int_equal(agg_add_payload(a, &p, 2, &r), 0);
	assert_int_equal(r.verdict, AGG_NON_FINITE);
	/* Inf element */
	float infv = INFINITY;
	memcpy(bytes + 8, &infv, 4);
	assert_int_equal(agg_add_payload(a, &p, 2, &r), 0);
	assert_int_equal(r.verdict, AGG_NON_FINITE);
	free(bytes);
	assert_int_equal(agg_count(a), 1);
	/* wrong kind */
	qt_to_proto(&u.q[1], &qm[1]);
	p.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT;
	assert_int_equal(agg_add_payload(a, &p, 2, &r), 0);
	assert_int_equal(r.verdict, AGG_MALFORMED);
	/* the global step stays finite and equals the one good update */
	tset *step;
	assert_int_equal(tset_zeros_like(lay, &step), 0);
	assert_int_equal(agg_finish(a, step), 0);
	assert_true(tset_all_finite(step, NULL));
	ASSERT_REL(rel_err(step, lay, u.deq), 4e-7);
	tset_free(step);
	upd_free(&u);
	agg_free(a);
	tset_free(lay);
}

/* NaN scale in a q8 tensor */
static void test_nan_scale(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	uint64_t seed = 8;
	upd u;
	upd_make(&u, lay, QT_Q8, 0.1, &seed);
	Fedlora__QTensor qm[4], *qp[4];
	for (int i = 0; i < 4; i++) {
		qt_to_proto(&u.q[i], &qm[i]);
		qp[i] = &qm[i];
	}
	uint8_t sc[64];
	assert_true(qm[2].scales.len <= sizeof sc && qm[2].scales.len >= 2);
	memcpy(sc, qm[2].scales.data, qm[2].scales.len);
	sc[0] = 0x00;
	sc[1] = 0x7e; /* f16 NaN */
	qm[2].scales.data = sc;
	Fedlora__AdapterPayload p = FEDLORA__ADAPTER_PAYLOAD__INIT;
	p.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	p.n_tensors = 4;
	p.tensors = qp;
	agg_begin(a);
	agg_result r;
	assert_int_equal(agg_add_payload(a, &p, 2, &r), 0);
	assert_int_equal(r.verdict, AGG_NON_FINITE);
	upd_free(&u);
	agg_free(a);
	tset_free(lay);
}

static void test_ffa(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	o.ffa = 1;
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	const tset *ex = agg_layout(a);
	assert_int_equal(tset_count(ex), 2);
	assert_non_null(tset_find(ex, "blk.0.attn_q.lora_b"));
	assert_null(tset_find(ex, "blk.0.attn_q.lora_a"));
	uint64_t seed = 9;
	upd full, bonly;
	upd_make(&full, lay, QT_Q4, 0.1, &seed);
	upd_make(&bonly, ex, QT_Q4, 0.1, &seed);
	agg_begin(a);
	agg_result r;
	/* full adapter (A included): refused */
	assert_int_equal(agg_add(a, full.q, full.nq, 1, &r), 0);
	assert_int_equal(r.verdict, AGG_MALFORMED);
	/* same count but an A in place of a B: refused with the FFA hint */
	qtensor mix[2] = {bonly.q[0], full.q[0]};
	assert_int_equal(agg_add(a, mix, 2, 1, &r), 0);
	assert_int_equal(r.verdict, AGG_MALFORMED);
	assert_non_null(strstr(r.why, "FFA"));
	add_ok(a, &bonly, 4);
	tset *step;
	assert_int_equal(tset_zeros_like(ex, &step), 0);
	assert_int_equal(agg_finish(a, step), 0);
	ASSERT_REL(rel_err(step, ex, bonly.deq), 4e-7);
	tset_free(step);
	upd_free(&full);
	upd_free(&bonly);
	agg_free(a);
	/* a layout without lora_b has nothing to exchange under FFA */
	tset *aonly;
	assert_int_equal(tset_new(&aonly), 0);
	uint64_t sh[2] = {2, 2};
	assert_int_equal(tset_insert(aonly, "blk.0.attn_q.lora_a", 2, sh, NULL, NULL), 0);
	assert_int_equal(agg_new(&o, aonly, &a), FL_EINVAL);
	tset_free(aonly);
	tset_free(lay);
}

static void test_buffer_cap(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	o.strategy = AGG_MEDIAN;
	o.max_buffer_bytes = 3 * tset_numel(lay) * sizeof(float);
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	uint64_t seed = 11;
	upd u;
	upd_make(&u, lay, QT_Q4, 0.1, &seed);
	for (int round = 0; round < 2; round++) {
		agg_begin(a);
		agg_result r;
		for (int i = 0; i < 3; i++)
			add_ok(a, &u, 1);
		assert_int_equal(agg_add(a, u.q, u.nq, 1, &r), 0);
		assert_int_equal(r.verdict, AGG_FULL);
		assert_int_equal(agg_count(a), 3);
	}
	upd_free(&u);
	agg_free(a);
	tset_free(lay);
}

/* State export/import continues exactly; a finish without commit leaves
 * the state unchanged. */
static void test_state_roundtrip(void **s)
{
	(void)s;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	o.strategy = AGG_FEDADAM;
	agg *a, *b;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	assert_int_equal(agg_new(&o, lay, &b), 0);
	uint64_t seed = 12;
	upd u1, u2;
	upd_make(&u1, lay, QT_Q8, 0.1, &seed);
	upd_make(&u2, lay, QT_Q8, 0.1, &seed);
	tset *s1, *s2, *st;
	assert_int_equal(tset_zeros_like(lay, &s1), 0);
	assert_int_equal(tset_zeros_like(lay, &s2), 0);
	agg_begin(a);
	add_ok(a, &u1, 1);
	assert_int_equal(agg_finish(a, s1), 0);
	agg_commit_state(a);
	/* a finish that is never committed (e.g. the disk write failed) */
	agg_begin(a);
	add_ok(a, &u1, 1);
	assert_int_equal(agg_finish(a, s1), 0);
	/* pending = 1 exports the uncommitted state, which differs */
	tset *pend;
	assert_int_equal(agg_state_export(a, 1, &pend), 0);
	assert_int_equal(agg_state_export(a, 0, &st), 0);
	uint8_t fp1[32], fp2[32];
	assert_int_equal(tset_fingerprint(pend, fp1), 0);
	assert_int_equal(tset_fingerprint(st, fp2), 0);
	assert_memory_not_equal(fp1, fp2, 32);
	tset_free(pend);
	assert_int_equal(tset_count(st), 8);
	assert_non_null(tset_find(st, "opt.m.blk.0.attn_q.lora_a"));
	assert_int_equal(agg_state_import(b, st), 0);
	tset_free(st);
	agg_begin(a);
	add_ok(a, &u2, 1);
	assert_int_equal(agg_finish(a, s1), 0);
	agg_begin(b);
	add_ok(b, &u2, 1);
	assert_int_equal(agg_finish(b, s2), 0);
	uint8_t f1[32], f2[32];
	assert_int_equal(tset_fingerprint(s1, f1), 0);
	assert_int_equal(tset_fingerprint(s2, f2), 0);
	assert_memory_equal(f1, f2, 32);
	/* a state for another strategy is refused */
	agg_opts o2 = o;
	o2.strategy = AGG_FEDAVGM;
	agg *c;
	assert_int_equal(agg_new(&o2, lay, &c), 0);
	assert_int_equal(agg_state_export(c, 0, &st), 0);
	assert_int_equal(agg_state_import(a, st), FL_EMISMATCH);
	tset_free(st);
	agg_free(c);
	tset_free(s1);
	tset_free(s2);
	upd_free(&u1);
	upd_free(&u2);
	agg_free(a);
	agg_free(b);
	tset_free(lay);
}

static void test_opts(void **s)
{
	(void)s;
	agg_opts o;
	agg_opts_default(&o);
	char why[200];
	assert_int_equal(agg_opts_check(&o, why, sizeof why), 0);
	o.trim = 0.5;
	assert_int_equal(agg_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "trim"));
	agg_opts_default(&o);
	o.clip_norm = -1;
	assert_int_equal(agg_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "clip_norm"));
	enum agg_strategy st;
	for (int i = 0; i <= AGG_MEDIAN; i++) {
		assert_int_equal(agg_strategy_parse(agg_strategy_name((enum agg_strategy)i), &st),
		                 0);
		assert_int_equal(st, i);
	}
	assert_int_equal(agg_strategy_parse("fedsgd", &st), FL_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fedavg_identical),
	    cmocka_unit_test(test_fedavg_weights),
	    cmocka_unit_test(test_fedavgm),
	    cmocka_unit_test(test_fedadam),
	    cmocka_unit_test(test_fedyogi),
	    cmocka_unit_test(test_median),
	    cmocka_unit_test(test_trimmed_mean),
	    cmocka_unit_test(test_clip_and_reject),
	    cmocka_unit_test(test_malformed),
	    cmocka_unit_test(test_non_finite_payload),
	    cmocka_unit_test(test_nan_scale),
	    cmocka_unit_test(test_ffa),
	    cmocka_unit_test(test_buffer_cap),
	    cmocka_unit_test(test_state_roundtrip),
	    cmocka_unit_test(test_opts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
