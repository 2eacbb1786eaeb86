/* serve — see serve.h. */
#include "serve.h"

#include "chan.h"
#include "clock.h"
#include "err.h"
#include "fed.h"
#include "fileio.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "upstream.h"
#include "xfer.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <unistd.h>
#include <zmq.h>

#define MOD           "serve"
#define WORKER_INPROC "inproc://fedlora-agg-worker"

typedef struct srv {
	const cconf *cc;
	void *zctx;
	chan_server *ch;
	fed *f;
	xfer *xf; /* chunked transfers of large messages (NULL: off) */
	store *st;
	metrics *m;
	void *wsock; /* loop side of the worker pair */
	pthread_t worker;
	int worker_up;
	int sigpipe[2]; /* self-pipe: the signal handler writes the signal number */
	int stopping;
	int forced;
	upstream *up; /* a regional coordinator's side towards the root (tiers) */
} srv;

static int g_pause_commit_ms, g_pause_rename_ms;
static int g_pause_sa_finish_ms; /* tests: FEDLORA_TEST_SECAGG_FINISH_PAUSE_MS */
static volatile int g_sig_wfd = -1;

/* Async-signal-safe: one byte per signal into the self-pipe. Whatever
 * thread the kernel picks (sanitizer runtimes add threads of their own),
 * the loop sees the byte. */
static void on_signal(int sig)
{
	int saved = errno;
	unsigned char b = (unsigned char)sig;
	if (g_sig_wfd >= 0) {
		ssize_t w = write(g_sig_wfd, &b, 1);
		(void)w;
	}
	errno = saved;
}

/* ---- worker thread ---- */

static void *worker_main(void *arg)
{
	void *zctx = arg;
	void *s = zmq_socket(zctx, ZMQ_PAIR);
	if (!s || zmq_connect(s, WORKER_INPROC) != 0) {
		LOGE(MOD, "worker: cannot connect %s: %s", WORKER_INPROC,
		     zmq_strerror(zmq_errno()));
		if (s)
			zmq_close(s);
		return NULL;
	}
	for (;;) {
		fed_job *job = NULL;
		int n = zmq_recv(s, &job, sizeof job, 0);
		if (n < 0 && zmq_errno() == EINTR)
			continue;
		if (n != (int)sizeof job || !job)
			break; /* NULL: stop */
		fed_job_run(job);
		while (zmq_send(s, &job, sizeof job, 0) < 0 && zmq_errno() == EINTR)
			;
	}
	int linger = 0;
	zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
	zmq_close(s);
	return NULL;
}

/* ---- fed_io ---- */

/* A large message (or one queued behind it) goes through xfer: one copy
 * for all its peers, made on first use. */
static int xfer_send_one(srv *S, uint64_t peer, const uint8_t *data, size_t len, xfer_blob **blob)
{
	if (!*blob && xfer_blob_new(data, len, blob))
		return FL_ENOMEM;
	return xfer_send(S->xf, peer, *blob);
}

static void io_send(void *ud, const uint64_t *peers, size_t n, const uint8_t *data, size_t len)
{
	srv *S = ud;
	chan_shared *sh = NULL;
	xfer_blob *blob = NULL;
	/* peer 0 never exists: xfer_wants(.., 0, len) is "len is over the
	 * threshold", and then no peer needs the channel's shared copy */
	if (n > 1 && !(S->xf && xfer_wants(S->xf, 0, len)) && chan_shared_new(data, len, &sh)) {
		LOGE(MOD, "out of memory queuing %zu bytes for %zu nodes", len, n);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		int rc = S->xf && xfer_wants(S->xf, peers[i], len)
		             ? xfer_send_one(S, peers[i], data, len, &blob)
		         : sh ? chan_server_send_shared(S->ch, peers[i], sh)
		              : chan_server_send(S->ch, peers[i], data, len);
		if (rc == FL_EAGAIN) {
			/* the node cannot keep up: end its session; it re-joins and,
			 * if it is a participant, gets its round again */
			LOGW(MOD,
			     "send queue of session %" PRIu64 " is full (%zu bytes more); "
			     "closing it",
			     peers[i], len);
			chan_server_close_peer(S->ch, peers[i], "send queue full");
		} else if (rc && rc != FL_ENOENT) {
			LOGW(MOD, "send to session %" PRIu64 " failed: %s", peers[i],
			     fl_strerror(rc));
		}
	}
	chan_shared_release(sh);
	xfer_blob_release(blob);
}

/* ---- xfer_io ---- */

static int xio_send(void *ud, uint64_t peer, const uint8_t *data, size_t len)
{
	srv *S = ud;
	return chan_server_send(S->ch, peer, data, len);
}

static void xio_deliver(void *ud, uint64_t peer, const uint8_t *data, size_t len)
{
	srv *S = ud;
	fed_on_bytes(S->f, peer, data, len, clk_mono_ms());
}

static void xio_fail(void *ud, uint64_t peer, const char *why)
{
	srv *S = ud;
	chan_server_close_peer(S->ch, peer, why);
}

static void io_close(void *ud, uint64_t peer, const char *why)
{
	srv *S = ud;
	chan_server_close_peer(S->ch, peer, why);
}

static void io_submit(void *ud, fed_job *job)
{
	srv *S = ud;
	while (zmq_send(S->wsock, &job, sizeof job, 0) < 0) {
		if (zmq_errno() == EINTR)
			continue;
		/* cannot happen with a connected inproc pair; run it here */
		LOGE(MOD, "worker queue: %s; running the job on the loop thread",
		     zmq_strerror(zmq_errno()));
		fed_job_run(job);
		fed_job_done(S->f, job, clk_mono_ms());
		return;
	}
}

/* ---- test hooks ---- */

static void commit_hook(const char *stage, void *ud)
{
	(void)ud;
	LOGI(MOD, "commit stage %s", stage);
	/* "unmask": a secure round's finish job, before the unmasking */
	int ms = strcmp(stage, "unmask") == 0 ? g_pause_sa_finish_ms : g_pause_commit_ms;
	if (ms > 0)
		clk_sleep_ms((uint64_t)ms);
}

static void rename_hook(const char *tmp)
{
	LOGI(MOD, "about to rename %s", tmp);
	if (g_pause_rename_ms > 0)
		clk_sleep_ms((uint64_t)g_pause_rename_ms);
}

static int env_ms(const char *name)
{
	const char *v = getenv(name);
	int64_t x;
	if (!v || !*v || cfg_parse_int(v, &x) || x < 0 || x > 600000)
		return -1;
	return (int)x;
}

/* ---- loop ---- */

static void drain_jobs(srv *S)
{
	for (;;) {
		fed_job *job = NULL;
		int n = zmq_recv(S->wsock, &job, sizeof job, ZMQ_DONTWAIT);
		if (n < 0)
			break;
		if (n == (int)sizeof job && job)
			fed_job_done(S->f, job, clk_mono_ms());
	}
}

static void drain_events(srv *S)
{
	chan_event ev;
	while (chan_server_next(S->ch, &ev) == 0) {
		uint64_t now = clk_mono_ms();
		switch (ev.type) {
		case CHAN_EV_PEER_UP:
			if (S->xf && xfer_peer_up(S->xf, ev.peer, ev.cn, now))
				LOGE(MOD, "out of memory: no chunked transfers with %s", ev.cn);
			fed_peer_up(S->f, ev.peer, ev.cn, now);
			break;
		case CHAN_EV_MESSAGE:
			if (S->xf && xfer_is_mine(ev.data, ev.len))
				xfer_on_message(S->xf, ev.peer, ev.data, ev.len, now);
			else
				fed_on_bytes(S->f, ev.peer, ev.data, ev.len, now);
			break;
		case CHAN_EV_PEER_GONE:
			if (S->xf)
				xfer_peer_gone(S->xf, ev.peer, now);
			fed_peer_gone(S->f, ev.peer, now);
			break;
		}
		chan_event_fini(&ev);
	}
}

static void handle_signals(srv *S)
{
	unsigned char b;
	while (read(S->sigpipe[0], &b, 1) == 1) {
		int signo = b;
		if (signo == SIGHUP) {
			LOGI(MOD, "SIGHUP: reloading certificates, CRL and allow-list");
			chan_server_reload(S->ch);
		} else if (signo == SIGTERM || signo == SIGINT) {
			if (S->stopping) {
				LOGW(MOD, "second %s: exiting now",
				     signo == SIGTERM ? "SIGTERM" : "SIGINT");
				S->forced = 1;
				return;
			}
			LOGI(MOD, "%s: finishing", signo == SIGTERM ? "SIGTERM" : "SIGINT");
			S->stopping = 1;
			fed_shutdown(S->f, clk_mono_ms());
		}
	}
}

static void chan_metrics(srv *S)
{
	if (!S->m)
		return;
	chan_server_stats cs;
	chan_server_get_stats(S->ch, &cs);
	metrics_set(S->m, "fedlora_tls_sessions", NULL, (double)cs.sessions);
	metrics_set_total(S->m, "fedlora_tls_handshakes_total", "result=\"ok\"", (double)cs.hs_ok);
	metrics_set_total(S->m, "fedlora_tls_handshakes_total", "result=\"failed\"",
	                  (double)cs.hs_failed);
	metrics_set_total(S->m, "fedlora_tls_handshakes_total", "result=\"timeout\"",
	                  (double)cs.hs_timeout);
	metrics_set_total(S->m, "fedlora_wire_bytes_total", "direction=\"in\"", (double)cs.wire_in);
	metrics_set_total(S->m, "fedlora_wire_bytes_total", "direction=\"out\"",
	                  (double)cs.wire_out);
	if (S->xf) {
		xfer_stats xs;
		xfer_get_stats(S->xf, &xs);
		const struct {
			const char *name;
			uint64_t out, in;
		} xm[] = {
		    {"fedlora_xfer_chunk_bytes_total", xs.out_chunk_bytes, xs.in_chunk_bytes},
		    {"fedlora_xfer_resumed_bytes_total", xs.out_held_bytes, xs.in_reused_bytes},
		    {"fedlora_xfer_messages_total", xs.out_msgs, xs.in_msgs},
		};
		for (size_t i = 0; i < sizeof xm / sizeof xm[0]; i++) {
			metrics_set_total(S->m, xm[i].name, "direction=\"out\"", (double)xm[i].out);
			metrics_set_total(S->m, xm[i].name, "direction=\"in\"", (double)xm[i].in);
		}
	}
}

/* Chunked transfers: spill directory <state.dir>/xfer. */
static int start_xfer(srv *S)
{
	if (!S->cc->xfer.threshold)
		LOGI(MOD, "transport.chunk_threshold = 0: large messages are sent whole (chunked "
		          "messages from nodes are still accepted)");
	xfer_opts xo = S->cc->xfer;
	char dir[4096];
	int k = snprintf(dir, sizeof dir, "%s/xfer", S->cc->state_dir);
	if (k < 0 || (size_t)k >= sizeof dir)
		return FL_ETOOBIG;
	xo.dir = dir;
	xo.max_msg = S->cc->max_message;
	xo.queue_max = S->cc->max_message + (1u << 20);
	xfer_io xio = {.ud = S, .send = xio_send, .deliver = xio_deliver, .fail = xio_fail};
	return xfer_new(&xo, &xio, &S->xf);
}

static int write_endpoint(const char *path, const char *ep)
{
	char line[300];
	int n = snprintf(line, sizeof line, "%s\n", ep);
	if (n < 0 || (size_t)n >= sizeof line)
		return FL_EINVAL;
	return file_write_atomic(path, line, (size_t)n);
}

/* Every TCP connection costs one file descriptor: raises the soft limit
 * to the hard one, and warns when even that is below what max_sessions
 * connections need (the kernel would then refuse connections with EMFILE
 * before server.max_nodes is reached). */
static void raise_fd_limit(int sessions)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	rlim_t want = (rlim_t)sessions + 256; /* listener, log, state, ZeroMQ internals */
	if (rl.rlim_cur < want && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < want)
		LOGW(MOD,
		     "open-file limit %lu is below the %lu that server.max_nodes + "
		     "server.max_pending connections need: raise it (ulimit -n, LimitNOFILE= in "
		     "systemd) or lower server.max_nodes",
		     (unsigned long)rl.rlim_cur, (unsigned long)want);
}

int serve_run(const cconf *cc)
{
	srv S;
	memset(&S, 0, sizeof S);
	S.cc = cc;
	int rc = 1;
	g_pause_commit_ms = env_ms("FEDLORA_TEST_COMMIT_PAUSE_MS");
	g_pause_rename_ms = env_ms("FEDLORA_TEST_RENAME_PAUSE_MS");
	g_pause_sa_finish_ms = env_ms("FEDLORA_TEST_SECAGG_FINISH_PAUSE_MS");
	if (g_pause_rename_ms >= 0)
		fileio_test_hook = rename_hook;

	/* signals: a handler writes into a self-pipe the loop polls. They are
	 * blocked while threads are created (so the worker, ZeroMQ and HTTP
	 * threads never run the handler) and unblocked on the loop thread. */
	S.sigpipe[0] = S.sigpipe[1] = -1;
	if (pipe(S.sigpipe) != 0 || fcntl(S.sigpipe[0], F_SETFL, O_NONBLOCK) != 0 ||
	    fcntl(S.sigpipe[1], F_SETFL, O_NONBLOCK) != 0 ||
	    fcntl(S.sigpipe[0], F_SETFD, FD_CLOEXEC) != 0 ||
	    fcntl(S.sigpipe[1], F_SETFD, FD_CLOEXEC) != 0) {
		LOGE(MOD, "signal pipe: %s", strerror(errno));
		goto out;
	}
	g_sig_wfd = S.sigpipe[1];
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* A file-size limit (ulimit -f) makes writes fail with EFBIG, handled
	 * like a full disk (back-off, journal backlog), instead of killing us. */
	signal(SIGXFSZ, SIG_IGN);

	if (metrics_new(&S.m)) {
		LOGE(MOD, "out of memory");
		goto out;
	}
	metrics_declare(S.m, "fedlora_tls_sessions", METRICS_GAUGE,
	                "Channel sessions (handshaking included)");
	metrics_declare(S.m, "fedlora_tls_handshakes_total", METRICS_COUNTER,
	                "TLS handshakes since start, by result");
	metrics_declare(S.m, "fedlora_wire_bytes_total", METRICS_COUNTER,
	                "ZeroMQ frame bytes since start, by direction");
	metrics_declare(S.m, "fedlora_xfer_chunk_bytes_total", METRICS_COUNTER,
	                "Chunked transfers: chunk payload bytes sent/received, by direction");
	metrics_declare(S.m, "fedlora_xfer_resumed_bytes_total", METRICS_COUNTER,
	                "Chunked transfers: bytes the receiver already held from a cut transfer");
	metrics_declare(S.m, "fedlora_xfer_messages_total", METRICS_COUNTER,
	                "Chunked transfers completed, by direction");
	if (store_open(cc->state_dir, &S.st)) {
		LOGE(MOD, "cannot use state directory %s (state.dir)", cc->state_dir);
		goto out;
	}

	S.zctx = zmq_ctx_new();
	if (!S.zctx) {
		LOGE(MOD, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
		goto out;
	}
	S.wsock = zmq_socket(S.zctx, ZMQ_PAIR);
	if (!S.wsock || zmq_bind(S.wsock, WORKER_INPROC) != 0) {
		LOGE(MOD, "worker socket: %s", zmq_strerror(zmq_errno()));
		goto out;
	}
	if (pthread_create(&S.worker, NULL, worker_main, S.zctx) != 0) {
		LOGE(MOD, "cannot start the aggregation worker");
		goto out;
	}
	S.worker_up = 1;

	fed_opts fo = cc->fed;
	/* tests only: record every masked input and each unmasked sum */
	const char *dump = getenv("FEDLORA_TEST_SECAGG_DUMP");
	if (dump && *dump)
		fo.secure.dump_dir = dump;
	fo.commit_hook = g_pause_commit_ms >= 0 || g_pause_sa_finish_ms >= 0 ? commit_hook : NULL;
	fed_io io = {.ud = &S, .send = io_send, .close = io_close, .submit = io_submit};
	if (upstream_on(&cc->up)) { /* a region: rounds come from the root */
		if (upstream_new(&cc->up, S.zctx, &S.up))
			goto out;
		fo.tier = upstream_hooks(S.up);
	}
	if (fed_new(&fo, S.st, S.m, &io, &S.f)) {
		LOGE(MOD, "cannot start the federation (see above)");
		goto out;
	}
	if (S.up && upstream_start(S.up, S.f, &fo))
		goto out;

	if (start_xfer(&S)) {
		LOGE(MOD, "cannot start chunked transfers (transport.*, state.dir)");
		goto out;
	}
	raise_fd_limit(cc->max_sessions);
	chan_server_opts co;
	chan_server_opts_default(&co);
	co.endpoint = cc->listen;
	co.cert_path = cc->cert;
	co.key_path = cc->key;
	co.ca_path = cc->ca;
	co.crl_path = cc->crl;
	co.allow_path = cc->allow;
	co.ip_allow = cc->ip_allow;
	co.ip_deny = cc->ip_deny;
	co.max_msg = cc->max_message;
	co.out_queue_max = cc->max_message + (1u << 20);
	co.max_sessions = cc->max_sessions;
	co.max_pending = cc->max_pending;
	co.max_pending_per_addr = cc->max_pending_per_addr;
	co.handshake_timeout_ms = cc->handshake_timeout_ms;
	co.idle_timeout_ms = cc->idle_timeout_ms;
	co.zmq_ctx = S.zctx;
	if (chan_server_new(&co, &S.ch)) {
		LOGE(MOD, "cannot start the channel on %s (server.listen, server.cert/key/ca)",
		     cc->listen);
		goto out;
	}
	LOGI(MOD, "serving on %s, state in %s, version %" PRIu64, chan_server_endpoint(S.ch),
	     cc->state_dir, fed_version(S.f));
	if (cc->endpoint_file && *cc->endpoint_file &&
	    write_endpoint(cc->endpoint_file, chan_server_endpoint(S.ch)))
		LOGW(MOD, "cannot write server.endpoint_file %s", cc->endpoint_file);
	if (cc->metrics_listen && *cc->metrics_listen) {
		int port = 0;
		if (metrics_serve(S.m, cc->metrics_listen, &port) || port <= 0) {
			LOGE(MOD, "cannot serve metrics on %s (metrics.listen)",
			     cc->metrics_listen);
			goto out;
		}
	}

	pthread_sigmask(SIG_UNBLOCK, &set, NULL); /* only the loop thread takes signals */
	uint64_t last_stats = 0;
	while (!S.forced) {
		zmq_pollitem_t it[2 * CHAN_POLLITEMS_MAX + 2];
		int n = chan_server_pollitems(S.ch, it, CHAN_POLLITEMS_MAX);
		it[n].socket = S.wsock;
		it[n].fd = 0;
		it[n].events = ZMQ_POLLIN;
		it[n].revents = 0;
		it[n + 1].socket = NULL;
		it[n + 1].fd = S.sigpipe[0];
		it[n + 1].events = ZMQ_POLLIN;
		it[n + 1].revents = 0;
		int nu = S.up ? upstream_pollitems(S.up, it + n + 2, CHAN_POLLITEMS_MAX) : 0;
		uint64_t now = clk_mono_ms();
		long tmo = 1000;
		long ut = S.up ? upstream_timeout(S.up, now) : -1;
		if (ut >= 0 && ut < tmo)
			tmo = ut;
		int ct = chan_server_timeout(S.ch);
		if (ct >= 0 && ct < tmo)
			tmo = ct;
		int64_t ft = fed_timeout(S.f, now);
		if (ft >= 0 && ft < tmo)
			tmo = (long)ft;
		int xt = xfer_timeout(S.xf, now);
		if (xt >= 0 && xt < tmo)
			tmo = xt;
		int pr = zmq_poll(it, n + 2 + nu, tmo);
		if (pr < 0 && zmq_errno() != EINTR) {
			LOGE(MOD, "zmq_poll: %s", zmq_strerror(zmq_errno()));
			break;
		}
		chan_server_process(S.ch, it, n);
		drain_events(&S);
		if (it[n].revents & ZMQ_POLLIN)
			drain_jobs(&S);
		if (it[n + 1].revents & ZMQ_POLLIN)
			handle_signals(&S);
		if (S.up) {
			upstream_process(S.up, it + n + 2, nu, clk_mono_ms());
			if (upstream_failed(S.up) && !S.stopping) {
				S.stopping = 1;
				fed_shutdown(S.f, clk_mono_ms());
			}
			if (upstream_finished(S.up) && !S.stopping) {
				S.stopping = 1;
				fed_tier_finish(S.f, clk_mono_ms());
			}
		}
		fed_tick(S.f, clk_mono_ms());
		xfer_tick(S.xf, clk_mono_ms());
		now = clk_mono_ms();
		if (now - last_stats >= 1000) {
			chan_metrics(&S);
			last_stats = now;
		}
		if (fed_done(S.f)) {
			rc = upstream_failed(S.up) ? 1 : 0;
			break;
		}
	}
	if (S.forced) {
		rc = 1;
		/* a job may still run on the worker: leave without joining it */
		LOGW(MOD, "forced exit; the state directory keeps the last committed version");
		_exit(1);
	}
	/* let the Byes and RoundEnds go out */
	uint64_t until = clk_mono_ms() + 500;
	while (clk_mono_ms() < until && chan_server_poll(S.ch, 50) >= 0)
		drain_events(&S);
	LOGI(MOD, "stopped at version %" PRIu64 " after %" PRIu64 " committed rounds",
	     fed_version(S.f), fed_rounds_committed(S.f));
out:
	if (S.f && !fed_idle(S.f)) {
		/* wait for the worker to hand back what it runs */
		while (!fed_idle(S.f)) {
			fed_job *job = NULL;
			if (zmq_recv(S.wsock, &job, sizeof job, 0) == (int)sizeof job && job)
				fed_job_done(S.f, job, clk_mono_ms());
		}
	}
	xfer_free(S.xf);
	chan_server_free(S.ch);
	upstream_free(S.up, S.stopping ? "region shutting down" : NULL);
	if (S.worker_up) {
		fed_job *stop = NULL;
		zmq_send(S.wsock, &stop, sizeof stop, 0);
		pthread_join(S.worker, NULL);
	}
	if (S.wsock) {
		int linger = 0;
		zmq_setsockopt(S.wsock, ZMQ_LINGER, &linger, sizeof linger);
		zmq_close(S.wsock);
	}
	fed_free(S.f);
	if (S.zctx)
		zmq_ctx_term(S.zctx);
	metrics_free(S.m);
	store_free(S.st);
	g_sig_wfd = -1;
	if (S.sigpipe[0] >= 0) {
		close(S.sigpipe[0]);
		close(S.sigpipe[1]);
	}
	fileio_test_hook = NULL;
	return rc;
}
