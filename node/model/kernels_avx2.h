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

#endif
