/* quant — see quant.h; exact arithmetic in docs/FORMATS.md.
 *
 * Every floating-point step is one IEEE operation written out on its own
 * (or an explicit fmaf), mirrored one for one by quant_avx2.c. Products
 * that meet an addition are exact (level * f16 scale has at most 18
 * significant bits), so even a compiler that contracted them into an FMA
 * could not change a result. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include "quant.h"

#include "err.h"
#include "half.h"
#include "quant_int.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(FL_HAVE_AVX2_BUILD) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#define QUANT_AVX2_BUILT 1
#else
#define QUANT_AVX2_BUILT 0
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
#define QUANT_NEON_BUILT 1
#else
#define QUANT_NEON_BUILT 0
#endif

_Static_assert(FL_ENUMERIC == -17, "quant_scale_for in quant.h returns -17");

/* ---- implementation selection ---- */

/* Process-wide choice, read on every call (relaxed atomics: several
 * aggregation threads may make the first call at once). -1: not decided. */
static _Atomic int g_impl = -1;

int quant_have_avx2(void)
{
#if QUANT_AVX2_BUILT
	static _Atomic int have = -1;
	int h = atomic_load_explicit(&have, memory_order_relaxed);
	if (h < 0) {
		unsigned a, b, c, d;
		int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
		__builtin_cpu_init();
		h = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
		atomic_store_explicit(&have, h, memory_order_relaxed);
	}
	return h;
#else
	return 0;
#endif
}

int quant_have_neon(void)
{
	return QUANT_NEON_BUILT;
}

enum quant_impl quant_vector_impl(void)
{
	if (quant_have_avx2())
		return QUANT_IMPL_AVX2;
	if (quant_have_neon())
		return QUANT_IMPL_NEON;
	return QUANT_IMPL_SCALAR;
}

const char *quant_impl_name(enum quant_impl impl)
{
	switch (impl) {
	case QUANT_IMPL_AVX2:
		return "avx2";
	case QUANT_IMPL_NEON:
		return "neon";
	case QUANT_IMPL_SCALAR:
		return "scalar";
	default:
		return "auto";
	}
}

static void set_impl(int v)
{
	atomic_store_explicit(&g_impl, v, memory_order_relaxed);
}

int quant_set_impl(enum quant_impl impl)
{
	switch (impl) {
	case QUANT_IMPL_AUTO:
		set_impl(quant_vector_impl());
		return 0;
	case QUANT_IMPL_SCALAR:
		set_impl(QUANT_IMPL_SCALAR);
		return 0;
	case QUANT_IMPL_AVX2:
		if (!quant_have_avx2())
			return FL_EUNSUPPORTED;
		set_impl(QUANT_IMPL_AVX2);
		return 0;
	case QUANT_IMPL_NEON:
		if (!quant_have_neon())
			return FL_EUNSUPPORTED;
		set_impl(QUANT_IMPL_NEON);
		return 0;
	}
	return FL_EINVAL;
}

enum quant_impl quant_impl_active(void)
{
	int v = atomic_load_explicit(&g_impl, memory_order_relaxed);
	if (v < 0) {
		v = quant_vector_impl();
		int expect = -1; /* keep an explicit choice made meanwhile */
		atomic_compare_exchange_strong(&g_impl, &expect, v);
		v = atomic_load_explicit(&g_impl, memory_order_relaxed);
	}
	return (enum quant_impl)v;
}

#if QUANT_AVX2_BUILT
static int use_avx2(void)
{
	return quant_impl_active() == QUANT_IMPL_AVX2;
}
#endif
#if QUANT_NEON_BUILT
static int use_neon(void)
{
	return quant_impl_active() == QUANT_IMPL_NEON;
}
#endif

/* ---- parameters and scales ---- */

int quant_check_params(const quant_params *p)
{
	if (!p || qt_check_fmt_block(p->fmt, p->block))
		return FL_EINVAL;
	if (p->round != QUANT_NEAREST && p->round != QUANT_STOCHASTIC)
		return FL_EINVAL;
	return 0;
}

/* ---- scalar kernels ---- */

static inline float load_x(const float *a, const float *b, size_t i)
{
	if (!b)
		return a[i];
	float x = a[i] + b[i];
	return x;
}

/* f16 with stochastic rounding between the two neighbouring f16 values.
 * 0 or FL_ENUMERIC (|x| beyond the f16 range). */
static int f16_stochastic(float x, float r, uint16_t *out)
{
	float ax = fabsf(x);
	if (ax > HALF_MAX)
		return FL_ENUMERIC;
	uint16_t sign = x < 0 ? 0x8000 : 0; /* -0.0f keeps +0 sign: harmless */
	uint16_t h = half_from_f32(ax);
	float v = half_to_f32(h);
	if (v == ax) {
		*out = (uint16_t)(sign | h);
		return 0;
	}
	uint16_t lo = v < ax ? h : (uint16_t)(h - 1);
	uint16_t hi = (uint16_t)(lo + 1);
	float lv = half_to_f32(lo), hv = half_to_f32(hi);
	float gap = hv - lv;  /* exact: neighbouring f16 values */
	float part = ax - lv; /* exact (Sterbenz / small exponent range) */
	float p = part / gap; /* probability of rounding up */
	*out = (uint16_t)(sign | (r < p ? hi : lo));
	return 0;
}

int quant_encode_block(const quant_params *p, const float *a, const float *b, size_t i0, size_t len,
                       uint8_t *scale, uint8_t *data)
{
	int sto = p->round == QUANT_STOCHASTIC;
	if (p->fmt == QT_F32) {
		for (size_t i = 0; i < len; i++) {
			float x = load_x(a, b, i);
			if (!(fabsf(x) <= FLT_MAX))
				return FL_ENUMERIC;
			memcpy(data + 4 * i, &x, 4);
		}
		return 0;
	}
	if (p->fmt == QT_F16) {
		for (size_t i = 0; i < len; i++) {
			float x = load_x(a, b, i);
			uint16_t h;
			if (!(fabsf(x) <= FLT_MAX))
				return FL_ENUMERIC;
			if (sto) {
				if (f16_stochastic(x, quant_uniform(p->seed, (uint32_t)(i0 + i)),
				                   &h))
					return FL_ENUMERIC;
			} else {
				h = half_from_f32(x);
				if ((h & 0x7fff) == 0x7c00)
					return FL_ENUMERIC;
			}
			data[2 * i] = (uint8_t)h;
			data[2 * i + 1] = (uint8_t)(h >> 8);
		}
		return 0;
	}

	/* q8 / q4 / q2: absmax, scale, then codes */
	float absmax = 0.0f;
	for (size_t i = 0; i < len; i++) {
		float ax = fabsf(load_x(a, b, i));
		if (!(ax <= FLT_MAX))
			return FL_ENUMERIC;
		absmax = ax > absmax ? ax : absmax;
	}
	uint16_t sb;
	float s;
	int rc = quant_scale_for(p->fmt, absmax, &sb, &s);
	if (rc)
		return rc;
	scale[0] = (uint8_t)sb;
	scale[1] = (uint8_t)(sb >> 8);

	size_t nbytes = p->fmt == QT_Q8 ? len : p->fmt == QT_Q4 ? (len + 1) / 2 : (len + 3) / 4;
	memset(data, 0, nbytes);
	for (size_t i = 0; i < len; i++) {
		int u; /* stored unsigned code */
		if (s == 0.0f) {
			/* level 0 (q2 has no 0 level: +1, and +1 * 0 = +0) */
			u = p->fmt == QT_Q8 ? 0 : p->fmt == QT_Q4 ? 8 : 2;
		} else {
			float t = load_x(a, b, i) / s;
			float q;
			if (p->fmt == QT_Q2) {
				float t1 = t - 1.0f;
				t = t1 * 0.5f;
			}
			if (sto) {
				float tr = t + quant_uniform(p->seed, (uint32_t)(i0 + i));
				q = floorf(tr);
			} else {
				q = nearbyintf(t);
			}
			float lo = p->fmt == QT_Q8 ? -127.0f : p->fmt == QT_Q4 ? -7.0f : -2.0f;
			float hi = p->fmt == QT_Q8 ? 127.0f : p->fmt == QT_Q4 ? 7.0f : 1.0f;
			q = fminf(fmaxf(q, lo), hi);
			int qi = (int)q;
			u = p->fmt == QT_Q8 ? (qi & 0xff) : p->fmt == QT_Q4 ? qi + 8 : qi + 2;
		}
		if (p->fmt == QT_Q8)
			data[i] = (uint8_t)u;
		else if (p->fmt == QT_Q4)
			data[i / 2] |= (uint8_t)(u << (4 * (i & 1)));
		else
			data[i / 4] |= (uint8_t)(u << (2 * (i & 3)));
	}
	return 0;
}

/* Integer level of element i of a block. */
static inline int level(enum qt_fmt fmt, const uint8_t *data, size_t i)
{
	switch (fmt) {
	case QT_Q8:
		return (int8_t)data[i];
	case QT_Q4:
		return (int)((data[i / 2] >> (4 * (i & 1))) & 0xf) - 8;
	default: /* QT_Q2 */
		return 2 * (int)((data[i / 4] >> (2 * (i & 3))) & 3) - 3;
	}
}

static inline float elem_f(enum qt_fmt fmt, const uint8_t *data, size_t i)
{
	if (fmt == QT_F32) {
		float v;
		memcpy(&v, data + 4 * i, 4);
		return v;
	}
	return half_to_f32((uint16_t)(data[2 * i] | data[2 * i + 1] << 8));
}

void quant_decode_block(enum qt_fmt fmt, const uint8_t *data, float s, size_t len, float *out)
{
	if (fmt == QT_F32 || fmt == QT_F16) {
		for (size_t i = 0; i < len; i++)
			out[i] = elem_f(fmt, data, i);
		return;
	}
	for (size_t i = 0; i < len; i++)
		out[i] = (float)level(fmt, data, i) * s;
}

void quant_accum_block(enum qt_fmt fmt, const uint8_t *data, float s, float w, size_t len,
                       float *acc)
{
	if (fmt == QT_F32 || fmt == QT_F16) {
		for (size_t i = 0; i < len; i++)
			acc[i] = fmaf(elem_f(fmt, data, i), w, acc[i]);
		return;
	}
	float ws = w * s;
	for (size_t i = 0; i < len; i++)
		acc[i] = fmaf((float)level(fmt, data, i), ws, acc[i]);
}

/* ---- whole tensors ---- */

static int is_q(enum qt_fmt f)
{
	return f == QT_Q8 || f == QT_Q4 || f == QT_Q2;
}

/* Byte offset of element i (i a multiple of 4) in the data string. */
static size_t data_off(enum qt_fmt fmt, size_t i)
{
	return i * qt_fmt_bits(fmt) / 8;
}

static int encode_scalar(const quant_params *p, const float *a, const float *b, size_t n,
                         uint8_t *scales, uint8_t *data)
{
	size_t blk = is_q(p->fmt) ? p->block : 4096; /* f32/f16: any run length */
	for (size_t i0 = 0, j = 0; i0 < n; i0 += blk, j++) {
		size_t len = n - i0 < blk ? n - i0 : blk;
		int rc =
		    quant_encode_block(p, a + i0, b ? b + i0 : NULL, i0, len,
		                       scales ? scales + 2 * j : NULL, data + data_off(p->fmt, i0));
		if (rc)
			return rc;
	}
	return 0;
}

static int encode(const quant_params *p, const char *name, const float *a, const float *b,
                  uint32_t ndim, const uint64_t *shape, qtensor *q)
{
	int rc = quant_check_params(p);
	if (rc)
		return rc;
	rc = qt_prepare(q, name, p->fmt, p->block, ndim, shape);
	if (rc) {
		qt_reset(q);
		return rc;
	}
	uint8_t *scales = q->scales_len ? qt_scales_mut(q) : NULL;
	uint8_t *data = qt_data_mut(q);
	const int vec = is_q(p->fmt) || (p->fmt == QT_F16 && p->round == QUANT_NEAREST);
	(void)vec; /* builds without a vector path */
#if QUANT_AVX2_BUILT
	if (vec && use_avx2())
		rc = quant_avx2_encode(p, a, b, q->n, scales, data);
	else
#endif
#if QUANT_NEON_BUILT
	    if (vec && use_neon())
		rc = quant_neon_encode(p, a, b, q->n, scales, data);
	else
#endif
		rc = encode_scalar(p, a, b, q->n, scales, data);
	if (rc) {
		qt_reset(q);
		return rc;
	}
	q->stochastic = p->round == QUANT_STOCHASTIC;
	return 0;
}

int quant_encode(const quant_params *p, const char *name, const float *x, uint32_t ndim,
                 const uint64_t *shape, qtensor *q)
{
	return encode(p, name, x, NULL, ndim, shape, q);
}

static float block_scale(const qtensor *q, size_t j)
{
	return half_to_f32((uint16_t)(q->scales[2 * j] | q->scales[2 * j + 1] << 8));
}

int quant_encode_ef(const quant_params *p, const char *name, const float *delta, float *residual,
                    uint32_t ndim, const uint64_t *shape, qtensor *q)
{
	int rc = encode(p, name, delta, residual, ndim, shape, q);
	if (rc)
		return rc;
	/* residual = (delta + residual) - deq(q), block by block (scalar: the
	 * result is the same whichever path encoded) */
	size_t blk = is_q(q->fmt) ? q->block : 128;
	float v[128];
	for (size_t i0 = 0, j = 0; i0 < q->n; i0 += blk, j++) {
		size_t len = q->n - i0 < blk ? q->n - i0 : blk;
		float s = is_q(q->fmt) ? block_scale(q, j) : 0.0f;
		quant_decode_block(q->fmt, q->data + data_off(q->fmt, i0), s, len, v);
		for (size_t i = 0; i < len; i++) {
			float x = delta[i0 + i] + residual[i0 + i];
			residual[i0 + i] = x - v[i];
		}
	}
	return 0;
}

/* O(1) consistency of a qtensor handed to the decoders. */
static int sane(const qtensor *q, size_t n)
{
	size_t sl, dl;
	if (!q || qt_layout(q->fmt, q->block, q->n, &sl, &dl) || sl != q->scales_len ||
	    dl != q->data_len || (dl && !q->data) || (sl && !q->scales))
		return FL_EINVAL;
	return n == q->n ? 0 : FL_EMISMATCH;
}

int quant_decode(const qtensor *q, float *out, size_t n)
{
	int rc = sane(q, n);
	if (rc)
		return rc;
#if QUANT_AVX2_BUILT
	if (use_avx2()) {
		quant_avx2_decode(q, out);
		return 0;
	}
#endif
#if QUANT_NEON_BUILT
	if (use_neon()) {
		quant_neon_decode(q, out);
		return 0;
	}
#endif
	size_t blk = is_q(q->fmt) ? q->block : n;
	for (size_t i0 = 0, j = 0; i0 < n; i0 += blk, j++) {
		size_t len = n - i0 < blk ? n - i0 : blk;
		float s = is_q(q->fmt) ? block_scale(q, j) : 0.0f;
		quant_decode_block(q->fmt, q->data + data_off(q->fmt, i0), s, len, out + i0);
	}
	return 0;
}

int quant_accumulate(const qtensor *q, float w, float *acc, size_t n)
{
	int rc = sane(q, n);
	if (rc)
		return rc;
	if (!isfinite(w))
		return FL_EINVAL;
#if QUANT_AVX2_BUILT
	if (use_avx2()) {
		quant_avx2_accumulate(q, w, acc);
		return 0;
	}
#endif
#if QUANT_NEON_BUILT
	if (use_neon()) {
		quant_neon_accumulate(q, w, acc);
		return 0;
	}
#endif
	size_t blk = is_q(q->fmt) ? q->block : n;
	for (size_t i0 = 0, j = 0; i0 < n; i0 += blk, j++) {
		size_t len = n - i0 < blk ? n - i0 : blk;
		float s = is_q(q->fmt) ? block_scale(q, j) : 0.0f;
		quant_accum_block(q->fmt, q->data + data_off(q->fmt, i0), s, w, len, acc + i0);
	}
	return 0;
}

int quant_apply(const qtensor *q, float *t, size_t n)
{
	/* fmaf(L, 1 * s, t) == t + L * s because L * s is exact */
	return quant_accumulate(q, 1.0f, t, n);
}

/* ---- tensors and sets ---- */

static int shape_matches(const qtensor *q, const tensor *t)
{
	if (q->name[0] && strcmp(q->name, t->name) != 0)
		return 0;
	if (q->ndim != t->ndim)
		return 0;
	for (uint32_t d = 0; d < q->ndim; d++)
		if (q->shape[d] != t->shape[d])
			return 0;
	return 1;
}

int quant_encode_tensor(const quant_params *p, const tensor *x, qtensor *q)
{
	return encode(p, x->name, x->data, NULL, x->ndim, x->shape, q);
}

int quant_encode_tensor_ef(const quant_params *p, const tensor *delta, tensor *residual, qtensor *q)
{
	if (delta->ndim != residual->ndim || delta->n != residual->n)
		return FL_EMISMATCH;
	for (uint32_t d = 0; d < delta->ndim; d++)
		if (delta->shape[d] != residual->shape[d])
			return FL_EMISMATCH;
	return quant_encode_ef(p, delta->name, delta->data, residual->data, delta->ndim,
	                       delta->shape, q);
}

static double sumsq_f(const float *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (double)x[i] * x[i];
	return s;
}

int quant_encode_clipped(const quant_params *ps, size_t n, const tensor *const *delta,
                         tensor *const *residual, double clip, qtensor *out, double *norm_out)
{
	if (!(clip > 0) || !isfinite(clip))
		return FL_EINVAL;
	size_t total = 0, maxn = 1;
	for (size_t i = 0; i < n; i++) {
		if (residual && (residual[i]->n != delta[i]->n))
			return FL_EMISMATCH;
		total += delta[i]->n;
		if (delta[i]->n > maxn)
			maxn = delta[i]->n;
	}
	float *v = malloc((total ? total : 1) * sizeof *v);
	float *w = malloc((total ? total : 1) * sizeof *w);
	float *d = malloc(maxn * sizeof *d);
	int rc = FL_ENOMEM;
	if (!v || !w || !d)
		goto out;
	double ss = 0;
	for (size_t i = 0, o = 0; i < n; o += delta[i]->n, i++) {
		for (size_t k = 0; k < delta[i]->n; k++)
			v[o + k] = delta[i]->data[k] + (residual ? residual[i]->data[k] : 0.0f);
		ss += sumsq_f(v + o, delta[i]->n);
	}
	rc = FL_ENUMERIC;
	if (!isfinite(ss))
		goto out;
	double s = ss > clip * clip ? clip / sqrt(ss) : 1.0, dn = 0;
	for (int it = 0; it <= 8; it++) {
		if (it == 8)
			s = 0; /* give up: an all-zero update is within any bound */
		double dss = 0;
		for (size_t i = 0, o = 0; i < n; o += delta[i]->n, i++) {
			const tensor *t = delta[i];
			for (size_t k = 0; k < t->n; k++)
				w[o + k] = (float)(v[o + k] * s);
			rc = encode(&ps[i], t->name, w + o, NULL, t->ndim, t->shape, &out[i]);
			if (!rc)
				rc = quant_decode(&out[i], d, t->n);
			if (rc)
				goto out;
			dss += sumsq_f(d, t->n);
		}
		dn = sqrt(dss);
		if (dn <= clip)
			break;
		s *= clip / dn * (1 - 1e-4);
	}
	if (residual) {
		for (size_t i = 0, o = 0; i < n; o += delta[i]->n, i++) {
			rc = quant_decode(&out[i], d, delta[i]->n);
			if (rc)
				goto out;
			for (size_t k = 0; k < delta[i]->n; k++)
				residual[i]->data[k] = w[o + k] - d[k];
		}
	}
	if (norm_out)
		*norm_out = dn;
	rc = 0;
out:
	free(v);
	free(w);
	free(d);
	return rc;
}

int quant_accumulate_tensor(const qtensor *q, float w, tensor *acc)
{
	if (!shape_matches(q, acc))
		return FL_EMISMATCH;
	return quant_accumulate(q, w, acc->data, acc->n);
}

int quant_apply_tensor(const qtensor *q, tensor *t)
{
	return quant_accumulate_tensor(q, 1.0f, t);
}

int quant_apply_set(tset *s, const qtensor *qs, size_t nq)
{
	for (size_t i = 0; i < nq; i++) {
		if (!qs[i].name[0])
			return FL_EINVAL;
		tensor *t = tset_find(s, qs[i].name);
		if (!t || !shape_matches(&qs[i], t))
			return FL_EMISMATCH;
		int rc = sane(&qs[i], t->n);
		if (rc)
			return rc;
		for (size_t k = 0; k < i; k++)
			if (strcmp(qs[k].name, qs[i].name) == 0)
				return FL_EMISMATCH; /* O(nq^2) but nq is a few hundred */
	}
	for (size_t i = 0; i < nq; i++) {
		int rc = quant_apply_tensor(&qs[i], tset_find(s, qs[i].name));
		if (rc)
			return rc; /* cannot happen after the checks above */
	}
	return 0;
}

uint64_t quant_seed_derive(uint64_t seed, const char *name)
{
	uint64_t h = 0xcbf29ce484222325ull ^ seed;
	for (const char *c = name ? name : ""; *c; c++) {
		h ^= (uint8_t)*c;
		h *= 0x100000001b3ull;
	}
	/* splitmix64 finaliser */
	h += 0x9e3779b97f4a7c15ull;
	h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
	h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
	return h ^ (h >> 31);
}
