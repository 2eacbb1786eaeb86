/* fuzz_client — a hostile coordinator against the node's protocol machine.
 *
 * Input: a sequence of messages, each a u32le length and that many bytes.
 * The node is welcomed with a fixed Welcome, then every message that
 * decodes as an Envelope is fed to the client (undecodable ones are what
 * run.c drops before the client sees them). Jobs the client starts run on
 * the synth trainer (rounds may ask for at most 4 local steps), so
 * snapshots, deltas, hash checks, training, quantization and the
 * Update/ack paths are all reachable. State lives in a fresh directory
 * under /dev/shm (or /tmp) for every input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "client.h"
#include "log.h"
#include "state.h"
#include "trainer_synth.h"
#include "wire.h"

#include "fuzz_ncl.h"
#include "fuzz_tmpdir.h"

static void *g_tr;
static tset *g_layout;
static char g_dir[64];

static void init(void)
{
	log_set_level(LOG_LVL_OFF);
	ntr_spec spec;
	memset(&spec, 0, sizeof spec);
	spec.lora.rank = 2;
	spec.lora.alpha = 4;
	spec.lora.targets = 1u << LORA_ATTN_Q;
	spec.lora.init_seed = 1;
	spec.max_steps = 4;
	spec.max_batch = 4;
	char err[128];
	if (ntr_synth_ops.open(&spec, &g_tr, err, sizeof err) ||
	    ntr_synth_ops.layout(g_tr, &g_layout))
		abort();
	snprintf(g_dir, sizeof g_dir, "%s", fz_tmpdir("fuzz_client"));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!g_tr)
		init();
	fz_clean_dir(g_dir);
	uint8_t fp[32];
	nst *st = NULL;
	if (fz_open_state(g_dir, g_layout, fp, &st))
		return 0;
	ncl_config cfg;
	fz_config(&cfg, fp, g_layout);
	cfg.eval = 1;
	ncl *c = NULL;
	if (ncl_new(&cfg, st, &c)) {
		nst_free(st);
		return 0;
	}
	fz_welcome(c, g_tr, 0);
	fz_feed_frames(c, g_tr, 0, data, size);
	ncl_free(c);
	nst_free(st);
	return 0;
}
