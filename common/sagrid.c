/* sagrid — see sagrid.h. */
#include "sagrid.h"

#include "err.h"
#include "rng.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

uint32_t sag_levels(uint32_t bits)
{
	if (bits < 2 || bits > 16)
		return 0;
	return (1u << (bits - 1)) - 1;
}

int sag_steps_initial(const size_t *numel, size_t nt, double clip, double range, uint32_t bits,
                      float *steps)
{
	uint32_t L = sag_levels(bits);
	double D = 0;
	for (size_t t = 0; t < nt; t++)
		D += (double)numel[t];
	if (!L || !(D > 0) || !(clip > 0) || !(range > 0) || !isfinite(clip * range))
		return FL_EINVAL;
	float s = (float)(range * clip / sqrt(D) / L);
	if (!(s > 0) || !isfinite(s))
		return FL_EINVAL;
	for (size_t t = 0; t < nt; t++)
		steps[t] = s;
	return 0;
}

int sag_steps_from_mean(const tensor *const *mean, size_t nt, double clip, double range,
                        uint32_t bits, float *steps)
{
	size_t D = 0;
	for (size_t t = 0; t < nt; t++)
		D += mean[t]->n;
	float init;
	size_t one = D;
	int rc = sag_steps_initial(&one, 1, clip, range, bits, &init);
	if (rc)
		return rc;
	uint32_t L = sag_levels(bits);
	for (size_t t = 0; t < nt; t++) {
		double ss = 0;
		for (size_t k = 0; k < mean[t]->n; k++)
			ss += (double)mean[t]->data[k] * mean[t]->data[k];
		double rms = mean[t]->n ? sqrt(ss / (double)mean[t]->n) : 0;
		double s = range * rms / L;
		if (!isfinite(s) || s < init / 64.0)
			s = init / 64.0;
		steps[t] = (float)s;
	}
	return 0;
}

int64_t sag_signed(uint32_t v, uint32_t m)
{
	uint64_t mod = 1ull << m, half = mod >> 1;
	uint64_t u = (uint64_t)v & (mod - 1);
	return u >= half ? (int64_t)u - (int64_t)mod : (int64_t)u;
}

int sag_encode(const tensor *const *d, tensor *const *r, size_t nt, const float *steps, double clip,
               uint32_t bits, uint32_t w, uint32_t w_max, uint32_t m, uint64_t seed, uint32_t *x,
               double *norm)
{
	uint32_t L = sag_levels(bits);
	if (!L || w < 1 || w > w_max || w_max > L || m < 2 || m > 32 || !(clip > 0))
		return FL_EINVAL;
	double ss = 0;
	for (size_t t = 0; t < nt; t++) {
		if (r && r[t]->n != d[t]->n)
			return FL_EINVAL;
		if (!(steps[t] > 0) || !isfinite(steps[t]))
			return FL_EINVAL;
		for (size_t k = 0; k < d[t]->n; k++) {
			double v = (double)d[t]->data[k] + (r ? (double)r[t]->data[k] : 0.0);
			ss += v * v;
		}
	}
	if (!isfinite(ss))
		return FL_ENUMERIC;
	double nrm = sqrt(ss);
	double scale = nrm > clip ? clip / nrm : 1.0;
	double fold = (double)w / (double)w_max; /* the weight, folded in */
	uint64_t mask = m == 32 ? 0xffffffffull : (1ull << m) - 1;
	rng g;
	rng_seed(&g, seed);
	size_t e = 0;
	for (size_t t = 0; t < nt; t++) {
		double inv = fold / steps[t], back = steps[t] / fold;
		for (size_t k = 0; k < d[t]->n; k++, e++) {
			double v =
			    ((double)d[t]->data[k] + (r ? (double)r[t]->data[k] : 0.0)) * scale;
			double q = floor(v * inv + rng_uniform(&g));
			if (q > L)
				q = L;
			if (q < -(double)L)
				q = -(double)L;
			int64_t lv = (int64_t)q;
			if (r) /* not sent, in the unweighted domain */
				r[t]->data[k] = (float)(v - (double)lv * back);
			x[e] = (uint32_t)((uint64_t)lv & mask);
		}
	}
	x[e] = w & (uint32_t)mask;
	if (norm)
		*norm = nrm;
	return 0;
}

int sag_decode(const uint32_t *sum, uint32_t m, uint32_t w_max, const float *steps,
               tensor *const *out, size_t nt, uint64_t *wsum)
{
	int64_t ws = 0;
	size_t e = 0;
	for (size_t t = 0; t < nt; t++)
		e += out[t]->n;
	ws = sag_signed(sum[e], m);
	if (ws <= 0)
		return FL_EPROTO;
	e = 0;
	for (size_t t = 0; t < nt; t++) {
		double s = (double)w_max * steps[t];
		for (size_t k = 0; k < out[t]->n; k++, e++)
			out[t]->data[k] = (float)((double)sag_signed(sum[e], m) * s);
	}
	*wsum = (uint64_t)ws;
	return 0;
}

int sag_check_sum(const uint32_t *sum, uint64_t dim, uint32_t m, uint32_t bits, uint32_t n,
                  uint32_t w_max, char *why, size_t whylen)
{
	uint32_t L = sag_levels(bits);
	if (!dim || !L || m < 2 || m > 32) {
		snprintf(why, whylen, "bad grid parameters");
		return FL_EINVAL;
	}
	int64_t W = sag_signed(sum[dim - 1], m);
	if (W < (int64_t)n || W > (int64_t)n * w_max) {
		snprintf(why, whylen, "weight sum %" PRId64 " outside [%u, %" PRIu64 "]", W, n,
		         (uint64_t)n * w_max);
		return FL_EPROTO;
	}
	int64_t lim = (int64_t)n * (int64_t)L;
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
