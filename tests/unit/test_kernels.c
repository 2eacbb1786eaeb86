/* test_kernels — every kernel of node/model/kernels.h against a deliberately
 * naive double-precision reference written here, on small odd shapes.
 *
 * Error measure (printed for each case): normwise relative error
 * max_i |got_i - ref_i| / max_i |ref_i|; tolerance 1e-4 everywhere. Quantized
 * weights are compared against the double product with the same weights
 * dequantized (gtype_dequant_row), so the test checks the tiling/threading,
 * not the quantizer. */
#include "testutil.h"

#include "err.h"
#include "gtype.h"
#include "half.h"
#include "model/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4

static uint64_t rng = 0x1234abcdULL;

static float frand(void)
{
	return (float)(tu_randu(&rng) * 2.0 - 1.0);
}

static void fill(float *p, size_t n, float scale)
{
	for (size_t i = 0; i < n; i++)
		p[i] = frand() * scale;
}

static double relerr(const float *got, const double *ref, size_t n)
{
	double num = 0.0, den = 0.0;
	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)got[i] - ref[i]);
		if (isnan(got[i]))
			e = INFINITY;
		num = e > num ? e : num;
		den = fabs(ref[i]) > den ? fabs(ref[i]) : den;
	}
	return den > 0 ? num / den : num;
}

static void check(const char *what, double err)
{
	printf("  %-40s max rel err %.2e (tol %.0e)\n", what, err, TOL);
	if (!(err <= TOL)) {
		print_error("%s: max rel err %.3e > %.0e\n", what, err, TOL);
		fail();
	}
}

/* ---- matmul -------------------------------------------------------------- */

/* ref [N, O] = inp [N, I] (ld_in) @ Wd [O, I]^T + bias, in double. */
static void ref_matmul(double *ref, const float *inp, int ld_in, const float *Wd, const float *bias,
                       int N, int I, int O)
{
	for (int n = 0; n < N; n++)
		for (int o = 0; o < O; o++) {
			double s = bias ? bias[o] : 0.0;
			for (int i = 0; i < I; i++)
				s += (double)inp[(size_t)n * ld_in + i] * Wd[(size_t)o * I + i];
			ref[(size_t)n * O + o] = s;
		}
}

/* Random weights of `type` [O, I]: quantized from random floats where a
 * quantizer exists, else random blocks with sane f16 scales. Returns the
 * raw bytes and (in *deq) the dequantized matrix. */
static uint8_t *make_weights(uint32_t type, int O, int I, float **deq, size_t *row_bytes)
{
	size_t rb;
	assert_int_equal(gtype_row_size(type, (uint64_t)I, &rb), 0);
	uint8_t *w = malloc(rb * (size_t)O);
	float *d = malloc(sizeof(float) * (size_t)O * I);
	float *src = malloc(sizeof(float) * (size_t)I);
	assert_non_null(w);
	assert_non_null(d);
	assert_non_null(src);
	for (int o = 0; o < O; o++) {
		uint8_t *row = w + (size_t)o * rb;
		if (type == GTYPE_Q4_K || type == GTYPE_Q6_K) {
			for (size_t b = 0; b < rb; b++)
				row[b] = (uint8_t)tu_rand(&rng);
			for (size_t blk = 0; blk < rb / gtype_block_bytes(type); blk++) {
				uint8_t *bp = row + blk * gtype_block_bytes(type);
				uint16_t h1 = half_from_f32(0.01f + 0.01f * (float)tu_randu(&rng));
				uint16_t h2 = half_from_f32(0.005f * (float)tu_randu(&rng));
				size_t doff = type == GTYPE_Q4_K ? 0 : 208;
				bp[doff] = (uint8_t)h1;
				bp[doff + 1] = (uint8_t)(h1 >> 8);
				if (type == GTYPE_Q4_K) {
					bp[2] = (uint8_t)h2;
					bp[3] = (uint8_t)(h2 >> 8);
				}
			}
		} else {
			fill(src, (size_t)I, 0.5f);
			assert_int_equal(gtype_quant_row(type, src, row, (size_t)I), 0);
		}
		assert_int_equal(gtype_dequant_row(type, row, d + (size_t)o * I, (size_t)I), 0);
	}
	free(src);
	*deq = d;
	*row_bytes = rb;
	return w;
}

static void run_matmul_case(uint32_t type, int N, int I, int O, int ld_in, int ld_out,
                            int with_bias, size_t scratch_n)
{
	float *deq = NULL;
	size_t rb;
	uint8_t *w = make_weights(type, O, I, &deq, &rb);
	float *inp = malloc(sizeof(float) * (size_t)N * ld_in);
	float *out = malloc(sizeof(float) * (size_t)N * ld_out);
	float *bias = malloc(sizeof(float) * (size_t)O);
	double *ref = malloc(sizeof(double) * (size_t)N * O);
	float *scratch = scratch_n ? malloc(sizeof(float) * scratch_n) : NULL;
	fill(inp, (size_t)N * ld_in, 1.0f);
	fill(bias, (size_t)O, 1.0f);
	for (size_t i = 0; i < (size_t)N * ld_out; i++)
		out[i] = 12345.0f; /* padding must stay untouched */
	kern_mat m;
	assert_int_equal(kern_mat_init(&m, type, w, O, I), 0);
	assert_int_equal(m.row_bytes, rb);
	assert_int_equal(kern_matmul(out, ld_out, inp, ld_in, &m, with_bias ? bias : NULL, N,
	                             scratch, scratch_n),
	                 0);
	ref_matmul(ref, inp, ld_in, deq, with_bias ? bias : NULL, N, I, O);
	float *packed = malloc(sizeof(float) * (size_t)N * O);
	for (int n = 0; n < N; n++) {
		memcpy(packed + (size_t)n * O, out + (size_t)n * ld_out, sizeof(float) * (size_t)O);
		for (int j = O; j < ld_out; j++)
			assert_true(out[(size_t)n * ld_out + j] == 12345.0f);
	}
	char what[96];
	snprintf(what, sizeof what, "matmul %s N=%d I=%d O=%d%s", gtype_name(type), N, I, O,
	         with_bias ? " +bias" : "");
	check(what, relerr(packed, ref, (size_t)N * O));
	free(packed);
	free(w);
	free(deq);
	free(inp);
	free(out);
	free(bias);
	free(ref);
	free(scratch);
}

static void test_matmul_f32(void **state)
{
	(void)state;
	run_matmul_case(GTYPE_F32, 5, 13, 19, 13, 19, 1, 0);
	run_matmul_case(GTYPE_F32, 7, 37, 203, 41, 210, 1, 0); /* several 16-row slices */
	run_matmul_case(GTYPE_F32, 1, 64, 33, 64, 33, 0, 0);   /* one token (decode) */
}

static void test_matmul_quant(void **state)
{
	(void)state;
	const uint32_t types[] = {GTYPE_F16, GTYPE_BF16, GTYPE_Q8_0, GTYPE_Q4_0};
	for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
		/* ample scratch: one tile per thread slice */
		run_matmul_case(types[t], 9, 64, 45, 70, 47, 1, kern_matmul_scratch(64, 2));
		/* scratch for exactly 16 rows x 1 thread: many tiles, odd remainder */
		run_matmul_case(types[t], 11, 96, 83, 96, 83, 0, 16 * 96);
		/* 1..4 rows: the decode path (fused row dots with AVX2) */
		for (int n = 1; n <= 4; n++)
			run_matmul_case(types[t], n, 160, 37, 170, 40, n & 1,
			                kern_matmul_scratch(160, 2));
	}
	run_matmul_case(GTYPE_Q4_K, 6, 256, 37, 256, 37, 1, kern_matmul_scratch(256, 2));
	run_matmul_case(GTYPE_Q6_K, 6, 512, 29, 512, 29, 0, 16 * 512);
}

static void test_matmul_errors(void **state)
{
	(void)state;
	float w[64], inp[64], out[64];
	kern_mat m;
	memset(w, 0, sizeof w);
	assert_int_equal(kern_mat_init(&m, GTYPE_Q8_0, w, 2, 20), FL_EINVAL); /* not 32-multiple */
	assert_int_equal(kern_mat_init(&m, 11 /* Q3_K */, w, 1, 256), FL_EUNSUPPORTED);
	assert_int_equal(kern_mat_init(&m, GTYPE_F32, NULL, 1, 32), FL_EINVAL);
	assert_int_equal(kern_mat_init(&m, GTYPE_BF16, w, 1, 32), 0);
	/* tiled weights without enough scratch for one 16-row tile */
	float small[8];
	assert_int_equal(kern_matmul(out, 1, inp, 32, &m, NULL, 1, small, 8), FL_EINVAL);
	assert_int_equal(kern_matmul(out, 1, inp, 32, &m, NULL, 1, NULL, 0), FL_EINVAL);
	assert_int_equal(kern_matmul(out, 1, inp, 31, &m, NULL, 1, small, 8), FL_EINVAL);
}

/* ---- elementwise / row kernels -------------------------------------------- */

static void test_embed(void **state)
{
	(void)state;
	const int V = 11, C = 64, N = 6;
	float *deq;
	size_t rb;
	uint8_t *w = make_weights(GTYPE_Q4_0, V, C, &deq, &rb);
	kern_mat E;
	assert_int_equal(kern_mat_init(&E, GTYPE_Q4_0, w, V, C), 0);
	int32_t tok[6] = {3, 0, 10, 3, 7, 1};
	float out[6 * 64];
	double ref[6 * 64];
	kern_embed(out, tok, &E, N);
	for (int n = 0; n < N; n++)
		for (int c = 0; c < C; c++)
			ref[n * C + c] = deq[tok[n] * C + c];
	check("embed Q4_0 V=11 C=64", relerr(out, ref, (size_t)N * C));
	free(w);
	free(deq);
}

static void test_rmsnorm(void **state)
{
	(void)state;
	enum { N = 5, C = 37 };
	float x[N * C], w[C], out[N * C], rstd[N];
	double ref[N * C], rref[N];
	fill(x, N * C, 3.0f);
	fill(w, C, 1.0f);
	const float eps = 1e-5f;
	for (int n = 0; n < N; n++) {
		double ss = 0;
		for (int c = 0; c < C; c++)
			ss += (double)x[n * C + c] * x[n * C + c];
		rref[n] = 1.0 / sqrt(ss / C + eps);
		for (int c = 0; c < C; c++)
			ref[n * C + c] = x[n * C + c] * rref[n] * w[c];
	}
	kern_rmsnorm(out, rstd, x, w, eps, N, C);
	check("rmsnorm N=5 C=37", relerr(out, ref, N * C));
	check("rmsnorm rstd", relerr(rstd, rref, N));
	/* in place */
	kern_rmsnorm(x, NULL, x, w, eps, N, C);
	check("rmsnorm in place", relerr(x, ref, N * C));
}

/* Reference RoPE by complex multiplication: the pair (a, b) is the complex
 * number a + ib, rotated by e^{i p theta_i}. */
static void ref_rope(double *x, int nh, int hd, int n_rot, double base, int mode, int p)
{
	for (int h = 0; h < nh; h++)
		for (int i = 0; i < n_rot / 2; i++) {
			int ia = mode == KERN_ROPE_NEOX ? i : 2 * i;
			int ib = mode == KERN_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
			double theta = (double)p / pow(base, (2.0 * i) / n_rot);
			double re = x[h * hd + ia], im = x[h * hd + ib];
			double cr = cos(theta), ci = sin(theta);
			x[h * hd + ia] = re * cr - im * ci;
			x[h * hd + ib] = re * ci + im * cr;
		}
}

static void rope_case(int mode, int n_rot)
{
	enum { N = 7, NH = 3, HD = 10, LD = 33 };
	float x[N * LD];
	double ref[N * LD];
	int32_t pos[N] = {0, 1, 2, 5, 17, 100, 2047};
	fill(x, N * LD, 1.0f);
	for (int i = 0; i < N * LD; i++)
		ref[i] = x[i];
	for (int n = 0; n < N; n++)
		ref_rope(ref + n * LD, NH, HD, n_rot, 10000.0, mode, pos[n]);
	kern_rope(x, LD, pos, N, NH, HD, n_rot, 10000.0f, mode);
	char what[64];
	snprintf(what, sizeof what, "rope %s n_rot=%d hd=%d",
	         mode == KERN_ROPE_NEOX ? "neox" : "norm", n_rot, HD);
	check(what, relerr(x, ref, N * LD)); /* includes the untouched padding */
}

static void test_rope(void **state)
{
	(void)state;
	rope_case(KERN_ROPE_NORM, 10);
	rope_case(KERN_ROPE_NEOX, 10);
	rope_case(KERN_ROPE_NORM, 6); /* partial rotary */
	rope_case(KERN_ROPE_NEOX, 6);
	/* the two modes differ (guards against a mode being ignored) */
	float a[10], b[10];
	int32_t p = 3;
	fill(a, 10, 1.0f);
	memcpy(b, a, sizeof a);
	kern_rope(a, 10, &p, 1, 1, 10, 10, 10000.0f, KERN_ROPE_NORM);
	kern_rope(b, 10, &p, 1, 1, 10, 10, 10000.0f, KERN_ROPE_NEOX);
	assert_true(memcmp(a, b, sizeof a) != 0);
}

/* Naive attention in double straight from the definition. */
static void ref_attention(double *out, double *att, const float *q, const float *k, const float *v,
                          const kern_attn *s)
{
	const int group = s->NH / s->NKV;
	double *sc = malloc(sizeof(double) * (size_t)s->Tk);
	for (int b = 0; b < s->B; b++)
		for (int h = 0; h < s->NH; h++)
			for (int t = 0; t < s->Tq; t++) {
				const float *qr = q + ((size_t)b * s->Tq + t) * s->q_ld + h * s->hd;
				int kh = h / group, last = s->pos0 + t;
				double mx = -INFINITY, sum = 0;
				for (int j = 0; j <= last; j++) {
					const float *kr =
					    k + b * s->kv_bs + (size_t)j * s->kv_ld + kh * s->hd;
					double d = 0;
					for (int i = 0; i < s->hd; i++)
						d += (double)qr[i] * kr[i];
					sc[j] = d / sqrt((double)s->hd);
					mx = sc[j] > mx ? sc[j] : mx;
				}
				for (int j = 0; j <= last; j++)
					sum += exp(sc[j] - mx);
				double *ar = att + (((size_t)b * s->NH + h) * s->Tq + t) * s->Tk;
				for (int j = 0; j < s->Tk; j++)
					ar[j] = j <= last ? exp(sc[j] - mx) / sum : 0.0;
				double *orow =
				    out + ((size_t)b * s->Tq + t) * s->out_ld + h * s->hd;
				for (int i = 0; i < s->hd; i++) {
					double a = 0;
					for (int j = 0; j <= last; j++)
						a += ar[j] * v[b * s->kv_bs + (size_t)j * s->kv_ld +
						               kh * s->hd + i];
					orow[i] = a;
				}
			}
	free(sc);
}

static void attention_case(int B, int Tq, int Tk, int pos0, int NH, int NKV, int hd, int pad)
{
	kern_attn s = {.B = B, .Tq = Tq, .Tk = Tk, .pos0 = pos0, .NH = NH, .NKV = NKV, .hd = hd};
	s.q_ld = NH * hd + pad;
	s.kv_ld = NKV * hd + pad;
	s.out_ld = NH * hd + pad;
	s.kv_bs = (size_t)(Tk + 2) * s.kv_ld; /* batch stride larger than Tk rows */
	size_t nq = (size_t)B * Tq * s.q_ld, nkv = (size_t)B * s.kv_bs;
	size_t no = (size_t)B * Tq * s.out_ld, na = (size_t)B * NH * Tq * Tk;
	float *q = malloc(sizeof(float) * nq), *k = malloc(sizeof(float) * nkv);
	float *v = malloc(sizeof(float) * nkv), *out = calloc(no, sizeof(float));
	float *att = malloc(sizeof(float) * na);
	double *rout = calloc(no, sizeof(double)), *ratt = malloc(sizeof(double) * na);
	fill(q, nq, 2.0f);
	fill(k, nkv, 2.0f);
	fill(v, nkv, 1.0f);
	for (size_t i = 0; i < na; i++)
		att[i] = NAN; /* every entry must be written */
	kern_attention(out, att, q, k, v, &s);
	ref_attention(rout, ratt, q, k, v, &s);
	char what[96];
	snprintf(what, sizeof what, "attention B=%d Tq=%d Tk=%d pos0=%d NH=%d NKV=%d hd=%d", B, Tq,
	         Tk, pos0, NH, NKV, hd);
	/* compare only the head columns of out (padding is not written) */
	float *po = malloc(sizeof(float) * (size_t)B * Tq * NH * hd);
	double *pr = malloc(sizeof(double) * (size_t)B * Tq * NH * hd);
	for (int r = 0; r < B * Tq; r++)
		for (int c = 0; c < NH * hd; c++) {
			po[(size_t)r * NH * hd + c] = out[(size_t)r * s.out_ld + c];
			pr[(size_t)r * NH * hd + c] = rout[(size_t)r * s.out_ld + c];
		}
	check(what, relerr(po, pr, (size_t)B * Tq * NH * hd));
	check("  probabilities", relerr(att, ratt, na));
	free(po);
	free(pr);
	free(q);
	free(k);
	free(v);
	free(out);
	free(att);
	free(rout);
	free(ratt);
}

static void test_attention(void **state)
{
	(void)state;
	attention_case(2, 7, 7, 0, 6, 2, 5, 0);   /* GQA, odd head dim */
	attention_case(1, 70, 70, 0, 3, 3, 8, 3); /* > one 64-row chunk, padded rows */
	attention_case(2, 3, 11, 4, 4, 1, 6, 1);  /* decode-like: pos0 > 0, Tk > pos0+Tq */
	attention_case(1, 1, 9, 8, 4, 2, 4, 0);   /* one new token at the end */
}

static void test_swiglu_add(void **state)
{
	(void)state;
	enum { n = 101 };
	float g[n], u[n], out[n];
	double ref[n];
	fill(g, n, 8.0f);
	fill(u, n, 2.0f);
	for (int i = 0; i < n; i++)
		ref[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
	kern_swiglu(out, g, u, n);
	check("swiglu n=101", relerr(out, ref, n));
	for (int i = 0; i < n; i++)
		ref[i] = (double)g[i] + u[i];
	kern_add(out, g, u, n);
	check("add n=101", relerr(out, ref, n));
}

static void test_softmax_xent(void **state)
{
	(void)state;
	enum { N = 4, V = 29 };
	float x[N * V], p[N * V], losses[N];
	double rp[N * V], rl[N];
	fill(x, N * V, 20.0f); /* large logits: needs the max shift */
	int32_t tg[N] = {3, -1, 28, 0};
	double rsum = 0;
	int rcnt = 0;
	for (int n = 0; n < N; n++) {
		double mx = -INFINITY, s = 0;
		for (int i = 0; i < V; i++)
			mx = x[n * V + i] > mx ? x[n * V + i] : mx;
		for (int i = 0; i < V; i++)
			s += exp(x[n * V + i] - mx);
		for (int i = 0; i < V; i++)
			rp[n * V + i] = exp(x[n * V + i] - mx) / s;
		rl[n] = tg[n] < 0 ? 0.0 : -log(rp[n * V + tg[n]]);
		if (tg[n] >= 0) {
			rsum += rl[n];
			rcnt++;
		}
	}
	kern_softmax(p, x, N, V);
	check("softmax N=4 V=29", relerr(p, rp, N * V));
	double sum = -1;
	int cnt = kern_crossentropy(losses, &sum, x, tg, N, V);
	assert_int_equal(cnt, rcnt);
	check("cross-entropy per row", relerr(losses, rl, N));
	float fs = (float)sum;
	check("cross-entropy sum", relerr(&fs, &rsum, 1));
}

/* The exp-heavy kernels again with the portable loops (the default run
 * uses the AVX2 ones where the CPU has them). */
static void test_serial_cutoff(void **state)
{
	printf("  (default small-work cut-off: these shapes run on one thread)\n");
	kern_parallel_always(0);
	test_matmul_f32(state);
	test_matmul_quant(state);
	test_attention(state);
	test_rmsnorm(state);
	test_rope(state);
	test_softmax_xent(state);
	kern_parallel_always(1);
}

static void test_portable_paths(void **state)
{
	int prev = kern_use_avx2(0);
	printf("  (portable loops; AVX2 loops %s by default on this CPU)\n",
	       prev ? "used" : "not used");
	test_matmul_quant(state);
	test_attention(state);
	test_swiglu_add(state);
	test_softmax_xent(state);
	kern_use_avx2(prev);
}

/* Extreme inputs for the exp approximations: large negative gaps underflow
 * to (near) zero probability, large |gate| saturates silu, NaN propagates. */
static void test_exp_ranges(void **state)
{
	(void)state;
	for (int mode = 0; mode < 2; mode++) {
		int prev = kern_use_avx2(mode);
		enum { V = 21 };
		float x[V], p[V];
		double rp[V];
		for (int i = 0; i < V; i++)
			x[i] = (float)(i * 10 - 150); /* -150 .. 50 */
		double z = 0;
		for (int i = 0; i < V; i++)
			z += exp((double)x[i] - 50.0);
		for (int i = 0; i < V; i++)
			rp[i] = exp((double)x[i] - 50.0) / z;
		kern_softmax(p, x, 1, V);
		check(mode ? "softmax wide range (avx2)" : "softmax wide range (portable)",
		      relerr(p, rp, V));
		float g[6] = {-200.0f, -90.0f, -20.0f, 20.0f, 90.0f, 200.0f}, u[6], o[6];
		double ro[6];
		for (int i = 0; i < 6; i++) {
			u[i] = 1.5f;
			ro[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * 1.5;
		}
		kern_swiglu(o, g, u, 6);
		check(mode ? "swiglu saturation (avx2)" : "swiglu saturation (portable)",
		      relerr(o, ro, 6));
		float xn[9] = {0, 1, 2, NAN, 4, 5, 6, 7, 8};
		kern_softmax(xn, xn, 1, 9);
		assert_true(isnan(xn[3]));
		kern_use_avx2(prev);
	}
}

int main(void)
{
	kern_set_threads(2);
	/* tiny shapes, but the threaded code paths (test_kernels also runs the
	 * default small-work cut-off) */
	kern_parallel_always(1);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_matmul_f32),    cmocka_unit_test(test_matmul_quant),
	    cmocka_unit_test(test_matmul_errors), cmocka_unit_test(test_embed),
	    cmocka_unit_test(test_rmsnorm),       cmocka_unit_test(test_rope),
	    cmocka_unit_test(test_attention),     cmocka_unit_test(test_swiglu_add),
	    cmocka_unit_test(test_softmax_xent),  cmocka_unit_test(test_portable_paths),
	    cmocka_unit_test(test_serial_cutoff), cmocka_unit_test(test_exp_ranges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
