/* train_kern_neon — AArch64 NEON inner loops for train_kern.c (internal
 * header): the counterparts of train_kern_avx2.h, same contracts and the
 * same exp polynomial; every aarch64 build has them (kernels_simd.h). */
#ifndef FL_TRAIN_KERN_NEON_H
#define FL_TRAIN_KERN_NEON_H
#include <stddef.h>

void tk_neon_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, size_t n);

#endif
