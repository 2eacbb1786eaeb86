/* dp — user-level differential privacy for the coordinator (central mode of
 * DP-FedAvg): the privacy options, the RDP accountant of the sampled
 * Gaussian mechanism, the persistent ledger of spent budget, and the
 * cryptographically seeded noise/sampling source.
 *
 * Accountant: Renyi DP of the Poisson-subsampled Gaussian mechanism with
 * sampling rate q and noise multiplier z (Mironov, Talwar, Zhang 2019,
 * "Renyi Differential Privacy of the Sampled Gaussian Mechanism", Sec. 3.3,
 * integer orders: the exact binomial expansion), composed over rounds by
 * adding RDP per order, converted to (epsilon, delta) with the conversion of
 * Canonne, Kamath, Steinke 2020 / Balle et al. 2020 (dp_epsilon); the
 * classic conversion of Mironov 2017 is dp_epsilon_classic (for comparing
 * with values published before 2020). docs/PRIVACY.md has the formulas.
 *
 * Ledger: DIR/privacy.ledger, written atomically (fileio) with a SHA-256
 * over its body; the coordinator charges a round (writes the ledger) before
 * any RoundStart of that round leaves.
 *
 * Threads: the accountant is pure. A dp_rng belongs to one thread. */
#ifndef FL_DP_H
#define FL_DP_H
#include <stddef.h>
#include <stdint.h>

enum dp_mode { DP_OFF = 0, DP_CENTRAL = 1, DP_DISTRIBUTED = 2 };

typedef struct dp_opts {
	enum dp_mode mode;
	double z;            /* noise multiplier: noise std = z * clip on the sum */
	double clip;         /* C: L2 bound on one node's decoded update */
	double delta;        /* target delta */
	double target_eps;   /* budget: no round starts that would exceed it */
	uint64_t population; /* N: nodes the sample is drawn from; q = K / N */
	uint32_t shares;     /* distributed: t noise shares (0 = ceil(0.8 K)) */
} dp_opts;

/* Distributed mode: the t the federation uses (o->shares, or ceil(0.8 K)). */
uint32_t dp_noise_shares(const dp_opts *o, uint32_t per_round);

/* 0, or FL_EINVAL with a sentence naming the key (privacy.*). per_round is
 * rounds.nodes_per_round (K, the expected cohort). Distributed mode is
 * checked like central (that it has secure aggregation is fed's check). */
int dp_opts_check(const dp_opts *o, uint32_t per_round, char *why, size_t whylen);

/* The orders of the accountant: integers 2..64, then 72, 80, 96, 128, 192,
 * 256, 384, 512. */
#define DP_NORDERS 71
extern const double dp_orders[DP_NORDERS];

/* RDP at integer order alpha >= 2 of one step of the sampled Gaussian
 * mechanism (sensitivity 1, noise std sigma, Poisson rate q in [0, 1]).
 * +inf when sigma is 0 and q > 0. */
double dp_rdp_step(double q, double sigma, unsigned alpha);
/* log(exp(a) + exp(b)), -inf allowed. */
double dp_logsumexp(double a, double b);
/* rdp[i] += steps * dp_rdp_step(q, sigma, dp_orders[i]). */
void dp_rdp_compose(double rdp[DP_NORDERS], double q, double sigma, uint64_t steps);
/* (epsilon, delta): min over orders of
 *   rdp + log((a-1)/a) - (log delta + log a) / (a-1)      (improved)
 *   rdp - log(delta) / (a-1)                              (classic)
 * clamped at 0; best gets the order index (may be NULL). */
double dp_epsilon(const double rdp[DP_NORDERS], double delta, int *best);
double dp_epsilon_classic(const double rdp[DP_NORDERS], double delta, int *best);
/* Epsilon after `rounds` rounds at (q, z), and the smallest z in
 * [1e-3, 1e4] reaching eps <= target after `rounds` rounds (bisection to a
 * relative 1e-6; -1 when even 1e4 is not enough). */
double dp_epsilon_for(double q, double z, uint64_t rounds, double delta);
double dp_z_for(double q, uint64_t rounds, double delta, double target_eps);

/* ---- ledger ---- */

typedef struct dp_ledger {
	uint64_t rounds;        /* rounds charged */
	uint64_t last_round;    /* id of the last round charged */
	double rdp[DP_NORDERS]; /* composed RDP at dp_orders */
	double delta;           /* delta at the last charge (for status) */
	double epsilon;         /* dp_epsilon(rdp, delta) at the last charge */
	double last_q, last_z;  /* parameters of the last charge */
} dp_ledger;

void dp_ledger_init(dp_ledger *l); /* nothing spent */
/* DIR/privacy.ledger. FL_ENOENT when absent, FL_EFORMAT when it does not
 * verify (why says how; the caller must refuse to guess the spending). */
int dp_ledger_load(const char *dir, dp_ledger *l, char *why, size_t whylen);
/* Atomic write (temp, fsync, rename, fsync dir). */
int dp_ledger_save(const char *dir, const dp_ledger *l);
int dp_ledger_path(const char *dir, char *out, size_t cap);

/* ---- randomness ---- */

/* ChaCha20 keystream (OpenSSL EVP) keyed with 32 bytes from RAND_bytes, or
 * with a given key (tests). Gaussian by Box-Muller on 53-bit uniforms. */
typedef struct dp_rng dp_rng;
/* key NULL: RAND_bytes. FL_ECRYPTO when OpenSSL cannot provide. */
int dp_rng_new(const uint8_t key[32], dp_rng **out);
void dp_rng_free(dp_rng *r);      /* NULL ok */
double dp_rng_uniform(dp_rng *r); /* [0, 1), 53 bits */
/* out[i] += sd * N(0, 1), i < n. FL_ECRYPTO when the keystream failed
 * (then the values must be discarded). */
int dp_rng_add_gauss(dp_rng *r, double sd, double *out, size_t n);
double dp_rng_gauss(dp_rng *r);
/* The keystream could not be extended (OpenSSL failure): the draws since
 * are 0 and must not be used. */
int dp_rng_failed(const dp_rng *r);

#endif
