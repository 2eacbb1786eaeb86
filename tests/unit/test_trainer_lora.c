/* test_trainer_lora — the "lora" trainer behind the federation client's
 * trainer interface: found by name, layout equal to the engine's canonical
 * adapter (and to its PEFT v0 by seed), a round of local training that
 * lowers the held-out loss, FFA-LoRA leaving lora_a bit-identical, the
 * round seed changing the result, cancellation through the progress
 * callback, config errors. Tiny llama GGUF with the byte vocabulary. */
#include "testutil.h"
#include "tiny_model.h"

#include "err.h"
#include "fedlora.pb-c.h"
#include "gtype.h"
#include "model/adapter.h"
#include "tensor.h"
#include "trainer_iface.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dir;
static char model_path[512], train_path[512];

static int setup(void **state)
{
	(void)state;
	kern_set_threads(1);
	dir = tu_mkdtemp();
	tm_model t;
	tm_make(&t, MODEL_ARCH_LLAMA, 2, 4, 2, 8, 64, TOK_BYTE_VOCAB_SIZE, 1, 0, 5);
	for (int l = 0; l < 2; l++) {
		model_layer *y = &t.layers[l];
		kern_mat *k[7] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w_gate, &y->w_up, &y->w_down};
		for (int i = 0; i < 7; i++)
			for (size_t j = 0; j < (size_t)k[i]->rows * k[i]->cols; j++)
				((float *)k[i]->data)[j] *= 0.1f;
	}
	t.c.ctx = 64;
	snprintf(model_path, sizeof model_path, "%s/m.gguf", dir);
	int rc = tm_write_gguf(&t, model_path, GTYPE_F32);
	tm_free(&t);
	snprintf(train_path, sizeof train_path, "%s/train.jsonl", dir);
	FILE *f = fopen(train_path, "w");
	for (int i = 0; i < 40; i++)
		fprintf(f, "{\"text\": \"sensor %d reads %d degrees; status ok.\"}\n", i % 5,
		        20 + i % 7);
	fclose(f);
	return rc;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(dir);
	free(dir);
	return 0;
}

static ntr_spec spec_for(int ffa)
{
	ntr_spec s = {.model_path = model_path,
	              .train_path = train_path,
	              .eval_fraction = 0.2,
	              .lora = {.rank = 4,
	                       .alpha = 8,
	                       .targets = (1u << LORA_NTARGETS) - 1,
	                       .ffa = ffa,
	                       .init_seed = 1},
	              .base_quant = "none",
	              .max_ctx = 1024,
	              .max_batch = 32,
	              .max_steps = 1000,
	              .seed = 9};
	return s;
}

static int count_cb(void *arg, uint32_t step, uint32_t total, double loss)
{
	int *n = arg;
	(void)step;
	(void)total;
	assert_true(isfinite(loss));
	(*n)++;
	return 0;
}

static int stop_cb(void *arg, uint32_t step, uint32_t total, double loss)
{
	(void)arg;
	(void)total;
	(void)loss;
	return step >= 2;
}

static void round_of(const ntr_ops *ops, int ffa, const char *quant)
{
	ntr_spec s = spec_for(ffa);
	s.base_quant = quant;
	void *tr = NULL;
	char err[512] = "";
	int rc = ops->open(&s, &tr, err, sizeof err);
	if (rc != 0)
		print_error("open: %s\n", err);
	assert_int_equal(rc, 0);
	tset *lay = NULL, *g = NULL, *local = NULL;
	assert_int_equal(ops->layout(tr, &lay), 0);
	assert_true(ops->sample_count(tr) > 0);
	/* the layout is the engine's canonical adapter; v0 from its PEFT init */
	model *m = NULL;
	assert_int_equal(model_load(model_path, &m, err, sizeof err), 0);
	lora_spec as = {.rank = 4, .alpha = 8, .targets = LORA_ALL_TARGETS, .ffa = ffa};
	assert_int_equal(adp_check(model_cfg(m), &as, lay, err, sizeof err), 0);
	assert_int_equal(adp_init(model_cfg(m), &as, 1, &g), 0);
	model_free(m);
	assert_int_equal(tset_zeros_like(g, &local), 0);
	double e0 = NAN, e1 = NAN;
	assert_int_equal(ops->eval(tr, g, &e0, NULL, NULL), 0);
	Fedlora__TrainParams p;
	fedlora__train_params__init(&p);
	p.local_steps = 30;
	p.lr = 1e-2f;
	p.batch_size = 4;
	p.ctx = 32;
	p.max_grad_norm = 1.0f;
	p.seed = 77;
	ntr_result res;
	int calls = 0;
	rc = ops->train(tr, g, &p, local, &res, count_cb, &calls);
	assert_int_equal(rc, 0);
	assert_int_equal(calls, 30);
	assert_int_equal(res.steps, 30);
	assert_int_equal(res.tokens, 30 * 4 * 32);
	assert_true(res.train_loss < res.first_loss);
	assert_int_equal(ops->eval(tr, local, &e1, NULL, NULL), 0);
	printf("  %s%s: train loss %.3f -> %.3f, held-out %.3f -> %.3f\n", quant, ffa ? " FFA" : "",
	       res.first_loss, res.train_loss, e0, e1);
	assert_true(e1 < e0);
	for (size_t i = 0; i < tset_count(g); i++) {
		const tensor *a = tset_at(g, i), *b = tset_find(local, a->name);
		int same = memcmp(a->data, b->data, a->n * sizeof(float)) == 0;
		if (ffa && strstr(a->name, ".lora_a"))
			assert_true(same);
		else if (strstr(a->name, ".lora_b"))
			assert_false(same);
	}
	/* another round seed, another result; the same, the same */
	tset *l2 = NULL;
	assert_int_equal(tset_zeros_like(g, &l2), 0);
	assert_int_equal(ops->train(tr, g, &p, l2, &res, NULL, NULL), 0);
	uint8_t f1[32], f2[32];
	tset_fingerprint(local, f1);
	tset_fingerprint(l2, f2);
	assert_memory_equal(f1, f2, 32);
	p.seed = 78;
	assert_int_equal(ops->train(tr, g, &p, l2, &res, NULL, NULL), 0);
	tset_fingerprint(l2, f2);
	assert_memory_not_equal(f1, f2, 32);
	/* cancellation */
	assert_int_equal(ops->train(tr, g, &p, l2, &res, stop_cb, NULL), FL_EINTR);
	/* a bigger round shape grows the buffers */
	p.ctx = 64;
	p.batch_size = 6;
	p.local_steps = 2;
	assert_int_equal(ops->train(tr, g, &p, l2, &res, NULL, NULL), 0);
	/* wrong layout */
	tset *bad = NULL;
	tset_new(&bad);
	assert_int_not_equal(ops->train(tr, bad, &p, l2, &res, NULL, NULL), 0);
	tset_free(bad);
	tset_free(l2);
	tset_free(lay);
	tset_free(g);
	tset_free(local);
	ops->close(tr);
}

static void test_lora_trainer(void **state)
{
	(void)state;
	const ntr_ops *ops = ntr_find("lora");
	assert_non_null(ops);
	assert_non_null(strstr(ntr_names(), "lora"));
	round_of(ops, 0, "none");
	round_of(ops, 1, "q8_0");
}

static void test_open_errors(void **state)
{
	(void)state;
	const ntr_ops *ops = ntr_find("lora");
	void *tr = NULL;
	char err[512];
	ntr_spec s = spec_for(0);
	s.base_quant = "q3";
	assert_int_not_equal(ops->open(&s, &tr, err, sizeof err), 0);
	printf("  %s\n", err);
	s = spec_for(0);
	char p[600];
	snprintf(p, sizeof p, "%s/nope.txt", dir);
	s.train_path = p;
	assert_int_equal(ops->open(&s, &tr, err, sizeof err), FL_ENOENT);
	assert_non_null(strstr(err, "nope.txt"));
	printf("  %s\n", err);
	s = spec_for(0);
	s.lora.rank = 0;
	assert_int_equal(ops->open(&s, &tr, err, sizeof err), FL_ECONFIG);
	s = spec_for(0);
	s.model_path = NULL;
	assert_int_equal(ops->open(&s, &tr, err, sizeof err), FL_ECONFIG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lora_trainer),
	    cmocka_unit_test(test_open_errors),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
