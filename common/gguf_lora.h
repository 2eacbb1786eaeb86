/* gguf_lora — llama.cpp's GGUF LoRA adapter: the one writer of the project
 * (`fedlora-node export`, `fedlora-coordinator export`) and its reader.
 *
 * The file: general.type = "adapter", general.architecture = the base's,
 * adapter.type = "lora", adapter.lora.alpha (f32), the base's <arch>.*
 * hyper-parameters and general.name copied as llama.cpp's converter does;
 * tensors "<base tensor>.lora_a" with ne = [in, r] and ".lora_b" with
 * ne = [r, out] (the canonical shapes reversed, same bytes), q/k lora_b in
 * GGUF row order. llama.cpp applies scale = alpha / r.
 *
 * Functions are pure apart from the files they read/write; thread-safe. */
#ifndef FL_GGUF_LORA_H
#define FL_GGUF_LORA_H
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "lora.h"
#include "tensor.h"

/* Writes ad (checked with lfmt_check against base first) in `type` F32 or
 * F16 (FL_EINVAL otherwise) to path, atomically. adapter.lora.alpha =
 * s * r with s = lora_scale(p) and r from the tensors (p->rank, when not 0,
 * must equal it: FL_EMISMATCH), so llama.cpp's alpha / r is s also for
 * rsLoRA; when s == 0 the file gets alpha = r and zero lora_b, since
 * llama.cpp reads alpha == 0 as "scale 1". F16 refuses values beyond
 * +-65504 (FL_ENUMERIC). */
int gguf_lora_write(const tset *ad, const gguf *base, const lora_spec *p, uint32_t type,
                    const char *path, char *why, size_t whylen);

/* Reads a GGUF LoRA adapter into a canonical tset (f32). p gets alpha as
 * stored (alpha == 0 -> alpha = r: llama.cpp's "scale 1"), rank from the
 * shapes, rslora 0. When base is not NULL the architecture must match and
 * the adapter is checked with lfmt_check. */
int gguf_lora_read(const char *path, const gguf *base, tset **out, lora_spec *p, char *why,
                   size_t whylen);

#endif
