/* Fuzz target: the coordinator's Update handling path. A federation (tiny
 * adapter, two joined nodes, round 1 open) receives the input as one
 * message from a participant — decode, round/participant/version checks,
 * payload validation, clipping, accumulation — then the deadline passes and
 * the round commits or is abandoned. Node fz2 is assigned one rank slot
 * (per-node rank), so the bytes also go through the slice checks and the
 * per-slot mean. Invariants (abort otherwise): the
 * global adapter stays finite, the version moves by at most one, every
 * message the coordinator sends decodes.
 *
 * Seeds: tests/fuzz/corpus/update/. To regenerate them, build this file with
 * -DFUZZ_UPDATE_MAKE_SEEDS and run it with the corpus directory as argument
 * (see make_seeds below). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "fed.h"
#include "log.h"
#include "quant.h"
#include "sha.h"
#include "wire.h"

#include "fuzz_fedio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fz_opts(fed_opts *o)
{
	fz_opts_tiny(o, 2);
	o->agg.clip_norm = 10.0;
	/* per-node rank: fz2 sends rank-1 slices (lora_a [1, 16], lora_b [8, 1]) */
	if (nrank_parse("fz2:1", &o->rank, NULL, 0))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int once;
	if (!once) {
		log_set_level(LOG_LVL_OFF);
		once = 1;
	}
	fed_opts o;
	fz_opts(&o);
	fed_io io = {.send = fz_send, .close = fz_close};
	fed *f = NULL;
	if (fed_new(&o, NULL, NULL, &io, &f))
		abort();
	fz_join(f, &o, 1, "fz1", NULL, 0);
	fz_join_max_rank = 1; /* fz2 trains rank slot 0 only (rank.groups) */
	fz_join(f, &o, 2, "fz2", NULL, 0);
	fz_join_max_rank = 0;
	fed_tick(f, 0);
	if (fed_get_state(f) != FED_COLLECTING)
		abort();
	fed_on_bytes(f, 1, data, size, 5);
	/* the same bytes again (duplicate path) and from the other node */
	fed_on_bytes(f, 1, data, size, 6);
	fed_on_bytes(f, 2, data, size, 7);
	/* the deadline: round 1 is over (committed or abandoned); a second
	 * round may start right away */
	fed_tick(f, 2000);
	if (fed_version(f) > 1 || fed_round_id(f) > 2 ||
	    (fed_round_id(f) == 1 && fed_get_state(f) != FED_IDLE))
		abort();
	if (!tset_all_finite(fed_global(f), NULL))
		abort();
	fed_free(f);
	return 0;
}

#ifdef FUZZ_UPDATE_MAKE_SEEDS
/* Writes valid and invalid Update envelopes for the federation above. */
static void put(const char *dir, const char *name, Fedlora__Envelope *e)
{
	buf b;
	buf_init(&b, 0);
	if (wire_encode(e, 0, &b))
		abort();
	char p[1024];
	snprintf(p, sizeof p, "%s/%s", dir, name);
	FILE *f = fopen(p, "wb");
	fwrite(b.data, 1, b.len, f);
	fclose(f);
	buf_fini(&b);
}

static void update_seed(const char *dir, const char *name, enum qt_fmt fmt, uint32_t block,
                        float scale, float poke, uint64_t round, uint64_t base, int drop_b)
{
	uint64_t sa[2] = {2, 16}, sb[2] = {8, 2};
	float a[32], bv[16];
	for (int i = 0; i < 32; i++)
		a[i] = scale * (float)sin(i * 0.7);
	for (int i = 0; i < 16; i++)
		bv[i] = scale * (float)cos(i * 1.3);
	if (poke != 0)
		a[3] = poke;
	quant_params qp = {.fmt = fmt, .block = block};
	qtensor q[2];
	qt_init(&q[0]);
	qt_init(&q[1]);
	if (fmt == QT_F32 || fmt == QT_F16) {
		/* poke may be non-finite: build the f32 bytes by hand */
		qt_prepare(&q[0], "blk.0.attn_q.lora_a", QT_F32, 0, 2, sa);
		memcpy(qt_data_mut(&q[0]), a, sizeof a);
	} else if (quant_encode(&qp, "blk.0.attn_q.lora_a", a, 2, sa, &q[0])) {
		abort();
	}
	if (quant_encode(&qp, "blk.0.attn_q.lora_b", bv, 2, sb, &q[1]))
		abort();
	Fedlora__QTensor qm[2], *qpp[2] = {&qm[0], &qm[1]};
	qt_to_proto(&q[0], &qm[0]);
	qt_to_proto(&q[1], &qm[1]);
	Fedlora__AdapterPayload pl = FEDLORA__ADAPTER_PAYLOAD__INIT;
	pl.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	pl.from_version = base;
	pl.to_version = base;
	pl.n_tensors = drop_b ? 1 : 2;
	pl.tensors = qpp;
	Fedlora__Metric m = FEDLORA__METRIC__INIT, *mp[1] = {&m};
	m.name = "train_loss";
	m.value = 1.25;
	Fedlora__Update u = FEDLORA__UPDATE__INIT;
	u.round_id = round;
	u.base_version = base;
	u.sample_count = 7;
	u.n_metrics = 1;
	u.metrics = mp;
	u.delta = &pl;
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	e.body_case = FEDLORA__ENVELOPE__BODY_UPDATE;
	e.update = &u;
	put(dir, name, &e);
	qt_fini(&q[0]);
	qt_fini(&q[1]);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	const char *d = argv[1];
	update_seed(d, "good_q4", QT_Q4, 32, 0.01f, 0, 1, 0, 0);
	update_seed(d, "good_q8_b64", QT_Q8, 64, 0.01f, 0, 1, 0, 0);
	update_seed(d, "good_q2_b128", QT_Q2, 128, 0.01f, 0, 1, 0, 0);
	update_seed(d, "good_f32", QT_F32, 0, 0.01f, 0, 1, 0, 0);
	update_seed(d, "nan_f32", QT_F32, 0, 0.01f, NAN, 1, 0, 0);
	update_seed(d, "inf_f32", QT_F32, 0, 0.01f, INFINITY, 1, 0, 0);
	update_seed(d, "huge_f32", QT_F32, 0, 1e30f, 0, 1, 0, 0);
	update_seed(d, "wrong_round", QT_Q4, 32, 0.01f, 0, 2, 0, 0);
	update_seed(d, "stale_base", QT_Q4, 32, 0.01f, 0, 1, 3, 0);
	update_seed(d, "missing_tensor", QT_Q4, 32, 0.01f, 0, 1, 0, 1);
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	Fedlora__Heartbeat hb = FEDLORA__HEARTBEAT__INIT;
	e.body_case = FEDLORA__ENVELOPE__BODY_HEARTBEAT;
	e.heartbeat = &hb;
	put(d, "heartbeat", &e);
	Fedlora__SnapshotRequest sr = FEDLORA__SNAPSHOT_REQUEST__INIT;
	sr.round_id = 1;
	e.body_case = FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST;
	e.snapshot_request = &sr;
	put(d, "snapshot_request", &e);
	return 0;
}
#endif
