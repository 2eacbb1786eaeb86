/* ddg — the distributed discrete Gaussian mechanism, node side
 * (privacy.mode = distributed; docs/PRIVACY.md, "Distributed mode").
 *
 * Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for
 * Federated Learning with Secure Aggregation", ICML 2021: every node clips
 * its update to L2 <= C, scales it onto the integer grid of step gamma,
 * rounds it stochastically *conditionally* (again until the rounded
 * vector's L2 norm is within the published bound, so the sensitivity on
 * the grid is a certainty), adds discrete Gaussian noise N_Z(0, sigma^2)
 * to every element and reduces mod 2^m before masking. The sum the
 * coordinator unmasks holds the sum of every survivor's noise.
 *
 * The sampler is exact (Canonne, Kamath, Steinke, "The Discrete Gaussian
 * for Differential Privacy", NeurIPS 2020, Algorithms 1-3): Bernoulli
 * trials of exp(-x) for rational x by integer arithmetic only, a discrete
 * Laplace proposal and rejection. sigma^2 is used as the rational
 * ceil(sigma^2 * 2^12) / 2^12 (never below the sigma asked for); a
 * proposal beyond 64 sigma + t is rejected outright (its acceptance
 * probability is below e^-1900, so the law differs from the exact one by
 * less than that in total variation) so that every integer fits 128 bits.
 *
 * Randomness comes from a ddg_src: OpenSSL RAND_bytes (ddg_src_crypto) in
 * the federation, or a seeded xoshiro stream (ddg_src_seeded) for tests.
 * Pure functions otherwise; one ddg_src per thread. */
#ifndef FL_DDG_H
#define FL_DDG_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* Largest sigma the sampler takes (grid units). */
#define DDG_SIGMA_MAX 1048576.0

typedef struct ddg_src {
	int crypto;        /* 1: RAND_bytes, buffered */
	int failed;        /* RAND_bytes failed: every draw since is unusable */
	uint64_t s[4];     /* xoshiro256** state when !crypto */
	uint8_t buf[4096]; /* crypto buffer */
	size_t pos;
} ddg_src;

/* init, no allocation. */
void ddg_src_crypto(ddg_src *s);
void ddg_src_seeded(ddg_src *s, uint64_t seed);
uint64_t ddg_u64(ddg_src *s);

/* One draw of N_Z(0, sigma^2): P(x) proportional to exp(-x^2 / (2 sigma^2))
 * over the integers. 0 < sigma <= DDG_SIGMA_MAX; sigma = 0 returns 0. */
int64_t ddg_sample(ddg_src *s, double sigma);

/* The sampler's own building blocks, exposed for the tests: Bernoulli
 * with probability exp(-num/den) (num >= 0, den > 0), and the discrete
 * Laplace of scale t (P(x) proportional to exp(-|x|/t), t >= 1). */
__extension__ typedef unsigned __int128 ddg_u128;
int ddg_bern_exp(ddg_src *s, ddg_u128 num, ddg_u128 den);
int64_t ddg_dlaplace(ddg_src *s, uint64_t t);

/* The rounding bound of Kairouz et al. (Theorem 1 / conditional
 * randomized rounding): a vector of L2 norm <= c (grid units) in d
 * dimensions, rounded stochastically, has norm <= this with probability
 * >= 1 - beta; the node re-rounds until it does, so the bound is exact:
 * min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2))). */
double ddg_round_bound(double c, uint64_t d, double beta);
/* beta of the conditional rounding (the paper's choice, e^-1/2). */
#define DDG_BETA 0.6065306597126334

/* Modulus bits for n inputs: every element of the sum is within
 * +-(n L + 16 sigma sqrt(n)) but for a 16-standard-deviation tail (a wrap
 * then costs accuracy, never privacy: the modular sum is a function of the
 * noised sum). 0 when beyond 32 bits. */
uint32_t ddg_mod_bits(uint32_t level_bits, uint32_t n, double sigma);
/* The limit the coordinator checks the unmasked sum against: n L + 8
 * sigma sqrt(n) (an honest sum exceeds it with probability < 2^-48 per
 * element; a sum unmasked with wrong shares, uniform mod 2^m, stays within
 * it with probability about 1/2 per element). */
int64_t ddg_sum_limit(uint32_t level_bits, uint32_t n, double sigma);

/* Node side: like sag_encode (common/sagrid.h) with w = w_max = 1 and one
 * step for all tensors, plus conditional rounding (re-round until the
 * level vector's L2 norm <= ddg_round_bound(clip / step, D, DDG_BETA), at
 * most 64 times, then the zero vector) and noise: x[e] = (level_e +
 * N_Z(0, sigma^2)) mod 2^m; the last element is 1 (no noise: the count).
 * The residual keeps what the levels did not send (the noise is not
 * residual). rs: the rounding stream (seeded); ns: the noise source
 * (crypto in the federation). FL_EINVAL on bad arguments, FL_ENUMERIC for
 * a non-finite update, FL_ECRYPTO when the noise source failed. */
int ddg_encode(const tensor *const *d, tensor *const *r, size_t nt, float step, double clip,
               uint32_t bits, uint32_t m, double sigma, uint64_t seed, ddg_src *ns, uint32_t *x,
               double *norm);

/* Coordinator side: the unmasked sum of n inputs must have the count n as
 * its last element and every other element within +-ddg_sum_limit.
 * 0 or FL_EPROTO with why. */
int ddg_check_sum(const uint32_t *sum, uint64_t dim, uint32_t m, uint32_t bits, uint32_t n,
                  double sigma, char *why, size_t whylen);

#endif
