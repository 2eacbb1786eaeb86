/* train_kern_avx2 — AVX2+FMA inner loops for train_kern.c (internal
 * header). Compiled with -mavx2 -mfma; train_kern.c checks
 * kern_avx2_usable() at run time and keeps its portable loops. */
#ifndef FL_TRAIN_KERN_AVX2_H
#define FL_TRAIN_KERN_AVX2_H
#include <stddef.h>

/* SwiGLU backward (see tk_swiglu_bwd) with a polynomial exp (Cephes-style
 * degree-5 on the range-reduced argument; relative error a few ulp;
 * arguments clamped to [-87.3, 88.7]). */
void tk_avx2_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, size_t n);

#endif
