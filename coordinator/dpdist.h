/* dpdist — the accountant of distributed DP (privacy.mode = distributed:
 * discrete Gaussian noise added on the nodes under secure aggregation;
 * docs/PRIVACY.md, "Distributed mode"; the node side is common/ddg.h).
 *
 * Kairouz, Liu, Steinke, ICML 2021, Theorem 1 and Proposition 14: the sum
 * of n independent N_Z(0, s^2) in d dimensions, added to a query of L2
 * sensitivity D2 and L1 sensitivity D1 (on the integer grid), is RDP with
 *   eps(a) = min( a/2 l2^2 + tau d,
 *                 a/2 (l2^2 + 2 l1 tau + tau^2 d),
 *                 a/2 (l2 + sqrt(d) tau)^2 )
 * l2 = D2 / (sqrt(n) s), l1 = D1 / (sqrt(n) s),
 * tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1)).
 * D2 is the conditional-rounding bound (ddg_round_bound) of the clip C on
 * the grid, D1 = D2 min(sqrt(d), D2). Poisson subsampling at rate q:
 * Zhu and Wang, "Poisson Subsampled Renyi Differential Privacy", ICML
 * 2019, Theorem 9 (general upper bound, integer orders), and never more
 * than the unsampled eps(a). Composed over rounds by adding RDP per
 * order and converted with dp_epsilon, as in central mode.
 *
 * Pure functions; thread-safe. */
#ifndef FL_DPDIST_H
#define FL_DPDIST_H
#include <stdint.h>

#include "dp.h"

typedef struct ddg_acct {
	uint64_t dim;       /* d: exchanged elements */
	double c;           /* clip on the grid: C / step */
	double z;           /* noise multiplier: the noise of t shares has sd z c */
	uint32_t shares;    /* t: fewest noise shares a committed sum holds */
	uint64_t max_nodes; /* most shares a sum can hold (tau is summed to it) */
	double beta;        /* conditional rounding (DDG_BETA) */
} ddg_acct;

/* Per-node sd on the grid: z c / sqrt(t). */
double ddg_local_sigma(const ddg_acct *a);

/* Proposition 14 at integer order alpha >= 2 for explicit sensitivities:
 * n shares of sd s (l2, l1 from n), tau summed over k < n_tau. */
double ddg_rdp_prop14(double d2, double d1, double s, uint32_t n, uint64_t n_tau, uint64_t dim,
                      unsigned alpha);
/* One round, unsampled, of the mechanism a describes. */
double ddg_rdp_once(const ddg_acct *a, unsigned alpha);
/* The Poisson-subsampled RDP of one round (Zhu-Wang Theorem 9, min with
 * the unsampled value) for any per-order RDP function. */
double ddg_rdp_subsampled(double q, unsigned alpha, double (*eps)(const void *, unsigned),
                          const void *ctx);
/* rdp[i] += steps * subsampled RDP at dp_orders[i]. */
void ddg_rdp_compose(double rdp[DP_NORDERS], double q, const ddg_acct *a, uint64_t steps);
/* Epsilon after `rounds` rounds; the smallest z in [1e-3, 1e4] reaching
 * target (bisection, relative 1e-6; -1 when 1e4 is not enough; a->z is
 * ignored). */
double ddg_epsilon_for(double q, const ddg_acct *a, uint64_t rounds, double delta);
double ddg_z_for(double q, const ddg_acct *a, uint64_t rounds, double delta, double target_eps);

/* ---- the federation's use (coordinator/fed.c) ---- */
struct fed_opts;
/* privacy.mode = distributed: needs aggregation.secure = true and
 * aggregation.weighting = uniform. 0 or FL_EINVAL naming both keys. */
int dpd_check(const struct fed_opts *o, char *why, size_t whylen);
/* The level bits of the uplink format (8, 4, 2), 0 for others. */
uint32_t dpd_bits(const struct fed_opts *o);
/* The accountant of a federation exchanging dim elements: one grid step
 * for all of them, step = range C / sqrt(dim) / L (sag_steps_initial with
 * C = privacy.clip and range = aggregation.secure_range), so c = C / step
 * = sqrt(dim) L / range; t = dp_noise_shares; tau summed up to
 * privacy.population shares. */
ddg_acct dpd_acct(const struct fed_opts *o, uint64_t dim);

/* dp-plan --mode distributed (coordinator/main.c): prints z for target eps
 * (eps > 0) or the epsilon z spends, the per-node noise, the modulus bits
 * and the epsilon against the coordinator (which knows the cohorts: no
 * amplification by sampling; a node taking part in every round). The
 * strings are the command line's --dim, --bits, --range, --shares.
 * Returns a CLI_* code. */
int dpd_plan(int64_t n, int64_t k, int64_t rounds, double delta, double eps, double z,
             const char *sdim, const char *sbits, const char *srange, const char *sshares);

#endif
