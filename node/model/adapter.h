/* adapter — LoRA adapters for the model engine: the spec (rank, alpha,
 * targets, rsLoRA, FFA-LoRA), the canonical tensor set, PEFT's
 * initialisation from a seed, and the binding of a set to a model
 * (model_lora) with the buffers the backward pass needs.
 *
 * Canonical tensors (DESIGN.md, common/lora_fmt.h): for every layer N and
 * target t in the spec, "blk.N.<t>.lora_a" [r, in] and "blk.N.<t>.lora_b"
 * [out, r], inserted layer by layer, targets in the order attn_q attn_k
 * attn_v attn_output ffn_gate ffn_up ffn_down, a before b — the same
 * layout the coordinator builds. Initialisation as PEFT's: lora_a
 * Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)), drawn
 * from rng_seed(quant_seed_derive(seed, name)) so a node and the
 * coordinator draw the same v0 for the same seed; lora_b zero.
 *
 * Pure functions of their arguments apart from allocation; a binding is
 * used by one thread at a time. */
#ifndef FL_ADAPTER_H
#define FL_ADAPTER_H
#include "model.h"
#include "tensor.h"

#include <stddef.h>
#include <stdint.h>

enum adp_target {
	ADP_ATTN_Q = 0,
	ADP_ATTN_K,
	ADP_ATTN_V,
	ADP_ATTN_OUTPUT,
	ADP_FFN_GATE,
	ADP_FFN_UP,
	ADP_FFN_DOWN,
	ADP_NTARGETS /* == MODEL_LORA_NT */
};
#define ADP_ALL_TARGETS ((1u << ADP_NTARGETS) - 1)
#define ADP_MAX_RANK    4096

typedef struct adp_spec {
	uint32_t rank;    /* r, 1..ADP_MAX_RANK */
	float alpha;      /* s = alpha / r, or alpha / sqrt(r) with rslora */
	uint32_t targets; /* bit t = enum adp_target t */
	int rslora;
	int ffa; /* FFA-LoRA: lora_a frozen, only lora_b trains */
} adp_spec;

/* "attn_q" ... "ffn_down"; NULL out of range. */
const char *adp_target_name(int t);
/* "attn_q,attn_v" or "all" -> mask; FL_EINVAL naming the bad entry in err. */
int adp_targets_parse(const char *s, uint32_t *mask, char *err, size_t errlen);
/* mask -> "attn_q,attn_v" (canonical order), NUL-terminated, truncated to n. */
void adp_targets_format(uint32_t mask, char *out, size_t n);
/* s = alpha / r or alpha / sqrt(r). */
float adp_scale(const adp_spec *s);
/* 0 or FL_EINVAL with a sentence in err (rank, alpha, targets). */
int adp_spec_check(const adp_spec *s, char *err, size_t errlen);
/* "blk.<layer>.<target>.lora_a|b" into out; FL_EINVAL when n is too small. */
int adp_name(char *out, size_t n, int layer, int target, int is_b);

/* The adapter of spec s for a model of config c: all zero (layout) or
 * initialised from seed as PEFT does (init). FL_EINVAL for a bad spec. */
int adp_layout(const model_config *c, const adp_spec *s, tset **out);
int adp_init(const model_config *c, const adp_spec *s, uint64_t seed, tset **out);

/* Checks that ad holds exactly the canonical tensors of spec s for config c
 * with the right shapes (FL_EMISMATCH, err names the tensor). */
int adp_check(const model_config *c, const adp_spec *s, const tset *ad, char *err, size_t errlen);
/* Rank and targets of an adapter set whose names are canonical (the spec's
 * alpha/rslora/ffa are left as *s had them); then adp_check. */
int adp_spec_from_tset(const model_config *c, const tset *ad, adp_spec *s, char *err,
                       size_t errlen);

/* Data pointers of the lora_a (is_b 0) or lora_b tensors of set ts, indexed
 * l * ADP_NTARGETS + t, NULL where the set has none. out holds
 * n_layers * ADP_NTARGETS entries. */
void adp_ptrs(const model_config *c, const tset *ts, int is_b, float **out);

/* A model_lora over the tensors of ad (which must pass adp_check and
 * outlive the binding). max_rows > 0 also allocates the u buffers
 * ([max_rows, r] per adapted projection) that the backward pass needs. */
typedef struct adp_binding adp_binding;
int adp_bind(const model_config *c, const adp_spec *s, const tset *ad, int max_rows,
             adp_binding **out);
void adp_binding_free(adp_binding *b);
const model_lora *adp_binding_lora(const adp_binding *b);

#endif
