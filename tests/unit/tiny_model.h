/* tiny_model — test helper shared by the training tests: a tiny random
 * Llama/qwen2 model in memory (f32, optional GQA, QKV bias, tied output)
 * whose parameters live in one float blob, a LoRA adapter over it, and a
 * naive double-precision reference of the forward pass and mean
 * cross-entropy written here from the architecture's definition (not from
 * the engine), over a double copy of every parameter, so finite
 * differences can perturb any single parameter exactly. */
#ifndef FL_TINY_MODEL_H
#define FL_TINY_MODEL_H
#include "testutil.h"

#include "gtype.h"
#include "model/adapter.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TM_MAXL 4

typedef struct tm_model {
	model_config c;
	model_weights w;
	model_layer layers[TM_MAXL];
	float *blob; /* every parameter */
	size_t n;
	double *dblob; /* double copy used by the reference */
} tm_model;

static inline float tm_frand(uint64_t *s)
{
	return (float)(tu_randu(s) * 2.0 - 1.0);
}

static inline float *tm_take(tm_model *t, size_t *off, size_t n, float scale, float offset,
                             uint64_t *s)
{
	float *r = t->blob + *off;
	for (size_t i = 0; i < n; i++)
		r[i] = offset + tm_frand(s) * scale;
	*off += n;
	return r;
}

static inline void tm_mat(kern_mat *m, float *data, int rows, int cols)
{
	assert_int_equal(kern_mat_init(m, GTYPE_F32, data, rows, cols), 0);
}

/* Llama 3 RoPE frequency factors, as Meta's reference defines them (and
 * llama.cpp's converter stores them in rope_freqs.weight): for pair i with
 * wavelength wl = 2 pi / base^(-2i/n_rot), factor 1 when wl < orig/high,
 * `factor` when wl > orig/low, else 1 / ((1 - s)/factor + s) with
 * s = (orig/wl - low)/(high - low). */
static inline void tm_llama3_ff(float *ff, int n_rot, double base, double factor, double low,
                                double high, double orig)
{
	for (int i = 0; i < n_rot / 2; i++) {
		double wl = 2 * M_PI / pow(base, -2.0 * i / n_rot);
		if (wl < orig / high)
			ff[i] = 1.0f;
		else if (wl > orig / low)
			ff[i] = (float)factor;
		else {
			double sm = (orig / wl - low) / (high - low);
			ff[i] = (float)(1.0 / ((1 - sm) / factor + sm));
		}
	}
}

/* Shape extras of tm_make2: model width C (0: NH*hd) and RoPE factors. */
typedef struct tm_opts {
	int C;           /* 0: NH*hd */
	int n_rot;       /* 0: hd & ~1 */
	float rope_base; /* 0: 10000 */
	const float *ff; /* [n_rot/2] RoPE frequency factors, copied; NULL: none */
} tm_opts;

static inline void tm_make2(tm_model *t, int arch, int L, int NH, int NKV, int hd, int F, int V,
                            int tied, int bias, uint64_t seed, const tm_opts *op);

/* A random f32 model. C = NH*hd. */
static inline void tm_make(tm_model *t, int arch, int L, int NH, int NKV, int hd, int F, int V,
                           int tied, int bias, uint64_t seed)
{
	tm_make2(t, arch, L, NH, NKV, hd, F, V, tied, bias, seed, NULL);
}

/* A random f32 model; qwen3 gets per-head q/k norms. */
static inline void tm_make2(tm_model *t, int arch, int L, int NH, int NKV, int hd, int F, int V,
                            int tied, int bias, uint64_t seed, const tm_opts *op)
{
	memset(t, 0, sizeof *t);
	assert_true(L <= TM_MAXL);
	model_config *c = &t->c;
	c->arch = arch;
	c->dim = op && op->C ? op->C : NH * hd;
	c->n_layers = L;
	c->n_heads = NH;
	c->n_kv_heads = NKV;
	c->head_dim = hd;
	c->ffn_dim = F;
	c->vocab = V;
	c->ctx = 128;
	c->n_rot = op && op->n_rot ? op->n_rot : hd & ~1;
	c->rope_mode = arch == MODEL_ARCH_LLAMA ? KERN_ROPE_NORM : KERN_ROPE_NEOX;
	c->rope_base = op && op->rope_base > 0 ? op->rope_base : 10000.0f;
	c->norm_eps = 1e-5f;
	const size_t C = (size_t)c->dim, QD = (size_t)NH * hd, KVD = (size_t)NKV * hd;
	size_t per =
	    2 * C + 2 * QD * C + 2 * KVD * C + 3 * (size_t)F * C + QD + 2 * KVD + 2 * (size_t)hd;
	t->n = (size_t)L * per + 2 * (size_t)V * C + C + (size_t)c->n_rot / 2;
	t->blob = calloc(t->n, sizeof(float));
	t->dblob = calloc(t->n, sizeof(double));
	assert_non_null(t->blob);
	assert_non_null(t->dblob);
	uint64_t s = seed;
	size_t off = 0;
	const float sc = 0.4f;
	tm_mat(&t->w.tok_embd, tm_take(t, &off, (size_t)V * C, 1.0f, 0, &s), V, (int)C);
	for (int l = 0; l < L; l++) {
		model_layer *y = &t->layers[l];
		y->attn_norm = tm_take(t, &off, C, 0.2f, 1.0f, &s);
		tm_mat(&y->wq, tm_take(t, &off, QD * C, sc, 0, &s), (int)QD, (int)C);
		tm_mat(&y->wk, tm_take(t, &off, KVD * C, sc, 0, &s), (int)KVD, (int)C);
		tm_mat(&y->wv, tm_take(t, &off, KVD * C, sc, 0, &s), (int)KVD, (int)C);
		if (bias) {
			y->bq = tm_take(t, &off, QD, 0.5f, 0, &s);
			y->bk = tm_take(t, &off, KVD, 0.5f, 0, &s);
			y->bv = tm_take(t, &off, KVD, 0.5f, 0, &s);
		}
		if (arch == MODEL_ARCH_QWEN3) {
			y->q_norm = tm_take(t, &off, (size_t)hd, 0.3f, 1.0f, &s);
			y->k_norm = tm_take(t, &off, (size_t)hd, 0.3f, 1.0f, &s);
		}
		tm_mat(&y->wo, tm_take(t, &off, C * QD, sc, 0, &s), (int)C, (int)QD);
		y->ffn_norm = tm_take(t, &off, C, 0.2f, 1.0f, &s);
		tm_mat(&y->w_gate, tm_take(t, &off, (size_t)F * C, sc, 0, &s), F, (int)C);
		tm_mat(&y->w_up, tm_take(t, &off, (size_t)F * C, sc, 0, &s), F, (int)C);
		tm_mat(&y->w_down, tm_take(t, &off, C * F, sc, 0, &s), (int)C, F);
	}
	t->w.layers = t->layers;
	t->w.output_norm = tm_take(t, &off, C, 0.2f, 1.0f, &s);
	if (tied) {
		t->w.output = t->w.tok_embd;
		t->w.tied = 1;
	} else {
		tm_mat(&t->w.output, tm_take(t, &off, (size_t)V * C, 0.5f, 0, &s), V, (int)C);
	}
	if (op && op->ff) {
		float *ff = t->blob + off;
		memcpy(ff, op->ff, sizeof(float) * (size_t)(c->n_rot / 2));
		off += (size_t)c->n_rot / 2;
		t->w.rope_ff = ff;
	}
	t->n = off;
	for (size_t i = 0; i < t->n; i++)
		t->dblob[i] = t->blob[i];
}

static inline void tm_free(tm_model *t)
{
	free(t->blob);
	free(t->dblob);
}

/* Double view of a float parameter pointer of t. */
static inline double *tm_d(const tm_model *t, const void *p)
{
	if (!p)
		return NULL;
	return t->dblob + ((const float *)p - t->blob);
}

/* LoRA in double: a/b [L * 7] (NULL where not adapted). */
typedef struct tm_lora {
	int rank;
	double scale;
	double *a[TM_MAXL * MODEL_LORA_NT], *b[TM_MAXL * MODEL_LORA_NT];
} tm_lora;

/* y [O] = W [O, I] x [I] (+ b) (+ s B (A x)) */
static inline void tm_lin(double *y, const double *W, const double *bias, const double *x, int O,
                          int I, const tm_lora *lo, int idx)
{
	for (int o = 0; o < O; o++) {
		double s = bias ? bias[o] : 0.0;
		for (int i = 0; i < I; i++)
			s += W[(size_t)o * I + i] * x[i];
		y[o] = s;
	}
	if (lo && lo->a[idx]) {
		const int r = lo->rank;
		double u[64];
		assert_true(r <= 64);
		for (int j = 0; j < r; j++) {
			double s = 0;
			for (int i = 0; i < I; i++)
				s += lo->a[idx][(size_t)j * I + i] * x[i];
			u[j] = s;
		}
		for (int o = 0; o < O; o++) {
			double s = 0;
			for (int j = 0; j < r; j++)
				s += lo->b[idx][(size_t)o * r + j] * u[j];
			y[o] += lo->scale * s;
		}
	}
}

static inline void tm_rms(double *y, const double *x, const double *w, int C, double eps)
{
	double ss = 0;
	for (int i = 0; i < C; i++)
		ss += x[i] * x[i];
	double r = 1.0 / sqrt(ss / C + eps);
	for (int i = 0; i < C; i++)
		y[i] = x[i] * r * w[i];
}

/* ff: frequency factors (double copy) or NULL */
static inline void tm_rope(double *x, int nh, const model_config *c, int p, const double *ff)
{
	for (int h = 0; h < nh; h++)
		for (int i = 0; i < c->n_rot / 2; i++) {
			int a = c->rope_mode == KERN_ROPE_NEOX ? i : 2 * i;
			int b = c->rope_mode == KERN_ROPE_NEOX ? i + c->n_rot / 2 : 2 * i + 1;
			double th =
			    p * pow((double)c->rope_base, -2.0 * i / c->n_rot) / (ff ? ff[i] : 1.0);
			double re = x[h * c->head_dim + a], im = x[h * c->head_dim + b];
			x[h * c->head_dim + a] = re * cos(th) - im * sin(th);
			x[h * c->head_dim + b] = re * sin(th) + im * cos(th);
		}
}

/* Mean cross-entropy over targets >= 0 of the model t (double parameters)
 * with optional LoRA lo; logits [B*T, V] out when non-NULL. */
static inline double tm_ref_loss(const tm_model *t, const tm_lora *lo, const int32_t *ids,
                                 const int32_t *tgt, int B, int T, double *logits)
{
	const model_config *c = &t->c;
	const int C = c->dim, NH = c->n_heads, NKV = c->n_kv_heads, hd = c->head_dim;
	const int F = c->ffn_dim, V = c->vocab, QD = NH * hd, KVD = NKV * hd;
	double *x = calloc((size_t)T * C, sizeof(double));
	double *q = calloc((size_t)T * QD, sizeof(double));
	double *k = calloc((size_t)T * KVD, sizeof(double));
	double *v = calloc((size_t)T * KVD, sizeof(double));
	double *h = calloc((size_t)C, sizeof(double)), *a = calloc((size_t)QD, sizeof(double));
	double *o = calloc((size_t)C, sizeof(double)), *g = calloc((size_t)F, sizeof(double));
	double *u = calloc((size_t)F, sizeof(double)), *sc = calloc((size_t)T, sizeof(double));
	double *lg = calloc((size_t)V, sizeof(double));
	const double *E = tm_d(t, t->w.tok_embd.data), *Wout = tm_d(t, t->w.output.data);
	double loss = 0;
	int cnt = 0;
	for (int b = 0; b < B; b++) {
		for (int tt = 0; tt < T; tt++)
			for (int i = 0; i < C; i++)
				x[tt * C + i] = E[(size_t)ids[b * T + tt] * C + i];
		for (int l = 0; l < c->n_layers; l++) {
			const model_layer *y = &t->w.layers[l];
			const int ix = l * MODEL_LORA_NT;
			for (int tt = 0; tt < T; tt++) {
				tm_rms(h, x + tt * C, tm_d(t, y->attn_norm), C, c->norm_eps);
				tm_lin(q + tt * QD, tm_d(t, y->wq.data), tm_d(t, y->bq), h, QD, C,
				       lo, ix + 0);
				tm_lin(k + tt * KVD, tm_d(t, y->wk.data), tm_d(t, y->bk), h, KVD, C,
				       lo, ix + 1);
				tm_lin(v + tt * KVD, tm_d(t, y->wv.data), tm_d(t, y->bv), h, KVD, C,
				       lo, ix + 2);
				if (y->q_norm) /* qwen3: RMSNorm of every head */
					for (int hh = 0; hh < NH; hh++)
						tm_rms(q + tt * QD + hh * hd, q + tt * QD + hh * hd,
						       tm_d(t, y->q_norm), hd, c->norm_eps);
				if (y->k_norm)
					for (int hh = 0; hh < NKV; hh++)
						tm_rms(k + tt * KVD + hh * hd,
						       k + tt * KVD + hh * hd, tm_d(t, y->k_norm),
						       hd, c->norm_eps);
				tm_rope(q + tt * QD, NH, c, tt, tm_d(t, t->w.rope_ff));
				tm_rope(k + tt * KVD, NKV, c, tt, tm_d(t, t->w.rope_ff));
			}
			for (int tt = 0; tt < T; tt++) {
				for (int hh = 0; hh < NH; hh++) {
					int kh = hh / (NH / NKV);
					double mx = -INFINITY, sum = 0;
					for (int j = 0; j <= tt; j++) {
						double d = 0;
						for (int i = 0; i < hd; i++)
							d += q[tt * QD + hh * hd + i] *
							     k[j * KVD + kh * hd + i];
						sc[j] = d / sqrt(hd);
						mx = sc[j] > mx ? sc[j] : mx;
					}
					for (int j = 0; j <= tt; j++)
						sum += exp(sc[j] - mx);
					for (int i = 0; i < hd; i++) {
						double acc = 0;
						for (int j = 0; j <= tt; j++)
							acc += exp(sc[j] - mx) / sum *
							       v[j * KVD + kh * hd + i];
						a[hh * hd + i] = acc;
					}
				}
				tm_lin(o, tm_d(t, y->wo.data), NULL, a, C, QD, lo, ix + 3);
				for (int i = 0; i < C; i++)
					x[tt * C + i] += o[i];
				tm_rms(h, x + tt * C, tm_d(t, y->ffn_norm), C, c->norm_eps);
				tm_lin(g, tm_d(t, y->w_gate.data), NULL, h, F, C, lo, ix + 4);
				tm_lin(u, tm_d(t, y->w_up.data), NULL, h, F, C, lo, ix + 5);
				for (int i = 0; i < F; i++)
					g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
				tm_lin(o, tm_d(t, y->w_down.data), NULL, g, C, F, lo, ix + 6);
				for (int i = 0; i < C; i++)
					x[tt * C + i] += o[i];
			}
		}
		for (int tt = 0; tt < T; tt++) {
			tm_rms(h, x + tt * C, tm_d(t, t->w.output_norm), C, c->norm_eps);
			tm_lin(lg, Wout, NULL, h, V, C, NULL, 0);
			if (logits)
				memcpy(logits + ((size_t)b * T + tt) * V, lg, sizeof(double) * V);
			if (tgt[b * T + tt] >= 0) {
				double mx = -INFINITY, s = 0;
				for (int i = 0; i < V; i++)
					mx = lg[i] > mx ? lg[i] : mx;
				for (int i = 0; i < V; i++)
					s += exp(lg[i] - mx);
				loss += mx + log(s) - lg[tgt[b * T + tt]];
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
	free(lg);
	return cnt ? loss / cnt : NAN;
}

/* Double copy of an adapter set as a tm_lora (caller frees with tm_lora_free). */
static inline void tm_lora_from(tm_lora *d, const model_config *c, const lora_spec *s,
                                const tset *ad)
{
	memset(d, 0, sizeof *d);
	d->rank = (int)s->rank;
	d->scale = (double)(float)lora_scale(s); /* the engine applies it as a float */
	float *pa[TM_MAXL * MODEL_LORA_NT], *pb[TM_MAXL * MODEL_LORA_NT];
	adp_ptrs(c, ad, 0, pa);
	adp_ptrs(c, ad, 1, pb);
	for (int i = 0; i < c->n_layers * MODEL_LORA_NT; i++) {
		if (!pa[i])
			continue;
		int in, o;
		model_lora_dims(c, i % MODEL_LORA_NT, &in, &o);
		size_t na = (size_t)s->rank * in, nb = (size_t)o * s->rank;
		d->a[i] = malloc(sizeof(double) * na);
		d->b[i] = malloc(sizeof(double) * nb);
		for (size_t k = 0; k < na; k++)
			d->a[i][k] = pa[i][k];
		for (size_t k = 0; k < nb; k++)
			d->b[i][k] = pb[i][k];
	}
}

static inline void tm_lora_free(tm_lora *d)
{
	for (int i = 0; i < TM_MAXL * MODEL_LORA_NT; i++) {
		free(d->a[i]);
		free(d->b[i]);
	}
}

static inline void tm_rand_ids(int32_t *p, int n, int V, uint64_t *s)
{
	for (int i = 0; i < n; i++)
		p[i] = (int32_t)(tu_rand(s) % (uint64_t)V);
}

/* max |got - ref| / max |ref| (printed by callers). */
static inline double tm_relerr(const float *got, const double *ref, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double e = isnan(got[i]) ? INFINITY : fabs(got[i] - ref[i]);
		num = e > num ? e : num;
		den = fabs(ref[i]) > den ? fabs(ref[i]) : den;
	}
	return den > 0 ? num / den : num;
}

/* Writes t as a GGUF file (llama or qwen2 keys, the built-in byte vocabulary:
 * t->c.vocab must be TOK_BYTE_VOCAB_SIZE), matrices in `type` (F32, F16,
 * Q8_0, Q4_0: quantized from the f32 values), vectors f32. Returns 0. */
static inline int tm_write_gguf(const tm_model *t, const char *path, uint32_t type)
{
	const model_config *c = &t->c;
	const char *arch = c->arch == MODEL_ARCH_QWEN2 ? "qwen2" : "llama";
	char key[128], nm[64];
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	assert_int_equal(c->vocab, TOK_BYTE_VOCAB_SIZE);
	assert_int_equal(gguf_set_str(w, "general.architecture", arch), 0);
	assert_int_equal(gguf_set_str(w, "general.name", "tiny"), 0);
	assert_int_equal(gguf_set_u32(w, "general.file_type", type == GTYPE_F32 ? 0 : 7), 0);
#define TMU(k, v)                                                                                  \
	(snprintf(key, sizeof key, "%s." k, arch), assert_int_equal(gguf_set_u32(w, key, (v)), 0))
#define TMF(k, v)                                                                                  \
	(snprintf(key, sizeof key, "%s." k, arch), assert_int_equal(gguf_set_f32(w, key, (v)), 0))
	TMU("embedding_length", (uint32_t)c->dim);
	TMU("block_count", (uint32_t)c->n_layers);
	TMU("attention.head_count", (uint32_t)c->n_heads);
	TMU("attention.head_count_kv", (uint32_t)c->n_kv_heads);
	TMU("feed_forward_length", (uint32_t)c->ffn_dim);
	TMU("context_length", (uint32_t)c->ctx);
	TMU("rope.dimension_count", (uint32_t)c->n_rot);
	TMF("attention.layer_norm_rms_epsilon", c->norm_eps);
	TMF("rope.freq_base", c->rope_base);
#undef TMU
#undef TMF
	assert_int_equal(tok_write_byte_vocab(w), 0);
	/* borrowed data must live until the write: collect owned copies */
	const model_weights *mw = &t->w;
#define TMMAT(name, km)                                                                            \
	do {                                                                                       \
		const kern_mat *k_ = (km);                                                         \
		size_t rb_;                                                                        \
		assert_int_equal(gtype_row_size(type, (uint64_t)k_->cols, &rb_), 0);               \
		uint8_t *d_ = malloc(rb_ * k_->rows);                                              \
		for (int r_ = 0; r_ < k_->rows; r_++)                                              \
			assert_int_equal(                                                          \
			    gtype_quant_row(type, (const float *)k_->data + (size_t)r_ * k_->cols, \
			                    d_ + rb_ * r_, (size_t)k_->cols),                      \
			    0);                                                                    \
		uint64_t ne_[2] = {(uint64_t)k_->cols, (uint64_t)k_->rows};                        \
		assert_int_equal(gguf_add_tensor_own(w, (name), type, 2, ne_, d_, rb_ * k_->rows), \
		                 0);                                                               \
	} while (0)
#define TMVEC(name, p, n)                                                                          \
	do {                                                                                       \
		float *d_ = malloc(sizeof(float) * (n));                                           \
		memcpy(d_, (p), sizeof(float) * (n));                                              \
		uint64_t ne_[1] = {(uint64_t)(n)};                                                 \
		assert_int_equal(                                                                  \
		    gguf_add_tensor_own(w, (name), GTYPE_F32, 1, ne_, d_, sizeof(float) * (n)),    \
		    0);                                                                            \
	} while (0)
	const size_t C = (size_t)c->dim, QD = (size_t)c->n_heads * c->head_dim,
	             KVD = (size_t)c->n_kv_heads * c->head_dim;
	TMMAT("token_embd.weight", &mw->tok_embd);
	for (int l = 0; l < c->n_layers; l++) {
		const model_layer *y = &mw->layers[l];
#define TMN(x) (snprintf(nm, sizeof nm, "blk.%d." x, l), nm)
		TMVEC(TMN("attn_norm.weight"), y->attn_norm, C);
		TMMAT(TMN("attn_q.weight"), &y->wq);
		TMMAT(TMN("attn_k.weight"), &y->wk);
		TMMAT(TMN("attn_v.weight"), &y->wv);
		if (y->bq) {
			TMVEC(TMN("attn_q.bias"), y->bq, QD);
			TMVEC(TMN("attn_k.bias"), y->bk, KVD);
			TMVEC(TMN("attn_v.bias"), y->bv, KVD);
		}
		TMMAT(TMN("attn_output.weight"), &y->wo);
		TMVEC(TMN("ffn_norm.weight"), y->ffn_norm, C);
		TMMAT(TMN("ffn_gate.weight"), &y->w_gate);
		TMMAT(TMN("ffn_up.weight"), &y->w_up);
		TMMAT(TMN("ffn_down.weight"), &y->w_down);
#undef TMN
	}
	TMVEC("output_norm.weight", mw->output_norm, C);
	if (!mw->tied)
		TMMAT("output.weight", &mw->output);
#undef TMMAT
#undef TMVEC
	int rc = gguf_writer_write(w, path);
	gguf_writer_free(w);
	return rc;
}

#endif
