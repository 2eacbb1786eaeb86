/* client — see client.h. */
#include "client.h"
#include "lora.h"

#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "lrank.h"
#include "qtensor.h"
#include "quant.h"
#include "sagrid.h"
#include "sawire.h"
#include "ddg.h"
#include "secagg.h"
#include "sha.h"
#include "wire.h"

#define NCL_DEFAULT_HB_MS 5000u
#define NCL_MIN_HB_MS     50u
#define NCL_MAX_CAPS      32

enum rstate { R_SYNC = 1, R_TRAIN, R_UPLOAD, R_DONE };

typedef struct nround {
	int active;
	enum rstate st;
	uint64_t id, version;
	uint8_t sha[32];
	Fedlora__TrainParams params;
	uint64_t start_ms;
	uint64_t bytes_down;
	int snapshot_requested;
	uint64_t train_job;
	int trained;
	ntr_result res;
	double eval_loss; /* held-out loss of global `version` (NaN: none) */
	uint32_t step, steps;
	double step_loss;
	int async; /* RoundStart.async_buffer > 0: a task of asynchronous aggregation */
} nround;

typedef struct nupload {
	int active; /* bytes hold the Update for round_id */
	int acked;  /* an answer came (accepted, duplicate or refused) */
	int accepted;
	uint64_t round_id, base_version;
	uint8_t *bytes;
	size_t len, fp32_len;
	tset *residual_new; /* committed when accepted */
	int async;          /* an async task's update: resent whatever the version */
} nupload;

/* A secure round in progress (sec_* below). */
typedef struct nsec {
	int active;
	uint64_t round_id;
	sa_client *cl;
	sa_round r;
	uint32_t index;
	char (*ids)[SA_MAX_NODE_ID + 1]; /* participants, index order */
	float *steps;                    /* grid step per exchanged tensor */
	size_t nt;
	double clip;
	uint32_t bits, w, w_max;
	double dp_sigma; /* distributed DP: discrete Gaussian sd per element, 0 = none */
	int shared, received, masked, revealed;
	uint32_t *x; /* the update on the grid (dim values mod 2^m) once trained */
	tset *resid; /* its error-feedback residual, until the masked input goes */
} nsec;

struct ncl {
	ncl_config cfg;
	nst *st;
	uint8_t shape_fp[32];
	int session_up, welcomed, stopping, stopped;
	int finished; /* Bye NCL_BYE_FINISHED received */
	uint64_t stop_deadline;
	uint32_t hb_ms;
	uint64_t next_hb, hb_seq, env_seq;
	char node_id[128];
	uint64_t next_job;
	uint64_t eval_job, eval_job_version;
	/* DownFinal received: DownFinalEval owed for this version once its
	 * evaluation is done */
	int fin_pending;
	uint64_t fin_version;
	nround r;
	nupload up;
	nsec sa;
	/* action queue */
	ncl_action *q;
	size_t qhead, qlen, qcap;
	/* Join capabilities */
	char *caps[NCL_MAX_CAPS];
	size_t ncaps;
	char *caps_extra;
};

static const char *const base_caps[] = {"f32", "f16", "q8", "q4", "q2", "ef", "sr", "ffa", "eval"};

/* ---- small helpers ---- */

void ncl_job_free(ncl_job *j)
{
	if (!j)
		return;
	tset_free(j->adapter);
	free(j);
}

void ncl_action_fini(ncl_action *a)
{
	free(a->data);
	a->data = NULL;
	ncl_job_free(a->job);
	a->job = NULL;
}

static int push(ncl *c, const ncl_action *a)
{
	if (c->qhead > 0 && c->qhead == c->qlen) {
		c->qhead = c->qlen = 0;
	}
	if (c->qlen == c->qcap) {
		if (c->qhead > 0) {
			memmove(c->q, c->q + c->qhead, (c->qlen - c->qhead) * sizeof *c->q);
			c->qlen -= c->qhead;
			c->qhead = 0;
		} else {
			size_t nc = c->qcap ? c->qcap * 2 : 16;
			ncl_action *nq = realloc(c->q, nc * sizeof *nq);
			if (!nq)
				return FL_ENOMEM;
			c->q = nq;
			c->qcap = nc;
		}
	}
	c->q[c->qlen++] = *a;
	return 0;
}

int ncl_next(ncl *c, ncl_action *a)
{
	if (c->qhead == c->qlen)
		return FL_EAGAIN;
	*a = c->q[c->qhead++];
	return 0;
}

static void fatal(ncl *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fatal(ncl *c, int code, const char *fmt, ...)
{
	ncl_action a = {.kind = NCL_ACT_FATAL, .code = code};
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(a.why, sizeof a.why, fmt, ap);
	va_end(ap);
	LOGE("client", "%s", a.why);
	c->stopped = 1;
	if (push(c, &a) != 0)
		LOGE("client", "out of memory queueing a fatal stop");
}

static void act_simple(ncl *c, enum ncl_act_kind k, const char *why)
{
	ncl_action a = {.kind = k};
	if (why)
		snprintf(a.why, sizeof a.why, "%s", why);
	if (push(c, &a) != 0)
		fatal(c, FL_ENOMEM, "out of memory");
}

static void cancel_job(ncl *c, uint64_t id)
{
	if (!id)
		return;
	ncl_action a = {.kind = NCL_ACT_CANCEL, .job_id = id};
	if (push(c, &a) != 0)
		fatal(c, FL_ENOMEM, "out of memory");
}

/* Queues already-encoded bytes (copied). */
static int send_bytes(ncl *c, const uint8_t *p, size_t n)
{
	/* only cached Updates are sent this way */
	ncl_action a = {.kind = NCL_ACT_SEND,
	                .len = n,
	                .body = FEDLORA__ENVELOPE__BODY_UPDATE,
	                .round_id = c->up.round_id};
	a.data = malloc(n ? n : 1);
	if (!a.data)
		return FL_ENOMEM;
	memcpy(a.data, p, n);
	int rc = push(c, &a);
	if (rc) {
		free(a.data);
		return rc;
	}
	nst_counters_mut(c->st)->bytes_up += n;
	return 0;
}

/* Encodes env into a malloc'd buffer. */
static int encode(ncl *c, Fedlora__Envelope *env, uint8_t **out, size_t *len)
{
	buf b;
	buf_init(&b, c->cfg.max_msg);
	env->seq = ++c->env_seq;
	int rc = wire_encode(env, c->cfg.max_msg, &b);
	if (rc) {
		buf_fini(&b);
		LOGE("client", "cannot encode %s: %s", wire_body_name(env), fl_strerror(rc));
		return rc;
	}
	*out = b.data;
	*len = b.len;
	return 0;
}

static int send_env(ncl *c, Fedlora__Envelope *env)
{
	uint8_t *p = NULL;
	size_t n = 0;
	int rc = encode(c, env, &p, &n);
	if (rc)
		return rc;
	ncl_action a = {.kind = NCL_ACT_SEND, .data = p, .len = n, .body = (int)env->body_case};
	rc = push(c, &a);
	if (rc) {
		free(p);
		return rc;
	}
	nst_counters_mut(c->st)->bytes_up += n;
	return 0;
}

static void send_error(ncl *c, Fedlora__Error__Code code, const char *detail)
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Error e = FEDLORA__ERROR__INIT;
	e.code = code;
	e.detail = (char *)detail;
	env.body_case = FEDLORA__ENVELOPE__BODY_ERROR;
	env.error = &e;
	if (c->welcomed)
		send_env(c, &env);
}

static void hex32(const uint8_t *p, size_t n, char out[65])
{
	if (n != 32) {
		snprintf(out, 65, "(%zu bytes)", n);
		return;
	}
	hex_encode(p, 32, out);
}

static void save_state(ncl *c)
{
	if (nst_save(c->st) != 0)
		LOGW("client", "node state not saved (see above); continuing");
}

static void drop_upload(ncl *c)
{
	free(c->up.bytes);
	tset_free(c->up.residual_new);
	memset(&c->up, 0, sizeof c->up);
}

/* ---- lifecycle ---- */

int ncl_new(const ncl_config *cfg, nst *st, ncl **out)
{
	if (!cfg || !cfg->layout || !st || !cfg->sample_count)
		return FL_EINVAL;
	ncl *c = calloc(1, sizeof *c);
	if (!c)
		return FL_ENOMEM;
	c->cfg = *cfg;
	if (!c->cfg.max_msg)
		c->cfg.max_msg = 128u << 20;
	if (!c->cfg.software_version)
		c->cfg.software_version = FEDLORA_VERSION;
	c->st = st;
	c->r.eval_loss = NAN;
	int rc = tset_shape_fingerprint(cfg->layout, c->shape_fp);
	if (rc) {
		free(c);
		return rc;
	}
	for (size_t i = 0; i < sizeof base_caps / sizeof base_caps[0]; i++)
		c->caps[c->ncaps++] = (char *)base_caps[i];
	if (cfg->capabilities && *cfg->capabilities) {
		c->caps_extra = strdup(cfg->capabilities);
		if (!c->caps_extra) {
			free(c);
			return FL_ENOMEM;
		}
		char *p = c->caps_extra;
		while (*p && c->ncaps < NCL_MAX_CAPS) {
			while (*p == ',' || *p == ' ')
				*p++ = 0;
			if (!*p)
				break;
			c->caps[c->ncaps++] = p;
			while (*p && *p != ',' && *p != ' ')
				p++;
		}
	}
	if (cfg->sa_key && cfg->sa_cert && cfg->sa_ca && c->ncaps < NCL_MAX_CAPS)
		c->caps[c->ncaps++] = "secagg";
	c->hb_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : NCL_DEFAULT_HB_MS;
	*out = c;
	return 0;
}

void ncl_free(ncl *c)
{
	if (!c)
		return;
	ncl_action a;
	while (ncl_next(c, &a) == 0)
		ncl_action_fini(&a);
	free(c->q);
	drop_upload(c);
	sa_client_free(c->sa.cl);
	free(c->sa.ids);
	free(c->sa.steps);
	free(c->sa.x);
	tset_free(c->sa.resid);
	free(c->caps_extra);
	free(c);
}

/* ---- session ---- */

static void send_join(ncl *c)
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Join j = FEDLORA__JOIN__INIT;
	Fedlora__LoraSpec spec;
	char *names[LORA_NTARGETS];
	lora_spec_to_proto(&c->cfg.lora, &spec, names);
	j.software_version = (char *)c->cfg.software_version;
	j.capabilities = c->caps;
	j.n_capabilities = c->ncaps;
	j.sample_count = c->cfg.sample_count;
	j.base_fingerprint.data = c->cfg.base_fp;
	j.base_fingerprint.len = 32;
	j.adapter_fingerprint.data = c->shape_fp;
	j.adapter_fingerprint.len = 32;
	j.have_version = nst_version(c->st);
	if (nst_global(c->st)) {
		j.have_sha256.data = (uint8_t *)nst_version_sha(c->st);
		j.have_sha256.len = 32;
	}
	j.lora = &spec;
	j.max_rank = c->cfg.max_rank;
	Fedlora__QFormat uf[8];
	for (size_t i = 0; i < c->cfg.n_upload_formats && i < 8; i++)
		uf[i] = (Fedlora__QFormat)c->cfg.upload_formats[i];
	j.upload_formats = uf;
	j.n_upload_formats = c->cfg.n_upload_formats < 8 ? c->cfg.n_upload_formats : 8;
	/* With an upload still unacknowledged, say so: the coordinator then
	 * waits for the resend instead of announcing the round again. */
	j.last_round_id = c->up.active && !c->up.acked
	                      ? c->up.round_id
	                      : nst_counters_get(c->st)->last_round_uploaded;
	env.body_case = FEDLORA__ENVELOPE__BODY_JOIN;
	env.join = &j;
	if (send_env(c, &env) != 0)
		fatal(c, FL_ENOMEM, "cannot queue Join");
	LOGI("client", "session up: joining (have version %" PRIu64 ", %" PRIu64 " samples)",
	     j.have_version, j.sample_count);
}

void ncl_on_up(ncl *c, uint64_t now_ms)
{
	(void)now_ms;
	if (c->stopped)
		return;
	c->session_up = 1;
	c->welcomed = 0;
	send_join(c);
}

void ncl_on_down(ncl *c, uint64_t now_ms, const char *why)
{
	(void)now_ms;
	if (c->session_up)
		LOGI("client", "session down: %s", why ? why : "");
	c->session_up = 0;
	c->welcomed = 0;
}

static void on_welcome(ncl *c, const Fedlora__Welcome *w, uint64_t now)
{
	if (c->welcomed) {
		LOGW("client", "second Welcome on one session ignored");
		return;
	}
	snprintf(c->node_id, sizeof c->node_id, "%s", w->node_id ? w->node_id : "");
	for (char *p = c->node_id; *p; p++) /* goes into JSON lines and logs */
		if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '_';
	if (w->lora && w->lora->n_targets) {
		lora_spec fed;
		char err[200];
		if (lora_spec_from_proto(w->lora, &fed, err, sizeof err) != 0) {
			fatal(c, FL_EPROTO, "coordinator sent an invalid LoRA spec: %s", err);
			return;
		}
		if (lora_spec_compare(&c->cfg.lora, &fed, err, sizeof err) != 0) {
			fatal(c, FL_ECONFIG,
			      "this node's LoRA spec differs from the federation's (%s, node vs "
			      "coordinator): fix [lora] in the node config",
			      err);
			return;
		}
	}
	c->welcomed = 1;
	if (!c->cfg.heartbeat_ms && w->heartbeat_ms)
		c->hb_ms = w->heartbeat_ms < NCL_MIN_HB_MS ? NCL_MIN_HB_MS : w->heartbeat_ms;
	c->next_hb = now + c->hb_ms;
	nst_counters_mut(c->st)->sessions++;
	act_simple(c, NCL_ACT_READY, NULL);
	LOGI("client",
	     "welcomed as '%s' by coordinator %s: global version %" PRIu64 " (have %" PRIu64 ")",
	     c->node_id, w->coordinator_version ? w->coordinator_version : "?", w->global_version,
	     nst_version(c->st));
	/* An upload cut by the disconnect: resend while its round can still be
	 * open (the global has not moved), else skip the round. */
	if (c->up.active && !c->up.acked) {
		if (w->global_version == c->up.base_version || c->up.async) {
			LOGI("client", "resending the update for round %" PRIu64 " after reconnect",
			     c->up.round_id);
			if (send_bytes(c, c->up.bytes, c->up.len) == 0)
				nst_counters_mut(c->st)->updates_sent++;
		} else {
			LOGI("client",
			     "round %" PRIu64 " closed while offline (global now %" PRIu64
			     "): its update is dropped",
			     c->up.round_id, w->global_version);
			if (c->r.active && c->r.id == c->up.round_id)
				c->r.active = 0;
			drop_upload(c);
		}
	}
	if (c->r.active && c->r.st == R_TRAIN && w->global_version != c->r.version && !c->r.async) {
		LOGI("client",
		     "round %" PRIu64 " closed while offline (global now %" PRIu64
		     "): local training abandoned",
		     c->r.id, w->global_version);
		cancel_job(c, c->r.train_job);
		c->r.active = 0;
	}
	if (c->r.active && c->r.st == R_SYNC)
		c->r.active = 0; /* the request died with the session */
	save_state(c);
}

static void on_reject(ncl *c, const Fedlora__Reject *r)
{
	const char *d = r->detail && *r->detail ? r->detail : "no detail";
	switch (r->reason) {
	case FEDLORA__REJECT__REASON__REASON_BASE_MISMATCH:
		fatal(c, FL_EMISMATCH,
		      "coordinator rejected this node: base model mismatch (%s); the node's "
		      "[model] path must be the federation's base model",
		      d);
		return;
	case FEDLORA__REJECT__REASON__REASON_ADAPTER_MISMATCH:
		fatal(c, FL_EMISMATCH,
		      "coordinator rejected this node: adapter layout or LoRA spec mismatch (%s)",
		      d);
		return;
	case FEDLORA__REJECT__REASON__REASON_VERSION:
		fatal(c, FL_EUNSUPPORTED,
		      "coordinator rejected this node: software version not supported (%s)", d);
		return;
	case FEDLORA__REJECT__REASON__REASON_NOT_ALLOWED:
		fatal(c, FL_EAUTH, "coordinator rejected this node: identity not allowed (%s)", d);
		return;
	case FEDLORA__REJECT__REASON__REASON_RANK:
		fatal(c, FL_EMISMATCH,
		      "coordinator rejected this node: it cannot train the rank or upload the "
		      "format it is assigned (%s)",
		      d);
		return;
	default:
		LOGW("client", "coordinator refused the session (%s: %s); retrying after back-off",
		     r->reason == FEDLORA__REJECT__REASON__REASON_FULL            ? "full"
		     : r->reason == FEDLORA__REJECT__REASON__REASON_SHUTTING_DOWN ? "shutting down"
		                                                                  : "unspecified",
		     d);
		c->welcomed = 0;
		act_simple(c, NCL_ACT_RESET, "rejected by the coordinator");
	}
}

/* ---- bringing the global adapter to a version ---- */

/* Result of apply_payload besides errors. */
enum { AP_SAME = 1, AP_NEW = 2 };

/* Decodes the payload into a new verified adapter (*out), or says the held
 * one already is the announced version. FL_EMISMATCH: a gap or a hash
 * mismatch (ask for a snapshot); FL_EPROTO: malformed. */
static int apply_payload(ncl *c, const Fedlora__RoundStart *rs, tset **out, char *why, size_t wl)
{
	const Fedlora__AdapterPayload *p = rs->adapter;
	const tset *have = nst_global(c->st);
	uint64_t hv = nst_version(c->st);
	tset *t = NULL;
	qtensor *qs = NULL;
	size_t nq = 0;
	int rc = 0;
	if (rs->global_sha256.len != 32) {
		snprintf(why, wl, "RoundStart carries no SHA-256 of version %" PRIu64,
		         rs->global_version);
		return FL_EPROTO;
	}
	if (!p || p->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_UNSPECIFIED) {
		if (p && p->n_tensors) {
			snprintf(why, wl, "adapter payload of unspecified kind");
			return FL_EPROTO;
		}
		if (have && hv == rs->global_version &&
		    memcmp(nst_version_sha(c->st), rs->global_sha256.data, 32) == 0)
			return AP_SAME;
		snprintf(why, wl,
		         "no adapter sent but this node holds version %" PRIu64 ", not %" PRIu64,
		         hv, rs->global_version);
		return FL_EMISMATCH;
	}
	if (p->to_version != rs->global_version) {
		snprintf(why, wl, "payload leads to version %" PRIu64 ", round announces %" PRIu64,
		         p->to_version, rs->global_version);
		return FL_EPROTO;
	}
	if (p->to_sha256.len && (p->to_sha256.len != 32 ||
	                         memcmp(p->to_sha256.data, rs->global_sha256.data, 32) != 0)) {
		snprintf(why, wl, "payload and round announce different SHA-256");
		return FL_EPROTO;
	}
	size_t want = tset_count(c->cfg.layout);
	if (p->n_tensors > want) {
		snprintf(why, wl, "payload has %zu tensors, the adapter %zu", p->n_tensors, want);
		return FL_EPROTO;
	}
	if (p->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA && p->n_tensors == 0 &&
	    p->from_version == p->to_version && have && hv == rs->global_version) {
		/* the empty delta: "you already hold it" */
		if (memcmp(nst_version_sha(c->st), rs->global_sha256.data, 32) == 0)
			return AP_SAME;
		snprintf(why, wl, "this node's version %" PRIu64 " has another SHA-256", hv);
		return FL_EMISMATCH;
	}
	if (p->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA) {
		if (!have || p->from_version != hv) {
			snprintf(why, wl,
			         "delta from version %" PRIu64 " but this node holds %" PRIu64,
			         p->from_version, hv);
			return FL_EMISMATCH;
		}
		if ((rc = tset_clone(have, &t)) != 0)
			return rc;
	} else if (p->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT) {
		if (p->n_tensors != want) {
			snprintf(why, wl, "snapshot has %zu tensors, the adapter %zu", p->n_tensors,
			         want);
			return FL_EPROTO;
		}
		if ((rc = tset_zeros_like(c->cfg.layout, &t)) != 0)
			return rc;
	} else {
		snprintf(why, wl, "unknown adapter payload kind %d", (int)p->kind);
		return FL_EPROTO;
	}
	qs = calloc(p->n_tensors ? p->n_tensors : 1, sizeof *qs);
	if (!qs) {
		rc = FL_ENOMEM;
		goto out;
	}
	for (nq = 0; nq < p->n_tensors; nq++) {
		qt_init(&qs[nq]);
		const Fedlora__QTensor *m = p->tensors[nq];
		const char *nm = m && m->name ? m->name : "";
		const tensor *lt = tset_find(c->cfg.layout, nm);
		if (!lt) {
			snprintf(why, wl, "payload tensor '%.80s' is not part of the adapter", nm);
			rc = FL_EPROTO;
			nq++;
			goto out;
		}
		qt_limits lim = {lt->n};
		char qwhy[160];
		if ((rc = qt_view_proto(m, &lim, &qs[nq], qwhy, sizeof qwhy)) != 0) {
			snprintf(why, wl, "payload tensor '%.80s': %s", nm, qwhy);
			rc = FL_EPROTO;
			nq++;
			goto out;
		}
	}
	if (p->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA) {
		/* checks names, shapes and duplicates before touching t */
		if ((rc = quant_apply_set(t, qs, nq)) != 0) {
			snprintf(why, wl, "delta does not fit the adapter: %s", fl_strerror(rc));
			rc = FL_EPROTO;
			goto out;
		}
	} else {
		for (size_t i = 0; i < nq; i++) {
			tensor *dt = tset_find(t, qs[i].name);
			int dup = 0;
			for (size_t k = 0; k < i; k++)
				dup |= strcmp(qs[k].name, qs[i].name) == 0;
			if (dup || qs[i].ndim != dt->ndim ||
			    memcmp(qs[i].shape, dt->shape, dt->ndim * sizeof(uint64_t)) != 0 ||
			    quant_decode(&qs[i], dt->data, dt->n) != 0) {
				snprintf(why, wl, "snapshot tensor '%.80s' %s", qs[i].name,
				         dup ? "appears twice" : "has the wrong shape");
				rc = FL_EPROTO;
				goto out;
			}
		}
	}
	uint8_t got[32];
	if ((rc = tset_fingerprint(t, got)) != 0)
		goto out;
	if (memcmp(got, rs->global_sha256.data, 32) != 0) {
		char a[65], b[65];
		hex32(got, 32, a);
		hex32(rs->global_sha256.data, 32, b);
		snprintf(why, wl,
		         "version %" PRIu64 " after applying the %s has SHA-256 %.16s..., "
		         "announced %.16s...",
		         rs->global_version,
		         p->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA ? "delta"
		                                                               : "snapshot",
		         a, b);
		rc = FL_EMISMATCH;
		goto out;
	}
	*out = t;
	t = NULL;
	rc = AP_NEW;
out:
	for (size_t i = 0; i < nq; i++)
		qt_fini(&qs[i]);
	free(qs);
	tset_free(t);
	return rc;
}

static void request_snapshot(ncl *c, uint64_t round_id)
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__SnapshotRequest sr = FEDLORA__SNAPSHOT_REQUEST__INIT;
	sr.have_version = nst_version(c->st);
	sr.round_id = round_id;
	env.body_case = FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST;
	env.snapshot_request = &sr;
	send_env(c, &env);
}

static ncl_job *new_job(ncl *c, enum ncl_job_kind kind, const tset *src)
{
	ncl_job *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
	if (tset_clone(src, &j->adapter) != 0) {
		free(j);
		return NULL;
	}
	j->id = ++c->next_job;
	j->kind = kind;
	j->version = nst_version(c->st);
	fedlora__train_params__init(&j->params);
	return j;
}

static int start_job(ncl *c, ncl_job *j)
{
	ncl_action a = {.kind = NCL_ACT_JOB, .job = j, .job_id = j->id};
	int rc = push(c, &a);
	if (rc)
		ncl_job_free(j);
	return rc;
}

static int params_ok(const ncl *c, const Fedlora__TrainParams *p, char *why, size_t wl)
{
	if (!p) {
		snprintf(why, wl, "RoundStart without training parameters");
		return FL_EPROTO;
	}
	if (qt_check_fmt_block((enum qt_fmt)p->uplink_format, p->uplink_block) != 0) {
		snprintf(why, wl, "uplink format %d with block %u is not valid",
		         (int)p->uplink_format, p->uplink_block);
		return FL_EPROTO;
	}
	if (p->local_steps == 0) {
		snprintf(why, wl, "RoundStart asks for 0 local steps");
		return FL_EPROTO;
	}
	if (c->cfg.max_local_steps && p->local_steps > c->cfg.max_local_steps) {
		snprintf(why, wl, "RoundStart asks for %u local steps, this node allows %u",
		         p->local_steps, c->cfg.max_local_steps);
		return FL_EPROTO;
	}
	if (!isfinite(p->lr) || p->lr <= 0) {
		snprintf(why, wl, "learning rate %g is not a positive number", (double)p->lr);
		return FL_EPROTO;
	}
	if (p->train_rank && (p->train_rank >= c->cfg.lora.rank || !c->cfg.max_rank ||
	                      p->train_rank > c->cfg.max_rank)) {
		snprintf(why, wl,
		         "RoundStart asks for rank %u of %u, this node trains at most %u "
		         "(node.max_rank)",
		         p->train_rank, c->cfg.lora.rank,
		         c->cfg.max_rank ? c->cfg.max_rank : c->cfg.lora.rank);
		return FL_EPROTO;
	}
	if (c->cfg.n_upload_formats) {
		int ok = 0;
		for (size_t i = 0; i < c->cfg.n_upload_formats && !ok; i++)
			ok = c->cfg.upload_formats[i] == (int)p->uplink_format;
		if (!ok) {
			snprintf(why, wl,
			         "RoundStart asks for uplink format %s, not in node.upload_formats",
			         qt_fmt_name((enum qt_fmt)p->uplink_format));
			return FL_EPROTO;
		}
	}
	return 0;
}

/* With TrainParams.train_rank r, the delta (full layout; slots r.. are 0
 * since the trainer left them alone) becomes its rank-r slices. */
static int slice_delta(ncl *c, tset **delta)
{
	uint32_t r = c->r.params.train_rank;
	if (!r)
		return 0;
	tset *s = NULL;
	int rc = lrank_slice_set(*delta, r, &s);
	if (rc)
		return rc;
	tset_free(*delta);
	*delta = s;
	return 0;
}

static void sec_reset(ncl *c);
static int sec_begin(ncl *c, const Fedlora__RoundStart *rs, char *why, size_t wl);

static void on_round_start(ncl *c, const Fedlora__RoundStart *rs, size_t wire_len, uint64_t now)
{
	char why[300] = "";
	if (c->stopping) {
		LOGI("client", "round %" PRIu64 " ignored: stopping", rs->round_id);
		return;
	}
	/* The same round again (a coordinator that restarted the round, or
	 * our own SnapshotRequest answered with a snapshot). */
	if (c->up.active && c->up.round_id == rs->round_id &&
	    c->up.base_version == rs->global_version) {
		LOGI("client", "round %" PRIu64 " announced again: resending its update",
		     rs->round_id);
		if (send_bytes(c, c->up.bytes, c->up.len) == 0)
			nst_counters_mut(c->st)->updates_sent++;
		c->up.acked = 0;
		c->up.accepted = 0;
		return;
	}
	if (c->r.active && c->r.id == rs->round_id && c->r.version == rs->global_version &&
	    c->r.st == R_TRAIN) {
		LOGI("client", "round %" PRIu64 " announced again while training: carrying on",
		     rs->round_id);
		return;
	}
	int again = c->r.active && c->r.id == rs->round_id && c->r.snapshot_requested;
	if (c->r.active && c->r.id != rs->round_id) {
		if (c->r.st == R_TRAIN) {
			LOGI("client",
			     "round %" PRIu64 " superseded by round %" PRIu64
			     ": local training abandoned",
			     c->r.id, rs->round_id);
			cancel_job(c, c->r.train_job);
		}
	}
	if (c->up.active && c->up.round_id != rs->round_id)
		drop_upload(c);
	if (params_ok(c, rs->params, why, sizeof why) != 0) {
		LOGW("client", "round %" PRIu64 " refused: %s", rs->round_id, why);
		send_error(c, FEDLORA__ERROR__CODE__CODE_MALFORMED, why);
		c->r.active = 0;
		return;
	}
	if (rs->secagg && !(c->sa.active && c->sa.round_id == rs->round_id)) {
		int src = sec_begin(c, rs, why, sizeof why);
		if (src) {
			LOGW("client", "secure round %" PRIu64 " refused: %s", rs->round_id, why);
			sec_reset(c);
			send_error(c, FEDLORA__ERROR__CODE__CODE_MALFORMED, why);
			c->r.active = 0;
			return;
		}
	} else if (!rs->secagg && c->sa.active) {
		sec_reset(c);
	}
	memset(&c->r, 0, sizeof c->r);
	c->r.active = 1;
	c->r.id = rs->round_id;
	c->r.version = rs->global_version;
	c->r.params = *rs->params;
	c->r.start_ms = now;
	c->r.bytes_down = wire_len;
	c->r.eval_loss = NAN;
	c->r.snapshot_requested = again;
	c->r.async = rs->async_buffer > 0;
	if (rs->global_sha256.len == 32)
		memcpy(c->r.sha, rs->global_sha256.data, 32);
	nst_counters *k = nst_counters_mut(c->st);
	k->rounds_started++;

	tset *g = NULL;
	int rc = apply_payload(c, rs, &g, why, sizeof why);
	if (rc == FL_EMISMATCH || rc == FL_EPROTO) {
		k->hash_mismatches += rc == FL_EMISMATCH;
		if (!c->r.snapshot_requested) {
			LOGW("client", "round %" PRIu64 ": %s; asking for a snapshot", rs->round_id,
			     why);
			c->r.snapshot_requested = 1;
			c->r.st = R_SYNC;
			request_snapshot(c, rs->round_id);
		} else {
			LOGE("client",
			     "round %" PRIu64 ": %s, even after a snapshot; skipping the round",
			     rs->round_id, why);
			send_error(c, FEDLORA__ERROR__CODE__CODE_MALFORMED, why);
			c->r.st = R_DONE;
		}
		save_state(c);
		return;
	}
	if (rc < 0) {
		LOGE("client", "round %" PRIu64 ": cannot apply the global adapter: %s",
		     rs->round_id, fl_strerror(rc));
		c->r.st = R_DONE;
		return;
	}
	if (rc == AP_NEW) {
		int snap = rs->adapter->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT;
		if ((rc = nst_set_global(c->st, rs->global_version, g, c->r.sha)) != 0) {
			LOGE("client", "cannot store global version %" PRIu64 ": %s",
			     rs->global_version, fl_strerror(rc));
			c->r.st = R_DONE;
			return;
		}
		if (snap)
			k->snapshots++;
		else
			k->deltas++;
		LOGI("client", "global version %" PRIu64 " from a %s verified", rs->global_version,
		     snap ? "snapshot" : "delta");
		char hex[65], line[320];
		hex_encode(c->r.sha, 32, hex);
		int n = snprintf(line, sizeof line,
		                 "{\"type\":\"global\",\"unix_ms\":%" PRIu64 ",\"node\":\"%s\","
		                 "\"round\":%" PRIu64 ",\"version\":%" PRIu64
		                 ",\"sha256\":\"%s\",\"kind\":\"%s\",\"bytes_down\":%zu}",
		                 clk_wall_ms(), c->node_id, rs->round_id, rs->global_version, hex,
		                 snap ? "snapshot" : "delta", wire_len);
		if (n > 0 && (size_t)n < sizeof line)
			nst_append_metrics(c->st, line, (size_t)n);
	}
	/* Evaluate this version once, then train from it. */
	if (c->cfg.eval && (k->eval_version != rs->global_version || isnan(k->eval_loss))) {
		if (c->eval_job && c->eval_job_version != rs->global_version)
			cancel_job(c, c->eval_job); /* an older version: no longer worth it */
		ncl_job *e = new_job(c, NCL_JOB_EVAL, nst_global(c->st));
		if (!e || start_job(c, e) != 0) {
			fatal(c, FL_ENOMEM, "out of memory starting an evaluation");
			return;
		}
		c->eval_job = e->id;
		c->eval_job_version = rs->global_version;
	} else if (k->eval_version == rs->global_version) {
		c->r.eval_loss = k->eval_loss;
	}
	ncl_job *j = new_job(c, NCL_JOB_TRAIN, nst_global(c->st));
	if (!j) {
		fatal(c, FL_ENOMEM, "out of memory starting training");
		return;
	}
	j->round_id = rs->round_id;
	j->params = *rs->params;
	c->r.train_job = j->id;
	c->r.st = R_TRAIN;
	c->r.steps = rs->params->local_steps;
	if (start_job(c, j) != 0) {
		fatal(c, FL_ENOMEM, "out of memory starting training");
		return;
	}
	LOGI("client", "round %" PRIu64 ": training %u steps from version %" PRIu64, rs->round_id,
	     rs->params->local_steps, rs->global_version);
	save_state(c);
}

/* ---- building the update ---- */

static int residual_for(ncl *c, const tset *delta, int ffa, tset **out)
{
	tset *r = NULL;
	int rc = tset_new(&r);
	if (rc)
		return rc;
	const tset *old = nst_residual(c->st);
	int reuse = old != NULL;
	for (size_t i = 0; i < tset_count(delta) && !rc; i++) {
		const tensor *t = tset_at(delta, i);
		if (ffa && !lora_is_b(t->name))
			continue;
		const tensor *o = old ? tset_find(old, t->name) : NULL;
		if (old && (!o || o->ndim != t->ndim ||
		            memcmp(o->shape, t->shape, t->ndim * sizeof(uint64_t)) != 0))
			reuse = 0;
		rc = tset_insert(r, t->name, t->ndim, t->shape, o && reuse ? o->data : NULL, NULL);
	}
	if (!rc && old && (!reuse || tset_count(old) != tset_count(r))) {
		LOGW("client", "stored residual does not match the exchanged tensors; starting "
		               "from zero");
		for (size_t i = 0; i < tset_count(r); i++) {
			tensor *t = tset_at(r, i);
			memset(t->data, 0, t->n * sizeof(float));
		}
	}
	if (rc) {
		tset_free(r);
		return rc;
	}
	*out = r;
	return 0;
}

static void add_metric(Fedlora__Metric *m, Fedlora__Metric **pm, size_t *n, const char *name,
                       double v)
{
	if (!isfinite(v))
		return;
	fedlora__metric__init(&m[*n]);
	m[*n].name = (char *)name;
	m[*n].value = v;
	pm[*n] = &m[*n];
	(*n)++;
}

/* Differential privacy (TrainParams.dp_clip > 0): the exchanged tensors of
 * delta (+ resid with error feedback) clipped as one vector and quantized
 * into qs[0..), in the order build_update walks them (quant_encode_clipped
 * guarantees the decoded update's L2 norm <= dp_clip). */
static int encode_clipped(ncl *c, const tset *delta, tset *resid, uint64_t seed, qtensor *qs)
{
	const Fedlora__TrainParams *p = &c->r.params;
	size_t nt = tset_count(delta), n = 0;
	const tensor **d = calloc(nt ? nt : 1, sizeof *d);
	tensor **r = calloc(nt ? nt : 1, sizeof *r);
	quant_params *qp = calloc(nt ? nt : 1, sizeof *qp);
	int rc = FL_ENOMEM;
	if (!d || !r || !qp)
		goto out;
	for (size_t i = 0; i < nt; i++) {
		const tensor *t = tset_at(delta, i);
		if (c->cfg.lora.ffa && !lora_is_b(t->name))
			continue;
		d[n] = t;
		r[n] = resid ? tset_find(resid, t->name) : NULL;
		qp[n] = (quant_params){(enum qt_fmt)p->uplink_format, p->uplink_block,
		                       p->stochastic_rounding ? QUANT_STOCHASTIC : QUANT_NEAREST,
		                       quant_seed_derive(seed, t->name)};
		qt_init(&qs[n]);
		n++;
	}
	double norm = 0;
	rc = quant_encode_clipped(qp, n, d, resid ? r : NULL, p->dp_clip, qs, &norm);
	if (!rc)
		LOGD("client", "update clipped to %g: decoded norm %.6g", p->dp_clip, norm);
	for (size_t i = 0; rc && i < n; i++)
		qt_fini(&qs[i]);
out:
	free(d);
	free(r);
	free(qp);
	return rc;
}

static int build_update(ncl *c, tset *delta, const ntr_result *res)
{
	const Fedlora__TrainParams *p = &c->r.params;
	int ffa = c->cfg.lora.ffa, ef = p->error_feedback, rc = 0;
	tset *resid = NULL;
	size_t nt = tset_count(delta), nq = 0;
	qtensor *qs = calloc(nt ? nt : 1, sizeof *qs);
	Fedlora__QTensor *m = calloc(nt ? nt : 1, sizeof *m);
	Fedlora__QTensor **pm = calloc(nt ? nt : 1, sizeof *pm);
	Fedlora__QTensor *m32 = calloc(nt ? nt : 1, sizeof *m32);
	Fedlora__QTensor **pm32 = calloc(nt ? nt : 1, sizeof *pm32);
	uint8_t *bytes = NULL;
	size_t len = 0;
	if (!qs || !m || !pm || !m32 || !pm32) {
		rc = FL_ENOMEM;
		goto out;
	}
	if (ef && (rc = residual_for(c, delta, ffa, &resid)) != 0)
		goto out;
	uint64_t seed = p->seed ^ (c->cfg.node_seed * 0x9e3779b97f4a7c15ULL);
	if (p->dp_clip > 0 && (rc = encode_clipped(c, delta, resid, seed, qs)) != 0) {
		LOGE("client", "cannot clip and quantize the update: %s", fl_strerror(rc));
		goto out;
	}
	for (size_t i = 0; i < nt; i++) {
		const tensor *t = tset_at(delta, i);
		if (ffa && !lora_is_b(t->name))
			continue;
		quant_params qp = {(enum qt_fmt)p->uplink_format, p->uplink_block,
		                   p->stochastic_rounding ? QUANT_STOCHASTIC : QUANT_NEAREST,
		                   quant_seed_derive(seed, t->name)};
		if (p->dp_clip <= 0) { /* else encoded by encode_clipped */
			qt_init(&qs[nq]);
			if (ef)
				rc = quant_encode_tensor_ef(&qp, t, tset_find(resid, t->name),
				                            &qs[nq]);
			else
				rc = quant_encode_tensor(&qp, t, &qs[nq]);
		}
		nq++;
		if (rc) {
			LOGE("client", "cannot quantize %s: %s", t->name, fl_strerror(rc));
			goto out;
		}
		qt_to_proto(&qs[nq - 1], &m[nq - 1]);
		pm[nq - 1] = &m[nq - 1];
		/* f32 equivalent: same header, raw f32 data (sizes only) */
		m32[nq - 1] = m[nq - 1];
		m32[nq - 1].format = FEDLORA__QFORMAT__QFORMAT_F32;
		m32[nq - 1].block_size = 0;
		m32[nq - 1].stochastic = 0;
		m32[nq - 1].scales.len = 0;
		m32[nq - 1].scales.data = NULL;
		m32[nq - 1].data.len = t->n * sizeof(float);
		pm32[nq - 1] = &m32[nq - 1];
	}
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Update u = FEDLORA__UPDATE__INIT;
	Fedlora__AdapterPayload ap = FEDLORA__ADAPTER_PAYLOAD__INIT;
	Fedlora__Metric mm[12], *pmm[12];
	size_t nm = 0;
	add_metric(mm, pmm, &nm, "train_loss", res->train_loss);
	add_metric(mm, pmm, &nm, "first_loss", res->first_loss);
	add_metric(mm, pmm, &nm, "steps", (double)res->steps);
	add_metric(mm, pmm, &nm, "seconds", res->seconds);
	if (res->seconds > 0)
		add_metric(mm, pmm, &nm, "tokens_per_s", (double)res->tokens / res->seconds);
	if (!isnan(c->r.eval_loss)) {
		add_metric(mm, pmm, &nm, "eval_loss", c->r.eval_loss);
		add_metric(mm, pmm, &nm, "eval_version", (double)c->r.version);
	}
	ap.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	ap.from_version = c->r.version;
	ap.n_tensors = nq;
	ap.tensors = pm;
	u.round_id = c->r.id;
	u.base_version = c->r.version;
	u.sample_count = res->samples ? res->samples : c->cfg.sample_count;
	u.tokens = res->tokens;
	u.metrics = pmm;
	u.n_metrics = nm;
	u.delta = &ap;
	env.body_case = FEDLORA__ENVELOPE__BODY_UPDATE;
	env.update = &u;
	if ((rc = encode(c, &env, &bytes, &len)) != 0)
		goto out;
	ap.tensors = pm32;
	size_t len32 = wire_size(&env);
	drop_upload(c);
	c->up.active = 1;
	c->up.round_id = c->r.id;
	c->up.base_version = c->r.version;
	c->up.async = c->r.async;
	c->up.bytes = bytes;
	c->up.len = len;
	c->up.fp32_len = len32;
	c->up.residual_new = resid;
	resid = NULL;
	bytes = NULL;
out:
	for (size_t i = 0; i < nq; i++)
		qt_fini(&qs[i]);
	free(qs);
	free(m);
	free(pm);
	free(m32);
	free(pm32);
	free(bytes);
	tset_free(resid);
	return rc;
}

/* ---- secure rounds (docs/PRIVACY.md, "Secure aggregation") ----
 *
 * RoundStart.secagg set: the node advertises fresh keys signed with its
 * TLS key (SecAggKeys), checks its neighbours' keys in the roster and
 * sends them encrypted Shamir shares (SecAggShares), takes the shares the
 * coordinator routes to it, trains, puts its update on the announced grid
 * and sends it masked (Update.masked), and finally reveals the shares the
 * coordinator asks for (SecAggReveal) — once, so never both secrets of one
 * node. */

static void sec_reset(ncl *c)
{
	sa_client_free(c->sa.cl);
	free(c->sa.ids);
	free(c->sa.steps);
	free(c->sa.x);
	tset_free(c->sa.resid);
	memset(&c->sa, 0, sizeof c->sa);
}

/* A secure round this node cannot take part in any more: logged, the
 * coordinator sees the node as a dropout. */
static void sec_abort(ncl *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sec_abort(ncl *c, const char *fmt, ...)
{
	char why[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	LOGW("client", "secure round %" PRIu64 " abandoned by this node: %s", c->sa.round_id, why);
	sec_reset(c);
}

/* Tests only (ncl_config.sa_die_at): a real dropout at a chosen phase. */
static void sec_die(const ncl *c, const char *phase, uint64_t rid)
{
	const char *s = c->cfg.sa_die_at;
	size_t pl = strlen(phase);
	while (s && *s) {
		const char *e = strchr(s, ',');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		if (len > pl && strncmp(s, phase, pl) == 0 && s[pl] == ':' &&
		    strtoull(s + pl + 1, NULL, 10) == rid) {
			LOGW("client", "round %" PRIu64 ": test hook: dying in the %s phase", rid,
			     phase);
			raise(SIGKILL);
		}
		s = e ? e + 1 : NULL;
	}
}

static int sec_exchanged(const ncl *c, const tensor *t)
{
	return !c->cfg.lora.ffa || lora_is_b(t->name);
}

/* Distributed DP (SecAggSetup.dp_sigma > 0): one step for every tensor,
 * unit weights, a sigma the sampler takes. */
static int sec_check_dp(const Fedlora__SecAggSetup *su, size_t nt, char *why, size_t wl)
{
	if (su->dp_sigma == 0)
		return 0;
	int ok = su->dp_sigma > 0 && su->dp_sigma <= DDG_SIGMA_MAX && su->w_max == 1;
	for (size_t i = 1; ok && i < nt; i++)
		ok = su->steps[i] == su->steps[0];
	if (!ok) {
		snprintf(why, wl,
		         "distributed DP setup: noise sd %g (0..%g), w_max %u (must be 1) and "
		         "one step for all tensors expected",
		         su->dp_sigma, DDG_SIGMA_MAX, su->w_max);
		return FL_EPROTO;
	}
	return 0;
}

/* Phase 1: checks the setup, makes the client and advertises. */
static int sec_begin(ncl *c, const Fedlora__RoundStart *rs, char *why, size_t wl)
{
	const Fedlora__SecAggSetup *su = rs->secagg;
	sec_reset(c);
	if (!c->cfg.sa_key || !c->cfg.sa_cert || !c->cfg.sa_ca) {
		snprintf(why, wl, "secure round, but this node has no signing key");
		return FL_ESTATE;
	}
	uint32_t idx = UINT32_MAX;
	if (su->n_participants > SA_MAX_N) {
		snprintf(why, wl, "%zu participants (cap %d)", su->n_participants, SA_MAX_N);
		return FL_EPROTO;
	}
	for (size_t i = 0; i < su->n_participants; i++) {
		const char *id = su->participants[i];
		if (!id || (i && strcmp(su->participants[i - 1] ? su->participants[i - 1] : "",
		                        id) >= 0)) {
			snprintf(why, wl, "participants not sorted and unique at %zu", i);
			return FL_EPROTO;
		}
		if (strcmp(id, c->node_id) == 0)
			idx = (uint32_t)i;
	}
	if (idx == UINT32_MAX) {
		snprintf(why, wl, "node %s is not among the %zu participants", c->node_id,
		         su->n_participants);
		return FL_EPROTO;
	}
	size_t nt = 0, D = 0;
	for (size_t i = 0; i < tset_count(c->cfg.layout); i++) {
		const tensor *t = tset_at(c->cfg.layout, i);
		if (sec_exchanged(c, t)) {
			nt++;
			D += t->n;
		}
	}
	uint32_t L = sag_levels(su->level_bits);
	int rc0;
	if (su->graph_seed.len != 32 || su->n_steps != nt || su->dim != (uint64_t)D + 1 || !L ||
	    su->level_bits > 8 || !(su->clip > 0) || !isfinite(su->clip) || su->w_max < 1 ||
	    su->w_max > L || su->weight_unit < 1 ||
	    su->mod_bits !=
	        (su->dp_sigma > 0
	             ? ddg_mod_bits(su->level_bits, (uint32_t)su->n_participants, su->dp_sigma)
	             : sa_mod_bits(su->level_bits, (uint32_t)su->n_participants, 1))) {
		snprintf(why, wl,
		         "setup does not fit this adapter or the protocol (%zu steps for %zu "
		         "tensors, dim %" PRIu64 " for %zu elements, %u level bits, m %u)",
		         su->n_steps, nt, su->dim, D, su->level_bits, su->mod_bits);
		return FL_EPROTO;
	}
	for (size_t i = 0; i < nt; i++)
		if (!(su->steps[i] > 0) || !isfinite(su->steps[i])) {
			snprintf(why, wl, "grid step %zu is %g", i, (double)su->steps[i]);
			return FL_EPROTO;
		}
	if ((rc0 = sec_check_dp(su, nt, why, wl)) != 0)
		return rc0;
	sa_round r = {.round_id = rs->round_id,
	              .n = (uint32_t)su->n_participants,
	              .k = su->k,
	              .t = su->t,
	              .mod_bits = su->mod_bits,
	              .dim = su->dim};
	/* the graph seed must follow from the round's public data, so that the
	 * coordinator cannot pick a graph that surrounds this node */
	uint8_t gs[32];
	int rc = sa_graph_seed(rs->round_id, (const char *const *)su->participants, r.n, gs);
	if (rc || memcmp(gs, su->graph_seed.data, 32) != 0) {
		snprintf(why, wl, "graph seed is not SHA-256 of the round and its participants");
		return rc ? rc : FL_EAUTH;
	}
	memcpy(r.graph_seed, gs, 32);
	rc = sa_round_check(&r, why, wl);
	if (rc)
		return rc;
	c->sa.steps = malloc(nt * sizeof *c->sa.steps);
	c->sa.ids = calloc(r.n, sizeof *c->sa.ids);
	if (!c->sa.steps || !c->sa.ids)
		return FL_ENOMEM;
	for (uint32_t i = 0; i < r.n; i++) {
		if (strlen(su->participants[i]) > SA_MAX_NODE_ID) {
			snprintf(why, wl, "participant %u: node id longer than %d", i,
			         SA_MAX_NODE_ID);
			return FL_EPROTO;
		}
		snprintf(c->sa.ids[i], sizeof c->sa.ids[i], "%s", su->participants[i]);
	}
	memcpy(c->sa.steps, su->steps, nt * sizeof *c->sa.steps);
	c->sa.nt = nt;
	c->sa.r = r;
	c->sa.index = idx;
	c->sa.round_id = rs->round_id;
	c->sa.clip = su->clip;
	c->sa.bits = su->level_bits;
	uint64_t w = (c->cfg.sample_count + su->weight_unit / 2) / su->weight_unit;
	c->sa.w = (uint32_t)(w < 1 ? 1 : w > su->w_max ? su->w_max : w);
	c->sa.w_max = su->w_max;
	c->sa.dp_sigma = su->dp_sigma;
	c->sa.active = 1;
	sec_die(c, "keys", rs->round_id);
	if ((rc = sa_client_new(&r, idx, c->node_id, &c->sa.cl, why, wl)) != 0)
		return rc;
	sa_keys k;
	if ((rc = sa_client_advertise(c->sa.cl, c->cfg.sa_key, c->cfg.sa_cert, &k, why, wl)) != 0)
		return rc;
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__SecAggKeys mk;
	saw_keys_to_proto(&k, rs->round_id, &mk);
	env.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_KEYS;
	env.secagg_keys = &mk;
	if ((rc = send_env(c, &env)) != 0) {
		snprintf(why, wl, "cannot send the keys");
		return rc;
	}
	LOGI("client", "round %" PRIu64 ": secure, index %u of %u, weight %u, %u-bit levels, m %u",
	     rs->round_id, idx, r.n, c->sa.w, c->sa.bits, r.mod_bits);
	return 0;
}

static int sec_round_ok(ncl *c, uint64_t rid, const char *what)
{
	if (c->sa.active && c->sa.round_id == rid && c->sa.cl)
		return 1;
	LOGW("client", "%s for round %" PRIu64 " ignored: no secure round of that id is open", what,
	     rid);
	return 0;
}

/* Phase 2: the roster; shares to every accepted neighbour. */
static void sec_on_roster(ncl *c, const Fedlora__SecAggRoster *ro)
{
	if (!sec_round_ok(c, ro->round_id, "SecAggRoster"))
		return;
	char why[300] = "";
	uint32_t n = c->sa.r.n;
	if (c->sa.shared || ro->n_keys > n) {
		sec_abort(c, "%s", c->sa.shared ? "second roster" : "roster longer than the round");
		return;
	}
	sa_keys *ks = calloc(ro->n_keys ? ro->n_keys : 1, sizeof *ks);
	if (!ks) {
		sec_abort(c, "out of memory");
		return;
	}
	uint32_t nk = 0;
	for (size_t i = 0; i < ro->n_keys; i++) {
		const Fedlora__SecAggKeys *e = ro->keys[i];
		if (e->index >= n || saw_keys_from_proto(e, c->sa.ids[e->index], &ks[nk]) != 0) {
			LOGW("client",
			     "round %" PRIu64 ": roster entry %zu malformed (index %u); ignored",
			     ro->round_id, i, e->index);
			continue;
		}
		nk++;
	}
	const sa_share *sh = NULL;
	const sa_refusal *ref = NULL;
	uint32_t nsh = 0, nref = 0;
	int rc = sa_client_share(c->sa.cl, ks, nk, c->cfg.sa_ca, &sh, &nsh, &ref, &nref, why,
	                         sizeof why);
	for (uint32_t i = 0; i < nref; i++)
		LOGW("client", "round %" PRIu64 ": neighbour %u (%s) refused: %s", ro->round_id,
		     ref[i].index, ref[i].index < n ? c->sa.ids[ref[i].index] : "?", ref[i].reason);
	free(ks);
	if (rc) {
		sec_abort(c, "sharing failed: %s", why);
		return;
	}
	Fedlora__SecAggShare *ms, **ps;
	if (saw_shares_to_proto(sh, nsh, &ms, &ps) != 0) {
		sec_abort(c, "out of memory");
		return;
	}
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__SecAggShares m = FEDLORA__SEC_AGG_SHARES__INIT;
	m.round_id = ro->round_id;
	m.n_shares = nsh;
	m.shares = ps;
	env.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_SHARES;
	env.secagg_shares = &m;
	rc = send_env(c, &env);
	free(ms);
	free(ps);
	if (rc) {
		sec_abort(c, "cannot send the shares");
		return;
	}
	c->sa.shared = 1;
}

static void sec_try_mask(ncl *c);

/* Phase 3a: the shares routed to this node. */
static void sec_on_shares(ncl *c, const Fedlora__SecAggShares *m)
{
	if (!sec_round_ok(c, m->round_id, "SecAggShares"))
		return;
	sec_die(c, "shares", m->round_id);
	if (!c->sa.shared || c->sa.received || m->n_shares > c->sa.r.n) {
		sec_abort(c, "routed shares out of order or too many");
		return;
	}
	sa_share *sh = NULL;
	if (saw_shares_from_proto(m->shares, m->n_shares, &sh) != 0) {
		sec_abort(c, "out of memory");
		return;
	}
	char why[300] = "";
	const sa_refusal *bad = NULL;
	uint32_t nbad = 0;
	int rc =
	    sa_client_receive(c->sa.cl, sh, (uint32_t)m->n_shares, &bad, &nbad, why, sizeof why);
	free(sh);
	for (uint32_t i = 0; i < nbad; i++)
		LOGW("client", "round %" PRIu64 ": share from %u (%s) refused: %s", m->round_id,
		     bad[i].index, bad[i].index < c->sa.r.n ? c->sa.ids[bad[i].index] : "?",
		     bad[i].reason);
	if (rc) {
		sec_abort(c, "routed shares: %s", why);
		return;
	}
	c->sa.received = 1;
	sec_try_mask(c);
}

static void sec_dump_x(ncl *c)
{
	if (!c->cfg.sa_dump_dir)
		return;
	char path[1024];
	snprintf(path, sizeof path, "%s/r%" PRIu64 "-x-%u.bin", c->cfg.sa_dump_dir, c->sa.round_id,
	         c->sa.index);
	size_t dim = (size_t)c->sa.r.dim;
	uint8_t *le = malloc(dim * 4);
	FILE *fp = le ? fopen(path, "wb") : NULL;
	if (fp) {
		for (size_t e = 0; e < dim; e++)
			for (int b = 0; b < 4; b++)
				le[4 * e + (size_t)b] = (uint8_t)(c->sa.x[e] >> (8 * b));
		if (fwrite(le, 4, dim, fp) != dim)
			LOGE("client", "test dump %s: cannot write", path);
		fclose(fp);
	}
	free(le);
}

/* Phase 3b: once trained and the shares are in, the masked Update. */
static void sec_try_mask(ncl *c)
{
	if (!c->sa.active || !c->sa.received || !c->sa.x || c->sa.masked)
		return;
	char why[300] = "";
	const uint8_t *packed;
	size_t len;
	int rc = sa_client_mask(c->sa.cl, c->sa.x, &packed, &len, why, sizeof why);
	if (rc) {
		sec_abort(c, "masking failed: %s", why);
		if (c->r.active && c->r.id == c->sa.round_id)
			c->r.st = R_DONE;
		return;
	}
	sec_dump_x(c);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Update u = FEDLORA__UPDATE__INIT;
	const ntr_result *res = &c->r.res;
	Fedlora__Metric mm[4], *pmm[4];
	size_t nm = 0;
	add_metric(mm, pmm, &nm, "train_loss", res->train_loss);
	if (!isnan(c->r.eval_loss)) {
		add_metric(mm, pmm, &nm, "eval_loss", c->r.eval_loss);
		add_metric(mm, pmm, &nm, "eval_version", (double)c->r.version);
	}
	u.round_id = c->sa.round_id;
	u.base_version = c->r.version;
	u.sample_count = c->sa.w;
	u.tokens = res->tokens;
	u.metrics = pmm;
	u.n_metrics = nm;
	u.masked.data = (uint8_t *)packed;
	u.masked.len = len;
	env.body_case = FEDLORA__ENVELOPE__BODY_UPDATE;
	env.update = &u;
	uint8_t *bytes = NULL;
	size_t blen = 0;
	if ((rc = encode(c, &env, &bytes, &blen)) != 0) {
		sec_abort(c, "cannot encode the masked update");
		return;
	}
	drop_upload(c);
	c->up.active = 1;
	c->up.round_id = c->sa.round_id;
	c->up.base_version = c->r.version;
	c->up.bytes = bytes;
	c->up.len = blen;
	c->up.fp32_len = (size_t)(c->sa.r.dim - 1) * sizeof(float) + (blen - len);
	c->up.residual_new = c->sa.resid;
	c->sa.resid = NULL;
	c->sa.masked = 1;
	c->r.st = R_UPLOAD;
	LOGI("client",
	     "round %" PRIu64 ": uploading the masked update (%zu bytes, %u bits x %" PRIu64
	     " elements)",
	     c->sa.round_id, blen, c->sa.r.mod_bits, c->sa.r.dim);
	if (c->welcomed && send_bytes(c, c->up.bytes, c->up.len) == 0)
		nst_counters_mut(c->st)->updates_sent++;
	save_state(c);
}

/* Distributed DP: the grid levels plus discrete Gaussian noise from
 * RAND_bytes (common/ddg.h). */
static int sec_encode_dp(ncl *c, const tensor *const *d, tensor *const *r, uint64_t seed,
                         uint32_t *x, double *norm)
{
	ddg_src *ns = malloc(sizeof *ns);
	if (!ns)
		return FL_ENOMEM;
	ddg_src_crypto(ns);
	int rc = ddg_encode(d, r, c->sa.nt, c->sa.steps[0], c->sa.clip, c->sa.bits,
	                    c->sa.r.mod_bits, c->sa.dp_sigma, seed, ns, x, norm);
	free(ns);
	if (!rc)
		LOGI("client",
		     "distributed DP: discrete Gaussian noise of sd %.4g grid steps added",
		     c->sa.dp_sigma);
	return rc;
}

/* Training done in a secure round: the update on the grid (x), its
 * residual kept for when the coordinator acknowledges the masked input. */
static int sec_encode(ncl *c, const tset *delta)
{
	const Fedlora__TrainParams *p = &c->r.params;
	size_t nt = c->sa.nt, k = 0;
	int rc = FL_ENOMEM;
	tset *resid = NULL;
	const tensor **d = calloc(nt ? nt : 1, sizeof *d);
	tensor **r = calloc(nt ? nt : 1, sizeof *r);
	uint32_t *x = malloc((size_t)c->sa.r.dim * sizeof *x);
	if (!d || !r || !x)
		goto out;
	if (p->error_feedback && (rc = residual_for(c, delta, c->cfg.lora.ffa, &resid)) != 0)
		goto out;
	for (size_t i = 0; i < tset_count(delta); i++) {
		const tensor *t = tset_at(delta, i);
		if (!sec_exchanged(c, t))
			continue;
		if (k == nt) {
			rc = FL_EMISMATCH;
			goto out;
		}
		d[k] = t;
		r[k] = resid ? tset_find(resid, t->name) : NULL;
		k++;
	}
	rc = FL_EMISMATCH;
	if (k != nt)
		goto out;
	uint64_t seed = p->seed ^ (c->cfg.node_seed * 0x9e3779b97f4a7c15ULL) ^ 0x5ecaa99ULL;
	double norm = 0;
	if (c->sa.dp_sigma > 0)
		rc = sec_encode_dp(c, d, resid ? r : NULL, seed, x, &norm);
	else
		rc = sag_encode(d, resid ? r : NULL, nt, c->sa.steps, c->sa.clip, c->sa.bits,
		                c->sa.w, c->sa.w_max, c->sa.r.mod_bits, seed, x, &norm);
	if (rc)
		goto out;
	LOGD("client", "secure update: norm %.6g, clip %g", norm, c->sa.clip);
	free(c->sa.x);
	c->sa.x = x;
	x = NULL;
	tset_free(c->sa.resid);
	c->sa.resid = resid;
	resid = NULL;
out:
	free(d);
	free(r);
	free(x);
	tset_free(resid);
	return rc;
}

/* Phase 4: reveal what the coordinator asks, once. */
static void sec_on_unmask(ncl *c, const Fedlora__SecAggUnmask *m)
{
	if (!sec_round_ok(c, m->round_id, "SecAggUnmask"))
		return;
	sec_die(c, "unmask", m->round_id);
	char why[300] = "";
	if (!c->sa.masked || c->sa.revealed) {
		sec_abort(c, "unmask request %s",
		          c->sa.revealed ? "repeated" : "before the masked input");
		return;
	}
	if (m->n_survivors > c->sa.r.n || m->n_dropped > c->sa.r.n) {
		sec_abort(c, "unmask request longer than the round");
		return;
	}
	const sa_reveal *rv = NULL;
	uint32_t nrv = 0;
	int rc = sa_client_reveal(c->sa.cl, m->survivors, (uint32_t)m->n_survivors, m->dropped,
	                          (uint32_t)m->n_dropped, &rv, &nrv, why, sizeof why);
	c->sa.revealed = 1;
	if (rc) {
		sec_abort(c, "unmask request refused: %s", why);
		return;
	}
	Fedlora__SecAggRevealShare *ms = calloc(nrv ? nrv : 1, sizeof *ms);
	Fedlora__SecAggRevealShare **ps = calloc(nrv ? nrv : 1, sizeof *ps);
	if (!ms || !ps) {
		free(ms);
		free(ps);
		sec_abort(c, "out of memory");
		return;
	}
	for (uint32_t i = 0; i < nrv; i++) {
		fedlora__sec_agg_reveal_share__init(&ms[i]);
		ms[i].owner = rv[i].owner;
		ms[i].mask_key = rv[i].is_mask_key != 0;
		ms[i].share.data = (uint8_t *)rv[i].share;
		ms[i].share.len = SA_SHARE_LEN;
		ps[i] = &ms[i];
	}
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__SecAggReveal r = FEDLORA__SEC_AGG_REVEAL__INIT;
	r.round_id = m->round_id;
	r.n_shares = nrv;
	r.shares = ps;
	env.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_REVEAL;
	env.secagg_reveal = &r;
	if (send_env(c, &env) != 0)
		LOGW("client", "round %" PRIu64 ": cannot send the reveal", m->round_id);
	else
		LOGI("client", "round %" PRIu64 ": revealed %u shares (%zu survivors, %zu dropped)",
		     m->round_id, nrv, m->n_survivors, m->n_dropped);
	free(ms);
	free(ps);
}

void ncl_on_train_done(ncl *c, uint64_t job_id, int rc, tset *local, const ntr_result *res,
                       uint64_t now_ms)
{
	(void)now_ms;
	if (!c->r.active || c->r.st != R_TRAIN || job_id != c->r.train_job || c->stopped) {
		tset_free(local);
		return;
	}
	c->r.train_job = 0;
	if (rc || !local) {
		LOGW("client", "round %" PRIu64 ": local training failed: %s", c->r.id,
		     fl_strerror(rc ? rc : FL_EINVAL));
		c->r.st = R_DONE;
		tset_free(local);
		return;
	}
	const tset *g = nst_global(c->st);
	if (!g || nst_version(c->st) != c->r.version || (rc = tset_diff(local, local, g)) != 0) {
		LOGW("client", "round %" PRIu64 ": global changed under training; result dropped",
		     c->r.id);
		c->r.st = R_DONE;
		tset_free(local);
		return;
	}
	c->r.res = *res;
	c->r.trained = 1;
	nst_counters_mut(c->st)->rounds_trained++;
	if (c->sa.active && c->sa.round_id == c->r.id) {
		rc = sec_encode(c, local);
		tset_free(local);
		if (rc) {
			sec_abort(c, "cannot put the update on the grid: %s", fl_strerror(rc));
			c->r.st = R_DONE;
			return;
		}
		c->r.st = R_UPLOAD;
		LOGI("client", "round %" PRIu64 ": trained (loss %.4f -> %.4f)%s", c->r.id,
		     res->first_loss, res->train_loss,
		     c->sa.received ? "" : "; waiting for the neighbours' shares");
		sec_try_mask(c);
		return;
	}
	if ((rc = slice_delta(c, &local)) == 0)
		rc = build_update(c, local, res);
	tset_free(local);
	if (rc) {
		LOGE("client", "round %" PRIu64 ": no update sent: %s", c->r.id, fl_strerror(rc));
		c->r.st = R_DONE;
		return;
	}
	c->r.st = R_UPLOAD;
	LOGI("client",
	     "round %" PRIu64
	     ": trained (loss %.4f -> %.4f), uploading %zu bytes (f32 would be %zu)",
	     c->r.id, res->first_loss, res->train_loss, c->up.len, c->up.fp32_len);
	if (c->welcomed && send_bytes(c, c->up.bytes, c->up.len) == 0)
		nst_counters_mut(c->st)->updates_sent++;
	save_state(c);
}

/* ---- the final version (docs/COORDINATOR.md "The final version") ---- */

/* Answers DownFinal and records the outcome in metrics.jsonl. */
static void send_final_eval(ncl *c, uint64_t version, int verified, double loss, const char *detail)
{
	c->fin_pending = 0;
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__DownFinalEval e = FEDLORA__DOWN_FINAL_EVAL__INIT;
	e.version = version;
	e.verified = verified != 0;
	e.has_eval = verified && isfinite(loss);
	e.eval_loss = e.has_eval ? loss : 0;
	e.detail = (char *)detail;
	env.body_case = FEDLORA__ENVELOPE__BODY_DOWN_FINAL_EVAL;
	env.down_final_eval = &e;
	send_env(c, &env);
	char line[256];
	int n = snprintf(line, sizeof line,
	                 "{\"type\":\"final\",\"unix_ms\":%" PRIu64
	                 ",\"node\":\"%s\",\"version\":%" PRIu64 ",\"verified\":%s%s",
	                 clk_wall_ms(), c->node_id, version, verified ? "true" : "false",
	                 e.has_eval ? ",\"eval_loss\":" : "}");
	if (n > 0 && (size_t)n < sizeof line && e.has_eval)
		n += snprintf(line + n, sizeof line - (size_t)n, "%.9g}", loss);
	if (n > 0 && (size_t)n < sizeof line)
		nst_append_metrics(c->st, line, (size_t)n);
	save_state(c);
}

/* The federation ended: verify and keep the last committed version, evaluate
 * it on the held-out data (an evaluation job), then DownFinalEval. */
static void on_down_final(ncl *c, const Fedlora__DownFinal *m, size_t wire_len)
{
	char why[300] = "";
	Fedlora__RoundStart rs = FEDLORA__ROUND_START__INIT;
	rs.global_version = m->version;
	rs.global_sha256 = m->sha256;
	rs.adapter = m->adapter;
	tset *g = NULL;
	int rc = apply_payload(c, &rs, &g, why, sizeof why);
	if (rc == AP_NEW) {
		uint8_t sha[32];
		memcpy(sha, m->sha256.data, 32); /* apply_payload checked: 32 bytes */
		if ((rc = nst_set_global(c->st, m->version, g, sha)) != 0)
			snprintf(why, sizeof why, "cannot store version %" PRIu64 ": %s",
			         m->version, fl_strerror(rc));
		else
			rc = AP_NEW;
	}
	if (rc != AP_NEW && rc != AP_SAME) {
		LOGW("client", "final version %" PRIu64 " not taken: %s", m->version, why);
		send_final_eval(c, nst_version(c->st), 0, NAN, why);
		return;
	}
	LOGI("client", "final version %" PRIu64 " verified (%s, %zu bytes): %s", m->version,
	     rc == AP_SAME ? "held already" : "applied", wire_len, m->reason ? m->reason : "");
	nst_counters *k = nst_counters_mut(c->st);
	if (!c->cfg.eval) {
		send_final_eval(c, m->version, 1, NAN, "no held-out data configured");
		return;
	}
	if (k->eval_version == m->version && !isnan(k->eval_loss)) {
		send_final_eval(c, m->version, 1, k->eval_loss, "");
		return;
	}
	if (c->eval_job)
		cancel_job(c, c->eval_job);
	ncl_job *e = new_job(c, NCL_JOB_EVAL, nst_global(c->st));
	if (!e || start_job(c, e) != 0) {
		send_final_eval(c, m->version, 1, NAN, "out of memory starting the evaluation");
		return;
	}
	c->eval_job = e->id;
	c->eval_job_version = m->version;
	c->fin_pending = 1;
	c->fin_version = m->version;
}

void ncl_on_eval_done(ncl *c, uint64_t job_id, int rc, double loss, uint64_t now_ms)
{
	(void)now_ms;
	if (job_id != c->eval_job)
		return;
	c->eval_job = 0;
	if (rc) {
		LOGW("client", "held-out evaluation of version %" PRIu64 " failed: %s",
		     c->eval_job_version, fl_strerror(rc));
		if (c->fin_pending && c->fin_version == c->eval_job_version)
			send_final_eval(c, c->fin_version, 1, NAN, "held-out evaluation failed");
		return;
	}
	nst_counters *k = nst_counters_mut(c->st);
	k->eval_version = c->eval_job_version;
	k->eval_loss = loss;
	if (c->r.active && c->r.version == c->eval_job_version)
		c->r.eval_loss = loss;
	LOGI("client", "held-out loss of global version %" PRIu64 ": %.5f", c->eval_job_version,
	     loss);
	char line[256];
	int n = snprintf(line, sizeof line,
	                 "{\"type\":\"eval\",\"unix_ms\":%" PRIu64
	                 ",\"node\":\"%s\",\"version\":%" PRIu64 ",\"eval_loss\":%.9g}",
	                 clk_wall_ms(), c->node_id, c->eval_job_version, loss);
	if (n > 0 && (size_t)n < sizeof line && isfinite(loss))
		nst_append_metrics(c->st, line, (size_t)n);
	save_state(c);
	if (c->fin_pending && c->fin_version == c->eval_job_version)
		send_final_eval(c, c->fin_version, 1, loss, "");
}

void ncl_on_progress(ncl *c, uint64_t job_id, uint32_t step, uint32_t total, double loss)
{
	if (c->r.active && job_id == c->r.train_job) {
		c->r.step = step;
		c->r.steps = total;
		c->r.step_loss = loss;
	}
}

static const char *ack_reason(Fedlora__UpdateAck__Reason r)
{
	switch (r) {
	case FEDLORA__UPDATE_ACK__REASON__REASON_LATE:
		return "late";
	case FEDLORA__UPDATE_ACK__REASON__REASON_WRONG_ROUND:
		return "wrong round";
	case FEDLORA__UPDATE_ACK__REASON__REASON_DUPLICATE:
		return "duplicate";
	case FEDLORA__UPDATE_ACK__REASON__REASON_NOT_SAMPLED:
		return "not sampled";
	case FEDLORA__UPDATE_ACK__REASON__REASON_STALE:
		return "stale base version";
	case FEDLORA__UPDATE_ACK__REASON__REASON_MALFORMED:
		return "malformed";
	case FEDLORA__UPDATE_ACK__REASON__REASON_NON_FINITE:
		return "non-finite";
	case FEDLORA__UPDATE_ACK__REASON__REASON_NORM:
		return "norm bound";
	default:
		return "unspecified";
	}
}

static void on_update_ack(ncl *c, const Fedlora__UpdateAck *a)
{
	if (!c->up.active || a->round_id != c->up.round_id) {
		LOGW("client",
		     "UpdateAck for round %" PRIu64 " but no update of that round is pending",
		     a->round_id);
		return;
	}
	if (c->sa.active && c->sa.masked && c->sa.round_id == a->round_id && a->accepted)
		sec_die(c, "masked", a->round_id);
	nst_counters *k = nst_counters_mut(c->st);
	int dup = a->reason == FEDLORA__UPDATE_ACK__REASON__REASON_DUPLICATE;
	if (c->up.acked) {
		LOGI("client", "round %" PRIu64 ": repeated acknowledgement (%s)", a->round_id,
		     a->accepted ? "accepted" : ack_reason(a->reason));
		return;
	}
	c->up.acked = 1;
	if (a->accepted || dup) {
		c->up.accepted = 1;
		k->updates_accepted++;
		k->last_round_uploaded = a->round_id;
		if (c->up.residual_new) {
			tset *r = c->up.residual_new;
			c->up.residual_new = NULL;
			if (nst_commit_residual(c->st, r, a->round_id) != 0)
				LOGW("client", "error-feedback residual not persisted");
		}
		LOGI("client", "round %" PRIu64 ": update accepted%s", a->round_id,
		     dup ? " (duplicate of an earlier send)" : "");
	} else {
		k->updates_rejected++;
		tset_free(c->up.residual_new);
		c->up.residual_new = NULL;
		LOGW("client", "round %" PRIu64 ": update refused (%s%s%s)", a->round_id,
		     ack_reason(a->reason), a->detail && *a->detail ? ": " : "",
		     a->detail ? a->detail : "");
	}
	if (c->r.active && c->r.id == a->round_id)
		c->r.st = R_DONE;
	save_state(c);
}

static void jnum(buf *b, const char *key, double v)
{
	char t[96];
	int k = isfinite(v) ? snprintf(t, sizeof t, ",\"%s\":%.9g", key, v)
	                    : snprintf(t, sizeof t, ",\"%s\":null", key);
	buf_append(b, t, (size_t)k);
}

static void jint(buf *b, const char *key, uint64_t v)
{
	char t[96];
	int k = snprintf(t, sizeof t, ",\"%s\":%" PRIu64, key, v);
	buf_append(b, t, (size_t)k);
}

static void on_round_end(ncl *c, const Fedlora__RoundEnd *e, uint64_t now)
{
	if (c->sa.active && c->sa.round_id == e->round_id)
		sec_reset(c); /* the round's secrets are no longer needed: wiped */
	if (!c->r.active || c->r.id != e->round_id) {
		LOGD("client", "RoundEnd of round %" PRIu64 " (not ours)", e->round_id);
		return;
	}
	char sha[65] = "";
	hex32(e->sha256.data, e->sha256.len, sha);
	LOGI("client", "round %" PRIu64 " %s: version %" PRIu64 ", %u participants%s%s",
	     e->round_id, e->committed ? "committed" : "abandoned", e->version, e->participants,
	     e->detail && *e->detail ? ", " : "", e->detail ? e->detail : "");
	buf b;
	buf_init(&b, 4096);
	char t[256];
	int k =
	    snprintf(t, sizeof t, "{\"type\":\"round\",\"unix_ms\":%" PRIu64 ",\"node\":\"%.64s\"",
	             clk_wall_ms(), c->node_id);
	buf_append(&b, t, (size_t)k);
	jint(&b, "round", e->round_id);
	jint(&b, "base_version", c->r.version);
	k = snprintf(
	    t, sizeof t, ",\"committed\":%s,\"uploaded\":%s", e->committed ? "true" : "false",
	    c->up.active && c->up.round_id == e->round_id && c->up.accepted ? "true" : "false");
	buf_append(&b, t, (size_t)k);
	jint(&b, "version", e->version);
	k = snprintf(t, sizeof t, ",\"sha256\":\"%s\"", sha);
	buf_append(&b, t, (size_t)k);
	jint(&b, "participants", e->participants);
	jnum(&b, "eval_loss", c->r.eval_loss);
	jnum(&b, "first_loss", c->r.trained ? c->r.res.first_loss : NAN);
	jnum(&b, "train_loss", c->r.trained ? c->r.res.train_loss : NAN);
	jint(&b, "steps", c->r.trained ? c->r.res.steps : 0);
	jint(&b, "tokens", c->r.trained ? c->r.res.tokens : 0);
	jnum(&b, "train_seconds", c->r.trained ? c->r.res.seconds : NAN);
	int up = c->up.active && c->up.round_id == e->round_id;
	jint(&b, "bytes_up", up ? c->up.len : 0);
	jint(&b, "bytes_up_fp32", up ? c->up.fp32_len : 0);
	jint(&b, "bytes_down", c->r.bytes_down);
	jint(&b, "round_ms", now - c->r.start_ms);
	buf_append(&b, "}", 1);
	if (b.len && b.data[b.len - 1] == '}' &&
	    nst_append_metrics(c->st, (char *)b.data, b.len) != 0)
		LOGW("client", "metrics line not written");
	buf_fini(&b);
	if (c->r.st == R_TRAIN)
		cancel_job(c, c->r.train_job);
	c->r.active = 0;
}

void ncl_on_envelope(ncl *c, const Fedlora__Envelope *env, size_t wire_len, uint64_t now_ms)
{
	if (c->stopped)
		return;
	nst_counters_mut(c->st)->bytes_down += wire_len;
	if (!c->session_up) {
		LOGW("client", "message without a session ignored");
		return;
	}
	if (!c->welcomed) {
		switch (env->body_case) {
		case FEDLORA__ENVELOPE__BODY_WELCOME:
			on_welcome(c, env->welcome, now_ms);
			return;
		case FEDLORA__ENVELOPE__BODY_REJECT:
			on_reject(c, env->reject);
			return;
		case FEDLORA__ENVELOPE__BODY_ERROR:
			break;
		default:
			LOGW("client", "%s before Welcome: resetting the session",
			     wire_body_name(env));
			act_simple(c, NCL_ACT_RESET, "unexpected message before Welcome");
			return;
		}
	}
	switch (env->body_case) {
	case FEDLORA__ENVELOPE__BODY_ROUND_START:
		on_round_start(c, env->round_start, wire_len, now_ms);
		break;
	case FEDLORA__ENVELOPE__BODY_UPDATE_ACK:
		on_update_ack(c, env->update_ack);
		break;
	case FEDLORA__ENVELOPE__BODY_ROUND_END:
		on_round_end(c, env->round_end, now_ms);
		break;
	case FEDLORA__ENVELOPE__BODY_HEARTBEAT:
		break;
	case FEDLORA__ENVELOPE__BODY_SECAGG_ROSTER:
		sec_on_roster(c, env->secagg_roster);
		break;
	case FEDLORA__ENVELOPE__BODY_SECAGG_SHARES:
		sec_on_shares(c, env->secagg_shares);
		break;
	case FEDLORA__ENVELOPE__BODY_SECAGG_UNMASK:
		sec_on_unmask(c, env->secagg_unmask);
		break;
	case FEDLORA__ENVELOPE__BODY_DOWN_FINAL:
		on_down_final(c, env->down_final, wire_len);
		break;
	case FEDLORA__ENVELOPE__BODY_BYE:
		LOGI("client", "coordinator says goodbye: %s",
		     env->bye->reason ? env->bye->reason : "");
		if (env->bye->reason && strcmp(env->bye->reason, NCL_BYE_FINISHED) == 0)
			c->finished = 1;
		break;
	case FEDLORA__ENVELOPE__BODY_REJECT:
		on_reject(c, env->reject);
		break;
	case FEDLORA__ENVELOPE__BODY_ERROR: {
		const char *d = env->error->detail ? env->error->detail : "";
		if (env->error->code == FEDLORA__ERROR__CODE__CODE_PROTOCOL_VERSION)
			fatal(c, FL_EUNSUPPORTED, "coordinator speaks another protocol version: %s",
			      d);
		else
			LOGW("client", "coordinator reports an error (code %d): %s",
			     (int)env->error->code, d);
		break;
	}
	case FEDLORA__ENVELOPE__BODY_WELCOME:
		LOGW("client", "second Welcome ignored");
		break;
	default:
		LOGW("client", "unexpected %s from the coordinator ignored", wire_body_name(env));
		send_error(c, FEDLORA__ERROR__CODE__CODE_UNEXPECTED, "unexpected message");
		break;
	}
}

/* ---- timers, stop ---- */

static Fedlora__Heartbeat__State hb_state(const ncl *c)
{
	if (c->up.active && !c->up.acked)
		return FEDLORA__HEARTBEAT__STATE__STATE_UPLOADING;
	if (c->r.active && c->r.st == R_TRAIN)
		return FEDLORA__HEARTBEAT__STATE__STATE_TRAINING;
	return FEDLORA__HEARTBEAT__STATE__STATE_IDLE;
}

void ncl_tick(ncl *c, uint64_t now_ms)
{
	if (c->stopped || !c->welcomed || now_ms < c->next_hb)
		return;
	c->next_hb = now_ms + c->hb_ms;
	const nst_counters *k = nst_counters_get(c->st);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Heartbeat h = FEDLORA__HEARTBEAT__INIT;
	Fedlora__Metric mm[8], *pmm[8];
	size_t nm = 0;
	if (!isnan(k->eval_loss) && k->eval_version) {
		add_metric(mm, pmm, &nm, "eval_loss", k->eval_loss);
		add_metric(mm, pmm, &nm, "eval_version", (double)k->eval_version);
	}
	if (c->r.active && c->r.st == R_TRAIN) {
		add_metric(mm, pmm, &nm, "train_step", c->r.step);
		add_metric(mm, pmm, &nm, "train_steps", c->r.steps);
		if (c->r.step)
			add_metric(mm, pmm, &nm, "train_loss", c->r.step_loss);
	}
	h.seq = ++c->hb_seq;
	h.unix_ms = clk_wall_ms();
	h.state = hb_state(c);
	h.metrics = pmm;
	h.n_metrics = nm;
	env.body_case = FEDLORA__ENVELOPE__BODY_HEARTBEAT;
	env.heartbeat = &h;
	send_env(c, &env);
}

int ncl_timeout(const ncl *c, uint64_t now_ms)
{
	int64_t t = -1;
	if (c->welcomed && !c->stopped)
		t = c->next_hb > now_ms ? (int64_t)(c->next_hb - now_ms) : 0;
	if (c->stopping && c->stop_deadline) {
		int64_t s = c->stop_deadline > now_ms ? (int64_t)(c->stop_deadline - now_ms) : 0;
		if (t < 0 || s < t)
			t = s;
	}
	return t > INT32_MAX ? INT32_MAX : (int)t;
}

void ncl_stop(ncl *c, uint64_t now_ms, uint32_t grace_ms)
{
	if (c->stopping)
		return;
	c->stopping = 1;
	c->stop_deadline = now_ms + grace_ms;
	if (c->r.active && c->r.st == R_TRAIN) {
		cancel_job(c, c->r.train_job);
		c->r.active = 0;
	}
	if (c->eval_job) {
		cancel_job(c, c->eval_job);
		c->eval_job = 0;
	}
	if (c->up.active && !c->up.acked)
		LOGI("client", "stopping: waiting up to %u ms for the ack of round %" PRIu64,
		     grace_ms, c->up.round_id);
	save_state(c);
}

int ncl_finished(const ncl *c)
{
	return c->finished;
}

int ncl_stop_done(const ncl *c, uint64_t now_ms)
{
	if (c->stopped)
		return 1;
	if (!c->stopping)
		return 0;
	if (c->up.active && !c->up.acked && c->welcomed && now_ms < c->stop_deadline)
		return 0;
	return 1;
}

void ncl_bye(ncl *c, const char *reason)
{
	if (c->welcomed && !c->stopped) {
		Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
		Fedlora__Bye b = FEDLORA__BYE__INIT;
		b.reason = (char *)(reason ? reason : "stopping");
		env.body_case = FEDLORA__ENVELOPE__BODY_BYE;
		env.bye = &b;
		send_env(c, &env);
	}
	if (c->up.active && !c->up.acked)
		LOGW("client",
		     "stopped before round %" PRIu64 " was acknowledged; its update is "
		     "abandoned (the residual stays as it was)",
		     c->up.round_id);
	c->stopped = 1;
	save_state(c);
}

/* ---- introspection ---- */

enum ncl_phase ncl_phase(const ncl *c)
{
	if (c->stopped)
		return NCL_STOPPED;
	if (!c->session_up)
		return NCL_OFFLINE;
	if (!c->welcomed)
		return NCL_JOINING;
	if (c->up.active && !c->up.acked)
		return NCL_UPLOADING;
	if (c->r.active && c->r.st == R_SYNC)
		return NCL_SYNCING;
	if (c->r.active && c->r.st == R_TRAIN)
		return NCL_TRAINING;
	return NCL_IDLE;
}

const char *ncl_phase_name(enum ncl_phase p)
{
	static const char *const names[] = {"offline",  "joining",   "idle",   "syncing",
	                                    "training", "uploading", "stopped"};
	return (unsigned)p < sizeof names / sizeof names[0] ? names[p] : "?";
}

uint64_t ncl_round(const ncl *c)
{
	return c->r.active ? c->r.id : 0;
}

void ncl_last_upload(const ncl *c, size_t *bytes, size_t *fp32_bytes)
{
	*bytes = c->up.active ? c->up.len : 0;
	*fp32_bytes = c->up.active ? c->up.fp32_len : 0;
}
