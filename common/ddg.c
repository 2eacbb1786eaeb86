/* ddg — see ddg.h. */
#include "ddg.h"

#include "err.h"
#include "rng.h"
#include "sagrid.h"

#include <inttypes.h>
#include <math.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

/* sigma^2 as the rational sn / DDG_SD */
#define DDG_SD 4096u

void ddg_src_crypto(ddg_src *s)
{
	memset(s, 0, sizeof *s);
	s->crypto = 1;
	s->pos = sizeof s->buf; /* empty */
}

void ddg_src_seeded(ddg_src *s, uint64_t seed)
{
	memset(s, 0, sizeof *s);
	rng g;
	rng_seed(&g, seed);
	memcpy(s->s, g.s, sizeof s->s);
}

uint64_t ddg_u64(ddg_src *s)
{
	if (!s->crypto) {
		rng g;
		memcpy(g.s, s->s, sizeof g.s);
		uint64_t v = rng_u64(&g);
		memcpy(s->s, g.s, sizeof s->s);
		return v;
	}
	if (s->pos + 8 > sizeof s->buf) {
		if (RAND_bytes(s->buf, (int)sizeof s->buf) != 1) {
			s->failed = 1;
			memset(s->buf, 0, sizeof s->buf);
		}
		s->pos = 0;
	}
	uint64_t v;
	memcpy(&v, s->buf + s->pos, 8);
	s->pos += 8;
	return v;
}

/* uniform in [0, n), n > 0, by rejection on the bit length (no bias) */
static ddg_u128 below128(ddg_src *s, ddg_u128 n)
{
	int bits = 0;
	for (ddg_u128 v = n - 1; v; v >>= 1)
		bits++;
	for (;;) {
		ddg_u128 v = ddg_u64(s);
		if (bits > 64)
			v |= (ddg_u128)ddg_u64(s) << 64;
		if (bits < 128)
			v &= (((ddg_u128)1 << bits) - 1);
		if (v < n)
			return v;
	}
}

/* Bernoulli(num / den), num <= den */
static int bern(ddg_src *s, ddg_u128 num, ddg_u128 den)
{
	return below128(s, den) < num;
}

/* CKS20 Algorithm 1, x = num / den in [0, 1]: K = 1, 2, ... while
 * Bernoulli(x / K) succeeds; the trial succeeds when K is odd. */
static int bern_exp_le1(ddg_src *s, ddg_u128 num, ddg_u128 den)
{
	uint64_t k = 1;
	while (k < (1u << 20) && bern(s, num, den * k))
		k++;
	return (int)(k & 1);
}

int ddg_bern_exp(ddg_src *s, ddg_u128 num, ddg_u128 den)
{
	ddg_u128 whole = num / den, rest = num % den;
	/* exp(-x) = exp(-1)^floor(x) * exp(-(x - floor(x))) */
	for (ddg_u128 i = 0; i < whole; i++)
		if (!bern_exp_le1(s, 1, 1))
			return 0;
	return bern_exp_le1(s, rest, den);
}

int64_t ddg_dlaplace(ddg_src *s, uint64_t t)
{
	for (;;) { /* CKS20 Algorithm 2 with s = 1 */
		uint64_t u = (uint64_t)below128(s, t);
		if (!ddg_bern_exp(s, u, t))
			continue;
		uint64_t v = 0;
		while (ddg_bern_exp(s, 1, 1))
			v++;
		uint64_t x = u + t * v;
		int neg = (int)(ddg_u64(s) & 1);
		if (neg && x == 0)
			continue;
		return neg ? -(int64_t)x : (int64_t)x;
	}
}

int64_t ddg_sample(ddg_src *s, double sigma)
{
	if (!(sigma > 0))
		return 0;
	if (sigma > DDG_SIGMA_MAX)
		sigma = DDG_SIGMA_MAX;
	ddg_u128 sn = (ddg_u128)ceil(sigma * sigma * DDG_SD); /* sigma^2 = sn / SD */
	uint64_t t = (uint64_t)floor(sigma) + 1;
	double cap = 64.0 * sigma + (double)t;
	for (;;) { /* CKS20 Algorithm 3 */
		int64_t y = ddg_dlaplace(s, t);
		uint64_t a = (uint64_t)(y < 0 ? -y : y);
		if ((double)a > cap)
			continue; /* accepted with probability < e^-1900: see ddg.h */
		/* (|y| - sigma^2 / t)^2 / (2 sigma^2)
		 *   = (|y| SD t - sn)^2 / (2 sn SD t^2) */
		ddg_u128 p = (ddg_u128)a * DDG_SD * t;
		ddg_u128 diff = p > sn ? p - sn : sn - p;
		ddg_u128 num = diff * diff, den = 2 * sn * DDG_SD * (ddg_u128)t * t;
		if (ddg_bern_exp(s, num, den))
			return y;
	}
}

double ddg_round_bound(double c, uint64_t d, double beta)
{
	double sd = sqrt((double)d);
	double b1 = c + sd;
	if (!(beta > 0) || beta >= 1)
		return b1;
	double b2 = sqrt(c * c + (double)d / 4 + sqrt(2 * log(1 / beta)) * (c + sd / 2));
	return b2 < b1 ? b2 : b1;
}

static double ddg_half_range(uint32_t level_bits, uint32_t n, double sigma, double k)
{
	return (double)n * sag_levels(level_bits) + k * sigma * sqrt((double)n);
}

uint32_t ddg_mod_bits(uint32_t level_bits, uint32_t n, double sigma)
{
	double b = ddg_half_range(level_bits, n, sigma, 16);
	if (!sag_levels(level_bits) || !n || !(sigma >= 0) || !isfinite(b))
		return 0;
	uint32_t m = 2;
	while (m <= 32 && ldexp(1, (int)m) < 2 * b + 1)
		m++;
	return m > 32 ? 0 : m;
}

int64_t ddg_sum_limit(uint32_t level_bits, uint32_t n, double sigma)
{
	return (int64_t)ceil(ddg_half_range(level_bits, n, sigma, 8));
}

int ddg_encode(const tensor *const *d, tensor *const *r, size_t nt, float step, double clip,
               uint32_t bits, uint32_t m, double sigma, uint64_t seed, ddg_src *ns, uint32_t *x,
               double *norm)
{
	uint32_t L = sag_levels(bits);
	if (!L || m < 2 || m > 32 || !(clip > 0) || !(step > 0) || !isfinite(step) ||
	    !(sigma >= 0) || sigma > DDG_SIGMA_MAX)
		return FL_EINVAL;
	double ss = 0;
	uint64_t D = 0;
	for (size_t t = 0; t < nt; t++) {
		if (r && r[t]->n != d[t]->n)
			return FL_EINVAL;
		D += d[t]->n;
		for (size_t k = 0; k < d[t]->n; k++) {
			double v = (double)d[t]->data[k] + (r ? (double)r[t]->data[k] : 0.0);
			ss += v * v;
		}
	}
	if (!isfinite(ss))
		return FL_ENUMERIC;
	double nrm = sqrt(ss);
	/* the same arithmetic as sag_encode with w = w_max = 1, so that sigma = 0
	 * gives its levels bit for bit (when the first rounding is within the
	 * bound, as it is but with probability beta) */
	double scale = nrm > clip ? clip / nrm : 1.0, inv = 1.0 / step, back = step;
	double bound = ddg_round_bound(clip / (double)step, D, DDG_BETA);
	uint64_t mask = m == 32 ? 0xffffffffull : (1ull << m) - 1;
	rng g;
	rng_seed(&g, seed);
	int ok = 0;
	for (int tries = 0; tries < 64 && !ok; tries++) {
		double ls = 0; /* conditional randomized rounding */
		size_t e = 0;
		for (size_t t = 0; t < nt; t++)
			for (size_t k = 0; k < d[t]->n; k++, e++) {
				double v =
				    ((double)d[t]->data[k] + (r ? (double)r[t]->data[k] : 0.0)) *
				    scale;
				double q = floor(v * inv + rng_uniform(&g));
				ls += q * q;
				x[e] = (uint32_t)(int32_t)q; /* |q| <= clip / step + 1 */
			}
		ok = sqrt(ls) <= bound;
	}
	size_t e = 0;
	for (size_t t = 0; t < nt; t++)
		for (size_t k = 0; k < d[t]->n; k++, e++) {
			int64_t lv = ok ? (int64_t)(int32_t)x[e] : 0;
			if (lv > (int64_t)L)
				lv = L;
			if (lv < -(int64_t)L)
				lv = -(int64_t)L;
			if (r) { /* not sent (the noise is not the node's to keep) */
				double v = ((double)d[t]->data[k] + (double)r[t]->data[k]) * scale;
				r[t]->data[k] = (float)(v - (double)lv * back);
			}
			x[e] = (uint32_t)((uint64_t)(lv + ddg_sample(ns, sigma)) & mask);
		}
	x[e] = 1;
	if (norm)
		*norm = nrm;
	return ns->failed ? FL_ECRYPTO : 0;
}

int ddg_check_sum(const uint32_t *sum, uint64_t dim, uint32_t m, uint32_t bits, uint32_t n,
                  double sigma, char *why, size_t whylen)
{
	if (!dim || !sag_levels(bits) || m < 2 || m > 32) {
		snprintf(why, whylen, "bad grid parameters");
		return FL_EINVAL;
	}
	int64_t W = sag_signed(sum[dim - 1], m);
	if (W != (int64_t)n) {
		snprintf(why, whylen, "count %" PRId64 " is not the %u inputs", W, n);
		return FL_EPROTO;
	}
	int64_t lim = ddg_sum_limit(bits, n, sigma);
	for (uint64_t e = 0; e + 1 < dim; e++) {
		int64_t v = sag_signed(sum[e], m);
		if (v > lim || v < -lim) {
			snprintf(why, whylen,
			         "element %" PRIu64 " is %" PRId64 ", beyond the bound %" PRId64, e,
			         v, lim);
			return FL_EPROTO;
		}
	}
	return 0;
}
