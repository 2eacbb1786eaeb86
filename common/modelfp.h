/* modelfp — the base-model fingerprint: one SHA-256 that says two GGUF files
 * hold the same frozen base model. Nodes send it in Join and the
 * coordinator compares it with the federation's, so both sides must use
 * exactly this definition.
 *
 * Definition (version 1): SHA-256 over
 *   "fedlora-base-model-v1\n"
 *   u64le length + bytes of general.architecture (length 0 when absent)
 *   u64le number of tensors
 *   then, for every tensor in order of name (unsigned bytewise):
 *     u64le name length, name bytes, u32le ggml type, u32le ndims,
 *     ndims x u64le dims (ne[0] first), u64le data bytes, the data bytes.
 * Metadata other than the architecture (names, tokenizer scores, ...) is
 * not covered: the tensors decide what a LoRA delta means; token ids are
 * tied to the embedding rows. Re-quantizing the base (F32 -> Q8_0) changes
 * the fingerprint: a federation fixes the exact file.
 *
 * Hashing reads every tensor byte (about 1 s per 500 MB), so
 * mfp_compute_cached keeps the result in a small cache file keyed by the
 * model's device, inode, size and modification time. Thread-safe (no
 * shared state). */
#ifndef FL_MODELFP_H
#define FL_MODELFP_H
#include <stdint.h>

#define MFP_LEN 32

/* Fingerprint of the GGUF at path. Errors: those of gguf_open (the reason
 * is logged), FL_ENOMEM. */
int mfp_compute(const char *path, uint8_t out[MFP_LEN]);

/* Same, reusing cache_path when it describes the same file (same device,
 * inode, size, mtime); otherwise computes and rewrites the cache
 * atomically. A missing, stale or malformed cache is simply recomputed;
 * a cache that cannot be written is logged and ignored. */
int mfp_compute_cached(const char *path, const char *cache_path, uint8_t out[MFP_LEN]);

#endif
