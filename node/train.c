/* train — see train.h. */
#include "train.h"

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "gtype.h"
#include "log.h"
#include "lrank.h"
#include "lora_fmt.h"
#include "peft.h"
#include "model/grad.h"
#include "optim.h"
#include "rng.h"
#include "safetensors.h"
#include "fileio.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- base ------------------------------------------------------------------------ */

typedef struct trn_param {
	char name[GGUF_MAX_NAME + 1];
	float *p;
	size_t n;
	int ndim;
	uint64_t ne[2]; /* ggml order: ne[0] = row length */
	int decay;      /* matrices: weight decay applies */
} trn_param;

struct trn_base {
	model *file; /* model_load: the mapping and the f32 copies of vectors */
	model *m;    /* file, or a model over converted weights */
	int full;
	uint8_t *qmem; /* matrices quantized at load */
	float *blob;   /* full: every parameter, f32 */
	size_t nblob;
	model_layer *layers;
	trn_param *params;
	size_t nparams;
	size_t weight_bytes;
	char type_name[16];
};

/* Drops the file pages behind a tensor we no longer read (they were read
 * once for conversion and would otherwise count as resident). */
static void release(const void *data, size_t size)
{
	const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)data + pg - 1) & ~(pg - 1);
	uintptr_t e = ((uintptr_t)data + size) & ~(pg - 1);
	if (e > a)
		madvise((void *)a, e - a, MADV_DONTNEED);
}

static size_t mat_bytes(const kern_mat *k)
{
	return k->row_bytes * (size_t)k->rows;
}

/* The matrices of a weights struct, in a fixed order, with GGUF names. */
typedef struct matref {
	kern_mat *k;
	char name[GGUF_MAX_NAME + 1];
} matref;

static size_t list_mats(model_weights *w, const model_config *c, matref *out)
{
	size_t n = 0;
	snprintf(out[n].name, sizeof out[n].name, "token_embd.weight");
	out[n++].k = &w->tok_embd;
	for (int l = 0; l < c->n_layers; l++) {
		model_layer *y = &w->layers[l];
		kern_mat *ks[7] = {&y->wq,     &y->wk,   &y->wv,    &y->wo,
		                   &y->w_gate, &y->w_up, &y->w_down};
		for (int i = 0; i < 7; i++) {
			lora_base_name(out[n].name, sizeof out[n].name, (uint32_t)l, i);
			out[n++].k = ks[i];
		}
	}
	if (!w->tied) {
		snprintf(out[n].name, sizeof out[n].name, "output.weight");
		out[n++].k = &w->output;
	}
	return n;
}

static const char *type_summary(const model_weights *w, const model_config *c, char *out, size_t n)
{
	uint32_t t = w->layers[0].wq.type;
	int mixed = 0;
	for (int l = 0; l < c->n_layers; l++) {
		const model_layer *y = &w->layers[l];
		const kern_mat *ks[7] = {&y->wq,     &y->wk,   &y->wv,    &y->wo,
		                         &y->w_gate, &y->w_up, &y->w_down};
		for (int i = 0; i < 7; i++)
			mixed |= ks[i]->type != t;
	}
	snprintf(out, n, "%s", mixed ? "mixed" : gtype_name(t) ? gtype_name(t) : "?");
	return out;
}

static int quantize_base(trn_base *b, uint32_t qt, char *err, size_t errlen)
{
	const model_config *c = model_cfg(b->file);
	model_weights w = *model_wts(b->file);
	const size_t L = (size_t)c->n_layers;
	b->layers = malloc(sizeof *b->layers * L);
	matref *mr = malloc(sizeof *mr * (7 * L + 2));
	size_t *off = malloc(sizeof *off * (7 * L + 2));
	int rc = 0;
	if (!b->layers || !mr || !off) {
		rc = fl_fail(err, errlen, FL_ENOMEM, "out of memory");
		goto out;
	}
	memcpy(b->layers, w.layers, sizeof *b->layers * L);
	w.layers = b->layers;
	const size_t nm = list_mats(&w, c, mr);
	size_t total = 0;
	for (size_t i = 0; i < nm; i++) {
		const kern_mat *k = mr[i].k;
		size_t rb;
		off[i] = SIZE_MAX;
		if (k->type != GTYPE_F32 && k->type != GTYPE_F16 && k->type != GTYPE_BF16)
			continue; /* already quantized: used as stored */
		if (gtype_row_size(qt, (uint64_t)k->cols, &rb) != 0) {
			rc = fl_fail(
			    err, errlen, FL_EINVAL,
			    "cannot quantize %s to %s: its %d columns are not a multiple of 32",
			    mr[i].name, gtype_name(qt), k->cols);
			goto out;
		}
		off[i] = total;
		if (sz_add(total, rb * (size_t)k->rows, &total) != 0) {
			rc = fl_fail(err, errlen, FL_EOVERFLOW, "model too large");
			goto out;
		}
	}
	b->qmem = malloc(total ? total : 1);
	if (!b->qmem) {
		rc = fl_fail(err, errlen, FL_ENOMEM, "out of memory for %zu bytes of %s weights",
		             total, gtype_name(qt));
		goto out;
	}
	for (size_t i = 0; i < nm && rc == 0; i++) {
		if (off[i] == SIZE_MAX)
			continue;
		kern_mat *k = mr[i].k;
		const kern_mat src = *k;
		size_t rb;
		gtype_row_size(qt, (uint64_t)k->cols, &rb);
		gtype_dequant_fn deq = gtype_dequant_fn_of(src.type);
		uint8_t *dst = b->qmem + off[i];
		int bad = 0;
#pragma omp parallel reduction(| : bad)
		{
			float *row = malloc(sizeof(float) * (size_t)src.cols);
			if (!row)
				bad |= 1;
#pragma omp for schedule(static)
			for (int r = 0; r < src.rows; r++) {
				if (!row)
					continue;
				deq((const uint8_t *)src.data + (size_t)r * src.row_bytes, row,
				    (size_t)src.cols);
				if (gtype_quant_row(qt, row, dst + (size_t)r * rb,
				                    (size_t)src.cols) != 0)
					bad |= 2;
			}
			free(row);
		}
		if (bad) {
			rc = fl_fail(err, errlen, bad & 1 ? FL_ENOMEM : FL_ENUMERIC,
			             "cannot quantize %s: %s", mr[i].name,
			             bad & 1 ? "out of memory" : "it holds NaN or Inf");
			break;
		}
		kern_mat_init(k, qt, dst, src.rows, src.cols);
		release(src.data, mat_bytes(&src));
	}
	if (rc != 0)
		goto out;
	if (w.tied)
		w.output = w.tok_embd;
	rc = model_new_from_weights(c, &w, &b->m);
	if (rc != 0)
		rc = fl_fail(err, errlen, rc, "cannot build the quantized model: %s",
		             fl_strerror(rc));
out:
	free(mr);
	free(off);
	return rc;
}

static int add_param(trn_base *b, size_t *at, const char *name, size_t n, int ndim, uint64_t ne0,
                     uint64_t ne1, int decay, float **p)
{
	trn_param *q = &b->params[b->nparams++];
	snprintf(q->name, sizeof q->name, "%s", name);
	q->p = b->blob + *at;
	q->n = n;
	q->ndim = ndim;
	q->ne[0] = ne0;
	q->ne[1] = ne1;
	q->decay = decay;
	*at += (n + 15) & ~(size_t)15;
	*p = q->p;
	return 0;
}

static int full_base(trn_base *b, char *err, size_t errlen)
{
	const model_config *c = model_cfg(b->file);
	const model_weights *fw = model_wts(b->file);
	const size_t C = (size_t)c->dim, QD = (size_t)c->n_heads * c->head_dim,
	             KVD = (size_t)c->n_kv_heads * c->head_dim, F = (size_t)c->ffn_dim,
	             V = (size_t)c->vocab, L = (size_t)c->n_layers;
	/* upper bound of floats, each tensor rounded to 16 */
	size_t per = 2 * C + QD * C + 2 * KVD * C + QD + 2 * KVD + C * QD + 3 * F * C + 16 * 12;
	size_t total, bytes;
	if (sz_mul(per, L, &total) != 0 || sz_add(total, 2 * V * C + C + 48, &total) != 0 ||
	    sz_mul(total, sizeof(float), &bytes) != 0)
		return fl_fail(err, errlen, FL_EOVERFLOW, "model too large");
	b->blob = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	b->params = calloc(L * 12 + 4, sizeof *b->params);
	b->layers = calloc(L, sizeof *b->layers);
	if (!b->blob || !b->params || !b->layers)
		return fl_fail(err, errlen, FL_ENOMEM, "out of memory for %zu bytes of f32 weights",
		               bytes);
	b->nblob = total;
	model_weights w = *fw;
	w.layers = b->layers;
	size_t at = 0;
	float *p;
	char nm[GGUF_MAX_NAME + 1];
	int rc = 0;
	/* matrix: dequantize every row into the blob */
#define MAT(kdst, ksrc, name)                                                                      \
	do {                                                                                       \
		const kern_mat *s_ = (ksrc);                                                       \
		add_param(b, &at, (name), (size_t)s_->rows * s_->cols, 2, (uint64_t)s_->cols,      \
		          (uint64_t)s_->rows, 1, &p);                                              \
		for (int r_ = 0; r_ < s_->rows && rc == 0; r_++)                                   \
			rc = gtype_dequant_row(                                                    \
			    s_->type, (const uint8_t *)s_->data + (size_t)r_ * s_->row_bytes,      \
			    p + (size_t)r_ * s_->cols, (size_t)s_->cols);                          \
		if (rc == 0)                                                                       \
			rc = kern_mat_init((kdst), GTYPE_F32, p, s_->rows, s_->cols);              \
		release(s_->data, mat_bytes(s_));                                                  \
	} while (0)
#define VEC(dst, src, n, name)                                                                     \
	do {                                                                                       \
		add_param(b, &at, (name), (n), 1, (n), 1, 0, &p);                                  \
		memcpy(p, (src), sizeof(float) * (n));                                             \
		(dst) = p;                                                                         \
	} while (0)
	MAT(&w.tok_embd, &fw->tok_embd, "token_embd.weight");
	for (size_t l = 0; l < L && rc == 0; l++) {
		const model_layer *s = &fw->layers[l];
		model_layer *y = &b->layers[l];
#define NM(x) (snprintf(nm, sizeof nm, "blk.%zu." x, l), nm)
		VEC(y->attn_norm, s->attn_norm, C, NM("attn_norm.weight"));
		MAT(&y->wq, &s->wq, NM("attn_q.weight"));
		MAT(&y->wk, &s->wk, NM("attn_k.weight"));
		MAT(&y->wv, &s->wv, NM("attn_v.weight"));
		if (s->bq)
			VEC(y->bq, s->bq, QD, NM("attn_q.bias"));
		if (s->bk)
			VEC(y->bk, s->bk, KVD, NM("attn_k.bias"));
		if (s->bv)
			VEC(y->bv, s->bv, KVD, NM("attn_v.bias"));
		MAT(&y->wo, &s->wo, NM("attn_output.weight"));
		VEC(y->ffn_norm, s->ffn_norm, C, NM("ffn_norm.weight"));
		MAT(&y->w_gate, &s->w_gate, NM("ffn_gate.weight"));
		MAT(&y->w_up, &s->w_up, NM("ffn_up.weight"));
		MAT(&y->w_down, &s->w_down, NM("ffn_down.weight"));
#undef NM
	}
	if (rc == 0) {
		VEC(w.output_norm, fw->output_norm, C, "output_norm.weight");
		if (fw->tied)
			w.output = w.tok_embd;
		else
			MAT(&w.output, &fw->output, "output.weight");
	}
#undef MAT
#undef VEC
	if (rc != 0)
		return fl_fail(err, errlen, rc, "cannot convert the weights to f32: %s",
		               fl_strerror(rc));
	rc = model_new_from_weights(c, &w, &b->m);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "cannot build the f32 model: %s", fl_strerror(rc));
	return 0;
}

int trn_base_load(const char *path, const char *quant, int full, trn_base **out, char *err,
                  size_t errlen)
{
	uint32_t qt = 0;
	if (quant && strcmp(quant, "none") != 0) {
		if (strcmp(quant, "q8_0") == 0)
			qt = GTYPE_Q8_0;
		else if (strcmp(quant, "q4_0") == 0)
			qt = GTYPE_Q4_0;
		else
			return fl_fail(err, errlen, FL_EINVAL,
			               "base quantization '%s' is not one of none, q8_0, q4_0",
			               quant);
	}
	if (full && qt)
		return fl_fail(err, errlen, FL_EINVAL,
		               "full training updates f32 weights; a quantized base is for LoRA");
	trn_base *b = calloc(1, sizeof *b);
	if (!b)
		return fl_fail(err, errlen, FL_ENOMEM, "out of memory");
	int rc = model_load(path, &b->file, err, errlen);
	if (rc != 0) {
		free(b);
		return rc;
	}
	b->full = full;
	char e2[256];
	if (full)
		rc = full_base(b, e2, sizeof e2);
	else if (qt)
		rc = quantize_base(b, qt, e2, sizeof e2);
	else
		b->m = b->file;
	if (rc != 0) {
		fl_fail(err, errlen, rc, "%s: %s", path, e2);
		trn_base_free(b);
		return rc;
	}
	model_weights w = *model_wts(b->m);
	const model_config *c = model_cfg(b->m);
	matref *mr = malloc(sizeof *mr * (7 * (size_t)c->n_layers + 2));
	if (!mr) {
		trn_base_free(b);
		return fl_fail(err, errlen, FL_ENOMEM, "out of memory");
	}
	size_t nm = list_mats(&w, c, mr);
	for (size_t i = 0; i < nm; i++)
		b->weight_bytes += mat_bytes(mr[i].k);
	free(mr);
	type_summary(&w, c, b->type_name, sizeof b->type_name);
	*out = b;
	return 0;
}

void trn_base_free(trn_base *b)
{
	if (!b)
		return;
	if (b->m != b->file)
		model_free(b->m);
	model_free(b->file);
	free(b->qmem);
	free(b->blob);
	free(b->layers);
	free(b->params);
	free(b);
}

model *trn_base_model(trn_base *b)
{
	return b->m;
}

const gguf *trn_base_gguf(const trn_base *b)
{
	return model_gguf(b->file);
}

size_t trn_base_weight_bytes(const trn_base *b)
{
	return b->weight_bytes;
}

const char *trn_base_type_name(const trn_base *b)
{
	return b->type_name;
}

int trn_base_save_gguf(const trn_base *b, const char *path, char *err, size_t errlen)
{
	if (!b->full)
		return fl_fail(err, errlen, FL_ESTATE, "the base was not loaded for full training");
	const gguf *src = model_gguf(b->file);
	gguf_writer *w = gguf_writer_new();
	if (!w)
		return fl_fail(err, errlen, FL_ENOMEM, "out of memory");
	int rc = 0;
	for (size_t i = 0; i < gguf_kv_count(src) && rc == 0; i++) {
		const char *key = gguf_kv_key(src, i);
		if (strcmp(key, "general.file_type") == 0)
			rc = gguf_set_u32(w, key, 0); /* ALL_F32 */
		else if (strcmp(key, "general.quantization_version") == 0)
			continue;
		else
			rc = gguf_set_copy(w, src, key);
	}
	if (rc == 0 && gguf_find_key(src, "general.file_type") < 0)
		rc = gguf_set_u32(w, "general.file_type", 0);
	for (size_t i = 0; i < gguf_tensor_count(src) && rc == 0; i++) {
		gguf_tensor t;
		if ((rc = gguf_tensor_at(src, i, &t)) != 0)
			break;
		const trn_param *q = NULL;
		for (size_t k = 0; k < b->nparams && !q; k++)
			if (strcmp(b->params[k].name, t.name) == 0)
				q = &b->params[k];
		if (q)
			rc = gguf_add_tensor(w, t.name, GTYPE_F32, q->ndim, q->ne, q->p,
			                     q->n * sizeof(float));
		else /* a tensor the engine does not use: carried over as stored */
			rc = gguf_add_tensor(w, t.name, t.type, t.ndims, t.ne, t.data, t.size);
	}
	if (rc == 0)
		rc = gguf_writer_write(w, path);
	gguf_writer_free(w);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "%s: cannot write the model: %s", path,
		               fl_strerror(rc));
	return 0;
}

/* ---- trainer ------------------------------------------------------------------------ */

struct trainer {
	trn_base *base;
	model *m;
	model_config cfg;
	trn_opts o;
	float scale;
	/* LoRA */
	tset *cur, *grads, *anchor;
	adp_binding *bind;
	float **da, **db;
	/* full */
	float *gblob;
	grad_layer *gl;
	grad_weights gw;
	/* both */
	optim *opt;
	grad_ws *ws;
	int32_t *inp, *tgt;
	/* windows with targets for (data, ctx), and an epoch's order */
	const ds *idx_ds;
	int idx_ctx;
	uint32_t *idx, *order;
	size_t nidx;
	size_t bytes;
	int in_train; /* inside trn_train (progress callbacks may eval live) */
};

trn_hparams trn_defaults(void)
{
	trn_hparams h = {.steps = 100,
	                 .lr = 1e-3f,
	                 .sched = OPTIM_CONSTANT,
	                 .warmup = 0,
	                 .min_lr_ratio = 0.1f,
	                 .batch = 4,
	                 .accum = 1,
	                 .ctx = 256,
	                 .weight_decay = 0.0f,
	                 .max_grad_norm = 1.0f,
	                 .prox_mu = 0.0f,
	                 .beta1 = 0.9f,
	                 .beta2 = 0.999f,
	                 .eps = 1e-8f,
	                 .seed = 1};
	return h;
}

void trn_free(trainer *t)
{
	if (!t)
		return;
	if (t->m)
		model_set_lora(t->m, NULL);
	tset_free(t->cur);
	tset_free(t->grads);
	tset_free(t->anchor);
	adp_binding_free(t->bind);
	free(t->da);
	free(t->db);
	free(t->gblob);
	free(t->gl);
	optim_free(t->opt);
	grad_ws_free(t->ws);
	free(t->inp);
	free(t->tgt);
	free(t->idx);
	free(t->order);
	free(t);
}

size_t trn_bytes(const trainer *t)
{
	return t->bytes;
}

static int lora_setup(trainer *t, char *err, size_t errlen)
{
	const model_config *c = &t->cfg;
	const size_t n = (size_t)c->n_layers * LORA_NTARGETS;
	int rc;
	if ((rc = adp_layout(c, &t->o.lora, &t->cur)) != 0 ||
	    (rc = adp_layout(c, &t->o.lora, &t->grads)) != 0 ||
	    (rc = adp_layout(c, &t->o.lora, &t->anchor)) != 0)
		return fl_fail(err, errlen, rc, "adapter: %s", fl_strerror(rc));
	rc = adp_bind(c, &t->o.lora, t->cur, t->o.max_batch * t->o.max_ctx, &t->bind);
	t->da = calloc(n, sizeof *t->da);
	t->db = calloc(n, sizeof *t->db);
	if (rc != 0 || !t->da || !t->db)
		return fl_fail(err, errlen, rc ? rc : FL_ENOMEM, "adapter buffers: out of memory");
	adp_ptrs(c, t->grads, 0, t->da);
	adp_ptrs(c, t->grads, 1, t->db);
	/* one optimiser segment per trained tensor; FFA leaves lora_a out */
	size_t ns = tset_count(t->cur), k = 0;
	optim_seg *segs = calloc(ns ? ns : 1, sizeof *segs);
	if (!segs)
		return fl_fail(err, errlen, FL_ENOMEM, "out of memory");
	for (size_t i = 0; i < ns; i++) {
		tensor *p = tset_at(t->cur, i);
		if (t->o.lora.ffa && strstr(p->name, ".lora_a"))
			continue;
		segs[k++] = (optim_seg){.p = p->data,
		                        .g = tset_find(t->grads, p->name)->data,
		                        .n = p->n,
		                        .decay = 1,
		                        .ref = tset_find(t->anchor, p->name)->data};
	}
	optim_cfg oc = optim_defaults();
	rc = optim_new(segs, k, &oc, &t->opt);
	free(segs);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "optimiser: %s", fl_strerror(rc));
	t->bytes += 5 * tset_numel(t->cur) * sizeof(float) +
	            (size_t)t->o.max_batch * t->o.max_ctx * t->o.lora.rank * sizeof(float) * n;
	return 0;
}

static int full_setup(trainer *t, char *err, size_t errlen)
{
	trn_base *b = t->base;
	const model_config *c = &t->cfg;
	t->gblob = aligned_alloc(64, ((b->nblob * sizeof(float)) + 63) & ~(size_t)63);
	t->gl = calloc((size_t)c->n_layers, sizeof *t->gl);
	optim_seg *segs = calloc(b->nparams, sizeof *segs);
	if (!t->gblob || !t->gl || !segs) {
		free(segs);
		return fl_fail(err, errlen, FL_ENOMEM, "out of memory for %zu f32 gradients",
		               b->nblob);
	}
	memset(t->gblob, 0, b->nblob * sizeof(float));
#define G(p) ((p) ? t->gblob + ((const float *)(p)-b->blob) : NULL)
	const model_weights *w = model_wts(b->m);
	for (int l = 0; l < c->n_layers; l++) {
		const model_layer *y = &w->layers[l];
		t->gl[l] = (grad_layer){.attn_norm = G(y->attn_norm),
		                        .wq = G(y->wq.data),
		                        .wk = G(y->wk.data),
		                        .wv = G(y->wv.data),
		                        .bq = G(y->bq),
		                        .bk = G(y->bk),
		                        .bv = G(y->bv),
		                        .wo = G(y->wo.data),
		                        .ffn_norm = G(y->ffn_norm),
		                        .w_gate = G(y->w_gate.data),
		                        .w_up = G(y->w_up.data),
		                        .w_down = G(y->w_down.data)};
	}
	t->gw = (grad_weights){.tok_embd = G(w->tok_embd.data),
	                       .output = w->tied ? NULL : G(w->output.data),
	                       .output_norm = G(w->output_norm),
	                       .layers = t->gl};
	for (size_t i = 0; i < b->nparams; i++)
		segs[i] = (optim_seg){.p = b->params[i].p,
		                      .g = G(b->params[i].p),
		                      .n = b->params[i].n,
		                      .decay = b->params[i].decay};
#undef G
	optim_cfg oc = optim_defaults();
	int rc = optim_new(segs, b->nparams, &oc, &t->opt);
	free(segs);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "optimiser: %s", fl_strerror(rc));
	t->bytes += 3 * b->nblob * sizeof(float);
	return 0;
}

int trn_new(trn_base *b, const trn_opts *o, trainer **out, char *err, size_t errlen)
{
	if (!b || !o || !out)
		return fl_fail(err, errlen, FL_EINVAL, "bad arguments");
	const model_config *c = model_cfg(b->m);
	if (o->full && !b->full)
		return fl_fail(err, errlen, FL_EINVAL,
		               "full training needs the base loaded for it (f32 weights)");
	if (o->max_batch < 1 || o->max_batch > 65536)
		return fl_fail(err, errlen, FL_EINVAL, "batch %d is outside 1..65536",
		               o->max_batch);
	if (o->max_ctx < 2 || o->max_ctx > c->ctx)
		return fl_fail(err, errlen, FL_EINVAL,
		               "context %d is outside 2..%d (the model's context_length)",
		               o->max_ctx, c->ctx);
	if (!o->full && lora_spec_check(&o->lora, err, errlen) != 0)
		return FL_EINVAL;
	if (o->threads > 0)
		kern_set_threads(o->threads);
	trainer *t = calloc(1, sizeof *t);
	if (!t)
		return fl_fail(err, errlen, FL_ENOMEM, "out of memory");
	t->base = b;
	t->m = b->m;
	t->cfg = *c;
	t->o = *o;
	t->scale = o->full ? 0.0f : lora_scale(&o->lora);
	t->idx_ctx = -1;
	const size_t N = (size_t)o->max_batch * o->max_ctx;
	int rc = model_prepare(t->m, o->max_batch, o->max_ctx,
	                       o->checkpoint ? MODEL_CHECKPOINT : MODEL_KEEP_ACTS);
	if (rc != 0) {
		fl_fail(err, errlen, rc, "activation arena for batch %d x ctx %d: %s", o->max_batch,
		        o->max_ctx, fl_strerror(rc));
		goto fail;
	}
	t->bytes += model_arena_bytes(t->m);
	rc = grad_ws_new(t->m, o->max_batch, o->max_ctx, o->full ? 0 : (int)o->lora.rank, &t->ws);
	if (rc != 0) {
		fl_fail(err, errlen, rc, "gradient workspace: %s", fl_strerror(rc));
		goto fail;
	}
	t->bytes += grad_ws_bytes(t->ws);
	t->inp = malloc(sizeof(int32_t) * N);
	t->tgt = malloc(sizeof(int32_t) * N);
	if (!t->inp || !t->tgt) {
		rc = fl_fail(err, errlen, FL_ENOMEM, "out of memory");
		goto fail;
	}
	rc = o->full ? full_setup(t, err, errlen) : lora_setup(t, err, errlen);
	if (rc != 0)
		goto fail;
	*out = t;
	return 0;
fail:
	trn_free(t);
	return rc;
}

void trn_set_prof(trainer *t, model_prof *fp, grad_prof *gp)
{
	model_set_prof(t->m, fp);
	grad_set_prof(t->ws, gp);
}

int trn_adapter_layout(const trainer *t, tset **out)
{
	if (t->o.full)
		return FL_ESTATE;
	return adp_layout(&t->cfg, &t->o.lora, out);
}

int trn_adapter_init(const trainer *t, uint64_t seed, tset **out)
{
	if (t->o.full)
		return FL_ESTATE;
	return adp_init(&t->cfg, &t->o.lora, seed, out);
}

/* The windows of data at ctx that hold a target (cached). */
static int windows(trainer *t, const ds *data, int ctx)
{
	if (t->idx_ds == data && t->idx_ctx == ctx)
		return 0;
	free(t->idx);
	free(t->order);
	t->idx = t->order = NULL;
	t->idx_ds = NULL;
	int rc = ds_window_index(data, ctx, &t->idx, &t->nidx);
	if (rc != 0)
		return rc;
	t->order = malloc(sizeof(uint32_t) * (t->nidx ? t->nidx : 1));
	if (!t->order)
		return FL_ENOMEM;
	t->idx_ds = data;
	t->idx_ctx = ctx;
	return 0;
}

static void epoch_order(trainer *t, uint64_t seed, uint64_t epoch)
{
	memcpy(t->order, t->idx, sizeof(uint32_t) * t->nidx);
	rng r;
	rng_seed(&r, seed ^ (epoch + 1) * 0x9e3779b97f4a7c15ull);
	rng_shuffle_u32(&r, t->order, t->nidx);
}

long trn_steps_for_epochs(const ds *data, int ctx, int batch, int accum, double epochs)
{
	uint32_t *idx = NULL;
	size_t n = 0;
	if (ctx < 1 || batch < 1 || accum < 1 || !(epochs > 0) ||
	    ds_window_index(data, ctx, &idx, &n) != 0)
		return 0;
	free(idx);
	if (n == 0)
		return 0;
	double s = ceil(epochs * (double)n / ((double)batch * accum));
	return s < 1 ? 1 : s > 1e12 ? (long)1e12 : (long)s;
}

static int attach(trainer *t, const tset *adapter)
{
	if (t->o.full) {
		model_set_lora(t->m, NULL);
		return adapter ? FL_EINVAL : 0;
	}
	if (!adapter)
		return model_set_lora(t->m, NULL);
	int rc = tset_copy(t->cur, adapter);
	if (rc != 0)
		return rc;
	return model_set_lora(t->m, adp_binding_lora(t->bind));
}

static int check_hp(const trainer *t, const trn_hparams *h, char *err, size_t errlen)
{
	if (h->steps < 0)
		return fl_fail(err, errlen, FL_EINVAL, "negative step count");
	if (h->batch < 1 || h->batch > t->o.max_batch)
		return fl_fail(err, errlen, FL_EINVAL, "batch %d is outside 1..%d", h->batch,
		               t->o.max_batch);
	if (h->ctx < 2 || h->ctx > t->o.max_ctx)
		return fl_fail(err, errlen, FL_EINVAL, "ctx %d is outside 2..%d", h->ctx,
		               t->o.max_ctx);
	if (h->accum < 1 || h->accum > 65536)
		return fl_fail(err, errlen, FL_EINVAL,
		               "gradient accumulation %d is outside 1..65536", h->accum);
	if (!(h->lr >= 0.0f) || !isfinite(h->lr) || h->warmup < 0 ||
	    !(h->min_lr_ratio >= 0.0f && h->min_lr_ratio <= 1.0f) ||
	    (h->sched != OPTIM_CONSTANT && h->sched != OPTIM_COSINE))
		return fl_fail(err, errlen, FL_EINVAL, "bad learning-rate schedule");
	return 0;
}

/* hp->dump_grads: the gradients as they are before optim_step clips them. */
static int dump_grads(const tset *g, const char *path, double loss, char *err, size_t errlen)
{
	double ss = 0.0;
	for (size_t i = 0; i < tset_count(g); i++) {
		const tensor *x = tset_at(g, i);
		for (size_t k = 0; k < x->n; k++)
			ss += (double)x->data[k] * x->data[k];
	}
	char ls[32], gn[32];
	snprintf(ls, sizeof ls, "%.9g", loss);
	snprintf(gn, sizeof gn, "%.9g", sqrt(ss));
	const st_kv meta[3] = {{"fedlora.grads.step", "1"},
	                       {"fedlora.grads.loss", ls},
	                       {"fedlora.grads.grad_norm", gn}};
	int rc = st_write_mode(path, g, ST_F32, meta, 3, FILE_PUBLIC);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "--dump-grads %s: cannot write: %s", path,
		               fl_strerror(rc));
	return 0;
}

int trn_train(trainer *t, tset *adapter, const tset *global, const ds *data, const trn_hparams *hp,
              trn_metrics *mt, trn_progress_fn cb, void *arg, char *err, size_t errlen)
{
	int rc = check_hp(t, hp, err, errlen);
	if (rc != 0)
		return rc;
	if (t->o.full && (adapter || global))
		return fl_fail(err, errlen, FL_EINVAL, "full training takes no adapter");
	if (!t->o.full) {
		if (!adapter)
			return fl_fail(err, errlen, FL_EINVAL, "LoRA training needs an adapter");
		if ((rc = adp_check(&t->cfg, &t->o.lora, adapter, err, errlen)) != 0)
			return rc;
		if (global && (rc = tset_same_layout(global, adapter)) != 0)
			return fl_fail(err, errlen, rc, "the FedProx anchor has another layout");
	}
	if ((rc = windows(t, data, hp->ctx)) != 0)
		return fl_fail(err, errlen, rc, "data windows: %s", fl_strerror(rc));
	if (t->nidx == 0)
		return fl_fail(err, errlen, FL_EINVAL, "the data has no window with a target");
	optim_cfg oc = {.beta1 = hp->beta1,
	                .beta2 = hp->beta2,
	                .eps = hp->eps,
	                .weight_decay = hp->weight_decay,
	                .max_grad_norm = hp->max_grad_norm,
	                .prox_mu = global ? hp->prox_mu : 0.0f};
	if ((rc = optim_set_cfg(t->opt, &oc)) != 0)
		return fl_fail(err, errlen, rc, "bad optimiser settings");
	optim_reset(t->opt);
	if ((rc = attach(t, adapter)) != 0)
		return fl_fail(err, errlen, rc, "adapter: %s", fl_strerror(rc));
	if (global)
		tset_copy(t->anchor, global);
	const optim_sched sc = {.kind = hp->sched,
	                        .lr = hp->lr,
	                        .warmup = hp->warmup,
	                        .total = hp->steps,
	                        .min_ratio = hp->min_lr_ratio};
	const int B = hp->batch, T = hp->ctx;
	grad_lora gl = {.da = t->o.lora.ffa ? NULL : t->da, .db = t->db};
	trn_metrics m = {0};
	double tail[10] = {0};
	uint64_t epoch = 0, t0 = clk_mono_ns();
	size_t cursor = 0;
	epoch_order(t, hp->seed, epoch);
	t->in_train = 1;
	for (long s = 0; s < hp->steps; s++) {
		const float lr = optim_lr(&sc, s);
		if (t->o.full)
			memset(t->gblob, 0, t->base->nblob * sizeof(float));
		else
			tset_zero(t->grads);
		double step_loss = 0.0;
		for (int a = 0; a < hp->accum; a++) {
			for (int b = 0; b < B; b++) {
				if (cursor == t->nidx) {
					epoch_order(t, hp->seed, ++epoch);
					cursor = 0;
				}
				m.targets += (uint64_t)ds_window(data, T, t->order[cursor++],
				                                 t->inp + (size_t)b * T,
				                                 t->tgt + (size_t)b * T);
			}
			float loss = NAN;
			rc = model_forward(t->m, t->inp, t->tgt, B, T, &loss);
			if (rc == 0)
				rc = grad_backward(t->ws, t->m, t->inp, t->tgt, B, T,
				                   1.0f / (float)hp->accum, t->o.full ? NULL : &gl,
				                   t->o.full ? &t->gw : NULL, NULL);
			if (rc != 0) {
				fl_fail(err, errlen, rc, "step %ld: %s", s + 1, fl_strerror(rc));
				goto out;
			}
			if (!isfinite(loss)) {
				rc = fl_fail(err, errlen, FL_ENUMERIC, "step %ld: the loss is %g",
				             s + 1, (double)loss);
				goto out;
			}
			step_loss += loss / hp->accum;
			m.tokens += (uint64_t)B * T;
		}
		if (s == 0 && hp->dump_grads && !t->o.full &&
		    (rc = dump_grads(t->grads, hp->dump_grads, step_loss, err, errlen)) != 0)
			goto out;
		if (hp->train_rank > 0 && !t->o.full)
			for (size_t i = 0; i < tset_count(t->grads); i++)
				lrank_zero_tail(tset_at(t->grads, i), (uint32_t)hp->train_rank);
		double gn = 0.0;
		rc = optim_step(t->opt, lr, &gn);
		if (rc == 0 && hp->train_rank > 0 && !t->o.full) /* undo decay of frozen slots */
			for (size_t i = 0; i < tset_count(t->cur); i++)
				lrank_copy_tail(tset_at(t->cur, i),
				                tset_find(adapter, tset_at(t->cur, i)->name),
				                (uint32_t)hp->train_rank);
		if (rc != 0) {
			fl_fail(err, errlen, rc, "step %ld: gradient norm %g is not finite", s + 1,
			        gn);
			goto out;
		}
		if (s == 0)
			m.first_loss = step_loss;
		m.last_loss = step_loss;
		m.grad_norm = gn;
		m.steps = s + 1;
		tail[s % 10] = step_loss;
		m.seconds = (clk_mono_ns() - t0) * 1e-9;
		if (cb) {
			trn_progress p = {.step = s + 1,
			                  .total = hp->steps,
			                  .loss = step_loss,
			                  .lr = lr,
			                  .grad_norm = gn,
			                  .tokens = m.tokens,
			                  .seconds = m.seconds};
			if (cb(arg, &p) != 0) {
				rc = fl_fail(err, errlen, FL_EINTR, "stopped at step %ld", s + 1);
				goto out;
			}
		}
	}
	{
		long k = m.steps < 10 ? m.steps : 10;
		double sum = 0;
		for (long i = 0; i < k; i++)
			sum += tail[i];
		m.tail_loss = k ? sum / k : NAN;
		if (!k)
			m.first_loss = m.last_loss = NAN;
	}
	if (adapter)
		tset_copy(adapter, t->cur);
	if (mt)
		*mt = m;
out:
	t->in_train = 0;
	model_set_lora(t->m, NULL);
	return rc;
}

/* Mean NLL over data's windows with whatever is attached now. */
static int eval_windows(trainer *t, const ds *data, int ctx, int batch, uint64_t max_targets,
                        double *nll, uint64_t *count, trn_progress_fn cb, void *arg)
{
	const size_t nw = ds_n_windows(data, ctx);
	double sum = 0.0;
	uint64_t cnt = 0, t0 = clk_mono_ns();
	size_t w = 0;
	int rc;
	while (w < nw && (max_targets == 0 || cnt < max_targets)) {
		int B = 0, c = 0;
		while (B < batch && w < nw) {
			c += ds_window(data, ctx, w++, t->inp + (size_t)B * ctx,
			               t->tgt + (size_t)B * ctx);
			B++;
		}
		if (c == 0)
			continue;
		if ((rc = model_forward(t->m, t->inp, t->tgt, B, ctx, NULL)) != 0)
			return rc;
		const float *ls = model_losses(t->m);
		for (int i = 0; i < B * ctx; i++)
			if (t->tgt[i] >= 0)
				sum += ls[i];
		cnt += (uint64_t)c;
		if (cb) {
			trn_progress p = {.step = (long)w,
			                  .total = (long)nw,
			                  .loss = sum / cnt,
			                  .tokens = cnt,
			                  .seconds = (clk_mono_ns() - t0) * 1e-9};
			if (cb(arg, &p) != 0)
				return FL_EINTR;
		}
	}
	if (cnt == 0)
		return FL_EINVAL;
	*nll = sum / (double)cnt;
	if (count)
		*count = cnt;
	return 0;
}

int trn_eval(trainer *t, const tset *adapter, const ds *data, int ctx, int batch,
             uint64_t max_targets, double *nll, uint64_t *count, trn_progress_fn cb, void *arg)
{
	if (ctx < 2 || ctx > t->o.max_ctx || batch < 1 || batch > t->o.max_batch || !nll ||
	    t->in_train)
		return FL_EINVAL;
	if (!t->o.full && adapter && adp_check(&t->cfg, &t->o.lora, adapter, NULL, 0) != 0)
		return FL_EMISMATCH;
	int rc = attach(t, adapter);
	if (rc == 0)
		rc = eval_windows(t, data, ctx, batch, max_targets, nll, count, cb, arg);
	model_set_lora(t->m, NULL);
	return rc;
}

int trn_eval_live(trainer *t, const ds *data, int ctx, int batch, uint64_t max_targets, double *nll,
                  uint64_t *count)
{
	if (!t->in_train)
		return FL_ESTATE;
	if (ctx < 2 || ctx > t->o.max_ctx || batch < 1 || batch > t->o.max_batch || !nll)
		return FL_EINVAL;
	return eval_windows(t, data, ctx, batch, max_targets, nll, count, NULL, NULL);
}

/* ---- adapter files ------------------------------------------------------------------ */

struct trn_adapter {
	tset *ad;
	adp_binding *bd;
};

int trn_adapter_open(model *m, const char *path, float alpha, trn_adapter **out, char *desc,
                     size_t desclen, char *err, size_t errlen)
{
	const gguf *g = model_gguf(m);
	if (!g)
		return fl_fail(err, errlen, FL_EINVAL,
		               "the model has no GGUF to check the adapter against");
	lfmt_override ov = {.has_alpha = alpha > 0.0f, .alpha = alpha, .rank = 0, .rslora = -1};
	lora_spec lp;
	tset *ad = NULL;
	char why[256];
	int rc = lfmt_load(path, g, &ov, &ad, &lp, why, sizeof why);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "%s: %s", path, why);
	lora_spec s = {.alpha = lp.alpha, .rslora = lp.rslora};
	const model_config *c = model_cfg(m);
	if ((rc = adp_spec_from_tset(c, ad, &s, why, sizeof why)) != 0 ||
	    (rc = lora_spec_check(&s, why, sizeof why)) != 0) {
		tset_free(ad);
		return fl_fail(err, errlen, rc, "%s: %s", path, why);
	}
	trn_adapter *a = calloc(1, sizeof *a);
	if (!a) {
		tset_free(ad);
		return fl_fail(err, errlen, FL_ENOMEM, "out of memory");
	}
	a->ad = ad;
	if ((rc = adp_bind(c, &s, ad, 0, &a->bd)) != 0 ||
	    (rc = model_set_lora(m, adp_binding_lora(a->bd))) != 0) {
		trn_adapter_close(m, a);
		return fl_fail(err, errlen, rc, "%s: %s", path, fl_strerror(rc));
	}
	if (desc && desclen) {
		char tg[128];
		lora_targets_format(s.targets, tg, sizeof tg);
		snprintf(desc, desclen, "rank %u, alpha %g%s, %s", s.rank, (double)s.alpha,
		         s.rslora ? " (rsLoRA)" : "", tg);
	}
	*out = a;
	return 0;
}

void trn_adapter_close(model *m, trn_adapter *a)
{
	if (!a)
		return;
	if (m)
		model_set_lora(m, NULL);
	adp_binding_free(a->bd);
	tset_free(a->ad);
	free(a);
}

int trn_adapter_save_peft(const tset *ad, const lora_spec *s, const gguf *g, const char *base_id,
                          const char *dir, char *err, size_t errlen)
{
	lora_spec p = {.alpha = s->alpha, .rank = s->rank, .rslora = s->rslora};
	char why[256];
	int rc = peft_write_base(ad, g, &p, base_id, dir, why, sizeof why);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "%s: %s", dir, why);
	return 0;
}
