/* fuzz_gguf — GGUF reader on arbitrary bytes: open must either refuse with
 * an error or hand out only values and tensor data inside the input; every
 * accessor and the dequantization of each tensor's first row are exercised
 * on what it accepts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gtype.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static void walk_kv(const gguf *g, size_t i)
{
	const char *key = gguf_kv_key(g, i);
	uint64_t u;
	int64_t s;
	double d;
	int b;
	gguf_str str;
	if (gguf_find_key(g, key) != (int)i)
		abort();
	if (gguf_get_uint(g, key, &u) == 0)
		sink += u;
	if (gguf_get_int(g, key, &s) == 0)
		sink += (uint64_t)s;
	if (gguf_get_float(g, key, &d) == 0)
		sink += (uint64_t)(d == d);
	if (gguf_get_bool(g, key, &b) == 0)
		sink += (uint64_t)b;
	if (gguf_get_str(g, key, &str) == 0 && str.n)
		sink += (uint8_t)str.p[str.n - 1];
	enum gguf_vtype et;
	size_t n;
	if (gguf_get_arr(g, key, &et, &n) != 0)
		return;
	const gguf_str *strs;
	if (gguf_get_arr_strs(g, key, &strs, &n) == 0) {
		for (size_t k = 0; k < n; k++)
			if (strs[k].n)
				sink += (uint8_t)strs[k].p[strs[k].n - 1];
		return;
	}
	if (n > 4096)
		return;
	int64_t iv[4096];
	float fv[4096];
	if (gguf_get_arr_i64(g, key, iv, n) == 0 && n)
		sink += (uint64_t)iv[n - 1];
	if (gguf_get_arr_f32(g, key, fv, n) == 0 && n)
		sink += (uint64_t)(fv[n - 1] == fv[n - 1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	gguf *g = NULL;
	char err[256];
	if (gguf_open_mem(data, size, &g, err, sizeof err) != 0)
		return 0;
	for (size_t i = 0; i < gguf_kv_count(g); i++)
		walk_kv(g, i);
	static float row[4096];
	for (size_t i = 0; i < gguf_tensor_count(g); i++) {
		gguf_tensor t;
		if (gguf_tensor_at(g, i, &t) != 0)
			abort();
		const uint8_t *p = t.data;
		if (p < data || p + t.size > data + size)
			abort(); /* the reader's range checks failed */
		size_t rs;
		if (gtype_row_size(t.type, t.ne[0], &rs) != 0)
			abort();
		if (t.nelem == 0 || t.ne[0] > 4096)
			continue;
		gtype_dequant_row(t.type, t.data, row, (size_t)t.ne[0]);
		sink += (uint64_t)(row[0] == row[0]);
	}
	gguf_free(g);
	return 0;
}
