/* dp: the RDP accountant against published values and against an
 * independent numerical integration; the conversion; the ledger file
 * (round trip, corruption refused); the CSPRNG's Gaussian (moments). */
#include "testutil.h"

#include "dp.h"
#include "err.h"
#include "fileio.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- published values ----
 * Each row: sampling rate q, noise multiplier z, steps T, delta, and the
 * epsilon printed by the source. Those sources used the classic RDP ->
 * (eps, delta) conversion eps = min_a rdp(a) - log(delta)/(a-1) (Mironov
 * 2017), so they are compared with dp_epsilon_classic. Tolerance: 2
 * significant digits (|ours - published| <= 0.5 unit of the second digit;
 * the sources' order grids contain fractional orders, ours does not, which
 * moves epsilon in the third digit).
 *
 * 1-3: TensorFlow Privacy, tutorials/README.md ("Select Parameters" table,
 *      MNIST, 60000 examples, batch 256, delta 1e-5, steps = epochs *
 *      60000 // 256):  z 1.12, 60 epochs -> 2.92;  z 0.6, 30 epochs -> 9.74;
 *      z 1.2, 10 epochs -> 1.20.
 *      https://github.com/tensorflow/privacy/blob/master/tutorials/README.md
 * 4:   Abadi et al., "Deep Learning with Differential Privacy", CCS 2016,
 *      Sec. 3.1: q = 0.01, sigma = 4, delta = 1e-5, T = 10000 steps: the
 *      moments accountant gives epsilon ~ 1.26 (strong composition: 9.34). */
typedef struct pub {
	double q, z;
	uint64_t steps;
	double delta, eps;
	const char *src;
} pub;

static void test_published(void **s)
{
	(void)s;
	const pub rows[] = {
	    {256.0 / 60000, 1.12, 60 * 60000 / 256, 1e-5, 2.92, "TF-Privacy tutorial row 1"},
	    {256.0 / 60000, 0.6, 30 * 60000 / 256, 1e-5, 9.74, "TF-Privacy tutorial row 2"},
	    {256.0 / 60000, 1.2, 10 * 60000 / 256, 1e-5, 1.20, "TF-Privacy tutorial row 3"},
	    {0.01, 4.0, 10000, 1e-5, 1.26, "Abadi et al. 2016 Sec. 3.1"},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		const pub *p = &rows[i];
		double rdp[DP_NORDERS] = {0};
		dp_rdp_compose(rdp, p->q, p->z, p->steps);
		int best;
		double e = dp_epsilon_classic(rdp, p->delta, &best);
		double unit = pow(10, floor(log10(p->eps)) - 1); /* second significant digit */
		double imp = dp_epsilon(rdp, p->delta, NULL);
		print_message(
		    "%s: published %.3g, ours %.4f (order %g); improved conversion %.4f\n", p->src,
		    p->eps, e, dp_orders[best], imp);
		assert_true(fabs(e - p->eps) <= 0.5 * unit);
		/* the improved conversion is never worse */
		assert_true(imp <= e + 1e-12);
	}
}

/* ---- independent numerical integration ----
 * A_alpha = int N(x; 0, s^2) (1 - q + q exp((2x - 1) / (2 s^2)))^alpha dx
 * (Mironov et al. 2019, Def. of the sampled Gaussian mechanism's Renyi
 * divergence, mu0 = N(0, s^2), mu1 = N(1, s^2)); composite Simpson in
 * double over [-40 s - 1, alpha + 40 s + 1] with h = s / 400, in log space
 * around the largest integrand. This is a different method from the
 * accountant's binomial expansion. */
static double rdp_integrate(double q, double s, double alpha)
{
	double lo = -40 * s - 1, hi = alpha + 40 * s + 1;
	size_t n = (size_t)ceil((hi - lo) / (s / 400));
	if (n % 2)
		n++;
	double h = (hi - lo) / (double)n;
	double m = -INFINITY;
	for (int pass = 0; pass < 2; pass++) {
		double sum = 0;
		for (size_t i = 0; i <= n; i++) {
			double x = lo + h * (double)i;
			double lmu0 = -x * x / (2 * s * s) - log(s * sqrt(2 * M_PI));
			double r = (2 * x - 1) / (2 * s * s);
			/* log(1 - q + q e^r), stable both ways */
			double lmix = r > 0 ? r + log(q + (1 - q) * exp(-r)) : log1p(q * expm1(r));
			double l = lmu0 + alpha * lmix;
			if (pass == 0) {
				if (l > m)
					m = l;
				continue;
			}
			double w = (i == 0 || i == n) ? 1 : (i % 2 ? 4 : 2);
			sum += w * exp(l - m);
		}
		if (pass == 1)
			return (m + log(sum * h / 3)) / (alpha - 1);
	}
	return NAN;
}

static void test_integration(void **s)
{
	(void)s;
	const struct {
		double q, z;
		unsigned a;
	} pts[] = {{0.01, 1.0, 2},   {0.01, 1.0, 8}, {0.01, 1.0, 32}, {0.1, 2.0, 5},
	           {0.1, 2.0, 20},   {0.5, 0.8, 3},  {0.25, 1.5, 12}, {256.0 / 60000, 1.12, 16},
	           {0.004, 0.7, 64}, {1.0, 1.3, 10}};
	for (size_t i = 0; i < sizeof pts / sizeof pts[0]; i++) {
		double acc = dp_rdp_step(pts[i].q, pts[i].z, pts[i].a);
		double ref = rdp_integrate(pts[i].q, pts[i].z, pts[i].a);
		print_message("q %g z %g alpha %u: binomial %.12g, integral %.12g\n", pts[i].q,
		              pts[i].z, pts[i].a, acc, ref);
		/* stated tolerance: relative 1e-7 (or 1e-12 absolute near 0) */
		assert_true(fabs(acc - ref) <= 1e-7 * fabs(ref) + 1e-12);
	}
	/* q = 1 is the plain Gaussian: alpha / (2 z^2) exactly */
	assert_true(fabs(dp_rdp_step(1.0, 2.0, 7) - 7.0 / 8.0) < 1e-12);
	assert_true(dp_rdp_step(0.0, 1.0, 7) == 0);
}

static void test_conversion_and_plan(void **s)
{
	(void)s;
	/* composition is linear; epsilon grows with rounds, falls with z */
	double q = 50.0 / 1000, d = 1e-5;
	double e1 = dp_epsilon_for(q, 1.0, 100, d), e2 = dp_epsilon_for(q, 1.0, 200, d);
	double e3 = dp_epsilon_for(q, 2.0, 200, d);
	assert_true(e1 > 0 && e2 > e1 && e3 < e2);
	/* improved conversion by hand at the best order */
	double rdp[DP_NORDERS] = {0};
	dp_rdp_compose(rdp, q, 1.0, 100);
	int b;
	double e = dp_epsilon(rdp, d, &b);
	double a = dp_orders[b];
	double hand = rdp[b] + log((a - 1) / a) - (log(d) + log(a)) / (a - 1);
	assert_true(fabs(e - hand) < 1e-12);
	assert_true(fabs(e - e1) < 1e-12);
	/* dp_z_for inverts dp_epsilon_for */
	double z = dp_z_for(q, 300, d, 4.0);
	assert_true(z > 0);
	double ez = dp_epsilon_for(q, z, 300, d);
	assert_true(ez <= 4.0 && ez > 4.0 * 0.999);
	assert_true(dp_z_for(q, 300, d, 1e-9) < 0);
}

static void test_opts(void **s)
{
	(void)s;
	char why[300];
	dp_opts o = {DP_CENTRAL, 1.0, 0.5, 1e-5, 4.0, 100};
	assert_int_equal(dp_opts_check(&o, 10, why, sizeof why), 0);
	assert_int_equal(dp_opts_check(&o, 0, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "rounds.nodes_per_round"));
	assert_int_equal(dp_opts_check(&o, 101, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "privacy.population"));
	dp_opts b = o;
	b.mode = DP_DISTRIBUTED; /* checked like central here; secure: dpd_check */
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), 0);
	assert_int_equal(dp_noise_shares(&b, 10), 8);
	b.shares = 11;
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "privacy.noise_shares"));
	b.shares = 1;
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), FL_EINVAL);
	b.mode = (enum dp_mode)7;
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "privacy.mode"));
	b = o;
	b.z = 0;
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "privacy.noise_multiplier"));
	b = o;
	b.clip = 0;
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "privacy.clip"));
	b = o;
	b.delta = 0.5;
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "privacy.delta"));
	b = o;
	b.target_eps = 0;
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "privacy.target_epsilon"));
	b = o;
	b.population = 0;
	assert_int_equal(dp_opts_check(&b, 10, why, sizeof why), FL_EINVAL);
}

static void test_ledger(void **s)
{
	(void)s;
	char *dir = tu_mkdtemp();
	char why[300], p[600];
	dp_ledger l, r;
	assert_int_equal(dp_ledger_load(dir, &r, why, sizeof why), FL_ENOENT);
	dp_ledger_init(&l);
	dp_rdp_compose(l.rdp, 0.05, 1.1, 7);
	l.rounds = 7;
	l.last_round = 9;
	l.delta = 1e-5;
	l.epsilon = dp_epsilon(l.rdp, l.delta, NULL);
	l.last_q = 0.05;
	l.last_z = 1.1;
	assert_int_equal(dp_ledger_save(dir, &l), 0);
	assert_int_equal(dp_ledger_load(dir, &r, why, sizeof why), 0);
	assert_true(r.rounds == 7 && r.last_round == 9 && r.delta == l.delta);
	for (int i = 0; i < DP_NORDERS; i++)
		assert_true(r.rdp[i] == l.rdp[i]); /* bit-exact round trip */
	/* informational fields: decimal, to 15 digits */
	assert_true(fabs(r.epsilon - l.epsilon) <= 1e-14 * l.epsilon);
	assert_true(fabs(r.last_z - 1.1) < 1e-14 && fabs(r.last_q - 0.05) < 1e-15);
	/* one flipped byte anywhere is refused */
	assert_int_equal(dp_ledger_path(dir, p, sizeof p), 0);
	uint8_t *d;
	size_t n;
	assert_int_equal(file_read_all(p, 1 << 20, &d, &n), 0);
	for (size_t i = 0; i < n; i += 7) {
		d[i] ^= 0x01;
		assert_int_equal(file_write_atomic(p, d, n), 0);
		assert_int_equal(dp_ledger_load(dir, &r, why, sizeof why), FL_EFORMAT);
		d[i] ^= 0x01;
	}
	/* truncated */
	assert_int_equal(file_write_atomic(p, d, n / 2), 0);
	assert_int_equal(dp_ledger_load(dir, &r, why, sizeof why), FL_EFORMAT);
	assert_int_equal(file_write_atomic(p, d, n), 0);
	assert_int_equal(dp_ledger_load(dir, &r, why, sizeof why), 0);
	free(d);
	tu_rmtree(dir);
	free(dir);
}

/* Moments of the noise: n draws of N(0, sd^2). The sample mean has standard
 * error sd/sqrt(n); the sample variance sd^2 sqrt(2/(n-1)). Tolerance: 5
 * standard errors (a false failure has probability < 1e-6 per check). Two
 * generators with different keys give different streams; the same key the
 * same stream. */
static void test_noise_moments(void **s)
{
	(void)s;
	const size_t n = 1000000;
	const double sd = 0.37;
	double *x = calloc(n, sizeof *x);
	assert_non_null(x);
	dp_rng *r = NULL;
	assert_int_equal(dp_rng_new(NULL, &r), 0);
	assert_int_equal(dp_rng_add_gauss(r, sd, x, n), 0);
	double m = 0, v = 0, k4 = 0;
	for (size_t i = 0; i < n; i++)
		m += x[i];
	m /= (double)n;
	for (size_t i = 0; i < n; i++) {
		double d = x[i] - m;
		v += d * d;
		k4 += d * d * d * d;
	}
	v /= (double)(n - 1);
	k4 /= (double)n;
	print_message("noise: mean %.3g (se %.3g), var %.6g (want %.6g, se %.3g), kurtosis %.4f\n",
	              m, sd / sqrt((double)n), v, sd * sd, sd * sd * sqrt(2.0 / (double)(n - 1)),
	              k4 / (v * v));
	assert_true(fabs(m) <= 5 * sd / sqrt((double)n));
	assert_true(fabs(v - sd * sd) <= 5 * sd * sd * sqrt(2.0 / (double)(n - 1)));
	/* Gaussian kurtosis 3; its standard error is sqrt(24/n) */
	assert_true(fabs(k4 / (v * v) - 3) <= 5 * sqrt(24.0 / (double)n));
	dp_rng_free(r);
	uint8_t k1[32] = {1}, k2[32] = {2};
	dp_rng *a, *b, *c;
	assert_int_equal(dp_rng_new(k1, &a), 0);
	assert_int_equal(dp_rng_new(k1, &b), 0);
	assert_int_equal(dp_rng_new(k2, &c), 0);
	int same = 1, diff = 0;
	for (int i = 0; i < 1000; i++) {
		double ga = dp_rng_gauss(a), gb = dp_rng_gauss(b), gc = dp_rng_gauss(c);
		same &= ga == gb;
		diff += ga != gc;
	}
	assert_true(same);
	assert_int_equal(diff, 1000);
	dp_rng_free(a);
	dp_rng_free(b);
	dp_rng_free(c);
	free(x);
}

int main(void)
{
	const struct CMUnitTest t[] = {
	    cmocka_unit_test(test_published),
	    cmocka_unit_test(test_integration),
	    cmocka_unit_test(test_conversion_and_plan),
	    cmocka_unit_test(test_opts),
	    cmocka_unit_test(test_ledger),
	    cmocka_unit_test(test_noise_moments),
	};
	return cmocka_run_group_tests(t, NULL, NULL);
}
