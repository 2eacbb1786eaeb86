/* trainer_lora — see trainer_lora.h. */
#include "trainer_lora.h"

#include "clock.h"
#include "dataset.h"
#include "err.h"
#include "log.h"
#include "model/adapter.h"
#include "model/kernels.h"
#include "model/tokenizer.h"
#include "optim.h"
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LT_DEFAULT_CTX   256
#define LT_DEFAULT_BATCH 4

typedef struct lt {
	trn_base *base;
	tok *tk;
	ds *train, *eval;
	trainer *tr;
	int tr_batch, tr_ctx; /* shape the trainer was made for */
	int eval_ctx;
	lora_spec spec;
	ntr_spec s;
	int threads;
	uint32_t max_ctx, max_batch, max_steps;
	uint64_t eval_max_tokens, seed;
} lt;

static void lt_close(void *self)
{
	lt *t = self;
	if (!t)
		return;
	trn_free(t->tr);
	ds_free(t->train);
	ds_free(t->eval);
	tok_free(t->tk);
	trn_base_free(t->base);
	free(t);
}

static int lt_open(const ntr_spec *spec, void **self, char *err, size_t errlen)
{
	if (!spec->model_path || !spec->train_path)
		return fl_fail(err, errlen, FL_ECONFIG, "%s is not set: the lora trainer needs it",
		               !spec->model_path ? "model.path" : "data.train");
	lt *t = calloc(1, sizeof *t);
	if (!t)
		return FL_ENOMEM;
	int rc;
	char e[512];
	t->spec = (lora_spec){.rank = spec->lora.rank,
	                      .alpha = spec->lora.alpha,
	                      .targets = spec->lora.targets,
	                      .rslora = spec->lora.rslora,
	                      .ffa = spec->lora.ffa};
	t->threads = spec->threads;
	t->max_ctx = spec->max_ctx;
	t->max_batch = spec->max_batch;
	t->max_steps = spec->max_steps;
	t->eval_max_tokens = spec->eval_max_tokens;
	t->seed = spec->seed;
	if ((rc = lora_spec_check(&t->spec, e, sizeof e)) != 0) {
		rc = fl_fail(err, errlen, FL_ECONFIG, "lora trainer: %s", e);
		goto fail;
	}
	kern_set_threads(t->threads);
	if ((rc = trn_base_load(spec->model_path, spec->base_quant, 0, &t->base, e, sizeof e)) !=
	    0) {
		fl_fail(err, errlen, rc, "%s", e);
		goto fail;
	}
	if ((rc = tok_from_gguf(trn_base_gguf(t->base), &t->tk, e, sizeof e)) != 0) {
		fl_fail(err, errlen, rc, "%s: tokenizer: %s", spec->model_path, e);
		goto fail;
	}
	const int has_eval = spec->eval_path && *spec->eval_path;
	ds_opts o = {.format = DS_FMT_AUTO,
	             .holdout = has_eval ? 0.0 : spec->eval_fraction,
	             .seed = spec->seed};
	if (!(o.holdout >= 0.0 && o.holdout <= 0.9)) {
		rc = fl_fail(err, errlen, FL_ECONFIG, "data.eval_fraction %g is outside [0, 0.9]",
		             spec->eval_fraction);
		goto fail;
	}
	if ((rc = ds_load(spec->train_path, t->tk, &o, &t->train, &t->eval, e, sizeof e)) != 0) {
		fl_fail(err, errlen, rc, "%s", e);
		goto fail;
	}
	if (has_eval) {
		ds_opts oe = {.format = DS_FMT_AUTO};
		if ((rc = ds_load(spec->eval_path, t->tk, &oe, &t->eval, NULL, e, sizeof e)) != 0) {
			fl_fail(err, errlen, rc, "%s", e);
			goto fail;
		}
	}
	const int mctx = model_cfg(trn_base_model(t->base))->ctx;
	t->eval_ctx = LT_DEFAULT_CTX;
	if (t->max_ctx && (uint32_t)t->eval_ctx > t->max_ctx)
		t->eval_ctx = (int)t->max_ctx;
	if (t->eval_ctx > mctx)
		t->eval_ctx = mctx;
	LOGI("lora",
	     "base %s (%s, %.1f MiB of weights), %zu training tokens (%zu targets), %zu "
	     "held-out targets",
	     spec->model_path, trn_base_type_name(t->base),
	     trn_base_weight_bytes(t->base) / 1048576.0, ds_n_tokens(t->train),
	     ds_n_targets(t->train), t->eval ? ds_n_targets(t->eval) : 0);
	*self = t;
	return 0;
fail:
	lt_close(t);
	return rc;
}

static int lt_layout(void *self, tset **out)
{
	lt *t = self;
	return adp_layout(model_cfg(trn_base_model(t->base)), &t->spec, out);
}

static uint64_t lt_sample_count(void *self)
{
	lt *t = self;
	return ds_n_targets(t->train);
}

/* A trainer for at least [batch, ctx]. */
static int ensure(lt *t, int batch, int ctx)
{
	if (t->tr && batch <= t->tr_batch && ctx <= t->tr_ctx)
		return 0;
	trn_free(t->tr);
	t->tr = NULL;
	int b = batch > t->tr_batch ? batch : t->tr_batch;
	int c = ctx > t->tr_ctx ? ctx : t->tr_ctx;
	trn_opts o = {.lora = t->spec, .max_batch = b, .max_ctx = c, .threads = t->threads};
	char e[256];
	int rc = trn_new(t->base, &o, &t->tr, e, sizeof e);
	if (rc != 0) {
		LOGE("lora", "trainer for batch %d x ctx %d: %s", b, c, e);
		return rc;
	}
	t->tr_batch = b;
	t->tr_ctx = c;
	return 0;
}

typedef struct cbx {
	ntr_progress_fn cb;
	void *arg;
} cbx;

static int relay(void *arg, const trn_progress *p)
{
	cbx *c = arg;
	return c->cb ? c->cb(c->arg, (uint32_t)p->step, (uint32_t)p->total, p->loss) : 0;
}

static int lt_train(void *self, const tset *global, const Fedlora__TrainParams *p, tset *local,
                    ntr_result *res, ntr_progress_fn cb, void *arg)
{
	lt *t = self;
	const model_config *c = model_cfg(trn_base_model(t->base));
	double t0 = clk_seconds();
	int rc = adp_check(c, &t->spec, global, NULL, 0);
	if (rc != 0 || (rc = tset_same_layout(local, global)) != 0)
		return rc ? rc : FL_EMISMATCH;
	kern_set_threads(t->threads); /* this is the training thread */
	trn_hparams h = trn_defaults();
	h.steps = p->local_steps ? p->local_steps : 1;
	if (t->max_steps && (uint32_t)h.steps > t->max_steps)
		h.steps = t->max_steps;
	h.lr = p->lr > 0 && isfinite(p->lr) ? p->lr : 1e-3f;
	h.batch = p->batch_size ? (int)p->batch_size : LT_DEFAULT_BATCH;
	if (t->max_batch && (uint32_t)h.batch > t->max_batch)
		h.batch = (int)t->max_batch;
	h.ctx = p->ctx ? (int)p->ctx : LT_DEFAULT_CTX;
	if (t->max_ctx && (uint32_t)h.ctx > t->max_ctx)
		h.ctx = (int)t->max_ctx;
	if (h.ctx > c->ctx)
		h.ctx = c->ctx;
	if (h.ctx < 2)
		h.ctx = 2;
	h.weight_decay = isfinite(p->weight_decay) && p->weight_decay > 0 ? p->weight_decay : 0;
	h.max_grad_norm = isfinite(p->max_grad_norm) && p->max_grad_norm > 0 ? p->max_grad_norm : 0;
	h.prox_mu = isfinite(p->fedprox_mu) && p->fedprox_mu > 0 ? p->fedprox_mu : 0;
	h.seed = p->seed ^ (t->seed * 0x94d049bb133111ebULL);
	if (p->train_rank && p->train_rank < t->spec.rank)
		h.train_rank = (int)p->train_rank;
	if ((rc = ensure(t, h.batch, h.ctx)) != 0)
		return rc;
	if ((rc = tset_copy(local, global)) != 0)
		return rc;
	trn_metrics m;
	cbx x = {cb, arg};
	char e[256];
	rc = trn_train(t->tr, local, h.prox_mu > 0 ? global : NULL, t->train, &h, &m, relay, &x, e,
	               sizeof e);
	if (rc != 0) {
		if (rc != FL_EINTR)
			LOGE("lora", "local training: %s", e);
		return rc;
	}
	t->eval_ctx = h.ctx;
	ntr_result r = {.first_loss = m.first_loss,
	                .train_loss = m.tail_loss,
	                .steps = (uint64_t)m.steps,
	                .tokens = m.tokens,
	                .samples = ds_n_targets(t->train),
	                .seconds = clk_seconds() - t0};
	*res = r;
	return 0;
}

static int lt_eval(void *self, const tset *adapter, double *loss, ntr_progress_fn cb, void *arg)
{
	lt *t = self;
	if (!t->eval)
		return FL_ESTATE;
	int rc = adp_check(model_cfg(trn_base_model(t->base)), &t->spec, adapter, NULL, 0);
	if (rc != 0)
		return rc;
	kern_set_threads(t->threads);
	int batch = t->tr_batch ? t->tr_batch : LT_DEFAULT_BATCH;
	if (t->max_batch && (uint32_t)batch > t->max_batch)
		batch = (int)t->max_batch;
	if ((rc = ensure(t, batch, t->eval_ctx)) != 0)
		return rc;
	cbx x = {cb, arg};
	uint64_t n = 0;
	return trn_eval(t->tr, adapter, t->eval, t->eval_ctx, batch, t->eval_max_tokens, loss, &n,
	                relay, &x);
}

const ntr_ops ntr_lora_ops = {
    .name = "lora",
    .open = lt_open,
    .close = lt_close,
    .layout = lt_layout,
    .sample_count = lt_sample_count,
    .train = lt_train,
    .eval = lt_eval,
};
