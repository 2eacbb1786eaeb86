/* test_model — the whole decoder forward against a naive double-precision
 * reference written here from the architecture's definition (embedding,
 * RMSNorm, Q/K/V with optional bias, RoPE as complex rotation, causal GQA
 * softmax attention, SwiGLU, tied or separate output), on tiny odd shapes;
 * quantized weights against the same weights dequantized; KV-cache decoding
 * against the full forward; argument and id checks. Qwen3 (per-head q/k
 * RMSNorm, NH*hd != C) and Llama 3 (RoPE frequency factors) go through the
 * second reference of tiny_model.h (shared with the gradient check), also
 * with KV-cache decoding.
 *
 * Error measure: normwise relative error max|got - ref| / max|ref| over all
 * logits (printed), tolerance 1e-4. */
#include "testutil.h"
#include "tiny_model.h"

#include "err.h"
#include "gtype.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4

static uint64_t rng = 0x5eed5eedULL;

static float frand(void)
{
	return (float)(tu_randu(&rng) * 2.0 - 1.0);
}

/* ---- random in-memory f32 weights ---------------------------------------- */

typedef struct tw {
	model_config c;
	model_weights w;
	model_layer layers[4];
	float *blob; /* every f32 parameter */
} tw;

static float *take(float **p, size_t n, float scale, float offset)
{
	float *r = *p;
	for (size_t i = 0; i < n; i++)
		r[i] = offset + frand() * scale;
	*p += n;
	return r;
}

static void f32mat(kern_mat *m, float *data, int rows, int cols)
{
	assert_int_equal(kern_mat_init(m, GTYPE_F32, data, rows, cols), 0);
}

static void make_tw(tw *t, int arch, int L, int NH, int NKV, int hd, int F, int V, int tied,
                    int bias)
{
	memset(t, 0, sizeof *t);
	model_config *c = &t->c;
	c->arch = arch;
	c->dim = NH * hd;
	c->n_layers = L;
	c->n_heads = NH;
	c->n_kv_heads = NKV;
	c->head_dim = hd;
	c->ffn_dim = F;
	c->vocab = V;
	c->ctx = 64;
	c->n_rot = hd & ~1; /* odd head dims rotate all but the last dim */
	c->rope_mode = arch == MODEL_ARCH_QWEN2 ? KERN_ROPE_NEOX : KERN_ROPE_NORM;
	c->rope_base = 10000.0f;
	c->norm_eps = 1e-5f;
	const int C = c->dim, QD = NH * hd, KVD = NKV * hd;
	size_t per = 2 * (size_t)C + (size_t)QD * C * 2 + 2 * (size_t)KVD * C + 3 * (size_t)F * C +
	             QD + 2 * KVD;
	size_t total = (size_t)L * per + 2 * (size_t)V * C + C;
	t->blob = malloc(sizeof(float) * total);
	assert_non_null(t->blob);
	float *p = t->blob;
	const float s = 0.3f; /* large enough that attention is far from uniform */
	f32mat(&t->w.tok_embd, take(&p, (size_t)V * C, 1.0f, 0), V, C);
	for (int l = 0; l < L; l++) {
		model_layer *y = &t->layers[l];
		y->attn_norm = take(&p, C, 0.2f, 1.0f);
		f32mat(&y->wq, take(&p, (size_t)QD * C, s, 0), QD, C);
		f32mat(&y->wk, take(&p, (size_t)KVD * C, s, 0), KVD, C);
		f32mat(&y->wv, take(&p, (size_t)KVD * C, s, 0), KVD, C);
		if (bias) {
			y->bq = take(&p, QD, 0.5f, 0);
			y->bk = take(&p, KVD, 0.5f, 0);
			y->bv = take(&p, KVD, 0.5f, 0);
		}
		f32mat(&y->wo, take(&p, (size_t)C * QD, s, 0), C, QD);
		y->ffn_norm = take(&p, C, 0.2f, 1.0f);
		f32mat(&y->w_gate, take(&p, (size_t)F * C, s, 0), F, C);
		f32mat(&y->w_up, take(&p, (size_t)F * C, s, 0), F, C);
		f32mat(&y->w_down, take(&p, (size_t)C * F, s, 0), C, F);
	}
	t->w.layers = t->layers;
	t->w.output_norm = take(&p, C, 0.2f, 1.0f);
	if (tied) {
		t->w.output = t->w.tok_embd;
		t->w.tied = 1;
	} else {
		f32mat(&t->w.output, take(&p, (size_t)V * C, 0.5f, 0), V, C);
	}
}

/* ---- naive double reference ---------------------------------------------- */

static double wget(const kern_mat *m, int r, int c)
{
	float row[4096];
	assert_true(m->cols <= 4096);
	assert_int_equal(gtype_dequant_row(m->type, (const uint8_t *)m->data + r * m->row_bytes,
	                                   row, (size_t)m->cols),
	                 0);
	return row[c];
}

/* y [O] = W [O, I] x [I] (+ b) */
static void ref_lin(double *y, const kern_mat *W, const float *b, const double *x)
{
	for (int o = 0; o < W->rows; o++) {
		double s = b ? b[o] : 0.0;
		for (int i = 0; i < W->cols; i++)
			s += wget(W, o, i) * x[i];
		y[o] = s;
	}
}

static void ref_rms(double *y, const double *x, const float *w, int C, double eps)
{
	double ss = 0;
	for (int i = 0; i < C; i++)
		ss += x[i] * x[i];
	double r = 1.0 / sqrt(ss / C + eps);
	for (int i = 0; i < C; i++)
		y[i] = x[i] * r * w[i];
}

static void ref_rope(double *x, int nh, const model_config *c, int p)
{
	for (int h = 0; h < nh; h++)
		for (int i = 0; i < c->n_rot / 2; i++) {
			int a = c->rope_mode == KERN_ROPE_NEOX ? i : 2 * i;
			int b = c->rope_mode == KERN_ROPE_NEOX ? i + c->n_rot / 2 : 2 * i + 1;
			double th = p * pow((double)c->rope_base, -2.0 * i / c->n_rot);
			double re = x[h * c->head_dim + a], im = x[h * c->head_dim + b];
			x[h * c->head_dim + a] = re * cos(th) - im * sin(th);
			x[h * c->head_dim + b] = re * sin(th) + im * cos(th);
		}
}

/* logits [B, T, V] and mean loss for tokens/targets [B, T]. */
static double ref_forward(const model_config *c, const model_weights *w, const int32_t *toks,
                          const int32_t *tgt, int B, int T, double *logits)
{
	const int C = c->dim, NH = c->n_heads, NKV = c->n_kv_heads, hd = c->head_dim;
	const int F = c->ffn_dim, V = c->vocab, QD = NH * hd, KVD = NKV * hd;
	double *x = calloc((size_t)T * C, sizeof(double));
	double *q = calloc((size_t)T * QD, sizeof(double));
	double *k = calloc((size_t)T * KVD, sizeof(double));
	double *v = calloc((size_t)T * KVD, sizeof(double));
	double *h = calloc((size_t)C, sizeof(double)), *a = calloc((size_t)QD, sizeof(double));
	double *o = calloc((size_t)C, sizeof(double)), *g = calloc((size_t)F, sizeof(double));
	double *u = calloc((size_t)F, sizeof(double)), *sc = calloc((size_t)T, sizeof(double));
	double loss = 0;
	int cnt = 0;
	for (int b = 0; b < B; b++) {
		for (int t = 0; t < T; t++)
			for (int i = 0; i < C; i++)
				x[t * C + i] = wget(&w->tok_embd, toks[b * T + t], i);
		for (int l = 0; l < c->n_layers; l++) {
			const model_layer *y = &w->layers[l];
			for (int t = 0; t < T; t++) {
				ref_rms(h, x + t * C, y->attn_norm, C, c->norm_eps);
				ref_lin(q + t * QD, &y->wq, y->bq, h);
				ref_lin(k + t * KVD, &y->wk, y->bk, h);
				ref_lin(v + t * KVD, &y->wv, y->bv, h);
				ref_rope(q + t * QD, NH, c, t);
				ref_rope(k + t * KVD, NKV, c, t);
			}
			for (int t = 0; t < T; t++) {
				for (int hh = 0; hh < NH; hh++) {
					int kh =
					    hh * NKV / NH; /* query heads share KV heads in order */
					double mx = -INFINITY, sum = 0;
					for (int j = 0; j <= t; j++) {
						double d = 0;
						for (int i = 0; i < hd; i++)
							d += q[t * QD + hh * hd + i] *
							     k[j * KVD + kh * hd + i];
						sc[j] = d / sqrt(hd);
						if (sc[j] > mx)
							mx = sc[j];
					}
					for (int j = 0; j <= t; j++)
						sum += exp(sc[j] - mx);
					for (int i = 0; i < hd; i++) {
						double acc = 0;
						for (int j = 0; j <= t; j++)
							acc += exp(sc[j] - mx) / sum *
							       v[j * KVD + kh * hd + i];
						a[hh * hd + i] = acc;
					}
				}
				ref_lin(o, &y->wo, NULL, a);
				for (int i = 0; i < C; i++)
					x[t * C + i] += o[i];
				ref_rms(h, x + t * C, y->ffn_norm, C, c->norm_eps);
				ref_lin(g, &y->w_gate, NULL, h);
				ref_lin(u, &y->w_up, NULL, h);
				for (int i = 0; i < F; i++)
					g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
				ref_lin(o, &y->w_down, NULL, g);
				for (int i = 0; i < C; i++)
					x[t * C + i] += o[i];
			}
		}
		for (int t = 0; t < T; t++) {
			double *lg = logits + ((size_t)b * T + t) * V;
			ref_rms(h, x + t * C, w->output_norm, C, c->norm_eps);
			ref_lin(lg, &w->output, NULL, h);
			if (tgt && tgt[b * T + t] >= 0) {
				double mx = -INFINITY, s = 0;
				for (int i = 0; i < V; i++)
					mx = lg[i] > mx ? lg[i] : mx;
				for (int i = 0; i < V; i++)
					s += exp(lg[i] - mx);
				loss += mx + log(s) - lg[tgt[b * T + t]];
				cnt++;
			}
		}
	}
	free(x);
	free(q);
	free(k);
	free(v);
	free(h);
	free(a);
	free(o);
	free(g);
	free(u);
	free(sc);
	return cnt ? loss / cnt : NAN;
}

static double relerr(const float *got, const double *ref, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double e = isnan(got[i]) ? INFINITY : fabs(got[i] - ref[i]);
		num = e > num ? e : num;
		den = fabs(ref[i]) > den ? fabs(ref[i]) : den;
	}
	return den > 0 ? num / den : num;
}

static double relerr_f(const float *got, const float *want, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double e = isnan(got[i]) ? INFINITY : fabs((double)got[i] - want[i]);
		num = e > num ? e : num;
		den = fabs(want[i]) > den ? fabs(want[i]) : den;
	}
	return den > 0 ? num / den : num;
}

static void check(const char *what, double err, double tol)
{
	printf("  %-52s max rel err %.2e (tol %.0e)\n", what, err, tol);
	if (!(err <= tol)) {
		print_error("%s: max rel err %.3e > %.0e\n", what, err, tol);
		fail();
	}
}

static void rand_ids(int32_t *p, int n, int V)
{
	for (int i = 0; i < n; i++)
		p[i] = (int32_t)(tu_rand(&rng) % (uint64_t)V);
}

static void forward_vs_ref(const char *name, tw *t, int B, int T, int flags)
{
	model *m = NULL;
	const int V = t->c.vocab;
	int32_t *toks = malloc(sizeof(int32_t) * (size_t)B * T);
	int32_t *tgt = malloc(sizeof(int32_t) * (size_t)B * T);
	double *ref = malloc(sizeof(double) * (size_t)B * T * V);
	rand_ids(toks, B * T, V);
	rand_ids(tgt, B * T, V);
	tgt[1] = -1; /* ignored position */
	assert_int_equal(model_new_from_weights(&t->c, &t->w, &m), 0);
	assert_int_equal(model_prepare(m, B, T, flags), 0);
	float loss = -1;
	assert_int_equal(model_forward(m, toks, tgt, B, T, &loss), 0);
	double rloss = ref_forward(&t->c, &t->w, toks, tgt, B, T, ref);
	char what[128];
	snprintf(what, sizeof what, "%s logits B=%d T=%d", name, B, T);
	check(what, relerr(model_logits(m), ref, (size_t)B * T * V), TOL);
	snprintf(what, sizeof what, "%s mean loss (%.5f)", name, rloss);
	check(what, fabs(loss - rloss) / fabs(rloss), TOL);
	model_free(m);
	free(toks);
	free(tgt);
	free(ref);
}

static void test_forward_llama_gqa_tied(void **state)
{
	(void)state;
	tw t;
	/* GQA 6 query heads on 2 KV heads, head dim 5 (odd), C=30, F=43, V=37 */
	make_tw(&t, MODEL_ARCH_LLAMA, 2, 6, 2, 5, 43, 37, 1, 0);
	forward_vs_ref("llama GQA tied", &t, 2, 7, 0);
	forward_vs_ref("llama GQA tied keep-acts", &t, 2, 7, MODEL_KEEP_ACTS);
	free(t.blob);
}

static void test_forward_qwen2_bias(void **state)
{
	(void)state;
	tw t;
	/* qwen2: QKV bias, neox rope, untied, 4 heads on 2 KV heads of 6 */
	make_tw(&t, MODEL_ARCH_QWEN2, 3, 4, 2, 6, 37, 29, 0, 1);
	forward_vs_ref("qwen2 bias untied", &t, 3, 5, 0);
	free(t.blob);
}

static void test_forward_long_partial_rope(void **state)
{
	(void)state;
	tw t;
	/* T beyond one attention chunk (64 rows), partial rotary dims */
	make_tw(&t, MODEL_ARCH_LLAMA, 1, 2, 1, 8, 19, 23, 0, 0);
	t.c.ctx = 80;
	t.c.n_rot = 4;
	forward_vs_ref("llama T=70 n_rot=4", &t, 1, 70, 0);
	free(t.blob);
}

/* Re-encodes every matrix of t in `type` (norms stay f32): q holds the new
 * weights, d the same values dequantized back to f32. */
typedef struct qset {
	tw q, d;
	uint8_t *qbytes;
	float *dbytes;
} qset;

static void requant(const kern_mat *src, kern_mat *qm, kern_mat *dm, uint32_t type, uint8_t **qp,
                    float **dp)
{
	size_t rb;
	assert_int_equal(gtype_row_size(type, (uint64_t)src->cols, &rb), 0);
	for (int r = 0; r < src->rows; r++) {
		const float *row = (const float *)src->data + (size_t)r * src->cols;
		assert_int_equal(
		    gtype_quant_row(type, row, *qp + (size_t)r * rb, (size_t)src->cols), 0);
		assert_int_equal(gtype_dequant_row(type, *qp + (size_t)r * rb,
		                                   *dp + (size_t)r * src->cols, (size_t)src->cols),
		                 0);
	}
	assert_int_equal(kern_mat_init(qm, type, *qp, src->rows, src->cols), 0);
	assert_int_equal(kern_mat_init(dm, GTYPE_F32, *dp, src->rows, src->cols), 0);
	*qp += rb * (size_t)src->rows;
	*dp += (size_t)src->rows * src->cols;
}

static void make_qset(qset *s, tw *t, uint32_t type)
{
	size_t n = (size_t)t->c.vocab * t->c.dim * 2 +
	           (size_t)t->c.n_layers *
	               (4 * (size_t)t->c.dim * t->c.dim + 3 * (size_t)t->c.dim * t->c.ffn_dim);
	s->qbytes = malloc(n * 4);
	s->dbytes = malloc(n * sizeof(float));
	uint8_t *qp = s->qbytes;
	float *dp = s->dbytes;
	s->q = *t;
	s->d = *t;
	s->q.w.layers = s->q.layers;
	s->d.w.layers = s->d.layers;
	requant(&t->w.tok_embd, &s->q.w.tok_embd, &s->d.w.tok_embd, type, &qp, &dp);
	if (t->w.tied) {
		s->q.w.output = s->q.w.tok_embd;
		s->d.w.output = s->d.w.tok_embd;
	} else {
		requant(&t->w.output, &s->q.w.output, &s->d.w.output, type, &qp, &dp);
	}
	for (int l = 0; l < t->c.n_layers; l++) {
		const model_layer *y = &t->layers[l];
		model_layer *yq = &s->q.layers[l], *yd = &s->d.layers[l];
		requant(&y->wq, &yq->wq, &yd->wq, type, &qp, &dp);
		requant(&y->wk, &yq->wk, &yd->wk, type, &qp, &dp);
		requant(&y->wv, &yq->wv, &yd->wv, type, &qp, &dp);
		requant(&y->wo, &yq->wo, &yd->wo, type, &qp, &dp);
		requant(&y->w_gate, &yq->w_gate, &yd->w_gate, type, &qp, &dp);
		requant(&y->w_up, &yq->w_up, &yd->w_up, type, &qp, &dp);
		requant(&y->w_down, &yq->w_down, &yd->w_down, type, &qp, &dp);
	}
}

static void quant_case(uint32_t type, int tied)
{
	tw t;
	qset s;
	/* C=64, F=96, V=50: block-size multiples for the 32-element types;
	 * C=F=256 for the 256-element K-quants */
	if (gtype_block_elems(type) > 32)
		make_tw(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 64, 256, 50, tied, 0);
	else
		make_tw(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 16, 96, 50, tied, 0);
	make_qset(&s, &t, type);
	const int B = 2, T = 9, V = t.c.vocab;
	int32_t toks[18];
	rand_ids(toks, B * T, V);
	model *mq = NULL, *md = NULL;
	assert_int_equal(model_new_from_weights(&s.q.c, &s.q.w, &mq), 0);
	assert_int_equal(model_new_from_weights(&s.d.c, &s.d.w, &md), 0);
	assert_int_equal(model_prepare(mq, B, T, 0), 0);
	assert_int_equal(model_prepare(md, B, T, 0), 0);
	assert_int_equal(model_forward(mq, toks, NULL, B, T, NULL), 0);
	assert_int_equal(model_forward(md, toks, NULL, B, T, NULL), 0);
	char what[96];
	snprintf(what, sizeof what, "%s weights vs dequantized f32%s", gtype_name(type),
	         tied ? " (tied)" : "");
	check(what, relerr_f(model_logits(mq), model_logits(md), (size_t)B * T * V), 1e-5);
	/* and the quantized forward against the double reference of its values */
	double *ref = malloc(sizeof(double) * (size_t)B * T * V);
	ref_forward(&s.q.c, &s.q.w, toks, NULL, B, T, ref);
	snprintf(what, sizeof what, "%s weights vs double reference", gtype_name(type));
	check(what, relerr(model_logits(mq), ref, (size_t)B * T * V), TOL);
	free(ref);
	model_free(mq);
	model_free(md);
	free(s.qbytes);
	free(s.dbytes);
	free(t.blob);
}

static void test_forward_quantized(void **state)
{
	(void)state;
	quant_case(GTYPE_Q8_0, 1);
	quant_case(GTYPE_Q4_0, 0);
	quant_case(GTYPE_F16, 0);
	/* the other types of Q4_K_M / Q5_K_M downloads */
	quant_case(GTYPE_Q4_1, 0);
	quant_case(GTYPE_Q5_0, 1);
	quant_case(GTYPE_Q5_1, 0);
	quant_case(GTYPE_Q4_K, 1);
	quant_case(GTYPE_Q5_K, 0);
	quant_case(GTYPE_Q6_K, 0);
	quant_case(GTYPE_BF16, 0);
}

/* Decoding through the KV cache in steps of `step` tokens gives the logits
 * of the full forward at every position. */
static void kv_case(tw *t, int B, int T, int step, const char *name)
{
	model *m = NULL;
	const int V = t->c.vocab;
	int32_t *toks = malloc(sizeof(int32_t) * (size_t)B * T);
	int32_t *chunk = malloc(sizeof(int32_t) * (size_t)B * step);
	float *dec = malloc(sizeof(float) * (size_t)B * T * V);
	rand_ids(toks, B * T, V);
	assert_int_equal(model_new_from_weights(&t->c, &t->w, &m), 0);
	assert_int_equal(model_prepare(m, B, T, 0), 0);
	assert_int_equal(model_forward(m, toks, NULL, B, T, NULL), 0);
	assert_int_equal(model_cache_alloc(m, B, T, step), 0);
	for (int pass = 0; pass < 2; pass++) { /* second pass: after a reset */
		model_cache_reset(m);
		for (int t0 = 0; t0 < T; t0 += step) {
			int n = T - t0 < step ? T - t0 : step;
			for (int b = 0; b < B; b++)
				memcpy(chunk + b * n, toks + b * T + t0,
				       sizeof(int32_t) * (size_t)n);
			const float *lg = NULL;
			assert_int_equal(model_cache_pos(m), t0);
			assert_int_equal(model_decode(m, chunk, B, n, &lg), 0);
			for (int b = 0; b < B; b++)
				memcpy(dec + ((size_t)b * T + t0) * V, lg + (size_t)b * n * V,
				       sizeof(float) * (size_t)n * V);
		}
		char what[128];
		snprintf(what, sizeof what, "%s KV cache step %d vs full forward (pass %d)", name,
		         step, pass);
		check(what, relerr_f(dec, model_logits(m), (size_t)B * T * V), 1e-5);
	}
	/* the cache is full now */
	const float *lg = NULL;
	assert_int_equal(model_decode(m, toks, B, 1, &lg), FL_ETOOBIG);
	model_free(m);
	free(toks);
	free(chunk);
	free(dec);
}

static void test_kv_cache(void **state)
{
	(void)state;
	tw t;
	make_tw(&t, MODEL_ARCH_LLAMA, 2, 6, 2, 5, 43, 37, 1, 0);
	kv_case(&t, 2, 11, 1, "llama");
	kv_case(&t, 2, 11, 3, "llama");
	free(t.blob);
	make_tw(&t, MODEL_ARCH_QWEN2, 2, 4, 2, 6, 37, 29, 0, 1);
	kv_case(&t, 1, 9, 1, "qwen2");
	kv_case(&t, 1, 9, 4, "qwen2");
	free(t.blob);
	/* quantized weights: decode steps take the small-batch matmul path */
	qset s;
	make_tw(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 16, 96, 50, 0, 0);
	make_qset(&s, &t, GTYPE_Q4_0);
	kv_case(&s.q, 1, 10, 1, "llama Q4_0");
	kv_case(&s.q, 2, 10, 3, "llama Q4_0");
	free(s.qbytes);
	free(s.dbytes);
	free(t.blob);
	make_tw(&t, MODEL_ARCH_QWEN2, 1, 4, 4, 16, 64, 33, 1, 1);
	make_qset(&s, &t, GTYPE_Q8_0);
	kv_case(&s.q, 1, 7, 1, "qwen2 Q8_0");
	free(s.qbytes);
	free(s.dbytes);
	free(t.blob);
}

/* A tiny_model.h model: forward (inference and keep-acts arenas) against
 * its double reference, and KV-cache decoding against the forward. */
static void tm_case(const char *name, tm_model *t, int B, int T)
{
	const int V = t->c.vocab;
	int32_t *toks = malloc(sizeof(int32_t) * (size_t)B * T);
	int32_t *tgt = malloc(sizeof(int32_t) * (size_t)B * T);
	double *ref = malloc(sizeof(double) * (size_t)B * T * V);
	rand_ids(toks, B * T, V);
	rand_ids(tgt, B * T, V);
	double rloss = tm_ref_loss(t, NULL, toks, tgt, B, T, ref);
	static const int flags[3] = {0, MODEL_KEEP_ACTS, MODEL_CHECKPOINT};
	static const char *const fname[3] = {"", " keep-acts", " checkpoint"};
	for (int keep = 0; keep < 3; keep++) {
		model *m = NULL;
		float loss = -1;
		assert_int_equal(model_new_from_weights(&t->c, &t->w, &m), 0);
		assert_int_equal(model_prepare(m, B, T, flags[keep]), 0);
		assert_int_equal(model_forward(m, toks, tgt, B, T, &loss), 0);
		char what[128];
		snprintf(what, sizeof what, "%s logits B=%d T=%d%s", name, B, T, fname[keep]);
		check(what, tm_relerr(model_logits(m), ref, (size_t)B * T * V), TOL);
		snprintf(what, sizeof what, "%s mean loss (%.5f)", name, rloss);
		check(what, fabs(loss - rloss) / fabs(rloss), TOL);
		model_free(m);
	}
	tw x = {.c = t->c, .w = t->w};
	kv_case(&x, B, T, 1, name);
	kv_case(&x, B, T, 3, name);
	free(toks);
	free(tgt);
	free(ref);
}

static void test_forward_qwen3(void **state)
{
	(void)state;
	tm_model t;
	/* qwen3: 4 query heads of 6 on 2 KV heads, NH*hd = 24 != C = 16,
	 * per-head q/k RMSNorm, NeoX RoPE, no bias, tied */
	tm_opts o = {.C = 16};
	tm_make2(&t, MODEL_ARCH_QWEN3, 2, 4, 2, 6, 20, 29, 1, 0, 41, &o);
	tm_case("qwen3 qk-norm hd*NH != C", &t, 2, 9);
	tm_free(&t);
}

static void test_forward_llama3_rope_scaling(void **state)
{
	(void)state;
	tm_model t;
	/* Llama 3 RoPE factors over the 3 regimes: with n_rot 8, base 1e4,
	 * orig 64, low 1, high 4, pair 0 keeps its frequency, pair 1 is
	 * interpolated, pairs 2-3 are divided by 8 */
	float ff[4];
	tm_llama3_ff(ff, 8, 10000.0, 8.0, 1.0, 4.0, 64.0);
	assert_true(ff[0] == 1.0f && ff[1] > 1.0f && ff[1] < 8.0f && ff[3] == 8.0f);
	tm_opts o = {.ff = ff};
	tm_make2(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 8, 24, 31, 0, 0, 42, &o);
	tm_case("llama3 rope_freqs untied", &t, 2, 40);
	/* the factors matter: without them the logits differ */
	model *m = NULL;
	model_weights w = t.w;
	w.rope_ff = NULL;
	int32_t toks[40];
	rand_ids(toks, 40, t.c.vocab);
	double *ref = malloc(sizeof(double) * 40 * (size_t)t.c.vocab);
	int32_t tgt[40];
	memcpy(tgt, toks, sizeof tgt);
	tm_ref_loss(&t, NULL, toks, tgt, 1, 40, ref);
	assert_int_equal(model_new_from_weights(&t.c, &w, &m), 0);
	assert_int_equal(model_prepare(m, 1, 40, 0), 0);
	assert_int_equal(model_forward(m, toks, NULL, 1, 40, NULL), 0);
	double e = tm_relerr(model_logits(m), ref, 40 * (size_t)t.c.vocab);
	printf("  without the factors: rel err %.2e (must be large)\n", e);
	assert_true(e > 1e-3);
	/* a non-positive factor is refused */
	ff[2] = 0.0f;
	w.rope_ff = ff;
	model_free(m);
	m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &w, &m), FL_EINVAL);
	free(ref);
	tm_free(&t);
}

static void test_bad_args(void **state)
{
	(void)state;
	tw t;
	model *m = NULL;
	make_tw(&t, MODEL_ARCH_LLAMA, 1, 2, 1, 4, 8, 10, 1, 0);
	/* configuration checks */
	model_config c = t.c;
	c.n_kv_heads = 3; /* 2 % 3 != 0 */
	assert_int_equal(model_new_from_weights(&c, &t.w, &m), FL_EINVAL);
	c = t.c;
	c.n_rot = 3;
	assert_int_equal(model_new_from_weights(&c, &t.w, &m), FL_EINVAL);
	c = t.c;
	c.ffn_dim = 9; /* weights are [8, C] */
	assert_int_equal(model_new_from_weights(&c, &t.w, &m), FL_EMISMATCH);
	assert_null(m);

	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	int32_t toks[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, 5};
	float loss;
	assert_int_equal(model_forward(m, toks, tgt, 1, 4, &loss), FL_EINVAL); /* not prepared */
	assert_int_equal(model_prepare(m, 1, 65, 0), FL_EINVAL);               /* T > ctx */
	assert_int_equal(model_prepare(m, 1, 4, 0), 0);
	assert_int_equal(model_forward(m, toks, tgt, 1, 5, &loss), FL_EINVAL); /* T > prepared */
	assert_int_equal(model_forward(m, toks, tgt, 2, 2, &loss), FL_EINVAL); /* B > prepared */
	toks[2] = 10;
	assert_int_equal(model_forward(m, toks, tgt, 1, 4, &loss), FL_EINVAL); /* id >= V */
	toks[2] = -1;
	assert_int_equal(model_forward(m, toks, tgt, 1, 4, &loss), FL_EINVAL);
	toks[2] = 3;
	tgt[0] = 10;
	assert_int_equal(model_forward(m, toks, tgt, 1, 4, &loss), FL_EINVAL);
	/* all targets ignored: NAN mean */
	int32_t none[4] = {-1, -1, -1, -1};
	assert_int_equal(model_forward(m, toks, none, 1, 4, &loss), 0);
	assert_true(isnan(loss));
	/* a smaller batch than prepared works */
	assert_int_equal(model_forward(m, toks, NULL, 1, 3, NULL), 0);
	const float *lg;
	assert_int_equal(model_decode(m, toks, 1, 1, &lg), FL_EINVAL); /* no cache */
	assert_int_equal(model_cache_alloc(m, 1, 65, 1), FL_EINVAL);
	assert_int_equal(model_cache_alloc(m, 1, 8, 2), 0);
	assert_int_equal(model_decode(m, toks, 1, 3, &lg), FL_EINVAL); /* > chunk */
	assert_int_equal(model_decode(m, toks, 2, 1, &lg), FL_EINVAL); /* B mismatch */
	assert_true(model_param_count(m) > 0);
	model_free(m);
	model_free(NULL);
	free(t.blob);
}

int main(void)
{
	kern_set_threads(2);
	/* tiny shapes, but the threaded code paths (test_kernels also runs the
	 * default small-work cut-off) */
	kern_parallel_always(1);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_forward_llama_gqa_tied),
	    cmocka_unit_test(test_forward_qwen2_bias),
	    cmocka_unit_test(test_forward_long_partial_rope),
	    cmocka_unit_test(test_forward_quantized),
	    cmocka_unit_test(test_kv_cache),
	    cmocka_unit_test(test_forward_qwen3),
	    cmocka_unit_test(test_forward_llama3_rope_scaling),
	    cmocka_unit_test(test_bad_args),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
