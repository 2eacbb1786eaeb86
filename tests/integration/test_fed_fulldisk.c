/* The coordinator's state directory on a real full filesystem (a 4 MiB
 * tmpfs mounted by the test; skipped, and said so, when mounting is not
 * permitted): two nodes and the real coordinator over mutual TLS run
 * rounds, a filler file takes every free block until the coordinator has
 * backed off four times, then it is deleted.
 * Asserted:
 *  - the coordinator backs off: one error line per step, counted, the gaps
 *    at least 1, 2, 4 s, and no round starts while the state cannot be
 *    written;
 *  - it says once that it can write again, and rounds resume;
 *  - the journal afterwards: every line one whole JSON object (nothing torn
 *    or glued), rounds in order with each round_start closed by its
 *    round_end, the round abandoned because its version could not be
 *    written present, the outage recorded (store_failed, store_recovered),
 *    timestamps in order;
 *  - then a file-size limit set on the running coordinator from outside
 *    (prlimit(2), a real kernel limit 64 bytes above the journal's length,
 *    which the coordinator meets as EFBIG): the next record is cut short by
 *    the kernel and the journal must stay exactly as it was, whole lines
 *    only, while the records wait in memory; once the limit is lifted they
 *    are written in order (the round abandoned meanwhile included);
 *    /metrics says fedlora_state_writable 0 and the backlog meanwhile, 1
 *    and 0 after;
 *  - every committed version file matches the journal's SHA-256 and what
 *    the nodes verified; `fedlora-coordinator status` reads it all with no
 *    unreadable line; a restarted coordinator reads it cleanly and commits
 *    another round. */
#define _GNU_SOURCE /* prlimit */
#include "fedtest.h"
#include "journal.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>

static char g_mnt[PATH_MAX];
static pid_t g_cat;

/* The coordinator with its output through a pipe to `cat >> log`: the
 * file-size limit of phase 2 applies to the coordinator's own writes, and
 * its log must not be one of them. */
static void start_coord_piped(ft *f, const char *const *extra)
{
	const char *argv[16] = {f->coord_bin, "serve", "--config", ft_path(f, "coordinator.conf")};
	int n = 4;
	for (int i = 0; extra && extra[i] && n < 15; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	const char *log = ft_path(f, "coordinator.log");
	int p[2];
	assert_int_equal(pipe(p), 0);
	g_cat = fork();
	assert_true(g_cat >= 0);
	if (g_cat == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644);
		if (fd < 0 || dup2(p[0], 0) < 0 || dup2(fd, 1) < 0)
			_exit(127);
		close(p[0]);
		close(p[1]);
		execl("/bin/cat", "cat", (char *)NULL);
		_exit(127);
	}
	pid_t c = fork();
	assert_true(c >= 0);
	if (c == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (dup2(p[1], 1) < 0 || dup2(p[1], 2) < 0)
			_exit(127);
		close(p[0]);
		close(p[1]);
		setenv("OMP_NUM_THREADS", "1", 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(p[0]);
	close(p[1]);
	f->coord = c;
}

/* cat ends when the coordinator's end of the pipe closes. */
static void reap_cat(void)
{
	if (g_cat > 0) {
		if (ft_wait_pid(g_cat, 5000) < 0) {
			kill(g_cat, SIGKILL);
			ft_wait_pid(g_cat, 5000);
		}
		g_cat = 0;
	}
}

static int umount_teardown(void **state)
{
	if (g_mnt[0]) {
		ft_teardown(state); /* stops the processes first */
		reap_cat();
		umount2(g_mnt, MNT_DETACH);
		g_mnt[0] = 0;
		return 0;
	}
	return ft_teardown(state);
}

static int count_between(const char *t, const char *from, const char *to, const char *needle)
{
	int n = 0;
	for (const char *p = from ? from : t; (p = strstr(p, needle)) && (!to || p < to); p++)
		n++;
	return n;
}

/* Checks the back-off lines ("cannot be written") from `from` on: their
 * count within [lo, hi], and each gap at least the schedule's 1, 2, 4, 8 s
 * (less 50 ms for the log's own timing). */
static void check_backoff(const char *log, const char *from, int lo, int hi, const char *phase)
{
	double t[16];
	int n = 0;
	for (const char *p = from; (p = strstr(p, "cannot be written")) && n < 16; p++) {
		const char *l = p;
		while (l > log && l[-1] != '\n')
			l--;
		int hh, mm;
		double ss;
		assert_int_equal(sscanf(l + 11, "%d:%d:%lfZ", &hh, &mm, &ss), 3);
		t[n++] = (hh * 3600 + mm * 60) * 1e3 + ss * 1e3;
	}
	print_message("%s: %d back-off line(s), gaps", phase, n);
	for (int k = 1; k < n; k++)
		print_message(" %.2f s", (t[k] - t[k - 1]) / 1e3);
	print_message("\n");
	assert_in_range(n, lo, hi);
	for (int k = 1; k < n; k++)
		if (t[k] - t[k - 1] < 1000.0 * (1 << (k - 1)) - 50)
			fail_msg("%s: back-off step %d after %.3f s, the schedule says %d s", phase,
			         k, (t[k] - t[k - 1]) / 1e3, 1 << (k - 1));
}

/* A gauge or counter without labels from the coordinator's /metrics (its
 * latest port from the log); NAN when it cannot be read. */
static double metric(const ft *f, const char *name)
{
	char *log = ft_read(ft_path(f, "coordinator.log"));
	const char *key = "Prometheus metrics on http://127.0.0.1:", *p = log, *last = NULL;
	while (p && (p = strstr(p, key)))
		last = p++;
	int port = last ? atoi(last + strlen(key)) : 0;
	free(log);
	char *m = port > 0 ? tu_http_get(port, "/metrics") : NULL;
	double v = NAN;
	char pat[128];
	snprintf(pat, sizeof pat, "\n%s ", name);
	const char *at = m ? strstr(m, pat) : NULL;
	if (at)
		v = strtod(at + strlen(pat), NULL);
	free(m);
	return v;
}

typedef struct jcheck {
	int ok;
	char why[256];
	uint64_t open_round; /* round_start seen, round_end not yet */
	uint64_t last_round;
	double last_ts;
	int abandoned_version, failed, recovered, committed;
	uint64_t cv[128];
	char csha[128][65];
} jcheck;

static int jcheck_cb(const cJSON *o, void *ud)
{
	jcheck *j = ud;
	const char *t = ft_jstr(o, "type");
	uint64_t r = (uint64_t)ft_jnum(o, "round", 0);
	double ts = ft_jnum(o, "ts", -1);
	if (!j->ok)
		return 0;
#define BAD(...)                                                                                   \
	do {                                                                                       \
		j->ok = 0;                                                                         \
		snprintf(j->why, sizeof j->why, __VA_ARGS__);                                      \
		return 0;                                                                          \
	} while (0)
	if (!t)
		BAD("a record without a type");
	if (ts < j->last_ts)
		BAD("%s record's ts %.0f before the previous %.0f", t, ts, j->last_ts);
	j->last_ts = ts;
	if (strcmp(t, "round_start") == 0) {
		if (j->open_round)
			BAD("round %llu started while round %llu was open", (unsigned long long)r,
			    (unsigned long long)j->open_round);
		if (r != j->last_round + 1)
			BAD("round %llu after round %llu", (unsigned long long)r,
			    (unsigned long long)j->last_round);
		j->open_round = j->last_round = r;
	} else if (strcmp(t, "round_end") == 0 && !ft_jtrue(o, "recovered")) {
		if (r != j->open_round)
			BAD("round_end of round %llu, open round %llu", (unsigned long long)r,
			    (unsigned long long)j->open_round);
		j->open_round = 0;
		const char *d = ft_jstr(o, "detail");
		if (ft_jtrue(o, "committed") && j->committed < 128) {
			j->cv[j->committed] = (uint64_t)ft_jnum(o, "version", -1);
			const char *s = ft_jstr(o, "sha256");
			snprintf(j->csha[j->committed], 65, "%s", s ? s : "");
			j->committed++;
		} else if (d && strstr(d, "cannot write version")) {
			j->abandoned_version++;
		}
	} else if (strcmp(t, "store_failed") == 0) {
		j->failed++;
	} else if (strcmp(t, "store_recovered") == 0) {
		if (j->recovered >= j->failed)
			BAD("store_recovered without store_failed before it");
		j->recovered++;
	}
	return 0;
#undef BAD
}

static void check_journal(const ft *f, jcheck *j)
{
	const char *jp = ft_path(f, "coord-state/journal.jsonl");
	char *t = ft_read(jp);
	assert_non_null(t);
	size_t nlf = 0, len = strlen(t);
	for (size_t i = 0; i < len; i++)
		nlf += t[i] == '\n';
	assert_true(len > 0 && t[len - 1] == '\n');
	free(t);
	memset(j, 0, sizeof *j);
	j->ok = 1;
	size_t nl = 0, nb = 0;
	assert_int_equal(journal_read(jp, jcheck_cb, j, &nl, &nb), 0);
	if (!j->ok)
		fail_msg("journal: %s", j->why);
	assert_int_equal(nb, 0);   /* no damaged line, nothing glued */
	assert_int_equal(nl, nlf); /* every line one record */
}

static void test_full_disk(void **state)
{
	(void)state;
	static ft f;
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 2, 0);
	snprintf(g_mnt, sizeof g_mnt, "%s", ft_path(&f, "coord-state"));
	assert_int_equal(mkdir(g_mnt, 0700), 0);
	if (mount("tmpfs", g_mnt, "tmpfs", 0, "size=4m,mode=0700") != 0) {
		print_message("SKIPPED: cannot mount a tmpfs for the full disk (%s); this test "
		              "needs root (CAP_SYS_ADMIN)\n",
		              strerror(errno));
		g_mnt[0] = 0;
		ft_cleanup(&f, 0);
		skip();
	}
	const char *cx[] = {"--state.keep_versions=100", "--metrics.listen=127.0.0.1:0", NULL};
	start_coord_piped(&f, cx);
	for (int i = 0; i < 2; i++)
		ft_start_node(&f, i, NULL);
	if (ft_wait_committed(&f, 2, 120000) < 2) {
		ft_cleanup(&f, 1);
		fail_msg("no two rounds before the disk was filled");
	}
	/* every free block goes to the filler */
	assert_int_not_equal(tu_system("dd if=/dev/zero of='%s/filler' bs=4k 2>/dev/null", g_mnt),
	                     0);
	print_message("disk full at %d committed rounds\n", ft_journal(&f).committed);
	if (!ft_wait_log(&f, "coordinator.log", "cannot be written:", 1, 120000)) {
		ft_cleanup(&f, 1);
		fail_msg("no back-off line within 120 s of the disk filling");
	}
	/* four steps (0, 1, 3, 7 s when the outage begins between rounds;
	 * retries wait for an open round to end), then half a second: the
	 * fifth is 8 s away, so exactly four lines */
	if (!ft_wait_log(&f, "coordinator.log", "cannot be written", 4, 90000)) {
		ft_cleanup(&f, 1);
		fail_msg("fewer than four back-off steps within 90 s");
	}
	clk_sleep_ms(500);
	char *log = ft_read(ft_path(&f, "coordinator.log"));
	const char *first = strstr(log, "cannot be written:");
	assert_int_equal(count_between(log, first, NULL, "nodes sampled"), 0);
	check_backoff(log, first, 4, 4, "full disk");
	free(log);
	assert_int_equal(tu_system("rm -f '%s/filler'", g_mnt), 0);
	int before = ft_journal(&f).committed;
	if (!ft_wait_log(&f, "coordinator.log", "can be written again", 1, 70000) ||
	    ft_wait_committed(&f, before + 2, 120000) < before + 2) {
		ft_cleanup(&f, 1);
		fail_msg("the federation did not resume once space was back");
	}
	log = ft_read(ft_path(&f, "coordinator.log"));
	first = strstr(log, "cannot be written:");
	const char *back = strstr(log, "can be written again");
	assert_non_null(back);
	assert_int_equal(count_between(log, first, back, "nodes sampled"), 0);
	assert_int_equal(count_between(log, NULL, NULL, "can be written again"), 1);
	free(log);

	/* phase 2: the journal itself cannot be written */
	char jp[PATH_MAX + 16];
	snprintf(jp, sizeof jp, "%s/journal.jsonl", g_mnt);
	struct stat jst;
	assert_int_equal(stat(jp, &jst), 0);
	struct rlimit lim = {(rlim_t)jst.st_size + 64, RLIM_INFINITY}, old;
	assert_int_equal(prlimit(f.coord, RLIMIT_FSIZE, &lim, &old), 0);
	if (!ft_wait_log(&f, "coordinator.log", "cannot be written:", 2, 120000)) {
		ft_cleanup(&f, 1);
		fail_msg("no back-off line after the file-size limit");
	}
	assert_int_equal(stat(jp, &jst), 0);
	off_t at_outage = jst.st_size;
	/* three steps: the first retry waits for the open round to end */
	log = ft_read(ft_path(&f, "coordinator.log"));
	int before_lines = count_between(log, NULL, NULL, "cannot be written");
	free(log);
	if (!ft_wait_log(&f, "coordinator.log", "cannot be written", before_lines + 2, 90000)) {
		ft_cleanup(&f, 1);
		fail_msg("no back-off retries under the file-size limit");
	}
	clk_sleep_ms(500);
	/* all or nothing in the real process: no byte of a failed record */
	char *jt = ft_read(jp);
	assert_non_null(jt);
	assert_int_equal((off_t)strlen(jt), at_outage);
	assert_true(at_outage > 0 && jt[at_outage - 1] == '\n');
	free(jt);
	log = ft_read(ft_path(&f, "coordinator.log"));
	first = strstr(strstr(log, "cannot be written:") + 1, "cannot be written:");
	assert_non_null(first);
	assert_int_equal(count_between(log, first, NULL, "nodes sampled"), 0);
	assert_non_null(strstr(first, "appending to the journal failed: File too large"));
	assert_non_null(strstr(first, "journal record(s) held"));
	check_backoff(log, first, 3, 3, "journal file-size limit");
	free(log);
	double wr = metric(&f, "fedlora_state_writable");
	double bl = metric(&f, "fedlora_journal_backlog");
	double fails = metric(&f, "fedlora_state_write_failures_total");
	print_message("metrics in the outage: state_writable %g, journal_backlog %g, "
	              "write_failures_total %g\n",
	              wr, bl, fails);
	assert_true(wr == 0);
	assert_true(bl >= 2);    /* at least the round's round_start and store_failed */
	assert_true(fails >= 7); /* 4 steps of the full disk, 3 here */
	assert_int_equal(prlimit(f.coord, RLIMIT_FSIZE, &old, NULL), 0);
	before = ft_journal(&f).committed;
	if (!ft_wait_log(&f, "coordinator.log", "can be written again", 2, 70000) ||
	    ft_wait_committed(&f, before + 1, 120000) < before + 1) {
		ft_cleanup(&f, 1);
		fail_msg("the federation did not resume once the limit was lifted");
	}
	assert_true(metric(&f, "fedlora_state_writable") == 1);
	assert_true(metric(&f, "fedlora_journal_backlog") == 0);

	/* restart: the journal reads cleanly and the federation goes on */
	assert_int_equal(ft_stop(&f.coord, SIGTERM, 10000), 0);
	reap_cat();
	jcheck j;
	check_journal(&f, &j);
	start_coord_piped(&f, cx);
	before = ft_journal(&f).committed;
	if (ft_wait_committed(&f, before + 1, 120000) < before + 1) {
		ft_cleanup(&f, 1);
		fail_msg("no round after the restart");
	}
	ft_stop_all(&f);
	reap_cat();
	assert_false(ft_log_has(&f, "coordinator.log", "skipped"));
	check_journal(&f, &j);
	print_message("journal: %d committed, %d abandoned for the version write, %d outage(s)\n",
	              j.committed, j.abandoned_version, j.recovered);
	assert_true(j.abandoned_version >= 1);
	assert_true(j.failed >= 2);
	assert_int_equal(j.recovered, j.failed);
	/* committed versions: the files match the journal and the nodes */
	for (int k = 0; k < j.committed; k++) {
		uint8_t c[32];
		char hex[65];
		assert_int_equal(ft_coord_version_sha(&f, j.cv[k], c, NULL), 0);
		hex_encode(c, 32, hex);
		assert_string_equal(hex, j.csha[k]);
	}
	for (int i = 0; i < 2; i++) {
		ft_node_metrics m = ft_node(&f, i);
		assert_true(m.globals > 0);
		for (int k = 0; k < m.globals; k++) {
			uint8_t c[32];
			char hex[65];
			assert_int_equal(ft_coord_version_sha(&f, m.gver[k], c, NULL), 0);
			hex_encode(c, 32, hex);
			assert_string_equal(m.gsha[k], hex);
		}
	}
	/* status reads it all */
	char cmd[PATH_MAX * 2];
	snprintf(cmd, sizeof cmd, "'%s' status --state-dir '%s' --json", f.coord_bin, g_mnt);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	static char out[1 << 16];
	size_t n = fread(out, 1, sizeof out - 1, p);
	out[n] = 0;
	assert_int_equal(pclose(p), 0);
	cJSON *s = cJSON_Parse(out);
	assert_non_null(s);
	assert_true(ft_jnum(s, "journal_bad_lines", -1) == 0);
	assert_true(ft_jnum(s, "rounds_abandoned", 0) >= 1);
	assert_true(ft_jnum(s, "state_write_outages", 0) >= 2);
	assert_true(ft_jnum(s, "journal_records_lost", -1) == 0);
	assert_true(ft_jnum(s, "rounds_committed", 0) == j.committed);
	cJSON_Delete(s);
	ft_current = NULL;
	umount2(g_mnt, MNT_DETACH);
	g_mnt[0] = 0;
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_full_disk, umount_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
