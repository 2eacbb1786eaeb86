/* cmd_export — see cmd_export.h. */
#include "cmd_export.h"

#include "cli.h"
#include "cmd_util.h"
#include "err.h"
#include "export.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "log.h"
#include "gguf_lora.h"
#include "lora_fmt.h"
#include "peft.h"
#include "model/model.h"
#include "model/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define CMD            "export"
#define CALIB_MAX_FILE ((size_t)1 << 30)

static void usage(FILE *f)
{
	fprintf(f,
	        "Usage: fedlora-node export --model BASE.gguf --format FMT --out PATH [options]\n"
	        "\n"
	        "Exports an adapter for deployment, or the base with the adapter folded in.\n"
	        "\n"
	        "  --model PATH       base model (GGUF) the adapter was trained on\n"
	        "  --adapter PATH     PEFT directory, adapter_model.safetensors, a canonical\n"
	        "                     adapter .safetensors (blk.N.<target>.lora_a/b), or a GGUF\n"
	        "                     LoRA adapter; required for gguf-lora and peft\n"
	        "  --format FMT       gguf-lora  llama.cpp LoRA adapter (--lora in llama.cpp)\n"
	        "                     peft       adapter_model.safetensors + adapter_config.json\n"
	        "                     merged     GGUF model with W + s*B*A in every target\n"
	        "  --out PATH         output file (gguf-lora, merged) or directory (peft)\n"
	        "  --base-model-id ID peft: base_model_name_or_path, the Hugging Face id of\n"
	        "                     the base (e.g. Qwen/Qwen2-0.5B); default: the GGUF's\n"
	        "                     general.source.huggingface.repository (or a huggingface.co\n"
	        "                     general.source.repo_url/url), else general.name\n"
	        "  --type T           gguf-lora: f32 (default) or f16; merged: f32, f16, q8_0,\n"
	        "                     q4_0 for every matrix (default: the base's type)\n"
	        "  --quantize Q       merged only: gptq-q4_0, gptq-q8_0 (GPTQ, needs --calib),\n"
	        "                     rtn-q4_0, rtn-q8_0 (round-to-nearest, = --type q4_0/q8_0)\n"
	        "  --calib FILE       local calibration text for GPTQ, tokenized with the\n"
	        "                     model's tokenizer\n"
	        "  --calib-seqs N     calibration sequences (default 64)\n"
	        "  --calib-ctx T      tokens per calibration sequence (default min(256, ctx))\n"
	        "  --gptq-damp F      dampening, fraction of mean(diag H) (default 0.01)\n"
	        "  --gptq-block N     lazy-update block in columns, multiple of 32 (default 128)\n"
	        "  --batch B          calibration sequences per forward chunk (default 4)\n"
	        "  --alpha A          LoRA alpha, when the adapter does not record it\n"
	        "  --rank R           expected LoRA rank (checked against the tensors)\n"
	        "  --rslora           scale alpha/sqrt(r) (when the adapter does not record it)\n"
	        "  --verbose          one line per quantized matrix (GPTQ vs round-to-nearest\n"
	        "                     output error on the calibration inputs)\n"
	        "  --threads N        threads (default: OpenMP default)\n"
	        "\n"
	        "Scale: s = alpha/r (alpha/sqrt(r) with rsLoRA). alpha comes from the adapter:\n"
	        "adapter_config.json (PEFT), adapter.lora.alpha (GGUF), the lora.alpha metadata\n"
	        "of a canonical .safetensors or an adapter_config.json beside it; --alpha only\n"
	        "fills a gap and is refused when it contradicts the file.\n");
}

typedef struct opts {
	const char *model, *adapter, *format, *out, *calib, *type_s, *quant, *base_id;
	int calib_seqs, calib_ctx, gptq_block, batch, threads, verbose, rank, rslora, has_alpha;
	float alpha, damp;
} opts;

static int parse(int argc, char **argv, void *out)
{
	opts *o = out;
	const char *v;
	int r, rc = 0;
	memset(o, 0, sizeof *o);
	o->calib_seqs = 64;
	o->rslora = -1;
	for (int i = 1; i < argc && rc == 0; i++) {
		if ((r = cmdu_opt(CMD, argc, argv, &i, "--model", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->model = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--adapter", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->adapter = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--base-model-id", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->base_id = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--format", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->format = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--out", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->out = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--type", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->type_s = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--quantize", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->quant = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--calib", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->calib = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--calib-seqs", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--calib-seqs", v, 1, 1000000, &o->calib_seqs);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--calib-ctx", &v)) != 0)
			rc = r < 0
			         ? CLI_USAGE
			         : cmdu_int(CMD, "--calib-ctx", v, 2, MODEL_MAX_CTX, &o->calib_ctx);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--gptq-damp", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_float(CMD, "--gptq-damp", v, 1e-9, 10.0, &o->damp);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--gptq-block", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--gptq-block", v, 32, 65536, &o->gptq_block);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--batch", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : cmdu_int(CMD, "--batch", v, 1, 4096, &o->batch);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--alpha", &v)) != 0) {
			rc =
			    r < 0 ? CLI_USAGE : cmdu_float(CMD, "--alpha", v, -1e6, 1e6, &o->alpha);
			o->has_alpha = 1;
		} else if ((r = cmdu_opt(CMD, argc, argv, &i, "--rank", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--rank", v, 1, LORA_MAX_RANK, &o->rank);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--threads", &v)) != 0)
			rc =
			    r < 0 ? CLI_USAGE : cmdu_int(CMD, "--threads", v, 0, 1024, &o->threads);
		else if (strcmp(argv[i], "--rslora") == 0)
			o->rslora = 1;
		else if (strcmp(argv[i], "--verbose") == 0)
			o->verbose = 1;
		else
			rc = cmdu_usage(CMD, "unknown argument '%s'", argv[i]);
	}
	if (rc != 0)
		return rc;
	if (!o->model || !o->format || !o->out)
		return cmdu_usage(CMD, "--model, --format and --out are required");
	if (o->gptq_block % 32)
		return cmdu_usage(CMD,
		                  "--gptq-block %d is not a multiple of 32 (the Q4_0/Q8_0 block)",
		                  o->gptq_block);
	return 0;
}

static int parse_type(const char *s, uint32_t *t)
{
	if (strcmp(s, "f32") == 0)
		*t = GTYPE_F32;
	else if (strcmp(s, "f16") == 0)
		*t = GTYPE_F16;
	else if (strcmp(s, "q8_0") == 0)
		*t = GTYPE_Q8_0;
	else if (strcmp(s, "q4_0") == 0)
		*t = GTYPE_Q4_0;
	else
		return -1;
	return 0;
}

static double peak_rss_mib(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0.0;
	return ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

/* Calibration tokens from the text file. */
static int load_calib(const opts *o, const char *model_path, int32_t **ids, int *seq_len,
                      int *min_tokens)
{
	model *m = NULL;
	tok *tk = NULL;
	uint8_t *text = NULL;
	size_t len = 0, avail = 0;
	char err[512];
	int rc = cmdu_open_model(CMD, model_path, NULL, 0, &m, NULL);
	if (rc != 0)
		return CLI_FAIL;
	const model_config *c = model_cfg(m);
	int T = o->calib_ctx ? o->calib_ctx : (c->ctx < 256 ? c->ctx : 256);
	int ret = CLI_FAIL;
	if (T > c->ctx) {
		ret = cmdu_usage(CMD, "--calib-ctx %d exceeds the model's context_length %d", T,
		                 c->ctx);
		goto out;
	}
	*min_tokens = c->dim > c->ffn_dim ? c->dim : c->ffn_dim;
	if ((rc = cmdu_open_tok(CMD, model_path, model_gguf(m), &tk)) != 0)
		goto out;
	if ((rc = file_read_all(o->calib, CALIB_MAX_FILE, &text, &len)) != 0) {
		fprintf(stderr, "fedlora-node export: --calib %s: %s\n", o->calib, fl_strerror(rc));
		goto out;
	}
	rc = exp_calib_tokens(tk, text, len, o->calib_seqs, T, ids, &avail, err, sizeof err);
	if (rc != 0) {
		fprintf(stderr, "fedlora-node export: --calib %s: %s\n", o->calib, err);
		goto out;
	}
	printf("calib   %s: %zu bytes -> %zu tokens; %d sequences x %d tokens\n", o->calib, len,
	       avail, o->calib_seqs, T);
	*seq_len = T;
	ret = CLI_OK;
out:
	free(text);
	tok_free(tk);
	model_free(m);
	return ret;
}

int cmd_export(int argc, char **argv)
{
	opts o = {0}; /* parse fills it */
	int rc = cmdu_begin(argc, argv, usage, parse, &o, &o.threads);
	if (rc >= 0)
		return rc;

	enum { F_GGUF_LORA, F_PEFT, F_MERGED } fmt;
	if (strcmp(o.format, "gguf-lora") == 0)
		fmt = F_GGUF_LORA;
	else if (strcmp(o.format, "peft") == 0)
		fmt = F_PEFT;
	else if (strcmp(o.format, "merged") == 0)
		fmt = F_MERGED;
	else
		return cmdu_usage(CMD, "--format: expected gguf-lora, peft or merged, got '%s'",
		                  o.format);
	uint32_t type = EXP_TYPE_KEEP;
	if (o.type_s && parse_type(o.type_s, &type) != 0)
		return cmdu_usage(CMD, "--type: expected f32, f16, q8_0 or q4_0, got '%s'",
		                  o.type_s);
	int gptq = 0;
	if (o.quant) {
		uint32_t qt;
		if (fmt != F_MERGED)
			return cmdu_usage(CMD, "--quantize applies to --format merged only");
		if (strcmp(o.quant, "gptq-q4_0") == 0)
			gptq = 1, qt = GTYPE_Q4_0;
		else if (strcmp(o.quant, "gptq-q8_0") == 0)
			gptq = 1, qt = GTYPE_Q8_0;
		else if (strcmp(o.quant, "rtn-q4_0") == 0)
			qt = GTYPE_Q4_0;
		else if (strcmp(o.quant, "rtn-q8_0") == 0)
			qt = GTYPE_Q8_0;
		else
			return cmdu_usage(CMD,
			                  "--quantize: expected gptq-q4_0, gptq-q8_0, rtn-q4_0 or "
			                  "rtn-q8_0, got '%s'",
			                  o.quant);
		if (o.type_s && type != qt)
			return cmdu_usage(CMD, "--type %s contradicts --quantize %s", o.type_s,
			                  o.quant);
		type = qt;
	}
	if (gptq && !o.calib)
		return cmdu_usage(CMD, "--quantize %s needs --calib FILE (local text)", o.quant);
	if (!gptq && o.calib)
		return cmdu_usage(CMD, "--calib is only used with --quantize gptq-q4_0|gptq-q8_0");
	if (fmt != F_MERGED && !o.adapter)
		return cmdu_usage(CMD, "--format %s needs --adapter", o.format);
	if (fmt == F_GGUF_LORA && type != EXP_TYPE_KEEP && type != GTYPE_F32 && type != GTYPE_F16)
		return cmdu_usage(CMD, "--format gguf-lora writes f32 or f16 tensors, not %s",
		                  o.type_s);
	if (fmt == F_PEFT && o.type_s && type != GTYPE_F32)
		return cmdu_usage(CMD, "--format peft is written in f32");

	gguf *base = NULL;
	tset *ad = NULL;
	int32_t *calib = NULL;
	lora_spec p = {0};
	char why[1024];
	int ret = CLI_FAIL;
	if ((rc = gguf_open(o.model, &base, why, sizeof why)) != 0) {
		fprintf(stderr, "fedlora-node export: --model %s: %s\n", o.model, why);
		goto out;
	}
	if (o.adapter) {
		lfmt_override ov = {.has_alpha = o.has_alpha,
		                    .alpha = o.alpha,
		                    .rank = (uint32_t)o.rank,
		                    .rslora = o.rslora};
		if ((rc = lfmt_load(o.adapter, base, &ov, &ad, &p, why, sizeof why)) != 0) {
			fprintf(stderr, "fedlora-node export: --adapter %s: %s\n", o.adapter, why);
			ret = rc == FL_EINVAL && strstr(why, "--alpha") ? CLI_USAGE : CLI_FAIL;
			goto out;
		}
		printf("adapter %s: %zu tensors, rank %u, alpha %g%s -> scale %g\n", o.adapter,
		       tset_count(ad), p.rank, (double)p.alpha, p.rslora ? " (rsLoRA)" : "",
		       lora_scale(&p));
	}
	if (fmt == F_GGUF_LORA || fmt == F_PEFT) {
		uint32_t t = type == EXP_TYPE_KEEP ? GTYPE_F32 : type;
		rc = fmt == F_GGUF_LORA
		         ? gguf_lora_write(ad, base, &p, t, o.out, why, sizeof why)
		         : peft_write_base(ad, base, &p, o.base_id, o.out, why, sizeof why);
		if (rc != 0) {
			fprintf(stderr, "fedlora-node export: %s\n", why);
			goto out;
		}
		printf("wrote   %s (%s)\n", o.out, o.format);
		ret = CLI_OK;
		goto out;
	}

	/* merged */
	exp_opts eo = {.adapter = ad,
	               .params = p,
	               .type = type,
	               .gptq = gptq,
	               .batch = o.batch,
	               .gq = {.damp = o.damp, .block = o.gptq_block, .stats = o.verbose},
	               .verbose = o.verbose,
	               .note = o.adapter};
	gguf_free(base);
	base = NULL;
	if (gptq) {
		int T = 0, min_tok = 0;
		if ((ret = load_calib(&o, o.model, &calib, &T, &min_tok)) != CLI_OK)
			goto out;
		ret = CLI_FAIL;
		if ((long long)o.calib_seqs * T < min_tok) {
			fprintf(
			    stderr,
			    "fedlora-node export: --calib: %d x %d = %lld calibration tokens is "
			    "fewer than the widest layer input (%d): the Hessian would be "
			    "rank-deficient; use more (--calib-seqs, --calib-ctx)\n",
			    o.calib_seqs, T, (long long)o.calib_seqs * T, min_tok);
			goto out;
		}
		eo.calib = calib;
		eo.n_seq = o.calib_seqs;
		eo.seq_len = T;
	}
	exp_report rep;
	if ((rc = exp_merged(o.model, &eo, o.out, &rep, why, sizeof why)) != 0) {
		fprintf(stderr, "fedlora-node export: %s\n", why);
		goto out;
	}
	printf("wrote   %s: %d tensors (%d merged with the adapter, %d GPTQ, %d converted), "
	       "%.1f MiB, %.1f s\n",
	       o.out, rep.n_tensors, rep.n_merged, rep.n_gptq, rep.n_converted,
	       rep.out_bytes / 1048576.0, rep.secs_total);
	if (gptq) {
		printf("gptq    %s: %llu calibration tokens; %.1f s forward + Hessians, %.1f s "
		       "quantizing; largest dampening %.3g; peak RSS %.0f MiB\n",
		       o.quant, (unsigned long long)rep.calib_tokens, rep.secs_calib, rep.secs_gptq,
		       rep.damp_max, peak_rss_mib());
		if (o.verbose && rep.err_rtn > 0)
			printf("gptq    summed layer output error on the calibration inputs: GPTQ "
			       "%.5g, round-to-nearest %.5g (ratio %.3f)\n",
			       rep.err_gptq, rep.err_rtn, rep.err_gptq / rep.err_rtn);
	}
	ret = CLI_OK;
out:
	free(calib);
	tset_free(ad);
	gguf_free(base);
	return ret;
}
