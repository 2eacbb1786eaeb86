/* cmd_eval — `fedlora-node eval`: mean negative log-likelihood per token and
 * perplexity of a GGUF model over a text file.
 *
 * The text is tokenized with the model's own tokenizer (BOS as its metadata
 * says) and scored with strided windows: window w's inputs are the tokens
 * [w*stride, w*stride + ctx) and its targets the tokens one further,
 * [w*stride + 1, w*stride + ctx + 1); it scores only the targets no earlier
 * window scored, so every token after the first is predicted exactly once,
 * with at least ctx - stride tokens of context outside the first window.
 *
 * --llama-compatible scores as llama.cpp's llama-perplexity does by default:
 * chunks [i*ctx, (i+1)*ctx) that do not overlap, the chunk's first input
 * replaced by BOS when the tokenizer adds BOS, and only the second half
 * scored: the targets at chunk offsets ctx/2 + 1 .. ctx - 1 (ctx - 1 - ctx/2
 * per chunk); a tail shorter than ctx is not scored. */
#include "cmd_eval.h"

#include "cli.h"
#include "clock.h"
#include "cmd_util.h"
#include "dataset.h"
#include "err.h"
#include "fileio.h"
#include "gtype.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD           "eval"
#define EVAL_MAX_FILE ((size_t)1 << 30)

static void usage(FILE *f)
{
	fprintf(f,
	        "Usage: fedlora-node eval --model M.gguf --data FILE [options]\n"
	        "\n"
	        "Mean negative log-likelihood per token and perplexity over a text file,\n"
	        "tokenized with the model's tokenizer, in strided windows.\n"
	        "\n"
	        "  --model PATH      GGUF model (llama or qwen2)\n"
	        "  --data PATH       text file (up to 1 GiB)\n"
	        "  --ctx N           window length in tokens (default min(512, context_length))\n"
	        "  --stride S        window step, 1..ctx (default ctx/2); each window scores\n"
	        "                    only tokens not scored before\n"
	        "  --max-tokens N    use only the first N tokens of the file\n"
	        "  --batch B         windows per forward pass (default 1)\n"
	        "  --threads N       threads (default: OpenMP default)\n"
	        "  --adapter PATH    LoRA adapter: PEFT directory, GGUF LoRA or safetensors\n"
	        "  --alpha A         the adapter's alpha when its file does not say\n"
	        "  --per-token FILE  write every scored token (TSV: position, token id, nll,\n"
	        "                    the token's text escaped) to FILE\n"
	        "  --llama-compatible  score as llama-perplexity -c CTX does: chunks of ctx\n"
	        "                    tokens without overlap, BOS first, the second half scored\n"
	        "                    (--stride does not apply)\n");
}

typedef struct opts {
	const char *adapter, *per_token;
	int llama;
	float alpha;
	const char *model, *data;
	int ctx, stride, max_tokens, batch, threads;
} opts;

static int parse(int argc, char **argv, void *out)
{
	opts *o = out;
	const char *v;
	int r, rc = 0;
	memset(o, 0, sizeof *o);
	o->batch = 1;
	for (int i = 1; i < argc && rc == 0; i++) {
		if ((r = cmdu_opt(CMD, argc, argv, &i, "--model", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->model = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--data", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->data = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--ctx", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--ctx", v, 2, MODEL_MAX_CTX, &o->ctx);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--stride", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--stride", v, 1, MODEL_MAX_CTX, &o->stride);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--max-tokens", &v)) != 0)
			rc = r < 0
			         ? CLI_USAGE
			         : cmdu_int(CMD, "--max-tokens", v, 2, 2000000000, &o->max_tokens);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--batch", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : cmdu_int(CMD, "--batch", v, 1, 1024, &o->batch);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--adapter", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->adapter = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--per-token", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->per_token = v, 0);
		else if (strcmp(argv[i], "--llama-compatible") == 0)
			o->llama = 1;
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--alpha", &v)) != 0)
			rc =
			    r < 0 ? CLI_USAGE : cmdu_float(CMD, "--alpha", v, 1e-6, 1e6, &o->alpha);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--threads", &v)) != 0)
			rc =
			    r < 0 ? CLI_USAGE : cmdu_int(CMD, "--threads", v, 0, 1024, &o->threads);
		else
			rc = cmdu_usage(CMD, "unknown argument '%s'", argv[i]);
	}
	if (rc != 0)
		return rc;
	if (!o->model || !o->data)
		return cmdu_usage(CMD, "--model and --data are required");
	if (o->llama && o->stride)
		return cmdu_usage(CMD, "--llama-compatible scores chunks without overlap: drop "
		                       "--stride");
	return 0;
}

/* One batch of windows being filled. */
typedef struct batch {
	int32_t *tok, *tgt; /* [B, T] */
	int64_t *pos;       /* [B, T]: the target's position in the text */
	int n, T;
	FILE *pt;      /* --per-token output or NULL */
	const tok *tk; /* for the token text in pt */
} batch;

/* One --per-token line; the piece's bytes escaped so that a line is a line. */
static void per_token_line(FILE *f, const tok *tk, int64_t pos, int32_t id, float nll)
{
	const char *p = NULL;
	size_t n = 0;
	fprintf(f, "%lld\t%d\t%.6f\t", (long long)pos, (int)id, (double)nll);
	if (tok_piece(tk, id, TOK_DECODE_SPECIAL, &p, &n) != 0)
		n = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\\')
			fputs("\\\\", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c < 0x20 || c == 0x7f)
			fprintf(f, "\\x%02x", c);
		else
			fputc(c, f);
	}
	fputc('\n', f);
}

static int flush(model *m, batch *b, double *sum, long long *count)
{
	if (b->n == 0)
		return 0;
	int rc = model_forward(m, b->tok, b->tgt, b->n, b->T, NULL);
	if (rc != 0)
		return rc;
	const float *ls = model_losses(m);
	for (int i = 0; i < b->n * b->T; i++)
		if (b->tgt[i] >= 0) {
			*sum += ls[i];
			(*count)++;
			if (b->pt)
				per_token_line(b->pt, b->tk, b->pos[i], b->tgt[i], ls[i]);
		}
	b->n = 0;
	return 0;
}

int cmd_eval(int argc, char **argv)
{
	opts o = {0}; /* parse fills it */
	int rc = cmdu_begin(argc, argv, usage, parse, &o, &o.threads);
	if (rc >= 0)
		return rc;

	model *m = NULL;
	trn_adapter *adapter = NULL;
	tok *tk = NULL;
	uint8_t *text = NULL;
	int32_t *ids = NULL;
	batch bt = {0};
	FILE *pt = NULL;
	int ret = CLI_FAIL;
	char err[512];
	size_t len = 0, nids = 0;

	if ((rc = cmdu_open_model(CMD, o.model, o.adapter, o.alpha, &m, &adapter)) != 0)
		goto out;
	const model_config *c = model_cfg(m);
	if (o.ctx == 0)
		o.ctx = c->ctx < 512 ? c->ctx : 512;
	if (o.ctx > c->ctx) {
		ret = cmdu_usage(CMD, "--ctx %d exceeds the model's context_length %d", o.ctx,
		                 c->ctx);
		goto out;
	}
	if (o.llama)
		o.stride = o.ctx;
	if (o.stride == 0)
		o.stride = o.ctx / 2 > 0 ? o.ctx / 2 : 1;
	if (o.stride > o.ctx) {
		ret =
		    cmdu_usage(CMD, "--stride %d is larger than --ctx %d (tokens would be skipped)",
		               o.stride, o.ctx);
		goto out;
	}
	if ((rc = cmdu_open_tok(CMD, o.model, model_gguf(m), &tk)) != 0)
		goto out;
	if ((rc = file_read_all(o.data, EVAL_MAX_FILE, &text, &len)) != 0) {
		fprintf(stderr, "fedlora-node eval: --data %s: %s\n", o.data, file_why(o.data, rc));
		goto out;
	}
	/* the checks training data gets: not empty, UTF-8 (no binary bytes) */
	if ((rc = ds_text_check(o.data, text, len, err, sizeof err)) != 0) {
		fprintf(stderr, "fedlora-node eval: --data %s\n", err);
		goto out;
	}
	size_t cap = tok_encode_bound(len);
	if (cap == SIZE_MAX || !(ids = malloc(sizeof(int32_t) * cap))) {
		fprintf(stderr, "fedlora-node eval: out of memory tokenizing %zu bytes\n", len);
		goto out;
	}
	uint64_t t_tok = clk_mono_ns();
	if ((rc = tok_encode(tk, text, len, TOK_ADD_SPECIAL, ids, cap, &nids)) != 0) {
		fprintf(stderr, "fedlora-node eval: tokenizing %s: %s\n", o.data, fl_strerror(rc));
		goto out;
	}
	double tok_s = (clk_mono_ns() - t_tok) * 1e-9;
	size_t all = nids;
	if (o.max_tokens && nids > (size_t)o.max_tokens)
		nids = (size_t)o.max_tokens;
	if (nids < 2) {
		fprintf(stderr, "fedlora-node eval: %s has %zu token(s); at least 2 are needed\n",
		        o.data, nids);
		goto out;
	}
	if (o.llama && nids < (size_t)o.ctx) {
		fprintf(stderr,
		        "fedlora-node eval: %s has %zu tokens, fewer than one chunk of --ctx %d "
		        "(--llama-compatible)\n",
		        o.data, nids, o.ctx);
		goto out;
	}
	if (o.per_token && !(pt = fopen(o.per_token, "w"))) {
		fprintf(stderr, "fedlora-node eval: --per-token %s: %s\n", o.per_token,
		        strerror(errno));
		goto out;
	}
	if (pt)
		fprintf(pt, "# position\ttoken\tnll\ttext (model %s, data %s, ctx %d, %s)\n",
		        o.model, o.data, o.ctx, o.llama ? "llama-compatible" : "strided");
	bt.pt = pt;
	bt.tk = tk;
	if ((rc = model_prepare(m, o.batch, o.ctx, 0)) != 0) {
		fprintf(stderr, "fedlora-node eval: activations for %d x %d tokens: %s\n", o.batch,
		        o.ctx, fl_strerror(rc));
		goto out;
	}
	bt.tok = malloc(sizeof(int32_t) * (size_t)o.batch * o.ctx);
	bt.tgt = malloc(sizeof(int32_t) * (size_t)o.batch * o.ctx);
	bt.pos = malloc(sizeof(int64_t) * (size_t)o.batch * o.ctx);
	if (!bt.tok || !bt.tgt || !bt.pos) {
		fprintf(stderr, "fedlora-node eval: out of memory\n");
		goto out;
	}
	const uint32_t wtype = model_wts(m)->layers[0].wq.type;
	printf("model   %s: %s, %.1fM params, matrices %s, context_length %d\n", o.model,
	       model_arch_name(c->arch), model_param_count(m) / 1e6, gtype_name(wtype), c->ctx);
	printf("data    %s: %zu bytes -> %zu tokens (%s, %.2f s)", o.data, len, all,
	       tok_adds_bos(tk) ? "BOS added" : "no BOS", tok_s);
	if (nids < all)
		printf(", first %zu used (--max-tokens)", nids);
	printf("\n");

	/* strided windows over ids[0..nids), or llama-perplexity's chunks */
	double sum = 0.0;
	long long count = 0, windows = 0, fed = 0;
	size_t begin = 0, scored = 0;
	const size_t half = (size_t)o.ctx / 2;
	uint64_t t0 = clk_mono_ns();
	for (;;) {
		size_t T = nids - 1 - begin < (size_t)o.ctx ? nids - 1 - begin : (size_t)o.ctx;
		if (o.llama)
			T = (size_t)o.ctx; /* whole chunks only (checked below) */
		if (bt.n > 0 && (int)T != bt.T && (rc = flush(m, &bt, &sum, &count)) != 0)
			break;
		bt.T = (int)T;
		int32_t *tk_row = bt.tok + (size_t)bt.n * T, *tg_row = bt.tgt + (size_t)bt.n * T;
		int64_t *ps_row = bt.pos + (size_t)bt.n * T;
		for (size_t j = 0; j < T; j++) {
			tk_row[j] = ids[begin + j];
			ps_row[j] = (int64_t)(begin + j + 1);
			if (o.llama)
				tg_row[j] = j >= half && j + 1 < T ? ids[begin + j + 1] : -1;
			else
				tg_row[j] = begin + j + 1 > scored ? ids[begin + j + 1] : -1;
		}
		if (o.llama && tok_adds_bos(tk))
			tk_row[0] = tok_bos(tk);
		scored = begin + T;
		bt.n++;
		windows++;
		fed += (long long)T;
		if (bt.n == o.batch && (rc = flush(m, &bt, &sum, &count)) != 0)
			break;
		if (o.llama ? begin + 2 * T > nids : begin + T >= nids - 1)
			break;
		begin += (size_t)o.stride;
	}
	if (rc == 0)
		rc = flush(m, &bt, &sum, &count);
	if (rc != 0) {
		fprintf(stderr, "fedlora-node eval: forward pass: %s\n", fl_strerror(rc));
		goto out;
	}
	double secs = (clk_mono_ns() - t0) * 1e-9;
	double nll = sum / (double)count;
	if (o.llama)
		printf("windows llama-perplexity compatible: %lld chunks of %d tokens, %s, "
		       "targets %zu..%d of each scored (>= %zu tokens of context)\n",
		       windows, o.ctx, tok_adds_bos(tk) ? "BOS first" : "no BOS", half + 1,
		       o.ctx - 1, half);
	else
		printf("windows ctx %d, stride %d: %lld windows of up to %d tokens; tokens after "
		       "the first window are scored with >= %d tokens of context\n",
		       o.ctx, o.stride, windows, o.ctx, o.ctx - o.stride);
	printf("result  nll/token %.5f  perplexity %.4f  over %lld scored tokens  "
	       "(%.2f s, %.0f tokens/s through the model)\n",
	       nll, exp(nll), count, secs, fed / secs);
	ret = CLI_OK;
out:
	if (pt && fclose(pt) != 0 && ret == CLI_OK) {
		fprintf(stderr, "fedlora-node eval: --per-token %s: %s\n", o.per_token,
		        strerror(errno));
		ret = CLI_FAIL;
	}
	free(bt.tok);
	free(bt.tgt);
	free(bt.pos);
	free(ids);
	free(text);
	tok_free(tk);
	trn_adapter_close(m, adapter);
	model_free(m);
	return ret;
}
