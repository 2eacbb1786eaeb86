/* lora_fmt — LoRA adapter file formats shared by the node and the
 * coordinator: the canonical adapter (a tset named after the GGUF base
 * tensors), Hugging Face PEFT directories, and llama.cpp's GGUF LoRA
 * adapter. Everything here needs only the base model's GGUF *header* (names,
 * shapes, architecture, head counts), never the model engine.
 *
 * Canonical adapter: tensors "blk.N.<target>.lora_a" [r, in] and
 * "blk.N.<target>.lora_b" [out, r] for targets attn_q attn_k attn_v
 * attn_output ffn_gate ffn_up ffn_down; `in`/`out` are the base tensor
 * "blk.N.<target>.weight" ne[0]/ne[1]; rows of q/k lora_b in GGUF order
 * (llama GGUF files store each head's q/k rows interleaved by rotary pair,
 * Hugging Face stores the two halves one after the other).
 *
 * The adapted projection is  y = W x + s * B (A x)  with s = lfmt_scale():
 *   s = alpha / r           (PEFT default, llama.cpp)
 *   s = alpha / sqrt(r)     (rsLoRA, PEFT use_rslora)
 * Where alpha comes from, per input format, is documented in docs/EXPORT.md
 * and at lfmt_load().
 *
 * Functions are pure apart from the files they read/write; thread-safe. */
#ifndef FL_LORA_FMT_H
#define FL_LORA_FMT_H
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "tensor.h"

enum lfmt_target {
	LFMT_ATTN_Q = 0,
	LFMT_ATTN_K,
	LFMT_ATTN_V,
	LFMT_ATTN_OUTPUT,
	LFMT_FFN_GATE,
	LFMT_FFN_UP,
	LFMT_FFN_DOWN,
	LFMT_NTARGETS
};

#define LFMT_MAX_LAYERS 4096
#define LFMT_MAX_RANK   4096
/* Largest adapter file read (safetensors or GGUF). */
#define LFMT_MAX_FILE   ((uint64_t)4 << 30)

/* Metadata keys of a canonical adapter safetensors file (__metadata__,
 * string values). Writers of canonical adapters (training, coordinator
 * versions) should set them; lfmt_load reads them. */
#define LFMT_META_ALPHA  "lora.alpha"  /* decimal, e.g. "16" */
#define LFMT_META_RANK   "lora.rank"   /* decimal; must equal the shapes' r */
#define LFMT_META_RSLORA "lora.rslora" /* "true" / "false" (default false) */

/* "attn_q" ... "ffn_down"; NULL out of range. */
const char *lfmt_target_name(int t);
/* Hugging Face module path in a decoder layer: "self_attn.q_proj" ... */
const char *lfmt_target_hf(int t);

/* Scale parameters of an adapter. */
typedef struct lfmt_params {
	float alpha;
	uint32_t rank; /* r: rows of every lora_a */
	int rslora;    /* 1: s = alpha / sqrt(r) */
} lfmt_params;

/* s = alpha / r, or alpha / sqrt(r) with rslora; 0 when rank is 0. */
double lfmt_scale(const lfmt_params *p);

/* Parses a canonical name "blk.N.<target>.lora_a|lora_b". FL_EINVAL when it
 * is not one. */
int lfmt_parse_name(const char *name, uint32_t *layer, int *target, int *is_b);

/* What the formats need from the base model's GGUF header. */
typedef struct lfmt_base {
	char arch[32];      /* general.architecture */
	uint32_t n_layers;  /* <arch>.block_count */
	uint32_t n_head;    /* <arch>.attention.head_count */
	uint32_t n_head_kv; /* <arch>.attention.head_count_kv (default n_head) */
	int qk_permuted;    /* 1 for llama: q/k rows stored in GGUF rotary order */
	char name[128];     /* general.name or "" */
} lfmt_base;

/* Reads the fields above. FL_EFORMAT with a reason in why when a key is
 * missing or out of range. */
int lfmt_base_from_gguf(const gguf *g, lfmt_base *out, char *why, size_t whylen);

/* Checks a canonical adapter against the base: every tensor has a
 * canonical name and is 2-D, every lora_a has its lora_b and vice versa, the
 * base has "blk.N.<target>.weight" with ne[0] == in (lora_a columns) and
 * ne[1] == out (lora_b rows), every pair has the same rank r (1..
 * LFMT_MAX_RANK), all values finite. *rank (may be NULL) gets r. Errors:
 * FL_EMISMATCH (shape or name not in the base: "adapter for another base"),
 * FL_EFORMAT (malformed adapter), FL_ENUMERIC (NaN/Inf); why names the
 * tensor at fault. */
int lfmt_check(const tset *ad, const gguf *base, uint32_t *rank, char *why, size_t whylen);

/* Moves whole rows of `cols` floats between the two q/k row orders. Within
 * a head of dim d (= rows / n_head), GGUF row g holds Hugging Face row
 * (g % 2) * (d / 2) + g / 2. rows must be a multiple of 2 * n_head; src and
 * dst must not overlap. FL_EINVAL otherwise. */
int lfmt_rows_gguf_to_hf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head);
int lfmt_rows_hf_to_gguf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head);

/* ---- llama.cpp GGUF LoRA adapter ------------------------------------ */

/* Writes a GGUF LoRA adapter as llama.cpp loads it: general.type =
 * "adapter", general.architecture = the base's, adapter.type = "lora",
 * adapter.lora.alpha (f32) = s * r, so llama.cpp's scale alpha / r equals
 * lfmt_scale(p) also for rsLoRA (when s == 0 the file gets alpha = r and
 * zero lora_b, since llama.cpp reads alpha == 0 as "scale 1"); the base's
 * <arch>.* hyper-parameters and general.name are copied as the converter
 * does. Tensors "<base tensor>.lora_a" with ne = [in, r] and ".lora_b"
 * with ne = [r, out] (the canonical shapes reversed, same bytes), q/k
 * lora_b in GGUF row order, in `type` F32 or F16. The adapter is checked
 * with lfmt_check first. Atomic. */
int lfmt_write_gguf_lora(const tset *ad, const gguf *base, const lfmt_params *p, uint32_t type,
                         const char *path, char *why, size_t whylen);

/* Reads a GGUF LoRA adapter into a canonical tset (f32). p gets alpha as
 * stored (alpha == 0 -> alpha = r: llama.cpp's "scale 1"), rank from the
 * shapes, rslora 0. When base is not NULL the architecture must match and
 * the adapter is checked with lfmt_check. */
int lfmt_read_gguf_lora(const char *path, const gguf *base, tset **out, lfmt_params *p, char *why,
                        size_t whylen);

/* ---- Hugging Face PEFT ------------------------------------------------ */

/* Writes dir/adapter_model.safetensors (F32, names base_model.model.model.
 * layers.N.<module>.lora_A.weight / lora_B.weight, q/k lora_B rows in
 * Hugging Face order when the base is llama) and dir/adapter_config.json
 * (peft_type LORA, r, lora_alpha, use_rslora, target_modules, ...). The
 * same layout as every other PEFT export of the project. dir is created if
 * missing; files are written atomically. */
int lfmt_write_peft(const tset *ad, const gguf *base, const lfmt_params *p, const char *dir,
                    char *why, size_t whylen);

/* Parses an adapter_config.json text: r, lora_alpha, use_rslora (default
 * false). Refuses peft_type other than LORA, non-empty rank_pattern /
 * alpha_pattern, fan_in_fan_out true, and other bias than "none" (they
 * change what the tensors mean). */
int lfmt_parse_peft_config(const char *json, size_t n, lfmt_params *p, char *why, size_t whylen);

/* Reads a PEFT directory (adapter_model.safetensors + adapter_config.json)
 * into a canonical tset, permuting q/k lora_B rows into GGUF order for a
 * llama base, and checks it against base. */
int lfmt_read_peft(const char *dir, const gguf *base, tset **out, lfmt_params *p, char *why,
                   size_t whylen);

/* ---- any of the above --------------------------------------------------- */

enum lfmt_format { LFMT_GGUF_LORA = 1, LFMT_PEFT = 2 };

/* One call for an exporter that holds an adapter in memory (e.g. the
 * coordinator's committed global version): opens the base GGUF's header at
 * base_path and writes `out` in format fmt (type F32/F16 applies to
 * gguf-lora; PEFT is always F32). */
int lfmt_export(const tset *ad, const char *base_path, const lfmt_params *p, enum lfmt_format fmt,
                uint32_t type, const char *out, char *why, size_t whylen);

/* Values given on a command line; each overrides nothing silently: a value
 * that contradicts the file's own is refused (FL_EMISMATCH). */
typedef struct lfmt_override {
	int has_alpha;
	float alpha;
	uint32_t rank; /* 0: not given; else must equal the shapes' r */
	int rslora;    /* -1 not given, 0/1 */
} lfmt_override;

/* Loads an adapter for base from
 *   - a directory: PEFT (adapter_config.json + adapter_model.safetensors);
 *   - FILE.gguf: a GGUF LoRA adapter;
 *   - FILE.safetensors with PEFT names: alpha/r/rslora from an
 *     adapter_config.json in the same directory;
 *   - FILE.safetensors with canonical names: alpha from the __metadata__
 *     keys LFMT_META_*, else from an adapter_config.json beside it, else
 *     from ov->alpha; none of them -> FL_EINVAL ("pass --alpha").
 * Then lfmt_check against base. The override is applied as documented on
 * lfmt_override (ov may be NULL). */
int lfmt_load(const char *path, const gguf *base, const lfmt_override *ov, tset **out,
              lfmt_params *p, char *why, size_t whylen);

#endif
