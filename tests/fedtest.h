/* fedtest — helpers for the end-to-end federation tests (header-only,
 * static): a throw-away federation on 127.0.0.1 made of real processes —
 * certificates from deploy/certs.sh, a tiny base model from
 * `fedlora-node init-model`, one synthetic data shard per node from
 * `fedlora-node gen-data`, `fedlora-coordinator serve` and N
 * `fedlora-node run` — plus readers for the coordinator's journal and
 * versions and the nodes' metrics.jsonl.
 *
 * The node trainer is "lora" when this build has it (real LoRA training of
 * the tiny model) and "synth" otherwise; FEDLORA_FED_TRAINER overrides.
 * Every test prints which one it used. */
#ifndef FL_FEDTEST_H
#define FL_FEDTEST_H
#include "testutil.h"
#include "procutil.h"

#include "clock.h"
#include "err.h"
#include "fileio.h"
#include "modelfp.h"
#include "safetensors.h"
#include "sha.h"
#include "tensor.h"
#include "trainer_iface.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define FT_MAXN 8

/* Shape of the tiny base model: every adapted tensor has 2048 elements
 * (rank 8 x 256), large enough that per-tensor framing is small next to
 * the q4 payload. */
#define FT_DIM    256
#define FT_LAYERS 2
#define FT_HEADS  4
#define FT_FFN    512
#define FT_CTX    64
#define FT_RANK   8

typedef struct ft {
	char dir[PATH_MAX];
	const char *node_bin, *coord_bin;
	const char *node_bin_of[FT_MAXN]; /* binary of node i's `run` (NULL: node_bin) */
	char trainer[16];
	int port;
	int nnodes;
	pid_t coord;
	pid_t node[FT_MAXN];
	char base_hex[65];
	int ffa;
} ft;

static inline const char *ft_path(const ft *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline const char *ft_path(const ft *f, const char *fmt, ...)
{
	static char b[16][PATH_MAX];
	static int i;
	char *p = b[i++ % 16];
	int k = snprintf(p, PATH_MAX, "%s/", f->dir);
	va_list ap;
	va_start(ap, fmt);
	if (k > 0 && k < PATH_MAX)
		vsnprintf(p + k, (size_t)(PATH_MAX - k), fmt, ap);
	va_end(ap);
	return p;
}

/* A TCP port free right now on 127.0.0.1 (so a restarted coordinator can
 * bind the same one). */
static inline int ft_free_port(void)
{
	return pu_free_port();
}

/* Returns 0 when the binaries exist; tests skip otherwise. */
static inline int ft_bins(ft *f)
{
	f->node_bin = getenv("FEDLORA_NODE_BIN");
	f->coord_bin = getenv("FEDLORA_COORD_BIN");
	if (!f->node_bin || !f->coord_bin || access(f->node_bin, X_OK) ||
	    access(f->coord_bin, X_OK))
		return -1;
	/* the coordinator must have its serve subcommand */
	return tu_system("'%s' serve --help >/dev/null 2>&1", f->coord_bin) == 0 ? 0 : -1;
}

/* The federation of the running test, stopped by ft_teardown even when an
 * assertion ended the test early. */
static ft *ft_current;

/* Certificates, base model, data shards. */
static inline void ft_setup(ft *f, int nnodes, int ffa)
{
	ft_current = f;
	char *d = tu_mkdtemp();
	assert_non_null(d);
	snprintf(f->dir, sizeof f->dir, "%s", d);
	free(d);
	f->nnodes = nnodes;
	f->ffa = ffa;
	const char *tr = getenv("FEDLORA_FED_TRAINER");
	snprintf(f->trainer, sizeof f->trainer, "%s",
	         tr && *tr ? tr : (ntr_find("lora") ? "lora" : "synth"));
	print_message("federation test in %s, trainer %s\n", f->dir, f->trainer);
	f->port = ft_free_port();
	assert_true(f->port > 0);
	const char *sh = tu_src_path("deploy/certs.sh");
	assert_int_equal(tu_system("bash '%s' init '%s/pki' >/dev/null && bash '%s' coordinator "
	                           "'%s/pki' --ip 127.0.0.1 >/dev/null && bash '%s' node '%s/pki' "
	                           "--count %d >/dev/null",
	                           sh, f->dir, sh, f->dir, sh, f->dir, nnodes),
	                 0);
	assert_int_equal(tu_system("'%s' init-model --out '%s/base.gguf' --dim %d --layers %d "
	                           "--heads %d --ffn %d --ctx %d --seed 11 >/dev/null",
	                           f->node_bin, f->dir, FT_DIM, FT_LAYERS, FT_HEADS, FT_FFN,
	                           FT_CTX),
	                 0);
	uint8_t fp[32];
	assert_int_equal(mfp_compute(ft_path(f, "base.gguf"), fp), 0);
	hex_encode(fp, 32, f->base_hex);
	for (int i = 0; i < nnodes; i++)
		assert_int_equal(tu_system("'%s' gen-data --site %d --seed %d --lines 1500 "
		                           "--eval-lines 200 --out '%s/data/node-%02d' >/dev/null",
		                           f->node_bin, i % 4, i + 1, f->dir, i + 1),
		                 0);
	FILE *c = fopen(ft_path(f, "coordinator.conf"), "w");
	assert_non_null(c);
	/* The base model is named by its fingerprint and explicit shapes
	 * (the node's definition, common/modelfp.h). */
	fprintf(c,
	        "[server]\nlisten = tcp://127.0.0.1:%d\ncert = %s/pki/coordinator.crt\n"
	        "key = %s/pki/coordinator.key\nca = %s/pki/ca.crt\nheartbeat_ms = 500\n"
	        "[federation]\nbase_sha256 = %s\nseed = 7\n"
	        "[adapter]\nlayers = %d\ndims = attn_q=%dx%d,attn_v=%dx%d\nn_head = %d\n"
	        "n_head_kv = %d\n"
	        "[lora]\nrank = %d\nalpha = %d\ntargets = attn_q,attn_v\nffa = %s\n"
	        "init_seed = 1\n"
	        "[rounds]\nmin_nodes = %d\nmin_updates = 2\ndeadline_ms = 60000\n"
	        "start_delay_ms = 300\ngone_grace_ms = 1500\n"
	        "[train]\nlocal_steps = 8\nlr = %s\nbatch_size = 4\nctx = %d\n"
	        "uplink_format = q4\nuplink_block = 32\nerror_feedback = true\n"
	        "[aggregation]\nstrategy = fedavg\ndownlink_format = q8\n"
	        "[state]\ndir = %s/coord-state\n[log]\nlevel = info\n",
	        f->port, f->dir, f->dir, f->dir, f->base_hex, FT_LAYERS, FT_DIM, FT_DIM, FT_DIM,
	        FT_DIM, FT_HEADS, FT_HEADS, FT_RANK, 2 * FT_RANK, ffa ? "true" : "false", nnodes,
	        strcmp(f->trainer, "synth") == 0 ? "0.02" : "0.003", FT_CTX, f->dir);
	fclose(c);
	for (int i = 0; i < nnodes; i++) {
		FILE *n = fopen(ft_path(f, "node-%02d.conf", i + 1), "w");
		assert_non_null(n);
		fprintf(
		    n,
		    "[node]\nstate_dir = %s/node-%02d\ntrainer = %s\nseed = %d\n"
		    "stop_grace_ms = 2000\n"
		    "[coordinator]\nendpoint = tcp://127.0.0.1:%d\n"
		    "[tls]\ncert = %s/pki/nodes/node-%02d.crt\nkey = %s/pki/nodes/node-%02d.key\n"
		    "ca = %s/pki/ca.crt\n"
		    "[reconnect]\nmin_ms = 100\nmax_ms = 1000\nlinger_ms = 300\n"
		    "[model]\npath = %s/base.gguf\nthreads = 1\n"
		    "[data]\ntrain = %s/data/node-%02d/train.txt\neval = "
		    "%s/data/node-%02d/eval.txt\n"
		    "eval_max_tokens = 4096\nmax_ctx = %d\n"
		    "[lora]\nrank = %d\nalpha = %d\ntargets = attn_q,attn_v\nffa = %s\n"
		    "init_seed = 1\n"
		    "[log]\nlevel = info\n",
		    f->dir, i + 1, f->trainer, i + 1, f->port, f->dir, i + 1, f->dir, i + 1, f->dir,
		    f->dir, f->dir, i + 1, f->dir, i + 1, FT_CTX, FT_RANK, 2 * FT_RANK,
		    ffa ? "true" : "false");
		fclose(n);
	}
}

/* Starts a process with stdout+stderr appended to log; extra args after
 * the fixed ones (NULL-terminated). */
static inline pid_t ft_spawn(const char *log, const char *const *argv)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* never outlive the test, whatever way it ends */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() == 1)
			_exit(127);
		FILE *o = freopen(log, "a", stdout);
		FILE *e = freopen(log, "a", stderr);
		(void)o;
		(void)e;
		setenv("OMP_NUM_THREADS", "1", 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

/* extra: up to 6 --section.key=value flags, NULL-terminated. */
static inline void ft_start_coord(ft *f, const char *const *extra)
{
	const char *argv[16] = {f->coord_bin, "serve", "--config", ft_path(f, "coordinator.conf")};
	int n = 4;
	for (int i = 0; extra && extra[i] && n < 15; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	f->coord = ft_spawn(ft_path(f, "coordinator.log"), argv);
}

static inline void ft_start_node(ft *f, int i, const char *const *extra)
{
	const char *argv[16] = {f->node_bin_of[i] ? f->node_bin_of[i] : f->node_bin, "run",
	                        "--config", ft_path(f, "node-%02d.conf", i + 1)};
	int n = 4;
	for (int k = 0; extra && extra[k] && n < 15; k++)
		argv[n++] = extra[k];
	argv[n] = NULL;
	f->node[i] = ft_spawn(ft_path(f, "node-%02d.log", i + 1), argv);
}

/* Waits up to ms for pid; its exit status, 128+signal, or -1 (timeout). */
static inline int ft_wait_pid(pid_t pid, int ms)
{
	uint64_t end = clk_mono_ms() + (uint64_t)ms;
	int st;
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		if (r < 0 || clk_mono_ms() >= end)
			return -1;
		clk_sleep_ms(20);
	}
}

/* Sends sig and waits; SIGKILL after ms. Returns the exit status. */
static inline int ft_stop(pid_t *pid, int sig, int ms)
{
	if (*pid <= 0)
		return -1;
	kill(*pid, sig);
	int st = ft_wait_pid(*pid, ms);
	if (st < 0) {
		kill(*pid, SIGKILL);
		st = ft_wait_pid(*pid, 5000);
		st = -1;
	}
	*pid = 0;
	return st;
}

static inline void ft_stop_all(ft *f)
{
	for (int i = 0; i < f->nnodes; i++)
		ft_stop(&f->node[i], SIGTERM, 8000);
	ft_stop(&f->coord, SIGTERM, 8000);
}

/* Whole text file (NUL-terminated) or NULL. */
static inline char *ft_read(const char *path)
{
	uint8_t *t = NULL;
	size_t n = 0;
	if (file_read_all(path, 256u << 20, &t, &n) != 0)
		return NULL;
	return (char *)t;
}

static inline int ft_log_has(const ft *f, const char *log, const char *needle)
{
	char *t = ft_read(ft_path(f, "%s", log));
	int r = t && strstr(t, needle);
	free(t);
	return r;
}

/* How many times needle occurs in a log of the federation's folder. */
static inline int ft_count_in_log(const ft *f, const char *log, const char *needle)
{
	char *t = ft_read(ft_path(f, "%s", log));
	int n = 0;
	for (const char *p = t; p && (p = strstr(p, needle)); p++)
		n++;
	free(t);
	return n;
}

static inline void ft_dump_logs(const ft *f)
{
	tu_system("for l in '%s'/*.log; do echo \"== $l\"; tail -n 25 \"$l\"; done >&2", f->dir);
}

/* Calls fn(obj, ud) for each JSON line of a file; returns lines seen. */
typedef void (*ft_line_fn)(const cJSON *o, void *ud);
static inline int ft_jsonl(const char *path, ft_line_fn fn, void *ud)
{
	char *t = ft_read(path);
	int n = 0;
	if (!t)
		return 0;
	for (char *p = t; *p;) {
		char *e = strchr(p, '\n');
		if (e)
			*e = 0;
		cJSON *o = cJSON_Parse(p);
		if (o) {
			fn(o, ud);
			n++;
			cJSON_Delete(o);
		}
		if (!e)
			break;
		p = e + 1;
	}
	free(t);
	return n;
}

static inline const char *ft_jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static inline double ft_jnum(const cJSON *o, const char *k, double dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static inline int ft_jtrue(const cJSON *o, const char *k)
{
	return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, k));
}

typedef struct ft_rounds {
	int committed, abandoned;
	uint64_t last_version;
	int participants[64]; /* accepted updates per committed round index */
} ft_rounds;

static inline void ft_round_cb(const cJSON *o, void *ud)
{
	ft_rounds *r = ud;
	const char *t = ft_jstr(o, "type");
	if (!t || strcmp(t, "round_end") != 0 || ft_jtrue(o, "recovered"))
		return;
	if (ft_jtrue(o, "committed")) {
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "accepted");
		if (r->committed < 64)
			r->participants[r->committed] =
			    cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
		r->committed++;
		r->last_version = (uint64_t)ft_jnum(o, "version", 0);
	} else {
		r->abandoned++;
	}
}

static inline ft_rounds ft_journal(const ft *f)
{
	ft_rounds r;
	memset(&r, 0, sizeof r);
	ft_jsonl(ft_path(f, "coord-state/journal.jsonl"), ft_round_cb, &r);
	return r;
}

/* Waits until the journal shows `n` committed rounds (or the coordinator
 * exited, or ms passed). Returns the committed count. */
static inline int ft_wait_committed(ft *f, int n, int ms)
{
	uint64_t end = clk_mono_ms() + (uint64_t)ms;
	for (;;) {
		ft_rounds r = ft_journal(f);
		if (r.committed >= n || clk_mono_ms() >= end)
			return r.committed;
		if (f->coord > 0) {
			int st;
			if (waitpid(f->coord, &st, WNOHANG) == f->coord) {
				f->coord = 0;
				return ft_journal(f).committed;
			}
		}
		clk_sleep_ms(100);
	}
}

/* Waits until `log` contains needle (at least `count` times). */
static inline int ft_wait_log(const ft *f, const char *log, const char *needle, int count, int ms)
{
	uint64_t end = clk_mono_ms() + (uint64_t)ms;
	for (;;) {
		char *t = ft_read(ft_path(f, "%s", log));
		int n = 0;
		for (const char *p = t; p && (p = strstr(p, needle)); p++)
			n++;
		free(t);
		if (n >= count)
			return 1;
		if (clk_mono_ms() >= end)
			return 0;
		clk_sleep_ms(50);
	}
}

/* Fingerprint of the coordinator's committed version v, recomputed from
 * the tensors in its file (not read from its metadata). */
static inline int ft_coord_version_sha(const ft *f, uint64_t v, uint8_t out[32], tset **keep)
{
	tset *t = NULL;
	int rc = st_read_tset(
	    ft_path(f, "coord-state/versions/v%020llu.safetensors", (unsigned long long)v), NULL,
	    &t);
	if (rc)
		return rc;
	rc = tset_fingerprint(t, out);
	if (keep && !rc)
		*keep = t;
	else
		tset_free(t);
	return rc;
}

/* The coordinator journal's account of the final version: final_eval
 * records and the final summary. */
typedef struct ft_finals {
	int evals, summaries;
	uint64_t version;
	int answered;
	double mean;
} ft_finals;

static inline void ft_finals_cb(const cJSON *o, void *ud)
{
	ft_finals *r = ud;
	const char *t = ft_jstr(o, "type");
	if (t && strcmp(t, "final_eval") == 0 && ft_jnum(o, "eval_loss", -1) >= 0)
		r->evals++;
	if (t && strcmp(t, "final") == 0) {
		r->summaries++;
		r->version = (uint64_t)ft_jnum(o, "version", -1);
		r->answered = (int)ft_jnum(o, "answered", -1);
		r->mean = ft_jnum(o, "mean_eval_loss", -1);
	}
}

static inline ft_finals ft_journal_finals(const ft *f)
{
	ft_finals r;
	memset(&r, 0, sizeof r);
	ft_jsonl(ft_path(f, "coord-state/journal.jsonl"), ft_finals_cb, &r);
	return r;
}

/* Per-node facts from metrics.jsonl. */
typedef struct ft_node_metrics {
	int globals;       /* verified versions */
	uint64_t gver[64]; /* version of each */
	char gsha[64][65]; /* its SHA-256 as the node computed it */
	int evals;
	uint64_t ever[64];
	double eloss[64];
	int rounds;   /* round lines */
	int uploaded; /* rounds with an accepted upload */
	double bytes_up[64], bytes_fp32[64];
	/* "final" lines: the last version, answered to DownFinal */
	int finals, final_verified;
	uint64_t final_version;
	double final_loss; /* -1: not evaluated */
} ft_node_metrics;

static inline void ft_nm_cb(const cJSON *o, void *ud)
{
	ft_node_metrics *m = ud;
	const char *t = ft_jstr(o, "type");
	if (!t)
		return;
	if (strcmp(t, "global") == 0 && m->globals < 64) {
		m->gver[m->globals] = (uint64_t)ft_jnum(o, "version", -1);
		const char *s = ft_jstr(o, "sha256");
		snprintf(m->gsha[m->globals], 65, "%s", s ? s : "");
		m->globals++;
	} else if (strcmp(t, "eval") == 0 && m->evals < 64) {
		m->ever[m->evals] = (uint64_t)ft_jnum(o, "version", -1);
		m->eloss[m->evals] = ft_jnum(o, "eval_loss", -1);
		m->evals++;
	} else if (strcmp(t, "final") == 0) {
		m->finals++;
		m->final_version = (uint64_t)ft_jnum(o, "version", -1);
		m->final_verified = ft_jtrue(o, "verified");
		m->final_loss = ft_jnum(o, "eval_loss", -1);
	} else if (strcmp(t, "round") == 0) {
		m->rounds++;
		if (ft_jtrue(o, "uploaded") && m->uploaded < 64) {
			m->bytes_up[m->uploaded] = ft_jnum(o, "bytes_up", 0);
			m->bytes_fp32[m->uploaded] = ft_jnum(o, "bytes_up_fp32", 0);
			m->uploaded++;
		}
	}
}

static inline ft_node_metrics ft_node(const ft *f, int i)
{
	ft_node_metrics m;
	memset(&m, 0, sizeof m);
	ft_jsonl(ft_path(f, "node-%02d/metrics.jsonl", i + 1), ft_nm_cb, &m);
	return m;
}

/* 1 when every version node i verified (metrics.jsonl "global" lines)
 * equals, bit for bit, the coordinator's file of that version. */
static inline int ft_versions_match(const ft *f, int i)
{
	ft_node_metrics m = ft_node(f, i);
	if (m.globals == 0)
		return 0;
	for (int k = 0; k < m.globals; k++) {
		uint8_t c[32];
		char hex[65];
		if (ft_coord_version_sha(f, m.gver[k], c, NULL) != 0)
			return 0;
		hex_encode(c, 32, hex);
		if (strcmp(m.gsha[k], hex) != 0) {
			fprintf(stderr, "node %d: version %llu is %s, the coordinator's %s\n",
			        i + 1, (unsigned long long)m.gver[k], m.gsha[k], hex);
			return 0;
		}
	}
	return 1;
}

/* Waits until every node has written `n` round lines to its metrics (a
 * node writes one when the coordinator's RoundEnd reaches it, which can be
 * after the journal shows the commit). Returns 1, or 0 after ms. */
static inline int ft_wait_node_rounds(const ft *f, int n, int ms)
{
	uint64_t end = clk_mono_ms() + (uint64_t)ms;
	for (;;) {
		int all = 1;
		for (int i = 0; i < f->nnodes && all; i++)
			all = ft_node(f, i).rounds >= n;
		if (all)
			return 1;
		if (clk_mono_ms() >= end)
			return 0;
		clk_sleep_ms(50);
	}
}

/* Every version node i verified (its metrics.jsonl) equals the
 * coordinator's file of that version. */
static inline void ft_check_versions(const ft *f, int i)
{
	ft_node_metrics m = ft_node(f, i);
	assert_true(m.globals > 0);
	for (int k = 0; k < m.globals; k++) {
		uint8_t c[32];
		char hex[65];
		assert_int_equal(ft_coord_version_sha(f, m.gver[k], c, NULL), 0);
		hex_encode(c, 32, hex);
		assert_string_equal(m.gsha[k], hex);
	}
}

/* cmocka teardown: stops whatever the test left running. A federation
 * still current here was not cleaned up: an assertion ended the test, so
 * its logs are shown and its files kept. */
static inline int ft_teardown(void **state)
{
	(void)state;
	if (ft_current) {
		ft_stop_all(ft_current);
		ft_dump_logs(ft_current);
		fprintf(stderr, "federation test files kept in %s\n", ft_current->dir);
	}
	ft_current = NULL;
	return 0;
}

static inline void ft_cleanup(ft *f, int failed)
{
	ft_current = NULL;
	ft_stop_all(f);
	/* a sanitizer report in any process fails the test */
	int san = tu_system("grep -l -E 'Sanitizer|runtime error:' '%s'/*.log >&2", f->dir) == 0;
	if (failed || san) {
		ft_dump_logs(f);
		fprintf(stderr, "federation test files kept in %s\n", f->dir);
	} else if (getenv("FEDLORA_FED_KEEP")) {
		fprintf(stderr, "federation test files kept in %s (FEDLORA_FED_KEEP)\n", f->dir);
	} else {
		tu_rmtree(f->dir);
	}
	if (san && !failed)
		fail_msg("a process of the federation reported a sanitizer error (logs above)");
}

#endif
