/* lora_fmt — what the adapter file formats share, and one entry point over
 * all of them. The formats themselves are common/peft (Hugging Face PEFT)
 * and common/gguf_lora (llama.cpp GGUF LoRA); the canonical adapter (a
 * safetensors file of a tset named as common/lora.h says) is written by
 * st_write with the LFMT_META_* keys. Everything here needs only the base
 * model's GGUF *header* (names, shapes, architecture, head counts), never
 * the model engine.
 *
 * Where alpha comes from, per input format, is documented in docs/EXPORT.md
 * and at lfmt_load(); the scale is lora_scale().
 *
 * Functions are pure apart from the files they read/write; thread-safe. */
#ifndef FL_LORA_FMT_H
#define FL_LORA_FMT_H
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "lora.h"
#include "safetensors.h"
#include "tensor.h"

/* Largest adapter file read (safetensors or GGUF). */
#define LFMT_MAX_FILE ((uint64_t)4 << 30)

/* Metadata keys of a canonical adapter safetensors file (__metadata__,
 * string values). Writers of canonical adapters (training, coordinator
 * versions) should set them; lfmt_load reads them. */
#define LFMT_META_ALPHA  "lora.alpha"  /* decimal, e.g. "16" */
#define LFMT_META_RANK   "lora.rank"   /* decimal; must equal the shapes' r */
#define LFMT_META_RSLORA "lora.rslora" /* "true" / "false" (default false) */

/* What the formats need from the base model's GGUF header. */
typedef struct lfmt_base {
	char arch[32];      /* general.architecture */
	uint32_t n_layers;  /* <arch>.block_count */
	uint32_t n_head;    /* <arch>.attention.head_count */
	uint32_t n_head_kv; /* <arch>.attention.head_count_kv (default n_head) */
	int qk_permuted;    /* 1 for llama: q/k rows stored in GGUF rotary order */
	char name[128];     /* Hugging Face id: general.source.huggingface.repository,
	                     * or a https://huggingface.co/ID general.source.repo_url
	                     * or general.source.url; else general.name; else "" */
} lfmt_base;

/* Reads the fields above. FL_EFORMAT with a reason in why when a key is
 * missing or out of range. */
int lfmt_base_from_gguf(const gguf *g, lfmt_base *out, char *why, size_t whylen);

/* Checks a canonical adapter against the base: every tensor has a
 * canonical name and is 2-D, every lora_a has its lora_b and vice versa, the
 * base has "blk.N.<target>.weight" with ne[0] == in (lora_a columns) and
 * ne[1] == out (lora_b rows), every pair has the same rank r (1..
 * LORA_MAX_RANK), all values finite. *rank (may be NULL) gets r. Errors:
 * FL_EMISMATCH (shape or name not in the base: "adapter for another base"),
 * FL_EFORMAT (malformed adapter), FL_ENUMERIC (NaN/Inf); why names the
 * tensor at fault. */
int lfmt_check(const tset *ad, const gguf *base, uint32_t *rank, char *why, size_t whylen);

/* What both writers do first: reads the base's header into *b, checks ad
 * against the base (lfmt_check; *rank gets r) and that p->rank, when not
 * 0, equals r (FL_EMISMATCH: "rank N given but the adapter's tensors have
 * rank R"). */
int lfmt_prepare_write(const tset *ad, const gguf *base, const lora_spec *p, lfmt_base *b,
                       uint32_t *rank, char *why, size_t whylen);

/* Opens the safetensors file at path (limits of st_open) and reads it as an
 * f32 tset; *keep gets the open file (for st_meta; st_close it). */
int lfmt_read_st(const char *path, tset **out, st_file **keep, char *why, size_t whylen);

/* ---- any of the above --------------------------------------------------- */

enum lfmt_format { LFMT_GGUF_LORA = 1, LFMT_PEFT = 2 };

/* One call for an exporter that holds an adapter in memory (e.g. the
 * coordinator's committed global version): opens the base GGUF's header at
 * base_path and writes `out` in format fmt (type F32/F16 applies to
 * gguf-lora; PEFT is always F32). base_id (may be NULL): PEFT's
 * base_model_name_or_path instead of the one the header gives. */
int lfmt_export(const tset *ad, const char *base_path, const lora_spec *p, enum lfmt_format fmt,
                uint32_t type, const char *base_id, const char *out, char *why, size_t whylen);

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
int lfmt_load(const char *path, const gguf *base, const lfmt_override *ov, tset **out, lora_spec *p,
              char *why, size_t whylen);

#endif
