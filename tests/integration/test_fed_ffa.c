/* End to end FFA-LoRA: four nodes and a coordinator as real processes over
 * mutual TLS, three rounds with lora.ffa on both sides. lora_a never
 * changes — not in any committed version, not in any node's global — and
 * each upload carries only the lora_b tensors: half the q4 bytes of a full
 * update. */
#include "fedtest.h"

#include "qtensor.h"

#define ROUNDS 3

/* 1 when every lora_a tensor of t equals v0's bit for bit. */
static int a_unchanged(const tset *v0, const tset *t)
{
	for (size_t i = 0; i < tset_count(v0); i++) {
		const tensor *a = tset_at(v0, i);
		if (lora_is_b(a->name))
			continue;
		const tensor *b = tset_find(t, a->name);
		if (!b || b->n != a->n || memcmp(a->data, b->data, a->n * sizeof(float)) != 0)
			return 0;
	}
	return 1;
}

static void test_ffa(void **state)
{
	(void)state;
	static ft f; /* static: ft_teardown reaches it after a failed assertion */
	memset(&f, 0, sizeof f);
	if (ft_bins(&f) != 0)
		skip();
	ft_setup(&f, 4, 1);
	const char *cx[] = {"--rounds.max_rounds=3", "--state.keep_versions=100", NULL};
	ft_start_coord(&f, cx);
	for (int i = 0; i < 4; i++)
		ft_start_node(&f, i, NULL);
	if (ft_wait_committed(&f, ROUNDS, 180000) < ROUNDS) {
		ft_cleanup(&f, 1);
		fail_msg("rounds did not complete");
	}
	/* the last round's line reaches each node's metrics with RoundEnd */
	if (!ft_wait_node_rounds(&f, ROUNDS, 30000)) {
		ft_cleanup(&f, 1);
		fail_msg("not every node recorded %d rounds", ROUNDS);
	}
	ft_stop_all(&f);

	uint8_t sha[32];
	tset *v0 = NULL;
	assert_int_equal(ft_coord_version_sha(&f, 0, sha, &v0), 0);
	size_t full = 0, bonly = 0;
	for (size_t i = 0; i < tset_count(v0); i++) {
		size_t sl, dl;
		const tensor *t = tset_at(v0, i);
		assert_int_equal(qt_layout(QT_Q4, 32, t->n, &sl, &dl), 0);
		full += sl + dl;
		if (lora_is_b(t->name))
			bonly += sl + dl;
	}
	/* every committed version: A as in v0, B trained */
	for (uint64_t v = 1; v <= ROUNDS; v++) {
		tset *t = NULL;
		assert_int_equal(ft_coord_version_sha(&f, v, sha, &t), 0);
		assert_true(a_unchanged(v0, t));
		int b_moved = 0;
		for (size_t i = 0; i < tset_count(t); i++)
			if (lora_is_b(tset_at(t, i)->name))
				for (size_t k = 0; k < tset_at(t, i)->n; k++)
					b_moved |= tset_at(t, i)->data[k] != 0.0f;
		assert_true(b_moved);
		tset_free(t);
	}
	for (int i = 0; i < 4; i++) {
		tset *g = NULL;
		assert_int_equal(
		    st_read_tset(ft_path(&f, "node-%02d/global.safetensors", i + 1), NULL, &g), 0);
		assert_true(a_unchanged(v0, g));
		tset_free(g);
		ft_node_metrics m = ft_node(&f, i);
		assert_true(m.uploaded >= ROUNDS);
		for (int k = 0; k < m.uploaded; k++) {
			assert_true(m.bytes_up[k] >= (double)bonly);
			assert_true(m.bytes_up[k] <= 0.55 * (double)full);
		}
		print_message("node %d: %.0f bytes per upload; a full q4 update would carry %zu "
		              "payload bytes, lora_b alone %zu\n",
		              i + 1, m.bytes_up[0], full, bonly);
	}
	tset_free(v0);
	ft_cleanup(&f, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_ffa, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
