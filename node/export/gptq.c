/* gptq — see gptq.h. */
#include "gptq.h"

#include "err.h"
#include "gtype.h"
#include "half.h"
#include "model/kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define QK 32

struct gptq_hess {
	int n;
	uint64_t count;
	double *acc; /* [n, n] upper triangle: sum of x x^T */
	float *tmp;  /* [n, n] one chunk's product */
};

int gptq_hess_new(int n, gptq_hess **out)
{
	if (n < 1 || n > GPTQ_MAX_COLS)
		return FL_EINVAL;
	gptq_hess *h = calloc(1, sizeof *h);
	if (!h)
		return FL_ENOMEM;
	size_t nn = (size_t)n * n;
	h->n = n;
	h->acc = calloc(nn, sizeof(double));
	h->tmp = malloc(nn * sizeof(float));
	if (!h->acc || !h->tmp) {
		gptq_hess_free(h);
		return FL_ENOMEM;
	}
	*out = h;
	return 0;
}

void gptq_hess_free(gptq_hess *h)
{
	if (!h)
		return;
	free(h->acc);
	free(h->tmp);
	free(h);
}

void gptq_hess_reset(gptq_hess *h)
{
	memset(h->acc, 0, sizeof(double) * (size_t)h->n * h->n);
	h->count = 0;
}

int gptq_hess_n(const gptq_hess *h)
{
	return h->n;
}

uint64_t gptq_hess_count(const gptq_hess *h)
{
	return h->count;
}

int gptq_hess_add(gptq_hess *h, const float *X, int m, int ld)
{
	const int n = h->n;
	if (m < 0 || ld < n || (m > 0 && !X))
		return FL_EINVAL;
	if (m == 0)
		return 0;
	for (int r = 0; r < m; r++)
		for (int i = 0; i < n; i++)
			if (!isfinite(X[(size_t)r * ld + i]))
				return FL_ENUMERIC;
	kern_init(); /* BLAS single-threaded inside our OpenMP regions */
	/* tmp (upper) = X^T X, then acc += tmp in double */
	cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, m, 1.0f, X, ld, 0.0f, h->tmp, n);
#pragma omp parallel for schedule(dynamic, 16) if (n >= 256)
	for (int i = 0; i < n; i++) {
		double *a = h->acc + (size_t)i * n;
		const float *t = h->tmp + (size_t)i * n;
		for (int j = i; j < n; j++)
			a[j] += (double)t[j];
	}
	h->count += (uint64_t)m;
	return 0;
}

int gptq_hess_matrix(const gptq_hess *h, double *H)
{
	if (h->count == 0)
		return FL_ESTATE;
	const int n = h->n;
	const double s = 2.0 / (double)h->count;
	for (int i = 0; i < n; i++)
		for (int j = i; j < n; j++) {
			double v = s * h->acc[(size_t)i * n + j];
			H[(size_t)i * n + j] = v;
			H[(size_t)j * n + i] = v;
		}
	return 0;
}

/* ------------------------------------------------------------------ */
/* block rule                                                           */

float gptq_block_scale(uint32_t type, const double *v)
{
	double amax = 0.0, vmax = 0.0;
	for (int j = 0; j < QK; j++) {
		double a = fabs(v[j]);
		if (a > amax) { /* first of equal magnitudes, as ggml picks it */
			amax = a;
			vmax = v[j];
		}
	}
	/* in f32 like ggml's reference quantizers, so f32 inputs give its bytes */
	float d = type == GTYPE_Q4_0 ? (float)vmax / -8.0f : (float)amax / 127.0f;
	return half_to_f32(half_from_f32(d));
}

int gptq_code(uint32_t type, double w, float d)
{
	if (type == GTYPE_Q4_0) {
		if (d == 0.0f)
			return 8;
		double q = floor(w / (double)d + 8.5);
		return q < 0.0 ? 0 : q > 15.0 ? 15 : (int)q;
	}
	if (d == 0.0f)
		return 0;
	double q = round(w / (double)d);
	return q < -127.0 ? -127 : q > 127.0 ? 127 : (int)q;
}

static double deq(uint32_t type, int q, float d)
{
	return type == GTYPE_Q4_0 ? (double)d * (double)(q - 8) : (double)d * (double)q;
}

/* ------------------------------------------------------------------ */
/* linear algebra (row-major, double)                                   */

/* In-place lower Cholesky of A [n, n] (lower triangle read and written;
 * the strict upper triangle is left as is). Right-looking, blocked, with
 * BLAS level 3 for the panel and trailing update. FL_ENUMERIC when A is not
 * positive definite. */
static int chol_lower(double *A, int n)
{
	const int nb = 64;
	for (int k = 0; k < n; k += nb) {
		int kb = n - k < nb ? n - k : nb;
		/* unblocked on the diagonal block */
		for (int j = k; j < k + kb; j++) {
			double *rj = A + (size_t)j * n;
			double d = rj[j];
			for (int p = k; p < j; p++)
				d -= rj[p] * rj[p];
			if (!(d > 0.0) || !isfinite(d))
				return FL_ENUMERIC;
			d = sqrt(d);
			rj[j] = d;
			for (int i = j + 1; i < k + kb; i++) {
				double *ri = A + (size_t)i * n;
				double s = ri[j];
				for (int p = k; p < j; p++)
					s -= ri[p] * rj[p];
				ri[j] = s / d;
			}
		}
		int m = n - k - kb;
		if (m <= 0)
			continue;
		double *L11 = A + (size_t)k * n + k;
		double *P = A + (size_t)(k + kb) * n + k;
		double *A22 = A + (size_t)(k + kb) * n + k + kb;
		/* P = P L11^-T ; A22 -= P P^T (lower) */
		cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, m, kb,
		            1.0, L11, n, P, n);
		cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, m, kb, -1.0, P, n, 1.0, A22,
		            n);
	}
	return 0;
}

/* U = upper Cholesky factor of (H + lambda I)^-1 with dead-column handling
 * already applied to H. M, X: [n, n] scratch; U is written into X.
 * Reversal trick: with P the reversal permutation, P H P = L L^T gives
 * H^-1 = (P L^-T P)(P L^-1 P) and P L^-1 P is upper triangular. */
static int hinv_chol(const double *H, const unsigned char *dead, int n, double lambda, double *M,
                     double *X)
{
	for (int i = 0; i < n; i++)
		for (int j = 0; j <= i; j++) {
			int a = n - 1 - i, b = n - 1 - j;
			double v = dead[a] || dead[b] ? (a == b ? 1.0 : 0.0) : H[(size_t)a * n + b];
			if (a == b)
				v += lambda;
			M[(size_t)i * n + j] = v;
		}
	int rc = chol_lower(M, n);
	if (rc != 0)
		return rc;
	/* X = L^-1 (solve L X = I) */
	memset(X, 0, sizeof(double) * (size_t)n * n);
	for (int i = 0; i < n; i++)
		X[(size_t)i * n + i] = 1.0;
	cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, n, n, 1.0, M,
	            n, X, n);
	/* U[i][j] = X[n-1-i][n-1-j] for j >= i: reverse X in place (a 180-degree
	 * rotation swaps element k with element n*n-1-k) */
	size_t nn = (size_t)n * n;
	for (size_t k = 0; k < nn / 2; k++) {
		double t = X[k];
		X[k] = X[nn - 1 - k];
		X[nn - 1 - k] = t;
	}
	for (int i = 0; i < n; i++)
		for (int j = 0; j < i; j++)
			X[(size_t)i * n + j] = 0.0;
	return 0;
}

static void pack_block(uint32_t type, uint8_t *dst, float d, const int *q)
{
	uint16_t h = half_from_f32(d);
	dst[0] = (uint8_t)(h & 0xff);
	dst[1] = (uint8_t)(h >> 8);
	if (type == GTYPE_Q4_0) {
		for (int j = 0; j < QK / 2; j++)
			dst[2 + j] = (uint8_t)(q[j] | (q[j + QK / 2] << 4));
	} else {
		for (int j = 0; j < QK; j++)
			dst[2 + j] = (uint8_t)(int8_t)q[j];
	}
}

int gptq_output_error(const float *W, const void *q, uint32_t type, int rows, int cols,
                      const double *H, double *out)
{
	size_t rb;
	if (rows < 1 || cols < 1 || gtype_row_size(type, (uint64_t)cols, &rb) != 0)
		return FL_EINVAL;
	double *D = malloc(sizeof(double) * (size_t)rows * cols);
	double *T = malloc(sizeof(double) * (size_t)rows * cols);
	float *row = malloc(sizeof(float) * (size_t)cols);
	if (!D || !T || !row) {
		free(D);
		free(T);
		free(row);
		return FL_ENOMEM;
	}
	for (int r = 0; r < rows; r++) {
		gtype_dequant_row(type, (const uint8_t *)q + (size_t)r * rb, row, (size_t)cols);
		for (int c = 0; c < cols; c++)
			D[(size_t)r * cols + c] = (double)W[(size_t)r * cols + c] - (double)row[c];
	}
	kern_init();
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, cols, 1.0, D, cols, H,
	            cols, 0.0, T, cols);
	double s = 0.0;
	for (size_t k = 0; k < (size_t)rows * cols; k++)
		s += D[k] * T[k];
	*out = s;
	free(D);
	free(T);
	free(row);
	return 0;
}

int gptq_quantize(const float *W, int rows, int cols, const double *H, uint32_t type,
                  const gptq_opts *o, void *out, gptq_stats *st)
{
	if (type != GTYPE_Q4_0 && type != GTYPE_Q8_0)
		return FL_EUNSUPPORTED;
	if (!W || !H || !out || rows < 1 || cols < QK || cols % QK || cols > GPTQ_MAX_COLS)
		return FL_EINVAL;
	double damp = o && o->damp > 0 ? o->damp : GPTQ_DEFAULT_DAMP;
	int bs = o && o->block > 0 ? o->block : GPTQ_DEFAULT_BLOCK;
	if (bs % QK)
		return FL_EINVAL;
	const size_t nn = (size_t)cols * cols, rc_n = (size_t)rows * cols;
	const size_t bb = gtype_block_bytes(type), nblk = (size_t)cols / QK;
	int rc = 0;
	double *M = malloc(sizeof(double) * nn), *U = malloc(sizeof(double) * nn);
	double *Wd = malloc(sizeof(double) * rc_n);
	double *E = malloc(sizeof(double) * (size_t)rows * bs);
	unsigned char *dead = calloc((size_t)cols, 1);
	if (!M || !U || !Wd || !E || !dead) {
		rc = FL_ENOMEM;
		goto out;
	}
	for (size_t k = 0; k < rc_n; k++)
		if (!isfinite(W[k])) {
			rc = FL_ENUMERIC;
			goto out;
		}
	double mean = 0.0;
	int ndead = 0;
	for (int i = 0; i < cols; i++) {
		double d = H[(size_t)i * cols + i];
		if (!isfinite(d) || d < 0.0) {
			rc = FL_ENUMERIC;
			goto out;
		}
		if (d == 0.0) {
			dead[i] = 1;
			ndead++;
		}
	}
	/* mean of the diagonal after dead columns get H_ii = 1 */
	for (int i = 0; i < cols; i++)
		mean += dead[i] ? 1.0 : H[(size_t)i * cols + i];
	mean /= cols;
	kern_init();
	rc = FL_ENUMERIC;
	for (int t = 0; t <= GPTQ_DAMP_RETRIES && rc != 0; t++) {
		rc = hinv_chol(H, dead, cols, damp * mean, M, U);
		if (rc != 0)
			damp *= 10.0;
	}
	if (rc != 0)
		goto out;
	for (int r = 0; r < rows; r++)
		for (int c = 0; c < cols; c++)
			Wd[(size_t)r * cols + c] = dead[c] ? 0.0 : (double)W[(size_t)r * cols + c];

	const size_t row_bytes = nblk * bb;
	for (int i1 = 0; i1 < cols; i1 += bs) {
		const int i2 = i1 + bs < cols ? i1 + bs : cols, nb = i2 - i1;
#pragma omp parallel for schedule(static) if ((size_t)rows * nb * nb > 65536)
		for (int r = 0; r < rows; r++) {
			double *w = Wd + (size_t)r * cols;
			double *e = E + (size_t)r * bs;
			uint8_t *orow = (uint8_t *)out + (size_t)r * row_bytes;
			int q[QK];
			float d = 0.0f;
			for (int i = i1; i < i2; i++) {
				if (i % QK == 0)
					d = gptq_block_scale(type, w + i);
				int qi = gptq_code(type, w[i], d);
				q[i % QK] = qi;
				double err = (w[i] - deq(type, qi, d)) / U[(size_t)i * cols + i];
				e[i - i1] = err;
				const double *u = U + (size_t)i * cols;
				for (int j = i + 1; j < i2; j++)
					w[j] -= err * u[j];
				if (i % QK == QK - 1)
					pack_block(type, orow + (size_t)(i / QK) * bb, d, q);
			}
		}
		if (i2 < cols)
			cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols - i2, nb,
			            -1.0, E, bs, U + (size_t)i1 * cols + i2, cols, 1.0, Wd + i2,
			            cols);
	}
	rc = 0;
	if (st) {
		memset(st, 0, sizeof *st);
		st->damp_used = damp;
		st->dead_cols = ndead;
		if (o && o->stats) {
			size_t tot = (size_t)rows * row_bytes;
			uint8_t *rtn = malloc(tot ? tot : 1);
			if (!rtn) {
				rc = FL_ENOMEM;
				goto out;
			}
			for (int r = 0; r < rows && rc == 0; r++)
				rc = gtype_quant_row(type, W + (size_t)r * cols,
				                     rtn + (size_t)r * row_bytes, (size_t)cols);
			if (rc == 0)
				rc = gptq_output_error(W, out, type, rows, cols, H, &st->err_gptq);
			if (rc == 0)
				rc = gptq_output_error(W, rtn, type, rows, cols, H, &st->err_rtn);
			free(rtn);
			st->err_gptq /= rows;
			st->err_rtn /= rows;
		}
	}
out:
	free(M);
	free(U);
	free(Wd);
	free(E);
	free(dead);
	return rc;
}
