/* grad — see grad.h. */
#include "grad.h"

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "gtype.h"
#include "train_kern.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

struct grad_ws {
	int B, T, rank;
	model_config cfg;
	float *mem;
	size_t floats;
	float *dres, *dln;          /* [N, C] */
	float *dq, *datty;          /* [N, QD] */
	float *dk, *dv;             /* [N, KVD] */
	float *dgate, *dup, *dhmid; /* [N, F] */
	float *du;                  /* [N, rank] */
	float *dqn, *dkn;           /* [N, QD], [N, KVD]: qwen3 grads before q/k norm */
	float *mm, *att;            /* kernel scratch */
	size_t mm_n, att_n;
	grad_prof *prof;
};

#define GRAD_MAX_BYTES ((size_t)64 << 30)

int grad_ws_new(const model *m, int B, int T, int rank, grad_ws **out)
{
	const model_config *c = model_cfg(m);
	if (B <= 0 || T <= 0 || T > c->ctx || rank < 0)
		return FL_EINVAL;
	const size_t N = (size_t)B * T, C = (size_t)c->dim, QD = (size_t)c->n_heads * c->head_dim,
	             KVD = (size_t)c->n_kv_heads * c->head_dim, F = (size_t)c->ffn_dim;
	const int nth = omp_get_max_threads();
	int maxc = c->dim;
	if (c->ffn_dim > maxc)
		maxc = c->ffn_dim;
	if ((int)QD > maxc)
		maxc = (int)QD;
	const size_t mm_n = tk_matmul_dx_scratch(maxc, nth);
	const size_t att_n =
	    tk_attention_bwd_scratch(B, T, c->n_heads, c->n_kv_heads, c->head_dim, nth);
	/* per-row floats: 2C + 2QD + 2KVD + 3F + rank (+ QD + KVD for qwen3's
	 * q/k norms), each buffer 16-aligned */
	const size_t qkn = c->arch == MODEL_ARCH_QWEN3;
	size_t per_row = 2 * C + 2 * QD + 2 * KVD + 3 * F + (size_t)rank + qkn * (QD + KVD), total,
	       bytes;
	if (sz_mul(N, per_row, &total) != 0 || sz_add(total, 16 * 14, &total) != 0 ||
	    sz_add(total, mm_n, &total) != 0 || sz_add(total, att_n, &total) != 0 ||
	    sz_mul(total, sizeof(float), &bytes) != 0)
		return FL_EOVERFLOW;
	if (bytes > GRAD_MAX_BYTES)
		return FL_ETOOBIG;
	grad_ws *w = calloc(1, sizeof *w);
	if (!w)
		return FL_ENOMEM;
	w->mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!w->mem) {
		free(w);
		return FL_ENOMEM;
	}
	w->B = B;
	w->T = T;
	w->rank = rank;
	w->cfg = *c;
	w->floats = total;
	float *p = w->mem;
#define TAKE(f, n)                                                                                 \
	do {                                                                                       \
		w->f = p;                                                                          \
		p += ((n) + 15) & ~(size_t)15;                                                     \
	} while (0)
	TAKE(dres, N * C);
	TAKE(dln, N * C);
	TAKE(dq, N * QD);
	TAKE(datty, N * QD);
	TAKE(dk, N * KVD);
	TAKE(dv, N * KVD);
	TAKE(dgate, N * F);
	TAKE(dup, N * F);
	TAKE(dhmid, N * F);
	TAKE(du, N * (size_t)rank);
	TAKE(dqn, qkn * N * QD);
	TAKE(dkn, qkn * N * KVD);
	TAKE(mm, mm_n);
	TAKE(att, att_n);
#undef TAKE
	w->mm_n = mm_n;
	w->att_n = att_n;
	*out = w;
	return 0;
}

void grad_ws_free(grad_ws *ws)
{
	if (!ws)
		return;
	free(ws->mem);
	free(ws);
}

size_t grad_ws_bytes(const grad_ws *ws)
{
	return ws ? ws->floats * sizeof(float) : 0;
}

void grad_set_prof(grad_ws *ws, grad_prof *p)
{
	ws->prof = p;
}

double grad_backward_flops(const model_config *c, int B, int T, int full)
{
	const double C = c->dim, QD = (double)c->n_heads * c->head_dim,
	             KVD = (double)c->n_kv_heads * c->head_dim, F = c->ffn_dim;
	const double N = (double)B * T;
	double per_tok = c->n_layers * (C * QD + 2 * C * KVD + QD * C + 3 * C * F) + C * c->vocab;
	double mm = 2.0 * N * per_tok * (full ? 2.0 : 1.0);
	if (!full) /* layer 0's q/k/v input gradient is skipped */
		mm -= 2.0 * N * (C * QD + 2 * C * KVD);
	/* attention: four products per head over query chunks of 64 that see
	 * the keys up to their end (as tk_attention_bwd computes them) */
	double pairs = 0;
	for (int t0 = 0; t0 < T; t0 += 64) {
		int t1 = t0 + 64 < T ? t0 + 64 : T;
		pairs += (double)(t1 - t0) * t1;
	}
	double att = 2.0 * 4.0 * c->n_layers * (double)B * c->n_heads * c->head_dim * pairs;
	return mm + att;
}

typedef struct bctx {
	grad_ws *ws;
	const model_lora *lo;
	const grad_lora *lg;
	int N;
	uint64_t t_mm, t_lo, t_at;
	grad_prof *pf;
} bctx;

/* LoRA backward of projection t of layer l: dy [N, O] (ld_dy), x its input
 * [N, in] (ld_x); dx += du A when dx is non-NULL. */
static int lora_bwd(bctx *b, int l, int t, float *dx, int ld_dx, const float *dy, int ld_dy,
                    const float *x, int ld_x)
{
	const model_lora *lo = b->lo;
	if (!lo)
		return 0;
	const size_t i = (size_t)l * MODEL_LORA_NT + (size_t)t;
	const float *A = lo->a[i], *Bm = lo->b[i];
	if (!A || !Bm)
		return 0;
	float *dA = b->lg && b->lg->da ? b->lg->da[i] : NULL;
	float *dB = b->lg && b->lg->db ? b->lg->db[i] : NULL;
	if (!dA && !dB && !dx)
		return 0;
	const float *u = lo->u ? lo->u[i] : NULL;
	if (!u && dB)
		return FL_EINVAL; /* dB needs u; dA and dx need only du = s dy B */
	int in, o;
	model_lora_dims(&b->ws->cfg, t, &in, &o);
	uint64_t t0 = b->pf ? clk_mono_ns() : 0;
	tk_lora_backward(dx, ld_dx, dA, dB, b->ws->du, dy, ld_dy, x, ld_x, u, A, Bm, lo->rank, in,
	                 o, lo->scale, b->N);
	if (b->pf)
		b->t_lo += clk_mono_ns() - t0;
	return 0;
}

/* dx (+)= dy @ W, timed */
static int mm_dx(bctx *b, float *dx, int ld_dx, const float *dy, int ld_dy, const kern_mat *W,
                 int acc)
{
	uint64_t t0 = b->pf ? clk_mono_ns() : 0;
	int rc = tk_matmul_dx(dx, ld_dx, dy, ld_dy, W, b->N, acc, b->ws->mm, b->ws->mm_n);
	if (b->pf) {
		b->t_mm += clk_mono_ns() - t0;
		b->pf->f_matmul += 2.0 * b->N * (double)W->rows * W->cols;
	}
	return rc;
}

static void mm_dw(bctx *b, float *dW, const float *dy, int ld_dy, const float *x, int ld_x, int O,
                  int I)
{
	if (!dW)
		return;
	uint64_t t0 = b->pf ? clk_mono_ns() : 0;
	tk_matmul_dw(dW, dy, ld_dy, x, ld_x, b->N, O, I);
	if (b->pf) {
		b->t_mm += clk_mono_ns() - t0;
		b->pf->f_matmul += 2.0 * b->N * (double)O * I;
	}
}

int grad_backward(grad_ws *ws, model *m, const int32_t *tokens, const int32_t *targets, int B,
                  int T, float loss_scale, const grad_lora *lg, const grad_weights *gw,
                  int *n_counted)
{
	const model_config *c = model_cfg(m);
	const model_weights *W = model_wts(m);
	const model_acts *a = model_get_acts(m);
	const model_lora *lo = model_get_lora(m);
	if (!a || B != a->B || T != a->T || B > ws->B || T > ws->T || !tokens || !targets)
		return FL_EINVAL;
	if (c->n_layers > 1 && a->stride_C == 0 && !a->ckpt)
		return FL_EINVAL; /* activations not kept */
	if (lo && lo->rank > ws->rank)
		return FL_EINVAL;
	const int C = c->dim, NH = c->n_heads, NKV = c->n_kv_heads, hd = c->head_dim;
	const int QD = NH * hd, KVD = NKV * hd, F = c->ffn_dim, V = c->vocab, L = c->n_layers;
	const int N = B * T;
	const int full = gw != NULL;
	int count = 0, rc;
	for (int n = 0; n < N; n++) {
		if (targets[n] >= V || tokens[n] < 0 || tokens[n] >= V)
			return FL_EINVAL;
		count += targets[n] >= 0;
	}
	if (count == 0)
		return FL_ENUMERIC;
	grad_prof *pf = ws->prof;
	uint64_t t_all = pf ? clk_mono_ns() : 0, t0;
	bctx bc = {.ws = ws, .lo = lo, .lg = lg, .N = N, .pf = pf};

	/* loss -> logits -> final norm */
	tk_crossentropy_bwd(a->logits, targets, N, V, loss_scale / (float)count);
	float *dlogits = a->logits;
	if ((rc = mm_dx(&bc, ws->dln, C, dlogits, V, &W->output, 0)) != 0)
		return rc;
	if (full)
		mm_dw(&bc, W->tied ? gw->tok_embd : gw->output, dlogits, V, a->lnf, C, V, C);
	const float *top = L > 0 ? a->res2 + (size_t)(L - 1) * a->stride_res : a->encoded;
	tk_rmsnorm_bwd(ws->dres, full ? gw->output_norm : NULL, ws->dln, top, W->output_norm,
	               a->lnf_rstd, N, C, 0);

	/* Without full training the backward stops at the lowest layer with a
	 * LoRA gradient to compute. */
	int lmin = 0;
	if (!full) {
		lmin = L;
		for (int l = 0; l < L && lmin == L; l++)
			for (int t = 0; t < MODEL_LORA_NT; t++) {
				size_t i = (size_t)l * MODEL_LORA_NT + (size_t)t;
				if (lo && lo->a[i] && lo->b[i] && lg &&
				    ((lg->da && lg->da[i]) || (lg->db && lg->db[i])))
					lmin = l;
			}
	}
	for (int l = L - 1; l >= lmin; l--) {
		const model_layer *y = &W->layers[l];
		if (a->ckpt) { /* this layer's activations, from its stored input */
			uint64_t tr = pf ? clk_mono_ns() : 0;
			if ((rc = model_recompute_layer(m, l)) != 0)
				return rc;
			if (pf)
				pf->t_recompute += (clk_mono_ns() - tr) * 1e-9;
		}
		const grad_layer *g = full ? &gw->layers[l] : NULL;
		const float *ln1 = a->ln1 + l * a->stride_C, *ln1r = a->ln1_rstd + l * a->stride_N;
		const float *q = a->q + l * a->stride_QD, *k = a->k + l * a->stride_KVD;
		const float *v = a->v + l * a->stride_KVD, *att = a->att + l * a->stride_att;
		const float *atty = a->atty + l * a->stride_QD, *res1 = a->res1 + l * a->stride_C;
		const float *ln2 = a->ln2 + l * a->stride_C, *ln2r = a->ln2_rstd + l * a->stride_N;
		const float *gate = a->gate + l * a->stride_F, *up = a->up + l * a->stride_F;
		const float *hmid = a->hmid + l * a->stride_F;
		const float *xin = l > 0 ? a->res2 + (size_t)(l - 1) * a->stride_res : a->encoded;
		/* the input gradient below lmin is only needed for the embedding */
		const int need_dx0 = full || l > lmin;

		/* ffn_down: dres is d res2 = d down-projection output */
		if ((rc = mm_dx(&bc, ws->dhmid, F, ws->dres, C, &y->w_down, 0)) != 0)
			return rc;
		mm_dw(&bc, g ? g->w_down : NULL, ws->dres, C, hmid, F, C, F);
		if ((rc = lora_bwd(&bc, l, 6, ws->dhmid, F, ws->dres, C, hmid, F)) != 0)
			return rc;
		tk_swiglu_bwd(ws->dgate, ws->dup, ws->dhmid, gate, up, (size_t)N * F);
		/* ffn_gate, ffn_up */
		if ((rc = mm_dx(&bc, ws->dln, C, ws->dgate, F, &y->w_gate, 0)) != 0 ||
		    (rc = mm_dx(&bc, ws->dln, C, ws->dup, F, &y->w_up, 1)) != 0)
			return rc;
		mm_dw(&bc, g ? g->w_gate : NULL, ws->dgate, F, ln2, C, F, C);
		mm_dw(&bc, g ? g->w_up : NULL, ws->dup, F, ln2, C, F, C);
		if ((rc = lora_bwd(&bc, l, 4, ws->dln, C, ws->dgate, F, ln2, C)) != 0 ||
		    (rc = lora_bwd(&bc, l, 5, ws->dln, C, ws->dup, F, ln2, C)) != 0)
			return rc;
		/* ffn norm: dres becomes d res1 */
		tk_rmsnorm_bwd(ws->dres, g ? g->ffn_norm : NULL, ws->dln, res1, y->ffn_norm, ln2r,
		               N, C, 1);

		/* attn_output */
		if ((rc = mm_dx(&bc, ws->datty, QD, ws->dres, C, &y->wo, 0)) != 0)
			return rc;
		mm_dw(&bc, g ? g->wo : NULL, ws->dres, C, atty, QD, C, QD);
		if ((rc = lora_bwd(&bc, l, 3, ws->datty, QD, ws->dres, C, atty, QD)) != 0)
			return rc;
		/* attention */
		kern_attn s = {.B = B,
		               .Tq = T,
		               .Tk = T,
		               .pos0 = 0,
		               .NH = NH,
		               .NKV = NKV,
		               .hd = hd,
		               .q_ld = QD,
		               .kv_ld = KVD,
		               .out_ld = QD,
		               .kv_bs = (size_t)T * KVD};
		t0 = pf ? clk_mono_ns() : 0;
		tk_attention_bwd(ws->dq, ws->dk, ws->dv, ws->datty, q, k, v, att, &s, ws->att,
		                 ws->att_n);
		if (pf)
			bc.t_at += clk_mono_ns() - t0;
		if (c->n_rot > 0) {
			tk_rope_bwd_ff(ws->dq, QD, a->pos, N, NH, hd, c->n_rot, c->rope_base,
			               c->rope_mode, W->rope_ff);
			tk_rope_bwd_ff(ws->dk, KVD, a->pos, N, NKV, hd, c->n_rot, c->rope_base,
			               c->rope_mode, W->rope_ff);
		}
		/* qwen3: back through the per-head q/k RMSNorm; dq/dk then hold the
		 * projections' gradients (the buffers swap roles) */
		float *dq = ws->dq, *dk = ws->dk;
		if (y->q_norm) {
			tk_rmsnorm_bwd(ws->dqn, g ? g->q_norm : NULL, dq,
			               a->qraw + l * a->stride_qr, y->q_norm,
			               a->qrstd + l * a->stride_qn, N * NH, hd, 0);
			tk_rmsnorm_bwd(ws->dkn, g ? g->k_norm : NULL, dk,
			               a->kraw + l * a->stride_kr, y->k_norm,
			               a->krstd + l * a->stride_kn, N * NKV, hd, 0);
			dq = ws->dqn;
			dk = ws->dkn;
		}
		if (g) {
			if (g->bq && y->bq)
				tk_bias_bwd(g->bq, dq, QD, N, QD);
			if (g->bk && y->bk)
				tk_bias_bwd(g->bk, dk, KVD, N, KVD);
			if (g->bv && y->bv)
				tk_bias_bwd(g->bv, ws->dv, KVD, N, KVD);
		}
		/* attn_q, attn_k, attn_v */
		if (need_dx0) {
			if ((rc = mm_dx(&bc, ws->dln, C, dq, QD, &y->wq, 0)) != 0 ||
			    (rc = mm_dx(&bc, ws->dln, C, dk, KVD, &y->wk, 1)) != 0 ||
			    (rc = mm_dx(&bc, ws->dln, C, ws->dv, KVD, &y->wv, 1)) != 0)
				return rc;
		}
		mm_dw(&bc, g ? g->wq : NULL, dq, QD, ln1, C, QD, C);
		mm_dw(&bc, g ? g->wk : NULL, dk, KVD, ln1, C, KVD, C);
		mm_dw(&bc, g ? g->wv : NULL, ws->dv, KVD, ln1, C, KVD, C);
		float *dx = need_dx0 ? ws->dln : NULL;
		if ((rc = lora_bwd(&bc, l, 0, dx, C, dq, QD, ln1, C)) != 0 ||
		    (rc = lora_bwd(&bc, l, 1, dx, C, dk, KVD, ln1, C)) != 0 ||
		    (rc = lora_bwd(&bc, l, 2, dx, C, ws->dv, KVD, ln1, C)) != 0)
			return rc;
		/* attention norm: dres becomes d of this layer's input */
		if (need_dx0)
			tk_rmsnorm_bwd(ws->dres, g ? g->attn_norm : NULL, ws->dln, xin,
			               y->attn_norm, ln1r, N, C, 1);
	}
	if (full && gw->tok_embd)
		tk_embed_bwd(gw->tok_embd, tokens, ws->dres, N, C);
	if (pf) {
		pf->t_matmul += bc.t_mm * 1e-9;
		pf->t_attn += bc.t_at * 1e-9;
		pf->t_lora += bc.t_lo * 1e-9;
		pf->t_other += (clk_mono_ns() - t_all - bc.t_mm - bc.t_at - bc.t_lo) * 1e-9;
		pf->passes++;
	}
	if (n_counted)
		*n_counted = count;
	return 0;
}
