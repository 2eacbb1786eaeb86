/* sample — deterministic random numbers for the model engine (weight
 * initialisation, token sampling) and next-token selection from logits
 * (greedy, temperature, top-k).
 *
 * The generator is splitmix64: tiny, fast, fully determined by its seed on
 * every platform, which is what init-model's "deterministic by seed" and a
 * reproducible `generate --seed` need (not cryptographic). */
#ifndef FL_SAMPLE_H
#define FL_SAMPLE_H
#include <stdint.h>

typedef struct sample_rng {
	uint64_t s;
} sample_rng;

void sample_seed(sample_rng *r, uint64_t seed);
uint64_t sample_u64(sample_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double sample_uniform(sample_rng *r);
/* Standard normal (Box-Muller; two uniforms per call, no cached value, so the
 * sequence depends only on the seed and the number of calls). */
double sample_normal(sample_rng *r);

/* Chooses the next token from logits [V].
 *   temp <= 0: argmax (lowest id among equal maxima);
 *   else: draws from softmax(logits / temp) restricted to the top_k largest
 *         logits (top_k <= 0 or >= V: all V).
 * work: 2*V floats of caller scratch (no allocation here). Returns the id, or
 * -1 when V <= 0 or a logit is NaN. */
int sample_token(const float *logits, int V, float temp, int top_k, sample_rng *r, float *work);

#endif
