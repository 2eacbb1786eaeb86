/* test_coord_export — `fedlora-coordinator export` through the real
 * binaries, on versions committed with store_commit as `serve` writes them:
 *  - gguf-lora with --base read back by gguf_lora_read: tensors equal
 *    the version's (F32 exact, F16 within half-precision rounding),
 *    adapter.lora.alpha = s * r (also for rsLoRA);
 *  - PEFT with --base byte-identical to `fedlora-node export --format peft`
 *    of the coordinator's gguf-lora file (one writer for both binaries), and
 *    to the coordinator's own PEFT path without --base;
 *  - the documented two-step merged route runs;
 *  - refusals: a base with another fingerprint (both fingerprints and the
 *    file named), an adapter that does not fit the base, gguf-lora without
 *    --base, --format merged (two-step hint), bad --type, contradicting
 *    options; nothing is written on a refusal. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "lora.h"
#include "gguf_lora.h"
#include "lora_fmt.h"
#include "peft.h"
#include "modelfp.h"
#include "sha.h"
#include "store.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *g_dir;
static char g_base[600], g_reseed[600], g_wide[600], g_fed[600], g_rs[600];

static const char *bin(const char *env, const char *dflt)
{
	const char *b = getenv(env);
	return b ? b : dflt;
}

static const char *p(const char *rel)
{
	static char buf[4][700];
	static int k;
	k = (k + 1) % 4;
	snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, rel);
	return buf[k];
}

/* Runs `fedlora-coordinator export ARGS` (coord = 1) or `fedlora-node ARGS`
 * (args from fmt), stdout+stderr into dir/log; checks the exit code and that
 * the output holds every needle (NULL-terminated list, may be NULL). */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void
expect(int coord, int want, const char *const *needles, const char *fmt, ...)
{
	char args[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof args, fmt, ap);
	va_end(ap);
	int rc = coord
	             ? tu_system("'%s' export %s > '%s' 2>&1",
	                         bin("FEDLORA_COORD_BIN", "./fedlora-coordinator"), args, p("log"))
	             : tu_system("'%s' %s > '%s' 2>&1", bin("FEDLORA_NODE_BIN", "./fedlora-node"),
	                         args, p("log"));
	char *log = tu_read_text(p("log"));
	int ok = rc == want;
	for (int i = 0; needles && needles[i]; i++)
		if (!strstr(log, needles[i])) {
			print_error("missing '%s'\n", needles[i]);
			ok = 0;
		}
	if (!ok) {
		print_error("%s %s\nexit %d (want %d), output:\n%s\n",
		            coord ? "fedlora-coordinator export" : "fedlora-node", args, rc, want,
		            log);
		free(log);
		fail();
	}
	free(log);
}

static int same_file(const char *a, const char *b)
{
	uint8_t *x = NULL, *y = NULL;
	size_t nx = 0, ny = 0;
	int same = file_read_all(a, 1 << 26, &x, &nx) == 0 &&
	           file_read_all(b, 1 << 26, &y, &ny) == 0 && nx == ny && memcmp(x, y, nx) == 0;
	if (!same)
		print_error("%s and %s differ\n", a, b);
	free(x);
	free(y);
	return same;
}

/* A committed version: every tensor of spec on base's shapes, random values
 * (lora_b too, so the q/k row order matters). */
static void commit(const char *state, uint64_t v, const lora_spec *spec, int record_base,
                   uint64_t seed)
{
	lora_arch arch;
	char why[300];
	assert_int_equal(lora_arch_from_gguf(g_base, spec->targets, &arch, why, sizeof why), 0);
	tset *t;
	assert_int_equal(lora_init(spec, &arch, &t), 0);
	for (size_t i = 0; i < tset_count(t); i++) {
		tensor *x = tset_at(t, i);
		for (size_t k = 0; k < x->n; k++)
			x->data[k] = (float)(tu_randu(&seed) - 0.5) * 0.3f;
	}
	store_info in;
	memset(&in, 0, sizeof in);
	in.version = v;
	in.round = v;
	in.parent = v ? v - 1 : 0;
	in.rank = spec->rank;
	in.alpha = spec->alpha;
	in.rslora = spec->rslora;
	lora_targets_format(spec->targets, in.targets, sizeof in.targets);
	in.n_head = arch.n_head;
	in.n_head_kv = arch.n_head_kv;
	if (record_base) {
		assert_int_equal(mfp_compute(g_base, in.base_sha), 0);
		in.has_base = 1;
	}
	assert_int_equal(tset_fingerprint(t, in.sha), 0);
	store *s;
	assert_int_equal(store_open(state, &s), 0);
	assert_int_equal(store_commit(s, t, &in, NULL, 10), 0);
	store_free(s);
	tset_free(t);
}

static int setup(void **st)
{
	(void)st;
	g_dir = tu_mkdtemp();
	if (!g_dir)
		return -1;
	snprintf(g_base, sizeof g_base, "%s/base.gguf", g_dir);
	snprintf(g_reseed, sizeof g_reseed, "%s/reseed.gguf", g_dir);
	snprintf(g_wide, sizeof g_wide, "%s/wide.gguf", g_dir);
	snprintf(g_fed, sizeof g_fed, "%s/fed", g_dir);
	snprintf(g_rs, sizeof g_rs, "%s/rs", g_dir);
	const char *shape = "--layers 2 --heads 4 --kv-heads 2 --ffn 128 --ctx 128";
	if (tu_system("'%s' init-model --out '%s' --dim 64 %s --seed 3 >/dev/null",
	              bin("FEDLORA_NODE_BIN", "./fedlora-node"), g_base, shape) != 0 ||
	    tu_system("'%s' init-model --out '%s' --dim 64 %s --seed 4 >/dev/null",
	              bin("FEDLORA_NODE_BIN", "./fedlora-node"), g_reseed, shape) != 0 ||
	    tu_system("'%s' init-model --out '%s' --dim 96 %s --seed 3 >/dev/null",
	              bin("FEDLORA_NODE_BIN", "./fedlora-node"), g_wide, shape) != 0)
		return -1;
	/* "fed": every target, r = 4, alpha = 16 (s = 4), base fingerprint
	 * recorded, versions 0 and 1 */
	lora_spec sp = {.rank = 4, .alpha = 16, .targets = LORA_ALL_TARGETS, .init_seed = 7};
	commit(g_fed, 0, &sp, 1, 11);
	commit(g_fed, 1, &sp, 1, 12);
	/* "rs": rsLoRA, alpha 6 (s = 6 / sqrt 4 = 3), q and v only, no
	 * fingerprint recorded */
	lora_spec rs = {.rank = 4,
	                .alpha = 6,
	                .targets = (1u << LORA_ATTN_Q) | (1u << LORA_ATTN_V),
	                .rslora = 1,
	                .init_seed = 8};
	commit(g_rs, 0, &rs, 0, 13);
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	tu_rmtree(g_dir);
	free(g_dir);
	return 0;
}

static tset *version(const char *state, uint64_t v, store_info *in)
{
	tset *t;
	char why[400];
	assert_int_equal(store_read_version(state, v, &t, in, why, sizeof why), 0);
	return t;
}

/* Reads a gguf-lora file back (checked against the base) and compares with
 * the version: exact, or within F16 rounding. */
static void check_gguf_lora(const char *path, const tset *want, int f16, float alpha)
{
	gguf *base, *g;
	char why[1024];
	assert_int_equal(gguf_open(g_base, &base, why, sizeof why), 0);
	tset *got;
	lora_spec lp;
	if (gguf_lora_read(path, base, &got, &lp, why, sizeof why) != 0)
		fail_msg("%s: %s", path, why);
	assert_float_equal(lp.alpha, alpha, 1e-5);
	assert_int_equal(lp.rank, 4);
	assert_int_equal(tset_count(got), tset_count(want));
	for (size_t i = 0; i < tset_count(want); i++) {
		const tensor *w = tset_at(want, i);
		const tensor *t = tset_find(got, w->name);
		assert_non_null(t);
		assert_int_equal(t->n, w->n);
		assert_memory_equal(t->shape, w->shape, sizeof w->shape[0] * 2);
		for (size_t k = 0; k < w->n; k++) {
			/* |values| < 0.15 here: half rounding is <= 2^-11 relative,
			 * 2^-25 absolute near zero */
			double tol = f16 ? fabs((double)w->data[k]) / 2048.0 + 0x1p-24 : 0.0;
			if (fabs((double)t->data[k] - (double)w->data[k]) > tol)
				fail_msg("%s[%zu]: %.9g read back, version has %.9g", w->name, k,
				         (double)t->data[k], (double)w->data[k]);
		}
	}
	/* llama.cpp's keys and names, the type asked for */
	assert_int_equal(gguf_open(path, &g, why, sizeof why), 0);
	gguf_str s;
	assert_int_equal(gguf_get_str(g, "general.type", &s), 0);
	assert_true(s.n == 7 && memcmp(s.p, "adapter", 7) == 0);
	assert_int_equal(gguf_get_str(g, "adapter.type", &s), 0);
	assert_true(s.n == 4 && memcmp(s.p, "lora", 4) == 0);
	gguf_tensor gt;
	assert_int_equal(gguf_tensor_find(g, "blk.1.attn_q.weight.lora_b", &gt), 0);
	assert_int_equal(gt.type, f16 ? GTYPE_F16 : GTYPE_F32);
	gguf_free(g);
	tset_free(got);
	gguf_free(base);
}

static void test_gguf_lora(void **st)
{
	(void)st;
	store_info in;
	tset *v1 = version(g_fed, 1, &in);
	const char *ok[] = {"matches the version", "as gguf-lora (f32)", NULL};
	expect(1, 0, ok, "--state-dir '%s' --version 1 --format gguf-lora --base '%s' --out '%s'",
	       g_fed, g_base, p("a.gguf"));
	check_gguf_lora(p("a.gguf"), v1, 0, 16.0f);
	/* latest is version 1; --type f32 is the default */
	expect(1, 0, NULL,
	       "--state-dir '%s' --version latest --format=gguf-lora --base='%s' --type f32 "
	       "--out '%s'",
	       g_fed, g_base, p("latest.gguf"));
	assert_true(same_file(p("a.gguf"), p("latest.gguf")));
	/* F16 */
	const char *ok16[] = {"as gguf-lora (f16)", NULL};
	expect(1, 0, ok16,
	       "--state-dir '%s' --version 1 --format gguf-lora --type f16 --base '%s' --out "
	       "'%s'",
	       g_fed, g_base, p("a16.gguf"));
	check_gguf_lora(p("a16.gguf"), v1, 1, 16.0f);
	/* version 0 is another adapter */
	tset *v0 = version(g_fed, 0, &in);
	expect(1, 0, NULL, "--state-dir '%s' --version 0 --format gguf-lora --base '%s' --out '%s'",
	       g_fed, g_base, p("v0.gguf"));
	check_gguf_lora(p("v0.gguf"), v0, 0, 16.0f);
	tset_free(v0);
	tset_free(v1);
}

static void test_peft_same_as_node(void **st)
{
	(void)st;
	expect(1, 0, NULL, "--state-dir '%s' --version 1 --format gguf-lora --base '%s' --out '%s'",
	       g_fed, g_base, p("n.gguf"));
	expect(1, 0, NULL, "--state-dir '%s' --version 1 --base '%s' --out '%s'", g_fed, g_base,
	       p("peft_c"));
	expect(0, 0, NULL, "export --model '%s' --adapter '%s' --format peft --out '%s'", g_base,
	       p("n.gguf"), p("peft_n"));
	assert_true(same_file(p("peft_c/adapter_model.safetensors"),
	                      p("peft_n/adapter_model.safetensors")));
	assert_true(same_file(p("peft_c/adapter_config.json"), p("peft_n/adapter_config.json")));

	/* read back: the version's tensors (q/k rows back in GGUF order) */
	gguf *base;
	char why[1024];
	assert_int_equal(gguf_open(g_base, &base, why, sizeof why), 0);
	tset *got;
	lora_spec lp;
	if (peft_read(p("peft_c"), base, &got, &lp, why, sizeof why) != 0)
		fail_msg("%s", why);
	assert_float_equal(lp.alpha, 16.0, 0);
	assert_int_equal(lp.rank, 4);
	assert_int_equal(lp.rslora, 0);
	store_info in;
	tset *v1 = version(g_fed, 1, &in);
	assert_int_equal(tset_count(got), tset_count(v1));
	for (size_t i = 0; i < tset_count(v1); i++) {
		const tensor *w = tset_at(v1, i), *t = tset_find(got, w->name);
		assert_non_null(t);
		assert_int_equal(t->n, w->n);
		assert_memory_equal(t->data, w->data, w->n * sizeof(float));
	}
	tset_free(v1);
	tset_free(got);

	/* the PEFT path without --base (head counts from the version) writes
	 * the same files when given the base's general.name */
	gguf_str nm;
	assert_int_equal(gguf_get_str(base, "general.name", &nm), 0);
	expect(1, 0, NULL, "--state-dir '%s' --version 1 --base-name '%.*s' --out '%s'", g_fed,
	       (int)nm.n, nm.p, p("peft_old"));
	gguf_free(base);
	assert_true(same_file(p("peft_c/adapter_model.safetensors"),
	                      p("peft_old/adapter_model.safetensors")));
	assert_true(same_file(p("peft_c/adapter_config.json"), p("peft_old/adapter_config.json")));
	/* --base-name with --base: the Hugging Face id in the config */
	expect(1, 0, NULL,
	       "--state-dir '%s' --version 1 --base '%s' --base-name Org/Base-1B --out '%s'", g_fed,
	       g_base, p("peft_id"));
	uint8_t *cfg_txt = NULL;
	size_t cfg_n = 0;
	assert_int_equal(file_read_all(p("peft_id/adapter_config.json"), 1 << 20, &cfg_txt, &cfg_n),
	                 0);
	const char *key = strstr((char *)cfg_txt, "\"base_model_name_or_path\":");
	assert_non_null(key);
	key += strlen("\"base_model_name_or_path\":");
	key += strspn(key, " \t");
	assert_int_equal(strncmp(key, "\"Org/Base-1B\"", 13), 0);
	free(cfg_txt);

	/* the documented route to a merged model */
	expect(0, 0, NULL,
	       "export --model '%s' --adapter '%s' --format merged --out '%s' --type f16", g_base,
	       p("n.gguf"), p("merged.gguf"));
	assert_int_equal(tu_system("test -s '%s'", p("merged.gguf")), 0);
}

static void test_rslora(void **st)
{
	(void)st;
	store_info in;
	tset *v = version(g_rs, 0, &in);
	const char *warn[] = {"records no base fingerprint", NULL};
	expect(1, 0, warn, "--state-dir '%s' --version 0 --format gguf-lora --base '%s' --out '%s'",
	       g_rs, g_base, p("rs.gguf"));
	/* llama.cpp's scale alpha / r must be the federation's 6 / sqrt(4) = 3 */
	check_gguf_lora(p("rs.gguf"), v, 0, 12.0f);
	tset_free(v);
	/* PEFT keeps alpha and use_rslora */
	expect(1, 0, NULL, "--state-dir '%s' --version 0 --format peft --base '%s' --out '%s'",
	       g_rs, g_base, p("rs_peft"));
	char *cfg = tu_read_text(p("rs_peft/adapter_config.json"));
	lora_spec lp;
	char why[300];
	assert_int_equal(peft_parse_config(cfg, strlen(cfg), &lp, why, sizeof why), 0);
	free(cfg);
	assert_float_equal(lp.alpha, 6.0, 0);
	assert_int_equal(lp.rank, 4);
	assert_int_equal(lp.rslora, 1);
	assert_float_equal(lora_scale(&lp), 3.0, 1e-12);
}

/* A version file is itself a canonical adapter with the standard alpha /
 * rank / rsLoRA keys: lfmt_load (fedlora-node eval/export --adapter) takes
 * the federation's scale from it, no --alpha needed. */
static void test_version_file_is_adapter(void **st)
{
	(void)st;
	const char *dirs[2] = {g_fed, g_rs};
	const double alpha[2] = {16.0, 6.0}, scale[2] = {4.0, 3.0};
	for (int k = 0; k < 2; k++) {
		char path[1024], why[300];
		assert_int_equal(store_version_path(dirs[k], 0, path, sizeof path), 0);
		gguf *b;
		assert_int_equal(gguf_open(g_base, &b, why, sizeof why), 0);
		tset *got = NULL;
		lora_spec lp;
		int rc = lfmt_load(path, b, NULL, &got, &lp, why, sizeof why);
		if (rc)
			fail_msg("lfmt_load %s: %s", path, why);
		assert_float_equal(lp.alpha, alpha[k], 0);
		assert_int_equal(lp.rank, 4);
		assert_int_equal(lp.rslora, k);
		assert_float_equal(lora_scale(&lp), scale[k], 1e-12);
		store_info in;
		tset *want = version(dirs[k], 0, &in);
		assert_true(tset_count(got) == tset_count(want));
		for (size_t i = 0; i < tset_count(want); i++) {
			const tensor *w = tset_at(want, i), *g = tset_find(got, w->name);
			assert_non_null(g);
			assert_memory_equal(g->data, w->data, w->n * sizeof(float));
		}
		tset_free(want);
		tset_free(got);
		gguf_free(b);
	}
}

static void test_refusals(void **st)
{
	(void)st;
	char hb[65], hr[65];
	uint8_t fb[MFP_LEN], fr[MFP_LEN];
	assert_int_equal(mfp_compute(g_base, fb), 0);
	assert_int_equal(mfp_compute(g_reseed, fr), 0);
	hex_encode(fb, MFP_LEN, hb);
	hex_encode(fr, MFP_LEN, hr);
	hb[16] = hr[16] = 0;

	/* another base model: same shapes, other weights */
	const char *fp[] = {"not the federation's base model", hb, hr, g_reseed, NULL};
	for (int f = 0; f < 2; f++) {
		expect(1, 1, fp, "--state-dir '%s' --version 1 --format %s --base '%s' --out '%s'",
		       g_fed, f ? "peft" : "gguf-lora", g_reseed, p("x"));
	}
	/* other shapes: the fingerprint already differs */
	const char *wide[] = {"not the federation's base model", hb, g_wide, NULL};
	expect(1, 1, wide, "--state-dir '%s' --version 1 --format gguf-lora --base '%s' --out '%s'",
	       g_fed, g_wide, p("x"));
	/* no fingerprint recorded: the shapes decide */
	const char *fit[] = {"does not fit --base", g_wide, "adapter for another base", NULL};
	expect(1, 1, fit, "--state-dir '%s' --version 0 --format gguf-lora --base '%s' --out '%s'",
	       g_rs, g_wide, p("x"));
	/* base file missing */
	const char *miss[] = {"--base", "nope.gguf", NULL};
	expect(1, 1, miss, "--state-dir '%s' --version 1 --format gguf-lora --base '%s' --out '%s'",
	       g_fed, p("nope.gguf"), p("x"));

	/* usage errors (exit 2) */
	const char *nobase[] = {"--format gguf-lora needs --base", NULL};
	expect(1, 2, nobase, "--state-dir '%s' --version 1 --format gguf-lora --out '%s'", g_fed,
	       p("x"));
	const char *merged[] = {"fedlora-node", "--format gguf-lora --base", "--format merged",
	                        "--adapter a.gguf", NULL};
	expect(1, 2, merged, "--state-dir '%s' --version 1 --format merged --base '%s' --out '%s'",
	       g_fed, g_base, p("x"));
	const char *type[] = {"--type: expected f32 or f16, got 'q4_0'", NULL};
	expect(1, 2, type,
	       "--state-dir '%s' --version 1 --format gguf-lora --type q4_0 --base '%s' --out "
	       "'%s'",
	       g_fed, g_base, p("x"));
	const char *ptype[] = {"--type applies to --format gguf-lora only", NULL};
	expect(1, 2, ptype, "--state-dir '%s' --version 1 --type f16 --base '%s' --out '%s'", g_fed,
	       g_base, p("x"));
	const char *fmt[] = {"expected peft or gguf-lora, got 'onnx'", NULL};
	expect(1, 2, fmt, "--state-dir '%s' --version 1 --format onnx --out '%s'", g_fed, p("x"));
	const char *mix[] = {"for exports without --base", NULL};
	expect(1, 2, mix, "--state-dir '%s' --version 1 --base '%s' --n-head 4 --out '%s'", g_fed,
	       g_base, p("x"));
	/* a version that is not there */
	expect(1, 1, NULL, "--state-dir '%s' --version 9 --format gguf-lora --base '%s' --out '%s'",
	       g_fed, g_base, p("x"));
	/* nothing was written by any refusal */
	assert_int_equal(tu_system("test -e '%s'", p("x")), 1);
}

static void test_help(void **st)
{
	(void)st;
	const char *h[] = {"--format peft|gguf-lora", "--base BASE.gguf", "--type f32|f16",
	                   "fedlora-node export --model BASE.gguf --adapter a.gguf --format merged",
	                   NULL};
	expect(1, 0, h, "--help");
	const char *top[] = {"PEFT or llama.cpp GGUF LoRA adapter", NULL};
	assert_int_equal(tu_system("'%s' --help > '%s' 2>&1",
	                           bin("FEDLORA_COORD_BIN", "./fedlora-coordinator"), p("log")),
	                 0);
	char *log = tu_read_text(p("log"));
	if (!strstr(log, top[0]))
		fail_msg("fedlora-coordinator --help lacks '%s':\n%s", top[0], log);
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_gguf_lora), cmocka_unit_test(test_peft_same_as_node),
	    cmocka_unit_test(test_rslora),    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_help),      cmocka_unit_test(test_version_file_is_adapter),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
