/* journal — the coordinator's append-only round journal (JSON lines).
 *
 * Each record is one JSON object on one line, appended and fdatasync'd. A
 * crash can leave at most a torn final line: journal_repair() cuts it off
 * before new appends, and journal_read() skips it with a warning. Only the
 * event-loop thread writes. */
#ifndef FL_JOURNAL_H
#define FL_JOURNAL_H
#include <cjson/cJSON.h>
#include <stddef.h>

#define JOURNAL_MAX_BYTES (1ull << 30)

/* Appends obj as one line (compact JSON + '\n') and syncs. */
int journal_append(const char *path, const cJSON *obj);
/* Truncates a torn (unterminated) last line. Missing file: ok. */
int journal_repair(const char *path);

/* Calls cb for every valid line in order; a non-zero return from cb stops
 * the walk and is returned. Lines that are not JSON objects are skipped and
 * counted in *nbad (logged with their line number). */
typedef int (*journal_cb)(const cJSON *obj, void *ud);
int journal_read(const char *path, journal_cb cb, void *ud, size_t *nlines, size_t *nbad);

#endif
