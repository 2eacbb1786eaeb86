/* End to end, central differential privacy, real processes on 127.0.0.1
 * over mutual TLS (four nodes, FFA-LoRA, q4 uploads with error feedback):
 *  - the ledger grows by one charge per round, its epsilon equals the
 *    accountant's for that many rounds, and `status` shows it;
 *  - the coordinator killed (SIGKILL) mid-federation never forgets a round
 *    it started: the ledger holds at least as many charges as the journal
 *    has round starts, and a restart continues from it;
 *  - with target_epsilon between the epsilon of 5 and of 6 rounds, the
 *    federation stops by itself after exactly 5 charged rounds, saying why
 *    in the log and the journal;
 *  - privacy.mode = distributed without secure aggregation is refused at
 *    start-up with an error naming both keys (distributed mode itself:
 *    test_fed_dpdist);
 *  - a lost ledger (fewer charges than the journal's) or a tampered one
 *    stops the coordinator at start-up. */
#include "fedtest.h"

#include "dp.h"

#include <inttypes.h>
#include <math.h>

#define Z     "1.0"
#define CLIP  "0.5"
#define DELTA 1e-3

typedef struct jcount {
	int charges, starts, exhausted, committed;
	double max_norm_mean;
} jcount;

static void jcount_cb(const cJSON *o, void *ud)
{
	jcount *c = ud;
	const char *t = ft_jstr(o, "type");
	if (!t)
		return;
	if (strcmp(t, "privacy_charge") == 0)
		c->charges++;
	else if (strcmp(t, "round_start") == 0)
		c->starts++;
	else if (strcmp(t, "privacy_budget_exhausted") == 0)
		c->exhausted++;
	else if (strcmp(t, "round_end") == 0 && ft_jtrue(o, "committed") &&
	         !ft_jtrue(o, "recovered")) {
		c->committed++;
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "metrics");
		double n = ft_jnum(m, "mean_update_norm", 0);
		if (n > c->max_norm_mean)
			c->max_norm_mean = n;
	}
}

static jcount jcounts(const ft *f)
{
	jcount c;
	memset(&c, 0, sizeof c);
	ft_jsonl(ft_path(f, "coord-state/journal.jsonl"), jcount_cb, &c);
	return c;
}

static void ledger(const ft *f, dp_ledger *l)
{
	char why[300];
	int rc = dp_ledger_load(ft_path(f, "coord-state"), l, why, sizeof why);
	if (rc)
		fail_msg("ledger: %s (%d)", why, rc);
}

static void test_dp_ledger_and_budget(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 4, 1);
	const double q = 3.0 / 4.0;
	double eps[8];
	for (int r = 1; r <= 7; r++)
		eps[r] = dp_epsilon_for(q, 1.0, (uint64_t)r, DELTA);
	char target[64];
	snprintf(target, sizeof target, "--privacy.target_epsilon=%.6f", 0.5 * (eps[5] + eps[6]));
	print_message("q 0.75, z %s, delta %g: epsilon after 1..6 rounds %.3f %.3f %.3f %.3f %.3f "
	              "%.3f; %s\n",
	              Z, DELTA, eps[1], eps[2], eps[3], eps[4], eps[5], eps[6], target);
	/* phase 0: distributed mode without secure aggregation is refused */
	const char *bad[] = {"--privacy.mode=distributed", "--privacy.clip=0.5",
	                     "--privacy.population=4",     "--privacy.target_epsilon=100",
	                     "--rounds.nodes_per_round=3", NULL};
	ft_start_coord(&f, bad);
	int st = ft_wait_pid(f.coord, 20000);
	f.coord = 0;
	assert_true(st > 0);
	assert_true(ft_log_has(&f, "coordinator.log", "privacy.mode = distributed"));
	assert_true(ft_log_has(&f, "coordinator.log", "aggregation.secure = true"));

	/* phase 1: two rounds, clean stop (max_rounds) */
	const char *cx[] = {"--privacy.mode=central",
	                    "--privacy.noise_multiplier=" Z,
	                    "--privacy.clip=" CLIP,
	                    "--privacy.delta=1e-3",
	                    target,
	                    "--privacy.population=4",
	                    "--rounds.nodes_per_round=3",
	                    "--aggregation.weighting=uniform",
	                    "--state.keep_versions=100",
	                    "--rounds.max_rounds=2",
	                    NULL};
	ft_start_coord(&f, cx);
	for (int i = 0; i < 4; i++)
		ft_start_node(&f, i, NULL);
	st = ft_wait_pid(f.coord, 240000);
	f.coord = 0;
	if (st != 0) {
		ft_cleanup(&f, 1);
		fail_msg("phase 1: coordinator exit status %d", st);
	}
	/* told the federation finished, the nodes exit 0 by themselves */
	for (int i = 0; i < 4; i++) {
		int ns = ft_wait_pid(f.node[i], 30000);
		f.node[i] = 0;
		if (ns != 0) {
			ft_cleanup(&f, 1);
			fail_msg("phase 1: node-%02d exit status %d after the federation finished",
			         i + 1, ns);
		}
	}
	dp_ledger l;
	ledger(&f, &l);
	jcount c = jcounts(&f);
	print_message("phase 1: ledger %" PRIu64 " rounds, epsilon %.4f; journal %d charges, %d "
	              "starts, %d committed\n",
	              l.rounds, l.epsilon, c.charges, c.starts, c.committed);
	assert_int_equal(l.rounds, 2);
	assert_int_equal(c.charges, 2);
	assert_int_equal(c.starts, 2);
	assert_int_equal(c.committed, 2);
	assert_true(fabs(l.epsilon - eps[2]) <= 1e-9 * eps[2]);
	/* status shows it */
	char cmd[4200];
	snprintf(cmd, sizeof cmd, "'%s' status --state-dir '%s' --json", f.coord_bin,
	         ft_path(&f, "coord-state"));
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	char out[65536];
	size_t n = fread(out, 1, sizeof out - 1, p);
	out[n] = 0;
	assert_int_equal(pclose(p), 0);
	cJSON *sj = cJSON_Parse(out);
	assert_non_null(sj);
	const cJSON *pj = cJSON_GetObjectItemCaseSensitive(sj, "privacy");
	assert_true(ft_jnum(pj, "rounds_charged", -1) == 2);
	assert_true(fabs(ft_jnum(pj, "epsilon", -1) - eps[2]) <= 1e-9 * eps[2]);
	cJSON_Delete(sj);

	/* phase 2: restart (no max_rounds), SIGKILL right after the third
	 * charge: the ledger never holds fewer charges than rounds started */
	cx[9] = NULL;
	ft_start_coord(&f, cx);
	for (int i = 0; i < 4; i++)
		ft_start_node(&f, i, NULL);
	assert_true(ft_wait_log(&f, "coordinator.log", "privacy: round 3 charged", 1, 240000));
	ft_stop(&f.coord, SIGKILL, 5000);
	ledger(&f, &l);
	c = jcounts(&f);
	print_message("phase 2 (after SIGKILL): ledger %" PRIu64 " rounds; journal %d charges, "
	              "%d starts\n",
	              l.rounds, c.charges, c.starts);
	assert_int_equal(l.rounds, 3);
	assert_true((int)l.rounds >= c.starts && (int)l.rounds >= c.charges);

	/* phase 3: restart; rounds 4 and 5 run, the sixth would pass the
	 * target: the federation ends by itself */
	ft_start_coord(&f, cx);
	st = ft_wait_pid(f.coord, 240000);
	f.coord = 0;
	for (int i = 0; i < 4; i++)
		ft_stop(&f.node[i], SIGTERM, 8000);
	if (st != 0) {
		ft_cleanup(&f, 1);
		fail_msg("phase 3: coordinator exit status %d", st);
	}
	ledger(&f, &l);
	c = jcounts(&f);
	print_message("phase 3: ledger %" PRIu64 " rounds, epsilon %.4f (target %.4f); journal %d "
	              "charges, %d starts, %d committed, budget stop %d; largest mean update "
	              "norm %.4f (clip " CLIP ")\n",
	              l.rounds, l.epsilon, 0.5 * (eps[5] + eps[6]), c.charges, c.starts,
	              c.committed, c.exhausted, c.max_norm_mean);
	assert_int_equal(l.rounds, 5);
	assert_true(fabs(l.epsilon - eps[5]) <= 1e-9 * eps[5]);
	assert_true(l.epsilon <= 0.5 * (eps[5] + eps[6]));
	assert_int_equal(c.charges, 5);
	assert_int_equal(c.exhausted, 1);
	assert_true(c.starts == 5);
	/* rounds 1, 2, 4, 5 committed; round 3 died with the coordinator
	 * (unless it committed in the instant before the kill) */
	assert_true(c.committed == 4 || c.committed == 5);
	assert_true(ft_log_has(&f, "coordinator.log", "past privacy.target_epsilon"));
	/* nodes clipped their updates: the decoded norms the coordinator saw */
	assert_true(c.max_norm_mean <= atof(CLIP));

	/* phase 4: a lost ledger (the journal still counts 5 charges) and a
	 * corrupt one both stop the coordinator at start-up */
	char lp[4200], sp[4200];
	snprintf(lp, sizeof lp, "%s", ft_path(&f, "coord-state/privacy.ledger"));
	snprintf(sp, sizeof sp, "%s", ft_path(&f, "ledger.saved"));
	assert_int_equal(rename(lp, sp), 0);
	ft_start_coord(&f, cx);
	st = ft_wait_pid(f.coord, 20000);
	f.coord = 0;
	assert_true(st > 0);
	assert_true(ft_log_has(&f, "coordinator.log", "records 5 privacy charges but the privacy"));
	char *txt = ft_read(sp);
	assert_non_null(txt);
	char *rd = strstr(txt, "\"rounds\":5");
	assert_non_null(rd);
	rd[10] = '9'; /* tampered: 9 rounds, checksum no longer matches */
	FILE *lf = fopen(lp, "w");
	assert_non_null(lf);
	fputs(txt, lf);
	fclose(lf);
	free(txt);
	ft_start_coord(&f, cx);
	st = ft_wait_pid(f.coord, 20000);
	f.coord = 0;
	assert_true(st > 0);
	assert_true(ft_log_has(&f, "coordinator.log", "does not match its checksum"));
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_dp_ledger_and_budget, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
