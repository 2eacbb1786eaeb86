/* train_kern — see train_kern.h. */
#include "train_kern.h"
#include "kernels_simd.h"

#include "err.h"
#include "gtype.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* Query rows per chunk of the attention backward (as the forward). */
#define ATT_BWD_QCHUNK 64

/* Same cut-offs as kernels.c: small work stays on the calling thread. */
static size_t PAR_MIN_WORK = 32768;
static size_t PAR_MIN_MACS = (size_t)1 << 20;

/* Vector loops (AVX2 or NEON, kernels_simd.h): -1 not decided yet (first
 * use asks the CPU), 0 off, 1 on. */
static int tk_avx2 = -1;

int tk_use_avx2(int on)
{
	int prev = tk_avx2 < 0 ? kern_simd_usable() : tk_avx2;
	tk_avx2 = on && kern_simd_usable();
	return prev;
}

static int avx2_on(void)
{
	if (tk_avx2 < 0)
		tk_avx2 = kern_simd_usable();
	return tk_avx2;
}

void tk_parallel_always(int on)
{
	PAR_MIN_WORK = on ? 0 : 32768;
	PAR_MIN_MACS = on ? 0 : (size_t)1 << 20;
}

/* Threads for a product of `macs` multiply-adds that splits into `parts`. */
static int nthreads_for(size_t macs, int parts)
{
	int nth = omp_get_max_threads();
	if (macs < PAR_MIN_MACS)
		nth = 1;
	if (nth > parts)
		nth = parts;
	return nth < 1 ? 1 : nth;
}

/* [a, b) = the tid-th of nth even slices of [0, n), rounded to `align`. */
static void slice(int n, int nth, int tid, int align, int *a, int *b)
{
	int per = (n + nth - 1) / nth;
	per = (per + align - 1) / align * align;
	int x = per * tid, y = x + per;
	*a = x < n ? x : n;
	*b = y < n ? y : n;
}

/* ---- LoRA -------------------------------------------------------------------- */

void tk_lora_forward(float *out, int ld_out, const float *x, int ld_x, const float *A,
                     const float *B, int r, int in, int O, float s, int N, float *u)
{
	kern_init();
	const size_t macs = (size_t)N * r * ((size_t)in + O);
	const int nth = nthreads_for(macs, (N + 7) / 8);
#pragma omp parallel num_threads(nth)
	{
		int n0, n1;
		slice(N, omp_get_num_threads(), omp_get_thread_num(), 8, &n0, &n1);
		if (n1 > n0) {
			const int n = n1 - n0;
			/* u [n, r] = x [n, in] @ A^T */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, in, 1.0f,
			            x + (size_t)n0 * ld_x, ld_x, A, in, 0.0f, u + (size_t)n0 * r,
			            r);
			/* out [n, O] += s * u @ B^T */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, O, r, s,
			            u + (size_t)n0 * r, r, B, r, 1.0f, out + (size_t)n0 * ld_out,
			            ld_out);
		}
	}
}

void tk_lora_backward(float *dx, int ld_dx, float *dA, float *dB, float *du, const float *dy,
                      int ld_dy, const float *x, int ld_x, const float *u, const float *A,
                      const float *B, int r, int in, int O, float s, int N)
{
	kern_init();
	const size_t macs = (size_t)N * r * (2 * (size_t)O + 2 * (size_t)in);
	const int nth = nthreads_for(macs, 1 << 30);
#pragma omp parallel num_threads(nth)
	{
		const int T = omp_get_num_threads(), tid = omp_get_thread_num();
		int a, b;
		/* phase 1: dB [O, r] += s dy^T u (rows of O); du [N, r] = s dy B (rows of N) */
		if (dB) {
			slice(O, T, tid, 8, &a, &b);
			if (b > a)
				cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, b - a, r, N, s,
				            dy + a, ld_dy, u, r, 1.0f, dB + (size_t)a * r, r);
		}
		slice(N, T, tid, 8, &a, &b);
		if (b > a)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b - a, r, O, s,
			            dy + (size_t)a * ld_dy, ld_dy, B, r, 0.0f, du + (size_t)a * r,
			            r);
#pragma omp barrier
		/* phase 2: dA [r, in] += du^T x (columns of in); dx += du A (rows of N) */
		if (dA) {
			slice(in, T, tid, 16, &a, &b);
			if (b > a)
				cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, b - a, N,
				            1.0f, du, r, x + a, ld_x, 1.0f, dA + a, in);
		}
		if (dx) {
			slice(N, T, tid, 8, &a, &b);
			if (b > a)
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b - a, in, r,
				            1.0f, du + (size_t)a * r, r, A, in, 1.0f,
				            dx + (size_t)a * ld_dx, ld_dx);
		}
	}
}

/* ---- matrix products ----------------------------------------------------------- */

size_t tk_matmul_dx_scratch(int max_cols, int nthreads)
{
	if (max_cols <= 0 || nthreads <= 0)
		return 0;
	/* a thread's slice is about max_cols / nthreads wide (plus a block) and
	 * its tiles KERN_TILE_ROWS * nthreads rows high */
	return (size_t)KERN_TILE_ROWS * ((size_t)max_cols + 256 * (size_t)nthreads) *
	       (size_t)nthreads;
}

int tk_matmul_dx(float *dx, int ld_dx, const float *dy, int ld_dy, const kern_mat *W, int N,
                 int accumulate, float *scratch, size_t scratch_n)
{
	kern_init();
	const int O = W->rows, In = W->cols;
	if (N <= 0 || ld_dx < In || ld_dy < O)
		return FL_EINVAL;
	const float beta0 = accumulate ? 1.0f : 0.0f;
	const size_t macs = (size_t)N * O * In;

	if (W->type == GTYPE_F32 && W->row_bytes % sizeof(float) == 0) {
		const float *Wf = W->data;
		const int ldw = (int)(W->row_bytes / sizeof(float));
		const int nth = nthreads_for(macs, (In + 15) / 16);
#pragma omp parallel num_threads(nth)
		{
			int i0, i1;
			slice(In, omp_get_num_threads(), omp_get_thread_num(), 16, &i0, &i1);
			if (i1 > i0)
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, i1 - i0,
				            O, 1.0f, dy, ld_dy, Wf + i0, ldw, beta0, dx + i0,
				            ld_dx);
		}
		return 0;
	}
	gtype_dequant_fn deq = gtype_dequant_fn_of(W->type);
	const size_t be = gtype_block_elems(W->type), bb = gtype_block_bytes(W->type);
	if (!deq || be == 0)
		return FL_EUNSUPPORTED;
	const int nblk = (int)((size_t)In / be);
	int nth = nthreads_for(macs, nblk);
	if (!scratch)
		return FL_EINVAL;
	/* each thread needs at least 16 rows of its slice */
	while (nth > 1) {
		size_t w = ((size_t)(nblk + nth - 1) / nth) * be;
		if (scratch_n / nth >= 16 * w)
			break;
		nth--;
	}
	{
		size_t w = ((size_t)(nblk + nth - 1) / nth) * be;
		if (scratch_n / nth < 16 * w)
			return FL_EINVAL;
	}
	const size_t per_thread = scratch_n / (size_t)nth;
	const uint8_t *base = W->data;
#pragma omp parallel num_threads(nth)
	{
		const int tid = omp_get_thread_num(), T = omp_get_num_threads();
		int b0, b1;
		slice(nblk, T, tid, 1, &b0, &b1);
		if (b1 > b0) {
			const int i0 = (int)(b0 * be), w = (int)((size_t)(b1 - b0) * be);
			float *tbuf = scratch + (size_t)tid * per_thread;
			int tile = (int)(per_thread / (size_t)w);
			if (tile > O)
				tile = O;
			for (int r0 = 0; r0 < O; r0 += tile) {
				const int nr = O - r0 < tile ? O - r0 : tile;
				/* W [r0:r0+nr, i0:i0+w] -> tbuf [nr, w] */
				for (int r = 0; r < nr; r++)
					deq(base + (size_t)(r0 + r) * W->row_bytes +
					        (size_t)b0 * bb,
					    tbuf + (size_t)r * w, (size_t)w);
				/* dx [N, i0:i0+w] (+)= dy [N, r0:r0+nr] @ tbuf */
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, w, nr,
				            1.0f, dy + r0, ld_dy, tbuf, w, r0 > 0 ? 1.0f : beta0,
				            dx + i0, ld_dx);
			}
		}
	}
	return 0;
}

void tk_matmul_dw(float *dW, const float *dy, int ld_dy, const float *x, int ld_x, int N, int O,
                  int In)
{
	kern_init();
	const int nth = nthreads_for((size_t)N * O * In, (O + 15) / 16);
#pragma omp parallel num_threads(nth)
	{
		int o0, o1;
		slice(O, omp_get_num_threads(), omp_get_thread_num(), 16, &o0, &o1);
		if (o1 > o0)
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o1 - o0, In, N, 1.0f,
			            dy + o0, ld_dy, x, ld_x, 1.0f, dW + (size_t)o0 * In, In);
	}
}

void tk_bias_bwd(float *db, const float *dy, int ld_dy, int N, int O)
{
	const int nth = nthreads_for((size_t)N * O * 32, (O + 63) / 64);
#pragma omp parallel num_threads(nth)
	{
		int o0, o1;
		slice(O, omp_get_num_threads(), omp_get_thread_num(), 16, &o0, &o1);
		for (int n = 0; n < N; n++) {
			const float *r = dy + (size_t)n * ld_dy;
#pragma omp simd
			for (int o = o0; o < o1; o++)
				db[o] += r[o];
		}
	}
}

/* ---- normalisation, rotary, activation ------------------------------------------ */

void tk_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                    const float *rstd, int N, int C, int accumulate)
{
	const size_t work = (size_t)N * C;
#pragma omp parallel for schedule(static) if (work > PAR_MIN_WORK)
	for (int n = 0; n < N; n++) {
		const float *g = dout + (size_t)n * C, *xr = x + (size_t)n * C;
		float *d = dx + (size_t)n * C;
		const float r = rstd[n];
		double dot = 0.0;
#pragma omp simd reduction(+ : dot)
		for (int i = 0; i < C; i++)
			dot += (double)g[i] * w[i] * xr[i];
		const float k = (float)(dot * (double)r * r * r / C);
		if (accumulate) {
#pragma omp simd
			for (int i = 0; i < C; i++)
				d[i] += r * (g[i] * w[i]) - xr[i] * k;
		} else {
#pragma omp simd
			for (int i = 0; i < C; i++)
				d[i] = r * (g[i] * w[i]) - xr[i] * k;
		}
	}
	if (!dw)
		return;
	const int nth = nthreads_for(work * 32, (C + 63) / 64);
#pragma omp parallel num_threads(nth)
	{
		int c0, c1;
		slice(C, omp_get_num_threads(), omp_get_thread_num(), 16, &c0, &c1);
		for (int n = 0; n < N; n++) {
			const float *g = dout + (size_t)n * C, *xr = x + (size_t)n * C;
			const float r = rstd[n];
#pragma omp simd
			for (int i = c0; i < c1; i++)
				dw[i] += g[i] * xr[i] * r;
		}
	}
}

void tk_rope_bwd(float *dx, int ld, const int32_t *pos, int N, int nh, int hd, int n_rot,
                 float freq_base, int mode)
{
	tk_rope_bwd_ff(dx, ld, pos, N, nh, hd, n_rot, freq_base, mode, NULL);
}

void tk_rope_bwd_ff(float *dx, int ld, const int32_t *pos, int N, int nh, int hd, int n_rot,
                    float freq_base, int mode, const float *ff)
{
	const int half = n_rot / 2;
	double inv_freq[KERN_MAX_HEAD_DIM / 2];
	for (int i = 0; i < half && i < KERN_MAX_HEAD_DIM / 2; i++)
		inv_freq[i] = pow((double)freq_base, -2.0 * i / n_rot) / (ff ? (double)ff[i] : 1.0);
#pragma omp parallel for schedule(static) if ((size_t)N * nh * n_rot > PAR_MIN_WORK)
	for (int n = 0; n < N; n++) {
		float *row = dx + (size_t)n * (size_t)ld;
		const double p = (double)pos[n];
		for (int i = 0; i < half; i++) {
			/* the forward's cos/sin, rounded the same way */
			double ang = p * inv_freq[i];
			float c = (float)cos(ang), s = (float)sin(ang);
			int a = mode == KERN_ROPE_NEOX ? i : 2 * i;
			int b = mode == KERN_ROPE_NEOX ? i + half : 2 * i + 1;
			for (int h = 0; h < nh; h++) {
				float *hx = row + (size_t)h * hd;
				float g0 = hx[a], g1 = hx[b];
				hx[a] = g0 * c + g1 * s;
				hx[b] = g1 * c - g0 * s;
			}
		}
	}
}

void tk_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                   size_t n)
{
	if (avx2_on()) {
		/* 4096-element blocks keep the threads' slices cache-line aligned */
		const size_t blk = 4096, nb = (n + blk - 1) / blk;
#pragma omp parallel for schedule(static) if (n > PAR_MIN_WORK)
		for (size_t b = 0; b < nb; b++) {
			size_t o = b * blk, len = n - o < blk ? n - o : blk;
			TK_SIMD(swiglu_bwd)(dgate + o, dup + o, dh + o, gate + o, up + o, len);
		}
		return;
	}
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN_WORK)
	for (size_t i = 0; i < n; i++) {
		const float g = gate[i];
		const float sg = 1.0f / (1.0f + expf(-g));
		const float silu = g * sg;
		const float d = dh[i];
		dup[i] = d * silu;
		dgate[i] = d * up[i] * (sg * (1.0f + g * (1.0f - sg)));
	}
}

/* ---- attention ---------------------------------------------------------------- */

size_t tk_attention_bwd_scratch(int B, int T, int NH, int NKV, int hd, int nthreads)
{
	const size_t qc = T < ATT_BWD_QCHUNK ? (size_t)T : ATT_BWD_QCHUNK;
	size_t n = qc * (size_t)T * (size_t)nthreads; /* dP of one query chunk */
	if (NKV != NH) /* per-head dK, dV before summing each group */
		n += 2 * (size_t)B * (size_t)T * (size_t)NH * (size_t)hd;
	return n;
}

void tk_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                      const float *k, const float *v, const float *att, const kern_attn *s,
                      float *scratch, size_t scratch_n)
{
	kern_init();
	const int B = s->B, T = s->Tq, Tk = s->Tk, NH = s->NH, NKV = s->NKV, hd = s->hd;
	const int group = NH / NKV, QD = NH * hd;
	const float scale = (float)(1.0 / sqrt((double)hd));
	const int items = B * NH;
	const size_t macs = (size_t)items * T * (size_t)T * (size_t)hd * 2;
	int nth = nthreads_for(macs, items);
	size_t extra = NKV != NH ? 2 * (size_t)B * T * (size_t)QD : 0;
	const size_t per = (size_t)(T < ATT_BWD_QCHUNK ? T : ATT_BWD_QCHUNK) * (size_t)T;
	while (nth > 1 && extra + per * nth > scratch_n)
		nth--;
	/* Per-head dK, dV: straight into dk/dv without GQA, else [B, T, NH*hd]
	 * buffers summed per group afterwards. */
	float *dkh = dk, *dvh = dv;
	int kh_ld = s->kv_ld;
	if (NKV != NH) {
		dkh = scratch + per * nth;
		dvh = dkh + (size_t)B * T * QD;
		kh_ld = QD;
	}
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
	for (int it = 0; it < items; it++) {
		const int h = it % NH, b = it / NH, kv = h / group;
		float *dP = scratch + (size_t)omp_get_thread_num() * per;
		const float *Pb = att + ((size_t)b * NH + h) * (size_t)T * Tk;
		const float *dO = dout + (size_t)b * T * s->out_ld + (size_t)h * hd;
		const float *Q = q + (size_t)b * T * s->q_ld + (size_t)h * hd;
		const float *K = k + (size_t)b * s->kv_bs + (size_t)kv * hd;
		const float *V = v + (size_t)b * s->kv_bs + (size_t)kv * hd;
		const int hc = NKV != NH ? h : kv; /* column block of dkh/dvh */
		float *dK = dkh + (size_t)b * T * kh_ld + (size_t)hc * hd;
		float *dV = dvh + (size_t)b * T * kh_ld + (size_t)hc * hd;
		float *dQ = dq + (size_t)b * T * s->q_ld + (size_t)h * hd;
		for (int t = 0; t < T; t++) {
			memset(dK + (size_t)t * kh_ld, 0, sizeof(float) * (size_t)hd);
			memset(dV + (size_t)t * kh_ld, 0, sizeof(float) * (size_t)hd);
		}
		/* query chunks: chunk [t0, t1) sees keys [0, t1) only (causal), so
		 * the products skip the zero upper triangle but for the diagonal
		 * blocks */
		for (int t0 = 0; t0 < T; t0 += ATT_BWD_QCHUNK) {
			const int t1 = t0 + ATT_BWD_QCHUNK < T ? t0 + ATT_BWD_QCHUNK : T;
			const int m = t1 - t0, nk = t1;
			const float *P = Pb + (size_t)t0 * Tk;
			/* dV [nk, hd] += P^T [nk, m] @ dO [m, hd] */
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, m, 1.0f, P, Tk,
			            dO + (size_t)t0 * s->out_ld, s->out_ld, 1.0f, dV, kh_ld);
			/* dP [m, nk] = dO [m, hd] @ V [nk, hd]^T */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, hd, 1.0f,
			            dO + (size_t)t0 * s->out_ld, s->out_ld, V, s->kv_ld, 0.0f, dP,
			            nk);
			/* dS = P * (dP - rowsum(P * dP)), causal part only */
			for (int t = t0; t < t1; t++) {
				const float *pr = Pb + (size_t)t * Tk;
				float *dr = dP + (size_t)(t - t0) * nk;
				double dot = 0.0;
				for (int j = 0; j <= t; j++)
					dot += (double)pr[j] * dr[j];
				const float d = (float)dot;
#pragma omp simd
				for (int j = 0; j <= t; j++)
					dr[j] = pr[j] * (dr[j] - d);
				memset(dr + t + 1, 0, sizeof(float) * (size_t)(nk - t - 1));
			}
			/* dQ [m, hd] = scale * dS @ K [nk, hd]; dK [nk, hd] += scale * dS^T @ Q */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, nk, scale, dP,
			            nk, K, s->kv_ld, 0.0f, dQ + (size_t)t0 * s->q_ld, s->q_ld);
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, m, scale, dP,
			            nk, Q + (size_t)t0 * s->q_ld, s->q_ld, 1.0f, dK, kh_ld);
		}
	}
	if (NKV == NH)
		return;
	/* dk/dv [b, t, kv] = sum of the group's heads */
	const int N = B * T, KVD = NKV * hd;
#pragma omp parallel for schedule(static) if ((size_t)N * QD > PAR_MIN_WORK)
	for (int n = 0; n < N; n++) {
		const float *ks = dkh + (size_t)n * QD, *vs = dvh + (size_t)n * QD;
		float *kd = dk + (size_t)n * s->kv_ld, *vd = dv + (size_t)n * s->kv_ld;
		for (int kv = 0; kv < NKV; kv++) {
			for (int i = 0; i < hd; i++) {
				float a = 0.0f, c = 0.0f;
				for (int g = 0; g < group; g++) {
					a += ks[(size_t)(kv * group + g) * hd + i];
					c += vs[(size_t)(kv * group + g) * hd + i];
				}
				kd[kv * hd + i] = a;
				vd[kv * hd + i] = c;
			}
		}
		(void)KVD;
	}
}

/* ---- loss and embedding ---------------------------------------------------------- */

void tk_crossentropy_bwd(float *logits, const int32_t *targets, int N, int V, float scale)
{
	kern_softmax(logits, logits, N, V);
#pragma omp parallel for schedule(static) if ((size_t)N * V > PAR_MIN_WORK)
	for (int n = 0; n < N; n++) {
		float *r = logits + (size_t)n * V;
		const int t = targets[n];
		if (t < 0) {
			memset(r, 0, sizeof(float) * (size_t)V);
			continue;
		}
		r[t] -= 1.0f;
#pragma omp simd
		for (int i = 0; i < V; i++)
			r[i] *= scale;
	}
}

void tk_embed_bwd(float *dE, const int32_t *tokens, const float *dx, int N, int C)
{
	/* threads own column slices, so repeated tokens never race */
	const int nth = nthreads_for((size_t)N * C * 32, (C + 63) / 64);
#pragma omp parallel num_threads(nth)
	{
		int c0, c1;
		slice(C, omp_get_num_threads(), omp_get_thread_num(), 16, &c0, &c1);
		for (int n = 0; n < N; n++) {
			float *d = dE + (size_t)tokens[n] * C;
			const float *g = dx + (size_t)n * C;
#pragma omp simd
			for (int i = c0; i < c1; i++)
				d[i] += g[i];
		}
	}
}
