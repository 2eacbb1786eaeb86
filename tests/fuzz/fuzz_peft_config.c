/* fuzz_peft_config — libFuzzer target for the adapter-format text parsers:
 * adapter_config.json (lfmt_parse_peft_config) and canonical tensor names
 * (lfmt_parse_name, fed the input up to its first NUL). Invariants (abort on
 * violation): an accepted config has 1 <= r <= LFMT_MAX_RANK and a finite
 * alpha; an accepted name has a layer < LFMT_MAX_LAYERS and a known target. */
#include "lora_fmt.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	lfmt_params p;
	char why[256];
	if (lfmt_parse_peft_config((const char *)data, size, &p, why, sizeof why) == 0) {
		if (p.rank < 1 || p.rank > LFMT_MAX_RANK || !isfinite(p.alpha))
			abort();
	}
	char name[300];
	size_t n = size < sizeof name - 1 ? size : sizeof name - 1;
	memcpy(name, data, n);
	name[n] = 0;
	uint32_t layer;
	int target, is_b;
	if (lfmt_parse_name(name, &layer, &target, &is_b) == 0) {
		if (layer >= LFMT_MAX_LAYERS || !lfmt_target_name(target) ||
		    (is_b != 0 && is_b != 1))
			abort();
	}
	return 0;
}
