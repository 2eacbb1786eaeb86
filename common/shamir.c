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

/* out[h] = 1 / v[h] for t nonzero values with one inversion (prefix
 * products); pre has room for t words. */
static void batch_inverse(const uint64_t *v, uint32_t t, uint64_t *out, uint64_t *pre)
{
	uint64_t acc = 1;
	for (uint32_t h = 0; h < t; h++) {
		pre[h] = acc;
		acc = shamir_mul(acc, v[h]);
	}
	uint64_t inv = shamir_inv(acc);
	for (uint32_t h = t; h-- > 0;) {
		out[h] = shamir_mul(inv, pre[h]);
		inv = shamir_mul(inv, v[h]);
	}
}

int shamir_bary_weights(const uint64_t *xs, uint32_t t, uint64_t *w, uint64_t *scratch)
{
	if (t == 0 || t > SHAMIR_MAX_T)
		return FL_EINVAL;
	int rc = check_xs(xs, t);
	if (rc)
		return rc;
	/* den[h] = prod_{g != h} (x_h - x_g), nonzero since the x are distinct */
	for (uint32_t h = 0; h < t; h++) {
		uint64_t den = 1;
		for (uint32_t g = 0; g < t; g++)
			if (g != h)
				den = shamir_mul(den, shamir_sub(xs[h], xs[g]));
		scratch[h] = den;
	}
	batch_inverse(scratch, t, w, scratch + t);
	return 0;
}

int shamir_bary_eval(const uint64_t *xs, const uint64_t *w, const uint64_t *ys, uint32_t t,
                     uint32_t len, uint64_t x, uint64_t *out, uint64_t *scratch)
{
	if (t == 0 || t > SHAMIR_MAX_T || len == 0 || len > SHAMIR_MAX_LEN || x >= P)
		return FL_EINVAL;
	for (uint32_t h = 0; h < t; h++) {
		if (xs[h] != x)
			continue;
		for (uint32_t e = 0; e < len; e++)
			out[e] = ys[(size_t)h * len + e];
		return 0;
	}
	/* p(x) = l(x) * sum_h w_h / (x - x_h) * y_h,  l(x) = prod_h (x - x_h) */
	uint64_t *d = scratch, *c = scratch + t, *pre = scratch + 2 * (size_t)t;
	uint64_t l = 1;
	for (uint32_t h = 0; h < t; h++) {
		d[h] = shamir_sub(x, xs[h]);
		l = shamir_mul(l, d[h]);
	}
	batch_inverse(d, t, c, pre);
	for (uint32_t h = 0; h < t; h++)
		c[h] = shamir_mul(shamir_mul(l, w[h]), c[h]);
	for (uint32_t e = 0; e < len; e++) {
		uint64_t acc = 0;
		for (uint32_t h = 0; h < t; h++) {
			uint64_t y = ys[(size_t)h * len + e];
			if (y >= P)
				return FL_EINVAL;
			acc = shamir_add(acc, shamir_mul(c[h], y));
		}
		out[e] = acc;
	}
	return 0;
}

int shamir_weights(const uint64_t *xs, uint32_t t, uint64_t *w)
{
	/* Lagrange weights at 0: w_h * l(0) / (0 - x_h) */
	uint64_t bw[SHAMIR_MAX_T], scratch[3 * SHAMIR_MAX_T];
	int rc = shamir_bary_weights(xs, t, bw, scratch);
	if (rc)
		return rc;
	uint64_t *d = scratch, *inv = scratch + t, l = 1;
	for (uint32_t h = 0; h < t; h++) {
		d[h] = shamir_sub(0, xs[h]);
		l = shamir_mul(l, d[h]);
	}
	batch_inverse(d, t, inv, scratch + 2 * (size_t)t);
	for (uint32_t h = 0; h < t; h++)
		w[h] = shamir_mul(shamir_mul(l, bw[h]), inv[h]);
	return 0;
}

int shamir_interpolate_at(const uint64_t *xs, const uint64_t *ys, uint32_t t, uint32_t len,
                          uint64_t x, uint64_t *out)
{
	uint64_t w[SHAMIR_MAX_T], scratch[3 * SHAMIR_MAX_T];
	int rc = shamir_bary_weights(xs, t, w, scratch);
	if (rc == 0)
		rc = shamir_bary_eval(xs, w, ys, t, len, x, out, scratch);
	return rc;
}

int shamir_combine(const uint64_t *xs, const uint64_t *ys, uint32_t t, uint32_t len,
                   uint64_t *secret)
{
	return shamir_interpolate_at(xs, ys, t, len, 0, secret);
}
