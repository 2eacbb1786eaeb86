/* run — see run.h. */
#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "chan.h"
#include "cli.h"
#include "client.h"
#include "clock.h"
#include "cmd_util.h"
#include "err.h"
#include "fileio.h"
#include "log.h"
#include "modelfp.h"
#include "qtensor.h"
#include "sha.h"
#include "state.h"
#include "trainer_iface.h"
#include "wire.h"
#include "xfer.h"

extern char **environ;

#define RUN_PROGRESS_MS 250u
#define RUN_MAX_POLL_MS 1000

/* ------------------------------------------------------------------ */
/* configuration                                                       */

static const cfg_key schema[] = {
    {"node", "state_dir", CFG_STR, NULL, 0, 0, NULL,
     "directory for the node's durable state (required)"},
    {"node", "trainer", CFG_ENUM, "lora", 0, 0, "lora|synth",
     "local trainer: lora (the base model) or synth (protocol tests)"},
    {"node", "seed", CFG_INT, "1", 0, 9007199254740991.0, NULL,
     "node-local seed: data order and stochastic rounding"},
    {"node", "eval", CFG_BOOL, "true", 0, 0, NULL,
     "evaluate every new global version on held-out data"},
    {"node", "heartbeat_ms", CFG_INT, "0", 0, 600000, NULL,
     "heartbeat interval; 0 = the coordinator's"},
    {"node", "stop_grace_ms", CFG_INT, "5000", 0, 600000, NULL,
     "on SIGTERM, how long an unacknowledged upload may take"},
    {"node", "max_local_steps", CFG_INT, "0", 0, 100000000, NULL,
     "refuse rounds asking more local steps; 0 = no cap"},
    {"node", "capabilities", CFG_STR, "", 0, 0, NULL, "extra capabilities announced in Join"},
    {"node", "max_rank", CFG_INT, "0", 0, 4096, NULL,
     "most LoRA rank slots this node trains (0 = all of lora.rank; docs/TRAINING.md)"},
    {"node", "upload_formats", CFG_STR, "", 0, 0, NULL,
     "uplink formats this node accepts, e.g. \"q8,q4\" (empty = any)"},
    {"train", "slowdown", CFG_DOUBLE, "1", 1, 1000, NULL,
     "simulated slow device: after every local training step the node sleeps (f - 1) x "
     "that step's measured time, so training takes f times as long whatever the load"},
    {"node", "max_message", CFG_SIZE, "256MiB", 1024, 4294967295.0, NULL,
     "largest message accepted from the coordinator"},
    {"coordinator", "endpoint", CFG_STR, NULL, 0, 0, NULL,
     "coordinator address, e.g. tcp://coord.example:7777 (required)"},
    {"coordinator", "server_name", CFG_STR, NULL, 0, 0, NULL,
     "name the coordinator certificate must carry; default: endpoint host"},
    {"tls", "cert", CFG_STR, NULL, 0, 0, NULL, "node certificate, PEM (required)"},
    {"tls", "key", CFG_STR, NULL, 0, 0, NULL, "node private key, PEM (required)"},
    {"tls", "ca", CFG_STR, NULL, 0, 0, NULL, "federation CA certificate, PEM (required)"},
    {"tls", "crl", CFG_STR, NULL, 0, 0, NULL, "optional CRL, PEM"},
    {"reconnect", "min_ms", CFG_INT, "200", 10, 600000, NULL,
     "first reconnect delay (jittered per node)"},
    {"reconnect", "max_ms", CFG_INT, "10000", 10, 3600000, NULL, "reconnect back-off ceiling"},
    {"reconnect", "handshake_timeout_ms", CFG_INT, "15000", 100, 600000, NULL,
     "from connect until Welcome, else retry"},
    {"reconnect", "linger_ms", CFG_INT, "1000", 0, 60000, NULL,
     "time to flush the final Bye at exit"},
    {"model", "path", CFG_STR, NULL, 0, 0, NULL, "base model GGUF (required for the lora trainer)"},
    {"model", "fingerprint", CFG_STR, NULL, 0, 0, NULL,
     "base fingerprint as 64 hex digits instead of hashing the file"},
    {"model", "base_quant", CFG_ENUM, "none", 0, 0, "none|q8_0|q4_0",
     "QLoRA: quantize the frozen base in memory"},
    {"model", "threads", CFG_INT, "0", 0, 1024, NULL, "compute threads; 0 = OpenMP default"},
    {"data", "train", CFG_STR, NULL, 0, 0, NULL, "private training data (required for lora)"},
    {"data", "eval", CFG_STR, NULL, 0, 0, NULL,
     "private held-out data; default: eval_fraction of train"},
    {"data", "eval_fraction", CFG_DOUBLE, "0.1", 0, 0.9, NULL,
     "held-out share of train when data.eval is unset"},
    {"data", "eval_max_tokens", CFG_INT, "65536", 0, 1e12, NULL,
     "tokens evaluated per held-out pass; 0 = all"},
    {"data", "max_ctx", CFG_INT, "1024", 1, 1048576, NULL,
     "largest context a round may ask for (memory bound)"},
    {"data", "max_batch", CFG_INT, "32", 1, 65536, NULL,
     "largest batch a round may ask for (memory bound)"},
    LORA_CFG_KEYS,
    XFER_CFG_KEYS,
    {"log", "level", CFG_ENUM, "info", 0, 0, "debug|info|warn|error", "log level"},
    {"log", "format", CFG_ENUM, "text", 0, 0, "text|json", "log format"},
};

const cfg_key *nrun_schema(int *n)
{
	*n = (int)(sizeof schema / sizeof schema[0]);
	return schema;
}

/* ------------------------------------------------------------------ */
/* signals                                                             */

static int g_sigpipe[2] = {-1, -1};
static volatile sig_atomic_t g_signals;

static void on_signal(int sig)
{
	(void)sig;
	int e = errno;
	g_signals++;
	if (g_sigpipe[1] >= 0) {
		char b = 1;
		ssize_t w = write(g_sigpipe[1], &b, 1);
		(void)w;
	}
	errno = e;
}

static int signals_install(void)
{
	if (pipe(g_sigpipe) != 0)
		return FL_EIO;
	for (int i = 0; i < 2; i++) {
		int fl = fcntl(g_sigpipe[i], F_GETFL);
		if (fl < 0 || fcntl(g_sigpipe[i], F_SETFL, fl | O_NONBLOCK) != 0 ||
		    fcntl(g_sigpipe[i], F_SETFD, FD_CLOEXEC) != 0)
			return FL_EIO;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

static void signals_remove(void)
{
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	for (int i = 0; i < 2; i++) {
		if (g_sigpipe[i] >= 0)
			close(g_sigpipe[i]);
		g_sigpipe[i] = -1;
	}
}

/* ------------------------------------------------------------------ */
/* training thread                                                     */

enum { W_JOB = 1, W_QUIT, W_DONE, W_PROGRESS };

/* One message on the PAIR socket, copied as bytes. Pointers hand over
 * ownership: the sender never touches them again. */
typedef struct wmsg {
	int type;
	int kind; /* enum ncl_job_kind (DONE) */
	int rc;
	ncl_job *job; /* JOB */
	uint64_t job_id;
	tset *local; /* DONE of a train job */
	ntr_result res;
	double loss;
	uint32_t step, total;
} wmsg;

typedef struct worker {
	void *zctx;
	char endpoint[64];
	const ntr_ops *ops;
	void *tr;
	_Atomic uint64_t cancel_upto; /* jobs with id <= this stop / are skipped */
	pthread_t th;
	int started;
	/* training-thread side */
	void *sock;
	uint64_t cur_job;
	uint64_t last_progress_ms;
	double slowdown; /* train.slowdown (>= 1) */
	int in_train;    /* a TRAIN job runs: steps are slowed down */
	double step_t0;  /* when the current step began (clk_seconds) */
} worker;

static int wsend(void *sock, const wmsg *m)
{
	for (;;) {
		if (zmq_send(sock, m, sizeof *m, 0) == (int)sizeof *m)
			return 0;
		if (errno == EINTR)
			continue;
		LOGE("run", "inproc send failed: %s", zmq_strerror(errno));
		return FL_ENET;
	}
}

/* Progress callback, called by the trainer between steps on the training
 * thread: reports (throttled) and says whether to stop. */
static int w_progress(void *arg, uint32_t step, uint32_t total, double loss)
{
	worker *w = arg;
	if (atomic_load(&w->cancel_upto) >= w->cur_job)
		return 1;
	if (w->in_train && w->slowdown > 1) {
		/* train.slowdown: sleep (f - 1) x the step just measured, in
		 * slices so that a cancel is still seen within 50 ms */
		double t = clk_seconds();
		double left = (w->slowdown - 1) * (t - w->step_t0);
		while (left > 0 && atomic_load(&w->cancel_upto) < w->cur_job) {
			double sl = left < 0.05 ? left : 0.05;
			clk_sleep_ms((uint64_t)(sl * 1e3 + 0.5));
			left -= sl;
		}
		w->step_t0 = clk_seconds();
		if (atomic_load(&w->cancel_upto) >= w->cur_job)
			return 1;
	}
	uint64_t now = clk_mono_ms();
	if (now - w->last_progress_ms >= RUN_PROGRESS_MS || step == total) {
		w->last_progress_ms = now;
		wmsg m = {.type = W_PROGRESS,
		          .job_id = w->cur_job,
		          .step = step,
		          .total = total,
		          .loss = loss};
		wsend(w->sock, &m);
	}
	return 0;
}

static void w_run_job(worker *w, ncl_job *j)
{
	wmsg m = {.type = W_DONE, .job_id = j->id, .kind = (int)j->kind, .loss = NAN};
	w->cur_job = j->id;
	w->last_progress_ms = 0;
	if (atomic_load(&w->cancel_upto) >= j->id) {
		m.rc = FL_EINTR;
	} else if (j->kind == NCL_JOB_TRAIN) {
		tset *local = NULL;
		m.rc = tset_zeros_like(j->adapter, &local);
		w->in_train = 1;
		w->step_t0 = clk_seconds();
		if (!m.rc)
			m.rc = w->ops->train(w->tr, j->adapter, &j->params, local, &m.res,
			                     w_progress, w);
		w->in_train = 0;
		if (!m.rc) {
			m.local = local;
			local = NULL;
		}
		tset_free(local);
	} else {
		m.rc = w->ops->eval(w->tr, j->adapter, &m.loss, w_progress, w);
	}
	ncl_job_free(j);
	if (wsend(w->sock, &m) != 0)
		tset_free(m.local);
}

static void *w_main(void *arg)
{
	worker *w = arg;
	for (;;) {
		wmsg m;
		int n = zmq_recv(w->sock, &m, sizeof m, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			LOGE("run", "training thread: inproc receive failed: %s",
			     zmq_strerror(errno));
			break;
		}
		if (n != (int)sizeof m)
			continue;
		if (m.type == W_QUIT)
			break;
		if (m.type == W_JOB && m.job)
			w_run_job(w, m.job);
	}
	return NULL;
}

/* Creates the PAIR pair: the network side binds, the training side
 * connects; the training thread then only ever uses its own socket. The
 * worker socket is created here but first used inside w_main (a ZeroMQ
 * socket may migrate between threads with a full memory barrier, which
 * pthread_create provides). */
static int worker_start(worker *w, void **net_sock)
{
	static _Atomic unsigned seq;
	snprintf(w->endpoint, sizeof w->endpoint, "inproc://fedlora-train-%d-%u", (int)getpid(),
	         atomic_fetch_add(&seq, 1));
	void *a = zmq_socket(w->zctx, ZMQ_PAIR), *b = zmq_socket(w->zctx, ZMQ_PAIR);
	int zero = 0;
	if (!a || !b || zmq_setsockopt(a, ZMQ_SNDHWM, &zero, sizeof zero) ||
	    zmq_setsockopt(a, ZMQ_RCVHWM, &zero, sizeof zero) ||
	    zmq_setsockopt(b, ZMQ_SNDHWM, &zero, sizeof zero) ||
	    zmq_setsockopt(b, ZMQ_RCVHWM, &zero, sizeof zero) || zmq_bind(a, w->endpoint) ||
	    zmq_connect(b, w->endpoint)) {
		LOGE("run", "cannot create the inproc socket pair: %s", zmq_strerror(errno));
		if (a)
			zmq_close(a);
		if (b)
			zmq_close(b);
		return FL_ENET;
	}
	w->sock = b;
	if (pthread_create(&w->th, NULL, w_main, w) != 0) {
		zmq_close(a);
		zmq_close(b);
		w->sock = NULL;
		return FL_ENOMEM;
	}
	w->started = 1;
	*net_sock = a;
	return 0;
}

static void worker_stop(worker *w, void *net_sock)
{
	if (!w->started)
		return;
	atomic_store(&w->cancel_upto, UINT64_MAX);
	wmsg q = {.type = W_QUIT};
	wsend(net_sock, &q);
	pthread_join(w->th, NULL);
	w->started = 0;
	zmq_close(w->sock);
	w->sock = NULL;
	/* results still queued for us: free what they own */
	for (;;) {
		wmsg m;
		int n = zmq_recv(net_sock, &m, sizeof m, ZMQ_DONTWAIT);
		if (n != (int)sizeof m)
			break;
		if (m.type == W_DONE)
			tset_free(m.local);
	}
}

/* ------------------------------------------------------------------ */
/* the network thread                                                  */

typedef struct runner {
	cfg *cfg;
	const ntr_ops *ops;
	void *tr;
	tset *layout;
	nst *st;
	ncl *cl;
	void *zctx;
	void *pair;
	chan_client *ch;
	xfer *xf;       /* chunked transfers of large messages */
	uint64_t xpeer; /* the UP session (chan event peer), 0 when down */
	worker w;
	size_t max_msg;
	int lock_fd; /* flock on state_dir/LOCK, held for the whole run */
	/* sends refused with FL_EAGAIN, retried in order */
	ncl_action pend[64];
	int npend;
	int fatal_code;
	char fatal_why[256];
	int stopping;
	uint64_t stop_at;
	uint64_t kill_on_upload; /* test hook (FEDLORA_TEST_KILL_ON_UPLOAD=round) */
	/* secure aggregation: the TLS key and certificate sign the round keys,
	 * the CA verifies the neighbours' (loaded from the tls.* files) */
	EVP_PKEY *sa_key;
	X509 *sa_cert;
	X509_STORE *sa_ca;
} runner;

/* Loads tls.key, the first certificate of tls.cert and tls.ca for secure
 * aggregation. On failure the node simply does not announce "secagg"
 * (logged); the channel reports unusable files itself. */
static void sa_load(runner *r)
{
	cfg *c = r->cfg;
	FILE *fk = fopen(cfg_str(c, "tls.key"), "r");
	FILE *fc = fopen(cfg_str(c, "tls.cert"), "r");
	FILE *fa = fopen(cfg_str(c, "tls.ca"), "r");
	X509 *ca = NULL;
	if (fk)
		r->sa_key = PEM_read_PrivateKey(fk, NULL, NULL, NULL);
	if (fc)
		r->sa_cert = PEM_read_X509(fc, NULL, NULL, NULL);
	if (fa)
		ca = PEM_read_X509(fa, NULL, NULL, NULL);
	r->sa_ca = X509_STORE_new();
	if (!r->sa_key || !r->sa_cert || !ca || !r->sa_ca ||
	    X509_STORE_add_cert(r->sa_ca, ca) != 1) {
		LOGW("run", "TLS key, certificate or CA not readable for secure aggregation; the "
		            "node will not announce \"secagg\"");
		EVP_PKEY_free(r->sa_key);
		X509_free(r->sa_cert);
		X509_STORE_free(r->sa_ca);
		r->sa_key = NULL;
		r->sa_cert = NULL;
		r->sa_ca = NULL;
	}
	X509_free(ca);
	if (fk)
		fclose(fk);
	if (fc)
		fclose(fc);
	if (fa)
		fclose(fa);
}

/* node.max_rank and node.upload_formats into the client's config. */
static int rank_caps(const cfg *c, const ntr_spec *spec, ncl_config *nc, char *err, size_t el)
{
	uint32_t mr = (uint32_t)cfg_int(c, "node.max_rank");
	if (mr > spec->lora.rank) {
		snprintf(err, el, "node.max_rank %u exceeds lora.rank %u", mr, spec->lora.rank);
		return FL_ECONFIG;
	}
	nc->max_rank = mr;
	const char *s = cfg_str(c, "node.upload_formats");
	nc->n_upload_formats = 0;
	while (s && *s) {
		while (*s == ',' || *s == ' ')
			s++;
		size_t n = strcspn(s, ", ");
		if (!n)
			break;
		char f[8];
		enum qt_fmt q;
		if (n >= sizeof f || (memcpy(f, s, n), f[n] = 0, qt_fmt_parse(f, &q) != 0)) {
			snprintf(err, el,
			         "node.upload_formats: '%.*s' is not f32, f16, q8, q4 or q2",
			         (int)(n > 16 ? 16 : n), s);
			return FL_ECONFIG;
		}
		if (nc->n_upload_formats == 8) {
			snprintf(err, el, "node.upload_formats: more than 8 formats");
			return FL_ECONFIG;
		}
		nc->upload_formats[nc->n_upload_formats++] = (int)q;
		s += n;
	}
	return 0;
}

static int base_fingerprint(runner *r, uint8_t fp[32], char *err, size_t el)
{
	const char *hex = cfg_str(r->cfg, "model.fingerprint");
	const char *model = cfg_str(r->cfg, "model.path");
	if (hex) {
		if (strlen(hex) != 64 || hex_decode(hex, fp, 32) != 0) {
			snprintf(err, el, "model.fingerprint: expected 64 hex digits (%s)",
			         cfg_source(r->cfg, "model.fingerprint"));
			return FL_ECONFIG;
		}
		return 0;
	}
	if (model) {
		char cache[4096];
		int k = snprintf(cache, sizeof cache, "%s/basefp.cache",
		                 cfg_str(r->cfg, "node.state_dir"));
		if (k < 0 || (size_t)k >= sizeof cache)
			return FL_ETOOBIG;
		int rc = mfp_compute_cached(model, cache, fp);
		if (rc)
			snprintf(err, el, "model.path: cannot fingerprint %s: %s", model,
			         fl_strerror(rc));
		return rc;
	}
	/* synth without a model: a fixed, documented stand-in */
	const char *tag = "fedlora-no-base-model";
	return sha256(tag, strlen(tag), fp);
}

static int need(cfg *c, const char *key)
{
	if (cfg_is_set(c, key) && *cfg_str(c, key))
		return 0;
	char env[96] = "FEDLORA_";
	size_t n = strlen(env);
	for (const char *p = key; *p && n + 1 < sizeof env; p++)
		env[n++] = *p == '.' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
	env[n] = 0;
	fprintf(stderr, "fedlora-node run: %s is required (config file, %s or --%s=...)\n", key,
	        env, key);
	return CLI_USAGE;
}

static void carry_out(runner *r, ncl_action *a);

/* Sends a->data: a large message (or one queued behind it) through xfer,
 * which then owns the bytes (a->data is NULL afterwards, and a full xfer
 * queue drops the message, logged), the rest on the channel. */
static int run_send(runner *r, ncl_action *a)
{
	if (!r->xf || !r->xpeer || !xfer_wants(r->xf, r->xpeer, a->len))
		return chan_client_send(r->ch, a->data, a->len);
	xfer_blob *b = NULL;
	int rc = xfer_blob_wrap(a->data, a->len, &b);
	a->data = NULL;
	if (rc == 0)
		rc = xfer_send(r->xf, r->xpeer, b);
	xfer_blob_release(b);
	if (rc == FL_EAGAIN) {
		LOGW("run", "transfer queue full: %zu-byte message dropped", a->len);
		rc = FL_ETOOBIG;
	}
	return rc;
}

static void flush_pending(runner *r)
{
	int i = 0;
	for (; i < r->npend; i++) {
		int rc = run_send(r, &r->pend[i]);
		if (rc == FL_EAGAIN)
			break;
		if (rc)
			LOGD("run", "queued message dropped: %s", fl_strerror(rc));
		ncl_action_fini(&r->pend[i]);
	}
	memmove(r->pend, r->pend + i, (size_t)(r->npend - i) * sizeof r->pend[0]);
	r->npend -= i;
}

static void drop_pending(runner *r)
{
	for (int i = 0; i < r->npend; i++)
		ncl_action_fini(&r->pend[i]);
	r->npend = 0;
}

static void carry_out(runner *r, ncl_action *a)
{
	int rc;
	switch (a->kind) {
	case NCL_ACT_SEND:
		if (r->npend > 0) {
			if (r->npend < (int)(sizeof r->pend / sizeof r->pend[0])) {
				r->pend[r->npend++] = *a;
				a->data = NULL;
			} else {
				LOGW("run", "send queue full; message dropped");
			}
			break;
		}
		rc = run_send(r, a);
		if (rc == 0 && a->body == FEDLORA__ENVELOPE__BODY_UPDATE && r->kill_on_upload &&
		    a->round_id == r->kill_on_upload) {
			/* test hook: die while the update is on its way — queued in
			 * the channel, before it is flushed to the socket */
			LOGW("run",
			     "FEDLORA_TEST_KILL_ON_UPLOAD: killing this node during the upload "
			     "of round %" PRIu64,
			     a->round_id);
			raise(SIGKILL);
		}
		if (rc == FL_EAGAIN) {
			r->pend[r->npend++] = *a;
			a->data = NULL;
		} else if (rc) {
			LOGD("run", "message not sent (%s): no session", fl_strerror(rc));
		}
		break;
	case NCL_ACT_READY:
		if ((rc = chan_client_set_ready(r->ch)) != 0)
			LOGW("run", "channel not ready: %s", fl_strerror(rc));
		break;
	case NCL_ACT_RESET:
		drop_pending(r);
		chan_client_reset(r->ch, a->why);
		break;
	case NCL_ACT_JOB: {
		wmsg m = {.type = W_JOB, .job = a->job};
		if (wsend(r->pair, &m) == 0) {
			a->job = NULL;
		} else if (!r->fatal_code) {
			r->fatal_code = FL_ENET;
			snprintf(r->fatal_why, sizeof r->fatal_why,
			         "cannot hand a job to the training thread");
		}
		break;
	}
	case NCL_ACT_CANCEL: {
		uint64_t cur = atomic_load(&r->w.cancel_upto);
		while (a->job_id > cur &&
		       !atomic_compare_exchange_weak(&r->w.cancel_upto, &cur, a->job_id))
			;
		break;
	}
	case NCL_ACT_FATAL:
		if (!r->fatal_code) {
			r->fatal_code = a->code ? a->code : FL_ESTATE;
			snprintf(r->fatal_why, sizeof r->fatal_why, "%s", a->why);
		}
		break;
	}
	ncl_action_fini(a);
}

static void drain_actions(runner *r)
{
	ncl_action a;
	while (ncl_next(r->cl, &a) == 0)
		carry_out(r, &a);
}

static void on_chan_event(runner *r, chan_event *ev)
{
	uint64_t now = clk_mono_ms();
	switch (ev->type) {
	case CHAN_EV_UP:
		LOGI("run", "TLS session %" PRIu64 " up with coordinator '%s'", ev->peer, ev->cn);
		if (r->xf && xfer_peer_up(r->xf, ev->peer, "coordinator", now) == 0)
			r->xpeer = ev->peer;
		ncl_on_up(r->cl, now);
		break;
	case CHAN_EV_MESSAGE: {
		if (r->xf && xfer_is_mine(ev->data, ev->len)) {
			xfer_on_message(r->xf, ev->peer, ev->data, ev->len, now);
			break;
		}
		wire_msg *m = NULL;
		int rc = wire_decode(ev->data, ev->len, r->max_msg, 0, &m);
		if (rc) {
			LOGW("run", "undecodable message from the coordinator (%zu bytes): %s",
			     ev->len, fl_strerror(rc));
			break;
		}
		ncl_on_envelope(r->cl, wire_env(m), ev->len, now);
		wire_free(m);
		break;
	}
	case CHAN_EV_DOWN:
		if (r->xf && r->xpeer) {
			xfer_peer_gone(r->xf, r->xpeer, now);
			r->xpeer = 0;
		}
		drop_pending(r);
		if (ev->was_up)
			ncl_on_down(r->cl, now, ev->why);
		else
			/* the channel has logged the reason as a warning */
			LOGD("run", "connection attempt failed: %s", ev->why);
		break;
	}
	chan_event_fini(ev);
}

static void on_worker_msgs(runner *r)
{
	for (;;) {
		wmsg m;
		int n = zmq_recv(r->pair, &m, sizeof m, ZMQ_DONTWAIT);
		if (n < 0)
			break;
		if (n != (int)sizeof m)
			continue;
		uint64_t now = clk_mono_ms();
		if (m.type == W_PROGRESS) {
			ncl_on_progress(r->cl, m.job_id, m.step, m.total, m.loss);
		} else if (m.type == W_DONE) {
			if (m.kind == NCL_JOB_TRAIN)
				ncl_on_train_done(r->cl, m.job_id, m.rc, m.local, &m.res, now);
			else
				ncl_on_eval_done(r->cl, m.job_id, m.rc, m.loss, now);
		}
	}
}

static int loop(runner *r)
{
	uint32_t grace = (uint32_t)cfg_int(r->cfg, "node.stop_grace_ms");
	int handled_signals = 0;
	for (;;) {
		zmq_pollitem_t items[CHAN_POLLITEMS_MAX + 2];
		int n = chan_client_pollitems(r->ch, items, CHAN_POLLITEMS_MAX);
		if (n < 0)
			return n;
		int ipair = n, isig = n + 1;
		items[ipair] = (zmq_pollitem_t){r->pair, 0, ZMQ_POLLIN, 0};
		items[isig] = (zmq_pollitem_t){NULL, g_sigpipe[0], ZMQ_POLLIN, 0};
		uint64_t now = clk_mono_ms();
		int t = chan_client_timeout(r->ch), tc = ncl_timeout(r->cl, now);
		int tx = r->xf ? xfer_timeout(r->xf, now) : -1;
		if (t < 0 || t > RUN_MAX_POLL_MS)
			t = RUN_MAX_POLL_MS;
		if (tc >= 0 && tc < t)
			t = tc;
		if (tx >= 0 && tx < t)
			t = tx;
		if (r->npend)
			t = t > 20 ? 20 : t;
		int pr = zmq_poll(items, n + 2, t);
		if (pr < 0 && errno != EINTR) {
			LOGE("run", "zmq_poll: %s", zmq_strerror(errno));
			return FL_ENET;
		}
		if (items[isig].revents & ZMQ_POLLIN) {
			char b[16];
			while (read(g_sigpipe[0], b, sizeof b) > 0)
				;
		}
		if (g_signals > handled_signals) {
			now = clk_mono_ms();
			if (!r->stopping) {
				LOGI("run", "stop requested: finishing up (grace %u ms)", grace);
				r->stopping = 1;
				ncl_stop(r->cl, now, grace);
			} else {
				LOGW("run", "second stop request: leaving now");
				ncl_stop(r->cl, now, 0);
				r->stop_at = now;
			}
			handled_signals = g_signals;
		}
		if (pr < 0)
			pr = 0;
		int rc = chan_client_process(r->ch, items, n);
		if (rc && rc != FL_EAGAIN && rc != FL_EINTR)
			LOGD("run", "channel: %s", fl_strerror(rc));
		chan_event ev;
		while (chan_client_next(r->ch, &ev) == 0) {
			on_chan_event(r, &ev);
			drain_actions(r);
		}
		on_worker_msgs(r);
		now = clk_mono_ms();
		ncl_tick(r->cl, now);
		if (r->xf)
			xfer_tick(r->xf, now);
		if (r->npend)
			flush_pending(r);
		drain_actions(r);
		if (r->fatal_code)
			return r->fatal_code;
		if (!r->stopping && ncl_finished(r->cl)) {
			LOGI("run", "the coordinator says the federation is finished: stopping");
			r->stopping = 1;
			ncl_stop(r->cl, now, 0);
		}
		if (r->stopping && (ncl_stop_done(r->cl, now) || r->stop_at)) {
			ncl_bye(r->cl, "node stopping");
			drain_actions(r);
			return 0;
		}
	}
}

/* One `fedlora-node run` per state_dir: two would write the same state
 * files and replace each other's session at the coordinator. The lock is
 * state_dir/LOCK (flock, released when the process ends, also by kill -9). */
static int lock_state_dir(runner *r)
{
	const char *dir = cfg_str(r->cfg, "node.state_dir");
	char p[PATH_MAX];
	if (snprintf(p, sizeof p, "%s/LOCK", dir) >= (int)sizeof p) {
		LOGE("run", "node.state_dir %s: path too long", dir);
		return FL_ETOOBIG;
	}
	long holder = 0;
	int rc = file_lock(p, &r->lock_fd, &holder);
	if (rc == FL_EBUSY) {
		if (holder)
			LOGE("run",
			     "node.state_dir %s is in use by another fedlora-node (pid %ld holds "
			     "%s); one node process per state directory",
			     dir, holder, p);
		else
			LOGE("run",
			     "node.state_dir %s is in use by another fedlora-node (lock %s held); "
			     "one node process per state directory",
			     dir, p);
	} else if (rc) {
		LOGE("run", "node.state_dir %s: cannot take the lock %s", dir, p);
	}
	return rc;
}

static int open_trainer(runner *r, ntr_spec *spec, char *err, size_t el)
{
	cfg *c = r->cfg;
	memset(spec, 0, sizeof *spec);
	int rc = lora_spec_from_cfg(c, &spec->lora, err, el);
	if (rc)
		return rc;
	spec->model_path = cfg_str(c, "model.path");
	spec->train_path = cfg_str(c, "data.train");
	spec->eval_path = cfg_str(c, "data.eval");
	spec->eval_fraction = cfg_double(c, "data.eval_fraction");
	spec->base_quant = cfg_str(c, "model.base_quant");
	spec->threads = (int)cfg_int(c, "model.threads");
	spec->max_ctx = (uint32_t)cfg_int(c, "data.max_ctx");
	spec->max_batch = (uint32_t)cfg_int(c, "data.max_batch");
	spec->max_steps = (uint32_t)cfg_int(c, "node.max_local_steps");
	spec->eval_max_tokens = (uint64_t)cfg_int(c, "data.eval_max_tokens");
	spec->seed = (uint64_t)cfg_int(c, "node.seed");
	r->ops = ntr_find(cfg_str(c, "node.trainer"));
	if (!r->ops) {
		snprintf(err, el,
		         "node.trainer = %s is not available in this build (available: %s)",
		         cfg_str(c, "node.trainer"), ntr_names());
		return FL_ECONFIG;
	}
	if (strcmp(r->ops->name, "synth") != 0 && (!spec->model_path || !spec->train_path)) {
		snprintf(err, el, "%s is not set: the %s trainer needs it ([%s] %s = PATH)",
		         !spec->model_path ? "model.path" : "data.train", r->ops->name,
		         !spec->model_path ? "model" : "data",
		         !spec->model_path ? "path" : "train");
		return FL_ECONFIG;
	}
	rc = r->ops->open(spec, &r->tr, err, el);
	if (rc)
		return rc;
	rc = r->ops->layout(r->tr, &r->layout);
	if (rc)
		snprintf(err, el, "cannot build the adapter layout: %s", fl_strerror(rc));
	return rc;
}

static int chan_open(runner *r, char *err, size_t el)
{
	cfg *c = r->cfg;
	chan_client_opts o;
	chan_client_opts_default(&o);
	o.endpoint = cfg_str(c, "coordinator.endpoint");
	o.server_name = cfg_str(c, "coordinator.server_name");
	o.cert_path = cfg_str(c, "tls.cert");
	o.key_path = cfg_str(c, "tls.key");
	o.ca_path = cfg_str(c, "tls.ca");
	o.crl_path = cfg_str(c, "tls.crl");
	o.max_msg = r->max_msg;
	if (o.out_queue_max < r->max_msg + (1u << 20))
		o.out_queue_max = r->max_msg + (1u << 20);
	o.handshake_timeout_ms = (int)cfg_int(c, "reconnect.handshake_timeout_ms");
	o.linger_ms = (int)cfg_int(c, "reconnect.linger_ms");
	/* Jitter: each node starts its back-off from a random point in
	 * [min/2, 3 min/2], so a fleet cut off together does not come back
	 * in lockstep. */
	int mn = (int)cfg_int(c, "reconnect.min_ms"), mx = (int)cfg_int(c, "reconnect.max_ms");
	uint32_t rnd = 0;
	uint8_t sha[32];
	uint64_t t = clk_mono_ns() ^ (uint64_t)getpid() << 32;
	if (sha256(&t, sizeof t, sha) == 0)
		memcpy(&rnd, sha, sizeof rnd);
	int j = mn / 2 + (int)(rnd % (uint32_t)(mn + 1));
	o.reconnect_ivl_ms = j < 10 ? 10 : j;
	o.reconnect_ivl_max_ms = mx < o.reconnect_ivl_ms ? o.reconnect_ivl_ms : mx;
	o.zmq_ctx = r->zctx;
	int rc = chan_client_new(&o, &r->ch);
	if (rc)
		snprintf(err, el, "cannot set up the channel to %s: %s (see the log above)",
		         o.endpoint, fl_strerror(rc));
	return rc;
}

/* xfer_io: the channel's current session. */
static int xio_send(void *ud, uint64_t peer, const uint8_t *data, size_t len)
{
	runner *r = ud;
	(void)peer;
	return chan_client_send(r->ch, data, len);
}

static void xio_deliver(void *ud, uint64_t peer, const uint8_t *data, size_t len)
{
	runner *r = ud;
	(void)peer;
	wire_msg *m = NULL;
	int rc = wire_decode(data, len, r->max_msg, 0, &m);
	if (rc) {
		LOGW("run", "undecodable message from the coordinator (%zu bytes): %s", len,
		     fl_strerror(rc));
		return;
	}
	ncl_on_envelope(r->cl, wire_env(m), len, clk_mono_ms());
	wire_free(m);
}

static void xio_fail(void *ud, uint64_t peer, const char *why)
{
	runner *r = ud;
	(void)peer;
	chan_client_reset(r->ch, why);
}

/* Spill directory <node.state_dir>/xfer. */
static int xfer_open(runner *r)
{
	xfer_opts o;
	xfer_opts_from_cfg(r->cfg, &o);
	char dir[PATH_MAX];
	if (snprintf(dir, sizeof dir, "%s/xfer", cfg_str(r->cfg, "node.state_dir")) >=
	    (int)sizeof dir)
		return FL_ETOOBIG;
	o.dir = dir;
	o.max_msg = r->max_msg;
	o.queue_max = r->max_msg + (1u << 20);
	xfer_io io = {.ud = r, .send = xio_send, .deliver = xio_deliver, .fail = xio_fail};
	return xfer_new(&o, &io, &r->xf);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: fedlora-node run --config FILE [--section.key=value ...] "
	           "[--print-config]\n\n"
	           "Runs a federation node: joins the coordinator over mutual TLS, trains the\n"
	           "LoRA adapter on private local data each round and uploads only quantized\n"
	           "deltas. SIGTERM stops cleanly. Keys (deploy/node.conf documents each):\n\n");
	cfg_help(schema, (int)(sizeof schema / sizeof schema[0]), f);
}

int nrun_main(int argc, char **argv)
{
	const char *conf = NULL;
	int print = 0, rc;
	cfg *c = NULL;
	if (cli_wants_help(argc, argv)) {
		usage(stdout);
		return CLI_OK;
	}
	/* As the model subcommands: the training thread's OpenMP team must not
	 * spin while the node shares its cores (docs/ENGINE.md, Threads). */
	cmdu_passive_openmp(argv);
	if (cfg_new(schema, (int)(sizeof schema / sizeof schema[0]), &c) != 0)
		return CLI_FAIL;
	if (cfg_load_args(c, &argc, argv) != 0) {
		fprintf(stderr, "fedlora-node run: %s\n", cfg_error(c));
		cfg_free(c);
		return CLI_USAGE;
	}
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			conf = argv[++i];
		} else if (strncmp(argv[i], "--config=", 9) == 0) {
			conf = argv[i] + 9;
		} else if (strcmp(argv[i], "--print-config") == 0) {
			print = 1;
		} else {
			fprintf(stderr, "fedlora-node run: unknown argument '%s'\n", argv[i]);
			usage(stderr);
			cfg_free(c);
			return CLI_USAGE;
		}
	}
	/* FEDLORA_NODE_BIN and FEDLORA_COORD_BIN name the binaries for tests
	 * and scripts; they are not configuration keys of the [node] section. */
	size_t ne = 0;
	while (environ && environ[ne])
		ne++;
	char **env = calloc(ne + 1, sizeof *env);
	if (!env) {
		cfg_free(c);
		return CLI_FAIL;
	}
	size_t kept = 0;
	for (size_t i = 0; i < ne; i++)
		if (strncmp(environ[i], "FEDLORA_NODE_BIN=", 17) != 0 &&
		    strncmp(environ[i], "FEDLORA_COORD_BIN=", 18) != 0)
			env[kept++] = environ[i];
	int envrc = cfg_load_env(c, env);
	free(env);
	if ((conf && cfg_load_file(c, conf) != 0) || envrc != 0) {
		fprintf(stderr, "fedlora-node run: %s\n", cfg_error(c));
		cfg_free(c);
		return CLI_USAGE;
	}
	if (print) {
		cfg_dump(c, stdout);
		cfg_free(c);
		return CLI_OK;
	}
	enum log_level lvl;
	enum log_format fmt;
	if (log_parse_level(cfg_str(c, "log.level"), &lvl) == 0)
		log_set_level(lvl);
	if (log_parse_format(cfg_str(c, "log.format"), &fmt) == 0)
		log_set_format(fmt);
	log_set_name("node");
	if (need(c, "node.state_dir") || need(c, "coordinator.endpoint") || need(c, "tls.cert") ||
	    need(c, "tls.key") || need(c, "tls.ca")) {
		cfg_free(c);
		return CLI_USAGE;
	}

	runner r;
	memset(&r, 0, sizeof r);
	r.lock_fd = -1;
	r.cfg = c;
	r.max_msg = (size_t)cfg_size(c, "node.max_message");
	const char *hook = getenv("FEDLORA_TEST_KILL_ON_UPLOAD");
	if (hook && *hook)
		r.kill_on_upload = strtoull(hook, NULL, 10);
	char err[512] = "";
	uint8_t base_fp[32], shape_fp[32];
	int exit_code = CLI_FAIL;
	void *net_pair = NULL;
	ntr_spec spec;

	if ((rc = file_mkdirs(cfg_str(c, "node.state_dir"))) != 0) {
		LOGE("run", "node.state_dir %s cannot be created: %s", cfg_str(c, "node.state_dir"),
		     fl_strerror(rc));
		goto out;
	}
	if ((rc = lock_state_dir(&r)) != 0)
		goto out;
	rc = open_trainer(&r, &spec, err, sizeof err);
	if (rc) {
		LOGE("run", "%s", err[0] ? err : fl_strerror(rc));
		exit_code = rc == FL_ECONFIG || rc == FL_ENOENT ? CLI_USAGE : CLI_FAIL;
		goto out;
	}
	if ((rc = tset_shape_fingerprint(r.layout, shape_fp)) != 0)
		goto out;
	if ((rc = base_fingerprint(&r, base_fp, err, sizeof err)) != 0) {
		LOGE("run", "%s", err);
		exit_code = rc == FL_ECONFIG ? CLI_USAGE : CLI_FAIL;
		goto out;
	}
	if ((rc = nst_open(cfg_str(c, "node.state_dir"), base_fp, shape_fp, &r.st)) != 0)
		goto out;
	ncl_config nc;
	memset(&nc, 0, sizeof nc);
	memcpy(nc.base_fp, base_fp, 32);
	nc.lora = spec.lora;
	nc.layout = r.layout;
	nc.sample_count = r.ops->sample_count(r.tr);
	nc.capabilities = cfg_str(c, "node.capabilities");
	nc.heartbeat_ms = (uint32_t)cfg_int(c, "node.heartbeat_ms");
	nc.eval = cfg_bool(c, "node.eval");
	nc.max_msg = r.max_msg;
	nc.node_seed = spec.seed;
	nc.max_local_steps = spec.max_steps;
	if ((rc = rank_caps(c, &spec, &nc, err, sizeof err)) != 0) {
		LOGE("run", "%s", err);
		exit_code = CLI_USAGE;
		goto out;
	}
	const char *nosa = getenv("FEDLORA_TEST_NO_SECAGG"); /* tests: an old node */
	if (!(nosa && *nosa == '1'))
		sa_load(&r);
	nc.sa_key = r.sa_key;
	nc.sa_cert = r.sa_cert;
	nc.sa_ca = r.sa_ca;
	const char *sad = getenv("FEDLORA_TEST_SECAGG_DUMP"); /* tests only */
	nc.sa_dump_dir = sad && *sad ? sad : NULL;
	const char *sdie = getenv("FEDLORA_TEST_SECAGG_DIE"); /* tests only */
	nc.sa_die_at = sdie && *sdie ? sdie : NULL;
	if ((rc = ncl_new(&nc, r.st, &r.cl)) != 0)
		goto out;
	if (nst_residual(r.st)) {
		uint8_t rs[32];
		char rh[65];
		if (tset_fingerprint(nst_residual(r.st), rs) == 0) {
			hex_encode(rs, 32, rh);
			LOGI("run",
			     "error-feedback residual of round %" PRIu64 " loaded (sha256 %s)",
			     nst_residual_round(r.st), rh);
		}
	}
	{
		char hex[65];
		hex_encode(base_fp, 32, hex);
		const nst_counters *k = nst_counters_get(r.st);
		LOGI("run",
		     "node starting: trainer %s, base %.16s..., %zu adapter tensors (%zu params), "
		     "%" PRIu64 " samples, global version %" PRIu64 ", %" PRIu64
		     " updates accepted so far%s",
		     r.ops->name, hex, tset_count(r.layout), tset_numel(r.layout), nc.sample_count,
		     nst_version(r.st), k->updates_accepted,
		     nst_residual(r.st) ? ", error-feedback residual loaded" : "");
	}
	if ((rc = signals_install()) != 0)
		goto out;
	r.zctx = zmq_ctx_new();
	if (!r.zctx) {
		rc = FL_ENET;
		goto out;
	}
	r.w.zctx = r.zctx;
	r.w.ops = r.ops;
	r.w.tr = r.tr;
	r.w.slowdown = cfg_double(c, "train.slowdown");
	if ((rc = worker_start(&r.w, &net_pair)) != 0)
		goto out;
	r.pair = net_pair;
	if ((rc = chan_open(&r, err, sizeof err)) != 0) {
		LOGE("run", "%s", err);
		exit_code =
		    rc == FL_ENOENT || rc == FL_ECONFIG || rc == FL_EINVAL ? CLI_USAGE : CLI_FAIL;
		goto out;
	}
	if ((rc = xfer_open(&r)) != 0) {
		LOGE("run", "cannot start chunked transfers (transport.*, node.state_dir)");
		goto out;
	}
	rc = loop(&r);
	if (rc == 0) {
		exit_code = CLI_OK;
		LOGI("run", "stopped cleanly");
	} else if (r.fatal_code) {
		LOGE("run", "stopping: %s", r.fatal_why);
		exit_code = r.fatal_code == FL_ECONFIG ? CLI_USAGE : CLI_FAIL;
	}
out:
	drop_pending(&r);
	if (r.st)
		nst_save(r.st);
	xfer_free(r.xf);
	chan_client_free(r.ch); /* flushes the Bye within linger */
	if (net_pair) {
		worker_stop(&r.w, net_pair);
		zmq_close(net_pair);
	}
	ncl_free(r.cl);
	EVP_PKEY_free(r.sa_key);
	X509_free(r.sa_cert);
	X509_STORE_free(r.sa_ca);
	if (r.zctx)
		zmq_ctx_term(r.zctx);
	nst_free(r.st);
	tset_free(r.layout);
	if (r.ops && r.tr)
		r.ops->close(r.tr);
	signals_remove();
	if (r.lock_fd >= 0)
		close(r.lock_fd); /* releases the lock */
	cfg_free(c);
	return exit_code;
}
