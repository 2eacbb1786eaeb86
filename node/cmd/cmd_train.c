/* cmd_train — `fedlora-node train`: LoRA / QLoRA fine-tuning of a GGUF model
 * on a local data file, or full training of every weight (--full), with a
 * progress bar on a terminal and plain log lines otherwise. Writes the
 * adapter as PEFT (adapter_model.safetensors + adapter_config.json) or,
 * with --full, DIR/model.gguf. See docs/TRAINING.md. */
#include "cmd_train.h"

#include "cli.h"
#include "clock.h"
#include "cmd_util.h"
#include "err.h"
#include "fileio.h"
#include "gtype.h"
#include "lora_fmt.h"
#include "model/adapter.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "optim.h"
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define CMD "train"

static void usage(FILE *f)
{
	fprintf(
	    f, "Usage: fedlora-node train --model M.gguf --data FILE --out DIR [options]\n"
	       "\n"
	       "Fine-tunes a LoRA adapter (default) or every weight (--full) of a GGUF model on\n"
	       "a local text or JSONL file, on the CPU. Writes DIR/adapter_model.safetensors and\n"
	       "DIR/adapter_config.json (PEFT), or with --full DIR/model.gguf (F32).\n"
	       "\n"
	       "Data (docs/TRAINING.md): plain text; JSONL with {\"text\": ...}; JSONL with\n"
	       "{\"instruction\", \"input\", \"output\"} (loss on the response only).\n"
	       "\n"
	       "  --model PATH        base GGUF model (llama, qwen2 or qwen3)\n"
	       "  --data PATH         training data\n"
	       "  --out DIR           output directory (created)\n"
	       "  --format F          auto|text|jsonl (default auto: .jsonl/.json are JSONL)\n"
	       "  --steps N           optimiser steps\n"
	       "  --epochs E          passes over the data instead of --steps (default 1)\n"
	       "  --lr X              peak learning rate (default 1e-3)\n"
	       "  --schedule S        constant|cosine (default cosine)\n"
	       "  --warmup N          linear warmup steps (default steps/20)\n"
	       "  --min-lr-ratio X    cosine floor as a fraction of --lr (default 0.1)\n"
	       "  --batch B           sequences per micro-batch (default 4)\n"
	       "  --accum K           micro-batches per step (default 1)\n"
	       "  --ctx N             tokens per sequence (default min(256, context_length))\n"
	       "  --weight-decay X    AdamW decoupled weight decay (default 0)\n"
	       "  --clip X            global gradient-norm clip, 0 = off (default 1)\n"
	       "  --rank R            LoRA rank (default 8)\n"
	       "  --alpha A           LoRA alpha (default 2 * rank)\n"
	       "  --targets LIST      attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down\n"
	       "                      or all (default all)\n"
	       "  --rslora            scale alpha/sqrt(r) instead of alpha/r\n"
	       "  --ffa               FFA-LoRA: lora_a frozen, only lora_b trains\n"
	       "  --dump-grads FILE   write the first step's adapter gradients (before\n"
	       "                      clipping) to FILE (safetensors, canonical names)\n"
	       "  --base-model-id ID  base_model_name_or_path of the PEFT output (default:\n"
	       "                      the GGUF's Hugging Face id or general.name)\n"
	       "  --init PATH         start from this adapter (PEFT dir, GGUF LoRA, safetensors);\n"
	       "                      its rank, targets, alpha and rsLoRA unless given\n"
	       "  --full              train every weight (F32) and write DIR/model.gguf\n"
	       "  --checkpoint        activation checkpointing: keep one activation per layer\n"
	       "                      and recompute the rest in the backward pass (about 1/3\n"
	       "                      more compute, a fraction of the activation memory)\n"
	       "  --base-quant Q      none|q8_0|q4_0: quantize the base at load (QLoRA)\n"
	       "  --holdout F         fraction of the data held out for evaluation\n"
	       "                      (default 0, or 0.05 with --eval-every)\n"
	       "  --eval-data PATH    held-out data file instead of --holdout\n"
	       "  --eval-every N      held-out NLL every N steps (default 0: at the end only)\n"
	       "  --eval-tokens N     at most N held-out tokens per evaluation (default 65536)\n"
	       "  --seed S            data order, held-out choice, adapter init (default 1)\n"
	       "  --threads N         threads (default: OpenMP default)\n"
	       "  --log-every N       log line every N steps when not on a terminal\n"
	       "                      (default: about 20 lines per run)\n"
	       "  --quiet             no progress output\n");
}

typedef struct opts {
	const char *model, *data, *out, *init, *eval_data, *base_quant, *targets, *base_id;
	const char *dump_grads;
	int format, steps, batch, accum, ctx, rank, warmup, eval_every, threads, log_every;
	int have_steps, have_epochs, have_alpha, have_warmup, have_holdout, rslora, ffa, full;
	int checkpoint;
	int have_rank;
	int sched, quiet;
	float epochs, lr, min_lr_ratio, wd, clip, alpha, holdout;
	uint64_t seed, eval_tokens;
} opts;

static int parse(int argc, char **argv, void *out)
{
	opts *o = out;
	const char *v;
	int r, rc = 0;
	memset(o, 0, sizeof *o);
	o->lr = 1e-3f;
	o->sched = OPTIM_COSINE;
	o->min_lr_ratio = 0.1f;
	o->batch = 4;
	o->accum = 1;
	o->rank = 0; /* 0: not given (8, or the --init adapter's) */
	o->clip = 1.0f;
	o->seed = 1;
	o->eval_tokens = 65536;
	o->epochs = 1;
	for (int i = 1; i < argc && rc == 0; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--rslora") == 0)
			o->rslora = 1;
		else if (strcmp(a, "--ffa") == 0)
			o->ffa = 1;
		else if (strcmp(a, "--full") == 0)
			o->full = 1;
		else if (strcmp(a, "--checkpoint") == 0)
			o->checkpoint = 1;
		else if (strcmp(a, "--quiet") == 0)
			o->quiet = 1;
#define STR(name, field)                                                                           \
	else if ((r = cmdu_opt(CMD, argc, argv, &i, name, &v)) != 0) rc =                          \
	    r < 0 ? CLI_USAGE : (o->field = v, 0)
#define INT(name, field, lo, hi)                                                                   \
	else if ((r = cmdu_opt(CMD, argc, argv, &i, name, &v)) != 0) rc =                          \
	    r < 0 ? CLI_USAGE : cmdu_int(CMD, name, v, lo, hi, &o->field)
#define FLT(name, field, lo, hi)                                                                   \
	else if ((r = cmdu_opt(CMD, argc, argv, &i, name, &v)) != 0) rc =                          \
	    r < 0 ? CLI_USAGE : cmdu_float(CMD, name, v, lo, hi, &o->field)
		STR("--model", model);
		STR("--data", data);
		STR("--out", out);
		STR("--init", init);
		STR("--base-model-id", base_id);
		STR("--dump-grads", dump_grads);
		STR("--eval-data", eval_data);
		STR("--base-quant", base_quant);
		STR("--targets", targets);
		INT("--batch", batch, 1, 65536);
		INT("--accum", accum, 1, 65536);
		INT("--ctx", ctx, 2, MODEL_MAX_CTX);
		INT("--rank", rank, 1, LORA_MAX_RANK);
		INT("--eval-every", eval_every, 0, 2000000000);
		INT("--threads", threads, 0, 1024);
		INT("--log-every", log_every, 1, 2000000000);
		FLT("--lr", lr, 0.0, 10.0);
		FLT("--min-lr-ratio", min_lr_ratio, 0.0, 1.0);
		FLT("--weight-decay", wd, 0.0, 10.0);
		FLT("--clip", clip, 0.0, 1e9);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--steps", &v)) != 0)
		{
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--steps", v, 1, 2000000000, &o->steps);
			o->have_steps = 1;
		}
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--epochs", &v)) != 0)
		{
			rc = r < 0 ? CLI_USAGE
			           : cmdu_float(CMD, "--epochs", v, 1e-6, 1e6, &o->epochs);
			o->have_epochs = 1;
		}
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--warmup", &v)) != 0)
		{
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--warmup", v, 0, 2000000000, &o->warmup);
			o->have_warmup = 1;
		}
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--alpha", &v)) != 0)
		{
			rc =
			    r < 0 ? CLI_USAGE : cmdu_float(CMD, "--alpha", v, 1e-6, 1e6, &o->alpha);
			o->have_alpha = 1;
		}
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--holdout", &v)) != 0)
		{
			rc = r < 0 ? CLI_USAGE
			           : cmdu_float(CMD, "--holdout", v, 0.0, 0.9, &o->holdout);
			o->have_holdout = 1;
		}
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--seed", &v)) != 0) rc =
		    r < 0 ? CLI_USAGE : cmdu_u64(CMD, "--seed", v, &o->seed);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--eval-tokens", &v)) != 0) rc =
		    r < 0 ? CLI_USAGE : cmdu_u64(CMD, "--eval-tokens", v, &o->eval_tokens);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--schedule", &v)) != 0) rc =
		    r < 0 ? CLI_USAGE
		    : optim_sched_parse(v, &o->sched) == 0
		        ? 0
		        : cmdu_usage(CMD, "--schedule: expected constant or cosine, got '%s'", v);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--format", &v)) != 0)
		{
			if (r < 0)
				rc = CLI_USAGE;
			else if (strcmp(v, "auto") == 0)
				o->format = DS_FMT_AUTO;
			else if (strcmp(v, "text") == 0)
				o->format = DS_FMT_TEXT;
			else if (strcmp(v, "jsonl") == 0)
				o->format = DS_FMT_JSONL;
			else
				rc = cmdu_usage(
				    CMD, "--format: expected auto, text or jsonl, got '%s'", v);
		}
		else rc = cmdu_usage(CMD, "unknown argument '%s'", a);
#undef STR
#undef INT
#undef FLT
	}
	if (rc != 0)
		return rc;
	if (!o->model || !o->data || !o->out)
		return cmdu_usage(CMD, "--model, --data and --out are required");
	if (o->have_steps && o->have_epochs)
		return cmdu_usage(CMD, "give --steps or --epochs, not both");
	if (o->full && (o->base_quant && strcmp(o->base_quant, "none") != 0))
		return cmdu_usage(CMD, "--full trains f32 weights; --base-quant is for LoRA");
	if (o->full &&
	    (o->init || o->ffa || o->rslora || o->targets || o->base_id || o->dump_grads))
		return cmdu_usage(CMD, "--full takes no LoRA option (--init --ffa --rslora "
		                       "--targets --base-model-id --dump-grads)");
	if (o->eval_data && o->have_holdout)
		return cmdu_usage(CMD, "give --eval-data or --holdout, not both");
	if (!o->have_holdout && o->eval_every > 0 && !o->eval_data)
		o->holdout = 0.05f;
	o->have_rank = o->rank != 0;
	if (!o->have_rank)
		o->rank = 8;
	if (!o->have_alpha)
		o->alpha = 2.0f * (float)o->rank;
	return 0;
}

/* ---- progress ------------------------------------------------------------------------- */

typedef struct prog {
	const opts *o;
	trainer *tr;
	const ds *eval;
	int ctx, eval_batch;
	int tty;
	long log_every;
	uint64_t last_draw;
	double last_eval;
} prog;

static void fmt_time(char *out, size_t n, double s)
{
	if (!(s >= 0) || s > 1e7) {
		snprintf(out, n, "--:--");
		return;
	}
	long t = (long)(s + 0.5);
	if (t >= 3600)
		snprintf(out, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
	else
		snprintf(out, n, "%ld:%02ld", t / 60, t % 60);
}

static int on_step(void *arg, const trn_progress *p)
{
	prog *g = arg;
	const double tps = p->seconds > 0 ? p->tokens / p->seconds : 0;
	const double eta = p->step > 0 ? p->seconds / p->step * (p->total - p->step) : NAN;
	char e[32];
	fmt_time(e, sizeof e, eta);
	if (g->o->eval_every > 0 && g->eval && p->step % g->o->eval_every == 0 &&
	    p->step < p->total) {
		double nll;
		uint64_t n;
		if (trn_eval_live(g->tr, g->eval, g->ctx, g->eval_batch, g->o->eval_tokens, &nll,
		                  &n) == 0) {
			g->last_eval = nll;
			if (!g->o->quiet) {
				if (g->tty)
					fprintf(stderr, "\r\033[K");
				printf("eval    step %ld: held-out nll %.4f (ppl %.2f) over %llu "
				       "tokens\n",
				       p->step, nll, exp(nll), (unsigned long long)n);
				fflush(stdout);
			}
		}
	}
	if (g->o->quiet)
		return 0;
	if (g->tty) {
		uint64_t now = clk_mono_ms();
		if (now - g->last_draw < 100 && p->step < p->total)
			return 0;
		g->last_draw = now;
		const int W = 24;
		int fill = p->total > 0 ? (int)((double)p->step / p->total * W) : W;
		char bar[32];
		for (int i = 0; i < W; i++)
			bar[i] = i < fill ? '=' : i == fill ? '>' : ' ';
		bar[W] = 0;
		fprintf(stderr,
		        "\r[%s] %3d%%  step %ld/%ld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s\033[K",
		        bar, (int)(100.0 * p->step / (p->total ? p->total : 1)), p->step, p->total,
		        p->loss, p->lr, tps, e);
		if (p->step == p->total)
			fprintf(stderr, "\n");
		fflush(stderr);
	} else if (p->step % g->log_every == 0 || p->step == p->total || p->step == 1) {
		printf("step    %ld/%ld  loss %.4f  lr %.3e  grad-norm %.3f  %.0f tok/s  elapsed "
		       "%.1f s  eta %s\n",
		       p->step, p->total, p->loss, p->lr, p->grad_norm, tps, p->seconds, e);
		fflush(stdout);
	}
	return 0;
}

static double peak_rss_mib(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return NAN;
	return ru.ru_maxrss / 1024.0; /* kilobytes on Linux */
}

int cmd_train(int argc, char **argv)
{
	opts o = {0}; /* parse fills it */
	int rc = cmdu_begin(argc, argv, usage, parse, &o, &o.threads);
	if (rc >= 0)
		return rc;

	trn_base *base = NULL;
	tok *tk = NULL;
	ds *tr_ds = NULL, *ev_ds = NULL;
	trainer *tr = NULL;
	tset *ad = NULL;
	int ret = CLI_FAIL;
	char err[768];
	uint64_t t_load = clk_mono_ns();

	if ((rc = trn_base_load(o.model, o.base_quant, o.full, &base, err, sizeof err)) != 0) {
		fprintf(stderr, "fedlora-node train: %s\n", err);
		goto out;
	}
	model *m = trn_base_model(base);
	const model_config *c = model_cfg(m);
	if (o.ctx == 0)
		o.ctx = c->ctx < 256 ? c->ctx : 256;
	if (o.ctx > c->ctx) {
		ret = cmdu_usage(CMD, "--ctx %d exceeds the model's context_length %d", o.ctx,
		                 c->ctx);
		goto out;
	}
	lora_spec spec = {.rank = (uint32_t)o.rank,
	                  .alpha = o.alpha,
	                  .targets = LORA_ALL_TARGETS,
	                  .rslora = o.rslora,
	                  .ffa = o.ffa};
	if (o.targets && lora_targets_parse(o.targets, &spec.targets, err, sizeof err) != 0) {
		ret = cmdu_usage(CMD, "--targets: %s", err);
		goto out;
	}
	if ((rc = cmdu_open_tok(CMD, o.model, trn_base_gguf(base), &tk)) != 0)
		goto out;
	ds_opts dopt = {.format = o.format, .holdout = o.eval_data ? 0 : o.holdout, .seed = o.seed};
	if ((rc = ds_load(o.data, tk, &dopt, &tr_ds, dopt.holdout > 0 ? &ev_ds : NULL, err,
	                  sizeof err)) != 0) {
		fprintf(stderr, "fedlora-node train: %s\n", err);
		goto out;
	}
	if (o.eval_data) {
		ds_opts eo = {.format = o.format};
		if ((rc = ds_load(o.eval_data, tk, &eo, &ev_ds, NULL, err, sizeof err)) != 0) {
			fprintf(stderr, "fedlora-node train: %s\n", err);
			goto out;
		}
	}
	long steps = o.steps;
	if (!o.have_steps) {
		steps = trn_steps_for_epochs(tr_ds, o.ctx, o.batch, o.accum, o.epochs);
		if (steps <= 0) {
			fprintf(stderr,
			        "fedlora-node train: %s: no window of %d tokens holds a target\n",
			        o.data, o.ctx);
			goto out;
		}
	}
	if (!o.full && o.init) {
		/* rank, targets, alpha and rsLoRA come from the file unless given
		 * here; what is given must match it */
		lfmt_override ov = {.has_alpha = o.have_alpha,
		                    .alpha = o.alpha,
		                    .rank = o.have_rank ? spec.rank : 0,
		                    .rslora = o.rslora ? 1 : -1};
		lora_spec lp;
		char why[256];
		if ((rc = lfmt_load(o.init, trn_base_gguf(base), &ov, &ad, &lp, why, sizeof why)) !=
		    0) {
			fprintf(stderr, "fedlora-node train: --init %s: %s\n", o.init, why);
			goto out;
		}
		if (!o.targets) {
			spec.targets = 0;
			for (size_t i = 0; i < tset_count(ad); i++) {
				uint32_t l;
				int tg, is_b;
				if (lora_parse_name(tset_at(ad, i)->name, &l, &tg, &is_b) == 0)
					spec.targets |= 1u << tg;
			}
		}
		spec.rank = lp.rank;
		if ((rc = adp_check(c, &spec, ad, err, sizeof err)) != 0) {
			fprintf(stderr,
			        "fedlora-node train: --init %s does not match --targets: %s\n",
			        o.init, err);
			goto out;
		}
		spec.alpha = lp.alpha;
		spec.rslora = lp.rslora;
		o.rank = (int)lp.rank;
		o.alpha = lp.alpha;
		o.rslora = lp.rslora;
	}
	trn_opts to = {.full = o.full,
	               .checkpoint = o.checkpoint,
	               .lora = spec,
	               .max_batch = o.batch,
	               .max_ctx = o.ctx,
	               .threads = o.threads};
	if ((rc = trn_new(base, &to, &tr, err, sizeof err)) != 0) {
		fprintf(stderr, "fedlora-node train: %s\n", err);
		goto out;
	}
	if (!o.full && !o.init && (rc = trn_adapter_init(tr, o.seed, &ad)) != 0) {
		fprintf(stderr, "fedlora-node train: adapter init: %s\n", fl_strerror(rc));
		goto out;
	}
	if ((rc = file_mkdirs_public(o.out)) != 0) {
		fprintf(stderr, "fedlora-node train: --out %s: %s\n", o.out, fl_strerror(rc));
		goto out;
	}

	const double load_s = (clk_mono_ns() - t_load) * 1e-9;
	char tg[128];
	lora_targets_format(spec.targets, tg, sizeof tg);
	printf("model   %s: %s, %.1fM params, matrices %s (%.1f MiB), context_length %d\n", o.model,
	       model_arch_name(c->arch), model_param_count(m) / 1e6, trn_base_type_name(base),
	       trn_base_weight_bytes(base) / 1048576.0, c->ctx);
	printf("data    %s: %zu records, %zu tokens, %zu targets, %zu windows of %d", o.data,
	       ds_n_records(tr_ds), ds_n_tokens(tr_ds), ds_n_targets(tr_ds),
	       ds_n_windows(tr_ds, o.ctx), o.ctx);
	if (ev_ds)
		printf("; held out %zu targets", ds_n_targets(ev_ds));
	printf("\n");
	if (o.full)
		printf("train   full (every weight, f32)");
	else
		printf("train   LoRA rank %d alpha %g%s%s on %s", o.rank, (double)o.alpha,
		       o.rslora ? " rsLoRA" : "", o.ffa ? " FFA" : "", tg);
	const long warmup = o.have_warmup ? o.warmup : steps / 20;
	printf(": %ld steps x %d x %d tokens%s, lr %.2e %s (warmup %ld), %.1f MiB of "
	       "buffers, loaded in %.2f s\n",
	       steps, o.batch, o.ctx, o.accum > 1 ? " x accum" : "", (double)o.lr,
	       o.sched == OPTIM_COSINE ? "cosine" : "constant", warmup, trn_bytes(tr) / 1048576.0,
	       load_s);
	fflush(stdout);

	trn_hparams h = trn_defaults();
	h.steps = steps;
	h.lr = o.lr;
	h.sched = o.sched;
	h.warmup = warmup;
	h.min_lr_ratio = o.min_lr_ratio;
	h.batch = o.batch;
	h.accum = o.accum;
	h.ctx = o.ctx;
	h.weight_decay = o.wd;
	h.max_grad_norm = o.clip;
	h.seed = o.seed;
	h.dump_grads = o.dump_grads;
	prog pg = {.o = &o,
	           .tr = tr,
	           .eval = ev_ds,
	           .ctx = o.ctx,
	           .eval_batch = o.batch,
	           .tty = isatty(STDERR_FILENO),
	           .log_every = o.log_every ? o.log_every : (steps + 19) / 20,
	           .last_eval = NAN};
	trn_metrics mt;
	if ((rc = trn_train(tr, ad, NULL, tr_ds, &h, &mt, on_step, &pg, err, sizeof err)) != 0) {
		if (pg.tty)
			fprintf(stderr, "\n");
		fprintf(stderr, "fedlora-node train: %s\n", err);
		goto out;
	}
	printf("done    %ld steps in %.1f s (%.0f tokens/s): loss %.4f -> %.4f (mean of the last "
	       "%ld: %.4f)\n",
	       mt.steps, mt.seconds, mt.tokens / mt.seconds, mt.first_loss, mt.last_loss,
	       mt.steps < 10 ? mt.steps : 10, mt.tail_loss);
	if (ev_ds) {
		double nll;
		uint64_t n;
		if ((rc = trn_eval(tr, ad, ev_ds, o.ctx, o.batch, o.eval_tokens, &nll, &n, NULL,
		                   NULL)) == 0)
			printf("eval    held-out nll %.4f (ppl %.2f) over %llu tokens\n", nll,
			       exp(nll), (unsigned long long)n);
		else
			fprintf(stderr, "fedlora-node train: held-out evaluation: %s\n",
			        fl_strerror(rc));
	}
	char path[4096];
	if (o.full) {
		snprintf(path, sizeof path, "%s/model.gguf", o.out);
		if ((rc = trn_base_save_gguf(base, path, err, sizeof err)) != 0) {
			fprintf(stderr, "fedlora-node train: %s\n", err);
			goto out;
		}
		printf("wrote   %s\n", path);
	} else {
		if ((rc = trn_adapter_save_peft(ad, &spec, trn_base_gguf(base), o.base_id, o.out,
		                                err, sizeof err)) != 0) {
			fprintf(stderr, "fedlora-node train: %s\n", err);
			goto out;
		}
		printf("wrote   %s/adapter_model.safetensors, %s/adapter_config.json (PEFT)\n",
		       o.out, o.out);
	}
	printf("memory  peak RSS %.1f MiB\n", peak_rss_mib());
	ret = CLI_OK;
out:
	tset_free(ad);
	trn_free(tr);
	ds_free(tr_ds);
	ds_free(ev_ds);
	tok_free(tk);
	trn_base_free(base);
	return ret;
}
