/* test_adapter — LoRA adapters in the model engine: spec parsing, PEFT
 * initialisation, layout checks, and the LoRA forward (model_set_lora):
 * with B = 0 the logits equal the base model's bit for bit; with random A
 * and B they match a double-precision reference of y = Wx + s B(Ax)
 * (tolerance 1e-4 normwise, as test_model) and a model whose weights have
 * s·B·A folded in (1e-5); KV-cache decoding with LoRA equals the full
 * forward (1e-5). */
#include "testutil.h"
#include "tiny_model.h"

#include "err.h"
#include "model/adapter.h"
#include "model/model.h"
#include "quant.h"
#include "rng.h"
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(const char *what, double err, double tol)
{
	printf("  %-56s %.2e (tol %.0e)\n", what, err, tol);
	if (!(err <= tol)) {
		print_error("%s: %.3e > %.0e\n", what, err, tol);
		fail();
	}
}

static void test_spec(void **state)
{
	(void)state;
	uint32_t m = 0;
	char err[160], out[128];
	assert_int_equal(lora_targets_parse("attn_q,attn_v", &m, err, sizeof err), 0);
	assert_int_equal(m, (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V));
	assert_int_equal(lora_targets_parse("all", &m, err, sizeof err), 0);
	assert_int_equal(m, LORA_ALL_TARGETS);
	assert_int_equal(lora_targets_parse("ffn_down, attn_output", &m, err, sizeof err), 0);
	lora_targets_format(m, out, sizeof out);
	assert_string_equal(out, "attn_output,ffn_down");
	assert_int_equal(lora_targets_parse("attn_q,mlp", &m, err, sizeof err), FL_EINVAL);
	assert_non_null(strstr(err, "'mlp'"));
	assert_int_equal(lora_targets_parse("", &m, err, sizeof err), FL_EINVAL);

	lora_spec s = {.rank = 8, .alpha = 16, .targets = 1};
	assert_float_equal(lora_scale(&s), 2.0f, 0);
	s.rslora = 1;
	assert_float_equal(lora_scale(&s), 16.0f / sqrtf(8.0f), 1e-6);
	assert_int_equal(lora_spec_check(&s, err, sizeof err), 0);
	s.rank = 0;
	assert_int_equal(lora_spec_check(&s, err, sizeof err), FL_EINVAL);
	s.rank = 4;
	s.alpha = NAN;
	assert_int_equal(lora_spec_check(&s, err, sizeof err), FL_EINVAL);
	s.alpha = 1;
	s.targets = 1u << 9;
	assert_int_equal(lora_spec_check(&s, err, sizeof err), FL_EINVAL);
}

static void test_init_layout(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 4, 24, 19, 1, 0, 7);
	lora_spec s = {.rank = 3, .alpha = 6, .targets = LORA_ALL_TARGETS};
	tset *a = NULL, *b = NULL, *z = NULL;
	assert_int_equal(adp_init(&t.c, &s, 42, &a), 0);
	assert_int_equal(adp_init(&t.c, &s, 42, &b), 0);
	assert_int_equal(adp_layout(&t.c, &s, &z), 0);
	assert_int_equal(tset_count(a), 2 * 2 * 7);
	/* layer by layer, canonical target order, a before b */
	assert_string_equal(tset_at(a, 0)->name, "blk.0.attn_q.lora_a");
	assert_string_equal(tset_at(a, 1)->name, "blk.0.attn_q.lora_b");
	assert_string_equal(tset_at(a, 13)->name, "blk.0.ffn_down.lora_b");
	assert_string_equal(tset_at(a, 14)->name, "blk.1.attn_q.lora_a");
	uint8_t fa[32], fb[32];
	tset_fingerprint(a, fa);
	tset_fingerprint(b, fb);
	assert_memory_equal(fa, fb, 32); /* same seed, same bytes */
	/* each lora_a is U(-1/sqrt(in), 1/sqrt(in)) drawn from its own stream:
	 * bounds, mean and variance (bound^2/3) over all of them; lora_b zero */
	double sum = 0, sq = 0;
	size_t n = 0;
	for (size_t i = 0; i < tset_count(a); i++) {
		const tensor *x = tset_at(a, i);
		if (strstr(x->name, "lora_b")) {
			for (size_t k = 0; k < x->n; k++)
				assert_true(x->data[k] == 0.0f);
			continue;
		}
		const double bound = 1.0 / sqrt((double)x->shape[1]);
		for (size_t k = 0; k < x->n; k++) {
			assert_true(fabs(x->data[k]) <= bound);
			sum += x->data[k] / bound;
			sq += (x->data[k] / bound) * (x->data[k] / bound);
			n++;
		}
	}
	printf("  init: %zu values, mean %.4f (0), var %.4f (1/3)\n", n, sum / n, sq / n);
	assert_true(fabs(sum / n) < 0.06);
	assert_true(fabs(sq / n - 1.0 / 3.0) < 0.04);
	/* first value of blk.0.attn_q.lora_a from its definition */
	rng r;
	rng_seed(&r, quant_seed_derive(42, "blk.0.attn_q.lora_a"));
	float first = (float)((2.0 * rng_uniform(&r) - 1.0) / sqrt((double)t.c.dim));
	assert_true(tset_find(a, "blk.0.attn_q.lora_a")->data[0] == first);
	/* another seed differs */
	tset *c = NULL;
	assert_int_equal(adp_init(&t.c, &s, 43, &c), 0);
	tset_fingerprint(c, fb);
	assert_memory_not_equal(fa, fb, 32);

	/* checks */
	char err[200];
	assert_int_equal(adp_check(&t.c, &s, a, err, sizeof err), 0);
	lora_spec s2 = s;
	assert_int_equal(adp_spec_from_tset(&t.c, a, &s2, err, sizeof err), 0);
	assert_int_equal(s2.rank, 3);
	assert_int_equal(s2.targets, LORA_ALL_TARGETS);
	s2 = s;
	s2.targets = 1;
	assert_int_equal(adp_check(&t.c, &s2, a, err, sizeof err), FL_EMISMATCH);
	assert_non_null(strstr(err, "not part of this adapter"));
	s2 = s;
	s2.rank = 4;
	assert_int_equal(adp_check(&t.c, &s2, a, err, sizeof err), FL_EMISMATCH);
	assert_non_null(strstr(err, "blk.0.attn_q.lora_a"));
	tset *bad = NULL;
	lora_spec s3 = {.rank = 3, .alpha = 6, .targets = 1u << LORA_ATTN_Q};
	assert_int_equal(adp_layout(&t.c, &s3, &bad), 0);
	uint64_t sh[2] = {3, 5};
	assert_int_equal(tset_insert(bad, "blk.7.attn_q.lora_a", 2, sh, NULL, NULL), 0);
	assert_int_equal(adp_check(&t.c, &s3, bad, err, sizeof err), FL_EMISMATCH);
	assert_non_null(strstr(err, "blk.7.attn_q.lora_a"));
	assert_int_equal(adp_spec_from_tset(&t.c, bad, &s2, err, sizeof err), FL_EMISMATCH);
	tset_free(bad);
	tset_free(a);
	tset_free(b);
	tset_free(c);
	tset_free(z);
	tm_free(&t);
}

/* Logits of m over ids [B, T] (a copy). */
static float *logits_of(model *m, const int32_t *ids, int B, int T)
{
	const int V = model_cfg(m)->vocab;
	assert_int_equal(model_forward(m, ids, NULL, B, T, NULL), 0);
	float *p = malloc(sizeof(float) * (size_t)B * T * V);
	memcpy(p, model_logits(m), sizeof(float) * (size_t)B * T * V);
	return p;
}

static void b_zero_equals_base(int arch, int NKV, int tied, int bias)
{
	tm_model t;
	tm_make(&t, arch, 2, 4, NKV, 6, 20, 23, tied, bias, 11);
	const int B = 2, T = 9, V = t.c.vocab;
	uint64_t s = 5;
	int32_t ids[18];
	tm_rand_ids(ids, B * T, V, &s);
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	assert_int_equal(model_prepare(m, B, T, MODEL_KEEP_ACTS), 0);
	float *base = logits_of(m, ids, B, T);
	lora_spec sp = {.rank = 4, .alpha = 8, .targets = LORA_ALL_TARGETS};
	tset *ad = NULL;
	adp_binding *bd = NULL;
	assert_int_equal(adp_init(&t.c, &sp, 3, &ad), 0);
	assert_int_equal(adp_bind(&t.c, &sp, ad, B * T, &bd), 0);
	assert_int_equal(model_set_lora(m, adp_binding_lora(bd)), 0);
	float *lo = logits_of(m, ids, B, T);
	size_t diff = 0;
	for (size_t i = 0; i < (size_t)B * T * V; i++)
		diff += !(lo[i] == base[i]);
	printf("  B = 0 (arch %d, NKV %d): %zu of %d logits differ from the base\n", arch, NKV,
	       diff, B * T * V);
	assert_int_equal(diff, 0);
	/* also through the KV cache: decoding with B = 0 equals decoding without */
	for (int pass = 0; pass < 2; pass++) {
		static float dec[2][2 * 9 * 23];
		assert_int_equal(model_set_lora(m, pass ? adp_binding_lora(bd) : NULL), 0);
		assert_int_equal(model_cache_alloc(m, B, T, 4), 0);
		int32_t step[2 * 4];
		for (int t0 = 0; t0 < T; t0 += 4) {
			int n = T - t0 < 4 ? T - t0 : 4;
			for (int b = 0; b < B; b++)
				memcpy(step + b * n, ids + b * T + t0, sizeof(int32_t) * n);
			const float *dl = NULL;
			assert_int_equal(model_decode(m, step, B, n, &dl), 0);
			for (int b = 0; b < B; b++)
				memcpy(dec[pass] + ((size_t)b * T + t0) * V, dl + (size_t)b * n * V,
				       sizeof(float) * n * V);
		}
		if (pass == 1)
			for (size_t i = 0; i < (size_t)B * T * V; i++)
				assert_true(dec[0][i] == dec[1][i]);
	}
	free(base);
	free(lo);
	model_free(m);
	adp_binding_free(bd);
	tset_free(ad);
	tm_free(&t);
}

static void test_b_zero(void **state)
{
	(void)state;
	b_zero_equals_base(MODEL_ARCH_LLAMA, 2, 1, 0);
	b_zero_equals_base(MODEL_ARCH_QWEN2, 4, 0, 1);
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

static void lora_vs_ref(int arch, int NKV, uint32_t targets, int rslora)
{
	tm_model t;
	tm_make(&t, arch, 2, 4, NKV, 6, 20, 23, 1, arch == MODEL_ARCH_QWEN2, 21);
	const int B = 2, T = 11, V = t.c.vocab, C = t.c.dim;
	uint64_t s = 9;
	int32_t ids[22];
	tm_rand_ids(ids, B * T, V, &s);
	lora_spec sp = {.rank = 5, .alpha = 7, .targets = targets, .rslora = rslora};
	tset *ad = NULL;
	adp_binding *bd = NULL;
	assert_int_equal(adp_layout(&t.c, &sp, &ad), 0);
	fill_random(ad, 77, 0.3f);
	assert_int_equal(adp_bind(&t.c, &sp, ad, 0, &bd), 0);
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	assert_int_equal(model_prepare(m, B, T, 0), 0);
	assert_int_equal(model_set_lora(m, adp_binding_lora(bd)), 0);
	float *got = logits_of(m, ids, B, T);

	/* double reference of the adapted model */
	tm_lora dl;
	tm_lora_from(&dl, &t.c, &sp, ad);
	double *ref = malloc(sizeof(double) * (size_t)B * T * V);
	int32_t tgt[22];
	memcpy(tgt, ids, sizeof tgt);
	tm_ref_loss(&t, &dl, ids, tgt, B, T, ref);
	char what[128];
	snprintf(what, sizeof what, "LoRA logits vs double ref (arch %d, targets 0x%02x%s)", arch,
	         targets, rslora ? ", rslora" : "");
	check(what, tm_relerr(got, ref, (size_t)B * T * V), 1e-4);

	/* the same with s B A folded into f32 copies of the weights */
	tm_model f;
	tm_make(&f, arch, 2, 4, NKV, 6, 20, 23, 1, arch == MODEL_ARCH_QWEN2, 21);
	for (int l = 0; l < t.c.n_layers; l++) {
		model_layer *y = &f.layers[l];
		kern_mat *mats[7] = {&y->wq,     &y->wk,   &y->wv,    &y->wo,
		                     &y->w_gate, &y->w_up, &y->w_down};
		for (int tg = 0; tg < 7; tg++) {
			int i = l * 7 + tg, in, o;
			if (!dl.a[i])
				continue;
			model_lora_dims(&t.c, tg, &in, &o);
			float *W = (float *)mats[tg]->data;
			for (int r = 0; r < o; r++)
				for (int c = 0; c < in; c++) {
					double acc = 0;
					for (int j = 0; j < dl.rank; j++)
						acc +=
						    dl.b[i][r * dl.rank + j] * dl.a[i][j * in + c];
					W[(size_t)r * in + c] =
					    (float)(W[(size_t)r * in + c] + dl.scale * acc);
				}
		}
	}
	model *mf = NULL;
	assert_int_equal(model_new_from_weights(&f.c, &f.w, &mf), 0);
	assert_int_equal(model_prepare(mf, B, T, 0), 0);
	float *merged = logits_of(mf, ids, B, T);
	double num = 0, den = 0;
	for (size_t i = 0; i < (size_t)B * T * V; i++) {
		num = fmax(num, fabs((double)got[i] - merged[i]));
		den = fmax(den, fabs((double)merged[i]));
	}
	snprintf(what, sizeof what, "LoRA logits vs folded weights (arch %d)", arch);
	check(what, num / den, 1e-5);

	/* KV-cache decoding in steps of 3 with LoRA */
	assert_int_equal(model_cache_alloc(m, B, T, 3), 0);
	num = 0;
	for (int t0 = 0; t0 < T; t0 += 3) {
		int n = T - t0 < 3 ? T - t0 : 3;
		int32_t step[6];
		for (int b = 0; b < B; b++)
			memcpy(step + b * n, ids + b * T + t0, sizeof(int32_t) * n);
		const float *dlog = NULL;
		assert_int_equal(model_decode(m, step, B, n, &dlog), 0);
		for (int b = 0; b < B; b++)
			for (int j = 0; j < n; j++)
				for (int v = 0; v < V; v++)
					num = fmax(num,
					           fabs((double)dlog[((size_t)b * n + j) * V + v] -
					                got[((size_t)b * T + t0 + j) * V + v]));
	}
	snprintf(what, sizeof what, "LoRA decode vs full forward (arch %d)", arch);
	check(what, num / den, 1e-5);
	(void)C;

	/* detaching restores the base */
	assert_int_equal(model_set_lora(m, NULL), 0);
	assert_null(model_get_lora(m));
	free(got);
	free(merged);
	free(ref);
	tm_lora_free(&dl);
	model_free(m);
	model_free(mf);
	adp_binding_free(bd);
	tset_free(ad);
	tm_free(&t);
	tm_free(&f);
}

static void test_lora_forward(void **state)
{
	(void)state;
	lora_vs_ref(MODEL_ARCH_LLAMA, 2, LORA_ALL_TARGETS, 0);
	lora_vs_ref(MODEL_ARCH_QWEN2, 1, LORA_ALL_TARGETS, 1);
	lora_vs_ref(MODEL_ARCH_LLAMA, 4, (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V), 0);
	lora_vs_ref(MODEL_ARCH_LLAMA, 2, (1u << LORA_FFN_DOWN) | (1u << LORA_ATTN_OUTPUT), 0);
}

static void test_set_lora_args(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 1, 2, 2, 4, 8, 11, 1, 0, 3);
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	const float *ptrs[7] = {0};
	model_lora lo = {.rank = 0, .scale = 1, .a = ptrs, .b = ptrs};
	assert_int_equal(model_set_lora(m, &lo), FL_EINVAL);
	lo.rank = 2;
	lo.scale = INFINITY;
	assert_int_equal(model_set_lora(m, &lo), FL_EINVAL);
	lo.scale = 1;
	lo.a = NULL;
	assert_int_equal(model_set_lora(m, &lo), FL_EINVAL);
	assert_null(model_get_lora(m));
	model_free(m);
	tm_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_spec),          cmocka_unit_test(test_init_layout),
	    cmocka_unit_test(test_b_zero),        cmocka_unit_test(test_lora_forward),
	    cmocka_unit_test(test_set_lora_args),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
