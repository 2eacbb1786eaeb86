/* shamir — Shamir secret sharing over the prime field GF(p), p = 2^61 - 1
 * (a Mersenne prime: reduction is a shift and an add, products fit in 128
 * bits). A secret is a vector of field elements, each shared with its own
 * random polynomial of degree t - 1; share x-coordinates are 1..p-1.
 * secagg.h shares 32-byte secrets as 8 little-endian u32 words.
 *
 * Pure functions, no allocation except where stated. */
#ifndef FL_SHAMIR_H
#define FL_SHAMIR_H
#include <stddef.h>
#include <stdint.h>

#define SHAMIR_P       ((1ull << 61) - 1)
#define SHAMIR_MAX_T   2048 /* threshold cap (stack scratch of 3 * 8 * SHAMIR_MAX_T bytes) */
#define SHAMIR_MAX_LEN 16   /* field elements per secret */

/* Field arithmetic on values < p. */
uint64_t shamir_add(uint64_t a, uint64_t b);
uint64_t shamir_sub(uint64_t a, uint64_t b);
uint64_t shamir_mul(uint64_t a, uint64_t b);
uint64_t shamir_inv(uint64_t a); /* a != 0; a^(p-2) */

/* Polynomial c[0] + c[1] x + ... + c[t-1] x^(t-1) at x (Horner). */
uint64_t shamir_eval(const uint64_t *c, uint32_t t, uint64_t x);

/* Splits secret[0..len) (each < p) with threshold t: for each element a
 * polynomial with constant term the element and t - 1 coefficients from
 * OpenSSL's RAND_bytes (uniform below p by rejection). Writes the share of
 * holder h (x = xs[h]) to shares[h * len + e]. xs must be distinct, nonzero
 * and < p. 0, FL_EINVAL (bad t, len, secret element or x), FL_ECRYPTO
 * (RAND failed). Coefficients are wiped before return. */
int shamir_split(const uint64_t *secret, uint32_t len, uint32_t t, const uint64_t *xs,
                 uint32_t nholders, uint64_t *shares);

/* As shamir_split with caller-given coefficients coef[e * (t - 1) + j]
 * (the x^(j+1) coefficient of element e): for tests and known vectors. */
int shamir_split_coef(const uint64_t *secret, uint32_t len, uint32_t t, const uint64_t *coef,
                      const uint64_t *xs, uint32_t nholders, uint64_t *shares);

/* Lagrange weights at 0 for the t points xs (distinct, nonzero, < p):
 * secret = sum_h w[h] * y[h]. 0 or FL_EINVAL (repeated or bad x). */
int shamir_weights(const uint64_t *xs, uint32_t t, uint64_t *w);

/* Reconstructs secret[0..len) from t shares: holder h has x = xs[h] and
 * share elements ys[h * len + e]. 0 or FL_EINVAL. */
int shamir_combine(const uint64_t *xs, const uint64_t *ys, uint32_t t, uint32_t len,
                   uint64_t *secret);

/* Barycentric form, for evaluating one polynomial at many points: weights
 * w[h] = 1 / prod_{g != h} (xs[h] - xs[g]) in O(t^2) with one inversion
 * (scratch: 2t words). Then shamir_bary_eval gives the value at x of the
 * polynomial through (xs, ys) for each of len elements in O(t * len)
 * with one inversion (scratch: 3t words). xs distinct, nonzero, < p;
 * 0 or FL_EINVAL (also for a y >= p). */
int shamir_bary_weights(const uint64_t *xs, uint32_t t, uint64_t *w, uint64_t *scratch);
int shamir_bary_eval(const uint64_t *xs, const uint64_t *w, const uint64_t *ys, uint32_t t,
                     uint32_t len, uint64_t x, uint64_t *out, uint64_t *scratch);

/* Value at x of the polynomial through the t points (xs, ys) for each of the
 * len elements (ys laid out as in shamir_combine): out[e]. Used to check a
 * further share against t others. 0 or FL_EINVAL. */
int shamir_interpolate_at(const uint64_t *xs, const uint64_t *ys, uint32_t t, uint32_t len,
                          uint64_t x, uint64_t *out);

#endif
