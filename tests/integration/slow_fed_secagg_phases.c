/* Secure aggregation: real node processes vanish at every phase of the
 * protocol, at the threshold and one beyond it (slow label: nine secure
 * rounds of eight nodes over mutual TLS on 127.0.0.1).
 *
 * Eight participants a round (rounds.min_nodes = 8): the graph is complete
 * (degree 7) and the Shamir threshold t = 5, so a round survives 2
 * dropouts and not 3. Nodes kill themselves with SIGKILL on entering a
 * phase of a chosen round (FEDLORA_TEST_SECAGG_DIE, test-only, see
 * node/client.h):
 *   keys    before advertising (gone before sharing)
 *   shares  its shares sent, the routed ones just arrived (gone before the
 *           masked input)
 *   masked  its masked input acknowledged (gone after masking)
 *   unmask  the unmask request just arrived (gone during unmasking)
 * Rounds 1, 3, 5, 7: two nodes vanish at keys, shares, masked, unmask: the
 * round commits, and the unmasked sum equals bit for bit the plaintext
 * sum of the grid vectors whose masked input arrived (sacheck.h, with
 * the chi-square checks of what the coordinator saw). Rounds 2, 4, 6, 8:
 * three vanish at the same phase: the round is abandoned, the version
 * does not advance, and the next round commits. Round 9: nobody vanishes.
 * Killed nodes are restarted after their round, except in round 7: the
 * two nodes gone during unmasking are restarted at once and reconnect
 * while the coordinator's finish job (reconstruction and unmasking, on
 * the worker thread) is held for FEDLORA_TEST_SECAGG_FINISH_PAUSE_MS: the
 * coordinator answers their TLS handshakes and Joins meanwhile (the loop
 * is not blocked by the finish), they are not given round 7 back (a
 * secure round cannot resume a session) and take part in round 8. */
#include "fedtest.h"
#include "sacheck.h"

#define N        8
#define PAUSE_MS 6000

static const char *const phases[] = {"keys", "shares", "masked", "unmask"};

/* Byte offset of the first `needle` at or after `from` in the coordinator
 * log, or -1. */
static long log_pos(const ft *f, const char *needle, long from)
{
	char *t = ft_read(ft_path(f, "coordinator.log"));
	long r = -1;
	if (t && from >= 0 && (size_t)from <= strlen(t)) {
		const char *p = strstr(t + from, needle);
		r = p ? (long)(p - t) : -1;
	}
	free(t);
	return r;
}

static char die_both[256], die_third[256]; /* FEDLORA_TEST_SECAGG_DIE values */

/* Restarts every node whose process ended (with SIGKILL, as the hook
 * does) with its own FEDLORA_TEST_SECAGG_DIE; returns how many. */
static int restart_dead(ft *f)
{
	int n = 0;
	for (int i = 0; i < N; i++) {
		if (f->node[i] <= 0)
			continue;
		int st;
		if (waitpid(f->node[i], &st, WNOHANG) != f->node[i])
			continue;
		assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
		setenv("FEDLORA_TEST_SECAGG_DIE", i == 5 ? die_third : die_both, 1);
		ft_start_node(f, i, NULL);
		n++;
	}
	return n;
}

static void test_phases(void **state)
{
	(void)state;
	static ft f;
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, N, 0);
	char pause[32];
	snprintf(pause, sizeof pause, "%d", PAUSE_MS);
	setenv("FEDLORA_TEST_SECAGG_FINISH_PAUSE_MS", pause, 1);
	const char *cx[] = {"--aggregation.secure=true",
	                    "--rounds.min_nodes=8",
	                    "--rounds.min_updates=1",
	                    "--train.local_steps=2",
	                    "--state.keep_versions=100",
	                    "--aggregation.secure_phase_ms=8000",
	                    "--rounds.deadline_ms=300000", /* training under ASan, loaded */
	                    NULL};
	sat_start_coord(&f, cx);
	unsetenv("FEDLORA_TEST_SECAGG_FINISH_PAUSE_MS");
	/* who dies where: nodes 7 and 8 in every round but the last, node 6
	 * in the rounds beyond the threshold */
	char *both = die_both, *third = die_third;
	both[0] = third[0] = 0;
	for (int p = 0; p < 4; p++) {
		char e[64];
		snprintf(e, sizeof e, "%s%s:%d,%s:%d", p ? "," : "", phases[p], 2 * p + 1,
		         phases[p], 2 * p + 2);
		strcat(both, e);
		snprintf(e, sizeof e, "%s%s:%d", p ? "," : "", phases[p], 2 * p + 2);
		strcat(third, e);
	}
	print_message("nodes 7, 8 die at %s; node 6 at %s\n", both, third);
	for (int i = 0; i < N; i++) {
		if (i >= 5)
			setenv("FEDLORA_TEST_SECAGG_DIE", i == 5 ? third : both, 1);
		ft_start_node(&f, i, NULL);
	}
	int failed = 0;
	for (int r = 1; r <= 9 && !failed; r++) {
		ft_rounds before = ft_journal(&f);
		char needle[64];
		snprintf(needle, sizeof needle, "round %d: secure", r);
		failed = !ft_wait_log(&f, "coordinator.log", needle, 1, 120000);
		if (failed)
			break;
		long rpos = log_pos(&f, needle, 0);
		uint64_t t_die = 0, t_join = 0;
		if (r == 7) {
			/* restart the two gone during unmasking at once */
			uint64_t end = clk_mono_ms() + 120000;
			int back = 0;
			while (back < 2 && clk_mono_ms() < end) {
				int k = restart_dead(&f);
				if (k && !t_die)
					t_die = clk_mono_ms();
				back += k;
				clk_sleep_ms(10);
			}
			uint64_t jend = clk_mono_ms() + 60000;
			while (log_pos(&f, "node node-08 joined", rpos) < 0 && clk_mono_ms() < jend)
				clk_sleep_ms(10);
			t_join = clk_mono_ms();
			failed = back != 2 || log_pos(&f, "node node-08 joined", rpos) < 0;
		}
		uint64_t end = clk_mono_ms() + 360000;
		ft_rounds now;
		do {
			clk_sleep_ms(100);
			now = ft_journal(&f);
		} while (now.committed + now.abandoned == before.committed + before.abandoned &&
		         clk_mono_ms() < end);
		if (now.committed + now.abandoned == before.committed + before.abandoned) {
			failed = 1;
			break;
		}
		int beyond = r % 2 == 0 && r < 9;
		print_message("round %d (%s, %s): %s\n", r, r < 9 ? phases[(r - 1) / 2] : "none",
		              r == 9   ? "no dropout"
		              : beyond ? "3 dropouts"
		                       : "2 dropouts",
		              now.committed > before.committed ? "committed" : "abandoned");
		assert_int_equal(now.committed - before.committed, beyond ? 0 : 1);
		assert_int_equal(now.abandoned - before.abandoned, beyond ? 1 : 0);
		assert_int_equal(now.last_version, (uint64_t)(r + 1) / 2);
		if (r == 7) {
			long jpos = log_pos(&f, "node node-08 joined", rpos);
			long spos = log_pos(&f, "round 7: secure sum of", rpos);
			long upos = log_pos(&f, "commit stage unmask", rpos);
			print_message(
			    "round 7: restarted nodes joined %.0f ms after their restart "
			    "began, while the finish job was held for %d ms (log offsets: "
			    "finish %ld, join %ld, sum %ld)\n",
			    (double)(t_join - t_die), PAUSE_MS, upos, jpos, spos);
			assert_true(upos >= 0 && jpos > upos && spos > jpos);
		}
		if (r < 9 && restart_dead(&f) != (r == 7 ? 0 : beyond ? 3 : 2))
			failed = 1;
	}
	unsetenv("FEDLORA_TEST_SECAGG_DUMP");
	unsetenv("FEDLORA_TEST_SECAGG_DIE");
	sat_stop(&f, failed, "the secure federation did not get through its nine rounds");
	ft_rounds jr = ft_journal(&f);
	assert_int_equal(jr.committed, 5);
	assert_int_equal(jr.abandoned, 4);
	assert_int_equal(jr.last_version, 5);
	uint8_t sha[32];
	assert_int_not_equal(ft_coord_version_sha(&f, 6, sha, NULL), 0);
	/* the exact sums: survivors of the committed rounds (masked inputs in) */
	const int want[5] = {6, 6, 8, 8, 8};
	for (int k = 0; k < 5; k++)
		assert_int_equal(sat_check_round(&f, 2 * k + 1, N), want[k]);
	for (int k = 0; k < 5; k++)
		assert_int_equal(jr.participants[k], want[k]);
	/* the hook fired where it was asked to */
	for (int p = 0; p < 4; p++) {
		char d[64];
		snprintf(d, sizeof d, "dying in the %s phase", phases[p]);
		assert_int_equal(ft_count_in_log(&f, "node-08.log", d), 2);
		assert_int_equal(ft_count_in_log(&f, "node-06.log", d), 1);
	}
	/* round 7's returning nodes: not given round 7 again, given round 8 */
	assert_int_equal(ft_count_in_log(&f, "node-08.log", "round 7: secure, index"), 1);
	assert_int_equal(ft_count_in_log(&f, "node-08.log", "round 8: secure, index"), 1);
	/* every node verified version 4 (round 9's start delivered it) against
	 * the coordinator's file: nothing a dropout did corrupted it */
	assert_int_equal(ft_coord_version_sha(&f, 4, sha, NULL), 0);
	char hex[65];
	hex_encode(sha, 32, hex);
	for (int i = 0; i < N; i++) {
		ft_node_metrics m = ft_node(&f, i);
		int seen = 0;
		for (int k = 0; k < m.globals; k++)
			if (m.gver[k] == 4) {
				assert_string_equal(m.gsha[k], hex);
				seen++;
			}
		assert_true(seen >= 1);
	}
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_phases, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
