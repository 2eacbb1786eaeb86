/* test_optim — AdamW against hand-computed steps, clipping, FedProx, weight
 * decay per segment, non-finite gradients, and the schedules at their
 * boundary steps. */
#include "testutil.h"

#include "err.h"
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Two AdamW steps on three parameters, computed by hand:
 * b1 0.9, b2 0.999, eps 1e-8, wd 0.1, lr 0.01, no clipping.
 * p = [1, -2 | 3], the first two with decay, the third without.
 * step 1, g = [0.5, -1 | 0.25]: m = 0.1 g, v = 0.001 g^2, m/(1-0.9) = g,
 *   v/(1-0.999) = g^2, so the update is lr * g/(|g| + eps):
 *   p0 = 1 * (1 - 0.001) - 0.01 * 0.5/0.50000001  = 0.9890000002
 *   p1 = -2 * 0.999 + 0.01 * 1/1.00000001         = -1.9880000001
 *   p2 = 3 - 0.01 * 0.25/0.25000001               = 2.9900000004
 * step 2, g = [-0.5, 0 | 0.25]: bias corrections 1 - 0.81 = 0.19 and
 *   1 - 0.998001 = 0.001999;
 *   m0 = 0.045 - 0.05 = -0.005, v0 = 0.00024975 + 0.00025 = 0.00049975,
 *   m0/0.19 = -0.0263157895, v0/0.001999 = 0.25 -> update -0.0526315779,
 *   p0 = 0.9890000002 * 0.999 + 0.01 * 0.0526315779 = 0.9885373160
 *   m1 = -0.09, v1 = 0.000999: -0.4736842105 / (sqrt(0.4997498749) + eps)
 *   = -0.6700587591, p1 = -1.9880000001 * 0.999 + 0.0067005876 = -1.9793114177
 *   p2: m and v as in step 1 scaled alike -> update 1, p2 = 2.9800000008 */
static void test_adamw_hand(void **state)
{
	(void)state;
	float pa[2] = {1.0f, -2.0f}, ga[2], pb[1] = {3.0f}, gb[1];
	optim_seg segs[2] = {{pa, ga, 2, 1, NULL}, {pb, gb, 1, 0, NULL}};
	optim_cfg c = optim_defaults();
	c.weight_decay = 0.1f;
	c.max_grad_norm = 0.0f;
	optim *o = NULL;
	assert_int_equal(optim_new(segs, 2, &c, &o), 0);
	ga[0] = 0.5f;
	ga[1] = -1.0f;
	gb[0] = 0.25f;
	double gn = 0;
	assert_int_equal(optim_step(o, 0.01f, &gn), 0);
	assert_float_equal(gn, sqrt(0.25 + 1 + 0.0625), 1e-6);
	printf("  step 1: %.10f %.10f %.10f\n", pa[0], pa[1], pb[0]);
	assert_float_equal(pa[0], 0.9890000002, 2e-7);
	assert_float_equal(pa[1], -1.9880000001, 2e-7);
	assert_float_equal(pb[0], 2.9900000004, 3e-7);
	ga[0] = -0.5f;
	ga[1] = 0.0f;
	gb[0] = 0.25f;
	assert_int_equal(optim_step(o, 0.01f, NULL), 0);
	printf("  step 2: %.10f %.10f %.10f\n", pa[0], pa[1], pb[0]);
	assert_float_equal(pa[0], 0.9885373160, 2e-7);
	assert_float_equal(pa[1], -1.9793114177, 2e-7);
	assert_float_equal(pb[0], 2.9800000008, 3e-7);
	assert_int_equal(optim_steps(o), 2);
	/* reset: the next step is a first step again */
	optim_reset(o);
	assert_int_equal(optim_steps(o), 0);
	float before = pb[0];
	gb[0] = -2.0f;
	ga[0] = ga[1] = 0;
	assert_int_equal(optim_step(o, 0.01f, NULL), 0);
	assert_float_equal(pb[0], before + 0.01f, 1e-6); /* update = lr * sign(g) */
	optim_free(o);
}

static void test_clip_prox(void **state)
{
	(void)state;
	/* clipping: g = [3, 4] (norm 5), clip 1 -> g = [0.6, 0.8]; with b1 = 0,
	 * b2 = 0, step 1 gives update g/|g| anyway, so check the gradient */
	float p[2] = {0, 0}, g[2] = {3, 4};
	optim_seg s = {p, g, 2, 0, NULL};
	optim_cfg c = optim_defaults();
	c.max_grad_norm = 1.0f;
	optim *o = NULL;
	assert_int_equal(optim_new(&s, 1, &c, &o), 0);
	double gn;
	assert_int_equal(optim_step(o, 0.1f, &gn), 0);
	assert_float_equal(gn, 5.0, 1e-6);
	/* first step: update lr * g_clipped / (|g_clipped| + eps) -> -0.1 each */
	assert_float_equal(p[0], -0.1f, 1e-6);
	assert_float_equal(p[1], -0.1f, 1e-6);
	optim_free(o);

	/* FedProx: gradient mu (p - ref) added before the norm; with zero data
	 * gradient the step pulls p toward the anchor */
	float q[3] = {1.0f, -1.0f, 0.5f}, gq[3] = {0, 0, 0}, ref[3] = {0.0f, 0.0f, 0.5f};
	optim_seg sq = {q, gq, 3, 0, ref};
	optim_cfg cp = optim_defaults();
	cp.prox_mu = 0.5f;
	cp.max_grad_norm = 0;
	assert_int_equal(optim_new(&sq, 1, &cp, &o), 0);
	assert_int_equal(optim_step(o, 0.01f, &gn), 0);
	assert_float_equal(gq[0], 0.5f, 0);  /* mu * (1 - 0) */
	assert_float_equal(gq[1], -0.5f, 0); /* mu * (-1 - 0) */
	assert_float_equal(gq[2], 0.0f, 0);
	assert_float_equal(gn, sqrt(0.5), 1e-6);
	assert_true(q[0] < 1.0f && q[1] > -1.0f && q[2] == 0.5f);
	optim_free(o);

	/* non-finite gradient: parameters and moments untouched */
	float r[2] = {1, 2}, gr[2] = {NAN, 1};
	optim_seg sr = {r, gr, 2, 1, NULL};
	assert_int_equal(optim_new(&sr, 1, &c, &o), 0);
	assert_int_equal(optim_step(o, 0.1f, NULL), FL_ENUMERIC);
	assert_true(r[0] == 1 && r[1] == 2);
	assert_int_equal(optim_steps(o), 0);
	gr[0] = INFINITY;
	assert_int_equal(optim_step(o, 0.1f, NULL), FL_ENUMERIC);
	assert_int_equal(optim_step(o, -1.0f, NULL), FL_EINVAL);
	optim_free(o);

	/* bad configurations */
	optim_cfg bad = optim_defaults();
	bad.beta1 = 1.0f;
	assert_int_equal(optim_new(&sr, 1, &bad, &o), FL_EINVAL);
	bad = optim_defaults();
	bad.eps = 0;
	assert_int_equal(optim_new(&sr, 1, &bad, &o), FL_EINVAL);
	bad = optim_defaults();
	bad.prox_mu = -1;
	assert_int_equal(optim_new(&sr, 1, &bad, &o), FL_EINVAL);
	bad = optim_defaults();
	bad.weight_decay = NAN;
	assert_int_equal(optim_new(&sr, 1, &bad, &o), FL_EINVAL);
}

static void test_schedules(void **state)
{
	(void)state;
	optim_sched s = {.kind = OPTIM_CONSTANT, .lr = 0.1f, .warmup = 0, .total = 100};
	assert_float_equal(optim_lr(&s, 0), 0.1f, 0);
	assert_float_equal(optim_lr(&s, 99), 0.1f, 0);
	assert_float_equal(optim_lr(&s, 1000), 0.1f, 0);
	s.warmup = 4; /* constant with warmup */
	assert_float_equal(optim_lr(&s, 0), 0.025f, 1e-9);
	assert_float_equal(optim_lr(&s, 3), 0.1f, 0);
	assert_float_equal(optim_lr(&s, 4), 0.1f, 0);

	optim_sched c = {
	    .kind = OPTIM_COSINE, .lr = 1.0f, .warmup = 10, .total = 110, .min_ratio = 0.1f};
	assert_float_equal(optim_lr(&c, 0), 0.1f, 1e-7);   /* 1/10 */
	assert_float_equal(optim_lr(&c, 4), 0.5f, 1e-7);   /* 5/10 */
	assert_float_equal(optim_lr(&c, 9), 1.0f, 0);      /* end of warmup */
	assert_float_equal(optim_lr(&c, 10), 1.0f, 0);     /* cosine starts at the peak */
	assert_float_equal(optim_lr(&c, 60), 0.55f, 1e-6); /* half way: (1 + 0.1) / 2 */
	assert_float_equal(optim_lr(&c, 109), 0.1 + 0.9 * 0.5 * (1 + cos(M_PI * 99.0 / 100.0)),
	                   1e-6);
	assert_float_equal(optim_lr(&c, 110), 0.1f, 1e-7); /* floor from total on */
	assert_float_equal(optim_lr(&c, 500), 0.1f, 1e-7);
	assert_float_equal(optim_lr(&c, -3), 0.1f, 1e-7); /* clamped to step 0 */
	c.warmup = 0;
	c.total = 1;
	assert_float_equal(optim_lr(&c, 0), 1.0f, 0);
	int k;
	assert_int_equal(optim_sched_parse("cosine", &k), 0);
	assert_int_equal(k, OPTIM_COSINE);
	assert_int_equal(optim_sched_parse("constant", &k), 0);
	assert_int_equal(k, OPTIM_CONSTANT);
	assert_int_equal(optim_sched_parse("linear", &k), FL_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_adamw_hand),
	    cmocka_unit_test(test_clip_prox),
	    cmocka_unit_test(test_schedules),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
