/* End to end, distributed differential privacy (privacy.mode =
 * distributed: discrete Gaussian noise added by the nodes under secure
 * aggregation), real processes on 127.0.0.1 over mutual TLS (five nodes,
 * FFA-LoRA, q4 grid):
 *  - distributed without aggregation.secure, and central with it, are
 *    refused at start-up with an error naming both keys;
 *  - three rounds run: each is charged to the ledger before it starts, the
 *    ledger's epsilon equals the distributed accountant's (dpdist, computed
 *    here from the federation's public parameters) for that many rounds
 *    to 1e-9 relative, and at least one round commits a secure sum;
 *  - every node that trained says it added discrete Gaussian noise of the
 *    sd the accountant assumed (z c / sqrt(t));
 *  - the coordinator killed (SIGKILL) right after a charge never forgets
 *    it: the ledger holds at least as many charges as the journal has
 *    round starts. */
#include "fedtest.h"

#include "ddg.h"
#include "dp.h"
#include "dpdist.h"

#include <inttypes.h>
#include <math.h>

#define N 5

static void ledger(const ft *f, dp_ledger *l)
{
	char why[300];
	int rc = dp_ledger_load(ft_path(f, "coord-state"), l, why, sizeof why);
	if (rc)
		fail_msg("ledger: %s (%d)", why, rc);
}

static void test_dpdist(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, N, 1);
	/* phase 0: refusals */
	const char *bad1[] = {"--privacy.mode=distributed",
	                      "--privacy.clip=0.5",
	                      "--privacy.population=5",
	                      "--privacy.target_epsilon=100",
	                      "--rounds.nodes_per_round=4",
	                      "--aggregation.weighting=uniform",
	                      NULL};
	ft_start_coord(&f, bad1);
	int st = ft_wait_pid(f.coord, 20000);
	f.coord = 0;
	assert_true(st > 0);
	assert_true(ft_log_has(&f, "coordinator.log",
	                       "privacy.mode = distributed needs aggregation.secure = true"));
	const char *bad2[] = {"--privacy.mode=central",     "--privacy.clip=0.5",
	                      "--privacy.population=5",     "--privacy.target_epsilon=100",
	                      "--rounds.nodes_per_round=4", "--aggregation.weighting=uniform",
	                      "--aggregation.secure=true",  NULL};
	ft_start_coord(&f, bad2);
	st = ft_wait_pid(f.coord, 20000);
	f.coord = 0;
	assert_true(st > 0);
	assert_true(ft_log_has(&f, "coordinator.log", "privacy.mode = central clips each update"));
	assert_true(ft_log_has(&f, "coordinator.log", "aggregation.secure = true"));

	/* phase 1: three distributed rounds */
	/* (at most 11 extra arguments: z = 1 and delta = 1e-5 are the defaults) */
	const char *cx[] = {"--aggregation.secure=true",
	                    "--privacy.mode=distributed",
	                    "--privacy.clip=0.5",
	                    "--privacy.target_epsilon=1000",
	                    "--privacy.population=5",
	                    "--privacy.noise_shares=3",
	                    "--rounds.nodes_per_round=4",
	                    "--rounds.min_nodes=5",
	                    "--aggregation.weighting=uniform",
	                    "--train.local_steps=2",
	                    "--rounds.max_rounds=3",
	                    NULL};
	ft_start_coord(&f, cx);
	for (int i = 0; i < N; i++)
		ft_start_node(&f, i, NULL);
	st = ft_wait_pid(f.coord, 240000);
	f.coord = 0;
	for (int i = 0; i < N; i++)
		ft_stop(&f.node[i], SIGTERM, 8000);
	if (st != 0) {
		ft_cleanup(&f, 1);
		fail_msg("phase 1: coordinator exit status %d", st);
	}
	dp_ledger l;
	ledger(&f, &l);
	ft_rounds jr = ft_journal(&f);
	/* the accountant from public parameters: FFA exchanges lora_b of
	 * attn_q and attn_v in every layer, FT_DIM x FT_RANK each */
	uint64_t D = (uint64_t)FT_LAYERS * 2 * FT_DIM * FT_RANK;
	ddg_acct a = {.dim = D,
	              .c = sqrt((double)D) * 7 / 4.0 * (1 + 1e-6),
	              .z = 1.0,
	              .shares = 3,
	              .max_nodes = 5,
	              .beta = DDG_BETA};
	double want = ddg_epsilon_for(0.8, &a, l.rounds, 1e-5);
	print_message("ledger %" PRIu64 " rounds, epsilon %.6f (accountant %.6f; central at the "
	              "same z %.6f); journal: %d committed, %d abandoned\n",
	              l.rounds, l.epsilon, want, dp_epsilon_for(0.8, 1.0, l.rounds, 1e-5),
	              jr.committed, jr.abandoned);
	assert_true(l.rounds >= 3);
	assert_true(fabs(l.epsilon - want) <= 1e-9 * want);
	assert_true(jr.committed >= 1);
	char sd[96];
	snprintf(sd, sizeof sd, "discrete Gaussian noise of sd %.4g grid steps",
	         ddg_local_sigma(&a));
	int noised = 0;
	for (int i = 0; i < N; i++) {
		char log[64];
		snprintf(log, sizeof log, "node-%02d.log", i + 1);
		noised += ft_count_in_log(&f, log, sd);
	}
	print_message("'%s': %d uploads\n", sd, noised);
	assert_true(noised >= 3 * jr.committed);

	/* phase 2: SIGKILL right after a charge */
	cx[10] = NULL;
	ft_start_coord(&f, cx);
	for (int i = 0; i < N; i++)
		ft_start_node(&f, i, NULL);
	char needle[64];
	snprintf(needle, sizeof needle, "privacy: round %" PRIu64 " charged", l.rounds + 1);
	assert_true(ft_wait_log(&f, "coordinator.log", needle, 1, 240000));
	ft_stop(&f.coord, SIGKILL, 5000);
	for (int i = 0; i < N; i++)
		ft_stop(&f.node[i], SIGTERM, 8000);
	dp_ledger l2;
	ledger(&f, &l2);
	int starts = ft_count_in_log(&f, "coord-state/journal.jsonl", "\"type\":\"round_start\"");
	print_message("after SIGKILL: ledger %" PRIu64 " rounds, journal %d round starts\n",
	              l2.rounds, starts);
	assert_int_equal(l2.rounds, l.rounds + 1);
	assert_true((int)l2.rounds >= starts);
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_dpdist, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
