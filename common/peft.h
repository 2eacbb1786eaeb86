/* peft — Hugging Face PEFT LoRA adapters: the one PEFT writer of the
 * project (used by `fedlora-node export`, `fedlora-node train` and
 * `fedlora-coordinator export`, with or without a base GGUF) and the
 * reader.
 *
 * A PEFT directory holds adapter_model.safetensors (F32, names
 * base_model.model.model.layers.N.<module>.lora_A.weight / lora_B.weight,
 * <module> = lora_target_hf(t)) and adapter_config.json (peft_type LORA, r,
 * lora_alpha, use_rslora, target_modules, ...). Hugging Face stores the rows
 * of the q/k projections of a llama model in the other order than GGUF
 * (lora_rows_gguf_to_hf): lora_B of attn_q / attn_k is permuted on the way.
 *
 * Functions are pure apart from the files they read/write; thread-safe. */
#ifndef FL_PEFT_H
#define FL_PEFT_H
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "lora.h"
#include "tensor.h"

#define PEFT_PREFIX  "base_model.model.model.layers."
#define PEFT_CONFIG  "adapter_config.json"
#define PEFT_WEIGHTS "adapter_model.safetensors"

/* What the writer needs to know of the base model. */
typedef struct peft_base {
	uint32_t n_head;    /* heads of attn_q */
	uint32_t n_head_kv; /* heads of attn_k (0: n_head) */
	int unpermute;      /* 1: q/k lora_B rows GGUF -> Hugging Face order (llama) */
	const char *name;   /* base_model_name_or_path; NULL = "" */
} peft_base;

/* The writer. ad: canonical tensors (each name must parse with
 * lora_parse_name and be 2-D: FL_EFORMAT otherwise); config r =
 * spec->rank, lora_alpha = spec->alpha, use_rslora = spec->rslora,
 * target_modules = spec->targets plus every target that has tensors. q/k
 * lora_B rows are un-permuted when b->unpermute (FL_EINVAL without a head
 * count, FL_EMISMATCH when the rows are not a multiple of 2 x heads). dir is
 * created if missing; both files are written atomically. why names the
 * tensor or file at fault. */
int peft_write(const tset *ad, const lora_spec *spec, const peft_base *b, const char *dir,
               char *why, size_t whylen);

/* The writer against a base GGUF header: checks ad with lfmt_check (r from
 * the tensors; p->rank, when not 0, must equal it: FL_EMISMATCH), takes head
 * counts and the permutation (llama) from the base, and lists in
 * target_modules the targets that have tensors. base_model_name_or_path is
 * base_id when not NULL, else the base's Hugging Face id as lfmt_base_from_gguf
 * finds it (lfmt_base.name). */
int peft_write_base(const tset *ad, const gguf *base, const lora_spec *p, const char *base_id,
                    const char *dir, char *why, size_t whylen);

/* Parses an adapter_config.json text into p->rank, alpha, rslora (default
 * false). Refuses peft_type other than LORA, r outside 1..LORA_MAX_RANK,
 * non-empty rank_pattern / alpha_pattern, fan_in_fan_out true, use_dora
 * true and bias other than "none" (they change what the tensors mean). */
int peft_parse_config(const char *json, size_t n, lora_spec *p, char *why, size_t whylen);
/* Reads and parses the adapter_config.json at path (capped at 1 MiB). */
int peft_read_config(const char *path, lora_spec *p, char *why, size_t whylen);
/* Reads a PEFT directory into a canonical tset, permuting q/k lora_B rows
 * into GGUF order for a llama base, and checks it against base
 * (lfmt_check); r in the config must equal the tensors'. */
int peft_read(const char *dir, const gguf *base, tset **out, lora_spec *p, char *why,
              size_t whylen);

/* 1 when a tensor name starts with PEFT_PREFIX. */
int peft_is_name(const char *name);
/* Path of the adapter_config.json in the directory of `file`; FL_EINVAL
 * when cap is too small. */
int peft_config_beside(const char *file, char *out, size_t cap);
/* A set with PEFT names read from src (named in errors) and the config at
 * cfg_path -> canonical names, q/k lora_B rows in GGUF order for a llama
 * base, checked against base (lfmt_check); r in the config must equal the
 * tensors' (FL_EMISMATCH). p gets rank, alpha, rslora. */
int peft_load_raw(const tset *raw, const gguf *base, const char *cfg_path, const char *src,
                  tset **out, lora_spec *p, char *why, size_t whylen);

/* x as the shortest decimal that reads back as the same float (what the
 * writer puts in adapter_config.json for lora_alpha). */
double peft_short_decimal(float x);

#endif
