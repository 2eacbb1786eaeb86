/* upstream — see upstream.h. */
#include "upstream.h"

#include "buf.h"
#include "chan.h"
#include "client.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "sha.h"
#include "state.h"
#include "wire.h"

#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD             "upstream"
#define UP_PEND_MAX     32
/* a regional round shorter than this is not worth starting */
#define UP_MIN_ROUND_MS 200u

#define WHY(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
	} while (0)

/* ---- configuration ---- */

int upstream_on(const upstream_opts *o)
{
	return o && o->endpoint && *o->endpoint;
}

int upstream_from_cfg(const cfg *c, const fed_opts *fo, upstream_opts *o, char *why, size_t whylen)
{
	memset(o, 0, sizeof *o);
	o->endpoint = cfg_str(c, "upstream.endpoint");
	o->server_name = cfg_str(c, "upstream.server_name");
	o->cert = cfg_str(c, "upstream.cert");
	o->key = cfg_str(c, "upstream.key");
	o->ca = cfg_str(c, "upstream.ca");
	if (!o->ca || !*o->ca)
		o->ca = cfg_str(c, "server.ca");
	o->crl = cfg_str(c, "upstream.crl");
	o->margin_ms = (uint32_t)cfg_int(c, "upstream.margin_ms");
	o->sample_count = (uint64_t)cfg_int(c, "upstream.sample_count");
	o->reconnect_min_ms = (int)cfg_int(c, "upstream.reconnect_min_ms");
	o->reconnect_max_ms = (int)cfg_int(c, "upstream.reconnect_max_ms");
	o->max_msg = fo->max_msg;
	o->seed = fo->seed;
	const char *sd = cfg_str(c, "upstream.state_dir");
	const char *base = cfg_str(c, "state.dir");
	int n = sd && *sd
	            ? snprintf(o->state_dir, sizeof o->state_dir, "%s", sd)
	            : snprintf(o->state_dir, sizeof o->state_dir, "%s/upstream", base ? base : ".");
	if (n < 0 || (size_t)n >= sizeof o->state_dir) {
		WHY("upstream.state_dir: path too long");
		return FL_ECONFIG;
	}
	if (!upstream_on(o))
		return 0;
	if (!o->cert || !*o->cert || !o->key || !*o->key) {
		WHY("upstream.endpoint is set: upstream.cert and upstream.key (the region's own "
		    "client certificate towards the root) are required");
		return FL_ECONFIG;
	}
	if (!o->ca || !*o->ca) {
		WHY("upstream.endpoint is set: upstream.ca (or server.ca) is required");
		return FL_ECONFIG;
	}
	/* a region forwards a plain sample-weighted mean: the root's strategy
	 * then sees what it would see from the same nodes in one tier */
	if (fo->agg.strategy != AGG_FEDAVG) {
		WHY("aggregation.strategy = %s cannot run with upstream.endpoint (a region "
		    "forwards a plain weighted mean: use fedavg; the root's strategy may be any "
		    "of the FedAvg family)",
		    agg_strategy_name(fo->agg.strategy));
		return FL_ECONFIG;
	}
	if (fo->agg.weighting != AGG_W_SAMPLES) {
		WHY("aggregation.weighting = uniform cannot run with upstream.endpoint (the "
		    "region's weight sent to the root is its nodes' sample count: use samples)");
		return FL_ECONFIG;
	}
	if (fo->agg.server_lr != 1.0) {
		WHY("aggregation.server_lr = %g cannot run with upstream.endpoint (a region "
		    "forwards the mean itself; set the server learning rate on the root)",
		    fo->agg.server_lr);
		return FL_ECONFIG;
	}
	if (fo->secure.on) {
		WHY("aggregation.secure = true cannot run with upstream.endpoint (secure "
		    "aggregation through regions is not implemented: a region would need its "
		    "nodes' sum in the clear to forward it)");
		return FL_ECONFIG;
	}
	if (fo->priv.mode != DP_OFF) {
		WHY("privacy.mode = %s cannot run with upstream.endpoint (a region's noise and "
		    "clip would protect the region's aggregate, not each node; DP with tiers is "
		    "not implemented)",
		    fo->priv.mode == DP_CENTRAL ? "central" : "distributed");
		return FL_ECONFIG;
	}
	return 0;
}

/* ---- state ---- */

struct upstream {
	upstream_opts o;
	char ep[512], sn[256], cert[1024], key[1024], ca[1024], crl[1024];
	void *zctx;
	fed *f;
	fed_tier_hooks hooks;
	tset *layout;
	nst *st;
	ncl *cl;
	chan_client *ch;
	ncl_action pend[UP_PEND_MAX];
	int npend;
	int failed;
	/* the root's latest RoundStart (peeked before the ncl sees it) */
	uint64_t rs_round;
	uint64_t rs_deadline_at; /* monotonic ms */
	buf rs_delta;            /* its AdapterPayload when a non-empty delta */
	uint64_t rs_from, rs_to;
	int rs_has_delta;
	/* the TRAIN job the ncl handed us (owned) and the regional round run
	 * for it (0: not started yet) */
	ncl_job *job;
	uint64_t region_round;
	uint64_t job_deadline_at;
	uint32_t round_cap;       /* the region's rounds.deadline_ms */
	uint32_t min_nodes;       /* the region's rounds.min_nodes */
	uint64_t kill_on_forward; /* test hook (FEDLORA_TEST_KILL_ON_FORWARD=root round) */
};

static void up_copy(char *dst, size_t cap, const char *src, const char **keep)
{
	if (src && *src) {
		snprintf(dst, cap, "%s", src);
		*keep = dst;
	} else {
		*keep = NULL;
	}
}

static void on_tier_done(void *ud, const fed_tier_result *r);

int upstream_new(const upstream_opts *o, void *zctx, upstream **out)
{
	upstream *u = calloc(1, sizeof *u);
	if (!u)
		return FL_ENOMEM;
	u->o = *o;
	up_copy(u->ep, sizeof u->ep, o->endpoint, &u->o.endpoint);
	up_copy(u->sn, sizeof u->sn, o->server_name, &u->o.server_name);
	up_copy(u->cert, sizeof u->cert, o->cert, &u->o.cert);
	up_copy(u->key, sizeof u->key, o->key, &u->o.key);
	up_copy(u->ca, sizeof u->ca, o->ca, &u->o.ca);
	up_copy(u->crl, sizeof u->crl, o->crl, &u->o.crl);
	u->zctx = zctx;
	u->hooks.ud = u;
	u->hooks.done = on_tier_done;
	buf_init(&u->rs_delta, 0);
	const char *k = getenv("FEDLORA_TEST_KILL_ON_FORWARD"); /* tests only */
	if (k && *k)
		u->kill_on_forward = strtoull(k, NULL, 10);
	*out = u;
	return 0;
}

fed_tier_hooks *upstream_hooks(upstream *u)
{
	return &u->hooks;
}

int upstream_start(upstream *u, fed *f, const fed_opts *fo)
{
	u->f = f;
	u->round_cap = fo->round_timeout_ms;
	u->min_nodes = fo->min_nodes;
	uint8_t shape_fp[32];
	int rc = tset_zeros_like(fed_global(f), &u->layout);
	if (!rc)
		rc = tset_shape_fingerprint(u->layout, shape_fp);
	if (rc) {
		LOGE(MOD, "cannot build the adapter layout: %s", fl_strerror(rc));
		return rc;
	}
	if ((rc = nst_open(u->o.state_dir, fo->base_sha, shape_fp, &u->st)) != 0) {
		LOGE(MOD, "cannot use upstream.state_dir %s: %s", u->o.state_dir, fl_strerror(rc));
		return rc;
	}
	ncl_config nc;
	memset(&nc, 0, sizeof nc);
	nc.software_version = NULL;
	memcpy(nc.base_fp, fo->base_sha, 32);
	nc.lora = fo->spec;
	nc.layout = u->layout;
	nc.sample_count = u->o.sample_count ? u->o.sample_count : 1;
	nc.capabilities = "region";
	nc.eval = 0;
	nc.max_msg = u->o.max_msg;
	nc.node_seed = u->o.seed;
	if ((rc = ncl_new(&nc, u->st, &u->cl)) != 0) {
		LOGE(MOD, "cannot start the protocol machine: %s", fl_strerror(rc));
		return rc;
	}
	chan_client_opts co;
	chan_client_opts_default(&co);
	co.endpoint = u->o.endpoint;
	co.server_name = u->o.server_name;
	co.cert_path = u->o.cert;
	co.key_path = u->o.key;
	co.ca_path = u->o.ca;
	co.crl_path = u->o.crl;
	co.max_msg = u->o.max_msg;
	if (co.out_queue_max < u->o.max_msg + (1u << 20))
		co.out_queue_max = u->o.max_msg + (1u << 20);
	co.reconnect_ivl_ms = u->o.reconnect_min_ms;
	co.reconnect_ivl_max_ms = u->o.reconnect_max_ms < u->o.reconnect_min_ms
	                              ? u->o.reconnect_min_ms
	                              : u->o.reconnect_max_ms;
	co.zmq_ctx = u->zctx;
	if ((rc = chan_client_new(&co, &u->ch)) != 0) {
		LOGE(MOD,
		     "cannot set up the channel to the root %s (upstream.endpoint, "
		     "upstream.cert/key/ca): %s",
		     u->o.endpoint, fl_strerror(rc));
		return rc;
	}
	if (nst_global(u->st))
		LOGI(MOD, "region of %s: holding the root's version %" PRIu64, u->o.endpoint,
		     nst_version(u->st));
	else
		LOGI(MOD, "region of %s: no version of the root held yet", u->o.endpoint);
	return 0;
}

static void drop_pending(upstream *u)
{
	for (int i = 0; i < u->npend; i++)
		ncl_action_fini(&u->pend[i]);
	u->npend = 0;
}

static void drop_job(upstream *u)
{
	ncl_job_free(u->job);
	u->job = NULL;
	u->region_round = 0;
}

void upstream_free(upstream *u, const char *reason)
{
	if (!u)
		return;
	if (u->cl && u->ch) {
		ncl_bye(u->cl, reason ? reason : "region stopping");
		ncl_action a;
		while (ncl_next(u->cl, &a) == 0) {
			if (a.kind == NCL_ACT_SEND)
				chan_client_send(u->ch, a.data, a.len);
			ncl_action_fini(&a);
		}
	}
	drop_pending(u);
	drop_job(u);
	chan_client_free(u->ch); /* flushes the Bye within linger */
	ncl_free(u->cl);
	if (u->st)
		nst_save(u->st);
	nst_free(u->st);
	tset_free(u->layout);
	buf_fini(&u->rs_delta);
	free(u);
}

/* ---- the protocol machine's actions ---- */

static void flush_pending(upstream *u)
{
	int i = 0;
	for (; i < u->npend; i++) {
		int rc = chan_client_send(u->ch, u->pend[i].data, u->pend[i].len);
		if (rc == FL_EAGAIN)
			break;
		if (rc)
			LOGD(MOD, "queued message to the root dropped: %s", fl_strerror(rc));
		ncl_action_fini(&u->pend[i]);
	}
	memmove(u->pend, u->pend + i, (size_t)(u->npend - i) * sizeof u->pend[0]);
	u->npend -= i;
}

static void carry_out(upstream *u, ncl_action *a, uint64_t now)
{
	int rc;
	switch (a->kind) {
	case NCL_ACT_SEND:
		rc = u->npend ? FL_EAGAIN : chan_client_send(u->ch, a->data, a->len);
		if (rc == FL_EAGAIN) {
			if (u->npend < UP_PEND_MAX) {
				u->pend[u->npend++] = *a;
				a->data = NULL;
			} else {
				LOGW(MOD, "send queue to the root full; message dropped");
			}
		} else if (rc) {
			LOGD(MOD, "message to the root not sent (%s): no session", fl_strerror(rc));
		}
		break;
	case NCL_ACT_READY:
		if ((rc = chan_client_set_ready(u->ch)) != 0)
			LOGW(MOD, "channel to the root not ready: %s", fl_strerror(rc));
		break;
	case NCL_ACT_RESET:
		drop_pending(u);
		chan_client_reset(u->ch, a->why);
		break;
	case NCL_ACT_JOB:
		if (a->job->kind == NCL_JOB_TRAIN) {
			if (u->job && u->region_round)
				fed_tier_abort(u->f, now);
			drop_job(u);
			u->job = a->job;
			a->job = NULL;
			/* the deadline of the RoundStart this job answers */
			u->job_deadline_at =
			    u->job->round_id == u->rs_round ? u->rs_deadline_at : 0;
		} else { /* eval is off; answer anything else at once */
			ncl_on_eval_done(u->cl, a->job->id, FL_EUNSUPPORTED, NAN, now);
		}
		break;
	case NCL_ACT_CANCEL:
		if (u->job && u->job->id == a->job_id) {
			LOGI(MOD, "root round %" PRIu64 " cancelled", u->job->round_id);
			if (u->region_round)
				fed_tier_abort(u->f, now);
			drop_job(u);
		}
		break;
	case NCL_ACT_FATAL:
		if (!u->failed) {
			u->failed = a->code ? a->code : FL_ESTATE;
			LOGE(MOD, "the root refused this region for good: %s; stopping", a->why);
		}
		break;
	}
	ncl_action_fini(a);
}

static void drain_actions(upstream *u, uint64_t now)
{
	ncl_action a;
	while (ncl_next(u->cl, &a) == 0)
		carry_out(u, &a, now);
}

/* ---- the regional round ---- */

static void fail_job(upstream *u, int rc, const char *why, uint64_t now)
{
	LOGW(MOD, "root round %" PRIu64 ": nothing to forward: %s", u->job->round_id, why);
	uint64_t id = u->job->id;
	drop_job(u);
	ntr_result res;
	memset(&res, 0, sizeof res);
	ncl_on_train_done(u->cl, id, rc, NULL, &res, now);
}

/* Starts the regional round for the pending job when fed is free. */
static void try_start(upstream *u, uint64_t now)
{
	if (!u->job || u->region_round)
		return;
	uint64_t left = u->job_deadline_at > now ? u->job_deadline_at - now : 0;
	if (!u->job_deadline_at || left <= (uint64_t)u->o.margin_ms + UP_MIN_ROUND_MS) {
		fail_job(u, FL_ETIMEDOUT,
		         "too little time left before the root's deadline (upstream.margin_ms)",
		         now);
		return;
	}
	if (fed_nodes_connected(u->f) < u->min_nodes)
		return; /* not yet enough nodes: tried again on the next turn */
	uint64_t d = left - u->o.margin_ms;
	if (u->round_cap && d > u->round_cap) /* the region's own rounds.deadline_ms */
		d = u->round_cap;
	tset *g = NULL;
	if (tset_clone(u->job->adapter, &g)) {
		fail_job(u, FL_ENOMEM, "out of memory", now);
		return;
	}
	const uint8_t *dl = NULL;
	size_t dn = 0;
	if (u->rs_has_delta && u->rs_to == u->job->version && u->rs_from == fed_version(u->f)) {
		dl = u->rs_delta.data;
		dn = u->rs_delta.len;
	}
	int rc = fed_tier_round(u->f, u->job->version, nst_version_sha(u->st), g, dl, dn,
	                        &u->job->params, (uint32_t)(d > UINT32_MAX ? UINT32_MAX : d), now);
	if (rc == 0) {
		u->region_round = fed_round_id(u->f);
		LOGI(MOD,
		     "root round %" PRIu64 " (version %" PRIu64 "): regional round %" PRIu64
		     ", deadline %" PRIu64 " ms",
		     u->job->round_id, u->job->version, u->region_round, d);
	} else if (rc != FL_EBUSY && rc != FL_EAGAIN) {
		fail_job(u, rc, fl_strerror(rc), now);
	}
	/* FL_EBUSY (a previous round still closing), FL_EAGAIN (too few nodes):
	 * tried again on the next loop turn until the time is up */
}

static void on_tier_done(void *ud, const fed_tier_result *r)
{
	upstream *u = ud;
	uint64_t now = clk_mono_ms();
	if (!u->job || !u->region_round || r->round_id != u->region_round)
		return; /* a round the root no longer waits for */
	if (!r->ok) {
		fail_job(u, FL_EAGAIN, r->detail ? r->detail : "regional round abandoned", now);
		drain_actions(u, now);
		return;
	}
	/* the "locally trained" adapter: the root's version plus the mean step */
	tset *local = NULL;
	int rc = tset_clone(fed_global(u->f), &local);
	if (!rc)
		rc = tset_add(local, r->mean);
	if (rc) {
		tset_free(local);
		fail_job(u, rc, "cannot build the regional update", now);
		drain_actions(u, now);
		return;
	}
	ntr_result res;
	memset(&res, 0, sizeof res);
	res.samples = r->weight;
	res.train_loss = r->has_train_loss ? r->train_loss : NAN;
	res.first_loss = res.train_loss;
	res.steps = r->accepted;
	uint64_t id = u->job->id;
	LOGI(MOD, "root round %" PRIu64 ": forwarding %zu updates, weight %" PRIu64,
	     u->job->round_id, r->accepted, r->weight);
	if (u->kill_on_forward && u->job->round_id == u->kill_on_forward) {
		/* test hook: a region dying mid-round, its nodes' updates
		 * collected and nothing forwarded */
		LOGW(MOD,
		     "FEDLORA_TEST_KILL_ON_FORWARD: killing this region before it forwards "
		     "root round %" PRIu64,
		     u->job->round_id);
		raise(SIGKILL);
	}
	drop_job(u);
	ncl_on_train_done(u->cl, id, 0, local, &res, now);
	drain_actions(u, now);
}

/* ---- the loop ---- */

int upstream_pollitems(upstream *u, zmq_pollitem_t *items, int max)
{
	int n = chan_client_pollitems(u->ch, items, max);
	return n < 0 ? 0 : n;
}

long upstream_timeout(const upstream *u, uint64_t now_ms)
{
	long t = chan_client_timeout(u->ch);
	int tc = ncl_timeout(u->cl, now_ms);
	if (tc >= 0 && (t < 0 || tc < t))
		t = tc;
	if ((u->npend || (u->job && !u->region_round)) && (t < 0 || t > 50))
		t = 50; /* retry sends / the round start soon */
	return t;
}

/* Keeps what the region needs of a RoundStart before the ncl applies it:
 * its deadline and, for a delta, the payload bytes for our own nodes. */
static void peek_round_start(upstream *u, const Fedlora__RoundStart *rs, uint64_t now)
{
	u->rs_round = rs->round_id;
	u->rs_deadline_at = now + rs->deadline_ms;
	u->rs_has_delta = 0;
	const Fedlora__AdapterPayload *p = rs->adapter;
	if (!p || p->kind != FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA || !p->n_tensors)
		return;
	size_t n = fedlora__adapter_payload__get_packed_size(p);
	buf_clear(&u->rs_delta);
	if (buf_reserve(&u->rs_delta, n ? n : 1))
		return; /* nodes get a snapshot instead */
	u->rs_delta.len = fedlora__adapter_payload__pack(p, u->rs_delta.data);
	u->rs_from = p->from_version;
	u->rs_to = p->to_version;
	u->rs_has_delta = 1;
}

static void on_event(upstream *u, chan_event *ev, uint64_t now)
{
	switch (ev->type) {
	case CHAN_EV_UP:
		LOGI(MOD, "TLS session %" PRIu64 " up with the root '%s'", ev->peer, ev->cn);
		ncl_on_up(u->cl, now);
		break;
	case CHAN_EV_MESSAGE: {
		wire_msg *m = NULL;
		int rc = wire_decode(ev->data, ev->len, u->o.max_msg, 0, &m);
		if (rc) {
			LOGW(MOD, "undecodable message from the root (%zu bytes): %s", ev->len,
			     fl_strerror(rc));
			break;
		}
		const Fedlora__Envelope *env = wire_env(m);
		if (env->body_case == FEDLORA__ENVELOPE__BODY_ROUND_START && env->round_start)
			peek_round_start(u, env->round_start, now);
		ncl_on_envelope(u->cl, env, ev->len, now);
		wire_free(m);
		break;
	}
	case CHAN_EV_DOWN:
		drop_pending(u);
		if (ev->was_up) {
			LOGW(MOD, "lost the root (%s); reconnecting with back-off, nodes stay",
			     ev->why);
			ncl_on_down(u->cl, now, ev->why);
		} else {
			LOGD(MOD, "connection attempt to the root failed: %s", ev->why);
		}
		break;
	default:
		break;
	}
	chan_event_fini(ev);
}

void upstream_process(upstream *u, const zmq_pollitem_t *items, int n, uint64_t now_ms)
{
	int rc = chan_client_process(u->ch, items, n);
	if (rc && rc != FL_EAGAIN && rc != FL_EINTR)
		LOGD(MOD, "channel: %s", fl_strerror(rc));
	chan_event ev;
	while (chan_client_next(u->ch, &ev) == 0) {
		on_event(u, &ev, clk_mono_ms());
		drain_actions(u, clk_mono_ms());
	}
	now_ms = clk_mono_ms();
	ncl_tick(u->cl, now_ms);
	if (u->npend)
		flush_pending(u);
	drain_actions(u, now_ms);
	try_start(u, now_ms);
	drain_actions(u, now_ms);
}

int upstream_failed(const upstream *u)
{
	return u ? u->failed : 0;
}

int upstream_finished(const upstream *u)
{
	return u && u->cl ? ncl_finished(u->cl) : 0;
}
