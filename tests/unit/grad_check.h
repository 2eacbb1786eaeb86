/* grad_check — helpers of the gradient tests (test_grad, test_grad_arch):
 * the engine's LoRA and full-training gradients of a tiny_model.h model
 * against central finite differences of its double-precision reference.
 * Tolerance per tensor: max|got - fd| / max|fd| <= TOL. */
#ifndef FL_GRAD_CHECK_H
#define FL_GRAD_CHECK_H
#include "testutil.h"
#include "tiny_model.h"

#include "err.h"
#include "gtype.h"
#include "model/adapter.h"
#include "model/grad.h"
#include "model/model.h"
#include "model/train_kern.h"
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-3

/* model_prepare flags of the gradient cases: MODEL_KEEP_ACTS, or
 * MODEL_CHECKPOINT for the activation-checkpointing runs */
static int g_flags = MODEL_KEEP_ACTS;

static inline void check(const char *what, double err, double tol)
{
	printf("  %-58s %.2e (tol %.0e)\n", what, err, tol);
	if (!(err <= tol)) {
		print_error("%s: %.3e > %.0e\n", what, err, tol);
		fail();
	}
}

typedef struct fd_ctx {
	const tm_model *t;
	const tm_lora *lo;
	const int32_t *ids, *tgt;
	int B, T;
	double scale;
} fd_ctx;

static inline double loss_of(const fd_ctx *c)
{
	return c->scale * tm_ref_loss(c->t, c->lo, c->ids, c->tgt, c->B, c->T, NULL);
}

/* FD gradient of the reference loss at p[0..n) vs got[0..n). */
static inline double fd_err(const fd_ctx *c, double *p, size_t n, const float *got)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		const double save = p[i], h = 1e-5 * fmax(1.0, fabs(save));
		p[i] = save + h;
		double lp = loss_of(c);
		p[i] = save - h;
		double lm = loss_of(c);
		p[i] = save;
		double fd = (lp - lm) / (2 * h);
		num = fmax(num, isnan(got[i]) ? INFINITY : fabs(got[i] - fd));
		den = fmax(den, fabs(fd));
	}
	assert_true(den > 0);
	return num / den;
}

static inline void fill_random(tset *ad, uint64_t seed, float scale)
{
	uint64_t s = seed;
	for (size_t i = 0; i < tset_count(ad); i++) {
		tensor *x = tset_at(ad, i);
		for (size_t k = 0; k < x->n; k++)
			x->data[k] = tm_frand(&s) * scale;
	}
}

/* LoRA gradients of model m (weights of t, maybe quantized) vs FD. */
static inline void lora_grads(const char *name, tm_model *t, model *m, int ffa, uint32_t targets)
{
	const int B = 2, T = 6, V = t->c.vocab;
	uint64_t s = 31;
	int32_t ids[12], tgt[12];
	tm_rand_ids(ids, B * T, V, &s);
	tm_rand_ids(tgt, B * T, V, &s);
	tgt[3] = -1;
	tgt[8] = -1;
	lora_spec sp = {.rank = 3, .alpha = 5, .targets = targets, .ffa = ffa};
	tset *ad = NULL, *g = NULL;
	adp_binding *bd = NULL;
	grad_ws *ws = NULL;
	assert_int_equal(adp_layout(&t->c, &sp, &ad), 0);
	fill_random(ad, 5, 0.4f);
	assert_int_equal(adp_layout(&t->c, &sp, &g), 0);
	assert_int_equal(adp_bind(&t->c, &sp, ad, B * T, &bd), 0);
	assert_int_equal(model_prepare(m, B, T, g_flags), 0);
	assert_int_equal(model_set_lora(m, adp_binding_lora(bd)), 0);
	assert_int_equal(grad_ws_new(m, B, T, 3, &ws), 0);
	float loss = 0;
	assert_int_equal(model_forward(m, ids, tgt, B, T, &loss), 0);
	float *da[TM_MAXL * 7], *db[TM_MAXL * 7];
	adp_ptrs(&t->c, g, 0, da);
	adp_ptrs(&t->c, g, 1, db);
	grad_lora gl = {.da = ffa ? NULL : da, .db = db};
	int cnt = 0;
	const float lscale = 0.75f;
	assert_int_equal(grad_backward(ws, m, ids, tgt, B, T, lscale, &gl, NULL, &cnt), 0);
	assert_int_equal(cnt, B * T - 2);

	tm_lora dl;
	tm_lora_from(&dl, &t->c, &sp, ad);
	fd_ctx c = {.t = t, .lo = &dl, .ids = ids, .tgt = tgt, .B = B, .T = T, .scale = lscale};
	double ref = tm_ref_loss(t, &dl, ids, tgt, B, T, NULL);
	printf("  %s: loss %.6f, reference %.6f\n", name, loss, ref);
	assert_true(fabs(loss - ref) < 1e-4 * fabs(ref));
	double worst_a = 0, worst_b = 0;
	for (int i = 0; i < t->c.n_layers * 7; i++) {
		if (!dl.a[i])
			continue;
		int in, o;
		model_lora_dims(&t->c, i % 7, &in, &o);
		if (ffa) {
			for (size_t k = 0; k < (size_t)3 * in; k++)
				assert_true(da[i][k] == 0.0f); /* not computed */
		} else {
			worst_a = fmax(worst_a, fd_err(&c, dl.a[i], (size_t)3 * in, da[i]));
		}
		worst_b = fmax(worst_b, fd_err(&c, dl.b[i], (size_t)o * 3, db[i]));
	}
	char what[128];
	if (!ffa) {
		snprintf(what, sizeof what, "%s: LoRA A, worst tensor", name);
		check(what, worst_a, TOL);
	}
	snprintf(what, sizeof what, "%s: LoRA B, worst tensor", name);
	check(what, worst_b, TOL);
	model_set_lora(m, NULL);
	tm_lora_free(&dl);
	grad_ws_free(ws);
	adp_binding_free(bd);
	tset_free(ad);
	tset_free(g);
}

typedef struct region {
	const char *n;
	int layer; /* -1: not a layer tensor */
	const void *p;
	size_t len;
} region;

/* Full training: every weight of t. */
static inline void full_grads(const char *name, tm_model *t)
{
	const int B = 2, T = 5, V = t->c.vocab;
	uint64_t s = 77;
	int32_t ids[10], tgt[10];
	tm_rand_ids(ids, B * T, V, &s);
	tm_rand_ids(tgt, B * T, V, &s);
	tgt[0] = -1;
	model *m = NULL;
	grad_ws *ws = NULL;
	assert_int_equal(model_new_from_weights(&t->c, &t->w, &m), 0);
	assert_int_equal(model_prepare(m, B, T, g_flags), 0);
	assert_int_equal(grad_ws_new(m, B, T, 0, &ws), 0);
	float *gb = calloc(t->n, sizeof(float));
#define G(p) ((p) ? gb + ((const float *)(p)-t->blob) : NULL)
	grad_layer gl[TM_MAXL];
	for (int l = 0; l < t->c.n_layers; l++) {
		const model_layer *y = &t->layers[l];
		gl[l] = (grad_layer){.attn_norm = G(y->attn_norm),
		                     .wq = G(y->wq.data),
		                     .wk = G(y->wk.data),
		                     .wv = G(y->wv.data),
		                     .bq = G(y->bq),
		                     .bk = G(y->bk),
		                     .bv = G(y->bv),
		                     .q_norm = G(y->q_norm),
		                     .k_norm = G(y->k_norm),
		                     .wo = G(y->wo.data),
		                     .ffn_norm = G(y->ffn_norm),
		                     .w_gate = G(y->w_gate.data),
		                     .w_up = G(y->w_up.data),
		                     .w_down = G(y->w_down.data)};
	}
	grad_weights gw = {.tok_embd = G(t->w.tok_embd.data),
	                   .output = t->w.tied ? NULL : G(t->w.output.data),
	                   .output_norm = G(t->w.output_norm),
	                   .layers = gl};
#undef G
	float loss;
	assert_int_equal(model_forward(m, ids, tgt, B, T, &loss), 0);
	assert_int_equal(grad_backward(ws, m, ids, tgt, B, T, 1.0f, NULL, &gw, NULL), 0);
	fd_ctx c = {.t = t, .ids = ids, .tgt = tgt, .B = B, .T = T, .scale = 1.0};
	/* every tensor of the blob, by region */
	region reg[64];
	int nr = 0;
	const size_t C = (size_t)t->c.dim, QD = (size_t)t->c.n_heads * t->c.head_dim,
	             KVD = (size_t)t->c.n_kv_heads * t->c.head_dim, F = (size_t)t->c.ffn_dim;
	reg[nr++] = (region){"token_embd", -1, t->w.tok_embd.data, (size_t)V * C};
	for (int l = 0; l < t->c.n_layers; l++) {
		const model_layer *y = &t->layers[l];
		reg[nr++] = (region){"attn_norm", l, y->attn_norm, C};
		reg[nr++] = (region){"attn_q", l, y->wq.data, QD * C};
		reg[nr++] = (region){"attn_k", l, y->wk.data, KVD * C};
		reg[nr++] = (region){"attn_v", l, y->wv.data, KVD * C};
		if (y->bq) {
			reg[nr++] = (region){"attn_q.bias", l, y->bq, QD};
			reg[nr++] = (region){"attn_k.bias", l, y->bk, KVD};
			reg[nr++] = (region){"attn_v.bias", l, y->bv, KVD};
		}
		if (y->q_norm) {
			reg[nr++] = (region){"attn_q_norm", l, y->q_norm, (size_t)t->c.head_dim};
			reg[nr++] = (region){"attn_k_norm", l, y->k_norm, (size_t)t->c.head_dim};
		}
		reg[nr++] = (region){"attn_output", l, y->wo.data, C * QD};
		reg[nr++] = (region){"ffn_norm", l, y->ffn_norm, C};
		reg[nr++] = (region){"ffn_gate", l, y->w_gate.data, F * C};
		reg[nr++] = (region){"ffn_up", l, y->w_up.data, F * C};
		reg[nr++] = (region){"ffn_down", l, y->w_down.data, C * F};
	}
	reg[nr++] = (region){"output_norm", -1, t->w.output_norm, C};
	if (!t->w.tied)
		reg[nr++] = (region){"output", -1, t->w.output.data, (size_t)V * C};
	size_t covered = 0;
	for (int i = 0; i < nr; i++) {
		size_t off = (size_t)((const float *)reg[i].p - t->blob);
		char what[128];
		if (reg[i].layer >= 0)
			snprintf(what, sizeof what, "%s full: blk.%d.%s", name, reg[i].layer,
			         reg[i].n);
		else
			snprintf(what, sizeof what, "%s full: %s", name, reg[i].n);
		check(what, fd_err(&c, t->dblob + off, reg[i].len, gb + off), TOL);
		covered += reg[i].len;
	}
	if (t->w.rope_ff) /* fixed RoPE factors: not a parameter */
		covered += (size_t)t->c.n_rot / 2;
	assert_int_equal(covered, t->n); /* every parameter was checked */
	free(gb);
	grad_ws_free(ws);
	model_free(m);
}

static inline int threaded(void **state)
{
	(void)state;
	tk_parallel_always(1);
	kern_parallel_always(1);
	kern_set_threads(3);
	return 0;
}

static inline int serial(void **state)
{
	(void)state;
	tk_parallel_always(0);
	kern_parallel_always(0);
	kern_set_threads(1);
	return 0;
}

#endif
