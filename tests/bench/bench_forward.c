/* bench_forward — forward-pass (eval) throughput of the model engine on the
 * two reference shapes, made with `fedlora-node init-model`:
 *   small: dim 288, 6 layers, 6 heads, ffn 768, built-in byte vocabulary
 *   large: dim 768, 12 layers, 12 heads, ffn 2048, tied embeddings, the
 *          32000-token vocabulary of ggml-vocab-llama-spm.gguf (~110M params)
 * each in F32, Q8_0 and Q4_0. Reference figure measured in the same run: the
 * machine's sgemm peak (a 2048^3 sgemm on the same thread count, OpenBLAS
 * threading), sampled again right before every repetition. Printed per case:
 * tokens/s, whole-forward GFLOP/s, matmul-only GFLOP/s (time inside
 * kern_matmul), both as a fraction of the peak sampled with them; medians
 * over --reps repetitions.
 *
 * Usage: bench_forward [--node PATH] [--dir DIR] [--vocab GGUF] [--threads N]
 *                      [--B B] [--T T] [--reps R] [--only small|large]
 * Defaults: --node $FEDLORA_NODE_BIN or ./fedlora-node, --dir a temp dir
 * (removed), --vocab ../shared/data/vocab/ggml-vocab-llama-spm.gguf via
 * $FEDLORA_SHARED or the source tree's ../shared, --threads 2, --B 4,
 * --T 256, --reps 5. */
#include "clock.h"
#include "err.h"
#include "model/model.h"
#include "model/sample.h"
#include "bench_util.h"

#include <cblas.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int run_cmd(const char *cmd)
{
	int rc = system(cmd);
	if (rc != 0)
		fprintf(stderr, "bench_forward: command failed (%d): %s\n", rc, cmd);
	return rc;
}

typedef struct shape {
	const char *name;
	int dim, layers, heads, ffn, ctx;
	int byte_vocab;
} shape;

int main(int argc, char **argv)
{
	const char *node = getenv("FEDLORA_NODE_BIN"), *dir = NULL, *vocab = NULL, *only = NULL;
	int threads = 2, B = 4, T = 256, reps = 5;
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
		else if (strcmp(argv[i], "--reps") == 0)
			reps = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--only") == 0)
			only = argv[i + 1];
		else {
			fprintf(stderr, "bench_forward: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (!node)
		node = "./fedlora-node";
	if (!vocab) {
		vocab = bench_default_vocab(vbuf, sizeof vbuf);
	}
	if (B < 1 || T < 1 || reps < 1 || reps > 64 || threads < 1) {
		fprintf(stderr, "bench_forward: bad --B/--T/--reps/--threads\n");
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
	clk_sleep_ms(300);
	printf("bench_forward: %d threads, batch B=%d T=%d (%d tokens/forward), median of %d\n",
	       threads, B, T, B * T, reps);
	printf("reference: sgemm 2048^3 peak %.1f GFLOP/s at start (OpenBLAS, %d threads)\n\n",
	       peak, threads);
	printf("%-6s %-5s %8s %10s %9s %7s %9s %7s %6s %6s %6s %7s\n", "shape", "type", "params",
	       "tok/s", "GFLOP/s", "%peak", "mm GF/s", "%peak", "mm%", "att%", "oth%", "peak");

	const shape shapes[2] = {
	    {"small", 288, 6, 6, 768, 256, 1},
	    {"large", 768, 12, 12, 2048, 1024, 0},
	};
	const char *types[3] = {"f32", "q8_0", "q4_0"};
	int failures = 0;
	for (int si = 0; si < 2; si++) {
		const shape *s = &shapes[si];
		if (only && strcmp(only, s->name) != 0)
			continue;
		int Ts = T > s->ctx ? s->ctx : T;
		for (int ti = 0; ti < 3; ti++) {
			char path[PATH_MAX], cmd[3 * PATH_MAX];
			snprintf(path, sizeof path, "%s/%s-%s.gguf", dir, s->name, types[ti]);
			if (access(path, R_OK) != 0 && !s->byte_vocab && access(vocab, R_OK) != 0) {
				printf("%-6s %-5s skipped: vocabulary %s not found (--vocab)\n",
				       s->name, types[ti], vocab);
				continue;
			}
			if (access(path, R_OK) != 0) {
				int n = snprintf(
				    cmd, sizeof cmd,
				    "'%s' init-model --out '%s' --dim %d --layers %d "
				    "--heads %d --ffn %d --ctx %d --type %s --seed 1 "
				    "--threads %d%s%s%s >/dev/null",
				    node, path, s->dim, s->layers, s->heads, s->ffn, s->ctx,
				    types[ti], threads,
				    s->byte_vocab ? "" : " --tie-embeddings --vocab-from '",
				    s->byte_vocab ? "" : vocab, s->byte_vocab ? "" : "'");
				if (n < 0 || (size_t)n >= sizeof cmd || run_cmd(cmd) != 0) {
					failures++;
					continue;
				}
			}
			model *m = NULL;
			char err[512];
			int rc = model_load(path, &m, err, sizeof err);
			if (rc == 0)
				rc = model_prepare(m, B, Ts, 0);
			if (rc != 0) {
				fprintf(stderr, "bench_forward: %s: %s\n", path,
				        rc == 0 ? "" : (err[0] ? err : fl_strerror(rc)));
				model_free(m);
				failures++;
				continue;
			}
			const model_config *c = model_cfg(m);
			int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * Ts * 2);
			sample_rng r;
			sample_seed(&r, 99);
			for (int i = 0; i < B * Ts * 2; i++)
				tok[i] = (int32_t)(sample_u64(&r) % (uint64_t)c->vocab);
			float loss;
			model_forward(m, tok, tok + B * Ts, B, Ts, &loss); /* warm-up */
			double tps[64], gf[64], mmgf[64], fm[64], fa[64], fo[64], rg[64], rmm[64];
			double pk[64];
			for (int rep = 0; rep < reps; rep++) {
				/* a peak sample right before each forward: on a shared
				 * machine the ratio then compares like with like */
				pk[rep] = bench_sgemm_peak(threads, 1);
				clk_sleep_ms(300); /* let OpenBLAS's own workers stop spinning */
				model_prof p = {0};
				model_set_prof(m, &p);
				uint64_t t0 = clk_mono_ns();
				rc = model_forward(m, tok, tok + B * Ts, B, Ts, &loss);
				double dt = (clk_mono_ns() - t0) * 1e-9;
				model_set_prof(m, NULL);
				if (rc != 0)
					break;
				tps[rep] = B * Ts / dt;
				gf[rep] = model_forward_flops(c, B, Ts) / dt / 1e9;
				mmgf[rep] = p.f_matmul / p.t_matmul / 1e9;
				fm[rep] = p.t_matmul / dt * 100;
				fa[rep] = p.t_attn / dt * 100;
				fo[rep] = 100 - fm[rep] - fa[rep];
				rg[rep] = gf[rep] / pk[rep] * 100;
				rmm[rep] = mmgf[rep] / pk[rep] * 100;
			}
			if (rc != 0) {
				fprintf(stderr, "bench_forward: forward failed: %s\n",
				        fl_strerror(rc));
				failures++;
			} else {
				printf(
				    "%-6s %-5s %7.1fM %10.0f %9.1f %6.1f%% %9.1f %6.1f%% %5.1f%% "
				    "%5.1f%% %5.1f%% %7.1f\n",
				    s->name, types[ti], model_param_count(m) / 1e6,
				    bench_median(tps, reps), bench_median(gf, reps),
				    bench_median(rg, reps), bench_median(mmgf, reps),
				    bench_median(rmm, reps), bench_median(fm, reps),
				    bench_median(fa, reps), bench_median(fo, reps),
				    bench_median(pk, reps));
				fflush(stdout);
			}
			free(tok);
			model_free(m);
		}
	}
	printf("\nGFLOP/s counts 2 flops per multiply-add of the matmuls and the causal half "
	       "of attention;\nmm = time inside kern_matmul only; mm%%/att%%/oth%% = share of "
	       "forward time;\npeak = sgemm 2048^3 GFLOP/s sampled right before each "
	       "repetition, %%peak = median of\nper-repetition ratios (robust to other load "
	       "on the machine).\n");
	if (own_dir) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "bench_forward: could not remove %s\n", dir);
	}
	return failures ? 1 : 0;
}
