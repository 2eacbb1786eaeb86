/* store — the coordinator's state directory: committed global adapter
 * versions, server optimiser state, the round journal, and recovery.
 *
 * Layout (docs/COORDINATOR.md):
 *   DIR/LOCK                               flock'd by the running coordinator
 *   DIR/journal.jsonl                      append-only round journal
 *   DIR/versions/v<20 digits>.safetensors  committed versions (f32, metadata)
 *   DIR/opt/opt-<20 digits>.safetensors    optimiser state after that version
 * A version is committed when its file is renamed into place (fileio's
 * atomic write: temp, fsync, rename, fsync dir); everything else is
 * secondary. On open, leftover temp files are deleted, a torn journal tail
 * is cut, and loading walks versions newest first, skipping (and saying
 * so) any file that does not parse or whose SHA-256 does not match its
 * metadata. Only the event-loop thread and the aggregation worker use a
 * store, never at the same time. */
#ifndef FL_STORE_H
#define FL_STORE_H
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

typedef struct store_info {
	uint64_t version;
	uint64_t round;   /* round that produced it (0 for v0) */
	uint64_t parent;  /* version it was computed from (0 for v0) */
	uint64_t wall_ms; /* commit time */
	uint8_t sha[32];  /* tset_fingerprint */
	uint8_t shape_sha[32];
	/* the federation's spec, so a version file is self-describing */
	uint32_t rank;
	float alpha;
	char targets[128];
	int rslora, ffa;
	uint64_t init_seed;
	uint32_t n_head, n_head_kv;
	uint8_t base_sha[32];
	int has_base;
} store_info;

typedef struct store store;

/* Opens (creating) DIR, takes its lock (FL_EBUSY when another process
 * holds it), deletes leftover temp files, repairs the journal. */
int store_open(const char *dir, store **out);
/* Tries once more to write the journal backlog (what still cannot be
 * written is lost, logged), releases the lock; NULL ok. */
void store_free(store *s);
const char *store_dir(const store *s);
const char *store_journal_path(const store *s);

/* Newest verifiable version: adapter, its info. Corrupt files are logged
 * and skipped; optimiser files newer than it are deleted. FL_ENOENT when
 * there is no valid version. */
int store_load_latest(store *s, tset **adapter, store_info *info);
/* Highest version number ever seen in the directory or journal (also
 * corrupt ones), so new versions never reuse a number. */
uint64_t store_max_version(const store *s);

/* Commits a version: optimiser state first (when opt is not NULL and has
 * tensors), then the version file (the commit point), then retention
 * (keep the newest `keep` versions, keep >= 1). info->sha must be the
 * adapter's fingerprint (checked). */
int store_commit(store *s, const tset *adapter, const store_info *info, const tset *opt,
                 unsigned keep);
/* Optimiser state saved with a version; FL_ENOENT if none. */
int store_load_opt(store *s, uint64_t version, tset **out);

/* Journal records that could not be written yet (full disk, I/O error)
 * wait in memory, oldest first, and go out before any newer record. The
 * backlog holds at most STORE_BACKLOG_MAX records and STORE_BACKLOG_BYTES;
 * records beyond that are dropped and counted, and once the backlog is
 * written a {"type":"journal_gap","dropped":N} record says so. */
#define STORE_BACKLOG_MAX   256
#define STORE_BACKLOG_BYTES (4u << 20)

/* Adds "ts" (Unix ms, the time of the event) and appends the record (all
 * or nothing, journal.h). When the backlog is not empty the record joins
 * it without a write attempt (store_journal_flush retries). Returns 0 when
 * written, FL_EIO when queued (or dropped, backlog full), FL_ETOOBIG or
 * FL_ENOMEM when the record cannot be formatted (logged, dropped); nothing is
 * logged for a failed write: the caller decides how often to say so
 * (store_journal_errno has the reason). */
int store_journal(store *s, cJSON *obj);
/* Writes the backlog in order, then the journal_gap record if any were
 * dropped. 0 when nothing is left; FL_EIO at the first failure. */
int store_journal_flush(store *s);
size_t store_journal_backlog(const store *s);
uint64_t store_journal_dropped(const store *s);
/* errno of the last failed journal write (0: none yet). */
int store_journal_errno(const store *s);
/* Checks that the version directory can take `bytes` more: reserves them
 * in a temp file (posix_fallocate), fsyncs, deletes it. 0, or FL_EIO with
 * *os_errno set (ENOSPC on a full disk). */
int store_probe(store *s, uint64_t bytes, int *os_errno);

/* Read-only helpers that need no lock (status, export). */
/* Versions present in DIR/versions, ascending; caller frees *vs. */
int store_list_versions(const char *dir, uint64_t **vs, size_t *n);
/* Loads and verifies one version. why gets the reason on failure. */
int store_read_version(const char *dir, uint64_t version, tset **adapter, store_info *info,
                       char *why, size_t whylen);
/* Path of a version file. */
int store_version_path(const char *dir, uint64_t version, char *out, size_t cap);

#endif
