/* cmd_init_model — `fedlora-node init-model`: writes a randomly initialised
 * Llama-family GGUF (llama, qwen2 or qwen3) of a given shape, deterministic
 * by seed, in any supported tensor type or a Q4_K_M / Q5_K_M-style mix,
 * optionally with Llama 3 RoPE factors, with the built-in byte vocabulary or
 * the vocabulary of another GGUF.
 *
 * Initialisation (GPT-2/llm.c style): every matrix N(0, 0.02), the two
 * residual projections (attn_output, ffn_down) N(0, 0.02/sqrt(2L)) (--std
 * changes 0.02), norms 1,
 * qwen2 biases 0. Each row draws from its own generator seeded from
 * (seed, tensor, row), so the file is identical whatever the thread count.
 * Metadata follows the GGUF conventions (general.*, <arch>.*, tokenizer.*)
 * so other GGUF tools load the file. */
#include "cmd_init_model.h"

#include "buf.h"
#include "cli.h"
#include "cmd_util.h"
#include "err.h"
#include "gguf.h"
#include "gtype.h"
#include "model/model.h"
#include "model/sample.h"
#include "model/tokenizer.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "init-model"

static void usage(FILE *f)
{
	fprintf(
	    f, "Usage: fedlora-node init-model --out M.gguf --dim D --layers L --heads H\n"
	       "           --ffn F --ctx C [options]\n"
	       "\n"
	       "Writes a randomly initialised Llama-family model as GGUF.\n"
	       "\n"
	       "  --out PATH          output file (written atomically)\n"
	       "  --dim D             embedding width (a multiple of --heads unless --head-dim)\n"
	       "  --head-dim HD       head size (default dim/heads; even); written as\n"
	       "                      attention.key_length/value_length (Qwen3: heads*HD != dim)\n"
	       "  --layers L          decoder blocks\n"
	       "  --heads H           attention heads\n"
	       "  --kv-heads K        key/value heads (divides H; default H)\n"
	       "  --ffn F             feed-forward width\n"
	       "  --ctx C             context length\n"
	       "  --arch A            llama (default), qwen2 (QKV bias, NeoX RoPE) or qwen3\n"
	       "                      (per-head q/k RMSNorm, NeoX RoPE)\n"
	       "  --type T            f32 (default), f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1,\n"
	       "                      q4_k, q5_k, q6_k, or the mixes q4_k_m / q5_k_m (q4_k /\n"
	       "                      q5_k with output, and attn_v/ffn_down of every other\n"
	       "                      layer, in q6_k); as llama.cpp does, a K-quant tensor whose\n"
	       "                      rows are not a multiple of 256 falls back to q5_0 (q4_k),\n"
	       "                      q5_1 (q5_k) or q8_0 (q6_k); D and F must be multiples of 32\n"
	       "  --rope-llama3 F,LO,HI,N  Llama 3 RoPE scaling: writes rope_freqs.weight with\n"
	       "                      factor F, low/high frequency factors LO/HI, original\n"
	       "                      context N (Llama 3.2: 32,1,4,8192)\n"
	       "  --vocab-from X      copy the tokenizer.* metadata (vocabulary) of GGUF X;\n"
	       "                      default: built-in byte vocabulary (256 bytes + BOS/EOS/UNK)\n"
	       "  --seed S            random seed (default 1)\n"
	       "  --tie-embeddings    no output.weight: the output layer reuses token_embd\n"
	       "  --rope-base B       rope.freq_base (default 10000)\n"
	       "  --norm-eps E        RMSNorm epsilon (default 1e-5)\n"
	       "  --name NAME         general.name (default fedlora-random)\n"
	       "  --threads N         threads (default: OpenMP default)\n");
}

typedef struct opts opts;
static int parse_type(const char *v, opts *o);

struct opts {
	const char *out, *vocab_from, *name;
	int dim, layers, heads, kv_heads, head_dim, ffn, ctx, arch, tie, threads;
	uint32_t type;
	int mix;      /* 0, or 1 for the _m mixes of type (Q4_K or Q5_K) */
	double r3[4]; /* --rope-llama3 factor, low, high, original context; r3[0] 0: none */
	uint64_t seed;
	float rope_base, norm_eps, std;
};

static int parse_type(const char *v, opts *o)
{
	static const struct {
		const char *n;
		uint32_t t;
		int mix;
	} tab[] = {
	    {"f32", GTYPE_F32, 0},     {"f16", GTYPE_F16, 0},   {"bf16", GTYPE_BF16, 0},
	    {"q8_0", GTYPE_Q8_0, 0},   {"q4_0", GTYPE_Q4_0, 0}, {"q4_1", GTYPE_Q4_1, 0},
	    {"q5_0", GTYPE_Q5_0, 0},   {"q5_1", GTYPE_Q5_1, 0}, {"q4_k", GTYPE_Q4_K, 0},
	    {"q5_k", GTYPE_Q5_K, 0},   {"q6_k", GTYPE_Q6_K, 0}, {"q4_k_m", GTYPE_Q4_K, 1},
	    {"q5_k_m", GTYPE_Q5_K, 1},
	};
	for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
		if (strcmp(v, tab[i].n) == 0) {
			o->type = tab[i].t;
			o->mix = tab[i].mix;
			return 0;
		}
	return cmdu_usage(CMD,
	                  "--type: expected f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, "
	                  "q4_k, q5_k, q6_k, q4_k_m or q5_k_m, got '%s'",
	                  v);
}

/* Tensor kinds for mat_type. */
enum { MK_EMBD, MK_OUTPUT, MK_V_DOWN, MK_OTHER };

/* The stored type of a matrix of `cols` columns: --type, Q6_K for the _m
 * mixes' output and every other layer's attn_v / ffn_down, and for K-quants
 * whose rows are not a multiple of 256 the 32-element fallback llama.cpp's
 * quantizer uses (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). */
static uint32_t mat_type(const opts *o, int kind, int layer, int cols)
{
	uint32_t t = o->type;
	if (o->mix && (kind == MK_OUTPUT || (kind == MK_V_DOWN && layer % 2 == 0)))
		t = GTYPE_Q6_K;
	if (gtype_block_elems(t) == GTYPE_QKK && cols % GTYPE_QKK != 0)
		t = t == GTYPE_Q4_K ? GTYPE_Q5_0 : t == GTYPE_Q5_K ? GTYPE_Q5_1 : GTYPE_Q8_0;
	return t;
}

static int parse(int argc, char **argv, void *out)
{
	opts *o = out;
	const char *v;
	int r, rc = 0;
	memset(o, 0, sizeof *o);
	o->arch = MODEL_ARCH_LLAMA;
	o->type = GTYPE_F32;
	o->seed = 1;
	o->rope_base = 10000.0f;
	o->norm_eps = 1e-5f;
	o->std = 0.02f;
	o->name = "fedlora-random";
	o->kv_heads = -1;
	for (int i = 1; i < argc && rc == 0; i++) {
		if ((r = cmdu_opt(CMD, argc, argv, &i, "--out", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->out = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--dim", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--dim", v, 1, MODEL_MAX_DIM, &o->dim);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--layers", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--layers", v, 1, MODEL_MAX_LAYERS, &o->layers);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--heads", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--heads", v, 1, MODEL_MAX_HEADS, &o->heads);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--kv-heads", &v)) != 0)
			rc = r < 0
			         ? CLI_USAGE
			         : cmdu_int(CMD, "--kv-heads", v, 1, MODEL_MAX_HEADS, &o->kv_heads);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--ffn", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--ffn", v, 1, 16 * MODEL_MAX_DIM, &o->ffn);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--ctx", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--ctx", v, 1, MODEL_MAX_CTX, &o->ctx);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--arch", &v)) != 0) {
			if (r < 0)
				rc = CLI_USAGE;
			else if (strcmp(v, "llama") == 0)
				o->arch = MODEL_ARCH_LLAMA;
			else if (strcmp(v, "qwen2") == 0)
				o->arch = MODEL_ARCH_QWEN2;
			else if (strcmp(v, "qwen3") == 0)
				o->arch = MODEL_ARCH_QWEN3;
			else
				rc = cmdu_usage(
				    CMD, "--arch: expected llama, qwen2 or qwen3, got '%s'", v);
		} else if ((r = cmdu_opt(CMD, argc, argv, &i, "--type", &v)) != 0) {
			rc = r < 0 ? CLI_USAGE : parse_type(v, o);
		} else if ((r = cmdu_opt(CMD, argc, argv, &i, "--head-dim", &v)) != 0) {
			rc = r < 0 ? CLI_USAGE
			           : cmdu_int(CMD, "--head-dim", v, 2, MODEL_MAX_HEAD_DIM,
			                      &o->head_dim);
		} else if ((r = cmdu_opt(CMD, argc, argv, &i, "--rope-llama3", &v)) != 0) {
			char end = 0;
			if (r < 0)
				rc = CLI_USAGE;
			else if (sscanf(v, "%lf,%lf,%lf,%lf%c", &o->r3[0], &o->r3[1], &o->r3[2],
			                &o->r3[3], &end) != 4 ||
			         !(o->r3[0] >= 1 && o->r3[0] <= 1e6) || !(o->r3[1] > 0) ||
			         !(o->r3[2] > o->r3[1]) || !(o->r3[3] >= 1 && o->r3[3] <= 1e9))
				rc = cmdu_usage(
				    CMD,
				    "--rope-llama3: expected FACTOR,LOW,HIGH,ORIG_CTX with "
				    "FACTOR >= 1, 0 < LOW < HIGH, got '%s'",
				    v);
		} else if ((r = cmdu_opt(CMD, argc, argv, &i, "--vocab-from", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->vocab_from = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--seed", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : cmdu_u64(CMD, "--seed", v, &o->seed);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--rope-base", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_float(CMD, "--rope-base", v, 1.0, 1e12, &o->rope_base);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--norm-eps", &v)) != 0)
			rc = r < 0 ? CLI_USAGE
			           : cmdu_float(CMD, "--norm-eps", v, 1e-12, 1.0, &o->norm_eps);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--std", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : cmdu_float(CMD, "--std", v, 0.0, 10.0, &o->std);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--name", &v)) != 0)
			rc = r < 0 ? CLI_USAGE : (o->name = v, 0);
		else if ((r = cmdu_opt(CMD, argc, argv, &i, "--threads", &v)) != 0)
			rc =
			    r < 0 ? CLI_USAGE : cmdu_int(CMD, "--threads", v, 0, 1024, &o->threads);
		else if (strcmp(argv[i], "--tie-embeddings") == 0)
			o->tie = 1;
		else
			rc = cmdu_usage(CMD, "unknown argument '%s'", argv[i]);
	}
	if (rc != 0)
		return rc;
	if (!o->out || !o->dim || !o->layers || !o->heads || !o->ffn || !o->ctx)
		return cmdu_usage(CMD,
		                  "--out, --dim, --layers, --heads, --ffn and --ctx are required");
	if (o->kv_heads < 0)
		o->kv_heads = o->heads;
	if (!o->head_dim && o->dim % o->heads != 0)
		return cmdu_usage(CMD, "--dim %d is not a multiple of --heads %d", o->dim,
		                  o->heads);
	if (!o->head_dim)
		o->head_dim = o->dim / o->heads;
	if (o->head_dim % 2 != 0)
		return cmdu_usage(CMD, "head size %d must be even for RoPE", o->head_dim);
	if (o->heads % o->kv_heads != 0)
		return cmdu_usage(CMD, "--heads %d is not a multiple of --kv-heads %d", o->heads,
		                  o->kv_heads);
	/* K-quants fall back to 32-element types per tensor (mat_type) */
	size_t blk = gtype_block_elems(o->type) > 32 ? 32 : gtype_block_elems(o->type);
	if (o->dim % (int)blk != 0 || o->ffn % (int)blk != 0 ||
	    (o->heads * o->head_dim) % (int)blk != 0)
		return cmdu_usage(CMD,
		                  "--type %s needs --dim, --ffn and heads*head-dim to be "
		                  "multiples of %zu",
		                  gtype_name(o->type), blk);
	return 0;
}

/* splitmix-style mixing of (seed, tensor, row) into one generator seed. */
static uint64_t row_seed(uint64_t seed, uint64_t tensor, uint64_t row)
{
	sample_rng r;
	sample_seed(&r, seed ^ (tensor * 0x9e3779b97f4a7c15ULL));
	uint64_t a = sample_u64(&r);
	sample_seed(&r, a ^ (row * 0xd1b54a32d192ed03ULL));
	return sample_u64(&r);
}

/* Adds a [rows, cols] matrix N(0, std) in the type mat_type gives for kind
 * (of layer; -1 outside the blocks). tensor_id keys the RNG. */
static int add_matrix(gguf_writer *w, const opts *o, const char *name, int kind, int layer,
                      int rows, int cols, double std, uint64_t tensor_id)
{
	size_t rb, total;
	const uint32_t type = mat_type(o, kind, layer, cols);
	int rc = gtype_row_size(type, (uint64_t)cols, &rb);
	if (rc != 0 || sz_mul(rb, (size_t)rows, &total) != 0)
		return rc ? rc : FL_EOVERFLOW;
	uint8_t *data = malloc(total);
	float *tmp = malloc(sizeof(float) * (size_t)cols * (size_t)kern_threads());
	if (!data || !tmp) {
		free(data);
		free(tmp);
		return FL_ENOMEM;
	}
	int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
	for (int r = 0; r < rows; r++) {
		float *row = tmp + (size_t)omp_get_thread_num() * cols;
		sample_rng g;
		sample_seed(&g, row_seed(o->seed, tensor_id, (uint64_t)r));
		for (int c = 0; c < cols; c++)
			row[c] = (float)(sample_normal(&g) * std);
		bad |= gtype_quant_row(type, row, data + (size_t)r * rb, (size_t)cols) != 0;
	}
	free(tmp);
	if (bad) {
		free(data);
		return FL_ENUMERIC;
	}
	uint64_t ne[2] = {(uint64_t)cols, (uint64_t)rows};
	return gguf_add_tensor_own(w, name, type, 2, ne, data, total);
}

/* Adds an f32 vector of n copies of `value`. */
static int add_vector(gguf_writer *w, const char *name, int n, float value)
{
	float *data = malloc(sizeof(float) * (size_t)n);
	if (!data)
		return FL_ENOMEM;
	for (int i = 0; i < n; i++)
		data[i] = value;
	uint64_t ne[1] = {(uint64_t)n};
	return gguf_add_tensor_own(w, name, GTYPE_F32, 1, ne, data, sizeof(float) * (size_t)n);
}

/* general.file_type: llama.cpp's llama_ftype numbering */
static uint32_t file_type_of(uint32_t t, int mix)
{
	switch (t) {
	case GTYPE_F16:
		return 1; /* MOSTLY_F16 */
	case GTYPE_Q4_0:
		return 2; /* MOSTLY_Q4_0 */
	case GTYPE_Q4_1:
		return 3; /* MOSTLY_Q4_1 */
	case GTYPE_Q8_0:
		return 7; /* MOSTLY_Q8_0 */
	case GTYPE_Q5_0:
		return 8; /* MOSTLY_Q5_0 */
	case GTYPE_Q5_1:
		return 9; /* MOSTLY_Q5_1 */
	case GTYPE_Q4_K:
		return mix ? 15 : 14; /* MOSTLY_Q4_K_M / _S */
	case GTYPE_Q5_K:
		return mix ? 17 : 16; /* MOSTLY_Q5_K_M / _S */
	case GTYPE_Q6_K:
		return 18; /* MOSTLY_Q6_K */
	case GTYPE_BF16:
		return 32; /* MOSTLY_BF16 */
	default:
		return 0; /* ALL_F32 */
	}
}

/* rope_freqs.weight [hd/2] by the Llama 3 rule (r3: factor, low, high,
 * original context): pair i of wavelength wl = 2 pi base^(2i/hd) keeps its
 * frequency when wl < orig/high, is slowed by factor when wl > orig/low,
 * and in between by 1 / ((1 - s)/factor + s), s = (orig/wl - low)/(high - low). */
static int add_rope_llama3(gguf_writer *w, const opts *o)
{
	const int half = o->head_dim / 2;
	float *ff = malloc(sizeof(float) * (size_t)half);
	if (!ff)
		return FL_ENOMEM;
	const double f = o->r3[0], lo = o->r3[1], hi = o->r3[2], orig = o->r3[3];
	for (int i = 0; i < half; i++) {
		double wl = 2 * M_PI * pow((double)o->rope_base, 2.0 * i / o->head_dim);
		if (wl < orig / hi)
			ff[i] = 1.0f;
		else if (wl > orig / lo)
			ff[i] = (float)f;
		else {
			double sm = (orig / wl - lo) / (hi - lo);
			ff[i] = (float)(1.0 / ((1 - sm) / f + sm));
		}
	}
	uint64_t ne[1] = {(uint64_t)half};
	return gguf_add_tensor_own(w, "rope_freqs.weight", GTYPE_F32, 1, ne, ff,
	                           sizeof(float) * (size_t)half);
}

/* tokenizer.* keys: copied from another GGUF, or the built-in byte vocab.
 * *n_vocab gets the vocabulary size. */
static int add_vocab(gguf_writer *w, const opts *o, int *n_vocab)
{
	if (!o->vocab_from) {
		int rc = tok_write_byte_vocab(w);
		if (rc == 0)
			*n_vocab = TOK_BYTE_VOCAB_SIZE;
		return rc;
	}
	gguf *src = NULL;
	char err[256];
	int rc = gguf_open(o->vocab_from, &src, err, sizeof err);
	if (rc != 0) {
		fprintf(stderr, "fedlora-node init-model: --vocab-from %s: %s\n", o->vocab_from,
		        err);
		return rc;
	}
	const gguf_str *toks;
	size_t n = 0;
	rc = gguf_get_arr_strs(src, "tokenizer.ggml.tokens", &toks, &n);
	if (rc != 0 || n == 0 || n > MODEL_MAX_VOCAB) {
		fprintf(stderr,
		        "fedlora-node init-model: %s has no usable tokenizer.ggml.tokens array\n",
		        o->vocab_from);
		gguf_free(src);
		return FL_EFORMAT;
	}
	for (size_t i = 0; i < gguf_kv_count(src) && rc == 0; i++) {
		const char *key = gguf_kv_key(src, i);
		if (strncmp(key, "tokenizer.", 10) == 0)
			rc = gguf_set_copy(w, src, key);
	}
	gguf_free(src);
	if (rc == 0)
		*n_vocab = (int)n;
	return rc;
}

int cmd_init_model(int argc, char **argv)
{
	opts o = {0}; /* parse fills it */
	int rc = cmdu_begin(argc, argv, usage, parse, &o, &o.threads);
	if (rc >= 0)
		return rc;

	const char *arch = model_arch_name(o.arch);
	const int C = o.dim, L = o.layers, hd = o.head_dim;
	const int QD = o.heads * hd, KVD = o.kv_heads * hd, F = o.ffn;
	const double std = o.std, std_res = o.std / sqrt(2.0 * L);
	int V = 0;
	char key[128], name[GGUF_MAX_NAME + 1];
	gguf_writer *w = gguf_writer_new();
	if (!w) {
		fprintf(stderr, "fedlora-node init-model: out of memory\n");
		return CLI_FAIL;
	}
	rc = add_vocab(w, &o, &V);
	if (rc != 0) {
		fprintf(stderr, "fedlora-node init-model: vocabulary: %s\n", fl_strerror(rc));
		goto out;
	}
#define SETU(suffix, v)                                                                            \
	(snprintf(key, sizeof key, "%s." suffix, arch), gguf_set_u32(w, key, (uint32_t)(v)))
#define SETF(suffix, v) (snprintf(key, sizeof key, "%s." suffix, arch), gguf_set_f32(w, key, (v)))
	if ((rc = gguf_set_str(w, "general.architecture", arch)) != 0 ||
	    (rc = gguf_set_str(w, "general.name", o.name)) != 0 ||
	    (rc = gguf_set_u32(w, "general.file_type", file_type_of(o.type, o.mix))) != 0 ||
	    (o.type != GTYPE_F32 && o.type != GTYPE_F16 &&
	     (rc = gguf_set_u32(w, "general.quantization_version", 2)) != 0) ||
	    (rc = SETU("vocab_size", V)) != 0 || (rc = SETU("context_length", o.ctx)) != 0 ||
	    (rc = SETU("embedding_length", C)) != 0 || (rc = SETU("block_count", L)) != 0 ||
	    (rc = SETU("feed_forward_length", F)) != 0 ||
	    (rc = SETU("attention.head_count", o.heads)) != 0 ||
	    (rc = SETU("attention.head_count_kv", o.kv_heads)) != 0 ||
	    (rc = SETU("rope.dimension_count", hd)) != 0 ||
	    (rc = SETF("rope.freq_base", o.rope_base)) != 0 ||
	    (rc = SETF("attention.layer_norm_rms_epsilon", o.norm_eps)) != 0 ||
	    (rc = SETU("attention.key_length", hd)) != 0 ||
	    (rc = SETU("attention.value_length", hd)) != 0 ||
	    (o.r3[0] > 0 && (rc = add_rope_llama3(w, &o)) != 0))
		goto fail;
#undef SETU
#undef SETF

	/* tensor ids for the RNG: 0 embd, 1 output, 16 + 16*l + k per block */
	if ((rc = add_matrix(w, &o, "token_embd.weight", MK_EMBD, -1, V, C, std, 0)) != 0 ||
	    (rc = add_vector(w, "output_norm.weight", C, 1.0f)) != 0 ||
	    (!o.tie && (rc = add_matrix(w, &o, "output.weight", MK_OUTPUT, -1, V, C, std, 1)) != 0))
		goto fail;
	for (int l = 0; l < L; l++) {
		uint64_t t = 16 + 16 * (uint64_t)l;
#define NM(s) (snprintf(name, sizeof name, "blk.%d." s, l), name)
		if ((rc = add_vector(w, NM("attn_norm.weight"), C, 1.0f)) != 0 ||
		    (rc = add_matrix(w, &o, NM("attn_q.weight"), MK_OTHER, l, QD, C, std, t + 0)) !=
		        0 ||
		    (rc = add_matrix(w, &o, NM("attn_k.weight"), MK_OTHER, l, KVD, C, std,
		                     t + 1)) != 0 ||
		    (rc = add_matrix(w, &o, NM("attn_v.weight"), MK_V_DOWN, l, KVD, C, std,
		                     t + 2)) != 0 ||
		    (rc = add_matrix(w, &o, NM("attn_output.weight"), MK_OTHER, l, C, QD, std_res,
		                     t + 3)) != 0 ||
		    (rc = add_vector(w, NM("ffn_norm.weight"), C, 1.0f)) != 0 ||
		    (rc = add_matrix(w, &o, NM("ffn_gate.weight"), MK_OTHER, l, F, C, std,
		                     t + 4)) != 0 ||
		    (rc = add_matrix(w, &o, NM("ffn_up.weight"), MK_OTHER, l, F, C, std, t + 5)) !=
		        0 ||
		    (rc = add_matrix(w, &o, NM("ffn_down.weight"), MK_V_DOWN, l, C, F, std_res,
		                     t + 6)) != 0)
			goto fail;
		if (o.arch == MODEL_ARCH_QWEN3 &&
		    ((rc = add_vector(w, NM("attn_q_norm.weight"), hd, 1.0f)) != 0 ||
		     (rc = add_vector(w, NM("attn_k_norm.weight"), hd, 1.0f)) != 0))
			goto fail;
		if (o.arch == MODEL_ARCH_QWEN2 &&
		    ((rc = add_vector(w, NM("attn_q.bias"), QD, 0.0f)) != 0 ||
		     (rc = add_vector(w, NM("attn_k.bias"), KVD, 0.0f)) != 0 ||
		     (rc = add_vector(w, NM("attn_v.bias"), KVD, 0.0f)) != 0))
			goto fail;
#undef NM
	}
	rc = gguf_writer_write(w, o.out);
	if (rc != 0) {
		fprintf(stderr, "fedlora-node init-model: writing %s: %s\n", o.out,
		        fl_strerror(rc));
		goto out;
	}
	double params = (double)V * C * (o.tie ? 1 : 2) + C +
	                (double)L * (2.0 * C + (double)QD * C * 2 + 2.0 * KVD * C + 3.0 * F * C +
	                             (o.arch == MODEL_ARCH_QWEN2 ? QD + 2.0 * KVD : 0) +
	                             (o.arch == MODEL_ARCH_QWEN3 ? 2.0 * hd : 0));
	printf("wrote %s: %s, dim %d, %d layers, %d heads (%d kv), ffn %d, ctx %d, vocab %d, "
	       "%.2fM params, %s%s%s%s, seed %llu\n",
	       o.out, arch, C, L, o.heads, o.kv_heads, F, o.ctx, V, params / 1e6,
	       gtype_name(o.type), o.mix ? " mix (_M)" : "", o.tie ? ", tied embeddings" : "",
	       o.r3[0] > 0 ? ", llama3 rope factors" : "", (unsigned long long)o.seed);
	goto out;
fail:
	fprintf(stderr, "fedlora-node init-model: building the model: %s\n", fl_strerror(rc));
out:
	gguf_writer_free(w);
	return rc == 0 ? CLI_OK : CLI_FAIL;
}
