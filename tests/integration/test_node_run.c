/* fedlora-node run as a real process against a scripted coordinator (a real
 * chan_server over TLS on 127.0.0.1 in this process): join, heartbeats
 * flowing while the training thread works, snapshot -> train -> q4 upload
 * with error feedback -> ack, clean SIGTERM (Bye, exit 0, state on disk),
 * restart with the held version and residual, a Reject for a
 * different base model (exit 1, clear message), and Bye "federation
 * finished" (exit 0 by itself). Uses the synth trainer so
 * the protocol is tested on its own; the full loop with real training is
 * test_federation.sh. */
#include "testutil.h"

#include "chan.h"
#include "clock.h"
#include "err.h"
#include "fileio.h"
#include "log.h"
#include "modelfp.h"
#include "qtensor.h"
#include "quant.h"
#include "safetensors.h"
#include "sha.h"
#include "trainer_synth.h"
#include "wire.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static char *g_dir;
static const char *g_bin;

typedef struct coord {
	chan_server *srv;
	uint64_t peer; /* current node session (0: none) */
	int ups, gones;
	int hb_training, hb_total, byes;
	char cn[65];
} coord;

static const char *path(const char *rel)
{
	static char b[8][PATH_MAX];
	static int i;
	char *p = b[i++ % 8];
	snprintf(p, PATH_MAX, "%s/%s", g_dir, rel);
	return p;
}

static void coord_open(coord *c)
{
	memset(c, 0, sizeof *c);
	chan_server_opts o;
	chan_server_opts_default(&o);
	o.endpoint = "tcp://127.0.0.1:*";
	o.cert_path = path("pki/coordinator.crt");
	o.key_path = path("pki/coordinator.key");
	o.ca_path = path("pki/ca.crt");
	o.linger_ms = 200;
	assert_int_equal(chan_server_new(&o, &c->srv), 0);
}

/* Pumps the server until a message of body `want` arrives (returned,
 * caller frees) or timeout. Other traffic is counted. */
static wire_msg *coord_wait(coord *c, Fedlora__Envelope__BodyCase want, int timeout_ms)
{
	uint64_t end = clk_mono_ms() + (uint64_t)timeout_ms;
	while (clk_mono_ms() < end) {
		chan_server_poll(c->srv, 50);
		chan_event ev;
		while (chan_server_next(c->srv, &ev) == 0) {
			if (ev.type == CHAN_EV_PEER_UP) {
				c->peer = ev.peer;
				c->ups++;
				snprintf(c->cn, sizeof c->cn, "%s", ev.cn);
			} else if (ev.type == CHAN_EV_PEER_GONE) {
				if (ev.peer == c->peer)
					c->peer = 0;
				c->gones++;
			} else if (ev.type == CHAN_EV_MESSAGE) {
				wire_msg *m = NULL;
				int rc = wire_decode(ev.data, ev.len, 1u << 30, 0, &m);
				assert_int_equal(rc, 0);
				const Fedlora__Envelope *e = wire_env(m);
				if (e->body_case == FEDLORA__ENVELOPE__BODY_HEARTBEAT) {
					c->hb_total++;
					c->hb_training += e->heartbeat->state ==
					                  FEDLORA__HEARTBEAT__STATE__STATE_TRAINING;
				}
				if (e->body_case == FEDLORA__ENVELOPE__BODY_BYE)
					c->byes++;
				if (e->body_case == want) {
					chan_event_fini(&ev);
					return m;
				}
				wire_free(m);
			}
			chan_event_fini(&ev);
		}
	}
	return NULL;
}

static void coord_send(coord *c, Fedlora__Envelope *env)
{
	buf b;
	buf_init(&b, 0);
	assert_int_equal(wire_encode(env, 0, &b), 0);
	assert_true(c->peer != 0);
	assert_int_equal(chan_server_send(c->srv, c->peer, b.data, b.len), 0);
	buf_fini(&b);
}

static void send_welcome(coord *c, uint64_t version, const uint8_t sha[32])
{
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Welcome w = FEDLORA__WELCOME__INIT;
	w.node_id = c->cn;
	w.coordinator_version = "scripted";
	w.heartbeat_ms = 100;
	w.global_version = version;
	w.global_sha256.data = (uint8_t *)sha;
	w.global_sha256.len = 32;
	env.body_case = FEDLORA__ENVELOPE__BODY_WELCOME;
	env.welcome = &w;
	coord_send(c, &env);
}

/* RoundStart with a snapshot of g (version v) or, when g is NULL, no
 * payload. */
static void send_round(coord *c, uint64_t round, uint64_t v, const tset *g, const uint8_t sha[32],
                       uint32_t steps)
{
	size_t n = g ? tset_count(g) : 0;
	qtensor q[64];
	Fedlora__QTensor m[64], *pm[64];
	assert_true(n <= 64);
	quant_params qp = {QT_F32, 0, QUANT_NEAREST, 0};
	for (size_t i = 0; i < n; i++) {
		qt_init(&q[i]);
		assert_int_equal(quant_encode_tensor(&qp, tset_at(g, i), &q[i]), 0);
		qt_to_proto(&q[i], &m[i]);
		pm[i] = &m[i];
	}
	Fedlora__AdapterPayload ap = FEDLORA__ADAPTER_PAYLOAD__INIT;
	ap.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT;
	ap.to_version = v;
	ap.to_sha256.data = (uint8_t *)sha;
	ap.to_sha256.len = 32;
	ap.n_tensors = n;
	ap.tensors = pm;
	Fedlora__TrainParams tp = FEDLORA__TRAIN_PARAMS__INIT;
	tp.local_steps = steps;
	tp.lr = 0.01f;
	tp.batch_size = 8;
	tp.seed = round;
	tp.uplink_format = FEDLORA__QFORMAT__QFORMAT_Q4;
	tp.uplink_block = 32;
	tp.error_feedback = 1;
	Fedlora__RoundStart rs = FEDLORA__ROUND_START__INIT;
	rs.round_id = round;
	rs.global_version = v;
	rs.global_sha256.data = (uint8_t *)sha;
	rs.global_sha256.len = 32;
	rs.params = &tp;
	rs.deadline_ms = 60000;
	rs.adapter = g ? &ap : NULL;
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	env.body_case = FEDLORA__ENVELOPE__BODY_ROUND_START;
	env.round_start = &rs;
	coord_send(c, &env);
	for (size_t i = 0; i < n; i++)
		qt_fini(&q[i]);
}

static pid_t spawn_node(const char *conf, const char *log)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
		FILE *f = freopen(log, "a", stderr);
		(void)f;
		execl(g_bin, g_bin, "run", "--config", conf, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Waits for pid up to ms; returns its exit status, or -1 on timeout
 * (then kills it). */
static int wait_exit(coord *c, pid_t pid, int ms)
{
	uint64_t end = clk_mono_ms() + (uint64_t)ms;
	int st;
	while (clk_mono_ms() < end) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		/* keep the coordinator's side moving (queued sends, Bye) */
		wire_msg *m = coord_wait(c, FEDLORA__ENVELOPE__BODY__NOT_SET, 20);
		wire_free(m);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

static void write_conf(const char *conf, const char *endpoint, const char *model, const char *state)
{
	FILE *f = fopen(conf, "w");
	assert_non_null(f);
	fprintf(f,
	        "[node]\nstate_dir = %s\ntrainer = synth\nseed = 5\nstop_grace_ms = 3000\n"
	        "[coordinator]\nendpoint = %s\n"
	        "[tls]\ncert = %s\nkey = %s\nca = %s\n"
	        "[reconnect]\nmin_ms = 50\nmax_ms = 500\nlinger_ms = 500\n"
	        "[model]\npath = %s\n"
	        "[lora]\nrank = 4\nalpha = 8\ntargets = attn_q,attn_v\n"
	        "[log]\nlevel = debug\n",
	        state, endpoint, path("pki/nodes/node-01.crt"), path("pki/nodes/node-01.key"),
	        path("pki/ca.crt"), model);
	fclose(f);
}

static int log_has(const char *log, const char *needle)
{
	uint8_t *t = NULL;
	size_t n = 0;
	if (file_read_all(log, 64u << 20, &t, &n) != 0)
		return 0;
	int r = strstr((char *)t, needle) != NULL;
	free(t);
	return r;
}

static void dump(const char *log)
{
	tu_system("tail -n 40 '%s' >&2", log);
}

static void test_node_run(void **state)
{
	(void)state;
	const char *sh = tu_src_path("deploy/certs.sh");
	assert_int_equal(tu_system("bash '%s' init '%s/pki' >/dev/null && bash '%s' coordinator "
	                           "'%s/pki' --ip 127.0.0.1 >/dev/null && bash '%s' node '%s/pki' "
	                           "node-01 >/dev/null",
	                           sh, g_dir, sh, g_dir, sh, g_dir),
	                 0);
	assert_int_equal(tu_system("'%s' init-model --out '%s/base.gguf' --dim 64 --layers 2 "
	                           "--heads 4 --ffn 128 --ctx 64 --seed 3 >/dev/null",
	                           g_bin, g_dir),
	                 0);
	assert_int_equal(tu_system("'%s' init-model --out '%s/other.gguf' --dim 64 --layers 2 "
	                           "--heads 4 --ffn 128 --ctx 64 --seed 4 >/dev/null",
	                           g_bin, g_dir),
	                 0);
	uint8_t base_fp[32];
	assert_int_equal(mfp_compute(path("base.gguf"), base_fp), 0);

	/* the federation's layout and v0, as a coordinator would make them */
	ntr_spec spec;
	memset(&spec, 0, sizeof spec);
	spec.model_path = path("base.gguf");
	spec.lora.rank = 4;
	spec.lora.alpha = 8;
	spec.lora.targets = (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V);
	void *tr = NULL;
	char err[256];
	assert_int_equal(ntr_synth_ops.open(&spec, &tr, err, sizeof err), 0);
	tset *g = NULL;
	assert_int_equal(ntr_synth_ops.layout(tr, &g), 0);
	uint64_t s = 77;
	for (size_t i = 0; i < tset_count(g); i++) {
		tensor *t = tset_at(g, i);
		if (!lora_is_b(t->name))
			for (size_t k = 0; k < t->n; k++)
				t->data[k] = (float)(tu_randu(&s) - 0.5) * 0.25f;
	}
	uint8_t sha[32];
	assert_int_equal(tset_fingerprint(g, sha), 0);

	coord c;
	coord_open(&c);
	char conf[PATH_MAX], log[PATH_MAX];
	snprintf(conf, sizeof conf, "%s", path("node.conf"));
	snprintf(log, sizeof log, "%s", path("node.log"));
	write_conf(conf, chan_server_endpoint(c.srv), path("base.gguf"), path("state"));
	pid_t pid = spawn_node(conf, log);

	/* Join */
	wire_msg *m = coord_wait(&c, FEDLORA__ENVELOPE__BODY_JOIN, 20000);
	if (!m)
		dump(log);
	assert_non_null(m);
	const Fedlora__Join *j = wire_env(m)->join;
	assert_string_equal(c.cn, "node-01");
	assert_int_equal(j->base_fingerprint.len, 32);
	assert_memory_equal(j->base_fingerprint.data, base_fp, 32);
	assert_int_equal(j->have_sha256.len, 0);
	assert_true(j->sample_count >= 256);
	wire_free(m);
	send_welcome(&c, 0, sha);

	/* round 1: long enough that heartbeats must flow during training */
	send_round(&c, 1, 0, g, sha, 15000);
	m = coord_wait(&c, FEDLORA__ENVELOPE__BODY_UPDATE, 120000);
	if (!m)
		dump(log);
	assert_non_null(m);
	const Fedlora__Update *u = wire_env(m)->update;
	assert_int_equal(u->round_id, 1);
	assert_int_equal(u->base_version, 0);
	assert_int_equal(u->delta->n_tensors, tset_count(g));
	for (size_t i = 0; i < u->delta->n_tensors; i++)
		assert_int_equal(u->delta->tensors[i]->format, FEDLORA__QFORMAT__QFORMAT_Q4);
	print_message("heartbeats while training: %d of %d\n", c.hb_training, c.hb_total);
	assert_true(c.hb_training >= 2);
	wire_free(m);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__UpdateAck ack = FEDLORA__UPDATE_ACK__INIT;
	ack.round_id = 1;
	ack.accepted = 1;
	env.body_case = FEDLORA__ENVELOPE__BODY_UPDATE_ACK;
	env.update_ack = &ack;
	coord_send(&c, &env);
	Fedlora__Envelope env2 = FEDLORA__ENVELOPE__INIT;
	Fedlora__RoundEnd re = FEDLORA__ROUND_END__INIT;
	re.round_id = 1;
	re.committed = 1;
	re.version = 1;
	re.sha256.data = sha;
	re.sha256.len = 32;
	re.participants = 1;
	env2.body_case = FEDLORA__ENVELOPE__BODY_ROUND_END;
	env2.round_end = &re;
	coord_send(&c, &env2);
	/* a heartbeat after the ack reports the held-out loss */
	int hb0 = c.hb_total;
	while (c.hb_total < hb0 + 3)
		assert_null(coord_wait(&c, FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST, 200));

	/* round 2, SIGTERM while it trains: cancelled, Bye, exit 0 quickly */
	send_round(&c, 2, 0, NULL, sha, 1000000);
	int hbt = c.hb_training;
	while (c.hb_training < hbt + 2)
		assert_null(coord_wait(&c, FEDLORA__ENVELOPE__BODY_UPDATE, 200));
	uint64_t t0 = clk_mono_ms();
	kill(pid, SIGTERM);
	int st = wait_exit(&c, pid, 10000);
	uint64_t took = clk_mono_ms() - t0;
	for (int i = 0; i < 50 && !c.byes; i++) /* the Bye may still be in flight */
		wire_free(coord_wait(&c, FEDLORA__ENVELOPE__BODY__NOT_SET, 20));
	print_message("SIGTERM to exit: %llu ms\n", (unsigned long long)took);
	if (st != 0)
		dump(log);
	assert_int_equal(st, 0);
	assert_true(took < 5000);
	assert_int_equal(c.byes, 1);
	assert_true(file_exists(path("state/global.safetensors")));
	assert_true(file_exists(path("state/residual.safetensors")));
	assert_true(file_exists(path("state/metrics.jsonl")));
	assert_true(log_has(log, "stopped cleanly"));

	/* restart: rejoins holding version 0 with its hash, last round 1 */
	pid = spawn_node(conf, log);
	m = coord_wait(&c, FEDLORA__ENVELOPE__BODY_JOIN, 20000);
	assert_non_null(m);
	j = wire_env(m)->join;
	assert_int_equal(j->have_version, 0);
	assert_int_equal(j->have_sha256.len, 32);
	assert_memory_equal(j->have_sha256.data, sha, 32);
	assert_int_equal(j->last_round_id, 1);
	wire_free(m);
	assert_true(log_has(log, "error-feedback residual loaded"));
	/* pretend the node holds another base model: Reject -> exit 1 */
	Fedlora__Envelope env3 = FEDLORA__ENVELOPE__INIT;
	Fedlora__Reject rj = FEDLORA__REJECT__INIT;
	rj.reason = FEDLORA__REJECT__REASON__REASON_BASE_MISMATCH;
	rj.detail = "base model fingerprint 0123... differs from the federation's 4567...";
	env3.body_case = FEDLORA__ENVELOPE__BODY_REJECT;
	env3.reject = &rj;
	coord_send(&c, &env3);
	st = wait_exit(&c, pid, 10000);
	assert_int_equal(st, 1);
	assert_true(log_has(log, "base model mismatch"));

	/* the coordinator ends the federation: Bye "federation finished" -> the
	 * node stops by itself with exit 0 (no reconnecting) */
	pid = spawn_node(conf, log);
	m = coord_wait(&c, FEDLORA__ENVELOPE__BODY_JOIN, 20000);
	assert_non_null(m);
	wire_free(m);
	send_welcome(&c, 0, sha);
	Fedlora__Envelope env4 = FEDLORA__ENVELOPE__INIT;
	Fedlora__Bye bye = FEDLORA__BYE__INIT;
	bye.reason = "federation finished";
	env4.body_case = FEDLORA__ENVELOPE__BODY_BYE;
	env4.bye = &bye;
	coord_send(&c, &env4);
	t0 = clk_mono_ms();
	st = wait_exit(&c, pid, 10000);
	took = clk_mono_ms() - t0;
	if (st != 0)
		dump(log);
	assert_int_equal(st, 0);
	assert_true(took < 5000);
	assert_true(log_has(log, "federation is finished"));

	/* configuration errors: exit 2 naming the key */
	assert_int_equal(
	    tu_system("'%s' run --config '%s' --lora.rank=0 2>'%s/e1'", g_bin, conf, g_dir), 2);
	assert_true(log_has(path("e1"), "lora.rank"));
	assert_int_equal(tu_system("'%s' run --config '%s/nope.conf' 2>/dev/null", g_bin, g_dir),
	                 2);
	assert_int_equal(
	    tu_system("'%s' run --config '%s' --lora.targets=attn_x 2>'%s/e2'", g_bin, conf, g_dir),
	    2);
	assert_true(log_has(path("e2"), "attn_x"));

	chan_server_free(c.srv);
	tset_free(g);
	ntr_synth_ops.close(tr);
}

int main(void)
{
	g_bin = getenv("FEDLORA_NODE_BIN");
	if (!g_bin) {
		fprintf(stderr, "FEDLORA_NODE_BIN not set; skipping\n");
		return 0;
	}
	log_set_level(LOG_LVL_WARN);
	g_dir = tu_mkdtemp();
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_node_run),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	if (rc == 0)
		tu_rmtree(g_dir);
	else
		fprintf(stderr, "test files kept in %s\n", g_dir);
	free(g_dir);
	return rc;
}
