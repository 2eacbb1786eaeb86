/* buf — see buf.h. */
#include "buf.h"

#include "err.h"

#include <stdlib.h>
#include <string.h>

void buf_init(buf *b, size_t max)
{
	b->data = NULL;
	b->len = b->cap = 0;
	b->max = max ? max : SIZE_MAX;
}

void buf_fini(buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

int buf_reserve(buf *b, size_t extra)
{
	size_t need;
	if (sz_add(b->len, extra, &need) || need > b->max)
		return FL_ETOOBIG;
	if (need <= b->cap)
		return 0;
	size_t ncap = b->cap ? b->cap : 256;
	while (ncap < need)
		ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
	if (ncap > b->max)
		ncap = b->max;
	uint8_t *p = realloc(b->data, ncap);
	if (!p)
		return FL_ENOMEM;
	b->data = p;
	b->cap = ncap;
	return 0;
}

int buf_append(buf *b, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	int rc = buf_reserve(b, n);
	if (rc)
		return rc;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

int buf_put_u8(buf *b, uint8_t v)
{
	return buf_append(b, &v, 1);
}

int buf_put_u32le(buf *b, uint32_t v)
{
	uint8_t t[4];
	st_u32le(t, v);
	return buf_append(b, t, 4);
}

int buf_put_u64le(buf *b, uint64_t v)
{
	uint8_t t[8];
	st_u64le(t, v);
	return buf_append(b, t, 8);
}

void buf_consume(buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		return;
	}
	memmove(b->data, b->data + n, b->len - n);
	b->len -= n;
}

void buf_clear(buf *b)
{
	b->len = 0;
}

void buf_shrink(buf *b, size_t keep)
{
	if (b->cap <= keep)
		return;
	if (b->len == 0) {
		free(b->data);
		b->data = NULL;
		b->cap = 0;
		return;
	}
	if (b->len <= keep) {
		uint8_t *p = realloc(b->data, keep);
		if (p) {
			b->data = p;
			b->cap = keep;
		}
	}
}

int rd_bytes(rd *r, size_t n, const uint8_t **p)
{
	if (r->n < n)
		return FL_EFORMAT;
	*p = r->p;
	r->p += n;
	r->n -= n;
	return 0;
}

int rd_skip(rd *r, size_t n)
{
	const uint8_t *p;
	return rd_bytes(r, n, &p);
}

int rd_u8(rd *r, uint8_t *v)
{
	const uint8_t *p;
	if (rd_bytes(r, 1, &p))
		return FL_EFORMAT;
	*v = p[0];
	return 0;
}

int rd_u16le(rd *r, uint16_t *v)
{
	const uint8_t *p;
	if (rd_bytes(r, 2, &p))
		return FL_EFORMAT;
	*v = (uint16_t)(p[0] | p[1] << 8);
	return 0;
}

int rd_u32le(rd *r, uint32_t *v)
{
	const uint8_t *p;
	if (rd_bytes(r, 4, &p))
		return FL_EFORMAT;
	*v = ld_u32le(p);
	return 0;
}

int rd_u64le(rd *r, uint64_t *v)
{
	const uint8_t *p;
	if (rd_bytes(r, 8, &p))
		return FL_EFORMAT;
	*v = ld_u64le(p);
	return 0;
}

int rd_f32le(rd *r, float *v)
{
	uint32_t u;
	if (rd_u32le(r, &u))
		return FL_EFORMAT;
	memcpy(v, &u, 4);
	return 0;
}

int sz_add(size_t a, size_t b, size_t *out)
{
	if (a > SIZE_MAX - b)
		return FL_EOVERFLOW;
	*out = a + b;
	return 0;
}

int sz_mul(size_t a, size_t b, size_t *out)
{
	if (a && b > SIZE_MAX / a)
		return FL_EOVERFLOW;
	*out = a * b;
	return 0;
}
