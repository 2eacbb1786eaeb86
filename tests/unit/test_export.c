/* test_export — the merged-model export and model-level GPTQ.
 *
 *  - merged F32: logits of the exported file equal those of a model whose
 *    weights the test folds itself in double precision (W + s B A); one
 *    projection is also checked as y = W x + s B (A x) computed naively;
 *    metadata, tokenizer and 1-D tensors carried over unchanged;
 *  - merged F16/Q8_0/Q4_0: matrices byte-equal to ggml's reference
 *    quantizers applied to the test's merged weights; logits within stated
 *    tolerances of the F32 merge;
 *  - the chunked layer code that feeds GPTQ its calibration inputs matches
 *    model_forward;
 *  - GPTQ-Q4_0 perplexity below RTN-Q4_0 on held-out tokens (see below for
 *    the model), with GPTQ-Q8_0 / RTN-Q8_0 and F32 printed beside;
 *  - refusals: adapter for another base, GPTQ into a float type, too short
 *    calibration text, calibration ids outside the vocabulary, rows that do
 *    not fit 32-element blocks.
 *
 * The perplexity test here stays fast and self-contained, so it builds a
 * model with the structure GPTQ exploits in trained ones — per-channel RMSNorm gains spread over an
 * order of magnitude and a low-rank token embedding, so layer inputs are strongly correlated — and
 * measures perplexity on text *sampled from the F32 model itself* (held out from the calibration
 * samples): for such text the F32 model is the true distribution, so a quantized model's excess
 * cross-entropy is its KL divergence from the original, and the comparison is meaningful. The same
 * ordering on a model trained by `fedlora-node train --full` and real text:
 * tests/integration/test_gptq_trained.sh. */
#include "testutil.h"

#include "err.h"
#include "export.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "lora_fmt.h"
#include "model/model.h"
#include "model/sample.h"
#include "model/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mcfg {
	const char *arch;
	int C, L, NH, NKV, F, ctx, tied, structured;
	uint64_t seed;
} mcfg;

static const char *const TGN[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                   "ffn_gate", "ffn_up", "ffn_down"};

static double gauss(sample_rng *r)
{
	return sample_normal(r);
}

static void add_mat(gguf_writer *w, const char *name, int rows, int cols, double std, sample_rng *r,
                    const float *base)
{
	size_t n = (size_t)rows * cols;
	float *d = malloc(n * sizeof(float));
	assert_non_null(d);
	for (size_t i = 0; i < n; i++)
		d[i] = (float)((base ? base[i] : 0.0) + std * gauss(r));
	uint64_t ne[2] = {(uint64_t)cols, (uint64_t)rows};
	assert_int_equal(gguf_add_tensor_own(w, name, GTYPE_F32, 2, ne, d, n * sizeof(float)), 0);
}

static void add_vec(gguf_writer *w, const char *name, int n, double mean, double lnstd,
                    sample_rng *r)
{
	float *d = malloc(sizeof(float) * (size_t)n);
	assert_non_null(d);
	for (int i = 0; i < n; i++)
		d[i] = (float)(lnstd > 0 ? exp(lnstd * gauss(r))
		                         : mean + (mean == 0 ? 0.02 * gauss(r) : 0.0));
	uint64_t ne[1] = {(uint64_t)n};
	assert_int_equal(gguf_add_tensor_own(w, name, GTYPE_F32, 1, ne, d, sizeof(float) * n), 0);
}

/* A Llama-family F32 model with the built-in byte vocabulary. */
static void write_model(const char *path, const mcfg *m)
{
	gguf_writer *w = gguf_writer_new();
	sample_rng r;
	char k[128], nm[64];
	const int hd = m->C / m->NH, QD = m->NH * hd, KVD = m->NKV * hd;
	const int V = TOK_BYTE_VOCAB_SIZE;
	sample_seed(&r, m->seed);
	assert_non_null(w);
	assert_int_equal(tok_write_byte_vocab(w), 0);
	assert_int_equal(gguf_set_str(w, "general.architecture", m->arch), 0);
	assert_int_equal(gguf_set_str(w, "general.name", "export-test"), 0);
	assert_int_equal(gguf_set_u32(w, "general.file_type", 0), 0);
#define SU(s, v) (snprintf(k, sizeof k, "%s." s, m->arch), gguf_set_u32(w, k, (uint32_t)(v)))
	assert_int_equal(SU("context_length", m->ctx), 0);
	assert_int_equal(SU("embedding_length", m->C), 0);
	assert_int_equal(SU("block_count", m->L), 0);
	assert_int_equal(SU("feed_forward_length", m->F), 0);
	assert_int_equal(SU("attention.head_count", m->NH), 0);
	assert_int_equal(SU("attention.head_count_kv", m->NKV), 0);
#undef SU
	snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", m->arch);
	assert_int_equal(gguf_set_f32(w, k, 1e-5f), 0);
	const double gain = m->structured ? 0.8 : 0.0;
	/* token embedding: low rank (8) plus a little noise when structured */
	float *emb = NULL;
	if (m->structured) {
		emb = calloc((size_t)V * m->C, sizeof(float));
		double *U = malloc(sizeof(double) * V * 8), *P = malloc(sizeof(double) * 8 * m->C);
		assert_non_null(emb);
		assert_non_null(U);
		assert_non_null(P);
		for (int i = 0; i < V * 8; i++)
			U[i] = gauss(&r);
		for (int i = 0; i < 8 * m->C; i++)
			P[i] = gauss(&r) / sqrt(8.0);
		for (int v = 0; v < V; v++)
			for (int c = 0; c < m->C; c++) {
				double s = 0;
				for (int j = 0; j < 8; j++)
					s += U[v * 8 + j] * P[j * m->C + c];
				emb[(size_t)v * m->C + c] = (float)s;
			}
		free(U);
		free(P);
	}
	add_mat(w, "token_embd.weight", V, m->C, m->structured ? 0.2 : 0.5, &r, emb);
	free(emb);
	add_vec(w, "output_norm.weight", m->C, 1.0, gain, &r);
	if (!m->tied)
		add_mat(w, "output.weight", V, m->C, 2.5 / sqrt(m->C), &r, NULL);
	for (int l = 0; l < m->L; l++) {
		const int rows[7] = {QD, KVD, KVD, m->C, m->F, m->F, m->C};
		const int cols[7] = {m->C, m->C, m->C, QD, m->C, m->C, m->F};
		snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
		add_vec(w, nm, m->C, 1.0, gain, &r);
		snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
		add_vec(w, nm, m->C, 1.0, gain, &r);
		for (int t = 0; t < 7; t++) {
			double g = (t == 3 || t == 6) ? 0.6 : 1.2;
			snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, TGN[t]);
			add_mat(w, nm, rows[t], cols[t], g / sqrt(cols[t]), &r, NULL);
		}
		if (strcmp(m->arch, "qwen2") == 0) {
			snprintf(nm, sizeof nm, "blk.%d.attn_q.bias", l);
			add_vec(w, nm, QD, 0.0, 0, &r);
			snprintf(nm, sizeof nm, "blk.%d.attn_k.bias", l);
			add_vec(w, nm, KVD, 0.0, 0, &r);
			snprintf(nm, sizeof nm, "blk.%d.attn_v.bias", l);
			add_vec(w, nm, KVD, 0.0, 0, &r);
		}
	}
	assert_int_equal(gguf_writer_write(w, path), 0);
	gguf_writer_free(w);
}

static model *load(const char *path)
{
	model *m;
	char err[512];
	int rc = model_load(path, &m, err, sizeof err);
	if (rc)
		print_error("%s\n", err);
	assert_int_equal(rc, 0);
	return m;
}

static tset *make_adapter(const model_config *c, int r, uint64_t seed)
{
	tset *s;
	sample_rng g;
	sample_seed(&g, seed);
	const int QD = c->n_heads * c->head_dim, KVD = c->n_kv_heads * c->head_dim;
	const int rows[7] = {QD, KVD, KVD, c->dim, c->ffn_dim, c->ffn_dim, c->dim};
	const int cols[7] = {c->dim, c->dim, c->dim, QD, c->dim, c->dim, c->ffn_dim};
	assert_int_equal(tset_new(&s), 0);
	for (int l = 0; l < c->n_layers; l++)
		for (int t = 0; t < 7; t++) {
			char nm[64];
			tensor *x;
			uint64_t sa[2] = {(uint64_t)r, (uint64_t)cols[t]};
			uint64_t sb[2] = {(uint64_t)rows[t], (uint64_t)r};
			snprintf(nm, sizeof nm, "blk.%d.%s.lora_a", l, TGN[t]);
			assert_int_equal(tset_insert(s, nm, 2, sa, NULL, &x), 0);
			for (size_t i = 0; i < x->n; i++)
				x->data[i] = (float)(gauss(&g) / sqrt(cols[t]));
			snprintf(nm, sizeof nm, "blk.%d.%s.lora_b", l, TGN[t]);
			assert_int_equal(tset_insert(s, nm, 2, sb, NULL, &x), 0);
			for (size_t i = 0; i < x->n; i++)
				x->data[i] = (float)(0.1 * gauss(&g));
		}
	return s;
}

/* The test's own merge: a copy of W [rows, cols] + s * B @ A, product sums
 * in double. */
static float *ref_fold(const float *W, int rows, int cols, const tensor *A, const tensor *B,
                       double s)
{
	float *o = malloc(sizeof(float) * (size_t)rows * cols);
	int r = (int)A->shape[0];
	assert_non_null(o);
	for (int i = 0; i < rows; i++)
		for (int j = 0; j < cols; j++) {
			double acc = 0.0;
			for (int k = 0; k < r; k++)
				acc += (double)B->data[(size_t)i * r + k] *
				       (double)A->data[(size_t)k * cols + j];
			o[(size_t)i * cols + j] =
			    (float)((double)W[(size_t)i * cols + j] + s * acc);
		}
	return o;
}

/* Reference model: base weights with the adapter folded by ref_fold. The
 * returned buffers must outlive the model. */
typedef struct refm {
	model *m;
	model_layer *layers;
	float **bufs;
	int nbufs;
} refm;

static void ref_build(refm *R, model *base, const tset *ad, double s)
{
	const model_config *c = model_cfg(base);
	const model_weights *bw = model_wts(base);
	model_weights w = *bw;
	R->layers = calloc((size_t)c->n_layers, sizeof(model_layer));
	R->bufs = calloc((size_t)c->n_layers * 7, sizeof(float *));
	R->nbufs = 0;
	assert_non_null(R->layers);
	assert_non_null(R->bufs);
	for (int l = 0; l < c->n_layers; l++) {
		R->layers[l] = bw->layers[l];
		kern_mat *mats[7] = {&R->layers[l].wq,    &R->layers[l].wk,     &R->layers[l].wv,
		                     &R->layers[l].wo,    &R->layers[l].w_gate, &R->layers[l].w_up,
		                     &R->layers[l].w_down};
		for (int t = 0; t < 7; t++) {
			char na[64], nb[64];
			snprintf(na, sizeof na, "blk.%d.%s.lora_a", l, TGN[t]);
			snprintf(nb, sizeof nb, "blk.%d.%s.lora_b", l, TGN[t]);
			kern_mat *km = mats[t];
			assert_int_equal(km->type, GTYPE_F32);
			float *f = ref_fold(km->data, km->rows, km->cols, tset_find(ad, na),
			                    tset_find(ad, nb), s);
			R->bufs[R->nbufs++] = f;
			assert_int_equal(kern_mat_init(km, GTYPE_F32, f, km->rows, km->cols), 0);
		}
	}
	w.layers = R->layers;
	assert_int_equal(model_new_from_weights(c, &w, &R->m), 0);
}

static void ref_free(refm *R)
{
	model_free(R->m);
	for (int i = 0; i < R->nbufs; i++)
		free(R->bufs[i]);
	free(R->bufs);
	free(R->layers);
}

static float *logits_of(model *m, const int32_t *tkn, int B, int T)
{
	const int V = model_cfg(m)->vocab;
	assert_int_equal(model_prepare(m, B, T, 0), 0);
	assert_int_equal(model_forward(m, tkn, NULL, B, T, NULL), 0);
	float *o = malloc(sizeof(float) * (size_t)B * T * V);
	assert_non_null(o);
	memcpy(o, model_logits(m), sizeof(float) * (size_t)B * T * V);
	return o;
}

/* max |a - b| / max |b| */
static double rel_diff(const float *a, const float *b, size_t n)
{
	double md = 0, mb = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);
		if (d > md)
			md = d;
		if (fabs(b[i]) > mb)
			mb = fabs(b[i]);
	}
	return md / mb;
}

typedef struct fx {
	char *dir;
	char path[512];
} fx;

static int setup(void **state)
{
	fx *f = calloc(1, sizeof *f);
	f->dir = tu_mkdtemp();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	tu_rmtree(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

static void export_ok(const char *base, const exp_opts *o, const char *out, exp_report *rep)
{
	char why[512];
	int rc = exp_merged(base, o, out, rep, why, sizeof why);
	if (rc)
		print_error("exp_merged: %s\n", why);
	assert_int_equal(rc, 0);
}

static void check_carried_over(const char *base_path, const char *out_path, uint32_t type)
{
	gguf *a, *b;
	char err[256];
	assert_int_equal(gguf_open(base_path, &a, err, sizeof err), 0);
	assert_int_equal(gguf_open(out_path, &b, err, sizeof err), 0);
	/* every key of the base, same type; tokenizer arrays identical */
	for (size_t i = 0; i < gguf_kv_count(a); i++) {
		const char *k = gguf_kv_key(a, i);
		int j = gguf_find_key(b, k);
		assert_true(j >= 0);
		assert_int_equal(gguf_kv_type(a, i), gguf_kv_type(b, (size_t)j));
	}
	const gguf_str *ta, *tb;
	size_t na, nb;
	assert_int_equal(gguf_get_arr_strs(a, "tokenizer.ggml.tokens", &ta, &na), 0);
	assert_int_equal(gguf_get_arr_strs(b, "tokenizer.ggml.tokens", &tb, &nb), 0);
	assert_int_equal(na, nb);
	for (size_t i = 0; i < na; i++)
		assert_true(ta[i].n == tb[i].n && memcmp(ta[i].p, tb[i].p, ta[i].n) == 0);
	const void *sa, *sb;
	assert_int_equal(gguf_get_arr_data(a, "tokenizer.ggml.scores", GGUF_F32, &sa, &na), 0);
	assert_int_equal(gguf_get_arr_data(b, "tokenizer.ggml.scores", GGUF_F32, &sb, &nb), 0);
	assert_int_equal(na, nb);
	assert_memory_equal(sa, sb, na * 4);
	uint32_t ft;
	assert_int_equal(gguf_get_u32(b, "general.file_type", &ft), 0);
	assert_int_equal(ft, type == GTYPE_F32    ? 0
	                     : type == GTYPE_F16  ? 1
	                     : type == GTYPE_Q4_0 ? 2
	                                          : 7);
	/* same tensors in the same order; 1-D ones byte-identical */
	assert_int_equal(gguf_tensor_count(a), gguf_tensor_count(b));
	for (size_t i = 0; i < gguf_tensor_count(a); i++) {
		gguf_tensor x, y;
		gguf_tensor_at(a, i, &x);
		gguf_tensor_at(b, i, &y);
		assert_string_equal(x.name, y.name);
		assert_int_equal(x.ndims, y.ndims);
		assert_memory_equal(x.ne, y.ne, sizeof x.ne);
		if (x.ndims == 1) {
			assert_int_equal(y.type, x.type);
			assert_memory_equal(x.data, y.data, x.size);
		} else {
			assert_int_equal(y.type, type);
		}
	}
	gguf_free(a);
	gguf_free(b);
}

static void merged_f32_case(fx *f, const mcfg *mc)
{
	char base[600], out[600];
	snprintf(base, sizeof base, "%s/base-%s.gguf", f->dir, mc->arch);
	snprintf(out, sizeof out, "%s/merged-%s.gguf", f->dir, mc->arch);
	write_model(base, mc);
	model *bm = load(base);
	const model_config *c = model_cfg(bm);
	tset *ad = make_adapter(c, 4, 99);
	exp_opts o = {.adapter = ad, .params = {.alpha = 8.0f, .rank = 4}, .type = GTYPE_F32};
	exp_report rep;
	export_ok(base, &o, out, &rep);
	assert_int_equal(rep.n_merged, 7 * c->n_layers);
	check_carried_over(base, out, GTYPE_F32);

	refm R;
	ref_build(&R, bm, ad, 2.0); /* s = 8 / 4 */
	model *mm = load(out);
	const int B = 2, T = 24, V = c->vocab;
	int32_t tkn[48];
	uint64_t st = 3;
	for (int i = 0; i < B * T; i++)
		tkn[i] = (int32_t)(tu_rand(&st) % (uint64_t)V);
	float *lr = logits_of(R.m, tkn, B, T), *lm = logits_of(mm, tkn, B, T);
	float *lb = logits_of(bm, tkn, B, T);
	double d = rel_diff(lm, lr, (size_t)B * T * V), db = rel_diff(lb, lr, (size_t)B * T * V);
	printf("%s%s: merged F32 vs base+adapter reference: max |dlogit| / max |logit| = %.3g "
	       "(tolerance 1e-5); the adapter itself moves logits by %.3g\n",
	       mc->arch, mc->tied ? " (tied)" : "", d, db);
	assert_true(d <= 1e-5);
	assert_true(db > 1e-2); /* the adapter matters, so the check above means something */

	/* one projection: y = W x + s B (A x), naively in double, vs merged W x */
	gguf *gm;
	char err[256];
	assert_int_equal(gguf_open(out, &gm, err, sizeof err), 0);
	gguf_tensor t;
	assert_int_equal(gguf_tensor_find(gm, "blk.1.attn_k.weight", &t), 0);
	const kern_mat *W0 = &model_wts(bm)->layers[1].wk;
	const tensor *A = tset_find(ad, "blk.1.attn_k.lora_a"),
	             *Bm = tset_find(ad, "blk.1.attn_k.lora_b");
	int r = 4, rows = W0->rows, cols = W0->cols;
	double worst = 0;
	for (int trial = 0; trial < 4; trial++) {
		double x[512], ax[8];
		assert_true(cols <= 512);
		for (int j = 0; j < cols; j++)
			x[j] = 2.0 * tu_randu(&st) - 1.0;
		for (int k = 0; k < r; k++) {
			ax[k] = 0;
			for (int j = 0; j < cols; j++)
				ax[k] += A->data[k * cols + j] * x[j];
		}
		for (int i = 0; i < rows; i++) {
			double y = 0, ym = 0, bax = 0;
			for (int j = 0; j < cols; j++) {
				y += ((const float *)W0->data)[(size_t)i * cols + j] * x[j];
				ym += ((const float *)t.data)[(size_t)i * cols + j] * x[j];
			}
			for (int k = 0; k < r; k++)
				bax += Bm->data[i * r + k] * ax[k];
			y += 2.0 * bax;
			double e = fabs(ym - y) / (fabs(y) + 1e-3);
			if (e > worst)
				worst = e;
		}
	}
	printf("  blk.1.attn_k: merged W x vs W x + s B (A x): max relative error %.3g "
	       "(tolerance 1e-5)\n",
	       worst);
	assert_true(worst < 1e-5);
	gguf_free(gm);

	/* quantized merges: matrices are ggml's quantizers applied to the merged
	 * weights, byte for byte; logits within a stated distance of F32's */
	const uint32_t types[3] = {GTYPE_F16, GTYPE_Q8_0, GTYPE_Q4_0};
	const double tol[3] = {5e-3, 0.06, 0.5};
	for (int k = 0; k < 3; k++) {
		o.type = types[k];
		snprintf(out, sizeof out, "%s/merged-%s-%s.gguf", f->dir, mc->arch,
		         gtype_name(types[k]));
		export_ok(base, &o, out, &rep);
		check_carried_over(base, out, types[k]);
		gguf *g;
		assert_int_equal(gguf_open(out, &g, err, sizeof err), 0);
		for (int l = 0; l < c->n_layers; l++) {
			const kern_mat *mats[7] = {&R.layers[l].wq,     &R.layers[l].wk,
			                           &R.layers[l].wv,     &R.layers[l].wo,
			                           &R.layers[l].w_gate, &R.layers[l].w_up,
			                           &R.layers[l].w_down};
			for (int tg = 0; tg < 7; tg++) {
				char nm[64];
				snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, TGN[tg]);
				assert_int_equal(gguf_tensor_find(g, nm, &t), 0);
				size_t rb;
				assert_int_equal(gtype_row_size(types[k], mats[tg]->cols, &rb), 0);
				uint8_t *q = malloc(rb * mats[tg]->rows);
				assert_non_null(q);
				for (int i = 0; i < mats[tg]->rows; i++)
					assert_int_equal(
					    gtype_quant_row(types[k],
					                    (const float *)mats[tg]->data +
					                        (size_t)i * mats[tg]->cols,
					                    q + i * rb, mats[tg]->cols),
					    0);
				assert_int_equal(t.size, rb * mats[tg]->rows);
				assert_memory_equal(t.data, q, t.size);
				free(q);
			}
		}
		gguf_free(g);
		model *mq = load(out);
		float *lq = logits_of(mq, tkn, B, T);
		double dq = rel_diff(lq, lr, (size_t)B * T * V);
		printf("  merged %s: max |dlogit| / max |logit| vs the F32 reference = %.3g "
		       "(tolerance %g)\n",
		       gtype_name(types[k]), dq, tol[k]);
		assert_true(dq <= tol[k]);
		free(lq);
		model_free(mq);
	}
	free(lr);
	free(lm);
	free(lb);
	model_free(mm);
	ref_free(&R);
	model_free(bm);
	tset_free(ad);
}

static void test_merged_llama(void **state)
{
	mcfg mc = {"llama", 64, 2, 4, 2, 96, 64, 0, 0, 1};
	merged_f32_case(*state, &mc);
}

static void test_merged_qwen2_tied(void **state)
{
	mcfg mc = {"qwen2", 64, 2, 4, 4, 64, 64, 1, 0, 2};
	merged_f32_case(*state, &mc);
}

static void test_calibration_forward_matches_model(void **state)
{
	fx *f = *state;
	mcfg mc = {"qwen2", 64, 2, 4, 2, 96, 32, 0, 1, 3};
	snprintf(f->path, sizeof f->path, "%s/m.gguf", f->dir);
	write_model(f->path, &mc);
	model *m = load(f->path);
	const int S = 3, T = 20, C = mc.C;
	int32_t tkn[60];
	uint64_t st = 9;
	for (int i = 0; i < S * T; i++)
		tkn[i] = (int32_t)(tu_rand(&st) % TOK_BYTE_VOCAB_SIZE);
	float *mine = malloc(sizeof(float) * S * T * C);
	assert_non_null(mine);
	assert_int_equal(exp_forward_final(m, tkn, S, T, 2, mine), 0);
	assert_int_equal(model_prepare(m, S, T, 0), 0);
	assert_int_equal(model_forward(m, tkn, NULL, S, T, NULL), 0);
	double d = rel_diff(mine, model_get_acts(m)->lnf, (size_t)S * T * C);
	printf("calibration forward vs model_forward (final norm outputs): %.3g (tolerance 1e-5)\n",
	       d);
	assert_true(d <= 1e-5);
	free(mine);
	model_free(m);
}

/* Samples S sequences of T tokens from m (temperature 1), each starting at
 * BOS. */
static int32_t *sample_seqs(model *m, int S, int T, uint64_t seed)
{
	const int V = model_cfg(m)->vocab;
	int32_t *o = malloc(sizeof(int32_t) * S * T);
	float *work = malloc(sizeof(float) * 2 * V);
	sample_rng r;
	sample_seed(&r, seed);
	assert_non_null(o);
	assert_non_null(work);
	assert_int_equal(model_cache_alloc(m, 1, T, 1), 0);
	for (int s = 0; s < S; s++) {
		model_cache_reset(m);
		int32_t t = 1; /* BOS */
		for (int i = 0; i < T; i++) {
			const float *lg;
			o[(size_t)s * T + i] = t;
			assert_int_equal(model_decode(m, &t, 1, 1, &lg), 0);
			t = sample_token(lg, V, 1.0f, 0, &r, work);
			assert_true(t >= 0);
		}
	}
	free(work);
	return o;
}

/* mean NLL per predicted token over [S, T] sequences */
static double nll_of(const char *path, const int32_t *seq, int S, int T)
{
	model *m = load(path);
	int32_t *tg = malloc(sizeof(int32_t) * S * T);
	assert_non_null(tg);
	for (int s = 0; s < S; s++)
		for (int t = 0; t < T; t++)
			tg[s * T + t] = t + 1 < T ? seq[s * T + t + 1] : -1;
	float loss;
	assert_int_equal(model_prepare(m, S, T, 0), 0);
	assert_int_equal(model_forward(m, seq, tg, S, T, &loss), 0);
	double sum = 0;
	const float *ls = model_losses(m);
	for (int i = 0; i < S * T; i++)
		if (tg[i] >= 0)
			sum += ls[i];
	free(tg);
	model_free(m);
	return sum / (S * (T - 1));
}

static void test_gptq_beats_rtn(void **state)
{
	fx *f = *state;
	mcfg mc = {"llama", 128, 2, 4, 2, 256, 64, 0, 1, 7};
	char base[600], out[600];
	snprintf(base, sizeof base, "%s/structured.gguf", f->dir);
	write_model(base, &mc);
	model *m = load(base);
	const int T = 64, Sc = 32, Sh = 48;
	int32_t *calib = sample_seqs(m, Sc, T, 11);
	int32_t *held = sample_seqs(m, Sh, T, 12);
	model_free(m);

	double nll32 = nll_of(base, held, Sh, T);
	struct {
		uint32_t type;
		int gptq;
		double nll;
		uint64_t bytes;
	} runs[4] = {{GTYPE_Q8_0, 0}, {GTYPE_Q8_0, 1}, {GTYPE_Q4_0, 0}, {GTYPE_Q4_0, 1}};
	for (int k = 0; k < 4; k++) {
		exp_opts o = {.type = runs[k].type,
		              .gptq = runs[k].gptq,
		              .calib = calib,
		              .n_seq = Sc,
		              .seq_len = T,
		              .batch = 8,
		              .gq = {.stats = 1}};
		exp_report rep;
		snprintf(out, sizeof out, "%s/q%d.gguf", f->dir, k);
		export_ok(base, &o, out, &rep);
		if (runs[k].gptq) {
			assert_int_equal(rep.n_gptq, 7 * mc.L + 1);
			assert_int_equal(rep.n_converted, 1); /* token_embd */
			assert_true(rep.err_gptq < rep.err_rtn);
			printf("  %s GPTQ: summed layer output error %.4g vs round-to-nearest "
			       "%.4g\n",
			       gtype_name(runs[k].type), rep.err_gptq, rep.err_rtn);
		}
		runs[k].nll = nll_of(out, held, Sh, T);
		runs[k].bytes = rep.out_bytes;
	}
	printf("held-out tokens sampled from the F32 model (%d x %d; calibration %d x %d):\n", Sh,
	       T, Sc, T);
	printf("  F32        nll %.5f  ppl %.4f\n", nll32, exp(nll32));
	const char *nm[4] = {"RTN-Q8_0 ", "GPTQ-Q8_0", "RTN-Q4_0 ", "GPTQ-Q4_0"};
	for (int k = 0; k < 4; k++)
		printf("  %s  nll %.5f  ppl %.4f  (excess over F32 %+.5f nats, %llu bytes)\n",
		       nm[k], runs[k].nll, exp(runs[k].nll), runs[k].nll - nll32,
		       (unsigned long long)runs[k].bytes);
	assert_true(runs[3].nll < runs[2].nll); /* GPTQ-Q4_0 below RTN-Q4_0 */
	free(calib);
	free(held);
}

static void test_refusals(void **state)
{
	fx *f = *state;
	char base[600], other[600], out[600], why[512];
	mcfg mc = {"llama", 64, 2, 4, 2, 96, 32, 0, 0, 4};
	mcfg mo = {"llama", 96, 2, 4, 2, 96, 32, 0, 0, 4};
	snprintf(base, sizeof base, "%s/b.gguf", f->dir);
	snprintf(other, sizeof other, "%s/o.gguf", f->dir);
	snprintf(out, sizeof out, "%s/out.gguf", f->dir);
	write_model(base, &mc);
	write_model(other, &mo);
	model *m = load(other);
	tset *ad = make_adapter(model_cfg(m), 2, 5); /* for the other base */
	model_free(m);
	exp_opts o = {.adapter = ad, .params = {.alpha = 2, .rank = 2}, .type = GTYPE_F32};
	int rc = exp_merged(base, &o, out, NULL, why, sizeof why);
	printf("adapter for another base: %s\n", why);
	assert_int_equal(rc, FL_EMISMATCH);
	assert_non_null(strstr(why, "another base"));
	assert_int_equal(file_exists(out), 0);
	tset_free(ad);

	/* GPTQ into a float type, no calibration, bad block size */
	int32_t cal[64] = {0};
	exp_opts g = {.type = GTYPE_F16, .gptq = 1, .calib = cal, .n_seq = 2, .seq_len = 32};
	assert_int_equal(exp_merged(base, &g, out, NULL, why, sizeof why), FL_EINVAL);
	g.type = GTYPE_Q4_0;
	g.calib = NULL;
	assert_int_equal(exp_merged(base, &g, out, NULL, why, sizeof why), FL_EINVAL);
	g.calib = cal;
	g.gq.block = 48;
	assert_int_equal(exp_merged(base, &g, out, NULL, why, sizeof why), FL_EINVAL);
	g.gq.block = 0;
	/* ids outside the vocabulary, sequences longer than the context */
	cal[5] = 100000;
	rc = exp_merged(base, &g, out, NULL, why, sizeof why);
	assert_int_equal(rc, FL_EINVAL);
	assert_non_null(strstr(why, "vocabulary"));
	cal[5] = 3;
	g.n_seq = 1;
	g.seq_len = 64;
	rc = exp_merged(base, &g, out, NULL, why, sizeof why);
	assert_int_equal(rc, FL_EINVAL);
	assert_non_null(strstr(why, "context_length"));
	assert_int_equal(file_exists(out), 0);

	/* rows of 48 elements do not fit 32-element blocks */
	mcfg m48 = {"llama", 48, 1, 4, 4, 64, 32, 0, 0, 6};
	char b48[600];
	snprintf(b48, sizeof b48, "%s/b48.gguf", f->dir);
	write_model(b48, &m48);
	exp_opts q = {.type = GTYPE_Q4_0};
	rc = exp_merged(b48, &q, out, NULL, why, sizeof why);
	printf("q4_0 of a dim-48 model: %s\n", why);
	assert_int_equal(rc, FL_EINVAL);
	assert_non_null(strstr(why, "multiple of 32"));

	/* calibration text too short for the requested sequences */
	gguf *gb;
	char err[256];
	tok *tk;
	assert_int_equal(gguf_open(base, &gb, err, sizeof err), 0);
	assert_int_equal(tok_from_gguf(gb, &tk, err, sizeof err), 0);
	gguf_free(gb);
	const char *text = "To be, or not to be, that is the question.";
	int32_t *ids = NULL;
	size_t avail;
	rc = exp_calib_tokens(tk, text, strlen(text), 4, 32, &ids, &avail, why, sizeof why);
	printf("short calibration text: %s\n", why);
	assert_int_equal(rc, FL_EINVAL);
	assert_non_null(strstr(why, "too short"));
	assert_null(ids);
	/* enough: 2 windows of 16, evenly spaced and not overlapping */
	rc = exp_calib_tokens(tk, text, strlen(text), 2, 16, &ids, &avail, why, sizeof why);
	assert_int_equal(rc, 0);
	assert_true(avail >= 32);
	int32_t *all = malloc(sizeof(int32_t) * avail);
	size_t n2;
	assert_int_equal(tok_encode(tk, text, strlen(text), TOK_ADD_SPECIAL, all, avail, &n2), 0);
	assert_memory_equal(ids, all, 16 * sizeof(int32_t));
	assert_memory_equal(ids + 16, all + (avail - 16), 16 * sizeof(int32_t));
	free(all);
	free(ids);
	tok_free(tk);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_merged_llama, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_merged_qwen2_tied, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_calibration_forward_matches_model, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_gptq_beats_rtn, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
