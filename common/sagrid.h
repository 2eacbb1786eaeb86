/* sagrid — the common integer grid of secure rounds (docs/PRIVACY.md,
 * "Secure aggregation"; docs/FORMATS.md, "Secure rounds").
 *
 * Masked sums only mean something when every node quantizes onto the same
 * grid. Per round the coordinator announces, from public information only,
 * an L2 clip C, the level bits b (8, 4 or 2: the uplink format), one step
 * per exchanged tensor and the weight range [1, w_max] with w_max <= L
 * (L = 2^(b-1) - 1). A node clips its update (+ error-feedback residual) to
 * L2 <= C, folds its integer weight in as the factor w / w_max, divides
 * each tensor by its step, rounds stochastically, clamps to +-L and keeps
 * what it did not send (in the unweighted domain) as its new residual;
 * element e of its vector is level_e mod 2^m, the last element is w. So
 * every element of a sum of n vectors stays within +-n L (the weight sum
 * within n w_max <= n L) and m = b + ceil(log2 n) + 1 bits suffice: the
 * weight costs no bits. The coordinator decodes the sum as signed
 * integers, multiplies each tensor by w_max * step and has
 * sum_i w_i * update_i (up to the rounding) and sum_i w_i exactly.
 *
 * Pure functions, no allocation except where stated; thread-safe. */
#ifndef FL_SAGRID_H
#define FL_SAGRID_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* Largest level magnitude for b level bits: 2^(b-1) - 1 (b in 2..16). */
uint32_t sag_levels(uint32_t bits);

/* The steps of a round with no previous mean update (round 1, or after a
 * restart): every tensor gets range * C / sqrt(D) / L, D = the elements of
 * all exchanged tensors together (a clipped update has RMS <= C / sqrt(D)).
 * steps has nt entries. FL_EINVAL on a zero size or non-positive input. */
int sag_steps_initial(const size_t *numel, size_t nt, double clip, double range, uint32_t bits,
                      float *steps);

/* Steps from the previous round's mean update (public: the coordinator
 * holds only aggregates): step_t = range * RMS(mean_t) / L, floored at
 * 1/64 of the initial step so that a tensor that did not move keeps a
 * usable grid. mean holds nt tensors in exchange order. */
int sag_steps_from_mean(const tensor *const *mean, size_t nt, double clip, double range,
                        uint32_t bits, float *steps);

/* Node side. d[0..nt): the update's exchanged tensors; r: their residuals
 * (NULL: no error feedback; else updated in place to what was not sent, in
 * the unweighted domain); steps; clip C; bits b; integer weight
 * 1 <= w <= w_max <= L; m modulus bits; seed of the stochastic rounding.
 * Level e = stochastic round of (w / w_max) * clipped value / step,
 * clamped to +-L. x receives sum(numel) + 1 values < 2^m (the last is w).
 * *norm = L2 norm of (d + r) before clipping. FL_EINVAL on a shape or
 * argument mismatch, FL_ENUMERIC for a non-finite update. */
int sag_encode(const tensor *const *d, tensor *const *r, size_t nt, const float *steps, double clip,
               uint32_t bits, uint32_t w, uint32_t w_max, uint32_t m, uint64_t seed, uint32_t *x,
               double *norm);

/* Coordinator side. sum: the unmasked sum (dim = sum(numel) + 1 values mod
 * 2^m). Writes w_max * step_t * signed(sum_e) into out[t] (nt tensors in
 * exchange order, shapes already set) and the weight sum into *wsum:
 * out / wsum is the weighted mean. FL_EPROTO when the weight sum is not
 * positive. */
int sag_decode(const uint32_t *sum, uint32_t m, uint32_t w_max, const float *steps,
               tensor *const *out, size_t nt, uint64_t *wsum);

/* Plausibility of an unmasked sum of n inputs (dim values mod 2^m): the
 * weight sum (last element) must lie in [n, n * w_max] and every other
 * element within +-n * L (L = sag_levels(bits)), as honest inputs
 * guarantee. A sum unmasked with wrong shares is uniform garbage and fails
 * this on almost every element. 0 or FL_EPROTO with why. */
int sag_check_sum(const uint32_t *sum, uint64_t dim, uint32_t m, uint32_t bits, uint32_t n,
                  uint32_t w_max, char *why, size_t whylen);

/* Signed value of a residue mod 2^m (two's complement in m bits). */
int64_t sag_signed(uint32_t v, uint32_t m);

#endif
