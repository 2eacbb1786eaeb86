/* Unit tests for tensor sets: insertion, lookup, element-wise operations
 * against double references, and both fingerprints against an independent
 * construction of the documented byte stream. */
#include "testutil.h"

#include "buf.h"
#include "err.h"
#include "sha.h"
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KNOWN_FULL  "ae5c708099b8408d183cfa03e3d33d48fd1e21c413e09ed7b87390ab3d336280"
#define KNOWN_SHAPE "0df767dee6545354bc986e39e44ddb33e478453d4a29713d78a488b3b448f9e4"

static tset *make(uint64_t seed, int reversed)
{
	static const char *names[] = {"blk.0.attn_q.lora_a", "blk.0.attn_q.lora_b",
	                              "blk.1.attn_q.lora_a", "blk.1.attn_q.lora_b", "blk.10.x"};
	static const uint64_t shapes[][2] = {{4, 24}, {40, 4}, {4, 24}, {40, 4}, {3, 5}};
	tset *s = NULL;
	assert_int_equal(tset_new(&s), 0);
	for (int k = 0; k < 5; k++) {
		int i = reversed ? 4 - k : k;
		tensor *t;
		assert_int_equal(tset_insert(s, names[i], 2, shapes[i], NULL, &t), 0);
		uint64_t rs = seed * 100 + (uint64_t)i; /* content independent of order */
		for (size_t j = 0; j < t->n; j++)
			t->data[j] = (float)(tu_randu(&rs) * 2 - 1);
	}
	return s;
}

static void test_insert_find(void **state)
{
	(void)state;
	tset *s = NULL;
	assert_int_equal(tset_new(&s), 0);
	uint64_t sh[2] = {2, 3};
	float init[6] = {1, 2, 3, 4, 5, 6};
	tensor *t = NULL;
	assert_int_equal(tset_insert(s, "a", 2, sh, init, &t), 0);
	assert_int_equal(t->n, 6);
	assert_memory_equal(t->data, init, sizeof init);
	assert_int_equal(((uintptr_t)t->data) % 64, 0);
	assert_int_equal(tset_insert(s, "a", 2, sh, NULL, NULL), FL_EMISMATCH);
	assert_int_equal(tset_insert(s, "", 2, sh, NULL, NULL), FL_EINVAL);
	assert_int_equal(tset_insert(s, "bad\nname", 2, sh, NULL, NULL), FL_EINVAL);
	assert_int_equal(tset_insert(s, "five", 5, sh, NULL, NULL), FL_EINVAL);
	char longname[300];
	memset(longname, 'x', sizeof longname);
	longname[299] = 0;
	assert_int_equal(tset_insert(s, longname, 2, sh, NULL, NULL), FL_EINVAL);
	uint64_t huge[2] = {1ull << 40, 1ull << 40};
	assert_int_equal(tset_insert(s, "huge", 2, huge, NULL, NULL), FL_ETOOBIG);
	/* scalar and empty tensors are allowed */
	assert_int_equal(tset_insert(s, "scalar", 0, NULL, NULL, &t), 0);
	assert_int_equal(t->n, 1);
	uint64_t z[1] = {0};
	assert_int_equal(tset_insert(s, "empty", 1, z, NULL, &t), 0);
	assert_int_equal(t->n, 0);
	/* many tensors: order stays, pointers stay, lookup works through rehashes */
	tensor *first = tset_find(s, "a");
	for (int i = 0; i < 1000; i++) {
		char nm[32];
		snprintf(nm, sizeof nm, "t%d", i);
		assert_int_equal(tset_insert(s, nm, 2, sh, NULL, NULL), 0);
	}
	assert_int_equal(tset_count(s), 1003);
	assert_ptr_equal(tset_find(s, "a"), first);
	assert_ptr_equal(tset_at(s, 0), first);
	assert_string_equal(tset_at(s, 503)->name, "t500");
	assert_ptr_equal(tset_find(s, "t777"), tset_at(s, 780));
	assert_null(tset_find(s, "t1000"));
	assert_null(tset_at(s, 1003));
	assert_int_equal(tset_numel(s), 6 + 1 + 0 + 6000);
	tset_free(s);
	tset_free(NULL);
}

static void test_ops(void **state)
{
	(void)state;
	tset *a = make(1, 0), *b = make(2, 1), *c = NULL, *o = NULL;
	assert_int_equal(tset_same_layout(a, b), 0);
	assert_int_equal(tset_clone(a, &c), 0);
	/* c = a + b: each element is the f32 rounding of the exact sum */
	assert_int_equal(tset_add(c, b), 0);
	for (size_t i = 0; i < tset_count(c); i++) {
		const tensor *tc = tset_at(c, i), *ta = tset_at(a, i);
		const tensor *tb = tset_find(b, tc->name);
		for (size_t j = 0; j < tc->n; j++)
			assert_true(tc->data[j] == (float)((double)ta->data[j] + tb->data[j]));
	}
	assert_int_equal(tset_copy(c, a), 0);
	assert_int_equal(tset_axpy(c, 0.25f, b), 0);
	for (size_t i = 0; i < tset_count(c); i++) {
		const tensor *tc = tset_at(c, i), *ta = tset_at(a, i);
		const tensor *tb = tset_find(b, tc->name);
		for (size_t j = 0; j < tc->n; j++) {
			double r = (double)ta->data[j] + 0.25 * tb->data[j]; /* 0.25*x exact */
			assert_true(tc->data[j] == (float)r);
		}
	}
	assert_int_equal(tset_zeros_like(a, &o), 0);
	assert_int_equal(tset_diff(o, a, b), 0);
	assert_int_equal(tset_sub(c, c), 0);
	assert_true(tset_norm(c) == 0);
	assert_int_equal(tset_copy(c, a), 0);
	assert_int_equal(tset_sub(c, b), 0);
	uint8_t f1[32], f2[32];
	assert_int_equal(tset_fingerprint(c, f1), 0);
	assert_int_equal(tset_fingerprint(o, f2), 0);
	assert_memory_equal(f1, f2, 32); /* diff == copy then sub */
	/* dot and norm against double references */
	double d, refdot = 0, rn = 0;
	assert_int_equal(tset_dot(a, b, &d), 0);
	for (size_t i = 0; i < tset_count(a); i++) {
		const tensor *ta = tset_at(a, i), *tb = tset_find(b, ta->name);
		for (size_t j = 0; j < ta->n; j++) {
			refdot += (double)ta->data[j] * tb->data[j];
			rn += (double)ta->data[j] * ta->data[j];
		}
	}
	assert_true(fabs(d - refdot) <= 1e-12 * fabs(refdot) + 1e-12);
	assert_true(fabs(tset_norm(a) - sqrt(rn)) <= 1e-12 * sqrt(rn));
	tset_scale(c, 0.5f);
	assert_true(fabs(tset_norm(c) - 0.5 * tset_norm(o)) <= 1e-12 * tset_norm(o));
	tset_zero(c);
	assert_true(tset_norm(c) == 0);
	assert_int_equal(tset_add(c, c), 0);
	assert_true(tset_all_finite(a, NULL));
	tset_at(c, 2)->data[3] = NAN;
	const tensor *where = NULL;
	assert_false(tset_all_finite(c, &where));
	assert_ptr_equal(where, tset_at(c, 2));

	/* layout mismatch: nothing changes */
	tset *m = NULL;
	uint64_t sh[2] = {4, 24};
	assert_int_equal(tset_new(&m), 0);
	assert_int_equal(tset_insert(m, "blk.0.attn_q.lora_a", 2, sh, NULL, NULL), 0);
	assert_int_equal(tset_fingerprint(a, f1), 0);
	assert_int_equal(tset_add(a, m), FL_EMISMATCH);
	assert_int_equal(tset_axpy(a, 2.0f, m), FL_EMISMATCH);
	assert_int_equal(tset_dot(a, m, &d), FL_EMISMATCH);
	assert_int_equal(tset_fingerprint(a, f2), 0);
	assert_memory_equal(f1, f2, 32);
	tset_free(m);
	tset_free(a);
	tset_free(b);
	tset_free(c);
	tset_free(o);
}

static int cmp_tp(const void *x, const void *y)
{
	return strcmp((*(const tensor *const *)x)->name, (*(const tensor *const *)y)->name);
}

/* The stream from docs/FORMATS.md, built here independently. */
static void ref_fingerprint(const tset *s, int data, uint8_t out[32])
{
	size_t n = tset_count(s);
	const tensor **v = malloc(n * sizeof *v);
	for (size_t i = 0; i < n; i++)
		v[i] = tset_at(s, i);
	qsort(v, n, sizeof *v, cmp_tp);
	buf b;
	buf_init(&b, 0);
	assert_int_equal(buf_append(&b, data ? "fedlora.tset.v1" : "fedlora.tshp.v1", 16), 0);
	assert_int_equal(buf_put_u64le(&b, n), 0);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(buf_put_u32le(&b, (uint32_t)strlen(v[i]->name)), 0);
		assert_int_equal(buf_append(&b, v[i]->name, strlen(v[i]->name)), 0);
		assert_int_equal(buf_put_u32le(&b, v[i]->ndim), 0);
		for (uint32_t d = 0; d < v[i]->ndim; d++)
			assert_int_equal(buf_put_u64le(&b, v[i]->shape[d]), 0);
		if (data) {
			assert_int_equal(buf_put_u64le(&b, v[i]->n * 4), 0);
			for (size_t j = 0; j < v[i]->n; j++) {
				uint32_t u;
				memcpy(&u, &v[i]->data[j], 4);
				assert_int_equal(buf_put_u32le(&b, u), 0);
			}
		}
	}
	assert_int_equal(sha256(b.data, b.len, out), 0);
	buf_fini(&b);
	free(v);
}

static void test_fingerprints(void **state)
{
	(void)state;
	tset *a = make(5, 0), *r = make(5, 1), *e = NULL;
	uint8_t fa[32], fr[32], ref[32], sa[32], sr[32];
	assert_int_equal(tset_fingerprint(a, fa), 0);
	ref_fingerprint(a, 1, ref);
	assert_memory_equal(fa, ref, 32);
	assert_int_equal(tset_shape_fingerprint(a, sa), 0);
	ref_fingerprint(a, 0, ref);
	assert_memory_equal(sa, ref, 32);
	/* insertion order does not matter (canonical order is bytewise by name:
	 * "blk.0..." < "blk.1..." < "blk.10.x") */
	assert_int_equal(tset_fingerprint(r, fr), 0);
	assert_memory_equal(fa, fr, 32);
	assert_int_equal(tset_shape_fingerprint(r, sr), 0);
	assert_memory_equal(sa, sr, 32);
	/* one bit of data changes the full fingerprint, not the shape one */
	uint32_t u;
	memcpy(&u, &tset_at(r, 2)->data[7], 4);
	u ^= 1;
	memcpy(&tset_at(r, 2)->data[7], &u, 4);
	assert_int_equal(tset_fingerprint(r, fr), 0);
	assert_memory_not_equal(fa, fr, 32);
	assert_int_equal(tset_shape_fingerprint(r, sr), 0);
	assert_memory_equal(sa, sr, 32);
	/* -0.0 and +0.0 are different bytes, hence different versions */
	tset *z1 = NULL, *z2 = NULL;
	uint64_t one[1] = {1};
	float pz = 0.0f, nz = -0.0f;
	assert_int_equal(tset_new(&z1), 0);
	assert_int_equal(tset_new(&z2), 0);
	assert_int_equal(tset_insert(z1, "z", 1, one, &pz, NULL), 0);
	assert_int_equal(tset_insert(z2, "z", 1, one, &nz, NULL), 0);
	assert_int_equal(tset_fingerprint(z1, fa), 0);
	assert_int_equal(tset_fingerprint(z2, fr), 0);
	assert_memory_not_equal(fa, fr, 32);
	/* same data, transposed shape: both fingerprints change */
	tset *t1 = NULL, *t2 = NULL;
	uint64_t s23[2] = {2, 3}, s32[2] = {3, 2};
	float d6[6] = {1, 2, 3, 4, 5, 6};
	assert_int_equal(tset_new(&t1), 0);
	assert_int_equal(tset_new(&t2), 0);
	assert_int_equal(tset_insert(t1, "w", 2, s23, d6, NULL), 0);
	assert_int_equal(tset_insert(t2, "w", 2, s32, d6, NULL), 0);
	assert_int_equal(tset_fingerprint(t1, fa), 0);
	assert_int_equal(tset_fingerprint(t2, fr), 0);
	assert_memory_not_equal(fa, fr, 32);
	assert_int_equal(tset_shape_fingerprint(t1, fa), 0);
	assert_int_equal(tset_shape_fingerprint(t2, fr), 0);
	assert_memory_not_equal(fa, fr, 32);
	/* the two kinds never collide, even for an empty set */
	assert_int_equal(tset_new(&e), 0);
	assert_int_equal(tset_fingerprint(e, fa), 0);
	assert_int_equal(tset_shape_fingerprint(e, fr), 0);
	assert_memory_not_equal(fa, fr, 32);
	ref_fingerprint(e, 1, ref);
	assert_memory_equal(fa, ref, 32);
	tset_free(a);
	tset_free(r);
	tset_free(e);
	tset_free(z1);
	tset_free(z2);
	tset_free(t1);
	tset_free(t2);
}

/* A known vector, so that an accidental change of the stream is caught
 * even if both constructions above change together: SHA-256 of the
 * fingerprint stream of {"a": [1] = {1.0f}} computed with Python hashlib
 * (see docs/FORMATS.md for the stream). */
static void test_known_vector(void **state)
{
	(void)state;
	tset *s = NULL;
	uint64_t one[1] = {1};
	float v = 1.0f;
	assert_int_equal(tset_new(&s), 0);
	assert_int_equal(tset_insert(s, "a", 1, one, &v, NULL), 0);
	uint8_t f[32];
	char hex[65];
	assert_int_equal(tset_fingerprint(s, f), 0);
	hex_encode(f, 32, hex);
	assert_string_equal(hex, KNOWN_FULL);
	assert_int_equal(tset_shape_fingerprint(s, f), 0);
	hex_encode(f, 32, hex);
	assert_string_equal(hex, KNOWN_SHAPE);
	tset_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_insert_find),
	    cmocka_unit_test(test_ops),
	    cmocka_unit_test(test_fingerprints),
	    cmocka_unit_test(test_known_vector),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
