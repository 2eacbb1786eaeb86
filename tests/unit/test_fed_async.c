/* Asynchronous buffered aggregation (aggregation.mode = async, FedBuff):
 *  - the staleness weights against a long-double reference and the
 *    published FedBuff values ((1+s)^-1/2: s = 3 -> 1/2, s = 8 -> 1/3);
 *    refusal exactly above max_staleness;
 *  - option checks and the combinations that are refused, each error
 *    naming both keys;
 *  - agg_add_payload_scaled: the step equals sum f_i w_i d_i / sum w_i
 *    computed in double;
 *  - the state machine with simulated nodes: tasks to idle nodes, a version
 *    every K updates, a slow node's stale update weighted by its factor
 *    (the committed step matches the double-precision reference within the
 *    downlink q8 rounding), too-stale updates refused with REASON_TOO_STALE
 *    and the node given new work, exact versions on every node, updates
 *    arriving during a commit held and added to the next version,
 *    max_concurrent, the journal, and a restart that keeps every committed
 *    version (buffered updates are not persisted, by contract).
 *
 * The simulated-node harness is test_fed.c's (included, its main renamed)
 * so that both suites drive fed with the same node model. */
#include "async.h"

int fed_sync_tests_main(void);
#define main fed_sync_tests_main
#include "test_fed.c"
#undef main

/* ---- staleness functions ---- */

static long double ref_weight(int fn, long double a, unsigned b, unsigned s)
{
	if (fn == FA_POLYNOMIAL)
		return 1.0L / powl(1.0L + (long double)s, a);
	if (fn == FA_HINGE)
		return s <= b ? 1.0L : 1.0L / (1.0L + a * ((long double)s - (long double)b));
	return 1.0L;
}

static void test_weights(void **st)
{
	(void)st;
	fa_opts o;
	fa_opts_default(&o);
	const double as[] = {0, 0.5, 1, 2, 3.7};
	const unsigned bs[] = {0, 2, 10};
	for (int fn = FA_CONSTANT; fn <= FA_HINGE; fn++)
		for (size_t ai = 0; ai < 5; ai++)
			for (size_t bi = 0; bi < 3; bi++)
				for (unsigned s = 0; s <= 200; s++) {
					o.fn = (enum fa_stale)fn;
					o.a = as[ai];
					o.hinge_b = bs[bi];
					double got = fa_weight(&o, s);
					long double want = ref_weight(fn, as[ai], bs[bi], s);
					assert_true(got > 0 && got <= 1);
					assert_true(fabsl((long double)got - want) <=
					            1e-15L * want);
				}
	/* FedBuff's choice (1+s)^-1/2: exact published points */
	o.fn = FA_POLYNOMIAL;
	o.a = 0.5;
	assert_true(fa_weight(&o, 0) == 1.0);
	assert_true(fa_weight(&o, 3) == 0.5);
	assert_true(fabs(fa_weight(&o, 8) - 1.0 / 3) < 1e-16);
	/* hinge (Xie et al.): 1 up to b, then 1/(1 + a(s-b)) */
	o.fn = FA_HINGE;
	o.a = 1;
	o.hinge_b = 4;
	assert_true(fa_weight(&o, 4) == 1.0);
	assert_true(fa_weight(&o, 5) == 0.5);
	assert_true(fa_weight(&o, 7) == 0.25);
	/* the smallest factor allowed by the option ranges stays positive */
	o.fn = FA_POLYNOMIAL;
	o.a = 10;
	assert_true(fa_weight(&o, 1000000) > 0);
	/* refusals: exactly above max_staleness */
	o.max_staleness = 3;
	assert_false(fa_too_stale(&o, 3));
	assert_true(fa_too_stale(&o, 4));
	o.max_staleness = 0;
	assert_false(fa_too_stale(&o, 0));
	assert_true(fa_too_stale(&o, 1));
	assert_int_equal(fa_staleness(7, 3), 4);
	assert_int_equal(fa_staleness(3, 7), 0);
	/* names */
	enum fa_stale e;
	assert_int_equal(fa_stale_parse("hinge", &e), 0);
	assert_int_equal(e, FA_HINGE);
	assert_string_equal(fa_stale_name(FA_POLYNOMIAL), "polynomial");
	assert_int_equal(fa_stale_parse("linear", &e), FL_EINVAL);
}

static void expect_opts_error(const fed_opts *o, const char *k1, const char *k2)
{
	char why[400] = "";
	assert_int_equal(fed_opts_check(o, why, sizeof why), FL_EINVAL);
	if (!strstr(why, k1) || (k2 && !strstr(why, k2)))
		fail_msg("error '%s' does not name %s%s%s", why, k1, k2 ? " and " : "",
		         k2 ? k2 : "");
}

static void test_options(void **st)
{
	(void)st;
	fed_opts o;
	opts(&o);
	o.async.on = 1;
	char why[400];
	assert_int_equal(fed_opts_check(&o, why, sizeof why), 0);
	o.async.buffer_size = 0;
	expect_opts_error(&o, "aggregation.buffer_size", NULL);
	opts(&o);
	o.async.on = 1;
	o.async.a = 11;
	expect_opts_error(&o, "aggregation.staleness_exponent", NULL);
	opts(&o);
	o.async.on = 1;
	o.secure.on = 1;
	expect_opts_error(&o, "aggregation.mode", "aggregation.secure");
	opts(&o);
	o.async.on = 1;
	o.agg.strategy = AGG_MEDIAN;
	expect_opts_error(&o, "aggregation.mode", "aggregation.strategy");
	opts(&o);
	o.async.on = 1;
	o.nodes_per_round = 1;
	o.min_updates = 1;
	o.agg.weighting = AGG_W_UNIFORM;
	o.priv = (dp_opts){DP_CENTRAL, 2.0, 1.0, 1e-5, 1000, 2};
	o.async.on = 0;
	assert_int_equal(fed_opts_check(&o, why, sizeof why), 0); /* valid without async */
	o.async.on = 1;
	expect_opts_error(&o, "aggregation.mode", "privacy.mode");
	/* server optimisers compose */
	opts(&o);
	o.async.on = 1;
	o.agg.strategy = AGG_FEDADAM;
	assert_int_equal(fed_opts_check(&o, why, sizeof why), 0);
}

/* ---- the staleness-scaled mean ---- */

static void test_scaled_mean(void **st)
{
	(void)st;
	fed_opts fo;
	opts(&fo);
	tset *lay;
	assert_int_equal(lora_layout(&fo.spec, &fo.arch, &lay), 0);
	agg_opts ao;
	agg_opts_default(&ao);
	agg *a;
	assert_int_equal(agg_new(&ao, lay, &a), 0);
	agg_begin(a);
	const double fac[3] = {1.0, 0.5, 1 / sqrt(3.0)};
	const uint64_t w[3] = {10, 30, 7};
	tset *d[3];
	uint64_t seed = 99;
	for (int i = 0; i < 3; i++) {
		sim s = {.ad = lay};
		d[i] = mk_delta(&s, 0, 0.1, &seed);
		size_t n = tset_count(d[i]);
		qtensor *qs = calloc(n, sizeof *qs);
		Fedlora__QTensor *qm = calloc(n, sizeof *qm);
		Fedlora__QTensor **qp = calloc(n, sizeof *qp);
		quant_params p = {.fmt = QT_F32};
		for (size_t k = 0; k < n; k++) {
			qt_init(&qs[k]);
			assert_int_equal(quant_encode_tensor(&p, tset_at(d[i], k), &qs[k]), 0);
			qt_to_proto(&qs[k], &qm[k]);
			qp[k] = &qm[k];
		}
		Fedlora__AdapterPayload pl = FEDLORA__ADAPTER_PAYLOAD__INIT;
		pl.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
		pl.n_tensors = n;
		pl.tensors = qp;
		agg_result r;
		if (i == 0) { /* factors outside (0, 1] are refused, nothing added */
			assert_int_equal(agg_add_payload_scaled(a, &pl, w[i], 0.0, &r), FL_EINVAL);
			assert_int_equal(agg_add_payload_scaled(a, &pl, w[i], 1.5, &r), FL_EINVAL);
			assert_int_equal(agg_count(a), 0);
		}
		assert_int_equal(agg_add_payload_scaled(a, &pl, w[i], fac[i], &r), 0);
		assert_int_equal(r.verdict, AGG_ACCEPTED);
		assert_true(r.weight == (double)w[i]);
		for (size_t k = 0; k < n; k++)
			qt_fini(&qs[k]);
		free(qs);
		free(qm);
		free(qp);
	}
	/* the denominator holds the unscaled weights */
	assert_true(agg_weight_sum(a) == 47.0);
	tset *step;
	assert_int_equal(tset_zeros_like(agg_layout(a), &step), 0);
	assert_int_equal(agg_finish(a, step), 0);
	double maxerr = 0;
	for (size_t t = 0; t < tset_count(step); t++) {
		const tensor *x = tset_at(step, t);
		for (size_t k = 0; k < x->n; k++) {
			double num = 0;
			for (int i = 0; i < 3; i++)
				num += fac[i] * (double)w[i] *
				       (double)tset_find(d[i], x->name)->data[k];
			double e = fabs((double)x->data[k] - num / 47.0);
			if (e > maxerr)
				maxerr = e;
		}
	}
	/* float accumulation of three terms of magnitude <= 0.1 */
	assert_true(maxerr < 1e-7);
	tset_free(step);
	for (int i = 0; i < 3; i++)
		tset_free(d[i]);
	agg_free(a);
	/* buffering strategies have no scaled add */
	ao.strategy = AGG_MEDIAN;
	assert_int_equal(agg_new(&ao, lay, &a), 0);
	agg_begin(a);
	Fedlora__AdapterPayload empty = FEDLORA__ADAPTER_PAYLOAD__INIT;
	agg_result r;
	assert_int_equal(agg_add_payload_scaled(a, &empty, 1, 1.0, &r), FL_EINVAL);
	agg_free(a);
	tset_free(lay);
}

/* ---- the state machine ---- */

/* Runs the first deferred job only (the worker takes one at a time). */
static void run_one(harness *h, fed *f, uint64_t now)
{
	assert_true(h->njobs > 0);
	fed_job *j = h->jobs[0];
	memmove(h->jobs, h->jobs + 1, (h->njobs - 1) * sizeof h->jobs[0]);
	h->njobs--;
	fed_job_run(j);
	fed_job_done(f, j, now);
}

/* Round ids and async_buffer of the RoundStarts waiting for peer. */
static int rs_async(const harness *h, uint64_t peer, uint32_t *kbuf)
{
	int n = 0;
	for (size_t i = 0; i < h->n; i++) {
		if (h->m[i].peer != peer)
			continue;
		wire_msg *w;
		assert_int_equal(wire_decode(h->m[i].data, h->m[i].len, 1u << 30, 0, &w), 0);
		const Fedlora__Envelope *e = wire_env(w);
		if (e->body_case == FEDLORA__ENVELOPE__BODY_ROUND_START) {
			*kbuf = e->round_start->async_buffer;
			n++;
		}
		wire_free(w);
	}
	return n;
}

static void async_opts(fed_opts *o)
{
	opts(o);
	o->async.on = 1;
	o->async.buffer_size = 2;
	o->async.fn = FA_POLYNOMIAL;
	o->async.a = 0.5;
	o->async.max_staleness = 2;
	o->min_nodes = 3;
	o->round_timeout_ms = 100000;
	o->down_fmt = QT_Q8;
	o->agg.weighting = AGG_W_SAMPLES;
}

/* Checks global(f) - before against sum f_i w_i d_i / sum w_i within the
 * q8 rounding of the downlink (half a step of the block's absmax / 127,
 * plus float slack). */
static void check_step(const tset *before, const fed *f, tset *const *d, const double *fac,
                       const double *w, int n)
{
	const tset *g = fed_global(f);
	double wsum = 0;
	for (int i = 0; i < n; i++)
		wsum += w[i];
	for (size_t t = 0; t < tset_count(g); t++) {
		const tensor *x = tset_at(g, t);
		const tensor *b = tset_find(before, x->name);
		double amax = 0;
		double *ref = malloc(x->n * sizeof *ref);
		for (size_t k = 0; k < x->n; k++) {
			double s = 0;
			for (int i = 0; i < n; i++)
				s += fac[i] * w[i] * (double)tset_find(d[i], x->name)->data[k];
			ref[k] = s / wsum;
			if (fabs(ref[k]) > amax)
				amax = fabs(ref[k]);
		}
		/* blocks of 32 along the last dimension: bound by the tensor max */
		double tol = 0.5 * amax / 127 * 1.01 + 1e-6;
		for (size_t k = 0; k < x->n; k++) {
			double got = (double)x->data[k] - (double)b->data[k];
			if (fabs(got - ref[k]) > tol)
				fail_msg("%s[%zu]: step %.9g, reference %.9g (tolerance %.3g)",
				         x->name, k, got, ref[k], tol);
		}
		free(ref);
	}
}

typedef struct jasync {
	int updates, accepted, too_stale, ends, async_ends;
	double factor_s1;
} jasync;

static int jasync_cb(const cJSON *o, void *ud)
{
	jasync *c = ud;
	const char *t = cJSON_GetObjectItemCaseSensitive(o, "type")->valuestring;
	if (!strcmp(t, "async_update")) {
		c->updates++;
		if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "accepted"))) {
			c->accepted++;
			if (cJSON_GetObjectItemCaseSensitive(o, "staleness")->valuedouble == 1)
				c->factor_s1 =
				    cJSON_GetObjectItemCaseSensitive(o, "factor")->valuedouble;
		} else if (!strcmp(cJSON_GetObjectItemCaseSensitive(o, "reason")->valuestring,
		                   "too_stale")) {
			c->too_stale++;
		}
	} else if (!strcmp(t, "round_end")) {
		c->ends++;
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "mode");
		c->async_ends += cJSON_IsString(m) && !strcmp(m->valuestring, "async");
	}
	return 0;
}

static tset *f32_update(fed *f, sim *s, double sigma, uint64_t *seed, uint64_t samples,
                        uint64_t now)
{
	tset *d = mk_delta(s, 0, sigma, seed);
	sim_update_ex(f, s, d, QT_F32, s->round, s->round_version, samples, 0, now);
	return d;
}

static void test_flow(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	store *sto;
	assert_int_equal(store_open(dir, &sto), 0);
	harness h = {0};
	fed_opts o;
	async_opts(&o);
	fed *f = mk_fed(&o, sto, &h, 0);
	sim s[4];
	const char *cn[4] = {"fast-a", "fast-b", "slow-c", "slow-d"};
	for (int i = 0; i < 4; i++)
		sim_init(&s[i], 10 + (uint64_t)i, cn[i]);
	uint64_t now = 1000, seed = 5;
	/* below min_nodes nobody is given work */
	sim_join(f, &o, &s[0], now);
	sim_join(f, &o, &s[1], now);
	uint32_t kb = 0;
	assert_int_equal(rs_async(&h, s[0].peer, &kb), 0);
	sim_join(f, &o, &s[2], now);
	sim_join(f, &o, &s[3], now);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	uint64_t ids[4];
	for (int i = 0; i < 4; i++) {
		assert_int_equal(rs_async(&h, s[i].peer, &kb), 1);
		assert_int_equal(kb, 2);
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].round_version, 0);
		ids[i] = s[i].round;
		for (int k = 0; k < i; k++)
			assert_true(ids[k] != ids[i]);
	}
	/* v1 from the two fast nodes (staleness 0, factor 1) */
	tset *v0;
	assert_int_equal(tset_clone(fed_global(f), &v0), 0);
	tset *d[3];
	double fac[3], w[3];
	d[0] = f32_update(f, &s[0], 0.02, &seed, 10, now);
	assert_int_equal(fed_version(f), 0);
	s[0].got_round_start = 0;
	sim_recv(&h, &s[0]);
	assert_true(s[0].ack_accepted);
	assert_int_equal(s[0].got_round_start, 1); /* new work at once, still on v0 */
	assert_int_equal(s[0].round_version, 0);
	d[1] = f32_update(f, &s[1], 0.02, &seed, 30, now);
	assert_int_equal(fed_version(f), 1);
	fac[0] = fac[1] = 1;
	w[0] = 10;
	w[1] = 30;
	check_step(v0, f, d, fac, w, 2);
	tset_free(d[0]);
	tset_free(d[1]);
	s[1].got_round_start = 0;
	sim_recv(&h, &s[1]);
	assert_true(s[1].ack_accepted);
	assert_int_equal(s[1].got_round_start, 1);
	assert_int_equal(s[1].round_version, 1);
	assert_same_global(f, &s[1]);
	/* fast-a's first task is answered: uploading for it again is late */
	sim_update_ex(f, &s[0], s[0].ad, QT_F32, ids[0], 0, 10, 0, now);
	sim_recv(&h, &s[0]);
	assert_false(s[0].ack_accepted);
	assert_int_equal(s[0].ack_reason, FEDLORA__UPDATE_ACK__REASON__REASON_LATE);
	/* v2: slow-c's update from v0 (staleness 1, factor 1/sqrt 2) with
	 * fast-b's from v1 (staleness 0, factor 1) */
	tset *v1;
	assert_int_equal(tset_clone(fed_global(f), &v1), 0);
	d[0] = f32_update(f, &s[2], 0.02, &seed, 20, now);
	sim_recv(&h, &s[2]);
	assert_true(s[2].ack_accepted);
	assert_int_equal(s[2].round_version, 1); /* its next task is on v1 */
	d[1] = f32_update(f, &s[1], 0.02, &seed, 20, now);
	assert_int_equal(fed_version(f), 2);
	fac[0] = 1 / sqrt(2.0);
	fac[1] = 1;
	w[0] = w[1] = 20;
	check_step(v1, f, d, fac, w, 2);
	/* the same step without the staleness factor is far outside that
	 * tolerance: the check above tells the weighting apart */
	{
		const tset *g = fed_global(f);
		double worst = 0;
		for (size_t t = 0; t < tset_count(g); t++) {
			const tensor *x = tset_at(g, t);
			for (size_t k = 0; k < x->n; k++) {
				double ref = ((double)tset_find(d[0], x->name)->data[k] +
				              (double)tset_find(d[1], x->name)->data[k]) /
				             2;
				double got =
				    (double)x->data[k] - (double)tset_find(v1, x->name)->data[k];
				if (fabs(got - ref) > worst)
					worst = fabs(got - ref);
			}
		}
		assert_true(worst > 1e-3);
	}
	tset_free(d[0]);
	tset_free(d[1]);
	sim_recv(&h, &s[1]);
	assert_same_global(f, &s[1]);
	/* v3 from slow-c (v1 task, staleness 1) and fast-b (v2 task) */
	d[0] = f32_update(f, &s[2], 0.02, &seed, 20, now);
	sim_recv(&h, &s[2]);
	d[1] = f32_update(f, &s[1], 0.02, &seed, 20, now);
	tset_free(d[0]);
	tset_free(d[1]);
	assert_int_equal(fed_version(f), 3);
	/* slow-d still holds its v0 task: staleness 3 > max_staleness 2 */
	sim_update_ex(f, &s[3], s[3].ad, QT_F32, s[3].round, 0, 10, 0, now);
	s[3].got_round_start = 0;
	sim_recv(&h, &s[3]);
	assert_false(s[3].ack_accepted);
	assert_int_equal(s[3].ack_reason, FEDLORA__UPDATE_ACK__REASON__REASON_TOO_STALE);
	assert_non_null(strstr(s[3].ack_detail, "max_staleness"));
	assert_int_equal(s[3].got_round_start, 1); /* and new work, on v3 */
	assert_int_equal(s[3].round_version, 3);
	assert_same_global(f, &s[3]);
	/* the journal itemises every update and version */
	fed_free(f);
	jasync jc = {0};
	size_t nl, nb;
	char path[600];
	snprintf(path, sizeof path, "%s", store_journal_path(sto));
	assert_int_equal(journal_read(path, jasync_cb, &jc, &nl, &nb), 0);
	assert_int_equal(jc.accepted, 6);
	assert_int_equal(jc.too_stale, 1);
	assert_int_equal(jc.async_ends, 3);
	assert_true(fabs(jc.factor_s1 - 1 / sqrt(2.0)) < 1e-12);
	/* restart: an accepted update in the buffer (not committed) is not
	 * kept; every committed version is, with its fingerprint */
	uint8_t sha3[32];
	h_clear(&h);
	f = mk_fed(&o, sto, &h, 0);
	assert_int_equal(fed_version(f), 3);
	fed_version_sha(f, sha3);
	assert_same_global(f, &s[3]);
	uint64_t rid = fed_round_id(f);
	for (int i = 0; i < 4; i++)
		sim_join_ex(f, &o, &s[i], NULL, NULL, 0, 0, now);
	for (int i = 0; i < 4; i++) {
		s[i].got_round_start = 0;
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].got_round_start, 1);
		assert_true(s[i].round > rid); /* task ids keep increasing */
		assert_int_equal(s[i].round_version, 3);
	}
	d[0] = f32_update(f, &s[0], 0.02, &seed, 20, now); /* one in the buffer */
	tset_free(d[0]);
	fed_free(f); /* a crash: no shutdown */
	h_clear(&h);
	f = mk_fed(&o, sto, &h, 0);
	assert_int_equal(fed_version(f), 3);
	uint8_t again[32];
	fed_version_sha(f, again);
	assert_memory_equal(again, sha3, 32);
	fed_free(f);
	tset_free(v0);
	tset_free(v1);
	for (int i = 0; i < 4; i++)
		sim_fini(&s[i]);
	h_fini(&h);
	store_free(sto);
	tu_rmtree(dir);
	free(dir);
}

/* Jobs on a worker: updates that arrive while the buffer's commit is due
 * or running are held and join the next version with the staleness they
 * have then; max_concurrent bounds the tasks out; max_rounds stops. */
static void test_held_and_concurrency(void **st)
{
	(void)st;
	harness h = {0};
	fed_opts o;
	async_opts(&o);
	o.async.max_concurrent = 3;
	o.async.fn = FA_CONSTANT;
	o.max_rounds = 2;
	fed *f = mk_fed(&o, NULL, &h, 1);
	sim s[4];
	for (int i = 0; i < 4; i++) {
		char cn[16];
		snprintf(cn, sizeof cn, "n%d", i);
		sim_init(&s[i], 20 + (uint64_t)i, cn);
		sim_join(f, &o, &s[i], 1000);
	}
	int given = 0;
	for (int i = 0; i < 4; i++) {
		s[i].got_round_start = 0;
		sim_recv(&h, &s[i]);
		given += s[i].got_round_start;
	}
	assert_int_equal(given, 3); /* max_concurrent */
	assert_int_equal(s[3].got_round_start, 0);
	uint64_t seed = 7;
	tset *d = mk_delta(&s[0], 0, 0.01, &seed);
	sim_update(f, &s[0], d, 10, 1000);
	sim_update(f, &s[1], d, 10, 1000);
	assert_int_equal(h.njobs, 2);
	run_one(&h, f, 1001);
	run_one(&h, f, 1001); /* both accepted: the commit job is queued */
	assert_int_equal(h.njobs, 1);
	assert_int_equal(fed_get_state(f), FED_COMMITTING);
	assert_int_equal(fed_version(f), 0);
	sim_update(f, &s[2], d, 10, 1002); /* during the commit: held */
	assert_int_equal(h.njobs, 1);
	h_run_jobs(&h, f, 1003); /* commit, then the held update on v1 */
	assert_int_equal(fed_version(f), 1);
	assert_int_equal(fed_get_state(f), FED_COLLECTING);
	sim_recv(&h, &s[2]);
	assert_true(s[2].ack_accepted);
	/* the node left out gets work once slots are free */
	for (int i = 0; i < 4; i++)
		sim_recv(&h, &s[i]);
	assert_int_equal(s[3].got_round_start, 1); /* when n0's slot freed: on v0 */
	assert_int_equal(s[3].round_version, 0);
	sim_update(f, &s[3], d, 10, 1004);
	h_run_jobs(&h, f, 1005);
	assert_int_equal(fed_version(f), 2);
	assert_int_equal(fed_get_state(f), FED_STOPPED); /* max_rounds */
	assert_true(fed_done(f));
	for (int i = 0; i < 4; i++) {
		s[i].got_bye = 0;
		sim_recv(&h, &s[i]);
		assert_int_equal(s[i].got_bye, 1);
	}
	tset_free(d);
	fed_free(f);
	for (int i = 0; i < 4; i++)
		sim_fini(&s[i]);
	h_fini(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_weights),
	    cmocka_unit_test(test_options),
	    cmocka_unit_test(test_scaled_mean),
	    cmocka_unit_test(test_flow),
	    cmocka_unit_test(test_held_and_concurrency),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
