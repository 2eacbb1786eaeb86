/* quant_encode_clipped (the node's DP-FedAvg clip): for adversarial updates
 * in every format, both rounding modes, with and without an error-feedback
 * residual, the decoded update's L2 norm (computed here in double from
 * quant_decode) is <= clip; an update well inside the bound is encoded as
 * plain quantization would; the new residual plus the decoded update is the
 * clipped vector (the clipped-off part is not carried to later rounds). */
#include "testutil.h"

#include "err.h"
#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NT 3

static void fill(tensor *const *t, int shape, double mag, uint64_t *seed)
{
	for (size_t i = 0; i < NT; i++)
		for (size_t k = 0; k < t[i]->n; k++) {
			double v;
			switch (shape) {
			case 0: /* random */
				v = tu_randu(seed) * 2 - 1;
				break;
			case 1: /* one spike */
				v = (i == 2 && k == 5) ? 1 : 1e-7;
				break;
			case 2: /* +-1: every element at its block's max */
				v = (k % 2) ? 1 : -1;
				break;
			default: /* values just under a rounding boundary of q2 */
				v = (k % 32 == 0) ? 1 : 0.8333;
				break;
			}
			t[i]->data[k] = (float)(v * mag);
		}
}

static double dec_norm(const qtensor *q, tensor *const *t)
{
	double ss = 0;
	for (size_t i = 0; i < NT; i++) {
		float *d = malloc(t[i]->n * sizeof *d);
		assert_int_equal(quant_decode(&q[i], d, t[i]->n), 0);
		for (size_t k = 0; k < t[i]->n; k++)
			ss += (double)d[k] * d[k];
		free(d);
	}
	return sqrt(ss);
}

static void test_bound(void **s)
{
	(void)s;
	tset *set;
	assert_int_equal(tset_new(&set), 0);
	uint64_t sh[NT][2] = {{4, 40}, {24, 4}, {50, 3}};
	const char *nm[NT] = {"a.lora_a", "a.lora_b", "b.lora_b"};
	tensor *dl[NT], *rs[NT], *r0[NT];
	for (size_t i = 0; i < NT; i++)
		assert_int_equal(tset_insert(set, nm[i], 2, sh[i], NULL, &dl[i]), 0);
	tset *rset, *r0set;
	assert_int_equal(tset_zeros_like(set, &rset), 0);
	assert_int_equal(tset_zeros_like(set, &r0set), 0);
	for (size_t i = 0; i < NT; i++) {
		rs[i] = tset_at(rset, i);
		r0[i] = tset_at(r0set, i);
	}
	const enum qt_fmt fmts[] = {QT_F32, QT_F16, QT_Q8, QT_Q4, QT_Q2};
	const double C = 0.3, mags[] = {1e3, 1.0, 0.05, 0.0117, 1e-3, 1e-6};
	uint64_t seed = 99;
	qtensor q[NT], p[NT];
	for (size_t i = 0; i < NT; i++) {
		qt_init(&q[i]);
		qt_init(&p[i]);
	}
	double worst = 0;
	size_t cases = 0;
	for (size_t f = 0; f < 5; f++)
		for (int rnd = 0; rnd < 2; rnd++)
			for (int shp = 0; shp < 4; shp++)
				for (size_t m = 0; m < sizeof mags / sizeof mags[0]; m++)
					for (int ef = 0; ef < 2; ef++) {
						quant_params qp[NT];
						for (size_t i = 0; i < NT; i++)
							qp[i] = (quant_params){
							    fmts[f], fmts[f] >= QT_Q8 ? 32u : 0u,
							    rnd ? QUANT_STOCHASTIC : QUANT_NEAREST,
							    seed + i};
						fill(dl, shp, mags[m], &seed);
						if (ef) /* a residual of a third of the delta */
							for (size_t i = 0; i < NT; i++)
								for (size_t k = 0; k < rs[i]->n;
								     k++)
									rs[i]->data[k] =
									    dl[i]->data[k] / 3;
						/* the vector the clip sees, in double */
						double vss = 0;
						for (size_t i = 0; i < NT; i++)
							for (size_t k = 0; k < dl[i]->n; k++) {
								float v = dl[i]->data[k] +
								          (ef ? rs[i]->data[k] : 0);
								r0[i]->data[k] = v;
								vss += (double)v * v;
							}
						double got = -1;
						assert_int_equal(quant_encode_clipped(
						                     qp, NT,
						                     (const tensor *const *)dl,
						                     ef ? rs : NULL, C, q, &got),
						                 0);
						double dn = dec_norm(q, dl);
						assert_true(fabs(dn - got) <= 1e-12);
						assert_true(dn <= C);
						if (dn / C > worst)
							worst = dn / C;
						/* well inside: same as plain quantization */
						if (sqrt(vss) < 0.5 * C && !ef) {
							for (size_t i = 0; i < NT; i++) {
								assert_int_equal(
								    quant_encode_tensor(
								        &qp[i], dl[i], &p[i]),
								    0);
								assert_true(q[i].data_len ==
								            p[i].data_len);
								assert_memory_equal(q[i].data,
								                    p[i].data,
								                    p[i].data_len);
							}
						}
						/* residual + deq = the clipped vector, whose norm
						 * is at most max(C, ||v||) scaled: never more than
						 * C (1 + 1e-6) when v was clipped */
						if (ef) {
							double ws = 0;
							for (size_t i = 0; i < NT; i++) {
								float *d =
								    malloc(dl[i]->n * sizeof *d);
								quant_decode(&q[i], d, dl[i]->n);
								for (size_t k = 0; k < dl[i]->n;
								     k++) {
									double w = (double)d[k] +
									           rs[i]->data[k];
									ws += w * w;
								}
								free(d);
							}
							double lim = sqrt(vss) < C ? sqrt(vss) : C;
							assert_true(sqrt(ws) <=
							            lim * (1 + 1e-5) + 1e-30);
						}
						cases++;
					}
	print_message("%zu cases: largest decoded norm %.9f C\n", cases, worst);
	for (size_t i = 0; i < NT; i++) {
		qt_fini(&q[i]);
		qt_fini(&p[i]);
	}
	/* bad clip, non-finite input */
	quant_params qp[NT] = {{QT_Q8, 32, QUANT_NEAREST, 0},
	                       {QT_Q8, 32, QUANT_NEAREST, 0},
	                       {QT_Q8, 32, QUANT_NEAREST, 0}};
	assert_int_equal(quant_encode_clipped(qp, NT, (const tensor *const *)dl, NULL, 0, q, NULL),
	                 FL_EINVAL);
	dl[1]->data[3] = NAN;
	assert_int_equal(quant_encode_clipped(qp, NT, (const tensor *const *)dl, NULL, 1, q, NULL),
	                 FL_ENUMERIC);
	for (size_t i = 0; i < NT; i++)
		qt_fini(&q[i]);
	tset_free(set);
	tset_free(rset);
	tset_free(r0set);
}

int main(void)
{
	const struct CMUnitTest t[] = {cmocka_unit_test(test_bound)};
	return cmocka_run_group_tests(t, NULL, NULL);
}
