/* fed: the coordinator state machine driven directly with simulated nodes
 * (no sockets): Join validation, round policy (sampling, deadline,
 * min_updates, abandon), UpdateAck refusals, Byzantine updates, exact
 * versions (a node applying the RoundStart bytes holds the coordinator's
 * fingerprint), snapshot vs delta downlink, reconnects, shutdown, resume
 * from the state directory, jobs completing asynchronously. */
#include "testutil.h"

#include "err.h"
#include "fed.h"
#include "journal.h"
#include "quant.h"
#include "sha.h"
#include "store.h"
#include "wire.h"

#include <math.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- harness: captures what fed sends ---- */

typedef struct msg {
	uint64_t peer;
	uint8_t *data;
	size_t len;
} msg;

typedef struct harness {
	msg *m;
	size_t n, cap;
	uint64_t closed[256];
	size_t nclosed;
	/* deferred jobs (async mode) */
	fed_job *jobs[64];
	size_t njobs;
} harness;

static void h_send(void *ud, const uint64_t *peers, size_t n, const uint8_t *data, size_t len)
{
	harness *h = ud;
	for (size_t i = 0; i < n; i++) {
		if (h->n == h->cap) {
			h->cap = h->cap ? h->cap * 2 : 64;
			h->m = realloc(h->m, h->cap * sizeof *h->m);
		}
		h->m[h->n].peer = peers[i];
		h->m[h->n].data = malloc(len ? len : 1);
		memcpy(h->m[h->n].data, data, len);
		h->m[h->n].len = len;
		h->n++;
	}
}

static void h_close(void *ud, uint64_t peer, const char *why)
{
	harness *h = ud;
	(void)why;
	if (h->nclosed < 256)
		h->closed[h->nclosed++] = peer;
}

static void h_submit(void *ud, fed_job *job)
{
	harness *h = ud;
	assert_true(h->njobs < 64);
	h->jobs[h->njobs++] = job;
}

static void h_clear(harness *h)
{
	for (size_t i = 0; i < h->n; i++)
		free(h->m[i].data);
	h->n = 0;
	h->nclosed = 0;
}

static void h_fini(harness *h)
{
	h_clear(h);
	free(h->m);
	memset(h, 0, sizeof *h);
}

static int h_was_closed(const harness *h, uint64_t peer)
{
	for (size_t i = 0; i < h->nclosed; i++)
		if (h->closed[i] == peer)
			return 1;
	return 0;
}

/* Runs deferred jobs in order (worker), completing each on the "loop". */
static void h_run_jobs(harness *h, fed *f, uint64_t now)
{
	while (h->njobs) {
		fed_job *j = h->jobs[0];
		memmove(h->jobs, h->jobs + 1, (h->njobs - 1) * sizeof h->jobs[0]);
		h->njobs--;
		fed_job_run(j);
		fed_job_done(f, j, now);
	}
}

/* ---- the federation under test ---- */

static uint8_t g_base[32];

static void opts(fed_opts *o)
{
	fed_opts_default(o);
	o->spec.rank = 4;
	o->spec.alpha = 8;
	o->spec.targets = (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V);
	o->spec.init_seed = 42;
	o->arch.n_layers = 2;
	o->arch.n_head = 4;
	o->arch.n_head_kv = 2;
	o->arch.in[LORA_ATTN_Q] = 48;
	o->arch.out[LORA_ATTN_Q] = 32;
	o->arch.in[LORA_ATTN_V] = 48;
	o->arch.out[LORA_ATTN_V] = 16;
	sha256("base model", 10, g_base);
	memcpy(o->base_sha, g_base, 32);
	o->min_nodes = 3;
	o->min_updates = 2;
	o->round_timeout_ms = 1000;
	o->start_delay_ms = 0;
	o->gone_grace_ms = 200;
	o->down_fmt = QT_Q8;
	o->down_block = 32;
	o->wall_ms = NULL;
}

static fed *mk_fed(const fed_opts *o, store *st, harness *h, int async)
{
	fed_io io = {.ud = h, .send = h_send, .close = h_close, .submit = async ? h_submit : NULL};
	fed *f = NULL;
	assert_int_equal(fed_new(o, st, NULL, &io, &f), 0);
	return f;
}

/* ---- simulated nodes ---- */

typedef struct sim {
	uint64_t peer;
	char cn[32];
	tset *ad; /* the adapter it holds */
	uint64_t version;
	int has;
	uint64_t round; /* last RoundStart */
	uint64_t round_version;
	int got_round_start, got_welcome, got_reject, got_error, got_bye;
	int reject_reason, error_code;
	int payload_kind; /* of the last RoundStart */
	uint64_t payload_from;
	size_t payload_tensors;
	int ack_seen, ack_accepted, ack_reason;
	char ack_detail[256];
	int end_seen, end_committed;
	uint64_t end_version;
	int sha_ok;            /* every applied payload matched its announced fingerprint */
	int got_final;         /* DownFinal received (and applied) */
	uint64_t join_samples; /* 0 = 100 */
} sim;

static void sim_init(sim *s, uint64_t peer, const char *cn)
{
	memset(s, 0, sizeof *s);
	s->peer = peer;
	snprintf(s->cn, sizeof s->cn, "%s", cn);
	s->sha_ok = 1;
}

static void sim_fini(sim *s)
{
	tset_free(s->ad);
	s->ad = NULL;
}

static void send_env(fed *f, uint64_t peer, Fedlora__Envelope *e, uint64_t now)
{
	buf b;
	buf_init(&b, 0);
	assert_int_equal(wire_encode(e, 0, &b), 0);
	fed_on_bytes(f, peer, b.data, b.len, now);
	buf_fini(&b);
}

static void layout_sha(const fed_opts *o, uint8_t out[32])
{
	tset *l;
	assert_int_equal(lora_layout(&o->spec, &o->arch, &l), 0);
	assert_int_equal(tset_shape_fingerprint(l, out), 0);
	tset_free(l);
}

/* Join with the federation's base/adapter unless overridden. */
static void sim_join_ex(fed *f, const fed_opts *o, sim *s, const uint8_t *base,
                        const uint8_t *ad_sha, uint32_t rank, uint64_t last_round, uint64_t now)
{
	fed_peer_up(f, s->peer, s->cn, now);
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	Fedlora__Join j = FEDLORA__JOIN__INIT;
	Fedlora__LoraSpec ls = FEDLORA__LORA_SPEC__INIT;
	char *tg[2] = {"attn_q", "attn_v"};
	uint8_t lsha[32], hsha[32];
	layout_sha(o, lsha);
	j.software_version = "test";
	j.sample_count = s->join_samples ? s->join_samples : 100;
	j.base_fingerprint.data = (uint8_t *)(base ? base : g_base);
	j.base_fingerprint.len = 32;
	j.adapter_fingerprint.data = (uint8_t *)(ad_sha ? ad_sha : lsha);
	j.adapter_fingerprint.len = 32;
	if (s->has) {
		assert_int_equal(tset_fingerprint(s->ad, hsha), 0);
		j.have_version = s->version;
		j.have_sha256.data = hsha;
		j.have_sha256.len = 32;
	}
	ls.rank = rank ? rank : o->spec.rank;
	ls.alpha = o->spec.alpha;
	ls.n_targets = 2;
	ls.targets = tg;
	ls.init_seed = o->spec.init_seed;
	ls.ffa = o->spec.ffa;
	j.lora = &ls;
	j.last_round_id = last_round;
	e.body_case = FEDLORA__ENVELOPE__BODY_JOIN;
	e.join = &j;
	send_env(f, s->peer, &e, now);
}

static void sim_join(fed *f, const fed_opts *o, sim *s, uint64_t now)
{
	sim_join_ex(f, o, s, NULL, NULL, 0, 0, now);
}

/* Applies one AdapterPayload the way a node does. */
static void sim_apply(sim *s, const Fedlora__AdapterPayload *p)
{
	s->payload_kind = p->kind;
	s->payload_from = p->from_version;
	s->payload_tensors = p->n_tensors;
	if (p->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT) {
		tset *n;
		assert_int_equal(tset_new(&n), 0);
		for (size_t i = 0; i < p->n_tensors; i++) {
			qtensor q;
			qt_init(&q);
			char why[200];
			assert_int_equal(qt_from_proto(p->tensors[i], NULL, &q, why, sizeof why),
			                 0);
			tensor *t;
			assert_int_equal(tset_insert(n, q.name, q.ndim, q.shape, NULL, &t), 0);
			assert_int_equal(quant_decode(&q, t->data, t->n), 0);
			qt_fini(&q);
		}
		tset_free(s->ad);
		s->ad = n;
	} else {
		assert_int_equal(p->kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
		assert_true(s->has);
		assert_int_equal(p->from_version, s->version);
		qtensor *qs = calloc(p->n_tensors + 1, sizeof *qs);
		for (size_t i = 0; i < p->n_tensors; i++) {
			qt_init(&qs[i]);
			char why[200];
			assert_int_equal(
			    qt_from_proto(p->tensors[i], NULL, &qs[i], why, sizeof why), 0);
		}
		assert_int_equal(quant_apply_set(s->ad, qs, p->n_tensors), 0);
		for (size_t i = 0; i < p->n_tensors; i++)
			qt_fini(&qs[i]);
		free(qs);
	}
	uint8_t fp[32];
	assert_int_equal(tset_fingerprint(s->ad, fp), 0);
	if (p->to_sha256.len != 32 || memcmp(fp, p->to_sha256.data, 32))
		s->sha_ok = 0;
	s->version = p->to_version;
	s->has = 1;
}

/* Consumes every message the harness holds for this node. */
static void sim_recv(harness *h, sim *s)
{
	size_t k = 0;
	for (size_t i = 0; i < h->n; i++) {
		if (h->m[i].peer != s->peer) {
			h->m[k++] = h->m[i];
			continue;
		}
		wire_msg *w;
		assert_int_equal(wire_decode(h->m[i].data, h->m[i].len, 1u << 30, 0, &w), 0);
		const Fedlora__Envelope *e = wire_env(w);
		switch (e->body_case) {
		case FEDLORA__ENVELOPE__BODY_WELCOME:
			s->got_welcome++;
			break;
		case FEDLORA__ENVELOPE__BODY_REJECT:
			s->got_reject++;
			s->reject_reason = e->reject->reason;
			break;
		case FEDLORA__ENVELOPE__BODY_ERROR:
			s->got_error++;
			s->error_code = e->error->code;
			break;
		case FEDLORA__ENVELOPE__BODY_BYE:
			s->got_bye++;
			break;
		case FEDLORA__ENVELOPE__BODY_ROUND_START: {
			const Fedlora__RoundStart *r = e->round_start;
			s->got_round_start++;
			s->round = r->round_id;
			s->round_version = r->global_version;
			assert_non_null(r->adapter);
			assert_non_null(r->params);
			assert_true(r->deadline_ms > 0);
			sim_apply(s, r->adapter);
			assert_int_equal(s->version, r->global_version);
			uint8_t fp[32];
			assert_int_equal(tset_fingerprint(s->ad, fp), 0);
			if (r->global_sha256.len != 32 || memcmp(fp, r->global_sha256.data, 32))
				s->sha_ok = 0;
			break;
		}
		case FEDLORA__ENVELOPE__BODY_DOWN_FINAL: {
			const Fedlora__DownFinal *df = e->down_final;
			s->got_final++;
			sim_apply(s, df->adapter);
			assert_int_equal(s->version, df->version);
			uint8_t fp[32];
			assert_int_equal(tset_fingerprint(s->ad, fp), 0);
			if (df->sha256.len != 32 || memcmp(fp, df->sha256.data, 32))
				s->sha_ok = 0;
			break;
		}
		case FEDLORA__ENVELOPE__BODY_UPDATE_ACK:
			s->ack_seen++;
			s->ack_accepted = e->update_ack->accepted;
			s->ack_reason = e->update_ack->reason;
			snprintf(s->ack_detail, sizeof s->ack_detail, "%s",
			         e->update_ack->detail ? e->update_ack->detail : "");
			break;
		case FEDLORA__ENVELOPE__BODY_ROUND_END:
			s->end_seen++;
			s->end_committed = e->round_end->committed;
			s->end_version = e->round_end->version;
			break;
		default:
			fail_msg("unexpected %s to a node", wire_body_name(e));
		}
		wire_free(w);
		free(h->m[i].data);
	}
	h->n = k;
}

/* A delta over the exchanged tensors of the node's adapter. */
static tset *mk_delta(const sim *s, int ffa, double sigma, uint64_t *seed)
{
	tset *d;
	assert_int_equal(tset_new(&d), 0);
	for (size_t i = 0; i < tset_count(s->ad); i++) {
		const tensor *t = tset_at(s->ad, i);
		if (ffa && !strstr(t->name, "lora_b"))
			continue;
		tensor *x;
		assert_int_equal(tset_insert(d, t->name, t->ndim, t->shape, NULL, &x), 0);
		for (size_t k = 0; k < x->n; k++)
			x->data[k] = (float)((tu_randu(seed) * 2 - 1) * sigma);
	}
	return d;
}

/* Sends an Update with delta quantized as fmt. Optional: poke a value. */
static void sim_update_ex(fed *f, sim *s, const tset *delta, enum qt_fmt fmt, uint64_t round,
                          uint64_t base, uint64_t samples, float poke, uint64_t now)
{
	size_t n = tset_count(delta);
	qtensor *qs = calloc(n, sizeof *qs);
	Fedlora__QTensor *qm = calloc(n, sizeof *qm);
	Fedlora__QTensor **qp = calloc(n, sizeof *qp);
	quant_params p = {.fmt = fmt, .block = (fmt == QT_F32 || fmt == QT_F16) ? 0 : 32};
	uint8_t *poked = NULL;
	for (size_t i = 0; i < n; i++) {
		qt_init(&qs[i]);
		assert_int_equal(quant_encode_tensor(&p, tset_at(delta, i), &qs[i]), 0);
		qt_to_proto(&qs[i], &qm[i]);
		qp[i] = &qm[i];
	}
	if (poke != 0 && fmt == QT_F32) {
		poked = malloc(qm[0].data.len);
		memcpy(poked, qm[0].data.data, qm[0].data.len);
		memcpy(poked + 4, &poke, 4);
		qm[0].data.data = poked;
	}
	Fedlora__AdapterPayload pl = FEDLORA__ADAPTER_PAYLOAD__INIT;
	pl.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	pl.from_version = base;
	pl.to_version = base;
	pl.n_tensors = n;
	pl.tensors = qp;
	Fedlora__Metric m1 = FEDLORA__METRIC__INIT, *mp[1] = {&m1};
	m1.name = "train_loss";
	m1.value = 2.5;
	Fedlora__Update u = FEDLORA__UPDATE__INIT;
	u.round_id = round;
	u.base_version = base;
	u.sample_count = samples;
	u.n_metrics = 1;
	u.metrics = mp;
	u.delta = &pl;
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	e.body_case = FEDLORA__ENVELOPE__BODY_UPDATE;
	e.update = &u;
	send_env(f, s->peer, &e, now);
	for (size_t i = 0; i < n; i++)
		qt_fini(&qs[i]);
	free(qs);
	free(qm);
	free(qp);
	free(poked);
}

static void sim_update(fed *f, sim *s, const tset *delta, uint64_t samples, uint64_t now)
{
	sim_update_ex(f, s, delta, QT_Q4, s->round, s->round_version, samples, 0, now);
}

static void assert_same_global(const fed *f, const sim *s)
{
	uint8_t a[32], b[32];
	fed_version_sha(f, a);
	assert_non_null(s->ad);
	assert_int_equal(tset_fingerprint(s->ad, b), 0);
	assert_memory_equal(a, b, 32);
	assert_int_equal(s->version, fed_version(f));
	assert_true(s->sha_ok);
}

/* ---- tests ---- */

static void test_join_validation(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim a, b, c, d, e, g;
	sim_init(&a, 1, "node-a");
	sim_init(&b, 2, "node-b");
	sim_init(&c, 3, "node-c");
	sim_init(&d, 4, "node-d");
	sim_init(&e, 5, "node-e");
	sim_init(&g, 6, "node-g");
	uint8_t other[32];
	memset(other, 7, 32);
	sim_join_ex(f, &o, &a, other, NULL, 0, 0, 0);
	sim_recv(&h, &a);
	assert_int_equal(a.got_reject, 1);
	assert_int_equal(a.reject_reason, FEDLORA__REJECT__REASON__REASON_BASE_MISMATCH);
	assert_true(h_was_closed(&h, 1));
	sim_join_ex(f, &o, &b, NULL, other, 0, 0, 0);
	sim_recv(&h, &b);
	assert_int_equal(b.reject_reason, FEDLORA__REJECT__REASON__REASON_ADAPTER_MISMATCH);
	sim_join_ex(f, &o, &c, NULL, NULL, 8, 0, 0); /* rank 8 */
	sim_recv(&h, &c);
	assert_int_equal(c.reject_reason, FEDLORA__REJECT__REASON__REASON_ADAPTER_MISMATCH);
	/* a message before Join */
	fed_peer_up(f, 4, "node-d", 0);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Heartbeat hb = FEDLORA__HEARTBEAT__INIT;
	env.body_case = FEDLORA__ENVELOPE__BODY_HEARTBEAT;
	env.heartbeat = &hb;
	send_env(f, 4, &env, 0);
	sim_recv(&h, &d);
	assert_int_equal(d.got_error, 1);
	assert_int_equal(d.error_code, FEDLORA__ERROR__CODE__CODE_UNEXPECTED);
	assert_true(h_was_closed(&h, 4));
	/* garbage */
	fed_peer_up(f, 5, "node-e", 0);
	fed_on_bytes(f, 5, (const uint8_t *)"\xff\xff\xff\xff garbage", 12, 0);
	sim_recv(&h, &e);
	assert_int_equal(e.got_error, 1);
	assert_int_equal(e.error_code, FEDLORA__ERROR__CODE__CODE_MALFORMED);
	assert_true(h_was_closed(&h, 5));
	/* a good one */
	sim_join(f, &o, &g, 0);
	sim_recv(&h, &g);
	assert_int_equal(g.got_welcome, 1);
	assert_int_equal(g.got_reject, 0);
	assert_int_equal(fed_nodes_connected(f), 1);
	assert_string_equal(fed_node_state(f, "node-g"), "idle");
	/* a second Join on the same session is a protocol error */
	sim_join(f, &o, &g, 0);
	sim_recv(&h, &g);
	assert_int_equal(g.got_error, 1);
	fed_free(f);
	h_fini(&h);
	sim_fini(&g);
}

/* Three nodes, two rounds: exact versions through snapshot then delta, and
 * the committed step is the FedAvg of the updates (checked in double). */
static void test_rounds_exact(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[3];
	const char *cn[3] = {"n1", "n2", "n3"};
	for (int i = 0; i < 3; i++) {
		sim_init(&s[i], (uint64_t)(10 + i), cn[i]);
		sim_join(f, &o, &s[i], 0);
	}
	assert_int_equal(fed_get_state(f), FED_IDLE);
	assert_int_equal(fed_timeout(f, 0), 0);
	fed_tick(f, 0);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	assert_int_equal(fed_round_id(f), 1);
	uint64_t seed = 77;
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].got_round_start, 1);
		assert_int_equal(s[i].payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
		assert_same_global(f, &s[i]);
		assert_string_equal(fed_node_state(f, cn[i]), "training");
	}
	const tset *v0 = fed_global(f);
	tset *g0;
	assert_int_equal(tset_clone(v0, &g0), 0);
	/* lora_a is Kaiming-uniform with bound 1/sqrt(in), lora_b zero */
	const tensor *a0 = tset_find(g0, "blk.0.attn_q.lora_a");
	const tensor *b0 = tset_find(g0, "blk.1.attn_v.lora_b");
	assert_non_null(a0);
	assert_non_null(b0);
	double amax = 0;
	for (size_t k = 0; k < a0->n; k++)
		amax = fmax(amax, fabs(a0->data[k]));
	assert_true(amax <= 1.0 / sqrt(48.0) && amax > 0.5 / sqrt(48.0));
	assert_true(tset_norm(g0) > 0);
	double bn = 0;
	for (size_t k = 0; k < b0->n; k++)
		bn += fabs(b0->data[k]);
	assert_true(bn == 0);

	uint64_t samples[3] = {10, 30, 60};
	tset *d[3];
	for (int i = 0; i < 3; i++) {
		d[i] = mk_delta(&s[i], 0, 0.01, &seed);
		sim_update(f, &s[i], d[i], samples[i], 10);
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].ack_seen, 1);
		if (!s[i].ack_accepted)
			fail_msg("update refused: %s", s[i].ack_detail);
	}
	/* all answered: committed without waiting for the deadline */
	assert_int_equal(fed_get_state(f), FED_IDLE);
	assert_int_equal(fed_version(f), 1);
	assert_int_equal(fed_rounds_committed(f), 1);
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].end_seen, 1);
		assert_true(s[i].end_committed);
		assert_int_equal(s[i].end_version, 1);
	}
	/* v1 - v0 is the sample-weighted mean of the dequantized q4 updates, up
	 * to the q8 downlink rounding (half a q8 step of each block) */
	const tset *v1 = fed_global(f);
	double maxerr = 0, maxval = 0;
	for (size_t t = 0; t < tset_count(v1); t++) {
		const tensor *x1 = tset_at(v1, t), *x0 = tset_find(g0, x1->name);
		float *dq[3];
		for (int i = 0; i < 3; i++) {
			const tensor *di = tset_find(d[i], x1->name);
			qtensor q;
			qt_init(&q);
			quant_params p = {.fmt = QT_Q4, .block = 32};
			assert_int_equal(quant_encode_tensor(&p, di, &q), 0);
			dq[i] = malloc(di->n * sizeof(float));
			assert_int_equal(quant_decode(&q, dq[i], di->n), 0);
			qt_fini(&q);
		}
		for (size_t k = 0; k < x1->n; k++) {
			double ref = (10.0 * dq[0][k] + 30.0 * dq[1][k] + 60.0 * dq[2][k]) / 100.0;
			double got = (double)x1->data[k] - (double)x0->data[k];
			maxerr = fmax(maxerr, fabs(got - ref));
			maxval = fmax(maxval, fabs(ref));
		}
		for (int i = 0; i < 3; i++)
			free(dq[i]);
	}
	/* q8: step <= absmax/127 per block, so error <= maxval/254 (+ f32 noise) */
	if (!(maxerr <= maxval / 254.0 * 1.01 + 1e-7))
		fail_msg("v1 - v0 differs from the FedAvg reference by %g (scale %g)", maxerr,
		         maxval);
	/* round 2: nodes hold v0, so they get the delta v0 -> v1 */
	fed_tick(f, 20);
	assert_int_equal(fed_round_id(f), 2);
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
		assert_int_equal(s[i].payload_from, 0);
		assert_same_global(f, &s[i]); /* bit-identical */
	}
	for (int i = 0; i < 3; i++)
		tset_free(d[i]);
	for (int i = 0; i < 3; i++) {
		d[i] = mk_delta(&s[i], 0, 0.01, &seed);
		sim_update(f, &s[i], d[i], samples[i], 30);
		sim_recv(&h, &s[i]);
		tset_free(d[i]);
	}
	assert_int_equal(fed_version(f), 2);
	fed_tick(f, 40);
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
		assert_int_equal(s[i].payload_from, 1);
		assert_same_global(f, &s[i]);
		sim_fini(&s[i]);
	}
	tset_free(g0);
	fed_free(f);
	h_fini(&h);
}

/* A node that never answers: the round waits until the deadline, not
 * longer; below min_updates it is abandoned and the version unchanged. */
static void test_deadline_and_abandon(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[3];
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "n%d", i);
		sim_init(&s[i], (uint64_t)(20 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	fed_tick(f, 100);
	uint64_t seed = 5;
	for (int i = 0; i < 3; i++)
		sim_recv(&h, &s[i]);
	/* round 1: two answer, one silent */
	for (int i = 0; i < 2; i++) {
		tset *d = mk_delta(&s[i], 0, 0.01, &seed);
		sim_update(f, &s[i], d, 5, 200);
		tset_free(d);
	}
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	assert_int_equal(fed_timeout(f, 200), 900);
	fed_tick(f, 1099);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	fed_tick(f, 1100); /* the deadline */
	assert_int_equal(fed_get_state(f), FED_IDLE);
	assert_int_equal(fed_version(f), 1);
	/* a late update from the silent node is refused as LATE */
	sim_recv(&h, &s[2]);
	tset *d = mk_delta(&s[2], 0, 0.01, &seed);
	sim_update(f, &s[2], d, 5, 1101);
	sim_recv(&h, &s[2]);
	assert_false(s[2].ack_accepted);
	assert_int_equal(s[2].ack_reason, FEDLORA__UPDATE_ACK__REASON__REASON_LATE);
	tset_free(d);
	/* round 2: only one answers -> abandoned, version unchanged */
	fed_tick(f, 1200);
	assert_int_equal(fed_round_id(f), 2);
	for (int i = 0; i < 3; i++)
		sim_recv(&h, &s[i]);
	d = mk_delta(&s[0], 0, 0.01, &seed);
	sim_update(f, &s[0], d, 5, 1300);
	tset_free(d);
	fed_tick(f, 2200);
	assert_int_equal(fed_get_state(f), FED_IDLE);
	assert_int_equal(fed_version(f), 1);
	assert_int_equal(fed_rounds_abandoned(f), 1);
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_false(s[i].end_committed);
		assert_int_equal(s[i].end_version, 1);
	}
	/* the next round still runs from version 1 */
	fed_tick(f, 2300);
	sim_recv(&h, &s[0]);
	assert_int_equal(s[0].round, 3);
	assert_same_global(f, &s[0]);
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	fed_free(f);
	h_fini(&h);
}

static void expect_ack(harness *h, sim *s, int reason)
{
	s->ack_seen = 0;
	sim_recv(h, s);
	assert_int_equal(s->ack_seen, 1);
	if (s->ack_reason != reason)
		fail_msg("%s: ack reason %d (%s), expected %d", s->cn, s->ack_reason, s->ack_detail,
		         reason);
	assert_int_equal(s->ack_accepted, reason == 0);
}

static void test_refusals(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 3;
	o.nodes_per_round = 2;
	o.agg.reject_norm = 100.0;
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[3];
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "r%d", i);
		sim_init(&s[i], (uint64_t)(30 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	fed_tick(f, 0);
	sim *in[2], *out = NULL;
	size_t ni = 0;
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		if (s[i].got_round_start)
			in[ni++] = &s[i];
		else
			out = &s[i];
	}
	assert_int_equal(ni, 2);
	assert_non_null(out);
	const char *pc[4];
	assert_int_equal(fed_participants(f, pc, 4), 2);
	uint64_t seed = 9;
	tset *d = mk_delta(in[0], 0, 0.01, &seed);
	/* not sampled (it has no adapter: reuse a participant's delta) */
	sim_update_ex(f, out, d, QT_Q4, 1, 0, 5, 0, 1);
	expect_ack(&h, out, FEDLORA__UPDATE_ACK__REASON__REASON_NOT_SAMPLED);
	/* wrong round */
	sim_update_ex(f, in[0], d, QT_Q4, 7, 0, 5, 0, 1);
	expect_ack(&h, in[0], FEDLORA__UPDATE_ACK__REASON__REASON_WRONG_ROUND);
	/* huge norm -> refused by reject_norm (and counts as the answer) */
	tset *big = mk_delta(in[1], 0, 1000.0, &seed);
	sim_update_ex(f, in[1], big, QT_F32, 1, 0, 5, 0, 1);
	expect_ack(&h, in[1], FEDLORA__UPDATE_ACK__REASON__REASON_NORM);
	/* ... and anything further from it is a duplicate */
	sim_update_ex(f, in[1], d, QT_Q4, 1, 0, 5, 0, 1);
	expect_ack(&h, in[1], FEDLORA__UPDATE_ACK__REASON__REASON_DUPLICATE);
	/* stale base version */
	sim_update_ex(f, in[0], d, QT_Q4, 1, 3, 5, 0, 1);
	expect_ack(&h, in[0], FEDLORA__UPDATE_ACK__REASON__REASON_STALE);
	assert_int_equal(fed_get_state(f), FED_IDLE); /* both answered: round over */
	assert_int_equal(fed_rounds_abandoned(f), 1);
	tset_free(big);
	/* round 2: malformed shape, NaN, a good one, then a duplicate */
	fed_tick(f, 10);
	ni = 0;
	for (int i = 0; i < 3; i++) {
		s[i].got_round_start = 0;
		sim_recv(&h, &s[i]);
		if (s[i].got_round_start)
			in[ni++] = &s[i];
	}
	assert_int_equal(ni, 2);
	tset *bad;
	assert_int_equal(tset_new(&bad), 0);
	uint64_t sh[2] = {4, 48};
	assert_int_equal(tset_insert(bad, "blk.0.attn_q.lora_a", 2, sh, NULL, NULL), 0);
	sim_update(f, in[0], bad, 5, 11);
	expect_ack(&h, in[0], FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED);
	tset_free(bad);
	tset_free(d);
	d = mk_delta(in[1], 0, 0.01, &seed);
	sim_update_ex(f, in[1], d, QT_F32, 2, 0, 5, NAN, 11);
	expect_ack(&h, in[1], FEDLORA__UPDATE_ACK__REASON__REASON_NON_FINITE);
	assert_int_equal(fed_version(f), 0);
	tset_free(d);
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	fed_free(f);
	h_fini(&h);
}

/* Byzantine nodes: one huge-norm update (clipped), one NaN (refused); the
 * global stays finite and moves by at most the clip bound (+ rounding). */
static void test_byzantine(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.agg.clip_norm = 0.5;
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[3];
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "b%d", i);
		sim_init(&s[i], (uint64_t)(40 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	fed_tick(f, 0);
	for (int i = 0; i < 3; i++)
		sim_recv(&h, &s[i]);
	tset *g0;
	assert_int_equal(tset_clone(fed_global(f), &g0), 0);
	uint64_t seed = 3;
	tset *good = mk_delta(&s[0], 0, 0.001, &seed);
	tset *huge = mk_delta(&s[1], 0, 1e6, &seed);
	tset *nanu = mk_delta(&s[2], 0, 0.001, &seed);
	sim_update_ex(f, &s[0], good, QT_Q4, 1, 0, 10, 0, 1);
	expect_ack(&h, &s[0], 0);
	sim_update_ex(f, &s[1], huge, QT_F32, 1, 0, 1000000, 0, 1);
	expect_ack(&h, &s[1], 0); /* accepted, scaled to the clip bound */
	sim_update_ex(f, &s[2], nanu, QT_F32, 1, 0, 10, INFINITY, 1);
	expect_ack(&h, &s[2], FEDLORA__UPDATE_ACK__REASON__REASON_NON_FINITE);
	assert_int_equal(fed_version(f), 1);
	const tset *g1 = fed_global(f);
	assert_true(tset_all_finite(g1, NULL));
	tset *diff;
	assert_int_equal(tset_clone(g1, &diff), 0);
	assert_int_equal(tset_sub(diff, g0), 0);
	/* weighted mean of something with norm <= 0.5 and a tiny update */
	double dn = tset_norm(diff);
	if (!(dn <= 0.5 * 1.02))
		fail_msg("global moved by %g, clip bound is 0.5", dn);
	tset_free(diff);
	tset_free(g0);
	tset_free(good);
	tset_free(huge);
	tset_free(nanu);
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	fed_free(f);
	h_fini(&h);
}

/* Downlink: a node with no version or a wrong one gets a snapshot; one at
 * the parent gets the delta; one at the current version an empty delta; a
 * SnapshotRequest during a round gets the snapshot. */
static void test_snapshot_vs_delta(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 2;
	o.min_updates = 1;
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim a, b;
	sim_init(&a, 50, "a");
	sim_init(&b, 51, "b");
	sim_join(f, &o, &a, 0);
	sim_join(f, &o, &b, 0);
	uint64_t seed = 4;
	sim_join(f, &o, &a, 0);
	sim_join(f, &o, &b, 0);
	fed_tick(f, 0);
	sim_recv(&h, &a);
	sim_recv(&h, &b);
	assert_int_equal(a.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	tset *d = mk_delta(&a, 0, 0.01, &seed);
	sim_update(f, &a, d, 1, 1);
	sim_update(f, &b, d, 1, 1);
	tset_free(d);
	sim_recv(&h, &a);
	sim_recv(&h, &b);
	assert_int_equal(fed_version(f), 1);
	/* b leaves holding v0; a stays and will be at v1 after round 2 */
	fed_peer_gone(f, b.peer, 2);
	sim c, e;
	sim_init(&c, 62, "c");
	sim_join(f, &o, &c, 2); /* no version */
	fed_tick(f, 3);         /* round 2 with a and c */
	sim_recv(&h, &a);
	sim_recv(&h, &c);
	assert_int_equal(a.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_int_equal(c.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	assert_same_global(f, &a);
	assert_same_global(f, &c);
	/* c asks for a snapshot mid-round (say its hash check failed) */
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__SnapshotRequest sr = FEDLORA__SNAPSHOT_REQUEST__INIT;
	sr.have_version = 1;
	sr.round_id = 2;
	env.body_case = FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST;
	env.snapshot_request = &sr;
	c.got_round_start = 0;
	send_env(f, 62, &env, 4);
	sim_recv(&h, &c);
	assert_int_equal(c.got_round_start, 1);
	assert_int_equal(c.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	d = mk_delta(&a, 0, 0.01, &seed);
	sim_update(f, &a, d, 1, 5);
	sim_update(f, &c, d, 1, 5);
	tset_free(d);
	sim_recv(&h, &a);
	sim_recv(&h, &c);
	assert_int_equal(fed_version(f), 2);
	/* b comes back holding v0 (two behind): snapshot. e claims v2 with a
	 * wrong hash: snapshot. a holds v1 = parent: delta. */
	sim_fini(&b);
	sim_init(&b, 63, "b");
	sim_join(f, &o, &b, 6);
	sim_init(&e, 64, "e");
	e.has = 1;
	assert_int_equal(tset_clone(a.ad, &e.ad), 0);
	tset_at(e.ad, 0)->data[0] += 1.0f; /* wrong content */
	e.version = 2;
	sim_join(f, &o, &e, 6);
	fed_tick(f, 7);
	const char *pc[8];
	assert_int_equal(fed_participants(f, pc, 8), 4);
	sim_recv(&h, &a);
	sim_recv(&h, &b);
	sim_recv(&h, &c);
	sim_recv(&h, &e);
	assert_int_equal(b.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	assert_int_equal(e.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	/* c and a were sent v1 in round 2 and hold it: the delta v1 -> v2 */
	assert_int_equal(a.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_int_equal(c.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_same_global(f, &a);
	assert_same_global(f, &b);
	assert_same_global(f, &c);
	assert_same_global(f, &e);
	/* a node rejoining at the current version gets an empty delta */
	fed_peer_gone(f, 64, 8);
	sim e2;
	sim_init(&e2, 65, "e");
	e2.has = 1;
	e2.version = e.version;
	assert_int_equal(tset_clone(e.ad, &e2.ad), 0);
	sim_join_ex(f, &o, &e2, NULL, NULL, 0, 0, 8);
	sim_recv(&h, &e2);
	assert_int_equal(e2.got_welcome, 1);
	/* it is a participant of round 3 that has not uploaded: the round again,
	 * with nothing to apply */
	assert_int_equal(e2.got_round_start, 1);
	assert_int_equal(e2.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_int_equal(e2.payload_tensors, 0);
	assert_same_global(f, &e2);
	sim_fini(&a);
	sim_fini(&b);
	sim_fini(&c);
	sim_fini(&e);
	sim_fini(&e2);
	fed_free(f);
	h_fini(&h);
}

/* A participant that disconnects and comes back during its round. */
static void test_reconnect(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[3];
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "c%d", i);
		sim_init(&s[i], (uint64_t)(70 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	fed_tick(f, 0);
	for (int i = 0; i < 3; i++)
		sim_recv(&h, &s[i]);
	uint64_t seed = 8;
	tset *d = mk_delta(&s[0], 0, 0.01, &seed);
	/* c0 drops and comes back (new session) before uploading: it gets the
	 * round again (nothing to apply: it holds the version), then its update
	 * is accepted */
	fed_peer_gone(f, 70, 10);
	assert_string_equal(fed_node_state(f, "c0"), "gone");
	s[0].peer = 170;
	s[0].got_round_start = 0;
	sim_join(f, &o, &s[0], 20);
	sim_recv(&h, &s[0]);
	assert_int_equal(s[0].got_round_start, 1);
	assert_int_equal(s[0].payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_int_equal(s[0].payload_tensors, 0);
	sim_update(f, &s[0], d, 5, 30);
	expect_ack(&h, &s[0], 0);
	/* c1 drops mid-upload and comes back saying it uploaded for round 1:
	 * no RoundStart; its resent update is accepted */
	fed_peer_gone(f, 71, 40);
	s[1].peer = 171;
	s[1].got_round_start = 0;
	sim_join_ex(f, &o, &s[1], NULL, NULL, 0, 1, 50);
	sim_recv(&h, &s[1]);
	assert_int_equal(s[1].got_welcome, 2);
	assert_int_equal(s[1].got_round_start, 0);
	sim_update(f, &s[1], d, 5, 60);
	expect_ack(&h, &s[1], 0);
	/* the round still waits for c2, which is connected */
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	/* c2 drops for good: the round closes after the grace period, well
	 * before the deadline (1000) */
	fed_peer_gone(f, 72, 100);
	assert_int_equal(fed_timeout(f, 100), 200);
	fed_tick(f, 299);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	fed_tick(f, 300);
	assert_int_equal(fed_get_state(f), FED_IDLE);
	assert_int_equal(fed_version(f), 1);
	/* a node of the same CN replacing a live session takes it over */
	sim dup;
	sim_init(&dup, 999, "c0");
	sim_join(f, &o, &dup, 310);
	assert_true(h_was_closed(&h, 170));
	sim_recv(&h, &dup);
	assert_int_equal(dup.got_welcome, 1);
	fed_peer_gone(f, 170, 320); /* the old session's end changes nothing */
	assert_string_equal(fed_node_state(f, "c0"), "idle");
	assert_int_equal(fed_nodes_connected(f), 2);
	sim_fini(&dup);
	tset_free(d);
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	fed_free(f);
	h_fini(&h);
}

/* Jobs completing later (worker thread): the loop keeps serving, the
 * deadline closes collection but the round waits for in-flight updates. */
static void test_async_jobs(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	fed *f = mk_fed(&o, NULL, &h, 1);
	sim s[3];
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "j%d", i);
		sim_init(&s[i], (uint64_t)(80 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	fed_tick(f, 0);
	for (int i = 0; i < 3; i++)
		sim_recv(&h, &s[i]);
	uint64_t seed = 21;
	tset *d = mk_delta(&s[0], 0, 0.01, &seed);
	sim_update(f, &s[0], d, 5, 10);
	sim_update(f, &s[1], d, 5, 20);
	assert_int_equal(h.njobs, 2);
	assert_false(fed_idle(f));
	/* while they are in flight: heartbeats are served, a duplicate is
	 * refused at once */
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Heartbeat hb = FEDLORA__HEARTBEAT__INIT;
	hb.state = FEDLORA__HEARTBEAT__STATE__STATE_TRAINING;
	env.body_case = FEDLORA__ENVELOPE__BODY_HEARTBEAT;
	env.heartbeat = &hb;
	send_env(f, 82, &env, 30);
	sim_update(f, &s[0], d, 5, 40);
	expect_ack(&h, &s[0], FEDLORA__UPDATE_ACK__REASON__REASON_DUPLICATE);
	/* deadline: collection closes, the round waits for the two jobs */
	fed_tick(f, 1000);
	assert_int_equal(fed_get_state(f), FED_CLOSING);
	sim_update(f, &s[2], d, 5, 1001);
	expect_ack(&h, &s[2], FEDLORA__UPDATE_ACK__REASON__REASON_LATE);
	/* first job done: still closing */
	fed_job *j = h.jobs[0];
	memmove(h.jobs, h.jobs + 1, sizeof h.jobs[0]);
	h.njobs--;
	fed_job_run(j);
	fed_job_done(f, j, 1100);
	assert_int_equal(fed_get_state(f), FED_CLOSING);
	expect_ack(&h, &s[0], 0);
	/* second: the commit job is queued */
	j = h.jobs[0];
	h.njobs--;
	fed_job_run(j);
	fed_job_done(f, j, 1200);
	assert_int_equal(fed_get_state(f), FED_COMMITTING);
	assert_int_equal(h.njobs, 1);
	/* a Join during the commit is served */
	sim late;
	sim_init(&late, 89, "late");
	sim_join(f, &o, &late, 1250);
	sim_recv(&h, &late);
	assert_int_equal(late.got_welcome, 1);
	h_run_jobs(&h, f, 1300);
	assert_int_equal(fed_get_state(f), FED_IDLE);
	assert_int_equal(fed_version(f), 1);
	assert_true(fed_idle(f));
	tset_free(d);
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	sim_fini(&late);
	fed_free(f);
	h_fini(&h);
}

/* One round where every participant answers with a delta drawn from seed. */
static void run_round(fed *f, harness *h, sim *s, int n, uint64_t seed, uint64_t now)
{
	fed_tick(f, now);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	for (int i = 0; i < n; i++) {
		s[i].got_round_start = 0;
		sim_recv(h, &s[i]);
	}
	for (int i = 0; i < n; i++) {
		if (!s[i].got_round_start)
			continue;
		uint64_t sd = seed * 31 + (uint64_t)i;
		tset *d = mk_delta(&s[i], 0, 0.01, &sd);
		sim_update(f, &s[i], d, (uint64_t)(i + 1) * 3, now + 1);
		tset_free(d);
		sim_recv(h, &s[i]);
	}
	assert_true(fed_get_state(f) == FED_IDLE || fed_get_state(f) == FED_STOPPED);
}

/* Two nodes named PFX0, PFX1 (peers peer0, peer0 + 1) join f and ref, the
 * same twins on both, and take part in rounds 1..rounds on both. */
static void twin_rounds(fed *f, harness *h, sim *s, fed *ref, harness *hr, sim *r,
                        const fed_opts *o, const char *pfx, uint64_t peer0, uint64_t rounds)
{
	for (int i = 0; i < 2; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "%s%d", pfx, i);
		sim_init(&s[i], peer0 + (uint64_t)i, cn);
		sim_init(&r[i], peer0 + (uint64_t)i, cn);
		sim_join(f, o, &s[i], 0);
		sim_join(ref, o, &r[i], 0);
	}
	for (uint64_t k = 1; k <= rounds; k++) {
		run_round(f, h, s, 2, k, k * 10);
		run_round(ref, hr, r, 2, k, k * 10);
	}
}

typedef struct jcount {
	int init, start, round_start, round_end, restart, committed, recovered;
	uint64_t last_restart_round;
} jcount;

static int jcount_cb(const cJSON *o, void *ud)
{
	jcount *c = ud;
	const char *t = cJSON_GetObjectItemCaseSensitive(o, "type")->valuestring;
	if (!strcmp(t, "init"))
		c->init++;
	else if (!strcmp(t, "start"))
		c->start++;
	else if (!strcmp(t, "round_start"))
		c->round_start++;
	else if (!strcmp(t, "round_end")) {
		c->round_end++;
		c->committed += cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "committed"));
		c->recovered += cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "recovered"));
		assert_non_null(cJSON_GetObjectItemCaseSensitive(o, "ts"));
	} else if (!strcmp(t, "round_restart")) {
		c->restart++;
		c->last_restart_round =
		    (uint64_t)cJSON_GetObjectItemCaseSensitive(o, "round")->valuedouble;
	}
	return 0;
}

/* Resume from the state directory: the same version and fingerprint, the
 * optimiser state, round ids that keep increasing, an interrupted round
 * recorded as restarted, a corrupt newest version skipped. A resumed
 * FedAdam federation ends bit-identical to one that never stopped. */
static void test_store_resume(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	harness h = {0}, hr = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 2;
	o.agg.strategy = AGG_FEDADAM;
	o.agg.server_lr = 0.01;
	o.keep_versions = 2;
	store *sto;
	assert_int_equal(store_open(dir, &sto), 0);
	fed *f = mk_fed(&o, sto, &h, 0);
	fed *ref = mk_fed(&o, NULL, &hr, 0);
	assert_int_equal(fed_version(f), 0);
	sim s[2], r[2];
	twin_rounds(f, &h, s, ref, &hr, r, &o, "p", 90, 2);
	assert_int_equal(fed_version(f), 2);
	uint8_t sha2[32];
	fed_version_sha(f, sha2);
	/* a second coordinator on the same directory is refused */
	store *other;
	assert_int_equal(store_open(dir, &other), FL_EBUSY);
	fed_free(f);
	store_free(sto);
	/* restart */
	assert_int_equal(store_open(dir, &sto), 0);
	f = mk_fed(&o, sto, &h, 0);
	assert_int_equal(fed_version(f), 2);
	uint8_t sha[32];
	fed_version_sha(f, sha);
	assert_memory_equal(sha, sha2, 32);
	assert_int_equal(fed_round_id(f), 2);
	for (int i = 0; i < 2; i++) {
		s[i].peer += 100;
		sim_join(f, &o, &s[i], 0);
		sim_recv(&h, &s[i]);
	}
	run_round(f, &h, s, 2, 3, 100);
	run_round(ref, &hr, r, 2, 3, 100);
	assert_int_equal(fed_round_id(f), 3);
	uint8_t a[32], b[32];
	fed_version_sha(f, a);
	fed_version_sha(ref, b);
	assert_memory_equal(a, b, 32); /* optimiser state survived the restart */
	/* retention: only the newest 2 versions remain */
	uint64_t *vs;
	size_t nv;
	assert_int_equal(store_list_versions(dir, &vs, &nv), 0);
	assert_int_equal(nv, 2);
	assert_int_equal(vs[0], 2);
	assert_int_equal(vs[1], 3);
	free(vs);
	/* a round open when the process "dies" */
	fed_tick(f, 200);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	assert_int_equal(fed_round_id(f), 4);
	fed_free(f);
	store_free(sto);
	/* the newest version file is damaged on disk: skipped, previous used */
	char vp[512];
	assert_int_equal(store_version_path(dir, 3, vp, sizeof vp), 0);
	assert_int_equal(tu_system("printf '\\x11' | dd of='%s' bs=1 seek=$(( $(stat -c %%s '%s') "
	                           "- 3 )) conv=notrunc status=none",
	                           vp, vp),
	                 0);
	assert_int_equal(store_open(dir, &sto), 0);
	h_clear(&h);
	f = mk_fed(&o, sto, &h, 0);
	assert_int_equal(fed_version(f), 2);
	fed_version_sha(f, sha);
	assert_memory_equal(sha, sha2, 32);
	for (int i = 0; i < 2; i++) {
		s[i].peer += 100;
		sim_join(f, &o, &s[i], 0);
		sim_recv(&h, &s[i]);
	}
	run_round(f, &h, s, 2, 9, 300);
	assert_int_equal(fed_round_id(f), 5);
	assert_int_equal(fed_version(f), 4); /* never reuses number 3 */
	/* the nodes hold v2, the parent of v4: the next round brings the delta */
	fed_tick(f, 400);
	sim_recv(&h, &s[0]);
	assert_int_equal(s[0].payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_int_equal(s[0].payload_from, 2);
	assert_same_global(f, &s[0]);
	fed_free(f);
	store_free(sto);
	jcount c = {0};
	size_t nl, nbad;
	char jp[512];
	snprintf(jp, sizeof jp, "%s/journal.jsonl", dir);
	assert_int_equal(journal_read(jp, jcount_cb, &c, &nl, &nbad), 0);
	assert_int_equal(nbad, 0);
	assert_int_equal(c.init, 1);
	assert_int_equal(c.start, 3);
	assert_int_equal(c.round_start, 6);
	assert_int_equal(c.restart, 1);
	assert_int_equal(c.last_restart_round, 4);
	assert_int_equal(c.committed, 4);
	for (int i = 0; i < 2; i++) {
		sim_fini(&s[i]);
		sim_fini(&r[i]);
	}
	fed_free(ref);
	h_fini(&h);
	h_fini(&hr);
	tu_rmtree(dir);
	free(dir);
}

/* A version committed just before a crash, journal record missing. */
static void test_store_recovered_commit(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 2;
	store *sto;
	assert_int_equal(store_open(dir, &sto), 0);
	fed *f = mk_fed(&o, sto, &h, 0);
	sim s[2];
	for (int i = 0; i < 2; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "q%d", i);
		sim_init(&s[i], (uint64_t)(95 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	run_round(f, &h, s, 2, 1, 10);
	fed_free(f);
	store_free(sto);
	/* drop the journal's last line (the round_end) as if we died first */
	char jp[512];
	snprintf(jp, sizeof jp, "%s/journal.jsonl", dir);
	assert_int_equal(tu_system("sed -i '$d' '%s'", jp), 0);
	assert_int_equal(store_open(dir, &sto), 0);
	f = mk_fed(&o, sto, &h, 0);
	assert_int_equal(fed_version(f), 1);
	fed_free(f);
	store_free(sto);
	jcount c = {0};
	size_t nl, nbad;
	assert_int_equal(journal_read(jp, jcount_cb, &c, &nl, &nbad), 0);
	assert_int_equal(c.recovered, 1);
	assert_int_equal(c.restart, 0);
	for (int i = 0; i < 2; i++)
		sim_fini(&s[i]);
	h_fini(&h);
	tu_rmtree(dir);
	free(dir);
}

/* Journal record types in order, for the back-off test. */
typedef struct jtypes {
	char t[64][24];
	int n;
} jtypes;

static int jtypes_cb(const cJSON *o, void *ud)
{
	jtypes *j = ud;
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
	if (j->n < 64 && cJSON_IsString(t))
		snprintf(j->t[j->n++], sizeof j->t[0], "%s", t->valuestring);
	return 0;
}

/* A persistent write failure (the file-size limit makes every journal
 * append and version write fail with EFBIG): the open round is abandoned,
 * no round starts while it lasts, retries follow 1, 2, 4 ... 60 s (capped),
 * and once writes work again the held records land in order and rounds
 * resume. */
static void test_store_backoff(void **st)
{
	(void)st;
	signal(SIGXFSZ, SIG_IGN);
	char *dir = tu_mkdtemp();
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 2;
	store *sto;
	assert_int_equal(store_open(dir, &sto), 0);
	fed *f = mk_fed(&o, sto, &h, 0);
	sim s[2];
	for (int i = 0; i < 2; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "b%d", i);
		sim_init(&s[i], (uint64_t)(70 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	run_round(f, &h, s, 2, 1, 10);
	assert_int_equal(fed_version(f), 1);
	char jp[512];
	snprintf(jp, sizeof jp, "%s/journal.jsonl", dir);
	struct stat jst;
	assert_int_equal(stat(jp, &jst), 0);
	struct rlimit old, lim;
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 256; /* below the journal's length and any version file */
	assert_true(jst.st_size > 256);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	/* round 2 starts (its round_start cannot be written), its commit fails */
	uint64_t now = 100;
	run_round(f, &h, s, 2, 2, now);
	assert_int_equal(fed_version(f), 1);
	assert_int_equal(fed_rounds_abandoned(f), 1);
	assert_true(fed_backing_off(f));
	assert_int_equal(fed_timeout(f, now), 0); /* the next tick starts backing off */
	now += 2;
	fed_tick(f, now);
	assert_int_equal(fed_get_state(f), FED_IDLE);
	assert_true(store_journal_backlog(sto) >= 2);
	static const uint64_t want[] = {1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000};
	for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
		int64_t t = fed_timeout(f, now);
		assert_int_equal(t, (int64_t)want[k]);
		fed_tick(f, now + (uint64_t)t - 1); /* not yet: nothing happens */
		now += (uint64_t)t;
		fed_tick(f, now); /* the retry fails again */
		assert_int_equal(fed_get_state(f), FED_IDLE);
		for (int i = 0; i < 2; i++) {
			s[i].got_round_start = 0;
			sim_recv(&h, &s[i]);
			assert_int_equal(s[i].got_round_start, 0); /* no round */
		}
	}
	off_t during = jst.st_size;
	assert_int_equal(stat(jp, &jst), 0);
	assert_int_equal(jst.st_size, during); /* nothing of the failed records */
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	now += (uint64_t)fed_timeout(f, now);
	fed_tick(f, now); /* recovers; the next tick starts round 3 */
	assert_false(fed_backing_off(f));
	assert_int_equal(store_journal_backlog(sto), 0);
	run_round(f, &h, s, 2, 3, now + 1);
	assert_int_equal(fed_version(f), 2);
	fed_free(f);
	store_free(sto);
	jtypes jt = {0};
	size_t nl, nbad;
	assert_int_equal(journal_read(jp, jtypes_cb, &jt, &nl, &nbad), 0);
	assert_int_equal(nbad, 0);
	/* init start round_start round_end | round_start store_failed round_end
	 * store_recovered | round_start round_end */
	static const char *wt[] = {"init",        "start",        "round_start", "round_end",
	                           "round_start", "store_failed", "round_end",   "store_recovered",
	                           "round_start", "round_end"};
	assert_int_equal(jt.n, 10);
	for (int i = 0; i < 10; i++)
		assert_string_equal(jt.t[i], wt[i]);
	for (int i = 0; i < 2; i++)
		sim_fini(&s[i]);
	h_fini(&h);
	tu_rmtree(dir);
	free(dir);
}

static void test_shutdown(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[3];
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "t%d", i);
		sim_init(&s[i], (uint64_t)(100 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	fed_tick(f, 0);
	for (int i = 0; i < 3; i++)
		sim_recv(&h, &s[i]);
	uint64_t seed = 1;
	tset *d = mk_delta(&s[0], 0, 0.01, &seed);
	sim_update(f, &s[0], d, 5, 10);
	sim_update(f, &s[1], d, 5, 10);
	tset_free(d);
	assert_false(fed_done(f));
	fed_shutdown(f, 20);
	assert_true(fed_done(f));
	assert_int_equal(fed_version(f), 0);
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].end_seen, 1);
		assert_false(s[i].end_committed);
		assert_int_equal(s[i].got_bye, 1);
	}
	sim late;
	sim_init(&late, 110, "late");
	sim_join(f, &o, &late, 30);
	sim_recv(&h, &late);
	assert_int_equal(late.reject_reason, FEDLORA__REJECT__REASON__REASON_SHUTTING_DOWN);
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	fed_free(f);
	h_fini(&h);
	/* max_rounds: stops by itself after N commits */
	opts(&o);
	o.min_nodes = 2;
	o.max_rounds = 2;
	f = mk_fed(&o, NULL, &h, 0);
	for (int i = 0; i < 2; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "m%d", i);
		sim_init(&s[i], (uint64_t)(120 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	run_round(f, &h, s, 2, 1, 10);
	assert_false(fed_done(f));
	run_round(f, &h, s, 2, 2, 20);
	assert_true(fed_done(f));
	assert_int_equal(fed_get_state(f), FED_STOPPED);
	for (int i = 0; i < 2; i++) {
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].got_bye, 1);
		sim_fini(&s[i]);
	}
	fed_free(f);
	h_fini(&h);
}

static void count_sampling(int weighted, int *cnt)
{
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 3;
	o.min_updates = 1;
	o.nodes_per_round = 1;
	o.sampling_weighted = weighted;
	o.down_fmt = QT_F32;
	o.down_block = 0;
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[3];
	uint64_t w[3] = {1, 1, 18};
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "w%d", i);
		sim_init(&s[i], (uint64_t)(130 + i), cn);
		s[i].join_samples = w[i];
		sim_join(f, &o, &s[i], 0);
		cnt[i] = 0;
	}
	for (int r = 0; r < 300; r++) {
		run_round(f, &h, s, 3, (uint64_t)r, (uint64_t)r * 10);
		const char *pc[1];
		assert_int_equal(fed_participants(f, pc, 1), 1);
		cnt[pc[0][1] - '0']++;
	}
	assert_int_equal(fed_version(f), 300);
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	fed_free(f);
	h_fini(&h);
}

static void test_sampling(void **st)
{
	(void)st;
	int c[3];
	count_sampling(0, c);
	for (int i = 0; i < 3; i++)
		if (c[i] < 60 || c[i] > 140)
			fail_msg("uniform sampling picked node %d %d times of 300", i, c[i]);
	count_sampling(1, c);
	/* weights 1:1:18 -> expected 15, 15, 270 */
	if (c[2] < 240 || c[0] < 3 || c[1] < 3)
		fail_msg("weighted sampling counts %d %d %d", c[0], c[1], c[2]);
}

/* Central DP driven directly: rounds sample by Poisson (q = 1/2 of 3
 * nodes: some rounds are empty, some take all three), every round commits
 * (empty ones too), the ledger and the Prometheus gauges show the
 * accountant's epsilon, and a small target stops the federation. */
static int dp_rounds(fed *f, harness *h, sim *s, int rounds, int *hist)
{
	int done = 0;
	for (int r = 0; r < rounds; r++) {
		uint64_t now = (uint64_t)(r + 1) * 10;
		fed_tick(f, now);
		if (fed_get_state(f) == FED_STOPPED)
			break;
		size_t np = fed_participants(f, NULL, 0);
		for (int i = 0; i < 3; i++) {
			s[i].got_round_start = 0;
			sim_recv(h, &s[i]);
		}
		for (int i = 0; i < 3; i++) {
			if (!s[i].got_round_start)
				continue;
			uint64_t sd = (uint64_t)r * 31 + (uint64_t)i;
			tset *d = mk_delta(&s[i], 0, 0.01, &sd);
			sim_update(f, &s[i], d, 5, now + 1);
			tset_free(d);
			sim_recv(h, &s[i]);
		}
		for (int i = 0; i < 3; i++)
			sim_recv(h, &s[i]);
		assert_int_equal(fed_get_state(f), FED_IDLE);
		if (hist)
			hist[np]++;
		done++;
	}
	return done;
}

static void test_dp_central(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 3;
	o.min_updates = 1;
	o.nodes_per_round = 1;
	o.down_fmt = QT_F32;
	o.down_block = 0;
	o.agg.weighting = AGG_W_UNIFORM;
	o.priv = (dp_opts){DP_CENTRAL, 2.0, 1.0, 1e-5, 1000, 2}; /* q = 1/2 */
	metrics *m = NULL;
	assert_int_equal(metrics_new(&m), 0);
	fed_io io = {.ud = &h, .send = h_send, .close = h_close};
	fed *f = NULL;
	assert_int_equal(fed_new(&o, NULL, m, &io, &f), 0);
	sim s[3];
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "p%d", i);
		sim_init(&s[i], (uint64_t)(150 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	const int R = 200;
	int hist[4] = {0};
	assert_int_equal(dp_rounds(f, &h, s, R, hist), R);
	assert_int_equal(fed_version(f), R); /* every round committed */
	double mean = (hist[1] + 2.0 * hist[2] + 3.0 * hist[3]) / R;
	print_message("Poisson q 0.5, 3 nodes, %d rounds: cohorts of 0/1/2/3 nodes %d/%d/%d/%d, "
	              "mean %.3f (want 1.5)\n",
	              R, hist[0], hist[1], hist[2], hist[3], mean);
	/* 5 standard errors: sd of a Binomial(3, 1/2) is sqrt(0.75) */
	assert_true(fabs(mean - 1.5) <= 5 * sqrt(0.75 / R));
	assert_true(hist[0] > 0 && hist[3] > 0); /* (7/8)^200: never by chance */
	const dp_ledger *l = fed_privacy(f);
	assert_non_null(l);
	assert_int_equal(l->rounds, R);
	double want = dp_epsilon_for(0.5, 2.0, R, 1e-5);
	assert_true(fabs(l->epsilon - want) <= 1e-12 * want);
	assert_true(metrics_get(m, "fedlora_privacy_epsilon_spent", NULL) == l->epsilon);
	assert_true(metrics_get(m, "fedlora_privacy_rounds_charged", NULL) == R);
	char *txt = NULL;
	size_t tl = 0;
	assert_int_equal(metrics_render(m, &txt, &tl), 0);
	assert_non_null(strstr(txt, "fedlora_privacy_epsilon_spent"));
	free(txt);
	fed_free(f);
	/* a target that allows exactly 3 rounds */
	o.priv.target_eps =
	    0.5 * (dp_epsilon_for(0.5, 2.0, 3, 1e-5) + dp_epsilon_for(0.5, 2.0, 4, 1e-5));
	assert_int_equal(fed_new(&o, NULL, m, &io, &f), 0);
	for (int i = 0; i < 3; i++) {
		sim_fini(&s[i]);
		char cn[8];
		snprintf(cn, sizeof cn, "p%d", i);
		sim_init(&s[i], (uint64_t)(160 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	assert_int_equal(dp_rounds(f, &h, s, 10, NULL), 3);
	assert_int_equal(fed_get_state(f), FED_STOPPED);
	assert_true(fed_done(f));
	assert_int_equal(fed_privacy(f)->rounds, 3);
	/* weighted sampling and buffering strategies are refused */
	char why[300];
	o.sampling_weighted = 1;
	assert_int_equal(fed_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "rounds.sampling"));
	o.sampling_weighted = 0;
	o.agg.strategy = AGG_TRIMMED_MEAN;
	assert_int_equal(fed_opts_check(&o, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "trimmed_mean"));
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	fed_free(f);
	metrics_free(m);
	h_fini(&h);
}

static void test_ffa(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 2;
	o.spec.ffa = 1;
	o.agg.ffa = 1;
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[2];
	for (int i = 0; i < 2; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "f%d", i);
		sim_init(&s[i], (uint64_t)(140 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	fed_tick(f, 0);
	for (int i = 0; i < 2; i++)
		sim_recv(&h, &s[i]);
	assert_int_equal(s[0].payload_tensors, 8); /* snapshot: A and B */
	tset *g0;
	assert_int_equal(tset_clone(fed_global(f), &g0), 0);
	uint64_t seed = 2;
	tset *full = mk_delta(&s[0], 0, 0.01, &seed);
	sim_update(f, &s[0], full, 5, 1);
	expect_ack(&h, &s[0], FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED);
	tset_free(full);
	tset *bonly = mk_delta(&s[1], 1, 0.01, &seed);
	sim_update(f, &s[1], bonly, 5, 1);
	expect_ack(&h, &s[1], 0);
	tset_free(bonly);
	/* s0 answered (refused), s1 accepted: min_updates 2 not met -> abandon;
	 * run two clean rounds instead */
	assert_int_equal(fed_version(f), 0);
	for (int r = 0; r < 2; r++) {
		fed_tick(f, 10 + (uint64_t)r * 10);
		for (int i = 0; i < 2; i++) {
			s[i].got_round_start = 0;
			sim_recv(&h, &s[i]);
		}
		if (r == 1) /* holds v1 = parent of nothing yet: delta v0->v1 */
			assert_int_equal(s[0].payload_tensors, 4);
		for (int i = 0; i < 2; i++) {
			tset *d = mk_delta(&s[i], 1, 0.01, &seed);
			sim_update(f, &s[i], d, 5, 11 + (uint64_t)r * 10);
			tset_free(d);
			expect_ack(&h, &s[i], 0);
		}
	}
	assert_int_equal(fed_version(f), 2);
	const tset *g2 = fed_global(f);
	for (size_t i = 0; i < tset_count(g2); i++) {
		const tensor *t = tset_at(g2, i), *t0 = tset_find(g0, t->name);
		int same = memcmp(t->data, t0->data, t->n * sizeof(float)) == 0;
		if (strstr(t->name, "lora_a"))
			assert_true(same); /* A frozen, bit for bit */
		else
			assert_false(same);
	}
	tset_free(g0);
	for (int i = 0; i < 2; i++)
		sim_fini(&s[i]);
	fed_free(f);
	h_fini(&h);
}

/* ---- downlink grid (aggregation.downlink_mode = grid) ---- */

/* Bytes queued for a peer (RoundStart and anything else not yet read). */
static size_t queued_len(const harness *h, uint64_t peer)
{
	size_t n = 0;
	for (size_t i = 0; i < h->n; i++)
		if (h->m[i].peer == peer)
			n += h->m[i].len;
	return n;
}

/* Node a takes part in every round; d leaves holding v1, c holding v18,
 * b stays holding v20; after version 21 c and d come back: b missed 1
 * version, c 3 and d 20. len gets the RoundStart bytes of round 22 for
 * a, b, c, d and kind their payload kinds. Every node checks the SHA-256
 * of what it applied against the announced one. */
static void missed_versions(int grid, size_t len[4], int kind[4])
{
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 1;
	o.min_updates = 1;
	o.down_fmt = QT_Q4;
	o.down_grid = grid;
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[4];
	const char *cn[4] = {"a", "b", "c", "d"};
	for (int i = 0; i < 4; i++) {
		sim_init(&s[i], (uint64_t)(300 + i), cn[i]);
		sim_join(f, &o, &s[i], 0);
		sim_recv(&h, &s[i]);
	}
	for (uint64_t k = 1; k <= 21; k++) {
		int n = k <= 2 ? 4 : k <= 19 ? 3 : 2;
		run_round(f, &h, s, n, k, k * 10);
		if (k == 2)
			fed_peer_gone(f, s[3].peer, k * 10 + 5);
		if (k == 19)
			fed_peer_gone(f, s[2].peer, k * 10 + 5);
	}
	assert_int_equal(fed_version(f), 21);
	assert_int_equal(s[1].version, 20);
	assert_int_equal(s[2].version, 18);
	assert_int_equal(s[3].version, 1);
	for (int i = 2; i < 4; i++) {
		s[i].peer += 100;
		sim_join(f, &o, &s[i], 300);
	}
	for (int i = 0; i < 4; i++)
		sim_recv(&h, &s[i]); /* Welcome, RoundEnd */
	fed_tick(f, 300);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	for (int i = 0; i < 4; i++) {
		len[i] = queued_len(&h, s[i].peer);
		s[i].got_round_start = 0;
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].got_round_start, 1);
		assert_same_global(f, &s[i]);
		kind[i] = s[i].payload_kind;
	}
	for (int i = 0; i < 4; i++)
		sim_fini(&s[i]);
	fed_free(f);
	h_fini(&h);
}

static void test_grid_missed_versions(void **st)
{
	(void)st;
	size_t dl[4], gl[4];
	int dk[4], gk[4];
	missed_versions(0, dl, dk);
	missed_versions(1, gl, gk);
	/* delta mode: the parent's holder gets the step, the others f32 */
	assert_int_equal(dk[1], FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_int_equal(dk[2], FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	assert_int_equal(dk[3], FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	/* grid mode: the same grid snapshot for everyone, as small as the step */
	for (int i = 0; i < 4; i++) {
		assert_int_equal(gk[i], FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
		assert_int_equal(gl[i], gl[0]);
	}
	print_message("RoundStart bytes, delta mode: step %zu, f32 snapshot %zu; grid mode: %zu\n",
	              dl[1], dl[3], gl[0]);
	assert_true(gl[0] <= dl[1] + 64);
	assert_true(gl[0] * 4 < dl[3]); /* tiny adapter: headers weigh */
}

/* Grid mode across a restart: the residual comes back from the state
 * directory (versions equal those of a coordinator that never stopped) and
 * the loaded version goes out as a grid snapshot again. */
static void test_grid_restart(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	harness h = {0}, hr = {0};
	fed_opts o;
	opts(&o);
	o.min_nodes = 2;
	o.down_fmt = QT_Q4;
	o.down_grid = 1;
	store *sto;
	assert_int_equal(store_open(dir, &sto), 0);
	fed *f = mk_fed(&o, sto, &h, 0);
	fed *ref = mk_fed(&o, NULL, &hr, 0);
	uint8_t a[32], b[32];
	fed_version_sha(f, a);
	fed_version_sha(ref, b);
	assert_memory_equal(a, b, 32); /* v0 on the grid, the same both ways */
	sim s[2], r[2];
	twin_rounds(f, &h, s, ref, &hr, r, &o, "g", 400, 3);
	fed_version_sha(f, a);
	fed_free(f);
	store_free(sto);
	assert_int_equal(store_open(dir, &sto), 0);
	h_clear(&h);
	f = mk_fed(&o, sto, &h, 0);
	assert_int_equal(fed_version(f), 3);
	fed_version_sha(f, b);
	assert_memory_equal(a, b, 32);
	/* s[0] holds v2 (one behind), a new node none: both get the grid
	 * snapshot, the same bytes, and verify it */
	sim n;
	sim_init(&n, 450, "gn");
	s[0].peer += 100;
	s[1].peer += 100;
	sim_join(f, &o, &s[0], 100);
	sim_join(f, &o, &n, 100);
	sim_recv(&h, &s[0]);
	sim_recv(&h, &n);
	fed_tick(f, 100);
	size_t l0 = queued_len(&h, s[0].peer), ln = queued_len(&h, n.peer);
	sim_recv(&h, &s[0]);
	sim_recv(&h, &n);
	assert_int_equal(s[0].payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	assert_int_equal(n.payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT);
	assert_int_equal(l0, ln);
	assert_same_global(f, &s[0]);
	assert_same_global(f, &n);
	/* q4: 4.5 bits a parameter; an f32 snapshot would be 7x larger */
	assert_true(l0 * 8 < tset_numel(n.ad) * 4 * 2);
	/* one more round on both: equal versions, so the residual survived */
	for (uint64_t k = 0; k < 2; k++) {
		uint64_t sd = 4 * 31 + k;
		sim *x = k ? &n : &s[0];
		tset *d = mk_delta(x, 0, 0.01, &sd);
		sim_update(f, x, d, (k + 1) * 3, 101);
		tset_free(d);
		sim_recv(&h, x);
	}
	fed_tick(ref, 100);
	for (int i = 0; i < 2; i++)
		sim_recv(&hr, &r[i]);
	for (int i = 0; i < 2; i++) {
		uint64_t sd = 4 * 31 + (uint64_t)i;
		tset *d = mk_delta(&r[i], 0, 0.01, &sd);
		sim_update(ref, &r[i], d, (uint64_t)(i + 1) * 3, 101);
		tset_free(d);
		sim_recv(&hr, &r[i]);
	}
	assert_int_equal(fed_version(f), 4);
	assert_int_equal(fed_version(ref), 4);
	fed_version_sha(f, a);
	fed_version_sha(ref, b);
	assert_memory_equal(a, b, 32);
	sim_fini(&n);
	for (int i = 0; i < 2; i++) {
		sim_fini(&s[i]);
		sim_fini(&r[i]);
	}
	fed_free(f);
	fed_free(ref);
	store_free(sto);
	h_fini(&h);
	h_fini(&hr);
	tu_rmtree(dir);
	free(dir);
}

/* The final version: DownFinal to the connected nodes when the federation
 * ends, Bye after each answer; a node that leaves is not waited for, one
 * that stays silent until rounds.final_timeout_ms; the journal has it all. */
static void send_final_eval(fed *f, sim *s, double loss, uint64_t now)
{
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	Fedlora__DownFinalEval fe = FEDLORA__DOWN_FINAL_EVAL__INIT;
	fe.version = s->version;
	fe.verified = 1;
	fe.has_eval = 1;
	fe.eval_loss = loss;
	e.body_case = FEDLORA__ENVELOPE__BODY_DOWN_FINAL_EVAL;
	e.down_final_eval = &fe;
	send_env(f, s->peer, &e, now);
}

typedef struct fcount {
	int sent, evals, summaries, answered, evaluated;
	double mean;
} fcount;

static int fcount_cb(const cJSON *o, void *ud)
{
	fcount *c = ud;
	const char *t = cJSON_GetObjectItemCaseSensitive(o, "type")->valuestring;
	if (!strcmp(t, "final_sent"))
		c->sent = (int)cJSON_GetObjectItemCaseSensitive(o, "nodes")->valuedouble;
	if (!strcmp(t, "final_eval"))
		c->evals++;
	if (!strcmp(t, "final")) {
		c->summaries++;
		c->answered = (int)cJSON_GetObjectItemCaseSensitive(o, "answered")->valuedouble;
		c->evaluated = (int)cJSON_GetObjectItemCaseSensitive(o, "evaluated")->valuedouble;
		c->mean = cJSON_GetObjectItemCaseSensitive(o, "mean_eval_loss")->valuedouble;
	}
	return 0;
}

static void test_final_version(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	harness h = {0};
	fed_opts o;
	opts(&o);
	o.max_rounds = 1;
	o.final_timeout_ms = 1000;
	store *sto;
	assert_int_equal(store_open(dir, &sto), 0);
	fed *f = mk_fed(&o, sto, &h, 0);
	sim s[3];
	for (int i = 0; i < 3; i++) {
		char cn[8];
		snprintf(cn, sizeof cn, "f%d", i);
		sim_init(&s[i], (uint64_t)(500 + i), cn);
		sim_join(f, &o, &s[i], 0);
	}
	run_round(f, &h, s, 3, 1, 10);
	assert_int_equal(fed_version(f), 1);
	assert_int_equal(fed_get_state(f), FED_STOPPED);
	assert_false(fed_done(f)); /* waiting for the nodes */
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].got_final, 1);
		assert_int_equal(s[i].got_bye, 0);
		/* they hold v0, the parent: the step */
		assert_int_equal(s[i].payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
		assert_same_global(f, &s[i]);
	}
	send_final_eval(f, &s[0], 2.5, 20);
	sim_recv(&h, &s[0]);
	assert_int_equal(s[0].got_bye, 1);
	assert_false(fed_done(f));
	fed_peer_gone(f, s[1].peer, 21); /* not waited for */
	assert_false(fed_done(f));
	fed_tick(f, 22); /* sets the deadline */
	assert_int_equal(fed_timeout(f, 22), 1000);
	fed_tick(f, 500);
	assert_false(fed_done(f));
	fed_tick(f, 1022);
	assert_true(fed_done(f));
	sim_recv(&h, &s[2]);
	assert_int_equal(s[2].got_bye, 1);
	/* a late answer is ignored */
	send_final_eval(f, &s[2], 3.0, 1100);
	fed_free(f);
	store_free(sto);
	fcount c = {0};
	size_t nl, nbad;
	char jp[512];
	snprintf(jp, sizeof jp, "%s/journal.jsonl", dir);
	assert_int_equal(journal_read(jp, fcount_cb, &c, &nl, &nbad), 0);
	assert_int_equal(c.sent, 3);
	assert_int_equal(c.evals, 1);
	assert_int_equal(c.summaries, 1);
	assert_int_equal(c.answered, 1);
	assert_int_equal(c.evaluated, 1);
	assert_true(c.mean == 2.5);
	for (int i = 0; i < 3; i++)
		sim_fini(&s[i]);
	h_fini(&h);
	tu_rmtree(dir);
	free(dir);
}

static void test_encode_round_start(void **st)
{
	(void)st;
	uint8_t payload[300];
	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (uint8_t)i;
	/* a real AdapterPayload with one f32 tensor */
	float vals[3] = {1.5f, -2.0f, 0.25f};
	uint64_t shape[1] = {3};
	Fedlora__QTensor q = FEDLORA__QTENSOR__INIT, *qp[1] = {&q};
	q.name = "blk.0.attn_q.lora_b";
	q.n_shape = 1;
	q.shape = shape;
	q.format = FEDLORA__QFORMAT__QFORMAT_F32;
	q.data.data = (uint8_t *)vals;
	q.data.len = sizeof vals;
	Fedlora__AdapterPayload ap = FEDLORA__ADAPTER_PAYLOAD__INIT;
	ap.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT;
	ap.to_version = 7;
	ap.n_tensors = 1;
	ap.tensors = qp;
	size_t pl = fedlora__adapter_payload__pack(&ap, payload);
	Fedlora__RoundStart rs = FEDLORA__ROUND_START__INIT;
	Fedlora__TrainParams tp = FEDLORA__TRAIN_PARAMS__INIT;
	tp.local_steps = 3;
	rs.round_id = 12345678901ull;
	rs.global_version = 7;
	rs.params = &tp;
	rs.deadline_ms = 5000;
	buf b;
	buf_init(&b, 0);
	assert_int_equal(fed_encode_round_start(&rs, 99, payload, pl, &b), 0);
	wire_msg *m;
	assert_int_equal(wire_decode(b.data, b.len, 1 << 20, 0, &m), 0);
	const Fedlora__Envelope *e = wire_env(m);
	assert_int_equal(e->seq, 99);
	assert_int_equal(e->body_case, FEDLORA__ENVELOPE__BODY_ROUND_START);
	assert_int_equal(e->round_start->round_id, 12345678901ull);
	assert_int_equal(e->round_start->params->local_steps, 3);
	assert_int_equal(e->round_start->deadline_ms, 5000);
	const Fedlora__AdapterPayload *d = e->round_start->adapter;
	assert_non_null(d);
	assert_int_equal(d->to_version, 7);
	assert_int_equal(d->n_tensors, 1);
	assert_string_equal(d->tensors[0]->name, "blk.0.attn_q.lora_b");
	assert_memory_equal(d->tensors[0]->data.data, vals, sizeof vals);
	/* the same bytes as a straight protobuf-c encoding */
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	rs.adapter = &ap;
	env.seq = 99;
	env.body_case = FEDLORA__ENVELOPE__BODY_ROUND_START;
	env.round_start = &rs;
	buf b2;
	buf_init(&b2, 0);
	assert_int_equal(wire_encode(&env, 0, &b2), 0);
	assert_int_equal(b.len, b2.len);
	assert_memory_equal(b.data, b2.data, b.len);
	buf_fini(&b2);
	wire_free(m);
	buf_fini(&b);
}

/* ---- coordinator tiers: the regional side (fed_tier_*) ---- */

typedef struct tier_cap {
	int calls, ok;
	uint64_t round_id, weight;
	size_t accepted;
	tset *mean;
	char detail[200];
} tier_cap;

static void tier_cb(void *ud, const fed_tier_result *r)
{
	tier_cap *c = ud;
	c->calls++;
	c->ok = r->ok;
	c->round_id = r->round_id;
	c->weight = r->weight;
	c->accepted = r->accepted;
	snprintf(c->detail, sizeof c->detail, "%s", r->detail ? r->detail : "");
	tset_free(c->mean);
	c->mean = NULL;
	if (r->ok)
		assert_int_equal(tset_clone(r->mean, &c->mean), 0);
}

/* The RoundStart of harness message i: its params and packed adapter. */
static void tier_peek(const harness *h, size_t i, uint32_t *steps, uint64_t *seed, buf *adapter)
{
	wire_msg *w;
	assert_int_equal(wire_decode(h->m[i].data, h->m[i].len, 1u << 30, 0, &w), 0);
	const Fedlora__Envelope *e = wire_env(w);
	assert_int_equal(e->body_case, FEDLORA__ENVELOPE__BODY_ROUND_START);
	*steps = e->round_start->params->local_steps;
	*seed = e->round_start->params->seed;
	size_t n = fedlora__adapter_payload__get_packed_size(e->round_start->adapter);
	buf_clear(adapter);
	assert_int_equal(buf_reserve(adapter, n), 0);
	adapter->len = fedlora__adapter_payload__pack(e->round_start->adapter, adapter->data);
	wire_free(w);
}

static void test_tier_region(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	opts(&o);
	tier_cap cap = {0};
	fed_tier_hooks hk = {.ud = &cap, .done = tier_cb};
	o.tier = &hk;
	fed *f = mk_fed(&o, NULL, &h, 0);
	sim s[3];
	char cn[16];
	for (int i = 0; i < 3; i++) {
		snprintf(cn, sizeof cn, "n%d", i);
		sim_init(&s[i], (uint64_t)(i + 1), cn);
		sim_join(f, &o, &s[i], 1);
		sim_recv(&h, &s[i]);
	}
	/* a region never starts a round by itself */
	fed_tick(f, 5000);
	assert_int_equal(fed_get_state(f), FED_IDLE);
	assert_int_equal(fed_timeout(f, 5000), -1);
	assert_int_equal(fed_round_id(f), 0);

	/* root round at the version the region holds (v0), root's parameters */
	Fedlora__TrainParams tp = FEDLORA__TRAIN_PARAMS__INIT;
	tp.local_steps = 7;
	tp.lr = 0.25f;
	tp.seed = 0xfeedbeefull;
	tp.uplink_format = FEDLORA__QFORMAT__QFORMAT_Q8;
	tp.uplink_block = 32;
	tset *v0;
	uint8_t sha0[32], bad[32];
	assert_int_equal(tset_clone(fed_global(f), &v0), 0);
	fed_version_sha(f, sha0);
	memcpy(bad, sha0, 32);
	bad[0] ^= 1;
	tset *g;
	assert_int_equal(tset_clone(v0, &g), 0);
	assert_int_equal(fed_tier_round(f, 0, bad, g, NULL, 0, &tp, 500, 6000), FL_EMISMATCH);
	assert_int_equal(tset_clone(v0, &g), 0);
	assert_int_equal(fed_tier_round(f, 0, sha0, g, NULL, 0, &tp, 500, 6000), 0);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	assert_int_equal(fed_timeout(f, 6000), 500); /* the deadline it was given */
	assert_int_equal(tset_clone(v0, &g), 0);
	assert_int_equal(fed_tier_round(f, 0, sha0, g, NULL, 0, &tp, 500, 6000), FL_EBUSY);
	buf pk;
	buf_init(&pk, 0);
	uint32_t steps;
	uint64_t seed;
	assert_true(h.n >= 3);
	tier_peek(&h, 0, &steps, &seed, &pk);
	assert_int_equal(steps, 7);
	assert_int_equal(seed, 0xfeedbeefull);
	/* updates (f32, exact) with weights 3, 5, 9: the callback gets their
	 * weighted mean (double reference) and the weight sum */
	uint64_t w[3] = {3, 5, 9};
	tset *d[3];
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_true(s[i].got_round_start && s[i].sha_ok);
		uint64_t sd = 77 + (uint64_t)i;
		d[i] = mk_delta(&s[i], 0, 0.05, &sd);
		sim_update_ex(f, &s[i], d[i], QT_F32, s[i].round, 0, w[i], 0, 6100);
	}
	assert_int_equal(cap.calls, 1);
	assert_true(cap.ok);
	assert_int_equal(cap.weight, 17);
	assert_int_equal(cap.accepted, 3);
	assert_int_equal(cap.round_id, fed_round_id(f));
	assert_non_null(cap.mean);
	double worst = 0;
	for (size_t t = 0; t < tset_count(d[0]); t++) {
		const tensor *m = tset_find(cap.mean, tset_at(d[0], t)->name);
		assert_non_null(m);
		for (size_t k = 0; k < m->n; k++) {
			double ref = 0;
			for (int i = 0; i < 3; i++)
				ref += (double)w[i] * (double)tset_at(d[i], t)->data[k];
			ref /= 17.0;
			double e = fabs((double)m->data[k] - ref);
			worst = e > worst ? e : worst;
		}
	}
	assert_true(worst < 1e-6); /* f32 accumulation of 3 terms */
	/* nodes hear the round is over; nothing was committed here */
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_true(s[i].end_seen);
		assert_int_equal(s[i].end_version, 0);
	}
	assert_int_equal(fed_version(f), 0);
	assert_int_equal(fed_rounds_committed(f), 0);
	assert_int_equal(fed_get_state(f), FED_IDLE);

	/* the root's next version arrives as a q8 delta from v0: the region's
	 * nodes get those very payload bytes and reach the same SHA-256 */
	size_t nt = tset_count(v0);
	qtensor *qs = calloc(nt, sizeof *qs);
	Fedlora__QTensor *qm = calloc(nt, sizeof *qm);
	Fedlora__QTensor **qp = calloc(nt, sizeof *qp);
	tset *v1;
	assert_int_equal(tset_clone(v0, &v1), 0);
	quant_params qpar = {.fmt = QT_Q8, .block = 32, .round = QUANT_NEAREST};
	for (size_t i = 0; i < nt; i++) {
		qt_init(&qs[i]);
		assert_int_equal(quant_encode_tensor(&qpar, tset_at(cap.mean, i), &qs[i]), 0);
		qt_to_proto(&qs[i], &qm[i]);
		qp[i] = &qm[i];
	}
	assert_int_equal(quant_apply_set(v1, qs, nt), 0);
	uint8_t sha1[32];
	assert_int_equal(tset_fingerprint(v1, sha1), 0);
	Fedlora__AdapterPayload pl = FEDLORA__ADAPTER_PAYLOAD__INIT;
	pl.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	pl.from_version = 0;
	pl.to_version = 1;
	pl.to_sha256.data = sha1;
	pl.to_sha256.len = 32;
	pl.n_tensors = nt;
	pl.tensors = qp;
	buf root_pl;
	buf_init(&root_pl, 0);
	size_t pn = fedlora__adapter_payload__get_packed_size(&pl);
	assert_int_equal(buf_reserve(&root_pl, pn), 0);
	root_pl.len = fedlora__adapter_payload__pack(&pl, root_pl.data);
	assert_int_equal(tset_clone(v1, &g), 0);
	h_clear(&h);
	assert_int_equal(fed_tier_round(f, 1, sha1, g, root_pl.data, root_pl.len, &tp, 500, 7000),
	                 0);
	assert_int_equal(fed_version(f), 1);
	tier_peek(&h, 0, &steps, &seed, &pk);
	assert_int_equal(pk.len, root_pl.len);
	assert_memory_equal(pk.data, root_pl.data, pk.len);
	for (int i = 0; i < 3; i++) {
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].payload_kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
		assert_int_equal(s[i].version, 1);
		assert_true(s[i].sha_ok);
		assert_same_global(f, &s[i]);
	}
	/* the root moved on: the round closes now; 1 update < min_updates */
	sim_update_ex(f, &s[0], d[0], QT_F32, s[0].round, 1, 3, 0, 7100);
	fed_tier_abort(f, 7200);
	assert_int_equal(cap.calls, 2);
	assert_false(cap.ok);
	assert_non_null(strstr(cap.detail, "min_updates"));
	assert_int_equal(fed_get_state(f), FED_IDLE);
	/* fewer than min_nodes connected: no round */
	fed_peer_gone(f, s[1].peer, 7300);
	fed_peer_gone(f, s[2].peer, 7300);
	assert_int_equal(tset_clone(v1, &g), 0);
	assert_int_equal(fed_tier_round(f, 1, sha1, g, NULL, 0, &tp, 500, 7400), FL_EAGAIN);
	assert_int_equal(fed_get_state(f), FED_IDLE);

	for (size_t i = 0; i < nt; i++)
		qt_fini(&qs[i]);
	free(qs);
	free(qm);
	free(qp);
	buf_fini(&root_pl);
	buf_fini(&pk);
	for (int i = 0; i < 3; i++) {
		tset_free(d[i]);
		sim_fini(&s[i]);
	}
	tset_free(v0);
	tset_free(v1);
	tset_free(cap.mean);
	fed_free(f);
	h_fini(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_join_validation),
	    cmocka_unit_test(test_rounds_exact),
	    cmocka_unit_test(test_deadline_and_abandon),
	    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_byzantine),
	    cmocka_unit_test(test_snapshot_vs_delta),
	    cmocka_unit_test(test_reconnect),
	    cmocka_unit_test(test_async_jobs),
	    cmocka_unit_test(test_store_resume),
	    cmocka_unit_test(test_store_recovered_commit),
	    cmocka_unit_test(test_store_backoff),
	    cmocka_unit_test(test_shutdown),
	    cmocka_unit_test(test_sampling),
	    cmocka_unit_test(test_ffa),
	    cmocka_unit_test(test_dp_central),
	    cmocka_unit_test(test_encode_round_start),
	    cmocka_unit_test(test_tier_region),
	    cmocka_unit_test(test_grid_missed_versions),
	    cmocka_unit_test(test_grid_restart),
	    cmocka_unit_test(test_final_version),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
