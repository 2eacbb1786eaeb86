/* kernels_neon — AArch64 NEON inner loops for kernels.c (internal header):
 * the counterparts of kernels_avx2.h, same contracts, same exp polynomial
 * (kernels_neon.c). ASIMD is part of ARMv8-A, so an aarch64 build always
 * has them (build-time choice); kernels_simd.h picks the set for kernels.c. */
#ifndef FL_KERNELS_NEON_H
#define FL_KERNELS_NEON_H
#include <stddef.h>

float kern_neon_exp_sub_sum(float *x, int n, float mx);
float kern_neon_sum_exp_sub(const float *x, int n, float mx);
void kern_neon_swiglu(float *out, const float *g, const float *u, size_t n);
int kern_neon_row_dots(unsigned type, const void *row, int n, const float *x, int ldx, int N,
                       float *out, int ld_out);

#endif
