/* async — the options and the arithmetic of asynchronous buffered
 * aggregation (aggregation.mode = async; FedBuff, Nguyen et al., AISTATS
 * 2022). The state machine lives in fed.c (the fa_* functions there); this
 * module is pure: option checks and the staleness weight, so that the unit
 * test can hold them against a double-precision reference.
 *
 * Staleness of an update: s = V - b, where V is the committed global
 * version the update is added on top of (the buffer's base) and b the
 * version the node trained from (Update.base_version). Its weight factor:
 *   constant     w(s) = 1
 *   polynomial   w(s) = (1 + s)^(-a)                 (a = staleness_exponent)
 *   hinge        w(s) = 1 if s <= b, else 1 / (1 + a (s - b))
 *                                                    (b = staleness_hinge)
 * and updates with s > max_staleness are refused (UpdateAck REASON_TOO_STALE).
 * docs/COORDINATOR.md, "Asynchronous aggregation", has the whole contract. */
#ifndef FL_ASYNC_H
#define FL_ASYNC_H
#include <stddef.h>
#include <stdint.h>

enum fa_stale { FA_CONSTANT = 0, FA_POLYNOMIAL, FA_HINGE };

typedef struct fa_opts {
	int on;                  /* aggregation.mode = async */
	uint32_t buffer_size;    /* K: a version is committed every K accepted updates */
	enum fa_stale fn;        /* staleness function */
	double a;                /* polynomial exponent / hinge slope, [0, 10] */
	uint32_t hinge_b;        /* hinge: staleness up to b is not discounted */
	uint32_t max_staleness;  /* updates with s above it are refused (<= 10^6) */
	uint32_t max_concurrent; /* tasks out at once (training or uploading); 0 = no cap */
} fa_opts;

/* off; K 4, polynomial with a 0.5 (the FedBuff paper's choice), hinge b 4,
 * max_staleness 16, max_concurrent 0. */
void fa_opts_default(fa_opts *o);
/* 0, or FL_EINVAL with a sentence naming the aggregation.* key. */
int fa_opts_check(const fa_opts *o, char *why, size_t whylen);

/* "constant" "polynomial" "hinge"; parse returns FL_EINVAL for others. */
const char *fa_stale_name(enum fa_stale f);
int fa_stale_parse(const char *s, enum fa_stale *out);

/* The weight factor w(s) in (0, 1] defined above. */
double fa_weight(const fa_opts *o, uint64_t s);
/* 1 if an update of staleness s is refused (s > max_staleness). */
int fa_too_stale(const fa_opts *o, uint64_t s);
/* s = current - base, 0 when base >= current (a base from the future is
 * the caller's business: it is refused before this is asked). */
uint64_t fa_staleness(uint64_t current, uint64_t base);

#endif
