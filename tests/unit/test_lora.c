/* lora: target lists, explicit and GGUF shapes, v0 (determinism, PEFT's
 * Kaiming-uniform bound, zero B), the llama q/k row permutation against
 * known vectors and the reshape/swapaxes definition, and the PEFT export. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "gtype.h"
#include "lora.h"
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
	lora_targets_str(m, out, sizeof out);
	assert_string_equal(out, "attn_q,attn_v,ffn_down");
	assert_int_equal(lora_targets_parse("attn_q,q_proj", &m, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "q_proj"));
	assert_int_equal(lora_targets_parse(" , ", &m, why, sizeof why), FL_EINVAL);
	lora_targets_str(LORA_ALL_TARGETS, out, sizeof out);
	assert_string_equal(out, "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down");
	assert_string_equal(lora_target_peft(LORA_ATTN_OUTPUT), "self_attn.o_proj");
	assert_string_equal(lora_target_peft(LORA_FFN_GATE), "mlp.gate_proj");
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
	assert_int_equal(lora_export_peft(ad, &sp, 4, 2, 1, "tiny-llama", out), 0);
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
	assert_string_equal(cJSON_GetObjectItem(j, "base_model_name_or_path")->valuestring,
	                    "tiny-llama");
	cJSON *tm = cJSON_GetObjectItem(j, "target_modules");
	assert_int_equal(cJSON_GetArraySize(tm), 3);
	assert_string_equal(cJSON_GetArrayItem(tm, 0)->valuestring, "q_proj");
	cJSON_Delete(j);
	free(txt);
	/* without head counts, q/k cannot be un-permuted: a clear error */
	assert_int_equal(lora_export_peft(ad, &sp, 0, 0, 1, NULL, out), FL_EINVAL);
	/* unless asked not to */
	assert_int_equal(lora_export_peft(ad, &sp, 0, 0, 0, NULL, out), 0);
	tset_free(ad);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_targets),   cmocka_unit_test(test_arch_parse),
	    cmocka_unit_test(test_init),      cmocka_unit_test(test_permutation),
	    cmocka_unit_test(test_arch_gguf), cmocka_unit_test(test_export_peft),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
