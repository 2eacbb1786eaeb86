/* bench_util — what every benchmark needs: the median of a few timings (the
 * machines are noisy; figures are medians) and the reference sgemm peak
 * measured in the same run. Header-only; benchmarks are single files. */
#ifndef FL_BENCH_UTIL_H
#define FL_BENCH_UTIL_H
#include "clock.h"

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static inline int bench_cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Median of v[0..n) (sorts v in place). */
static inline double bench_median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, bench_cmp_d);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* GFLOP/s of a 2048^3 single-precision GEMM through the BLAS on `threads`
 * threads: the median of reps (at most 16) timed runs after one warm-up.
 * Leaves the BLAS on one thread, the engine's setting. */
static inline double bench_sgemm_peak(int threads, int reps)
{
	const int n = 2048;
	float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n);
	float *c = malloc(sizeof(float) * n * n);
	double t[16];
	if (!a || !b || !c) {
		free(a);
		free(b);
		free(c);
		return 0;
	}
	for (size_t i = 0; i < (size_t)n * n; i++) {
		a[i] = (float)(i % 17) * 0.01f;
		b[i] = (float)(i % 13) * 0.01f;
	}
#ifdef OPENBLAS_VERSION
	openblas_set_num_threads(threads);
#else
	(void)threads;
#endif
	if (reps > 16)
		reps = 16;
	if (reps < 1)
		reps = 1;
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
	for (int r = 0; r < reps; r++) {
		uint64_t t0 = clk_mono_ns();
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c,
		            n);
		t[r] = 2.0 * n * n * (double)n / ((clk_mono_ns() - t0) * 1e-9) / 1e9;
	}
#ifdef OPENBLAS_VERSION
	openblas_set_num_threads(1);
#endif
	free(a);
	free(b);
	free(c);
	return bench_median(t, reps);
}

/* The ~110M reference shape's vocabulary in the shared data
 * ($FEDLORA_SHARED/data/vocab/ggml-vocab-llama-spm.gguf, FEDLORA_SHARED
 * defaulting to ../../shared), written into out. */
static inline const char *bench_default_vocab(char *out, size_t len)
{
	const char *sh = getenv("FEDLORA_SHARED");
	snprintf(out, len, "%s/data/vocab/ggml-vocab-llama-spm.gguf", sh ? sh : "../../shared");
	return out;
}

#endif
