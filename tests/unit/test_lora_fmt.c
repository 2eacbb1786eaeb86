/* test_lora_fmt — adapter formats: GGUF LoRA (llama.cpp's convention) and
 * PEFT round trips through our own readers, the q/k row permutation against
 * its definition, adapter-vs-base checks, where alpha comes from, and
 * refusals of malformed or mismatched adapters. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "half.h"
#include "gguf_lora.h"
#include "lora_fmt.h"
#include "peft.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L_LAYERS 2
#define C_DIM    64
#define N_HEAD   4
#define N_KV     2
#define HD       (C_DIM / N_HEAD)
#define F_DIM    96

static const int OUTS[7] = {N_HEAD * HD, N_KV *HD, N_KV *HD, C_DIM, F_DIM, F_DIM, C_DIM};
static const int INS[7] = {C_DIM, C_DIM, C_DIM, N_HEAD *HD, C_DIM, C_DIM, F_DIM};

/* A base GGUF with the projection tensors (zero data) and the keys the
 * formats read. */
static void write_base(const char *path, const char *arch, int dim)
{
	gguf_writer *w = gguf_writer_new();
	char k[96];
	assert_non_null(w);
	assert_int_equal(gguf_set_str(w, "general.architecture", arch), 0);
	assert_int_equal(gguf_set_str(w, "general.name", "test-base"), 0);
	snprintf(k, sizeof k, "%s.block_count", arch);
	assert_int_equal(gguf_set_u32(w, k, L_LAYERS), 0);
	snprintf(k, sizeof k, "%s.attention.head_count", arch);
	assert_int_equal(gguf_set_u32(w, k, N_HEAD), 0);
	snprintf(k, sizeof k, "%s.attention.head_count_kv", arch);
	assert_int_equal(gguf_set_u32(w, k, N_KV), 0);
	snprintf(k, sizeof k, "%s.context_length", arch);
	assert_int_equal(gguf_set_u32(w, k, 128), 0);
	assert_int_equal(gguf_set_str(w, "tokenizer.ggml.model", "llama"), 0);
	for (int l = 0; l < L_LAYERS; l++)
		for (int t = 0; t < 7; t++) {
			char nm[64];
			snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, lora_target_name(t));
			int in = INS[t] == C_DIM ? dim : INS[t];
			uint64_t ne[2] = {(uint64_t)in, (uint64_t)OUTS[t]};
			size_t n = (size_t)in * OUTS[t];
			float *d = calloc(n, sizeof(float));
			assert_non_null(d);
			assert_int_equal(
			    gguf_add_tensor_own(w, nm, GTYPE_F32, 2, ne, d, n * sizeof(float)), 0);
		}
	assert_int_equal(gguf_writer_write(w, path), 0);
	gguf_writer_free(w);
}

static gguf *open_base(const char *path)
{
	gguf *g;
	char err[256];
	int rc = gguf_open(path, &g, err, sizeof err);
	if (rc)
		print_error("%s\n", err);
	assert_int_equal(rc, 0);
	return g;
}

/* Random adapter for targets in mask over all layers. */
static tset *make_adapter(uint32_t mask, int r, uint64_t seed)
{
	tset *s;
	uint64_t st = seed;
	assert_int_equal(tset_new(&s), 0);
	for (int l = 0; l < L_LAYERS; l++)
		for (int t = 0; t < 7; t++) {
			if (!(mask & (1u << t)))
				continue;
			char nm[64];
			tensor *x;
			uint64_t sa[2] = {(uint64_t)r, (uint64_t)INS[t]};
			uint64_t sb[2] = {(uint64_t)OUTS[t], (uint64_t)r};
			snprintf(nm, sizeof nm, "blk.%d.%s.lora_a", l, lora_target_name(t));
			assert_int_equal(tset_insert(s, nm, 2, sa, NULL, &x), 0);
			for (size_t i = 0; i < x->n; i++)
				x->data[i] = (float)(tu_randu(&st) - 0.5);
			snprintf(nm, sizeof nm, "blk.%d.%s.lora_b", l, lora_target_name(t));
			assert_int_equal(tset_insert(s, nm, 2, sb, NULL, &x), 0);
			for (size_t i = 0; i < x->n; i++)
				x->data[i] = (float)(tu_randu(&st) - 0.5);
		}
	return s;
}

static void expect_same(const tset *a, const tset *b, double tol)
{
	assert_int_equal(tset_same_layout(a, b), 0);
	for (size_t i = 0; i < tset_count(a); i++) {
		const tensor *x = tset_at(a, i), *y = tset_find(b, x->name);
		assert_non_null(y);
		for (size_t k = 0; k < x->n; k++)
			if (fabs((double)x->data[k] - y->data[k]) > tol) {
				print_error("%s[%zu]: %.9g vs %.9g\n", x->name, k,
				            (double)x->data[k], (double)y->data[k]);
				fail();
			}
	}
}

typedef struct fx {
	char *dir;
	char base[512], other[512];
	gguf *g;
} fx;

static int setup(void **state)
{
	fx *f = calloc(1, sizeof *f);
	f->dir = tu_mkdtemp();
	snprintf(f->base, sizeof f->base, "%s/base.gguf", f->dir);
	snprintf(f->other, sizeof f->other, "%s/other.gguf", f->dir);
	write_base(f->base, "llama", C_DIM);
	write_base(f->other, "llama", 2 * C_DIM);
	f->g = open_base(f->base);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	gguf_free(f->g);
	tu_rmtree(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

static void test_permutation(void **state)
{
	(void)state;
	/* Definition (llama GGUF conversion): per head, the [d, cols] block is
	 * reshaped to [2, d/2, cols] and the first two axes swapped, so GGUF row
	 * 2i + j is Hugging Face row j * d/2 + i. Built directly from that. */
	const int nh = 3, d = 8, cols = 5, rows = nh * d;
	float hf[24 * 5], gg[24 * 5], back[24 * 5], want[24 * 5];
	for (int i = 0; i < rows * cols; i++)
		hf[i] = (float)i;
	for (int h = 0; h < nh; h++)
		for (int i = 0; i < d / 2; i++)
			for (int j = 0; j < 2; j++)
				memcpy(want + (size_t)(h * d + 2 * i + j) * cols,
				       hf + (size_t)(h * d + j * (d / 2) + i) * cols,
				       sizeof(float) * cols);
	assert_int_equal(lora_rows_hf_to_gguf(hf, gg, rows, cols, nh), 0);
	assert_memory_equal(gg, want, sizeof gg);
	assert_int_equal(lora_rows_gguf_to_hf(gg, back, rows, cols, nh), 0);
	assert_memory_equal(back, hf, sizeof hf);
	assert_int_equal(lora_rows_hf_to_gguf(hf, gg, 22, cols, nh), FL_EINVAL);
	assert_int_equal(lora_rows_hf_to_gguf(hf, gg, rows, cols, 0), FL_EINVAL);
}

static void test_names_and_scale(void **state)
{
	(void)state;
	uint32_t l;
	int t, b;
	assert_int_equal(lora_parse_name("blk.12.ffn_down.lora_b", &l, &t, &b), 0);
	assert_int_equal(l, 12);
	assert_int_equal(t, LORA_FFN_DOWN);
	assert_int_equal(b, 1);
	const char *bad[] = {"blk.1.attn_qq.lora_a",    "blk.01.attn_q.lora_a",
	                     "blk..attn_q.lora_a",      "blk.1.attn_q.lora_c",
	                     "blk.1.attn_q.weight",     "x.1.attn_q.lora_a",
	                     "blk.99999.attn_q.lora_a", "blk.1.attn_q.lora_a.x"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(lora_parse_name(bad[i], &l, &t, &b), FL_EINVAL);
	lora_spec p = {.alpha = 16, .rank = 4, .rslora = 0};
	assert_true(lora_scale(&p) == 4.0);
	p.rslora = 1;
	assert_true(lora_scale(&p) == 8.0);
}

static void test_gguf_lora_round_trip(void **state)
{
	fx *f = *state;
	tset *ad = make_adapter(0x7f, 4, 1), *back = NULL;
	char path[600], why[512];
	lora_spec p = {.alpha = 12.0f, .rank = 4, .rslora = 0}, q;
	snprintf(path, sizeof path, "%s/a.gguf", f->dir);
	int rc = gguf_lora_write(ad, f->g, &p, GTYPE_F32, path, why, sizeof why);
	if (rc)
		print_error("%s\n", why);
	assert_int_equal(rc, 0);

	/* the file as llama.cpp reads it */
	gguf *g = open_base(path);
	gguf_str s;
	float alpha;
	assert_int_equal(gguf_get_str(g, "general.type", &s), 0);
	assert_true(s.n == 7 && memcmp(s.p, "adapter", 7) == 0);
	assert_int_equal(gguf_get_str(g, "adapter.type", &s), 0);
	assert_true(s.n == 4 && memcmp(s.p, "lora", 4) == 0);
	assert_int_equal(gguf_get_str(g, "general.architecture", &s), 0);
	assert_true(s.n == 5 && memcmp(s.p, "llama", 5) == 0);
	assert_int_equal(gguf_get_f32(g, "adapter.lora.alpha", &alpha), 0); /* exactly f32 */
	assert_true(alpha == 12.0f);
	uint32_t u;
	assert_int_equal(gguf_get_u32(g, "llama.block_count", &u), 0); /* hparams copied */
	assert_int_equal(u, L_LAYERS);
	assert_int_equal(gguf_find_key(g, "tokenizer.ggml.model"), FL_ENOENT);
	assert_int_equal(gguf_tensor_count(g), L_LAYERS * 7 * 2);
	gguf_tensor ta, tb;
	assert_int_equal(gguf_tensor_find(g, "blk.1.attn_k.weight.lora_a", &ta), 0);
	assert_int_equal(gguf_tensor_find(g, "blk.1.attn_k.weight.lora_b", &tb), 0);
	/* llama.cpp's checks: a.ne[0] == W.ne[0], b.ne[1] == W.ne[1], a.ne[1] == b.ne[0] */
	assert_int_equal(ta.ne[0], C_DIM);
	assert_int_equal(ta.ne[1], 4);
	assert_int_equal(tb.ne[0], 4);
	assert_int_equal(tb.ne[1], N_KV * HD);
	assert_int_equal(ta.type, GTYPE_F32);
	/* same bytes as the canonical tensor (row-major [r, in]) */
	assert_memory_equal(ta.data, tset_find(ad, "blk.1.attn_k.lora_a")->data, ta.size);
	/* q/k lora_b stay in GGUF order */
	assert_memory_equal(tb.data, tset_find(ad, "blk.1.attn_k.lora_b")->data, tb.size);
	gguf_free(g);

	rc = gguf_lora_read(path, f->g, &back, &q, why, sizeof why);
	if (rc)
		print_error("%s\n", why);
	assert_int_equal(rc, 0);
	expect_same(ad, back, 0.0);
	assert_true(q.alpha == 12.0f && q.rank == 4 && q.rslora == 0);
	tset_free(back);

	/* rsLoRA: llama.cpp divides by r, so the file carries alpha * sqrt(r) */
	p.rslora = 1;
	assert_int_equal(gguf_lora_write(ad, f->g, &p, GTYPE_F16, path, why, sizeof why), 0);
	assert_int_equal(gguf_lora_read(path, f->g, &back, &q, why, sizeof why), 0);
	assert_true(fabs(lora_scale(&q) - lora_scale(&p)) < 1e-6);
	assert_true(q.alpha == 24.0f);
	expect_same(ad, back, 1e-3); /* f16 rounding of values in [-0.5, 0.5] */
	tset_free(back);

	/* s == 0: alpha = r (llama.cpp reads alpha 0 as "scale 1") and B = 0 */
	p.alpha = 0.0f;
	p.rslora = 0;
	assert_int_equal(gguf_lora_write(ad, f->g, &p, GTYPE_F32, path, why, sizeof why), 0);
	assert_int_equal(gguf_lora_read(path, f->g, &back, &q, why, sizeof why), 0);
	assert_true(q.alpha == 4.0f);
	assert_true(tset_find(back, "blk.0.attn_q.lora_b")->data[5] == 0.0f);
	tset_free(back);

	/* a base model is not an adapter; architecture must match */
	rc = gguf_lora_read(f->base, NULL, &back, &q, why, sizeof why);
	assert_int_equal(rc, FL_EFORMAT);
	assert_non_null(strstr(why, "general.type"));
	char qb[600];
	snprintf(qb, sizeof qb, "%s/qwen.gguf", f->dir);
	write_base(qb, "qwen2", C_DIM);
	gguf *gq = open_base(qb);
	p.alpha = 8.0f;
	assert_int_equal(gguf_lora_write(ad, f->g, &p, GTYPE_F32, path, why, sizeof why), 0);
	rc = gguf_lora_read(path, gq, &back, &q, why, sizeof why);
	assert_int_equal(rc, FL_EMISMATCH);
	assert_non_null(strstr(why, "architecture"));
	gguf_free(gq);
	/* Q8_0 is not a LoRA tensor type here */
	assert_int_equal(gguf_lora_write(ad, f->g, &p, GTYPE_Q8_0, path, why, sizeof why),
	                 FL_EINVAL);
	tset_free(ad);
}

static void test_peft_round_trip(void **state)
{
	fx *f = *state;
	tset *ad = make_adapter((1u << LORA_ATTN_Q) | (1u << LORA_ATTN_K) | (1u << LORA_FFN_UP), 8,
	                        2),
	     *back = NULL, *raw = NULL;
	char dir[600], path[700], why[512];
	lora_spec p = {.alpha = 16.0f, .rank = 8, .rslora = 1}, q;
	snprintf(dir, sizeof dir, "%s/peft", f->dir);
	int rc = peft_write_base(ad, f->g, &p, NULL, dir, why, sizeof why);
	if (rc)
		print_error("%s\n", why);
	assert_int_equal(rc, 0);

	/* Hugging Face names and row order in the file */
	snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
	assert_int_equal(st_read_tset(path, NULL, &raw), 0);
	assert_int_equal(tset_count(raw), tset_count(ad));
	const tensor *hb =
	    tset_find(raw, "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight");
	const tensor *cb = tset_find(ad, "blk.1.attn_k.lora_b");
	assert_non_null(hb);
	/* k has N_KV heads of HD rows: GGUF row g of a head is HF row (g%2)*HD/2 + g/2 */
	for (int h = 0; h < N_KV; h++)
		for (int g = 0; g < HD; g++) {
			int hf = (g % 2) * (HD / 2) + g / 2;
			assert_memory_equal(hb->data + (size_t)(h * HD + hf) * 8,
			                    cb->data + (size_t)(h * HD + g) * 8, 8 * sizeof(float));
		}
	/* v/up rows are not permuted */
	assert_memory_equal(
	    tset_find(raw, "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight")->data,
	    tset_find(ad, "blk.0.ffn_up.lora_b")->data, sizeof(float) * F_DIM * 8);
	tset_free(raw);

	/* config */
	uint8_t *txt;
	size_t n;
	snprintf(path, sizeof path, "%s/adapter_config.json", dir);
	assert_int_equal(file_read_all(path, 1 << 20, &txt, &n), 0);
	assert_non_null(strstr((char *)txt, "\"peft_type\":\t\"LORA\""));
	assert_non_null(strstr((char *)txt, "\"q_proj\""));
	assert_non_null(strstr((char *)txt, "\"up_proj\""));
	assert_null(strstr((char *)txt, "\"v_proj\""));
	assert_non_null(strstr((char *)txt, "\"use_rslora\":\ttrue"));
	assert_int_equal(peft_parse_config((char *)txt, n, &q, why, sizeof why), 0);
	assert_true(q.alpha == 16.0f && q.rank == 8 && q.rslora == 1);
	free(txt);

	rc = peft_read(dir, f->g, &back, &q, why, sizeof why);
	if (rc)
		print_error("%s\n", why);
	assert_int_equal(rc, 0);
	expect_same(ad, back, 0.0);
	tset_free(back);

	/* the same through lfmt_load: directory, and the safetensors file alone */
	assert_int_equal(lfmt_load(dir, f->g, NULL, &back, &q, why, sizeof why), 0);
	expect_same(ad, back, 0.0);
	tset_free(back);
	snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
	assert_int_equal(lfmt_load(path, f->g, NULL, &back, &q, why, sizeof why), 0);
	assert_true(q.rslora == 1 && q.alpha == 16.0f);
	expect_same(ad, back, 0.0);
	tset_free(back);

	/* the PEFT adapter does not fit the wider base */
	gguf *go = open_base(f->other);
	rc = peft_read(dir, go, &back, &q, why, sizeof why);
	assert_int_equal(rc, FL_EMISMATCH);
	printf("refusal (other base): %s\n", why);
	assert_non_null(strstr(why, "another base"));
	gguf_free(go);
	tset_free(ad);
}

static void test_alpha_sources(void **state)
{
	fx *f = *state;
	tset *ad = make_adapter(1u << LORA_ATTN_V, 2, 3), *back = NULL;
	char path[600], why[512];
	lora_spec q;
	snprintf(path, sizeof path, "%s/sub", f->dir);
	assert_int_equal(file_mkdirs(path), 0);
	snprintf(path, sizeof path, "%s/sub/global.safetensors", f->dir);

	/* no alpha anywhere: refused, naming the fix */
	assert_int_equal(st_write(path, ad, ST_F32, NULL, 0), 0);
	int rc = lfmt_load(path, f->g, NULL, &back, &q, why, sizeof why);
	assert_int_equal(rc, FL_EINVAL);
	printf("refusal (no alpha): %s\n", why);
	assert_non_null(strstr(why, "--alpha"));
	lfmt_override ov = {.has_alpha = 1, .alpha = 6.0f, .rank = 0, .rslora = -1};
	assert_int_equal(lfmt_load(path, f->g, &ov, &back, &q, why, sizeof why), 0);
	assert_true(q.alpha == 6.0f && q.rank == 2 && q.rslora == 0);
	expect_same(ad, back, 0.0);
	tset_free(back);
	ov.rank = 3;
	assert_int_equal(lfmt_load(path, f->g, &ov, &back, &q, why, sizeof why), FL_EMISMATCH);
	ov.rank = 0;

	/* metadata */
	st_kv meta[2] = {{LFMT_META_ALPHA, "32"}, {LFMT_META_RSLORA, "true"}};
	assert_int_equal(st_write(path, ad, ST_F32, meta, 2), 0);
	assert_int_equal(lfmt_load(path, f->g, NULL, &back, &q, why, sizeof why), 0);
	assert_true(q.alpha == 32.0f && q.rslora == 1 && q.rank == 2);
	tset_free(back);
	rc = lfmt_load(path, f->g, &ov, &back, &q, why, sizeof why); /* 6 != 32 */
	assert_int_equal(rc, FL_EMISMATCH);
	printf("refusal (contradiction): %s\n", why);
	st_kv meta2[2] = {{LFMT_META_ALPHA, "32"}, {LFMT_META_RANK, "4"}};
	assert_int_equal(st_write(path, ad, ST_F32, meta2, 2), 0);
	assert_int_equal(lfmt_load(path, f->g, NULL, &back, &q, why, sizeof why), FL_EMISMATCH);
	st_kv meta3[1] = {{LFMT_META_ALPHA, "sixteen"}};
	assert_int_equal(st_write(path, ad, ST_F32, meta3, 1), 0);
	assert_int_equal(lfmt_load(path, f->g, NULL, &back, &q, why, sizeof why), FL_EFORMAT);

	/* adapter_config.json beside a canonical file */
	assert_int_equal(st_write(path, ad, ST_F32, NULL, 0), 0);
	char cfg[600];
	snprintf(cfg, sizeof cfg, "%s/sub/adapter_config.json", f->dir);
	const char *js = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4}";
	assert_int_equal(file_write_atomic(cfg, js, strlen(js)), 0);
	assert_int_equal(lfmt_load(path, f->g, NULL, &back, &q, why, sizeof why), 0);
	assert_true(q.alpha == 4.0f && q.rslora == 0);
	tset_free(back);
	tset_free(ad);
}

static void test_check_refusals(void **state)
{
	fx *f = *state;
	char why[512];
	uint32_t r;
	tset *ad = make_adapter(0x7f, 4, 4);
	assert_int_equal(lfmt_check(ad, f->g, &r, why, sizeof why), 0);
	assert_int_equal(r, 4);
	/* for another base: every in-dim differs */
	gguf *go = open_base(f->other);
	assert_int_equal(lfmt_check(ad, go, &r, why, sizeof why), FL_EMISMATCH);
	printf("refusal (another base): %s\n", why);
	assert_non_null(strstr(why, "blk.0.attn_q.lora_a"));
	gguf_free(go);
	tset_free(ad);

	struct {
		const char *name;
		uint64_t s0, s1;
		int rc;
		const char *msg;
	} cases[] = {
	    {"blk.5.attn_q.lora_a", 4, C_DIM, FL_EMISMATCH, "no tensor blk.5.attn_q.weight"},
	    {"blk.0.attn_q.lora_x", 4, C_DIM, FL_EFORMAT, "not named"},
	    {"blk.0.ffn_down.lora_a", 4, C_DIM, FL_EMISMATCH, "expected columns"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		tset *s;
		assert_int_equal(tset_new(&s), 0);
		uint64_t sh[2] = {cases[i].s0, cases[i].s1};
		assert_int_equal(tset_insert(s, cases[i].name, 2, sh, NULL, NULL), 0);
		int rc = lfmt_check(s, f->g, &r, why, sizeof why);
		if (rc != cases[i].rc || !strstr(why, cases[i].msg)) {
			print_error("case %zu: rc %d why '%s'\n", i, rc, why);
			fail();
		}
		tset_free(s);
	}
	/* lone lora_a, rank disagreement, NaN */
	tset *s = make_adapter(1u << LORA_ATTN_Q, 4, 5), *t;
	assert_int_equal(tset_new(&t), 0);
	assert_int_equal(tset_insert(t, "blk.0.attn_q.lora_a", 2,
	                             tset_find(s, "blk.0.attn_q.lora_a")->shape, NULL, NULL),
	                 0);
	assert_int_equal(lfmt_check(t, f->g, &r, why, sizeof why), FL_EFORMAT);
	assert_non_null(strstr(why, "no partner"));
	uint64_t sb[2] = {N_HEAD * HD, 3};
	assert_int_equal(tset_insert(t, "blk.0.attn_q.lora_b", 2, sb, NULL, NULL), 0);
	assert_int_equal(lfmt_check(t, f->g, &r, why, sizeof why), FL_EFORMAT);
	assert_non_null(strstr(why, "rank"));
	tset_free(t);
	tset_find(s, "blk.1.attn_q.lora_b")->data[3] = NAN;
	assert_int_equal(lfmt_check(s, f->g, &r, why, sizeof why), FL_ENUMERIC);
	tset_free(s);
	assert_int_equal(tset_new(&s), 0);
	assert_int_equal(lfmt_check(s, f->g, &r, why, sizeof why), FL_EFORMAT);
	tset_free(s);
}

static void test_peft_config(void **state)
{
	(void)state;
	lora_spec p;
	char why[256];
	struct {
		const char *js;
		int rc;
	} c[] = {
	    {"{\"r\": 8, \"lora_alpha\": 16}", 0},
	    {"{\"r\": 8, \"lora_alpha\": 16, \"use_rslora\": true, \"rank_pattern\": {}}", 0},
	    {"{\"r\": 8}", FL_EFORMAT},
	    {"{\"r\": 0, \"lora_alpha\": 1}", FL_EFORMAT},
	    {"{\"r\": 2.5, \"lora_alpha\": 1}", FL_EFORMAT},
	    {"{\"r\": 8, \"lora_alpha\": \"16\"}", FL_EFORMAT},
	    {"{\"r\": 8, \"lora_alpha\": 16, \"rank_pattern\": {\"q_proj\": 4}}", FL_EUNSUPPORTED},
	    {"{\"r\": 8, \"lora_alpha\": 16, \"use_dora\": true}", FL_EUNSUPPORTED},
	    {"{\"r\": 8, \"lora_alpha\": 16, \"peft_type\": \"IA3\"}", FL_EUNSUPPORTED},
	    {"{\"r\": 8, \"lora_alpha\": 16, \"bias\": \"all\"}", FL_EUNSUPPORTED},
	    {"[1, 2]", FL_EFORMAT},
	    {"{\"r\": 8, ", FL_EFORMAT},
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		int rc = peft_parse_config(c[i].js, strlen(c[i].js), &p, why, sizeof why);
		if (rc != c[i].rc) {
			print_error("config %zu (%s): rc %d, want %d (%s)\n", i, c[i].js, rc,
			            c[i].rc, why);
			fail();
		}
	}
}

/* base_model_name_or_path: the Hugging Face id from the GGUF's metadata in
 * the documented order, general.name last. */
static void base_name_of(const char *const *kv, size_t n, char *out, size_t cap)
{
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	assert_int_equal(gguf_set_str(w, "general.architecture", "llama"), 0);
	assert_int_equal(gguf_set_u32(w, "llama.block_count", 2), 0);
	assert_int_equal(gguf_set_u32(w, "llama.attention.head_count", 4), 0);
	for (size_t i = 0; i + 1 < n; i += 2)
		assert_int_equal(gguf_set_str(w, kv[i], kv[i + 1]), 0);
	uint8_t *mem = NULL;
	size_t len = 0;
	assert_int_equal(gguf_writer_serialize(w, &mem, &len), 0);
	gguf_writer_free(w);
	gguf *g = NULL;
	char err[256];
	assert_int_equal(gguf_open_mem(mem, len, &g, err, sizeof err), 0);
	lfmt_base b;
	assert_int_equal(lfmt_base_from_gguf(g, &b, err, sizeof err), 0);
	snprintf(out, cap, "%s", b.name);
	gguf_free(g);
	free(mem);
}

static void test_base_hf_id(void **st)
{
	(void)st;
	char name[128];
	const char *repo[] = {
	    "general.name",    "Qwen2 0.5B",         "general.source.huggingface.repository",
	    "Qwen/Qwen2-0.5B", "general.source.url", "https://huggingface.co/other/x"};
	base_name_of(repo, 6, name, sizeof name);
	assert_string_equal(name, "Qwen/Qwen2-0.5B");
	const char *url[] = {"general.name", "Qwen2 0.5B", "general.source.repo_url",
	                     "https://huggingface.co/Qwen/Qwen2-0.5B/"};
	base_name_of(url, 4, name, sizeof name);
	assert_string_equal(name, "Qwen/Qwen2-0.5B");
	/* a URL elsewhere names no model id: general.name */
	const char *gh[] = {"general.name", "Qwen2 0.5B", "general.source.url",
	                    "https://github.com/x/y"};
	base_name_of(gh, 4, name, sizeof name);
	assert_string_equal(name, "Qwen2 0.5B");
	base_name_of(NULL, 0, name, sizeof name);
	assert_string_equal(name, "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_permutation),
	    cmocka_unit_test(test_names_and_scale),
	    cmocka_unit_test(test_peft_config),
	    cmocka_unit_test(test_base_hf_id),
	    cmocka_unit_test_setup_teardown(test_gguf_lora_round_trip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_peft_round_trip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_alpha_sources, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_check_refusals, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
