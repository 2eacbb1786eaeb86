/* bench_gptq — deployment quantization: perplexity on held-out tokens for
 * F32, RTN-Q8_0, GPTQ-Q8_0, RTN-Q4_0 and GPTQ-Q4_0, file sizes, export wall
 * time and peak resident memory of each export (run as a separate process so
 * its peak is its own), on a reference shape:
 *   small: dim 288, 6 layers, 6 heads, ffn 768, byte vocabulary (260)
 *   large: dim 768, 12 layers, 12 heads, ffn 2048, tied embeddings, the
 *          32000-token vocabulary of ggml-vocab-llama-spm.gguf (~110M)
 *
 * Model and text. Until the project can train (another issue), the model is
 * built here with the structure GPTQ exploits in trained models (per-channel
 * RMSNorm gains spread over an order of magnitude, a low-rank token
 * embedding, so layer inputs are strongly correlated), and both the
 * calibration and the held-out tokens are *sampled from the F32 model* (with
 * different seeds): on such text the F32 model is the true distribution and a
 * quantized model's excess cross-entropy is its KL divergence from it. With
 * --model M.gguf --calib-text F --held-text G a real (trained) model and
 * real text are used instead.
 *
 * Reference figures measured in the same run: the sgemm peak (2048^3, same
 * threads) and the time of one F32 forward pass over the calibration tokens;
 * GPTQ time is printed as a multiple of the latter. Medians are not taken:
 * one export per variant (each takes seconds to minutes); the forward
 * reference is the median of 3.
 *
 * OpenMP waits passively (OMP_WAIT_POLICY=passive unless the environment
 * sets it), as the fedlora-node model subcommands do.
 *
 * Usage: bench_gptq [--shape small|large] [--vocab GGUF] [--threads N]
 *                   [--calib-seqs S] [--held-seqs H] [--seq T] [--dir DIR]
 *                   [--model M.gguf --calib-text F --held-text G]
 * Defaults: small, 64 calibration and 32 held-out sequences of 128 tokens
 * (large: 32 and 16 of 256). */
#include "clock.h"
#include "err.h"
#include "export.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "model/model.h"
#include "model/sample.h"
#include "model/tokenizer.h"
#include "bench_util.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- the structured model ------------------------------------------------ */

static int add_f32(gguf_writer *w, const char *name, int ndims, uint64_t ne0, uint64_t ne1,
                   float *d)
{
	uint64_t ne[2] = {ne0, ne1};
	return gguf_add_tensor_own(w, name, GTYPE_F32, ndims, ne, d,
	                           sizeof(float) * ne0 * (ndims > 1 ? ne1 : 1));
}

static int write_model(const char *path, int C, int L, int NH, int F, int ctx, const char *vocab,
                       uint64_t seed)
{
	gguf_writer *w = gguf_writer_new();
	sample_rng r;
	char nm[96];
	int V = TOK_BYTE_VOCAB_SIZE, rc = 0;
	sample_seed(&r, seed);
	if (!w)
		return FL_ENOMEM;
	if (vocab) {
		gguf *src;
		char err[256];
		if ((rc = gguf_open(vocab, &src, err, sizeof err)) != 0) {
			fprintf(stderr, "bench_gptq: --vocab %s: %s\n", vocab, err);
			gguf_writer_free(w);
			return rc;
		}
		size_t n = 0;
		const gguf_str *toks;
		rc = gguf_get_arr_strs(src, "tokenizer.ggml.tokens", &toks, &n);
		for (size_t i = 0; rc == 0 && i < gguf_kv_count(src); i++)
			if (strncmp(gguf_kv_key(src, i), "tokenizer.", 10) == 0)
				rc = gguf_set_copy(w, src, gguf_kv_key(src, i));
		V = (int)n;
		gguf_free(src);
	} else {
		rc = tok_write_byte_vocab(w);
	}
#define CK(x)                                                                                      \
	do {                                                                                       \
		if (rc == 0)                                                                       \
			rc = (x);                                                                  \
	} while (0)
	CK(gguf_set_str(w, "general.architecture", "llama"));
	CK(gguf_set_str(w, "general.name", "bench-gptq-structured"));
	CK(gguf_set_u32(w, "general.file_type", 0));
	CK(gguf_set_u32(w, "llama.context_length", (uint32_t)ctx));
	CK(gguf_set_u32(w, "llama.embedding_length", (uint32_t)C));
	CK(gguf_set_u32(w, "llama.block_count", (uint32_t)L));
	CK(gguf_set_u32(w, "llama.feed_forward_length", (uint32_t)F));
	CK(gguf_set_u32(w, "llama.attention.head_count", (uint32_t)NH));
	CK(gguf_set_u32(w, "llama.attention.head_count_kv", (uint32_t)NH));
	CK(gguf_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
	/* tied embedding: low rank 16 + noise, scaled so logits = E lnf are peaky */
	const int K = 16;
	float *E = malloc(sizeof(float) * (size_t)V * C);
	float *P = malloc(sizeof(float) * (size_t)K * C);
	if (!E || !P) {
		free(E);
		free(P);
		gguf_writer_free(w);
		return FL_ENOMEM;
	}
	for (int i = 0; i < K * C; i++)
		P[i] = (float)(sample_normal(&r) / sqrt((double)K));
	const double es = 1.8 / sqrt((double)C);
	for (int v = 0; v < V; v++) {
		float u[16];
		for (int j = 0; j < K; j++)
			u[j] = (float)sample_normal(&r);
		for (int c = 0; c < C; c++) {
			double s = 0;
			for (int j = 0; j < K; j++)
				s += u[j] * P[j * C + c];
			E[(size_t)v * C + c] = (float)(es * (0.8 * s + 0.6 * sample_normal(&r)));
		}
	}
	free(P);
	CK(add_f32(w, "token_embd.weight", 2, (uint64_t)C, (uint64_t)V, E));
	const char *tg[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
	                     "ffn_gate", "ffn_up", "ffn_down"};
	const int rows[7] = {C, C, C, C, F, F, C}, cols[7] = {C, C, C, C, C, C, F};
	for (int l = -1; l < L && rc == 0; l++) {
		for (int k = 0; k < (l < 0 ? 1 : 2) && rc == 0; k++) {
			float *g = malloc(sizeof(float) * C);
			if (!g) {
				rc = FL_ENOMEM;
				break;
			}
			for (int c = 0; c < C; c++)
				g[c] = (float)exp(0.5 * sample_normal(&r));
			if (l < 0)
				snprintf(nm, sizeof nm, "output_norm.weight");
			else
				snprintf(nm, sizeof nm, "blk.%d.%s_norm.weight", l,
				         k ? "ffn" : "attn");
			CK(add_f32(w, nm, 1, (uint64_t)C, 1, g));
		}
		if (l < 0)
			continue;
		for (int t = 0; t < 7 && rc == 0; t++) {
			size_t n = (size_t)rows[t] * cols[t];
			float *d = malloc(sizeof(float) * n);
			if (!d) {
				rc = FL_ENOMEM;
				break;
			}
			double sd = ((t == 3 || t == 6) ? 0.5 : 0.8) / sqrt((double)cols[t]);
			for (size_t i = 0; i < n; i++)
				d[i] = (float)(sd * sample_normal(&r));
			snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, tg[t]);
			CK(add_f32(w, nm, 2, (uint64_t)cols[t], (uint64_t)rows[t], d));
		}
	}
#undef CK
	if (rc == 0)
		rc = gguf_writer_write(w, path);
	gguf_writer_free(w);
	return rc;
}

/* S sequences of T tokens sampled from m, Bs at a time, each from BOS. */
static int32_t *sample_seqs(model *m, int S, int T, uint64_t seed)
{
	const int V = model_cfg(m)->vocab, Bs = 16;
	int32_t *o = malloc(sizeof(int32_t) * (size_t)S * T);
	float *work = malloc(sizeof(float) * 2 * V);
	int32_t cur[16];
	sample_rng r;
	sample_seed(&r, seed);
	if (!o || !work || model_cache_alloc(m, Bs, T, 1) != 0) {
		free(o);
		free(work);
		return NULL;
	}
	int bos = 1;
	for (int s0 = 0; s0 < S; s0 += Bs) {
		int nb = S - s0 < Bs ? S - s0 : Bs;
		model_cache_reset(m);
		for (int b = 0; b < Bs; b++)
			cur[b] = bos;
		for (int t = 0; t < T; t++) {
			const float *lg;
			for (int b = 0; b < nb; b++)
				o[(size_t)(s0 + b) * T + t] = cur[b];
			if (model_decode(m, cur, Bs, 1, &lg) != 0) {
				free(o);
				free(work);
				return NULL;
			}
			for (int b = 0; b < Bs; b++)
				cur[b] = sample_token(lg + (size_t)b * V, V, 1.0f, 0, &r, work);
		}
	}
	free(work);
	return o;
}

/* mean nll over [S, T] sequences, 4 at a time */
static double seq_nll(model *m, const int32_t *seq, int S, int T)
{
	const int Bb = 4;
	int32_t *tg = malloc(sizeof(int32_t) * (size_t)Bb * T);
	double sum = 0;
	long cnt = 0;
	if (!tg || model_prepare(m, Bb, T, 0) != 0) {
		free(tg);
		return NAN;
	}
	for (int s0 = 0; s0 < S; s0 += Bb) {
		int nb = S - s0 < Bb ? S - s0 : Bb;
		for (int b = 0; b < nb; b++)
			for (int t = 0; t < T; t++)
				tg[b * T + t] = t + 1 < T ? seq[(size_t)(s0 + b) * T + t + 1] : -1;
		if (model_forward(m, seq + (size_t)s0 * T, tg, nb, T, NULL) != 0) {
			free(tg);
			return NAN;
		}
		const float *ls = model_losses(m);
		for (int i = 0; i < nb * T; i++)
			if (tg[i] >= 0) {
				sum += ls[i];
				cnt++;
			}
	}
	free(tg);
	return sum / (double)cnt;
}

/* non-negative decimal int, -1 on anything else */
static int num(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	return (*s && !*end && v >= 0 && v <= 1000000) ? (int)v : -1;
}

/* ---- child: one export ------------------------------------------------- */

static int child_export(char **a)
{
	/* a: out type(0 q8 / 1 q4) gptq model calib.bin S T */
	const char *out = a[0], *mp = a[3], *cb = a[4];
	uint32_t type = num(a[1]) ? GTYPE_Q4_0 : GTYPE_Q8_0;
	int gptq = num(a[2]), S = num(a[5]), T = num(a[6]);
	uint8_t *raw = NULL;
	size_t n = 0;
	if (S < 1 || T < 2 || file_read_all(cb, (size_t)1 << 30, &raw, &n) != 0 ||
	    n != sizeof(int32_t) * S * T) {
		fprintf(stderr, "bench_gptq child: bad calibration file\n");
		return 1;
	}
	exp_opts o = {.type = type,
	              .gptq = gptq,
	              .calib = (const int32_t *)raw,
	              .n_seq = S,
	              .seq_len = T,
	              .batch = 4,
	              .gq = {.stats = 1}};
	exp_report rep;
	char why[512];
	int rc = exp_merged(mp, &o, out, &rep, why, sizeof why);
	free(raw);
	if (rc != 0) {
		fprintf(stderr, "bench_gptq child: %s\n", why);
		return 1;
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("RESULT %.3f %.3f %.3f %.1f %llu %.6g %.6g\n", rep.secs_total, rep.secs_calib,
	       rep.secs_gptq, ru.ru_maxrss / 1024.0, (unsigned long long)rep.out_bytes,
	       rep.err_gptq, rep.err_rtn);
	return 0;
}

static uint64_t fsize(const char *p)
{
	FILE *f = fopen(p, "rb");
	if (!f)
		return 0;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fclose(f);
	return n < 0 ? 0 : (uint64_t)n;
}

static int32_t *text_tokens(model *m, const char *path, size_t *n)
{
	tok *tk;
	char err[256];
	uint8_t *txt;
	size_t len;
	if (tok_from_gguf(model_gguf(m), &tk, err, sizeof err) != 0 ||
	    file_read_all(path, (size_t)1 << 30, &txt, &len) != 0)
		return NULL;
	size_t cap = tok_encode_bound(len);
	int32_t *ids = malloc(sizeof(int32_t) * cap);
	if (!ids || tok_encode(tk, txt, len, TOK_ADD_SPECIAL, ids, cap, n) != 0) {
		free(ids);
		ids = NULL;
	}
	free(txt);
	tok_free(tk);
	return ids;
}

int main(int argc, char **argv)
{
	/* sleeping, not spinning, OpenMP waits (see cmdu_passive_openmp): read
	 * when the runtime loads, so re-execute once with it set */
	if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "passive", 1) == 0) {
		execv("/proc/self/exe", argv);
		unsetenv("OMP_WAIT_POLICY");
	}
	if (argc >= 9 && strcmp(argv[1], "--child-export") == 0)
		return child_export(argv + 2);
	const char *shape = "small", *vocab = NULL, *dir = NULL, *model_in = NULL;
	const char *calib_text = NULL, *held_text = NULL;
	int threads = 2, S = 0, H = 0, T = 0;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--shape") == 0)
			shape = argv[i + 1];
		else if (strcmp(argv[i], "--vocab") == 0)
			vocab = argv[i + 1];
		else if (strcmp(argv[i], "--dir") == 0)
			dir = argv[i + 1];
		else if (strcmp(argv[i], "--threads") == 0)
			threads = num(argv[i + 1]);
		else if (strcmp(argv[i], "--calib-seqs") == 0)
			S = num(argv[i + 1]);
		else if (strcmp(argv[i], "--held-seqs") == 0)
			H = num(argv[i + 1]);
		else if (strcmp(argv[i], "--seq") == 0)
			T = num(argv[i + 1]);
		else if (strcmp(argv[i], "--model") == 0)
			model_in = argv[i + 1];
		else if (strcmp(argv[i], "--calib-text") == 0)
			calib_text = argv[i + 1];
		else if (strcmp(argv[i], "--held-text") == 0)
			held_text = argv[i + 1];
		else {
			fprintf(stderr, "bench_gptq: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (threads < 1 || S < 0 || H < 0 || T < 0) {
		fprintf(stderr,
		        "bench_gptq: --threads/--calib-seqs/--held-seqs/--seq need numbers\n");
		return 2;
	}
	int large = strcmp(shape, "large") == 0;
	if (!S)
		S = large ? 32 : 64;
	if (!H)
		H = large ? 16 : 32;
	if (!T)
		T = large ? 256 : 128;
	char vbuf[1024], tdir[512], mpath[600], cpath[600], path[700];
	if (large && !vocab && !model_in) {
		vocab = bench_default_vocab(vbuf, sizeof vbuf);
		if (access(vocab, R_OK) != 0) {
			printf("large shape skipped: vocabulary %s not found (--vocab)\n", vocab);
			return 0;
		}
	}
	if (!dir) {
		snprintf(tdir, sizeof tdir, "/tmp/bench_gptq.XXXXXX");
		if (!mkdtemp(tdir))
			return 1;
		dir = tdir;
	}
	setenv("OMP_NUM_THREADS", "2", 0);
	kern_set_threads(threads);
	double peak = bench_sgemm_peak(threads, 3);

	model *m = NULL;
	char err[512];
	int32_t *cal = NULL, *held = NULL;
	uint64_t t0 = clk_mono_ns();
	if (model_in) {
		snprintf(mpath, sizeof mpath, "%s", model_in);
		if (model_load(mpath, &m, err, sizeof err) != 0) {
			fprintf(stderr, "bench_gptq: %s\n", err);
			return 1;
		}
		size_t nc = 0, nh = 0;
		int32_t *ci = calib_text ? text_tokens(m, calib_text, &nc) : NULL;
		held = held_text ? text_tokens(m, held_text, &nh) : NULL;
		if (!ci || !held || nc < (size_t)S * T || nh < (size_t)H * T) {
			fprintf(stderr,
			        "bench_gptq: --model needs --calib-text and --held-text with "
			        "enough tokens\n");
			return 2;
		}
		cal = ci; /* first S*T tokens, consecutive sequences */
	} else {
		snprintf(mpath, sizeof mpath, "%s/model-f32.gguf", dir);
		int rc = large ? write_model(mpath, 768, 12, 12, 2048, 512, vocab, 7)
		               : write_model(mpath, 288, 6, 6, 768, 256, NULL, 7);
		if (rc != 0 || model_load(mpath, &m, err, sizeof err) != 0) {
			fprintf(stderr, "bench_gptq: building the model failed\n");
			return 1;
		}
		cal = sample_seqs(m, S, T, 101);
		held = sample_seqs(m, H, T, 202);
		if (!cal || !held) {
			fprintf(stderr, "bench_gptq: sampling failed\n");
			return 1;
		}
	}
	const model_config *c = model_cfg(m);
	printf(
	    "bench_gptq: %s shape: dim %d, %d layers, %d heads, ffn %d, vocab %d, %.1fM params%s; "
	    "%d threads; sgemm peak %.1f GFLOP/s\n",
	    model_in ? "given" : shape, c->dim, c->n_layers, c->n_heads, c->ffn_dim, c->vocab,
	    model_param_count(m) / 1e6, model_wts(m)->tied ? " (tied)" : "", threads, peak);
	printf("text: %s; calibration %d x %d tokens, held-out %d x %d (prep %.1f s)\n",
	       model_in ? "given files" : "sampled from the F32 model (different seeds)", S, T, H,
	       T, (clk_mono_ns() - t0) * 1e-9);
	snprintf(cpath, sizeof cpath, "%s/calib.bin", dir);
	if (file_write_atomic(cpath, cal, sizeof(int32_t) * (size_t)S * T) != 0)
		return 1;

	/* reference: F32 forward over the calibration tokens (median of 3) */
	double fw[3];
	for (int r = 0; r < 3; r++) {
		uint64_t a = clk_mono_ns();
		if (isnan(seq_nll(m, cal, S, T)))
			return 1;
		fw[r] = (clk_mono_ns() - a) * 1e-9;
	}
	double fwd = bench_median(fw, 3);
	double nll32 = seq_nll(m, held, H, T);
	model_free(m);

	struct {
		const char *name;
		int q4, gptq;
		double nll, secs, calib_s, quant_s, rss, eg, er;
		uint64_t bytes;
	} v[4] = {{"RTN-Q8_0", 0, 0}, {"GPTQ-Q8_0", 0, 1}, {"RTN-Q4_0", 1, 0}, {"GPTQ-Q4_0", 1, 1}};
	for (int k = 0; k < 4; k++) {
		char out[700], log[700], cmd[4096];
		snprintf(out, sizeof out, "%s/%s.gguf", dir, v[k].name);
		snprintf(log, sizeof log, "%s/%s.log", dir, v[k].name);
		snprintf(cmd, sizeof cmd, "'%s' --child-export '%s' %d %d '%s' '%s' %d %d > '%s'",
		         argv[0], out, v[k].q4, v[k].gptq, mpath, cpath, S, T, log);
		if (system(cmd) != 0) {
			fprintf(stderr, "bench_gptq: export %s failed\n", v[k].name);
			return 1;
		}
		FILE *f = fopen(log, "r");
		char line[512];
		unsigned long long bytes = 0;
		int ok = 0;
		while (f && fgets(line, sizeof line, f))
			if (sscanf(line, "RESULT %lf %lf %lf %lf %llu %lf %lf", &v[k].secs,
			           &v[k].calib_s, &v[k].quant_s, &v[k].rss, &bytes, &v[k].eg,
			           &v[k].er) == 7)
				ok = 1;
		if (f)
			fclose(f);
		if (!ok)
			return 1;
		v[k].bytes = bytes;
		model *mq;
		if (model_load(out, &mq, err, sizeof err) != 0) {
			fprintf(stderr, "bench_gptq: %s\n", err);
			return 1;
		}
		v[k].nll = seq_nll(mq, held, H, T);
		model_free(mq);
	}
	printf("\nreference: one F32 forward pass over the %d calibration tokens: %.2f s\n", S * T,
	       fwd);
	printf("\n| variant | ppl (held-out) | nll excess over F32 | file | export time | "
	       "x F32 forward | peak RSS |\n");
	printf("|---|---|---|---|---|---|---|\n");
	printf("| F32 | %.4f | 0 | %.1f MiB | - | - | - |\n", exp(nll32), fsize(mpath) / 1048576.0);
	for (int k = 0; k < 4; k++)
		printf("| %s | %.4f | %+.5f | %.1f MiB | %.1f s%s | %.1f | %.0f MiB |\n", v[k].name,
		       exp(v[k].nll), v[k].nll - nll32, v[k].bytes / 1048576.0, v[k].secs,
		       v[k].gptq ? "" : "", v[k].secs / fwd, v[k].rss);
	for (int k = 0; k < 4; k++)
		if (v[k].gptq)
			printf(
			    "%s: %.1f s calibration forward + Hessians, %.1f s GPTQ proper; summed "
			    "layer output error GPTQ %.4g vs round-to-nearest %.4g (ratio %.3f)\n",
			    v[k].name, v[k].calib_s, v[k].quant_s, v[k].eg, v[k].er,
			    v[k].er > 0 ? v[k].eg / v[k].er : 0.0);
	free(cal);
	free(held);
	if (dir == tdir) {
		snprintf(path, sizeof path, "rm -rf '%s'", tdir);
		if (system(path) != 0)
			return 1;
	}
	return 0;
}
