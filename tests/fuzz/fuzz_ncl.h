/* fuzz_ncl — shared by the node-side fuzz targets (fuzz_client,
 * fuzz_client_secagg): a clean state directory per input, and the client's
 * actions carried out in place, training and evaluation on the synth
 * trainer, and the input fed as length-prefixed envelopes. Header-only. */
#ifndef FL_FUZZ_NCL_H
#define FL_FUZZ_NCL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "client.h"
#include "lora.h"
#include "state.h"
#include "tensor.h"
#include "trainer_synth.h"
#include "wire.h"

static inline void fz_clean_dir(const char *dir)
{
	static const char *const files[] = {"node.state", "global.safetensors",
	                                    "residual.safetensors", "metrics.jsonl"};
	char p[128];
	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		snprintf(p, sizeof p, "%s/%s", dir, files[i]);
		unlink(p);
	}
}

/* A fresh node state in dir for a base with fingerprint fp (all 0 but a
 * leading 1) and the adapter layout; 0, or nonzero when it cannot be
 * opened (the input is then skipped). */
static inline int fz_open_state(const char *dir, const tset *layout, uint8_t fp[32], nst **st)
{
	uint8_t sfp[32];
	memset(fp, 0, 32);
	fp[0] = 1;
	if (tset_shape_fingerprint(layout, sfp))
		abort();
	return nst_open(dir, fp, sfp, st);
}

/* The client configuration both node targets share: base fp, a rank-2
 * LoRA on attn_q, 10 samples, 16 MiB messages, at most 4 local steps. */
static inline void fz_config(ncl_config *cfg, const uint8_t fp[32], tset *layout)
{
	memset(cfg, 0, sizeof *cfg);
	memcpy(cfg->base_fp, fp, 32);
	cfg->lora.rank = 2;
	cfg->lora.alpha = 4;
	cfg->lora.targets = 1u << LORA_ATTN_Q;
	cfg->layout = layout;
	cfg->sample_count = 10;
	cfg->max_msg = 1u << 24;
	cfg->max_local_steps = 4;
}

/* Runs jobs synchronously on trainer tr; with check_send every envelope
 * the client sends must decode (abort otherwise). */
static inline void fz_run_actions(ncl *c, void *tr, int check_send)
{
	ncl_action a;
	while (ncl_next(c, &a) == 0) {
		if (check_send && a.kind == NCL_ACT_SEND) {
			wire_msg *m = NULL;
			if (wire_decode(a.data, a.len, 1u << 30, 0, &m) != 0)
				abort(); /* the node must only send valid envelopes */
			wire_free(m);
		}
		if (a.kind == NCL_ACT_JOB && a.job) {
			ncl_job *j = a.job;
			if (j->kind == NCL_JOB_TRAIN) {
				tset *local = NULL;
				ntr_result res;
				memset(&res, 0, sizeof res);
				int rc = tset_zeros_like(j->adapter, &local);
				if (!rc)
					rc = ntr_synth_ops.train(tr, j->adapter, &j->params, local,
					                         &res, NULL, NULL);
				ncl_on_train_done(c, j->id, rc, rc ? NULL : local, &res, 1000);
				if (rc)
					tset_free(local);
			} else {
				double loss = 0;
				int rc = ntr_synth_ops.eval(tr, j->adapter, &loss, NULL, NULL);
				ncl_on_eval_done(c, j->id, rc, loss, 1000);
			}
		}
		ncl_action_fini(&a);
	}
}

/* Decodes one envelope and hands it to the client, then runs its actions
 * (undecodable bytes are dropped, as the channel would drop them). */
static inline void fz_feed(ncl *c, void *tr, int check_send, const uint8_t *p, size_t n)
{
	wire_msg *m = NULL;
	if (wire_decode(p, n, 1u << 24, 0, &m) != 0)
		return;
	ncl_on_envelope(c, wire_env(m), n, 1000);
	wire_free(m);
	fz_run_actions(c, tr, check_send);
}

/* Encodes e and feeds it (fz_feed). */
static inline void fz_feed_env(ncl *c, void *tr, int check_send, Fedlora__Envelope *e)
{
	buf b;
	buf_init(&b, 0);
	if (wire_encode(e, 0, &b) == 0)
		fz_feed(c, tr, check_send, b.data, b.len);
	buf_fini(&b);
}

/* The session comes up and the coordinator welcomes node "fuzz". */
static inline void fz_welcome(ncl *c, void *tr, int check_send)
{
	ncl_on_up(c, 0);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Welcome w = FEDLORA__WELCOME__INIT;
	w.node_id = "fuzz";
	env.body_case = FEDLORA__ENVELOPE__BODY_WELCOME;
	env.welcome = &w;
	fz_feed_env(c, tr, check_send, &env);
}

/* The fuzz input as frames [u32 LE length][bytes] (a length past the end
 * takes what is left), each fed as one message with a tick and the
 * actions after it; then the session goes down, the client stops and says
 * bye, and the last actions run. */
static inline void fz_feed_frames(ncl *c, void *tr, int check_send, const uint8_t *data,
                                  size_t size)
{
	size_t off = 0;
	while (off + 4 <= size) {
		uint32_t n = (uint32_t)data[off] | (uint32_t)data[off + 1] << 8 |
		             (uint32_t)data[off + 2] << 16 | (uint32_t)data[off + 3] << 24;
		off += 4;
		if (n > size - off)
			n = (uint32_t)(size - off);
		fz_feed(c, tr, check_send, data + off, n);
		off += n;
		ncl_tick(c, 1000 + off);
		fz_run_actions(c, tr, check_send);
	}
	ncl_on_down(c, 2000, "fuzz");
	ncl_stop(c, 2000, 0);
	ncl_bye(c, "fuzz");
	fz_run_actions(c, tr, check_send);
}

#endif
