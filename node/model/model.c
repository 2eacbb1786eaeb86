/* model — see model.h. */
#include "model.h"

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "gguf.h"
#include "gtype.h"
#include "log.h"
#include "train_kern.h"

#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct model {
	model_config cfg;
	model_weights w;
	model_layer *layers; /* owned copy of w.layers */
	float *small;        /* owned f32 copies of 1-D parameters (loaded models) */
	gguf *gg;            /* reader of a loaded model (owns the mapping), or NULL */
	model_prof *prof;    /* optional timing sink */

	/* forward arena */
	float *arena;
	size_t arena_floats;
	int aB, aT, aflags;
	model_acts acts;
	float *scratch;
	size_t scratch_n;

	/* KV cache + decode arena */
	float *kc, *vc; /* [L, cB, cT, NKV*hd] */
	int cB, cT, cchunk, cpos;
	float *carena;
	size_t carena_floats;
	model_acts cacts;
	float *cscratch;
	size_t cscratch_n;

	/* LoRA (model_set_lora) and its [rows, rank] scratch for u = x A^T */
	model_lora lora;
	int has_lora;
	float *lora_tmp;
	size_t lora_tmp_n;
};

const char *model_arch_name(int arch)
{
	return arch == MODEL_ARCH_LLAMA   ? "llama"
	       : arch == MODEL_ARCH_QWEN2 ? "qwen2"
	       : arch == MODEL_ARCH_QWEN3 ? "qwen3"
	                                  : "?";
}

int model_config_check(const model_config *c)
{
	if (!c)
		return FL_EINVAL;
	if (c->arch != MODEL_ARCH_LLAMA && c->arch != MODEL_ARCH_QWEN2 &&
	    c->arch != MODEL_ARCH_QWEN3)
		return FL_EINVAL;
	if (c->dim <= 0 || c->dim > MODEL_MAX_DIM || c->n_layers <= 0 ||
	    c->n_layers > MODEL_MAX_LAYERS || c->n_heads <= 0 || c->n_heads > MODEL_MAX_HEADS ||
	    c->n_kv_heads <= 0 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
		return FL_EINVAL;
	/* NH*hd is usually C; Qwen3 has larger heads (e.g. C 1024, 16 x 128) */
	if (c->head_dim <= 0 || c->head_dim > MODEL_MAX_HEAD_DIM ||
	    (long long)c->head_dim * c->n_heads > 16LL * MODEL_MAX_DIM)
		return FL_EINVAL;
	if (c->ffn_dim <= 0 || c->ffn_dim > 16 * MODEL_MAX_DIM || c->vocab <= 0 ||
	    c->vocab > MODEL_MAX_VOCAB || c->ctx <= 0 || c->ctx > MODEL_MAX_CTX)
		return FL_EINVAL;
	if (c->n_rot < 0 || c->n_rot > c->head_dim || c->n_rot % 2 != 0)
		return FL_EINVAL;
	if (c->rope_mode != KERN_ROPE_NORM && c->rope_mode != KERN_ROPE_NEOX)
		return FL_EINVAL;
	if (!(c->rope_base > 0.0f) || !isfinite(c->rope_base) || !(c->norm_eps > 0.0f) ||
	    !isfinite(c->norm_eps))
		return FL_EINVAL;
	return 0;
}

static int mat_is(const kern_mat *m, int rows, int cols)
{
	return m->data && m->rows == rows && m->cols == cols;
}

static int check_weights(const model_config *c, const model_weights *w)
{
	const int C = c->dim, QD = c->n_heads * c->head_dim, KVD = c->n_kv_heads * c->head_dim;
	if (!mat_is(&w->tok_embd, c->vocab, C) || !mat_is(&w->output, c->vocab, C) ||
	    !w->output_norm || !w->layers)
		return FL_EMISMATCH;
	for (int l = 0; l < c->n_layers; l++) {
		const model_layer *y = &w->layers[l];
		if (!y->attn_norm || !y->ffn_norm || !mat_is(&y->wq, QD, C) ||
		    !mat_is(&y->wk, KVD, C) || !mat_is(&y->wv, KVD, C) || !mat_is(&y->wo, C, QD) ||
		    !mat_is(&y->w_gate, c->ffn_dim, C) || !mat_is(&y->w_up, c->ffn_dim, C) ||
		    !mat_is(&y->w_down, C, c->ffn_dim))
			return FL_EMISMATCH;
		/* the per-head q/k norm is qwen3's and only qwen3's */
		if ((c->arch == MODEL_ARCH_QWEN3) != (y->q_norm && y->k_norm) ||
		    (!y->q_norm != !y->k_norm))
			return FL_EMISMATCH;
	}
	if (w->rope_ff)
		for (int i = 0; i < c->n_rot / 2; i++)
			if (!(w->rope_ff[i] > 0.0f) || !isfinite(w->rope_ff[i]))
				return FL_EINVAL;
	return 0;
}

int model_new_from_weights(const model_config *cfg, const model_weights *w, model **out)
{
	int rc = model_config_check(cfg);
	if (rc != 0)
		return rc;
	if (!w)
		return FL_EINVAL;
	rc = check_weights(cfg, w);
	if (rc != 0)
		return rc;
	model *m = calloc(1, sizeof *m);
	if (!m)
		return FL_ENOMEM;
	m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
	if (!m->layers) {
		free(m);
		return FL_ENOMEM;
	}
	memcpy(m->layers, w->layers, sizeof *m->layers * (size_t)cfg->n_layers);
	m->cfg = *cfg;
	m->w = *w;
	m->w.layers = m->layers;
	*out = m;
	return 0;
}

void model_free(model *m)
{
	if (!m)
		return;
	free(m->arena);
	free(m->carena);
	free(m->kc);
	free(m->vc);
	free(m->lora_tmp);
	free(m->layers);
	free(m->small);
	gguf_free(m->gg);
	free(m);
}

void model_set_prof(model *m, model_prof *p)
{
	m->prof = p;
}

const model_config *model_cfg(const model *m)
{
	return &m->cfg;
}

const model_weights *model_wts(const model *m)
{
	return &m->w;
}

const gguf *model_gguf(const model *m)
{
	return m->gg;
}

size_t model_param_count(const model *m)
{
	const model_config *c = &m->cfg;
	const size_t C = (size_t)c->dim, QD = (size_t)c->n_heads * c->head_dim,
	             KVD = (size_t)c->n_kv_heads * c->head_dim, F = (size_t)c->ffn_dim;
	size_t per = 2 * C + QD * C + 2 * KVD * C + C * QD + 3 * F * C;
	size_t n = (size_t)c->n_layers * per + (size_t)c->vocab * C + C;
	if (!m->w.tied)
		n += (size_t)c->vocab * C;
	for (int l = 0; l < c->n_layers; l++) {
		const model_layer *y = &m->w.layers[l];
		n += (y->bq ? QD : 0) + (y->bk ? KVD : 0) + (y->bv ? KVD : 0);
		n += (y->q_norm ? (size_t)c->head_dim : 0) + (y->k_norm ? (size_t)c->head_dim : 0);
	}
	return n;
}

double model_forward_flops(const model_config *c, int B, int T)
{
	const double C = c->dim, QD = (double)c->n_heads * c->head_dim,
	             KVD = (double)c->n_kv_heads * c->head_dim, F = c->ffn_dim;
	const double N = (double)B * T;
	double per_tok = c->n_layers * (C * QD + 2 * C * KVD + QD * C + 3 * C * F) + C * c->vocab;
	/* causal: query t sees t+1 keys; QK^T and PV each hd mult-adds per pair */
	double att =
	    (double)c->n_layers * B * c->n_heads * 2.0 * c->head_dim * ((double)T * (T + 1) / 2.0);
	return 2.0 * (N * per_tok + att);
}

static int lora_fit(model *m);

/* ---- activation arena ---------------------------------------------------- */

/* Offsets are in floats, each tensor aligned to 16 floats (64 bytes). */
static int take(size_t *off, size_t n, size_t *at)
{
	size_t a = (*off + 15) & ~(size_t)15, e;
	if (a < *off || sz_add(a, n, &e) != 0)
		return FL_EOVERFLOW;
	*at = a;
	*off = e;
	return 0;
}

typedef struct lay {
	size_t encoded, ln1, ln1_rstd, q, k, v, qraw, kraw, qrstd, krstd, att, atty, res1, ln2,
	    ln2_rstd, gate, up, hmid, res2, lnf, lnf_rstd, logits, losses, pos, scratch, total;
	size_t sC, sN, sQD, sKVD, satt, sF; /* per-layer strides */
	size_t sres;                        /* res2's: per layer also when checkpointing */
	size_t sqr, skr, sqn, skn;          /* qwen3 norm inputs / rstd (0 otherwise) */
	size_t scratch_n;
} lay;

/* Layout for B sequences of T tokens attending over up to Tk keys; keep:
 * 1 one slot per layer (else one shared slot), 2 (checkpointing) a slot per
 * layer for res2 only. */
static int layout(const model_config *c, int B, int T, int Tk, int keep, lay *o)
{
	size_t N, NC, NQ, NKV, NF, NV, A, tmp, L;
	const size_t C = (size_t)c->dim, QD = (size_t)c->n_heads * c->head_dim,
	             KVD = (size_t)c->n_kv_heads * c->head_dim;
	int rc = 0;
	memset(o, 0, sizeof *o);
	L = keep == 1 ? (size_t)c->n_layers : 1;
	const size_t Lres = keep ? (size_t)c->n_layers : 1;
	rc |= sz_mul((size_t)B, (size_t)T, &N);
	rc |= sz_mul(N, C, &NC);
	rc |= sz_mul(N, QD, &NQ);
	rc |= sz_mul(N, KVD, &NKV);
	rc |= sz_mul(N, (size_t)c->ffn_dim, &NF);
	rc |= sz_mul(N, (size_t)c->vocab, &NV);
	rc |= sz_mul(N, (size_t)c->n_heads, &tmp);
	rc |= sz_mul(tmp, (size_t)Tk, &A);
	if (rc != 0)
		return FL_EOVERFLOW;
		/* round per-layer strides to the 16-float alignment */
#define STRIDE(s, n) ((s) = ((n) + 15) & ~(size_t)15)
	STRIDE(o->sC, NC);
	STRIDE(o->sN, N);
	STRIDE(o->sQD, NQ);
	STRIDE(o->sKVD, NKV);
	STRIDE(o->satt, A);
	STRIDE(o->sF, NF);
	if (c->arch == MODEL_ARCH_QWEN3) {
		STRIDE(o->sqr, NQ);
		STRIDE(o->skr, NKV);
		rc |= sz_mul(N, (size_t)c->n_heads, &tmp);
		STRIDE(o->sqn, tmp);
		rc |= sz_mul(N, (size_t)c->n_kv_heads, &tmp);
		STRIDE(o->skn, tmp);
		if (rc != 0)
			return FL_EOVERFLOW;
	}
#undef STRIDE
	size_t off = 0, t;
#define TAKE(field, n)                                                                             \
	do {                                                                                       \
		if ((rc = take(&off, (n), &o->field)) != 0)                                        \
			return rc;                                                                 \
	} while (0)
#define TAKEL(field, s)                                                                            \
	do {                                                                                       \
		if (sz_mul(L, (s), &t) != 0)                                                       \
			return FL_EOVERFLOW;                                                       \
		TAKE(field, t);                                                                    \
	} while (0)
	TAKE(encoded, NC);
	TAKEL(ln1, o->sC);
	TAKEL(ln1_rstd, o->sN);
	TAKEL(q, o->sQD);
	TAKEL(k, o->sKVD);
	TAKEL(v, o->sKVD);
	TAKEL(qraw, o->sqr);
	TAKEL(kraw, o->skr);
	TAKEL(qrstd, o->sqn);
	TAKEL(krstd, o->skn);
	TAKEL(att, o->satt);
	TAKEL(atty, o->sQD);
	TAKEL(res1, o->sC);
	TAKEL(ln2, o->sC);
	TAKEL(ln2_rstd, o->sN);
	TAKEL(gate, o->sF);
	TAKEL(up, o->sF);
	TAKEL(hmid, o->sF);
	if (sz_mul(Lres, o->sC, &t) != 0)
		return FL_EOVERFLOW;
	TAKE(res2, t);
	o->sres = keep ? o->sC : 0;
	TAKE(lnf, NC);
	TAKE(lnf_rstd, N);
	TAKE(logits, NV);
	TAKE(losses, N);
	TAKE(pos, N); /* int32 in float-sized slots */
	int maxc = c->dim > c->ffn_dim ? c->dim : c->ffn_dim;
	if ((int)QD > maxc)
		maxc = (int)QD;
	o->scratch_n = kern_matmul_scratch(maxc, omp_get_max_threads());
	TAKE(scratch, o->scratch_n);
#undef TAKE
#undef TAKEL
	o->total = off;
	if (keep != 1)
		o->sC = o->sN = o->sQD = o->sKVD = o->satt = o->sF = 0;
	/* the qwen3 norm inputs are per layer only when kept (and present) */
	if (keep != 1)
		o->sqr = o->skr = o->sqn = o->skn = 0;
	return 0;
}

static void bind(model_acts *a, float *base, const lay *o)
{
	a->encoded = base + o->encoded;
	a->ln1 = base + o->ln1;
	a->ln1_rstd = base + o->ln1_rstd;
	a->q = base + o->q;
	a->k = base + o->k;
	a->v = base + o->v;
	a->qraw = base + o->qraw;
	a->kraw = base + o->kraw;
	a->qrstd = base + o->qrstd;
	a->krstd = base + o->krstd;
	a->att = base + o->att;
	a->atty = base + o->atty;
	a->res1 = base + o->res1;
	a->ln2 = base + o->ln2;
	a->ln2_rstd = base + o->ln2_rstd;
	a->gate = base + o->gate;
	a->up = base + o->up;
	a->hmid = base + o->hmid;
	a->res2 = base + o->res2;
	a->lnf = base + o->lnf;
	a->lnf_rstd = base + o->lnf_rstd;
	a->logits = base + o->logits;
	a->losses = base + o->losses;
	a->pos = (int32_t *)(void *)(base + o->pos);
	a->stride_C = o->sC;
	a->stride_N = o->sN;
	a->stride_QD = o->sQD;
	a->stride_KVD = o->sKVD;
	a->stride_att = o->satt;
	a->stride_F = o->sF;
	a->stride_qn = o->sqn;
	a->stride_kn = o->skn;
	a->stride_qr = o->sqr;
	a->stride_kr = o->skr;
	a->stride_res = o->sres;
}

/* Arena bytes beyond which we refuse rather than try (a misconfigured shape
 * should fail clearly, not drive the machine into swap). */
#define MODEL_MAX_ARENA ((size_t)64 << 30)

static int alloc_arena(const lay *o, float **out)
{
	size_t bytes;
	if (sz_mul(o->total, sizeof(float), &bytes) != 0 || bytes > MODEL_MAX_ARENA)
		return FL_ETOOBIG;
	float *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!p)
		return FL_ENOMEM;
	*out = p;
	return 0;
}

int model_prepare(model *m, int B, int T, int flags)
{
	lay o;
	float *p = NULL;
	if (B <= 0 || T <= 0 || T > m->cfg.ctx)
		return FL_EINVAL;
	const int keep = (flags & MODEL_CHECKPOINT) ? 2 : (flags & MODEL_KEEP_ACTS) ? 1 : 0;
	int rc = layout(&m->cfg, B, T, T, keep, &o);
	if (rc != 0)
		return rc;
	rc = alloc_arena(&o, &p);
	if (rc != 0) {
		LOGE("model", "activation arena for B=%d T=%d: %s", B, T, fl_strerror(rc));
		return rc;
	}
	free(m->arena);
	m->arena = p;
	m->arena_floats = o.total;
	m->aB = B;
	m->aT = T;
	m->aflags = flags;
	memset(&m->acts, 0, sizeof m->acts);
	bind(&m->acts, p, &o);
	m->acts.ckpt = keep == 2;
	m->scratch = p + o.scratch;
	m->scratch_n = o.scratch_n;
	return lora_fit(m);
}

size_t model_arena_bytes(const model *m)
{
	return m->arena_floats * sizeof(float);
}

const model_acts *model_get_acts(const model *m)
{
	return m->arena ? &m->acts : NULL;
}

const float *model_logits(const model *m)
{
	return m->arena ? m->acts.logits : NULL;
}

const float *model_losses(const model *m)
{
	return m->arena ? m->acts.losses : NULL;
}

static int check_ids(const int32_t *ids, size_t n, int V, int allow_neg)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] >= V || (ids[i] < 0 && !allow_neg))
			return FL_EINVAL;
	return 0;
}

/* ---- LoRA ------------------------------------------------------------------ */

void model_lora_dims(const model_config *c, int t, int *in, int *out)
{
	const int C = c->dim, QD = c->n_heads * c->head_dim, KVD = c->n_kv_heads * c->head_dim;
	static const int ins[MODEL_LORA_NT] = {0, 0, 0, 1, 0, 0, 2};  /* 0 C, 1 QD, 2 F */
	static const int outs[MODEL_LORA_NT] = {1, 3, 3, 0, 2, 2, 0}; /* 3 KVD */
	const int w[4] = {C, QD, c->ffn_dim, KVD};
	*in = w[ins[t]];
	*out = w[outs[t]];
}

/* Sizes the u scratch for the largest row count of the arena and cache. */
static int lora_fit(model *m)
{
	if (!m->has_lora)
		return 0;
	size_t rows = (size_t)m->aB * m->aT, cr = (size_t)m->cB * m->cchunk, n;
	if (cr > rows)
		rows = cr;
	if (rows == 0)
		rows = 1;
	if (sz_mul(rows, (size_t)m->lora.rank, &n) != 0)
		return FL_EOVERFLOW;
	if (n <= m->lora_tmp_n)
		return 0;
	float *p = malloc(sizeof(float) * n);
	if (!p)
		return FL_ENOMEM;
	free(m->lora_tmp);
	m->lora_tmp = p;
	m->lora_tmp_n = n;
	return 0;
}

int model_set_lora(model *m, const model_lora *lo)
{
	if (!lo) {
		m->has_lora = 0;
		memset(&m->lora, 0, sizeof m->lora);
		return 0;
	}
	if (lo->rank < 1 || !isfinite(lo->scale) || !lo->a || !lo->b)
		return FL_EINVAL;
	model_lora prev = m->lora;
	int had = m->has_lora;
	m->lora = *lo;
	m->has_lora = 1;
	int rc = lora_fit(m);
	if (rc != 0) {
		m->lora = prev;
		m->has_lora = had;
	}
	return rc;
}

const model_lora *model_get_lora(const model *m)
{
	return m->has_lora ? &m->lora : NULL;
}

/* out [N, O] += s * B (A x) for projection t of layer l, when adapted; keep:
 * store u in the caller's buffer (full forward) if it gave one. */
static void lora_add(model *m, int l, int t, float *out, int ld_out, const float *x, int ld_x,
                     int N, int keep)
{
	if (!m->has_lora)
		return;
	const model_lora *lo = &m->lora;
	const size_t i = (size_t)l * MODEL_LORA_NT + (size_t)t;
	const float *A = lo->a[i], *B = lo->b[i];
	if (!A || !B)
		return;
	int in, o;
	model_lora_dims(&m->cfg, t, &in, &o);
	float *u = keep && lo->u && lo->u[i] ? lo->u[i] : m->lora_tmp;
	tk_lora_forward(out, ld_out, x, ld_x, A, B, lo->rank, in, o, lo->scale, N, u);
}

void model_qk_prep(const model_config *c, const model_weights *w, const model_layer *y, float *q,
                   float *k, const int32_t *pos, int N, float *qraw, float *qrstd, float *kraw,
                   float *krstd)
{
	const int NH = c->n_heads, NKV = c->n_kv_heads, hd = c->head_dim;
	const int QD = NH * hd, KVD = NKV * hd;
	if (y->q_norm) {
		/* rows of hd: q is [N*NH, hd], k [N*NKV, hd], contiguous */
		const float *qi = q, *ki = k;
		if (qraw) {
			memcpy(qraw, q, sizeof(float) * (size_t)N * QD);
			qi = qraw;
		}
		if (kraw) {
			memcpy(kraw, k, sizeof(float) * (size_t)N * KVD);
			ki = kraw;
		}
		kern_rmsnorm(q, qrstd, qi, y->q_norm, c->norm_eps, N * NH, hd);
		kern_rmsnorm(k, krstd, ki, y->k_norm, c->norm_eps, N * NKV, hd);
	}
	if (c->n_rot > 0) {
		kern_rope_ff(q, QD, pos, N, NH, hd, c->n_rot, c->rope_base, c->rope_mode,
		             w->rope_ff);
		kern_rope_ff(k, KVD, pos, N, NKV, hd, c->n_rot, c->rope_base, c->rope_mode,
		             w->rope_ff);
	}
}

/* The forward pass proper. With use_cache the new K/V rows go to the cache
 * at positions pos0.. and attention reads the cache; otherwise attention
 * reads this batch's K/V (pos0 must be 0). only >= 0: recompute layer
 * `only` alone from its stored input (checkpointed arena): no embedding, no
 * final norm or logits, no profile. */
static int run(model *m, model_acts *a, float *scratch, size_t scratch_n, const int32_t *tokens,
               int B, int T, int pos0, int use_cache, int only)
{
	const model_config *c = &m->cfg;
	const int C = c->dim, NH = c->n_heads, NKV = c->n_kv_heads, hd = c->head_dim;
	const int QD = NH * hd, KVD = NKV * hd, F = c->ffn_dim, V = c->vocab;
	const int N = B * T;
	const float eps = c->norm_eps;
	int rc;

	model_prof *pf = only >= 0 ? NULL : m->prof;
	uint64_t t_mm = 0, t_at = 0, t_lo = 0, t_all = pf ? clk_mono_ns() : 0, t0 = 0;
#define TM(acc, stmt)                                                                              \
	do {                                                                                       \
		if (pf)                                                                            \
			t0 = clk_mono_ns();                                                        \
		stmt;                                                                              \
		if (pf)                                                                            \
			acc += clk_mono_ns() - t0;                                                 \
	} while (0)

	a->B = B;
	a->T = T;
	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			a->pos[b * T + t] = pos0 + t;
	const float *resid = a->encoded; /* [N, C] */
	if (only < 0)
		kern_embed(a->encoded, tokens, &m->w.tok_embd, N);
	else if (only > 0)
		resid = a->res2 + (size_t)(only - 1) * a->stride_res;

	for (int l = only < 0 ? 0 : only; l < (only < 0 ? c->n_layers : only + 1); l++) {
		const model_layer *y = &m->w.layers[l];
		float *ln1 = a->ln1 + l * a->stride_C, *ln1r = a->ln1_rstd + l * a->stride_N;
		float *q = a->q + l * a->stride_QD, *k = a->k + l * a->stride_KVD;
		float *v = a->v + l * a->stride_KVD, *att = a->att + l * a->stride_att;
		float *atty = a->atty + l * a->stride_QD, *res1 = a->res1 + l * a->stride_C;
		float *ln2 = a->ln2 + l * a->stride_C, *ln2r = a->ln2_rstd + l * a->stride_N;
		float *gate = a->gate + l * a->stride_F, *up = a->up + l * a->stride_F;
		float *hmid = a->hmid + l * a->stride_F, *res2 = a->res2 + l * a->stride_res;

		/* attention block */
		kern_rmsnorm(ln1, ln1r, resid, y->attn_norm, eps, N, C);
		TM(t_mm, rc = kern_matmul(q, QD, ln1, C, &y->wq, y->bq, N, scratch, scratch_n));
		if (rc == 0)
			TM(t_mm,
			   rc = kern_matmul(k, KVD, ln1, C, &y->wk, y->bk, N, scratch, scratch_n));
		if (rc == 0)
			TM(t_mm,
			   rc = kern_matmul(v, KVD, ln1, C, &y->wv, y->bv, N, scratch, scratch_n));
		if (rc != 0)
			return rc;
		if (m->has_lora) {
			TM(t_lo, lora_add(m, l, 0, q, QD, ln1, C, N, !use_cache));
			TM(t_lo, lora_add(m, l, 1, k, KVD, ln1, C, N, !use_cache));
			TM(t_lo, lora_add(m, l, 2, v, KVD, ln1, C, N, !use_cache));
		}
		model_qk_prep(c, &m->w, y, q, k, a->pos, N, a->qraw + l * a->stride_qr,
		              a->qrstd + l * a->stride_qn, a->kraw + l * a->stride_kr,
		              a->krstd + l * a->stride_kn);
		kern_attn s = {.B = B,
		               .Tq = T,
		               .pos0 = pos0,
		               .NH = NH,
		               .NKV = NKV,
		               .hd = hd,
		               .q_ld = QD,
		               .kv_ld = KVD,
		               .out_ld = QD};
		const float *ks = k, *vs = v;
		if (use_cache) {
			/* cache [L, cB, cT, KVD]: rows pos0..pos0+T-1 of each sequence */
			size_t lo = (size_t)l * m->cB * m->cT * KVD;
			for (int b = 0; b < B; b++) {
				size_t dst = lo + ((size_t)b * m->cT + pos0) * KVD;
				memcpy(m->kc + dst, k + (size_t)b * T * KVD,
				       sizeof(float) * T * KVD);
				memcpy(m->vc + dst, v + (size_t)b * T * KVD,
				       sizeof(float) * T * KVD);
			}
			ks = m->kc + lo;
			vs = m->vc + lo;
			s.Tk = m->cT;
			s.kv_bs = (size_t)m->cT * KVD;
		} else {
			s.Tk = T;
			s.kv_bs = (size_t)T * KVD;
		}
		TM(t_at, kern_attention(atty, att, q, ks, vs, &s));
		TM(t_mm, rc = kern_matmul(res1, C, atty, QD, &y->wo, NULL, N, scratch, scratch_n));
		if (rc != 0)
			return rc;
		if (m->has_lora)
			TM(t_lo, lora_add(m, l, 3, res1, C, atty, QD, N, !use_cache));
		kern_add(res1, res1, resid, (size_t)N * C);

		/* feed-forward block */
		kern_rmsnorm(ln2, ln2r, res1, y->ffn_norm, eps, N, C);
		TM(t_mm,
		   rc = kern_matmul(gate, F, ln2, C, &y->w_gate, NULL, N, scratch, scratch_n));
		if (rc == 0)
			TM(t_mm,
			   rc = kern_matmul(up, F, ln2, C, &y->w_up, NULL, N, scratch, scratch_n));
		if (rc != 0)
			return rc;
		if (m->has_lora) {
			TM(t_lo, lora_add(m, l, 4, gate, F, ln2, C, N, !use_cache));
			TM(t_lo, lora_add(m, l, 5, up, F, ln2, C, N, !use_cache));
		}
		kern_swiglu(hmid, gate, up, (size_t)N * F);
		TM(t_mm,
		   rc = kern_matmul(res2, C, hmid, F, &y->w_down, NULL, N, scratch, scratch_n));
		if (rc != 0)
			return rc;
		if (m->has_lora)
			TM(t_lo, lora_add(m, l, 6, res2, C, hmid, F, N, !use_cache));
		kern_add(res2, res2, res1, (size_t)N * C);
		resid = res2;
	}
	if (only >= 0)
		return 0;
	kern_rmsnorm(a->lnf, a->lnf_rstd, resid, m->w.output_norm, eps, N, C);
	TM(t_mm,
	   rc = kern_matmul(a->logits, V, a->lnf, C, &m->w.output, NULL, N, scratch, scratch_n));
#undef TM
	if (pf && rc == 0) {
		const double QDd = QD, KVDd = KVD;
		double per_tok =
		    c->n_layers * ((double)C * QDd + 2.0 * C * KVDd + QDd * C + 3.0 * C * F) +
		    (double)C * V;
		/* causal attention: query t sees pos0+t+1 keys, 2 products of hd */
		double pairs = (double)T * pos0 + (double)T * (T + 1) / 2.0;
		pf->f_matmul += 2.0 * N * per_tok;
		pf->f_attn += 2.0 * 2.0 * c->n_layers * (double)B * NH * hd * pairs;
		pf->t_matmul += t_mm * 1e-9;
		pf->t_attn += t_at * 1e-9;
		pf->t_lora += t_lo * 1e-9;
		pf->t_other += (clk_mono_ns() - t_all - t_mm - t_at - t_lo) * 1e-9;
		pf->passes++;
	}
	return rc;
}

int model_forward(model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                  float *loss)
{
	if (!m->arena || B <= 0 || T <= 0 || B > m->aB || T > m->aT || !tokens)
		return FL_EINVAL;
	/* the arena was laid out for [aB, aT]; a smaller batch uses a prefix of
	 * each buffer (every size grows with B and T). */
	const size_t N = (size_t)B * T;
	if (check_ids(tokens, N, m->cfg.vocab, 0) != 0 ||
	    (targets && check_ids(targets, N, m->cfg.vocab, 1) != 0))
		return FL_EINVAL;
	int rc = run(m, &m->acts, m->scratch, m->scratch_n, tokens, B, T, 0, 0, -1);
	if (rc != 0)
		return rc;
	if (targets) {
		double sum = 0.0;
		int cnt = kern_crossentropy(m->acts.losses, &sum, m->acts.logits, targets, (int)N,
		                            m->cfg.vocab);
		if (loss)
			*loss = cnt > 0 ? (float)(sum / cnt) : NAN;
	}
	return 0;
}

int model_recompute_layer(model *m, int l)
{
	model_acts *a = &m->acts;
	if (!m->arena || !a->ckpt || l < 0 || l >= m->cfg.n_layers || a->B <= 0)
		return FL_EINVAL;
	return run(m, a, m->scratch, m->scratch_n, NULL, a->B, a->T, 0, 0, l);
}

int model_cache_alloc(model *m, int B, int max_T, int chunk)
{
	lay o;
	float *p = NULL, *kc = NULL, *vc = NULL;
	size_t n, bytes;
	const model_config *c = &m->cfg;
	if (B <= 0 || max_T <= 0 || max_T > c->ctx || chunk <= 0 || chunk > max_T)
		return FL_EINVAL;
	int rc = layout(c, B, chunk, max_T, 0, &o);
	if (rc != 0)
		return rc;
	if (sz_mul((size_t)c->n_layers * (size_t)B, (size_t)max_T, &n) != 0 ||
	    sz_mul(n, (size_t)c->n_kv_heads * c->head_dim, &n) != 0 ||
	    sz_mul(n, sizeof(float), &bytes) != 0 || bytes > MODEL_MAX_ARENA)
		return FL_ETOOBIG;
	rc = alloc_arena(&o, &p);
	if (rc != 0)
		return rc;
	kc = malloc(bytes);
	vc = malloc(bytes);
	if (!kc || !vc) {
		free(p);
		free(kc);
		free(vc);
		return FL_ENOMEM;
	}
	free(m->carena);
	free(m->kc);
	free(m->vc);
	m->carena = p;
	m->carena_floats = o.total;
	m->kc = kc;
	m->vc = vc;
	m->cB = B;
	m->cT = max_T;
	m->cchunk = chunk;
	m->cpos = 0;
	memset(&m->cacts, 0, sizeof m->cacts);
	bind(&m->cacts, p, &o);
	m->cscratch = p + o.scratch;
	m->cscratch_n = o.scratch_n;
	return lora_fit(m);
}

void model_cache_reset(model *m)
{
	m->cpos = 0;
}

int model_cache_pos(const model *m)
{
	return m->cpos;
}

int model_decode(model *m, const int32_t *tokens, int B, int Tn, const float **logits)
{
	if (!m->carena || B != m->cB || Tn <= 0 || Tn > m->cchunk || !tokens)
		return FL_EINVAL;
	if (m->cpos + Tn > m->cT)
		return FL_ETOOBIG;
	if (check_ids(tokens, (size_t)B * Tn, m->cfg.vocab, 0) != 0)
		return FL_EINVAL;
	int rc = run(m, &m->cacts, m->cscratch, m->cscratch_n, tokens, B, Tn, m->cpos, 1, -1);
	if (rc != 0)
		return rc;
	m->cpos += Tn;
	*logits = m->cacts.logits;
	return 0;
}

/* ---- loading from GGUF ----------------------------------------------------- */

typedef struct loader {
	const char *path;
	gguf *g;
	char arch[16];
	char *err;
	size_t errlen;
	float *small; /* f32 copies of 1-D tensors */
	size_t small_used, small_cap;
} loader;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
lfail(loader *ld, int rc, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (ld->err && ld->errlen)
		snprintf(ld->err, ld->errlen, "%s: %s", ld->path, msg);
	else
		LOGE("model", "%s: %s", ld->path, msg);
	return rc;
}

/* Reads `<arch>.<suffix>` as an integer in [lo, hi]; absent -> def (or an
 * error when def < 0). */
static int key_int(loader *ld, const char *suffix, int64_t lo, int64_t hi, int64_t def, int *out)
{
	char key[96];
	int64_t v;
	snprintf(key, sizeof key, "%s.%s", ld->arch, suffix);
	int rc = gguf_get_int(ld->g, key, &v);
	if (rc == FL_ENOENT) {
		if (def < 0)
			return lfail(ld, FL_EFORMAT, "missing metadata key %s", key);
		v = def;
	} else if (rc != 0) {
		return lfail(ld, FL_EFORMAT, "metadata key %s is not a single integer (%s)", key,
		             fl_strerror(rc));
	}
	if (v < lo || v > hi)
		return lfail(ld, FL_EFORMAT, "metadata %s = %lld is outside [%lld, %lld]", key,
		             (long long)v, (long long)lo, (long long)hi);
	*out = (int)v;
	return 0;
}

static int key_float(loader *ld, const char *suffix, double def, float *out)
{
	char key[96];
	double v;
	snprintf(key, sizeof key, "%s.%s", ld->arch, suffix);
	int rc = gguf_get_float(ld->g, key, &v);
	if (rc == FL_ENOENT) {
		if (def < 0)
			return lfail(ld, FL_EFORMAT, "missing metadata key %s", key);
		v = def;
	} else if (rc != 0) {
		return lfail(ld, FL_EFORMAT, "metadata key %s is not a float (%s)", key,
		             fl_strerror(rc));
	}
	if (!isfinite(v) || v <= 0.0 || v > 1e12)
		return lfail(ld, FL_EFORMAT, "metadata %s = %g is not a positive finite value", key,
		             v);
	*out = (float)v;
	return 0;
}

/* A matrix tensor `name` that must be [rows, cols] (ne = {cols, rows}). */
static int get_mat(loader *ld, const char *name, int rows, int cols, int optional, kern_mat *m,
                   int *found)
{
	gguf_tensor t;
	int rc = gguf_tensor_find(ld->g, name, &t);
	if (found)
		*found = rc == 0;
	if (rc == FL_ENOENT && optional)
		return 0;
	if (rc != 0)
		return lfail(ld, FL_EFORMAT, "missing tensor %s", name);
	if (t.ne[0] != (uint64_t)cols || t.ne[1] != (uint64_t)rows || t.ne[2] != 1 || t.ne[3] != 1)
		return lfail(ld, FL_EFORMAT,
		             "tensor %s has shape [%llu, %llu, %llu, %llu], expected [%d, %d]",
		             name, (unsigned long long)t.ne[0], (unsigned long long)t.ne[1],
		             (unsigned long long)t.ne[2], (unsigned long long)t.ne[3], cols, rows);
	if (t.type == GTYPE_F32 && ((uintptr_t)t.data % sizeof(float)) != 0)
		return lfail(ld, FL_EFORMAT, "tensor %s: f32 data is not 4-byte aligned", name);
	rc = kern_mat_init(m, t.type, t.data, rows, cols);
	if (rc != 0)
		return lfail(ld, rc, "tensor %s: type %s unusable as a matrix (%s)", name,
		             gtype_name(t.type) ? gtype_name(t.type) : "?", fl_strerror(rc));
	return 0;
}

/* A vector tensor of n elements copied to f32 in ld->small; NULL (and 0)
 * when optional and absent. */
static int get_vec(loader *ld, const char *name, int n, int optional, const float **out)
{
	gguf_tensor t;
	*out = NULL;
	int rc = gguf_tensor_find(ld->g, name, &t);
	if (rc == FL_ENOENT && optional)
		return 0;
	if (rc != 0)
		return lfail(ld, FL_EFORMAT, "missing tensor %s", name);
	if (t.nelem != (uint64_t)n || t.ne[0] != (uint64_t)n)
		return lfail(ld, FL_EFORMAT, "tensor %s has %llu elements, expected a vector of %d",
		             name, (unsigned long long)t.nelem, n);
	if (ld->small_used + (size_t)n > ld->small_cap)
		return lfail(ld, FL_EFORMAT, "too many vector tensors"); /* cap computed up front */
	float *dst = ld->small + ld->small_used;
	rc = gtype_dequant_row(t.type, t.data, dst, (size_t)n);
	if (rc != 0)
		return lfail(ld, rc, "tensor %s: cannot convert type %s to f32", name,
		             gtype_name(t.type) ? gtype_name(t.type) : "?");
	ld->small_used += ((size_t)n + 15) & ~(size_t)15;
	*out = dst;
	return 0;
}

static int load_config(loader *ld, model_config *c)
{
	gguf_str a;
	int rc = gguf_get_str(ld->g, "general.architecture", &a);
	if (rc != 0)
		return lfail(ld, FL_EFORMAT, "missing string key general.architecture");
	if (a.n == 5 && memcmp(a.p, "llama", 5) == 0) {
		c->arch = MODEL_ARCH_LLAMA;
		c->rope_mode = KERN_ROPE_NORM;
	} else if (a.n == 5 && memcmp(a.p, "qwen2", 5) == 0) {
		c->arch = MODEL_ARCH_QWEN2;
		c->rope_mode = KERN_ROPE_NEOX;
	} else if (a.n == 5 && memcmp(a.p, "qwen3", 5) == 0) {
		c->arch = MODEL_ARCH_QWEN3;
		c->rope_mode = KERN_ROPE_NEOX;
	} else {
		return lfail(ld, FL_EUNSUPPORTED,
		             "architecture '%.*s' is not supported (llama, qwen2, qwen3 are)",
		             (int)(a.n > 64 ? 64 : a.n), a.p);
	}
	memcpy(ld->arch, a.p, a.n);
	ld->arch[a.n] = 0;
	if ((rc = key_int(ld, "embedding_length", 1, MODEL_MAX_DIM, -1, &c->dim)) != 0 ||
	    (rc = key_int(ld, "block_count", 1, MODEL_MAX_LAYERS, -1, &c->n_layers)) != 0 ||
	    (rc = key_int(ld, "attention.head_count", 1, MODEL_MAX_HEADS, -1, &c->n_heads)) != 0 ||
	    (rc = key_int(ld, "attention.head_count_kv", 1, MODEL_MAX_HEADS, c->n_heads,
	                  &c->n_kv_heads)) != 0 ||
	    (rc = key_int(ld, "feed_forward_length", 1, 16 * MODEL_MAX_DIM, -1, &c->ffn_dim)) !=
	        0 ||
	    (rc = key_int(ld, "context_length", 1, MODEL_MAX_CTX, -1, &c->ctx)) != 0 ||
	    (rc = key_float(ld, "rope.freq_base", 10000.0, &c->rope_base)) != 0 ||
	    (rc = key_float(ld, "attention.layer_norm_rms_epsilon", -1, &c->norm_eps)) != 0)
		return rc;
	if (c->n_heads % c->n_kv_heads != 0)
		return lfail(ld, FL_EFORMAT, "head_count %d is not a multiple of head_count_kv %d",
		             c->n_heads, c->n_kv_heads);
	/* head size: attention.key_length (Qwen3: NH*hd != C), else C / NH */
	int kl = 0, vl = 0;
	if ((rc = key_int(ld, "attention.key_length", 0, MODEL_MAX_HEAD_DIM, 0, &kl)) != 0 ||
	    (rc = key_int(ld, "attention.value_length", 0, MODEL_MAX_HEAD_DIM, kl, &vl)) != 0)
		return rc;
	if (kl != vl)
		return lfail(
		    ld, FL_EUNSUPPORTED,
		    "attention.key_length %d != attention.value_length %d is not supported", kl,
		    vl);
	if (kl == 0 && c->dim % c->n_heads != 0)
		return lfail(ld, FL_EFORMAT,
		             "embedding_length %d is not a multiple of head_count %d", c->dim,
		             c->n_heads);
	c->head_dim = kl > 0 ? kl : c->dim / c->n_heads;
	if ((rc = key_int(ld, "rope.dimension_count", 0, c->head_dim, c->head_dim, &c->n_rot)) != 0)
		return rc;
	if (c->n_rot % 2 != 0)
		return lfail(ld, FL_EFORMAT, "rope.dimension_count %d is odd", c->n_rot);
	gguf_tensor te;
	if (gguf_tensor_find(ld->g, "token_embd.weight", &te) != 0)
		return lfail(ld, FL_EFORMAT, "missing tensor token_embd.weight");
	if (te.ne[1] < 1 || te.ne[1] > MODEL_MAX_VOCAB)
		return lfail(ld, FL_EFORMAT, "token_embd.weight has %llu rows (vocabulary), cap %d",
		             (unsigned long long)te.ne[1], MODEL_MAX_VOCAB);
	c->vocab = (int)te.ne[1];
	rc = model_config_check(c);
	if (rc != 0)
		return lfail(ld, FL_EFORMAT, "inconsistent hyper-parameters (head_dim %d)",
		             c->head_dim);
	return 0;
}

/* RoPE frequency factors: rope_freqs.weight [n_rot/2] (Llama 3.x: the
 * converter stores llama3-scaled factors there) times the factor of
 * `<arch>.rope.scaling.type` linear. *ff NULL when neither applies. */
static int load_rope_ff(loader *ld, const model_config *c, const float **ff)
{
	const int half = c->n_rot / 2;
	float factor = 1.0f;
	char key[96];
	gguf_str st;
	*ff = NULL;
	snprintf(key, sizeof key, "%s.rope.scaling.type", ld->arch);
	int rc = gguf_get_str(ld->g, key, &st);
	if (rc == 0) {
		if (st.n == 6 && memcmp(st.p, "linear", 6) == 0) {
			if ((rc = key_float(ld, "rope.scaling.factor", -1, &factor)) != 0)
				return rc;
		} else if (!(st.n == 4 && memcmp(st.p, "none", 4) == 0)) {
			return lfail(ld, FL_EUNSUPPORTED,
			             "%s '%.*s' is not supported (none, linear; Llama 3 scaling "
			             "comes as the rope_freqs.weight tensor)",
			             key, (int)(st.n > 32 ? 32 : st.n), st.p);
		}
	} else if (rc != FL_ENOENT) {
		return lfail(ld, FL_EFORMAT, "metadata key %s is not a string", key);
	}
	const float *rf = NULL;
	if (half > 0 && (rc = get_vec(ld, "rope_freqs.weight", half, 1, &rf)) != 0)
		return rc;
	if (!rf && factor == 1.0f)
		return 0;
	if (half == 0)
		return 0;
	float *dst = (float *)rf;
	if (!dst) {
		if (ld->small_used + (size_t)half > ld->small_cap)
			return lfail(ld, FL_EFORMAT, "too many vector tensors");
		dst = ld->small + ld->small_used;
		ld->small_used += ((size_t)half + 15) & ~(size_t)15;
		for (int i = 0; i < half; i++)
			dst[i] = 1.0f;
	}
	for (int i = 0; i < half; i++) {
		dst[i] *= factor;
		if (!(dst[i] > 0.0f) || !isfinite(dst[i]))
			return lfail(ld, FL_EFORMAT,
			             "RoPE frequency factor %d is %g (must be positive, finite)", i,
			             (double)dst[i]);
	}
	*ff = dst;
	return 0;
}

int model_load(const char *path, model **out, char *err, size_t errlen)
{
	loader ld = {.path = path, .err = err, .errlen = errlen};
	model_config c = {0};
	model_weights w = {0};
	model_layer *layers = NULL;
	model *m = NULL;
	char gerr[256];
	int rc = gguf_open(path, &ld.g, gerr, sizeof gerr);
	if (rc != 0) {
		if (err && errlen)
			snprintf(err, errlen, "%s: %s", path, gerr);
		else
			LOGE("model", "%s: %s", path, gerr);
		return rc;
	}
	if ((rc = load_config(&ld, &c)) != 0)
		goto out;
	const int C = c.dim, QD = c.n_heads * c.head_dim, KVD = c.n_kv_heads * c.head_dim;
	/* 1-D parameters per layer: 2 norms + 3 biases + 2 head norms, each
	 * rounded to 16; the RoPE factors once */
	ld.small_cap = (size_t)(c.n_layers + 1) *
	                   (((size_t)2 * C + QD + 2 * KVD + 2 * (size_t)c.head_dim) + 7 * 16) +
	               (size_t)c.n_rot / 2 + 16;
	ld.small = malloc(sizeof(float) * ld.small_cap);
	layers = calloc((size_t)c.n_layers, sizeof *layers);
	if (!ld.small || !layers) {
		rc = lfail(&ld, FL_ENOMEM, "out of memory");
		goto out;
	}
	int has_out = 0;
	if ((rc = get_mat(&ld, "token_embd.weight", c.vocab, C, 0, &w.tok_embd, NULL)) != 0 ||
	    (rc = get_vec(&ld, "output_norm.weight", C, 0, &w.output_norm)) != 0 ||
	    (rc = get_mat(&ld, "output.weight", c.vocab, C, 1, &w.output, &has_out)) != 0)
		goto out;
	if (!has_out) {
		w.output = w.tok_embd;
		w.tied = 1;
	}
	if ((rc = load_rope_ff(&ld, &c, &w.rope_ff)) != 0)
		goto out;
	for (int l = 0; l < c.n_layers; l++) {
		model_layer *y = &layers[l];
		char n[GGUF_MAX_NAME + 1];
#define NM(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
		if ((rc = get_vec(&ld, NM("attn_norm.weight"), C, 0, &y->attn_norm)) != 0 ||
		    (rc = get_mat(&ld, NM("attn_q.weight"), QD, C, 0, &y->wq, NULL)) != 0 ||
		    (rc = get_mat(&ld, NM("attn_k.weight"), KVD, C, 0, &y->wk, NULL)) != 0 ||
		    (rc = get_mat(&ld, NM("attn_v.weight"), KVD, C, 0, &y->wv, NULL)) != 0 ||
		    (rc = get_vec(&ld, NM("attn_q.bias"), QD, 1, &y->bq)) != 0 ||
		    (rc = get_vec(&ld, NM("attn_k.bias"), KVD, 1, &y->bk)) != 0 ||
		    (rc = get_vec(&ld, NM("attn_v.bias"), KVD, 1, &y->bv)) != 0 ||
		    (rc = get_vec(&ld, NM("attn_q_norm.weight"), c.head_dim, 1, &y->q_norm)) != 0 ||
		    (rc = get_vec(&ld, NM("attn_k_norm.weight"), c.head_dim, 1, &y->k_norm)) != 0 ||
		    (rc = get_mat(&ld, NM("attn_output.weight"), C, QD, 0, &y->wo, NULL)) != 0 ||
		    (rc = get_vec(&ld, NM("ffn_norm.weight"), C, 0, &y->ffn_norm)) != 0 ||
		    (rc = get_mat(&ld, NM("ffn_gate.weight"), c.ffn_dim, C, 0, &y->w_gate, NULL)) !=
		        0 ||
		    (rc = get_mat(&ld, NM("ffn_up.weight"), c.ffn_dim, C, 0, &y->w_up, NULL)) !=
		        0 ||
		    (rc = get_mat(&ld, NM("ffn_down.weight"), C, c.ffn_dim, 0, &y->w_down, NULL)) !=
		        0)
			goto out;
#undef NM
		if (c.arch == MODEL_ARCH_QWEN2 && (!y->bq || !y->bk || !y->bv)) {
			rc = lfail(&ld, FL_EFORMAT, "qwen2 layer %d lacks attn_q/k/v.bias", l);
			goto out;
		}
		if (c.arch == MODEL_ARCH_QWEN3 && (!y->q_norm || !y->k_norm)) {
			rc = lfail(&ld, FL_EFORMAT, "qwen3 layer %d lacks attn_q_norm/attn_k_norm",
			           l);
			goto out;
		}
		if (c.arch != MODEL_ARCH_QWEN3 && (y->q_norm || y->k_norm)) {
			rc = lfail(&ld, FL_EUNSUPPORTED,
			           "layer %d has attn_q_norm/attn_k_norm, which architecture %s "
			           "does not use",
			           l, ld.arch);
			goto out;
		}
	}
	w.layers = layers;
	rc = model_new_from_weights(&c, &w, &m);
	if (rc != 0) {
		rc = lfail(&ld, rc, "weights do not match the hyper-parameters");
		goto out;
	}
	m->gg = ld.g;
	m->small = ld.small;
	ld.g = NULL;
	ld.small = NULL;
	*out = m;
out:
	free(layers);
	free(ld.small);
	gguf_free(ld.g);
	return rc;
}
