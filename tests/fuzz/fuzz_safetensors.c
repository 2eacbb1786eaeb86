/* fuzz_safetensors — libFuzzer target for the safetensors parser: the
 * header checks, then conversion of an accepted file to f32 and a look at
 * every tensor and metadata entry. Invariant (abort on violation): every
 * accepted tensor's bytes lie inside the input. */
#include "safetensors.h"
#include "tensor.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	st_limits lim = {.max_header = 1u << 16, .max_tensors = 256, .max_elems = 1u << 20};
	st_file *f = NULL;
	char why[256];
	if (st_parse(data, size, &lim, &f, why, sizeof why) != 0)
		return 0;
	for (size_t i = 0; i < st_count(f); i++) {
		st_info in;
		if (st_get(f, i, &in) != 0)
			abort();
		if (in.nbytes && (in.data < data || in.data + in.nbytes > data + size))
			abort();
	}
	for (size_t i = 0; i < st_meta_count(f); i++) {
		st_kv kv;
		if (st_meta_at(f, i, &kv) != 0 || !kv.key || !kv.val)
			abort();
	}
	tset *s = NULL;
	if (st_to_tset(f, &s) == 0) {
		if (tset_count(s) != st_count(f))
			abort();
		tset_free(s);
	}
	st_close(f);
	return 0;
}
