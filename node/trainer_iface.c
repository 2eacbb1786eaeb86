/* trainer_iface — the trainer registry. */
#include "trainer_iface.h"

#include <string.h>

extern const ntr_ops ntr_synth_ops;
extern const ntr_ops ntr_lora_ops;

const ntr_ops *ntr_find(const char *name)
{
	if (!name)
		return NULL;
	if (strcmp(name, ntr_synth_ops.name) == 0)
		return &ntr_synth_ops;
	if (strcmp(name, ntr_lora_ops.name) == 0)
		return &ntr_lora_ops;
	return NULL;
}

const char *ntr_names(void)
{
	return "lora|synth";
}
