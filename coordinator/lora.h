/* lora — the federation's adapter: LoRA spec, layer shapes (from a base
 * GGUF header or given explicitly), the shared initial adapter v0, and the
 * PEFT export (names, GGUF->HF row order of q/k, adapter_config.json).
 *
 * Canonical tensor names: "blk.N.<target>.lora_a" [r, in] and
 * "blk.N.<target>.lora_b" [out, r], targets attn_q attn_k attn_v
 * attn_output ffn_gate ffn_up ffn_down (the GGUF base tensor names).
 * Pure functions of their arguments; thread-safe. */
#ifndef FL_LORA_H
#define FL_LORA_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

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
#define LORA_MAX_LAYERS  4096
#define LORA_MAX_RANK    4096
#define LORA_MAX_DIM     (1u << 20)

/* "attn_q" ... "ffn_down"; NULL when out of range. */
const char *lora_target_name(int t);
/* PEFT module path inside a layer: "self_attn.q_proj" ... "mlp.down_proj". */
const char *lora_target_peft(int t);
int lora_target_parse(const char *s, int *t);
/* Comma-separated list -> bit mask; FL_EINVAL naming the bad entry in why. */
int lora_targets_parse(const char *s, uint32_t *mask, char *why, size_t whylen);
/* Mask -> "attn_q,attn_v" (canonical order). */
void lora_targets_str(uint32_t mask, char *out, size_t cap);

typedef struct lora_spec {
	uint32_t rank;
	float alpha;
	uint32_t targets; /* bit mask of enum lora_target */
	int rslora;
	int ffa;
	uint64_t init_seed;
} lora_spec;

/* Shapes of the base model's projections: every layer has the same. */
typedef struct lora_arch {
	uint32_t n_layers;
	uint32_t n_head, n_head_kv; /* 0 = unknown (export then cannot un-permute q/k) */
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

/* Canonical name of a tensor ("blk.3.attn_q.lora_a"); FL_EINVAL if cap is
 * too small. */
int lora_name(char *out, size_t cap, uint32_t layer, int target, int is_b);

/* Adapter with every tensor of spec/arch, all zero (layer order, targets in
 * canonical order, a before b). */
int lora_layout(const lora_spec *spec, const lora_arch *arch, tset **out);
/* The initial adapter v0: lora_a ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's
 * Kaiming-uniform with a = sqrt(5)) drawn from rng seeded with
 * quant_seed_derive(init_seed, name), lora_b = 0. Same seed, same bytes. */
int lora_init(const lora_spec *spec, const lora_arch *arch, tset **out);

/* Row order of llama q/k projections: GGUF stores each head's rows
 * interleaved (rotary pairs), Hugging Face stores the two halves one after
 * the other. Within a head of dim d, GGUF row g holds HF row
 * (g % 2) * (d / 2) + g / 2. Both functions move whole rows of `cols`
 * floats; rows must be a multiple of 2 * n_head. src and dst must not
 * overlap. FL_EINVAL otherwise. */
int lora_rows_gguf_to_hf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head);
int lora_rows_hf_to_gguf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head);

/* Writes a PEFT adapter into dir (created if missing): adapter_model.
 * safetensors with names base_model.model.model.layers.N.<module>.lora_A.
 * weight / lora_B.weight (q/k lora_B rows un-permuted with n_head /
 * n_head_kv) and adapter_config.json. With unpermute = 0 the rows are left
 * in GGUF order (for non-llama bases). Errors name the tensor at fault. */
int lora_export_peft(const tset *adapter, const lora_spec *spec, uint32_t n_head,
                     uint32_t n_head_kv, int unpermute, const char *base_model, const char *dir);

#endif
