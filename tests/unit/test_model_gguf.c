/* test_model_gguf — model_load: tiny llama, qwen2 and qwen3 models (the
 * latter with key_length heads, NH*hd != C, and q/k norms; llama also with
 * rope_freqs.weight and linear RoPE scaling) written with
 * the GGUF writer load to the same forward as the in-memory model built from
 * the same arrays (exactly: same kernels, same values); quantized tensors
 * stay quantized; tied output when output.weight is absent; every missing
 * or malformed piece is refused with a message naming it, never a crash. */
#include "testutil.h"

#include "err.h"
#include "gguf.h"
#include "gtype.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0xfeedULL;
static char *tmpdir;

static int setup(void **state)
{
	(void)state;
	tmpdir = tu_mkdtemp();
	return tmpdir ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(tmpdir);
	free(tmpdir);
	return 0;
}

/* Shape of the test models. */
enum { C = 64, NH = 4, NKV = 2, HD = 16, F = 96, V = 40, L = 2, CTX = 32 };

typedef struct spec {
	const char *arch;      /* general.architecture */
	uint32_t type;         /* matrices */
	int tied, bias;        /* omit output.weight; add q/k/v biases */
	const char *drop;      /* tensor to leave out */
	const char *drop_key;  /* metadata key to leave out */
	const char *bad_shape; /* tensor to write with a wrong shape */
	int heads_kv;          /* head_count_kv written */
	int hd;                /* 0: HD from C/NH; else written as attention.key_length */
	int vl;                /* value_length written when != 0 (default hd) */
	int qknorm;            /* write attn_q_norm / attn_k_norm */
	int ropeff;            /* write rope_freqs.weight */
	const char *scaling;   /* rope.scaling.type ("linear": factor 4) */
} spec;

static int hd_of(const spec *s)
{
	return s->hd ? s->hd : HD;
}

static int linear_of(const spec *s)
{
	return s->scaling && strcmp(s->scaling, "linear") == 0;
}

/* Values of tensor `name` (deterministic in the name), n floats. */
static void values(const char *name, float *out, size_t n, int is_norm)
{
	uint64_t s = 1469598103934665603ULL;
	for (const char *p = name; *p; p++)
		s = (s ^ (uint8_t)*p) * 1099511628211ULL;
	for (size_t i = 0; i < n; i++)
		out[i] = is_norm ? 1.0f + 0.1f * (float)(tu_randu(&s) - 0.5)
		                 : 0.3f * (float)(tu_randu(&s) * 2 - 1);
}

static int add(gguf_writer *w, const spec *s, const char *name, int rows, int cols)
{
	if (s->drop && strcmp(s->drop, name) == 0)
		return 0;
	int vec = rows == 0;
	size_t n = (size_t)(vec ? 1 : rows) * cols;
	float *f = malloc(sizeof(float) * n);
	values(name, f, n, vec && (strstr(name, "norm") || strstr(name, "rope_freqs")));
	uint32_t type = vec ? GTYPE_F32 : s->type;
	size_t rb;
	assert_int_equal(gtype_row_size(type, (uint64_t)cols, &rb), 0);
	uint8_t *data = malloc(rb * (vec ? 1 : (size_t)rows));
	for (int r = 0; r < (vec ? 1 : rows); r++)
		assert_int_equal(
		    gtype_quant_row(type, f + (size_t)r * cols, data + r * rb, (size_t)cols), 0);
	free(f);
	uint64_t ne[2] = {(uint64_t)cols, (uint64_t)rows};
	if (s->bad_shape && strcmp(s->bad_shape, name) == 0 && !vec) {
		/* one row too many, zero data of the matching size */
		free(data);
		ne[1]++;
		data = calloc(ne[1], rb);
		return gguf_add_tensor_own(w, name, type, 2, ne, data, rb * ne[1]);
	}
	return gguf_add_tensor_own(w, name, type, vec ? 1 : 2, ne, data, rb * (vec ? 1 : rows));
}

static void setk(gguf_writer *w, const spec *s, const char *suffix, uint32_t v)
{
	char key[96];
	snprintf(key, sizeof key, "%s.%s", s->arch, suffix);
	if (s->drop_key && strcmp(s->drop_key, suffix) == 0)
		return;
	assert_int_equal(gguf_set_u32(w, key, v), 0);
}

static const char *write_model(const spec *s, const char *file)
{
	static char path[512];
	snprintf(path, sizeof path, "%s/%s", tmpdir, file);
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	assert_int_equal(gguf_set_str(w, "general.architecture", s->arch), 0);
	setk(w, s, "context_length", CTX);
	setk(w, s, "embedding_length", C);
	setk(w, s, "block_count", L);
	setk(w, s, "feed_forward_length", F);
	setk(w, s, "attention.head_count", NH);
	setk(w, s, "attention.head_count_kv", (uint32_t)s->heads_kv);
	if (!(s->drop_key && strcmp(s->drop_key, "attention.layer_norm_rms_epsilon") == 0)) {
		char key[96];
		snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", s->arch);
		assert_int_equal(gguf_set_f32(w, key, 1e-5f), 0);
	}
	if (s->hd) {
		setk(w, s, "attention.key_length", (uint32_t)s->hd);
		setk(w, s, "attention.value_length", (uint32_t)(s->vl ? s->vl : s->hd));
	}
	if (s->scaling) {
		char key[96];
		snprintf(key, sizeof key, "%s.rope.scaling.type", s->arch);
		assert_int_equal(gguf_set_str(w, key, s->scaling), 0);
		snprintf(key, sizeof key, "%s.rope.scaling.factor", s->arch);
		assert_int_equal(gguf_set_f32(w, key, 4.0f), 0);
	}
	const int HDs = hd_of(s);
	char n[64];
	if (s->ropeff)
		assert_int_equal(add(w, s, "rope_freqs.weight", 0, HDs / 2), 0);
	assert_int_equal(add(w, s, "token_embd.weight", V, C), 0);
	assert_int_equal(add(w, s, "output_norm.weight", 0, C), 0);
	if (!s->tied)
		assert_int_equal(add(w, s, "output.weight", V, C), 0);
	for (int l = 0; l < L; l++) {
#define NM(x) (snprintf(n, sizeof n, "blk.%d." x, l), n)
		assert_int_equal(add(w, s, NM("attn_norm.weight"), 0, C), 0);
		assert_int_equal(add(w, s, NM("attn_q.weight"), NH * HDs, C), 0);
		assert_int_equal(add(w, s, NM("attn_k.weight"), NKV * HDs, C), 0);
		assert_int_equal(add(w, s, NM("attn_v.weight"), NKV * HDs, C), 0);
		if (s->bias) {
			assert_int_equal(add(w, s, NM("attn_q.bias"), 0, NH * HDs), 0);
			assert_int_equal(add(w, s, NM("attn_k.bias"), 0, NKV * HDs), 0);
			assert_int_equal(add(w, s, NM("attn_v.bias"), 0, NKV * HDs), 0);
		}
		if (s->qknorm) {
			assert_int_equal(add(w, s, NM("attn_q_norm.weight"), 0, HDs), 0);
			assert_int_equal(add(w, s, NM("attn_k_norm.weight"), 0, HDs), 0);
		}
		assert_int_equal(add(w, s, NM("attn_output.weight"), C, NH * HDs), 0);
		assert_int_equal(add(w, s, NM("ffn_norm.weight"), 0, C), 0);
		assert_int_equal(add(w, s, NM("ffn_gate.weight"), F, C), 0);
		assert_int_equal(add(w, s, NM("ffn_up.weight"), F, C), 0);
		assert_int_equal(add(w, s, NM("ffn_down.weight"), C, F), 0);
#undef NM
	}
	assert_int_equal(gguf_writer_write(w, path), 0);
	gguf_writer_free(w);
	return path;
}

/* The same model assembled in memory from values() (f32). */
typedef struct mem {
	float *blob;
	model_layer layers[L];
	model_weights w;
} mem;

static const float *vec(mem *m, size_t *off, const char *name, int n)
{
	float *p = m->blob + *off;
	values(name, p, (size_t)n, strstr(name, "norm") != NULL);
	*off += (size_t)n;
	return p;
}

static kern_mat mat(mem *m, size_t *off, const char *name, int rows, int cols, uint32_t type)
{
	/* values quantized and dequantized exactly like the file's */
	float *p = m->blob + *off;
	values(name, p, (size_t)rows * cols, 0);
	size_t rb;
	assert_int_equal(gtype_row_size(type, (uint64_t)cols, &rb), 0);
	uint8_t *q = malloc(rb);
	for (int r = 0; r < rows; r++) {
		assert_int_equal(gtype_quant_row(type, p + (size_t)r * cols, q, (size_t)cols), 0);
		assert_int_equal(gtype_dequant_row(type, q, p + (size_t)r * cols, (size_t)cols), 0);
	}
	free(q);
	*off += (size_t)rows * cols;
	kern_mat k;
	assert_int_equal(kern_mat_init(&k, GTYPE_F32, p, rows, cols), 0);
	return k;
}

static void build_mem(mem *m, const spec *s)
{
	size_t off = 0;
	char n[64];
	const int HDs = hd_of(s);
	memset(m, 0, sizeof *m);
	m->blob = malloc(sizeof(float) * 400000);
	m->w.tok_embd = mat(m, &off, "token_embd.weight", V, C, s->type);
	m->w.output_norm = vec(m, &off, "output_norm.weight", C);
	if (s->tied) {
		m->w.output = m->w.tok_embd;
		m->w.tied = 1;
	} else {
		m->w.output = mat(m, &off, "output.weight", V, C, s->type);
	}
	for (int l = 0; l < L; l++) {
		model_layer *y = &m->layers[l];
		memset(y, 0, sizeof *y);
#define NM(x) (snprintf(n, sizeof n, "blk.%d." x, l), n)
		y->attn_norm = vec(m, &off, NM("attn_norm.weight"), C);
		y->wq = mat(m, &off, NM("attn_q.weight"), NH * HDs, C, s->type);
		y->wk = mat(m, &off, NM("attn_k.weight"), NKV * HDs, C, s->type);
		y->wv = mat(m, &off, NM("attn_v.weight"), NKV * HDs, C, s->type);
		if (s->bias) {
			y->bq = vec(m, &off, NM("attn_q.bias"), NH * HDs);
			y->bk = vec(m, &off, NM("attn_k.bias"), NKV * HDs);
			y->bv = vec(m, &off, NM("attn_v.bias"), NKV * HDs);
		}
		if (s->qknorm) {
			y->q_norm = vec(m, &off, NM("attn_q_norm.weight"), HDs);
			y->k_norm = vec(m, &off, NM("attn_k_norm.weight"), HDs);
		}
		y->wo = mat(m, &off, NM("attn_output.weight"), C, NH * HDs, s->type);
		y->ffn_norm = vec(m, &off, NM("ffn_norm.weight"), C);
		y->w_gate = mat(m, &off, NM("ffn_gate.weight"), F, C, s->type);
		y->w_up = mat(m, &off, NM("ffn_up.weight"), F, C, s->type);
		y->w_down = mat(m, &off, NM("ffn_down.weight"), C, F, s->type);
#undef NM
	}
	if (s->ropeff || linear_of(s)) {
		float *ff = m->blob + off;
		if (s->ropeff)
			values("rope_freqs.weight", ff, (size_t)HDs / 2, 1);
		for (int i = 0; i < HDs / 2; i++)
			ff[i] = (s->ropeff ? ff[i] : 1.0f) * (linear_of(s) ? 4.0f : 1.0f);
		off += (size_t)HDs / 2;
		m->w.rope_ff = ff;
	}
	assert_true(off <= 400000);
	m->w.layers = m->layers;
}

static void roundtrip(const spec *s, const char *file)
{
	const char *path = write_model(s, file);
	model *a = NULL, *b = NULL;
	char err[256] = "";
	int rc = model_load(path, &a, err, sizeof err);
	if (rc != 0)
		print_error("model_load: %s\n", err);
	assert_int_equal(rc, 0);
	const model_config *c = model_cfg(a);
	assert_string_equal(model_arch_name(c->arch), s->arch);
	assert_int_equal(c->dim, C);
	assert_int_equal(c->n_layers, L);
	assert_int_equal(c->n_heads, NH);
	assert_int_equal(c->n_kv_heads, NKV);
	assert_int_equal(c->head_dim, hd_of(s));
	assert_int_equal(c->ffn_dim, F);
	assert_int_equal(c->vocab, V);
	assert_int_equal(c->ctx, CTX);
	assert_int_equal(c->n_rot, hd_of(s));
	assert_int_equal(c->rope_mode,
	                 strcmp(s->arch, "llama") != 0 ? KERN_ROPE_NEOX : KERN_ROPE_NORM);
	assert_int_equal(model_wts(a)->rope_ff != NULL, s->ropeff || linear_of(s));
	assert_true(c->rope_base == 10000.0f);
	assert_true(c->norm_eps == 1e-5f);
	assert_int_equal(model_wts(a)->tied, s->tied);
	assert_int_equal(model_wts(a)->layers[0].wq.type, s->type); /* stays quantized */
	assert_non_null(model_gguf(a));

	mem m;
	build_mem(&m, s);
	model_config cb = *c;
	assert_int_equal(model_new_from_weights(&cb, &m.w, &b), 0);
	assert_int_equal(model_param_count(a), model_param_count(b));
	const int Bt = 2, T = 7;
	int32_t tok[14];
	for (int i = 0; i < Bt * T; i++)
		tok[i] = (int32_t)(tu_rand(&rng) % V);
	assert_int_equal(model_prepare(a, Bt, T, 0), 0);
	assert_int_equal(model_prepare(b, Bt, T, 0), 0);
	float la, lb;
	assert_int_equal(model_forward(a, tok, tok, Bt, T, &la), 0);
	assert_int_equal(model_forward(b, tok, tok, Bt, T, &lb), 0);
	const float *ga = model_logits(a), *gb = model_logits(b);
	double worst = 0, den = 0;
	for (int i = 0; i < Bt * T * V; i++) {
		worst = fmax(worst, fabs((double)ga[i] - gb[i]));
		den = fmax(den, fabs((double)gb[i]));
	}
	printf("  %s %s%s%s%s%s%s: loaded vs in-memory logits max rel diff %.2e, loss %.5f/%.5f\n",
	       s->arch, gtype_name(s->type), s->tied ? " tied" : "", s->bias ? " bias" : "",
	       s->ropeff ? " rope_freqs" : "", s->scaling ? " scaling " : "",
	       s->scaling ? s->scaling : "", worst / den, la, lb);
	assert_true(worst / den <= 1e-6);
	model_free(a);
	model_free(b);
	free(m.blob);
}

static void test_load_roundtrip(void **state)
{
	(void)state;
	spec s1 = {.arch = "llama", .type = GTYPE_F32, .tied = 1, .heads_kv = NKV};
	roundtrip(&s1, "llama-f32.gguf");
	spec s2 = {.arch = "llama", .type = GTYPE_Q8_0, .heads_kv = NKV};
	roundtrip(&s2, "llama-q8.gguf");
	spec s3 = {.arch = "qwen2", .type = GTYPE_Q4_0, .bias = 1, .heads_kv = NKV};
	roundtrip(&s3, "qwen2-q4.gguf");
	spec s4 = {.arch = "llama", .type = GTYPE_F16, .tied = 1, .heads_kv = NKV};
	roundtrip(&s4, "llama-f16.gguf");
	/* qwen3: 4 heads of 24 (96 != C 64), per-head q/k norms, tied */
	spec s5 = {
	    .arch = "qwen3", .type = GTYPE_Q8_0, .tied = 1, .heads_kv = NKV, .hd = 24, .qknorm = 1};
	roundtrip(&s5, "qwen3-q8.gguf");
	/* llama 3: RoPE factors, also combined with linear scaling */
	spec s6 = {.arch = "llama", .type = GTYPE_Q5_0, .heads_kv = NKV, .ropeff = 1};
	roundtrip(&s6, "llama3-q5_0.gguf");
	spec s7 = {
	    .arch = "llama", .type = GTYPE_F32, .heads_kv = NKV, .ropeff = 1, .scaling = "linear"};
	roundtrip(&s7, "llama-linear.gguf");
	spec s8 = {.arch = "llama", .type = GTYPE_Q4_1, .heads_kv = NKV, .scaling = "none"};
	roundtrip(&s8, "llama-q4_1.gguf");
}

static void expect_refused(const spec *s, int want_rc, const char *want_text)
{
	const char *path = write_model(s, "bad.gguf");
	model *m = NULL;
	char err[256] = "";
	int rc = model_load(path, &m, err, sizeof err);
	printf("  refused (%s): %s\n", fl_errname(rc), err);
	assert_int_equal(rc, want_rc);
	assert_null(m);
	if (!strstr(err, want_text)) {
		print_error("message '%s' does not name '%s'\n", err, want_text);
		fail();
	}
}

static void test_load_refusals(void **state)
{
	(void)state;
	spec base = {.arch = "llama", .type = GTYPE_F32, .heads_kv = NKV};
	spec s = base;
	s.arch = "gpt2";
	expect_refused(&s, FL_EUNSUPPORTED, "gpt2");
	s = base;
	s.drop = "blk.1.ffn_up.weight";
	expect_refused(&s, FL_EFORMAT, "blk.1.ffn_up.weight");
	s = base;
	s.drop = "output_norm.weight";
	expect_refused(&s, FL_EFORMAT, "output_norm.weight");
	s = base;
	s.drop_key = "embedding_length";
	expect_refused(&s, FL_EFORMAT, "llama.embedding_length");
	s = base;
	s.drop_key = "attention.layer_norm_rms_epsilon";
	expect_refused(&s, FL_EFORMAT, "layer_norm_rms_epsilon");
	s = base;
	s.bad_shape = "blk.0.attn_k.weight";
	expect_refused(&s, FL_EFORMAT, "blk.0.attn_k.weight");
	s = base;
	s.heads_kv = 3; /* 4 heads on 3 kv heads */
	expect_refused(&s, FL_EFORMAT, "head_count_kv");
	s = base;
	s.arch = "qwen2"; /* qwen2 without its biases */
	expect_refused(&s, FL_EFORMAT, "bias");
	s = base;
	s.arch = "qwen3"; /* qwen3 without its q/k norms */
	expect_refused(&s, FL_EFORMAT, "attn_q_norm");
	s = base;
	s.qknorm = 1; /* llama with q/k norms: not silently ignored */
	expect_refused(&s, FL_EUNSUPPORTED, "attn_q_norm");
	s = base;
	s.arch = "qwen3";
	s.qknorm = 1;
	s.drop = "blk.1.attn_k_norm.weight";
	expect_refused(&s, FL_EFORMAT, "attn_k_norm");
	s = base;
	s.scaling = "yarn";
	expect_refused(&s, FL_EUNSUPPORTED, "yarn");
	s = base;
	s.hd = 24;
	s.vl = 16;
	expect_refused(&s, FL_EUNSUPPORTED, "value_length");
	s = base;
	s.hd = 24;
	s.bad_shape = "blk.0.attn_q.weight";
	expect_refused(&s, FL_EFORMAT, "blk.0.attn_q.weight");
	/* not a GGUF at all */
	char path[512];
	snprintf(path, sizeof path, "%s/junk.gguf", tmpdir);
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	fputs("this is not a model", f);
	fclose(f);
	model *m = NULL;
	char err[256] = "";
	assert_true(model_load(path, &m, err, sizeof err) < 0);
	assert_null(m);
	assert_true(err[0] != 0);
	assert_true(model_load("/nonexistent/x.gguf", &m, err, sizeof err) < 0);
}

int main(void)
{
	kern_set_threads(2);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_load_roundtrip),
	    cmocka_unit_test(test_load_refusals),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
