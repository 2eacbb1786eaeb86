/* Unit tests for safetensors: round trips in F32/F16/BF16 with metadata,
 * the byte layout of the public spec checked by hand and (when python3 is
 * present) by an independent json/struct parser, atomic writes, and a long
 * list of corrupt or hostile files that must be refused with a reason. */
#include "testutil.h"

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "half.h"
#include "safetensors.h"
#include "sha.h"
#include "tensor.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char g_dir[256];

static int setup(void **state)
{
	(void)state;
	char *d = tu_mkdtemp();
	if (!d)
		return -1;
	snprintf(g_dir, sizeof g_dir, "%s", d);
	free(d);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(g_dir);
	return 0;
}

static const char *path_in(const char *name)
{
	static char p[512];
	snprintf(p, sizeof p, "%s/%s", g_dir, name);
	return p;
}

static tset *sample(void)
{
	tset *s = NULL;
	assert_int_equal(tset_new(&s), 0);
	uint64_t sa[2] = {4, 24}, sb[2] = {40, 4}, sc[1] = {3};
	tensor *t;
	uint64_t rs = 17;
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_a", 2, sa, NULL, &t), 0);
	for (size_t i = 0; i < t->n; i++)
		t->data[i] = (float)(tu_randu(&rs) * 2 - 1) * 0.1f;
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_b", 2, sb, NULL, &t), 0);
	for (size_t i = 0; i < t->n; i++)
		t->data[i] = (float)(tu_randu(&rs) * 2 - 1) * 1e-3f;
	assert_int_equal(tset_insert(s, "odd \"name\" \\ é", 1, sc, NULL, &t), 0);
	t->data[0] = 1e-7f, t->data[1] = -300.5f, t->data[2] = 6.0e4f;
	return s;
}

static uint8_t *slurp(const char *p, size_t *n)
{
	uint8_t *b = NULL;
	assert_int_equal(file_read_all(p, 1u << 26, &b, n), 0);
	return b;
}

static void test_roundtrip_f32(void **state)
{
	(void)state;
	tset *s = sample(), *back = NULL;
	uint8_t fp[32];
	char hex[65];
	tset_at(s, 2)->data[2] = 3.0e38f; /* f32 extremes survive */
	assert_int_equal(tset_fingerprint(s, fp), 0);
	hex_encode(fp, 32, hex);
	st_kv meta[] = {{ST_META_VERSION, "7"}, {ST_META_ROUND, "3"}, {ST_META_SHA256, hex}};
	const char *p = path_in("a.safetensors");
	assert_int_equal(st_write(p, s, ST_F32, meta, 3), 0);

	/* the spec's layout, by hand */
	size_t n;
	uint8_t *raw = slurp(p, &n);
	uint64_t hl = ld_u64le(raw);
	assert_true(hl + 8 <= n);
	assert_int_equal((8 + hl) % 8, 0);
	assert_int_equal(raw[8], '{');
	assert_int_equal(n - 8 - hl, (96 + 160 + 3) * 4);
	/* tensor data follows the header in insertion order, little-endian f32 */
	assert_memory_equal(raw + 8 + hl, tset_at(s, 0)->data, 96 * 4);
	free(raw);

	st_file *f = NULL;
	char why[256] = "";
	assert_int_equal(st_open(p, NULL, &f, why, sizeof why), 0);
	assert_int_equal(st_count(f), 3);
	assert_string_equal(st_meta(f, ST_META_VERSION), "7");
	assert_string_equal(st_meta(f, ST_META_ROUND), "3");
	assert_string_equal(st_meta(f, ST_META_SHA256), hex);
	assert_string_equal(st_meta(f, ST_META_FORMAT), "pt");
	assert_null(st_meta(f, "nope"));
	assert_int_equal(st_meta_count(f), 4);
	st_info in;
	assert_int_equal(st_get(f, 1, &in), 0);
	assert_string_equal(in.name, "blk.0.attn_q.lora_b");
	assert_int_equal(in.dtype, ST_F32);
	assert_int_equal(in.ndim, 2);
	assert_int_equal(in.shape[0], 40);
	assert_int_equal(in.nbytes, 640);
	size_t idx;
	assert_int_equal(st_find(f, "odd \"name\" \\ é", &idx), 0);
	assert_int_equal(idx, 2);
	assert_int_equal(st_find(f, "zzz", &idx), FL_ENOENT);
	assert_int_equal(st_to_tset(f, &back), 0);
	st_close(f);
	/* exact: same fingerprint, same order */
	uint8_t fp2[32];
	assert_int_equal(tset_fingerprint(back, fp2), 0);
	assert_memory_equal(fp, fp2, 32);
	for (size_t i = 0; i < 3; i++)
		assert_string_equal(tset_at(back, i)->name, tset_at(s, i)->name);
	tset_free(back);
	tset_free(s);
}

static void test_roundtrip_half(void **state)
{
	(void)state;
	tset *s = sample(), *back = NULL;
	const enum st_dtype dts[] = {ST_F16, ST_BF16};
	for (int k = 0; k < 2; k++) {
		const char *p = path_in("h.safetensors");
		assert_int_equal(st_write(p, s, dts[k], NULL, 0), 0);
		assert_int_equal(st_read_tset(p, NULL, &back), 0);
		assert_int_equal(tset_same_layout(s, back), 0);
		for (size_t i = 0; i < tset_count(s); i++) {
			const tensor *a = tset_at(s, i), *b = tset_at(back, i);
			for (size_t j = 0; j < a->n; j++) {
				float want = dts[k] == ST_F16
				                 ? half_to_f32(half_from_f32(a->data[j]))
				                 : bf16_to_f32(bf16_from_f32(a->data[j]));
				assert_memory_equal(&b->data[j], &want, 4);
			}
		}
		tset_free(back);
	}
	tset_free(s);
}

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		n += e->d_name[0] != '.';
	if (d)
		closedir(d);
	return n;
}

static void test_atomic_and_errors(void **state)
{
	(void)state;
	tset *s = sample();
	const char *p = path_in("atomic.safetensors");
	char keep[512];
	snprintf(keep, sizeof keep, "%s", p);
	assert_int_equal(st_write(keep, s, ST_F32, NULL, 0), 0);
	size_t n0, n1;
	uint8_t *before = slurp(keep, &n0);
	int entries = count_entries(g_dir);
	/* F16 overflow: refused, old file intact, no temp file left behind */
	tset_at(s, 2)->data[2] = 1e6f;
	assert_int_equal(st_write(keep, s, ST_F16, NULL, 0), FL_ENUMERIC);
	uint8_t *after = slurp(keep, &n1);
	assert_int_equal(n0, n1);
	assert_memory_equal(before, after, n0);
	assert_int_equal(count_entries(g_dir), entries);
	/* bad arguments */
	st_kv dup[] = {{"k", "1"}, {"k", "2"}};
	assert_int_equal(st_write(keep, s, ST_F32, dup, 2), FL_EINVAL);
	st_kv empty[] = {{"", "1"}};
	assert_int_equal(st_write(keep, s, ST_F32, empty, 1), FL_EINVAL);
	assert_int_equal(st_write(keep, s, ST_I32, NULL, 0), FL_EINVAL);
	/* an explicit format is kept, not duplicated */
	st_kv fmt[] = {{"format", "np"}, {"x", "line\nbreak\x01"}};
	assert_int_equal(st_write(keep, s, ST_F32, fmt, 2), 0);
	st_file *f = NULL;
	assert_int_equal(st_open(keep, NULL, &f, NULL, 0), 0);
	assert_string_equal(st_meta(f, "format"), "np");
	assert_string_equal(st_meta(f, "x"), "line\nbreak\x01");
	assert_int_equal(st_meta_count(f), 2);
	st_close(f);
	/* empty set */
	tset *e = NULL;
	assert_int_equal(tset_new(&e), 0);
	assert_int_equal(st_write(keep, e, ST_F32, NULL, 0), 0);
	tset *back = NULL;
	assert_int_equal(st_read_tset(keep, NULL, &back), 0);
	assert_int_equal(tset_count(back), 0);
	tset_free(back);
	tset_free(e);
	/* missing file */
	char why[200] = "";
	assert_int_equal(st_open(path_in("missing"), NULL, &f, why, sizeof why), FL_ENOENT);
	assert_true(why[0] != 0);
	free(before);
	free(after);
	tset_free(s);
}

/* Writes the 8-byte length hdr_len (strlen(hdr) when 0), the header, with
 * pad: spaces up to hdr_len, and data_len bytes of data. */
static const char *raw_file_p(const char *hdr, uint64_t hdr_len, int pad, size_t data_len)
{
	const char *p = path_in("raw.safetensors");
	size_t hl = strlen(hdr);
	if (hdr_len == 0)
		hdr_len = hl;
	buf b;
	buf_init(&b, 0);
	assert_int_equal(buf_put_u64le(&b, hdr_len), 0);
	assert_int_equal(buf_append(&b, hdr, hl), 0);
	for (uint64_t i = hl; pad && i < hdr_len; i++)
		assert_int_equal(buf_put_u8(&b, ' '), 0);
	for (size_t i = 0; i < data_len; i++)
		assert_int_equal(buf_put_u8(&b, (uint8_t)i), 0);
	assert_int_equal(file_write_atomic(p, b.data, b.len), 0);
	buf_fini(&b);
	return p;
}

static const char *raw_file(const char *hdr, uint64_t hdr_len, size_t data_len)
{
	return raw_file_p(hdr, hdr_len, 0, data_len);
}

typedef struct bad_case {
	const char *what;
	const char *hdr;
	uint64_t hdr_len; /* 0: strlen(hdr) */
	size_t data_len;
	int rc;
	const char *word; /* must appear in the reason */
} bad_case;

#define T1(s, e) "{\"a\":{\"dtype\":\"F32\",\"shape\":" s ",\"data_offsets\":" e "}}"

static const bad_case bad_cases[] = {
    {"header length past EOF", "{}", 1000, 0, FL_EFORMAT, "runs past the end"},
    {"no opening brace", "[1,2] ", 0, 0, FL_EFORMAT, "does not start with '{'"},
    {"truncated JSON", "{\"a\":", 0, 0, FL_EFORMAT, "not valid JSON"},
    {"trailing bytes", "{}xyz", 0, 0, FL_EFORMAT, "trailing bytes"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
     FL_EUNSUPPORTED, "unknown dtype"},
    {"negative dim", T1("[-1]", "[0,4]"), 0, 4, FL_EFORMAT, "not a non-negative integer"},
    {"fractional dim", T1("[1.5]", "[0,4]"), 0, 4, FL_EFORMAT, "not a non-negative integer"},
    {"string dim", T1("[\"2\"]", "[0,8]"), 0, 8, FL_EFORMAT, "not a non-negative integer"},
    {"size mismatch", T1("[2]", "[0,4]"), 0, 4, FL_EFORMAT, "need 8"},
    {"offsets past buffer", T1("[2]", "[0,8]"), 0, 4, FL_EFORMAT, "outside"},
    {"begin after end", T1("[0]", "[8,0]"), 0, 8, FL_EFORMAT, "outside"},
    {"three offsets", T1("[1]", "[0,4,4]"), 0, 4, FL_EFORMAT, "pair"},
    {"overlap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     0, 12, FL_EFORMAT, "overlaps"},
    {"gap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     0, 12, FL_EFORMAT, "gap"},
    {"bytes after last tensor", T1("[1]", "[0,4]"), 0, 12, FL_EFORMAT, "after the last tensor"},
    {"duplicate name",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     0, 8, FL_EFORMAT, "appears twice"},
    {"shape overflow", T1("[4294967296,4294967296,4294967296]", "[0,4]"), 0, 4, FL_EOVERFLOW,
     "overflows"},
    {"shape over cap", T1("[65536,65536]", "[0,4]"), 0, 4, FL_ETOOBIG, "exceed the cap"},
    {"metadata not string", "{\"__metadata__\":{\"v\":1}}", 0, 0, FL_EFORMAT, "not a string"},
    {"metadata not object", "{\"__metadata__\":[1]}", 0, 0, FL_EFORMAT, "not an object"},
    {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, FL_EFORMAT,
     "appears twice"},
    {"escaped NUL in name",
     "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, FL_EFORMAT,
     "escaped NUL"},
    {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 0, FL_EFORMAT,
     "missing data_offsets"},
    {"unexpected key", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
     0, 4, FL_EFORMAT, "unexpected key"},
    {"key twice",
     "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
     FL_EFORMAT, "appears twice"},
    {"nine dims", T1("[1,1,1,1,1,1,1,1,1]", "[0,4]"), 0, 4, FL_EUNSUPPORTED, "more than 8"},
    {"entry not object", "{\"a\":[1]}", 0, 0, FL_EFORMAT, "not an object"},
    {"control char in name", "{\"a\\nb\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     0, 4, FL_EFORMAT, "control"},
    {"empty name", "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
     FL_EFORMAT, "empty"},
    {"huge offset", T1("[1]", "[1e300,1e300]"), 0, 4, FL_EFORMAT, "pair"},
};

static void test_bad_files(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
		const bad_case *c = &bad_cases[i];
		const char *p = raw_file(c->hdr, c->hdr_len, c->data_len);
		st_file *f = NULL;
		char why[256] = "";
		int rc = st_open(p, NULL, &f, why, sizeof why);
		if (rc != c->rc || !strstr(why, c->word))
			fail_msg("%s: want %s '%s', got %s '%s'", c->what, fl_errname(c->rc),
			         c->word, fl_errname(rc), why);
		assert_null(f);
	}
	/* files shorter than the length field, the cap, a NUL byte */
	const char *p = path_in("short.safetensors");
	assert_int_equal(file_write_atomic(p, "\x02\0\0", 3), 0);
	st_file *f = NULL;
	char why[256] = "";
	assert_int_equal(st_open(p, NULL, &f, why, sizeof why), FL_EFORMAT);
	assert_non_null(strstr(why, "shorter than"));
	assert_int_equal(file_write_atomic(p, "", 0), 0);
	assert_int_equal(st_open(p, NULL, &f, why, sizeof why), FL_EFORMAT);
	st_limits lim = {.max_header = 16};
	p = raw_file(T1("[1]", "[0,4]"), 0, 4);
	assert_int_equal(st_open(p, &lim, &f, why, sizeof why), FL_ETOOBIG);
	assert_non_null(strstr(why, "exceeds the cap"));
	lim = (st_limits){.max_tensors = 1};
	p = raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
	             "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
	             0, 8);
	assert_int_equal(st_open(p, &lim, &f, why, sizeof why), FL_ETOOBIG);
	assert_non_null(strstr(why, "more than 1 tensors"));
	uint8_t nul[8 + 4] = {4, 0, 0, 0, 0, 0, 0, 0, '{', 0, '}', ' '};
	assert_int_equal(st_parse(nul, sizeof nul, NULL, &f, why, sizeof why), FL_EFORMAT);
	assert_non_null(strstr(why, "NUL byte"));
}

/* Valid but unusual files are accepted: padding, empty tensors, zero-size
 * tensors, other dtypes (listed, not loadable as f32). */
static void test_unusual_valid(void **state)
{
	(void)state;
	st_file *f = NULL;
	char why[256] = "";
	const char *p =
	    raw_file_p("{\"__metadata__\":null,"
	               "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
	               "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
	               "\"s\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[4,6]}}",
	               200, 1, 6);
	assert_int_equal(st_open(p, NULL, &f, why, sizeof why), 0);
	assert_int_equal(st_count(f), 3);
	tset *s = NULL;
	assert_int_equal(st_to_tset(f, &s), 0);
	assert_int_equal(tset_find(s, "e")->n, 0);
	assert_int_equal(tset_find(s, "s")->ndim, 0);
	/* bytes 0,1,2,3 -> bf16 0x0100, 0x0302 */
	assert_true(tset_find(s, "a")->data[0] == bf16_to_f32(0x0100));
	assert_true(tset_find(s, "s")->data[0] == half_to_f32(0x0504));
	tset_free(s);
	st_close(f);
	p = raw_file("{\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4);
	assert_int_equal(st_open(p, NULL, &f, why, sizeof why), 0);
	st_info in;
	assert_int_equal(st_get(f, 0, &in), 0);
	assert_int_equal(in.dtype, ST_I32);
	assert_string_equal(st_dtype_name(in.dtype), "I32");
	assert_int_equal(st_to_tset(f, &s), FL_EUNSUPPORTED);
	st_close(f);
}

/* An independent reader: Python's json + struct, following the public
 * spec. It prints one line per tensor (name, dtype, shape, sha256 of the
 * bytes, sum of the values) and the metadata; we compare with ours. */
static const char *PY =
    "import json, struct, sys, hashlib\n"
    "b = open(sys.argv[1], 'rb').read()\n"
    "n = struct.unpack('<Q', b[:8])[0]\n"
    "h = b[8:8 + n]\n"
    "assert h[:1] == b'{', 'header must start with {'\n"
    "assert (8 + n) % 8 == 0, 'data not 8-aligned'\n"
    "t = h.decode('utf-8')\n"
    "body = t.rstrip(' ')\n"
    "def nodup(pairs):\n"
    "    ks = [k for k, _ in pairs]\n"
    "    assert len(ks) == len(set(ks)), 'duplicate key'\n"
    "    return dict(pairs)\n"
    "hdr = json.loads(body, object_pairs_hook=nodup)\n"
    "meta = hdr.pop('__metadata__', {}) or {}\n"
    "assert all(isinstance(v, str) for v in meta.values())\n"
    "data = b[8 + n:]\n"
    "size = {'F32': 4, 'F16': 2, 'BF16': 2}\n"
    "spans, out = [], []\n"
    "for name, info in hdr.items():\n"
    "    assert set(info) == {'dtype', 'shape', 'data_offsets'}\n"
    "    s, e = info['data_offsets']\n"
    "    k = 1\n"
    "    for d in info['shape']: k *= d\n"
    "    assert e - s == k * size[info['dtype']], 'size'\n"
    "    spans.append((s, e))\n"
    "    raw = data[s:e]\n"
    "    if info['dtype'] == 'F32': v = struct.unpack('<%df' % k, raw)\n"
    "    elif info['dtype'] == 'F16': v = struct.unpack('<%de' % k, raw)\n"
    "    else: v = [struct.unpack('<f', b'\\0\\0' + raw[2*i:2*i+2])[0] for i in range(k)]\n"
    "    acc = 0.0\n"
    "    for x in v: acc += x\n"
    "    out.append('%s|%s|%s|%s|%.17g' % (name, info['dtype'], 'x'.join(map(str, "
    "info['shape'])), hashlib.sha256(raw).hexdigest(), acc))\n"
    "spans.sort()\n"
    "pos = 0\n"
    "for s, e in spans:\n"
    "    assert s == pos, 'gap or overlap'\n"
    "    pos = e\n"
    "assert pos == len(data), 'trailing bytes'\n"
    "for k in sorted(meta): out.append('meta|%s|%s' % (k, meta[k]))\n"
    "sys.stdout.buffer.write(('\\n'.join(out) + '\\n').encode('utf-8'))\n";

static void test_python_reader(void **state)
{
	(void)state;
	if (tu_system("python3 -c 'import json, struct, hashlib' >/dev/null 2>&1") != 0) {
		print_message("python3 not available: independent reader check skipped\n");
		skip();
	}
	char script[512], outp[512];
	snprintf(script, sizeof script, "%s", path_in("reader.py"));
	snprintf(outp, sizeof outp, "%s", path_in("reader.out"));
	assert_int_equal(file_write_atomic(script, PY, strlen(PY)), 0);
	tset *s = sample();
	st_kv meta[] = {{ST_META_ROUND, "12"}, {ST_META_VERSION, "5"}};
	const enum st_dtype dts[] = {ST_F32, ST_F16, ST_BF16};
	for (int k = 0; k < 3; k++) {
		char fpath[512];
		snprintf(fpath, sizeof fpath, "%s", path_in("py.safetensors"));
		assert_int_equal(st_write(fpath, s, dts[k], meta, 2), 0);
		assert_int_equal(tu_system("python3 '%s' '%s' > '%s'", script, fpath, outp), 0);
		/* expected lines from our own reader */
		st_file *f = NULL;
		assert_int_equal(st_open(fpath, NULL, &f, NULL, 0), 0);
		tset *back = NULL;
		assert_int_equal(st_to_tset(f, &back), 0);
		buf want;
		buf_init(&want, 0);
		for (size_t i = 0; i < st_count(f); i++) {
			st_info in;
			assert_int_equal(st_get(f, i, &in), 0);
			uint8_t h[32];
			char hex[65], line[600];
			assert_int_equal(sha256(in.data, in.nbytes, h), 0);
			hex_encode(h, 32, hex);
			double acc = 0;
			const tensor *t = tset_find(back, in.name);
			for (size_t j = 0; j < t->n; j++)
				acc += t->data[j];
			int len = snprintf(line, sizeof line, "%s|%s|%llux%llu|%s|%.17g\n", in.name,
			                   st_dtype_name(in.dtype), (unsigned long long)in.shape[0],
			                   (unsigned long long)in.shape[1], hex, acc);
			if (in.ndim == 1)
				len = snprintf(line, sizeof line, "%s|%s|%llu|%s|%.17g\n", in.name,
				               st_dtype_name(in.dtype),
				               (unsigned long long)in.shape[0], hex, acc);
			assert_int_equal(buf_append(&want, line, (size_t)len), 0);
		}
		const char *tail =
		    "meta|fedlora.round|12\nmeta|fedlora.version|5\nmeta|format|pt\n";
		assert_int_equal(buf_append(&want, tail, strlen(tail)), 0);
		size_t n;
		uint8_t *got = slurp(outp, &n);
		if (n != want.len || memcmp(got, want.data, n) != 0)
			fail_msg("python reader disagrees (%s):\n--- python\n%s--- ours\n%.*s",
			         st_dtype_name(dts[k]), (char *)got, (int)want.len,
			         (char *)want.data);
		free(got);
		buf_fini(&want);
		tset_free(back);
		st_close(f);
	}
	tset_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip_f32),     cmocka_unit_test(test_roundtrip_half),
	    cmocka_unit_test(test_atomic_and_errors), cmocka_unit_test(test_bad_files),
	    cmocka_unit_test(test_unusual_valid),     cmocka_unit_test(test_python_reader),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
