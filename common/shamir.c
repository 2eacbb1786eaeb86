/* shamir — see shamir.h. Field GF(2^61 - 1). */
#include "shamir.h"

#include "err.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <string.h>

#define P SHAMIR_P

static uint64_t reduce128(unsigned __int128 v)
{
	/* v = hi * 2^61 + lo == hi + lo (mod 2^61 - 1) */
	uint64_t lo = (uint64_t)v & P;
	uint64_t hi = (uint64_t)(v >> 61);
	/* hi < 2^67 would not fit: v < p^2 < 2^122, so hi < 2^61 */
	uint64_t s = lo + hi;
	s = (s & P) + (s >> 61);
	return s >= P ? s - P : s;
}

uint64_t shamir_add(uint64_t a, uint64_t b)
{
	uint64_t s = a + b; /* < 2^62 */
	return s >= P ? s - P : s;
}

uint64_t shamir_sub(uint64_t a, uint64_t b)
{
	return a >= b ? a - b : a + P - b;
}

uint64_t shamir_mul(uint64_t a, uint64_t b)
{
	return reduce128((unsigned __int128)a * b);
}

uint64_t shamir_inv(uint64_t a)
{
	uint64_t r = 1, e = P - 2;
	while (e) {
		if (e & 1)
			r = shamir_mul(r, a);
		a = shamir_mul(a, a);
		e >>= 1;
	}
	return r;
}

uint64_t shamir_eval(const uint64_t *c, uint32_t t, uint64_t x)
{
	uint64_t acc = 0;
	for (uint32_t j = t; j-- > 0;)
		acc = shamir_add(shamir_mul(acc, x), c[j]);
	return acc;
}

static int check_xs(const uint64_t *xs, uint32_t n)
{
	for (uint32_t h = 0; h < n; h++) {
		if (xs[h] == 0 || xs[h] >= P)
			return FL_EINVAL;
		for (uint32_t g = 0; g < h; g++)
			if (xs[g] == xs[h])
				return FL_EINVAL;
	}
	return 0;
}

static int check_split(const uint64_t *secret, uint32_t len, uint32_t t, const uint64_t *xs,
                       uint32_t nholders)
{
	if (t == 0 || t > SHAMIR_MAX_T || len == 0 || len > SHAMIR_MAX_LEN || nholders < t)
		return FL_EINVAL;
	for (uint32_t e = 0; e < len; e++)
		if (secret[e] >= P)
			return FL_EINVAL;
	return check_xs(xs, nholders);
}

/* Shares of one element: coefficients ce[0..t-2] of x^1..x^(t-1). */
static void split_one(uint64_t secret, uint32_t t, const uint64_t *ce, const uint64_t *xs,
                      uint32_t nholders, uint64_t *shares, size_t stride)
{
	for (uint32_t h = 0; h < nholders; h++) {
		/* Horner over c[t-2] .. c[0], then the secret */
		uint64_t acc = 0;
		for (uint32_t j = t - 1; j-- > 0;)
			acc = shamir_add(shamir_mul(acc, xs[h]), ce[j]);
		shares[(size_t)h * stride] = shamir_add(shamir_mul(acc, xs[h]), secret);
	}
}

int shamir_split_coef(const uint64_t *secret, uint32_t len, uint32_t t, const uint64_t *coef,
                      const uint64_t *xs, uint32_t nholders, uint64_t *shares)
{
	int rc = check_split(secret, len, t, xs, nholders);
	if (rc)
		return rc;
	for (size_t j = 0; j < (size_t)len * (t - 1); j++)
		if (coef[j] >= P)
			return FL_EINVAL;
	for (uint32_t e = 0; e < len; e++)
		split_one(secret[e], t, coef + (size_t)e * (t - 1), xs, nholders, shares + e, len);
	return 0;
}

int shamir_split(const uint64_t *secret, uint32_t len, uint32_t t, const uint64_t *xs,
                 uint32_t nholders, uint64_t *shares)
{
	int rc = check_split(secret, len, t, xs, nholders);
	if (rc)
		return rc;
	/* coefficients for one element at a time: (t-1) words on the stack */
	uint64_t coef[SHAMIR_MAX_T];
	for (uint32_t e = 0; e < len; e++) {
		for (uint32_t j = 0; j + 1 < t; j++) {
			do {
				if (RAND_bytes((unsigned char *)&coef[j], sizeof coef[j]) != 1) {
					rc = FL_ECRYPTO;
					goto out;
				}
				coef[j] &= P; /* 61 bits; reject the one value p */
			} while (coef[j] >= P);
		}
		split_one(secret[e], t, coef, xs, nholders, shares + e, len);
	}
out:
	OPENSSL_cleanse(coef, sizeof coef);
	return rc;
}

/* Lagrange basis values at x for the points xs: w[h] = prod_{g != h}
 * (x - x_g) / (x_h - x_g). One inversion of the product of denominators. */
static int weights_at(const uint64_t *xs, uint32_t t, uint64_t x, uint64_t *w)
{
	if (t == 0 || t > SHAMIR_MAX_T || x >= P)
		return FL_EINVAL;
	int rc = check_xs(xs, t);
	if (rc)
		return rc;
	for (uint32_t h = 0; h < t; h++) {
		uint64_t num = 1, den = 1;
		for (uint32_t g = 0; g < t; g++) {
			if (g == h)
				continue;
			num = shamir_mul(num, shamir_sub(x, xs[g]));
			den = shamir_mul(den, shamir_sub(xs[h], xs[g]));
		}
		w[h] = shamir_mul(num, shamir_inv(den));
	}
	return 0;
}

int shamir_weights(const uint64_t *xs, uint32_t t, uint64_t *w)
{
	return weights_at(xs, t, 0, w);
}

int shamir_interpolate_at(const uint64_t *xs, const uint64_t *ys, uint32_t t, uint32_t len,
                          uint64_t x, uint64_t *out)
{
	uint64_t w[SHAMIR_MAX_T];
	if (len == 0 || len > SHAMIR_MAX_LEN)
		return FL_EINVAL;
	int rc = weights_at(xs, t, x, w);
	if (rc)
		return rc;
	for (uint32_t e = 0; e < len; e++) {
		uint64_t acc = 0;
		for (uint32_t h = 0; h < t; h++) {
			uint64_t y = ys[(size_t)h * len + e];
			if (y >= P)
				return FL_EINVAL;
			acc = shamir_add(acc, shamir_mul(w[h], y));
		}
		out[e] = acc;
	}
	return 0;
}

int shamir_combine(const uint64_t *xs, const uint64_t *ys, uint32_t t, uint32_t len,
                   uint64_t *secret)
{
	return shamir_interpolate_at(xs, ys, t, len, 0, secret);
}
