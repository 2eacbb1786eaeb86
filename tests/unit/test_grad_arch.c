/* test_grad_arch — the backward pass on the newer architectures against
 * finite differences of the double reference (tests/unit/grad_check.h):
 * qwen3 (per-head q/k RMSNorm, NH*hd != C) and llama with Llama 3 RoPE
 * frequency factors over all three regimes, LoRA and full training; and
 * the same gradients with activation checkpointing (MODEL_CHECKPOINT).
 * Tolerance 1e-3 per tensor (observed values printed, about 1e-6). */
#include "grad_check.h"

/* Qwen3 (per-head q/k RMSNorm, NH*hd != C) and Llama 3 (RoPE frequency
 * factors over all three regimes of the llama3 rule), LoRA and full. */
static void make_qwen3(tm_model *t, uint64_t seed)
{
	tm_opts o = {.C = 10};
	tm_make2(t, MODEL_ARCH_QWEN3, 2, 4, 2, 4, 12, 17, 1, 0, seed, &o);
}

static void make_llama3(tm_model *t, uint64_t seed)
{
	float ff[3];
	tm_llama3_ff(ff, 6, 10000.0, 8.0, 1.0, 4.0, 32.0);
	tm_opts o = {.ff = ff};
	tm_make2(t, MODEL_ARCH_LLAMA, 2, 2, 1, 6, 10, 13, 0, 0, seed, &o);
	assert_true(t->w.rope_ff[0] == 1.0f && t->w.rope_ff[2] == 8.0f);
}

static void test_lora_qwen3_llama3(void **state)
{
	(void)state;
	tm_model t;
	model *m = NULL;
	make_qwen3(&t, 21);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("qwen3 qk-norm C=10 QD=16, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	tm_free(&t);
	make_llama3(&t, 22);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("llama3 rope_freqs untied, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	tm_free(&t);
}

static void test_full_qwen3_llama3(void **state)
{
	(void)state;
	tm_model t;
	make_qwen3(&t, 23);
	full_grads("qwen3 qk-norm", &t);
	tm_free(&t);
	make_llama3(&t, 24);
	full_grads("llama3 rope_freqs", &t);
	tm_free(&t);
}

/* Activation checkpointing: the same gradients from recomputed layers
 * (LoRA and full, qwen3 and Llama 3 shapes, a 3-layer llama), against the
 * same finite differences; without a forward or checkpointing,
 * model_recompute_layer refuses. */
static void test_checkpoint(void **state)
{
	(void)state;
	tm_model t;
	model *m = NULL;
	g_flags = MODEL_CHECKPOINT;
	make_qwen3(&t, 31);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("checkpointed qwen3, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	full_grads("checkpointed qwen3", &t);
	tm_free(&t);
	make_llama3(&t, 32);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("checkpointed llama3, attn_v + ffn_up", &t, m, 0,
	           (1u << LORA_ATTN_V) | (1u << LORA_FFN_UP));
	model_free(m);
	tm_free(&t);
	tm_make(&t, MODEL_ARCH_LLAMA, 3, 4, 2, 4, 12, 17, 1, 1, 33);
	full_grads("checkpointed llama 3 layers", &t);
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	assert_int_equal(model_recompute_layer(m, 0), FL_EINVAL); /* no arena */
	assert_int_equal(model_prepare(m, 1, 4, MODEL_KEEP_ACTS), 0);
	assert_int_equal(model_recompute_layer(m, 0), FL_EINVAL); /* not checkpointed */
	assert_int_equal(model_prepare(m, 1, 4, MODEL_CHECKPOINT), 0);
	int32_t ids[4] = {1, 2, 3, 4};
	assert_int_equal(model_forward(m, ids, NULL, 1, 4, NULL), 0);
	assert_int_equal(model_recompute_layer(m, 3), FL_EINVAL);
	assert_int_equal(model_recompute_layer(m, 2), 0);
	model_free(m);
	tm_free(&t);
	g_flags = MODEL_KEEP_ACTS;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lora_qwen3_llama3),
	    cmocka_unit_test(test_full_qwen3_llama3),
	    cmocka_unit_test(test_checkpoint),
	};
	return cmocka_run_group_tests_name("serial", tests, serial, NULL);
}
