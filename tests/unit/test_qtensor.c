/* Unit tests for qtensor: layout sizes, the protobuf round trip, borrowed
 * views, encoded size, and every validation rule on decode. */
#include "testutil.h"

#include "err.h"
#include "fedlora.pb-c.h"
#include "qtensor.h"
#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_layout(void **state)
{
	(void)state;
	size_t sl, dl;
	struct {
		enum qt_fmt f;
		uint32_t b;
		uint64_t n;
		size_t sl, dl;
	} cases[] = {
	    {QT_F32, 0, 10, 0, 40},       {QT_F16, 0, 10, 0, 20},   {QT_Q8, 32, 1, 2, 1},
	    {QT_Q8, 32, 32, 2, 32},       {QT_Q8, 32, 33, 4, 33},   {QT_Q4, 32, 33, 4, 17},
	    {QT_Q4, 64, 64, 2, 32},       {QT_Q2, 128, 129, 4, 33}, {QT_Q2, 32, 5, 2, 2},
	    {QT_Q4, 128, 4096, 64, 2048},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_int_equal(qt_layout(cases[i].f, cases[i].b, cases[i].n, &sl, &dl), 0);
		assert_int_equal(sl, cases[i].sl);
		assert_int_equal(dl, cases[i].dl);
	}
	assert_int_equal(qt_layout(QT_Q4, 16, 10, &sl, &dl), FL_EINVAL);
	assert_int_equal(qt_layout(QT_F32, 32, 10, &sl, &dl), FL_EINVAL);
	assert_int_equal(qt_layout((enum qt_fmt)0, 0, 10, &sl, &dl), FL_EINVAL);
	assert_int_equal(qt_layout(QT_F32, 0, UINT64_MAX / 2, &sl, &dl), FL_EOVERFLOW);
	assert_true(qt_bits_per_param(QT_Q4, 32) == 4.5);
	assert_true(qt_bits_per_param(QT_Q2, 128) == 2.125);
	assert_true(qt_bits_per_param(QT_F16, 0) == 16);
	enum qt_fmt f;
	assert_int_equal(qt_fmt_parse("q2", &f), 0);
	assert_int_equal(f, QT_Q2);
	assert_int_equal(qt_fmt_parse("q3", &f), FL_EINVAL);
	assert_string_equal(qt_fmt_name(QT_Q8), "q8");
	assert_string_equal(qt_fmt_name((enum qt_fmt)42), "?");
}

static void make_q(qtensor *q, enum qt_fmt f, uint32_t b, uint64_t r, uint64_t c)
{
	uint64_t shape[2] = {r, c};
	size_t n = (size_t)(r * c);
	float *x = malloc(n * 4);
	uint64_t rs = n + (uint64_t)f;
	for (size_t i = 0; i < n; i++)
		x[i] = (float)(tu_randu(&rs) - 0.5);
	quant_params p = {f, b, QUANT_STOCHASTIC, 77};
	assert_int_equal(quant_encode(&p, "blk.2.attn_v.lora_b", x, 2, shape, q), 0);
	free(x);
}

static void test_roundtrip(void **state)
{
	(void)state;
	const enum qt_fmt fmts[] = {QT_F32, QT_F16, QT_Q8, QT_Q4, QT_Q2};
	for (size_t fi = 0; fi < 5; fi++) {
		qtensor q, back, view;
		qt_init(&q);
		qt_init(&back);
		qt_init(&view);
		make_q(&q, fmts[fi], fmts[fi] >= QT_Q8 ? 64 : 0, 7, 33);
		Fedlora__QTensor m;
		qt_to_proto(&q, &m);
		size_t len = fedlora__qtensor__get_packed_size(&m);
		assert_int_equal(len, qt_encoded_size(&q));
		uint8_t *wire = malloc(len);
		assert_int_equal(fedlora__qtensor__pack(&m, wire), len);
		/* overhead over the payload is small and bounded */
		assert_true(len >= q.data_len + q.scales_len);
		assert_true(len <= q.data_len + q.scales_len + 64);
		Fedlora__QTensor *u = fedlora__qtensor__unpack(NULL, len, wire);
		assert_non_null(u);
		char why[200] = "";
		assert_int_equal(qt_from_proto(u, NULL, &back, why, sizeof why), 0);
		assert_int_equal(qt_view_proto(u, NULL, &view, why, sizeof why), 0);
		assert_ptr_equal(view.data, u->data.data); /* borrowed */
		assert_true(back.data != u->data.data);    /* copied */
		for (int k = 0; k < 2; k++) {
			const qtensor *r = k ? &view : &back;
			assert_string_equal(r->name, q.name);
			assert_int_equal(r->fmt, q.fmt);
			assert_int_equal(r->block, q.block);
			assert_int_equal(r->stochastic, 1);
			assert_int_equal(r->ndim, 2);
			assert_int_equal(r->shape[0], 7);
			assert_int_equal(r->shape[1], 33);
			assert_int_equal(r->n, 231);
			assert_int_equal(r->data_len, q.data_len);
			assert_memory_equal(r->data, q.data, q.data_len);
			assert_int_equal(r->scales_len, q.scales_len);
			if (q.scales_len)
				assert_memory_equal(r->scales, q.scales, q.scales_len);
			assert_int_equal(qt_check(r, NULL, NULL, 0), 0);
		}
		/* decoding the copy gives the same floats as the original */
		float a[231], b2[231];
		assert_int_equal(quant_decode(&q, a, 231), 0);
		assert_int_equal(quant_decode(&view, b2, 231), 0);
		assert_memory_equal(a, b2, sizeof a);
		fedlora__qtensor__free_unpacked(u, NULL);
		free(wire);
		/* qt_copy is deep */
		qtensor c;
		qt_init(&c);
		assert_int_equal(qt_copy(&c, &q), 0);
		assert_true(c.data != q.data);
		assert_memory_equal(c.data, q.data, q.data_len);
		qt_fini(&c);
		qt_fini(&q);
		qt_fini(&back);
		qt_fini(&view);
	}
}

/* A valid q4 [2, 40] message to corrupt field by field. */
typedef struct fixture {
	qtensor q;
	Fedlora__QTensor m;
	uint64_t shape[4];
	uint8_t scales[16], data[4096];
} fixture;

static void fx_init(fixture *fx)
{
	qt_init(&fx->q);
	make_q(&fx->q, QT_Q4, 32, 2, 40);
	qt_to_proto(&fx->q, &fx->m);
	/* private writable copies so tests can corrupt them */
	memcpy(fx->shape, fx->q.shape, sizeof fx->shape);
	memcpy(fx->scales, fx->q.scales, fx->q.scales_len);
	memcpy(fx->data, fx->q.data, fx->q.data_len);
	fx->m.shape = fx->shape;
	fx->m.scales.data = fx->scales;
	fx->m.data.data = fx->data;
}

static void expect_bad(fixture *fx, int rc_want, const char *word)
{
	qtensor out;
	qt_init(&out);
	char why[256] = "";
	int rc = qt_from_proto(&fx->m, NULL, &out, why, sizeof why);
	if (rc != rc_want || !strstr(why, word))
		fail_msg("want %s with '%s', got %s: '%s'", fl_errname(rc_want), word,
		         fl_errname(rc), why);
	assert_int_equal(out.fmt, 0); /* left empty */
	rc = qt_view_proto(&fx->m, NULL, &out, NULL, 0);
	assert_int_equal(rc, rc_want);
	qt_fini(&out);
	qt_fini(&fx->q);
	fx_init(fx); /* restore for the next case */
}

static void test_validation(void **state)
{
	(void)state;
	fixture fx;
	fx_init(&fx);
	qtensor ok;
	qt_init(&ok);
	assert_int_equal(qt_from_proto(&fx.m, NULL, &ok, NULL, 0), 0);
	qt_fini(&ok);

	fx.m.format = (Fedlora__QFormat)0;
	expect_bad(&fx, FL_EPROTO, "unknown format");
	fx.m.format = (Fedlora__QFormat)6;
	expect_bad(&fx, FL_EPROTO, "unknown format");
	fx.m.block_size = 16;
	expect_bad(&fx, FL_EPROTO, "block size");
	fx.m.block_size = 0;
	expect_bad(&fx, FL_EPROTO, "block size");
	fx.m.format = FEDLORA__QFORMAT__QFORMAT_F16; /* f16 with a block size */
	expect_bad(&fx, FL_EPROTO, "block size");
	fx.m.scales.len -= 2;
	expect_bad(&fx, FL_EPROTO, "scale bytes");
	fx.m.data.len += 1;
	expect_bad(&fx, FL_EPROTO, "data bytes");
	fx.m.data.len -= 1;
	expect_bad(&fx, FL_EPROTO, "data bytes");
	fx.scales[3] = 0x7c; /* block 1 scale = +Inf */
	fx.scales[2] = 0x00;
	expect_bad(&fx, FL_ENUMERIC, "infinite");
	fx.scales[1] = 0x7e; /* NaN */
	expect_bad(&fx, FL_ENUMERIC, "NaN");
	fx.scales[1] |= 0x80; /* negative */
	fx.scales[1] &= 0xbf;
	expect_bad(&fx, FL_EPROTO, "negative");
	fx.shape[0] = 1ull << 40;
	fx.shape[1] = 1ull << 40;
	expect_bad(&fx, FL_EOVERFLOW, "overflow");
	fx.shape[0] = 1ull << 20;
	fx.shape[1] = 1ull << 20;
	expect_bad(&fx, FL_ETOOBIG, "cap");
	fx.shape[0] = 0;
	expect_bad(&fx, FL_EPROTO, "is 0");
	fx.m.n_shape = 0;
	expect_bad(&fx, FL_EPROTO, "dimensions");
	fx.m.n_shape = 5;
	expect_bad(&fx, FL_EPROTO, "dimensions");
	fx.m.name = (char *)"";
	expect_bad(&fx, FL_EPROTO, "without a name");
	fx.m.name = (char *)"bad\001name";
	expect_bad(&fx, FL_EPROTO, "control");
	/* shape [2, 40] reshaped [1, 79]: 79 q4 elements leave 4 padding bits */
	fx.shape[0] = 1;
	fx.shape[1] = 79;
	fx.m.data.len = 40;
	fx.data[39] = 0x07;
	qt_init(&ok);
	assert_int_equal(qt_from_proto(&fx.m, NULL, &ok, NULL, 0), 0);
	qt_fini(&ok);
	fx.shape[0] = 1;
	fx.shape[1] = 79;
	fx.m.data.len = 40;
	fx.data[39] = 0x17;
	expect_bad(&fx, FL_EPROTO, "padding");
	/* a caller's cap */
	qt_limits lim = {.max_elems = 50};
	char why[200] = "";
	qt_init(&ok);
	assert_int_equal(qt_from_proto(&fx.m, &lim, &ok, why, sizeof why), FL_ETOOBIG);
	assert_non_null(strstr(why, "cap of 50"));
	assert_int_equal(qt_from_proto(NULL, NULL, &ok, why, sizeof why), FL_EPROTO);
	qt_fini(&ok);
	qt_fini(&fx.q);
}

/* Non-finite elements in f32/f16 payloads are refused. */
static void test_nonfinite_payload(void **state)
{
	(void)state;
	qtensor q, out;
	qt_init(&q);
	qt_init(&out);
	make_q(&q, QT_F32, 0, 1, 8);
	Fedlora__QTensor m;
	qt_to_proto(&q, &m);
	uint8_t d[32];
	memcpy(d, q.data, 32);
	m.data.data = d;
	d[4 * 3 + 3] = 0x7f; /* element 3 = +Inf or NaN */
	d[4 * 3 + 2] = 0x80;
	char why[200];
	assert_int_equal(qt_from_proto(&m, NULL, &out, why, sizeof why), FL_ENUMERIC);
	assert_non_null(strstr(why, "element 3"));
	qt_fini(&q);
	qt_init(&q);
	make_q(&q, QT_F16, 0, 1, 8);
	qt_to_proto(&q, &m);
	memcpy(d, q.data, 16);
	m.data.data = d;
	d[2 * 5 + 1] = 0xfc; /* element 5 = -Inf */
	d[2 * 5] = 0;
	assert_int_equal(qt_from_proto(&m, NULL, &out, why, sizeof why), FL_ENUMERIC);
	assert_non_null(strstr(why, "element 5"));
	qt_fini(&q);
	qt_fini(&out);
}

/* Wire bytes per parameter for an adapter-sized tensor. */
static void test_wire_size(void **state)
{
	(void)state;
	const enum qt_fmt fmts[] = {QT_F32, QT_F16, QT_Q8, QT_Q4, QT_Q2};
	for (size_t fi = 0; fi < 5; fi++) {
		qtensor q;
		qt_init(&q);
		uint32_t b = fmts[fi] >= QT_Q8 ? 32 : 0;
		make_q(&q, fmts[fi], b, 16, 4096);
		double bpp = 8.0 * (double)qt_encoded_size(&q) / (double)q.n;
		double want = qt_bits_per_param(fmts[fi], b);
		assert_true(bpp >= want && bpp < want + 0.01);
		qt_fini(&q);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_layout),     cmocka_unit_test(test_roundtrip),
	    cmocka_unit_test(test_validation), cmocka_unit_test(test_nonfinite_payload),
	    cmocka_unit_test(test_wire_size),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
