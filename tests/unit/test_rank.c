/* Per-node rank (rank slots): lrank's slices against index formulas; agg's
 * per-slot weighted mean of updates of ranks 4, 8 and 16 (q8, q4 and f32
 * uploads in one round, one of them clipped) against a double-precision
 * reference computed here from the dequantized slices; full-rank rounds
 * bit-identical to plain agg_add; refusals (wrong slice shape, buffering
 * strategy, central DP); nrank's parsing, assignment and refusals; the
 * federation options that do not compose with mixed ranks; and both
 * trainers leaving the untrained slots bit-identical to the global. */
#include "testutil.h"
#include "tiny_model.h"

#include "agg.h"
#include "err.h"
#include "fed.h"
#include "fedlora.pb-c.h"
#include "gtype.h"
#include "lrank.h"
#include "nrank.h"
#include "quant.h"
#include "trainer_iface.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define R 16

/* Rank-16 layout, sizes not multiples of the block. */
static tset *mk_layout(void)
{
	tset *s;
	assert_int_equal(tset_new(&s), 0);
	uint64_t a0[2] = {R, 40}, b0[2] = {24, R}, a1[2] = {R, 72}, b1[2] = {40, R};
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_a", 2, a0, NULL, NULL), 0);
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_b", 2, b0, NULL, NULL), 0);
	assert_int_equal(tset_insert(s, "blk.1.ffn_down.lora_a", 2, a1, NULL, NULL), 0);
	assert_int_equal(tset_insert(s, "blk.1.ffn_down.lora_b", 2, b1, NULL, NULL), 0);
	return s;
}

/* Slot of element k of a full-rank layout tensor. */
static uint32_t slot_of(const tensor *t, size_t k)
{
	return lora_is_b(t->name) ? (uint32_t)(k % t->shape[1]) : (uint32_t)(k / t->shape[1]);
}

static void fill(tset *s, uint64_t *seed, double sigma)
{
	for (size_t i = 0; i < tset_count(s); i++) {
		tensor *t = tset_at(s, i);
		for (size_t k = 0; k < t->n; k++)
			t->data[k] = (float)((tu_randu(seed) * 2 - 1) * sigma);
	}
}

/* ---- lrank ---- */

static void test_lrank_slices(void **st)
{
	(void)st;
	tset *full = mk_layout();
	uint64_t seed = 3;
	fill(full, &seed, 1.0);
	assert_int_equal(lrank_set_rank(full), R);
	tset *sl = NULL;
	assert_int_equal(lrank_slice_set(full, 5, &sl), 0);
	assert_int_equal(lrank_set_rank(sl), 5);
	for (size_t i = 0; i < tset_count(full); i++) {
		const tensor *f = tset_at(full, i), *s = tset_at(sl, i);
		assert_string_equal(f->name, s->name);
		assert_int_equal(s->n, lrank_slice_numel(f, 5));
		for (size_t k = 0; k < s->n; k++) {
			/* element k of the slice is (row, col) of the full tensor */
			size_t row, col;
			if (lora_is_b(f->name)) {
				row = k / 5;
				col = k % 5;
			} else {
				row = k / f->shape[1];
				col = k % f->shape[1];
			}
			assert_true(s->data[k] == f->data[row * f->shape[1] + col]);
		}
	}
	/* scatter_add of the slice into zeros rebuilds slots 0..4 exactly */
	tset *z = NULL;
	assert_int_equal(tset_zeros_like(full, &z), 0);
	for (size_t i = 0; i < tset_count(z); i++)
		lrank_scatter_add(tset_at(z, i), 5, tset_at(sl, i)->data, 1.0f);
	for (size_t i = 0; i < tset_count(z); i++) {
		const tensor *a = tset_at(z, i), *f = tset_at(full, i);
		for (size_t k = 0; k < a->n; k++)
			assert_true(a->data[k] == (slot_of(a, k) < 5 ? f->data[k] : 0.0f));
	}
	/* copy_tail / zero_tail touch slots >= r only */
	for (size_t i = 0; i < tset_count(z); i++) {
		lrank_copy_tail(tset_at(z, i), tset_at(full, i), 5);
		assert_memory_equal(tset_at(z, i)->data, tset_at(full, i)->data,
		                    tset_at(z, i)->n * sizeof(float));
		lrank_zero_tail(tset_at(z, i), 9);
		for (size_t k = 0; k < tset_at(z, i)->n; k++)
			assert_true(
			    tset_at(z, i)->data[k] ==
			    (slot_of(tset_at(z, i), k) < 9 ? tset_at(full, i)->data[k] : 0.0f));
	}
	tset *bad = NULL;
	assert_int_equal(lrank_slice_set(full, 0, &bad), FL_EINVAL);
	assert_int_equal(lrank_slice_set(full, R + 1, &bad), FL_EINVAL);
	assert_null(bad);
	tset_free(z);
	tset_free(sl);
	tset_free(full);
}

/* ---- agg: rank slots against a double reference ---- */

typedef struct rupd {
	uint32_t rank;
	uint64_t samples;
	size_t nq;
	qtensor q[4];
	double *deq[4]; /* dequantized slices */
} rupd;

static void rupd_make(rupd *u, const tset *lay, uint32_t rank, enum qt_fmt fmt, uint64_t samples,
                      double sigma, uint64_t *seed)
{
	memset(u, 0, sizeof *u);
	u->rank = rank;
	u->samples = samples;
	u->nq = tset_count(lay);
	tset *full = NULL, *sl = NULL;
	assert_int_equal(tset_zeros_like(lay, &full), 0);
	fill(full, seed, sigma);
	assert_int_equal(lrank_slice_set(full, rank, &sl), 0);
	quant_params p = {.fmt = fmt, .block = (fmt == QT_F32 || fmt == QT_F16) ? 0 : 32};
	for (size_t i = 0; i < u->nq; i++) {
		const tensor *t = tset_at(sl, i);
		qt_init(&u->q[i]);
		assert_int_equal(quant_encode(&p, t->name, t->data, t->ndim, t->shape, &u->q[i]),
		                 0);
		float *d = malloc(t->n * sizeof(float));
		assert_int_equal(quant_decode(&u->q[i], d, t->n), 0);
		u->deq[i] = malloc(t->n * sizeof(double));
		for (size_t k = 0; k < t->n; k++)
			u->deq[i][k] = d[k];
		free(d);
	}
	tset_free(sl);
	tset_free(full);
}

static void rupd_free(rupd *u)
{
	for (size_t i = 0; i < u->nq; i++) {
		qt_fini(&u->q[i]);
		free(u->deq[i]);
	}
}

static double rupd_norm(const rupd *u)
{
	double s = 0;
	for (size_t i = 0; i < u->nq; i++)
		for (size_t k = 0; k < u->q[i].n; k++)
			s += u->deq[i][k] * u->deq[i][k];
	return sqrt(s);
}

/* Value of full-tensor element k of layout tensor t in update u (double),
 * or NAN when u does not carry that slot. */
static double rupd_at(const rupd *u, size_t ti, const tensor *t, size_t k)
{
	uint32_t j = slot_of(t, k);
	if (j >= u->rank)
		return NAN;
	if (lora_is_b(t->name))
		return u->deq[ti][(k / t->shape[1]) * u->rank + j];
	return u->deq[ti][k]; /* lora_a: a prefix */
}

/* The reference: per slot, sum_i w_i s_i d_i / sum_i w_i over the updates
 * carrying it; s_i = min(1, clip / norm_i). */
static void check_against_reference(const tset *lay, const tset *step, rupd *u, size_t nu,
                                    double clip, double tol)
{
	double num = 0, den = 1e-30;
	for (size_t i = 0; i < tset_count(lay); i++) {
		const tensor *t = tset_at(lay, i);
		const tensor *g = tset_find(step, t->name);
		for (size_t k = 0; k < t->n; k++) {
			double s = 0, w = 0;
			for (size_t n = 0; n < nu; n++) {
				double v = rupd_at(&u[n], i, t, k);
				if (isnan(v))
					continue;
				double nr = rupd_norm(&u[n]);
				double sc = clip > 0 && nr > clip ? clip / nr : 1.0;
				s += (double)u[n].samples * sc * v;
				w += (double)u[n].samples;
			}
			double want = w > 0 ? s / w : 0.0;
			double e = fabs((double)g->data[k] - want);
			if (e > num)
				num = e;
			if (fabs(want) > den)
				den = fabs(want);
		}
	}
	print_message("rank slots: max |got - ref| / max |ref| = %.3g (tolerance %.1g)\n",
	              num / den, tol);
	if (!(num / den <= tol))
		fail_msg("relative error %.3g > %.3g", num / den, tol);
}

static void test_agg_slots_reference(void **st)
{
	(void)st;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	o.clip_norm = 0.9; /* the rank-16 update (largest) is clipped */
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	assert_int_equal(agg_rank(a), R);
	uint64_t seed = 11;
	rupd u[4];
	rupd_make(&u[0], lay, 4, QT_Q4, 30, 0.01, &seed);
	rupd_make(&u[1], lay, 8, QT_Q8, 70, 0.01, &seed);
	rupd_make(&u[2], lay, 16, QT_F32, 10, 0.05, &seed);
	rupd_make(&u[3], lay, 16, QT_Q4, 45, 0.01, &seed);
	assert_true(rupd_norm(&u[2]) > o.clip_norm);
	for (int round = 0; round < 2; round++) { /* agg_begin forgets the slots */
		agg_begin(a);
		for (int i = 0; i < 4; i++) {
			agg_result res;
			assert_int_equal(
			    agg_add_rank(a, u[i].q, u[i].nq, u[i].samples, u[i].rank, &res), 0);
			if (res.verdict != AGG_ACCEPTED)
				fail_msg("rank %u refused: %s", u[i].rank, res.why);
			assert_true(fabs(res.norm - rupd_norm(&u[i])) <= 1e-9 * res.norm);
		}
		/* slot weights: 0..3 all four, 4..7 three, 8..15 the two full */
		assert_true(agg_slot_weight(a, 0) == 155.0);
		assert_true(agg_slot_weight(a, 7) == 125.0);
		assert_true(agg_slot_weight(a, 8) == 55.0);
		assert_true(agg_slot_weight(a, 15) == 55.0);
		assert_true(agg_slot_weight(a, 16) == 0.0);
		tset *step = NULL;
		assert_int_equal(tset_zeros_like(lay, &step), 0);
		assert_int_equal(agg_finish(a, step), 0);
		check_against_reference(lay, step, u, 4, o.clip_norm, 1e-5);
		tset_free(step);
	}
	/* a slot nobody trained gets a zero step */
	agg_begin(a);
	agg_result res;
	assert_int_equal(agg_add_rank(a, u[0].q, u[0].nq, 5, 4, &res), 0);
	assert_int_equal(res.verdict, AGG_ACCEPTED);
	tset *step = NULL;
	assert_int_equal(tset_zeros_like(lay, &step), 0);
	assert_int_equal(agg_finish(a, step), 0);
	check_against_reference(lay, step, u, 1, o.clip_norm, 1e-6);
	for (size_t i = 0; i < tset_count(step); i++)
		for (size_t k = 0; k < tset_at(step, i)->n; k++)
			if (slot_of(tset_at(step, i), k) >= 4)
				assert_true(tset_at(step, i)->data[k] == 0.0f);
	tset_free(step);
	for (int i = 0; i < 4; i++)
		rupd_free(&u[i]);
	agg_free(a);
	tset_free(lay);
}

/* A round of full-rank updates through agg_add_rank is agg_add's, bit for
 * bit (the per-slot path is not taken). */
static void test_agg_full_rank_unchanged(void **st)
{
	(void)st;
	tset *lay = mk_layout();
	agg_opts o;
	agg_opts_default(&o);
	agg *a, *b;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	assert_int_equal(agg_new(&o, lay, &b), 0);
	uint64_t seed = 5;
	rupd u[3];
	for (int i = 0; i < 3; i++)
		rupd_make(&u[i], lay, R, QT_Q4, (uint64_t)(10 + 7 * i), 0.02, &seed);
	agg_begin(a);
	agg_begin(b);
	for (int i = 0; i < 3; i++) {
		agg_result r1, r2;
		assert_int_equal(agg_add(a, u[i].q, u[i].nq, u[i].samples, &r1), 0);
		assert_int_equal(agg_add_rank(b, u[i].q, u[i].nq, u[i].samples, 0, &r2), 0);
		assert_int_equal(r1.verdict, AGG_ACCEPTED);
		assert_int_equal(r2.verdict, AGG_ACCEPTED);
	}
	tset *sa = NULL, *sb = NULL;
	assert_int_equal(tset_zeros_like(lay, &sa), 0);
	assert_int_equal(tset_zeros_like(lay, &sb), 0);
	assert_int_equal(agg_finish(a, sa), 0);
	assert_int_equal(agg_finish(b, sb), 0);
	for (size_t i = 0; i < tset_count(sa); i++)
		assert_memory_equal(tset_at(sa, i)->data, tset_at(sb, i)->data,
		                    tset_at(sa, i)->n * sizeof(float));
	tset_free(sa);
	tset_free(sb);
	for (int i = 0; i < 3; i++)
		rupd_free(&u[i]);
	agg_free(a);
	agg_free(b);
	tset_free(lay);
}

static void expect_refused(agg *a, rupd *u, uint32_t rank, const char *needle)
{
	agg_result res;
	assert_int_equal(agg_add_rank(a, u->q, u->nq, 10, rank, &res), 0);
	assert_int_equal(res.verdict, AGG_MALFORMED);
	if (!strstr(res.why, needle))
		fail_msg("refusal '%s' does not say '%s'", res.why, needle);
	assert_int_equal(agg_count(a), 0);
}

static void test_agg_slot_refusals(void **st)
{
	(void)st;
	tset *lay = mk_layout();
	uint64_t seed = 9;
	rupd full, r4;
	rupd_make(&full, lay, R, QT_Q8, 10, 0.01, &seed);
	rupd_make(&r4, lay, 4, QT_Q8, 10, 0.01, &seed);
	agg_opts o;
	agg_opts_default(&o);
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	agg_begin(a);
	/* a node assigned rank 4 that sends full tensors, and the reverse */
	expect_refused(a, &full, 4, "expected 4x40");
	expect_refused(a, &r4, 8, "expected 8x40");
	expect_refused(a, &r4, 0, "expected 16x40");
	agg_free(a);
	/* buffering strategy and central DP need every update at full rank */
	o.strategy = AGG_MEDIAN;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	agg_begin(a);
	expect_refused(a, &r4, 4, "mean strategy");
	agg_free(a);
	agg_opts_default(&o);
	o.dp_clip = 1.0;
	o.dp_denom = 2;
	o.weighting = AGG_W_UNIFORM;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	agg_begin(a);
	expect_refused(a, &r4, 4, "without central DP");
	agg_free(a);
	rupd_free(&full);
	rupd_free(&r4);
	tset_free(lay);
}

/* ---- nrank ---- */

static void test_nrank_parse(void **st)
{
	(void)st;
	nrank_opts o;
	memset(&o, 0, sizeof o);
	char why[256];
	assert_int_equal(nrank_parse("pi-*:4:q4, jetson-*:8:q8  lab-?:16", &o, why, sizeof why), 0);
	assert_int_equal(o.ng, 3);
	assert_string_equal(o.g[0].pattern, "pi-*");
	assert_int_equal(o.g[0].rank, 4);
	assert_int_equal(o.g[0].fmt, QT_Q4);
	assert_int_equal(o.g[1].fmt, QT_Q8);
	assert_int_equal(o.g[2].rank, 16);
	assert_int_equal(o.g[2].fmt, 0);
	assert_int_equal(nrank_check(&o, 16, why, sizeof why), 0);
	assert_true(nrank_mixed(&o, 16));
	assert_int_equal(nrank_check(&o, 8, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "rank 16 of 'lab-?' exceeds the federation's lora.rank (8)"));
	assert_int_equal(nrank_parse("", &o, why, sizeof why), 0);
	assert_int_equal(o.ng, 0);
	assert_false(nrank_mixed(&o, 16));
	const char *bad[][2] = {
	    {"pi-*", "is not PATTERN:RANK"},
	    {":4", "is not PATTERN:RANK"},
	    {"pi:x", "is not a number"},
	    {"pi:0", "must be >= 1"},
	    {"pi:", "has no rank"},
	    {"pi:4:q3", "format 'q3' of 'pi'"},
	    {"pi:4:", "must be f32, f16, q8"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		why[0] = 0;
		assert_int_equal(nrank_parse(bad[i][0], &o, why, sizeof why), FL_EINVAL);
		if (!strstr(why, bad[i][1]) || !strstr(why, "rank.groups"))
			fail_msg("'%s': message '%s' lacks '%s'", bad[i][0], why, bad[i][1]);
	}
	o.def_rank = 32;
	assert_int_equal(nrank_check(&o, 16, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "rank.default (32)"));
}

static void test_nrank_assign(void **st)
{
	(void)st;
	nrank_opts o;
	memset(&o, 0, sizeof o);
	char why[256];
	assert_int_equal(nrank_parse("pi-*:4:q4 jetson-*:8:q8", &o, why, sizeof why), 0);
	nrank_assign a;
	/* group: rank and format; block of the default kept */
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 64, "pi-7", 8, NULL, 0, &a, why, 256), 0);
	assert_int_equal(a.rank, 4);
	assert_int_equal(a.fmt, QT_Q4);
	assert_int_equal(a.block, 64);
	assert_int_equal(a.group, 0);
	int q8[1] = {QT_Q8};
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 32, "jetson-1", 16, q8, 1, &a, why, 256),
	                 0);
	assert_int_equal(a.rank, 8);
	assert_int_equal(a.fmt, QT_Q8);
	assert_int_equal(a.block, 32);
	/* no group: the federation's rank capped by the announcement */
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 32, "laptop", 6, NULL, 0, &a, why, 256),
	                 0);
	assert_int_equal(a.rank, 6);
	assert_int_equal(a.group, -1);
	o.def_rank = 4;
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 32, "laptop", 6, NULL, 0, &a, why, 256),
	                 0);
	assert_int_equal(a.rank, 4);
	/* a node that cannot train slices (max_rank 0) trains every slot */
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 32, "pi-1", 0, NULL, 0, &a, why, 256), 0);
	assert_int_equal(a.rank, 16);
	/* refusals: announced max_rank below the group's; format not supported */
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 32, "jetson-2", 4, NULL, 0, &a, why, 256),
	                 FL_EINVAL);
	assert_non_null(strstr(why,
	                       "node jetson-2 announces node.max_rank 4, below rank 8 that its "
	                       "group 'jetson-*' requires (rank.groups)"));
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 32, "pi-2", 4, q8, 1, &a, why, 256),
	                 FL_EINVAL);
	assert_non_null(strstr(why, "node pi-2 cannot upload q4 (node.upload_formats)"));
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 32, "other", 16, q8, 1, &a, why, 256),
	                 FL_EINVAL);
	assert_non_null(strstr(why, "train.uplink_format"));
	/* f16 group: block 0 */
	assert_int_equal(nrank_parse("x:2:f16", &o, why, sizeof why), 0);
	assert_int_equal(nrank_assign_node(&o, 16, QT_Q4, 32, "x", 2, NULL, 0, &a, why, 256), 0);
	assert_int_equal(a.fmt, QT_F16);
	assert_int_equal(a.block, 0);
}

/* Mixed ranks and the options that cannot take them: refused naming both
 * keys. */
static void test_fed_opts_conflicts(void **st)
{
	(void)st;
	fed_opts o;
	fed_opts_default(&o);
	o.spec = (lora_spec){.rank = 16, .alpha = 32, .targets = 1, .init_seed = 1};
	char why[400];
	assert_int_equal(nrank_parse("pi-*:4", &o.rank, why, sizeof why), 0);
	assert_int_equal(fed_opts_check(&o, why, sizeof why), 0);
	o.agg.strategy = AGG_TRIMMED_MEAN;
	assert_int_equal(fed_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "rank.groups"));
	assert_non_null(strstr(why, "aggregation.strategy"));
	o.agg.strategy = AGG_FEDAVG;
	o.secure.on = 1;
	o.min_nodes = 3;
	assert_int_equal(fed_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "rank.groups"));
	assert_non_null(strstr(why, "aggregation.secure"));
	/* groups at the full rank are fine with secure aggregation, another
	 * uplink format is not (one grid) */
	assert_int_equal(nrank_parse("pi-*:16", &o.rank, why, sizeof why), 0);
	assert_int_equal(fed_opts_check(&o, why, sizeof why), 0);
	assert_int_equal(nrank_parse("pi-*:16:q8", &o.rank, why, sizeof why), 0);
	assert_int_equal(fed_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "rank.groups gives 'pi-*' the uplink format q8"));
	assert_non_null(strstr(why, "aggregation.secure"));
	o.secure.on = 0;
	assert_int_equal(nrank_parse("pi-*:17", &o.rank, why, sizeof why), 0);
	assert_int_equal(fed_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "exceeds the federation's lora.rank (16)"));
}

/* ---- trainers: slots >= train_rank stay the global's ---- */

static void check_trained_slots(const tset *global, const tset *local, uint32_t r)
{
	size_t moved = 0, head = 0;
	for (size_t i = 0; i < tset_count(global); i++) {
		const tensor *g = tset_at(global, i), *l = tset_find(local, g->name);
		assert_non_null(l);
		for (size_t k = 0; k < g->n; k++) {
			if (slot_of(g, k) >= r) {
				if (memcmp(&g->data[k], &l->data[k], sizeof(float)) != 0)
					fail_msg("%s[%zu] (slot %u >= %u) changed: %g -> %g",
					         g->name, k, slot_of(g, k), r, (double)g->data[k],
					         (double)l->data[k]);
			} else {
				head++;
				moved += g->data[k] != l->data[k];
			}
		}
	}
	print_message("train_rank %u: %zu of %zu elements of the trained slots moved\n", r, moved,
	              head);
	assert_true(moved > head / 2);
}

static void run_trainer(const ntr_ops *ops, const ntr_spec *sp, uint32_t r)
{
	void *tr = NULL;
	char err[256];
	if (ops->open(sp, &tr, err, sizeof err) != 0)
		fail_msg("open: %s", err);
	tset *global = NULL, *local = NULL;
	assert_int_equal(ops->layout(tr, &global), 0);
	uint64_t seed = 21;
	fill(global, &seed, 0.05); /* B != 0, so every slot gets a gradient */
	assert_int_equal(tset_zeros_like(global, &local), 0);
	Fedlora__TrainParams p = FEDLORA__TRAIN_PARAMS__INIT;
	p.local_steps = 6;
	p.lr = 0.01f;
	p.batch_size = 2;
	p.ctx = 16;
	p.weight_decay = 0.1f; /* must not reach the frozen slots */
	p.fedprox_mu = 0.01f;
	p.seed = 4;
	p.train_rank = r;
	ntr_result res;
	assert_int_equal(ops->train(tr, global, &p, local, &res, NULL, NULL), 0);
	check_trained_slots(global, local, r);
	tset_free(global);
	tset_free(local);
	ops->close(tr);
}

static void test_synth_train_rank(void **st)
{
	(void)st;
	ntr_spec sp = {.lora = {.rank = 8, .alpha = 16, .targets = 3, .init_seed = 1}, .seed = 2};
	run_trainer(ntr_find("synth"), &sp, 3);
}

static void test_lora_train_rank(void **st)
{
	(void)st;
	const ntr_ops *ops = ntr_find("lora");
	if (!ops)
		skip();
	char *dir = tu_mkdtemp();
	char model_path[512], train_path[512];
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 8, 64, TOK_BYTE_VOCAB_SIZE, 1, 0, 5);
	t.c.ctx = 64;
	snprintf(model_path, sizeof model_path, "%s/m.gguf", dir);
	assert_int_equal(tm_write_gguf(&t, model_path, GTYPE_F32), 0);
	tm_free(&t);
	snprintf(train_path, sizeof train_path, "%s/train.jsonl", dir);
	FILE *f = fopen(train_path, "w");
	for (int i = 0; i < 40; i++)
		fprintf(f, "{\"text\": \"sensor %d reads %d degrees; status ok.\"}\n", i % 5,
		        20 + i % 7);
	fclose(f);
	ntr_spec sp = {
	    .model_path = model_path,
	    .train_path = train_path,
	    .eval_fraction = 0.2,
	    .lora = {.rank = 8, .alpha = 16, .targets = (1u << LORA_NTARGETS) - 1, .init_seed = 1},
	    .base_quant = "none",
	    .max_ctx = 64,
	    .max_batch = 8,
	    .max_steps = 100,
	    .threads = 1,
	    .seed = 9};
	run_trainer(ops, &sp, 3);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lrank_slices),
	    cmocka_unit_test(test_agg_slots_reference),
	    cmocka_unit_test(test_agg_full_rank_unchanged),
	    cmocka_unit_test(test_agg_slot_refusals),
	    cmocka_unit_test(test_nrank_parse),
	    cmocka_unit_test(test_nrank_assign),
	    cmocka_unit_test(test_fed_opts_conflicts),
	    cmocka_unit_test(test_synth_train_rank),
	    cmocka_unit_test(test_lora_train_rank),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
