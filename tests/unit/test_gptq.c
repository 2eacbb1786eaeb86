/* test_gptq — GPTQ on single linear layers against a direct double-precision
 * implementation written here, and against round-to-nearest.
 *
 * The reference below is the unblocked "optimal brain quantization" form of
 * the algorithm: it inverts the dampened Hessian by Gauss-Jordan elimination
 * and, after each column, removes that column from the inverse by the rank-1
 * downdate Hinv -= Hinv[:, i] Hinv[i, :] / Hinv[i, i]. The module under test
 * instead takes the upper Cholesky factor of the inverse once (reversal
 * trick, blocked BLAS factorisation) and defers the updates of later columns
 * to one product per lazy block. The two are algebraically identical, so the
 * chosen codes must agree except where a value sits within rounding error of
 * a decision boundary; the tests state how many such disagreements they
 * accept (in practice none occur).
 *
 * Inputs are correlated with per-channel scales spread over ~2 orders of
 * magnitude (as transformer activations are), the case where GPTQ's error
 * compensation pays off. */
#include "testutil.h"

#include "err.h"
#include "gptq.h"
#include "gtype.h"
#include "half.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QK 32

static double gauss(uint64_t *s)
{
	double u1 = tu_randu(s), u2 = tu_randu(s);
	if (u1 < 1e-300)
		u1 = 1e-300;
	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* X [n, cols]: x = diag(scale) (A z + 0.2 e), z in R^k, with a dead
 * (always zero) feature at index `dead` (or -1). */
static float *make_inputs(int n, int cols, int k, int dead, uint64_t seed)
{
	uint64_t s = seed;
	double *A = malloc(sizeof(double) * (size_t)cols * k);
	double *sc = malloc(sizeof(double) * (size_t)cols);
	float *X = malloc(sizeof(float) * (size_t)n * cols);
	assert_non_null(A);
	assert_non_null(sc);
	assert_non_null(X);
	for (int i = 0; i < cols * k; i++)
		A[i] = gauss(&s) / sqrt((double)k);
	for (int c = 0; c < cols; c++)
		sc[c] = exp(1.0 * gauss(&s));
	for (int r = 0; r < n; r++) {
		double z[64];
		for (int j = 0; j < k; j++)
			z[j] = gauss(&s);
		for (int c = 0; c < cols; c++) {
			double v = 0.2 * gauss(&s);
			for (int j = 0; j < k; j++)
				v += A[(size_t)c * k + j] * z[j];
			X[(size_t)r * cols + c] = c == dead ? 0.0f : (float)(sc[c] * v);
		}
	}
	free(A);
	free(sc);
	return X;
}

static float *make_weights(int rows, int cols, uint64_t seed)
{
	uint64_t s = seed;
	float *W = malloc(sizeof(float) * (size_t)rows * cols);
	assert_non_null(W);
	for (int i = 0; i < rows * cols; i++)
		W[i] = (float)(0.05 * gauss(&s));
	return W;
}

/* H = 2/n X^T X directly in double */
static double *hess_direct(const float *X, int n, int cols)
{
	double *H = calloc((size_t)cols * cols, sizeof(double));
	assert_non_null(H);
	for (int r = 0; r < n; r++)
		for (int i = 0; i < cols; i++) {
			double xi = X[(size_t)r * cols + i];
			for (int j = 0; j < cols; j++)
				H[(size_t)i * cols + j] += xi * (double)X[(size_t)r * cols + j];
		}
	for (size_t k = 0; k < (size_t)cols * cols; k++)
		H[k] *= 2.0 / n;
	return H;
}

/* ---- the reference ------------------------------------------------------ */

static float ref_scale(uint32_t type, const double *v)
{
	double amax = -1.0, vmax = 0.0;
	for (int j = 0; j < QK; j++)
		if (fabs(v[j]) > amax) {
			amax = fabs(v[j]);
			vmax = v[j];
		}
	float d = type == GTYPE_Q4_0 ? (float)vmax / -8.0f : (float)amax / 127.0f;
	return half_to_f32(half_from_f32(d));
}

static int ref_code(uint32_t type, double w, float d)
{
	if (type == GTYPE_Q4_0) {
		if (d == 0.0f)
			return 8;
		double q = floor(w / d + 8.5);
		return q < 0 ? 0 : q > 15 ? 15 : (int)q;
	}
	if (d == 0.0f)
		return 0;
	double q = w / d;
	q = q < 0 ? -floor(-q + 0.5) : floor(q + 0.5);
	return q < -127 ? -127 : q > 127 ? 127 : (int)q;
}

static void invert(double *A, int n) /* Gauss-Jordan, partial pivoting, in place */
{
	double *M = malloc(sizeof(double) * (size_t)n * 2 * n);
	assert_non_null(M);
	for (int i = 0; i < n; i++)
		for (int j = 0; j < 2 * n; j++)
			M[(size_t)i * 2 * n + j] = j < n ? A[(size_t)i * n + j] : (j - n == i);
	for (int c = 0; c < n; c++) {
		int p = c;
		for (int r = c + 1; r < n; r++)
			if (fabs(M[(size_t)r * 2 * n + c]) > fabs(M[(size_t)p * 2 * n + c]))
				p = r;
		if (p != c)
			for (int j = 0; j < 2 * n; j++) {
				double t = M[(size_t)c * 2 * n + j];
				M[(size_t)c * 2 * n + j] = M[(size_t)p * 2 * n + j];
				M[(size_t)p * 2 * n + j] = t;
			}
		double d = M[(size_t)c * 2 * n + c];
		assert_true(fabs(d) > 0);
		for (int j = 0; j < 2 * n; j++)
			M[(size_t)c * 2 * n + j] /= d;
		for (int r = 0; r < n; r++) {
			if (r == c)
				continue;
			double f = M[(size_t)r * 2 * n + c];
			if (f != 0.0)
				for (int j = 0; j < 2 * n; j++)
					M[(size_t)r * 2 * n + j] -= f * M[(size_t)c * 2 * n + j];
		}
	}
	for (int i = 0; i < n; i++)
		for (int j = 0; j < n; j++)
			A[(size_t)i * n + j] = M[(size_t)i * 2 * n + n + j];
	free(M);
}

/* codes [rows, cols] and scales [rows, cols/32] */
static void gptq_ref(const float *W0, int rows, int cols, const double *H0, uint32_t type,
                     double damp, int *codes, float *scales)
{
	double *W = malloc(sizeof(double) * (size_t)rows * cols);
	double *Hi = malloc(sizeof(double) * (size_t)cols * cols);
	assert_non_null(W);
	assert_non_null(Hi);
	memcpy(Hi, H0, sizeof(double) * (size_t)cols * cols);
	for (int i = 0; i < rows * cols; i++)
		W[i] = W0[i];
	double mean = 0;
	for (int i = 0; i < cols; i++) {
		if (Hi[(size_t)i * cols + i] == 0.0) {
			Hi[(size_t)i * cols + i] = 1.0;
			for (int r = 0; r < rows; r++)
				W[(size_t)r * cols + i] = 0.0;
		}
		mean += Hi[(size_t)i * cols + i];
	}
	mean /= cols;
	for (int i = 0; i < cols; i++)
		Hi[(size_t)i * cols + i] += damp * mean;
	invert(Hi, cols);
	for (int i = 0; i < cols; i++) {
		double hii = Hi[(size_t)i * cols + i];
		for (int r = 0; r < rows; r++) {
			double *w = W + (size_t)r * cols;
			if (i % QK == 0)
				scales[r * (cols / QK) + i / QK] = ref_scale(type, w + i);
			float d = scales[r * (cols / QK) + i / QK];
			int q = ref_code(type, w[i], d);
			codes[(size_t)r * cols + i] = q;
			double v = type == GTYPE_Q4_0 ? (double)d * (q - 8) : (double)d * q;
			double e = (w[i] - v) / hii;
			for (int j = i + 1; j < cols; j++)
				w[j] -= e * Hi[(size_t)i * cols + j];
		}
		/* remove column i from the inverse */
		for (int j = i + 1; j < cols; j++)
			for (int k = i + 1; k < cols; k++)
				Hi[(size_t)j * cols + k] -=
				    Hi[(size_t)j * cols + i] * Hi[(size_t)i * cols + k] / hii;
	}
	free(W);
	free(Hi);
}

/* ---- helpers ------------------------------------------------------------ */

/* codes and scales out of ggml blocks */
static void unpack(uint32_t type, const uint8_t *q, int rows, int cols, int *codes, float *scales)
{
	size_t bb = gtype_block_bytes(type);
	for (int r = 0; r < rows; r++)
		for (int b = 0; b < cols / QK; b++) {
			const uint8_t *p = q + ((size_t)r * (cols / QK) + b) * bb;
			scales[r * (cols / QK) + b] = half_to_f32((uint16_t)(p[0] | p[1] << 8));
			for (int j = 0; j < QK; j++) {
				int c;
				if (type == GTYPE_Q4_0)
					c = j < 16 ? (p[2 + j] & 15) : (p[2 + j - 16] >> 4);
				else
					c = (int8_t)p[2 + j];
				codes[(size_t)r * cols + b * QK + j] = c;
			}
		}
}

/* ||W X^T - deq(Q) X^T||_F^2 over the n inputs, in double, decoding q with
 * the library's dequantizer (the path every GGUF reader takes). */
static double out_err(const float *W, const uint8_t *q, uint32_t type, int rows, int cols,
                      const float *X, int n)
{
	size_t rb;
	assert_int_equal(gtype_row_size(type, cols, &rb), 0);
	float *dq = malloc(sizeof(float) * (size_t)cols);
	double s = 0;
	assert_non_null(dq);
	for (int r = 0; r < rows; r++) {
		assert_int_equal(gtype_dequant_row(type, q + r * rb, dq, cols), 0);
		for (int t = 0; t < n; t++) {
			double e = 0;
			for (int c = 0; c < cols; c++)
				e += ((double)W[(size_t)r * cols + c] - dq[c]) *
				     (double)X[(size_t)t * cols + c];
			s += e * e;
		}
	}
	free(dq);
	return s;
}

static uint8_t *rtn(const float *W, int rows, int cols, uint32_t type)
{
	size_t rb;
	assert_int_equal(gtype_row_size(type, cols, &rb), 0);
	uint8_t *q = malloc(rb * rows);
	assert_non_null(q);
	for (int r = 0; r < rows; r++)
		assert_int_equal(gtype_quant_row(type, W + (size_t)r * cols, q + r * rb, cols), 0);
	return q;
}

/* ---- tests -------------------------------------------------------------- */

static void test_hessian_accumulation(void **state)
{
	(void)state;
	const int n = 301, cols = 96;
	float *X = make_inputs(n, cols, 12, -1, 11);
	double *Hr = hess_direct(X, n, cols);
	gptq_hess *h;
	assert_int_equal(gptq_hess_new(cols, &h), 0);
	double *H = malloc(sizeof(double) * cols * cols);
	assert_non_null(H);
	assert_int_equal(gptq_hess_matrix(h, H), FL_ESTATE);
	/* uneven chunks, one of them empty */
	int cuts[] = {0, 7, 7, 100, 256, 301};
	for (int i = 0; i + 1 < 6; i++)
		assert_int_equal(
		    gptq_hess_add(h, X + (size_t)cuts[i] * cols, cuts[i + 1] - cuts[i], cols), 0);
	assert_int_equal(gptq_hess_count(h), n);
	assert_int_equal(gptq_hess_matrix(h, H), 0);
	double worst = 0;
	for (int i = 0; i < cols; i++)
		for (int j = 0; j < cols; j++) {
			double ref = Hr[i * cols + j];
			double scale = sqrt(Hr[i * cols + i] * Hr[j * cols + j]);
			double e = fabs(H[i * cols + j] - ref) / scale;
			if (e > worst)
				worst = e;
			assert_true(H[i * cols + j] == H[j * cols + i]);
		}
	printf("hessian: max |H - H_ref| / sqrt(H_ii H_jj) = %.3g (tolerance 1e-5)\n", worst);
	assert_true(worst < 1e-5);
	/* a NaN input is refused and adds nothing */
	X[5] = NAN;
	assert_int_equal(gptq_hess_add(h, X, 10, cols), FL_ENUMERIC);
	assert_int_equal(gptq_hess_count(h), n);
	free(X);
	free(Hr);
	free(H);
	gptq_hess_free(h);
}

static void test_block_rule_matches_ggml(void **state)
{
	(void)state;
	uint64_t s = 5;
	uint32_t types[2] = {GTYPE_Q4_0, GTYPE_Q8_0};
	for (int it = 0; it < 500; it++) {
		float v[QK];
		double dv[QK];
		double mag = exp(6.0 * tu_randu(&s) - 4.0);
		for (int j = 0; j < QK; j++) {
			v[j] = (float)(mag * gauss(&s));
			dv[j] = v[j];
		}
		if (it % 7 == 0)
			v[3] = -v[9], dv[3] = v[3]; /* equal magnitudes: ggml keeps the first */
		for (int k = 0; k < 2; k++) {
			uint8_t blk[34];
			assert_int_equal(gtype_quant_row(types[k], v, blk, QK), 0);
			float d = gptq_block_scale(types[k], dv);
			uint16_t hb = half_from_f32(d);
			if ((blk[0] | blk[1] << 8) != hb) {
				print_error("%s block %d: scale bits %04x, ggml %04x\n",
				            gtype_name(types[k]), it, hb, blk[0] | blk[1] << 8);
				fail();
			}
		}
	}
}

/* GPTQ vs the reference and vs round-to-nearest on one layer. */
static void one_layer(uint32_t type, int rows, int cols, int n, int block, int dead,
                      double *ratio_out)
{
	float *X = make_inputs(n, cols, 24, dead, 100 + cols + (uint64_t)type);
	float *W = make_weights(rows, cols, 7 + rows);
	double *H = hess_direct(X, n, cols);
	size_t rb;
	assert_int_equal(gtype_row_size(type, cols, &rb), 0);
	uint8_t *q = malloc(rb * rows);
	assert_non_null(q);
	gptq_opts o = {.damp = 0.01, .block = block, .stats = 1};
	gptq_stats st;
	assert_int_equal(gptq_quantize(W, rows, cols, H, type, &o, q, &st), 0);
	assert_int_equal(st.dead_cols, dead >= 0 ? 1 : 0);

	int *c1 = malloc(sizeof(int) * rows * cols), *c2 = malloc(sizeof(int) * rows * cols);
	float *s1 = malloc(sizeof(float) * rows * cols / QK);
	float *s2 = malloc(sizeof(float) * rows * cols / QK);
	assert_non_null(c1);
	assert_non_null(c2);
	assert_non_null(s1);
	assert_non_null(s2);
	unpack(type, q, rows, cols, c1, s1);
	gptq_ref(W, rows, cols, H, type, 0.01, c2, s2);
	int diff = 0, sdiff = 0;
	for (int i = 0; i < rows * cols; i++)
		diff += c1[i] != c2[i];
	for (int i = 0; i < rows * cols / QK; i++)
		sdiff += s1[i] != s2[i];

	uint8_t *qr = rtn(W, rows, cols, type);
	uint8_t *qref = malloc(rb * rows);
	assert_non_null(qref);
	/* pack the reference codes with the reference scales */
	for (int r = 0; r < rows; r++)
		for (int b = 0; b < cols / QK; b++) {
			uint8_t *p = qref + r * rb + (size_t)b * gtype_block_bytes(type);
			uint16_t hb = half_from_f32(s2[r * (cols / QK) + b]);
			p[0] = (uint8_t)hb;
			p[1] = (uint8_t)(hb >> 8);
			const int *cc = c2 + (size_t)r * cols + b * QK;
			for (int j = 0; j < QK; j++) {
				if (type == GTYPE_Q4_0) {
					if (j < 16)
						p[2 + j] = (uint8_t)(cc[j] | cc[j + 16] << 4);
				} else {
					p[2 + j] = (uint8_t)(int8_t)cc[j];
				}
			}
		}
	double e_g = out_err(W, q, type, rows, cols, X, n);
	double e_ref = out_err(W, qref, type, rows, cols, X, n);
	double e_rtn = out_err(W, qr, type, rows, cols, X, n);
	printf("%s [%d x %d], %d inputs, lazy block %d%s: ||WX-QX||^2 gptq %.6g  reference %.6g  "
	       "rtn %.6g  (gptq/rtn %.3f); codes differing from the reference %d of %d, scales "
	       "%d of %d\n",
	       gtype_name(type), rows, cols, n, block, dead >= 0 ? ", one dead input" : "", e_g,
	       e_ref, e_rtn, e_g / e_rtn, diff, rows * cols, sdiff, rows * cols / QK);
	/* agreement with the direct implementation: at most 1 in 2000 codes may
	 * differ (values within rounding of a decision boundary) */
	assert_true(diff * 2000 <= rows * cols);
	assert_true(fabs(e_g - e_ref) <= 1e-3 * e_ref);
	/* the point of GPTQ */
	assert_true(e_g < e_rtn);
	/* stats: tr(D H D^T)/rows is the same quantity as the direct error / (n rows / 2) */
	assert_true(fabs(st.err_gptq * rows * n / 2.0 - e_g) <= 1e-6 * e_g);
	assert_true(fabs(st.err_rtn * rows * n / 2.0 - e_rtn) <= 1e-6 * e_rtn);
	if (dead >= 0)
		for (int r = 0; r < rows; r++) {
			float row[4096];
			assert_true(cols <= 4096);
			gtype_dequant_row(type, q + r * rb, row, cols);
			assert_true(row[dead] == 0.0f);
		}
	if (ratio_out)
		*ratio_out = e_g / e_rtn;
	free(X);
	free(W);
	free(H);
	free(q);
	free(qr);
	free(qref);
	free(c1);
	free(c2);
	free(s1);
	free(s2);
}

static void test_q4_0_layer(void **state)
{
	(void)state;
	double r;
	one_layer(GTYPE_Q4_0, 48, 256, 512, 128, -1, &r);
	/* with these strongly correlated inputs the error drops well below RTN's */
	assert_true(r < 0.8);
}

static void test_q8_0_layer(void **state)
{
	(void)state;
	double r;
	one_layer(GTYPE_Q8_0, 40, 192, 400, 64, -1, &r);
	assert_true(r < 0.8);
}

static void test_block_sizes_and_dead_column(void **state)
{
	(void)state;
	/* lazy block = one group, block not dividing cols, and a dead input */
	one_layer(GTYPE_Q4_0, 17, 160, 300, 32, 37, NULL);
	one_layer(GTYPE_Q4_0, 17, 160, 300, 96, -1, NULL);
	one_layer(GTYPE_Q8_0, 9, 96, 200, 128, 95, NULL);
}

static void test_fewer_inputs_than_columns(void **state)
{
	(void)state;
	/* rank-deficient H: only the dampening makes it invertible */
	one_layer(GTYPE_Q4_0, 16, 128, 40, 128, -1, NULL);
}

static void test_refusals(void **state)
{
	(void)state;
	const int rows = 4, cols = 64;
	float *W = make_weights(rows, cols, 3);
	float *X = make_inputs(100, cols, 8, -1, 4);
	double *H = hess_direct(X, 100, cols);
	uint8_t q[4 * 2 * 34];
	gptq_opts o = {0};
	assert_int_equal(gptq_quantize(W, rows, cols, H, GTYPE_F16, &o, q, NULL), FL_EUNSUPPORTED);
	assert_int_equal(gptq_quantize(W, rows, 48, H, GTYPE_Q4_0, &o, q, NULL), FL_EINVAL);
	o.block = 48;
	assert_int_equal(gptq_quantize(W, rows, cols, H, GTYPE_Q4_0, &o, q, NULL), FL_EINVAL);
	o.block = 0;
	W[7] = NAN;
	assert_int_equal(gptq_quantize(W, rows, cols, H, GTYPE_Q4_0, &o, q, NULL), FL_ENUMERIC);
	W[7] = 0.1f;
	H[5 * cols + 5] = -1.0; /* not a Hessian */
	assert_int_equal(gptq_quantize(W, rows, cols, H, GTYPE_Q8_0, &o, q, NULL), FL_ENUMERIC);
	H[5 * cols + 5] = 1.0;
	assert_int_equal(gptq_quantize(W, rows, cols, H, GTYPE_Q8_0, &o, q, NULL), 0);
	free(W);
	free(X);
	free(H);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hessian_accumulation),
	    cmocka_unit_test(test_block_rule_matches_ggml),
	    cmocka_unit_test(test_q4_0_layer),
	    cmocka_unit_test(test_q8_0_layer),
	    cmocka_unit_test(test_block_sizes_and_dead_column),
	    cmocka_unit_test(test_fewer_inputs_than_columns),
	    cmocka_unit_test(test_refusals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
