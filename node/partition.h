/* partition — split a corpus into N node shards for simulations: IID,
 * Dirichlet(alpha) non-IID over a key, or by key (no key split across
 * shards), each shard with its own held-out split. Deterministic by seed.
 *
 * Records: for text, paragraphs separated by blank lines (a Shakespeare
 * speech: "ROMEO:" line + its lines), key "speaker" = the first line without
 * its trailing ':'; for JSONL, one record per line, key = a top-level string
 * (or number) field. Output: DIR/node-NNN/{train,eval}.{txt,jsonl} and
 * DIR/partition.json. */
#ifndef FL_PARTITION_H
#define FL_PARTITION_H
#include <stddef.h>
#include <stdint.h>

enum part_mode { PART_IID = 0, PART_DIRICHLET, PART_BY_KEY };

typedef struct part_opts {
	const char *input;
	const char *out_dir;
	int nodes;
	enum part_mode mode;
	const char *key; /* "speaker" or "document" for text, a field name for
	                  * JSONL; NULL for IID */
	/* key "document" (prose without speakers): a document starts at a
	 * paragraph whose first line matches doc_start (POSIX extended regular
	 * expression), or, without doc_start, every doc_size paragraphs (0:
	 * 50). Whole documents go to shards, and each shard's held-out part is
	 * its tail (its last records in file order), not a random sample, so
	 * no held-out paragraph sits between training paragraphs of its story. */
	const char *doc_start;
	int doc_size;
	double alpha;   /* Dirichlet concentration */
	double holdout; /* fraction of each shard held out for evaluation */
	uint64_t seed;
	int jsonl; /* input format */
	int quiet; /* no table on stdout */
} part_opts;

/* Result per shard (for tests and the printed table). */
typedef struct part_shard {
	size_t train_records, eval_records;
	size_t train_bytes, eval_bytes;
	size_t keys; /* distinct keys in the shard (0 without a key) */
} part_shard;

/* Runs a partition. On success *shards is a malloc'd array of opts->nodes
 * entries (caller frees). Errors are logged with what is wrong. */
int part_run(const part_opts *o, part_shard **shards);

/* `fedlora-node partition ...` */
int part_main(int argc, char **argv);

#endif
