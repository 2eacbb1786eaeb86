/* test_export_llamacpp — optional cross-check of the exports in llama.cpp:
 *
 *  - a GGUF LoRA adapter written by `export --format gguf-lora`, applied by
 *    llama.cpp to the base at scale 1, gives the same greedy continuation as
 *    the merged F32 model in llama.cpp and as `fedlora-node generate` on the
 *    merged model — so llama.cpp reads our names, shapes, q/k row order and
 *    alpha the way we mean them — and a different one from the bare base (the
 *    adapter is really applied);
 *  - the same adapter declared as rsLoRA (alpha 4, r 4: the same scale 2),
 *    written in F16, gives the same continuation: the file's alpha is s * r;
 *  - the GPTQ-Q4_0 and RTN-Q8_0 merged files load in llama.cpp and generate.
 *
 * llama.cpp is the npm package node-llama-cpp (3.x, prebuilt) that
 * deploy/install-refs.sh installs where FEDLORA_LLAMACPP_NODE_DIR points
 * (tests/CMakeLists.txt sets it). Skipped, with the reason printed, only when
 * that install, `node` or the shared llama-spm vocabulary is missing. The helper
 * script is written into that directory for the run and removed after. */
#include "testutil.h"

#include "fileio.h"
#include "lora_fmt.h"
#include "model/model.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char JS[] =
    "import {getLlama} from \"node-llama-cpp\";\n"
    "const [modelPath, prompt, n, lora] = process.argv.slice(2);\n"
    "const llama = await getLlama({gpu: false, build: \"never\", logLevel: \"error\"});\n"
    "const model = await llama.loadModel({modelPath});\n"
    "const opts = {contextSize: 64, batchSize: 64, threads: 2, flashAttention: false,\n"
    "  experimentalKvCacheKeyType: \"F32\", experimentalKvCacheValueType: \"F32\"};\n"
    "if (lora) opts.lora = {adapters: [{filePath: lora, scale: 1}]};\n"
    "const ctx = await model.createContext(opts);\n"
    "const seq = ctx.getSequence();\n"
    "let toks = model.tokenize(prompt);\n"
    "if (model.tokens.shouldPrependBosToken) toks = [model.tokens.bos, ...toks];\n"
    "const out = [];\n"
    "for (let i = 0; i < Number(n); i++) {\n"
    "  const r = await seq.controlledEvaluate(toks.map((t, j) =>\n"
    "    j === toks.length - 1 ? [t, {generateNext: {token: true, options: {temperature: "
    "0}}}] : t));\n"
    "  const next = r[toks.length - 1].next.token;\n"
    "  out.push(next);\n"
    "  toks = [next];\n"
    "}\n"
    "process.stdout.write(prompt + model.detokenize(out));\n";

#define PROMPT "Once upon a time"

/* text without spaces (llama.cpp's detokenize drops the first piece's
 * leading space) */
static void squeeze(char *s)
{
	char *d = s;
	for (; *s; s++)
		if (*s != ' ' && *s != '\n')
			*d++ = *s;
	*d = 0;
}

static char *run_capture(const char *dir, const char *cmd)
{
	char out[600];
	snprintf(out, sizeof out, "%s/cap.txt", dir);
	int rc = tu_system("%s > '%s' 2>/dev/null", cmd, out);
	if (rc != 0) {
		print_error("command failed (%d): %s\n", rc, cmd);
		fail();
	}
	return tu_read_text(out);
}

static void test_llamacpp(void **state)
{
	(void)state;
	const char *nl = getenv("FEDLORA_LLAMACPP_NODE_DIR"), *bin = getenv("FEDLORA_NODE_BIN");
	/* tu_shared_data returns static storage: copy each path */
	char vocab_s[600] = "", text_s[600] = "", probe[600];
	const char *p1 = tu_shared_data("vocab/ggml-vocab-llama-spm.gguf");
	if (p1)
		snprintf(vocab_s, sizeof vocab_s, "%s", p1);
	const char *p2 = tu_shared_data("tinyshakespeare.txt");
	if (p2)
		snprintf(text_s, sizeof text_s, "%s", p2);
	const char *vocab = vocab_s[0] ? vocab_s : NULL, *text = text_s[0] ? text_s : NULL;
	snprintf(probe, sizeof probe, "%s/node_modules/node-llama-cpp", nl ? nl : "");
	if (!nl || !bin || !vocab || !text || access(probe, R_OK) != 0 ||
	    tu_system("command -v node > /dev/null") != 0) {
		printf(
		    "SKIP: llama.cpp reference missing (node-llama-cpp in '%s': %s; node on PATH;"
		    " shared vocabulary %s, text %s); run deploy/install-refs.sh\n",
		    nl ? nl : "(FEDLORA_LLAMACPP_NODE_DIR unset)",
		    access(probe, R_OK) == 0 ? "present" : "absent", vocab ? "present" : "absent",
		    text ? "present" : "absent");
		skip();
	}
	char *dir = tu_mkdtemp();
	char js[700], base[600], canon[600], cmd[4096], cal[600];
	snprintf(js, sizeof js, "%s/fl_export_xcheck_%d.mjs", nl, (int)getpid());
	assert_int_equal(file_write_atomic(js, JS, strlen(JS)), 0);
	snprintf(base, sizeof base, "%s/base.gguf", dir);
	snprintf(canon, sizeof canon, "%s/ad.safetensors", dir);
	snprintf(cal, sizeof cal, "%s/cal.txt", dir);
	assert_int_equal(tu_system("'%s' init-model --out '%s' --dim 64 --layers 2 --heads 4 "
	                           "--kv-heads 2 --ffn 96 --ctx 64 --vocab-from '%s' --std 0.5 "
	                           "--seed 3 > /dev/null",
	                           bin, base, vocab),
	                 0);
	{
		uint8_t *t;
		size_t n;
		assert_int_equal(file_read_all(text, 4u << 20, &t, &n), 0);
		assert_int_equal(file_write_atomic(cal, t, n > 40000 ? 40000 : n), 0);
		free(t);
	}
	/* an adapter that changes the continuation: every target, r 4, s = 2 */
	model *m;
	char err[256];
	assert_int_equal(model_load(base, &m, err, sizeof err), 0);
	const model_layer *y = &model_wts(m)->layers[0];
	const kern_mat *mats[7] = {&y->wq,     &y->wk,   &y->wv,    &y->wo,
	                           &y->w_gate, &y->w_up, &y->w_down};
	tset *ad;
	uint64_t st = 5;
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
				x->data[i] =
				    (float)((tu_randu(&st) - 0.5) * 3.4 / sqrt(mats[t]->cols));
			snprintf(nm, sizeof nm, "blk.%d.%s.lora_b", l, lora_target_name(t));
			assert_int_equal(tset_insert(ad, nm, 2, sb, NULL, &x), 0);
			for (size_t i = 0; i < x->n; i++)
				x->data[i] = (float)((tu_randu(&st) - 0.5) * 0.6);
		}
	model_free(m);
	st_kv meta[1] = {{LFMT_META_ALPHA, "8"}};
	assert_int_equal(st_write(canon, ad, ST_F32, meta, 1), 0);
	/* the same tensors as rsLoRA with alpha 4: s = 4 / sqrt(4) = 2 again, so
	 * the GGUF adapter must carry alpha = s * r = 8 for llama.cpp */
	char canon_rs[600];
	snprintf(canon_rs, sizeof canon_rs, "%s/ad_rs.safetensors", dir);
	st_kv meta_rs[2] = {{LFMT_META_ALPHA, "4"}, {LFMT_META_RSLORA, "true"}};
	assert_int_equal(st_write(canon_rs, ad, ST_F32, meta_rs, 2), 0);
	tset_free(ad);
	snprintf(cmd, sizeof cmd,
	         "'%s' export --model '%s' --adapter '%s' --format gguf-lora --type f16 --out "
	         "'%s/a_rs.gguf'",
	         bin, base, canon_rs, dir);
	assert_int_equal(tu_system("%s > /dev/null", cmd), 0);

	snprintf(cmd, sizeof cmd,
	         "'%s' export --model '%s' --adapter '%s' --format gguf-lora --out '%s/a.gguf'",
	         bin, base, canon, dir);
	assert_int_equal(tu_system("%s > /dev/null", cmd), 0);
	snprintf(cmd, sizeof cmd,
	         "'%s' export --model '%s' --adapter '%s' --format merged --out '%s/m.gguf'", bin,
	         base, canon, dir);
	assert_int_equal(tu_system("%s > /dev/null", cmd), 0);
	snprintf(cmd, sizeof cmd,
	         "'%s' export --model '%s' --adapter '%s' --format merged --quantize gptq-q4_0 "
	         "--calib '%s' --calib-seqs 32 --calib-ctx 64 --out '%s/g.gguf'",
	         bin, base, canon, cal, dir);
	assert_int_equal(tu_system("%s > /dev/null 2>&1", cmd), 0);
	snprintf(cmd, sizeof cmd,
	         "'%s' export --model '%s' --adapter '%s' --format merged --quantize rtn-q8_0 "
	         "--out '%s/q8.gguf'",
	         bin, base, canon, dir);
	assert_int_equal(tu_system("%s > /dev/null 2>&1", cmd), 0);

	snprintf(cmd, sizeof cmd, "cd '%s' && node '%s' '%s' '" PROMPT "' 16 '%s/a.gguf'", nl, js,
	         base, dir);
	char *lora = run_capture(dir, cmd);
	snprintf(cmd, sizeof cmd, "cd '%s' && node '%s' '%s' '" PROMPT "' 16 '%s/a_rs.gguf'", nl,
	         js, base, dir);
	char *lora_rs = run_capture(dir, cmd);
	snprintf(cmd, sizeof cmd, "cd '%s' && node '%s' '%s/m.gguf' '" PROMPT "' 16", nl, js, dir);
	char *merged = run_capture(dir, cmd);
	snprintf(cmd, sizeof cmd, "cd '%s' && node '%s' '%s' '" PROMPT "' 16", nl, js, base);
	char *bare = run_capture(dir, cmd);
	snprintf(cmd, sizeof cmd,
	         "'%s' generate --model '%s/m.gguf' --prompt '" PROMPT "' -n 16 --temp 0", bin,
	         dir);
	char *ours = run_capture(dir, cmd);
	snprintf(cmd, sizeof cmd, "cd '%s' && node '%s' '%s/g.gguf' '" PROMPT "' 16", nl, js, dir);
	char *gq = run_capture(dir, cmd);
	snprintf(cmd, sizeof cmd, "cd '%s' && node '%s' '%s/q8.gguf' '" PROMPT "' 16", nl, js, dir);
	char *q8 = run_capture(dir, cmd);
	printf("llama.cpp base           : %s\n", bare);
	printf("llama.cpp base + our LoRA: %s\n", lora);
	printf("llama.cpp base + rsLoRA F16: %s\n", lora_rs);
	printf("llama.cpp merged F32     : %s\n", merged);
	printf("fedlora   merged F32     : %s\n", ours);
	printf("llama.cpp GPTQ-Q4_0      : %s\n", gq);
	printf("llama.cpp RTN-Q8_0       : %s\n", q8);
	squeeze(lora);
	squeeze(lora_rs);
	squeeze(merged);
	squeeze(bare);
	squeeze(ours);
	assert_string_equal(lora, merged);
	assert_string_equal(lora_rs, merged);
	assert_string_equal(merged, ours);
	assert_string_not_equal(lora, bare);
	assert_true(strlen(gq) > strlen(PROMPT) && strlen(q8) > strlen(PROMPT));
	free(lora);
	free(lora_rs);
	free(merged);
	free(bare);
	free(ours);
	free(gq);
	free(q8);
	unlink(js);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_llamacpp)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
