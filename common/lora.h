/* lora — the one vocabulary of LoRA adapters, used by the node, the
 * coordinator and the exporters alike: the target projections and their
 * GGUF / Hugging Face names, target lists, the spec (rank, alpha, rsLoRA,
 * FFA-LoRA, targets, init seed) with its one range table and its scale,
 * canonical tensor names, the adapter layout and the initial adapter v0.
 *
 * Canonical adapter (docs/FORMATS.md): for every layer N and target t of
 * the spec, "blk.N.<t>.lora_a" [r, in] and "blk.N.<t>.lora_b" [out, r],
 * where in/out are ne[0]/ne[1] of the base tensor "blk.N.<t>.weight";
 * inserted layer by layer, targets in enum order, a before b. The adapted
 * projection is  y = W x + s * B (A x)  with s = lora_scale().
 *
 * The range table is LORA_CFG_KEYS: both binaries put these rows in their
 * configuration schemas, lora_spec_check() checks a spec from any other
 * source (command line, wire, adapter file) against the same rows with the
 * same wording, so the node and the coordinator accept and refuse the same
 * values with the same message.
 *
 * Pure functions of their arguments apart from allocation and the files
 * lora_arch_from_gguf reads; thread-safe. */
#ifndef FL_LORA_H
#define FL_LORA_H
#include <stddef.h>
#include <stdint.h>

#include "fedlora.pb-c.h"
#include "tensor.h"

/* Target projections of a decoder layer; bit t of a mask is target t. */
enum lora_target {
	LORA_ATTN_Q = 0,
	LORA_ATTN_K,
	LORA_ATTN_V,
	LORA_ATTN_OUTPUT,
	LORA_FFN_GATE,
	LORA_FFN_UP,
	LORA_FFN_DOWN,
	LORA_NTARGETS
};
#define LORA_ALL_TARGETS ((1u << LORA_NTARGETS) - 1)

#define LORA_MAX_LAYERS 4096
#define LORA_MAX_DIM    (1u << 20) /* largest in/out of an adapted projection */

/* The range table. Rank: one range for both binaries, 1..4096 (see
 * docs/FORMATS.md "LoRA spec"): the widest of the ranges the code had, so
 * no spec, adapter file or command line that worked before is refused. */
#define LORA_MAX_RANK      4096
#define LORA_ALPHA_MIN     1e-6
#define LORA_ALPHA_MAX     1e6
#define LORA_MAX_INIT_SEED 9.2e18

/* The [lora] section of both configuration schemas: cfg_key rows of
 * common/config.h (which the schema's file includes; this header does not,
 * so that its users keep the name cfg for their variables). */
// clang-format off
#define LORA_CFG_KEYS                                                                       \
	{"lora", "rank", CFG_INT, "8", 1, LORA_MAX_RANK, NULL, "LoRA rank r"},              \
	{"lora", "alpha", CFG_DOUBLE, "16", LORA_ALPHA_MIN, LORA_ALPHA_MAX, NULL,           \
	 "LoRA alpha (scale alpha/r, or alpha/sqrt(r) with rslora)"},                       \
	{"lora", "targets", CFG_STR, "all", 0, 0, NULL,                                     \
	 "adapted projections, comma-separated: attn_q attn_k attn_v attn_output "          \
	 "ffn_gate ffn_up ffn_down, or all"},                                               \
	{"lora", "rslora", CFG_BOOL, "false", 0, 0, NULL,                                   \
	 "rank-stabilised scale alpha/sqrt(r)"},                                            \
	{"lora", "ffa", CFG_BOOL, "false", 0, 0, NULL,                                      \
	 "FFA-LoRA: lora_a frozen, only lora_b trained and exchanged"},                     \
	{"lora", "init_seed", CFG_INT, "1", 0, LORA_MAX_INIT_SEED, NULL,                    \
	 "seed of the initial adapter v0 (nodes: must equal the coordinator's)"}
// clang-format on

/* "attn_q" ... "ffn_down" (the GGUF base tensor names); NULL out of range. */
const char *lora_target_name(int t);
/* Hugging Face module path in a decoder layer: "self_attn.q_proj" ...
 * "mlp.down_proj"; NULL out of range. */
const char *lora_target_hf(int t);
/* The module's last component, as PEFT's target_modules lists it:
 * "q_proj" ... "down_proj"; NULL out of range. */
const char *lora_target_hf_short(int t);
/* Target whose name is the n bytes at s; -1 when none. */
int lora_target_find(const char *s, size_t n);
/* "attn_q,attn_v" -> mask. Entries are separated by commas and/or spaces;
 * the entry "all" stands for the seven. FL_EINVAL with a sentence naming
 * the bad entry in why (unknown entry, or no entry at all). */
int lora_targets_parse(const char *s, uint32_t *mask, char *why, size_t whylen);
/* mask -> "attn_q,attn_v" (enum order; unknown bits ignored), NUL-terminated,
 * truncated to cap. */
void lora_targets_format(uint32_t mask, char *out, size_t cap);

typedef struct lora_spec {
	uint32_t rank;      /* r: rows of every lora_a */
	float alpha;        /* s = alpha / r, or alpha / sqrt(r) with rslora */
	uint32_t targets;   /* mask of enum lora_target */
	int rslora;         /* rank-stabilised scale */
	int ffa;            /* FFA-LoRA: lora_a frozen, only lora_b trains */
	uint64_t init_seed; /* seed of v0 (lora_init) */
} lora_spec;

/* The rows of LORA_CFG_KEYS (static; *n gets their count). */
struct cfg_key;
const struct cfg_key *lora_cfg_keys(int *n);
/* Checks rank, alpha and init_seed against LORA_CFG_KEYS and targets
 * (non-empty, known): 0, or FL_EINVAL with a sentence naming the key and the
 * allowed range in why, e.g. "lora.rank = 5000 is out of range [1, 4096]"
 * (the configuration layer's wording). */
int lora_spec_check(const lora_spec *s, char *why, size_t whylen);
/* Reads the [lora] keys of c (a schema holding LORA_CFG_KEYS) into *out and
 * checks it: FL_ECONFIG with a sentence naming the key in why. */
struct cfg;
int lora_spec_from_cfg(const struct cfg *c, lora_spec *out, char *why, size_t whylen);
/* s = alpha / r, or alpha / sqrt(r) with rslora, in double precision;
 * 0 when rank is 0. */
double lora_scale(const lora_spec *s);

/* LoraSpec on the wire -> spec: refuses unknown targets and what
 * lora_spec_check refuses (FL_EPROTO, why). */
int lora_spec_from_proto(const Fedlora__LoraSpec *m, lora_spec *out, char *why, size_t whylen);
/* Fills *m viewing static target names (no allocation; names[] must hold
 * LORA_NTARGETS pointers and outlive m). */
void lora_spec_to_proto(const lora_spec *s, Fedlora__LoraSpec *m, char **names);
/* 0 when the two specs define the same adapter and training (init_seed is
 * not compared); FL_EMISMATCH with a sentence naming the first difference
 * otherwise. */
int lora_spec_compare(const lora_spec *a, const lora_spec *b, char *why, size_t whylen);

/* Canonical tensor name "blk.<layer>.<target>.lora_a|lora_b"; FL_EINVAL for
 * a bad target or when cap is too small. */
int lora_name(char *out, size_t cap, uint32_t layer, int target, int is_b);
/* Base tensor name "blk.<layer>.<target>.weight"; as lora_name. */
int lora_base_name(char *out, size_t cap, uint32_t layer, int target);
/* Parses a canonical name: decimal layer without leading zeros below
 * LORA_MAX_LAYERS, a known target, ".lora_a" or ".lora_b" and nothing
 * after. FL_EINVAL when it is not one. */
int lora_parse_name(const char *name, uint32_t *layer, int *target, int *is_b);
/* Decimal layer number at *p (no sign, no leading zero), below
 * LORA_MAX_LAYERS; advances *p past it. FL_EINVAL otherwise. */
int lora_parse_layer(const char **p, uint32_t *layer);
/* 1 when a tensor name ends in ".lora_b" (what FFA-LoRA exchanges). */
int lora_is_b(const char *name);

/* Shapes of the base model's projections: every layer has the same. */
typedef struct lora_arch {
	uint32_t n_layers;
	uint32_t n_head, n_head_kv; /* 0 = unknown (a PEFT export then cannot un-permute q/k) */
	uint64_t in[LORA_NTARGETS], out[LORA_NTARGETS]; /* 0 = absent in the base */
} lora_arch;

/* Reads layer count, head counts and the projection shapes of every target
 * in mask from a GGUF file's header (blk.N.<target>.weight: ne[0] = in,
 * ne[1] = out). Errors name the missing or inconsistent tensor in why. */
int lora_arch_from_gguf(const char *path, uint32_t mask, lora_arch *out, char *why, size_t whylen);
/* Explicit shapes: dims = "attn_q=OUTxIN,attn_v=OUTxIN,..." for every
 * target in mask. */
int lora_arch_parse(uint32_t n_layers, const char *dims, uint32_t n_head, uint32_t n_head_kv,
                    uint32_t mask, lora_arch *out, char *why, size_t whylen);

/* The adapter of spec for arch, all zero (layout) or v0 (init): lora_a ~
 * U(-1/sqrt(in), 1/sqrt(in)) (PEFT's Kaiming-uniform with a = sqrt(5))
 * drawn from rng_seed(quant_seed_derive(spec->init_seed, name)), lora_b = 0.
 * Same spec and arch, same bytes, on every machine. FL_EINVAL for a spec
 * that fails lora_spec_check's rank/targets rules or a bad arch. */
int lora_layout(const lora_spec *spec, const lora_arch *arch, tset **out);
int lora_init(const lora_spec *spec, const lora_arch *arch, tset **out);
/* Checks that ad holds exactly the tensors of lora_layout(spec, arch) with
 * their shapes: 0 or FL_EMISMATCH with the tensor at fault in why
 * (FL_EINVAL for a bad spec). */
int lora_layout_check(const lora_spec *spec, const lora_arch *arch, const tset *ad, char *why,
                      size_t whylen);
/* Rank and targets of an adapter whose names are canonical (alpha, rslora,
 * ffa and init_seed are kept from *spec), then lora_layout_check. */
int lora_spec_from_tset(const lora_arch *arch, const tset *ad, lora_spec *spec, char *why,
                        size_t whylen);

/* Row order of llama q/k projections: GGUF stores each head's rows
 * interleaved (rotary pairs), Hugging Face stores the two halves one after
 * the other. Within a head of dim d, GGUF row g holds HF row
 * (g % 2) * (d / 2) + g / 2. Both functions move whole rows of `cols`
 * floats; rows must be a multiple of 2 * n_head; src and dst must not
 * overlap. FL_EINVAL otherwise. */
int lora_rows_gguf_to_hf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head);
int lora_rows_hf_to_gguf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head);

#endif
