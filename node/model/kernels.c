/* kernels — see kernels.h. */
#include "kernels.h"
#include "kernels_simd.h"

#include "err.h"
#include "gtype.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <string.h>

/* Query rows per attention work item: bounds the wasted upper-triangle work
 * of the score sgemm to about QCHUNK/2 keys per query. */
#define ATT_QCHUNK 64

/* Below this many floats touched (or multiply-adds for products), a kernel
 * runs on the calling thread: waking the team costs more than it saves, and
 * on a busy machine a descheduled team member stalls every barrier. */
static size_t PAR_MIN_WORK = 32768;
static size_t PAR_MIN_MACS = (size_t)1 << 20;

static pthread_once_t kern_once = PTHREAD_ONCE_INIT;

/* Vector inner loops (AVX2+FMA when the CPU has them, NEON on aarch64;
 * kernels_simd.h); set once. */
static int kern_avx2;

/* x[i] = exp(x[i] - mx), returns the sum. */
static float exp_sub_sum(float *x, int n, float mx)
{
	if (kern_avx2)
		return KERN_SIMD(exp_sub_sum)(x, n, mx);
	float sum = 0.0f;
	for (int i = 0; i < n; i++) {
		x[i] = expf(x[i] - mx);
		sum += x[i];
	}
	return sum;
}

static float sum_exp_sub(const float *x, int n, float mx)
{
	if (kern_avx2)
		return KERN_SIMD(sum_exp_sub)(x, n, mx);
	float sum = 0.0f;
	for (int i = 0; i < n; i++)
		sum += expf(x[i] - mx);
	return sum;
}

static float row_max(const float *x, int n)
{
	float mx = x[0];
#pragma omp simd reduction(max : mx)
	for (int i = 1; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	return mx;
}

static void kern_init_once(void)
{
	kern_avx2 = kern_simd_usable();
#ifdef OPENBLAS_VERSION
	/* OpenMP threads call sgemm concurrently on disjoint tiles; a threaded
	 * BLAS inside them would oversubscribe the cores. */
	openblas_set_num_threads(1);
#endif
}

void kern_init(void)
{
	pthread_once(&kern_once, kern_init_once);
}

void kern_set_threads(int n)
{
	kern_init();
	if (n > 0)
		omp_set_num_threads(n);
}

int kern_use_avx2(int on)
{
	kern_init();
	int prev = kern_avx2;
	kern_avx2 = on && kern_simd_usable();
	return prev;
}

void kern_parallel_always(int on)
{
	PAR_MIN_WORK = on ? 0 : 32768;
	PAR_MIN_MACS = on ? 0 : (size_t)1 << 20;
}

int kern_threads(void)
{
	return omp_get_max_threads();
}

int kern_mat_init(kern_mat *m, uint32_t type, const void *data, int rows, int cols)
{
	size_t rb;
	if (rows <= 0 || cols <= 0 || !data)
		return FL_EINVAL;
	int rc = gtype_row_size(type, (uint64_t)cols, &rb);
	if (rc != 0)
		return rc;
	m->type = type;
	m->data = data;
	m->rows = rows;
	m->cols = cols;
	m->row_bytes = rb;
	return 0;
}

size_t kern_matmul_scratch(int max_cols, int nthreads)
{
	if (max_cols <= 0 || nthreads <= 0)
		return 0;
	return (size_t)KERN_TILE_ROWS * (size_t)max_cols * (size_t)nthreads;
}

/* Rows [o0, o1) of the output, split into 16-row multiples so each thread's
 * sgemm works on full micro-panels. */
static void split_rows(int O, int nth, int tid, int *o0, int *o1)
{
	int per = (O + nth - 1) / nth;
	per = (per + 15) / 16 * 16;
	int a = per * tid, b = a + per;
	if (a > O)
		a = O;
	if (b > O)
		b = O;
	*o0 = a;
	*o1 = b;
}

static void add_bias(float *out, int ld_out, const float *bias, int N, int o0, int o1)
{
	for (int n = 0; n < N; n++) {
		float *r = out + (size_t)n * (size_t)ld_out;
#pragma omp simd
		for (int o = o0; o < o1; o++)
			r[o] += bias[o];
	}
}

/* Up to this many input rows a product is N matrix-vector products: sgemm
 * would pack the whole weight slice for a single row (decode steps). */
#define GEMV_MAX_N 4

/* out [N, nr] (ld_out) = inp [N, In] (ld_in) @ Wt [nr, In]^T (ldw). */
static void product(float *out, int ld_out, const float *inp, int ld_in, const float *Wt, int ldw,
                    int N, int nr, int In)
{
	if (N <= GEMV_MAX_N) {
		for (int n = 0; n < N; n++)
			cblas_sgemv(CblasRowMajor, CblasNoTrans, nr, In, 1.0f, Wt, ldw,
			            inp + (size_t)n * ld_in, 1, 0.0f, out + (size_t)n * ld_out, 1);
		return;
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, nr, In, 1.0f, inp, ld_in, Wt, ldw,
	            0.0f, out, ld_out);
}

int kern_matmul(float *out, int ld_out, const float *inp, int ld_in, const kern_mat *w,
                const float *bias, int N, float *scratch, size_t scratch_n)
{
	kern_init();
	const int O = w->rows, In = w->cols;
	if (N <= 0 || ld_in < In || ld_out < O)
		return FL_EINVAL;
	int nth = omp_get_max_threads();
	if ((size_t)N * (size_t)O * (size_t)In < PAR_MIN_MACS)
		nth = 1;
	/* Never more threads than 16-row slices. */
	if (nth > (O + 15) / 16)
		nth = (O + 15) / 16;
	if (nth < 1)
		nth = 1;

	if (w->type == GTYPE_F32 && w->row_bytes % sizeof(float) == 0) {
		const float *W = w->data;
		const int ldw = (int)(w->row_bytes / sizeof(float));
#pragma omp parallel num_threads(nth)
		{
			int o0, o1;
			split_rows(O, omp_get_num_threads(), omp_get_thread_num(), &o0, &o1);
			if (o1 > o0) {
				product(out + o0, ld_out, inp, ld_in, W + (size_t)o0 * (size_t)ldw,
				        ldw, N, o1 - o0, In);
				if (bias)
					add_bias(out, ld_out, bias, N, o0, o1);
			}
		}
		return 0;
	}

	gtype_dequant_fn deq = gtype_dequant_fn_of(w->type);
	if (!deq)
		return FL_EUNSUPPORTED;
	if (N <= GEMV_MAX_N && kern_avx2 &&
	    (w->type == GTYPE_Q8_0 || w->type == GTYPE_Q4_0 ||
	     (w->type == GTYPE_F16 && In % 16 == 0))) {
		/* decode steps: one fused pass over the stored rows, no tile */
		const uint8_t *wb = w->data;
#pragma omp parallel num_threads(nth)
		{
			int o0, o1;
			split_rows(O, omp_get_num_threads(), omp_get_thread_num(), &o0, &o1);
			for (int o = o0; o < o1; o++)
				KERN_SIMD(row_dots)
			(w->type, wb + (size_t)o * w->row_bytes, In, inp, ld_in, N, out + o,
			 ld_out);
			if (bias && o1 > o0)
				add_bias(out, ld_out, bias, N, o0, o1);
		}
		return 0;
	}
	size_t per_thread_min = (size_t)16 * (size_t)In;
	if (!scratch || scratch_n < per_thread_min)
		return FL_EINVAL;
	if ((size_t)nth > scratch_n / per_thread_min)
		nth = (int)(scratch_n / per_thread_min);
	const size_t per_thread = scratch_n / (size_t)nth;
	int tile = (int)(per_thread / (size_t)In);
	if (tile > KERN_TILE_ROWS)
		tile = KERN_TILE_ROWS;
	if (N <= GEMV_MAX_N && tile > 32)
		tile = 32; /* read once right after dequantizing: keep it in cache */
	const uint8_t *base = w->data;
#pragma omp parallel num_threads(nth)
	{
		int o0, o1;
		const int tid = omp_get_thread_num();
		split_rows(O, omp_get_num_threads(), tid, &o0, &o1);
		float *tbuf = scratch + (size_t)tid * per_thread;
		for (int r0 = o0; r0 < o1; r0 += tile) {
			int nr = o1 - r0 < tile ? o1 - r0 : tile;
			/* W rows [r0, r0+nr) -> tbuf [nr, I], once for all N rows. */
			for (int r = 0; r < nr; r++)
				deq(base + (size_t)(r0 + r) * w->row_bytes, tbuf + (size_t)r * In,
				    (size_t)In);
			product(out + r0, ld_out, inp, ld_in, tbuf, In, N, nr, In);
		}
		if (bias && o1 > o0)
			add_bias(out, ld_out, bias, N, o0, o1);
	}
	return 0;
}

void kern_embed(float *out, const int32_t *tokens, const kern_mat *E, int N)
{
	gtype_dequant_fn deq = gtype_dequant_fn_of(E->type);
	const uint8_t *base = E->data;
	const int C = E->cols;
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN_WORK)
	for (int n = 0; n < N; n++)
		deq(base + (size_t)tokens[n] * E->row_bytes, out + (size_t)n * C, (size_t)C);
}

void kern_rmsnorm(float *out, float *rstd, const float *x, const float *w, float eps, int N, int C)
{
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN_WORK)
	for (int n = 0; n < N; n++) {
		const float *xr = x + (size_t)n * C;
		float *orow = out + (size_t)n * C;
		double ss = 0.0;
#pragma omp simd reduction(+ : ss)
		for (int i = 0; i < C; i++)
			ss += (double)xr[i] * (double)xr[i];
		float s = (float)(1.0 / sqrt(ss / C + (double)eps));
#pragma omp simd
		for (int i = 0; i < C; i++)
			orow[i] = xr[i] * s * w[i];
		if (rstd)
			rstd[n] = s;
	}
}

void kern_rope(float *x, int ld, const int32_t *pos, int N, int nh, int hd, int n_rot,
               float freq_base, int mode)
{
	kern_rope_ff(x, ld, pos, N, nh, hd, n_rot, freq_base, mode, NULL);
}

void kern_rope_ff(float *x, int ld, const int32_t *pos, int N, int nh, int hd, int n_rot,
                  float freq_base, int mode, const float *ff)
{
	const int half = n_rot / 2;
	double inv_freq[KERN_MAX_HEAD_DIM / 2];
	assert(half <= KERN_MAX_HEAD_DIM / 2); /* callers validate head sizes */
	for (int i = 0; i < half; i++)
		inv_freq[i] = pow((double)freq_base, -2.0 * i / n_rot) / (ff ? (double)ff[i] : 1.0);
#pragma omp parallel for schedule(static) if ((size_t)N * nh * n_rot > PAR_MIN_WORK)
	for (int n = 0; n < N; n++) {
		float *row = x + (size_t)n * (size_t)ld;
		const double p = (double)pos[n];
		for (int i = 0; i < half; i++) {
			double ang = p * inv_freq[i];
			float c = (float)cos(ang), s = (float)sin(ang);
			int a = mode == KERN_ROPE_NEOX ? i : 2 * i;
			int b = mode == KERN_ROPE_NEOX ? i + half : 2 * i + 1;
			for (int h = 0; h < nh; h++) {
				float *hx = row + (size_t)h * hd;
				float x0 = hx[a], x1 = hx[b];
				hx[a] = x0 * c - x1 * s;
				hx[b] = x0 * s + x1 * c;
			}
		}
	}
}

void kern_attention(float *out, float *att, const float *q, const float *k, const float *v,
                    const kern_attn *s)
{
	kern_init();
	const int B = s->B, Tq = s->Tq, Tk = s->Tk, NH = s->NH, hd = s->hd;
	const int group = NH / s->NKV;
	const int nchunk = (Tq + ATT_QCHUNK - 1) / ATT_QCHUNK;
	const int items = B * NH * nchunk;
	const float scale = (float)(1.0 / sqrt((double)hd));
	/* multiply-adds of the score and value products, roughly */
	const size_t macs = (size_t)B * NH * Tq * (size_t)(s->pos0 + Tq) * (size_t)hd * 2;
#pragma omp parallel for schedule(dynamic, 1) if (macs > PAR_MIN_MACS / 4)
	for (int it = 0; it < items; it++) {
		const int c = it % nchunk, h = (it / nchunk) % NH, b = it / (nchunk * NH);
		const int kh = h / group;
		const int t0 = c * ATT_QCHUNK;
		const int t1 = t0 + ATT_QCHUNK < Tq ? t0 + ATT_QCHUNK : Tq;
		const int nk = s->pos0 + t1; /* keys any row of this chunk can see */
		const float *qb = q + ((size_t)b * Tq + t0) * s->q_ld + (size_t)h * hd;
		const float *kb = k + (size_t)b * s->kv_bs + (size_t)kh * hd;
		const float *vb = v + (size_t)b * s->kv_bs + (size_t)kh * hd;
		float *S = att + (((size_t)b * NH + h) * Tq + t0) * (size_t)Tk;
		/* S [t1-t0, nk] = scale * Q [t1-t0, hd] @ K [nk, hd]^T */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t1 - t0, nk, hd, scale, qb,
		            s->q_ld, kb, s->kv_ld, 0.0f, S, Tk);
		for (int t = t0; t < t1; t++) {
			float *r = S + (size_t)(t - t0) * Tk;
			const int valid = s->pos0 + t + 1;
			const float inv = 1.0f / exp_sub_sum(r, valid, row_max(r, valid));
#pragma omp simd
			for (int j = 0; j < valid; j++)
				r[j] *= inv;
			memset(r + valid, 0, sizeof(float) * (size_t)(Tk - valid));
		}
		/* out [t1-t0, hd] = P [t1-t0, nk] @ V [nk, hd] */
		float *ob = out + ((size_t)b * Tq + t0) * s->out_ld + (size_t)h * hd;
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t1 - t0, hd, nk, 1.0f, S, Tk,
		            vb, s->kv_ld, 0.0f, ob, s->out_ld);
	}
}

void kern_swiglu(float *out, const float *gate, const float *up, size_t n)
{
	kern_init();
	if (kern_avx2) {
		/* 4096-element blocks keep the threads' slices cache-line aligned */
		const size_t blk = 4096, nb = (n + blk - 1) / blk;
#pragma omp parallel for schedule(static) if (n > PAR_MIN_WORK)
		for (size_t b = 0; b < nb; b++) {
			size_t o = b * blk, len = n - o < blk ? n - o : blk;
			KERN_SIMD(swiglu)(out + o, gate + o, up + o, len);
		}
		return;
	}
#pragma omp parallel for schedule(static) if (n > PAR_MIN_WORK)
	for (size_t i = 0; i < n; i++) {
		float g = gate[i];
		out[i] = g / (1.0f + expf(-g)) * up[i];
	}
}

void kern_add(float *out, const float *a, const float *b, size_t n)
{
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN_WORK)
	for (size_t i = 0; i < n; i++)
		out[i] = a[i] + b[i];
}

void kern_softmax(float *probs, const float *logits, int N, int V)
{
	kern_init();
#pragma omp parallel for schedule(static) if ((size_t)N * V > PAR_MIN_WORK)
	for (int n = 0; n < N; n++) {
		const float *x = logits + (size_t)n * V;
		float *p = probs + (size_t)n * V;
		const float mx = row_max(x, V);
		if (p != x)
			memcpy(p, x, sizeof(float) * (size_t)V);
		const float inv = 1.0f / exp_sub_sum(p, V, mx);
#pragma omp simd
		for (int i = 0; i < V; i++)
			p[i] *= inv;
	}
}

int kern_crossentropy(float *losses, double *sum, const float *logits, const int32_t *targets,
                      int N, int V)
{
	double total = 0.0;
	int count = 0;
	kern_init();
#pragma omp parallel for schedule(static) reduction(+ : total, count)                      \
    if ((size_t)N * V > PAR_MIN_WORK)
	for (int n = 0; n < N; n++) {
		const int t = targets[n];
		if (t < 0) {
			losses[n] = 0.0f;
			continue;
		}
		const float *x = logits + (size_t)n * V;
		const float mx = row_max(x, V);
		const double se = sum_exp_sub(x, V, mx);
		double l = (double)mx + log(se) - (double)x[t];
		losses[n] = (float)l;
		total += l;
		count++;
	}
	*sum = total;
	return count;
}
