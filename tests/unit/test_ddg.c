/* ddg / dpdist: distributed DP (privacy.mode = distributed).
 *
 * Sampler, against exact probabilities computed here in double precision:
 *  - Bernoulli(exp(-x)) for x in {0, 0.3, 1, 2.5, 7/3}: frequency within 5
 *    standard errors of exp(-x) (200000 trials each);
 *  - the discrete Gaussian at sigma 0.5, 1, 3.7 and 50 (and the
 *    continuous Gaussian of the central mode): chi-square of 100000 draws
 *    against the exact pmf exp(-x^2 / 2 s^2) / sum_y exp(-y^2 / 2 s^2)
 *    (s^2 the rational the sampler uses), bins pooled to an expectation of
 *    >= 20 each; threshold: the 0.999 quantile (Wilson-Hilferty) of
 *    chi-square with bins - 1 degrees of freedom; mean and variance within
 *    5 standard errors.
 * Accountant, against independent numerical computations:
 *  - Proposition 14 in one dimension is an upper bound of the exact Renyi
 *    divergence between the sums of n discrete Gaussians shifted by D and
 *    not, computed by convolution of the pmfs (n 2..5, sigma 0.5..2,
 *    D 1..3, orders 2..8); at sigma >= 1.5 (tau < 1e-8) it matches the
 *    exact value to 1e-3 relative (the sum is then a discrete Gaussian of
 *    variance n sigma^2 up to tau);
 *  - with tau = 0 and q = 1 it is the Gaussian's a D^2 / (2 n s^2);
 *    the Zhu-Wang subsampled bound is never below the exact sampled
 *    Gaussian RDP (dp_rdp_step, Mironov et al.) and within 2x of it at
 *    the order that decides epsilon here (it is a generic bound: the
 *    factor is the price of not having the sampled Gaussian's exact
 *    analysis for the sum of discrete Gaussians);
 *  - the experiment's setting (q 0.25, 8 rounds, delta 1e-5): the
 *    distributed z for epsilon 4 is above the central one by at least the
 *    rounding inflation and at most 40 %.
 * Encoder: levels within the bound, noise of the announced sd (sample sd
 *    of noised - clean levels within 5 standard errors of sigma; mean 0),
 *    the count element, sigma = 0 bit-identical to the plain secure grid
 *    (sag_encode, unit weight); the coordinator's sum check accepts a sum
 *    of three noised inputs and refuses a wrong count and uniform garbage. */
#include "testutil.h"

#include "ddg.h"
#include "dp.h"
#include "dpdist.h"
#include "err.h"
#include "rng.h"
#include "sagrid.h"
#include "tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* 0.999 quantile of chi-square with k dof (Wilson-Hilferty) */
static double chi2_q999(double k)
{
	double z = 3.090232, h = 2 / (9 * k);
	double v = 1 - h + z * sqrt(h);
	return k * v * v * v;
}

static void test_bern_exp(void **st)
{
	(void)st;
	ddg_src s;
	ddg_src_seeded(&s, 11);
	const unsigned long long nd[][2] = {{0, 1}, {3, 10}, {1, 1}, {5, 2}, {7, 3}};
	for (size_t i = 0; i < sizeof nd / sizeof nd[0]; i++) {
		const int n = 200000;
		int hit = 0;
		for (int k = 0; k < n; k++)
			hit += ddg_bern_exp(&s, nd[i][0], nd[i][1]);
		double p = exp(-(double)nd[i][0] / (double)nd[i][1]);
		double se = sqrt(p * (1 - p) / n) + 1e-12;
		assert_true(fabs((double)hit / n - p) <= 5 * se);
	}
}

/* chi-square of draws (values in v) against pmf(x) = w(x) / Z */
static void chi_square(const int64_t *v, int n, double (*w)(double, double), double par, int64_t lo,
                       int64_t hi, double Z)
{
	/* bins: one per integer in [lo, hi], tails pooled into the ends; then
	 * neighbours merged until every expectation is >= 20 */
	int nb = (int)(hi - lo + 1);
	double *e = calloc((size_t)nb, sizeof *e), *o = calloc((size_t)nb, sizeof *o);
	assert_non_null(e);
	assert_non_null(o);
	double below = 0.5, above = 0.5; /* P(x < lo), P(x > hi): by complement */
	double inside = 0;
	for (int64_t x = lo; x <= hi; x++) {
		e[x - lo] = w((double)x, par) / Z;
		inside += e[x - lo];
	}
	below = above = (1 - inside) / 2; /* symmetric laws */
	e[0] += below;
	e[nb - 1] += above;
	for (int i = 0; i < n; i++) {
		int64_t x = v[i] < lo ? lo : v[i] > hi ? hi : v[i];
		o[x - lo] += 1;
	}
	double chi = 0, ce = 0, co = 0;
	int bins = 0;
	for (int b = 0; b < nb; b++) {
		ce += e[b] * n;
		co += o[b];
		if (ce >= 20 || b == nb - 1) {
			chi += (co - ce) * (co - ce) / ce;
			bins++;
			ce = co = 0;
		}
	}
	assert_true(bins >= 2);
	print_message("chi-square %.2f with %d bins (0.999 quantile %.2f)\n", chi, bins,
	              chi2_q999(bins - 1));
	assert_true(chi <= chi2_q999(bins - 1));
	free(e);
	free(o);
}

static double wdg(double x, double s2)
{
	return exp(-x * x / (2 * s2));
}

static void test_dgauss(void **st)
{
	(void)st;
	const double sig[] = {0.5, 1, 3.7, 50};
	const int n = 100000;
	int64_t *v = malloc(n * sizeof *v);
	assert_non_null(v);
	for (size_t i = 0; i < sizeof sig / sizeof sig[0]; i++) {
		ddg_src s;
		ddg_src_seeded(&s, 100 + i);
		double s2 = ceil(sig[i] * sig[i] * 4096) / 4096; /* what the sampler uses */
		double Z = 0, var = 0, m4 = 0;
		int64_t R = (int64_t)ceil(40 * sig[i]) + 2;
		for (int64_t x = -R; x <= R; x++) {
			Z += wdg((double)x, s2);
			var += (double)x * (double)x * wdg((double)x, s2);
			m4 += pow((double)x, 4) * wdg((double)x, s2);
		}
		var /= Z;
		m4 /= Z;
		double sum = 0, sq = 0;
		for (int k = 0; k < n; k++) {
			v[k] = ddg_sample(&s, sig[i]);
			sum += (double)v[k];
			sq += (double)v[k] * (double)v[k];
		}
		int64_t lim = (int64_t)ceil(4 * sig[i]);
		chi_square(v, n, wdg, s2, -lim, lim, Z);
		assert_true(fabs(sum / n) <= 5 * sqrt(var / n));
		assert_true(fabs(sq / n - var) <= 5 * sqrt((m4 - var * var) / n));
	}
	free(v);
	/* sigma 0 adds nothing */
	ddg_src s;
	ddg_src_seeded(&s, 1);
	assert_int_equal(ddg_sample(&s, 0), 0);
}

static double wcg(double x, double sd)
{ /* probability of [x - 1/2, x + 1/2) under N(0, sd^2), times 1 (Z = 1) */
	return 0.5 * (erf((x + 0.5) / (sd * M_SQRT2)) - erf((x - 0.5) / (sd * M_SQRT2)));
}

/* the central mode's continuous Gaussian, binned at integer + 1/2 */
static void test_cgauss(void **st)
{
	(void)st;
	dp_rng *r = NULL;
	uint8_t key[32] = {7};
	assert_int_equal(dp_rng_new(key, &r), 0);
	const int n = 100000;
	const double sd = 3.0;
	int64_t *v = malloc(n * sizeof *v);
	assert_non_null(v);
	for (int k = 0; k < n; k++)
		v[k] = (int64_t)floor(sd * dp_rng_gauss(r) + 0.5);
	chi_square(v, n, wcg, sd, -12, 12, 1.0);
	free(v);
	dp_rng_free(r);
}

/* exact D_alpha(P(. - d) || P) of the sum of n discrete Gaussians (1-D) */
static double exact_rdp(int n, double s, int d, unsigned alpha)
{
	int R = (int)ceil(30 * s) + 1, W = 2 * R + 1;
	int len = W;
	double *p = calloc((size_t)(n * W + 8), sizeof *p), *q = NULL;
	double Z = 0;
	for (int x = -R; x <= R; x++)
		Z += wdg(x, s * s);
	for (int x = -R; x <= R; x++)
		p[x + R] = wdg(x, s * s) / Z;
	for (int k = 1; k < n; k++) { /* convolve with one more */
		q = calloc((size_t)(len + W), sizeof *q);
		for (int i = 0; i < len; i++)
			for (int j = 0; j < W; j++)
				q[i + j] += p[i] * (wdg(j - R, s * s) / Z);
		free(p);
		p = q;
		len += W - 1;
	}
	double a = alpha, acc = 0;
	for (int i = 0; i < len; i++) {
		double pi = p[i], ps = (i - d >= 0 && i - d < len) ? p[i - d] : 0;
		if (pi > 0 && ps > 0)
			acc += exp(a * log(ps) + (1 - a) * log(pi));
	}
	free(p);
	return log(acc) / (a - 1);
}

static void test_prop14(void **st)
{
	(void)st;
	const double sig[] = {0.5, 1, 1.5, 2};
	for (int n = 2; n <= 5; n++)
		for (size_t i = 0; i < 4; i++)
			for (int d = 1; d <= 3; d++)
				for (unsigned a = 2; a <= 8; a *= 2) {
					double ex = exact_rdp(n, sig[i], d, a);
					double b = ddg_rdp_prop14(d, d, sig[i], (uint32_t)n,
					                          (uint64_t)n, 1, a);
					if (!(ex <= b * (1 + 1e-9)) ||
					    (sig[i] >= 1.5 && !(b - ex <= 1e-3 * b)))
						print_message("n %d sigma %g D %d order %u: exact "
						              "%.8g bound %.8g\n",
						              n, sig[i], d, a, ex, b);
					assert_true(ex <= b * (1 + 1e-9));
					if (sig[i] >= 1.5)
						assert_true(b - ex <= 1e-3 * b);
				}
	/* no tau (n = 1): the Gaussian's a D^2 / (2 s^2) */
	assert_true(fabs(ddg_rdp_prop14(3, 3, 2, 1, 1, 10, 5) - 5 * 9 / 8.0) < 1e-12);
}

static double gauss_cb(const void *ctx, unsigned a)
{
	double s = *(const double *)ctx;
	return a / (2 * s * s);
}

static void test_subsampled(void **st)
{
	(void)st;
	const double qs[] = {0.01, 0.1, 0.25, 0.5};
	const double zs[] = {0.8, 1.3, 3.4};
	for (size_t i = 0; i < 4; i++)
		for (size_t j = 0; j < 3; j++)
			for (unsigned a = 2; a <= 64; a++) {
				double ex = dp_rdp_step(qs[i], zs[j], a);
				double b = ddg_rdp_subsampled(qs[i], a, gauss_cb, &zs[j]);
				assert_true(b >= ex * (1 - 1e-9));
				assert_true(b <= gauss_cb(&zs[j], a) * (1 + 1e-12));
			}
	/* the orders deciding epsilon in the experiment's setting: within 25 % */
	double z = 1.314, q = 0.25;
	int best = -1;
	double rdp[DP_NORDERS] = {0};
	dp_rdp_compose(rdp, q, z, 8);
	dp_epsilon(rdp, 1e-5, &best);
	assert_true(best >= 0);
	unsigned a = (unsigned)dp_orders[best];
	double ex = dp_rdp_step(q, z, a), b = ddg_rdp_subsampled(q, a, gauss_cb, &z);
	print_message("order %u: sampled Gaussian %.5f, Zhu-Wang bound %.5f\n", a, ex, b);
	assert_true(b <= 2 * ex);
}

static void test_plan(void **st)
{
	(void)st;
	/* FFA-LoRA rank 16 on attn_q, attn_v of the 4-layer, 128-wide base:
	 * 16384 exchanged elements; q4 (L = 7), range 4: c = sqrt(D) L / 4 */
	ddg_acct a = {.dim = 16384, .shares = 40, .max_nodes = 200, .beta = DDG_BETA};
	a.c = sqrt(16384.0) * 7 / 4;
	double zc = dp_z_for(0.25, 8, 1e-5, 4), zd = ddg_z_for(0.25, &a, 8, 1e-5, 4);
	double infl = ddg_round_bound(a.c, a.dim, DDG_BETA) / a.c;
	print_message("z central %.4f, distributed %.4f, rounding inflation %.4f\n", zc, zd, infl);
	assert_true(zd >= zc * infl);
	assert_true(zd <= zc * 1.4);
	assert_true(infl < 1.06);
	a.z = zd;
	assert_true(ddg_epsilon_for(0.25, &a, 8, 1e-5) <= 4);
	assert_true(ddg_local_sigma(&a) > 1); /* tau negligible at this sigma */
	/* small sigma: tau makes the bound worse than central, never better */
	ddg_acct b = {.dim = 100, .c = 2, .z = 0.5, .shares = 10, .max_nodes = 10, .beta = 0};
	double d2 = ddg_round_bound(2, 100, 0), s = ddg_local_sigma(&b);
	double no_tau = ddg_rdp_prop14(d2, d2 * fmin(10, d2), s, 10, 1, 100, 4);
	assert_true(ddg_rdp_once(&b, 4) > no_tau);
}

static tensor *mk(tset *s, const char *name, uint64_t n, double scale, uint64_t seed)
{
	uint64_t shape[2] = {1, n};
	tensor *t = NULL;
	assert_int_equal(tset_insert(s, name, 2, shape, NULL, &t), 0);
	rng r;
	rng_seed(&r, seed);
	for (size_t k = 0; k < t->n; k++)
		t->data[k] = (float)(scale * rng_normal(&r));
	return t;
}

static void test_encode(void **st)
{
	(void)st;
	tset *s = NULL, *rs = NULL;
	assert_int_equal(tset_new(&s), 0);
	assert_int_equal(tset_new(&rs), 0);
	const size_t D = 4096;
	tensor *t = mk(s, "a", D, 0.01, 3);
	tensor *r = mk(rs, "a", D, 0, 4);
	const tensor *d[1] = {t};
	tensor *rr[1] = {r};
	float step;
	size_t nm = D;
	assert_int_equal(sag_steps_initial(&nm, 1, 0.5, 4, 4, &step), 0);
	uint32_t *x0 = malloc((D + 1) * 4), *x1 = malloc((D + 1) * 4);
	assert_non_null(x0);
	assert_non_null(x1);
	ddg_src ns;
	ddg_src_seeded(&ns, 9);
	uint32_t m = ddg_mod_bits(4, 50, 30);
	assert_true(m >= 12 && m <= 32);
	/* sigma 0: levels only, within +-L, the count last */
	assert_int_equal(ddg_encode(d, NULL, 1, step, 0.5, 4, m, 0, 77, &ns, x0, NULL), 0);
	assert_int_equal(x0[D], 1);
	double ls = 0;
	for (size_t e = 0; e < D; e++) {
		int64_t v = sag_signed(x0[e], m);
		assert_true(v >= -7 && v <= 7);
		ls += (double)v * (double)v;
	}
	assert_true(sqrt(ls) <= ddg_round_bound(0.5 / step, D, DDG_BETA));
	/* ... and bit for bit the plain secure grid (sag_encode, w = w_max = 1) */
	assert_int_equal(sag_encode(d, NULL, 1, &step, 0.5, 4, 1, 1, m, 77, x1, NULL), 0);
	assert_memory_equal(x0, x1, (D + 1) * 4);
	/* sigma 30: the same levels plus noise of sd 30 */
	assert_int_equal(ddg_encode(d, rr, 1, step, 0.5, 4, m, 30, 77, &ns, x1, NULL), 0);
	double sum = 0, sq = 0, nn = 0;
	for (size_t e = 0; e < D; e++)
		nn += (double)t->data[e] * t->data[e];
	double sc = fmin(1, 0.5 / sqrt(nn));
	for (size_t e = 0; e < D; e++) {
		double nz = (double)(sag_signed(x1[e], m) - sag_signed(x0[e], m));
		sum += nz;
		sq += nz * nz;
		/* the residual is what the level did not send, noise excluded */
		double v = (double)t->data[e] * sc / step;
		assert_true(fabs((double)r->data[e] / step - (v - (double)sag_signed(x0[e], m))) <
		            1e-3);
	}
	double sd = sqrt(sq / D - (sum / D) * (sum / D));
	assert_true(fabs(sd - 30) < 30 * 5 / sqrt(2.0 * D));
	assert_true(fabs(sum / D) < 5 * 30 / sqrt((double)D));
	/* the coordinator's check: a sum of three honest inputs passes, garbage not */
	uint32_t *sumv = calloc(D + 1, 4);
	for (int k = 0; k < 3; k++) {
		assert_int_equal(ddg_encode(d, NULL, 1, step, 0.5, 4, m, 30, 77 + k, &ns, x1, NULL),
		                 0);
		for (size_t e = 0; e <= D; e++)
			sumv[e] = (uint32_t)((sumv[e] + x1[e]) & ((1ull << m) - 1));
	}
	char why[200];
	assert_int_equal(ddg_check_sum(sumv, D + 1, m, 4, 3, 30, why, sizeof why), 0);
	assert_int_equal(ddg_check_sum(sumv, D + 1, m, 4, 4, 30, why, sizeof why), FL_EPROTO);
	rng g;
	rng_seed(&g, 5);
	for (size_t e = 0; e < D; e++)
		sumv[e] = (uint32_t)(rng_u64(&g) & ((1ull << m) - 1));
	assert_int_equal(ddg_check_sum(sumv, D + 1, m, 4, 3, 30, why, sizeof why), FL_EPROTO);
	free(sumv);
	free(x0);
	free(x1);
	tset_free(s);
	tset_free(rs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bern_exp),   cmocka_unit_test(test_dgauss),
	    cmocka_unit_test(test_cgauss),     cmocka_unit_test(test_prop14),
	    cmocka_unit_test(test_subsampled), cmocka_unit_test(test_plan),
	    cmocka_unit_test(test_encode),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
