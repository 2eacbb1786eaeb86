/* kernels_avx2 — AVX2+FMA inner loops for kernels.c (internal header).
 * Compiled with -mavx2 -mfma; callers must check kern_avx2_usable() at run
 * time and keep their portable path. The exp used here is a polynomial
 * approximation with a maximum relative error of a few ulp (see the .c). */
#ifndef FL_KERNELS_AVX2_H
#define FL_KERNELS_AVX2_H
#include <stddef.h>

/* 1 when built with AVX2 support and the CPU has AVX2 and FMA. */
int kern_avx2_usable(void);
/* x[i] = exp(x[i] - mx) for i < n; returns the sum of the new x (float). */
float kern_avx2_exp_sub_sum(float *x, int n, float mx);
/* Sum of exp(x[i] - mx) without storing. */
float kern_avx2_sum_exp_sub(const float *x, int n, float mx);
/* out[i] = silu(g[i]) * u[i]. */
void kern_avx2_swiglu(float *out, const float *g, const float *u, size_t n);

/* Dot products of one stored weight row (n elements, a multiple of the
 * type's block size; ggml layouts: F16, Q8_0 {f16 d; i8 q[32]}, Q4_0 {f16 d;
 * u8 q[16]}; F16 rows need n % 16 == 0) with N <= 4 float vectors x + k*ldx, read once:
 * out[k * ld_out] = sum_j w[j] * x_k[j]. type is GTYPE_F16/Q8_0/Q4_0;
 * returns 0, or -1 for another type (nothing written). */
int kern_avx2_row_dots(unsigned type, const void *row, int n, const float *x, int ldx, int N,
                       float *out, int ld_out);

#endif
