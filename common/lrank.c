/* lrank — see lrank.h. */
#include "lrank.h"

#include "err.h"
#include "lora.h"

#include <string.h>

static int is_a(const char *name)
{
	size_t n = strlen(name);
	return n >= 7 && strcmp(name + n - 7, ".lora_a") == 0;
}

uint32_t lrank_of(const tensor *t)
{
	if (t->ndim != 2 || t->shape[0] > UINT32_MAX || t->shape[1] > UINT32_MAX)
		return 0;
	if (is_a(t->name))
		return (uint32_t)t->shape[0];
	if (lora_is_b(t->name))
		return (uint32_t)t->shape[1];
	return 0;
}

size_t lrank_slice_numel(const tensor *t, uint32_t r)
{
	uint32_t full = lrank_of(t);
	if (!full || r > full)
		return 0;
	/* lora_a [r, in] and lora_b [out, r]: the other dimension times r */
	return (size_t)(is_a(t->name) ? t->shape[1] : t->shape[0]) * r;
}

void lrank_gather(const tensor *src, uint32_t r, float *dst)
{
	uint32_t full = lrank_of(src);
	if (is_a(src->name)) { /* rows 0..r-1: a prefix */
		memcpy(dst, src->data, (size_t)r * src->shape[1] * sizeof(float));
		return;
	}
	size_t out = src->shape[0];
	for (size_t o = 0; o < out; o++)
		memcpy(dst + o * r, src->data + o * full, r * sizeof(float));
}

void lrank_scatter_add(tensor *dst, uint32_t r, const float *slice, float w)
{
	uint32_t full = lrank_of(dst);
	if (is_a(dst->name)) {
		size_t n = (size_t)r * dst->shape[1];
		for (size_t k = 0; k < n; k++)
			dst->data[k] += w * slice[k];
		return;
	}
	size_t out = dst->shape[0];
	for (size_t o = 0; o < out; o++) {
		float *d = dst->data + o * full;
		const float *s = slice + o * r;
		for (uint32_t k = 0; k < r; k++)
			d[k] += w * s[k];
	}
}

void lrank_copy_tail(tensor *dst, const tensor *src, uint32_t r)
{
	uint32_t full = lrank_of(dst);
	if (r >= full)
		return;
	if (is_a(dst->name)) {
		size_t in = dst->shape[1];
		memcpy(dst->data + (size_t)r * in, src->data + (size_t)r * in,
		       (size_t)(full - r) * in * sizeof(float));
		return;
	}
	for (size_t o = 0; o < dst->shape[0]; o++)
		memcpy(dst->data + o * full + r, src->data + o * full + r,
		       (full - r) * sizeof(float));
}

void lrank_zero_tail(tensor *t, uint32_t r)
{
	uint32_t full = lrank_of(t);
	if (r >= full)
		return;
	if (is_a(t->name)) {
		size_t in = t->shape[1];
		memset(t->data + (size_t)r * in, 0, (size_t)(full - r) * in * sizeof(float));
		return;
	}
	for (size_t o = 0; o < t->shape[0]; o++)
		memset(t->data + o * full + r, 0, (full - r) * sizeof(float));
}

int lrank_slice_set(const tset *full, uint32_t r, tset **out)
{
	if (r == 0)
		return FL_EINVAL;
	for (size_t i = 0; i < tset_count(full); i++)
		if (!lrank_slice_numel(tset_at(full, i), r))
			return FL_EINVAL;
	tset *s = NULL;
	int rc = tset_new(&s);
	for (size_t i = 0; !rc && i < tset_count(full); i++) {
		const tensor *t = tset_at(full, i);
		uint64_t shape[2] = {t->shape[0], t->shape[1]};
		if (is_a(t->name))
			shape[0] = r;
		else
			shape[1] = r;
		tensor *d = NULL;
		rc = tset_insert(s, t->name, 2, shape, NULL, &d);
		if (!rc)
			lrank_gather(t, r, d->data);
	}
	if (rc) {
		tset_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

uint32_t lrank_set_rank(const tset *s)
{
	uint32_t r = 0;
	for (size_t i = 0; i < tset_count(s); i++) {
		uint32_t k = lrank_of(tset_at(s, i));
		if (!k || (r && k != r))
			return 0;
		r = k;
	}
	return r;
}
