/* hmap: SipHash-2-4 against the published test vectors (key 00..0f,
 * messages 00..n-1, from the SipHash paper's reference code), the pair hash
 * against the one-buffer hash at every split, and both tables against a
 * brute-force model through growth, deletion and duplicates. */
#include "testutil.h"

#include "buf.h"
#include "err.h"
#include "hmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SipHash-2-4 outputs for in = 00 01 .. (n-1), n = 0..19, and n = 63. */
static const uint64_t sip_vec[20] = {
    0x726fdb47dd0e0e31ull, 0x74f839c593dc67fdull, 0x0d6c8009d9a94f5aull, 0x85676696d7fb7e2dull,
    0xcf2794e0277187b7ull, 0x18765564cd99a68dull, 0xcbc9466e58fee3ceull, 0xab0200f58b01d137ull,
    0x93f5f5799a932462ull, 0x9e0082df0ba9e4b0ull, 0x7a5dbbc594ddb9f3ull, 0xf4b32f46226bada7ull,
    0x751e8fbc860ee5fbull, 0x14ea5627c0843d90ull, 0xf723ca908e7af2eeull, 0xa129ca6149be45e5ull,
    0x3f2acc7f57c29bdbull, 0x699ae9f52cbe4794ull, 0x4bc1b3f0968dd39cull, 0xbb6dc91da77961bdull,
};
static const uint64_t sip_vec63 = 0x958a324ceb064572ull;

static void set_paper_key(void)
{
	uint8_t k[16];
	for (int i = 0; i < 16; i++)
		k[i] = (uint8_t)i;
	hmap_test_set_key(ld_u64le(k), ld_u64le(k + 8));
}

static void test_siphash_vectors(void **st)
{
	(void)st;
	set_paper_key();
	uint8_t in[64];
	for (int i = 0; i < 64; i++)
		in[i] = (uint8_t)i;
	for (size_t n = 0; n < 20; n++)
		assert_true(hmap_hash(in, n) == sip_vec[n]);
	assert_true(hmap_hash(in, 63) == sip_vec63);
}

/* hmap_hash2(a, b) is defined as the hash of LE64(|a|) || a || b: checks the
 * piecewise feeding at every alignment, and that the split point counts. */
static void test_hash2_is_prefixed_concat(void **st)
{
	(void)st;
	set_paper_key();
	uint8_t in[40], cat[48];
	for (int i = 0; i < 40; i++)
		in[i] = (uint8_t)(i * 7 + 3);
	for (size_t total = 0; total <= 40; total++)
		for (size_t an = 0; an <= total; an++) {
			st_u64le(cat, an);
			memcpy(cat + 8, in, total);
			assert_true(hmap_hash2(in, an, in + an, total - an) ==
			            hmap_hash(cat, 8 + total));
		}
	assert_true(hmap_hash2("ab", 2, "c", 1) != hmap_hash2("a", 1, "bc", 2));
}

typedef struct item {
	char key[16];
	void *link;
	int val;
} item;

static void item_key(const void *it, const uint8_t **k, size_t *kn)
{
	const item *x = it;
	*k = (const uint8_t *)x->key;
	*kn = strlen(x->key);
}

static void test_hmap_model(void **st)
{
	(void)st;
	enum { N = 3000 };
	item *v = calloc(N, sizeof *v);
	assert_non_null(v);
	hmap m;
	hmap_init(&m, offsetof(item, link), item_key);
	assert_null(m.slots); /* init allocates nothing */
	assert_null(hmap_get(&m, "k1", 2));
	hmap_del(&m, &v[0]); /* not present, no table: a no-op */
	for (int i = 0; i < N; i++) {
		snprintf(v[i].key, sizeof v[i].key, "k%d", i);
		v[i].val = i;
		assert_int_equal(hmap_put(&m, &v[i]), 0);
	}
	assert_int_equal(hmap_count(&m), N);
	assert_true(m.nslots >= 64);
	/* delete every third, then check every key against the model */
	for (int i = 0; i < N; i += 3)
		hmap_del(&m, &v[i]);
	hmap_del(&m, &v[0]); /* twice: a no-op */
	assert_int_equal(hmap_count(&m), N - (N + 2) / 3);
	for (int i = 0; i < N; i++) {
		item *it = hmap_get(&m, v[i].key, strlen(v[i].key));
		if (i % 3 == 0)
			assert_null(it);
		else
			assert_ptr_equal(it, &v[i]);
	}
	/* keys are compared with their length: "k1" is not "k10" */
	assert_null(hmap_get(&m, "k", 1));
	hmap_fini(&m);
	assert_int_equal(hmap_count(&m), 0);
	free(v);
}

typedef struct names {
	char (*s)[16];
} names;

static int names_eq(const void *ctx, uint32_t i, const void *key)
{
	return strcmp(((const names *)ctx)->s[i], key) == 0;
}

static uint64_t names_hash(const void *ctx, uint32_t i)
{
	const char *s = ((const names *)ctx)->s[i];
	return hmap_hash(s, strlen(s));
}

static void test_hidx_model(void **st)
{
	(void)st;
	enum { N = 5000 };
	names nm = {calloc(N, sizeof *nm.s)};
	assert_non_null(nm.s);
	hidx h;
	hidx_init(&h);
	assert_null(h.slot);
	/* grown one entry at a time, as a tensor set does */
	for (uint32_t i = 0; i < N; i++) {
		snprintf(nm.s[i], sizeof nm.s[i], "t.%u", i % 4000); /* 1000 repeats */
		assert_int_equal(hidx_reserve(&h, i + 1, names_hash, &nm), 0);
		assert_true(h.cap >= 2 * (size_t)(i + 1));
		uint32_t *s =
		    hidx_slot(&h, hmap_hash(nm.s[i], strlen(nm.s[i])), names_eq, &nm, nm.s[i]);
		if (i < 4000) {
			assert_int_equal(*s, 0);
			hidx_fill(&h, s, i);
		} else {
			assert_int_equal(*s, i - 4000 + 1); /* the first one holds it */
		}
	}
	assert_int_equal(h.n, 4000);
	for (uint32_t i = 0; i < 4000; i++) {
		uint32_t *s =
		    hidx_slot(&h, hmap_hash(nm.s[i], strlen(nm.s[i])), names_eq, &nm, nm.s[i]);
		assert_int_equal(*s, i + 1);
	}
	assert_int_equal(*hidx_slot(&h, hmap_hash("t.x", 3), names_eq, &nm, "t.x"), 0);
	/* reserving less than present keeps the table */
	size_t cap = h.cap;
	assert_int_equal(hidx_reserve(&h, 10, names_hash, &nm), 0);
	assert_int_equal(h.cap, cap);
	assert_int_equal(hidx_reserve(&h, UINT32_MAX, names_hash, &nm), FL_ENOMEM);
	assert_int_equal(h.cap, cap);
	hidx_fini(&h);
	assert_null(h.slot);
	free(nm.s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_siphash_vectors),
	    cmocka_unit_test(test_hash2_is_prefixed_concat),
	    cmocka_unit_test(test_hmap_model),
	    cmocka_unit_test(test_hidx_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
