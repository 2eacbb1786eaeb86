/* Asynchronous buffered aggregation end to end: real processes on
 * 127.0.0.1 over mutual TLS (aggregation.mode = async, docs/COORDINATOR.md).
 *  - an uneven fleet, 2 fast nodes and 4 nodes slowed down 5x
 *    (train.slowdown = 5), K = 2: the federation commits 14 versions and
 *    stops, its nodes too;
 *    the slow nodes' updates are in committed versions with staleness >= 1
 *    and exactly the polynomial weight (1+s)^-1/2 the journal records;
 *    every version a node verified is, bit for bit, the coordinator's file.
 * test_fed_async_kill.c has the crash between buffer fill and commit. */
#include "fedtest.h"

#include <math.h>

typedef struct aj {
	int commits;
	int slow_in_commits; /* updates of slow nodes inside committed versions */
	int slow_stale;      /* ... with staleness >= 1 */
	int fast_in_commits;
	int bad_factor; /* factor differs from (1+s)^-1/2 */
	int refused;
	double max_stale;
} aj;

static void aj_cb(const cJSON *o, void *ud)
{
	aj *a = ud;
	const char *t = ft_jstr(o, "type");
	if (!t)
		return;
	if (!strcmp(t, "async_update") && !ft_jtrue(o, "accepted"))
		a->refused++;
	if (strcmp(t, "round_end") != 0 || !ft_jtrue(o, "committed"))
		return;
	const char *mode = ft_jstr(o, "mode");
	if (!mode || strcmp(mode, "async") != 0)
		return;
	a->commits++;
	const cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "updates");
	const cJSON *e;
	cJSON_ArrayForEach(e, u)
	{
		const char *node = ft_jstr(e, "node");
		double s = ft_jnum(e, "staleness", -1), fac = ft_jnum(e, "factor", -1);
		if (fabs(fac - pow(1 + s, -0.5)) > 1e-12)
			a->bad_factor++;
		if (s > a->max_stale)
			a->max_stale = s;
		/* node-01 and node-02 are fast */
		if (node && (!strcmp(node, "node-01") || !strcmp(node, "node-02"))) {
			a->fast_in_commits++;
		} else {
			a->slow_in_commits++;
			a->slow_stale += s >= 1;
		}
	}
}

static aj read_aj(const ft *f)
{
	aj a;
	memset(&a, 0, sizeof a);
	ft_jsonl(ft_path(f, "coord-state/journal.jsonl"), aj_cb, &a);
	return a;
}

static void test_fast_and_slow(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 6, 0);
	const char *cx[] = {
	    "--aggregation.mode=async",           "--aggregation.buffer_size=2",
	    "--aggregation.staleness=polynomial", "--aggregation.staleness_exponent=0.5",
	    "--aggregation.max_staleness=50",     "--rounds.max_rounds=14",
	    "--rounds.deadline_ms=300000",        "--train.local_steps=4",
	    "--state.keep_versions=100",          NULL};
	ft_start_coord(&f, cx);
	/* no held-out pass per version: training is what differs in speed */
	const char *fast[] = {"--node.eval=false", NULL};
	const char *slow[] = {"--node.eval=false", "--train.slowdown=5", NULL};
	for (int i = 0; i < 6; i++)
		ft_start_node(&f, i, i < 2 ? fast : slow);
	int committed = ft_wait_committed(&f, 14, 240000);
	int st = committed >= 14 ? ft_wait_pid(f.coord, 20000) : -1;
	if (committed < 14 || st != 0) {
		ft_cleanup(&f, 1);
		fail_msg("async federation: %d of 14 versions committed, coordinator status %d",
		         committed, st);
	}
	f.coord = 0;
	/* nodes are told "federation finished" and stop by themselves */
	for (int i = 0; i < 6; i++) {
		int ns = ft_wait_pid(f.node[i], 20000);
		f.node[i] = 0;
		if (ns != 0) {
			ft_cleanup(&f, 1);
			fail_msg("node-%02d exit status %d", i + 1, ns);
		}
	}
	aj a = read_aj(&f);
	print_message("async: %d versions; updates in them: %d fast, %d slow (%d of them stale), "
	              "max staleness %.0f, %d refused\n",
	              a.commits, a.fast_in_commits, a.slow_in_commits, a.slow_stale, a.max_stale,
	              a.refused);
	int ok = a.commits == 14 && a.bad_factor == 0 && a.slow_in_commits >= 2 &&
	         a.slow_stale >= 1 && a.fast_in_commits > a.slow_in_commits;
	for (int i = 0; i < 6 && ok; i++)
		ok = ft_versions_match(&f, i);
	/* the coordinator refused nothing it should have taken */
	ok = ok && a.refused == 0;
	ft_cleanup(&f, !ok);
	assert_true(ok);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_fast_and_slow, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
