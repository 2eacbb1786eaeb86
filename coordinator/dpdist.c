/* dpdist — see dpdist.h. */
#include "dpdist.h"

#include "cli.h"
#include "config.h"
#include "ddg.h"
#include "err.h"
#include "fed.h"
#include "sagrid.h"

#include <inttypes.h>
#include <stdio.h>

#include <math.h>

double ddg_local_sigma(const ddg_acct *a)
{
	return a->z * a->c / sqrt((double)(a->shares ? a->shares : 1));
}

double ddg_rdp_prop14(double d2, double d1, double s, uint32_t n, uint64_t n_tau, uint64_t dim,
                      unsigned alpha)
{
	if (!(s > 0) || !n)
		return INFINITY;
	double tau = 0, e2 = 2 * M_PI * M_PI * s * s;
	for (uint64_t k = 1; k < n_tau; k++) {
		double t = exp(-e2 * (double)k / (double)(k + 1));
		tau += t;
		if (t < 1e-300)
			break; /* later terms only shrink further below the sum's ulp */
	}
	tau *= 10;
	double sd = sqrt((double)n) * s, l2 = d2 / sd, l1 = d1 / sd, a = alpha, d = (double)dim;
	double t1 = a / 2 * l2 * l2 + tau * d;
	double t2 = a / 2 * (l2 * l2 + 2 * l1 * tau + tau * tau * d);
	double t3 = a / 2 * (l2 + sqrt(d) * tau) * (l2 + sqrt(d) * tau);
	double m = t1 < t2 ? t1 : t2;
	return m < t3 ? m : t3;
}

double ddg_rdp_once(const ddg_acct *a, unsigned alpha)
{
	double d2 = ddg_round_bound(a->c, a->dim, a->beta);
	double d1 = d2 * fmin(sqrt((double)a->dim), d2);
	uint64_t nt = a->max_nodes > a->shares ? a->max_nodes : a->shares;
	return ddg_rdp_prop14(d2, d1, ddg_local_sigma(a), a->shares, nt, a->dim, alpha);
}

double ddg_rdp_subsampled(double q, unsigned alpha, double (*eps)(const void *, unsigned),
                          const void *ctx)
{
	double full = eps(ctx, alpha);
	if (q >= 1)
		return full;
	if (q <= 0)
		return 0;
	double a = alpha, lq = log(q), l1q = log1p(-q), la = lgamma(a + 1);
	/* (1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^eps(2)
	 *   + 3 sum_{l=3}^{a} C(a,l) (1-q)^(a-l) q^l e^((l-1) eps(l)) */
	double acc = (a - 1) * l1q + log1p((a - 1) * q);
	acc = dp_logsumexp(acc,
	                   la - lgamma(3) - lgamma(a - 1) + 2 * lq + (a - 2) * l1q + eps(ctx, 2));
	for (unsigned l = 3; l <= alpha; l++) {
		double L = l;
		acc = dp_logsumexp(acc, log(3.0) + la - lgamma(L + 1) - lgamma(a - L + 1) +
		                            (a - L) * l1q + L * lq + (L - 1) * eps(ctx, l));
	}
	double r = acc / (a - 1);
	if (r < 0)
		r = 0;
	return r < full ? r : full;
}

static double tab_cb(const void *ctx, unsigned alpha)
{
	return ((const double *)ctx)[alpha];
}

void ddg_rdp_compose(double rdp[DP_NORDERS], double q, const ddg_acct *a, uint64_t steps)
{
	unsigned amax = (unsigned)dp_orders[DP_NORDERS - 1];
	double tab[513]; /* the unsampled RDP at every integer order up to the largest */
	_Static_assert(sizeof tab / sizeof tab[0] >= 513, "orders up to 512");
	for (unsigned l = 2; l <= amax; l++)
		tab[l] = ddg_rdp_once(a, l);
	tab[0] = tab[1] = 0;
	for (int i = 0; i < DP_NORDERS; i++)
		rdp[i] +=
		    (double)steps * ddg_rdp_subsampled(q, (unsigned)dp_orders[i], tab_cb, tab);
}

double ddg_epsilon_for(double q, const ddg_acct *a, uint64_t rounds, double delta)
{
	double rdp[DP_NORDERS] = {0};
	ddg_rdp_compose(rdp, q, a, rounds);
	return dp_epsilon(rdp, delta, NULL);
}

double ddg_z_for(double q, const ddg_acct *a, uint64_t rounds, double delta, double target_eps)
{
	ddg_acct t = *a;
	double lo = 1e-3, hi = 1e4;
	t.z = hi;
	if (ddg_epsilon_for(q, &t, rounds, delta) > target_eps)
		return -1;
	while (hi - lo > 1e-6 * hi) {
		t.z = 0.5 * (lo + hi);
		if (ddg_epsilon_for(q, &t, rounds, delta) <= target_eps)
			hi = t.z;
		else
			lo = t.z;
	}
	return hi;
}

int dpd_check(const struct fed_opts *o, char *why, size_t whylen)
{
	if (o->priv.mode != DP_DISTRIBUTED)
		return 0;
	if (!o->secure.on) {
		snprintf(why, whylen,
		         "privacy.mode = distributed needs aggregation.secure = true (the nodes' "
		         "noise protects them only inside a secure sum)");
		return FL_EINVAL;
	}
	if (o->agg.weighting != AGG_W_UNIFORM) {
		snprintf(why, whylen,
		         "privacy.mode = distributed needs aggregation.weighting = uniform (a "
		         "weight would scale one node's influence past privacy.clip)");
		return FL_EINVAL;
	}
	return 0;
}

uint32_t dpd_bits(const struct fed_opts *o)
{
	unsigned b = qt_fmt_bits(o->train.uplink_fmt);
	return b <= 8 ? b : 0;
}

ddg_acct dpd_acct(const struct fed_opts *o, uint64_t dim)
{
	ddg_acct a = {.dim = dim,
	              .z = o->priv.z,
	              .shares = dp_noise_shares(&o->priv, o->nodes_per_round),
	              .max_nodes = o->priv.population,
	              .beta = DDG_BETA};
	/* + 1e-6: the nodes divide by the float step, which may be a rounding
	 * below range C / sqrt(dim) / L */
	a.c = sqrt((double)dim) * sag_levels(dpd_bits(o)) / o->secure.range * (1 + 1e-6);
	return a;
}

int dpd_plan(int64_t n, int64_t k, int64_t rounds, double delta, double eps, double z,
             const char *sdim, const char *sbits, const char *srange, const char *sshares)
{
	int64_t dim = 0, bits = 0, t = 0;
	double range = 0;
	if (!sdim || cfg_parse_int(sdim, &dim) || dim < 1 || dim > (int64_t)1 << 40 ||
	    cfg_parse_int(sbits, &bits) || (bits != 8 && bits != 4 && bits != 2) ||
	    cfg_parse_double(srange, &range) || !(range >= 0.01 && range <= 1e6) ||
	    cfg_parse_int(sshares, &t) || t < 0 || t > k || t == 1) {
		fprintf(stderr, "dp-plan: --mode distributed needs --dim D >= 1 (exchanged "
		                "elements); --bits 8, 4 or 2; --range in [0.01, 1e6]; --shares "
		                "T in 2..K (0 = ceil(0.8 K))\n");
		return CLI_USAGE;
	}
	dp_opts po = {.mode = DP_DISTRIBUTED, .shares = (uint32_t)t};
	ddg_acct a = {.dim = (uint64_t)dim,
	              .z = z,
	              .shares = dp_noise_shares(&po, (uint32_t)k),
	              .max_nodes = (uint64_t)n,
	              .beta = DDG_BETA};
	a.c = sqrt((double)dim) * sag_levels((uint32_t)bits) / range * (1 + 1e-6);
	double q = (double)k / (double)n;
	printf("distributed: sampling rate q = %" PRId64 "/%" PRId64 " = %.6g (Poisson), %" PRId64
	       " rounds, delta %g; %" PRId64 " elements, %" PRId64
	       "-bit levels, clip %.6g grid steps, %u noise shares\n",
	       k, n, q, rounds, delta, dim, bits, a.c, a.shares);
	if (eps > 0) {
		a.z = ddg_z_for(q, &a, (uint64_t)rounds, delta, eps);
		if (a.z < 0) {
			printf("epsilon %g is out of reach even with noise multiplier 10000\n",
			       eps);
			return CLI_FAIL;
		}
	}
	double e = ddg_epsilon_for(q, &a, (uint64_t)rounds, delta);
	printf("noise multiplier z = %.4f gives epsilon %.4f%s (central mode at this z: %.4f)\n",
	       a.z, e, eps > 0 ? " <= target" : "",
	       dp_epsilon_for(q, a.z, (uint64_t)rounds, delta));
	printf("each node adds discrete Gaussian noise of sd %.4g grid steps; m = %u bits for "
	       "%" PRId64 " inputs\n",
	       ddg_local_sigma(&a), ddg_mod_bits((uint32_t)bits, (uint32_t)k, ddg_local_sigma(&a)),
	       k);
	printf("against the coordinator (it knows who was sampled: no amplification), a node "
	       "in all %" PRId64 " rounds: epsilon %.4f\n",
	       rounds, ddg_epsilon_for(1, &a, (uint64_t)rounds, delta));
	return CLI_OK;
}
