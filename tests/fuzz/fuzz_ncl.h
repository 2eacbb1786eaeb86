/* fuzz_ncl — shared by the node-side fuzz targets (fuzz_client,
 * fuzz_client_secagg): a clean state directory per input, and the client's
 * actions carried out in place, training and evaluation on the synth
 * trainer. Header-only. */
#ifndef FL_FUZZ_NCL_H
#define FL_FUZZ_NCL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
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

#endif
