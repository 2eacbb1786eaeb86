/* fuzz_journal — the coordinator's journal reader (coordinator/journal.c)
 * on arbitrary bytes: every record handed to the callback is a JSON
 * object, records and skipped lines each never exceed the lines in the
 * input (a line can hold a torn record and a whole one glued after it),
 * and the walk ends. The status and restart scans (fed.c, main.c) read
 * only through this walk. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "journal.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int cb(const cJSON *o, void *ud)
{
	if (!cJSON_IsObject(o))
		abort();
	/* what the readers of the journal look at */
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "round");
	if (cJSON_IsString(t) && !t->valuestring)
		abort();
	*(size_t *)ud += cJSON_IsNumber(r) ? 1 : 0;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet;
	if (!quiet) {
		log_set_level(LOG_LVL_OFF);
		quiet = 1;
	}
	size_t lines = 0, nl = 0, nb = 0, with_round = 0;
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	if (size && data[size - 1] != '\n')
		lines++;
	if (journal_scan(data, size, "fuzz", cb, &with_round, &nl, &nb) != 0)
		abort();
	if (nl > lines || nb > lines || with_round > nl)
		abort();
	return 0;
}
