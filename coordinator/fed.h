/* fed — the coordinator's federation state machine, without I/O.
 *
 * It holds the registry of nodes, runs rounds (wait for min_nodes, sample,
 * RoundStart, collect Updates until all answered or the deadline, commit or
 * abandon, RoundEnd), keeps the global adapter and its exact versions, and
 * writes the state directory and journal through a store. It never touches
 * a socket or a clock: the caller feeds it session events, decoded
 * messages and the monotonic time (now_ms), and it answers through the
 * callbacks in fed_io. CPU-heavy work (decoding and accumulating an update,
 * aggregating and committing a version) is packaged as jobs: fed_io.submit
 * runs them on a worker thread and the loop thread reports completion with
 * fed_job_done; without submit they run inline (tests).
 *
 * Threads: every fed_* function except fed_job_run belongs to one thread
 * (the event loop). fed_job_run may run on one other thread; jobs are run
 * one at a time, in submission order. */
#ifndef FL_FED_H
#define FL_FED_H
#include <stddef.h>
#include <stdint.h>

#include "agg.h"
#include "async.h"
#include "dp.h"
#include "lora.h"
#include "metrics.h"
#include "nrank.h"
#include "qtensor.h"
#include "store.h"
#include "tensor.h"
#include "wire.h"

typedef struct fed_train {
	uint32_t local_steps;
	float lr;
	uint32_t batch_size;
	uint32_t ctx;
	float weight_decay;
	float max_grad_norm;
	float fedprox_mu;
	enum qt_fmt uplink_fmt;
	uint32_t uplink_block;
	int stochastic_rounding;
	int error_feedback;
} fed_train;

/* Secure aggregation (SecAgg+ over the common grid; docs/PRIVACY.md). */
typedef struct fed_secure {
	int on;
	uint32_t k;        /* neighbours; 0 = sa_params_default's */
	double threshold;  /* 0: sa_params_default's; < 1: fraction of the degree; else a count */
	double clip;       /* C: L2 bound of a node's update on the grid */
	uint32_t w_max;    /* integer weights in [1, w_max], w_max <= L; 0 = L */
	double range;      /* grid half-range in previous-mean RMS units */
	uint32_t phase_ms; /* key, share and unmask phase deadlines */
	const char *dump_dir; /* tests only: every masked input and each sum is
	                       * written here (FEDLORA_TEST_SECAGG_DUMP) */
} fed_secure;

typedef struct fed_opts {
	/* the federation */
	lora_spec spec;
	lora_arch arch;
	uint8_t base_sha[32]; /* base-model fingerprint every Join must carry */
	/* rounds */
	uint32_t min_nodes;        /* joined, connected nodes needed to start a round */
	uint32_t nodes_per_round;  /* sample size; 0 = ceil(fraction x eligible) */
	double fraction;           /* (0, 1] */
	int sampling_weighted;     /* probability proportional to Join.sample_count */
	uint32_t min_updates;      /* accepted updates needed to commit */
	uint32_t round_timeout_ms; /* deadline after RoundStart */
	uint32_t start_delay_ms;   /* after min_nodes is reached, wait this long for more */
	uint32_t round_gap_ms;     /* pause between rounds */
	uint32_t gone_grace_ms;    /* stop waiting for a disconnected participant after this */
	uint64_t max_rounds;       /* stop after this many committed rounds (0 = never) */
	uint32_t heartbeat_ms;     /* announced in Welcome */
	uint32_t max_nodes;        /* joined nodes; more get Reject{FULL} */
	uint64_t seed;             /* sampling and per-round training seeds */
	fed_train train;           /* sent in RoundStart */
	/* downlink: format of the aggregated delta (exact versions) */
	enum qt_fmt down_fmt;
	uint32_t down_block;
	/* aggregation.downlink_mode = grid: every version lies on the downlink
	 * format's grid (server-side error feedback, coordinator/downlink.h) and
	 * every node gets the same grid snapshot; 0 = delta (the step as a delta
	 * to nodes holding the parent, an f32 snapshot to the others) */
	int down_grid;
	/* when the federation ends, send the last version to the connected
	 * nodes (DownFinal) and wait up to this long for their evaluations
	 * before Bye; 0 = Bye at once (fed_opts_default) */
	uint32_t final_timeout_ms;
	agg_opts agg;
	/* differential privacy (docs/PRIVACY.md). Central mode: Poisson
	 * sampling with q = nodes_per_round / population from a CSPRNG, clip
	 * announced to nodes and enforced by agg, noise on the sum, every round
	 * charged to DIR/privacy.ledger before its RoundStart leaves, no round
	 * started past target_eps. */
	dp_opts priv;
	fed_secure secure;
	/* per-node rank and upload precision (coordinator/nrank.h) */
	nrank_opts rank;
	/* asynchronous buffered aggregation (async.h, docs/COORDINATOR.md):
	 * no rounds; idle nodes get tasks on the current version, a version is
	 * committed every async.buffer_size accepted updates */
	fa_opts async;
	unsigned keep_versions; /* versions kept in the state directory (>= 1) */
	size_t max_msg;         /* cap on an inbound message (fed_on_bytes) */
	/* tests: wall clock for deadline_unix_ms (NULL = clk_wall_ms) */
	uint64_t (*wall_ms)(void);
	/* tests: called in the commit job at named points ("aggregated",
	 * "optimizer", "written"), e.g. to pause so a test can kill -9 */
	void (*commit_hook)(const char *stage, void *ud);
	void *commit_hook_ud;
	/* coordinator tiers (docs/COORDINATOR.md, "Tiers"): a regional
	 * coordinator never starts a round by itself (fed_tier_round does) and
	 * never commits: its closed round's weighted mean goes to tier_done */
	struct fed_tier_hooks *tier;
} fed_opts;

/* Defaults: min_nodes 2, fraction 1, min_updates 1, deadline 60 s, start
 * delay 1 s, gap 0, grace 5 s, heartbeat 5 s, 10000 nodes, downlink q8/32,
 * keep 5 versions, max_msg 256 MiB, FedAvg, train params local_steps 10,
 * lr 1e-4, batch 4, ctx 256, uplink q4/32 with error feedback. spec, arch
 * and base_sha must be filled in. */
void fed_opts_default(fed_opts *o);
/* 0 or FL_EINVAL with a sentence naming the option. */
int fed_opts_check(const fed_opts *o, char *why, size_t whylen);

typedef struct fed_job fed_job;
typedef struct fed fed;

typedef struct fed_io {
	void *ud;
	/* Send the same bytes to every peer in peers[0..n). The bytes are valid
	 * only during the call. Failures are the channel's business (a peer
	 * that cannot be reached ends up in fed_peer_gone). */
	void (*send)(void *ud, const uint64_t *peers, size_t n, const uint8_t *data, size_t len);
	/* End a session (after Reject, Bye or a protocol violation). */
	void (*close)(void *ud, uint64_t peer, const char *why);
	/* Run fed_job_run(job) off the loop thread, then hand the job back to
	 * fed_job_done on the loop thread. NULL: jobs run inline. */
	void (*submit)(void *ud, fed_job *job);
} fed_io;

/* Builds the federation: the layout from opts->spec/arch, then the global
 * adapter from the store's newest valid version (checking that it belongs
 * to this federation: same layout) or, with an empty store, v0 from the
 * seed, committed as version 0. st may be NULL (memory only); m may be
 * NULL. A round that was open when the previous process died is recorded
 * as restarted in the journal. The store and metrics must outlive fed.
 * Errors: FL_EINVAL (options), FL_EMISMATCH (state dir of another
 * federation; logged), store/IO errors. */
int fed_new(const fed_opts *o, store *st, metrics *m, const fed_io *io, fed **out);
/* Jobs in flight must have completed (fed_idle). NULL ok. */
void fed_free(fed *f);

/* Session events from the channel. peer ids are never reused. */
void fed_peer_up(fed *f, uint64_t peer, const char *cn, uint64_t now_ms);
void fed_peer_gone(fed *f, uint64_t peer, uint64_t now_ms);
/* One application message: decodes (size cap, budget) and handles it. A
 * message that does not decode gets Error{MALFORMED} and the session is
 * closed. */
void fed_on_bytes(fed *f, uint64_t peer, const uint8_t *data, size_t len, uint64_t now_ms);
/* A decoded message; fed takes ownership of m. wire_len is for metrics. */
void fed_on_message(fed *f, uint64_t peer, wire_msg *m, size_t wire_len, uint64_t now_ms);

/* Timers: starts rounds, closes them at the deadline, drops participants
 * gone past the grace period. Call when fed_timeout says so (or more). */
void fed_tick(fed *f, uint64_t now_ms);
/* Milliseconds until fed_tick has something to do; -1 = nothing timed. */
int64_t fed_timeout(const fed *f, uint64_t now_ms);

/* Worker side: does the job's CPU work. Touches only the job and the
 * aggregator/store, which the loop thread leaves alone while jobs run. */
void fed_job_run(fed_job *job);
/* Loop side: applies a finished job's result (acks, commit, RoundEnd). */
void fed_job_done(fed *f, fed_job *job, uint64_t now_ms);

/* SIGTERM: abandons a collecting round (after in-flight updates finish),
 * lets a commit in progress finish and be written, tells every node Bye,
 * and stops starting rounds. */
void fed_shutdown(fed *f, uint64_t now_ms);
/* True when the federation has stopped (shutdown or max_rounds) and no
 * job is in flight: the caller may exit. */
int fed_done(const fed *f);
/* No job in flight. */
int fed_idle(const fed *f);

/* Introspection (tests, status, metrics). */
enum fed_state { FED_IDLE = 0, FED_COLLECTING, FED_CLOSING, FED_COMMITTING, FED_STOPPED };
enum fed_state fed_get_state(const fed *f);
const char *fed_state_name(enum fed_state s);
uint64_t fed_version(const fed *f);
void fed_version_sha(const fed *f, uint8_t out[32]);
const tset *fed_global(const fed *f); /* valid until the next commit */
uint64_t fed_round_id(const fed *f);  /* latest round started (0 = none) */
uint64_t fed_rounds_committed(const fed *f);
uint64_t fed_rounds_abandoned(const fed *f);
/* True while a state-directory write failure holds rounds back (the
 * back-off: 1 s doubling to FED_BACKOFF_MAX_MS between retries). */
#define FED_BACKOFF_MAX_MS 60000u
int fed_backing_off(const fed *f);
/* Privacy ledger (rounds charged, epsilon at delta); NULL with privacy off. */
const dp_ledger *fed_privacy(const fed *f);
size_t fed_nodes_connected(const fed *f); /* joined sessions */
/* Participants of the open (or last) round: fills up to cap CNs, returns
 * the count. */
size_t fed_participants(const fed *f, const char **cns, size_t cap);
/* Node state for a CN: "idle" "training" "uploading" "gone", NULL if
 * unknown. */
const char *fed_node_state(const fed *f, const char *cn);

/* ---- coordinator tiers (the regional side; coordinator/upstream.h) ---- */

/* What a regional round produced: the sample-weighted mean of its accepted
 * updates (valid during the call only) and their combined weight, or
 * ok = 0 with detail saying why there is none. */
typedef struct fed_tier_result {
	uint64_t round_id; /* the region's own round id */
	int ok;
	const tset *mean;
	uint64_t weight; /* sum of the accepted updates' sample weights */
	size_t accepted;
	double train_loss; /* sample-weighted, when has_train_loss */
	int has_train_loss;
	const char *detail;
} fed_tier_result;

typedef struct fed_tier_hooks {
	void *ud;
	void (*done)(void *ud, const fed_tier_result *r); /* loop thread */
} fed_tier_hooks;

/* Regional round: takes the root's version (version, sha = its
 * tset_fingerprint, global: owned by fed from here on, also on failure),
 * and starts a round with this coordinator's nodes at it, with the root's
 * training parameters and a deadline of deadline_ms. delta/delta_len: the
 * root's packed AdapterPayload that took fed's current version to this one
 * (forwarded as is to nodes holding the parent), or NULL (nodes that lack
 * the version get a snapshot). The adopted version is written to the
 * state directory. Needs opts.tier and an idle federation (FL_EBUSY
 * otherwise); FL_EAGAIN when fewer than rounds.min_nodes nodes are
 * connected (no round); FL_EMISMATCH when global's layout or sha is wrong. */
int fed_tier_round(fed *f, uint64_t version, const uint8_t sha[32], tset *global,
                   const uint8_t *delta, size_t delta_len, const Fedlora__TrainParams *tp,
                   uint32_t deadline_ms, uint64_t now_ms);
/* The root moved on: closes a collecting regional round now (its result
 * still goes to tier.done). */
void fed_tier_abort(fed *f, uint64_t now_ms);
/* The root said the federation is finished: Bye "federation finished" to
 * the region's nodes and stop (as fed_shutdown when a round is open). */
void fed_tier_finish(fed *f, uint64_t now_ms);

/* Encodes an Envelope holding a RoundStart whose adapter field is the
 * already-encoded AdapterPayload `payload` (so a large payload is packed
 * once per version, not once per node). rs->adapter must be NULL. */
int fed_encode_round_start(const Fedlora__RoundStart *rs, uint64_t seq, const uint8_t *payload,
                           size_t payload_len, buf *out);

#endif
