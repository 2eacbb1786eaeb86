/* buf — bounded, growable byte buffers and bounds-checked little-endian
 * readers.
 *
 * A buf owns its bytes and never grows past its `max` (set at init), so a
 * peer or a file cannot make it allocate without limit. A rd is a read-only
 * view that fails (rather than reads past the end) when short. */
#ifndef FL_BUF_H
#define FL_BUF_H
#include <stddef.h>
#include <stdint.h>

typedef struct buf {
	uint8_t *data;
	size_t len; /* bytes in use */
	size_t cap; /* bytes allocated */
	size_t max; /* hard cap on len; 0 means SIZE_MAX */
} buf;

void buf_init(buf *b, size_t max);
void buf_fini(buf *b); /* frees; b is reusable after buf_init */
/* Makes room for `extra` more bytes. FL_ETOOBIG past max, FL_ENOMEM. */
int buf_reserve(buf *b, size_t extra);
int buf_append(buf *b, const void *p, size_t n);
int buf_put_u8(buf *b, uint8_t v);
int buf_put_u32le(buf *b, uint32_t v);
int buf_put_u64le(buf *b, uint64_t v);
/* Drops the first n bytes (n <= len). */
void buf_consume(buf *b, size_t n);
void buf_clear(buf *b); /* len = 0, keeps the allocation */
/* Frees the allocation if it is larger than keep bytes and empty enough;
 * used after a large transfer so idle holders stay small. */
void buf_shrink(buf *b, size_t keep);

/* Read view. */
typedef struct rd {
	const uint8_t *p;
	size_t n; /* bytes left */
} rd;

static inline rd rd_of(const void *p, size_t n)
{
	rd r = {(const uint8_t *)p, n};
	return r;
}
int rd_u8(rd *r, uint8_t *v);
int rd_u16le(rd *r, uint16_t *v);
int rd_u32le(rd *r, uint32_t *v);
int rd_u64le(rd *r, uint64_t *v);
int rd_f32le(rd *r, float *v);
/* Points *p at the next n bytes and skips them (no copy). */
int rd_bytes(rd *r, size_t n, const uint8_t **p);
int rd_skip(rd *r, size_t n);

/* Plain little-endian stores/loads on memory the caller has checked. */
static inline void st_u32le(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}
static inline void st_u64le(uint8_t *p, uint64_t v)
{
	st_u32le(p, (uint32_t)v);
	st_u32le(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t ld_u32le(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t ld_u64le(const uint8_t *p)
{
	return (uint64_t)ld_u32le(p) | (uint64_t)ld_u32le(p + 4) << 32;
}

/* Overflow-checked size arithmetic: 0 ok, FL_EOVERFLOW. */
int sz_add(size_t a, size_t b, size_t *out);
int sz_mul(size_t a, size_t b, size_t *out);

#endif
