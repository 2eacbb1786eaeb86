/* fuzz_peft_config — libFuzzer target for the adapter-format text parsers:
 * adapter_config.json (peft_parse_config) and canonical tensor names
 * (lora_parse_name, fed the input up to its first NUL). Invariants (abort on
 * violation): an accepted config has 1 <= r <= LORA_MAX_RANK and a finite
 * alpha; an accepted name has a layer < LORA_MAX_LAYERS and a known target. */
#include "lora_fmt.h"
#include "peft.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	lora_spec p;
	char why[256];
	if (peft_parse_config((const char *)data, size, &p, why, sizeof why) == 0) {
		if (p.rank < 1 || p.rank > LORA_MAX_RANK || !isfinite(p.alpha))
			abort();
	}
	char name[300];
	size_t n = size < sizeof name - 1 ? size : sizeof name - 1;
	memcpy(name, data, n);
	name[n] = 0;
	uint32_t layer;
	int target, is_b;
	if (lora_parse_name(name, &layer, &target, &is_b) == 0) {
		if (layer >= LORA_MAX_LAYERS || !lora_target_name(target) ||
		    (is_b != 0 && is_b != 1))
			abort();
	}
	return 0;
}
