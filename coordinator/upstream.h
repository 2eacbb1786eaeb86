/* upstream — coordinator tiers: the regional coordinator's side towards
 * the root (docs/COORDINATOR.md, "Tiers").
 *
 * `fedlora-coordinator serve` with upstream.endpoint set is a region: a
 * coordinator to its own nodes (fed, with opts.tier) and a node to the
 * root. The node side is the node's own protocol machine (node/client.c,
 * ncl) over the channel's client (common/chan_client) with the region's
 * own certificate; where a node's run loop hands a TRAIN job to its
 * trainer, the region instead:
 *   1. gives fed the root's version the ncl verified (SHA-256) and the
 *      root's delta payload bytes as received, so the region's nodes get
 *      the very bytes the root applied and reach the same SHA-256;
 *   2. starts a round with its nodes at that version, with the root's
 *      training parameters and deadline min(rounds.deadline_ms, root's
 *      remaining time - upstream.margin_ms);
 *   3. when the round closes, takes its sample-weighted mean (plain FedAvg)
 *      as the "locally trained" step and reports the combined weight as
 *      the update's sample_count; the ncl quantizes it with the root's
 *      uplink format (with its error feedback) and uploads it.
 * A round that cannot start (fewer than rounds.min_nodes nodes connected
 * until the deadline leaves no room) or ends with too few updates sends
 * nothing: the root counts the region as a participant that did not
 * answer.
 *
 * Losing the root: the channel reconnects with back-off
 * (upstream.reconnect_min_ms doubling to reconnect_max_ms) while the
 * region keeps its nodes connected; an upload not yet acknowledged is
 * resent after the new Welcome if the root's version has not moved.
 *
 * Threads: everything here belongs to the serve loop's thread. */
#ifndef FL_COORD_UPSTREAM_H
#define FL_COORD_UPSTREAM_H
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "config.h"
#include "fed.h"

/* The [upstream] keys of the coordinator's schema (coordinator/cconf.c). */
#define UPSTREAM_CFG_KEYS                                                                          \
	{"upstream",                                                                               \
	 "endpoint",                                                                               \
	 CFG_STR,                                                                                  \
	 "",                                                                                       \
	 0,                                                                                        \
	 0,                                                                                        \
	 NULL,                                                                                     \
	 "root coordinator; set: this coordinator is a region (empty = a root or flat)"},          \
	    {"upstream", "server_name",                                                            \
	     CFG_STR,    NULL,                                                                     \
	     0,          0,                                                                        \
	     NULL,       "name the root's certificate must carry; default: endpoint host"},        \
	    {"upstream", "cert",                                                                   \
	     CFG_STR,    NULL,                                                                     \
	     0,          0,                                                                        \
	     NULL,       "the region's client certificate towards the root (PEM, clientAuth)"},    \
	    {"upstream", "key", CFG_STR, NULL, 0, 0, NULL, "its private key (PEM)"},               \
	    {"upstream", "ca", CFG_STR, NULL,                                                      \
	     0,          0,    NULL,    "CA of the root's certificate (PEM); default: server.ca"}, \
	    {"upstream", "crl", CFG_STR, NULL,                                                     \
	     0,          0,     NULL,    "optional CRL for the root's certificate"},               \
	    {"upstream", "state_dir",                                                              \
	     CFG_STR,    NULL,                                                                     \
	     0,          0,                                                                        \
	     NULL,       "the region's node state towards the root; default: state.dir/upstream"}, \
	    {"upstream", "margin_ms",                                                              \
	     CFG_INT,    "2000",                                                                   \
	     0,          86400000,                                                                 \
	     NULL,       "the region's round closes this long before the root's deadline"},        \
	    {"upstream",                                                                           \
	     "sample_count",                                                                       \
	     CFG_INT,                                                                              \
	     "1",                                                                                  \
	     1,                                                                                    \
	     9.2e18,                                                                               \
	     NULL,                                                                                 \
	     "sample count announced in Join (root's weighted sampling); updates carry the real "  \
	     "sum"},                                                                               \
	    {"upstream", "reconnect_min_ms",                                                       \
	     CFG_INT,    "200",                                                                    \
	     10,         600000,                                                                   \
	     NULL,       "first reconnect delay to the root"},                                     \
	{                                                                                          \
		"upstream", "reconnect_max_ms", CFG_INT, "10000", 10, 3600000, NULL,               \
		    "reconnect back-off ceiling"                                                   \
	}

typedef struct upstream_opts {
	const char *endpoint; /* NULL or "": not a region */
	const char *server_name;
	const char *cert, *key, *ca, *crl;
	char state_dir[4096];
	uint32_t margin_ms;
	uint64_t sample_count;
	int reconnect_min_ms, reconnect_max_ms;
	size_t max_msg;
	uint64_t seed;
} upstream_opts;

/* Reads the [upstream] keys. With an endpoint it also checks what composes
 * with a region (the message names both keys): aggregation.strategy must be
 * fedavg with weighting = samples and server_lr = 1 (a plain weighted mean),
 * and aggregation.secure and privacy.mode are refused. FL_ECONFIG with why. */
int upstream_from_cfg(const cfg *c, const fed_opts *fo, upstream_opts *o, char *why, size_t whylen);
/* 1 when o describes a region. */
int upstream_on(const upstream_opts *o);

typedef struct upstream upstream;

/* Two steps, because fed needs the hooks and the upstream needs fed:
 * upstream_new (then fed_opts.tier = upstream_hooks(u); fed_new), then
 * upstream_start, which opens the node state, the protocol machine and the
 * channel (connecting in the background). zctx is borrowed. */
int upstream_new(const upstream_opts *o, void *zctx, upstream **out);
struct fed_tier_hooks *upstream_hooks(upstream *u);
int upstream_start(upstream *u, fed *f, const fed_opts *fo);
/* Says Bye to the root ("reason") and closes the channel (lingering for
 * the Bye). NULL ok. */
void upstream_free(upstream *u, const char *reason);

/* The serve loop: poll items (at most max), the timeout (ms, -1 none),
 * then process what the poll found (items as filled, same n). */
int upstream_pollitems(upstream *u, zmq_pollitem_t *items, int max);
long upstream_timeout(const upstream *u, uint64_t now_ms);
void upstream_process(upstream *u, const zmq_pollitem_t *items, int n, uint64_t now_ms);
/* Non-zero (an FL_E* code) once the root refused the region for good
 * (another base model or adapter, ...): the region stops. */
int upstream_failed(const upstream *u);
/* 1 once the root said Bye "federation finished" (its rounds.max_rounds). */
int upstream_finished(const upstream *u);

#endif
