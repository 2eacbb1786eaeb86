/* fed — see fed.h. */
#include "fed.h"

#include "buf.h"
#include "clock.h"
#include "downlink.h"
#include "ddg.h"
#include "dpdist.h"
#include "err.h"
#include "journal.h"
#include "log.h"
#include "quant.h"
#include "rng.h"
#include "sagrid.h"
#include "sawire.h"
#include "secagg.h"
#include "sha.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fed.c sends f32 snapshots straight from memory: little-endian hosts only"
#endif

#define MOD "fed"

/* ------------------------------------------------------------------ */
/* small open-addressing maps                                          */

typedef struct hslot {
	uint64_t h; /* 0 = empty */
	void *p;
} hslot;

typedef struct hmap {
	hslot *s;
	size_t cap, n;
} hmap;

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x ? x : 1;
}

static uint64_t str_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++) {
		h ^= (uint8_t)*s;
		h *= 1099511628211ull;
	}
	return mix64(h);
}

typedef int (*hm_eq)(const void *item, const void *key);

static void *hm_get(const hmap *m, uint64_t h, hm_eq eq, const void *key)
{
	if (!m->cap)
		return NULL;
	for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->s[i].h)
			return NULL;
		if (m->s[i].h == h && eq(m->s[i].p, key))
			return m->s[i].p;
	}
}

static int hm_grow(hmap *m)
{
	size_t nc = m->cap ? m->cap * 2 : 64;
	hslot *ns = calloc(nc, sizeof *ns);
	if (!ns)
		return FL_ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		if (!m->s[i].h)
			continue;
		size_t j = m->s[i].h & (nc - 1);
		while (ns[j].h)
			j = (j + 1) & (nc - 1);
		ns[j] = m->s[i];
	}
	free(m->s);
	m->s = ns;
	m->cap = nc;
	return 0;
}

static int hm_put(hmap *m, uint64_t h, void *p)
{
	if ((m->n + 1) * 2 > m->cap && hm_grow(m))
		return FL_ENOMEM;
	size_t i = h & (m->cap - 1);
	while (m->s[i].h)
		i = (i + 1) & (m->cap - 1);
	m->s[i].h = h;
	m->s[i].p = p;
	m->n++;
	return 0;
}

/* Removes the slot holding p (backward-shift deletion). */
static void hm_del(hmap *m, uint64_t h, const void *p)
{
	if (!m->cap)
		return;
	size_t mask = m->cap - 1, i = h & mask;
	for (;; i = (i + 1) & mask) {
		if (!m->s[i].h)
			return;
		if (m->s[i].p == p)
			break;
	}
	m->n--;
	size_t j = i;
	for (;;) {
		m->s[i].h = 0;
		m->s[i].p = NULL;
		for (;;) {
			j = (j + 1) & mask;
			if (!m->s[j].h)
				return;
			size_t k = m->s[j].h & mask;
			/* move j back to i unless its home k lies cyclically in (i, j] */
			if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
				continue;
			break;
		}
		m->s[i] = m->s[j];
		i = j;
	}
}

/* ------------------------------------------------------------------ */
/* state                                                               */

enum nstate { N_IDLE = 0, N_TRAINING, N_UPLOADING, N_GONE };
static const char *const nstate_names[] = {"idle", "training", "uploading", "gone"};

typedef struct fnode {
	char cn[65];
	uint64_t peer; /* 0 = no session */
	char sw[64];
	char caps[256];
	uint64_t samples;
	uint64_t joined_ms, last_seen;
	enum nstate st;
	int held_known;
	uint64_t held_version;
	uint8_t held_sha[32];
	double eval_loss;
	int has_eval_loss;
	uint64_t part_round; /* round it participates in (0 = none) */
	size_t part_idx;
	nrank_assign rk; /* rank slots and uplink format it was assigned at Join */
	/* async: the node's task (RoundStart round id, 0 = none), the version
	 * it was given, its deadline, whether its update arrived (held or in
	 * a job), when its session went (0 = connected) */
	uint64_t fa_task, fa_base, fa_deadline, fa_gone;
	int fa_uploaded;
	int final_st; /* the final version: 0 not sent, 1 sent, 2 answered */
} fnode;

typedef struct part {
	fnode *n;
	int answered, accepted, pending, dropped;
	int reason;
	uint64_t gone_at; /* 0 = connected */
	uint64_t samples;
	uint64_t bytes_in;
	double norm, scale;
	double train_loss, eval_loss;
	int has_train_loss, has_eval_loss;
	/* secure rounds: phases this participant completed; sa_out = dropped
	 * from the protocol for a fault (logged with its name) */
	int sa_keys, sa_shared, sa_masked, sa_revealed, sa_out;
} part;

typedef struct sess {
	uint64_t peer;
	char cn[65];
	fnode *node; /* NULL until a valid Join */
} sess;

enum job_type { JOB_UPDATE = 1, JOB_COMMIT = 2, JOB_TIER = 3, JOB_SA_FINISH = 4 };

struct fed_job {
	fed *f;
	enum job_type type;
	/* update */
	uint64_t round_id;
	size_t part_idx;
	wire_msg *msg;
	uint64_t samples;
	uint32_t rank; /* the node's rank slots (0 = all) */
	agg_result res;
	/* commit */
	uint64_t version, parent;
	tset *new_global;
	uint8_t sha[32];
	buf snap, delta;
	double agg_secs, commit_secs;
	int rc;
	int store_errno; /* the version store could not be written: its errno */
	char detail[256];
	/* secure finish: reconstruction and unmasking into sum (sar.dim) */
	uint32_t *sum;
	/* async update: its node, staleness, weight factor and losses */
	fnode *fa_node;
	uint64_t fa_stale;
	double fa_factor;
	double fa_tl, fa_el;
	int fa_ht, fa_he;
};

struct fed {
	fed_opts o;
	fed_io io;
	store *st;
	metrics *m;
	agg *agg;
	uint8_t shape_sha[32];
	char targets_str[128];
	/* the global adapter and its encodings */
	tset *global;
	uint64_t version, parent;
	uint8_t sha[32], parent_sha[32];
	int has_parent;
	buf snap, delta, empty; /* encoded AdapterPayloads */
	tset *step;             /* scratch for the commit job */
	qtensor *dq;            /* downlink-quantized step, one per exchanged tensor */
	size_t ndq;
	down *down; /* aggregation.downlink_mode = grid; NULL otherwise */
	/* the final version to the nodes (o.final_timeout_ms; "The final
	 * version" in docs/COORDINATOR.md): DownFinal sent, waiting for the
	 * DownFinalEval answers until final_deadline (0: set at the next tick) */
	int final_wait, final_done;
	uint64_t final_deadline;
	char final_why[64];
	size_t final_sent, final_answered, final_evals;
	double final_loss_sum;
	/* registry */
	hmap sess_by_peer, node_by_cn;
	fnode **nodes;
	size_t nnodes, nodes_cap;
	size_t connected;
	/* rounds */
	enum fed_state state;
	int stopping;
	uint64_t round_id;
	uint64_t round_version;
	uint64_t round_started, deadline;
	int ready; /* IDLE: enough nodes; the next round may start at ready_at */
	uint64_t ready_at;
	uint64_t gap_until;
	part *parts;
	size_t nparts, parts_cap;
	size_t answered;
	size_t jobs;
	uint64_t seq;
	uint64_t committed, abandoned;
	uint64_t bytes_in, bytes_out; /* this round */
	uint64_t rejected[16];        /* this round, by UpdateAck reason */
	uint64_t collect_ms;
	/* state-directory write failures (docs/COORDINATOR.md, "Full disk"):
	 * while wf_since != 0 no round starts and the loop retries at
	 * wf_retry_at with an exponential back-off */
	int wf_pending;    /* a write failed; the next tick starts backing off */
	char wf_what[160]; /* what failed (first failure of this outage) */
	int wf_errno;      /* its errno */
	uint64_t wf_since; /* loop ms when the outage began; 0 = writable */
	uint64_t wf_since_wall;
	uint64_t wf_retry_at;
	unsigned wf_tries; /* failed retries in this outage */
	unsigned wf_level; /* back-off exponent; reset by a committed round */
	/* secure round (o.secure.on; docs/PRIVACY.md): the protocol state, the
	 * phase and its deadline, the grid announced in RoundStart */
	sa_server *sa;
	sa_round sar;
	int sp; /* enum sa_phase */
	uint64_t sp_deadline;
	char **sa_ids; /* participants' CNs, index order (views) */
	float *sa_steps;
	size_t sa_nt;
	uint32_t sa_bits, sa_wmax;
	uint64_t sa_unit;
	tset *sa_mean; /* previous secure round's mean update (public aggregate) */
	/* differential privacy (o.priv.mode != DP_OFF) */
	int dp_on;
	double dp_q;     /* Poisson sampling rate K / population */
	dp_rng *dp_samp; /* CSPRNG for the sampling */
	dp_ledger led;
	/* coordinator tiers (o.tier): the root's training parameters and the
	 * deadline of the regional round fed_tier_round starts */
	Fedlora__TrainParams tier_tp;
	int tier_tp_set;
	uint32_t tier_deadline_ms;
	/* asynchronous aggregation (o.async.on): accepted updates in the
	 * buffer, updates held back while a commit is due or running, tasks
	 * out, the round-robin cursor of task assignment */
	struct fa_entry *fa_buf;
	size_t fa_nbuf, fa_bufcap;
	struct fa_held *fa_q;
	size_t fa_nq, fa_qcap;
	size_t fa_out;
	size_t fa_rr;
	int fa_want; /* the buffer is full: commit once no update job runs */
	uint64_t fa_buf_opened;
};

/* asynchronous aggregation (the "async" section at the end) */
static int fa_check(const fed_opts *o, char *why, size_t whylen);
static void fa_assign(fed *f, uint64_t now_ms);
static void fa_handle_update(fed *f, sess *s, wire_msg *m, size_t wire_len, uint64_t now_ms);
static void fa_resend(fed *f, fnode *n, uint64_t now_ms);
static void fa_done_update(fed *f, fed_job *job, uint64_t now_ms);
static void fa_committed(fed *f, fed_job *job, uint64_t now_ms);
static void fa_commit_failed(fed *f, fed_job *job, uint64_t now_ms);
static void fa_tick(fed *f, uint64_t now_ms);
static int64_t fa_timeout(const fed *f, uint64_t now_ms);
static void fa_shutdown(fed *f, uint64_t now_ms);
static void fa_fini(fed *f);
static void fa_met_declare(fed *f);
static void fa_rejoin(fed *f, fnode *n, uint64_t now_ms);

static uint64_t wall(const fed *f)
{
	return f->o.wall_ms ? f->o.wall_ms() : clk_wall_ms();
}

static int sess_eq(const void *item, const void *key)
{
	return ((const sess *)item)->peer == *(const uint64_t *)key;
}

static int node_eq(const void *item, const void *key)
{
	return strcmp(((const fnode *)item)->cn, (const char *)key) == 0;
}

static sess *sess_get(const fed *f, uint64_t peer)
{
	return hm_get(&f->sess_by_peer, mix64(peer), sess_eq, &peer);
}

static fnode *node_get(const fed *f, const char *cn)
{
	return hm_get(&f->node_by_cn, str_hash(cn), node_eq, cn);
}

/* ------------------------------------------------------------------ */
/* options                                                             */

void fed_opts_default(fed_opts *o)
{
	memset(o, 0, sizeof *o);
	o->min_nodes = 2;
	o->fraction = 1.0;
	o->min_updates = 1;
	o->round_timeout_ms = 60000;
	o->start_delay_ms = 1000;
	o->gone_grace_ms = 5000;
	o->heartbeat_ms = 5000;
	o->max_nodes = 10000;
	o->seed = 1;
	o->train.local_steps = 10;
	o->train.lr = 1e-4f;
	o->train.batch_size = 4;
	o->train.ctx = 256;
	o->train.uplink_fmt = QT_Q4;
	o->train.uplink_block = 32;
	o->train.error_feedback = 1;
	o->down_fmt = QT_Q8;
	o->down_block = 32;
	agg_opts_default(&o->agg);
	o->keep_versions = 5;
	o->max_msg = 256u << 20;
	o->secure.clip = 1.0;
	o->secure.range = 4.0;
	o->secure.phase_ms = 30000;
	fa_opts_default(&o->async);
}

#define WHY(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
	} while (0)

/* Secure aggregation leaves the coordinator only the sum: every option
 * that needs an individual update is refused, naming both keys. */
static int secure_check(const fed_opts *o, char *why, size_t whylen)
{
	const fed_secure *s = &o->secure;
	if (!s->on)
		return 0;
	if (agg_strategy_buffers(o->agg.strategy)) {
		WHY("aggregation.strategy = %s needs every individual update; it cannot run with "
		    "aggregation.secure = true (use fedavg, fedavgm, fedadam or fedyogi)",
		    agg_strategy_name(o->agg.strategy));
		return FL_EINVAL;
	}
	if (o->agg.clip_norm > 0) {
		WHY("aggregation.clip_norm (server-side clipping) needs every individual update; "
		    "with aggregation.secure = true nodes clip to aggregation.secure_clip");
		return FL_EINVAL;
	}
	if (o->agg.reject_norm > 0) {
		WHY("aggregation.reject_norm (server-side norm rejection) needs every individual "
		    "update; it cannot run with aggregation.secure = true");
		return FL_EINVAL;
	}
	if (o->priv.mode == DP_CENTRAL) {
		WHY("privacy.mode = central clips each update on the coordinator; it cannot run "
		    "with aggregation.secure = true (use privacy.mode = distributed)");
		return FL_EINVAL;
	}
	if (o->train.uplink_fmt != QT_Q8 && o->train.uplink_fmt != QT_Q4 &&
	    o->train.uplink_fmt != QT_Q2) {
		WHY("aggregation.secure = true needs train.uplink_format q8, q4 or q2 (the grid's "
		    "level bits), not %s",
		    qt_fmt_name(o->train.uplink_fmt));
		return FL_EINVAL;
	}
	if (o->min_nodes < 3 || (o->nodes_per_round && o->nodes_per_round < 3)) {
		WHY("aggregation.secure = true needs at least 3 participants per round "
		    "(rounds.min_nodes and rounds.nodes_per_round >= 3)");
		return FL_EINVAL;
	}
	if (s->k % 2) {
		WHY("aggregation.secure_neighbours must be even (k/2 on each side), not %u", s->k);
		return FL_EINVAL;
	}
	if (s->threshold < 0 || (s->threshold >= 1 && s->threshold != floor(s->threshold))) {
		WHY("aggregation.secure_threshold must be a fraction in (0, 1) or a whole count, "
		    "not %g",
		    s->threshold);
		return FL_EINVAL;
	}
	if (!(s->clip > 0) || !(s->range > 0) || s->phase_ms < 1) {
		WHY("aggregation.secure_clip, secure_range and secure_phase_ms must be positive");
		return FL_EINVAL;
	}
	uint32_t L = o->train.uplink_fmt == QT_Q8 ? 127 : o->train.uplink_fmt == QT_Q4 ? 7 : 1;
	if (s->w_max > L) {
		WHY("aggregation.secure_w_max %u exceeds %u, the largest level of "
		    "train.uplink_format %s (weights are folded into the levels)",
		    s->w_max, L, qt_fmt_name(o->train.uplink_fmt));
		return FL_EINVAL;
	}
	return 0;
}

/* The aggregator's options: o->agg, plus DP-FedAvg's clip, noise on the
 * sum (z C) and fixed denominator (the expected cohort K) in central mode. */
/* Rank slots need per-slot weights: a mean strategy that sees each
 * update, without central DP (the per-slot divisor is not the fixed
 * expected count the accountant assumes). */
static const char *rank_conflict(const fed_opts *o)
{
	if (o->secure.on)
		return "aggregation.secure";
	if (agg_strategy_buffers(o->agg.strategy))
		return "aggregation.strategy";
	if (o->priv.mode != DP_OFF)
		return "privacy.mode";
	if (o->async.on)
		return "aggregation.mode";
	if (o->tier) /* a region forwards one full-rank mean: slot weights are lost */
		return "upstream.endpoint";
	return NULL;
}

static int rank_check(const fed_opts *o, char *why, size_t whylen)
{
	int rc = nrank_check(&o->rank, o->spec.rank, why, whylen);
	const char *k = rank_conflict(o);
	if (!rc && k && nrank_mixed(&o->rank, o->spec.rank)) {
		WHY("rank.groups / rank.default assign ranks below lora.rank (%u), which %s does "
		    "not support (rank slots need synchronous rounds at the root with a mean "
		    "strategy, without secure aggregation or DP; docs/COORDINATOR.md)",
		    o->spec.rank, k);
		rc = FL_EINVAL;
	}
	for (size_t i = 0; !rc && o->secure.on && i < o->rank.ng; i++)
		if (o->rank.g[i].fmt && o->rank.g[i].fmt != o->train.uplink_fmt) {
			WHY("rank.groups gives '%s' the uplink format %s, but aggregation.secure = "
			    "true puts every update on one grid of train.uplink_format (%s)",
			    o->rank.g[i].pattern, qt_fmt_name(o->rank.g[i].fmt),
			    qt_fmt_name(o->train.uplink_fmt));
			rc = FL_EINVAL;
		}
	return rc;
}

static void agg_opts_for(const fed_opts *o, agg_opts *ao)
{
	*ao = o->agg;
	if (o->priv.mode == DP_CENTRAL) {
		ao->dp_clip = o->priv.clip;
		ao->dp_noise_std = o->priv.z * o->priv.clip;
		ao->dp_denom = o->nodes_per_round;
	}
}

int fed_opts_check(const fed_opts *o, char *why, size_t whylen)
{
	if (o->min_nodes < 1) {
		WHY("rounds.min_nodes must be >= 1");
		return FL_EINVAL;
	}
	if (o->min_updates < 1) {
		WHY("rounds.min_updates must be >= 1");
		return FL_EINVAL;
	}
	if (o->min_updates > o->min_nodes) {
		WHY("rounds.min_updates (%u) must not exceed rounds.min_nodes (%u)", o->min_updates,
		    o->min_nodes);
		return FL_EINVAL;
	}
	if (o->nodes_per_round && o->nodes_per_round < o->min_updates) {
		WHY("rounds.nodes_per_round (%u) is below rounds.min_updates (%u): no round "
		    "could commit",
		    o->nodes_per_round, o->min_updates);
		return FL_EINVAL;
	}
	if (!(o->fraction > 0 && o->fraction <= 1)) {
		WHY("rounds.fraction must be in (0, 1], not %g", o->fraction);
		return FL_EINVAL;
	}
	if (o->round_timeout_ms < 1) {
		WHY("rounds.deadline_ms must be >= 1");
		return FL_EINVAL;
	}
	if (o->max_nodes < 1) {
		WHY("server.max_nodes must be >= 1");
		return FL_EINVAL;
	}
	if (o->keep_versions < 1) {
		WHY("state.keep_versions must be >= 1");
		return FL_EINVAL;
	}
	if (qt_check_fmt_block(o->down_fmt, o->down_block)) {
		WHY("downlink format %s with block %u is not valid (q8/q4/q2 need 32, 64 or 128; "
		    "f32/f16 need 0)",
		    qt_fmt_name(o->down_fmt), o->down_block);
		return FL_EINVAL;
	}
	if (o->down_grid && o->down_fmt == QT_F32) {
		WHY("aggregation.downlink_mode grid needs a downlink_format other than f32");
		return FL_EINVAL;
	}
	if (qt_check_fmt_block(o->train.uplink_fmt, o->train.uplink_block)) {
		WHY("uplink format %s with block %u is not valid", qt_fmt_name(o->train.uplink_fmt),
		    o->train.uplink_block);
		return FL_EINVAL;
	}
	if (lora_spec_check(&o->spec, why, whylen) != 0)
		return FL_EINVAL;
	if (o->agg.ffa != o->spec.ffa) {
		WHY("aggregation FFA flag and lora.ffa disagree");
		return FL_EINVAL;
	}
	int rc = dp_opts_check(&o->priv, o->nodes_per_round, why, whylen);
	if (rc)
		return rc;
	if ((rc = dpd_check(o, why, whylen)) != 0)
		return rc;
	if (o->priv.mode != DP_OFF && o->sampling_weighted) {
		WHY("rounds.sampling = weighted does not combine with privacy.mode: the "
		    "accountant assumes uniform Poisson sampling");
		return FL_EINVAL;
	}
	rc = secure_check(o, why, whylen);
	if (!rc)
		rc = rank_check(o, why, whylen);
	if (rc)
		return rc;
	if ((rc = fa_check(o, why, whylen)) != 0)
		return rc;
	agg_opts ao;
	agg_opts_for(o, &ao);
	return agg_opts_check(&ao, why, whylen);
}

const char *fed_state_name(enum fed_state s)
{
	static const char *const n[] = {"idle", "collecting", "closing", "committing", "stopped"};
	return (unsigned)s <= FED_STOPPED ? n[s] : "?";
}

/* ------------------------------------------------------------------ */
/* metrics                                                             */

static const char *ack_reason_name(int r);

static void met_declare(fed *f)
{
	if (!f->m)
		return;
	metrics_declare(f->m, "fedlora_rounds_total", METRICS_COUNTER,
	                "Rounds finished, by outcome (committed or abandoned)");
	metrics_declare(f->m, "fedlora_round_id", METRICS_GAUGE, "Latest round started");
	metrics_declare(f->m, "fedlora_global_version", METRICS_GAUGE,
	                "Committed global adapter version");
	metrics_declare(f->m, "fedlora_nodes_connected", METRICS_GAUGE,
	                "Nodes with a joined session");
	metrics_declare(f->m, "fedlora_nodes_known", METRICS_GAUGE, "Nodes in the registry");
	metrics_declare(f->m, "fedlora_round_participants", METRICS_GAUGE,
	                "Nodes sampled for the latest round");
	metrics_declare(f->m, "fedlora_updates_accepted_total", METRICS_COUNTER,
	                "Updates accepted into an aggregate");
	metrics_declare(f->m, "fedlora_updates_rejected_total", METRICS_COUNTER,
	                "Updates refused, by reason");
	metrics_declare(f->m, "fedlora_updates_clipped_total", METRICS_COUNTER,
	                "Accepted updates scaled down to the norm bound");
	metrics_declare(f->m, "fedlora_secagg_dropped_total", METRICS_COUNTER,
	                "Participants dropped from a secure round (fault or disconnect)");
	metrics_declare(f->m, "fedlora_joins_rejected_total", METRICS_COUNTER,
	                "Joins refused, by reason");
	metrics_declare(f->m, "fedlora_bytes_total", METRICS_COUNTER,
	                "Application bytes by direction (in, out)");
	metrics_declare(f->m, "fedlora_aggregation_seconds", METRICS_HISTOGRAM,
	                "Time to aggregate, quantize, apply and fingerprint a round");
	metrics_declare(f->m, "fedlora_commit_seconds", METRICS_HISTOGRAM,
	                "Time to write a version to the state directory");
	metrics_declare(f->m, "fedlora_round_seconds", METRICS_HISTOGRAM,
	                "Round duration from RoundStart to RoundEnd");
	metrics_declare(f->m, "fedlora_update_seconds", METRICS_HISTOGRAM,
	                "Time to validate and accumulate one update");
	metrics_declare(f->m, "fedlora_global_loss", METRICS_GAUGE,
	                "Sample-weighted eval_loss reported with the latest committed round");
	metrics_declare(f->m, "fedlora_train_loss", METRICS_GAUGE,
	                "Sample-weighted train_loss of the latest committed round");
	metrics_declare(f->m, "fedlora_state_writable", METRICS_GAUGE,
	                "1 when the state directory can be written, 0 while backing off");
	metrics_declare(f->m, "fedlora_state_write_failures_total", METRICS_COUNTER,
	                "Failed state-directory writes and retries (journal or versions)");
	metrics_declare(f->m, "fedlora_journal_backlog", METRICS_GAUGE,
	                "Journal records waiting in memory for the disk");
	if (f->o.async.on)
		fa_met_declare(f);
	if (f->o.priv.mode != DP_OFF) {
		metrics_declare(f->m, "fedlora_privacy_epsilon_spent", METRICS_GAUGE,
		                "Epsilon spent so far at privacy.delta (RDP accountant)");
		metrics_declare(f->m, "fedlora_privacy_epsilon_target", METRICS_GAUGE,
		                "privacy.target_epsilon: no round starts past it");
		metrics_declare(f->m, "fedlora_privacy_rounds_charged", METRICS_GAUGE,
		                "Rounds charged to the privacy ledger");
	}
	/* counters report 0 from the start, not only after their first event */
	static const char *const join_reasons[] = {"no_identity", "shutting_down", "base",
	                                           "adapter", "full"};
	char lab[64];
	metrics_add(f->m, "fedlora_updates_accepted_total", NULL, 0);
	metrics_add(f->m, "fedlora_updates_clipped_total", NULL, 0);
	for (int r = 1; strcmp(ack_reason_name(r), "other") != 0; r++) {
		snprintf(lab, sizeof lab, "reason=\"%s\"", ack_reason_name(r));
		metrics_add(f->m, "fedlora_updates_rejected_total", lab, 0);
	}
	for (size_t i = 0; i < sizeof join_reasons / sizeof *join_reasons; i++) {
		snprintf(lab, sizeof lab, "reason=\"%s\"", join_reasons[i]);
		metrics_add(f->m, "fedlora_joins_rejected_total", lab, 0);
	}
}

static void met_add(fed *f, const char *name, const char *labels, double v)
{
	if (f->m)
		metrics_add(f->m, name, labels, v);
}

static void met_set(fed *f, const char *name, const char *labels, double v)
{
	if (f->m)
		metrics_set(f->m, name, labels, v);
}

static void met_observe(fed *f, const char *name, double v)
{
	if (f->m)
		metrics_observe(f->m, name, NULL, v);
}

/* ------------------------------------------------------------------ */
/* output                                                              */

static void send_env(fed *f, const uint64_t *peers, size_t n, Fedlora__Envelope *env)
{
	if (n == 0 || !f->io.send)
		return;
	buf b;
	buf_init(&b, 0);
	env->seq = ++f->seq;
	if (wire_encode(env, 0, &b) == 0) {
		f->io.send(f->io.ud, peers, n, b.data, b.len);
		f->bytes_out += (uint64_t)b.len * n;
		met_add(f, "fedlora_bytes_total", "direction=\"out\"", (double)b.len * (double)n);
	} else {
		LOGE(MOD, "cannot encode %s", wire_body_name(env));
	}
	buf_fini(&b);
}

static void send_error(fed *f, uint64_t peer, Fedlora__Error__Code code, const char *detail)
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Error e = FEDLORA__ERROR__INIT;
	e.code = code;
	e.detail = (char *)detail;
	env.body_case = FEDLORA__ENVELOPE__BODY_ERROR;
	env.error = &e;
	send_env(f, &peer, 1, &env);
}

static void close_peer(fed *f, uint64_t peer, const char *why)
{
	if (f->io.close)
		f->io.close(f->io.ud, peer, why);
}

static const char *ack_reason_name(int r)
{
	switch (r) {
	case FEDLORA__UPDATE_ACK__REASON__REASON_NONE:
		return "none";
	case FEDLORA__UPDATE_ACK__REASON__REASON_LATE:
		return "late";
	case FEDLORA__UPDATE_ACK__REASON__REASON_WRONG_ROUND:
		return "wrong_round";
	case FEDLORA__UPDATE_ACK__REASON__REASON_DUPLICATE:
		return "duplicate";
	case FEDLORA__UPDATE_ACK__REASON__REASON_NOT_SAMPLED:
		return "not_sampled";
	case FEDLORA__UPDATE_ACK__REASON__REASON_STALE:
		return "stale";
	case FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED:
		return "malformed";
	case FEDLORA__UPDATE_ACK__REASON__REASON_NON_FINITE:
		return "non_finite";
	case FEDLORA__UPDATE_ACK__REASON__REASON_NORM:
		return "norm";
	case FEDLORA__UPDATE_ACK__REASON__REASON_TOO_STALE:
		return "too_stale";
	}
	return "other";
}

static void send_ack(fed *f, uint64_t peer, uint64_t round_id, int reason, const char *detail)
{
	int accepted = reason == FEDLORA__UPDATE_ACK__REASON__REASON_NONE;
	if (accepted) {
		met_add(f, "fedlora_updates_accepted_total", NULL, 1);
	} else {
		char lab[64];
		snprintf(lab, sizeof lab, "reason=\"%s\"", ack_reason_name(reason));
		met_add(f, "fedlora_updates_rejected_total", lab, 1);
		if ((unsigned)reason < 16)
			f->rejected[reason]++;
	}
	if (!peer)
		return;
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__UpdateAck a = FEDLORA__UPDATE_ACK__INIT;
	a.round_id = round_id;
	a.accepted = accepted;
	a.reason = (Fedlora__UpdateAck__Reason)reason;
	a.detail = (char *)(detail ? detail : "");
	env.body_case = FEDLORA__ENVELOPE__BODY_UPDATE_ACK;
	env.update_ack = &a;
	send_env(f, &peer, 1, &env);
}

static void reject_join(fed *f, uint64_t peer, Fedlora__Reject__Reason reason, const char *label,
                        const char *detail)
{
	LOGW(MOD, "join refused (%s): %s", label, detail);
	char lab[64];
	snprintf(lab, sizeof lab, "reason=\"%s\"", label);
	met_add(f, "fedlora_joins_rejected_total", lab, 1);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Reject r = FEDLORA__REJECT__INIT;
	r.reason = reason;
	r.detail = (char *)detail;
	env.body_case = FEDLORA__ENVELOPE__BODY_REJECT;
	env.reject = &r;
	send_env(f, &peer, 1, &env);
	close_peer(f, peer, detail);
}

static void send_bye(fed *f, uint64_t peer, const char *reason)
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Bye b = FEDLORA__BYE__INIT;
	b.reason = (char *)reason;
	env.body_case = FEDLORA__ENVELOPE__BODY_BYE;
	env.bye = &b;
	send_env(f, &peer, 1, &env);
}

/* ------------------------------------------------------------------ */
/* payload encodings                                                   */

static size_t varint_put(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

int fed_encode_round_start(const Fedlora__RoundStart *rs, uint64_t seq, const uint8_t *payload,
                           size_t payload_len, buf *out)
{
	if (rs->adapter)
		return FL_EINVAL;
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	env.protocol_version = WIRE_PROTOCOL_VERSION;
	env.seq = seq;
	size_t hl = fedlora__envelope__get_packed_size(&env);
	size_t rl = fedlora__round_start__get_packed_size(rs);
	uint8_t v1[10], v2[10];
	size_t n2 = varint_put(v2, payload_len);
	size_t rs_total;
	if (sz_add(rl, 1 + n2, &rs_total) || sz_add(rs_total, payload_len, &rs_total))
		return FL_EOVERFLOW;
	size_t n1 = varint_put(v1, rs_total);
	size_t total;
	if (sz_add(hl + 1 + n1, rs_total, &total))
		return FL_EOVERFLOW;
	int rc = buf_reserve(out, total);
	if (rc)
		return rc;
	uint8_t *p = out->data + out->len;
	p += fedlora__envelope__pack(&env, p);
	*p++ = (13 << 3) | 2; /* Envelope.round_start, length-delimited */
	memcpy(p, v1, n1);
	p += n1;
	p += fedlora__round_start__pack(rs, p);
	*p++ = (15 << 3) | 2; /* RoundStart.adapter, length-delimited */
	memcpy(p, v2, n2);
	p += n2;
	if (payload_len)
		memcpy(p, payload, payload_len);
	out->len += total;
	return 0;
}

static int pack_payload(const Fedlora__AdapterPayload *p, buf *out)
{
	size_t n = fedlora__adapter_payload__get_packed_size(p);
	buf_clear(out);
	int rc = buf_reserve(out, n ? n : 1);
	if (rc)
		return rc;
	out->len = fedlora__adapter_payload__pack(p, out->data);
	return 0;
}

/* Full adapter as f32 tensors (exact), or, when grid is not NULL, as its
 * grid encoding (one qtensor per tensor of g, in g's order; deq(grid) = g,
 * coordinator/downlink.h). */
static int build_snapshot(const tset *g, const qtensor *grid, uint64_t version,
                          const uint8_t sha[32], buf *out)
{
	size_t n = tset_count(g);
	Fedlora__QTensor *qm = calloc(n ? n : 1, sizeof *qm);
	Fedlora__QTensor **qp = calloc(n ? n : 1, sizeof *qp);
	uint64_t(*shapes)[TSET_MAX_DIM] = calloc(n ? n : 1, sizeof *shapes);
	int rc = FL_ENOMEM;
	if (!qm || !qp || !shapes)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const tensor *t = tset_at(g, i);
		fedlora__qtensor__init(&qm[i]);
		qm[i].name = (char *)t->name;
		for (uint32_t d = 0; d < t->ndim; d++)
			shapes[i][d] = t->shape[d];
		qm[i].n_shape = t->ndim;
		qm[i].shape = shapes[i];
		qm[i].format = FEDLORA__QFORMAT__QFORMAT_F32;
		qm[i].block_size = 0;
		qm[i].data.data = (uint8_t *)t->data;
		qm[i].data.len = t->n * sizeof(float);
		for (size_t k = 0; grid && k < n; k++) /* the layout's order may differ */
			if (strcmp(grid[k].name, t->name) == 0)
				qt_to_proto(&grid[k], &qm[i]);
		qp[i] = &qm[i];
	}
	Fedlora__AdapterPayload p = FEDLORA__ADAPTER_PAYLOAD__INIT;
	p.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT;
	p.from_version = 0;
	p.to_version = version;
	p.to_sha256.data = (uint8_t *)sha;
	p.to_sha256.len = 32;
	p.n_tensors = n;
	p.tensors = qp;
	rc = pack_payload(&p, out);
out:
	free(qm);
	free(qp);
	free(shapes);
	return rc;
}

static int build_delta(const qtensor *dq, size_t nq, uint64_t from, uint64_t to,
                       const uint8_t sha[32], buf *out)
{
	Fedlora__QTensor *qm = calloc(nq ? nq : 1, sizeof *qm);
	Fedlora__QTensor **qp = calloc(nq ? nq : 1, sizeof *qp);
	int rc = FL_ENOMEM;
	if (!qm || !qp)
		goto out;
	for (size_t i = 0; i < nq; i++) {
		qt_to_proto(&dq[i], &qm[i]);
		qp[i] = &qm[i];
	}
	Fedlora__AdapterPayload p = FEDLORA__ADAPTER_PAYLOAD__INIT;
	p.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	p.from_version = from;
	p.to_version = to;
	p.to_sha256.data = (uint8_t *)sha;
	p.to_sha256.len = 32;
	p.n_tensors = nq;
	p.tensors = qp;
	rc = pack_payload(&p, out);
out:
	free(qm);
	free(qp);
	return rc;
}

/* ------------------------------------------------------------------ */
/* journal                                                             */

static void journal_rec(fed *f, cJSON *o);
static void final_check(fed *f);
static void final_end(fed *f, const char *ended);
static void final_tick(fed *f, uint64_t now_ms);

/* A write to the state directory failed: the next fed_tick starts (or
 * continues) the back-off. Only the first failure of an outage is kept and
 * recorded (a store_failed record, queued behind what could not be
 * written when the journal is what failed). */
static void write_failed(fed *f, const char *what, int err)
{
	if (f->wf_since || f->wf_pending)
		return;
	f->wf_pending = 1;
	snprintf(f->wf_what, sizeof f->wf_what, "%s", what);
	f->wf_errno = err;
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "store_failed");
	cJSON_AddStringToObject(j, "what", what);
	cJSON_AddStringToObject(j, "error", strerror(err));
	journal_rec(f, j); /* a failure here finds wf_pending set */
}

static void journal_rec(fed *f, cJSON *o)
{
	/* FL_EIO: the disk (back off); anything else (a record too large to
	 * format) is logged by the store and only costs that record */
	if (f->st && o && store_journal(f->st, o) == FL_EIO)
		write_failed(f, "appending to the journal", store_journal_errno(f->st));
	cJSON_Delete(o);
}

static void add_hex(cJSON *o, const char *key, const uint8_t *p, size_t n)
{
	char h[129];
	hex_encode(p, n, h);
	cJSON_AddStringToObject(o, key, h);
}

typedef struct jscan {
	uint64_t max_round;
	uint64_t last_start, last_end;
	uint64_t last_start_version;
	int ended_version_round; /* a round_end for the latest version's round exists */
	uint64_t want_round;
} jscan;

static int jscan_cb(const cJSON *o, void *ud)
{
	jscan *j = ud;
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "round");
	if (!cJSON_IsString(t) || !cJSON_IsNumber(r) || r->valuedouble < 0 || r->valuedouble > 9e15)
		return 0;
	uint64_t rid = (uint64_t)r->valuedouble;
	if (rid > j->max_round)
		j->max_round = rid;
	if (strcmp(t->valuestring, "round_start") == 0) {
		j->last_start = rid;
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "version");
		j->last_start_version = cJSON_IsNumber(v) ? (uint64_t)v->valuedouble : 0;
	} else if (strcmp(t->valuestring, "round_end") == 0 ||
	           strcmp(t->valuestring, "round_restart") == 0) {
		if (rid > j->last_end)
			j->last_end = rid;
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "committed");
		if (rid == j->want_round && cJSON_IsTrue(c))
			j->ended_version_round = 1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* construction                                                        */

static int set_global_encodings(fed *f)
{
	size_t ng = 0;
	const qtensor *grid = f->down ? down_grid(f->down, &ng) : NULL;
	int rc = build_snapshot(f->global, grid, f->version, f->sha, &f->snap);
	if (rc)
		return rc;
	Fedlora__AdapterPayload p = FEDLORA__ADAPTER_PAYLOAD__INIT;
	p.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	p.from_version = f->version;
	p.to_version = f->version;
	p.to_sha256.data = f->sha;
	p.to_sha256.len = 32;
	return pack_payload(&p, &f->empty);
}

/* Grid mode (coordinator/downlink.h), resuming: the residual out of the
 * optimiser state *optst (NULL: none saved; what is left stays in *optst
 * for agg_state_import) and the grid encoding of the loaded version. A
 * version that is not on the grid (a state directory of the delta mode)
 * goes out as an f32 snapshot until the next version puts it on. */
static int grid_resume(fed *f, tset **optst)
{
	size_t bad = 0;
	int rc = 0;
	if (*optst) {
		tset *rest = NULL;
		if ((rc = down_state_import(f->down, *optst, &rest, &bad)) != 0)
			return rc;
		tset_free(*optst);
		*optst = rest;
	}
	if (!*optst || bad)
		LOGW(MOD,
		     "no downlink residual saved for %zu tensors of version %" PRIu64
		     "; they start again from zero",
		     *optst ? bad : tset_count(f->global), f->version);
	rc = down_reencode(f->down, f->global);
	if (rc == FL_EMISMATCH) {
		LOGW(MOD,
		     "version %" PRIu64 " is not on the downlink grid: nodes get it as an f32 "
		     "snapshot, the next version is on the grid",
		     f->version);
		rc = 0;
	}
	return rc;
}

/* Grid mode, a new federation: v0 goes on the grid (what rounding drops
 * stays in the residual) and *opt gets the residual for the store. */
static int grid_v0(fed *f, tset **opt)
{
	tset *g = NULL;
	int rc = down_next(f->down, f->global, NULL, &g);
	if (rc)
		return rc;
	tset_free(f->global);
	f->global = g;
	down_commit(f->down);
	if ((rc = tset_new(opt)) != 0)
		return rc;
	return down_state_export(f->down, 0, *opt);
}

static void fill_info(const fed *f, store_info *in, uint64_t version, uint64_t round,
                      uint64_t parent, const uint8_t sha[32])
{
	memset(in, 0, sizeof *in);
	in->version = version;
	in->round = round;
	in->parent = parent;
	memcpy(in->sha, sha, 32);
	memcpy(in->shape_sha, f->shape_sha, 32);
	in->rank = f->o.spec.rank;
	in->alpha = f->o.spec.alpha;
	snprintf(in->targets, sizeof in->targets, "%s", f->targets_str);
	in->rslora = f->o.spec.rslora;
	in->ffa = f->o.spec.ffa;
	in->init_seed = f->o.spec.init_seed;
	in->n_head = f->o.arch.n_head;
	in->n_head_kv = f->o.arch.n_head_kv;
	memcpy(in->base_sha, f->o.base_sha, 32);
	in->has_base = 1;
}

static int spec_matches(const fed *f, const store_info *in, char *why, size_t whylen)
{
	if (in->rank && in->rank != f->o.spec.rank) {
		WHY("rank %u, configured %u", in->rank, f->o.spec.rank);
		return 0;
	}
	if (in->targets[0] && strcmp(in->targets, f->targets_str)) {
		WHY("targets %.60s, configured %.60s", in->targets, f->targets_str);
		return 0;
	}
	if (in->ffa != f->o.spec.ffa) {
		WHY("ffa %d, configured %d", in->ffa, f->o.spec.ffa);
		return 0;
	}
	if (in->has_base && memcmp(in->base_sha, f->o.base_sha, 32)) {
		WHY("a different base-model fingerprint");
		return 0;
	}
	return 1;
}

static int count_charges_cb(const cJSON *o, void *ud)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
	if (cJSON_IsString(t) && strcmp(t->valuestring, "privacy_charge") == 0)
		(*(uint64_t *)ud)++;
	return 0;
}

static void dp_metrics(fed *f)
{
	met_set(f, "fedlora_privacy_epsilon_spent", NULL, f->led.epsilon);
	met_set(f, "fedlora_privacy_epsilon_target", NULL, f->o.priv.target_eps);
	met_set(f, "fedlora_privacy_rounds_charged", NULL, (double)f->led.rounds);
}

/* Central DP at start-up: the ledger from the state directory (a ledger
 * that does not verify stops the coordinator: the spending is unknown),
 * the sampling CSPRNG. */
static int dp_start(fed *f)
{
	char why[300];
	dp_ledger_init(&f->led);
	if (f->st) {
		int rc = dp_ledger_load(store_dir(f->st), &f->led, why, sizeof why);
		if (rc == FL_ENOENT) {
			dp_ledger_init(&f->led);
		} else if (rc) {
			LOGE(MOD,
			     "privacy ledger: %s; refusing to start without knowing the budget "
			     "spent (restore the file or start a new federation)",
			     why);
			return rc;
		}
	}
	if (f->st) {
		/* the journal keeps a second trace of every charge (written after
		 * the ledger): more charges there means a lost or older ledger */
		uint64_t jc = 0;
		size_t nl, nb;
		journal_read(store_journal_path(f->st), count_charges_cb, &jc, &nl, &nb);
		if (jc > f->led.rounds) {
			LOGE(MOD,
			     "the journal records %" PRIu64
			     " privacy charges but the privacy ledger "
			     "only %" PRIu64
			     " (lost or replaced by an older copy); refusing to start "
			     "without knowing the budget spent",
			     jc, f->led.rounds);
			return FL_EMISMATCH;
		}
	}
	f->dp_on = 1;
	f->dp_q = (double)f->o.nodes_per_round / (double)f->o.priv.population;
	/* the spent epsilon at the configured delta (the ledger keeps RDP) */
	f->led.epsilon = f->led.rounds ? dp_epsilon(f->led.rdp, f->o.priv.delta, NULL) : 0;
	f->led.delta = f->o.priv.delta;
	int rc = dp_rng_new(NULL, &f->dp_samp);
	if (rc)
		return rc;
	LOGI(MOD,
	     "central differential privacy: clip %g, noise multiplier %g, q = %u/%" PRIu64
	     " = %.4g (Poisson), delta %g; %" PRIu64 " rounds charged, epsilon %.4g of %g",
	     f->o.priv.clip, f->o.priv.z, f->o.nodes_per_round, f->o.priv.population, f->dp_q,
	     f->o.priv.delta, f->led.rounds, f->led.epsilon, f->o.priv.target_eps);
	dp_metrics(f);
	return 0;
}

int fed_new(const fed_opts *o, store *st, metrics *m, const fed_io *io, fed **out)
{
	char why[256];
	if (fed_opts_check(o, why, sizeof why)) {
		LOGE(MOD, "bad configuration: %s", why);
		return FL_EINVAL;
	}
	fed *f = calloc(1, sizeof *f);
	if (!f)
		return FL_ENOMEM;
	f->o = *o;
	if (io)
		f->io = *io;
	f->st = st;
	f->m = m;
	buf_init(&f->snap, 0);
	buf_init(&f->delta, 0);
	buf_init(&f->empty, 0);
	lora_targets_format(o->spec.targets, f->targets_str, sizeof f->targets_str);
	met_declare(f);
	met_set(f, "fedlora_state_writable", NULL, 1); /* until a write fails */
	tset *layout = NULL, *loaded = NULL, *optst = NULL;
	int rc = lora_layout(&o->spec, &o->arch, &layout);
	if (rc) {
		LOGE(MOD, "cannot build the adapter layout from the LoRA spec");
		goto fail;
	}
	agg_opts ao;
	agg_opts_for(o, &ao);
	rc = tset_shape_fingerprint(layout, f->shape_sha);
	if (!rc)
		rc = agg_new(&ao, layout, &f->agg);
	if (!rc)
		rc = tset_zeros_like(agg_layout(f->agg), &f->step);
	if (rc)
		goto fail;
	f->ndq = tset_count(f->step);
	f->dq = calloc(f->ndq, sizeof *f->dq);
	if (!f->dq) {
		rc = FL_ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < f->ndq; i++)
		qt_init(&f->dq[i]);
	if (o->down_grid && (rc = down_new(o->down_fmt, o->down_block, layout, &f->down)) != 0)
		goto fail;

	store_info in;
	int have = 0;
	if (st) {
		rc = store_load_latest(st, &loaded, &in);
		if (rc == 0) {
			if (memcmp(in.shape_sha, f->shape_sha, 32) ||
			    !spec_matches(f, &in, why, sizeof why)) {
				if (memcmp(in.shape_sha, f->shape_sha, 32))
					snprintf(why, sizeof why, "a different adapter layout");
				LOGE(MOD,
				     "state directory %s holds version %" PRIu64
				     " of another federation (%s); refusing to mix them",
				     store_dir(st), in.version, why);
				rc = FL_EMISMATCH;
				goto fail;
			}
			have = 1;
		} else if (rc != FL_ENOENT) {
			goto fail;
		}
	}
	if (have) {
		f->global = loaded;
		loaded = NULL;
		f->version = in.version;
		memcpy(f->sha, in.sha, 32);
		if (store_load_opt(st, in.version, &optst) == 0) {
			if (f->down && (rc = grid_resume(f, &optst)) != 0)
				goto fail;
			if (agg_state_import(f->agg, optst))
				LOGW(MOD,
				     "optimiser state of version %" PRIu64
				     " does not fit the configured strategy; starting it afresh",
				     in.version);
		} else if (in.round > 0 &&
		           (o->agg.strategy == AGG_FEDAVGM || o->agg.strategy == AGG_FEDADAM ||
		            o->agg.strategy == AGG_FEDYOGI)) {
			LOGW(MOD, "no optimiser state for version %" PRIu64 "; starting it afresh",
			     in.version);
		}
		if (f->down && !optst && (rc = grid_resume(f, &optst)) != 0)
			goto fail;
		LOGI(MOD, "resumed at version %" PRIu64 " (round %" PRIu64 ") from %s", in.version,
		     in.round, store_dir(st));
	} else {
		rc = lora_init(&o->spec, &o->arch, &f->global);
		if (rc)
			goto fail;
		f->version = st ? store_max_version(st) : 0;
		if (st && f->version) {
			/* every version file was unreadable: start again above them */
			f->version++;
			LOGE(MOD, "no valid version in %s; starting again at version %" PRIu64,
			     store_dir(st), f->version);
		}
		if (f->down && (rc = grid_v0(f, &optst)) != 0)
			goto fail;
		rc = tset_fingerprint(f->global, f->sha);
		if (rc)
			goto fail;
		if (st) {
			fill_info(f, &in, f->version, 0, 0, f->sha);
			rc = store_commit(st, f->global, &in, optst, o->keep_versions);
			if (rc)
				goto fail;
			cJSON *j = cJSON_CreateObject();
			cJSON_AddStringToObject(j, "type", "init");
			cJSON_AddNumberToObject(j, "version", (double)f->version);
			add_hex(j, "sha256", f->sha, 32);
			cJSON_AddNumberToObject(j, "params", (double)tset_numel(f->global));
			journal_rec(f, j);
		}
		in.round = 0;
		LOGI(MOD, "initial adapter v%" PRIu64 ": %zu tensors, %zu parameters", f->version,
		     tset_count(f->global), tset_numel(f->global));
	}
	rc = set_global_encodings(f);
	if (rc)
		goto fail;
	if (st) {
		jscan js = {0};
		js.want_round = in.round;
		size_t nl, nb;
		journal_read(store_journal_path(st), jscan_cb, &js, &nl, &nb);
		f->round_id = js.max_round > in.round ? js.max_round : in.round;
		if (in.round && !js.ended_version_round) {
			/* committed, but the process died before the journal said so */
			cJSON *j = cJSON_CreateObject();
			cJSON_AddStringToObject(j, "type", "round_end");
			cJSON_AddNumberToObject(j, "round", (double)in.round);
			cJSON_AddBoolToObject(j, "committed", 1);
			cJSON_AddBoolToObject(j, "recovered", 1);
			cJSON_AddNumberToObject(j, "version", (double)in.version);
			add_hex(j, "sha256", in.sha, 32);
			journal_rec(f, j);
			if (js.last_end < in.round)
				js.last_end = in.round;
		}
		if (js.last_start > js.last_end) {
			LOGW(MOD,
			     "round %" PRIu64 " was open when the coordinator stopped; a new round "
			     "starts from version %" PRIu64,
			     js.last_start, f->version);
			cJSON *j = cJSON_CreateObject();
			cJSON_AddStringToObject(j, "type", "round_restart");
			cJSON_AddNumberToObject(j, "round", (double)js.last_start);
			cJSON_AddNumberToObject(j, "version", (double)f->version);
			cJSON_AddStringToObject(
			    j, "detail",
			    "coordinator restarted during the round; its updates "
			    "are discarded");
			journal_rec(f, j);
		}
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "type", "start");
		cJSON_AddNumberToObject(j, "version", (double)f->version);
		cJSON_AddNumberToObject(j, "round", (double)f->round_id);
		cJSON_AddStringToObject(j, "strategy", agg_strategy_name(o->agg.strategy));
		journal_rec(f, j);
	}
	if (o->priv.mode != DP_OFF && (rc = dp_start(f)) != 0)
		goto fail;
	if (o->priv.mode == DP_OFF && st) {
		dp_ledger pl;
		if (dp_ledger_load(store_dir(st), &pl, why, sizeof why) != FL_ENOENT)
			LOGW(MOD,
			     "%s holds a privacy ledger but privacy.mode is off: the rounds from "
			     "now on are not differentially private",
			     store_dir(st));
	}
	met_set(f, "fedlora_global_version", NULL, (double)f->version);
	met_set(f, "fedlora_round_id", NULL, (double)f->round_id);
	tset_free(layout);
	tset_free(optst);
	*out = f;
	return 0;
fail:
	tset_free(layout);
	tset_free(loaded);
	tset_free(optst);
	f->jobs = 0;
	fed_free(f);
	return rc;
}

void fed_free(fed *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->nnodes; i++)
		free(f->nodes[i]);
	free(f->nodes);
	for (size_t i = 0; i < f->sess_by_peer.cap; i++)
		if (f->sess_by_peer.s[i].h)
			free(f->sess_by_peer.s[i].p);
	free(f->sess_by_peer.s);
	free(f->node_by_cn.s);
	free(f->parts);
	if (f->dq) {
		for (size_t i = 0; i < f->ndq; i++)
			qt_fini(&f->dq[i]);
		free(f->dq);
	}
	tset_free(f->step);
	down_free(f->down);
	sa_server_free(f->sa);
	free(f->sa_ids);
	free(f->sa_steps);
	tset_free(f->sa_mean);
	dp_rng_free(f->dp_samp);
	tset_free(f->global);
	agg_free(f->agg);
	buf_fini(&f->snap);
	buf_fini(&f->delta);
	buf_fini(&f->empty);
	fa_fini(f);
	free(f);
}

/* ------------------------------------------------------------------ */
/* sessions and registry                                               */

static void set_connected_gauge(fed *f)
{
	met_set(f, "fedlora_nodes_connected", NULL, (double)f->connected);
	met_set(f, "fedlora_nodes_known", NULL, (double)f->nnodes);
}

void fed_peer_up(fed *f, uint64_t peer, const char *cn, uint64_t now_ms)
{
	(void)now_ms;
	if (sess_get(f, peer))
		return;
	sess *s = calloc(1, sizeof *s);
	if (!s) {
		close_peer(f, peer, "out of memory");
		return;
	}
	s->peer = peer;
	snprintf(s->cn, sizeof s->cn, "%s", cn ? cn : "");
	if (hm_put(&f->sess_by_peer, mix64(peer), s)) {
		free(s);
		close_peer(f, peer, "out of memory");
		return;
	}
	LOGD(MOD, "session %" PRIu64 " up (%s)", peer, s->cn);
}

static part *part_of(fed *f, fnode *n)
{
	if (!n || n->part_round != f->round_id || f->state == FED_IDLE || f->state == FED_STOPPED ||
	    n->part_idx >= f->nparts || f->parts[n->part_idx].n != n)
		return NULL;
	return &f->parts[n->part_idx];
}

static void maybe_close_round(fed *f, uint64_t now_ms);
static void sa_drop(fed *f, void *part, const char *what, const char *why);
static void sa_reset(fed *f);
static int sa_begin(fed *f, char *why, size_t whylen);
static void sa_setup_msg(fed *f, Fedlora__SecAggSetup *su);

void fed_peer_gone(fed *f, uint64_t peer, uint64_t now_ms)
{
	sess *s = sess_get(f, peer);
	if (!s)
		return;
	hm_del(&f->sess_by_peer, mix64(peer), s);
	fnode *n = s->node;
	free(s);
	if (!n || n->peer != peer)
		return; /* replaced by a newer session, or never joined */
	n->peer = 0;
	n->st = N_GONE;
	n->last_seen = now_ms;
	if (f->connected)
		f->connected--;
	set_connected_gauge(f);
	LOGI(MOD, "node %s disconnected", n->cn);
	if (f->o.async.on) {
		n->fa_gone = now_ms ? now_ms : 1;
		return;
	}
	part *p = part_of(f, n);
	if (p && !p->answered)
		p->gone_at = now_ms ? now_ms : 1;
	/* a secure round cannot resume a session: the messages relayed
	 * meanwhile are lost, so the node is out of this round at once
	 * (unless the round is past its phases: finish job in flight) */
	if (p && f->sa && f->state == FED_COLLECTING)
		sa_drop(f, p, "session", "disconnected");
	maybe_close_round(f, now_ms);
	if (f->final_wait)
		final_check(f);
}

static fnode *node_new(fed *f, const char *cn)
{
	if (f->nnodes == f->nodes_cap) {
		/* evict the longest-gone node that is not in the current round */
		fnode *victim = NULL;
		size_t vi = 0;
		if (f->nnodes >= (size_t)f->o.max_nodes * 4) {
			for (size_t i = 0; i < f->nnodes; i++) {
				fnode *c = f->nodes[i];
				if (c->peer || part_of(f, c))
					continue;
				if (!victim || c->last_seen < victim->last_seen) {
					victim = c;
					vi = i;
				}
			}
		}
		if (victim) {
			hm_del(&f->node_by_cn, str_hash(victim->cn), victim);
			free(victim);
			f->nodes[vi] = f->nodes[--f->nnodes];
		} else {
			size_t nc = f->nodes_cap ? f->nodes_cap * 2 : 64;
			fnode **nn = realloc(f->nodes, nc * sizeof *nn);
			if (!nn)
				return NULL;
			f->nodes = nn;
			f->nodes_cap = nc;
		}
	}
	fnode *n = calloc(1, sizeof *n);
	if (!n)
		return NULL;
	snprintf(n->cn, sizeof n->cn, "%s", cn);
	if (hm_put(&f->node_by_cn, str_hash(n->cn), n)) {
		free(n);
		return NULL;
	}
	f->nodes[f->nnodes++] = n;
	return n;
}

static void send_round_start(fed *f, fnode **nodes, size_t n, uint64_t now_ms);
static void update_ready(fed *f, uint64_t now_ms);

static int tier_join_refused(fed *f, const sess *s, const Fedlora__Join *j, uint64_t peer);
/* The rank slots and uplink format of a joining node (nrank), or a
 * refusal: one that cannot do what its group requires, or one that can
 * only train fewer slots than the federation's rank where rank slots are
 * not supported (rank_conflict). */
static int join_rank(const fed *f, const char *cn, const Fedlora__Join *j, nrank_assign *out,
                     char *why, size_t whylen)
{
	uint32_t R = f->o.spec.rank;
	const char *k = rank_conflict(&f->o);
	if (k && j->max_rank && j->max_rank < R) {
		WHY("node %s announces node.max_rank %u, below lora.rank %u, and this federation "
		    "runs %s, which rank slots do not support",
		    cn, j->max_rank, R, k);
		return FL_EINVAL;
	}
	int fm[8];
	size_t nf = j->n_upload_formats < 8 ? j->n_upload_formats : 8;
	for (size_t i = 0; i < nf; i++)
		fm[i] = (int)j->upload_formats[i];
	int rc = nrank_assign_node(&f->o.rank, R, f->o.train.uplink_fmt, f->o.train.uplink_block,
	                           cn, j->max_rank, fm, nf, out, why, whylen);
	if (!rc && (out->rank < R || out->fmt != f->o.train.uplink_fmt))
		LOGI(MOD, "node %s: rank %u of %u, uploads %s", cn, out->rank, R,
		     qt_fmt_name(out->fmt));
	return rc;
}

static void handle_join(fed *f, sess *s, const Fedlora__Join *j, uint64_t now_ms)
{
	char d[256];
	uint64_t peer = s->peer;
	if (s->node) {
		send_error(f, peer, FEDLORA__ERROR__CODE__CODE_UNEXPECTED, "already joined");
		return;
	}
	if (!s->cn[0]) {
		reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_NOT_ALLOWED, "no_identity",
		            "session has no certificate identity");
		return;
	}
	if (f->state == FED_STOPPED || f->stopping) {
		reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_SHUTTING_DOWN, "shutting_down",
		            "coordinator is shutting down");
		return;
	}
	if (j->base_fingerprint.len != 32 || memcmp(j->base_fingerprint.data, f->o.base_sha, 32)) {
		char h1[65] = "(none)", h2[65];
		if (j->base_fingerprint.len == 32)
			hex_encode(j->base_fingerprint.data, 32, h1);
		hex_encode(f->o.base_sha, 32, h2);
		snprintf(d, sizeof d,
		         "base model fingerprint %.16s... differs from the federation's %.16s...",
		         h1, h2);
		reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_BASE_MISMATCH, "base", d);
		return;
	}
	if (j->lora) {
		const Fedlora__LoraSpec *l = j->lora;
		uint32_t mask = 0;
		int bad_target = 0;
		for (size_t i = 0; i < l->n_targets; i++) {
			int t = l->targets[i]
			            ? lora_target_find(l->targets[i], strlen(l->targets[i]))
			            : -1;
			if (t < 0)
				bad_target = 1;
			else
				mask |= 1u << t;
		}
		const char *what = NULL;
		if (l->rank != f->o.spec.rank)
			what = "rank";
		else if (l->alpha != f->o.spec.alpha)
			what = "alpha";
		else if (bad_target || mask != f->o.spec.targets)
			what = "targets";
		else if ((l->rslora != 0) != (f->o.spec.rslora != 0))
			what = "rslora";
		else if ((l->ffa != 0) != (f->o.spec.ffa != 0))
			what = "ffa";
		else if (l->init_seed != f->o.spec.init_seed)
			what = "init_seed";
		if (what) {
			snprintf(
			    d, sizeof d,
			    "LoRA spec differs from the federation's in %s (federation: rank %u "
			    "alpha %g targets %s rslora %d ffa %d init_seed %" PRIu64 ")",
			    what, f->o.spec.rank, (double)f->o.spec.alpha, f->targets_str,
			    f->o.spec.rslora, f->o.spec.ffa, f->o.spec.init_seed);
			reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_ADAPTER_MISMATCH,
			            "adapter", d);
			return;
		}
	}
	if (j->adapter_fingerprint.len != 32 ||
	    memcmp(j->adapter_fingerprint.data, f->shape_sha, 32)) {
		char h1[65] = "(none)", h2[65];
		if (j->adapter_fingerprint.len == 32)
			hex_encode(j->adapter_fingerprint.data, 32, h1);
		hex_encode(f->shape_sha, 32, h2);
		snprintf(
		    d, sizeof d,
		    "adapter shape fingerprint %.16s... differs from the federation's %.16s... "
		    "(layers, targets or rank)",
		    h1, h2);
		reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_ADAPTER_MISMATCH, "adapter",
		            d);
		return;
	}
	if (f->o.secure.on) {
		int has = 0;
		for (size_t i = 0; i < j->n_capabilities && !has; i++)
			has = j->capabilities[i] && strcmp(j->capabilities[i], "secagg") == 0;
		if (!has) {
			snprintf(d, sizeof d,
			         "this federation runs secure aggregation (aggregation.secure = "
			         "true) and node %s does not announce the \"secagg\" capability",
			         s->cn);
			reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_VERSION, "secagg", d);
			return;
		}
	}
	if (tier_join_refused(f, s, j, peer))
		return;
	nrank_assign rk;
	if (join_rank(f, s->cn, j, &rk, d, sizeof d) != 0) {
		reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_RANK, "rank", d);
		return;
	}
	fnode *n = node_get(f, s->cn);
	if (!n) {
		size_t joined = 0;
		for (size_t i = 0; i < f->nnodes; i++)
			joined += f->nodes[i]->peer != 0;
		if (joined >= f->o.max_nodes) {
			snprintf(d, sizeof d, "coordinator at capacity (%u nodes)", f->o.max_nodes);
			reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_FULL, "full", d);
			return;
		}
		n = node_new(f, s->cn);
		if (!n) {
			send_error(f, peer, FEDLORA__ERROR__CODE__CODE_INTERNAL, "out of memory");
			close_peer(f, peer, "out of memory");
			return;
		}
		n->joined_ms = now_ms;
	}
	if (n->peer && n->peer != peer) {
		/* a newer session of the same node replaces the old one */
		sess *old = sess_get(f, n->peer);
		if (old)
			old->node = NULL;
		close_peer(f, n->peer, "replaced by a newer session of the same node");
		if (f->connected)
			f->connected--;
	}
	n->peer = peer;
	s->node = n;
	f->connected++;
	snprintf(n->sw, sizeof n->sw, "%s", j->software_version ? j->software_version : "");
	n->caps[0] = 0;
	size_t k = 0;
	for (size_t i = 0; i < j->n_capabilities && k + 2 < sizeof n->caps; i++) {
		int w = snprintf(n->caps + k, sizeof n->caps - k, "%s%s", k ? "," : "",
		                 j->capabilities[i] ? j->capabilities[i] : "");
		if (w < 0)
			break;
		k += (size_t)w;
	}
	n->samples = j->sample_count;
	n->last_seen = now_ms;
	n->st = N_IDLE;
	n->rk = rk;
	n->held_known = j->have_sha256.len == 32;
	if (n->held_known) {
		n->held_version = j->have_version;
		memcpy(n->held_sha, j->have_sha256.data, 32);
	}
	set_connected_gauge(f);
	char held[32] = "no version";
	if (n->held_known)
		snprintf(held, sizeof held, "v%" PRIu64, n->held_version);
	LOGI(MOD, "node %s joined (software %s, %" PRIu64 " samples, holds %s)", n->cn,
	     n->sw[0] ? n->sw : "?", n->samples, held);

	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Welcome w = FEDLORA__WELCOME__INIT;
	Fedlora__LoraSpec ls = FEDLORA__LORA_SPEC__INIT;
	char *tg[LORA_NTARGETS];
	lora_spec_to_proto(&f->o.spec, &ls, tg);
	w.node_id = n->cn;
	w.coordinator_version = FEDLORA_VERSION;
	w.heartbeat_ms = f->o.heartbeat_ms;
	w.global_version = f->version;
	w.global_sha256.data = f->sha;
	w.global_sha256.len = 32;
	w.lora = &ls;
	env.body_case = FEDLORA__ENVELOPE__BODY_WELCOME;
	env.welcome = &w;
	send_env(f, &peer, 1, &env);

	/* a participant coming back during its round: give it the round again
	 * unless it says it already uploaded for it (it will resend) */
	part *p = part_of(f, n);
	if (p) {
		p->gone_at = 0;
		p->dropped = 0;
		if (f->state == FED_COLLECTING && !p->answered && !p->pending && !f->sa &&
		    j->last_round_id != f->round_id) {
			fnode *one = n;
			send_round_start(f, &one, 1, now_ms);
		}
	}
	if (f->o.async.on)
		fa_rejoin(f, n, now_ms);
	update_ready(f, now_ms);
}

/* ------------------------------------------------------------------ */
/* rounds                                                              */

static size_t eligible_nodes(fed *f, fnode ***out)
{
	fnode **e = malloc((f->nnodes ? f->nnodes : 1) * sizeof *e);
	size_t k = 0;
	if (!e) {
		*out = NULL;
		return 0;
	}
	for (size_t i = 0; i < f->nnodes; i++)
		if (f->nodes[i]->peer)
			e[k++] = f->nodes[i];
	*out = e;
	return k;
}

static void update_ready(fed *f, uint64_t now_ms)
{
	if (f->o.tier) { /* a region's rounds start with the root's */
		f->ready = 0;
		return;
	}
	if (f->o.async.on) {
		fa_assign(f, now_ms);
		return;
	}
	if (f->state != FED_IDLE || f->stopping)
		return;
	if (f->wf_since || f->wf_pending) {
		f->ready = 0; /* rounds wait until the state can be written */
		return;
	}
	if (f->connected >= f->o.min_nodes) {
		if (!f->ready) {
			uint64_t t = now_ms + f->o.start_delay_ms;
			f->ready_at = t > f->gap_until ? t : f->gap_until;
			f->ready = 1;
		}
	} else {
		f->ready = 0;
	}
}

static int cmp_node_cn(const void *a, const void *b)
{
	return strcmp((*(fnode *const *)a)->cn, (*(fnode *const *)b)->cn);
}

typedef struct wkey {
	double key;
	fnode *n;
} wkey;

static int cmp_wkey_desc(const void *a, const void *b)
{
	double x = ((const wkey *)a)->key, y = ((const wkey *)b)->key;
	if (x != y)
		return x > y ? -1 : 1;
	return strcmp(((const wkey *)a)->n->cn, ((const wkey *)b)->n->cn);
}

/* Differential privacy: Poisson sampling, as the accountant assumes: every
 * eligible node independently with probability q, from the CSPRNG (an
 * observer who knows federation.seed must not learn who took part). The
 * chosen move to the front of e; returns their number (may be 0), or
 * SIZE_MAX when the CSPRNG failed. */
static size_t sample_poisson(fed *f, fnode **e, size_t ne)
{
	size_t k = 0;
	if (ne > f->o.priv.population)
		LOGW(MOD,
		     "%zu nodes are eligible, more than privacy.population (%" PRIu64
		     "): rounds will be larger than rounds.nodes_per_round on average",
		     ne, f->o.priv.population);
	for (size_t i = 0; i < ne; i++)
		if (dp_rng_uniform(f->dp_samp) < f->dp_q)
			e[k++] = e[i];
	return dp_rng_failed(f->dp_samp) ? SIZE_MAX : k;
}

/* Picks the round's participants into f->parts. */
static int sample(fed *f, fnode **e, size_t ne)
{
	qsort(e, ne, sizeof *e, cmp_node_cn); /* independent of arrival order */
	size_t k;
	if (f->o.nodes_per_round)
		k = f->o.nodes_per_round;
	else
		k = (size_t)ceil(f->o.fraction * (double)ne);
	if (k < f->o.min_updates)
		k = f->o.min_updates;
	if (k > ne)
		k = ne;
	if (k < 1)
		k = 1;
	if (f->o.secure.on && k < 3 && ne >= 3)
		k = 3;
	if (f->dp_on && (k = sample_poisson(f, e, ne)) == SIZE_MAX)
		return FL_ECRYPTO;
	rng r;
	rng_seed(&r, f->o.seed ^ (f->round_id * 0x9e3779b97f4a7c15ull));
	if (f->dp_on) {
		/* drawn by sample_poisson */
	} else if (f->o.sampling_weighted) {
		/* Efraimidis-Spirakis: keys u^(1/w), keep the k largest (as logs) */
		wkey *w = malloc(ne * sizeof *w);
		if (!w)
			return FL_ENOMEM;
		for (size_t i = 0; i < ne; i++) {
			double u = rng_uniform(&r);
			double wt = e[i]->samples ? (double)e[i]->samples : 1.0;
			w[i].key = log(u > 0 ? u : 1e-300) / wt;
			w[i].n = e[i];
		}
		qsort(w, ne, sizeof *w, cmp_wkey_desc);
		for (size_t i = 0; i < k; i++)
			e[i] = w[i].n;
		free(w);
	} else {
		/* partial Fisher-Yates */
		for (size_t i = 0; i < k; i++) {
			size_t j = i + (size_t)rng_below(&r, ne - i);
			fnode *t = e[i];
			e[i] = e[j];
			e[j] = t;
		}
	}
	if (k > f->parts_cap) {
		part *np = realloc(f->parts, k * sizeof *np);
		if (!np)
			return FL_ENOMEM;
		f->parts = np;
		f->parts_cap = k;
	}
	if (f->o.secure.on) /* a secure round's index is the position among sorted ids */
		qsort(e, k, sizeof *e, cmp_node_cn);
	f->nparts = k;
	for (size_t i = 0; i < k; i++) {
		memset(&f->parts[i], 0, sizeof f->parts[i]);
		f->parts[i].n = e[i];
		e[i]->part_round = f->round_id;
		e[i]->part_idx = i;
	}
	return 0;
}

static uint64_t round_seed(const fed *f)
{
	uint64_t x = f->o.seed + f->round_id * 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

enum { PL_EMPTY = 0, PL_DELTA, PL_SNAP };

static int payload_kind(const fed *f, const fnode *n)
{
	if (n->held_known && n->held_version == f->version && !memcmp(n->held_sha, f->sha, 32))
		return PL_EMPTY;
	if (n->held_known && f->has_parent && f->delta.len && n->held_version == f->parent &&
	    !memcmp(n->held_sha, f->parent_sha, 32))
		return PL_DELTA;
	return PL_SNAP;
}

/* Nodes that get the same TrainParams (rank slots and uplink format). A
 * node assigned nothing (rank 0: joined before this was set) gets the
 * federation's. */
static int same_profile(const nrank_assign *a, const nrank_assign *b)
{
	return a->rank == b->rank && a->fmt == b->fmt && a->block == b->block;
}

static void profile_params(const fed *f, const nrank_assign *pr, Fedlora__TrainParams *tp)
{
	tp->uplink_format = (Fedlora__QFormat)(pr->fmt ? pr->fmt : f->o.train.uplink_fmt);
	tp->uplink_block = pr->fmt ? pr->block : f->o.train.uplink_block;
	tp->train_rank = pr->rank && pr->rank < f->o.spec.rank ? pr->rank : 0;
}

/* RoundStart to the given participants, grouped by payload so each
 * encoding is sent once with the list of its peers. */
static void send_round_start(fed *f, fnode **nodes, size_t n, uint64_t now_ms)
{
	uint64_t remaining = f->deadline > now_ms ? f->deadline - now_ms : 0;
	Fedlora__TrainParams tp = FEDLORA__TRAIN_PARAMS__INIT;
	tp.local_steps = f->o.train.local_steps;
	tp.lr = f->o.train.lr;
	tp.batch_size = f->o.train.batch_size;
	tp.ctx = f->o.train.ctx;
	tp.weight_decay = f->o.train.weight_decay;
	tp.max_grad_norm = f->o.train.max_grad_norm;
	tp.fedprox_mu = f->o.train.fedprox_mu;
	tp.seed = round_seed(f);
	tp.uplink_format = (Fedlora__QFormat)f->o.train.uplink_fmt;
	tp.uplink_block = f->o.train.uplink_block;
	tp.stochastic_rounding = f->o.train.stochastic_rounding;
	tp.error_feedback = f->o.train.error_feedback;
	tp.dp_clip = f->dp_on ? (float)f->o.priv.clip : 0.0f;
	if (f->tier_tp_set) /* a region passes the root's parameters on */
		tp = f->tier_tp;
	Fedlora__RoundStart rs = FEDLORA__ROUND_START__INIT;
	rs.round_id = f->round_id;
	rs.global_version = f->version;
	rs.global_sha256.data = f->sha;
	rs.global_sha256.len = 32;
	rs.params = &tp;
	rs.deadline_ms = remaining > UINT32_MAX ? UINT32_MAX : (uint32_t)remaining;
	rs.deadline_unix_ms = wall(f) + remaining;
	Fedlora__SecAggSetup su;
	if (f->sa) {
		sa_setup_msg(f, &su);
		rs.secagg = &su;
	}
	if (f->o.async.on)
		rs.async_buffer = f->o.async.buffer_size;
	uint64_t *peers = malloc((n ? n : 1) * sizeof *peers);
	if (!peers)
		return;
	/* one encoding per payload kind and per assigned (rank, format): the
	 * distinct profiles first (few: one per group at most) */
	const nrank_assign **prof = malloc((n ? n : 1) * sizeof *prof);
	size_t nprof = 0;
	if (!prof) {
		free(peers);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		size_t k = 0;
		while (k < nprof && !same_profile(prof[k], &nodes[i]->rk))
			k++;
		if (k == nprof)
			prof[nprof++] = &nodes[i]->rk;
	}
	for (size_t pi = 0; pi < nprof * 3; pi++) {
		int kind = PL_EMPTY + (int)(pi % 3);
		const nrank_assign *pr = prof[pi / 3];
		size_t np = 0;
		for (size_t i = 0; i < n; i++)
			if (nodes[i]->peer && payload_kind(f, nodes[i]) == kind &&
			    same_profile(&nodes[i]->rk, pr))
				peers[np++] = nodes[i]->peer;
		if (!np)
			continue;
		profile_params(f, pr, &tp);
		const buf *pl = kind == PL_EMPTY   ? &f->empty
		                : kind == PL_DELTA ? &f->delta
		                                   : &f->snap;
		buf b;
		buf_init(&b, 0);
		if (fed_encode_round_start(&rs, ++f->seq, pl->data, pl->len, &b) == 0) {
			if (f->io.send)
				f->io.send(f->io.ud, peers, np, b.data, b.len);
			f->bytes_out += (uint64_t)b.len * np;
			met_add(f, "fedlora_bytes_total", "direction=\"out\"",
			        (double)b.len * (double)np);
		} else {
			LOGE(MOD, "cannot encode RoundStart");
		}
		buf_fini(&b);
	}
	for (size_t i = 0; i < n; i++) {
		if (!nodes[i]->peer)
			continue;
		nodes[i]->held_known = 1;
		nodes[i]->held_version = f->version;
		memcpy(nodes[i]->held_sha, f->sha, 32);
		nodes[i]->st = N_TRAINING;
	}
	free(prof);
	free(peers);
}

static void say_goodbye(fed *f, const char *why);

/* Central DP: charges round rid to the ledger before anything of it
 * happens. 1 = charged (ledger on disk); 0 = the round would exceed
 * privacy.target_epsilon: the federation stops (journal, log, Bye); -1 =
 * the ledger could not be written: no round now, another try in a second. */
static int dp_charge(fed *f, uint64_t rid, uint64_t now_ms)
{
	const dp_opts *po = &f->o.priv;
	dp_ledger n = f->led;
	if (po->mode == DP_DISTRIBUTED) {
		ddg_acct a = dpd_acct(&f->o, tset_numel(agg_layout(f->agg)));
		ddg_rdp_compose(n.rdp, f->dp_q, &a, 1);
	} else {
		dp_rdp_compose(n.rdp, f->dp_q, po->z, 1);
	}
	double eps = dp_epsilon(n.rdp, po->delta, NULL);
	if (eps > po->target_eps) {
		LOGW(MOD,
		     "privacy budget: round %" PRIu64 " would bring epsilon to %.4g, past "
		     "privacy.target_epsilon %g at delta %g (%.4g spent in %" PRIu64
		     " rounds); the federation ends",
		     rid, eps, po->target_eps, po->delta, f->led.epsilon, f->led.rounds);
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "type", "privacy_budget_exhausted");
		cJSON_AddNumberToObject(j, "round", (double)f->round_id);
		cJSON_AddNumberToObject(j, "epsilon_spent", f->led.epsilon);
		cJSON_AddNumberToObject(j, "epsilon_next", eps);
		cJSON_AddNumberToObject(j, "target_epsilon", po->target_eps);
		cJSON_AddNumberToObject(j, "delta", po->delta);
		cJSON_AddNumberToObject(j, "rounds_charged", (double)f->led.rounds);
		journal_rec(f, j);
		f->state = FED_STOPPED;
		f->ready = 0;
		say_goodbye(f, "privacy budget spent");
		return 0;
	}
	n.rounds++;
	n.last_round = rid;
	n.delta = po->delta;
	n.epsilon = eps;
	n.last_q = f->dp_q;
	n.last_z = po->z;
	if (f->st) {
		int rc = dp_ledger_save(store_dir(f->st), &n);
		if (rc) {
			LOGE(MOD,
			     "cannot write the privacy ledger (%s); round %" PRIu64 " not started",
			     fl_strerror(rc), rid);
			f->ready = 1;
			f->ready_at = now_ms + 1000;
			return -1;
		}
	}
	f->led = n;
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "privacy_charge");
	cJSON_AddNumberToObject(j, "round", (double)rid);
	cJSON_AddNumberToObject(j, "rounds_charged", (double)n.rounds);
	cJSON_AddNumberToObject(j, "epsilon", eps);
	cJSON_AddNumberToObject(j, "delta", po->delta);
	cJSON_AddNumberToObject(j, "q", f->dp_q);
	cJSON_AddNumberToObject(j, "noise_multiplier", po->z);
	journal_rec(f, j);
	dp_metrics(f);
	LOGI(MOD, "privacy: round %" PRIu64 " charged; epsilon %.4g of %g at delta %g", rid, eps,
	     po->target_eps, po->delta);
	return 1;
}

static void start_round(fed *f, uint64_t now_ms)
{
	fnode **e;
	size_t ne = eligible_nodes(f, &e);
	if (ne < f->o.min_nodes) {
		free(e);
		f->ready = 0;
		return;
	}
	if (f->dp_on) {
		int c = dp_charge(f, f->round_id + 1, now_ms);
		if (c <= 0) {
			free(e);
			return;
		}
	}
	f->round_id++;
	if (sample(f, e, ne)) {
		LOGE(MOD, "out of memory sampling round %" PRIu64, f->round_id);
		free(e);
		f->ready = 1;
		f->ready_at = now_ms + 1000;
		return;
	}
	free(e);
	agg_begin(f->agg);
	if (f->o.secure.on) {
		char why[256];
		int rc = sa_begin(f, why, sizeof why);
		if (rc) {
			LOGE(MOD, "round %" PRIu64 ": cannot set up secure aggregation: %s",
			     f->round_id, why);
			f->nparts = 0;
			f->ready = 1;
			f->ready_at = now_ms + 1000;
			return;
		}
	}
	f->state = FED_COLLECTING;
	f->ready = 0;
	f->round_version = f->version;
	f->round_started = now_ms;
	f->deadline = now_ms + (f->o.tier ? f->tier_deadline_ms : f->o.round_timeout_ms);
	f->sp_deadline = now_ms + f->o.secure.phase_ms;
	f->answered = 0;
	f->bytes_in = f->bytes_out = 0;
	memset(f->rejected, 0, sizeof f->rejected);
	LOGI(MOD,
	     "round %" PRIu64 ": %zu of %zu nodes sampled, version %" PRIu64 ", deadline %u ms",
	     f->round_id, f->nparts, ne, f->version, f->o.round_timeout_ms);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "round_start");
	cJSON_AddNumberToObject(j, "round", (double)f->round_id);
	cJSON_AddNumberToObject(j, "version", (double)f->version);
	cJSON_AddNumberToObject(j, "eligible", (double)ne);
	cJSON_AddNumberToObject(j, "deadline_ms", f->o.round_timeout_ms);
	cJSON *pa = cJSON_AddArrayToObject(j, "participants");
	fnode **ps = malloc(f->nparts * sizeof *ps);
	for (size_t i = 0; i < f->nparts; i++) {
		if (pa)
			cJSON_AddItemToArray(pa, cJSON_CreateString(f->parts[i].n->cn));
		if (ps)
			ps[i] = f->parts[i].n;
	}
	journal_rec(f, j);
	met_set(f, "fedlora_round_id", NULL, (double)f->round_id);
	met_set(f, "fedlora_round_participants", NULL, (double)f->nparts);
	if (ps)
		send_round_start(f, ps, f->nparts, now_ms);
	free(ps);
	if (f->nparts == 0) /* DP: an empty Poisson sample; the round releases noise */
		maybe_close_round(f, now_ms);
}

static void submit(fed *f, fed_job *job, uint64_t now_ms)
{
	f->jobs++;
	if (f->io.submit) {
		f->io.submit(f->io.ud, job);
	} else {
		fed_job_run(job);
		fed_job_done(f, job, now_ms);
	}
}

static void round_end_msg(fed *f, int committed, const char *detail, size_t accepted,
                          double train_loss, double eval_loss, int has_train, int has_eval)
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__RoundEnd re = FEDLORA__ROUND_END__INIT;
	Fedlora__Metric mt[2], *mp[2];
	size_t nm = 0;
	if (has_train) {
		fedlora__metric__init(&mt[nm]);
		mt[nm].name = "train_loss";
		mt[nm].value = train_loss;
		mp[nm] = &mt[nm];
		nm++;
	}
	if (has_eval) {
		fedlora__metric__init(&mt[nm]);
		mt[nm].name = "eval_loss";
		mt[nm].value = eval_loss;
		mp[nm] = &mt[nm];
		nm++;
	}
	re.round_id = f->round_id;
	re.committed = committed;
	re.version = f->version;
	re.sha256.data = f->sha;
	re.sha256.len = 32;
	re.participants = (uint32_t)accepted;
	re.detail = (char *)(detail ? detail : "");
	re.n_metrics = nm;
	re.metrics = mp;
	env.body_case = FEDLORA__ENVELOPE__BODY_ROUND_END;
	env.round_end = &re;
	uint64_t *peers = malloc((f->nparts ? f->nparts : 1) * sizeof *peers);
	size_t np = 0;
	for (size_t i = 0; peers && i < f->nparts; i++) {
		if (f->parts[i].n->peer)
			peers[np++] = f->parts[i].n->peer;
		if (f->parts[i].n->st != N_GONE)
			f->parts[i].n->st = N_IDLE;
	}
	send_env(f, peers, np, &env);
	free(peers);
}

static void round_journal(fed *f, int committed, const char *detail, uint64_t now_ms,
                          const fed_job *job, double tl, double el, int ht, int he)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "round_end");
	cJSON_AddNumberToObject(j, "round", (double)f->round_id);
	cJSON_AddBoolToObject(j, "committed", committed);
	cJSON_AddNumberToObject(j, "version", (double)f->version);
	if (committed) {
		cJSON_AddNumberToObject(j, "parent", (double)f->parent);
		add_hex(j, "sha256", f->sha, 32);
	} else {
		cJSON_AddStringToObject(j, "detail", detail ? detail : "");
	}
	cJSON_AddStringToObject(j, "strategy", agg_strategy_name(f->o.agg.strategy));
	if (f->o.secure.on) /* accepted = the inputs inside the unmasked sum */
		cJSON_AddBoolToObject(j, "secure", 1);
	cJSON *pa = cJSON_AddArrayToObject(j, "participants");
	cJSON *ac = cJSON_AddArrayToObject(j, "accepted");
	size_t nacc = 0, nclip = 0;
	double nsum = 0;
	for (size_t i = 0; i < f->nparts; i++) {
		part *p = &f->parts[i];
		cJSON_AddItemToArray(pa, cJSON_CreateString(p->n->cn));
		if (p->accepted) {
			cJSON_AddItemToArray(ac, cJSON_CreateString(p->n->cn));
			nacc++;
			nsum += p->norm;
			nclip += p->scale < 1.0;
		}
	}
	cJSON *rj = cJSON_AddObjectToObject(j, "rejected");
	for (int r = 1; r < 16; r++)
		if (f->rejected[r])
			cJSON_AddNumberToObject(rj, ack_reason_name(r), (double)f->rejected[r]);
	cJSON_AddNumberToObject(j, "bytes_in", (double)f->bytes_in);
	cJSON_AddNumberToObject(j, "bytes_out", (double)f->bytes_out);
	cJSON *mj = cJSON_AddObjectToObject(j, "metrics");
	if (ht)
		cJSON_AddNumberToObject(mj, "train_loss", tl);
	if (he)
		cJSON_AddNumberToObject(mj, "eval_loss", el);
	if (nacc) {
		cJSON_AddNumberToObject(mj, "mean_update_norm", nsum / (double)nacc);
		cJSON_AddNumberToObject(mj, "clipped", (double)nclip);
	}
	cJSON *tj = cJSON_AddObjectToObject(j, "timings");
	cJSON_AddNumberToObject(tj, "collect_ms", (double)f->collect_ms);
	if (job) {
		cJSON_AddNumberToObject(tj, "aggregate_ms", job->agg_secs * 1e3);
		cJSON_AddNumberToObject(tj, "commit_ms", job->commit_secs * 1e3);
	}
	cJSON_AddNumberToObject(tj, "round_ms", (double)(now_ms - f->round_started));
	journal_rec(f, j);
}

static void round_losses(const fed *f, double *tl, double *el, int *ht, int *he)
{
	double ts = 0, tw = 0, es = 0, ew = 0;
	for (size_t i = 0; i < f->nparts; i++) {
		const part *p = &f->parts[i];
		if (!p->accepted)
			continue;
		double w = p->samples ? (double)p->samples : 1.0;
		if (p->has_train_loss) {
			ts += w * p->train_loss;
			tw += w;
		}
		if (p->has_eval_loss) {
			es += w * p->eval_loss;
			ew += w;
		}
	}
	*ht = tw > 0;
	*he = ew > 0;
	*tl = *ht ? ts / tw : 0;
	*el = *he ? es / ew : 0;
}

static int final_begin(fed *f, const char *why);

static void say_goodbye(fed *f, const char *why)
{
	if (f->o.final_timeout_ms && !f->final_wait && !f->final_done && final_begin(f, why))
		return; /* Bye follows each node's DownFinalEval, or the deadline */
	for (size_t i = 0; i < f->nnodes; i++)
		if (f->nodes[i]->peer)
			send_bye(f, f->nodes[i]->peer, why);
}

/* ------------------------------------------------------------------ */
/* the final version (docs/COORDINATOR.md "The final version")         */

/* DownFinal with the last committed version to every connected node,
 * grouped by payload like RoundStart. Returns 0 when it went to nobody
 * (then there is nothing to wait for), else 1 and the wait begins. */
static int final_begin(fed *f, const char *why)
{
	snprintf(f->final_why, sizeof f->final_why, "%s", why);
	f->final_sent = f->final_answered = f->final_evals = 0;
	f->final_loss_sum = 0;
	uint64_t *peers = malloc((f->nnodes ? f->nnodes : 1) * sizeof *peers);
	if (!peers)
		return 0;
	for (int kind = PL_EMPTY; kind <= PL_SNAP; kind++) {
		size_t np = 0;
		for (size_t i = 0; i < f->nnodes; i++)
			if (f->nodes[i]->peer && payload_kind(f, f->nodes[i]) == kind)
				peers[np++] = f->nodes[i]->peer;
		if (!np)
			continue;
		const buf *pl = kind == PL_EMPTY   ? &f->empty
		                : kind == PL_DELTA ? &f->delta
		                                   : &f->snap;
		Fedlora__AdapterPayload *ap =
		    fedlora__adapter_payload__unpack(NULL, pl->len, pl->data);
		if (!ap) {
			LOGE(MOD, "cannot decode our own adapter payload for the final version");
			continue;
		}
		Fedlora__DownFinal df = FEDLORA__DOWN_FINAL__INIT;
		df.version = f->version;
		df.sha256.data = f->sha;
		df.sha256.len = 32;
		df.reason = f->final_why;
		df.adapter = ap;
		Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
		env.body_case = FEDLORA__ENVELOPE__BODY_DOWN_FINAL;
		env.down_final = &df;
		send_env(f, peers, np, &env);
		fedlora__adapter_payload__free_unpacked(ap, NULL);
		for (size_t i = 0; i < f->nnodes; i++) {
			fnode *n = f->nodes[i];
			if (n->peer && n->final_st == 0 && payload_kind(f, n) == kind) {
				n->final_st = 1;
				f->final_sent++;
			}
		}
	}
	free(peers);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "final_sent");
	cJSON_AddNumberToObject(j, "version", (double)f->version);
	add_hex(j, "sha256", f->sha, 32);
	cJSON_AddNumberToObject(j, "nodes", (double)f->final_sent);
	cJSON_AddStringToObject(j, "reason", f->final_why);
	journal_rec(f, j);
	if (!f->final_sent) {
		f->final_done = 1;
		return 0;
	}
	LOGI(MOD,
	     "%s: version %" PRIu64 " sent to %zu nodes; waiting up to %u ms for their "
	     "evaluations",
	     f->final_why, f->version, f->final_sent, f->o.final_timeout_ms);
	f->final_wait = 1;
	f->final_deadline = 0; /* the next fed_tick sets it */
	return 1;
}

/* The wait is over: Bye to the nodes that did not answer, the summary. */
static void final_end(fed *f, const char *ended)
{
	size_t late = 0;
	for (size_t i = 0; i < f->nnodes; i++) {
		fnode *n = f->nodes[i];
		if (n->final_st == 1)
			late++;
		if (n->peer && n->final_st != 2)
			send_bye(f, n->peer, f->final_why);
	}
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "final");
	cJSON_AddNumberToObject(j, "version", (double)f->version);
	add_hex(j, "sha256", f->sha, 32);
	cJSON_AddStringToObject(j, "reason", f->final_why);
	cJSON_AddNumberToObject(j, "nodes", (double)f->final_sent);
	cJSON_AddNumberToObject(j, "answered", (double)f->final_answered);
	cJSON_AddNumberToObject(j, "evaluated", (double)f->final_evals);
	if (f->final_evals)
		cJSON_AddNumberToObject(j, "mean_eval_loss",
		                        f->final_loss_sum / (double)f->final_evals);
	cJSON_AddNumberToObject(j, "unanswered", (double)late);
	cJSON_AddStringToObject(j, "ended", ended);
	journal_rec(f, j);
	if (f->final_evals)
		LOGI(MOD,
		     "final version %" PRIu64
		     ": %zu of %zu nodes answered, mean held-out loss %.5f "
		     "over %zu (%s)",
		     f->version, f->final_answered, f->final_sent,
		     f->final_loss_sum / (double)f->final_evals, f->final_evals, ended);
	else
		LOGI(MOD,
		     "final version %" PRIu64 ": %zu of %zu nodes answered, none evaluated (%s)",
		     f->version, f->final_answered, f->final_sent, ended);
	f->final_wait = 0;
	f->final_done = 1;
}

/* Ends the wait once no connected node still owes an answer. */
static void final_check(fed *f)
{
	for (size_t i = 0; i < f->nnodes; i++)
		if (f->nodes[i]->peer && f->nodes[i]->final_st == 1)
			return;
	final_end(f, "every connected node answered");
}

static void final_tick(fed *f, uint64_t now_ms)
{
	if (!f->final_deadline)
		f->final_deadline = now_ms + f->o.final_timeout_ms;
	else if (now_ms >= f->final_deadline)
		final_end(f, "rounds.final_timeout_ms passed");
}

static void handle_final_eval(fed *f, sess *s, const Fedlora__DownFinalEval *e)
{
	fnode *n = s->node;
	if (!f->final_wait || n->final_st != 1) {
		LOGW(MOD, "node %s: DownFinalEval not asked for; ignored", n->cn);
		return;
	}
	n->final_st = 2;
	f->final_answered++;
	int ok = e->verified && e->version == f->version;
	int ev = ok && e->has_eval && isfinite(e->eval_loss);
	char detail[201];
	snprintf(detail, sizeof detail, "%.200s", e->detail ? e->detail : "");
	if (ev) {
		f->final_evals++;
		f->final_loss_sum += e->eval_loss;
		n->eval_loss = e->eval_loss;
		n->has_eval_loss = 1;
	}
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "final_eval");
	cJSON_AddStringToObject(j, "node", n->cn);
	cJSON_AddNumberToObject(j, "version", (double)e->version);
	cJSON_AddBoolToObject(j, "verified", ok);
	if (ev)
		cJSON_AddNumberToObject(j, "eval_loss", e->eval_loss);
	if (detail[0])
		cJSON_AddStringToObject(j, "detail", detail);
	journal_rec(f, j);
	if (ev)
		LOGI(MOD, "node %s holds final version %" PRIu64 ": held-out loss %.5f", n->cn,
		     e->version, e->eval_loss);
	else
		LOGW(MOD, "node %s: final version %s%s%s", n->cn,
		     ok ? "verified, not evaluated" : "not verified", detail[0] ? ": " : "",
		     detail);
	if (n->peer)
		send_bye(f, n->peer, f->final_why);
	final_check(f);
}

static void after_round(fed *f, uint64_t now_ms)
{
	f->state = FED_IDLE;
	f->gap_until = now_ms + f->o.round_gap_ms;
	f->ready = 0;
	if (f->stopping) {
		f->state = FED_STOPPED;
		say_goodbye(f, "coordinator shutting down");
		return;
	}
	if (f->o.max_rounds && f->committed >= f->o.max_rounds) {
		LOGI(MOD, "federation finished: %" PRIu64 " rounds committed", f->committed);
		f->state = FED_STOPPED;
		say_goodbye(f, "federation finished");
		return;
	}
	update_ready(f, now_ms);
}

static void tier_report(fed *f, const fed_tier_result *r);

static void abandon_round(fed *f, const char *detail, uint64_t now_ms)
{
	sa_reset(f);
	if (f->o.tier) { /* the region has nothing to forward */
		fed_tier_result tr = {.round_id = f->round_id, .detail = detail};
		tier_report(f, &tr);
	}
	size_t acc = agg_count(f->agg);
	LOGW(MOD, "round %" PRIu64 " abandoned: %s (version stays %" PRIu64 ")", f->round_id,
	     detail, f->version);
	f->abandoned++;
	met_add(f, "fedlora_rounds_total", "outcome=\"abandoned\"", 1);
	met_observe(f, "fedlora_round_seconds", (double)(now_ms - f->round_started) / 1e3);
	round_end_msg(f, 0, detail, f->dp_on ? 0 : acc, 0, 0, 0, 0);
	round_journal(f, 0, detail, now_ms, NULL, 0, 0, 0, 0);
	after_round(f, now_ms);
}

/* A commit job for the next version (parent: the current one); NULL when
 * out of memory. */
static fed_job *commit_job_new(fed *f)
{
	fed_job *job = calloc(1, sizeof *job);
	if (!job)
		return NULL;
	job->f = f;
	job->type = JOB_COMMIT;
	job->round_id = f->round_id;
	job->parent = f->version;
	uint64_t mv = f->st ? store_max_version(f->st) : 0;
	job->version = (mv > f->version ? mv : f->version) + 1;
	buf_init(&job->snap, 0);
	buf_init(&job->delta, 0);
	return job;
}

/* Collection is over: commit or abandon once in-flight updates are done. */
static void finish_round(fed *f, uint64_t now_ms)
{
	if (f->state != FED_CLOSING || f->jobs)
		return;
	if (f->stopping) {
		abandon_round(f, "coordinator shutting down", now_ms);
		return;
	}
	size_t acc = agg_count(f->agg);
	/* DP: a round commits with any number of updates, even none: abandoning
	 * on a count would release that count without noise */
	if (acc < f->o.min_updates && !f->dp_on) {
		char d[160];
		snprintf(d, sizeof d, "%zu update%s accepted, rounds.min_updates is %u", acc,
		         acc == 1 ? "" : "s", f->o.min_updates);
		abandon_round(f, d, now_ms);
		return;
	}
	fed_job *job = commit_job_new(f);
	if (!job) {
		abandon_round(f, "out of memory", now_ms);
		return;
	}
	if (f->o.tier)
		job->type = JOB_TIER; /* a region forwards its mean */
	f->state = FED_COMMITTING;
	submit(f, job, now_ms);
}

static void sa_advance(fed *f, uint64_t now_ms);

static void maybe_close_round(fed *f, uint64_t now_ms)
{
	if (f->state != FED_COLLECTING || f->o.async.on)
		return;
	if (f->sa) {
		sa_advance(f, now_ms);
		return;
	}
	int all = 1;
	for (size_t i = 0; i < f->nparts && all; i++) {
		part *p = &f->parts[i];
		if (p->answered)
			continue;
		if (p->pending) {
			all = 0;
			continue;
		}
		if (p->gone_at && now_ms >= p->gone_at + f->o.gone_grace_ms) {
			if (!p->dropped) {
				p->dropped = 1;
				LOGI(MOD,
				     "round %" PRIu64 ": no longer waiting for %s (disconnected)",
				     f->round_id, p->n->cn);
			}
			continue;
		}
		all = 0;
	}
	int expired = now_ms >= f->deadline;
	if (!all && !expired)
		return;
	if (expired && !all)
		LOGI(MOD, "round %" PRIu64 ": deadline passed with %zu of %zu answers", f->round_id,
		     f->answered, f->nparts);
	f->collect_ms = now_ms - f->round_started;
	f->state = FED_CLOSING;
	finish_round(f, now_ms);
}

/* ------------------------------------------------------------------ */
/* secure rounds (SecAgg+ on the common grid; docs/PRIVACY.md)         */
/*                                                                     */
/* A secure round runs advertise (SecAggKeys) -> roster (SecAggRoster) */
/* -> shares (SecAggShares both ways) -> masked inputs (Update.masked) */
/* -> unmask (SecAggUnmask / SecAggReveal) -> the exact integer sum,   */
/* which agg_set_sum hands to the strategy. The coordinator relays     */
/* keys and ciphertexts; the only vector it ever decodes is the sum.   */

/* SP_FINISH: the unmask phase is closed and sa_server_finish runs as a
 * job (JOB_SA_FINISH) on the worker; the loop leaves f->sa alone (the
 * round is FED_CLOSING, late secure messages are answered, not applied). */
enum sa_phase { SP_NONE = 0, SP_KEYS, SP_SHARES, SP_MASKED, SP_UNMASK, SP_FINISH };
static const char *const sp_names[] = {"none", "keys", "shares", "masked", "unmask", "finish"};

static void sa_reset(fed *f)
{
	sa_server_free(f->sa);
	f->sa = NULL;
	f->sp = SP_NONE;
	free(f->sa_ids);
	f->sa_ids = NULL;
}

/* Drops participant p from the secure protocol for a fault; the rest of
 * the round goes on without it (its masks are removed as a dropout's). */
static void sa_drop(fed *f, void *pp, const char *what, const char *why)
{
	part *p = pp;
	if (p->sa_out)
		return;
	p->sa_out = 1;
	LOGW(MOD, "round %" PRIu64 ": node %s dropped from the secure round (%s): %s", f->round_id,
	     p->n->cn, what, why);
	met_add(f, "fedlora_secagg_dropped_total", NULL, 1);
}

/* Whether the round still waits for p in the current phase. */
static int sa_waiting(const fed *f, const part *p, uint64_t now_ms)
{
	if (p->sa_out)
		return 0;
	if (p->gone_at && now_ms >= p->gone_at + f->o.gone_grace_ms)
		return 0;
	switch (f->sp) {
	case SP_KEYS:
		return !p->sa_keys;
	case SP_SHARES:
		return p->sa_keys && !p->sa_shared;
	case SP_MASKED:
		return p->sa_shared && !p->sa_masked && !p->answered;
	case SP_UNMASK:
		return p->sa_masked && !p->sa_revealed;
	default:
		return 0;
	}
}

static void sa_dump(fed *f, const char *name, const uint8_t *p, size_t n)
{
	if (!f->o.secure.dump_dir)
		return;
	char path[1024];
	snprintf(path, sizeof path, "%s/r%" PRIu64 "-%s", f->o.secure.dump_dir, f->round_id, name);
	FILE *fp = fopen(path, "wb");
	if (!fp || fwrite(p, 1, n, fp) != n)
		LOGE(MOD, "test dump %s: cannot write", path);
	if (fp)
		fclose(fp);
}

/* Distributed DP: the sd each node's discrete Gaussian has (grid units). */
static double dpd_sigma(const fed *f)
{
	ddg_acct a = dpd_acct(&f->o, tset_numel(agg_layout(f->agg)));
	return ddg_local_sigma(&a);
}

/* Builds the round's protocol state and grid; 0 or an error with why. */
static int sa_begin(fed *f, char *why, size_t whylen)
{
	const fed_secure *so = &f->o.secure;
	const tset *lay = agg_layout(f->agg);
	size_t nt = tset_count(lay), D = 0;
	uint32_t n = (uint32_t)f->nparts, k = 0, t = 0;
	sa_reset(f);
	free(f->sa_steps);
	f->sa_steps = calloc(nt ? nt : 1, sizeof *f->sa_steps);
	f->sa_ids = calloc(n ? n : 1, sizeof *f->sa_ids);
	size_t *numel = calloc(nt ? nt : 1, sizeof *numel);
	const tensor **mt = calloc(nt ? nt : 1, sizeof *mt);
	int rc = FL_ENOMEM;
	if (!f->sa_steps || !f->sa_ids || !numel || !mt)
		goto out;
	f->sa_nt = nt;
	for (size_t i = 0; i < nt; i++) {
		numel[i] = tset_at(lay, i)->n;
		D += numel[i];
	}
	f->sa_bits = f->o.train.uplink_fmt == QT_Q8 ? 8 : f->o.train.uplink_fmt == QT_Q4 ? 4 : 2;
	f->sa_wmax = f->o.agg.weighting == AGG_W_UNIFORM ? 1
	             : so->w_max                         ? so->w_max
	                                                 : sag_levels(f->sa_bits);
	uint64_t smax = 1;
	for (size_t i = 0; i < f->nparts; i++) {
		f->sa_ids[i] = f->parts[i].n->cn;
		if (f->parts[i].n->samples > smax)
			smax = f->parts[i].n->samples;
	}
	if (smax > f->o.agg.max_weight)
		smax = f->o.agg.max_weight;
	f->sa_unit = (smax + f->sa_wmax - 1) / f->sa_wmax;
	sa_params_default(n, &k, &t);
	if (so->k)
		k = so->k;
	f->sar.round_id = f->round_id;
	f->sar.n = n;
	f->sar.k = k;
	uint32_t deg = sa_degree(&f->sar);
	if (so->threshold >= 1)
		t = (uint32_t)so->threshold;
	else if (so->threshold > 0)
		t = (uint32_t)ceil(so->threshold * deg);
	f->sar.t = t;
	f->sar.mod_bits = sa_mod_bits(f->sa_bits, n, 1); /* the weight folds into the levels */
	if (f->o.priv.mode == DP_DISTRIBUTED)            /* room for the noise of n nodes */
		f->sar.mod_bits = ddg_mod_bits(f->sa_bits, n, dpd_sigma(f));
	f->sar.dim = (uint64_t)D + 1;
	/* the graph follows from the round's public data: nodes recompute it */
	rc = sa_graph_seed(f->round_id, (const char *const *)f->sa_ids, n, f->sar.graph_seed);
	if (rc) {
		WHY("cannot derive the graph seed");
		goto out;
	}
	if ((rc = sa_round_check(&f->sar, why, whylen)) != 0)
		goto out;
	/* the grid: from the previous secure round's mean, else from C */
	if (f->o.priv.mode == DP_DISTRIBUTED) { /* one fixed step: see dpd_acct */
		rc = sag_steps_initial(numel, nt, f->o.priv.clip, so->range, f->sa_bits,
		                       f->sa_steps);
	} else if (f->sa_mean && tset_count(f->sa_mean) == nt) {
		for (size_t i = 0; i < nt; i++)
			mt[i] = tset_at(f->sa_mean, i);
		rc = sag_steps_from_mean(mt, nt, so->clip, so->range, f->sa_bits, f->sa_steps);
	} else {
		rc = sag_steps_initial(numel, nt, so->clip, so->range, f->sa_bits, f->sa_steps);
	}
	if (rc) {
		WHY("cannot derive the grid steps");
		goto out;
	}
	if ((rc = sa_server_new(&f->sar, &f->sa, why, whylen)) != 0)
		goto out;
	f->sp = SP_KEYS;
	LOGI(MOD,
	     "round %" PRIu64 ": secure, n %u, degree %u, threshold %u, %u-bit levels, "
	     "m %u bits, %" PRIu64 " elements, w_max %u",
	     f->round_id, n, deg, t, f->sa_bits, f->sar.mod_bits, f->sar.dim, f->sa_wmax);
out:
	free(numel);
	free(mt);
	return rc;
}

/* RoundStart's SecAggSetup: views into f. */
static void sa_setup_msg(fed *f, Fedlora__SecAggSetup *su)
{
	fedlora__sec_agg_setup__init(su);
	su->k = f->sar.k;
	su->t = f->sar.t;
	su->mod_bits = f->sar.mod_bits;
	su->dim = f->sar.dim;
	su->graph_seed.data = f->sar.graph_seed;
	su->graph_seed.len = 32;
	su->n_participants = f->nparts;
	su->participants = f->sa_ids;
	su->clip = (float)(f->o.priv.mode == DP_DISTRIBUTED ? f->o.priv.clip : f->o.secure.clip);
	su->dp_sigma = f->o.priv.mode == DP_DISTRIBUTED ? dpd_sigma(f) : 0;
	su->level_bits = f->sa_bits;
	su->n_steps = f->sa_nt;
	su->steps = f->sa_steps;
	su->w_max = f->sa_wmax;
	su->weight_unit = f->sa_unit;
	su->phase_ms = f->o.secure.phase_ms;
}

static void sa_send_one(fed *f, part *p, Fedlora__Envelope *env)
{
	if (p->n->peer)
		send_env(f, &p->n->peer, 1, env);
}

static void sa_abandon(fed *f, const char *detail, uint64_t now_ms)
{
	f->collect_ms = now_ms - f->round_started;
	f->state = FED_CLOSING;
	sa_reset(f);
	abandon_round(f, detail, now_ms);
}

/* The unmask phase is over: reconstruction and unmasking (seconds at
 * n = 1000) run as a JOB_SA_FINISH job on the worker, so the loop keeps
 * answering heartbeats and handshakes; sa_finish_done takes the result
 * back on the loop. Meanwhile the round is FED_CLOSING in SP_FINISH and
 * nothing on the loop touches f->sa. */
static void sa_finish_submit(fed *f, uint64_t now_ms)
{
	fed_job *job = calloc(1, sizeof *job);
	size_t dim = (size_t)f->sar.dim;
	if (job)
		job->sum = malloc((dim ? dim : 1) * sizeof *job->sum);
	if (!job || !job->sum) {
		free(job);
		sa_abandon(f, "secure aggregation failed: out of memory", now_ms);
		return;
	}
	job->f = f;
	job->type = JOB_SA_FINISH;
	job->round_id = f->round_id;
	buf_init(&job->snap, 0);
	buf_init(&job->delta, 0);
	f->collect_ms = now_ms - f->round_started;
	f->state = FED_CLOSING;
	f->sp = SP_FINISH;
	submit(f, job, now_ms);
}

static void hook(fed *f, const char *stage);

/* Worker side of JOB_SA_FINISH: touches only f->sa and the job. */
static void sa_finish_run(fed_job *job)
{
	double t0 = clk_seconds();
	hook(job->f, "unmask");
	job->rc = sa_server_finish(job->f->sa, job->sum, job->detail, sizeof job->detail);
	job->agg_secs = clk_seconds() - t0;
}

/* The unmasked sum: decoded on the grid, handed to the aggregator as the
 * round's weighted sum, and the round goes on to the usual commit. */
static void sa_finish_done(fed *f, fed_job *job, uint64_t now_ms)
{
	char why[256] = "", d[480];
	uint32_t *sum = job->sum;
	tset *ts = NULL;
	tensor **out = NULL;
	size_t dim = (size_t)f->sar.dim;
	int rc = job->rc;
	snprintf(why, sizeof why, "%s", job->detail);
	job->sum = NULL; /* freed here */
	const uint32_t *liars;
	uint32_t nl;
	sa_server_liars(f->sa, &liars, &nl);
	for (uint32_t i = 0; i < nl; i++)
		if (liars[i] < f->nparts)
			sa_drop(f, &f->parts[liars[i]], "reveal",
			        "its revealed share does not lie on the polynomial of the others");
	if (rc) {
		snprintf(d, sizeof d, "secure aggregation could not unmask the sum: %s", why);
		goto abandon;
	}
	rc = FL_ENOMEM;
	if (!(out = calloc(f->sa_nt ? f->sa_nt : 1, sizeof *out)))
		goto fail;
	if (f->o.secure.dump_dir) {
		uint8_t *le = malloc(dim * 4);
		if (le) {
			for (size_t e = 0; e < dim; e++)
				for (int b = 0; b < 4; b++)
					le[4 * e + (size_t)b] = (uint8_t)(sum[e] >> (8 * b));
			sa_dump(f, "sum.bin", le, dim * 4);
			char meta[64];
			int ml = snprintf(meta, sizeof meta, "%u %zu\n", f->sar.mod_bits, dim);
			sa_dump(f, "meta.txt", (const uint8_t *)meta, (size_t)ml);
			free(le);
		}
	}
	const uint32_t *sv;
	uint32_t nsv;
	sa_server_survivors(f->sa, &sv, &nsv);
	uint32_t tmin = dp_noise_shares(&f->o.priv, f->o.nodes_per_round);
	if (f->o.priv.mode == DP_DISTRIBUTED && nsv < tmin) {
		snprintf(d, sizeof d,
		         "distributed DP: %u masked inputs, fewer than privacy.noise_shares = %u "
		         "(the sum would hold too little noise)",
		         nsv, tmin);
		goto abandon;
	}
	if (f->o.priv.mode == DP_DISTRIBUTED
	        ? ddg_check_sum(sum, f->sar.dim, f->sar.mod_bits, f->sa_bits, nsv, dpd_sigma(f),
	                        why, sizeof why) != 0
	        : sag_check_sum(sum, f->sar.dim, f->sar.mod_bits, f->sa_bits, nsv, f->sa_wmax, why,
	                        sizeof why) != 0) {
		snprintf(d, sizeof d,
		         "secure aggregation: the unmasked sum is not a sum of %u honest inputs "
		         "(%s): a revealed share was wrong and no liar could be singled out",
		         nsv, why);
		goto abandon;
	}
	const tset *lay = agg_layout(f->agg);
	if ((rc = tset_clone(lay, &ts)) != 0)
		goto fail;
	for (size_t i = 0; i < f->sa_nt; i++)
		out[i] = tset_at(ts, i);
	uint64_t wsum = 0;
	if (sag_decode(sum, f->sar.mod_bits, f->sa_wmax, f->sa_steps, out, f->sa_nt, &wsum) != 0) {
		snprintf(d, sizeof d,
		         "secure aggregation: the unmasked weight sum is not positive");
		goto abandon;
	}
	for (uint32_t i = 0; i < nsv; i++)
		if (sv[i] < f->nparts)
			f->parts[sv[i]].accepted = 1;
	/* distributed DP divides by the fixed K, as central mode does */
	rc = agg_set_sum(
	    f->agg, ts,
	    f->o.priv.mode == DP_DISTRIBUTED ? (double)f->o.nodes_per_round : (double)wsum, nsv);
	if (rc) {
		snprintf(d, sizeof d, "secure aggregation: the sum cannot be aggregated (%s)",
		         fl_strerror(rc));
		goto abandon;
	}
	/* the next round's grid: this round's mean update (public: an aggregate) */
	for (size_t i = 0; i < f->sa_nt; i++)
		for (size_t k = 0; k < out[i]->n; k++)
			out[i]->data[k] = (float)((double)out[i]->data[k] / (double)wsum);
	tset_free(f->sa_mean);
	f->sa_mean = ts;
	ts = NULL;
	LOGI(MOD,
	     "round %" PRIu64 ": secure sum of %u inputs unmasked (weight sum %" PRIu64
	     ", %.1f ms on the worker)",
	     f->round_id, nsv, wsum, job->agg_secs * 1e3);
	free(sum);
	free(out);
	sa_reset(f);
	finish_round(f, now_ms);
	return;
fail:
	snprintf(d, sizeof d, "secure aggregation failed: %s", fl_strerror(rc));
abandon:
	free(sum);
	free(out);
	tset_free(ts);
	sa_abandon(f, d, now_ms);
}

/* Phase transitions: a phase ends when nobody it waits for is left
 * (answered, faulty or gone past the grace) or at its deadline. */
static void sa_advance(fed *f, uint64_t now_ms)
{
	for (int guard = 0; guard < 5 && f->sa && f->state == FED_COLLECTING; guard++) {
		int waiting = 0;
		for (size_t i = 0; i < f->nparts; i++)
			waiting += sa_waiting(f, &f->parts[i], now_ms);
		uint64_t dl = f->sp == SP_MASKED ? f->deadline : f->sp_deadline;
		if (waiting && now_ms < dl && !f->stopping)
			return;
		if (waiting)
			LOGI(MOD,
			     "round %" PRIu64 ": %s phase closed with %d participant%s missing",
			     f->round_id, sp_names[f->sp], waiting, waiting == 1 ? "" : "s");
		if (f->stopping) {
			sa_abandon(f, "coordinator shutting down", now_ms);
			return;
		}
		Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
		size_t sent = 0;
		if (f->sp == SP_KEYS) {
			/* roster: each node gets its neighbours' advertised keys */
			for (size_t i = 0; i < f->nparts; i++) {
				part *p = &f->parts[i];
				const sa_keys *ks;
				uint32_t nk;
				if (!p->sa_keys || p->sa_out ||
				    sa_server_roster(f->sa, (uint32_t)i, &ks, &nk) != 0)
					continue;
				Fedlora__SecAggKeys *mk = calloc(nk ? nk : 1, sizeof *mk);
				Fedlora__SecAggKeys **pk = calloc(nk ? nk : 1, sizeof *pk);
				if (!mk || !pk) {
					free(mk);
					free(pk);
					continue;
				}
				for (uint32_t j = 0; j < nk; j++) {
					saw_keys_to_proto(&ks[j], f->round_id, &mk[j]);
					pk[j] = &mk[j];
				}
				Fedlora__SecAggRoster ro = FEDLORA__SEC_AGG_ROSTER__INIT;
				ro.round_id = f->round_id;
				ro.n_keys = nk;
				ro.keys = pk;
				env.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_ROSTER;
				env.secagg_roster = &ro;
				sa_send_one(f, p, &env);
				sent++;
				free(mk);
				free(pk);
			}
			f->sp = SP_SHARES;
			f->sp_deadline = now_ms + f->o.secure.phase_ms;
		} else if (f->sp == SP_SHARES) {
			/* relay: each node gets the shares addressed to it */
			for (size_t i = 0; i < f->nparts; i++) {
				part *p = &f->parts[i];
				const sa_share *sh;
				uint32_t ns;
				if (!p->sa_shared || p->sa_out ||
				    sa_server_route(f->sa, (uint32_t)i, &sh, &ns) != 0)
					continue;
				Fedlora__SecAggShare *ms, **ps;
				if (saw_shares_to_proto(sh, ns, &ms, &ps) != 0)
					continue;
				Fedlora__SecAggShares m = FEDLORA__SEC_AGG_SHARES__INIT;
				m.round_id = f->round_id;
				m.n_shares = ns;
				m.shares = ps;
				env.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_SHARES;
				env.secagg_shares = &m;
				sa_send_one(f, p, &env);
				sent++;
				free(ms);
				free(ps);
			}
			f->sp = SP_MASKED;
		} else if (f->sp == SP_MASKED) {
			for (size_t i = 0; i < f->nparts; i++) {
				part *p = &f->parts[i];
				const uint32_t *sv, *dr;
				uint32_t nsv, ndr;
				if (!p->sa_masked || p->sa_out ||
				    sa_server_unmask_request(f->sa, (uint32_t)i, &sv, &nsv, &dr,
				                             &ndr) != 0)
					continue;
				Fedlora__SecAggUnmask um = FEDLORA__SEC_AGG_UNMASK__INIT;
				um.round_id = f->round_id;
				um.n_survivors = nsv;
				um.survivors = (uint32_t *)sv;
				um.n_dropped = ndr;
				um.dropped = (uint32_t *)dr;
				env.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_UNMASK;
				env.secagg_unmask = &um;
				sa_send_one(f, p, &env);
				sent++;
			}
			f->sp = SP_UNMASK;
			f->sp_deadline = now_ms + f->o.secure.phase_ms;
		} else if (f->sp == SP_UNMASK) {
			sa_finish_submit(f, now_ms);
			return;
		}
		if (!sent) {
			char d[160];
			snprintf(d, sizeof d,
			         "secure aggregation: no participant is left after the %s phase",
			         sp_names[f->sp - 1]);
			sa_abandon(f, d, now_ms);
			return;
		}
	}
}

/* The participant for a secure message of round rid, or NULL (answered
 * with an Error). */
static part *sa_part(fed *f, sess *s, uint64_t rid, int phase, const char *what)
{
	char d[200];
	part *p = part_of(f, s->node);
	if (!f->sa || rid != f->round_id || !p || p->sa_out) {
		snprintf(d, sizeof d, "%s for round %" PRIu64 ": no secure round of yours is open",
		         what, rid);
		send_error(f, s->peer, FEDLORA__ERROR__CODE__CODE_UNEXPECTED, d);
		return NULL;
	}
	if (f->sp == SP_FINISH) { /* late, not a fault: the unmask phase closed */
		snprintf(d, sizeof d, "%s for round %" PRIu64 ": the unmask phase is closed", what,
		         rid);
		send_error(f, s->peer, FEDLORA__ERROR__CODE__CODE_UNEXPECTED, d);
		return NULL;
	}
	if (f->sp != phase) {
		snprintf(d, sizeof d, "%s in the %s phase of round %" PRIu64, what, sp_names[f->sp],
		         rid);
		sa_drop(f, p, what, d);
		send_error(f, s->peer, FEDLORA__ERROR__CODE__CODE_UNEXPECTED, d);
		return NULL;
	}
	return p;
}

static void handle_sa_keys(fed *f, sess *s, const Fedlora__SecAggKeys *k, uint64_t now_ms)
{
	part *p = sa_part(f, s, k->round_id, SP_KEYS, "SecAggKeys");
	if (!p)
		return;
	char why[200] = "";
	uint32_t idx = (uint32_t)(p - f->parts);
	int rc = FL_EPROTO;
	if (p->sa_keys)
		snprintf(why, sizeof why, "keys sent twice");
	else if (k->index != idx)
		snprintf(why, sizeof why, "index %u is not its index %u", k->index, idx);
	else {
		sa_keys sk;
		if (saw_keys_from_proto(k, p->n->cn, &sk) != 0)
			snprintf(why, sizeof why, "public keys of %zu and %zu bytes, not %d",
			         k->enc_pk.len, k->mask_pk.len, SA_KEY_LEN);
		else
			rc = sa_server_add_keys(f->sa, &sk, why, sizeof why);
	}
	if (rc) {
		sa_drop(f, p, "keys", why);
	} else {
		p->sa_keys = 1;
	}
	sa_advance(f, now_ms);
}

static void handle_sa_shares(fed *f, sess *s, const Fedlora__SecAggShares *m, uint64_t now_ms)
{
	part *p = sa_part(f, s, m->round_id, SP_SHARES, "SecAggShares");
	if (!p)
		return;
	char why[200] = "";
	uint32_t idx = (uint32_t)(p - f->parts);
	int rc = FL_EPROTO;
	sa_share *sh = NULL;
	if (!p->sa_keys || p->sa_shared) {
		snprintf(why, sizeof why, "%s",
		         p->sa_shared ? "shares sent twice" : "no keys sent");
	} else if (m->n_shares > f->sar.n) {
		snprintf(why, sizeof why, "%zu shares for %u participants", m->n_shares, f->sar.n);
	} else if (saw_shares_from_proto(m->shares, m->n_shares, &sh) != 0) {
		snprintf(why, sizeof why, "out of memory");
	} else {
		rc = sa_server_add_shares(f->sa, idx, sh, (uint32_t)m->n_shares, why, sizeof why);
	}
	free(sh);
	if (rc)
		sa_drop(f, p, "shares", why);
	else
		p->sa_shared = 1;
	sa_advance(f, now_ms);
}

static void handle_sa_reveal(fed *f, sess *s, const Fedlora__SecAggReveal *m, uint64_t now_ms)
{
	part *p = sa_part(f, s, m->round_id, SP_UNMASK, "SecAggReveal");
	if (!p)
		return;
	char why[200] = "";
	uint32_t idx = (uint32_t)(p - f->parts);
	int rc = FL_EPROTO;
	sa_reveal *rv = NULL;
	if (!p->sa_masked || p->sa_revealed) {
		snprintf(why, sizeof why, "%s",
		         p->sa_revealed ? "reveal sent twice" : "not a survivor");
	} else if (m->n_shares > f->sar.n) {
		snprintf(why, sizeof why, "%zu reveals for %u participants", m->n_shares, f->sar.n);
	} else if (!(rv = calloc(m->n_shares ? m->n_shares : 1, sizeof *rv))) {
		snprintf(why, sizeof why, "out of memory");
	} else {
		rc = 0;
		for (size_t i = 0; i < m->n_shares && !rc; i++) {
			const Fedlora__SecAggRevealShare *r = m->shares[i];
			if (r->share.len != SA_SHARE_LEN) {
				snprintf(why, sizeof why, "a revealed share of %zu bytes, not %d",
				         r->share.len, SA_SHARE_LEN);
				rc = FL_EPROTO;
				break;
			}
			rv[i].from = idx;
			rv[i].owner = r->owner;
			rv[i].is_mask_key = r->mask_key ? 1 : 0;
			memcpy(rv[i].share, r->share.data, SA_SHARE_LEN);
		}
		if (!rc)
			rc = sa_server_add_reveals(f->sa, idx, rv, (uint32_t)m->n_shares, why,
			                           sizeof why);
	}
	free(rv);
	if (rc)
		sa_drop(f, p, "reveal", why);
	else
		p->sa_revealed = 1;
	sa_advance(f, now_ms);
}

/* A secure round's Update: the masked vector, added to the running masked
 * sum at once (the server library keeps no individual vector). */
static void handle_sa_update(fed *f, sess *s, part *p, const Fedlora__Update *u, size_t wire_len,
                             uint64_t now_ms)
{
	char why[200] = "";
	uint32_t idx = (uint32_t)(p - f->parts);
	int rc = FL_EPROTO;
	p->bytes_in = wire_len;
	if (f->sp != SP_MASKED || !p->sa_shared || p->sa_out)
		snprintf(why, sizeof why, "masked input in the %s phase%s", sp_names[f->sp],
		         p->sa_shared ? "" : " without shares");
	else if (u->delta)
		snprintf(why, sizeof why, "a plain delta in a secure round");
	else
		rc = sa_server_add_masked(f->sa, idx, u->masked.data, u->masked.len, why,
		                          sizeof why);
	p->answered = 1;
	f->answered++;
	p->samples = u->sample_count;
	s->node->st = N_IDLE;
	if (rc) {
		sa_drop(f, p, "masked input", why);
		p->reason = FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED;
		send_ack(f, s->peer, u->round_id, p->reason, why);
	} else {
		char nm[32];
		snprintf(nm, sizeof nm, "masked-%u.bin", idx);
		sa_dump(f, nm, u->masked.data, u->masked.len);
		p->sa_masked = 1;
		p->reason = FEDLORA__UPDATE_ACK__REASON__REASON_NONE;
		LOGI(MOD, "round %" PRIu64 ": masked input from %s received (%zu bytes)",
		     f->round_id, p->n->cn, u->masked.len);
		send_ack(f, s->peer, u->round_id, p->reason, "");
	}
	sa_advance(f, now_ms);
}

/* ------------------------------------------------------------------ */
/* updates                                                             */

static void handle_update(fed *f, sess *s, wire_msg *m, size_t wire_len, uint64_t now_ms)
{
	const Fedlora__Update *u = wire_env(m)->update;
	fnode *n = s->node;
	uint64_t peer = s->peer;
	char d[200];
	f->bytes_in += wire_len;
	n->last_seen = now_ms;
	int open = f->state == FED_COLLECTING && now_ms < f->deadline;
	if (u->round_id != f->round_id || f->round_id == 0) {
		snprintf(d, sizeof d, "round %" PRIu64 " is not the current round %" PRIu64,
		         u->round_id, f->round_id);
		send_ack(f, peer, u->round_id, FEDLORA__UPDATE_ACK__REASON__REASON_WRONG_ROUND, d);
		goto drop;
	}
	if (!open) {
		snprintf(d, sizeof d, "round %" PRIu64 " is closed", u->round_id);
		send_ack(f, peer, u->round_id, FEDLORA__UPDATE_ACK__REASON__REASON_LATE, d);
		goto drop;
	}
	part *p = part_of(f, n);
	if (!p) {
		snprintf(d, sizeof d, "node %s is not a participant of round %" PRIu64, n->cn,
		         u->round_id);
		send_ack(f, peer, u->round_id, FEDLORA__UPDATE_ACK__REASON__REASON_NOT_SAMPLED, d);
		goto drop;
	}
	if (p->answered || p->pending) {
		snprintf(d, sizeof d, "an update from %s for round %" PRIu64 " was already %s",
		         n->cn, u->round_id,
		         p->pending ? "received" : (p->accepted ? "accepted" : "refused"));
		send_ack(f, peer, u->round_id, FEDLORA__UPDATE_ACK__REASON__REASON_DUPLICATE, d);
		goto drop;
	}
	if (f->sa) {
		handle_sa_update(f, s, p, u, wire_len, now_ms);
		goto drop;
	}
	p->bytes_in = wire_len;
	if (u->base_version != f->round_version) {
		snprintf(d, sizeof d,
		         "trained from version %" PRIu64 ", round %" PRIu64
		         " is on version %" PRIu64,
		         u->base_version, u->round_id, f->round_version);
		p->answered = 1;
		p->reason = FEDLORA__UPDATE_ACK__REASON__REASON_STALE;
		f->answered++;
		send_ack(f, peer, u->round_id, p->reason, d);
		n->st = N_IDLE;
		maybe_close_round(f, now_ms);
		goto drop;
	}
	if (!u->delta || u->delta->from_version != u->base_version) {
		snprintf(d, sizeof d, "%s",
		         !u->delta ? "update carries no delta"
		                   : "delta.from_version differs from base_version");
		p->answered = 1;
		p->reason = FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED;
		f->answered++;
		send_ack(f, peer, u->round_id, p->reason, d);
		n->st = N_IDLE;
		maybe_close_round(f, now_ms);
		goto drop;
	}
	/* metrics the node reports with its update */
	for (size_t i = 0; i < u->n_metrics; i++) {
		const Fedlora__Metric *mt = u->metrics[i];
		if (!mt || !mt->name || !isfinite(mt->value))
			continue;
		if (strcmp(mt->name, "train_loss") == 0) {
			p->train_loss = mt->value;
			p->has_train_loss = 1;
		} else if (strcmp(mt->name, "eval_loss") == 0) {
			p->eval_loss = mt->value;
			p->has_eval_loss = 1;
			n->eval_loss = mt->value;
			n->has_eval_loss = 1;
		}
	}
	fed_job *job = calloc(1, sizeof *job);
	if (!job) {
		send_ack(f, peer, u->round_id, FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED,
		         "coordinator out of memory");
		goto drop;
	}
	job->f = f;
	job->type = JOB_UPDATE;
	job->round_id = u->round_id;
	job->part_idx = n->part_idx;
	job->msg = m;
	job->samples = u->sample_count;
	job->rank = n->rk.rank;
	p->pending = 1;
	p->samples = u->sample_count;
	n->st = N_UPLOADING;
	submit(f, job, now_ms);
	return;
drop:
	wire_free(m);
}

static void handle_snapshot_request(fed *f, sess *s, const Fedlora__SnapshotRequest *r,
                                    uint64_t now_ms)
{
	fnode *n = s->node;
	LOGI(MOD, "node %s asks for a snapshot (holds v%" PRIu64 ")", n->cn, r->have_version);
	n->held_known = 0;
	if (f->o.async.on) {
		fa_resend(f, n, now_ms);
		return;
	}
	part *p = part_of(f, n);
	if (p && f->state == FED_COLLECTING && !p->answered && !p->pending) {
		fnode *one = n;
		send_round_start(f, &one, 1, now_ms);
	}
}

void fed_on_message(fed *f, uint64_t peer, wire_msg *m, size_t wire_len, uint64_t now_ms)
{
	sess *s = sess_get(f, peer);
	if (!s) {
		wire_free(m);
		return;
	}
	met_add(f, "fedlora_bytes_total", "direction=\"in\"", (double)wire_len);
	const Fedlora__Envelope *env = wire_env(m);
	if (env->body_case == FEDLORA__ENVELOPE__BODY_JOIN) {
		handle_join(f, s, env->join, now_ms);
		wire_free(m);
		return;
	}
	if (!s->node) {
		char d[96];
		snprintf(d, sizeof d, "%s before join", wire_body_name(env));
		send_error(f, peer, FEDLORA__ERROR__CODE__CODE_UNEXPECTED, d);
		close_peer(f, peer, d);
		wire_free(m);
		return;
	}
	fnode *n = s->node;
	n->last_seen = now_ms;
	switch (env->body_case) {
	case FEDLORA__ENVELOPE__BODY_UPDATE:
		if (f->o.async.on)
			fa_handle_update(f, s, m, wire_len, now_ms);
		else
			handle_update(f, s, m, wire_len, now_ms);
		return; /* handle_update owns m */
	case FEDLORA__ENVELOPE__BODY_HEARTBEAT: {
		const Fedlora__Heartbeat *h = env->heartbeat;
		if (h->state == FEDLORA__HEARTBEAT__STATE__STATE_TRAINING)
			n->st = N_TRAINING;
		else if (h->state == FEDLORA__HEARTBEAT__STATE__STATE_UPLOADING)
			n->st = N_UPLOADING;
		else if (h->state == FEDLORA__HEARTBEAT__STATE__STATE_IDLE)
			n->st = N_IDLE;
		for (size_t i = 0; i < h->n_metrics; i++)
			if (h->metrics[i] && h->metrics[i]->name &&
			    strcmp(h->metrics[i]->name, "eval_loss") == 0 &&
			    isfinite(h->metrics[i]->value)) {
				n->eval_loss = h->metrics[i]->value;
				n->has_eval_loss = 1;
			}
		break;
	}
	case FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST:
		handle_snapshot_request(f, s, env->snapshot_request, now_ms);
		break;
	case FEDLORA__ENVELOPE__BODY_DOWN_FINAL_EVAL:
		handle_final_eval(f, s, env->down_final_eval);
		break;
	case FEDLORA__ENVELOPE__BODY_SECAGG_KEYS:
		handle_sa_keys(f, s, env->secagg_keys, now_ms);
		break;
	case FEDLORA__ENVELOPE__BODY_SECAGG_SHARES:
		handle_sa_shares(f, s, env->secagg_shares, now_ms);
		break;
	case FEDLORA__ENVELOPE__BODY_SECAGG_REVEAL:
		handle_sa_reveal(f, s, env->secagg_reveal, now_ms);
		break;
	case FEDLORA__ENVELOPE__BODY_BYE:
		LOGI(MOD, "node %s says bye: %s", n->cn, env->bye->reason ? env->bye->reason : "");
		close_peer(f, peer, "node said bye");
		break;
	case FEDLORA__ENVELOPE__BODY_ERROR:
		LOGW(MOD, "node %s reports error %d: %s", n->cn, (int)env->error->code,
		     env->error->detail ? env->error->detail : "");
		break;
	default: {
		char d[96];
		snprintf(d, sizeof d, "unexpected %s from a node", wire_body_name(env));
		send_error(f, peer, FEDLORA__ERROR__CODE__CODE_UNEXPECTED, d);
		break;
	}
	}
	wire_free(m);
}

void fed_on_bytes(fed *f, uint64_t peer, const uint8_t *data, size_t len, uint64_t now_ms)
{
	wire_msg *m = NULL;
	int rc = wire_decode(data, len, f->o.max_msg, 0, &m);
	if (rc) {
		const char *d = rc == FL_EUNSUPPORTED ? "unsupported protocol version"
		                : rc == FL_ETOOBIG    ? "message too large"
		                                      : "message is not a valid Envelope";
		LOGW(MOD, "session %" PRIu64 ": %s (%zu bytes)", peer, d, len);
		send_error(f, peer,
		           rc == FL_EUNSUPPORTED ? FEDLORA__ERROR__CODE__CODE_PROTOCOL_VERSION
		                                 : FEDLORA__ERROR__CODE__CODE_MALFORMED,
		           d);
		close_peer(f, peer, d);
		return;
	}
	fed_on_message(f, peer, m, len, now_ms);
}

/* ------------------------------------------------------------------ */
/* jobs                                                                */

static void hook(fed *f, const char *stage)
{
	if (f->o.commit_hook)
		f->o.commit_hook(stage, f->o.commit_hook_ud);
}

static void run_commit(fed_job *job)
{
	fed *f = job->f;
	double t0 = clk_seconds();
	tset *ng = NULL;
	int rc = agg_finish(f->agg, f->step);
	if (rc) {
		snprintf(job->detail, sizeof job->detail, "aggregation failed: %s",
		         rc == FL_ENUMERIC ? "result not finite" : fl_strerror(rc));
		goto out;
	}
	hook(f, "aggregated");
	/* exact versions: quantize the step with the downlink format and apply
	 * the dequantized values, as every node will */
	quant_params qp = {.fmt = f->o.down_fmt, .block = f->o.down_block, .round = QUANT_NEAREST};
	for (size_t i = 0; i < f->ndq && !rc && !f->down; i++)
		rc = quant_encode_tensor(&qp, tset_at(f->step, i), &f->dq[i]);
	if (f->down) /* grid mode: the new version itself is on the grid */
		rc = down_next(f->down, f->global, f->step, &ng);
	if (rc) {
		snprintf(job->detail, sizeof job->detail,
		         "cannot quantize the step with the downlink format (%s)", fl_strerror(rc));
		goto out;
	}
	if (!f->down)
		rc = tset_clone(f->global, &ng);
	if (!rc && !f->down)
		rc = quant_apply_set(ng, f->dq, f->ndq);
	if (rc) {
		snprintf(job->detail, sizeof job->detail, "cannot apply the step (%s)",
		         fl_strerror(rc));
		goto out;
	}
	const tensor *bad;
	if (!tset_all_finite(ng, &bad)) {
		snprintf(job->detail, sizeof job->detail, "new global is not finite (tensor %.64s)",
		         bad ? bad->name : "?");
		rc = FL_ENUMERIC;
		goto out;
	}
	rc = tset_fingerprint(ng, job->sha);
	size_t ngrid = 0;
	const qtensor *grid = f->down ? down_grid(f->down, &ngrid) : NULL;
	if (!rc)
		rc = build_snapshot(ng, grid, job->version, job->sha, &job->snap);
	if (!rc && !f->down) /* grid mode: the snapshot is as small as a delta */
		rc = build_delta(f->dq, f->ndq, job->parent, job->version, job->sha, &job->delta);
	if (rc) {
		snprintf(job->detail, sizeof job->detail, "cannot encode the new version (%s)",
		         fl_strerror(rc));
		goto out;
	}
	double t1 = clk_seconds();
	job->agg_secs = t1 - t0;
	if (f->st) {
		tset *opt = NULL;
		rc = agg_state_export(f->agg, 1, &opt);
		if (!rc && f->down)
			rc = down_state_export(f->down, 1, opt);
		hook(f, "optimizer");
		if (!rc) {
			store_info in;
			fill_info(f, &in, job->version, job->round_id, job->parent, job->sha);
			errno = 0;
			rc = store_commit(f->st, ng, &in, opt, f->o.keep_versions);
			if (rc == FL_EIO) /* a write failed: errno is that call's */
				job->store_errno = errno ? errno : EIO;
		}
		tset_free(opt);
		if (rc) {
			snprintf(job->detail, sizeof job->detail,
			         "cannot write version %" PRIu64 " to the state directory (%s)",
			         job->version, fl_strerror(rc));
			goto out;
		}
		hook(f, "written");
	}
	job->commit_secs = clk_seconds() - t1;
	job->new_global = ng;
	ng = NULL;
out:
	tset_free(ng);
	job->rc = rc;
}

void fed_job_run(fed_job *job)
{
	if (job->type == JOB_UPDATE) {
		double t0 = clk_seconds();
		const Fedlora__Update *u = wire_env(job->msg)->update;
		if (job->fa_node)
			job->rc = agg_add_payload_scaled(job->f->agg, u->delta, job->samples,
			                                 job->fa_factor, &job->res);
		else
			job->rc = agg_add_payload_rank(job->f->agg, u->delta, job->samples,
			                               job->rank, &job->res);
		job->agg_secs = clk_seconds() - t0;
		/* the bulk is no longer needed: free it on the worker */
		wire_free(job->msg);
		job->msg = NULL;
	} else if (job->type == JOB_TIER) {
		double t0 = clk_seconds();
		job->rc = agg_finish(job->f->agg, job->f->step);
		job->agg_secs = clk_seconds() - t0;
	} else if (job->type == JOB_SA_FINISH) {
		sa_finish_run(job);
	} else {
		run_commit(job);
	}
}

static int verdict_reason(enum agg_verdict v)
{
	switch (v) {
	case AGG_ACCEPTED:
		return FEDLORA__UPDATE_ACK__REASON__REASON_NONE;
	case AGG_NON_FINITE:
		return FEDLORA__UPDATE_ACK__REASON__REASON_NON_FINITE;
	case AGG_NORM:
		return FEDLORA__UPDATE_ACK__REASON__REASON_NORM;
	case AGG_MALFORMED:
	case AGG_FULL:
		break;
	}
	return FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED;
}

/* The UpdateAck reason of a finished update job, and its detail. */
static int job_reason(const fed_job *job, const fnode *n, const char **detail)
{
	if (job->rc) {
		*detail = "coordinator could not process the update";
		LOGE(MOD, "update from %s: %s", n->cn, fl_strerror(job->rc));
		return FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED;
	}
	*detail = job->res.verdict == AGG_ACCEPTED ? "" : job->res.why;
	return verdict_reason(job->res.verdict);
}

static void done_update(fed *f, fed_job *job, uint64_t now_ms)
{
	part *p = job->part_idx < f->nparts ? &f->parts[job->part_idx] : NULL;
	if (!p || job->round_id != f->round_id) { /* cannot happen: rounds wait for jobs */
		LOGE(MOD, "update job for a round that is gone");
		return;
	}
	fnode *n = p->n;
	p->pending = 0;
	p->answered = 1;
	f->answered++;
	const char *detail;
	int reason = job_reason(job, n, &detail);
	p->reason = reason;
	p->accepted = reason == FEDLORA__UPDATE_ACK__REASON__REASON_NONE;
	p->norm = job->res.norm;
	p->scale = job->res.scale;
	if (p->accepted) {
		LOGI(MOD,
		     "round %" PRIu64 ": update from %s accepted (norm %.4g%s, %" PRIu64
		     " samples, %.1f ms)",
		     f->round_id, n->cn, p->norm, p->scale < 1 ? ", clipped" : "", p->samples,
		     job->agg_secs * 1e3);
		if (p->scale < 1)
			met_add(f, "fedlora_updates_clipped_total", NULL, 1);
	} else {
		LOGW(MOD, "round %" PRIu64 ": update from %s refused (%s): %s", f->round_id, n->cn,
		     ack_reason_name(reason), detail);
	}
	met_observe(f, "fedlora_update_seconds", job->agg_secs);
	if (n->st == N_UPLOADING)
		n->st = N_IDLE;
	send_ack(f, n->peer, job->round_id, reason, detail);
	if (f->state == FED_COLLECTING)
		maybe_close_round(f, now_ms);
	else
		finish_round(f, now_ms);
}

static void tier_done(fed *f, fed_job *job, uint64_t now_ms);

static void done_commit(fed *f, fed_job *job, uint64_t now_ms)
{
	if (job->rc || !job->new_global) {
		if (job->store_errno) {
			char w[64];
			snprintf(w, sizeof w, "writing version %" PRIu64, job->version);
			write_failed(f, w, job->store_errno);
		}
		if (f->o.async.on) {
			fa_commit_failed(f, job, now_ms);
			return;
		}
		f->state = FED_CLOSING; /* for abandon_round's bookkeeping */
		abandon_round(f, job->detail[0] ? job->detail : "commit failed", now_ms);
		return;
	}
	agg_commit_state(f->agg);
	if (f->down)
		down_commit(f->down);
	if (!f->wf_since && !f->wf_pending)
		f->wf_level = 0;
	tset_free(f->global);
	f->global = job->new_global;
	job->new_global = NULL;
	f->parent = job->parent;
	memcpy(f->parent_sha, f->sha, 32);
	f->has_parent = 1;
	f->version = job->version;
	memcpy(f->sha, job->sha, 32);
	buf t = f->snap;
	f->snap = job->snap;
	job->snap = t;
	t = f->delta;
	f->delta = job->delta;
	job->delta = t;
	Fedlora__AdapterPayload p = FEDLORA__ADAPTER_PAYLOAD__INIT;
	p.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	p.from_version = f->version;
	p.to_version = f->version;
	p.to_sha256.data = f->sha;
	p.to_sha256.len = 32;
	pack_payload(&p, &f->empty);
	if (f->o.async.on) {
		fa_committed(f, job, now_ms);
		return;
	}
	f->committed++;
	double tl, el;
	int ht, he;
	round_losses(f, &tl, &el, &ht, &he);
	char h[65];
	hex_encode(f->sha, 32, h);
	LOGI(MOD,
	     "round %" PRIu64 " committed version %" PRIu64 " (%.16s...) from %zu updates; "
	     "aggregate %.1f ms, write %.1f ms%s",
	     f->round_id, f->version, h, agg_count(f->agg), job->agg_secs * 1e3,
	     job->commit_secs * 1e3, he ? "" : "");
	met_add(f, "fedlora_rounds_total", "outcome=\"committed\"", 1);
	met_set(f, "fedlora_global_version", NULL, (double)f->version);
	met_observe(f, "fedlora_aggregation_seconds", job->agg_secs);
	met_observe(f, "fedlora_commit_seconds", job->commit_secs);
	met_observe(f, "fedlora_round_seconds", (double)(now_ms - f->round_started) / 1e3);
	if (he)
		met_set(f, "fedlora_global_loss", NULL, el);
	if (ht)
		met_set(f, "fedlora_train_loss", NULL, tl);
	if (f->dp_on) /* nodes learn the noised version only, no count or losses */
		round_end_msg(f, 1, "", 0, 0, 0, 0, 0);
	else
		round_end_msg(f, 1, "", agg_count(f->agg), tl, el, ht, he);
	round_journal(f, 1, NULL, now_ms, job, tl, el, ht, he);
	after_round(f, now_ms);
}

void fed_job_done(fed *f, fed_job *job, uint64_t now_ms)
{
	if (f->jobs)
		f->jobs--;
	if (job->type == JOB_UPDATE && job->fa_node)
		fa_done_update(f, job, now_ms);
	else if (job->type == JOB_UPDATE)
		done_update(f, job, now_ms);
	else if (job->type == JOB_TIER)
		tier_done(f, job, now_ms);
	else if (job->type == JOB_SA_FINISH)
		sa_finish_done(f, job, now_ms);
	else
		done_commit(f, job, now_ms);
	free(job->sum);
	wire_free(job->msg);
	tset_free(job->new_global);
	buf_fini(&job->snap);
	buf_fini(&job->delta);
	free(job);
}

/* ------------------------------------------------------------------ */
/* timers, shutdown, introspection                                     */

/* Back-off delay for level l: 1 s doubling to FED_BACKOFF_MAX_MS. */
static uint64_t backoff_ms(unsigned l)
{
	return l >= 6 ? FED_BACKOFF_MAX_MS : (uint64_t)1000 << l;
}

/* One log line per back-off step: what failed, why, the next retry. */
static void backoff_step(fed *f, uint64_t now_ms, const char *what, int err)
{
	uint64_t d = backoff_ms(f->wf_level);
	if (f->wf_level < 63)
		f->wf_level++;
	f->wf_retry_at = now_ms + d;
	time_t at = (time_t)((wall(f) + d) / 1000);
	struct tm tm;
	char ts[32] = "?";
	if (gmtime_r(&at, &tm))
		strftime(ts, sizeof ts, "%H:%M:%S UTC", &tm);
	const char *dir = f->st ? store_dir(f->st) : "(none)";
	size_t bl = f->st ? store_journal_backlog(f->st) : 0;
	if (f->wf_tries == 0)
		LOGE(MOD,
		     "state directory %s cannot be written: %s failed: %s; no round starts "
		     "until it can (%zu journal record(s) held in memory); retry in %" PRIu64
		     " s, at %s",
		     dir, what, strerror(err), bl, d / 1000, ts);
	else
		LOGE(MOD,
		     "state directory %s still cannot be written (retry %u): %s failed: %s; "
		     "%zu journal record(s) held; next retry in %" PRIu64 " s, at %s",
		     dir, f->wf_tries, what, strerror(err), bl, d / 1000, ts);
	met_add(f, "fedlora_state_write_failures_total", NULL, 1);
	met_set(f, "fedlora_state_writable", NULL, 0);
	met_set(f, "fedlora_journal_backlog", NULL, (double)bl);
}

/* Bytes a commit needs: the version file and up to two optimiser moments,
 * plus headers. */
static uint64_t commit_need(const fed *f)
{
	return (uint64_t)tset_numel(f->global) * 4 * 3 + (1u << 20);
}

static void backoff_tick(fed *f, uint64_t now_ms)
{
	if (f->wf_pending && !f->wf_since) {
		f->wf_pending = 0;
		f->wf_since = now_ms ? now_ms : 1;
		f->wf_since_wall = wall(f);
		f->wf_tries = 0;
		f->ready = 0;
		backoff_step(f, now_ms, f->wf_what, f->wf_errno);
		return;
	}
	/* retries touch the store: only between rounds (no job in flight) */
	if (!f->wf_since || now_ms < f->wf_retry_at || f->state != FED_IDLE || f->jobs)
		return;
	int err = 0;
	const char *what = "writing the journal backlog";
	int rc = f->st ? store_journal_flush(f->st) : 0;
	if (rc) {
		err = store_journal_errno(f->st);
	} else if (f->st) {
		what = "reserving space for the next version";
		rc = store_probe(f->st, commit_need(f), &err);
	}
	if (rc) {
		f->wf_tries++;
		backoff_step(f, now_ms, what, err);
		return;
	}
	uint64_t out_ms = wall(f) - f->wf_since_wall;
	LOGI(MOD,
	     "state directory %s can be written again after %.1f s and %u failed retr%s; "
	     "journal backlog written; rounds resume",
	     f->st ? store_dir(f->st) : "(none)", (double)out_ms / 1e3, f->wf_tries,
	     f->wf_tries == 1 ? "y" : "ies");
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "store_recovered");
	cJSON_AddStringToObject(j, "what", f->wf_what);
	cJSON_AddStringToObject(j, "error", strerror(f->wf_errno));
	cJSON_AddNumberToObject(j, "outage_ms", (double)out_ms);
	cJSON_AddNumberToObject(j, "retries", (double)f->wf_tries);
	f->wf_since = 0;
	f->wf_tries = 0;
	journal_rec(f, j); /* may fail again: then wf_pending starts a new outage */
	met_set(f, "fedlora_state_writable", NULL, 1);
	met_set(f, "fedlora_journal_backlog", NULL,
	        f->st ? (double)store_journal_backlog(f->st) : 0);
	update_ready(f, now_ms);
}

void fed_tick(fed *f, uint64_t now_ms)
{
	backoff_tick(f, now_ms);
	if (f->final_wait)
		final_tick(f, now_ms);
	if (f->o.async.on) {
		fa_tick(f, now_ms);
		return;
	}
	switch (f->state) {
	case FED_IDLE:
		update_ready(f, now_ms);
		if (f->ready && now_ms >= f->ready_at)
			start_round(f, now_ms);
		break;
	case FED_COLLECTING:
		maybe_close_round(f, now_ms);
		break;
	default:
		break;
	}
}

int64_t fed_timeout(const fed *f, uint64_t now_ms)
{
	uint64_t due = UINT64_MAX;
	if (f->wf_pending)
		return 0;
	if (f->o.async.on)
		return fa_timeout(f, now_ms);
	if (f->wf_since && f->state == FED_IDLE && !f->jobs)
		due = f->wf_retry_at;
	if (f->state == FED_IDLE && f->ready)
		due = f->ready_at;
	if (f->state == FED_COLLECTING) {
		due = f->deadline;
		if (f->sa && f->sp != SP_MASKED && f->sp_deadline < due)
			due = f->sp_deadline;
		for (size_t i = 0; i < f->nparts; i++) {
			const part *p = &f->parts[i];
			if (p->gone_at && !p->answered && !p->dropped &&
			    p->gone_at + f->o.gone_grace_ms < due)
				due = p->gone_at + f->o.gone_grace_ms;
		}
	}
	if (f->final_wait)
		due = f->final_deadline ? f->final_deadline : now_ms;
	if (due == UINT64_MAX)
		return -1;
	return due > now_ms ? (int64_t)(due - now_ms) : 0;
}

void fed_shutdown(fed *f, uint64_t now_ms)
{
	if (f->stopping || f->state == FED_STOPPED) {
		f->stopping = 1;
		if (f->final_wait) /* asked again: stop waiting for the nodes */
			final_end(f, "coordinator shutting down");
		return;
	}
	f->stopping = 1;
	if (f->o.async.on) {
		fa_shutdown(f, now_ms);
		return;
	}
	LOGI(MOD, "shutting down (state %s)", fed_state_name(f->state));
	switch (f->state) {
	case FED_IDLE:
		f->state = FED_STOPPED;
		say_goodbye(f, "coordinator shutting down");
		break;
	case FED_COLLECTING:
		f->collect_ms = now_ms - f->round_started;
		f->state = FED_CLOSING;
		finish_round(f, now_ms); /* abandons once in-flight updates are done */
		break;
	default: /* closing or committing: finishes, then stops (after_round) */
		break;
	}
}

int fed_done(const fed *f)
{
	return f->state == FED_STOPPED && f->jobs == 0 && !f->final_wait;
}

int fed_idle(const fed *f)
{
	return f->jobs == 0;
}

enum fed_state fed_get_state(const fed *f)
{
	return f->state;
}

uint64_t fed_version(const fed *f)
{
	return f->version;
}

void fed_version_sha(const fed *f, uint8_t out[32])
{
	memcpy(out, f->sha, 32);
}

const tset *fed_global(const fed *f)
{
	return f->global;
}

uint64_t fed_round_id(const fed *f)
{
	return f->round_id;
}

uint64_t fed_rounds_committed(const fed *f)
{
	return f->committed;
}

uint64_t fed_rounds_abandoned(const fed *f)
{
	return f->abandoned;
}

int fed_backing_off(const fed *f)
{
	return f->wf_since != 0 || f->wf_pending;
}

const dp_ledger *fed_privacy(const fed *f)
{
	return f->dp_on ? &f->led : NULL;
}

size_t fed_nodes_connected(const fed *f)
{
	return f->connected;
}

size_t fed_participants(const fed *f, const char **cns, size_t cap)
{
	for (size_t i = 0; i < f->nparts && i < cap; i++)
		cns[i] = f->parts[i].n->cn;
	return f->nparts;
}

const char *fed_node_state(const fed *f, const char *cn)
{
	const fnode *n = node_get(f, cn);
	if (!n)
		return NULL;
	return nstate_names[n->peer ? n->st : N_GONE];
}

/* ------------------------------------------------------------------ */
/* coordinator tiers: the regional side (docs/COORDINATOR.md, "Tiers") */
/*                                                                     */
/* A region's rounds mirror the root's: fed_tier_round adopts the      */
/* root's exact version and starts a round with the root's training    */
/* parameters; when collection closes, the worker runs agg_finish      */
/* (plain FedAvg, server_lr 1: the sample-weighted mean of the         */
/* accepted deltas) and tier_done hands that mean and the weight sum   */
/* to the upstream side, which forwards them to the root. Nothing is   */
/* committed here: the next version comes from the root.               */

static void tier_report(fed *f, const fed_tier_result *r)
{
	if (f->o.tier && f->o.tier->done)
		f->o.tier->done(f->o.tier->ud, r);
}

static void tier_done(fed *f, fed_job *job, uint64_t now_ms)
{
	size_t acc = agg_count(f->agg);
	double tl, el;
	int ht, he;
	round_losses(f, &tl, &el, &ht, &he);
	char d[200];
	fed_tier_result r = {.round_id = f->round_id, .detail = d};
	if (job->rc) {
		snprintf(d, sizeof d, "aggregation failed: %s",
		         job->rc == FL_ENUMERIC ? "result not finite" : fl_strerror(job->rc));
		LOGW(MOD, "round %" PRIu64 ": %s; nothing forwarded to the root", f->round_id, d);
	} else {
		double w = agg_weight_sum(f->agg);
		r.ok = 1;
		r.mean = f->step;
		r.weight = w < 1 ? 1 : w > 9e18 ? (uint64_t)9e18 : (uint64_t)llround(w);
		r.accepted = acc;
		r.train_loss = tl;
		r.has_train_loss = ht;
		snprintf(d, sizeof d, "forwarded to the root: %zu update%s, weight %" PRIu64, acc,
		         acc == 1 ? "" : "s", r.weight);
		LOGI(MOD, "round %" PRIu64 " (version %" PRIu64 "): %s; aggregate %.1f ms",
		     f->round_id, f->version, d, job->agg_secs * 1e3);
	}
	tier_report(f, &r);
	met_add(f, "fedlora_rounds_total", r.ok ? "outcome=\"forwarded\"" : "outcome=\"abandoned\"",
	        1);
	met_observe(f, "fedlora_round_seconds", (double)(now_ms - f->round_started) / 1e3);
	round_end_msg(f, r.ok, d, acc, tl, el, ht, he);
	/* journal: "committed" stays false, a region commits nothing */
	round_journal(f, 0, d, now_ms, job, tl, el, ht, he);
	if (!r.ok)
		f->abandoned++;
	after_round(f, now_ms);
}

/* Takes the root's version: global (owned), the delta that led to it
 * from our current version (or none), encodings, state directory. */
static int tier_adopt(fed *f, uint64_t version, const uint8_t sha[32], tset *global,
                      const uint8_t *delta, size_t delta_len)
{
	buf_clear(&f->delta);
	f->has_parent = 0;
	if (delta && delta_len) {
		if (buf_append(&f->delta, delta, delta_len)) {
			tset_free(global);
			return FL_ENOMEM;
		}
		f->parent = f->version;
		memcpy(f->parent_sha, f->sha, 32);
		f->has_parent = 1;
	}
	tset_free(f->global);
	f->global = global;
	f->version = version;
	memcpy(f->sha, sha, 32);
	int rc = set_global_encodings(f);
	if (rc) {
		LOGE(MOD, "cannot encode version %" PRIu64 " of the root: %s", version,
		     fl_strerror(rc));
		return rc;
	}
	char h[65];
	hex_encode(sha, 32, h);
	LOGI(MOD, "took the root's version %" PRIu64 " (%.16s...) from a %s", version, h,
	     f->has_parent ? "delta (forwarded as is)" : "snapshot");
	met_set(f, "fedlora_global_version", NULL, (double)version);
	if (f->st) { /* a restarted region starts from it (no optimiser state) */
		store_info in;
		/* round 0: no round of ours made it (nothing to recover at start) */
		fill_info(f, &in, version, 0, f->has_parent ? f->parent : 0, sha);
		errno = 0;
		rc = store_commit(f->st, f->global, &in, NULL, f->o.keep_versions);
		if (rc)
			LOGW(MOD,
			     "cannot write the root's version %" PRIu64
			     " to the state directory (%s); the region goes on from memory",
			     version, fl_strerror(rc));
	}
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "tier_version");
	cJSON_AddNumberToObject(j, "version", (double)version);
	add_hex(j, "sha256", sha, 32);
	cJSON_AddBoolToObject(j, "delta", f->has_parent);
	journal_rec(f, j);
	return 0;
}

int fed_tier_round(fed *f, uint64_t version, const uint8_t sha[32], tset *global,
                   const uint8_t *delta, size_t delta_len, const Fedlora__TrainParams *tp,
                   uint32_t deadline_ms, uint64_t now_ms)
{
	if (!f->o.tier || !global || !tp || !sha) {
		tset_free(global);
		return FL_EINVAL;
	}
	if (f->state != FED_IDLE || f->jobs || f->stopping) {
		tset_free(global);
		return FL_EBUSY;
	}
	uint8_t chk[32];
	if (tset_same_layout(global, f->global) || tset_fingerprint(global, chk) ||
	    memcmp(chk, sha, 32)) {
		tset_free(global);
		return FL_EMISMATCH;
	}
	if (version != f->version || memcmp(sha, f->sha, 32)) {
		int rc = tier_adopt(f, version, sha, global, delta, delta_len);
		if (rc)
			return rc;
	} else {
		tset_free(global);
	}
	f->tier_tp = *tp; /* scalars only */
	f->tier_tp.base.n_unknown_fields = 0;
	f->tier_tp.base.unknown_fields = NULL;
	f->tier_tp_set = 1;
	f->tier_deadline_ms = deadline_ms ? deadline_ms : 1;
	start_round(f, now_ms);
	return f->state == FED_COLLECTING ? 0 : FL_EAGAIN;
}

void fed_tier_abort(fed *f, uint64_t now_ms)
{
	if (!f->o.tier || f->state != FED_COLLECTING)
		return;
	LOGI(MOD, "round %" PRIu64 ": the root moved on; closing collection now", f->round_id);
	f->deadline = now_ms;
	maybe_close_round(f, now_ms);
}

void fed_tier_finish(fed *f, uint64_t now_ms)
{
	if (f->state == FED_IDLE && !f->jobs) {
		LOGI(MOD, "the root finished the federation; so does this region");
		f->state = FED_STOPPED;
		f->ready = 0;
		say_goodbye(f, "federation finished");
	} else {
		fed_shutdown(f, now_ms);
	}
}

/* The root's side: differential privacy counts and clips participants, so
 * with regions as participants it would protect regions, not nodes: a
 * region's Join is refused (Reject VERSION, fatal for the region) naming
 * both keys. 1 = refused. */
static int tier_join_refused(fed *f, const sess *s, const Fedlora__Join *j, uint64_t peer)
{
	if (!f->dp_on)
		return 0;
	for (size_t i = 0; i < j->n_capabilities; i++) {
		if (!j->capabilities[i] || strcmp(j->capabilities[i], "region") != 0)
			continue;
		char d[300];
		snprintf(d, sizeof d,
		         "%s is a regional coordinator (upstream.endpoint) and this federation "
		         "runs privacy.mode = %s, which would clip and count regions, not nodes",
		         s->cn, f->o.priv.mode == DP_CENTRAL ? "central" : "distributed");
		reject_join(f, peer, FEDLORA__REJECT__REASON__REASON_VERSION, "privacy", d);
		return 1;
	}
	return 0;
}
/* asynchronous buffered aggregation (aggregation.mode = async)        */
/*                                                                     */
/* No rounds: every connected node without a task is given one (a      */
/* RoundStart whose round_id is a fresh task id, on the current        */
/* version), up to async.max_concurrent tasks out. An arriving Update  */
/* is checked against its node's task, weighted by the staleness of    */
/* its base version (async.h) and accumulated; every buffer_size       */
/* accepted updates the buffer is committed as a new version by the    */
/* same commit job as a synchronous round (exact versions, state       */
/* directory, optimiser). Updates arriving while a commit is due or    */
/* running are held and added after it, on the new version. The buffer */
/* lives in memory only: a crash loses the uncommitted updates, never  */
/* a committed version (docs/COORDINATOR.md).                          */

typedef struct fa_entry {
	char cn[65];
	uint64_t task, base, stale, samples;
	double factor, weight, norm, scale;
	double train_loss, eval_loss;
	int has_train, has_eval;
} fa_entry;

typedef struct fa_held {
	fnode *n;
	wire_msg *m;
	double tl, el;
	int ht, he;
} fa_held;

static int fa_check(const fed_opts *o, char *why, size_t whylen)
{
	int rc = fa_opts_check(&o->async, why, whylen);
	if (rc || !o->async.on)
		return rc;
	if (o->secure.on) {
		WHY("aggregation.mode = async does not combine with aggregation.secure = true: "
		    "secure aggregation needs a fixed cohort per version (buffered SecAgg is "
		    "not implemented)");
		return FL_EINVAL;
	}
	if (o->priv.mode != DP_OFF) {
		WHY("aggregation.mode = async does not combine with privacy.mode = %s: the "
		    "privacy accountant assumes Poisson-sampled synchronous rounds",
		    o->priv.mode == DP_CENTRAL ? "central" : "distributed");
		return FL_EINVAL;
	}
	if (o->tier) {
		WHY("aggregation.mode = async does not combine with upstream.endpoint: a region's "
		    "rounds follow the root's");
		return FL_EINVAL;
	}
	if (agg_strategy_buffers(o->agg.strategy)) {
		WHY("aggregation.mode = async does not combine with aggregation.strategy = %s: "
		    "the staleness weight scales a mean (use fedavg, fedavgm, fedadam or "
		    "fedyogi)",
		    agg_strategy_name(o->agg.strategy));
		return FL_EINVAL;
	}
	return 0;
}

static void fa_met_declare(fed *f)
{
	metrics_declare(f->m, "fedlora_async_buffered", METRICS_GAUGE,
	                "Async: accepted updates in the buffer of the next version");
	metrics_declare(f->m, "fedlora_async_tasks_out", METRICS_GAUGE,
	                "Async: tasks given and not answered (training or uploading)");
	metrics_declare(f->m, "fedlora_async_updates_total", METRICS_COUNTER,
	                "Async: accepted updates by staleness (versions behind when added)");
	metrics_declare(f->m, "fedlora_async_weight_total", METRICS_COUNTER,
	                "Async: sum of the staleness weight factors of accepted updates");
	metrics_add(f->m, "fedlora_async_weight_total", NULL, 0);
	metrics_add(f->m, "fedlora_updates_rejected_total", "reason=\"too_stale\"", 0);
}

static void fa_gauges(fed *f)
{
	met_set(f, "fedlora_async_buffered", NULL, (double)f->fa_nbuf);
	met_set(f, "fedlora_async_tasks_out", NULL, (double)f->fa_out);
}

static void fa_release(fed *f, fnode *n)
{
	if (!n->fa_task)
		return;
	n->fa_task = 0;
	n->fa_uploaded = 0;
	if (f->fa_out)
		f->fa_out--;
}

/* RoundStart of n's task: its id and deadline, the current version. */
static void fa_send(fed *f, fnode *n, uint64_t now_ms)
{
	uint64_t rid = f->round_id, dl = f->deadline;
	f->round_id = n->fa_task;
	f->deadline = n->fa_deadline;
	send_round_start(f, &n, 1, now_ms);
	f->round_id = rid;
	f->deadline = dl;
}

static void fa_give(fed *f, fnode *n, uint64_t now_ms)
{
	n->fa_task = ++f->round_id;
	n->fa_base = f->version;
	n->fa_deadline = now_ms + f->o.round_timeout_ms;
	n->fa_uploaded = 0;
	n->fa_gone = 0;
	f->fa_out++;
	LOGD(MOD, "task %" PRIu64 " to %s on version %" PRIu64, n->fa_task, n->cn, f->version);
	fa_send(f, n, now_ms);
	met_set(f, "fedlora_round_id", NULL, (double)f->round_id);
}

/* Hands tasks to connected nodes without one, in round-robin order, up
 * to max_concurrent; none while a commit is due or running, while the
 * state directory cannot be written, below rounds.min_nodes or stopping. */
static void fa_assign(fed *f, uint64_t now_ms)
{
	if (f->stopping || f->state == FED_STOPPED || f->wf_since || f->wf_pending)
		return;
	if (f->connected < f->o.min_nodes)
		return;
	if (f->state == FED_IDLE) {
		f->state = FED_COLLECTING;
		f->fa_buf_opened = now_ms;
	}
	if (f->state != FED_COLLECTING || f->fa_want || !f->nnodes)
		return;
	size_t cap = f->o.async.max_concurrent ? f->o.async.max_concurrent : SIZE_MAX;
	size_t nn = f->nnodes, last = SIZE_MAX;
	for (size_t k = 0; k < nn && f->fa_out < cap; k++) {
		size_t i = (f->fa_rr + k) % nn;
		fnode *n = f->nodes[i];
		if (!n->peer || n->fa_task)
			continue;
		fa_give(f, n, now_ms);
		last = i;
	}
	if (last != SIZE_MAX) /* next time, start after it (nodes may join meanwhile) */
		f->fa_rr = last + 1;
	fa_gauges(f);
}

static void fa_journal_update(fed *f, const fnode *n, uint64_t task, uint64_t base, uint64_t stale,
                              double factor, int reason, const char *detail, double weight)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "async_update");
	cJSON_AddNumberToObject(j, "round", (double)task);
	cJSON_AddStringToObject(j, "node", n->cn);
	cJSON_AddNumberToObject(j, "base_version", (double)base);
	cJSON_AddNumberToObject(j, "version", (double)f->version);
	cJSON_AddNumberToObject(j, "staleness", (double)stale);
	int acc = reason == FEDLORA__UPDATE_ACK__REASON__REASON_NONE;
	cJSON_AddBoolToObject(j, "accepted", acc);
	if (acc) {
		cJSON_AddNumberToObject(j, "factor", factor);
		cJSON_AddNumberToObject(j, "weight", weight);
		cJSON_AddNumberToObject(j, "buffered", (double)f->fa_nbuf);
	} else {
		cJSON_AddStringToObject(j, "reason", ack_reason_name(reason));
		cJSON_AddStringToObject(j, "detail", detail ? detail : "");
	}
	journal_rec(f, j);
}

/* Refuses n's update for its task (the task ends; the node gets another). */
static void fa_refuse(fed *f, fnode *n, uint64_t stale, int reason, const char *detail,
                      uint64_t now_ms)
{
	uint64_t task = n->fa_task;
	LOGW(MOD, "task %" PRIu64 ": update from %s refused (%s): %s", task, n->cn,
	     ack_reason_name(reason), detail);
	fa_journal_update(f, n, task, n->fa_base, stale, 0, reason, detail, 0);
	fa_release(f, n);
	if (n->peer && n->st == N_UPLOADING)
		n->st = N_IDLE;
	send_ack(f, n->peer, task, reason, detail);
	fa_assign(f, now_ms);
}

static void fa_maybe_commit(fed *f, uint64_t now_ms)
{
	if (!f->fa_want || f->jobs || f->state != FED_COLLECTING)
		return;
	fed_job *job = commit_job_new(f);
	if (!job) {
		LOGE(MOD, "out of memory starting a commit; retried at the next tick");
		return;
	}
	f->collect_ms = now_ms - f->fa_buf_opened;
	f->state = FED_COMMITTING;
	submit(f, job, now_ms);
}

/* Hands a held update to the worker, weighted by its staleness now. */
static void fa_submit(fed *f, const fa_held *h, uint64_t now_ms)
{
	fnode *n = h->n;
	uint64_t stale = fa_staleness(f->version, n->fa_base);
	char d[200];
	if (fa_too_stale(&f->o.async, stale)) {
		snprintf(d, sizeof d,
		         "trained from version %" PRIu64 ", %" PRIu64 " versions behind %" PRIu64
		         "; aggregation.max_staleness is %u",
		         n->fa_base, stale, f->version, f->o.async.max_staleness);
		wire_free(h->m);
		fa_refuse(f, n, stale, FEDLORA__UPDATE_ACK__REASON__REASON_TOO_STALE, d, now_ms);
		return;
	}
	fed_job *job = calloc(1, sizeof *job);
	if (!job) {
		wire_free(h->m);
		fa_refuse(f, n, stale, FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED,
		          "coordinator out of memory", now_ms);
		return;
	}
	job->f = f;
	job->type = JOB_UPDATE;
	job->round_id = n->fa_task;
	job->msg = h->m;
	job->samples = wire_env(h->m)->update->sample_count;
	job->fa_node = n;
	job->fa_stale = stale;
	job->fa_factor = fa_weight(&f->o.async, stale);
	job->fa_tl = h->tl;
	job->fa_el = h->el;
	job->fa_ht = h->ht;
	job->fa_he = h->he;
	submit(f, job, now_ms);
}

/* Held updates go to the worker once no commit is due or running. */
static void fa_drain(fed *f, uint64_t now_ms)
{
	while (f->fa_nq && !f->fa_want && f->state == FED_COLLECTING) {
		fa_held h = f->fa_q[0];
		memmove(f->fa_q, f->fa_q + 1, (f->fa_nq - 1) * sizeof *f->fa_q);
		f->fa_nq--;
		fa_submit(f, &h, now_ms);
	}
}

static void fa_handle_update(fed *f, sess *s, wire_msg *m, size_t wire_len, uint64_t now_ms)
{
	const Fedlora__Update *u = wire_env(m)->update;
	fnode *n = s->node;
	char d[200];
	f->bytes_in += wire_len;
	if (f->stopping || f->state == FED_STOPPED) {
		send_ack(f, s->peer, u->round_id, FEDLORA__UPDATE_ACK__REASON__REASON_LATE,
		         "the coordinator is stopping");
		goto drop;
	}
	if (!n->fa_task || u->round_id != n->fa_task) {
		snprintf(d, sizeof d,
		         "task %" PRIu64 " is not open for %s (expired, answered or never given)",
		         u->round_id, n->cn);
		int late = u->round_id && u->round_id <= f->round_id;
		send_ack(f, s->peer, u->round_id,
		         late ? FEDLORA__UPDATE_ACK__REASON__REASON_LATE
		              : FEDLORA__UPDATE_ACK__REASON__REASON_WRONG_ROUND,
		         d);
		goto drop;
	}
	if (n->fa_uploaded) {
		snprintf(d, sizeof d, "an update from %s for task %" PRIu64 " was already received",
		         n->cn, u->round_id);
		send_ack(f, s->peer, u->round_id, FEDLORA__UPDATE_ACK__REASON__REASON_DUPLICATE, d);
		goto drop;
	}
	uint64_t stale = fa_staleness(f->version, n->fa_base);
	if (u->base_version != n->fa_base) {
		snprintf(d, sizeof d,
		         "trained from version %" PRIu64 ", task %" PRIu64 " gave version %" PRIu64,
		         u->base_version, u->round_id, n->fa_base);
		fa_refuse(f, n, stale, FEDLORA__UPDATE_ACK__REASON__REASON_STALE, d, now_ms);
		goto drop;
	}
	if (!u->delta || u->delta->from_version != u->base_version) {
		fa_refuse(f, n, stale, FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED,
		          !u->delta ? "update carries no delta"
		                    : "delta.from_version differs from base_version",
		          now_ms);
		goto drop;
	}
	fa_held h = {.n = n, .m = m};
	for (size_t i = 0; i < u->n_metrics; i++) {
		const Fedlora__Metric *mt = u->metrics[i];
		if (!mt || !mt->name || !isfinite(mt->value))
			continue;
		if (strcmp(mt->name, "train_loss") == 0) {
			h.tl = mt->value;
			h.ht = 1;
		} else if (strcmp(mt->name, "eval_loss") == 0) {
			h.el = mt->value;
			h.he = 1;
			n->eval_loss = mt->value;
			n->has_eval_loss = 1;
		}
	}
	n->fa_uploaded = 1;
	n->st = N_UPLOADING;
	if (f->fa_want || f->state != FED_COLLECTING) {
		if (f->fa_nq == f->fa_qcap) {
			size_t nc = f->fa_qcap ? 2 * f->fa_qcap : 16;
			fa_held *q = realloc(f->fa_q, nc * sizeof *q);
			if (!q) {
				n->fa_uploaded = 0;
				fa_refuse(f, n, stale,
				          FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED,
				          "coordinator out of memory", now_ms);
				goto drop;
			}
			f->fa_q = q;
			f->fa_qcap = nc;
		}
		f->fa_q[f->fa_nq++] = h;
		return;
	}
	fa_submit(f, &h, now_ms);
	return;
drop:
	wire_free(m);
}

static void fa_done_update(fed *f, fed_job *job, uint64_t now_ms)
{
	fnode *n = job->fa_node;
	const char *detail;
	int reason = job_reason(job, n, &detail);
	met_observe(f, "fedlora_update_seconds", job->agg_secs);
	if (reason != FEDLORA__UPDATE_ACK__REASON__REASON_NONE) {
		fa_refuse(f, n, job->fa_stale, reason, detail, now_ms);
		fa_maybe_commit(f, now_ms);
		return;
	}
	if (f->fa_nbuf == f->fa_bufcap) {
		size_t nc = f->fa_bufcap ? 2 * f->fa_bufcap : 16;
		fa_entry *b = realloc(f->fa_buf, nc * sizeof *b);
		if (!b) { /* the sum already holds it: counted, but not itemised */
			LOGE(MOD, "out of memory recording an update in the buffer");
		} else {
			f->fa_buf = b;
			f->fa_bufcap = nc;
		}
	}
	if (f->fa_nbuf < f->fa_bufcap) {
		fa_entry *e = &f->fa_buf[f->fa_nbuf++];
		memset(e, 0, sizeof *e);
		snprintf(e->cn, sizeof e->cn, "%s", n->cn);
		e->task = job->round_id;
		e->base = n->fa_base;
		e->stale = job->fa_stale;
		e->samples = job->samples;
		e->factor = job->fa_factor;
		e->weight = job->res.weight;
		e->norm = job->res.norm;
		e->scale = job->res.scale;
		e->train_loss = job->fa_tl;
		e->eval_loss = job->fa_el;
		e->has_train = job->fa_ht;
		e->has_eval = job->fa_he;
	}
	LOGI(MOD,
	     "task %" PRIu64 ": update from %s accepted (base v%" PRIu64 ", staleness %" PRIu64
	     ", factor %.4g, norm %.4g%s); %zu of %u buffered",
	     job->round_id, n->cn, n->fa_base, job->fa_stale, job->fa_factor, job->res.norm,
	     job->res.scale < 1 ? ", clipped" : "", agg_count(f->agg), f->o.async.buffer_size);
	if (job->res.scale < 1)
		met_add(f, "fedlora_updates_clipped_total", NULL, 1);
	char lab[48];
	snprintf(lab, sizeof lab, "staleness=\"%" PRIu64 "\"", job->fa_stale);
	met_add(f, "fedlora_async_updates_total", lab, 1);
	met_add(f, "fedlora_async_weight_total", NULL, job->fa_factor);
	fa_journal_update(f, n, job->round_id, n->fa_base, job->fa_stale, job->fa_factor, reason,
	                  "", job->res.weight);
	fa_release(f, n);
	if (n->peer && n->st == N_UPLOADING)
		n->st = N_IDLE;
	send_ack(f, n->peer, job->round_id, reason, "");
	if (agg_count(f->agg) >= f->o.async.buffer_size)
		f->fa_want = 1;
	fa_maybe_commit(f, now_ms);
	fa_assign(f, now_ms);
}

/* Ends the federation (max_rounds, shutdown): held updates are dropped. */
static void fa_stop(fed *f, const char *why)
{
	for (size_t i = 0; i < f->fa_nq; i++)
		wire_free(f->fa_q[i].m);
	f->fa_nq = 0;
	f->state = FED_STOPPED;
	say_goodbye(f, why);
}

/* The buffer is consumed: a fresh one opens on the (new) version. */
static void fa_reset_buffer(fed *f, uint64_t now_ms)
{
	agg_begin(f->agg);
	f->fa_nbuf = 0;
	f->fa_want = 0;
	f->fa_buf_opened = now_ms;
	f->bytes_in = f->bytes_out = 0;
	memset(f->rejected, 0, sizeof f->rejected);
}

static void fa_after_buffer(fed *f, uint64_t now_ms)
{
	if (f->stopping) {
		fa_stop(f, "coordinator shutting down");
		return;
	}
	if (f->o.max_rounds && f->committed >= f->o.max_rounds) {
		LOGI(MOD, "federation finished: %" PRIu64 " versions committed", f->committed);
		fa_stop(f, "federation finished");
		return;
	}
	fa_drain(f, now_ms);
	fa_maybe_commit(f, now_ms);
	fa_assign(f, now_ms);
	fa_gauges(f);
}

/* done_commit after the new global is in place. */
static void fa_committed(fed *f, fed_job *job, uint64_t now_ms)
{
	f->committed++;
	double ts = 0, tw = 0, es = 0, ew = 0, nsum = 0;
	size_t nclip = 0;
	uint64_t smax = 0;
	for (size_t i = 0; i < f->fa_nbuf; i++) {
		const fa_entry *e = &f->fa_buf[i];
		double w = e->samples ? (double)e->samples : 1.0;
		if (e->has_train) {
			ts += w * e->train_loss;
			tw += w;
		}
		if (e->has_eval) {
			es += w * e->eval_loss;
			ew += w;
		}
		nsum += e->norm;
		nclip += e->scale < 1.0;
		if (e->stale > smax)
			smax = e->stale;
	}
	char h[65];
	hex_encode(f->sha, 32, h);
	LOGI(MOD,
	     "async: version %" PRIu64 " (%.16s...) committed from %zu buffered updates "
	     "(staleness up to %" PRIu64 "); aggregate %.1f ms, write %.1f ms",
	     f->version, h, agg_count(f->agg), smax, job->agg_secs * 1e3, job->commit_secs * 1e3);
	met_add(f, "fedlora_rounds_total", "outcome=\"committed\"", 1);
	met_set(f, "fedlora_global_version", NULL, (double)f->version);
	met_observe(f, "fedlora_aggregation_seconds", job->agg_secs);
	met_observe(f, "fedlora_commit_seconds", job->commit_secs);
	met_observe(f, "fedlora_round_seconds", (double)(now_ms - f->fa_buf_opened) / 1e3);
	if (ew > 0)
		met_set(f, "fedlora_global_loss", NULL, es / ew);
	if (tw > 0)
		met_set(f, "fedlora_train_loss", NULL, ts / tw);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "round_end");
	cJSON_AddNumberToObject(j, "round", (double)job->round_id);
	cJSON_AddBoolToObject(j, "committed", 1);
	cJSON_AddStringToObject(j, "mode", "async");
	cJSON_AddNumberToObject(j, "version", (double)f->version);
	cJSON_AddNumberToObject(j, "parent", (double)f->parent);
	add_hex(j, "sha256", f->sha, 32);
	cJSON_AddStringToObject(j, "strategy", agg_strategy_name(f->o.agg.strategy));
	cJSON_AddStringToObject(j, "staleness_fn", fa_stale_name(f->o.async.fn));
	/* participants = accepted: the nodes whose updates are in the version */
	cJSON *pa = cJSON_AddArrayToObject(j, "participants");
	cJSON *ac = cJSON_AddArrayToObject(j, "accepted");
	cJSON *ua = cJSON_AddArrayToObject(j, "updates");
	for (size_t i = 0; i < f->fa_nbuf; i++) {
		const fa_entry *e = &f->fa_buf[i];
		cJSON_AddItemToArray(pa, cJSON_CreateString(e->cn));
		cJSON_AddItemToArray(ac, cJSON_CreateString(e->cn));
		cJSON *u = cJSON_CreateObject();
		cJSON_AddStringToObject(u, "node", e->cn);
		cJSON_AddNumberToObject(u, "task", (double)e->task);
		cJSON_AddNumberToObject(u, "base_version", (double)e->base);
		cJSON_AddNumberToObject(u, "staleness", (double)e->stale);
		cJSON_AddNumberToObject(u, "factor", e->factor);
		cJSON_AddNumberToObject(u, "weight", e->weight);
		cJSON_AddItemToArray(ua, u);
	}
	cJSON *rj = cJSON_AddObjectToObject(j, "rejected");
	for (int r = 1; r < 16; r++)
		if (f->rejected[r])
			cJSON_AddNumberToObject(rj, ack_reason_name(r), (double)f->rejected[r]);
	cJSON_AddNumberToObject(j, "bytes_in", (double)f->bytes_in);
	cJSON_AddNumberToObject(j, "bytes_out", (double)f->bytes_out);
	cJSON *mj = cJSON_AddObjectToObject(j, "metrics");
	if (tw > 0)
		cJSON_AddNumberToObject(mj, "train_loss", ts / tw);
	if (ew > 0)
		cJSON_AddNumberToObject(mj, "eval_loss", es / ew);
	if (f->fa_nbuf) {
		cJSON_AddNumberToObject(mj, "mean_update_norm", nsum / (double)f->fa_nbuf);
		cJSON_AddNumberToObject(mj, "clipped", (double)nclip);
	}
	cJSON *tj = cJSON_AddObjectToObject(j, "timings");
	cJSON_AddNumberToObject(tj, "collect_ms", (double)f->collect_ms);
	cJSON_AddNumberToObject(tj, "aggregate_ms", job->agg_secs * 1e3);
	cJSON_AddNumberToObject(tj, "commit_ms", job->commit_secs * 1e3);
	cJSON_AddNumberToObject(tj, "round_ms", (double)(now_ms - f->fa_buf_opened));
	journal_rec(f, j);
	f->state = FED_COLLECTING;
	fa_reset_buffer(f, now_ms);
	fa_after_buffer(f, now_ms);
}

/* done_commit when the commit job failed: the version stays, the buffer
 * is dropped (its updates were acknowledged: that work is lost). */
static void fa_commit_failed(fed *f, fed_job *job, uint64_t now_ms)
{
	const char *d = job->detail[0] ? job->detail : "commit failed";
	LOGW(
	    MOD,
	    "async: version not committed: %s; %zu buffered updates dropped (version stays %" PRIu64
	    ")",
	    d, agg_count(f->agg), f->version);
	f->abandoned++;
	met_add(f, "fedlora_rounds_total", "outcome=\"abandoned\"", 1);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "round_end");
	cJSON_AddNumberToObject(j, "round", (double)job->round_id);
	cJSON_AddBoolToObject(j, "committed", 0);
	cJSON_AddStringToObject(j, "mode", "async");
	cJSON_AddNumberToObject(j, "version", (double)f->version);
	cJSON_AddStringToObject(j, "detail", d);
	cJSON_AddNumberToObject(j, "dropped", (double)agg_count(f->agg));
	journal_rec(f, j);
	/* IDLE lets the state-directory back-off retry; fa_assign resumes */
	f->state = f->wf_since || f->wf_pending ? FED_IDLE : FED_COLLECTING;
	fa_reset_buffer(f, now_ms);
	if (f->state == FED_IDLE && !f->stopping) {
		fa_gauges(f);
		return;
	}
	fa_after_buffer(f, now_ms);
}

/* A node joined again while it has a task: the same task again when the
 * version has not moved (a node still training carries on, one that
 * restarted trains it, one that uploaded resends); otherwise the task
 * stays (the node resends its update or finishes training, both marked
 * async) until its deadline. */
static void fa_rejoin(fed *f, fnode *n, uint64_t now_ms)
{
	n->fa_gone = 0;
	if (n->fa_task && !n->fa_uploaded && n->fa_base == f->version && f->state != FED_STOPPED &&
	    !f->stopping)
		fa_send(f, n, now_ms);
}

/* SnapshotRequest: the same task with a snapshot while the version has
 * not moved, else a new task on the current version. */
static void fa_resend(fed *f, fnode *n, uint64_t now_ms)
{
	if (!n->fa_task || n->fa_uploaded || f->state == FED_STOPPED || f->stopping)
		return;
	if (n->fa_base == f->version) {
		fa_send(f, n, now_ms);
		return;
	}
	fa_release(f, n);
	fa_assign(f, now_ms);
}

static void fa_tick(fed *f, uint64_t now_ms)
{
	if (f->state == FED_STOPPED)
		return;
	for (size_t i = 0; i < f->nnodes; i++) {
		fnode *n = f->nodes[i];
		if (!n->fa_task || n->fa_uploaded)
			continue;
		if (now_ms >= n->fa_deadline) {
			LOGI(MOD, "task %" PRIu64 " of %s expired (rounds.deadline_ms %u)",
			     n->fa_task, n->cn, f->o.round_timeout_ms);
			fa_release(f, n);
		} else if (!n->peer && n->fa_gone && now_ms >= n->fa_gone + f->o.gone_grace_ms) {
			LOGI(MOD, "task %" PRIu64 " of %s dropped: disconnected for %u ms",
			     n->fa_task, n->cn, f->o.gone_grace_ms);
			fa_release(f, n);
		}
	}
	fa_assign(f, now_ms); /* IDLE -> COLLECTING once writable again */
	fa_drain(f, now_ms);  /* updates held while the state was not collecting */
	fa_maybe_commit(f, now_ms);
	fa_assign(f, now_ms);
}

static int64_t fa_timeout(const fed *f, uint64_t now_ms)
{
	uint64_t due = UINT64_MAX;
	if (f->state == FED_STOPPED)
		return -1;
	if (f->wf_since && f->state == FED_IDLE && !f->jobs)
		due = f->wf_retry_at;
	if (f->state == FED_COLLECTING && ((f->fa_want && !f->jobs) || (f->fa_nq && !f->fa_want)))
		return 0;
	for (size_t i = 0; i < f->nnodes; i++) {
		const fnode *n = f->nodes[i];
		if (!n->fa_task || n->fa_uploaded)
			continue;
		if (n->fa_deadline < due)
			due = n->fa_deadline;
		if (!n->peer && n->fa_gone && n->fa_gone + f->o.gone_grace_ms < due)
			due = n->fa_gone + f->o.gone_grace_ms;
	}
	if (due == UINT64_MAX)
		return -1;
	return due > now_ms ? (int64_t)(due - now_ms) : 0;
}

static void fa_shutdown(fed *f, uint64_t now_ms)
{
	(void)now_ms;
	LOGI(MOD, "shutting down (state %s)", fed_state_name(f->state));
	if (f->state == FED_COMMITTING)
		return; /* fa_committed / fa_commit_failed stop after it */
	size_t nb = agg_count(f->agg);
	if (nb || f->fa_nq) {
		LOGW(MOD, "async: %zu buffered and %zu held updates are not committed", nb,
		     f->fa_nq);
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "type", "async_dropped");
		cJSON_AddNumberToObject(j, "round", (double)f->round_id);
		cJSON_AddNumberToObject(j, "version", (double)f->version);
		cJSON_AddNumberToObject(j, "buffered", (double)nb);
		cJSON_AddNumberToObject(j, "held", (double)f->fa_nq);
		cJSON_AddStringToObject(j, "detail", "coordinator shutting down");
		journal_rec(f, j);
	}
	fa_stop(f, "coordinator shutting down");
}

static void fa_fini(fed *f)
{
	for (size_t i = 0; i < f->fa_nq; i++)
		wire_free(f->fa_q[i].m);
	free(f->fa_q);
	free(f->fa_buf);
}
