/* test_export_cli — `fedlora-node export` end to end through the binary:
 * one adapter exported as gguf-lora and PEFT, then merged from each of the
 * three forms (canonical safetensors, PEFT directory, GGUF LoRA) — the
 * merged files must be identical, which ties the three formats' scale and
 * row-order conventions together; GPTQ through the CLI on local text, the
 * result evaluated by `fedlora-node eval`; refusals with their exit codes and
 * messages. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "lora_fmt.h"
#include "model/model.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *node_bin(void)
{
	const char *b = getenv("FEDLORA_NODE_BIN");
	return b ? b : "./fedlora-node";
}

/* Runs the binary with args, stdout+stderr to dir/log; returns the exit code
 * and the log text in *log (caller frees). */
static int run(const char *dir, char **log, const char *args)
{
	int rc = tu_system("%s %s > '%s/log' 2>&1", node_bin(), args, dir);
	char p[600];
	snprintf(p, sizeof p, "%s/log", dir);
	*log = tu_read_text(p);
	return rc;
}

static void expect_run(const char *dir, int want, const char *needle, const char *args)
{
	char *log;
	int rc = run(dir, &log, args);
	if (rc != want || (needle && !strstr(log, needle))) {
		print_error("fedlora-node %s\nexit %d (want %d), output:\n%s\n(wanted '%s')\n",
		            args, rc, want, log, needle ? needle : "");
		free(log);
		fail();
	}
	if (needle)
		printf("  exit %d: ...%s...\n", rc, needle);
	free(log);
}

static void same_tensors(const char *a, const char *b)
{
	gguf *x, *y;
	char err[256];
	assert_int_equal(gguf_open(a, &x, err, sizeof err), 0);
	assert_int_equal(gguf_open(b, &y, err, sizeof err), 0);
	assert_int_equal(gguf_tensor_count(x), gguf_tensor_count(y));
	for (size_t i = 0; i < gguf_tensor_count(x); i++) {
		gguf_tensor s, t;
		gguf_tensor_at(x, i, &s);
		gguf_tensor_at(y, i, &t);
		assert_string_equal(s.name, t.name);
		assert_int_equal(s.type, t.type);
		assert_int_equal(s.size, t.size);
		if (memcmp(s.data, t.data, s.size) != 0) {
			print_error("%s differs between %s and %s\n", s.name, a, b);
			fail();
		}
	}
	gguf_free(x);
	gguf_free(y);
}

static void test_export_cli(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char a[2048], base[600], other[600], canon[600], p1[600], p2[600], p3[600];
	snprintf(base, sizeof base, "%s/base.gguf", dir);
	snprintf(other, sizeof other, "%s/other.gguf", dir);
	snprintf(canon, sizeof canon, "%s/ad/global.safetensors", dir);
	snprintf(a, sizeof a,
	         "init-model --out '%s' --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 "
	         "--ctx 128 --seed 3",
	         base);
	expect_run(dir, 0, NULL, a);
	snprintf(a, sizeof a,
	         "init-model --out '%s' --dim 96 --layers 2 --heads 4 --ffn 128 --ctx 128", other);
	expect_run(dir, 0, NULL, a);

	/* a canonical adapter (every target, r = 4, alpha = 16 -> s = 4) */
	model *m;
	char err[256];
	assert_int_equal(model_load(base, &m, err, sizeof err), 0);
	const model_layer *y = &model_wts(m)->layers[0];
	const kern_mat *mats[7] = {&y->wq,     &y->wk,   &y->wv,    &y->wo,
	                           &y->w_gate, &y->w_up, &y->w_down};
	tset *ad;
	uint64_t st = 17;
	assert_int_equal(tset_new(&ad), 0);
	for (int l = 0; l < 2; l++)
		for (int t = 0; t < 7; t++) {
			char nm[64];
			tensor *x;
			uint64_t sa[2] = {4, (uint64_t)mats[t]->cols},
			         sb[2] = {(uint64_t)mats[t]->rows, 4};
			snprintf(nm, sizeof nm, "blk.%d.%s.lora_a", l, lora_target_name(t));
			assert_int_equal(tset_insert(ad, nm, 2, sa, NULL, &x), 0);
			for (size_t i = 0; i < x->n; i++)
				x->data[i] = (float)(tu_randu(&st) - 0.5) * 0.2f;
			snprintf(nm, sizeof nm, "blk.%d.%s.lora_b", l, lora_target_name(t));
			assert_int_equal(tset_insert(ad, nm, 2, sb, NULL, &x), 0);
			for (size_t i = 0; i < x->n; i++)
				x->data[i] = (float)(tu_randu(&st) - 0.5) * 0.1f;
		}
	model_free(m);
	snprintf(a, sizeof a, "%s/ad", dir);
	assert_int_equal(file_mkdirs(a), 0);
	assert_int_equal(st_write(canon, ad, ST_F32, NULL, 0), 0);

	printf("refusals:\n");
	snprintf(a, sizeof a, "export --model '%s' --adapter '%s' --format gguf-lora --out %s/x",
	         base, canon, dir);
	expect_run(dir, 2, "pass --alpha", a);
	st_kv meta[1] = {{LFMT_META_ALPHA, "16"}};
	assert_int_equal(st_write(canon, ad, ST_F32, meta, 1), 0);
	snprintf(a, sizeof a,
	         "export --model '%s' --adapter '%s' --format gguf-lora --out %s/x --alpha 8", base,
	         canon, dir);
	expect_run(dir, 1, "drop --alpha", a);
	snprintf(a, sizeof a, "export --model '%s' --adapter '%s' --format merged --out %s/x",
	         other, canon, dir);
	expect_run(dir, 1, "another base", a);
	snprintf(a, sizeof a, "export --model '%s' --format merged --quantize gptq-q4_0 --out %s/x",
	         base, dir);
	expect_run(dir, 2, "needs --calib", a);
	snprintf(a, sizeof a, "export --model '%s' --format onnx --out %s/x", base, dir);
	expect_run(dir, 2, "--format", a);
	snprintf(a, sizeof a, "export --model '%s' --format peft --out %s/x", base, dir);
	expect_run(dir, 2, "needs --adapter", a);
	char shortf[600];
	snprintf(shortf, sizeof shortf, "%s/short.txt", dir);
	assert_int_equal(file_write_atomic(shortf, "Too short.", 10), 0);
	snprintf(a, sizeof a,
	         "export --model '%s' --format merged --quantize gptq-q8_0 --calib '%s' --out %s/x",
	         base, shortf, dir);
	expect_run(dir, 1, "too short", a);
	snprintf(a, sizeof a, "%s/x", dir);
	assert_int_equal(file_exists(a), 0);
	snprintf(a, sizeof a, "export --model '%s' --adapter '%s/nope' --format peft --out %s/x",
	         base, dir, dir);
	expect_run(dir, 1, "does not exist", a);
	/* a corrupt adapter file */
	char bad[600];
	snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
	assert_int_equal(file_write_atomic(bad, "\x10\0\0\0\0\0\0\0{\"a\":", 13), 0);
	snprintf(a, sizeof a, "export --model '%s' --adapter '%s' --format peft --out %s/x", base,
	         bad, dir);
	expect_run(dir, 1, "--adapter", a);

	/* the three forms of one adapter merge to the same model */
	snprintf(a, sizeof a,
	         "export --model '%s' --adapter '%s' --format gguf-lora --out %s/a.gguf", base,
	         canon, dir);
	expect_run(dir, 0, NULL, a);
	snprintf(a, sizeof a, "export --model '%s' --adapter '%s' --format peft --out %s/peft",
	         base, canon, dir);
	expect_run(dir, 0, NULL, a);
	snprintf(p1, sizeof p1, "%s/m1.gguf", dir);
	snprintf(p2, sizeof p2, "%s/m2.gguf", dir);
	snprintf(p3, sizeof p3, "%s/m3.gguf", dir);
	snprintf(a, sizeof a, "export --model '%s' --adapter '%s' --format merged --out '%s'", base,
	         canon, p1);
	expect_run(dir, 0, "14 merged", a);
	snprintf(a, sizeof a, "export --model '%s' --adapter '%s/peft' --format merged --out '%s'",
	         base, dir, p2);
	expect_run(dir, 0, "14 merged", a);
	snprintf(a, sizeof a,
	         "export --model '%s' --adapter '%s/a.gguf' --format merged --out '%s'", base, dir,
	         p3);
	expect_run(dir, 0, "14 merged", a);
	same_tensors(p1, p2);
	same_tensors(p1, p3);
	printf("merged from canonical, PEFT and GGUF LoRA forms: identical tensors\n");

	/* GPTQ through the CLI; the result is an ordinary Q4_0 GGUF eval loads */
	const char *shared = tu_shared_data("tinyshakespeare.txt");
	char cal[600];
	snprintf(cal, sizeof cal, "%s/cal.txt", dir);
	if (shared) {
		uint8_t *txt;
		size_t n;
		assert_int_equal(file_read_all(shared, 2u << 20, &txt, &n), 0);
		assert_int_equal(file_write_atomic(cal, txt, n > 60000 ? 60000 : n), 0);
		free(txt);
	} else {
		/* no shared data: some text of our own is enough for this check */
		char buf[20000];
		size_t k = 0;
		for (int i = 0; k + 64 < sizeof buf; i++)
			k += (size_t)snprintf(buf + k, sizeof buf - k,
			                      "line %d of the calibration text. ", i * 7919 % 1000);
		assert_int_equal(file_write_atomic(cal, buf, k), 0);
	}
	snprintf(a, sizeof a,
	         "export --model '%s' --adapter '%s/peft' --format merged --quantize gptq-q4_0 "
	         "--calib '%s' --calib-seqs 8 --calib-ctx 64 --out %s/g.gguf --verbose",
	         base, dir, cal, dir);
	expect_run(dir, 0, "15 GPTQ", a);
	snprintf(a, sizeof a, "%s/g.gguf", dir);
	gguf *g;
	assert_int_equal(gguf_open(a, &g, err, sizeof err), 0);
	gguf_tensor t;
	assert_int_equal(gguf_tensor_find(g, "blk.1.ffn_down.weight", &t), 0);
	assert_int_equal(t.type, GTYPE_Q4_0);
	gguf_str s;
	assert_int_equal(gguf_get_str(g, "fedlora.export.quantization", &s), 0);
	assert_true(s.n == 9 && memcmp(s.p, "gptq-q4_0", 9) == 0);
	gguf_free(g);
	snprintf(a, sizeof a, "eval --model %s/g.gguf --data '%s' --max-tokens 300 --ctx 64", dir,
	         cal);
	expect_run(dir, 0, "perplexity", a);

	tset_free(ad);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_export_cli)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
