/* test_grad — the whole backward pass (node/model/grad) against central
 * finite differences of a double-precision reference of the model
 * (tests/unit/tiny_model.h, written from the architecture's definition):
 * every LoRA parameter (A and B of all seven projections of every layer),
 * and in full-training mode every base weight (embedding, norms, the seven
 * matrices, QKV biases, tied or separate output). Tiny models: llama with
 * GQA 4 heads on 2, QKV bias and tied embeddings; qwen2 (NeoX RoPE) with
 * separate output; a Q8_0 base (reference over its dequantized values);
 * qwen3 (per-head q/k RMSNorm, NH*hd != C) and llama with Llama 3 RoPE
 * frequency factors; the same with activation checkpointing.
 * Some targets are -1 (ignored). h = 1e-5 * max(1, |p|) in double.
 * Tolerance: per tensor, max|got - fd| / max|fd| <= 1e-3 (observed values
 * printed, typically 1e-6). */
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

static void check(const char *what, double err, double tol)
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

static double loss_of(const fd_ctx *c)
{
	return c->scale * tm_ref_loss(c->t, c->lo, c->ids, c->tgt, c->B, c->T, NULL);
}

/* FD gradient of the reference loss at p[0..n) vs got[0..n). */
static double fd_err(const fd_ctx *c, double *p, size_t n, const float *got)
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

static void fill_random(tset *ad, uint64_t seed, float scale)
{
	uint64_t s = seed;
	for (size_t i = 0; i < tset_count(ad); i++) {
		tensor *x = tset_at(ad, i);
		for (size_t k = 0; k < x->n; k++)
			x->data[k] = tm_frand(&s) * scale;
	}
}

/* LoRA gradients of model m (weights of t, maybe quantized) vs FD. */
static void lora_grads(const char *name, tm_model *t, model *m, int ffa, uint32_t targets)
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

static void test_lora_llama(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 4, 12, 17, 1, 1, 3);
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("llama GQA bias tied, all targets", &t, m, 0, LORA_ALL_TARGETS);
	lora_grads("llama, FFA-LoRA", &t, m, 1, LORA_ALL_TARGETS);
	/* only the second layer's inputs... all layers, but two targets */
	lora_grads("llama, attn_v + ffn_up", &t, m, 0, (1u << LORA_ATTN_V) | (1u << LORA_FFN_UP));
	model_free(m);
	tm_free(&t);
}

static void test_lora_qwen2(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_QWEN2, 2, 2, 1, 6, 10, 13, 0, 1, 4);
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("qwen2 MQA bias untied, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	tm_free(&t);
}

/* The Q8_0 base: the model reads quantized matrices; the reference their
 * dequantized values. */
static void test_lora_q8_base(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 8, 64, 11, 1, 0, 8);
	model_weights w = t.w;
	model_layer ly[TM_MAXL];
	memcpy(ly, t.layers, sizeof ly);
	w.layers = ly;
	uint8_t *qbuf[TM_MAXL * 7 + 1] = {0};
	int nq = 0;
	kern_mat *mats[TM_MAXL * 7 + 1];
	int nm = 0;
	mats[nm++] = &w.tok_embd;
	for (int l = 0; l < t.c.n_layers; l++) {
		kern_mat *x[7] = {&ly[l].wq,     &ly[l].wk,   &ly[l].wv,    &ly[l].wo,
		                  &ly[l].w_gate, &ly[l].w_up, &ly[l].w_down};
		for (int i = 0; i < 7; i++)
			mats[nm++] = x[i];
	}
	for (int i = 0; i < nm; i++) {
		kern_mat *km = mats[i];
		float *src = (float *)km->data;
		size_t rb;
		assert_int_equal(gtype_row_size(GTYPE_Q8_0, (uint64_t)km->cols, &rb), 0);
		uint8_t *q = malloc(rb * km->rows);
		for (int r = 0; r < km->rows; r++) {
			float *row = src + (size_t)r * km->cols;
			assert_int_equal(gtype_quant_row(GTYPE_Q8_0, row, q + rb * r, km->cols), 0);
			/* the truth is the dequantized value, in both blobs */
			assert_int_equal(gtype_dequant_row(GTYPE_Q8_0, q + rb * r, row, km->cols),
			                 0);
			for (int k = 0; k < km->cols; k++)
				tm_d(&t, row)[k] = row[k];
		}
		assert_int_equal(kern_mat_init(km, GTYPE_Q8_0, q, km->rows, km->cols), 0);
		qbuf[nq++] = q;
	}
	w.output = w.tok_embd;
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &w, &m), 0);
	lora_grads("llama Q8_0 base, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	for (int i = 0; i < nq; i++)
		free(qbuf[i]);
	tm_free(&t);
}

typedef struct region {
	const char *n;
	int layer; /* -1: not a layer tensor */
	const void *p;
	size_t len;
} region;

/* Full training: every weight of t. */
static void full_grads(const char *name, tm_model *t)
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

static void test_full_llama(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 4, 12, 17, 1, 1, 12);
	full_grads("llama GQA bias tied", &t);
	tm_free(&t);
}

static void test_full_qwen2(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_QWEN2, 2, 2, 1, 6, 10, 13, 0, 1, 13);
	full_grads("qwen2 MQA bias untied", &t);
	tm_free(&t);
}

/* Qwen3 (per-head q/k RMSNorm, NH*hd != C) and Llama 3 (RoPE frequency
 * factors over all three regimes of the llama3 rule), LoRA and full. */
static void make_qwen3(tm_model *t, uint64_t seed)
{
	tm_opts o = {.C = 10};
	tm_make2(t, MODEL_ARCH_QWEN3, 2, 4, 2, 4, 12, 17, 1, 0, seed, &o);
}

static void make_llama3(tm_model *t, uint64_t seed)
{
	float ff[3];
	tm_llama3_ff(ff, 6, 10000.0, 8.0, 1.0, 4.0, 32.0);
	tm_opts o = {.ff = ff};
	tm_make2(t, MODEL_ARCH_LLAMA, 2, 2, 1, 6, 10, 13, 0, 0, seed, &o);
	assert_true(t->w.rope_ff[0] == 1.0f && t->w.rope_ff[2] == 8.0f);
}

static void test_lora_qwen3_llama3(void **state)
{
	(void)state;
	tm_model t;
	model *m = NULL;
	make_qwen3(&t, 21);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("qwen3 qk-norm C=10 QD=16, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	tm_free(&t);
	make_llama3(&t, 22);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("llama3 rope_freqs untied, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	tm_free(&t);
}

static void test_full_qwen3_llama3(void **state)
{
	(void)state;
	tm_model t;
	make_qwen3(&t, 23);
	full_grads("qwen3 qk-norm", &t);
	tm_free(&t);
	make_llama3(&t, 24);
	full_grads("llama3 rope_freqs", &t);
	tm_free(&t);
}

/* Activation checkpointing: the same gradients from recomputed layers
 * (LoRA and full, qwen3 and Llama 3 shapes, a 3-layer llama), against the
 * same finite differences; without a forward or checkpointing,
 * model_recompute_layer refuses. */
static void test_checkpoint(void **state)
{
	(void)state;
	tm_model t;
	model *m = NULL;
	g_flags = MODEL_CHECKPOINT;
	make_qwen3(&t, 31);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("checkpointed qwen3, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	full_grads("checkpointed qwen3", &t);
	tm_free(&t);
	make_llama3(&t, 32);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("checkpointed llama3, attn_v + ffn_up", &t, m, 0,
	           (1u << LORA_ATTN_V) | (1u << LORA_FFN_UP));
	model_free(m);
	tm_free(&t);
	tm_make(&t, MODEL_ARCH_LLAMA, 3, 4, 2, 4, 12, 17, 1, 1, 33);
	full_grads("checkpointed llama 3 layers", &t);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	assert_int_equal(model_recompute_layer(m, 0), FL_EINVAL); /* no arena */
	assert_int_equal(model_prepare(m, 1, 4, MODEL_KEEP_ACTS), 0);
	assert_int_equal(model_recompute_layer(m, 0), FL_EINVAL); /* not checkpointed */
	assert_int_equal(model_prepare(m, 1, 4, MODEL_CHECKPOINT), 0);
	int32_t ids[4] = {1, 2, 3, 4};
	assert_int_equal(model_forward(m, ids, NULL, 1, 4, NULL), 0);
	assert_int_equal(model_recompute_layer(m, 3), FL_EINVAL);
	assert_int_equal(model_recompute_layer(m, 2), 0);
	model_free(m);
	tm_free(&t);
	g_flags = MODEL_KEEP_ACTS;
}

static void test_args(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 2, 2, 4, 8, 11, 1, 0, 1);
	model *m = NULL;
	grad_ws *ws = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	assert_int_equal(grad_ws_new(m, 1, 4, 0, &ws), 0);
	assert_true(grad_ws_bytes(ws) > 0);
	int32_t ids[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, 5}, none[4] = {-1, -1, -1, -1};
	float *gb = calloc(t.n, sizeof(float));
	grad_layer gl[2] = {{0}};
	grad_weights gw = {.tok_embd = gb, .layers = gl};
	/* inference arena (activations not kept) */
	assert_int_equal(model_prepare(m, 1, 4, 0), 0);
	assert_int_equal(model_forward(m, ids, tgt, 1, 4, NULL), 0);
	assert_int_equal(grad_backward(ws, m, ids, tgt, 1, 4, 1, NULL, &gw, NULL), FL_EINVAL);
	assert_int_equal(model_prepare(m, 1, 4, MODEL_KEEP_ACTS), 0);
	assert_int_equal(model_forward(m, ids, none, 1, 4, NULL), 0);
	assert_int_equal(grad_backward(ws, m, ids, none, 1, 4, 1, NULL, &gw, NULL), FL_ENUMERIC);
	/* shape other than the forward's */
	assert_int_equal(model_forward(m, ids, tgt, 1, 4, NULL), 0);
	assert_int_equal(grad_backward(ws, m, ids, tgt, 1, 3, 1, NULL, &gw, NULL), FL_EINVAL);
	assert_int_equal(grad_backward(ws, m, ids, tgt, 1, 4, 1, NULL, &gw, NULL), 0);
	/* flops: backward of LoRA training ~ forward, full ~ twice */
	double f0 = model_forward_flops(&t.c, 2, 8);
	double f1 = grad_backward_flops(&t.c, 2, 8, 0), f2 = grad_backward_flops(&t.c, 2, 8, 1);
	assert_true(f1 > 0.9 * f0 && f2 > 1.8 * f0);
	free(gb);
	grad_ws_free(ws);
	model_free(m);
	tm_free(&t);
}

static int threaded(void **state)
{
	(void)state;
	tk_parallel_always(1);
	kern_parallel_always(1);
	kern_set_threads(3);
	return 0;
}

static int serial(void **state)
{
	(void)state;
	tk_parallel_always(0);
	kern_parallel_always(0);
	kern_set_threads(1);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lora_llama),
	    cmocka_unit_test(test_lora_qwen2),
	    cmocka_unit_test(test_lora_q8_base),
	    cmocka_unit_test(test_full_llama),
	    cmocka_unit_test(test_full_qwen2),
	    cmocka_unit_test(test_lora_qwen3_llama3),
	    cmocka_unit_test(test_full_qwen3_llama3),
	    cmocka_unit_test(test_checkpoint),
	    cmocka_unit_test(test_args),
	};
	const struct CMUnitTest few[] = {
	    cmocka_unit_test(test_lora_llama),
	    cmocka_unit_test(test_full_llama),
	};
	int rc = cmocka_run_group_tests_name("serial", tests, serial, NULL);
	rc |= cmocka_run_group_tests_name("threaded", few, threaded, NULL);
	return rc;
}
