/* client: the node's protocol state machine driven by scripted coordinator
 * envelopes (encoded and decoded through the real wire codec), with the
 * synth trainer doing the jobs synchronously and a real state_dir. */
#include "testutil.h"

#include "client.h"
#include "err.h"
#include "fileio.h"
#include "log.h"
#include "qtensor.h"
#include "quant.h"
#include "safetensors.h"
#include "sha.h"
#include "state.h"
#include "trainer_synth.h"
#include "wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXQ 64

typedef struct fx {
	char *dir;
	ntr_spec spec;
	void *tr;
	tset *layout;
	nst *st;
	ncl *c;
	ncl_config cfg;
	uint8_t base_fp[32];
	uint64_t now;
	/* collected actions */
	wire_msg *sent[MAXQ];
	size_t sent_len[MAXQ];
	uint8_t *sent_raw[MAXQ];
	int nsent;
	ncl_job *jobs[MAXQ];
	int njobs;
	uint64_t cancelled[MAXQ];
	int ncancel;
	int ready, resets, fatal;
	char fatal_why[256];
} fx;

static void fx_drain(fx *f)
{
	ncl_action a;
	while (ncl_next(f->c, &a) == 0) {
		switch (a.kind) {
		case NCL_ACT_SEND:
			assert_true(f->nsent < MAXQ);
			assert_int_equal(
			    wire_decode(a.data, a.len, 1u << 30, 0, &f->sent[f->nsent]), 0);
			f->sent_len[f->nsent] = a.len;
			f->sent_raw[f->nsent] = a.data;
			a.data = NULL;
			f->nsent++;
			break;
		case NCL_ACT_JOB:
			assert_true(f->njobs < MAXQ);
			f->jobs[f->njobs++] = a.job;
			a.job = NULL;
			break;
		case NCL_ACT_CANCEL:
			f->cancelled[f->ncancel++] = a.job_id;
			break;
		case NCL_ACT_READY:
			f->ready++;
			break;
		case NCL_ACT_RESET:
			f->resets++;
			break;
		case NCL_ACT_FATAL:
			f->fatal++;
			snprintf(f->fatal_why, sizeof f->fatal_why, "%s", a.why);
			break;
		}
		ncl_action_fini(&a);
	}
}

static void fx_clear_sent(fx *f)
{
	for (int i = 0; i < f->nsent; i++) {
		wire_free(f->sent[i]);
		free(f->sent_raw[i]);
	}
	f->nsent = 0;
}

/* The last sent envelope with body bc, or NULL. */
static const Fedlora__Envelope *fx_last(fx *f, Fedlora__Envelope__BodyCase bc, int *idx)
{
	for (int i = f->nsent - 1; i >= 0; i--)
		if (wire_env(f->sent[i])->body_case == bc) {
			if (idx)
				*idx = i;
			return wire_env(f->sent[i]);
		}
	return NULL;
}

static int fx_count(fx *f, Fedlora__Envelope__BodyCase bc)
{
	int n = 0;
	for (int i = 0; i < f->nsent; i++)
		n += wire_env(f->sent[i])->body_case == bc;
	return n;
}

static void fx_open_client(fx *f)
{
	uint8_t sfp[32];
	assert_int_equal(tset_shape_fingerprint(f->layout, sfp), 0);
	assert_int_equal(nst_open(f->dir, f->base_fp, sfp, &f->st), 0);
	assert_int_equal(ncl_new(&f->cfg, f->st, &f->c), 0);
}

static void fx_setup(fx *f, int ffa)
{
	memset(f, 0, sizeof *f);
	f->dir = tu_mkdtemp();
	assert_non_null(f->dir);
	f->spec.lora.rank = 4;
	f->spec.lora.alpha = 8;
	f->spec.lora.targets = (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V);
	f->spec.lora.ffa = ffa;
	f->spec.lora.init_seed = 42;
	f->spec.seed = 3;
	char err[256] = "";
	assert_int_equal(ntr_synth_ops.open(&f->spec, &f->tr, err, sizeof err), 0);
	assert_int_equal(ntr_synth_ops.layout(f->tr, &f->layout), 0);
	for (int i = 0; i < 32; i++)
		f->base_fp[i] = (uint8_t)(0xa0 + i);
	memcpy(f->cfg.base_fp, f->base_fp, 32);
	f->cfg.lora = f->spec.lora;
	f->cfg.layout = f->layout;
	f->cfg.sample_count = ntr_synth_ops.sample_count(f->tr);
	f->cfg.heartbeat_ms = 1000;
	f->cfg.eval = 1;
	f->cfg.node_seed = 3;
	f->now = 1000000;
	fx_open_client(f);
}

static void fx_close_client(fx *f)
{
	ncl_free(f->c);
	f->c = NULL;
	nst_free(f->st);
	f->st = NULL;
	for (int i = 0; i < f->njobs; i++)
		ncl_job_free(f->jobs[i]);
	f->njobs = 0;
	fx_clear_sent(f);
}

static void fx_teardown(fx *f)
{
	fx_close_client(f);
	tset_free(f->layout);
	ntr_synth_ops.close(f->tr);
	tu_rmtree(f->dir);
	free(f->dir);
}

/* Encodes env, decodes it back and feeds it (the real wire path). */
static void fx_feed(fx *f, Fedlora__Envelope *env)
{
	buf b;
	buf_init(&b, 0);
	assert_int_equal(wire_encode(env, 0, &b), 0);
	wire_msg *m = NULL;
	assert_int_equal(wire_decode(b.data, b.len, 1u << 30, 0, &m), 0);
	ncl_on_envelope(f->c, wire_env(m), b.len, f->now);
	wire_free(m);
	buf_fini(&b);
	fx_drain(f);
}

/* Runs queued jobs synchronously (skipping cancelled ones). */
static void fx_run_jobs(fx *f)
{
	while (f->njobs > 0) {
		ncl_job *j = f->jobs[0];
		memmove(f->jobs, f->jobs + 1, (size_t)(f->njobs - 1) * sizeof *f->jobs);
		f->njobs--;
		int cancelled = 0;
		for (int i = 0; i < f->ncancel; i++)
			cancelled |= f->cancelled[i] == j->id;
		if (!cancelled) {
			if (j->kind == NCL_JOB_TRAIN) {
				tset *local = NULL;
				ntr_result res;
				assert_int_equal(tset_zeros_like(j->adapter, &local), 0);
				int rc = ntr_synth_ops.train(f->tr, j->adapter, &j->params, local,
				                             &res, NULL, NULL);
				ncl_on_train_done(f->c, j->id, rc, rc ? NULL : local, &res, f->now);
				if (rc)
					tset_free(local);
			} else {
				double loss = NAN;
				int rc = ntr_synth_ops.eval(f->tr, j->adapter, &loss, NULL, NULL);
				ncl_on_eval_done(f->c, j->id, rc, loss, f->now);
			}
		}
		ncl_job_free(j);
		fx_drain(f);
	}
}

static void fx_up_welcome(fx *f, uint64_t global_version)
{
	ncl_on_up(f->c, f->now);
	fx_drain(f);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Welcome w = FEDLORA__WELCOME__INIT;
	w.node_id = "node-1";
	w.coordinator_version = "test";
	w.heartbeat_ms = 2000;
	w.global_version = global_version;
	env.body_case = FEDLORA__ENVELOPE__BODY_WELCOME;
	env.welcome = &w;
	fx_feed(f, &env);
}

/* The coordinator's v0: A random, B zero. */
static tset *make_v0(const tset *layout, uint64_t seed)
{
	tset *t = NULL;
	assert_int_equal(tset_zeros_like(layout, &t), 0);
	for (size_t i = 0; i < tset_count(t); i++) {
		tensor *x = tset_at(t, i);
		if (lora_is_b(x->name))
			continue;
		for (size_t k = 0; k < x->n; k++)
			x->data[k] = (float)(tu_randu(&seed) - 0.5) * 0.3f;
	}
	return t;
}

/* Holds a payload's quantized tensors while the envelope is fed. */
typedef struct payload {
	qtensor q[MAXQ];
	Fedlora__QTensor m[MAXQ], *pm[MAXQ];
	size_t n;
	Fedlora__AdapterPayload ap;
	uint8_t sha[32];
} payload;

static void payload_fini(payload *p)
{
	for (size_t i = 0; i < p->n; i++)
		qt_fini(&p->q[i]);
	p->n = 0;
}

static void payload_snapshot(payload *p, const tset *g, uint64_t version)
{
	memset(p, 0, sizeof *p);
	fedlora__adapter_payload__init(&p->ap);
	quant_params qp = {QT_F32, 0, QUANT_NEAREST, 0};
	for (size_t i = 0; i < tset_count(g); i++) {
		qt_init(&p->q[i]);
		assert_int_equal(quant_encode_tensor(&qp, tset_at(g, i), &p->q[i]), 0);
		qt_to_proto(&p->q[i], &p->m[i]);
		p->pm[i] = &p->m[i];
	}
	p->n = tset_count(g);
	assert_int_equal(tset_fingerprint(g, p->sha), 0);
	p->ap.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT;
	p->ap.to_version = version;
	p->ap.to_sha256.data = p->sha;
	p->ap.to_sha256.len = 32;
	p->ap.n_tensors = p->n;
	p->ap.tensors = p->pm;
}

/* A q8 delta d applied to g (g updated to the new exact version). */
static void payload_delta(payload *p, tset *g, const tset *d, uint64_t from, uint64_t to)
{
	memset(p, 0, sizeof *p);
	fedlora__adapter_payload__init(&p->ap);
	quant_params qp = {QT_Q8, 32, QUANT_NEAREST, 0};
	for (size_t i = 0; i < tset_count(d); i++) {
		qt_init(&p->q[i]);
		assert_int_equal(quant_encode_tensor(&qp, tset_at(d, i), &p->q[i]), 0);
		qt_to_proto(&p->q[i], &p->m[i]);
		p->pm[i] = &p->m[i];
	}
	p->n = tset_count(d);
	assert_int_equal(quant_apply_set(g, p->q, p->n), 0);
	assert_int_equal(tset_fingerprint(g, p->sha), 0);
	p->ap.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	p->ap.from_version = from;
	p->ap.to_version = to;
	p->ap.to_sha256.data = p->sha;
	p->ap.to_sha256.len = 32;
	p->ap.n_tensors = p->n;
	p->ap.tensors = p->pm;
}

static void feed_round_start(fx *f, uint64_t round, uint64_t version, const uint8_t sha[32],
                             Fedlora__AdapterPayload *ap, int fmt, int ef)
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__RoundStart rs = FEDLORA__ROUND_START__INIT;
	Fedlora__TrainParams tp = FEDLORA__TRAIN_PARAMS__INIT;
	tp.local_steps = 20;
	tp.lr = 0.02f;
	tp.batch_size = 8;
	tp.seed = 1000 + round;
	tp.uplink_format = (Fedlora__QFormat)fmt;
	tp.uplink_block = fmt >= QT_Q8 ? 32 : 0;
	tp.error_feedback = ef;
	rs.round_id = round;
	rs.global_version = version;
	rs.global_sha256.data = (uint8_t *)sha;
	rs.global_sha256.len = 32;
	rs.params = &tp;
	rs.deadline_ms = 60000;
	rs.adapter = ap;
	env.body_case = FEDLORA__ENVELOPE__BODY_ROUND_START;
	env.round_start = &rs;
	fx_feed(f, &env);
}

static void feed_ack(fx *f, uint64_t round, int accepted, int reason)
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__UpdateAck a = FEDLORA__UPDATE_ACK__INIT;
	a.round_id = round;
	a.accepted = accepted;
	a.reason = (Fedlora__UpdateAck__Reason)reason;
	env.body_case = FEDLORA__ENVELOPE__BODY_UPDATE_ACK;
	env.update_ack = &a;
	fx_feed(f, &env);
}

static void feed_round_end(fx *f, uint64_t round, uint64_t version, const uint8_t sha[32])
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__RoundEnd e = FEDLORA__ROUND_END__INIT;
	e.round_id = round;
	e.committed = 1;
	e.version = version;
	e.sha256.data = (uint8_t *)sha;
	e.sha256.len = 32;
	e.participants = 1;
	env.body_case = FEDLORA__ENVELOPE__BODY_ROUND_END;
	env.round_end = &e;
	fx_feed(f, &env);
}

/* Decodes an Update's tensors into a set shaped like the layout (zeros for
 * tensors not sent). */
static tset *decode_update(fx *f, const Fedlora__Update *u)
{
	tset *d = NULL;
	assert_int_equal(tset_zeros_like(f->layout, &d), 0);
	for (size_t i = 0; i < u->delta->n_tensors; i++) {
		qtensor q;
		qt_init(&q);
		char why[128];
		assert_int_equal(qt_from_proto(u->delta->tensors[i], NULL, &q, why, sizeof why), 0);
		tensor *t = tset_find(d, q.name);
		assert_non_null(t);
		assert_int_equal(quant_decode(&q, t->data, t->n), 0);
		qt_fini(&q);
	}
	return d;
}

/* ---------------------------------------------------------------- */

static void test_join_fields(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	ncl_on_up(f.c, f.now);
	fx_drain(&f);
	assert_int_equal(ncl_phase(f.c), NCL_JOINING);
	const Fedlora__Envelope *e = fx_last(&f, FEDLORA__ENVELOPE__BODY_JOIN, NULL);
	assert_non_null(e);
	const Fedlora__Join *j = e->join;
	uint8_t sfp[32];
	assert_int_equal(tset_shape_fingerprint(f.layout, sfp), 0);
	assert_int_equal(j->base_fingerprint.len, 32);
	assert_memory_equal(j->base_fingerprint.data, f.base_fp, 32);
	assert_int_equal(j->adapter_fingerprint.len, 32);
	assert_memory_equal(j->adapter_fingerprint.data, sfp, 32);
	assert_int_equal(j->sample_count, f.cfg.sample_count);
	assert_int_equal(j->have_version, 0);
	assert_int_equal(j->have_sha256.len, 0);
	assert_non_null(j->lora);
	assert_int_equal(j->lora->rank, 4);
	assert_int_equal(j->lora->n_targets, 2);
	assert_string_equal(j->lora->targets[0], "attn_q");
	assert_string_equal(j->lora->targets[1], "attn_v");
	int has_q4 = 0;
	for (size_t i = 0; i < j->n_capabilities; i++)
		has_q4 |= strcmp(j->capabilities[i], "q4") == 0;
	assert_true(has_q4);
	assert_int_equal(f.ready, 0);
	fx_teardown(&f);
}

/* Snapshot round, then a delta round; EF residual identity; persistence. */
static void test_rounds_snapshot_delta_restart(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	fx_up_welcome(&f, 1);
	assert_int_equal(f.ready, 1);
	assert_int_equal(ncl_phase(f.c), NCL_IDLE);

	tset *g = make_v0(f.layout, 7);
	payload p;
	payload_snapshot(&p, g, 1);
	feed_round_start(&f, 1, 1, p.sha, &p.ap, QT_Q4, 1);
	payload_fini(&p);
	assert_int_equal(f.njobs, 2); /* eval then train */
	assert_int_equal(f.jobs[0]->kind, NCL_JOB_EVAL);
	assert_int_equal(f.jobs[1]->kind, NCL_JOB_TRAIN);
	assert_int_equal(ncl_phase(f.c), NCL_TRAINING);
	assert_int_equal(nst_version(f.st), 1);
	uint8_t gsha[32];
	assert_int_equal(tset_fingerprint(g, gsha), 0);
	assert_memory_equal(nst_version_sha(f.st), gsha, 32);

	/* What the trainer will produce, computed independently. */
	tset *local = NULL, *want = NULL;
	ntr_result res;
	assert_int_equal(tset_zeros_like(g, &local), 0);
	assert_int_equal(ntr_synth_ops.train(f.tr, g, &f.jobs[1]->params, local, &res, NULL, NULL),
	                 0);
	assert_int_equal(tset_clone(local, &want), 0);
	assert_int_equal(tset_sub(want, g), 0); /* true delta */
	tset_free(local);

	fx_run_jobs(&f);
	assert_int_equal(ncl_phase(f.c), NCL_UPLOADING);
	int ui = -1;
	const Fedlora__Envelope *ue = fx_last(&f, FEDLORA__ENVELOPE__BODY_UPDATE, &ui);
	assert_non_null(ue);
	const Fedlora__Update *u = ue->update;
	assert_int_equal(u->round_id, 1);
	assert_int_equal(u->base_version, 1);
	assert_int_equal(u->delta->kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_int_equal(u->delta->from_version, 1);
	assert_int_equal(u->delta->n_tensors, tset_count(f.layout));
	int has_eval = 0;
	for (size_t i = 0; i < u->n_metrics; i++)
		has_eval |= strcmp(u->metrics[i]->name, "eval_loss") == 0 &&
		            isfinite(u->metrics[i]->value) && u->metrics[i]->value > 0;
	assert_true(has_eval);
	/* q4 bytes: data + scales exactly the format's size */
	size_t qbytes = 0, n = 0;
	for (size_t i = 0; i < u->delta->n_tensors; i++) {
		const Fedlora__QTensor *q = u->delta->tensors[i];
		assert_int_equal(q->format, FEDLORA__QFORMAT__QFORMAT_Q4);
		const tensor *t = tset_find(f.layout, q->name);
		size_t sl, dl;
		assert_int_equal(qt_layout(QT_Q4, 32, t->n, &sl, &dl), 0);
		assert_int_equal(q->scales.len, sl);
		assert_int_equal(q->data.len, dl);
		qbytes += sl + dl;
		n += t->n;
	}
	assert_true(qbytes * 100 <= n * 4 * 15);
	size_t ub, u32;
	ncl_last_upload(f.c, &ub, &u32);
	assert_int_equal(ub, f.sent_len[ui]);
	/* the f32 equivalent differs by the element bytes (and a few length
	 * prefixes that grow with them) */
	size_t expect32 = ub + n * 4 - qbytes;
	print_message("upload %zu bytes, f32 %zu, expected about %zu\n", ub, u32, expect32);
	assert_true(u32 + 8 * tset_count(f.layout) >= expect32 && u32 <= expect32 + 64);

	/* EF: deq(q) + residual == delta (residual started at zero). */
	tset *deq = decode_update(&f, u);
	feed_ack(&f, 1, 1, 0);
	const tset *resid = nst_residual(f.st);
	assert_non_null(resid);
	assert_int_equal(nst_residual_round(f.st), 1);
	double maxerr = 0, maxres = 0;
	for (size_t i = 0; i < tset_count(want); i++) {
		const tensor *w = tset_at(want, i), *q = tset_find(deq, w->name),
		             *r = tset_find(resid, w->name);
		for (size_t k = 0; k < w->n; k++) {
			double e = fabs((double)q->data[k] + r->data[k] - w->data[k]);
			maxerr = e > maxerr ? e : maxerr;
			maxres = fabs(r->data[k]) > maxres ? fabs(r->data[k]) : maxres;
		}
	}
	assert_true(maxerr < 1e-6);
	assert_true(maxres > 0); /* q4 is lossy: there is a residual */
	tset_free(deq);
	tset_free(want);
	assert_int_equal(ncl_phase(f.c), NCL_IDLE);
	assert_int_equal(nst_counters_get(f.st)->last_round_uploaded, 1);

	/* commit v2 = v1 + deq(q8(agg)) and announce it as a delta */
	tset *agg = NULL;
	assert_int_equal(tset_zeros_like(g, &agg), 0);
	uint64_t s = 99;
	for (size_t i = 0; i < tset_count(agg); i++) {
		tensor *t = tset_at(agg, i);
		for (size_t k = 0; k < t->n; k++)
			t->data[k] = (float)(tu_randu(&s) - 0.5) * 0.01f;
	}
	feed_round_end(&f, 1, 2, gsha);
	char mpath[4096];
	snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", f.dir);
	uint8_t *mtxt = NULL;
	size_t mlen = 0;
	assert_int_equal(file_read_all(mpath, 1 << 20, &mtxt, &mlen), 0);
	assert_non_null(strstr((char *)mtxt, "\"round\":1"));
	assert_non_null(strstr((char *)mtxt, "\"uploaded\":true"));
	assert_non_null(strstr((char *)mtxt, "\"bytes_up_fp32\":"));
	free(mtxt);
	payload_delta(&p, g, agg, 1, 2);
	tset_free(agg);
	f.njobs = 0;
	feed_round_start(&f, 2, 2, p.sha, &p.ap, QT_Q4, 1);
	assert_int_equal(nst_version(f.st), 2);
	assert_memory_equal(nst_version_sha(f.st), p.sha, 32);
	/* bit-identical to the coordinator's version */
	const tset *ng = nst_global(f.st);
	for (size_t i = 0; i < tset_count(g); i++) {
		const tensor *a = tset_at(g, i), *b = tset_find(ng, a->name);
		assert_memory_equal(a->data, b->data, a->n * sizeof(float));
	}
	payload_fini(&p);
	assert_int_equal(fx_count(&f, FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST), 0);

	/* restart: version, its hash and the residual come back */
	uint8_t rsha[32], rsha2[32];
	assert_int_equal(tset_fingerprint(nst_residual(f.st), rsha), 0);
	fx_close_client(&f);
	fx_open_client(&f);
	assert_int_equal(nst_version(f.st), 2);
	assert_non_null(nst_residual(f.st));
	assert_int_equal(tset_fingerprint(nst_residual(f.st), rsha2), 0);
	assert_memory_equal(rsha, rsha2, 32);
	assert_int_equal(nst_counters_get(f.st)->last_round_uploaded, 1);
	ncl_on_up(f.c, f.now);
	fx_drain(&f);
	const Fedlora__Join *j = fx_last(&f, FEDLORA__ENVELOPE__BODY_JOIN, NULL)->join;
	assert_int_equal(j->have_version, 2);
	assert_memory_equal(j->have_sha256.data, p.sha, 32);
	assert_int_equal(j->last_round_id, 1);
	tset_free(g);
	fx_teardown(&f);
}

/* A wrong hash or a gap asks for a snapshot once; a second failure skips. */
static void test_mismatch_snapshot_request(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	fx_up_welcome(&f, 1);
	tset *g = make_v0(f.layout, 8);
	payload p;
	payload_snapshot(&p, g, 1);
	uint8_t bad[32];
	memcpy(bad, p.sha, 32);
	bad[5] ^= 1;
	p.ap.to_sha256.len = 0; /* only the round's hash is checked */
	feed_round_start(&f, 4, 1, bad, &p.ap, QT_Q8, 0);
	const Fedlora__Envelope *e = fx_last(&f, FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST, NULL);
	assert_non_null(e);
	assert_int_equal(e->snapshot_request->round_id, 4);
	assert_int_equal(e->snapshot_request->have_version, 0);
	assert_int_equal(f.njobs, 0);
	assert_int_equal(ncl_phase(f.c), NCL_SYNCING);
	assert_int_equal(nst_version(f.st), 0);
	/* the coordinator answers with a good snapshot for the same round */
	p.ap.to_sha256.len = 32;
	feed_round_start(&f, 4, 1, p.sha, &p.ap, QT_Q8, 0);
	assert_int_equal(nst_version(f.st), 1);
	assert_int_equal(f.njobs, 2);
	for (int i = 0; i < f.njobs; i++)
		ncl_job_free(f.jobs[i]);
	f.njobs = 0;
	/* a delta from a version we do not hold: gap -> snapshot request */
	fx_clear_sent(&f);
	tset *d = NULL;
	assert_int_equal(tset_zeros_like(g, &d), 0);
	payload_fini(&p);
	payload_delta(&p, g, d, 7, 8);
	feed_round_start(&f, 5, 8, p.sha, &p.ap, QT_Q8, 0);
	e = fx_last(&f, FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST, NULL);
	assert_non_null(e);
	assert_int_equal(e->snapshot_request->have_version, 1);
	/* still wrong after the request: the round is skipped with an Error */
	feed_round_start(&f, 5, 8, p.sha, &p.ap, QT_Q8, 0);
	assert_int_equal(fx_count(&f, FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST), 1);
	assert_non_null(fx_last(&f, FEDLORA__ENVELOPE__BODY_ERROR, NULL));
	assert_int_equal(f.njobs, 0);
	assert_int_equal(nst_version(f.st), 1);
	payload_fini(&p);
	tset_free(d);
	tset_free(g);
	fx_teardown(&f);
}

/* An upload cut by a disconnect is resent byte-identical when the round
 * can still be open, dropped when the global moved. */
static void test_resend_after_reconnect(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	fx_up_welcome(&f, 1);
	tset *g = make_v0(f.layout, 9);
	payload p;
	payload_snapshot(&p, g, 1);
	feed_round_start(&f, 3, 1, p.sha, &p.ap, QT_Q4, 1);
	fx_run_jobs(&f);
	int i1 = -1;
	assert_non_null(fx_last(&f, FEDLORA__ENVELOPE__BODY_UPDATE, &i1));
	size_t len1 = f.sent_len[i1];
	uint8_t *copy = malloc(len1);
	memcpy(copy, f.sent_raw[i1], len1);
	ncl_on_down(f.c, f.now, "link lost");
	fx_drain(&f);
	assert_int_equal(ncl_phase(f.c), NCL_OFFLINE);
	fx_clear_sent(&f);
	fx_up_welcome(&f, 1);
	int i2 = -1;
	assert_non_null(fx_last(&f, FEDLORA__ENVELOPE__BODY_UPDATE, &i2));
	assert_int_equal(f.sent_len[i2], len1);
	assert_memory_equal(f.sent_raw[i2], copy, len1);
	/* a duplicate answer counts as accepted and commits the residual */
	feed_ack(&f, 3, 0, FEDLORA__UPDATE_ACK__REASON__REASON_DUPLICATE);
	assert_non_null(nst_residual(f.st));
	assert_int_equal(nst_counters_get(f.st)->updates_accepted, 1);

	/* the coordinator restarted the same round: same bytes again */
	fx_clear_sent(&f);
	feed_round_start(&f, 3, 1, p.sha, NULL, QT_Q4, 1);
	int i3 = -1;
	assert_non_null(fx_last(&f, FEDLORA__ENVELOPE__BODY_UPDATE, &i3));
	assert_memory_equal(f.sent_raw[i3], copy, len1);
	assert_int_equal(f.njobs, 0);
	free(copy);

	/* next round, disconnect mid-upload, the global moves: dropped */
	feed_ack(&f, 3, 1, 0);
	feed_round_start(&f, 4, 1, p.sha, NULL, QT_Q4, 1);
	fx_run_jobs(&f);
	ncl_on_down(f.c, f.now, "link lost");
	fx_clear_sent(&f);
	fx_up_welcome(&f, 2);
	assert_int_equal(fx_count(&f, FEDLORA__ENVELOPE__BODY_UPDATE), 0);
	assert_int_equal(ncl_phase(f.c), NCL_IDLE);
	/* a late ack for the dropped round is ignored */
	feed_ack(&f, 4, 1, 0);
	assert_int_equal(nst_residual_round(f.st), 3);
	payload_fini(&p);
	tset_free(g);
	fx_teardown(&f);
}

/* Versions start at 0 (the coordinator's v0); the empty delta means "you
 * already hold it". */
static void test_version_zero_and_empty_delta(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	fx_up_welcome(&f, 0);
	tset *g = make_v0(f.layout, 15);
	payload p;
	payload_snapshot(&p, g, 0);
	feed_round_start(&f, 1, 0, p.sha, &p.ap, QT_Q4, 1);
	assert_int_equal(f.njobs, 2);
	assert_non_null(nst_global(f.st));
	assert_int_equal(nst_version(f.st), 0);
	fx_run_jobs(&f);
	feed_ack(&f, 1, 0, FEDLORA__UPDATE_ACK__REASON__REASON_LATE);
	/* round 2 on the same version: empty delta from 0 to 0 */
	Fedlora__AdapterPayload empty = FEDLORA__ADAPTER_PAYLOAD__INIT;
	empty.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	empty.to_sha256.data = p.sha;
	empty.to_sha256.len = 32;
	feed_round_start(&f, 2, 0, p.sha, &empty, QT_Q4, 1);
	assert_int_equal(fx_count(&f, FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST), 0);
	assert_int_equal(f.njobs, 1); /* version 0 already evaluated: train only */
	assert_int_equal(f.jobs[0]->kind, NCL_JOB_TRAIN);
	/* a restart still knows it holds version 0 */
	fx_close_client(&f);
	fx_open_client(&f);
	assert_non_null(nst_global(f.st));
	ncl_on_up(f.c, f.now);
	fx_drain(&f);
	const Fedlora__Join *j = fx_last(&f, FEDLORA__ENVELOPE__BODY_JOIN, NULL)->join;
	assert_int_equal(j->have_version, 0);
	assert_int_equal(j->have_sha256.len, 32);
	assert_memory_equal(j->have_sha256.data, p.sha, 32);
	payload_fini(&p);
	tset_free(g);
	fx_teardown(&f);
}

static void test_rejects(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	ncl_on_up(f.c, f.now);
	fx_drain(&f);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Reject r = FEDLORA__REJECT__INIT;
	r.reason = FEDLORA__REJECT__REASON__REASON_FULL;
	r.detail = "10000 sessions";
	env.body_case = FEDLORA__ENVELOPE__BODY_REJECT;
	env.reject = &r;
	fx_feed(&f, &env);
	assert_int_equal(f.resets, 1);
	assert_int_equal(f.fatal, 0);
	ncl_on_down(f.c, f.now, "reset");
	ncl_on_up(f.c, f.now);
	fx_drain(&f);
	r.reason = FEDLORA__REJECT__REASON__REASON_BASE_MISMATCH;
	r.detail = "base fingerprint 1234 differs from the federation's abcd";
	fx_feed(&f, &env);
	assert_int_equal(f.fatal, 1);
	assert_non_null(strstr(f.fatal_why, "base model mismatch"));
	assert_non_null(strstr(f.fatal_why, "differs from the federation"));
	assert_int_equal(ncl_phase(f.c), NCL_STOPPED);
	fx_teardown(&f);
}

static void test_welcome_spec_mismatch(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	ncl_on_up(f.c, f.now);
	fx_drain(&f);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Welcome w = FEDLORA__WELCOME__INIT;
	Fedlora__LoraSpec spec;
	char *names[LORA_NTARGETS];
	lora_spec other = f.cfg.lora;
	other.rank = 8;
	lora_spec_to_proto(&other, &spec, names);
	w.node_id = "n";
	w.lora = &spec;
	env.body_case = FEDLORA__ENVELOPE__BODY_WELCOME;
	env.welcome = &w;
	fx_feed(&f, &env);
	assert_int_equal(f.fatal, 1);
	assert_non_null(strstr(f.fatal_why, "rank 4 vs 8"));
	assert_int_equal(f.ready, 0);
	fx_teardown(&f);
}

/* FFA-LoRA: only lora_b travels; A of the local adapter equals global. */
static void test_ffa_only_b(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 1);
	fx_up_welcome(&f, 1);
	tset *g = make_v0(f.layout, 10);
	payload p;
	payload_snapshot(&p, g, 1);
	feed_round_start(&f, 1, 1, p.sha, &p.ap, QT_Q4, 1);
	fx_run_jobs(&f);
	const Fedlora__Envelope *e = fx_last(&f, FEDLORA__ENVELOPE__BODY_UPDATE, NULL);
	assert_non_null(e);
	assert_int_equal(e->update->delta->n_tensors, tset_count(f.layout) / 2);
	for (size_t i = 0; i < e->update->delta->n_tensors; i++)
		assert_true(lora_is_b(e->update->delta->tensors[i]->name));
	feed_ack(&f, 1, 1, 0);
	const tset *r = nst_residual(f.st);
	assert_int_equal(tset_count(r), tset_count(f.layout) / 2);
	payload_fini(&p);
	tset_free(g);
	fx_teardown(&f);
}

static void test_refused_update_keeps_residual(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	fx_up_welcome(&f, 1);
	tset *g = make_v0(f.layout, 11);
	payload p;
	payload_snapshot(&p, g, 1);
	feed_round_start(&f, 1, 1, p.sha, &p.ap, QT_Q2, 1);
	fx_run_jobs(&f);
	feed_ack(&f, 1, 0, FEDLORA__UPDATE_ACK__REASON__REASON_LATE);
	assert_null(nst_residual(f.st));
	assert_int_equal(nst_counters_get(f.st)->updates_rejected, 1);
	assert_int_equal(ncl_phase(f.c), NCL_IDLE);
	payload_fini(&p);
	tset_free(g);
	fx_teardown(&f);
}

static void test_heartbeat_states_and_bad_params(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	fx_up_welcome(&f, 1);
	assert_true(ncl_timeout(f.c, f.now) > 0);
	assert_true(ncl_timeout(f.c, f.now) <= 1000);
	tset *g = make_v0(f.layout, 12);
	payload p;
	payload_snapshot(&p, g, 1);
	/* invalid uplink block: refused with an Error, nothing started */
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__RoundStart rs = FEDLORA__ROUND_START__INIT;
	Fedlora__TrainParams tp = FEDLORA__TRAIN_PARAMS__INIT;
	tp.local_steps = 5;
	tp.lr = 0.01f;
	tp.uplink_format = FEDLORA__QFORMAT__QFORMAT_Q4;
	tp.uplink_block = 48;
	rs.round_id = 1;
	rs.global_version = 1;
	rs.global_sha256.data = p.sha;
	rs.global_sha256.len = 32;
	rs.params = &tp;
	rs.adapter = &p.ap;
	env.body_case = FEDLORA__ENVELOPE__BODY_ROUND_START;
	env.round_start = &rs;
	fx_feed(&f, &env);
	assert_int_equal(f.njobs, 0);
	const Fedlora__Envelope *er = fx_last(&f, FEDLORA__ENVELOPE__BODY_ERROR, NULL);
	assert_non_null(er);
	assert_non_null(strstr(er->error->detail, "block 48"));

	feed_round_start(&f, 2, 1, p.sha, &p.ap, QT_Q4, 1);
	assert_int_equal(ncl_phase(f.c), NCL_TRAINING);
	ncl_on_progress(f.c, f.jobs[1]->id, 7, 20, 0.5);
	f.now += 1000;
	ncl_tick(f.c, f.now);
	fx_drain(&f);
	const Fedlora__Envelope *hb = fx_last(&f, FEDLORA__ENVELOPE__BODY_HEARTBEAT, NULL);
	assert_non_null(hb);
	assert_int_equal(hb->heartbeat->state, FEDLORA__HEARTBEAT__STATE__STATE_TRAINING);
	int step = 0;
	for (size_t i = 0; i < hb->heartbeat->n_metrics; i++)
		if (strcmp(hb->heartbeat->metrics[i]->name, "train_step") == 0)
			step = (int)hb->heartbeat->metrics[i]->value;
	assert_int_equal(step, 7);
	fx_run_jobs(&f);
	f.now += 1000;
	fx_clear_sent(&f);
	ncl_tick(f.c, f.now);
	fx_drain(&f);
	hb = fx_last(&f, FEDLORA__ENVELOPE__BODY_HEARTBEAT, NULL);
	assert_non_null(hb);
	assert_int_equal(hb->heartbeat->state, FEDLORA__HEARTBEAT__STATE__STATE_UPLOADING);
	int has_eval = 0;
	for (size_t i = 0; i < hb->heartbeat->n_metrics; i++)
		has_eval |= strcmp(hb->heartbeat->metrics[i]->name, "eval_loss") == 0;
	assert_true(has_eval);

	/* stop: waits for the ack up to the grace period */
	ncl_stop(f.c, f.now, 500);
	assert_false(ncl_stop_done(f.c, f.now));
	assert_true(ncl_timeout(f.c, f.now) <= 500);
	assert_true(ncl_stop_done(f.c, f.now + 500));
	feed_ack(&f, 2, 1, 0);
	assert_true(ncl_stop_done(f.c, f.now));
	fx_clear_sent(&f);
	ncl_bye(f.c, "test");
	fx_drain(&f);
	assert_non_null(fx_last(&f, FEDLORA__ENVELOPE__BODY_BYE, NULL));
	assert_int_equal(ncl_phase(f.c), NCL_STOPPED);
	payload_fini(&p);
	tset_free(g);
	fx_teardown(&f);
}

/* Bye: "federation finished" marks the client finished (the run loop then
 * exits 0); any other reason does not (the coordinator may come back). */
static void test_bye_finished(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	fx_up_welcome(&f, 1);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Bye b = FEDLORA__BYE__INIT;
	env.body_case = FEDLORA__ENVELOPE__BODY_BYE;
	env.bye = &b;
	b.reason = "coordinator shutting down";
	fx_feed(&f, &env);
	assert_false(ncl_finished(f.c));
	b.reason = "federation finished, almost";
	fx_feed(&f, &env);
	assert_false(ncl_finished(f.c));
	b.reason = NCL_BYE_FINISHED;
	fx_feed(&f, &env);
	assert_true(ncl_finished(f.c));
	assert_int_equal(f.fatal, 0);
	fx_teardown(&f);
}

/* A new round while training cancels the old job; a result for a cancelled
 * job is ignored. */
static void test_superseded_round(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	f.cfg.eval = 0;
	fx_close_client(&f);
	fx_open_client(&f);
	fx_up_welcome(&f, 1);
	tset *g = make_v0(f.layout, 13);
	payload p;
	payload_snapshot(&p, g, 1);
	feed_round_start(&f, 1, 1, p.sha, &p.ap, QT_Q8, 0);
	assert_int_equal(f.njobs, 1);
	uint64_t old = f.jobs[0]->id;
	feed_round_start(&f, 2, 1, p.sha, NULL, QT_Q8, 0);
	assert_int_equal(f.ncancel, 1);
	assert_int_equal(f.cancelled[0], old);
	fx_run_jobs(&f); /* skips the cancelled one */
	const Fedlora__Envelope *e = fx_last(&f, FEDLORA__ENVELOPE__BODY_UPDATE, NULL);
	assert_non_null(e);
	assert_int_equal(e->update->round_id, 2);
	assert_int_equal(fx_count(&f, FEDLORA__ENVELOPE__BODY_UPDATE), 1);
	/* late result of the cancelled job: ignored */
	tset *junk = NULL;
	assert_int_equal(tset_zeros_like(g, &junk), 0);
	ntr_result res = {0};
	ncl_on_train_done(f.c, old, 0, junk, &res, f.now);
	fx_drain(&f);
	assert_int_equal(fx_count(&f, FEDLORA__ENVELOPE__BODY_UPDATE), 1);
	payload_fini(&p);
	tset_free(g);
	fx_teardown(&f);
}

/* Hostile payloads: unknown tensor names, wrong shapes, oversize counts. */
static void test_hostile_payloads(void **state)
{
	(void)state;
	fx f;
	fx_setup(&f, 0);
	fx_up_welcome(&f, 1);
	tset *g = make_v0(f.layout, 14);
	payload p;
	payload_snapshot(&p, g, 1);
	p.m[0].name = "blk.99.attn_q.lora_a";
	feed_round_start(&f, 1, 1, p.sha, &p.ap, QT_Q8, 0);
	assert_int_equal(f.njobs, 0);
	assert_int_equal(fx_count(&f, FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST), 1);
	p.m[0].name = p.q[0].name;
	/* duplicate tensor */
	p.pm[1] = &p.m[0];
	feed_round_start(&f, 2, 1, p.sha, &p.ap, QT_Q8, 0);
	assert_int_equal(f.njobs, 0);
	p.pm[1] = &p.m[1];
	/* wrong shape */
	uint64_t bad_shape[2] = {2, 64};
	p.m[0].shape = bad_shape;
	feed_round_start(&f, 3, 1, p.sha, &p.ap, QT_Q8, 0);
	assert_int_equal(f.njobs, 0);
	assert_int_equal(nst_version(f.st), 0);
	payload_fini(&p);
	tset_free(g);
	fx_teardown(&f);
}

int main(void)
{
	log_set_level(LOG_LVL_WARN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_join_fields),
	    cmocka_unit_test(test_rounds_snapshot_delta_restart),
	    cmocka_unit_test(test_mismatch_snapshot_request),
	    cmocka_unit_test(test_resend_after_reconnect),
	    cmocka_unit_test(test_version_zero_and_empty_delta),
	    cmocka_unit_test(test_rejects),
	    cmocka_unit_test(test_welcome_spec_mismatch),
	    cmocka_unit_test(test_ffa_only_b),
	    cmocka_unit_test(test_refused_update_keeps_residual),
	    cmocka_unit_test(test_heartbeat_states_and_bad_params),
	    cmocka_unit_test(test_bye_finished),
	    cmocka_unit_test(test_superseded_round),
	    cmocka_unit_test(test_hostile_payloads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
