/* test_gguf — GGUF reader and writer: round trip of every metadata type and
 * tensor type, hostile files (truncated, absurd counts/dims/offsets,
 * misaligned data, unknown types, duplicates) refused with a message naming
 * the fault, and the real vocabulary files in ../shared/data/vocab.
 *
 * Hostile files are assembled byte by byte here (not with the writer under
 * test). With FEDLORA_GGUF_CORPUS set to a directory, every valid and hostile
 * file the test builds is also saved there: that is how
 * tests/fuzz/corpus/gguf was made. */
#include "testutil.h"

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "half.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int corpus_n;

static void save_corpus(const char *tag, const void *p, size_t n)
{
	const char *dir = getenv("FEDLORA_GGUF_CORPUS");
	if (!dir)
		return;
	char path[512];
	snprintf(path, sizeof path, "%s/%02d-%s.gguf", dir, corpus_n++, tag);
	assert_int_equal(file_write_atomic(path, p, n), 0);
}

/* ---- raw byte builder ---- */

static void b_u32(buf *b, uint32_t v)
{
	assert_int_equal(buf_put_u32le(b, v), 0);
}

static void b_u64(buf *b, uint64_t v)
{
	assert_int_equal(buf_put_u64le(b, v), 0);
}

static void b_str(buf *b, const char *s)
{
	b_u64(b, strlen(s));
	assert_int_equal(buf_append(b, s, strlen(s)), 0);
}

static void b_hdr(buf *b, uint32_t version, uint64_t nt, uint64_t nkv)
{
	buf_init(b, 0);
	assert_int_equal(buf_append(b, "GGUF", 4), 0);
	b_u32(b, version);
	b_u64(b, nt);
	b_u64(b, nkv);
}

static void b_kv_u32(buf *b, const char *key, uint32_t v)
{
	b_str(b, key);
	b_u32(b, GGUF_U32);
	b_u32(b, v);
}

static void b_tensor(buf *b, const char *name, uint32_t ndims, const uint64_t *ne, uint32_t type,
                     uint64_t off)
{
	b_str(b, name);
	b_u32(b, ndims);
	for (uint32_t i = 0; i < ndims; i++)
		b_u64(b, ne[i]);
	b_u32(b, type);
	b_u64(b, off);
}

static void b_pad(buf *b, size_t align)
{
	while (b->len % align)
		assert_int_equal(buf_put_u8(b, 0), 0);
}

static void b_zeros(buf *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		assert_int_equal(buf_put_u8(b, 0), 0);
}

/* Asserts the bytes are refused with `code` and a message containing
 * `what`; also saves them to the corpus. */
static void expect_refused(const char *tag, const buf *b, int code, const char *what)
{
	save_corpus(tag, b->data, b->len);
	gguf *g = (gguf *)0x1;
	char err[512] = "";
	int rc = gguf_open_mem(b->data, b->len, &g, err, sizeof err);
	if (rc != code || !strstr(err, what)) {
		print_error("%s: rc %d (%s) err '%s'; want %d and '%s'\n", tag, rc, fl_errname(rc),
		            err, code, what);
		fail();
	}
	assert_ptr_equal(g, (gguf *)0x1); /* out untouched on failure */
}

static gguf *expect_ok(const char *tag, const buf *b)
{
	save_corpus(tag, b->data, b->len);
	gguf *g = NULL;
	char err[512] = "";
	int rc = gguf_open_mem(b->data, b->len, &g, err, sizeof err);
	if (rc) {
		print_error("%s: refused: %s\n", tag, err);
		fail();
	}
	return g;
}

/* ---- round trip through the writer ---- */

struct tspec {
	const char *name;
	uint32_t type;
	int ndims;
	uint64_t ne[4];
};

static const struct tspec tspecs[] = {
    {"tok_embd.weight", GTYPE_F32, 2, {7, 3, 1, 1}},
    {"norm.weight", GTYPE_F16, 1, {5, 1, 1, 1}},
    {"blk.0.attn_q.weight", GTYPE_Q8_0, 2, {64, 2, 1, 1}},
    {"blk.0.ffn_up.weight", GTYPE_Q4_0, 3, {32, 3, 2, 1}},
    {"k4", GTYPE_Q4_K, 1, {256, 1, 1, 1}},
    {"k6", GTYPE_Q6_K, 2, {256, 2, 1, 1}},
    {"bf", GTYPE_BF16, 4, {3, 1, 1, 2}},
    {"empty", GTYPE_F32, 2, {4, 0, 1, 1}},
};
#define NT (sizeof tspecs / sizeof tspecs[0])

static const int32_t i32s[] = {-5, 0, 7, INT32_MAX, INT32_MIN};
static const double f64s[] = {1.5, -0.25, 1e300};
static const uint8_t bools[] = {1, 0, 0, 1};
static const char *const strs[] = {"<unk>", "", "▁the", "<0x0A>"};

static gguf_writer *make_writer(uint32_t align, uint8_t **tdata)
{
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	if (align)
		assert_int_equal(gguf_set_u32(w, "general.alignment", align), 0);
	assert_int_equal(gguf_set_str(w, "general.architecture", "llama"), 0);
	assert_int_equal(gguf_set_u8(w, "t.u8", 200), 0);
	assert_int_equal(gguf_set_i8(w, "t.i8", -100), 0);
	assert_int_equal(gguf_set_u16(w, "t.u16", 60000), 0);
	assert_int_equal(gguf_set_i16(w, "t.i16", -30000), 0);
	assert_int_equal(gguf_set_u32(w, "t.u32", 4000000000u), 0);
	assert_int_equal(gguf_set_i32(w, "t.i32", -2000000000), 0);
	assert_int_equal(gguf_set_u64(w, "t.u64", UINT64_MAX), 0);
	assert_int_equal(gguf_set_i64(w, "t.i64", INT64_MIN), 0);
	assert_int_equal(gguf_set_f32(w, "t.f32", 0.1f), 0);
	assert_int_equal(gguf_set_f64(w, "t.f64", -1e-300), 0);
	assert_int_equal(gguf_set_bool(w, "t.bool", 1), 0);
	assert_int_equal(gguf_set_bool(w, "t.bool0", 0), 0);
	assert_int_equal(gguf_set_strn(w, "t.strn", "a\0b", 3), 0);
	assert_int_equal(gguf_set_str(w, "t.empty", ""), 0);
	assert_int_equal(gguf_set_arr(w, "t.ai32", GGUF_I32, i32s, 5), 0);
	assert_int_equal(gguf_set_arr(w, "t.af64", GGUF_F64, f64s, 3), 0);
	assert_int_equal(gguf_set_arr(w, "t.abool", GGUF_BOOL, bools, 4), 0);
	assert_int_equal(gguf_set_arr(w, "t.aempty", GGUF_U16, NULL, 0), 0);
	assert_int_equal(gguf_set_arr_str(w, "t.astr", strs, 4), 0);
	uint64_t rng = 7;
	for (size_t i = 0; i < NT; i++) {
		size_t sz;
		assert_int_equal(
		    gtype_tensor_size(tspecs[i].type, tspecs[i].ne, tspecs[i].ndims, &sz), 0);
		tdata[i] = malloc(sz ? sz : 1);
		for (size_t k = 0; k < sz; k++)
			tdata[i][k] = (uint8_t)tu_rand(&rng);
		assert_int_equal(gguf_add_tensor(w, tspecs[i].name, tspecs[i].type, tspecs[i].ndims,
		                                 tspecs[i].ne, tdata[i], sz),
		                 0);
	}
	return w;
}

static void check_reader(const gguf *g, size_t align, uint8_t **tdata, int check_ptr_align)
{
	assert_int_equal(gguf_version(g), 3);
	assert_int_equal(gguf_alignment(g), align);
	assert_int_equal(gguf_data_offset(g) % align, 0);
	uint8_t u8;
	int8_t i8;
	uint16_t u16;
	int16_t i16;
	uint32_t u32;
	int32_t i32;
	uint64_t u64;
	int64_t i64;
	float f32;
	double f64;
	int bl;
	gguf_str s;
	assert_int_equal(gguf_get_u8(g, "t.u8", &u8), 0);
	assert_int_equal(u8, 200);
	assert_int_equal(gguf_get_i8(g, "t.i8", &i8), 0);
	assert_int_equal(i8, -100);
	assert_int_equal(gguf_get_u16(g, "t.u16", &u16), 0);
	assert_int_equal(u16, 60000);
	assert_int_equal(gguf_get_i16(g, "t.i16", &i16), 0);
	assert_int_equal(i16, -30000);
	assert_int_equal(gguf_get_u32(g, "t.u32", &u32), 0);
	assert_int_equal(u32, 4000000000u);
	assert_int_equal(gguf_get_i32(g, "t.i32", &i32), 0);
	assert_int_equal(i32, -2000000000);
	assert_int_equal(gguf_get_u64(g, "t.u64", &u64), 0);
	assert_true(u64 == UINT64_MAX);
	assert_int_equal(gguf_get_i64(g, "t.i64", &i64), 0);
	assert_true(i64 == INT64_MIN);
	assert_int_equal(gguf_get_f32(g, "t.f32", &f32), 0);
	assert_true(f32 == 0.1f);
	assert_int_equal(gguf_get_f64(g, "t.f64", &f64), 0);
	assert_true(f64 == -1e-300);
	assert_int_equal(gguf_get_bool(g, "t.bool", &bl), 0);
	assert_int_equal(bl, 1);
	assert_int_equal(gguf_get_bool(g, "t.bool0", &bl), 0);
	assert_int_equal(bl, 0);
	assert_int_equal(gguf_get_str(g, "t.strn", &s), 0);
	assert_int_equal(s.n, 3);
	assert_memory_equal(s.p, "a\0b", 3);
	assert_int_equal(gguf_get_str(g, "t.empty", &s), 0);
	assert_int_equal(s.n, 0);
	assert_int_equal(gguf_get_str(g, "general.architecture", &s), 0);
	assert_int_equal(s.n, 5);
	assert_memory_equal(s.p, "llama", 5);

	/* wrong type / missing key; out untouched */
	u32 = 12345;
	assert_int_equal(gguf_get_u32(g, "t.i32", &u32), FL_EMISMATCH);
	assert_int_equal(gguf_get_u32(g, "nope", &u32), FL_ENOENT);
	assert_int_equal(gguf_get_u32(g, "general.architecture", &u32), FL_EMISMATCH);
	assert_int_equal(u32, 12345);

	/* lenient integer / float access */
	assert_int_equal(gguf_get_int(g, "t.u16", &i64), 0);
	assert_int_equal(i64, 60000);
	assert_int_equal(gguf_get_int(g, "t.i8", &i64), 0);
	assert_int_equal(i64, -100);
	assert_int_equal(gguf_get_int(g, "t.u64", &i64), FL_EOVERFLOW);
	assert_int_equal(gguf_get_uint(g, "t.u32", &u64), 0);
	assert_int_equal(u64, 4000000000u);
	assert_int_equal(gguf_get_uint(g, "t.i32", &u64), FL_EOVERFLOW);
	assert_int_equal(gguf_get_int(g, "t.f32", &i64), FL_EMISMATCH);
	assert_int_equal(gguf_get_int(g, "t.bool", &i64), FL_EMISMATCH);
	assert_int_equal(gguf_get_float(g, "t.f32", &f64), 0);
	assert_true(f64 == (double)0.1f);
	assert_int_equal(gguf_get_float(g, "t.f64", &f64), 0);
	assert_true(f64 == -1e-300);
	assert_int_equal(gguf_get_float(g, "t.u8", &f64), FL_EMISMATCH);

	/* arrays */
	enum gguf_vtype et;
	size_t n;
	assert_int_equal(gguf_get_arr(g, "t.ai32", &et, &n), 0);
	assert_int_equal(et, GGUF_I32);
	assert_int_equal(n, 5);
	const void *raw;
	assert_int_equal(gguf_get_arr_data(g, "t.ai32", GGUF_I32, &raw, &n), 0);
	for (size_t i = 0; i < 5; i++) {
		int32_t v;
		memcpy(&v, (const uint8_t *)raw + 4 * i, 4);
		assert_int_equal(v, i32s[i]);
	}
	assert_int_equal(gguf_get_arr_data(g, "t.ai32", GGUF_U32, &raw, &n), FL_EMISMATCH);
	int64_t iv[5];
	assert_int_equal(gguf_get_arr_i64(g, "t.ai32", iv, 5), 0);
	for (size_t i = 0; i < 5; i++)
		assert_int_equal(iv[i], i32s[i]);
	assert_int_equal(gguf_get_arr_i64(g, "t.ai32", iv, 4), FL_EMISMATCH);
	assert_int_equal(gguf_get_arr_i64(g, "t.abool", iv, 4), 0);
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(iv[i], bools[i]);
	float fv[3];
	assert_int_equal(gguf_get_arr_f32(g, "t.af64", fv, 3), 0);
	for (size_t i = 0; i < 3; i++)
		assert_true(fv[i] == (float)f64s[i]);
	assert_int_equal(gguf_get_arr_f32(g, "t.ai32", fv, 5), FL_EMISMATCH);
	assert_int_equal(gguf_get_arr(g, "t.aempty", &et, &n), 0);
	assert_int_equal(et, GGUF_U16);
	assert_int_equal(n, 0);
	const gguf_str *ss;
	assert_int_equal(gguf_get_arr_strs(g, "t.astr", &ss, &n), 0);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(ss[i].n, strlen(strs[i]));
		assert_memory_equal(ss[i].p, strs[i], ss[i].n);
	}
	assert_int_equal(gguf_get_arr_strs(g, "t.ai32", &ss, &n), FL_EMISMATCH);
	assert_int_equal(gguf_get_arr(g, "t.u8", &et, &n), FL_EMISMATCH);

	/* key listing */
	size_t nkv = gguf_kv_count(g);
	assert_int_equal(nkv, 20 + (align != 32));
	int seen = 0;
	for (size_t i = 0; i < nkv; i++) {
		int idx = gguf_find_key(g, gguf_kv_key(g, i));
		assert_int_equal(idx, (int)i);
		if (strcmp(gguf_kv_key(g, i), "t.astr") == 0) {
			assert_int_equal(gguf_kv_type(g, i), GGUF_ARR);
			seen++;
		}
	}
	assert_int_equal(seen, 1);
	assert_null(gguf_kv_key(g, nkv));

	/* tensors */
	assert_int_equal(gguf_tensor_count(g), NT);
	for (size_t i = 0; i < NT; i++) {
		gguf_tensor t, t2;
		assert_int_equal(gguf_tensor_find(g, tspecs[i].name, &t), 0);
		assert_int_equal(gguf_tensor_at(g, i, &t2), 0);
		assert_string_equal(t.name, tspecs[i].name);
		assert_string_equal(t2.name, tspecs[i].name);
		assert_int_equal(t.type, tspecs[i].type);
		assert_int_equal(t.ndims, tspecs[i].ndims);
		uint64_t nel = 1;
		for (int d = 0; d < 4; d++) {
			assert_int_equal(t.ne[d], tspecs[i].ne[d]);
			nel *= tspecs[i].ne[d];
		}
		assert_int_equal(t.nelem, nel);
		assert_int_equal(t.offset % align, 0);
		size_t sz;
		assert_int_equal(gtype_tensor_size(t.type, t.ne, t.ndims, &sz), 0);
		assert_int_equal(t.size, sz);
		if (sz)
			assert_memory_equal(t.data, tdata[i], sz);
		if (check_ptr_align)
			assert_int_equal((uintptr_t)t.data % align, 0);
	}
	gguf_tensor t;
	assert_int_equal(gguf_tensor_find(g, "missing", &t), FL_ENOENT);
	assert_int_equal(gguf_tensor_at(g, NT, &t), FL_ENOENT);
}

static void test_roundtrip(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	assert_non_null(dir);
	uint32_t aligns[3] = {0, 64, 1};
	for (int a = 0; a < 3; a++) {
		uint8_t *tdata[NT];
		gguf_writer *w = make_writer(aligns[a], tdata);
		char path[600];
		snprintf(path, sizeof path, "%s/rt%d.gguf", dir, a);
		assert_int_equal(gguf_writer_write(w, path), 0);
		uint8_t *mem = NULL;
		size_t n = 0;
		assert_int_equal(gguf_writer_serialize(w, &mem, &n), 0);
		uint8_t *fb = NULL;
		size_t fn = 0;
		assert_int_equal(file_read_all(path, 1 << 20, &fb, &fn), 0);
		assert_int_equal(fn, n);
		assert_memory_equal(fb, mem, n);
		size_t align = aligns[a] ? aligns[a] : 32;
		gguf *g = NULL;
		char err[256];
		assert_int_equal(gguf_open(path, &g, err, sizeof err), 0);
		check_reader(g, align, tdata, 1);
		gguf_free(g);
		/* file size: data section + padded tensors */
		assert_int_equal(n % align, 0);

		buf b = {mem, n, n, n};
		if (a == 0) {
			save_corpus("valid-v3", mem, n);
			/* the same bytes as version 2 also load */
			st_u32le(mem + 4, 2);
			g = expect_ok("valid-v2", &b);
			assert_int_equal(gguf_version(g), 2);
			gguf_free(g);
			st_u32le(mem + 4, 3);

			/* every truncation that cuts into header or tensor data is
			 * refused; the last tensor's trailing padding is optional */
			size_t need = 0;
			g = expect_ok("valid", &b);
			for (size_t i = 0; i < gguf_tensor_count(g); i++) {
				gguf_tensor t;
				gguf_tensor_at(g, i, &t);
				size_t end = gguf_data_offset(g) + (size_t)t.offset + t.size;
				need = end > need ? end : need;
			}
			gguf_free(g);
			for (size_t k = 0; k < n; k++) {
				gguf *h = NULL;
				int rc = gguf_open_mem(mem, k, &h, err, sizeof err);
				if (k < need) {
					if (rc == 0) {
						print_error("prefix of %zu/%zu bytes accepted\n", k,
						            n);
						fail();
					}
					assert_true(rc == FL_EFORMAT);
				} else {
					assert_int_equal(rc, 0);
					gguf_free(h);
				}
			}
		}
		free(mem);
		free(fb);
		gguf_writer_free(w);
		for (size_t i = 0; i < NT; i++)
			free(tdata[i]);
	}
	tu_rmtree(dir);
	free(dir);
}

/* A writer-owned tensor and an empty writer. */
static void test_writer_misc(void **state)
{
	(void)state;
	gguf_writer *w = gguf_writer_new();
	uint8_t *mem = NULL;
	size_t n = 0;
	assert_int_equal(gguf_writer_serialize(w, &mem, &n), 0);
	assert_int_equal(n, 24); /* magic, version, two counts; no data section */
	gguf *g = NULL;
	assert_int_equal(gguf_open_mem(mem, n, &g, NULL, 0), 0);
	assert_int_equal(gguf_kv_count(g), 0);
	assert_int_equal(gguf_tensor_count(g), 0);
	gguf_free(g);
	free(mem);

	float *x = malloc(32 * sizeof *x);
	for (int i = 0; i < 32; i++)
		x[i] = (float)i;
	uint64_t ne[1] = {32};
	assert_int_equal(gguf_add_tensor_own(w, "x", GTYPE_F32, 1, ne, x, 128), 0);
	/* refused calls free an owned buffer too (ASan checks for the leak) */
	void *y = malloc(16);
	assert_int_equal(gguf_add_tensor_own(w, "y", GTYPE_F32, 1, ne, y, 16), FL_EINVAL);
	assert_int_equal(gguf_writer_serialize(w, &mem, &n), 0);
	assert_int_equal(gguf_open_mem(mem, n, &g, NULL, 0), 0);
	gguf_tensor t;
	assert_int_equal(gguf_tensor_find(g, "x", &t), 0);
	float back[32];
	assert_int_equal(gtype_dequant_row(t.type, t.data, back, 32), 0);
	for (int i = 0; i < 32; i++)
		assert_true(back[i] == (float)i);
	gguf_free(g);
	free(mem);
	gguf_writer_free(w);
}

static void test_writer_refusals(void **state)
{
	(void)state;
	gguf_writer *w = gguf_writer_new();
	float d[64] = {0};
	uint64_t ne[2] = {32, 2};
	assert_int_equal(gguf_set_u32(w, "a", 1), 0);
	assert_int_equal(gguf_set_str(w, "a", "x"), FL_EINVAL); /* duplicate key */
	assert_int_equal(gguf_set_u32(w, "", 1), FL_EINVAL);
	assert_int_equal(gguf_set_u32(w, "general.alignment", 3), FL_EINVAL);
	assert_int_equal(gguf_set_u32(w, "general.alignment", 0), FL_EINVAL);
	/* alignment as another type would be ignored by readers: refused */
	assert_int_equal(gguf_set_i32(w, "general.alignment", 32), FL_EINVAL);
	assert_int_equal(gguf_set_str(w, "general.alignment", "32"), FL_EINVAL);
	gguf_writer_free(w);

	w = gguf_writer_new();
	assert_int_equal(gguf_set_arr(w, "general.alignment", GGUF_U32, ne, 1), FL_EINVAL);
	assert_int_equal(gguf_set_arr(w, "s", GGUF_STR, d, 1), FL_EINVAL);
	assert_int_equal(gguf_set_arr(w, "s", GGUF_ARR, d, 1), FL_EINVAL);
	uint8_t bad_bool[2] = {0, 2};
	assert_int_equal(gguf_set_arr(w, "b", GGUF_BOOL, bad_bool, 2), FL_EINVAL);
	assert_int_equal(gguf_add_tensor(w, "t", GTYPE_F32, 2, ne, d, 256), 0);
	assert_int_equal(gguf_add_tensor(w, "t", GTYPE_F32, 2, ne, d, 256), FL_EINVAL);
	assert_int_equal(gguf_add_tensor(w, "u", GTYPE_F32, 2, ne, d, 255), FL_EINVAL);
	assert_int_equal(gguf_add_tensor(w, "u", 11, 2, ne, d, 256), FL_EUNSUPPORTED);
	assert_int_equal(gguf_add_tensor(w, "u", GTYPE_F32, 0, ne, d, 4), FL_EINVAL);
	assert_int_equal(gguf_add_tensor(w, "u", GTYPE_F32, 5, ne, d, 256), FL_EINVAL);
	uint64_t odd[1] = {33};
	assert_int_equal(gguf_add_tensor(w, "u", GTYPE_Q8_0, 1, odd, d, 34), FL_EINVAL);
	char longname[GGUF_MAX_NAME + 2];
	memset(longname, 'n', sizeof longname - 1);
	longname[sizeof longname - 1] = 0;
	assert_int_equal(gguf_add_tensor(w, longname, GTYPE_F32, 2, ne, d, 256), FL_EINVAL);
	longname[GGUF_MAX_NAME] = 0; /* exactly the limit */
	assert_int_equal(gguf_add_tensor(w, longname, GTYPE_F32, 2, ne, d, 256), 0);
	uint8_t *mem;
	size_t n;
	assert_int_equal(gguf_writer_serialize(w, &mem, &n), 0);
	gguf *g;
	assert_int_equal(gguf_open_mem(mem, n, &g, NULL, 0), 0);
	assert_int_equal(gguf_tensor_count(g), 2);
	assert_int_equal(gguf_kv_count(g), 0);
	gguf_free(g);
	free(mem);
	gguf_writer_free(w);
}

/* ---- hostile files ---- */

static void test_bad_headers(void **state)
{
	(void)state;
	buf b;
	buf_init(&b, 0);
	expect_refused("empty", &b, FL_EFORMAT, "bad magic");
	buf_fini(&b);

	b_hdr(&b, 3, 0, 0);
	b.data[0] = 'g';
	expect_refused("magic", &b, FL_EFORMAT, "bad magic");
	buf_fini(&b);

	b_hdr(&b, 1, 0, 0);
	expect_refused("v1", &b, FL_EUNSUPPORTED, "version 1");
	buf_fini(&b);
	b_hdr(&b, 4, 0, 0);
	expect_refused("v4", &b, FL_EUNSUPPORTED, "version 4");
	buf_fini(&b);
	b_hdr(&b, 0x03000000u, 0, 0);
	expect_refused("bigendian", &b, FL_EUNSUPPORTED, "big-endian");
	buf_fini(&b);

	b_hdr(&b, 3, 0, 0);
	b.len = 20; /* counts cut */
	expect_refused("short-header", &b, FL_EFORMAT, "truncated");
	buf_fini(&b);

	b_hdr(&b, 3, 0, UINT64_MAX);
	expect_refused("kv-count", &b, FL_EFORMAT, "metadata count");
	buf_fini(&b);
	b_hdr(&b, 3, 1ull << 40, 0);
	b_zeros(&b, 64);
	expect_refused("tensor-count", &b, FL_EFORMAT, "tensor count");
	buf_fini(&b);
	/* counts that would fit a bigger file but not this one */
	b_hdr(&b, 3, 0, 10);
	b_kv_u32(&b, "a", 1);
	expect_refused("kv-count-small", &b, FL_EFORMAT, "metadata count");
	buf_fini(&b);
	b_hdr(&b, 3, 0, 2);
	b_kv_u32(&b, "a", 1);
	b_zeros(&b, 14);
	expect_refused("kv-count-short", &b, FL_EFORMAT, "");
	buf_fini(&b);
}

static void test_bad_metadata(void **state)
{
	(void)state;
	buf b;
	/* key length beyond the file */
	b_hdr(&b, 3, 0, 1);
	b_u64(&b, 1ull << 62);
	b_zeros(&b, 16);
	expect_refused("key-len", &b, FL_EFORMAT, "exceeds");
	buf_fini(&b);
	/* key length 2^64-1 */
	b_hdr(&b, 3, 0, 1);
	b_u64(&b, UINT64_MAX);
	b_zeros(&b, 16);
	expect_refused("key-len-max", &b, FL_EFORMAT, "exceeds");
	buf_fini(&b);
	/* empty key, key with NUL */
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "");
	b_u32(&b, GGUF_U8);
	b_zeros(&b, 9);
	expect_refused("key-empty", &b, FL_EFORMAT, "empty");
	buf_fini(&b);
	b_hdr(&b, 3, 0, 1);
	b_u64(&b, 3);
	assert_int_equal(buf_append(&b, "a\0b", 3), 0);
	b_u32(&b, GGUF_U8);
	b_zeros(&b, 9);
	expect_refused("key-nul", &b, FL_EFORMAT, "NUL");
	buf_fini(&b);
	/* duplicate key */
	b_hdr(&b, 3, 0, 2);
	b_kv_u32(&b, "llama.block_count", 1);
	b_kv_u32(&b, "llama.block_count", 2);
	expect_refused("dup-key", &b, FL_EFORMAT, "duplicate metadata key 'llama.block_count'");
	buf_fini(&b);
	/* unknown value type */
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, 13);
	b_zeros(&b, 8);
	expect_refused("vtype", &b, FL_EFORMAT, "unknown value type 13");
	buf_fini(&b);
	/* scalar cut short */
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_U64);
	b_zeros(&b, 4);
	expect_refused("scalar-short", &b, FL_EFORMAT, "truncated");
	buf_fini(&b);
	/* bool not 0/1 */
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_BOOL);
	assert_int_equal(buf_put_u8(&b, 2), 0);
	expect_refused("bool", &b, FL_EFORMAT, "bool");
	buf_fini(&b);
	/* string value longer than the file */
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_STR);
	b_u64(&b, 100);
	b_zeros(&b, 10);
	expect_refused("str-len", &b, FL_EFORMAT, "exceeds");
	buf_fini(&b);
	/* absurd array lengths: numeric and strings */
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARR);
	b_u32(&b, GGUF_F32);
	b_u64(&b, 1ull << 62);
	b_zeros(&b, 32);
	expect_refused("arr-len", &b, FL_EFORMAT, "array of");
	buf_fini(&b);
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARR);
	b_u32(&b, GGUF_STR);
	b_u64(&b, UINT64_MAX);
	b_zeros(&b, 32);
	expect_refused("arr-str-len", &b, FL_EFORMAT, "strings cannot fit");
	buf_fini(&b);
	/* string array whose 2nd string overruns */
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARR);
	b_u32(&b, GGUF_STR);
	b_u64(&b, 2);
	b_str(&b, "ok");
	b_u64(&b, 1000);
	b_zeros(&b, 8);
	expect_refused("arr-str-overrun", &b, FL_EFORMAT, "exceeds");
	buf_fini(&b);
	/* nested array, unknown element type, bool array with 7 */
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARR);
	b_u32(&b, GGUF_ARR);
	b_u64(&b, 0);
	expect_refused("arr-nested", &b, FL_EUNSUPPORTED, "nested");
	buf_fini(&b);
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARR);
	b_u32(&b, 77);
	b_u64(&b, 0);
	expect_refused("arr-etype", &b, FL_EFORMAT, "unknown array element type 77");
	buf_fini(&b);
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARR);
	b_u32(&b, GGUF_BOOL);
	b_u64(&b, 3);
	assert_int_equal(buf_append(&b, "\x01\x00\x07", 3), 0);
	expect_refused("arr-bool", &b, FL_EFORMAT, "bool value 7");
	buf_fini(&b);
	/* alignment: zero, not a power of two, wrong type */
	uint32_t bad_align[3] = {0, 48, 1u << 31};
	for (int i = 0; i < 3; i++) {
		b_hdr(&b, 3, 0, 1);
		b_kv_u32(&b, "general.alignment", bad_align[i]);
		expect_refused("align", &b, FL_EFORMAT, "general.alignment");
		buf_fini(&b);
	}
	b_hdr(&b, 3, 0, 1);
	b_str(&b, "general.alignment");
	b_u32(&b, GGUF_U64);
	b_u64(&b, 32);
	expect_refused("align-type", &b, FL_EFORMAT, "expected u32");
	buf_fini(&b);
}

/* One tensor file: header, one kv, tensor infos given by the caller. */
static void test_bad_tensors(void **state)
{
	(void)state;
	buf b;
	uint64_t ne2[2] = {32, 2};

	/* valid baseline, so the cases below differ in one thing only */
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, ne2, GTYPE_F32, 0);
	b_pad(&b, 32);
	b_zeros(&b, 256);
	gguf *g = expect_ok("tensor-ok", &b);
	gguf_tensor t;
	assert_int_equal(gguf_tensor_find(g, "w", &t), 0);
	assert_int_equal(t.size, 256);
	gguf_free(g);
	/* same, data cut by one byte */
	b.len--;
	expect_refused("tensor-trunc", &b, FL_EFORMAT, "outside");
	buf_fini(&b);

	/* unknown and unsupported types are named */
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, ne2, 99, 0);
	b_pad(&b, 32);
	b_zeros(&b, 256);
	expect_refused("type-unknown", &b, FL_EFORMAT, "tensor 'w': unknown tensor type id 99");
	buf_fini(&b);
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, ne2, 11, 0);
	b_pad(&b, 32);
	b_zeros(&b, 256);
	expect_refused("type-q3k", &b, FL_EUNSUPPORTED, "type Q3_K (11) is not supported");
	buf_fini(&b);
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, ne2, 10, 0);
	b_pad(&b, 32);
	b_zeros(&b, 256);
	expect_refused("type-q2k", &b, FL_EUNSUPPORTED, "Q2_K");
	buf_fini(&b);

	/* n_dims 0 and 5 */
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 0, ne2, GTYPE_F32, 0);
	b_zeros(&b, 64);
	expect_refused("ndims0", &b, FL_EFORMAT, "0 dimensions");
	buf_fini(&b);
	uint64_t ne5[5] = {1, 1, 1, 1, 1};
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 5, ne5, GTYPE_F32, 0);
	b_zeros(&b, 64);
	expect_refused("ndims5", &b, FL_EFORMAT, "5 dimensions");
	buf_fini(&b);

	/* absurd dims: > INT64_MAX, product overflow, size overflow */
	uint64_t big1[2] = {1ull << 63, 1};
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, big1, GTYPE_F32, 0);
	b_zeros(&b, 64);
	expect_refused("dim-huge", &b, FL_EFORMAT, "absurd");
	buf_fini(&b);
	uint64_t big2[3] = {1ull << 32, 1ull << 31, 4};
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 3, big2, GTYPE_F32, 0);
	b_zeros(&b, 64);
	expect_refused("dim-product", &b, FL_EFORMAT, "overflows");
	buf_fini(&b);
	uint64_t big3[2] = {1ull << 40, 1ull << 22}; /* 2^62 elements: 2^64 bytes */
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, big3, GTYPE_F32, 0);
	b_zeros(&b, 64);
	expect_refused("dim-bytes", &b, FL_EFORMAT, "byte size overflows");
	buf_fini(&b);
	uint64_t big4[2] = {1ull << 30, 1ull << 10}; /* 4 TiB claimed, file is tiny */
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, big4, GTYPE_F32, 0);
	b_pad(&b, 32);
	b_zeros(&b, 64);
	expect_refused("dim-vs-file", &b, FL_EFORMAT, "outside");
	buf_fini(&b);

	/* row length not a block multiple */
	uint64_t ne33[1] = {33};
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 1, ne33, GTYPE_Q8_0, 0);
	b_pad(&b, 32);
	b_zeros(&b, 64);
	expect_refused("block", &b, FL_EFORMAT, "not a multiple of the Q8_0 block size 32");
	buf_fini(&b);

	/* misaligned offset, offset past the end, offset + size overflow */
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, ne2, GTYPE_F32, 4);
	b_pad(&b, 32);
	b_zeros(&b, 512);
	expect_refused("misaligned", &b, FL_EFORMAT, "not a multiple of the alignment 32");
	buf_fini(&b);
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, ne2, GTYPE_F32, 1024);
	b_pad(&b, 32);
	b_zeros(&b, 512);
	expect_refused("offset-past", &b, FL_EFORMAT, "outside");
	buf_fini(&b);
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "w", 2, ne2, GTYPE_F32, UINT64_MAX - 31);
	b_pad(&b, 32);
	b_zeros(&b, 512);
	expect_refused("offset-wrap", &b, FL_EFORMAT, "outside");
	buf_fini(&b);
	/* alignment 64 declared: offset 32 is misaligned there */
	b_hdr(&b, 3, 1, 1);
	b_kv_u32(&b, "general.alignment", 64);
	b_tensor(&b, "w", 2, ne2, GTYPE_F32, 32);
	b_pad(&b, 64);
	b_zeros(&b, 512);
	expect_refused("misaligned64", &b, FL_EFORMAT, "alignment 64");
	buf_fini(&b);

	/* duplicate names, overlapping data */
	b_hdr(&b, 3, 2, 0);
	b_tensor(&b, "w", 2, ne2, GTYPE_F32, 0);
	b_tensor(&b, "w", 2, ne2, GTYPE_F32, 256);
	b_pad(&b, 32);
	b_zeros(&b, 512);
	expect_refused("dup-tensor", &b, FL_EFORMAT, "duplicate tensor name 'w'");
	buf_fini(&b);
	b_hdr(&b, 3, 2, 0);
	b_tensor(&b, "a", 2, ne2, GTYPE_F32, 224);
	b_tensor(&b, "b", 2, ne2, GTYPE_F32, 0);
	b_pad(&b, 32);
	b_zeros(&b, 512);
	expect_refused("overlap", &b, FL_EFORMAT, "overlap");
	buf_fini(&b);
	/* tensors in any order, not overlapping, are fine; zero-size tensors
	 * may share an offset */
	uint64_t ne0[2] = {32, 0};
	b_hdr(&b, 3, 3, 0);
	b_tensor(&b, "a", 2, ne2, GTYPE_F32, 256);
	b_tensor(&b, "b", 2, ne2, GTYPE_F32, 0);
	b_tensor(&b, "z", 2, ne0, GTYPE_F32, 256);
	b_pad(&b, 32);
	b_zeros(&b, 512);
	g = expect_ok("unordered", &b);
	assert_int_equal(gguf_tensor_find(g, "z", &t), 0);
	assert_int_equal(t.size, 0);
	gguf_free(g);
	buf_fini(&b);

	/* tensor name: empty, NUL inside, too long for the reader */
	b_hdr(&b, 3, 1, 0);
	b_tensor(&b, "", 2, ne2, GTYPE_F32, 0);
	b_pad(&b, 32);
	b_zeros(&b, 256);
	expect_refused("tname-empty", &b, FL_EFORMAT, "tensor name");
	buf_fini(&b);
	b_hdr(&b, 3, 1, 0);
	b_u64(&b, GGUF_MAX_NAME_READ + 1);
	b_zeros(&b, GGUF_MAX_NAME_READ + 1 + 64);
	expect_refused("tname-long", &b, FL_EFORMAT, "limit");
	buf_fini(&b);
	/* infos cut in the middle of the dims */
	b_hdr(&b, 3, 1, 0);
	b_str(&b, "w");
	b_u32(&b, 4);
	b_u64(&b, 32);
	b_zeros(&b, 20);
	expect_refused("dims-cut", &b, FL_EFORMAT, "truncated");
	buf_fini(&b);
}

/* Random corruption of a valid file: never a crash (ASan/UBSan watch). */
static void test_random_corruption(void **state)
{
	(void)state;
	uint8_t *tdata[NT];
	gguf_writer *w = make_writer(0, tdata);
	uint8_t *mem;
	size_t n;
	assert_int_equal(gguf_writer_serialize(w, &mem, &n), 0);
	uint8_t *cp = malloc(n);
	uint64_t rng = 99;
	int accepted = 0, refused = 0;
	for (int it = 0; it < 3000; it++) {
		memcpy(cp, mem, n);
		int flips = 1 + (int)(tu_rand(&rng) % 4);
		for (int f = 0; f < flips; f++) {
			size_t at = (size_t)(tu_rand(&rng) % 600); /* header region */
			if (at < n)
				cp[at] = (uint8_t)tu_rand(&rng);
		}
		gguf *g = NULL;
		char err[256];
		if (gguf_open_mem(cp, n, &g, err, sizeof err) == 0) {
			accepted++;
			/* everything the reader hands out stays inside the buffer */
			for (size_t i = 0; i < gguf_tensor_count(g); i++) {
				gguf_tensor t;
				assert_int_equal(gguf_tensor_at(g, i, &t), 0);
				assert_true((const uint8_t *)t.data >= cp);
				assert_true((const uint8_t *)t.data + t.size <= cp + n);
			}
			gguf_free(g);
		} else {
			refused++;
		}
	}
	print_message("random corruption: %d accepted, %d refused\n", accepted, refused);
	assert_true(refused > 0 && accepted > 0);
	free(cp);
	free(mem);
	gguf_writer_free(w);
	for (size_t i = 0; i < NT; i++)
		free(tdata[i]);
}

/* ---- real files ---- */

static void test_vocab_files(void **state)
{
	(void)state;
	const char *spm = tu_shared_data("vocab/ggml-vocab-llama-spm.gguf");
	if (!spm) {
		skip();
		return;
	}
	gguf *g = NULL;
	char err[256];
	assert_int_equal(gguf_open(spm, &g, err, sizeof err), 0);
	assert_int_equal(gguf_version(g), 3);
	assert_int_equal(gguf_tensor_count(g), 0);
	assert_int_equal(gguf_kv_count(g), 22);
	gguf_str s;
	assert_int_equal(gguf_get_str(g, "tokenizer.ggml.model", &s), 0);
	assert_true(s.n == 5 && memcmp(s.p, "llama", 5) == 0);
	uint32_t u;
	assert_int_equal(gguf_get_u32(g, "llama.context_length", &u), 0);
	assert_int_equal(u, 4096);
	int64_t i64;
	assert_int_equal(gguf_get_int(g, "tokenizer.ggml.bos_token_id", &i64), 0);
	assert_int_equal(i64, 1);
	int b;
	assert_int_equal(gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
	assert_int_equal(b, 1);
	const gguf_str *toks;
	size_t n;
	assert_int_equal(gguf_get_arr_strs(g, "tokenizer.ggml.tokens", &toks, &n), 0);
	assert_int_equal(n, 32000);
	assert_true(toks[1].n == 3 && memcmp(toks[1].p, "<s>", 3) == 0);
	assert_true(toks[3].n == 6 && memcmp(toks[3].p, "<0x00>", 6) == 0);
	float *scores = malloc(n * sizeof *scores);
	assert_int_equal(gguf_get_arr_f32(g, "tokenizer.ggml.scores", scores, n), 0);
	/* SentencePiece scores: 0 for specials/bytes, then decreasing */
	assert_true(scores[0] == 0.0f && scores[300] > scores[20000]);
	free(scores);
	int64_t *tt = malloc(n * sizeof *tt);
	assert_int_equal(gguf_get_arr_i64(g, "tokenizer.ggml.token_type", tt, n), 0);
	assert_int_equal(tt[0], 2); /* unknown */
	assert_int_equal(tt[1], 3); /* control */
	assert_int_equal(tt[3], 6); /* byte */
	assert_int_equal(tt[1000], 1);
	free(tt);

	/* copy the vocabulary into a new file and read it back */
	gguf_writer *w = gguf_writer_new();
	for (size_t i = 0; i < gguf_kv_count(g); i++)
		if (strncmp(gguf_kv_key(g, i), "tokenizer.", 10) == 0)
			assert_int_equal(gguf_set_copy(w, g, gguf_kv_key(g, i)), 0);
	assert_int_equal(gguf_set_copy(w, g, "nope"), FL_ENOENT);
	uint8_t *mem;
	size_t mn;
	assert_int_equal(gguf_writer_serialize(w, &mem, &mn), 0);
	gguf *h = NULL;
	assert_int_equal(gguf_open_mem(mem, mn, &h, err, sizeof err), 0);
	assert_int_equal(gguf_kv_count(h), 10);
	const gguf_str *toks2;
	size_t n2;
	assert_int_equal(gguf_get_arr_strs(h, "tokenizer.ggml.tokens", &toks2, &n2), 0);
	assert_int_equal(n2, 32000);
	for (size_t i = 0; i < n2; i++)
		assert_true(toks2[i].n == toks[i].n &&
		            memcmp(toks2[i].p, toks[i].p, toks[i].n) == 0);
	const void *r1, *r2;
	size_t k1, k2;
	assert_int_equal(gguf_get_arr_data(g, "tokenizer.ggml.scores", GGUF_F32, &r1, &k1), 0);
	assert_int_equal(gguf_get_arr_data(h, "tokenizer.ggml.scores", GGUF_F32, &r2, &k2), 0);
	assert_int_equal(k1, k2);
	assert_memory_equal(r1, r2, 4 * k1);
	gguf_free(h);
	free(mem);
	gguf_writer_free(w);
	gguf_free(g);

	const char *gpt2 = tu_shared_data("vocab/ggml-vocab-gpt-2.gguf");
	assert_non_null(gpt2);
	assert_int_equal(gguf_open(gpt2, &g, err, sizeof err), 0);
	assert_int_equal(gguf_get_str(g, "tokenizer.ggml.pre", &s), 0);
	assert_true(s.n == 5 && memcmp(s.p, "gpt-2", 5) == 0);
	assert_int_equal(gguf_get_arr_strs(g, "tokenizer.ggml.merges", &toks, &n), 0);
	assert_int_equal(n, 50000);
	assert_true(toks[0].n == 4 && memcmp(toks[0].p, "\xc4\xa0 t", 4) == 0);
	assert_int_equal(gguf_get_arr_strs(g, "tokenizer.ggml.tokens", &toks, &n), 0);
	assert_int_equal(n, 50257);
	gguf_free(g);

	/* a missing file */
	assert_int_equal(gguf_open("/nonexistent/x.gguf", &g, err, sizeof err), FL_ENOENT);
	assert_string_equal(err, "no such file"); /* the caller names the path */
	/* a directory */
	assert_int_equal(gguf_open("/tmp", &g, err, sizeof err), FL_EIO);
	assert_string_equal(err, "is a directory");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip),         cmocka_unit_test(test_writer_misc),
	    cmocka_unit_test(test_writer_refusals),   cmocka_unit_test(test_bad_headers),
	    cmocka_unit_test(test_bad_metadata),      cmocka_unit_test(test_bad_tensors),
	    cmocka_unit_test(test_random_corruption), cmocka_unit_test(test_vocab_files),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
