/* coordinator: the real `fedlora-coordinator serve` process with
 * certificates from deploy/certs.sh, driven by simulated nodes written
 * here over the real channel (mutual TLS inside ZeroMQ on 127.0.0.1). The
 * nodes do not train: they apply every RoundStart exactly as a node must
 * (checking the announced fingerprint) and upload synthetic q4 deltas.
 *
 * - rounds complete; a node that never answers does not hold a round past
 *   its deadline; every node holds the coordinator's exact global; metrics
 *   are served; SIGTERM stops cleanly; status and export work on the state;
 * - kill -9 of the coordinator during aggregation, during the checkpoint
 *   write and at random moments, several times: the newest version on disk
 *   verifies, is at least the last one nodes were told was committed, and
 *   after a restart the federation continues. */
#include "chantest.h"

#include "fed.h"
#include "quant.h"
#include "sha.h"
#include "store.h"
#include "wire.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

static char *g_root;
static int g_port;
static uint8_t g_base[32];
static const char *g_bin;

/* ---- the coordinator process ---- */

static const char *path(const char *rel)
{
	return ct_path(g_root, rel);
}

static void write_conf(const char *name, const char *extra)
{
	char hex[65];
	hex_encode(g_base, 32, hex);
	FILE *f = fopen(path(name), "w");
	assert_non_null(f);
	fprintf(f, "[server]\nlisten = tcp://127.0.0.1:%d\ncert = %s\n", g_port,
	        path("pki/coordinator.crt"));
	fprintf(f, "key = %s\nca = %s\nendpoint_file = %s\n", path("pki/coordinator.key"),
	        path("pki/ca.crt"), path("endpoint"));
	fprintf(f, "[federation]\nbase_sha256 = %s\n", hex);
	fprintf(f, "[lora]\nrank = 8\nalpha = 16\ntargets = attn_q,attn_v\ninit_seed = 5\n");
	fprintf(f, "[adapter]\nlayers = 4\ndims = attn_q=256x256,attn_v=128x256\nn_head = 8\n"
	           "n_head_kv = 4\n");
	fprintf(f, "[state]\ndir = %s\nkeep_versions = 3\n", path("state"));
	fprintf(f, "[metrics]\nlisten = 127.0.0.1:0\n");
	fprintf(f, "%s\n", extra);
	fclose(f);
}

/* Starts serve with the given config; env is "NAME=VALUE" or NULL. Waits
 * until the endpoint file appears. */
static pid_t coord_start(const char *conf, const char *env)
{
	unlink(path("endpoint"));
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (env)
			putenv((char *)env);
		int fd = open(path("coord.log"), O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(g_bin, g_bin, "serve", "--config", path(conf), "--log-level", "debug",
		      (char *)NULL);
		_exit(127);
	}
	uint64_t dl = clk_mono_ms() + 15000;
	while (access(path("endpoint"), R_OK) != 0 && clk_mono_ms() < dl) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			fail_msg("coordinator exited at start (status %d); see %s", st,
			         path("coord.log"));
		clk_sleep_ms(20);
	}
	if (access(path("endpoint"), R_OK) != 0)
		fail_msg("coordinator did not come up");
	return pid;
}

static long file_size(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 ? (long)st.st_size : 0;
}

/* Whether the coordinator log has a line with needle (and needle2) after mark. */
static int log_has(long mark, const char *needle, const char *needle2)
{
	FILE *f = fopen(path("coord.log"), "r");
	char line[8192];
	int found = 0;
	if (!f)
		return 0;
	fseek(f, mark, SEEK_SET);
	while (!found && fgets(line, sizeof line, f))
		found = strstr(line, needle) && (!needle2 || strstr(line, needle2));
	fclose(f);
	return found;
}

/* ---- simulated nodes ---- */

#define NN 4

typedef struct node {
	char id[16];
	chan_client *cli;
	int up, ready, silent;
	tset *ad;
	uint64_t version;
	int has;
	uint64_t round, round_version;
	int want_upload;
	uint64_t upload_at;
	uint64_t uploaded_round;
	int sha_ok, sha_checks;
	uint64_t seq;
	uint64_t seed;
	int rejects, acks_ok, acks_bad, byes, finals;
	/* what RoundEnd said */
	uint64_t end_version, ends_committed;
	uint8_t end_sha[32];
	uint64_t round_started_ms, last_round_ms;
} node;

typedef struct fleet {
	node n[NN];
	int count;
} fleet;

static void node_send(node *n, Fedlora__Envelope *e)
{
	buf b;
	buf_init(&b, 0);
	e->seq = ++n->seq;
	assert_int_equal(wire_encode(e, 0, &b), 0);
	int rc = chan_client_send(n->cli, b.data, b.len);
	if (rc && rc != FL_ESTATE)
		fail_msg("%s: send failed: %s", n->id, fl_strerror(rc));
	buf_fini(&b);
}

static void node_join(node *n)
{
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	Fedlora__Join j = FEDLORA__JOIN__INIT;
	Fedlora__LoraSpec ls = FEDLORA__LORA_SPEC__INIT;
	char *tg[2] = {"attn_q", "attn_v"};
	fed_opts o;
	fed_opts_default(&o);
	o.spec.rank = 8;
	o.spec.targets = (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V);
	o.arch.n_layers = 4;
	o.arch.in[LORA_ATTN_Q] = 256;
	o.arch.out[LORA_ATTN_Q] = 256;
	o.arch.in[LORA_ATTN_V] = 256;
	o.arch.out[LORA_ATTN_V] = 128;
	tset *lay;
	uint8_t lsha[32], hsha[32];
	assert_int_equal(lora_layout(&o.spec, &o.arch, &lay), 0);
	assert_int_equal(tset_shape_fingerprint(lay, lsha), 0);
	tset_free(lay);
	j.software_version = "sim";
	j.sample_count = 10;
	j.base_fingerprint.data = g_base;
	j.base_fingerprint.len = 32;
	j.adapter_fingerprint.data = lsha;
	j.adapter_fingerprint.len = 32;
	if (n->has) {
		assert_int_equal(tset_fingerprint(n->ad, hsha), 0);
		j.have_version = n->version;
		j.have_sha256.data = hsha;
		j.have_sha256.len = 32;
	}
	ls.rank = 8;
	ls.alpha = 16;
	ls.n_targets = 2;
	ls.targets = tg;
	ls.init_seed = 5;
	j.lora = &ls;
	j.last_round_id = n->uploaded_round;
	e.body_case = FEDLORA__ENVELOPE__BODY_JOIN;
	e.join = &j;
	node_send(n, &e);
}

static void node_apply(node *n, const Fedlora__AdapterPayload *p)
{
	if (p->kind == FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT) {
		tset *s;
		assert_int_equal(tset_new(&s), 0);
		for (size_t i = 0; i < p->n_tensors; i++) {
			qtensor q;
			qt_init(&q);
			char why[200];
			assert_int_equal(qt_from_proto(p->tensors[i], NULL, &q, why, sizeof why),
			                 0);
			tensor *t;
			assert_int_equal(tset_insert(s, q.name, q.ndim, q.shape, NULL, &t), 0);
			assert_int_equal(quant_decode(&q, t->data, t->n), 0);
			qt_fini(&q);
		}
		tset_free(n->ad);
		n->ad = s;
	} else {
		if (!n->has || p->from_version != n->version)
			fail_msg("%s: delta from v%llu but holds v%llu", n->id,
			         (unsigned long long)p->from_version,
			         (unsigned long long)n->version);
		qtensor *qs = calloc(p->n_tensors + 1, sizeof *qs);
		for (size_t i = 0; i < p->n_tensors; i++) {
			char why[200];
			qt_init(&qs[i]);
			assert_int_equal(
			    qt_from_proto(p->tensors[i], NULL, &qs[i], why, sizeof why), 0);
		}
		assert_int_equal(quant_apply_set(n->ad, qs, p->n_tensors), 0);
		for (size_t i = 0; i < p->n_tensors; i++)
			qt_fini(&qs[i]);
		free(qs);
	}
	uint8_t fp[32];
	assert_int_equal(tset_fingerprint(n->ad, fp), 0);
	n->sha_checks++;
	if (p->to_sha256.len != 32 || memcmp(fp, p->to_sha256.data, 32))
		n->sha_ok = 0;
	/* the version RoundEnd announced must be what we now hold */
	if (n->ends_committed && p->to_version == n->end_version && memcmp(fp, n->end_sha, 32))
		n->sha_ok = 0;
	n->version = p->to_version;
	n->has = 1;
}

static void node_upload(node *n)
{
	size_t nt = tset_count(n->ad);
	qtensor *qs = calloc(nt, sizeof *qs);
	Fedlora__QTensor *qm = calloc(nt, sizeof *qm);
	Fedlora__QTensor **qp = calloc(nt, sizeof *qp);
	quant_params p = {.fmt = QT_Q4, .block = 32};
	float *x = NULL;
	for (size_t i = 0; i < nt; i++) {
		const tensor *t = tset_at(n->ad, i);
		x = realloc(x, t->n * sizeof(float));
		for (size_t k = 0; k < t->n; k++)
			x[k] = (float)((tu_randu(&n->seed) * 2 - 1) * 0.01);
		qt_init(&qs[i]);
		assert_int_equal(quant_encode(&p, t->name, x, t->ndim, t->shape, &qs[i]), 0);
		qt_to_proto(&qs[i], &qm[i]);
		qp[i] = &qm[i];
	}
	free(x);
	Fedlora__AdapterPayload pl = FEDLORA__ADAPTER_PAYLOAD__INIT;
	pl.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	pl.from_version = n->round_version;
	pl.to_version = n->round_version;
	pl.n_tensors = nt;
	pl.tensors = qp;
	Fedlora__Update u = FEDLORA__UPDATE__INIT;
	u.round_id = n->round;
	u.base_version = n->round_version;
	u.sample_count = 10;
	u.delta = &pl;
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	e.body_case = FEDLORA__ENVELOPE__BODY_UPDATE;
	e.update = &u;
	node_send(n, &e);
	n->uploaded_round = n->round;
	for (size_t i = 0; i < nt; i++)
		qt_fini(&qs[i]);
	free(qs);
	free(qm);
	free(qp);
}

static void node_message(node *n, const uint8_t *d, size_t len)
{
	wire_msg *m;
	if (wire_decode(d, len, 1u << 30, 0, &m))
		fail_msg("%s: undecodable message from the coordinator", n->id);
	const Fedlora__Envelope *e = wire_env(m);
	switch (e->body_case) {
	case FEDLORA__ENVELOPE__BODY_WELCOME:
		chan_client_set_ready(n->cli);
		n->ready = 1;
		break;
	case FEDLORA__ENVELOPE__BODY_REJECT:
		n->rejects++;
		break;
	case FEDLORA__ENVELOPE__BODY_ROUND_START: {
		const Fedlora__RoundStart *r = e->round_start;
		node_apply(n, r->adapter);
		n->round = r->round_id;
		n->round_version = r->global_version;
		n->round_started_ms = clk_mono_ms();
		if (!n->silent) {
			n->want_upload = 1;
			n->upload_at = clk_mono_ms() + 30;
		}
		break;
	}
	case FEDLORA__ENVELOPE__BODY_UPDATE_ACK:
		if (e->update_ack->accepted)
			n->acks_ok++;
		else
			n->acks_bad++;
		break;
	case FEDLORA__ENVELOPE__BODY_ROUND_END:
		if (e->round_end->committed) {
			n->ends_committed++;
			n->end_version = e->round_end->version;
			if (e->round_end->sha256.len == 32)
				memcpy(n->end_sha, e->round_end->sha256.data, 32);
		}
		n->last_round_ms = clk_mono_ms() - n->round_started_ms;
		break;
	case FEDLORA__ENVELOPE__BODY_DOWN_FINAL: {
		/* the federation ends: take the last version, answer (no
		 * held-out data here) */
		const Fedlora__DownFinal *df = e->down_final;
		node_apply(n, df->adapter);
		n->finals++;
		Fedlora__Envelope a = FEDLORA__ENVELOPE__INIT;
		Fedlora__DownFinalEval fe = FEDLORA__DOWN_FINAL_EVAL__INIT;
		fe.version = df->version;
		fe.verified = n->sha_ok;
		fe.detail = "test node: no held-out data";
		a.body_case = FEDLORA__ENVELOPE__BODY_DOWN_FINAL_EVAL;
		a.down_final_eval = &fe;
		node_send(n, &a);
		break;
	}
	case FEDLORA__ENVELOPE__BODY_BYE:
		n->byes++;
		break;
	default:
		break;
	}
	wire_free(m);
}

static void fleet_start(fleet *F, int count, int silent_last)
{
	memset(F, 0, sizeof *F);
	F->count = count;
	char ep[64];
	snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", g_port);
	for (int i = 0; i < count; i++) {
		node *n = &F->n[i];
		snprintf(n->id, sizeof n->id, "node-%02d", i + 1);
		n->sha_ok = 1;
		n->seed = 1000 + (uint64_t)i;
		n->silent = silent_last && i == count - 1;
		chan_client_opts co;
		ct_client_opts(&co, g_root, "pki", n->id, ep);
		assert_int_equal(chan_client_new(&co, &n->cli), 0);
	}
}

static void fleet_stop(fleet *F)
{
	for (int i = 0; i < F->count; i++) {
		chan_client_free(F->n[i].cli);
		tset_free(F->n[i].ad);
	}
	memset(F, 0, sizeof *F);
}

static void fleet_pump(fleet *F, int ms)
{
	zmq_pollitem_t it[CHAN_POLLITEMS_MAX * NN];
	int cnt[NN], k = 0, t = ms;
	for (int i = 0; i < F->count; i++) {
		cnt[i] = chan_client_pollitems(F->n[i].cli, it + k, CHAN_POLLITEMS_MAX);
		k += cnt[i];
		int ct = chan_client_timeout(F->n[i].cli);
		if (ct >= 0 && ct < t)
			t = ct;
	}
	zmq_poll(it, k, t);
	k = 0;
	for (int i = 0; i < F->count; i++) {
		node *n = &F->n[i];
		chan_client_process(n->cli, it + k, cnt[i]);
		k += cnt[i];
		chan_event ev;
		while (chan_client_next(n->cli, &ev) == 0) {
			if (ev.type == CHAN_EV_UP) {
				n->up = 1;
				node_join(n);
			} else if (ev.type == CHAN_EV_DOWN) {
				n->up = n->ready = 0;
			} else if (ev.type == CHAN_EV_MESSAGE) {
				node_message(n, ev.data, ev.len);
			}
			chan_event_fini(&ev);
		}
		if (n->want_upload && n->ready && clk_mono_ms() >= n->upload_at) {
			n->want_upload = 0;
			node_upload(n);
		}
	}
}

#define WAIT(F, ms, cond)                                                                          \
	({                                                                                         \
		uint64_t dl_ = clk_mono_ms() + (uint64_t)(ms);                                     \
		while (!(cond) && clk_mono_ms() < dl_)                                             \
			fleet_pump((F), 20);                                                       \
		(cond);                                                                            \
	})

static uint64_t max_committed(const fleet *F)
{
	uint64_t m = 0;
	for (int i = 0; i < F->count; i++)
		if (F->n[i].ends_committed && F->n[i].end_version > m)
			m = F->n[i].end_version;
	return m;
}

/* Minimal HTTP GET of /metrics. */
static char *http_metrics(int port)
{
	return tu_http_get(port, "/metrics");
}

static int metrics_port(void)
{
	FILE *f = fopen(path("coord.log"), "r");
	char line[4096];
	int port = 0;
	while (f && fgets(line, sizeof line, f)) {
		const char *p = strstr(line, "Prometheus metrics on http://127.0.0.1:");
		if (p)
			port = atoi(p + strlen("Prometheus metrics on http://127.0.0.1:"));
	}
	if (f)
		fclose(f);
	return port;
}

/* ---- tests ---- */

static int group_setup(void **state)
{
	(void)state;
	g_bin = getenv("FEDLORA_COORD_BIN");
	if (!g_bin || access(g_bin, X_OK) != 0) {
		fprintf(stderr, "FEDLORA_COORD_BIN not set or not executable\n");
		return -1;
	}
	g_root = tu_mkdtemp();
	if (!g_root)
		return -1;
	ct_log_to(g_root);
	if (ct_make_pki(g_root) != 0)
		return -1;
	sha256("base model for the integration test", 35, g_base);
	uint64_t s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
	g_port = 20000 + (int)(tu_rand(&s) % 30000);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	if (getenv("COORD_SHOWLOG"))
		tu_system("cat '%s'", path("coord.log"));
	if (getenv("COORD_KEEP"))
		fprintf(stderr, "kept %s\n", g_root);
	else
		tu_rmtree(g_root);
	free(g_root);
	return 0;
}

static void test_rounds_deadline_sigterm(void **st)
{
	(void)st;
	tu_system("rm -rf '%s' '%s'", path("state"), path("coord.log"));
	write_conf("a.conf", "[rounds]\nmin_nodes = 4\nmin_updates = 2\ndeadline_ms = 1500\n"
	                     "start_delay_ms = 300\nmax_rounds = 0\n");
	pid_t pid = coord_start("a.conf", NULL);
	fleet F;
	fleet_start(&F, 4, 1); /* node-04 never answers */
	int ok = WAIT(&F, 40000, F.n[0].ends_committed >= 3 && F.n[1].ends_committed >= 3);
	if (!ok) {
		tu_system("tail -40 '%s' >&2", path("coord.log"));
		fail_msg("3 rounds did not commit in time (node-01 saw %llu)",
		         (unsigned long long)F.n[0].ends_committed);
	}
	for (int i = 0; i < 4; i++) {
		node *n = &F.n[i];
		assert_int_equal(n->rejects, 0);
		assert_true(n->sha_ok);
		assert_true(n->sha_checks >= 3);
		if (!n->silent)
			assert_true(n->acks_ok >= 3);
	}
	/* the silent participant held each round exactly until its deadline */
	long rt = (long)F.n[0].last_round_ms;
	if (rt < 1300 || rt > 1500 + 1200)
		fail_msg("round took %ld ms with a silent node; deadline is 1500 ms", rt);
	/* the next RoundStart brings everyone to the committed version */
	uint64_t v = max_committed(&F);
	assert_true(WAIT(&F, 10000, F.n[3].version >= v && F.n[0].version >= v));
	assert_true(F.n[3].sha_ok);
	/* metrics */
	int port = metrics_port();
	assert_true(port > 0);
	char *mtxt = http_metrics(port);
	assert_non_null(mtxt);
	if (!strstr(mtxt, "fedlora_rounds_total{outcome=\"committed\"}") ||
	    !strstr(mtxt, "fedlora_nodes_connected 4") ||
	    !strstr(mtxt, "fedlora_updates_accepted_total") ||
	    !strstr(mtxt, "fedlora_aggregation_seconds_bucket"))
		fail_msg("metrics lack expected series:\n%s", mtxt);
	free(mtxt);
	/* SIGTERM: clean stop, exit 0, nodes get Bye */
	kill(pid, SIGTERM);
	int status = -1;
	uint64_t dl = clk_mono_ms() + 15000;
	while (waitpid(pid, &status, WNOHANG) != pid && clk_mono_ms() < dl)
		fleet_pump(&F, 20);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_true(WAIT(&F, 2000, F.n[0].byes >= 1));
	assert_int_equal(F.n[0].finals, 1); /* the last version came first */
	fleet_stop(&F);
	/* status and export on the state directory */
	assert_int_equal(tu_system("'%s' status --state-dir '%s' > '%s'", g_bin, path("state"),
	                           path("status.txt")),
	                 0);
	assert_int_equal(tu_system("grep -q 'verified' '%s'", path("status.txt")), 0);
	assert_int_equal(tu_system("grep -q 'committed' '%s'", path("status.txt")), 0);
	assert_int_equal(tu_system("'%s' export --state-dir '%s' --version latest --out '%s' "
	                           ">/dev/null",
	                           g_bin, path("state"), path("peft")),
	                 0);
	assert_int_equal(tu_system("test -s '%s'", path("peft/adapter_model.safetensors")), 0);
	assert_int_equal(tu_system("'%s' status --state-dir '%s/nope' 2>/dev/null", g_bin, g_root),
	                 1);
}

/* Newest version on disk that verifies (and that it is the newest file). */
static uint64_t disk_version(int *newest_ok)
{
	uint64_t *vs;
	size_t n;
	assert_int_equal(store_list_versions(path("state"), &vs, &n), 0);
	assert_true(n > 0);
	uint64_t v = 0;
	*newest_ok = 0;
	for (size_t i = n; i-- > 0;) {
		tset *t;
		store_info in;
		char why[300];
		if (store_read_version(path("state"), vs[i], &t, &in, why, sizeof why) == 0) {
			v = vs[i];
			*newest_ok = i == n - 1;
			tset_free(t);
			break;
		}
	}
	free(vs);
	return v;
}

static void test_kill9(void **st)
{
	(void)st;
	tu_system("rm -rf '%s' '%s'", path("state"), path("coord.log"));
	write_conf("k.conf", "[rounds]\nmin_nodes = 3\nmin_updates = 2\ndeadline_ms = 4000\n"
	                     "start_delay_ms = 100\n[aggregation]\nstrategy = fedadam\n"
	                     "server_lr = 0.01\n");
	fleet F;
	fleet_start(&F, 3, 0);
	uint64_t seed = (uint64_t)time(NULL);
	const char *modes[3] = {"aggregation", "checkpoint", "random"};
	uint64_t last_disk = 0;
	for (int iter = 0; iter < 6; iter++) {
		int mode = iter % 3;
		const char *env = mode == 0   ? "FEDLORA_TEST_COMMIT_PAUSE_MS=250"
		                  : mode == 1 ? "FEDLORA_TEST_RENAME_PAUSE_MS=250"
		                              : NULL;
		long mark = file_size(path("coord.log"));
		pid_t pid = coord_start("k.conf", env);
		uint64_t before = max_committed(&F);
		int hit;
		if (mode == 0)
			hit = WAIT(&F, 20000, log_has(mark, "commit stage aggregated", NULL));
		else if (mode == 1)
			hit = WAIT(&F, 20000, log_has(mark, "about to rename", "/versions/v"));
		else {
			/* after at least one new commit, at a random moment */
			hit = WAIT(&F, 20000, max_committed(&F) > before);
			uint64_t until = clk_mono_ms() + tu_rand(&seed) % 1500;
			while (clk_mono_ms() < until)
				fleet_pump(&F, 10);
		}
		if (!hit) {
			tu_system("tail -30 '%s' >&2", path("coord.log"));
			fail_msg("iteration %d (%s): the moment to kill never came", iter,
			         modes[mode]);
		}
		uint64_t told = max_committed(&F);
		kill(pid, SIGKILL);
		int status;
		waitpid(pid, &status, 0);
		assert_true(WIFSIGNALED(status));
		int newest_ok;
		uint64_t v = disk_version(&newest_ok);
		if (!newest_ok)
			fail_msg("iteration %d (%s): the newest version file does not verify", iter,
			         modes[mode]);
		if (v < told || v > told + 1 || v < last_disk)
			fail_msg("iteration %d (%s): version on disk %llu, nodes were told %llu, "
			         "before %llu",
			         iter, modes[mode], (unsigned long long)v, (unsigned long long)told,
			         (unsigned long long)last_disk);
		last_disk = v;
		fprintf(stderr,
		        "  kill -9 #%d during %s: version %llu on disk verifies (nodes told "
		        "%llu)\n",
		        iter + 1, modes[mode], (unsigned long long)v, (unsigned long long)told);
	}
	/* restart: the federation carries on from the last committed version */
	long mark = file_size(path("coord.log"));
	pid_t pid = coord_start("k.conf", NULL);
	uint64_t told = max_committed(&F);
	int ok = WAIT(&F, 30000, max_committed(&F) > last_disk && max_committed(&F) > told);
	if (!ok) {
		tu_system("tail -40 '%s' >&2", path("coord.log"));
		fail_msg("no commit after the last restart");
	}
	assert_true(log_has(mark, "resumed at version", NULL));
	for (int i = 0; i < 3; i++) {
		assert_int_equal(F.n[i].rejects, 0);
		assert_true(F.n[i].sha_ok);
	}
	/* no half-written file is left after a restart */
	assert_int_equal(tu_system("ls '%s' | grep -q tmp", path("state/versions")), 1);
	kill(pid, SIGTERM);
	int status;
	uint64_t dl = clk_mono_ms() + 15000;
	while (waitpid(pid, &status, WNOHANG) != pid && clk_mono_ms() < dl)
		fleet_pump(&F, 20);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	fleet_stop(&F);
	/* the journal says which rounds were cut short by the kills, and status
	 * reports them */
	assert_int_equal(tu_system("grep -q round_restart '%s'", path("state/journal.jsonl")), 0);
	assert_int_equal(tu_system("'%s' status --state-dir '%s' --rounds 6 > '%s'", g_bin,
	                           path("state"), path("status2.txt")),
	                 0);
	tu_system("cat '%s' >&2", path("status2.txt"));
	assert_int_equal(
	    tu_system("grep -Eq ' [1-9][0-9]* restarted after a crash' '%s'", path("status2.txt")),
	    0);
}

/* SIGHUP re-reads the allow-list: a node taken off it loses its session
 * and cannot come back, the others are untouched. */
static void test_sighup_allow_list(void **st)
{
	(void)st;
	tu_system("rm -rf '%s' '%s'", path("state"), path("coord.log"));
	assert_int_equal(
	    tu_system("printf 'node-01\\nnode-02\\nnode-03\\n' > '%s'", path("allow-hup.txt")), 0);
	char extra[1024];
	snprintf(extra, sizeof extra, "[rounds]\nmin_nodes = 5\n[server]\nallow_list = %s\n",
	         path("allow-hup.txt"));
	/* [server] appears twice: the INI loader merges sections */
	write_conf("h.conf", extra);
	pid_t pid = coord_start("h.conf", NULL);
	fleet F;
	fleet_start(&F, 3, 0);
	assert_true(WAIT(&F, 15000, F.n[0].ready && F.n[1].ready && F.n[2].ready));
	assert_int_equal(tu_system("printf 'node-01\\nnode-02\\n' > '%s'", path("allow-hup.txt")),
	                 0);
	long mark = file_size(path("coord.log"));
	kill(pid, SIGHUP);
	assert_true(WAIT(&F, 10000, log_has(mark, "reloaded certificates", NULL)));
	assert_true(WAIT(&F, 10000, !F.n[2].ready));
	/* it keeps trying and keeps being refused; the others stay */
	uint64_t until = clk_mono_ms() + 1500;
	while (clk_mono_ms() < until) {
		fleet_pump(&F, 20);
		assert_false(F.n[2].ready);
	}
	assert_true(F.n[0].ready && F.n[1].ready);
	kill(pid, SIGTERM);
	int status;
	uint64_t dl = clk_mono_ms() + 15000;
	while (waitpid(pid, &status, WNOHANG) != pid && clk_mono_ms() < dl)
		fleet_pump(&F, 20);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	fleet_stop(&F);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rounds_deadline_sigterm),
	    cmocka_unit_test(test_kill9),
	    cmocka_unit_test(test_sighup_allow_list),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
