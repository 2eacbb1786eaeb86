/* test_grad — the whole backward pass (node/model/grad) against central
 * finite differences of a double-precision reference of the model
 * (tests/unit/tiny_model.h, written from the architecture's definition):
 * every LoRA parameter (A and B of all seven projections of every layer),
 * and in full-training mode every base weight (embedding, norms, the seven
 * matrices, QKV biases, tied or separate output). Tiny models: llama with
 * GQA 4 heads on 2, QKV bias and tied embeddings; qwen2 (NeoX RoPE) with
 * separate output; a Q8_0 base (reference over its dequantized values).
 * qwen3, Llama 3 RoPE factors and activation checkpointing: test_grad_arch.
 * Some targets are -1 (ignored). h = 1e-5 * max(1, |p|) in double.
 * Tolerance: per tensor, max|got - fd| / max|fd| <= 1e-3 (observed values
 * printed, typically 1e-6). */
#include "grad_check.h"

#include "err.h"
#include "gtype.h"
#include "model/adapter.h"
#include "model/grad.h"
#include "model/model.h"
#include "model/train_kern.h"
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_lora_llama(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 4, 12, 17, 1, 1, 3);
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("llama GQA bias tied, all targets", &t, m, 0, LORA_ALL_TARGETS);
	lora_grads("llama, FFA-LoRA", &t, m, 1, LORA_ALL_TARGETS);
	/* only the second layer's inputs... all layers, but two targets */
	lora_grads("llama, attn_v + ffn_up", &t, m, 0, (1u << LORA_ATTN_V) | (1u << LORA_FFN_UP));
	model_free(m);
	tm_free(&t);
}

static void test_lora_qwen2(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_QWEN2, 2, 2, 1, 6, 10, 13, 0, 1, 4);
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	lora_grads("qwen2 MQA bias untied, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	tm_free(&t);
}

/* The Q8_0 base: the model reads quantized matrices; the reference their
 * dequantized values. */
static void test_lora_q8_base(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 8, 64, 11, 1, 0, 8);
	model_weights w = t.w;
	model_layer ly[TM_MAXL];
	memcpy(ly, t.layers, sizeof ly);
	w.layers = ly;
	uint8_t *qbuf[TM_MAXL * 7 + 1] = {0};
	int nq = 0;
	kern_mat *mats[TM_MAXL * 7 + 1];
	int nm = 0;
	mats[nm++] = &w.tok_embd;
	for (int l = 0; l < t.c.n_layers; l++) {
		kern_mat *x[7] = {&ly[l].wq,     &ly[l].wk,   &ly[l].wv,    &ly[l].wo,
		                  &ly[l].w_gate, &ly[l].w_up, &ly[l].w_down};
		for (int i = 0; i < 7; i++)
			mats[nm++] = x[i];
	}
	for (int i = 0; i < nm; i++) {
		kern_mat *km = mats[i];
		float *src = (float *)km->data;
		size_t rb;
		assert_int_equal(gtype_row_size(GTYPE_Q8_0, (uint64_t)km->cols, &rb), 0);
		uint8_t *q = malloc(rb * km->rows);
		for (int r = 0; r < km->rows; r++) {
			float *row = src + (size_t)r * km->cols;
			assert_int_equal(gtype_quant_row(GTYPE_Q8_0, row, q + rb * r, km->cols), 0);
			/* the truth is the dequantized value, in both blobs */
			assert_int_equal(gtype_dequant_row(GTYPE_Q8_0, q + rb * r, row, km->cols),
			                 0);
			for (int k = 0; k < km->cols; k++)
				tm_d(&t, row)[k] = row[k];
		}
		assert_int_equal(kern_mat_init(km, GTYPE_Q8_0, q, km->rows, km->cols), 0);
		qbuf[nq++] = q;
	}
	w.output = w.tok_embd;
	model *m = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &w, &m), 0);
	lora_grads("llama Q8_0 base, all targets", &t, m, 0, LORA_ALL_TARGETS);
	model_free(m);
	for (int i = 0; i < nq; i++)
		free(qbuf[i]);
	tm_free(&t);
}

static void test_full_llama(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 4, 12, 17, 1, 1, 12);
	full_grads("llama GQA bias tied", &t);
	tm_free(&t);
}

static void test_full_qwen2(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_QWEN2, 2, 2, 1, 6, 10, 13, 0, 1, 13);
	full_grads("qwen2 MQA bias untied", &t);
	tm_free(&t);
}

static void test_args(void **state)
{
	(void)state;
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 2, 2, 4, 8, 11, 1, 0, 1);
	model *m = NULL;
	grad_ws *ws = NULL;
	assert_int_equal(model_new_from_weights(&t.c, &t.w, &m), 0);
	assert_int_equal(grad_ws_new(m, 1, 4, 0, &ws), 0);
	assert_true(grad_ws_bytes(ws) > 0);
	int32_t ids[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, 5}, none[4] = {-1, -1, -1, -1};
	float *gb = calloc(t.n, sizeof(float));
	grad_layer gl[2] = {{0}};
	grad_weights gw = {.tok_embd = gb, .layers = gl};
	/* inference arena (activations not kept) */
	assert_int_equal(model_prepare(m, 1, 4, 0), 0);
	assert_int_equal(model_forward(m, ids, tgt, 1, 4, NULL), 0);
	assert_int_equal(grad_backward(ws, m, ids, tgt, 1, 4, 1, NULL, &gw, NULL), FL_EINVAL);
	assert_int_equal(model_prepare(m, 1, 4, MODEL_KEEP_ACTS), 0);
	assert_int_equal(model_forward(m, ids, none, 1, 4, NULL), 0);
	assert_int_equal(grad_backward(ws, m, ids, none, 1, 4, 1, NULL, &gw, NULL), FL_ENUMERIC);
	/* shape other than the forward's */
	assert_int_equal(model_forward(m, ids, tgt, 1, 4, NULL), 0);
	assert_int_equal(grad_backward(ws, m, ids, tgt, 1, 3, 1, NULL, &gw, NULL), FL_EINVAL);
	assert_int_equal(grad_backward(ws, m, ids, tgt, 1, 4, 1, NULL, &gw, NULL), 0);
	/* flops: backward of LoRA training ~ forward, full ~ twice */
	double f0 = model_forward_flops(&t.c, 2, 8);
	double f1 = grad_backward_flops(&t.c, 2, 8, 0), f2 = grad_backward_flops(&t.c, 2, 8, 1);
	assert_true(f1 > 0.9 * f0 && f2 > 1.8 * f0);
	free(gb);
	grad_ws_free(ws);
	model_free(m);
	tm_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lora_llama),   cmocka_unit_test(test_lora_qwen2),
	    cmocka_unit_test(test_lora_q8_base), cmocka_unit_test(test_full_llama),
	    cmocka_unit_test(test_full_qwen2),   cmocka_unit_test(test_args),
	};
	const struct CMUnitTest few[] = {
	    cmocka_unit_test(test_lora_llama),
	    cmocka_unit_test(test_full_llama),
	};
	int rc = cmocka_run_group_tests_name("serial", tests, serial, NULL);
	rc |= cmocka_run_group_tests_name("threaded", few, threaded, NULL);
	return rc;
}
