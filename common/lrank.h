/* lrank — rank slots of a LoRA adapter (per-node rank, docs/TRAINING.md,
 * "Per-node rank").
 *
 * Slot k of an adapter of rank r is row k of every lora_a [r, in] and
 * column k of every lora_b [out, r]. A node with rank r_i < r trains slots
 * 0..r_i-1 and exchanges only those: the slice of a set keeps, per tensor,
 * lora_a [r_i, in] (a prefix: the first r_i rows) and lora_b [out, r_i]
 * (the first r_i entries of every row). Names are common/lora's canonical
 * ones; a tensor is a lora_a or lora_b by its name suffix. No allocation
 * except in lrank_slice_set. */
#ifndef FL_LRANK_H
#define FL_LRANK_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* The rank of one adapter tensor: shape[0] of a 2-D lora_a, shape[1] of a
 * 2-D lora_b; 0 for anything else. */
uint32_t lrank_of(const tensor *t);

/* Elements of the slice of rank r of a tensor of this shape (0 when the
 * tensor is not a lora_a/lora_b or r exceeds its rank). */
size_t lrank_slice_numel(const tensor *t, uint32_t r);

/* dst[...] = slice of rank r of src. dst holds lrank_slice_numel floats. */
void lrank_gather(const tensor *src, uint32_t r, float *dst);
/* Slots 0..r-1 of dst += w * slice (lrank_slice_numel(dst, r) floats). */
void lrank_scatter_add(tensor *dst, uint32_t r, const float *slice, float w);
/* Slots r.. of dst are set to those of src (same shape; slots below r
 * untouched). */
void lrank_copy_tail(tensor *dst, const tensor *src, uint32_t r);
/* Slots r.. of t are set to 0. */
void lrank_zero_tail(tensor *t, uint32_t r);

/* A new set holding the slice of rank r of every tensor of full (same
 * names, same order). FL_EINVAL when r is 0, above a tensor's rank, or a
 * tensor is not a 2-D lora_a/lora_b; FL_ENOMEM. */
int lrank_slice_set(const tset *full, uint32_t r, tset **out);

/* The rank of an adapter set: the common lrank_of of its tensors, or 0 if
 * they disagree or the set holds another tensor. */
uint32_t lrank_set_rank(const tset *s);

#endif
