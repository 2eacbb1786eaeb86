/* qtensor — see qtensor.h. */
#include "qtensor.h"

#include "err.h"
#include "fedlora.pb-c.h"
#include "half.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)QT_F32 == (int)FEDLORA__QFORMAT__QFORMAT_F32, "QFormat numbering");
_Static_assert((int)QT_F16 == (int)FEDLORA__QFORMAT__QFORMAT_F16, "QFormat numbering");
_Static_assert((int)QT_Q8 == (int)FEDLORA__QFORMAT__QFORMAT_Q8, "QFormat numbering");
_Static_assert((int)QT_Q4 == (int)FEDLORA__QFORMAT__QFORMAT_Q4, "QFormat numbering");
_Static_assert((int)QT_Q2 == (int)FEDLORA__QFORMAT__QFORMAT_Q2, "QFormat numbering");

/* Hard cap for tensors we encode ourselves (the stochastic-rounding hash
 * indexes elements with 32 bits). Peers are held to qt_limits. */
#define QT_HARD_MAX_ELEMS (1ull << 31)

void qt_init(qtensor *q)
{
	memset(q, 0, sizeof *q);
}

void qt_fini(qtensor *q)
{
	free(q->own_scales);
	free(q->own_data);
	memset(q, 0, sizeof *q);
}

void qt_reset(qtensor *q)
{
	q->name[0] = 0;
	q->fmt = 0;
	q->block = 0;
	q->stochastic = 0;
	q->ndim = 0;
	q->n = 0;
	q->scales = q->data = NULL;
	q->scales_len = q->data_len = 0;
}

unsigned qt_fmt_bits(enum qt_fmt fmt)
{
	switch (fmt) {
	case QT_F32:
		return 32;
	case QT_F16:
		return 16;
	case QT_Q8:
		return 8;
	case QT_Q4:
		return 4;
	case QT_Q2:
		return 2;
	}
	return 0;
}

static const char *const fmt_names[] = {"?", "f32", "f16", "q8", "q4", "q2"};

const char *qt_fmt_name(enum qt_fmt fmt)
{
	return qt_fmt_bits(fmt) ? fmt_names[fmt] : "?";
}

int qt_fmt_parse(const char *s, enum qt_fmt *out)
{
	for (int f = QT_F32; f <= QT_Q2; f++)
		if (s && strcmp(s, fmt_names[f]) == 0) {
			*out = (enum qt_fmt)f;
			return 0;
		}
	return FL_EINVAL;
}

static int is_q(enum qt_fmt fmt)
{
	return fmt == QT_Q8 || fmt == QT_Q4 || fmt == QT_Q2;
}

int qt_check_fmt_block(enum qt_fmt fmt, uint32_t block)
{
	if (!qt_fmt_bits(fmt))
		return FL_EINVAL;
	if (!is_q(fmt))
		return block == 0 ? 0 : FL_EINVAL;
	return (block == 32 || block == 64 || block == 128) ? 0 : FL_EINVAL;
}

int qt_layout(enum qt_fmt fmt, uint32_t block, uint64_t n, size_t *scales_len, size_t *data_len)
{
	if (qt_check_fmt_block(fmt, block))
		return FL_EINVAL;
	unsigned bits = qt_fmt_bits(fmt);
	/* n <= 2^64-1; bits <= 32: compute ceil(n * bits / 8) without overflow */
	uint64_t per = 8 / (bits < 8 ? bits : 8); /* elements per byte for sub-byte formats */
	uint64_t d = bits >= 8 ? n : n / per + (n % per != 0);
	if (bits > 8 && d > UINT64_MAX / (bits / 8))
		return FL_EOVERFLOW;
	if (bits > 8)
		d *= bits / 8;
	uint64_t s = is_q(fmt) ? (n / block + (n % block != 0)) : 0;
	if (s > UINT64_MAX / 2)
		return FL_EOVERFLOW;
	s *= 2;
	if (d > SIZE_MAX || s > SIZE_MAX)
		return FL_EOVERFLOW;
	*scales_len = (size_t)s;
	*data_len = (size_t)d;
	return 0;
}

double qt_bits_per_param(enum qt_fmt fmt, uint32_t block)
{
	double b = qt_fmt_bits(fmt);
	return is_q(fmt) && block ? b + 16.0 / block : b;
}

static int grow(uint8_t **p, size_t *cap, size_t want)
{
	if (want <= *cap && *p)
		return 0;
	uint8_t *np = malloc(want ? want : 1);
	if (!np)
		return FL_ENOMEM;
	free(*p);
	*p = np;
	*cap = want;
	return 0;
}

static int set_name(qtensor *q, const char *name)
{
	size_t len = name ? strnlen(name, QT_NAME_MAX + 1) : 0;
	if (len > QT_NAME_MAX)
		return FL_EINVAL;
	memcpy(q->name, name ? name : "", len);
	q->name[len] = 0;
	return 0;
}

int qt_prepare(qtensor *q, const char *name, enum qt_fmt fmt, uint32_t block, uint32_t ndim,
               const uint64_t *shape)
{
	if (ndim < 1 || ndim > QT_MAX_DIM || !shape)
		return FL_EINVAL;
	uint64_t n = 1;
	for (uint32_t i = 0; i < ndim; i++) {
		if (shape[i] == 0)
			return FL_EINVAL;
		if (n > QT_HARD_MAX_ELEMS / shape[i])
			return FL_ETOOBIG;
		n *= shape[i];
	}
	size_t sl, dl;
	int rc = qt_layout(fmt, block, n, &sl, &dl);
	if (rc)
		return rc;
	qt_reset(q);
	if ((rc = set_name(q, name)) || (rc = grow(&q->own_scales, &q->own_scales_cap, sl)) ||
	    (rc = grow(&q->own_data, &q->own_data_cap, dl)))
		return rc;
	q->fmt = fmt;
	q->block = block;
	q->ndim = ndim;
	memcpy(q->shape, shape, ndim * sizeof *shape);
	q->n = (size_t)n;
	q->scales = q->own_scales;
	q->scales_len = sl;
	q->data = q->own_data;
	q->data_len = dl;
	return 0;
}

uint8_t *qt_scales_mut(qtensor *q)
{
	return q->own_scales;
}

uint8_t *qt_data_mut(qtensor *q)
{
	return q->own_data;
}

/* The header fields and lengths of a tensor in (fmt, block, ndim, shape,
 * name, byte lengths) form, shared by qt_check and the proto paths. */
typedef struct qt_hdr {
	const char *name;
	int fmt;
	uint32_t block;
	size_t ndim;
	const uint64_t *shape;
	const uint8_t *scales;
	size_t scales_len;
	const uint8_t *data;
	size_t data_len;
} qt_hdr;

static int check_hdr(const qt_hdr *h, const qt_limits *lim, uint64_t *n_out, char *why, size_t wl)
{
	uint64_t max = lim && lim->max_elems ? lim->max_elems : QT_DEFAULT_MAX_ELEMS;
	if (max > QT_HARD_MAX_ELEMS)
		max = QT_HARD_MAX_ELEMS;
	size_t nl = h->name ? strnlen(h->name, QT_NAME_MAX + 1) : 0;
	if (nl == 0) {
		return fl_fail(why, wl, FL_EPROTO, "tensor without a name");
	}
	if (nl > QT_NAME_MAX) {
		return fl_fail(why, wl, FL_EPROTO, "tensor name longer than %d bytes", QT_NAME_MAX);
	}
	for (size_t i = 0; i < nl; i++)
		if ((uint8_t)h->name[i] < 0x20 || h->name[i] == 0x7f) {
			return fl_fail(why, wl, FL_EPROTO,
			               "tensor name contains a control character");
		}
	const char *nm = h->name;
	if (!qt_fmt_bits((enum qt_fmt)h->fmt)) {
		return fl_fail(why, wl, FL_EPROTO, "%.64s: unknown format %d", nm, h->fmt);
	}
	if (qt_check_fmt_block((enum qt_fmt)h->fmt, h->block)) {
		return fl_fail(why, wl, FL_EPROTO,
		               "%.64s: block size %u not valid for %s (want %s)", nm, h->block,
		               qt_fmt_name((enum qt_fmt)h->fmt),
		               is_q((enum qt_fmt)h->fmt) ? "32, 64 or 128" : "0");
	}
	if (h->ndim < 1 || h->ndim > QT_MAX_DIM) {
		return fl_fail(why, wl, FL_EPROTO, "%.64s: %zu dimensions (want 1..%d)", nm,
		               h->ndim, QT_MAX_DIM);
	}
	uint64_t n = 1;
	for (size_t i = 0; i < h->ndim; i++) {
		if (h->shape[i] == 0) {
			return fl_fail(why, wl, FL_EPROTO, "%.64s: dimension %zu is 0", nm, i);
		}
		if (n > UINT64_MAX / h->shape[i]) {
			return fl_fail(why, wl, FL_EOVERFLOW,
			               "%.64s: shape product overflows 64 bits", nm);
		}
		n *= h->shape[i];
	}
	if (n > max) {
		return fl_fail(why, wl, FL_ETOOBIG, "%.64s: %llu elements exceed the cap of %llu",
		               nm, (unsigned long long)n, (unsigned long long)max);
	}
	size_t sl, dl;
	if (qt_layout((enum qt_fmt)h->fmt, h->block, n, &sl, &dl)) {
		return fl_fail(why, wl, FL_EOVERFLOW, "%.64s: layout size overflows", nm);
	}
	if (h->scales_len != sl) {
		return fl_fail(
		    why, wl, FL_EPROTO,
		    "%.64s: %zu scale bytes, expected %zu for %llu elements in blocks of %u", nm,
		    h->scales_len, sl, (unsigned long long)n, h->block);
	}
	if (h->data_len != dl) {
		return fl_fail(
		    why, wl, FL_EPROTO, "%.64s: %zu data bytes, expected %zu for %llu %s elements",
		    nm, h->data_len, dl, (unsigned long long)n, qt_fmt_name((enum qt_fmt)h->fmt));
	}
	if ((sl && !h->scales) || (dl && !h->data)) {
		return fl_fail(why, wl, FL_EPROTO, "%.64s: missing bytes", nm);
	}
	for (size_t i = 0; i < sl / 2; i++) {
		uint16_t s = (uint16_t)(h->scales[2 * i] | h->scales[2 * i + 1] << 8);
		if ((s & 0x7c00) == 0x7c00) {
			return fl_fail(why, wl, FL_ENUMERIC, "%.64s: scale of block %zu is %s", nm,
			               i, (s & 0x3ff) ? "NaN" : "infinite");
		}
		if (s & 0x8000) {
			return fl_fail(why, wl, FL_EPROTO, "%.64s: scale of block %zu is negative",
			               nm, i);
		}
	}
	unsigned bits = qt_fmt_bits((enum qt_fmt)h->fmt);
	if (bits < 8 && n % (8 / bits)) {
		/* unused high bits of the last byte must be zero (one encoding) */
		unsigned used = (unsigned)(n % (8 / bits)) * bits;
		if (h->data[dl - 1] >> used) {
			return fl_fail(why, wl, FL_EPROTO,
			               "%.64s: padding bits of the last data byte are not zero",
			               nm);
		}
	}
	if (h->fmt == QT_F32) {
		for (size_t i = 0; i < dl; i += 4) {
			uint32_t u = (uint32_t)h->data[i] | (uint32_t)h->data[i + 1] << 8 |
			             (uint32_t)h->data[i + 2] << 16 |
			             (uint32_t)h->data[i + 3] << 24;
			if ((u & 0x7f800000u) == 0x7f800000u) {
				return fl_fail(why, wl, FL_ENUMERIC,
				               "%.64s: element %zu is not finite", nm, i / 4);
			}
		}
	} else if (h->fmt == QT_F16) {
		for (size_t i = 0; i < dl; i += 2)
			if ((h->data[i + 1] & 0x7c) == 0x7c) {
				return fl_fail(why, wl, FL_ENUMERIC,
				               "%.64s: element %zu is not finite", nm, i / 2);
			}
	}
	*n_out = n;
	return 0;
}

int qt_check(const qtensor *q, const qt_limits *lim, char *why, size_t whylen)
{
	qt_hdr h = {q->name,   (int)q->fmt,   q->block, q->ndim,    q->shape,
	            q->scales, q->scales_len, q->data,  q->data_len};
	uint64_t n;
	int rc = check_hdr(&h, lim, &n, why, whylen);
	if (!rc && n != q->n) {
		rc = fl_fail(why, whylen, FL_EPROTO,
		             "%.64s: element count %zu does not match the shape", q->name, q->n);
	}
	return rc;
}

static void set_hdr(qtensor *q, const qt_hdr *h, uint64_t n)
{
	set_name(q, h->name); /* length checked */
	q->fmt = (enum qt_fmt)h->fmt;
	q->block = h->block;
	q->ndim = (uint32_t)h->ndim;
	memcpy(q->shape, h->shape, h->ndim * sizeof *h->shape);
	q->n = (size_t)n;
}

int qt_copy(qtensor *dst, const qtensor *src)
{
	if (dst == src)
		return 0;
	if (grow(&dst->own_scales, &dst->own_scales_cap, src->scales_len) ||
	    grow(&dst->own_data, &dst->own_data_cap, src->data_len))
		return FL_ENOMEM;
	memcpy(dst->name, src->name, sizeof dst->name);
	dst->fmt = src->fmt;
	dst->block = src->block;
	dst->stochastic = src->stochastic;
	dst->ndim = src->ndim;
	memcpy(dst->shape, src->shape, sizeof dst->shape);
	dst->n = src->n;
	if (src->scales_len)
		memcpy(dst->own_scales, src->scales, src->scales_len);
	if (src->data_len)
		memcpy(dst->own_data, src->data, src->data_len);
	dst->scales = dst->own_scales;
	dst->scales_len = src->scales_len;
	dst->data = dst->own_data;
	dst->data_len = src->data_len;
	return 0;
}

void qt_to_proto(const qtensor *q, Fedlora__QTensor *m)
{
	fedlora__qtensor__init(m);
	m->name = (char *)q->name;
	m->n_shape = q->ndim;
	m->shape = (uint64_t *)q->shape;
	m->format = (Fedlora__QFormat)q->fmt;
	m->block_size = q->block;
	m->stochastic = q->stochastic != 0;
	m->scales.len = q->scales_len;
	m->scales.data = (uint8_t *)q->scales;
	m->data.len = q->data_len;
	m->data.data = (uint8_t *)q->data;
}

size_t qt_encoded_size(const qtensor *q)
{
	Fedlora__QTensor m;
	qt_to_proto(q, &m);
	return fedlora__qtensor__get_packed_size(&m);
}

static int from_proto(const Fedlora__QTensor *m, const qt_limits *lim, qtensor *q, int borrow,
                      char *why, size_t wl)
{
	qt_reset(q);
	if (!m) {
		return fl_fail(why, wl, FL_EPROTO, "no tensor");
	}
	qt_hdr h = {m->name,        (int)m->format, m->block_size, m->n_shape, m->shape,
	            m->scales.data, m->scales.len,  m->data.data,  m->data.len};
	uint64_t n;
	int rc = check_hdr(&h, lim, &n, why, wl);
	if (rc)
		return rc;
	if (borrow) {
		q->scales = m->scales.data;
		q->data = m->data.data;
	} else {
		if (grow(&q->own_scales, &q->own_scales_cap, h.scales_len) ||
		    grow(&q->own_data, &q->own_data_cap, h.data_len)) {
			return fl_fail(why, wl, FL_ENOMEM, "out of memory copying %zu bytes",
			               h.data_len);
		}
		if (h.scales_len)
			memcpy(q->own_scales, h.scales, h.scales_len);
		memcpy(q->own_data, h.data, h.data_len);
		q->scales = q->own_scales;
		q->data = q->own_data;
	}
	set_hdr(q, &h, n);
	q->stochastic = m->stochastic != 0;
	q->scales_len = h.scales_len;
	q->data_len = h.data_len;
	return 0;
}

int qt_from_proto(const Fedlora__QTensor *m, const qt_limits *lim, qtensor *q, char *why,
                  size_t whylen)
{
	return from_proto(m, lim, q, 0, why, whylen);
}

int qt_view_proto(const Fedlora__QTensor *m, const qt_limits *lim, qtensor *q, char *why,
                  size_t whylen)
{
	return from_proto(m, lim, q, 1, why, whylen);
}
