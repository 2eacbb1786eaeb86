/* node/state: what survives a restart, and nothing damaged, half-written or
 * foreign is read back as valid. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "log.h"
#include "safetensors.h"
#include "sha.h"
#include "state.h"
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint8_t base_fp[32], shape_fp[32];

static tset *adapter(uint64_t seed)
{
	tset *t = NULL;
	uint64_t sa[2] = {4, 16}, sb[2] = {16, 4};
	assert_int_equal(tset_new(&t), 0);
	assert_int_equal(tset_insert(t, "blk.0.attn_q.lora_a", 2, sa, NULL, NULL), 0);
	assert_int_equal(tset_insert(t, "blk.0.attn_q.lora_b", 2, sb, NULL, NULL), 0);
	for (size_t i = 0; i < tset_count(t); i++) {
		tensor *x = tset_at(t, i);
		for (size_t k = 0; k < x->n; k++)
			x->data[k] = (float)(tu_randu(&seed) - 0.5);
	}
	return t;
}

static const char *p(const char *dir, const char *name)
{
	static char b[4][4096];
	static int i;
	char *o = b[i++ % 4];
	snprintf(o, 4096, "%s/%s", dir, name);
	return o;
}

static void setup_fps(void)
{
	tset *t = adapter(1);
	assert_int_equal(tset_shape_fingerprint(t, shape_fp), 0);
	tset_free(t);
	for (int i = 0; i < 32; i++)
		base_fp[i] = (uint8_t)(i * 3);
}

static void test_roundtrip(void **state)
{
	(void)state;
	setup_fps();
	char *d = tu_mkdtemp();
	nst *s = NULL;
	assert_int_equal(nst_open(d, base_fp, shape_fp, &s), 0);
	assert_null(nst_global(s));
	assert_null(nst_residual(s));
	assert_true(isnan(nst_counters_get(s)->eval_loss));
	tset *g = adapter(5);
	uint8_t sha[32], bad[32];
	assert_int_equal(tset_fingerprint(g, sha), 0);
	memcpy(bad, sha, 32);
	bad[0] ^= 1;
	tset *g2 = NULL;
	assert_int_equal(tset_clone(g, &g2), 0);
	/* a wrong hash is refused (and the set freed) */
	assert_int_equal(nst_set_global(s, 3, g2, bad), FL_EMISMATCH);
	assert_null(nst_global(s));
	assert_int_equal(nst_set_global(s, 3, g, sha), 0);
	tset *r = adapter(6);
	uint8_t rsha[32];
	assert_int_equal(tset_fingerprint(r, rsha), 0);
	assert_int_equal(nst_commit_residual(s, r, 9), 0);
	nst_counters *k = nst_counters_mut(s);
	k->updates_accepted = 4;
	k->last_round_uploaded = 9;
	k->eval_version = 3;
	k->eval_loss = 1.25;
	assert_int_equal(nst_save(s), 0);
	assert_int_equal(nst_append_metrics(s, "{\"a\":1}", 7), 0);
	assert_int_equal(nst_append_metrics(s, "{\"a\":2}", 7), 0);
	nst_free(s);

	assert_int_equal(nst_open(d, base_fp, shape_fp, &s), 0);
	assert_int_equal(nst_version(s), 3);
	assert_memory_equal(nst_version_sha(s), sha, 32);
	uint8_t got[32];
	assert_int_equal(tset_fingerprint(nst_residual(s), got), 0);
	assert_memory_equal(got, rsha, 32);
	assert_int_equal(nst_residual_round(s), 9);
	assert_int_equal(nst_counters_get(s)->updates_accepted, 4);
	assert_int_equal(nst_counters_get(s)->last_round_uploaded, 9);
	assert_true(nst_counters_get(s)->eval_loss == 1.25);
	nst_free(s);
	uint8_t *txt = NULL;
	size_t n = 0;
	assert_int_equal(file_read_all(p(d, "metrics.jsonl"), 4096, &txt, &n), 0);
	assert_string_equal((char *)txt, "{\"a\":1}\n{\"a\":2}\n");
	free(txt);
	tu_rmtree(d);
	free(d);
}

/* Writes a valid state, then damages one file in the given way; the
 * reopened state must ignore exactly that file. */
static void damaged(const char *what)
{
	setup_fps();
	char *d = tu_mkdtemp();
	nst *s = NULL;
	assert_int_equal(nst_open(d, base_fp, shape_fp, &s), 0);
	tset *g = adapter(5), *r = adapter(6);
	uint8_t sha[32];
	assert_int_equal(tset_fingerprint(g, sha), 0);
	assert_int_equal(nst_set_global(s, 2, g, sha), 0);
	assert_int_equal(nst_commit_residual(s, r, 2), 0);
	nst_counters_mut(s)->updates_accepted = 7;
	assert_int_equal(nst_save(s), 0);
	nst_free(s);
	uint8_t *t = NULL;
	size_t n = 0;
	if (strcmp(what, "global-bitflip") == 0 || strcmp(what, "global-truncated") == 0) {
		assert_int_equal(file_read_all(p(d, "global.safetensors"), 1 << 20, &t, &n), 0);
		if (what[7] == 'b')
			t[n - 5] ^= 0x40; /* a weight changes: its hash no longer matches */
		else
			n -= 9;
		assert_int_equal(file_write_atomic(p(d, "global.safetensors"), t, n), 0);
	} else if (strcmp(what, "global-meta") == 0) {
		/* a valid file whose recorded hash belongs to other content */
		tset *o = adapter(77);
		st_kv meta[2] = {{ST_META_VERSION, "2"}, {ST_META_SHA256, ""}};
		char hex[65];
		hex_encode(sha, 32, hex);
		meta[1].val = hex;
		assert_int_equal(st_write(p(d, "global.safetensors"), o, ST_F32, meta, 2), 0);
		tset_free(o);
	} else if (strcmp(what, "residual-garbage") == 0) {
		assert_int_equal(
		    file_write_atomic(p(d, "residual.safetensors"), "\x10\0\0\0junk", 8), 0);
	} else if (strcmp(what, "state-edited") == 0) {
		assert_int_equal(file_read_all(p(d, "node.state"), 1 << 20, &t, &n), 0);
		char *x = strstr((char *)t, "updates_accepted 7");
		assert_non_null(x);
		x[17] = '8';
		assert_int_equal(file_write_atomic(p(d, "node.state"), t, n), 0);
	} else if (strcmp(what, "state-truncated") == 0) {
		assert_int_equal(file_read_all(p(d, "node.state"), 1 << 20, &t, &n), 0);
		assert_int_equal(file_write_atomic(p(d, "node.state"), t, n / 2), 0);
	}
	free(t);
	assert_int_equal(nst_open(d, base_fp, shape_fp, &s), 0);
	int global_ok = strncmp(what, "global", 6) != 0;
	int resid_ok = strncmp(what, "residual", 8) != 0;
	int state_ok = strncmp(what, "state", 5) != 0;
	assert_int_equal(nst_global(s) != NULL, global_ok);
	assert_int_equal(nst_residual(s) != NULL, resid_ok);
	assert_int_equal(nst_counters_get(s)->updates_accepted, state_ok ? 7 : 0);
	nst_free(s);
	tu_rmtree(d);
	free(d);
}

/* dir NULL: the same state in memory, nothing written anywhere. */
static void test_in_memory(void **state)
{
	(void)state;
	setup_fps();
	nst *s = NULL;
	assert_int_equal(nst_open(NULL, base_fp, shape_fp, &s), 0);
	assert_null(nst_dir(s));
	assert_null(nst_global(s));
	tset *g = adapter(5), *g2 = NULL;
	uint8_t sha[32], bad[32];
	assert_int_equal(tset_fingerprint(g, sha), 0);
	memcpy(bad, sha, 32);
	bad[0] ^= 1;
	assert_int_equal(tset_clone(g, &g2), 0);
	assert_int_equal(nst_set_global(s, 2, g2, bad), FL_EMISMATCH); /* still checked */
	assert_int_equal(nst_set_global(s, 2, g, sha), 0);
	assert_int_equal(nst_version(s), 2);
	assert_memory_equal(nst_version_sha(s), sha, 32);
	tset *r = adapter(6);
	assert_int_equal(nst_commit_residual(s, r, 7), 0);
	assert_int_equal(nst_residual_round(s), 7);
	nst_counters_mut(s)->updates_accepted = 1;
	assert_int_equal(nst_save(s), 0);
	assert_int_equal(nst_append_metrics(s, "{}", 2), 0);
	assert_int_equal(nst_clear_global(s), 0);
	assert_null(nst_global(s));
	assert_int_equal(nst_counters_get(s)->updates_accepted, 1);
	nst_free(s);
}

static void test_damage(void **state)
{
	(void)state;
	const char *kinds[] = {"global-bitflip",   "global-truncated", "global-meta",
	                       "residual-garbage", "state-edited",     "state-truncated"};
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		print_message("damage: %s\n", kinds[i]);
		damaged(kinds[i]);
	}
}

static void test_foreign_state_discarded(void **state)
{
	(void)state;
	setup_fps();
	char *d = tu_mkdtemp();
	nst *s = NULL;
	assert_int_equal(nst_open(d, base_fp, shape_fp, &s), 0);
	tset *g = adapter(5), *r = adapter(6);
	uint8_t sha[32];
	assert_int_equal(tset_fingerprint(g, sha), 0);
	assert_int_equal(nst_set_global(s, 2, g, sha), 0);
	assert_int_equal(nst_commit_residual(s, r, 2), 0);
	nst_free(s);
	/* same directory, another base model: nothing of the old one is used */
	uint8_t other[32];
	memcpy(other, base_fp, 32);
	other[31] ^= 0xff;
	assert_int_equal(nst_open(d, other, shape_fp, &s), 0);
	assert_null(nst_global(s));
	assert_null(nst_residual(s));
	assert_false(file_exists(p(d, "global.safetensors")));
	nst_free(s);
	/* another adapter layout: the global is refused on its own too */
	assert_int_equal(nst_open(d, other, shape_fp, &s), 0);
	g = adapter(5);
	assert_int_equal(nst_set_global(s, 2, g, sha), 0);
	nst_free(s);
	uint8_t other_shape[32];
	memcpy(other_shape, shape_fp, 32);
	other_shape[0] ^= 1;
	assert_int_equal(nst_open(d, other, other_shape, &s), 0);
	assert_null(nst_global(s));
	nst_free(s);
	/* an unwritable place is an error, not a crash */
	assert_true(nst_open("/proc/fedlora-cannot-exist/x", base_fp, shape_fp, &s) < 0);
	tu_rmtree(d);
	free(d);
}

int main(void)
{
	log_set_level(LOG_LVL_OFF);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip),
	    cmocka_unit_test(test_in_memory),
	    cmocka_unit_test(test_damage),
	    cmocka_unit_test(test_foreign_state_discarded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
