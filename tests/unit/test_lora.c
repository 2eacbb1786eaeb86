/* lora (common/lora): target lists (parse/format round trips, "all"), the
 * range table (each bound and one past it, with the configuration layer's
 * wording, and the configuration layer itself on the same rows), the scale
 * against a double / long double computation, tensor names, the spec's
 * wire form, explicit and GGUF shapes, v0 (determinism, PEFT's
 * Kaiming-uniform bound, zero B), the layout check, the llama q/k row
 * permutation against known vectors and the reshape/swapaxes definition,
 * and the PEFT writer without a base (common/peft). */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "config.h"
#include "lora.h"
#include "peft.h"
#include "safetensors.h"
#include "sha.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_targets(void **s)
{
	(void)s;
	uint32_t m;
	char why[200], out[128];
	assert_int_equal(lora_targets_parse("attn_q, attn_v,ffn_down", &m, why, sizeof why), 0);
	assert_int_equal(m, (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V) | (1u << LORA_FFN_DOWN));
	lora_targets_format(m, out, sizeof out);
	assert_string_equal(out, "attn_q,attn_v,ffn_down");
	assert_int_equal(lora_targets_parse("attn_q,q_proj", &m, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "q_proj"));
	assert_int_equal(lora_targets_parse(" , ", &m, why, sizeof why), FL_EINVAL);
	lora_targets_format(LORA_ALL_TARGETS, out, sizeof out);
	assert_string_equal(out, "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down");
	assert_string_equal(lora_target_hf(LORA_ATTN_OUTPUT), "self_attn.o_proj");
	assert_string_equal(lora_target_hf(LORA_FFN_GATE), "mlp.gate_proj");
	assert_string_equal(lora_target_hf_short(LORA_FFN_DOWN), "down_proj");
	assert_null(lora_target_name(LORA_NTARGETS));
	assert_null(lora_target_hf(-1));
	assert_null(lora_target_hf_short(LORA_NTARGETS));
}

/* Every mask formats to a list that parses back to it; "all" anywhere in a
 * list is the seven; separators; errors name the entry. */
static void test_targets_roundtrip(void **s)
{
	(void)s;
	char out[128], why[200];
	for (uint32_t m = 1; m <= LORA_ALL_TARGETS; m++) {
		uint32_t back = 0;
		lora_targets_format(m, out, sizeof out);
		assert_int_equal(lora_targets_parse(out, &back, why, sizeof why), 0);
		assert_int_equal(back, m);
	}
	for (int t = 0; t < LORA_NTARGETS; t++) {
		const char *n = lora_target_name(t);
		assert_int_equal(lora_target_find(n, strlen(n)), t);
		assert_int_equal(lora_target_find(n, strlen(n) - 1), -1); /* a prefix is not it */
	}
	uint32_t m = 0;
	assert_int_equal(lora_targets_parse("all", &m, why, sizeof why), 0);
	assert_int_equal(m, LORA_ALL_TARGETS);
	m = 0;
	assert_int_equal(lora_targets_parse("attn_q, all", &m, why, sizeof why), 0);
	assert_int_equal(m, LORA_ALL_TARGETS);
	assert_int_equal(lora_targets_parse(" attn_q ,,attn_v\tffn_up ", &m, why, sizeof why), 0);
	assert_int_equal(m, (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V) | (1u << LORA_FFN_UP));
	m = 99;
	assert_int_equal(lora_targets_parse("attn_q,alll", &m, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "'alll'"));
	assert_non_null(strstr(why, "or all"));
	assert_int_equal(m, 99); /* untouched on error */
	assert_int_equal(lora_targets_parse("", &m, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "no LoRA target"));
	assert_int_equal(lora_targets_parse(NULL, &m, why, sizeof why), FL_EINVAL);
	/* format truncates, unknown bits are ignored */
	lora_targets_format(LORA_ALL_TARGETS | (1u << 20), out, 12);
	assert_string_equal(out, "attn_q,attn");
	lora_targets_format(0, out, sizeof out);
	assert_string_equal(out, "");
}

static const cfg_key *row(const char *key)
{
	int n;
	const cfg_key *k = lora_cfg_keys(&n);
	for (int i = 0; i < n; i++)
		if (strcmp(k[i].key, key) == 0)
			return &k[i];
	fail_msg("no row lora.%s", key);
	return NULL;
}

static lora_spec good_spec(void)
{
	lora_spec sp = {.rank = 8, .alpha = 16, .targets = LORA_ALL_TARGETS, .init_seed = 1};
	return sp;
}

/* lora_spec_check refuses sp with exactly `want` as the sentence. */
static void refused(const lora_spec *sp, const char *want)
{
	char why[200] = "";
	assert_int_equal(lora_spec_check(sp, why, sizeof why), FL_EINVAL);
	if (strcmp(why, want) != 0)
		fail_msg("got '%s', want '%s'", why, want);
}

/* The configuration layer on the same rows: the same value is refused with
 * the same sentence (after the source label). */
static void cfg_refuses(const char *key, const char *value, const char *want)
{
	int n;
	const cfg_key *k = lora_cfg_keys(&n);
	cfg *c;
	assert_int_equal(cfg_new(k, n, &c), 0);
	assert_int_equal(cfg_set(c, key, value, "test"), FL_ECONFIG);
	const char *e = cfg_error(c);
	if (strcmp(e + strlen("test: "), want) != 0 || strncmp(e, "test: ", 6) != 0)
		fail_msg("config layer says '%s', lora_spec_check '%s'", e, want);
	cfg_free(c);
}

static void cfg_accepts(const char *key, const char *value)
{
	int n;
	const cfg_key *k = lora_cfg_keys(&n);
	cfg *c;
	assert_int_equal(cfg_new(k, n, &c), 0);
	if (cfg_set(c, key, value, "test") != 0)
		fail_msg("%s = %s refused: %s", key, value, cfg_error(c));
	cfg_free(c);
}

static void test_range_table(void **s)
{
	(void)s;
	char why[200];
	/* the table's rows */
	assert_true(row("rank")->min == 1 && row("rank")->max == LORA_MAX_RANK);
	assert_int_equal(LORA_MAX_RANK, 4096);
	assert_true(row("alpha")->min == 1e-6 && row("alpha")->max == 1e6);
	assert_true(row("init_seed")->min == 0 && row("init_seed")->max == 9.2e18);
	lora_spec sp = good_spec();
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), 0);
	/* rank: each bound and one past it */
	sp.rank = 1;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), 0);
	sp.rank = 4096;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), 0);
	sp.rank = 0;
	refused(&sp, "lora.rank = 0 is out of range [1, 4096]");
	sp.rank = 4097;
	refused(&sp, "lora.rank = 4097 is out of range [1, 4096]");
	cfg_refuses("lora.rank", "4097", "lora.rank = 4097 is out of range [1, 4096]");
	cfg_refuses("lora.rank", "0", "lora.rank = 0 is out of range [1, 4096]");
	cfg_accepts("lora.rank", "4096");
	cfg_accepts("lora.rank", "1");
	/* alpha: the bounds as the float the spec holds, and the next float out */
	sp = good_spec();
	sp.alpha = (float)1e-6;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), 0);
	sp.alpha = 1e6f;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), 0);
	sp.alpha = nextafterf((float)1e-6, 0.0f);
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "lora.alpha = "));
	assert_non_null(strstr(why, "is out of range [1e-06, 1e+06]"));
	sp.alpha = nextafterf(1e6f, INFINITY);
	refused(&sp, "lora.alpha = 1e+06 is out of range [1e-06, 1e+06]");
	sp.alpha = 0;
	refused(&sp, "lora.alpha = 0 is out of range [1e-06, 1e+06]");
	sp.alpha = NAN;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), FL_EINVAL);
	cfg_refuses("lora.alpha", "0", "lora.alpha = 0 is out of range [1e-06, 1e+06]");
	cfg_refuses("lora.alpha", "1000001", "lora.alpha = 1000001 is out of range [1e-06, 1e+06]");
	cfg_accepts("lora.alpha", "1e6");
	cfg_accepts("lora.alpha", "1e-6");
	/* init_seed: 0 and 9.2e18; past it, the next integer a double tells
	 * apart (the ulp there is 1024) */
	sp = good_spec();
	sp.init_seed = 0;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), 0);
	sp.init_seed = 9200000000000000000ull;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), 0);
	sp.init_seed = 9200000000000001024ull;
	refused(&sp, "lora.init_seed = 9200000000000001024 is out of range [0, 9.2e+18]");
	cfg_refuses("lora.init_seed", "9200000000000001024",
	            "lora.init_seed = 9200000000000001024 is out of range [0, 9.2e+18]");
	cfg_refuses("lora.init_seed", "-1", "lora.init_seed = -1 is out of range [0, 9.2e+18]");
	cfg_accepts("lora.init_seed", "9200000000000000000");
	/* targets */
	sp = good_spec();
	sp.targets = 0;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "lora.targets"));
	sp.targets = 1u << LORA_NTARGETS;
	assert_int_equal(lora_spec_check(&sp, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "lora.targets"));
}

/* lora_spec_from_cfg over a schema of the rows: defaults, "all", errors. */
static void test_spec_from_cfg(void **s)
{
	(void)s;
	int n;
	const cfg_key *k = lora_cfg_keys(&n);
	cfg *c;
	char why[300];
	lora_spec sp;
	assert_int_equal(cfg_new(k, n, &c), 0);
	assert_int_equal(lora_spec_from_cfg(c, &sp, why, sizeof why), 0);
	assert_int_equal(sp.rank, 8);
	assert_true(sp.alpha == 16.0f);
	assert_int_equal(sp.targets, LORA_ALL_TARGETS); /* default "all" */
	assert_int_equal(sp.rslora, 0);
	assert_int_equal(sp.ffa, 0);
	assert_int_equal(sp.init_seed, 1);
	assert_int_equal(cfg_set(c, "lora.targets", "attn_q,attn_v", "test"), 0);
	assert_int_equal(cfg_set(c, "lora.rslora", "true", "test"), 0);
	assert_int_equal(cfg_set(c, "lora.rank", "4096", "test"), 0);
	assert_int_equal(lora_spec_from_cfg(c, &sp, why, sizeof why), 0);
	assert_int_equal(sp.targets, (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V));
	assert_int_equal(sp.rslora, 1);
	assert_int_equal(sp.rank, 4096);
	assert_int_equal(cfg_set(c, "lora.targets", "attn_q,bogus", "test"), 0);
	assert_int_equal(lora_spec_from_cfg(c, &sp, why, sizeof why), FL_ECONFIG);
	assert_non_null(strstr(why, "lora.targets: unknown LoRA target 'bogus'"));
	cfg_free(c);
}

/* s = alpha / r (alpha / sqrt(r) with rsLoRA) against an independent
 * computation: the quotient of two doubles is correctly rounded, so the
 * plain scale must equal it exactly; the rsLoRA scale is compared with a
 * long double computation within 2 ulp (sqrt and the quotient each round
 * once). */
static void test_scale(void **s)
{
	(void)s;
	const uint32_t ranks[] = {1, 2, 3, 7, 8, 16, 64, 100, 1000, 4095, 4096};
	const float alphas[] = {(float)1e-6, 0.5f, 1.0f, 16.0f, 31.7f, 1e6f};
	for (size_t i = 0; i < sizeof ranks / sizeof ranks[0]; i++)
		for (size_t j = 0; j < sizeof alphas / sizeof alphas[0]; j++) {
			lora_spec sp = {.rank = ranks[i], .alpha = alphas[j]};
			double want = (double)alphas[j] / (double)ranks[i];
			assert_true(lora_scale(&sp) == want);
			sp.rslora = 1;
			long double ref = (long double)alphas[j] / sqrtl((long double)ranks[i]);
			double got = lora_scale(&sp);
			if (fabsl((long double)got - ref) > 2.0L * ldexpl(fabsl(ref), -52))
				fail_msg("rslora r %u alpha %g: %.17g vs %.20Lg", ranks[i],
				         (double)alphas[j], got, ref);
		}
	/* published values: PEFT's alpha/r and rsLoRA's alpha/sqrt(r) */
	lora_spec a = {.rank = 4, .alpha = 16};
	assert_true(lora_scale(&a) == 4.0);
	a.rslora = 1;
	assert_true(lora_scale(&a) == 8.0);
	a.alpha = 6;
	assert_true(lora_scale(&a) == 3.0);
	a.rank = 0;
	assert_true(lora_scale(&a) == 0.0);
	assert_true(lora_scale(NULL) == 0.0);
}

static void test_names(void **s)
{
	(void)s;
	char nm[64];
	assert_int_equal(lora_name(nm, sizeof nm, 0, LORA_ATTN_Q, 0), 0);
	assert_string_equal(nm, "blk.0.attn_q.lora_a");
	assert_int_equal(lora_name(nm, sizeof nm, 4095, LORA_FFN_DOWN, 1), 0);
	assert_string_equal(nm, "blk.4095.ffn_down.lora_b");
	assert_int_equal(lora_base_name(nm, sizeof nm, 12, LORA_ATTN_OUTPUT), 0);
	assert_string_equal(nm, "blk.12.attn_output.weight");
	assert_int_equal(lora_name(nm, 19, 0, LORA_ATTN_Q, 0), FL_EINVAL); /* needs 20 */
	assert_int_equal(lora_name(nm, 20, 0, LORA_ATTN_Q, 0), 0);
	assert_int_equal(lora_name(nm, sizeof nm, 0, LORA_NTARGETS, 0), FL_EINVAL);
	assert_int_equal(lora_name(nm, sizeof nm, 0, -1, 0), FL_EINVAL);
	/* every name parses back */
	const uint32_t layers[] = {0, 1, 9, 10, 99, 4095};
	for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++)
		for (int t = 0; t < LORA_NTARGETS; t++)
			for (int b = 0; b < 2; b++) {
				uint32_t l;
				int tg, ib;
				assert_int_equal(lora_name(nm, sizeof nm, layers[i], t, b), 0);
				assert_int_equal(lora_parse_name(nm, &l, &tg, &ib), 0);
				assert_int_equal(l, layers[i]);
				assert_int_equal(tg, t);
				assert_int_equal(ib, b);
				assert_int_equal(lora_is_b(nm), b);
			}
	const char *bad[] = {"blk.01.attn_q.lora_a",
	                     "blk.4096.attn_q.lora_a",
	                     "blk..attn_q.lora_a",
	                     "blk.0.attn_q.lora_c",
	                     "blk.0.attn_x.lora_a",
	                     "blk.0.attn_q.lora_a.x",
	                     "blk.0.attn_q",
	                     "blk.-1.attn_q.lora_a",
	                     "blk.0.attn_q.weight",
	                     "xblk.0.attn_q.lora_a",
	                     ""};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint32_t l;
		int tg, ib;
		if (lora_parse_name(bad[i], &l, &tg, &ib) != FL_EINVAL)
			fail_msg("'%s' parsed as a canonical name", bad[i]);
	}
	assert_int_equal(lora_is_b("blk.0.attn_q.lora_a"), 0);
	assert_int_equal(lora_is_b("lora_b"), 0);
}

/* LoraSpec round trip, refusals with the table's wording, comparison. */
static void test_spec_proto(void **s)
{
	(void)s;
	char why[200];
	lora_spec a = {.rank = 16,
	               .alpha = 32,
	               .targets = (1u << LORA_ATTN_Q) | (1u << LORA_FFN_DOWN),
	               .rslora = 1,
	               .ffa = 1,
	               .init_seed = 77};
	Fedlora__LoraSpec m;
	char *names[LORA_NTARGETS];
	lora_spec_to_proto(&a, &m, names);
	assert_int_equal(m.n_targets, 2);
	assert_string_equal(m.targets[1], "ffn_down");
	lora_spec b;
	assert_int_equal(lora_spec_from_proto(&m, &b, why, sizeof why), 0);
	assert_int_equal(b.rank, a.rank);
	assert_true(b.alpha == a.alpha);
	assert_int_equal(b.targets, a.targets);
	assert_int_equal(b.rslora, 1);
	assert_int_equal(b.ffa, 1);
	assert_int_equal(b.init_seed, 77);
	assert_int_equal(lora_spec_compare(&a, &b, why, sizeof why), 0);
	b.init_seed = 78; /* not compared */
	assert_int_equal(lora_spec_compare(&a, &b, why, sizeof why), 0);
	b.alpha = 16;
	assert_int_equal(lora_spec_compare(&a, &b, why, sizeof why), FL_EMISMATCH);
	assert_string_equal(why, "LoRA alpha 32 vs 16");
	b = a;
	b.targets = LORA_ALL_TARGETS;
	assert_int_equal(lora_spec_compare(&a, &b, why, sizeof why), FL_EMISMATCH);
	assert_non_null(strstr(why, "LoRA targets attn_q,ffn_down vs attn_q,attn_k"));
	/* a rank past the table, an unknown target, no target */
	m.rank = 4097;
	assert_int_equal(lora_spec_from_proto(&m, &b, why, sizeof why), FL_EPROTO);
	assert_string_equal(why, "lora.rank = 4097 is out of range [1, 4096]");
	m.rank = 4096;
	assert_int_equal(lora_spec_from_proto(&m, &b, why, sizeof why), 0);
	char *odd[1] = {"q_proj"};
	m.targets = odd;
	m.n_targets = 1;
	assert_int_equal(lora_spec_from_proto(&m, &b, why, sizeof why), FL_EPROTO);
	assert_non_null(strstr(why, "'q_proj'"));
	m.n_targets = 0;
	assert_int_equal(lora_spec_from_proto(&m, &b, why, sizeof why), FL_EPROTO);
	assert_int_equal(lora_spec_from_proto(NULL, &b, why, sizeof why), FL_EPROTO);
}

static void test_arch_parse(void **s)
{
	(void)s;
	lora_arch a;
	char why[200];
	uint32_t m = (1u << LORA_ATTN_Q) | (1u << LORA_FFN_DOWN);
	assert_int_equal(
	    lora_arch_parse(3, "attn_q=64x64, ffn_down=64x172", 8, 2, m, &a, why, sizeof why), 0);
	assert_int_equal(a.n_layers, 3);
	assert_int_equal(a.out[LORA_ATTN_Q], 64);
	assert_int_equal(a.in[LORA_FFN_DOWN], 172);
	assert_int_equal(a.n_head_kv, 2);
	assert_int_equal(lora_arch_parse(3, "attn_q=64x64", 8, 0, m, &a, why, sizeof why),
	                 FL_EINVAL);
	assert_non_null(strstr(why, "ffn_down"));
	assert_int_equal(
	    lora_arch_parse(3, "attn_q=64by64,ffn_down=1x1", 8, 0, m, &a, why, sizeof why),
	    FL_EINVAL);
	assert_non_null(strstr(why, "OUTxIN"));
	assert_int_equal(
	    lora_arch_parse(0, "attn_q=64x64,ffn_down=1x1", 8, 0, m, &a, why, sizeof why),
	    FL_EINVAL);
	assert_int_equal(lora_arch_parse(1, "bogus=1x1", 8, 0, m, &a, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "bogus"));
}

static void small(lora_spec *sp, lora_arch *ar)
{
	memset(sp, 0, sizeof *sp);
	memset(ar, 0, sizeof *ar);
	sp->rank = 4;
	sp->alpha = 8;
	sp->targets = (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_K) | (1u << LORA_ATTN_V);
	sp->init_seed = 7;
	ar->n_layers = 2;
	ar->n_head = 4;
	ar->n_head_kv = 2;
	ar->in[LORA_ATTN_Q] = 32;
	ar->out[LORA_ATTN_Q] = 32;
	ar->in[LORA_ATTN_K] = 32;
	ar->out[LORA_ATTN_K] = 16;
	ar->in[LORA_ATTN_V] = 32;
	ar->out[LORA_ATTN_V] = 16;
}

static void test_init(void **s)
{
	(void)s;
	lora_spec sp;
	lora_arch ar;
	small(&sp, &ar);
	tset *a, *b, *c, *lay;
	assert_int_equal(lora_init(&sp, &ar, &a), 0);
	assert_int_equal(lora_init(&sp, &ar, &b), 0);
	assert_int_equal(lora_layout(&sp, &ar, &lay), 0);
	assert_int_equal(tset_count(a), 12);
	assert_string_equal(tset_at(a, 0)->name, "blk.0.attn_q.lora_a");
	assert_string_equal(tset_at(a, 1)->name, "blk.0.attn_q.lora_b");
	assert_string_equal(tset_at(a, 11)->name, "blk.1.attn_v.lora_b");
	const tensor *ka = tset_find(a, "blk.1.attn_k.lora_a");
	const tensor *kb = tset_find(a, "blk.1.attn_k.lora_b");
	assert_int_equal(ka->shape[0], 4);
	assert_int_equal(ka->shape[1], 32);
	assert_int_equal(kb->shape[0], 16);
	assert_int_equal(kb->shape[1], 4);
	uint8_t fa[32], fb[32], fl[32], fs[32];
	assert_int_equal(tset_fingerprint(a, fa), 0);
	assert_int_equal(tset_fingerprint(b, fb), 0);
	assert_memory_equal(fa, fb, 32); /* same seed, same bytes */
	assert_int_equal(tset_shape_fingerprint(a, fs), 0);
	assert_int_equal(tset_shape_fingerprint(lay, fl), 0);
	assert_memory_equal(fs, fl, 32);
	/* U(-1/sqrt(in), 1/sqrt(in)): bound, mean ~0, variance bound^2/3 */
	double bound = 1.0 / sqrt(32.0), s1 = 0, s2 = 0, mx = 0;
	size_t n = 0;
	for (size_t i = 0; i < tset_count(a); i++) {
		const tensor *t = tset_at(a, i);
		for (size_t k = 0; k < t->n; k++) {
			if (strstr(t->name, "lora_b")) {
				assert_true(t->data[k] == 0.0f);
				continue;
			}
			s1 += t->data[k];
			s2 += (double)t->data[k] * t->data[k];
			mx = fmax(mx, fabs(t->data[k]));
			n++;
		}
	}
	assert_true(mx < bound && mx > 0.9 * bound);
	double mean = s1 / (double)n, var = s2 / (double)n - mean * mean;
	/* n = 768: the mean's sd is bound/sqrt(3n) ~ 0.0037 */
	if (fabs(mean) > 0.02 || fabs(var - bound * bound / 3) > 0.15 * bound * bound / 3)
		fail_msg("init mean %g var %g, expected 0 and %g", mean, var, bound * bound / 3);
	/* another seed, other values; tensors do not share a stream */
	sp.init_seed = 8;
	assert_int_equal(lora_init(&sp, &ar, &c), 0);
	uint8_t fc[32];
	assert_int_equal(tset_fingerprint(c, fc), 0);
	assert_memory_not_equal(fa, fc, 32);
	assert_memory_not_equal(tset_find(a, "blk.0.attn_q.lora_a")->data,
	                        tset_find(a, "blk.1.attn_q.lora_a")->data, 16);
	tset_free(a);
	tset_free(b);
	tset_free(c);
	tset_free(lay);
	/* bad specs */
	sp.rank = 0;
	assert_int_equal(lora_init(&sp, &ar, &a), FL_EINVAL);
}

static void test_layout_check(void **s)
{
	(void)s;
	lora_spec sp;
	lora_arch ar;
	small(&sp, &ar);
	char why[300];
	tset *a;
	assert_int_equal(lora_init(&sp, &ar, &a), 0);
	assert_int_equal(lora_layout_check(&sp, &ar, a, why, sizeof why), 0);
	/* the spec comes back from the tensors (alpha etc. kept) */
	lora_spec got = {.alpha = 3, .rslora = 1};
	assert_int_equal(lora_spec_from_tset(&ar, a, &got, why, sizeof why), 0);
	assert_int_equal(got.rank, 4);
	assert_int_equal(got.targets, sp.targets);
	assert_true(got.alpha == 3.0f && got.rslora == 1);
	/* another rank, a missing target, an extra tensor */
	lora_spec r8 = sp;
	r8.rank = 8;
	assert_int_equal(lora_layout_check(&r8, &ar, a, why, sizeof why), FL_EMISMATCH);
	assert_non_null(strstr(why, "blk.0.attn_q.lora_a has shape [4, 32]"));
	lora_spec more = sp;
	more.targets |= 1u << LORA_FFN_UP;
	ar.in[LORA_FFN_UP] = 32;
	ar.out[LORA_FFN_UP] = 64;
	assert_int_equal(lora_layout_check(&more, &ar, a, why, sizeof why), FL_EMISMATCH);
	assert_non_null(strstr(why, "lacks tensor blk.0.ffn_up.lora_a"));
	lora_spec fewer = sp;
	fewer.targets &= ~(1u << LORA_ATTN_K);
	assert_int_equal(lora_layout_check(&fewer, &ar, a, why, sizeof why), FL_EMISMATCH);
	assert_non_null(strstr(why, "attn_k"));
	assert_non_null(strstr(why, "not part of this adapter"));
	sp.rank = 0;
	assert_int_equal(lora_layout_check(&sp, &ar, a, why, sizeof why), FL_EINVAL);
	tset_free(a);
}

/* numpy: w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2).reshape(w.shape) is
 * the HF -> GGUF permutation of llama.cpp's converter. */
static void ref_permute(const float *hf, float *gg, uint64_t rows, uint64_t cols, uint32_t nh)
{
	uint64_t d = rows / nh, half = d / 2;
	/* source index [h][a][j][c], destination index [h][j][a][c] */
	for (uint64_t h = 0; h < nh; h++)
		for (uint64_t a = 0; a < 2; a++)
			for (uint64_t j = 0; j < half; j++)
				for (uint64_t c = 0; c < cols; c++)
					gg[((h * half + j) * 2 + a) * cols + c] =
					    hf[((h * 2 + a) * half + j) * cols + c];
}

static void test_permutation(void **s)
{
	(void)s;
	/* known vectors: one head of dim 4 and of dim 8, row i holds i */
	float hf4[4] = {0, 1, 2, 3}, gg4[4], back4[4];
	assert_int_equal(lora_rows_hf_to_gguf(hf4, gg4, 4, 1, 1), 0);
	float want4[4] = {0, 2, 1, 3};
	assert_memory_equal(gg4, want4, sizeof want4);
	assert_int_equal(lora_rows_gguf_to_hf(gg4, back4, 4, 1, 1), 0);
	assert_memory_equal(back4, hf4, sizeof hf4);
	float hf8[8] = {0, 1, 2, 3, 4, 5, 6, 7}, gg8[8];
	assert_int_equal(lora_rows_hf_to_gguf(hf8, gg8, 8, 1, 1), 0);
	float want8[8] = {0, 4, 1, 5, 2, 6, 3, 7};
	assert_memory_equal(gg8, want8, sizeof want8);
	/* several heads and columns against the reshape/swapaxes definition */
	uint64_t rows = 48, cols = 5;
	uint32_t nh = 3;
	float *hf = malloc(rows * cols * 4), *gg = malloc(rows * cols * 4),
	      *ref = malloc(rows * cols * 4), *back = malloc(rows * cols * 4);
	uint64_t seed = 1;
	for (uint64_t i = 0; i < rows * cols; i++)
		hf[i] = (float)tu_randu(&seed);
	ref_permute(hf, ref, rows, cols, nh);
	assert_int_equal(lora_rows_hf_to_gguf(hf, gg, rows, cols, nh), 0);
	assert_memory_equal(gg, ref, rows * cols * 4);
	assert_int_equal(lora_rows_gguf_to_hf(gg, back, rows, cols, nh), 0);
	assert_memory_equal(back, hf, rows * cols * 4);
	/* rows not a multiple of 2 x heads */
	assert_int_equal(lora_rows_gguf_to_hf(hf, gg, 47, cols, nh), FL_EINVAL);
	assert_int_equal(lora_rows_gguf_to_hf(hf, gg, 48, cols, 0), FL_EINVAL);
	free(hf);
	free(gg);
	free(ref);
	free(back);
}

static void write_gguf(const char *path, int drop_k1)
{
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	assert_int_equal(gguf_set_str(w, "general.architecture", "llama"), 0);
	assert_int_equal(gguf_set_u32(w, "llama.block_count", 2), 0);
	assert_int_equal(gguf_set_u32(w, "llama.attention.head_count", 4), 0);
	assert_int_equal(gguf_set_u32(w, "llama.attention.head_count_kv", 2), 0);
	const char *tg[3] = {"attn_q", "attn_k", "attn_v"};
	uint64_t outs[3] = {32, 16, 16};
	for (int l = 0; l < 2; l++)
		for (int t = 0; t < 3; t++) {
			if (drop_k1 && l == 1 && t == 1)
				continue;
			char nm[64];
			snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, tg[t]);
			uint64_t ne[2] = {32, outs[t]};
			size_t sz = 32 * outs[t] * 4;
			float *d = calloc(1, sz);
			assert_int_equal(gguf_add_tensor_own(w, nm, GTYPE_F32, 2, ne, d, sz), 0);
		}
	assert_int_equal(gguf_writer_write(w, path), 0);
	gguf_writer_free(w);
}

static void test_arch_gguf(void **s)
{
	(void)s;
	char *dir = tu_mkdtemp();
	char p[512], why[300];
	snprintf(p, sizeof p, "%s/base.gguf", dir);
	write_gguf(p, 0);
	lora_spec sp;
	lora_arch want, got;
	small(&sp, &want);
	assert_int_equal(lora_arch_from_gguf(p, sp.targets, &got, why, sizeof why), 0);
	assert_int_equal(got.n_layers, 2);
	assert_int_equal(got.n_head, 4);
	assert_int_equal(got.n_head_kv, 2);
	for (int t = 0; t < LORA_NTARGETS; t++) {
		if (!(sp.targets & (1u << t)))
			continue;
		assert_int_equal(got.in[t], want.in[t]);
		assert_int_equal(got.out[t], want.out[t]);
	}
	/* a target the base lacks, named in the error */
	assert_int_equal(lora_arch_from_gguf(p, 1u << LORA_FFN_UP, &got, why, sizeof why),
	                 FL_EFORMAT);
	assert_non_null(strstr(why, "blk.0.ffn_up.weight"));
	write_gguf(p, 1);
	assert_int_equal(lora_arch_from_gguf(p, sp.targets, &got, why, sizeof why), FL_EFORMAT);
	assert_non_null(strstr(why, "blk.1.attn_k.weight"));
	/* not a GGUF */
	snprintf(p, sizeof p, "%s/junk.gguf", dir);
	FILE *f = fopen(p, "wb");
	fputs("not a gguf file at all", f);
	fclose(f);
	assert_true(lora_arch_from_gguf(p, sp.targets, &got, why, sizeof why) < 0);
	tu_rmtree(dir);
	free(dir);
}

static void test_export_peft(void **s)
{
	(void)s;
	char *dir = tu_mkdtemp();
	lora_spec sp;
	lora_arch ar;
	small(&sp, &ar);
	tset *ad;
	assert_int_equal(lora_init(&sp, &ar, &ad), 0);
	uint64_t seed = 3;
	for (size_t i = 0; i < tset_count(ad); i++) {
		tensor *t = tset_at(ad, i);
		for (size_t k = 0; k < t->n; k++)
			t->data[k] = (float)tu_randu(&seed);
	}
	char out[512], p[600];
	snprintf(out, sizeof out, "%s/peft", dir);
	peft_base pb = {.n_head = 4, .n_head_kv = 2, .unpermute = 1, .name = "tiny-llama"};
	char why[300];
	assert_int_equal(peft_write(ad, &sp, &pb, out, why, sizeof why), 0);
	snprintf(p, sizeof p, "%s/adapter_model.safetensors", out);
	tset *r;
	assert_int_equal(st_read_tset(p, NULL, &r), 0);
	assert_int_equal(tset_count(r), tset_count(ad));
	const tensor *qa =
	    tset_find(r, "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight");
	const tensor *qb =
	    tset_find(r, "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight");
	const tensor *kb =
	    tset_find(r, "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight");
	const tensor *vb =
	    tset_find(r, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight");
	assert_non_null(qa);
	assert_non_null(qb);
	assert_non_null(kb);
	assert_non_null(vb);
	/* A unchanged, v's B unchanged, q/k B in HF row order */
	assert_memory_equal(qa->data, tset_find(ad, "blk.1.attn_q.lora_a")->data, qa->n * 4);
	assert_memory_equal(vb->data, tset_find(ad, "blk.0.attn_v.lora_b")->data, vb->n * 4);
	float *perm = malloc(qb->n * 4);
	ref_permute(qb->data, perm, 32, 4, 4); /* HF -> GGUF must give back ours */
	assert_memory_equal(perm, tset_find(ad, "blk.1.attn_q.lora_b")->data, qb->n * 4);
	ref_permute(kb->data, perm, 16, 4, 2); /* k uses n_head_kv */
	assert_memory_equal(perm, tset_find(ad, "blk.0.attn_k.lora_b")->data, kb->n * 4);
	free(perm);
	tset_free(r);
	snprintf(p, sizeof p, "%s/adapter_config.json", out);
	uint8_t *txt;
	size_t n;
	assert_int_equal(file_read_all(p, 1 << 20, &txt, &n), 0);
	cJSON *j = cJSON_Parse((const char *)txt);
	assert_non_null(j);
	assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA");
	assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, 4);
	assert_true(cJSON_GetObjectItem(j, "lora_alpha")->valuedouble == 8.0);
	/* alpha is written as the shortest decimal that reads back as the float */
	assert_true(peft_short_decimal(0.3f) == 0.3);
	assert_true((float)peft_short_decimal(0.3f) == 0.3f);
	assert_true(peft_short_decimal(8.0f) == 8.0);
	assert_true(peft_short_decimal(1.0f / 3.0f) == 0.33333334);
	for (int k = 1; k < 2000; k++) { /* round trip for many values */
		float x = (float)k * 0.0137f;
		assert_true((float)peft_short_decimal(x) == x);
	}
	assert_string_equal(cJSON_GetObjectItem(j, "base_model_name_or_path")->valuestring,
	                    "tiny-llama");
	cJSON *tm = cJSON_GetObjectItem(j, "target_modules");
	assert_int_equal(cJSON_GetArraySize(tm), 3);
	assert_string_equal(cJSON_GetArrayItem(tm, 0)->valuestring, "q_proj");
	cJSON_Delete(j);
	free(txt);
	/* without head counts, q/k cannot be un-permuted: a clear error */
	peft_base none = {.unpermute = 1};
	assert_int_equal(peft_write(ad, &sp, &none, out, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "head count"));
	/* unless asked not to */
	none.unpermute = 0;
	assert_int_equal(peft_write(ad, &sp, &none, out, why, sizeof why), 0);
	/* head counts that do not divide the rows */
	peft_base odd = {.n_head = 3, .unpermute = 1};
	assert_int_equal(peft_write(ad, &sp, &odd, out, why, sizeof why), FL_EMISMATCH);
	assert_non_null(strstr(why, "not a multiple of 2 x 3 heads"));
	tset_free(ad);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_targets),     cmocka_unit_test(test_targets_roundtrip),
	    cmocka_unit_test(test_range_table), cmocka_unit_test(test_spec_from_cfg),
	    cmocka_unit_test(test_scale),       cmocka_unit_test(test_names),
	    cmocka_unit_test(test_spec_proto),  cmocka_unit_test(test_arch_parse),
	    cmocka_unit_test(test_init),        cmocka_unit_test(test_layout_check),
	    cmocka_unit_test(test_permutation), cmocka_unit_test(test_arch_gguf),
	    cmocka_unit_test(test_export_peft),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
