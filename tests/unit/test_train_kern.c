/* test_train_kern — every backward kernel of node/model/train_kern against
 * central finite differences of a double-precision forward written here
 * from the op's definition. For an op y = f(x) and a random upstream
 * gradient g, the scalar L = sum(g * f(x)) is differentiated numerically,
 * h = 1e-5 * max(1, |x_i|), in double; the kernel's f32 gradient must match
 * with normwise relative error max|got - fd| / max|fd| <= 1e-4 (observed
 * values are printed; typically 1e-7..1e-6). Shapes are odd and small;
 * threaded paths are forced (tk_parallel_always) and the portable loops
 * run as well as AVX2 ones. */
#include "testutil.h"

#include "err.h"
#include "gtype.h"
#include "half.h"
#include "model/kernels.h"
#include "model/train_kern.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4

static uint64_t rs = 0x7e57ULL;

static double urand(void)
{
	return tu_randu(&rs) * 2.0 - 1.0;
}

/* Random floats and their exact double copy. */
typedef struct vec {
	float *f;
	double *d;
	size_t n;
} vec;

static vec vnew(size_t n, double scale)
{
	vec v = {calloc(n ? n : 1, sizeof(float)), calloc(n ? n : 1, sizeof(double)), n};
	assert_non_null(v.f);
	assert_non_null(v.d);
	for (size_t i = 0; i < n; i++) {
		v.f[i] = (float)(urand() * scale);
		v.d[i] = v.f[i];
	}
	return v;
}

static void vfree(vec *v)
{
	free(v->f);
	free(v->d);
}

static void check(const char *what, double err, double tol)
{
	printf("  %-60s %.2e (tol %.0e)\n", what, err, tol);
	if (!(err <= tol)) {
		print_error("%s: %.3e > %.0e\n", what, err, tol);
		fail();
	}
}

typedef double (*loss_fn)(void *ctx);

/* Numerical gradient of f with respect to p[0..n) at up to max_checks
 * evenly spaced indices, compared with got[]. */
static void fd_check(const char *what, loss_fn f, void *ctx, double *p, size_t n, const float *got,
                     size_t max_checks)
{
	size_t step = n > max_checks ? (n + max_checks - 1) / max_checks : 1;
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i += step) {
		const double save = p[i];
		const double h = 1e-5 * fmax(1.0, fabs(save));
		p[i] = save + h;
		double lp = f(ctx);
		p[i] = save - h;
		double lm = f(ctx);
		p[i] = save;
		double fd = (lp - lm) / (2 * h);
		num = fmax(num, isnan(got[i]) ? INFINITY : fabs(got[i] - fd));
		den = fmax(den, fabs(fd));
	}
	assert_true(den > 0); /* a zero gradient would make the check vacuous */
	check(what, num / den, TOL);
}

/* ---- RMSNorm ------------------------------------------------------------------- */

typedef struct rms_ctx {
	int N, C;
	double eps;
	vec x, w, g;
} rms_ctx;

static double rms_loss(void *p)
{
	rms_ctx *c = p;
	double L = 0;
	for (int n = 0; n < c->N; n++) {
		const double *x = c->x.d + (size_t)n * c->C;
		double ss = 0;
		for (int i = 0; i < c->C; i++)
			ss += x[i] * x[i];
		double r = 1.0 / sqrt(ss / c->C + c->eps);
		for (int i = 0; i < c->C; i++)
			L += c->g.d[(size_t)n * c->C + i] * x[i] * r * c->w.d[i];
	}
	return L;
}

static void test_rmsnorm(void **state)
{
	(void)state;
	rms_ctx c = {.N = 13, .C = 37, .eps = 1e-5};
	c.x = vnew((size_t)c.N * c.C, 1.5);
	c.w = vnew((size_t)c.C, 1.0);
	c.g = vnew((size_t)c.N * c.C, 1.0);
	float *out = malloc(sizeof(float) * c.x.n), *rstd = malloc(sizeof(float) * c.N);
	float *dx = malloc(sizeof(float) * c.x.n), *dw = calloc((size_t)c.C, sizeof(float));
	kern_rmsnorm(out, rstd, c.x.f, c.w.f, (float)c.eps, c.N, c.C);
	tk_rmsnorm_bwd(dx, dw, c.g.f, c.x.f, c.w.f, rstd, c.N, c.C, 0);
	fd_check("rmsnorm dx", rms_loss, &c, c.x.d, c.x.n, dx, 100000);
	fd_check("rmsnorm dw", rms_loss, &c, c.w.d, c.w.n, dw, 100000);
	/* accumulate: dx += the same gradient */
	float *dx2 = malloc(sizeof(float) * c.x.n);
	for (size_t i = 0; i < c.x.n; i++)
		dx2[i] = 1.0f;
	tk_rmsnorm_bwd(dx2, NULL, c.g.f, c.x.f, c.w.f, rstd, c.N, c.C, 1);
	for (size_t i = 0; i < c.x.n; i++)
		assert_float_equal(dx2[i] - 1.0f, dx[i], 1e-6);
	free(out);
	free(rstd);
	free(dx);
	free(dw);
	free(dx2);
	vfree(&c.x);
	vfree(&c.w);
	vfree(&c.g);
}

/* ---- RoPE ------------------------------------------------------------------------- */

typedef struct rope_ctx {
	int N, nh, hd, n_rot, ld, mode;
	double base;
	int32_t pos[32];
	vec x, g;
} rope_ctx;

static double rope_loss(void *p)
{
	rope_ctx *c = p;
	double L = 0;
	for (int n = 0; n < c->N; n++) /* padding columns pass through (identity) */
		for (int i = c->nh * c->hd; i < c->ld; i++)
			L += c->g.d[(size_t)n * c->ld + i] * c->x.d[(size_t)n * c->ld + i];
	for (int n = 0; n < c->N; n++)
		for (int h = 0; h < c->nh; h++) {
			const double *x = c->x.d + (size_t)n * c->ld + (size_t)h * c->hd;
			const double *g = c->g.d + (size_t)n * c->ld + (size_t)h * c->hd;
			for (int i = 0; i < c->hd; i++) /* pass-through dims */
				L += g[i] * x[i];
			for (int i = 0; i < c->n_rot / 2; i++) {
				int a = c->mode == KERN_ROPE_NEOX ? i : 2 * i;
				int b = c->mode == KERN_ROPE_NEOX ? i + c->n_rot / 2 : 2 * i + 1;
				double th = c->pos[n] * pow(c->base, -2.0 * i / c->n_rot);
				/* replace the pass-through terms of the rotated pair */
				L -= g[a] * x[a] + g[b] * x[b];
				L += g[a] * (x[a] * cos(th) - x[b] * sin(th));
				L += g[b] * (x[a] * sin(th) + x[b] * cos(th));
			}
		}
	return L;
}

static void rope_case(int mode, int hd, int n_rot)
{
	rope_ctx c = {.N = 11, .nh = 3, .hd = hd, .n_rot = n_rot, .mode = mode, .base = 10000};
	c.ld = c.nh * hd + 5;
	for (int n = 0; n < c.N; n++)
		c.pos[n] = (n * 7) % 23;
	c.x = vnew((size_t)c.N * c.ld, 1.0);
	c.g = vnew((size_t)c.N * c.ld, 1.0);
	float *d = malloc(sizeof(float) * c.g.n);
	memcpy(d, c.g.f, sizeof(float) * c.g.n);
	tk_rope_bwd(d, c.ld, c.pos, c.N, c.nh, c.hd, c.n_rot, (float)c.base, c.mode);
	/* padding columns are untouched */
	for (int n = 0; n < c.N; n++)
		for (int i = c.nh * hd; i < c.ld; i++)
			assert_true(d[(size_t)n * c.ld + i] == c.g.f[(size_t)n * c.ld + i]);
	char what[96];
	snprintf(what, sizeof what, "rope dx (%s, hd %d, n_rot %d)",
	         mode == KERN_ROPE_NEOX ? "neox" : "norm", hd, n_rot);
	fd_check(what, rope_loss, &c, c.x.d, c.x.n, d, 100000);
	free(d);
	vfree(&c.x);
	vfree(&c.g);
}

static void test_rope(void **state)
{
	(void)state;
	rope_case(KERN_ROPE_NORM, 8, 8);
	rope_case(KERN_ROPE_NEOX, 8, 8);
	rope_case(KERN_ROPE_NORM, 7, 4);
	rope_case(KERN_ROPE_NEOX, 10, 6);
}

/* ---- SwiGLU ------------------------------------------------------------------------ */

typedef struct glu_ctx {
	vec gate, up, g;
} glu_ctx;

static double glu_loss(void *p)
{
	glu_ctx *c = p;
	double L = 0;
	for (size_t i = 0; i < c->g.n; i++) {
		double x = c->gate.d[i];
		L += c->g.d[i] * x / (1.0 + exp(-x)) * c->up.d[i];
	}
	return L;
}

static void test_swiglu(void **state)
{
	(void)state;
	for (int avx = 0; avx < 2; avx++) {
		int prev = tk_use_avx2(avx);
		glu_ctx c;
		size_t n = 301;
		c.gate = vnew(n, 6.0);
		c.up = vnew(n, 2.0);
		c.g = vnew(n, 1.0);
		c.gate.f[0] = c.gate.d[0] = 95.0f; /* beyond the exp clamp both ways */
		c.gate.f[1] = c.gate.d[1] = -95.0f;
		float *dg = malloc(sizeof(float) * n), *du = malloc(sizeof(float) * n);
		tk_swiglu_bwd(dg, du, c.g.f, c.gate.f, c.up.f, n);
		fd_check(avx ? "swiglu dgate (avx2 exp)" : "swiglu dgate (libm)", glu_loss, &c,
		         c.gate.d, n, dg, 100000);
		fd_check(avx ? "swiglu dup (avx2 exp)" : "swiglu dup (libm)", glu_loss, &c, c.up.d,
		         n, du, 100000);
		/* in place over dh */
		float *dh = malloc(sizeof(float) * n);
		memcpy(dh, c.g.f, sizeof(float) * n);
		tk_swiglu_bwd(dh, du, dh, c.gate.f, c.up.f, n);
		assert_memory_equal(dh, dg, sizeof(float) * n);
		free(dg);
		free(du);
		free(dh);
		vfree(&c.gate);
		vfree(&c.up);
		vfree(&c.g);
		tk_use_avx2(prev);
	}
}

/* ---- attention ------------------------------------------------------------------- */

typedef struct att_ctx {
	int B, T, NH, NKV, hd;
	vec q, k, v, g;
} att_ctx;

static double att_loss(void *p)
{
	att_ctx *c = p;
	const int QD = c->NH * c->hd, KVD = c->NKV * c->hd, grp = c->NH / c->NKV;
	double L = 0, *sc = malloc(sizeof(double) * (size_t)c->T);
	for (int b = 0; b < c->B; b++)
		for (int h = 0; h < c->NH; h++)
			for (int t = 0; t < c->T; t++) {
				const double *q = c->q.d + ((size_t)b * c->T + t) * QD + h * c->hd;
				double mx = -INFINITY, sum = 0;
				for (int j = 0; j <= t; j++) {
					const double *k = c->k.d + ((size_t)b * c->T + j) * KVD +
					                  (h / grp) * c->hd;
					double d = 0;
					for (int i = 0; i < c->hd; i++)
						d += q[i] * k[i];
					sc[j] = d / sqrt((double)c->hd);
					mx = fmax(mx, sc[j]);
				}
				for (int j = 0; j <= t; j++)
					sum += exp(sc[j] - mx);
				const double *g = c->g.d + ((size_t)b * c->T + t) * QD + h * c->hd;
				for (int j = 0; j <= t; j++) {
					const double *v = c->v.d + ((size_t)b * c->T + j) * KVD +
					                  (h / grp) * c->hd;
					double pj = exp(sc[j] - mx) / sum, gv = 0;
					for (int i = 0; i < c->hd; i++)
						gv += g[i] * v[i];
					L += pj * gv;
				}
			}
	free(sc);
	return L;
}

static void att_case(int B, int T, int NH, int NKV, int hd, size_t max_checks)
{
	att_ctx c = {.B = B, .T = T, .NH = NH, .NKV = NKV, .hd = hd};
	const int QD = NH * hd, KVD = NKV * hd, N = B * T;
	c.q = vnew((size_t)N * QD, 1.5);
	c.k = vnew((size_t)N * KVD, 1.5);
	c.v = vnew((size_t)N * KVD, 1.0);
	c.g = vnew((size_t)N * QD, 1.0);
	float *out = malloc(sizeof(float) * N * QD);
	float *att = malloc(sizeof(float) * (size_t)B * NH * T * T);
	kern_attn s = {.B = B,
	               .Tq = T,
	               .Tk = T,
	               .pos0 = 0,
	               .NH = NH,
	               .NKV = NKV,
	               .hd = hd,
	               .q_ld = QD,
	               .kv_ld = KVD,
	               .out_ld = QD,
	               .kv_bs = (size_t)T * KVD};
	kern_attention(out, att, c.q.f, c.k.f, c.v.f, &s);
	float *dq = malloc(sizeof(float) * N * QD), *dk = malloc(sizeof(float) * N * KVD);
	float *dv = malloc(sizeof(float) * N * KVD);
	size_t sn = tk_attention_bwd_scratch(B, T, NH, NKV, hd, 4);
	float *scr = malloc(sizeof(float) * sn);
	tk_attention_bwd(dq, dk, dv, c.g.f, c.q.f, c.k.f, c.v.f, att, &s, scr, sn);
	char what[96];
	snprintf(what, sizeof what, "attention dq (B%d T%d NH%d NKV%d hd%d)", B, T, NH, NKV, hd);
	fd_check(what, att_loss, &c, c.q.d, c.q.n, dq, max_checks);
	snprintf(what, sizeof what, "attention dk (B%d T%d NH%d NKV%d hd%d)", B, T, NH, NKV, hd);
	fd_check(what, att_loss, &c, c.k.d, c.k.n, dk, max_checks);
	snprintf(what, sizeof what, "attention dv (B%d T%d NH%d NKV%d hd%d)", B, T, NH, NKV, hd);
	fd_check(what, att_loss, &c, c.v.d, c.v.n, dv, max_checks);
	/* a too-small scratch lowers the thread count, not the result */
	float *dq1 = malloc(sizeof(float) * N * QD);
	size_t sn1 = tk_attention_bwd_scratch(B, T, NH, NKV, hd, 1);
	tk_attention_bwd(dq1, dk, dv, c.g.f, c.q.f, c.k.f, c.v.f, att, &s, scr, sn1);
	assert_memory_equal(dq1, dq, sizeof(float) * N * QD);
	free(dq1);
	free(out);
	free(att);
	free(dq);
	free(dk);
	free(dv);
	free(scr);
	vfree(&c.q);
	vfree(&c.k);
	vfree(&c.v);
	vfree(&c.g);
}

static void test_attention(void **state)
{
	(void)state;
	att_case(2, 9, 6, 2, 3, 100000); /* GQA 6 on 2 */
	att_case(1, 7, 3, 3, 4, 100000); /* MHA */
	att_case(1, 70, 4, 1, 3, 150);   /* beyond the 64-query chunk, MQA */
	att_case(2, 140, 4, 2, 2, 150);  /* three chunks, GQA */
}

/* ---- cross-entropy ------------------------------------------------------------------ */

typedef struct ce_ctx {
	int N, V;
	int32_t tgt[16];
	double scale;
	vec x;
} ce_ctx;

static double ce_loss(void *p)
{
	ce_ctx *c = p;
	double L = 0;
	for (int n = 0; n < c->N; n++) {
		if (c->tgt[n] < 0)
			continue;
		const double *x = c->x.d + (size_t)n * c->V;
		double mx = -INFINITY, s = 0;
		for (int i = 0; i < c->V; i++)
			mx = fmax(mx, x[i]);
		for (int i = 0; i < c->V; i++)
			s += exp(x[i] - mx);
		L += mx + log(s) - x[c->tgt[n]];
	}
	return c->scale * L;
}

static void test_crossentropy(void **state)
{
	(void)state;
	for (int avx = 0; avx < 2; avx++) {
		int prev = kern_use_avx2(avx);
		ce_ctx c = {.N = 9, .V = 41, .scale = 1.0 / 7};
		for (int n = 0; n < c.N; n++)
			c.tgt[n] = (int32_t)((n * 13) % c.V);
		c.tgt[2] = -1;
		c.tgt[6] = -1;
		c.x = vnew((size_t)c.N * c.V, 4.0);
		float *d = malloc(sizeof(float) * c.x.n);
		memcpy(d, c.x.f, sizeof(float) * c.x.n);
		tk_crossentropy_bwd(d, c.tgt, c.N, c.V, (float)c.scale);
		fd_check(avx ? "cross-entropy dlogits (avx2 exp)" : "cross-entropy dlogits (libm)",
		         ce_loss, &c, c.x.d, c.x.n, d, 100000);
		for (int i = 0; i < c.V; i++)
			assert_true(d[2 * c.V + i] == 0.0f);
		free(d);
		vfree(&c.x);
		kern_use_avx2(prev);
	}
}

/* ---- matrix products ----------------------------------------------------------------- */

typedef struct mm_ctx {
	int N, O, In;
	vec x, W, g; /* x [N, In], W [O, In] (dequantized values), g [N, O] */
} mm_ctx;

static double mm_loss(void *p)
{
	mm_ctx *c = p;
	double L = 0;
	for (int n = 0; n < c->N; n++)
		for (int o = 0; o < c->O; o++) {
			double s = 0;
			for (int i = 0; i < c->In; i++)
				s += c->x.d[(size_t)n * c->In + i] * c->W.d[(size_t)o * c->In + i];
			L += c->g.d[(size_t)n * c->O + o] * s;
		}
	return L;
}

static void mm_case(uint32_t type, int N, int O, int In, size_t scratch_n)
{
	mm_ctx c = {.N = N, .O = O, .In = In};
	c.x = vnew((size_t)N * In, 1.0);
	c.W = vnew((size_t)O * In, 1.0);
	c.g = vnew((size_t)N * O, 1.0);
	/* store W in `type`, and use its dequantized values as the truth; the
	 * K-quants (dequantization only) get random blocks with small scales */
	size_t rb = 0;
	assert_int_equal(gtype_row_size(type, (uint64_t)In, &rb), 0);
	uint8_t *Wq = malloc(rb * O);
	for (int o = 0; o < O; o++) {
		uint8_t *row = Wq + rb * o;
		if (type == GTYPE_Q4_K || type == GTYPE_Q6_K) {
			for (size_t i = 0; i < rb; i++)
				row[i] = (uint8_t)(tu_rand(&rs) >> 24);
			const size_t bb = gtype_block_bytes(type);
			for (size_t blk = 0; blk < rb / bb; blk++) {
				uint8_t *p = row + blk * bb;
				/* Q4_K: f16 d, dmin first; Q6_K: f16 d last */
				uint16_t d = half_from_f32(0.01f), dm = half_from_f32(0.004f);
				if (type == GTYPE_Q4_K) {
					p[0] = (uint8_t)d;
					p[1] = (uint8_t)(d >> 8);
					p[2] = (uint8_t)dm;
					p[3] = (uint8_t)(dm >> 8);
				} else {
					p[bb - 2] = (uint8_t)d;
					p[bb - 1] = (uint8_t)(d >> 8);
				}
			}
		} else {
			assert_int_equal(
			    gtype_quant_row(type, c.W.f + (size_t)o * In, row, (size_t)In), 0);
		}
		assert_int_equal(gtype_dequant_row(type, row, c.W.f + (size_t)o * In, (size_t)In),
		                 0);
	}
	for (size_t i = 0; i < c.W.n; i++)
		c.W.d[i] = c.W.f[i];
	kern_mat m;
	assert_int_equal(kern_mat_init(&m, type, Wq, O, In), 0);
	const int ld = In + 3; /* padded rows */
	float *dx = malloc(sizeof(float) * N * ld), *dxc = malloc(sizeof(float) * N * In);
	float *scr = scratch_n ? malloc(sizeof(float) * scratch_n) : NULL;
	for (int i = 0; i < N * ld; i++)
		dx[i] = 7.0f; /* overwritten, padding kept */
	assert_int_equal(tk_matmul_dx(dx, ld, c.g.f, O, &m, N, 0, scr, scratch_n), 0);
	for (int n = 0; n < N; n++) {
		memcpy(dxc + (size_t)n * In, dx + (size_t)n * ld, sizeof(float) * In);
		for (int i = In; i < ld; i++)
			assert_true(dx[(size_t)n * ld + i] == 7.0f);
	}
	char what[96];
	snprintf(what, sizeof what, "matmul dx %s N%d O%d I%d scratch %zu", gtype_name(type), N, O,
	         In, scratch_n);
	fd_check(what, mm_loss, &c, c.x.d, c.x.n, dxc, 400);
	/* accumulate adds */
	assert_int_equal(tk_matmul_dx(dx, ld, c.g.f, O, &m, N, 1, scr, scratch_n), 0);
	for (int n = 0; n < N; n++)
		for (int i = 0; i < In; i++)
			assert_float_equal(dx[(size_t)n * ld + i], 2 * dxc[(size_t)n * In + i],
			                   1e-5 * (1 + fabs(dxc[(size_t)n * In + i])));
	if (type == GTYPE_F32) {
		/* dW = g^T x (accumulates) */
		float *dW = calloc((size_t)O * In, sizeof(float));
		tk_matmul_dw(dW, c.g.f, O, c.x.f, In, N, O, In);
		snprintf(what, sizeof what, "matmul dW N%d O%d I%d", N, O, In);
		fd_check(what, mm_loss, &c, c.W.d, c.W.n, dW, 400);
		/* bias: L = sum g * (xW^T + b) -> db = sum_n g */
		float *db = calloc((size_t)O, sizeof(float));
		tk_bias_bwd(db, c.g.f, O, N, O);
		for (int o = 0; o < O; o++) {
			double s = 0;
			for (int n = 0; n < N; n++)
				s += c.g.d[(size_t)n * O + o];
			assert_float_equal(db[o], s, 1e-5);
		}
		free(db);
		free(dW);
	}
	free(Wq);
	free(dx);
	free(dxc);
	free(scr);
	vfree(&c.x);
	vfree(&c.W);
	vfree(&c.g);
}

static void test_matmul(void **state)
{
	(void)state;
	mm_case(GTYPE_F32, 7, 33, 21, 0);
	mm_case(GTYPE_F32, 37, 50, 48, 0);
	size_t big = tk_matmul_dx_scratch(96, 4);
	mm_case(GTYPE_Q8_0, 9, 45, 96, big);
	mm_case(GTYPE_Q4_0, 9, 45, 96, big);
	mm_case(GTYPE_F16, 5, 19, 64, big);
	size_t big2 = tk_matmul_dx_scratch(768, 4);
	mm_case(GTYPE_Q4_K, 7, 40, 768, big2); /* 3 super-blocks over 2-3 threads */
	mm_case(GTYPE_Q6_K, 7, 40, 512, big2);
	/* a scratch of 16 rows per thread forces many tiles per slice */
	mm_case(GTYPE_Q8_0, 6, 70, 64, 16 * 64);
	mm_case(GTYPE_Q4_0, 6, 70, 128, 2 * 16 * 64);
	/* too little scratch is refused */
	kern_mat m;
	uint8_t w[34 * 4] = {0};
	assert_int_equal(kern_mat_init(&m, GTYPE_Q8_0, w, 4, 32), 0);
	float dx[32], dy[4] = {0}, scr[8];
	assert_int_equal(tk_matmul_dx(dx, 32, dy, 4, &m, 1, 0, scr, 8), FL_EINVAL);
	assert_int_equal(tk_matmul_dx(dx, 32, dy, 4, &m, 1, 0, NULL, 0), FL_EINVAL);
}

/* ---- LoRA ---------------------------------------------------------------------------- */

typedef struct lora_ctx {
	int N, in, O, r;
	double s;
	vec x, A, B, g;
} lora_ctx;

static double lora_loss(void *p)
{
	lora_ctx *c = p;
	double L = 0, u[16];
	for (int n = 0; n < c->N; n++) {
		for (int j = 0; j < c->r; j++) {
			u[j] = 0;
			for (int i = 0; i < c->in; i++)
				u[j] +=
				    c->A.d[(size_t)j * c->in + i] * c->x.d[(size_t)n * c->in + i];
		}
		for (int o = 0; o < c->O; o++) {
			double y = 0;
			for (int j = 0; j < c->r; j++)
				y += c->B.d[(size_t)o * c->r + j] * u[j];
			L += c->g.d[(size_t)n * c->O + o] * c->s * y;
		}
	}
	return L;
}

static void lora_case(int N, int in, int O, int r)
{
	lora_ctx c = {.N = N, .in = in, .O = O, .r = r, .s = 1.75};
	c.x = vnew((size_t)N * in, 1.0);
	c.A = vnew((size_t)r * in, 0.5);
	c.B = vnew((size_t)O * r, 0.5);
	c.g = vnew((size_t)N * O, 1.0);
	float *out = calloc((size_t)N * O, sizeof(float)), *u = malloc(sizeof(float) * N * r);
	float *du = malloc(sizeof(float) * N * r);
	tk_lora_forward(out, O, c.x.f, in, c.A.f, c.B.f, r, in, O, (float)c.s, N, u);
	float *dA = calloc((size_t)r * in, sizeof(float)),
	      *dB = calloc((size_t)O * r, sizeof(float));
	float *dx = calloc((size_t)N * in, sizeof(float));
	tk_lora_backward(dx, in, dA, dB, du, c.g.f, O, c.x.f, in, u, c.A.f, c.B.f, r, in, O,
	                 (float)c.s, N);
	char what[96];
	snprintf(what, sizeof what, "lora dA (N%d in%d out%d r%d)", N, in, O, r);
	fd_check(what, lora_loss, &c, c.A.d, c.A.n, dA, 100000);
	snprintf(what, sizeof what, "lora dB (N%d in%d out%d r%d)", N, in, O, r);
	fd_check(what, lora_loss, &c, c.B.d, c.B.n, dB, 100000);
	snprintf(what, sizeof what, "lora dx (N%d in%d out%d r%d)", N, in, O, r);
	fd_check(what, lora_loss, &c, c.x.d, c.x.n, dx, 100000);
	/* frozen A (FFA): dA untouched, dB and dx the same */
	float *dB2 = calloc((size_t)O * r, sizeof(float)),
	      *dx2 = calloc((size_t)N * in, sizeof(float));
	tk_lora_backward(dx2, in, NULL, dB2, du, c.g.f, O, c.x.f, in, u, c.A.f, c.B.f, r, in, O,
	                 (float)c.s, N);
	assert_memory_equal(dB2, dB, sizeof(float) * O * r);
	assert_memory_equal(dx2, dx, sizeof(float) * N * in);
	free(out);
	free(u);
	free(du);
	free(dA);
	free(dB);
	free(dx);
	free(dB2);
	free(dx2);
	vfree(&c.x);
	vfree(&c.A);
	vfree(&c.B);
	vfree(&c.g);
}

static void test_lora(void **state)
{
	(void)state;
	lora_case(11, 19, 23, 3);
	lora_case(40, 33, 17, 8);
}

/* ---- embedding ------------------------------------------------------------------------ */

static void test_embed(void **state)
{
	(void)state;
	const int N = 12, C = 70, V = 5;
	int32_t tok[12];
	for (int n = 0; n < N; n++)
		tok[n] = (int32_t)((n * 3) % V); /* repeated ids */
	vec g = vnew((size_t)N * C, 1.0);
	float *dE = calloc((size_t)V * C, sizeof(float));
	tk_embed_bwd(dE, tok, g.f, N, C);
	for (int v = 0; v < V; v++)
		for (int i = 0; i < C; i++) {
			double s = 0;
			for (int n = 0; n < N; n++)
				if (tok[n] == v)
					s += g.d[(size_t)n * C + i];
			assert_float_equal(dE[(size_t)v * C + i], s, 1e-5);
		}
	free(dE);
	vfree(&g);
}

static int setup_threads(void **state)
{
	(void)state;
	tk_parallel_always(1);
	kern_parallel_always(1);
	kern_set_threads(3);
	return 0;
}

static int setup_serial(void **state)
{
	(void)state;
	tk_parallel_always(0);
	kern_parallel_always(0);
	kern_set_threads(1);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rmsnorm),      cmocka_unit_test(test_rope),
	    cmocka_unit_test(test_swiglu),       cmocka_unit_test(test_attention),
	    cmocka_unit_test(test_crossentropy), cmocka_unit_test(test_matmul),
	    cmocka_unit_test(test_lora),         cmocka_unit_test(test_embed),
	};
	printf("threaded paths forced (3 threads):\n");
	int rc = cmocka_run_group_tests_name("threaded", tests, setup_threads, NULL);
	printf("single thread:\n");
	rc |= cmocka_run_group_tests_name("serial", tests, setup_serial, NULL);
	return rc;
}
