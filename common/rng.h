/* rng — small, seeded, reproducible random numbers (xoshiro256**).
 *
 * Same seed, same sequence on every machine: used wherever results must be
 * reproducible (data order, sampling, initialisation, stochastic rounding).
 * Not for cryptography (use OpenSSL's RAND_bytes). One rng per thread. */
#ifndef FL_RNG_H
#define FL_RNG_H
#include <stdint.h>

typedef struct rng {
	uint64_t s[4];
} rng;

void rng_seed(rng *r, uint64_t seed);
uint64_t rng_u64(rng *r);
/* Uniform in [0, n) without modulo bias; n > 0. */
uint64_t rng_below(rng *r, uint64_t n);
double rng_uniform(rng *r); /* [0, 1), 53 bits */
float rng_uniformf(rng *r); /* [0, 1), 24 bits */
double rng_normal(rng *r);  /* standard normal (Box-Muller, no caching) */
/* Gamma(shape, 1) by Marsaglia-Tsang; shape > 0. */
double rng_gamma(rng *r, double shape);
/* Fisher-Yates shuffle of n indices. */
void rng_shuffle_u32(rng *r, uint32_t *a, uint64_t n);

#endif
