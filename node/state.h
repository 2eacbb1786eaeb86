/* state — a node's state_dir: what it must remember across restarts.
 *
 * Files (each replaced atomically: temp file, fsync, rename, fsync dir):
 *   global.safetensors   the last global adapter the node verified, F32, with
 *                        __metadata__ fedlora.version and fedlora.sha256;
 *   residual.safetensors the error-feedback residual (one tensor per
 *                        exchanged tensor), fedlora.round = the round whose
 *                        accepted update produced it, fedlora.sha256;
 *   node.state           counters and identity checks, a small text file
 *                        ("fedlora-node-state 1", "key value" lines, and a
 *                        final "sha256 <hex>" over everything before it);
 *   metrics.jsonl        one JSON line per round (append-only, fsync'd).
 * Every file is self-checking: on load, an adapter whose recomputed
 * fingerprint differs from its metadata, a state file whose checksum fails,
 * or a file of another base model / adapter layout is ignored with a
 * warning, so nothing half-written or foreign is ever used as valid.
 *
 * Threads: one nst belongs to the network thread of `fedlora-node run`. */
#ifndef FL_NODE_STATE_H
#define FL_NODE_STATE_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

typedef struct nst_counters {
	uint64_t sessions;            /* Welcomes received */
	uint64_t rounds_started;      /* RoundStarts taken on */
	uint64_t rounds_trained;      /* local trainings completed */
	uint64_t updates_sent;        /* Update messages sent (resends counted) */
	uint64_t updates_accepted;    /* UpdateAck accepted (or duplicate) */
	uint64_t updates_rejected;    /* UpdateAck refused */
	uint64_t snapshots;           /* full snapshots applied */
	uint64_t deltas;              /* deltas applied */
	uint64_t hash_mismatches;     /* global verification failures */
	uint64_t bytes_up;            /* application bytes sent */
	uint64_t bytes_down;          /* application bytes received */
	uint64_t last_round_uploaded; /* round id of the last accepted update */
	uint64_t eval_version;        /* global version last evaluated */
	double eval_loss;             /* its held-out loss (NaN: none) */
} nst_counters;

typedef struct nst nst;

/* Opens (creating, mode 0700) dir and loads what is valid. base_fp is the
 * base model fingerprint and shape_fp the adapter shape fingerprint of this
 * configuration: state recorded under other values is discarded (logged).
 * FL_EIO when the directory cannot be created or written. dir NULL: the
 * state lives in memory only and nothing is written (the fleet load
 * generator, tests/bench/bench_fleet.c, which holds thousands of nodes);
 * nst_dir() is then NULL. */
int nst_open(const char *dir, const uint8_t base_fp[32], const uint8_t shape_fp[32], nst **out);
void nst_free(nst *s);
const char *nst_dir(const nst *s);

/* The verified global adapter, NULL when none. Versions start at 0 (the
 * coordinator's initial adapter v0), so "none" is nst_global() == NULL. */
uint64_t nst_version(const nst *s);
const uint8_t *nst_version_sha(const nst *s); /* 32 bytes; zeros when none */
const tset *nst_global(const nst *s);
/* Replaces the global adapter (takes ownership of g, also on failure) and
 * writes it. sha must be tset_fingerprint(g) (checked: FL_EMISMATCH). */
int nst_set_global(nst *s, uint64_t version, tset *g, const uint8_t sha[32]);
/* Forgets the global adapter (e.g. after the coordinator's state was reset). */
int nst_clear_global(nst *s);

/* Error-feedback residual: NULL when none (= zero). */
const tset *nst_residual(const nst *s);
uint64_t nst_residual_round(const nst *s);
/* Replaces and writes the residual (takes ownership of r, also on failure). */
int nst_commit_residual(nst *s, tset *r, uint64_t round);

/* Counters: change them in place, then nst_save() writes node.state. */
nst_counters *nst_counters_mut(nst *s);
const nst_counters *nst_counters_get(const nst *s);
int nst_save(nst *s);

/* Appends one line (no newline in it) to metrics.jsonl. */
int nst_append_metrics(nst *s, const char *line, size_t len);

#endif
