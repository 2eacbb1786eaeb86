/* bench_util — what every benchmark needs: the median of a few timings (the
 * machines are noisy; figures are medians) and the reference sgemm peak
 * measured in the same run. Header-only; benchmarks are single files. */
#ifndef FL_BENCH_UTIL_H
#define FL_BENCH_UTIL_H
#include "clock.h"

#include <cblas.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int bench_cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* reps clamped to 1..16 (the timing arrays hold 16). */
static inline int bench_reps(int reps)
{
	return reps > 16 ? 16 : reps < 1 ? 1 : reps;
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

/* Bytes per second of one core's AES-256-GCM through EVP, on 16 KiB
 * records as TLS cuts them: the median of reps (at most 16) passes over
 * 64 MiB. */
static inline double bench_aesgcm_rate(int reps)
{
	const size_t total = 64u << 20, rec = 16384;
	uint8_t *src = malloc(total), *dst = malloc(rec + 16), key[32], iv[12], tag[16];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	double r[16];
	if (!src || !dst || !ctx) {
		free(src);
		free(dst);
		EVP_CIPHER_CTX_free(ctx);
		return 0;
	}
	RAND_bytes(key, sizeof key);
	RAND_bytes(iv, sizeof iv);
	memset(src, 0x5a, total);
	EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL);
	reps = bench_reps(reps);
	for (int k = 0; k < reps; k++) {
		double t0 = clk_seconds();
		for (size_t off = 0; off < total; off += rec) {
			int n = 0;
			iv[11]++;
			EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv);
			EVP_EncryptUpdate(ctx, dst, &n, src + off, (int)rec);
			EVP_EncryptFinal_ex(ctx, dst + n, &n);
			EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag);
		}
		r[k] = (double)total / (clk_seconds() - t0);
	}
	EVP_CIPHER_CTX_free(ctx);
	free(src);
	free(dst);
	return bench_median(r, reps);
}

/* Bytes per second of memcpy between two 64 MiB buffers (one core, both
 * touched first): the median of reps (at most 16) copies. */
static inline double bench_memcpy_rate(int reps)
{
	const size_t n = 64u << 20;
	uint8_t *a = malloc(n), *b = malloc(n);
	double r[16];
	if (!a || !b) {
		free(a);
		free(b);
		return 0;
	}
	memset(a, 1, n);
	memset(b, 2, n);
	reps = bench_reps(reps);
	for (int k = 0; k < reps; k++) {
		double t0 = clk_seconds();
		memcpy(b, a, n);
		r[k] = (double)n / (clk_seconds() - t0);
		a[k] = b[n - 1 - (size_t)k]; /* keep the copy observable */
	}
	free(a);
	free(b);
	return bench_median(r, reps);
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
