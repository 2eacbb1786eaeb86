/* kernels_simd — which vector inner loops kernels.c uses (internal header):
 * AVX2+FMA on x86-64 when the CPU has them (checked at run time,
 * kernels_avx2.c), NEON in every aarch64 build (kernels_neon.c), none
 * elsewhere; the same for train_kern.c. KERN_SIMD(name) / TK_SIMD(name) is
 * the chosen set's function. */
#ifndef FL_KERNELS_SIMD_H
#define FL_KERNELS_SIMD_H
#include "kernels_avx2.h"
#include "kernels_neon.h"
#include "train_kern_avx2.h"
#include "train_kern_neon.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#define KERN_SIMD(name) kern_neon_##name
#define TK_SIMD(name)   tk_neon_##name
static inline int kern_simd_usable(void)
{
	return 1;
}
#else
#define KERN_SIMD(name) kern_avx2_##name
#define TK_SIMD(name)   tk_avx2_##name
static inline int kern_simd_usable(void)
{
	return kern_avx2_usable();
}
#endif

#endif
