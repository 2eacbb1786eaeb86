/* gguf — see gguf.h and docs/GGUF.md.
 *
 * File layout (all little endian):
 *   "GGUF" u32 version u64 n_tensors u64 n_kv
 *   n_kv x { string key; u32 type; value }
 *   n_tensors x { string name; u32 n_dims; u64 ne[n_dims]; u32 type; u64 offset }
 *   padding to the alignment, then the data section; each tensor's offset is
 *   relative to the data section and a multiple of the alignment.
 *   string = u64 length + bytes; array value = u32 elem type, u64 n, elems. */
#include "gguf.h"

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "gtype.h"
#include "hmap.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf: values are served straight from the little-endian file; host must be little endian"
#endif

#define GGUF_MAGIC       "GGUF"
#define MAX_COUNT        (1u << 24) /* kvs or tensors: far beyond any real model */
#define MAX_ALIGNMENT    (1u << 30)
#define MAX_WRITER_META  ((size_t)1 << 31) /* bytes of metadata in a writer */
/* Smallest encodings, used to bound counts by the bytes left before any
 * allocation: kv = key(8+1) + type(4) + 1-byte value; tensor info =
 * name(8+1) + n_dims(4) + ne(8) + type(4) + offset(8). */
#define MIN_KV_BYTES     14
#define MIN_TENSOR_BYTES 33

static const char *const vtype_names[] = {"u8",   "i8",  "u16",   "i16", "u32", "i32", "f32",
                                          "bool", "str", "array", "u64", "i64", "f64"};

const char *gguf_vtype_name(uint32_t t)
{
	return t < sizeof vtype_names / sizeof vtype_names[0] ? vtype_names[t] : "?";
}

/* Bytes of a scalar of type t; 0 for string, array and unknown types. */
static size_t vsize(uint32_t t)
{
	switch (t) {
	case GGUF_U8:
	case GGUF_I8:
	case GGUF_BOOL:
		return 1;
	case GGUF_U16:
	case GGUF_I16:
		return 2;
	case GGUF_U32:
	case GGUF_I32:
	case GGUF_F32:
		return 4;
	case GGUF_U64:
	case GGUF_I64:
	case GGUF_F64:
		return 8;
	default:
		return 0;
	}
}

/* ------------------------------------------------------------------ */
/* Name hash tables (open addressing, slots hold index + 1)             */

typedef const char *(*name_at_fn)(const void *arr, size_t i);

struct names {
	const void *arr;
	name_at_fn name_at;
};

static int name_eq(const void *ctx, uint32_t i, const void *name)
{
	const struct names *c = ctx;
	return strcmp(c->name_at(c->arr, i), name) == 0;
}

/* The slot of name in h (reserved for the file's count: never full). */
static uint32_t *name_slot(const hidx *h, const void *arr, name_at_fn name_at, const char *name)
{
	struct names c = {arr, name_at};
	return hidx_slot(h, hmap_hash(name, strlen(name)), name_eq, &c, name);
}

/* Index of name, or -1. */
static long htab_find(const hidx *h, const void *arr, name_at_fn name_at, const char *name)
{
	uint32_t v = *name_slot(h, arr, name_at, name);
	return v ? (long)(v - 1) : -1;
}

/* Adds entry idx under its name; 1 if the name was already present (not
 * added), else 0. */
static int htab_add(hidx *h, const void *arr, name_at_fn name_at, const char *name, size_t idx)
{
	uint32_t *s = name_slot(h, arr, name_at, name);
	if (*s)
		return 1;
	hidx_fill(h, s, (uint32_t)idx);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Reader                                                              */

struct kv {
	char *key;
	uint32_t type;
	uint32_t atype;      /* element type (arrays) */
	uint64_t n;          /* element count (arrays) */
	const uint8_t *data; /* scalar bytes, string bytes or array elements */
	size_t len;          /* string length */
	gguf_str *strs;      /* string arrays */
};

struct tns {
	char *name;
	uint32_t type;
	int ndims;
	uint64_t ne[GGUF_MAX_DIMS];
	uint64_t nelem;
	uint64_t offset;
	size_t size;
};

struct gguf {
	file_map map;
	int mapped;
	const uint8_t *p;
	size_t n;
	uint32_t version;
	size_t alignment;
	size_t data_off;
	struct kv *kv;
	size_t nkv;
	struct tns *t;
	size_t nt;
	hidx kvh, th; /* names -> index (keyed: names come from files) */
};

static const char *kv_name_at(const void *arr, size_t i)
{
	return ((const struct kv *)arr)[i].key;
}

static const char *tns_name_at(const void *arr, size_t i)
{
	return ((const struct tns *)arr)[i].name;
}

struct pctx {
	rd r;
	const uint8_t *base;
	char *err;
	size_t errlen;
};

static size_t ppos(const struct pctx *c)
{
	return (size_t)(c->r.p - c->base);
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
perr(struct pctx *c, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fl_vfail(c->err, c->errlen, code, fmt, ap);
	va_end(ap);
	return code;
}

static int need(struct pctx *c, size_t n, const char *what)
{
	if (c->r.n < n)
		return perr(c, FL_EFORMAT, "truncated at offset %zu: %s needs %zu bytes, %zu left",
		            ppos(c), what, n, c->r.n);
	return 0;
}

static int p_u32(struct pctx *c, uint32_t *v, const char *what)
{
	int rc = need(c, 4, what);
	return rc ? rc : rd_u32le(&c->r, v);
}

static int p_u64(struct pctx *c, uint64_t *v, const char *what)
{
	int rc = need(c, 8, what);
	return rc ? rc : rd_u64le(&c->r, v);
}

/* A string: u64 length, bytes. The length is checked against the bytes
 * left before anything else. */
static int p_str(struct pctx *c, gguf_str *s, const char *what)
{
	uint64_t len;
	int rc = p_u64(c, &len, what);
	if (rc)
		return rc;
	if (len > c->r.n)
		return perr(c, FL_EFORMAT,
		            "%s at offset %zu: length %llu exceeds the %zu bytes left", what,
		            ppos(c) - 8, (unsigned long long)len, c->r.n);
	const uint8_t *p;
	rd_bytes(&c->r, (size_t)len, &p);
	s->p = (const char *)p;
	s->n = (size_t)len;
	return 0;
}

/* Copies a key or tensor name as a C string: non-empty, at most max bytes,
 * no NUL inside. */
static int p_name(struct pctx *c, char **out, size_t max, const char *what)
{
	size_t at = ppos(c);
	gguf_str s = {NULL, 0};
	int rc = p_str(c, &s, what);
	if (rc)
		return rc;
	if (s.n == 0)
		return perr(c, FL_EFORMAT, "%s at offset %zu is empty", what, at);
	if (s.n > max)
		return perr(c, FL_EFORMAT, "%s at offset %zu is %zu bytes long (limit %zu)", what,
		            at, s.n, max);
	if (memchr(s.p, 0, s.n))
		return perr(c, FL_EFORMAT, "%s at offset %zu contains a NUL byte", what, at);
	char *d = malloc(s.n + 1);
	if (!d)
		return perr(c, FL_ENOMEM, "out of memory");
	memcpy(d, s.p, s.n);
	d[s.n] = 0;
	*out = d;
	return 0;
}

static int check_bools(struct pctx *c, const uint8_t *p, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] > 1)
			return perr(c, FL_EFORMAT, "key '%s': bool value %u is neither 0 nor 1",
			            key, p[i]);
	return 0;
}

static int p_value(struct pctx *c, struct kv *kv)
{
	int rc = p_u32(c, &kv->type, "value type");
	if (rc)
		return rc;
	if (kv->type == GGUF_STR) {
		gguf_str s = {NULL, 0};
		rc = p_str(c, &s, "string value");
		kv->data = (const uint8_t *)s.p;
		kv->len = s.n;
		return rc;
	}
	if (kv->type != GGUF_ARR) {
		size_t es = vsize(kv->type);
		if (es == 0)
			return perr(c, FL_EFORMAT, "key '%s': unknown value type %u", kv->key,
			            kv->type);
		if ((rc = need(c, es, "scalar value")))
			return rc;
		rd_bytes(&c->r, es, &kv->data);
		return kv->type == GGUF_BOOL ? check_bools(c, kv->data, 1, kv->key) : 0;
	}
	if ((rc = p_u32(c, &kv->atype, "array element type")) ||
	    (rc = p_u64(c, &kv->n, "array length")))
		return rc;
	if (kv->atype == GGUF_ARR)
		return perr(c, FL_EUNSUPPORTED, "key '%s': nested arrays are not supported",
		            kv->key);
	if (kv->atype == GGUF_STR) {
		if (kv->n > c->r.n / 8)
			return perr(
			    c, FL_EFORMAT,
			    "key '%s': array of %llu strings cannot fit in the %zu bytes left",
			    kv->key, (unsigned long long)kv->n, c->r.n);
		kv->strs = calloc(kv->n ? (size_t)kv->n : 1, sizeof *kv->strs);
		if (!kv->strs)
			return perr(c, FL_ENOMEM, "out of memory");
		kv->data = c->r.p;
		for (size_t i = 0; i < kv->n; i++)
			if ((rc = p_str(c, &kv->strs[i], "array string")))
				return rc;
		return 0;
	}
	size_t es = vsize(kv->atype);
	if (es == 0)
		return perr(c, FL_EFORMAT, "key '%s': unknown array element type %u", kv->key,
		            kv->atype);
	if (kv->n > c->r.n / es)
		return perr(c, FL_EFORMAT,
		            "key '%s': array of %llu %s elements exceeds the %zu bytes left",
		            kv->key, (unsigned long long)kv->n, gguf_vtype_name(kv->atype), c->r.n);
	rd_bytes(&c->r, (size_t)kv->n * es, &kv->data);
	return kv->atype == GGUF_BOOL ? check_bools(c, kv->data, (size_t)kv->n, kv->key) : 0;
}

static int p_alignment(struct pctx *c, gguf *g)
{
	g->alignment = GGUF_DEFAULT_ALIGNMENT;
	long i = htab_find(&g->kvh, g->kv, kv_name_at, "general.alignment");
	if (i < 0)
		return 0;
	const struct kv *kv = &g->kv[i];
	if (kv->type != GGUF_U32)
		return perr(c, FL_EFORMAT, "general.alignment has type %s, expected u32",
		            gguf_vtype_name(kv->type));
	uint32_t a = ld_u32le(kv->data);
	if (a == 0 || (a & (a - 1)) != 0 || a > MAX_ALIGNMENT)
		return perr(c, FL_EFORMAT,
		            "general.alignment %u is not a power of two between 1 and 2^30", a);
	g->alignment = a;
	return 0;
}

static int p_tensor(struct pctx *c, gguf *g, struct tns *t)
{
	int rc = p_name(c, &t->name, GGUF_MAX_NAME_READ, "tensor name");
	if (rc)
		return rc;
	uint32_t nd;
	if ((rc = p_u32(c, &nd, "tensor n_dims")))
		return rc;
	if (nd < 1 || nd > GGUF_MAX_DIMS)
		return perr(c, FL_EFORMAT, "tensor '%s': %u dimensions (must be 1..%d)", t->name,
		            nd, GGUF_MAX_DIMS);
	t->ndims = (int)nd;
	uint64_t nelem = 1;
	for (int d = 0; d < GGUF_MAX_DIMS; d++) {
		t->ne[d] = 1;
		if (d >= t->ndims)
			continue;
		if ((rc = p_u64(c, &t->ne[d], "tensor dimension")))
			return rc;
		if (t->ne[d] > (uint64_t)INT64_MAX)
			return perr(c, FL_EFORMAT, "tensor '%s': dimension %d is %llu (absurd)",
			            t->name, d, (unsigned long long)t->ne[d]);
		if (t->ne[d] != 0 && nelem > (uint64_t)INT64_MAX / t->ne[d])
			return perr(c, FL_EFORMAT,
			            "tensor '%s': element count overflows (dimension %d = %llu)",
			            t->name, d, (unsigned long long)t->ne[d]);
		nelem *= t->ne[d];
	}
	t->nelem = nelem;
	if ((rc = p_u32(c, &t->type, "tensor type")))
		return rc;
	if (!gtype_supported(t->type)) {
		const char *tn = gtype_name(t->type);
		if (tn)
			return perr(c, FL_EUNSUPPORTED,
			            "tensor '%s': type %s (%u) is not supported (supported: F32 "
			            "F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K)",
			            t->name, tn, t->type);
		return perr(c, FL_EFORMAT, "tensor '%s': unknown tensor type id %u", t->name,
		            t->type);
	}
	rc = gtype_tensor_size(t->type, t->ne, t->ndims, &t->size);
	if (rc == FL_EINVAL)
		return perr(c, FL_EFORMAT,
		            "tensor '%s': row length %llu is not a multiple of the %s block "
		            "size %zu",
		            t->name, (unsigned long long)t->ne[0], gtype_name(t->type),
		            gtype_block_elems(t->type));
	if (rc)
		return perr(c, FL_EFORMAT, "tensor '%s': byte size overflows", t->name);
	if ((rc = p_u64(c, &t->offset, "tensor offset")))
		return rc;
	if (t->offset % g->alignment != 0)
		return perr(c, FL_EFORMAT,
		            "tensor '%s': data offset %llu is not a multiple of the alignment %zu",
		            t->name, (unsigned long long)t->offset, g->alignment);
	return 0;
}

struct span {
	uint64_t off;
	size_t size;
	size_t idx;
};

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* Every tensor inside the data section, none overlapping another. */
static int p_data_ranges(struct pctx *c, gguf *g)
{
	if (g->nt == 0)
		return 0;
	if (g->data_off > g->n)
		return perr(c, FL_EFORMAT,
		            "truncated: data section starts at %zu but the file has %zu bytes",
		            g->data_off, g->n);
	size_t avail = g->n - g->data_off;
	struct span *s = malloc(g->nt * sizeof *s);
	if (!s)
		return perr(c, FL_ENOMEM, "out of memory");
	int rc = 0;
	for (size_t i = 0; i < g->nt && !rc; i++) {
		const struct tns *t = &g->t[i];
		if (t->offset > avail || t->size > avail - (size_t)t->offset)
			rc = perr(c, FL_EFORMAT,
			          "tensor '%s': data [%llu, +%zu) lies outside the %zu-byte data "
			          "section (file truncated?)",
			          t->name, (unsigned long long)t->offset, t->size, avail);
		s[i] = (struct span){t->offset, t->size, i};
	}
	if (!rc) {
		qsort(s, g->nt, sizeof *s, span_cmp);
		size_t prev = SIZE_MAX; /* last tensor with data */
		for (size_t i = 0; i < g->nt && !rc; i++) {
			if (s[i].size == 0)
				continue;
			if (prev != SIZE_MAX && s[prev].off + s[prev].size > s[i].off)
				rc =
				    perr(c, FL_EFORMAT, "tensors '%s' and '%s' overlap in the file",
				         g->t[s[prev].idx].name, g->t[s[i].idx].name);
			prev = i;
		}
	}
	free(s);
	return rc;
}

static int parse(gguf *g, char *err, size_t errlen)
{
	struct pctx c = {rd_of(g->p, g->n), g->p, err, errlen};
	int rc;
	if (g->n < 4 || memcmp(g->p, GGUF_MAGIC, 4) != 0)
		return perr(&c, FL_EFORMAT, "not a GGUF file (bad magic)");
	rd_skip(&c.r, 4);
	if ((rc = p_u32(&c, &g->version, "version")))
		return rc;
	if (g->version == 1)
		return perr(&c, FL_EUNSUPPORTED, "GGUF version 1 is not supported (only 2 and 3)");
	if (g->version == 0x02000000u || g->version == 0x03000000u)
		return perr(&c, FL_EUNSUPPORTED, "big-endian GGUF files are not supported");
	if (g->version != 2 && g->version != 3)
		return perr(&c, FL_EUNSUPPORTED, "GGUF version %u is not supported (only 2 and 3)",
		            g->version);
	uint64_t nt, nkv;
	if ((rc = p_u64(&c, &nt, "tensor count")) || (rc = p_u64(&c, &nkv, "metadata count")))
		return rc;
	if (nkv > MAX_COUNT || nkv > c.r.n / MIN_KV_BYTES)
		return perr(&c, FL_EFORMAT, "metadata count %llu is absurd for a %zu-byte file",
		            (unsigned long long)nkv, g->n);
	if (nt > MAX_COUNT || nt > (c.r.n - nkv * MIN_KV_BYTES) / MIN_TENSOR_BYTES)
		return perr(&c, FL_EFORMAT, "tensor count %llu is absurd for a %zu-byte file",
		            (unsigned long long)nt, g->n);
	g->kv = calloc(nkv ? (size_t)nkv : 1, sizeof *g->kv);
	g->t = calloc(nt ? (size_t)nt : 1, sizeof *g->t);
	if (!g->kv || !g->t || hidx_reserve(&g->kvh, (size_t)nkv, NULL, NULL) ||
	    hidx_reserve(&g->th, (size_t)nt, NULL, NULL))
		return perr(&c, FL_ENOMEM, "out of memory");

	for (size_t i = 0; i < nkv; i++) {
		struct kv *kv = &g->kv[i];
		g->nkv = i + 1; /* so gguf_free releases what this entry holds */
		if ((rc = p_name(&c, &kv->key, GGUF_MAX_KEY, "metadata key")))
			return rc;
		if (htab_add(&g->kvh, g->kv, kv_name_at, kv->key, i))
			return perr(&c, FL_EFORMAT, "duplicate metadata key '%s'", kv->key);
		if ((rc = p_value(&c, kv)))
			return rc;
	}
	if ((rc = p_alignment(&c, g)))
		return rc;
	for (size_t i = 0; i < nt; i++) {
		struct tns *t = &g->t[i];
		g->nt = i + 1;
		if ((rc = p_tensor(&c, g, t)))
			return rc;
		if (htab_add(&g->th, g->t, tns_name_at, t->name, i))
			return perr(&c, FL_EFORMAT, "duplicate tensor name '%s'", t->name);
	}
	size_t pos = ppos(&c);
	if (sz_add(pos, (g->alignment - pos % g->alignment) % g->alignment, &g->data_off))
		return perr(&c, FL_EFORMAT, "data offset overflows");
	return p_data_ranges(&c, g);
}

void gguf_free(gguf *g)
{
	if (!g)
		return;
	for (size_t i = 0; i < g->nkv; i++) {
		free(g->kv[i].key);
		free(g->kv[i].strs);
	}
	for (size_t i = 0; i < g->nt; i++)
		free(g->t[i].name);
	free(g->kv);
	free(g->t);
	hidx_fini(&g->kvh);
	hidx_fini(&g->th);
	if (g->mapped)
		file_map_close(&g->map);
	free(g);
}

static int open_common(gguf *g, gguf **out, const char *label, char *err, size_t errlen)
{
	char local[512];
	char *e = err && errlen ? err : local;
	size_t el = err && errlen ? errlen : sizeof local;
	e[0] = 0;
	int rc = parse(g, e, el);
	if (rc) {
		if (!(err && errlen))
			LOGE("gguf", "%s: %s", label, e);
		gguf_free(g);
		return rc;
	}
	*out = g;
	return 0;
}

int gguf_open_mem(const void *p, size_t n, gguf **out, char *err, size_t errlen)
{
	gguf *g = calloc(1, sizeof *g);
	if (!g)
		return FL_ENOMEM;
	g->p = p;
	g->n = n;
	return open_common(g, out, "(memory)", err, errlen);
}

int gguf_open(const char *path, gguf **out, char *err, size_t errlen)
{
	gguf *g = calloc(1, sizeof *g);
	if (!g)
		return FL_ENOMEM;
	int rc = file_map_open(path, &g->map);
	if (rc) {
		if (err && errlen)
			snprintf(err, errlen, "%s", file_why(path, rc));
		else
			LOGE("gguf", "%s: %s", path, file_why(path, rc));
		free(g);
		return rc;
	}
	g->mapped = 1;
	g->p = g->map.p;
	g->n = g->map.n;
	return open_common(g, out, path, err, errlen);
}

uint32_t gguf_version(const gguf *g)
{
	return g->version;
}

size_t gguf_alignment(const gguf *g)
{
	return g->alignment;
}

size_t gguf_data_offset(const gguf *g)
{
	return g->data_off;
}

size_t gguf_kv_count(const gguf *g)
{
	return g->nkv;
}

const char *gguf_kv_key(const gguf *g, size_t i)
{
	return i < g->nkv ? g->kv[i].key : NULL;
}

enum gguf_vtype gguf_kv_type(const gguf *g, size_t i)
{
	return i < g->nkv ? (enum gguf_vtype)g->kv[i].type : (enum gguf_vtype) - 1;
}

int gguf_find_key(const gguf *g, const char *key)
{
	long i = key ? htab_find(&g->kvh, g->kv, kv_name_at, key) : -1;
	return i < 0 ? FL_ENOENT : (int)i;
}

static int lookup(const gguf *g, const char *key, uint32_t type, const struct kv **out)
{
	int i = gguf_find_key(g, key);
	if (i < 0)
		return i;
	if (type != UINT32_MAX && g->kv[i].type != type)
		return FL_EMISMATCH;
	*out = &g->kv[i];
	return 0;
}

#define GGUF_GET_SCALAR(fn, T, VT)                                                                 \
	int fn(const gguf *g, const char *key, T *out)                                             \
	{                                                                                          \
		const struct kv *kv;                                                               \
		int rc = lookup(g, key, VT, &kv);                                                  \
		if (rc)                                                                            \
			return rc;                                                                 \
		T v;                                                                               \
		memcpy(&v, kv->data, sizeof v);                                                    \
		*out = v;                                                                          \
		return 0;                                                                          \
	}

GGUF_GET_SCALAR(gguf_get_u8, uint8_t, GGUF_U8)
GGUF_GET_SCALAR(gguf_get_i8, int8_t, GGUF_I8)
GGUF_GET_SCALAR(gguf_get_u16, uint16_t, GGUF_U16)
GGUF_GET_SCALAR(gguf_get_i16, int16_t, GGUF_I16)
GGUF_GET_SCALAR(gguf_get_u32, uint32_t, GGUF_U32)
GGUF_GET_SCALAR(gguf_get_i32, int32_t, GGUF_I32)
GGUF_GET_SCALAR(gguf_get_u64, uint64_t, GGUF_U64)
GGUF_GET_SCALAR(gguf_get_i64, int64_t, GGUF_I64)
GGUF_GET_SCALAR(gguf_get_f32, float, GGUF_F32)
GGUF_GET_SCALAR(gguf_get_f64, double, GGUF_F64)

int gguf_get_bool(const gguf *g, const char *key, int *out)
{
	const struct kv *kv;
	int rc = lookup(g, key, GGUF_BOOL, &kv);
	if (rc)
		return rc;
	*out = kv->data[0];
	return 0;
}

int gguf_get_str(const gguf *g, const char *key, gguf_str *out)
{
	const struct kv *kv;
	int rc = lookup(g, key, GGUF_STR, &kv);
	if (rc)
		return rc;
	out->p = (const char *)kv->data;
	out->n = kv->len;
	return 0;
}

/* Integer element of type t at p, widened; *neg set when negative. */
static int load_int(uint32_t t, const uint8_t *p, int64_t *sv, uint64_t *uv, int *neg)
{
	union {
		uint8_t u8;
		int8_t i8;
		uint16_t u16;
		int16_t i16;
		uint32_t u32;
		int32_t i32;
		uint64_t u64;
		int64_t i64;
	} v;
	size_t es = vsize(t);
	if (es == 0 || t == GGUF_F32 || t == GGUF_F64)
		return FL_EMISMATCH;
	memcpy(&v, p, es);
	int64_t s = 0;
	uint64_t u = 0;
	*neg = 0;
	switch (t) {
	case GGUF_U8:
	case GGUF_BOOL:
		u = v.u8;
		break;
	case GGUF_U16:
		u = v.u16;
		break;
	case GGUF_U32:
		u = v.u32;
		break;
	case GGUF_U64:
		u = v.u64;
		break;
	case GGUF_I8:
		s = v.i8;
		break;
	case GGUF_I16:
		s = v.i16;
		break;
	case GGUF_I32:
		s = v.i32;
		break;
	default:
		s = v.i64;
		break;
	}
	if (t == GGUF_I8 || t == GGUF_I16 || t == GGUF_I32 || t == GGUF_I64) {
		*neg = s < 0;
		u = (uint64_t)s;
	} else {
		s = (int64_t)u; /* meaningful only when u <= INT64_MAX */
	}
	*sv = s;
	*uv = u;
	return 0;
}

/* The integer value of key, any integer type (not bool), as load_int. */
static int get_intval(const gguf *g, const char *key, int64_t *s, uint64_t *u, int *neg)
{
	const struct kv *kv;
	int rc = lookup(g, key, UINT32_MAX, &kv);
	if (rc)
		return rc;
	if (kv->type == GGUF_BOOL)
		return FL_EMISMATCH;
	return load_int(kv->type, kv->data, s, u, neg);
}

int gguf_get_int(const gguf *g, const char *key, int64_t *out)
{
	int64_t s;
	uint64_t u;
	int neg;
	int rc = get_intval(g, key, &s, &u, &neg);
	if (rc)
		return rc;
	if (!neg && u > (uint64_t)INT64_MAX)
		return FL_EOVERFLOW;
	*out = s;
	return 0;
}

int gguf_get_uint(const gguf *g, const char *key, uint64_t *out)
{
	int64_t s;
	uint64_t u;
	int neg;
	int rc = get_intval(g, key, &s, &u, &neg);
	if (rc)
		return rc;
	if (neg)
		return FL_EOVERFLOW;
	*out = u;
	return 0;
}

int gguf_get_float(const gguf *g, const char *key, double *out)
{
	const struct kv *kv;
	int rc = lookup(g, key, UINT32_MAX, &kv);
	if (rc)
		return rc;
	if (kv->type == GGUF_F32) {
		float f;
		memcpy(&f, kv->data, 4);
		*out = f;
	} else if (kv->type == GGUF_F64) {
		memcpy(out, kv->data, 8);
	} else {
		return FL_EMISMATCH;
	}
	return 0;
}

int gguf_get_arr(const gguf *g, const char *key, enum gguf_vtype *etype, size_t *n)
{
	const struct kv *kv;
	int rc = lookup(g, key, GGUF_ARR, &kv);
	if (rc)
		return rc;
	*etype = (enum gguf_vtype)kv->atype;
	*n = (size_t)kv->n;
	return 0;
}

int gguf_get_arr_data(const gguf *g, const char *key, enum gguf_vtype want, const void **p,
                      size_t *n)
{
	const struct kv *kv;
	int rc = lookup(g, key, GGUF_ARR, &kv);
	if (rc)
		return rc;
	if (kv->atype != (uint32_t)want || want == GGUF_STR)
		return FL_EMISMATCH;
	*p = kv->data;
	*n = (size_t)kv->n;
	return 0;
}

int gguf_get_arr_strs(const gguf *g, const char *key, const gguf_str **strs, size_t *n)
{
	const struct kv *kv;
	int rc = lookup(g, key, GGUF_ARR, &kv);
	if (rc)
		return rc;
	if (kv->atype != GGUF_STR)
		return FL_EMISMATCH;
	*strs = kv->strs;
	*n = (size_t)kv->n;
	return 0;
}

int gguf_get_arr_f32(const gguf *g, const char *key, float *dst, size_t n)
{
	const struct kv *kv;
	int rc = lookup(g, key, GGUF_ARR, &kv);
	if (rc)
		return rc;
	if (kv->n != n || (kv->atype != GGUF_F32 && kv->atype != GGUF_F64))
		return FL_EMISMATCH;
	if (kv->atype == GGUF_F32) {
		memcpy(dst, kv->data, n * 4);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		double d;
		memcpy(&d, kv->data + 8 * i, 8);
		dst[i] = (float)d;
	}
	return 0;
}

int gguf_get_arr_i64(const gguf *g, const char *key, int64_t *dst, size_t n)
{
	const struct kv *kv;
	int rc = lookup(g, key, GGUF_ARR, &kv);
	if (rc)
		return rc;
	size_t es = vsize(kv->atype);
	if (kv->n != n || es == 0 || kv->atype == GGUF_F32 || kv->atype == GGUF_F64)
		return FL_EMISMATCH;
	for (size_t i = 0; i < n; i++) {
		int64_t s;
		uint64_t u;
		int neg;
		load_int(kv->atype, kv->data + es * i, &s, &u, &neg);
		if (!neg && u > (uint64_t)INT64_MAX)
			return FL_EOVERFLOW;
		dst[i] = s;
	}
	return 0;
}

size_t gguf_tensor_count(const gguf *g)
{
	return g->nt;
}

int gguf_tensor_at(const gguf *g, size_t i, gguf_tensor *out)
{
	if (i >= g->nt)
		return FL_ENOENT;
	const struct tns *t = &g->t[i];
	out->name = t->name;
	out->type = t->type;
	out->ndims = t->ndims;
	memcpy(out->ne, t->ne, sizeof out->ne);
	out->nelem = t->nelem;
	out->data = g->p + g->data_off + t->offset;
	out->size = t->size;
	out->offset = t->offset;
	return 0;
}

int gguf_tensor_find(const gguf *g, const char *name, gguf_tensor *out)
{
	long i = name ? htab_find(&g->th, g->t, tns_name_at, name) : -1;
	if (i < 0)
		return FL_ENOENT;
	return gguf_tensor_at(g, (size_t)i, out);
}

/* ------------------------------------------------------------------ */
/* Writer                                                              */

struct wkv {
	char *key;
	buf b; /* serialized: key string, type, value */
};

struct wt {
	char *name;
	uint32_t type;
	int ndims;
	uint64_t ne[GGUF_MAX_DIMS];
	const void *data;
	size_t size;
	int own;
};

struct gguf_writer {
	struct wkv *kv;
	size_t nkv, capkv;
	struct wt *t;
	size_t nt, capt;
	size_t alignment;
	size_t meta_bytes;
};

gguf_writer *gguf_writer_new(void)
{
	gguf_writer *w = calloc(1, sizeof *w);
	if (w)
		w->alignment = GGUF_DEFAULT_ALIGNMENT;
	return w;
}

void gguf_writer_free(gguf_writer *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->nkv; i++) {
		free(w->kv[i].key);
		buf_fini(&w->kv[i].b);
	}
	for (size_t i = 0; i < w->nt; i++) {
		free(w->t[i].name);
		if (w->t[i].own)
			free((void *)w->t[i].data);
	}
	free(w->kv);
	free(w->t);
	free(w);
}

static int grow(void **arr, size_t *cap, size_t n, size_t es)
{
	if (n < *cap)
		return 0;
	size_t nc = *cap ? *cap * 2 : 16;
	void *p = realloc(*arr, nc * es);
	if (!p)
		return FL_ENOMEM;
	*arr = p;
	*cap = nc;
	return 0;
}

static int put_str(buf *b, const void *s, size_t n)
{
	int rc = buf_put_u64le(b, n);
	return rc ? rc : buf_append(b, s, n);
}

/* Starts a metadata entry; the caller appends the value to the returned
 * buf and then calls kv_end (which drops the entry on failure). */
static int kv_begin(gguf_writer *w, const char *key, uint32_t type, buf **out)
{
	if (!w || !key)
		return FL_EINVAL;
	size_t kl = strlen(key);
	if (kl == 0 || kl > GGUF_MAX_KEY) {
		LOGE("gguf", "writer: key of %zu bytes (must be 1..%d)", kl, GGUF_MAX_KEY);
		return FL_EINVAL;
	}
	if (type != GGUF_U32 && strcmp(key, "general.alignment") == 0) {
		LOGE("gguf", "writer: general.alignment must be a u32");
		return FL_EINVAL;
	}
	for (size_t i = 0; i < w->nkv; i++)
		if (strcmp(w->kv[i].key, key) == 0) {
			LOGE("gguf", "writer: duplicate key '%s'", key);
			return FL_EINVAL;
		}
	if (grow((void **)&w->kv, &w->capkv, w->nkv, sizeof *w->kv))
		return FL_ENOMEM;
	struct wkv *e = &w->kv[w->nkv];
	e->key = strdup(key);
	if (!e->key)
		return FL_ENOMEM;
	buf_init(&e->b, MAX_WRITER_META);
	int rc = put_str(&e->b, key, kl);
	if (!rc)
		rc = buf_put_u32le(&e->b, type);
	if (rc) {
		free(e->key);
		buf_fini(&e->b);
		return rc;
	}
	w->nkv++;
	*out = &e->b;
	return 0;
}

static int kv_end(gguf_writer *w, int rc)
{
	struct wkv *e = &w->kv[w->nkv - 1];
	if (!rc && e->b.len > MAX_WRITER_META - w->meta_bytes)
		rc = FL_ETOOBIG;
	if (rc) {
		LOGE("gguf", "writer: key '%s': %s", e->key, fl_strerror(rc));
		free(e->key);
		buf_fini(&e->b);
		w->nkv--;
		return rc;
	}
	w->meta_bytes += e->b.len;
	return 0;
}

static int set_scalar(gguf_writer *w, const char *key, uint32_t type, const void *v)
{
	buf *b;
	int rc = kv_begin(w, key, type, &b);
	if (rc)
		return rc;
	return kv_end(w, buf_append(b, v, vsize(type)));
}

#define GGUF_SET_SCALAR(fn, T, VT)                                                                 \
	int fn(gguf_writer *w, const char *key, T v)                                               \
	{                                                                                          \
		return set_scalar(w, key, VT, &v);                                                 \
	}

GGUF_SET_SCALAR(gguf_set_u8, uint8_t, GGUF_U8)
GGUF_SET_SCALAR(gguf_set_i8, int8_t, GGUF_I8)
GGUF_SET_SCALAR(gguf_set_u16, uint16_t, GGUF_U16)
GGUF_SET_SCALAR(gguf_set_i16, int16_t, GGUF_I16)
GGUF_SET_SCALAR(gguf_set_i32, int32_t, GGUF_I32)
GGUF_SET_SCALAR(gguf_set_u64, uint64_t, GGUF_U64)
GGUF_SET_SCALAR(gguf_set_i64, int64_t, GGUF_I64)
GGUF_SET_SCALAR(gguf_set_f32, float, GGUF_F32)
GGUF_SET_SCALAR(gguf_set_f64, double, GGUF_F64)

int gguf_set_u32(gguf_writer *w, const char *key, uint32_t v)
{
	int align = key && strcmp(key, "general.alignment") == 0;
	if (align && (v == 0 || (v & (v - 1)) != 0 || v > MAX_ALIGNMENT)) {
		LOGE("gguf", "writer: general.alignment %u is not a power of two <= 2^30", v);
		return FL_EINVAL;
	}
	int rc = set_scalar(w, key, GGUF_U32, &v);
	if (!rc && align)
		w->alignment = v;
	return rc;
}

int gguf_set_bool(gguf_writer *w, const char *key, int v)
{
	uint8_t b = v ? 1 : 0;
	return set_scalar(w, key, GGUF_BOOL, &b);
}

int gguf_set_strn(gguf_writer *w, const char *key, const void *s, size_t n)
{
	if (!s && n)
		return FL_EINVAL;
	buf *b;
	int rc = kv_begin(w, key, GGUF_STR, &b);
	if (rc)
		return rc;
	return kv_end(w, put_str(b, s, n));
}

int gguf_set_str(gguf_writer *w, const char *key, const char *s)
{
	if (!s)
		return FL_EINVAL;
	return gguf_set_strn(w, key, s, strlen(s));
}

int gguf_set_arr(gguf_writer *w, const char *key, enum gguf_vtype etype, const void *vals, size_t n)
{
	size_t es = vsize((uint32_t)etype);
	if (es == 0 || (!vals && n) || n > MAX_WRITER_META / es)
		return FL_EINVAL;
	if (etype == GGUF_BOOL)
		for (size_t i = 0; i < n; i++)
			if (((const uint8_t *)vals)[i] > 1)
				return FL_EINVAL;
	buf *b;
	int rc = kv_begin(w, key, GGUF_ARR, &b);
	if (rc)
		return rc;
	rc = buf_put_u32le(b, (uint32_t)etype);
	if (!rc)
		rc = buf_put_u64le(b, n);
	if (!rc)
		rc = buf_append(b, vals, n * es);
	return kv_end(w, rc);
}

int gguf_set_arr_strn(gguf_writer *w, const char *key, const gguf_str *strs, size_t n)
{
	if ((!strs && n))
		return FL_EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!strs[i].p && strs[i].n)
			return FL_EINVAL;
	buf *b;
	int rc = kv_begin(w, key, GGUF_ARR, &b);
	if (rc)
		return rc;
	rc = buf_put_u32le(b, GGUF_STR);
	if (!rc)
		rc = buf_put_u64le(b, n);
	for (size_t i = 0; i < n && !rc; i++)
		rc = put_str(b, strs[i].p, strs[i].n);
	return kv_end(w, rc);
}

int gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, size_t n)
{
	if ((!strs && n))
		return FL_EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!strs[i])
			return FL_EINVAL;
	buf *b;
	int rc = kv_begin(w, key, GGUF_ARR, &b);
	if (rc)
		return rc;
	rc = buf_put_u32le(b, GGUF_STR);
	if (!rc)
		rc = buf_put_u64le(b, n);
	for (size_t i = 0; i < n && !rc; i++)
		rc = put_str(b, strs[i], strlen(strs[i]));
	return kv_end(w, rc);
}

int gguf_set_copy(gguf_writer *w, const gguf *src, const char *key)
{
	const struct kv *kv;
	int rc = lookup(src, key, UINT32_MAX, &kv);
	if (rc)
		return rc;
	if (kv->type == GGUF_U32)
		return gguf_set_u32(w, key, ld_u32le(kv->data)); /* alignment rules */
	if (kv->type == GGUF_STR)
		return gguf_set_strn(w, key, kv->data, kv->len);
	if (kv->type == GGUF_ARR && kv->atype == GGUF_STR)
		return gguf_set_arr_strn(w, key, kv->strs, (size_t)kv->n);
	if (kv->type == GGUF_ARR)
		return gguf_set_arr(w, key, (enum gguf_vtype)kv->atype, kv->data, (size_t)kv->n);
	return set_scalar(w, key, kv->type, kv->data);
}

static int add_tensor(gguf_writer *w, const char *name, uint32_t type, int ndims,
                      const uint64_t *ne, const void *data, size_t size, int own)
{
	if (!w || !name || !ne || (!data && size))
		return FL_EINVAL;
	size_t nl = strlen(name);
	if (nl == 0 || nl > GGUF_MAX_NAME) {
		LOGE("gguf", "writer: tensor name '%s' must be 1..%d bytes", name, GGUF_MAX_NAME);
		return FL_EINVAL;
	}
	for (size_t i = 0; i < w->nt; i++)
		if (strcmp(w->t[i].name, name) == 0) {
			LOGE("gguf", "writer: duplicate tensor name '%s'", name);
			return FL_EINVAL;
		}
	if (!gtype_supported(type)) {
		LOGE("gguf", "writer: tensor '%s': type %u is not supported", name, type);
		return FL_EUNSUPPORTED;
	}
	if (ndims < 1 || ndims > GGUF_MAX_DIMS)
		return FL_EINVAL;
	for (int d = 0; d < ndims; d++)
		if (ne[d] > (uint64_t)INT64_MAX)
			return FL_EINVAL;
	size_t want;
	int rc = gtype_tensor_size(type, ne, ndims, &want);
	if (rc) {
		LOGE("gguf",
		     "writer: tensor '%s': row length %llu is not a multiple of the %s block", name,
		     (unsigned long long)ne[0], gtype_name(type));
		return rc == FL_EOVERFLOW ? rc : FL_EINVAL;
	}
	if (want != size) {
		LOGE("gguf", "writer: tensor '%s': %zu data bytes, shape and type need %zu", name,
		     size, want);
		return FL_EINVAL;
	}
	if (grow((void **)&w->t, &w->capt, w->nt, sizeof *w->t))
		return FL_ENOMEM;
	struct wt *t = &w->t[w->nt];
	memset(t, 0, sizeof *t);
	t->name = strdup(name);
	if (!t->name)
		return FL_ENOMEM;
	t->type = type;
	t->ndims = ndims;
	for (int d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = d < ndims ? ne[d] : 1;
	t->data = data;
	t->size = size;
	t->own = own;
	w->nt++;
	return 0;
}

int gguf_add_tensor(gguf_writer *w, const char *name, uint32_t type, int ndims, const uint64_t *ne,
                    const void *data, size_t size)
{
	return add_tensor(w, name, type, ndims, ne, data, size, 0);
}

int gguf_add_tensor_own(gguf_writer *w, const char *name, uint32_t type, int ndims,
                        const uint64_t *ne, void *data, size_t size)
{
	int rc = add_tensor(w, name, type, ndims, ne, data, size, 1);
	if (rc)
		free(data);
	return rc;
}

static size_t pad_of(size_t n, size_t a)
{
	return (a - n % a) % a;
}

/* Header (magic .. tensor infos + padding) into hdr; *total = file size. */
static int build_header(const gguf_writer *w, buf *hdr, size_t *total)
{
	int rc = buf_append(hdr, GGUF_MAGIC, 4);
	if (!rc)
		rc = buf_put_u32le(hdr, 3);
	if (!rc)
		rc = buf_put_u64le(hdr, w->nt);
	if (!rc)
		rc = buf_put_u64le(hdr, w->nkv);
	for (size_t i = 0; i < w->nkv && !rc; i++)
		rc = buf_append(hdr, w->kv[i].b.data, w->kv[i].b.len);
	size_t off = 0;
	for (size_t i = 0; i < w->nt && !rc; i++) {
		const struct wt *t = &w->t[i];
		rc = put_str(hdr, t->name, strlen(t->name));
		if (!rc)
			rc = buf_put_u32le(hdr, (uint32_t)t->ndims);
		for (int d = 0; d < t->ndims && !rc; d++)
			rc = buf_put_u64le(hdr, t->ne[d]);
		if (!rc)
			rc = buf_put_u32le(hdr, t->type);
		if (!rc)
			rc = buf_put_u64le(hdr, off);
		if (!rc &&
		    (sz_add(off, t->size, &off) || sz_add(off, pad_of(off, w->alignment), &off)))
			rc = FL_EOVERFLOW;
	}
	if (rc)
		return rc;
	/* The data section starts aligned; with no tensors there is none. */
	if (w->nt) {
		size_t pad = pad_of(hdr->len, w->alignment);
		if ((rc = buf_reserve(hdr, pad)))
			return rc;
		memset(hdr->data + hdr->len, 0, pad);
		hdr->len += pad;
	}
	return sz_add(hdr->len, off, total);
}

/* Pieces: header, then each tensor's data and its padding. */
static int build_pieces(const gguf_writer *w, buf *hdr, file_piece **pieces, size_t *np,
                        uint8_t **zeros, size_t *total)
{
	int rc = build_header(w, hdr, total);
	if (rc)
		return rc;
	*zeros = calloc(1, w->alignment);
	*pieces = calloc(1 + 2 * w->nt, sizeof **pieces);
	if (!*zeros || !*pieces)
		return FL_ENOMEM;
	size_t k = 0;
	(*pieces)[k++] = (file_piece){hdr->data, hdr->len};
	for (size_t i = 0; i < w->nt; i++) {
		(*pieces)[k++] = (file_piece){w->t[i].data, w->t[i].size};
		size_t pad = pad_of(w->t[i].size, w->alignment);
		if (pad)
			(*pieces)[k++] = (file_piece){*zeros, pad};
	}
	*np = k;
	return 0;
}

int gguf_writer_write(const gguf_writer *w, const char *path)
{
	if (!w || !path)
		return FL_EINVAL;
	buf hdr;
	buf_init(&hdr, 0);
	file_piece *pieces = NULL;
	uint8_t *zeros = NULL;
	size_t np = 0, total = 0;
	int rc = build_pieces(w, &hdr, &pieces, &np, &zeros, &total);
	if (!rc)
		rc = file_write_atomic_vm(path, pieces, np, FILE_PUBLIC);
	if (rc)
		LOGE("gguf", "writing %s: %s", path, fl_strerror(rc));
	free(pieces);
	free(zeros);
	buf_fini(&hdr);
	return rc;
}

int gguf_writer_serialize(const gguf_writer *w, uint8_t **out, size_t *n)
{
	if (!w || !out || !n)
		return FL_EINVAL;
	buf hdr;
	buf_init(&hdr, 0);
	file_piece *pieces = NULL;
	uint8_t *zeros = NULL, *p = NULL;
	size_t np = 0, total = 0;
	int rc = build_pieces(w, &hdr, &pieces, &np, &zeros, &total);
	if (rc)
		goto out;
	p = malloc(total ? total : 1);
	if (!p) {
		rc = FL_ENOMEM;
		goto out;
	}
	size_t at = 0;
	for (size_t i = 0; i < np; i++) {
		if (pieces[i].n)
			memcpy(p + at, pieces[i].p, pieces[i].n);
		at += pieces[i].n;
	}
	*out = p;
	*n = total;
	p = NULL;
out:
	free(p);
	free(pieces);
	free(zeros);
	buf_fini(&hdr);
	return rc;
}
