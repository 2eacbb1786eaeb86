/* nrank — per-node rank and upload precision: which rank slots and which
 * uplink format the coordinator assigns each node (docs/COORDINATOR.md,
 * "Per-node rank and precision"; the aggregation is agg's rank slots).
 *
 * Groups come from the key rank.groups, a list "PATTERN:RANK[:FORMAT]"
 * separated by commas or spaces; PATTERN is an fnmatch(3) glob on the node
 * id (certificate CN), the first group that matches applies. A node that
 * matches none gets rank.default (0: the federation's rank) capped at what
 * it announces. A group's rank is a requirement: a node announcing a
 * smaller max_rank is refused, as is one that cannot upload the assigned
 * format. Start-up and event-loop thread only; no allocation. */
#ifndef FL_NRANK_H
#define FL_NRANK_H
#include <stddef.h>
#include <stdint.h>

#include "qtensor.h"

#define NRANK_MAX_GROUPS  32
#define NRANK_PATTERN_MAX 63

typedef struct nrank_group {
	char pattern[NRANK_PATTERN_MAX + 1];
	uint32_t rank;   /* 1..federation rank */
	enum qt_fmt fmt; /* 0: the federation's train.uplink_format */
} nrank_group;

typedef struct nrank_opts {
	nrank_group g[NRANK_MAX_GROUPS];
	size_t ng;
	uint32_t def_rank; /* rank.default; 0 = the federation's rank */
} nrank_opts;

/* Parses rank.groups (NULL or "" = no groups) into o->g (o->def_rank is
 * left alone). FL_EINVAL with a sentence naming the entry at fault. */
int nrank_parse(const char *groups, nrank_opts *o, char *why, size_t whylen);

/* Ranks above the federation's rank R are refused (FL_EINVAL, why names
 * rank.groups or rank.default). */
int nrank_check(const nrank_opts *o, uint32_t R, char *why, size_t whylen);

/* 1 when the configuration assigns some node fewer than R slots. */
int nrank_mixed(const nrank_opts *o, uint32_t R);

typedef struct nrank_assign {
	uint32_t rank;   /* slots the node trains (1..R; R = every slot) */
	enum qt_fmt fmt; /* its uplink format */
	uint32_t block;  /* and block size */
	int group;       /* index of the group that matched, -1 for none */
} nrank_assign;

/* What node `cn` trains and uploads. max_rank is Join.max_rank (0: the
 * node trains every slot only), formats Join.upload_formats (n 0: any).
 * def_fmt/def_block are train.uplink_format/uplink_block. FL_EINVAL with a
 * sentence naming the node, its announcement and the key when the node
 * cannot do what its group requires. */
int nrank_assign_node(const nrank_opts *o, uint32_t R, enum qt_fmt def_fmt, uint32_t def_block,
                      const char *cn, uint32_t max_rank, const int *formats, size_t nformats,
                      nrank_assign *out, char *why, size_t whylen);

#endif
