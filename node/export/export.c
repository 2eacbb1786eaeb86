/* export — see export.h. */
#include "export.h"

#include "clock.h"
#include "err.h"
#include "gguf.h"
#include "gtype.h"
#include "log.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define QK 32

/* llama_ftype numbers for general.file_type */
#define FTYPE_ALL_F32     0
#define FTYPE_MOSTLY_F16  1
#define FTYPE_MOSTLY_Q4_0 2
#define FTYPE_MOSTLY_Q8_0 7

void exp_fold(float *W, int rows, int cols, const float *A, const float *B, int r, double s)
{
	/* W [rows, cols] += s * B [rows, r] @ A [r, cols] */
#pragma omp parallel for schedule(static) if ((size_t)rows * cols * r > 65536)
	for (int i = 0; i < rows; i++) {
		float *w = W + (size_t)i * cols;
		const float *b = B + (size_t)i * r;
		for (int j = 0; j < cols; j++) {
			double acc = 0.0;
			for (int k = 0; k < r; k++)
				acc += (double)b[k] * (double)A[(size_t)k * cols + j];
			w[j] = (float)((double)w[j] + s * acc);
		}
	}
}

/* ------------------------------------------------------------------ */
/* calibration and evaluation helpers                                   */

int exp_calib_tokens(const tok *tk, const void *text, size_t n, int n_seq, int seq_len,
                     int32_t **out, size_t *n_avail, char *why, size_t whylen)
{
	if (n_seq < 1 || seq_len < 2)
		return fl_fail(why, whylen, FL_EINVAL,
		               "calibration needs >= 1 sequence of >= 2 tokens");
	size_t cap = tok_encode_bound(n);
	if (cap == SIZE_MAX || cap > ((size_t)1 << 31))
		return fl_fail(why, whylen, FL_ETOOBIG, "calibration text too large (%zu bytes)",
		               n);
	int32_t *ids = malloc(sizeof(int32_t) * (cap ? cap : 1));
	if (!ids)
		return fl_fail(why, whylen, FL_ENOMEM, "out of memory tokenizing %zu bytes", n);
	size_t nid = 0;
	int rc = tok_encode(tk, text, n, TOK_ADD_SPECIAL, ids, cap, &nid);
	if (rc != 0) {
		free(ids);
		return fl_fail(why, whylen, rc, "cannot tokenize the calibration text (%s)",
		               fl_strerror(rc));
	}
	uint64_t need = (uint64_t)n_seq * (uint64_t)seq_len;
	if (nid < need) {
		free(ids);
		return fl_fail(
		    why, whylen, FL_EINVAL,
		    "calibration text is too short: %zu tokens, GPTQ needs %d sequences x "
		    "%d tokens = %" PRIu64 " (give a longer file or lower --calib-seqs / "
		    "--calib-ctx)",
		    nid, n_seq, seq_len, need);
	}
	int32_t *o = malloc(sizeof(int32_t) * (size_t)need);
	if (!o) {
		free(ids);
		return fl_fail(why, whylen, FL_ENOMEM, "out of memory");
	}
	/* start_i = floor(i * (nid - seq_len) / (n_seq - 1)): spacing >= seq_len */
	for (int i = 0; i < n_seq; i++) {
		size_t st = n_seq == 1 ? 0
		                       : (size_t)((uint64_t)i * (uint64_t)(nid - (size_t)seq_len) /
		                                  (uint64_t)(n_seq - 1));
		memcpy(o + (size_t)i * seq_len, ids + st, sizeof(int32_t) * (size_t)seq_len);
	}
	free(ids);
	if (n_avail)
		*n_avail = nid;
	*out = o;
	return 0;
}

/* ------------------------------------------------------------------ */
/* the merged export                                                    */

typedef struct xt {
	void *data;  /* bytes to write */
	size_t size; /* bytes */
	uint32_t type;
	int own; /* 1: malloc'd here */
	int done;
} xt;

typedef struct ctx {
	const exp_opts *o;
	model *m;
	const gguf *g;
	const model_config *c;
	xt *out; /* per base tensor, in base order */
	size_t nt;
	double scale; /* LoRA scale s */
	uint32_t qtype;
	char *why;
	size_t whylen;
	exp_report rep;
	double *Hd; /* [maxn, maxn] Hessian as gptq wants it */
} ctx;

static int tindex(const gguf *g, const char *name, size_t *idx)
{
	for (size_t i = 0; i < gguf_tensor_count(g); i++) {
		gguf_tensor t;
		gguf_tensor_at(g, i, &t);
		if (strcmp(t.name, name) == 0) {
			*idx = i;
			return 0;
		}
	}
	return FL_ENOENT;
}

/* Adapter pair of a base tensor "blk.N.<tg>.weight", or NULL. */
static void adapter_pair(const ctx *x, const char *name, const tensor **A, const tensor **B)
{
	*A = *B = NULL;
	if (!x->o->adapter)
		return;
	size_t n = strlen(name);
	if (n < 8 || strcmp(name + n - 7, ".weight") != 0 || n > 100)
		return;
	char nm[128];
	snprintf(nm, sizeof nm, "%.*s.lora_a", (int)(n - 7), name);
	*A = tset_find(x->o->adapter, nm);
	snprintf(nm, sizeof nm, "%.*s.lora_b", (int)(n - 7), name);
	*B = tset_find(x->o->adapter, nm);
	if (!*A || !*B)
		*A = *B = NULL;
}

/* Tensor i as f32 [rows, cols] with the adapter folded in (malloc'd). */
static int load_f32(ctx *x, size_t i, float **out, int *rows, int *cols)
{
	gguf_tensor t;
	gguf_tensor_at(x->g, i, &t);
	if (t.ndims != 2 || t.ne[0] > INT32_MAX || t.ne[1] > INT32_MAX)
		return fl_fail(x->why, x->whylen, FL_EINVAL, "tensor %s is not a 2-D matrix",
		               t.name);
	size_t rb, nel = (size_t)t.nelem;
	int rc = gtype_row_size(t.type, t.ne[0], &rb);
	if (rc != 0)
		return fl_fail(x->why, x->whylen, rc, "tensor %s: bad row size", t.name);
	float *W = malloc(sizeof(float) * (nel ? nel : 1));
	if (!W)
		return fl_fail(x->why, x->whylen, FL_ENOMEM, "out of memory for tensor %s", t.name);
	for (uint64_t r = 0; r < t.ne[1]; r++)
		gtype_dequant_row(t.type, (const uint8_t *)t.data + r * rb, W + r * t.ne[0],
		                  (size_t)t.ne[0]);
	const tensor *A, *B;
	adapter_pair(x, t.name, &A, &B);
	if (A) {
		/* shapes were checked by lfmt_check: A [r, cols], B [rows, r] */
		exp_fold(W, (int)t.ne[1], (int)t.ne[0], A->data, B->data, (int)A->shape[0],
		         x->scale);
		x->rep.n_merged++;
	}
	*out = W;
	*rows = (int)t.ne[1];
	*cols = (int)t.ne[0];
	return 0;
}

static int set_out(ctx *x, size_t i, void *data, size_t size, uint32_t type)
{
	x->out[i].data = data;
	x->out[i].size = size;
	x->out[i].type = type;
	x->out[i].own = 1;
	x->out[i].done = 1;
	return 0;
}

/* Round-to-nearest (ggml's reference quantizers) / conversion of W. */
static int emit_rtn(ctx *x, size_t i, const float *W, int rows, int cols, uint32_t type)
{
	gguf_tensor t;
	gguf_tensor_at(x->g, i, &t);
	size_t rb;
	int rc = gtype_row_size(type, (uint64_t)cols, &rb);
	if (rc != 0)
		return fl_fail(
		    x->why, x->whylen, FL_EINVAL,
		    "tensor %s has rows of %d elements: not a multiple of %zu, cannot be %s",
		    t.name, cols, gtype_block_elems(type), gtype_name(type));
	uint8_t *dst = malloc(rb * (size_t)rows);
	if (!dst)
		return fl_fail(x->why, x->whylen, FL_ENOMEM, "out of memory for tensor %s", t.name);
	for (int r = 0; r < rows; r++) {
		rc =
		    gtype_quant_row(type, W + (size_t)r * cols, dst + (size_t)r * rb, (size_t)cols);
		if (rc != 0) {
			free(dst);
			return fl_fail(x->why, x->whylen, rc,
			               "tensor %s row %d: cannot convert to %s (%s)", t.name, r,
			               gtype_name(type), fl_strerror(rc));
		}
	}
	x->rep.n_converted++;
	return set_out(x, i, dst, rb * (size_t)rows, type);
}

/* GPTQ of W with the Hessian accumulated in h; the result also becomes the
 * kern_mat *km the calibration forward uses from now on. */
static int emit_gptq(ctx *x, size_t i, const float *W, int rows, int cols, const gptq_hess *h,
                     kern_mat *km)
{
	gguf_tensor t;
	gguf_tensor_at(x->g, i, &t);
	size_t rb;
	if (gtype_row_size(x->qtype, (uint64_t)cols, &rb) != 0)
		return fl_fail(
		    x->why, x->whylen, FL_EINVAL,
		    "tensor %s has rows of %d elements: not a multiple of 32, cannot be %s", t.name,
		    cols, gtype_name(x->qtype));
	uint8_t *dst = malloc(rb * (size_t)rows);
	if (!dst)
		return fl_fail(x->why, x->whylen, FL_ENOMEM, "out of memory for tensor %s", t.name);
	int rc = gptq_hess_matrix(h, x->Hd);
	gptq_stats st;
	uint64_t t0 = clk_mono_ns();
	if (rc == 0)
		rc = gptq_quantize(W, rows, cols, x->Hd, x->qtype, &x->o->gq, dst, &st);
	x->rep.secs_gptq += (clk_mono_ns() - t0) * 1e-9;
	if (rc != 0) {
		free(dst);
		return fl_fail(x->why, x->whylen, rc, "GPTQ of %s failed (%s)", t.name,
		               rc == FL_ENUMERIC ? "Hessian not positive definite even with "
		                                   "dampening, or NaN/Inf"
		                                 : fl_strerror(rc));
	}
	x->rep.n_gptq++;
	if (st.damp_used > x->rep.damp_max)
		x->rep.damp_max = st.damp_used;
	x->rep.err_gptq += st.err_gptq;
	x->rep.err_rtn += st.err_rtn;
	if (x->o->verbose) {
		if (x->o->gq.stats)
			LOGI("export",
			     "%s [%d x %d]: GPTQ %s, damp %.3g, %d dead columns, output "
			     "error %.4g (round-to-nearest %.4g, ratio %.3f)",
			     t.name, rows, cols, gtype_name(x->qtype), st.damp_used, st.dead_cols,
			     st.err_gptq, st.err_rtn,
			     st.err_rtn > 0 ? st.err_gptq / st.err_rtn : 0.0);
		else
			LOGI("export", "%s [%d x %d]: GPTQ %s, damp %.3g, %d dead columns", t.name,
			     rows, cols, gtype_name(x->qtype), st.damp_used, st.dead_cols);
	}
	set_out(x, i, dst, rb * (size_t)rows, x->qtype);
	if (km)
		return kern_mat_init(km, x->qtype, dst, rows, cols);
	return 0;
}

/* Per-chunk activation buffers of the calibration forward. */
typedef struct cbuf {
	float *ln, *q, *k, *v, *att, *gate, *up, *tmp, *scratch;
	int32_t *pos;
	size_t scratch_n;
} cbuf;

static void cbuf_free(cbuf *b)
{
	free(b->ln);
	free(b->q);
	free(b->k);
	free(b->v);
	free(b->att);
	free(b->gate);
	free(b->up);
	free(b->tmp);
	free(b->scratch);
	free(b->pos);
}

static int cbuf_alloc(cbuf *b, const model_config *c, int Bc, int T)
{
	size_t Nc = (size_t)Bc * T, QD = (size_t)c->n_heads * c->head_dim;
	size_t KVD = (size_t)c->n_kv_heads * c->head_dim;
	int maxc = c->dim > c->ffn_dim ? c->dim : c->ffn_dim;
	if ((int)QD > maxc)
		maxc = (int)QD;
	memset(b, 0, sizeof *b);
	b->ln = malloc(sizeof(float) * Nc * c->dim);
	b->q = malloc(sizeof(float) * Nc * QD);
	b->k = malloc(sizeof(float) * Nc * KVD);
	b->v = malloc(sizeof(float) * Nc * KVD);
	b->att = malloc(sizeof(float) * (size_t)Bc * c->n_heads * T * T);
	b->gate = malloc(sizeof(float) * Nc * c->ffn_dim);
	b->up = malloc(sizeof(float) * Nc * c->ffn_dim);
	b->tmp = malloc(sizeof(float) * Nc * c->dim);
	b->pos = malloc(sizeof(int32_t) * Nc);
	b->scratch_n = kern_matmul_scratch(maxc, kern_threads());
	b->scratch = malloc(sizeof(float) * (b->scratch_n ? b->scratch_n : 1));
	if (!b->ln || !b->q || !b->k || !b->v || !b->att || !b->gate || !b->up || !b->tmp ||
	    !b->pos || !b->scratch) {
		cbuf_free(b);
		return FL_ENOMEM;
	}
	for (int s = 0; s < Bc; s++)
		for (int t = 0; t < T; t++)
			b->pos[(size_t)s * T + t] = t;
	return 0;
}

/* Layer matrices as kern_mats, indexed by enum lora_target. */
static kern_mat *layer_mat(model_layer *y, int t)
{
	switch (t) {
	case LORA_ATTN_Q:
		return &y->wq;
	case LORA_ATTN_K:
		return &y->wk;
	case LORA_ATTN_V:
		return &y->wv;
	case LORA_ATTN_OUTPUT:
		return &y->wo;
	case LORA_FFN_GATE:
		return &y->w_gate;
	case LORA_FFN_UP:
		return &y->w_up;
	default:
		return &y->w_down;
	}
}

/* The attention half of layer y for one chunk (Bc sequences of T tokens):
 * X [Nc, C] -> atty [Nc, QD]. */
static int chunk_attn(const model_config *c, const model_weights *mw, const model_layer *y, cbuf *b,
                      const float *X, float *atty, int Bc, int T)
{
	const int C = c->dim, QD = c->n_heads * c->head_dim, KVD = c->n_kv_heads * c->head_dim;
	const int N = Bc * T;
	int rc;
	kern_rmsnorm(b->ln, NULL, X, y->attn_norm, c->norm_eps, N, C);
	if ((rc = kern_matmul(b->q, QD, b->ln, C, &y->wq, y->bq, N, b->scratch, b->scratch_n)) ||
	    (rc = kern_matmul(b->k, KVD, b->ln, C, &y->wk, y->bk, N, b->scratch, b->scratch_n)) ||
	    (rc = kern_matmul(b->v, KVD, b->ln, C, &y->wv, y->bv, N, b->scratch, b->scratch_n)))
		return rc;
	model_qk_prep(c, mw, y, b->q, b->k, b->pos, N, NULL, NULL, NULL, NULL);
	kern_attn s = {.B = Bc,
	               .Tq = T,
	               .Tk = T,
	               .pos0 = 0,
	               .NH = c->n_heads,
	               .NKV = c->n_kv_heads,
	               .hd = c->head_dim,
	               .q_ld = QD,
	               .kv_ld = KVD,
	               .out_ld = QD,
	               .kv_bs = (size_t)T * KVD};
	kern_attention(atty, b->att, b->q, b->k, b->v, &s);
	return 0;
}

/* hmid [Nc, F] (into b->gate) of the FFN half for one chunk from the
 * post-attention residual X. */
static int chunk_ffn_mid(const model_config *c, const model_layer *y, cbuf *b, const float *X,
                         int N)
{
	const int C = c->dim, F = c->ffn_dim;
	int rc;
	kern_rmsnorm(b->ln, NULL, X, y->ffn_norm, c->norm_eps, N, C);
	if ((rc = kern_matmul(b->gate, F, b->ln, C, &y->w_gate, NULL, N, b->scratch,
	                      b->scratch_n)) ||
	    (rc = kern_matmul(b->up, F, b->ln, C, &y->w_up, NULL, N, b->scratch, b->scratch_n)))
		return rc;
	kern_swiglu(b->gate, b->gate, b->up, (size_t)N * F);
	return 0;
}

int exp_forward_final(model *m, const int32_t *tokens, int S, int T, int batch, float *out)
{
	const model_config *c = model_cfg(m);
	const model_weights *mw = model_wts(m);
	const int C = c->dim, QD = c->n_heads * c->head_dim, F = c->ffn_dim;
	if (S < 1 || T < 1 || T > c->ctx || !tokens || !out)
		return FL_EINVAL;
	for (size_t k = 0; k < (size_t)S * T; k++)
		if (tokens[k] < 0 || tokens[k] >= c->vocab)
			return FL_EINVAL;
	const int Bmax = batch > 0 && batch < S ? batch : S;
	cbuf b;
	float *att = malloc(sizeof(float) * (size_t)Bmax * T * QD);
	if (!att || cbuf_alloc(&b, c, Bmax, T) != 0) {
		free(att);
		return FL_ENOMEM;
	}
	int rc = 0;
	kern_embed(out, tokens, &mw->tok_embd, S * T);
	for (int s0 = 0; s0 < S && rc == 0; s0 += Bmax) {
		int Bc = S - s0 < Bmax ? S - s0 : Bmax, N = Bc * T;
		float *xs = out + (size_t)s0 * T * C;
		for (int l = 0; l < c->n_layers && rc == 0; l++) {
			const model_layer *y = &mw->layers[l];
			if ((rc = chunk_attn(c, mw, y, &b, xs, att, Bc, T)) != 0 ||
			    (rc = kern_matmul(b.tmp, C, att, QD, &y->wo, NULL, N, b.scratch,
			                      b.scratch_n)) != 0)
				break;
			kern_add(xs, xs, b.tmp, (size_t)N * C);
			if ((rc = chunk_ffn_mid(c, y, &b, xs, N)) != 0 ||
			    (rc = kern_matmul(b.tmp, C, b.gate, F, &y->w_down, NULL, N, b.scratch,
			                      b.scratch_n)) != 0)
				break;
			kern_add(xs, xs, b.tmp, (size_t)N * C);
		}
		if (rc == 0)
			kern_rmsnorm(xs, NULL, xs, mw->output_norm, c->norm_eps, N, C);
	}
	cbuf_free(&b);
	free(att);
	return rc;
}

static int run_gptq(ctx *x)
{
	const exp_opts *o = x->o;
	const model_config *c = x->c;
	const model_weights *mw = model_wts(x->m);
	const int C = c->dim, QD = c->n_heads * c->head_dim, F = c->ffn_dim;
	const int S = o->n_seq, T = o->seq_len;
	const int Bmax = o->batch > 0 ? (o->batch < S ? o->batch : S) : (4 < S ? 4 : S);
	const size_t Nall = (size_t)S * T;
	float *X = NULL, *ATT = NULL, *W[LORA_NTARGETS] = {0};
	gptq_hess *h = NULL;
	cbuf b = {0};
	int rc = 0, have_b = 0;
	model_layer y;
	kern_mat emb;
	char nm[GGUF_MAX_NAME + 1];
	size_t idx;
	uint64_t t0 = clk_mono_ns();
	double t_q0 = x->rep.secs_gptq;

	if (T > c->ctx)
		return fl_fail(
		    x->why, x->whylen, FL_EINVAL,
		    "calibration sequences of %d tokens exceed the model's context_length "
		    "%d",
		    T, c->ctx);
	for (size_t k = 0; k < Nall; k++)
		if (o->calib[k] < 0 || o->calib[k] >= c->vocab)
			return fl_fail(x->why, x->whylen, FL_EINVAL,
			               "calibration token %" PRId32
			               " is outside the vocabulary (%d)",
			               o->calib[k], c->vocab);
	X = malloc(sizeof(float) * Nall * C);
	ATT = malloc(sizeof(float) * Nall * QD);
	if (!X || !ATT || cbuf_alloc(&b, c, Bmax, T) != 0) {
		rc = fl_fail(x->why, x->whylen, FL_ENOMEM,
		             "out of memory for calibration activations (%zu tokens)", Nall);
		goto out;
	}
	have_b = 1;

	/* The token embedding is quantized by round-to-nearest first so the
	 * calibration inputs are what the deployed model computes. */
	if ((rc = tindex(x->g, "token_embd.weight", &idx)) != 0) {
		rc = fl_fail(x->why, x->whylen, FL_EFORMAT, "base has no token_embd.weight");
		goto out;
	}
	{
		float *E;
		int er, ec;
		if ((rc = load_f32(x, idx, &E, &er, &ec)) != 0)
			goto out;
		rc = emit_rtn(x, idx, E, er, ec, x->qtype);
		free(E);
		if (rc != 0)
			goto out;
		if ((rc = kern_mat_init(&emb, x->qtype, x->out[idx].data, er, ec)) != 0)
			goto out;
	}
	kern_embed(X, o->calib, &emb, (int)Nall);

	for (int l = 0; l < c->n_layers; l++) {
		y = mw->layers[l]; /* norms and biases from the base; matrices replaced */
		size_t ix[LORA_NTARGETS];
		int rows[LORA_NTARGETS], cols[LORA_NTARGETS];
		for (int t = 0; t < LORA_NTARGETS; t++) {
			lora_base_name(nm, sizeof nm, (uint32_t)l, t);
			if (tindex(x->g, nm, &ix[t]) != 0) {
				rc = fl_fail(x->why, x->whylen, FL_EFORMAT, "base lacks %s", nm);
				goto out;
			}
			if ((rc = load_f32(x, ix[t], &W[t], &rows[t], &cols[t])) != 0)
				goto out;
		}
		/* A: inputs of q, k, v */
		uint64_t tc = clk_mono_ns();
		if ((rc = gptq_hess_new(C, &h)) != 0)
			goto nomem;
		for (int s0 = 0; s0 < S; s0 += Bmax) {
			int Bc = S - s0 < Bmax ? S - s0 : Bmax, N = Bc * T;
			kern_rmsnorm(b.ln, NULL, X + (size_t)s0 * T * C, y.attn_norm, c->norm_eps,
			             N, C);
			if ((rc = gptq_hess_add(h, b.ln, N, C)) != 0)
				goto hfail;
		}
		x->rep.secs_calib += (clk_mono_ns() - tc) * 1e-9;
		for (int t = LORA_ATTN_Q; t <= LORA_ATTN_V; t++)
			if ((rc = emit_gptq(x, ix[t], W[t], rows[t], cols[t], h,
			                    layer_mat(&y, t))) != 0)
				goto out;
		gptq_hess_free(h);
		h = NULL;

		/* B: inputs of attn_output, through the quantized q, k, v */
		tc = clk_mono_ns();
		if ((rc = gptq_hess_new(QD, &h)) != 0)
			goto nomem;
		for (int s0 = 0; s0 < S; s0 += Bmax) {
			int Bc = S - s0 < Bmax ? S - s0 : Bmax, N = Bc * T;
			float *att = ATT + (size_t)s0 * T * QD;
			if ((rc = chunk_attn(c, mw, &y, &b, X + (size_t)s0 * T * C, att, Bc, T)) !=
			    0)
				goto kfail;
			if ((rc = gptq_hess_add(h, att, N, QD)) != 0)
				goto hfail;
		}
		x->rep.secs_calib += (clk_mono_ns() - tc) * 1e-9;
		if ((rc = emit_gptq(x, ix[LORA_ATTN_OUTPUT], W[LORA_ATTN_OUTPUT],
		                    rows[LORA_ATTN_OUTPUT], cols[LORA_ATTN_OUTPUT], h, &y.wo)) != 0)
			goto out;
		gptq_hess_free(h);
		h = NULL;

		/* C: residual after attention (quantized wo); inputs of gate, up */
		tc = clk_mono_ns();
		if ((rc = gptq_hess_new(C, &h)) != 0)
			goto nomem;
		for (int s0 = 0; s0 < S; s0 += Bmax) {
			int Bc = S - s0 < Bmax ? S - s0 : Bmax, N = Bc * T;
			float *xs = X + (size_t)s0 * T * C;
			if ((rc = kern_matmul(b.tmp, C, ATT + (size_t)s0 * T * QD, QD, &y.wo, NULL,
			                      N, b.scratch, b.scratch_n)) != 0)
				goto kfail;
			kern_add(xs, xs, b.tmp, (size_t)N * C);
			kern_rmsnorm(b.ln, NULL, xs, y.ffn_norm, c->norm_eps, N, C);
			if ((rc = gptq_hess_add(h, b.ln, N, C)) != 0)
				goto hfail;
		}
		x->rep.secs_calib += (clk_mono_ns() - tc) * 1e-9;
		for (int t = LORA_FFN_GATE; t <= LORA_FFN_UP; t++)
			if ((rc = emit_gptq(x, ix[t], W[t], rows[t], cols[t], h,
			                    layer_mat(&y, t))) != 0)
				goto out;
		gptq_hess_free(h);
		h = NULL;

		/* D: inputs of ffn_down through the quantized gate, up */
		tc = clk_mono_ns();
		if ((rc = gptq_hess_new(F, &h)) != 0)
			goto nomem;
		for (int s0 = 0; s0 < S; s0 += Bmax) {
			int Bc = S - s0 < Bmax ? S - s0 : Bmax, N = Bc * T;
			if ((rc = chunk_ffn_mid(c, &y, &b, X + (size_t)s0 * T * C, N)) != 0)
				goto kfail;
			if ((rc = gptq_hess_add(h, b.gate, N, F)) != 0)
				goto hfail;
		}
		x->rep.secs_calib += (clk_mono_ns() - tc) * 1e-9;
		if ((rc = emit_gptq(x, ix[LORA_FFN_DOWN], W[LORA_FFN_DOWN], rows[LORA_FFN_DOWN],
		                    cols[LORA_FFN_DOWN], h, &y.w_down)) != 0)
			goto out;
		gptq_hess_free(h);
		h = NULL;

		/* E: the layer's output with every matrix quantized */
		tc = clk_mono_ns();
		for (int s0 = 0; s0 < S; s0 += Bmax) {
			int Bc = S - s0 < Bmax ? S - s0 : Bmax, N = Bc * T;
			float *xs = X + (size_t)s0 * T * C;
			if ((rc = chunk_ffn_mid(c, &y, &b, xs, N)) != 0 ||
			    (rc = kern_matmul(b.tmp, C, b.gate, F, &y.w_down, NULL, N, b.scratch,
			                      b.scratch_n)) != 0)
				goto kfail;
			kern_add(xs, xs, b.tmp, (size_t)N * C);
		}
		x->rep.secs_calib += (clk_mono_ns() - tc) * 1e-9;
		for (int t = 0; t < LORA_NTARGETS; t++) {
			free(W[t]);
			W[t] = NULL;
		}
		if (o->verbose)
			LOGI("export", "layer %d/%d quantized (%.1f s so far)", l + 1, c->n_layers,
			     (clk_mono_ns() - t0) * 1e-9);
	}

	/* output.weight (untied) on the final-norm outputs */
	if (!mw->tied && tindex(x->g, "output.weight", &idx) == 0) {
		float *Wo;
		int orow, ocol;
		uint64_t tc = clk_mono_ns();
		if ((rc = gptq_hess_new(C, &h)) != 0)
			goto nomem;
		for (int s0 = 0; s0 < S; s0 += Bmax) {
			int Bc = S - s0 < Bmax ? S - s0 : Bmax, N = Bc * T;
			kern_rmsnorm(b.ln, NULL, X + (size_t)s0 * T * C, mw->output_norm,
			             c->norm_eps, N, C);
			if ((rc = gptq_hess_add(h, b.ln, N, C)) != 0)
				goto hfail;
		}
		x->rep.secs_calib += (clk_mono_ns() - tc) * 1e-9;
		if ((rc = load_f32(x, idx, &Wo, &orow, &ocol)) != 0)
			goto out;
		rc = emit_gptq(x, idx, Wo, orow, ocol, h, NULL);
		free(Wo);
		if (rc != 0)
			goto out;
	}
	x->rep.calib_tokens = Nall;
	LOGI("export",
	     "GPTQ %s: %d matrices on %zu calibration tokens in %.1f s (%.1f s "
	     "quantizing)",
	     gtype_name(x->qtype), x->rep.n_gptq, Nall, (clk_mono_ns() - t0) * 1e-9,
	     x->rep.secs_gptq - t_q0);
	rc = 0;
	goto out;
nomem:
	rc = fl_fail(x->why, x->whylen, FL_ENOMEM, "out of memory for a Hessian");
	goto out;
hfail:
	rc = fl_fail(x->why, x->whylen, rc,
	             "calibration activations are not finite (NaN/Inf) — the model or the "
	             "adapter is broken");
	goto out;
kfail:
	rc =
	    fl_fail(x->why, x->whylen, rc, "calibration forward pass failed (%s)", fl_strerror(rc));
out:
	for (int t = 0; t < LORA_NTARGETS; t++)
		free(W[t]);
	gptq_hess_free(h);
	if (have_b)
		cbuf_free(&b);
	free(X);
	free(ATT);
	return rc;
}

static uint32_t ftype_of(uint32_t type)
{
	switch (type) {
	case GTYPE_F16:
		return FTYPE_MOSTLY_F16;
	case GTYPE_Q4_0:
		return FTYPE_MOSTLY_Q4_0;
	case GTYPE_Q8_0:
		return FTYPE_MOSTLY_Q8_0;
	default:
		return FTYPE_ALL_F32;
	}
}

static int write_meta(ctx *x, gguf_writer *w)
{
	const exp_opts *o = x->o;
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < gguf_kv_count(x->g); i++) {
		const char *k = gguf_kv_key(x->g, i);
		if (o->type != EXP_TYPE_KEEP && strcmp(k, "general.file_type") == 0)
			continue;
		if (strncmp(k, "fedlora.export.", 15) == 0)
			continue; /* provenance of an earlier export is replaced below */
		rc = gguf_set_copy(w, x->g, k);
	}
	if (rc == 0 && o->type != EXP_TYPE_KEEP)
		rc = gguf_set_u32(w, "general.file_type", ftype_of(o->type));
	if (rc == 0 && (o->type == GTYPE_Q4_0 || o->type == GTYPE_Q8_0) &&
	    gguf_find_key(x->g, "general.quantization_version") < 0)
		rc = gguf_set_u32(w, "general.quantization_version", 2);
	const char *method = o->gptq ? (o->type == GTYPE_Q4_0 ? "gptq-q4_0" : "gptq-q8_0")
	                     : o->type == GTYPE_Q4_0 ? "rtn-q4_0"
	                     : o->type == GTYPE_Q8_0 ? "rtn-q8_0"
	                     : o->type == GTYPE_F16  ? "f16"
	                     : o->type == GTYPE_F32  ? "f32"
	                                             : "keep";
	if (rc == 0)
		rc = gguf_set_str(w, "fedlora.export.quantization", method);
	if (rc == 0 && o->adapter) {
		rc = gguf_set_f32(w, "fedlora.export.lora_alpha", o->params.alpha);
		if (rc == 0)
			rc = gguf_set_u32(w, "fedlora.export.lora_rank", o->params.rank);
		if (rc == 0)
			rc = gguf_set_bool(w, "fedlora.export.lora_rslora", o->params.rslora != 0);
		if (rc == 0)
			rc = gguf_set_f32(w, "fedlora.export.lora_scale", (float)x->scale);
	}
	if (rc == 0 && o->note)
		rc = gguf_set_str(w, "fedlora.export.source", o->note);
	if (rc == 0 && o->gptq) {
		rc = gguf_set_f32(w, "fedlora.export.gptq.damp",
		                  (float)(o->gq.damp > 0 ? o->gq.damp : GPTQ_DEFAULT_DAMP));
		if (rc == 0)
			rc = gguf_set_u32(
			    w, "fedlora.export.gptq.block",
			    (uint32_t)(o->gq.block > 0 ? o->gq.block : GPTQ_DEFAULT_BLOCK));
		if (rc == 0)
			rc = gguf_set_u64(w, "fedlora.export.gptq.calib_tokens",
			                  (uint64_t)o->n_seq * (uint64_t)o->seq_len);
	}
	return rc;
}

int exp_merged(const char *base_path, const exp_opts *o, const char *out_path, exp_report *rep,
               char *why, size_t whylen)
{
	ctx x;
	memset(&x, 0, sizeof x);
	x.o = o;
	x.why = why;
	x.whylen = whylen;
	gguf_writer *w = NULL;
	char err[512];
	int rc;
	uint64_t t0 = clk_mono_ns();
	if (why && whylen)
		why[0] = 0;

	if (o->type != EXP_TYPE_KEEP && o->type != GTYPE_F32 && o->type != GTYPE_F16 &&
	    o->type != GTYPE_Q8_0 && o->type != GTYPE_Q4_0)
		return fl_fail(why, whylen, FL_EINVAL,
		               "output type must be f32, f16, q8_0 or q4_0");
	if (o->gptq) {
		if (o->type != GTYPE_Q4_0 && o->type != GTYPE_Q8_0)
			return fl_fail(why, whylen, FL_EINVAL, "GPTQ writes q4_0 or q8_0 only");
		if (!o->calib || o->n_seq < 1 || o->seq_len < 2)
			return fl_fail(why, whylen, FL_EINVAL, "GPTQ needs calibration tokens");
		if (o->gq.block > 0 && o->gq.block % QK)
			return fl_fail(
			    why, whylen, FL_EINVAL,
			    "GPTQ block size %d is not a multiple of 32 (the Q4_0/Q8_0 block)",
			    o->gq.block);
	}
	if ((rc = model_load(base_path, &x.m, err, sizeof err)) != 0)
		return fl_fail(why, whylen, rc, "%s", err);
	x.g = model_gguf(x.m);
	x.c = model_cfg(x.m);
	x.qtype = o->type;
	if (o->adapter) {
		uint32_t r;
		if ((rc = lfmt_check(o->adapter, x.g, &r, err, sizeof err)) != 0) {
			fl_fail(why, whylen, rc, "adapter does not fit %s: %s", base_path, err);
			goto out;
		}
		lora_spec p = o->params;
		if (p.rank != 0 && p.rank != r) {
			rc = fl_fail(why, whylen, FL_EMISMATCH,
			             "adapter rank %" PRIu32 " differs from its tensors' %" PRIu32,
			             p.rank, r);
			goto out;
		}
		p.rank = r;
		x.scale = lora_scale(&p);
		if (!isfinite(x.scale)) {
			rc = fl_fail(why, whylen, FL_ENUMERIC, "LoRA scale is not finite");
			goto out;
		}
	}
	x.nt = gguf_tensor_count(x.g);
	x.out = calloc(x.nt ? x.nt : 1, sizeof *x.out);
	if (!x.out) {
		rc = fl_fail(why, whylen, FL_ENOMEM, "out of memory");
		goto out;
	}
	if (o->gptq) {
		int maxn = x.c->dim > x.c->ffn_dim ? x.c->dim : x.c->ffn_dim;
		if (x.c->n_heads * x.c->head_dim > maxn)
			maxn = x.c->n_heads * x.c->head_dim;
		x.Hd = malloc(sizeof(double) * (size_t)maxn * maxn);
		if (!x.Hd) {
			rc = fl_fail(why, whylen, FL_ENOMEM, "out of memory for the Hessian");
			goto out;
		}
		if ((rc = run_gptq(&x)) != 0)
			goto out;
	}
	/* everything GPTQ did not produce */
	for (size_t i = 0; i < x.nt; i++) {
		if (x.out[i].done)
			continue;
		gguf_tensor t;
		gguf_tensor_at(x.g, i, &t);
		const tensor *A, *B;
		adapter_pair(&x, t.name, &A, &B);
		uint32_t ot = t.ndims == 2 && o->type != EXP_TYPE_KEEP ? o->type : t.type;
		if (!A && ot == t.type) {
			x.out[i] =
			    (xt){.data = (void *)t.data, .size = t.size, .type = t.type, .done = 1};
			continue;
		}
		float *W;
		int rows, cols;
		if ((rc = load_f32(&x, i, &W, &rows, &cols)) != 0)
			goto out;
		rc = emit_rtn(&x, i, W, rows, cols, ot);
		free(W);
		if (rc != 0)
			goto out;
	}
	if (!(w = gguf_writer_new())) {
		rc = fl_fail(why, whylen, FL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = write_meta(&x, w)) != 0) {
		fl_fail(why, whylen, rc, "cannot build the metadata (%s)", fl_strerror(rc));
		goto out;
	}
	for (size_t i = 0; i < x.nt; i++) {
		gguf_tensor t;
		gguf_tensor_at(x.g, i, &t);
		xt *e = &x.out[i];
		if (e->own) {
			rc = gguf_add_tensor_own(w, t.name, e->type, t.ndims, t.ne, e->data,
			                         e->size);
			e->own = 0; /* the writer owns it now, also on failure */
			e->data = NULL;
		} else {
			rc = gguf_add_tensor(w, t.name, e->type, t.ndims, t.ne, e->data, e->size);
		}
		if (rc != 0) {
			fl_fail(why, whylen, rc, "cannot add tensor %s (%s)", t.name,
			        fl_strerror(rc));
			goto out;
		}
	}
	x.rep.n_tensors = (int)x.nt;
	if ((rc = gguf_writer_write(w, out_path)) != 0) {
		fl_fail(why, whylen, rc, "cannot write %s (%s)", out_path, fl_strerror(rc));
		goto out;
	}
	struct stat sb;
	if (stat(out_path, &sb) == 0)
		x.rep.out_bytes = (uint64_t)sb.st_size;
	x.rep.secs_total = (clk_mono_ns() - t0) * 1e-9;
	if (rep)
		*rep = x.rep;
out:
	gguf_writer_free(w);
	if (x.out)
		for (size_t i = 0; i < x.nt; i++)
			if (x.out[i].own)
				free(x.out[i].data);
	free(x.out);
	free(x.Hd);
	model_free(x.m);
	return rc;
}
