/* client — the node's federation protocol as a sans-IO state machine.
 *
 * The machine owns no socket, thread or clock. The run loop (node/run.c)
 * feeds it channel events (session up/down), decoded Envelopes, timer ticks
 * with an explicit monotonic `now_ms`, and the results of training and
 * evaluation jobs; it answers with actions to carry out, in order:
 * envelopes to send, channel readiness/reset, jobs to start or cancel, and
 * a fatal stop. It keeps the node's durable state through a node state_dir
 * (node/state.h). Unit tests drive it with scripted envelopes.
 *
 * Protocol (proto/fedlora.proto), node side:
 *  - session up: send Join (software version, capabilities, sample count,
 *    base-model fingerprint, adapter shape fingerprint, held version and
 *    its SHA-256, LoRA spec, last uploaded round);
 *  - Welcome: the session is ready; an upload left unacknowledged by a
 *    disconnect is resent if the round can still be open (the global
 *    version has not moved since), else dropped (a round missed while
 *    offline is skipped, never replayed); the task of an asynchronous
 *    federation (RoundStart.async_buffer > 0) is resent, or trained on,
 *    whatever the version (the coordinator weighs or refuses it);
 *    Reject: fatal for a base-model, adapter, version or identity
 *    refusal, retried after back-off for
 *    "full" / "shutting down";
 *  - RoundStart: bring the global adapter to the announced version (apply
 *    the delta or take the snapshot), verify its SHA-256 against the
 *    announcement, on a mismatch or a gap send one SnapshotRequest; persist
 *    it; evaluate it on held-out data (once per version); train;
 *  - TrainParams.train_rank r > 0: the trainer trains rank slots 0..r-1
 *    only and the update carries those slices (lora_a [r, in], lora_b
 *    [out, r]); error feedback keeps a residual of the slices;
 *  - training done: delta = local - global, quantized per tensor with the
 *    round's uplink format, stochastic rounding and error feedback (the
 *    residual becomes durable only when the coordinator accepts the update,
 *    so an update lost in a crash does not lose its error); with FFA-LoRA
 *    only the lora_b tensors are sent; send Update and wait for UpdateAck.
 *    A RoundStart for a round already uploaded resends the same bytes
 *    (idempotent by round id);
 *  - Heartbeat every heartbeat_ms with the state (idle / training /
 *    uploading) and the last held-out loss; RoundEnd appends one line to
 *    state_dir/metrics.jsonl.
 *
 * Threads: one ncl belongs to the network thread. */
#ifndef FL_NODE_CLIENT_H
#define FL_NODE_CLIENT_H
#include <stddef.h>
#include <stdint.h>

#include "fedlora.pb-c.h"
#include <openssl/evp.h>
#include <openssl/x509.h>
#include "state.h"
#include "tensor.h"
#include "trainer_iface.h"

typedef struct ncl_config {
	const char *software_version;
	uint8_t base_fp[32];      /* SHA-256 identifying the base model */
	lora_spec lora;           /* the configured adapter spec */
	const tset *layout;       /* borrowed for the ncl's life: adapter layout */
	uint64_t sample_count;    /* training samples (FedAvg weight) */
	const char *capabilities; /* extra capabilities, comma-separated (may be NULL) */
	uint32_t heartbeat_ms;    /* 0: the coordinator's Welcome value (default 5000) */
	int eval;                 /* evaluate every new global version */
	size_t max_msg;           /* cap on one encoded message */
	uint64_t node_seed;       /* mixes into the stochastic-rounding streams */
	uint32_t max_local_steps; /* refuse rounds asking more (0: no cap) */
	/* per-node rank (docs/TRAINING.md, "Per-node rank"): the most rank
	 * slots this node trains (Join.max_rank; 0: every slot, no slices) and
	 * the uplink formats it accepts (Join.upload_formats; n 0: any) */
	uint32_t max_rank;
	int upload_formats[8];
	size_t n_upload_formats;
	/* secure aggregation (borrowed for the ncl's life; all three set: the
	 * node announces "secagg"): the TLS key signs the round keys, the
	 * certificate goes with them, the CA verifies the neighbours' */
	EVP_PKEY *sa_key;
	X509 *sa_cert;
	X509_STORE *sa_ca;
	const char *sa_dump_dir; /* tests only: the grid vector before masking */
	/* tests only (FEDLORA_TEST_SECAGG_DIE): "PHASE:ROUND[,PHASE:ROUND...]";
	 * the node SIGKILLs itself on entering PHASE of secure round ROUND:
	 * keys (before advertising), shares (its shares sent, the routed ones
	 * just arrived), masked (its masked input acknowledged), unmask (the
	 * unmask request just arrived, nothing revealed) */
	const char *sa_die_at;
} ncl_config;

enum ncl_job_kind { NCL_JOB_TRAIN = 1, NCL_JOB_EVAL = 2 };

/* A job for the training thread. Whoever holds the pointer owns it
 * (ncl_job_free); adapter is the job's own copy. */
typedef struct ncl_job {
	uint64_t id;
	enum ncl_job_kind kind;
	uint64_t round_id;
	uint64_t version;            /* global version of `adapter` */
	tset *adapter;               /* train from / evaluate this */
	Fedlora__TrainParams params; /* TRAIN: the round's parameters (scalars only) */
} ncl_job;
void ncl_job_free(ncl_job *j);

enum ncl_act_kind {
	NCL_ACT_SEND = 1, /* send data[0..len) on the channel */
	NCL_ACT_READY,    /* chan_client_set_ready */
	NCL_ACT_RESET,    /* chan_client_reset(why): re-handshake after back-off */
	NCL_ACT_JOB,      /* hand `job` to the training thread */
	NCL_ACT_CANCEL,   /* cancel job `job_id` if it is still queued or running */
	NCL_ACT_FATAL,    /* stop the node: `code` (FL_E*) and `why` */
};

typedef struct ncl_action {
	enum ncl_act_kind kind;
	uint8_t *data; /* SEND: malloc'd, owned by the receiver of the action */
	size_t len;
	int body;          /* SEND: Fedlora__Envelope__BodyCase of data */
	uint64_t round_id; /* SEND of an Update: its round */
	ncl_job *job;      /* JOB: owned by the receiver */
	uint64_t job_id;
	int code;
	char why[256];
} ncl_action;
/* Frees what an action still owns (data, job). */
void ncl_action_fini(ncl_action *a);

typedef struct ncl ncl;

/* cfg is copied (layout and strings stay borrowed); st stays owned by the
 * caller and must outlive the ncl. */
int ncl_new(const ncl_config *cfg, nst *st, ncl **out);
void ncl_free(ncl *c);

/* Inputs. Envelopes are decoded by the caller (wire_decode); wire_len is
 * the size it had on the wire (byte counters). */
void ncl_on_up(ncl *c, uint64_t now_ms);
void ncl_on_down(ncl *c, uint64_t now_ms, const char *why);
void ncl_on_envelope(ncl *c, const Fedlora__Envelope *env, size_t wire_len, uint64_t now_ms);
/* A training job finished: rc 0 with `local` (ownership passes to the ncl)
 * and res, or an error (local NULL). */
void ncl_on_train_done(ncl *c, uint64_t job_id, int rc, tset *local, const ntr_result *res,
                       uint64_t now_ms);
void ncl_on_eval_done(ncl *c, uint64_t job_id, int rc, double loss, uint64_t now_ms);
void ncl_on_progress(ncl *c, uint64_t job_id, uint32_t step, uint32_t total, double loss);
/* Timers (heartbeat). Call at least when ncl_timeout() says. */
void ncl_tick(ncl *c, uint64_t now_ms);
/* Milliseconds until the next timer (-1: none). */
int ncl_timeout(const ncl *c, uint64_t now_ms);

/* Graceful stop: cancels jobs; an update awaiting its ack gets up to
 * grace_ms to be acknowledged. ncl_stop_done() tells when the run loop may
 * send the final Bye (ncl_bye) and exit. */
void ncl_stop(ncl *c, uint64_t now_ms, uint32_t grace_ms);
int ncl_stop_done(const ncl *c, uint64_t now_ms);
void ncl_bye(ncl *c, const char *reason);

/* The Bye reason with which the coordinator ends the federation (its
 * rounds.max_rounds reached; coordinator/fed.c says it). Any other Bye
 * reason (e.g. "coordinator shutting down") means it may come back. */
#define NCL_BYE_FINISHED "federation finished"
/* 1 once the coordinator said Bye with NCL_BYE_FINISHED: there will be no
 * more rounds, and the run loop stops (exit 0) instead of reconnecting. */
int ncl_finished(const ncl *c);

/* Next action: 0 and *a filled (call ncl_action_fini after carrying it
 * out), FL_EAGAIN when none is pending. */
int ncl_next(ncl *c, ncl_action *a);

/* Introspection (tests, logs). */
enum ncl_phase {
	NCL_OFFLINE = 0, /* no session */
	NCL_JOINING,     /* Join sent, waiting for Welcome */
	NCL_IDLE,        /* welcomed, no round */
	NCL_SYNCING,     /* SnapshotRequest sent */
	NCL_TRAINING,
	NCL_UPLOADING, /* Update sent (or waiting for a session), no ack yet */
	NCL_STOPPED,   /* fatal or stopped */
};
enum ncl_phase ncl_phase(const ncl *c);
const char *ncl_phase_name(enum ncl_phase p);
uint64_t ncl_round(const ncl *c);
/* Size of the last Update sent and its f32 equivalent (same envelope with
 * every tensor as raw f32). */
void ncl_last_upload(const ncl *c, size_t *bytes, size_t *fp32_bytes);

#endif
