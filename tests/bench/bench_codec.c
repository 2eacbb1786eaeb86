/* bench_codec — throughput of the adapter codec on one core.
 *
 * For an n-element tensor (default 16M) and each format: encode (nearest
 * and stochastic), decode, and decode+accumulate (acc += w * deq(q), the
 * aggregation loop), as GB/s of f32 processed (4n bytes / time), beside
 * memcpy bandwidth of the same 4n bytes measured in the same run; plus
 * bytes per parameter on the wire (QTensor message size / n). Medians of
 * `reps` runs. Both implementations (AVX2 when available, scalar).
 *
 *   bench_codec [n] [reps]                                                   */
#include "clock.h"
#include "qtensor.h"
#include "quant.h"
#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile float g_sink;

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : (size_t)16 << 20;
	int reps = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 5;
	if (n < 1024 || reps < 1 || reps > 100) {
		fprintf(stderr, "usage: bench_codec [n >= 1024] [reps 1..100]\n");
		return 2;
	}
	float *x = malloc(n * 4), *out = malloc(n * 4), *acc = malloc(n * 4);
	double *t = malloc((size_t)reps * sizeof *t);
	if (!x || !out || !acc || !t) {
		fprintf(stderr, "bench_codec: out of memory\n");
		return 1;
	}
	/* delta-like values: Gaussian-ish, magnitude ~1e-3, varying per block */
	uint64_t st = 12345;
	for (size_t i = 0; i < n; i++) {
		st = st * 6364136223846793005ull + 1442695040888963407ull;
		double u = (double)(st >> 11) * (1.0 / 9007199254740992.0);
		double scale = 1e-3 * (1.0 + (double)((i / 64) % 5));
		x[i] = (float)((u - 0.5) * 3.4641 * scale);
	}
	memset(out, 0, n * 4);
	memset(acc, 0, n * 4);

	/* reference: memcpy of the same 4n bytes (page-faulted already) */
	for (int r = 0; r < reps; r++) {
		uint64_t t0 = clk_mono_ns();
		memcpy(out, x, n * 4);
		t[r] = (double)(clk_mono_ns() - t0) * 1e-9;
		g_sink = out[r];
	}
	double bytes = (double)n * 4;
	double mc = bytes / bench_median(t, reps) / 1e9;
	printf("bench_codec: n = %zu elements (%.0f MiB of f32), %d reps, medians\n", n,
	       bytes / 1048576.0, reps);
	printf("memcpy bandwidth (same run, %.0f MiB): %.2f GB/s\n\n", bytes / 1048576.0, mc);

	const struct {
		enum qt_fmt f;
		uint32_t b;
	} fmts[] = {{QT_F32, 0},  {QT_F16, 0}, {QT_Q8, 32}, {QT_Q4, 32},
	            {QT_Q4, 128}, {QT_Q2, 32}, {QT_Q2, 128}};
	const size_t nf = sizeof fmts / sizeof fmts[0];
	uint64_t shape[2] = {n / 1024, 1024};
	if (shape[0] * shape[1] != n) {
		shape[0] = 1;
		shape[1] = n;
	}
	double q4acc_avx2 = -1;
	for (int impl = QUANT_IMPL_AVX2; impl >= QUANT_IMPL_SCALAR; impl--) {
		if (quant_set_impl((enum quant_impl)impl) != 0) {
			printf("[avx2] not available on this CPU/build\n\n");
			continue;
		}
		printf("[%s]\n", impl == QUANT_IMPL_AVX2 ? "avx2" : "scalar");
		printf("%-8s %9s | %-16s %-16s %-16s %-16s | GB/s (x memcpy)\n", "format",
		       "B/param", "encode-nearest", "encode-stoch", "decode", "decode+acc");
		for (size_t fi = 0; fi < nf; fi++) {
			qtensor q;
			qt_init(&q);
			double gb[4];
			for (int op = 0; op < 4; op++) {
				quant_params p = {fmts[fi].f, fmts[fi].b,
				                  op == 1 ? QUANT_STOCHASTIC : QUANT_NEAREST, 7};
				for (int r = 0; r < reps; r++) {
					uint64_t t0 = clk_mono_ns();
					int rc = 0;
					if (op <= 1)
						rc = quant_encode(&p, "bench", x, 2, shape, &q);
					else if (op == 2)
						rc = quant_decode(&q, out, n);
					else
						rc = quant_accumulate(&q, 0.25f, acc, n);
					t[r] = (double)(clk_mono_ns() - t0) * 1e-9;
					if (rc) {
						fprintf(stderr, "bench_codec: op %d failed: %d\n",
						        op, rc);
						return 1;
					}
				}
				if (op == 1) { /* leave a nearest encoding for the decoders */
					p.round = QUANT_NEAREST;
					quant_encode(&p, "bench", x, 2, shape, &q);
				}
				gb[op] = bytes / bench_median(t, reps) / 1e9;
			}
			char name[16];
			snprintf(name, sizeof name, "%s%s%u", qt_fmt_name(fmts[fi].f),
			         fmts[fi].b ? "/" : "", fmts[fi].b);
			if (!fmts[fi].b)
				snprintf(name, sizeof name, "%s", qt_fmt_name(fmts[fi].f));
			printf("%-8s %9.4f |", name, (double)qt_encoded_size(&q) / (double)n);
			for (int op = 0; op < 4; op++) {
				char cell[32];
				snprintf(cell, sizeof cell, "%6.2f (%.2fx)", gb[op], gb[op] / mc);
				printf(" %-16s", cell);
			}
			printf("\n");
			if (impl == QUANT_IMPL_AVX2 && fmts[fi].f == QT_Q4 && fmts[fi].b == 32)
				q4acc_avx2 = gb[3];
			qt_fini(&q);
		}
		printf("\n");
	}
	quant_set_impl(QUANT_IMPL_AUTO);
	g_sink = acc[n / 2] + out[n / 3];
	if (q4acc_avx2 >= 0)
		printf("q4/32 decode+accumulate (avx2, 1 core): %.2f GB/s = %.2fx memcpy "
		       "(target >= 0.25x): %s\n",
		       q4acc_avx2, q4acc_avx2 / mc, q4acc_avx2 / mc >= 0.25 ? "met" : "NOT met");
	free(x);
	free(out);
	free(acc);
	free(t);
	return 0;
}
