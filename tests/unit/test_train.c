/* test_train — the trainer end to end on a tiny llama GGUF (dim 32, 2
 * layers, GQA 4 heads on 2, ffn 64, byte vocabulary, tied embeddings):
 *   - LoRA and full training memorise a short text (loss near zero);
 *   - a Q8_0 base (quantized at load) trains to within a stated margin of
 *     the F32 base on the same data and seeds; Q4_0 at load is smaller;
 *   - FFA-LoRA leaves every lora_a bit-identical;
 *   - same seed -> bit-identical adapters; another seed differs;
 *   - gradient accumulation 2 x 1 equals one batch of 2 (to rounding);
 *   - FedProx pulls toward the anchor; cancellation leaves the adapter;
 *   - eval: adapter with B = 0 equals the base; held-out NLL against
 *     model_forward; a full-trained model saved as GGUF reloads to the
 *     same eval;
 *   - bad options are refused with a sentence. */
#include "testutil.h"
#include "tiny_model.h"

#include "dataset.h"
#include "err.h"
#include "gtype.h"
#include "lora_fmt.h"
#include "model/tokenizer.h"
#include "optim.h"
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dir;
static char f32_path[512];
static tok *tk;

static const char *TEXT = "the quick brown fox jumps over the lazy dog, 42 times.";

static int setup(void **state)
{
	(void)state;
	/* tiny shapes: one thread (the threaded kernels are covered by
	 * test_train_kern and test_grad; spinning OpenMP teams on a loaded
	 * machine only make this test slow) */
	kern_set_threads(1);
	dir = tu_mkdtemp();
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 8, 64, TOK_BYTE_VOCAB_SIZE, 1, 0, 99);
	/* small projections, as init-model makes them; the (tied) embedding
	 * keeps unit scale so logits can grow large enough to memorise */
	kern_mat *mats[7 * 2];
	int nm = 0;
	for (int l = 0; l < 2; l++) {
		model_layer *y = &t.layers[l];
		kern_mat *k[7] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w_gate, &y->w_up, &y->w_down};
		for (int i = 0; i < 7; i++)
			mats[nm++] = k[i];
	}
	for (int i = 0; i < nm; i++) {
		float *p = (float *)mats[i]->data;
		for (size_t k = 0; k < (size_t)mats[i]->rows * mats[i]->cols; k++)
			p[k] *= 0.1f;
	}
	t.c.ctx = 96;
	snprintf(f32_path, sizeof f32_path, "%s/tiny.gguf", dir);
	int rc = tm_write_gguf(&t, f32_path, GTYPE_F32);
	tm_free(&t);
	return rc != 0 || tok_new_byte_vocab(&tk) != 0;
}

static int teardown(void **state)
{
	(void)state;
	tok_free(tk);
	tu_rmtree(dir);
	free(dir);
	return 0;
}

static ds *text_ds(const char *s)
{
	ds_opts o = {.format = DS_FMT_TEXT};
	ds *d = NULL;
	char err[256];
	assert_int_equal(ds_parse("mem.txt", s, strlen(s), tk, &o, &d, NULL, err, sizeof err), 0);
	return d;
}

static trainer *make_trainer(trn_base *b, int full, int ffa, int batch, int ctx)
{
	trn_opts o = {.full = full,
	              .lora = {.rank = 8, .alpha = 16, .targets = LORA_ALL_TARGETS, .ffa = ffa},
	              .max_batch = batch,
	              .max_ctx = ctx};
	trainer *t = NULL;
	char err[256];
	int rc = trn_new(b, &o, &t, err, sizeof err);
	if (rc != 0)
		print_error("trn_new: %s\n", err);
	assert_int_equal(rc, 0);
	return t;
}

static trn_hparams hp_for(long steps, float lr, int batch, int ctx)
{
	trn_hparams h = trn_defaults();
	h.steps = steps;
	h.lr = lr;
	h.batch = batch;
	h.ctx = ctx;
	h.seed = 3;
	return h;
}

static const char *PARA =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
    "was the season of Light, it was the season of Darkness, it was the spring of hope, it "
    "was the winter of despair, we had everything before us, we had nothing before us, we "
    "were all going direct to Heaven, we were all going direct the other way.";

/* LoRA run of `steps` on `quant` base over text; returns the final eval
 * NLL over the same text, *first the first step's loss. */
static double lora_run(const char *quant, const char *text, long steps, double *first)
{
	trn_base *b = NULL;
	char err[256];
	assert_int_equal(trn_base_load(f32_path, quant, 0, &b, err, sizeof err), 0);
	trainer *t = make_trainer(b, 0, 0, 4, 32);
	ds *d = text_ds(text);
	tset *ad = NULL;
	assert_int_equal(trn_adapter_init(t, 7, &ad), 0);
	trn_hparams h = hp_for(steps, 1e-2f, 4, 32);
	trn_metrics m;
	int rc = trn_train(t, ad, NULL, d, &h, &m, NULL, NULL, err, sizeof err);
	if (rc != 0)
		print_error("trn_train: %s\n", err);
	assert_int_equal(rc, 0);
	double nll = 0;
	uint64_t cnt = 0;
	assert_int_equal(trn_eval(t, ad, d, 32, 4, 0, &nll, &cnt, NULL, NULL), 0);
	assert_int_equal(cnt, ds_n_targets(d));
	printf("  LoRA on a %-5s base, %3ld steps: loss %.4f -> %.4f, eval nll %.4f, %zu KiB "
	       "of weights\n",
	       trn_base_type_name(b), steps, m.first_loss, m.tail_loss, nll,
	       trn_base_weight_bytes(b) / 1024);
	*first = m.first_loss;
	tset_free(ad);
	ds_free(d);
	trn_free(t);
	trn_base_free(b);
	return nll;
}

static void test_lora_memorise_and_q8(void **state)
{
	(void)state;
	double f0, f1, f2;
	double l32 = lora_run(NULL, TEXT, 200, &f0);
	double l8 = lora_run("q8_0", TEXT, 200, &f1);
	assert_true(l32 < 0.05); /* memorised */
	assert_true(fabs(l8 - l32) < 0.02);
	/* a text too long to memorise in 60 steps: the Q8_0 base ends within
	 * max(0.05, 5 %) of the F32 base's NLL, Q4_0 within max(0.1, 10 %) */
	double m32 = lora_run(NULL, PARA, 60, &f0);
	double m8 = lora_run("q8_0", PARA, 60, &f1);
	double m4 = lora_run("q4_0", PARA, 60, &f2);
	printf("  after 60 steps: F32 %.4f, Q8_0 %.4f (margin %.4f), Q4_0 %.4f (margin %.4f)\n",
	       m32, m8, fmax(0.05, 0.05 * m32), m4, fmax(0.1, 0.1 * m32));
	assert_true(m32 < 0.5 * f0);
	assert_true(fabs(m8 - m32) <= fmax(0.05, 0.05 * m32));
	assert_true(fabs(m4 - m32) <= fmax(0.1, 0.1 * m32));
}

static void test_full_memorise_save(void **state)
{
	(void)state;
	trn_base *b = NULL;
	char err[256];
	assert_int_equal(trn_base_load(f32_path, NULL, 1, &b, err, sizeof err), 0);
	trainer *t = make_trainer(b, 1, 0, 2, 32);
	ds *d = text_ds(TEXT);
	trn_hparams h = hp_for(150, 1e-2f, 2, 32);
	h.sched = OPTIM_COSINE;
	h.warmup = 10;
	h.weight_decay = 0.01f;
	trn_metrics m;
	assert_int_equal(trn_train(t, NULL, NULL, d, &h, &m, NULL, NULL, err, sizeof err), 0);
	double nll = 0;
	assert_int_equal(trn_eval(t, NULL, d, 32, 2, 0, &nll, NULL, NULL, NULL), 0);
	printf("  full: loss %.4f -> %.4f, eval nll %.5f\n", m.first_loss, m.last_loss, nll);
	assert_true(nll < 0.05);
	/* save, reload as a plain model, evaluate the same windows */
	char path[600];
	snprintf(path, sizeof path, "%s/full.gguf", dir);
	assert_int_equal(trn_base_save_gguf(b, path, err, sizeof err), 0);
	trn_base *b2 = NULL;
	assert_int_equal(trn_base_load(path, NULL, 0, &b2, err, sizeof err), 0);
	assert_string_equal(trn_base_type_name(b2), "F32");
	trainer *t2 = make_trainer(b2, 0, 0, 2, 32);
	double nll2 = 0;
	assert_int_equal(trn_eval(t2, NULL, d, 32, 2, 0, &nll2, NULL, NULL, NULL), 0);
	printf("  reloaded GGUF eval nll %.7f vs %.7f\n", nll2, nll);
	assert_true(nll2 == nll);
	uint32_t ft = 99;
	assert_int_equal(gguf_get_u32(trn_base_gguf(b2), "general.file_type", &ft), 0);
	assert_int_equal(ft, 0);
	/* a LoRA base cannot be saved as a model */
	assert_int_equal(trn_base_save_gguf(b2, path, err, sizeof err), FL_ESTATE);
	trn_free(t2);
	trn_base_free(b2);
	ds_free(d);
	trn_free(t);
	trn_base_free(b);
}

static void test_ffa_repro_accum(void **state)
{
	(void)state;
	trn_base *b = NULL;
	char err[256];
	assert_int_equal(trn_base_load(f32_path, NULL, 0, &b, err, sizeof err), 0);
	ds *d = text_ds(TEXT);
	trn_hparams h = hp_for(5, 1e-2f, 2, 16);
	/* FFA: every lora_a bit-identical, lora_b moved */
	trainer *t = make_trainer(b, 0, 1, 2, 16);
	tset *a0 = NULL, *a1 = NULL;
	assert_int_equal(trn_adapter_init(t, 11, &a0), 0);
	assert_int_equal(tset_clone(a0, &a1), 0);
	h.weight_decay = 0.1f;
	assert_int_equal(trn_train(t, a1, NULL, d, &h, NULL, NULL, NULL, err, sizeof err), 0);
	size_t moved = 0;
	for (size_t i = 0; i < tset_count(a0); i++) {
		const tensor *x = tset_at(a0, i), *y = tset_at(a1, i);
		if (strstr(x->name, ".lora_a"))
			assert_memory_equal(x->data, y->data, x->n * sizeof(float));
		else
			moved += memcmp(x->data, y->data, x->n * sizeof(float)) != 0;
	}
	assert_int_equal(moved, tset_count(a0) / 2);
	trn_free(t);

	/* reproducible by seed */
	t = make_trainer(b, 0, 0, 2, 16);
	tset *r1 = NULL, *r2 = NULL, *r3 = NULL;
	tset_clone(a0, &r1);
	tset_clone(a0, &r2);
	tset_clone(a0, &r3);
	h.weight_decay = 0;
	assert_int_equal(trn_train(t, r1, NULL, d, &h, NULL, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(trn_train(t, r2, NULL, d, &h, NULL, NULL, NULL, err, sizeof err), 0);
	uint8_t f1[32], f2[32], f3[32];
	tset_fingerprint(r1, f1);
	tset_fingerprint(r2, f2);
	assert_memory_equal(f1, f2, 32);
	h.seed = 4;
	assert_int_equal(trn_train(t, r3, NULL, d, &h, NULL, NULL, NULL, err, sizeof err), 0);
	tset_fingerprint(r3, f3);
	assert_memory_not_equal(f1, f3, 32);
	h.seed = 3;

	/* accumulation: 2 micro-batches of 1 == 1 batch of 2 (same windows:
	 * the permutation is per epoch, consumed in the same order) */
	tset *g1 = NULL, *g2 = NULL;
	tset_clone(a0, &g1);
	tset_clone(a0, &g2);
	trn_hparams ha = h, hb = h;
	ha.steps = hb.steps = 1;
	ha.batch = 2;
	hb.batch = 1;
	hb.accum = 2;
	/* a tiny lr keeps the comparison about the gradient, not Adam's sign */
	assert_int_equal(trn_train(t, g1, NULL, d, &ha, NULL, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(trn_train(t, g2, NULL, d, &hb, NULL, NULL, NULL, err, sizeof err), 0);
	double dmax = 0;
	for (size_t i = 0; i < tset_count(g1); i++) {
		const tensor *x = tset_at(g1, i), *y = tset_at(g2, i);
		for (size_t k = 0; k < x->n; k++)
			dmax = fmax(dmax, fabs((double)x->data[k] - y->data[k]));
	}
	printf("  accumulation 2x1 vs 1x2: max |diff| %.2e after one step (lr 1e-2)\n", dmax);
	assert_true(dmax < 1e-5);
	tset_free(g1);
	tset_free(g2);
	tset_free(r1);
	tset_free(r2);
	tset_free(r3);
	tset_free(a0);
	tset_free(a1);
	trn_free(t);
	ds_free(d);
	trn_base_free(b);
}

static int stop_at_3(void *arg, const trn_progress *p)
{
	(void)arg;
	return p->step >= 3;
}

static void test_prox_cancel_eval(void **state)
{
	(void)state;
	trn_base *b = NULL;
	char err[256];
	assert_int_equal(trn_base_load(f32_path, NULL, 0, &b, err, sizeof err), 0);
	ds *d = text_ds(TEXT);
	trainer *t = make_trainer(b, 0, 0, 2, 16);
	tset *g = NULL, *x = NULL, *y = NULL;
	assert_int_equal(trn_adapter_init(t, 5, &g), 0);
	tset_clone(g, &x);
	tset_clone(g, &y);
	trn_hparams h = hp_for(30, 1e-2f, 2, 16);
	assert_int_equal(trn_train(t, x, g, d, &h, NULL, NULL, NULL, err, sizeof err), 0);
	h.prox_mu = 50.0f;
	assert_int_equal(trn_train(t, y, g, d, &h, NULL, NULL, NULL, err, sizeof err), 0);
	tset *dx = NULL, *dy = NULL;
	tset_zeros_like(g, &dx);
	tset_zeros_like(g, &dy);
	tset_diff(dx, x, g);
	tset_diff(dy, y, g);
	printf("  FedProx: ||theta - global|| %.4f (mu 0) vs %.4f (mu 50)\n", tset_norm(dx),
	       tset_norm(dy));
	assert_true(tset_norm(dy) < 0.7 * tset_norm(dx));

	/* cancel: FL_EINTR, adapter untouched */
	tset *c = NULL;
	tset_clone(g, &c);
	h.prox_mu = 0;
	assert_int_equal(trn_train(t, c, NULL, d, &h, NULL, stop_at_3, NULL, err, sizeof err),
	                 FL_EINTR);
	uint8_t f1[32], f2[32];
	tset_fingerprint(c, f1);
	tset_fingerprint(g, f2);
	assert_memory_equal(f1, f2, 32);

	/* eval: initial adapter (B = 0) equals the base model */
	double e0, e1;
	uint64_t n0, n1;
	assert_int_equal(trn_eval(t, g, d, 16, 2, 0, &e0, &n0, NULL, NULL), 0);
	assert_int_equal(trn_eval(t, NULL, d, 16, 2, 0, &e1, &n1, NULL, NULL), 0);
	assert_true(e0 == e1 && n0 == n1);
	/* against model_forward over the same windows, by hand */
	model *m = trn_base_model(b);
	double sum = 0;
	uint64_t cnt = 0;
	int32_t in[16], tg[16];
	for (size_t w = 0; w < ds_n_windows(d, 16); w++) {
		int k = ds_window(d, 16, w, in, tg);
		float loss;
		assert_int_equal(model_forward(m, in, tg, 1, 16, &loss), 0);
		sum += (double)loss * k;
		cnt += (uint64_t)k;
	}
	printf("  eval %.6f vs by-hand %.6f over %llu targets\n", e1, sum / cnt,
	       (unsigned long long)cnt);
	assert_int_equal(cnt, n1);
	assert_true(fabs(sum / cnt - e1) < 1e-5);
	/* max_targets stops after the window that reaches it */
	assert_int_equal(trn_eval(t, NULL, d, 16, 1, 10, &e1, &n1, NULL, NULL), 0);
	assert_int_equal(n1, 16);

	tset_free(g);
	tset_free(x);
	tset_free(y);
	tset_free(dx);
	tset_free(dy);
	tset_free(c);
	trn_free(t);
	ds_free(d);
	trn_base_free(b);
}

/* PEFT export: reloads to the same canonical tensors (q/k rows permuted to
 * Hugging Face order and back) and evaluates identically, also through
 * trn_adapter_open (the eval/generate --adapter path). */
static void test_peft_roundtrip(void **state)
{
	(void)state;
	trn_base *b = NULL;
	char err[256];
	assert_int_equal(trn_base_load(f32_path, NULL, 0, &b, err, sizeof err), 0);
	trainer *t = make_trainer(b, 0, 0, 2, 32);
	ds *d = text_ds(PARA);
	tset *ad = NULL, *back = NULL;
	assert_int_equal(trn_adapter_init(t, 3, &ad), 0);
	trn_hparams h = hp_for(10, 1e-2f, 2, 32);
	assert_int_equal(trn_train(t, ad, NULL, d, &h, NULL, NULL, NULL, err, sizeof err), 0);
	char pdir[600];
	snprintf(pdir, sizeof pdir, "%s/peft", dir);
	lora_spec sp = {.rank = 8, .alpha = 16, .targets = LORA_ALL_TARGETS};
	assert_int_equal(
	    trn_adapter_save_peft(ad, &sp, trn_base_gguf(b), NULL, pdir, err, sizeof err), 0);
	lora_spec lp;
	char why[256];
	assert_int_equal(lfmt_load(pdir, trn_base_gguf(b), NULL, &back, &lp, why, sizeof why), 0);
	assert_float_equal(lp.alpha, 16, 0);
	assert_int_equal(lp.rank, 8);
	uint8_t f1[32], f2[32];
	tset_fingerprint(ad, f1);
	tset_fingerprint(back, f2);
	assert_memory_equal(f1, f2, 32);
	double e1, e2;
	assert_int_equal(trn_eval(t, ad, d, 32, 2, 0, &e1, NULL, NULL, NULL), 0);
	assert_int_equal(trn_eval(t, back, d, 32, 2, 0, &e2, NULL, NULL, NULL), 0);
	assert_true(e1 == e2);
	/* through the inference attachment */
	trn_free(t);
	model *m = trn_base_model(b);
	trn_adapter *ta = NULL;
	char desc[160];
	assert_int_equal(trn_adapter_open(m, pdir, 0, &ta, desc, sizeof desc, err, sizeof err), 0);
	printf("  PEFT reload: %s; eval %.6f == %.6f\n", desc, e1, e2);
	assert_int_equal(model_prepare(m, 1, 32, 0), 0);
	int32_t in[32], tg[32];
	double sum = 0;
	uint64_t cnt = 0;
	for (size_t w = 0; w < ds_n_windows(d, 32); w++) {
		int k = ds_window(d, 32, w, in, tg);
		assert_int_equal(model_forward(m, in, tg, 1, 32, NULL), 0);
		for (int i = 0; i < 32; i++)
			if (tg[i] >= 0)
				sum += model_losses(m)[i];
		cnt += (uint64_t)k;
	}
	printf("  through trn_adapter_open: %.6f\n", sum / cnt);
	assert_true(fabs(sum / cnt - e1) < 1e-6);
	trn_adapter_close(m, ta);
	assert_null(model_get_lora(m));
	tset_free(ad);
	tset_free(back);
	ds_free(d);
	trn_base_free(b);
}

static void test_errors(void **state)
{
	(void)state;
	trn_base *b = NULL;
	char err[256];
	assert_int_equal(trn_base_load(f32_path, "q5_1", 0, &b, err, sizeof err), FL_EINVAL);
	assert_non_null(strstr(err, "q5_1"));
	assert_int_equal(trn_base_load(f32_path, "q8_0", 1, &b, err, sizeof err), FL_EINVAL);
	char missing[600];
	snprintf(missing, sizeof missing, "%s/none.gguf", dir);
	assert_int_not_equal(trn_base_load(missing, NULL, 0, &b, err, sizeof err), 0);
	assert_non_null(strstr(err, "none.gguf"));
	assert_int_equal(trn_base_load(f32_path, NULL, 0, &b, err, sizeof err), 0);
	trn_opts o = {
	    .lora = {.rank = 4, .alpha = 8, .targets = 1}, .max_batch = 1, .max_ctx = 200};
	trainer *t = NULL;
	assert_int_equal(trn_new(b, &o, &t, err, sizeof err), FL_EINVAL);
	assert_non_null(strstr(err, "context"));
	o.max_ctx = 16;
	o.full = 1;
	assert_int_equal(trn_new(b, &o, &t, err, sizeof err), FL_EINVAL);
	o.full = 0;
	o.lora.rank = 0;
	assert_int_equal(trn_new(b, &o, &t, err, sizeof err), FL_EINVAL);
	o.lora.rank = 4;
	assert_int_equal(trn_new(b, &o, &t, err, sizeof err), 0);
	ds *d = text_ds(TEXT);
	tset *ad = NULL, *other = NULL;
	assert_int_equal(trn_adapter_layout(t, &ad), 0);
	trn_hparams h = hp_for(2, 1e-3f, 2, 16);
	assert_int_equal(trn_train(t, ad, NULL, d, &h, NULL, NULL, NULL, err, sizeof err),
	                 FL_EINVAL); /* batch 2 > 1 */
	h.batch = 1;
	h.ctx = 17;
	assert_int_equal(trn_train(t, ad, NULL, d, &h, NULL, NULL, NULL, err, sizeof err),
	                 FL_EINVAL);
	h.ctx = 16;
	assert_int_equal(trn_train(t, NULL, NULL, d, &h, NULL, NULL, NULL, err, sizeof err),
	                 FL_EINVAL);
	const model_config *c = model_cfg(trn_base_model(b));
	lora_spec sp = {.rank = 2, .alpha = 8, .targets = 1};
	assert_int_equal(adp_layout(c, &sp, &other), 0);
	assert_int_equal(trn_train(t, other, NULL, d, &h, NULL, NULL, NULL, err, sizeof err),
	                 FL_EMISMATCH);
	printf("  wrong adapter: %s\n", err);
	assert_int_equal(trn_train(t, ad, NULL, d, &h, NULL, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(trn_steps_for_epochs(d, 16, 1, 1, 1.0), (long)ds_n_windows(d, 16));
	assert_int_equal(trn_steps_for_epochs(d, 16, 2, 2, 2.0), 2);
	tset_free(ad);
	tset_free(other);
	ds_free(d);
	trn_free(t);
	trn_base_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lora_memorise_and_q8), cmocka_unit_test(test_full_memorise_save),
	    cmocka_unit_test(test_ffa_repro_accum),      cmocka_unit_test(test_prox_cancel_eval),
	    cmocka_unit_test(test_peft_roundtrip),       cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
