/* cmd_generate — `fedlora-node generate`: continues a prompt with a GGUF
 * model, decoding through the KV cache (the prompt in chunks, then one token
 * per step) and sampling with temperature and top-k. The prompt is echoed,
 * the continuation streamed to stdout as it is produced; statistics go to
 * stderr. */
#include "cmd_generate.h"

#include "buf.h"
#include "cli.h"
#include "clock.h"
#include "cmd_util.h"
#include "err.h"
#include "model/model.h"
#include "model/sample.h"
#include "model/tokenizer.h"
#include "train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD         "generate"
#define GEN_CHUNK   64 /* prompt tokens per decode step */
#define GEN_MAX_LEN ((size_t)1 << 20)

static void usage(FILE *f)
{
	fprintf(f, "Usage: fedlora-node generate --model M.gguf --prompt TEXT [options]\n"
	           "\n"
	           "Continues TEXT with the model (KV-cache decoding) and prints it.\n"
	           "\n"
	           "  --model PATH      GGUF model (llama or qwen2)\n"
	           "  --prompt TEXT     the prompt (BOS added as the vocabulary says)\n"
	           "  -n N              tokens to generate (default 64; stops early at EOS or\n"
	           "                    when the context is full)\n"
	           "  --temp T          temperature (default 0.8; 0 = greedy)\n"
	           "  --top-k K         sample among the K most likely tokens (default 40;\n"
	           "                    0 = all)\n"
	           "  --seed S          sampling seed (default: from the clock, printed)\n"
	           "  --adapter PATH    LoRA adapter: PEFT directory, GGUF LoRA or safetensors\n"
	           "  --alpha A         the adapter's alpha when its file does not say\n"
	           "  --threads N       threads (default: OpenMP default)\n");
}

typedef struct opts {
	const char *adapter;
	float alpha;
	const char *model, *prompt;
	int n, top_k, threads, have_seed;
	float temp;
	uint64_t seed;
} opts;

static int parse(int argc, char **argv, void *out)
{
	opts *o = out;
	const char *v;
	int r, rc = 0;
	memset(o, 0, sizeof *o);
	o->n = 64;
	o->temp = 0.8f;
	o->top_k = 40;
	for (int i = 1; i < argc && rc == 0; i++) {
		if ((r = cmdu_opt(CMD, argc, argv, &i, "--model", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->model = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--prompt", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->prompt = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "-n", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : cmdu_int(CMD, "-n", v, 0, MODEL_MAX_CTX, &o->n);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--temp", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : cmdu_float(CMD, "--temp", v, 0.0, 100.0, &o->temp);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--top-k", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--top-k", v, 0, MODEL_MAX_VOCAB, &o->top_k);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--seed", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : (o->have_seed = 1, cmdu_u64(CMD, "--seed", v, &o->seed));
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--adapter", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->adapter = v, 0);
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
	if (!o->model || !o->prompt)
		return cmdu_usage(CMD, "--model and --prompt are required");
	if (strlen(o->prompt) > GEN_MAX_LEN)
		return cmdu_usage(CMD, "--prompt is longer than %zu bytes", GEN_MAX_LEN);
	return 0;
}

int cmd_generate(int argc, char **argv)
{
	opts o = {0}; /* parse fills it */
	int rc = cmdu_begin(argc, argv, usage, parse, &o, &o.threads);
	if (rc >= 0)
		return rc;
	if (!o.have_seed)
		o.seed = clk_wall_ms() ^ (clk_mono_ns() << 16);

	model *m = NULL;
	trn_adapter *adapter = NULL;
	tok *tk = NULL;
	int32_t *ids = NULL;
	float *work = NULL;
	int ret = CLI_FAIL;
	size_t np = 0, plen = strlen(o.prompt);

	if ((rc = cmdu_open_model(CMD, o.model, o.adapter, o.alpha, &m, &adapter)) != 0)
		goto out;
	const model_config *c = model_cfg(m);
	if ((rc = cmdu_open_tok(CMD, o.model, model_gguf(m), &tk)) != 0)
		goto out;
	size_t cap = tok_encode_bound(plen);
	ids = cap == SIZE_MAX ? NULL : malloc(sizeof(int32_t) * (cap + 1));
	work = malloc(sizeof(float) * 2 * (size_t)c->vocab);
	if (!ids || !work) {
		fprintf(stderr, "fedlora-node generate: out of memory\n");
		goto out;
	}
	if ((rc = tok_encode(tk, o.prompt, plen, TOK_ADD_SPECIAL, ids, cap, &np)) != 0) {
		fprintf(stderr, "fedlora-node generate: tokenizing the prompt: %s\n",
		        fl_strerror(rc));
		goto out;
	}
	if (np == 0) {
		ret = cmdu_usage(CMD, "the prompt is empty and the vocabulary adds no BOS token");
		goto out;
	}
	if (np >= (size_t)c->ctx) {
		fprintf(stderr,
		        "fedlora-node generate: the prompt has %zu tokens; the model's context is "
		        "%d\n",
		        np, c->ctx);
		goto out;
	}
	size_t total = np + (size_t)o.n < (size_t)c->ctx ? np + (size_t)o.n : (size_t)c->ctx;
	int chunk = total < GEN_CHUNK ? (int)total : GEN_CHUNK;
	if ((rc = model_cache_alloc(m, 1, (int)total, chunk)) != 0) {
		fprintf(stderr, "fedlora-node generate: KV cache for %zu tokens: %s\n", total,
		        fl_strerror(rc));
		goto out;
	}
	fwrite(o.prompt, 1, plen, stdout);
	fflush(stdout);

	uint64_t t0 = clk_mono_ns();
	const float *lg = NULL;
	for (size_t p = 0; p < np; p += (size_t)chunk) {
		int n = np - p < (size_t)chunk ? (int)(np - p) : chunk;
		if ((rc = model_decode(m, ids + p, 1, n, &lg)) != 0)
			break;
		lg += (size_t)(n - 1) * c->vocab; /* last position's logits */
	}
	if (rc != 0) {
		fprintf(stderr, "\nfedlora-node generate: prompt: %s\n", fl_strerror(rc));
		goto out;
	}
	uint64_t t1 = clk_mono_ns();
	sample_rng rng;
	sample_seed(&rng, o.seed);
	int produced = 0;
	const char *stop = "length";
	for (int i = 0; i < o.n; i++) {
		int32_t next = sample_token(lg, c->vocab, o.temp, o.top_k, &rng, work);
		if (next < 0) {
			fprintf(stderr, "\nfedlora-node generate: logits are not finite\n");
			goto out;
		}
		if (next == tok_eos(tk)) {
			stop = "EOS";
			break;
		}
		const char *piece;
		size_t pn;
		if (tok_piece(tk, next, 0, &piece, &pn) == 0) {
			fwrite(piece, 1, pn, stdout);
			fflush(stdout);
		}
		produced++;
		if ((size_t)model_cache_pos(m) >= total) {
			stop = (size_t)c->ctx == total ? "context full" : "length";
			break;
		}
		if (i + 1 < o.n && (rc = model_decode(m, &next, 1, 1, &lg)) != 0) {
			fprintf(stderr, "\nfedlora-node generate: decode: %s\n", fl_strerror(rc));
			goto out;
		}
	}
	uint64_t t2 = clk_mono_ns();
	printf("\n");
	double ps = (t1 - t0) * 1e-9, gs = (t2 - t1) * 1e-9;
	fprintf(stderr,
	        "[generate] prompt %zu tokens (%.0f tok/s), generated %d tokens in %.2f s "
	        "(%.1f tok/s), stop: %s; seed %llu, temp %g, top-k %d\n",
	        np, ps > 0 ? np / ps : 0.0, produced, gs, gs > 0 ? produced / gs : 0.0, stop,
	        (unsigned long long)o.seed, (double)o.temp, o.top_k);
	ret = CLI_OK;
out:
	free(ids);
	free(work);
	tok_free(tk);
	trn_adapter_close(m, adapter);
	model_free(m);
	return ret;
}
