/* fuzz_node_state — a damaged or hostile node.state file: nst_open must
 * refuse it (fresh counters) or load it, never crash. The base/adapter
 * fingerprints of the seeds are all-zero bytes, so a seed whose checksum
 * is valid also passes the identity check and loads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"
#include "log.h"
#include "state.h"

#include "fuzz_tmpdir.h"

static char g_dir[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!g_dir[0]) {
		log_set_level(LOG_LVL_OFF);
		snprintf(g_dir, sizeof g_dir, "%s", fz_tmpdir("fuzz_nst"));
	}
	char p[128];
	snprintf(p, sizeof p, "%s/node.state", g_dir);
	if (file_write_atomic(p, data, size) != 0)
		return 0;
	uint8_t zero[32] = {0};
	nst *s = NULL;
	if (nst_open(g_dir, zero, zero, &s) == 0) {
		const nst_counters *c = nst_counters_get(s);
		volatile uint64_t sink = c->updates_accepted + c->last_round_uploaded;
		(void)sink;
		nst_free(s);
	}
	return 0;
}
