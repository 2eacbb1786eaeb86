/* fuzz_qtensor — libFuzzer target for the QTensor decoder: protobuf-c
 * unpack, then qt_view_proto's validation, then every decoder on what was
 * accepted. Invariants checked (abort on violation): an accepted tensor
 * passes qt_check again, re-packs to bytes that decode to the same tensor,
 * and the scalar and AVX2 paths decode it to identical floats. */
#include "fedlora.pb-c.h"
#include "qtensor.h"
#include "quant.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (1u << 20))
		return 0;
	Fedlora__QTensor *m = fedlora__qtensor__unpack(NULL, size, data);
	if (!m)
		return 0;
	qt_limits lim = {.max_elems = 1u << 16};
	qtensor q, r;
	qt_init(&q);
	qt_init(&r);
	char why[256];
	float *a = NULL, *b = NULL;
	uint8_t *wire = NULL;
	Fedlora__QTensor *m2 = NULL;
	if (qt_view_proto(m, &lim, &q, why, sizeof why) != 0)
		goto out;
	if (qt_check(&q, &lim, NULL, 0) != 0)
		abort();
	a = malloc(q.n * sizeof *a);
	b = malloc(q.n * sizeof *b);
	if (!a || !b)
		goto out;
	quant_set_impl(QUANT_IMPL_SCALAR);
	if (quant_decode(&q, a, q.n) != 0)
		abort();
	if (quant_vector_impl() != QUANT_IMPL_SCALAR) {
		quant_set_impl(quant_vector_impl());
		if (quant_decode(&q, b, q.n) != 0 || memcmp(a, b, q.n * sizeof *a) != 0)
			abort();
	}
	quant_set_impl(QUANT_IMPL_AUTO);
	for (size_t i = 0; i < q.n; i++)
		b[i] = 1.0f;
	if (quant_accumulate(&q, 0.5f, b, q.n) != 0 || quant_apply(&q, a, q.n) != 0)
		abort();
	/* re-pack and re-read: the same tensor */
	size_t len = qt_encoded_size(&q);
	Fedlora__QTensor v;
	qt_to_proto(&q, &v);
	wire = malloc(len ? len : 1);
	if (!wire || fedlora__qtensor__pack(&v, wire) != len)
		abort();
	m2 = fedlora__qtensor__unpack(NULL, len, wire);
	if (!m2 || qt_from_proto(m2, &lim, &r, NULL, 0) != 0)
		abort();
	if (r.fmt != q.fmt || r.block != q.block || r.n != q.n || r.data_len != q.data_len ||
	    memcmp(r.data, q.data, q.data_len) != 0 || strcmp(r.name, q.name) != 0 ||
	    (q.scales_len && memcmp(r.scales, q.scales, q.scales_len) != 0))
		abort();
	/* re-encoding what we decoded must not crash (it may refuse: FL_ENUMERIC) */
	quant_params p = {q.fmt, q.block, QUANT_STOCHASTIC, 1};
	(void)quant_decode(&q, a, q.n);
	(void)quant_encode(&p, q.name, a, q.ndim, q.shape, &r);
out:
	if (m2)
		fedlora__qtensor__free_unpacked(m2, NULL);
	fedlora__qtensor__free_unpacked(m, NULL);
	free(wire);
	free(a);
	free(b);
	qt_fini(&q);
	qt_fini(&r);
	return 0;
}
