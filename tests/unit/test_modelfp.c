/* modelfp: the base-model fingerprint against an independent computation of
 * its definition, order independence, sensitivity, and the cache. */
#include "testutil.h"

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "log.h"
#include "modelfp.h"
#include "sha.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utime.h>

static float wa[64], wb[32];

/* Writes a two-tensor GGUF; `swap` adds them in the other order. */
static void write_model(const char *path, int swap, const char *arch, const char *name, float poke)
{
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	assert_int_equal(gguf_set_str(w, "general.architecture", arch), 0);
	assert_int_equal(gguf_set_str(w, "general.name", name), 0);
	for (int i = 0; i < 64; i++)
		wa[i] = (float)i * 0.25f - 3.0f;
	for (int i = 0; i < 32; i++)
		wb[i] = (float)(i * i) * 0.01f;
	wb[5] += poke;
	uint64_t nea[2] = {32, 2}, neb[1] = {32};
	if (!swap) {
		assert_int_equal(
		    gguf_add_tensor(w, "blk.0.attn_q.weight", GTYPE_F32, 2, nea, wa, sizeof wa), 0);
		assert_int_equal(
		    gguf_add_tensor(w, "blk.0.attn_norm.weight", GTYPE_F32, 1, neb, wb, sizeof wb),
		    0);
	} else {
		assert_int_equal(
		    gguf_add_tensor(w, "blk.0.attn_norm.weight", GTYPE_F32, 1, neb, wb, sizeof wb),
		    0);
		assert_int_equal(
		    gguf_add_tensor(w, "blk.0.attn_q.weight", GTYPE_F32, 2, nea, wa, sizeof wa), 0);
	}
	assert_int_equal(gguf_writer_write(w, path), 0);
	gguf_writer_free(w);
}

static void put64(buf *b, uint64_t v)
{
	assert_int_equal(buf_put_u64le(b, v), 0);
}

/* The definition in modelfp.h, spelled out byte by byte. */
static void reference(const char *arch, uint8_t out[32])
{
	buf b;
	buf_init(&b, 0);
	const char *magic = "fedlora-base-model-v1\n";
	assert_int_equal(buf_append(&b, magic, strlen(magic)), 0);
	put64(&b, strlen(arch));
	assert_int_equal(buf_append(&b, arch, strlen(arch)), 0);
	put64(&b, 2);
	/* "blk.0.attn_norm.weight" < "blk.0.attn_q.weight" ('n' < 'q') */
	const char *n1 = "blk.0.attn_norm.weight", *n2 = "blk.0.attn_q.weight";
	put64(&b, strlen(n1));
	assert_int_equal(buf_append(&b, n1, strlen(n1)), 0);
	assert_int_equal(buf_put_u32le(&b, GTYPE_F32), 0);
	assert_int_equal(buf_put_u32le(&b, 1), 0);
	put64(&b, 32);
	put64(&b, sizeof wb);
	assert_int_equal(buf_append(&b, wb, sizeof wb), 0);
	put64(&b, strlen(n2));
	assert_int_equal(buf_append(&b, n2, strlen(n2)), 0);
	assert_int_equal(buf_put_u32le(&b, GTYPE_F32), 0);
	assert_int_equal(buf_put_u32le(&b, 2), 0);
	put64(&b, 32);
	put64(&b, 2);
	put64(&b, sizeof wa);
	assert_int_equal(buf_append(&b, wa, sizeof wa), 0);
	assert_int_equal(sha256(b.data, b.len, out), 0);
	buf_fini(&b);
}

static void test_definition_and_sensitivity(void **state)
{
	(void)state;
	char *d = tu_mkdtemp();
	char p1[512], p2[512], p3[512], p4[512];
	snprintf(p1, sizeof p1, "%s/a.gguf", d);
	snprintf(p2, sizeof p2, "%s/b.gguf", d);
	snprintf(p3, sizeof p3, "%s/c.gguf", d);
	snprintf(p4, sizeof p4, "%s/e.gguf", d);
	write_model(p1, 0, "llama", "one", 0);
	uint8_t ref[32], f1[32], f2[32], f3[32], f4[32];
	reference("llama", ref);
	assert_int_equal(mfp_compute(p1, f1), 0);
	assert_memory_equal(f1, ref, 32);
	/* other tensor order and another general.name: same model */
	write_model(p2, 1, "llama", "two", 0);
	assert_int_equal(mfp_compute(p2, f2), 0);
	assert_memory_equal(f2, ref, 32);
	/* one weight changed by a tiny amount: different */
	write_model(p3, 0, "llama", "one", 1e-6f);
	assert_int_equal(mfp_compute(p3, f3), 0);
	assert_memory_not_equal(f3, ref, 32);
	/* other architecture: different */
	write_model(p4, 0, "qwen2", "one", 0);
	assert_int_equal(mfp_compute(p4, f4), 0);
	assert_memory_not_equal(f4, ref, 32);
	/* not a GGUF: an error, not a crash */
	char junk[512];
	snprintf(junk, sizeof junk, "%s/junk.gguf", d);
	assert_int_equal(file_write_atomic(junk, "GGUFnope", 8), 0);
	assert_true(mfp_compute(junk, f4) < 0);
	assert_true(mfp_compute("/nonexistent/x.gguf", f4) < 0);
	tu_rmtree(d);
	free(d);
}

static void test_cache(void **state)
{
	(void)state;
	char *d = tu_mkdtemp();
	char p[512], c[512];
	snprintf(p, sizeof p, "%s/m.gguf", d);
	snprintf(c, sizeof c, "%s/fp.cache", d);
	write_model(p, 0, "llama", "one", 0);
	uint8_t ref[32], f[32];
	reference("llama", ref);
	assert_int_equal(mfp_compute_cached(p, c, f), 0);
	assert_memory_equal(f, ref, 32);
	assert_true(file_exists(c));
	/* a cache that claims another value for the same file is believed
	 * (that is what a cache is): prove it is read, then make it stale */
	uint8_t *txt = NULL;
	size_t len = 0;
	assert_int_equal(file_read_all(c, 4096, &txt, &len), 0);
	txt[len - 2] = txt[len - 2] == '0' ? '1' : '0';
	assert_int_equal(file_write_atomic(c, txt, len), 0);
	assert_int_equal(mfp_compute_cached(p, c, f), 0);
	assert_memory_not_equal(f, ref, 32);
	/* the model changes (new content, new mtime): recomputed */
	write_model(p, 0, "llama", "one", 0.5f);
	struct utimbuf ut = {1000000, 1000000};
	assert_int_equal(utime(p, &ut), 0);
	uint8_t want[32];
	assert_int_equal(mfp_compute(p, want), 0);
	assert_int_equal(mfp_compute_cached(p, c, f), 0);
	assert_memory_equal(f, want, 32);
	/* a garbage cache is recomputed */
	assert_int_equal(file_write_atomic(c, "garbage\n", 8), 0);
	assert_int_equal(mfp_compute_cached(p, c, f), 0);
	assert_memory_equal(f, want, 32);
	free(txt);
	tu_rmtree(d);
	free(d);
}

int main(void)
{
	log_set_level(LOG_LVL_OFF);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_definition_and_sensitivity),
	    cmocka_unit_test(test_cache),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
