/* tensor — see tensor.h. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* gcc: -std=c11 already means -ffp-contract=off */
#endif
#include "tensor.h"

#include "buf.h"
#include "err.h"
#include "hmap.h"
#include "sha.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fedlora assumes a little-endian host (tensor bytes are hashed and stored as LE)"
#endif

#define TSET_ALIGN 64

struct tset {
	tensor **t; /* insertion order; each tensor separately allocated */
	size_t n, cap;
	hidx idx; /* name -> index into t (keyed: names come from peers' files) */
};

static uint64_t name_hash(const char *s)
{
	return hmap_hash(s, strlen(s));
}

static uint64_t hash_at(const void *ctx, uint32_t i)
{
	return name_hash(((const tset *)ctx)->t[i]->name);
}

static int name_eq(const void *ctx, uint32_t i, const void *name)
{
	return strcmp(((const tset *)ctx)->t[i]->name, name) == 0;
}

int tset_new(tset **out)
{
	tset *s = calloc(1, sizeof *s);
	if (!s)
		return FL_ENOMEM;
	hidx_init(&s->idx);
	*out = s;
	return 0;
}

static void tensor_free(tensor *t)
{
	if (!t)
		return;
	free((char *)t->name);
	free(t->data);
	free(t);
}

void tset_free(tset *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n; i++)
		tensor_free(s->t[i]);
	free(s->t);
	hidx_fini(&s->idx);
	free(s);
}

size_t tset_count(const tset *s)
{
	return s->n;
}

tensor *tset_at(const tset *s, size_t i)
{
	return i < s->n ? s->t[i] : NULL;
}

tensor *tset_find(const tset *s, const char *name)
{
	if (!s->idx.cap || !name)
		return NULL;
	uint32_t v = *hidx_slot(&s->idx, name_hash(name), name_eq, s, name);
	return v ? s->t[v - 1] : NULL;
}

size_t tset_numel(const tset *s)
{
	size_t total = 0;
	for (size_t i = 0; i < s->n; i++)
		total += s->t[i]->n; /* bounded: each <= 2^31, count <= 2^16 */
	return total;
}

static int name_ok(const char *name)
{
	if (!name)
		return 0;
	size_t len = strnlen(name, TSET_NAME_MAX + 1);
	if (len == 0 || len > TSET_NAME_MAX)
		return 0;
	for (size_t i = 0; i < len; i++)
		if ((uint8_t)name[i] < 0x20 || name[i] == 0x7f)
			return 0;
	return 1;
}

int tset_insert(tset *s, const char *name, uint32_t ndim, const uint64_t *shape, const float *init,
                tensor **out)
{
	if (!name_ok(name) || ndim > TSET_MAX_DIM || (ndim && !shape))
		return FL_EINVAL;
	if (tset_find(s, name))
		return FL_EMISMATCH;
	if (s->n >= TSET_MAX_TENSORS)
		return FL_ETOOBIG;
	uint64_t n = 1;
	for (uint32_t d = 0; d < ndim; d++) {
		if (shape[d] && n > TSET_MAX_ELEMS / shape[d])
			return FL_ETOOBIG;
		n *= shape[d];
	}
	if (n > TSET_MAX_ELEMS)
		return FL_ETOOBIG;
	size_t bytes = (size_t)n * sizeof(float);
	size_t alloc = (bytes + TSET_ALIGN - 1) / TSET_ALIGN * TSET_ALIGN;
	if (alloc == 0)
		alloc = TSET_ALIGN;

	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 16;
		tensor **nt = realloc(s->t, nc * sizeof *nt);
		if (!nt)
			return FL_ENOMEM;
		s->t = nt;
		s->cap = nc;
	}
	tensor *t = calloc(1, sizeof *t);
	char *nm = strdup(name);
	float *data = aligned_alloc(TSET_ALIGN, alloc);
	if (!t || !nm || !data) {
		free(t);
		free(nm);
		free(data);
		return FL_ENOMEM;
	}
	if (init)
		memcpy(data, init, bytes);
	else
		memset(data, 0, bytes);
	t->name = nm;
	t->ndim = ndim;
	for (uint32_t d = 0; d < ndim; d++)
		t->shape[d] = shape[d];
	t->n = (size_t)n;
	t->data = data;

	s->t[s->n++] = t;
	int rc = hidx_reserve(&s->idx, s->n, hash_at, s);
	if (!rc)
		hidx_fill(&s->idx, hidx_slot(&s->idx, name_hash(name), name_eq, s, name),
		          (uint32_t)(s->n - 1));
	if (rc) {
		s->n--;
		tensor_free(t);
		return rc;
	}
	if (out)
		*out = t;
	return 0;
}

static int shape_eq(const tensor *a, const tensor *b)
{
	if (a->ndim != b->ndim)
		return 0;
	for (uint32_t d = 0; d < a->ndim; d++)
		if (a->shape[d] != b->shape[d])
			return 0;
	return 1;
}

int tset_same_layout(const tset *a, const tset *b)
{
	if (a->n != b->n)
		return FL_EMISMATCH;
	for (size_t i = 0; i < a->n; i++) {
		const tensor *o = tset_find(b, a->t[i]->name);
		if (!o || !shape_eq(a->t[i], o))
			return FL_EMISMATCH;
	}
	return 0;
}

static int build(const tset *s, int zero, tset **out)
{
	tset *c = NULL;
	int rc = tset_new(&c);
	for (size_t i = 0; !rc && i < s->n; i++) {
		const tensor *t = s->t[i];
		rc = tset_insert(c, t->name, t->ndim, t->shape, zero ? NULL : t->data, NULL);
	}
	if (rc) {
		tset_free(c);
		return rc;
	}
	*out = c;
	return 0;
}

int tset_clone(const tset *s, tset **out)
{
	return build(s, 0, out);
}

int tset_zeros_like(const tset *s, tset **out)
{
	return build(s, 1, out);
}

/* Element-wise kernels. One IEEE operation per statement so that no
 * compiler contracts them into an FMA (results are then the same with gcc
 * and clang, with or without -mfma). */
enum op { OP_COPY, OP_ADD, OP_SUB, OP_AXPY };

static void kern(enum op op, float *restrict y, const float *restrict x, float a, size_t n)
{
	switch (op) {
	case OP_COPY:
		memcpy(y, x, n * sizeof *y);
		break;
	case OP_ADD:
		for (size_t i = 0; i < n; i++)
			y[i] = y[i] + x[i];
		break;
	case OP_SUB:
		for (size_t i = 0; i < n; i++)
			y[i] = y[i] - x[i];
		break;
	case OP_AXPY:
		for (size_t i = 0; i < n; i++) {
			float t = a * x[i];
			y[i] = y[i] + t;
		}
		break;
	}
}

static int binop(tset *y, const tset *x, enum op op, float a)
{
	int rc = tset_same_layout(y, x);
	if (rc)
		return rc;
	for (size_t i = 0; i < y->n; i++) {
		tensor *t = y->t[i];
		const tensor *o = tset_find(x, t->name); /* y != x: distinct buffers */
		kern(op, t->data, o->data, a, t->n);
	}
	return 0;
}

int tset_copy(tset *dst, const tset *src)
{
	if (dst == src)
		return 0;
	return binop(dst, src, OP_COPY, 0);
}

int tset_add(tset *y, const tset *x)
{
	if (y == x) {
		tset_scale(y, 2.0f); /* exact: y + y == 2y */
		return 0;
	}
	return binop(y, x, OP_ADD, 0);
}

int tset_sub(tset *y, const tset *x)
{
	if (y == x) {
		/* y - y is +0 for finite y, NaN for Inf/NaN: do it element-wise */
		for (size_t i = 0; i < y->n; i++)
			for (size_t j = 0; j < y->t[i]->n; j++)
				y->t[i]->data[j] = y->t[i]->data[j] - y->t[i]->data[j];
		return 0;
	}
	return binop(y, x, OP_SUB, 0);
}

int tset_axpy(tset *y, float a, const tset *x)
{
	if (y == x) {
		for (size_t i = 0; i < y->n; i++)
			for (size_t j = 0; j < y->t[i]->n; j++) {
				float t = a * y->t[i]->data[j];
				y->t[i]->data[j] = y->t[i]->data[j] + t;
			}
		return 0;
	}
	return binop(y, x, OP_AXPY, a);
}

int tset_diff(tset *out, const tset *a, const tset *b)
{
	int rc = tset_same_layout(out, a);
	if (!rc)
		rc = tset_same_layout(out, b);
	if (rc)
		return rc;
	for (size_t i = 0; i < out->n; i++) {
		tensor *t = out->t[i];
		const float *pa = tset_find(a, t->name)->data;
		const float *pb = tset_find(b, t->name)->data;
		for (size_t j = 0; j < t->n; j++)
			t->data[j] = pa[j] - pb[j]; /* element-wise: aliasing is harmless */
	}
	return 0;
}

void tset_scale(tset *y, float a)
{
	for (size_t i = 0; i < y->n; i++) {
		float *d = y->t[i]->data;
		for (size_t j = 0; j < y->t[i]->n; j++)
			d[j] = d[j] * a;
	}
}

void tset_zero(tset *y)
{
	for (size_t i = 0; i < y->n; i++)
		memset(y->t[i]->data, 0, y->t[i]->n * sizeof(float));
}

int tset_dot(const tset *a, const tset *b, double *out)
{
	int rc = tset_same_layout(a, b);
	if (rc)
		return rc;
	double acc = 0;
	for (size_t i = 0; i < a->n; i++) {
		const tensor *t = a->t[i];
		const float *o = tset_find(b, t->name)->data;
		for (size_t j = 0; j < t->n; j++)
			acc += (double)t->data[j] * (double)o[j];
	}
	*out = acc;
	return 0;
}

double tset_norm(const tset *s)
{
	double acc = 0;
	for (size_t i = 0; i < s->n; i++) {
		const tensor *t = s->t[i];
		for (size_t j = 0; j < t->n; j++)
			acc += (double)t->data[j] * (double)t->data[j];
	}
	return sqrt(acc);
}

int tset_all_finite(const tset *s, const tensor **where)
{
	for (size_t i = 0; i < s->n; i++) {
		const tensor *t = s->t[i];
		for (size_t j = 0; j < t->n; j++)
			if (!isfinite(t->data[j])) {
				if (where)
					*where = t;
				return 0;
			}
	}
	return 1;
}

/* ---- fingerprints ---- */

static int cmp_name(const void *a, const void *b)
{
	const tensor *x = *(const tensor *const *)a, *y = *(const tensor *const *)b;
	/* strcmp compares as unsigned char: bytewise order, a prefix sorts first */
	return strcmp(x->name, y->name);
}

#define FP_TAG_FULL  "fedlora.tset.v1" /* + NUL = 16 bytes */
#define FP_TAG_SHAPE "fedlora.tshp.v1"

static int fingerprint(const tset *s, int with_data, uint8_t out[32])
{
	const tensor **order = NULL;
	sha256_ctx *c = NULL;
	int rc = FL_ENOMEM;
	if (s->n) {
		order = malloc(s->n * sizeof *order);
		if (!order)
			goto out;
		for (size_t i = 0; i < s->n; i++)
			order[i] = s->t[i];
		qsort(order, s->n, sizeof *order, cmp_name);
	}
	rc = sha256_new(&c);
	if (rc)
		goto out;
	uint8_t hdr[16 + 8];
	memcpy(hdr, with_data ? FP_TAG_FULL : FP_TAG_SHAPE, 16);
	st_u64le(hdr + 16, (uint64_t)s->n);
	rc = sha256_update(c, hdr, sizeof hdr);
	for (size_t i = 0; !rc && i < s->n; i++) {
		const tensor *t = order[i];
		uint8_t b[4 + 4 + 8 * TSET_MAX_DIM + 8];
		size_t len = strlen(t->name), k = 0;
		st_u32le(b, (uint32_t)len);
		rc = sha256_update(c, b, 4);
		if (!rc)
			rc = sha256_update(c, t->name, len);
		st_u32le(b, t->ndim);
		k = 4;
		for (uint32_t d = 0; d < t->ndim; d++, k += 8)
			st_u64le(b + k, t->shape[d]);
		if (with_data) {
			st_u64le(b + k, (uint64_t)t->n * 4);
			k += 8;
		}
		if (!rc)
			rc = sha256_update(c, b, k);
		if (!rc && with_data && t->n)
			rc = sha256_update(c, t->data, t->n * sizeof(float)); /* LE host */
	}
	if (!rc) {
		rc = sha256_final(c, out);
		c = NULL;
	}
out:
	sha256_free(c);
	free(order);
	return rc;
}

int tset_fingerprint(const tset *s, uint8_t out[32])
{
	return fingerprint(s, 1, out);
}

int tset_shape_fingerprint(const tset *s, uint8_t out[32])
{
	return fingerprint(s, 0, out);
}
