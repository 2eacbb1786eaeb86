/* safetensors — see safetensors.h. */
#include "safetensors.h"

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "half.h"
#include "log.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; fedlora assumes a little-endian host"
#endif

#define ST_DEF_MAX_HEADER  (4ull << 20)
#define ST_SPEC_MAX_HEADER (100000000ull) /* the reference reader's limit */
#define ST_DEF_MAX_TENSORS 65536
#define ST_DEF_MAX_ELEMS   (1ull << 31)
#define ST_MAX_JSON_INT    9007199254740992.0 /* 2^53: integers exact in a double */

static const struct {
	const char *name;
	size_t size;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_F32] = {"F32", 4},   [ST_F16] = {"F16", 2},         [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8},   [ST_I64] = {"I64", 8},         [ST_U64] = {"U64", 8},
    [ST_I32] = {"I32", 4},   [ST_U32] = {"U32", 4},         [ST_I16] = {"I16", 2},
    [ST_U16] = {"U16", 2},   [ST_I8] = {"I8", 1},           [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(enum st_dtype d)
{
	return (unsigned)d < ST_DTYPE_COUNT ? dtypes[d].name : "?";
}

size_t st_dtype_size(enum st_dtype d)
{
	return (unsigned)d < ST_DTYPE_COUNT ? dtypes[d].size : 0;
}

typedef struct st_ent {
	char *name;
	enum st_dtype dtype;
	uint32_t ndim;
	uint64_t shape[ST_MAX_DIM];
	uint64_t numel;
	uint64_t begin, end; /* relative to the data buffer */
} st_ent;

struct st_file {
	file_map map;
	int mapped;
	const uint8_t *buf; /* data buffer */
	uint64_t buflen;
	st_ent *ents;
	size_t n;
	st_kv *meta; /* owned strings */
	size_t nmeta;
};

void st_close(st_file *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->n; i++)
		free(f->ents[i].name);
	free(f->ents);
	for (size_t i = 0; i < f->nmeta; i++) {
		free((char *)f->meta[i].key);
		free((char *)f->meta[i].val);
	}
	free(f->meta);
	if (f->mapped)
		file_map_close(&f->map);
	free(f);
}

/* A JSON number that is a non-negative integer below 2^53. */
static int json_u64(const cJSON *j, uint64_t *out)
{
	if (!cJSON_IsNumber(j))
		return 0;
	double d = j->valuedouble;
	if (!(d >= 0 && d <= ST_MAX_JSON_INT) || d != floor(d))
		return 0;
	*out = (uint64_t)d;
	return 1;
}

static int name_ok(const char *s, size_t max)
{
	size_t len = strnlen(s, max + 1);
	if (len == 0 || len > max)
		return 0;
	for (size_t i = 0; i < len; i++)
		if ((uint8_t)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return 1;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Duplicate check over n strings; returns the duplicate or NULL. */
static const char *find_dup(const char **v, size_t n)
{
	qsort(v, n, sizeof *v, cmp_str);
	for (size_t i = 1; i < n; i++)
		if (strcmp(v[i - 1], v[i]) == 0)
			return v[i];
	return NULL;
}

static int parse_tensor(const cJSON *t, st_ent *e, uint64_t buflen, uint64_t max_elems, char *why,
                        size_t wl)
{
	const char *nm = t->string;
	const cJSON *dt = NULL, *sh = NULL, *off = NULL;
	if (!cJSON_IsObject(t)) {
		return fl_fail(why, wl, FL_EFORMAT, "tensor '%.80s': entry is not an object", nm);
	}
	for (const cJSON *c = t->child; c; c = c->next) {
		const cJSON **slot = NULL;
		if (strcmp(c->string, "dtype") == 0)
			slot = &dt;
		else if (strcmp(c->string, "shape") == 0)
			slot = &sh;
		else if (strcmp(c->string, "data_offsets") == 0)
			slot = &off;
		if (!slot) {
			return fl_fail(why, wl, FL_EFORMAT,
			               "tensor '%.80s': unexpected key '%.40s'", nm, c->string);
		}
		if (*slot) {
			return fl_fail(why, wl, FL_EFORMAT,
			               "tensor '%.80s': key '%s' appears twice", nm, c->string);
		}
		*slot = c;
	}
	if (!dt || !sh || !off) {
		return fl_fail(why, wl, FL_EFORMAT, "tensor '%.80s': missing %s", nm,
		               !dt   ? "dtype"
		               : !sh ? "shape"
		                     : "data_offsets");
	}
	if (!cJSON_IsString(dt)) {
		return fl_fail(why, wl, FL_EFORMAT, "tensor '%.80s': dtype is not a string", nm);
	}
	int d = -1;
	for (int k = 0; k < ST_DTYPE_COUNT; k++)
		if (strcmp(dt->valuestring, dtypes[k].name) == 0)
			d = k;
	if (d < 0) {
		return fl_fail(why, wl, FL_EUNSUPPORTED, "tensor '%.80s': unknown dtype '%.16s'",
		               nm, dt->valuestring);
	}
	e->dtype = (enum st_dtype)d;
	if (!cJSON_IsArray(sh)) {
		return fl_fail(why, wl, FL_EFORMAT, "tensor '%.80s': shape is not an array", nm);
	}
	uint64_t numel = 1;
	uint32_t nd = 0;
	for (const cJSON *c = sh->child; c; c = c->next, nd++) {
		uint64_t v;
		if (nd >= ST_MAX_DIM) {
			return fl_fail(why, wl, FL_EUNSUPPORTED,
			               "tensor '%.80s': more than %d dimensions", nm, ST_MAX_DIM);
		}
		if (!json_u64(c, &v)) {
			return fl_fail(why, wl, FL_EFORMAT,
			               "tensor '%.80s': dimension %u is not a non-negative integer",
			               nm, nd);
		}
		if (v && numel > UINT64_MAX / v) {
			return fl_fail(why, wl, FL_EOVERFLOW,
			               "tensor '%.80s': shape product overflows 64 bits", nm);
		}
		numel *= v;
		e->shape[nd] = v;
	}
	e->ndim = nd;
	if (numel > max_elems) {
		return fl_fail(why, wl, FL_ETOOBIG,
		               "tensor '%.80s': %" PRIu64 " elements exceed the cap of %" PRIu64,
		               nm, numel, max_elems);
	}
	e->numel = numel;
	if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
	    !json_u64(off->child, &e->begin) || !json_u64(off->child->next, &e->end)) {
		return fl_fail(
		    why, wl, FL_EFORMAT,
		    "tensor '%.80s': data_offsets is not a pair of non-negative integers", nm);
	}
	if (e->begin > e->end || e->end > buflen) {
		return fl_fail(why, wl, FL_EFORMAT,
		               "tensor '%.80s': data_offsets [%" PRIu64 ", %" PRIu64
		               "] outside the %" PRIu64 "-byte data buffer",
		               nm, e->begin, e->end, buflen);
	}
	uint64_t want = numel * dtypes[d].size; /* numel <= 2^31, size <= 8 */
	if (e->end - e->begin != want) {
		return fl_fail(why, wl, FL_EFORMAT,
		               "tensor '%.80s': %" PRIu64 " data bytes, but %s x %" PRIu64
		               " elements need %" PRIu64,
		               nm, e->end - e->begin, dtypes[d].name, numel, want);
	}
	return 0;
}

static int parse_meta(st_file *f, const cJSON *m, char *why, size_t wl)
{
	if (cJSON_IsNull(m))
		return 0;
	if (!cJSON_IsObject(m)) {
		return fl_fail(why, wl, FL_EFORMAT, "__metadata__ is not an object");
	}
	size_t cnt = (size_t)cJSON_GetArraySize(m);
	if (!cnt)
		return 0;
	f->meta = calloc(cnt, sizeof *f->meta);
	if (!f->meta)
		return FL_ENOMEM;
	for (const cJSON *c = m->child; c; c = c->next) {
		if (!cJSON_IsString(c)) {
			return fl_fail(why, wl, FL_EFORMAT,
			               "__metadata__ value of '%.60s' is not a string", c->string);
		}
		for (size_t i = 0; i < f->nmeta; i++)
			if (strcmp(f->meta[i].key, c->string) == 0) {
				return fl_fail(why, wl, FL_EFORMAT,
				               "__metadata__ key '%.60s' appears twice", c->string);
			}
		char *k = strdup(c->string), *v = strdup(c->valuestring);
		if (!k || !v) {
			free(k);
			free(v);
			return FL_ENOMEM;
		}
		f->meta[f->nmeta].key = k;
		f->meta[f->nmeta].val = v;
		f->nmeta++;
	}
	return 0;
}

static int cmp_span(const void *a, const void *b)
{
	const st_ent *x = *(const st_ent *const *)a, *y = *(const st_ent *const *)b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return 0;
}

/* Tensors must tile [0, buflen) exactly: no overlap, no hole, nothing
 * after the last tensor (the spec forbids unindexed bytes). */
static int check_cover(const st_file *f, char *why, size_t wl)
{
	const st_ent **v = malloc((f->n ? f->n : 1) * sizeof *v);
	if (!v)
		return FL_ENOMEM;
	for (size_t i = 0; i < f->n; i++)
		v[i] = &f->ents[i];
	qsort(v, f->n, sizeof *v, cmp_span);
	uint64_t at = 0;
	int rc = 0;
	for (size_t i = 0; i < f->n && !rc; i++) {
		if (v[i]->begin < at) {
			rc =
			    fl_fail(why, wl, FL_EFORMAT,
			            "tensor '%.80s' at [%" PRIu64 ", %" PRIu64 ") overlaps '%.80s'",
			            v[i]->name, v[i]->begin, v[i]->end, v[i - 1]->name);
		} else if (v[i]->begin > at) {
			rc = fl_fail(why, wl, FL_EFORMAT,
			             "data buffer has a gap at [%" PRIu64 ", %" PRIu64
			             ") before '%.80s'",
			             at, v[i]->begin, v[i]->name);
		}
		at = v[i]->end;
	}
	if (!rc && at != f->buflen) {
		rc = fl_fail(why, wl, FL_EFORMAT,
		             "data buffer has %" PRIu64
		             " bytes after the last tensor (ends at %" PRIu64 " of %" PRIu64 ")",
		             f->buflen - at, at, f->buflen);
	}
	free(v);
	return rc;
}

int st_parse(const uint8_t *p, size_t n, const st_limits *lim, st_file **out, char *why, size_t wl)
{
	uint64_t max_header = lim && lim->max_header ? lim->max_header : ST_DEF_MAX_HEADER;
	size_t max_tensors = lim && lim->max_tensors ? lim->max_tensors : ST_DEF_MAX_TENSORS;
	uint64_t max_elems = lim && lim->max_elems ? lim->max_elems : ST_DEF_MAX_ELEMS;
	if (max_header > ST_SPEC_MAX_HEADER)
		max_header = ST_SPEC_MAX_HEADER;
	if (max_elems > ST_DEF_MAX_ELEMS)
		max_elems = ST_DEF_MAX_ELEMS;
	cJSON *root = NULL;
	const char **names = NULL;
	st_file *f = NULL;
	int rc = FL_EFORMAT;

	if (n < 8) {
		rc = fl_fail(why, wl, FL_EFORMAT,
		             "file is %zu bytes, shorter than the 8-byte header length", n);
		goto out;
	}
	uint64_t hl = ld_u64le(p);
	if (hl > max_header) {
		rc = fl_fail(why, wl, hl > n - 8 ? FL_EFORMAT : FL_ETOOBIG,
		             "header length %" PRIu64 " exceeds the cap of %" PRIu64 " bytes", hl,
		             max_header);
		goto out;
	}
	if (hl > n - 8) {
		rc = fl_fail(why, wl, FL_EFORMAT,
		             "header length %" PRIu64 " runs past the end of the %zu-byte file", hl,
		             n);
		goto out;
	}
	if (hl < 2) {
		rc = fl_fail(why, wl, FL_EFORMAT,
		             "header length %" PRIu64 " is too short for a JSON object", hl);
		goto out;
	}
	const char *h = (const char *)p + 8;
	if (h[0] != '{') {
		rc = fl_fail(why, wl, FL_EFORMAT, "header does not start with '{'");
		goto out;
	}
	for (size_t i = 0; i < hl; i++) {
		if (h[i] == 0) {
			rc = fl_fail(why, wl, FL_EFORMAT, "header contains a NUL byte at %zu", i);
			goto out;
		}
		/* \u0000 would silently truncate a name or value in cJSON */
		if (h[i] == '\\' && i + 5 < hl && h[i + 1] == 'u' &&
		    memcmp(h + i + 2, "0000", 4) == 0) {
			rc = fl_fail(why, wl, FL_EFORMAT,
			             "header contains an escaped NUL (\\u0000) at %zu", i);
			goto out;
		}
	}
	const char *end = NULL;
	root = cJSON_ParseWithLengthOpts(h, (size_t)hl, &end, 0);
	if (!root) {
		size_t at = end && end >= h ? (size_t)(end - h) : 0;
		rc = fl_fail(why, wl, FL_EFORMAT,
		             "header is not valid JSON (error near byte %zu of %" PRIu64 ")", at,
		             hl);
		goto out;
	}
	if (!cJSON_IsObject(root)) {
		rc = fl_fail(why, wl, FL_EFORMAT, "header is not a JSON object");
		goto out;
	}
	for (const char *c = end; c < h + hl; c++)
		if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r') {
			rc = fl_fail(why, wl, FL_EFORMAT,
			             "header has trailing bytes after the JSON object (offset %zu)",
			             (size_t)(c - h));
			goto out;
		}

	f = calloc(1, sizeof *f);
	if (!f) {
		rc = FL_ENOMEM;
		goto out;
	}
	f->buf = p + 8 + hl;
	f->buflen = (uint64_t)n - 8 - hl;
	size_t cnt = 0;
	int have_meta = 0;
	for (const cJSON *c = root->child; c; c = c->next) {
		if (strcmp(c->string, "__metadata__") == 0) {
			if (have_meta++) {
				rc = fl_fail(why, wl, FL_EFORMAT, "__metadata__ appears twice");
				goto out;
			}
			continue;
		}
		if (++cnt > max_tensors) {
			rc = fl_fail(why, wl, FL_ETOOBIG, "more than %zu tensors", max_tensors);
			goto out;
		}
	}
	f->ents = calloc(cnt ? cnt : 1, sizeof *f->ents);
	names = calloc(cnt ? cnt : 1, sizeof *names);
	if (!f->ents || !names) {
		rc = FL_ENOMEM;
		goto out;
	}
	for (const cJSON *c = root->child; c; c = c->next) {
		if (strcmp(c->string, "__metadata__") == 0) {
			rc = parse_meta(f, c, why, wl);
			if (rc)
				goto out;
			continue;
		}
		if (!name_ok(c->string, TSET_NAME_MAX)) {
			rc = fl_fail(
			    why, wl, FL_EFORMAT,
			    "tensor name '%.80s' is empty, longer than %d bytes or has control "
			    "characters",
			    c->string, TSET_NAME_MAX);
			goto out;
		}
		st_ent *e = &f->ents[f->n];
		rc = parse_tensor(c, e, f->buflen, max_elems, why, wl);
		if (rc)
			goto out;
		e->name = strdup(c->string);
		if (!e->name) {
			rc = FL_ENOMEM;
			goto out;
		}
		names[f->n] = e->name;
		f->n++;
	}
	const char *dup = find_dup(names, f->n);
	if (dup) {
		rc = fl_fail(why, wl, FL_EFORMAT, "tensor name '%.80s' appears twice", dup);
		goto out;
	}
	rc = check_cover(f, why, wl);
	if (rc)
		goto out;
	*out = f;
	f = NULL;
	rc = 0;
out:
	free(names);
	cJSON_Delete(root);
	st_close(f);
	return rc;
}

int st_open(const char *path, const st_limits *lim, st_file **out, char *why, size_t whylen)
{
	char local[256];
	if (!why || !whylen) {
		why = local;
		whylen = sizeof local;
	}
	why[0] = 0;
	file_map m;
	int rc = file_map_open(path, &m);
	if (rc) {
		rc = fl_fail(why, whylen, rc, "cannot map the file (%s)", fl_strerror(rc));
		LOGW("st", "%s: %s", path, why);
		return rc;
	}
	st_file *f = NULL;
	rc = st_parse(m.p, m.n, lim, &f, why, whylen);
	if (rc) {
		file_map_close(&m);
		LOGW("st", "%s: %s", path, why);
		return rc;
	}
	f->map = m;
	f->mapped = 1;
	*out = f;
	return 0;
}

size_t st_count(const st_file *f)
{
	return f->n;
}

int st_get(const st_file *f, size_t i, st_info *out)
{
	if (i >= f->n)
		return FL_EINVAL;
	const st_ent *e = &f->ents[i];
	out->name = e->name;
	out->dtype = e->dtype;
	out->ndim = e->ndim;
	memcpy(out->shape, e->shape, sizeof out->shape);
	out->numel = e->numel;
	out->data = f->buf + e->begin;
	out->nbytes = (size_t)(e->end - e->begin);
	return 0;
}

int st_find(const st_file *f, const char *name, size_t *idx)
{
	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->ents[i].name, name) == 0) {
			*idx = i;
			return 0;
		}
	return FL_ENOENT;
}

const char *st_meta(const st_file *f, const char *key)
{
	for (size_t i = 0; i < f->nmeta; i++)
		if (strcmp(f->meta[i].key, key) == 0)
			return f->meta[i].val;
	return NULL;
}

size_t st_meta_count(const st_file *f)
{
	return f->nmeta;
}

int st_meta_at(const st_file *f, size_t i, st_kv *out)
{
	if (i >= f->nmeta)
		return FL_EINVAL;
	*out = f->meta[i];
	return 0;
}

int st_to_tset(const st_file *f, tset **out)
{
	tset *s = NULL;
	int rc = tset_new(&s);
	for (size_t i = 0; !rc && i < f->n; i++) {
		const st_ent *e = &f->ents[i];
		if (e->ndim > TSET_MAX_DIM ||
		    (e->dtype != ST_F32 && e->dtype != ST_F16 && e->dtype != ST_BF16)) {
			LOGW("st", "tensor '%s': %s with %u dimensions cannot be loaded as f32",
			     e->name, dtypes[e->dtype].name, e->ndim);
			rc = FL_EUNSUPPORTED;
			break;
		}
		tensor *t;
		rc = tset_insert(s, e->name, e->ndim, e->shape, NULL, &t);
		if (rc)
			break;
		const uint8_t *d = f->buf + e->begin;
		if (e->dtype == ST_F32) {
			memcpy(t->data, d, t->n * 4);
		} else {
			for (size_t k = 0; k < t->n; k++) {
				uint16_t v = (uint16_t)(d[2 * k] | d[2 * k + 1] << 8);
				t->data[k] = e->dtype == ST_F16 ? half_to_f32(v) : bf16_to_f32(v);
			}
		}
	}
	if (rc) {
		tset_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

int st_read_tset(const char *path, const st_limits *lim, tset **out)
{
	st_file *f = NULL;
	int rc = st_open(path, lim, &f, NULL, 0);
	if (rc)
		return rc;
	rc = st_to_tset(f, out);
	st_close(f);
	return rc;
}

/* ---- writer ---- */

static int put_str(buf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	int rc = buf_put_u8(b, '"');
	for (const uint8_t *c = (const uint8_t *)s; !rc && *c; c++) {
		if (*c == '"' || *c == '\\') {
			uint8_t e[2] = {'\\', *c};
			rc = buf_append(b, e, 2);
		} else if (*c < 0x20) {
			uint8_t e[6] = {
			    '\\', 'u', '0', '0', (uint8_t)hex[*c >> 4], (uint8_t)hex[*c & 15]};
			rc = buf_append(b, e, 6);
		} else {
			rc = buf_put_u8(b, *c);
		}
	}
	return rc ? rc : buf_put_u8(b, '"');
}

static int put_lit(buf *b, const char *s)
{
	return buf_append(b, s, strlen(s));
}

static int put_u64(buf *b, uint64_t v)
{
	char t[24];
	int k = snprintf(t, sizeof t, "%" PRIu64, v);
	return buf_append(b, t, (size_t)k);
}

int st_write(const char *path, const tset *s, enum st_dtype dtype, const st_kv *meta, size_t nmeta)
{
	return st_write_mode(path, s, dtype, meta, nmeta, FILE_PRIVATE);
}

int st_write_mode(const char *path, const tset *s, enum st_dtype dtype, const st_kv *meta,
                  size_t nmeta, unsigned mode)
{
	if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
		return FL_EINVAL;
	int has_format = 0;
	for (size_t i = 0; i < nmeta; i++) {
		if (!meta[i].key || !meta[i].key[0] || !meta[i].val)
			return FL_EINVAL;
		for (size_t k = 0; k < i; k++)
			if (strcmp(meta[k].key, meta[i].key) == 0)
				return FL_EINVAL;
		has_format |= strcmp(meta[i].key, ST_META_FORMAT) == 0;
	}
	const size_t esz = dtypes[dtype].size, cnt = tset_count(s);
	buf h;
	buf_init(&h, ST_SPEC_MAX_HEADER);
	uint8_t *conv = NULL;
	file_piece *pieces = NULL;
	int rc = put_lit(&h, "{\"__metadata__\":{");
	if (!rc && !has_format)
		rc = put_lit(&h, "\"format\":\"pt\"");
	for (size_t i = 0; !rc && i < nmeta; i++) {
		if (i || !has_format)
			rc = put_lit(&h, ",");
		if (!rc)
			rc = put_str(&h, meta[i].key);
		if (!rc)
			rc = put_lit(&h, ":");
		if (!rc)
			rc = put_str(&h, meta[i].val);
	}
	if (!rc)
		rc = put_lit(&h, "}");
	uint64_t off = 0;
	for (size_t i = 0; !rc && i < cnt; i++) {
		const tensor *t = tset_at(s, i);
		uint64_t nb = (uint64_t)t->n * esz;
		rc = put_lit(&h, ",");
		if (!rc)
			rc = put_str(&h, t->name);
		if (!rc)
			rc = put_lit(&h, ":{\"dtype\":\"");
		if (!rc)
			rc = put_lit(&h, dtypes[dtype].name);
		if (!rc)
			rc = put_lit(&h, "\",\"shape\":[");
		for (uint32_t d = 0; !rc && d < t->ndim; d++) {
			if (d)
				rc = put_lit(&h, ",");
			if (!rc)
				rc = put_u64(&h, t->shape[d]);
		}
		if (!rc)
			rc = put_lit(&h, "],\"data_offsets\":[");
		if (!rc)
			rc = put_u64(&h, off);
		if (!rc)
			rc = put_lit(&h, ",");
		if (!rc)
			rc = put_u64(&h, off + nb);
		if (!rc)
			rc = put_lit(&h, "]}");
		off += nb;
	}
	if (!rc)
		rc = put_lit(&h, "}");
	/* pad with spaces so the data buffer starts at a multiple of 8 */
	while (!rc && (8 + h.len) % 8)
		rc = buf_put_u8(&h, ' ');
	if (rc)
		goto out;
	if (off > SIZE_MAX) {
		rc = FL_EOVERFLOW;
		goto out;
	}

	uint8_t lenb[8];
	st_u64le(lenb, (uint64_t)h.len);
	pieces = calloc(cnt + 2, sizeof *pieces);
	if (!pieces) {
		rc = FL_ENOMEM;
		goto out;
	}
	size_t np = 0;
	pieces[np++] = (file_piece){lenb, 8};
	pieces[np++] = (file_piece){h.data, h.len};
	if (dtype == ST_F32) {
		for (size_t i = 0; i < cnt; i++) {
			const tensor *t = tset_at(s, i);
			if (t->n)
				pieces[np++] = (file_piece){t->data, t->n * 4};
		}
	} else {
		conv = malloc(off ? (size_t)off : 1);
		if (!conv) {
			rc = FL_ENOMEM;
			goto out;
		}
		size_t k = 0;
		for (size_t i = 0; i < cnt; i++) {
			const tensor *t = tset_at(s, i);
			for (size_t j = 0; j < t->n; j++, k += 2) {
				float x = t->data[j];
				uint16_t v;
				if (dtype == ST_F16) {
					v = half_from_f32(x);
					if ((v & 0x7fff) == 0x7c00 && isfinite(x)) {
						LOGE("st",
						     "%s: tensor '%s' element %zu (%g) overflows "
						     "F16",
						     path, t->name, j, (double)x);
						rc = FL_ENUMERIC;
						goto out;
					}
				} else {
					v = bf16_from_f32(x);
				}
				conv[k] = (uint8_t)v;
				conv[k + 1] = (uint8_t)(v >> 8);
			}
		}
		pieces[np++] = (file_piece){conv, (size_t)off};
	}
	rc = file_write_atomic_vm(path, pieces, np, mode);
out:
	free(pieces);
	free(conv);
	buf_fini(&h);
	return rc;
}
