/* bench_fleet — the fleet load generator: one real `fedlora-coordinator
 * serve` process and N real node sessions held by this one process, over
 * mutual TLS on 127.0.0.1, running real rounds.
 *
 * Every session is what `fedlora-node run` is on the wire: its own
 * certificate (made here with the OpenSSL API, signed by the run's CA),
 * the channel's client (chan_client: DEALER, TLS 1.3, heartbeats,
 * reconnects) and the node's protocol machine (node/client.h: Join,
 * RoundStart, global verification by SHA-256, q4 quantization of the
 * delta, Update, RoundEnd). Only training is replaced: a sampled node's
 * "training" adds seeded uniform noise of amplitude 1e-3 to the global
 * adapter after --train-ms milliseconds, so the coordinator receives
 * updates of the right shape and size. Node state lives in memory
 * (nst_open(NULL)): thousands of state folders would measure the disk.
 *
 * Reported: certificate and connect times, the coordinator's RSS idle and
 * with N sessions (per session), per round the phase times (first
 * RoundStart -> all trained -> all acknowledged -> RoundEnd), bytes down
 * and up, the coordinator's CPU seconds per update, against the same
 * bytes' AES-256-GCM and memcpy time measured in this run. Never run by
 * ctest; the slow test tests/integration/slow_fleet.sh runs a small fleet.
 *
 * usage: bench_fleet [--nodes N] [--per-round K] [--rounds R]
 *                    [--layers L] [--dim D] [--rank r] [--train-ms MS]
 *                    [--connect-rate R]
 *                    [--procs P] [--coordinator PATH] [--dir DIR] [--timeout-s S]
 * The adapter is LoRA on attn_q and attn_v of L layers of D x D weights:
 * 4 L D r parameters (default 16 x 1024 x 16: 1,048,576). A round commits
 * with 90 % of its sampled nodes' updates (rounds.min_updates); the
 * coordinator waits for all N sessions before the first round. Sessions open at
 * R per second (default 500), as a fleet comes up; the load is split over
 * P processes (default: as many as the open-file limit needs). */
#include "chan.h"
#include "client.h"
#include "clock.h"
#include "err.h"
#include "fileio.h"
#include "log.h"
#include "lora.h"
#include "rng.h"
#include "sha.h"
#include "state.h"
#include "tlsctx.h"
#include "wire.h"

#include "../procutil.h"
#include "../testpki.h"
#include "bench_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define FLEET_MAX_ROUNDS 64
#define FLEET_BUDGET_MS  40 /* training work per loop turn, then the network */

typedef struct node {
	ncl *cl;
	nst *st;
	chan_client *ch;
	int off, nitems; /* its poll items in the loop's array */
	int welcomed;
	int fatal;
	int finished;
	uint8_t *pend[4]; /* sends refused with FL_EAGAIN, in order */
	size_t pend_len[4];
	int npend;
} node;

typedef struct job {
	node *n;
	ncl_job *j;
	uint64_t due_ms;
} job;

typedef struct rstat {
	uint64_t id;
	double t_start, t_trained, t_acked, t_end; /* clk_seconds() */
	uint64_t starts, trained, acks, accepted, committed, participants;
	uint64_t bytes_down, bytes_up;
	double cpu0, cpu1; /* parent: coordinator CPU seconds at first RoundStart / RoundEnd */
} rstat;

/* One load-generating process: sessions [lo, lo + n) of the fleet. It
 * tells the parent what happens as lines on fd (each line one write(),
 * shorter than PIPE_BUF, so lines of several children never interleave):
 *   S <round> <t>   first RoundStart of a round seen here
 *   E <round> <t>   first RoundEnd of a round seen here
 *   W <t>           every session here welcomed
 *   R <round> <starts> <trained> <acks> <accepted> <committed> <participants>
 *     <bytes_down> <bytes_up> <t_trained> <t_acked>   at the end
 *   F <count> <why> sessions stopped by a fatal error, at the end */
typedef struct fleet {
	int lo, n;
	node *nodes;
	job *jobs;
	size_t njobs, cap_jobs, head;
	uint32_t train_ms;
	rstat r[FLEET_MAX_ROUNDS];
	int nr;
	int fd;
	int welcomed, fatal, finished;
	char first_fatal[400];
} fleet;

static void tell(const fleet *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tell(const fleet *f, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	if (k < 0)
		return;
	if (k > (int)sizeof line - 2)
		k = (int)sizeof line - 2;
	line[k++] = '\n';
	if (write(f->fd, line, (size_t)k) != k)
		return;
}

static double proc_cpu_s(pid_t pid)
{
	char path[64], text[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t k = fread(text, 1, sizeof text - 1, f);
	fclose(f);
	text[k] = 0;
	char *p = strrchr(text, ')');
	if (!p)
		return -1;
	/* fields after the command: state(3) ... utime(14) stime(15) */
	unsigned long ut = 0, st = 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int port_open(int port)
{
	int s = socket(AF_INET, SOCK_STREAM, 0), ok;
	struct sockaddr_in a = {.sin_family = AF_INET,
	                        .sin_port = htons((uint16_t)port),
	                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	ok = s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0;
	if (s >= 0)
		close(s);
	return ok;
}

static EVP_PKEY *ec_key(void)
{
	return EVP_EC_gen("P-256");
}

static rstat *round_of(fleet *f, uint64_t id)
{
	for (int i = 0; i < f->nr; i++)
		if (f->r[i].id == id)
			return &f->r[i];
	if (f->nr == FLEET_MAX_ROUNDS)
		return NULL;
	rstat *r = &f->r[f->nr++];
	memset(r, 0, sizeof *r);
	r->id = id;
	r->t_start = clk_seconds();
	tell(f, "S %" PRIu64 " %.6f", id, r->t_start);
	return r;
}

static int push_job(fleet *f, node *n, ncl_job *j)
{
	if (f->head + f->njobs == f->cap_jobs) {
		if (f->head > 0) {
			memmove(f->jobs, f->jobs + f->head, f->njobs * sizeof *f->jobs);
			f->head = 0;
		} else {
			size_t c = f->cap_jobs ? 2 * f->cap_jobs : 256;
			job *nj = realloc(f->jobs, c * sizeof *nj);
			if (!nj)
				return FL_ENOMEM;
			f->jobs = nj;
			f->cap_jobs = c;
		}
	}
	f->jobs[f->head + f->njobs++] = (job){n, j, clk_mono_ms() + f->train_ms};
	return 0;
}

static void send_or_queue(node *n, ncl_action *a)
{
	if (n->npend == 0) {
		int rc = chan_client_send(n->ch, a->data, a->len);
		if (rc != FL_EAGAIN)
			return;
	}
	if (n->npend < 4) {
		n->pend[n->npend] = a->data;
		n->pend_len[n->npend++] = a->len;
		a->data = NULL;
	}
}

static void flush_pend(node *n)
{
	int i = 0;
	for (; i < n->npend; i++) {
		if (chan_client_send(n->ch, n->pend[i], n->pend_len[i]) == FL_EAGAIN)
			break;
		free(n->pend[i]);
	}
	memmove(n->pend, n->pend + i, (size_t)(n->npend - i) * sizeof n->pend[0]);
	memmove(n->pend_len, n->pend_len + i, (size_t)(n->npend - i) * sizeof n->pend_len[0]);
	n->npend -= i;
}

static void drop_pend(node *n)
{
	for (int i = 0; i < n->npend; i++)
		free(n->pend[i]);
	n->npend = 0;
}

static void drain_actions(fleet *f, node *n)
{
	ncl_action a;
	while (ncl_next(n->cl, &a) == 0) {
		switch (a.kind) {
		case NCL_ACT_SEND:
			if (a.body == FEDLORA__ENVELOPE__BODY_UPDATE) {
				rstat *r = round_of(f, a.round_id);
				if (r)
					r->bytes_up += a.len;
			}
			send_or_queue(n, &a);
			break;
		case NCL_ACT_READY:
			chan_client_set_ready(n->ch);
			break;
		case NCL_ACT_RESET:
			drop_pend(n);
			chan_client_reset(n->ch, a.why);
			break;
		case NCL_ACT_JOB:
			if (push_job(f, n, a.job) == 0)
				a.job = NULL;
			break;
		case NCL_ACT_CANCEL:
			for (size_t i = f->head; i < f->head + f->njobs; i++)
				if (f->jobs[i].n == n && f->jobs[i].j &&
				    f->jobs[i].j->id == a.job_id) {
					ncl_job_free(f->jobs[i].j);
					f->jobs[i].j = NULL;
				}
			break;
		case NCL_ACT_FATAL:
			if (!n->fatal) {
				n->fatal = 1;
				if (f->fatal++ == 0)
					snprintf(f->first_fatal, sizeof f->first_fatal, "%s",
					         a.why);
			}
			break;
		}
		ncl_action_fini(&a);
	}
}

static void on_envelope(fleet *f, node *n, const Fedlora__Envelope *e, size_t len)
{
	rstat *r;
	switch (e->body_case) {
	case FEDLORA__ENVELOPE__BODY_WELCOME:
		if (!n->welcomed) {
			n->welcomed = 1;
			f->welcomed++;
		}
		break;
	case FEDLORA__ENVELOPE__BODY_ROUND_START:
		if ((r = round_of(f, e->round_start->round_id)) != NULL) {
			r->starts++;
			r->bytes_down += len;
		}
		break;
	case FEDLORA__ENVELOPE__BODY_UPDATE_ACK:
		if ((r = round_of(f, e->update_ack->round_id)) != NULL) {
			r->acks++;
			r->accepted += e->update_ack->accepted;
			r->t_acked = clk_seconds();
			r->bytes_down += len;
		}
		break;
	case FEDLORA__ENVELOPE__BODY_ROUND_END:
		if ((r = round_of(f, e->round_end->round_id)) != NULL) {
			if (r->t_end == 0) {
				r->t_end = clk_seconds();
				r->committed = e->round_end->committed;
				r->participants = e->round_end->participants;
				tell(f, "E %" PRIu64 " %.6f", r->id, r->t_end);
			}
			r->bytes_down += len;
		}
		break;
	default:
		break;
	}
}

static void on_chan(fleet *f, node *n)
{
	chan_event ev;
	while (chan_client_next(n->ch, &ev) == 0) {
		uint64_t now = clk_mono_ms();
		if (ev.type == CHAN_EV_UP) {
			ncl_on_up(n->cl, now);
		} else if (ev.type == CHAN_EV_MESSAGE) {
			wire_msg *m = NULL;
			if (wire_decode(ev.data, ev.len, CHAN_DEFAULT_MAX_MSG, 0, &m) == 0) {
				on_envelope(f, n, wire_env(m), ev.len);
				ncl_on_envelope(n->cl, wire_env(m), ev.len, now);
			}
			wire_free(m);
		} else if (ev.type == CHAN_EV_DOWN) {
			drop_pend(n);
			if (ev.was_up)
				ncl_on_down(n->cl, now, ev.why);
		}
		chan_event_fini(&ev);
		drain_actions(f, n);
	}
}

/* "Training": global + uniform noise in [-1e-3, 1e-3), seeded by the
 * job, so every update is distinct and non-zero. */
static void run_job(fleet *f, job *jb)
{
	ncl_job *j = jb->j;
	node *n = jb->n;
	uint64_t now = clk_mono_ms();
	if (j->kind == NCL_JOB_EVAL) {
		ncl_on_eval_done(n->cl, j->id, 0, 1.0, now);
	} else {
		tset *local = NULL;
		int rc = tset_clone(j->adapter, &local);
		if (!rc) {
			rng g;
			rng_seed(&g, (uint64_t)(f->lo + (n - f->nodes)) * 1000003u + j->round_id);
			for (size_t t = 0; t < tset_count(local); t++) {
				tensor *x = tset_at(local, t);
				for (size_t i = 0; i < x->n; i++)
					x->data[i] += (rng_uniformf(&g) - 0.5f) * 2e-3f;
			}
		}
		ntr_result res = {.first_loss = 1,
		                  .train_loss = 1,
		                  .steps = j->params.local_steps,
		                  .tokens = 1024,
		                  .samples = 256,
		                  .seconds = f->train_ms * 1e-3};
		ncl_on_train_done(n->cl, j->id, rc, rc ? NULL : local, &res, clk_mono_ms());
		if (rc)
			tset_free(local);
		rstat *r = round_of(f, j->round_id);
		if (r) {
			r->trained++;
			r->t_trained = clk_seconds();
		}
	}
	ncl_job_free(j);
	jb->j = NULL;
	drain_actions(f, n);
}

static void run_jobs(fleet *f)
{
	double t0 = clk_seconds();
	uint64_t now = clk_mono_ms();
	while (f->njobs > 0 && (clk_seconds() - t0) * 1e3 < FLEET_BUDGET_MS) {
		job *jb = &f->jobs[f->head];
		if (jb->j && jb->due_ms > now)
			break;
		if (jb->j)
			run_job(f, jb);
		f->head++;
		f->njobs--;
	}
	if (f->njobs == 0)
		f->head = 0;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
	        "usage: %s [--nodes N] [--per-round K] [--rounds R] [--layers L] [--dim D] "
	        "[--rank r] [--train-ms MS] [--connect-rate R] [--procs P] [--coordinator PATH] "
	        "[--dir DIR] "
	        "[--timeout-s S]\n",
	        argv0);
}

/* A child stops at SIGTERM: the parent sends it once the coordinator has
 * finished (sessions that missed its Bye would otherwise wait for it). */
static volatile sig_atomic_t g_stop;

static void on_term(int sig)
{
	(void)sig;
	g_stop = 1;
}

/* The setting shared by every load-generating process. */
typedef struct fleet_cfg {
	const char *endpoint, *ca_path;
	uint8_t base_fp[32];
	int layers, dim, rank, timeout_s;
	uint32_t train_ms;
	double connect_rate; /* sessions opened per second by this process */
	X509 **certs;
	EVP_PKEY **keys;
} fleet_cfg;

/* Opens session i of this process: its state, protocol machine and
 * channel, which starts connecting at once. */
static int open_session(fleet *f, const fleet_cfg *fc, const lora_spec *spec, const tset *layout,
                        const uint8_t shape_fp[32], tlsctx *tls, void *zctx, int i)
{
	node *nd = &f->nodes[i];
	chan_client_opts o;
	chan_client_opts_default(&o);
	/* Each session from its own loopback address (127.1.x.y), as a fleet
	 * comes from many addresses: the coordinator's per-address limits
	 * then act as they do in the field. */
	char ep[96];
	int g = f->lo + i;
	snprintf(ep, sizeof ep, "tcp://127.1.%d.%d:0;%s", g / 250 % 250, g % 250 + 1,
	         fc->endpoint + 6);
	o.endpoint = ep;
	o.server_name = "127.0.0.1";
	o.tls = tls;
	o.cert = fc->certs[f->lo + i];
	o.key = fc->keys[f->lo + i];
	o.zmq_ctx = zctx;
	o.reconnect_ivl_ms = 200;
	o.reconnect_ivl_max_ms = 10000;
	/* No ZMTP heartbeats: libzmq 4.3.4 aborts (assertion !_io_error or
	 * _input_stopped in stream_engine_base.cpp, libzmq issues 3937 and
	 * 4767) when a heartbeat times out while a socket's input is stopped
	 * by a full receive pipe, which a process serving thousands of
	 * sessions causes routinely. The channel's own heartbeat and idle
	 * timeout still detect dead links. */
	o.zmtp_heartbeat_ivl_ms = 0;
	/* and no receive limit: the same abort follows when a connection ends
	 * while a full pipe has stopped its input (the process reads slower
	 * than the coordinator sends when it serves thousands of sessions) */
	o.rcvhwm = -1;
	/* a process serving thousands of sessions answers slowly under load:
	 * generous session timers, so what is measured is the coordinator */
	o.idle_timeout_ms = 120000;
	o.handshake_timeout_ms = 60000;
	ncl_config nc;
	memset(&nc, 0, sizeof nc);
	memcpy(nc.base_fp, fc->base_fp, 32);
	nc.lora = *spec;
	nc.layout = layout;
	nc.sample_count = 256;
	nc.max_msg = CHAN_DEFAULT_MAX_MSG;
	nc.node_seed = (uint64_t)(f->lo + i) + 1;
	int rc = nst_open(NULL, fc->base_fp, shape_fp, &nd->st);
	if (!rc)
		rc = ncl_new(&nc, nd->st, &nd->cl);
	if (!rc)
		rc = chan_client_new(&o, &nd->ch);
	if (rc)
		fprintf(stderr, "bench_fleet: session %d: %s\n", f->lo + i, fl_strerror(rc));
	return rc;
}

/* A child: holds sessions [lo, lo + n) until every one of them was told
 * the federation finished (or the timeout); exit status 0 when all went
 * well. */
static int run_slice(const fleet_cfg *fc, int lo, int n, int fd)
{
	fleet f = {.lo = lo, .n = n, .train_ms = fc->train_ms, .fd = fd};
	signal(SIGTERM, on_term);
	void *zctx = zmq_ctx_new();
	zmq_ctx_set(zctx, ZMQ_MAX_SOCKETS, n * 3 + 64);
	tlsctx_opts to = {.role = TLSCTX_CLIENT, .ca_path = fc->ca_path};
	tlsctx *tls = NULL;
	lora_spec spec;
	lora_arch arch;
	tset *layout = NULL;
	char why[256] = "", dims[128];
	snprintf(dims, sizeof dims, "attn_q=%dx%d,attn_v=%dx%d", fc->dim, fc->dim, fc->dim,
	         fc->dim);
	memset(&spec, 0, sizeof spec);
	spec.rank = (uint32_t)fc->rank;
	spec.alpha = (float)fc->rank;
	spec.init_seed = 1;
	if (lora_targets_parse("attn_q,attn_v", &spec.targets, why, sizeof why) ||
	    lora_arch_parse((uint32_t)fc->layers, dims, 0, 0, spec.targets, &arch, why,
	                    sizeof why) ||
	    lora_layout(&spec, &arch, &layout) || tlsctx_new(&to, &tls)) {
		fprintf(stderr, "bench_fleet: cannot set up the node side: %s\n", why);
		return 1;
	}
	uint8_t shape_fp[32];
	tset_shape_fingerprint(layout, shape_fp);
	f.nodes = calloc((size_t)n, sizeof *f.nodes);
	zmq_pollitem_t *items = calloc((size_t)n * CHAN_POLLITEMS_MAX, sizeof *items);
	if (!f.nodes || !items)
		return 1;
	double start = clk_seconds(), deadline = start + fc->timeout_s;
	int told_w = 0, rc_main = 0, opened = 0;
	while (clk_seconds() < deadline && f.finished < n && !g_stop) {
		/* sessions open at connect_rate per second, as a fleet comes up */
		int due = (int)((clk_seconds() - start) * fc->connect_rate) + 1;
		while (opened < n && opened < due) {
			if (open_session(&f, fc, &spec, layout, shape_fp, tls, zctx, opened)) {
				rc_main = 1;
				goto out;
			}
			opened++;
		}
		int k = 0, t = opened < n ? 5 : 50;
		uint64_t now = clk_mono_ms();
		for (int i = 0; i < opened; i++) {
			node *nd = &f.nodes[i];
			nd->off = k;
			nd->nitems = chan_client_pollitems(nd->ch, items + k, CHAN_POLLITEMS_MAX);
			if (nd->nitems < 0)
				nd->nitems = 0;
			k += nd->nitems;
			int tc = chan_client_timeout(nd->ch), tn = ncl_timeout(nd->cl, now);
			if (tc >= 0 && tc < t)
				t = tc;
			if (tn >= 0 && tn < t)
				t = tn;
		}
		if (f.njobs)
			t = 0;
		if (zmq_poll(items, k, t) < 0 && errno != EINTR) {
			fprintf(stderr, "bench_fleet: zmq_poll: %s\n", zmq_strerror(errno));
			rc_main = 1;
			break;
		}
		now = clk_mono_ms();
		for (int i = 0; i < opened; i++) {
			node *nd = &f.nodes[i];
			chan_client_process(nd->ch, items + nd->off, nd->nitems);
			on_chan(&f, nd);
			ncl_tick(nd->cl, now);
			drain_actions(&f, nd);
			if (nd->npend)
				flush_pend(nd);
			if (!nd->finished && (ncl_finished(nd->cl) || nd->fatal)) {
				nd->finished = 1;
				f.finished++;
			}
		}
		run_jobs(&f);
		if (!told_w && f.welcomed == n) {
			told_w = 1;
			tell(&f, "W %.6f", clk_seconds());
		}
	}
	if (f.finished < n && !g_stop)
		rc_main = 1;
out:
	for (int i = 0; i < f.nr; i++) {
		rstat *r = &f.r[i];
		tell(&f,
		     "R %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
		     " %" PRIu64 " %" PRIu64 " %" PRIu64 " %.6f %.6f",
		     r->id, r->starts, r->trained, r->acks, r->accepted, r->committed,
		     r->participants, r->bytes_down, r->bytes_up, r->t_trained, r->t_acked);
	}
	if (f.fatal)
		tell(&f, "F %d %s", f.fatal, f.first_fatal);
	for (int i = 0; i < n; i++) {
		node *nd = &f.nodes[i];
		drop_pend(nd);
		chan_client_free(nd->ch);
		ncl_free(nd->cl);
		nst_free(nd->st);
	}
	for (size_t i = f.head; i < f.head + f.njobs; i++)
		ncl_job_free(f.jobs[i].j);
	free(f.jobs);
	tlsctx_unref(tls);
	tset_free(layout);
	zmq_ctx_term(zctx);
	free(items);
	free(f.nodes);
	return rc_main || f.fatal;
}

static rstat *agg_round(rstat *rs, int *nr, uint64_t id)
{
	for (int i = 0; i < *nr; i++)
		if (rs[i].id == id)
			return &rs[i];
	if (*nr == FLEET_MAX_ROUNDS)
		return NULL;
	rstat *r = &rs[(*nr)++];
	memset(r, 0, sizeof *r);
	r->id = id;
	return r;
}

int main(int argc, char **argv)
{
	int nn = 1000, per = 100, rounds = 2, layers = 16, dim = 1024, rank = 16, timeout_s = 1800;
	int procs = 0;
	double rate = 500;
	uint32_t train_ms = 0;
	const char *coord_bin = NULL, *dir_arg = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			usage(argv[0]);
			return 2;
		}
		i++;
		if (!strcmp(a, "--nodes"))
			nn = atoi(v);
		else if (!strcmp(a, "--per-round"))
			per = atoi(v);
		else if (!strcmp(a, "--rounds"))
			rounds = atoi(v);
		else if (!strcmp(a, "--layers"))
			layers = atoi(v);
		else if (!strcmp(a, "--dim"))
			dim = atoi(v);
		else if (!strcmp(a, "--rank"))
			rank = atoi(v);
		else if (!strcmp(a, "--train-ms"))
			train_ms = (uint32_t)atoi(v);
		else if (!strcmp(a, "--coordinator"))
			coord_bin = v;
		else if (!strcmp(a, "--dir"))
			dir_arg = v;
		else if (!strcmp(a, "--connect-rate"))
			rate = atof(v);
		else if (!strcmp(a, "--procs"))
			procs = atoi(v);
		else if (!strcmp(a, "--timeout-s"))
			timeout_s = atoi(v);
		else {
			usage(argv[0]);
			return 2;
		}
	}
	if (nn < 2 || per < 1 || per > nn || rounds < 1 || rounds > FLEET_MAX_ROUNDS - 1 ||
	    layers < 1 || dim < 8 || rank < 1 || rank > dim || !(rate > 0)) {
		fprintf(stderr,
		        "bench_fleet: need 2 <= nodes, 1 <= per-round <= nodes, 1 <= rounds "
		        "<= 63, rank <= dim, connect-rate > 0\n");
		return 2;
	}
	char self[4096], coord_path[4096];
	if (!coord_bin) {
		ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
		if (k <= 0)
			return 1;
		self[k] = 0;
		snprintf(coord_path, sizeof coord_path, "%s/../fedlora-coordinator", dirname(self));
		coord_bin = coord_path;
	}
	if (access(coord_bin, X_OK) != 0) {
		fprintf(stderr, "bench_fleet: %s: not an executable (give --coordinator PATH)\n",
		        coord_bin);
		return 1;
	}
	log_set_level(LOG_LVL_WARN);
	signal(SIGPIPE, SIG_IGN);

	char dir[4096];
	if (dir_arg) {
		snprintf(dir, sizeof dir, "%s", dir_arg);
		if (file_mkdirs(dir) != 0) {
			fprintf(stderr, "bench_fleet: cannot create %s\n", dir);
			return 1;
		}
	} else {
		snprintf(dir, sizeof dir, "/tmp/fedlora-fleet.XXXXXX");
		if (!mkdtemp(dir)) {
			perror("mkdtemp");
			return 1;
		}
	}
	printf("bench_fleet: %d sessions, %d sampled per round, %d rounds, adapter %d x "
	       "(attn_q, attn_v) %dx%d rank %d = %" PRIu64 " parameters, training %u ms, in %s\n",
	       nn, per, rounds, layers, dim, dim, rank,
	       (uint64_t)layers * 2 * 2 * (uint64_t)dim * (uint64_t)rank, train_ms, dir);

	/* references, measured in this run */
	double aes = bench_aesgcm_rate(5), mcp = bench_memcpy_rate(5);
	printf("reference: AES-256-GCM %.0f MB/s, memcpy %.0f MB/s (one core, medians of 5)\n",
	       aes / 1e6, mcp / 1e6);

	/* PKI: CA and coordinator on disk (the coordinator reads files), the
	 * nodes' identities in memory */
	double t_pki = clk_seconds();
	EVP_PKEY *cak = ec_key(), *sk = ec_key();
	X509 *ca = tp_make_cert(cak, "fleet-ca", NULL, NULL, 1, NULL, NULL, 1);
	X509 *sc = tp_make_cert(sk, "coordinator", ca, cak, 0, "serverAuth", "IP:127.0.0.1", 2);
	char p_ca[4200], p_sc[4200], p_sk[4200], p_conf[4200], p_log[4200];
	snprintf(p_ca, sizeof p_ca, "%s/ca.crt", dir);
	snprintf(p_sc, sizeof p_sc, "%s/coordinator.crt", dir);
	snprintf(p_sk, sizeof p_sk, "%s/coordinator.key", dir);
	snprintf(p_conf, sizeof p_conf, "%s/coordinator.conf", dir);
	snprintf(p_log, sizeof p_log, "%s/coordinator.log", dir);
	if (!cak || !sk || !ca || !sc || tp_write_pem(p_ca, ca, NULL) ||
	    tp_write_pem(p_sc, sc, NULL) || tp_write_pem(p_sk, NULL, sk)) {
		fprintf(stderr, "bench_fleet: cannot make the PKI in %s\n", dir);
		return 1;
	}
	X509 **certs = calloc((size_t)nn, sizeof *certs);
	EVP_PKEY **keys = calloc((size_t)nn, sizeof *keys);
	if (!certs || !keys)
		return 1;
	for (int i = 0; i < nn; i++) {
		char cn[32];
		snprintf(cn, sizeof cn, "fleet-%05d", i);
		keys[i] = ec_key();
		certs[i] = keys[i]
		               ? tp_make_cert(keys[i], cn, ca, cak, 0, "clientAuth", NULL, 100 + i)
		               : NULL;
		if (!certs[i]) {
			fprintf(stderr, "bench_fleet: cannot make certificate %d\n", i);
			return 1;
		}
	}
	t_pki = clk_seconds() - t_pki;

	/* the coordinator */
	uint8_t base_fp[32];
	const char *tag = "fedlora-fleet-bench";
	sha256(tag, strlen(tag), base_fp);
	char base_hex[65];
	for (int i = 0; i < 32; i++)
		snprintf(base_hex + 2 * i, 3, "%02x", base_fp[i]);
	int port = pu_free_port();
	FILE *c = fopen(p_conf, "w");
	if (!c || port <= 0)
		return 1;
	fprintf(c,
	        "[server]\nlisten = tcp://127.0.0.1:%d\ncert = %s\nkey = %s\nca = %s\n"
	        "max_nodes = %d\nmax_pending = 256\nmax_pending_per_addr = 256\n"
	        "[federation]\nbase_sha256 = %s\nseed = 7\n"
	        "[adapter]\nlayers = %d\ndims = attn_q=%dx%d,attn_v=%dx%d\n"
	        "[lora]\nrank = %d\nalpha = %d\ntargets = attn_q,attn_v\ninit_seed = 1\n"
	        "[rounds]\nmin_nodes = %d\nnodes_per_round = %d\nmin_updates = %d\n"
	        "deadline_ms = %d\nstart_delay_ms = 500\nmax_rounds = %d\n"
	        "[train]\nlocal_steps = 1\nuplink_format = q4\nuplink_block = 32\n"
	        "error_feedback = false\n"
	        "[aggregation]\nstrategy = fedavg\ndownlink_format = q8\n"
	        "[state]\ndir = %s/coord-state\n[log]\nlevel = info\n",
	        port, p_sc, p_sk, p_ca, nn, base_hex, layers, dim, dim, dim, dim, rank, rank, nn,
	        per, per - per / 10, timeout_s * 1000, rounds, dir);
	fclose(c);
	fflush(stdout);
	pid_t coord = fork();
	if (coord == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (!freopen(p_log, "a", stdout) || !freopen(p_log, "a", stderr))
			_exit(127);
		execl(coord_bin, coord_bin, "serve", "--config", p_conf, (char *)NULL);
		_exit(127);
	}
	for (int k = 0; k < 300 && !port_open(port); k++) {
		if (waitpid(coord, NULL, WNOHANG) == coord) {
			fprintf(stderr, "bench_fleet: the coordinator exited; see %s\n", p_log);
			return 1;
		}
		usleep(20000);
	}
	usleep(500000);
	long rss_idle = pu_rss_kb(coord);
	char endpoint[64];
	snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);

	/* Load-generating processes: each session costs this process four file
	 * descriptors (its TCP socket and three ZeroMQ mailboxes: the DEALER,
	 * its monitor and our end of the monitor), the coordinator one. */
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	long per_proc = ((long)rl.rlim_cur - 256) / 4;
	if (procs <= 0)
		procs = (int)((nn + per_proc - 1) / per_proc);
	if (procs < 1)
		procs = 1;
	if ((long)nn / procs + 1 > per_proc) {
		fprintf(stderr,
		        "bench_fleet: %d sessions in %d processes need %ld descriptors each "
		        "(limit %lu)\n",
		        nn, procs, ((long)nn / procs + 1) * 4 + 256, (unsigned long)rl.rlim_cur);
		return 1;
	}
	if ((long)nn + 256 > (long)rl.rlim_cur)
		printf("warning: the coordinator may run out of file descriptors: %d sessions, "
		       "limit %lu\n",
		       nn, (unsigned long)rl.rlim_cur);
	printf("load generators: %d processes (open-file limit %lu: at most %ld sessions each)\n",
	       procs, (unsigned long)rl.rlim_cur, per_proc);
	fleet_cfg fc = {.endpoint = endpoint,
	                .ca_path = p_ca,
	                .layers = layers,
	                .dim = dim,
	                .rank = rank,
	                .timeout_s = timeout_s,
	                .train_ms = train_ms,
	                .connect_rate = rate / procs,
	                .certs = certs,
	                .keys = keys};
	memcpy(fc.base_fp, base_fp, 32);
	int pfd[2];
	if (pipe(pfd) != 0)
		return 1;
	pid_t *kids = calloc((size_t)procs, sizeof *kids);
	if (!kids)
		return 1;
	double t0 = clk_seconds();
	fflush(stdout);
	for (int p = 0; p < procs; p++) {
		int lo = (int)((long)nn * p / procs), hi = (int)((long)nn * (p + 1) / procs);
		kids[p] = fork();
		if (kids[p] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			close(pfd[0]);
			_exit(run_slice(&fc, lo, hi - lo, pfd[1]));
		}
	}
	close(pfd[1]);

	/* the parent: follows the children's lines, samples the coordinator */
	rstat rs[FLEET_MAX_ROUNDS];
	int nr = 0, welcomed_procs = 0, fatal = 0;
	double t_connected = -1;
	long rss_full = -1;
	char first_fatal[256] = "", line[600];
	char rbuf[8192];
	size_t have = 0;
	int coord_status = -1, open_fd = 1;
	double coord_gone_at = 0;
	while (open_fd) {
		/* the coordinator's end: children get 15 s to see its Bye, then
		 * SIGTERM (a session that was away when it said Bye never will) */
		int st;
		if (coord > 0 && waitpid(coord, &st, WNOHANG) == coord) {
			coord_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			coord = 0;
			coord_gone_at = clk_seconds();
		}
		if (coord_gone_at > 0 && clk_seconds() - coord_gone_at > 15) {
			for (int p = 0; p < procs; p++)
				kill(kids[p], SIGTERM);
			coord_gone_at = -1;
		}
		struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
		if (poll(&pf, 1, 200) <= 0)
			continue;
		ssize_t k = read(pfd[0], rbuf + have, sizeof rbuf - 1 - have);
		if (k <= 0) {
			if (k < 0 && errno == EINTR)
				continue;
			open_fd = 0;
			break;
		}
		have += (size_t)k;
		rbuf[have] = 0;
		char *nl, *cur = rbuf;
		while ((nl = strchr(cur, '\n')) != NULL) {
			size_t ll = (size_t)(nl - cur);
			if (ll >= sizeof line)
				ll = sizeof line - 1;
			memcpy(line, cur, ll);
			line[ll] = 0;
			cur = nl + 1;
			uint64_t id;
			double t;
			rstat *r;
			if (sscanf(line, "S %" SCNu64 " %lf", &id, &t) == 2) {
				if ((r = agg_round(rs, &nr, id)) && r->t_start == 0) {
					r->t_start = t;
					r->cpu0 = proc_cpu_s(coord);
				}
			} else if (sscanf(line, "E %" SCNu64 " %lf", &id, &t) == 2) {
				if ((r = agg_round(rs, &nr, id)) && r->t_end == 0) {
					r->t_end = t;
					r->cpu1 = proc_cpu_s(coord);
				}
			} else if (sscanf(line, "W %lf", &t) == 1) {
				if (++welcomed_procs == procs) {
					t_connected = t - t0;
					printf("connected: %d sessions welcomed in %.1f s (%.0f "
					       "per second)\n",
					       nn, t_connected, nn / t_connected);
					fflush(stdout);
					usleep(300000);
					rss_full = pu_rss_kb(coord);
				}
			} else if (line[0] == 'R') {
				uint64_t v[9];
				double tt, ta;
				if (sscanf(line,
				           "R %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
				           " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
				           " %" SCNu64 " %lf %lf",
				           &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
				           &v[8], &tt, &ta) == 11 &&
				    (r = agg_round(rs, &nr, v[0]))) {
					r->starts += v[1];
					r->trained += v[2];
					r->acks += v[3];
					r->accepted += v[4];
					r->committed |= v[5];
					if (v[6] > r->participants)
						r->participants = v[6];
					r->bytes_down += v[7];
					r->bytes_up += v[8];
					if (tt > r->t_trained)
						r->t_trained = tt;
					if (ta > r->t_acked)
						r->t_acked = ta;
				}
			} else if (line[0] == 'F') {
				int cnt = 0, off = 0;
				if (sscanf(line, "F %d %n", &cnt, &off) >= 1) {
					if (!fatal)
						snprintf(first_fatal, sizeof first_fatal, "%s",
						         line + off);
					fatal += cnt;
				}
			}
		}
		/* keep an incomplete line; a line longer than the buffer is dropped */
		size_t rest = have - (size_t)(cur - rbuf);
		memmove(rbuf, cur, rest);
		have = rest < sizeof rbuf - 1 ? rest : 0;
	}
	close(pfd[0]);
	int rc_main = 0;
	if (coord_status > 0) {
		fprintf(stderr, "bench_fleet: the coordinator exited with status %d; see %s\n",
		        coord_status, p_log);
		rc_main = 1;
	}
	for (int p = 0; p < procs; p++) {
		int st = 0;
		waitpid(kids[p], &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			rc_main = 1;
	}
	int ended = 0;
	for (int i = 0; i < nr; i++)
		ended += rs[i].t_end > 0;
	if (ended < rounds) {
		fprintf(stderr, "bench_fleet: %d of %d rounds ended (timeout %d s); see %s\n",
		        ended, rounds, timeout_s, p_log);
		rc_main = 1;
	}

	/* report */
	printf("certificates: %d made in %.2f s\n", nn, t_pki);
	printf("coordinator RSS: idle %.1f MiB, with %d sessions %.1f MiB: %.1f KiB per session\n",
	       rss_idle / 1024.0, nn, rss_full / 1024.0,
	       rss_full > 0 ? (double)(rss_full - rss_idle) / nn : 0.0);
	printf("%-6s %8s %8s %8s %8s %7s %7s %10s %10s %10s %9s %9s\n", "round", "start_s",
	       "train_s", "acked_s", "end_s", "starts", "accept", "down_MB", "up_MB", "coordCPU_s",
	       "ms/update", "x_aesgcm");
	for (int i = 0; i < nr; i++) {
		rstat *r = &rs[i];
		if (r->t_end == 0)
			continue;
		double cpu = r->cpu1 - r->cpu0, per_up = r->accepted ? cpu / r->accepted : 0;
		double up_each = r->accepted ? (double)r->bytes_up / r->accepted : 0;
		double ref = up_each / aes; /* seconds to AES-GCM one update's bytes once */
		printf("%-6" PRIu64 " %8.2f %8.2f %8.2f %8.2f %7" PRIu64 " %7" PRIu64
		       " %10.1f %10.1f %10.2f %9.2f %9.1f%s\n",
		       r->id, r->t_start - t0, r->t_trained - r->t_start, r->t_acked - r->t_start,
		       r->t_end - r->t_start, r->starts, r->accepted, r->bytes_down / 1e6,
		       r->bytes_up / 1e6, cpu, per_up * 1e3, ref > 0 ? per_up / ref : 0,
		       r->committed ? "" : "  (not committed)");
		printf(
		    "       per update: %.0f bytes up; AES-GCM %.3f ms, memcpy %.3f ms of the same "
		    "bytes\n",
		    up_each, ref * 1e3, up_each / mcp * 1e3);
	}
	printf("times in seconds from the first RoundStart: train_s = last local training done, "
	       "acked_s = last UpdateAck, end_s = RoundEnd; coordCPU_s = the coordinator's CPU "
	       "(user + system) from the first RoundStart to the RoundEnd, all of its work for the "
	       "round (downlink encryption included); x_aesgcm = ms/update over AES-GCM of one "
	       "update's bytes\n");
	if (fatal) {
		printf("node sessions stopped by a fatal error: %d (first: %s)\n", fatal,
		       first_fatal);
		rc_main = 1;
	}
	if (coord > 0) {
		kill(coord, SIGTERM);
		waitpid(coord, NULL, 0);
	}
	for (int i = 0; i < nn; i++) {
		X509_free(certs[i]);
		EVP_PKEY_free(keys[i]);
	}
	free(kids);
	free(certs);
	free(keys);
	X509_free(ca);
	X509_free(sc);
	EVP_PKEY_free(cak);
	EVP_PKEY_free(sk);
	return rc_main;
}
