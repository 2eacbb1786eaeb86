/* agg in DP-FedAvg mode: the coordinator's clip bounds what one update adds
 * to the sum by dp_clip, for adversarial updates in every uplink format,
 * and with other updates in the sum (add/remove-one neighbours differ by at
 * most dp_clip); the noise is N(0, (z C)^2) on the sum, divided by the fixed
 * denominator, independent of how many updates arrived; same key, same
 * noise; other key, other noise. */
#include "testutil.h"

#include "agg.h"
#include "err.h"
#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NT 3

static tset *layout(void)
{
	tset *s;
	assert_int_equal(tset_new(&s), 0);
	uint64_t a[2] = {4, 72}, b[2] = {40, 4}, c[2] = {100, 4};
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_a", 2, a, NULL, NULL), 0);
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_b", 2, b, NULL, NULL), 0);
	assert_int_equal(tset_insert(s, "blk.1.ffn_up.lora_b", 2, c, NULL, NULL), 0);
	return s;
}

static agg *mk(const tset *lay, double clip, double sd, double denom)
{
	agg_opts o;
	agg_opts_default(&o);
	o.weighting = AGG_W_UNIFORM;
	o.dp_clip = clip;
	o.dp_noise_std = sd;
	o.dp_denom = denom;
	agg *a;
	assert_int_equal(agg_new(&o, lay, &a), 0);
	return a;
}

static double set_norm(const tset *s)
{
	double ss = 0;
	for (size_t i = 0; i < tset_count(s); i++) {
		const tensor *t = tset_at(s, i);
		for (size_t k = 0; k < t->n; k++)
			ss += (double)t->data[k] * t->data[k];
	}
	return sqrt(ss);
}

/* Encodes x (NT tensors of lay) in fmt; returns the decoded L2 norm. */
static double encode(const tset *lay, float *const *x, enum qt_fmt fmt, qtensor *q)
{
	quant_params p = {.fmt = fmt, .block = (fmt == QT_F32 || fmt == QT_F16) ? 0 : 32};
	double ss = 0;
	for (size_t i = 0; i < NT; i++) {
		const tensor *t = tset_at(lay, i);
		qt_fini(&q[i]);
		qt_init(&q[i]);
		assert_int_equal(quant_encode(&p, t->name, x[i], t->ndim, t->shape, &q[i]), 0);
		float *d = malloc(t->n * sizeof *d);
		assert_int_equal(quant_decode(&q[i], d, t->n), 0);
		for (size_t k = 0; k < t->n; k++)
			ss += (double)d[k] * d[k];
		free(d);
	}
	return sqrt(ss);
}

enum shape { S_RANDOM, S_SPIKE, S_FLAT, S_ONEBLOCK, S_NSHAPES };

/* Fills x with a vector of the given shape, then rescales it (re-encoding)
 * until its decoded norm is as near to target as the format allows. */
static double make_adv(const tset *lay, float **x, enum shape sh, double target, enum qt_fmt fmt,
                       qtensor *q, uint64_t *seed)
{
	for (size_t i = 0; i < NT; i++) {
		const tensor *t = tset_at(lay, i);
		for (size_t k = 0; k < t->n; k++) {
			float v = 0;
			switch (sh) {
			case S_RANDOM:
				v = (float)(tu_randu(seed) * 2 - 1);
				break;
			case S_SPIKE: /* all the mass in one coordinate, tiny rest */
				v = (i == 1 && k == 17) ? 1.0f : 1e-6f;
				break;
			case S_FLAT: /* every element at its block's max: exact levels */
				v = (k % 2) ? 1.0f : -1.0f;
				break;
			default: /* one full block, the rest zero */
				v = (i == 2 && k < 32) ? (float)(0.5 + tu_randu(seed)) : 0.0f;
				break;
			}
			x[i][k] = v;
		}
	}
	double n = 0;
	for (int it = 0; it < 6; it++) {
		n = encode(lay, x, fmt, q);
		double f = target / n;
		for (size_t i = 0; i < NT; i++)
			for (size_t k = 0; k < tset_at(lay, i)->n; k++)
				x[i][k] = (float)(x[i][k] * f);
	}
	return encode(lay, x, fmt, q);
}

/* The contribution of one update to the sum = agg_finish with no noise and
 * denominator 1 (FedAvg, eta 1: step = sum). */
static void test_clip_bound(void **s)
{
	(void)s;
	tset *lay = layout();
	const double C = 0.75;
	const enum qt_fmt fmts[] = {QT_F32, QT_F16, QT_Q8, QT_Q4, QT_Q2};
	const double over[] = {1e4, 10, 1 + 1e-6, 1 + 1e-9, 1, 1 - 5e-7, 1 - 1e-6, 0.5, 1e-3};
	uint64_t seed = 42;
	float *x[NT];
	qtensor q[NT], o[4][NT];
	for (size_t i = 0; i < NT; i++) {
		x[i] = malloc(tset_at(lay, i)->n * sizeof(float));
		qt_init(&q[i]);
		for (int j = 0; j < 4; j++)
			qt_init(&o[j][i]);
	}
	tset *step;
	assert_int_equal(tset_zeros_like(lay, &step), 0);
	agg *a = mk(lay, C, 0, 1);
	double worst = 0;
	size_t cases = 0;
	for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
		/* four other honest updates at norm ~C in the same format */
		for (int j = 0; j < 4; j++)
			make_adv(lay, x, S_RANDOM, C * 0.999, fmts[f], o[j], &seed);
		for (int sh = 0; sh < S_NSHAPES; sh++) {
			for (size_t v = 0; v < sizeof over / sizeof over[0]; v++) {
				double n = make_adv(lay, x, (enum shape)sh, C * over[v], fmts[f], q,
				                    &seed);
				agg_result r;
				agg_begin(a);
				assert_int_equal(agg_add(a, q, NT, 1, &r), 0);
				assert_int_equal(r.verdict, AGG_ACCEPTED);
				assert_int_equal(agg_finish(a, step), 0);
				double c1 = set_norm(step);
				if (!(c1 <= C) || (n <= C * (1 - 1e-6) && fabs(c1 - n) > 1e-9 * n))
					print_message("fmt %s shape %d over %g: n %.12g c1 %.12g\n",
					              qt_fmt_name(fmts[f]), sh, over[v], n, c1);
				if (c1 > worst * C)
					worst = c1 / C;
				assert_true(c1 <= C);
				/* clipping is not overdone: an update above the
				 * clip's margin C (1 - 1e-6) contributes at least
				 * C (1 - 2e-6); one below it is added unchanged */
				if (n > C * (1 - 1e-6))
					assert_true(c1 >= C * (1 - 2e-6));
				else
					assert_true(fabs(c1 - n) <= 1e-9 * n);
				/* neighbours: the sum with and without it */
				tset *with, *without;
				agg_begin(a);
				for (int j = 0; j < 4; j++)
					assert_int_equal(agg_add(a, o[j], NT, 1, &r), 0);
				assert_int_equal(agg_add(a, q, NT, 1, &r), 0);
				assert_int_equal(agg_finish(a, step), 0);
				assert_int_equal(tset_clone(step, &with), 0);
				agg_begin(a);
				for (int j = 0; j < 4; j++)
					assert_int_equal(agg_add(a, o[j], NT, 1, &r), 0);
				assert_int_equal(agg_finish(a, step), 0);
				assert_int_equal(tset_clone(step, &without), 0);
				assert_int_equal(tset_diff(with, with, without), 0);
				double dn = set_norm(with);
				assert_true(dn <= C);
				tset_free(with);
				tset_free(without);
				cases++;
			}
		}
	}
	print_message("%zu adversarial updates in 5 formats: largest contribution %.9f C\n", cases,
	              worst);
	agg_free(a);
	tset_free(step);
	for (size_t i = 0; i < NT; i++) {
		free(x[i]);
		qt_fini(&q[i]);
		for (int j = 0; j < 4; j++)
			qt_fini(&o[j][i]);
	}
	tset_free(lay);
}

/* Noise: (step_noised - step_clean) * denom over many rounds must be
 * N(0, sd^2) per coordinate, the same with 0, 1 or 3 updates in the round
 * (so it is on the sum, not on the mean). Tolerance: 5 standard errors of
 * the mean (sd / sqrt(n)) and of the variance (sd^2 sqrt(2 / (n - 1))). */
static void test_noise_on_sum(void **s)
{
	(void)s;
	tset *lay = layout();
	const double C = 0.5, z = 1.3, sd = z * C, denom = 4;
	uint64_t seed = 7;
	float *x[NT];
	qtensor q[3][NT];
	for (size_t i = 0; i < NT; i++)
		x[i] = malloc(tset_at(lay, i)->n * sizeof(float));
	for (int j = 0; j < 3; j++) {
		for (size_t i = 0; i < NT; i++)
			qt_init(&q[j][i]);
		make_adv(lay, x, S_RANDOM, C * (0.3 + 0.2 * j), QT_Q4, q[j], &seed);
	}
	agg *clean = mk(lay, C, 0, denom), *noisy = mk(lay, C, sd, denom);
	tset *s0, *s1;
	assert_int_equal(tset_zeros_like(lay, &s0), 0);
	assert_int_equal(tset_zeros_like(lay, &s1), 0);
	agg_result r;
	const int rounds = 150;
	for (int cnt = 0; cnt <= 3; cnt += (cnt == 0 ? 1 : 2)) {
		double sum = 0, ss = 0;
		size_t n = 0;
		agg_begin(clean);
		for (int j = 0; j < cnt; j++)
			assert_int_equal(agg_add(clean, q[j], NT, 1, &r), 0);
		assert_int_equal(agg_finish(clean, s0), 0);
		for (int rd = 0; rd < rounds; rd++) {
			agg_begin(noisy);
			for (int j = 0; j < cnt; j++)
				assert_int_equal(agg_add(noisy, q[j], NT, 1, &r), 0);
			assert_int_equal(agg_finish(noisy, s1), 0);
			for (size_t i = 0; i < NT; i++) {
				const tensor *a = tset_at(s0, i), *b = tset_at(s1, i);
				for (size_t k = 0; k < a->n; k++) {
					double e = ((double)b->data[k] - a->data[k]) * denom;
					sum += e;
					ss += e * e;
					n++;
				}
			}
		}
		double m = sum / (double)n, v = (ss - (double)n * m * m) / (double)(n - 1);
		print_message("%d updates: noise on the sum mean %.4g (se %.3g), sd %.5f (want "
		              "%.5f), %zu draws\n",
		              cnt, m, sd / sqrt((double)n), sqrt(v), sd, n);
		assert_true(fabs(m) <= 5 * sd / sqrt((double)n));
		assert_true(fabs(v - sd * sd) <= 5 * sd * sd * sqrt(2.0 / (double)(n - 1)));
	}
	/* keyed: same key same bytes; different keys differ by sqrt(2) sd */
	uint8_t k1[32] = {1}, k2[32] = {2};
	tset *s2;
	assert_int_equal(tset_zeros_like(lay, &s2), 0);
	assert_int_equal(agg_set_noise_key(noisy, k1), 0);
	agg_begin(noisy);
	assert_int_equal(agg_add(noisy, q[0], NT, 1, &r), 0);
	assert_int_equal(agg_finish(noisy, s1), 0);
	assert_int_equal(agg_set_noise_key(noisy, k1), 0);
	agg_begin(noisy);
	assert_int_equal(agg_add(noisy, q[0], NT, 1, &r), 0);
	assert_int_equal(agg_finish(noisy, s2), 0);
	for (size_t i = 0; i < NT; i++)
		assert_memory_equal(tset_at(s1, i)->data, tset_at(s2, i)->data,
		                    tset_at(s1, i)->n * sizeof(float));
	assert_int_equal(agg_set_noise_key(noisy, k2), 0);
	agg_begin(noisy);
	assert_int_equal(agg_add(noisy, q[0], NT, 1, &r), 0);
	assert_int_equal(agg_finish(noisy, s2), 0);
	double ss = 0;
	size_t n = 0;
	for (size_t i = 0; i < NT; i++)
		for (size_t k = 0; k < tset_at(s1, i)->n; k++, n++) {
			double d =
			    ((double)tset_at(s1, i)->data[k] - tset_at(s2, i)->data[k]) * denom;
			ss += d * d;
		}
	double got = sqrt(ss / (double)n), want = sqrt(2.0) * sd;
	print_message("two keys: difference sd %.4f, want %.4f (%zu coordinates)\n", got, want, n);
	/* sample sd of n normals: relative se 1/sqrt(2n); 5 se */
	assert_true(fabs(got - want) <= 5 * want / sqrt(2.0 * (double)n));
	/* a round without updates still releases noise / denom */
	agg_begin(noisy);
	assert_int_equal(agg_finish(noisy, s2), 0);
	assert_true(set_norm(s2) > 0);
	agg_begin(clean);
	assert_int_equal(agg_finish(clean, s2), 0);
	assert_true(set_norm(s2) == 0);
	tset_free(s0);
	tset_free(s1);
	tset_free(s2);
	agg_free(clean);
	agg_free(noisy);
	for (size_t i = 0; i < NT; i++) {
		free(x[i]);
		for (int j = 0; j < 3; j++)
			qt_fini(&q[j][i]);
	}
	tset_free(lay);
}

static void test_opts(void **s)
{
	(void)s;
	char why[300];
	agg_opts o;
	agg_opts_default(&o);
	o.dp_clip = 1;
	o.dp_denom = 10;
	assert_int_equal(agg_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "aggregation.weighting"));
	o.weighting = AGG_W_UNIFORM;
	assert_int_equal(agg_opts_check(&o, why, sizeof why), 0);
	o.strategy = AGG_MEDIAN;
	assert_int_equal(agg_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "median"));
	o.strategy = AGG_FEDADAM;
	assert_int_equal(agg_opts_check(&o, why, sizeof why), 0);
	o.dp_denom = 0;
	assert_int_equal(agg_opts_check(&o, why, sizeof why), FL_EINVAL);
}

int main(void)
{
	const struct CMUnitTest t[] = {
	    cmocka_unit_test(test_clip_bound),
	    cmocka_unit_test(test_noise_on_sum),
	    cmocka_unit_test(test_opts),
	};
	return cmocka_run_group_tests(t, NULL, NULL);
}
